"""``iosim tiles``: rank the legal tile configurations of one problem by predicted time."""

from __future__ import annotations

import argparse
import json
from typing import IO

from iosim.cost import PATHS
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.cli import add_problem_flags, problem_of, read_sizes
from iosim.problem import Problem

COMMAND = "tiles"


def add_problem_args(p: argparse.ArgumentParser) -> None:
    """The problem (not the tiling), the hardware and the instruction path: shared by ``tiles`` and ``hints``."""
    add_problem_flags(p)
    p.add_argument("--path", default=None, choices=PATHS,
                   help="tensor-core instruction path (default: the chip's native one; FA2's CUDA kernel = mma.sync)")


def problem_from_args(a: argparse.Namespace) -> Problem:
    return problem_of(read_sizes(a))


def add_parser(sub) -> None:
    from iosim.tiles import DEFAULT_JOBS
    p = sub.add_parser(COMMAND, help="rank legal (block_m, block_n, num_warps, num_stages) by predicted time")
    add_problem_args(p)
    p.add_argument("--top", type=int, default=5, help="how many configurations to show (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_jobs_arg(p, "configurations (one block_m × block_n per task)", DEFAULT_JOBS)


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
    from iosim.tiles import DEFAULT_JOBS, choose, format_table
    if args.top < 1:
        raise IosimError(f"--top must be at least 1, got {args.top}")
    choice = choose(load_hardware(args.hardware), problem_from_args(args), args.algorithm, path=args.path,
                    jobs=jobs_from_args(args, DEFAULT_JOBS))
    if args.json:
        out.write(json.dumps(choice.to_dict(args.top), indent=1) + "\n")
    else:
        out.write(format_table(choice, args.top))
    return 0
