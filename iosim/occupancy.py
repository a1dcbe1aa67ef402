"""Resident CTAs per SM: the one occupancy rule of the CTA scheduler (L2 timeline) and the time model.

CUDA occupancy rules (CUDA C++ Programming Guide, "Compute Capabilities" table and the "Shared Memory" sections of
cc 8.x/9.0; the CUDA occupancy calculator's per-cc constants, also in cuda_occupancy.h), NVIDIA profiles:

=========  ==========================================================================================================
ctas       max_ctas_per_sm
threads    ⌊max_threads_per_sm / 32 / warps per CTA⌋, warps = ⌈threads / 32⌉
registers  ⌊W / warps per CTA⌋ with W = ⌊registers_per_sm / (⌈regs per thread · 32 / 256⌉ · 256)⌋ rounded down to a
           multiple of 4: registers go to a warp in units of 256 (= 8 per thread) and warps to the SM's four
           sub-partitions in groups of 4 (calculator: "register allocation unit size 256", "warp allocation
           granularity 4", cc 7.0–9.0)
smem       ⌊smem_per_sm / allocated⌋, allocated = ⌈(the schedule's smem + PIPELINE_SMEM_BYTES if num_stages ≥ 2) /
           128⌉ · 128 + the driver's reserve min(1 KiB, smem_per_sm − smem_per_block) (calculator: "shared memory
           allocation unit size 128", cc 8.x/9.0; guide: 1 KB per block reserved for system use on cc ≥ 8.0, none
           on V100, whose per-block opt-in equals the SM)
=========  ==========================================================================================================

Other vendors' profiles map one block per core (``max_ctas_per_sm``) and have no SIMT register or thread limits:
only ctas and smem (the schedule's bytes) apply.

Registers per thread: the kernel preset's when its source or a measurement gives them (FA2: 255, ncu on the H100),
else ``registers_per_thread``. Checked against ncu on the H100 (``tests/test_occupancy.py``): for the FA2 and
FlexAttention kernels of reports/validation/h100/l2_validation_raw/ncu_raw.csv, these rules applied to the measured
registers and shared memory give ncu's launch__occupancy_limit_{registers,warps,blocks}; on iosim's Triton kernel
(reports/validation/h100/cost_validation*_raw/tiles.csv, 321 distinct configurations with Triton's compiled
registers and shared memory, causal and not) the estimate gives the residency those measured values give in 302
(the L2 timeline's former estimate, +40 registers, no rounding, no pipeline barriers: 252).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from iosim.counts import sram_bytes
from iosim.errors import IosimError
from iosim.expr import evaluate
from iosim.hwprofile import Hardware
from iosim.schedule import Kernel

WARP_THREADS = 32
REG_ALLOC_UNIT = 256         # registers per warp are allocated in units of 256 (occupancy calculator, cc 7.0–9.0)
WARP_ALLOC_GRANULARITY = 4   # warps are allocated registers in groups of 4, one per sub-partition (calculator)
SMEM_ALLOC_UNIT = 128        # shared memory per CTA is allocated in units of 128 B (calculator, cc 8.x/9.0)
SMEM_RESERVED_PER_CTA = 1024
"""Shared memory the driver reserves per CTA on cc ≥ 8.0 (CUDA guide, cc 8.x/9.0: 1 KB per block for system use;
ncu launch__shared_mem_per_block_driver = 1,024 on the H100). Applied as min(1024, smem_per_sm − smem_per_block) so
profiles whose per-block opt-in equals the SM (V100: 96 KB) reserve 0."""

PIPELINE_SMEM_BYTES = 1024
"""Shared memory a software-pipelined CTA (num_stages ≥ 2) holds beyond its tiles: the pipeline's mbarriers and the
alignment of its TMA buffers. Measured on the H100: Triton reports the schedule's tile bytes + 1024 B for 14 of 16
pipelined configurations of iosim's kernel (+32 B for the other 2; cost_validation_run3_raw/tiles.csv, column
shared), which decides residency at the limit (64×64×4 warps, 3 stages at d=64: 58,368 B → 3 CTAs/SM, not 4)."""

REGISTER_OVERHEAD_PER_THREAD = 32
"""Registers per thread beyond the register-resident tiles (addresses, loop counters, softmax statistics,
fragments in flight): assumed 32, so FA2's 128×64 tile at d=128 with 4 warps needs 192 + 32 = 224 ≤ 255 and
128×128 needs 288 (spills), which matches FA2 choosing 128×64 for d=128 (flash_fwd_launch_template.h)."""

REGISTER_ALLOC_UNIT = 8
"""Registers are allocated per thread in multiples of 8 (= REG_ALLOC_UNIT / 32; occupancy calculator, cc ≥ 7.0)."""


@dataclass(frozen=True)
class Occupancy:
    ctas_per_sm: int
    limiter: str                # which limit set ctas_per_sm: ctas, registers, smem or threads
    regs_per_thread: int        # the preset's, or the estimate capped at max_registers_per_thread
    regs_source: str            # "preset" or "estimated from register buffers"
    spills: bool                # the estimate without transient tiles exceeds max_registers_per_thread
    smem_per_cta_bytes: int     # the schedule's shared memory (Σ smem buffers, pipelined ones × num_stages)
    smem_allocated_bytes: int   # what one CTA takes from the SM's shared memory (barriers, rounding, reserve)
    threads_per_cta: int
    slots: int                  # CTAs resident on the whole GPU at once: ctas_per_sm × sm_count
    limits: tuple[tuple[str, int], ...] = ()  # every limit that applies: (name, CTAs per SM), by name


def register_bytes(kernel: Kernel, transient: bool = True) -> int:
    """Bytes of the kernel's register-resident buffers (space='reg'); transient=False leaves out the transient ones."""
    return sum(int(evaluate(b.bytes, {})) for b in kernel.buffers
               if b.space == "reg" and (transient or not b.transient))


def registers_per_thread(kernel: Kernel, transient: bool = True) -> int:
    """Estimated registers per thread: register tiles spread over the CTA's threads + REGISTER_OVERHEAD_PER_THREAD,
    rounded up to REGISTER_ALLOC_UNIT. May exceed the hardware limit.

    With the transient P tile (``Buffer.transient``) this is the occupancy estimate: on the H100, Triton's compiled
    registers for iosim's kernel at d=64 (reports/validation/h100/cost_validation*_raw/tiles.csv, non-causal) are
    106 / 107 / 154 / 187 for 64×64×4 / 128×64×8 / 64×128×4 / 128×64×4 warps, estimated 120 / 120 / 168 / 200 with P
    (104 / 104 / 136 / 168 without: 128×64×4 then got 3 CTAs/SM instead of the measured 2). Without it
    (transient=False) it is the spill test: 128×128×4 at d=64 compiles to 249 registers without spills although S,
    P and O add up to 288."""
    regs = math.ceil(register_bytes(kernel, transient) / 4 / kernel.threads_per_cta) + REGISTER_OVERHEAD_PER_THREAD
    return -(-regs // REGISTER_ALLOC_UNIT) * REGISTER_ALLOC_UNIT


def smem_allocated_bytes(smem_bytes: int, hw: Hardware, pipelined: bool) -> int:
    """Shared memory one CTA takes from its SM (see the module docstring); other vendors: the schedule's bytes."""
    if hw.vendor != "nvidia":
        return smem_bytes
    extra = PIPELINE_SMEM_BYTES if pipelined else 0
    reserve = min(SMEM_RESERVED_PER_CTA, hw.smem_per_sm_bytes - hw.smem_per_block_bytes)
    return -(-(smem_bytes + extra) // SMEM_ALLOC_UNIT) * SMEM_ALLOC_UNIT + reserve


def occupancy(kernel: Kernel, hw: Hardware, num_stages: int = 1, regs_per_thread: int | None = None) -> Occupancy:
    """Resident CTAs per SM of ``kernel`` launched with ``num_stages`` pipeline stages on ``hw`` (module docstring).

    regs_per_thread: the kernel preset's register count (None: estimated, ``registers_per_thread``); a kernel's own
    measured ``Kernel.regs_per_thread`` / ``Kernel.smem_bytes`` take precedence (a preset's count is its main kernel's).
    Raises IosimError when the CTA's shared memory exceeds the per-block maximum or one CTA fits on no SM."""
    threads = int(kernel.threads_per_cta)
    smem = sram_bytes(kernel, num_stages) if kernel.smem_bytes is None else int(kernel.smem_bytes)
    if smem > hw.smem_per_block_bytes:
        raise IosimError(f"{kernel.name}: {smem:,} B of shared memory per CTA exceeds {hw.name}'s "
                         f"{hw.smem_per_block_bytes:,} B per block; use smaller tiles or fewer stages")
    nvidia = hw.vendor == "nvidia"
    spills = False
    if kernel.regs_per_thread is not None:
        regs_per_thread, source = kernel.regs_per_thread, "measured (kernel)"
    else:
        source = "preset"
    if regs_per_thread is not None:
        regs = int(regs_per_thread)
        if hw.max_registers_per_thread and regs > hw.max_registers_per_thread:
            raise IosimError(f"{kernel.name}: the preset's {regs} registers per thread exceed {hw.name}'s "
                             f"{hw.max_registers_per_thread}")
    else:
        regs, source = registers_per_thread(kernel), "estimated from register buffers"
        if hw.max_registers_per_thread and regs > hw.max_registers_per_thread:
            spills = registers_per_thread(kernel, transient=False) > hw.max_registers_per_thread
            regs = hw.max_registers_per_thread
    alloc = smem_allocated_bytes(smem, hw, num_stages >= 2 and kernel.smem_bytes is None)  # measured smem holds its barriers
    limits = {"ctas": hw.max_ctas_per_sm}
    if alloc > 0:
        limits["smem"] = hw.smem_per_sm_bytes // alloc
    if nvidia:
        warps = -(-threads // WARP_THREADS) if threads > 0 else 0
        per_warp = -(-regs * WARP_THREADS // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
        sm_warps = hw.registers_per_sm // per_warp // WARP_ALLOC_GRANULARITY * WARP_ALLOC_GRANULARITY
        limits["threads"] = hw.max_threads_per_sm // WARP_THREADS // warps if warps else 0
        limits["registers"] = sm_warps // warps if warps else 0
    limiter = min(limits, key=lambda k: (limits[k], k))
    n = int(limits[limiter])
    if n < 1:
        raise IosimError(f"{kernel.name}: no CTA fits on one {hw.name} SM (limited by {limiter}: smem "
                         f"{alloc:,} B, {regs} registers × {threads} threads); use smaller tiles or fewer warps")
    return Occupancy(n, limiter, regs, source, spills, smem, alloc, threads, n * hw.sm_count,
                     tuple(sorted((k, int(v)) for k, v in limits.items())))
