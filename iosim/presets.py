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
  * the launch decision (``models/splitkv.py``, ``fa2_launch``): PyTorch's ``mha_fwd`` (flash_api.cpp) packs the G
    query heads of a KV head into the rows of one tile for Nq = 1 GQA (``seqlenq_ngroups_swapped``) and always asks
    ``set_params_splitkv`` for a split count (``num_splits_heuristic`` on 2·SMs); ``run_mha_fwd`` takes the split-KV
    kernel iff num_splits > 1 → algorithm ``splitkv`` with FA2's split tiles (kBlockM 64, kBlockN 256/128/64 by
    head dim, 4 warps, KV descending; its registers and shared memory are the split kernel's own, measured), else
    the plain kernel with the tiles above: ``flash2``, or ``splitkv``'s packed one-split schedule when packed.
  * backward (``direction="bwd"``): ``flash2_bwd`` with ``fa2_bwd_tiles`` below.
  Not modeled: dropout.
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
``flex`` — PyTorch FlexAttention's compiled Triton forward kernel, torch 2.11 (checked against the installed torch
  2.13 source, same in the stored pytorch/pytorch versions of these files):
  * grid (⌈Nq/BLOCK_M⌉, B, Hq), program_id(0) = query block, (1) = batch, (2) = query head
    (``torch/_inductor/kernel/flex/flex_attention.py``, ``flex_attention_grid``; template
    ``torch/_inductor/kernel/flex/templates/flex_attention.py.jinja``: q_start = program_id(0), off_zq = program_id(1),
    off_hq = program_id(2)); not persistent; Q block loaded once, O stored once; under ``torch.no_grad()`` no
    logsumexp is written (OUTPUT_LOGSUMEXP false), so the schedule stores O only.
  * GQA: query head h reads KV head h // GQA_SHARED_HEADS (``off_hkv = off_hq // GQA_SHARED_HEADS``, same template).
  * KV order: first the *partial* blocks of the BlockMask (``KV_NUM_BLKS``/``KV_IDX``, mask_mod applied), then the
    *full* blocks (``FULL_KV_NUM_BLKS``/``FULL_KV_IDX``, no mask_mod), each list in its stored order — two
    ``forward_inner`` calls in the template; ``create_block_mask`` stores each row's blocks ascending, so a causal
    query block visits its diagonal block first, then KV blocks 0, 1, 2, … upwards.
  * Sparse block (SPARSE_KV_BLOCK_SIZE, 128 by default, ``_DEFAULT_SPARSE_BLOCK_SIZE`` in
    ``torch/nn/attention/flex_attention.py``) vs BLOCK_N: each listed sparse block is walked in
    SPARSE_KV_BLOCK_SIZE / BLOCK_N consecutive BLOCK_N steps (``forward_inner`` in ``templates/common.py.jinja`` and
    ``get_offset_for_next_block`` in ``templates/utilities.py.jinja``); a list of n blocks runs
    min(n · SPARSE_KV_MULTIPLE, max(⌈Nkv/BLOCK_N⌉, 1)) steps (``block_n_end``). Query block q_start uses sparse row
    q_start // (SPARSE_Q_BLOCK_SIZE / BLOCK_M). Without a block mask FlexAttention uses one partial block of 2³⁰
    (``_create_empty_block_mask``), i.e. every KV block ascending.
  * default tiles (BLOCK_M, BLOCK_N, num_stages, num_warps) on sm90 (``torch/_inductor/template_heuristics/triton.py``,
    ``CUDAConfigHeuristic.h100_default_flex_config`` via ``get_flex_attn_fwd_configs``, keyed on (dtype, head_dim)
    exactly): bf16/fp16 d=64 (128, 128, 3, 4), d=128 (128, 64, 3, 8), d=256 (64, 32, 3, 4); fp32 d=64 (128, 32, 3, 4),
    d=128 (32, 64, 3, 4), d=256 (32, 32, 3, 4); any other head_dim ≤ 256 (64, 64, 3, 4). sm80 (a100 profile):
    ``a100_default_flex_config`` (bf16 d=64 (128, 64, 3, 4), d=128 (128, 64, 3, 8)). The validation harness pins these
    values through ``kernel_options`` (BLOCK_M, BLOCK_N, num_warps, num_stages), so the preset is what ran. An explicit
    block_m/block_n in the KernelConfig overrides the tiles (as kernel_options would).
  * the schedule is ``flex_schedule`` below: the block-sparse FA2 loop nest of ``models/block_sparse.py`` / ``flash2``
    with a per-(batch, head, query block) visit table at BLOCK_N granularity (partial list, then full list).
    Block masks (``predict(..., block_mask=...)``): a boolean [T_q, T_kv] / [B, H, T_q, T_kv] mask at the sparse
    block size (``iosim.masks``), or the dict of BlockMask tables ``iosim.masks.flex_block_tables`` returns. Causal
    without a mask = ``create_block_mask`` of the causal mask_mod (diagonal blocks partial, the rest full).
  Not modeled: the reads of the BlockMask index tables themselves (a few MB at most), registers (estimated), TMA
  (USE_TMA is off by default on CUDA in this template).
``fa3`` — FlashAttention-3 forward on sm90 (``models/fa3.py``: ``hopper/`` tile_size_fwd_sm90 tiles, 2 stages, num_sm
  persistent CTAs, static round-robin or LPT + L2-swizzled dynamic scheduler, ping-pong warpgroups, K/V multicast
  cluster); wgmma; registers estimated. 16-bit dtypes only.
``cudnn`` — PyTorch SDPA's cuDNN sm90 flash fprop (``models/cudnn.py``): 132 persistent CTAs × 384 threads, 168
  registers, shared memory measured (H200); 128×128 tiles and static round-robin order inferred; wgmma.
``lean`` — LeanAttention as onnxruntime runs it (``models/lean.py``): stream-K over all KV tiles, 2·SMs persistent
  CTAs, in-kernel host reduction; its kernel is FA2's sm80 CuTe code (``lean_fwd_kernel.h``) → mma.sync.
``fa4`` — FlashAttention-4 forward on B200 (``models/fa4.py``: ``flash_attn/cute/``, 128×128 tiles, q_stage 2, 2-CTA
  pairs sharing K/V, static persistent or one CTA per tile in LPT order when causal); tcgen05; Blackwell profiles
  only. ``persistent`` is left off: its persistent grid has at most one program per slot (the timeline is the same
  either way), and causal launches one CTA per tile, which the first-free CTA scheduler models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem


@dataclass(frozen=True)
class KernelPreset:
    name: str
    algorithm: str
    summary: str
    config: Callable[[Problem, object, KernelConfig], KernelConfig]
    regs_per_thread: int | None = None   # None: estimated (iosim.occupancy.registers_per_thread)
    persistent: bool = False
    instruction_path: str | None = None  # tensor-core path for the cost model (None = the chip's native one)
    prefetch: bool = False  # loads overlap compute inside the CTA although num_stages = 1 (cost.estimate's prefetch)
    schedule: Callable | None = None  # (problem, config, hw, block_mask) -> Schedule; None = the algorithm's builder
    launch: Callable | None = None  # (problem, hw, config) -> (algorithm, config, preset): a run-time kernel choice
    backward: "KernelPreset | None" = None  # what the kernel's backward pass launches (apply(..., direction="bwd"))


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


def fa2_bwd_tiles(head_dim: int, hw=None) -> tuple[int, int, int, int]:
    """(kBlockM, kBlockN, warps, smem stages) of FA2's backward (no dropout), ``flash_bwd_launch_template.h``
    ``run_mha_bwd_hdim*`` (PyTorch's copy): the branch taken depends on the opt-in shared memory per block
    (cudaDevAttrMaxSharedMemoryPerBlockOptin = ``hw.smem_per_block_bytes``; without a profile: an sm90 GPU's).
    Stages: 2 when the traits' No_double_buffer is false (Q double-buffered), 1 otherwise. All launch 8 warps."""
    smem = hw.smem_per_block_bytes if hw is not None else 232448
    k = 1024
    if head_dim <= 32:
        return 128, 128, 8, 2
    if head_dim <= 64:
        return (128, 128, 8, 2) if smem >= 144 * k else (64, 128, 8, 2)
    if head_dim <= 96:
        return 64, 128, 8, 2
    if head_dim <= 128:
        return (64, 128, 8, 2) if smem >= 144 * k else (64, 64, 8, 2)
    if head_dim <= 160:
        return 64, 64, 8, 2 if smem >= 116 * k else 1
    if head_dim <= 192:
        return 64, 64, 8, 2 if smem >= 136 * k else 1
    if head_dim <= 224:
        return 64, 64, 8, 2
    if head_dim <= 256:
        return 64, 64, 8, 2 if smem >= 176 * k else 1
    raise IosimError(f"FlashAttention-2 backward supports head_dim ≤ 256, got {head_dim}")


def _fa2_bwd_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    bm, bn, warps, stages = fa2_bwd_tiles(p.head_dim, hw)
    # grid_n (num_n_block, b, h) in run_flash_bwd_seqk_parallel: KV block fastest, then batch, then head
    return replace(base, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, grid_order=("m", "b", "h"))


def _fa2_launch(p: Problem, hw, base: KernelConfig):
    """FA2 forward as PyTorch's flash backend runs it: split-KV (GQA-packed for Nq = 1) when num_splits > 1."""
    from iosim.models.splitkv import fa2_launch, split_tiles
    pre, launch = PRESETS["fa2"], fa2_launch(p, hw)
    if launch.num_splits == 1:  # the plain kernel, on the swapped (GQA-packed) layout when packed
        return "splitkv" if launch.packed else "flash2", _fa2_config(p, hw, base), pre
    bm, bn = split_tiles(p.head_dim)
    cfg = replace(base, block_m=bm, block_n=bn, num_warps=4, num_stages=1, grid_order=("m", "b", "h"),
                  kv_order="descending", q_order="ascending")
    return "splitkv", cfg, replace(pre, algorithm="splitkv", regs_per_thread=None, launch=None)


def _triton_tutorial_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    return replace(base, block_m=128, block_n=64, num_warps=4, num_stages=2, grid_order=("m", "h", "b"),
                   kv_order="ascending", q_order="ascending", band_loop=True)  # STAGE 1 off-band, STAGE 2 band


def _iosim_triton_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    from iosim.triton_kernels.schedule import preset_config
    return preset_config(p, base.sram_bytes)


FLEX_SM90 = {("bf16", 64): (128, 128, 3, 4), ("bf16", 128): (128, 64, 3, 8), ("bf16", 256): (64, 32, 3, 4),
             ("fp16", 64): (128, 128, 3, 4), ("fp16", 128): (128, 64, 3, 8), ("fp16", 256): (64, 32, 3, 4),
             ("fp32", 64): (128, 32, 3, 4), ("fp32", 128): (32, 64, 3, 4), ("fp32", 256): (32, 32, 3, 4)}
"""FlexAttention forward (BLOCK_M, BLOCK_N, num_stages, num_warps) on sm90: ``h100_default_flex_config``."""
FLEX_SM80 = {("bf16", 64): (128, 64, 3, 4), ("bf16", 128): (128, 64, 3, 8), ("bf16", 192): (128, 32, 2, 8),
             ("bf16", 256): (32, 64, 3, 4), ("fp16", 64): (128, 64, 3, 4), ("fp16", 128): (128, 64, 3, 8),
             ("fp16", 192): (128, 32, 2, 8), ("fp16", 256): (32, 64, 3, 4),
             ("fp32", 64): (128, 32, 3, 4), ("fp32", 128): (128, 32, 3, 4), ("fp32", 256): (64, 16, 3, 4)}
"""The same on sm80 (``a100_default_flex_config``)."""


def _iosim_triton_schedule(p: Problem, cfg: KernelConfig, hw, block_mask=None):
    """What ``iosim.triton_kernels.attention`` launches: the dense/block-sparse forward or, for ``use_decode`` shapes,
    the split-KV decode (splits from the chip's SM count, as the launcher computes them on that GPU)."""
    from iosim.triton_kernels.schedule import kernel_schedule
    return kernel_schedule(p, cfg, block_mask, hw=hw, num_sms=hw.sm_count if hw is not None else 132)


def _iosim_triton_bwd_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    from iosim.triton_kernels.schedule import backward_preset_config
    return backward_preset_config(p, base.sram_bytes)


def _iosim_triton_bwd_schedule(p: Problem, cfg: KernelConfig, block_mask=None):
    if block_mask is not None:
        raise IosimError("iosim-triton's backward has no block-sparse variant; drop the block mask for --pass bwd")
    from iosim.triton_kernels.schedule import backward_schedule
    return backward_schedule(p, cfg)


def flex_tiles(dtype: str, head_dim: int, hw=None) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_stages, num_warps) FlexAttention's forward uses by default (``get_flex_attn_fwd_configs``)."""
    if head_dim > 256:
        return (32, 16, 3, 4) if dtype == "fp32" else (64, 32, 3, 4)
    table = FLEX_SM80 if hw is not None and getattr(hw, "name", "") == "a100" else FLEX_SM90
    return table.get((dtype, head_dim), (64, 64, 3, 4))


def _flex_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    bm, bn, stages, warps = flex_tiles(p.dtype, p.head_dim, hw)
    return replace(base, block_m=base.block_m or bm, block_n=base.block_n or bn, num_warps=warps, num_stages=stages,
                   grid_order=("m", "b", "h"), kv_order="ascending", q_order="ascending")


def _expand_list(num, idx, mult: int, cap: int):
    """Sub-block (BLOCK_N) visits of one BlockMask list: counts min(num·mult, cap), entries idx[t // mult]·mult + t % mult."""
    num = np.asarray(num, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    cnt = np.minimum(num * mult, cap)
    width = max(1, int(cnt.max()) if cnt.size else 1)
    t = np.arange(width)
    col = np.minimum(t // mult, idx.shape[-1] - 1)
    sub = idx[..., col] * mult + t % mult
    return cnt, sub


def flex_visits(tables: dict, p: Problem, block_m: int, block_n: int) -> tuple[np.ndarray, np.ndarray]:
    """(count [B', H', T_m], visit [B', H', T_m, W]): the BLOCK_N-sized KV blocks each BLOCK_M query block of
    FlexAttention's forward visits, in order (partial list, then full list), from BlockMask tables at sparse block
    size S (``iosim.masks.flex_block_tables``). B', H' are 1 where the tables broadcast."""
    S = int(tables.get("block_size", 128))
    if S % block_m or S % block_n:
        raise IosimError(f"flex: sparse block size {S} must be a multiple of BLOCK_M={block_m} and BLOCK_N={block_n}")
    mq, mk = S // block_m, S // block_n
    cap = max(-(-p.seq_kv // block_n), 1)
    c1, v1 = _expand_list(tables["kv_num_blocks"], tables["kv_indices"], mk, cap)
    if tables.get("full_kv_num_blocks") is not None:
        c2, v2 = _expand_list(tables["full_kv_num_blocks"], tables["full_kv_indices"], mk, cap)
    else:
        c2, v2 = np.zeros_like(c1), np.zeros(c1.shape + (1,), dtype=np.int64)
    width = max(1, int((c1 + c2).max()) if c1.size else 1)
    out = np.zeros(c1.shape + (width + 1,), dtype=np.int64)
    for cnt, vis, off in ((c1, v1, 0), (c2, v2, c1)):
        t = np.arange(vis.shape[-1])
        pos = np.asarray(off)[..., None] + t
        pos = np.where(t < cnt[..., None], pos, width)  # invalid entries go to the spill column
        np.put_along_axis(out, np.broadcast_to(pos, vis.shape), vis, axis=-1)
    count, visit = c1 + c2, out[..., :width]
    # sparse rows -> BLOCK_M query blocks: query block i reads sparse row i // (S / BLOCK_M)
    tm = -(-p.seq_q // block_m)
    rows = np.minimum(np.arange(tm) // mq, count.shape[-1] - 1)
    return count[..., rows], visit[..., rows, :]


def flex_schedule(p: Problem, cfg: KernelConfig, hw=None, block_mask=None):
    """FlexAttention's forward schedule for ``p`` with tiles/warps/stages of ``cfg`` (``_flex_config``).

    block_mask: None (dense; causal → create_block_mask's causal tables), a bool block mask at the sparse block size
    ([T_q, T_kv] or [B, H, T_q, T_kv]; causal drops blocks above the diagonal and splits partial/full), or the dict
    of BlockMask tables from ``iosim.masks.flex_block_tables`` (visited exactly as listed)."""
    from iosim.masks import SPARSE_BLOCK, flex_block_tables
    from iosim.models import flash2
    from iosim.models._common import check_fit, check_head_dim, q_tile, qkvo_tensors
    from iosim.schedule import Kernel, Load, Loop, Schedule, Span, Store, cdiv, lookup, table, var

    check_head_dim(p, "flex")
    for name in ("batch", "heads", "seq_q", "seq_kv"):
        if not isinstance(getattr(p, name), int):
            raise IosimError("flex: needs concrete sizes (its loops follow the block mask)")
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i = vs["b"], vs["h"], vs["m"]
    tables: dict = {}
    if block_mask is None and not p.causal:
        t = var("j")  # FlexAttention's empty block mask: one partial block of 2^30 -> every KV block ascending
        j, stop = t, tn
        note = "no block mask: every KV block, ascending (FlexAttention's empty block mask)"
    else:
        if isinstance(block_mask, dict):
            tabs = block_mask
        else:
            tabs = flex_block_tables(block_mask, p.seq_q, p.seq_kv, p.causal, SPARSE_BLOCK)
        count, visit = flex_visits(tabs, p, bm, bn)
        if count.shape[0] not in (1, p.batch) or count.shape[1] not in (1, p.heads):
            raise IosimError(f"flex: block mask tables of shape {count.shape[:2]} do not broadcast to "
                             f"(B={p.batch}, H={p.heads})")
        tables = {"flex_kv_count": count, "flex_kv_visit": visit}
        t = var("t")
        lead = (b if count.shape[0] > 1 else 0, h if count.shape[1] > 1 else 0)
        j, stop = lookup(table("flex_kv_visit"), *lead, i, t), lookup(table("flex_kv_count"), *lead, i)
        visited = int(np.broadcast_to(count, (p.batch, p.heads, count.shape[-1])).sum())
        note = (f"FlexAttention block mask: {visited:,} of {p.batch * p.heads * tm * tn:,} BLOCK_N steps visited "
                "(partial blocks first, then full blocks, each ascending)")
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    body = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Loop(t, 0, stop, flash2.kv_step(p, b, h, rows, cols)),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
    )
    kernel = Kernel("flex_attention_fwd", grid, flash2.buffers(bm, bn, d, e), body, threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"BLOCK_M={bm}, BLOCK_N={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    return Schedule("flex", p, cfg, qkvo_tensors(p), (kernel,), (note,), tables=tables)


def _fa3_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    from iosim.models.fa3 import fa3_config
    return fa3_config(p, base)


def _fa4_config(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    if hw is not None and getattr(hw, "arch", "") != "sm100":
        raise IosimError(f"kernel preset fa4 models FlashAttention-4's sm100 kernel; use hardware b200 (got {hw.name})")
    return base


def _as_given(p: Problem, hw, base: KernelConfig) -> KernelConfig:
    """The builder picks the kernel's own tiles (cudnn_sm90, lean)."""
    return base


PRESETS: dict[str, KernelPreset] = {
    "fa2": KernelPreset("fa2", "flash2", "FlashAttention-2 CUDA as in PyTorch SDPA (grid m,b,h; KV descending; 255 regs; "
                        "split-KV for decode)", _fa2_config, regs_per_thread=255, instruction_path="mma.sync",
                        prefetch=True, launch=_fa2_launch,
                        backward=KernelPreset("fa2", "flash2_bwd", "FlashAttention-2 CUDA backward as in PyTorch SDPA "
                                              "(grid n,b,h; 8 warps)", _fa2_bwd_config, instruction_path="mma.sync")),
    "triton-tutorial": KernelPreset("triton-tutorial", "flash2",
                                    "Triton fused-attention tutorial (grid m, z·h; KV ascending; 128×64, 2 stages)",
                                    _triton_tutorial_config),
    "iosim-triton": KernelPreset("iosim-triton", "flash2",
                                 "iosim's Triton kernel (default_config tiles; grid m,b,h; KV ascending; wgmma on sm90; "
                                 "split-KV decode for few rows per KV head)", _iosim_triton_config,
                                 schedule=lambda p, cfg, hw, block_mask=None: _iosim_triton_schedule(p, cfg, hw, block_mask),
                                 backward=KernelPreset("iosim-triton", "iosim-triton-bwd",
                                                       "iosim's Triton backward (preprocess, KV-parallel main with atomic "
                                                       "dQ, convert; not tuned)", _iosim_triton_bwd_config,
                                                       schedule=lambda p, cfg, hw, block_mask=None:
                                                       _iosim_triton_bwd_schedule(p, cfg, block_mask))),
    "flex": KernelPreset("flex", "flex", "PyTorch FlexAttention Triton forward (grid m,b,h; partial then full blocks, "
                         "ascending; h100_default_flex_config tiles)", _flex_config,
                         schedule=lambda p, cfg, hw, block_mask=None: flex_schedule(p, cfg, hw, block_mask)),
    "fa3": KernelPreset("fa3", "fa3", "FlashAttention-3 sm90 (persistent, static or LPT+swizzle scheduler, ping-pong "
                        "warpgroups; tile_size_fwd_sm90 tiles)", _fa3_config, persistent=True, instruction_path="wgmma"),
    "cudnn": KernelPreset("cudnn", "cudnn_sm90", "cuDNN sm90 flash fprop as in SDPA (132 persistent CTAs × 384 threads, "
                          "168 regs measured; tiles and order inferred)", _as_given, regs_per_thread=168,
                          persistent=True, instruction_path="wgmma"),
    "lean": KernelPreset("lean", "lean", "LeanAttention (onnxruntime): stream-K over all KV tiles, 2·SMs persistent "
                         "CTAs, host CTA reduces in-kernel", _as_given, persistent=True, instruction_path="mma.sync"),
    "fa4": KernelPreset("fa4", "fa4", "FlashAttention-4 on B200 (2-CTA pairs share K/V, tensor memory; 128×128, "
                        "q_stage 2)", _fa4_config, instruction_path="tcgen05"),
}


def get_preset(name: str) -> KernelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise IosimError(f"unknown kernel preset {name!r}; known: {', '.join(PRESETS)}") from None


DIRECTIONS = ("fwd", "bwd")


def apply(name: str, problem: Problem, hw, config: KernelConfig,
          direction: str = "fwd") -> tuple[str, KernelConfig, KernelPreset]:
    """(algorithm, config, preset) of the kernel ``name`` launches for ``direction`` ('fwd' or 'bwd'): the preset
    pins tiles, warps, stages and the orders; sram_bytes is kept. The returned preset carries the registers,
    instruction path and prefetch of that launch."""
    pre = get_preset(name)
    if direction not in DIRECTIONS:
        raise IosimError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "bwd":
        if pre.backward is None:
            have = ", ".join(n for n, p in PRESETS.items() if p.backward is not None)
            raise IosimError(f"kernel preset {name!r} has no backward pass modelled; use one of: {have}")
        pre = pre.backward
    if pre.launch is not None:
        return pre.launch(problem, hw, config)
    return pre.algorithm, pre.config(problem, hw, config), pre
