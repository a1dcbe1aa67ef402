"""Grid search of the coupled CTA timeline's parameters (``iosim.memory.coupled.Coupling``) against measured DRAM reads.

    .venv/bin/python benchmarks/gpu/fit_coupling.py reports/validation/h100/l2_validation_raw/measured.csv \
        --profile h100 --miss-cost 0.5,1,2 --noise 0,0.2,0.4 [--chunk 4] [--drift 0.25] [--jitter 0.2,0.3]
        [--no-coupled] [--no-baseline] [--jobs N] [--csv out.csv]

Every case of measured.csv (as ``compare_l2.py`` reads it) is predicted for every (miss_cost, noise, chunk) of the
grid, plus the default convoy/drift timeline ("baseline", and with ``--jitter`` other drifts); the summary gives, per grid point, the median |error| and
the worst signed error on the L2-bound runs (measured DRAM > 1.15 × Q+K+V) and on the rest. Fit on set 1 only;
set 2 is held out (reports/validation/h100/README.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from compare_l2 import KERNEL, L2_BOUND, describe, qkv_bytes, read_measured


def _one(args):
    c, spec, point = args
    from validate_l2 import mask_tables

    from iosim.memory.coupled import Coupling
    from iosim.hwprofile import load_hardware
    from iosim.pipeline import predict
    from iosim.problem import KernelConfig, Problem
    p = Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", bool(c["causal"]))
    kernel = KERNEL[c["impl"]]
    jitter = point[1] if point is not None and point[0] == "jitter" else None
    coupling = None if point is None or jitter is not None else Coupling(*point)
    t = time.perf_counter()
    pr = predict(load_hardware(spec), p, KernelConfig(), kernel=kernel,
                 block_mask=mask_tables(c) if kernel == "flex" else None, cta_coupling=coupling, cta_jitter=jitter)
    return c["id"], point, pr.dram_read_bytes, time.perf_counter() - t


def summary(rows, errs, point) -> str:
    out = []
    for bound in (1, 0):
        sel = [r for r in rows if (r["measured_dram_read"] > L2_BOUND * qkv_bytes(r)) == bool(bound)]
        e = [(errs[(r["id"], point)], r) for r in sel if (r["id"], point) in errs]
        if not e:
            out.append("-")
            continue
        med = statistics.median(abs(x) for x, _ in e)
        worst = max(e, key=lambda x: abs(x[0]))
        out.append(f"n={len(e)} median {100 * med:.1f}% worst {100 * worst[0]:+.1f}% ({describe(worst[1])})")
    return " | ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measured")
    ap.add_argument("--profile", default="h100")
    ap.add_argument("--miss-cost", default="1")
    ap.add_argument("--noise", default="0")
    ap.add_argument("--chunk", default="4")
    ap.add_argument("--drift", default="0")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--jitter", default=None, help="also the convoy/drift timeline at these drifts (no coupling)")
    ap.add_argument("--no-coupled", action="store_true", help="skip the coupled grid")
    ap.add_argument("--cases", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--csv", default=None)
    a = ap.parse_args(argv)
    rows = [r for r in read_measured(a.measured) if not math.isnan(r["measured_dram_read"]) and r["impl"] in KERNEL]
    if a.cases:
        keep = {int(x) for x in a.cases.split(",")}
        rows = [r for r in rows if r["id"] in keep]
    grid = [tuple(float(v) for v in p) for p in itertools.product(a.miss_cost.split(","), a.noise.split(","),
                                                                  a.chunk.split(","), a.drift.split(","))]
    if a.no_coupled:
        grid = []
    jit = [("jitter", float(j)) for j in a.jitter.split(",")] if a.jitter else []
    points = ([] if a.no_baseline else [None]) + jit + grid
    # biggest cases first so the pool's tail is short
    work = sorted(((r, a.profile, pt) for r in rows for pt in points),
                  key=lambda x: -x[0]["N"] ** 2 * x[0]["B"] * x[0]["Hq"])
    errs, secs = {}, {}
    meas = {r["id"]: r["measured_dram_read"] for r in rows}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "miss_cost", "noise", "chunk", "drift", "pred_dram_read", "err", "seconds"])
    with ProcessPoolExecutor(a.jobs) as ex:
        for cid, pt, dram, dt in ex.map(_one, work):
            errs[(cid, pt)] = dram / meas[cid] - 1
            secs[pt] = max(secs.get(pt, 0), dt)
            w.writerow([cid, *(pt or ("baseline", "", "", "")), *([""] * (4 - len(pt or "xxxx"))), dram,
                        errs[(cid, pt)], f"{dt:.1f}"])
    for pt in points:
        print(f"{'baseline' if pt is None else pt}: {summary(rows, errs, pt)} [max {secs.get(pt, 0):.0f}s]")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
