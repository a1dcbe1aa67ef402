"""BLASST — skip-softmax attention (Yuan et al., arXiv 2512.12087; TensorRT-LLM "Skip Softmax Attention",
docs/source/blogs/tech_blog/blog16_Accelerating_Long_Context_Inference_with_Skip_Softmax_Attention.md).

No pre-pass and no extra kernel: inside FlashAttention's KV loop, after S = QKᵀ of a tile, the tile is *skipped* when
for every row r of the tile its local max m̃_r falls below the running max m_r by more than −ln λ:

    m̃_r − m_r < ln λ   for all rows r        (exp(m̃_r − m_r) < λ: the tile's probabilities are negligible)

A skipped tile does no exp, no row sum, no O rescale and no P·V; the running max is unchanged (it could only grow by
m̃_r < m_r). λ = a / L (TensorRT-LLM's ``threshold_scale_factor`` a, L the context length N_kv). The decision depends
on the visit order (the running max), so the tiles skipped are a per-tile table evaluated in the kernel's order.

Kernels (the choices the paper leaves open, and why):

* prefill (N_q > 1, ``phase='prefill'``): TensorRT-LLM's fmha_v2 on Hopper is a warp-specialized TMA kernel; it is
  modelled with FA3's structure and tiles (``models/fa3.py``: ``fa3_tiles`` — 128×176 at d = 128 non-causal, 128×128
  causal —, 2 smem stages, one producer + kBlockM/64 consumer warpgroups, ping-pong when two, persistent CTAs with
  FA3's static / LPT tile schedulers), because fmha_v2's own sm90 tile table was not read. **The producer has
  already issued the V load when the skip is decided, so prefill still loads V** (K and V for every visited tile:
  SM bytes = FA2's); only exp, the softmax FLOPs and the P·V MMA are skipped:
  matmul FLOPs 2·c·N²·d·(2 − ρ) per head for a skipped fraction ρ of the visited tiles.
* decode (N_q = 1 or ``phase='decode'``): XQA's multi-block mode modelled as FA2's split-KV decode
  (``models/splitkv.py``: its tiles, GQA packing rule, num_splits heuristic, fp32 partials and combine kernel; the
  split kernel is rebuilt here with the skip in its KV step). The test needs only the tile's scores, so **K is
  always loaded and V only for kept tiles**: per KV head b·N·d·(2 − ρ) bytes of K + V, so speedup ≤ 2/(2 − ρ).
  Each split has its own running max (the rule restarts at each split's first tile).
* visit order: ``cfg.kv_order`` (default ascending, as fmha_v2 and XQA walk the KV sequence from its start;
  FA3/FA2 walk it descending — pass kv_order='descending' to model that).

Which tiles are skipped (``rho`` = skipped fraction of the *visited* tiles; ``density`` = 1 − rho, its alias):
* ``rho``/``density`` + ``seed``: each tile row (a query block; in decode, a split of a KV head's row) skips
  round(ρ·n) of its n visited tiles, never its first-visited one (the running max starts at −∞, so BLASST never skips
  it), the others drawn by ``numpy.random.default_rng(seed)`` (``selection.choose_blocks``);
* ``table``: a bool [T_r, T_c] (or [B, H, T_r, T_c]) file, True = computed, False = skipped (decode: rows are the
  kernel's row blocks: the G query heads of a KV head when GQA-packed, [B, H_k, T_r, T_c]);
* ``scores``: the user's logits S = scale·QKᵀ (natural-log units, [N_q, N_kv] or [B, H, N_q, N_kv]) with
  ``threshold_scale_factor`` a: the rule above applied tile by tile in the kernel's visit order with the running
  max (``skip_rule``).

Work per visited tile of r×c elements: QKᵀ 2·r·c·d; the skip test r·c (tile row max) + 2·r (subtract, compare);
kept tiles add exp r·c + r, other 3·r·c + r·(d + 4) (scale, subtract, row sum — the row max is the test's), P·V
2·r·c·d. Not modelled: the warp vote / shared-memory atomic of the decision, and the load imbalance between CTAs of
different skip counts beyond what the tail rule sees (the persistent scheduler's order is built for unskipped work).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, kv_tile, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models.block_sparse import normalize_mask
from iosim.models.fa3 import STAGES as FA3_STAGES, fa3_tiles
from iosim.models.persistent import (concrete, dynamic_assign, fa3_swizzle, item_tables, l2_swizzle, reset,
                                     static_round_robin, workers_of)
from iosim.models.splitkv import _combine, rounded_head_dim, split_plan
from iosim.models.sparse.common import check_params, choose_blocks
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv,
                            clamp, full, lookup, point, table, var)

KEEP = "blasst_keep"
"""Table name: keep[.., i, j] = 1 if tile (row block i, KV block j) is computed, 0 if skipped."""


@register_op("blasst_test")
def op_blasst_test(ctx, s):
    """The skip test's tile row max and compare: the decision itself is the schedule's keep table (built from the
    source: density, table or the scores rule), so the reference only reads S."""


# --- which tiles are skipped ---------------------------------------------------------------------------------------

def tile_row_max(scores: np.ndarray, bn: int, causal: bool, shift: int) -> np.ndarray:
    """[..., R, Nkv] logits → [..., R, T_c] per-row maxima of each bn-key tile (−∞ where the row sees none of the
    tile: ragged padding, bottom-right causal mask with shift = N_kv − N_q)."""
    s = np.asarray(scores, dtype=np.float64)
    R, n = s.shape[-2:]
    if causal:
        vis = np.arange(n)[None, :] <= np.arange(R)[:, None] + shift
        s = np.where(vis, s, -np.inf)
    tn = -(-n // bn)
    s = np.pad(s, [(0, 0)] * (s.ndim - 2) + [(0, 0), (0, tn * bn - n)], constant_values=-np.inf)
    return s.reshape(*s.shape[:-1], tn, bn).max(axis=-1)


def skip_rule(tmax: np.ndarray, bm: int, order: np.ndarray, restart: np.ndarray, ln_lambda: float) -> np.ndarray:
    """BLASST's rule in visit order. tmax [..., R, T] tile row maxima (``tile_row_max``); rows grouped in blocks of bm
    (a tile's rows); order [T_r, L] the tiles each row block visits, in order (−1: none); restart [T_r, L] True where
    the running max starts again at −∞ (the first tile of a CTA / split). A row votes 'negligible' when its tile max
    is −∞ or m̃ − m < ln λ with m finite; the tile is skipped when every row votes so. Returns keep [..., T_r, T]."""
    lead, (R, T) = tmax.shape[:-2], tmax.shape[-2:]
    tm, L = order.shape
    M = np.pad(tmax, [(0, 0)] * len(lead) + [(0, tm * bm - R), (0, 0)], constant_values=-np.inf)
    M = np.moveaxis(M.reshape(*lead, tm, bm, T), -1, -3)  # [..., T, tm, bm]
    keep = np.zeros((*lead, tm, T), dtype=bool)
    m = np.full((*lead, tm, bm), -np.inf)
    ar = np.arange(tm)
    for s in range(L):
        j = order[:, s]
        act = j >= 0
        if not act.any():
            continue
        m = np.where(restart[:, s][:, None], -np.inf, m)
        cand = M[..., np.where(act, j, 0), ar, :]  # [..., tm, bm]
        with np.errstate(invalid="ignore"):
            negl = np.isneginf(cand) | (np.isfinite(m) & (cand - m < ln_lambda))
        kept = act & ~negl.all(axis=-1)
        keep[..., ar[act], j[act]] = kept[..., act]
        m = np.where(kept[..., None], np.maximum(m, cand), m)
    return keep


def _visit_plan(stops: np.ndarray, tn: int, descending: bool, splits: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(order, restart) [T_r, T_c] for row blocks visiting KV blocks [0, stop_i) in splits of ⌈T_c/splits⌉ blocks
    (split s: [s·n_per, min((s+1)·n_per, stop)) ), each split walked ascending or descending, restarting the running
    max at its first tile."""
    n_per = -(-tn // splits)
    tm = len(stops)
    order = np.full((tm, tn), -1, dtype=np.int64)
    restart = np.zeros((tm, tn), dtype=bool)
    for i, stop in enumerate(stops):
        pos = 0
        for s in range(splits):
            lo, hi = s * n_per, min((s + 1) * n_per, int(stop))
            if hi <= lo:
                continue
            seq = np.arange(hi - 1, lo - 1, -1) if descending else np.arange(lo, hi)
            order[i, pos:pos + len(seq)] = seq
            restart[i, pos] = True
            pos += len(seq)
    return order, restart


def _first_visited(order: np.ndarray, restart: np.ndarray, tn: int) -> np.ndarray:
    """[T_r, T_c] bool: the first tile of every split of every row block (BLASST never skips it)."""
    f = np.zeros((order.shape[0], tn), dtype=bool)
    r, c = np.nonzero(restart)
    f[r, order[r, c]] = True
    return f


def _source(p_rows: Problem, bm: int, bn: int, order, restart, *, rho, density, seed, table, scores, scores_rows,
            threshold_scale_factor, n_kv: int, lead_shape: tuple) -> tuple[np.ndarray, str]:
    """(keep [T_r, T_c] or [*lead_shape, T_r, T_c], description) from exactly one source. p_rows: the Problem whose
    (seq_q, seq_kv, causal) are the kernel's row and key axes (decode: the packed rows)."""
    if rho is not None and density is not None:
        raise IosimError("blasst: give rho (skipped fraction) or density (kept fraction = 1 − rho), not both")
    check_params("blasst", rho=(rho, 0.0, 1.0))
    dens = None if rho is None else 1.0 - float(rho)
    dens = density if dens is None else dens
    tn = order.shape[1]
    forced = _first_visited(order, restart, tn)
    if scores is None:
        if threshold_scale_factor is not None:
            raise IosimError("blasst: threshold_scale_factor applies to scores; give scores=FILE.npy (logits) or drop it")
        keep, src = choose_blocks(p_rows, bm, bn, density=dens, seed=seed, table=table, forced=forced,
                                  method="blasst")
        return keep, src
    if dens is not None or table is not None:
        raise IosimError("blasst: give one of rho/density, table or scores, not several")
    if threshold_scale_factor is None:
        raise IosimError("blasst: scores need threshold_scale_factor (λ = factor / N_kv, TensorRT-LLM's "
                         "threshold_scale_factor; e.g. 587 prefill, 16.5 decode for Qwen3-30B-A3B at 50% sparsity)")
    check_params("blasst", threshold_scale_factor=(threshold_scale_factor, 1e-30, None))
    s = np.load(scores) if isinstance(scores, str) else np.asarray(scores)
    s = scores_rows(s)
    lam = float(threshold_scale_factor) / n_kv
    tmax = tile_row_max(s, bn, p_rows.causal, p_rows.seq_kv - p_rows.seq_q)
    keep = skip_rule(tmax, bm, order, restart, math.log(lam))
    if keep.ndim > 2:
        keep = np.broadcast_to(keep, (*lead_shape, *keep.shape[-2:]))
    return keep, f"scores, skip rule m̃ − m < ln λ, λ = {threshold_scale_factor:g}/{n_kv} in visit order"


def _prefill_rows(p: Problem):
    def rows(s):
        if s.ndim not in (2, 4) or s.shape[-2:] != (p.seq_q, p.seq_kv):
            raise IosimError(f"blasst: scores have shape {s.shape}; give [N_q, N_kv] = [{p.seq_q}, {p.seq_kv}] or "
                             f"[B, H, {p.seq_q}, {p.seq_kv}] (logits, scale·QKᵀ)")
        return s
    return rows


# --- kernels --------------------------------------------------------------------------------------------------------

def kv_step(p: Problem, b, h, rows: Span, cols: Span, keep, load_v_always: bool) -> tuple:
    """One KV tile of BLASST: K, QKᵀ, the skip test; V (prefill: always, before the decision); then, only for a kept
    tile (a loop of keep ∈ {0, 1} trips), V (decode), the online softmax and P·V."""
    d = p.head_dim
    z = var("kept")
    v = Load("v", kv_tile(p, "V", b, h, cols))
    body = (
        *(() if load_v_always else (v,)),
        Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                other=(Work(3, (rows, cols)), Work(d + 4, (rows,)))),
        Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
    )
    return (
        Load("k", kv_tile(p, "K", b, h, cols)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("blasst_test", ("s",), other=(Work(1, (rows, cols)), Work(2, (rows,)))),
        *((v,) if load_v_always else ()),
        Loop(z, 0, keep, body),
    )


def _prefill(p: Problem, cfg: KernelConfig, hw, src: dict) -> Schedule:
    concrete(p, "blasst")
    if p.elem_bytes != 2:
        raise IosimError(f"blasst: dtype {p.dtype} is not modelled for prefill; the Hopper kernel's tiles are for "
                         "bf16/fp16 (give --dtype bf16)")
    dm, dn = fa3_tiles(p.head_dim, p.causal)
    cfg = replace(cfg, block_m=cfg.block_m or dm, block_n=cfg.block_n or dn, num_stages=FA3_STAGES)
    bm, bn, d = cfg.block_m, cfg.block_n, p.head_dim
    if bm % 64:
        raise IosimError(f"blasst: block_m={bm} must be a multiple of 64 (one consumer warpgroup per 64 rows)")
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    stops = np.array([int(flash2.kv_stop(p, i, bm, bn, tn)) for i in range(tm)])
    order, restart = _visit_plan(stops, tn, cfg.kv_order == "descending")
    keep, how = _source(p, bm, bn, order, restart, scores_rows=_prefill_rows(p), n_kv=p.seq_kv,
                        lead_shape=(p.batch, p.heads), **src)
    keep = normalize_mask(p, keep, tm, tn)
    visited = np.arange(tn)[None, :] < stops[:, None]
    keep = keep & visited
    workers = workers_of(hw)
    n = tm * p.heads * p.batch
    if p.causal:
        swz = fa3_swizzle(p.seq_kv, d, p.elem_bytes, p.group)
        work = dynamic_assign(l2_swizzle(tm, p.heads, p.batch, swz), [int(stops[t % tm]) for t in range(n)], workers)
        sched = f"FA3's DynamicPersistentTileScheduler (LPT, L2 sections of {swz} heads)"
    else:
        work = static_round_robin(n, workers)
        sched = "FA3's StaticPersistentTileScheduler (tile t to CTA t mod SMs)"
    w, k, j = var("worker"), var("item"), var("j")
    i, b, h = (lookup(table(f"work_{c}"), w, k) for c in "mbh")
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    lead = (b, h) if keep.ndim == 4 else ()
    kp = lookup(table(KEEP), *lead, i, j)
    bufs = flash2.buffers(bm, bn, d, p.elem_bytes)
    body = (Loop(k, 0, lookup(table("work_count"), w), (
        reset(bufs),
        Load("q", q_tile(p, "Q", b, h, rows)),
        Loop(j, 0, flash2.kv_stop(p, i, bm, bn, tn), kv_step(p, b, h, rows, cols, kp, True),
             reverse=cfg.kv_order == "descending"),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
        Store("lse", row_tile(p, "LSE", b, h, rows)),
    )),)
    wgs = bm // 64
    pingpong = wgs >= 2 and d <= 128
    kernel = Kernel("blasst_fwd", (GridAxis("n", w, len(work.count)),), bufs, body, persistent=True,
                    threads_per_cta=128 * (wgs + 1), pipeline="ws-pingpong" if pingpong else "ws")
    kernel = replace(kernel, regs_per_thread=min(255, 65536 // kernel.threads_per_cta // 8 * 8))  # as models/fa3.py
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={FA3_STAGES}")
    tables = item_tables(work, tm, p.heads) | {KEEP: keep.astype(np.int64)}
    nvis = visited.sum() * (keep.size // visited.size)
    rho = 1.0 - float(keep.sum()) / nvis if nvis else 0.0
    notes = (f"blasst prefill (fmha_v2-like, FA3 tiles {bm}×{bn}, {wgs} consumer warpgroups"
             f"{', ping-pong' if pingpong else ''}, {workers} persistent CTAs, {sched}); visit order {cfg.kv_order}",
             f"skipped ρ = {rho:.1%} of {int(nvis):,} visited tiles ({how}); K and V loaded for every visited tile")
    return Schedule("blasst", p, cfg, qkvo_tensors(p) | {"LSE": lse_tensor(p)}, (kernel,), notes, tables)


def _decode(p: Problem, cfg: KernelConfig, hw, src: dict, num_splits, gqa_packed) -> Schedule:
    """FA2's split-KV decode (models/splitkv.py) with the skip: K always, V only for kept tiles."""
    cfg, packed, ns = split_plan(p, cfg, hw, num_splits, gqa_packed, "blasst")
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    B, H, Hk, Nq, G = p.batch, p.heads, p.kv_heads, p.seq_q, p.group
    Hx, Mq = (Hk, G) if packed else (H, Nq)
    tm, tn = cdiv(Mq, bm), cdiv(p.seq_kv, bn)
    n_per = cdiv(tn, ns)
    # the kernel's rows: packed, the G query heads of a KV head (one query each, no causal mask); else the Nq queries
    p_rows = Problem(B, Hx, Hx, Mq, p.seq_kv, d, p.dtype, False if packed else p.causal)
    stops = np.array([int(flash2.kv_stop(p_rows, i, bm, bn, tn)) for i in range(tm)])
    order, restart = _visit_plan(stops, tn, cfg.kv_order == "descending", ns)

    def rows_of(s):
        if s.ndim == 2 and s.shape == (Nq, p.seq_kv):
            s = np.broadcast_to(s, (B, H, Nq, p.seq_kv))
        if s.ndim != 4 or s.shape != (B, H, Nq, p.seq_kv):
            raise IosimError(f"blasst: decode scores have shape {s.shape}; give [B, H, N_q, N_kv] = "
                             f"[{B}, {H}, {Nq}, {p.seq_kv}] (or [N_q, N_kv] shared by every head)")
        return s.reshape(B, Hk, G, p.seq_kv) if packed else s
    keep, how = _source(p_rows, bm, bn, order, restart, scores_rows=rows_of, n_kv=p.seq_kv, lead_shape=(B, Hx), **src)
    keep = normalize_mask(p_rows, keep, tm, tn) & (np.arange(tn)[None, :] < stops[:, None])
    b, h, i, s, j, z = var("b"), var("h"), var("pid_m"), var("split"), var("j"), var("q_loaded")
    rows, cols = Span(i, bm, Mq), Span(j, bn, p.seq_kv)
    lead = (b, h) if keep.ndim == 4 else ()
    kp = lookup(table(KEEP), *lead, i, j)
    if packed:
        heads = Span(h, G, H) if tm == 1 else Span(h * tm + i, bm, H)
        q_t, lse_t = Tile("Q", (point(b, B), heads, full(1), full(d))), Tile("LSE", (point(b, B), heads, full(1)))
        o_t, hq, stop = Tile("O", (point(b, B), heads, full(1), full(d))), h * G, tn
    else:
        heads = point(h, H)
        q_t, lse_t, o_t = q_tile(p, "Q", b, h, rows), row_tile(p, "LSE", b, h, rows), q_tile(p, "O", b, h, rows)
        hq, stop = h, flash2.kv_stop(p, i, bm, bn, tn)
    step = kv_step(p, b, hq, rows, cols, kp, False)
    lo = s * n_per if ns > 1 else 0
    hi = clamp(sp.Min(lo + n_per, stop), lo, tn)
    loop = Loop(j, lo, hi, step, reverse=cfg.kv_order == "descending")
    grid = (GridAxis("m", i, tm), GridAxis("n", s, ns), GridAxis("h", h, Hx), GridAxis("b", b, B))
    tensors = qkvo_tensors(p) | {"LSE": lse_tensor(p)}
    tables = {KEEP: keep.astype(np.int64)}
    nvis = int((np.arange(tn)[None, :] < stops[:, None]).sum()) * (keep.size // (tm * tn))
    rho = 1.0 - float(keep.sum()) / nvis if nvis else 0.0
    notes = [f"blasst decode (XQA multi-block modelled as FA2's split-KV: {ns} split(s) of {n_per} KV blocks of {bn}, "
             + ("GQA-packed: K/V read once per KV head" if packed else "unpacked") + f"); visit order {cfg.kv_order}",
             f"skipped ρ = {rho:.1%} of {nvis:,} visited tiles ({how}); K loaded for every tile, V only for kept ones"]
    bufs = flash2.buffers(bm, bn, d, e)
    if ns == 1:
        k = Kernel("blasst_decode", grid[:1] + grid[2:], bufs, (
            Load("q", q_t), loop, flash2.finalize(p, rows), Store("acc", o_t), Store("lse", lse_t),
        ), threads_per_cta=32 * cfg.num_warps)
        check_fit(k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
        return Schedule("blasst", p, cfg, tensors, (k,), tuple(notes), tables)
    dr = rounded_head_dim(d)

    def part(name, *rest):
        return Tile(name, (point(s, ns), point(b, B), heads, full(1) if packed else rows) + rest)
    split_k = Kernel("blasst_decode_split", grid, bufs, (
        Loop(z, 0, sp.Min(1, hi - lo), (Load("q", q_t),)),
        loop,
        flash2.finalize(p, rows, "finalize_split"),
        Store("acc", part("O_accum", Span(0, d, dr))),
        Store("lse", part("LSE_accum")),
    ), threads_per_cta=32 * cfg.num_warps)
    check_fit(split_k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    combine, how_c = _combine(p, ns, dr)
    tensors |= {"O_accum": TensorSpec("O_accum", (ns, B, H, Nq, dr), 4, "scratch"),
                "LSE_accum": TensorSpec("LSE_accum", (ns, B, H, Nq), STAT_BYTES, "scratch")}
    return Schedule("blasst", p, cfg, tensors, (split_k, combine), tuple(notes) + (how_c,), tables)


@register("blasst", "BLASST skip-softmax: tiles whose row maxima trail the running max by > −ln λ skip exp and P·V "
          "(prefill still loads V; decode skips the V load); no pre-pass")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          rho=None, threshold_scale_factor=None, phase: str | None = None, num_splits: int | None = None,
          gqa_packed: bool | None = None) -> Schedule:
    """rho: skipped fraction of visited tiles (density = 1 − rho, its alias); seed: the density source's generator;
    table: bool keep table file; scores: logits (.npy or array) with threshold_scale_factor (λ = factor / N_kv);
    phase: 'prefill' or 'decode' (None: decode iff seq_q = 1); num_splits, gqa_packed: the decode split-KV launch
    (None: FA2's heuristic and packing rule, ``models/splitkv.py``)."""
    check_head_dim(p, "blasst")
    if phase is None:
        phase = "decode" if p.seq_q == 1 else "prefill"
    if phase not in ("prefill", "decode"):
        raise IosimError(f"blasst: phase={phase!r}; give 'prefill' or 'decode' (or none: decode iff seq_q = 1)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise IosimError(f"blasst: seed={seed!r} must be an integer")
    src = dict(rho=rho, density=density, seed=int(seed), table=table, scores=scores,
               threshold_scale_factor=threshold_scale_factor)
    if phase == "decode":
        return _decode(p, cfg, hw, src, num_splits, gqa_packed)
    if num_splits is not None or gqa_packed is not None:
        raise IosimError("blasst: num_splits and gqa_packed apply to decode (phase='decode' or seq_q = 1)")
    return _prefill(p, cfg, hw, src)
