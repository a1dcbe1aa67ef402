"""The streamed trace (iosim.memory.hierarchy.simulate_schedule: CTA timeline per CTA, accesses window by window of
global time into one L2Stream) gives exactly the counts of the whole trace built, sorted and simulated at once
(build_trace + iosim.memory.l2.simulate), on every counter and per kernel, whatever the chunk size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iosim.hwprofile import load_hardware
from iosim.masks import flex_block_tables, random_block_mask
from iosim.memory.hierarchy import build_trace, drift_for, simulate_schedule
from iosim.memory.l2 import L2Geometry, simulate
from iosim.memory.layout import layout
from iosim.memory.trace import expand_kernel, kernel_durations
from iosim.pipeline import build_schedule
from iosim.presets import apply
from iosim.problem import KernelConfig, Problem
from iosim.registry import get

HW = {n: load_hardware(n) for n in ("h100", "h200", "a100")}
PRESETS = ("fa2", "flex", "triton-tutorial", "iosim-triton")
ALGORITHMS = ("standard", "flash2", "splitkv", "block_sparse", "flash2_bwd")


def _schedule(hw, what: str, p: Problem, seed: int):
    """(schedule, regs per thread, persistent) of a preset or of an algorithm with small tiles."""
    if what in PRESETS:
        alg, cfg, pre = apply(what, p, hw, KernelConfig())
        mask = None
        if what == "flex" and seed % 2:
            mask = flex_block_tables(random_block_mask(p.batch, p.heads, p.seq_q, p.seq_kv, 128, 0.5, seed, p.causal),
                                     p.seq_q, p.seq_kv, p.causal)
        s = pre.schedule(p, cfg, hw, mask) if pre.schedule else build_schedule(alg, p, cfg, hw)
        return s, pre.regs_per_thread, pre.persistent
    order = ("ascending", "descending")[seed % 2]
    cfg = KernelConfig(block_m=64, block_n=64, kv_order=order)
    if what == "block_sparse":
        tm, tn = -(-p.seq_q // 64), -(-p.seq_kv // 64)
        mask = np.random.default_rng(seed).random((p.batch, p.heads, tm, tn)) < 0.6
        return get(what).build(p, cfg, hw, block_mask=mask), 255, False
    return build_schedule(what, p, cfg, hw), 255, False


def _reference(s, hw, geom, regs, persistent, jitter, stride):
    tr, info = build_trace(s, hw, regs, persistent, drift_for(s) if jitter is None else jitter)
    return simulate(tr, geom, stride=stride, num_kernels=len(s.kernels)), [end for _, _, end in info]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(what=st.sampled_from(PRESETS + ALGORITHMS), profile=st.sampled_from(sorted(HW)),
       n=st.integers(1, 1500), heads=st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1)]), batch=st.integers(1, 2),
       d=st.sampled_from([64, 128]), causal=st.booleans(), seed=st.integers(0, 7),
       jitter=st.sampled_from([None, 0.0, 0.4]), stride=st.sampled_from([None, 1]),
       l2_kib=st.sampled_from([256, 1024, None]), chunk=st.sampled_from([1, 40, 700, 100_000]))
def test_streamed_equals_whole_trace(what, profile, n, heads, batch, d, causal, seed, jitter, stride, l2_kib, chunk):
    hw = HW[profile]
    H, Hkv = heads
    if what == "flash2_bwd":
        Hkv = H   # the backward schedule takes MHA
    p = Problem(batch, H, Hkv, n, n, d, "bf16", causal)
    s, regs, persistent = _schedule(hw, what, p, seed)
    geom = L2Geometry.from_hardware(hw) if l2_kib is None else L2Geometry.from_hardware(hw, size_bytes=l2_kib << 10)
    ref, ends = _reference(s, hw, geom, regs, persistent, jitter, stride)
    got = simulate_schedule(s, hw, geom, regs, persistent, stride, jitter=jitter, chunk_ranges=chunk)
    assert got.l2 == ref   # every counter, the per-kernel tuples, stride and exactness
    assert [k.ticks for k in got.kernels] == ends
    assert got.dram_read_bytes == ref.dram_read_sectors * geom.sector_bytes


@pytest.mark.parametrize("disorder", [0.5, 3.0])
def test_disorder_streams_exactly(disorder):
    hw = HW["h100"]
    s, regs, _ = _schedule(hw, "fa2", Problem(1, 4, 2, 3000, 3000, 64, "bf16", True), 0)
    geom = L2Geometry.from_hardware(hw, size_bytes=1 << 20)
    tr, _ = build_trace(s, hw, regs, False, 0.0, disorder)
    ref = simulate(tr, geom, stride=1, num_kernels=len(s.kernels))  # fa2 splits this small launch: 2 kernels
    got = simulate_schedule(s, hw, geom, regs, stride=1, jitter=0.0, disorder=disorder, chunk_ranges=300)
    assert got.l2 == ref


def test_window_expansion_covers_every_access_once():
    """expand_kernel over a few programs and tick windows returns exactly the whole expansion's accesses of those
    programs at those ticks (two-level loop nest of the backward pass included)."""
    hw = HW["h100"]
    for what in ("flash2_bwd", "fa2", "standard"):
        s, _, _ = _schedule(hw, what, Problem(1, 2, 2, 700, 700, 64, "bf16", True), 1)
        lay = layout(s)
        for k in s.kernels:
            whole = expand_kernel(s, k, lay)
            assert np.array_equal(kernel_durations(s, k), whole.duration)
            progs = np.array([0, 3, 5, whole.num_programs - 1])
            progs = np.unique(progs[progs < whole.num_programs])
            lo = np.array([1, 0, 2, 3])[:len(progs)]
            hi = lo + np.array([2, 5, 1, 4])[:len(progs)]
            part = expand_kernel(s, k, lay, progs, lo, hi)
            pos = np.searchsorted(progs, whole.prog)
            ok = (pos < len(progs)) & (progs[np.minimum(pos, len(progs) - 1)] == whole.prog)
            i = np.minimum(pos, len(progs) - 1)
            sel = ok & (whole.tick >= lo[i]) & (whole.tick < hi[i])
            key = lambda t, m: sorted(zip(t.prog[m].tolist(), t.tick[m].tolist(), t.order[m].tolist(),
                                          t.addr[m].tolist(), t.nbytes[m].tolist(), t.write[m].tolist()))
            assert key(part, np.ones(len(part.prog), bool)) == key(whole, sel)
            assert np.array_equal(part.duration, whole.duration[progs])


def test_many_chunks_keep_state_across_kernels():
    """The standard algorithm's three kernels through one L2: per-kernel counters match with 1-range chunks."""
    hw = HW["h100"]
    s, regs, _ = _schedule(hw, "standard", Problem(1, 2, 2, 500, 500, 64, "bf16", False), 0)
    assert len(s.kernels) > 1
    geom = L2Geometry.from_hardware(hw, size_bytes=256 << 10)
    ref, _ = _reference(s, hw, geom, regs, False, None, 1)
    got = simulate_schedule(s, hw, geom, regs, stride=1, chunk_ranges=1)
    assert got.l2.per_kernel == ref.per_kernel and got.l2 == ref
