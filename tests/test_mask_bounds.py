"""iosim.mask_bounds and `iosim bounds --mask`: the symbolic IO of sliding-window and document masks equals the
counter's count of the block_sparse schedule; expected values come from formulas and brute force written here."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest

from iosim import mask_bounds as mb
from iosim import symbolic as S
from iosim.cli import run as cli_run
from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.registry import get


def counted(mask, n, d, bm, bn, batch=1, heads=1, causal=True):
    """(bytes, elements) the counter gives for block_sparse with the mask's block mask."""
    p = Problem(batch, heads, heads, n, n, d, "bf16", causal)
    s = get("block_sparse").build(p, KernelConfig(block_m=bm, block_n=bn), None, block_mask=mb.block_mask(mask, n, bm, bn))
    c = count(s)
    return c.sm_read_bytes + c.sm_write_bytes, S.schedule_io_elements(s, c)


def env(n, w, d, bm, bn, batch=1, heads=1, m=None):
    e = {S.N: n, S.D: d, S.ELEM_BYTES: 2, S.BLOCK_M: bm, S.BLOCK_N: bn, S.BATCH: batch, S.HEADS: heads,
         mb.window_symbol(): w}
    return e | ({S.M: m} if m else {})


def brute_force_elements(visible: np.ndarray, d: int, bm: int, bn: int) -> int:
    """IO elements of FA2's loop over an elementwise mask [N, N], one head: Q and O once, fp32 LSE per row (counted
    as one element), and K, V for every (query block, KV block) tile holding a visible pair."""
    n = visible.shape[0]
    kv = 0
    for i in range(0, n, bm):
        for j in range(0, n, bn):
            if visible[i:i + bm, j:j + bn].any():
                kv += 2 * d * min(bn, n - j)
    return 2 * n * d + n + kv


def sliding_visible(n: int, w: int) -> np.ndarray:
    r, c = np.arange(n)[:, None], np.arange(n)[None, :]
    return (c <= r) & (c > r - w)


def document_visible(lengths, causal: bool) -> np.ndarray:
    doc = np.repeat(np.arange(len(lengths)), lengths)
    n = len(doc)
    same = doc[:, None] == doc[None, :]
    return same & (np.arange(n)[None, :] <= np.arange(n)[:, None]) if causal else same


ALIGNED = [(1024, 256, 64, 64), (1024, 128, 128, 64), (2048, 512, 64, 32), (512, 512, 64, 64), (512, 2048, 32, 32),
           (768, 192, 64, 16)]


@pytest.mark.parametrize("n,w,bm,bn", ALIGNED)
def test_sliding_closed_form_equals_counter_for_aligned_tiles(n, w, bm, bn):
    d = 32
    assert mb.closed_form_exact(mb.SlidingWindow(w), n, bm, bn)
    nbytes, elements = counted(mb.SlidingWindow(w), n, d, bm, bn, batch=2, heads=3)
    io = mb.sliding_io()
    assert S.evaluate(io.closed_elements, env(n, w, d, bm, bn, 2, 3)) == elements
    assert S.evaluate_int(io.exact_bytes, env(n, w, d, bm, bn, 2, 3)) == nbytes
    # by hand: query block i loads min((i+1)·B_r, W + B_r) keys of K and of V
    kv = sum(2 * d * min((i + 1) * bm, w + bm) for i in range(n // bm))
    assert elements == 6 * (2 * n * d + n + kv)
    assert elements == 6 * brute_force_elements(sliding_visible(n, w), d, bm, bn)


@pytest.mark.parametrize("n,w,bm,bn", [(1000, 300, 64, 32), (777, 50, 32, 64), (600, 100, 48, 80), (513, 700, 16, 16),
                                       (640, 64, 64, 1)])
def test_sliding_exact_sum_and_upper_bound_for_any_tiles(n, w, bm, bn):
    d = 16
    nbytes, elements = counted(mb.SlidingWindow(w), n, d, bm, bn)
    io = mb.sliding_io()
    assert S.evaluate_int(io.exact_bytes, env(n, w, d, bm, bn)) == nbytes
    assert S.evaluate_int(io.exact_elements, env(n, w, d, bm, bn)) == elements
    assert elements == brute_force_elements(sliding_visible(n, w), d, bm, bn)
    assert elements <= S.evaluate_int(io.upper_elements, env(n, w, d, bm, bn))


def test_sliding_window_with_fixed_w_matches_the_symbol():
    io, e = mb.sliding_io(300), env(1000, 300, 16, 64, 32)
    assert S.evaluate_int(io.exact_bytes, e) == S.evaluate_int(mb.sliding_io().exact_bytes, e)


def test_sliding_tile_rule_is_theta_n_w_d2_over_m():
    # B_r = M/(4d) in the closed form: 2Nd + N + d(2N − W) + 4d²W(2N − W)/M, worked by hand
    n, w, d, m = 4096, 1024, 64, 64 * 64 * 4
    expect = 2 * n * d + n + d * (2 * n - w) + 4 * d * d * w * (2 * n - w) // m
    assert S.evaluate(mb.sliding_io().tile_rule_elements, env(n, w, d, 0, 0, m=m)) == expect


@pytest.mark.parametrize("lengths,bm,bn", [((256, 512, 256), 64, 64), ((128,) * 8, 128, 64), ((1024,), 64, 32),
                                           ((192, 64, 256), 64, 16)])
@pytest.mark.parametrize("causal", [False, True])
def test_documents_equal_sum_of_dense_counts(lengths, bm, bn, causal):
    d = 32
    docs = mb.Documents(lengths, causal)
    n = sum(lengths)
    nbytes, elements = counted(docs, n, d, bm, bn, causal=causal)
    per_doc = 0
    for x in lengths:  # each document alone, dense flash2
        c = count(get("flash2").build(Problem(1, 1, 1, x, x, d, "bf16", causal), KernelConfig(block_m=bm, block_n=bn), None))
        per_doc += c.sm_read_bytes + c.sm_write_bytes
    assert nbytes == per_doc
    io = mb.documents_io(docs)
    assert S.evaluate_int(io.exact_bytes, env(n, 0, d, bm, bn)) == nbytes
    assert mb.closed_form_exact(docs, n, bm, bn)
    assert S.evaluate(io.closed_elements, env(n, 0, d, bm, bn)) == elements
    assert elements == brute_force_elements(document_visible(lengths, causal), d, bm, bn)


def test_documents_straddling_tiles_cost_more_than_the_sum():
    docs = mb.Documents((100, 156, 256))
    assert not mb.closed_form_exact(docs, 512, 64, 64)
    nbytes, elements = counted(docs, 512, 32, 64, 64, causal=False)
    assert elements == brute_force_elements(document_visible(docs.lengths, False), 32, 64, 64)
    assert nbytes > S.evaluate_int(mb.documents_io(docs).exact_bytes, env(512, 0, 32, 64, 64))


@pytest.mark.parametrize("mask", [mb.SlidingWindow(1), mb.SlidingWindow(37), mb.SlidingWindow(300),
                                  mb.SlidingWindow(5000), mb.Documents((100, 200, 212)),
                                  mb.Documents((100, 200, 212), True)])
def test_visible_pairs_by_brute_force(mask):
    vis = sliding_visible(512, mask.window) if isinstance(mask, mb.SlidingWindow) else \
        document_visible(mask.lengths, mask.causal)
    assert mb.visible_pairs(mask, 512) == int(vis.sum())


@pytest.mark.parametrize("n", [512, 2048])
@pytest.mark.parametrize("w", [16, 500, 2048])
@pytest.mark.parametrize("d,bm,bn", [(32, 64, 64), (64, 128, 64), (16, 32, 16), (128, 16, 16)])
def test_lower_bound_below_counter(n, w, d, bm, bn):
    mask = mb.SlidingWindow(w)
    p = Problem(1, 2, 2, n, n, d, "bf16", True)
    s = get("block_sparse").build(p, KernelConfig(block_m=bm, block_n=bn), None, block_mask=mb.block_mask(mask, n, bm, bn))
    elements = S.schedule_io_elements(s, count(s))
    for m in (S.schedule_fast_memory_elements(s), d * d, 4 * d):  # the schedule's M, and smaller caches
        lb = mb.lower_bounds(mask, n, d, m, heads=2)
        assert lb.best <= elements
        # the printed expression is the same large-cache number: P·d²/(4(M + d²)) − M, P per head × 2 heads
        pairs = 2 * (n * min(w, n) - min(w, n) * (min(w, n) - 1) // 2)
        assert lb.saha_ye_large == pytest.approx(pairs * d * d / (4 * (m + d * d)) - m)
        assert float(S.evaluate(mb.sliding_io().lower_elements, env(n, w, d, bm, bn, heads=2, m=m))) == \
            pytest.approx(lb.saha_ye_large)


def cli(*argv) -> str:
    out = io.StringIO()
    assert cli_run(["bounds", *argv], out) == 0
    return out.getvalue()


def test_cli_prints_symbolic_and_counter_numbers():
    text = cli("--mask", "sliding:1024", "--seq-q", "8192", "--head-dim", "64", "--sram-bytes", "65536")
    sym = int(re.search(r"symbolic IO = ([\d,]+) bytes", text).group(1).replace(",", ""))
    eng = int(re.search(r"counter IO  = ([\d,]+) bytes", text).group(1).replace(",", ""))
    bm, bn = map(int, re.search(r"tiles (\d+)x(\d+)", text).groups())
    assert (bm, bn) == (64, 64)  # FA2's 128×128 for d = 64 needs 80 KiB; halved to fit 64 KiB
    n, w, d = 8192, 1024, 64
    assert sym == eng == 2 * 2 * n * d + 4 * n + 2 * d * (w + bm) * (2 * n - w) // bm
    assert "ratio counter / symbolic = 1.0000" in text and "Θ(N·d + N·W·d²/M)" in text


def test_cli_documents_json_and_symbolic_only():
    import json
    info = json.loads(cli("--mask", "document:4096,2048,2048", "--causal", "--seq-q", "8192", "--head-dim", "64",
                          "--block-m", "64", "--block-n", "64", "--json"))
    c = info["concrete"]
    assert c["symbolic_io_bytes"] == c["engine_io_bytes"] and c["aligned"]
    assert "Sum" in cli("--mask", "sliding:4096")  # no sizes: the expressions only


@pytest.mark.parametrize("argv,msg", [
    (["--mask", "window:4"], "bad --mask"), (["--mask", "sliding:x"], "bad --mask"),
    (["--mask", "sliding:0"], "positive"), (["--mask", "document:4,0"], "positive"),
    (["--mask", "document:100,100", "--seq-q", "300"], "sum to 200"),
    (["--mask", "sliding:64", "--seq-q", "256", "--seq-kv", "512"], "self-attention"),
    (["--mask", "sliding:64", "--algorithm", "flash1"], "FA2's loop order")])
def test_bad_mask_input(argv, msg):
    with pytest.raises(IosimError, match=msg) as err:
        cli(*argv)
    assert "\n" not in str(err.value)


def test_import_does_not_load_sympy():
    code = "import sys, iosim.mask_bounds; assert 'sympy' not in sys.modules, 'sympy loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
