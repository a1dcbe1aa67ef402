"""S2O: importance-ordered gathers of scattered tokens into virtual KV blocks with early stop (arXiv 2602.22575).

Only the abstract is available (no code): FlashAttention is factored into a virtual → physical index map; each KV
"block" the kernel processes is gathered from scattered tokens chosen by a lightweight importance pre-pass; blocks
run in descending importance and the loop stops early once the importance falls below a threshold. Everything
below that the abstract does not fix is an assumption, chosen to match the structure the issue's notes derive
(seed-algorithms-io.md §5: pre-pass ~2·N·d + (N/B)², sorted index lists, gathered 256-B rows, a per-query-block
truncation length):

1. ``s2o_pool_q`` — mean-pool Q over query blocks of B = block_size rows (reads N·d);
2. ``s2o_pool_k`` — mean-pool K over *granules* of ``chunk`` consecutive keys (reads N·d): the unit of importance
   on the key side (assumed 16 tokens; chunk = B gives the notes' (N/B)² score matrix);
3. ``s2o_scores`` — pooled Q · pooled Kᵀ, (N/B)·(N/chunk) fp32 scores (computed whole, causal half included);
4. ``s2o_order`` — per query block: sort the granules by score (descending) and cut the list where the kept
   probability mass reaches τ (the early stop: the truncation length L_i), writing the kept granule indices (int32);
5. ``s2o_fwd`` — per query block: for each virtual block of ``block_n`` tokens, read its granule indices (4 B each)
   and *gather* the K and V rows of those tokens (``Span.gather``: every row its own run in the L2 trace — 256 B at
   d = 128, bf16), QKᵀ, online softmax (causal mask by the gathered positions), PV; stop after L_i tokens.

IO per (b, h): pre-pass 2·N·d·e + (N/B)(N/chunk)·4 (scores written, read back) + kept indices; kernel Q once and
2·d·e·Σ_i L_i gathered + 4·Σ_i L_i/chunk index bytes; O and LSE written once.

Choices (assumed, not from the paper): virtual block = block_n = 64 tokens; B = 128; chunk = 16; the sink granule
and the query block's own (diagonal) granules are always kept; ``density`` = kept fraction of the causal-valid
granules per query block (kept in a seeded random order: the physical order of an importance order is scattered);
``scores`` = logits scale·QKᵀ, granule score = block mean of the logits (pooled q̄·k̄), softmax over the row's valid
granules, descending until the mass reaches τ = ``threshold``; ``table`` = bool [⌈N/B⌉, ⌈N/chunk⌉] granules. The
mask work (2 FLOPs per score) is charged to every virtual block: any of them may hold diagonal granules.
"""

from __future__ import annotations

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, kv_head
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import pool_gather_kernel
from iosim.models.sparse.selection import check_int, concrete
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, cdiv, full, gathered, lookup,
                            point, var)
from iosim.schedule import table as tbl

IDX_BYTES = 4  # int32 granule indices
SELECT_FLOPS = 4  # per granule score: exp (softmax), compare/swap (sort), cumulative sum, threshold test


def s2o_rule(p: Problem, block: int, chunk: int, tau: float, forced: np.ndarray):
    """rule(logits) → (kept [B, H, Tq, Tc], importance [B, H, Tq, Tc]): granule score = block mean of the logits,
    softmax over the valid granules of the row, kept in descending order until the mass reaches τ, forced ones
    added."""
    valid = sc.valid_blocks(p, block, chunk)

    def rule(scores):
        s = np.asarray(scores, dtype=np.float64)
        s = np.broadcast_to(s, (p.batch, p.heads) + s.shape[-2:]) if s.ndim == 2 else s
        g = sc.pool_blocks(s, block, chunk, "mean")
        x = np.where(valid, g, -np.inf)
        mx = x.max(-1, keepdims=True)
        ex = np.where(valid, np.exp(x - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
        tot = ex.sum(-1, keepdims=True)
        prob = np.where(tot > 0, ex / np.where(tot > 0, tot, 1.0), 0.0)
        return sc.keep_cumulative(prob, tau, valid=valid, forced=forced) & valid, np.where(valid, g, -np.inf)
    return rule


def token_table(keep: np.ndarray, order_key: np.ndarray, N: int, chunk: int):
    """(tokens [..., Tq, Lmax], tokens per row L [..., Tq], granules per row [..., Tq]): each row's kept granules
    in ascending order_key, expanded to their tokens (the last granule of the sequence may be ragged)."""
    tc = keep.shape[-1]
    key = np.where(keep, order_key, np.inf)
    order = np.argsort(key, axis=-1, kind="stable")
    ng = keep.sum(-1)
    size = np.minimum(chunk, N - np.arange(tc) * chunk)  # tokens of each granule
    gs = np.take_along_axis(np.broadcast_to(size, keep.shape), order, axis=-1) * (np.arange(tc) < ng[..., None])
    L = gs.sum(-1)
    lmax = max(1, int(L.max()) if L.size else 1)
    flat_rows = order.reshape(-1, tc)
    flat_n = ng.reshape(-1)
    out = np.zeros((flat_rows.shape[0], lmax), dtype=np.int64)
    for r in range(flat_rows.shape[0]):
        gl = flat_rows[r, :flat_n[r]]
        if len(gl):
            toks = (gl[:, None] * chunk + np.arange(chunk)[None, :]).ravel()
            toks = toks[toks < N]  # the ragged last granule holds fewer tokens; the order is kept
            out[r, :len(toks)] = toks
    return out.reshape(*keep.shape[:-1], lmax), L.astype(np.int64), ng.astype(np.int64)


@register("s2o", "S2O: importance pre-pass, per query block sorted granule lists cut at τ (early stop), virtual KV blocks gathered from scattered tokens (2602.22575, assumed structure)")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          block_size: int = 128, chunk: int = 16, threshold: float = 0.9) -> Schedule:
    """block_size B (query block = block_m), chunk (key granule), threshold τ (scores only); the virtual block is
    block_n (default 64, a multiple of chunk). Assumed values: the paper publishes only its abstract."""
    m = "s2o"
    check_head_dim(p, m)
    concrete(p, m)
    check_int(m, block_size=block_size, chunk=chunk)
    sc.check_params(m, threshold=(threshold, 0.0, 1.0), seed=(seed, 0, None))
    bn = cfg.block_n or 64
    if bn % chunk:
        raise IosimError(f"{m}: the virtual block block_n={bn} must be a multiple of chunk={chunk}")
    cfg = cfg.with_tiles(block_size, bn)
    B_, H, Hk, Nq, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    tq, tc = cdiv(Nq, block_size), cdiv(N, chunk)
    if tq * tc * (B_ * H if scores is not None else 1) > sc.MAX_MASK_BLOCKS:
        raise IosimError(f"{m}: {tq}×{tc} granule scores are too many to hold; use a larger chunk")
    forced = sc.forced_blocks(p, block_size, chunk, first=1, diagonal=True, local=cdiv(block_size, chunk))
    rng = np.random.default_rng(seed)
    if scores is not None:
        given = [n for n, v in (("density", density), ("table", table)) if v is not None]
        if given:
            raise IosimError(f"{m}: give one of density, table or scores, not scores and {given[0]}")
        s = np.load(scores) if isinstance(scores, str) else np.asarray(scores, dtype=np.float64)
        if s.shape[-2:] != (Nq, N) or s.ndim not in (2, 4):
            raise IosimError(f"{m}: scores have shape {s.shape}; give [Nq, Nkv] or [B, H, Nq, Nkv] = [{Nq}, {N}]")
        keep, imp = s2o_rule(p, block_size, chunk, threshold, forced)(s)
        order_key = -imp
        src = f"selected from the given scores (τ = {threshold:g})"
    else:
        keep, src = sc.choose_blocks(p, block_size, chunk, density=density, seed=seed, table=table, forced=forced,
                                     method=m)
        order_key = np.where(forced, -1.0, rng.random(keep.shape))  # forced first, the rest scattered
    keep = np.asarray(keep, dtype=bool)
    per_head = keep.ndim == 4
    toks, L, ng = token_table(keep, order_key, N, chunk)
    kg = max(1, int(ng.max()))
    kept = sc.kept_fraction(keep, p, block_size, chunk)
    base = sc.attention_tensors(p)
    T = {"S2O_QP": TensorSpec("S2O_QP", (B_, H, tq, d), e, "scratch"),
         "S2O_KC": TensorSpec("S2O_KC", (B_, Hk, tc, d), e, "scratch"),
         "S2O_S": TensorSpec("S2O_S", (B_, H, tq, tc), 4, "scratch"),
         "S2O_G": TensorSpec("S2O_G", (B_, H, tq, kg), IDX_BYTES, "scratch")}
    ks = [pool_gather_kernel("s2o_pool_q", base["Q"], T["S2O_QP"], block_size),
          pool_gather_kernel("s2o_pool_k", base["K"], T["S2O_KC"], chunk),
          sc.score_kernel("s2o_scores", T["S2O_QP"], T["S2O_KC"], T["S2O_S"], a_heads_per_b=p.group),
          sc.select_kernel("s2o_order", T["S2O_S"], T["S2O_G"], flops_per_score=SELECT_FLOPS)]
    grid, vs = flash2.grid_axes(p, cfg, tq)
    b, h, i = vs["b"], vs["h"], vs["m"]
    lead = (b, h, i) if per_head else (i,)
    Li, Gi = lookup(tbl("s2o_len"), *lead), lookup(tbl("s2o_ngran"), *lead)
    v = var("v")
    rows = Span(i, block_size, Nq)
    vcols = gathered(v, bn, Li, tbl("s2o_tok"), *lead)

    def kv(p_, nm, b_, h_, cols_):
        return Tile(nm, (point(b_, B_), point(kv_head(p, h_), Hk), vcols, full(d)))

    body = (
        Load("q", Tile("Q", (point(b, B_), point(h, H), rows, full(d)))),
        Loop(v, 0, cdiv(Li, bn), (Load("gidx", Tile("S2O_G", (point(b, B_), point(h, H), point(i, tq),
                                                               Span(v, bn // chunk, Gi)))),)
             + flash2.kv_step(p, b, h, rows, vcols, masked=True, kv=kv)),
        flash2.finalize(p, rows),
        Store("acc", Tile("O", (point(b, B_), point(h, H), rows, full(d)))),
        Store("lse", Tile("LSE", (point(b, B_), point(h, H), rows))),
    )
    kern = Kernel("s2o_fwd", grid, flash2.buffers(block_size, bn, d, e) + (Buffer("gidx", (bn // chunk,), IDX_BYTES, "reg"),),
                  body, threads_per_cta=32 * cfg.num_warps)
    check_fit(kern, cfg, hw, f"block_m={block_size}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    ks.append(kern)
    tabs = {"s2o_tok": toks, "s2o_len": L, "s2o_ngran": ng}
    notes = (f"selection: {src}; {kept:.1%} of causal-valid {block_size}×{chunk} (query block × granule) pairs kept "
             f"(sink and diagonal granules forced)",
             f"virtual blocks of {bn} gathered tokens; granules of {chunk} keys; assumed structure (abstract only)")
    return Schedule(m, p, cfg, base | T, tuple(ks), notes, tables=tabs)
