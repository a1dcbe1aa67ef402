"""FlashAttention-3 forward on sm90 (Dao-AILab/flash-attention ``hopper/``; Shah et al., arXiv 2407.08608) as a
persistent schedule (``models/persistent.py``).

* Tiles (kBlockM, kBlockN), 16-bit: ``hopper/tile_size.h`` ``tile_size_fwd_sm90`` (dv = d, no paging/softcap):
  d ≤ 64 192×192 (192×128 causal), ≤ 96 192×144, ≤ 128 128×176 (128×128 causal), ≤ 192 128×128, else 128×80.
  kStages = 2 on sm90 (``flash_fwd_launch_template.h`` ``run_flash_fwd``): Q + 2 × (K + V) tiles in shared memory.
* Threads: kBlockM/64 consumer warpgroups + 1 producer warpgroup (``flash_fwd_kernel_sm90.h``: NumMmaWarpGroups,
  MaxThreadsPerBlock). Registers: not measured; estimated (setmaxnreg moves them between warpgroups at run time).
* Pipeline: warp-specialized; ping-pong between the two consumer warpgroups when UseSchedulerBarrier
  (``mainloop_fwd_sm90_tma_gmma_ws.hpp``: IntraWGOverlap ⇒ NumMmaWarpGroups ≥ 2 and d ≤ 128) → "ws-pingpong",
  else "ws"; intra-warpgroup overlap (softmax of block j+1 under the PV MMA of j) is on for every 16-bit tile.
* Cluster: ClusterM = 2 for 16-bit d ≥ 128, not causal, when ⌈Nq/kBlockM⌉ is even (``run_mha_fwd_`` Enable_cluster /
  Use_cluster): TMA multicast of K/V to the two CTAs. Each SM still receives every K/V tile, so the SM read bytes
  are unchanged (L2 lookups halve: not in the counts).
* Grid: num_sm = SMs − sm_margin (0) persistent CTAs (``flash_api.cpp``; ``*PersistentTileScheduler::get_grid_shape``).
  Not causal: ``StaticPersistentTileScheduler`` — tile t = CTA t mod num_sm, decoded query block fastest, then head,
  then batch. Causal: ``DynamicPersistentTileScheduler`` — L2-swizzled LPT order (``persistent.l2_swizzle``) handed to
  the first free CTA (``persistent.dynamic_assign``, cost = the tile's ticks on the L2 timeline, KV blocks + 1,
  at the timeline's worker speeds ``persistent.timeline_speeds``, as models/cudnn.py).
* KV blocks walked descending, n_block_max − 1 down to n_block_min (``mainloop_fwd_sm90_tma_gmma_ws.hpp``, ``mma``).
* Counts per tile as flash2: Q once, K/V once per (tile, KV block), O and LSE once.
Not modeled: split-KV (num_splits > 1) and PackGQA (``heuristics.h``), varlen, paging, FP8.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, lse_tensor, qkvo_tensors
from iosim.models.persistent import (concrete, dynamic_assign, fa3_swizzle, item_ticks, l2_swizzle,
                                     static_round_robin, timeline_speeds, worker_kernel, workers_of)
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Schedule

STAGES = 2
"""kStages on sm90 (flash_fwd_launch_template.h)."""


def fa3_tiles(head_dim: int, causal: bool) -> tuple[int, int]:
    """(kBlockM, kBlockN) of ``tile_size_fwd_sm90`` for a 16-bit dtype, dv = d, no local/paging/softcap."""
    if head_dim <= 64:
        return 192, 128 if causal else 192
    if head_dim <= 96:
        return 192, 144
    if head_dim <= 128:
        return 128, 128 if causal else 176
    if head_dim <= 192:
        return 128, 128
    return 128, 80


def fa3_config(p: Problem, base: KernelConfig) -> KernelConfig:
    bm, bn = fa3_tiles(p.head_dim, p.causal)
    return replace(base, block_m=base.block_m or bm, block_n=base.block_n or bn,
                   num_stages=STAGES, grid_order=("m", "h", "b"), kv_order="descending", q_order="ascending")


@register("fa3", "FlashAttention-3 forward (sm90): persistent CTAs, static or LPT + L2-swizzled tile scheduler, "
          "warp-specialized ping-pong")
def build(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    check_head_dim(p, "fa3")
    concrete(p, "fa3")
    if p.elem_bytes != 2:
        raise IosimError(f"fa3: dtype {p.dtype} is not modeled; FA3's 16-bit tiles need bf16 or fp16")
    cfg = fa3_config(p, cfg)
    bm, bn, d = cfg.block_m, cfg.block_n, p.head_dim
    if bm % 64:
        raise IosimError(f"fa3: block_m={bm} must be a multiple of 64 (one consumer warpgroup per 64 rows)")
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    workers = workers_of(hw)
    n = tm * p.heads * p.batch
    if p.causal:
        swz = fa3_swizzle(p.seq_kv, d, p.elem_bytes, p.group)
        # cost in the L2 timeline's ticks at its speeds (``persistent.item_ticks``, ``timeline_speeds``), as cuDNN's
        # (models/cudnn.py): the counter hands the tiles out in order on the timeline the L2 model runs
        blocks = item_ticks([int(flash2.kv_stop(p, i, bm, bn, tn)) for i in range(tm)])
        work = dynamic_assign(l2_swizzle(tm, p.heads, p.batch, swz), np.resize(blocks, n), workers,
                              timeline_speeds(workers, cfg.kv_order))
        how = (f"DynamicPersistentTileScheduler: LPT order in L2 sections of {swz} heads, next tile to the first "
               "free CTA (cost = KV blocks + 1 ticks, at the L2 timeline's speeds)")
    else:
        work = static_round_robin(n, workers)
        how = "StaticPersistentTileScheduler: tile t to CTA t mod num_sm, query block fastest, then head, batch"
    wgs = bm // 64
    pingpong = wgs >= 2 and d <= 128
    cluster = 2 if d >= 128 and not p.causal and tm % 2 == 0 else 1
    kernel, tables = worker_kernel("fa3_fwd", p, cfg, work, threads_per_cta=128 * (wgs + 1),
                                   pipeline="ws-pingpong" if pingpong else "ws", cluster=cluster)
    # setmaxnreg (hopper/flash_fwd_kernel_sm90.h: producer warpgroup down to 24-56, consumers up to 240) spreads the
    # whole register file over the CTA's warpgroups: for occupancy the CTA holds 65,536 registers / its threads
    kernel = replace(kernel, regs_per_thread=min(255, 65536 // kernel.threads_per_cta // 8 * 8))  # whole 8-register units
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={STAGES}")
    notes = (f"fa3: {workers} persistent CTAs over {n:,} tiles of {bm}×{bn}; {how}",
             f"{wgs} consumer warpgroups + 1 producer" + (", ping-pong" if pingpong else "") +
             (f"; cluster of {cluster} (K/V multicast)" if cluster > 1 else ""))
    return Schedule("fa3", p, cfg, qkvo_tensors(p) | {"LSE": lse_tensor(p)}, (kernel,), notes, tables)
