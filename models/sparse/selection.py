"""Choosing blocks, shared by the sparse-attention family (issue 23): where the kept blocks come from, and the
one-line checks of a method's problem and parameters.

Which (query block, KV block) tiles a method keeps is data-dependent. It comes one of three ways (``choose_blocks``),
and the family module turns it into its kernel's tables (``models/sparse/kernels.py``):

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
dense FlashAttention-2 (the tests check this against naive attention). ``per_head_mask`` decides whether a density
selection is drawn per head or shared by heads.

Checks (one-line ``IosimError``): ``concrete`` (integer problem sizes: the loops follow the selection),
``check_params`` (a number in a range), ``check_int`` (a whole number ≥ 1).
"""

from __future__ import annotations

import os

import numpy as np

from iosim.errors import IosimError
from iosim.models.block_sparse import block_visible_causal, normalize_mask
from iosim.problem import Problem
from iosim.schedule import cdiv

MAX_MASK_BLOCKS = 1 << 28  # bool blocks a per-head selection may hold (256 MiB); beyond: share the mask by heads
PER_HEAD_LIMIT = 1 << 22  # heads × T_q × T_kv blocks up to which a density selection is drawn per head (else shared)


# --- checks -----------------------------------------------------------------------------------------------------------

def check_params(method: str, **ranges) -> None:
    """ranges: name=(value, lo, hi) with lo ≤ value ≤ hi required (None bounds: open); one-line error otherwise."""
    for name, (v, lo, hi) in ranges.items():
        if v is None:
            continue
        if not isinstance(v, (int, float, np.integer, np.floating)) or (lo is not None and v < lo) or \
                (hi is not None and v > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f"≥ {lo}"
            raise IosimError(f"{method}: {name}={v!r} is out of range; give a number in {rng}")


def check_int(method: str, **vals) -> None:
    """Whole numbers ≥ 1 (one-line error otherwise)."""
    for n, v in vals.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise IosimError(f"{method}: {n}={v!r} must be a whole number ≥ 1")


def concrete(p: Problem, method: str) -> None:
    """Integer problem sizes (a method whose block selection and loops depend on them has no symbolic form)."""
    for name in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim"):
        if not isinstance(getattr(p, name), int):
            raise IosimError(f"{method}: needs concrete sizes (its block selection and loops depend on them); "
                             "give integers, not symbolic sizes")


# --- selection --------------------------------------------------------------------------------------------------------

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


def per_head_mask(p: Problem, tq: int, tk: int, per_head) -> bool:
    """Draw a density selection per head (True) or share it by heads: ``per_head`` if given, else per head while
    heads × T_q × T_kv ≤ PER_HEAD_LIMIT (counting enumerates every listed tile of every head)."""
    if per_head is None:
        return p.heads * tq * tk <= PER_HEAD_LIMIT
    if not isinstance(per_head, bool):
        raise IosimError(f"per_head={per_head!r}: give true or false (a selection per head, or shared by heads)")
    return per_head


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
