"""The exact L2 engine beside pycachesim on one line trace, side by side in one run (issue 19's acceptance check),
and the range path on an FA2-like trace of byte ranges.

    .venv/bin/python benchmarks/bench_l2_engine.py [--lines 4000000] [--repeat 3] [--json benchmarks/results/bench_l2_engine.json]

Line trace: the H100 L2 geometry (25,600 sets × 16 ways × 128-B lines, one shared cache, modulo index, LRU),
``--lines`` line accesses: half a strided sweep over 1.2× the capacity, half uniformly random lines over 2× the
capacity, 20 % stores (seed 0). Rows (best of ``--repeat``, all in this one run):
* pycachesim: its C loop (``CacheSimulator.loadstore``, one (loads, stores) tuple per line, built before timing).
* iosim compiled, lines: ``simulate_lines(set_index(line), line, …, pycachesim_stores=True)`` through the numba core
  (``iosim.memory.l2_jit``; compiled beforehand on a short trace), timed with the set indexing (threaded for the
  modulo hash), the counting sort of the accesses by set (``_group``) and the row-by-row simulation.
* iosim compiled, ranges: the same lines as 128-B byte ranges through ``CompiledState.run_ranges`` (set index,
  masks and lines walked inside the compiled loop; the path of ``L2Stream.feed_ranges`` and ``simulate``).
* iosim NumPy: the lines call with ``IOSIM_L2_ENGINE=numpy`` (the fallback).
Hit and miss counts must equal pycachesim's (the script fails otherwise). Rates are line accesses per second.

FA2-like range trace: the H100 profile's L2 (duplicated partitions, xor hash, way spread, 64-B DRAM fetch), exact
(stride 1); FA2 forward, one batch, ``--heads`` heads × ``--seq`` tokens, d = 128, bf16, 128 × 128 tiles: CTAs in waves
of 132, each step of a wave reads one K and one V tile row by row (256-B ranges) per CTA, after its Q tile, and writes
its O tile. Timed: ``simulate`` (range path) and, for comparison, expanding the lines in NumPy then ``simulate_lines``
on the compiled core, and the NumPy engine; DRAM sectors must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from iosim.atomic import atomic_write_text
from iosim.hwprofile import load_hardware
from iosim.memory import l2_jit
from iosim.memory.l2 import L2Geometry, RunTrace, _simulate_expanded, simulate, simulate_lines


def trace(geom: L2Geometry, n: int):
    rng = np.random.default_rng(0)
    cap = geom.sets * geom.ways
    line = np.where(rng.random(n) < 0.5, np.arange(n) % int(1.2 * cap), rng.integers(0, 2 * cap, n))
    return line, rng.random(n) < 0.2


def best(fn, repeat: int):
    """(best seconds, result) of ``repeat`` calls."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = fn()
        out.append((time.perf_counter() - t, r))
    return min(out, key=lambda x: x[0])


def run_pycachesim(geom: L2Geometry, line, write, repeat: int = 1):
    import cachesim
    ops = [(((), (a,)) if w else ((a,), ())) for a, w in zip((line * geom.line_bytes).tolist(), write.tolist())]

    def go():
        mem = cachesim.MainMemory()
        c = cachesim.Cache("L2", geom.sets, geom.ways, geom.line_bytes, "LRU")
        mem.load_to(c)
        mem.store_from(c)
        cachesim.CacheSimulator(c, mem).loadstore(ops, length=geom.line_bytes)
        return c.stats()

    dt, st = best(go, repeat)
    return dt, st["HIT_count"], st["MISS_count"]


def run_lines(geom: L2Geometry, line, write, engine: str, repeat: int):
    os.environ["IOSIM_L2_ENGINE"] = engine
    full = np.full(len(line), (1 << geom.sectors_per_line) - 1, np.uint8)
    go = lambda m: simulate_lines(geom.set_index(line[:m]), line[:m], full[:m], write[:m], geom.ways, "lru",
                                  pycachesim_stores=True)
    go(1000)   # compile (or load the cached machine code) before timing
    dt, r = best(lambda: go(len(line)), repeat)
    return dt, r["hits"], r["misses"]


def run_ranges(geom: L2Geometry, line, write, repeat: int):
    addr, nb, sm = line * geom.line_bytes, np.full(len(line), geom.line_bytes), np.zeros(len(line), np.int64)

    def go(m):
        cs = l2_jit.CompiledState(geom.sets, geom.ways, 1, "lru", 1, pycachesim_stores=True,
                                  sectors_per_line=geom.sectors_per_line)
        c = {k: 0 for k in l2_jit._COUNTERS}
        c.update(k_read=0, k_write=0, k_hit=0, k_acc=0)
        cs.run_ranges(c, geom, 1, addr[:m], nb[:m], write[:m], sm[:m], None)
        return c

    go(1000)
    dt, c = best(lambda: go(len(line)), repeat)
    return dt, c["hits"], c["misses"]


def fa2_trace(heads: int, seq: int, sms: int = 132, tile: int = 128, d: int = 128, eb: int = 2) -> RunTrace:
    """FA2 forward byte ranges (see the module docstring): Q, K, V, O of [heads, seq, d] one after the other."""
    row_b = d * eb
    tensor_b = heads * seq * row_b
    nt = seq // tile
    ctas = [(h, i) for h in range(heads) for i in range(nt)]
    rows = np.arange(tile) * row_b
    parts = []
    for w0 in range(0, len(ctas), sms):
        wave = ctas[w0:w0 + sms]
        head = np.array([h for h, _ in wave])
        qi = np.array([i for _, i in wave])
        sm = np.arange(len(wave))
        base = head * seq * row_b
        def tile_ranges(tensor, blk, write):
            a = (tensor * tensor_b + base + blk * tile * row_b)[:, None] + rows[None, :]
            return a.ravel(), np.repeat(sm, tile), np.full(a.size, write)
        parts.append(tile_ranges(0, qi, False))
        for j in range(nt):
            parts.append(tile_ranges(1, np.full(len(wave), j), False))
            parts.append(tile_ranges(2, np.full(len(wave), j), False))
        parts.append(tile_ranges(3, qi, True))
    addr = np.concatenate([p[0] for p in parts])
    return RunTrace(addr=addr, nbytes=np.full(len(addr), row_b), write=np.concatenate([p[2] for p in parts]),
                    sm=np.concatenate([p[1] for p in parts]), kernel=np.zeros(len(addr), np.int64))


def run_fa2(geom: L2Geometry, tr: RunTrace, repeat: int):
    rows = []
    os.environ["IOSIM_L2_ENGINE"] = "numba"
    small = RunTrace(tr.addr[:1000], tr.nbytes[:1000], tr.write[:1000], tr.sm[:1000], tr.kernel[:1000])
    simulate(small, geom, stride=1)
    _simulate_expanded([small], geom, 1, 1)
    for name, engine, fn in (("iosim compiled, ranges (simulate)", "numba", lambda: simulate(tr, geom, stride=1)),
                             ("iosim compiled, lines expanded in NumPy", "numba",
                              lambda: _simulate_expanded([tr], geom, 1, 1)),
                             ("iosim NumPy", "numpy", lambda: simulate(tr, geom, stride=1))):
        os.environ["IOSIM_L2_ENGINE"] = engine
        dt, r = best(fn, repeat if engine == "numba" else 1)
        reads = r.dram_read_sectors if hasattr(r, "dram_read_sectors") else r["dram_read_sectors"]
        lines = r.accesses if hasattr(r, "accesses") else r["accesses"]
        rows.append({"engine": name, "seconds": dt, "lines": lines, "lines_per_s": lines / dt,
                     "dram_read_sectors": reads})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "bench_l2_engine.json"))
    a = ap.parse_args()
    geom = L2Geometry(size_bytes=50 * 2**20, line_bytes=128, sector_bytes=32, ways=16)   # the H100's 25,600 sets
    line, write = trace(geom, a.lines)
    rows = [("pycachesim (C loop, loadstore)", *run_pycachesim(geom, line, write, a.repeat)),
            ("iosim compiled, lines", *run_lines(geom, line, write, "numba", a.repeat)),
            ("iosim compiled, ranges", *run_ranges(geom, line, write, a.repeat)),
            ("iosim NumPy fallback", *run_lines(geom, line, write, "numpy", 1))]
    ref = rows[0][2:]
    load = os.getloadavg()[0]
    print(f"{a.lines:,} line accesses, {geom.sets:,} sets x {geom.ways} ways x {geom.line_bytes} B, LRU; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {l2_jit.numba.get_num_threads()} "
          f"numba threads, load average {load:.1f} at the start")
    print(f"{'engine':<34}{'seconds':>9}{'M lines/s':>11}{'x pycachesim':>14}  hits / misses")
    out = {"lines": a.lines, "sets": geom.sets, "ways": geom.ways, "line_bytes": geom.line_bytes, "policy": "lru",
           "cpus": os.cpu_count(), "threads": l2_jit.numba.get_num_threads(), "load_average": load, "rows": []}
    for name, dt, hits, misses in rows:
        ratio = rows[0][1] / dt
        out["rows"].append({"engine": name, "seconds": dt, "lines_per_s": a.lines / dt, "ratio_vs_pycachesim": ratio,
                            "hits": hits, "misses": misses})
        print(f"{name:<34}{dt:>9.3f}{a.lines / dt / 1e6:>11.1f}{ratio:>14.2f}  {hits:,} / {misses:,}")
    for name, _, hits, misses in rows[1:]:
        assert (hits, misses) == ref, f"{name}: hits/misses {hits}/{misses} differ from pycachesim's {ref}"
    print("hit and miss counts identical to pycachesim's")
    h100 = L2Geometry.from_hardware(load_hardware("h100"))
    tr = fa2_trace(a.heads, a.seq)
    fa2 = run_fa2(h100, tr, a.repeat)
    print(f"\nFA2-like range trace, H100 profile L2 exact: {a.heads} heads x {a.seq} tokens, d 128, {len(tr.addr):,} "
          f"ranges of 256 B, {fa2[0]['lines']:,} line accesses")
    print(f"{'engine':<42}{'seconds':>9}{'M lines/s':>11}  DRAM read sectors")
    for r in fa2:
        print(f"{r['engine']:<42}{r['seconds']:>9.3f}{r['lines_per_s'] / 1e6:>11.1f}  {r['dram_read_sectors']:,}")
    assert len({r["dram_read_sectors"] for r in fa2}) == 1, "the FA2 engines disagree"
    out["fa2"] = {"heads": a.heads, "seq": a.seq, "ranges": len(tr.addr), "rows": fa2}
    atomic_write_text(a.json, json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
