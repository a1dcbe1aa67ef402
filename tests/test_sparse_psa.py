"""PSA (models/sparse/psa.py): all pairs at level 1 = naive attention; pooled levels keep the softmax mass (keys
duplicated in pairs, attended at 2× pooling = naive); the pyramid values; counts of the pyramid and attention kernels
against closed forms derived here; the importance → level rule on a hand example; one-line errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.sparse import psa
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run


def _naive(q, k, v, causal):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    nq, nk = s.shape[-2:]
    if causal:
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pyramid", ["fused", "torch"])
def test_level_one_everywhere_equals_naive(causal, pyramid):
    rng = np.random.default_rng(0)
    B, H, Hk, nq, nk, d = 1, 2, 1, 150, 270, 32
    p = Problem(B, H, Hk, nq, nk, d, "bf16", causal)
    q, k, v = (rng.standard_normal(s) for s in ((B, H, nq, d), (B, Hk, nk, d), (B, Hk, nk, d)))
    s = psa.build(p, KernelConfig(block_m=64, block_n=32), None, density=1.0, pyramid=pyramid)
    res = run(s, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], _naive(q, k, v, causal), atol=1e-10)
    assert count_mismatches(res, count(s)) == []
    # the pyramid: level h row x = mean of keys x·2^(h−1) … (fused: the last row averages the keys it holds)
    np.testing.assert_allclose(res.tensors["K4"][0, 0, 5], k[0, 0, 20:24].mean(0), atol=1e-12)
    np.testing.assert_allclose(res.tensors["V2"][0, 0, 7], v[0, 0, 14:16].mean(0), atol=1e-12)
    if pyramid == "fused":
        np.testing.assert_allclose(res.tensors["K8"][0, 0, -1], k[0, 0, 264:].mean(0), atol=1e-12)


@pytest.mark.parametrize("level", [2, 3, 4])
def test_pooled_level_keeps_the_mass(level):
    """Keys and values repeated 2^(h−1) times in a row pool to themselves, and + ln 2^(h−1) restores their softmax
    weight: every pair at level h equals naive attention over the repeated keys."""
    rng = np.random.default_rng(level)
    f = 2 ** (level - 1)
    B, H, nq, d, bn = 1, 1, 70, 16, 32
    nk = 5 * bn
    p = Problem(B, H, H, nq, nk, d, "bf16", False)
    q = rng.standard_normal((B, H, nq, d))
    k = np.repeat(rng.standard_normal((B, H, nk // f, d)), f, axis=2)
    v = np.repeat(rng.standard_normal((B, H, nk // f, d)), f, axis=2)
    lev = np.full((2, 5), level, np.int8)
    s = psa.build(p, KernelConfig(block_m=64, block_n=bn), None, table=lev)
    res = run(s, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], _naive(q, k, v, False), atol=1e-10)


def test_importance_to_levels_hand_example():
    imp = np.array([[0.9, 0.1, 0.5, 0.3, 0.8, 0.0, 0.2, 0.7, 0.4, 0.6]])
    lev = psa.levels_from_importance(imp, np.ones_like(imp, bool), (0.1, 0.2, 0.3, 0.2))
    # ranks by importance: 0.9→0, 0.8→1, 0.7→2, 0.6→3, 0.5→4, 0.4→5, 0.3→6, 0.2→7, 0.1→8, 0.0→9;
    # ends ⌊10·(0, .1, .3, .6, .8)⌋ = 0, 1, 3, 6, 8: rank 0 level 1, 1–2 level 2, 3–5 level 3, 6–7 level 4, 8–9 dropped
    assert lev.tolist() == [[1, 0, 3, 4, 2, 0, 4, 2, 3, 3]]
    # through build with scores: block sums of the probabilities pick the same levels
    p = Problem(1, 1, 1, 4, 80, 16, "bf16", False)
    scores = np.repeat(np.repeat(imp, 8, axis=1), 4, axis=0) / 32
    s = psa.build(p, KernelConfig(block_m=64, block_n=8), None, scores=scores, level_fractions="0.1,0.2,0.3,0.2")
    got = np.zeros((1, 10), int)
    for h in range(1, 5):
        num, idx = s.tables.get(f"psa_num_{h}"), s.tables.get(f"psa_idx_{h}")
        if num is not None:
            got[0, idx[0, :num[0]]] = h
    assert got.tolist() == lev.tolist()


def test_causal_crossing_blocks_stay_full():
    p = Problem(1, 1, 1, 256, 256, 32, "bf16", True)
    s = psa.build(p, KernelConfig(block_m=64, block_n=64), None, level_fractions="0,0,0,1")
    num1, idx1 = s.tables["psa_num_1"], s.tables["psa_idx_1"]
    assert [idx1[i, :num1[i]].tolist() for i in range(4)] == [[0], [1], [2], [3]]  # the diagonal blocks
    assert s.tables["psa_num_4"].tolist() == [0, 1, 2, 3]  # everything below at 8×


def _rows(n, blk):
    return [min(blk, n - i * blk) for i in range(-(-n // blk))]


@settings(max_examples=25, deadline=None)
@given(nq=st.integers(1, 500), nk=st.integers(1, 700), causal=st.booleans(), seed=st.integers(0, 20),
       bn=st.sampled_from([32, 64, 128]), bm=st.sampled_from([64, 128]), g=st.sampled_from([1, 2]))
def test_counts_closed_form(nq, nk, causal, seed, bn, bm, g):
    B, Hk, d, e, L = 2, 2, 64, 2, 4
    H = Hk * g
    if causal and nk < nq:
        nk = nq
    p = Problem(B, H, Hk, nq, nk, d, "bf16", causal)
    s = psa.build(p, KernelConfig(block_m=bm, block_n=bn), None, seed=seed)
    pyr, attn = count(s).kernels
    # pyramid: K and V read once per KV head; levels 2..4 written, ⌈N/2^(h−1)⌉ rows each
    assert pyr.read_bytes == {"K": B * Hk * nk * d * e, "V": B * Hk * nk * d * e}
    for t in "KV":
        for h in (2, 3, 4):
            assert pyr.write_bytes[f"{t}{2 ** (h - 1)}"] == B * Hk * -(-nk // 2 ** (h - 1)) * d * e
    # attention: per pair at level h a pooled tile of min(B/2^(h−1), N_h − j·B/2^(h−1)) rows of K and of V
    lev = np.zeros((-(-nq // bm), -(-nk // bn)), int)
    for h in range(1, L + 1):
        num, idx = s.tables.get(f"psa_num_{h}"), s.tables.get(f"psa_idx_{h}")
        if num is not None:
            for i in range(lev.shape[0]):
                lev[i, idx[i, :num[i]]] = h
    kv_rows = rc = 0
    for i, r in enumerate(_rows(nq, bm)):
        for j in range(lev.shape[1]):
            h = lev[i, j]
            if h:
                f = 2 ** (h - 1)
                c = min(bn // f, -(-nk // f) - j * (bn // f))
                kv_rows += c
                rc += r * c
    assert attn.read_bytes["Q"] == B * H * nq * d * e
    assert attn.read_bytes.get("K", 0) + sum(attn.read_bytes.get(f"K{f}", 0) for f in (2, 4, 8)) == \
        B * H * kv_rows * d * e
    assert attn.matmul_flops == B * H * 4 * d * rc
    assert attn.write_bytes == {"O": B * H * nq * d * e, "LSE": B * H * nq * 4}


def test_default_fractions_are_the_readme_ones():
    p = Problem(1, 1, 1, 128, 128 * 64, 64, "bf16", False)
    s = psa.build(p, KernelConfig(block_m=128, block_n=64), None)
    n = 128
    got = [int(s.tables[f"psa_num_{h}"][0]) if f"psa_num_{h}" in s.tables else 0 for h in range(1, 5)]
    assert got == [int(n * 0.10), int(n * 0.15) - int(n * 0.10), 0, int(n * 0.35) - int(n * 0.15)]


@pytest.mark.parametrize("kw, msg", [
    ({"levels": 9}, "levels=9"),
    ({"level_fractions": "0.5,0.6,0,0"}, "summing to at most 1"),
    ({"level_fractions": "a,b"}, "comma-separated"),
    ({"density": 0.5, "level_fractions": "0.1,0,0,0"}, "not both"),
    ({"density": 0.5, "table": "x.npy"}, "give one of"),
    ({"table": "/nonexistent/levels.npy"}, "does not exist"),
    ({"table": np.full((2, 2), 7, np.int8)}, "integers 0..4"),
    ({"pyramid": "cuda"}, "pyramid='cuda'"),
    ({"scores": np.zeros((5, 5))}, "scores have shape"),
])
def test_bad_parameters_one_line(kw, msg):
    p = Problem(1, 1, 1, 256, 128, 64, "bf16", False)
    with pytest.raises(IosimError, match=msg) as e:
        psa.build(p, KernelConfig(block_m=128, block_n=64), None, **kw)
    assert "\n" not in str(e.value)


def test_block_must_pool_to_whole_rows():
    p = Problem(1, 1, 1, 256, 256, 64, "bf16", False)
    with pytest.raises(IosimError, match="multiple of 2"):
        psa.build(p, KernelConfig(block_m=128, block_n=36), None)
