"""HyperAttention: approximate, so with sampling on it is checked against an independent NumPy HyperAttention that
uses the schedule's own permutations and samples (block-diagonal attention in sorted order + sampled columns with the
own-block mask and the log(n/m) shift, merged by LSE, unsorted); with the "full" settings (block_size ≥ N) it equals
naive attention (tests/test_sparse_gathers.py). Counts against closed forms; the causal recursion's cover."""

import numpy as np
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.models.sparse.hyper import plan
from iosim.problem import KernelConfig, Problem
from iosim.reference import run
from iosim.registry import get


def _attn(q, k, v, bias=None):
    s = q @ k.T / np.sqrt(q.shape[-1]) + (0 if bias is None else bias)
    mx = s.max(-1, keepdims=True)
    p = np.exp(s - mx)
    ll = p.sum(-1, keepdims=True)
    return p @ v / ll, (mx + np.log(ll))[:, 0]


def _hyper_numpy(q, k, v, tabs, b, m, tag="hyper_L0"):
    """Non-causal HyperAttention of one level from the schedule's permutations and samples."""
    B, H, N, d = q.shape
    g = H // k.shape[1]
    out = np.zeros_like(q)
    for bb in range(B):
        for h in range(H):
            qp, kp = tabs[f"{tag}_qperm"][bb, h], tabs[f"{tag}_kperm"][bb, h // g]
            qs, ks, vs = q[bb, h, qp], k[bb, h // g, kp], v[bb, h // g, kp]
            nb = -(-N // b)
            qb = -(-N // nb)
            ob, lb = np.zeros((N, d)), np.zeros(N)
            for i in range(nb):
                r, c = slice(i * qb, min((i + 1) * qb, N)), slice(i * b, min((i + 1) * b, N))
                ob[r], lb[r] = _attn(qs[r], ks[c], vs[c])
            samp = tabs[f"{tag}_samp"][bb, h // g]
            bias = np.where((np.arange(N) // qb)[:, None] == (samp // b)[None, :], -1e30, np.log(N / m))
            orr, lr = _attn(qs, ks[samp], vs[samp], bias)
            tot = np.logaddexp(lb, lr)
            out[bb, h, qp] = np.exp(lb - tot)[:, None] * ob + np.exp(lr - tot)[:, None] * orr
    return out


@settings(max_examples=6, deadline=None)
@given(n=st.integers(130, 320), b=st.sampled_from([32, 64]), m=st.sampled_from([16, 40]), hk=st.sampled_from([1, 2]),
       seed=st.integers(0, 20))
def test_approximate_mode_equals_independent_hyperattention(n, b, m, hk, seed):
    rng = np.random.default_rng(seed)
    p = Problem(1, 2, hk, n, n, 16, "bf16", False)
    sched = get("hyperattention").build(p, KernelConfig(block_m=16, block_n=16), None, block_size=b, sample_size=m,
                                        min_seq_len=64, seed=seed)
    q, k, v = rng.standard_normal((1, 2, n, 16)), rng.standard_normal((1, hk, n, 16)), rng.standard_normal((1, hk, n, 16))
    res = run(sched, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], _hyper_numpy(q, k, v, sched.tables, b, m), atol=1e-10)


def test_hash_kernel_is_angular_lsh():
    """hash_q writes the Gray-coded sign pattern of Q·P (AngularLSH.hash) for P drawn from the seed."""
    rng = np.random.default_rng(0)
    n, d = 200, 16
    p = Problem(1, 1, 1, n, n, d, "bf16", False)
    sched = get("hyperattention").build(p, KernelConfig(block_m=16, block_n=16), None, block_size=64, sample_size=16,
                                        min_seq_len=64, seed=3, lsh_num_projs=3)
    q, k, v = (rng.standard_normal((1, 1, n, d)) for _ in range(3))
    res = run(sched, {"Q": q, "K": k, "V": v})
    proj = np.random.default_rng(3).standard_normal((d, 3))
    bits = (q[0, 0] @ proj > 0) @ np.array([1, 2, 4])
    gray = np.array([0, 1, 3, 2, 6, 7, 5, 4])  # AngularLSH._unit_hamming_distance_array(3)
    np.testing.assert_array_equal(res.tensors["HCQ_L0"][0, 0], gray[bits])


@settings(max_examples=20, deadline=None)
@given(k=st.integers(2, 4), b=st.sampled_from([16, 32]), m=st.sampled_from([8, 24]), hk=st.sampled_from([1, 2]),
       passes=st.integers(1, 8))
def test_counts_closed_form_one_level(k, b, m, hk, passes):
    """N = k·b (whole blocks): gathers move N·d each way, the block-diagonal kernel does 4·N·b·d FLOPs and reads b keys
    per query tile, the sampled
    one 4·N·m·d and reads the N × m bias; each sort moves 8 + 32·passes + 8 bytes an element (≈ 18·N·d in all)."""
    H, d, e = 2, 32, 2
    n = k * b
    p = Problem(1, H, hk, n, n, d, "bf16", False)
    sched = get("hyperattention").build(p, KernelConfig(block_m=16, block_n=16), None, block_size=b, sample_size=m,
                                        min_seq_len=16, sort_passes=passes)
    c = {kk.name: kk for kk in count(sched).kernels}
    t = "hyper_L0"
    assert c[f"{t}_gather_q"].read_bytes == {"Q": H * n * d * e} and c[f"{t}_gather_q"].write_bytes == {"QS_L0": H * n * d * e}
    assert c[f"{t}_gather_v"].read_bytes == {"V": hk * n * d * e}
    assert c[f"{t}_hash_q"].read_bytes == {"Q": H * n * d * e} and c[f"{t}_hash_q"].write_bytes == {"HCQ_L0": H * n * 8}
    assert c[f"{t}_hash_q"].matmul_flops == H * n * 2 * d * 7
    s = c[f"{t}_sort_k"]
    assert s.read_bytes == {"HCK_L0": hk * n * 8, "HSK_L0": hk * n * 16 * passes}
    assert s.write_bytes == {"HSK_L0": hk * n * 16 * passes, "HIK_L0": hk * n * 8}
    bd = c[f"{t}_blockdiag"]
    assert bd.matmul_flops == H * 4 * n * b * d
    kv = H * (n // 16) * b * d * e  # every 16-row query tile reads its block's b keys
    assert bd.read_bytes == {"QS_L0": H * n * d * e, "KS_L0": kv, "VS_L0": kv}
    sm = c[f"{t}_sampled"]
    assert sm.matmul_flops == H * 4 * n * m * d
    assert sm.read_bytes == {"QS_L0": H * n * d * e, "KSUB_L0": H * n // 16 * m * d * e,
                             "VSUB_L0": H * n // 16 * m * d * e, "HB_L0": H * n * m * e}
    assert c[f"{t}_bias"].write_bytes == {"HB_L0": H * n * m * e}
    un = c[f"{t}_un1sort"]
    assert un.read_bytes == {"OM_L0": H * n * d * e, "LM_L0": H * n * 4}
    assert un.write_bytes == {"O": H * n * d * e, "LSE": H * n * 4}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), min_len=st.integers(8, 700))
def test_causal_recursion_covers_each_row_exactly(n, min_len):
    """Every row r sees the keys [0, r] exactly once: its base diagonal block up to r, plus the whole key half of every
    quadrant whose query half holds r (keys strictly before r)."""
    levels, base, top = plan(n, True, min_len)
    cover = np.zeros(n, dtype=np.int64)
    covered_keys = np.zeros(n, dtype=np.int64)
    for s, ln in base:
        assert ln <= min_len
        cover[s:s + ln] += 1
        covered_keys[s:s + ln] += np.arange(1, ln + 1)
    for lv in levels.values():
        for qs, nq, ks, nk in lv.hyper + lv.exact:
            assert ks + nk == qs and (nq >= min_len) == ((qs, nq, ks, nk) in lv.hyper)
            covered_keys[qs:qs + nq] += nk
    assert (cover == 1).all()
    assert (covered_keys == np.arange(1, n + 1)).all()
