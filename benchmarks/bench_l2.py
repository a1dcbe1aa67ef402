"""L2 simulator speed: line accesses per second on an FA2 trace, iosim beside pycachesim on the same trace, and the
FA2 causal B=1, H=16, N=65536, d=128 end-to-end run (time and peak memory).

    .venv/bin/python benchmarks/bench_l2.py [--json benchmarks/results/bench_l2.json] [--skip-big] [--policy P]
                                            [--hash H]

Rows:
* pycachesim: the trace's byte ranges fed to pycachesim's C backend (``Cache.load/store(addr, length)`` per range),
  one LRU level with the H100 L2 geometry (25,600 sets × 16 ways × 128 B), shared.
* iosim exact: every set simulated (stride 1), same geometry and trace: hit/miss counts must equal pycachesim's;
  once with the lines expanded in NumPy (``expand_lines`` + ``simulate_lines``), once with the compiled core walking
  the byte ranges in place (``iosim.memory.l2_jit.CompiledState.run_ranges``, the path of ``simulate``).
* iosim default: the model as ``iosim predict`` runs it (set sampling, duplicated partitions).
``--policy`` (lru, fifo, mru, random, plru, srrip, brrip, lip) and ``--hash`` (modulo, rotate, xor) set the replacement
policy and set hash of the sampled rows and of the big run; the pycachesim and exact rows stay LRU (pycachesim has no
other deterministic policy to compare with), and ``--policy all`` times the default row for every policy.
Rates count line accesses of the whole trace (sampled runs: the lines they stand for) per second of simulation,
excluding trace construction (timed separately).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


from iosim.memory.hierarchy import build_trace
from iosim.hwprofile import load_hardware
from iosim.memory.l2 import HASHES, POLICIES, L2Geometry, RunTrace, expand_lines, simulate, simulate_lines
from iosim.pipeline import build_schedule
from iosim.presets import apply
from iosim.problem import KernelConfig, Problem


def fa2_trace(hw, B, H, N, d, causal):
    p = Problem(B, H, H, N, N, d, "bf16", causal)
    alg, cfg, pre = apply("fa2", p, hw, KernelConfig())
    s = build_schedule(alg, p, cfg, hw)
    t = time.perf_counter()
    tr, _ = build_trace(s, hw, regs_per_thread=pre.regs_per_thread)
    return tr, time.perf_counter() - t


def run_pycachesim(tr, geom):
    import cachesim
    mem = cachesim.MainMemory()
    c = cachesim.Cache("L2", geom.sets, geom.ways, geom.line_bytes, "LRU")
    mem.load_to(c)
    mem.store_from(c)
    cs = cachesim.CacheSimulator(c, mem)
    addr, nb, wr = tr.addr.tolist(), tr.nbytes.tolist(), tr.write.tolist()
    t = time.perf_counter()
    load, store = cs.load, cs.store
    for a, n, w in zip(addr, nb, wr):
        (store if w else load)(a, n)
    dt = time.perf_counter() - t
    st = c.stats()
    return dt, st["HIT_count"], st["MISS_count"]


def exact_ranges(tr, geom):
    """Every set, the compiled core walking the ranges' lines in place, pycachesim's store accounting."""
    from iosim.memory import l2_jit
    cs = l2_jit.CompiledState(geom.sets, geom.ways, 1, "lru", 1, pycachesim_stores=True,
                              sectors_per_line=geom.sectors_per_line)
    c = {k: 0 for k in l2_jit._COUNTERS}
    c.update(k_read=0, k_write=0, k_hit=0, k_acc=0)
    cs.run_ranges(c, geom, 1, tr.addr[:1000], tr.nbytes[:1000], tr.write[:1000], tr.sm[:1000], None)  # compile
    cs = l2_jit.CompiledState(geom.sets, geom.ways, 1, "lru", 1, pycachesim_stores=True,
                              sectors_per_line=geom.sectors_per_line)
    c = {k: 0 for k in l2_jit._COUNTERS}
    c.update(k_read=0, k_write=0, k_hit=0, k_acc=0)
    t = time.perf_counter()
    cs.run_ranges(c, geom, 1, tr.addr, tr.nbytes, tr.write, tr.sm, None)
    return time.perf_counter() - t, c["hits"], c["misses"]


def _over(policy: str, hash_: str) -> dict:
    """Geometry overrides: 'profile' keeps the H100 profile's (calibrated) value."""
    return {k: v for k, v in (("policy", policy), ("hash", hash_)) if v != "profile"}


def big_run(policy: str = "profile", hash_: str = "profile") -> dict:
    """FA2 causal B=1 H=16 N=65536 d=128 through the default L2 model, in a fresh process (peak RSS)."""
    code = ("import time,resource,json;t=time.perf_counter();"
            "from iosim.pipeline import predict;from iosim.hwprofile import load_hardware;"
            "from iosim.problem import Problem,KernelConfig;from iosim.memory.l2 import L2Geometry;hw=load_hardware('h100');"
            f"g=L2Geometry.from_hardware(hw,**{_over(policy, hash_)!r});"
            "p=predict(hw,Problem(1,16,16,65536,65536,128,'bf16',True),KernelConfig(),kernel='fa2',l2_geometry=g);"
            "print(json.dumps({'seconds':time.perf_counter()-t,'cpu_seconds':time.process_time(),"
            "'peak_rss_bytes':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024,"
            "'dram_read_bytes':p.dram_read_bytes,'line_accesses':p.l2.l2.accesses,'stride':p.l2.l2.stride}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_l2.json"))
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--policy", default="profile", choices=POLICIES + ("all", "profile"),
                    help="replacement policy of the sampled rows and the big run (profile: the H100 profile's, "
                         "calibrated); all: the default row for each")
    ap.add_argument("--hash", default="profile", choices=HASHES + ("profile",))
    a = ap.parse_args()
    hw = load_hardware("h100")
    if a.policy == "all":
        return policy_table(hw, a)
    # the exactness check against pycachesim: plain LRU, modulo index, sector fetches (what pycachesim models)
    shared = L2Geometry.from_hardware(hw, sharing="shared", policy="lru", hash="modulo", dram_fetch_bytes=0)
    res = {"trace": f"FA2 (fa2 preset) causal B=1 H=16 N={a.seq} d=128 bf16, H100 geometry",
           "policy": a.policy, "hash": a.hash}
    tr, t_trace = fa2_trace(hw, 1, 16, a.seq, 128, True)
    res["trace_build_seconds"] = t_trace
    res["ranges"] = len(tr.addr)

    t = time.perf_counter()
    line, mask, w, sm, kern = expand_lines(tr, shared)
    r = simulate_lines(shared.set_index(line), line, mask, w, shared.ways, "lru", pycachesim_stores=True)
    t_exact = time.perf_counter() - t
    n_lines = len(line)
    del line, mask, w, sm, kern
    res["line_accesses"] = n_lines

    t_py, hit_py, miss_py = run_pycachesim(tr, shared)
    t_ranges, hit_r, miss_r = exact_ranges(tr, shared)

    shared_g = L2Geometry.from_hardware(hw, sharing="shared", **_over(a.policy, a.hash))
    small = RunTrace(tr.addr[:1000], tr.nbytes[:1000], tr.write[:1000], tr.sm[:1000], tr.kernel[:1000])
    for g in (shared_g, L2Geometry.from_hardware(hw, **_over(a.policy, a.hash))):
        simulate(small, g)   # compile (or load the cached machine code) before timing
    t = time.perf_counter()
    shared_sampled = simulate(tr, shared_g)
    t_shared_sampled = time.perf_counter() - t
    dup = L2Geometry.from_hardware(hw, **_over(a.policy, a.hash))
    t = time.perf_counter()
    dup_sampled = simulate(tr, dup)
    t_dup = time.perf_counter() - t

    rows = [
        ("pycachesim (C backend, per range)", t_py, n_lines, "reference"),
        ("iosim exact, every set, lines expanded", t_exact, n_lines,
         "identical" if (r["hits"], r["misses"]) == (hit_py, miss_py) else f"DIFFERENT hits {r['hits']} vs {hit_py}"),
        ("iosim exact, every set, ranges (compiled)", t_ranges, n_lines,
         "identical" if (hit_r, miss_r) == (hit_py, miss_py) else f"DIFFERENT hits {hit_r} vs {hit_py}"),
        (f"iosim shared {a.policy}, 1 in {shared_sampled.stride} sets", t_shared_sampled, shared_sampled.accesses,
         f"hits {shared_sampled.hits / max(hit_py, 1) - 1:+.4%} vs pycachesim LRU"),
        (f"iosim default (duplicated) {a.policy}, 1 in {dup_sampled.stride} sets", t_dup, dup_sampled.accesses,
         f"partitioned model, hit rate {dup_sampled.hit_rate:.4f}"),
    ]
    res["rows"] = []
    print(f"{res['trace']}: {len(tr.addr):,} ranges, {n_lines:,} line accesses (trace built in {t_trace:.2f} s)")
    print(f"{'simulator':<44}{'seconds':>10}{'M lines/s':>12}{'× pycachesim':>14}  agreement")
    rate_py = n_lines / t_py
    for name, dt, n, note in rows:
        rate = n / dt
        res["rows"].append({"simulator": name, "seconds": dt, "line_accesses": n, "lines_per_s": rate,
                            "speedup_vs_pycachesim": rate / rate_py, "agreement": note})
        print(f"{name:<44}{dt:>10.3f}{rate / 1e6:>12.1f}{rate / rate_py:>14.1f}  {note}")
    if not a.skip_big:
        big = big_run(a.policy, a.hash)
        res["fa2_causal_B1_H16_N65536_d128"] = big
        print(f"FA2 causal B=1 H=16 N=65536 d=128 (iosim predict --kernel fa2): {big['seconds']:.1f} s wall, "
              f"{big['cpu_seconds']:.1f} s CPU, peak RSS {big['peak_rss_bytes'] / 2**30:.2f} GiB, "
              f"{big['line_accesses']:,} line accesses (1 in {big['stride']} sets)")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.json}")


def policy_table(hw, a) -> None:
    """The default row (sampled, duplicated partitions) for every policy, and the big run for each unless --skip-big."""
    tr, t_trace = fa2_trace(hw, 1, 16, a.seq, 128, True)
    res = {"trace": f"FA2 (fa2 preset) causal B=1 H=16 N={a.seq} d=128 bf16, H100 geometry, duplicated partitions",
           "hash": a.hash, "policies": []}
    print(f"{res['trace']}, hash {a.hash}")
    print(f"{'policy':<8}{'seconds':>9}{'M lines/s':>11}{'× lru':>8}{'hit rate':>10}{'DRAM read MB':>14}"
          + ("" if a.skip_big else f"{'64K s':>8}{'64K GiB':>9}"))
    base = None
    for pol in POLICIES:
        g = L2Geometry.from_hardware(hw, **_over(pol, a.hash))
        t = time.perf_counter()
        r = simulate(tr, g)
        dt = time.perf_counter() - t
        rate = r.accesses / dt
        base = base or rate
        row = {"policy": pol, "seconds": dt, "lines_per_s": rate, "hit_rate": r.hit_rate, "stride": r.stride,
               "dram_read_bytes": r.dram_read_sectors * g.sector_bytes}
        line = f"{pol:<8}{dt:>9.3f}{rate / 1e6:>11.1f}{rate / base:>8.2f}{r.hit_rate:>10.4f}{row['dram_read_bytes'] / 1e6:>14.1f}"
        if not a.skip_big:
            big = big_run(pol, a.hash)
            row["fa2_causal_B1_H16_N65536_d128"] = big
            line += f"{big['seconds']:>8.1f}{big['peak_rss_bytes'] / 2**30:>9.2f}"
        res["policies"].append(row)
        print(line, flush=True)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
