"""DraftAttention: a pooled low-resolution draft map guides block-sparse attention over a region-contiguous token order
(Shen et al., arXiv 2505.14708; shawnricecake/draft-attention @f3c81d5, ``draft_attention.py``).

A video DiT's visual tokens are frames of latent_h × latent_w; a *region* is a pool_h × pool_w patch of one frame
(8 × 16 = 128 tokens by default, the Block-Sparse-Attention kernel's block). The launches:

1. ``draft_pool_q`` / ``draft_pool_k`` — average-pool Q and K over each region (``sample_qk_attention_2d``'s
   avg_pool2d): the region's tokens are pool_h runs of pool_w tokens, read here through the reorder table as gathered
   rows (``Span.gather``: each row its own run in the L2 trace);
2. ``draft_scores`` — the draft map S_d = pooled Q · pooled Kᵀ over the S = N_v/128 regions, fp32 [S, S];
3. ``draft_softmax`` — softmax(S_d/√d) row by row (read and write the map);
4. ``draft_select`` — the per-head percentile mask (``attention_percentile_mask_headwise``: keep the entries at or
   above the ⌊sparsity·S²⌋-th smallest), written as kept region indices per row (int32);
5. ``draft_gather_q`` / ``_k`` / ``_v`` — Q, K, V reordered so that each region is contiguous (``reorg_idx``; text
   tokens, at the end, keep their order): ``gather_kernel`` copies;
6. ``draft_fwd`` — block-sparse FA over the reordered copies (Block-Sparse-Attention's ``block_sparse_attn_func``,
   mask blocks of 128; text rows and columns all kept), read with ``positions=`` spans holding the original token
   positions;
7. ``draft_restore`` — O = O'[restore_idx] (a gather kernel: the unpermute).

IO per (b, h), derived: pooling 2·N_v·d, the map S² (+ its softmax pass), the reorder 6·N·d and the restore 2·N·d
(≈ 4·N·d beyond a plain block-sparse call for Q/K/V/O moved twice — seed-algorithms-io.md §11 says ≈4Nd), and the
block-sparse kernel.

Choices taken here:
* ``density``: per head, round(density·S²) region pairs kept uniformly at random (the paper's mask is a per-head
  global percentile, not per row; density = 1 − sparsity_ratio); text blocks are always kept. ``scores`` (logits
  scale·QKᵀ, [N, N] or [B, H, N, N]) follow the repo exactly with ``sparsity_ratio`` (0.9, its default): the draft
  map is the region mean of the logits (pooled q · pooled k is the mean of q·k over the two regions).
* The eager-PyTorch copies the repo makes around the pooling (permute + reshape of Q and K to [frames, H·d, h, w],
  and the per-call boolean mask → block mask conversion) and the top-k's extra radix passes over the S² map are left
  out (a few N·d and S² passes).
* Non-causal only (video DiT: the repo calls the kernel with is_causal=False); seq_q = seq_kv.
* seq = frames·latent_h·latent_w + text_len in the repo (it asserts whole frames); tokens past the last whole frame
  are handled here like the text (dense, in their order), and a note says how many.
"""

from __future__ import annotations

import numpy as np

from iosim.errors import IosimError
from iosim.models._common import check_head_dim
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import (bh_grid, list_tables, permuted_fwd_kernel, pool_gather_kernel, tiles_dividing,
                                         tiles_of)
from iosim.models.sparse.selection import check_int, concrete
from iosim.problem import KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, Kernel, Load, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv, full,
                            point)

SELECT_FLOPS = 4  # per map entry: compare against the threshold, the top-k's compare, the index compaction, the scan


def reorg_indices(n_visual: int, n: int, pool_h: int, pool_w: int, latent_w: int) -> np.ndarray:
    """reorg[new] = original token (``generate_reorg_indices``): per part of pool_h latent rows, the column groups
    of pool_w in turn, each the pool_h rows' pool_w tokens; text tokens (positions ≥ n_visual) unchanged."""
    part = latent_w * pool_h
    subs = latent_w // pool_w
    pat = np.array([b * latent_w + c * pool_w + x for c in range(subs) for b in range(pool_h) for x in range(pool_w)])
    vis = (np.arange(n_visual // part)[:, None] * part + pat[None, :]).ravel()
    return np.concatenate([vis, np.arange(n_visual, n)]).astype(np.int64)


@register_op("draft_softmax_row")
def op_draft_softmax_row(ctx, row):
    """row = softmax(row / √d) (the draft map's softmax, ``sample_qk_attention_2d``)."""
    c = row.ext[1]
    x = row.data[0, :c] * ctx.scale
    ex = np.exp(x - x.max()) if c else x
    row.data[0, :c] = ex / ex.sum() if c else ex


def draft_rule(p: Problem, reorg: np.ndarray, n_visual: int, block: int, sparsity: float):
    """rule(logits) → [B, H, T, T] kept 128-token blocks in the reordered order: region means of the logits over
    the visual part, softmax per row, per head the entries ≥ the ⌊sparsity·S²⌋-th smallest; text blocks kept."""
    def rule(scores):
        s = np.asarray(scores, dtype=np.float64)
        s = np.broadcast_to(s, (p.batch, p.heads) + s.shape[-2:]) if s.ndim == 2 else s
        sv = s[..., reorg[:n_visual], :][..., reorg[:n_visual]]
        mp = sc.pool_blocks(sv, block, block, "mean")
        ex = np.exp(mp - mp.max(-1, keepdims=True))
        prob = ex / ex.sum(-1, keepdims=True)
        S = prob.shape[-1]
        k = int(sparsity * S * S)
        flat = prob.reshape(*prob.shape[:2], -1)
        if k == 0:
            vis = np.ones_like(prob, dtype=bool)
        else:
            thr = np.sort(flat, axis=-1)[..., k - 1]
            vis = prob >= thr[..., None, None]
        t = cdiv(p.seq_q, block)
        out = np.ones((p.batch, p.heads, t, t), dtype=bool)
        out[..., :S, :S] = vis
        return out
    return rule


@register("draftattention", "DraftAttention: pooled draft map → per-head percentile mask, Q/K/V reordered by region, block-sparse FA, order restored (2505.14708)")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          pool_h: int = 8, pool_w: int = 16, latent_h: int = 48, latent_w: int = 80, text_len: int = 0,
          sparsity_ratio: float = 0.9) -> Schedule:
    """Defaults: HunyuanVideo 768p (draft_attention.py: pool 8×16, latent 48×80, 33 frames = 126,720 visual tokens;
    text_len 256 in its README example). seq = frames·latent_h·latent_w + text_len. density: kept fraction of the
    visual region pairs (1 − sparsity); ``sparsity_ratio`` applies to ``scores`` only (the repo's rule)."""
    m = "draftattention"
    check_head_dim(p, m)
    concrete(p, m)
    check_int(m, pool_h=pool_h, pool_w=pool_w, latent_h=latent_h, latent_w=latent_w)
    if isinstance(text_len, bool) or not isinstance(text_len, (int, np.integer)) or text_len < 0:
        raise IosimError(f"{m}: text_len={text_len!r} must be a whole number ≥ 0")
    sc.check_params(m, sparsity_ratio=(sparsity_ratio, 0.0, 1.0), seed=(seed, 0, None))
    if p.causal or p.seq_q != p.seq_kv:
        raise IosimError(f"{m}: models non-causal self-attention of a video DiT (seq_q = seq_kv, no --causal), as "
                         "draft_attention.py calls it")
    if latent_h % pool_h or latent_w % pool_w:
        raise IosimError(f"{m}: pool {pool_h}×{pool_w} must tile the latent frame {latent_h}×{latent_w}")
    frame = latent_h * latent_w
    if text_len > p.seq_q:
        raise IosimError(f"{m}: text_len={text_len} exceeds the sequence length {p.seq_q}")
    nv = (p.seq_q - text_len) // frame * frame  # whole frames; tokens past the last one are handled like text
    tail = p.seq_q - text_len - nv
    given = [n_ for n_, v_ in (("density", density), ("table", table), ("scores", scores)) if v_ is not None]
    if len(given) > 1:
        raise IosimError(f"{m}: give one of density, table or scores, not {' and '.join(given)}")
    block = pool_h * pool_w
    cfg = tiles_dividing(p, cfg, block, m)
    B_, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    S, T = nv // block, cdiv(N, block)
    tm, tn = cdiv(N, cfg.block_m), cdiv(N, cfg.block_n)
    reorg = reorg_indices(nv, N, pool_h, pool_w, latent_w)
    restore = np.empty_like(reorg)
    restore[reorg] = np.arange(N)
    per_head = B_ * H * T * T <= sc.MAX_MASK_BLOCKS
    if scores is not None:
        s = np.load(scores) if isinstance(scores, str) else np.asarray(scores, dtype=np.float64)
        if s.shape[-2:] != (N, N) or s.ndim not in (2, 4):
            raise IosimError(f"{m}: scores have shape {s.shape}; give [N, N] or [B, H, N, N] with N = {N}")
        mask = np.asarray(draft_rule(p, reorg, nv, block, sparsity_ratio)(s)) if S else np.ones((T, T), bool)
        src = f"selected from the given scores (sparsity_ratio {sparsity_ratio:g})"
    elif table is not None:
        mask, src = sc.choose_blocks(p, block, block, table=table, method=m)
    else:
        dens = 1.0 if density is None else density
        sc.check_params(m, density=(dens, 0.0, 1.0))
        rng = np.random.default_rng(seed)
        nh = H if per_head else 1
        keep = int(round(dens * S * S))
        mask = np.ones((nh, T, T), dtype=bool)
        for hh in range(nh):
            vis = np.zeros(S * S, dtype=bool)
            vis[rng.permutation(S * S)[:keep]] = True
            mask[hh, :S, :S] = vis.reshape(S, S)
        mask = mask[None] if per_head else mask[0]
        src = f"density {dens:g} of the {S}×{S} region pairs per head, seed {seed}"
    kept = float(mask[..., :S, :S].mean()) if S else 1.0
    per_head = mask.ndim == 4
    kmax = max(1, int(mask[..., :S, :S].sum(-1).max()) if S else 1)
    T_ = {
        "DQ": TensorSpec("DQ", (B_, H, S, d), e, "scratch"),
        "DK": TensorSpec("DK", (B_, Hk, S, d), e, "scratch"),
        "DS": TensorSpec("DS", (B_, H, S, S), 4, "scratch"),
        "DSEL": TensorSpec("DSEL", (B_, H, S, kmax), 4, "scratch"),
        "Qr": TensorSpec("Qr", (B_, H, N, d), e, "scratch"),
        "Kr": TensorSpec("Kr", (B_, Hk, N, d), e, "scratch"),
        "Vr": TensorSpec("Vr", (B_, Hk, N, d), e, "scratch"),
        "Or": TensorSpec("Or", (B_, H, N, d), e, "scratch"),
        "DLSE": TensorSpec("DLSE", (B_, H, N), 4, "scratch"),
    }
    base = sc.attention_tensors(p)
    grid, (r, b, h) = bh_grid(B_, H, S)
    row = Span(r, 1, S)
    ks = [pool_gather_kernel("draft_pool_q", base["Q"], T_["DQ"], block, gather="draft_reorg_q"),
          pool_gather_kernel("draft_pool_k", base["K"], T_["DK"], block, gather="draft_reorg_k"),
          sc.score_kernel("draft_scores", T_["DQ"], T_["DK"], T_["DS"], a_heads_per_b=p.group),
          Kernel("draft_softmax", grid, (Buffer("row", (1, S), 4, "reg"),), (
              Load("row", Tile("DS", (point(b, B_), point(h, H), row, full(S)))),
              Compute("draft_softmax_row", ("row",), exp=(Work(1, (row, full(S))),), other=(Work(4, (row, full(S))),)),
              Store("row", Tile("DS", (point(b, B_), point(h, H), row, full(S)))),
          )),
          sc.select_kernel("draft_select", T_["DS"], T_["DSEL"], flops_per_score=SELECT_FLOPS),
          sc.gather_kernel("draft_gather_q", base["Q"], T_["Qr"], "draft_reorg_q"),
          sc.gather_kernel("draft_gather_k", base["K"], T_["Kr"], "draft_reorg_k"),
          sc.gather_kernel("draft_gather_v", base["V"], T_["Vr"], "draft_reorg_k")]
    mt = tiles_of(mask, block, cfg.block_m, cfg.block_n, tm, tn)
    tabs = list_tables(mt, np.zeros_like(mt), "")
    ks.append(permuted_fwd_kernel(p, cfg, hw, "", per_head, name="draft_fwd", q="Qr", k="Kr", v="Vr", o="Or",
                                  lse="DLSE", q_pos="draft_reorg_q", k_pos="draft_reorg_k", masked=(False, False)))
    ks.append(sc.gather_kernel("draft_restore", T_["Or"], base["O"], "draft_restore"))
    tabs |= {"draft_reorg_q": np.broadcast_to(reorg, (B_, H, N)), "draft_reorg_k": np.broadcast_to(reorg, (B_, Hk, N)),
             "draft_restore": np.broadcast_to(restore, (B_, H, N))}
    if S == 0:  # no whole frame: no draft map (the block-sparse call is dense)
        ks = [k_ for k_ in ks if not k_.name.startswith(("draft_pool", "draft_scores", "draft_softmax", "draft_select"))]
        T_ = {k_: v_ for k_, v_ in T_.items() if k_ not in ("DQ", "DK", "DS", "DSEL")}
    tensors = {k_: v_ for k_, v_ in base.items() if k_ != "LSE"} | T_
    notes = (f"selection: {src}; {kept:.1%} of the {S}×{S} visual region pairs kept, text ({text_len} tokens) dense"
             + (f"; {tail} tokens past the last whole {latent_h}×{latent_w} frame handled like text (dense, "
                "unpermuted)" if tail else ""),
             f"{nv // frame} frames of {latent_h}×{latent_w}, regions {pool_h}×{pool_w} = {block} tokens; "
             f"tiles {cfg.block_m}×{cfg.block_n}")
    return Schedule(m, p, cfg, tensors, tuple(ks), notes, tables=tabs)
