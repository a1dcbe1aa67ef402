"""NSA and FSA (models/sparse/nsa.py, fsa.py): every branch against naive attention through iosim.reference, each
kernel's counts against closed forms derived here from the selection tables, the selection rules on hand-made
examples, bad parameters."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get

CFG = KernelConfig()
E = 2  # bf16


def naive(q, k, v, mask):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    den = p.sum(-1, keepdims=True)
    return np.where(den > 0, (p / np.where(den > 0, den, 1)) @ v, 0)


def compress(x, w, l, s):
    nc = (x.shape[2] - l) // s + 1
    return np.stack([np.einsum("bhkd,hkde->bhe", x[:, :, c * s:c * s + l], w) for c in range(nc)], 2)


def inputs(B, H, Hkv, N, d, l=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"Q": rng.standard_normal((B, H, N, d)), "K": rng.standard_normal((B, Hkv, N, d)),
            "V": rng.standard_normal((B, Hkv, N, d)), "Wk": rng.standard_normal((Hkv, l, d, d)) * 0.05,
            "Wv": rng.standard_normal((Hkv, l, d, d)) * 0.05, "G": rng.random((B, N, 3))}


def sel_mask(sched, B, H, Hkv, N, bsz):
    """[B, H, Nq, N] element mask of the selection tables (independent of the kernels)."""
    idx, num = sched.tables["nsa_sel_idx"], sched.tables["nsa_sel_num"]
    nq = idx.shape[2]
    m = np.zeros((B, H, nq, N), bool)
    for b in range(B):
        for h in range(H):
            kh = h // (H // Hkv)
            for t in range(nq):
                for j in idx[b, kh, t, :num[b, kh, t]]:
                    m[b, h, t, j * bsz:(j + 1) * bsz] = True
    return m


@pytest.mark.parametrize("alg,selection", [("nsa", "scores"), ("fsa", "fused"), ("fsa", "scores")])
@pytest.mark.parametrize("B,H,Hkv,N,d", [(1, 4, 2, 203, 16), (2, 2, 1, 130, 32)])
def test_prefill_branches_equal_naive_at_density_1(alg, selection, B, H, Hkv, N, d):
    """density 1: the selected branch is exact causal attention; the compressed branch is attention over the linear
    compression (computed here with einsum); the sliding branch is FA2's (w, 0) window; O is their gated sum."""
    x = inputs(B, H, Hkv, N, d)
    sched = get(alg).build(Problem(B, H, Hkv, N, N, d, "bf16", True), CFG, None, block_size=32, topk=4, window=40,
                           density=1.0, selection=selection, fallback=False) if alg == "fsa" else \
        get(alg).build(Problem(B, H, Hkv, N, N, d, "bf16", True), CFG, None, block_size=32, topk=4, window=40,
                       density=1.0, selection=selection)
    res = run(sched, x)
    assert count_mismatches(res, count(sched)) == []
    T = res.tensors
    g = H // Hkv
    kk, vv = np.repeat(x["K"], g, 1), np.repeat(x["V"], g, 1)
    causal = np.arange(N)[None, :] <= np.arange(N)[:, None]
    o_slc = naive(x["Q"], kk, vv, causal)
    np.testing.assert_allclose(T["O_slc"], o_slc, atol=1e-10)
    win = causal & (np.arange(N)[:, None] - np.arange(N)[None, :] <= 40)
    o_swa = naive(x["Q"], kk, vv, win)
    np.testing.assert_allclose(T["O_swa"], o_swa, atol=1e-10)
    kc, vc = compress(x["K"], x["Wk"], 32, 16), compress(x["V"], x["Wv"], 32, 16)
    np.testing.assert_allclose(T["Kc"], kc, atol=1e-10)
    nc = kc.shape[2]
    cmask = (np.arange(nc) * 16 + 31)[None, :] <= np.arange(N)[:, None]
    o_cmp = naive(x["Q"], np.repeat(kc, g, 1), np.repeat(vc, g, 1), cmask)
    np.testing.assert_allclose(T["O_cmp"], o_cmp, atol=1e-10)
    G = x["G"][:, None]
    np.testing.assert_allclose(T["O"], G[..., 0:1] * o_cmp + G[..., 1:2] * o_slc + G[..., 2:3] * o_swa, atol=1e-10)


@pytest.mark.parametrize("alg", ["nsa", "fsa"])
def test_selected_branch_follows_the_selection_at_topk(alg):
    """The default top-n rule (random picks): O_slc is attention over exactly the selected blocks ∩ causal."""
    B, H, Hkv, N, d = 1, 4, 1, 257, 16
    x = inputs(B, H, Hkv, N, d, seed=3)
    sched = get(alg).build(Problem(B, H, Hkv, N, N, d, "bf16", True), CFG, None, block_size=32, topk=4, window=64,
                           seed=5)
    res = run(sched, x)
    m = sel_mask(sched, B, H, Hkv, N, 32) & (np.arange(N)[None, :] <= np.arange(N)[:, None])
    o = naive(x["Q"], np.repeat(x["K"], H, 1), np.repeat(x["V"], H, 1), m)
    np.testing.assert_allclose(res.tensors["O_slc"], o, atol=1e-10)
    num = sched.tables["nsa_sel_num"][0, 0]
    assert (num == np.minimum(4, np.arange(N) // 32 + 1)).all()


def test_fsa_bookkeeping_values():
    """FSA's index kernels compute the real lists: per-block token lists (compaction of P), counts, positions."""
    B, H, Hkv, N, d = 1, 2, 2, 150, 16
    x = inputs(B, H, Hkv, N, d)
    sched = get("fsa").build(Problem(B, H, Hkv, N, N, d, "bf16", True), CFG, None, block_size=32, topk=3, seed=1)
    T = run(sched, x).tensors
    idx, num = sched.tables["nsa_sel_idx"], sched.tables["nsa_sel_num"]
    nb = -(-N // 32)
    for kh in range(Hkv):
        lists = [[t for t in range(N) if j in idx[0, kh, t, :num[0, kh, t]]] for j in range(nb)]
        flat = [t for lst in lists for t in lst]
        np.testing.assert_array_equal(T["Tok"][0, kh, :len(flat)], flat)
        np.testing.assert_array_equal(T["Cnt"][0, kh], [len(lst) for lst in lists])
        for j, lst in enumerate(lists):
            np.testing.assert_array_equal(T["TIM"][0, kh, j, lst, 0], np.arange(len(lst)))
            np.testing.assert_array_equal(T["P"][0, kh, j, lst, 0], lst)


@pytest.mark.parametrize("mode", ["fsa_preview", "packed"])
@pytest.mark.parametrize("selection", ["scores", "none"])
def test_decode_equals_naive(mode, selection):
    B, H, Hkv, N, d = 2, 4, 2, 333, 16
    rng = np.random.default_rng(1)
    nc = (N - 32) // 16 + 1
    x = {"Q": rng.standard_normal((B, H, 1, d)), "K": rng.standard_normal((B, Hkv, N, d)),
         "V": rng.standard_normal((B, Hkv, N, d)), "Kc": rng.standard_normal((B, Hkv, nc, d)),
         "Vc": rng.standard_normal((B, Hkv, nc, d)), "G": rng.random((B, 1, 3))}
    sched = get("nsa").build(Problem(B, H, Hkv, 1, N, d, "bf16", True), CFG, None, block_size=32, topk=4, window=40,
                             density=1.0, selection=selection, decode=mode)
    if selection == "none":
        x["topk_idx"] = np.zeros(tuple(int(v) for v in sched.tensors["topk_idx"].dims))
    T = run(sched, x).tensors
    kk, vv = np.repeat(x["K"], 2, 1), np.repeat(x["V"], 2, 1)
    o_slc = naive(x["Q"], kk, vv, np.ones((1, N), bool))
    lo = N - 1 - 40 if mode == "fsa_preview" else N - 40  # FA2's (w, 0) window: w + 1 keys; packed: exactly w
    o_swa = naive(x["Q"], kk, vv, np.arange(N)[None, :] >= lo)
    o_cmp = naive(x["Q"], np.repeat(x["Kc"], 2, 1), np.repeat(x["Vc"], 2, 1), np.ones((1, nc), bool))
    for name, want in (("O_slc", o_slc), ("O_swa", o_swa), ("O_cmp", o_cmp)):
        np.testing.assert_allclose(T[name], want, atol=1e-10)


def test_decode_packed_loads_the_paper_token_count():
    """NSA Table 4 (64K): (N − l)/d + n·l' + w tokens a KV head; the packed decode's K reads are exactly
    Nc + n·64 + w rows (Nc = ⌊(N − l)/d⌋ + 1: one more than the paper's arithmetic), 11.6× fewer than N."""
    N, d = 65536, 128
    p = Problem(1, 64, 4, 1, N, d, "bf16", True)
    c = count(get("nsa").build(p, CFG, None, decode="packed", selection="none")).kernels
    k_rows = sum(k.read_bytes.get(t, 0) for k in c for t in ("K", "Kc")) // (4 * d * E)
    assert k_rows == (N - 32) // 16 + 1 + 16 * 64 + 512 == 5631
    assert round(N / 5630, 1) == 11.6


@settings(max_examples=12, deadline=None)
@given(N=st.integers(40, 420), d=st.sampled_from([16, 24, 32]), g=st.sampled_from([1, 2, 3]),
       Hkv=st.integers(1, 2), B=st.integers(1, 2), bsz=st.sampled_from([32, 64]), topk=st.integers(3, 5),
       seed=st.integers(0, 9), fused=st.booleans())
def test_nsa_counts_closed_forms(N, d, g, Hkv, B, bsz, topk, seed, fused):
    H = g * Hkv
    l, s = 32, 16
    sched = get("nsa").build(Problem(B, H, Hkv, N, N, d, "bf16", True), CFG, None, block_size=bsz, topk=topk,
                             seed=seed, selection="fused" if fused else "scores")
    c = {k.name: k for k in count(sched).kernels}
    nc, nb = (N - l) // s + 1, -(-N // bsz)
    # compression: the 64 windows' (63·s + l) rows once per 32-column chunk, W's l·d·d per row tile
    rows = sum(min(N - 1024 * r, 1040) for r in range(-(-nc // 64)))
    assert c["nsa_compress_k"].read_bytes["K"] == B * Hkv * -(-d // 32) * rows * d * E
    assert c["nsa_compress_k"].read_bytes["Wk"] == B * Hkv * -(-nc // 64) * l * d * d * E
    assert c["nsa_compress_v"].write_bytes["Vc"] == B * Hkv * nc * d * E
    # compressed attention: queries from l − 1, compressed keys up to ⌊(128i + 127)/s⌋ in 128-key tiles
    assert c["nsa_cmp_attn"].read_bytes["Q"] == B * H * (N - l + 1) * d * E
    kv = 0
    for i in range(-(-N // 128)):
        if 128 * i < N - l + 1:
            hi = min(nc, (128 * i + 127) // s + 1)
            kv += sum(min(128, nc - 128 * t) for t in range(-(-hi // 128)))
    assert c["nsa_cmp_attn"].read_bytes["Kc"] == c["nsa_cmp_attn"].read_bytes["Vc"] == B * H * kv * d * E
    assert c["nsa_cmp_fill"].write_bytes == {"O_cmp": B * H * N * d * E, "LSE_cmp": B * H * N * 4}
    w = sched.tensors["topk_idx"].dims[3]
    no, pad, bs = l // s + bsz // s - 1, l // s - 1, bsz // s  # offsets of a block's compressed tokens
    if fused:  # `no` offsets × the CTA's BK compressed rows, Q and LSE once per CTA, bf16 scores written
        bk = max(16, min(128, 1 << (nb - 1).bit_length()))
        k = c["nsa_fused_score"]
        assert k.read_bytes["Kc"] == B * Hkv * -(-N // 128) * no * nb * d * E
        assert k.read_bytes["Q"] == B * Hkv * -(-nb // bk) * N * d * E
        assert k.write_bytes["S_blk16"] == B * Hkv * N * nb * 2
    else:
        k = c["nsa_score"]
        assert k.read_bytes["Kc"] == B * Hkv * -(-N // 128) * nc * d * E
        assert k.read_bytes["Q"] == B * Hkv * -(-nc // 128) * N * d * E
        assert k.write_bytes["S_cmp"] == B * Hkv * N * nc * 4
        bk = min(128, 1 << (nb - 1).bit_length())
        cols = sum(min(nc, (j + 1) * bk * bs - pad + no - 1) - max(j * bk * bs - pad, 0) for j in range(-(-nb // bk)))
        assert c["nsa_block_score"].read_bytes["S_cmp"] == B * Hkv * N * cols * 4
        assert c["nsa_score_cast"].write_bytes["S_blk16"] == B * Hkv * N * nb * 2
    assert c["nsa_topk"].read_bytes["S_blk16"] == B * Hkv * N * nb * 2
    assert c["nsa_topk"].write_bytes["topk_idx"] == B * Hkv * N * w * 4
    # selected: the token's n indices, its g query rows, 64-key K and V blocks of its selected blocks
    idx, num = sched.tables["nsa_sel_idx"], sched.tables["nsa_sel_num"]
    keys = sum(min(bsz, N - bsz * j) for b in range(B) for h in range(Hkv) for t in range(N)
               for j in idx[b, h, t, :num[b, h, t]])
    k = c["nsa_select_attn"]
    assert k.read_bytes == {"topk_idx": B * Hkv * N * w * 4, "Q": B * H * N * d * E, "K": keys * d * E,
                            "V": keys * d * E}
    assert k.write_bytes == {"O_slc": B * H * N * d * E, "LSE_slc": B * H * N * 4}
    gp = max(16, 1 << (g - 1).bit_length())
    assert k.matmul_flops == 4 * d * g * keys
    assert k.issued_matmul_flops == 4 * d * gp * bsz * int(num.sum())
    assert c["nsa_combine"].read_bytes == {"O_cmp": B * H * N * d * E, "O_slc": B * H * N * d * E,
                                           "O_swa": B * H * N * d * E, "G": B * H * N * 3 * E}


@settings(max_examples=10, deadline=None)
@given(N=st.integers(70, 400), g=st.sampled_from([1, 2]), Hkv=st.integers(1, 2), topk=st.integers(3, 5),
       seed=st.integers(0, 9), init=st.integers(0, 1))
def test_fsa_counts_closed_forms(N, g, Hkv, topk, seed, init):
    B, d, bsz = 1, 16, 32
    H = g * Hkv
    sched = get("fsa").build(Problem(B, H, Hkv, N, N, d, "bf16", True), CFG, None, block_size=bsz, topk=topk,
                             seed=seed, init_blocks=init, local_blocks=2)
    c = {k.name: k for k in count(sched).kernels}
    idx, num = sched.tables["nsa_sel_idx"][0], sched.tables["nsa_sel_num"][0]
    nb = -(-N // bsz)
    w = idx.shape[-1]
    cnt = np.zeros((Hkv, nb), int)
    for h in range(Hkv):
        for t in range(N):
            for j in idx[h, t, :num[h, t]]:
                cnt[h, j] += 1
    kvb = lambda j: min(bsz, N - bsz * j) * d * E  # noqa: E731
    # main kernels: K and V once per (block, 1024-token chunk with a token), per query head
    first = sum(kvb(0) for h in range(Hkv) for y in range(-(-N // 1024)) if cnt[h, 0] > 1024 * y)
    maxv = max(1, cnt[:, 1:].max()) if nb > 1 else 1
    rest = sum(kvb(j) for h in range(Hkv) for j in range(1, nb) for y in range(-(-maxv // 1024))
               if cnt[h, j] > 1024 * y)
    assert c["fsa_main_first"].read_bytes["K"] == c["fsa_main_first"].read_bytes["V"] == g * first
    assert c["fsa_main_rest"].read_bytes["K"] == g * rest
    tot0, totr = int(cnt[:, 0].sum()), int(cnt[:, 1:].sum())
    assert c["fsa_main_first"].read_bytes["Q"] == g * tot0 * d * E
    assert c["fsa_main_rest"].read_bytes["Q"] == g * totr * d * E
    assert c["fsa_main_rest"].read_bytes["M"] == 2 * g * totr * 4  # m[j] and m[j − 1]
    assert c["fsa_main_rest"].write_bytes == {"O_part": g * totr * d * E, "L_part": g * totr * 4,
                                              "S_part": g * totr * 4}
    sel = int(num.sum())
    assert c["fsa_reduce"].read_bytes == {"O_slc": H * N * d * E, "LSE_slc": H * N * 4,
                                          "M": (H * N + g * sel) * 4, "topk_idx": H * N * w * 4, "TIM": g * sel * 4,
                                          "L_part": g * sel * 4, "O_part": g * sel * d * E, "S_part": g * sel * 4}
    # stats: the group's first head, K whenever 128·y < count
    assert c["fsa_stats"].read_bytes["Q"] == int(cnt.sum()) * d * E
    assert c["fsa_stats"].read_bytes["K"] == sum(kvb(j) for h in range(Hkv) for j in range(nb)
                                                 for y in range(-(-N // 1024)) if cnt[h, j] > 128 * y)
    # quadratic bookkeeping: [Nb, N] tables
    assert c["fsa_fill"].write_bytes == {"P": Hkv * nb * N * 4, "M_cur": Hkv * nb * N * 4}
    assert c["fsa_cummax"].write_bytes == {"M": Hkv * nb * N * 4, "M_idx": Hkv * nb * N * 8}
    assert c["fsa_compact"].read_bytes["P"] == Hkv * nb * N * 4
    assert c["fsa_block_to_token"].write_bytes["P"] == sel * 4
    assert c["fsa_index_mapping"].write_bytes["TIM"] == sel * 4
    assert c["fsa_alloc_partials"].write_bytes["O_part"] == (N + (nb - 1) * maxv) * d * E


def test_nsa_scores_rule_hand_made():
    """NSA's rule: a block's score is its keys' probabilities summed over the KV head's query group; forced blocks
    (the first, the token's own and the one before) always; then the highest others up to top-n."""
    B, H, Hkv, N, d = 1, 2, 1, 8 * 32, 16
    p = Problem(B, H, Hkv, N, N, d, "bf16", True)
    s = np.zeros((1, H, N, N))
    t = N - 1  # token 255: own block 7, local 6, initial 0; others 1..5
    s[0, 0, t, 2 * 32 + 3] = 0.5  # head 0 likes block 2
    s[0, 1, t, 4 * 32 + 1] = 0.3  # head 1 likes block 4 ...
    s[0, 1, t, 4 * 32 + 2] = 0.3  # ... twice: 0.6 in total beats block 2's 0.5
    s[0, 0, t, 5 * 32] = 0.2
    sched = get("nsa").build(p, CFG, None, block_size=32, topk=4, scores=s)
    idx, num = sched.tables["nsa_sel_idx"][0, 0, t], sched.tables["nsa_sel_num"][0, 0, t]
    assert list(idx[:num]) == [0, 4, 6, 7]
    sched = get("nsa").build(p, CFG, None, block_size=32, topk=5, scores=s)
    assert list(sched.tables["nsa_sel_idx"][0, 0, t, :5]) == [0, 2, 4, 6, 7]


def test_table_source_drops_future_blocks_and_adds_forced(tmp_path):
    B, H, Hkv, N, d = 1, 2, 1, 100, 16
    p = Problem(B, H, Hkv, N, N, d, "bf16", True)
    tab = np.full((Hkv, N, 3), -1)
    tab[0, 40] = [3, 1, -1]  # token 40 (block 1): block 3 is in its future
    np.save(tmp_path / "sel.npy", tab)
    sched = get("nsa").build(p, CFG, None, block_size=32, topk=3, table=str(tmp_path / "sel.npy"))
    idx, num = sched.tables["nsa_sel_idx"][0, 0, 40], sched.tables["nsa_sel_num"][0, 0, 40]
    assert list(idx[:num]) == [0, 1]  # forced 0 (initial), 1 (own); 3 dropped


@pytest.mark.parametrize("kw,match", [
    (dict(topk=2), "topk=2 < init_blocks"),
    (dict(block_size=48), "block_size=48"),
    (dict(kernel_size=40), "kernel_size=40"),
    (dict(selection="magic"), "selection='magic'"),
    (dict(density=1.5), "density=1.5 is out of range"),
    (dict(density=0.5, table="x.npy"), "give one of"),
    (dict(table="/nonexistent.npy"), "does not exist"),
    (dict(window=0), "window=0"),
    (dict(decode="fast"), "decode='fast'"),
])
def test_bad_parameters_one_line_errors(kw, match):
    p = Problem(1, 4, 2, 256, 256, 64, "bf16", True)
    with pytest.raises(IosimError, match=match) as e:
        get("nsa").build(p, CFG, None, **kw)
    assert "\n" not in str(e.value)


def test_shape_errors():
    with pytest.raises(IosimError, match="causal"):
        get("nsa").build(Problem(1, 4, 2, 256, 256, 64, "bf16", False), CFG, None)
    with pytest.raises(IosimError, match="seq_q = seq_kv"):
        get("fsa").build(Problem(1, 4, 2, 100, 256, 64, "bf16", True), CFG, None)
    with pytest.raises(IosimError, match="shorter than kernel_size"):
        get("nsa").build(Problem(1, 4, 2, 20, 20, 64, "bf16", True), CFG, None)
    with pytest.raises(IosimError, match="selection tables would hold"):
        get("nsa").build(Problem(1, 8, 8, 1 << 20, 1 << 20, 64, "bf16", True), CFG, None)


def test_fsa_falls_back_to_nsa_above_group_8():
    p = Problem(1, 32, 2, 256, 256, 64, "bf16", True)
    names = [k.name for k in get("fsa").build(p, CFG, None).kernels]
    assert "nsa_select_attn" in names and "fsa_main_rest" not in names
    names = [k.name for k in get("fsa").build(p, CFG, None, fallback=False).kernels]
    assert "fsa_main_rest" in names and "nsa_select_attn" not in names


def test_cli_param_runs_nsa():
    from iosim.pipeline import predict
    p = Problem(1, 8, 2, 4096, 4096, 64, "bf16", True)
    r = predict("h100", p, CFG, "nsa", l2=False, params={"topk": 8, "selection": "fused"})
    assert r.time_s > 0 and any(k.name == "nsa_fused_score" for k in r.counts.kernels)
    with pytest.raises(IosimError, match="takes no parameter"):
        predict("h100", p, CFG, "nsa", l2=False, params={"stride": 8})


@pytest.mark.parametrize("alg,params", [("nsa", {}), ("nsa", {"decode": "packed"}), ("fsa", {})])
def test_l2_trace_runs_and_reads_at_least_compulsory(alg, params):
    """The L2 engine takes every kernel (gathered rows, table-driven spans); prefill reads every input from DRAM at
    least once (decode only the blocks it selects), never more than the SMs ask for."""
    from iosim.pipeline import predict
    nq = 1 if params.get("decode") else 2048
    p = Problem(1, 8, 2, nq, 2048, 64, "bf16", True)
    r = predict("h100", p, CFG, alg, l2=True, params=params)
    inputs_bytes = sum(int(np.prod([int(x) for x in t.dims])) * t.elem_bytes for t in r.schedule.tensors.values()
                       if t.role == "input")
    assert 0 < r.dram_read_bytes <= r.counts.sm_read_bytes and 0 < r.l2_hit_rate < 1
    if nq > 1:
        assert r.dram_read_bytes >= 0.9 * inputs_bytes
