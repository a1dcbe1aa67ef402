"""Block-sparse attention forward: FlashAttention-2's loop order visiting only the KV blocks a block mask lists.

The user's boolean block mask M[i, j] (shape [T_r, T_c], or [B, H, T_r, T_c] per batch and head, broadcastable)
marks which (query block i, KV block j) tiles are computed, at the kernel's tile granularity (B_r = block_m,
B_c = block_n, as FlexAttention's BLOCK_SIZE and Block-Sparse-Attention's mask blocks). Element (r, c) is
attended iff M[⌊r/B_r⌋, ⌊c/B_c⌋] (and, when causal, c ≤ r + N_kv − N_q); unlisted tiles are skipped entirely
(FA1 §3.3, Prop. 4: Θ(Nd + N²d²M⁻¹·s) accesses for a fraction s of nonzero blocks). Causal problems also drop
the tiles entirely above the diagonal, as flash2 does.

The mask is compressed FlexAttention-style (``BlockMask.kv_num_blocks`` / ``kv_indices``) into two tables
attached to the schedule (``Schedule.tables``): kv_num_blocks[.., i] = number of listed blocks of row i,
kv_indices[.., i, t] = the t-th listed KV block (ascending). The KV loop is ``for t in range(kv_num_blocks[i])``
with ``j = kv_indices[i, t]``: a data-dependent loop, evaluated exactly (``iosim.expr.Lookup``) and counted by
enumerating (program, t) points as vectors (memory O(listed blocks), never O(N²)).

Per head: reads Q = N_q·d once, K + V = 2·d·Σ_listed c_j; writes O = N_q·d and LSE = N_q (fp32). Work per
visited tile as in flash2. Rows whose blocks are all unlisted get O = 0 and LSE = +∞ (PyTorch's fully-masked
convention). Without a mask every block is listed and the loop is flash2's (no tables; closed-form counting).
"""

from __future__ import annotations

import numpy as np

from iosim.errors import IosimError
from iosim.models._common import check_fit, check_head_dim, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models import flash2
from iosim.models.flash2 import default_tiles, grid_axes, kv_stop
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Kernel, Load, Loop, Schedule, Span, Store, cdiv, lookup, table, var


def block_visible_causal(p: Problem, tm: int, tn: int, bm: int, bn: int) -> np.ndarray:
    """[T_r, T_c] bool: tile (i, j) holds some key visible under the bottom-right causal mask
    (j·B_c ≤ min((i+1)·B_r, N_q) − 1 + N_kv − N_q)."""
    last_row = np.minimum((np.arange(tm) + 1) * bm, p.seq_q) - 1
    return np.arange(tn)[None, :] * bn <= (last_row + p.seq_kv - p.seq_q)[:, None]


def compress(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kv_num_blocks [..., T_r], kv_indices [..., T_r, max(1, max count)]) of a boolean block mask [..., T_r, T_c];
    kv_indices lists each row's True columns ascending, padded with 0 (FlexAttention's BlockMask layout)."""
    num = mask.sum(axis=-1).astype(np.int64)
    width = max(1, int(num.max()) if num.size else 1)
    # stable argsort of ¬mask puts True columns first, in ascending order
    order = np.argsort(~mask, axis=-1, kind="stable")[..., :width].astype(np.int64)
    idx = np.where(np.arange(width) < num[..., None], order, 0)
    return num, idx


def normalize_mask(p: Problem, block_mask, tm: int, tn: int) -> np.ndarray:
    """The user's mask as bool [T_r, T_c] or [B, H, T_r, T_c] (broadcast), with a clear error for a bad shape."""
    if block_mask is None:
        return np.ones((tm, tn), dtype=bool)
    m = np.asarray(block_mask)
    if m.dtype != bool:
        raise IosimError(f"block_sparse: block_mask must be a boolean array, got dtype {m.dtype}")
    if m.ndim == 2 and m.shape == (tm, tn):
        return m
    if m.ndim == 4 and m.shape[2:] == (tm, tn):
        try:
            return np.broadcast_to(m, (p.batch, p.heads, tm, tn))
        except ValueError:
            pass
    raise IosimError(f"block_sparse: block_mask has shape {m.shape}; it must be [T_r, T_c] = [{tm}, {tn}] or "
                     f"[B, H, {tm}, {tn}] (broadcastable to B={p.batch}, H={p.heads}) for "
                     f"seq_q={p.seq_q}, seq_kv={p.seq_kv}, block_m, block_n")


@register("block_sparse", "Block-sparse FA2 forward: per query block, only the KV blocks a boolean block mask lists (FlexAttention-style tables)")
def build(p: Problem, cfg: KernelConfig, hw=None, block_mask=None) -> Schedule:
    """block_mask: bool [T_r, T_c] or [B, H, T_r, T_c] over (block_m × block_n) tiles; None = all blocks."""
    check_head_dim(p, "block_sparse")
    for name in ("batch", "heads", "seq_q", "seq_kv"):
        if not isinstance(getattr(p, name), int):
            raise IosimError("block_sparse: needs concrete sizes (its loops depend on the block mask)")
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = default_tiles(p.head_dim)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    grid, vs = grid_axes(p, cfg, tm)
    b, h, pid = vs["b"], vs["h"], vs["m"]
    i = pid if cfg.q_order == "ascending" else tm - 1 - pid
    tables: dict = {}
    if block_mask is None:
        # every block listed: flash2's loop (no tables, so counting keeps its closed forms at any N)
        mask = None
        t = var("j")
        j, stop = t, kv_stop(p, i, bm, bn, tn)
    else:
        mask = normalize_mask(p, block_mask, tm, tn)
        if p.causal:
            mask = mask & block_visible_causal(p, tm, tn, bm, bn)
        num, idx = compress(mask)
        tables = {"kv_num_blocks": num, "kv_indices": idx}
        t = var("t")
        lead = (b, h) if mask.ndim == 4 else ()
        j, stop = lookup(table("kv_indices"), *lead, i, t), lookup(table("kv_num_blocks"), *lead, i)
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    body = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Loop(t, 0, stop, flash2.kv_step(p, b, h, rows, cols), reverse=cfg.kv_order == "descending"),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
        Store("lse", row_tile(p, "LSE", b, h, rows)),
    )
    kernel = Kernel("block_sparse_fwd", grid, flash2.buffers(bm, bn, d, e), body, threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    tensors = qkvo_tensors(p) | {"LSE": lse_tensor(p)}
    if mask is None:
        notes = ("no block mask: every block visited (flash2's loop)",)
    else:
        density = float(mask.mean()) if mask.size else 0.0
        notes = (f"block mask {'per (batch, head)' if mask.ndim == 4 else 'shared by all heads'}: {density:.1%} of "
                 f"{tm}×{tn} tiles visited" + (" (causal tiles above the diagonal dropped)" if p.causal else ""),)
    return Schedule("block_sparse", p, cfg, tensors, (kernel,), notes, tables=tables)
