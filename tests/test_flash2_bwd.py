"""flash2_bwd as PyTorch's FA2 runs it: gradients equal an fp64 naive backward written here, and SM read / write /
atomic bytes equal closed forms derived here from the kernels' tiles (flash_bwd_launch_template.h, mha_bwd)."""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iosim.counts import count
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get


def naive(q, k, v, do, causal):
    """O, LSE, dQ, dK, dV of softmax(scale·QKᵀ)V in fp64; fully masked rows: O = 0, LSE = +∞, zero gradients."""
    B, H, Nq, d = q.shape
    g = H // k.shape[1]
    K, V = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1 / math.sqrt(d)
    vis = np.ones((Nq, K.shape[2]), bool)
    if causal:
        vis = np.arange(K.shape[2])[None, :] <= np.arange(Nq)[:, None] + K.shape[2] - Nq
    S = np.where(vis, scale * q @ K.swapaxes(-1, -2), -np.inf)
    m = S.max(-1, keepdims=True)
    m_safe = np.where(np.isneginf(m), 0, m)
    E = np.exp(S - m_safe)
    l = E.sum(-1, keepdims=True)
    P = np.where(l > 0, E / np.where(l > 0, l, 1), 0)
    O = P @ V
    lse = np.where(l[..., 0] > 0, m_safe[..., 0] + np.log(np.where(l > 0, l, 1)[..., 0]), np.inf)
    dV = P.swapaxes(-1, -2) @ do                                   # dV = Pᵀ dO
    dP = do @ V.swapaxes(-1, -2)                                   # dP = dO Vᵀ
    dS = P * (dP - (do * O).sum(-1, keepdims=True))                # dS = P ∘ (dP − rowsum(dO ∘ O))
    dQ = scale * dS @ K                                            # dQ = scale · dS K
    dK = scale * dS.swapaxes(-1, -2) @ q                           # dK = scale · dSᵀ Q
    fold = lambda x: x.reshape(B, k.shape[1], g, *x.shape[2:]).sum(2)  # noqa: E731  sum over each group
    return O, lse, dQ, fold(dK), fold(dV)


@st.composite
def cases(draw):
    hk, g = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    return dict(B=draw(st.integers(1, 2)), Hk=hk, H=hk * g, Nq=draw(st.integers(1, 70)), Nk=draw(st.integers(1, 70)),
                d=draw(st.sampled_from([8, 16, 40])), causal=draw(st.booleans()),
                bm=draw(st.sampled_from([16, 32, 48])), bn=draw(st.sampled_from([8, 16, 32])), seed=draw(st.integers(0, 9)))


HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(cases())
def test_gradients_equal_naive_fp64_backward(c):
    rng = np.random.default_rng(c["seed"])
    q = rng.standard_normal((c["B"], c["H"], c["Nq"], c["d"]))
    k, v = (rng.standard_normal((c["B"], c["Hk"], c["Nk"], c["d"])) for _ in range(2))
    do = rng.standard_normal(q.shape)
    O, lse, *grads = naive(q, k, v, do, c["causal"])
    p = Problem(c["B"], c["H"], c["Hk"], c["Nq"], c["Nk"], c["d"], "bf16", c["causal"])
    s = get("flash2_bwd").build(p, KernelConfig(block_m=c["bm"], block_n=c["bn"]))
    res = run(s, {"Q": q, "K": k, "V": v, "O": O, "dO": do, "LSE": lse})
    for name, ref in zip(("dQ", "dK", "dV"), grads):
        np.testing.assert_allclose(res.tensors[name], ref, rtol=0, atol=1e-10, err_msg=name)
    assert count_mismatches(res, count(s)) == []


@HYP
@given(cases())
def test_sm_bytes_equal_closed_forms(c):
    B, H, Hk, Nq, Nk, d, bm, bn = (c[x] for x in ("B", "H", "Hk", "Nq", "Nk", "d", "bm", "bn"))
    e, khd = 2, 32 * -(-d // 32)          # bf16; dq_accum tiles are bm × kHeadDim (d rounded up to 32), fp32
    tm, tn = -(-Nq // bm), -(-Nk // bn)
    shift = Nk - Nq
    rows = lambda i: min(bm, Nq - i * bm)  # noqa: E731
    # tile (i, j) is visited unless causal and its first key is after its last row's last visible key
    pairs = [(i, j) for j in range(tn) for i in range(tm)
             if not c["causal"] or j * bn <= i * bm + rows(i) - 1 + shift]
    s = get("flash2_bwd").build(Problem(B, H, Hk, Nq, Nk, d, "bf16", c["causal"]), KernelConfig(block_m=bm, block_n=bn))
    ks = {kc.name: kc for kc in count(s).kernels}
    pre, main, conv = ks["flash2_bwd_preprocess"], ks["flash2_bwd"], ks["flash2_bwd_convert_dq"]
    BH = B * H
    assert pre.sm_read_bytes == BH * 2 * Nq * d * e
    assert pre.sm_write_bytes == BH * (4 * Nq + tm * bm * khd * 4) and pre.sm_atomic_bytes == 0
    atomic = BH * len(pairs) * bm * khd * 4
    assert main.sm_atomic_bytes == atomic
    assert main.sm_read_bytes == BH * (2 * Nk * d * e + sum(rows(i) * (2 * d * e + 2 * 4) for i, _ in pairs))
    assert main.sm_write_bytes == atomic + BH * 2 * Nk * d * e
    assert "dQ_accum" not in main.read_bytes
    assert conv.sm_read_bytes == BH * tm * bm * khd * 4 and conv.sm_write_bytes == BH * Nq * d * e
    if H > Hk:
        for name in ("flash2_bwd_gqa_reduce_dk", "flash2_bwd_gqa_reduce_dv"):
            assert ks[name].sm_read_bytes == B * H * Nk * d * e and ks[name].sm_write_bytes == B * Hk * Nk * d * e
    else:
        assert len(ks) == 3


def test_main_loop_walks_query_blocks_in_reverse():
    from iosim.memory.layout import layout
    from iosim.memory.trace import expand_kernel
    s = get("flash2_bwd").build(Problem(1, 1, 1, 256, 64, 64), KernelConfig(block_m=64, block_n=64))
    lay = layout(s)
    tr = expand_kernel(s, s.kernels[1], lay)
    q = lay["Q"]
    loads = tr.addr[(tr.addr >= q.base) & (tr.addr < q.base + 256 * 64 * 2) & ~tr.write]
    assert list((loads - q.base) // (64 * 64 * 2)) == [3, 2, 1, 0]


def test_measured_shared_memory_at_default_tiles():
    for d in (64, 128):
        s = get("flash2_bwd").build(Problem(1, 8, 8, 4096, 4096, d), KernelConfig())
        assert s.kernels[1].smem_bytes == 147_456
    assert get("flash2_bwd").build(Problem(1, 8, 8, 4096, 4096, 64), KernelConfig(block_m=32, block_n=32)).kernels[1].smem_bytes is None
