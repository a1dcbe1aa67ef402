"""NumPy reference executor: runs the *same* Schedule objects that ``iosim.counts`` counts, on NumPy arrays.

Every kernel's grid is enumerated program by program (grid[0] fastest, as the hardware hands CTAs out); each
program walks its loop nest (bounds evaluated exactly with ``iosim.expr.evaluate``, tables included), and

* ``Load``  copies a tile of an "HBM" array into an explicit on-chip buffer of the kernel's declared shape,
* ``Compute`` dispatches on ``op`` through ``OPS`` (a name → function table) and touches only buffers,
* ``Store`` copies a buffer region back into the HBM array; an atomic ``Store`` (fp32 RED) adds it into the array.

Every byte moved between HBM arrays and buffers is tallied per kernel and per tensor, as
``elements(tile) × TensorSpec.elem_bytes``; the tallies equal ``iosim.counts.count(schedule)`` exactly (that is
what the tests check). Arithmetic work is tallied from the Compute's ``Work`` terms the same way.

Buffers and placement. A tile of k spans goes into a buffer of rank r ≤ k: its trailing r spans map onto the
buffer's axes and the leading spans must have extent 1 (batch, head, split). Each buffer axis holds a window
[origin, origin + dim) of the tensor axis; a tile inside the current window lands at offset start − origin (the
j-th B_r×B_c tile of a one-pass B_r×N_kv softmax row block at column j·B_c), any other tile moves the window to
its own start (offset 0). A tile larger than its buffer is refused. Ops read the origins to know which query
rows and keys they hold (causal masks) and set them on the buffers they write.
Buffers are fresh (zero-filled, "unset") at the start of each program; accumulator ops read a fresh buffer as
its identity: m = −∞, ℓ = 0, acc = 0 (FA2 Algorithm 1, line 4: the kernel prologue). Pipelined buffers are held
once (multi-buffering changes timing, not values). A buffer an op or Load/Store names but the kernel does not
declare is created as a register buffer shaped from its tiles, and a note says so. Hidden state: the two-pass
softmax (standard, ``softmax_stats``) keeps its row max and sum in per-program registers the model does not
declare; FA1 backward's dK_j, dV_j restart at 0 when the KV block changes (Alg. 4 line 8 has no Compute).

Performance: tiles are NumPy matmuls on one OpenBLAS thread; N = 4096, d = 64 flash2 forward takes ≈ 0.3–0.5 s
(benchmarks/bench_reference.py). ``attention`` is the one-call entry point; ``count_mismatches`` compares a
run's tallies with ``iosim.counts``.

SRAM. ``run`` refuses (IosimError) a kernel whose shared-memory buffers — Σ smem buffer bytes, pipelined ones ×
num_stages, all live for the whole program — exceed ``sram_bytes`` (default: the schedule's
``KernelConfig.sram_bytes``; None = unchecked).

Dtype. Arrays (HBM and on-chip) use the dtype of the input arrays, float32 or float64; statistics and
accumulators use it too. ``Problem.dtype`` (bf16, fp16, …) only drives the byte counts through the schedule's
``TensorSpec.elem_bytes``; no rounding to it is simulated.

Masks. Causal masking is bottom-right aligned (query row r sees key c iff c ≤ r + N_kv − N_q; see
``Problem``). Block-sparse masks live in the schedule (the KV loop visits only listed blocks), so the executor
needs nothing for them. Fully masked rows follow PyTorch SDPA (since 2.5, ``_safe_softmax``, pytorch PR #133882):
output 0 and gradient 0, never NaN; their logsumexp is +∞ (FlashAttention-2's convention, so P = exp(S − LSE) = 0
in the backward pass), except split-KV partials, which store −∞ for an empty split (FA2's combine convention).
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from iosim.counts import KernelCounts
from iosim.counts import sram_bytes as kernel_sram_bytes
from iosim.errors import IosimError
from iosim.expr import compile_expr, table_env
from iosim.schedule import Compute, Kernel, Load, Loop, Schedule, Span, Store, Tile, walk as _walk

NEG_INF = -np.inf


# --- results ------------------------------------------------------------------------------------------------------

# What one kernel launch moved and computed, tallied while executing: the same value type the counter returns,
# so tallies and counts compare field by field.
KernelTally = KernelCounts


@dataclass(frozen=True)
class Result:
    """tensors: every global tensor after the run (inputs, scratch and outputs), by name."""

    algorithm: str
    tensors: Mapping[str, np.ndarray]
    kernels: tuple[KernelTally, ...]
    notes: tuple[str, ...] = field(default=())

    def tensor_bytes(self, which: str) -> dict[str, int]:
        """Per-tensor byte totals over all kernels; which = 'read' or 'write' (zeros dropped)."""
        out: dict[str, int] = {}
        for k in self.kernels:
            for t, v in (k.read_bytes if which == "read" else k.write_bytes).items():
                out[t] = out.get(t, 0) + v
        return {t: v for t, v in out.items() if v}


# --- on-chip buffers ----------------------------------------------------------------------------------------------

class _Buf:
    """One on-chip buffer: data of the declared shape, the global origin and valid extent of each axis."""

    __slots__ = ("name", "data", "origin", "ext", "fresh", "pos")

    def __init__(self, name: str, shape: tuple[int, ...], dtype):
        self.name = name
        self.data = np.zeros(shape, dtype)
        self.origin = (0,) * len(shape)
        self.ext = (0,) * len(shape)
        self.fresh = True
        self.pos = None  # gathered rows: {buffer axis: sequence positions of its rows} (``Span.gather``/``positions``)

    def row_pos(self, axis: int = 0):
        """Sequence positions of the rows on ``axis`` (None: contiguous from the origin)."""
        return None if self.pos is None else self.pos.get(axis)

    def value(self, identity: float) -> np.ndarray:
        """The data; a fresh buffer is first filled with the accumulator's identity (−∞ for a max, 0 for a sum)."""
        if self.fresh:
            self.data.fill(identity)
            self.fresh = False
        return self.data

    def set(self, origin: tuple[int, ...], ext: tuple[int, ...]) -> None:
        self.origin, self.ext, self.fresh = origin, ext, False


class _Ctx:
    """What ops may read besides buffers: the problem and the mask, the softmax scale, per-program registers.

    The mask is FA2's window (left, right) from the schedule's table ``window`` (causal = (−1, 0), none = (−1, −1));
    with tables ``cu_seqlens_q``/``cu_seqlens_k`` (varlen) rows and keys are packed and each sequence's lengths apply."""

    def __init__(self, problem, scale: float, dtype, tables=None):
        t = tables or {}
        self.tables = t  # the schedule's tables (ops of data-dependent kernels read them: selected indices)
        self.problem, self.scale, self.dtype, self.regs = problem, scale, dtype, {}
        self.causal = bool(getattr(problem, "causal", False))
        left, right = (int(x) for x in t["window"]) if "window" in t else (-1, -1)
        self.window = (left, 0) if self.causal else (left, right)
        self.shift = int(problem.seq_kv) - int(problem.seq_q)
        self.cu = (np.asarray(t["cu_seqlens_q"]), np.asarray(t["cu_seqlens_k"])) if "cu_seqlens_q" in t else None

    def masked(self, x: np.ndarray, row0: int, col0: int, pos=None) -> np.ndarray:
        """x with −∞ where key col0+c is invisible to query row0+r: with δ = c − (r + N_kv − N_q) (bottom-right
        aligned), visible iff −left ≤ δ ≤ right (a negative bound is unbounded; FA2's mask.h). pos: (row positions,
        key positions), either None, for gathered tiles (``_Buf.pos``)."""
        left, right = self.window
        if left < 0 and right < 0:
            return x
        r, c = x.shape
        rows, cols, shift = np.arange(row0, row0 + r), np.arange(col0, col0 + c), self.shift
        if pos is not None:
            rows = rows if pos[0] is None else np.asarray(pos[0][:r])
            cols = cols if pos[1] is None else np.asarray(pos[1][:c])
        if self.cu is not None:  # packed varlen: this tile's sequence b, its own offsets and lengths
            cq, ck = self.cu
            b = int(np.searchsorted(cq, row0, side="right")) - 1
            rows, cols, shift = rows - cq[b], cols - ck[b], int(ck[b + 1] - ck[b] - cq[b + 1] + cq[b])
        d = cols[None, :] - (rows[:, None] + shift)
        vis = ((left < 0) | (d >= -left)) & ((right < 0) | (d <= right))
        return x if vis.all() else np.where(vis, x, NEG_INF)


def _pair(s: "_Buf"):
    """(row positions, key positions) of a gathered score tile, or None."""
    return None if s.pos is None else (s.pos.get(0), s.pos.get(1))


def _safe(m: np.ndarray) -> np.ndarray:
    """m with −∞ replaced by 0, so exp(x − m) is 0 (not NaN) for fully masked rows."""
    return np.where(np.isneginf(m), 0.0, m)


# --- ops: Compute.op → function(ctx, *buffers named by Compute.args) ---------------------------------------------

def op_qk(ctx, q, k, s):
    """S = scale · Q_i K_jᵀ (r × c valid)."""
    r, c = q.ext[0], k.ext[0]
    s.data[:r, :c] = (q.data[:r] @ k.data[:c].T) * ctx.scale
    s.set((q.origin[0], k.origin[0]), (r, c))
    qp, kp = q.row_pos(), k.row_pos()
    s.pos = None if qp is None and kp is None else {0: qp, 1: kp}


def op_online_softmax(ctx, s, m, l, acc):
    """FA2 Alg. 1 lines 8–10: m' = max(m, rowmax S), P = exp(S − m'), ℓ' = e^{m−m'}ℓ + rowsum P, acc ·= e^{m−m'}.

    P overwrites S (masked entries → 0)."""
    r, c = s.ext
    online_update(ctx.masked(s.data[:r, :c], s.origin[0], s.origin[1], _pair(s)), s, m, l, acc)


def online_update(x: np.ndarray, s, m, l, acc) -> None:
    """The online-softmax update of op_online_softmax on the scores x (already masked): the models' variants
    (HyperAttention's sampled columns) call it with their own masking."""
    r, c = x.shape
    m_old, l_old = m.value(NEG_INF)[:r], l.value(0.0)[:r]
    a = acc.value(0.0)
    m_new = np.maximum(m_old, x.max(axis=1))
    safe = _safe(m_new)
    p = np.exp(x - safe[:, None])
    alpha = np.exp(m_old - safe)
    l.data[:r] = l_old * alpha + p.sum(axis=1)
    a[:r] *= alpha[:, None]
    m.data[:r] = m_new
    s.data[:r, :c] = p
    for b in (m, l):
        b.set((s.origin[0],), (r,))
    acc.set((s.origin[0], 0), (r, a.shape[1]))


def op_pv(ctx, p, v, acc):
    """acc += P V_j."""
    r, c = p.ext
    a = acc.value(0.0)
    a[:r] += p.data[:r, :c] @ v.data[:c]
    acc.set((p.origin[0], 0), (r, a.shape[1]))


def _finalize(acc, m, l, lse, empty_lse: float):
    a, mv, lv = acc.value(0.0), m.value(NEG_INF), l.value(0.0)
    nz = lv > 0
    lsafe = np.where(nz, lv, 1.0)
    a[:] = np.where(nz[:, None], a / lsafe[:, None], 0.0)
    lse.value(0.0)[:] = np.where(nz, mv + np.log(lsafe), empty_lse)
    lse.set(m.origin, m.ext)


def op_finalize(ctx, acc, m, l, lse):
    """O = acc / ℓ, LSE = m + log ℓ (FA2 Alg. 1 lines 12–13); a row that saw no key: O = 0, LSE = +∞."""
    _finalize(acc, m, l, lse, np.inf)


def op_finalize_split(ctx, acc, m, l, lse):
    """Split-KV partial: O_s = acc / ℓ, LSE_s = m + log ℓ; an empty split: O_s = 0, LSE_s = −∞ (FA2 combine)."""
    _finalize(acc, m, l, lse, NEG_INF)


def op_combine_step(ctx, lse_s, o_s, m, l, acc):
    """Merge one split (LSE_s, O_s) into the running (m, ℓ, acc): an online logsumexp over splits,
    m' = max(m, LSE_s), acc = e^{m−m'} acc + e^{LSE_s−m'} O_s, ℓ = e^{m−m'} ℓ + e^{LSE_s−m'}."""
    ls = lse_s.data
    mo, lo, a = m.value(NEG_INF), l.value(0.0), acc.value(0.0)
    m_new = np.maximum(mo, ls)
    safe = _safe(m_new)
    alpha, w = np.exp(mo - safe), np.exp(ls - safe)
    a[:] = a * alpha[:, None] + w[:, None] * o_s.data
    l.data[:] = lo * alpha + w
    m.data[:] = m_new
    for b in (m, l):
        b.set(lse_s.origin, lse_s.ext)


def op_flash1_bwd_step(ctx, q, k, v, o, do, dq, l, m, dk, dv):
    """FA1 backward, Alg. 4 lines 11–20 (arXiv 2205.14135 App. B.4): S = τQ_iK_jᵀ, P = diag(ℓ_i)⁻¹e^{S−m_i},
    dV_j += Pᵀ dO_i, dP = dO_i V_jᵀ, D_i = rowsum(dO_i ∘ O_i), dS = P ∘ (dP − D_i), dQ_i += τ dS K_j,
    dK_j += τ dSᵀ Q_i. dK_j, dV_j restart at 0 when the KV block changes (line 8)."""
    r, c = q.ext[0], k.ext[0]
    for acc in (dk, dv):
        if acc.fresh or acc.origin[0] != k.origin[0]:
            acc.data.fill(0.0)
            acc.set((k.origin[0], 0), (c, acc.data.shape[1]))
    x = ctx.masked((q.data[:r] @ k.data[:c].T) * ctx.scale, q.origin[0], k.origin[0])
    lv, mv = l.data[:r], m.data[:r]
    nz = lv > 0
    p = np.where(nz[:, None], np.exp(x - _safe(mv)[:, None]) / np.where(nz, lv, 1.0)[:, None], 0.0)
    dv.data[:c] += p.T @ do.data[:r]
    dp = do.data[:r] @ v.data[:c].T
    ds = p * (dp - np.einsum("rd,rd->r", do.data[:r], o.data[:r])[:, None])
    dq.data[:r] += ctx.scale * (ds @ k.data[:c])
    dk.data[:c] += ctx.scale * (ds.T @ q.data[:r])


def op_reset(ctx, *bufs):
    """A persistent kernel's next work item: its buffers are fresh again, as at the start of a program."""
    for b in bufs:
        b.fresh = True


def op_init(ctx, *bufs):
    """FA1 Alg. 1 line 2: O = 0, ℓ = 0, m = −∞ (buffers named o, l, m)."""
    for b in bufs:
        b.data.fill(NEG_INF if b.name == "m" else 0.0)
        b.fresh = False


def op_flash1_step(ctx, q, k, v, o, l, m):
    """FA1 Alg. 1 lines 9–12: S = scale·QKᵀ, m̃ = rowmax S, P̃ = e^{S−m̃}, ℓ̃ = rowsum P̃, m' = max(m, m̃),
    ℓ' = e^{m−m'}ℓ + e^{m̃−m'}ℓ̃, O = diag(ℓ')⁻¹(diag(ℓ)e^{m−m'}O + e^{m̃−m'}P̃V)."""
    r, c = q.ext[0], k.ext[0]
    x = ctx.masked((q.data[:r] @ k.data[:c].T) * ctx.scale, q.origin[0], k.origin[0])
    mt = x.max(axis=1)
    p = np.exp(x - _safe(mt)[:, None])
    lt = p.sum(axis=1)
    mi, li, oi = m.data[:r], l.data[:r], o.data[:r]
    m_new = np.maximum(mi, mt)
    safe = _safe(m_new)
    a, b = np.exp(mi - safe), np.exp(mt - safe)
    l_new = a * li + b * lt
    nz = l_new > 0
    num = (li * a)[:, None] * oi + b[:, None] * (p @ v.data[:c])
    o.data[:r] = np.where(nz[:, None], num / np.where(nz, l_new, 1.0)[:, None], 0.0)
    l.data[:r] = l_new
    m.data[:r] = m_new


def op_softmax(ctx, s):
    """P = softmax(S) row-wise over the whole row block (one pass); fully masked rows → 0."""
    r, c = s.ext
    x = ctx.masked(s.data[:r, :c], s.origin[0], s.origin[1], _pair(s))
    p = np.exp(x - _safe(x.max(axis=1))[:, None])
    tot = p.sum(axis=1)
    s.data[:r, :c] = np.where((tot > 0)[:, None], p / np.where(tot > 0, tot, 1.0)[:, None], 0.0)


def op_softmax_stats(ctx, s):
    """Long-row softmax, pass 1: running row max m and sum ℓ (per-program registers; the model declares none)."""
    r, c = s.ext
    x = ctx.masked(s.data[:r, :c], s.origin[0], s.origin[1])
    m = ctx.regs.setdefault("softmax_m", np.full(s.data.shape[0], NEG_INF, ctx.dtype))
    l = ctx.regs.setdefault("softmax_l", np.zeros(s.data.shape[0], ctx.dtype))
    m_new = np.maximum(m[:r], x.max(axis=1))
    safe = _safe(m_new)
    l[:r] = l[:r] * np.exp(m[:r] - safe) + np.exp(x - safe[:, None]).sum(axis=1)
    m[:r] = m_new


def op_softmax_normalize(ctx, s):
    """Long-row softmax, pass 2: P = e^{S−m}/ℓ with pass 1's statistics; fully masked rows → 0."""
    r, c = s.ext
    x = ctx.masked(s.data[:r, :c], s.origin[0], s.origin[1])
    m, l = ctx.regs["softmax_m"][:r], ctx.regs["softmax_l"][:r]
    nz = l > 0
    s.data[:r, :c] = np.where(nz[:, None], np.exp(x - _safe(m)[:, None]) / np.where(nz, l, 1.0)[:, None], 0.0)


def op_zero(ctx, *bufs):
    """Fill buffers with 0 (FA2's backward clears dQ_accum in its pre-pass)."""
    for b in bufs:
        b.data.fill(0.0)
        b.fresh = False


def op_bwd_delta(ctx, o, do, delta):
    """D_i = rowsum(dO_i ∘ O_i) (FA2 Alg. 2, line 4)."""
    r = o.ext[0]
    delta.data[:r] = np.einsum("rd,rd->r", do.data[:r], o.data[:r])
    delta.set((o.origin[0],), (r,))


def op_bwd_p(ctx, s, lse):
    """P = exp(S − LSE_i) recomputed from the saved logsumexp; masked keys and rows with LSE = +∞ → 0."""
    r, c = s.ext
    x = ctx.masked(s.data[:r, :c], s.origin[0], s.origin[1])
    L = lse.data[:r]
    s.data[:r, :c] = np.where(np.isposinf(L)[:, None], 0.0, np.exp(x - np.where(np.isposinf(L), 0.0, L)[:, None]))


def op_bwd_dv(ctx, p, do, dv):
    """dV_j += Pᵀ dO_i."""
    r, c = p.ext
    a = dv.value(0.0)
    a[:c] += p.data[:r, :c].T @ do.data[:r]
    dv.set((p.origin[1], 0), (c, a.shape[1]))


def op_bwd_dp(ctx, do, v, dp):
    """dP = dO_i V_jᵀ."""
    r, c = do.ext[0], v.ext[0]
    dp.data[:r, :c] = do.data[:r] @ v.data[:c].T
    dp.set((do.origin[0], v.origin[0]), (r, c))


def op_bwd_ds(ctx, p, dp, delta):
    """dS = P ∘ (dP − D_i), written over dP."""
    r, c = p.ext
    dp.data[:r, :c] = p.data[:r, :c] * (dp.data[:r, :c] - delta.data[:r, None])


def op_bwd_dk(ctx, ds, q, dk):
    """dK_j += dSᵀ Q_i (the softmax scale is applied once, after the loop)."""
    r, c = ds.ext
    a = dk.value(0.0)
    a[:c] += ds.data[:r, :c].T @ q.data[:r]
    dk.set((ds.origin[1], 0), (c, a.shape[1]))


def op_bwd_dq(ctx, ds, k, dq):
    """dQ partial = dS K_j: this CTA's contribution, which an atomic Store adds into dQ_accum. The buffer may be wider
    (kHeadDim ≥ d) and taller than the valid rows; the rest is 0 (FA2 adds whole tiles)."""
    r, c = ds.ext
    dq.data.fill(0.0)
    dq.data[:r, :k.data.shape[1]] = ds.data[:r, :c] @ k.data[:c]
    dq.set((ds.origin[0], 0), dq.data.shape)


def op_convert_dq(ctx, acc, dq):
    """dQ = scale · dQ_accum (its first d columns; fp32 → the problem dtype in FA2's convert_dQ)."""
    dq.data[...] = ctx.scale * acc.data[:dq.data.shape[0], :dq.data.shape[1]]
    dq.set(acc.origin, dq.data.shape)


def op_group_sum(ctx, x, acc):
    """acc = Σ_g x[:, g, :] (GQA: ATen's sum of the expanded dK/dV over a KV head's group of query heads)."""
    acc.data[...] = x.data.sum(axis=1)
    acc.set((x.origin[0], 0), (x.ext[0], acc.data.shape[1]))


def op_scale(ctx, *bufs):
    """x ·= softmax scale (dK after the loop; dQ in the convert kernel)."""
    for b in bufs:
        b.data *= ctx.scale


def op_square_qk_accumulate(ctx, q, k, a):
    """Saha & Ye Alg. 1 line 9: A_ij += Q_iℓ K_jℓᵀ over head-dim blocks ℓ (restarting at ℓ = 0)."""
    r, w = q.ext
    c = k.ext[0]
    if q.origin[1] == 0:
        a.data.fill(0.0)
    a.data[:r, :c] += q.data[:r, :w] @ k.data[:c, :w].T
    a.set((q.origin[0], k.origin[0]), (r, c))


def op_square_exp_rowsum(ctx, a, d):
    """Lines 10–12: A_ij = exp(scale·A_ij) (no max subtraction, as in the paper), d_i += rowsum A_ij."""
    r, c = a.ext
    x = ctx.masked(a.data[:r, :c] * ctx.scale, a.origin[0], a.origin[1])
    a.data[:r, :c] = np.exp(x)
    d.value(0.0)[:r] += a.data[:r, :c].sum(axis=1)
    d.set((a.origin[0],), (r,))


def op_square_pv_accumulate(ctx, a, v, o, d):
    """Line 22: O_ij += D_i⁻¹ A_ik V_kj over key blocks k (restarting at k = 0); rows with d = 0 → 0."""
    r, c = a.ext
    w = v.ext[1]
    if a.origin[1] == 0:
        o.data.fill(0.0)
    dv = d.data[:r]
    o.data[:r, :w] += np.where((dv > 0)[:, None], (a.data[:r, :c] @ v.data[:c, :w]) / np.where(dv > 0, dv, 1.0)[:, None], 0.0)
    o.set((a.origin[0], v.origin[1]), (r, w))


def op_pool_mean(ctx, src, dst):
    """dst[0] = mean of the valid rows of src (sparse pre-passes: pooled Q/K, ``models/sparse/kernels.py``)."""
    r = src.ext[0]
    dst.value(0.0)[0] = src.data[:r].mean(axis=0) if r else 0.0
    dst.set((src.origin[0], 0), (1, dst.data.shape[1]))


def op_score_nt(ctx, a, b, s):
    """S = A Bᵀ (block scores of pooled or strided tensors; unscaled)."""
    r, c = a.ext[0], b.ext[0]
    s.data[:r, :c] = a.data[:r] @ b.data[:c].T
    s.set((a.origin[0], b.origin[0]), (r, c))


def op_select_row(ctx, row, idx):
    """idx = the row's indices by descending score (the first K; the kept ones lead)."""
    c = row.ext[1] if row.data.ndim > 1 else row.ext[0]
    vals = row.data.reshape(-1)[:c]
    k = idx.data.reshape(-1).shape[0]
    order = np.argsort(-vals, kind="stable")[:k]
    flat = idx.value(0.0).reshape(-1)
    flat[:] = -1
    flat[:len(order)] = order
    idx.set(row.origin[:idx.data.ndim], idx.data.shape)


def op_copy(ctx, x, y):
    """y = x (a gather into a contiguous copy)."""
    y.data[...] = x.data
    y.set(x.origin, x.ext)


OPS: dict[str, Callable] = {
    "pool_mean": op_pool_mean,
    "score_nt": op_score_nt,
    "select_row": op_select_row,
    "copy": op_copy,
    # flash2 / block_sparse / splitkv forward
    "qk": op_qk, "online_softmax": op_online_softmax, "pv": op_pv, "finalize": op_finalize,
    "finalize_split": op_finalize_split, "combine_step": op_combine_step,
    # flash1
    "init": op_init, "reset": op_reset, "flash1_step": op_flash1_step, "flash1_bwd_step": op_flash1_bwd_step,
    # standard
    "softmax": op_softmax, "softmax_stats": op_softmax_stats, "softmax_normalize": op_softmax_normalize,
    # flash2_bwd
    "zero": op_zero, "bwd_delta": op_bwd_delta, "bwd_p": op_bwd_p, "bwd_dv": op_bwd_dv, "bwd_dp": op_bwd_dp,
    "bwd_ds": op_bwd_ds, "bwd_dk": op_bwd_dk, "bwd_dq": op_bwd_dq, "scale": op_scale,
    "convert_dq": op_convert_dq, "group_sum": op_group_sum,
    # square_tiling (Saha & Ye)
    "square_qk_accumulate": op_square_qk_accumulate, "square_exp_rowsum": op_square_exp_rowsum,
    "square_pv_accumulate": op_square_pv_accumulate,
}
"""Compute.op → function(ctx, *buffers in Compute.args order). Models add an op by adding an entry here."""


def register_op(name: str):
    """Decorator: a model module adds its own op (``OPS[name] = fn``; the sparse family's pre-pass ops). A name
    taken by another function is refused."""
    def deco(fn: Callable) -> Callable:
        if OPS.get(name, fn) is not fn:
            raise RuntimeError(f"reference op {name!r} registered twice ({OPS[name].__module__}, {fn.__module__})")
        OPS[name] = fn
        return fn
    return deco


# --- compilation of a kernel's statements into closures ------------------------------------------------------------

def _span_fn(s: Span):
    fi, fb, fl, fo = compile_expr(s.index), compile_expr(s.block), compile_expr(s.length), compile_expr(s.offset)

    def span(env):
        k, B, L = int(fi(env)), int(fb(env)), int(fl(env))
        return int(fo(env)) + k * B, min(max(L - k * B, 0), B)
    return span


def _index_fn(spec):
    """(table symbol, *lead exprs) → fn(env, start, ext) giving tables[T][lead…, start:start+ext]; None → None."""
    if spec is None:
        return None
    sym, lead = spec[0], [compile_expr(e) for e in spec[1:]]

    def rows(env, start, ext):
        tbl = env.get(sym)
        if tbl is None:
            raise IosimError(f"gather table {sym} is not attached to the schedule (Schedule.tables)")
        return np.asarray(tbl.array[tuple(int(f(env)) for f in lead)][start:start + ext])
    return rows


def _work_fns(works):
    return [(compile_expr(w.coeff), [_span_fn(s) for s in w.spans]) for w in works]


class _Compiled:
    """A kernel's statements as tuples of closures (compiled once, executed per program)."""

    def __init__(self, schedule: Schedule, kernel: Kernel):
        self.schedule = schedule
        self.kernel = kernel
        self.implicit: dict[str, tuple[int, ...]] = {}
        self.body = self._block(kernel.body)
        known = set(self.shapes())
        for st in _walk(kernel.body):
            if isinstance(st, Compute):
                for a in st.args:
                    if a not in known:
                        raise IosimError(f"{kernel.name}: op {st.op!r} uses buffer {a!r}, which the kernel neither "
                                         f"declares nor loads or stores")

    def _block(self, stmts):
        return [self._stmt(s) for s in stmts]

    def _stmt(self, st):
        if isinstance(st, Loop):
            return ("loop", st.var, compile_expr(st.start), compile_expr(st.stop), self._block(st.body), st.reverse)
        if isinstance(st, (Load, Store)):
            t: Tile = st.tile
            if t.tensor not in self.schedule.tensors:
                raise IosimError(f"{self.kernel.name}: tile of unknown tensor {t.tensor!r}")
            self._declare(st.buffer, t)
            if isinstance(st, Store) and st.atomic and self.schedule.tensors[t.tensor].elem_bytes != 4:
                raise IosimError(f"{self.kernel.name}: atomic store into {t.tensor}, which is not fp32; atomics "
                                 f"here are fp32 adds (make the tensor's elem_bytes 4)")
            kind = "load" if isinstance(st, Load) else ("atomic" if st.atomic else "store")
            gath = [(_index_fn(s.gather), _index_fn(s.positions or s.gather)) if s.gather or s.positions else None
                    for s in t.spans]
            return (kind, st.buffer, t.tensor, [_span_fn(s) for s in t.spans], self.schedule.tensors[t.tensor].elem_bytes,
                    self._axes(st.buffer, t), gath if any(gath) else None)
        if isinstance(st, Compute):
            if st.op not in OPS:
                raise IosimError(f"{self.kernel.name}: no NumPy implementation for op {st.op!r}; "
                                 f"known ops: {', '.join(sorted(OPS))} (add one to iosim.reference.OPS)")
            try:
                inspect.signature(OPS[st.op]).bind(None, *st.args)
            except TypeError:
                raise IosimError(f"{self.kernel.name}: op {st.op!r} takes {inspect.signature(OPS[st.op])}, "
                                 f"the schedule passes buffers {st.args}") from None
            works = tuple(_work_fns(w) for w in (st.matmul, st.exp, st.other))
            return ("compute", OPS[st.op], st.args, works)
        raise IosimError(f"{self.kernel.name}: unknown statement {st!r}")

    def _declare(self, name: str, tile: Tile) -> None:
        try:
            self.kernel.buffer(name)
            return
        except KeyError:
            pass
        blocks = [int(compile_expr(s.block)({})) for s in tile.spans]
        while len(blocks) > 1 and blocks[0] == 1:
            blocks.pop(0)
        shape = tuple(blocks)
        if self.implicit.setdefault(name, shape) != shape:
            raise IosimError(f"{self.kernel.name}: undeclared buffer {name!r} is used with tiles of shapes "
                             f"{self.implicit[name]} and {shape}")

    def _axes(self, name: str, tile: Tile):
        """Tile axes that map onto the buffer's when points (one-element spans) sit between them (a [B, S, H, D]
        tensor's (b, rows, h, cols) tile into a rows × cols buffer); None: the trailing axes (``_place``)."""
        rank = len(self.shapes()[name])
        axes = tuple(k for k, s in enumerate(tile.spans) if compile_expr(s.block)({}) != 1)
        return axes if len(axes) == rank and axes != tuple(range(len(tile.spans) - rank, len(tile.spans))) else None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out = {b.name: tuple(int(compile_expr(x)({})) for x in b.shape) for b in self.kernel.buffers}
        return out | {n: s for n, s in self.implicit.items() if n not in out}


def _place(buf: _Buf, starts, exts, what: str):
    """(buffer slices, tile shape in the buffer, origin) for a tile; refuse tiles that do not fit."""
    rank = buf.data.ndim
    if len(starts) < rank:
        raise IosimError(f"{what}: a {len(starts)}-d tile cannot fill the {rank}-d buffer {buf.name!r}")
    lead = exts[:len(exts) - rank]
    if any(e != 1 for e in lead):
        raise IosimError(f"{what}: tile extents {exts} do not fit buffer {buf.name!r} of shape {buf.data.shape} "
                         f"(leading axes must have extent 1)")
    ts, te = starts[len(starts) - rank:], exts[len(exts) - rank:]
    sl, origin = [], []
    for ax, (s, e, dim) in enumerate(zip(ts, te, buf.data.shape)):
        if e > dim:
            raise IosimError(f"{what}: tile extents {te} exceed buffer {buf.name!r} of shape {buf.data.shape}")
        o = buf.origin[ax]
        # inside the buffer's current window [o, o + dim): place there; otherwise the window moves to the tile
        off = s - o if not buf.fresh and e > 0 and o <= s and s + e <= o + dim else 0
        sl.append(slice(off, off + e))
        origin.append(s - off)
    return tuple(sl), tuple(te), tuple(origin)


class _Executor:
    def __init__(self, schedule: Schedule, hbm: dict[str, np.ndarray], ctx: _Ctx):
        self.schedule, self.hbm, self.ctx = schedule, hbm, ctx

    def run_kernel(self, comp: _Compiled) -> KernelTally:
        kernel = comp.kernel
        shapes = comp.shapes()
        tally: dict = {}
        work = [0, 0, 0]
        axes = [(ax.var, int(compile_expr(ax.extent)({}))) for ax in kernel.grid]
        base_env = table_env(getattr(self.schedule, "tables", None))
        programs = 0
        # grid[0] is fastest-varying: iterate the slowest axis outermost.
        for combo in itertools.product(*(range(n) for _, n in reversed(axes))):
            env = dict(base_env)
            for (v, _), val in zip(reversed(axes), combo):
                env[v] = val
            bufs = {n: _Buf(n, s, self.ctx.dtype) for n, s in shapes.items()}
            self.ctx.regs = {}
            try:
                self._block(comp.body, env, bufs, tally, work, kernel.name)
            except KeyError as err:
                raise IosimError(f"{kernel.name}: a schedule expression uses {err}, which is unbound (neither a grid "
                                 f"axis, an enclosing loop variable nor a table)") from None
            programs += 1
        return KernelTally(
            name=kernel.name, programs=programs,
            read_bytes=MappingProxyType({t: v for (k, t), v in tally.items() if k == "read"}),
            write_bytes=MappingProxyType({t: v for (k, t), v in tally.items() if k == "write"}),
            matmul_flops=work[0], exp_ops=work[1], other_flops=work[2],
            sram_bytes=kernel_sram_bytes(kernel, getattr(self.schedule.config, "num_stages", 1)),
            atomic_bytes=MappingProxyType({t: v for (k, t), v in tally.items() if k == "atomic"}))

    def _block(self, stmts, env, bufs, tally, work, kname):
        hbm = self.hbm
        for st in stmts:
            kind = st[0]
            if kind == "loop":
                _, v, fstart, fstop, body, rev = st
                lo, hi = int(fstart(env)), int(fstop(env))
                rng = range(hi - 1, lo - 1, -1) if rev else range(lo, hi)
                for x in rng:
                    env[v] = x
                    self._block(body, env, bufs, tally, work, kname)
                env.pop(v, None)
            elif kind == "compute":
                _, fn, args, works = st
                fn(self.ctx, *(bufs[a] for a in args))
                for slot, terms in enumerate(works):
                    for fcoeff, spans in terms:
                        val = int(fcoeff(env))
                        for sp_ in spans:
                            val *= sp_(env)[1]
                        work[slot] += val
            else:
                _, bname, tname, spans, eb, axes, gath = st
                se = [f(env) for f in spans]
                starts = tuple(s for s, _ in se)
                exts = tuple(e for _, e in se)
                nelem = math.prod(exts)
                key = ("read" if kind == "load" else "write", tname)
                tally[key] = tally.get(key, 0) + nelem * eb
                if kind == "atomic":
                    tally[("atomic", tname)] = tally.get(("atomic", tname), 0) + nelem * eb
                arr = hbm[tname]
                gsl = tuple(slice(s, s + e) for s, e in se)
                pos = None
                if gath is not None:
                    gsl, pos = list(gsl), {}
                    for ax, g in enumerate(gath):
                        if g is not None:
                            s0, e0 = se[ax]
                            if g[0] is not None:
                                gsl[ax] = g[0](env, s0, e0)
                            pos[ax] = g[1](env, s0, e0)
                    gsl = tuple(gsl)
                buf = bufs[bname]
                what = f"{kname}: {kind} {tname}{list(gsl)}"
                if axes is None:
                    bsl, te, origin = _place(buf, starts, exts, what)
                else:
                    bsl, te, origin = _place(buf, tuple(starts[k] for k in axes), tuple(exts[k] for k in axes), what)
                if kind == "load":
                    buf.data[bsl] = arr[gsl].reshape(te)
                    if buf.fresh or buf.origin != origin:
                        buf.set(origin, tuple(sl.stop for sl in bsl))
                    else:
                        buf.set(origin, tuple(max(a, sl.stop) for a, sl in zip(buf.ext, bsl)))
                    if pos is None:
                        buf.pos = None
                    else:  # tile axis → buffer axis (trailing axes, or the mapped ones)
                        tax = tuple(axes) if axes is not None else tuple(range(len(se) - buf.data.ndim, len(se)))
                        buf.pos = {tax.index(a): p for a, p in pos.items() if a in tax}
                elif kind == "atomic":
                    arr[gsl] += buf.data[bsl].reshape(exts)
                else:
                    arr[gsl] = buf.data[bsl].reshape(exts)


# --- BLAS threads -------------------------------------------------------------------------------------------------

_BLAS_FUNCS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
               ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
               ("openblas_get_num_threads", "openblas_set_num_threads"))


def _openblas_controls():
    """(get, set) of the OpenBLAS that NumPy loaded, found in /proc/self/maps; None if not found (other BLAS/OS)."""
    import ctypes
    import re
    try:
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for g, s in _BLAS_FUNCS:
            if hasattr(lib, g) and hasattr(lib, s):
                getter, setter = getattr(lib, g), getattr(lib, s)
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                return getter, setter
    return None


class _one_blas_thread:
    """Run with one OpenBLAS thread: tile matmuls are small, and on a busy machine OpenBLAS's spinning worker
    threads slow them down by 10× or more (measured: N = 4096 flash2 forward 0.45 s → 8–40 s at load 4 on 2 cores).
    A no-op where NumPy's BLAS is not an OpenBLAS found in /proc/self/maps."""

    def __enter__(self):
        self.ctl = _openblas_controls()
        if self.ctl:
            self.old = self.ctl[0]()
            self.ctl[1](1)
        return self

    def __exit__(self, *exc):
        if self.ctl:
            self.ctl[1](self.old)
        return False


# --- entry points -------------------------------------------------------------------------------------------------

def _dims(spec) -> tuple[int, ...]:
    return tuple(int(compile_expr(d)({})) for d in spec.dims)


def run(schedule: Schedule, inputs: Mapping[str, np.ndarray], *, sram_bytes: int | None = None,
        scale: float | None = None) -> Result:
    """Execute ``schedule`` on ``inputs`` (every tensor of role 'input', by name, float32 or float64; other
    tensors may be given too, as initial contents — e.g. O for a backward schedule that lists it as 'output').
    Tensors not given start as NaN, so a read of memory no kernel wrote shows up in the results.

    scale: softmax scale (default 1/√head_dim). sram_bytes: the on-chip memory one CTA may use (default
    ``schedule.config.sram_bytes``; None = unchecked). Returns every global tensor and the per-kernel tallies.
    """
    p = schedule.problem
    need = {n for n, t in schedule.tensors.items() if t.role == "input"}
    missing, extra = need - set(inputs), set(inputs) - set(schedule.tensors)
    if missing or extra:
        raise IosimError(f"{schedule.algorithm}: inputs must include every input tensor {sorted(need)} and name "
                         f"only the schedule's tensors; missing {sorted(missing)}, unknown {sorted(extra)}")
    dtypes = {np.asarray(a).dtype for a in inputs.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise IosimError(f"inputs must all be float32 or all float64 arrays, got {sorted(map(str, dtypes))}")
    dtype = next(iter(dtypes)).type
    hbm: dict[str, np.ndarray] = {}
    for name, spec in schedule.tensors.items():
        dims = _dims(spec)
        if name in inputs:
            a = np.asarray(inputs[name])
            if a.shape != dims:
                raise IosimError(f"input {name} has shape {a.shape}, the schedule needs {dims}")
            hbm[name] = np.array(a, dtype=dtype, copy=True)
        else:
            hbm[name] = np.full(dims, np.nan, dtype)  # unwritten memory reads as NaN: tests catch missing stores
    limit = sram_bytes if sram_bytes is not None else getattr(schedule.config, "sram_bytes", None)
    stages = getattr(schedule.config, "num_stages", 1)
    compiled = [_Compiled(schedule, k) for k in schedule.kernels]
    if limit is not None:
        for k in schedule.kernels:
            need_b = kernel_sram_bytes(k, stages)
            if need_b > limit:
                parts = ", ".join(f"{b.name} {int(compile_expr(b.bytes)({})):,} B" + (f" × {stages}" if b.pipelined else "")
                                  for b in k.buffers if b.space == "smem")
                raise IosimError(f"{k.name}: live on-chip buffers need {need_b:,} B of shared memory ({parts}), "
                                 f"more than the {limit:,} B given; use smaller tiles or fewer stages")
    ctx = _Ctx(p, (1.0 / math.sqrt(int(p.head_dim))) if scale is None else float(scale), dtype, schedule.tables)
    ex = _Executor(schedule, hbm, ctx)
    notes = list(schedule.notes)
    tallies = []
    # errstate: −∞ arithmetic of masked rows, stale rows past a ragged tile's extent
    with np.errstate(all="ignore"), _one_blas_thread():
        for c in compiled:
            for n, s in c.implicit.items():
                notes.append(f"{c.kernel.name}: buffer {n!r} is not declared by the kernel; held as a register "
                             f"buffer of shape {s}")
            tallies.append(ex.run_kernel(c))
    return Result(schedule.algorithm, MappingProxyType(hbm), tuple(tallies), tuple(notes))


def count_mismatches(result: Result, counts) -> list[str]:
    """Differences between an execution's tallies and ``iosim.counts.count(schedule)`` (empty = exactly equal):
    per kernel, bytes read, written and atomically added per tensor, programs, matmul/exp/other work and SRAM bytes."""
    out = []
    if [k.name for k in result.kernels] != [k.name for k in counts.kernels]:
        return [f"kernels differ: executed {[k.name for k in result.kernels]}, counted {[k.name for k in counts.kernels]}"]
    for t, c in zip(result.kernels, counts.kernels):
        for which in ("read_bytes", "write_bytes", "atomic_bytes"):
            a = {n: v for n, v in getattr(t, which).items() if v}
            b = {n: v for n, v in getattr(c, which).items() if v}
            if a != b:
                out.append(f"{t.name} {which}: executed {a}, counted {b}")
        for attr in ("programs", "matmul_flops", "exp_ops", "other_flops", "sram_bytes"):
            if getattr(t, attr) != getattr(c, attr):
                out.append(f"{t.name} {attr}: executed {getattr(t, attr)}, counted {getattr(c, attr)}")
    return out


def problem_for(q: np.ndarray, k: np.ndarray, *, causal: bool = False, dtype: str = "bf16"):
    """The Problem of arrays Q [B, H, N_q, d], K [B, H_kv, N_kv, d]; dtype drives byte counts only."""
    from iosim.problem import Problem
    if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise IosimError(f"expected Q [B, H, N_q, d] and K, V [B, H_kv, N_kv, d], got {q.shape} and {k.shape}")
    B, H, Nq, d = q.shape
    return Problem(B, H, k.shape[1], Nq, k.shape[2], d, dtype, causal)


def attention(q, k, v, *, algorithm: str = "flash2", causal: bool = False, config=None, hardware=None,
              dtype: str = "bf16", sram_bytes: int | None = None, **build_kwargs):
    """Forward attention by executing the registered ``algorithm``'s schedule; returns (O, LSE or None, Result).

    SRAM limit: ``sram_bytes``, else ``config.sram_bytes``, else the hardware's shared memory per block.

    build_kwargs go to the builder (block_sparse: block_mask=…; splitkv: num_splits=…).
    """
    from iosim.problem import KernelConfig
    from iosim.registry import get
    p = problem_for(q, k, causal=causal, dtype=dtype)
    cfg = config or KernelConfig()
    sched = get(algorithm).build(p, cfg, hardware, **build_kwargs)
    if sram_bytes is None and cfg.sram_bytes is None and hardware is not None:
        sram_bytes = hardware.smem_per_block_bytes
    res = run(sched, {"Q": q, "K": k, "V": v}, sram_bytes=sram_bytes)
    return res.tensors["O"], res.tensors.get("LSE"), res
