"""PSA — Pyramid Sparse Attention (Li et al., arXiv 2512.04025; code ziplab/Pyramid-Sparse-Attention, mirrored as
xiaolong-li1/Pyramid-Sparse-Attention @5997f4c: ``src/psa_triton/kernels/psa_kernel_opt.py``, ``README.md``).

Instead of keeping or dropping a KV block, each (query block i, KV block j) pair gets a pyramid level h ∈ {0, 1, …, L}:
h = 0 drops the block, h ≥ 1 attends to the block's keys and values mean-pooled 2^(h−1)× (K¹ = K, K^{h+1} =
MeanPool(K^h, 2, 2)). A pooled key stands for 2^(h−1) keys, so its logit gets + ln 2^(h−1) (``pooling_bias =
log(pooling_level)`` in ``_fwd_kernel_inner``): the softmax mass of the block is kept.

Kernels (per (b, KV head) for the pyramid, per (b, h) for attention; N = N_kv, B = the KV block, cfg.block_n):
1. ``psa_pyramid`` (pre-pass): reads K and V once (2·N·d), writes levels 2..L: Σ_{h=2}^{L} 2·⌈N/2^(h−1)⌉·d. One CTA per
   KV block of B rows computes all levels from it (a fused pyramid). ``pyramid='torch'`` instead models the repo's
   PyTorch chain (``pooling()`` → ``torch.mean`` per level, each level read back to make the next: L − 1 launches per
   tensor, reads 2·N·d·(1 + ½ + … )).
2. ``psa_fwd``: FA2's loop per query block over the listed pairs, level by level (the kernel's mask lists level-1
   blocks first, then 2×, 4×, 8×, ``MASK_MODE`` doubling at each −1 separator); a pair at level h loads a pooled K and
   V tile of B/2^(h−1) rows: reads Q once, Σ_pairs 2·d·B/2^(h−1); writes O and LSE. Work per pair as flash2 on
   r × B/2^(h−1) elements (+ r·c for the pooling bias).

Choices left open, and which were taken:
* the level table (``level_fractions`` f₁…f_L: the fraction of each query block's valid KV blocks at each level, the rest
  dropped; default 0.10, 0.05, 0.00, 0.20 — ``mask_ratios`` of README.md's default PSAConfig {1: (0, .1), 2: (.1, .15),
  4: (.15, .15), 8: (.15, .35), 0: (.35, 1)}) — from (a) a seeded random importance (``seed``), (b) ``table``: an int
  file of levels 0..L (a bool table: True = level 1), or (c) ``scores``: importance (attention probabilities,
  [N_q, N_kv] or [B, H, N_q, N_kv]) summed over each bm × B block, blocks ranked per row, rank r of n valid blocks at
  level h when ⌊n·(f₁+…+f_{h−1})⌋ ≤ r < ⌊n·(f₁+…+f_h)⌋ (the repo's ``transfer_attn_to_mask`` 'topk' rule; its alignment
  of interval lengths to whole kernel tiles and its forced text blocks are left out). ``density`` alone keeps that
  fraction at level 1 and drops the rest (binary block sparsity, as selection.choose_blocks).
* tiles: block_m 128, B = block_n 64 (README defaults). The repo's kernel walks pooled blocks in tile_n = 32 key
  steps (two steps for a 64-row level-1 block, two 16-row 4× blocks merged into one step): same bytes; the steps are
  modelled per pair (B/2^(h−1) rows), so matmul tiles narrower than 16 keys are counted as issued at their own width.
* causal: blocks crossing the diagonal are kept at level 1 (exact masking); pooled levels only go to blocks every row
  of the query block sees whole (the repo's video kernels are non-causal; its causal kernel handles pooled tokens
  inside the diagonal block, not modelled).
* ragged tails: the last pooled row of a level averages the keys it holds and takes + ln(their count) (the repo pads
  with copies of the last row instead: same bytes, slightly different values).
Not modelled: the importance estimator (random sampling of a quarter of each block's tokens and the pooled attention on
them, ``efficient_attn_with_pooling``), the key-similarity constraint (``use_sim_mask``) and the level sort; the
kernel's exp2 form.
"""

from __future__ import annotations

import os

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, kv_head, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models.block_sparse import compress, normalize_mask
from iosim.models.sparse.selection import MAX_MASK_BLOCKS, check_params, pool_blocks, valid_blocks
from iosim.problem import KernelConfig, Problem
from iosim.reference import op_qk, register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, full, lookup, point, table, var)

MAX_LEVELS = 5
DEFAULT_FRACTIONS = (0.10, 0.05, 0.00, 0.20)
"""Fractions of valid KV blocks per query block at levels 1 (full), 2 (2×), 3 (4×), 4 (8×); the rest (65%) dropped:
README.md's default PSAConfig mask_ratios (src/psa_triton/README.md, 'Full Config Reference')."""


def level_name(t: str, h: int) -> str:
    """Tensor of level h: K, V at h = 1; K2, V2, K4, V4, … (pooled 2^(h−1)×) above."""
    return t if h == 1 else f"{t}{2 ** (h - 1)}"


# --- reference ops ---------------------------------------------------------------------------------------------------

def _group_counts(first_row: int, rows: int, factor: int, n: int) -> np.ndarray:
    """Keys held by pooled rows first_row … first_row + rows − 1 of a factor× pooled axis of n keys."""
    x = np.arange(first_row, first_row + rows)
    return np.clip(n - x * factor, 0, factor)


@register_op("psa_pyramid")
def op_psa_pyramid(ctx, src, *dst):
    """dst[h−2] = src mean-pooled 2^(h−1)× (levels 2..L of one KV block; each pooled row averages the keys it holds)."""
    r = src.ext[0]
    for k, buf in enumerate(dst):
        f = 2 ** (k + 1)
        rows = -(-r // f)
        x = np.pad(src.data[:r], ((0, rows * f - r), (0, 0)))
        cnt = np.clip(r - np.arange(rows) * f, 1, f)
        buf.value(0.0)[:rows] = x.reshape(rows, f, -1).sum(axis=1) / cnt[:, None]
        buf.set((src.origin[0] // f, 0), (rows, buf.data.shape[1]))


@register_op("psa_fresh")
def op_psa_fresh(ctx, *bufs):
    """The next pair's K/V tile lands at the buffer's start whatever its size (pooled tiles are smaller than B)."""
    for b in bufs:
        b.fresh = True


def _pooled_qk(level: int):
    f = 2 ** (level - 1)

    def op(ctx, q, k, s):
        """S = scale·Q K_hᵀ + ln(keys per pooled row) (PSA's pooling bias); key positions = each row's first key."""
        op_qk(ctx, q, k, s)
        r, c = s.ext
        cnt = _group_counts(k.origin[0], c, f, int(ctx.problem.seq_kv))
        s.data[:r, :c] += np.log(np.maximum(cnt, 1))[None, :]
        s.pos = {0: None, 1: (k.origin[0] + np.arange(c)) * f}
    return op


for _h in range(2, MAX_LEVELS + 1):
    register_op(f"psa_qk_{_h}")(_pooled_qk(_h))


# --- level tables ---------------------------------------------------------------------------------------------------

def parse_fractions(fr, levels: int) -> tuple[float, ...]:
    """level_fractions as a tuple of ``levels`` numbers in [0, 1] summing to ≤ 1 ('0.1,0.05,0,0.2' or a sequence)."""
    if isinstance(fr, str):
        try:
            fr = tuple(float(x) for x in fr.split(",") if x.strip())
        except ValueError:
            raise IosimError(f"psa: level_fractions={fr!r}; write comma-separated numbers, e.g. 0.1,0.05,0,0.2") from None
    if isinstance(fr, (int, float)):
        fr = (float(fr),)
    fr = tuple(float(x) for x in fr)
    if len(fr) != levels or any(not 0 <= x <= 1 for x in fr) or sum(fr) > 1 + 1e-9:
        raise IosimError(f"psa: level_fractions={fr} must be {levels} numbers in [0, 1] (levels 1..{levels}) summing to "
                         "at most 1; the rest of the blocks are dropped")
    return fr


def levels_from_importance(imp: np.ndarray, valid: np.ndarray, fractions) -> np.ndarray:
    """Per row, rank valid blocks by importance (descending); rank r of n valid gets level h when
    ⌊n·c_{h−1}⌋ ≤ r < ⌊n·c_h⌋ (c_h = f₁ + … + f_h), else 0 (dropped). int8 levels, shape of imp."""
    s = np.where(valid, np.asarray(imp, dtype=np.float64), -np.inf)
    order = np.argsort(-s, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(s.shape[-1]), s.shape), axis=-1)
    n = np.broadcast_to(valid, s.shape).sum(axis=-1, keepdims=True)
    cum = np.concatenate([[0.0], np.cumsum(fractions)])
    ends = np.floor(n[..., None] * cum).astype(np.int64)  # [..., 1, L+1]
    lev = np.zeros(s.shape, dtype=np.int8)
    for h in range(1, len(fractions) + 1):
        lev[(rank >= ends[..., h - 1]) & (rank < ends[..., h])] = h
    return np.where(valid, lev, 0).astype(np.int8)


def choose_levels(p: Problem, bm: int, bn: int, levels: int, *, density, seed, table, scores, fractions
                  ) -> tuple[np.ndarray, str]:
    """(levels [T_r, T_c] or [B, H, T_r, T_c] int8, description) from one source; causal: every valid block crossing
    the diagonal is level 1."""
    given = [n for n, v in (("density", density), ("table", table), ("scores", scores)) if v is not None]
    if len(given) > 1:
        raise IosimError(f"psa: give one of density, table or scores, not {' and '.join(given)}")
    if density is not None and fractions is not None:
        raise IosimError("psa: give density (all kept blocks at level 1) or level_fractions, not both")
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    valid = valid_blocks(p, bm, bn)
    fr = parse_fractions(DEFAULT_FRACTIONS if fractions is None and levels == len(DEFAULT_FRACTIONS) else
                         fractions if fractions is not None else (1.0,) + (0.0,) * (levels - 1), levels)
    if table is not None:
        if isinstance(table, (str, os.PathLike)):
            if not os.path.isfile(str(table)):
                raise IosimError(f"psa: level table {table!r} does not exist; give a .npy of int levels 0..{levels}")
            data = np.load(table)
            data = data[list(data.keys())[0]] if isinstance(data, np.lib.npyio.NpzFile) else data
        else:
            data = np.asarray(table)
        if data.dtype == bool:
            data = data.astype(np.int8)
        if data.dtype.kind not in "iu" or data.min(initial=0) < 0 or data.max(initial=0) > levels:
            raise IosimError(f"psa: a level table holds integers 0..{levels} (0 = dropped) or bools; got dtype "
                             f"{data.dtype}, range [{data.min(initial=0)}, {data.max(initial=0)}]")
        lev = normalize_mask(p, data.astype(np.int64) > 0, tm, tn)  # shape check; values below
        lev = np.broadcast_to(data, lev.shape).astype(np.int8)
        src = f"level table {table if isinstance(table, (str, os.PathLike)) else 'given'}"
    elif scores is not None:
        s = np.load(scores) if isinstance(scores, str) else np.asarray(scores)
        if s.ndim not in (2, 4) or s.shape[-2:] != (p.seq_q, p.seq_kv):
            raise IosimError(f"psa: scores have shape {s.shape}; give [N_q, N_kv] = [{p.seq_q}, {p.seq_kv}] or "
                             f"[B, H, {p.seq_q}, {p.seq_kv}] (attention probabilities)")
        lev = levels_from_importance(pool_blocks(s, bm, bn, "sum"), valid, fr)
        src = f"scores: block sums ranked per query block, fractions {fr}"
    else:
        if density is not None:
            check_params("psa", density=(density, 0.0, 1.0))
            fr = (float(density),) + (0.0,) * (levels - 1)
        if tm * tn > MAX_MASK_BLOCKS:
            raise IosimError(f"psa: {tm}×{tn} blocks are too many to hold; use a larger block_m / block_n")
        imp = np.random.default_rng(seed).random((tm, tn))
        lev = levels_from_importance(imp, valid, fr)
        src = f"random importance (seed {seed}), fractions {fr}"
    if p.causal:
        whole = _whole_blocks(p, bm, bn)
        lev = np.where(valid & ~whole & (lev > 0), 1, lev).astype(np.int8)
    return np.where(valid, lev, 0).astype(np.int8), src


def _whole_blocks(p: Problem, bm: int, bn: int) -> np.ndarray:
    """[T_r, T_c]: blocks every row of the query block sees whole (causal: last key ≤ first row + N_kv − N_q)."""
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    first_row = np.arange(tm) * bm
    last_key = np.minimum((np.arange(tn) + 1) * bn, p.seq_kv) - 1
    return last_key[None, :] <= (first_row + p.seq_kv - p.seq_q)[:, None]


# --- kernels --------------------------------------------------------------------------------------------------------

def pyramid_kernel(p: Problem, bn: int, levels: int) -> Kernel:
    """One CTA per (KV block of bn rows, b, KV head): load K then V rows of the block, write their pooled levels."""
    B, Hk, N, d, e = p.batch, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    j, b, h = var("pid_m"), var("b"), var("h")
    body = []
    for t in "KV":
        body.append(Load("src", Tile(t, (point(b, B), point(h, Hk), Span(j, bn, N), full(d)))))
        dst = tuple(f"dst{lv}" for lv in range(2, levels + 1))
        body.append(Compute("psa_pyramid", ("src",) + dst, other=(Work(1, (Span(j, bn, N), full(d))),)))
        for lv in range(2, levels + 1):
            f = 2 ** (lv - 1)
            body.append(Store(f"dst{lv}", Tile(level_name(t, lv), (point(b, B), point(h, Hk),
                                                                   Span(j, bn // f, cdiv(N, f)), full(d)))))
    bufs = (Buffer("src", (bn, d), e),) + tuple(Buffer(f"dst{lv}", (bn // 2 ** (lv - 1), d), 4, "reg")
                                               for lv in range(2, levels + 1))
    grid = (GridAxis("m", j, cdiv(N, bn)), GridAxis("b", b, B), GridAxis("h", h, Hk))
    return Kernel("psa_pyramid", grid, bufs, tuple(body), threads_per_cta=128)


def torch_pyramid_kernels(p: Problem, levels: int, tensors: dict, rows_per_cta: int = 128) -> tuple[Kernel, ...]:
    """The repo's chain (``pooling``: torch.mean over pairs of rows), one launch per level and tensor: level h − 1 read
    (rows_per_cta rows a CTA), level h written (kernels.pool_kernel's IO; built here because its reference op leaves a
    1-axis origin on a 2-axis buffer)."""
    out = []
    j, b, h = var("pid_m"), var("b"), var("h")
    for t in "KV":
        for lv in range(2, levels + 1):
            src, dst = tensors[level_name(t, lv - 1)], tensors[level_name(t, lv)]
            B, Hk, n, d = src.dims
            body = (Load("src", Tile(src.name, (point(b, B), point(h, Hk), Span(j, rows_per_cta, n), full(d)))),
                    Compute("psa_pyramid", ("src", "dst"), other=(Work(1, (Span(j, rows_per_cta, n), full(d))),)),
                    Store("dst", Tile(dst.name, (point(b, B), point(h, Hk), Span(j, rows_per_cta // 2, dst.dims[2]),
                                                 full(d)))))
            grid = (GridAxis("m", j, cdiv(n, rows_per_cta)), GridAxis("b", b, B), GridAxis("h", h, Hk))
            out.append(Kernel(f"psa_pool_{dst.name}", grid, (Buffer("src", (rows_per_cta, d), src.elem_bytes),
                                                              Buffer("dst", (rows_per_cta // 2, d), 4, "reg")), body))
    return tuple(out)


def attention_kernel(p: Problem, cfg: KernelConfig, levels: int, lev: np.ndarray, hw) -> tuple[Kernel, dict]:
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm = cdiv(p.seq_q, bm)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i = vs["b"], vs["h"], vs["m"]
    rows = Span(i, bm, p.seq_q)
    lead = (b, h) if lev.ndim == 4 else ()
    body, tables = [Load("q", q_tile(p, "Q", b, h, rows))], {}
    for lv in range(1, levels + 1):
        num, idx = compress(lev == lv)
        if not num.any():
            continue
        tables |= {f"psa_num_{lv}": num, f"psa_idx_{lv}": idx}
        t = var(f"t{lv}")
        j = lookup(table(f"psa_idx_{lv}"), *lead, i, t)
        f = 2 ** (lv - 1)
        cols = Span(j, bn // f, cdiv(p.seq_kv, f))

        def kv(name):
            return Tile(level_name(name, lv), (point(b, p.batch), point(kv_head(p, h), p.kv_heads), cols, full(d)))
        step = (
            Compute("psa_fresh", ("k", "v")),
            Load("k", kv("K")),
            Compute("qk" if lv == 1 else f"psa_qk_{lv}", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),),
                    other=() if lv == 1 else (Work(1, (rows, cols)),)),
            Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                    other=(Work(4, (rows, cols)), Work(d + 4, (rows,)))),
            Load("v", kv("V")),
            Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
        )
        body.append(Loop(t, 0, lookup(table(f"psa_num_{lv}"), *lead, i), step))
    body += [flash2.finalize(p, rows), Store("acc", q_tile(p, "O", b, h, rows)),
             Store("lse", row_tile(p, "LSE", b, h, rows))]
    kernel = Kernel("psa_fwd", grid, flash2.buffers(bm, bn, d, e), tuple(body), threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    return kernel, tables


@register("psa", "Pyramid Sparse Attention: per (query block, KV block) a pooling level (dropped, 1×, 2×, 4×, 8×); "
          "pyramid pre-pass + block-sparse kernel over pooled K/V tiles")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          level_fractions=None, levels: int = 4, pyramid: str = "fused") -> Schedule:
    """level_fractions: fractions of each query block's valid KV blocks at levels 1..L (default README's
    0.1,0.05,0,0.2); levels: L (pooling up to 2^(L−1)×, the kernel's 8× at L = 4); pyramid: 'fused' (one pre-pass
    kernel) or 'torch' (the repo's chain of torch.mean launches); density / seed / table / scores: module docstring."""
    check_head_dim(p, "psa")
    for n in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim"):
        if not isinstance(getattr(p, n), int):
            raise IosimError("psa: needs concrete sizes (its loops depend on the level table)")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise IosimError(f"psa: levels={levels!r}; give an integer 1..{MAX_LEVELS} (pooling up to 2^(levels−1)×)")
    if pyramid not in ("fused", "torch"):
        raise IosimError(f"psa: pyramid={pyramid!r}; give 'fused' (one pre-pass kernel) or 'torch' (the repo's chain)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise IosimError(f"psa: seed={seed!r} must be an integer")
    cfg = cfg.with_tiles(cfg.block_m or 128, cfg.block_n or 64)
    bm, bn = cfg.block_m, cfg.block_n
    if bn % 2 ** (levels - 1):
        raise IosimError(f"psa: block_n={bn} must be a multiple of 2^(levels−1) = {2 ** (levels - 1)} (a KV block "
                         "pooled to whole rows at every level)")
    lev, src = choose_levels(p, bm, bn, levels, density=density, seed=int(seed), table=table, scores=scores,
                             fractions=level_fractions)
    tensors = qkvo_tensors(p) | {"LSE": lse_tensor(p)}
    for t in "KV":
        for lv in range(2, levels + 1):
            n = level_name(t, lv)
            tensors[n] = TensorSpec(n, (p.batch, p.kv_heads, cdiv(p.seq_kv, 2 ** (lv - 1)), p.head_dim),
                                    p.elem_bytes, "scratch")
    attn, tables = attention_kernel(p, cfg, levels, lev, hw)
    pre = () if levels == 1 else ((pyramid_kernel(p, bn, levels),) if pyramid == "fused" else
                                  torch_pyramid_kernels(p, levels, tensors))
    valid = valid_blocks(p, bm, bn)
    nvalid = valid.sum() * (lev.size // valid.size)
    share = [float((lev == h).sum() / nvalid) if nvalid else 0.0 for h in range(levels + 1)]
    kv_frac = sum(share[h] / 2 ** (h - 1) for h in range(1, levels + 1))
    notes = (f"psa: level table {src}; of {int(nvalid):,} valid blocks: " +
             ", ".join(f"{'dropped' if h == 0 else f'{2 ** (h - 1)}×'} {share[h]:.1%}" for h in range(levels + 1)) +
             f"; K/V rows read = {kv_frac:.3f} of block-dense",
             f"pyramid: {pyramid} ({len(pre)} launch{'es' if len(pre) != 1 else ''}), levels 2..{levels}")
    return Schedule("psa", p, cfg, tensors, pre + (attn,), notes, tables)
