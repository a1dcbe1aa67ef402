"""cuDNN's tile order (issue 21): cudnn-frontend's LPT_L2 decode, the dynamic tile counter at the L2 timeline's
speeds, and the timeline consistency that the static round-robin / unit-speed assignment broke."""


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import iosim.models  # noqa: F401  (registers the families)
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.memory.scheduler import timeline
from iosim.memory.trace import kernel_durations
from iosim.models import flash2
from iosim.models.persistent import (dynamic_assign, item_ticks, l2_swizzle, lpt_l2_order, natural_order,
                                     static_order, timeline_speeds)
from iosim.occupancy import occupancy
from iosim.problem import KernelConfig, Problem
from iosim.registry import get


def decode_lpt_l2(linear, q_h, batch, q_tiles, heads_per_kv, seqlen_kv, kv_bytes_per_row, l2_bytes):
    """cudnn-frontend ``lpt_l2_tile_coords`` for one linear id, scalar, as written there (row, head, batch)."""
    n_kh = q_h // heads_per_kv
    num_groups = n_kh * batch
    per_group = max(seqlen_kv * kv_bytes_per_row, 1)
    active = min(max(l2_bytes // per_group, 1), num_groups)
    per_blk = active * q_tiles * heads_per_kv
    num_blocks = (num_groups + active - 1) // active
    blk, within = linear // per_blk, linear % per_blk
    eff = num_groups - blk * active if blk + 1 == num_blocks else active
    rank, in_rank = within // (eff * heads_per_kv), within % (eff * heads_per_kv)
    sub, grp = in_rank // eff, in_rank % eff + blk * active
    return q_tiles - 1 - rank, (grp % n_kh) * heads_per_kv + sub, grp // n_kh


shapes = st.tuples(st.integers(1, 7), st.integers(1, 4), st.sampled_from([1, 2, 3, 4]), st.integers(1, 3),
                   st.integers(1, 5000), st.integers(0, 12))


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_lpt_l2_order_is_the_cudnn_decode(s):
    M, Hkv, g, B, nkv, budget_groups = s
    H, row = Hkv * g, 256
    l2 = budget_groups * nkv * row + (nkv * row) // 3   # budgets between whole groups, and below one (→ 1 group)
    order = lpt_l2_order(M, H, Hkv, B, nkv, row, l2)
    assert sorted(order.tolist()) == list(range(M * H * B))           # each tile once
    for t in range(M * H * B):
        m, h, b = decode_lpt_l2(t, H, B, M, g, nkv, row, l2)
        assert order[t] == (b * H + h) * M + m
    if g == 1:   # MHA: the same order as FA3's L2 swizzle with a section of `active` heads (independent code)
        active = min(max(l2 // (nkv * row), 1), H * B)
        assert (order == l2_swizzle(M, H, B, active)).all()


def test_lpt_l2_order_by_hand():
    # 2 KV heads × 2 Q heads each, 3 query blocks, budget of one group: group 0 (heads 0, 1) first, rows 2, 1, 0
    # each over its two Q heads; then group 1 (heads 2, 3)
    order = lpt_l2_order(3, 4, 2, 1, 10, 8, 80)
    got = [(int(i // 3), int(i % 3)) for i in order]
    assert got == [(0, 2), (1, 2), (0, 1), (1, 1), (0, 0), (1, 0), (2, 2), (3, 2), (2, 1), (3, 1), (2, 0), (3, 0)]
    with pytest.raises(IosimError, match="multiple"):
        lpt_l2_order(3, 5, 2, 1, 10, 8, 80)


def test_natural_order_and_static_order():
    M, H, B = 3, 2, 2
    ids = natural_order(M, H, B)
    assert [(int(i // M) // H, int(i // M) % H, int(i % M)) for i in ids[:7]] == \
        [(0, 0, 0), (0, 0, 1), (0, 0, 2), (1, 0, 0), (1, 0, 1), (1, 0, 2), (0, 1, 0)]   # (b, h, m): m, then b
    w = static_order(ids, 5)
    assert w.item[1, :w.count[1]].tolist() == ids[1::5].tolist()


def brute_dynamic(order, cost, speed):
    busy = [0.0] * len(speed)
    out = [[] for _ in speed]
    for it in order:
        w = min(range(len(speed)), key=lambda i: (busy[i], i))
        out[w].append(it)
        busy[w] += cost[it] * speed[w]
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=40), st.integers(1, 6), st.integers(0, 10 ** 6))
def test_dynamic_assign_with_speeds_is_the_tile_counter(cost, W, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cost))
    speed = np.exp(0.2 * rng.standard_normal(W))
    work = dynamic_assign(order, cost, W, speed)
    want = brute_dynamic(order.tolist(), cost, speed.tolist())
    assert [work.item[w, :work.count[w]].tolist() for w in range(W)] == want
    # the counter hands items out in order: on the workers' own clocks they start in `order`
    start = {}
    for w in range(W):
        t = 0.0
        for it in want[w]:
            start[it] = t
            t += cost[it] * speed[w]
    s = [start[i] for i in order.tolist()]
    assert all(a <= b + 1e-9 for a, b in zip(s, s[1:]))
    with pytest.raises(IosimError, match="speed"):
        dynamic_assign(order, cost, W, np.ones(W + 1))


def item_starts(sched, hw, jitter):
    """Start time of every item on the L2 timeline ``simulate_schedule`` builds (item id → time)."""
    k = sched.kernels[0]
    dur = kernel_durations(sched, k)
    tl = timeline(dur, occupancy(k, hw, 2, None).slots, True, jitter)
    p, bm, bn = sched.problem, sched.config.block_m, sched.config.block_n
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    ticks = item_ticks([int(flash2.kv_stop(p, i, bm, bn, tn)) for i in range(tm)])
    t = sched.tables
    assert (dur == 1 + np.array([ticks[t["work_m"][w, :c]].sum() for w, c in enumerate(t["work_count"])])).all()
    start = {}
    for w, c in enumerate(t["work_count"]):
        tick = 0
        for j in range(c):
            m, h, b = (int(t[f"work_{x}"][w, j]) for x in "mhb")
            start[(b * p.heads + h) * tm + m] = tl.times(np.array([w]), np.array([tick]))[0]
            tick += int(ticks[m])
    return start, tl


@pytest.mark.parametrize("shape", [(1, 8, 8, 20000, 20000, 128), (2, 8, 2, 9000, 9000, 64)])
def test_cudnn_causal_tiles_start_in_order_on_the_l2_timeline(shape):
    """The per-item timeline gives every worker the same expected speed, so the tile counter's table is the
    unit-speed one, and on a lockstep timeline items start in LPT_L2 order."""
    hw = load_hardware("h100")
    p = Problem(*shape, "bf16", True)
    sched = get("cudnn_sm90").build(p, KernelConfig(), hw)
    assert np.array_equal(timeline_speeds(hw.sm_count, "ascending"), np.ones(hw.sm_count))
    lock = get("cudnn_sm90").build(p, KernelConfig(), hw, drift=0.0)
    for name in sched.tables:
        assert np.array_equal(sched.tables[name], lock.tables[name]), name
    tm = -(-p.seq_q // 128)
    order = lpt_l2_order(tm, p.heads, p.kv_heads, p.batch, p.seq_kv, 2 * p.head_dim * 2, active=1)
    s0 = np.array([item_starts(sched, hw, 0.0)[0][int(i)] for i in order])
    assert (np.diff(s0) >= 0).all()


def test_cudnn_noncausal_natural_order_in_order_on_the_timeline():
    hw = load_hardware("h100")
    p = Problem(2, 3, 3, 5000, 5000, 64, "bf16", False)   # 40 query blocks × 6 = 240 tiles over 132 CTAs
    sched = get("cudnn_sm90").build(p, KernelConfig(), hw)
    start, tl = item_starts(sched, hw, 0.0)
    s = np.array([start[int(i)] for i in natural_order(40, 3, 2)])
    assert (np.diff(s) >= -1e-9).all()
    lock = get("cudnn_sm90").build(p, KernelConfig(), hw, drift=0.0)   # at equal speeds: tile t to CTA t mod 132
    t = lock.tables
    for w in (0, 5, 107):
        got = [(int(t["work_b"][w, j]) * 3 + int(t["work_h"][w, j])) * 40 + int(t["work_m"][w, j])
               for j in range(t["work_count"][w])]
        assert got == natural_order(40, 3, 2)[w::132].tolist()
    with pytest.raises(IosimError, match="drift"):
        get("cudnn_sm90").build(p, KernelConfig(), None, drift=-1)


def test_lpt_l2_order_one_group_per_block_is_per_group_lpt():
    """active=1: every KV-head group's tiles together (the group's query heads interleaved per query block, longest
    first), groups in order (KV head fastest, then batch) — enumerated here by hand."""
    M, H, Hkv, B = 3, 4, 2, 2
    g = H // Hkv
    want = [(b * H + kvh * g + sub) * M + (M - 1 - r)
            for b in range(B) for kvh in range(Hkv) for r in range(M) for sub in range(g)]
    assert lpt_l2_order(M, H, Hkv, B, 10**6, 256, active=1).tolist() == want
    assert lpt_l2_order(M, H, Hkv, B, 10**6, 256, active=0).tolist() == want   # clamped to 1
