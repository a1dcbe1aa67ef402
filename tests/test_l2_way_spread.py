"""Per-set way spread of the L2 model (``L2Geometry.way_spread``, issue 9): exact against an independent
per-set-capacity LRU written here, identical across the simulator's loops, exact under set sampling."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.memory.l2 import L2Geometry, RunTrace, disabled_ways, simulate, simulate_lines, way_offsets
from iosim.memory.l2stream import L2Stream

KEYS = ("hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors", "flush_lines")


def reference_lru(sets, lines, write, cap, near=None, home=None, sectors=4):
    """Plain-Python LRU with capacity cap[(set, partition)]: loads look up their near partition, then (on a miss, for
    a line homed elsewhere) the home one; both keep the line. Stores (store_near False) go to the home partition,
    allocate without a DRAM read and dirty the line; a dirty eviction or the final flush writes ``sectors``."""
    caches: dict = {}
    c = dict.fromkeys(("hits", "misses", "fabric_reads", "dram_read_sectors", "dram_write_sectors", "evictions"), 0)

    def touch(key, line, dirty):
        od = caches.setdefault(key, OrderedDict())
        if line in od:
            od.move_to_end(line)
            od[line] |= dirty
            return True
        if len(od) >= cap[key]:
            _, d = od.popitem(last=False)
            c["evictions"] += 1
            c["dram_write_sectors"] += sectors * d
        od[line] = dirty
        return False

    for i, (s, x, w) in enumerate(zip(sets.tolist(), lines.tolist(), write.tolist())):
        h = 0 if home is None else int(home[i])
        q = h if (w or near is None) else int(near[i])
        hit = touch((s, q), x, bool(w))
        c["hits" if hit else "misses"] += 1
        if hit or w:
            continue
        if q != h:
            if touch((s, h), x, False):
                c["fabric_reads"] += 1
                continue
        c["dram_read_sectors"] += sectors
    c["dram_write_sectors"] += sectors * sum(d for od in caches.values() for d in od.values())
    return c


def caps(sets, P, ways, spread, granule):
    d = way_offsets(np.unique(sets), P, spread, granule)
    return {(int(s), p): ways + int(d[i, p]) for i, s in enumerate(np.unique(sets)) for p in range(P)}


def test_way_offsets_shape_range_groups_and_balance():
    s = np.arange(4096 * 8)
    d = way_offsets(s, 2, 3, 8)
    assert d.shape == (len(s), 2) and d.min() == -3 and d.max() == 3
    assert (d.reshape(-1, 8, 2) == d[::8][:, None, :]).all()         # constant within each group of 8 sets
    counts = np.bincount((d[::8] + 3).ravel(), minlength=7)          # 8192 (group, partition) pairs, 7 values
    assert counts.max() - counts.min() <= 4                          # Weyl sequence: low discrepancy
    assert abs(d[::8].mean()) < 1e-3                                 # mean capacity stays nominal
    dis = disabled_ways(s[:16], 2, 4, 3, 8)
    assert dis.shape == (16, 2 * 7)
    assert ((~dis).reshape(16, 2, 7).sum(axis=2) == 4 + d[:16]).all()  # enabled ways = ways + offset


def test_hand_worked_spread():
    # ways 2, spread 1, one set per group, P = 1: d(s) = ⌊frac(0.618…·s)·3⌋ − 1 = −1, 0, −1, +1 for s = 0…3
    # (frac 0, 0.618, 0.236, 0.854), so the sets hold 1, 2, 1, 3 lines
    assert way_offsets(np.arange(4), 1, 1, 1)[:, 0].tolist() == [-1, 0, -1, 1]
    # with LRU, cycling 3 times over cap lines hits on the last two passes; over cap + 1 lines it never hits
    for s, cap in enumerate((1, 2, 1, 3)):
        for n_lines, expect_hits in ((cap, 2 * cap), (cap + 1, 0)):
            lines = np.tile(np.arange(n_lines) * 4 + s, 3)
            r = simulate_lines(np.full(len(lines), s), lines, np.full(len(lines), 15, np.uint8),
                               np.zeros(len(lines), bool), 2, way_spread=1, spread_granule_sets=1)
            assert r["hits"] == expect_hits, (s, cap, n_lines)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), nsets=st.integers(1, 12), ways=st.integers(2, 6), spread=st.integers(1, 5),
       granule=st.sampled_from([1, 2, 4]), partitions=st.sampled_from([1, 2]))
def test_matches_reference_lru(seed, nsets, ways, spread, granule, partitions):
    spread = min(spread, ways - 1)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    lines = rng.integers(0, nsets * (ways + spread) * 2, n)
    sets = lines % nsets
    w = rng.random(n) < 0.2
    near = rng.integers(0, 2, n) if partitions > 1 else None
    home = (lines // 5) % 2 if partitions > 1 else None
    ref = reference_lru(sets, lines, w, caps(sets, partitions, ways, spread, granule), near, home)
    for kernel in (None, np.arange(n) % 2):   # fast loop; two kernel labels force the general one
        got = simulate_lines(sets, lines, np.full(n, 15, np.uint8), w, ways, "lru", kernel=kernel,
                             num_kernels=1 if kernel is None else 2, near=near, home=home, partitions=partitions,
                             way_spread=spread, spread_granule_sets=granule)
        for key in ("hits", "misses", "dram_read_sectors", "dram_write_sectors", "evictions"):
            assert got[key] == ref[key], (key, kernel is None)
        if partitions > 1:
            assert got["fabric_reads"] == ref["fabric_reads"]


@pytest.mark.parametrize("policy", ["lru", "fifo", "srrip", "lip", "mru"])
@pytest.mark.parametrize("partitions", [1, 2])
def test_fast_loops_equal_general_loop(policy, partitions):
    rng = np.random.default_rng(3)
    n = 3000
    lines = rng.integers(0, 400, n)
    sets = lines % 16
    masks = np.full(n, 15, np.uint8)
    w = rng.random(n) < 0.25
    kw = dict(near=rng.integers(0, 2, n), home=(lines // 3) % 2, partitions=2) if partitions > 1 else {}
    fast = simulate_lines(sets, lines, masks, w, 4, policy, way_spread=2, spread_granule_sets=2, **kw)
    gen = simulate_lines(sets, lines, masks, w, 4, policy, kernel=np.arange(n) % 2, num_kernels=2, way_spread=2,
                         spread_granule_sets=2, **kw)
    plain = simulate_lines(sets, lines, masks, w, 4, policy, **kw)
    for key in KEYS:
        assert fast[key] == gen[key], key
    assert fast["hits"] != plain["hits"]   # the spread changes the answer


@pytest.mark.parametrize("whole", [True, False])
def test_chunked_stream_equals_one_pass(whole):
    geom = L2Geometry(size_bytes=32 * 4 * 128 * 2, line_bytes=128, sector_bytes=32, ways=4, partitions=2,
                      sharing="duplicated", store_near=True, home_granule_lines=1, hash_granule_lines=4, way_spread=2)
    rng = np.random.default_rng(5)
    n = 2500
    line = rng.integers(0, 900, n)
    mask = np.full(n, 15, np.uint8) if whole else rng.integers(1, 16, n).astype(np.uint8)
    write = rng.random(n) < 0.2
    sets = geom.set_index(line)
    near = (np.arange(n) % 2).astype(np.int8)
    home = geom.home(line).astype(np.int8)
    ref = simulate_lines(sets, line, mask, write, 4, "lru", near=near, home=home, partitions=2, store_near=True,
                         way_spread=2, spread_granule_sets=4)
    s = L2Stream(geom, geom.sets_per_cache, whole_lines=whole)
    for a, b in itertools.pairwise([0, 7, 600, 601, 1900, n]):
        s.feed(sets[a:b], line[a:b], mask[a:b], write[a:b], None, near[a:b], home[a:b])
    got = s.finish()
    for key in ("hits", "misses", "evictions", "dram_read_sectors", "dram_write_sectors"):
        assert got[key] == ref[key], key


@pytest.mark.parametrize("partitions", [1, 2])
def test_set_sampling_stays_exact(partitions):
    # aligned 8-line ranges; the spread groups (hash granule, 8 sets) hold whole sampled groups: stride 8 is exact
    rng = np.random.default_rng(9)
    g = 8 * 128
    addr = rng.integers(0, 3000, 4000) * g
    n = len(addr)
    tr = RunTrace(addr, np.full(n, g), rng.random(n) < 0.1, rng.integers(0, 4, n), np.zeros(n, np.int64))
    geom = L2Geometry(size_bytes=256 * 8 * 128 * partitions, line_bytes=128, sector_bytes=32, ways=8,
                      partitions=partitions, sharing="duplicated" if partitions > 1 else "shared", hash="xor",
                      hash_granule_lines=8, home_granule_lines=8, way_spread=3)
    full, sampled = simulate(tr, geom, stride=1), simulate(tr, geom, stride=8)
    assert sampled.exact
    assert (full.dram_read_sectors, full.hits, full.dram_write_sectors) == \
        (sampled.dram_read_sectors, sampled.hits, sampled.dram_write_sectors)
    assert geom.max_stride() == 8


def test_bad_spread_is_a_clear_error():
    base = dict(size_bytes=1 << 20, line_bytes=128, sector_bytes=32, ways=16)
    with pytest.raises(IosimError, match="way_spread"):
        L2Geometry(**base, way_spread=16)
    with pytest.raises(IosimError, match="way_spread"):
        L2Geometry(**base, way_spread=-1)
    with pytest.raises(IosimError, match="plru"):
        L2Geometry(**base, policy="plru", way_spread=2)
    with pytest.raises(IosimError, match="way_spread"):
        simulate_lines(np.zeros(2, np.int64), np.arange(2), np.full(2, 15, np.uint8), np.zeros(2, bool), 4, "plru",
                       way_spread=1)
    # modulo hash: the spread groups limit the sampling stride too
    assert L2Geometry(**base).max_stride() == 512
    assert L2Geometry(**base, way_spread=2, hash_granule_lines=64).max_stride() == 64


def test_profile_key_reaches_the_geometry():
    hw = load_hardware("h100")
    assert hw.l2_way_spread == 4 and hw.sources["l2_way_spread"].kind == "calibrated"
    assert L2Geometry.from_hardware(hw).way_spread == 4
    assert L2Geometry.from_hardware(hw, way_spread=0).way_spread == 0


def test_cli_way_spread_option():
    import io
    import json

    from iosim.cli import run

    def dram(*extra):
        out = io.StringIO()
        assert run(["predict", "--json", "--kernel", "fa2", "--hardware", "a100", "--seq-q", "32768", "--heads", "8",
                    "--head-dim", "128", "--causal", *extra], out) == 0
        return json.loads(out.getvalue())["dram_read_bytes"]

    default, four, none = dram(), dram("--l2-way-spread", "4"), dram("--l2-way-spread", "0")
    assert default == four and default != none   # the a100 profile's l2_way_spread is 4; 0 changes the answer
    with pytest.raises(IosimError, match="way_spread must be a whole number from 0 to ways − 1 = 15, got 16"):
        run(["predict", "--kernel", "fa2", "--l2-way-spread", "16"], io.StringIO())
