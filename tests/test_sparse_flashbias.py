"""FlashBias (models/sparse/flashbias.py): with the bias given as factors (φ_q, φ_k) the output equals naive attention
with b = φ_q φ_kᵀ added (Triton and SDPA routes; the dense-bias baseline with b itself); ALiBi through rank-2
factors equals ALiBi added directly; counts against closed forms derived here; one-line errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.sparse import flashbias
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run


def _naive(q, k, v, causal, bias):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) + bias
    nq, nk = s.shape[-2:]
    if causal:
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_factors_equal_naive_with_bias(causal):
    rng = np.random.default_rng(3)
    B, H, Hk, nq, nk, d, R = 1, 2, 1, 100, 140, 32, 8
    p = Problem(B, H, Hk, nq, nk, d, "bf16", causal)
    q, k, v = (rng.standard_normal(s) for s in ((B, H, nq, d), (B, Hk, nk, d), (B, Hk, nk, d)))
    qb, kb = rng.standard_normal((B, H, nq, R)), rng.standard_normal((B, Hk, nk, R))
    bias = qb @ np.swapaxes(np.repeat(kb, H // Hk, 1), -1, -2)
    want = _naive(q, k, v, causal, bias)
    for route in ("triton", "sdpa"):
        s = flashbias.build(p, KernelConfig(block_m=64, block_n=32), None, rank=R, route=route)
        res = run(s, {"Q": q, "K": k, "V": v, "Qb": qb, "Kb": kb})
        np.testing.assert_allclose(res.tensors["O"], want, atol=1e-10)
        assert count_mismatches(res, count(s)) == []
    s = flashbias.build_dense(p, KernelConfig(block_m=64, block_n=32), None)
    res = run(s, {"Q": q, "K": k, "V": v, "Bias": bias})
    np.testing.assert_allclose(res.tensors["O"], want, atol=1e-10)


def test_alibi_is_rank_two():
    """b_ij = −m·(i' − j), i' = i + N_kv − N_q: φ_q(i) = [−m·i', 1], φ_k(j) = [1, m·j] (module docstring)."""
    rng = np.random.default_rng(4)
    B, H, nq, nk, d = 1, 4, 90, 120, 16
    slopes = 2.0 ** (-8 * np.arange(1, H + 1) / H)  # ALiBi's geometric slopes (Press et al.)
    ip = np.arange(nq) + nk - nq
    jj = np.arange(nk)
    alibi = -slopes[:, None, None] * (ip[None, :, None] - jj[None, None, :])
    qb = np.stack([-slopes[:, None] * ip[None, :], np.ones((H, nq))], axis=-1)[None]
    kb = np.stack([np.ones((H, nk)), slopes[:, None] * jj[None, :]], axis=-1)[None]
    p = Problem(B, H, H, nq, nk, d, "bf16", True)
    q, k, v = (rng.standard_normal(s) for s in ((B, H, nq, d), (B, H, nk, d), (B, H, nk, d)))
    s = flashbias.build(p, KernelConfig(block_m=32, block_n=32), None, rank=2)
    res = run(s, {"Q": q, "K": k, "V": v, "Qb": qb, "Kb": kb})
    np.testing.assert_allclose(res.tensors["O"], _naive(q, k, v, True, alibi[None]), atol=1e-10)


def _rows(n, blk):
    return [min(blk, n - i * blk) for i in range(-(-n // blk))]


@settings(max_examples=25, deadline=None)
@given(nq=st.integers(1, 600), extra=st.integers(0, 300), causal=st.booleans(), R=st.integers(1, 16),
       blk=st.sampled_from([32, 64, 128]), tmp=st.booleans())
def test_counts_closed_form(nq, extra, causal, R, blk, tmp):
    B, H, d, e = 2, 3, 32, 2
    nk = nq + extra
    p = Problem(B, H, H, nq, nk, d, "fp16", causal)
    cfg = KernelConfig(block_m=blk, block_n=blk, num_warps=4)
    fb = count(flashbias.build(p, cfg, None, rank=R, tmp_roundtrip=tmp)).kernels[0]
    db = count(flashbias.build_dense(p, cfg, None, tmp_roundtrip=tmp)).kernels[0]
    rows, cols = _rows(nq, blk), _rows(nk, blk)
    kv_rows = rc = steps = 0
    for i, r in enumerate(rows):
        last_key = min((i + 1) * blk, nq) - 1 + nk - nq if causal else nk - 1
        stop = min(len(cols), last_key // blk + 1)
        steps += stop
        for j in range(stop):
            kv_rows += cols[j]
            rc += r * cols[j]
    nr = -(-nq // 128) * 128
    tmp_bytes = 4 * blk * (steps + len(rows)) if tmp else 0  # whole BLOCK_M rows of TMP, each step + the end
    assert fb.read_bytes["Q"] == db.read_bytes["Q"] == B * H * nq * d * e
    assert fb.read_bytes["Qb"] == B * H * nq * R * e
    assert fb.read_bytes["K"] == fb.read_bytes["V"] == db.read_bytes["K"] == B * H * kv_rows * d * e
    assert fb.read_bytes["Kb"] == B * H * kv_rows * R * e  # d → d + R on the K side
    assert db.read_bytes["Bias"] == B * H * rc * e  # a bias tile per visited tile: c·N²·b_bias
    assert fb.read_bytes.get("TMP", 0) == fb.write_bytes.get("TMP", 0) == B * H * tmp_bytes
    assert fb.write_bytes["LSE"] == B * H * 4 * blk * len(rows) and blk * len(rows) <= nr
    assert fb.matmul_flops == B * H * (2 * (d + R) * rc + 2 * d * rc)
    assert db.matmul_flops == B * H * 4 * d * rc and db.other_flops - fb.other_flops == 0


def test_sdpa_route_counts():
    B, H, nq, nk, d, R, e = 1, 2, 300, 300, 32, 8, 2
    p = Problem(B, H, H, nq, nk, d, "bf16", False)
    cq, ck, fa = count(flashbias.build(p, KernelConfig(block_m=128, block_n=128), None, rank=R, route="sdpa")).kernels
    assert cq.read_bytes == {"Q": B * H * nq * d * e, "Qb": B * H * nq * R * e}
    assert cq.write_bytes == {"Qp": B * H * nq * (d + R) * e}
    assert ck.write_bytes == {"Kp": B * H * nk * (d + R) * e}
    assert fa.read_bytes["Kp"] == B * H * 3 * nk * (d + R) * e and fa.read_bytes["V"] == B * H * 3 * nk * d * e


@pytest.mark.parametrize("kw, msg", [
    ({"rank": 0}, "rank=0"),
    ({"rank": 2.5}, "rank=2.5"),
    ({"route": "cuda"}, "route='cuda'"),
    ({"route": "sdpa", "rank": 3}, "multiple of 8"),
    ({"tmp_roundtrip": "yes"}, "tmp_roundtrip"),
])
def test_bad_parameters_one_line(kw, msg):
    p = Problem(1, 1, 1, 128, 128, 32, "bf16", False)
    with pytest.raises(IosimError, match=msg) as e:
        flashbias.build(p, KernelConfig(), None, **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(IosimError, match="bias_dtype") as e:
        flashbias.build_dense(p, KernelConfig(), None, bias_dtype="int4")
    assert "\n" not in str(e.value)


def test_flashbias_beats_dense_bias_at_long_n():
    """The dense bias tile (c·N²·b bytes) dominates the dense kernel's reads; FlashBias reads O(N·R) more."""
    from iosim.pipeline import predict
    p = Problem(2, 4, 4, 16384, 16384, 32, "fp16", False)
    fb = predict("a100", p, KernelConfig(block_m=128, block_n=128), "flashbias", l2=False, params={"rank": 8})
    db = predict("a100", p, KernelConfig(block_m=128, block_n=128), "dense_bias", l2=False)
    n, e, tr = 16384, 2, 16384 // 128
    bias, factors = 8 * n * n * e, 8 * (n * 8 * e + tr * n * 8 * e)  # N²·b vs φ_q once + φ_k per query block
    assert db.counts.sm_read_bytes - fb.counts.sm_read_bytes == bias - factors
    assert db.time_s > fb.time_s
