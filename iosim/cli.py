"""Command line: a thin layer over the library. ``create_parser()`` + ``run(argv, out)`` so tests drive it with StringIO."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Sequence

from iosim.errors import IosimError
from iosim.hwprofile import builtin_names, load_hardware, profile_table
from iosim.problem import DTYPE_BYTES, KernelConfig, Problem
from iosim.registry import algorithms


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hardware", default="h100", help="built-in profile name or path to a .toml profile (default h100)")
    p.add_argument("--algorithm", default="flash2", help="algorithm family (see `iosim algorithms`)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads (default = --heads; fewer = GQA, 1 = MQA)")
    p.add_argument("--seq-q", type=int, default=4096)
    p.add_argument("--seq-kv", type=int, default=None, help="default = --seq-q")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    p.add_argument("--causal", action="store_true")
    p.add_argument("--block-m", type=int, default=None, help="query rows per tile (default: the algorithm's)")
    p.add_argument("--block-n", type=int, default=None, help="keys per tile (default: the algorithm's)")
    p.add_argument("--num-warps", type=int, default=4)
    p.add_argument("--num-stages", type=int, default=2)
    p.add_argument("--kv-order", default="ascending", choices=["ascending", "descending"])
    p.add_argument("--q-order", default="ascending", choices=["ascending", "descending"])
    p.add_argument("--grid-order", default="m,b,h", help="grid axes fastest first (default m,b,h)")
    p.add_argument("--sram-bytes", type=int, default=None, help="on-chip memory per CTA (default: the hardware's)")


def problem_from_args(a: argparse.Namespace) -> tuple[Problem, KernelConfig]:
    problem = Problem(a.batch, a.heads, a.kv_heads if a.kv_heads is not None else a.heads, a.seq_q,
                      a.seq_kv if a.seq_kv is not None else a.seq_q, a.head_dim, a.dtype, a.causal)
    config = KernelConfig(a.block_m, a.block_n, a.num_warps, a.num_stages,
                          tuple(x.strip() for x in a.grid_order.split(",")), a.kv_order, a.q_order, a.sram_bytes)
    return problem, config


# Subcommands that live in their own modules: each module defines ``add_parser(subparsers)`` (registering one
# subcommand whose name is the module's COMMAND) and ``run(args, out) -> int``. Add a module here to add a command.
COMMAND_MODULES: tuple[str, ...] = ("iosim.cli_tiles", "iosim.cli_hints", "iosim.cli_report", "iosim.calibrate", "iosim.cli_validate", "iosim.cli_bounds")


def _command_modules() -> dict:
    import importlib
    mods = {}
    for name in COMMAND_MODULES:
        m = importlib.import_module(name)
        mods[m.COMMAND] = m
    return mods


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iosim", description="IO-complexity simulator and cost model for attention kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="count bytes and FLOPs of one attention configuration")
    _add_problem_args(p)
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
                        "iosim.hierarchy.DRIFT_BY_KV_ORDER: descending 0.15, ascending 0.03; 0 = lockstep)")
    hw = sub.add_parser("hardware", help="list or show hardware profiles")
    hws = hw.add_subparsers(dest="hw_command", required=True)
    hws.add_parser("list", help="built-in profiles")
    show = hws.add_parser("show", help="every value of a profile with its source")
    show.add_argument("name", help="profile name or path to a .toml file")
    sub.add_parser("algorithms", help="list the algorithm families")
    for m in _command_modules().values():
        m.add_parser(sub)
    return parser


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n} B"


def _print_prediction(pred, out: IO[str]) -> None:
    d = pred.to_dict()
    pr = d["problem"]
    cfg = d["config"]
    out.write(f"{d['algorithm']} on {pred.hardware.full_name}: B={pr['batch']} H={pr['heads']} Hkv={pr['kv_heads']} "
              f"Nq={pr['seq_q']} Nkv={pr['seq_kv']} d={pr['head_dim']} {pr['dtype']}{' causal' if pr['causal'] else ''}\n")
    for n in d["notes"]:
        out.write(f"  note: {n}\n")
    rows = [(k["name"], k["programs"], k["sm_read_bytes"], k["sm_write_bytes"], k["flops"], k["sram_bytes_per_cta"])
            for k in d["kernels"]]
    out.write(f"{'kernel':<20}{'CTAs':>12}{'SM read':>16}{'SM write':>16}{'FLOPs':>16}{'smem/CTA':>12}\n")
    for name, progs, r, w, f, smem in rows:
        out.write(f"{name:<20}{progs:>12,}{_fmt_bytes(r):>16}{_fmt_bytes(w):>16}{f:>16.4g}{smem:>12,}\n")
    out.write(f"{'total':<20}{'':>12}{_fmt_bytes(d['sm_read_bytes']):>16}{_fmt_bytes(d['sm_write_bytes']):>16}{d['flops']:>16.4g}\n")
    out.write("reads by tensor:  " + ", ".join(f"{t} {_fmt_bytes(v)}" for t, v in d["read_bytes_by_tensor"].items()) + "\n")
    out.write("writes by tensor: " + ", ".join(f"{t} {_fmt_bytes(v)}" for t, v in d["write_bytes_by_tensor"].items()) + "\n")
    out.write(f"FLOPs: matmul {d['matmul_flops']:.4g}, exp {d['exp_ops']:.4g}, other {d['other_flops']:.4g}\n")
    t = "-" if d["time_s"] is None else f"{d['time_s'] * 1e3:.3f} ms"
    hr = "-" if d.get("l2_hit_rate") is None else f"{100 * d['l2_hit_rate']:.2f}%"
    out.write(f"DRAM read {_fmt_bytes(d['dram_read_bytes'])}, DRAM write {_fmt_bytes(d['dram_write_bytes'])}, "
              f"L2 hit rate {hr}, time {t}\n")


def run(argv: Sequence[str], out: IO[str]) -> int:
    args = create_parser().parse_args(argv)
    if args.command == "predict":
        from iosim.predict import predict
        problem, config = problem_from_args(args)
        hw = load_hardware(args.hardware)
        geom = None
        if args.l2_policy or args.l2_sharing or args.l2_way_spread is not None:
            from iosim.l2 import L2Geometry
            over = {k: v for k, v in (("policy", args.l2_policy), ("sharing", args.l2_sharing),
                                      ("way_spread", args.l2_way_spread)) if v is not None}
            geom = L2Geometry.from_hardware(hw, **over)
        pred = predict(hw, problem, config, args.algorithm, kernel=args.kernel, l2=not args.no_l2, l2_geometry=geom,
                       l2_stride=1 if args.l2_exact else None, cta_jitter=args.cta_jitter)
        if args.json:
            out.write(json.dumps(pred.to_dict(), indent=1) + "\n")
        else:
            _print_prediction(pred, out)
    elif args.command == "hardware":
        if args.hw_command == "list":
            for n in builtin_names():
                hw = load_hardware(n)
                out.write(f"{n:<12}{hw.full_name}\n")
        else:
            hw = load_hardware(args.name)
            out.write(f"{hw.name}: {hw.full_name} ({hw.vendor} {hw.arch})  [{hw.path}]\n")
            for key, val, kind, src in profile_table(hw):
                num = isinstance(val, (int, float)) and not isinstance(val, bool)
                shown = f"{val:>16.6g}" if num else f"{str(val).lower() if isinstance(val, bool) else val:>16}"
                out.write(f"  {key:<40}{shown}  {kind:<13}{src}\n")
    elif args.command == "algorithms":
        for name, alg in algorithms().items():
            out.write(f"{name:<12}{alg.summary}\n")
    else:
        return _command_modules()[args.command].run(args, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, sys.stdout)
    except IosimError as e:
        print(f"iosim: error: {e}", file=sys.stderr)
        return 2
