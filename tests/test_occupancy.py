"""iosim.occupancy: the CUDA occupancy rules against ncu's occupancy limits of the measured kernels, the register
estimate against Triton's compiled registers, the vendor/profile differences, and one answer for both callers."""

from __future__ import annotations

import pytest

from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.occupancy import occupancy, registers_per_thread
from iosim.pipeline import build_schedule, predict
from iosim.problem import KernelConfig, Problem
from iosim.schedule import Buffer, GridAxis, Kernel, var

H100 = load_hardware("h100")


def bare_kernel(threads: int, smem_bytes: int, reg_bytes: int = 0) -> Kernel:
    """A kernel with only the resources occupancy looks at: threads, one smem buffer, one register buffer."""
    bufs = (Buffer("smem", (smem_bytes,), 1),) + ((Buffer("acc", (reg_bytes // 4,), 4, space="reg"),) if reg_bytes else ())
    return Kernel("k", (GridAxis("x", var("x"), 1),), bufs, (), threads_per_cta=threads)


# ncu on the H100 (reports/validation/h100/l2_validation_raw/ncu_raw.csv and the other *_raw/ncu_raw.csv files), one
# row per distinct launch: block size, launch__registers_per_thread, launch__shared_mem_per_block_dynamic,
# launch__shared_mem_per_block_allocated, launch__shared_mem_config_size, and launch__occupancy_limit_{registers,
# shared_mem, warps, blocks}.
NCU = [
    ("FA2 d=64", 128, 255, 49_152, 50_176, 135_168, 2, 2, 16, 32),
    ("FA2 d=128", 128, 255, 65_536, 66_560, 135_168, 2, 2, 16, 32),
    ("flex 4 warps", 128, 241, 114_688, 115_712, 233_472, 2, 2, 16, 32),
    ("flex 4 warps", 128, 243, 114_688, 115_712, 233_472, 2, 2, 16, 32),
    ("flex 4 warps", 128, 255, 114_688, 115_712, 233_472, 2, 2, 16, 32),
    ("flex 8 warps", 256, 145, 131_072, 132_096, 233_472, 1, 1, 8, 32),
    ("flex 8 warps", 256, 161, 131_072, 132_096, 233_472, 1, 1, 8, 32),
    ("flex 8 warps", 256, 191, 131_072, 132_096, 233_472, 1, 1, 8, 32),
]


@pytest.mark.parametrize("name,threads,regs,dyn,allocated,config,lim_regs,lim_smem,lim_warps,lim_blocks", NCU)
def test_occupancy_matches_ncu_limits(name, threads, regs, dyn, allocated, config, lim_regs, lim_smem, lim_warps,
                                      lim_blocks):
    occ = occupancy(bare_kernel(threads, dyn), H100, 1, regs)
    limits = dict(occ.limits)
    assert occ.smem_allocated_bytes == allocated  # + the driver's 1 KiB (launch__shared_mem_per_block_driver)
    assert (limits["registers"], limits["threads"], limits["ctas"]) == (lim_regs, lim_warps, lim_blocks)
    # ncu's smem limit is within the carveout the driver chose (config); iosim uses the largest carveout, which the
    # driver picks whenever smem would otherwise limit more than the other resources
    assert H100.smem_per_sm_bytes // allocated >= lim_smem == config // allocated
    assert occ.ctas_per_sm == min(lim_regs, lim_smem, lim_warps, lim_blocks)
    assert occ.regs_source == "preset" and occ.regs_per_thread == regs


def test_registers_are_allocated_per_warp_in_groups_of_four_warps():
    # 2 warps × 200 registers: 6,400 per warp → ⌊65,536 / 6,400⌋ = 10 warps, 8 after the 4-warp granularity → 4 CTAs
    # (a plain 65,536 // (200 · 64) would say 5)
    assert dict(occupancy(bare_kernel(64, 1024), H100, 1, 200).limits)["registers"] == 4
    # 201 registers round up to 208 per thread (256 per warp): 4 warps × 6,656 → 9 warps → 8 → 2 CTAs of 4 warps
    assert dict(occupancy(bare_kernel(128, 1024), H100, 1, 201).limits)["registers"] == 2
    # 3 warps of 128 registers: 16 warps → 5 CTAs
    assert dict(occupancy(bare_kernel(96, 1024), H100, 1, 128).limits)["registers"] == 5


def test_shared_memory_rounding_pipeline_barriers_and_reserve():
    # 10,248 B → 10,368 (128-B units) + 1,024 reserve = 11,392
    assert occupancy(bare_kernel(128, 10_248), H100, 1, 64).smem_allocated_bytes == 11_392
    # iosim's Triton kernel, 64×64 tiles, 4 warps, 3 stages at d=64: Q 8 KiB + 3 × (K + V) 16 KiB = 57,344 B in the
    # schedule; Triton reports 58,368 (+1 KiB of barriers) and the driver adds 1 KiB: 233,472 // 59,392 = 3 CTAs/SM
    # (measured 3 in cost_validation_run3_raw/tiles.csv; 57,344 + 1,024 would give 4)
    s = build_schedule("flash2", Problem(1, 16, 16, 4096, 4096, 64, "bf16"), KernelConfig(64, 64, 4, 3), H100)
    occ = occupancy(s.kernels[0], H100, 3)
    assert (occ.smem_per_cta_bytes, occ.smem_allocated_bytes) == (57_344, 59_392)
    assert dict(occ.limits)["smem"] == 3
    # one stage: no barriers (Q 8 KiB + K, V 16 KiB = 24,576 + 1,024)
    assert occupancy(s.kernels[0], H100, 1).smem_allocated_bytes == 25_600


def test_v100_reserves_nothing_and_other_vendors_have_no_simt_limits():
    v100 = load_hardware("v100")  # per-block opt-in 96 KB = the SM's 96 KB: no system reserve on cc 7.0
    assert occupancy(bare_kernel(128, 49_152), v100, 1, 32).ctas_per_sm == 2
    asc = load_hardware("ascend910b")  # one block per AI core; no register file or thread limit
    occ = occupancy(bare_kernel(128, 65_536, reg_bytes=4 * 300 * 128), asc, 1)
    assert (occ.ctas_per_sm, occ.limiter) == (1, "ctas") and set(dict(occ.limits)) == {"ctas", "smem"}


def test_register_estimate_and_spills():
    s = build_schedule("flash2", Problem(1, 16, 16, 4096, 4096, 128, "bf16"), KernelConfig(128, 64, 4, 2), H100)
    k = s.kernels[0]
    # (S 128·64·4 + acc 128·128·4 + 3 stats 128·4) / 4 / 128 threads = 195 + 32 → 232 (a multiple of 8);
    # with the transient P tile (128·64·2 B / 4 / 128 = 32 more) 264 → capped at 255 for occupancy, no spill
    assert registers_per_thread(k, transient=False) == 232 and registers_per_thread(k) == 264
    occ = occupancy(k, H100, 2)
    assert occ.regs_per_thread == 255 and not occ.spills and occ.regs_source.startswith("estimated")
    # smem 98,304 + 1,024 barriers + 1,024 reserve → 2; registers 256 · 32 per warp → 8 warps → 2 CTAs of 4 warps
    assert occ.ctas_per_sm == 2
    # d=64, 128×64, 4 warps: S 64 + P 32 + O 64 + stats 3 + 32 = 195 → 200 registers → 2 CTAs/SM, as Triton's 187
    # measured registers give (cost_validation*_raw/tiles.csv)
    d64 = build_schedule("flash2", Problem(1, 16, 16, 4096, 4096, 64, "bf16"), KernelConfig(128, 64, 4, 3), H100)
    assert registers_per_thread(d64.kernels[0]) == 200 and occupancy(d64.kernels[0], H100, 3).ctas_per_sm == 2
    big = build_schedule("flash2", Problem(1, 16, 16, 4096, 4096, 128, "bf16"), KernelConfig(128, 128, 4, 2), H100)
    assert occupancy(big.kernels[0], H100, 2).spills  # 128 + 128 + 32 > 255: FA2 uses 128×64 at d=128


def test_errors_name_the_problem():
    with pytest.raises(IosimError, match="exceeds .* per block"):
        occupancy(bare_kernel(128, H100.smem_per_block_bytes + 1), H100)
    with pytest.raises(IosimError, match="256 registers per thread exceed"):
        occupancy(bare_kernel(128, 1024), H100, 1, 256)
    with pytest.raises(IosimError, match="no CTA fits"):
        occupancy(bare_kernel(4096, 1024), H100, 1, 32)


@pytest.mark.parametrize("kernel,config", [("fa2", KernelConfig()), (None, KernelConfig(64, 64, 4, 3))])
def test_time_model_and_l2_timeline_agree(kernel, config):
    p = Problem(1, 4, 4, 1024, 1024, 64, "bf16")
    pr = predict(H100, p, config, "flash2", kernel=kernel)
    t, l2 = pr.time.kernels[0], pr.l2.kernels[0].occupancy
    assert (t.ctas_per_sm, t.occupancy_limiter, t.registers_per_thread) == (l2.ctas_per_sm, l2.limiter,
                                                                               l2.regs_per_thread)
    assert l2.slots == l2.ctas_per_sm * H100.sm_count


def test_preset_registers_reach_the_time_model():
    from iosim.counts import count
    from iosim.cost import estimate
    s = build_schedule("flash2", Problem(1, 16, 16, 4096, 4096, 64, "bf16"), KernelConfig(64, 64, 4, 1), H100)
    est = estimate(s, count(s), H100, regs_per_thread=168)  # 168 · 128 threads: 12 warps → 3 CTAs by registers
    k = est.kernels[0]
    assert (k.registers_per_thread, k.ctas_per_sm, k.occupancy_limiter) == (168, 3, "registers")
