"""The ``xor_low`` set-index hash (issue 22): the set index against an independent pure-Python formula; the sampled lines
(expand_lines, first_sampled, the compiled range walk) are exactly the lines whose set is ≡ 0 (mod stride); the compiled
walk equals the NumPy expansion on random range traces; sampling stays exact on aligned traces; and a layout touching
2 lines every 64 reaches every set residue (``xor`` reaches 4 of 128)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iosim.memory.l2 import (POLICIES, L2Geometry, RunTrace, compiled_core, expand_lines, first_sampled,
                             granule_low_hash, simulate, widen_loads)
from iosim.memory.l2stream import L2Stream


def _geom(sets, granule, ways=4, **kw):
    return L2Geometry(size_bytes=sets * ways * 128, line_bytes=128, sector_bytes=32, ways=ways, hash="xor_low",
                      hash_granule_lines=granule, **kw)


def _set_python(line: int, n: int, G: int) -> int:
    """The documented formula with Python integers: ((line ⊕ g) ⊕ (fold ∧ ¬(G−1))) mod n, fold = XOR of the b-bit
    chunks of line ≫ b, g = top log2(G) bits of (granule · 0x9E3779B1) mod 2^32."""
    b = max((n - 1).bit_length(), 1)
    fold, v = 0, line >> b
    while v:
        fold ^= v
        v >>= b
    lg = G.bit_length() - 1
    g = (((line >> lg) * 0x9E3779B1) % 2**32) >> (32 - lg) if lg else 0
    assert 0 <= g < G
    return ((line ^ g) ^ (fold & ~(G - 1))) % n


SETS = [16, 24, 64, 100, 12800]
GRANULES = [1, 2, 4, 8, 128]


@settings(max_examples=60, deadline=None)
@given(sets=st.sampled_from(SETS), granule=st.sampled_from(GRANULES), start=st.integers(0, 2**40),
       count=st.integers(1, 700))
def test_set_index_and_sampled_lines(sets, granule, start, count):
    g = _geom(sets, granule)
    ln = np.arange(start, start + count, dtype=np.int64)
    s = g.set_index(ln)
    assert s.tolist() == [_set_python(int(x), sets, granule) for x in ln]
    kmax = g.max_stride()
    assert kmax == min(sets & -sets, granule)
    k = 1
    while k <= kmax:
        want = ln[s % k == 0]                      # the lines whose set is sampled, by enumeration
        tr = RunTrace(np.array([start * 128]), np.array([count * 128]), np.array([False]), np.zeros(1, np.int64),
                      np.zeros(1, np.int64))
        got = expand_lines(tr, g, k)[0]
        assert got.tolist() == want.tolist(), k
        # first_sampled: the first sampled line at or after each line (brute force over the next 2·G lines)
        probe = ln[:50]
        fs = first_sampled(probe, g, k)
        for x, f in zip(probe.tolist(), fs.tolist()):
            nxt = next(y for y in range(x, x + 2 * granule + k) if _set_python(y, sets, granule) % k == 0)
            assert f == nxt == first_sampled(x, g, k)
        # residues other than 0: lines whose set ≡ r (mod k)
        r = k - 1
        assert expand_lines(tr, g, k, residue=r)[0].tolist() == ln[s % k == r].tolist()
        # an aligned group of k lines lands on k consecutive sets, one of each residue
        base = (ln // k) * k
        grp = g.set_index(base) - g.set_index(base) % k
        assert (s - s % k == grp).all()
        k *= 2


def test_granule_hash_values_and_wraparound():
    # 0x9E3779B1 · 1 = 0x9E3779B1 → top 7 bits 0b1001111 = 79; granule 2^40 + 1: only the low 32 bits of the product
    # matter, so int64 wrap-around gives the same value as Python's exact product
    assert granule_low_hash(1, 128) == 79
    big = np.array([2**40 + 1, 2**50 + 12345, 3], np.int64)
    assert granule_low_hash(big, 128).tolist() == [((int(x) * 0x9E3779B1) % 2**32) >> 25 for x in big]
    assert granule_low_hash(np.arange(5, dtype=np.int64), 1).tolist() == [0] * 5


@pytest.mark.parametrize("h, want", [("xor", 4), ("xor_low", 128)])
def test_strided_layout_reaches_every_residue(h, want):
    # FA2 varlen's packed [tokens, 32 heads, 128] bf16 layout: one head's rows are 8 KiB = 64 lines apart, 2 lines each
    g = L2Geometry(size_bytes=50 << 20, line_bytes=128, sector_bytes=32, ways=16, partitions=2, sharing="duplicated",
                   hash=h, hash_granule_lines=128)
    rows = np.arange(0, 1 << 20, 64, dtype=np.int64)
    ln = np.concatenate([rows, rows + 1])
    s = g.set_index(ln)
    assert len(np.unique(s % 128)) == want
    if h == "xor_low":   # and about evenly: every residue within 25 % of the mean
        c = np.bincount(s % 128, minlength=128)
        assert c.min() > 0.75 * c.mean() and c.max() < 1.25 * c.mean()


@st.composite
def aligned_traces(draw):
    k = 4
    n = draw(st.integers(1, 60))
    start = draw(st.lists(st.integers(0, 4000), min_size=n, max_size=n))
    length = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    write = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    sm = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return RunTrace(np.array(start, np.int64) * k * 128, np.array(length, np.int64) * k * 128, np.array(write),
                    np.array(sm, np.int64), np.zeros(n, np.int64))


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "random"])
@pytest.mark.parametrize("sharing", ["shared", "duplicated"])
@settings(max_examples=15, deadline=None)
@given(tr=aligned_traces())
def test_sampling_exact_when_claimed(policy, sharing, tr):
    # mirrors tests/test_l2_policies.py::test_xor_sampling_exact_when_claimed for xor_low (granule 8 > stride 4, so the
    # sampled offset g mod 4 varies between granules)
    g = L2Geometry(size_bytes=64 * 4 * 128, line_bytes=128, sector_bytes=32, ways=4, partitions=2, sharing=sharing,
                   policy=policy, hash="xor_low", hash_granule_lines=8, home_granule_lines=4)
    assert g.max_stride() == 8
    full = simulate(tr, g, stride=1)
    sampled = simulate(tr, g, stride=4)
    assert full.exact and sampled.exact
    for f in ("accesses", "hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors"):
        assert getattr(sampled, f) == getattr(full, f), f


def _plain(r: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else int(v)) for k, v in r.items()}


@st.composite
def range_traces(draw):
    # two policies (one per compiled state layout: recency-ordered lru, stamped random) keep the numba compiles few;
    # the walk over sampled lines is the same code for every policy
    policy = draw(st.sampled_from(["lru", "random"]))
    P = draw(st.sampled_from([1, 2]))
    geom = L2Geometry(size_bytes=16 * 4 * 128 * P, line_bytes=128, sector_bytes=draw(st.sampled_from([16, 32])),
                      ways=4, partitions=P, sharing="duplicated" if P > 1 else "shared", policy=policy,
                      hash="xor_low", hash_granule_lines=draw(st.sampled_from([4, 8])),
                      home_granule_lines=draw(st.sampled_from([1, 2, 8])), store_near=draw(st.booleans()),
                      store_allocate=draw(st.booleans()), dram_fetch_bytes=draw(st.sampled_from([0, 64, 128])),
                      way_spread=draw(st.sampled_from([0, 2])))
    stride = draw(st.sampled_from([1, 2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 200))
    addr = rng.integers(0, 64 * 128 * 6, n)
    nbytes = rng.choice([0, 1, 16, 32, 100, 128, 300, 1024, 5000], n)
    nk = draw(st.integers(1, 2))
    return geom, stride, nk, (addr, nbytes, rng.random(n) < 0.3, rng.integers(0, 7, n), rng.integers(0, nk, n))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(range_traces(), st.integers(1, 3))
def test_compiled_ranges_equal_numpy_lines(monkeypatch, case, threads):
    # mirrors tests/test_l2_jit.py::test_feed_ranges_equals_expand_then_feed for xor_low: the compiled walk over
    # ranges against the lines expanded in NumPy and fed to the NumPy engine, in three chunks
    pytest.importorskip("numba")
    from iosim.memory import l2_jit
    geom, stride, nk, (addr, nbytes, write, sm, kern) = case
    rows = geom.sets_per_cache // stride
    cuts = [0, len(addr) // 3, len(addr) // 2, len(addr)]

    def ranges():
        s = L2Stream(geom, rows, nk, stride=stride)
        nf = [s.feed_ranges(addr[a:b], nbytes[a:b], write[a:b], sm[a:b], kern[a:b] if nk > 1 else None)
              for a, b in itertools.pairwise(cuts)]
        return _plain(s.finish()), np.concatenate(nf).tolist()

    def lines():
        line, mask, w, near, rid = expand_lines(RunTrace(addr, nbytes, write, sm, np.arange(len(addr))), geom,
                                                stride)
        assert (geom.set_index(line) % stride == 0).all()
        s = L2Stream(geom, rows, nk, stride=stride)
        P = geom.num_partitions
        nf = np.zeros(len(addr), np.int64)
        for a, b in itertools.pairwise(cuts):
            i = (rid >= a) & (rid < b)
            f = s.feed(geom.set_index(line[i]) // stride, line[i], widen_loads(mask[i], w[i], geom), w[i],
                       kern[rid[i]], (near[i] % P).astype(np.int8), geom.home(line[i]).astype(np.int8))
            np.add.at(nf, rid[i], f)
        return _plain(s.finish()), nf.tolist()

    with monkeypatch.context() as m:
        m.setenv("IOSIM_L2_ENGINE", "numpy")
        ref = lines()
        assert ranges() == ref
    with monkeypatch.context() as m:
        m.setenv("IOSIM_L2_ENGINE", "numba")
        assert compiled_core() is not None
        m.setattr(l2_jit, "_threads", lambda n: threads)
        assert ranges() == ref
        # and simulate() (compiled range walk) equals simulate() on the NumPy loops
        tr = RunTrace(addr, nbytes, write, sm, kern)
        got = simulate(tr, geom, stride=stride, num_kernels=nk)
        m.setenv("IOSIM_L2_ENGINE", "numpy")
        assert simulate(tr, geom, stride=stride, num_kernels=nk) == got
