"""``iosim tiles``: rank the legal tile configurations of one problem by predicted time."""

from __future__ import annotations

import argparse
import json
from typing import IO

from iosim.cost import PATHS
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.cli import add_param_flag, add_problem_flags, params_of, problem_of, read_sizes
from iosim.problem import Problem

COMMAND = "tiles"


def add_problem_args(p: argparse.ArgumentParser) -> None:
    """The problem (not the tiling), the hardware and the instruction path: shared by ``tiles`` and ``hints``."""
    add_problem_flags(p)
    p.add_argument("--path", default=None, choices=PATHS,
                   help="tensor-core instruction path (default: the chip's native one; FA2's CUDA kernel = mma.sync)")
    add_param_flag(p)


def fwd_params(a: argparse.Namespace, mode: str) -> dict | None:
    """--param KEY=VALUE … for the forward chooser (a sparse family's density, seed, …); refused by the others."""
    params = params_of(a)
    if params and mode != "fwd":
        raise IosimError(f"--param sets an algorithm's method parameters for the forward tile chooser; the {mode} "
                         f"chooser ranks {'--kernel ' + a.kernel if mode == 'persistent' else 'FA2'}'s own knobs, "
                         "drop --param")
    return params


def problem_from_args(a: argparse.Namespace) -> Problem:
    return problem_of(read_sizes(a))


def add_parser(sub) -> None:
    from iosim.tiles import DEFAULT_JOBS
    p = sub.add_parser(COMMAND, help="rank legal (block_m, block_n, num_warps, num_stages) by predicted time")
    add_problem_args(p)
    p.add_argument("--top", type=int, default=5, help="how many configurations to show (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_mode_args(p)
    add_jobs_arg(p, "configurations (one block_m × block_n per task)", DEFAULT_JOBS)


def add_mode_args(p: argparse.ArgumentParser) -> None:
    """--pass, --decode, --kernel: which chooser runs (``mode_of``); shared by ``tiles`` and ``hints``."""
    p.add_argument("--pass", dest="direction", default="fwd", choices=("fwd", "bwd"),
                   help="bwd: rank the backward's (block_m, block_n, num_warps, stages) beside --kernel's own")
    p.add_argument("--decode", default="auto", choices=("auto", "on", "off"),
                   help="rank FA2's split-KV (num_splits, block_n) (auto: on a decode shape: FA2 packs GQA rows or "
                        "splits KV, or seq_q ≤ 64; or --algorithm splitkv)")
    p.add_argument("--kernel", default="fa2", help="--pass bwd: the preset whose backward tiles are shown (default fa2); "
                   "fa3, cudnn, fa4 (forward tiles) or lean (workers × block_n): rank that persistent kernel's knobs "
                   "beside its own launch")


def mode_of(a: argparse.Namespace, problem: Problem, hw) -> str:
    """'bwd', 'decode', 'persistent' (--kernel fa3/cudnn/fa4/lean) or 'fwd' (the Triton forward chooser)."""
    from iosim.tiles import PERSISTENT_KERNELS, check_persistent, decode_applies
    if a.kernel in PERSISTENT_KERNELS and a.direction == "fwd":
        if a.decode == "on":
            raise IosimError(f"--decode on ranks FA2's split-KV path; --kernel {a.kernel} ranks its own knobs, drop one")
        if a.path is not None:
            raise IosimError(f"--path: --kernel {a.kernel} pins its instruction path; drop --path")
        check_persistent(a.kernel, hw)
        return "persistent"
    if a.direction == "bwd":
        if a.decode == "on":
            raise IosimError("--decode on ranks FA2's split-KV forward; drop it for --pass bwd")
        return "bwd"
    if a.decode == "on" or (a.decode == "auto" and (a.algorithm == "splitkv" or (
            a.algorithm == "flash2" and isinstance(problem.seq_q, int) and decode_applies(problem, hw)))):
        if a.algorithm not in ("flash2", "splitkv"):
            raise IosimError(f"--decode on ranks FA2's split-KV path (flash2/splitkv), not --algorithm {a.algorithm}")
        return "decode"
    if a.algorithm == "splitkv":
        raise IosimError("--algorithm splitkv is ranked by the decode chooser; drop --decode off")
    return "fwd"


def add_jobs_arg(p: argparse.ArgumentParser, what: str, default: int | None) -> None:
    """``--jobs N`` (``iosim tiles``, ``iosim report``): worker processes; read by ``jobs_from_args``."""
    p.add_argument("--jobs", default=None, help=f"worker processes for the {what}; 0 = every core (default "
                   f"{'every core' if default is None else default}; the output does not depend on it)")


def jobs_from_args(a: argparse.Namespace, default: int | None) -> int | None:
    """--jobs as ``iosim.parallel.map_ordered`` takes it: None = every core; ``default`` when not given."""
    if a.jobs is None:
        return default
    try:
        n = int(a.jobs)
    except ValueError:
        n = -1
    if n < 0:
        raise IosimError(f"--jobs must be a whole number ≥ 0 (0 = every core), got {a.jobs!r}")
    return n or None


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim.tiles import (DEFAULT_JOBS, choose, choose_bwd, choose_decode, choose_persistent, format_bwd,
                             format_decode, format_persistent, format_table)
    if args.top < 1:
        raise IosimError(f"--top must be at least 1, got {args.top}")
    hw, problem = load_hardware(args.hardware), problem_from_args(args)
    mode = mode_of(args, problem, hw)
    fwd_params(args, mode)
    if mode == "persistent":
        choice, fmt = choose_persistent(hw, problem, args.kernel), format_persistent
    elif mode == "decode":
        choice, fmt = choose_decode(hw, problem), format_decode
    elif mode == "bwd":
        choice, fmt = choose_bwd(hw, problem, args.algorithm, kernel=args.kernel), format_bwd
    else:
        params = fwd_params(args, mode)
        choice = choose(hw, problem, args.algorithm, path=args.path, jobs=jobs_from_args(args, DEFAULT_JOBS),
                        **({"params": params} if params else {}))
        fmt = format_table
    if args.json:
        out.write(json.dumps(choice.to_dict(args.top), indent=1) + "\n")
    else:
        out.write(fmt(choice, args.top))
    return 0
