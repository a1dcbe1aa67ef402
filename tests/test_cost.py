"""Cost model: every term reproduces its formula exactly; overlap, tail, occupancy and DRAM inputs behave as stated."""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

import pytest

from iosim import cost
from iosim.cost import LAUNCH_OVERHEAD_S, estimate, estimate_problem
from iosim.counts import count
from iosim.errors import IosimError
from iosim.hwprofile import Source, load_hardware
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem
from iosim.schedule import Compute, GridAxis, Kernel, Schedule, Span, Work, var

H100 = load_hardware("h100")


def _matmul_only(programs: int, flops_per_cta_dim: int = 1024) -> Schedule:
    """One kernel of ``programs`` CTAs, each doing 2·64·64·k matmul FLOPs and nothing else (no memory traffic)."""
    pid = var("pid")
    rows = Span(0, 64, 64)
    cols = Span(0, 64, 64)
    body = (Compute("mm", ("a", "b", "c"), matmul=(Work(2 * flops_per_cta_dim, (rows, cols)),)),)
    k = Kernel("mm", (GridAxis("m", pid, programs),), (), body, threads_per_cta=128)
    return Schedule("synthetic", Problem(1, 1, 1, 64, 64, 64, "bf16"), KernelConfig(64, 64, 4, 2), {}, (k,))


def test_compute_bound_time_is_flops_over_peak_times_efficiency():
    s = _matmul_only(2 * H100.sm_count)  # two CTAs per SM: no tail
    c = count(s)
    flops = 2 * 1024 * 64 * 64 * 2 * H100.sm_count
    assert c.matmul_flops == flops
    e = estimate(s, c, H100, path="wgmma")
    k = e.kernels[0]
    # tensor time = flops / (989.4 TFLOP/s datasheet × 0.708 wgmma efficiency fitted on the H100 sweep)
    assert k.tensor_s == flops / (989.4e12 * 0.708)
    assert k.tail_efficiency == 1.0 and k.sm_scale == 1.0
    assert k.bound == "tensor"
    # one round of resident CTAs (2 per SM fit); no loads, stores or softmax → an empty prologue/epilogue
    assert k.cta_overhead.total_s == 0.0 and k.fill_s == 0.0
    # one tile step per CTA (the compute is outside any loop), chains of 2 resident CTAs overlap
    assert k.step_s == 2 * H100.sm_count * cost.STEP_OVERHEAD_CYCLES / (H100.boost_clock_hz * H100.sm_count * 2)
    assert e.time_s == ((k.tensor_s + k.step_s) + k.fill_s) + LAUNCH_OVERHEAD_S
    assert e.achieved_flops_per_s == flops / e.time_s


@pytest.mark.parametrize("programs,bound,sms_busy", [
    (16, "parallelism", 16),     # 16 CTAs on 132 SMs: sm_scale = 132/16 = 8.25, the busy SMs at full rate
    (66, "parallelism", 66),     # half the SMs: sm_scale exactly 2
    (67, "tensor", 67),          # 132/67 = 1.97 < 2
    (132, "tensor", 132),        # one full wave
    (133, "tensor", 132),        # a second wave of one CTA: sm_scale 2/(133/132) = 1.985 < 2
    (2 * 132, "tensor", 132),    # two CTAs per SM
])
def test_parallelism_bound(programs, bound, sms_busy):
    # equal CTAs of 4 warps (warp issue 1): sm_scale = 1 / tail = ⌈P/S⌉ / (P/S). The kernel has only matmul work,
    # so the binding resource is the tensor cores whatever the grid; bound says parallelism from sm_scale ≥ 2.
    s = _matmul_only(programs, flops_per_cta_dim=2**16)  # 0.5 GFLOP per CTA: about 0.1 ms per wave, not launch-bound
    e = estimate(s, count(s), H100, path="wgmma")
    k, S = e.kernels[0], H100.sm_count
    assert k.sm_scale == pytest.approx(-(-programs // S) / (programs / S))
    assert (k.bound, k.resource, k.sms_busy) == (bound, "tensor", sms_busy)
    d = e.to_dict()
    assert (d["kernels"][0]["bound"], d["kernels"][0]["resource"], d["kernels"][0]["sms_busy"]) == (bound, "tensor", sms_busy)
    assert (d["bound"], d["resource"]) == (bound, "tensor")


def test_mma_sync_path_uses_its_own_efficiency():
    s = _matmul_only(H100.sm_count)
    c = count(s)
    e = estimate(s, c, H100, path="mma.sync")
    assert e.tensor_s == c.matmul_flops / (989.4e12 * cost.PATH_EFFICIENCY[("sm90", "mma.sync")].value)
    assert e.kernels[0].path == "mma.sync"
    with pytest.raises(IosimError, match="unknown instruction path"):
        estimate(s, c, H100, path="wmma")
    with pytest.raises(IosimError, match="not modeled"):
        estimate(s, c, load_hardware("a100"), path="wgmma")


def test_tail_one_cta_more_than_the_sms():
    s = _matmul_only(H100.sm_count + 1)
    k = estimate(s, count(s), H100).kernels[0]
    # 133 CTAs on 132 SMs: the busiest SM runs 2, average 133/132 → efficiency (133/132)/2
    assert k.tail_efficiency == pytest.approx((133 / 132) / 2)
    assert k.resource_times["tensor"] == pytest.approx(k.tensor_s / k.tail_efficiency)


def test_dram_bound_standard_attention():
    hw = H100
    e = estimate_problem(hw, Problem(1, 16, 16, 8192, 8192, 64, "bf16"), KernelConfig(), "standard")
    assert e.bound == "dram"
    for k in e.kernels:
        assert k.dram_s == (k.dram_read_bytes + k.dram_write_bytes) / (3.35e12 * cost.DRAM_EFFICIENCY.value)


def test_default_dram_bytes_are_compulsory():
    p = Problem(2, 4, 4, 1024, 1024, 64, "bf16")
    e = estimate_problem(H100, p, KernelConfig(), "flash2")
    qkv = 3 * 2 * 4 * 1024 * 64 * 2
    o = 2 * 4 * 1024 * 64 * 2
    lse = 2 * 4 * 1024 * 4
    assert e.dram_read_bytes == qkv and e.dram_write_bytes == o + lse
    assert e.dram_assumed


def test_dram_bytes_from_the_l2_model_override_and_split():
    p = Problem(1, 16, 16, 4096, 4096, 128, "bf16")
    s = build_schedule("flash2", p, KernelConfig(), H100)
    c = count(s)
    base = estimate(s, c, H100)
    big = estimate(s, c, H100, dram_read_bytes=10**12, dram_write_bytes=0)
    assert not big.dram_assumed and big.bound == "dram" and big.time_s > base.time_s
    assert big.dram_read_bytes == 10**12
    # multi-kernel: an int is split in proportion to compulsory traffic; a list/mapping is per kernel
    st = build_schedule("standard", p, KernelConfig(), H100)
    ct = count(st)
    e = estimate(st, ct, H100, dram_read_bytes=[1, 2, 3], dram_write_bytes={"standard_qk": 4, "standard_softmax": 5, "standard_pv": 6})
    assert [k.dram_read_bytes for k in e.kernels] == [1, 2, 3]
    assert [k.dram_write_bytes for k in e.kernels] == [4, 5, 6]
    e2 = estimate(st, ct, H100, dram_read_bytes=10**9, dram_write_bytes=10**9)
    assert e2.dram_read_bytes == 10**9 and e2.dram_write_bytes == 10**9
    with pytest.raises(IosimError, match="3 kernels"):
        estimate(st, ct, H100, dram_read_bytes=[1, 2], dram_write_bytes=[1, 2])
    with pytest.raises(IosimError, match="non-negative"):
        estimate(st, ct, H100, dram_read_bytes=-5, dram_write_bytes=0)
    with pytest.raises(IosimError, match="counts have"):
        estimate(st, c, H100)


def test_calibrated_tensor_rate_means_native_efficiency_one():
    src = dict(H100.sources)
    src["tensor_flops_per_s.bf16"] = Source("calibrated", "iosim calibrate on a test GPU")
    hw = dataclasses.replace(H100, tensor_flops_per_s=MappingProxyType({**H100.tensor_flops_per_s, "bf16": 800e12}),
                             sources=MappingProxyType(src))
    # a calibrated rate is a GEMM rate: path efficiency / GEMM fraction (0.807 measured on the H100)
    assert cost.path_efficiency(hw, "wgmma", "bf16").value == pytest.approx(0.708 / 0.807)
    assert cost.path_efficiency(hw, "mma.sync", "bf16").value == pytest.approx(0.406 / 0.807)
    s = _matmul_only(2 * 132)
    c = count(s)
    assert estimate(s, c, hw).tensor_s == c.matmul_flops / (800e12 * (0.708 / 0.807))


def test_tiny_problem_is_launch_bound_and_mma_sync_is_slower_than_wgmma():
    tiny = estimate_problem(H100, Problem(1, 1, 1, 64, 64, 64, "bf16"), KernelConfig(), "flash2")
    assert tiny.bound == "launch"
    p = Problem(4, 32, 32, 4096, 4096, 128, "bf16")
    w = estimate_problem(H100, p, KernelConfig(), "flash2", path="wgmma")
    m = estimate_problem(H100, p, KernelConfig(), "flash2", path="mma.sync")
    assert m.time_s > w.time_s
    assert set(w.to_dict()) >= {"time_s", "bound", "achieved_flops_per_s", "tensor_s", "dram_s", "kernels"}


@pytest.mark.parametrize("hw", ["h100", "a100", "b200", "h200", "ascend910b"])
def test_every_algorithm_has_a_finite_time(hw):
    from iosim.registry import algorithms
    h = load_hardware(hw)
    for name in algorithms():
        only = {"fa4": ("b200", "needs a Blackwell profile"), "fastattention_ascend": ("ascend910b", "use hardware ascend910b")}
        if name in only and hw != only[name][0]:  # chip-specific kernels refuse other chips by name
            with pytest.raises(IosimError, match=only[name][1]):
                estimate_problem(h, Problem(1, 4, 4, 2048, 2048, 64, "fp16"), KernelConfig(), name)
            continue
        if algorithms()[name].build.__module__.startswith("iosim.models.sparse."):
            continue  # the sparse family's shapes are method-specific (video frames, causal-only): tests/test_sparsity.py
        e = estimate_problem(h, Problem(1, 4, 4, 2048, 2048, 64, "fp16"), KernelConfig(), name)
        assert math.isfinite(e.time_s) and e.time_s > 0, name
        assert e.bound in cost.RESOURCES + ("launch", "parallelism") and e.resource in cost.RESOURCES


def test_prefetch_overlaps_one_stage_loads_like_a_pipeline():
    """FA2's CUDA kernel (num_stages = 1) prefetches K/V tile j+1 in-CTA: with prefetch the body is
    max(compute, memory), as for ≥ 2 stages; without it memory is added (÷ resident CTAs)."""
    p = Problem(4, 16, 16, 4096, 4096, 128, "bf16")
    s = build_schedule("flash2", p, KernelConfig(128, 64, 4, 1), H100)
    c = count(s)
    plain = estimate(s, c, H100, path="mma.sync").kernels[0]
    pre = estimate(s, c, H100, path="mma.sync", prefetch=True).kernels[0]
    mem = max(pre.smem_s * pre.sm_scale, pre.l2_s, pre.dram_s)
    assert pre.prefetch and not plain.prefetch
    assert pre.body_s == pytest.approx(max(pre.compute_s * pre.sm_scale, mem) + pre.fill_s)
    assert plain.body_s == pytest.approx(plain.compute_s * plain.sm_scale + mem / min(plain.ctas_per_sm, 64) + plain.fill_s)
    assert pre.time_s < plain.time_s
    # the fa2 preset carries the flag through predict
    from iosim.pipeline import predict
    from iosim.presets import PRESETS
    assert PRESETS["fa2"].prefetch and not PRESETS["iosim-triton"].prefetch
    t = predict(H100, p, KernelConfig(), kernel="fa2", l2=False).time.kernels[0]
    assert t.prefetch and t.body_s == pytest.approx(max(t.compute_s * t.sm_scale, max(t.smem_s * t.sm_scale, t.l2_s, t.dram_s)) + t.fill_s)


def test_cta_overhead_parts_follow_their_formulas():
    p = Problem(16, 16, 16, 1024, 1024, 128, "bf16")
    for stages in (2, 3):
        s = build_schedule("flash2", p, KernelConfig(128, 128, 8, stages), H100)
        c = count(s)
        k = estimate(s, c, H100, path="wgmma").kernels[0]
        o = k.cta_overhead
        bw = H100.l2_bandwidth_bytes_per_s / H100.sm_count / 1  # 1 resident CTA (d=128, 8 warps, 128×128)
        assert k.ctas_per_sm == 1
        q = kv = 128 * 128 * 2
        # fill: one global latency + Q + the first K and V tile (independent of num_stages)
        assert o.fill_s == pytest.approx(cost.GLOBAL_LATENCY_CYCLES / H100.boost_clock_hz + (q + 2 * kv) / bw)
        # epilogue: O tile (bf16) + LSE row (fp32)
        assert o.epilogue_s == pytest.approx((128 * 128 * 2 + 128 * 4) / bw, rel=0.05)
        steps = cost.tile_steps(s.kernels[0], c.kernels[0])
        comp = [k.tensor_s, k.sfu_s, k.fp32_s]
        assert o.drain_s == pytest.approx(cost.COMPUTE_OVERLAP["wgmma"] * (sum(comp) - max(comp)) * H100.sm_count / steps)
        rounds = math.ceil(math.ceil(k.programs / H100.sm_count) / k.ctas_per_sm)
        assert k.fill_s == pytest.approx(rounds * o.total_s)
        # small, a few µs per round on the H100
        assert 1e-6 < o.total_s < 10e-6


def test_second_resident_cta_hides_more_softmax():
    """Residency rule (FA3 §3.1 pingpong): with 2 resident CTAs the softmax is less exposed than with 1, and the
    predicted compute is below MMA + the one-CTA exposed softmax; warpgroups of one CTA count once."""
    comp = [1.0, 0.4, 0.2]
    ov = cost.COMPUTE_OVERLAP["wgmma"]
    one = cost.overlapped_compute(comp, ov, 1)
    two = cost.overlapped_compute(comp, ov, 2)
    assert one == pytest.approx(1.0 + (1 - ov) * 0.6)
    assert max(comp) < two < one
    assert two == pytest.approx(1.0 + (1 - ov) * 0.6 / 2 ** 0.5)
    assert cost.overlapped_compute(comp, ov, 4) == two  # STREAM_CAP: a third CTA finds no idle tensor time
    # the same 128×64×4 tile at d=128: 2 stages fit 2 CTAs/SM, 3 stages 1 CTA/SM (cost_validation_raw: 4.40 vs 5.01 ms)
    p = Problem(4, 16, 16, 8192, 8192, 128, "bf16")
    t2, t3 = (estimate_problem(H100, p, KernelConfig(128, 64, 4, s), path="wgmma").kernels[0] for s in (2, 3))
    assert (t2.ctas_per_sm, t3.ctas_per_sm) == (2, 1)
    serial = t2.tensor_s + (1 - ov) * (t2.sfu_s + t2.fp32_s)  # the old rule: exposure independent of residency
    assert t2.compute_s - t2.step_s < serial - 1e-9
    assert t2.compute_s - t2.step_s == pytest.approx(cost.overlapped_compute([t2.tensor_s, t2.sfu_s, t2.fp32_s], ov, 2))
    assert t2.time_s < 0.95 * t3.time_s
    # 8 warps (2 warpgroups) in one CTA: one stream, no extra overlap
    t8 = estimate_problem(H100, p, KernelConfig(128, 128, 8, 3), path="wgmma").kernels[0]
    assert t8.ctas_per_sm == 1
    assert t8.compute_s - t8.step_s == pytest.approx(t8.tensor_s + (1 - ov) * (t8.sfu_s + t8.fp32_s))


def test_bound_names_the_side_that_sets_the_time():
    """square_tiling on the A100 at 64K: its scores kernel moves more DRAM time than tensor time, yet its pipelined
    body is max(compute, memory) with compute (tensor + exposed softmax) the larger: the bound must be a compute
    resource, not DRAM (the largest raw time)."""
    hw = load_hardware("a100")
    s = build_schedule("square_tiling", Problem(1, 16, 16, 65536, 65536, 128, "bf16"), KernelConfig(), hw)
    t = estimate(s, count(s), hw)
    k = next(k for k in t.kernels if k.name == "square_tiling_scores")
    assert k.dram_s > k.tensor_s * k.sm_scale               # DRAM is the largest single resource ...
    assert k.compute_s * k.sm_scale > k.dram_s              # ... but compute sets the body
    assert k.resource == "tensor" and k.bound == "tensor"
    for k in t.kernels:  # every kernel: the named resource lies on the side that is longer
        compute, memory = k.compute_s * k.sm_scale, max(k.smem_s * k.sm_scale, k.l2_s, k.dram_s)
        assert k.resource in (("tensor", "sfu", "fp32") if compute >= memory else ("smem", "l2", "dram"))
