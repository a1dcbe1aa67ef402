"""The CTA timeline (iosim.memory.scheduler): start times and slots, the order of a hand-worked trace, per-access
times that order any subset as the whole trace, and the drift σ by KV walk direction (iosim.memory.hierarchy.drift_for)."""

from __future__ import annotations

import numpy as np
import pytest

from iosim.hwprofile import load_hardware
from iosim.memory.hierarchy import DRIFT_BY_KV_ORDER, drift_for, simulate_schedule
from iosim.memory.l2 import L2Geometry
from iosim.memory.scheduler import order_trace, start_times, timeline
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem
from iosim.memory.trace import KernelTrace

HW = load_hardware("h100")


def test_start_times_hand_worked():
    # 4 slots, every CTA 4 ticks: waves of 4
    start, slot = start_times(np.full(8, 4, np.int64), 4)
    assert start.tolist() == [0, 0, 0, 0, 4, 4, 4, 4]
    assert slot.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # unequal durations: the slot that frees first takes the next CTA (ties: lowest slot)
    start, slot = start_times(np.array([4, 1, 4, 4, 4, 2]), 4)
    assert start.tolist() == [0, 0, 0, 0, 1, 4] and slot.tolist() == [0, 1, 2, 3, 1, 0]


def _walk_trace(ctas: int, lines: int) -> KernelTrace:
    """Every CTA reads lines 0 … lines−1 (128 B each), one per tick."""
    prog = np.repeat(np.arange(ctas), lines)
    tick = np.tile(np.arange(lines), ctas)
    n = len(prog)
    return KernelTrace("walk", ctas, np.full(ctas, lines, np.int64), prog, tick, np.zeros(n, np.int16),
                       np.zeros(n, bool), tick.astype(np.int64) * 128, np.full(n, 128, np.int64))


def test_lockstep_order_is_time_then_slot():
    """3 CTAs on 2 slots, 2 ticks each: (t0: c0, c1), (t1: c0, c1), (t2: c2), (t3: c2)."""
    tr = _walk_trace(3, 2)
    perm, sm, end = order_trace(tr, slots=2, num_sms=2)
    assert tr.prog[perm].tolist() == [0, 1, 0, 1, 2, 2]
    assert tr.tick[perm].tolist() == [0, 0, 1, 1, 0, 1]
    assert sm.tolist() == [0, 1, 0, 1, 0, 0] and end == 4


@pytest.mark.parametrize("jitter,disorder", [(0.0, 0.0), (0.4, 0.0), (0.0, 1.5)])
def test_timeline_times_give_the_whole_trace_order(jitter, disorder):
    """Timeline.times of any subset orders it as order_trace orders the whole trace; tick_window holds every tick of
    a time window."""
    d = np.array([5, 3, 7, 2, 6, 4], np.int64)
    prog = np.repeat(np.arange(6), d)
    tick = np.concatenate([np.arange(k) for k in d])
    n = len(prog)
    tr = KernelTrace("k", 6, d, prog, tick, np.zeros(n, np.int16), np.zeros(n, bool), np.arange(n) * 128,
                     np.full(n, 128, np.int64))
    perm, _, end = order_trace(tr, slots=3, num_sms=3, jitter=jitter, disorder=disorder)
    tl = timeline(d, 3, jitter=jitter, disorder=disorder)
    t = tl.times(prog, tick)
    assert np.all(np.diff(t[perm]) >= 0) and tl.end == end
    assert np.all(t < tl.last_time()[prog])
    t0, t1 = float(np.quantile(t, 0.3)), float(np.quantile(t, 0.6))
    lo, hi = tl.tick_window(prog, t0, t1)
    inside = (t >= t0) & (t < t1)
    assert np.all((tick[inside] >= lo[inside]) & (tick[inside] < hi[inside]))


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
