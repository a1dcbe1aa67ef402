"""Sparse-vDiT (Chen et al., arXiv 2506.03065; github.com/Peyton-Chen/Sparse-vDiT holds no code at the read commit):
each attention head of a video DiT runs one of five modes fixed offline — dense, diagonal, multi-diagonal,
vertical-stripe or skip — and heads sharing a mode are fused into one launch.

Modes at ``block``-token granularity (B = 128 by default; i, j query and KV blocks; self-attention, N_q = N_kv):
* ``dense`` — every block (FlashAttention over the head);
* ``diagonal`` — |i − j| ≤ ``diag_blocks`` (local spatial attention inside a frame);
* ``multi_diagonal`` — the diagonal band repeated at every offset k·F tokens, F = ``frame_tokens`` (the same
  positions in other latent frames): |i − j − round(k·F/B)| ≤ diag_blocks for some integer k;
* ``vertical_stripe`` — the first ``stripe_blocks`` KV blocks for every query block (global columns; default the
  first latent frame, ⌈F/B⌉ blocks);
* ``skip`` — no attention: the head's output is zeros (a store of N·d per head, nothing read).

Kernels: one ``vdit_{mode}`` launch per mode present, over that mode's heads only (the head index through a table:
the fused launch), each FA2's forward over its mode's blocks (``kernels.listed_fwd_kernel``, the
Block-Sparse-Attention fork's tiles and launch); ``vdit_skip`` writes the skipped heads' O and LSE (O = 0). Per
head: reads Q, K + V of the mode's blocks; writes O and LSE. No pre-pass: the modes come from the offline search.

Mix: ``mix`` gives the fraction of heads per mode ("diagonal:0.3,multi_diagonal:0.2,vertical_stripe:0.2,skip:0.05"
or a dict; the rest are dense); heads are assigned in mode order (dense, diagonal, multi_diagonal,
vertical_stripe, skip) by largest remainder. Default: every head dense (the paper gives no per-mode distribution
beyond "3–6% of heads can be skipped"; the mix is the user's, as the offline search's output is). ``density``
instead of ``mix``: the kept fraction of all heads' valid blocks — skip takes 5% of the heads (the middle of the
paper's 3–6%), the dense heads are as many as reach the density (fewest dense heads whose total is ≥ density), the
rest split evenly over diagonal, multi_diagonal and vertical_stripe. ``table`` and ``scores`` are refused (the
modes are chosen offline, not from run-time scores). ``seed`` is unused (the assignment is deterministic).

Choices (assumed; the paper's kernels and shapes were not readable here): block 128 and the FA2 block-sparse fork
as each mode's kernel (the paper writes its own pattern kernels); diag_blocks 1; frame_tokens 3600 (a 720p latent
frame of 45×80 patches, HunyuanVideo / Wan2.1); non-causal (DiT attention is bidirectional; causal problems are
masked too). If the implementation gathers each mode's heads into contiguous tensors (index_select) that copy
(3·N·d read and written per head, and O scattered back) is left out.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models._common import check_head_dim, q_tile, row_tile
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import bsa_tiles, fill_tiles, listed_fwd_kernel, tile_tables
from iosim.models.sparse.selection import concrete
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, Tile, Work, cdiv,
                            lookup, table, var)

MODES = ("dense", "diagonal", "multi_diagonal", "vertical_stripe", "skip")
BLOCK = 128
FRAME_TOKENS = 3600
SKIP_SHARE = 0.05


def parse_mix(mix) -> dict:
    """mix as {mode: fraction of heads} (a dict or 'mode:frac,…'); one-line errors for unknown modes, bad fractions,
    or a total above 1. The remainder is dense."""
    if isinstance(mix, str):
        out = {}
        for item in filter(None, (x.strip() for x in mix.split(","))):
            k, sep, v = item.partition(":")
            if not sep:
                raise IosimError(f"sparse_vdit: mix item {item!r}; write mode:fraction, e.g. diagonal:0.3,skip:0.05")
            try:
                out[k.strip()] = float(v)
            except ValueError:
                raise IosimError(f"sparse_vdit: mix fraction {v!r} of {k!r} is not a number") from None
        mix = out
    if not isinstance(mix, dict):
        raise IosimError(f"sparse_vdit: mix={mix!r}; give 'mode:fraction,…' or a dict (modes: {', '.join(MODES)})")
    bad = [k for k in mix if k not in MODES]
    if bad:
        raise IosimError(f"sparse_vdit: unknown mode(s) {', '.join(map(repr, bad))}; modes: {', '.join(MODES)}")
    for k, v in mix.items():
        sc.check_params("sparse_vdit", **{f"mix[{k}]": (v, 0.0, 1.0)})
    if sum(mix.values()) > 1 + 1e-9:
        raise IosimError(f"sparse_vdit: the mix's fractions sum to {sum(mix.values()):g} > 1; the dense heads are the "
                         "remainder, so the others must sum to ≤ 1")
    out = {m: float(mix.get(m, 0.0)) for m in MODES if m != "dense"}
    out["dense"] = max(0.0, 1.0 - sum(out.values()))
    return out


def head_counts(heads: int, mix: dict) -> dict:
    """Heads per mode by largest remainder (ties in mode order)."""
    raw = {m: mix[m] * heads for m in MODES}
    n = {m: int(np.floor(raw[m] + 1e-9)) for m in MODES}
    left = heads - sum(n.values())
    for m in sorted(MODES, key=lambda m: (-(raw[m] - n[m]), MODES.index(m)))[:left]:
        n[m] += 1
    return n


def mode_mask(p: Problem, mode: str, block: int, diag_blocks: int, frame_tokens: int, stripe_blocks: int) -> np.ndarray:
    """[T_q, T_kv] bool: the blocks ``mode`` keeps (module docstring), intersected with the valid blocks."""
    tq, tk = cdiv(p.seq_q, block), cdiv(p.seq_kv, block)
    i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
    if mode == "dense":
        m = np.ones((tq, tk), dtype=bool)
    elif mode == "diagonal":
        m = np.abs(i - j) <= diag_blocks
    elif mode == "multi_diagonal":
        m = np.zeros((tq, tk), dtype=bool)
        kmax = p.seq_kv // max(1, frame_tokens) + 1
        for k in range(-kmax, kmax + 1):
            m |= np.abs(i - j - int(round(k * frame_tokens / block))) <= diag_blocks
    elif mode == "vertical_stripe":
        m = np.broadcast_to(j < stripe_blocks, (tq, tk)).copy()
    else:
        m = np.zeros((tq, tk), dtype=bool)
    return m & sc.valid_blocks(p, block, block)


def _sub(expr, h, new):
    return sp.sympify(expr).xreplace({h: new}) if isinstance(expr, sp.Basic) else expr


def remap_heads(kernel: Kernel, heads_table: str, n: int) -> Kernel:
    """The kernel launched over ``n`` heads hh whose real head is tables[heads_table][hh] (a fused launch over one
    mode's heads): grid axis 'h' → hh with extent n, every h in tiles and work → the lookup."""
    h = next(g.var for g in kernel.grid if g.name == "h")
    hh = var("hh")
    new = lookup(table(heads_table), hh)

    def span(s: Span) -> Span:
        return replace(s, index=_sub(s.index, h, new), length=_sub(s.length, h, new), offset=_sub(s.offset, h, new))

    def stmt(s):
        if isinstance(s, Loop):
            return replace(s, start=_sub(s.start, h, new), stop=_sub(s.stop, h, new), body=tuple(stmt(x) for x in s.body))
        if isinstance(s, (Load, Store)):
            return replace(s, tile=replace(s.tile, spans=tuple(span(x) for x in s.tile.spans)))
        if isinstance(s, Compute):
            ws = lambda works: tuple(replace(w, spans=tuple(span(x) for x in w.spans)) for w in works)  # noqa: E731
            return replace(s, matmul=ws(s.matmul), exp=ws(s.exp), other=ws(s.other))
        return s
    grid = tuple(GridAxis("h", hh, n) if g.name == "h" else g for g in kernel.grid)
    return replace(kernel, grid=grid, body=tuple(stmt(s) for s in kernel.body))


def _skip_kernel(p: Problem, cfg: KernelConfig, heads_table: str, n: int) -> Kernel:
    """The skipped heads: O = 0 (and LSE +∞, FA2's convention for a row that saw nothing) written, nothing read."""
    bm = cfg.block_m
    i, b, hh = var("pid_m"), var("b"), var("hh")
    h = lookup(table(heads_table), hh)
    rows = Span(i, bm, p.seq_q)
    grid = (GridAxis("m", i, cdiv(p.seq_q, bm)), GridAxis("b", b, p.batch), GridAxis("h", hh, n))
    body = (Compute("vdit_skip", ("acc", "lse")), Store("acc", q_tile(p, "O", b, h, rows)),
            Store("lse", row_tile(p, "LSE", b, h, rows)))
    bufs = (Buffer("acc", (bm, p.head_dim), 4, "reg"), Buffer("lse", (bm,), STAT_BYTES, "reg"))
    return Kernel("vdit_skip", grid, bufs, body, threads_per_cta=32 * cfg.num_warps)


from iosim.reference import register_op  # noqa: E402


@register_op("vdit_skip")
def _op_skip(ctx, acc, lse):
    acc.data.fill(0.0)
    lse.data.fill(np.inf)
    acc.fresh = lse.fresh = False


def mix_for_density(p: Problem, density: float, masks: dict, block: int) -> dict:
    """The mix of ``density`` (module docstring): 5% skip, the fewest dense heads reaching it, the rest split evenly
    over the three patterns."""
    sc.check_params("sparse_vdit", density=(density, 0.0, 1.0))
    H = p.heads
    nv = sc.valid_blocks(p, block, block).sum()
    kept = {m: masks[m].sum() / nv if nv else 0.0 for m in MODES}
    n_skip = int(round(SKIP_SHARE * H))
    best = None
    for n_dense in range(0, H - n_skip + 1):
        rest = H - n_skip - n_dense
        c = {"dense": n_dense, "skip": n_skip}
        for k, m in enumerate(("diagonal", "multi_diagonal", "vertical_stripe")):
            c[m] = rest // 3 + (1 if k < rest % 3 else 0)
        tot = sum(c[m] * kept[m] for m in MODES) / H
        best = c
        if tot >= density - 1e-12:
            break
    return {m: best[m] / H for m in MODES}


@register("sparse_vdit", "Sparse-vDiT: per-head modes fixed offline (dense, diagonal, multi-diagonal, vertical-stripe, "
          "skip), heads sharing a mode fused into one block-sparse FA2 launch")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          mix=None, block: int = BLOCK, diag_blocks: int = 1, frame_tokens: int = FRAME_TOKENS,
          stripe_blocks: int | None = None) -> Schedule:
    """mix (fractions of heads per mode; default all dense) or density (module docstring); block, diag_blocks,
    frame_tokens, stripe_blocks (default ⌈frame_tokens/block⌉) shape the patterns."""
    concrete(p, "sparse_vdit")
    check_head_dim(p, "sparse_vdit")
    if p.seq_q != p.seq_kv:
        raise IosimError(f"sparse_vdit: DiT self-attention has seq_q == seq_kv; got {p.seq_q} and {p.seq_kv}")
    if table is not None or scores is not None:
        raise IosimError("sparse_vdit: each head's mode is chosen offline, not from a block table or run-time scores; "
                         "give mix= (fractions of heads per mode) or density=")
    if density is not None and mix is not None:
        raise IosimError("sparse_vdit: give mix or density, not both")
    for name, v, lo in (("block", block, 16), ("diag_blocks", diag_blocks, 0), ("frame_tokens", frame_tokens, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise IosimError(f"sparse_vdit: {name}={v!r} must be an integer ≥ {lo}")
    stripes = cdiv(frame_tokens, block) if stripe_blocks is None else stripe_blocks
    if isinstance(stripes, bool) or not isinstance(stripes, int) or stripes < 1:
        raise IosimError(f"sparse_vdit: stripe_blocks={stripe_blocks!r} must be a positive integer")
    cfg = fill_tiles(cfg, tuple(min(t, block) for t in bsa_tiles(p.head_dim)))  # tiles inside one mask block
    masks = {m: mode_mask(p, m, block, diag_blocks, frame_tokens, stripes) for m in MODES}
    if density is not None:
        fr, how = mix_for_density(p, float(density), masks, block), f"density {float(density):g}"
    else:
        fr, how = parse_mix({} if mix is None else mix), "mix" if mix is not None else "default: every head dense"
    counts = head_counts(p.heads, fr)
    heads_of, start = {}, 0
    for m in MODES:
        heads_of[m] = np.arange(start, start + counts[m], dtype=np.int64)
        start += counts[m]
    fcfg = replace(cfg, kv_order="descending", grid_order=("m", "b", "h"))
    kernels, tables = [], {}
    for m in MODES:
        if not counts[m]:
            continue
        tables[f"vd_heads_{m}"] = heads_of[m]
        if m == "skip":
            kernels.append(_skip_kernel(p, fcfg, "vd_heads_skip", counts[m]))
            continue
        tabs, _ = tile_tables(p, masks[m], block, cfg.block_m, cfg.block_n, f"vd_{m}_")
        tables |= tabs
        k = listed_fwd_kernel(p, fcfg, False, hw, f"vdit_{m}", f"vd_{m}_")
        kernels.append(remap_heads(k, f"vd_heads_{m}", counts[m]))
    nv = sc.valid_blocks(p, block, block).sum()
    kept = sum(counts[m] * masks[m].sum() for m in MODES) / (p.heads * nv) if nv else 0.0
    notes = ("Sparse-vDiT heads per mode (" + how + "): " + ", ".join(f"{m} {counts[m]}" for m in MODES if counts[m])
             + f"; {kept:.1%} of all heads' valid {block}-blocks kept",
             "mode blocks: " + ", ".join(f"{m} {sc.kept_fraction(masks[m], p, block, block):.1%}" for m in MODES[1:4])
             + f" (diag_blocks {diag_blocks}, frame_tokens {frame_tokens}, stripe_blocks {stripes})",
             "one fused launch per mode (head indices through a table); the head gather/scatter copies, if any, left out")
    return Schedule("sparse_vdit", p, cfg, sc.attention_tensors(p), tuple(kernels), notes, tables=tables)
