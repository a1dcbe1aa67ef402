"""FlashAttention-2's varlen forward as PyTorch vendors it (``flash_api.cpp``: ``mha_varlen_fwd``; ``block_info.h``:
``BlockInfo``; ``flash_fwd_kernel.h``: ``compute_attn_1rowblock``; all under
``aten/src/ATen/native/transformers/cuda/flash_attn/``).

B sequences of lengths Lq_b (queries) and Lk_b (keys) are packed without padding: Q, O [total_q, H, d], K, V
[total_k, H_k, d], sequence b's tokens at rows cu_seqlens[b] … cu_seqlens[b+1] − 1 (``BlockInfo::q_offset`` /
``k_offset``: sum_s = cu_seqlens[bidb]); the logsumexp is FA2's padded [B, H, max_seqlen_q] (``softmax_lse``).
The grid is flash2's, (⌈max_seqlen_q/kBlockM⌉, B, H), m fastest: every CTA is launched, and one whose m_block·kBlockM
≥ Lq_b returns at once (no traffic, no work). The others run flash2's KV loop on their own sequence: KV blocks
[n_block_min, n_block_max) from Lq_b and Lk_b (causal bottom-right per sequence, a local window as flash2's
``kv_range``; ``fa2_window`` turns −1 bounds into max_seqlen_k as set_params_fprop does); a CTA whose range is empty
exits before loading Q and writes O = 0, LSE = +∞. Tiles are flash2's (``run_mha_fwd_hdim*``).

Problem: batch = number of sequences, seq_q / seq_kv = the longest ones (max_seqlen_q / max_seqlen_k); the lengths
travel as schedule tables (seqlens_q, seqlens_k, cu_seqlens_q, cu_seqlens_k) read by ``lookup``. Per sequence the
counts equal flash2's dense counts of that sequence alone. Not modelled: mha_varlen_fwd's GQA swap for
max_seqlen_q = 1 (``seqlenq_ngroups_swapped``, which also splits KV): use ``splitkv`` for decode.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.expr import evaluate, table_env
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, kv_head
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, cdiv, clamp, full, lookup,
                            point, table, var)


def _ints(values, what: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iuf" or np.any(a != np.floor(a)) or np.any(a < 0):
        raise IosimError(f"{what}: give whole numbers ≥ 0 as 'L1,L2,…' or a file of lengths or cu_seqlens "
                         f"(.npy or text), got {values!r}")
    return a.astype(np.int64)


def parse_lengths(spec) -> np.ndarray:
    """Sequence lengths from "L1,L2,…", a list, or a file (.npy, or text of numbers separated by commas/whitespace).
    A list that starts at 0 and never decreases, with at least two entries, is read as cu_seqlens (its differences)."""
    src = spec
    if isinstance(spec, (str, Path)) and Path(spec).suffix in (".npy", ".txt", ".csv") or \
            isinstance(spec, Path):
        if not Path(spec).is_file():
            raise IosimError(f"lengths file {str(spec)!r} not found; give 'L1,L2,…' or an existing .npy/.txt file")
        try:
            src = np.load(spec).ravel() if str(spec).endswith(".npy") else \
                np.array(Path(spec).read_text().replace(",", " ").split(), dtype=float)
        except ValueError as err:
            raise IosimError(f"lengths file {str(spec)!r} is not a list of numbers ({err}); one length per entry") from None
    elif isinstance(spec, str):
        try:
            src = [float(x) for x in spec.replace(" ", "").split(",") if x]
        except ValueError:
            raise IosimError(f"lengths {spec!r}: give whole numbers as 'L1,L2,…' or a file of lengths") from None
    a = _ints(src, "sequence lengths")
    if a.size >= 2 and a[0] == 0 and np.all(np.diff(a) >= 0):
        a = np.diff(a)
    if not a.any():
        raise IosimError(f"sequence lengths {a.tolist()} are all 0; at least one sequence needs a token")
    return a


def cu_seqlens(lengths) -> np.ndarray:
    """[0, L0, L0 + L1, …] (FA2's cu_seqlens, int64)."""
    return np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)


def varlen_problem(seqlens_q, seqlens_kv=None, *, heads: int, kv_heads: int | None = None, head_dim: int,
                   dtype: str = "bf16", causal: bool = False) -> Problem:
    """The Problem of a varlen batch: batch = number of sequences, seq_q / seq_kv = the longest (max_seqlen_q/k)."""
    lq = parse_lengths(seqlens_q) if not isinstance(seqlens_q, np.ndarray) else _ints(seqlens_q, "seqlens_q")
    lk = lq if seqlens_kv is None else (parse_lengths(seqlens_kv) if not isinstance(seqlens_kv, np.ndarray)
                                        else _ints(seqlens_kv, "seqlens_kv"))
    return Problem(len(lq), heads, kv_heads or heads, int(lq.max()), max(int(lk.max()), 1), head_dim, dtype, causal)


def _lengths(p: Problem, seqlens_q, seqlens_kv) -> tuple[np.ndarray, np.ndarray]:
    if seqlens_q is None:  # no lengths: every sequence as long as the problem's (batch × seq_q, batch × seq_kv)
        if not all(isinstance(v, int) for v in (p.batch, p.seq_q, p.seq_kv)):
            raise IosimError("flash2_varlen: needs concrete seqlens_q (the query length of every sequence, e.g. "
                             "'100,37,512'); it has no symbolic form")
        seqlens_q, seqlens_kv = [p.seq_q] * p.batch, [p.seq_kv] * p.batch if seqlens_kv is None else seqlens_kv
    lq = _ints(seqlens_q, "seqlens_q") if not isinstance(seqlens_q, str) else parse_lengths(seqlens_q)
    lk = lq if seqlens_kv is None else (_ints(seqlens_kv, "seqlens_kv") if not isinstance(seqlens_kv, str)
                                        else parse_lengths(seqlens_kv))
    if not (len(lq) == len(lk) == p.batch and lq.max() == p.seq_q and max(lk.max(), 1) == p.seq_kv):
        raise IosimError(f"flash2_varlen: {len(lq)} query / {len(lk)} key lengths (longest {lq.max()} / {lk.max()}) "
                         f"do not match batch={p.batch}, seq_q={p.seq_q}, seq_kv={p.seq_kv}; use varlen_problem() "
                         "(batch = number of sequences, seq_q/seq_kv = the longest)")
    return lq, lk


@register("flash2_varlen", "FlashAttention-2 varlen forward: packed sequences (cu_seqlens), FA2's grid over the "
          "longest, per-sequence KV ranges; CTAs past their sequence exit at once")
def build(p: Problem, cfg: KernelConfig, hw=None, seqlens_q=None, seqlens_kv=None, window=None) -> Schedule:
    """seqlens_q / seqlens_kv: per-sequence lengths (arrays, lists or "L1,L2,…"; seqlens_kv defaults to seqlens_q);
    window: FA2's (window_size_left, window_size_right) as in ``flash2.build``."""
    check_head_dim(p, "flash2_varlen")
    lq, lk = _lengths(p, seqlens_q, seqlens_kv)
    w = flash2.fa2_window(p, window)
    if w == (-1, 0) and not p.causal:
        p = replace(p, causal=True)
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = flash2.default_tiles(p.head_dim)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    H, Hk, tm = p.heads, p.kv_heads, -(-p.seq_q // bm)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, pid = vs["b"], vs["h"], vs["m"]
    i = pid if cfg.q_order == "ascending" else tm - 1 - pid
    Lq, Lk = lookup(table("seqlens_q"), b), lookup(table("seqlens_k"), b)
    live = clamp(Lq - i * bm, 0, 1)  # m_block·kBlockM < Lq_b (BlockInfo): otherwise the CTA returns at once
    seq = replace(p, seq_q=Lq, seq_kv=Lk * live)  # one sequence as flash2 sees it (no keys for a dead CTA)
    rows = Span(i, bm, Lq, lookup(table("cu_seqlens_q"), b))

    def kv(_, name, b_, h_, cols):
        return Tile(name, (Span(cols.index, bn, cols.length, lookup(table("cu_seqlens_k"), b_)),
                           point(kv_head(p, h_), Hk), full(d)))
    tables = {"seqlens_q": lq, "seqlens_k": lk, "cu_seqlens_q": cu_seqlens(lq), "cu_seqlens_k": cu_seqlens(lk)}
    if w not in (None, (-1, 0)):
        tables["window"] = np.array(w, dtype=np.int64)
    tn = cdiv(Lk * live, bn)
    lo, hi = flash2.kv_range(seq, i, bm, bn, tn, w)
    q_t = Tile("Q", (rows, point(h, H), full(d)))
    load_q = Load("q", q_t)
    env = table_env(tables) | {b: np.repeat(np.arange(p.batch), tm), pid: np.tile(np.arange(tm), p.batch)}
    if np.any((np.asarray(evaluate(hi - lo, env)) <= 0) & (np.asarray(evaluate(live, env)) > 0)):
        load_q = Loop(var("q_loaded"), 0, sp.Min(1, hi - lo), (load_q,))  # FA2's early exit before Q
    body = (
        load_q,
        *flash2.kv_loops(seq, cfg, b, h, i, rows, var("j"), bm, bn, tn, w, kv=kv),
        flash2.finalize(p, rows),
        Store("acc", Tile("O", q_t.spans)),
        Store("lse", Tile("LSE", (point(b, p.batch), point(h, H), Span(i, bm, Lq)))),
    )
    kernel = Kernel("flash2_varlen_fwd", grid, flash2.buffers(bm, bn, d, e), body, threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    tq, tk = int(lq.sum()), int(lk.sum())
    tensors = {
        "Q": TensorSpec("Q", (tq, H, d), e, "input"),
        "K": TensorSpec("K", (tk, Hk, d), e, "input"),
        "V": TensorSpec("V", (tk, Hk, d), e, "input"),
        "O": TensorSpec("O", (tq, H, d), e, "output"),
        "LSE": TensorSpec("LSE", (p.batch, H, p.seq_q), STAT_BYTES, "output"),
    }
    dead = int(np.sum(np.maximum(tm - -(-lq // bm), 0)))
    notes = (f"varlen: {p.batch} sequences, {tq:,} query / {tk:,} key tokens packed (cu_seqlens); seq_q={p.seq_q}, "
             f"seq_kv={p.seq_kv} are the longest; {dead:,} of {tm * p.batch:,} CTAs per head exit at once",)
    if w not in (None, (-1, 0)):
        notes += (f"local window (left, right) = {w}",)
    return Schedule("flash2_varlen", p, cfg, tensors, (kernel,), notes, tables)
