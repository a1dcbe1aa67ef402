"""Attention forward in Triton, in FlashAttention-2's loop order (Dao, arXiv 2307.08691, Algorithm 1).

Main kernel ``_fwd_kernel``: one program per (query block i, batch b, head h). The grid is ``(⌈Nq/BLOCK_M⌉, B, H)``
for ``grid_order=("m", "b", "h")`` (query block fastest, as FA2, FlexAttention and ``models/flash2.py``); any
permutation of ("m", "b", "h") is honoured by permuting the launch grid. Each program loads its Q tile once, walks
its KV blocks j (ascending by default, descending with ``kv_order="descending"``) keeping O, m and ℓ on chip, and
writes O and the logsumexp once. Causal masking is bottom-right aligned (``iosim.problem.Problem``): query row r
sees keys c ≤ r + Nkv − Nq, so block i visits j < min(T_c, ⌈((i+1)·BLOCK_M + Nkv − Nq)/BLOCK_N⌉), exactly
``models/flash2.py``'s ``kv_stop``. Blocks wholly below the diagonal and inside Nkv run without masks; the rest
(the diagonal band, the ragged last block) run the masked step. GQA/MQA: head h reads KV head h // (H / Hkv).

On sm90 the Q/K/V/O tiles move through TMA tensor descriptors made in the kernel (``tl.make_tensor_descriptor``,
one 2-D descriptor per (batch, head) so ragged tiles are clipped by the hardware and read nothing out of range);
``tl.dot`` then runs on wgmma. Elsewhere, or when strides are not 16-byte aligned, pointer loads with masks.

Block-sparse (``BlockMask``, FlexAttention's layout): for query block i the kernel visits the listed KV blocks
``kv_indices[b, h, i, :kv_num_blocks[b, h, i]]`` (in list order; reversed for ``kv_order="descending"``); every
listed block is attended in full, except where causal masking or Nkv cut it, and under causal masking tiles wholly
above the diagonal are skipped (as ``models/block_sparse.py`` counts them).

Split-KV decode (``_decode_kernel`` + ``_combine_kernel``), for few queries per head: one program per
(split s, batch b, KV head hk) takes the G·Nq query rows of all query heads that share KV head hk (GQA packing,
so K/V are read once per KV head, not once per query head), walks the KV blocks of its split and writes a partial
O (fp32) and logsumexp; the combine kernel merges the splits by their logsumexps.

Persistent forward (``attention(..., persistent=True)``, ``_persistent_fwd_kernel``): grid (W,) (default: SMs × the
CTAs per SM that fit, ``schedule.persistent_workers``); worker w runs the (query block, b, h) items u = w, w + W, …
(static round-robin), in order "rr" (query block fastest, the grid's order) or "lpt" (query blocks descending: the
longest causal KV loop first), each item exactly one ``_fwd_kernel`` program (``_fwd_tile``).

Stream-K decode (``attention(..., decode="streamk")``, LeanAttention arXiv 2405.10480): the KV tiles of all (b, KV
head) pairs form one stream, split evenly over W workers (``_streamk_decode_kernel``, grid (W,)); a worker's range
cut at pair boundaries gives segments, each a GQA-packed partial (O fp32, log2 LSE) in scratch slot (worker, k);
``_streamk_combine_kernel`` merges each pair's slots. LeanAttention reduces in the decode kernel instead (host CTA,
sync flags): ``schedule.streamk_decode_schedule`` says what that changes.

Backward (``attention_backward``; FA2 Algorithm 2 in the three launches of Dao-AILab/flash-attention's
flash_bwd_launch_template.h): ``_bwd_preprocess`` (grid (⌈Nq/BLOCK_M⌉, B, H): D = rowsum(dO ∘ O), dQ_accum = 0, both
fp32), ``_bwd_kernel`` (grid (⌈Nkv/BLOCK_N⌉, B, Hkv): K_j, V_j loaded once, dK_j, dV_j in fp32 registers over the G
query heads of the KV head and their query blocks — under causal masking from the first block with a row that sees
a key of block j, the masked band first — each step adding dS K_j into dQ_accum by a relaxed fp32 ``tl.atomic_add``;
dK_j, dV_j stored once, no expanded GQA gradients) and ``_bwd_convert`` (dQ = sm_scale · dQ_accum). Pointer loads
only (no TMA descriptors), so the bytes are exactly ``schedule.backward_schedule``'s.

Numerics: scores are scaled by sm_scale·log2(e) and exponentiated with exp2; fp32 accumulators; P is cast to V's
dtype before the second product (as FA2 and Triton's tutorial do). Rows that see no key give O = 0, LSE = −inf.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.triton_kernels.schedule import (DEFAULT_CONFIGS, backward_config, check_head_dim,  # noqa: F401
                                           check_persistent_config, decode_splits, default_config, launch_config,
                                           launch_grid, persistent_order, persistent_workers, streamk_segments,
                                           streamk_workers, use_decode)

LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------------------------------
# Triton device code
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(desc, ptr, off, n_valid, stride_n, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
               USE_TMA: tl.constexpr, CHECK: tl.constexpr):
    """Rows [off, off+BLOCK) of a [n_valid, HEAD_DIM] matrix (rows ≥ n_valid read as 0 and are not fetched)."""
    if USE_TMA:
        t = desc.load([off, 0])
    else:
        rows = off + tl.arange(0, BLOCK)
        ptrs = ptr + rows[:, None] * stride_n + tl.arange(0, HEAD_DIM)[None, :]
        if CHECK:
            t = tl.load(ptrs, mask=rows[:, None] < n_valid, other=0.0)
        else:
            t = tl.load(ptrs)
    return t


@triton.jit
def _attn_step(acc, l_i, m_i, q, k_desc, v_desc, k_ptr, v_ptr, kv_off, offs_m, Nq, Nkv, stride_kn, stride_vn,
               qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,
               USE_TMA: tl.constexpr):
    """One KV block of the online softmax (FA2 Alg. 1 lines 8–10). MASK applies Nkv and causal masks."""
    k = _load_tile(k_desc, k_ptr, kv_off, Nkv, stride_kn, BLOCK_N, HEAD_DIM, USE_TMA, MASK)
    qk = tl.dot(q, tl.trans(k))
    if MASK:
        offs_n = kv_off + tl.arange(0, BLOCK_N)
        valid = offs_n[None, :] < Nkv
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + (Nkv - Nq))
        qk = tl.where(valid, qk * qk_scale, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)  # rows that saw no key yet: keep exp2 finite
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
    else:
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = _load_tile(v_desc, v_ptr, kv_off, Nkv, stride_vn, BLOCK_N, HEAD_DIM, USE_TMA, MASK)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_ij


@triton.jit
def _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_ptr, v_ptr, lo, hi, offs_m, Nq, Nkv, stride_kn, stride_vn,
                qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                USE_TMA: tl.constexpr, DESCENDING: tl.constexpr):
    """KV blocks j in [lo, hi), ascending or descending."""
    for t in tl.range(0, hi - lo):
        if DESCENDING:
            j = hi - 1 - t
        else:
            j = lo + t
        acc, l_i, m_i = _attn_step(acc, l_i, m_i, q, k_desc, v_desc, k_ptr, v_ptr, j * BLOCK_N, offs_m, Nq, Nkv,
                                   stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, MASK, CAUSAL, USE_TMA)
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                stride_qb, stride_qh, stride_qm,
                stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn,
                stride_ob, stride_oh, stride_om,
                stride_lb, stride_lh,
                H, G, Nq, Nkv, qk_scale,
                KV_NUM, KV_IDX, stride_snb, stride_snh, stride_snm, stride_sib, stride_sih, stride_sim,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                CAUSAL: tl.constexpr, SPARSE: tl.constexpr, SPARSE_BM: tl.constexpr, SPARSE_BN: tl.constexpr,
                USE_TMA: tl.constexpr, DESCENDING: tl.constexpr, Q_DESCENDING: tl.constexpr,
                AX_M: tl.constexpr, AX_B: tl.constexpr, AX_H: tl.constexpr):
    pid_m = tl.program_id(AX_M)
    if Q_DESCENDING:
        i = tl.cdiv(Nq, BLOCK_M) - 1 - pid_m
    else:
        i = pid_m
    _fwd_tile(Q, K, V, O, LSE, tl.program_id(AX_B).to(tl.int64), tl.program_id(AX_H).to(tl.int64), i,
              stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
              stride_ob, stride_oh, stride_om, stride_lb, stride_lh, G, Nq, Nkv, qk_scale,
              KV_NUM, KV_IDX, stride_snb, stride_snh, stride_snm, stride_sib, stride_sih, stride_sim,
              BLOCK_M, BLOCK_N, HEAD_DIM, CAUSAL, SPARSE, SPARSE_BM, SPARSE_BN, USE_TMA, DESCENDING)


@triton.jit
def _persistent_fwd_kernel(Q, K, V, O, LSE,
                           stride_qb, stride_qh, stride_qm,
                           stride_kb, stride_kh, stride_kn,
                           stride_vb, stride_vh, stride_vn,
                           stride_ob, stride_oh, stride_om,
                           stride_lb, stride_lh,
                           B, H, G, Nq, Nkv, qk_scale,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                           CAUSAL: tl.constexpr, USE_TMA: tl.constexpr, DESCENDING: tl.constexpr, LPT: tl.constexpr):
    """Worker w of W: items u = w, w + W, … of the T_r·B·H tiles (static round-robin), each exactly one program of
    ``_fwd_kernel``. Item order (``schedule.persistent_items``): query block fastest, then b, then h; LPT: query
    blocks descending, within one h fastest, then b."""
    tm = tl.cdiv(Nq, BLOCK_M)
    BH = B * H
    for u in range(tl.program_id(0), tm * BH, tl.num_programs(0)):
        if LPT:
            i = tm - 1 - u // BH
            b = (u % BH) // H
            h = u % H
        else:
            i = u % tm
            b = (u // tm) % B
            h = u // (tm * B)
        _fwd_tile(Q, K, V, O, LSE, b.to(tl.int64), h.to(tl.int64), i,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                  stride_ob, stride_oh, stride_om, stride_lb, stride_lh, G, Nq, Nkv, qk_scale,
                  Q, Q, 0, 0, 0, 0, 0, 0, BLOCK_M, BLOCK_N, HEAD_DIM, CAUSAL, False, BLOCK_M, BLOCK_N, USE_TMA,
                  DESCENDING)


@triton.jit
def _fwd_tile(Q, K, V, O, LSE, b, h, i,
              stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
              stride_ob, stride_oh, stride_om, stride_lb, stride_lh, G, Nq, Nkv, qk_scale,
              KV_NUM, KV_IDX, stride_snb, stride_snh, stride_snm, stride_sib, stride_sih, stride_sim,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
              SPARSE: tl.constexpr, SPARSE_BM: tl.constexpr, SPARSE_BN: tl.constexpr, USE_TMA: tl.constexpr,
              DESCENDING: tl.constexpr):
    """Query block i of head (b, h): load Q_i, walk its KV blocks, store O_i and LSE_i (one program of the grid)."""
    hk = h // G
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    o_base = O + b * stride_ob + h * stride_oh
    if USE_TMA:
        q_desc = tl.make_tensor_descriptor(q_base, shape=[Nq, HEAD_DIM], strides=[stride_qm, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(k_base, shape=[Nkv, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[Nkv, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        o_desc = tl.make_tensor_descriptor(o_base, shape=[Nq, HEAD_DIM], strides=[stride_om, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
    else:
        q_desc = None
        k_desc = None
        v_desc = None
        o_desc = None
    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    q = _load_tile(q_desc, q_base, i * BLOCK_M, Nq, stride_qm, BLOCK_M, HEAD_DIM, USE_TMA, True)

    if SPARSE:
        # FlexAttention layout: the listed sparse KV blocks of this query block's sparse row, each SPARSE_BN wide.
        srow = (i * BLOCK_M) // SPARSE_BM
        n_sp = tl.load(KV_NUM + b * stride_snb + h * stride_snh + srow * stride_snm)
        idx_base = KV_IDX + b * stride_sib + h * stride_sih + srow * stride_sim
        SUB: tl.constexpr = SPARSE_BN // BLOCK_N
        tn = tl.cdiv(Nkv, BLOCK_N)
        # last key any row of this block may see (causal): tiles starting past it are skipped
        diag_lim = tl.minimum((i + 1) * BLOCK_M, Nq) - 1 + Nkv - Nq
        for t in range(0, n_sp):
            if DESCENDING:
                jb = tl.load(idx_base + (n_sp - 1 - t))
            else:
                jb = tl.load(idx_base + t)
            for u in range(0, SUB):
                if DESCENDING:
                    j = jb * SUB + (SUB - 1 - u)
                else:
                    j = jb * SUB + u
                visit = j < tn
                if CAUSAL:
                    visit = visit & (j * BLOCK_N <= diag_lim)
                if visit:
                    acc, l_i, m_i = _attn_step(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, j * BLOCK_N,
                                               offs_m, Nq, Nkv, stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM,
                                               True, CAUSAL, USE_TMA)
    else:
        tn = tl.cdiv(Nkv, BLOCK_N)
        if CAUSAL:
            # Blocks j < n_full are visible to every row of the block; [n_full, hi) need the mask.
            hi = tl.minimum(tl.maximum(tl.cdiv((i + 1) * BLOCK_M + Nkv - Nq, BLOCK_N), 0), tn)
            first = i * BLOCK_M + Nkv - Nq + 1
            n_full = tl.minimum(tl.maximum(first, 0) // BLOCK_N, tl.minimum(hi, Nkv // BLOCK_N))
        else:
            hi = tn
            n_full = Nkv // BLOCK_N
        if DESCENDING:
            acc, l_i, m_i = _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, n_full, hi, offs_m,
                                        Nq, Nkv, stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL,
                                        USE_TMA, True)
            acc, l_i, m_i = _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, 0, n_full, offs_m,
                                        Nq, Nkv, stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, False, CAUSAL,
                                        USE_TMA, True)
        else:
            acc, l_i, m_i = _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, 0, n_full, offs_m,
                                        Nq, Nkv, stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, False, CAUSAL,
                                        USE_TMA, False)
            acc, l_i, m_i = _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, n_full, hi, offs_m,
                                        Nq, Nkv, stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL,
                                        USE_TMA, False)

    # Finalize: O = acc / ℓ, LSE = (m + log2 ℓ)·ln 2 (m is in the log2-scaled domain).
    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, lse, mask=offs_m < Nq)
    out = acc.to(O.dtype.element_ty)
    if USE_TMA:
        o_desc.store([i * BLOCK_M, 0], out)
    else:
        o_ptrs = o_base + offs_m[:, None] * stride_om + tl.arange(0, HEAD_DIM)[None, :]
        tl.store(o_ptrs, out, mask=offs_m[:, None] < Nq)


@triton.jit
def _decode_kernel(Q, K, V, OP, LP,
                   stride_qb, stride_qh, stride_qm,
                   stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn,
                   stride_pb, stride_ph, stride_ps, stride_pm,
                   stride_lb, stride_lh, stride_ls,
                   G, Nq, Nkv, qk_scale, blocks_per_split,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   USE_TMA: tl.constexpr):
    """Split s of KV head hk: the G·Nq rows (r = g·Nq + n ↔ query head hk·G + g, position n) against KV blocks
    [s·blocks_per_split, (s+1)·blocks_per_split)."""
    s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hk = tl.program_id(2).to(tl.int64)
    M = G * Nq
    offs_r = tl.arange(0, BLOCK_M)
    gq = offs_r // Nq
    pos = offs_r % Nq  # query position of each row, for the causal mask
    q_ptrs = (Q + b * stride_qb + (hk * G + gq)[:, None] * stride_qh + pos[:, None] * stride_qm
              + tl.arange(0, HEAD_DIM)[None, :])
    q = tl.load(q_ptrs, mask=offs_r[:, None] < M, other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    if USE_TMA:
        k_desc = tl.make_tensor_descriptor(k_base, shape=[Nkv, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[Nkv, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
    else:
        k_desc = None
        v_desc = None
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    tn = tl.cdiv(Nkv, BLOCK_N)
    lo = s * blocks_per_split
    hi = tl.minimum(lo + blocks_per_split, tn)
    acc, l_i, m_i = _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, lo, hi, pos, Nq, Nkv,
                                stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL, USE_TMA, False)
    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))  # log2 domain
    rmask = offs_r < M
    tl.store(LP + b * stride_lb + hk * stride_lh + s * stride_ls + offs_r, lse, mask=rmask)
    p_ptrs = (OP + b * stride_pb + hk * stride_ph + s * stride_ps + offs_r[:, None] * stride_pm
              + tl.arange(0, HEAD_DIM)[None, :])
    tl.store(p_ptrs, acc, mask=rmask[:, None])


@triton.jit
def _combine_kernel(OP, LP, O, LSE,
                    stride_pb, stride_ph, stride_ps, stride_pm,
                    stride_lb, stride_lh, stride_ls,
                    stride_ob, stride_oh, stride_om, stride_eb, stride_eh,
                    G, Nq, S,
                    S_POW2: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Row r of KV head hk: O = Σ_s 2^(lse_s − lse) · O_s with lse = log2 Σ_s 2^lse_s."""
    r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hk = tl.program_id(2).to(tl.int64)
    offs_s = tl.arange(0, S_POW2)
    smask = offs_s < S
    lse_s = tl.load(LP + b * stride_lb + hk * stride_lh + offs_s * stride_ls + r, mask=smask, other=float("-inf"))
    parts = tl.load(OP + b * stride_pb + hk * stride_ph + offs_s[:, None] * stride_ps + r * stride_pm
                    + tl.arange(0, HEAD_DIM)[None, :], mask=smask[:, None], other=0.0)
    _merge_store(lse_s, parts, O, LSE, b, hk * G + r // Nq, r % Nq, stride_ob, stride_oh, stride_om, stride_eb,
                 stride_eh, HEAD_DIM)


@triton.jit
def _merge_store(lse_s, parts, O, LSE, b, h, n, stride_ob, stride_oh, stride_om, stride_eb, stride_eh,
                 HEAD_DIM: tl.constexpr):
    """Row n of head (b, h) from partials (log2-domain LSEs, −∞ for absent ones): O = Σ_s 2^(lse_s − lse)·O_s with
    lse = log2 Σ_s 2^lse_s; stores O and the natural-log LSE."""
    m = tl.max(lse_s, 0)
    m_sub = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse_s - m_sub)
    _store_merged(tl.sum(parts * w[:, None], 0), tl.sum(w, 0), m_sub, O, LSE, b, h, n, stride_ob, stride_oh,
                  stride_om, stride_eb, stride_eh, HEAD_DIM)


@triton.jit
def _store_merged(acc, tot, m_sub, O, LSE, b, h, n, stride_ob, stride_oh, stride_om, stride_eb, stride_eh,
                  HEAD_DIM: tl.constexpr):
    """Row n of head (b, h): O = acc / tot, LSE = (m_sub + log2 tot) in natural log (−∞ where no partial had a key)."""
    o = acc / tl.where(tot > 0.0, tot, 1.0)
    tl.store(O + b * stride_ob + h * stride_oh + n * stride_om + tl.arange(0, HEAD_DIM), o.to(O.dtype.element_ty))
    lse = tl.where(tot > 0.0, (m_sub + tl.math.log2(tl.where(tot > 0.0, tot, 1.0))) / 1.4426950408889634,
                   float("-inf"))
    tl.store(LSE + b * stride_eb + h * stride_eh + n, lse)


@triton.jit
def _streamk_decode_kernel(Q, K, V, OP, LP,
                           stride_qb, stride_qh, stride_qm,
                           stride_kb, stride_kh, stride_kn,
                           stride_vb, stride_vh, stride_vn,
                           stride_pw, stride_pk, stride_pm, stride_lw, stride_lk,
                           Hk, G, Nq, Nkv, qk_scale, T,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                           USE_TMA: tl.constexpr):
    """Worker w of W (stream-K, LeanAttention): KV tiles [s_w, s_{w+1}) of the stream of T = B·Hkv·T_c tiles (pair
    π = b·Hkv + hk, tile π·T_c + j), s_w = w·⌊T/W⌋ + min(w, T mod W). Each pair its range touches is a segment: the
    pair's G·Nq packed rows (as ``_decode_kernel``) against the segment's KV blocks, partial O (fp32) and log2 LSE
    stored to scratch slot (w, k) for its k-th segment."""
    w = tl.program_id(0)
    W = tl.num_programs(0)
    start = w * (T // W) + tl.minimum(w, T % W)
    end = start + T // W + (w < T % W).to(tl.int32)
    tn = tl.cdiv(Nkv, BLOCK_N)
    p0 = start // tn
    M = G * Nq
    offs_r = tl.arange(0, BLOCK_M)
    rmask = offs_r < M
    pos = offs_r % Nq  # query position of each packed row, for the causal mask
    for pi in range(p0, (end - 1) // tn + 1):
        b = (pi // Hk).to(tl.int64)
        hk = (pi % Hk).to(tl.int64)
        q = tl.load(Q + b * stride_qb + (hk * G + offs_r // Nq)[:, None] * stride_qh + pos[:, None] * stride_qm
                    + tl.arange(0, HEAD_DIM)[None, :], mask=rmask[:, None], other=0.0)
        k_base = K + b * stride_kb + hk * stride_kh
        v_base = V + b * stride_vb + hk * stride_vh
        if USE_TMA:
            k_desc = tl.make_tensor_descriptor(k_base, shape=[Nkv, HEAD_DIM], strides=[stride_kn, 1],
                                               block_shape=[BLOCK_N, HEAD_DIM])
            v_desc = tl.make_tensor_descriptor(v_base, shape=[Nkv, HEAD_DIM], strides=[stride_vn, 1],
                                               block_shape=[BLOCK_N, HEAD_DIM])
        else:
            k_desc = None
            v_desc = None
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        lo = tl.maximum(start, pi * tn) - pi * tn
        hi = tl.minimum(end, (pi + 1) * tn) - pi * tn
        acc, l_i, m_i = _attn_range(acc, l_i, m_i, q, k_desc, v_desc, k_base, v_base, lo, hi, pos, Nq, Nkv,
                                    stride_kn, stride_vn, qk_scale, BLOCK_N, HEAD_DIM, True, CAUSAL, USE_TMA, False)
        seen = l_i > 0.0
        acc = acc / tl.where(seen, l_i, 1.0)[:, None]
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        slot = w * stride_pw + (pi - p0) * stride_pk
        tl.store(LP + w * stride_lw + (pi - p0) * stride_lk + offs_r, lse, mask=rmask)
        tl.store(OP + slot + offs_r[:, None] * stride_pm + tl.arange(0, HEAD_DIM)[None, :], acc, mask=rmask[:, None])


STREAMK_COMBINE_CHUNK = 8
"""Partials the stream-K combine merges per step (``_streamk_combine_kernel``): 8 × d fp32 in one warp's registers."""


@triton.jit
def _streamk_combine_kernel(OP, LP, O, LSE,
                            stride_pw, stride_pk, stride_pm, stride_lw, stride_lk,
                            stride_ob, stride_oh, stride_om, stride_eb, stride_eh,
                            Hk, G, Nq, Nkv, T, W,
                            CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Row r of pair (b, hk): merges the partials of the workers wa … wb whose ranges meet the pair's tiles
    [π·T_c, (π+1)·T_c), worker w's in its slot (w, π − ⌊s_w/T_c⌋), CHUNK slots at a time with a running
    (max, sum, O) (log2 domain). Until session 11 all slots were one [next_pow2(slots), d] tile in one warp's
    registers: with 33–66 slots a pair, 255 registers and 17–79 µs a launch (reports/validation/h100/persistent/held5.md)."""
    r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hk = tl.program_id(2).to(tl.int64)
    tn = tl.cdiv(Nkv, BLOCK_N)
    pi = b * Hk + hk
    qt = T // W
    big = (T % W) * (qt + 1)  # tiles of the workers with ⌈T/W⌉ tiles
    x0 = pi * tn
    x1 = x0 + tn - 1
    wa = tl.where(x0 < big, x0 // (qt + 1), T % W + (x0 - big) // qt)
    wb = tl.where(x1 < big, x1 // (qt + 1), T % W + (x1 - big) // qt)
    m = tl.full((), float("-inf"), tl.float32)
    tot = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    for c in range(wa, wb + 1, CHUNK):
        wv = c + tl.arange(0, CHUNK)
        smask = wv <= wb
        kv = pi - (wv * qt + tl.minimum(wv, T % W)) // tn
        lse_s = tl.load(LP + wv * stride_lw + kv * stride_lk + r, mask=smask, other=float("-inf"))
        parts = tl.load(OP + wv[:, None] * stride_pw + kv[:, None] * stride_pk + r * stride_pm
                        + tl.arange(0, HEAD_DIM)[None, :], mask=smask[:, None], other=0.0)
        m_new = tl.maximum(m, tl.max(lse_s, 0))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_sub)
        wgt = tl.math.exp2(lse_s - m_sub)
        tot = tot * alpha + tl.sum(wgt, 0)
        acc = acc * alpha + tl.sum(parts * wgt[:, None], 0)
        m = m_new
    _store_merged(acc, tot, tl.where(m == float("-inf"), 0.0, m), O, LSE, b, hk * G + r // Nq, r % Nq, stride_ob,
                  stride_oh, stride_om, stride_eb, stride_eh, HEAD_DIM)


# --- backward: FA2 Algorithm 2 in three launches (Dao-AILab/flash-attention flash_bwd_launch_template.h) ---------


@triton.jit
def _bwd_preprocess(O, DO, DELTA, DQA,
                    stride_ob, stride_oh, stride_om, stride_db, stride_dh, stride_dm,
                    Nq, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Query block i of head (b, h): D_i = rowsum(dO_i ∘ O_i) (fp32) and dQ_accum_i = 0."""
    i = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = offs_m < Nq
    o = _load_tile(None, O + b * stride_ob + h * stride_oh, i * BLOCK_M, Nq, stride_om, BLOCK_M, HEAD_DIM, False, True)
    do = _load_tile(None, DO + b * stride_db + h * stride_dh, i * BLOCK_M, Nq, stride_dm, BLOCK_M, HEAD_DIM,
                    False, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row = (b * tl.num_programs(2) + h) * Nq  # DELTA [B, H, Nq] and DQA [B, H, Nq, HEAD_DIM]: contiguous
    tl.store(DELTA + row + offs_m, delta, mask=rmask)
    tl.store(DQA + (row + offs_m[:, None]) * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :],
             tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32), mask=rmask[:, None])


@triton.jit
def _bwd_range(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dqa_base, lo, hi, offs_n, stride_qm, stride_dm,
               Nq, Nkv, qk_scale, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
               CAUSAL: tl.constexpr):
    """Query blocks i in [lo, hi) against the program's KV block, KV-major as Triton's tutorial (Sᵀ = K Qᵀ,
    BLOCK_N × BLOCK_M): dV += Pᵀ dO, dK += dSᵀ Q (unscaled), dQ_accum_i += dS K (unscaled; fp32 atomic add).
    MASK applies the causal and Nkv masks (the diagonal band; every block of a ragged KV block)."""
    for i in tl.range(lo, hi):
        offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = offs_m < Nq
        q = _load_tile(None, q_base, i * BLOCK_M, Nq, stride_qm, BLOCK_M, HEAD_DIM, False, True)
        do = _load_tile(None, do_base, i * BLOCK_M, Nq, stride_dm, BLOCK_M, HEAD_DIM, False, True)
        lse = tl.load(lse_base + offs_m, mask=rmask, other=float("-inf"))
        delta = tl.load(delta_base + offs_m, mask=rmask, other=0.0)
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # no key seen, past Nq: P = 0
        pt = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse2[None, :])
        if MASK:
            valid = offs_n[:, None] < Nkv
            if CAUSAL:
                valid = valid & (offs_n[:, None] <= offs_m[None, :] + (Nkv - Nq))
            pt = tl.where(valid, pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do)
        dst = (pt * (tl.dot(v, tl.trans(do)) - delta[None, :])).to(q.dtype)
        dk += tl.dot(dst, q)
        dq = tl.dot(tl.trans(dst), k)
        tl.atomic_add(dqa_base + offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], dq,
                      mask=rmask[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_kernel(Q, K, V, DO, LSE, DELTA, DQA, DK, DV,
                stride_qb, stride_qh, stride_qm,
                stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn,
                stride_db, stride_dh, stride_dm,
                stride_lb, stride_lh,
                stride_gb, stride_gh, stride_gn,
                H, G, Nq, Nkv, qk_scale, sm_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr):
    """KV block j of KV head (b, hk): K_j, V_j loaded once, dK_j, dV_j (fp32) kept on chip over the G query heads
    of the group and their query blocks, stored once (DK, DV share the strides stride_g*)."""
    j = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hk = tl.program_id(2).to(tl.int64)
    offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_tile(None, K + b * stride_kb + hk * stride_kh, j * BLOCK_N, Nkv, stride_kn, BLOCK_N, HEAD_DIM, False,
                   True)
    v = _load_tile(None, V + b * stride_vb + hk * stride_vh, j * BLOCK_N, Nkv, stride_vn, BLOCK_N, HEAD_DIM, False,
                   True)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    tm = tl.cdiv(Nq, BLOCK_M)
    if CAUSAL:
        # [lo, mid): blocks with a row that sees a key of block j and a row that misses one; [mid, tm): all see all
        lo = tl.minimum(tl.maximum(j * BLOCK_N - (Nkv - Nq), 0) // BLOCK_M, tm)
        mid = tl.minimum(tl.maximum(tl.cdiv(tl.maximum((j + 1) * BLOCK_N - 1 - (Nkv - Nq), 0), BLOCK_M), lo), tm)
    else:
        lo = 0
        mid = tl.where((j + 1) * BLOCK_N > Nkv, tm, 0)
    for g in range(0, G):
        h = hk * G + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_db + h * stride_dh
        lse_base = LSE + b * stride_lb + h * stride_lh
        row = (b * H + h) * Nq
        dk, dv = _bwd_range(dk, dv, k, v, q_base, do_base, lse_base, DELTA + row, DQA + row * HEAD_DIM, lo, mid,
                            offs_n, stride_qm, stride_dm, Nq, Nkv, qk_scale, BLOCK_M, HEAD_DIM, True, CAUSAL)
        dk, dv = _bwd_range(dk, dv, k, v, q_base, do_base, lse_base, DELTA + row, DQA + row * HEAD_DIM, mid, tm,
                            offs_n, stride_qm, stride_dm, Nq, Nkv, qk_scale, BLOCK_M, HEAD_DIM, False, CAUSAL)
    nmask = offs_n[:, None] < Nkv
    out = b * stride_gb + hk * stride_gh + offs_n[:, None] * stride_gn + tl.arange(0, HEAD_DIM)[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=nmask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=nmask)


@triton.jit
def _bwd_convert(DQA, DQ, stride_qb, stride_qh, stride_qm, Nq, sm_scale,
                 BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Query block i of head (b, h): dQ_i = sm_scale · dQ_accum_i in dQ's dtype."""
    i = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = offs_m[:, None] < Nq
    cols = tl.arange(0, HEAD_DIM)[None, :]
    acc = tl.load(DQA + ((b * tl.num_programs(2) + h) * Nq + offs_m[:, None]) * HEAD_DIM + cols, mask=rmask)
    tl.store(DQ + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + cols,
             (acc * sm_scale).to(DQ.dtype.element_ty), mask=rmask)


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockMask:
    """A block-sparse mask in FlexAttention's layout (``torch.nn.attention.flex_attention.BlockMask``'s kv_* fields).

    kv_num_blocks: int32 [B, H, Q_blocks] — how many KV blocks query block i visits;
    kv_indices: int32 [B, H, Q_blocks, KV_blocks] — which ones, the valid entries first, in visiting order.
    B and H may be 1 (broadcast). block_m × block_n is the sparse block (query rows × keys); the kernel's
    BLOCK_M must divide block_m and its BLOCK_N must divide block_n. Every listed block is attended in full.
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    block_m: int = 128
    block_n: int = 128

    @classmethod
    def from_dense(cls, dense: torch.Tensor, block_m: int = 128, block_n: int = 128) -> "BlockMask":
        """From a bool [Q_blocks, KV_blocks] or [B, H, Q_blocks, KV_blocks] block table (True = visit)."""
        d = dense.bool()
        while d.dim() < 4:
            d = d.unsqueeze(0)
        num = d.sum(-1).to(torch.int32)
        idx = torch.argsort(d.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return cls(num.contiguous(), idx.contiguous(), block_m, block_n)

    def to_dense(self) -> torch.Tensor:
        """bool [B, H, Q_blocks, KV_blocks]."""
        kb = self.kv_indices.shape[-1]
        pos = torch.arange(kb, device=self.kv_indices.device)
        listed = pos < self.kv_num_blocks[..., None]
        out = torch.zeros(self.kv_indices.shape, dtype=torch.bool, device=self.kv_indices.device)
        out.scatter_(-1, self.kv_indices.long(), listed)
        return out

    def dense_mask(self, nq: int, nkv: int) -> torch.Tensor:
        """bool [B, H, nq, nkv] element mask (for references)."""
        d = self.to_dense()
        d = d.repeat_interleave(self.block_m, dim=2).repeat_interleave(self.block_n, dim=3)
        return d[..., :nq, :nkv]


@dataclass(frozen=True)
class TritonConfig:
    """KernelConfig (block_m, block_n, num_warps, num_stages, grid_order, kv_order, q_order) plus the Triton-only knobs.

    use_tma: None = on sm90+ when strides allow; num_splits: split-KV decode splits (None = fill the SMs).
    """

    kernel: KernelConfig = field(default_factory=KernelConfig)
    use_tma: bool | None = None
    num_splits: int | None = None


# config="auto": the candidates timed on first use per shape class (the final sweep's list, benchmarks/
# gpu_attention.py FINAL): tiles, the pointer path beside TMA, and LPT order (q_order="descending") for causal;
# led by DEFAULT_CONFIGS' exhaustive-timing picks (schedule.py), not yet timed through this autotune path on a GPU.
AUTOTUNE_CANDIDATES: dict[tuple[int, bool], list[tuple[tuple[int, int, int, int], bool | None, str]]] = {
    (64, False): [((64, 128, 4, 2), None, "ascending"), ((128, 128, 4, 3), None, "ascending"),
                  ((128, 128, 4, 3), False, "ascending"), ((128, 64, 4, 3), None, "ascending")],
    (64, True): [((64, 128, 4, 2), None, "ascending"), ((64, 64, 4, 2), None, "ascending"),
                 ((128, 128, 4, 3), None, "ascending"), ((128, 64, 4, 3), None, "ascending"),
                 ((128, 128, 4, 3), None, "descending"), ((128, 64, 4, 3), None, "descending")],
    (128, False): [((128, 64, 4, 2), None, "ascending"), ((128, 128, 8, 3), None, "ascending"),
                   ((128, 128, 8, 3), False, "ascending")],
    (128, True): [((128, 64, 4, 2), None, "ascending"), ((128, 64, 4, 2), None, "descending"),
                  ((128, 128, 8, 3), None, "ascending"), ((128, 128, 8, 3), False, "ascending"),
                  ((128, 128, 8, 3), None, "descending"), ((128, 128, 8, 3), False, "descending")],
}
_TUNED: dict = {}


def _autotuned(q, k, v, causal: bool, scale: float) -> "TritonConfig":
    """Best candidate for this shape class (head_dim, causal, dtype, group, and powers of two above Nq, Nkv, B·H),
    timed once with triton.testing.do_bench (median); the default config where nothing can be timed."""
    B, H, Nq, D = q.shape
    Hk, Nkv = k.shape[1], k.shape[2]
    key = (D, bool(causal), q.dtype, H // Hk, triton.next_power_of_2(Nq), triton.next_power_of_2(Nkv),
           triton.next_power_of_2(B * H))
    if key in _TUNED:
        return _TUNED[key]
    cands = [TritonConfig(KernelConfig(*c, q_order=qo), use_tma=tma)
             for c, tma, qo in AUTOTUNE_CANDIDATES.get((D, bool(causal)), [])]
    if _interpreting() or not q.is_cuda or not cands:
        return TritonConfig(default_config(D, causal))
    from triton.testing import do_bench
    timed = []
    for c in cands:
        try:
            t = do_bench(lambda: _forward(q, k, v, causal, None, scale, c.kernel, c), warmup=5, rep=25,
                         return_mode="median")
            timed.append((t, c))
        except Exception:  # a candidate that does not compile or fit is skipped
            continue
    best = min(timed, key=lambda x: x[0])[1] if timed else TritonConfig(default_config(D, causal))
    _TUNED[key] = best
    return best


_ALLOCATOR_SET = False


def _ensure_allocator() -> None:
    """tl.make_tensor_descriptor needs global scratch for the descriptors (128 B each)."""
    global _ALLOCATOR_SET
    if _ALLOCATOR_SET:
        return

    def alloc(size: int, alignment: int, stream):
        dev = "cuda" if torch.cuda.is_available() and not _interpreting() else "cpu"
        return torch.empty(size, dtype=torch.int8, device=dev)

    triton.set_allocator(alloc)
    _ALLOCATOR_SET = True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _interpreter_compat() -> None:
    """Triton ≤ 3.6's interpreter converts scalars (1-element arrays) with int(array), which NumPy ≥ 2.4 refuses;
    Triton 3.9 squeezes first. Do the same, so ``range(tensor)`` works in interpreted kernels."""
    if not _interpreting():
        return
    from triton.runtime import interpreter as interp
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_iosim_compat", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._iosim_compat = True
    interp._patch_lang_tensor = patched


_interpreter_compat()


def _tma_ok(*tensors) -> bool:
    """TMA needs sm90+, a contiguous last dim, 16-byte aligned base addresses and row strides."""
    t0 = tensors[0]
    if _interpreting():
        ok_dev = True
    elif t0.is_cuda:
        ok_dev = torch.cuda.get_device_capability(t0.device)[0] >= 9
    else:
        ok_dev = False
    if not ok_dev:
        return False
    for t in tensors:
        e = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((s * e) % 16 for s in t.stride()[:-1]):
            return False
    return True


def _as_kernel_config(config) -> TritonConfig:
    if config is None:
        return TritonConfig(KernelConfig())
    if isinstance(config, TritonConfig):
        return config
    if isinstance(config, KernelConfig):
        return TritonConfig(config)
    if isinstance(config, dict):
        c = dict(config)
        tma = c.pop("use_tma", None)
        splits = c.pop("num_splits", None)
        return TritonConfig(KernelConfig(**c), tma, splits)
    raise IosimError(f"config must be a KernelConfig, TritonConfig or dict, got {type(config).__name__}")


def _check_inputs(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise IosimError(f"q, k, v must be [batch, heads, seq, head_dim]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, H, Nq, D = q.shape
    Bk, Hk, Nkv, Dk = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise IosimError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if Bk != B or Dk != D:
        raise IosimError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if H % Hk:
        raise IosimError(f"kv heads {Hk} must divide query heads {H} (GQA)")
    check_head_dim(D)
    if Nq == 0 or Nkv == 0:
        raise IosimError(f"empty sequence (Nq={Nq}, Nkv={Nkv})")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise IosimError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise IosimError("q, k, v need a contiguous last dimension (call .contiguous())")
    return B, H, Hk, Nq, Nkv, D


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, block_mask: BlockMask | None = None,
              config=None, sm_scale: float | None = None, return_lse: bool = False, decode: bool | str | None = None,
              persistent: bool = False, num_workers: int | None = None, order: str | None = None,
              num_sms: int | None = None):
    """O = softmax(Q Kᵀ·sm_scale [+ causal mask] [+ block mask]) V.

    q: [B, H, Nq, d]; k, v: [B, Hkv, Nkv, d] (Hkv divides H: GQA/MQA); causal is bottom-right aligned.
    block_mask: a ``BlockMask`` (FlexAttention layout) or None. config: ``KernelConfig`` / ``TritonConfig`` / dict
    (None: ``default_config``; "auto": the fastest of ``AUTOTUNE_CANDIDATES``, timed once per shape class). decode:
    force (True) or forbid (False) the split-KV path (None: ``use_decode``), or "streamk" for the stream-K decode
    (``_streamk_decode_kernel`` + ``_streamk_combine_kernel``; schedule ``streamk_decode_schedule``).
    persistent: the persistent forward (``_persistent_fwd_kernel``, ``persistent_schedule``), items in ``order``
    ("rr" | "lpt"; None: "lpt" when causal). num_workers: the persistent grid (None: num_sms × CTAs per SM that
    fit, ``persistent_workers``; stream-K: ``streamk_workers``); num_sms: None = the device's (132 off-GPU).
    Returns O [B, H, Nq, d] in q's dtype, and the logsumexp [B, H, Nq] (fp32, natural log) if return_lse.
    """
    B, H, Hk, Nq, Nkv, D = _check_inputs(q, k, v)
    scale = (1.0 / math.sqrt(D)) if sm_scale is None else float(sm_scale)
    if decode not in (None, True, False, "streamk"):
        raise IosimError(f"decode={decode!r}: use None, True, False or 'streamk'")
    if persistent and (decode is True or decode == "streamk" or block_mask is not None):
        raise IosimError("persistent=True is the dense forward: it takes no block_mask and no decode path")
    if decode is None:
        decode = not persistent and use_decode(Nq, H, Hk, Nkv, block_mask)
    if isinstance(config, str):
        if config != "auto":
            raise IosimError(f"config must be a KernelConfig, TritonConfig, dict, None or 'auto', got {config!r}")
        config = _autotuned(q, k, v, causal, scale) if (block_mask is None and not decode and not persistent) else None
    tcfg = _as_kernel_config(config)
    kc = launch_config(D, causal, tcfg.kernel)
    if num_sms is None:
        num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
    if decode and block_mask is not None:
        raise IosimError("split-KV decode does not take a block_mask")
    if decode == "streamk":
        o, lse = _streamk_decode(q, k, v, causal, scale, kc, tcfg, num_workers, num_sms)
    elif decode:
        o, lse = _decode(q, k, v, causal, scale, kc, tcfg)
    elif persistent:
        o, lse = _persistent(q, k, v, causal, scale, kc, tcfg, num_workers, order, num_sms)
    else:
        o, lse = _forward(q, k, v, causal, block_mask, scale, kc, tcfg)
    return (o, lse) if return_lse else o


_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _problem(q, k, causal) -> Problem:
    B, H, Nq, D = q.shape
    return Problem(B, H, k.shape[1], Nq, k.shape[2], D, _DTYPES.get(q.dtype, "bf16"), bool(causal))


def _check_tiles(bm: int, bn: int) -> None:
    for name, val in (("block_m", bm), ("block_n", bn)):
        if val < 16 or val & (val - 1):
            raise IosimError(f"{name}={val}: the Triton kernel needs a power of two >= 16")


def _persistent(q, k, v, causal, scale, kc: KernelConfig, tcfg: TritonConfig, num_workers, order, num_sms):
    """``_persistent_fwd_kernel`` on a grid of num_workers programs (``schedule.persistent_schedule``)."""
    B, H, Nq, D = q.shape
    _check_tiles(kc.block_m, kc.block_n)
    check_persistent_config(kc)
    order = persistent_order(causal, order)
    p = _problem(q, k, causal)
    W = persistent_workers(p, kc, num_sms) if num_workers is None else num_workers
    if not isinstance(W, int) or W < 1:
        raise IosimError(f"num_workers={W!r}: give a positive integer")
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    use_tma = _tma_ok(q, k, v, o) if tcfg.use_tma is None else tcfg.use_tma
    if use_tma:
        _ensure_allocator()
    _persistent_fwd_kernel[(W,)](
        q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], *lse.stride()[:2],
        B, H, H // k.shape[1], Nq, k.shape[2], scale * LOG2E,
        BLOCK_M=kc.block_m, BLOCK_N=kc.block_n, HEAD_DIM=D, CAUSAL=bool(causal), USE_TMA=bool(use_tma),
        DESCENDING=kc.kv_order == "descending", LPT=order == "lpt", num_warps=kc.num_warps, num_stages=kc.num_stages)
    return o, lse


def _streamk_decode(q, k, v, causal, scale, kc: KernelConfig, tcfg: TritonConfig, num_workers, num_sms):
    """``_streamk_decode_kernel`` (W workers) + ``_streamk_combine_kernel`` (``schedule.streamk_decode_schedule``)."""
    B, H, Nq, D = q.shape
    Hk, Nkv = k.shape[1], k.shape[2]
    G, bn = H // Hk, kc.block_n
    M = G * Nq
    bm = max(16, triton.next_power_of_2(M))
    _check_tiles(16, bn)
    if bm > 128:
        raise IosimError(f"stream-K decode packs G·Nq = {M} rows per KV head; at most 128 (use decode=False)")
    p = _problem(q, k, causal)
    W, kmax, smax, _ = streamk_segments(p, bn, streamk_workers(p, bn, num_sms) if num_workers is None else num_workers)
    use_tma = _tma_ok(k, v) if tcfg.use_tma is None else tcfg.use_tma
    if use_tma:
        _ensure_allocator()
    op = torch.empty((W, kmax, M, D), dtype=torch.float32, device=q.device)
    lp = torch.empty((W, kmax, M), dtype=torch.float32, device=q.device)
    T = B * Hk * triton.cdiv(Nkv, bn)
    _streamk_decode_kernel[(W,)](
        q, k, v, op, lp, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *op.stride()[:3], *lp.stride()[:2],
        Hk, G, Nq, Nkv, scale * LOG2E, T,
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal), USE_TMA=bool(use_tma), num_warps=4,
        num_stages=kc.num_stages)
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    _streamk_combine_kernel[(M, B, Hk)](
        op, lp, o, lse, *op.stride()[:3], *lp.stride()[:2], *o.stride()[:3], *lse.stride()[:2],
        Hk, G, Nq, Nkv, T, W, CHUNK=STREAMK_COMBINE_CHUNK, BLOCK_N=bn, HEAD_DIM=D, num_warps=1)
    return o, lse


def _grid(kc: KernelConfig, tm: int, B: int, H: int):
    return launch_grid(kc, tm, B, H)


def _forward(q, k, v, causal, block_mask, scale, kc: KernelConfig, tcfg: TritonConfig):
    B, H, Nq, D = q.shape
    Hk, Nkv = k.shape[1], k.shape[2]
    bm, bn = kc.block_m, kc.block_n
    _check_tiles(bm, bn)
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    use_tma = _tma_ok(q, k, v, o) if tcfg.use_tma is None else tcfg.use_tma
    if use_tma:
        _ensure_allocator()
    tm = triton.cdiv(Nq, bm)
    grid, axes = _grid(kc, tm, B, H)
    if block_mask is not None:
        sbm, sbn = block_mask.block_m, block_mask.block_n
        if sbm % bm or sbn % bn:
            raise IosimError(f"block_mask blocks {sbm}x{sbn} must be multiples of the kernel's BLOCK_M x BLOCK_N "
                             f"{bm}x{bn}; pass a config with smaller block_m/block_n")
        num, idx = block_mask.kv_num_blocks, block_mask.kv_indices
        if num.dim() != 3 or idx.dim() != 4:
            raise IosimError("block_mask.kv_num_blocks must be [B, H, Q_blocks] and kv_indices [B, H, Q_blocks, KV_blocks]")
        if num.shape[2] < triton.cdiv(Nq, sbm) or idx.shape[3] < triton.cdiv(Nkv, sbn):
            raise IosimError(f"block_mask covers {num.shape[2]}x{idx.shape[3]} blocks of {sbm}x{sbn}, but the "
                             f"problem needs {triton.cdiv(Nq, sbm)}x{triton.cdiv(Nkv, sbn)}")
        num = num.to(device=q.device, dtype=torch.int32).expand(B, H, num.shape[2])
        idx = idx.to(device=q.device, dtype=torch.int32).expand(B, H, idx.shape[2], idx.shape[3])
        sp_args = (num, idx, *num.stride(), *idx.stride()[:3])
        sparse = dict(SPARSE=True, SPARSE_BM=sbm, SPARSE_BN=sbn)
    else:
        sp_args = (q, q, 0, 0, 0, 0, 0, 0)
        sparse = dict(SPARSE=False, SPARSE_BM=bm, SPARSE_BN=bn)
    _fwd_kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1),
        H, H // Hk, Nq, Nkv, scale * LOG2E,
        *sp_args,
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal), **sparse,
        USE_TMA=bool(use_tma), DESCENDING=kc.kv_order == "descending", Q_DESCENDING=kc.q_order == "descending",
        **axes, num_warps=kc.num_warps, num_stages=kc.num_stages)
    return o, lse


def _decode(q, k, v, causal, scale, kc: KernelConfig, tcfg: TritonConfig):
    B, H, Nq, D = q.shape
    Hk, Nkv = k.shape[1], k.shape[2]
    G = H // Hk
    M = G * Nq
    bm = max(16, triton.next_power_of_2(M))
    bn = kc.block_n or 64
    if bm > 128:
        raise IosimError(f"split-KV decode packs G·Nq = {M} rows per KV head; at most 128 (use decode=False)")
    num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
    S = tcfg.num_splits or decode_splits(B, Hk, Nkv, bn, num_sms)
    tn = triton.cdiv(Nkv, bn)
    bps = triton.cdiv(tn, S)
    S = triton.cdiv(tn, bps)  # no empty splits
    use_tma = _tma_ok(k, v) if tcfg.use_tma is None else tcfg.use_tma
    if use_tma:
        _ensure_allocator()
    op = torch.empty((B, Hk, S, M, D), dtype=torch.float32, device=q.device)
    lp = torch.empty((B, Hk, S, M), dtype=torch.float32, device=q.device)
    _decode_kernel[(S, B, Hk)](
        q, k, v, op, lp,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        op.stride(0), op.stride(1), op.stride(2), op.stride(3),
        lp.stride(0), lp.stride(1), lp.stride(2),
        G, Nq, Nkv, scale * LOG2E, bps,
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal), USE_TMA=bool(use_tma),
        num_warps=4, num_stages=kc.num_stages)
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    _combine_kernel[(M, B, Hk)](
        op, lp, o, lse,
        op.stride(0), op.stride(1), op.stride(2), op.stride(3),
        lp.stride(0), lp.stride(1), lp.stride(2),
        o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
        G, Nq, S, S_POW2=max(2, triton.next_power_of_2(S)), HEAD_DIM=D, num_warps=1)
    return o, lse


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                       do: torch.Tensor, causal: bool = False, config=None, sm_scale: float | None = None):
    """(dQ, dK, dV) of O = attention(q, k, v, causal, sm_scale) for the output gradient dO.

    o, lse: the forward's output and logsumexp (``attention(..., return_lse=True)``; fp32 [B, H, Nq], natural log,
    −∞ for rows that see no key); do: [B, H, Nq, d] in q's dtype. config: a ``KernelConfig`` (tiles, warps, stages;
    None: ``backward_config``'s defaults). Launches exactly the three kernels of ``schedule.backward_schedule``
    (outputs and scratch by torch.empty, so no other kernel runs). dK, dV are [B, Hkv, Nkv, d] (GQA: summed over
    the group inside the main kernel)."""
    B, H, Hk, Nq, Nkv, D = _check_inputs(q, k, v)
    for name, t in (("o", o), ("do", do)):
        if tuple(t.shape) != tuple(q.shape) or t.dtype != q.dtype or t.stride(-1) != 1:
            raise IosimError(f"{name} must be [B, H, Nq, d] = {tuple(q.shape)} in {q.dtype} with a contiguous last "
                             f"dimension; got {tuple(t.shape)} {t.dtype} (call .contiguous())")
    if tuple(lse.shape) != (B, H, Nq) or lse.dtype != torch.float32 or lse.stride(-1) != 1:
        raise IosimError(f"lse must be the forward's fp32 logsumexp [B, H, Nq] = {(B, H, Nq)}; got "
                         f"{tuple(lse.shape)} {lse.dtype} (use attention(..., return_lse=True))")
    kc = backward_config(D, _as_kernel_config(config).kernel)
    for name, val in (("block_m", kc.block_m), ("block_n", kc.block_n)):
        if val < 16 or val & (val - 1):
            raise IosimError(f"{name}={val}: the Triton kernel needs a power of two >= 16")
    scale = (1.0 / math.sqrt(D)) if sm_scale is None else float(sm_scale)
    bm, bn = kc.block_m, kc.block_n
    tm, tn = triton.cdiv(Nq, bm), triton.cdiv(Nkv, bn)
    delta = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    dqa = torch.empty((B, H, Nq, D), dtype=torch.float32, device=q.device)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _bwd_preprocess[(tm, B, H)](o, do, delta, dqa, *o.stride()[:3], *do.stride()[:3], Nq,
                                BLOCK_M=bm, HEAD_DIM=D, num_warps=4)
    _bwd_kernel[(tn, B, Hk)](
        q, k, v, do, lse, delta, dqa, dk, dv,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *lse.stride()[:2], *dk.stride()[:3],
        H, H // Hk, Nq, Nkv, scale * LOG2E, scale,
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal), num_warps=kc.num_warps, num_stages=kc.num_stages)
    _bwd_convert[(tm, B, H)](dqa, dq, *dq.stride()[:3], Nq, scale, BLOCK_M=bm, HEAD_DIM=D, num_warps=4)
    return dq, dk, dv


def backward_launch(q, k, v, o, lse, do, causal: bool = False, config=None):
    """GPU measurement hook (ncu): ``attention_backward`` with the default scale — exactly the launches
    _bwd_preprocess, _bwd_kernel, _bwd_convert, no torch kernel between them; inputs must already be valid."""
    return attention_backward(q, k, v, o, lse, do, causal, config)


class _Attention(torch.autograd.Function):
    """attention() with a backward pass: forward saves O and LSE, backward runs ``attention_backward``."""

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        o, lse = attention(q, k, v, causal=causal, sm_scale=sm_scale, return_lse=True)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, o, lse, do.contiguous(), ctx.causal, sm_scale=ctx.sm_scale)
        return dq, dk, dv, None, None


def attention_autograd(q, k, v, causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """``attention(q, k, v, causal, sm_scale)`` that torch.autograd differentiates with ``attention_backward``."""
    return _Attention.apply(q, k, v, causal, sm_scale)
