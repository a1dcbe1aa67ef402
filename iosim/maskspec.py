"""Attention masks by name (``iosim predict --mask SPEC``): parse, intersect, and evaluate them per block.

Kinds (``parse_mask``); q is a query row, kv a key, A = q + N_kv − N_q its bottom-right aligned position (iosim's
causal convention, FlashAttention ≥ 2.1):

* ``causal`` — kv ≤ A; ``causal:top-left`` — kv ≤ q (torch's ``is_causal``; the same when N_q = N_kv).
* ``sliding:W`` — causal and A − kv < W, i.e. kv > A − W: W keys per row, the diagonal included (torch/Mistral's
  "kv > q − W"; FlashAttention's window_size = (W − 1, 0)).
* ``chunked:C`` — ⌊A/C⌋ = ⌊kv/C⌋ and causal (Llama 4's chunked attention).
* ``prefix:P`` — kv < P or causal (prefix-LM).
* ``document:L1,L2,…`` or ``document:FILE`` — A and kv in the same document (bidirectional inside it; add ``causal``
  for causal documents); FILE holds segment lengths or cu_seqlens (first value 0), as .npy or whitespace/comma text.
  The lengths must add up to N_kv.
* ``blocks:FILE`` — a bool block mask [T_q, T_kv] or [H, T_q, T_kv] at ``block`` (.npy, or .npz with one array or
  one named ``mask``).
* ``flex:FILE.npz`` — a FlexAttention ``BlockMask``'s tables (kv_num_blocks, kv_indices, full_kv_num_blocks,
  full_kv_indices) at BLOCK_SIZE ``block``; it holds no mask_mod, so it combines with nothing.

Several specs intersect (``combine``). Every element kind is one interval of keys per row, [lo(q), hi(q)], with lo
and hi non-decreasing in q, so an intersection is one too (max of the lo, min of the hi). Block (i, j) over rows
[q0, q1] and keys [k0, k1] is then decided from per-row arrays (O(N), never N×N): every element visible iff
lo(q1) ≤ k0 and hi(q0) ≥ k1 (the two extreme corners); some element visible iff some non-empty row lies in
[first q with hi(q) ≥ k0, last q with lo(q) ≤ k1] (two searchsorted and a prefix count of non-empty rows).
FlexAttention pads a ragged last block with masked elements (``_convert_mask_to_block_mask``), so a ragged block is
never full; ``block_states`` and ``flex_tables`` follow it and equal ``create_block_mask``'s tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Sequence

import numpy as np

from iosim.errors import IosimError
from iosim.masks import SPARSE_BLOCK, _compress

KINDS = ("causal", "causal:top-left", "sliding:W", "chunked:C", "prefix:P", "document:L1,L2,…|FILE", "blocks:FILE",
         "flex:FILE.npz")
FLEX_KEYS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Causal:
    top_left: bool = False

    def interval(self, q, nq, nkv):
        return np.zeros_like(q), q + (0 if self.top_left else nkv - nq)


@dataclass(frozen=True)
class Sliding:
    window: int

    def interval(self, q, nq, nkv):
        a = q + nkv - nq
        return a - self.window + 1, a


@dataclass(frozen=True)
class Chunked:
    chunk: int

    def interval(self, q, nq, nkv):
        a = q + nkv - nq
        return a // self.chunk * self.chunk, a


@dataclass(frozen=True)
class Prefix:
    prefix: int

    def interval(self, q, nq, nkv):
        return np.zeros_like(q), np.maximum(q + nkv - nq, self.prefix - 1)


@dataclass(frozen=True)
class Document:
    offsets: tuple[int, ...]  # cu_seqlens: 0, L1, L1 + L2, …

    def interval(self, q, nq, nkv):
        if self.offsets[-1] != nkv:
            raise IosimError(f"mask document: the documents cover {self.offsets[-1]} keys but the problem has "
                             f"seq_kv={nkv}; give lengths that add up to seq_kv")
        a = q + nkv - nq
        cu = np.asarray(self.offsets, dtype=np.int64)
        doc = np.searchsorted(cu, a, side="right") - 1
        inside = a >= 0
        return np.where(inside, cu[np.maximum(doc, 0)], 0), np.where(inside, cu[np.minimum(doc + 1, len(cu) - 1)] - 1, -1)


@dataclass(frozen=True)
class MaskSpec:
    """An intersection of element kinds, with at most one block-level part: a bool block mask ``blocks`` or the
    FlexAttention tables ``tables``, both at ``block``. ``text`` is how it was written."""

    text: str
    elements: tuple = ()
    blocks: np.ndarray | None = field(default=None, compare=False, repr=False)
    tables: dict | None = field(default=None, compare=False, repr=False)
    block: int = SPARSE_BLOCK

    def interval(self, q, nq: int, nkv: int):
        """(lo, hi) int64 per row of ``q``: the visible keys of each row, clipped to [0, N_kv − 1] (empty: lo > hi)."""
        q = np.asarray(q, dtype=np.int64)
        lo, hi = np.zeros_like(q), np.full_like(q, nkv - 1)
        for e in self.elements:
            a, b = e.interval(q, nq, nkv)
            lo, hi = np.maximum(lo, a), np.minimum(hi, b)
        return lo, hi

    def visible(self, q_idx, kv_idx, nq: int, nkv: int):
        """The element predicate of the element kinds, vectorized (broadcasting) over index arrays."""
        lo, hi = self.interval(q_idx, nq, nkv)
        return (lo <= kv_idx) & (kv_idx <= hi)


CAUSAL = MaskSpec("causal", (Causal(),))


def _int(text: str, what: str, least: int) -> int:
    try:
        v = int(text.strip().replace("_", ""))
    except ValueError:
        v = None
    if v is None or v < least:
        raise IosimError(f"mask {what}: {text!r} is not a whole number ≥ {least}")
    return v


def _file(path: str, kind: str) -> str:
    if not os.path.isfile(path):
        raise IosimError(f"mask {kind}:{path}: no such file; give the path of an existing file")
    return path


def _document(arg: str, spec: str) -> Document:
    if os.path.isfile(arg) or not set(arg) <= set("0123456789,_ "):
        path = Path(_file(arg, "document"))
        vals = np.load(path).ravel().tolist() if path.suffix == ".npy" else path.read_text().replace(",", " ").split()
        vals = [_int(str(v), spec, 0) for v in vals]
    else:
        vals = [_int(v, spec, 1) for v in arg.split(",")]
    if not vals:
        raise IosimError(f"mask {spec}: no segment lengths given")
    if vals[0] == 0:  # cu_seqlens
        cu = vals
        if any(b < a for a, b in zip(cu, cu[1:])):
            raise IosimError(f"mask {spec}: cu_seqlens must not decrease, got {cu[:8]}…")
    else:
        if min(vals) < 1:
            raise IosimError(f"mask {spec}: segment lengths must be ≥ 1 (or give cu_seqlens starting at 0)")
        cu = np.concatenate([[0], np.cumsum(vals)]).tolist()
    return Document(tuple(int(c) for c in cu))


def _load_blocks(path: str) -> np.ndarray:
    data = np.load(_file(path, "blocks"))
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        if len(keys) != 1 and "mask" not in keys:
            raise IosimError(f"mask blocks:{path}: the .npz holds {keys}; save one array, or one named 'mask'")
        data = data["mask" if "mask" in keys else keys[0]]
    if data.dtype != bool or data.ndim not in (2, 3):
        raise IosimError(f"mask blocks:{path}: need a bool array [T_q, T_kv] or [H, T_q, T_kv], got {data.dtype} "
                         f"of shape {data.shape}")
    return data


def _load_flex(path: str, block: int) -> dict:
    data = np.load(_file(path, "flex"))
    missing = [k for k in FLEX_KEYS[:2] if k not in getattr(data, "files", ())]
    if missing:
        raise IosimError(f"mask flex:{path}: need an .npz with {', '.join(FLEX_KEYS)} (np.savez of a BlockMask's "
                         f"tables); missing {', '.join(missing)}")
    return {k: (np.asarray(data[k]) if k in data.files else None) for k in FLEX_KEYS} | {"block_size": block}


def parse_mask(spec: str, block: int = SPARSE_BLOCK) -> MaskSpec:
    """One ``--mask`` value; ``block`` is ``--mask-block`` (the block of ``blocks:`` and ``flex:`` files)."""
    if not isinstance(block, int) or block < 1:
        raise IosimError(f"--mask-block must be a positive integer, got {block!r}")
    kind, _, arg = spec.strip().partition(":")
    if kind == "causal" and arg in ("", "bottom-right", "top-left"):
        return MaskSpec(spec, (Causal(arg == "top-left"),), block=block)
    make = {"sliding": lambda: (Sliding(_int(arg, spec, 1)),), "chunked": lambda: (Chunked(_int(arg, spec, 1)),),
            "prefix": lambda: (Prefix(_int(arg, spec, 0)),), "document": lambda: (_document(arg, spec),)}
    if kind in make and arg:
        return MaskSpec(spec, make[kind](), block=block)
    if kind == "blocks" and arg:
        return MaskSpec(spec, blocks=_load_blocks(arg), block=block)
    if kind == "flex" and arg:
        return MaskSpec(spec, tables=_load_flex(arg, block), block=block)
    raise IosimError(f"--mask {spec!r}: unknown mask; give one of {', '.join(KINDS)}")


def from_tables(tables: dict, text: str = "flex tables") -> MaskSpec:
    """A MaskSpec of FlexAttention tables (``iosim.masks.from_flex`` or ``flex_block_tables``)."""
    return MaskSpec(text, tables=tables, block=int(tables.get("block_size", SPARSE_BLOCK)))


def combine(specs: Sequence[MaskSpec | str], block: int = SPARSE_BLOCK) -> MaskSpec:
    """The intersection of several masks (strings are parsed at ``block``)."""
    specs = [parse_mask(s, block) if isinstance(s, str) else s for s in specs]
    if not specs:
        raise IosimError("combine: no mask given")
    if len(specs) == 1:
        return specs[0]
    if any(s.tables is not None for s in specs):
        raise IosimError("mask flex:FILE holds no mask_mod, so it cannot be intersected with another mask; give it alone")
    blocks = [s.blocks for s in specs if s.blocks is not None]
    if len({s.block for s in specs if s.blocks is not None}) > 1:
        raise IosimError("masks blocks:FILE at different --mask-block sizes cannot be intersected")
    try:
        both = np.logical_and.reduce(np.broadcast_arrays(*blocks)) if len(blocks) > 1 else (blocks or [None])[0]
    except ValueError:
        raise IosimError(f"masks blocks:FILE of shapes {[b.shape for b in blocks]} cannot be intersected") from None
    block = next((s.block for s in specs if s.blocks is not None), specs[0].block)
    return MaskSpec(" ∩ ".join(s.text for s in specs), tuple(e for s in specs for e in s.elements), both, None, block)


def fa2_window(spec: MaskSpec, nq: int, nkv: int) -> tuple[int, int] | None:
    """FlashAttention's (window_size_left, window_size_right) of a mask made of causal and sliding:W only: keys
    [A − left, A + right], −1 unbounded; (−1, 0) is iosim's causal mask. sliding:W gives left = W − 1;
    causal:top-left gives right = N_q − N_kv, which FA2 cannot take when negative (None then, and for other kinds)."""
    if spec.blocks is not None or spec.tables is not None or not spec.elements:
        return None
    if not all(isinstance(e, (Causal, Sliding)) for e in spec.elements):
        return None
    right = min(nq - nkv if isinstance(e, Causal) and e.top_left else 0 for e in spec.elements)
    left = min((e.window - 1 for e in spec.elements if isinstance(e, Sliding)), default=-1)
    return None if right < 0 else (left, right)


def _edges(n: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    first = np.arange(_cdiv(n, b)) * b
    return first, np.minimum(first + b, n) - 1


def _element_blocks(spec: MaskSpec, nq: int, nkv: int, bq: int, bk: int):
    """(some, every, lo, hi): per (bq × bk) block of the element kinds, some element visible / every in-bounds
    element visible (module docstring), and the per-row intervals."""
    lo, hi = spec.interval(np.arange(nq), nq, nkv)
    q0, q1 = _edges(nq, bq)
    k0, k1 = _edges(nkv, bk)
    rows = np.concatenate([[0], np.cumsum(lo <= hi)])
    qs = np.maximum(q0[:, None], np.searchsorted(hi, k0, side="left")[None, :])
    qe = np.minimum(q1[:, None], np.searchsorted(lo, k1, side="right")[None, :] - 1)
    some = (qs <= qe) & (rows[qe + 1] > rows[np.minimum(qs, qe + 1)])
    every = (lo[q1][:, None] <= k0[None, :]) & (hi[q0][:, None] >= k1[None, :])
    return some, every, lo, hi


def _fit(spec: MaskSpec, p) -> None:
    """The block-level part's shape against the problem (an error names both)."""
    tq, tk, b = _cdiv(p.seq_q, spec.block), _cdiv(p.seq_kv, spec.block), spec.block
    where = f"at --mask-block {b} for seq_q={p.seq_q}, seq_kv={p.seq_kv}, heads={p.heads}"
    if spec.blocks is not None:
        m = spec.blocks
        if m.shape[-2:] != (tq, tk) or (m.ndim == 3 and m.shape[0] not in (1, p.heads)):
            raise IosimError(f"mask {spec.text}: block mask of shape {list(m.shape)} does not fit the problem: expected "
                             f"[{tq}, {tk}] or [{p.heads}, {tq}, {tk}] {where}")
    if spec.tables is not None:
        t = spec.tables
        num, idx = np.asarray(t["kv_num_blocks"]), np.asarray(t["kv_indices"])
        fnum = t.get("full_kv_num_blocks")
        shapes = [num.shape, idx.shape] + ([] if fnum is None else [np.shape(fnum), np.shape(t["full_kv_indices"])])
        bad = (num.ndim != 3 or idx.ndim != 4 or num.shape[2] != tq or idx.shape[:3] != num.shape
               or num.shape[0] not in (1, p.batch) or num.shape[1] not in (1, p.heads)
               or idx.shape[3] > tk or (fnum is not None and (np.shape(fnum) != num.shape
                                                              or np.shape(t["full_kv_indices"]) != idx.shape)))
        if bad or (num.size and (num.max() > tk or (idx.size and idx.max() >= tk))):
            raise IosimError(f"mask {spec.text}: tables of shapes {[list(s) for s in shapes]} (kv_num_blocks, "
                             f"kv_indices, full_…) do not fit the problem: expected [B, H, {tq}] and [B, H, {tq}, ≤{tk}] "
                             f"(B in 1, {p.batch}; H in 1, {p.heads}; indices < {tk}) {where}")


def _dense(num, idx, tk: int) -> np.ndarray:
    """bool [..., T_q, T_kv] of a (num, idx) list pair (the first num[..., i] entries of each row)."""
    num, idx = np.asarray(num, dtype=np.int64), np.asarray(idx, dtype=np.int64)
    out = np.zeros(num.shape + (tk,), dtype=bool)
    listed = np.arange(idx.shape[-1]) < num[..., None]
    b, h, i, t = np.nonzero(listed)
    out[b, h, i, idx[b, h, i, t]] = True
    return out


def block_states(spec: MaskSpec, p) -> tuple[np.ndarray, np.ndarray]:
    """(partial, full) bool per (block × block) block at ``spec.block``, as FlexAttention's ``create_block_mask``
    classifies them: full = every element of the (zero-padded) block visible, partial = some but not all. Shapes
    [T_q, T_kv], or [H, T_q, T_kv] for a per-head ``blocks:`` mask, or [B, H, T_q, T_kv] for ``flex:`` tables."""
    _fit(spec, p)
    b, nq, nkv = spec.block, p.seq_q, p.seq_kv
    if spec.tables is not None:
        t, tk = spec.tables, _cdiv(nkv, b)
        full = (np.zeros(np.shape(t["kv_num_blocks"]) + (tk,), dtype=bool) if t.get("full_kv_num_blocks") is None
                else _dense(t["full_kv_num_blocks"], t["full_kv_indices"], tk))
        return _dense(t["kv_num_blocks"], t["kv_indices"], tk) & ~full, full
    some, every, _, _ = _element_blocks(spec, nq, nkv, b, b)
    q0, q1 = _edges(nq, b)
    k0, k1 = _edges(nkv, b)
    full = every & (q1 - q0 + 1 == b)[:, None] & (k1 - k0 + 1 == b)[None, :]  # ragged blocks are padded: never full
    if spec.blocks is not None:
        some, full = some & spec.blocks, full & spec.blocks
    return some & ~full, full


def flex_tables(spec: MaskSpec, p) -> dict:
    """FlexAttention's BlockMask tables of the mask (``iosim.masks.flex_block_tables``' layout: int32, 4 dims, each
    row ascending then 0 padding), for ``predict(..., kernel="flex", block_mask=...)``."""
    partial, full = block_states(spec, p)
    partial, full = (np.broadcast_to(m, (1,) * (4 - m.ndim) + m.shape) for m in (partial, full))
    kv_num, kv_idx = _compress(partial)
    full_num, full_idx = _compress(full)
    return {"kv_num_blocks": kv_num, "kv_indices": kv_idx, "full_kv_num_blocks": full_num,
            "full_kv_indices": full_idx, "block_size": spec.block, "seq_q": p.seq_q, "seq_kv": p.seq_kv}


def _group_any(m: np.ndarray, fq: int, fk: int) -> np.ndarray:
    """OR over groups of fq × fk blocks (the last group may be short)."""
    tq, tk = m.shape[-2:]
    pad = [(0, 0)] * (m.ndim - 2) + [(0, _cdiv(tq, fq) * fq - tq), (0, _cdiv(tk, fk) * fk - tk)]
    m = np.pad(m, pad)
    return m.reshape(m.shape[:-2] + (m.shape[-2] // fq, fq, m.shape[-1] // fk, fk)).any(axis=(-3, -1))


def tile_mask(spec: MaskSpec, p, bm: int, bn: int) -> np.ndarray:
    """bool [T_m, T_n] (or [H, …] / [B, H, …]) over the kernel's bm × bn tiles: the tile holds a visible element
    (partial ∪ full) — what block-sparse kernels visit; an [H, …] mask comes back as [1, H, …]. A block-level part is refined to the common grid
    gcd(tile, block) and OR-ed back up to tiles; with ``flex:`` tables a partial block's tiles are all kept."""
    _fit(spec, p)
    level = spec.blocks is not None or spec.tables is not None
    gq, gk = (gcd(bm, spec.block), gcd(bn, spec.block)) if level else (bm, bn)
    some = _element_blocks(spec, p.seq_q, p.seq_kv, gq, gk)[0]
    if level:
        part, full = block_states(spec, p) if spec.tables is not None else (spec.blocks, None)
        coarse = part | full if full is not None else part
        rows = np.arange(_cdiv(p.seq_q, gq)) * gq // spec.block
        cols = np.arange(_cdiv(p.seq_kv, gk)) * gk // spec.block
        some = some & coarse[..., rows[:, None], cols[None, :]]
    out = _group_any(some, bm // gq, bn // gk)
    return out[None] if out.ndim == 3 else out


def describe(spec: MaskSpec, p) -> dict:
    """The mask and its density: visible fraction of blocks at ``spec.block`` (partial + full) and of elements
    (None for ``flex:`` tables: their partial blocks' elements are unknown)."""
    partial, full = block_states(spec, p)
    partial, full = np.broadcast_arrays(partial, full)
    blocks = partial.size
    elements = None
    if spec.tables is None:
        some, every, lo, hi = _element_blocks(spec, p.seq_q, p.seq_kv, spec.block, spec.block)
        keep = np.ones_like(some) if spec.blocks is None else spec.blocks
        q0, q1 = _edges(p.seq_q, spec.block)
        k0, k1 = _edges(p.seq_kv, spec.block)
        area = (q1 - q0 + 1)[:, None] * (k1 - k0 + 1)[None, :]
        seen = np.where(every, area, 0)
        i, j = np.nonzero(some & ~every)
        for s in range(0, len(i), 4096):  # blocks crossed by an interval edge: per-row overlap, 4096 blocks at a time
            r = q0[i[s:s + 4096], None] + np.arange(spec.block)
            inb = r <= q1[i[s:s + 4096], None]
            r = np.minimum(r, p.seq_q - 1)
            lo_k, hi_k = k0[j[s:s + 4096], None], k1[j[s:s + 4096], None]
            seen[i[s:s + 4096], j[s:s + 4096]] = (np.clip(np.minimum(hi[r], hi_k) - np.maximum(lo[r], lo_k) + 1, 0, None)
                                                  * inb).sum(axis=1)
        elements = float((seen * keep).sum() / (keep.shape[0] if keep.ndim == 3 else 1)) / (p.seq_q * p.seq_kv)
    return {"spec": spec.text, "block": spec.block, "blocks": blocks, "partial_blocks": int(partial.sum()),
            "full_blocks": int(full.sum()), "block_density": float((partial | full).sum() / blocks) if blocks else 0.0,
            "element_density": elements}
