"""Squeezed Attention (models/sparse/squeezed.py): the output against naive attention over the kept keys through
iosim.reference (one level, hierarchical, offline K-means, causal and not), the pre-pass values, each kernel's counts
against closed forms derived here, the selection rules on hand-made examples, bad parameters."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get

CFG = KernelConfig()
E = 2


def naive(q, k, v, mask):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    den = p.sum(-1, keepdims=True)
    return np.where(den > 0, (p / np.where(den > 0, den, 1)) @ v, 0)


def run_squeezed(H, Hkv, Nq, Nkv, d, causal=True, seed=0, **kw):
    rng = np.random.default_rng(seed)
    p = Problem(1, H, Hkv, Nq, Nkv, d, "bf16", causal)
    sched = get("squeezed").build(p, CFG, None, observation_window=20, centroids_pct=10.0, **kw)
    T = sched.tensors
    x = {"Q": rng.standard_normal((1, H, Nq, d)), "K": rng.standard_normal((1, Hkv, Nkv, d)),
         "V": rng.standard_normal((1, Hkv, Nkv, d)), "LAB": sched.tables["sq_labels"][None].astype(float)}
    c2 = int(T["SA"].dims[2]) - 1
    if T["C2"].role == "input":
        x["C2"], x["NK2"] = rng.standard_normal((1, Hkv, c2, d)), rng.integers(1, 5, (1, Hkv, c2, 1)).astype(float)
    if "C1" in T:
        c1 = int(T["C1"].dims[2])
        if T["C1"].role == "input":
            x["C1"], x["NK1"] = rng.standard_normal((1, Hkv, c1, d)), rng.integers(1, 5, (1, Hkv, c1, 1)).astype(float)
        x["PAR"] = sched.tables["sq_parent"][None].astype(float)
    res = run(sched, x)
    assert count_mismatches(res, count(sched)) == []
    return sched, x, res.tensors


def kept(sched, H, Nkv, n_ctx):
    keep = np.zeros((H, Nkv), bool)
    kidx, kvlen = sched.tables["sq_kidx"][0], sched.tables["sq_kvlen"]
    for h in range(H):
        keep[h, kidx[h, :kvlen[h]]] = True
    keep[:, n_ctx:] = True
    return keep


@pytest.mark.parametrize("H,Hkv,Nq,Nkv,kw", [
    (2, 2, 37, 530, dict(density=1.0)),
    (2, 1, 30, 450, dict(density=0.3)),
    (4, 2, 1, 610, dict(density=0.5, levels=2, l1_pct=3.0)),
    (2, 2, 20, 380, dict(density=0.4, levels=2, l1_pct=3.0, offline_iters=2)),
])
@pytest.mark.parametrize("causal", [True, False])
def test_output_equals_naive_over_kept_keys(H, Hkv, Nq, Nkv, kw, causal):
    """O = attention over the kept context keys + the user keys (causal or not); density 1 = dense attention."""
    sched, x, T = run_squeezed(H, Hkv, Nq, Nkv, 16, causal=causal, **kw)
    n_ctx = Nkv - Nq
    vis = kept(sched, H, Nkv, n_ctx)[None, :, None, :]
    if causal:
        vis = vis & (np.arange(Nkv)[None, None, None, :] <= np.arange(Nq)[None, None, :, None] + n_ctx)
    o = naive(x["Q"], np.repeat(x["K"], H // Hkv, 1), np.repeat(x["V"], H // Hkv, 1), vis)
    np.testing.assert_allclose(T["O"], o, atol=1e-10)
    if kw.get("density") == 1.0:
        assert vis.all() or causal


def test_prepass_values():
    """The centroid scores are each centroid's probability (denominator weighted by the key counts) summed over
    queries / N_q; the compaction lists the kept keys; offline K-means centroids are their members' means."""
    H, Hkv, Nq, Nkv, d = 2, 2, 40, 500, 16
    sched, x, T = run_squeezed(H, Hkv, Nq, Nkv, d, density=1.0)
    c2 = int(sched.tensors["SA"].dims[2]) - 1
    s = x["Q"][0] @ np.swapaxes(x["C2"][0], -1, -2) / 4
    w = np.exp(s - s.max(-1, keepdims=True)) * x["NK2"][0, :, None, :, 0]
    pr = np.exp(s - s.max(-1, keepdims=True)) / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(T["AVG"][0, :, :c2, 0], pr.sum(1) / Nq, rtol=1e-10)
    np.testing.assert_allclose(T["AVG"][0, :, c2, 0], 1 / Nq)
    n_ctx = Nkv - Nq
    for h in range(H):
        np.testing.assert_array_equal(T["KIDX"][0, h], np.arange(n_ctx))  # threshold 0: every key kept
    assert (T["NKV"].ravel() == n_ctx).all()
    sched, x, T = run_squeezed(2, 1, 10, 300, d, density=0.5, offline_iters=1)
    lab = sched.tables["sq_labels"][0]
    n_clu = 300 - 10 - 20
    for c in range(int(sched.tensors["C2"].dims[2])):
        mem = np.flatnonzero(lab[:n_clu] == c)
        want = x["K"][0, 0, mem].mean(0) if mem.size else np.zeros(d)
        np.testing.assert_allclose(T["C2"][0, 0, c], want, atol=1e-12)
        assert T["NK2"][0, 0, c, 0] == mem.size


@settings(max_examples=12, deadline=None)
@given(n_ctx=st.integers(150, 3000), Nq=st.integers(1, 300), H=st.sampled_from([1, 2, 3]), d=st.sampled_from([16, 32]),
       dens=st.floats(0.05, 1.0), seed=st.integers(0, 9), levels=st.sampled_from([1, 2]))
def test_counts_closed_forms(n_ctx, Nq, H, d, dens, seed, levels):
    Nkv = n_ctx + Nq
    p = Problem(1, H, H, Nq, Nkv, d, "bf16", True)
    sched = get("squeezed").build(p, CFG, None, density=dens, seed=seed, levels=levels, l1_pct=1.0)
    c = {k.name: k for k in count(sched).kernels}
    win = min(100, n_ctx)
    c2 = max(1, int(0.05 * (n_ctx - win)))
    qb = -(-Nq // 128)
    # causal part: every 64-key tile of the user keys for every 64-query tile
    assert c["sq_causal"].read_bytes == {"Q": H * Nq * d * E, "K": H * -(-Nq // 64) * Nq * d * E,
                                         "V": H * -(-Nq // 64) * Nq * d * E}
    assert c["sq_causal"].write_bytes == {"O": H * Nq * d * 4, "MO": H * Nq * 4, "LO": H * Nq * 4}
    # centroid lookup (level 2 when hierarchical: only the surviving fine centroids, gathered)
    rows = [c2] * H if levels == 1 else list(sched.tables["sq_l2len"])
    assert c["sq_centroids"].read_bytes["C2"] == qb * 2 * sum(rows) * d * E
    assert c["sq_centroids"].read_bytes["NK2"] == qb * sum(rows) * 4
    assert c["sq_centroids"].write_bytes == {"SA": qb * sum(rows) * 4}
    assert c["sq_score_sum"].read_bytes == {"SA": H * (c2 + 1) * qb * 4}
    assert c["sq_gather_scores"].read_bytes == {"LAB": H * n_ctx * 8, "AVG": H * n_ctx * 4}
    assert c["sq_threshold"].write_bytes == {"MASK": H * n_ctx}
    kvlen = sched.tables["sq_kvlen"]
    assert c["sq_compact"].write_bytes == {"KIDX": int(kvlen.sum()) * 8, "NKV": H * -(-n_ctx // 4096) * 4}
    assert c["sq_compact"].atomic_bytes == {"NKV": H * -(-n_ctx // 4096) * 4}
    # sparse kernel: one CTA per (128 queries, 2048 kept keys of a head)
    splits = sum(-(-int(v) // 2048) for v in kvlen)
    assert c["sq_sparse"].programs == qb * max(splits, 1)
    assert c["sq_sparse"].read_bytes == {"Q": splits * Nq * d * E, "KIDX": qb * int(kvlen.sum()) * 8,
                                         "K": qb * int(kvlen.sum()) * d * E, "V": qb * int(kvlen.sum()) * d * E}
    assert c["sq_sparse"].write_bytes == {"OT": splits * Nq * d * 2, "LT": splits * Nq * 4, "MT": splits * Nq * 4}
    assert c["sq_reduce"].read_bytes == {"MO": H * Nq * 4, "LO": H * Nq * 4, "O": H * Nq * d * 4,
                                         "OT": splits * Nq * d * 2, "MT": splits * Nq * 4, "LT": splits * Nq * 4}
    kept_frac = kvlen.sum() / (H * n_ctx)
    assert kept_frac >= min(1.0, dens) * (n_ctx - win) / n_ctx - 1e-9  # whole clusters: at least the target


def test_density_keeps_whole_clusters_and_the_window():
    p = Problem(1, 2, 2, 10, 2010, 16, "bf16", True)
    sched = get("squeezed").build(p, CFG, None, density=0.2, seed=3)
    lab = sched.tables["sq_labels"]
    kidx, kvlen = sched.tables["sq_kidx"][0], sched.tables["sq_kvlen"]
    n_ctx = 2000
    for h in range(2):
        keep = np.zeros(n_ctx, bool)
        keep[kidx[h, :kvlen[h]]] = True
        assert keep[-100:].all()  # observation window
        for c in np.unique(lab[h, :n_ctx - 100]):
            mem = keep[:n_ctx - 100][lab[h, :n_ctx - 100] == c]
            assert mem.all() or not mem.any()  # a cluster is kept whole or not at all
        assert keep[:-100].sum() >= 0.2 * 1900


def test_scores_rule_hand_made():
    """Squeezed's rule on given probabilities: a context key's importance is its mean probability over the queries;
    the top `density` fraction of the clustered keys is kept (percentile threshold), the window always."""
    n_ctx, Nq = 300, 4
    p = Problem(1, 1, 1, Nq, n_ctx + Nq, 16, "bf16", True)
    s = np.zeros((Nq, n_ctx + Nq))
    s[0, 7] = 0.9  # one query likes key 7 a lot
    s[:, 11] = 0.3  # every query likes key 11 (mean 0.3 > 0.225)
    s[1:, 5] = 0.2
    sched = get("squeezed").build(p, CFG, None, scores=s, density=2 / 200, observation_window=100)
    kidx, kvlen = sched.tables["sq_kidx"][0, 0], sched.tables["sq_kvlen"][0]
    assert list(kidx[:kvlen]) == [7, 11] + list(range(200, 300))


def test_table_source(tmp_path):
    p = Problem(1, 2, 2, 5, 305, 16, "bf16", True)
    keep = np.zeros((2, 300), bool)
    keep[0, [3, 4]] = True
    keep[1, 250] = True
    np.save(tmp_path / "keep.npy", keep)
    sched = get("squeezed").build(p, CFG, None, table=str(tmp_path / "keep.npy"), observation_window=10)
    kv = sched.tables["sq_kvlen"]
    assert list(kv) == [12, 11]  # + the 10-key window


@pytest.mark.parametrize("kw,match", [
    (dict(levels=3), "levels=3"),
    (dict(centroids_pct=0), "centroids_pct=0 is out of range"),
    (dict(density=2.0), "density=2.0 is out of range"),
    (dict(context=600), "context=600"),
    (dict(l1_pct=50.0, levels=2), "more coarse"),
    (dict(table=np.ones(5, bool)), "key table of shape"),
    (dict(density=0.5, table=np.ones(500, bool)), "give one of"),
    (dict(offline_iters=-1), "offline_iters=-1"),
])
def test_bad_parameters_one_line_errors(kw, match):
    p = Problem(1, 2, 2, 10, 510, 16, "bf16", True)
    with pytest.raises(IosimError, match=match) as e:
        get("squeezed").build(p, CFG, None, **kw)
    assert "\n" not in str(e.value)


def test_batch_must_be_one():
    with pytest.raises(IosimError, match="batch 1"):
        get("squeezed").build(Problem(2, 2, 2, 10, 510, 16, "bf16", True), CFG, None)


def test_predict_with_params():
    from iosim.pipeline import predict
    p = Problem(1, 8, 8, 64, 32768 + 64, 128, "bf16", True)
    r = predict("h100", p, CFG, "squeezed", l2=False, params={"density": 0.1, "levels": 2})
    assert r.time_s > 0 and any(k.name == "sq_centroids_l1" for k in r.counts.kernels)


@pytest.mark.parametrize("params", [{"density": 0.2}, {"density": 0.2, "levels": 2, "offline_iters": 1}])
def test_l2_trace_runs(params):
    """The L2 engine takes every kernel: the gathered K/V rows of the kept keys, the scattered centroid scores."""
    from iosim.pipeline import predict
    p = Problem(1, 4, 4, 128, 8192 + 128, 64, "bf16", True)
    r = predict("h100", p, CFG, "squeezed", l2=True, params=params)
    assert r.dram_read_bytes > 0 and 0 < r.l2_hit_rate < 1
