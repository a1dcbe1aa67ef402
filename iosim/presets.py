"""Kernel presets: the launch choices of real kernels, read from their source, as (algorithm, KernelConfig, extras).

``fa2`` — FlashAttention-2 forward as bundled in PyTorch's SDPA flash backend (Dao-AILab/flash-attention
  ``csrc/flash_attn/src/flash_fwd_launch_template.h``, ``run_mha_fwd_hdim*``; PyTorch copy under
  ``aten/src/ATen/native/transformers/cuda/flash_attn/``):
  * tiles (kBlockM, kBlockN, warps) per head dim, no dropout, non-sm86/89 path: d≤32 (128,128,4); d≤64 (128,128,4);
    d≤96 (128,64,4); d≤128 (128,64,4); d≤192 (128,64,8); d≤256 (128,64,8) if the GPU has ≥ 2·d·(128+2·64) B of
    shared memory per block and less than 4·d·(64+2·64) B per SM (A100), else (64,64,4) (H100: "for H100 we want
    64 x 64 (96KB smem) since then we can get 2 CTAs per SM").
  * one shared-memory stage: Q tile + K tile + V tile (kernel_traits.h: kSmemSize = (kBlockM + 2·kBlockN)·d·2 B
    when Q is not shared with K); measured on the H100: 48 KiB for d=64, 64 KiB for d=128.
  * grid (ceil(Nq/kBlockM), B, H) with the query block as blockIdx.x (``run_flash_fwd``: dim3 grid(num_m_block,
    params.b, params.h)); not persistent.
  * the KV loop walks n_block from n_block_max − 1 down to n_block_min (``flash_fwd_kernel.h``,
    ``compute_attn_1rowblock``): descending.
  * in-CTA prefetch (``prefetch=True``): with its single buffer per tensor the kernel still issues the cp.async of
    K tile j+1 before the softmax/PV of tile j and the V load under QKᵀ (``flash_fwd_kernel.h``,
    ``compute_attn_1rowblock``), so the cost model overlaps its loads with compute as for a ≥ 2-stage pipeline.
  * 255 registers per thread, 128 threads (ncu on the validation H100, ../shared/devices.md) → 2 CTAs per SM.
  Not modeled: the split-KV path PyTorch takes for few query blocks (decode), dropout.
``triton-tutorial`` — Triton's fused-attention tutorial (triton-lang/triton ``python/tutorials/06-fused-attention.py``,
  Triton 3.x): grid (ceil(N/BLOCK_M), Z·H) with off_hz = z·H + h, so query block fastest, then head, then batch;
  the KV loop ascends (off-band blocks [0, start_m·BLOCK_M), then the diagonal band when causal). Its autotuner picks
  BLOCK_M ∈ {64,128}, BLOCK_N ∈ {32,64,128}; the preset uses the configuration the tutorial pins under pytest
  (BLOCK_M 128, BLOCK_N 64, 4 warps, 2 stages). Registers estimated.
``iosim-triton`` — our own Triton kernel (``iosim.triton_kernels``): what ``attention(q, k, v, causal)`` launches
  with no config, decided by the same code the kernel runs (``iosim.triton_kernels.schedule``: ``default_config``
  tiles/warps/stages per (head_dim, causal) — 128×128, 4 warps (d=64) or 8 warps (d=128), 3 stages —, grid
  (⌈Nq/BLOCK_M⌉, B, H) with the query block fastest, KV and query blocks ascending). Its schedule is
  ``models/flash2.py`` with that config (= ``kernel_schedule``). Split-KV decode shapes (G·Nq ≤ 64, Nkv ≥ 256)
  and head dims the kernel refuses raise IosimError. Instruction path: the chip's native one, which is what Triton
  emits for these tiles (wgmma on sm90 with TMA descriptors or pointer loads alike; ``schedule.instruction_path``).
  Registers estimated (no measured count in reports/validation/h100).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem


@dataclass(frozen=True)
class KernelPreset:
    name: str
    algorithm: str
    summary: str
    config: Callable[[Problem, object, KernelConfig], KernelConfig]
    regs_per_thread: int | None = None   # None: estimated (iosim.scheduler.estimate_registers)
    persistent: bool = False
    instruction_path: str | None = None  # tensor-core path for the cost model (None = the chip's native one)
    prefetch: bool = False  # loads overlap compute inside the CTA although num_stages = 1 (cost.estimate's prefetch)


def fa2_tiles(head_dim: int, hw=None) -> tuple[int, int, int]:
    """(block_m, block_n, num_warps) FA2's forward launcher picks for ``head_dim`` (no dropout, sm80/sm90 path)."""
    if head_dim <= 32:
        return 128, 128, 4
    if head_dim <= 64:
        return 128, 128, 4
    if head_dim <= 96:
        return 128, 64, 4
    if head_dim <= 128:
        return 128, 64, 4
    if head_dim <= 192:
        return 128, 64, 8
    if head_dim <= 256:
        d = 256
        if hw is not None and hw.smem_per_block_bytes >= 2 * d * (128 + 2 * 64) and hw.smem_per_sm_bytes < 4 * d * (64 + 2 * 64):
            return 128, 64, 8
        return 64, 64, 4
    raise IosimError(f"FlashAttention-2 supports head_dim ≤ 256, got {head_dim}")


def _fa2_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    bm, bn, warps = fa2_tiles(p.head_dim, hw)
    return replace(base, block_m=bm, block_n=bn, num_warps=warps, num_stages=1, grid_order=("m", "b", "h"),
                   kv_order="descending", q_order="ascending")


def _triton_tutorial_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    return replace(base, block_m=128, block_n=64, num_warps=4, num_stages=2, grid_order=("m", "h", "b"),
                   kv_order="ascending", q_order="ascending")


def _iosim_triton_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    from iosim.triton_kernels.schedule import preset_config
    return preset_config(p, base.sram_bytes)


PRESETS: dict[str, KernelPreset] = {
    "fa2": KernelPreset("fa2", "flash2", "FlashAttention-2 CUDA as in PyTorch SDPA (grid m,b,h; KV descending; 255 regs)",
                        _fa2_config, regs_per_thread=255, instruction_path="mma.sync", prefetch=True),
    "triton-tutorial": KernelPreset("triton-tutorial", "flash2",
                                    "Triton fused-attention tutorial (grid m, z·h; KV ascending; 128×64, 2 stages)",
                                    _triton_tutorial_config),
    "iosim-triton": KernelPreset("iosim-triton", "flash2",
                                 "iosim's Triton kernel (default_config tiles; grid m,b,h; KV ascending; wgmma on sm90)",
                                 _iosim_triton_config),
}


def get_preset(name: str) -> KernelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise IosimError(f"unknown kernel preset {name!r}; known: {', '.join(PRESETS)}") from None


def apply(name: str, problem: Problem, hw, config: KernelConfig) -> tuple[str, KernelConfig, KernelPreset]:
    """(algorithm, config, preset): the preset pins tiles, warps, stages and the orders; sram_bytes is kept."""
    pre = get_preset(name)
    return pre.algorithm, pre.config(problem, hw, config), pre
