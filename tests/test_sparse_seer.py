"""SeerAttention prefill and SeerAttention-R (models/sparse/seer.py): full masks equal naive attention, the gate's
reference values equal a NumPy gate written here, counts equal closed forms, bad parameters give one-line errors,
and the scores rules keep what the papers' rules say on hand-made maps."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.sparse import seer
from iosim.models.sparse.common import density_blocks
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get


def naive(q, k, v, causal):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        nq, nk = s.shape[-2:]
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def prefill_inputs(p, w, rng):
    q = rng.standard_normal((p.batch, p.heads, p.seq_q, p.head_dim))
    k, v = (rng.standard_normal((p.batch, p.kv_heads, p.seq_kv, p.head_dim)) for _ in range(2))
    ins = {"Q": q, "K": k, "V": v, "Wk": rng.standard_normal((p.heads, 2 * p.head_dim, w)) / 8}
    if p.head_dim != w:
        ins["Wq"] = rng.standard_normal((p.heads, p.head_dim, w)) / 8
    return ins


def numpy_gate(ins, p, w, method, tau, k, last_dense=True):
    """The prefill AttnGate (Qavg_Kmaxmin, no RoPE) and its selection, written from attn_gate.py / common.py."""
    T = -(-p.seq_q // 64)
    pad = T * 64 - p.seq_q

    def pool(x, f):
        xs = [x[..., i * 64:(i + 1) * 64, :] for i in range(T)]
        return np.stack([f(b, axis=-2) for b in xs], axis=-2)
    g = p.heads // p.kv_heads
    qp = pool(ins["Q"], np.mean)
    kmax, kmin = pool(ins["K"], np.max), pool(ins["K"], np.min)
    kc = np.repeat(np.concatenate([kmax, kmin], -1), g, axis=1)
    kg = np.einsum("bhti,hio->bhto", kc, ins["Wk"])
    qg = qp if p.head_dim == w else np.einsum("bhti,hio->bhto", qp, ins["Wq"])
    s = qg @ np.swapaxes(kg, -1, -2) / math.sqrt(w)
    valid = np.tril(np.ones((T, T), bool)) if p.causal else np.ones((T, T), bool)
    s = np.where(valid, s, -1e9)
    if method == 0:
        e = np.exp(s - s.max(-1, keepdims=True))
        keep = (e / e.sum(-1, keepdims=True)) > tau
    else:
        order = np.argsort(-s, axis=-1, kind="stable")
        keep = np.zeros(s.shape, bool)
        np.put_along_axis(keep, order[..., :k], True, axis=-1)
    if last_dense:
        keep[..., max(0, T - 2):, :] = True
    assert pad >= 0
    return keep & valid


@pytest.mark.parametrize("causal,h,hk,n,d,w,method", [(True, 2, 2, 200, 32, 32, "threshold"),
                                                       (False, 4, 2, 150, 32, 16, "threshold"),
                                                       (True, 4, 1, 260, 16, 16, "nz_ratio")])
def test_prefill_full_mask_equals_naive_and_gate_equals_numpy(causal, h, hk, n, d, w, method):
    rng = np.random.default_rng(1)
    p = Problem(1, h, hk, n, n, d, "bf16", causal)
    s = get("seerattention").build(p, KernelConfig(), None, gate_width=w, sparsity_method=method, threshold=0.2,
                                   nz_ratio=0.5)
    ins = prefill_inputs(p, w, rng)
    r = run(s, ins)
    g = h // hk
    np.testing.assert_allclose(r.tensors["O"], naive(ins["Q"], np.repeat(ins["K"], g, 1), np.repeat(ins["V"], g, 1),
                                                     causal), atol=1e-10)
    assert count_mismatches(r, count(s)) == []
    T = -(-n // 64)
    want = numpy_gate(ins, p, w, 0 if method == "threshold" else 1, 0.2, seer.nz_topk(0.5, T))
    np.testing.assert_array_equal(r.tensors["seer_GM"].astype(bool), want)
    assert "LSE" not in r.tensors  # the Triton kernel writes O only


@pytest.mark.parametrize("b,h,hk,n,ns", [(2, 8, 2, 300, 3), (1, 4, 4, 129, 2), (1, 6, 2, 64, 1)])
def test_decode_full_mask_equals_naive_and_selection_equals_numpy(b, h, hk, n, ns):
    rng = np.random.default_rng(2)
    p = Problem(b, h, hk, 1, n, 32, "bf16", True)
    s = get("seerattention_r").build(p, KernelConfig(), None, gate_width=16, num_splits=ns)
    g, T = h // hk, -(-n // 64)
    q = rng.standard_normal((b, h, 1, 32))
    k, v = (rng.standard_normal((b, hk, n, 32)) for _ in range(2))
    wq, kc = rng.standard_normal((hk, g, 32, 16)) / 8, rng.standard_normal((b, hk, T, 16))
    r = run(s, {"Q": q, "K": k, "V": v, "WqR": wq, "Kc": kc})
    np.testing.assert_allclose(r.tensors["O"], naive(q, np.repeat(k, g, 1), np.repeat(v, g, 1), False), atol=1e-10)
    assert count_mismatches(r, count(s)) == []
    qg = np.einsum("bkgd,kgdo->bko", q[:, :, 0].reshape(b, hk, g, 32), wq)
    sc_ = np.einsum("bkto,bko->bkt", kc, qg) / 4.0
    pr = np.exp(sc_ - sc_.max(-1, keepdims=True))
    keep = (pr / pr.sum(-1, keepdims=True)) > seer.DECODE_THRESHOLD
    keep[..., -1] = True
    for bb in range(b):
        for kk in range(hk):
            cols = list(np.nonzero(keep[bb, kk])[0][::-1])
            got = list(r.tensors["seer_r_SI"][bb, kk])
            assert got[:len(cols)] == cols and all(x == -1 for x in got[len(cols):])


def test_scores_rules_hand_made():
    # prefill, N = 192 (T = 3), causal: row block 2 has block maxima 0.3, 0.05, 0.6 -> / 0.95 = .316, .053, .632
    p = Problem(1, 1, 1, 192, 192, 64, "bf16", True)
    P = np.zeros((192, 192))
    P[130, 10], P[140, 70], P[150, 140] = 0.3, 0.05, 0.6
    P[0, 0] = P[64, 0] = P[100, 64] = 1.0
    m = seer.prefill_rule(p, 0, 0.1, 0.1, False)(P)
    assert m[2].tolist() == [True, False, True] and m[0].tolist() == [True, False, False]
    # row block 1: maxima 1.0 (block 0), 1.0 (block 1) -> 0.5 each, both kept; last_block_dense keeps rows 1, 2 whole
    assert m[1].tolist() == [True, True, False]
    assert seer.prefill_rule(p, 0, 0.1, 0.1, True)(P)[2].tolist() == [True, True, True]
    # top-k with nz_ratio 0.6: k = floor((1 - sqrt(0.4))·3) = 1: the largest valid block per row
    assert seer.nz_topk(0.6, 3) == 1
    assert seer.prefill_rule(p, 1, 0.0, 0.6, False)(P)[2].tolist() == [False, False, True]
    # decode: group of 2 heads, N = 192: block maxima head0 (0.2, 0, 0.1), head1 (0.0, 0.3, 0.1); mean over the
    # group (0.1, 0.15, 0.1), / 0.35 -> (.286, .429, .286); τ = 0.3 keeps block 1, the last block is forced
    pd = Problem(1, 2, 1, 1, 192, 64, "bf16", False)
    S = np.zeros((1, 2, 1, 192))
    S[0, 0, 0, 3], S[0, 0, 0, 150] = 0.2, 0.1
    S[0, 1, 0, 100], S[0, 1, 0, 180] = 0.3, 0.1
    assert seer.decode_rule(pd, 0, 0.3, 1)(S)[0, 0].tolist() == [False, True, True]
    assert seer.decode_rule(pd, 1, 0.0, 1)(S)[0, 0].tolist() == [False, True, True]  # top-1 = block 1, + last


def test_split_heuristic_hand_derived():
    # 32 (b, KV head) CTAs on 132 SMs: waves 32·s/132 -> efficiency 0.24, 0.48, 0.73, 0.97 for s = 1..4; the best
    # is 1.0 (s = 33); the first s at ≥ 85% of it is 4
    assert seer.splits_heuristic(32, 132, 154, 1, 10**6, True, 128) == 4
    assert seer.splits_heuristic(200, 132, 154, 1, 10**6, True, 128) == 1  # ≥ 80% of the SMs already
    assert seer.splits_heuristic(32, 132, 4, 1, 10**6, True, 128) == 1  # ≤ 4 blocks: no split


def prefill_closed_forms(p, w, mask):
    B, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, 2
    T, g = -(-N // 64), H // Hk
    out = {"seer_pool_q": (B * H * N * d * e, B * H * T * d * e, 0),
           "seer_pool_kmax": (B * Hk * N * d * e, B * Hk * T * d * e, 0),
           "seer_neg_k": (B * Hk * N * d * e, B * Hk * N * d * e, 0),
           "seer_pool_kmin": (B * Hk * N * d * e, B * Hk * T * d * e, 0)}
    ctas = -(-T // 64)
    out["seer_gate_k"] = (B * H * (2 * T * d * e + ctas * 2 * d * w * e), B * H * T * w * e, B * H * T * 4 * d * w)
    if d != w:
        out["seer_gate_q"] = (B * H * (T * d * e + ctas * d * w * e), B * H * T * w * e, B * H * T * 2 * d * w)
    out["seer_gate_score"] = (B * H * (T * w * e + -(-T // 64) * T * w * e), B * H * T * T * e, B * H * 2 * w * T * T)
    out["seer_gate_softmax"] = (B * H * T * T * e, B * H * T * T * e, 0)
    out["seer_gate_select"] = (B * H * T * T * e, B * H * T * T, 0)
    if g > 1:
        for n in "kv":
            out[f"seer_repeat_{n}"] = (B * H * N * d * e, B * H * N * d * e, 0)
    m = np.broadcast_to(mask, (H, T, T)) if mask.ndim == 2 else mask.reshape(H, T, T)
    kv, pairs, mrow = 0, 0, 0
    for h in range(H):
        for i in range(T):
            mrow += min(i + 1, T) if p.causal else T
            for j in range(T):
                if m[h, i, j] and (not p.causal or j <= i):
                    kv += min(64, N - j * 64)
                    pairs += min(64, N - i * 64) * min(64, N - j * 64)
    out["seer_fwd"] = (B * (H * N * d * e + 2 * kv * d * e + mrow), B * H * N * d * e, B * 4 * d * pairs)
    return out


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 600), g=st.sampled_from([1, 2]), dw=st.sampled_from([(32, 32), (16, 32)]),
       causal=st.booleans(), dens=st.floats(0, 1), seed=st.integers(0, 9))
def test_prefill_counts_equal_closed_forms(n, g, dw, causal, dens, seed):
    d, w = dw
    p = Problem(1, 2 * g, 2, n, n, d, "bf16", causal)
    s = get("seerattention").build(p, KernelConfig(), None, gate_width=w, density=dens, seed=seed)
    T = -(-n // 64)
    valid = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
    forced = np.zeros((T, T), bool)
    forced[max(0, T - 2):] = True
    forced[np.arange(T), np.arange(T)] = True
    mask = density_blocks(p, 64, 64, dens, seed, forced=forced & valid, per_head=True)
    got = {k.name: (k.sm_read_bytes, k.sm_write_bytes, k.matmul_flops) for k in count(s).kernels}
    assert got == prefill_closed_forms(p, w, mask)


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 2), hk=st.integers(1, 2), g=st.sampled_from([1, 4, 8]), n=st.integers(1, 900),
       dens=st.floats(0, 1), ns=st.integers(1, 5), seed=st.integers(0, 9))
def test_decode_counts_equal_closed_forms(b, hk, g, n, dens, ns, seed):
    h, d, w, e = hk * g, 64, 32, 2
    p = Problem(b, h, hk, 1, n, d, "bf16", False)
    s = get("seerattention_r").build(p, KernelConfig(), None, gate_width=w, density=dens, seed=seed, num_splits=ns)
    T = -(-n // 64)
    flat = Problem(1, b * hk, b * hk, 1, n, d, "bf16", False)
    forced = np.zeros((1, T), bool)
    forced[0, -1] = True
    mask = density_blocks(flat, 1, 64, dens, seed, forced=forced, per_head=True).reshape(b, hk, T)
    cnt = mask.sum(-1)
    ms = int(cnt.max())
    want = {"seer_r_gate_q": (b * hk * (g * d * e + g * d * w * e), b * hk * w * e, b * hk * 2 * g * d * w),
            "seer_r_gate_score": (b * hk * (w * e + T * w * e), b * hk * T * e, b * hk * 2 * w * T),
            "seer_r_select": (b * hk * T * e, b * hk * ms * 4, 0)}
    # decode: each CTA (b, kv head, split) loads a 64-row Q window (clamped at H) and the K/V rows of its blocks
    qrows = sum(min(64, h - x * g) for x in range(hk))
    kv = sum(min(64, n - j * 64) for bb in range(b) for x in range(hk) for j in np.nonzero(mask[bb, x])[0])
    want["seer_r_decode"] = (b * ns * qrows * d * e + 2 * kv * d * e, b * ns * h * (d * 4 + 4),
                             4 * d * sum(min(64, h - x * g) * min(64, n - j * 64) for bb in range(b)
                                             for x in range(hk) for j in np.nonzero(mask[bb, x])[0]))
    want["seer_r_combine"] = (b * h * ns * (4 + 4 * d), b * h * d * e, 0)
    got = {k.name: (k.sm_read_bytes, k.sm_write_bytes, k.matmul_flops) for k in count(s).kernels}
    assert got == want


def test_r_prefill_is_dense_fa2_plus_the_compression_cache():
    p = Problem(1, 4, 2, 300, 300, 32, "bf16", True)
    s = get("seerattention_r").build(p, KernelConfig(), None, gate_width=16)
    assert [k.name for k in s.kernels] == ["seer_r_pool_kmax", "seer_r_neg_k", "seer_r_pool_kmin", "seer_r_pool_kavg",
                                           "seer_r_gate_k", "flash2_fwd"]
    rng = np.random.default_rng(4)
    ins = {"Q": rng.standard_normal((1, 4, 300, 32)), "K": rng.standard_normal((1, 2, 300, 32)),
           "V": rng.standard_normal((1, 2, 300, 32)), "WkR": rng.standard_normal((2, 96, 16))}
    r = run(s, ins)
    np.testing.assert_allclose(r.tensors["O"], naive(ins["Q"], np.repeat(ins["K"], 2, 1), np.repeat(ins["V"], 2, 1),
                                                     True), atol=1e-10)
    K = ins["K"]
    blocks = [K[..., i * 64:(i + 1) * 64, :] for i in range(5)]
    cat = np.concatenate([np.stack([f(x, axis=-2) for x in blocks], -2) for f in (np.max, np.min, np.mean)], -1)
    np.testing.assert_allclose(r.tensors["Kc"], np.einsum("bhti,hio->bhto", cat, ins["WkR"]), atol=1e-10)


def test_bad_parameters_are_one_line_errors():
    pre, dec = get("seerattention").build, get("seerattention_r").build
    p = Problem(1, 4, 2, 512, 512, 64, "bf16", True)
    pd = Problem(2, 8, 2, 1, 4096, 64, "bf16", False)
    cases = [(pre, p, dict(sparsity_method="topk"), "sparsity_method"), (pre, p, dict(threshold=2.0), "threshold"),
             (pre, p, dict(nz_ratio=-0.1), "nz_ratio"), (pre, p, dict(gate_width=0), "gate_width"),
             (pre, Problem(1, 4, 2, 1, 512, 64, "bf16"), {}, "seerattention_r"),
             (pre, Problem(1, 4, 2, 100, 512, 64, "bf16"), {}, "seq_q == seq_kv"),
             (dec, pd, dict(num_splits=0), "num_splits"), (dec, pd, dict(table=np.ones(5, bool)), "decode block table"),
             (dec, pd, dict(density=0.5, table=np.ones(64, bool)), "give one of"),
             (dec, p, dict(density=0.5), "prefill densely"), (dec, pd, dict(sparsity_method="x"), "sparsity_method"),
             (dec, pd, dict(scores=np.ones((2, 8, 1, 10))), "decode scores")]
    for fn, prob, kw, msg in cases:
        with pytest.raises(IosimError, match=msg) as err:
            fn(prob, KernelConfig(), None, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(IosimError, match="BLOCK_M = BLOCK_N"):
        pre(p, KernelConfig(block_m=128, block_n=64), None)
