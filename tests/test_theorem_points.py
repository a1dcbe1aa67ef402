"""The nine theorems of ``iosim bounds`` at concrete points spread over their regimes (edges included).

At every point the schedule is built with the paper's tiles (computed here, not by the model) and counted by
``iosim.counts``; the count must equal the theorem's symbolic quantity (a check of the symbolic sum) and lie between
its certified bounds. The lower bounds for any algorithm are checked against FA1 and square tiling, and the trivial
bound against a brute-force count of the inputs every exact algorithm must read.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import iosim.symbolic as S
from iosim.cli import run as cli_run
from iosim.counts import count
from iosim.problem import KernelConfig, Problem
from iosim.registry import get

N, D, M = S.N, S.D, S.M
THEOREMS = {t.key: t for t in S.theorems()}
EXAMPLES = settings(max_examples=25, deadline=None)


def fa1_tiles(m: int, d: int) -> tuple[int, int]:
    """FA Algorithm 1 line 1 (and Algorithm 4 lines 2-4): B_c = ⌈M/4d⌉, B_r = min(B_c, d)."""
    bc = -(-m // (4 * d))
    return min(bc, d), bc


def square_tile(m: int) -> int:
    """Saha & Ye Algorithm 1 line 1: B = ⌊√(M/4)⌋ = ⌊⌊√M⌋ / 2⌋."""
    return math.isqrt(m) // 2


def head(n: int, d: int) -> Problem:
    """One head, N_q = N_kv = N, fp32 (every tensor 4 bytes, so elements = bytes / 4)."""
    return Problem(1, 1, 1, n, n, d, "fp32")


def elements(schedule) -> int:
    c = count(schedule)
    return (c.sm_read_bytes + c.sm_write_bytes) // 4


_SYM = {"n": N, "d": D, "m": M, "br": S.BLOCK_M, "bc": S.BLOCK_N}


def at(expr, **sizes):
    """The exact value of a theorem expression at a point (a sympy number; √M stays exact)."""
    return sp.sympify(expr).xreplace({_SYM[k]: sp.Integer(v) for k, v in sizes.items()})


def check(key: str, io_elements, **sizes) -> None:
    """quantity(point) == the counted IO, and lower ≤ it ≤ upper (those the theorem states)."""
    t = THEOREMS[key]
    q = at(t.quantity, **sizes)
    assert q == io_elements, (key, sizes, q, io_elements)
    if t.lower is not None:
        lo = at(t.lower.expr, **sizes)
        assert bool(lo <= q), (key, sizes, "lower", lo, q)
    if t.upper is not None:
        up = at(t.upper.expr, **sizes)
        assert bool(q <= up), (key, sizes, "upper", q, up)


def fa1_forward_elements(n: int, d: int, m: int) -> int:
    br, bc = fa1_tiles(m, d)
    return elements(get("flash1").build(head(n, d), KernelConfig(block_m=br, block_n=bc), None))


def fa1_backward_elements(n: int, d: int, m: int) -> int:
    br, bc = fa1_tiles(m, d)
    return elements(S.flash1_backward_schedule(head(n, d), KernelConfig(block_m=br, block_n=bc)))


def square_elements(n: int, d: int, m: int) -> int:
    return elements(get("square_tiling").build(head(n, d), KernelConfig(block_m=square_tile(m)), None))


# --- FlashAttention forward: 1 ≤ d ≤ M ≤ N·d ---------------------------------------------------------------------

FA_EDGES = [(1, 1, 1), (1, 1, 1000), (1000, 1, 1000), (7, 3, 3), (7, 3, 9), (7, 3, 21), (100, 64, 64),
            (100, 64, 4096), (100, 64, 6400), (1000, 5, 25), (1000, 5, 5000), (4096, 128, 16384), (33, 17, 289),
            (65536, 64, 4096), (100_003, 2, 7)]  # (N, d, M): M = d, M = d², M = N·d, tiny d, large N, odd sizes


@pytest.mark.parametrize("n,d,m", FA_EDGES)
def test_fa1_forward_at_regime_edges(n, d, m):
    check("fa1_forward", fa1_forward_elements(n, d, m), n=n, d=d, m=m)


@EXAMPLES
@given(st.integers(1, 96), st.integers(1, 3000), st.data())
def test_fa1_forward_across_the_regime(d, n, data):
    m = data.draw(st.integers(d, n * d))
    check("fa1_forward", fa1_forward_elements(n, d, m), n=n, d=d, m=m)


def test_fa1_forward_count_by_hand():
    # Algorithm 1 per head: init writes O, ℓ, m (Nd + 2N); K, V read once (2Nd); each of the T_c outer steps reads
    # Q, O, ℓ, m (2Nd + 2N) and writes O, ℓ, m (Nd + 2N). N=1000, d=5, M=25: B_c = 2, T_c = 500.
    n, d = 1000, 5
    assert fa1_forward_elements(n, d, 25) == n * d + 2 * n + 2 * n * d + 500 * (3 * n * d + 4 * n)


# --- block-sparse FlashAttention: Θ(Nd + s·N²d²/M), 0 < s ≤ 1 ------------------------------------------------------

def block_sparse_elements(n: int, d: int, m: int, s: sp.Rational):
    """Prop. 4's count from the engine's FA1 counts: the init kernel and the K, V loads whole, the per-(i, j) traffic
    of Q, O, ℓ, m scaled by s."""
    br, bc = fa1_tiles(m, d)
    c = count(get("flash1").build(head(n, d), KernelConfig(block_m=br, block_n=bc), None))
    init, fwd = (c.kernels[i] for i in range(2))
    fixed = init.sm_read_bytes + init.sm_write_bytes + fwd.read_bytes["K"] + fwd.read_bytes["V"]
    inner = sum(fwd.read_bytes.get(t, 0) + fwd.write_bytes.get(t, 0) for t in ("Q", "O", "L", "M"))
    return sp.Integer(fixed) / 4 + s * sp.Integer(inner) / 4


@pytest.mark.parametrize("n,d,m", FA_EDGES[:12])
@pytest.mark.parametrize("s", [sp.Integer(1), sp.Rational(1, 2), sp.Rational(1, 7), sp.Rational(1, 1000)])
def test_block_sparse_forward_at_regime_edges(n, d, m, s):
    t = THEOREMS["block_sparse_forward"]
    env = {N: n, D: d, M: m, S.SPARSITY: s}
    q = t.quantity.xreplace(env)
    assert q == block_sparse_elements(n, d, m, s)
    assert t.lower.expr.xreplace(env) <= q <= t.upper.expr.xreplace(env), (n, d, m, s)


# --- FlashAttention backward (Algorithm 4) ------------------------------------------------------------------------

@pytest.mark.parametrize("n,d,m", FA_EDGES[:14])
def test_fa1_backward_at_regime_edges(n, d, m):
    check("fa1_backward", fa1_backward_elements(n, d, m), n=n, d=d, m=m)


def test_fa1_backward_count_by_hand():
    # Algorithm 4 per head (App. B.4): 7Nd + T_c·(5Nd + 2N). N=1000, d=5, M=25: B_c = 2, B_r = 2, T_c = 500.
    n, d = 1000, 5
    assert fa1_backward_elements(n, d, 25) == 7 * n * d + 500 * (5 * n * d + 2 * n)


LARGE_CACHE = [(1, 1, 1), (4, 2, 4), (4, 2, 8), (100, 10, 100), (100, 10, 1000), (1000, 7, 49), (1000, 7, 7000),
               (513, 32, 1024), (513, 32, 16416), (4096, 64, 4096)]  # d² ≤ M ≤ N·d


@pytest.mark.parametrize("n,d,m", LARGE_CACHE)
def test_backward_large_cache_at_regime_edges(n, d, m):
    check("backward_large_cache", fa1_backward_elements(n, d, m), n=n, d=d, m=m)


SMALL_CACHE = [(1, 1, 1), (50, 2, 2), (50, 2, 4), (300, 17, 17), (300, 17, 289), (300, 17, 100), (2048, 64, 64),
               (2048, 64, 4096), (999, 100, 101)]  # d ≤ M ≤ d²


@pytest.mark.parametrize("n,d,m", SMALL_CACHE)
def test_backward_small_cache_gap_at_regime_edges(n, d, m):
    check("backward_small_cache_gap", fa1_backward_elements(n, d, m), n=n, d=d, m=m)


@EXAMPLES
@given(st.integers(1, 48), st.data())
def test_backward_theorems_across_their_regimes(d, data):
    n = data.draw(st.integers(d, 1500))
    m = data.draw(st.integers(d * d, n * d))
    check("backward_large_cache", fa1_backward_elements(n, d, m), n=n, d=d, m=m)
    m = data.draw(st.integers(d, d * d))
    io_el = fa1_backward_elements(n, d, m)
    check("backward_small_cache_gap", io_el, n=n, d=d, m=m)
    check("fa1_backward", io_el, n=n, d=d, m=m)


# --- standard attention: B_r, B_c ≥ d, two-pass softmax --------------------------------------------------------------

@pytest.mark.parametrize("n,d,br,bc", [(1, 1, 1, 1), (1, 1, 5, 3), (100, 1, 1, 1), (100, 8, 8, 8), (100, 8, 64, 128),
                                       (100, 8, 100, 100), (100, 8, 1000, 8), (777, 33, 40, 33), (4096, 64, 128, 64)])
def test_standard_forward_at_regime_edges(n, d, br, bc):
    # no SRAM size given: the B_r × N row block of S is not held on chip, so softmax reads S twice (the regime)
    sched = get("standard").build(head(n, d), KernelConfig(block_m=br, block_n=bc), None)
    check("standard_forward", elements(sched), n=n, d=d, br=br, bc=bc)


def test_standard_forward_count_by_hand():
    # Algorithm 0: QKᵀ reads Q T_c times and K T_r times, writes S; softmax reads S twice, writes P; PV reads P,
    # V T_r times, writes O. N=100, d=8, B_r=B_c=8: T = 13.
    n, d, t = 100, 8, 13
    sched = get("standard").build(head(n, d), KernelConfig(block_m=8, block_n=8), None)
    assert elements(sched) == n * d * t + n * d * t + n * n + 2 * n * n + n * n + n * n + n * d * t + n * d


# --- square tiling: 16 ≤ M ≤ d² (Θ(N²d/√M)) and 16 ≤ M ≤ d²/64, N ≥ d (optimal) --------------------------------------

SQUARE = [(1, 4, 16), (1, 4, 17), (64, 4, 16), (64, 5, 25), (100, 9, 80), (100, 9, 81), (257, 16, 255),
          (300, 40, 1600), (1000, 100, 16), (1000, 100, 9999), (5000, 64, 4096)]  # (N, d, M), B = ⌊√M/2⌋ ≥ 2


@pytest.mark.parametrize("n,d,m", SQUARE)
def test_square_tiling_small_cache_at_regime_edges(n, d, m):
    check("square_tiling_small_cache", square_elements(n, d, m), n=n, d=d, m=m)


def test_square_tiling_count_by_hand():
    # Saha & Ye Algorithm 1: Q read T_kv times, K and V T_q times, A written once and read T_d times, d (fp32)
    # written and read once, O written once. N=100, d=9, M=81: B = 4, T_q = T_kv = 25, T_d = 3.
    n, d = 100, 9
    assert square_elements(n, d, 81) == 25 * n * d + 2 * 25 * n * d + n * n * (1 + 3) + 2 * n + n * d


OPTIMAL_SMALL = [(32, 32, 16), (32, 32, 17), (100, 32, 16), (64, 64, 64), (64, 64, 63), (100, 80, 100),
                 (3000, 96, 144), (200, 128, 256)]  # 16 ≤ M ≤ d²/64, N ≥ d


@pytest.mark.parametrize("n,d,m", OPTIMAL_SMALL)
def test_square_tiling_optimal_small_cache_at_regime_edges(n, d, m):
    check("square_tiling_optimal_small_cache", square_elements(n, d, m), n=n, d=d, m=m)


@EXAMPLES
@given(st.integers(4, 40), st.integers(0, 60), st.integers(1, 800), st.data())
def test_square_tiling_theorems_across_their_regimes(root, extra_d, n, data):
    d = root + extra_d
    m = data.draw(st.integers(16, d * d))
    check("square_tiling_small_cache", square_elements(n, d, m), n=n, d=d, m=m)
    if d >= 32:
        n2, m2 = max(n, d), data.draw(st.integers(16, d * d // 64))
        check("square_tiling_optimal_small_cache", square_elements(n2, d, m2), n=n2, d=d, m=m2)


# --- FA1 within a constant of the Saha & Ye lower bound: d² ≤ M ≤ N·d/4 -------------------------------------------

OPTIMAL_LARGE = [(4, 1, 1), (8, 2, 4), (400, 10, 100), (400, 10, 1000), (1000, 3, 9), (1000, 3, 750), (999, 31, 961),
                 (999, 31, 7742), (8192, 64, 4096), (8192, 64, 131072)]


@pytest.mark.parametrize("n,d,m", OPTIMAL_LARGE)
def test_fa1_optimal_large_cache_at_regime_edges(n, d, m):
    check("fa1_optimal_large_cache", fa1_forward_elements(n, d, m), n=n, d=d, m=m)


@EXAMPLES
@given(st.integers(1, 48), st.data())
def test_fa1_optimal_large_cache_across_the_regime(d, data):
    n = data.draw(st.integers(4 * d, 3000))
    m = data.draw(st.integers(d * d, n * d // 4))
    check("fa1_optimal_large_cache", fa1_forward_elements(n, d, m), n=n, d=d, m=m)


def test_every_theorem_is_checked_here():
    checked = {"fa1_forward", "standard_forward", "block_sparse_forward", "fa1_backward", "backward_large_cache",
               "backward_small_cache_gap", "square_tiling_small_cache", "fa1_optimal_large_cache",
               "square_tiling_optimal_small_cache"}
    assert set(THEOREMS) == checked


# --- lower bounds for any algorithm -------------------------------------------------------------------------------

def fast_memory_elements(schedule) -> int:
    """Σ of one kernel's on-chip buffers in elements (the largest kernel), counted here from the buffer shapes."""
    return max(sum(math.prod(int(x) for x in b.shape) for b in k.buffers) for k in schedule.kernels)


def must_read(n_q: int, n_kv: int, d: int, causal: bool) -> int:
    """Brute force: the Q rows that see a key, the K/V rows some query sees, and every O row (elements, one head)."""
    off = n_kv - n_q  # bottom-right causal mask: row r sees keys j ≤ r + off
    sees = [(range(n_kv) if not causal else range(max(0, min(n_kv, r + off + 1)))) for r in range(n_q)]
    q_rows = sum(1 for s in sees if len(s))
    kv_rows = len(set().union(*map(set, sees)))
    return (q_rows + n_q + 2 * kv_rows) * d


@pytest.mark.parametrize("n_q,n_kv,d,causal", [(1, 1, 8, False), (5, 5, 3, True), (7, 3, 2, True), (3, 7, 2, True),
                                                (64, 100, 8, False), (100, 64, 8, True), (129, 129, 16, True)])
def test_trivial_bound_is_reading_every_needed_input_once(n_q, n_kv, d, causal):
    lb = S.lower_bounds(Problem(1, 1, 1, n_q, n_kv, d, "fp32", causal), 64)
    assert lb.trivial == must_read(n_q, n_kv, d, causal)
    if not causal:  # FA2 with one query tile reads Q, K, V once and writes O (and the N_q LSE values) once
        one = get("flash2").build(Problem(1, 1, 1, n_q, n_kv, d, "fp32"), KernelConfig(block_m=n_q, block_n=8), None)
        assert elements(one) - n_q == lb.trivial


@pytest.mark.parametrize("n,d,m,causal", [(1, 1, 1, False), (64, 8, 8, False), (64, 8, 64, True), (1000, 16, 256, False),
                                          (1000, 16, 4000, True), (4096, 64, 4096, False), (4096, 64, 65536, False),
                                          (333, 7, 50, True), (2048, 128, 128, False)])
def test_fa1_never_beats_the_lower_bounds(n, d, m, causal):
    assert_fa1_above_lower_bounds(n, d, m, causal)


def assert_fa1_above_lower_bounds(n, d, m, causal):
    br, bc = fa1_tiles(m, d)
    p = Problem(1, 1, 1, n, n, d, "fp32", causal)
    sched = get("flash1").build(p, KernelConfig(block_m=br, block_n=bc), None)
    assert elements(sched) >= S.lower_bounds(p, fast_memory_elements(sched)).best, (n, d, m, causal)


@pytest.mark.parametrize("n,d,m", [(1, 4, 16), (64, 8, 64), (1000, 64, 64), (1000, 64, 4096), (4096, 256, 1024),
                                   (3000, 96, 144), (777, 33, 1000)])
def test_square_tiling_never_beats_the_lower_bounds(n, d, m):
    sched = get("square_tiling").build(head(n, d), KernelConfig(block_m=square_tile(m)), None)
    assert elements(sched) >= S.lower_bounds(head(n, d), fast_memory_elements(sched)).best, (n, d, m)


@EXAMPLES
@given(st.integers(1, 64), st.integers(1, 2000), st.booleans(), st.data())
def test_fa1_never_beats_the_lower_bounds_anywhere(d, n, causal, data):
    assert_fa1_above_lower_bounds(n, d, data.draw(st.integers(d, n * d)), causal)


# --- the `iosim bounds` ratio at one point ------------------------------------------------------------------------

def test_cli_bounds_ratio_at_one_point():
    out = io.StringIO()
    assert cli_run(["bounds", "--algorithm", "flash1", "--json", "--seq-q", "2048", "--head-dim", "64",
                    "--sram-bytes", "65536"], out) == 0
    c = json.loads(out.getvalue())["concrete"]
    # bf16, 65,536 B of SRAM: M = 32,768 elements (a multiple of 4d whose tiles fit: (2·128 + 2·64)·64·2 B + 2·64·4 B
    # = 49,664 B), so B_c = 128, B_r = 64, T_c = 16.
    n, d, tc = 2048, 64, 16
    io_el = n * d + 2 * n + 2 * n * d + tc * (3 * n * d + 4 * n)
    # on-chip: K, V (128×64 each), Q, O (64×64 each), ℓ, m (64 each), S (64×128) = 32,896 elements
    fast = 2 * 128 * 64 + 2 * 64 * 64 + 2 * 64 + 64 * 128
    trivial = 4 * n * d
    saha_ye = n * n * d * d / (4 * (fast + d * d)) - fast
    matmul = n * n * d / (2 * math.sqrt(2) * math.sqrt(fast)) - fast - n * n
    best = max(trivial, saha_ye, matmul)
    assert best == trivial  # Saha-Ye: 2048²·64²/(4·36,992) − 32,896 = 83,208 < 4Nd = 524,288
    assert (c["tiles"]["block_m"], c["tiles"]["block_n"]) == (64, 128)
    assert c["io_elements"] == io_el and c["fast_memory_elements"] == fast
    assert c["io_bytes"] == 2 * (io_el - (2 * n + tc * 4 * n)) + 4 * (2 * n + tc * 4 * n)  # ℓ, m are fp32
    assert c["lower_bound_elements"]["binding"] == "trivial"
    assert c["lower_bound_elements"]["saha_ye_large"] == pytest.approx(saha_ye, rel=1e-12)
    assert c["lower_bound_elements"]["matmul_small"] == pytest.approx(matmul, rel=1e-12)
    assert c["ratio_io_to_lower_bound"] == pytest.approx(io_el / best, rel=1e-12)
