"""What PyTorch SDPA's cuDNN backend runs on sm90: ``cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_
knob_7_64x128x{d}_4x1x1…`` (closed source), as a persistent schedule (``models/persistent.py``).

Measured (ncu, H200, torch 2.11, 2026-12-04; ../shared/devices.md): grid = 132 CTAs (one per SM, persistent),
384 threads (1 producer + 2 consumer warpgroups), 168 registers, dynamic shared memory 232,448 B for d = 128 and
256, 134,144 B for d = 64 → ``Kernel`` fields (other head dims: the schedule's buffers, 2 stages).
Inferred, not measured: the tile — 128 query rows per CTA (2 consumer warpgroups × the name's 64-row wgmma) and
KV blocks of 128 (the name's 128); the work order — the simplest consistent one, FA3's static round-robin (tile t
to CTA t mod 132, query block fastest, then head, then batch) with KV blocks ascending, causal or not;
warp-specialized ("ws": producer warpgroup + 2 consumers; whether they ping-pong is not known).
Counts per tile as flash2: Q once, K/V once per (tile, KV block), O and LSE once.
"""

from __future__ import annotations

from dataclasses import replace

from iosim.models._common import check_fit, check_head_dim, lse_tensor, qkvo_tensors
from iosim.models.persistent import concrete, static_round_robin, worker_kernel, workers_of
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Schedule

MEASURED_SMEM = {64: 134_144, 128: 232_448, 256: 232_448}
"""head_dim → dynamic shared memory bytes of the cuDNN sm90 fprop kernel (ncu, H200, ../shared/devices.md)."""
THREADS, REGS = 384, 168
"""Threads per CTA and registers per thread of the same kernel (ncu, H200, ../shared/devices.md)."""
TILE_M, TILE_N = 128, 128
"""Inferred from the kernel name (64x128x{d}, 2 consumer warpgroups): not measured."""


@register("cudnn_sm90", "cuDNN sm90 flash fprop as SDPA runs it: 132 persistent CTAs × 384 threads (measured); "
          "128×128 tiles and static round-robin order (inferred)")
def build(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    check_head_dim(p, "cudnn_sm90")
    concrete(p, "cudnn_sm90")
    cfg = replace(cfg, block_m=cfg.block_m or TILE_M, block_n=cfg.block_n or TILE_N,
                  num_stages=2, grid_order=("m", "h", "b"), kv_order="ascending", q_order="ascending")
    bm, bn = cfg.block_m, cfg.block_n
    tm = -(-p.seq_q // bm)
    n = tm * p.heads * p.batch
    workers = workers_of(hw)
    kernel, tables = worker_kernel("cudnn_sm90_fprop", p, cfg, static_round_robin(n, workers),
                                   threads_per_cta=THREADS, regs_per_thread=REGS,
                                   smem_bytes=MEASURED_SMEM.get(p.head_dim), pipeline="ws")
    if kernel.smem_bytes is None:
        check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={p.head_dim}, num_stages=2")
    notes = (f"cudnn_sm90: {workers} persistent CTAs over {n:,} tiles of {bm}×{bn}; grid, threads, registers and "
             "shared memory measured (H200); tiles and work order inferred (static round-robin, KV ascending)",)
    return Schedule("cudnn_sm90", p, cfg, qkvo_tensors(p) | {"LSE": lse_tensor(p)}, (kernel,), notes, tables)
