"""Command line: a thin layer over the library. ``create_parser()`` + ``run(argv, out)`` so tests drive it with StringIO."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Sequence

from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.problem import DTYPE_BYTES, KernelConfig, Problem
from iosim.registry import algorithms
from iosim.textfmt import fmt_bytes, fmt_time, format_table


def add_problem_flags(p: argparse.ArgumentParser) -> None:
    """The hardware, the algorithm and the problem (not the tiling): every command that predicts takes these."""
    p.add_argument("--hardware", default="h100", help="built-in profile name or path to a .toml profile (default h100)")
    p.add_argument("--algorithm", default="flash2", help="algorithm family (see `iosim algorithms`)")
    p.add_argument("--batch", default=1)
    p.add_argument("--heads", default=16)
    p.add_argument("--kv-heads", default=None, help="KV heads (default = --heads; fewer = GQA, 1 = MQA)")
    p.add_argument("--seq-q", default=4096)
    p.add_argument("--seq-kv", default=None, help="default = --seq-q")
    p.add_argument("--head-dim", default=128)
    p.add_argument("--dtype", default=None, choices=sorted(DTYPE_BYTES),
                   help="default bf16, or fp16 on a chip without bf16 tensor cores (v100)")
    p.add_argument("--causal", action="store_true")


def chip_dtype(hardware: str) -> str:
    """bf16, or fp16 where the profile has no bf16 tensor rate (the V100's tensor cores are FP16 only)."""
    return "bf16" if "bf16" in load_hardware(hardware).tensor_flops_per_s else "fp16"


def add_pass_flag(p: argparse.ArgumentParser) -> None:
    """--pass (``args.direction``): predict, compare and sweep take it."""
    from iosim.passes import DIRECTIONS
    p.add_argument("--pass", dest="direction", default="fwd", choices=DIRECTIONS,
                   help="the forward (default), the backward (the preset's, or the algorithm's: flash2 → flash2_bwd), "
                        "or both launched one after the other (one L2 trace; per-pass subtotals)")


def add_mask_flags(p: argparse.ArgumentParser) -> None:
    """--mask SPEC (repeatable: the specs intersect) and --mask-block B (``iosim.maskspec``)."""
    p.add_argument("--mask", action="append", default=None, metavar="SPEC",
                   help="attention mask, repeatable (intersected; --causal adds causal): causal, causal:top-left, "
                        "sliding:W, chunked:C, prefix:P, document:L1,L2,…|FILE, blocks:FILE (.npy/.npz bool blocks), "
                        "flex:FILE.npz (a BlockMask's tables)")
    p.add_argument("--mask-block", default="128", metavar="B",
                   help="block size of blocks:/flex: files and of the mask's block density (default 128, "
                        "FlexAttention's BLOCK_SIZE)")


def add_param_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=None, metavar="KEY=VALUE",
                   help="a method parameter of --algorithm, repeatable (the sparse family: density=0.2, seed=0, "
                        "table=FILE.npy, scores=FILE.npy, stride=16, threshold=0.9, …; `iosim algorithms` lists them)")


def parse_value(text: str):
    """int, float, bool, none or the string itself (a file path)."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def params_of(a: argparse.Namespace) -> dict | None:
    """--param KEY=VALUE … as a dict (one-line error for a malformed item)."""
    items = getattr(a, "param", None)
    if not items:
        return None
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            raise IosimError(f"--param {it!r}: write KEY=VALUE, e.g. --param density=0.2")
        out[key.strip().replace("-", "_")] = parse_value(val)
    return out


def mask_of(a: argparse.Namespace):
    """The MaskSpec of --mask/--mask-block (None without --mask)."""
    if not a.mask:
        return None
    from iosim.limits import parse_size
    from iosim.maskspec import combine
    return combine(a.mask, parse_size(a.mask_block, "--mask-block"))


def problem_of(a: argparse.Namespace) -> Problem:
    """The Problem of ``add_problem_flags``' flags (sizes already read by ``read_sizes``)."""
    return Problem(a.batch, a.heads, a.kv_heads if a.kv_heads is not None else a.heads, a.seq_q,
                   a.seq_kv if a.seq_kv is not None else a.seq_q, a.head_dim, a.dtype or chip_dtype(a.hardware), a.causal)


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    add_problem_flags(p)
    p.add_argument("--block-m", default=None, help="query rows per tile (default: the algorithm's)")
    p.add_argument("--block-n", default=None, help="keys per tile (default: the algorithm's)")
    p.add_argument("--num-warps", type=int, default=4)
    p.add_argument("--num-stages", type=int, default=2)
    p.add_argument("--kv-order", default="ascending", choices=["ascending", "descending"])
    p.add_argument("--q-order", default="ascending", choices=["ascending", "descending"])
    p.add_argument("--grid-order", default="m,b,h", help="grid axes fastest first (default m,b,h)")
    p.add_argument("--sram-bytes", default=None, help="on-chip memory per CTA (default: the hardware's)")


_SIZE_FLAGS = ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim", "block_m", "block_n", "sram_bytes",
               "page_size")


def read_sizes(a: argparse.Namespace) -> argparse.Namespace:
    """Size flags of every subcommand are read here, not by argparse, so that "1e9" is accepted and a bad value gets
    one error line (``iosim.limits.parse_size``); defaults are already ints."""
    from iosim.limits import parse_size
    return argparse.Namespace(**{**vars(a), **{k: parse_size(v, "--" + k.replace("_", "-")) for k, v in vars(a).items()
                                               if k in _SIZE_FLAGS and isinstance(v, str)}})


def problem_from_args(a: argparse.Namespace) -> tuple[Problem, KernelConfig]:
    a = read_sizes(a)
    problem = problem_of(a)
    config = KernelConfig(a.block_m, a.block_n, a.num_warps, a.num_stages,
                          tuple(x.strip() for x in a.grid_order.split(",")), a.kv_order, a.q_order, a.sram_bytes)
    return problem, config


# Subcommands that live in their own modules: (name, module, help). Each module defines ``add_parser(subparsers)``
# (registering the subcommand ``name`` with this help) and ``run(args, out) -> int``. A module is imported only for
# the command that runs (``iosim predict`` loads none of them); ``iosim --help`` lists every command from this table.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("tiles", "iosim.cli_tiles", "rank legal (block_m, block_n, num_warps, num_stages) by predicted time"),
    ("hints", "iosim.cli_hints", "autotune hints: triton.Config JSON, or FlexAttention BlockMask inputs"),
    ("report", "iosim.cli_report", "write an HTML/Markdown report with rooflines, IO and time sweeps, tile heatmaps"),
    ("calibrate", "iosim.calibrate", "measure this GPU's ceilings (torch/Triton) and write a calibrated profile TOML"),
    ("validate", "iosim.cli_validate", "on a GPU: time our Triton kernel, FlexAttention and SDPA; ncu counters vs iosim"),
    ("bounds", "iosim.cli_bounds", "symbolic IO, theorems with constants, and lower bounds of an algorithm"),
    ("hardware", "iosim.cli_hardware", "list, show or template hardware profiles"),
    ("sweep", "iosim.cli_sweep", "predict every point of a grid (TOML spec) into a CSV/Parquet table"),
    ("compare", "iosim.cli_compare", "measured (ncu CSV) vs predicted SM/DRAM bytes and time, per kernel launch"),
    ("sparsity", "iosim.cli_sparsity", "speedup of a sparse-attention method over dense FA2/FA3 vs density, "
                                       "break-even density, pre-pass share"),
    ("multigpu", "iosim.cli_multigpu", "attention across GPUs: ring (zigzag/striped), Ulysses all-to-all, "
                                       "tiling-AllReduce"),
)


def _command_module(name: str):
    import importlib
    return importlib.import_module(next(m for c, m, _ in COMMANDS if c == name))


def create_parser(load: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI. load: the module commands whose options are registered (None = all); the others are listed
    with their help only, so that a run imports just its own command's module (``run``)."""
    parser = argparse.ArgumentParser(prog="iosim", description="IO-complexity simulator and cost model for attention kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="count bytes and FLOPs of one attention configuration")
    _add_problem_args(p)
    add_pass_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--kernel", default=None, choices=["fa2", "triton-tutorial", "iosim-triton", "flex"],
                   help="preset of a real kernel's launch choices (tiles, warps, grid and KV order, registers); "
                        "overrides --algorithm, tile and order flags")
    p.add_argument("--no-l2", action="store_true", help="SRAM<->HBM counts only: skip the L2/DRAM model")
    p.add_argument("--l2-policy", default=None, choices=["lru", "fifo", "mru", "random"],
                   help="L2 replacement policy (default: the profile's, lru on every built-in one)")
    p.add_argument("--l2-way-spread", type=int, default=None, metavar="K",
                   help="ways per L2 set vary by ±K around the nominal count (default: the profile's l2_way_spread, "
                        "4 on the built-in ones; 0 = every set has the nominal ways)")
    p.add_argument("--l2-sharing", default=None, choices=["shared", "duplicated"],
                   help="L2 partitions: one shared cache, or partitions that duplicate lines read from both sides")
    p.add_argument("--l2-exact", action="store_true", help="simulate every L2 set (no set sampling; slower)")
    p.add_argument("--cta-jitter", type=float, default=None,
                   help="spread of per-CTA speeds in the CTA timeline (default: by KV walk direction, "
                        "iosim.memory.hierarchy.DRIFT_BY_KV_ORDER: descending 0.15, ascending 0.03; 0 = lockstep)")
    add_mask_flags(p)
    p.add_argument("--devices", type=int, default=None, metavar="P",
                   help="split the attention over P GPUs (see iosim multigpu): --parallel ring|ulysses, --balance")
    p.add_argument("--parallel", default="ring", choices=["ring", "ulysses", "tiling-allreduce"])
    p.add_argument("--balance", default=None, choices=["contiguous", "striped", "zigzag"])
    p.add_argument("--varlen", default=None, metavar="LENS|FILE",
                   help="a packed batch of sequences (FA2's mha_varlen_fwd): query lengths L1,L2,… or cu_seqlens "
                        "0,L1,L1+L2,…, or a .npy/.txt/.csv file of them; --batch/--seq-q/--seq-kv come from them")
    p.add_argument("--varlen-kv", default=None, metavar="LENS|FILE", help="key lengths of the same sequences "
                   "(default: --varlen's)")
    p.add_argument("--page-size", default=None, metavar="P",
                   help="decode over a paged KV cache of P-token pages (a multiple of 256; FA2's mha_fwd_kvcache, "
                        "its split-KV kernel), the pages in a seeded random physical order")
    p.add_argument("--page-seed", type=int, default=0, metavar="S", help="seed of the physical page order (default 0)")
    add_param_flag(p)
    p.set_defaults(batch=None, seq_q=None)  # 1 and 4096 unless --varlen gives them (varlen_args)
    sub.add_parser("algorithms", help="list the algorithm families")
    for name, _, help_ in COMMANDS:
        if load is None or name in load:
            _command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def varlen_args(a: argparse.Namespace) -> tuple[argparse.Namespace, tuple | None]:
    """--varlen/--varlen-kv: (args with --batch/--seq-q/--seq-kv from the lengths, (query, key lengths)); an explicit
    size that disagrees is an error naming both. Without --varlen, --batch and --seq-q default to 1 and 4096."""
    if a.varlen is None:
        if a.varlen_kv is not None:
            raise IosimError("--varlen-kv needs --varlen (the query lengths of the same sequences)")
        return argparse.Namespace(**{**vars(a), "batch": 1 if a.batch is None else a.batch,
                                     "seq_q": 4096 if a.seq_q is None else a.seq_q}), None
    from iosim.models.varlen import parse_lengths
    lq = parse_lengths(a.varlen)
    lk = lq if a.varlen_kv is None else parse_lengths(a.varlen_kv)
    if len(lk) != len(lq):
        raise IosimError(f"--varlen-kv gives {len(lk)} lengths for the {len(lq)} sequences of --varlen; give one key "
                         "length per sequence")
    got = {"batch": len(lq), "seq_q": int(lq.max()), "seq_kv": max(int(lk.max()), 1)}
    for k, v in got.items():
        if getattr(a, k) is not None and getattr(a, k) != v:
            flag = "--" + k.replace("_", "-")
            raise IosimError(f"{flag} {getattr(a, k)} conflicts with --varlen ({len(lq)} sequences, longest "
                             f"{lq.max()} queries / {lk.max()} keys: {flag} {v}); drop {flag}")
    return argparse.Namespace(**{**vars(a), **got}), (lq, lk)


def _fmt_bytes(n: int | None) -> str:
    return fmt_bytes(n, ".3f")


def _fmt_s(t: float | None) -> str:
    return fmt_time(t, micro=True)


def _tiles_line(preset: str | None, algorithm: str, cfg: dict) -> str:
    """Preset/algorithm, tiles, warps, stages, grid and loop orders."""
    tiles = (f"{cfg['block_m']} × {cfg['block_n']}" if cfg["block_m"] and cfg["block_n"]
             else "from the algorithm's rule (see notes)")
    who = f"kernel preset {preset} (algorithm {algorithm})" if preset else f"algorithm {algorithm}"
    stages = f"{cfg['num_stages']} stage{'s' if cfg['num_stages'] != 1 else ''}"
    return (f"{who}: tiles block_m × block_n = {tiles}, {cfg['num_warps']} warps, {stages}, "
            f"grid order {','.join(cfg['grid_order'])} (fastest first), KV order {cfg['kv_order']}, "
            f"Q order {cfg['q_order']}")


def _print_prediction(pred, out: IO[str]) -> None:
    """The README's promise in text: problem, tiles, per-kernel work and occupancy, time and its bound explained,
    FLOP/s against the peak, L2 hit rate, notes. Every number is from ``pred.to_dict()`` (the --json object); the
    SM count and the tensor peak are the profile's."""
    from iosim.cost import BOUND_EXPLANATIONS, tensor_dtype
    d = pred.to_dict()
    hw = pred.hardware
    pr = d["problem"]
    out.write(f"{d['algorithm']}, pass {d['pass']}, on {hw.full_name} ({hw.name}): B={pr['batch']} H={pr['heads']} "
              f"Hkv={pr['kv_heads']} Nq={pr['seq_q']} Nkv={pr['seq_kv']} d={pr['head_dim']} {pr['dtype']}"
              f"{' causal' if pr['causal'] else ' non-causal'}\n")
    if d["varlen"]:
        v = d["varlen"]
        out.write(f"varlen: {v['sequences']:,} sequences packed, {v['q_tokens']:,} query / {v['kv_tokens']:,} key "
                  f"tokens, longest {v['max_seqlen_q']:,} / {v['max_seqlen_kv']:,}\n")
    if d["paged"]:
        pg = d["paged"]
        out.write(f"paged KV: {pg['pages']:,} pages of {pg['page_size']:,} tokens, physical order seed "
                  f"{pg['page_seed']}\n")
    if len(d["passes"]) > 1:
        out.write("".join(f"{n}: {_tiles_line(d['kernel_preset'], p['algorithm'], p['config'])}\n"
                          for n, p in d["passes"].items()) + "\n")
    else:
        out.write(_tiles_line(d["kernel_preset"], d["algorithm"], d["config"]) + "\n\n")
    if d["mask"]:
        m = d["mask"]
        el = "elements unknown (flex tables carry no mask_mod)" if m["element_density"] is None else \
            f"{100 * m['element_density']:.2f}% of elements"
        out.write(f"mask {m['spec']}: {100 * m['block_density']:.2f}% of {m['block']}×{m['block']} blocks visible "
                  f"({m['partial_blocks']:,} partial, {m['full_blocks']:,} full of {m['blocks']:,}), {el}\n\n")
    times = {k["name"]: k for k in (d["time"] or {}).get("kernels", [])}
    work = [(k["name"], f"{k['programs']:,}", _fmt_bytes(k["sm_read_bytes"]), _fmt_bytes(k["sm_write_bytes"]),
             _fmt_bytes(k["dram_read_bytes"]), _fmt_bytes(k["dram_write_bytes"]), f"{k['flops']:.4g}",
             f"{k['sram_bytes_per_cta']:,} B") for k in d["kernels"]]
    work.append(("total", "", _fmt_bytes(d["sm_read_bytes"]), _fmt_bytes(d["sm_write_bytes"]),
                 _fmt_bytes(d["dram_read_bytes"]), _fmt_bytes(d["dram_write_bytes"]), f"{d['flops']:.4g}", ""))
    out.write(format_table(("kernel", "CTAs", "SM read", "SM write", "DRAM read", "DRAM write", "FLOPs", "smem/CTA"),
                           work, "lrrrrrrr"))
    occ = []
    for k in d["kernels"]:
        t = times.get(k["name"], {})
        per_sm = t.get("ctas_per_sm")
        slots = (k["occupancy"] or {}).get("concurrent_ctas") or (per_sm * hw.sm_count if per_sm else None)
        occ.append((k["name"], f"{k['programs']:,} on {hw.sm_count} SMs",
                    "-" if per_sm is None else f"{per_sm} ({t['occupancy_limiter']})",
                    "-" if slots is None else f"{slots:,}", "-" if per_sm is None else f"{t['waves']:.3g}",
                    _fmt_s(t.get("time_s")), "-" if not t else f"{t['achieved_flops_per_s'] / 1e12:.1f}",
                    t.get("bound") or "-"))
    out.write("\n" + format_table(("kernel", "CTAs vs SMs", "CTAs/SM (limit)", "concurrent", "waves", "time",
                                   "TFLOP/s", "bound"), occ, "lrrrrrrl"))
    out.write("\nreads by tensor:  " + ", ".join(f"{t} {_fmt_bytes(v)}" for t, v in d["read_bytes_by_tensor"].items()) + "\n")
    out.write("writes by tensor: " + ", ".join(f"{t} {_fmt_bytes(v)}" for t, v in d["write_bytes_by_tensor"].items()) + "\n")
    out.write(f"FLOPs: matmul {d['matmul_flops']:.4g}, exp {d['exp_ops']:.4g}, other {d['other_flops']:.4g}\n")
    if d["time_s"] is not None:
        b = d["bound"]
        out.write(f"time {_fmt_s(d['time_s'])}, bound: {b} — {BOUND_EXPLANATIONS.get(b, 'see iosim/cost.py')}\n")
        peak = hw.tensor_flops(tensor_dtype(pr["dtype"]))
        f = d["achieved_flops_per_s"]
        out.write(f"achieved {f / 1e12:.1f} TFLOP/s (matmul FLOPs / time) = {100 * f / peak:.1f}% of the "
                  f"{hw.name} {tensor_dtype(pr['dtype'])} tensor peak {peak / 1e12:.1f} TFLOP/s\n")
    if len(d["passes"]) > 1:
        out.write("per pass:\n" + format_table(
            ("pass", "kernels", "time", "SM read", "SM write", "DRAM read", "DRAM write"),
            [(n, ", ".join(p["kernels"]), _fmt_s(p["time_s"]), _fmt_bytes(p["sm_read_bytes"]),
              _fmt_bytes(p["sm_write_bytes"]), _fmt_bytes(p["dram_read_bytes"]), _fmt_bytes(p["dram_write_bytes"]))
             for n, p in d["passes"].items()], "llrrrrr"))
    if d["l2"] is None:
        out.write("L2: not modeled (--no-l2): DRAM bytes in the time are compulsory traffic\n")
    else:
        l2 = d["l2"]
        from iosim.memory.sampling import describe
        sampling = describe(l2["sampling_stride"], l2["exact"])
        out.write(f"L2: hit rate {100 * d['l2_hit_rate']:.2f}%; {l2['size_bytes'] / 2**20:g} MiB, {l2['policy']}, "
                  f"{l2['sharing']}\n  {sampling}{'' if l2['exact'] else '; --l2-exact simulates every set'}\n")
    # kernel notes: once, with the kernels they concern; the sampling sentence is on the L2 line already
    by_note: dict[str, list[str]] = {n: [] for n in d["notes"] if d["l2"] is None or n != sampling}
    for k, t in times.items():
        for n in t["notes"]:
            by_note.setdefault(n, []).append(k)
    if by_note:
        out.write("notes:\n" + "".join(f"  - {n}" + (f" [{', '.join(ks)}]" if ks else "") + "\n"
                                        for n, ks in by_note.items()))


def run(argv: Sequence[str], out: IO[str]) -> int:
    args = read_sizes(create_parser(load=list(argv[:1])).parse_args(argv))
    if args.command == "predict" and args.devices is not None:
        return _command_module("multigpu").run_predict(args, out)
    if args.command == "predict":
        from iosim.pipeline import predict
        args, lens = varlen_args(args)
        problem, config = problem_from_args(args)
        hw = load_hardware(args.hardware)
        geom = None
        if args.l2_policy or args.l2_sharing or args.l2_way_spread is not None:
            from iosim.memory.l2 import L2Geometry
            over = {k: v for k, v in (("policy", args.l2_policy), ("sharing", args.l2_sharing),
                                      ("way_spread", args.l2_way_spread)) if v is not None}
            geom = L2Geometry.from_hardware(hw, **over)
        pred = predict(hw, problem, config, args.algorithm, kernel=args.kernel, l2=not args.no_l2, l2_geometry=geom,
                       l2_stride=1 if args.l2_exact else None, cta_jitter=args.cta_jitter, progress=True,
                       direction=args.direction, block_mask=mask_of(args), varlen=lens and lens[0],
                       varlen_kv=lens and lens[1], page_size=args.page_size, page_seed=args.page_seed,
                       params=params_of(args))
        if args.json:
            out.write(json.dumps(pred.to_dict(), indent=1) + "\n")
        else:
            _print_prediction(pred, out)
    elif args.command == "algorithms":
        out.write(format_table(("algorithm", "summary"), [(n, a.summary) for n, a in algorithms().items()]))
    else:
        return _command_module(args.command).run(args, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Errors (IosimError, and OSError from the file system) print one line and exit 2; IosimWarnings one line each;
    Ctrl-C prints "iosim: interrupted" and exits 130."""
    import warnings
    from iosim.errors import IosimWarning
    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if issubclass(category, IosimWarning):
            print(f"iosim: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("default", IosimWarning)  # each distinct warning once
        warnings.showwarning = show
        try:
            return run(sys.argv[1:] if argv is None else argv, sys.stdout)
        except IosimError as e:
            print(f"iosim: error: {e}", file=sys.stderr)
        except OSError as e:
            print(f"iosim: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        except KeyboardInterrupt:
            print("iosim: interrupted", file=sys.stderr)  # Ctrl-C: one line, no traceback
            return 130
    return 2
