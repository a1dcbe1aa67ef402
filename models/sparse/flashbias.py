"""FlashBias — attention with a low-rank bias as extra Q/K columns (Wu et al., NeurIPS 2025, arXiv 2505.12044; code
thuml/FlashBias: ``flash_bias/flash_bias_triton.py`` @254a8b8, ``flash_bias/flash_attn_triton.py`` @2a7d868 for the
dense-bias baseline, ``flash_bias/benchmark.py``).

    O = softmax(scale·QKᵀ + φ_q φ_kᵀ) V,   φ_q [B, H, N_q, R], φ_k [B, H_kv, N_kv, R] (per KV head under GQA)

The bias b = φ_q φ_kᵀ is never materialised: each KV step loads the φ_k tile beside K and computes
S = scale·Q_i K_jᵀ + φ_q,i φ_k,jᵀ — the QKᵀ GEMM widened from d to d + R on the Q/K side (V and P·V keep d).
Exact when the bias has rank ≤ R. ALiBi is rank 2: with bottom-right alignment a query at position i' = i + N_kv − N_q
and key j get b = −m·(i' − j) = (−m·i')·1 + 1·(m·j), so φ_q(i) = [−m·i', 1], φ_k(j) = [1, m·j] (and since softmax is
invariant to a per-row constant, φ_q = [1], φ_k = [m·j] — rank 1 — gives the same output); the causal mask stays a
mask. (The non-causal symmetric −m·|i − j| is not low-rank: |i − j| is a full-rank distance matrix.)

Algorithms (both Tri Dao's Triton FlashAttention, ``flash_attn_triton.py``, which the two repo kernels derive from:
grid (⌈N_q/BLOCK_M⌉, B·H) — query block fastest, then head, then batch —, KV ascending, one pipeline stage):

* ``flashbias`` (``route='triton'``): per CTA loads Q_i [bm, d] and φ_q,i [bm, R] once; per KV step K_j [bn, d], φ_k,j
  [bn, R], V_j [bn, d]. Per head: reads Q + φ_q once, (K + φ_k + V)·T_r (causal: the visited tiles), i.e. FA2 with
  d → d + R on the Q/K terms; QKᵀ FLOPs 2·r·c·(d + R).
  ``route='sdpa'``: the factors are concatenated, Q' = [Q, φ_q/scale] and K' = [K, φ_k] of width d + R (a copy
  kernel per operand; d + R a multiple of 8, FA2's head-dim rule), then FA2 runs with the softmax scale of d on
  Q'/K' of width d + R and V of width d: scale·Q'K'ᵀ = scale·QKᵀ + φ_q φ_kᵀ.
* ``dense_bias``: the baseline "Triton-Attn-Bias" (``flash_attn_triton.py``, BIAS_TYPE 'matrix'): a bias tile
  [bm, bn] of the [B, H, N_q, N_kv] bias is loaded at every visited tile (never reused): FA2 + c·N²·b_bias bytes per
  head; + r·c adds.

Both Triton kernels, as the repo runs them, also store the per-row rescale factor to a scratch TMP [B·H, N_q
rounded to 128] fp32 and load it straight back every KV step and once at the end (a Triton compiler-bug workaround,
"BUG: have to store and immediately load"): 2 × 4·bm bytes per step, modelled (``tmp_roundtrip``); LSE is written to a
[B, H, N_q rounded to 128] array, whole tiles.

Tiles: the repo autotunes BLOCK_M = BLOCK_N ∈ {32, 64, 128}, num_warps ∈ {2, 4}, num_stages 1 (``configs`` / ``keep``
in flash_bias_triton.py); give them in the KernelConfig (default 128×128, 4 warps, 1 stage).
Not modelled: the φ_q/φ_k GEMM runs in fp32 (``.to(tl.float32)`` before ``tl.dot``: TF32 tensor cores on A100, half
the fp16 rate) — counted at the input dtype's rate; the factorisation (SVD or learned φ) is the user's pre-pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, kv_head, kv_tile, q_tile, qkvo_tensors, row_tile
from iosim.problem import STAT_BYTES, DTYPE_BYTES, KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, full, point, var)

ROUND_Q = 128
"""seqlen_q_rounded = ⌈N_q/128⌉·128 (flash_attn_triton.py ``_flash_attn_forward``): LSE and TMP rows."""


@register_op("flashbias_qk")
def op_flashbias_qk(ctx, q, qb, k, kb, s):
    """S = scale·Q Kᵀ + φ_q φ_kᵀ (flash_bias_triton.py: qk *= softmax_scale, then qk += dot(q_bias, k_biasᵀ))."""
    r, c = q.ext[0], k.ext[0]
    s.data[:r, :c] = (q.data[:r] @ k.data[:c].T) * ctx.scale + qb.data[:r] @ kb.data[:c].T
    s.set((q.origin[0], k.origin[0]), (r, c))
    s.pos = None


@register_op("dense_bias_add")
def op_bias_add(ctx, s, bias):
    """S += the bias tile (dense-bias FlashAttention)."""
    r, c = s.ext
    s.data[:r, :c] += bias.data[:r, :c]


@register_op("flashbias_concat_q")
def op_concat_cols(ctx, x, y, out):
    """Q' = [Q, φ_q / scale]: FA2 run with the softmax scale of d (SDPA's ``scale=``) then gives
    scale·Q'K'ᵀ = scale·QKᵀ + φ_q φ_kᵀ."""
    r, d = x.ext[0], x.data.shape[1]
    out.data[:r, :d] = x.data[:r]
    out.data[:r, d:] = y.data[:r] / ctx.scale
    out.set((x.origin[0], 0), (r, out.data.shape[1]))


@register_op("flashbias_concat_k")
def op_concat_k(ctx, x, y, out):
    """K' = [K, φ_k]."""
    r, d = x.ext[0], x.data.shape[1]
    out.data[:r, :d] = x.data[:r]
    out.data[:r, d:] = y.data[:r]
    out.set((x.origin[0], 0), (r, out.data.shape[1]))


def _check(p: Problem, name: str) -> None:
    check_head_dim(p, name)
    for n in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim"):
        if not isinstance(getattr(p, n), int):
            raise IosimError(f"{name}: needs concrete sizes")


def _cfg(cfg: KernelConfig) -> KernelConfig:
    """The Triton kernel's launch: tiles default 128×128 (BLOCK = 128 of flash_attn_triton.py), 1 stage, grid
    (m, b·h) with h fastest after m."""
    stages = cfg.num_stages if cfg.num_stages != KernelConfig().num_stages else 1
    return replace(cfg, block_m=cfg.block_m or 128, block_n=cfg.block_n or 128, num_stages=stages,
                   grid_order=("m", "h", "b") if cfg.grid_order == KernelConfig().grid_order else cfg.grid_order)


def _tensors(p: Problem) -> dict[str, TensorSpec]:
    nr = cdiv(p.seq_q, ROUND_Q) * ROUND_Q
    return qkvo_tensors(p) | {"LSE": TensorSpec("LSE", (p.batch, p.heads, nr), STAT_BYTES, "output"),
                              "TMP": TensorSpec("TMP", (p.batch, p.heads, nr), STAT_BYTES, "scratch")}


def _kernel(name: str, p: Problem, cfg: KernelConfig, hw, prologue: tuple, step_loads: tuple, qk: Compute,
            extra_bufs: tuple, tmp_roundtrip: bool) -> Kernel:
    """Tri Dao's Triton forward with a custom QKᵀ (flashbias_qk / qk + bias_add)."""
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    nr = cdiv(p.seq_q, ROUND_Q) * ROUND_Q
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i, j = vs["b"], vs["h"], vs["m"], var("j")
    rows, cols, rows_r = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv), Span(i, bm, nr)
    tmp = Tile("TMP", (point(b, p.batch), point(h, p.heads), rows_r))
    rt = (Store("alpha", tmp), Load("alpha", tmp)) if tmp_roundtrip else ()
    step = (
        Load("k", kv_tile(p, "K", b, h, cols)),
        *step_loads(b, h, rows, cols),
        qk(rows, cols),
        Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                other=(Work(4, (rows, cols)), Work(d + 4, (rows,)))),
        *rt,
        Load("v", kv_tile(p, "V", b, h, cols)),
        Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
    )
    body = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        *prologue(b, h, rows),
        Loop(j, 0, flash2.kv_stop(p, i, bm, bn, tn), step),
        flash2.finalize(p, rows),
        *rt,
        Store("lse", Tile("LSE", (point(b, p.batch), point(h, p.heads), rows_r))),
        Store("acc", q_tile(p, "O", b, h, rows)),
    )
    bufs = flash2.buffers(bm, bn, d, e) + (Buffer("alpha", (bm,), 4, "reg"),) + extra_bufs
    k = Kernel(name, grid, bufs, body, threads_per_cta=32 * cfg.num_warps)
    check_fit(k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    return k


def _rank(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= 256:
        raise IosimError(f"flashbias: rank={rank!r}; give an integer 1..256 (the bias factors' columns R)")
    return int(rank)


@register("flashbias", "FlashBias: a rank-R bias as extra Q/K columns (φ_q φ_kᵀ inside the QKᵀ tile; QKᵀ width "
          "d + R), Triton kernel or the SDPA concatenation route")
def build(p: Problem, cfg: KernelConfig, hw=None, *, rank: int = 8, route: str = "triton",
          tmp_roundtrip: bool = True) -> Schedule:
    """rank: R, the factors' columns (repo benchmark: 8); route: 'triton' (flash_bias_triton.py) or 'sdpa' (Q' = [Q,
    φ_q], K' = [K, φ_k] written by copy kernels, then FA2 at head dim d + R; d + R a multiple of 8); tmp_roundtrip:
    the Triton kernel's TMP store/load per step."""
    _check(p, "flashbias")
    R = _rank(rank)
    if route not in ("triton", "sdpa"):
        raise IosimError(f"flashbias: route={route!r}; give 'triton' (the repo's kernel) or 'sdpa' (concatenated "
                         "factors through FA2)")
    if not isinstance(tmp_roundtrip, bool):
        raise IosimError(f"flashbias: tmp_roundtrip={tmp_roundtrip!r}; give true or false")
    d, e = p.head_dim, p.elem_bytes
    fac = {"Qb": TensorSpec("Qb", (p.batch, p.heads, p.seq_q, R), e, "input"),
           "Kb": TensorSpec("Kb", (p.batch, p.kv_heads, p.seq_kv, R), e, "input")}
    if route == "sdpa":
        return _sdpa(p, cfg, hw, R, fac)
    cfg = _cfg(cfg)
    bm, bn = cfg.block_m, cfg.block_n

    def prologue(b, h, rows):
        return (Load("qb", Tile("Qb", (point(b, p.batch), point(h, p.heads), rows, full(R)))),)

    def loads(b, h, rows, cols):
        return (Load("kb", Tile("Kb", (point(b, p.batch), point(kv_head(p, h), p.kv_heads), cols, full(R)))),)

    def qk(rows, cols):
        return Compute("flashbias_qk", ("q", "qb", "k", "kb", "s"), matmul=(Work(2 * (d + R), (rows, cols)),),
                       other=(Work(1, (rows, cols)),))
    extra = (Buffer("qb", (bm, R), e), Buffer("kb", (bn, R), e, pipelined=True))
    k = _kernel("flashbias_fwd", p, cfg, hw, prologue, loads, qk, extra, tmp_roundtrip)
    notes = (f"flashbias (Triton): rank R = {R}, QKᵀ over d + R = {d + R} columns; φ_q loaded once per query block, "
             f"φ_k per KV tile; tiles {bm}×{bn}, {cfg.num_warps} warps, {cfg.num_stages} stage(s)"
             + ("; TMP store+load per step" if tmp_roundtrip else ""),)
    return Schedule("flashbias", p, cfg, _tensors(p) | fac, (k,), notes)


def _concat_kernel(name: str, src: TensorSpec, fac: TensorSpec, out: TensorSpec, op: str, rows_per_cta: int = 128
                   ) -> Kernel:
    """out[b, h, x] = [src[b, h, x], fac[b, h, x]] (a torch.cat along the last axis): reads N·(d + R), writes N·(d + R)."""
    B, H, N, d = src.dims
    R = fac.dims[3]
    r, b, h = var("pid_m"), var("b"), var("h")
    rows = Span(r, rows_per_cta, N)
    body = (Load("x", Tile(src.name, (point(b, B), point(h, H), rows, full(d)))),
            Load("y", Tile(fac.name, (point(b, B), point(h, H), rows, full(R)))),
            Compute(op, ("x", "y", "out")),
            Store("out", Tile(out.name, (point(b, B), point(h, H), rows, full(d + R)))))
    bufs = (Buffer("x", (rows_per_cta, d), src.elem_bytes), Buffer("y", (rows_per_cta, R), fac.elem_bytes),
            Buffer("out", (rows_per_cta, d + R), out.elem_bytes, "reg"))
    grid = (GridAxis("m", r, cdiv(N, rows_per_cta)), GridAxis("b", b, B), GridAxis("h", h, H))
    return Kernel(name, grid, bufs, body)


def _sdpa(p: Problem, cfg: KernelConfig, hw, R: int, fac: dict) -> Schedule:
    """Concatenate the factors (two copy kernels), then FA2 with Q'/K' of width d + R (V and O of width d)."""
    d, e, w = p.head_dim, p.elem_bytes, p.head_dim + R
    if w % 8:
        raise IosimError(f"flashbias: route='sdpa' needs d + R = {w} to be a multiple of 8 (FA2's head-dim rule); "
                         f"pad the factors to R = {-(-w // 8) * 8 - d}")
    if w > 256:
        raise IosimError(f"flashbias: route='sdpa' needs d + R = {w} ≤ 256 (FA2's largest head dim)")
    t = _tensors(p)
    qp = TensorSpec("Qp", (p.batch, p.heads, p.seq_q, w), e, "scratch")
    kp = TensorSpec("Kp", (p.batch, p.kv_heads, p.seq_kv, w), e, "scratch")
    cat_q = _concat_kernel("cat_q", t["Q"], fac["Qb"], qp, "flashbias_concat_q")
    cat_k = _concat_kernel("cat_k", t["K"], fac["Kb"], kp, "flashbias_concat_k")
    pw = replace(p, head_dim=w)
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = flash2.default_tiles(w)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn = cfg.block_m, cfg.block_n
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i, j = vs["b"], vs["h"], vs["m"], var("j")
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    step = (
        Load("k", kv_tile(pw, "Kp", b, h, cols)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * w, (rows, cols)),)),
        Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                other=(Work(4, (rows, cols)), Work(d + 4, (rows,)))),
        Load("v", kv_tile(p, "V", b, h, cols)),
        Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
    )
    body = (Load("q", q_tile(pw, "Qp", b, h, rows)),
            Loop(j, 0, flash2.kv_stop(p, i, bm, bn, tn), step, reverse=cfg.kv_order == "descending"),
            flash2.finalize(p, rows), Store("acc", q_tile(p, "O", b, h, rows)),
            Store("lse", row_tile(p, "LSE", b, h, rows)))
    bufs = (Buffer("q", (bm, w), e), Buffer("k", (bn, w), e, pipelined=True), Buffer("v", (bn, d), e, pipelined=True),
            Buffer("s", (bm, bn), 4, "reg"), Buffer("p", (bm, bn), e, "reg", transient=True),
            Buffer("acc", (bm, d), 4, "reg"), Buffer("m", (bm,), STAT_BYTES, "reg"),
            Buffer("l", (bm,), STAT_BYTES, "reg"), Buffer("lse", (bm,), STAT_BYTES, "reg"))
    k = Kernel("flash2_fwd", grid, bufs, body, threads_per_cta=32 * cfg.num_warps)
    check_fit(k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={w}, num_stages={cfg.num_stages}")
    tensors = qkvo_tensors(p) | {"LSE": TensorSpec("LSE", (p.batch, p.heads, p.seq_q), STAT_BYTES, "output"),
                                 "Qp": qp, "Kp": kp} | fac
    notes = (f"flashbias (SDPA route): Q' = [Q, φ_q], K' = [K, φ_k] of width d + R = {w} by two copy kernels, then "
             f"FA2 {bm}×{bn} at the softmax scale of d (QKᵀ over {w} columns, P·V over d = {d}; Q' = [Q, φ_q/scale])",)
    return Schedule("flashbias", p, cfg, tensors, (cat_q, cat_k, k), notes)


@register("dense_bias", "FlashAttention with a dense [B, H, N_q, N_kv] bias (Triton-Attn-Bias, FlashBias's baseline): "
          "a bias tile read at every visited tile")
def build_dense(p: Problem, cfg: KernelConfig, hw=None, *, bias_dtype: str | None = None,
                tmp_roundtrip: bool = True) -> Schedule:
    """bias_dtype: the bias tensor's dtype (None: the problem's; the repo's benchmark uses fp16 like Q/K/V);
    tmp_roundtrip: the Triton kernel's TMP store/load per step."""
    _check(p, "dense_bias")
    bd = p.dtype if bias_dtype is None else bias_dtype
    if bd not in DTYPE_BYTES:
        raise IosimError(f"dense_bias: bias_dtype={bias_dtype!r}; give one of {', '.join(DTYPE_BYTES)}")
    if not isinstance(tmp_roundtrip, bool):
        raise IosimError(f"dense_bias: tmp_roundtrip={tmp_roundtrip!r}; give true or false")
    cfg = _cfg(cfg)
    bm, bn = cfg.block_m, cfg.block_n
    eb = DTYPE_BYTES[bd]

    def loads(b, h, rows, cols):
        return (Load("bias", Tile("Bias", (point(b, p.batch), point(h, p.heads), rows, cols))),)

    def qk(rows, cols):
        return Compute("qk", ("q", "k", "s"), matmul=(Work(2 * p.head_dim, (rows, cols)),))

    k = _kernel("dense_bias_fwd", p, cfg, hw, lambda b, h, rows: (), loads, qk,
                (Buffer("bias", (bm, bn), eb, "reg"),), tmp_roundtrip)
    body = list(k.body)
    loop = body[1]
    steps = list(loop.body)
    at = next(n for n, st in enumerate(steps) if isinstance(st, Compute) and st.op == "qk")
    rows, cols = steps[at].matmul[0].spans
    steps.insert(at + 1, Compute("dense_bias_add", ("s", "bias"), other=(Work(1, (rows, cols)),)))
    body[1] = replace(loop, body=tuple(steps))
    k = replace(k, body=tuple(body))
    tensors = _tensors(p) | {"Bias": TensorSpec("Bias", (p.batch, p.heads, p.seq_q, p.seq_kv), eb, "input")}
    notes = (f"dense_bias (Triton-Attn-Bias): a {bm}×{bn} {bd} bias tile per visited tile (never reused); tiles "
             f"{bm}×{bn}, {cfg.num_warps} warps, {cfg.num_stages} stage(s)" +
             ("; TMP store+load per step" if tmp_roundtrip else ""),)
    return Schedule("dense_bias", p, cfg, tensors, (k,), notes)
