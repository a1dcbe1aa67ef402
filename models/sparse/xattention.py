"""XAttention (Xu, Xiao, Huang, Guo, Han; arXiv 2503.16428; code mit-han-lab/x-attention @e379887) as the kernels it
launches: the strided antidiagonal scoring pre-pass, the block selection, and Block-Sparse-Attention's FA2 fork.

Kernels, in launch order (``xattn/src/Xattention.py``: ``Xattention_prefill`` → ``xattn_estimate``; N' = N padded to
whole chunks, S = stride, B = 128, N_r = N'/S reshaped rows, T = N'/B blocks, c = ½ if causal; IO per (b, h)):

* ``xattn_repeat_k`` / ``xattn_repeat_v`` — GQA only: the repo asserts heads_q == heads_kv and its Llama forward
  (``xattn/src/load_llama.py``) materialises ``repeat_kv`` first: per query head reads its KV head's N·d (through
  the expanded view: each KV head g times, the repeats hit in L2) and writes N·d.
* ``xattn_pad_q`` / ``xattn_pad_k`` — only when N is not a multiple of the chunk: ``F.pad`` of Q and K to N' rows
  (reads N·d, writes N'·d each; the zero rows are padding).
* per query chunk k (``chunk_size`` tokens, N'/chunk launches of each):
  ``xattn_gemm_c{k}`` — ``flat_group_gemm_fuse_reshape_kernel`` (``xattn/src/kernels.py``): one CTA per 128×128 tile
  of the reshaped score matrix (grid block_m fastest, block_n, b·h), S iterations each loading 128 strided rows of Q
  (rows x·S + S−1−t) and of K (rows y·S + t), so 128·S rows of each per CTA (an index gather: each row its own run
  in the L2 trace); tiles wholly above the diagonal return at once (causal). Writes the 128×128 tile of
  A[x, y] = Σ_t q_{xS+S−1−t}·k_{yS+t} (the antidiagonal sums) in the query dtype. Per (b, h): reads ≈ 2cN²d/(128S),
  writes ≈ c(N/S)² (tile-granular lower triangle); matmul 2·d·S per score.
* ``xattn_softmax_c{k}`` — ``softmax_fuse_block_sum_kernel_causal`` / ``_non_causal``: one CTA per block row of B/S
  reshaped rows; pass 1 streams (B/S)×(B/S) tiles up to the diagonal for the row max and sum, pass 2 re-reads them,
  normalises (scale log2e/(√d·S), exp2) and block-sums each tile to one score; causal: writes zeros for the blocks
  right of the diagonal. Reads ≈ 2c(N/S)², writes T² (all of each row, zeros included).
* ``xattn_find_c{k}`` — ``find_blocks_chunked`` (``xattn/src/utils.py``): per block row, keep column 0 and the
  diagonal (causal), then the other blocks by descending score until the forced sum plus the kept ones reaches
  τ·(row sum). Modelled as one pass: reads the row of T scores, writes T mask bytes (the repo runs ~a dozen PyTorch
  ops on the chunk in fp64 — to(float), two sorts, cumsum, where, scatter —: their extra passes are left out).
* ``xattn_convert`` — Block-Sparse-Attention's ``convert_blockmask_row_reverse``: the mask rows to int32 column
  lists, descending, padded with −1 (reads T bytes, writes 4·T bytes per row; its uint8 cast, sort and flip are one
  pass here).
* ``xattn_fwd`` — ``block_sparse_attn_func`` (mit-han-lab/Block-Sparse-Attention, an FA2 fork): FA2's forward over
  the kept 128-token mask blocks. Tiles as the fork's ``_get_block_size`` on sm80/sm90 (hdim 128: 128×64, 4 warps,
  so one mask block is two KV tiles), KV walked descending (the row lists are reversed), 255 registers and one
  shared-memory stage as FA2's ``flash_fwd_kernel`` (``iosim.presets`` fa2); its in-CTA cp.async prefetch is the
  schedule's num_stages ≥ 2 overlap. Reads Q once, K + V of the kept blocks, writes O and LSE.

Selection (``models/sparse/selection.py``): ``density`` (+ ``seed``: each block row keeps round(density·valid) blocks,
column 0 and the diagonal first when causal, the rest uniform), ``table`` (a bool block mask at 128), or ``scores``:
the user's raw logits QKᵀ/√d ([N, N] or [B, H, N, N], unmasked: the antidiagonal of the diagonal block mixes in a
few future keys, as the kernel does), turned into the method's own block scores (``antidiagonal_block_scores``:
zero-padded to whole chunks as F.pad does, antidiagonal sums / S, causal softmax over reshaped rows, rows past N/S
zeroed, block sums) and selected by the repo's rule (``find_blocks``) with ``threshold`` τ. Neither given: every
block (density 1). The NumPy reference runs the pre-pass kernels for real (their block scores and masks equal
``antidiagonal_block_scores`` / ``find_blocks`` on Q·Kᵀ/√d); the sparse kernel runs the chosen mask.

Choices where the paper leaves one open (and why):
* stride S = 16 by default: the repo's quick-use call and the video/VLM setting use 16 and the 13.5× headline is at
  S = 16; the paper reports RULER at both S = 8 and 16 and names no single default.
* threshold τ = 0.9 by default (``xattn_estimate``'s default and the README's VLM setting; the efficiency benchmark
  passes per-head thresholds of layer 12). It matters only with ``scores``.
* chunk_size as ``Xattention_prefill`` picks it when not given: max(min(max(2048, 2^⌈log2 N⌉), 2^28/2^⌈log2 N⌉), 2048).
* batch > 1: the repo asserts batch 1; a batch is modelled as Block-Sparse-Attention's varlen batch (same mask for
  every sequence).
* only N_q = N_kv (prefill) is modelled: the repo pads Q and K to whole chunks and aligns them by padded block counts.
* tensors stay [B, H, N, d] (the fork reads [N, H, d] rows: same bytes, other strides).

The sparse kernel and its tables (``listed_fwd_kernel``, ``tile_tables``: O(kept tiles) from the 128-token block
mask), the copies (``copy_kernel``, ``repeat_kv_kernels``) and the tiles (``bsa_tiles``) are shared with SeerAttention,
PowerAttention and Sparse-vDiT and live in ``models/sparse/kernels.py``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from iosim.errors import IosimError
from iosim.models._common import check_head_dim, kv_tile
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import (bsa_tiles, copy_kernel, fill_tiles, listed_fwd_kernel, repeat_kv_kernels,
                                         tile_tables)
from iosim.models.sparse.selection import concrete, per_head_mask
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, clamp, full, gathered, point, table, var)

BLOCK = 128  # the mask block: Xattention_prefill asserts block_size == 128
DEFAULT_STRIDE = 16
DEFAULT_THRESHOLD = 0.9


# --- kernel edits ------------------------------------------------------------------------------------------------------


def without_stores(kernel: Kernel, tensor: str) -> Kernel:
    """The kernel without its stores into ``tensor`` (SeerAttention's Triton kernel writes no LSE)."""
    def keep(s):
        return not (isinstance(s, Store) and s.tile.tensor == tensor)
    return replace(kernel, body=tuple(s for s in kernel.body if keep(s)))


# --- XAttention's selection rule (NumPy, from logits) --------------------------------------------------------------

def default_chunk(n: int) -> int:
    """``Xattention_prefill``'s chunk_size: max(min(max(2048, 2^⌈log2 n⌉), 128·1024·2048 / 2^⌈log2 n⌉), 2048)."""
    p2 = 1 << max(0, (n - 1).bit_length())
    return int(max(min(max(2048, p2), 128 * 1024 * 2048 // p2), 2048))


def antidiagonal_block_scores(logits: np.ndarray, stride: int, causal: bool, chunk: int,
                              block: int = BLOCK) -> np.ndarray:
    """XAttention's block scores [..., T', T'] (T' = N'/block) from raw logits [..., N, N] (QKᵀ/√d): zero-pad to N'
    (F.pad of Q and K: a padded logit is 0), A[x, y] = Σ_t L[xS+S−1−t, yS+t] / S, softmax over y per reshaped row x
    (causal: y ≤ x, else −1e6 as the kernel), rows x ≥ N/S − ⌊(N'−N)/S⌋ zeroed, then sums over (block/S)² tiles."""
    L = np.asarray(logits, dtype=np.float64)
    n = L.shape[-1]
    npad = cdiv(n, chunk) * chunk
    S = stride
    Lp = np.zeros(L.shape[:-2] + (npad, npad))
    Lp[..., :n, :n] = L
    nr = npad // S
    x = Lp.reshape(*L.shape[:-2], nr, S, nr, S)  # [.., x, s, y, t] = Lp[x·S + s, y·S + t]
    a = sum(x[..., :, S - 1 - t, :, t] for t in range(S)) / S
    if causal:
        a = np.where(np.arange(nr)[None, :] <= np.arange(nr)[:, None], a, -1e6)
    a = a - a.max(axis=-1, keepdims=True)
    p = np.exp(a)
    p = p / p.sum(axis=-1, keepdims=True)
    real = nr - (npad - n) // S
    p[..., real:, :] = 0.0
    rb = block // S
    tb = npad // block
    return p.reshape(*p.shape[:-2], tb, rb, tb, rb).sum(axis=(-3, -1))


def find_blocks(scores: np.ndarray, tau: float, causal: bool, shift: int = 0) -> np.ndarray:
    """``find_blocks_chunked`` (prefill, threshold τ) on block scores [..., R, C] whose row r is block row r + 0 (the
    diagonal at column r + shift). Causal: column 0 and the diagonal are forced and their sum comes first; the other
    blocks in descending order are kept while (forced sum + the kept before it) < τ·(row sum); the positions not
    kept index column 0 (the repo's ``torch.where(index_mask, index, 0)``), so in the non-causal rule column 0 is
    kept whenever any block is dropped. Blocks right of the diagonal are cleared (causal). Ties: stable order."""
    s = np.asarray(scores, dtype=np.float64)
    R, C = s.shape[-2:]
    total = s.sum(axis=-1, keepdims=True)
    need = total * tau
    mask = np.zeros(s.shape, dtype=bool)
    if causal:
        forced = np.zeros(s.shape, dtype=bool)
        forced[..., 0] = True
        rr = np.arange(R)
        dj = np.clip(rr + shift, 0, C - 1)
        forced[..., rr, dj] = True
        other = np.where(forced, 0.0, s)
        srt = -np.sort(-other, axis=-1, kind="stable")
        fsum = np.where(forced, s, 0.0).sum(axis=-1, keepdims=True)
        vals = np.concatenate([np.zeros_like(fsum), fsum, srt[..., :-2]], axis=-1)
        key = np.where(forced, 1e5 * (1 + s), s)
        index = np.argsort(-key, axis=-1, kind="stable")
        cum = np.concatenate([np.zeros_like(fsum), vals[..., :-1]], axis=-1).cumsum(axis=-1)
        keep = cum < need
        index = np.where(keep, index, 0)
        np.put_along_axis(mask, index, True, axis=-1)
        mask |= forced
        mask &= np.arange(C)[None, :] <= (rr + shift)[:, None]
    else:
        index = np.argsort(-s, axis=-1, kind="stable")
        srt = np.take_along_axis(s, index, axis=-1)
        cum = np.concatenate([np.zeros_like(total), srt[..., :-1]], axis=-1).cumsum(axis=-1)
        keep = cum < need
        index = np.where(keep, index, 0)
        np.put_along_axis(mask, index, True, axis=-1)
    return mask


def xattention_rule(p: Problem, stride: int, tau: float, chunk: int):
    """scores (logits [.., N, N]) → bool block mask [.., T_q, T_kv] at 128 (the method's own selection)."""
    def rule(logits):
        bs = antidiagonal_block_scores(logits, stride, p.causal, chunk)
        m = find_blocks(bs, tau, p.causal)
        tq, tk = cdiv(p.seq_q, BLOCK), cdiv(p.seq_kv, BLOCK)
        return m[..., :tq, :tk]
    return rule


# --- the NumPy reference of the pre-pass kernels --------------------------------------------------------------------

def _meta(ctx) -> dict:
    s, causal, shift_r, real, tau_ppb = (int(x) for x in ctx.tables["xa_meta"])
    return dict(S=s, causal=bool(causal), shift_r=shift_r, real=real, tau=tau_ppb / 1e9)


@register_op("xattn_dot")
def _op_dot(ctx, q, k, o):
    """o += Q_rows · K_rowsᵀ (one of the S antidiagonal offsets; raw, unscaled)."""
    r, c = q.ext[0], k.ext[0]
    acc = o.value(0.0)
    acc[:r, :c] += q.data[:r] @ k.data[:c].T
    o.set((q.origin[0], k.origin[0]), (r, c))


def _masked_scaled(ctx, x):
    m = _meta(ctx)
    r, c = x.ext
    v = x.data[:r, :c] * (ctx.scale / m["S"])
    pos = x.row_pos(0)
    rows = np.arange(x.origin[0], x.origin[0] + r) if pos is None else np.asarray(pos[:r])
    if m["causal"]:
        cols = np.arange(x.origin[1], x.origin[1] + c)
        v = np.where(cols[None, :] <= rows[:, None] + m["shift_r"], v, -1e6)
    return v, rows, m


@register_op("xattn_stats")
def _op_stats(ctx, x, m, l):
    """Pass 1 of softmax_fuse_block_sum: running row max and sum of exp over the scaled, causally masked tiles."""
    v, _, _ = _masked_scaled(ctx, x)
    r = v.shape[0]
    mo, lo = m.value(-np.inf)[:r], l.value(0.0)[:r]
    mn = np.maximum(mo, v.max(axis=1))
    l.data[:r] = lo * np.exp(mo - mn) + np.exp(v - mn[:, None]).sum(axis=1)
    m.data[:r] = mn
    m.set((x.origin[0],), (r,))
    l.set((x.origin[0],), (r,))


@register_op("xattn_blocksum")
def _op_blocksum(ctx, x, m, l, o):
    """Pass 2: the tile's softmax probabilities summed to one block score (rows past the real rows count 0)."""
    v, rows, meta = _masked_scaled(ctx, x)
    r = v.shape[0]
    pr = np.exp(v - m.data[:r, None]) / l.data[:r, None]
    pr[rows >= meta["real"]] = 0.0
    o.value(0.0)[0, 0] = pr.sum()
    o.set((0, 0), (1, 1))


@register_op("xattn_find")
def _op_find(ctx, row, sel):
    """find_blocks_chunked on one block row (its index is the buffer's row origin)."""
    meta = _meta(ctx)
    c = row.ext[1]
    i = row.origin[0]
    s = np.zeros((i + 1, c))
    s[i] = row.data[0, :c]
    m = find_blocks(s, meta["tau"], meta["causal"])[i]
    sel.value(0.0)[0, :c] = m
    sel.set(row.origin, (1, c))


@register_op("xattn_convert")
def _op_convert(ctx, mrow, irow):
    """convert_blockmask_row_reverse: the kept columns, descending, then −1."""
    c = mrow.ext[1]
    cols = np.nonzero(mrow.data[0, :c] != 0)[0][::-1]
    out = irow.value(0.0)
    out[0, :c] = -1
    out[0, :cols.size] = cols
    irow.set(mrow.origin, (1, c))


# --- kernels ---------------------------------------------------------------------------------------------------------

def _grid3(r, rows, B, H):
    b, h = var("b"), var("h")
    return (GridAxis("m", r, rows), GridAxis("h", h, H), GridAxis("b", b, B)), b, h


def _gemm_kernel(p, k: int, S: int, chunk: int, npad: int, qsrc: str, ksrc: str) -> Kernel:
    """flat_group_gemm_fuse_reshape for query chunk k (see the module docstring)."""
    B, H, d = p.batch, p.heads, p.head_dim
    nr, cr = npad // S, chunk // S
    m0 = k * cr // 128
    bm, bn, b, h, t, z = var("pid_m"), var("pid_n"), var("b"), var("h"), var("t"), var("xa_tile")
    grid = (GridAxis("m", bm, cr // 128), GridAxis("n", bn, nr // 128), GridAxis("h", h, H), GridAxis("b", b, B))
    qrows = gathered(m0 + bm, 128, nr, table("xa_qrows"), t)
    krows = gathered(bn, 128, nr, table("xa_krows"), t)
    step = (
        Load("q", Tile(qsrc, (point(b, B), point(h, H), qrows, full(d)))),
        Load("k", Tile(ksrc, (point(b, B), point(h, H), krows, full(d)))),
        Compute("xattn_dot", ("q", "k", "o"), matmul=(Work(2 * d, (Span(m0 + bm, 128, nr), Span(bn, 128, nr))),)),
    )
    stop = clamp(m0 + bm + 1 - bn, 0, 1) if p.causal else 1
    body = (Loop(z, 0, stop, (
        Loop(t, 0, S, step),
        Store("o", Tile("XS", (point(b, B), point(h, H), Span(bm, 128, cr), Span(bn, 128, nr)))),
    )),)
    bufs = (Buffer("q", (128, d), p.elem_bytes, pipelined=True), Buffer("k", (128, d), p.elem_bytes, pipelined=True),
            Buffer("o", (128, 128), 4, "reg"))
    return Kernel(f"xattn_gemm_c{k}", grid, bufs, body, threads_per_cta=128)


def _softmax_kernel(p, k: int, S: int, chunk: int, npad: int) -> Kernel:
    """softmax_fuse_block_sum for query chunk k (see the module docstring)."""
    B, H = p.batch, p.heads
    nr, cr, rb, nb, cb = npad // S, chunk // S, BLOCK // S, npad // BLOCK, chunk // BLOCK
    blk, j = var("pid_m"), var("j")
    grid, b, h = _grid3(blk, cb, B, H)
    rows = Span(blk, rb, cr, 0, None, (table("xa_rowpos"), k))
    cols = Span(j, rb, nr)
    ig = k * cb + blk
    stop = clamp(ig + 1, 0, nb) if p.causal else nb
    xt = Tile("XS", (point(b, B), point(h, H), rows, cols))
    ot = Tile("XB", (point(b, B), point(h, H), Span(ig, 1, nb), Span(j, 1, nb)))
    body = (
        Loop(j, 0, stop, (Load("x", xt), Compute("xattn_stats", ("x", "m", "l"), exp=(Work(1, (rows, cols)),),
                                                  other=(Work(4, (rows, cols)),)))),
        Loop(j, 0, stop, (Load("x", xt), Compute("xattn_blocksum", ("x", "m", "l", "o"), exp=(Work(1, (rows, cols)),),
                                                  other=(Work(5, (rows, cols)),)), Store("o", ot))),
    )
    if p.causal:
        body += (Loop(j, stop, nb, (Compute("zero", ("o",)), Store("o", ot))),)
    bufs = (Buffer("x", (rb, rb), p.elem_bytes, "reg"), Buffer("m", (rb,), STAT_BYTES, "reg"),
            Buffer("l", (rb,), STAT_BYTES, "reg"), Buffer("o", (1, 1), 4, "reg"))
    return Kernel(f"xattn_softmax_c{k}", grid, bufs, body, threads_per_cta=128)


def _find_kernel(p, k: int, chunk: int, npad: int) -> Kernel:
    """find_blocks_chunked for query chunk k, one block row per CTA: reads the row's T scores, writes T mask bytes;
    other FLOPs 2·⌈log2 T⌉ + 6 per score (two sorts, cumsum, compare, selects)."""
    B, H = p.batch, p.heads
    nb, cb = npad // BLOCK, chunk // BLOCK
    r = var("pid_m")
    grid, b, h = _grid3(r, cb, B, H)
    row = Span(k * cb + r, 1, nb)
    flops = 2 * max(1, math.ceil(math.log2(max(nb, 2)))) + 6
    body = (
        Load("row", Tile("XB", (point(b, B), point(h, H), row, full(nb)))),
        Compute("xattn_find", ("row", "sel"), other=(Work(flops, (row, full(nb))),)),
        Store("sel", Tile("XM", (point(b, B), point(h, H), row, full(nb)))),
    )
    bufs = (Buffer("row", (1, nb), p.elem_bytes), Buffer("sel", (1, nb), 1, "reg"))
    return Kernel(f"xattn_find_c{k}", grid, bufs, body, threads_per_cta=128)


def _convert_kernel(p, npad: int) -> Kernel:
    """convert_blockmask_row_reverse over the real T_q × T_kv blocks: reads T_kv mask bytes, writes T_kv int32 per
    row; other FLOPs ⌈log2 T_kv⌉ + 2 per entry (sort, flip, fill)."""
    B, H = p.batch, p.heads
    nb = npad // BLOCK
    tq, tk = cdiv(p.seq_q, BLOCK), cdiv(p.seq_kv, BLOCK)
    r = var("pid_m")
    grid, b, h = _grid3(r, tq, B, H)
    row, cols = Span(r, 1, nb), Span(0, tk, nb)
    body = (
        Load("mrow", Tile("XM", (point(b, B), point(h, H), row, cols))),
        Compute("xattn_convert", ("mrow", "irow"),
                other=(Work(max(1, math.ceil(math.log2(max(tk, 2)))) + 2, (row, cols)),)),
        Store("irow", Tile("XI", (point(b, B), point(h, H), row, cols))),
    )
    bufs = (Buffer("mrow", (1, tk), 1, "reg"), Buffer("irow", (1, tk), 4, "reg"))
    return Kernel("xattn_convert", grid, bufs, body, threads_per_cta=128)


def _check(p: Problem, stride, threshold, chunk_size) -> tuple[int, int]:
    concrete(p, "xattention")
    check_head_dim(p, "xattention")
    if p.seq_q != p.seq_kv:
        raise IosimError(f"xattention: models prefill with seq_q == seq_kv (xattn_estimate pads Q and K to whole "
                         f"chunks and aligns them by padded block counts); got seq_q={p.seq_q}, seq_kv={p.seq_kv}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or BLOCK % stride:
        raise IosimError(f"xattention: stride={stride!r} must be a positive integer dividing {BLOCK} (the reshaped "
                         "block is 128/S rows); the paper uses 8 and 16")
    sc.check_params("xattention", threshold=(threshold, 0.0, 1.0))
    if threshold is None or threshold <= 0:
        raise IosimError(f"xattention: threshold={threshold!r} must be in (0, 1] (the kept share of each row's "
                         "block-score mass)")
    chunk = default_chunk(p.seq_q) if chunk_size is None else chunk_size
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0 or chunk % (128 * stride):
        raise IosimError(f"xattention: chunk_size={chunk_size!r} must be a positive multiple of 128·stride = "
                         f"{128 * stride} (flat_group_gemm_fuse_reshape asserts q_len % (stride·128) == 0)")
    return stride, chunk


@register("xattention", "XAttention: strided antidiagonal scoring, softmax block sums, threshold selection (pre-pass "
          "kernels per query chunk), then Block-Sparse-Attention's FA2 fork over the kept 128-token blocks")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          stride: int = DEFAULT_STRIDE, threshold: float = DEFAULT_THRESHOLD, chunk_size: int | None = None,
          per_head: bool | None = None) -> Schedule:
    """stride S (16), threshold τ (0.9, with ``scores``), chunk_size (Xattention_prefill's rule), per_head (a density
    selection per head; default while heads·T² ≤ 2^22). The selection: density / table / scores (module docstring)."""
    S, chunk = _check(p, stride, threshold, chunk_size)
    cfg = fill_tiles(cfg, bsa_tiles(p.head_dim))
    B, H, N, d, e = p.batch, p.heads, p.seq_q, p.head_dim, p.elem_bytes
    npad = cdiv(N, chunk) * chunk
    nr, nb = npad // S, npad // BLOCK
    tq, tk = cdiv(N, BLOCK), cdiv(p.seq_kv, BLOCK)

    forced = sc.forced_blocks(p, BLOCK, BLOCK, first=1, diagonal=True) if p.causal else None
    ph = per_head_mask(p, tq, tk, per_head)
    mask, src = sc.choose_blocks(p, BLOCK, BLOCK, density=density, seed=seed, table=table, scores=scores,
                                 rule=xattention_rule(p, S, float(threshold), chunk), forced=forced, per_head=ph,
                                 method="xattention")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[0, 0]
    kept = sc.kept_fraction(mask, p, BLOCK, BLOCK)

    tensors = sc.attention_tensors(p)
    kernels: list[Kernel] = []
    rep, rep_t = repeat_kv_kernels(p, "xattn_")
    kernels += rep
    tensors |= rep_t
    kname = "K_rep" if rep else "K"
    qsrc, ksrc = "Q", kname
    if npad != N:
        for n, srcname in (("Q", "Q"), ("K", kname)):
            dst = TensorSpec(f"{n}p", (B, H, npad, d), e, "scratch")
            srcspec = tensors[srcname]
            kernels.append(copy_kernel(f"xattn_pad_{n.lower()}", srcspec, dst))
            tensors[dst.name] = dst
        qsrc, ksrc = "Qp", "Kp"
    tensors |= {
        "XS": TensorSpec("XS", (B, H, chunk // S, nr), e, "scratch"),
        "XB": TensorSpec("XB", (B, H, nb, nb), e, "scratch"),
        "XM": TensorSpec("XM", (B, H, nb, nb), 1, "scratch"),
        "XI": TensorSpec("XI", (B, H, nb, nb), 4, "scratch"),
    }
    nchunks = npad // chunk
    for k in range(nchunks):
        kernels += [_gemm_kernel(p, k, S, chunk, npad, qsrc, ksrc), _softmax_kernel(p, k, S, chunk, npad),
                    _find_kernel(p, k, chunk, npad)]
    kernels.append(_convert_kernel(p, npad))
    fcfg = replace(cfg, kv_order="descending", grid_order=("m", "b", "h"))
    tabs, ph_tab = tile_tables(p, mask, BLOCK, cfg.block_m, cfg.block_n, "xa_")
    kernels.append(listed_fwd_kernel(p, fcfg, ph_tab, hw, "xattn_fwd", "xa_",
                                     kv_names=(kname, "V_rep" if rep else "V"), kv_heads=H if rep else None))
    x = np.arange(nr)
    tables = dict(tabs)
    tables["xa_qrows"] = np.stack([x * S + S - 1 - t for t in range(S)])
    tables["xa_krows"] = np.stack([x * S + t for t in range(S)])
    tables["xa_rowpos"] = np.arange(nchunks)[:, None] * (chunk // S) + np.arange(chunk // S)[None, :]
    tables["xa_meta"] = np.array([S, int(p.causal), 0, nr - (npad - N) // S, int(round(float(threshold) * 1e9))],
                                 dtype=np.int64)
    notes = (f"XAttention: stride {S}, {nchunks} query chunk(s) of {chunk} tokens (N padded to {npad})"
             + (", GQA: repeat_kv materialised (the repo asserts heads_q == heads_kv)" if rep else ""),
             f"selection: {src}; {kept:.1%} of causal-valid 128-blocks kept" if p.causal else
             f"selection: {src}; {kept:.1%} of 128-blocks kept",
             f"sparse kernel: Block-Sparse-Attention FA2 fork, {cfg.block_m}×{cfg.block_n} tiles (a 128-block is "
             f"{(BLOCK // cfg.block_m) * (BLOCK // cfg.block_n)} tile(s)), mask {'per head' if ph_tab else 'shared by heads'}",
             "left out: find_blocks_chunked's extra fp64 PyTorch passes, the torch.cat copies of the scores and masks, "
             "the fork's reads of its int32 block lists")
    return Schedule("xattention", p, cfg, tensors, tuple(kernels), notes, tables=tables)
