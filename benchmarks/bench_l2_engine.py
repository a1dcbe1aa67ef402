"""The exact L2 engine beside pycachesim on one line trace, side by side in one run (issue 19's acceptance check).

    .venv/bin/python benchmarks/bench_l2_engine.py [--lines 4000000] [--json benchmarks/results/bench_l2_engine.json]

Trace: the H100 L2 geometry (25,600 sets × 16 ways × 128-B lines, one shared cache, modulo index, LRU), ``--lines``
line accesses: half a strided sweep over 1.2× the capacity, half uniformly random lines over 2× the capacity, 20 %
stores (seed 0). Rows:
* pycachesim: its C loop (``CacheSimulator.loadstore``, one (loads, stores) tuple per line, built before timing).
* iosim compiled: ``simulate_lines(set_index(line), line, …, pycachesim_stores=True)`` through the numba core
  (``iosim.memory.l2_jit``; compiled beforehand on a short trace), timed with the set indexing.
* iosim NumPy: the same call with ``IOSIM_L2_ENGINE=numpy`` (the fallback).
Hit and miss counts must equal pycachesim's (the script fails otherwise). Rates are line accesses per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from iosim.atomic import atomic_write_text
from iosim.memory.l2 import L2Geometry, simulate_lines


def trace(geom: L2Geometry, n: int):
    rng = np.random.default_rng(0)
    cap = geom.sets * geom.ways
    line = np.where(rng.random(n) < 0.5, np.arange(n) % int(1.2 * cap), rng.integers(0, 2 * cap, n))
    return line, rng.random(n) < 0.2


def run_pycachesim(geom: L2Geometry, line, write):
    import cachesim
    mem = cachesim.MainMemory()
    c = cachesim.Cache("L2", geom.sets, geom.ways, geom.line_bytes, "LRU")
    mem.load_to(c)
    mem.store_from(c)
    cs = cachesim.CacheSimulator(c, mem)
    ops = [(((), (a,)) if w else ((a,), ())) for a, w in zip((line * geom.line_bytes).tolist(), write.tolist())]
    t = time.perf_counter()
    cs.loadstore(ops, length=geom.line_bytes)
    dt = time.perf_counter() - t
    st = c.stats()
    return dt, st["HIT_count"], st["MISS_count"]


def run_iosim(geom: L2Geometry, line, write, engine: str):
    os.environ["IOSIM_L2_ENGINE"] = engine
    full = np.full(len(line), (1 << geom.sectors_per_line) - 1, np.uint8)
    simulate_lines(geom.set_index(line[:1000]), line[:1000], full[:1000], write[:1000], geom.ways, "lru",
                   pycachesim_stores=True)   # compile (or load the cached machine code) before timing
    t = time.perf_counter()
    r = simulate_lines(geom.set_index(line), line, full, write, geom.ways, "lru", pycachesim_stores=True)
    return time.perf_counter() - t, r["hits"], r["misses"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=4_000_000)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "bench_l2_engine.json"))
    a = ap.parse_args()
    geom = L2Geometry(size_bytes=50 * 2**20, line_bytes=128, sector_bytes=32, ways=16)   # the H100's 25,600 sets
    line, write = trace(geom, a.lines)
    rows = [("pycachesim (C loop, loadstore)", *run_pycachesim(geom, line, write)),
            ("iosim exact, compiled (numba)", *run_iosim(geom, line, write, "numba")),
            ("iosim exact, NumPy fallback", *run_iosim(geom, line, write, "numpy"))]
    ref = rows[0][2:]
    print(f"{a.lines:,} line accesses, {geom.sets:,} sets x {geom.ways} ways x {geom.line_bytes} B, LRU; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'engine':<34}{'seconds':>9}{'M lines/s':>11}{'x pycachesim':>14}  hits / misses")
    out = {"lines": a.lines, "sets": geom.sets, "ways": geom.ways, "line_bytes": geom.line_bytes, "policy": "lru",
           "cpus": os.cpu_count(), "rows": []}
    for name, dt, hits, misses in rows:
        ratio = rows[0][1] / dt
        out["rows"].append({"engine": name, "seconds": dt, "lines_per_s": a.lines / dt, "ratio_vs_pycachesim": ratio,
                            "hits": hits, "misses": misses})
        print(f"{name:<34}{dt:>9.3f}{a.lines / dt / 1e6:>11.1f}{ratio:>14.2f}  {hits:,} / {misses:,}")
    for name, _, hits, misses in rows[1:]:
        assert (hits, misses) == ref, f"{name}: hits/misses {hits}/{misses} differ from pycachesim's {ref}"
    print("hit and miss counts identical to pycachesim's")
    atomic_write_text(a.json, json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
