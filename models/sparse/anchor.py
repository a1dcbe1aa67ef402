"""AnchorAttention: an anchor from the initial and local regions, stripe selection by a difference test, and a
sparse kernel that loads discrete KV rows (Zhang et al., arXiv 2505.23520; yuzhouzhang9/Anchor-Attention @fdc7420,
``anchor_attn/src/ops/anchor_attn_v4.py`` with ``anchor_step_1_2_v2.py`` and ``get_mask_test.py``).

Queries are grouped in *big blocks* of G = block_size·step rows (128·16 = 2048). Three launches:

1. ``anchor_fwd`` (step 1, ``get_mask_fused_anchor_triton``) — exact attention of each 128-row query tile over the
   initial region (keys [0, init_blocks·G), causally cut at the tile) and the local region (the big block's own
   keys, walked to the big block's end with the causal mask, as the repo does), leaving the un-normalised
   accumulator, the row max m (the *anchor*) and ℓ in global memory: Acc [N, d] fp32, M and L [N] fp32;
2. ``anchor_mask`` (step 2, ``get_q_mask_triton``) — per big block: mean-pool Q over each 128-row block (step rows)
   and the anchors likewise, then for each 128-key block between the initial and the local region: pooled scores,
   key column c kept iff some pooled row has q̄·k_c·scale + θ ≥ m̄ (a *stripe*: one key column × the G queries of
   the big block); each key block stores its 128-entry sorted index vector at the running count (the repo's
   ``tl.store`` + ``tl.advance`` by valid_count), then the count;
3. ``anchor_sparse`` (step 3, ``_triton_stripe_sparse_attn_fwd_kernel_step3``) — per 128-row query tile: reload Q,
   Acc, M, L, then the big block's kept keys in chunks of NUM_INDICES = 128, each chunk's K and V rows *gathered*
   at their indices (``Span.gather``: each row its own 256-B run in the L2 trace at d = 128, bf16), finish the
   online softmax and write O.

IO per (b, h), derived: step 1 reads Q and ≈ (I + G)·d of K/V per tile and writes 4·N·d + 8·N bytes of state;
step 2 reads Q (N·d), M, and the scanned K (Σ_g (g·G − I)·d ≈ N²d/(2G)), writes 512 B per scanned key block;
step 3 reads Q, the state back, and 2·d·e + 4 bytes per kept (query tile, key) pair.

Choices taken here:
* The scanned range is [init_blocks·G, local start) exactly; the repo's loop runs key blocks from 128 to
  big_start − 128 (it re-scans keys of the initial region, double counting them if kept, and never scans the last
  block before the local region). A ragged last big block (N not a multiple of G) is handled like the others (the
  repo's HF patch runs the tail rows densely instead).
* ``density``: the kept fraction of each big block's candidate keys (the stripes), uniformly at random with
  ``seed``, shared by all heads; the initial and local regions are always computed. ``table``: bool
  [⌈N/G⌉, N] (or [B, H, ⌈N/G⌉, N]) of kept stripes. ``scores``: logits scale·QKᵀ and the repo's rule with ``theta``
  (pooled q̄·k equals the block mean of the logits).
* GQA: K/V read through the query head's KV head (the repo expands them with ``repeat_kv`` first: copies left out).
* Causal prefill only (the repo's kernels are causal; seq_q = seq_kv).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, kv_head
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import bh_grid
from iosim.models.sparse.selection import check_int, concrete
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv,
                            full, gathered, lookup, point, var)
from iosim.schedule import table as tbl

IDX_BYTES = 4  # int32 coordinates and counts (get_mask_test.py)


@register_op("anchor_pool_q")
def op_anchor_pool_q(ctx, qblk, qp):
    """Row s = (block index mod step) of qp = mean of the block's query rows (get_q_mask_triton: q.sum / BLOCK_SZ)."""
    r = qblk.ext[0]
    s = (qblk.origin[0] // qblk.data.shape[0]) % qp.data.shape[0]
    qp.value(0.0)[s] = qblk.data[:r].mean(axis=0) if r else 0.0
    qp.set((0, 0), qp.data.shape)


@register_op("anchor_pool_m")
def op_anchor_pool_m(ctx, mblk, ap):
    """Row s of ap = mean of the block's anchors (row maxima from step 1)."""
    r = mblk.ext[0]
    s = (mblk.origin[0] // mblk.data.shape[0]) % ap.data.shape[0]
    ap.value(np.inf)[s] = mblk.data[:r].mean()  # rows past N (a ragged big block) stay +inf: they select nothing
    ap.set((0,), ap.data.shape)


@register_op("anchor_stripe")
def op_anchor_stripe(ctx, qp, ap, k, sel, cnt):
    """Key column c of this block is kept iff some pooled row has q̄·k_c·scale + θ ≥ m̄; sel = the kept global
    indices ascending, padded with N (the repo's ``tl.sort`` of ``where(valid, index, N)``); cnt += kept."""
    c = k.ext[0]
    theta = float(ctx.tables["anchor_theta"][0]) / 1e6
    qk = qp.data @ k.data[:c].T * ctx.scale
    keep = ((qk + theta) >= ap.data[:, None]).any(axis=0)
    n = int(ctx.problem.seq_kv)
    pos = k.origin[0] + np.arange(c)
    vals = np.full(sel.data.shape[0], n, dtype=float)
    kept = np.sort(pos[keep])
    vals[:len(kept)] = kept
    sel.data[:] = vals
    sel.set((0,), sel.data.shape)
    cnt.value(0.0)[0] += len(kept)
    cnt.set((0,), (1,))


def regions(N: int, G: int, bm: int, bn: int, init_blocks: int, local_blocks: int):
    """Per query tile m: KV tile ranges of step 1 (init [0, ih), local [ll, lh)) and per big block g the scanned key
    range [I, sc_hi(g)) (anchor_step_1_2_v2.py offsets)."""
    I = init_blocks * G
    tm, ng = -(-N // bm), -(-N // G)
    m = np.arange(tm)
    g = (m * bm) // G
    init_off = np.minimum(np.minimum(I, (m + 1) * bm), N)
    local_off = np.maximum((g - local_blocks + 1) * G, 0)
    ih = -(-init_off // bn)
    ll = np.maximum(local_off, init_off) // bn
    lh = -(-np.minimum((g + 1) * G, N) // bn)
    lh = np.maximum(lh, ll)
    gg = np.arange(ng)
    scan_hi = np.maximum(np.maximum((gg - local_blocks + 1) * G, 0), I)
    return ih, ll, lh, I, np.minimum(scan_hi, N)


def anchor_rule(p: Problem, G: int, block: int, theta: float, init_blocks: int, local_blocks: int):
    """rule(logits) → [B, H, ng, N] kept stripes: anchor = row max over the initial and local regions (causal),
    pooled over 128-row blocks; a scanned key is kept for big block g iff some block's pooled logit + θ ≥ its
    pooled anchor."""
    N = p.seq_kv

    def rule(scores):
        s = np.asarray(scores, dtype=np.float64)
        s = np.broadcast_to(s, (p.batch, p.heads, N, N)) if s.ndim == 2 else s
        ng = -(-N // G)
        _, _, _, I, scan_hi = regions(N, G, block, block, init_blocks, local_blocks)
        rows = np.arange(N)
        gr = rows // G
        lo_loc = np.maximum((gr - local_blocks + 1) * G, 0)
        cols = np.arange(N)
        reg = ((cols[None, :] < I) | ((cols[None, :] >= lo_loc[:, None]) & (cols[None, :] < (gr[:, None] + 1) * G)))
        reg &= cols[None, :] <= rows[:, None]
        anc = np.where(reg, s, -np.inf).max(-1)  # [B, H, N]
        out = np.zeros((p.batch, p.heads, ng, N), dtype=bool)
        nb = -(-N // block)
        for j in range(nb):
            r0, r1 = j * block, min((j + 1) * block, N)
            g = r0 // G
            lo, hi = I, int(scan_hi[g])
            if hi <= lo:
                continue
            pooled = s[..., r0:r1, lo:hi].mean(-2)
            out[..., g, lo:hi] |= pooled + theta >= anc[..., r0:r1].mean(-1)[..., None]
        return out
    return rule


@register("anchorattention", "AnchorAttention: anchor from initial+local regions, stripe selection (key column × big block), sparse kernel gathering discrete KV rows (2505.23520)")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          block_size: int = 128, step: int = 16, theta: float = 12.0, init_blocks: int = 1,
          local_blocks: int = 1) -> Schedule:
    """block_size 128, step 16 (G = 2048), θ = 12 (anchor_attn_v4.py ``anchor_attn`` defaults), one initial and one
    local big block (``anchor_attn_step_1(…, 1, 1, …)``). Tiles 128×128 (BLOCK_SIZE_M/N, NUM_INDICES = 128) unless
    given. density: kept fraction of the candidate stripes per big block."""
    m = "anchorattention"
    check_head_dim(p, m)
    concrete(p, m)
    check_int(m, block_size=block_size, step=step, init_blocks=init_blocks, local_blocks=local_blocks)
    sc.check_params(m, theta=(theta, None, None), seed=(seed, 0, None))
    if not p.causal or p.seq_q != p.seq_kv:
        raise IosimError(f"{m}: models causal prefill only (seq_q = seq_kv with --causal), as anchor_attn_v4.py does")
    bm, bn = cfg.block_m or 128, cfg.block_n or 128
    cfg = cfg.with_tiles(bm, bn)
    G = block_size * step
    if G % bm or G % bn or block_size % 1:
        raise IosimError(f"{m}: tiles {bm}×{bn} must divide block_size·step = {G}; give --block-m/--block-n dividing it")
    B_, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    ng, tm = cdiv(N, G), cdiv(N, bm)
    ih, ll, lh, I, scan_hi = regions(N, G, bm, bn, init_blocks, local_blocks)
    cand = np.zeros((ng, N), dtype=bool)
    for g in range(ng):
        cand[g, I:scan_hi[g]] = True
    given = [n for n, v in (("density", density), ("table", table), ("scores", scores)) if v is not None]
    if len(given) > 1:
        raise IosimError(f"{m}: give one of density, table or scores, not {' and '.join(given)}")
    if scores is not None:
        s = np.load(scores) if isinstance(scores, str) else np.asarray(scores, dtype=np.float64)
        if s.shape[-2:] != (N, N) or s.ndim not in (2, 4):
            raise IosimError(f"{m}: scores have shape {s.shape}; give [N, N] or [B, H, N, N] with N = {N}")
        sel = anchor_rule(p, G, block_size, float(theta), init_blocks, local_blocks)(s) & cand
        src = f"selected from the given scores (θ = {theta:g})"
    elif table is not None:
        t = np.load(table) if isinstance(table, str) else np.asarray(table)
        if t.dtype != bool or t.shape[-2:] != (ng, N) or t.ndim not in (2, 4):
            raise IosimError(f"{m}: the stripe table must be bool [{ng}, {N}] or [B, H, {ng}, {N}] (big blocks × keys), "
                             f"got {t.dtype} {t.shape}")
        sel = t & cand
        src = "stripe table"
    else:
        dens = 1.0 if density is None else density
        sc.check_params(m, density=(dens, 0.0, 1.0))
        rng = np.random.default_rng(seed)
        sel = np.zeros((ng, N), dtype=bool)
        for g in range(ng):
            nc = int(cand[g].sum())
            if nc:
                sel[g, I + rng.permutation(nc)[:int(round(dens * nc))]] = True
        src = f"density {dens:g} of the candidate stripes, seed {seed}"
    per_head = sel.ndim == 4
    cnt = sel.sum(-1)
    width = max(1, int(cnt.max()))
    order = np.argsort(~sel, axis=-1, kind="stable")[..., :width]
    idx = np.where(np.arange(width) < cnt[..., None], order, 0).astype(np.int64)
    kb_cnt = np.add.reduceat(sel.astype(np.int64), np.arange(0, N, block_size), axis=-1)
    cum = np.cumsum(kb_cnt, axis=-1) - kb_cnt
    tabs = {"anchor_idx": idx, "anchor_cnt": cnt.astype(np.int64), "anchor_cum": cum.astype(np.int64),
            "anchor_ih": ih, "anchor_ll": ll, "anchor_lh": lh, "anchor_scan_hi": scan_hi.astype(np.int64),
            "anchor_theta": np.array([int(round(float(theta) * 1e6))]),
            "anchor_nsub": np.minimum(step, -(-(N - np.arange(ng) * G) // block_size))}
    T = {"ANCHOR_ACC": TensorSpec("ANCHOR_ACC", (B_, H, N, d), 4, "scratch"),
         "ANCHOR_M": TensorSpec("ANCHOR_M", (B_, H, N), STAT_BYTES, "scratch"),
         "ANCHOR_L": TensorSpec("ANCHOR_L", (B_, H, N), STAT_BYTES, "scratch"),
         "ANCHOR_IDX": TensorSpec("ANCHOR_IDX", (B_, H, ng, N), IDX_BYTES, "scratch"),
         "ANCHOR_CNT": TensorSpec("ANCHOR_CNT", (B_, H, ng), IDX_BYTES, "scratch")}
    tensors = {k: v for k, v in sc.attention_tensors(p).items() if k != "LSE"} | T
    warps = cfg.num_warps if cfg.num_warps != 4 else 8  # the repo launches steps 1 and 3 with num_warps=8
    # 1. anchor: exact attention over the initial and local regions, state left in global memory
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i = vs["b"], vs["h"], vs["m"]
    rows, j = Span(i, bm, N), var("j")
    cols = Span(j, bn, N)

    def st(buf, name, sp_):
        return Store(buf, Tile(name, (point(b, B_), point(h, H)) + sp_))

    body1 = (
        Load("q", Tile("Q", (point(b, B_), point(h, H), rows, full(d)))),
        Loop(j, 0, lookup(tbl("anchor_ih"), i), flash2.kv_step(p, b, h, rows, cols, masked=True)),
        Loop(j, lookup(tbl("anchor_ll"), i), lookup(tbl("anchor_lh"), i), flash2.kv_step(p, b, h, rows, cols,
                                                                                             masked=True)),
        st("acc", "ANCHOR_ACC", (rows, full(d))), st("m", "ANCHOR_M", (rows,)), st("l", "ANCHOR_L", (rows,)),
    )
    k1 = Kernel("anchor_fwd", grid, flash2.buffers(bm, bn, d, e), body1, threads_per_cta=32 * warps)
    check_fit(k1, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    # 2. stripe identification per big block
    grid2, (g, b2, h2) = bh_grid(B_, H, ng, "n")
    s_, kb = var("s"), var("kb")
    qrows = Span(g * step + s_, block_size, N)
    krows = Span(kb, block_size, N)
    lead = (b2, h2, g) if per_head else (g,)
    body2 = (
        Loop(s_, 0, lookup(tbl("anchor_nsub"), g), (  # the big block's 128-row blocks that hold rows
            Load("qblk", Tile("Q", (point(b2, B_), point(h2, H), qrows, full(d)))),
            Compute("anchor_pool_q", ("qblk", "qp"), other=(Work(1, (qrows, full(d))),)),
            Load("mblk", Tile("ANCHOR_M", (point(b2, B_), point(h2, H), qrows))),
            Compute("anchor_pool_m", ("mblk", "ap"), other=(Work(1, (qrows,)),)),
        )),
        Loop(kb, I // block_size, sp.floor(lookup(tbl("anchor_scan_hi"), g) / block_size), (
            Load("kblk", Tile("K", (point(b2, B_), point(kv_head(p, h2), Hk), krows, full(d)))),
            Compute("anchor_stripe", ("qp", "ap", "kblk", "sel", "cnt"),
                    matmul=(Work(2 * d * step, (krows,)),),
                    other=(Work(3 * step + 1 + 2 * int(np.log2(block_size)), (krows,)),)),
            Store("sel", Tile("ANCHOR_IDX", (point(b2, B_), point(h2, H), point(g, ng),
                                             Span(0, block_size, block_size,
                                                  offset=lookup(tbl("anchor_cum"), *lead, kb))))),
        )),
        Store("cnt", Tile("ANCHOR_CNT", (point(b2, B_), point(h2, H), point(g, ng)))),
    )
    k2 = Kernel("anchor_mask", grid2, (Buffer("qblk", (block_size, d), e), Buffer("qp", (step, d), 4, "reg"),
                                        Buffer("mblk", (block_size,), STAT_BYTES, "reg"), Buffer("ap", (step,), 4, "reg"),
                                        Buffer("kblk", (block_size, d), e, pipelined=True),
                                        Buffer("sel", (block_size,), IDX_BYTES, "reg"), Buffer("cnt", (1,), IDX_BYTES, "reg")),
                body2, threads_per_cta=128)
    # 3. the stripe-sparse kernel: kept keys gathered in chunks of bn rows
    gq = sp.floor(i * bm / G)
    lead3 = (b, h, gq) if per_head else (gq,)
    ncnt = lookup(tbl("anchor_cnt"), *lead3)
    c = var("c")
    kcols = gathered(c, bn, ncnt, tbl("anchor_idx"), *lead3)

    def kv(p_, nm, b_, h_, cols_):
        return Tile(nm, (point(b_, B_), point(kv_head(p, h_), Hk), kcols, full(d)))

    body3 = (
        Load("q", Tile("Q", (point(b, B_), point(h, H), rows, full(d)))),
        Load("m", Tile("ANCHOR_M", (point(b, B_), point(h, H), rows))),
        Load("l", Tile("ANCHOR_L", (point(b, B_), point(h, H), rows))),
        Load("acc", Tile("ANCHOR_ACC", (point(b, B_), point(h, H), rows, full(d)))),
        Load("cnt", Tile("ANCHOR_CNT", (point(b, B_), point(h, H), point(gq, ng)))),
        Loop(c, 0, cdiv(ncnt, bn), (Load("idx", Tile("ANCHOR_IDX", (point(b, B_), point(h, H), point(gq, ng),
                                                                     Span(c, bn, ncnt)))),)
             + flash2.kv_step(p, b, h, rows, kcols, kv=kv)),
        flash2.finalize(p, rows),
        Store("acc", Tile("O", (point(b, B_), point(h, H), rows, full(d)))),
    )
    k3 = Kernel("anchor_sparse", grid, flash2.buffers(bm, bn, d, e) + (Buffer("idx", (bn,), IDX_BYTES, "reg"),
                                                                       Buffer("cnt", (1,), IDX_BYTES, "reg")),
                body3, threads_per_cta=32 * warps)
    check_fit(k3, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    notes = (f"selection: {src}; {float(sel.sum() / max(cand.sum() * (sel.size // cand.size), 1)):.1%} of the "
             f"candidate stripes kept",
             f"big blocks of G = {G} queries; initial region {I} keys, local {local_blocks} big block(s); "
             f"tiles {bm}×{bn}, NUM_INDICES = {bn}")
    return Schedule(m, p, cfg, tensors, (k1, k2, k3), notes, tables=tabs)
