"""PowerAttention (Chen et al., arXiv 2503.03588; code github.com/w568w/PowerAttention, not readable here): a static
block pattern — a sliding window plus the blocks at power-of-2 distances — run by a block-sparse FA2 kernel, with no
pre-pass (nothing is scored or selected at run time).

Pattern (causal, per query block i whose diagonal KV block is D = the block of its last visible key): KV blocks
D − k for 0 ≤ k < ``window`` (the sliding window, the diagonal included), D − 2^m for m ≥ 0 (distances 1, 2, 4, …),
and the first ``sink`` blocks; about window + log2(D) blocks per row, so the kept fraction falls as ~2·log2(T)/T
with T blocks. Non-causal problems get the mirrored pattern (|i − j| in the window or a power of 2): iosim's
extension, the paper's pattern is causal. Decode (N_q = 1) is the last row of the pattern.

Kernel ``power_fwd``: FA2's forward over the pattern's blocks (``kernels.listed_fwd_kernel`` with the
Block-Sparse-Attention fork's tiles and launch: 128×64 at d = 128, KV descending, 255 registers, one smem stage);
per (b, h): reads Q once, K + V of the kept blocks, writes O and LSE. GQA is native (each query head reads its KV
head's blocks). Decode runs the same kernel with one query row per CTA (no split-KV: ~log2(T) blocks per head).

Parameters: ``block`` (mask block, default 128), ``window`` (blocks, default 1), ``sink`` (default 0); ``density``
instead of ``window``: the smallest window whose pattern keeps at least that fraction of the valid blocks (the
pattern stays static; density only sizes the window, for density sweeps); ``table``: a bool block mask of the
user's own that replaces the pattern (the same kernel). ``scores`` is refused (nothing is selected at run time).

Choices (the paper's body was not readable here: block size, window and sink of its efficiency runs are assumed):
block 128 (the Block-Sparse-Attention mask block), window 1 (the diagonal; distance 1 is a power of 2, so the two
nearest blocks are always kept), no sink; the kernel is the FA2 block-sparse fork (the paper's own kernel unknown).
"""

from __future__ import annotations

import numpy as np

from iosim.errors import IosimError
from iosim.models._common import check_head_dim
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import bsa_tiles, fill_tiles, listed_fwd_kernel, tile_tables
from iosim.models.sparse.selection import concrete
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Schedule, cdiv
from dataclasses import replace

BLOCK = 128


def power_mask(p: Problem, block: int, window: int, sink: int) -> np.ndarray:
    """[T_q, T_kv] bool: the PowerAttention pattern (module docstring) intersected with the valid blocks."""
    tq, tk = cdiv(p.seq_q, block), cdiv(p.seq_kv, block)
    last_key = np.minimum((np.arange(tq) + 1) * block, p.seq_q) - 1 + p.seq_kv - p.seq_q
    diag = np.clip(last_key // block, 0, tk - 1)
    dist = diag[:, None] - np.arange(tk)[None, :]
    a = np.abs(dist) if not p.causal else dist
    pow2 = (a > 0) & ((a & (a - 1)) == 0)
    m = ((a >= 0) & (a < window)) | pow2
    m[:, :min(sink, tk)] = True
    return m & sc.valid_blocks(p, block, block)


def window_for_density(p: Problem, block: int, density: float, sink: int) -> int:
    """The smallest window (blocks) whose pattern keeps ≥ density of the valid blocks."""
    sc.check_params("power_attention", density=(density, 0.0, 1.0))
    tk = cdiv(p.seq_kv, block)
    lo, hi = 1, tk
    while lo < hi:
        mid = (lo + hi) // 2
        if sc.kept_fraction(power_mask(p, block, mid, sink), p, block, block) >= density:
            hi = mid
        else:
            lo = mid + 1
    return lo


@register("power_attention", "PowerAttention: static sliding window + power-of-2-distance blocks, no pre-pass, "
          "block-sparse FA2 kernel")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          block: int = BLOCK, window: int | None = None, sink: int = 0) -> Schedule:
    """block (128), window (blocks incl. the diagonal; default 1, or sized by density), sink (first blocks)."""
    concrete(p, "power_attention")
    check_head_dim(p, "power_attention")
    if p.seq_q != p.seq_kv and p.seq_q != 1:
        raise IosimError(f"power_attention: models prefill (seq_q == seq_kv) and decode (seq_q = 1); got "
                         f"seq_q={p.seq_q}, seq_kv={p.seq_kv}")
    if scores is not None:
        raise IosimError("power_attention: the pattern is static (nothing is selected at run time), it takes no "
                         "scores; give window= or density=")
    for name, v, lo in (("block", block, 16), ("sink", sink, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise IosimError(f"power_attention: {name}={v!r} must be an integer ≥ {lo}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise IosimError(f"power_attention: window={window!r} must be a positive number of blocks")
    given = [n for n, v in (("density", density), ("window", window), ("table", table)) if v is not None]
    if len(given) > 1:
        raise IosimError(f"power_attention: give one of density, window or table, not {' and '.join(given)}")
    cfg = fill_tiles(cfg, tuple(min(t, block) for t in bsa_tiles(p.head_dim)))  # tiles inside one mask block
    if p.seq_q == 1:
        cfg = replace(cfg, block_m=min(cfg.block_m, block))
    if table is not None:
        mask, src = sc.choose_blocks(p, block, block, table=table, method="power_attention")
        w = None
    else:
        w = window_for_density(p, block, float(density), sink) if density is not None else (window or 1)
        mask, src = power_mask(p, block, w, sink), f"pattern: window {w} block(s), powers of 2, sink {sink}"
    kept = sc.kept_fraction(mask, p, block, block)
    fcfg = replace(cfg, kv_order="descending", grid_order=("m", "b", "h"))
    tabs, ph = tile_tables(p, mask, block, cfg.block_m, cfg.block_n, "pw_")
    kernel = listed_fwd_kernel(p, fcfg, ph, hw, "power_fwd", "pw_")
    tq = cdiv(p.seq_q, block)
    per_row = mask.reshape(-1, tq, mask.shape[-1]).sum(-1).mean()
    notes = (f"PowerAttention: {src} ({per_row:.1f} blocks of {block} per query block, {kept:.1%} of the "
             f"{'causal-valid ' if p.causal else ''}blocks)" + ("" if p.causal or p.seq_q == 1 else
                                                               "; non-causal: mirrored pattern (iosim's extension)"),
             f"kernel: block-sparse FA2 (Block-Sparse-Attention fork tiles {cfg.block_m}×{cfg.block_n}); no pre-pass")
    return Schedule("power_attention", p, cfg, sc.attention_tensors(p), (kernel,), notes, tables=tabs)
