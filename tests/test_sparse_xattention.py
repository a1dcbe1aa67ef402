"""XAttention (models/sparse/xattention.py): the full mask equals naive attention, the pre-pass kernels compute the
method's own block scores and masks, every kernel's counts equal closed forms derived here, bad parameters give
one-line errors, and the selection rule on hand-made scores keeps what the paper's rule says."""

import io
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models.sparse import xattention as xa
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


def qkv(p, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((p.batch, p.heads, p.seq_q, p.head_dim))
    k, v = (rng.standard_normal((p.batch, p.kv_heads, p.seq_kv, p.head_dim)) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("causal,heads,kv_heads,n", [(True, 2, 2, 300), (False, 2, 2, 257), (True, 4, 2, 200),
                                                      (False, 2, 1, 130)])
def test_full_mask_equals_naive_and_prepass_equals_the_rule(causal, heads, kv_heads, n):
    p = Problem(1, heads, kv_heads, n, n, 32, "bf16", causal)
    s = get("xattention").build(p, KernelConfig(), None, stride=4, chunk_size=512)
    q, k, v = qkv(p)
    r = run(s, {"Q": q, "K": k, "V": v})
    g = heads // kv_heads
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    np.testing.assert_allclose(r.tensors["O"], naive(q, kk, vv, causal), atol=1e-10)
    assert count_mismatches(r, count(s)) == []
    logits = q @ np.swapaxes(kk, -1, -2) / np.sqrt(32)
    bs = xa.antidiagonal_block_scores(logits, 4, causal, 512)
    np.testing.assert_allclose(r.tensors["XB"], bs, atol=1e-12)
    np.testing.assert_array_equal(r.tensors["XM"].astype(bool), xa.find_blocks(bs, 0.9, causal))
    # the converted lists: kept columns of the real blocks, descending, then -1
    t = -(-n // 128)
    xm = r.tensors["XM"][..., :t, :t].astype(bool)
    xi = r.tensors["XI"][..., :t, :t]
    for h in range(heads):
        for i in range(t):
            cols = np.nonzero(xm[0, h, i])[0][::-1]
            assert list(xi[0, h, i, :cols.size]) == list(cols) and (xi[0, h, i, cols.size:] == -1).all()


def test_scores_selection_runs_the_rule_and_the_sparse_kernel_uses_it():
    p = Problem(1, 2, 2, 384, 384, 32, "bf16", True)
    q, k, v = qkv(p, 3)
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(32)
    s = get("xattention").build(p, KernelConfig(), None, stride=4, chunk_size=512, scores=logits, threshold=0.5)
    r = run(s, {"Q": q, "K": k, "V": v})
    mask = xa.find_blocks(xa.antidiagonal_block_scores(logits, 4, True, 512), 0.5, True)[..., :3, :3]
    np.testing.assert_array_equal(r.tensors["XM"][..., :3, :3].astype(bool), mask)
    # the output is block-masked attention over exactly those blocks
    keep = np.repeat(np.repeat(mask, 128, -2), 128, -1)[..., :384, :384]
    sc_ = np.where(keep & np.tril(np.ones((384, 384), bool)), logits, -np.inf)
    pr = np.exp(sc_ - sc_.max(-1, keepdims=True))
    np.testing.assert_allclose(r.tensors["O"], (pr / pr.sum(-1, keepdims=True)) @ v, atol=1e-10)


def test_find_blocks_hand_made_rows():
    # causal row 3 (diagonal = column 3): forced column 0 (0.1) and diagonal (0.3) first, sum 0.4; total 0.95,
    # need 0.8·0.95 = 0.76: 0.5 is kept (0.4 < 0.76 before it), 0.05 is not (0.9 before it)
    s = np.zeros((4, 4))
    s[3] = [0.1, 0.5, 0.05, 0.3]
    assert xa.find_blocks(s, 0.8, True)[3].tolist() == [True, True, False, True]
    # τ = 0.95: 0.9 < 0.9025 before 0.05, so it is kept too
    assert xa.find_blocks(s, 0.95, True)[3].tolist() == [True, True, True, True]
    # non-causal: descending 0.5, 0.3, 0.1, 0.05; need 0.76: 0.5 (0), 0.3 (0.5) kept, 0.1 (0.8) not; dropped
    # positions index column 0, which is therefore kept (the repo's torch.where(index_mask, index, 0))
    assert xa.find_blocks(s[3:], 0.8, False)[0].tolist() == [True, True, False, True]
    assert xa.find_blocks(np.array([[0.05, 0.5, 0.1, 0.3]]), 0.5, False)[0].tolist() == [True, True, False, False]


def test_antidiagonal_scores_hand_made():
    # N = 4, S = 2, block 2 (one reshaped row per block), chunk 4, non-causal: A[x, y] = (L[2x+1, 2y] + L[2x, 2y+1])/2
    L = np.arange(16.0).reshape(4, 4) / 10
    a = np.array([[(L[2 * x + 1, 2 * y] + L[2 * x, 2 * y + 1]) / 2 for y in range(2)] for x in range(2)])
    p = np.exp(a - a.max(1, keepdims=True))
    want = p / p.sum(1, keepdims=True)
    np.testing.assert_allclose(xa.antidiagonal_block_scores(L, 2, False, 4, block=2), want)
    # causal: reshaped row 0 sees column 0 only
    got = xa.antidiagonal_block_scores(L, 2, True, 4, block=2)
    assert got[0].tolist() == [1.0, 0.0] and got[1].sum() == pytest.approx(1.0)


def _closed_forms(p, S, chunk, mask, bm, bn):
    """Per-kernel (reads, writes, matmul FLOPs) derived from the method's description, not from the schedule."""
    B, H, N, d, e = p.batch, p.heads, p.seq_q, p.head_dim, 2
    npad = -(-N // chunk) * chunk
    nr, nb, cr = npad // S, npad // 128, chunk // S
    out = {}
    g = p.heads // p.kv_heads
    if g > 1:
        for n in "kv":
            out[f"xattn_repeat_{n}"] = (B * H * N * d * e, B * H * N * d * e, 0)
    if npad != N:
        for n in "qk":
            out[f"xattn_pad_{n}"] = (B * H * N * d * e, B * H * npad * d * e, 0)
    for c in range(npad // chunk):
        m0 = c * cr // 128
        tiles = sum(1 for bm_ in range(cr // 128) for bn_ in range(nr // 128) if not p.causal or bn_ <= m0 + bm_)
        out[f"xattn_gemm_c{c}"] = (B * H * tiles * S * 2 * 128 * d * e, B * H * tiles * 128 * 128 * e,
                                   B * H * tiles * S * 2 * d * 128 * 128)
        rb = 128 // S
        rows = range(c * (chunk // 128), (c + 1) * (chunk // 128))
        seg = sum((i + 1) if p.causal else nb for i in rows)
        out[f"xattn_softmax_c{c}"] = (B * H * 2 * seg * rb * rb * e, B * H * len(rows) * nb * e, 0)
        out[f"xattn_find_c{c}"] = (B * H * len(rows) * nb * e, B * H * len(rows) * nb, 0)
    t = -(-N // 128)
    out["xattn_convert"] = (B * H * t * t, B * H * t * t * 4, 0)
    m = np.broadcast_to(mask, (H, t, t)) if mask.ndim == 2 else mask.reshape(H, t, t)
    kv_rows = 0
    pairs = 0
    for h in range(H):
        for i in range(t):
            qrows = min(128, N - i * 128)
            for j in range(t):
                if not m[h, i, j]:
                    continue
                for jj in range(j * (128 // bn), (j + 1) * (128 // bn)):
                    if jj * bn >= N or (p.causal and jj * bn > min((i + 1) * 128, N) - 1):
                        continue
                    cols = min(bn, N - jj * bn)
                    kv_rows += cols
                    pairs += qrows * cols
    out["xattn_fwd"] = (B * (H * N * d * e + 2 * kv_rows * d * e), B * H * N * (d * e + 4), B * 4 * d * pairs)
    return out


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 700), S=st.sampled_from([2, 4, 8]), causal=st.booleans(), dens=st.floats(0, 1),
       g=st.sampled_from([1, 2]), seed=st.integers(0, 9))
def test_counts_equal_closed_forms(n, S, causal, dens, g, seed):
    p = Problem(1, 2 * g, 2, n, n, 64, "bf16", causal)
    chunk = 128 * S * (1 + seed % 2)
    s = get("xattention").build(p, KernelConfig(), None, stride=S, chunk_size=chunk, density=dens, seed=seed)
    bm, bn = s.config.block_m, s.config.block_n
    assert (bm, bn) == (128, 128)  # Block-Sparse-Attention's hdim-64 tiles
    t = -(-n // 128)
    valid = np.array([[(not causal) or j <= i for j in range(t)] for i in range(t)])
    forced = np.zeros((t, t), bool)
    if causal:
        forced[:, 0] = True
        forced[np.arange(t), np.arange(t)] = True
    from iosim.models.sparse.common import density_blocks
    mask = density_blocks(p, 128, 128, dens, seed, forced=forced & valid, per_head=True)
    want = _closed_forms(p, S, chunk, mask, bm, bn)
    got = {k.name: (k.sm_read_bytes, k.sm_write_bytes, k.matmul_flops) for k in count(s).kernels}
    assert got == want


def test_bad_parameters_are_one_line_errors():
    p = Problem(1, 2, 2, 1024, 1024, 64, "bf16", True)
    b = get("xattention").build
    for kw, msg in [(dict(stride=3), "stride"), (dict(stride=0), "stride"), (dict(threshold=0), "threshold"),
                    (dict(threshold=1.5), "threshold"), (dict(chunk_size=1000), "chunk_size"),
                    (dict(density=0.5, table="x.npy"), "give one of"), (dict(density=2.0), "density"),
                    (dict(per_head="yes"), "per_head")]:
        with pytest.raises(IosimError, match=msg) as err:
            b(p, KernelConfig(), None, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(IosimError, match="seq_q == seq_kv"):
        b(Problem(1, 2, 2, 100, 300, 64, "bf16", True), KernelConfig(), None)
    with pytest.raises(IosimError, match="divide the mask block"):
        b(p, KernelConfig(block_m=96, block_n=64), None)
    from iosim.pipeline import predict
    with pytest.raises(IosimError, match="takes no parameter 'strid'"):
        predict("a100", p, None, "xattention", l2=False, params={"strid": 8})


def test_cli_param_and_density_move_the_kernel_bytes():
    from iosim.cli import run as cli
    outs = []
    for d in ("0.25", "1"):
        buf = io.StringIO()
        assert cli(["predict", "--algorithm", "xattention", "--param", "stride=8", "--param", f"density={d}",
                    "--seq-q", "4096", "--heads", "4", "--head-dim", "128", "--causal", "--no-l2", "--json"], buf) == 0
        outs.append(json.loads(buf.getvalue()))
    fwd = [{k["name"]: k for k in o["kernels"]}["xattn_fwd"] for o in outs]
    assert fwd[0]["read_bytes_by_tensor"]["K"] < 0.45 * fwd[1]["read_bytes_by_tensor"]["K"]
    assert [k["name"] for k in outs[0]["kernels"]][:3] == ["xattn_gemm_c0", "xattn_softmax_c0", "xattn_find_c0"]
    # 32K tokens, 32 heads: the schedule and its counts stay fast (no N x N arrays)
    import time
    t0 = time.time()
    from iosim.pipeline import predict
    r = predict("a100", Problem(1, 32, 32, 32768, 32768, 128, "bf16", True), None, "xattention", l2=False,
                params={"density": 0.3})
    assert time.time() - t0 < 10 and math.isfinite(r.time_s)
