"""Warp-specialized kernels in the cost model (iosim.cost_ws): FA4's forward roofline per tile, pingpong vs the
intra-warpgroup pipeline, producer/consumer memory overlap, exp emulation and conditional rescaling.
Expected values are derived here from the papers' formulas and the profiles' numbers, not from the code."""

from dataclasses import replace

import pytest

from iosim import cost, cost_ws
from iosim.counts import count
from iosim.hwprofile import load_hardware
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem

B200 = load_hardware("b200")
H100 = load_hardware("h100")


def _fwd(hw, *, d=128, bm=128, bn=128, stages=2, n=4096, causal=False, pipeline=None, cluster=1):
    p = Problem(batch=2, heads=8, kv_heads=8, seq_q=n, seq_kv=n, head_dim=d, causal=causal)
    s = build_schedule("flash2", p, KernelConfig(block_m=bm, block_n=bn, num_warps=4, num_stages=stages), hw)
    k = replace(s.kernels[0], pipeline=pipeline, cluster=cluster)
    s = replace(s, kernels=(k,))
    return s, k, count(s).kernels[0]


def test_fa4_forward_roofline_per_tile_b200():
    # FA4 (arXiv 2603.05451) §3.1.1, tile M×N, head dim d, bf16, B200: T_MMA = 4MNd/8192, T_smem = 3MNd/8192,
    # T_exp = MN/16 cycles; at M = N = d = 128: 1024, 768, 1024.
    M = N = d = 128
    _, k, _ = _fwd(B200, d=d, bm=M, bn=N)
    c = cost_ws.tile_cycles(k, B200, "tcgen05")
    assert c["tensor"] == 4 * M * N * d / 8192 == 1024
    assert c["smem"] == 3 * M * N * d / 8192 == 768          # Q, K, V operand reads once per tile
    # the schedule also counts the M per-row exps of the rescale factor, which the paper's roofline leaves out
    assert c["sfu"] - M / 16 == M * N / 16 == 1024
    # 2-CTA (FA4 §2.2): a pair (one program of 2·128 rows over 2 SMs) runs M = 256 MMAs whose B operand is split
    # between the two CTAs' smem: per SM, Q half (128·d·2 B) + half of K and of V
    _, k2, _ = _fwd(B200, d=d, bm=2 * M, bn=N, pipeline="ws-2cta", cluster=2)
    c2 = cost_ws.tile_cycles(k2, B200, "tcgen05")
    assert c2["smem"] == (M * d * 2 + (N * d * 2 + N * d * 2) / 2) / 128 == 512
    assert c2["tensor"] == c["tensor"] and c2["sfu"] == c["sfu"]
    # a cluster that only multicasts loads (FA3's ClusterM = 2, pipeline "ws") reads all of B in every CTA
    assert cost_ws.tile_cycles(replace(k, pipeline="ws", cluster=2), B200, "tcgen05")["smem"] == 768


def test_b200_profile_has_smem_bandwidth_and_mufu():
    assert B200.smem_bandwidth_bytes_per_clock_per_sm == 128   # FA4 §2.2
    assert B200.sfu_ops_per_clock_per_sm == 16 == H100.sfu_ops_per_clock_per_sm


@pytest.mark.parametrize("t,e,f", [(1.0, 0.3, 0.2), (1.0, 0.6, 0.5), (0.4, 1.0, 0.3), (1.0, 1.0, 0.6),
                                   (0.2, 0.1, 1.0), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0)])
def test_pingpong_never_slower_and_max_when_one_dominates(t, e, f):
    pp = cost_ws.ws_compute(t, e, f, "ws-pingpong")
    ws = cost_ws.ws_compute(t, e, f, "ws")
    assert pp <= ws + 1e-15
    assert ws == pytest.approx(t / 2 + max(t / 2, e + f))          # FA3 §3.2: softmax(j+1) under PV(j)
    assert pp >= max(t, e, f) - 1e-15                                # each pipe busy at most its own time
    if t >= e + f:
        assert pp == t                                               # the tensor core dominates
    if e >= t + f:
        assert pp == e                                               # MUFU dominates
    assert cost_ws.ws_compute(t, e, f, "ws-2cta") == pp


def test_pingpong_kernel_time_not_above_ws():
    for hw, path in ((H100, "wgmma"), (B200, "tcgen05")):
        for d, bn in ((64, 128), (128, 128), (128, 64)):
            times = {}
            for pl in ("ws", "ws-pingpong"):
                s, k, kc = _fwd(hw, d=d, bn=bn, pipeline=pl)
                times[pl] = cost.estimate_kernel(s, k, kc, hw, path=path).time_s
            assert times["ws-pingpong"] <= times["ws"]


def test_producer_consumer_overlaps_memory_fully():
    # one smem stage, DRAM-bound: without warp specialization the CTA waits for its loads (body = compute + DRAM / r,
    # floored at the DRAM time: resident CTAs hide waiting, not bytes — issue 21, tests/test_cost_floor.py);
    # with a producer warp (FA3 §3.1) the loads overlap: body − fill = DRAM time = bytes / (HBM × 0.896 measured).
    s, k, kc = _fwd(H100, stages=1, pipeline="ws")
    big = 50 * 10**9
    ws = cost.estimate_kernel(s, k, kc, H100, path="wgmma", dram_read_bytes=big, dram_write_bytes=0)
    dram_s = big / (3.35e12 * 0.896)
    assert ws.body_s - ws.fill_s == pytest.approx(dram_s, rel=1e-3)
    s0, k0, _ = _fwd(H100, stages=1, pipeline=None)
    plain = cost.estimate_kernel(s0, k0, kc, H100, path="wgmma", dram_read_bytes=big, dram_write_bytes=0)
    r = plain.ctas_per_sm                                   # 2 resident CTAs hide each other's loads only
    assert r == 2
    assert plain.compute_s * plain.sm_scale + dram_s / r < dram_s  # so the floor binds here
    assert plain.body_s - plain.fill_s == pytest.approx(max(plain.compute_s * plain.sm_scale + dram_s / r, dram_s),
                                                        rel=1e-3)
    # DRAM time equal to the ws compute time: the producer hides it all, max(compute, DRAM) = compute
    rate = 3.35e12 * 0.896
    eq = cost.estimate_kernel(s, k, kc, H100, path="wgmma", dram_read_bytes=int(ws.compute_s * ws.sm_scale * rate),
                              dram_write_bytes=0)
    assert eq.body_s - eq.fill_s == pytest.approx(ws.compute_s * ws.sm_scale, rel=1e-6)


def test_fa4_emulated_fraction_from_code():
    # FA4 apply_exp2_convert, N = 128 columns per row: 4 fragments of 32; fragments 1 and 2 (start 1, not the
    # last) emulate pairs k with k % freq >= freq - 4. freq 10: k in {6, 8, 16, 18, 26, 28} = 12 of 32 elements.
    assert cost_ws.ex2_emulated_fraction(10, 128, start_frg=1) == 2 * 12 / 128
    # freq 16: k in {12, 14, 28, 30} = 8 of 32
    assert cost_ws.ex2_emulated_fraction(16, 128, start_frg=1) == 2 * 8 / 128
    assert cost_ws.ex2_emulated_fraction(0, 128) == 0.0
    assert 0.10 <= 2 * 12 / 128 <= 0.25                    # FA4 §3.1.1: 10–25% of entries


def test_emulation_and_conditional_rescaling_move_work():
    d, bm, bn = 128, 128, 128
    s, k, kc = _fwd(B200, d=d, bm=bm, bn=bn, pipeline="ws-pingpong")
    none = cost.estimate_kernel(s, k, kc, B200, path="tcgen05", softmax=cost_ws.NO_TRICKS)
    f = 0.25
    emu = cost.estimate_kernel(s, k, kc, B200, path="tcgen05", softmax=cost_ws.SoftmaxTricks(f))
    fp32_rate = B200.fp32_flops_per_s / 2
    assert emu.sfu_s == pytest.approx(none.sfu_s * (1 - f), rel=1e-12)
    # 7 fp32 instructions per emulated exp (clamp, add.rm, 2 subtracts, 3 FMAs; FA4 ex2_emulation_2)
    assert emu.fp32_s - none.fp32_s == pytest.approx(f * kc.exp_ops * 7 / fp32_rate, rel=1e-9)
    # conditional rescaling: O·α (d multiplies per row and step) runs in 10% of the steps
    cond = cost.estimate_kernel(s, k, kc, B200, path="tcgen05", softmax=cost_ws.SoftmaxTricks(0.0, 8.0, 0.1))
    steps = kc.matmul_flops / (4 * bm * bn * d)
    assert cond.sfu_s == none.sfu_s
    assert none.fp32_s - cond.fp32_s == pytest.approx(0.9 * steps * bm * d / fp32_rate, rel=1e-9)


def test_fa4_tricks_default_only_for_ws_tcgen05_forward():
    s, k, kc = _fwd(B200, pipeline="ws-2cta", cluster=2)
    p = s.problem
    t = cost_ws.default_tricks(k, p, "tcgen05")
    assert t.exp_emulation_fraction == 2 * 12 / 128 and t.rescale_threshold_log2 == 8.0   # (2-CTA, non-causal, 128)
    assert cost_ws.default_tricks(replace(k, pipeline=None), p, "tcgen05") == cost_ws.NO_TRICKS
    assert cost_ws.default_tricks(k, p, "wgmma") == cost_ws.NO_TRICKS
    plain = cost.estimate_kernel(s, replace(k, pipeline=None), kc, B200, path="tcgen05")
    assert plain.sfu_s == kc.exp_ops / (16 * B200.sm_count * B200.boost_clock_hz)     # no emulation without ws


def test_unknown_pipeline_is_refused():
    from iosim.errors import IosimError
    s, k, kc = _fwd(H100, pipeline="bogus")
    with pytest.raises(IosimError, match="pipeline"):
        cost.estimate_kernel(s, k, kc, H100)


def test_tensor_memory_buffers_take_no_registers_nor_smem_reads():
    # FA4 (§2.2): S, P and O live in tensor memory (256 KB/SM), not in registers. A buffer with space "tmem" counts
    # neither as registers (iosim.occupancy counts space "reg") nor as an smem operand (the rule counts "smem").
    from iosim.occupancy import registers_per_thread
    _, k, _ = _fwd(B200, d=128, bm=128, bn=128, pipeline="ws")
    tm = replace(k, buffers=tuple(replace(b, space="tmem") if b.name in ("s", "p", "acc") else b for b in k.buffers))
    # left in registers: m, l, lse (3 × 128 fp32 rows) over 128 threads + 32 overhead, rounded up to 8
    assert registers_per_thread(tm) == -(-(-(-3 * 128 * 4 // (4 * 128)) + 32) // 8) * 8 == 40
    assert cost_ws.tile_cycles(tm, B200, "tcgen05")["smem"] == cost_ws.tile_cycles(k, B200, "tcgen05")["smem"] == 768
