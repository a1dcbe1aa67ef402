"""PBS-Attn and DraftAttention (permuted copies + block-sparse FA): kernel counts against closed forms derived here
from the block table, and the paper's selection rules on tiny hand-made logits."""

import numpy as np
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.models.sparse.draft import reorg_indices
from iosim.problem import KernelConfig, Problem
from iosim.reference import run
from iosim.registry import get


def _cdiv(a, b):
    return -(-a // b)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(40, 700), blk=st.sampled_from([16, 32, 64]), segk=st.integers(1, 3), causal=st.booleans(),
       hk=st.sampled_from([1, 2]), tiles=st.sampled_from([(16, 16), (32, 16), (16, 32)]), seed=st.integers(0, 9))
def test_pbs_counts_closed_form(n, blk, segk, causal, hk, tiles, seed):
    seg = blk * segk
    bm, bn = min(tiles[0], blk), min(tiles[1], blk)
    H, d, e = 2, 32, 2
    p = Problem(1, H, hk, n, n, d, "bf16", causal)
    tq = _cdiv(n, blk)
    table = np.random.default_rng(seed).random((tq, tq)) < 0.4
    sched = get("pbs_attn").build(p, KernelConfig(block_m=bm, block_n=bn), None, table=table, block_size=blk,
                                  segment_size=seg)
    c = {k.name: k for k in count(sched).kernels}
    fwd = c["pbs_fwd"]
    if n <= seg:  # dense fallback (pbs.py: SDPA)
        assert list(c) == ["pbs_fwd"]
        visited = lambda qb, lb: (not causal) or lb * blk <= min((qb + 1) * blk, n) - 1  # noqa: E731
    else:
        def visited(qb, lb):
            valid = (not causal) or lb * blk <= min((qb + 1) * blk, n) - 1
            same = qb * blk // seg == lb * blk // seg
            return same or (valid and (table[qb, lb] or lb == 0))
    rows_cols, kv = 0, 0
    for i in range(_cdiv(n, bm)):
        rows = min(bm, n - i * bm)
        cols = 0
        for j in range(_cdiv(n, bn)):
            w = min(bn, n - j * bn)
            qb, lb = i * bm // blk, j * bn // blk
            if n <= seg:  # dense fallback: the causal tiles
                ok = (not causal) or j * bn <= min((i + 1) * bm, n) - 1
            else:
                ok = visited(qb, lb)
            cols += w if ok else 0
        rows_cols += rows * cols
        kv += cols
    kname = "K" if n <= seg else "Kp"
    assert fwd.read_bytes["Q"] == H * n * d * e
    assert fwd.read_bytes[kname] == fwd.read_bytes["V" if n <= seg else "Vp"] == H * kv * d * e
    assert fwd.write_bytes == {"O": H * n * d * e, "LSE": H * n * 4}
    assert fwd.matmul_flops == H * 4 * d * rows_cols
    if n <= seg:
        return
    nc, bl, g = (n // seg) * seg, blk, H // hk
    assert c["pbs_gather_k"].read_bytes == {"K": hk * n * d * e} and c["pbs_gather_k"].write_bytes == {"Kp": hk * n * d * e}
    ls = c["pbs_last_scores"]
    assert ls.read_bytes == {"Q": H * _cdiv(nc, 128) * bl * d * e, "K": H * nc * d * e}
    assert ls.write_bytes == {"PBS_S": H * bl * nc * 4}
    assert c["pbs_row_stats"].read_bytes == {"PBS_S": H * bl * nc * 4}
    assert c["pbs_row_stats"].write_bytes == {"PBS_STATS": H * bl * 2 * 4}
    srt = c["pbs_key_sort"]
    assert srt.read_bytes == {"PBS_S": H * bl * nc * 4, "PBS_STATS": hk * g * _cdiv(n, seg) * bl * 2 * 4}
    assert srt.write_bytes == {"PBS_PERM": hk * n * 8}
    assert c["pbs_pool_q"].read_bytes == {"Q": H * n * d * e}
    assert c["pbs_pool_q"].write_bytes == {"PBS_QP": H * _cdiv(n, blk) * d * e}


def test_pbs_rule_permutes_heavy_keys_into_one_block():
    """Keys 200–255 (second half of segment 0) are what the last query block attends to: the permutation moves them
    to the front of segment 0, and query blocks of segment 1 then keep only the first block (its pooled mass ≈ 0.99
    ≥ τ = 0.9) instead of block 1, where the heavy keys sat before the permutation."""
    n = 512
    s = np.zeros((n, n))
    s[256:, 200:256] = 10.0
    p = Problem(1, 1, 1, n, n, 64, "bf16", True)
    sched = get("pbs_attn").build(p, KernelConfig(block_m=128, block_n=128), None, scores=s)
    perm = sched.tables["pbs_perm"][0, 0]
    assert perm[:56].tolist() == list(range(200, 256)) and perm[56:256].tolist() == list(range(200))
    assert perm[256:].tolist() == list(range(256, 512))
    split, cnt, idx = (sched.tables[k][0, 0] for k in ("kv_split", "kv_count", "kv_indices"))
    assert split.tolist() == [0, 0, 1, 1]  # off-segment blocks kept per query block
    assert [idx[i, :cnt[i]].tolist() for i in range(4)] == [[0, 1], [0, 1], [0, 2, 3], [0, 2, 3]]
    # without the permutation's effect (identity order: heavy keys in block 1) block 1 would be the one kept
    pooled = np.array([s[256:384, :128].mean(), s[256:384, 128:256].mean()])
    assert pooled.argmax() == 1


def test_pbs_prepass_kernels_compute_the_permutation():
    """The pre-pass, executed on real Q and K, writes the permutation the rule derives from the logits scale·QKᵀ."""
    rng = np.random.default_rng(7)
    n, H, hk, d = 300, 2, 1, 16
    p = Problem(1, H, hk, n, n, d, "bf16", True)
    q, k, v = rng.standard_normal((1, H, n, d)), rng.standard_normal((1, hk, n, d)), rng.standard_normal((1, hk, n, d))
    logits = q @ np.swapaxes(np.repeat(k, 2, 1), -1, -2) / np.sqrt(d)
    sched = get("pbs_attn").build(p, KernelConfig(block_m=16, block_n=16), None, scores=logits, block_size=32,
                                  segment_size=64)
    res = run(sched, {"Q": q, "K": k, "V": v})
    np.testing.assert_array_equal(res.tensors["PBS_PERM"], sched.tables["pbs_perm"])
    np.testing.assert_allclose(res.tensors["Kp"][0, 0], k[0, 0, sched.tables["pbs_perm"][0, 0]])


@settings(max_examples=15, deadline=None)
@given(frames=st.integers(1, 4), text=st.integers(0, 40), dens=st.floats(0, 1), seed=st.integers(0, 5),
       hk=st.sampled_from([1, 2]))
def test_draft_counts_closed_form(frames, text, dens, seed, hk):
    lh, lw, ph, pw = 8, 16, 2, 8  # regions of 16 tokens
    H, d, e = 2, 32, 2
    nv = frames * lh * lw
    n = nv + text
    p = Problem(1, H, hk, n, n, d, "bf16", False)
    sched = get("draftattention").build(p, KernelConfig(block_m=16, block_n=16), None, density=dens, seed=seed,
                                        pool_h=ph, pool_w=pw, latent_h=lh, latent_w=lw, text_len=text)
    c = {k.name: k for k in count(sched).kernels}
    S = nv // 16
    keep = int(round(dens * S * S))
    tiles = _cdiv(n, 16)
    # visual query tiles: their kept visual tiles and every text column; text query tiles: every key
    per_head = keep * 16 + S * (n - nv) + (tiles - S) * n
    assert c["draft_fwd"].read_bytes["Kr"] == c["draft_fwd"].read_bytes["Vr"] == H * per_head * d * e
    assert c["draft_fwd"].read_bytes["Qr"] == H * n * d * e
    for g, src, heads in (("q", "Q", H), ("k", "K", hk), ("v", "V", hk)):
        kern = c[f"draft_gather_{g}"]
        assert kern.read_bytes == {src: heads * n * d * e}
    assert c["draft_restore"].read_bytes == {"Or": H * n * d * e} and c["draft_restore"].write_bytes == {"O": H * n * d * e}
    assert c["draft_pool_q"].read_bytes == {"Q": H * nv * d * e} and c["draft_pool_q"].write_bytes == {"DQ": H * S * d * e}
    assert c["draft_scores"].write_bytes == {"DS": H * S * S * 4}


def test_draft_pool_reads_gathered_region_rows():
    """The pooled regions are read through the reorder table: every row of Q is its own run in the L2 trace."""
    from iosim.memory.layout import layout
    from iosim.memory.trace import expand_kernel
    n = 2 * 64
    p = Problem(1, 1, 1, n, n, 64, "bf16", False)
    sched = get("draftattention").build(p, KernelConfig(block_m=16, block_n=16), None, pool_h=4, pool_w=4, latent_h=8,
                                        latent_w=8)
    kern = next(k for k in sched.kernels if k.name == "draft_pool_q")
    lay = layout(sched)
    tr = expand_kernel(sched, kern, lay)
    reads = ~tr.write
    assert (tr.nbytes[reads] == 64 * 2).all() and reads.sum() == n
    ro = reorg_indices(n, n, 4, 4, 8)
    np.testing.assert_array_equal(tr.addr[reads], lay["Q"].base + ro * 64 * 2)


def test_draft_rule_keeps_the_dominant_region_pairs():
    """Each query region attends to region (r + 3) mod 8 with logit 8 (others: small noise); at sparsity
    1 − 8/64 the per-head percentile keeps the 8 dominant pairs and the threshold entry itself (the repo's ≥)."""
    rng = np.random.default_rng(0)
    lh, lw, ph, pw = 8, 8, 4, 4
    n = 2 * lh * lw
    ro = reorg_indices(n, n, ph, pw, lw)
    region = np.empty(n, int)
    region[ro] = np.arange(n) // 16
    s = rng.normal(0, 0.01, (n, n))
    s[(region[None, :] == (region[:, None] + 3) % 8)] += 8.0
    p = Problem(1, 1, 1, n, n, 64, "bf16", False)
    sched = get("draftattention").build(p, KernelConfig(block_m=16, block_n=16), None, scores=s, pool_h=ph, pool_w=pw,
                                        latent_h=lh, latent_w=lw, sparsity_ratio=1 - 8 / 64)
    cnt, idx = sched.tables["kv_count"][0, 0], sched.tables["kv_indices"][0, 0]
    kept = {(i, j) for i in range(8) for j in idx[i, :cnt[i]]}
    assert {(i, (i + 3) % 8) for i in range(8)} <= kept and len(kept) == 9
