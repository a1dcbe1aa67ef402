"""FlashAttention-2 forward (Dao, arXiv 2307.08691, Algorithm 1 and §3.1–3.2).

One CTA per (query block i, batch b, head h). It loads Q_i once, walks the KV blocks j (ascending as in Triton's
tutorial, or descending as FA2's CUDA kernel does: ``kv_order``), keeps O_i, m, ℓ on chip, and writes O_i and the
logsumexp L_i once. Causal: KV blocks entirely above the (bottom-right aligned) diagonal are skipped, so block i
visits j < min(T_c, ⌈((i+1)·B_r + N_kv − N_q)/B_c⌉). GQA: query head h reads KV head h // g; every query head's
CTA loads its K/V tiles itself (sharing happens in L2, not SRAM).

Per head, non-causal: reads Q = N_q·d, K+V = 2·N_kv·d·T_r; writes O = N_q·d and L = N_q (fp32).

Work per visited (i, j) tile of r×c valid elements (counting convention):
  matmul 2·r·c·d (S = QKᵀ) + 2·r·c·d (O += PV);
  exp r·c (P = exp(S − m)) + r (rescale e^{m_old − m_new});
  other 4·r·c (scale, row max, subtract, row sum) + r·(d + 4) (O·α, m and ℓ updates).
Finalize per row: other d + 1 (O/ℓ, m + log ℓ), exp 1 (log ℓ).
Masked elements of visited diagonal tiles are counted (the tensor cores compute them).

Shared memory: Q tile + num_stages × (K tile + V tile) (Triton-style pipelining; FA2's CUDA kernel with one
stage uses (B_r + 2·B_c)·d·2 bytes, kernel_traits.h).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.expr import evaluate
from iosim.models._common import check_fit, check_head_dim, kv_tile, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, Work, cdiv, clamp, var

DEFAULT_TILES = {32: (128, 128), 64: (128, 128), 96: (128, 64), 128: (128, 64), 192: (128, 64), 256: (64, 64)}
"""FA2's forward tiles by head dim on sm80/sm90 (flash_fwd_launch_template.h, Dao-AILab/flash-attention)."""


def default_tiles(head_dim: int) -> tuple[int, int]:
    for d, t in sorted(DEFAULT_TILES.items()):
        if head_dim <= d:
            return t
    return 64, 64


def fitting_tiles(p: Problem, cfg: KernelConfig, hw) -> tuple[int, int, str]:
    """FA2's tiles for the head dim (``default_tiles``) or, where they do not fit ``hw`` at cfg's warps and stages
    (shared memory per block and per SM, ``iosim.occupancy``: e.g. 128×64 at d=128 with 2 stages needs 96 KiB + the
    pipeline's 1 KiB on the V100's 96 KiB SM), the largest halving of them that does (larger block_m first: fewer
    K/V re-reads). Returns (block_m, block_n, note); the note says what was replaced and why ('' if nothing was)."""
    from iosim.occupancy import occupancy
    dm, dn = default_tiles(p.head_dim) if isinstance(p.head_dim, int) else (128, 64)
    if hw is None or not isinstance(p.head_dim, int):
        return dm, dn, ""
    halves = lambda t: [t >> k for k in range(t.bit_length()) if t >> k >= 16]  # noqa: E731
    first = None
    for bm, bn in sorted(((m, n) for m in halves(dm) for n in halves(dn)), key=lambda t: (-t[0] * t[1], -t[0])):
        k = Kernel("flash2_fwd", (), buffers(bm, bn, p.head_dim, p.elem_bytes), (), threads_per_cta=32 * cfg.num_warps)
        try:
            check_fit(k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={p.head_dim}, num_stages={cfg.num_stages}")
            occupancy(k, hw, cfg.num_stages)
        except IosimError as e:
            first = first or str(e)
            continue
        note = "" if first is None else (f"FA2's default tiles {dm}×{dn} for d={p.head_dim} do not fit {hw.name} "
                                         f"({first}); using {bm}×{bn}, the largest halving of them that fits")
        return bm, bn, note
    raise IosimError(f"flash2: no halving of FA2's tiles {dm}×{dn} fits {hw.name} ({first}); give --block-m/--block-n, "
                     "fewer --num-stages or --num-warps")


def kv_stop(p: Problem, i, bm: int, bn: int, tn):
    """Number of KV blocks query block i visits (all of them unless causal)."""
    if not p.causal:
        return tn
    return clamp(cdiv((i + 1) * bm + p.seq_kv - p.seq_q, bn), 0, tn)


def _fdiv(a, d):
    return a // d if isinstance(a, int) else sp.floor(sp.sympify(a) / d)


def band_start(p: Problem, i, bm: int, bn: int, tn):
    """First KV block of query block i that some of its rows may not see (causal): blocks below it are visible to
    every row, [band_start, kv_stop) cross the diagonal. = min(⌊max(i·B_r + N_kv − N_q + 1, 0)/B_c⌋, kv_stop,
    ⌊N_kv/B_c⌋) (the last partial block of a ragged N_kv is masked too), as iosim's Triton kernel computes n_full."""
    first = _fdiv(clamp(i * bm + p.seq_kv - p.seq_q + 1, 0, p.seq_kv), bn)
    return clamp(first, 0, clamp(kv_stop(p, i, bm, bn, tn), 0, _fdiv(p.seq_kv, bn)))


def fa2_window(p: Problem, window) -> tuple[int, int] | None:
    """FA2's (window_size_left, window_size_right) as the kernel gets them (flash_api.cpp: mha_fwd / mha_varlen_fwd
    set right = 0 when causal and drop a bound ≥ seqlen_k to −1; set_params_fprop then, for a local window, turns a
    −1 bound into seqlen_k). None: no mask; (−1, 0): causal (``Is_causal``); else both ≥ 0 (``Is_local``).
    window=None follows ``p.causal``. seqlen_k is ``p.seq_kv`` (varlen: the longest sequence, max_seqlen_k)."""
    if window is None:
        return (-1, 0) if p.causal else None
    ok = isinstance(window, (tuple, list)) and len(window) == 2
    if not ok or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window):
        raise IosimError(f"window={window!r}: give (left, right), integers ≥ −1 (FA2's window_size_left/right; "
                         "−1 = unbounded, causal = (−1, 0))")
    if not isinstance(p.seq_kv, int) or not isinstance(p.seq_q, int):
        raise IosimError("a local window needs concrete seq_q and seq_kv")
    left, right = (-1 if w >= p.seq_kv else w for w in (window[0], 0 if p.causal else window[1]))
    if left < 0 and right <= 0:
        return None if right < 0 else (-1, 0)
    return (p.seq_kv if left < 0 else left, p.seq_kv if right < 0 else right)


def kv_range(p: Problem, i, bm: int, bn: int, tn, window=None):
    """[n_block_min, n_block_max) of query block i (flash_fwd_kernel.h, compute_attn_1rowblock): a local window
    (``fa2_window``) gives n_block_min = max(0, ⌊(i·B_r + N_kv − N_q − left)/B_c⌋) and n_block_max =
    min(T_c, ⌈((i+1)·B_r + N_kv − N_q + right)/B_c⌉); otherwise [0, kv_stop)."""
    if window is None or window == (-1, 0):
        return 0, kv_stop(p, i, bm, bn, tn)
    left, right = window
    shift = p.seq_kv - p.seq_q
    return clamp(_fdiv(i * bm + shift - left, bn), 0, tn), clamp(cdiv((i + 1) * bm + shift + right, bn), 0, tn)


def kv_loops(p: Problem, cfg: KernelConfig, b, h, i, rows: Span, j, bm: int, bn: int, tn, window=None,
             kv=kv_tile) -> tuple:
    """The KV loop(s) of one CTA: one loop over [n_block_min, n_block_max) (``kv_range``), or with ``cfg.band_loop``
    under a causal or local mask the blocks every row sees whole as a loop of their own between masked bands
    (descending: walked from the right band down). A block is whole when its first key is at least last row +
    N_kv − N_q − left (local) and its last key is at most first row + N_kv − N_q + right (causal: ``band_start``). kv: the K/V tile of (p, name, b, h, cols) (varlen packs them)."""
    cols = Span(j, bn, p.seq_kv)
    rev = cfg.kv_order == "descending"
    w = window if window is not None else fa2_window(p, None)
    lo, hi = kv_range(p, i, bm, bn, tn, w)
    if not (w and cfg.band_loop):
        return (Loop(j, lo, hi, kv_step(p, b, h, rows, cols, kv=kv), reverse=rev),)
    left, right = w
    full_lo = lo if left < 0 else clamp(cdiv(clamp((i + 1) * bm, 0, p.seq_q) - 1 + p.seq_kv - p.seq_q - left, bn), lo, hi)
    full_hi = band_start(p, i, bm, bn, tn) if left < 0 else clamp(sp.Min(_fdiv(clamp(
        i * bm + p.seq_kv - p.seq_q + right + 1, 0, p.seq_kv), bn), _fdiv(p.seq_kv, bn)), full_lo, hi)
    loops = (Loop(j, lo, full_lo, kv_step(p, b, h, rows, cols, masked=True, kv=kv), reverse=rev),
             Loop(j, full_lo, full_hi, kv_step(p, b, h, rows, cols, kv=kv), reverse=rev),
             Loop(j, full_hi, hi, kv_step(p, b, h, rows, cols, masked=True, kv=kv), reverse=rev))
    loops = loops[1:] if left < 0 else loops
    return loops[::-1] if rev else loops


def grid_axes(p: Problem, cfg: KernelConfig, tm) -> tuple[tuple[GridAxis, ...], dict]:
    vs = {"m": var("pid_m"), "b": var("b"), "h": var("h")}
    ext = {"m": tm, "b": p.batch, "h": p.heads}
    return tuple(GridAxis(n, vs[n], ext[n]) for n in cfg.grid_order), vs


MASK_FLOPS = 2
"""Per element of a tile in the diagonal band loop (``band_loop``): the causal compare and the select of −∞
(Triton tutorial STAGE 2: ``mask = offs_m[:, None] >= start_n + offs_n[None, :]``, ``tl.where``)."""


def kv_step(p: Problem, b, h, rows: Span, cols: Span, masked: bool = False, kv=kv_tile) -> tuple:
    """One KV step of FA2's inner loop (Alg. 1 lines 8–10): load K_j, S = QKᵀ, online softmax, load V_j, O += PV.
    masked: the step applies the causal mask (MASK_FLOPS more per element)."""
    d = p.head_dim
    per_elem = 4 + (MASK_FLOPS if masked else 0)
    return (
        Load("k", kv(p, "K", b, h, cols)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),)),
        Compute("online_softmax", ("s", "m", "l", "acc"),
                exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                other=(Work(per_elem, (rows, cols)), Work(d + 4, (rows,)))),
        Load("v", kv(p, "V", b, h, cols)),
        Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
    )


def finalize(p: Problem, rows: Span, op: str = "finalize") -> Compute:
    """O = acc / ℓ and L = m + log ℓ (Alg. 1 lines 12–13)."""
    return Compute(op, ("acc", "m", "l", "lse"), exp=(Work(1, (rows,)),), other=(Work(p.head_dim + 1, (rows,)),))


def buffers(bm: int, bn: int, d: int, elem_bytes: int) -> tuple[Buffer, ...]:
    """Q tile, pipelined K and V tiles in shared memory; S, P (S in the input dtype for the PV MMA, transient), the
    accumulator and the row statistics in registers."""
    return (
        Buffer("q", (bm, d), elem_bytes),
        Buffer("k", (bn, d), elem_bytes, pipelined=True),
        Buffer("v", (bn, d), elem_bytes, pipelined=True),
        Buffer("s", (bm, bn), 4, space="reg"),
        Buffer("p", (bm, bn), elem_bytes, space="reg", transient=True),
        Buffer("acc", (bm, d), 4, space="reg"),
        Buffer("m", (bm,), STAT_BYTES, space="reg"),
        Buffer("l", (bm,), STAT_BYTES, space="reg"),
        Buffer("lse", (bm,), STAT_BYTES, space="reg"),
    )


@register("flash2", "FlashAttention-2 forward: outer loop over Q blocks (one CTA each), inner over K/V; O and LSE written once")
def build(p: Problem, cfg: KernelConfig, hw=None, window=None) -> Schedule:
    """window: FA2's (window_size_left, window_size_right), −1 = unbounded (None: ``p.causal`` decides; (−1, 0) is
    causal, as FA2 makes it). A local window visits [n_block_min, n_block_max) (``kv_range``); a CTA whose range is
    empty exits before loading Q and writes O = 0, LSE = +∞ (flash_fwd_kernel.h, compute_attn_1rowblock)."""
    check_head_dim(p, "flash2")
    w = fa2_window(p, window)
    if w == (-1, 0) and not p.causal:
        p = replace(p, causal=True)  # FA2: is_causal = window_size_left < 0 && window_size_right == 0
    local = w is not None and w != (-1, 0)
    pick = ""
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn, pick = fitting_tiles(p, cfg, hw) if cfg.block_m is None and cfg.block_n is None else (
            *(default_tiles(p.head_dim) if isinstance(p.head_dim, int) else (128, 64)), "")
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    grid, vs = grid_axes(p, cfg, tm)
    b, h, pid = vs["b"], vs["h"], vs["m"]
    i = pid if cfg.q_order == "ascending" else tm - 1 - pid
    j = var("j")
    rows = Span(i, bm, p.seq_q)
    load_q = Load("q", q_tile(p, "Q", b, h, rows))
    notes, tables = ((pick,) if pick else ()), {}
    if local:
        lo, hi = kv_range(p, i, bm, bn, tn, w)
        if np.any(np.asarray(evaluate(hi - lo, {pid: np.arange(tm)})) <= 0):  # early exit: Q loaded only if blocks remain
            load_q = Loop(var("q_loaded"), 0, sp.Min(1, hi - lo), (load_q,))
        tables = {"window": np.array(w, dtype=np.int64)}
        notes += (f"local window (left, right) = {w} (FA2's window_size_left/right after mha_fwd): KV blocks "
                 "[n_block_min, n_block_max) per query block",)
    body = (
        load_q,
        *kv_loops(p, cfg, b, h, i, rows, j, bm, bn, tn, w),
        finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
        Store("lse", row_tile(p, "LSE", b, h, rows)),
    )
    kernel = Kernel("flash2_fwd", grid, buffers(bm, bn, d, e), body, threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    tensors = qkvo_tensors(p) | {"LSE": lse_tensor(p)}
    return Schedule("flash2", p, cfg, tensors, (kernel,), notes, tables)
