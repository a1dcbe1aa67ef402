"""FA2's split-KV decode as PyTorch runs it (models/splitkv.py): counts of the GQA-packed schedule against closed
forms worked out here, the NumPy execution against naive attention, and FA2's num_splits_heuristic by hand."""

import numpy as np
import pytest

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.splitkv import build, num_splits_heuristic
from iosim.problem import KernelConfig, Problem
from iosim.reference import attention, count_mismatches, problem_for
from iosim.registry import get

CFG = KernelConfig(num_stages=1, kv_order="descending")


def tensor_bytes(sched, kernel, which):
    return dict(getattr(count(sched).kernels[kernel], which))


@pytest.mark.parametrize("splits", [2, 5, 8])
def test_packed_counts_equal_closed_forms(splits):
    B, H, Hk, N, d, e = 2, 32, 8, 5000, 128, 2
    s = build(Problem(B, H, Hk, 1, N, d), CFG, None, num_splits=splits)
    # 40 KV blocks of 128, ⌈40/S⌉ per split: every split has blocks for these S, and each loads its G query rows
    rd, wr = tensor_bytes(s, 0, "read_bytes"), tensor_bytes(s, 0, "write_bytes")
    assert rd["K"] == rd["V"] == B * Hk * N * d * e  # once per KV head, whatever the split count
    assert rd["Q"] == splits * B * H * d * e
    assert wr["O_accum"] + wr["LSE_accum"] == splits * B * H * (d + 1) * 4
    crd, cwr = tensor_bytes(s, 1, "read_bytes"), tensor_bytes(s, 1, "write_bytes")
    assert crd == {"O_accum": splits * B * H * d * 4, "LSE_accum": splits * B * H * 4}
    assert cwr == {"O": B * H * d * e, "LSE": B * H * 4}
    c = count(s)
    assert c.kernels[0].programs == splits * B * Hk  # one CTA per (m block, split, KV head, batch), G = 4 ≤ 64 rows
    assert c.kernels[1].programs == B * H // 4  # combine: kBlockM = 4 rows per CTA for head_dim 128


def test_unpacked_reads_kv_once_per_query_head():
    B, H, Hk, N, d = 1, 32, 8, 4096, 128
    s = build(Problem(B, H, Hk, 1, N, d), CFG, None, num_splits=4, gqa_packed=False)
    assert tensor_bytes(s, 0, "read_bytes")["K"] == B * H * N * d * 2


def test_empty_split_loads_no_q_and_writes_its_partial():
    B, H, Hk, N, d = 1, 8, 2, 5000, 128
    s = build(Problem(B, H, Hk, 1, N, d), CFG, None, num_splits=9)  # 40 blocks, 5 per split: split 8 is empty
    assert tensor_bytes(s, 0, "read_bytes")["Q"] == 8 * B * H * d * 2
    w = tensor_bytes(s, 0, "write_bytes")
    assert w["O_accum"] + w["LSE_accum"] == 9 * B * H * (d + 1) * 4


def test_measured_registers_and_smem_only_for_the_measured_launch():
    k128 = build(Problem(1, 32, 8, 1, 8192, 128), CFG, None, num_splits=4).kernels[0]
    k64 = build(Problem(1, 32, 8, 1, 8192, 64), CFG, None, num_splits=4).kernels[0]
    assert (k128.regs_per_thread, k128.smem_bytes) == (246, (64 + 2 * 128) * 128 * 2)  # 81,920 B
    assert (k64.regs_per_thread, k64.smem_bytes) == (None, None)


def naive(q, k, v, causal):
    B, H, Nq, d = q.shape
    G, Nk = H // k.shape[1], k.shape[2]
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    s = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(d)
    if causal:
        s = np.where(np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + Nk - Nq, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    return p @ vv / p.sum(-1, keepdims=True), (m + np.log(p.sum(-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("B,H,Hk,Nq,Nk,d,splits,causal", [
    (2, 8, 2, 1, 1000, 64, 3, False),   # packed, combine over 8 heads per CTA
    (1, 8, 2, 1, 700, 128, 4, True),    # packed; causal is dropped for Nq = 1
    (1, 8, 2, 1, 500, 128, 1, False),   # packed, one split: the plain kernel on the packed layout
    (1, 6, 3, 1, 300, 32, 3, False),    # packed; 16-row combine does not divide H: per-head combine CTAs
    (2, 4, 4, 1, 333, 128, 2, False),   # MHA decode: not packed
    (1, 4, 2, 16, 777, 64, 5, True),    # Nq = 16 GQA: not packed, causal
])
def test_reference_equals_naive_attention(B, H, Hk, Nq, Nk, d, splits, causal):
    rng = np.random.default_rng(Nk)
    q, k, v = (rng.standard_normal(s) for s in ((B, H, Nq, d), (B, Hk, Nk, d), (B, Hk, Nk, d)))
    o, lse, res = attention(q, k, v, algorithm="splitkv", causal=causal, config=CFG, num_splits=splits)
    ro, rl = naive(q, k, v, causal)
    np.testing.assert_allclose(o, ro, atol=1e-12)
    np.testing.assert_allclose(lse, rl, atol=1e-12)
    sched = get("splitkv").build(problem_for(q, k, causal=causal), CFG, None, num_splits=splits)
    assert count_mismatches(res, count(sched)) == []


def test_heuristic_hand_worked():
    # flash_api.cpp's comment: B·H = 48 on 108 SMs → 2 splits (efficiency 0.89 beats 3 splits' 0.67);
    # with 4 KV blocks the efficiencies are 48s/108 over ⌈·⌉: .44, .89, .67, .89 → the first ≥ 85% of .89 is 2
    assert num_splits_heuristic(48, 108, 4, 128) == 2
    # 12 "SMs", 64 KV blocks: 12 splits is ineligible (⌈64/12⌉ = ⌈64/11⌉ = 6); the best is 11 (11/12 = .92) and the
    # first eligible split count ≥ .85·.92 = .78 is 10 (⌈64/10⌉ = 7 ≠ ⌈64/9⌉ = 8)
    assert num_splits_heuristic(1, 12, 64, 128) == 10
    assert num_splits_heuristic(212, 264, 64, 128) == 1  # 212 ≥ 0.8·264 = 211.2 CTAs: no split
    assert num_splits_heuristic(211, 264, 64, 128) > 1


def test_gqa_packed_needs_decode_gqa():
    with pytest.raises(IosimError, match="gqa_packed=True needs True/False, and True needs seq_q = 1"):
        build(Problem(1, 8, 2, 16, 1024, 64), CFG, None, gqa_packed=True)
