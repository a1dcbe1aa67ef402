"""AnchorAttention and S2O (in-kernel gathers of scattered KV rows): kernel counts against closed forms derived
here, the selection rules on hand-made logits, and the stripe kernel's own selection on real data."""

import numpy as np
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.problem import KernelConfig, Problem
from iosim.reference import run
from iosim.registry import get


def _cdiv(a, b):
    return -(-a // b)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 600), bs=st.sampled_from([16, 32]), step=st.sampled_from([2, 4]), dens=st.floats(0, 1),
       hk=st.sampled_from([1, 2]), init=st.sampled_from([1, 2]), local=st.sampled_from([1, 2]), seed=st.integers(0, 5))
def test_anchor_counts_closed_form(n, bs, step, dens, hk, init, local, seed):
    H, d, e, t = 2, 32, 2, 16
    G, I = bs * step, bs * step * init
    p = Problem(1, H, hk, n, n, d, "bf16", True)
    sched = get("anchorattention").build(p, KernelConfig(block_m=t, block_n=t), None, density=dens, seed=seed,
                                         block_size=bs, step=step, init_blocks=init, local_blocks=local)
    c = {k.name: k for k in count(sched).kernels}
    w = lambda j: min(t, n - j * t)  # noqa: E731
    kv1 = 0
    for m in range(_cdiv(n, t)):
        g = m * t // G
        init_off = min(I, (m + 1) * t, n)
        lo = max(max((g - local + 1) * G, 0), init_off)
        kv1 += sum(w(j) for j in range(_cdiv(init_off, t))) + sum(w(j) for j in range(lo // t, _cdiv(min((g + 1) * G, n), t)))
    f = c["anchor_fwd"]
    assert f.read_bytes == {"Q": H * n * d * e, "K": H * kv1 * d * e, "V": H * kv1 * d * e}
    assert f.write_bytes == {"ANCHOR_ACC": H * n * d * 4, "ANCHOR_M": H * n * 4, "ANCHOR_L": H * n * 4}
    ng = _cdiv(n, G)
    cand = [max(0, min(max((g - local + 1) * G, I), n) - I) for g in range(ng)]
    mk = c["anchor_mask"]
    want = {"Q": H * n * d * e, "ANCHOR_M": H * n * 4, "K": H * sum(cand) * d * e}
    assert {k: v for k, v in mk.read_bytes.items() if v} == {k: v for k, v in want.items() if v}
    assert mk.write_bytes.get("ANCHOR_IDX", 0) == H * sum(x // bs for x in cand) * bs * 4
    keep = [int(round(dens * x)) for x in cand]
    sp = c["anchor_sparse"]
    per_head = sum(keep[min(m * t // G, ng - 1)] for m in range(_cdiv(n, t)))
    assert sp.read_bytes.get("K", 0) == sp.read_bytes.get("V", 0) == H * per_head * d * e
    assert sp.read_bytes.get("ANCHOR_IDX", 0) == H * per_head * 4
    assert sp.read_bytes["ANCHOR_ACC"] == H * n * d * 4 and sp.write_bytes == {"O": H * n * d * e}
    rows = sum(min(t, n - m * t) * keep[m * t // G] for m in range(_cdiv(n, t)))
    assert sp.matmul_flops == H * 4 * d * rows


def test_anchor_rule_hand_made():
    """One key column (100) has logit 5 for the rows of the last big block; the anchor (row max over the initial and
    local regions, all zeros) is 0; with θ = −1 only that stripe passes 5 − 1 ≥ 0."""
    n = 256
    s = np.zeros((n, n))
    s[192:, 100] = 5.0
    p = Problem(1, 1, 1, n, n, 64, "bf16", True)
    sched = get("anchorattention").build(p, KernelConfig(block_m=16, block_n=16), None, scores=s, block_size=16, step=4,
                                         theta=-1.0)
    cnt, idx = sched.tables["anchor_cnt"][0, 0], sched.tables["anchor_idx"][0, 0]
    assert cnt.tolist() == [0, 0, 0, 1] and idx[3, 0] == 100


def test_anchor_mask_kernel_computes_the_rule():
    """Executed on real Q, K, the step-2 kernel writes exactly the stripes the rule derives from scale·QKᵀ."""
    rng = np.random.default_rng(2)
    n, H, hk, d = 300, 2, 1, 16
    p = Problem(1, H, hk, n, n, d, "bf16", True)
    q, k, v = rng.standard_normal((1, H, n, d)), rng.standard_normal((1, hk, n, d)), rng.standard_normal((1, hk, n, d))
    s = q @ np.swapaxes(np.repeat(k, 2, 1), -1, -2) / 4.0
    sched = get("anchorattention").build(p, KernelConfig(block_m=16, block_n=16), None, scores=s, block_size=16, step=4,
                                         theta=2.0)
    res = run(sched, {"Q": q, "K": k, "V": v})
    cnt, idx = sched.tables["anchor_cnt"], sched.tables["anchor_idx"]
    np.testing.assert_array_equal(res.tensors["ANCHOR_CNT"], cnt)
    assert cnt.sum() > 0
    for h in range(H):
        for g in range(cnt.shape[2]):
            np.testing.assert_array_equal(res.tensors["ANCHOR_IDX"][0, h, g, :cnt[0, h, g]], idx[0, h, g, :cnt[0, h, g]])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 500), blk=st.sampled_from([16, 32]), chunk=st.sampled_from([8, 16]), causal=st.booleans(),
       hk=st.sampled_from([1, 2]), seed=st.integers(0, 9))
def test_s2o_counts_closed_form(n, blk, chunk, causal, hk, seed):
    H, d, e = 2, 32, 2
    p = Problem(1, H, hk, n, n, d, "bf16", causal)
    tq, tc = _cdiv(n, blk), _cdiv(n, chunk)
    table = np.random.default_rng(seed).random((tq, tc)) < 0.3
    sched = get("s2o").build(p, KernelConfig(block_n=2 * chunk), None, table=table, block_size=blk, chunk=chunk)
    c = {k.name: k for k in count(sched).kernels}
    L, Lg, rc = 0, 0, 0
    for i in range(tq):
        last = min((i + 1) * blk, n) - 1
        dj = last // chunk
        for g in range(tc):
            valid = (not causal) or g * chunk <= last
            forced = g == 0 or dj - _cdiv(blk, chunk) <= g <= dj
            if valid and (table[i, g] or forced):
                size = min(chunk, n - g * chunk)
                L, Lg, rc = L + size, Lg + 1, rc + size * min(blk, n - i * blk)
    f = c["s2o_fwd"]
    assert f.read_bytes == {"Q": H * n * d * e, "K": H * L * d * e, "V": H * L * d * e, "S2O_G": H * Lg * 4}
    assert f.write_bytes == {"O": H * n * d * e, "LSE": H * n * 4}
    assert f.matmul_flops == H * 4 * d * rc
    assert c["s2o_pool_k"].read_bytes == {"K": hk * n * d * e}
    assert c["s2o_pool_k"].write_bytes == {"S2O_KC": hk * tc * d * e}
    assert c["s2o_scores"].write_bytes == {"S2O_S": H * tq * tc * 4}


def test_s2o_rule_early_stop_hand_made():
    """Granule 5 (keys 80–95) carries ≈ all the mass of query block 3: the descending list stops after it
    (τ = 0.9); the sink granule and the diagonal ones (11–15) are kept as well, after it."""
    n = 256
    s = np.zeros((n, n))
    s[192:, 80:96] = 10.0
    p = Problem(1, 1, 1, n, n, 64, "bf16", True)
    sched = get("s2o").build(p, KernelConfig(block_n=32), None, scores=s, block_size=64, chunk=16)
    L, tok = sched.tables["s2o_len"][0, 0], sched.tables["s2o_tok"][0, 0]
    assert L[3] == 7 * 16
    assert tok[3, :16].tolist() == list(range(80, 96))
    assert sorted(set(tok[3, :L[3]] // 16)) == [0, 5, 11, 12, 13, 14, 15]


def test_s2o_kernel_reads_each_gathered_row_as_its_own_run():
    """In the L2 trace, s2o_fwd's K reads are the kept tokens' rows, one d·e-byte run each, at K's base +
    (h_kv·N + token)·d·e — the physical rows of the virtual blocks, in importance order."""
    from iosim.memory.layout import layout
    from iosim.memory.trace import expand_kernel
    n, d = 256, 64
    p = Problem(1, 1, 1, n, n, d, "bf16", True)
    sched = get("s2o").build(p, KernelConfig(block_n=32), None, density=0.3, block_size=64, chunk=16, seed=1)
    kern = next(k for k in sched.kernels if k.name == "s2o_fwd")
    lay = layout(sched)
    tr = expand_kernel(sched, kern, lay)
    base, end = lay["K"].base, lay["K"].base + n * d * 2
    ks = (~tr.write) & (tr.addr >= base) & (tr.addr < end)
    assert (tr.nbytes[ks] == d * 2).all()
    toks, L = sched.tables["s2o_tok"], sched.tables["s2o_len"]
    want = np.concatenate([toks[i, :L[i]] for i in range(len(L))])
    np.testing.assert_array_equal(np.sort((tr.addr[ks] - base) // (d * 2)), np.sort(want))
