"""Block masks shared by the GPU harness (benchmarks/gpu/validate_l2.py) and the model (``iosim.presets`` "flex").

* ``random_block_mask`` — a seeded random block-sparse mask over (sparse block × sparse block) tiles, deterministic
  (``numpy.random.default_rng(seed)``); the diagonal block of every query block is always kept, so no row is empty.
* ``flex_block_tables`` — a boolean block mask as FlexAttention's ``BlockMask`` stores it: ``kv_num_blocks`` /
  ``kv_indices`` list the *partial* blocks (those where mask_mod must be applied) and ``full_kv_num_blocks`` /
  ``full_kv_indices`` the blocks that are entirely visible, each row ascending, padded with 0 — what
  ``torch.nn.attention.flex_attention.create_block_mask`` produces (``separate_full_blocks=True``) for the mask_mod
  "block listed in the table, and (causal) key ≤ query + N_kv − N_q". The harness hands these exact tables to
  ``BlockMask.from_kv_blocks``, and the model visits the same lists in the same order.
* ``from_flex`` — a torch ``BlockMask`` (``create_block_mask``) as the same tables, for ``predict(..., block_mask=)``.
  Masks by name (``--mask SPEC``) are ``iosim.maskspec``.

Causal masks are bottom-right aligned (iosim's convention; equal to top-left for N_q = N_kv).
Block indices are at the sparse block size (FlexAttention's BLOCK_SIZE, 128 by default), not the kernel's BLOCK_N.
"""

from __future__ import annotations

import numpy as np

from iosim.errors import IosimError

SPARSE_BLOCK = 128
"""FlexAttention's default sparse block size (``_DEFAULT_SPARSE_BLOCK_SIZE`` in torch/nn/attention/flex_attention.py)."""


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def diagonal_blocks(seq_q: int, seq_kv: int, block: int = SPARSE_BLOCK) -> np.ndarray:
    """[T_q] int: for each query block, the KV block holding the (bottom-right aligned) diagonal of its last row,
    clipped to [0, T_kv − 1]; −1 where the whole query block sees no key under the causal mask."""
    tq, tk = _cdiv(seq_q, block), _cdiv(seq_kv, block)
    last_row = np.minimum((np.arange(tq) + 1) * block, seq_q) - 1
    col = last_row + seq_kv - seq_q
    return np.where(col < 0, -1, np.minimum(col // block, tk - 1)).astype(np.int64)


def causal_block_visible(seq_q: int, seq_kv: int, block: int = SPARSE_BLOCK) -> np.ndarray:
    """[T_q, T_kv] bool: block (i, j) holds at least one visible (query, key) pair under the causal mask."""
    tk = _cdiv(seq_kv, block)
    return np.arange(tk)[None, :] <= diagonal_blocks(seq_q, seq_kv, block)[:, None]


def causal_block_full(seq_q: int, seq_kv: int, block: int = SPARSE_BLOCK) -> np.ndarray:
    """[T_q, T_kv] bool: every in-bounds (query, key) pair of block (i, j) is visible under the causal mask
    (key ≤ query + N_kv − N_q for the block's first row and last key)."""
    tq, tk = _cdiv(seq_q, block), _cdiv(seq_kv, block)
    first_row = np.arange(tq) * block
    last_key = np.minimum((np.arange(tk) + 1) * block, seq_kv) - 1
    return last_key[None, :] <= (first_row + seq_kv - seq_q)[:, None]


def random_block_mask(batch: int, heads: int, seq_q: int, seq_kv: int, block: int = SPARSE_BLOCK,
                      density: float = 0.5, seed: int = 0, causal: bool = False) -> np.ndarray:
    """bool [batch, heads, T_q, T_kv]: each block kept with probability ``density`` (independently per batch and
    head, ``default_rng(seed).random(shape) < density``); the diagonal block of every query block is always kept;
    causal masks drop the blocks with no visible pair (above the diagonal)."""
    for name, v in (("batch", batch), ("heads", heads), ("seq_q", seq_q), ("seq_kv", seq_kv), ("block", block)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise IosimError(f"random_block_mask: {name} must be a positive integer, got {v!r}")
    if not 0.0 <= density <= 1.0:
        raise IosimError(f"random_block_mask: density must be in [0, 1], got {density}")
    tq, tk = _cdiv(seq_q, block), _cdiv(seq_kv, block)
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, heads, tq, tk)) < density
    diag = diagonal_blocks(seq_q, seq_kv, block)
    rows = np.nonzero(diag >= 0)[0]
    mask[:, :, rows, diag[rows]] = True
    if causal:
        mask &= causal_block_visible(seq_q, seq_kv, block)
    return mask


def _compress(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(num [..., T_q] int32, idx [..., T_q, T_kv] int32): each row's True columns ascending, then 0 padding."""
    num = mask.sum(axis=-1).astype(np.int32)
    order = np.argsort(~mask, axis=-1, kind="stable")
    idx = np.where(np.arange(mask.shape[-1]) < num[..., None], order, 0).astype(np.int32)
    return num, idx


def flex_block_tables(mask: np.ndarray | None, seq_q: int, seq_kv: int, causal: bool = False,
                      block: int = SPARSE_BLOCK) -> dict[str, np.ndarray]:
    """FlexAttention's BlockMask tables for a boolean block mask (None = every block) at sparse block ``block``.

    mask: bool [T_q, T_kv] or [B, H, T_q, T_kv]. Returns int32 arrays with 4 dims ([1, 1, …] for a 2-d mask):
    kv_num_blocks [B, H, T_q], kv_indices [B, H, T_q, T_kv] (partial blocks), full_kv_num_blocks, full_kv_indices
    (fully visible blocks). Non-causal, every listed block is full (the mask is constant inside a block); causal,
    listed blocks crossed by the diagonal are partial.
    """
    tq, tk = _cdiv(seq_q, block), _cdiv(seq_kv, block)
    m = np.ones((tq, tk), dtype=bool) if mask is None else np.asarray(mask)
    if m.dtype != bool:
        raise IosimError(f"flex_block_tables: the block mask must be boolean, got dtype {m.dtype}")
    if m.shape[-2:] != (tq, tk) or m.ndim not in (2, 4):
        raise IosimError(f"flex_block_tables: block mask of shape {m.shape}; expected [{tq}, {tk}] or [B, H, {tq}, {tk}] "
                         f"for seq_q={seq_q}, seq_kv={seq_kv}, block={block}")
    if m.ndim == 2:
        m = m[None, None]
    if causal:
        m = m & causal_block_visible(seq_q, seq_kv, block)
        full = m & causal_block_full(seq_q, seq_kv, block)
    else:
        full = m
    partial = m & ~full
    kv_num, kv_idx = _compress(partial)
    full_num, full_idx = _compress(full)
    return {"kv_num_blocks": kv_num, "kv_indices": kv_idx, "full_kv_num_blocks": full_num,
            "full_kv_indices": full_idx, "block_size": block, "seq_q": seq_q, "seq_kv": seq_kv}


def from_flex(block_mask) -> dict:
    """A torch FlexAttention ``BlockMask`` → its tables as NumPy (int32 kv_num_blocks [B, H, T_q], kv_indices
    [B, H, T_q, T_kv], full_kv_* or None) with block_size (``BLOCK_SIZE``) and seq_q, seq_kv (``seq_lengths``): the
    dict ``predict(..., kernel="flex", block_mask=...)`` and ``iosim.maskspec.from_tables`` take."""
    need = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "BLOCK_SIZE", "seq_lengths")
    if not all(hasattr(block_mask, a) for a in need):
        raise IosimError(f"from_flex: need a torch.nn.attention.flex_attention.BlockMask, got {type(block_mask).__name__}")
    bq, bk = block_mask.BLOCK_SIZE
    if bq != bk:
        raise IosimError(f"from_flex: BLOCK_SIZE {(bq, bk)}: iosim's flex model takes one sparse block size for Q and KV; "
                         "build the BlockMask with an int BLOCK_SIZE")

    def arr(t):
        return None if t is None else t.detach().cpu().numpy().astype(np.int32)
    return {"kv_num_blocks": arr(block_mask.kv_num_blocks), "kv_indices": arr(block_mask.kv_indices),
            "full_kv_num_blocks": arr(block_mask.full_kv_num_blocks), "full_kv_indices": arr(block_mask.full_kv_indices),
            "block_size": int(bq), "seq_q": int(block_mask.seq_lengths[0]), "seq_kv": int(block_mask.seq_lengths[1])}


def density(mask: np.ndarray) -> float:
    """Fraction of True blocks."""
    return float(np.asarray(mask).mean()) if np.asarray(mask).size else 0.0
