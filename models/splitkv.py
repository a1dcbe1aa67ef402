"""Split-KV forward (Flash-Decoding; FlashAttention-2's ``num_splits > 1`` path, ``flash_api.cpp`` and
``flash_fwd_kernel.h``), for decode and other launches with too few query blocks to fill the GPU.

Kernel 1, ``splitkv_fwd``: one CTA per (query block i, split s, b, h) — FA2's grid (m_blocks, num_splits, b·h).
Split s walks KV blocks j ∈ [s·n_per, min((s+1)·n_per, n_stop(i))) with n_per = ⌈T_c/num_splits⌉ and n_stop the
causal limit (as flash2), runs FA2's inner loop, and writes its partial O_s = acc/ℓ (fp32, ``out_accum``
[S, B, H, N_q, d]) and LSE_s = m + log ℓ (fp32, ``lse_accum`` [S, B, H, N_q]). An empty split writes O_s = 0,
LSE_s = −∞ (as FA2 does when n_block_max ≤ n_block_min).
Kernel 2, ``splitkv_combine`` (``combine_attn_seqk_parallel``): one CTA per (query block, b, h) reads every split's
LSE_s and O_s and writes O = Σ_s e^{LSE_s − LSE} O_s with LSE = log Σ_s e^{LSE_s}. It is written here as an online
merge over s (running max; same reads and writes, one pass: FA2 stages the S LSE values in shared memory first).
With num_splits = 1 FA2 launches no combine and writes O directly: the schedule is then flash2's.

Per head, extra HBM traffic over flash2 (Flash-Decoding blog; attention-io-facts §E): S·N_q·(d + 1)·4 B written
and read back; the padded d_rounded of FA2's out_accum is not modelled (d is a multiple of 8 here).

num_splits default: ``num_splits_heuristic(b·h·m_blocks, 2·SMs, n_blocks, 128)`` (flash_api.cpp), with FA2's
split tiles kBlockM = 64, kBlockN = 256 (d ≤ 64), 128 (d ≤ 128), 64 otherwise; without a hardware profile 1.
Work: per visited tile as flash2; finalize as flash2; combine per row per split: exp 2, other 2·d + 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from iosim.errors import IosimError
from iosim.models._common import check_fit, check_head_dim, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models import flash2
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, clamp, full, point, var)


def split_tiles(head_dim: int) -> tuple[int, int]:
    """FA2's split-KV tile: kBlockM = 64; kBlockN = 256 (d ≤ 64), 128 (d ≤ 128), else 64 (flash_api.cpp)."""
    return 64, 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


def num_splits_heuristic(batch_nheads_mblocks: int, num_sms: int, num_n_blocks: int, max_splits: int) -> int:
    """FA2's ``num_splits_heuristic`` (flash_api.cpp): 1 if the launch already fills 80% of the SMs; otherwise the
    smallest number of splits whose wave efficiency w/⌈w⌉ (w = launches·s/SMs) is ≥ 85% of the best, skipping
    split counts that do not change ⌈n_blocks/s⌉. FA2 calls it with num_sms = 2·SMs (two CTAs per SM)."""
    if batch_nheads_mblocks >= 0.8 * num_sms:
        return 1
    max_splits = min(max_splits, num_sms, num_n_blocks)

    def eligible(s: int) -> bool:
        return s == 1 or cdiv(num_n_blocks, s) != cdiv(num_n_blocks, s - 1)

    eff = []
    for s in range(1, max_splits + 1):
        if not eligible(s):
            eff.append(0.0)
            continue
        w = batch_nheads_mblocks * s / num_sms
        eff.append(w / math.ceil(w))
    best = max(eff) if eff else 1.0
    for s in range(1, max_splits + 1):
        if eligible(s) and eff[s - 1] >= 0.85 * best:
            return s
    return 1


@dataclass(frozen=True)
class Fa2Launch:
    """What PyTorch's ``mha_fwd`` (flash_api.cpp) decides for a forward: packed = ``seqlenq_ngroups_swapped`` (q
    reshaped (B, H_k, G, d) → (B, G, H_k, d)), then rows = seqlen_q and heads = num_heads as the kernels see them
    (G and H_k when packed), and num_splits from ``set_params_splitkv`` (1 → ``run_mha_fwd`` runs the plain kernel)."""

    packed: bool
    rows: int
    heads: int
    num_splits: int


def gqa_packs(p: Problem) -> bool:
    """``seqlenq_ngroups_swapped`` (mha_fwd): seqlen_q == 1, H > H_k, no window, no dropout, d % 8 == 0, no ALiBi.
    A causal mask makes no window here: mha_fwd sets is_causal = false when seqlen_q == 1 before the test."""
    return p.seq_q == 1 and p.heads > p.kv_heads and p.head_dim % 8 == 0


def fa2_launch(p: Problem, hw) -> Fa2Launch:
    """PyTorch's flash forward decision for ``p`` on ``hw`` (None: no GPU → 1 split): ``set_params_splitkv`` runs
    on every ``mha_fwd`` with num_splits = 0, after the swap: num_m_blocks = ⌈seqlen_q/64⌉, num_n_blocks with the
    split kernel's block_n, ``num_splits_heuristic(B·H·num_m_blocks, 2·SMs, num_n_blocks, 128)``."""
    packed = gqa_packs(p)
    rows, heads = (p.group, p.kv_heads) if packed else (p.seq_q, p.heads)
    bm, bn = split_tiles(p.head_dim)
    ns = 1 if hw is None else num_splits_heuristic(p.batch * heads * cdiv(rows, bm), 2 * hw.sm_count,
                                                   cdiv(p.seq_kv, bn), 128)
    return Fa2Launch(packed, rows, heads, ns)


def default_num_splits(p: Problem, bm: int, bn: int, hw) -> int:
    if hw is None:
        return 1
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    return num_splits_heuristic(p.batch * p.heads * tm, 2 * hw.sm_count, tn, 128)


@register("splitkv", "Split-KV forward (flash-decoding): KV range split over CTAs, fp32 partial O + LSE per split, combine kernel")
def build(p: Problem, cfg: KernelConfig, hw=None, num_splits: int | None = None) -> Schedule:
    """num_splits: KV splits (None = FA2's heuristic for ``hw``, 1 without hardware)."""
    check_head_dim(p, "splitkv")
    if not all(isinstance(getattr(p, n), int) for n in ("batch", "heads", "seq_q", "seq_kv", "head_dim")):
        raise IosimError("splitkv: needs concrete sizes (the number of splits depends on them)")
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = split_tiles(p.head_dim)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    ns = default_num_splits(p, bm, bn, hw) if num_splits is None else num_splits
    if isinstance(ns, bool) or not isinstance(ns, int) or ns < 1:
        raise IosimError(f"splitkv: num_splits must be a positive integer, got {ns!r}")
    if ns == 1:
        sched = flash2.build(p, cfg, hw)
        return Schedule("splitkv", p, sched.config, sched.tensors, sched.kernels,
                        sched.notes + ("num_splits = 1: no partials, no combine (FA2 writes O directly)",))
    n_per = cdiv(tn, ns)
    b, h, pm, s, j = var("b"), var("h"), var("pid_m"), var("split"), var("j")
    i = pm
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    stop = flash2.kv_stop(p, i, bm, bn, tn)
    lo = s * n_per
    hi = clamp(sp.Min(lo + n_per, stop), lo, tn)  # empty split when the causal stop is below its start

    def part(name, *rest):
        return Tile(name, (point(s, ns), point(b, p.batch), point(h, p.heads), rows) + rest)
    split_k = Kernel("splitkv_fwd", (GridAxis("m", pm, tm), GridAxis("n", s, ns), GridAxis("b", b, p.batch),
                                     GridAxis("h", h, p.heads)), flash2.buffers(bm, bn, d, e), (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Loop(j, lo, hi, flash2.kv_step(p, b, h, rows, cols), reverse=cfg.kv_order == "descending"),
        flash2.finalize(p, rows, "finalize_split"),
        Store("acc", part("O_accum", full(d))),
        Store("lse", part("LSE_accum")),
    ), threads_per_cta=32 * cfg.num_warps)
    combine = Kernel("splitkv_combine", (GridAxis("m", pm, tm), GridAxis("b", b, p.batch), GridAxis("h", h, p.heads)), (
        Buffer("lse_s", (bm,), STAT_BYTES),
        Buffer("o_s", (bm, d), 4, space="reg"),
        Buffer("m", (bm,), STAT_BYTES, space="reg"),
        Buffer("l", (bm,), STAT_BYTES, space="reg"),
        Buffer("acc", (bm, d), 4, space="reg"),
        Buffer("lse", (bm,), STAT_BYTES, space="reg"),
    ), (
        Loop(s, 0, ns, (
            Load("lse_s", part("LSE_accum")),
            Load("o_s", part("O_accum", full(d))),
            Compute("combine_step", ("lse_s", "o_s", "m", "l", "acc"),
                    exp=(Work(2, (rows,)),), other=(Work(2 * d + 4, (rows,)),)),
        )),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
        Store("lse", row_tile(p, "LSE", b, h, rows)),
    ), threads_per_cta=128)
    check_fit(split_k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    B, H, Nq = p.batch, p.heads, p.seq_q
    tensors = qkvo_tensors(p) | {
        "LSE": lse_tensor(p),
        "O_accum": TensorSpec("O_accum", (ns, B, H, Nq, d), 4, "scratch"),
        "LSE_accum": TensorSpec("LSE_accum", (ns, B, H, Nq), STAT_BYTES, "scratch"),
    }
    notes = (f"num_splits={ns} ({'given' if num_splits is not None else 'FA2 num_splits_heuristic'}), "
             f"{n_per} KV blocks of {bn} per split",)
    return Schedule("splitkv", p, cfg, tensors, (split_k, combine), notes)

