"""Shared pieces of the sparse-attention family (issue 23): block selection and the kernels the methods launch.

Selection: which (query block, KV block) tiles a method keeps is data-dependent. It comes one of three ways
(``choose_blocks``), and the family module turns it into its kernel's tables:

* ``density`` + ``seed``: each query-block row keeps round(density · n_valid) of its n_valid causal-valid blocks,
  the method's forced blocks first (``forced``: the first column, the diagonal, a local window), the rest drawn
  uniformly by ``numpy.random.default_rng(seed)``. density is the kept fraction of *valid* blocks (the seed
  papers' "s": XAttention Table 8, BLASST's 1 − sparsity), so a causal problem at density 1 is its causal mask.
* ``table``: a bool block mask from a file (.npy, or .npz with one array or one named 'mask'), [T_q, T_kv] or
  [B, H, T_q, T_kv] at the kernel's block size.
* ``scores``: the user's attention scores (NumPy, [Nq, Nkv] or [B, H, Nq, Nkv], probabilities or logits as the
  method says), pooled to blocks and kept by the method's rule (``pool_blocks``, ``keep_cumulative``,
  ``keep_topk``). This is the only source that holds an N×N array; it is for the small N a user can hold.

Every selection is intersected with the causal mask (tiles wholly above the diagonal are never visited) and the
method's forced blocks are always kept. With density 1 (or an all-True table) every method's sparse kernel equals
dense FlashAttention-2 (the tests check this against naive attention).

Kernels (``Kernel`` builders; each docstring gives its IO per (b, h)):
* ``sparse_fwd_kernel`` — FA2's loop over the listed KV blocks (``models/block_sparse.py``'s kernel, FlexAttention's
  kv_num_blocks / kv_indices tables);
* ``pool_kernel`` — mean-pool B consecutive rows of a [B, H, N, d] tensor to [B, H, ⌈N/B⌉, d];
* ``score_kernel`` — S = A·Bᵀ of two pooled/strided tensors, written as a [B, H, Na, Nb] fp32 score matrix;
* ``select_kernel`` — per score row: read it, write the kept indices (top-k / threshold / sort: a row pass);
* ``gather_kernel`` — copy rows tables[perm][b, h, x] of a tensor into a contiguous scratch copy (permutations);

and the parameter check ``check_params`` (one-line errors for unknown or out-of-range method parameters).
"""

from __future__ import annotations

import os

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, kv_tile, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models.block_sparse import block_visible_causal, compress, normalize_mask
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Span, Store, TensorSpec, Tile, Work,
                            cdiv, full, lookup, point, table, var)

MAX_MASK_BLOCKS = 1 << 28  # bool blocks a per-head selection may hold (256 MiB); beyond: share the mask by heads


# --- selection ------------------------------------------------------------------------------------------------------

def check_params(method: str, **ranges) -> None:
    """ranges: name=(value, lo, hi) with lo ≤ value ≤ hi required (None bounds: open); one-line error otherwise."""
    for name, (v, lo, hi) in ranges.items():
        if v is None:
            continue
        if not isinstance(v, (int, float, np.integer, np.floating)) or (lo is not None and v < lo) or \
                (hi is not None and v > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f"≥ {lo}"
            raise IosimError(f"{method}: {name}={v!r} is out of range; give a number in {rng}")


def valid_blocks(p: Problem, bm: int, bn: int) -> np.ndarray:
    """[T_r, T_c] bool: tiles holding a visible element (causal: at or below the diagonal; else all)."""
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    return block_visible_causal(p, tm, tn, bm, bn) if p.causal else np.ones((tm, tn), dtype=bool)


def forced_blocks(p: Problem, bm: int, bn: int, first: int = 0, diagonal: bool = False, local: int = 0) -> np.ndarray:
    """[T_r, T_c] bool: the blocks a method always keeps: the first ``first`` KV blocks (attention sinks, XAttention's
    column 0), the diagonal block (the query block's own keys, bottom-right aligned), ``local`` blocks left of it."""
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    f = np.zeros((tm, tn), dtype=bool)
    f[:, :min(first, tn)] = True
    if diagonal or local:
        last_key = np.minimum((np.arange(tm) + 1) * bm, p.seq_q) - 1 + p.seq_kv - p.seq_q  # last visible key
        dj = np.clip(last_key // bn, 0, tn - 1)
        for k in range(0 if diagonal else 1, local + 1):
            ok = dj - k >= 0
            f[np.arange(tm)[ok], (dj - k)[ok]] = True
    return f & valid_blocks(p, bm, bn)


def density_blocks(p: Problem, bm: int, bn: int, density: float, seed: int = 0, forced=None,
                   per_head: bool = False) -> np.ndarray:
    """Each row keeps round(density · n_valid) valid blocks (at least its forced ones), forced first, the rest
    uniformly at random (``default_rng(seed)``). [T_r, T_c], or [1, H, T_r, T_c] with ``per_head``."""
    check_params("density selection", density=(density, 0.0, 1.0))
    valid = valid_blocks(p, bm, bn)
    tm, tn = valid.shape
    heads = p.heads if per_head else 1
    if heads * tm * tn > MAX_MASK_BLOCKS:
        raise IosimError(f"a per-head selection of {heads}×{tm}×{tn} blocks is too large to hold; share it by heads "
                         f"(per_head=False) or use larger blocks")
    forced = np.zeros_like(valid) if forced is None else (forced & valid)
    rng = np.random.default_rng(seed)
    nvalid = valid.sum(axis=1)
    keep = np.maximum(np.rint(density * nvalid).astype(np.int64), forced.sum(axis=1))
    out = np.empty((heads, tm, tn), dtype=bool)
    for h in range(heads):
        key = rng.random((tm, tn))
        key = np.where(forced, 2.0, np.where(valid, key, -1.0))  # forced first, invalid last
        rank = np.argsort(np.argsort(-key, axis=1, kind="stable"), axis=1, kind="stable")
        out[h] = (rank < keep[:, None]) & valid
    return out[0] if not per_head else out[None]


def load_table(path: str, p: Problem, bm: int, bn: int) -> np.ndarray:
    """A bool block mask saved with np.save / np.savez ([T_q, T_kv] or [B, H, T_q, T_kv] at bm × bn)."""
    if not os.path.isfile(str(path)):
        raise IosimError(f"block table {path!r} does not exist; give a .npy/.npz file of a bool block mask")
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        if len(keys) != 1 and "mask" not in keys:
            raise IosimError(f"block table {path}: the .npz holds {keys}; save one array, or one named 'mask'")
        data = data["mask" if "mask" in keys else keys[0]]
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    return normalize_mask(p, np.asarray(data), tm, tn)


def pool_blocks(scores: np.ndarray, bm: int, bn: int, how: str = "sum") -> np.ndarray:
    """[..., Nq, Nkv] scores → [..., T_q, T_kv] block scores (sum, mean or max over each bm × bn tile; ragged edges
    pooled over what they hold)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim < 2:
        raise IosimError(f"scores must be [Nq, Nkv] or [B, H, Nq, Nkv], got shape {s.shape}")
    nq, nk = s.shape[-2:]
    tm, tn = cdiv(nq, bm), cdiv(nk, bn)
    pad = [(0, 0)] * (s.ndim - 2) + [(0, tm * bm - nq), (0, tn * bn - nk)]
    fill = -np.inf if how == "max" else 0.0
    x = np.pad(s, pad, constant_values=fill).reshape(*s.shape[:-2], tm, bm, tn, bn)
    if how == "max":
        return x.max(axis=(-3, -1))
    tot = x.sum(axis=(-3, -1))
    if how == "sum":
        return tot
    if how == "mean":
        rows = np.minimum(bm, nq - np.arange(tm) * bm)
        cols = np.minimum(bn, nk - np.arange(tn) * bn)
        return tot / (rows[:, None] * cols[None, :])
    raise IosimError(f"pool_blocks: how={how!r}; use sum, mean or max")


def keep_cumulative(block_scores: np.ndarray, tau: float, valid=None, forced=None) -> np.ndarray:
    """Per row, keep blocks in descending score until their sum reaches τ · the row's total (XAttention
    ``find_blocks_chunked``, PBS-Attn's threshold): the smallest prefix whose cumulative sum ≥ τ·rowsum."""
    check_params("cumulative selection", tau=(tau, 0.0, 1.0))
    s = np.asarray(block_scores, dtype=np.float64)
    if valid is not None:
        s = np.where(valid, s, 0.0)
    s = np.maximum(s, 0.0)
    order = np.argsort(-s, axis=-1, kind="stable")
    srt = np.take_along_axis(s, order, axis=-1)
    csum = np.cumsum(srt, axis=-1)
    need = tau * csum[..., -1:]
    keep_sorted = (csum - srt) < need  # a block is kept while the sum before it is below τ·total
    keep_sorted[..., 0] = True
    out = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(out, order, keep_sorted, axis=-1)
    if forced is not None:
        out |= forced
    return out if valid is None else out & valid


def keep_topk(block_scores: np.ndarray, k: int, valid=None, forced=None) -> np.ndarray:
    """Per row, the forced blocks plus the k − |forced| highest-scoring others (NSA's / SeerAttention's top-k)."""
    s = np.asarray(block_scores, dtype=np.float64)
    if valid is not None:
        s = np.where(valid, s, -np.inf)
    if forced is not None:
        s = np.where(forced, np.inf, s)
    order = np.argsort(-s, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(s.shape[-1]), axis=-1)
    out = rank < k
    if forced is not None:
        out |= forced
    return out if valid is None else out & valid


def choose_blocks(p: Problem, bm: int, bn: int, *, density=None, seed: int = 0, table=None, scores=None,
                  rule=None, forced=None, per_head: bool = False, method: str = "sparse") -> tuple[np.ndarray, str]:
    """(bool block mask, one-line description of its source). Exactly one of density / table / scores, or none
    (density 1: every valid block). rule(scores) → bool blocks for ``scores`` (the method's selection)."""
    given = [n for n, v in (("density", density), ("table", table), ("scores", scores)) if v is not None]
    if len(given) > 1:
        raise IosimError(f"{method}: give one of density, table or scores, not {' and '.join(given)}")
    valid = valid_blocks(p, bm, bn)
    f = np.zeros_like(valid) if forced is None else forced & valid
    if table is not None:
        m = load_table(table, p, bm, bn) if isinstance(table, (str, os.PathLike)) else \
            normalize_mask(p, np.asarray(table), *valid.shape)
        src = f"block table {table if isinstance(table, (str, os.PathLike)) else 'given'}"
    elif scores is not None:
        s = np.asarray(scores)
        if s.shape[-2:] != (p.seq_q, p.seq_kv):
            raise IosimError(f"{method}: scores have shape {s.shape}; the last two axes must be [Nq, Nkv] = "
                             f"[{p.seq_q}, {p.seq_kv}]")
        if rule is None:
            raise IosimError(f"{method}: this method takes no scores; give density or a block table")
        m = np.asarray(rule(s))
        src = "selected from the given scores"
    else:
        d = 1.0 if density is None else float(density)
        m = density_blocks(p, bm, bn, d, seed, forced=f, per_head=per_head)
        src = f"density {d:g} of valid blocks, seed {seed}"
    m = (m | f) & valid
    return m, src


def kept_fraction(mask: np.ndarray, p: Problem, bm: int, bn: int) -> float:
    """Kept / valid blocks (the density the method achieved)."""
    valid = valid_blocks(p, bm, bn)
    nv = valid.sum() * (mask.size // valid.size)
    return float(mask.sum() / nv) if nv else 0.0


# --- kernels --------------------------------------------------------------------------------------------------------

def sparse_fwd_kernel(p: Problem, cfg: KernelConfig, mask: np.ndarray, hw=None, name: str = "sparse_fwd",
                      prefix: str = "") -> tuple[Kernel, dict]:
    """FA2's forward over the KV blocks ``mask`` lists per query block ([T_r, T_c] or [B, H, T_r, T_c] at
    block_m × block_n; causal tiles above the diagonal dropped): (kernel, tables). Per (b, h): reads Q = N_q·d,
    K + V = 2·d·Σ_listed c_j; writes O = N_q·d, LSE = N_q (fp32) (FA1 Prop. 4). Tables are named
    ``{prefix}kv_num_blocks`` / ``{prefix}kv_indices`` so several sparse kernels can share one schedule."""
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    m = normalize_mask(p, mask, tm, tn)
    if p.causal:
        m = m & block_visible_causal(p, tm, tn, bm, bn)
    num, idx = compress(m)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i = vs["b"], vs["h"], vs["m"]
    t = var("t")
    lead = (b, h) if m.ndim == 4 else ()
    j = lookup(table(prefix + "kv_indices"), *lead, i, t)
    stop = lookup(table(prefix + "kv_num_blocks"), *lead, i)
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    body = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Loop(t, 0, stop, flash2.kv_step(p, b, h, rows, cols), reverse=cfg.kv_order == "descending"),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
        Store("lse", row_tile(p, "LSE", b, h, rows)),
    )
    kernel = Kernel(name, grid, flash2.buffers(bm, bn, d, e), body, threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    return kernel, {prefix + "kv_num_blocks": num, prefix + "kv_indices": idx}


def attention_tensors(p: Problem) -> dict[str, TensorSpec]:
    """Q, K, V, O and the fp32 LSE of a forward."""
    return qkvo_tensors(p) | {"LSE": lse_tensor(p)}


def _bh_grid(batch, heads, rows) -> tuple[tuple[GridAxis, ...], tuple]:
    r, b, h = var("r"), var("b"), var("h")
    return (GridAxis("m", r, rows), GridAxis("b", b, batch), GridAxis("h", h, heads)), (r, b, h)


def pool_kernel(name: str, src: TensorSpec, dst: TensorSpec, block: int, rows_per_cta: int = 1,
                num_warps: int = 4) -> Kernel:
    """dst[b, h, x] = mean of src[b, h, x·block : (x+1)·block] (mean pooling of a [B, H, N, d] tensor, block rows
    per output row). Per (b, h): reads N·d·e_src, writes ⌈N/block⌉·d·e_dst; other FLOPs N·d (adds). Each CTA pools
    rows_per_cta output rows (rows_per_cta·block input rows, streamed block by block)."""
    B, H, N, d = src.dims
    n_out = dst.dims[2]
    grid, (r, b, h) = _bh_grid(B, H, cdiv(n_out, rows_per_cta))
    x = var("x")
    out_row = r * rows_per_cta + x
    body = (
        Loop(x, 0, rows_per_cta, (
            Load("src", Tile(src.name, (point(b, B), point(h, H), Span(out_row, block, N), full(d)))),
            Compute("pool_mean", ("src", "dst"), other=(Work(1, (Span(out_row, block, N), full(d))),)),
            Store("dst", Tile(dst.name, (point(b, B), point(h, H), Span(out_row, 1, n_out), full(d)))),
        )),
    )
    bufs = (Buffer("src", (block, d), src.elem_bytes, "smem", pipelined=True), Buffer("dst", (1, d), 4, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def score_kernel(name: str, a: TensorSpec, bmat: TensorSpec, out: TensorSpec, tile_a: int = 128, tile_b: int = 128,
                 a_heads_per_b: int = 1, lower_triangular: bool = False, num_warps: int = 4) -> Kernel:
    """out[b, h, x, y] = a[b, h, x] · bmat[b, h // a_heads_per_b, y] (a block-score GEMM, fp32 out), tile_a ×
    tile_b output tiles, one CTA per (x tile, b, h) looping over y tiles (lower_triangular: only y tiles whose first
    row ≤ the x tile's last row, the causal scores). Per (b, h): reads Na·w + Σ tiles·tile_b·w, writes the visited
    out tiles; matmul FLOPs 2·w per output element."""
    B, H, Na, w = a.dims
    Nb = bmat.dims[2]
    grid, (r, b, h) = _bh_grid(B, H, cdiv(Na, tile_a))
    y = var("y")
    rows, cols = Span(r, tile_a, Na), Span(y, tile_b, Nb)
    stop = cdiv(Nb, tile_b)
    if lower_triangular:
        from iosim.schedule import clamp
        stop = clamp(cdiv((r + 1) * tile_a, tile_b), 0, cdiv(Nb, tile_b))
    hb = h if a_heads_per_b == 1 else h // a_heads_per_b
    import sympy as sp
    if a_heads_per_b != 1:
        hb = sp.floor(h / a_heads_per_b)
    body = (
        Load("a", Tile(a.name, (point(b, B), point(h, H), rows, full(w)))),
        Loop(y, 0, stop, (
            Load("bm", Tile(bmat.name, (point(b, B), point(hb, bmat.dims[1]), cols, full(w)))),
            Compute("score_nt", ("a", "bm", "s"), matmul=(Work(2 * w, (rows, cols)),)),
            Store("s", Tile(out.name, (point(b, B), point(h, H), rows, cols))),
        )),
    )
    bufs = (Buffer("a", (tile_a, w), a.elem_bytes), Buffer("bm", (tile_b, w), bmat.elem_bytes, pipelined=True),
            Buffer("s", (tile_a, tile_b), 4, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def select_kernel(name: str, scores: TensorSpec, out: TensorSpec, rows_per_cta: int = 1, flops_per_score: int = 2,
                  num_warps: int = 4) -> Kernel:
    """Per score row (b, h, x): read the row of ``scores`` [B, H, Nx, Ny], write row x of ``out`` [B, H, Nx, K]
    (the kept indices, int32: top-k, cumulative threshold or a sort; the values written are the host selection,
    ``Schedule.tables['selected']`` when present, else the row's argsort). other FLOPs flops_per_score per score
    (compare + scan)."""
    B, H, Nx, Ny = scores.dims
    K = out.dims[3]
    grid, (r, b, h) = _bh_grid(B, H, cdiv(Nx, rows_per_cta))
    x = var("x")
    row = r * rows_per_cta + x
    body = (
        Loop(x, 0, rows_per_cta, (
            Load("row", Tile(scores.name, (point(b, B), point(h, H), Span(row, 1, Nx), full(Ny)))),
            Compute("select_row", ("row", "idx"), other=(Work(flops_per_score, (Span(row, 1, Nx), full(Ny))),)),
            Store("idx", Tile(out.name, (point(b, B), point(h, H), Span(row, 1, Nx), full(K)))),
        )),
    )
    bufs = (Buffer("row", (1, Ny), scores.elem_bytes, "reg"), Buffer("idx", (1, K), out.elem_bytes, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def gather_kernel(name: str, src: TensorSpec, dst: TensorSpec, perm: str, rows_per_cta: int = 128,
                  head_of=None, num_warps: int = 4) -> Kernel:
    """dst[b, h, x] = src[b, h, tables[perm][b, h, x]] (a row permutation / index gather into a contiguous copy:
    PBS-Attn's key sort, HyperAttention's LSH sort). Per (b, h): reads N·d·e (each row its own run: the L2 sees
    the scattered rows), writes N·d·e contiguous."""
    from iosim.schedule import gathered
    B, H, N, d = dst.dims
    grid, (r, b, h) = _bh_grid(B, H, cdiv(N, rows_per_cta))
    rows = Span(r, rows_per_cta, N)
    body = (
        Load("x", Tile(src.name, (point(b, B), point(h, H), gathered(r, rows_per_cta, N, table(perm), b, h), full(d)))),
        Compute("copy", ("x", "y"), other=()),
        Store("y", Tile(dst.name, (point(b, B), point(h, H), rows, full(d)))),
    )
    bufs = (Buffer("x", (rows_per_cta, d), src.elem_bytes), Buffer("y", (rows_per_cta, d), dst.elem_bytes, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)
