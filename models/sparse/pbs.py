"""PBS-Attn: permuted block-sparse attention (Wang et al., arXiv 2510.21270; xinghaow99/pbs-attn @8ce8e02).

Keys (and values) are permuted *within segments* of S_g tokens so that the keys a query block needs cluster into
few blocks; queries keep their order, so causality between segments survives (paper §3, "segmented permutation").
The launches, in the order ``pbs_attn/src/pbs.py: permuted_block_sparse_attn_fwd`` runs them:

1. ``pbs_last_scores``  — S = Q_last·Kᵀ for the last B query rows against the keys of the complete segments
   (``permute_states.py: last_block_attn_sorting``), fp32 [B, Nc] per head, Nc = ⌊N/S_g⌋·S_g;
2. ``pbs_row_stats``    — the row max and Σexp of scale·S (the softmax of that call, row by row, streamed in chunks);
3. ``pbs_key_sort``     — per segment: key importance = mean over the B rows of softmax(scale·S), argsort descending
   inside the segment, written as global int64 indices (``PBS_PERM``; the incomplete last segment keeps its order);
4. ``pbs_gather_k`` / ``pbs_gather_v`` — K' = K[perm], V' = V[perm] (``gather_kernel``: contiguous permuted copies,
   each source row its own run in the L2 trace); queries are not permuted (pbs.py: "not permuting queries");
5. ``pbs_pool_q`` / ``pbs_pool_k`` — mean pooling of Q and K' over blocks of B rows (``utils.py: block_pooled_attn``);
6. ``pbs_block_scores`` — pooled Q·pooled K'ᵀ, (N/B)² fp32 (lower triangle when causal);
7. ``pbs_select``       — per block row: softmax over the blocks outside the query's own segment, sort, cumulative sum
   to τ (``utils.py: select_blocks``), the kept indices written (int32);
8. ``pbs_fwd``          — the permuted block-sparse FA kernel (``kernels/permuted_block_sparse_attention.py``): per
   query tile, the selected logical blocks of earlier segments (no mask needed: every key there precedes every query
   of the tile), then *every* tile of the query's own segment, masked by the true key positions (STAGE 2:
   ``perm_Q_indices < perm_K_indices``). The copies K', V' are read with ``positions=`` spans carrying the
   permutation, so the NumPy reference masks by the keys' sequence positions and, with every block kept, equals
   naive attention (causal included).

IO per (b, h), derived (seed-algorithms-io.md §4 f): pre-pass ≈ 7·N·d + c·(N/B)² elements (K read by step 1, K and V
gathered: 4·N·d, Q and K' pooled: 2·N·d; the block-score matrix) plus the small B×N score rows; the kernel reads
Q once and 2·d·(Σ kept off-segment tiles + S_g per query tile of the diagonal segment).

Choices the paper and code leave open, taken here:
* The kernel's tiles (BLOCK_M, BLOCK_N) are autotuned in the repo over {32, 64, 128} dividing B; we take FA2's
  default tiles for the head dim, halved until they divide B (the repo prunes configs that do not divide B).
* ``density``/``table`` sources: the permutation is a seeded random shuffle inside each complete segment with key 0
  first (the attention sink sorts first in PBS's importance order: its key is the most attended), so the forced
  first-token block is block 0. ``density`` is the kept fraction of causal-valid logical blocks per row, the query's
  own segment counted (its causal-valid blocks are forced); the own segment is visited whole as the kernel does.
* ``scores`` are the attention logits scale·Q·Kᵀ ([Nq, Nkv] or [B, H, Nq, Nkv]); the permutation and the selection
  follow the repo from them exactly (pooled Q·pooled Kᵀ equals the block mean of the logits, so the block scores are
  the B×B means of the permuted logits). Ragged edges are pooled over the rows they hold (the repo pads with zero
  rows and divides by B; identical when B divides N). GQA (the repo asserts H = H_kv): one permutation per KV
  head from the importance averaged over its query heads.
* Eager-PyTorch details the model leaves out: the bf16 → fp32 copies of the score rows, padding copies to a multiple
  of B, the int64 index arithmetic of the offsets (all O(N) or O(B·N), below 1% of the kernel at N ≥ 16K).
* Prefill only (seq_q = seq_kv, as pbs.py asserts); at N ≤ S_g the repo falls back to SDPA (dense FA here).

``permuted_fwd_kernel`` (the FA kernel over a permuted K/V copy with position tables, kept tiles listed per query
tile) and ``pool_gather_kernel`` are shared with DraftAttention and S2O: ``models/sparse/kernels.py``.
"""

from __future__ import annotations

import numpy as np

from iosim.errors import IosimError
from iosim.models._common import check_head_dim, kv_head
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import (bh_grid, list_tables, permuted_fwd_kernel, pool_gather_kernel, tiles_dividing,
                                         tiles_of)
from iosim.models.sparse.selection import check_int, concrete
from iosim.problem import KernelConfig, Problem
from iosim.reference import NEG_INF, register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv,
                            full, point, var)

INDEX_BYTES = 8  # torch.argsort returns int64 indices (permute_states.py)
SEL_BYTES = 4  # int32 kept-block indices (select kernel output)
SCORE_CHUNK = 1024  # columns of a score row one step of the row-stats pass holds (registers)
SORT_ROWS = 32  # score rows one step of the key-sort pass holds (shared memory: 32 × S_g fp32)
SELECT_FLOPS = 4  # per block score: exp of the softmax, compare/swap of the sort, the cumulative sum, the test


# --- PBS reference ops ----------------------------------------------------------------------------------------------

@register_op("pbs_row_stats")
def op_pbs_row_stats(ctx, chunk, smax, ssum):
    """Running row max and Σexp of scale·S over a chunk of one score row (the softmax's statistics)."""
    c = chunk.ext[1]
    x = chunk.data[0, :c] * ctx.scale
    m_old, s_old = smax.value(NEG_INF)[0], ssum.value(0.0)[0]
    m_new = max(m_old, x.max()) if c else m_old
    s_new = (s_old * np.exp(m_old - m_new) if np.isfinite(m_old) else 0.0) + np.exp(x - m_new).sum() if c else s_old
    smax.data[0], ssum.data[0] = m_new, s_new
    smax.set((chunk.origin[0],), (1,))
    ssum.set((chunk.origin[0],), (1,))


@register_op("pbs_colsum")
def op_pbs_colsum(ctx, chunk, st, colsum):
    """colsum += Σ_rows softmax(scale·S)[row, cols] for a chunk of rows (statistics from ``pbs_row_stats``)."""
    r, c = chunk.ext
    a = colsum.value(0.0)
    if r and c:
        m, s = st.data[:r, 0], st.data[:r, 1]
        a[:c] += (np.exp(chunk.data[:r, :c] * ctx.scale - m[:, None]) / s[:, None]).sum(axis=0)
    colsum.set((chunk.origin[1],), (c,))


@register_op("pbs_sort_segment")
def op_pbs_sort_segment(ctx, colsum, perm):
    """perm = segment start + argsort(−importance) (stable); an incomplete segment (no scores) keeps its order."""
    c = colsum.ext[0]
    o = colsum.origin[0]
    n = perm.data.shape[0]
    if c:
        perm.data[:c] = o + np.argsort(-colsum.data[:c], kind="stable")
    else:
        perm.data[:] = o + np.arange(n)
    perm.set((o,), (n,))


# --- PBS selection ------------------------------------------------------------------------------------------------

def segment_blocks(tq: int, tk: int, block: int, seg: int) -> np.ndarray:
    """[tq, tk] bool: logical blocks in the query block's own segment (pbs.py: ``segment_mask``)."""
    nb = seg // block
    return (np.arange(tq)[:, None] // nb) == (np.arange(tk)[None, :] // nb)


def perm_from_logits(logits: np.ndarray, B: int, n_heads: int, n_kv: int, block: int, seg: int) -> np.ndarray:
    """The permutation ``last_block_attn_sorting`` makes from logits [B, H, N, N] (already scaled): importance =
    mean over the last ``block`` rows of softmax over the complete segments' keys; argsort descending per segment;
    GQA: importance averaged over a KV head's query heads. [B, H_kv, N] int64."""
    n = logits.shape[-1]
    nseg = n // seg
    nc = nseg * seg
    perm = np.broadcast_to(np.arange(n), (B, n_kv, n)).copy()
    if nseg == 0 or (nseg == 1 and n % seg == 0):
        return perm
    x = logits[:, :, -block:, :nc]
    x = np.exp(x - x.max(-1, keepdims=True))
    imp = (x / x.sum(-1, keepdims=True)).mean(-2)  # [B, H, nc]
    g = n_heads // n_kv
    imp = imp.reshape(B, n_kv, g, nc).mean(2)
    srt = np.argsort(-imp.reshape(B, n_kv, nseg, seg), axis=-1, kind="stable")
    perm[..., :nc] = (srt + (np.arange(nseg) * seg)[:, None]).reshape(B, n_kv, nc)
    return perm


def random_perm(B: int, n_kv: int, n: int, seg: int, seed: int) -> np.ndarray:
    """Seeded shuffles inside each complete segment, key 0 kept first (the sink sorts first); [B, H_kv, N]."""
    rng = np.random.default_rng(seed)
    nseg = n // seg
    perm = np.broadcast_to(np.arange(n), (B, n_kv, n)).copy()
    if nseg == 0 or (nseg == 1 and n % seg == 0):
        return perm
    for bb in range(B):
        for hh in range(n_kv):
            for s in range(nseg):
                lo = s * seg
                perm[bb, hh, lo:lo + seg] = lo + rng.permutation(seg)
            z = int(np.flatnonzero(perm[bb, hh, :seg] == 0)[0])
            perm[bb, hh, [0, z]] = perm[bb, hh, [z, 0]]
    return perm


def pbs_rule(p: Problem, perm: np.ndarray, block: int, seg: int, tau: float):
    """rule(logits) → [B, H, Tq, Tk] kept logical blocks outside the own segment (pbs.py ``permuted_block_selection``
    + ``utils.py select_blocks``): B×B means of the permuted logits, softmax over the row's blocks outside the own
    segment (and, causal, at or below the diagonal), kept in descending order until their sum reaches τ."""
    def rule(scores):
        s = np.asarray(scores, dtype=np.float64)
        s = np.broadcast_to(s, (p.batch, p.heads) + s.shape[-2:]) if s.ndim == 2 else s
        hk = np.arange(p.heads) // p.group
        pk = perm[:, hk]  # [B, H, N] the permutation of each query head's KV head
        sp_ = np.take_along_axis(s, np.broadcast_to(pk[:, :, None, :], s.shape), axis=-1)
        blk = sc.pool_blocks(sp_, block, block, "mean")
        tq, tk = blk.shape[-2:]
        sel = ~segment_blocks(tq, tk, block, seg) & sc.valid_blocks(p, block, block)
        x = np.where(sel, blk, -np.inf)
        mx = x.max(-1, keepdims=True)
        ex = np.where(sel, np.exp(x - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
        tot = ex.sum(-1, keepdims=True)
        prob = np.where(tot > 0, ex / np.where(tot > 0, tot, 1.0), 0.0)
        keep = sc.keep_cumulative(prob, tau, valid=sel) & (tot > 0)
        return keep
    return rule


def first_token_block(perm: np.ndarray, p: Problem, block: int, tq: int, tk: int) -> np.ndarray:
    """[B, H, tq, tk]: the logical block holding original key 0 after the permutation (pbs.py ``first_token_mask``)."""
    pos0 = np.argmax(perm == 0, axis=-1)  # [B, H_kv]
    col = pos0[:, np.arange(p.heads) // p.group] // block  # [B, H]
    out = np.zeros((p.batch, p.heads, tq, tk), dtype=bool)
    out[np.arange(p.batch)[:, None], np.arange(p.heads)[None, :], :, col] = True
    return out


# --- the PBS schedule ---------------------------------------------------------------------------------------------

def _pbs_prepass(p: Problem, cfg: KernelConfig, block: int, seg: int, kmax: int) -> tuple[list, dict]:
    """Kernels 1–7 and their scratch tensors."""
    B, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    nc = (N // seg) * seg
    bl = min(block, p.seq_q)
    tq, tk = cdiv(p.seq_q, block), cdiv(N, block)
    T = {
        "PBS_S": TensorSpec("PBS_S", (B, H, bl, max(nc, 1)), 4, "scratch"),
        "PBS_STATS": TensorSpec("PBS_STATS", (B, H, bl, 2), 4, "scratch"),
        "PBS_PERM": TensorSpec("PBS_PERM", (B, Hk, N), INDEX_BYTES, "scratch"),
        "Kp": TensorSpec("Kp", (B, Hk, N, d), e, "scratch"),
        "Vp": TensorSpec("Vp", (B, Hk, N, d), e, "scratch"),
        "PBS_QP": TensorSpec("PBS_QP", (B, H, tq, d), e, "scratch"),
        "PBS_KP": TensorSpec("PBS_KP", (B, Hk, tk, d), e, "scratch"),
        "PBS_BS": TensorSpec("PBS_BS", (B, H, tq, tk), 4, "scratch"),
        "PBS_SEL": TensorSpec("PBS_SEL", (B, H, tq, kmax), SEL_BYTES, "scratch"),
    }
    ks = []
    # 1. last-block scores: one CTA per 128-key tile; Q's last rows [N - bl, N) loaded by each
    tile = 128
    grid, (y, b, h) = bh_grid(B, H, cdiv(max(nc, 1), tile), "n")
    qrows = Span(0, bl, bl, offset=p.seq_q - bl)
    cols = Span(y, tile, nc)
    ks.append(Kernel("pbs_last_scores", grid, (Buffer("a", (bl, d), e), Buffer("bm", (tile, d), e, pipelined=True),
                                                Buffer("s", (bl, tile), 4, "reg")), (
        Load("a", Tile("Q", (point(b, B), point(h, H), qrows, full(d)))),
        Load("bm", Tile("K", (point(b, B), point(kv_head(p, h), Hk), cols, full(d)))),
        Compute("score_nt", ("a", "bm", "s"), matmul=(Work(2 * d, (qrows, cols)),)),
        Store("s", Tile("PBS_S", (point(b, B), point(h, H), Span(0, bl, bl), cols))),
    )))
    # 2. row statistics of softmax(scale·S): per row, streamed over 1024-column chunks
    grid, (r, b, h) = bh_grid(B, H, bl)
    c = var("c")
    ccols = Span(c, SCORE_CHUNK, nc)
    ks.append(Kernel("pbs_row_stats", grid, (Buffer("row", (1, SCORE_CHUNK), 4, "reg"),
                                             Buffer("smax", (1,), 4, "reg"), Buffer("ssum", (1,), 4, "reg")), (
        Loop(c, 0, cdiv(nc, SCORE_CHUNK), (
            Load("row", Tile("PBS_S", (point(b, B), point(h, H), Span(r, 1, bl), ccols))),
            Compute("pbs_row_stats", ("row", "smax", "ssum"), exp=(Work(1, (ccols,)),), other=(Work(3, (ccols,)),)),
        )),
        Store("smax", Tile("PBS_STATS", (point(b, B), point(h, H), Span(r, 1, bl), Span(0, 1, 2)))),
        Store("ssum", Tile("PBS_STATS", (point(b, B), point(h, H), Span(r, 1, bl), Span(1, 1, 2)))),
    )))
    # 3. per segment: column means of the probabilities, sorted; the incomplete segment keeps its order
    grid, (sg, b, h) = bh_grid(B, Hk, cdiv(N, seg), "n")
    x = var("x")
    g = p.group
    rws = Span(x, SORT_ROWS, bl)
    scols = Span(sg, seg, nc)
    body = []
    for hq in range(g):  # the KV head's query heads, importance summed (GQA)
        hh = h * g + hq
        body.append(Loop(x, 0, cdiv(bl, SORT_ROWS), (
            Load("chunk", Tile("PBS_S", (point(b, B), point(hh, H), rws, scols))),
            Load("st", Tile("PBS_STATS", (point(b, B), point(hh, H), rws, full(2)))),
            Compute("pbs_colsum", ("chunk", "st", "colsum"), exp=(Work(1, (rws, scols)),),
                    other=(Work(3, (rws, scols)),)),
        )))
    body += [Compute("pbs_sort_segment", ("colsum", "perm"), other=(Work(2 * int(np.log2(seg)) + 2, (scols,)),)),
             Store("perm", Tile("PBS_PERM", (point(b, B), point(h, Hk), Span(sg, seg, N))))]
    ks.append(Kernel("pbs_key_sort", grid, (Buffer("chunk", (SORT_ROWS, seg), 4), Buffer("st", (SORT_ROWS, 2), 4, "reg"),
                                            Buffer("colsum", (seg,), 4, "reg"), Buffer("perm", (seg,), INDEX_BYTES, "reg")),
                     tuple(body)))
    # 4. K' = K[perm], V' = V[perm]
    ks.append(sc.gather_kernel("pbs_gather_k", qkv_spec(p, "K"), T["Kp"], "pbs_perm"))
    ks.append(sc.gather_kernel("pbs_gather_v", qkv_spec(p, "V"), T["Vp"], "pbs_perm"))
    # 5.–7. pooled block scores and the threshold selection
    ks.append(pool_gather_kernel("pbs_pool_q", qkv_spec(p, "Q"), T["PBS_QP"], block))
    ks.append(pool_gather_kernel("pbs_pool_k", T["Kp"], T["PBS_KP"], block))
    ks.append(sc.score_kernel("pbs_block_scores", T["PBS_QP"], T["PBS_KP"], T["PBS_BS"], a_heads_per_b=g,
                              lower_triangular=p.causal))
    ks.append(sc.select_kernel("pbs_select", T["PBS_BS"], T["PBS_SEL"], flops_per_score=SELECT_FLOPS))
    return ks, T


def qkv_spec(p: Problem, name: str) -> TensorSpec:
    return sc.attention_tensors(p)[name]


@register("pbs_attn", "PBS-Attn: keys permuted inside segments, pooled block scores to τ, permuted block-sparse FA (2510.21270)")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          block_size: int = 128, segment_size: int = 256, threshold: float = 0.9) -> Schedule:
    """block_size B = 128, segment_size S_g = 256, threshold τ = 0.9 (eval_efficiency.py PBSArgs). Selection from
    density (kept fraction of causal-valid B×B blocks per row), a block table ([⌈N/B⌉]² bool, blocks of the
    *permuted* key order), or scores (logits scale·QKᵀ, the repo's rule). Returns the pre-pass and kernel."""
    m = "pbs_attn"
    check_head_dim(p, m)
    concrete(p, m)
    check_int(m, block_size=block_size, segment_size=segment_size)
    sc.check_params(m, threshold=(threshold, 0.0, 1.0), seed=(seed, 0, None))
    if segment_size % block_size:
        raise IosimError(f"{m}: segment_size={segment_size} must be a multiple of block_size={block_size} "
                         "(pbs.py asserts it)")
    if p.seq_q != p.seq_kv:
        raise IosimError(f"{m}: models prefill only (seq_q = seq_kv, as pbs.py asserts); got {p.seq_q} and {p.seq_kv}")
    given = [n_ for n_, v_ in (("density", density), ("table", table), ("scores", scores)) if v_ is not None]
    if len(given) > 1:
        raise IosimError(f"{m}: give one of density, table or scores, not {' and '.join(given)}")
    cfg = tiles_dividing(p, cfg, block_size, m)
    B_, N, blk, seg = p.batch, p.seq_kv, block_size, segment_size
    tq, tk = cdiv(N, blk), cdiv(N, blk)
    tm, tn = cdiv(N, cfg.block_m), cdiv(N, cfg.block_n)
    if tq * tk * (p.batch * p.heads if scores is not None else 1) > sc.MAX_MASK_BLOCKS:
        raise IosimError(f"{m}: {tq}×{tk} blocks are too many to hold; use a larger block_size")
    valid = sc.valid_blocks(p, blk, blk)
    segm = segment_blocks(tq, tk, blk, seg)
    notes = []
    if N <= seg:  # pbs.py: "Fall back to regular attention if not permuting"
        tabs = list_tables(np.zeros((tm, tn), bool), sc.valid_blocks(p, cfg.block_m, cfg.block_n), "")
        kern = permuted_fwd_kernel(p, cfg, hw, "", False, name="pbs_fwd", masked=(False, True))
        return Schedule(m, p, cfg, sc.attention_tensors(p), (kern,),
                        (f"N = {N} ≤ segment_size = {seg}: PBS falls back to dense attention (pbs.py)",), tables=tabs)
    if scores is not None:
        s = np.load(scores) if isinstance(scores, str) else np.asarray(scores, dtype=np.float64)
        if s.shape[-2:] != (N, N):
            raise IosimError(f"{m}: scores have shape {s.shape}; the last two axes must be [Nq, Nkv] = [{N}, {N}]")
        s4 = np.broadcast_to(s, (B_, p.heads, N, N)) if s.ndim == 2 else s
        if s4.shape[:2] != (B_, p.heads):
            raise IosimError(f"{m}: scores have shape {s.shape}; give [Nq, Nkv] or [B, H, Nq, Nkv] = "
                             f"[{B_}, {p.heads}, {N}, {N}]")
        perm = perm_from_logits(s4, B_, p.heads, p.kv_heads, blk, seg)
        forced = first_token_block(perm, p, blk, tq, tk) | (segm & valid)
        mask, src = sc.choose_blocks(p, blk, blk, scores=s4, rule=pbs_rule(p, perm, blk, seg, threshold),
                                     forced=forced, method=m)
    else:
        perm = random_perm(B_, p.kv_heads, N, seg, seed)
        forced = (segm & valid)
        forced[:, 0] = True
        mask, src = sc.choose_blocks(p, blk, blk, density=density, seed=seed, table=table, forced=forced & valid,
                                     method=m)
    per_head = mask.ndim == 4
    off = mask & ~segm
    kept = sc.kept_fraction(mask | (segm & valid), p, blk, blk)
    off_t = tiles_of(off, blk, cfg.block_m, cfg.block_n, tm, tn)
    seg_t = tiles_of(np.broadcast_to(segm, mask.shape), blk, cfg.block_m, cfg.block_n, tm, tn)
    tabs = list_tables(off_t, seg_t, "")
    kmax = max(1, int(off.sum(-1).max()))
    pre, T = _pbs_prepass(p, cfg, blk, seg, kmax)
    kern = permuted_fwd_kernel(p, cfg, hw, "", per_head, name="pbs_fwd", k="Kp", v="Vp", k_pos="pbs_perm")
    tabs["pbs_perm"] = perm
    tensors = sc.attention_tensors(p) | T
    notes.append(f"selection: {src}; {kept:.1%} of causal-valid {blk}×{blk} blocks visited (own segment whole)")
    notes.append(f"keys permuted inside {seg}-token segments ({N // seg} complete); tiles {cfg.block_m}×{cfg.block_n}")
    return Schedule(m, p, cfg, tensors, tuple(pre) + (kern,), tuple(notes), tables=tabs)
