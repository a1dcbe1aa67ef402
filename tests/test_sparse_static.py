"""The static patterns: PowerAttention (models/sparse/power.py) and Sparse-vDiT (models/sparse/sparse_vdit.py).
Full patterns equal naive attention, the pattern kernels equal block-masked attention, counts equal closed forms
derived here, bad parameters give one-line errors, and the patterns keep what the papers describe on small cases."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.sparse import power, sparse_vdit as vd
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get


def masked_attention(q, k, v, causal, keep=None):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    nq, nk = s.shape[-2:]
    vis = np.ones((nq, nk), bool)
    if causal:
        vis &= np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq
    if keep is not None:
        vis = vis & keep
    s = np.where(vis, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.where(vis, np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
    tot = p.sum(-1, keepdims=True)
    return (p / np.where(tot > 0, tot, 1.0)) @ v


def qkv(p, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((p.batch, p.heads, p.seq_q, p.head_dim)),
            *(rng.standard_normal((p.batch, p.kv_heads, p.seq_kv, p.head_dim)) for _ in range(2)))


def expand(m, block, nq, nk):
    return np.repeat(np.repeat(m, block, -2), block, -1)[..., :nq, :nk]


# --- PowerAttention -------------------------------------------------------------------------------------------------

def test_power_pattern_hand_made():
    # causal, 9 blocks: row 8 keeps 8 (window 1) and distances 1, 2, 4, 8 -> blocks 7, 6, 4, 0
    p = Problem(1, 1, 1, 9 * 64, 9 * 64, 64, "bf16", True)
    m = power.power_mask(p, 64, 1, 0)
    assert np.nonzero(m[8])[0].tolist() == [0, 4, 6, 7, 8]
    assert np.nonzero(m[5])[0].tolist() == [1, 3, 4, 5]
    # window 3 and a sink: row 8 adds 6, 7 (already there) and block 0 (there) — row 5 gains block 0 and 3
    assert np.nonzero(power.power_mask(p, 64, 3, 1)[5])[0].tolist() == [0, 1, 3, 4, 5]
    # non-causal mirror: row 2 keeps 0, 1, 2, 3, 4, 6
    pn = Problem(1, 1, 1, 9 * 64, 9 * 64, 64, "bf16", False)
    assert np.nonzero(power.power_mask(pn, 64, 1, 0)[2])[0].tolist() == [0, 1, 2, 3, 4, 6]
    # decode: the last row of the pattern
    pd = Problem(1, 1, 1, 1, 9 * 64, 64, "bf16", False)
    assert np.nonzero(power.power_mask(pd, 64, 1, 0)[0])[0].tolist() == [0, 4, 6, 7, 8]


@pytest.mark.parametrize("causal,n,h,hk", [(True, 700, 2, 1), (False, 300, 2, 2)])
def test_power_kernel_equals_block_masked_attention(causal, n, h, hk):
    p = Problem(1, h, hk, n, n, 32, "bf16", causal)
    q, k, v = qkv(p, 0)
    g = h // hk
    for kw in (dict(block=64), dict(block=64, density=1.0)):
        s = get("power_attention").build(p, KernelConfig(), None, **kw)
        r = run(s, {"Q": q, "K": k, "V": v})
        keep = None if "density" in kw else expand(power.power_mask(p, 64, 1, 0), 64, n, n)
        np.testing.assert_allclose(r.tensors["O"], masked_attention(q, np.repeat(k, g, 1), np.repeat(v, g, 1), causal,
                                                                    keep), atol=1e-10)
        assert count_mismatches(r, count(s)) == []


def test_power_decode_equals_block_masked_attention():
    p = Problem(2, 4, 2, 1, 1000, 32, "bf16", True)
    q, k, v = qkv(p, 1)
    s = get("power_attention").build(p, KernelConfig(), None, block=64)
    r = run(s, {"Q": q, "K": k, "V": v})
    keep = expand(power.power_mask(p, 64, 1, 0), 64, 1, 1000)
    np.testing.assert_allclose(r.tensors["O"], masked_attention(q, np.repeat(k, 2, 1), np.repeat(v, 2, 1), True, keep),
                               atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 1500), block=st.sampled_from([64, 128]), window=st.integers(1, 4), sink=st.integers(0, 2),
       causal=st.booleans(), hk=st.integers(1, 2), g=st.integers(1, 2))
def test_power_counts_equal_closed_forms(n, block, window, sink, causal, hk, g):
    h, d, e = hk * g, 128, 2
    p = Problem(1, h, hk, n, n, d, "bf16", causal)
    s = get("power_attention").build(p, KernelConfig(), None, block=block, window=window, sink=sink)
    bm, bn = s.config.block_m, s.config.block_n
    assert (bm, bn) == (min(128, block), min(64, block))
    t = -(-n // block)
    kv, pairs = 0, 0
    for i in range(t):
        for j in range(t):
            dd = i - j if causal else abs(i - j)
            keep = (0 <= dd < window) or (dd > 0 and dd & (dd - 1) == 0) or j < sink
            if not keep or (causal and j > i):
                continue
            for ii in range(i * block // bm, min((i + 1) * block // bm, -(-n // bm))):
                for jj in range(j * block // bn, (j + 1) * block // bn):
                    if jj * bn >= n or (causal and jj * bn > min((ii + 1) * bm, n) - 1):
                        continue
                    kv += min(bn, n - jj * bn)
                    pairs += min(bm, n - ii * bm) * min(bn, n - jj * bn)
    (k,) = count(s).kernels
    assert k.read_bytes["Q"] == h * n * d * e and k.read_bytes["K"] == k.read_bytes["V"] == h * kv * d * e
    assert k.sm_write_bytes == h * n * (d * e + 4) and k.matmul_flops == h * 4 * d * pairs


def test_power_density_sizes_the_window():
    p = Problem(1, 2, 2, 8192, 8192, 128, "bf16", True)
    for dens in (0.2, 0.5):
        w = power.window_for_density(p, 128, dens, 0)
        from iosim.models.sparse.common import kept_fraction
        assert kept_fraction(power.power_mask(p, 128, w, 0), p, 128, 128) >= dens
        assert kept_fraction(power.power_mask(p, 128, w - 1, 0), p, 128, 128) < dens or w == 1


# --- Sparse-vDiT ----------------------------------------------------------------------------------------------------

def test_vdit_modes_and_mix_hand_made():
    p = Problem(1, 1, 1, 8 * 64, 8 * 64, 64, "bf16", False)
    assert np.nonzero(vd.mode_mask(p, "diagonal", 64, 1, 192, 2)[4])[0].tolist() == [3, 4, 5]
    # multi-diagonal: frames of 192 tokens = 3 blocks: bands at offsets 0, ±3, ±6 (width ±1) for row 4
    assert np.nonzero(vd.mode_mask(p, "multi_diagonal", 64, 1, 192, 2)[4])[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert np.nonzero(vd.mode_mask(p, "multi_diagonal", 64, 0, 192, 2)[4])[0].tolist() == [1, 4, 7]
    assert np.nonzero(vd.mode_mask(p, "vertical_stripe", 64, 1, 192, 2)[6])[0].tolist() == [0, 1]
    assert not vd.mode_mask(p, "skip", 64, 1, 192, 2).any()
    # 10 heads, mix 0.25/0.25/0.25/0.05 (+0.2 dense): raw 2, 2.5, 2.5, 2.5, 0.5 -> floors 2,2,2,2,0, the two
    # leftovers to the largest remainders in mode order: diagonal, multi_diagonal
    c = vd.head_counts(10, vd.parse_mix("diagonal:0.25,multi_diagonal:0.25,vertical_stripe:0.25,skip:0.05"))
    assert c == {"dense": 2, "diagonal": 3, "multi_diagonal": 3, "vertical_stripe": 2, "skip": 0}


def test_vdit_outputs_per_mode_equal_masked_attention():
    n, h = 600, 5
    p = Problem(1, h, h, n, n, 32, "bf16", False)
    q, k, v = qkv(p, 2)
    s = get("sparse_vdit").build(p, KernelConfig(), None, block=64, frame_tokens=200, stripe_blocks=2,
                                 mix="diagonal:0.2,multi_diagonal:0.2,vertical_stripe:0.2,skip:0.2")
    r = run(s, {"Q": q, "K": k, "V": v})
    assert count_mismatches(r, count(s)) == []
    for head, mode in enumerate(vd.MODES):  # one head per mode, in mode order
        keep = expand(vd.mode_mask(p, mode, 64, 1, 200, 2), 64, n, n)
        want = masked_attention(q[:, head], k[:, head], v[:, head], False, keep)
        np.testing.assert_allclose(r.tensors["O"][:, head], want, atol=1e-10)
    # default: every head dense = naive attention
    s = get("sparse_vdit").build(Problem(1, 2, 1, 300, 300, 32, "bf16", True), KernelConfig(), None)
    q, k, v = qkv(Problem(1, 2, 1, 300, 300, 32, "bf16", True), 3)
    r = run(s, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(r.tensors["O"], masked_attention(q, np.repeat(k, 2, 1), np.repeat(v, 2, 1), True),
                               atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 1200), h=st.integers(1, 6), fr=st.lists(st.floats(0, 0.25), min_size=4, max_size=4),
       frame=st.integers(64, 700), diag=st.integers(0, 2), causal=st.booleans())
def test_vdit_counts_equal_closed_forms(n, h, fr, frame, diag, causal):
    d, e, block = 64, 2, 128
    p = Problem(1, h, h, n, n, d, "bf16", causal)
    mix = dict(zip(vd.MODES[1:], fr))
    s = get("sparse_vdit").build(p, KernelConfig(), None, mix=mix, frame_tokens=frame, diag_blocks=diag)
    counts = vd.head_counts(h, vd.parse_mix(mix))
    t = -(-n // block)
    stripes = -(-frame // block)
    want = {}
    for mode in vd.MODES:
        nh = counts[mode]
        if not nh:
            continue
        if mode == "skip":
            want["vdit_skip"] = (0, nh * n * (d * e + 4), 0)
            continue
        kv, pairs = 0, 0
        for i in range(t):
            for j in range(t):
                ok = {"dense": True, "diagonal": abs(i - j) <= diag,
                      "multi_diagonal": any(abs(i - j - round(kk * frame / block)) <= diag
                                            for kk in range(-(n // frame) - 1, n // frame + 2)),
                      "vertical_stripe": j < stripes}[mode]
                if ok and not (causal and j > i):  # 128x128 tiles (hdim 64): one tile per block
                    kv += min(block, n - j * block)
                    pairs += min(block, n - i * block) * min(block, n - j * block)
        want[f"vdit_{mode}"] = (nh * (n * d * e + 2 * kv * d * e), nh * n * (d * e + 4), nh * 4 * d * pairs)
    got = {k.name: (k.sm_read_bytes, k.sm_write_bytes, k.matmul_flops) for k in count(s).kernels}
    assert got == want


def test_vdit_density_picks_the_fewest_dense_heads():
    p = Problem(1, 24, 24, 16384, 16384, 128, "bf16", False)
    s = get("sparse_vdit").build(p, KernelConfig(), None, density=0.5)
    kept = float(s.notes[0].split("; ")[1].split("%")[0]) / 100
    assert kept >= 0.5 and "skip 1" in s.notes[0]
    fewer = get("sparse_vdit").build(p, KernelConfig(), None, density=0.3)
    assert float(fewer.notes[0].split("; ")[1].split("%")[0]) / 100 < kept


def test_bad_parameters_are_one_line_errors():
    pw, vb = get("power_attention").build, get("sparse_vdit").build
    p = Problem(1, 4, 2, 2048, 2048, 64, "bf16", True)
    cases = [(pw, p, dict(scores=np.ones((2048, 2048))), "static"), (pw, p, dict(window=0), "window"),
             (pw, p, dict(density=0.5, window=2), "give one of"), (pw, p, dict(block=8), "block"),
             (pw, Problem(1, 4, 2, 100, 2048, 64, "bf16"), {}, "decode"), (pw, p, dict(sink=-1), "sink"),
             (vb, p, dict(mix="diagonal:0.7,skip:0.5"), "sum to"), (vb, p, dict(mix="ring:0.1"), "unknown mode"),
             (vb, p, dict(mix="diagonal=0.1"), "mode:fraction"), (vb, p, dict(mix="diagonal:x"), "not a number"),
             (vb, p, dict(mix="skip:0.1", density=0.5), "mix or density"), (vb, p, dict(table="m.npy"), "offline"),
             (vb, p, dict(frame_tokens=0), "frame_tokens"), (vb, p, dict(stripe_blocks=0), "stripe_blocks"),
             (vb, Problem(1, 4, 2, 100, 2048, 64, "bf16"), {}, "seq_q == seq_kv")]
    for fn, prob, kw, msg in cases:
        with pytest.raises(IosimError, match=msg) as err:
            fn(prob, KernelConfig(), None, **kw)
        assert "\n" not in str(err.value)
