"""FlashAttention-2 backward (Dao, arXiv 2307.08691, Algorithm 2 and §3.2), as the CUDA implementation launches it.

Kernels (Dao-AILab/flash-attention ``flash_bwd_launch_template.h``, ``flash_api.cpp``):

1. ``flash2_bwd_preprocess`` (``compute_dot_do_o``), one CTA per (query block i, b, h): reads O_i, dO_i, writes
   D_i = rowsum(dO_i ∘ O_i) (fp32) and clears the fp32 dQ accumulator tile (dQ_accum = 0).
2. ``flash2_bwd`` (main), one CTA per (KV block j, b, h): loads K_j, V_j once, keeps dK_j, dV_j (fp32) on chip, and
   walks the query blocks i (causal: from the first block with a row that sees key block j). Per step it loads
   Q_i, dO_i, LSE_i, D_i, recomputes S = scale·Q_iK_jᵀ and P = exp(S − LSE_i), then
   dV_j += Pᵀ dO_i; dP = dO_i V_jᵀ; dS = P ∘ (dP − D_i); dK_j += dSᵀ Q_i; dQ_i += dS K_j, the last as a
   read-modify-write of the fp32 dQ_accum tile (atomicAdd across the CTAs of different j, §3.2). After the loop
   dK_j ·= scale and dK_j, dV_j are written once.
   GQA/MQA: each query head's CTA writes its own dK, dV (``dk_expanded``, [B, H, N_kv, d]);
3. ``flash2_bwd_gqa_reduce`` (only when heads > kv_heads; ``at::sum`` over the group in flash_api.cpp): reads the
   g expanded gradients of each KV head and writes dK, dV.
4. ``flash2_bwd_convert_dq`` (``convert_dQ``): reads dQ_accum (fp32), writes dQ = scale·dQ_accum (problem dtype).

Per head (non-causal, g = 1): preprocess reads 2·N_q·d, writes N_q (fp32) + N_q·d (fp32); main reads K + V =
2·N_kv·d once and, per KV block, Q + dO = 2·N_q·d, LSE + D = 2·N_q (fp32) and dQ_accum N_q·d (fp32), writing
dQ_accum N_q·d (fp32) per KV block and dK + dV = 2·N_kv·d once; convert reads N_q·d (fp32), writes N_q·d.

Work per (i, j) tile of r×c valid elements (counting convention): matmul 5 × 2·r·c·d (S, dV, dP, dK, dQ;
FA4 §3.2.1's 10·M·N·d); exp r·c (P); other 4·r·c (scale S, subtract LSE, dP − D, ∘P) + r·d (dQ accumulate).
Preprocess: other 2·r·d (multiply, sum). dK scale: c·d. Convert: d per row. GQA reduce: d per row per head.

Block-sparse (``block_mask``, as for ``block_sparse``): the inner loop visits only the query blocks listed for KV
block j, from the transposed mask compressed FlexAttention-style into q_num_blocks[.., j] / q_indices[.., j, t]
(BlockMask's backward tables); i = q_indices[j, t] is a data-dependent loop (``iosim.expr.Lookup``).

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


def tensors(p: Problem) -> dict[str, TensorSpec]:
    """Inputs Q, K, V, O, dO (problem dtype), LSE (fp32); outputs dQ, dK, dV; scratch D, dQ_accum (fp32) and,
    for GQA, dK/dV expanded per query head."""
    e, B, H, Hk, Nq, Nk, d = p.elem_bytes, p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim
    out = {
        "Q": TensorSpec("Q", (B, H, Nq, d), e, "input"),
        "K": TensorSpec("K", (B, Hk, Nk, d), e, "input"),
        "V": TensorSpec("V", (B, Hk, Nk, d), e, "input"),
        "O": TensorSpec("O", (B, H, Nq, d), e, "input"),
        "dO": TensorSpec("dO", (B, H, Nq, d), e, "input"),
        "LSE": TensorSpec("LSE", (B, H, Nq), STAT_BYTES, "input"),
        "D": TensorSpec("D", (B, H, Nq), STAT_BYTES, "scratch"),
        "dQ_accum": TensorSpec("dQ_accum", (B, H, Nq, d), 4, "scratch"),
        "dQ": TensorSpec("dQ", (B, H, Nq, d), e, "output"),
        "dK": TensorSpec("dK", (B, Hk, Nk, d), e, "output"),
        "dV": TensorSpec("dV", (B, Hk, Nk, d), e, "output"),
    }
    if grouped(p):
        out["dK_expanded"] = TensorSpec("dK_expanded", (B, H, Nk, d), e, "scratch")
        out["dV_expanded"] = TensorSpec("dV_expanded", (B, H, Nk, d), e, "scratch")
    return out


def grouped(p: Problem) -> bool:
    return not (p.heads == p.kv_heads)


@register("flash2_bwd", "FlashAttention-2 backward: delta pre-pass; outer loop over K/V blocks, inner over Q blocks; dQ read-modify-written per step")
def build(p: Problem, cfg: KernelConfig, hw=None, block_mask=None) -> Schedule:
    """block_mask: optional bool [T_r, T_c] or [B, H, T_r, T_c] over (block_m × block_n) tiles (block-sparse)."""
    check_head_dim(p, "flash2_bwd")
    if cfg.block_m is None or cfg.block_n is None:
        smem = cfg.sram_bytes if cfg.sram_bytes is not None else getattr(hw, "smem_per_block_bytes", None)
        dm, dn = default_tiles(p.head_dim, smem) if isinstance(p.head_dim, int) else (64, 128)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    b, h, pm, pn, i = var("b"), var("h"), var("pid_m"), var("pid_n"), var("i")
    bh = (GridAxis("b", b, p.batch), GridAxis("h", h, p.heads))
    g = grouped(p)

    rows_p = Span(pm, bm, p.seq_q)
    pre = Kernel("flash2_bwd_preprocess", (GridAxis("m", pm, tm),) + bh, (
        Buffer("o", (bm, d), e), Buffer("do", (bm, d), e),
        Buffer("delta", (bm,), STAT_BYTES, space="reg"), Buffer("dq", (bm, d), 4, space="reg")), (
        Load("o", q_tile(p, "O", b, h, rows_p)),
        Load("do", q_tile(p, "dO", b, h, rows_p)),
        Compute("bwd_delta", ("o", "do", "delta"), other=(Work(2 * d, (rows_p,)),)),
        Store("delta", row_tile(p, "D", b, h, rows_p)),
        Compute("zero", ("dq",)),
        Store("dq", q_tile(p, "dQ_accum", b, h, rows_p)),
    ), threads_per_cta=128)

    rows, cols = Span(i, bm, p.seq_q), Span(pn, bn, p.seq_kv)
    tables: dict = {}
    if block_mask is None:
        q_loop = lambda body: Loop(i, q_start(p, pn, bm, bn), tm, body)  # noqa: E731
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
        rows = Span(i, bm, p.seq_q)
        q_loop = lambda body: Loop(t, 0, lookup(table("q_num_blocks"), *lead, pn), body)  # noqa: E731
    step = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Load("lse", row_tile(p, "LSE", b, h, rows)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),), other=(Work(1, (rows, cols)),)),
        Compute("bwd_p", ("s", "lse"), exp=(Work(1, (rows, cols)),), other=(Work(1, (rows, cols)),)),
        Load("do", q_tile(p, "dO", b, h, rows)),
        Compute("bwd_dv", ("s", "do", "dv"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("bwd_dp", ("do", "v", "dp"), matmul=(Work(2 * d, (rows, cols)),)),
        Load("delta", row_tile(p, "D", b, h, rows)),
        Compute("bwd_ds", ("s", "dp", "delta"), other=(Work(2, (rows, cols)),)),
        Compute("bwd_dk", ("dp", "q", "dk"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("bwd_dq", ("dp", "k", "dq"), matmul=(Work(2 * d, (rows, cols)),), other=(Work(d, (rows,)),)),
        Store("dq", q_tile(p, "dQ_accum", b, h, rows), atomic=True),
    )
    dk_name, dv_name = ("dK_expanded", "dV_expanded") if g else ("dK", "dV")
    # the expanded gradients are per query head h; without GQA, h is the KV head too
    exp_tile = (lambda name: Tile(name, (point(b, p.batch), point(h, p.heads), cols, full(d)))) if g else \
        (lambda name: kv_tile(p, name, b, h, cols))
    main = Kernel("flash2_bwd", (GridAxis("n", pn, tn),) + bh, (
        Buffer("q", (bm, d), e, pipelined=True), Buffer("do", (bm, d), e, pipelined=True),
        Buffer("k", (bn, d), e), Buffer("v", (bn, d), e),
        Buffer("lse", (bm,), STAT_BYTES), Buffer("delta", (bm,), STAT_BYTES),
        Buffer("s", (bm, bn), 4, space="reg"), Buffer("dp", (bm, bn), 4, space="reg"),
        Buffer("dq", (bm, d), 4, space="reg"),
        Buffer("dk", (bn, d), 4, space="reg"), Buffer("dv", (bn, d), 4, space="reg")), (
        Load("k", kv_tile(p, "K", b, h, cols)),
        Load("v", kv_tile(p, "V", b, h, cols)),
        q_loop(step),
        Compute("scale", ("dk",), other=(Work(d, (cols,)),)),
        Store("dk", exp_tile(dk_name)),
        Store("dv", exp_tile(dv_name)),
    ), threads_per_cta=32 * cfg.num_warps)

    kernels = [pre, main]
    if g:
        hk, gg = var("hk"), var("gg")
        grp = p.group
        cols_r = Span(pn, bn, p.seq_kv)

        def exp_src(name):
            return Tile(name, (point(b, p.batch), point(hk * grp + gg, p.heads), cols_r, full(d)))

        def kv_dst(name):
            return Tile(name, (point(b, p.batch), point(hk, p.kv_heads), cols_r, full(d)))
        kernels.append(Kernel("flash2_bwd_gqa_reduce",
                              (GridAxis("n", pn, tn), GridAxis("b", b, p.batch), GridAxis("h", hk, p.kv_heads)),
                              (Buffer("x", (bn, d), e, space="reg"), Buffer("dk", (bn, d), 4, space="reg"),
                               Buffer("dv", (bn, d), 4, space="reg")), (
            Loop(gg, 0, grp, (
                Load("x", exp_src("dK_expanded")),
                Compute("accumulate", ("x", "dk"), other=(Work(d, (cols_r,)),)),
                Load("x", exp_src("dV_expanded")),
                Compute("accumulate", ("x", "dv"), other=(Work(d, (cols_r,)),)),
            )),
            Store("dk", kv_dst("dK")),
            Store("dv", kv_dst("dV")),
        )))
    rows_c = Span(pm, bm, p.seq_q)
    kernels.append(Kernel("flash2_bwd_convert_dq", (GridAxis("m", pm, tm),) + bh,
                          (Buffer("dq", (bm, d), 4, space="reg"),), (
        Load("dq", q_tile(p, "dQ_accum", b, h, rows_c)),
        Compute("scale", ("dq",), other=(Work(d, (rows_c,)),)),
        Store("dq", q_tile(p, "dQ", b, h, rows_c)),
    )))
    check_fit(main, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    notes = (f"tiles B_r={bm} (query rows), B_c={bn} (keys)",) + \
        ((f"GQA: dK, dV written per query head, then summed over groups of {p.group}",) if g else ())
    if block_mask is not None:
        notes += (f"block-sparse: {float(mask.mean()) if mask.size else 0.0:.1%} of {tm}×{tn} tiles visited",)
    return Schedule("flash2_bwd", p, cfg, tensors(p), tuple(kernels), notes, tables=tables)
