"""``iosim sparsity``: does a sparse-attention method pay off? Its predicted time (pre-pass + index building + sparse
kernel + reductions) against dense FlashAttention-2 (and FA3 on Hopper, FA4 on Blackwell) over a range of densities,
the speedup, the pre-pass share and the break-even density, per hardware profile (``iosim.sparsity``).

    iosim sparsity --algorithm xattention --hardware h100 --seq-q 32768 --heads 32 --head-dim 128 --causal
    iosim sparsity --algorithm xattention --hardware h100,b200 --param stride=8 --densities 0.05,0.1,0.3,1 --json
"""

from __future__ import annotations

import argparse
import json
from typing import IO

from iosim.errors import IosimError

COMMAND = "sparsity"
HELP = "speedup of a sparse-attention method over dense FA2/FA3 vs density, break-even density, pre-pass share"


def add_parser(sub) -> None:
    from iosim.cli import add_param_flag, add_problem_flags
    from iosim.cli_tiles import add_jobs_arg
    from iosim.sparsity import DEFAULT_DENSITIES
    p = sub.add_parser(COMMAND, help=HELP, description=HELP + " (iosim.sparsity)")
    add_problem_flags(p)
    p.set_defaults(algorithm=None)
    p.add_argument("--densities", default=",".join(f"{d:g}" for d in DEFAULT_DENSITIES), metavar="D1,D2,…",
                   help="kept fractions of causal-valid blocks to predict, in [0, 1] (default %(default)s)")
    p.add_argument("--block-m", default=None, help="query rows per tile of the method's kernels (default: its own)")
    p.add_argument("--block-n", default=None, help="keys per tile (default: the method's own)")
    p.add_argument("--l2", action="store_true", help="full model: simulate the L2 for every point (slow at long "
                   "context); default: SM↔L2 counts with compulsory DRAM traffic")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_param_flag(p)
    add_jobs_arg(p, "densities and baselines (one per task)", 1)
    p.epilog = "--hardware takes a comma-separated list (h100,a100,b200): one table per profile"


def hardware_list(text: str) -> list[str]:
    hws = [h.strip() for h in str(text).split(",")]
    if not hws or any(not h for h in hws):
        raise IosimError(f"--hardware {text!r}: give profile names or paths separated by commas, e.g. h100,b200")
    return list(dict.fromkeys(hws))


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim.cli import chip_dtype, params_of, read_sizes
    from iosim.cli_tiles import jobs_from_args
    from iosim.hwprofile import load_hardware
    from iosim.problem import KernelConfig, Problem
    from iosim import sparsity as sp
    a = read_sizes(args)
    if a.algorithm is None:
        known = ", ".join(sp.sparse_algorithms()) or "none registered yet"
        raise IosimError(f"give --algorithm, a sparse method: {known}")
    sp.check_algorithm(a.algorithm)
    densities = sp.parse_densities(a.densities)
    params = params_of(a) or {}
    if "density" in params:
        raise IosimError("give the densities with --densities 0.1,0.3,…, not --param density")
    hws = hardware_list(a.hardware)
    for h in hws:
        load_hardware(h)  # an unknown profile fails before any prediction

    def problem(h: str) -> Problem:
        return Problem(a.batch, a.heads, a.kv_heads if a.kv_heads is not None else a.heads, a.seq_q,
                       a.seq_kv if a.seq_kv is not None else a.seq_q, a.head_dim, a.dtype or chip_dtype(h), a.causal)

    config = KernelConfig(a.block_m, a.block_n)
    from iosim.report import Progress
    bar = Progress("sparsity", len(hws) * (len(densities) + len(sp.BASELINES)))  # shown after 2 s, on stderr
    cs, failed = [], {}
    jobs = jobs_from_args(a, 1)
    try:
        for h in hws:
            try:
                cs.append(sp.curve(h, problem(h), a.algorithm, densities, params, l2=a.l2, config=config, jobs=jobs,
                                   progress=bar.step))
            except IosimError as e:
                if len(hws) == 1:
                    raise
                failed[h] = str(e)  # one profile the method cannot run on: the others still print
    finally:
        bar.close()
    if not cs:
        raise IosimError("no profile could run it: " + "; ".join(f"{h}: {e}" for h, e in failed.items()))
    if a.json:
        doc = sp.to_json(cs, densities)
        doc["failed"] = failed
        out.write(json.dumps(doc, indent=1) + "\n")
    else:
        out.write("\n".join(sp.format_curve(c) for c in cs))
        if len(cs) > 1:
            out.write("\n" + sp.format_summary(cs))
        for h, e in failed.items():
            out.write(f"{h}: failed: {e}\n")
    return 1 if failed else 0
