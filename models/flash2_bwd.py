"""FlashAttention-2 backward (Dao, arXiv 2307.08691, Algorithm 2 and §3.2), as PyTorch 2.11's vendored FA2 runs it.

Sources (pytorch/pytorch, aten/src/ATen/native/transformers/cuda/flash_attn/): ``flash_api.cpp`` (mha_bwd: the
buffers), ``flash_bwd_launch_template.h`` (run_flash_bwd_seqk_parallel: the launches, tiles per head dim),
``flash_bwd_kernel.h`` (compute_dq_dk_dv_1colblock: the main loop), ``flash_bwd_preprocess_kernel.h``.

Buffers (mha_bwd): dq_accum fp32 [B, N_q_rounded, H, d_rounded] (layout B,S,H,D; N_q rounded up to 128, d up to 32
for d ≤ 128, else 64); softmax_d fp32 [B, H, N_q_rounded]; with GQA dk_expanded, dv_expanded [B, N_kv, H, d] in the
problem dtype. dq_accum tiles are B_r × kHeadDim (kHeadDim = d rounded up to 32, the traits' head dim), unpredicated:
ragged last tiles still move whole B_r-row tiles.

Kernels, every one with kNThreads = 32 × num_warps threads:

1. ``flash2_bwd_preprocess`` (``flash_bwd_dot_do_o_kernel<Clear_dQaccum=true>``), grid (T_r, B, H): reads O_i, dO_i,
   writes D_i = rowsum(dO_i ∘ O_i) (fp32) and zero-fills its dq_accum tile.
2. ``flash2_bwd`` (``flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel``), grid (T_c, B, H): loads K_j, V_j once, keeps
   dK_j, dV_j (fp32) on chip and walks the query blocks i from the last down to the first that sees key block j
   (causal), in reverse (the row offsets start at m_block_max − 1). Per step: loads Q_i, dO_i, LSE_i, D_i, recomputes
   S = scale·Q_iK_jᵀ, P = exp(S − LSE_i); dV_j += Pᵀ dO_i; dP = dO_i V_jᵀ; dS = P ∘ (dP − D_i); dK_j += dSᵀ Q_i; and
   atomically adds its dQ partial dS K_j into the dq_accum tile (fp32 ``atomicAdd``, a RED: no dq_accum load).
   After the loop dK_j ·= scale; dK_j, dV_j are written once (GQA: into dk_expanded, dv_expanded per query head).
   Measured 147,456 B of shared memory at d = 64 and 128 with the default tiles (../shared/devices.md).
3. GQA only: ``flash2_bwd_gqa_reduce_dk``, ``_dv``: ATen's ``at::sum_out(dk, dk_expanded.reshape(B, N_kv, H_kv, G,
   d), {3})`` (two ``reduce_kernel`` launches): each reads its expanded gradient once and writes dK (dV) once; the
   grid (T_c, B, H_kv) is this model's, not ATen's reduce configuration.
4. ``flash2_bwd_convert_dq`` (``flash_bwd_convert_dq_kernel``), grid (T_r, B, H): reads the dq_accum tile, writes
   dQ = scale·dQ_accum (problem dtype).

Per head (non-causal, g = 1, e = element bytes, R = T_r·B_r, k = kHeadDim): preprocess reads 2·N_q·d·e, writes
4·N_q (D) + 4·R·k (zero fill); main reads 2·N_kv·d·e once and, per KV block, (2·N_q·d·e) + 8·N_q (Q, dO, LSE, D),
atomically adds 4·R·k per KV block (SM write bytes, never read back), writes 2·N_kv·d·e; convert reads 4·R·k,
writes N_q·d·e. GQA reduce: reads 2·g·N_kv·d·e, writes 2·N_kv·d·e per KV head.

Work per (i, j) tile of r×c valid elements (counting convention): matmul 5 × 2·r·c·d (S, dV, dP, dK, dQ;
FA4 §3.2.1's 10·M·N·d); exp r·c (P); other 4·r·c (scale S, subtract LSE, dP − D, ∘P); the dQ sum happens in the
L2 (atomics). Preprocess: other 2·r·d (multiply, sum). dK scale: c·d. Convert: d per row. GQA reduce: d per row per head.

Block-sparse (``block_mask``, as for ``block_sparse``): the inner loop visits only the query blocks listed for KV
block j, from the transposed mask compressed FlexAttention-style into q_num_blocks[.., j] / q_indices[.., j, t]
(BlockMask's backward tables); i = q_indices[j, t] is a data-dependent loop (``iosim.expr.Lookup``), walked in
reverse like the dense loop.

Tiles: block_m = query rows (kBlockM), block_n = keys (kBlockN). Defaults from flash_bwd_launch_template.h
(sm80/sm90): hdim 32: 128×128; hdim 64: 128×128 if a block may use ≥ 144 KB of shared memory, else 64×128;
hdim 96/128: 64×128; larger: 64×64 (the facts file verifies hdim 128 and 256).
Shared memory: Q, dO (B_r×d) and K, V (B_c×d) in the problem dtype, LSE and D (B_r, fp32).
"""

from __future__ import annotations

import numpy as np

from iosim.models._common import check_fit, check_head_dim, kv_tile, q_tile, row_tile
from iosim.models.flash1 import q_start
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, full, lookup, point, table, var)

DEFAULT_TILES = {32: (128, 128), 64: (128, 128), 128: (64, 128), 256: (64, 64)}
"""(kBlockM, kBlockN) of FA2's backward by head dim (flash_bwd_launch_template.h, sm80/sm90, ≥ 144 KB smem)."""


def default_tiles(head_dim: int, smem_bytes: int | None = None) -> tuple[int, int]:
    """FA2's backward tile for head_dim; hdim 64 drops to 64×128 when a block gets < 144 KB of shared memory."""
    if 32 < head_dim <= 64 and smem_bytes is not None and smem_bytes < 144 * 1024:
        return 64, 128
    for d, t in sorted(DEFAULT_TILES.items()):
        if head_dim <= d:
            return t
    return 64, 64


MEASURED_SMEM_BYTES = {64: 147_456, 128: 147_456}
"""Dynamic shared memory of the main kernel at its default tiles, by head dim (ncu on the H200, ../shared/devices.md)."""


def head_dims(d):
    """(kHeadDim, d_rounded): the traits' head dim (d rounded up to 32) and dq_accum's last dim (mha_bwd: d rounded up
    to 32 for d ≤ 128, else to 64). Symbolic d: the kHeadDim expression; d_rounded only shapes the tensor."""
    k = cdiv(d, 32) * 32
    if not isinstance(d, int):
        return k, k
    return k, -(-d // (32 if d <= 128 else 64)) * (32 if d <= 128 else 64)


def tensors(p: Problem, rows_rounded, d_rounded) -> dict[str, TensorSpec]:
    """Inputs Q, K, V, O, dO (problem dtype), LSE (fp32); outputs dQ, dK, dV; scratch D [B, H, R] and dQ_accum
    [B, R, H, d_rounded] (fp32, R = rows_rounded) and, for GQA, dK/dV expanded per query head [B, N_kv, H, d]."""
    e, B, H, Hk, Nq, Nk, d = p.elem_bytes, p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim
    out = {
        "Q": TensorSpec("Q", (B, H, Nq, d), e, "input"),
        "K": TensorSpec("K", (B, Hk, Nk, d), e, "input"),
        "V": TensorSpec("V", (B, Hk, Nk, d), e, "input"),
        "O": TensorSpec("O", (B, H, Nq, d), e, "input"),
        "dO": TensorSpec("dO", (B, H, Nq, d), e, "input"),
        "LSE": TensorSpec("LSE", (B, H, Nq), STAT_BYTES, "input"),
        "D": TensorSpec("D", (B, H, rows_rounded), STAT_BYTES, "scratch"),
        "dQ_accum": TensorSpec("dQ_accum", (B, rows_rounded, H, d_rounded), 4, "scratch"),
        "dQ": TensorSpec("dQ", (B, H, Nq, d), e, "output"),
        "dK": TensorSpec("dK", (B, Hk, Nk, d), e, "output"),
        "dV": TensorSpec("dV", (B, Hk, Nk, d), e, "output"),
    }
    if grouped(p):
        out["dK_expanded"] = TensorSpec("dK_expanded", (B, Nk, H, d), e, "scratch")
        out["dV_expanded"] = TensorSpec("dV_expanded", (B, Nk, H, d), e, "scratch")
    return out


def grouped(p: Problem) -> bool:
    return not (p.heads == p.kv_heads)


@register("flash2_bwd", "FlashAttention-2 backward as PyTorch runs it: delta pre-pass zero-fills dQ_accum; outer loop over K/V blocks, inner over Q blocks in reverse; dQ atomically added")
def build(p: Problem, cfg: KernelConfig, hw=None, block_mask=None) -> Schedule:
    """block_mask: optional bool [T_r, T_c] or [B, H, T_r, T_c] over (block_m × block_n) tiles (block-sparse)."""
    check_head_dim(p, "flash2_bwd")
    defaults = None
    if isinstance(p.head_dim, int):
        smem = cfg.sram_bytes if cfg.sram_bytes is not None else getattr(hw, "smem_per_block_bytes", None)
        defaults = default_tiles(p.head_dim, smem)
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = defaults or (64, 128)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    khd, d_r = head_dims(d)
    rows_r = cdiv(tm * bm, 128) * 128  # seqlen_q_rounded (multiple of 128), at least the tiles' rows
    b, h, pm, pn, i = var("b"), var("h"), var("pid_m"), var("pid_n"), var("i")
    bh = (GridAxis("b", b, p.batch), GridAxis("h", h, p.heads))
    g = grouped(p)
    threads = 32 * cfg.num_warps

    def accum_tile(blk):  # the whole B_r × kHeadDim tile of dq_accum [B, R, H, d_rounded] (unpredicated)
        return Tile("dQ_accum", (point(b, p.batch), Span(blk, bm, rows_r), point(h, p.heads), Span(0, khd, d_r)))

    def d_tile(rows):
        return Tile("D", (point(b, p.batch), point(h, p.heads), rows))

    rows_p = Span(pm, bm, p.seq_q)
    pre = Kernel("flash2_bwd_preprocess", (GridAxis("m", pm, tm),) + bh, (
        Buffer("o", (bm, d), e), Buffer("do", (bm, d), e),
        Buffer("delta", (bm,), STAT_BYTES, space="reg"), Buffer("dq", (bm, khd), 4, space="reg")), (
        Load("o", q_tile(p, "O", b, h, rows_p)),
        Load("do", q_tile(p, "dO", b, h, rows_p)),
        Compute("bwd_delta", ("o", "do", "delta"), other=(Work(2 * d, (rows_p,)),)),
        Store("delta", d_tile(rows_p)),
        Compute("zero", ("dq",)),
        Store("dq", accum_tile(pm)),
    ), threads_per_cta=threads)

    cols = Span(pn, bn, p.seq_kv)
    tables: dict = {}
    if block_mask is None:
        q_loop = lambda body: Loop(i, q_start(p, pn, bm, bn), tm, body, reverse=True)  # noqa: E731
    else:
        from iosim.models.block_sparse import block_visible_causal, compress, normalize_mask
        mask = normalize_mask(p, block_mask, tm, tn)
        if p.causal:
            mask = mask & block_visible_causal(p, tm, tn, bm, bn)
        qn, qi = compress(np.swapaxes(mask, -1, -2))
        tables = {"q_num_blocks": qn, "q_indices": qi}
        t = var("t")
        lead = (b, h) if mask.ndim == 4 else ()
        i = lookup(table("q_indices"), *lead, pn, t)
        q_loop = lambda body: Loop(t, 0, lookup(table("q_num_blocks"), *lead, pn), body, reverse=True)  # noqa: E731
    rows = Span(i, bm, p.seq_q)
    step = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Load("lse", row_tile(p, "LSE", b, h, rows)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),), other=(Work(1, (rows, cols)),)),
        Compute("bwd_p", ("s", "lse"), exp=(Work(1, (rows, cols)),), other=(Work(1, (rows, cols)),)),
        Load("do", q_tile(p, "dO", b, h, rows)),
        Compute("bwd_dv", ("s", "do", "dv"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("bwd_dp", ("do", "v", "dp"), matmul=(Work(2 * d, (rows, cols)),)),
        Load("delta", d_tile(rows)),
        Compute("bwd_ds", ("s", "dp", "delta"), other=(Work(2, (rows, cols)),)),
        Compute("bwd_dk", ("dp", "q", "dk"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("bwd_dq", ("dp", "k", "dq"), matmul=(Work(2 * d, (rows, cols)),)),
        Store("dq", accum_tile(i), atomic=True),
    )
    if g:  # per query head h: dk_expanded [B, N_kv, H, d]
        grad_tile = lambda name: Tile(name + "_expanded", (point(b, p.batch), cols, point(h, p.heads), full(d)))  # noqa: E731
    else:
        grad_tile = lambda name: kv_tile(p, name, b, h, cols)  # noqa: E731
    measured = isinstance(d, int) and (bm, bn) == defaults and d in MEASURED_SMEM_BYTES
    main = Kernel("flash2_bwd", (GridAxis("n", pn, tn),) + bh, (
        Buffer("q", (bm, d), e, pipelined=True), Buffer("do", (bm, d), e, pipelined=True),
        Buffer("k", (bn, d), e), Buffer("v", (bn, d), e),
        Buffer("lse", (bm,), STAT_BYTES), Buffer("delta", (bm,), STAT_BYTES),
        Buffer("s", (bm, bn), 4, space="reg"), Buffer("dp", (bm, bn), 4, space="reg"),
        Buffer("dq", (bm, khd), 4, space="reg"),
        Buffer("dk", (bn, d), 4, space="reg"), Buffer("dv", (bn, d), 4, space="reg")), (
        Load("k", kv_tile(p, "K", b, h, cols)),
        Load("v", kv_tile(p, "V", b, h, cols)),
        q_loop(step),
        Compute("scale", ("dk",), other=(Work(d, (cols,)),)),
        Store("dk", grad_tile("dK")),
        Store("dv", grad_tile("dV")),
    ), threads_per_cta=threads, smem_bytes=MEASURED_SMEM_BYTES[d] if measured else None)

    kernels = [pre, main]
    if g:
        hk = var("hk")
        for name in ("dK", "dV"):  # at::sum_out over the group: one reduce_kernel per gradient
            kernels.append(Kernel(f"flash2_bwd_gqa_reduce_{name.lower()}",
                                  (GridAxis("n", pn, tn), GridAxis("b", b, p.batch), GridAxis("h", hk, p.kv_heads)),
                                  (Buffer("x", (bn, p.group, d), e, space="reg"),
                                   Buffer("acc", (bn, d), 4, space="reg")), (
                Load("x", Tile(name + "_expanded", (point(b, p.batch), cols, Span(hk, p.group, p.heads), full(d)))),
                Compute("group_sum", ("x", "acc"), other=(Work(p.group * d, (cols,)),)),
                Store("acc", kv_tile(p, name, b, hk * p.group, cols)),
            ), threads_per_cta=threads))
    rows_c = Span(pm, bm, p.seq_q)
    kernels.append(Kernel("flash2_bwd_convert_dq", (GridAxis("m", pm, tm),) + bh,
                          (Buffer("acc", (bm, khd), 4, space="reg"), Buffer("dq", (bm, d), e, space="reg")), (
        Load("acc", accum_tile(pm)),
        Compute("convert_dq", ("acc", "dq"), other=(Work(d, (rows_c,)),)),
        Store("dq", q_tile(p, "dQ", b, h, rows_c)),
    ), threads_per_cta=threads))
    check_fit(main, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    notes = (f"tiles B_r={bm} (query rows), B_c={bn} (keys); dQ atomically added into fp32 dQ_accum",) + \
        ((f"GQA: dK, dV written per query head, then summed over groups of {p.group} (ATen reduce)",) if g else ())
    if block_mask is not None:
        notes += (f"block-sparse: {float(mask.mean()) if mask.size else 0.0:.1%} of {tm}×{tn} tiles visited",)
    return Schedule("flash2_bwd", p, cfg, tensors(p, rows_r, d_r), tuple(kernels), notes, tables=tables)
