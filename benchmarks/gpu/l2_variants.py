"""Sweep L2-model variants over a validate_l2 measurement (DRAM read error per case, L2-bound summary).

    python benchmarks/gpu/l2_variants.py MEASURED.csv BASE_PROFILE "name:key=val,key=val" ... [--cases 1,2] [--jobs 2]

Keys: any L2Geometry field (policy, ways, hash, sharing, home_granule_lines, store_near, dram_fetch_bytes, ...) and
``jitter`` (the CTA speed spread). A development tool: the calibrated choice is made from the microbenchmarks
(iosim.l2fit), and this shows what each choice does to the attention runs.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from multiprocessing import Pool

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_l2 import KERNEL, L2_BOUND, qkv_bytes, read_measured  # noqa: E402

from iosim.hwprofile import load_hardware  # noqa: E402
from iosim.memory.l2 import L2Geometry  # noqa: E402
from iosim.pipeline import predict  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402


def parse_variant(s: str):
    name, _, kv = s.partition(":")
    kw = {}
    for part in filter(None, kv.split(",")):
        k, v = part.split("=")
        kw[k] = {"true": True, "false": False}.get(v, int(v) if v.isdigit() else (float(v) if v.replace(".", "").isdigit() else v))
    return name, kw


def run_case(args):
    c, base, variants = args
    from validate_l2 import mask_tables
    p = Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", bool(c["causal"]))
    kernel = KERNEL[c["impl"]]
    mask = mask_tables(c) if kernel == "flex" else None
    hw = load_hardware(base)
    out = {}
    for name, kw in variants:
        kw = dict(kw)
        jit = kw.pop("jitter", None)
        geom = replace(L2Geometry.from_hardware(hw), **kw)
        pr = predict(hw, p, KernelConfig(), kernel=kernel, block_mask=mask, l2_geometry=geom, cta_jitter=jit)
        out[name] = pr.dram_read_bytes
    return c["id"], out


def main(argv):
    meas, base = argv[0], argv[1]
    jobs, cases = 2, None
    vs = []
    i = 2
    while i < len(argv):
        if argv[i] == "--jobs":
            jobs = int(argv[i + 1]); i += 2; continue
        if argv[i] == "--cases":
            cases = {int(x) for x in argv[i + 1].split(",")}; i += 2; continue
        vs.append(parse_variant(argv[i])); i += 1
    rows = [r for r in read_measured(meas) if not r["error"] and (cases is None or r["id"] in cases)]
    with Pool(jobs) as pool:
        res = dict(pool.map(run_case, [(c, base, vs) for c in rows], chunksize=1))
    print("id impl  Hq/Hkv      N   d c dens  meas/QKV  " + "  ".join(f"{n:>12s}" for n, _ in vs))
    errs = {n: ([], []) for n, _ in vs}
    for c in rows:
        q = qkv_bytes(c)
        m = c["measured_dram_read"]
        bound = m > L2_BOUND * q
        line = f"{c['id']:2d} {c['impl']:4s} {c['Hq']:3d}/{c['Hkv']:<3d} {c['N']:6d} {c['d']:3d} {c['causal']} {c['density']:.1f} {m / q:8.2f}{'*' if bound else ' '} "
        for n, _ in vs:
            e = res[c["id"]][n] / m - 1
            errs[n][0 if bound else 1].append(e)
            line += f"  {res[c['id']][n] / q:6.2f} {e:+6.1%}"
        print(line)
    for n, _ in vs:
        b, o = (np.array(x) for x in errs[n])
        wb = b[np.argmax(np.abs(b))] if len(b) else float("nan")
        wo = o[np.argmax(np.abs(o))] if len(o) else float("nan")
        print(f"{n}: L2-bound n={len(b)} median |err| {np.median(np.abs(b)):.1%} worst {wb:+.1%}; rest n={len(o)} "
              f"median {np.median(np.abs(o)) if len(o) else float('nan'):.1%} worst {wo:+.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
