"""``iosim multigpu``: attention across GPUs (ring attention, DeepSpeed-Ulysses, FastAttention's tiling-AllReduce),
and ``run_predict``, which lets ``iosim predict --devices P --parallel ring|ulysses [--balance zigzag|striped]`` do the
same: ``iosim.cli`` declares those three flags itself (so that ``iosim predict`` imports no command module) and hands
the parsed arguments here when --devices is given; the other multi-GPU flags keep their defaults there."""

from __future__ import annotations

import argparse
import json
from typing import IO

from iosim.errors import IosimError

COMMAND = "multigpu"
HELP = "attention across GPUs: ring (zigzag/striped), Ulysses all-to-all, tiling-AllReduce"
PARALLEL_CHOICES = ("ring", "ulysses", "tiling-allreduce")
BALANCE_CHOICES = ("contiguous", "striped", "zigzag")
SHOWN_STEPS = 6  # ring steps listed before the rest are summarised


def add_predict_flags(p: argparse.ArgumentParser, devices_default: int | None = None) -> None:
    """--devices, --parallel, --balance, --no-overlap, --merge, --tiles, --hidden (``iosim predict`` and ``multigpu``)."""
    p.add_argument("--devices", type=int, default=devices_default, metavar="P",
                   help="GPUs the attention is split over (1..1024; beyond the profile's gpus_per_node, several "
                        "nodes joined by its internode bandwidth)")
    p.add_argument("--parallel", default="ring", choices=PARALLEL_CHOICES,
                   help="ring attention (K/V passed around a ring), ulysses (all-to-all: sequence ↔ heads) or "
                        "tiling-allreduce (tensor parallel, FastAttention's tiled output AllReduce); default ring")
    p.add_argument("--balance", default=None, choices=BALANCE_CHOICES,
                   help="ring: which tokens each GPU holds (default zigzag when causal, contiguous otherwise)")
    p.add_argument("--no-overlap", action="store_true", help="ring: send K/V only after each step's attention")
    p.add_argument("--merge", default="eager", choices=("eager", "fused"),
                   help="ring: the per-step log-sum-exp merge as eager PyTorch ops (default, as "
                        "benchmarks/gpu/ring_attention.py runs it) or one fused kernel")
    p.add_argument("--tiles", type=int, default=None, help="tiling-allreduce: query-row tiles (default 8)")
    p.add_argument("--hidden", type=int, default=None, help="tiling-allreduce: model width (default heads × head_dim)")


def add_parser(sub) -> None:
    from iosim.cli import add_problem_flags
    p = sub.add_parser(COMMAND, help=HELP, description=HELP + ". Per-GPU attention calls are iosim predictions of "
                       "their shard shapes; transfers use the profile's [interconnect] table.")
    add_problem_flags(p)
    add_predict_flags(p, devices_default=2)
    p.add_argument("--kernel", default="fa2", choices=["fa2", "none"],
                   help="per-GPU kernel preset (default fa2: FlashAttention-2 as in PyTorch SDPA); none = --algorithm")
    p.add_argument("--no-l2", action="store_true", help="per-GPU kernels without the L2 model (fast; large sweeps)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--links", action="store_true", help="print the profile's [interconnect] table and stop")


def _fmt_ms(t: float) -> str:
    from iosim.textfmt import fmt_time
    return fmt_time(t, micro=True)


def predict_from_args(args: argparse.Namespace, kernel: str | None):
    from iosim.cli import problem_of, read_sizes
    from iosim.multigpu import predict_multigpu
    args = read_sizes(args)
    if args.devices is None:
        raise IosimError("--devices is required for a multi-GPU prediction (e.g. --devices 2)")
    problem = problem_of(args)
    kw = dict(kernel=kernel, algorithm=args.algorithm, l2=not args.no_l2)
    balance, no_overlap = args.balance, getattr(args, "no_overlap", False)
    tiles, hidden = getattr(args, "tiles", None), getattr(args, "hidden", None)
    if args.parallel == "ring":
        kw |= dict(balance=balance, overlap=not no_overlap, merge=getattr(args, "merge", "eager"))
    else:
        if balance is not None or no_overlap:
            raise IosimError(f"--balance and --no-overlap are ring options; drop them for --parallel {args.parallel}")
        if args.parallel == "tiling-allreduce":
            kw |= {k: v for k, v in (("tiles", tiles), ("hidden", hidden)) if v is not None}
    if args.parallel != "tiling-allreduce" and (tiles is not None or hidden is not None):
        raise IosimError("--tiles and --hidden are tiling-allreduce options; drop them or use --parallel "
                         "tiling-allreduce")
    return predict_multigpu(args.hardware, problem, args.devices, args.parallel, **kw)


def print_prediction(pred, out: IO[str]) -> None:
    from iosim.textfmt import fmt_bytes, format_table
    d = pred.to_dict()
    pr = d["problem"]
    bal = f", balance {d['balance']}" if d["balance"] else ""
    lap = ", no overlap" if d["parallel"] == "ring" and not d["overlap"] else ""
    out.write(f"{d['parallel']} over {d['devices']} × {pred.hardware}{bal}{lap}: "
              f"B={pr['batch']} H={pr['heads']} Hkv={pr['kv_heads']} N={pr['seq_q']:,} d={pr['head_dim']} "
              f"{pr['dtype']}{' causal' if pr['causal'] else ' non-causal'}; per-GPU kernel "
              f"{d['kernel'] or d['algorithm']}{'' if d['l2'] else ' (no L2 model)'}\n\n")
    steps = pred.steps
    shown = steps if len(steps) <= SHOWN_STEPS + 1 else list(steps[:SHOWN_STEPS - 1]) + [None, steps[-1]]
    rows = [("…", "", "", "", "") if s is None else
            (s.what, _fmt_ms(s.compute_s), _fmt_ms(s.transfer_s), fmt_bytes(s.transfer_bytes), _fmt_ms(s.time_s))
            for s in shown]
    out.write(format_table(("step", "compute (slowest GPU)", "transfer", "bytes sent/GPU", "time"), rows, "lrrrr"))
    out.write("\ndistinct per-GPU attention calls:\n")
    out.write(format_table(("Nq × Nkv", "heads", "causal", "time", "bound", "DRAM bytes"),
                           [(f"{k.problem.seq_q:,} × {k.problem.seq_kv:,}", f"{k.problem.heads}/{k.problem.kv_heads}",
                             "yes" if k.problem.causal else "no", _fmt_ms(k.time_s), k.bound or "-",
                             fmt_bytes(None if k.dram_read_bytes is None else k.dram_read_bytes + k.dram_write_bytes))
                            for k in pred.kernels], "lrlrlr", indent="  "))
    out.write(f"\ntime {_fmt_ms(d['time_s'])}; with free transfers {_fmt_ms(d['compute_only_s'])}; exposed "
              f"communication {_fmt_ms(d['exposed_comm_s'])} = {100 * d['comm_share']:.2f}% of the time "
              f"(transfers busy {_fmt_ms(d['transfer_busy_s'])})\n")
    out.write(f"bytes sent per GPU {fmt_bytes(d['levels']['interconnect']['bytes_sent_per_gpu'])} "
              f"({d['levels']['interconnect']['bytes_sent_per_gpu']:,} B); matmul FLOPs per GPU "
              f"{min(d['matmul_flops_per_gpu']):.4g}–{max(d['matmul_flops_per_gpu']):.4g}\n")
    if d["notes"]:
        out.write("notes:\n" + "".join(f"  - {n}\n" for n in d["notes"]))


def print_links(hardware: str, out: IO[str]) -> None:
    from iosim.multigpu import interconnect_of
    from iosim.textfmt import format_table
    ic = interconnect_of(hardware)
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else v, kind, src) for k, v, kind, src in ic.rows()]
    out.write(format_table(("key", "value", "kind", "source"), rows, "lrll"))


def run(args: argparse.Namespace, out: IO[str]) -> int:
    if args.links:
        print_links(args.hardware, out)
        return 0
    pred = predict_from_args(args, None if args.kernel == "none" else args.kernel)
    out.write(json.dumps(pred.to_dict(), indent=1) + "\n") if args.json else print_prediction(pred, out)
    return 0


def run_predict(args: argparse.Namespace, out: IO[str]) -> int:
    """``iosim predict --devices P ...``: the same prediction with predict's --kernel/--algorithm, --no-l2, --json
    (predict's single-GPU-only flags must be left at their defaults)."""
    for flag, bad in (("--pass", args.direction != "fwd"), ("--mask", bool(args.mask)), ("--varlen", args.varlen),
                      ("--page-size", args.page_size)):
        if bad:
            raise IosimError(f"{flag} is single-GPU only; drop it or --devices")
    from iosim.cli import varlen_args
    args, _ = varlen_args(args)  # --batch / --seq-q defaults (1, 4096)
    pred = predict_from_args(args, args.kernel)
    out.write(json.dumps(pred.to_dict(), indent=1) + "\n") if args.json else print_prediction(pred, out)
    return 0
