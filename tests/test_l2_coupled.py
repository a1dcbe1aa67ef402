"""The coupled CTA timeline (iosim.memory.coupled) and the chunked L2 (iosim.memory.l2stream): chunking changes nothing, the
uncoupled limit is the lockstep timeline, a lagging CTA whose loads hit catches up, runs are deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from iosim.memory.coupled import Coupling, _kernel_lines, run_kernel
from iosim.memory.hierarchy import simulate_schedule
from iosim.hwprofile import load_hardware
from iosim.memory.l2 import L2Geometry, simulate_lines
from iosim.memory.l2stream import L2Stream
from iosim.pipeline import build_schedule
from iosim.presets import apply
from iosim.problem import KernelConfig, Problem
from iosim.memory.trace import KernelTrace

HW = load_hardware("h100")


def _random_lines(n, sets, seed, whole=True, sectors=4):
    rng = np.random.default_rng(seed)
    line = rng.integers(0, sets * 12, n)
    write = rng.random(n) < 0.2
    full = (1 << sectors) - 1
    mask = np.full(n, full, np.uint8) if whole else rng.integers(1, full + 1, n).astype(np.uint8)
    return line, mask, write


@pytest.mark.parametrize("policy", ["lru", "srrip", "plru", "fifo"])
@pytest.mark.parametrize("partitions,whole", [(1, True), (2, True), (2, False)])
def test_chunked_feed_equals_one_pass(policy, partitions, whole):
    geom = L2Geometry(size_bytes=16 * 4 * 128 * partitions, line_bytes=128, sector_bytes=32, ways=4,
                      partitions=partitions, sharing="duplicated" if partitions > 1 else "shared", policy=policy,
                      store_near=True, home_granule_lines=1)
    n = 3000
    line, mask, write = _random_lines(n, geom.sets_per_cache, 1, whole)
    sets = geom.set_index(line)
    near = (np.arange(n) % 3 % partitions).astype(np.int8) if partitions > 1 else None
    home = geom.home(line).astype(np.int8) if partitions > 1 else None
    ref = simulate_lines(sets, line, mask, write, geom.ways, policy, near=near, home=home, partitions=partitions,
                         store_near=True)
    st = L2Stream(geom, geom.sets_per_cache, whole_lines=whole)
    assert st.fast == whole
    cuts = [0, 1, 17, 500, 501, 1400, 2999, n]
    fetched = []
    for a, b in itertools.pairwise(cuts):
        fetched.append(st.feed(sets[a:b], line[a:b], mask[a:b], write[a:b], None,
                               None if near is None else near[a:b], None if home is None else home[a:b]))
    got = st.finish()
    for key in ("accesses", "hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors",
                "dram_write_sectors"):
        assert got[key] == ref[key], key
    assert int(np.concatenate(fetched).astype(bool).sum()) <= got["misses"]


def _fa2(N, causal, H=4):
    p = Problem(1, H, H, N, N, 128, "bf16", causal)
    alg, cfg, pre = apply("fa2", p, HW, KernelConfig())
    return build_schedule(alg, p, cfg, HW), pre.regs_per_thread


@pytest.mark.parametrize("causal", [False, True])
def test_uncoupled_limit_is_the_lockstep_timeline(causal):
    s, regs = _fa2(8192, causal, H=8)
    a = simulate_schedule(s, HW, regs_per_thread=regs, jitter=0.0)
    b = simulate_schedule(s, HW, regs_per_thread=regs, coupling=Coupling(miss_cost=0.0, noise=0.0))
    assert b.dram_read_bytes == a.dram_read_bytes
    assert b.dram_write_bytes == a.dram_write_bytes
    assert b.l2.hits == a.l2.hits
    assert b.kernels[0].ticks == a.kernels[0].ticks


def test_deterministic_and_noise_matters():
    s, regs = _fa2(8192, True, H=8)
    c = Coupling(miss_cost=1.0, noise=0.5, drift=0.25)
    a = simulate_schedule(s, HW, regs_per_thread=regs, coupling=c)
    b = simulate_schedule(s, HW, regs_per_thread=regs, coupling=c)
    assert (a.dram_read_bytes, a.l2.hits, a.kernels[0].ticks) == (b.dram_read_bytes, b.l2.hits, b.kernels[0].ticks)
    d = simulate_schedule(s, HW, regs_per_thread=regs, coupling=Coupling(miss_cost=1.0, noise=0.5, drift=0.25, seed=1))
    assert d.kernels[0].ticks != a.kernels[0].ticks


def _walk_trace(walk_ticks=20, short=2):
    """Two slots, three CTAs, one 128-B line per tick. CTA 0 loads one private line and ends after ``short`` ticks;
    CTA 1 walks lines 0…walk−1; CTA 2 takes slot 0 when CTA 0 ends and walks the same lines, ``short`` ticks
    behind CTA 1 — every line it loads, CTA 1 loaded just before."""
    prog, tick = [], []
    dur = np.array([short, walk_ticks, walk_ticks])
    addr = []
    for c in range(3):
        for t in range(dur[c]):
            prog.append(c)
            tick.append(t)
            addr.append((1000 + t) * 128 if c == 0 else t * 128)
    n = len(prog)
    return KernelTrace("walk", 3, dur, np.array(prog), np.array(tick), np.zeros(n, np.int16), np.zeros(n, bool),
                       np.array(addr, np.int64), np.full(n, 128, np.int64))


def _run_walk(coupling):
    geom = L2Geometry(size_bytes=4 * 2 * 128, line_bytes=128, sector_bytes=32, ways=2)   # 8 lines
    tr = _walk_trace()
    lines = _kernel_lines(tr, geom, 1)
    l2 = L2Stream(geom, geom.sets_per_cache, whole_lines=True)
    ends = run_kernel(tr, lines, 2, 2, geom, l2, 0, coupling)
    return ends, l2.finish()


def test_lagging_cta_whose_loads_hit_catches_up():
    ends0, c0 = _run_walk(Coupling(miss_cost=0.0, noise=0.0, chunk_ticks=1))
    # lockstep: CTA 2 starts at tick 2 and ends 2 ticks after CTA 1; its 20 loads all hit
    assert ends0[1] == 20 and ends0[2] == 22
    assert c0["hits"] == 20
    ends1, c1 = _run_walk(Coupling(miss_cost=1.0, noise=0.0, chunk_ticks=1))
    # coupled: CTA 1 misses every line and runs at 2 time units per tick; CTA 2 hits, runs at 1 and closes the gap
    assert ends1[1] > 30
    lag0 = ends0[2] - ends0[1]
    lag1 = ends1[2] - ends1[1]
    assert lag1 <= lag0 / 2
    assert c1["hits"] >= 15   # once it has caught up it still reads mostly what CTA 1 brought in


def test_chunk_inflation_bounded_on_a_convoy():
    """Chunks regroup one pass: a coupled run costs at most a few times the steps of the lockstep pass."""
    s, regs = _fa2(4096, False, H=8)
    a = simulate_schedule(s, HW, regs_per_thread=regs, jitter=0.0)
    b = simulate_schedule(s, HW, regs_per_thread=regs, coupling=Coupling(miss_cost=1.0, noise=0.3))
    assert abs(b.dram_read_bytes / a.dram_read_bytes - 1) < 0.25


def test_bad_coupling_is_an_iosim_error():
    from iosim.errors import IosimError
    with pytest.raises(IosimError):
        Coupling(miss_cost=-1.0)
    with pytest.raises(IosimError):
        Coupling(chunk_ticks=0)
