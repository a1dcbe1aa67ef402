"""The NumPy executor runs the engine's schedules: outputs equal naive float64 attention, gradients equal the
analytic gradients of softmax attention, and the executor's byte/work tallies equal ``iosim.counts`` exactly.

Tolerances (max |x − ref| / max |ref|): 1e-12 for float64 runs, 1e-5 for float32 runs. Fully masked rows follow
PyTorch SDPA (≥ 2.5, ``_safe_softmax``): output 0, gradients 0; their LSE is +∞ (FlashAttention-2).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import attention, count_mismatches, problem_for, run
from iosim.registry import get
from iosim.schedule import Buffer, Compute, GridAxis, Kernel, Load, Schedule, Span, TensorSpec, Tile, full, var

TOL = {np.float64: 1e-12, np.float32: 1e-5}
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- naive float64 attention and its analytic gradients ---------------------------------------------------------

def visible(nq: int, nkv: int, causal: bool, elem_mask=None) -> np.ndarray:
    """[.., N_q, N_kv] bool: bottom-right causal (c ≤ r + N_kv − N_q) ∧ the element mask."""
    vis = np.ones((nq, nkv), bool)
    if causal:
        vis = np.arange(nkv)[None, :] <= np.arange(nq)[:, None] + nkv - nq
    return vis if elem_mask is None else vis & elem_mask


def naive_probs(q, k, vis):
    """S = QKᵀ/√d on the expanded (GQA) heads, P = softmax over visible keys (fully masked rows: P = 0)."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    g = q.shape[1] // k.shape[1]
    K = np.repeat(k, g, axis=1)
    S = np.einsum("bhqd,bhkd->bhqk", q, K) / np.sqrt(q.shape[-1])
    S = np.where(vis, S, -np.inf)
    m = S.max(-1, keepdims=True)
    m = np.where(np.isneginf(m), 0.0, m)
    E = np.exp(S - m)
    l = E.sum(-1, keepdims=True)
    P = np.where(l > 0, E / np.where(l > 0, l, 1.0), 0.0)
    lse = np.where(l[..., 0] > 0, m[..., 0] + np.log(np.where(l[..., 0] > 0, l[..., 0], 1.0)), np.inf)
    return P, lse


def naive_forward(q, k, v, vis):
    P, lse = naive_probs(q, k, vis)
    V = np.repeat(v.astype(np.float64), q.shape[1] // k.shape[1], axis=1)
    return P @ V, lse


def naive_backward(q, k, v, do, vis):
    """Analytic gradients of O = softmax(s·QKᵀ)V (s = 1/√d), per row with P = softmax(S):
    dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP − rowsum(dP ∘ P));  dQ = s·dS K;  dK = s·dSᵀ Q;
    GQA: dK, dV of a KV head are the sums over its group of query heads."""
    B, H, Nq, d = q.shape
    Hk, Nkv = k.shape[1], k.shape[2]
    g, s = H // Hk, 1.0 / np.sqrt(d)
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    P, _ = naive_probs(q, k, vis)
    K, V = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    dV = np.einsum("bhqk,bhqd->bhkd", P, do)
    dP = np.einsum("bhqd,bhkd->bhqk", do, V)
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))
    dQ = s * dS @ K
    dK = s * np.einsum("bhqk,bhqd->bhkd", dS, q)
    return dQ, dK.reshape(B, Hk, g, Nkv, d).sum(2), dV.reshape(B, Hk, g, Nkv, d).sum(2)


def rel_err(x, ref) -> float:
    scale = np.abs(ref).max() if ref.size else 0.0
    return float(np.abs(x - ref).max() / scale) if scale > 0 else float(np.abs(x).max() if x.size else 0.0)


def assert_counts_equal(res, sched) -> None:
    """Executor tallies == engine counts, per kernel and per tensor (bytes) and per work kind."""
    c = count(sched)
    assert count_mismatches(res, c) == []
    assert [k.name for k in c.kernels] == [k.name for k in res.kernels]
    for kc, kt in zip(c.kernels, res.kernels):
        nz = lambda m: {t: v for t, v in m.items() if v}  # noqa: E731
        assert nz(kt.read_bytes) == nz(kc.read_bytes), kc.name
        assert nz(kt.write_bytes) == nz(kc.write_bytes), kc.name
        assert (kt.matmul_flops, kt.exp_ops, kt.other_flops) == (kc.matmul_flops, kc.exp_ops, kc.other_flops), kc.name
        assert (kt.programs, kt.sram_bytes) == (kc.programs, kc.sram_bytes), kc.name


# --- strategies -----------------------------------------------------------------------------------------------

@st.composite
def cases(draw, causal=True):
    hk = draw(st.integers(1, 2))
    return dict(
        B=draw(st.integers(1, 2)), Hk=hk, H=hk * draw(st.sampled_from([1, 2, 3])),
        Nq=draw(st.integers(1, 70)), Nkv=draw(st.integers(1, 70)), d=draw(st.sampled_from([8, 16, 24, 40])),
        bm=draw(st.sampled_from([8, 16, 24, 32, 64])), bn=draw(st.sampled_from([8, 16, 40, 64])),
        causal=draw(st.booleans()) if causal else False, dtype=draw(st.sampled_from([np.float32, np.float64])),
        seed=draw(st.integers(0, 2**32 - 1)))


def inputs(c):
    rng = np.random.default_rng(c["seed"])
    q = rng.standard_normal((c["B"], c["H"], c["Nq"], c["d"])).astype(c["dtype"])
    k = rng.standard_normal((c["B"], c["Hk"], c["Nkv"], c["d"])).astype(c["dtype"])
    v = rng.standard_normal((c["B"], c["Hk"], c["Nkv"], c["d"])).astype(c["dtype"])
    return rng, q, k, v


def check_forward(c, algorithm, cfg, **kw):
    rng, q, k, v = inputs(c)
    p = problem_for(q, k, causal=c["causal"])
    sched = get(algorithm).build(p, cfg, None, **kw)
    res = run(sched, {"Q": q, "K": k, "V": v})
    O_ref, lse_ref = naive_forward(q, k, v, visible(c["Nq"], c["Nkv"], c["causal"]))
    assert res.tensors["O"].dtype == c["dtype"]
    assert rel_err(res.tensors["O"], O_ref) <= TOL[c["dtype"]]
    if "LSE" in res.tensors:
        L = res.tensors["LSE"]
        assert np.array_equal(np.isposinf(L), np.isposinf(lse_ref))
        fin = np.isfinite(lse_ref)
        assert rel_err(L[fin], lse_ref[fin]) <= TOL[c["dtype"]]
    assert_counts_equal(res, sched)
    return res


# --- forward: every algorithm against naive attention ---------------------------------------------------------

@HYP
@given(cases())
def test_flash2_forward_matches_naive(c):
    order = ("ascending", "descending")[c["seed"] % 2]
    grid = (("m", "b", "h"), ("h", "m", "b"), ("b", "h", "m"))[c["seed"] % 3]
    check_forward(c, "flash2", KernelConfig(block_m=c["bm"], block_n=c["bn"], kv_order=order, q_order=order,
                                            grid_order=grid, band_loop=bool((c["seed"] >> 2) % 2)))


@HYP
@given(cases())
def test_flash1_forward_matches_naive(c):
    check_forward(c, "flash1", KernelConfig(block_m=c["bm"], block_n=c["bn"]))


@pytest.mark.parametrize("sram_bytes", [2048, 6000, 20000])
def test_flash1_paper_tiles_from_sram(sram_bytes):
    # no block sizes: B_c = ⌈M/4d⌉, B_r = min(B_c, d) from M = SRAM elements (FA1 Alg. 1 line 1); the run is
    # checked against the same SRAM size
    c = dict(B=1, H=2, Hk=1, Nq=77, Nkv=53, d=16, causal=True, dtype=np.float64, seed=sram_bytes)
    res = check_forward(c, "flash1", KernelConfig(sram_bytes=sram_bytes))
    assert res.notes[0].startswith("tiles B_r=")


@HYP
@given(cases(), st.booleans())
def test_standard_forward_matches_naive(c, one_pass):
    # one pass: a B_r × N_kv row block of S fits the given SRAM; otherwise the two-pass (stats, normalise) softmax
    cfg = KernelConfig(block_m=c["bm"], block_n=c["bn"], sram_bytes=10**7 if one_pass else None)
    res = check_forward(c, "standard", cfg)
    assert {k.name for k in res.kernels} == {"standard_qk", "standard_softmax", "standard_pv"}


@HYP
@given(cases(), st.integers(1, 9))
def test_splitkv_forward_matches_naive(c, splits):
    order = ("ascending", "descending")[c["seed"] % 2]
    res = check_forward(c, "splitkv", KernelConfig(block_m=c["bm"], block_n=c["bn"], kv_order=order), num_splits=splits)
    assert len(res.kernels) == (1 if splits == 1 else 2)


@HYP
@given(cases(causal=False))
def test_square_tiling_forward_matches_naive(c):
    check_forward(c, "square_tiling", KernelConfig(block_m=c["bm"]))


@HYP
@given(cases(), st.floats(0.0, 1.0), st.booleans())
def test_block_sparse_matches_masked_naive(c, density, per_head):
    rng, q, k, v = inputs(c)
    bm, bn = c["bm"], c["bn"]
    tm, tn = -(-c["Nq"] // bm), -(-c["Nkv"] // bn)
    shape = (c["B"], c["H"], tm, tn) if per_head else (tm, tn)
    mask = rng.random(shape) < density
    p = problem_for(q, k, causal=c["causal"])
    order = ("ascending", "descending")[c["seed"] % 2]
    cfg = KernelConfig(block_m=bm, block_n=bn, kv_order=order, q_order=order)
    sched = get("block_sparse").build(p, cfg, None, block_mask=mask)
    res = run(sched, {"Q": q, "K": k, "V": v})
    elem = np.repeat(np.repeat(mask, bm, axis=-2), bn, axis=-1)[..., :c["Nq"], :c["Nkv"]]
    O_ref, lse_ref = naive_forward(q, k, v, visible(c["Nq"], c["Nkv"], c["causal"], elem))
    assert rel_err(res.tensors["O"], O_ref) <= TOL[c["dtype"]]
    L = res.tensors["LSE"]
    assert np.array_equal(np.isposinf(L), np.isposinf(np.broadcast_to(lse_ref, L.shape)))
    assert_counts_equal(res, sched)


def test_block_sparse_reads_only_listed_kv_blocks():
    # 1 head, N = 64, 16×16 tiles, a diagonal block mask: each query block reads one K and one V tile.
    # K reads = 4 blocks · 16 rows · d=16 · 2 B = 2048 B, V the same (flash2 reads all 4 per query block: 4×)
    p = Problem(1, 1, 1, 64, 64, 16)
    sched = get("block_sparse").build(p, KernelConfig(block_m=16, block_n=16), None, block_mask=np.eye(4, dtype=bool))
    c = count(sched)
    assert c.tensor_bytes("read")["K"] == c.tensor_bytes("read")["V"] == 2048
    dense = count(get("flash2").build(p, KernelConfig(block_m=16, block_n=16)))
    assert dense.tensor_bytes("read")["K"] == dense.tensor_bytes("read")["V"] == 4 * 2048
    assert count(get("block_sparse").build(p, KernelConfig(block_m=16, block_n=16))).tensor_bytes("read") == \
        dense.tensor_bytes("read")


def test_block_sparse_counting_is_vectorised_at_large_n():
    # N = 2¹⁶, 128×128 tiles: a 512×512 block mask at 5% density. K bytes = Σ_listed c_j·d·2 B with every c_j = 128
    # (N is a multiple of 128), i.e. listed blocks × 128·64·2; counted from (program, t) vectors, not N² elements.
    rng = np.random.default_rng(3)
    mask = rng.random((512, 512)) < 0.05
    p = Problem(1, 4, 4, 2**16, 2**16, 64)
    c = count(get("block_sparse").build(p, KernelConfig(block_m=128, block_n=128), None, block_mask=mask))
    assert c.tensor_bytes("read")["K"] == 4 * int(mask.sum()) * 128 * 64 * 2
    assert c.kernels[0].matmul_flops == 4 * int(mask.sum()) * 4 * 128 * 128 * 64


def test_count_mismatches_reports_differences():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, 20, 8))
    sched = get("flash2").build(problem_for(q, q), KernelConfig(block_m=8, block_n=8))
    res = run(sched, {"Q": q, "K": q, "V": q})
    other = count(get("flash2").build(problem_for(q, q), KernelConfig(block_m=16, block_n=8)))
    assert any("read_bytes" in m for m in count_mismatches(res, other))


def test_block_sparse_rejects_bad_mask():
    p = Problem(1, 2, 2, 64, 64, 16)
    with pytest.raises(IosimError, match="block_mask has shape"):
        get("block_sparse").build(p, KernelConfig(block_m=16, block_n=16), None, block_mask=np.ones((3, 4), bool))
    with pytest.raises(IosimError, match="boolean"):
        get("block_sparse").build(p, KernelConfig(block_m=16, block_n=16), None, block_mask=np.ones((4, 4)))


# --- backward ----------------------------------------------------------------------------------------------------

@HYP
@given(cases())
def test_flash2_backward_matches_analytic_gradients(c):
    rng, q, k, v = inputs(c)
    do = rng.standard_normal(q.shape).astype(c["dtype"])
    vis = visible(c["Nq"], c["Nkv"], c["causal"])
    O, lse = naive_forward(q, k, v, vis)
    p = problem_for(q, k, causal=c["causal"])
    sched = get("flash2_bwd").build(p, KernelConfig(block_m=c["bm"], block_n=c["bn"]))
    res = run(sched, {"Q": q, "K": k, "V": v, "O": O.astype(c["dtype"]), "dO": do, "LSE": lse.astype(c["dtype"])})
    for name, ref in zip(("dQ", "dK", "dV"), naive_backward(q, k, v, do, vis)):
        assert rel_err(res.tensors[name], ref) <= TOL[c["dtype"]], name
    assert_counts_equal(res, sched)


@HYP
@given(cases(), st.floats(0.0, 1.0), st.booleans())
def test_block_sparse_backward_matches_masked_gradients(c, density, per_head):
    rng, q, k, v = inputs(c)
    do = rng.standard_normal(q.shape).astype(c["dtype"])
    bm, bn = c["bm"], c["bn"]
    tm, tn = -(-c["Nq"] // bm), -(-c["Nkv"] // bn)
    mask = rng.random((c["B"], c["H"], tm, tn) if per_head else (tm, tn)) < density
    elem = np.repeat(np.repeat(mask, bm, axis=-2), bn, axis=-1)[..., :c["Nq"], :c["Nkv"]]
    vis = visible(c["Nq"], c["Nkv"], c["causal"], elem)
    O, lse = naive_forward(q, k, v, vis)
    p = problem_for(q, k, causal=c["causal"])
    sched = get("flash2_bwd").build(p, KernelConfig(block_m=bm, block_n=bn), None, block_mask=mask)
    res = run(sched, {"Q": q, "K": k, "V": v, "O": O.astype(c["dtype"]), "dO": do, "LSE": lse.astype(c["dtype"])})
    for name, ref in zip(("dQ", "dK", "dV"), naive_backward(q, k, v, do, vis)):
        assert rel_err(res.tensors[name], ref) <= TOL[c["dtype"]], name
    assert_counts_equal(res, sched)


def test_analytic_gradients_match_finite_differences():
    # central differences of L = Σ dO ∘ O(Q, K, V) in float64 (error O(h²) ≈ 1e-10)
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(s) for s in ((1, 2, 5, 8), (1, 1, 6, 8), (1, 1, 6, 8)))
    do = rng.standard_normal(q.shape)
    vis = visible(5, 6, True)
    grads = naive_backward(q, k, v, do, vis)
    h = 1e-5
    for x, g in zip((q, k, v), grads):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + h
            up = (naive_forward(q, k, v, vis)[0] * do).sum()
            x[idx] = old - h
            dn = (naive_forward(q, k, v, vis)[0] * do).sum()
            x[idx] = old
            num[idx] = (up - dn) / (2 * h)
        assert np.abs(num - g).max() < 1e-8


def test_forward_then_backward_through_the_executor():
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal(s) for s in ((2, 4, 45, 16), (2, 2, 60, 16), (2, 2, 60, 16)))
    do = rng.standard_normal(q.shape)
    cfg = KernelConfig(block_m=16, block_n=32)
    O, lse, fwd = attention(q, k, v, algorithm="flash2", causal=True, config=cfg)
    sched = get("flash2_bwd").build(problem_for(q, k, causal=True), cfg)
    res = run(sched, {"Q": q, "K": k, "V": v, "O": O, "dO": do, "LSE": lse})
    for name, ref in zip(("dQ", "dK", "dV"), naive_backward(q, k, v, do, visible(45, 60, True))):
        assert rel_err(res.tensors[name], ref) <= 1e-12
    names = [kk.name for kk in res.kernels]
    assert names == ["flash2_bwd_preprocess", "flash2_bwd", "flash2_bwd_gqa_reduce_dk", "flash2_bwd_gqa_reduce_dv",
                     "flash2_bwd_convert_dq"]


def test_flash1_backward_refuses_causal():
    from iosim.symbolic import flash1_backward_schedule
    with pytest.raises(IosimError, match="without a causal mask"):
        flash1_backward_schedule(Problem(1, 1, 1, 45, 37, 16, causal=True), KernelConfig(block_m=16, block_n=24))


@pytest.mark.parametrize("causal", [False])
def test_flash1_backward_algorithm4_runs_on_flash1_forward_statistics(causal):
    # FA1 Algorithm 4 (iosim.symbolic's schedule, op flash1_bwd_step) fed with O, ℓ, m from the flash1 forward run
    from iosim.symbolic import flash1_backward_schedule
    rng = np.random.default_rng(21)
    q, k, v = (rng.standard_normal(s) for s in ((2, 2, 45, 16), (2, 2, 37, 16), (2, 2, 37, 16)))
    do = rng.standard_normal(q.shape)
    cfg = KernelConfig(block_m=16, block_n=24)
    O, _, fwd = attention(q, k, v, algorithm="flash1", causal=causal, config=cfg)
    sched = flash1_backward_schedule(problem_for(q, k, causal=causal), cfg)
    res = run(sched, {"Q": q, "K": k, "V": v, "O": O, "dO": do, "L": fwd.tensors["L"], "M": fwd.tensors["M"]})
    for name, ref in zip(("dQ", "dK", "dV"), naive_backward(q, k, v, do, visible(45, 37, causal))):
        assert rel_err(res.tensors[name], ref) <= 1e-12, name
    assert_counts_equal(res, sched)


def test_backward_io_per_head_by_hand():
    # 1 head, N_q = N_kv = 64, d = 16, bf16, 32×32 tiles (T_r = T_c = 2), non-causal:
    # main kernel reads K + V once: 2·64·16·2 = 4096 B; per KV block Q + dO: 2·64·16·2 = 4096 B → ×2 = 8192 B;
    # LSE + D: 2·64·4 = 512 B ×2 = 1024 B; dQ_accum atomically added (never read), kHeadDim = 32 columns:
    # 64·32·4 = 8192 B ×2 = 16384 B.
    p = Problem(1, 1, 1, 64, 64, 16)
    c = count(get("flash2_bwd").build(p, KernelConfig(block_m=32, block_n=32)))
    main = c.kernels[1]
    assert dict(main.read_bytes) == {"K": 2048, "V": 2048, "Q": 4096, "dO": 4096, "LSE": 512, "D": 512}
    assert dict(main.write_bytes) == {"dQ_accum": 16384, "dK": 2048, "dV": 2048}
    assert main.matmul_flops == 10 * 64 * 64 * 16  # 5 matmuls × 2·N_q·N_kv·d


# --- fully masked rows (PyTorch convention) -----------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["flash2", "flash1", "standard", "splitkv", "block_sparse"])
def test_fully_masked_rows_are_zero(algorithm):
    # causal with N_q = 40 > N_kv = 10: rows r < 30 see no key (c ≤ r − 30)
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s) for s in ((1, 2, 40, 8), (1, 1, 10, 8), (1, 1, 10, 8)))
    kw = {"num_splits": 3} if algorithm == "splitkv" else {}
    O, lse, res = attention(q, k, v, algorithm=algorithm, causal=True, config=KernelConfig(block_m=16, block_n=8), **kw)
    assert not np.isnan(O).any()
    assert np.all(O[:, :, :30] == 0)
    if lse is not None:
        assert np.all(np.isposinf(lse[:, :, :30])) and np.all(np.isfinite(lse[:, :, 30:]))
    assert rel_err(O, naive_forward(q, k, v, visible(40, 10, True))[0]) <= 1e-12


def test_fully_masked_rows_have_zero_gradients():
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(s) for s in ((1, 1, 40, 8), (1, 1, 10, 8), (1, 1, 10, 8)))
    do = rng.standard_normal(q.shape)
    O, lse = naive_forward(q, k, v, visible(40, 10, True))
    sched = get("flash2_bwd").build(problem_for(q, k, causal=True), KernelConfig(block_m=16, block_n=8))
    res = run(sched, {"Q": q, "K": k, "V": v, "O": O, "dO": do, "LSE": lse})
    assert np.all(res.tensors["dQ"][:, :, :30] == 0) and not np.isnan(res.tensors["dK"]).any()


# --- refusals ------------------------------------------------------------------------------------------------------

def test_refuses_schedule_exceeding_sram():
    # flash2 64×64, d = 64, bf16, 2 stages: Q 8192 + 2·(K 8192 + V 8192) = 40,960 B of shared memory
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 64, 64))
    sched = get("flash2").build(problem_for(q, q), KernelConfig(block_m=64, block_n=64))
    with pytest.raises(IosimError, match="40,960 B"):
        run(sched, {"Q": q, "K": q, "V": q}, sram_bytes=40_959)
    run(sched, {"Q": q, "K": q, "V": q}, sram_bytes=40_960)


def test_refuses_tile_larger_than_its_buffer():
    # a hand-made kernel loading a 16-row tile into an 8-row buffer
    p = Problem(1, 1, 1, 16, 16, 8)
    b = var("b")
    k = Kernel("bad", (GridAxis("b", b, 1),), (Buffer("q", (8, 8), 2),),
               (Load("q", Tile("Q", (Span(b, 1, 1), Span(0, 1, 1), Span(0, 16, 16), full(8)))),))
    sched = Schedule("bad", p, KernelConfig(), {"Q": TensorSpec("Q", (1, 1, 16, 8), 2, "input")}, (k,))
    with pytest.raises(IosimError, match="exceed buffer"):
        run(sched, {"Q": np.zeros((1, 1, 16, 8))})


def test_refuses_unknown_op_and_bad_inputs():
    p = Problem(1, 1, 1, 8, 8, 8)
    k = Kernel("k", (), (Buffer("x", (8,), 4),), (Compute("no_such_op", ("x",)),))
    sched = Schedule("s", p, KernelConfig(), {"Q": TensorSpec("Q", (1, 1, 8, 8), 2, "input")}, (k,))
    with pytest.raises(IosimError, match="no_such_op"):
        run(sched, {"Q": np.zeros((1, 1, 8, 8))})
    k = Kernel("k", (), (), (Compute("zero", ("x",)),))
    with pytest.raises(IosimError, match="buffer 'x'"):
        run(Schedule("s", p, KernelConfig(), sched.tensors, (k,)), {"Q": np.zeros((1, 1, 8, 8))})
    i = var("i")
    k = Kernel("k", (), (Buffer("x", (8, 8), 4),), (Load("x", Tile("Q", (Span(0, 1, 1), Span(0, 1, 1), Span(i, 8, 8), full(8)))),))
    with pytest.raises(IosimError, match="unbound"):
        run(Schedule("s", p, KernelConfig(), sched.tensors, (k,)), {"Q": np.zeros((1, 1, 8, 8))})
    fl = get("flash2").build(p, KernelConfig(block_m=8, block_n=8))
    z = np.zeros((1, 1, 8, 8))
    with pytest.raises(IosimError, match="missing"):
        run(fl, {"Q": z, "K": z})
    with pytest.raises(IosimError, match="shape"):
        run(fl, {"Q": z, "K": z, "V": np.zeros((1, 1, 8, 4))})
    with pytest.raises(IosimError, match="float32 or all float64"):
        run(fl, {"Q": z.astype(np.float16), "K": z, "V": z})


# --- split-KV heuristic -------------------------------------------------------------------------------------------

def test_num_splits_heuristic_by_hand():
    from iosim.models.splitkv import num_splits_heuristic
    assert num_splits_heuristic(200, 216, 64, 128) == 1  # 200 ≥ 0.8·216: the launch already fills the GPU
    # 1 CTA, 4 "SMs", 4 KV blocks: eff(1) = .25, eff(2) = .5, s = 3 ineligible (⌈4/3⌉ = ⌈4/2⌉), eff(4) = 1 → 4
    assert num_splits_heuristic(1, 4, 4, 128) == 4
    # 3 CTAs, 8 SMs, 8 blocks: eff = .375, .75, .5625, .75, –, –, –, 1.0 → the first ≥ .85 is s = 8
    assert num_splits_heuristic(3, 8, 8, 128) == 8
    # 3 CTAs, 8 SMs, 3 blocks: max splits 3; eff = .375, .75, 1.125/2 = .5625 → best .75, first ≥ .6375 is s = 2
    assert num_splits_heuristic(3, 8, 3, 128) == 2


# --- the IR extension: Lookup over schedule tables -----------------------------------------------------------------

def test_lookup_evaluates_exactly_over_vectors_and_refuses_bad_tables():
    import sympy as sp

    from iosim.expr import evaluate, table_env
    from iosim.schedule import lookup, table
    i, t = var("i"), var("t")
    e = sp.Min(lookup(table("kv_indices"), i, t) * 64 + 64, 100)  # end of tile j = kv_indices[i, t], N = 100
    env = table_env({"kv_indices": np.array([[0, 1], [1, 0]])})
    assert evaluate(e, env | {i: 0, t: 1}) == 100 and isinstance(evaluate(e, env | {i: 0, t: 1}), int)
    assert evaluate(e, env | {i: np.array([0, 1, 1]), t: np.array([0, 0, 1])}).tolist() == [64, 100, 64]
    with pytest.raises(IosimError, match="no table"):
        evaluate(e, {i: 0, t: 0})
    with pytest.raises(IosimError, match="out of range"):
        evaluate(e, env | {i: 2, t: 0})
    with pytest.raises(IosimError, match="integers"):
        table_env({"x": np.array([0.5])})
