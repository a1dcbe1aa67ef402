"""The iosim schedule of exactly what ``iosim.triton_kernels.attention`` launches (no torch or triton needed).

* dense forward — ``models/flash2.py`` with the kernel's config: same grid (m, b, h in ``grid_order``), same Q tile
  per program, same KV blocks (``kv_stop`` under causal masking), same O and LSE stores;
* block-sparse forward — ``models/block_sparse.py`` with the mask expanded to the kernel's BLOCK_M × BLOCK_N tiles
  (a sparse block of block_m × block_n covers (block_m/BLOCK_M)·(block_n/BLOCK_N) kernel tiles; under causal
  masking the kernel, like that model, skips tiles wholly above the diagonal);
* split-KV decode — ``decode_schedule`` below: unlike ``models/splitkv.py`` (FA2, one CTA per query head), our
  decode kernel packs the G query heads that share a KV head into one program, so K/V are read once per KV head
  and split, not once per query head;
* backward — ``backward_schedule`` below: the three launches of ``kernels.attention_backward`` (preprocess, main
  kernel with fp32 atomic dQ adds and GQA summed in the program, convert), with ``backward_config``'s tiles.
* persistent forward — ``persistent_schedule``: grid (workers,), each worker's items (static round-robin over the
  (query block, b, h) tiles, order "rr" or "lpt") from ``lookup`` tables, each item the dense program's loops;
* stream-K decode — ``streamk_decode_schedule``: the KV tiles of all (b, KV head) pairs as one stream split evenly
  over the workers (LeanAttention), partials per segment to fp32 scratch, a separate combine kernel.

Launch choices (also here, so ``iosim predict --kernel iosim-triton`` needs no torch or triton; ``kernels.py``
imports them): ``DEFAULT_CONFIGS`` / ``default_config`` (tiles, warps, stages per head dim), ``launch_config`` (how
``attention`` fills a partial config), ``launch_grid`` (grid and axis order), ``check_head_dim``, and
``instruction_path`` (the tensor-core path Triton's compiler picks for our ``tl.dot``s).

TMA note: with tensor descriptors the kernel also fetches its 4 descriptors (128 B each) per program, which the
schedule does not count (+512 B per program; measured on the H100: reports/validation/h100/triton_notes.md).
Whether descriptors are used (``kernels._tma_ok``: sm90+, 16-byte aligned strides and bases, or the caller's
``use_tma``) changes neither the schedule nor the instruction path (see ``instruction_path``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, clamp, full, lookup, point, table, var)


# Forward configs per (head_dim, causal) on the H100 (BLOCK_M, BLOCK_N, num_warps, num_stages): the configs closest to
# the fastest in the exhaustive tile timings of reports/validation/h100/cost_validation{,_run2,_run3,_run4,_run5}_raw
# (every legal config timed, 41 shapes, H 12–32, N 2K–32K, bf16). d=128: 128×64×4×2 (two 1-warpgroup CTAs per SM)
# is within 3.9% of the best on 18/18 shapes (median 0.0%; the earlier 128×128×8×3: median 9.6% non-causal, 12.3%
# causal). d=64: 64×128×4×2 has median gap 1.1% non-causal (worst 7.4%) and 0.0% causal (worst 31.7% at B28 N2048,
# where 64×64×4×2 wins), against 3.3% and 10.9% for the earlier 128×128×4×3.
DEFAULT_CONFIGS: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (64, False): (64, 128, 4, 2),
    (64, True): (64, 128, 4, 2),
    (128, False): (128, 64, 4, 2),
    (128, True): (128, 64, 4, 2),
}

GRID_YZ_LIMIT = 65535


def default_config(head_dim: int, causal: bool) -> KernelConfig:
    """The config ``attention`` uses when given none: ``DEFAULT_CONFIGS``, else (64,64,4,2) above d=128 and
    (128,64,4,3) otherwise; grid (m, b, h), KV and query blocks ascending."""
    bm, bn, w, s = DEFAULT_CONFIGS.get((head_dim, causal), (64, 64, 4, 2) if head_dim > 128 else (128, 64, 4, 3))
    return KernelConfig(block_m=bm, block_n=bn, num_warps=w, num_stages=s, band_loop=True)


def launch_config(head_dim: int, causal: bool, kc: KernelConfig | None = None) -> KernelConfig:
    """The KernelConfig ``attention`` launches for a caller's ``kc`` (None = ``KernelConfig()``): tiles missing from
    kc come from ``default_config``, and so do warps and stages unless the caller gave block_m; orders are kc's."""
    kc = KernelConfig() if kc is None else kc
    if kc.block_m is None or kc.block_n is None:
        d = default_config(head_dim, causal)
        kc = replace(d, grid_order=kc.grid_order, kv_order=kc.kv_order, q_order=kc.q_order,
                     block_m=kc.block_m or d.block_m, block_n=kc.block_n or d.block_n,
                     num_warps=kc.num_warps if kc.block_m else d.num_warps,
                     num_stages=kc.num_stages if kc.block_m else d.num_stages)
    return replace(kc, band_loop=True)  # _fwd_kernel: off-band blocks, then the masked diagonal band


def launch_grid(kc: KernelConfig, tm: int, batch: int, heads: int) -> tuple[tuple[int, int, int], dict[str, int]]:
    """(grid, {"AX_M": axis, "AX_B": axis, "AX_H": axis}) of the dense/sparse forward: the extents of
    (query blocks, batch, heads) in ``kc.grid_order`` (first = fastest = grid x); y and z are limited to 65535."""
    ext = {"m": tm, "b": batch, "h": heads}
    grid = tuple(ext[a] for a in kc.grid_order)
    if grid[1] > GRID_YZ_LIMIT or grid[2] > GRID_YZ_LIMIT:
        raise IosimError(f"grid {grid} (order {kc.grid_order}) exceeds CUDA's 65535 limit on its y/z axes; "
                         "put the largest axis first in grid_order")
    return grid, {f"AX_{a.upper()}": kc.grid_order.index(a) for a in ("m", "b", "h")}


def check_head_dim(head_dim: int) -> None:
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise IosimError(f"head_dim={head_dim} is not supported by the Triton kernels: use a power of two in 16..256")


def instruction_path(arch: str, block_m: int, num_warps: int) -> str:
    """The tensor-core path of a ``tl.dot`` with BLOCK_M rows in a program of num_warps warps, as Triton (3.x,
    ``AccelerateMatmul`` / ``supportMMA``) picks it: sm90 takes MMAv3 (wgmma) when num_warps % 4 == 0 and the
    rows are a multiple of 64, else MMAv2 (mma.sync); sm100 takes MMAv5 (tcgen05) for 4 or 8 warps and rows a
    multiple of 64; sm8x mma.sync. The load path (TMA descriptors or pointers) does not enter: both give wgmma on
    the H100 for our dense tiles (BLOCK_M 64/128, 4/8 warps); the decode kernel's 16–64-row tiles mostly do not."""
    mma_ok = num_warps % 4 == 0 and block_m % 64 == 0
    if arch == "sm90":
        return "wgmma" if mma_ok else "mma.sync"
    if arch == "sm100":
        return "tcgen05" if mma_ok and num_warps in (4, 8) else "mma.sync"
    return "mma.sync"


def preset_config(p: Problem, sram_bytes: int | None = None) -> KernelConfig:
    """The config of ``attention(q, k, v, causal=p.causal)`` (config=None, no block mask) for the ``iosim-triton``
    preset: ``launch_config`` of an empty config; refuses what the kernel refuses (a head dim that is not a power of
    two in 16..256, a grid over the y/z limit). Split-KV decode shapes (``use_decode``) take the same config: the
    preset's schedule (``kernel_schedule``) launches ``decode_schedule``'s two kernels for them."""
    concrete = all(isinstance(v, int) for v in (p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim))
    if not concrete:
        return replace(launch_config(p.head_dim, p.causal), sram_bytes=sram_bytes)
    check_head_dim(p.head_dim)
    kc = replace(launch_config(p.head_dim, p.causal), sram_bytes=sram_bytes)
    launch_grid(kc, cdiv(p.seq_q, kc.block_m), p.batch, p.heads)
    return kc


def use_decode(nq: int, heads: int, kv_heads: int, nkv: int, block_mask=None) -> bool:
    """Split-KV decode for few query rows per KV head (G·Nq ≤ 64) and long KV (the main kernel would leave SMs idle)."""
    return block_mask is None and (heads // kv_heads) * nq <= 64 and nkv >= 256


def decode_splits(batch: int, kv_heads: int, nkv: int, block_n: int, num_sms: int = 132) -> int:
    """Splits so that B·Hkv·splits ≈ 2 waves of programs, each split at least one KV block (at most 128)."""
    tn = cdiv(nkv, block_n)
    return max(1, min(tn, cdiv(2 * num_sms, batch * kv_heads), 128))


def decode_geometry(p: Problem, block_n: int, num_splits: int) -> tuple[int, int, int, int]:
    """(rows M = G·Nq, BLOCK_M, blocks per split, effective splits) exactly as the launcher computes them."""
    m = (p.heads // p.kv_heads) * p.seq_q
    bm = max(16, 1 << (m - 1).bit_length())
    tn = cdiv(p.seq_kv, block_n)
    bps = cdiv(tn, num_splits)
    return m, bm, bps, cdiv(tn, bps)


def kernel_mask(block_mask, p: Problem, bm: int, bn: int) -> np.ndarray:
    """The sparse block mask as bool [B, H, T_r, T_c] over the kernel's BLOCK_M × BLOCK_N tiles.

    block_mask: an ``iosim.triton_kernels.BlockMask`` (anything with ``to_dense()``, ``block_m``, ``block_n``) or a
    tuple (bool array [Qb, Kb] or [B, H, Qb, Kb], block_m, block_n)."""
    if isinstance(block_mask, tuple):
        dense, sbm, sbn = block_mask
        dense = np.asarray(dense, dtype=bool)
    else:
        dense = block_mask.to_dense()
        dense = np.asarray(dense.cpu().numpy() if hasattr(dense, "cpu") else dense, dtype=bool)
        sbm, sbn = block_mask.block_m, block_mask.block_n
    if sbm % bm or sbn % bn:
        raise IosimError(f"block_mask blocks {sbm}x{sbn} must be multiples of the kernel tiles {bm}x{bn}")
    while dense.ndim < 4:
        dense = dense[None]
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    rows = (np.arange(tm) * bm) // sbm
    cols = (np.arange(tn) * bn) // sbn
    if rows[-1] >= dense.shape[2] or cols[-1] >= dense.shape[3]:
        raise IosimError(f"block_mask covers {dense.shape[2]}x{dense.shape[3]} blocks of {sbm}x{sbn}, too few for "
                         f"seq_q={p.seq_q}, seq_kv={p.seq_kv}")
    m = dense[:, :, rows][:, :, :, cols]
    return np.ascontiguousarray(np.broadcast_to(m, (p.batch, p.heads, tm, tn)))


def kernel_schedule(p: Problem, config: KernelConfig, block_mask=None, decode: bool | str | None = None,
                    num_splits: int | None = None, hw=None, num_sms: int = 132, persistent: bool = False,
                    num_workers: int | None = None, order: str | None = None) -> Schedule:
    """The schedule of ``attention(q, k, v, causal=p.causal, block_mask=..., config=config, decode=...,
    persistent=..., num_workers=..., order=...)`` (decode="streamk": ``streamk_decode_schedule``; persistent:
    ``persistent_schedule``).

    config must carry block_m and block_n (the launcher's defaults come from ``launch_config``)."""
    if config.block_m is None or config.block_n is None:
        raise IosimError("kernel_schedule needs config.block_m and config.block_n (the kernel's tiles)")
    if persistent and (decode is True or decode == "streamk" or block_mask is not None):
        raise IosimError("persistent=True is the dense forward: it takes no block_mask and no decode path")
    if decode == "streamk":
        if block_mask is not None:
            raise IosimError("split-KV decode does not take a block_mask")
        return streamk_decode_schedule(p, config, num_workers or streamk_workers(p, config.block_n, num_sms))
    if persistent:
        return persistent_schedule(p, config, num_workers or persistent_workers(p, config, num_sms, hw), order)
    if decode is None:
        decode = use_decode(p.seq_q, p.heads, p.kv_heads, p.seq_kv, block_mask)
    if decode:
        if block_mask is not None:
            raise IosimError("split-KV decode does not take a block_mask")
        bn = config.block_n
        s = num_splits or decode_splits(p.batch, p.kv_heads, p.seq_kv, bn, num_sms)
        return decode_schedule(p, config, s)
    if block_mask is not None:
        from iosim.models import block_sparse
        mask = kernel_mask(block_mask, p, config.block_m, config.block_n)
        return block_sparse.build(p, config, hw, block_mask=mask)
    from iosim.models import flash2
    return flash2.build(p, config, hw)


def decode_schedule(p: Problem, cfg: KernelConfig, num_splits: int) -> Schedule:
    """GQA-packed split-KV decode + combine, as ``kernels._decode_kernel`` / ``kernels._combine_kernel`` run them.

    Kernel 1, grid (split s, b, KV head hk): loads the G·Nq query rows of heads hk·G … hk·G+G−1, walks KV blocks
    [s·bps, min((s+1)·bps, T_c)) (every row masked for causal; no block is skipped: the last query row sees every
    key), stores the partial O (fp32, [B, Hkv, S, M, d]) and LSE (fp32, [B, Hkv, S, M]).
    Kernel 2, grid (row r, b, hk): loads the S partial LSEs and O rows of r, writes O and LSE of query head
    hk·G + ⌊r/Nq⌋, position r mod Nq. (Its S strided 4-byte LSE loads cost a 32-byte sector each on the GPU.)
    """
    B, H, Hk, Nq, Nkv, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    G = H // Hk
    bn = cfg.block_n
    M, bm, bps, S = decode_geometry(p, bn, num_splits)
    tn = cdiv(Nkv, bn)
    s, b, hk, g, j, r = var("split"), var("b"), var("hk"), var("g"), var("j"), var("r")
    rows, cols = full(M), Span(j, bn, Nkv)
    step = (
        Load("k", Tile("K", (point(b, B), point(hk, Hk), cols, full(d)))),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("online_softmax", ("s", "m", "l", "acc"),
                exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                other=(Work(4, (rows, cols)), Work(d + 4, (rows,)))),
        Load("v", Tile("V", (point(b, B), point(hk, Hk), cols, full(d)))),
        Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
    )
    part = (point(b, B), point(hk, Hk), point(s, S))
    split_k = Kernel("iosim_decode_split", (GridAxis("n", s, S), GridAxis("b", b, B), GridAxis("h", hk, Hk)), (
        Buffer("q", (bm, d), e, space="reg"),
        Buffer("k", (bn, d), e, pipelined=True),
        Buffer("v", (bn, d), e, pipelined=True),
        Buffer("s", (bm, bn), 4, space="reg"),
        Buffer("acc", (bm, d), 4, space="reg"),
        Buffer("m", (bm,), STAT_BYTES, space="reg"),
        Buffer("l", (bm,), STAT_BYTES, space="reg"),
        Buffer("lse", (bm,), STAT_BYTES, space="reg"),
    ), (
        Loop(g, 0, G, (Load("q", Tile("Q", (point(b, B), point(hk * G + g, H), full(Nq), full(d)))),)),
        Loop(j, s * bps, sp.Min((s + 1) * bps, tn), step),
        Compute("finalize_split", ("acc", "m", "l", "lse"), exp=(Work(1, (rows,)),), other=(Work(d + 1, (rows,)),)),
        Store("acc", Tile("O_part", part + (rows, full(d)))),
        Store("lse", Tile("LSE_part", part + (rows,))),
    ), threads_per_cta=128)
    combine = Kernel("iosim_decode_combine", (GridAxis("m", r, M), GridAxis("b", b, B), GridAxis("h", hk, Hk)), (
        Buffer("lse_s", (S,), STAT_BYTES, space="reg"),
        Buffer("o_s", (S, d), 4, space="reg"),
        Buffer("acc", (d,), 4, space="reg"),
        Buffer("lse", (1,), STAT_BYTES, space="reg"),
    ), (
        Load("lse_s", Tile("LSE_part", (point(b, B), point(hk, Hk), full(S), point(r, M)))),
        Load("o_s", Tile("O_part", (point(b, B), point(hk, Hk), full(S), point(r, M), full(d)))),
        Compute("combine", ("lse_s", "o_s", "acc", "lse"), exp=(Work(S + 1),), other=(Work(S * (2 * d + 4) + d + 1),)),
        Store("acc", Tile("O", (point(b, B), point(hk * G + sp.floor(r / Nq), H), point(r - Nq * sp.floor(r / Nq), Nq),
                                full(d)))),
        Store("lse", Tile("LSE", (point(b, B), point(hk * G + sp.floor(r / Nq), H),
                                  point(r - Nq * sp.floor(r / Nq), Nq)))),
    ), threads_per_cta=32)
    tensors = {
        "Q": TensorSpec("Q", (B, H, Nq, d), e, "input"),
        "K": TensorSpec("K", (B, Hk, Nkv, d), e, "input"),
        "V": TensorSpec("V", (B, Hk, Nkv, d), e, "input"),
        "O": TensorSpec("O", (B, H, Nq, d), e, "output"),
        "LSE": TensorSpec("LSE", (B, H, Nq), STAT_BYTES, "output"),
        "O_part": TensorSpec("O_part", (B, Hk, S, M, d), 4, "scratch"),
        "LSE_part": TensorSpec("LSE_part", (B, Hk, S, M), STAT_BYTES, "scratch"),
    }
    notes = (f"GQA-packed split-KV decode: {M} query rows (G={G} heads × Nq={Nq}) per KV head, {S} splits of "
             f"{bps} KV blocks of {bn}",)
    return Schedule("iosim-triton-decode", p, cfg, tensors, (split_k, combine), notes)


# --- backward ----------------------------------------------------------------------------------------------------

# Backward tiles per head dim (BLOCK_M query rows, BLOCK_N keys, num_warps, num_stages): legal and reasonable, NOT
# tuned (no GPU timing yet). FA2's own choice for d 64/128 (flash_bwd_launch_template.h: 64×128, 8 warps); shared
# memory (Q, dO pipelined × stages, K, V): d=128 bf16 2·2·64·128·2 + 2·128·128·2 = 128 KiB ≤ 227 KiB (H100/H200);
# registers: dK, dV fp32 128×d over 256 threads = d regs/thread.
BWD_DEFAULT_CONFIGS: dict[int, tuple[int, int, int, int]] = {64: (64, 128, 8, 2), 128: (64, 128, 8, 2)}
BWD_OTHER_CONFIG = (64, 64, 8, 2)  # other head dims (d=256: 2·2·64·256·2 + 2·64·256·2 = 192 KiB of shared memory)
BWD_MASK_FLOPS = 2  # per element of a diagonal-band tile: the causal compare and the select (as flash2.MASK_FLOPS)


def backward_config(head_dim: int, kc: KernelConfig | None = None) -> KernelConfig:
    """The KernelConfig ``attention_backward`` launches for a caller's ``kc``: missing tiles from
    ``BWD_DEFAULT_CONFIGS``, and warps/stages too unless the caller gave block_m. The launch order is fixed (grid
    (n|m, b, h), query blocks ascending): a kc asking for other orders is refused."""
    kc = KernelConfig() if kc is None else kc
    if kc.grid_order != ("m", "b", "h") or kc.kv_order != "ascending" or kc.q_order != "ascending":
        raise IosimError(f"the Triton backward has a fixed launch order; got grid_order={kc.grid_order}, "
                         f"kv_order={kc.kv_order!r}, q_order={kc.q_order!r}: leave them at their defaults")
    bm, bn, w, s = BWD_DEFAULT_CONFIGS.get(head_dim, BWD_OTHER_CONFIG)
    return replace(kc, block_m=kc.block_m or bm, block_n=kc.block_n or bn,
                   num_warps=kc.num_warps if kc.block_m else w, num_stages=kc.num_stages if kc.block_m else s,
                   band_loop=True)


def backward_preset_config(p: Problem, sram_bytes: int | None = None) -> KernelConfig:
    """The config of ``attention_backward(..., config=None)`` for the ``iosim-triton`` preset's backward."""
    if isinstance(p.head_dim, int):
        check_head_dim(p.head_dim)
    return replace(backward_config(p.head_dim), sram_bytes=sram_bytes)


def backward_schedule(p: Problem, cfg: KernelConfig) -> Schedule:
    """The three launches of ``kernels.attention_backward`` (FA2 Algorithm 2; Dao-AILab/flash-attention's split
    into preprocess / main / convert_dQ), statement for statement.

    1. ``_bwd_preprocess``, grid (query block i, b, h): loads O_i, dO_i; stores D_i = rowsum(dO_i ∘ O_i) (fp32) and
       a zero dQ_accum tile (fp32).
    2. ``_bwd_kernel``, grid (KV block j, b, KV head hk): loads K_j, V_j once; for each query head h = hk·G + g of
       the group (GQA: no expanded dK/dV) and each query block i ≥ lo(j) (causal: the first block with a row that
       sees a key of block j) loads Q_i, dO_i, LSE_i, D_i, recomputes P, accumulates dV_j, dK_j (fp32) and
       atomically adds its dS K_j into the dQ_accum tile (``Store(atomic=True)``: fp32 RED, nothing returns to the
       SM); stores dK_j (× scale) and dV_j once in the problem dtype. Causal: blocks [lo, mid) are the masked band
       (a row misses a key of block j), [mid, T_r) unmasked, two loops as in the kernel. (The kernel also masks
       every step of a ragged last KV block for Nkv; like ``flash2``'s non-causal loop, the schedule counts no mask
       work for it.)
    3. ``_bwd_convert``, grid (i, b, h): loads dQ_accum_i, stores dQ_i = scale · dQ_accum_i (problem dtype).

    Work per (i, j) tile of r×c valid elements, as ``models/flash2_bwd.py`` counts it: matmul 5 × 2·r·c·d; exp
    r·c; other 4·r·c (+ ``BWD_MASK_FLOPS``·r·c in the band); the dQ add happens at the L2 (no SM work).
    LSE of a row that sees no key: the kernel reads −∞ (the forward's) as +∞, so P = 0 (``iosim.reference``'s
    convention is +∞)."""
    if cfg.block_m is None or cfg.block_n is None:
        raise IosimError("backward_schedule needs config.block_m and config.block_n (use backward_config)")
    B, H, Hk, Nq, Nkv, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    G, bm, bn = H // Hk, cfg.block_m, cfg.block_n
    tm, tn = cdiv(Nq, bm), cdiv(Nkv, bn)
    pm, pn, b, h, hk, g, i = (var(n) for n in ("pid_m", "pid_n", "b", "h", "hk", "g", "i"))

    def q_tile(name, head, rows):
        return Tile(name, (point(b, B), point(head, H), rows, full(d)))

    def row_tile(name, head, rows):
        return Tile(name, (point(b, B), point(head, H), rows))

    rows_p = Span(pm, bm, Nq)
    grid_q = (GridAxis("m", pm, tm), GridAxis("b", b, B), GridAxis("h", h, H))
    pre = Kernel("_bwd_preprocess", grid_q, (
        Buffer("o", (bm, d), e, space="reg"), Buffer("do", (bm, d), e, space="reg"),
        Buffer("delta", (bm,), STAT_BYTES, space="reg"), Buffer("dq", (bm, d), 4, space="reg")), (
        Load("o", q_tile("O", h, rows_p)),
        Load("do", q_tile("dO", h, rows_p)),
        Compute("bwd_delta", ("o", "do", "delta"), other=(Work(2 * d, (rows_p,)),)),
        Store("delta", row_tile("D", h, rows_p)),
        Compute("zero", ("dq",)),
        Store("dq", q_tile("dQ_accum", h, rows_p)),
    ), threads_per_cta=128)

    head = hk * G + g
    rows, cols = Span(i, bm, Nq), Span(pn, bn, Nkv)

    def step(masked: bool) -> tuple:
        return (
            Load("q", q_tile("Q", head, rows)),
            Load("do", q_tile("dO", head, rows)),
            Load("lse", row_tile("LSE", head, rows)),
            Load("delta", row_tile("D", head, rows)),
            Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),), other=(Work(1, (rows, cols)),)),
            Compute("bwd_p", ("s", "lse"), exp=(Work(1, (rows, cols)),),
                    other=(Work(1 + (BWD_MASK_FLOPS if masked else 0), (rows, cols)),)),
            Compute("bwd_dv", ("s", "do", "dv"), matmul=(Work(2 * d, (rows, cols)),)),
            Compute("bwd_dp", ("do", "v", "dp"), matmul=(Work(2 * d, (rows, cols)),)),
            Compute("bwd_ds", ("s", "dp", "delta"), other=(Work(2, (rows, cols)),)),
            Compute("bwd_dk", ("dp", "q", "dk"), matmul=(Work(2 * d, (rows, cols)),)),
            Compute("bwd_dq", ("dp", "k", "dq"), matmul=(Work(2 * d, (rows, cols)),)),
            Store("dq", q_tile("dQ_accum", head, rows), atomic=True),
        )

    if p.causal:
        shift = Nkv - Nq  # row r sees key c iff c ≤ r + shift (bottom-right)
        lo = clamp(sp.floor(sp.Max(pn * bn - shift, 0) / bm), 0, tm)
        mid = clamp(cdiv(sp.Max((pn + 1) * bn - 1 - shift, 0), bm), lo, tm)
        q_loops = (Loop(i, lo, mid, step(True)), Loop(i, mid, tm, step(False)))
    else:
        q_loops = (Loop(i, 0, tm, step(False)),)
    kv = (point(b, B), point(hk, Hk), cols, full(d))
    main = Kernel("_bwd_kernel", (GridAxis("n", pn, tn), GridAxis("b", b, B), GridAxis("h", hk, Hk)), (
        Buffer("q", (bm, d), e, pipelined=True), Buffer("do", (bm, d), e, pipelined=True),
        Buffer("k", (bn, d), e), Buffer("v", (bn, d), e),
        Buffer("lse", (bm,), STAT_BYTES, space="reg"), Buffer("delta", (bm,), STAT_BYTES, space="reg"),
        Buffer("s", (bm, bn), 4, space="reg"), Buffer("dp", (bm, bn), 4, space="reg"),
        Buffer("p", (bm, bn), e, space="reg", transient=True), Buffer("ds", (bm, bn), e, space="reg", transient=True),
        Buffer("dq", (bm, d), 4, space="reg"), Buffer("dk", (bn, d), 4, space="reg"),
        Buffer("dv", (bn, d), 4, space="reg")), (
        Load("k", Tile("K", kv)),
        Load("v", Tile("V", kv)),
        Loop(g, 0, G, q_loops),
        Compute("scale", ("dk",), other=(Work(d, (cols,)),)),
        Store("dk", Tile("dK", kv)),
        Store("dv", Tile("dV", kv)),
    ), threads_per_cta=32 * cfg.num_warps)

    convert = Kernel("_bwd_convert", grid_q, (Buffer("dq", (bm, d), 4, space="reg"),), (
        Load("dq", q_tile("dQ_accum", h, rows_p)),
        Compute("scale", ("dq",), other=(Work(d, (rows_p,)),)),
        Store("dq", q_tile("dQ", h, rows_p)),
    ), threads_per_cta=128)
    q_shape, kv_shape = (B, H, Nq, d), (B, Hk, Nkv, d)
    tensors = {n: TensorSpec(n, shape, eb, role) for n, shape, eb, role in (
        ("Q", q_shape, e, "input"), ("K", kv_shape, e, "input"), ("V", kv_shape, e, "input"),
        ("O", q_shape, e, "input"), ("dO", q_shape, e, "input"), ("LSE", (B, H, Nq), STAT_BYTES, "input"),
        ("D", (B, H, Nq), STAT_BYTES, "scratch"), ("dQ_accum", q_shape, 4, "scratch"),
        ("dQ", q_shape, e, "output"), ("dK", kv_shape, e, "output"), ("dV", kv_shape, e, "output"))}
    notes = (f"Triton backward: tiles {bm}×{bn}, {cfg.num_warps} warps; dQ by fp32 atomic adds"
             + (f"; GQA: each program walks the {G} query heads of its KV head" if G > 1 else ""),)
    return Schedule("iosim-triton-bwd", p, cfg, tensors, (pre, main, convert), notes)


# --- persistent forward and stream-K decode (issue 21) -----------------------------------------------------------

PERSISTENT_ORDERS = ("rr", "lpt")


def persistent_order(causal: bool, order: str | None) -> str:
    """The item order of the persistent forward: None → "lpt" when causal (longest KV loop first), else "rr"."""
    order = ("lpt" if causal else "rr") if order is None else order
    if order not in PERSISTENT_ORDERS:
        raise IosimError(f"order={order!r}: use 'rr' (query block fastest) or 'lpt' (longest KV loop first)")
    return order


def check_persistent_config(cfg: KernelConfig) -> None:
    if cfg.grid_order != ("m", "b", "h") or cfg.q_order != "ascending":
        raise IosimError(f"the persistent kernel orders its items by order='rr'|'lpt'; got grid_order={cfg.grid_order}, "
                         f"q_order={cfg.q_order!r}: leave them at their defaults")


def persistent_items(p: Problem, block_m: int, order: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, b, h) of work item u = 0 … T_r·B·H − 1, as ``kernels._persistent_fwd_kernel`` decodes u. "rr": query block
    fastest, then batch, then head (the non-persistent grid (m, b, h)); "lpt": query blocks descending (causal: the
    longest KV loop first, FA3's LPT order), within a block head fastest (a GQA group's heads adjacent), then batch."""
    tm, B, H = cdiv(p.seq_q, block_m), p.batch, p.heads
    u = np.arange(tm * B * H, dtype=np.int64)
    if order == "rr":
        return u % tm, (u // tm) % B, u // (tm * B)
    return tm - 1 - u // (B * H), (u % (B * H)) // H, u % H


PERSISTENT_SMEM_MEASURED = {(128, 64, 128, 2): 131_104, (64, 128, 64, 2): 82_944}
"""(block_m, block_n, head_dim, stages) → dynamic shared memory of ``kernels._persistent_fwd_kernel`` (bf16, TMA):
ncu ``launch__shared_mem_per_block_dynamic`` on the H100, 2026-12-06 (reports/validation/h100/persistent_raw/
kernels.csv, every case of a head dim alike). Larger than the dense forward's buffers (Q + stages × (K + V)): the
persistent kernel also stages its O tile for the TMA store (d = 128: 32,768 + 65,536 + 32,768 + 32 B of barriers =
131,104). At d = 128 that is one CTA per SM, not the two the buffers allowed: a per-item trace (reports/validation/
h100/persistent_trace_raw, ``benchmarks/gpu/diag_persistent_trace.py``) shows workers 132–263 starting only when the
worker before them on their SM has finished all its items."""


def persistent_smem_bytes(bm: int, bn: int, d: int, elem: int, stages: int) -> int:
    """Dynamic shared memory of the persistent forward: measured (``PERSISTENT_SMEM_MEASURED``) where known, else
    Q + stages × (K + V) + the O staging tile + 32 B of barriers (what reproduces the d = 128 measurement)."""
    got = PERSISTENT_SMEM_MEASURED.get((bm, bn, d, stages)) if elem == 2 else None
    return got if got is not None else bm * d * elem * 2 + stages * 2 * bn * d * elem + 32


def persistent_workers(p: Problem, cfg: KernelConfig, num_sms: int = 132, hw=None) -> int:
    """Default worker count: num_sms × the CTAs per SM that fit (``iosim.occupancy`` of the persistent kernel on ``hw``,
    default the H100 profile), at most one worker per item."""
    from iosim.hwprofile import load_hardware
    from iosim.occupancy import occupancy
    kern = persistent_schedule(p, cfg, 1).kernels[0]
    per_sm = occupancy(kern, hw or load_hardware("h100"), cfg.num_stages).ctas_per_sm
    return max(1, min(num_sms * per_sm, cdiv(p.seq_q, cfg.block_m) * p.batch * p.heads))


def persistent_schedule(p: Problem, cfg: KernelConfig, num_workers: int, order: str | None = None) -> Schedule:
    """``kernels._persistent_fwd_kernel``: grid (W,), worker w runs items u = w, w + W, … (static round-robin) in
    ``persistent_items``' order (``models.persistent.static_round_robin``), each item exactly the non-persistent program
    of its (i, b, h) (flash2's loops, band loop under causal masking), its buffers fresh (``models.persistent.reset``). The item tiles are tables:
    num_items [W] (⌈(U − w)/W⌉ for U items) and item_m / item_b / item_h [W, max items] (``lookup``)."""
    from iosim.models import flash2
    from iosim.models._common import lse_tensor, q_tile, qkvo_tensors, row_tile
    from iosim.models.persistent import reset, static_round_robin
    if cfg.block_m is None or cfg.block_n is None:
        raise IosimError("persistent_schedule needs config.block_m and config.block_n (the kernel's tiles)")
    check_persistent_config(cfg)
    order = persistent_order(p.causal, order)
    if not isinstance(num_workers, int) or num_workers < 1:
        raise IosimError(f"num_workers={num_workers!r}: give a positive integer")
    bm, bn, d, e, W = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes, num_workers
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    U = tm * p.batch * p.heads
    work = static_round_robin(U, W)
    tables = {"num_items": work.count} | {n: a[work.item] for n, a in
                                          zip(("item_m", "item_b", "item_h"), persistent_items(p, bm, order))}
    w, t, j = var("w"), var("t"), var("j")
    i, b, h = (lookup(table(n), w, t) for n in ("item_m", "item_b", "item_h"))
    rows = Span(i, bm, p.seq_q)
    item = (reset(flash2.buffers(bm, bn, d, e)), Load("q", q_tile(p, "Q", b, h, rows)),
            *flash2.kv_loops(p, cfg, b, h, i, rows, j, bm, bn, tn), flash2.finalize(p, rows),
            Store("acc", q_tile(p, "O", b, h, rows)), Store("lse", row_tile(p, "LSE", b, h, rows)))
    kernel = Kernel("iosim_persistent_fwd", (GridAxis("w", w, W),), flash2.buffers(bm, bn, d, e),
                    (Loop(t, 0, lookup(table("num_items"), w), item),), threads_per_cta=32 * cfg.num_warps,
                    persistent=True, smem_bytes=persistent_smem_bytes(bm, bn, d, e, cfg.num_stages), static_items=True)
    notes = (f"persistent forward: {W} workers, {U} items ({tm} query blocks × B·H) in order {order!r}, static "
             "round-robin",)
    return Schedule("iosim-triton-persistent", p, cfg, qkvo_tensors(p) | {"LSE": lse_tensor(p)}, (kernel,), notes,
                    tables)


def streamk_workers(p: Problem, block_n: int, num_sms: int = 132) -> int:
    """Default stream-K workers, as LeanAttention's launcher (onnxruntime lean_api.cc): 2 per SM, ≈ T/2 when the
    stream has fewer tiles (T = B·Hkv·⌈Nkv/block_n⌉)."""
    return max(1, min(2 * num_sms, cdiv(p.batch * p.kv_heads * cdiv(p.seq_kv, block_n), 2)))


def streamk_segments(p: Problem, block_n: int, num_workers: int) -> tuple[int, int, int, dict]:
    """(W, KMAX, SMAX, tables) of ``kernels._streamk_decode_kernel``'s split. The T_c = ⌈Nkv/block_n⌉ KV tiles of
    each (b, KV head) pair π = b·Hkv + hk form one stream (tile π·T_c + j) of T tiles; W = min(num_workers, T)
    workers, worker w takes tiles [s_w, s_{w+1}), s_w = w·⌊T/W⌋ + min(w, T mod W) (⌈T/W⌉ tiles for the first T mod W
    workers, ⌊T/W⌋ for the rest). Cut at pair boundaries, a worker's range gives its segments; its k-th segment's
    partial goes to scratch slot (w, k), k < KMAX (``models.persistent.stream_k``, LeanAttention's split). Tables: seg_num [W], seg_b / seg_hk / seg_lo / seg_hi [W, KMAX]
    (pair and KV block range [lo, hi) of each segment); pair_num [B, Hkv], pair_w / pair_k [B, Hkv, SMAX] (the slots
    holding a pair's partials, SMAX at most per pair)."""
    from iosim.models.persistent import stream_k
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise IosimError(f"num_workers={num_workers!r}: give a positive integer")
    B, Hk, tn = p.batch, p.kv_heads, cdiv(p.seq_kv, block_n)
    T = B * Hk * tn
    W = min(num_workers, T)
    sk = stream_k(np.full(B * Hk, tn), W)
    segs = [[(int(sk.tile[w, k]) // Hk, int(sk.tile[w, k]) % Hk, int(sk.lo[w, k]), int(sk.hi[w, k]))
             for k in range(sk.count[w])] for w in range(W)]
    pairs: list[list] = [[] for _ in range(B * Hk)]
    for w, sg in enumerate(segs):
        for k, (b, hk, _, _) in enumerate(sg):
            pairs[b * Hk + hk].append((w, k))
    kmax, smax = max(map(len, segs)), max(map(len, pairs))

    def pad(lists, width, nf):
        a = np.zeros((len(lists), width, nf), dtype=np.int64)
        for x, row in enumerate(lists):
            if row:
                a[x, :len(row)] = row
        return a
    sa, pa = pad(segs, kmax, 4), pad(pairs, smax, 2).reshape(B, Hk, smax, 2)
    tables = {"seg_num": np.array([len(s) for s in segs]), "pair_num": np.array([len(x) for x in pairs]).reshape(B, Hk)}
    tables |= {n: sa[..., c] for c, n in enumerate(("seg_b", "seg_hk", "seg_lo", "seg_hi"))}
    tables |= {"pair_w": pa[..., 0], "pair_k": pa[..., 1]}
    return W, kmax, smax, tables


def _op_packed_online_softmax(ctx, s, m, l, acc):
    """``online_softmax`` over GQA-packed rows (row ρ = g·Nq + n is query position n): the causal mask by position."""
    from iosim import reference
    r, c = s.ext
    if ctx.causal:
        pos = (s.origin[0] + np.arange(r)) % int(ctx.problem.seq_q)
        vis = (s.origin[1] + np.arange(c))[None, :] <= pos[:, None] + ctx.shift
        s.data[:r, :c] = np.where(vis, s.data[:r, :c], -np.inf)
    win, ctx.window = ctx.window, (-1, -1)
    try:
        reference.op_online_softmax(ctx, s, m, l, acc)
    finally:
        ctx.window = win


def streamk_decode_schedule(p: Problem, cfg: KernelConfig, num_workers: int) -> Schedule:
    """Stream-K decode (LeanAttention, arXiv 2405.10480) as ``kernels._streamk_decode_kernel`` and
    ``kernels._streamk_combine_kernel`` run it; the split is ``streamk_segments``'.

    Q, O and LSE appear as views [B, Hkv, M, …], M = G·Nq (the same memory: the G query heads of a KV head are
    consecutive), so a pair's packed rows are one tile. Kernel 1, grid (W,), persistent: per segment (b, hk, KV blocks
    [lo, hi)) it loads the M query rows, walks the blocks (every step masked, as the split-KV decode), stores the
    partial O (fp32) and LSE to slot (w, k) of O_part [W, KMAX, M, d] / LSE_part [W, KMAX, M]. Kernel 2, grid (row r,
    b, hk): loads the LSE and O row of each of the pair's slots (the kernel loads all LSEs, then all O rows: same
    bytes) and writes O and LSE. Every segment goes through scratch, also a pair one worker covers whole.
    LeanAttention instead reduces in the decode kernel: the CTA holding a tile's last segment ("host") waits on sync
    flags and reads the other CTAs' partials; it writes no partial of its own and needs no second launch. So ours
    moves, per pair, one more partial: M·(d + 1)·4 bytes written and read back, plus a launch (and writes the LSE,
    B·H·Nq·4 bytes, which LeanAttention does not output; ``models/lean.py`` is that in-kernel variant)."""
    if cfg.block_n is None:
        raise IosimError("streamk_decode_schedule needs config.block_n (the kernel's KV tile)")
    from iosim import reference
    from iosim.models.persistent import reset
    reference.OPS.setdefault("packed_online_softmax", _op_packed_online_softmax)
    B, H, Hk, Nq, Nkv, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    bn, M = cfg.block_n, (H // Hk) * Nq
    bm = max(16, 1 << (M - 1).bit_length())
    W, kmax, smax, tables = streamk_segments(p, bn, num_workers)
    w, k, j, r, s, b2, hk2 = (var(n) for n in ("w", "k", "j", "r", "s", "b", "hk"))
    b, hk = lookup(table("seg_b"), w, k), lookup(table("seg_hk"), w, k)
    rows, cols = full(M), Span(j, bn, Nkv)
    kv = (point(b, B), point(hk, Hk), cols, full(d))
    step = (
        Load("k", Tile("K", kv)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("packed_online_softmax", ("s", "m", "l", "acc"),
                exp=(Work(1, (rows, cols)), Work(1, (rows,))), other=(Work(4, (rows, cols)), Work(d + 4, (rows,)))),
        Load("v", Tile("V", kv)),
        Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
    )
    slot = (point(w, W), point(k, kmax))
    bufs = (Buffer("q", (bm, d), e, space="reg"), Buffer("k", (bn, d), e, pipelined=True),
            Buffer("v", (bn, d), e, pipelined=True), Buffer("s", (bm, bn), 4, space="reg"),
            Buffer("acc", (bm, d), 4, space="reg"), Buffer("m", (bm,), STAT_BYTES, space="reg"),
            Buffer("l", (bm,), STAT_BYTES, space="reg"), Buffer("lse", (bm,), STAT_BYTES, space="reg"))
    worker = Kernel("iosim_streamk_decode", (GridAxis("w", w, W),), bufs, (Loop(k, 0, lookup(table("seg_num"), w), (
        reset(bufs),
        Load("q", Tile("Q", (point(b, B), point(hk, Hk), rows, full(d)))),
        Loop(j, lookup(table("seg_lo"), w, k), lookup(table("seg_hi"), w, k), step),
        Compute("finalize_split", ("acc", "m", "l", "lse"), exp=(Work(1, (rows,)),), other=(Work(d + 1, (rows,)),)),
        Store("acc", Tile("O_part", slot + (rows, full(d)))),
        Store("lse", Tile("LSE_part", slot + (rows,))),
    )),), threads_per_cta=128, persistent=True)
    part = (point(lookup(table("pair_w"), b2, hk2, s), W), point(lookup(table("pair_k"), b2, hk2, s), kmax))
    one = (point(b2, B), point(hk2, Hk), point(r, M))
    combine = Kernel("iosim_streamk_combine", (GridAxis("m", r, M), GridAxis("b", b2, B), GridAxis("h", hk2, Hk)), (
        Buffer("lse_s", (1,), STAT_BYTES, space="reg"), Buffer("o_s", (1, d), 4, space="reg"),
        Buffer("m", (1,), STAT_BYTES, space="reg"), Buffer("l", (1,), STAT_BYTES, space="reg"),
        Buffer("acc", (1, d), 4, space="reg"), Buffer("lse", (1,), STAT_BYTES, space="reg"),
    ), (
        Loop(s, 0, lookup(table("pair_num"), b2, hk2), (
            Load("lse_s", Tile("LSE_part", part + (point(r, M),))),
            Load("o_s", Tile("O_part", part + (point(r, M), full(d)))),
            Compute("combine_step", ("lse_s", "o_s", "m", "l", "acc"), exp=(Work(2),), other=(Work(2 * d + 4),)),
        )),
        Compute("finalize", ("acc", "m", "l", "lse"), exp=(Work(1),), other=(Work(d + 1),)),
        Store("acc", Tile("O", one + (full(d),))),
        Store("lse", Tile("LSE", one)),
    ), threads_per_cta=32)
    tensors = {n: TensorSpec(n, dims, eb, role) for n, dims, eb, role in (
        ("Q", (B, Hk, M, d), e, "input"), ("K", (B, Hk, Nkv, d), e, "input"), ("V", (B, Hk, Nkv, d), e, "input"),
        ("O", (B, Hk, M, d), e, "output"), ("LSE", (B, Hk, M), STAT_BYTES, "output"),
        ("O_part", (W, kmax, M, d), 4, "scratch"), ("LSE_part", (W, kmax, M), STAT_BYTES, "scratch"))}
    T = B * Hk * cdiv(Nkv, bn)
    notes = (f"stream-K decode: {T} KV tiles of {bn} over {W} workers ({T // W}–{cdiv(T, W)} each), "
             f"{int(tables['seg_num'].sum())} segments, at most {smax} per (b, KV head); {M} packed rows per KV head",)
    return Schedule("iosim-triton-streamk", p, cfg, tensors, (worker, combine), notes, tables)
