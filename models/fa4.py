"""FlashAttention-4 forward on Blackwell sm100 (Dao-AILab/flash-attention ``flash_attn/cute/``; arXiv 2603.05451).

* Tile (``interface.py`` ``_get_fwd_config``): tile_m × tile_n = 128 × 128 on sm100; q_stage = 2 when
  seqlen_q > tile_m, else 1: a CTA owns q_stage·128 query rows (``flash_fwd_sm100.py``: cta_tiler).
* 2-CTA MMA (``interface.py``: use_2cta_instrs): not causal, d and dv padded to 16 in {128, 192} (dv = d here, so
  d = 128), seqlen_q > 2·tile_m; or d = 256 (the dedicated hd256 kernel). Then cluster_shape_mn = (2, 1): the two CTAs
  of a pair run one tcgen05 MMA (cta_group 2) and each holds half of every K/V tile, so a K/V tile is read once per
  pair. Modelled as one program per pair (``cluster = 2``): 2·q_stage·128 query rows, K/V loaded once; threads,
  shared memory and registers are per CTA.
* Warps (``flash_fwd_sm100.py`` ``__init__``): 2 softmax warpgroups, 1 correction warpgroup, MMA, load, epilogue
  and an empty warp: 512 threads per CTA (q_stage = 1 folds softmax1 away, same launch); accumulators S and O in
  tensor memory → pipeline "ws-2cta" with a pair, else "ws". Registers: 64K / 512 threads (``REGS``, not measured);
  shared memory: the schedule's buffers, per CTA half the pair's (not measured).
* Scheduler: not causal → ``StaticPersistentTileScheduler`` (``tile_scheduler.py``): grid = min(SMs rounded down to
  the cluster, total cluster tiles · cluster) CTAs; cluster tile t = (query-block pair fastest, then head, batch),
  round-robin over the clusters (``advance_to_next_work``). Causal → ``SingleTileLPTScheduler``: one tile per CTA
  (not persistent), L2 sections of heads whose K+V fit 50 MiB, query blocks reversed (LPT); ``persistent.l2_swizzle``.
* KV blocks descending as FA3 (n_block_max − 1 down). Counts per tile: Q once, K/V once per (program, KV block).
Not modeled: split-KV, PackGQA, varlen, conditional rescaling and exp emulation (time, not bytes).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from iosim.counts import sram_bytes
from iosim.errors import IosimError
from iosim.models._common import check_head_dim, lse_tensor, qkvo_tensors
from iosim.models.persistent import (WorkTable, concrete, fa3_swizzle, l2_swizzle, static_round_robin, worker_kernel,
                                     workers_of)
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Schedule

TILE_M, TILE_N = 128, 128
THREADS = 512
"""16 warps: softmax0/1, correction (4 each), MMA, epilogue, load, empty (flash_fwd_sm100.py)."""
REGS = 128
"""Not measured: one CTA per SM takes the whole 64K-register file, 65,536 / 512 threads; setmaxnreg then moves them
between warp roles (flash_fwd_sm100.py tuning table: num_regs_softmax, num_regs_correction, the rest derived)."""


def is_blackwell(hw) -> bool:
    return hw is None or getattr(hw, "arch", "") == "sm100"


def fa4_launch(p: Problem) -> tuple[int, bool]:
    """(q_stage, use_2cta_instrs) of interface.py for ``p`` (no varlen, split, paging or block sparsity)."""
    q_stage = 2 if p.seq_q > TILE_M else 1
    d16 = -(-p.head_dim // 16) * 16
    two = (not p.causal and d16 == 128 and p.seq_q > 2 * TILE_M) or p.head_dim == 256
    return q_stage, two


@register("fa4", "FlashAttention-4 forward (B200, sm100): 2-CTA pairs sharing K/V, tensor memory, persistent static "
          "scheduler (LPT single-tile when causal)")
def build(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    check_head_dim(p, "fa4")
    concrete(p, "fa4")
    if not is_blackwell(hw):
        raise IosimError(f"fa4: FlashAttention-4's sm100 kernel needs a Blackwell profile; use hardware b200 "
                         f"(got {hw.name}, {hw.arch})")
    q_stage, two = fa4_launch(p)
    pair = 2 if two else 1
    rows = pair * q_stage * TILE_M
    cfg = replace(cfg, block_m=rows, block_n=cfg.block_n or TILE_N, num_stages=2,
                  grid_order=("m", "h", "b"), kv_order="descending", q_order="ascending")
    tm = -(-p.seq_q // rows)
    n = tm * p.heads * p.batch
    sms = workers_of(hw, 148)
    if p.causal:
        swz = fa3_swizzle(p.seq_kv, p.head_dim, p.elem_bytes, 1, 50 * 2 ** 20)
        order = l2_swizzle(tm, p.heads, p.batch, swz)
        work = WorkTable(np.ones(n, dtype=np.int64), order[:, None])
        how, persistent = f"SingleTileLPTScheduler: {n:,} CTAs, LPT order in L2 sections of {swz} heads", False
    else:
        workers = min(sms // pair, n)
        work = static_round_robin(n, workers)
        how, persistent = f"StaticPersistentTileScheduler: {workers * pair} CTAs" + (
            f" = {workers} 2-CTA pairs" if two else ""), True
    kernel, tables = worker_kernel("fa4_fwd", p, cfg, work, threads_per_cta=THREADS, regs_per_thread=REGS,
                                   pipeline="ws-2cta" if two else "ws", cluster=pair)
    kernel = replace(kernel, persistent=persistent, smem_bytes=sram_bytes(kernel, 2) // pair)
    if hw is not None and kernel.smem_bytes > hw.smem_per_block_bytes:
        raise IosimError(f"fa4: {kernel.smem_bytes:,} B of shared memory per CTA exceed {hw.name}'s "
                         f"{hw.smem_per_block_bytes:,} B; use a smaller block_n")
    notes = (f"fa4: {how}; {q_stage} Q stage(s) of {TILE_M} rows per CTA" +
             (", K/V tiles read once per 2-CTA pair" if two else ""),)
    return Schedule("fa4", p, cfg, qkvo_tensors(p) | {"LSE": lse_tensor(p)}, (kernel,), notes, tables)
