"""Drift of persistent kernels decided per work item (issue 21; iosim.memory.scheduler ``work_items``, ``ItemClock``,
``timeline(items=...)``): identical items run in lockstep whatever each worker's number of items; otherwise every item
has its own speed, so a worker's lag is a random walk over its items, not one speed times the whole kernel."""

import dataclasses

import numpy as np
from hypothesis import given, settings, strategies as st

from iosim.memory.hierarchy import build_trace, simulate_schedule
from iosim.memory.scheduler import WorkItems, cta_speeds, order_trace, timeline, work_items
from iosim.memory.trace import KernelTrace, kernel_durations
from iosim.hwprofile import load_hardware
from iosim.models import flash2
from iosim.problem import KernelConfig, Problem
from iosim.triton_kernels.schedule import kernel_schedule, launch_config, persistent_items


def naive_times(duration, items, speed):
    """Per program, the time of every tick walked one by one: an item's ticks at its own speed, others at 1."""
    out = []
    for p, d in enumerate(duration):
        per = np.ones(d)
        for i in np.flatnonzero(items.owner == p):
            per[items.tick0[i]:items.tick0[i] + items.ticks[i]] = speed[i]
        out.append(np.concatenate([[0.0], np.cumsum(per)]))
    return out


worker_items = st.lists(st.lists(st.integers(1, 6), max_size=5), min_size=1, max_size=7)


@settings(max_examples=60, deadline=None)
@given(worker_items, st.integers(1, 4), st.sampled_from([0.03, 0.15, 0.4]))
def test_item_clock_is_the_tick_by_tick_walk(lens, slots, jitter):
    # worker w: items of lens[w] ticks back to back from tick 0, then one closing tick (worker_kernel's shape)
    dur = np.array([sum(x) + 1 for x in lens], np.int64)
    own = np.array([w for w, x in enumerate(lens) for _ in x], np.int64)
    t0 = np.array([sum(x[:k]) for x in lens for k in range(len(x))], np.int64)
    items = WorkItems(own, t0, np.array([v for x in lens for v in x], np.int64))
    tl = timeline(dur, slots, False, jitter, 0.0, items)
    prog = np.repeat(np.arange(len(dur)), dur)
    tick = np.concatenate([np.arange(d) for d in dur])
    t = tl.times(prog, tick)
    if len(items.ticks) and len(set(items.ticks.tolist())) > 1:
        walk = naive_times(dur, items, cta_speeds(len(items.ticks), jitter))
        assert tl.clock is not None
        assert np.allclose(t - tl.start[prog], np.concatenate([w[:-1] for w in walk]))
        assert np.allclose(tl.last_time() - tl.start, [w[-1] for w in walk])
    else:   # identical items (or none): lockstep, one tick per time unit
        assert tl.clock is None and tl.speed is None
        assert (t == tl.start[prog] + tick).all()
    # order_trace sorts the whole trace by these times; tick_window holds every tick of a window
    n = len(prog)
    tr = KernelTrace("k", len(dur), dur, prog, tick, np.zeros(n, np.int16), np.zeros(n, bool), np.arange(n) * 128,
                     np.full(n, 128, np.int64))
    perm, _, end = order_trace(tr, slots, slots, False, jitter, 0.0, items)
    assert np.all(np.diff(t[perm]) >= 0) and np.isclose(float(end), float(tl.end))
    assert np.all(t < tl.last_time()[prog] + 1e-9)
    a, b = float(np.quantile(t, 0.3)), float(np.quantile(t, 0.7))
    if tl.clock is None:   # lockstep: integer times, the streamed model asks integer windows
        a, b = int(np.floor(a)), int(np.ceil(b)) + 1
    lo, hi = tl.tick_window(prog, a, b)
    inside = (t >= a) & (t < b)
    assert np.all((tick[inside] >= lo[inside]) & (tick[inside] < hi[inside]))


def test_without_items_the_timeline_is_the_per_program_one():
    d = np.array([5, 3, 7, 2, 6, 4], np.int64)
    for jitter in (0.0, 0.15):
        a, b = timeline(d, 3, False, jitter), timeline(d, 3, False, jitter, 0.0, None)
        assert (a.start == b.start).all() and a.end == b.end and b.clock is None
        if jitter:
            assert np.allclose(a.speed, cta_speeds(6, jitter))


def test_lag_is_a_random_walk_not_a_whole_kernel_drift():
    # 132 workers × 31 items of 10 or 11 ticks: one speed per worker puts the slowest worker ≈ σ·z_max·31 items
    # behind; per-item speeds ≈ σ·z·√31 (expected spread of the ends: σ·√K·L against σ·K·L)
    W, K, sigma = 132, 31, 0.03
    lens = 10 + (np.arange(W * K) % 2)
    own = np.repeat(np.arange(W), K)
    t0 = (np.cumsum(lens) - lens) - np.repeat((np.cumsum(lens) - lens)[::K], K)
    items = WorkItems(own, t0, lens)
    dur = np.bincount(own, weights=lens).astype(np.int64) + 1
    per_item = timeline(dur, W, False, sigma, 0.0, items)
    per_worker = timeline(dur, W, False, sigma)
    ends_i, ends_w = per_item.last_time(), per_worker.last_time()
    L = 10.5
    assert np.std(ends_w) > 0.8 * sigma * K * L                   # σ·K·L ≈ 9.8 ticks
    assert np.std(ends_i) < 1.5 * sigma * np.sqrt(K) * L          # σ·√K·L ≈ 1.75 ticks
    assert np.std(ends_i) < np.std(ends_w) / 3


def test_work_items_of_the_triton_persistent_forward():
    # items and their ticks, computed here from the kernel's decode (persistent_items) and flash2's causal stop
    hw = load_hardware("h100")
    for causal, order in ((True, "lpt"), (True, "rr"), (False, "rr")):
        p = Problem(1, 3, 3, 1000, 1000, 64, "bf16", causal)
        kc = launch_config(p.head_dim, p.causal)
        W = 7
        s = kernel_schedule(p, kc, persistent=True, num_workers=W, order=order)
        k = s.kernels[0]
        it = work_items(s, k)
        i, _, _ = persistent_items(p, kc.block_m, order)
        tn = -(-p.seq_kv // kc.block_n)
        ticks = np.array([int(flash2.kv_stop(p, int(m), kc.block_m, kc.block_n, tn)) for m in i]) + 1
        U = len(i)
        want_own = np.arange(U) % W
        o = np.argsort(want_own, kind="stable")
        assert (it.owner == want_own[o]).all() and (it.ticks == ticks[o]).all()
        dur = kernel_durations(s, k)
        assert (np.bincount(it.owner, weights=it.ticks, minlength=W) + 1 == dur).all()
        ends = it.tick0 + it.ticks
        assert (it.tick0[1:][it.owner[1:] == it.owner[:-1]] == ends[:-1][it.owner[1:] == it.owner[:-1]]).all()
        # non-causal: identical items → lockstep although the workers' totals differ (100 items over 7 workers)
        tl = timeline(dur, W, False, 0.03, 0.0, it)
        assert (tl.clock is None) == (not causal)
        assert len(set(dur.tolist())) > 1
        # a non-persistent grid has no items
        flat = kernel_schedule(p, kc)
        assert work_items(flat, flat.kernels[0]) is None
        if causal and order == "lpt":
            # the streamed L2 model and the whole-trace reference agree on the per-item timeline (of the kernel as
            # a dynamic scheduler would run it: static_items takes the coupled timeline, test_coupled_timeline.py)
            s = dataclasses.replace(s, kernels=(dataclasses.replace(k, static_items=False),))
            res = simulate_schedule(s, hw, None, stride=1, chunk_ranges=500, jitter=0.03)
            _, info = build_trace(s, hw, jitter=0.03)
            assert info[0][2] == res.kernels[0].ticks == tl.end
