"""``iosim sweep SPEC.toml``: predictions over a grid of problems and kernel configurations (``iosim.sweep``) → a
CSV or Parquet table (written atomically) and a short summary on stdout."""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
from typing import IO

from iosim.errors import IosimError
from iosim.textfmt import fmt_bytes, fmt_time

COMMAND = "sweep"
SUMMARY_ROWS = 20
EPILOG = """\
SPEC.toml: top-level keys are fields, each a value or a list; lists are crossed (the last key of the list below
varies fastest). Optional [[grid]] tables are grids of their own, over the top-level keys as defaults.

  hardware = "h100"
  kernel = "fa2"                  # preset: fa2, flex, triton-tutorial, iosim-triton
  seq_q = [4096, 8192, 16384]
  causal = [false, true]          # 6 points

fields (default): hardware ("h100"), kernel (none), algorithm ("flash2"), batch (1), heads (16),
kv_heads (= heads), seq_q (4096), seq_kv (= seq_q), head_dim (128), dtype ("bf16"), causal (false),
mask (none; one --mask spec, e.g. "sliding:1024"), mask_block (128),
block_m, block_n (the algorithm's), num_warps (4), num_stages (2), grid_order ("m,b,h"),
kv_order, q_order ("ascending"), sram_bytes (the hardware's), band_loop (false),
pass ("fwd"; "bwd", "fwd+bwd"; --pass sets it where the spec does not).

Columns: the fields as the kernel ran (presets resolved), flops, matmul_flops, sm_read_bytes, sm_write_bytes,
dram_read_bytes, dram_write_bytes, l2_hit_rate, time_s, bound, achieved_flops_per_s, error.
A point that cannot be predicted keeps its row with the message in `error`; the command then exits 1."""


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="predict every point of a grid (TOML spec) into a CSV/Parquet table",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC.toml", help="the grid (format below)")
    p.add_argument("--out", default=None, metavar="FILE", help="write every row to FILE.csv or FILE.parquet")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core; 1 = in-process)")
    p.add_argument("--no-l2", action="store_true", help="SM<->HBM counts only: skip the L2/DRAM model (fast)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    from iosim.cli import add_pass_flag
    add_pass_flag(p)


def table_bytes(df, path: str) -> bytes:
    """The frame as CSV or Parquet bytes, by ``path``'s extension."""
    if path.endswith(".parquet"):
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    return df.to_csv(index=False, lineterminator="\n").encode()


def check_out(path: str | None) -> None:
    """Refuse an --out the command could not write, before any work."""
    if path is None:
        return
    if not path.endswith((".csv", ".parquet")):
        raise IosimError(f"--out must end in .csv or .parquet, got {path!r}")
    if path.endswith(".parquet") and importlib.util.find_spec("pyarrow") is None:
        raise IosimError("writing Parquet needs pyarrow: pip install pyarrow (or write --out FILE.csv)")


def summary(rows: list[dict], pts: list[dict]) -> str:
    """One line per point (the first SUMMARY_ROWS): the fields that vary, SM/DRAM read, time, bound, error."""
    from iosim.textfmt import format_table
    varying = [k for k in pts[0] if len({str(p[k]) for p in pts}) > 1]
    lines = []
    for i, (p, r) in enumerate(zip(pts[:SUMMARY_ROWS], rows)):
        shown = ["-" if p[k] is None else str(p[k]).lower() if isinstance(p[k], bool) else p[k] for k in varying]
        lines.append([i, *shown, fmt_bytes(r["sm_read_bytes"]), fmt_bytes(r["dram_read_bytes"]),
                      fmt_time(r["time_s"]), r["bound"] or "-", (r["error"] or "")[:70]])
    text = format_table(["#", *varying, "SM read", "DRAM read", "time", "bound", "error"], lines,
                        "r" * (1 + len(varying)) + "rrrll")
    if len(pts) > SUMMARY_ROWS:
        text += f"... {len(pts) - SUMMARY_ROWS} more points\n"
    return text


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim.atomic import atomic_write_bytes
    from iosim.sweeps import frame, load_spec, points, run_points, with_pass
    check_out(args.out)
    pts = points(with_pass(load_spec(args.spec), args.direction))
    try:
        rows = run_points(pts, jobs=args.jobs, progress=False if args.no_progress else None, l2=not args.no_l2)
    except KeyboardInterrupt:
        print("iosim: sweep interrupted; nothing written", file=sys.stderr)
        return 130
    df = frame(rows)
    if args.out:
        atomic_write_bytes(args.out, table_bytes(df, args.out))
    out.write(summary(rows, pts))
    if args.out:
        out.write(f"wrote {len(df)} rows to {args.out}\n")
    failed = [i for i, r in enumerate(rows) if r["error"] is not None]
    if failed:
        i = failed[0]
        print(f"iosim: {len(failed)} of {len(rows)} points failed; first (point {i}): {rows[i]['error']}", file=sys.stderr)
        return 1
    return 0
