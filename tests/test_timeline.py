"""CTA timeline choices of issue 9: the co-resident phase of convoy kernels (iosim.memory.scheduler.layer_offsets,
iosim.memory.hierarchy.DEFAULT_PHASES: slot start offsets, the order they give, DRAM traffic on hand-worked traces, the mean
over phases in simulate_schedule) and the drift σ by KV walk direction (iosim.memory.hierarchy.drift_for)."""

from __future__ import annotations

import numpy as np
import pytest

from iosim.memory.hierarchy import DRIFT_BY_KV_ORDER, build_trace, drift_for, mean_result, simulate_schedule
from iosim.hwprofile import load_hardware
from iosim.memory.l2 import L2Geometry, RunTrace, expand_lines, simulate_lines, simulate_owned
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem
from iosim.memory.scheduler import is_layered_convoy, layer_offsets, order_trace, start_times
from iosim.memory.trace import KernelTrace

HW = load_hardware("h100")


def test_start_times_with_slot_offsets_hand_worked():
    # 2 SMs × 2 resident CTAs = 4 slots, every CTA 4 ticks, the second layer (slots 2, 3) 2 ticks late
    start, slot = start_times(np.full(8, 4, np.int64), 4, offset=np.array([0, 0, 2, 2]))
    assert start.tolist() == [0, 0, 2, 2, 4, 4, 6, 6]
    assert slot.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # unequal durations: the slot that frees first takes the next CTA
    start, slot = start_times(np.array([4, 1, 4, 4, 4]), 4, offset=np.array([0, 0, 2, 2]))
    assert start.tolist() == [0, 0, 2, 2, 1] and slot.tolist() == [0, 1, 2, 3, 1]


def test_layer_offsets_apply_only_to_convoys_of_several_resident_ctas():
    d = np.full(10, 100, np.int64)
    assert layer_offsets(d, 8, 4, False, 0.5).tolist() == [0, 0, 0, 0, 25, 25, 25, 25]  # R = 2: 0.5 · 100 / 2
    assert layer_offsets(d, 12, 4, False, 0.5).tolist() == [0] * 4 + [17] * 4 + [34] * 4  # R = 3: round(50 / 3)
    assert layer_offsets(d, 4, 4, False, 0.5) is None             # one resident CTA per SM
    assert layer_offsets(d, 8, 4, True, 0.5) is None              # persistent kernel
    assert layer_offsets(d, 8, 4, False, 0.0) is None             # phase 0 = lockstep
    assert layer_offsets(np.arange(1, 11), 8, 4, False, 0.5) is None  # unequal trip counts (causal): drift instead
    assert is_layered_convoy(d, 8, 4) and not is_layered_convoy(d, 4, 4)


def _convoy_trace(ctas: int, lines: int) -> KernelTrace:
    """Every CTA reads lines 0 … lines−1 (128 B each), one per tick: CTAs walking the same K/V."""
    prog = np.repeat(np.arange(ctas), lines)
    tick = np.tile(np.arange(lines), ctas)
    n = len(prog)
    return KernelTrace("walk", ctas, np.full(ctas, lines, np.int64), prog, tick, np.zeros(n, np.int16),
                       np.zeros(n, bool), tick.astype(np.int64) * 128, np.full(n, 128, np.int64))


def _misses(tr: KernelTrace, phase: float, ways: int) -> int:
    perm, sm, _ = order_trace(tr, slots=4, num_sms=2, phase=phase)
    run = RunTrace(tr.addr[perm], tr.nbytes[perm], tr.write[perm], sm, np.zeros(len(perm), np.int64))
    g = L2Geometry(size_bytes=ways * 128, line_bytes=128, sector_bytes=128, ways=ways, partitions=1)
    ln, mask, w, _, _ = expand_lines(run, g)
    return simulate_lines(g.set_index(ln), ln, mask, w, ways, "lru")["misses"]


def test_phase_turns_one_read_per_convoy_into_one_per_layer():
    """4 CTAs (2 SMs × 2) walk 8 lines through a 2-line LRU. Lockstep: at each tick all four read the same line,
    8 misses. Phase 0.5 puts the second layer 0.5 · 8 / 2 = 2 ticks behind: between layer 0 and layer 1 reading line
    k the cache sees k+1, k+2 (layer 0) and k−2, k−1 (layer 1), four other lines, so k is gone from a 2-line cache
    (8 + 8 misses) but survives in a 5-line one (8 misses); a 4-line one keeps only lines 0, 1, 6 and 7 (at the
    walk's ends fewer other lines come between: 8 + 4 misses)."""
    tr = _convoy_trace(4, 8)
    assert _misses(tr, 0.0, ways=2) == 8
    assert _misses(tr, 0.5, ways=2) == 16
    assert _misses(tr, 0.5, ways=5) == 8
    assert _misses(tr, 0.5, ways=4) == 12


def test_simulate_schedule_averages_the_phases_of_a_layered_convoy():
    s = build_schedule("flash2", Problem(1, 4, 4, 2048, 2048, 64, "bf16", False), KernelConfig(128, 64), HW)
    geom = L2Geometry.from_hardware(HW, size_bytes=1 << 20)  # 1 MiB L2: K/V (512 KiB per head) at the knee
    got = simulate_schedule(s, HW, geom, regs_per_thread=255, phases=4, stride=1)
    assert any("4 co-resident phases" in n for n in got.notes)
    each = []
    for ph in (0.125, 0.375, 0.625, 0.875):
        tr, info = build_trace(s, HW, 255, False, 0.25, 0.0, ph)
        assert info[0][3]  # 255 registers → 2 CTAs per SM, equal trip counts: a layered convoy
        each.append(simulate_owned([tr], geom, stride=1, num_kernels=1))
    assert got.l2.dram_read_sectors == mean_result(each).dram_read_sectors
    assert got.l2.dram_read_sectors == round(sum(r.dram_read_sectors for r in each) / 4)
    one = simulate_schedule(s, HW, geom, regs_per_thread=255, phases=1, stride=1)
    assert not any("phases" in n for n in one.notes)


def test_causal_kernel_is_simulated_once():
    s = build_schedule("flash2", Problem(1, 2, 2, 1024, 1024, 64, "bf16", True), KernelConfig(128, 64), HW)
    geom = L2Geometry.from_hardware(HW, size_bytes=1 << 20)
    a = simulate_schedule(s, HW, geom, regs_per_thread=255, phases=4, stride=1)
    b = simulate_schedule(s, HW, geom, regs_per_thread=255, phases=1, stride=1)
    assert a.l2 == b.l2 and not any("phases" in n for n in a.notes)


@pytest.mark.parametrize("phase", [0.0, 0.3, 0.9])
def test_phase_keeps_every_access_once(phase):
    tr = _convoy_trace(16, 5)
    perm, sm, end = order_trace(tr, slots=8, num_sms=4, phase=phase)
    assert sorted(perm.tolist()) == list(range(len(perm)))
    assert end == 5 * 2 + round(phase * 5 / 2)  # 16 CTAs on 8 slots: two rounds each layer, the second layer late


def test_drift_follows_the_kv_walk_direction():
    from iosim.presets import apply
    p = Problem(1, 2, 2, 2048, 2048, 64, "bf16", True)
    fa2 = apply("fa2", p, HW, KernelConfig())[1]
    assert fa2.kv_order == "descending"
    s_desc = build_schedule("flash2", p, fa2, HW)
    s_asc = build_schedule("flash2", p, KernelConfig(128, 64), HW)
    assert drift_for(s_desc) == DRIFT_BY_KV_ORDER["descending"] == 0.15
    assert drift_for(s_asc) == DRIFT_BY_KV_ORDER["ascending"] == 0.03
    # jitter=None takes the walk's drift: the same result as passing it, and not the other walk's
    geom = L2Geometry.from_hardware(HW, size_bytes=1 << 20)
    a = simulate_schedule(s_asc, HW, geom, regs_per_thread=255, stride=1)
    b = simulate_schedule(s_asc, HW, geom, regs_per_thread=255, stride=1, jitter=0.03)
    c = simulate_schedule(s_asc, HW, geom, regs_per_thread=255, stride=1, jitter=0.5)
    assert a.l2 == b.l2 and a.l2 != c.l2


@pytest.mark.parametrize("bad", [0, -2])
def test_phases_below_one_are_refused(bad):
    from iosim.errors import IosimError
    s = build_schedule("flash2", Problem(1, 2, 2, 512, 512, 64, "bf16", False), KernelConfig(128, 64), HW)
    with pytest.raises(IosimError, match="phases must be a whole number ≥ 1"):
        simulate_schedule(s, HW, phases=bad)
