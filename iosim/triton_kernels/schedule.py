"""The iosim schedule of exactly what ``iosim.triton_kernels.attention`` launches (no torch or triton needed).

* dense forward — ``models/flash2.py`` with the kernel's config: same grid (m, b, h in ``grid_order``), same Q tile
  per program, same KV blocks (``kv_stop`` under causal masking), same O and LSE stores;
* block-sparse forward — ``models/block_sparse.py`` with the mask expanded to the kernel's BLOCK_M × BLOCK_N tiles
  (a sparse block of block_m × block_n covers (block_m/BLOCK_M)·(block_n/BLOCK_N) kernel tiles; under causal
  masking the kernel, like that model, skips tiles wholly above the diagonal);
* split-KV decode — ``decode_schedule`` below: unlike ``models/splitkv.py`` (FA2, one CTA per query head), our
  decode kernel packs the G query heads that share a KV head into one program, so K/V are read once per KV head
  and split, not once per query head.

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
                            Work, cdiv, full, point, var)


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
    preset: ``launch_config`` of an empty config; refuses what the kernel refuses or runs differently (a head dim
    that is not a power of two in 16..256, a grid over the y/z limit, and split-KV decode shapes, which launch
    ``decode_schedule``'s two kernels: predict those with ``kernel_schedule(..., decode=True)``)."""
    concrete = all(isinstance(v, int) for v in (p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim))
    if not concrete:
        return replace(launch_config(p.head_dim, p.causal), sram_bytes=sram_bytes)
    check_head_dim(p.head_dim)
    if use_decode(p.seq_q, p.heads, p.kv_heads, p.seq_kv):
        raise IosimError(f"iosim-triton runs split-KV decode for this shape (G·Nq = {(p.heads // p.kv_heads) * p.seq_q}"
                         f" ≤ 64, Nkv = {p.seq_kv} ≥ 256); the preset models the dense forward only: use "
                         "iosim.triton_kernels.schedule.kernel_schedule(problem, config, decode=True)")
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


def kernel_schedule(p: Problem, config: KernelConfig, block_mask=None, decode: bool | None = None,
                    num_splits: int | None = None, hw=None, num_sms: int = 132) -> Schedule:
    """The schedule of ``attention(q, k, v, causal=p.causal, block_mask=..., config=config, decode=...)``.

    config must carry block_m and block_n (the launcher's defaults come from ``launch_config``)."""
    if config.block_m is None or config.block_n is None:
        raise IosimError("kernel_schedule needs config.block_m and config.block_n (the kernel's tiles)")
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
