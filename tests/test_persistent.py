"""Persistent kernels (issue 21): tile schedulers as tables, fa3 / cudnn_sm90 / lean / fa4 schedules and presets."""

import numpy as np
import pytest

import iosim.models  # noqa: F401  (registers the families)
from iosim.counts import count
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.memory.scheduler import start_times
from iosim.models.persistent import dynamic_assign, l2_swizzle, lpt_order, static_round_robin, stream_k
from iosim.presets import apply
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get


def naive(q, k, v, causal):
    """softmax(QKᵀ/√d)V with KV heads repeated over their query heads; bottom-right causal; fully masked rows → 0."""
    g = q.shape[1] // k.shape[1]
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isinf(m), 0, m))
    tot = p.sum(-1, keepdims=True)
    return np.where(tot > 0, p / np.where(tot > 0, tot, 1), 0) @ vv


def check(alg, p, **kw):
    rng = np.random.default_rng(7)
    q = rng.standard_normal((p.batch, p.heads, p.seq_q, p.head_dim))
    k, v = (rng.standard_normal((p.batch, p.kv_heads, p.seq_kv, p.head_dim)) for _ in range(2))
    sched = get(alg).build(p, KernelConfig(), None, **kw)
    res = run(sched, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], naive(q, k, v, p.causal), atol=1e-12)
    assert count_mismatches(res, count(sched)) == []
    return sched


SHAPES = [(2, 4, 2, 300, 333, 64, False), (2, 4, 2, 300, 333, 64, True), (1, 2, 1, 600, 333, 128, False),
          (1, 2, 2, 130, 517, 128, True), (1, 3, 3, 200, 150, 64, True)]


@pytest.mark.parametrize("alg", ["fa3", "cudnn_sm90", "fa4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_equals_naive(alg, shape):
    check(alg, Problem(*shape[:6], "bf16", shape[6]))


@pytest.mark.parametrize("shape,workers", [((2, 8, 2, 1, 1000, 64, False), 5), ((1, 4, 4, 1, 700, 64, False), 7),
                                           ((2, 2, 1, 150, 600, 64, True), 9), ((1, 2, 2, 100, 300, 128, False), 3)])
def test_lean_reference_equals_naive(shape, workers):
    sched = check("lean", Problem(*shape[:6], "bf16", shape[6]), workers=workers)
    assert sched.tables["lean_splits"].max() >= 2  # some output tile is reduced from several CTAs' partials


def test_lean_three_splits_per_tile():
    # 12 KV tiles of 256 over 7 CTAs: loads 2,2,2,2,2,1,1 → the 3-tile output tiles straddle up to 3 CTAs
    sched = check("lean", Problem(1, 4, 4, 1, 700, 64, "bf16", False), workers=7)
    assert sched.tables["lean_splits"].max() == 3


def test_static_round_robin_and_dynamic_assign_cover_each_item_once():
    for work in (static_round_robin(23, 5), dynamic_assign(np.arange(23)[::-1], np.arange(23) % 4 + 1, 5)):
        items = np.concatenate([work.item[w, :c] for w, c in enumerate(work.count)])
        assert sorted(items.tolist()) == list(range(23))
    rr = static_round_robin(23, 5)
    assert rr.item[2, :rr.count[2]].tolist() == [2, 7, 12, 17, 22]


def test_lpt_order_and_swizzle():
    cost = np.array([3, 9, 1, 9, 4])
    order = lpt_order(cost)
    assert order.tolist() == [1, 3, 4, 0, 2] and (np.diff(cost[order]) <= 0).all()
    M, H, B, swz = 5, 3, 2, 4  # 6 (b, h) pairs: a section of 4 heads, then a residual one of 2
    order = l2_swizzle(M, H, B, swz)
    assert sorted(order.tolist()) == list(range(M * H * B))
    m, hb = order % M, order // M
    first = order[:swz * M]  # first section: heads 0..3 cycle fastest, query blocks M-1 down to 0 (LPT)
    assert (hb[:swz * M] == np.tile(np.arange(swz), M)).all()
    assert (m[:swz * M] == np.repeat(np.arange(M)[::-1], swz)).all() and len(first) == swz * M
    assert (hb[swz * M:] == np.tile([4, 5], M)).all() and (np.diff(m[swz * M:][::2]) < 0).all()


def test_stream_k_covers_each_output_tile_once():
    per = np.array([5, 3, 8, 1, 7])
    sk = stream_k(per, 6)
    total = int(per.sum())
    assert int(sk.per_worker.sum()) == total and sk.per_worker.max() - sk.per_worker.min() <= 1
    seen = {t: [] for t in range(len(per))}
    for w in range(6):
        for k in range(sk.count[w]):
            seen[int(sk.tile[w, k])].append((int(sk.lo[w, k]), int(sk.hi[w, k]), int(sk.host[w, k])))
    for t, segs in seen.items():
        segs.sort()
        assert segs[0][0] == 0 and segs[-1][1] == per[t]
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))  # contiguous, no overlap
        assert sum(s[2] for s in segs) == 1  # one host per output tile
        hosts = [(w, k) for w in range(6) for k in range(sk.count[w]) if sk.tile[w, k] == t and sk.host[w, k]]
        assert sk.splits[hosts[0]] == len(segs)


def test_fa3_noncausal_read_bytes_closed_form():
    B, H, Hk, N, Nk, d = 2, 4, 2, 1000, 900, 128
    p = Problem(B, H, Hk, N, Nk, d, "bf16", False)
    c = count(get("fa3").build(p, KernelConfig(), None)).kernels[0]
    tm = -(-N // 128)  # 128×176 tiles at d = 128 (tile_size_fwd_sm90)
    assert c.read_bytes["Q"] == B * H * N * d * 2  # Q once per tile
    assert c.read_bytes["K"] == c.read_bytes["V"] == B * H * tm * Nk * d * 2  # K/V once per (tile, KV block)
    assert c.write_bytes["O"] == B * H * N * d * 2 and c.write_bytes["LSE"] == B * H * N * 4


def test_fa4_pair_reads_kv_once():
    B, H, N, d = 1, 2, 2048, 128
    p = Problem(B, H, H, N, N, d, "bf16", False)
    c = count(get("fa4").build(p, KernelConfig(), None)).kernels[0]
    per_cta = B * H * (N // 256) * N * d * 2  # a CTA of 2 Q stages × 128 rows reading every K (or V) tile itself
    assert c.read_bytes["K"] == c.read_bytes["V"] == per_cta // 2  # a 2-CTA pair shares each K/V tile


def test_presets_and_refusals():
    h100 = load_hardware("h100")
    p = Problem(1, 8, 8, 2048, 2048, 128, "bf16", True)
    for name, alg in (("fa3", "fa3"), ("cudnn", "cudnn_sm90"), ("lean", "lean")):
        algorithm, _, pre = apply(name, p, h100, KernelConfig())
        assert algorithm == alg and pre.persistent
    with pytest.raises(IosimError, match="b200"):
        apply("fa4", p, h100, KernelConfig())
    assert apply("fa4", p, load_hardware("b200"), KernelConfig())[0] == "fa4"
    with pytest.raises(IosimError, match="b200"):
        get("fa4").build(p, KernelConfig(), h100)


def test_worker_grid_timeline():
    # workers with different trip counts, fewer than the slots: each starts at 0 on its own slot, persistent or not
    dur = np.array([7, 3, 9, 1])
    for persistent in (True, False):
        start, slot = start_times(dur, 132, persistent)
        assert start.tolist() == [0, 0, 0, 0] and slot.tolist() == [0, 1, 2, 3]
