"""flash2's local window (FA2's window_size_left/right): KV block ranges from FA2's formulas worked here by hand, the
NumPy reference against naive masked attention, FA2's window normalisation, and bad windows."""

import numpy as np
import pytest

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get


def naive(q, k, v, left, right):
    """softmax(QKᵀ/√d) V with key c visible to row r iff r + Nk − Nq − left ≤ c ≤ r + Nk − Nq + right (−1: open)."""
    nq, nk = q.shape[2], k.shape[2]
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    delta = np.arange(nk)[None, :] - (np.arange(nq)[:, None] + nk - nq)
    vis = ((left < 0) | (delta >= -left)) & ((right < 0) | (delta <= right))
    s = np.where(vis, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isinf(m), 0, m))
    l_ = p.sum(-1, keepdims=True)
    return np.where(l_ > 0, p @ v / np.where(l_ > 0, l_, 1), 0)


def blocks_by_hand(nq, nk, bm, bn, left, right):
    """Visited KV blocks per query block, FA2 compute_attn_1rowblock: n_min = max(0, (m·bm + nk − nq − left) // bn),
    n_max = min(⌈nk/bn⌉, ⌈((m+1)·bm + nk − nq + right)/bn⌉), written out with Python integers."""
    out = []
    for m in range(-(-nq // bm)):
        n_min = max(0, (m * bm + nk - nq - left) // bn)
        n_max = min(-(-nk // bn), -(-((m + 1) * bm + nk - nq + right) // bn))
        out.append(max(0, n_max - n_min))
    return out


@pytest.mark.parametrize("nq,nk,left,right", [(1000, 1000, 100, 0), (500, 1200, 256, 64), (1200, 500, 30, 30)])
def test_window_kv_reads_equal_fa2_block_ranges(nq, nk, left, right):
    p = Problem(1, 2, 2, nq, nk, 64)
    bm, bn = 128, 64
    s = get("flash2").build(p, KernelConfig(bm, bn), window=(left, right))
    blocks = blocks_by_hand(nq, nk, bm, bn, left, right)
    # K bytes: every visited block's valid keys × d × 2 B × heads (ragged last block of nk counted exactly)
    per_block = [min(bn, nk - j * bn) for j in range(-(-nk // bn))]
    keys = 0
    for m, nblk in enumerate(blocks):
        n_min = max(0, (m * bm + nk - nq - left) // bn)
        keys += sum(per_block[n_min:n_min + nblk])
    c = count(s)
    assert c.tensor_bytes("read")["K"] == keys * 64 * 2 * 2
    # Q is loaded only by CTAs with a nonempty range (FA2's early exit), O and LSE are always written
    q_rows = sum(min(bm, nq - m * bm) for m, nblk in enumerate(blocks) if nblk > 0)
    assert c.tensor_bytes("read")["Q"] == q_rows * 64 * 2 * 2
    assert c.tensor_bytes("write")["O"] == nq * 64 * 2 * 2


def test_window_band_loop_masks_only_partial_blocks():
    """Square 512, tiles 64×64, window (128, 0): query block m visits blocks m−2 … m (clipped at 0). Block m−2 is cut
    by the left bound (row 64m+63 sees from key 64m−65, inside block m−2), m−1 is whole, m is on the diagonal: 2
    masked + 1 whole for m ≥ 2; m = 1: blocks 0 (whole: row 127 sees key ≥ −1) and 1 (diagonal); m = 0: diagonal."""
    p = Problem(1, 1, 1, 512, 512, 64)
    s = get("flash2").build(p, KernelConfig(64, 64, band_loop=True), window=(128, 0))
    masked_tiles = 1 + 1 + 2 * 6
    visited = 1 + 2 + 3 * 6
    c = count(s)
    base = (4 * 64 * 64 + (64 + 4) * 64) * visited + (64 + 1) * 512  # per visited tile + finalize per row
    assert c.other_flops == base + 2 * 64 * 64 * masked_tiles  # MASK_FLOPS = 2 per element of a masked tile


@pytest.mark.parametrize("nq,nk,window,causal", [
    (70, 300, (40, 10), False), (300, 70, (20, 5), False), (100, 100, (30, -1), True),
    (37, 300, (5, 5), False), (90, 90, (-1, 17), False), (64, 64, (0, 0), False)])
@pytest.mark.parametrize("band,order", [(False, "descending"), (True, "ascending")])
def test_window_reference_equals_naive(nq, nk, window, causal, band, order):
    rng = np.random.default_rng(nq + nk)
    q, k, v = (rng.standard_normal((1, 2, n, 16)) for n in (nq, nk, nk))
    p = Problem(1, 2, 2, nq, nk, 16, causal=causal)
    s = get("flash2").build(p, KernelConfig(32, 16, band_loop=band, kv_order=order), window=window)
    res = run(s, {"Q": q, "K": k, "V": v})
    left, right = window
    right = 0 if causal else right  # mha_fwd: causal sets window_size_right = 0
    # set_params_fprop: in a local window a −1 bound becomes seqlen_k (nk) — wider than any key, so open either way
    assert np.abs(res.tensors["O"] - naive(q, k, v, left, right)).max() < 1e-10
    assert count_mismatches(res, count(s)) == []


def test_causal_window_is_causal():
    p = Problem(1, 2, 2, 300, 300, 64)
    a = count(get("flash2").build(p, KernelConfig(), window=(-1, 0)))
    b = count(get("flash2").build(Problem(1, 2, 2, 300, 300, 64, causal=True), KernelConfig()))
    assert (a.sm_read_bytes, a.flops) == (b.sm_read_bytes, b.flops)
    wide = count(get("flash2").build(p, KernelConfig(), window=(300, 300)))  # bounds ≥ seq_kv are dropped: dense
    dense = count(get("flash2").build(p, KernelConfig()))
    assert (wide.sm_read_bytes, wide.flops) == (dense.sm_read_bytes, dense.flops)


@pytest.mark.parametrize("window", [(5,), (-2, 0), (1.5, 0), "10,0", (True, 0)])
def test_bad_window_is_one_line_error(window):
    with pytest.raises(IosimError) as e:
        get("flash2").build(Problem(1, 1, 1, 64, 64, 64), KernelConfig(), window=window)
    assert "\n" not in str(e.value) and "window" in str(e.value)
