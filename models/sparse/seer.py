"""SeerAttention (Gao et al., arXiv 2410.13276) and SeerAttention-R (arXiv 2506.08889), microsoft/SeerAttention
@aba03e3: a learned gate (AttnGate) on pooled Q and K picks 64-token blocks; a block-sparse kernel runs them.

``seerattention`` — prefill (``seer_attn/prefill_sparse``; per (b, h), T = ⌈N/64⌉ blocks, w = gate width 128):
* ``seer_pool_q`` — F.avg_pool3d of Q over 64 tokens (``attn_gate.py``, gate type Qavg_Kmaxmin): reads N·d, writes
  T·d.  ``seer_pool_kmax`` — max_pool3d of K (reads N·d, writes T·d per KV head); ``seer_neg_k`` and
  ``seer_pool_kmin`` — ``min_pool3d`` is −max_pool3d(−K): the negation is a pass of its own (reads and writes N·d),
  then a max pool of it (the final negation of the T pooled rows is folded in).
* ``seer_gate_k`` — MultiHeadLinear of cat(Kmax, Kmin) (2d → w) per query head (K pooled rows repeated to the query
  heads, ``repeat_kv_varlen``: read per query head here); ``seer_gate_q`` likewise on pooled Q only when d ≠ w
  (with d = w = 128 the repo's gate has no Q linear).
* ``seer_gate_score`` — torch.matmul of the pooled, projected Q and K: the full T×T scores per head (bf16).
* ``seer_gate_softmax`` — scale 1/√w, the causal block mask, softmax (threshold method; masked_fill and the scale are
  passes of their own in PyTorch, folded here): reads and writes T² per head.
* ``seer_gate_select`` — ``get_sparse_attn_mask_from_threshold`` (> τ) or ``_from_nz_ratio`` (top-k per row with
  k = ⌊(1 − √(1 − r))·T⌋, r the nz_ratio), last two block rows dense, tril: reads T², writes T² mask bytes.
* ``seer_repeat_k`` / ``seer_repeat_v`` — GQA: ``repeat_kv`` materialised before the kernel
  (``modules/attention_forward.py``): +2·N·d·(g − 1) per KV head.
* ``seer_fwd`` — ``block_sparse_triton_fn`` (``kernels/block_sparse_attn.py``): 64×64 tiles, 4 warps, 2 stages,
  grid (m, b·h), KV ascending, a mask byte read per block up to the diagonal, only kept blocks loaded, O written (no
  LSE). Per (b, h): reads Q, K + V of the kept blocks, the mask row; writes O.

``seerattention_r`` — SeerAttention-R (``seer_attn/decode_sparse``), gate K pooling Kmaxminavg, Qproj, w = 128:
* decode (N_q = 1, per step): ``seer_r_gate_q`` (the group's g query heads through HeadPoolingLinear g·d → w: reads
  g·d + g·d·w weights per KV head), ``seer_r_gate_score`` (reads the K compression cache, T·w per KV head, and
  writes T scores), ``seer_r_select`` (softmax, threshold or token budget, last block forced; writes the block list),
  ``seer_r_decode`` (the TileLang split-KV GQA kernel ``tilelang_sparse_gqa_decode_varlen_indice.py``: grid
  (batch, heads/valid_block_H, num_split), a block_H = 64-row Q window per CTA — the g group rows padded for wgmma —,
  the selected 64-token blocks of its split, fp32 partial O and LSE per split) and ``seer_r_combine`` (grid
  (heads, batch): the splits merged, O written).
* prefill (N_q > 1): dense FlashAttention-2 (the R models prefill densely) plus the K compression cache build (K
  max/min/avg pools and the 3d → w linear per KV head).

Selection (``models/sparse/selection.py`` sources): ``density`` — prefill: round(density·valid) blocks per block row,
the last two block rows (``last_block_dense``) and the diagonal forced (the top-k rule keeps ≥ 1 block per row; the
diagonal is iosim's choice for it); nz_ratio r keeps a fraction r of the causal blocks on average
(Σ min(k, i+1) / Σ (i+1) → r for k = (1 − √(1 − r))·T), so density plays nz_ratio. Decode: per (b, KV head),
round(density·T) of the T blocks, the last forced (``mask[:, :, -1] = True``). ``table``: bool blocks ([T_q, T_kv] /
[B, H, T_q, T_kv] prefill; [T], [H_kv, T] or [B, H_kv, T] decode). ``scores``: attention probabilities — prefill
[.., N, N]: the gate's distillation target (``attn_pooling_kernel_2d.py``: 64×64 max-pool of the map, each row
divided by its sum), then the threshold or top-k rule, last two rows, tril; decode [B, H, 1, N]: 64-token max-pool,
the mean over the group's query heads (assumed: the R paper's target is per KV head), normalised, then threshold or
token budget, last block forced. Neither: every block. The NumPy reference runs the gate for real (pooling, linears,
scores, softmax, selection) on the given weights (Wk, Wq / WqR, WkR), without RoPE (left out); the sparse kernels run
the chosen mask.

Choices (and why): gate type Qavg_Kmaxmin (prefill; the config docstring's default) and Kmaxminavg + Qproj (R; its
config defaults); block 64, w = 128 (config defaults); τ = 2e-3 prefill (config docstring default; README: typical
5e-4–5e-3) and 4e-3 decode (the R paper's threshold study); token budget 4096 (R config default). Non-causal prefill
(the Triton kernel is causal only): iosim runs the listed blocks of the whole row. num_split (decode): the repo's
``num_splits_heuristic`` (FA3's, ``kernels/varlen/utils.py``) rounded down to the autotuner's {1, 2, 4, 8, 16};
block_H = 64, 2 stages, 128 threads (the autotuner's space; its pick is not recorded). Left out: RoPE and qk-norm of
the gate, the K compression cache update every 64 generated tokens (amortised), the HF layout transposes
(``.transpose(1, 2).contiguous()`` of Q, K, V and O around the prefill kernel), the kernels' reads of their int32
block lists.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_head_dim, qkvo_tensors
from iosim.models.sparse import common as sc
from iosim.models.sparse.kernels import listed_fwd_kernel, repeat_kv_kernels, tile_tables
from iosim.models.sparse.selection import concrete, per_head_mask
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, full, lookup, point, table, var)

BLOCK = 64  # seerattn_gate_block_size (config default)
GATE_WIDTH = 128  # seerattn_gate_hidden_size
PREFILL_THRESHOLD = 2e-3
DECODE_THRESHOLD = 4e-3
TOKEN_BUDGET = 4096
SPLITS = (1, 2, 4, 8, 16)  # the TileLang autotuner's num_split candidates


def with_op(kernel: Kernel, old: str, new: str) -> Kernel:
    """The kernel with its Compute ``old`` renamed ``new`` (the same loads and stores, another NumPy op)."""
    def stmt(s):
        if isinstance(s, Loop):
            return replace(s, body=tuple(stmt(x) for x in s.body))
        if isinstance(s, Compute) and s.op == old:
            return replace(s, op=new)
        return s
    return replace(kernel, body=tuple(stmt(s) for s in kernel.body))


def _meta(ctx) -> dict:
    m = [int(x) for x in ctx.tables["seer_meta"]]
    return dict(method=m[0], tau=m[1] / 1e12, k=m[2], causal=bool(m[3]), w=m[4], last_dense=bool(m[5]))


# --- reference ops -------------------------------------------------------------------------------------------------

@register_op("seer_pool_mean")
def _op_pool_mean(ctx, src, dst):
    """Mean of the block's valid rows (avg_pool3d, ceil_mode: a ragged last block averages what it holds). As
    reference.op_pool_mean, but with a 2-d origin for the (1, d) output buffer its Store places."""
    r = src.ext[0]
    dst.value(0.0)[0] = src.data[:r].mean(axis=0) if r else 0.0
    dst.set((src.origin[0], 0), (1, dst.data.shape[1]))


@register_op("seer_pool_max")
def _op_pool_max(ctx, src, dst):
    r = src.ext[0]
    dst.value(0.0)[0] = src.data[:r].max(axis=0) if r else 0.0
    dst.set((src.origin[0], 0), (1, dst.data.shape[1]))


@register_op("seer_pool_negmax")
def _op_pool_negmax(ctx, src, dst):
    """−max of the negated rows = the min of the original rows (min_pool3d)."""
    r = src.ext[0]
    dst.value(0.0)[0] = -src.data[:r].max(axis=0) if r else 0.0
    dst.set((src.origin[0], 0), (1, dst.data.shape[1]))


@register_op("seer_neg")
def _op_neg(ctx, x, y):
    y.data[...] = -x.data
    y.set(x.origin, x.ext)


@register_op("seer_linear")
def _op_linear(ctx, a, w, y):
    r = a.ext[0]
    y.value(0.0)[:r] = a.data[:r] @ w.data
    y.set(a.origin, (r, y.data.shape[1]))


@register_op("seer_linear2")
def _op_linear2(ctx, a, b, w, y):
    r = a.ext[0]
    y.value(0.0)[:r] = np.concatenate([a.data[:r], b.data[:r]], axis=1) @ w.data
    y.set(a.origin, (r, y.data.shape[1]))


@register_op("seer_linear3")
def _op_linear3(ctx, a, b, c, w, y):
    r = a.ext[0]
    y.value(0.0)[:r] = np.concatenate([a.data[:r], b.data[:r], c.data[:r]], axis=1) @ w.data
    y.set(a.origin, (r, y.data.shape[1]))


def _row_mask(meta, i, c):
    cols = np.arange(c)
    return cols <= i if meta["causal"] else np.ones(c, dtype=bool)


@register_op("seer_gate_softmax")
def _op_gate_softmax(ctx, row, out):
    """softmax(scores / √w) over the causally visible blocks of block row i (masked ones → 0)."""
    meta = _meta(ctx)
    c, i = row.ext[1], row.origin[0]
    x = np.where(_row_mask(meta, i, c), row.data[0, :c] / math.sqrt(meta["w"]), -1e9)
    pr = np.exp(x - x.max())
    out.value(0.0)[0, :c] = pr / pr.sum()
    out.set(row.origin, (1, c))


def threshold_or_topk(x: np.ndarray, method: int, tau: float, k: int, valid: np.ndarray) -> np.ndarray:
    """The gate's rule on one row (or rows) of scores: method 0 keeps x > τ; method 1 keeps the k highest valid
    (``torch.topk``: ties by index here)."""
    if method == 0:
        return (x > tau) & valid
    key = np.where(valid, x, -np.inf)
    order = np.argsort(-key, axis=-1, kind="stable")
    keep = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :k], True, axis=-1)
    return keep & valid


@register_op("seer_gate_select")
def _op_gate_select(ctx, row, sel):
    meta = _meta(ctx)
    c, i = row.ext[1], row.origin[0]
    valid = _row_mask(meta, i, c)
    if meta["method"] == 1:  # top-k on the raw (masked) scores: the order ignores the scale
        keep = threshold_or_topk(row.data[0, :c], 1, 0.0, meta["k"], valid)
    else:
        keep = threshold_or_topk(row.data[0, :c], 0, meta["tau"], 0, valid)
    tq = ctx.tables["seer_rows"][0]
    if meta["last_dense"] and i >= tq - 2:
        keep = valid.copy()
    sel.value(0.0)[0, :c] = keep
    sel.set(row.origin, (1, c))


@register_op("seer_r_qproj")
def _op_r_qproj(ctx, q, w, y):
    """y += q_h · W[k, h] (HeadPoolingLinear, one query head of the group per step)."""
    y.value(0.0)[:] += q.data @ w.data
    y.set((0,), (y.data.shape[0],))


@register_op("seer_r_score")
def _op_r_score(ctx, qg, kc, s):
    r = kc.ext[0]
    meta = _meta(ctx)
    s.value(0.0)[:r] = kc.data[:r] @ qg.data / math.sqrt(meta["w"])
    s.set((kc.origin[0],), (r,))


@register_op("seer_r_select")
def _op_r_select(ctx, row, idx):
    """softmax over the T blocks, threshold / top-k, last block forced, kept blocks descending then −1."""
    meta = _meta(ctx)
    t = row.ext[0]
    x = row.data[:t]
    pr = np.exp(x - x.max())
    pr = pr / pr.sum()
    keep = threshold_or_topk(pr, meta["method"], meta["tau"], meta["k"], np.ones(t, dtype=bool))
    keep[-1] = True
    cols = np.nonzero(keep)[0][::-1]
    out = idx.value(0.0)
    out[:] = -1
    n = min(cols.size, out.shape[0])
    out[:n] = cols[:n]
    idx.set((0,), (out.shape[0],))


# --- shared kernel pieces ------------------------------------------------------------------------------------------

def _grid_rows(rows, B, H):
    r, b, h = var("pid_m"), var("b"), var("h")
    return (GridAxis("m", r, rows), GridAxis("h", h, H), GridAxis("b", b, B)), r, b, h


def k_pool_kernels(p: Problem, prefix: str, funcs: tuple[str, ...], block: int) -> tuple[list, dict]:
    """The K pools of the gate (``attn_gate.py`` POOL_FUNCS): max → {prefix}Kmax, min → −max(−K) through a negated
    copy {prefix}Kneg, avg → {prefix}Kavg; each [B, H_kv, T, d] in the model dtype."""
    B, Hk, N, d, e = p.batch, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    T = cdiv(N, block)
    K = TensorSpec("K", (B, Hk, N, d), e, "input")
    out, tensors = [], {}
    for f in funcs:
        dst = TensorSpec(f"{prefix}K{f}", (B, Hk, T, d), e, "scratch")
        tensors[dst.name] = dst
        if f == "max":
            out.append(with_op(sc.pool_kernel(f"{prefix}pool_kmax", K, dst, block, rows_per_cta=1), "pool_mean", "seer_pool_max"))
        elif f == "avg":
            out.append(with_op(sc.pool_kernel(f"{prefix}pool_kavg", K, dst, block, rows_per_cta=1), "pool_mean", "seer_pool_mean"))
        else:
            neg = TensorSpec(f"{prefix}Kneg", (B, Hk, N, d), e, "scratch")
            tensors[neg.name] = neg
            from iosim.models.sparse.kernels import copy_kernel
            out.append(with_op(copy_kernel(f"{prefix}neg_k", K, neg), "copy", "seer_neg"))
            out.append(with_op(sc.pool_kernel(f"{prefix}pool_kmin", neg, dst, block, rows_per_cta=1), "pool_mean", "seer_pool_negmax"))
    return out, tensors


def linear_kernel(name: str, srcs: list[TensorSpec], w: TensorSpec, dst: TensorSpec, head_of=None,
                  rows: int = 64) -> Kernel:
    """dst[b, h, x] = cat(src[b, head_of(h), x] for src) @ w[h] (MultiHeadLinear); per (b, h): reads T·k·d of the
    sources and the k·d × w weights per CTA of ``rows`` rows, writes T·w; matmul 2·k·d·w per row."""
    B, H, T, width = dst.dims
    d = srcs[0].dims[3]
    grid, r, b, h = _grid_rows(cdiv(T, rows), B, H)
    hs = h if head_of is None else head_of(h)
    span = Span(r, rows, T)
    names = [f"a{i}" for i in range(len(srcs))]
    body = tuple(Load(n, Tile(s.name, (point(b, B), point(hs, s.dims[1]), span, full(d)))) for n, s in zip(names, srcs))
    body += (
        Load("w", Tile(w.name, (point(h, H), full(len(srcs) * d), full(width)))),
        Compute({1: "seer_linear", 2: "seer_linear2", 3: "seer_linear3"}[len(srcs)], (*names, "w", "y"),
                matmul=(Work(2 * len(srcs) * d * width, (span,)),)),
        Store("y", Tile(dst.name, (point(b, B), point(h, H), span, full(width)))),
    )
    bufs = tuple(Buffer(n, (rows, d), s.elem_bytes) for n, s in zip(names, srcs)) + (
        Buffer("w", (len(srcs) * d, width), w.elem_bytes), Buffer("y", (rows, width), 4, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=128)


def row_kernel(name: str, op: str, src: TensorSpec, dst: TensorSpec, rows: int, exp: int = 0, other: int = 1) -> Kernel:
    """One CTA per row x of a [B, H, R, C] matrix: load row x of src, ``op``, store row x of dst."""
    B, H, R, C = src.dims
    grid, r, b, h = _grid_rows(rows, B, H)
    row = Span(r, 1, R)
    body = (
        Load("row", Tile(src.name, (point(b, B), point(h, H), row, full(C)))),
        Compute(op, ("row", "out"), exp=(Work(exp, (row, full(C))),) if exp else (),
                other=(Work(other, (row, full(C))),)),
        Store("out", Tile(dst.name, (point(b, B), point(h, H), row, full(C)))),
    )
    bufs = (Buffer("row", (1, C), src.elem_bytes), Buffer("out", (1, C), dst.elem_bytes, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=128)


def _method(sparsity_method: str, names: tuple[str, ...], what: str) -> int:
    if sparsity_method not in names:
        raise IosimError(f"{what}: sparsity_method={sparsity_method!r}; use one of {', '.join(names)}")
    return names.index(sparsity_method)


# --- SeerAttention prefill ------------------------------------------------------------------------------------------

def nz_topk(nz_ratio: float, t: int) -> int:
    """``get_sparse_attn_mask_from_nz_ratio``: k = ⌊(1 − √(1 − r))·T⌋, at least 1."""
    return max(1, int((1 - math.sqrt(1 - nz_ratio)) * t))


def prefill_rule(p: Problem, method: int, tau: float, nz_ratio: float, last_dense: bool):
    """scores (probabilities [.., N, N]) → the prefill gate's mask [.., T, T]: 64×64 max-pool, rows normalised,
    threshold / top-k, the last two block rows dense, tril (causal)."""
    def rule(s):
        pooled = sc.pool_blocks(s, BLOCK, BLOCK, "max")
        tq, tk = pooled.shape[-2:]
        valid = sc.valid_blocks(p, BLOCK, BLOCK)
        pooled = np.where(valid, pooled, 0.0)
        tot = pooled.sum(axis=-1, keepdims=True)
        pooled = pooled / np.where(tot > 0, tot, 1.0)
        keep = threshold_or_topk(pooled, method, tau, nz_topk(nz_ratio, tk) if method == 1 else 0, valid)
        if last_dense:
            keep[..., max(0, tq - 2):, :] = True
        return keep & valid
    return rule


@register("seerattention", "SeerAttention prefill: pooled Q/K gate (avg, max+min pools, per-head linear, block scores, "
          "softmax, threshold or top-k), repeat_kv, Triton 64x64 block-sparse kernel")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          sparsity_method: str = "threshold", threshold: float = PREFILL_THRESHOLD, nz_ratio: float = 0.1,
          gate_width: int = GATE_WIDTH, last_block_dense: bool = True, per_head: bool | None = None) -> Schedule:
    """sparsity_method 'threshold' (τ = threshold on the softmaxed gate) or 'nz_ratio' (top-k, no softmax);
    threshold and nz_ratio drive the ``scores`` rule; density / table / scores pick the blocks (module docstring)."""
    concrete(p, "seerattention")
    check_head_dim(p, "seerattention")
    if p.seq_q == 1:
        raise IosimError("seerattention: the prefill gate returns no mask for q_len == 1 (attn_gate.py); use "
                         "--algorithm seerattention_r for sparse decode")
    if p.seq_q != p.seq_kv:
        raise IosimError(f"seerattention: models prefill with seq_q == seq_kv (the gate pools Q and K alike and "
                         f"its mask is square); got seq_q={p.seq_q}, seq_kv={p.seq_kv}")
    method = _method(sparsity_method, ("threshold", "nz_ratio"), "seerattention")
    sc.check_params("seerattention", threshold=(threshold, 0.0, 1.0), nz_ratio=(nz_ratio, 0.0, 1.0),
                    gate_width=(gate_width, 1, None))
    if not isinstance(gate_width, int) or isinstance(gate_width, bool):
        raise IosimError(f"seerattention: gate_width={gate_width!r} must be a positive integer (the gate's hidden size)")
    if cfg.block_m not in (None, BLOCK) or cfg.block_n not in (None, BLOCK):
        raise IosimError(f"seerattention: the Triton kernel runs BLOCK_M = BLOCK_N = the gate block {BLOCK}; "
                         f"got block_m={cfg.block_m}, block_n={cfg.block_n} (leave them unset)")
    cfg = cfg.with_tiles(BLOCK, BLOCK)
    B, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    T, w, g = cdiv(N, BLOCK), gate_width, p.heads // p.kv_heads

    valid = sc.valid_blocks(p, BLOCK, BLOCK)
    forced = np.zeros_like(valid)
    if last_block_dense:
        forced[max(0, T - 2):] = True
    forced |= sc.forced_blocks(p, BLOCK, BLOCK, diagonal=True)
    ph = per_head_mask(p, T, T, per_head)
    mask, src = sc.choose_blocks(p, BLOCK, BLOCK, density=density, seed=seed, table=table, scores=scores,
                                 rule=prefill_rule(p, method, float(threshold), float(nz_ratio), bool(last_block_dense)),
                                 forced=forced & valid, per_head=ph, method="seerattention")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[0, 0]
    kept = sc.kept_fraction(mask, p, BLOCK, BLOCK)

    tensors = qkvo_tensors(p)
    Q = tensors["Q"]
    kernels: list[Kernel] = []
    qp = TensorSpec("seer_Qp", (B, H, T, d), e, "scratch")
    tensors[qp.name] = qp
    kernels.append(with_op(sc.pool_kernel("seer_pool_q", Q, qp, BLOCK, rows_per_cta=1), "pool_mean", "seer_pool_mean"))
    kp, kpt = k_pool_kernels(p, "seer_", ("max", "min"), BLOCK)
    kernels += kp
    tensors |= kpt
    wk = TensorSpec("Wk", (H, 2 * d, w), e, "input")
    kg = TensorSpec("seer_Kg", (B, H, T, w), e, "scratch")
    tensors |= {wk.name: wk, kg.name: kg}
    kernels.append(linear_kernel("seer_gate_k", [kpt["seer_Kmax"], kpt["seer_Kmin"]], wk, kg,
                                 head_of=(lambda h: sp.floor(h / g)) if g > 1 else None))
    qg = qp
    if d != w:
        wq = TensorSpec("Wq", (H, d, w), e, "input")
        qg = TensorSpec("seer_Qg", (B, H, T, w), e, "scratch")
        tensors |= {wq.name: wq, qg.name: qg}
        kernels.append(linear_kernel("seer_gate_q", [qp], wq, qg))
    gs = TensorSpec("seer_GS", (B, H, T, T), e, "scratch")
    gm = TensorSpec("seer_GM", (B, H, T, T), 1, "scratch")
    tensors |= {gs.name: gs, gm.name: gm}
    kernels.append(sc.score_kernel("seer_gate_score", qg, kg, gs, tile_a=64, tile_b=64))
    if method == 0:
        gp = TensorSpec("seer_GP", (B, H, T, T), e, "scratch")
        tensors[gp.name] = gp
        kernels.append(row_kernel("seer_gate_softmax", "seer_gate_softmax", gs, gp, T, exp=1, other=5))
        kernels.append(row_kernel("seer_gate_select", "seer_gate_select", gp, gm, T, other=3))
    else:
        kernels.append(row_kernel("seer_gate_select", "seer_gate_select", gs, gm, T,
                                  other=2 * max(1, math.ceil(math.log2(max(T, 2)))) + 2))
    rep, rep_t = repeat_kv_kernels(p, "seer_", rows=BLOCK)
    kernels += rep
    tensors |= rep_t
    fcfg = replace(cfg, grid_order=("m", "h", "b"), kv_order="ascending", num_warps=4)
    tabs, ph_tab = tile_tables(p, mask, BLOCK, BLOCK, BLOCK, "seer_")
    fwd = listed_fwd_kernel(p, fcfg, ph_tab, hw, "seer_fwd", "seer_", kv_names=("K_rep", "V_rep") if rep else ("K", "V"),
                            kv_heads=H if rep else None, lse=False, fa2_launch=False)
    i, b, h = var("pid_m"), var("b"), var("h")
    mrow = Tile(gm.name, (point(b, B), point(h, H), Span(i, 1, T), Span(0, T, i + 1 if p.causal else T)))
    fwd = replace(fwd, body=(Load("gmask", mrow),) + fwd.body,
                  buffers=fwd.buffers + (Buffer("gmask", (1, T), 1, "reg"),))
    kernels.append(fwd)
    tables = dict(tabs)
    tables["seer_meta"] = np.array([method, int(round(float(threshold) * 1e12)), nz_topk(float(nz_ratio), T),
                                    int(p.causal), w, int(bool(last_block_dense))], dtype=np.int64)
    tables["seer_rows"] = np.array([T], dtype=np.int64)
    notes = (f"SeerAttention prefill: gate Qavg_Kmaxmin on {BLOCK}-token blocks, width {w}, {sparsity_method}"
             + (f", GQA: repeat_kv materialised (+2·N·d·{g - 1} per KV head)" if rep else ""),
             f"selection: {src}; {kept:.1%} of {'causal-valid ' if p.causal else ''}64-blocks kept, mask "
             f"{'per head' if ph_tab else 'shared by heads'}",
             "kernel: Triton block_sparse_triton_fn 64×64, 4 warps, 2 stages, KV ascending, no LSE"
             + ("" if p.causal else "; the released kernel is causal only: non-causal is iosim's extension"),
             "left out: RoPE of the pooled Q/K, masked_fill and the 1/√w scale as passes of their own, the HF "
             "transposes of Q, K, V, O, the kernel's int32 tables")
    return Schedule("seerattention", p, cfg, tensors, tuple(kernels), notes, tables=tables)


# --- SeerAttention-R ------------------------------------------------------------------------------------------------

def splits_heuristic(total_mblocks: int, num_sms: int, num_n_blocks: int, num_m_blocks: int, size_one_kv_head: int,
                     is_causal_or_local: bool, max_splits: int) -> int:
    """``num_splits_heuristic`` of SeerAttention's ``kernels/varlen/utils.py`` (FA3's, L2 assumed 50 MB)."""
    if total_mblocks >= 0.8 * num_sms:
        size_l2 = 50 * 1024 * 1024
        if size_one_kv_head > size_l2 and num_m_blocks >= num_sms * 2 and not is_causal_or_local:
            return min((size_one_kv_head + size_l2 - 1) // size_l2, max_splits)
        return 1
    if num_n_blocks <= 4:
        return 1
    max_splits = min(max_splits, num_sms, num_n_blocks)
    eff = []
    for s in range(1, max_splits + 1):
        n_waves = total_mblocks * s / num_sms
        eff.append(n_waves / math.ceil(n_waves))
    best = max(eff)
    for s in range(1, max_splits + 1):
        if eff[s - 1] >= 0.85 * best:
            return s
    return 1


def decode_rule(p: Problem, method: int, tau: float, budget_blocks: int):
    """scores (probabilities [B, H, 1, N]) → kept blocks [B, H_kv, T]: 64-token max-pool, mean over the group's
    query heads, normalised, threshold / top-k, last block forced."""
    def rule(s):
        s = np.asarray(s, dtype=np.float64)
        if s.ndim != 4 or s.shape[:3] != (p.batch, p.heads, 1) or s.shape[3] != p.seq_kv:
            raise IosimError(f"seerattention_r: decode scores must be [B, H, 1, N_kv] = [{p.batch}, {p.heads}, 1, "
                             f"{p.seq_kv}], got {s.shape}")
        pooled = sc.pool_blocks(s, 1, BLOCK, "max")[:, :, 0]  # [B, H, T]
        g = p.heads // p.kv_heads
        pooled = pooled.reshape(p.batch, p.kv_heads, g, -1).mean(axis=2)
        tot = pooled.sum(axis=-1, keepdims=True)
        pooled = pooled / np.where(tot > 0, tot, 1.0)
        keep = threshold_or_topk(pooled, method, tau, budget_blocks, np.ones(pooled.shape, dtype=bool))
        keep[..., -1] = True
        return keep
    return rule


def decode_blocks(p: Problem, density, seed, table, scores, rule) -> tuple[np.ndarray, str]:
    """[B, H_kv, T] kept blocks of a decode step (the last block forced)."""
    given = [n for n, v in (("density", density), ("table", table), ("scores", scores)) if v is not None]
    if len(given) > 1:
        raise IosimError(f"seerattention_r: give one of density, table or scores, not {' and '.join(given)}")
    T = cdiv(p.seq_kv, BLOCK)
    shape = (p.batch, p.kv_heads, T)
    if table is not None:
        if isinstance(table, str):
            import os
            if not os.path.isfile(table):
                raise IosimError(f"block table {table!r} does not exist; give a .npy file of a bool block mask")
            table = np.load(table)
        m = np.asarray(table)
        if m.dtype != bool:
            raise IosimError(f"seerattention_r: a block table must be boolean, got dtype {m.dtype}")
        try:
            m = np.broadcast_to(m, shape).copy()
        except ValueError:
            raise IosimError(f"seerattention_r: decode block table of shape {m.shape}; give [T], [H_kv, T] or "
                             f"[B, H_kv, T] with T = {T}") from None
        m[..., -1] = True
        return m, "block table"
    if scores is not None:
        return np.asarray(rule(scores)), "selected from the given scores"
    d = 1.0 if density is None else float(density)
    sc.check_params("seerattention_r", density=(d, 0.0, 1.0))
    flat = Problem(1, p.batch * p.kv_heads, p.batch * p.kv_heads, 1, p.seq_kv, p.head_dim, p.dtype, False)
    forced = np.zeros((1, T), dtype=bool)
    forced[0, -1] = True
    m = sc.density_blocks(flat, 1, BLOCK, d, seed, forced=forced, per_head=True)
    return m.reshape(shape), f"density {d:g} of the blocks per (batch, KV head), seed {seed}"


def _decode_kernels(p: Problem, ns: int, max_sel: int, block_h: int) -> tuple[Kernel, Kernel]:
    B, H, Hk, N, d = p.batch, p.heads, p.kv_heads, p.seq_kv, p.head_dim
    g = H // Hk
    vh = min(block_h, g)
    b, hid, s, t = var("b"), var("hid"), var("split"), var("t")
    grid = (GridAxis("b", b, B), GridAxis("h", hid, H // vh), GridAxis("n", s, ns))
    heads = Span(0, block_h, H - hid * vh, hid * vh)  # T.copy of block_H query rows from the group's first
    kvh = hid if vh == g else sp.floor(hid * vh / g)
    bps, rem = max_sel // ns, max_sel % ns
    start = bps * s + sp.Min(s, rem)
    j = lookup(table("sr_idx"), b, kvh, start + t)
    stop = lookup(table("sr_num"), b, kvh, s)
    cols = Span(j, BLOCK, N)
    body = (
        Load("q", Tile("Q", (point(b, B), heads, full(1), full(d)))),
        Loop(t, 0, stop, flash2.kv_step(p, b, kvh * g, heads, cols)),
        flash2.finalize(p, heads, "finalize_split"),
        Store("acc", Tile("seer_Opart", (point(b, B), point(s, ns), Span(hid, vh, H), full(d)))),
        Store("lse", Tile("seer_LSEpart", (point(b, B), point(s, ns), Span(hid, vh, H)))),
    )
    dec = Kernel("seer_r_decode", grid, flash2.buffers(block_h, BLOCK, d, p.elem_bytes), body, threads_per_cta=128)
    h = var("h")
    cgrid = (GridAxis("h", h, H), GridAxis("b", b, B))
    cbody = (
        Loop(s, 0, ns, (
            Load("lse_s", Tile("seer_LSEpart", (point(b, B), point(s, ns), point(h, H)))),
            Load("o_s", Tile("seer_Opart", (point(b, B), point(s, ns), point(h, H), full(d)))),
            Compute("combine_step", ("lse_s", "o_s", "m", "l", "acc"), exp=(Work(2, ()),), other=(Work(2 * d + 4, ()),)),
        )),
        Compute("finalize", ("acc", "m", "l", "lse"), exp=(Work(1, ()),), other=(Work(d + 1, ()),)),
        Store("acc", Tile("O", (point(b, B), point(h, H), full(1), full(d)))),
    )
    cbufs = (Buffer("lse_s", (1,), STAT_BYTES, "reg"), Buffer("o_s", (1, d), 4, "reg"), Buffer("m", (1,), 4, "reg"),
             Buffer("l", (1,), 4, "reg"), Buffer("acc", (1, d), 4, "reg"), Buffer("lse", (1,), 4, "reg"))
    return dec, Kernel("seer_r_combine", cgrid, cbufs, cbody, threads_per_cta=128)


@register("seerattention_r", "SeerAttention-R: decode with a K-compression-cache gate (group-pooled query), block "
          "selection, TileLang split-KV sparse GQA decode + combine; prefill dense FA2 + cache build")
def build_r(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
            sparsity_method: str = "threshold", threshold: float = DECODE_THRESHOLD, token_budget: int = TOKEN_BUDGET,
            gate_width: int = GATE_WIDTH, num_splits: int | None = None, block_h: int = 64) -> Schedule:
    """Decode (seq_q = 1) or prefill (seq_q > 1). num_splits: the split count (None: the repo's heuristic rounded
    down to {1, 2, 4, 8, 16}); block_h: query rows per CTA (64: the group padded for wgmma)."""
    concrete(p, "seerattention_r")
    check_head_dim(p, "seerattention_r")
    method = _method(sparsity_method, ("threshold", "token_budget"), "seerattention_r")
    sc.check_params("seerattention_r", threshold=(threshold, 0.0, 1.0), token_budget=(token_budget, 1, None),
                    gate_width=(gate_width, 1, None), block_h=(block_h, 1, None))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (token_budget, gate_width, block_h)):
        raise IosimError("seerattention_r: token_budget, gate_width and block_h must be positive integers")
    B, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    T, w, g = cdiv(N, BLOCK), gate_width, p.heads // p.kv_heads
    tensors = qkvo_tensors(p)
    if p.seq_q > 1:  # prefill: dense FA2 and the K compression cache (K pools + linear per KV head)
        if any(v is not None for v in (density, table, scores)):
            raise IosimError("seerattention_r: the R models prefill densely; density, table and scores apply to "
                             "decode (seq_q = 1)")
        kp, kpt = k_pool_kernels(p, "seer_r_", ("max", "min", "avg"), BLOCK)
        wk = TensorSpec("WkR", (Hk, 3 * d, w), e, "input")
        kc = TensorSpec("Kc", (B, Hk, T, w), e, "output")
        lin = linear_kernel("seer_r_gate_k", [kpt["seer_r_Kmax"], kpt["seer_r_Kmin"], kpt["seer_r_Kavg"]], wk, kc)
        dense = flash2.build(p, cfg, hw)
        tensors = dict(dense.tensors) | kpt | {wk.name: wk, kc.name: kc}
        return Schedule("seerattention_r", p, dense.config, tensors, tuple(kp) + (lin,) + dense.kernels,
                        ("SeerAttention-R prefill: dense FlashAttention-2 plus the K compression cache (K max/min/avg "
                         f"pools over {BLOCK} tokens, linear 3d → {w} per KV head)",) + dense.notes)
    p = replace(p, causal=False)  # one query sees the whole cache (FA2 drops causal for seqlen_q = 1)
    budget = max(1, token_budget // BLOCK)
    mask, src = decode_blocks(p, density, seed, table, scores, decode_rule(p, method, float(threshold), budget))
    counts = mask.sum(axis=-1)
    max_sel = int(counts.max())
    order = np.argsort(~mask[..., ::-1], axis=-1, kind="stable")  # kept blocks first, descending block index
    desc = (T - 1 - order)[..., :max_sel]
    vh = min(block_h, g)
    if num_splits is None:
        if hw is None:
            ns = 1
        else:
            total = B * Hk * (g // vh) * cdiv(g, block_h)
            hs = splits_heuristic(total, hw.sm_count, max_sel, cdiv(g, block_h), max_sel * BLOCK * 2 * d * 2, True, 128)
            ns = max(x for x in SPLITS if x <= max(1, min(hs, 16)))
        how = "the repo's num_splits_heuristic, rounded down to the autotuner's {1, 2, 4, 8, 16}"
    else:
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
            raise IosimError(f"seerattention_r: num_splits={num_splits!r} must be a positive integer")
        ns, how = num_splits, "given"
    bps, rem = max_sel // ns, max_sel % ns
    starts = np.array([bps * s_ + min(s_, rem) for s_ in range(ns)])
    lens = np.array([bps + (1 if s_ < rem else 0) for s_ in range(ns)])
    num = np.clip(counts[..., None] - starts, 0, lens)  # valid entries of each split's range (sorted, −1 last)
    qg = TensorSpec("seer_r_Qg", (B, Hk, w), e, "scratch")
    wq = TensorSpec("WqR", (Hk, g, d, w), e, "input")
    kc = TensorSpec("Kc", (B, Hk, T, w), e, "input")
    gs = TensorSpec("seer_r_GS", (B, Hk, T), e, "scratch")
    si = TensorSpec("seer_r_SI", (B, Hk, max_sel), 4, "scratch")
    tensors |= {t_.name: t_ for t_ in (qg, wq, kc, gs, si)}
    tensors |= {"seer_Opart": TensorSpec("seer_Opart", (B, ns, H, d), 4, "scratch"),
                "seer_LSEpart": TensorSpec("seer_LSEpart", (B, ns, H), STAT_BYTES, "scratch")}
    b, hk, x = var("b"), var("hk"), var("x")
    ggrid = (GridAxis("h", hk, Hk), GridAxis("b", b, B))
    gi = var("gi")
    gq = Kernel("seer_r_gate_q", ggrid, (Buffer("q", (d,), e, "reg"), Buffer("w", (d, w), e, pipelined=True),
                                          Buffer("y", (w,), 4, "reg")), (
        Loop(gi, 0, g, (  # one query head of the group at a time: y += q_h · W[k, h]
            Load("q", Tile("Q", (point(b, B), point(hk * g + gi, H), full(1), full(d)))),
            Load("w", Tile("WqR", (point(hk, Hk), point(gi, g), full(d), full(w)))),
            Compute("seer_r_qproj", ("q", "w", "y"), matmul=(Work(2 * d * w, ()),)),
        )),
        Store("y", Tile(qg.name, (point(b, B), point(hk, Hk), full(w)))),
    ), threads_per_cta=128)
    rows = Span(x, 128, T)
    gscore = Kernel("seer_r_gate_score", ggrid, (Buffer("qg", (w,), e, "reg"), Buffer("kc", (128, w), e, pipelined=True),
                                                  Buffer("s", (128,), 4, "reg")), (
        Load("qg", Tile(qg.name, (point(b, B), point(hk, Hk), full(w)))),
        Loop(x, 0, cdiv(T, 128), (
            Load("kc", Tile("Kc", (point(b, B), point(hk, Hk), rows, full(w)))),
            Compute("seer_r_score", ("qg", "kc", "s"), matmul=(Work(2 * w, (rows,)),)),
            Store("s", Tile(gs.name, (point(b, B), point(hk, Hk), rows))),
        )),
    ), threads_per_cta=128)
    sel_flops = 6 if method == 0 else 2 * max(1, math.ceil(math.log2(max(T, 2)))) + 4
    gsel = Kernel("seer_r_select", ggrid, (Buffer("row", (T,), e), Buffer("idx", (max_sel,), 4, "reg")), (
        Load("row", Tile(gs.name, (point(b, B), point(hk, Hk), full(T)))),
        Compute("seer_r_select", ("row", "idx"), exp=(Work(1, (full(T),)),), other=(Work(sel_flops, (full(T),)),)),
        Store("idx", Tile(si.name, (point(b, B), point(hk, Hk), full(max_sel)))),
    ), threads_per_cta=128)
    dec, comb = _decode_kernels(p, ns, max_sel, block_h)
    tables = {"sr_idx": desc.astype(np.int64), "sr_num": num.astype(np.int64),
              "seer_meta": np.array([method, int(round(float(threshold) * 1e12)), budget, 0, w, 0], dtype=np.int64)}
    kept = float(mask.mean())
    notes = (f"SeerAttention-R decode: gate Qproj + K compression cache ({T} blocks × {w} per KV head), "
             f"{sparsity_method}; TileLang split-KV GQA kernel, block_H {block_h} ({vh} valid rows per CTA), "
             f"num_split {ns} ({how}), {max_sel} block slots per (batch, KV head)",
             f"selection: {src}; {kept:.1%} of the {T} blocks kept (last block forced)",
             "left out: the gate's RoPE/qk-norm, the K compression cache update every 64 tokens, the int32 index "
             "reads of the kernel")
    cfg = cfg.with_tiles(block_h, BLOCK)
    return Schedule("seerattention_r", p, cfg, tensors, (gq, gscore, gsel, dec, comb), notes, tables=tables)
