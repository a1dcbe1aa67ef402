"""The causal diagonal band as a loop of its own (KernelConfig.band_loop), per-program work and the list-scheduled
tail of the cost model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim import cost
from iosim.counts import count
from iosim.hwprofile import load_hardware
from iosim.models.flash2 import MASK_FLOPS
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem
from iosim.schedule import Loop

H100 = load_hardware("h100")


def brute_blocks(nq, nkv, bm, bn):
    """Per query block: (#visited KV blocks, #visited blocks some row cannot fully see, their valid r×c areas)."""
    shift = nkv - nq
    out = []
    for i in range(-(-nq // bm)):
        r0, r1 = i * bm, min((i + 1) * bm, nq)
        visited = masked = 0
        area = 0
        for j in range(-(-nkv // bn)):
            c0, c1 = j * bn, min((j + 1) * bn, nkv)
            vis = np.arange(c0, c1)[None, :] <= (np.arange(r0, r1) + shift)[:, None]
            if not vis.any():
                continue
            visited += 1
            # the kernel masks every block that is not wholly visible or is the ragged last block
            if not vis.all() or (c1 - c0) < bn:
                masked += 1
                area += (r1 - r0) * (c1 - c0)
        out.append((visited, masked, area))
    return out


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 300), extra=st.integers(0, 200), bm=st.sampled_from([16, 32, 64, 128]),
       bn=st.sampled_from([16, 32, 64, 128]), desc=st.booleans())
def test_band_loop_splits_the_diagonal_blocks(nq, extra, bm, bn, desc):
    nkv = nq + extra
    p = Problem(1, 2, 2, nq, nkv, 32, "bf16", True)
    order = "descending" if desc else "ascending"
    one = build_schedule("flash2", p, KernelConfig(bm, bn, 4, 2, kv_order=order), None)
    two = build_schedule("flash2", p, KernelConfig(bm, bn, 4, 2, kv_order=order, band_loop=True), None)
    loops = [s for s in two.kernels[0].body if isinstance(s, Loop)]
    assert len(loops) == 2
    c1, c2 = count(one).kernels[0], count(two).kernels[0]
    # the same blocks are visited: bytes and MMA work unchanged
    assert (c1.sm_read_bytes, c1.sm_write_bytes, c1.matmul_flops, c1.exp_ops) == \
        (c2.sm_read_bytes, c2.sm_write_bytes, c2.matmul_flops, c2.exp_ops)
    bb = brute_blocks(nq, nkv, bm, bn)
    # only the band's elements pay the mask: MASK_FLOPS per element of every masked block, × 2 heads
    assert c2.other_flops - c1.other_flops == MASK_FLOPS * 2 * sum(a for _, _, a in bb)
    # per program, band loop trips = masked blocks, total trips = visited blocks (grid m fastest, 2 heads)
    steps = cost.program_steps(two.kernels[0])
    want = [v for v, _, _ in bb] * 2
    if len(set(want)) == 1:
        assert steps is None
    else:
        assert steps == want


def test_tail_efficiency_equal_and_unequal_work():
    assert cost.tail_efficiency(None, 264, 132) == 1.0
    assert cost.tail_efficiency(None, 133, 132) == pytest.approx((133 / 132) / 2)
    # 2 SMs, work 3, 3, 2, 2, 2 in launch order: SM0 3+2+2? greedy → SM0: 3, 2 (→5), SM1: 3, 2 (→5), then 2 → 7
    assert cost.tail_efficiency([3, 3, 2, 2, 2], 5, 2) == pytest.approx((12 / 2) / 7)
    # long work first balances: 4, 1, 1, 1, 1 on 2 SMs → SM0 4, SM1 1+1+1+1 = 4 → perfect
    assert cost.tail_efficiency([4, 1, 1, 1, 1], 5, 2) == pytest.approx(1.0)
    # the heaviest CTA last: 1, 1, 1, 1, 4 → SM0 1+1+4 = 6, SM1 2: (8/2)/6
    assert cost.tail_efficiency([1, 1, 1, 1, 4], 5, 2) == pytest.approx(4 / 6)


def test_causal_time_uses_the_list_scheduled_tail():
    p = Problem(1, 1, 1, 128 * 200, 128 * 200, 64, "bf16", True)
    cfg = KernelConfig(128, 128, 4, 2)
    t = cost.estimate_problem(H100, p, cfg).kernels[0]
    sched = build_schedule("flash2", p, cfg, H100)
    steps = cost.tile_steps(sched.kernels[0], count(sched).kernels[0])
    fixed = t.cta_overhead.total_s / (t.compute_s * 132 / steps)  # the prologue/epilogue in KV steps of one SM
    assert 0 < fixed < 50
    assert t.tail_efficiency == pytest.approx(cost.tail_efficiency([i + 1 + fixed for i in range(200)], 200, 132))
    # by hand, without the fixed part: CTAs 0..131 (trips 1..132) take one SM each; 132..199 (trips 133..200) go to
    # the least-loaded SMs 0..67, the busiest ends at 68 + 200 = 268; mean = Σ(1..200)/132 = 20100/132. The fixed
    # part, equal for every CTA, can only even the SMs out.
    assert cost.tail_efficiency(list(range(1, 201)), 200, 132) == pytest.approx(20100 / 132 / 268)
    assert 20100 / 132 / 268 < t.tail_efficiency < 1


def test_fill_rounds_first_round_in_full_later_ones_shared():
    assert cost.fill_rounds(0, 2) == 0.0
    assert cost.fill_rounds(1, 4) == 1.0
    assert cost.fill_rounds(5, 1) == 5.0  # one CTA per SM: nothing hides its prologue
    assert cost.fill_rounds(5, 4) == pytest.approx(1 + 4 * 0.5)  # 4 resident: 4^-½ of each later round
