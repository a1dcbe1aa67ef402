"""Issue 9: the L2 options the calibration sets (store_near, dram_fetch_bytes, profile keys) and the analysis of the
committed H100 and H200 microbenchmark measurements (reports/calibration/h100, reports/calibration/h200)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from iosim.errors import IosimError
from iosim.hwprofile import load_hardware, load_profile_file
from iosim.memory.l2 import L2Geometry, simulate_lines, widen_loads
from iosim import l2fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100_DIR = os.path.join(ROOT, "reports", "calibration", "h100")
H200_DIR = os.path.join(ROOT, "reports", "calibration", "h200")


def _run(store_near: bool, partial: bool):
    """Two partitions × 1 set × 2 ways. SM at partition 0 stores line 10 (homed at 1), then loads lines 20, 30
    (homed at 0): with store_near the store left a clean copy at partition 0 that these loads evict (no write-back
    there); the dirty copy at home is flushed at the end. Sectors: whole lines, or one sector (general path)."""
    full = 0b1 if partial else 0b1111
    lines = np.array([10, 20, 30, 10])
    near = np.array([0, 0, 0, 0])
    home = np.array([1, 0, 0, 1])
    write = np.array([True, False, False, False])
    sectors = np.array([full, full, full, full], dtype=np.uint8)
    if partial:
        sectors[1] = 0b11  # partial masks force the general (tracked-valid) path
    return simulate_lines(np.zeros(4, np.int64), lines, sectors, write, 2, "lru", near=near, home=home, partitions=2,
                          store_near=store_near)


@pytest.mark.parametrize("partial", [False, True])
def test_store_near_takes_room_near_and_writes_back_once(partial):
    a = _run(False, partial)
    b = _run(True, partial)
    # home only: the store installs 10 at partition 1 alone; 20 and 30 fill partition 0; the final load of 10
    # misses near, hits at home (fabric) and its near copy evicts 20 → 1 eviction.
    # store near: the store also leaves a clean copy of 10 at partition 0, which 30 evicts; the final load evicts 20
    # → 2 evictions, neither dirty. Both: DRAM reads are 20 and 30 (8 sectors; 2 + 1 with partial masks, the home
    # copy of 10 holding the stored sector), and the stored sectors are written back once, from home.
    for r in (a, b):
        assert r["dram_read_sectors"] == (3 if partial else 8)
        assert r["dram_write_sectors"] == (1 if partial else 4)
        assert r["dirty_evictions"] == 0 and r["hits"] == 0
    assert a["evictions"] == 1
    assert b["evictions"] == 2


def test_widen_loads_fetches_aligned_pairs_for_loads_only():
    g = L2Geometry(size_bytes=2**20, line_bytes=128, sector_bytes=32, ways=16, dram_fetch_bytes=64)
    m = np.array([0b0001, 0b0010, 0b0100, 0b1000, 0b0101, 0b0001], dtype=np.uint8)
    w = np.array([0, 0, 0, 0, 0, 1], bool)
    assert widen_loads(m, w, g).tolist() == [0b0011, 0b0011, 0b1100, 0b1100, 0b1111, 0b0001]
    assert widen_loads(m, w, replace(g, dram_fetch_bytes=0)).tolist() == m.tolist()
    with pytest.raises(IosimError, match="dram_fetch_bytes"):
        replace(g, dram_fetch_bytes=48)


def test_profile_l2_keys_load_and_reach_the_geometry(tmp_path):
    base = load_hardware("h100")
    entries = {"l2_policy": ("plru", "calibrated", "test fit"), "l2_store_near": (True, "measured", "test run"),
               "l2_home_granule_lines": (32, "measured", "latency probe"), "l2_ways": (32, "calibrated", "test fit"),
               "l2_way_spread": (0, "calibrated", "test fit")}
    p = tmp_path / "cal.toml"
    p.write_text(l2fit.profile_text(base.path, "h100-test", entries))
    hw = load_profile_file(p)
    assert hw.name == "h100-test" and hw.l2_policy == "plru" and hw.l2_store_near is True
    assert hw.sources["l2_store_near"].kind == "measured"
    g = L2Geometry.from_hardware(hw)
    assert (g.policy, g.store_near, g.home_granule_lines, g.ways) == ("plru", True, 32, 32)
    # everything else is the base profile's
    assert hw.hbm_bandwidth_bytes_per_s == base.hbm_bandwidth_bytes_per_s
    bad = tmp_path / "bad.toml"
    # plru with the base profile's way spread: contradictory, refused with the file named
    bad.write_text(l2fit.profile_text(base.path, "h100-bad", {"l2_policy": ("plru", "assumed", "nowhere special")}))
    with pytest.raises(IosimError, match=r"bad\.toml.*plru.*way_spread = 0"):
        L2Geometry.from_hardware(load_profile_file(bad))
    bad.write_text(l2fit.profile_text(base.path, "h100-bad", {"l2_way_spread": (-1, "assumed", "nowhere special")}))
    with pytest.raises(IosimError, match=r"bad\.toml.*l2_way_spread.*non-negative"):
        load_profile_file(bad)
    bad.write_text(l2fit.profile_text(base.path, "h100-bad", {"l2_policy": ("lfu", "assumed", "nowhere special")}))
    with pytest.raises(IosimError, match=r"bad\.toml.*l2_policy.*one of lru"):
        load_profile_file(bad)
    bad.write_text(l2fit.profile_text(base.path, "h100-bad", {"l2_store_near": ("yes", "assumed", "nowhere special")}))
    with pytest.raises(IosimError, match="true or false"):
        load_profile_file(bad)


@pytest.fixture(scope="module")
def h100():
    return l2fit.load(H100_DIR)


# the pair test's split (SMs with SM 0 / across): H100 66 + 66, H200 64 + 68 (same GH100 die, other SMs fused off)
@pytest.mark.parametrize("folder, split", [(H100_DIR, (66, 66)), (H200_DIR, (64, 68))])
def test_measured_readings(folder, split):
    rows, meta = l2fit.load(folder)
    part = l2fit.partition_reading(rows, meta)
    assert (part["sms_with_sm0"], part["sms_across"]) == split
    assert part["hit_frac_same"] == pytest.approx(1.0, abs=0.01)   # near copies: every lookup hits
    assert part["hit_frac_other"] == pytest.approx(0.5, abs=0.01)  # lines homed at SM 0's side miss near
    assert part["dram_per_region_other"] == pytest.approx(1.0, abs=0.02)  # ... but come across the fabric, not DRAM
    home = l2fit.home_map_reading(folder, meta)
    assert home["granule_lines"] == 32 and home["far_hit_cycles"] > 1.3 * home["near_hit_cycles"]
    lf = l2fit.line_and_fetch_reading(rows, meta)
    assert lf["line_bytes"] == 128 and lf["dram_fetch_bytes"] == 64
    assert l2fit.conflict_reading(rows)["max_lines_remissed_per_pass"] < 1.5
    # duplicated partitions: one SM's reads start missing at half the nominal L2, all misses only past it; lines read
    # from both sides start missing later than C/2 (home copies survive) but all miss before C
    C = meta["l2_bytes"]
    assert l2fit.crossing_bytes(rows, "one_sm", "dense", 32, 0.05) / C == pytest.approx(0.5, abs=0.03)
    assert 1.0 < l2fit.crossing_bytes(rows, "one_sm", "dense", 32, 0.95) / C < 1.15
    assert 0.55 < l2fit.crossing_bytes(rows, "all", "dense", 32, 0.05) / C < 0.65
    assert 0.8 < l2fit.crossing_bytes(rows, "all", "dense", 32, 0.95) / C < 1.0
    with pytest.raises(ValueError, match="fetch_bytes"):
        l2fit.measured_value(next(r for r in rows if r["layout"] == "sector256"))


@pytest.mark.parametrize("name", ["h100", "h200"])
def test_builtin_profile_carries_its_calibrated_l2(name):
    """hardware/<gpu>.toml holds the L2 organisation its own calibration folder fitted (the H200's is measured on an
    H200 since 2026-12-03, no longer assumed from the H100)."""
    hw = load_hardware(name)
    cal = load_profile_file(os.path.join(ROOT, "reports", "calibration", name, f"{name}_l2_calibrated.toml"))
    keys = ("l2_partitions", "l2_sharing", "l2_policy", "l2_ways", "l2_home_granule_lines",
            "l2_store_allocate", "l2_store_near", "l2_dram_fetch_bytes", "l2_line_bytes")
    assert [getattr(hw, k) for k in keys] == [getattr(cal, k) for k in keys]
    # the set hash is not fitted by the calibration (assumed there: xor); the profile's is chosen by the rule of
    # reports/l2_hash_decision.md (xor_low since 2026-12-06) and says so
    assert hw.l2_hash == "xor_low" and hw.sources["l2_hash"].kind == "assumed"
    assert "l2_hash_decision.md" in hw.sources["l2_hash"].text
    for k in ("l2_partitions", "l2_sharing", "l2_home_granule_lines", "l2_store_allocate", "l2_dram_fetch_bytes"):
        assert hw.sources[k].kind == "measured", k
        assert name.upper() in hw.sources[k].text, k


def test_h100_one_sm_sweep_reproduced_by_duplicated_partitions(h100):
    """One SM reading W bytes 3 times: half the lines miss from 0.55× to 1.0× nominal L2 (its partition holds near
    copies of everything, the far partition the far-homed half), all miss past 1.1× — the duplicated model gives
    the same plateau; a shared (unpartitioned) L2 would hit everything up to 1.0×.

    With the xor_low set hash (the profile's since 2026-12-06, reports/l2_hash_decision.md) the plateau holds to
    0.75× but the model's sets fill unevenly near the top (each set mixes lines of several 4 KiB home granules, so
    its near/far split varies): 0.518 at 0.8×, 0.552 at 0.85×, 0.599 at 0.9× where the GPU measures 0.50 — a cost
    of that choice, listed in reports/l2_hash_low.md; the xor hash it replaced gives 0.500 at every point."""
    rows, meta = h100
    part = set(meta["part_sms"])
    g = L2Geometry.from_hardware(load_hardware("h100"), way_spread=0)   # the organisation alone (no spread)
    sel = [r for r in l2fit.compared_rows(rows) if r["bench"] == "sweep" and r["mode"] == "one_sm"
           and r["layout"] == "dense" and 0.65 <= float(r["bytes_per_pass"]) / meta["l2_bytes"] <= 0.9]
    assert len(sel) >= 4
    for r in sel:
        m = l2fit.measured_value(r)
        frac = float(r["bytes_per_pass"]) / meta["l2_bytes"]
        assert m == pytest.approx(0.5, abs=0.02)
        got = l2fit.simulate_bench(r, g, part, stride=32)
        assert got == pytest.approx(m, abs=0.03 if frac <= 0.76 else 0.11)
        assert got >= m - 0.01                     # never fewer misses than the duplicated copies force
        assert l2fit.simulate_bench(r, replace(g, hash="xor"), part, stride=32) == pytest.approx(m, abs=0.03)
        assert l2fit.simulate_bench(r, replace(g, partitions=1, sharing="shared"), part, stride=32) < 0.05


@pytest.mark.parametrize("partial", [False, True])
def test_store_near_that_hits_near_still_dirties_home(partial):
    """Load 10 from partition 0 (home 1: copies at 0 and 1), store 10 from partition 0 (a near hit on the clean
    copy), then two loads homed at 1 from partition 1 evict 10 at home: its dirty sectors go to DRAM once."""
    full = 0b1 if partial else 0b1111
    lines = np.array([10, 10, 20, 30])
    near = np.array([0, 0, 1, 1])
    home = np.array([1, 1, 1, 1])
    write = np.array([False, True, False, False])
    sectors = np.full(4, full, dtype=np.uint8)
    if partial:
        sectors[2] = 0b11
    r = simulate_lines(np.zeros(4, np.int64), lines, sectors, write, 2, "lru", near=near, home=home, partitions=2,
                       store_near=True)
    n = 1 if partial else 4
    assert r["dirty_evictions"] == 1
    assert r["dram_write_sectors"] == n


def test_partial_near_copy_asks_home_before_dram():
    """SM at partition 1 loads sectors 0–1 of line 10 (home 0): both partitions hold them. SM at partition 0 reads
    sector 2 (home: fetched from DRAM, 1 sector). SM at partition 1 then reads sectors 0–3: its near copy lacks 2–3;
    home has 0–2, so DRAM supplies only sector 3."""
    lines = np.array([10, 10, 10])
    near = np.array([1, 0, 1])
    home = np.array([0, 0, 0])
    sectors = np.array([0b0011, 0b0100, 0b1111], dtype=np.uint8)
    r = simulate_lines(np.zeros(3, np.int64), lines, sectors, np.zeros(3, bool), 4, "lru", near=near, home=home,
                       partitions=2)
    assert r["dram_read_sectors"] == 2 + 1 + 1


def test_sampling_past_the_home_granule_is_allowed_but_not_exact():
    from iosim.memory.l2 import RunTrace, simulate
    g = L2Geometry(size_bytes=64 * 4 * 128, line_bytes=128, sector_bytes=32, ways=4, partitions=2,
                   sharing="duplicated", hash="xor", hash_granule_lines=4, home_granule_lines=2)
    assert g.max_stride() == 4 and not g.exact_stride(4) and g.exact_stride(2)
    tr = RunTrace(np.arange(0, 64 * 512, 512, dtype=np.int64), np.full(64, 512, np.int64), np.zeros(64, bool),
                  np.arange(64, dtype=np.int64) % 4, np.zeros(64, np.int64))
    assert simulate(tr, g, stride=2).exact
    assert not simulate(tr, g, stride=4).exact


def test_l2bench_plan_and_partition_split():
    from iosim import l2bench
    cases = l2bench.plan(52428800, 132)
    kinds = {c.bench for c in cases}
    assert kinds == {"pair", "sweep", "conflict", "hotstream", "writeread"}
    assert [c.id for c in cases] == list(range(len(cases)))
    assert sum(c.bench == "pair" for c in cases) == 131
    # the capacity sweep brackets both knees the duplicated organisation predicts (C/2 and C) and goes past 2C
    ws = sorted({c.ws_bytes for c in cases if c.bench == "sweep" and c.mode == "all" and c.layout == "dense"})
    assert ws[0] < 0.1 * 52428800 and ws[-1] > 2 * 52428800
    assert any(0.45 <= w / 52428800 <= 0.55 for w in ws) and any(0.95 <= w / 52428800 <= 1.05 for w in ws)
    rows = [{"sm_b": b, "lts__t_sectors_srcunit_ltcfabric.sum": 80000 if b % 2 == 0 else 115000} for b in range(1, 9)]
    same, note = l2bench.partition_of(rows)
    assert same == [0, 2, 4, 6, 8] and "split" in note
    flat = [{"sm_b": b, "lts__t_sectors_srcunit_ltcfabric.sum": 80000 + b} for b in range(1, 9)]
    assert l2bench.partition_of(flat)[0] == []


def test_policy_choice_keeps_lru_within_the_run_to_run_band():
    # the H100's stage-A scores: srrip lower by 0.012 < TIE_RMS (0.0123) → lru; the H200's: by 0.001 → lru
    assert l2fit.policy_choice({"lru": 0.0800, "srrip": 0.0680, "fifo": 0.0978}) == "lru"
    assert l2fit.policy_choice({"lru": 0.0659, "srrip": 0.0652}) == "lru"
    # a clear winner is taken
    assert l2fit.policy_choice({"lru": 0.0900, "srrip": 0.0680}) == "srrip"
    assert l2fit.policy_choice({"lru": 0.05, "plru": 0.09}) == "lru"
    assert l2fit.policy_choice({"fifo": 0.09, "srrip": 0.07}) == "srrip"  # no lru scored: plain minimum
    # stage D, the same rule: the H100's spread scores keep 0 (±2 lower by 0.0009); a clear winner is taken
    assert l2fit.plainest_within_tie({0: 0.0800, 2: 0.0791, 4: 0.0957}, 0) == 0
    assert l2fit.plainest_within_tie({0: 0.1000, 2: 0.0791, 4: 0.0957}, 0) == 2
