"""BLASST (models/sparse/blasst.py): full keep = naive attention; counts against closed forms derived here (prefill
loads K and V for every visited tile, decode V only for kept ones); the running-max rule on hand-made scores; the
reference output with a scores-derived table equals attention with the skipped tiles removed; one-line errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.sparse import blasst
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run


def _naive(q, k, v, causal, drop=None):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    nq, nk = s.shape[-2:]
    if causal:
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    if drop is not None:
        s = np.where(drop, -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _qkv(rng, B, H, Hk, nq, nk, d):
    return (rng.standard_normal((B, H, nq, d)), rng.standard_normal((B, Hk, nk, d)),
            rng.standard_normal((B, Hk, nk, d)))


@pytest.mark.parametrize("causal", [False, True])
def test_prefill_full_keep_equals_naive(causal):
    rng = np.random.default_rng(1)
    B, H, Hk, nq, nk, d = 1, 2, 1, 150, 190, 32
    p = Problem(B, H, Hk, nq, nk, d, "bf16", causal)
    s = blasst.build(p, KernelConfig(block_m=64, block_n=48), None, rho=0.0)
    q, k, v = _qkv(rng, B, H, Hk, nq, nk, d)
    res = run(s, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], _naive(q, k, v, causal), atol=1e-10)
    assert count_mismatches(res, count(s)) == []


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_full_keep_equals_naive(splits):
    rng = np.random.default_rng(2)
    B, H, Hk, nk, d = 2, 8, 2, 700, 32
    p = Problem(B, H, Hk, 1, nk, d, "bf16", False)
    s = blasst.build(p, KernelConfig(block_m=64, block_n=64), None, num_splits=splits)
    q, k, v = _qkv(rng, B, H, Hk, 1, nk, d)
    res = run(s, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], _naive(q, k, v, False), atol=1e-10)


def _tiles(n, blk):
    return [min(blk, n - j * blk) for j in range(-(-n // blk))]


@settings(max_examples=25, deadline=None)
@given(nq=st.integers(1, 400), extra=st.integers(0, 200), causal=st.booleans(), rho=st.floats(0, 1),
       bm=st.sampled_from([64, 128]), bn=st.sampled_from([32, 48, 64]), seed=st.integers(0, 9))
def test_prefill_counts_closed_form(nq, extra, causal, rho, bm, bn, seed):
    B, H, Hk, d, e = 2, 4, 2, 64, 2
    nk = nq + extra
    p = Problem(B, H, Hk, nq, nk, d, "bf16", causal)
    s = blasst.build(p, KernelConfig(block_m=bm, block_n=bn), None, rho=rho, seed=seed, phase="prefill")
    c = count(s).kernels[0]
    rows, cols = _tiles(nq, bm), _tiles(nk, bn)
    keep = s.tables[blasst.KEEP]
    kv_elems = vis_rc = kept_rc = 0
    for i, r in enumerate(rows):
        last_key = min((i + 1) * bm, nq) - 1 + nk - nq if causal else nk - 1  # bottom-right causal
        stop = min(len(cols), last_key // bn + 1)
        n_keep = int(keep[i, :stop].sum())
        assert n_keep == max(1, round((1 - rho) * stop))  # round((1−ρ)·n) kept, the first-visited never skipped
        assert keep[i, 0] and not keep[i, stop:].any()
        for j in range(stop):
            kv_elems += cols[j] * d
            vis_rc += r * cols[j]
            kept_rc += r * cols[j] * int(keep[i, j])
    assert c.read_bytes["Q"] == B * H * nq * d * e
    assert c.read_bytes["K"] == c.read_bytes["V"] == B * H * kv_elems * e  # V loaded for every visited tile
    assert c.write_bytes["O"] == B * H * nq * d * e and c.write_bytes["LSE"] == B * H * nq * 4
    assert c.matmul_flops == B * H * 2 * d * (vis_rc + kept_rc)  # 2cN²d(2 − ρ) in closed form
    assert c.exp_ops == B * H * (kept_rc + sum(rows[i] * int(keep[i].sum()) for i in range(len(rows))) + nq)


@settings(max_examples=25, deadline=None)
@given(nk=st.integers(1, 3000), rho=st.floats(0, 1), splits=st.integers(1, 4), seed=st.integers(0, 9),
       g=st.sampled_from([1, 4, 8]))
def test_decode_counts_closed_form(nk, rho, splits, seed, g):
    B, Hk, d, e, bn = 2, 2, 64, 2, 128
    H = Hk * g
    p = Problem(B, H, Hk, 1, nk, d, "bf16", False)
    s = blasst.build(p, KernelConfig(block_m=64, block_n=bn), None, rho=rho, seed=seed, num_splits=splits)
    k0 = count(s).kernels[0]
    cols = _tiles(nk, bn)
    keep = s.tables[blasst.KEEP]
    assert keep.shape == (1, len(cols))
    n_per = -(-len(cols) // splits)
    firsts = {t * n_per for t in range(splits) if t * n_per < len(cols)}
    assert all(keep[0, j] for j in firsts)  # each split's first tile is kept
    assert int(keep.sum()) == max(len(firsts), round((1 - rho) * len(cols)))
    heads_reading = Hk if g > 1 else H  # GQA-packed: K/V read once per KV head
    assert k0.read_bytes["K"] == B * heads_reading * nk * d * e
    assert k0.read_bytes["V"] == B * heads_reading * sum(c for c, kp in zip(cols, keep[0]) if kp) * d * e


def test_decode_bytes_are_bnd_two_minus_rho():
    """Equal tiles: K + V = b·N·d·(2 − ρ) per KV head (the brief's closed form)."""
    B, H, Hk, nk, d, bn = 1, 32, 4, 64 * 128, 128, 128
    p = Problem(B, H, Hk, 1, nk, d, "bf16", False)
    s = blasst.build(p, KernelConfig(block_m=64, block_n=bn), None, rho=0.75, num_splits=1)
    c = count(s).kernels[0]
    rho = 1 - s.tables[blasst.KEEP].sum() / (nk // bn)
    assert rho == 0.75
    assert c.read_bytes["K"] + c.read_bytes["V"] == Hk * 2 * nk * d * (2 - rho)


def test_skip_rule_hand_example():
    """Two rows, four tiles of two keys, λ = 0.01 (ln λ = −4.61)."""
    s = np.array([[5.0, 1, 0, -1, 4.9, -9, -10, -10],
                  [3.0, 2, -3, 0, -7, -8, -10, -11]])
    tmax = blasst.tile_row_max(s, 2, False, 0)
    np.testing.assert_array_equal(tmax, [[5, 0, 4.9, -10], [3, 0, -7, -10]])
    asc = blasst.skip_rule(tmax, 2, np.array([[0, 1, 2, 3]]), np.array([[True, False, False, False]]), math.log(0.01))
    # tile 0 first (kept); tile 1: row 0 at 0 − 5 = −5 < ln λ, but row 1 at 0 − 3 = −3 votes to keep: kept;
    # tile 2: row 0 at −0.1 keeps; tile 3: −15 and −13: skipped
    assert asc.tolist() == [[True, True, True, False]]
    dsc = blasst.skip_rule(tmax, 2, np.array([[3, 2, 1, 0]]), np.array([[True, False, False, False]]), math.log(0.01))
    # tile 3 first (kept, m = −10, −10); tile 2: 14.9 and 3 above: kept (m = 4.9, −7); tile 1: row 1 0 − (−7) = 7:
    # kept (m = 4.9, 0); tile 0: kept (5 > 4.9)
    assert dsc.tolist() == [[True, True, True, True]]
    only0 = blasst.skip_rule(tmax[:1], 2, np.array([[0, 1, 2, 3]]), np.array([[True, False, False, False]]),
                             math.log(0.01))
    assert only0.tolist() == [[True, False, True, False]]  # one row: tile 1 at −5 < −4.61 skipped


def test_scores_table_matches_direct_blasst():
    """scores = scale·QKᵀ of the inputs: the schedule's output equals attention with the skipped tiles removed, and
    the skipped set is what the rule gives in ascending visit order."""
    rng = np.random.default_rng(5)
    B, H, nq, nk, d, bm, bn = 1, 1, 128, 256, 32, 64, 32
    q, k, v = _qkv(rng, B, H, H, nq, nk, d)
    u = np.ones(d) / np.sqrt(d)
    k[..., :4, :] = 20 * u  # attention sinks: four dominant keys at the start
    q = 5 * u + 0.1 * q
    k[..., 200:204, :] = 20 * u  # and a dominant tile later (kept again)
    sc = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    p = Problem(B, H, H, nq, nk, d, "bf16", True)
    a = 0.05 * nk  # λ = 0.05
    s = blasst.build(p, KernelConfig(block_m=bm, block_n=bn), None, scores=sc, threshold_scale_factor=a)
    keep = s.tables[blasst.KEEP].reshape(-1, nq // bm, nk // bn)[0].astype(bool)
    # the rule written out directly: per query block, tiles ascending, running max per row
    shift = nk - nq
    vis = np.arange(nk)[None, :] <= np.arange(nq)[:, None] + shift
    x = np.where(vis, sc[0, 0], -np.inf)
    want = np.zeros_like(keep)
    for i in range(nq // bm):
        m = np.full(bm, -np.inf)
        for j in range(nk // bn):
            if j * bn > (i + 1) * bm - 1 + shift:
                break
            t = x[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn].max(axis=1)
            with np.errstate(invalid="ignore"):
                skip = all(np.isneginf(t[r]) or (np.isfinite(m[r]) and t[r] - m[r] < math.log(0.05))
                           for r in range(bm))
            if not skip:
                want[i, j] = True
                m = np.maximum(m, t)
    np.testing.assert_array_equal(keep, want)
    visited = sum(min(nk // bn, ((i + 1) * bm - 1 + shift) // bn + 1) for i in range(nq // bm))
    assert 0 < keep.sum() < visited  # some tiles skipped
    drop = np.kron(~keep, np.ones((bm, bn), bool))[None, None]
    res = run(s, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], _naive(q, k, v, True, drop), atol=1e-10)


def test_table_source(tmp_path):
    p = Problem(1, 1, 1, 256, 256, 64, "bf16", False)
    t = np.ones((2, 2), bool)
    t[1, 1] = False
    np.save(tmp_path / "keep.npy", t)
    s = blasst.build(p, KernelConfig(block_m=128, block_n=128), None, table=str(tmp_path / "keep.npy"))
    assert s.tables[blasst.KEEP].tolist() == [[1, 1], [1, 0]]


@pytest.mark.parametrize("kw, msg", [
    ({"rho": 1.5}, "rho=1.5 is out of range"),
    ({"rho": 0.5, "density": 0.5}, "not both"),
    ({"threshold_scale_factor": 2.0}, "applies to scores"),
    ({"scores": np.zeros((128, 128))}, "need threshold_scale_factor"),
    ({"scores": np.zeros((3, 3)), "threshold_scale_factor": 1.0}, "scores have shape"),
    ({"phase": "train"}, "phase='train'"),
    ({"num_splits": 2}, "apply to decode"),
    ({"seed": 1.5}, "seed=1.5"),
])
def test_bad_parameters_one_line(kw, msg):
    p = Problem(1, 2, 2, 128, 128, 64, "bf16", False)
    with pytest.raises(IosimError, match=msg) as e:
        blasst.build(p, KernelConfig(block_m=64, block_n=64), None, **kw)
    assert "\n" not in str(e.value)


def test_predict_with_params_and_speedup():
    """--param route: ρ lowers the prefill time (compute) and the decode time (DRAM) of the same kernel."""
    from iosim.pipeline import predict
    p = Problem(1, 8, 2, 8192, 8192, 128, "bf16", True)
    t0 = predict("h200", p, None, "blasst", l2=False, params={"rho": 0.0}).time_s
    t1 = predict("h200", p, None, "blasst", l2=False, params={"rho": 0.7}).time_s
    assert 1.0 < t0 / t1 < 2.0 / (2 - 0.7) + 0.3
    pd = Problem(4, 32, 4, 1, 32768, 128, "bf16", False)
    d0 = predict("h200", pd, None, "blasst", l2=False, params={"rho": 0.0})
    d1 = predict("h200", pd, None, "blasst", l2=False, params={"rho": 0.7})
    assert d0.counts.sm_read_bytes > d1.counts.sm_read_bytes
    assert 1.0 < d0.time_s / d1.time_s <= 2.0 / (2 - 0.7) + 1e-9
