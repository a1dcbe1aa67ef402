"""Shared sparse-family pieces (models/sparse/common.py): selection sources, gathers through counts / L2 trace /
reference, the pre-pass kernels against closed forms derived here."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.memory.layout import layout
from iosim.memory.trace import expand_kernel
from iosim.models.sparse import common as sc
from iosim.problem import KernelConfig, Problem
from iosim.reference import run
from iosim.schedule import Schedule, TensorSpec


def _naive(q, k, v, causal):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        nq, nk = s.shape[-2:]
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 700), bm=st.sampled_from([16, 32, 64]), bn=st.sampled_from([16, 32, 64]),
       dens=st.floats(0, 1), causal=st.booleans(), seed=st.integers(0, 5))
def test_density_blocks_keep_round_density_of_valid(n, bm, bn, dens, causal, seed):
    p = Problem(1, 2, 2, n, n, 64, "bf16", causal)
    tm, tn = -(-n // bm), -(-n // bn)
    valid = np.array([[(not causal) or j * bn <= min((i + 1) * bm, n) - 1 for j in range(tn)] for i in range(tm)])
    forced = sc.forced_blocks(p, bm, bn, first=1, diagonal=True)
    m = sc.density_blocks(p, bm, bn, dens, seed, forced=forced)
    assert not (m & ~valid).any()
    assert (m | ~forced).all()
    want = np.maximum(np.rint(dens * valid.sum(1)), forced.sum(1))
    assert (m.sum(1) == want).all()


def test_cumulative_keeps_smallest_prefix():
    s = np.array([[0.5, 0.3, 0.15, 0.05]])
    assert sc.keep_cumulative(s, 0.8).tolist() == [[True, True, False, False]]
    assert sc.keep_cumulative(s, 0.81).tolist() == [[True, True, True, False]]
    assert sc.keep_topk(s, 2, forced=np.array([[False, False, False, True]])).tolist() == [[True, False, False, True]]


def test_choose_blocks_sources_are_exclusive(tmp_path):
    p = Problem(1, 1, 1, 256, 256, 64, "bf16", True)
    with pytest.raises(IosimError, match="give one of"):
        sc.choose_blocks(p, 64, 64, density=0.5, table="x.npy")
    np.save(tmp_path / "m.npy", np.ones((4, 4), bool))
    m, _ = sc.choose_blocks(p, 64, 64, table=str(tmp_path / "m.npy"))
    assert m.sum() == 10  # causal lower triangle of 4×4 blocks
    with pytest.raises(IosimError, match="does not exist"):
        sc.choose_blocks(p, 64, 64, table=str(tmp_path / "none.npy"))


@pytest.mark.parametrize("causal", [False, True])
def test_sparse_kernel_full_mask_equals_naive(causal):
    rng = np.random.default_rng(0)
    p = Problem(1, 2, 2, 200, 200, 32, "bf16", causal)
    cfg = KernelConfig(block_m=64, block_n=32)
    mask, _ = sc.choose_blocks(p, 64, 32, density=1.0)
    kern, tabs = sc.sparse_fwd_kernel(p, cfg, mask)
    sched = Schedule("t", p, cfg, sc.attention_tensors(p), (kern,), tables=tabs)
    q, k, v = (rng.standard_normal((1, 2, 200, 32)) for _ in range(3))
    out = run(sched, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(out.tensors["O"], _naive(q, k, v, causal), atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 300), rows=st.sampled_from([16, 64, 128]), seed=st.integers(0, 9))
def test_gather_kernel_counts_trace_and_values(n, rows, seed):
    rng = np.random.default_rng(seed)
    B, H, d = 1, 2, 16
    p = Problem(B, H, H, n, n, d, "bf16", False)
    src = TensorSpec("K", (B, H, n, d), 2, "input")
    dst = TensorSpec("Kp", (B, H, n, d), 2, "scratch")
    perm = np.stack([np.stack([rng.permutation(n) for _ in range(H)])])
    kern = sc.gather_kernel("gather", src, dst, "perm", rows_per_cta=rows)
    sched = Schedule("t", p, KernelConfig(), {"K": src, "Kp": dst}, (kern,), tables={"perm": perm})
    c = count(sched).kernels[0]
    assert c.read_bytes["K"] == c.write_bytes["Kp"] == B * H * n * d * 2
    k = rng.standard_normal((B, H, n, d))
    res = run(sched, {"K": k})
    np.testing.assert_array_equal(res.tensors["Kp"], np.take_along_axis(k, perm[..., None], axis=2))
    lay = layout(sched)
    tr = expand_kernel(sched, kern, lay)
    reads = ~tr.write
    # every gathered row is its own d·e-byte run at K's base + (h·n + perm)·d·e
    got = np.sort(tr.addr[reads])
    want = np.sort(lay["K"].base + ((np.arange(H)[:, None] * n + perm[0]) * d * 2).ravel())
    np.testing.assert_array_equal(got, want)
    assert (tr.nbytes[reads] == d * 2).all()
