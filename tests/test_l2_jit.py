"""The compiled L2 core (iosim.memory.l2_jit) against the NumPy loops of iosim.memory.l2 and iosim.memory.l2stream: random traces over
every policy, sectors, kernels, partitions, store rules and way spreads give identical counts, every one of them; so do
the recency layout against the stamp layout, several threads against one, and byte ranges walked in place
(L2Stream.feed_ranges) against their lines expanded in NumPy."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iosim.errors import IosimError
from iosim.memory import l2_jit
from iosim.memory.l2 import POLICIES, L2Geometry, RunTrace, compiled_core, expand_lines, simulate_lines, widen_loads
from iosim.memory.l2stream import L2Stream

pytest.importorskip("numba")


def _plain(r: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else int(v)) for k, v in r.items()}


def both(fn):
    """fn() with the NumPy loops, then with the compiled core."""
    before = os.environ.get("IOSIM_L2_ENGINE")
    try:
        os.environ["IOSIM_L2_ENGINE"] = "numpy"
        ref = fn()
        os.environ["IOSIM_L2_ENGINE"] = "numba"
        assert compiled_core() is not None
        return ref, fn()
    finally:
        os.environ.pop("IOSIM_L2_ENGINE")
        if before is not None:
            os.environ["IOSIM_L2_ENGINE"] = before


@st.composite
def traces(draw):
    policy = draw(st.sampled_from(POLICIES))
    ways = draw(st.sampled_from([1, 2, 4, 8]) if policy == "plru" else st.integers(1, 7))
    P = draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    nsets = draw(st.integers(1, 9))
    sets = rng.integers(0, nsets, n) * draw(st.sampled_from([1, 3, 10_007]))   # 10_007: sparse set ids
    tags = rng.integers(0, draw(st.integers(1, 40)), n)
    sectors = draw(st.sampled_from([1, 4, 5, 8, 12]))
    full = (1 << sectors) - 1
    mask = np.full(n, full) if draw(st.booleans()) else rng.integers(1, full + 1, n)
    write = rng.random(n) < draw(st.sampled_from([0.0, 0.2, 0.6]))
    nk = draw(st.integers(1, 3))
    kw = dict(kernel=rng.integers(0, nk, n) if nk > 1 else None, num_kernels=nk,
              pycachesim_stores=draw(st.booleans()), store_allocate=draw(st.booleans()),
              way_spread=0 if policy == "plru" or ways == 1 else draw(st.integers(0, ways - 1)),
              spread_granule_sets=draw(st.integers(1, 4)))
    if P > 1:   # near: the SM's partition, any per access; home: a function of the line
        home_of = rng.integers(0, P, 41)
        kw.update(near=rng.integers(0, P, n), home=home_of[tags % 41], partitions=P, store_near=draw(st.booleans()))
    return (sets, tags, mask.astype(np.uint8 if full < 256 else np.uint32), write, ways, policy), kw


@settings(max_examples=300, deadline=None)
@given(traces())
def test_compiled_equals_numpy_on_random_traces(case):
    args, kw = case
    ref, got = both(lambda: _plain(simulate_lines(*args, **kw)))
    assert got == ref


def test_whole_line_fast_loops_too():
    # the NumPy fast loops (whole lines, one kernel, store allocation) against the compiled core, H100-like
    # partitions (duplicated, store_near) and a way spread
    rng = np.random.default_rng(11)
    n = 5000
    line = rng.integers(0, 700, n)
    w = rng.random(n) < 0.25
    for policy, P, spread in itertools.product(["lru", "fifo", "plru", "srrip", "brrip", "lip", "mru"], [1, 2],
                                               [0, 3]):
        if policy == "plru" and spread:
            continue
        kw = dict(near=rng.integers(0, 2, n), home=(line // 4) % 2, partitions=2, store_near=True) if P > 1 else {}
        ref, got = both(lambda: _plain(simulate_lines(line % 13, line, np.full(n, 15, np.uint8), w, 4,
                                                                   policy, way_spread=spread, **kw)))
        assert got == ref, (policy, P, spread)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("P,whole,nk", [(1, True, 1), (2, True, 1), (2, False, 2), (1, False, 1)])
def test_stream_compiled_equals_numpy(policy, P, whole, nk):
    # chunked feed: the per-access DRAM sectors and every final count agree, and match the one-pass simulation
    geom = L2Geometry(size_bytes=12 * 4 * 128 * P, line_bytes=128, sector_bytes=32, ways=4, partitions=P,
                      sharing="duplicated" if P > 1 else "shared", policy=policy, store_near=True,
                      home_granule_lines=1, hash_granule_lines=4, way_spread=0 if policy == "plru" else 2)
    rng = np.random.default_rng(7)
    n = 1500
    line = rng.integers(0, 300, n)
    mask = np.full(n, 15, np.uint8) if whole else rng.integers(1, 16, n).astype(np.uint8)
    write = rng.random(n) < 0.2
    kern = rng.integers(0, nk, n)
    sets = geom.set_index(line)
    near = (np.arange(n) % P).astype(np.int8)
    home = geom.home(line).astype(np.int8)

    def feed():
        s = L2Stream(geom, geom.sets_per_cache, nk, whole_lines=whole)
        nf = [s.feed(sets[a:b], line[a:b], mask[a:b], write[a:b], kern[a:b], near[a:b], home[a:b])
              for a, b in itertools.pairwise([0, 1, 300, 301, 999, n])]
        return _plain(s.finish()), np.concatenate(nf).tolist()

    (ref, nf_ref), (got, nf_got) = both(feed)
    assert got == ref
    assert nf_got == nf_ref
    if policy != "random":   # random hashes the chunk's row order, so only the one-pass order gives its counts
        one = _plain(simulate_lines(sets, line, mask, write, 4, policy, kern, nk, near, home, P, store_near=True,
                                    way_spread=geom.way_spread, spread_granule_sets=4))
        assert got == one


def test_hand_worked_partitioned_store_near():
    # 2 partitions of one 1-way set; line 0 homed at 1. A load from partition 0 misses near and at home (DRAM: 4
    # sectors, two copies); a store issued near (store_near) hits near and goes on to the home copy (a fabric
    # transfer), which alone turns dirty; a load of line 1 (home 1) from partition 1 evicts the dirty home copy of 0:
    # 4 sectors written back; the near copy of 0 stays clean, so nothing is flushed.
    r = simulate_lines(np.zeros(3, np.int64), np.array([0, 0, 1]), np.full(3, 15, np.uint8),
                       np.array([False, True, False]), 1, near=np.array([0, 0, 1]), home=np.array([1, 1, 1]),
                       partitions=2, store_near=True)
    assert (r["hits"], r["misses"], r["fabric_reads"]) == (1, 2, 1)
    assert (r["dram_read_sectors"], r["dram_write_sectors"], r["dirty_evictions"], r["flush_lines"]) == (8, 4, 1, 0)


def test_engine_variable_is_checked(monkeypatch):
    monkeypatch.setenv("IOSIM_L2_ENGINE", "cython")
    with pytest.raises(IosimError, match="IOSIM_L2_ENGINE must be numba or numpy"):
        simulate_lines(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.uint8), np.zeros(1, bool), 2)
    monkeypatch.setenv("IOSIM_L2_ENGINE", "numpy")
    assert compiled_core() is None


def _counts(s: L2Stream) -> dict:
    return _plain(s.finish())


@st.composite
def range_traces(draw):
    policy = draw(st.sampled_from(["lru", "fifo", "lip", "srrip", "random"]))
    P = draw(st.sampled_from([1, 2]))
    sector = draw(st.sampled_from([16, 32]))   # 8 or 4 sectors per 128-B line
    hsh = draw(st.sampled_from(["modulo", "rotate", "xor"]))
    geom = L2Geometry(size_bytes=16 * 4 * 128 * P, line_bytes=128, sector_bytes=sector, ways=4, partitions=P,
                      sharing="duplicated" if P > 1 else "shared", policy=policy, hash=hsh, hash_granule_lines=4,
                      home_granule_lines=draw(st.sampled_from([1, 2, 8])), store_near=draw(st.booleans()),
                      store_allocate=draw(st.booleans()), dram_fetch_bytes=draw(st.sampled_from([0, 64, 128])),
                      way_spread=draw(st.sampled_from([0, 2])))
    stride = draw(st.sampled_from([1, 2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 200))
    addr = rng.integers(0, 64 * 128 * 6, n)
    nbytes = rng.choice([0, 1, 16, 32, 100, 128, 300, 1024], n)
    nk = draw(st.integers(1, 2))
    return geom, stride, nk, (addr, nbytes, rng.random(n) < 0.3, rng.integers(0, 7, n), rng.integers(0, nk, n))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(range_traces(), st.integers(1, 3))
def test_feed_ranges_equals_expand_then_feed(monkeypatch, case, threads):
    # the compiled walk over ranges against the lines expanded in NumPy (expand_lines, widen_loads, set_index,
    # home) and fed to the NumPy engine, in three chunks: every count and the DRAM sectors of every range agree
    geom, stride, nk, (addr, nbytes, write, sm, kern) = case
    rows = geom.sets_per_cache // stride
    cuts = [0, len(addr) // 3, len(addr) // 2, len(addr)]

    def ranges():
        s = L2Stream(geom, rows, nk, stride=stride)
        nf = [s.feed_ranges(addr[a:b], nbytes[a:b], write[a:b], sm[a:b], kern[a:b] if nk > 1 else None)
              for a, b in itertools.pairwise(cuts)]
        return _counts(s), np.concatenate(nf).tolist()

    def lines():
        line, mask, w, near, rid = expand_lines(RunTrace(addr, nbytes, write, sm, np.arange(len(addr))), geom,
                                                stride)
        s = L2Stream(geom, rows, nk, stride=stride)
        P = geom.num_partitions
        nf = np.zeros(len(addr), np.int64)
        for a, b in itertools.pairwise(cuts):
            i = (rid >= a) & (rid < b)
            f = s.feed(geom.set_index(line[i]) // stride, line[i], widen_loads(mask[i], w[i], geom), w[i],
                       kern[rid[i]], (near[i] % P).astype(np.int8), geom.home(line[i]).astype(np.int8))
            np.add.at(nf, rid[i], f)
        return _counts(s), nf.tolist()

    with monkeypatch.context() as m:
        m.setenv("IOSIM_L2_ENGINE", "numpy")
        ref = lines()
        assert ranges() == ref   # the NumPy feed_ranges expands and feeds
    with monkeypatch.context() as m:
        m.setattr(l2_jit, "_threads", lambda n: threads)   # every chunk split over this many row blocks
        assert ranges() == ref


@settings(max_examples=60, deadline=None)
@given(traces(), st.integers(2, 4))
def test_recency_layout_and_threads_equal_stamps_serial(case, threads):
    # lru, fifo and lip on the recency layout (≤ 8 sectors) against the stamp layout (forced by 32 sectors per
    # line), and the rows split over several threads against one
    (sets, tags, mask, write, ways, policy), kw = case
    if mask.dtype != np.uint8:
        return
    P = kw.get("partitions", 1)
    rows = int(sets.max()) + 1
    near = kw.get("near")
    home = kw.get("home")
    nr = None if P == 1 else (near if kw["store_near"] else np.where(write, home, near))
    kern = kw["kernel"]
    nk = kw["num_kernels"]

    def run(spl, nt):
        cs = l2_jit.CompiledState(rows, ways, P, policy, nk, kw["store_allocate"], kw["pycachesim_stores"], spl)
        c = {k: 0 for k in l2_jit._COUNTERS}
        c.update(k_read=np.zeros(nk, np.int64), k_write=np.zeros(nk, np.int64), k_hit=np.zeros(nk, np.int64),
                 flush_lines=0)
        nf, steps = cs.run(c, sets, sets, tags, mask, write, kern, nr, home, want_fetched=True, threads=nt)
        cs.flush(c)
        return _plain(c), nf.tolist(), steps

    ref = run(32, 1)
    assert run(8, 1) == ref
    assert run(8, threads) == ref
    assert run(32, threads) == ref


def _lru_misses_two_threads() -> int:
    cs = l2_jit.CompiledState(100, 4, 1, "lru", 1, sectors_per_line=4)
    c = {k: 0 for k in l2_jit._COUNTERS}
    c.update(k_read=0, k_write=0, k_hit=0)
    line = np.arange(1000)
    cs.run(c, line % 100, line % 100, line, np.full(1000, 15, np.uint8), np.zeros(1000, bool), None, None, None,
           threads=2)
    return c["misses"]


def test_parallel_core_survives_fork():
    # iosim.parallel forks worker processes: a child runs the threaded core after its parent did (1000 distinct
    # lines over 100 sets of 4 ways: every access misses)
    from concurrent.futures import ProcessPoolExecutor
    assert _lru_misses_two_threads() == 1000
    with ProcessPoolExecutor(2) as ex:
        assert [f.result() for f in [ex.submit(_lru_misses_two_threads) for _ in range(2)]] == [1000, 1000]


@settings(max_examples=120, deadline=None)
@given(traces(), st.integers(1, 3), st.booleans(), st.integers(1, 3))
def test_grouped_by_row_equals_array_order(case, threads, want, chunks):
    # issue 19: the accesses sorted by row (counting sort), then simulated row after row (the packed kernels for
    # one partition and kernel, the stamped scratch rows for lru and fifo), against array order on one thread:
    # every count, the DRAM sectors of every access, the longest sequence and the state itself (the recency order
    # written back), over chunks that carry the state, with way spreads switched off as simulate_lines does
    from iosim.memory.l2 import disabled_ways
    (sets, tags, mask, write, ways, policy), kw = case
    P = kw.get("partitions", 1)
    rows = int(sets.max()) + 1
    nr = None if P == 1 else (kw["near"] if kw["store_near"] else np.where(write, kw["home"], kw["near"]))
    kern, nk, spread = kw["kernel"], kw["num_kernels"], kw["way_spread"]
    dis = disabled_ways(np.arange(rows), P, ways, spread, kw["spread_granule_sets"]) if spread else None
    cuts = np.linspace(0, len(sets), chunks + 1).astype(int)

    def run(grouped, nt):
        cs = l2_jit.CompiledState(rows, ways + spread, P, policy, nk, kw["store_allocate"], kw["pycachesim_stores"],
                                  8 if mask.dtype == np.uint8 else 32)
        if dis is not None:
            cs.disable(dis)
        c = {k: 0 for k in l2_jit._COUNTERS}
        c.update(k_read=np.zeros(nk, np.int64), k_write=np.zeros(nk, np.int64), k_hit=np.zeros(nk, np.int64),
                 flush_lines=0)
        out = []
        for a, b in itertools.pairwise(cuts):
            sl = slice(a, b)
            nf, steps = cs.run(c, sets[sl], sets[sl], tags[sl], mask[sl], write[sl],
                               None if kern is None else kern[sl], None if nr is None else nr[sl],
                               None if P == 1 else kw["home"][sl], t0=a, want_fetched=want, threads=nt,
                               grouped=grouped)
            out.append((None if nf is None else nf.tolist(), steps))
        state = cs.T.tolist()
        cs.flush(c)
        return _plain(c), out, state

    assert run(True, threads) == run(False, 1)


def test_grouped_flags_lines_outside_the_tag_field():
    for grouped in (False, True):
        cs = l2_jit.CompiledState(4, 2, 1, "lru", 1, sectors_per_line=4)
        c = {k: 0 for k in l2_jit._COUNTERS}
        c.update(k_read=0, k_write=0, k_hit=0)
        line = np.array([1, l2_jit.MAX_LINE + 3, 2])
        with pytest.raises(IosimError, match="outside"):
            cs.run(c, line % 4, line % 4, line, np.full(3, 15, np.uint8), np.zeros(3, bool), None, None, None,
                   grouped=grouped)


def test_set_index_modulo_threaded_equals_numpy():
    rng = np.random.default_rng(3)
    for x in (rng.integers(-2**62, 2**62, 200_000), rng.integers(-2**51, 2**51, 200_000),
              rng.integers(0, 2**30, 200_000)):
        for n in (1, 3, 25_600, 12_800, 2**40 + 1):
            assert np.array_equal(l2_jit.set_index_modulo(x, n), x % n)
    g = L2Geometry(size_bytes=50 * 2**20, line_bytes=128, sector_bytes=32, ways=16)
    x = rng.integers(0, 2**40, 300_000)
    assert np.array_equal(g.set_index(x), x % g.sets_per_cache)


@pytest.mark.parametrize("policy", ["lru", "fifo"])
@pytest.mark.parametrize("ways", [12, 16, 20])
def test_blocks_kernel_in_chunks_matches_pycachesim(monkeypatch, policy, ways):
    # issue 19: the accesses grouped by blocks of 64 rows a chunk at a time and simulated in place on the recency
    # layout (rows padded to 16 or 24 entries for 12 and 20 ways; 200 sets: the last block partial), against
    # pycachesim's own LRU/FIFO loop on the same line trace: hits, misses, and dirty lines written back
    cachesim = pytest.importorskip("cachesim")
    monkeypatch.setattr(l2_jit, "GROUP_MIN", 1)
    monkeypatch.setattr(l2_jit, "_GROUP_CHUNK", 4099)   # 5 chunks, cut at no block boundary
    rng = np.random.default_rng(ways)
    n, sets = 20_000, 200
    line = np.where(rng.random(n) < 0.5, np.arange(n) % (sets * ways + 37), rng.integers(0, 2 * sets * ways, n))
    write = rng.random(n) < 0.2
    mem = cachesim.MainMemory()
    c = cachesim.Cache("L2", sets, ways, 128, policy.upper())
    mem.load_to(c)
    mem.store_from(c)
    cs = cachesim.CacheSimulator(c, mem)
    cs.loadstore([(((), (a,)) if w else ((a,), ())) for a, w in zip((line * 128).tolist(), write.tolist())],
                 length=128)
    cs.force_write_back()
    ref = c.stats()
    monkeypatch.setenv("IOSIM_L2_ENGINE", "numba")
    made = []
    kernel = l2_jit._blocks_kernel
    monkeypatch.setattr(l2_jit, "_blocks_kernel", lambda *a: made.append(a) or kernel(*a))
    got = simulate_lines(line % sets, line, np.full(n, 15, np.uint8), write, ways, policy, pycachesim_stores=True)
    assert made == [(POLICIES.index(policy), False, True, 16 if ways <= 16 else 24)]   # that path, padded rows
    assert (got["hits"], got["misses"]) == (ref["HIT_count"], ref["MISS_count"])
    assert got["dirty_evictions"] + got["flush_lines"] == ref["EVICT_count"]
