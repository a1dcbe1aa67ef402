"""``iosim report``: the roofline/IO report folder (index.html, report.md, table.csv, PNG plots). No GPU needed."""

from __future__ import annotations

import argparse
from typing import IO

from iosim.errors import IosimError
from iosim.problem import DTYPE_BYTES

COMMAND = "report"


def add_parser(sub) -> None:
    from iosim.cli_tiles import add_jobs_arg
    from iosim.report import DEFAULT_ALGORITHMS, DEFAULT_HARDWARE, DEFAULT_JOBS, DEFAULT_OUT, DEFAULT_SEQS, MASK_OUT
    p = sub.add_parser(COMMAND, help="write an HTML/Markdown report with rooflines, IO and time sweeps, tile heatmaps")
    p.add_argument("--hardware", nargs="+", default=list(DEFAULT_HARDWARE), help="profiles (default: %(default)s)")
    p.add_argument("--algorithms", nargs="+", default=list(DEFAULT_ALGORITHMS), help="default: %(default)s")
    p.add_argument("--seqs", nargs="+", type=int, default=list(DEFAULT_SEQS), help="sequence lengths N")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default=None, choices=sorted(DTYPE_BYTES),
                   help="default bf16, or fp16 if a chosen chip has no bf16 tensor cores (v100)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT}; with --masks {MASK_OUT})")
    p.add_argument("--sparsity", action="store_true", help="write the sparsity page instead: each sparse method's "
                   "speedup over dense FA2/FA3/FA4 vs density, break-even density, pre-pass share (iosim.report_sparsity)")
    p.add_argument("--masks", action="store_true", help="write the mask page instead: IO and time of FA2's loop "
                   "over sliding-window, document and random block masks at N=32K on h100 (iosim.mask_bounds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_jobs_arg(p, "sweeps (the plots are drawn in this process)", DEFAULT_JOBS)


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim.atomic import writable_dir
    from iosim.cli_tiles import jobs_from_args
    from iosim.report import DEFAULT_JOBS, DEFAULT_OUT, MASK_OUT, ReportConfig, generate, generate_masks
    if args.head_dim < 1 or args.heads < 1 or args.batch < 1:
        raise IosimError("--head-dim, --heads and --batch must be positive")
    folder = args.out or (MASK_OUT if args.masks else "reports/sparsity" if args.sparsity else DEFAULT_OUT)
    writable_dir(folder)
    from iosim.cli import chip_dtype
    lacking = [h for h in args.hardware if chip_dtype(h) != "bf16"]
    dtype = args.dtype or ("fp16" if lacking else "bf16")
    cfg = ReportConfig(hardware=tuple(args.hardware), algorithms=tuple(args.algorithms), seqs=tuple(args.seqs),
                       batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=dtype,
                       causal=args.causal, out=folder)
    if args.masks:
        res = generate_masks(cfg, progress=not args.quiet)
    elif args.sparsity:
        from iosim.report_sparsity import generate_sparsity
        res = generate_sparsity(cfg, progress=not args.quiet, jobs=jobs_from_args(args, DEFAULT_JOBS))
    else:
        res = generate(cfg, progress=not args.quiet, jobs=jobs_from_args(args, DEFAULT_JOBS))
    out.write(f"wrote {len(res.files)} files to {res.out}/ in {res.seconds:.1f} s: {', '.join(res.files)}\n")
    for f in res.failures:
        out.write(f"  failed: {f}\n")
    if args.dtype is None and lacking:
        out.write(f"  dtype fp16: {', '.join(lacking)} has no bf16 tensor cores (give --dtype to choose)\n")
    return 1 if res.failures else 0  # a failed point, plot or section: what finished is written, the exit says so
