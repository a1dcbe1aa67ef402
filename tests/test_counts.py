"""Exact byte and FLOP counts, checked against closed forms derived here from the papers' accounting.

Nothing below calls the engine's helpers to compute an expected value: every expectation is arithmetic written
in the test (loops over blocks in plain Python), so a wrong schedule or a wrong summation shows up.
"""

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem

H100 = load_hardware("h100")


def cdiv(a, b):
    return -(-a // b)


def counts(alg, p, cfg, hw=H100):
    return count(build_schedule(alg, p, cfg, hw))


def test_fa2_issue_example_exact():
    # FA2, B=2, H=16, N=16384, d=64, bf16, 128x128 tiles, non-causal: Q once (2 MiB per head), K+V once per
    # Q block (128 blocks x 4 MiB): 32 x (2 MiB + 128 x 4 MiB) = 17,246,978,048 B (H100 measured 17.248 GB).
    c = counts("flash2", Problem(2, 16, 16, 16384, 16384, 64, "bf16"), KernelConfig(128, 128))
    assert c.sm_read_bytes == 32 * (2 * 2**20 + 128 * 4 * 2**20) == 17_246_978_048
    # O in bf16 + LSE in fp32, once per row.
    assert c.sm_write_bytes == 32 * (16384 * 64 * 2 + 16384 * 4)


def fa2_expected(p: Problem, bm: int, bn: int):
    """Per FA2 Alg. 1: Q_i once, K_j and V_j for every visited block, O_i and L_i once; visited = some (r, c) in
    the block with c <= r + Nkv - Nq (causal, bottom-right) or all blocks."""
    e, d = p.elem_bytes, p.head_dim
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    kv_rows = 0
    mm = 0
    for i in range(tm):
        r_lo, r_hi = i * bm, min((i + 1) * bm, p.seq_q)
        for j in range(tn):
            c_lo, c_hi = j * bn, min((j + 1) * bn, p.seq_kv)
            if p.causal and c_lo > (r_hi - 1) + p.seq_kv - p.seq_q:
                continue
            kv_rows += c_hi - c_lo
            mm += 4 * (r_hi - r_lo) * (c_hi - c_lo) * d
    bh = p.batch * p.heads
    reads = bh * (p.seq_q * d * e + 2 * kv_rows * d * e)
    writes = bh * (p.seq_q * d * e + p.seq_q * 4)
    return reads, writes, bh * mm


@settings(max_examples=150, deadline=None)
@given(
    b=st.integers(1, 3), hkv=st.integers(1, 3), g=st.sampled_from([1, 2, 4]),
    nq=st.integers(1, 700), nkv=st.integers(1, 700), d=st.sampled_from([16, 32, 64, 128]),
    bm=st.sampled_from([16, 32, 64, 128]), bn=st.sampled_from([16, 32, 64, 128]),
    causal=st.booleans(), dtype=st.sampled_from(["bf16", "fp32", "fp8"]),
    kv_order=st.sampled_from(["ascending", "descending"]), q_order=st.sampled_from(["ascending", "descending"]),
)
def test_fa2_matches_closed_form(b, hkv, g, nq, nkv, d, bm, bn, causal, dtype, kv_order, q_order):
    p = Problem(b, hkv * g, hkv, nq, nkv, d, dtype, causal)
    cfg = KernelConfig(bm, bn, num_stages=1, kv_order=kv_order, q_order=q_order)
    c = counts("flash2", p, cfg)
    reads, writes, mm = fa2_expected(p, bm, bn)
    assert (c.sm_read_bytes, c.sm_write_bytes, c.matmul_flops) == (reads, writes, mm)
    k = c.kernels[0]
    assert k.read_bytes["K"] == k.read_bytes["V"]
    assert k.programs == b * hkv * g * cdiv(nq, bm)


def test_fa2_causal_square_halves_kv_traffic():
    # Square tiles, N = 64 blocks: block i visits i + 1 KV blocks, sum = 64·65/2 of 64 (non-causal 64·64).
    p = Problem(1, 1, 1, 64 * 128, 64 * 128, 128, "bf16", causal=True)
    c = counts("flash2", p, KernelConfig(128, 128, num_stages=1))
    kv_tile = 128 * 128 * 2
    assert c.tensor_bytes("read")["K"] == (64 * 65 // 2) * kv_tile
    assert c.matmul_flops == 4 * 128 * (64 * 65 // 2) * 128 * 128


def test_gqa_kv_reads_per_query_head():
    # Each query head's CTAs load their group's K/V themselves: reads do not depend on kv_heads.
    mha = counts("flash2", Problem(1, 8, 8, 1000, 1000, 64), KernelConfig(64, 64))
    gqa = counts("flash2", Problem(1, 8, 2, 1000, 1000, 64), KernelConfig(64, 64))
    mqa = counts("flash2", Problem(1, 8, 1, 1000, 1000, 64), KernelConfig(64, 64))
    assert mha.tensor_bytes("read") == gqa.tensor_bytes("read") == mqa.tensor_bytes("read")


def flash1_expected(p: Problem, br: int, bc: int):
    """Algorithm 1: line 2 writes O, l, m; each outer step j loads K_j, V_j (line 6) and, for each visited Q block,
    reads Q_i, O_i, l_i, m_i (line 8) and writes O_i, l_i, m_i (lines 12-13)."""
    e, d = p.elem_bytes, p.head_dim
    tr, tc = cdiv(p.seq_q, br), cdiv(p.seq_kv, bc)
    reads = writes = 0
    writes += p.seq_q * d * e + 2 * p.seq_q * 4  # line 2
    for j in range(tc):
        c_lo, c_hi = j * bc, min((j + 1) * bc, p.seq_kv)
        reads += 2 * (c_hi - c_lo) * d * e
        for i in range(tr):
            r_lo, r_hi = i * br, min((i + 1) * br, p.seq_q)
            if p.causal and (r_hi - 1) + p.seq_kv - p.seq_q < c_lo:
                continue
            rows = r_hi - r_lo
            reads += 2 * rows * d * e + 2 * rows * 4
            writes += rows * d * e + 2 * rows * 4
    bh = p.batch * p.heads
    return bh * reads, bh * writes


@settings(max_examples=80, deadline=None)
@given(nq=st.integers(1, 600), nkv=st.integers(1, 600), d=st.sampled_from([16, 32, 64]),
       br=st.integers(1, 80), bc=st.integers(1, 80), causal=st.booleans(), h=st.integers(1, 3))
def test_flash1_matches_paper_count(nq, nkv, d, br, bc, causal, h):
    p = Problem(1, h, h, nq, nkv, d, "fp16", causal)
    c = counts("flash1", p, KernelConfig(br, bc))
    assert (c.sm_read_bytes, c.sm_write_bytes) == flash1_expected(p, br, bc)


def test_flash1_paper_tiles_and_formula():
    # M = 64 KiB of bf16 = 32768 elements... tiles from the paper's rule B_c = ceil(M/4d), B_r = min(B_c, d).
    p = Problem(1, 1, 1, 4096, 4096, 64, "bf16")
    cfg = KernelConfig(sram_bytes=65536)
    s = build_schedule("flash1", p, cfg, H100)
    # Largest M (multiple of 4d) whose tiles fit 65536 B: try M = 32768 -> B_c = 128, B_r = 64:
    # (2*128 + 2*64)*64*2 + 2*64*4 = 49664 B <= 65536, so M = 32768 elements, T_c = 32.
    assert "B_r=64, B_c=128" in s.notes[0]
    c = count(s)
    n, d, e, tc = 4096, 64, 2, 32
    # reads 2Nd + T_c(2Nd + 2N) (paper, in elements, with l/m as fp32 here); writes (T_c + 1)(Nd + 2N)
    assert c.sm_read_bytes == 2 * n * d * e + tc * (2 * n * d * e + 2 * n * 4)
    assert c.sm_write_bytes == (tc + 1) * (n * d * e + 2 * n * 4)


def standard_expected(p: Problem, bm: int, bn: int, two_pass: bool):
    e, d = p.elem_bytes, p.head_dim
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    nn = p.seq_q * p.seq_kv * e
    reads = p.seq_q * d * e * tn + p.seq_kv * d * e * tm  # qk GEMM tiles
    reads += nn * (2 if two_pass else 1)  # softmax reads S
    reads += nn + p.seq_kv * d * e * tm  # pv reads P and V per row block
    writes = nn + nn + p.seq_q * d * e  # S, P, O
    bh = p.batch * p.heads
    return bh * reads, bh * writes


@pytest.mark.parametrize("nq,nkv,two_pass", [(1000, 100, False), (1000, 1000, True), (257, 129, False)])
def test_standard_three_kernels(nq, nkv, two_pass):
    p = Problem(2, 3, 3, nq, nkv, 64, "bf16")
    c = counts("standard", p, KernelConfig(128, 64))
    assert [k.name for k in c.kernels] == ["standard_qk", "standard_softmax", "standard_pv"]
    assert (c.sm_read_bytes, c.sm_write_bytes) == standard_expected(p, 128, 64, two_pass)
    assert c.matmul_flops == 2 * 3 * 4 * nq * nkv * 64


def test_counting_memory_is_not_quadratic():
    # N = 2^20: an N x N array of bytes would be 1 TB; the count must stay far below 100 MB of Python memory.
    p = Problem(1, 32, 32, 2**20, 2**20, 128, "bf16", causal=True)
    tracemalloc.start()
    c = counts("flash2", p, KernelConfig(128, 64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100e6
    tm = 2**20 // 128
    # causal, 128x64: block i visits 2i + 2 KV blocks of 64 rows.
    assert c.tensor_bytes("read")["K"] == 32 * sum(2 * i + 2 for i in range(tm)) * 64 * 128 * 2


# --- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(batch=0), "batch must be a positive integer"),
    (dict(seq_q=-5), "seq_q must be a positive integer"),
    (dict(head_dim=0), "head_dim must be a positive integer"),
    (dict(heads=6, kv_heads=4), "kv_heads=4 does not divide heads=6"),
    (dict(dtype="int3"), "unknown dtype 'int3'"),
])
def test_problem_errors(kwargs, needle):
    base = dict(batch=1, heads=4, kv_heads=4, seq_q=128, seq_kv=128, head_dim=64)
    with pytest.raises(IosimError, match=needle):
        Problem(**(base | kwargs))


def test_tiles_too_big_for_smem_names_sizes():
    p = Problem(1, 1, 1, 4096, 4096, 256, "bf16")
    with pytest.raises(IosimError) as ei:
        counts("flash2", p, KernelConfig(128, 128, num_stages=2))
    msg = str(ei.value)
    # Q 128x256x2 = 65,536 B; K, V 128x256x2 = 65,536 B each, x 2 stages -> 327,680 B > 232,448 B.
    assert "327,680 B" in msg and "232,448 B" in msg and "num_stages" in msg


@pytest.mark.parametrize("d", [300, 100])
def test_head_dim_not_supported(d):
    with pytest.raises(IosimError, match=f"head_dim={d} is not supported"):
        counts("flash2", Problem(1, 1, 1, 128, 128, d), KernelConfig(64, 64))


def test_unknown_hardware_lists_known():
    with pytest.raises(IosimError, match="unknown hardware 'h1000'.*h100"):
        load_hardware("h1000")


def test_unknown_algorithm_lists_known():
    with pytest.raises(IosimError, match="unknown algorithm 'flash9'.*flash2"):
        build_schedule("flash9", Problem(1, 1, 1, 8, 8, 8), KernelConfig(), H100)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(block_m=0), "block_m must be a positive integer"),
    (dict(num_warps=3), "num_warps must be a power of two"),
    (dict(grid_order=("m", "b")), "grid_order must be a permutation"),
])
def test_config_errors(kwargs, needle):
    with pytest.raises(IosimError, match=needle):
        KernelConfig(**kwargs)
