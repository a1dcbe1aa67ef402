"""Flash Sparse Attention (FSA, Yan et al., arXiv 2508.18224): NSA with the selected branch's loop order swapped.

Source: Relaxed-System-Lab/Flash-Sparse-Attention @1da34f3, ``fsa/ops/FSA_topk_sparse_attention.py``
(``_topk_sparse_attention_fwd_opt_per_seq`` and its kernels) called from ``fsa/module/fsa.py`` for GQA groups g ≤ 8
(for g > 8 fsa.py falls back to NSA's kernel: ``fallback``). Every other branch (compression, compressed attention,
selection, sliding window, gate combine) is NSA's (``models/sparse/nsa.py``); the selection default here is FSA's
fused score kernel (``fsa/ops/fused_score_kernels.py``: bf16 block scores [Hkv, N, N/64], 128 MiB per KV head at 64K
— streamed by the counter and the L2 trace, never held), ``selection="scores"`` gives fsa.py's own path.

NSA's selected kernel runs a CTA per (token, KV head) and pads the group's g query heads to 16 MMA rows; FSA runs a
CTA per (KV block j, 1024 tokens that selected it, query head): K_j and V_j are loaded once, the tokens are gathered
through int32 index lists, 128 at a time (tl.dot on 128 gathered rows: no padding). Kernels, in launch order (each
launch the code makes per KV head or per query head is one kernel here with that head as a grid axis — same bytes,
fewer launches; the per-head buffers the code reuses are indexed by head):

* bookkeeping, as launched at 1da34f3 (these touch [Nb, N] tables: quadratic in N, like the block scores):
  ``fsa_alloc_index`` token_index_mapping = torch.full((1, Nb, N), 0) int32 (once);
  ``fsa_alloc_partials`` o_tiles / l_ij / acc_o_scales (first: N rows, rest: (Nb − 1)·max_valid rows; one head's
  worth, zeros / ones); ``fsa_alloc_out`` o_full = zeros (H·N·d), lse_full = −∞;
  ``fsa_fill`` per KV head topk_idx_permuted_tile = −1 and m_i_cur_tiles = −∞ ([Nb, N] each: the initial torch.full
  and fused_fill; the fused_fill after the last KV head is left out);
  ``fsa_count`` valid_lens = bincount of the KV head's indices (the masked select before it is left out);
  ``fsa_block_to_token`` (build_block_to_token_triton, 4 tokens a CTA): P[j, t] = t for every selected (t, j) —
  N·n scattered 4-byte stores; ``fsa_compact`` P[P != −1] (torch boolean indexing: reads [Nb, N], writes the
  Σ valid_j token lists; its bool mask and nonzero index tensors are left out); ``fsa_index_mapping``
  (index_mapping_kernel, 1024 a CTA): token_index_mapping[j, t] = t's position in block j's list (scattered stores);
* ``fsa_stats`` (qk_kernel, 8 warps, grid (Nb, ⌈N/1024⌉) per KV head): for every block j, the K block and the
  group's first query head's rows of the tokens that selected it (gathered, 128 at a time), m_i_cur[j, t] =
  max_k q_t·k; it loads K_j whenever 128·y < valid_j; ``fsa_cummax`` m_ij = m_i_cur.cummax(dim=1) (reads [Nb, N]
  fp32, writes values fp32 + indices int64); ``fsa_stats_bcast`` — 1da34f3 then overwrites every token's running
  maxima with token 0's (``m_ij_tiles[:, :, :] = m_ij_tiles[:, :, 0][:, :, None]``): a [Nb, N] write; the result
  stays exact (any stabiliser cancels in the reduction), the reference replays it;
* ``fsa_main_first`` / ``fsa_main_rest`` (forward_kernel_opt, 4 warps, 3 stages, 128 × 64 tiles; block 0, which
  every token selects, is its own launch): per (block j, chunk y of 8 × 128 tokens, query head h): K_j and V_j once,
  then per 128 tokens the token ids, m[j, t] and m[j − 1, t] (gathered fp32), the query rows (gathered), the
  token_index_mapping entries; writes l_ij and acc_o_scale (fp32) and the unnormalised partial P·V (bf16) at the
  tokens' positions in block j's partial buffer. A CTA whose chunk has no token returns before loading K/V;
* ``fsa_reduce`` (reduce_kernel, 1 warp, a CTA per (token, query head)): O row and LSE (the zero / −∞ start), the
  last block's running max, the token's top-n entries; per selected block: token_index_mapping, m, l_ij, the bf16
  partial row and acc_o_scale; lse ← m + log(e^{lse − m} + l), acc ← partial + acc·scale; O = acc·e^{m_last − lse}.

Per KV head (the brief's IO, derived): main kernels 2Nd·⌈…⌉ of K/V per query head, Q read twice (stats + main:
N·n·d each; stats on one head of the group, main on every head), partials written and read (2·N·n·d per query head)
plus the fp32 statistics and the quadratic bookkeeping above. The reduce grid is (4 + [N mod 4 ≠ 0]) × ⌊N/4⌋ CTAs, a
token each; the few past N return at once and are not modeled. Decode (seq_q = 1): FSA's one-step decode
(``fsa_preview``) runs NSA's kernels: ``nsa``'s decode schedule.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models.sparse import nsa
from iosim.models.sparse.kernels import INT32, INT64, STREAM_REGS, fill_kernel, triton_kernel
from iosim.models.sparse.nsa import Selection
from iosim.problem import KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, clamp, full, lookup, point, table, var)

BQ = 128  # BLOCK_SIZE_Q of qk_kernel / forward_kernel_opt
NQB = 8  # num_q_blocks: 128-token chunks a CTA walks (1024 tokens)
GQA_FALLBACK = 8  # fsa.py: g ≤ 8 runs FSA, larger groups NSA's kernel


def _grid(*axes) -> tuple[GridAxis, ...]:
    return tuple(GridAxis(n, v, e) for n, v, e in axes)


def fsa_tables(p: Problem, g, sel: Selection) -> tuple[dict, dict]:
    """(tables, sizes) of the FSA kernels from the selection: per (b, KV head) the tokens that selected each block,
    grouped by block and ascending (the compaction of P[j, t] row by row), the blocks' starts and counts, each
    (token, entry)'s position in its block's list, the partial buffer's row base of each block, and the position
    of every compact entry within its block (``fsa_rel``, for the reference's token_index_mapping values)."""
    B, Hkv, Nq = p.batch, p.kv_heads, p.seq_q
    Nb = g.n_blocks
    idx, num = sel.idx, sel.num
    w = idx.shape[-1]
    valid = np.arange(w)[None, None, None, :] < num[..., None]
    bb, hh, tt, ii = np.nonzero(valid)
    jj = idx[bb, hh, tt, ii]
    order = np.lexsort((tt, jj, hh, bb))
    bb, hh, tt, ii, jj = bb[order], hh[order], tt[order], ii[order], jj[order]
    cnt = np.zeros((B, Hkv, Nb), dtype=np.int64)
    np.add.at(cnt, (bb, hh, jj), 1)
    start = np.cumsum(cnt, axis=-1) - cnt
    total = cnt.sum(-1)
    tmax = max(1, int(total.max()))
    gpos = np.arange(bb.size) - np.repeat(np.concatenate(([0], np.cumsum(total.ravel())[:-1])), total.ravel())
    tokens = np.zeros((B, Hkv, tmax), dtype=np.int64)
    tokens[bb, hh, gpos] = tt
    rel = np.zeros((B, Hkv, tmax), dtype=np.int64)
    rel[bb, hh, gpos] = gpos - start[bb, hh, jj]
    slot = np.zeros((B, Hkv, Nq, w), dtype=np.int64)
    slot[bb, hh, tt, ii] = gpos - start[bb, hh, jj]
    maxv = max(1, int(cnt[..., 1:].max()) if Nb > 1 else 1)
    base = np.concatenate(([0], Nq + np.arange(Nb - 1, dtype=np.int64) * maxv)).astype(np.int64)
    rows_total = Nq + (Nb - 1) * maxv
    tabs = {"fsa_tok": tokens, "fsa_rel": rel, "fsa_start": start, "fsa_cnt": cnt, "fsa_slot": slot,
            "fsa_base": base}
    return tabs, {"tokens_max": tmax, "max_valid": maxv, "rows_total": rows_total,
                  "max_valid_all": int(cnt.max()), "chunks_rest": cdiv(maxv, BQ * NQB),
                  "chunks_first": cdiv(Nq, BQ * NQB)}


def fsa_tensors(p: Problem, g, sz: dict) -> dict[str, TensorSpec]:
    B, H, Hkv, Nq, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    Nb, R = g.n_blocks, sz["rows_total"]
    quad = (B, Hkv, Nb, Nq, 1)  # [.., Nb, N] tables, a unit last axis so token gathers are on a non-contiguous axis
    return {
        "Tok": TensorSpec("Tok", (B, Hkv, sz["tokens_max"]), INT32, "scratch"),
        "Cnt": TensorSpec("Cnt", (B, Hkv, Nb), INT32, "scratch"),
        "P": TensorSpec("P", quad, INT32, "scratch"),
        "TIM": TensorSpec("TIM", quad, INT32, "scratch"),
        "M_cur": TensorSpec("M_cur", quad, 4, "scratch"),
        "M": TensorSpec("M", quad, 4, "scratch"),
        "M_idx": TensorSpec("M_idx", quad, INT64, "scratch"),
        "O_part": TensorSpec("O_part", (B, H, R, d), e, "scratch"),
        "L_part": TensorSpec("L_part", (B, H, R, 1), 4, "scratch"),
        "S_part": TensorSpec("S_part", (B, H, R, 1), 4, "scratch"),
    }


def _tok_span(c, valid, start, b, kh, block=BQ):
    """Chunk c of a block's token list (compact positions start + c·128 + x < start + valid)."""
    return Span(c, block, valid, offset=start)


def _gathered_tokens(c, valid, start, b, kh, block=BQ):
    """The token rows of chunk c (a gather through the compact lists ``fsa_tok``)."""
    return Span(c, block, valid, offset=start, gather=(table("fsa_tok"), b, kh))


def alloc_kernels(p: Problem, g, sz: dict) -> tuple[Kernel, ...]:
    B, H, Hkv, Nq, d = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim
    Nb, R = g.n_blocks, sz["rows_total"]
    b, h, j, i = var("b"), var("h"), var("pid_n"), var("pid_m")
    tim = fill_kernel("fsa_alloc_index", [
        (Tile("TIM", (point(b, B), point(0, Hkv), point(j, Nb), full(Nq), full(1))), "nsa_fill_zero", (Nq, 1)),
    ], 1, _grid(("n", j, Nb), ("b", b, B)))
    rows = Span(i, 1024, R)
    part = fill_kernel("fsa_alloc_partials", [
        (Tile("O_part", (point(b, B), point(0, H), rows, full(d))), "nsa_fill_zero", (1024, d)),
        (Tile("L_part", (point(b, B), point(0, H), rows, full(1))), "nsa_fill_zero", (1024, 1)),
        (Tile("S_part", (point(b, B), point(0, H), rows, full(1))), "fsa_fill_one", (1024, 1)),
    ], 1024, _grid(("m", i, cdiv(R, 1024)), ("b", b, B)))
    qrows = Span(i, 128, Nq)
    out = fill_kernel("fsa_alloc_out", [
        (Tile("O_slc", (point(b, B), point(h, H), qrows, full(d))), "nsa_fill_zero", (128, d)),
        (Tile("LSE_slc", (point(b, B), point(h, H), qrows)), "nsa_fill_neginf", (128,)),
    ], 128, _grid(("m", i, cdiv(Nq, 128)), ("h", h, H), ("b", b, B)))
    fill = fill_kernel("fsa_fill", [
        (Tile("P", (point(b, B), point(h, Hkv), point(j, Nb), full(Nq), full(1))), "nsa_fill_minus1", (Nq, 1)),
        (Tile("M_cur", (point(b, B), point(h, Hkv), point(j, Nb), full(Nq), full(1))), "nsa_fill_neginf", (Nq, 1)),
    ], 1, _grid(("n", j, Nb), ("h", h, Hkv), ("b", b, B)), warps=1)
    return tim, part, out, fill


def index_kernels(p: Problem, g, width: int, sz: dict) -> tuple[Kernel, ...]:
    """fsa_count, fsa_block_to_token, fsa_compact, fsa_index_mapping (module docstring)."""
    B, Hkv, Nq = p.batch, p.kv_heads, p.seq_q
    Nb = g.n_blocks
    b, kh, t, x, i, j, y = var("b"), var("h"), var("pid_m"), var("x"), var("i"), var("pid_n"), var("y")
    # bincount: one CTA per (b, KV head) streams the index rows 256 tokens at a time
    rows = Span(t, 256, Nq)
    count = triton_kernel("fsa_count", _grid(("h", kh, Hkv), ("b", b, B)), (
        Buffer("idx", (256, width), INT32, "reg"), Buffer("cnt", (Nb,), INT32, "reg")), (
        Loop(t, 0, cdiv(Nq, 256), (
            Load("idx", Tile("topk_idx", (point(b, B), point(kh, Hkv), rows, full(width)))),
            Compute("fsa_bincount", ("idx", "cnt"), other=(Work(1, (rows, full(width))),)),
        )),
        Store("cnt", Tile("Cnt", (point(b, B), point(kh, Hkv), full(Nb)))),
    ), warps=4, stages=1, regs=STREAM_REGS)
    # block → token: 4 tokens a CTA, a 4-byte store per selected (t, j)
    tok = t * 4 + x
    jsel = lookup(table("nsa_sel_idx"), b, kh, tok, i)
    b2t = triton_kernel("fsa_block_to_token", _grid(("m", t, cdiv(Nq, 4)), ("h", kh, Hkv), ("b", b, B)), (
        Buffer("idx", (1, width), INT32, "reg"), Buffer("tid", (1, 1), INT32, "reg")), (
        Loop(x, 0, sp.Min(4, Nq - t * 4), (
            Load("idx", Tile("topk_idx", (point(b, B), point(kh, Hkv), Span(tok, 1, Nq), full(width)))),
            Compute("fsa_token_id", ("idx", "tid")),
            Loop(i, 0, lookup(table("nsa_sel_num"), b, kh, tok), (
                Store("tid", Tile("P", (point(b, B), point(kh, Hkv), point(jsel, Nb), Span(tok, 1, Nq), full(1)))),
            )),
        )),
    ), warps=2, stages=3, regs=STREAM_REGS)
    # compaction P[P != −1]: each block row read whole, its tokens written to the compact list
    valid = lookup(table("fsa_cnt"), b, kh, j)
    start = lookup(table("fsa_start"), b, kh, j)
    compact = triton_kernel("fsa_compact", _grid(("n", j, Nb), ("h", kh, Hkv), ("b", b, B)), (
        Buffer("row", (Nq, 1), INT32, "reg"), Buffer("lst", (Nq,), INT32, "reg")), (
        Load("row", Tile("P", (point(b, B), point(kh, Hkv), point(j, Nb), full(Nq), full(1)))),
        Compute("fsa_compact_row", ("row", "lst"), other=(Work(2, (full(Nq),)),)),
        Store("lst", Tile("Tok", (point(b, B), point(kh, Hkv), Span(0, Nq, valid, offset=start)))),
    ), warps=4, stages=1, regs=STREAM_REGS)
    # index mapping: TIM[j, token] = position, 1024 list entries a CTA, scattered 4-byte stores
    pos = start + y * 1024 + x
    tokx = lookup(table("fsa_tok"), b, kh, pos)
    imap = triton_kernel("fsa_index_mapping", _grid(("n", j, Nb), ("m", y, cdiv(sz["max_valid_all"], 1024)),
                                                     ("h", kh, Hkv), ("b", b, B)), (
        Buffer("st", (1024,), INT32, "reg"), Buffer("pos", (1, 1), INT32, "reg")), (
        Load("st", Tile("Tok", (point(b, B), point(kh, Hkv),
                                Span(y, 1024, valid, offset=start, positions=(table("fsa_rel"), b, kh))))),
        Loop(x, 0, clamp(valid - y * 1024, 0, 1024), (
            Compute("fsa_position", ("st", "pos")),
            Store("pos", Tile("TIM", (point(b, B), point(kh, Hkv), point(j, Nb), Span(tokx, 1, Nq), full(1)))),
        )),
    ), warps=2, stages=3, regs=STREAM_REGS)
    return count, b2t, compact, imap


def stats_kernels(p: Problem, g, sz: dict, bcast: bool) -> tuple[Kernel, ...]:
    """fsa_stats (qk_kernel), fsa_cummax, fsa_stats_bcast."""
    B, H, Hkv, Nq, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    Nb, bk, grp = g.n_blocks, g.block_size, H // Hkv
    b, kh, j, y, z, c = var("b"), var("h"), var("pid_n"), var("pid_m"), var("k_loaded"), var("c")
    valid = lookup(table("fsa_cnt"), b, kh, j)
    start = lookup(table("fsa_start"), b, kh, j)
    chunk = y * NQB + c
    toks = _gathered_tokens(chunk, valid, start, b, kh)
    cols = Span(j, bk, N)
    body = (
        Loop(z, 0, sp.Min(1, sp.Max(0, valid - y * BQ)), (
            Load("k", Tile("K", (point(b, B), point(kh, Hkv), cols, full(d)))),
            Loop(c, 0, clamp(cdiv(valid, BQ) - y * NQB, 0, NQB), (
                Load("st", Tile("Tok", (point(b, B), point(kh, Hkv), _tok_span(chunk, valid, start, b, kh)))),
                Load("q", Tile("Q", (point(b, B), point(kh * grp, H), toks, full(d)))),
                Compute("fsa_rowmax", ("q", "k", "m"), matmul=(Work(2 * d, (toks, cols)),),
                        other=(Work(3, (toks, cols)),)),
                Store("m", Tile("M_cur", (point(b, B), point(kh, Hkv), point(j, Nb), toks, full(1)))),
            )),
        )),
    )
    bufs = (Buffer("k", (bk, d), e), Buffer("st", (BQ,), INT32, "reg"), Buffer("q", (BQ, d), e, pipelined=True),
            Buffer("m", (BQ, 1), 4, "reg"))
    stats = triton_kernel("fsa_stats", _grid(("n", j, Nb), ("m", y, cdiv(Nq, BQ * NQB)), ("h", kh, Hkv), ("b", b, B)),
                          bufs, body, warps=8, stages=3)
    cc = var("pid_m")
    colspan = Span(cc, 128, Nq)
    q5 = lambda n, jj: Tile(n, (point(b, B), point(kh, Hkv), point(jj, Nb), colspan, full(1)))  # noqa: E731
    jv = var("j")
    cm = triton_kernel("fsa_cummax", _grid(("m", cc, cdiv(Nq, 128)), ("h", kh, Hkv), ("b", b, B)), (
        Buffer("x", (128, 1), 4, "reg"), Buffer("run", (128, 1), 4, "reg"), Buffer("y", (128, 1), 4, "reg"),
        Buffer("yi", (128, 1), INT64, "reg")), (
        Loop(jv, 0, Nb, (
            Load("x", q5("M_cur", jv)),
            Compute("fsa_cummax", ("x", "run", "y", "yi"), other=(Work(2, (colspan,)),)),
            Store("y", q5("M", jv)),
            Store("yi", q5("M_idx", jv)),
        )),
    ), warps=4, stages=1, regs=STREAM_REGS)
    out = [stats, cm]
    if bcast:
        out.append(triton_kernel("fsa_stats_bcast", _grid(("n", j, Nb), ("h", kh, Hkv), ("b", b, B)), (
            Buffer("m0", (1, 1), 4, "reg"), Buffer("row", (Nq, 1), 4, "reg")), (
            Load("m0", Tile("M", (point(b, B), point(kh, Hkv), point(j, Nb), point(0, Nq), full(1)))),
            Compute("fsa_bcast", ("m0", "row")),
            Store("row", Tile("M", (point(b, B), point(kh, Hkv), point(j, Nb), full(Nq), full(1)))),
        ), warps=4, stages=1, regs=STREAM_REGS))
    return tuple(out)


def main_kernel(p: Problem, g, sz: dict, first: bool) -> Kernel:
    """forward_kernel_opt on block 0 (``first``) or blocks 1 … Nb − 1, every query head (module docstring)."""
    B, H, Hkv, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    Nb, bk, grp = g.n_blocks, g.block_size, H // Hkv
    b, kh, r, n, y, z, z2, c = (var("b"), var("h"), var("r"), var("pid_n"), var("pid_m"), var("kv_loaded"),
                                var("prev"), var("c"))
    j = 0 if first else n + 1
    h = kh * grp + r  # query head r of KV head kh's group (only in point spans: the counter multiplies it)
    valid = lookup(table("fsa_cnt"), b, kh, j)
    start = lookup(table("fsa_start"), b, kh, j)
    base = lookup(table("fsa_base"), j)
    chunk = y * NQB + c
    toks = _gathered_tokens(chunk, valid, start, b, kh)
    prow = Span(chunk, BQ, valid, offset=base)  # the tokens' rows in block j's partial buffer
    cols = Span(j, bk, N)
    kvt = lambda name: Tile(name, (point(b, B), point(kh, Hkv), cols, full(d)))  # noqa: E731
    mt = lambda jj: Tile("M", (point(b, B), point(kh, Hkv), point(jj, Nb), toks, full(1)))  # noqa: E731
    part = lambda name, w: Tile(name, (point(b, B), point(h, H), prow, full(w)))  # noqa: E731
    inner = [
        Load("st", Tile("Tok", (point(b, B), point(kh, Hkv), _tok_span(chunk, valid, start, b, kh)))),
        Load("m", mt(j)),
    ]
    if not first:
        inner.append(Loop(z2, 0, sp.Min(1, j), (Load("mp", mt(j - 1)),)))
    inner += [
        Load("q", Tile("Q", (point(b, B), point(h, H), toks, full(d)))),
        Compute("fsa_main_p", ("q", "k", "m", "mp", "s", "l", "sc"), matmul=(Work(2 * d, (toks, cols)),),
                exp=(Work(1, (toks, cols)), Work(1, (toks,))), other=(Work(4, (toks, cols)), Work(2, (toks,)))),
        Load("tim", Tile("TIM", (point(b, B), point(kh, Hkv), point(j, Nb), toks, full(1)))),
        Store("l", part("L_part", 1)),
        Store("sc", part("S_part", 1)),
        Compute("fsa_pv", ("s", "v", "o"), matmul=(Work(2 * d, (toks, cols)),)),
        Store("o", part("O_part", d)),
    ]
    body = (
        Loop(z, 0, sp.Min(1, sp.Max(0, valid - y * BQ * NQB)), (
            Load("k", kvt("K")),
            Load("v", kvt("V")),
            Loop(c, 0, clamp(cdiv(valid, BQ) - y * NQB, 0, NQB), tuple(inner)),
        )),
    )
    bufs = (Buffer("k", (bk, d), e), Buffer("v", (bk, d), e), Buffer("st", (BQ,), INT32, "reg"),
            Buffer("m", (BQ, 1), 4, "reg"), Buffer("mp", (BQ, 1), 4, "reg"), Buffer("q", (BQ, d), e, pipelined=True),
            Buffer("s", (BQ, bk), 4, "reg"), Buffer("p", (BQ, bk), e, "reg", transient=True),
            Buffer("l", (BQ, 1), 4, "reg"), Buffer("sc", (BQ, 1), 4, "reg"), Buffer("tim", (BQ, 1), INT32, "reg"),
            Buffer("o", (BQ, d), 4, "reg"))
    heads = (("h", r, grp), ("h", kh, Hkv), ("b", b, B))
    grid = (_grid(("m", y, sz["chunks_first"]), *heads) if first else
            _grid(("n", n, max(Nb - 1, 1)), ("m", y, sz["chunks_rest"]), *heads))
    return triton_kernel("fsa_main_first" if first else "fsa_main_rest", grid, bufs, body, warps=4, stages=3)


def reduce_kernel(p: Problem, g, width: int) -> Kernel:
    """reduce_kernel: a CTA per (token, query head) over the token's selected blocks (module docstring)."""
    B, H, Hkv, Nq, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    Nb, grp = g.n_blocks, H // Hkv
    b, kh, r, t, i = var("b"), var("h"), var("r"), var("pid_m"), var("i")
    h = kh * grp + r
    tok = Span(t, 1, Nq)
    j = lookup(table("nsa_sel_idx"), b, kh, t, i)
    row = lookup(table("fsa_base"), j) + lookup(table("fsa_slot"), b, kh, t, i)
    prow = Span(row, 1, row + 1)
    q5 = lambda name, jj: Tile(name, (point(b, B), point(kh, Hkv), point(jj, Nb), tok, full(1)))  # noqa: E731
    body = (
        Load("acc", Tile("O_slc", (point(b, B), point(h, H), tok, full(d)))),
        Load("lse", Tile("LSE_slc", (point(b, B), point(h, H), tok))),
        Load("ml", q5("M", Nb - 1)),
        Load("idx", Tile("topk_idx", (point(b, B), point(kh, Hkv), tok, full(width)))),
        Loop(i, 0, lookup(table("nsa_sel_num"), b, kh, t), (
            Load("tim", q5("TIM", j)),
            Load("m", q5("M", j)),
            Load("l", Tile("L_part", (point(b, B), point(h, H), prow, full(1)))),
            Load("o", Tile("O_part", (point(b, B), point(h, H), prow, full(d)))),
            Load("sc", Tile("S_part", (point(b, B), point(h, H), prow, full(1)))),
            Compute("fsa_reduce_step", ("m", "l", "o", "sc", "acc", "lse"),
                    exp=(Work(1, (tok,)),), other=(Work(2 * d + 4, (tok,)),)),
        )),
        Compute("fsa_reduce_final", ("acc", "ml", "lse"), exp=(Work(1, (tok,)),), other=(Work(d + 1, (tok,)),)),
        Store("acc", Tile("O_slc", (point(b, B), point(h, H), tok, full(d)))),
        Store("lse", Tile("LSE_slc", (point(b, B), point(h, H), tok))),
    )
    bufs = (Buffer("acc", (1, d), 4, "reg"), Buffer("lse", (1,), 4, "reg"), Buffer("ml", (1, 1), 4, "reg"),
            Buffer("idx", (1, width), INT32, "reg"), Buffer("tim", (1, 1), INT32, "reg"), Buffer("m", (1, 1), 4, "reg"),
            Buffer("l", (1, 1), 4, "reg"), Buffer("o", (1, d), e, "reg"), Buffer("sc", (1, 1), 4, "reg"))
    return triton_kernel("fsa_reduce", _grid(("m", t, Nq), ("h", r, grp), ("h", kh, Hkv), ("b", b, B)), bufs, body, warps=1,
                         stages=2)


def selected_branch(p: Problem, g, sel: Selection, width: int, hw):
    """FSA's selected-attention kernels (module docstring) for nsa.build_nsa's ``selected`` hook."""
    tabs, sz = fsa_tables(p, g, sel)
    ks = (*alloc_kernels(p, g, sz), *index_kernels(p, g, width, sz), *stats_kernels(p, g, sz, True),
          main_kernel(p, g, sz, True))
    if g.n_blocks > 1:
        ks += (main_kernel(p, g, sz, False),)
    ks += (reduce_kernel(p, g, width),)
    notes = (f"fsa: selected branch with the KV-block outer loop; max tokens of a block after block 0: "
             f"{sz['max_valid']:,}; partial rows per head {sz['rows_total']:,}",)
    return ks, fsa_tensors(p, g, sz), tabs, notes


@register("fsa", "Flash Sparse Attention: NSA with the selected branch's loops swapped (CTA per KV block × 1024 "
          "gathered tokens; stats, main and reduce kernels + index bookkeeping); other branches NSA's")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed=0, table=None, scores=None, kernel_size=32,
          kernel_stride=16, block_size=64, topk=16, init_blocks=1, local_blocks=2, window=512, selection="fused",
          decode="fsa_preview", fallback=True) -> Schedule:
    """FSA forward (seq_q = seq_kv, causal); seq_q = 1 runs FSA's decode, which is NSA's kernels. Parameters as
    ``nsa`` (selection default "fused": FSA's fused score kernel); fallback: for GQA groups > 8 run NSA's selected
    kernel, as fsa.py does (False: FSA's kernels at any group)."""
    if not isinstance(fallback, bool):
        raise IosimError(f"fsa: fallback={fallback!r} must be true or false")
    decode_step = p.seq_q == 1 and p.seq_kv > 1
    grp = p.heads // p.kv_heads if isinstance(p.heads, int) else None
    use_nsa = decode_step or (fallback and grp is not None and grp > GQA_FALLBACK)
    sched = nsa.build_nsa(p, cfg, hw, method="fsa", density=density, seed=seed, table=table, scores=scores,
                          kernel_size=kernel_size, kernel_stride=kernel_stride, block_size=block_size, topk=topk,
                          init_blocks=init_blocks, local_blocks=local_blocks, window=window, selection=selection,
                          decode=decode, selected=None if use_nsa else selected_branch)
    if use_nsa:
        why = ("decode: FSA's one-step decode (fsa_preview) runs NSA's kernels" if decode_step else
               f"GQA group {grp} > {GQA_FALLBACK}: fsa.py falls back to NSA's selected kernel (fallback=false: FSA's)")
        from dataclasses import replace
        sched = replace(sched, notes=sched.notes + (why,))
    return sched


# --- reference ops -----------------------------------------------------------------------------------------------------

def _unplaced(buf, ext) -> None:
    """Mark a buffer's rows as placed by its Store alone (its tile's rows — partial-buffer rows, compact-list
    positions — are the schedule's, not the op's to know): an origin no tile can fall inside."""
    buf.set((-(1 << 40),) + (0,) * (buf.data.ndim - 1), tuple(ext))


@register_op("fsa_fill_one")
def op_fill_one(ctx, b):
    b.data.fill(1.0)
    b.fresh = False


@register_op("fsa_bincount")
def op_bincount(ctx, idx, cnt):
    """cnt += histogram of the loaded index rows' entries ≥ 0."""
    r = idx.ext[0]
    v = idx.data[:r].ravel()
    v = v[v >= 0].astype(np.int64)
    c = cnt.value(0.0)
    np.add.at(c, v, 1)
    cnt.set((0,), c.shape)


@register_op("fsa_token_id")
def op_token_id(ctx, idx, tid):
    """The token's own id (build_block_to_token stores t at P[j, t])."""
    tid.data.fill(idx.origin[0])
    tid.fresh = False


@register_op("fsa_compact_row")
def op_compact_row(ctx, row, lst):
    """The row's entries ≠ −1, in order (P[P != −1] for one block)."""
    v = row.data[:row.ext[0], 0]
    keep = v[v != -1]
    lst.data[:keep.size] = keep
    _unplaced(lst, (keep.size,))


@register_op("fsa_position")
def op_position(ctx, st, pos):
    """The position within its block's list of the next entry of the loaded chunk (index_mapping_kernel's offs_n)."""
    k = ctx.regs.get("fsa_x", 0)
    rel = st.row_pos()
    pos.data.fill(rel[k])
    pos.fresh = False
    ctx.regs["fsa_x"] = k + 1


@register_op("fsa_rowmax")
def op_rowmax(ctx, q, k, m):
    """m = max over the block's visible keys of scale·q·k (−∞ if none)."""
    x = nsa._masked_scores(ctx, q, k)
    r = x.shape[0]
    m.data[:r, 0] = x.max(axis=1) if x.shape[1] else -np.inf
    m.set((q.origin[0], 0), (r, 1))


@register_op("fsa_cummax")
def op_cummax(ctx, x, run, y, yi):
    """Running max over blocks (torch.cummax(dim=1)): values and the index of the block that set them."""
    j = ctx.regs.get("fsa_j", 0)
    r = x.ext[0]
    cur = run.value(-np.inf)[:r, 0]
    xv = x.data[:r, 0]
    new = xv >= cur
    idx = ctx.regs.setdefault("fsa_arg", np.zeros(run.data.shape[0]))
    idx[:r] = np.where(new, j, idx[:r])
    run.data[:r, 0] = np.maximum(cur, xv)
    y.data[:r, 0] = run.data[:r, 0]
    yi.data[:r, 0] = idx[:r]
    for bb in (run, y, yi):
        bb.set(x.origin, (r, 1))
    ctx.regs["fsa_j"] = j + 1


@register_op("fsa_bcast")
def op_bcast(ctx, m0, row):
    """Every token's value = token 0's (1da34f3's m_ij_tiles overwrite)."""
    row.data.fill(m0.data.reshape(-1)[0])
    row.fresh = False
    row.set((0, 0), row.data.shape)


@register_op("fsa_main_p")
def op_main_p(ctx, q, k, m, mp, s, l, sc):
    """P = exp(scale·q·kᵀ − m[j]) (masked → 0), l = rowsum P, acc_o_scale = exp(m[j−1] − m[j]) (1 for block 0)."""
    x = nsa._masked_scores(ctx, q, k)
    r, c = x.shape
    mv = m.data[:r, 0]
    safe = np.where(np.isfinite(mv), mv, 0.0)
    pm = np.exp(x - safe[:, None])
    s.data[:r, :c] = pm
    s.set((q.origin[0], k.origin[0]), (r, c))
    s.pos = {0: q.row_pos(), 1: k.row_pos()}
    l.data[:r, 0] = pm.sum(axis=1)
    if mp.fresh:
        sc.data[:r, 0] = 1.0
    else:
        with np.errstate(all="ignore"):
            sc.data[:r, 0] = np.where(np.isfinite(mp.data[:r, 0]), np.exp(mp.data[:r, 0] - safe), 0.0)
    for bb in (l, sc):
        _unplaced(bb, (r, 1))


@register_op("fsa_pv")
def op_fsa_pv(ctx, s, v, o):
    """The unnormalised partial o = P V of these tokens (a fresh tile, not an accumulation)."""
    r, c = s.ext
    o.data[:r] = s.data[:r, :c] @ v.data[:c]
    _unplaced(o, (r, o.data.shape[1]))


@register_op("fsa_reduce_step")
def op_reduce_step(ctx, m, l, o, sc, acc, lse):
    """lse ← m + log(e^{lse − m} + l); acc ← partial + acc·scale (reduce_kernel, natural log)."""
    mv, lv, sv = m.data.reshape(-1)[0], l.data.reshape(-1)[0], sc.data.reshape(-1)[0]
    cur = lse.data[0]
    with np.errstate(all="ignore"):
        lse.data[0] = mv + np.log(np.exp(cur - mv) + lv) if np.isfinite(mv) else cur
    acc.data[0] = o.data[0] + acc.data[0] * sv


@register_op("fsa_reduce_final")
def op_reduce_final(ctx, acc, ml, lse):
    """O = acc·e^{m_last − lse}."""
    with np.errstate(all="ignore"):
        f = np.exp(ml.data.reshape(-1)[0] - lse.data[0])
    acc.data[0] = acc.data[0] * (f if np.isfinite(f) else 0.0)
