"""The L2 model: exact agreement with pycachesim's LRU (and FIFO) on schedule traces and random traces, set sampling,
partitions, trace expansion against the exact counts, the CTA scheduler and the predict/CLI wiring."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from iosim.cli import run
from iosim.counts import count
from iosim.errors import IosimError
from iosim.memory.hierarchy import build_trace
from iosim.hwprofile import load_hardware
from iosim.memory.l2 import L2Geometry, RunTrace, expand_lines, simulate, simulate_lines
from iosim.memory.layout import layout
from iosim.occupancy import occupancy
from iosim.pipeline import build_schedule, predict
from iosim.presets import apply, fa2_tiles
from iosim.problem import KernelConfig, Problem
from iosim.memory.scheduler import start_times
from iosim.memory.trace import expand_kernel

cachesim = pytest.importorskip("cachesim")

HW = load_hardware("h100")


def pycachesim_counts(trace: RunTrace, sets: int, ways: int, line: int, policy: str = "LRU") -> dict:
    """Run the ordered byte ranges through pycachesim (one write-back, write-allocate level)."""
    mem = cachesim.MainMemory()
    c = cachesim.Cache("L2", sets, ways, line, policy)
    mem.load_to(c)
    mem.store_from(c)
    cs = cachesim.CacheSimulator(c, mem)
    for a, n, w in zip(trace.addr.tolist(), trace.nbytes.tolist(), trace.write.tolist()):
        (cs.store if w else cs.load)(a, n)
    cs.force_write_back()
    return c.stats()


def our_counts(trace: RunTrace, sets: int, ways: int, line: int, policy: str = "lru") -> dict:
    geom = L2Geometry(size_bytes=sets * ways * line, line_bytes=line, sector_bytes=line, ways=ways,
                      partitions=1, policy=policy)
    ln, mask, w, sm, kern = expand_lines(trace, geom)
    return simulate_lines(geom.set_index(ln), ln, mask, w, ways, policy, pycachesim_stores=True)


def schedule_trace(alg: str, problem: Problem, cfg: KernelConfig, sm_count: int = 8) -> RunTrace:
    s = build_schedule(alg, problem, cfg, HW)
    tr, _ = build_trace(s, HW, regs_per_thread=255)
    return tr


TRACES = [
    ("flash2", Problem(1, 2, 2, 1000, 1000, 64, "bf16", False), KernelConfig(kv_order="descending")),
    ("flash2", Problem(1, 4, 2, 777, 777, 64, "bf16", True), KernelConfig(block_m=64, block_n=32)),
    ("flash1", Problem(1, 2, 2, 512, 512, 64, "fp16", False), KernelConfig()),
    ("standard", Problem(1, 2, 2, 300, 300, 32, "bf16", True), KernelConfig()),
]
GEOMS = [(64, 4, 128), (16, 16, 128), (128, 2, 64), (1, 32, 128)]  # sets, ways, line bytes


@pytest.mark.parametrize("alg,problem,cfg", TRACES, ids=[t[0] + ("-causal" if t[1].causal else "") for t in TRACES])
@pytest.mark.parametrize("sets,ways,line", GEOMS)
def test_lru_matches_pycachesim_on_schedule_traces(alg, problem, cfg, sets, ways, line):
    trace = schedule_trace(alg, problem, cfg)
    ref = pycachesim_counts(trace, sets, ways, line)
    ours = our_counts(trace, sets, ways, line)
    # pycachesim's store accounting: a store hit is not counted as a HIT and does not refresh LRU; a store miss is
    # a write-allocate load MISS (simulate_lines(..., pycachesim_stores=True) reproduces it).
    assert ours["hits"] == ref["HIT_count"]
    assert ours["misses"] == ref["MISS_count"]
    # pycachesim's EVICT_count counts dirty lines written back (on eviction and at the final flush)
    assert ours["dirty_evictions"] + ours["flush_lines"] == ref["EVICT_count"]


@pytest.mark.parametrize("policy", ["lru", "fifo"])
@pytest.mark.parametrize("sets,ways", [(1, 4), (4, 2), (16, 4), (8, 8)])
def test_random_traces_match_pycachesim(policy, sets, ways):
    rng = np.random.default_rng(sets * 31 + ways)
    n = 4000
    lines = rng.integers(0, sets * ways * 3, n)
    w = rng.random(n) < 0.2
    tr = RunTrace(lines * 128, np.full(n, 128), w, np.zeros(n, np.int64), np.zeros(n, np.int64))
    ref = pycachesim_counts(tr, sets, ways, 128, policy.upper())
    ours = our_counts(tr, sets, ways, 128, policy)
    assert (ours["hits"], ours["misses"]) == (ref["HIT_count"], ref["MISS_count"])
    assert ours["dirty_evictions"] + ours["flush_lines"] == ref["EVICT_count"]


def test_hand_worked_lru_set():
    # one set, 2 ways: A B A C B → miss miss hit miss(evicts B, the LRU) miss(evicts A) = 1 hit, 4 misses, 2 evictions
    lines = np.array([0, 1, 0, 2, 1])
    r = simulate_lines(np.zeros(5, np.int64), lines, np.full(5, 15, np.uint32), np.zeros(5, bool), 2, "lru")
    assert (r["hits"], r["misses"], r["evictions"]) == (1, 4, 2)
    # FIFO: A B A(hit) C(evicts A, the oldest) B(hit) = 2 hits
    r = simulate_lines(np.zeros(5, np.int64), lines, np.full(5, 15, np.uint32), np.zeros(5, bool), 2, "fifo")
    assert (r["hits"], r["misses"], r["evictions"]) == (2, 3, 1)


def test_sectors_and_write_back():
    # one set, 1 way, 4 sectors: load sector 0 (fetch 1), load sectors 0-1 (hit, fetch 1 more), store line 5
    # (evicts clean line 0, fetches nothing), load line 0 again (evicts dirty line 5: 4 sectors written back)
    sets = np.zeros(4, np.int64)
    lines = np.array([0, 0, 5, 0])
    masks = np.array([0b0001, 0b0011, 0b1111, 0b1111], np.uint32)
    w = np.array([False, False, True, False])
    r = simulate_lines(sets, lines, masks, w, 1)
    assert r["dram_read_sectors"] == 1 + 1 + 0 + 4
    assert r["dram_write_sectors"] == 4
    assert r["dirty_evictions"] == 1


def test_set_sampling_is_exact_on_aligned_traces():
    # Q, K, V, O tiles are whole 16 KiB groups: sampling 1 set in 8 gives exactly the full result (×8)
    s = build_schedule("flash2", Problem(1, 4, 4, 2048, 2048, 128, "bf16", True), KernelConfig(128, 64, kv_order="descending"), HW)
    tr, _ = build_trace(s, HW, regs_per_thread=255)
    keep = np.isin(np.arange(len(tr.addr)), np.flatnonzero(tr.nbytes % (8 * 128) == 0))  # drop LSE rows (512 B)
    tr = RunTrace(tr.addr[keep], tr.nbytes[keep], tr.write[keep], tr.sm[keep], tr.kernel[keep])
    geom = L2Geometry(size_bytes=2 << 20, line_bytes=128, sector_bytes=32, ways=16, partitions=1)
    full = simulate(tr, geom, stride=1)
    sampled = simulate(tr, geom, stride=8)
    assert sampled.exact
    for f in ("accesses", "hits", "misses", "evictions", "dram_read_sectors", "dram_write_sectors"):
        assert getattr(sampled, f) == getattr(full, f), f


def test_duplicated_partitions_halve_capacity_for_shared_data():
    # every SM reads the same 24 MiB twice: a shared 50 MiB L2 keeps it, duplicated 2 × 25 MiB partitions with
    # 16 ways do too, but 40 MiB read from both sides no longer fits duplicated partitions
    def reads(mib):
        n = mib * 8  # 128 KiB chunks
        addr = np.tile(np.arange(n) * (128 << 10), 2)
        sm = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        return RunTrace(addr, np.full(2 * n, 128 << 10), np.zeros(2 * n, bool), sm, np.zeros(2 * n, np.int64))
    shared = L2Geometry.from_hardware(HW, sharing="shared", way_spread=0)
    dup = L2Geometry.from_hardware(HW, sharing="duplicated", way_spread=0)
    for g in (shared, dup):
        r = simulate(reads(24), g)
        assert r.dram_read_sectors * 32 == 24 << 20
    assert simulate(reads(40), shared).dram_read_sectors * 32 == 40 << 20
    assert simulate(reads(40), dup).dram_read_sectors * 32 > 60 << 20


@pytest.mark.parametrize("alg", ["flash2", "flash1", "standard"])
@pytest.mark.parametrize("causal", [False, True])
def test_trace_bytes_equal_counts(alg, causal):
    p = Problem(1, 3, 3, 700, 900 if not causal else 700, 64, "bf16", causal)
    s = build_schedule(alg, p, KernelConfig(), HW)
    lay = layout(s)
    for k, kc in zip(s.kernels, count(s).kernels):
        tr = expand_kernel(s, k, lay)
        assert tr.read_bytes == kc.sm_read_bytes
        assert tr.write_bytes == kc.sm_write_bytes


def test_layout_is_aligned_and_disjoint():
    s = build_schedule("flash2", Problem(2, 4, 4, 1000, 1000, 64), KernelConfig(), HW)
    lay = layout(s)
    spans = sorted((p.base, p.base + p.nbytes) for p in lay.tensors.values())
    assert all(b % (2 << 20) == 0 for b, _ in spans)
    assert all(e0 <= b1 for (_, e0), (b1, _) in zip(spans, spans[1:]))


def test_occupancy_fa2_h100():
    # FA2 d=128 on the H100: 64 KiB smem (3 CTAs by smem), 255 regs × 128 threads → 2 CTAs by registers
    p = Problem(1, 16, 16, 4096, 4096, 128)
    alg, cfg, pre = apply("fa2", p, HW, KernelConfig())
    s = build_schedule(alg, p, cfg, HW)
    k = s.kernels[0]
    occ = occupancy(k, HW, cfg.num_stages, pre.regs_per_thread)
    assert (occ.ctas_per_sm, occ.limiter, occ.slots, occ.smem_per_cta_bytes) == (2, "registers", 264, 65536)


def test_fa2_tiles_from_launch_template():
    assert fa2_tiles(64, HW) == (128, 128, 4)
    assert fa2_tiles(128, HW) == (128, 64, 4)
    assert fa2_tiles(256, HW) == (64, 64, 4)  # H100: 228 KiB per SM ≥ 4·256·192 B → 64×64


def test_start_times_waves_and_tails():
    # 5 CTAs of 10 ticks on 2 slots: waves at 0, 10, 20
    st, sl = start_times(np.full(5, 10), 2)
    assert st.tolist() == [0, 0, 10, 10, 20] and sl.tolist() == [0, 1, 0, 1, 0]
    # unequal: slot 0 frees at 3, slot 1 at 5; CTA 2 → slot 0 at 3, CTA 3 → slot 1 at 5
    st, sl = start_times(np.array([3, 5, 4, 4]), 2)
    assert st.tolist() == [0, 0, 3, 5] and sl.tolist() == [0, 1, 0, 1]
    # persistent: tile t on slot t mod 2, back to back
    st, sl = start_times(np.array([3, 5, 4, 4]), 2, persistent=True)
    assert st.tolist() == [0, 0, 3, 5] and sl.tolist() == [0, 1, 0, 1]


def test_fa2_non_causal_reads_qkv_once_from_dram():
    # B=1, H=16, N=4096, d=128: every CTA of a head walks the same K/V at the same time → DRAM ≈ Q + K + V
    pred = predict(HW, Problem(1, 16, 16, 4096, 4096, 128), KernelConfig(), kernel="fa2")
    qkv = 3 * 16 * 4096 * 128 * 2
    assert abs(pred.dram_read_bytes / qkv - 1) < 0.05
    assert pred.dram_write_bytes >= 16 * 4096 * 128 * 2
    assert 0.5 < pred.l2_hit_rate <= 1


def test_cli_predict_l2_fields():
    out = io.StringIO()
    # 16 heads: B·H·m_blocks = 16·32 ≥ 0.8·2·132, so PyTorch's FA2 runs its plain forward (one split, one kernel)
    assert run(["predict", "--json", "--kernel", "fa2", "--seq-q", "2048", "--heads", "16"], out) == 0
    d = json.loads(out.getvalue())
    for key in ("flops", "sm_read_bytes", "sm_write_bytes", "dram_read_bytes", "dram_write_bytes", "time_s", "kernels"):
        assert key in d
    assert d["dram_read_bytes"] > 0 and d["l2_hit_rate"] is not None
    assert d["kernels"][0]["dram_read_bytes"] == d["dram_read_bytes"]
    assert d["config"]["kv_order"] == "descending" and d["config"]["block_n"] == 64
    out = io.StringIO()
    run(["predict", "--json", "--no-l2", "--seq-q", "2048"], out)
    d = json.loads(out.getvalue())
    assert d["dram_read_bytes"] is None and d["dram_write_bytes"] is None and d["l2_hit_rate"] is None


def test_bad_geometry_is_an_iosim_error():
    with pytest.raises(IosimError, match="ways"):
        L2Geometry(size_bytes=1000, line_bytes=128, sector_bytes=32, ways=16)
    with pytest.raises(IosimError, match="policy"):
        L2Geometry.from_hardware(HW, policy="bogus")
    with pytest.raises(IosimError, match="preset"):
        predict(HW, Problem(1, 1, 1, 128, 128, 64), KernelConfig(), kernel="fa9")


@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_fast_path_equals_general_loop(policy):
    # whole-line accesses of one kernel take the fast loop; labelling accesses with two kernels forces the general one
    rng = np.random.default_rng(7)
    n = 3000
    lines = rng.integers(0, 200, n)
    sets = lines % 8
    masks = np.full(n, 15, np.uint32)
    w = rng.random(n) < 0.3
    fast = simulate_lines(sets, lines, masks, w, 4, policy)
    general = simulate_lines(sets, lines, masks, w, 4, policy, kernel=np.arange(n) % 2, num_kernels=2)
    for key in ("hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors", "flush_lines"):
        assert fast[key] == general[key], key
    assert int(general["k_read"].sum()) == fast["dram_read_sectors"]


def test_store_no_allocate_and_rotate_hash():
    # one set, 1 way: load A, store B (no-allocate: B goes to DRAM, A stays), load A again = hit
    lines = np.array([0, 1, 0])
    r = simulate_lines(np.zeros(3, np.int64), lines, np.full(3, 15, np.uint32), np.array([False, True, False]), 1,
                       store_allocate=False)
    assert (r["hits"], r["dram_read_sectors"], r["dram_write_sectors"]) == (1, 4, 4)
    r = simulate_lines(np.zeros(3, np.int64), lines, np.full(3, 15, np.uint32), np.array([False, True, False]), 1)
    assert (r["hits"], r["dram_read_sectors"], r["dram_write_sectors"]) == (0, 8, 4)
    # the rotate hash keeps set sampling exact on aligned traces
    s = build_schedule("flash2", Problem(1, 2, 2, 4096, 4096, 128, "bf16", False), KernelConfig(128, 64), HW)
    tr, _ = build_trace(s, HW, regs_per_thread=255)
    keep = tr.nbytes % (8 * 128) == 0
    tr = RunTrace(tr.addr[keep], tr.nbytes[keep], tr.write[keep], tr.sm[keep], tr.kernel[keep])
    geom = L2Geometry(size_bytes=1 << 20, line_bytes=128, sector_bytes=32, ways=8, hash="rotate", hash_granule_lines=8)
    assert simulate(tr, geom, stride=1).dram_read_sectors == simulate(tr, geom, stride=8).dram_read_sectors


def test_triton_tutorial_preset_orders():
    p = Problem(2, 4, 4, 1024, 1024, 64)
    pred = predict(HW, p, KernelConfig(), kernel="triton-tutorial")
    cfg = pred.schedule.config
    assert cfg.grid_order == ("m", "h", "b") and cfg.kv_order == "ascending" and (cfg.block_m, cfg.block_n) == (128, 64)
    assert pred.l2.kernels[0].occupancy.regs_source.startswith("estimated")


@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_partitioned_fast_path_equals_general_loop(policy):
    rng = np.random.default_rng(11)
    n = 4000
    lines = rng.integers(0, 300, n)
    sets = lines % 8
    masks = np.full(n, 15, np.uint32)
    w = rng.random(n) < 0.2
    near = rng.integers(0, 2, n)
    home = (lines // 3) % 2
    fast = simulate_lines(sets, lines, masks, w, 4, policy, near=near, home=home, partitions=2)
    general = simulate_lines(sets, lines, masks, w, 4, policy, kernel=np.arange(n) % 2, num_kernels=2,
                             near=near, home=home, partitions=2)
    for key in ("hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors",
                "flush_lines", "fabric_reads"):
        assert fast[key] == general[key], key
