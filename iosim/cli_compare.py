"""``iosim compare --ncu FILE.csv``: a user's Nsight Compute measurements against iosim's predictions.

The problems come from ``--spec SPEC.toml`` (the ``iosim sweep`` format) or from the ``iosim predict`` problem flags.
Each problem is predicted with its ``kernel`` preset, or, where none is given, with the preset of every kernel family
found in the CSV (``iosim.ncu.kernel_family``). A launch matches a predicted kernel when the family and the launch
grid (x, y, z) agree (``launch_grid``) and so do the tiles and mask its name spells out (``iosim.ncu.kernel_hints``);
a launch that fits several problems is reported as ambiguous, not guessed. Marker kernels (``iosim_mark*``) are
skipped; every other unmatched launch is listed with the reason.

Error % = 100 · (predicted − measured) / measured, for SM read (``l1tex__m_xbar2l1tex_read_bytes.sum``), DRAM
read/write (``dram__bytes_read.sum``, ``dram__bytes_write.sum``) and time (``gpu__time_duration.sum``); a metric the
CSV lacks (or the model does not give: DRAM with ``--no-l2``) shows "-".
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from dataclasses import asdict
from typing import IO, Mapping

from iosim.errors import IosimError

COMMAND = "compare"
METRICS = (  # (label, ncu metric, prediction field)
    ("SM read", "l1tex__m_xbar2l1tex_read_bytes.sum", "sm_read_bytes"),
    ("DRAM read", "dram__bytes_read.sum", "dram_read_bytes"),
    ("DRAM write", "dram__bytes_write.sum", "dram_write_bytes"),
    ("time", "gpu__time_duration.sum", "time_s"),
)
PRESETS = ("fa2", "flex", "triton-tutorial", "iosim-triton")


def add_parser(sub) -> None:
    from iosim.cli import _add_problem_args, add_mask_flags, add_pass_flag
    p = sub.add_parser(COMMAND, help="measured (ncu CSV) vs predicted SM/DRAM bytes and time, per kernel launch",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ncu", required=True, metavar="FILE.csv", help="`ncu --csv` output, long or --page raw")
    p.add_argument("--spec", default=None, metavar="SPEC.toml",
                   help="the problems, in `iosim sweep`'s format (instead of the problem flags)")
    p.add_argument("--kernel", default=None, choices=PRESETS,
                   help="preset to predict with (default: every kernel family found in the CSV)")
    _add_problem_args(p)
    add_pass_flag(p)
    add_mask_flags(p)
    p.add_argument("--no-l2", action="store_true", help="SM<->HBM counts only: no DRAM prediction (fast)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    p.add_argument("--out", default=None, metavar="FILE.csv", help="write the per-launch table as CSV")


def launch_grid(kernel, preset: str | None) -> tuple[int, int, int]:
    """The CUDA grid (x, y, z) a schedule kernel is launched with: its axes fastest first, axes past the second
    folded into z; Triton's tutorial folds batch and head into y (grid (⌈N/BLOCK_M⌉, Z·H, 1), ``iosim.presets``)."""
    ext = [int(g.extent) for g in kernel.grid]
    if preset == "triton-tutorial":
        ext = ext[:1] + [math.prod(ext[1:])]
    x, y = (ext + [1, 1])[:2]
    return x, y, math.prod(ext[2:])


def predicted_kernels(point: Mapping[str, object], l2: bool) -> dict:
    """What a point's prediction launches (for ``iosim.sweeps.run_points``): per kernel its grid and predicted
    metrics, plus the fields ``kernel_hints`` may check; or the IosimError in ``error``."""
    from iosim.sweeps import prediction
    try:
        pred = prediction(point, l2)
    except IosimError as e:
        return {"error": str(e), "kernels": []}
    s = pred.schedule
    fields = asdict(s.problem) | asdict(s.config)
    per = pred.to_dict()["kernels"]
    return {"error": None, "fields": fields,
            "kernels": [{"grid": launch_grid(k, point["kernel"]), **{f: d[f] for _, _, f in METRICS}}
                        for k, d in zip(s.kernels, per)]}


def problem_text(p: Mapping[str, object]) -> str:
    kv = f"/{p['kv_heads']}" if p["kv_heads"] not in (None, p["heads"]) else ""
    nkv = f"x{p['seq_kv']}" if p["seq_kv"] not in (None, p["seq_q"]) else ""
    return (f"B{p['batch']} H{p['heads']}{kv} N{p['seq_q']}{nkv} d{p['head_dim']}"
            f"{' causal' if p['causal'] else ''}{' ' + p['mask'] if p['mask'] else ''}"
            f"{'' if p['pass'] == 'fwd' else ' ' + p['pass']}")


def match(launches, pts: list[dict], preds: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(matched, unmatched): matched = (launch index, launch, point index, kernel prediction); unmatched =
    (launch, reason). Markers are dropped."""
    from iosim.ncu import kernel_family, kernel_hints
    matched, unmatched = [], []
    for li, ln in enumerate(launches):
        if ln.is_marker:
            continue
        fam = kernel_family(ln.kernel_name)
        if fam is None:
            unmatched.append((ln, "not an attention kernel iosim models"))
            continue
        hints = kernel_hints(ln.kernel_name)
        cands = [(pi, k) for pi, (pt, pr) in enumerate(zip(pts, preds)) if pt["kernel"] == fam and not pr["error"]
                 and all(pr["fields"][h] == v for h, v in hints.items())
                 for k in pr["kernels"] if k["grid"] == ln.grid]
        problems = sorted({pi for pi, _ in cands})
        if not problems:
            unmatched.append((ln, f"no {fam} problem given launches this grid"))
        elif len(problems) > 1:
            unmatched.append((ln, "ambiguous: problems " + ", ".join(f"#{i}" for i in problems) + " fit"))
        else:
            matched.append((li, ln, cands[0][0], cands[0][1]))
    return matched, unmatched


def err_pct(measured, predicted) -> float | None:
    if measured is None or predicted is None or measured == 0:
        return None
    return 100.0 * (predicted - measured) / measured


def table_rows(matched, pts) -> list[dict]:
    """One dict per matched launch: identity, problem, and measured/predicted/err % of every metric."""
    from iosim.ncu import kernel_family
    rows = []
    for li, ln, pi, k in matched:
        row = {"launch": li, "ncu_id": ln.id, "family": kernel_family(ln.kernel_name),
               "grid": "({}, {}, {})".format(*ln.grid), "point": pi, "problem": problem_text(pts[pi])}
        for label, metric, field in METRICS:
            key = field.removesuffix("_bytes").removesuffix("_s")
            meas, pred = ln.metrics.get(metric), k[field]
            if meas is not None and field.endswith("_bytes") and meas == int(meas):
                meas = int(meas)
            row |= {f"{key}_measured": meas, f"{key}_predicted": pred, f"{key}_err_pct": err_pct(meas, pred)}
        rows.append(row)
    return rows


def _cell(v, kind: str) -> str:
    from iosim.textfmt import fmt_bytes, fmt_time
    if v is None:
        return "-"
    return {"bytes": fmt_bytes, "time": fmt_time, "pct": lambda e: f"{e:+.3f}"}[kind](v)


def report(rows: list[dict], unmatched, failed: list[str]) -> str:
    from iosim.textfmt import format_table
    keys = [(label, field.removesuffix("_bytes").removesuffix("_s"), "time" if field == "time_s" else "bytes")
            for label, _, field in METRICS]
    head = ["launch", "family", "grid", "problem"]
    for label, _, _ in keys:
        head += [label, "pred", "err %"]
    body = [[r["launch"], r["family"], r["grid"], r["problem"],
             *(c for _, key, kind in keys for c in (_cell(r[f"{key}_measured"], kind),
                                                     _cell(r[f"{key}_predicted"], kind),
                                                     _cell(r[f"{key}_err_pct"], "pct")))] for r in rows]
    text = format_table(head, body, "rlll" + "rrr" * len(keys)) if rows else "no launch matched a prediction\n"
    summ = []
    for fam in sorted({r["family"] for r in rows}):
        for label, key, _ in keys:
            errs = [r[f"{key}_err_pct"] for r in rows if r["family"] == fam and r[f"{key}_err_pct"] is not None]
            if errs:
                worst = max(errs, key=abs)
                summ.append([fam, label, len(errs), f"{statistics.median(abs(e) for e in errs):.3f}", f"{worst:+.3f}"])
    if summ:
        text += "\n" + format_table(["family", "metric", "launches", "median |err| %", "worst err %"], summ, "llrrr")
    if unmatched:
        groups: dict[tuple, int] = {}
        for ln, reason in unmatched:
            key = (ln.kernel_name[:90], "({}, {}, {})".format(*ln.grid), reason)
            groups[key] = groups.get(key, 0) + 1
        text += f"\nunmatched launches ({len(unmatched)}):\n"
        text += "".join(f"  {n}x {name} grid {grid}: {reason}\n" for (name, grid, reason), n in groups.items())
    text += "".join(f"not predicted: {msg}\n" for msg in failed)
    return text


def _points(args) -> list[dict]:
    from iosim.cli import problem_from_args
    from iosim.sweeps import load_spec, points
    from iosim.limits import parse_size
    if args.mask and len(args.mask) > 1:
        raise IosimError(f"compare takes one --mask (a sweep's mask key is one spec), got {len(args.mask)}: "
                         f"{', '.join(args.mask)}")
    base = {"hardware": args.hardware, "pass": args.direction} | ({"kernel": args.kernel} if args.kernel else {}) | \
        ({"mask": args.mask[0], "mask_block": parse_size(args.mask_block, "--mask-block")} if args.mask else {})
    if args.spec:
        return points([base | g for g in load_spec(args.spec)])
    problem, config = problem_from_args(args)
    cfg = asdict(config) | {"grid_order": ",".join(config.grid_order)}
    return points(base | {"algorithm": args.algorithm} | asdict(problem) | cfg)


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim.atomic import atomic_write_text
    from iosim.ncu import kernel_family, read_ncu_csv
    from iosim.sweeps import run_points
    launches = read_ncu_csv(args.ncu)
    if not any(not ln.is_marker for ln in launches):
        raise IosimError(f"{args.ncu}: no kernel launches; profile with `ncu --csv [--page raw] ... > FILE.csv`")
    families = [f for f in PRESETS if any(kernel_family(ln.kernel_name) == f for ln in launches)]
    pts = [p | {"kernel": f} for p in _points(args) for f in ([p["kernel"]] if p["kernel"] else families)]
    preds = run_points(pts, jobs=args.jobs, progress=False, l2=not args.no_l2, fn=predicted_kernels)
    failed = [f"#{i} {p['kernel']} {problem_text(p)}: {r['error']}" for i, (p, r) in enumerate(zip(pts, preds))
              if r["error"]]
    matched, unmatched = match(launches, pts, preds)
    rows = table_rows(matched, pts)
    out.write(report(rows, unmatched, failed))
    if args.out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["launch"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(args.out, buf.getvalue())
        out.write(f"wrote {len(rows)} rows to {args.out}\n")
    return 0
