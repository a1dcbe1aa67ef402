"""What PyTorch SDPA's cuDNN backend runs on sm90: ``cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_
knob_7_64x128x{d}_4x1x1…`` (closed source), as a persistent schedule (``models/persistent.py``).

Measured (ncu, H200, torch 2.11, 2026-12-04; ../shared/devices.md): grid = 132 CTAs (one per SM, persistent),
384 threads (1 producer + 2 consumer warpgroups), 168 registers, dynamic shared memory 232,448 B for d = 128 and
256, 134,144 B for d = 64 → ``Kernel`` fields (other head dims: the schedule's buffers, 2 stages).
Inferred, not measured: the tile — 128 query rows per CTA (2 consumer warpgroups × the name's 64-row wgmma) and
KV blocks of 128 (the name's 128); KV blocks ascending; warp-specialized ("ws": producer warpgroup + 2 consumers;
whether they ping-pong is not known).
Work order (the kernel is closed source; the closest documented scheduler is cuDNN's own, in the open-source
kernels of NVIDIA/cudnn-frontend ``python/cudnn/sdpa/fwd``, incl. an sm90 one, ``config_sm90.py``: NATURAL / LPT /
LPT_L2; ``heuristics._sched_points`` picks LPT_L2 for causal graphs, NATURAL otherwise):
* causal — SCHED_LPT_L2 (``persistent.lpt_l2_order``: longest query blocks first, KV-head groups in L2 blocks; one
  group per block, ``GROUPS_PER_BLOCK``: fitted, see there), each next tile to the CTA that frees first (``persistent.dynamic_assign`` at the L2 timeline's speeds):
  cudnn-frontend hands its tiles out in order through the hardware (the block scheduler of a one-tile-per-CTA grid,
  or cluster launch control on sm100), and a 132-CTA grid that balances causal tiles needs the same (an atomic
  counter, FA3's DynamicPersistentTileScheduler). A static round-robin (tile t to CTA t mod 132, the model until
  2026-12) cannot be what runs: its CTA w starts round k k·w KV blocks after CTA 0 (causal tiles differ in length),
  so the 132 CTAs spread over a head's whole KV walk and, at 64K causal tokens, even a lockstep timeline reads
  28–36× Q+K+V from DRAM, where the H200 measured about 1.06× (../shared/devices.md, 2026-12-04).
* not causal — SCHED_NATURAL: query block fastest, then batch, then head (``persistent.natural_order``; CUTLASS
  example 88 ``PersistentTileScheduler``), handed out the same way. Equal tiles at equal speeds go round-robin
  either way; but the L2 timeline drifts every worker whose total differs from the others' (one tile more is
  enough: 4,096 tiles over 132 CTAs), and a static table then lets a CTA 3% slow fall a whole KV walk behind over
  31 tiles (32K non-causal: 13.5× Q+K+V on the H100), where the GPU's CTAs run as a convoy
  (``iosim.memory.hierarchy.DEFAULT_JITTER``). Handing tiles to the first free CTA at the timeline's speeds keeps
  the tiles in launch order on that timeline.
Counts per tile as flash2: Q once, K/V once per (tile, KV block), O and LSE once.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from iosim.errors import IosimError
from iosim.memory.scheduler import cta_speeds
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, lse_tensor, qkvo_tensors
from iosim.models.persistent import (concrete, dynamic_assign, item_ticks, lpt_l2_order, natural_order,
                                     timeline_speeds, worker_kernel, workers_of)
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Schedule

MEASURED_SMEM = {64: 134_144, 128: 232_448, 256: 232_448}
"""head_dim → dynamic shared memory bytes of the cuDNN sm90 fprop kernel (ncu, H200, ../shared/devices.md)."""
THREADS, REGS = 384, 168
"""Threads per CTA and registers per thread of the same kernel (ncu, H200, ../shared/devices.md)."""
TILE_M, TILE_N = 128, 128
"""Inferred from the kernel name (64x128x{d}, 2 consumer warpgroups): not measured."""
GROUPS_PER_BLOCK = 1
"""KV-head groups (KV head, batch) per LPT_L2 block of the causal order. FITTED, not read from a source: cudnn-frontend's
open kernels size a block by a 50 MiB L2 budget (``persistent.CUDNN_L2_BUDGET_BYTES``: 12 groups at 8K tokens,
d = 128), and with it the model predicted 1.29–3.43× Q+K+V from DRAM on the 9 causal cuDNN runs of the H100 held-out
set of issue 21 (ids 1001–1016, measured 2026-12-06) where the GPU read 1.00× on 7 of them (1.40× and 1.24× at 64K).
One group per block (query blocks of one KV-head group, longest first, then the next group) gives 1.00–1.01× on those
7 (and so would any budget ≤ 16 MiB: the set cannot tell them apart), so that set is in-sample for this choice; the
64K runs are unchanged by it (one group per block either way). The later held-out set (ids 1071–1099) was measured
after this choice."""


def cudnn_work(p: Problem, bm: int, bn: int, workers: int, kv_order: str = "ascending", drift: float | None = None):
    """(WorkTable, description) of cuDNN's tile order on ``workers`` persistent CTAs (module docstring). drift: the
    CTA drift σ the L2 timeline will run (None: its default for ``kv_order``); causal tiles go to the CTA that frees
    first at the speeds of that drift."""
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    if p.causal:
        order, how = lpt_l2_order(tm, p.heads, p.kv_heads, p.batch, p.seq_kv, 2 * p.head_dim * p.elem_bytes,
                                  active=GROUPS_PER_BLOCK), f"SCHED_LPT_L2 order ({GROUPS_PER_BLOCK} KV-head group per block)"
    else:
        order, how = natural_order(tm, p.heads, p.batch), "SCHED_NATURAL order (query block, batch, head)"
    blocks = item_ticks([int(flash2.kv_stop(p, i, bm, bn, tn)) for i in range(tm)])
    speed = timeline_speeds(workers, kv_order) if drift is None else cta_speeds(workers, drift)
    work = dynamic_assign(order, np.resize(blocks, tm * p.heads * p.batch), workers, speed)
    return work, how + ", next tile to the first free CTA"


@register("cudnn_sm90", "cuDNN sm90 flash fprop as SDPA runs it: 132 persistent CTAs × 384 threads (measured); "
          "128×128 tiles; cuDNN's LPT_L2 (causal) / natural order, handed out dynamically (inferred)")
def build(p: Problem, cfg: KernelConfig, hw=None, *, drift: float | None = None) -> Schedule:
    """drift: the CTA drift σ the causal tile assignment is made for; None = the L2 timeline's default
    (``iosim.memory.hierarchy.DRIFT_BY_KV_ORDER``). A prediction with ``cta_jitter=x`` should pass ``drift=x``
    (``params={"drift": x}``): a dynamic scheduler's assignment follows the speeds the CTAs actually run at."""
    check_head_dim(p, "cudnn_sm90")
    if drift is not None and (isinstance(drift, bool) or not isinstance(drift, (int, float)) or drift < 0):
        raise IosimError(f"cudnn_sm90: drift={drift!r}; give a CTA drift σ ≥ 0 (the cta_jitter of the prediction)")
    concrete(p, "cudnn_sm90")
    cfg = replace(cfg, block_m=cfg.block_m or TILE_M, block_n=cfg.block_n or TILE_N,
                  num_stages=2, grid_order=("m", "h", "b"), kv_order="ascending", q_order="ascending")
    bm, bn = cfg.block_m, cfg.block_n
    tm = -(-p.seq_q // bm)
    n = tm * p.heads * p.batch
    workers = workers_of(hw)
    work, how = cudnn_work(p, bm, bn, workers, cfg.kv_order, drift)
    kernel, tables = worker_kernel("cudnn_sm90_fprop", p, cfg, work,
                                   threads_per_cta=THREADS, regs_per_thread=REGS,
                                   smem_bytes=MEASURED_SMEM.get(p.head_dim), pipeline="ws")
    if kernel.smem_bytes is None:
        check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={p.head_dim}, num_stages=2")
    notes = (f"cudnn_sm90: {workers} persistent CTAs over {n:,} tiles of {bm}×{bn}; grid, threads, registers and "
             f"shared memory measured (H200); tiles, KV ascending and work order inferred ({how})",)
    return Schedule("cudnn_sm90", p, cfg, qkvo_tensors(p) | {"LSE": lse_tensor(p)}, (kernel,), notes, tables)
