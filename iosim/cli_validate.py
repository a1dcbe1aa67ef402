"""`iosim validate`: time the Triton kernel and the references on a GPU, read ncu counters, write reports.

Needs torch, triton and an NVIDIA GPU (``pip install 'iosim[gpu]'``); without ncu it reports times only.
"""

from __future__ import annotations

import argparse
from typing import IO

from iosim.errors import IosimError

COMMAND = "validate"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="on a GPU: time our Triton kernel, FlexAttention and SDPA; ncu counters vs iosim")
    p.add_argument("--out", default=None, help="report folder (default reports/validation/<gpu>, e.g. .../h100)")
    p.add_argument("--prefix", default="speed_validate", help="file name stem of the CSV/markdown/plot")
    p.add_argument("--seqs", type=_ints, default=(4096, 8192, 16384, 32768, 65536), help="sequence lengths, e.g. 4096,8192")
    p.add_argument("--head-dims", type=_ints, default=(64, 128))
    p.add_argument("--impls", default="iosim-triton,flex,sdpa-flash,sdpa-cudnn", help="comma-separated implementations")
    p.add_argument("--ncu-seqs", type=_ints, default=(4096, 16384), help="sequence lengths profiled with ncu")
    p.add_argument("--no-ncu", action="store_true", help="times only")


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim import validate as v
    impls = tuple(x.strip() for x in args.impls.split(",") if x.strip())
    bad = [i for i in impls if i not in v.IMPLS]
    if bad:
        raise IosimError(f"unknown implementation(s) {', '.join(bad)}; known: {', '.join(v.IMPLS)}")

    def log(msg: str) -> None:
        out.write(msg + "\n")
        out.flush()

    results = v.validate(args.out, args.seqs, args.head_dims, impls, ncu=not args.no_ncu, ncu_seqs=args.ncu_seqs,
                         log=log, prefix=args.prefix)
    out.write(f"{len(results)} cases; reports written as {args.prefix}.csv/.md/_sm_read.png\n")
    return 0
