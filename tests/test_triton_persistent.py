"""Issue 21: the persistent Triton forward and the stream-K decode, each against its schedule, counter for counter.

Outputs of the interpreted kernels (fp32) and of the schedules' NumPy reference against float64 naive attention; the
interpreter's per-tensor load/store tallies against ``iosim.counts`` of ``persistent_schedule`` /
``streamk_decode_schedule``; every work item done exactly once (schedule tables, and the addresses the kernels touch);
SM read bytes against closed forms written here from the loop structure.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit runs: before the kernel module is imported
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from iosim import reference  # noqa: E402
from iosim.counts import count  # noqa: E402
from iosim.errors import IosimError  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402
from iosim.triton_kernels.schedule import (kernel_schedule, launch_config, persistent_items,  # noqa: E402
                                           persistent_schedule, persistent_workers, streamk_decode_schedule,
                                           streamk_segments, streamk_workers)

K = pytest.importorskip("iosim.triton_kernels.kernels")

# (B, H, Hkv, Nq, Nkv, d, causal, (BLOCK_M, BLOCK_N), workers, order): ragged, GQA/MQA, Nq > Nkv (empty rows)
PCASES = [
    (2, 4, 2, 70, 50, 16, True, (16, 32), 3, "lpt"),
    (1, 2, 1, 33, 100, 16, False, (16, 32), 4, "rr"),
    (1, 4, 2, 40, 70, 32, True, (16, 16), 7, "rr"),
    (2, 2, 2, 50, 30, 16, True, (32, 16), 5, "lpt"),
]
# (B, H, Hkv, Nq, Nkv, d, causal, BLOCK_N, workers): T = B·Hkv·⌈Nkv/BLOCK_N⌉ tiles, W not dividing T, so workers'
# ranges cross (b, KV head) boundaries and pairs are split over several workers
SCASES = [
    (2, 4, 2, 3, 300, 16, True, 32, 3),  # T = 40: 14, 13, 13 tiles; G·Nq = 6 packed rows, causal by position
    (1, 8, 2, 1, 100, 16, False, 32, 3),  # T = 8: workers of 3, 3, 2 tiles (worker 1 spans both pairs)
    (2, 2, 2, 5, 77, 16, True, 16, 7),  # G = 1, Nq = 5, ragged last tile
    (2, 4, 1, 2, 650, 16, True, 16, 37),  # pairs over 17 and 21 workers: the combine merges 3 chunks of 8 (the last ragged)
]


def naive(q, k, v, causal):
    """float64 softmax(QKᵀ/√d + bottom-right causal mask) V and its logsumexp; rows that see no key: O = 0."""
    q, k, v = (torch.as_tensor(t).double() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    nq, nkv = q.shape[2], k.shape[2]
    s = q @ k.repeat_interleave(g, 1).transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.arange(nkv)[None, :] > torch.arange(nq)[:, None] + nkv - nq, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v.repeat_interleave(g, 1), torch.logsumexp(s, -1)


def inputs(B, H, Hk, Nq, Nkv, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, Nq, d, generator=g), torch.randn(B, Hk, Nkv, d, generator=g), \
        torch.randn(B, Hk, Nkv, d, generator=g)


def close(o, lse, ro, rlse):
    assert (o.double() - ro).abs().max().item() < 1e-5
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin) and (lse[fin].double() - rlse[fin]).abs().max().item() < 1e-4


# --- outputs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", PCASES)
def test_persistent_forward_matches_float64(case):
    B, H, Hk, Nq, Nkv, d, causal, tiles, W, order = case
    q, k, v = inputs(B, H, Hk, Nq, Nkv, d)
    cfg = K.TritonConfig(KernelConfig(*tiles, kv_order="descending" if W == 5 else "ascending"), use_tma=W == 3)
    o, lse = K.attention(q, k, v, causal=causal, config=cfg, return_lse=True, persistent=True, num_workers=W,
                         order=order)
    close(o, lse, *naive(q, k, v, causal))


@pytest.mark.parametrize("case", SCASES)
def test_streamk_decode_matches_float64(case):
    B, H, Hk, Nq, Nkv, d, causal, bn, W = case
    q, k, v = inputs(B, H, Hk, Nq, Nkv, d, seed=1)
    o, lse = K.attention(q, k, v, causal=causal, config=K.TritonConfig(KernelConfig(16, bn), use_tma=not causal),
                         return_lse=True, decode="streamk", num_workers=W)
    close(o, lse, *naive(q, k, v, causal))


def test_defaults_run():
    q, k, v = inputs(1, 4, 1, 2, 260, 32, seed=2)  # default workers: stream-K min(2·132, ⌈T/2⌉), persistent: items
    for kw in ({"decode": "streamk"}, {"persistent": True}):
        close(*K.attention(q, k, v, causal=True, return_lse=True, **kw), *naive(q, k, v, True))


@pytest.mark.parametrize("case", PCASES[:2])
def test_persistent_reference_equals_naive(case):
    B, H, Hk, Nq, Nkv, d, causal, tiles, W, order = case
    q, k, v = (t.double().numpy() for t in inputs(B, H, Hk, Nq, Nkv, d, seed=3))
    s = persistent_schedule(Problem(B, H, Hk, Nq, Nkv, d, "fp32", causal), launch_config(d, causal,
                            KernelConfig(*tiles)), W, order)
    res = reference.run(s, {"Q": q, "K": k, "V": v})
    assert np.abs(res.tensors["O"] - naive(q, k, v, causal)[0].numpy()).max() < 1e-12
    assert reference.count_mismatches(res, count(s)) == []


@pytest.mark.parametrize("case", SCASES)
def test_streamk_reference_equals_naive(case):
    B, H, Hk, Nq, Nkv, d, causal, bn, W = case
    q, k, v = (t.double().numpy() for t in inputs(B, H, Hk, Nq, Nkv, d, seed=4))
    s = streamk_decode_schedule(Problem(B, H, Hk, Nq, Nkv, d, "fp32", causal), KernelConfig(16, bn), W)
    assert (s.tables["seg_num"] > 1).any() and (s.tables["pair_num"] > 1).any()  # segments span output tiles
    res = reference.run(s, {"Q": q.reshape(B, Hk, -1, d), "K": k, "V": v})  # Q, O: [B, Hkv, G·Nq, d] views
    o = res.tensors["O"].reshape(B, H, Nq, d)
    assert np.abs(o - naive(q, k, v, causal)[0].numpy()).max() < 1e-12
    assert reference.count_mismatches(res, count(s)) == []


# --- the kernels' accesses in the interpreter against the schedules ----------------------------------------------

ARG_TENSORS = {"Q": "Q", "K": "K", "V": "V", "O": "O", "LSE": "LSE", "OP": "O_part", "LP": "LSE_part"}


def tally_accesses(monkeypatch):
    """(tally, addresses): bytes of masked-in loads/stores per (kind, schedule tensor) of every launched kernel, and
    the element addresses of every access per (kind, tensor) (tests/test_triton_backward.py's technique)."""
    from triton.runtime import interpreter as it
    tally, addrs, ranges = {}, {}, []
    orig_init = it.GridExecutor._init_args_hst

    def init(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig_init(self, args_dev, kwargs)
        named = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
        ranges[:] = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes(), ARG_TENSORS[n])
                     for n, t in named.items() if isinstance(t, torch.Tensor)]
        return args_hst, kwargs_hst

    def wrap(method, kind, mask_arg):
        orig = getattr(it.InterpreterBuilder, method)

        def f(self, ptrs, *args):
            m = np.broadcast_to(args[mask_arg].data, ptrs.data.shape)
            if m.any():
                a = ptrs.data[m]
                base, _, name = next(r for r in ranges if r[0] <= int(a.flat[0]) < r[0] + r[1])
                tally[(kind, name)] = tally.get((kind, name), 0) + a.size * (ptrs.get_element_ty().primitive_bitwidth // 8)
                addrs.setdefault((kind, name), []).append(a.astype(np.int64) - base)
            return orig(self, ptrs, *args)
        monkeypatch.setattr(it.InterpreterBuilder, method, f)

    monkeypatch.setattr(it.GridExecutor, "_init_args_hst", init)
    wrap("create_masked_load", "load", 0)
    wrap("create_masked_store", "write", 1)
    return tally, addrs


def want(sched) -> dict:
    out = {}
    for kc in count(sched).kernels:
        for kind, table in (("load", kc.read_bytes), ("write", kc.write_bytes)):
            for t, n in table.items():
                if n:
                    out[(kind, t)] = out.get((kind, t), 0) + n
    return out


def once(addrs, key, nbytes, elem):
    """Every element of a tensor of nbytes accessed exactly once."""
    a = np.sort(np.concatenate(addrs[key]))
    assert np.array_equal(a, np.arange(0, nbytes, elem))


@pytest.mark.parametrize("case", PCASES[:3])
def test_persistent_accesses_equal_the_schedule(case, monkeypatch):
    B, H, Hk, Nq, Nkv, d, causal, tiles, W, order = case
    q, k, v = inputs(B, H, Hk, Nq, Nkv, d)
    tally, addrs = tally_accesses(monkeypatch)
    kc = launch_config(d, causal, KernelConfig(*tiles))
    K.attention(q, k, v, causal=causal, config=K.TritonConfig(kc, use_tma=False), persistent=True, num_workers=W,
                order=order)
    assert tally == want(persistent_schedule(Problem(B, H, Hk, Nq, Nkv, d, "fp32", causal), kc, W, order))
    once(addrs, ("write", "O"), q.numel() * 4, 4)  # every (query block, b, h) item done exactly once
    once(addrs, ("write", "LSE"), B * H * Nq * 4, 4)


@pytest.mark.parametrize("case", SCASES)
def test_streamk_accesses_equal_the_schedule(case, monkeypatch):
    B, H, Hk, Nq, Nkv, d, causal, bn, W = case
    q, k, v = inputs(B, H, Hk, Nq, Nkv, d)
    tally, addrs = tally_accesses(monkeypatch)
    K.attention(q, k, v, causal=causal, config=K.TritonConfig(KernelConfig(16, bn), use_tma=False),
                decode="streamk", num_workers=W)
    assert {t for _, t in tally} == {"Q", "K", "V", "O_part", "LSE_part", "O", "LSE"}
    assert tally == want(streamk_decode_schedule(Problem(B, H, Hk, Nq, Nkv, d, "fp32", causal), KernelConfig(16, bn), W))
    for t in ("K", "V"):  # the stream: every KV tile of every pair read by exactly one worker
        once(addrs, ("load", t), k.numel() * 4, 4)
    once(addrs, ("write", "O"), q.numel() * 4, 4)


# --- work items and the stream-K split ----------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["rr", "lpt"])
@pytest.mark.parametrize("W", [1, 5, 12, 40])
def test_every_item_once_static_round_robin(order, W):
    p = Problem(2, 3, 1, 100, 100, 16, causal=True)
    tm = -(-100 // 32)
    s = persistent_schedule(p, launch_config(16, True, KernelConfig(32, 32)), W, order)
    t = s.tables
    items = [(t["item_m"][w, x], t["item_b"][w, x], t["item_h"][w, x]) for w in range(W) for x in range(t["num_items"][w])]
    assert sorted(items) == sorted((i, b, h) for i in range(tm) for b in range(2) for h in range(3))
    i, b, h = persistent_items(p, 32, order)
    for w in range(W):  # worker w takes u = w, w + W, …
        n = t["num_items"][w]
        assert n == len(range(w, tm * 6, W))
        assert list(t["item_m"][w, :n]) == list(i[w::W])
        if order == "lpt":  # longest KV loop (highest query block) first
            assert list(i[w::W]) == sorted(i[w::W], reverse=True)
    assert list(i[:6]) == ([0, 1, 2, 3, 0, 1] if order == "rr" else [3] * 6)


@pytest.mark.parametrize("T_shape,W", [((2, 2, 100), 3), ((1, 3, 64), 7), ((3, 1, 16), 2), ((1, 1, 48), 5)])
def test_streamk_split_is_even_and_covers_each_tile_once(T_shape, W):
    B, Hk, Nkv = T_shape
    bn, tn = 16, -(-Nkv // 16)
    Wt, kmax, smax, t = streamk_segments(Problem(B, Hk, Hk, 1, Nkv, 16), bn, W)
    T = B * Hk * tn
    covered, sizes = [], []
    for w in range(Wt):
        n = 0
        for x in range(t["seg_num"][w]):
            lo, hi = t["seg_lo"][w, x], t["seg_hi"][w, x]
            assert 0 <= lo < hi <= tn
            covered += [(t["seg_b"][w, x] * Hk + t["seg_hk"][w, x]) * tn + j for j in range(lo, hi)]
            n += hi - lo
        sizes.append(n)
    assert covered == list(range(T))  # consecutive, each tile once, in stream order
    assert sorted(set(sizes)) == sorted({T // Wt, -(-T // Wt)}) and sizes == sorted(sizes, reverse=True)
    # the combine's slots: pair π's partials are exactly the segments of π
    for b in range(B):
        for hk in range(Hk):
            slots = {(t["pair_w"][b, hk, s], t["pair_k"][b, hk, s]) for s in range(t["pair_num"][b, hk])}
            assert slots == {(w, x) for w in range(Wt) for x in range(t["seg_num"][w])
                             if (t["seg_b"][w, x], t["seg_hk"][w, x]) == (b, hk)}


# --- SM read bytes: closed forms -----------------------------------------------------------------------------------

def persistent_read_bytes(p: Problem, bm: int, bn: int) -> int:
    """Q once per item; K and V of the KV blocks query block i visits (causal: up to ⌈((i+1)·bm + Nkv − Nq)/bn⌉)."""
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    keys = 0
    for i in range(tm):
        stop = min(max(-(-((i + 1) * bm + p.seq_kv - p.seq_q) // bn), 0), tn) if p.causal else tn
        keys += min(stop * bn, p.seq_kv)
    return p.batch * p.heads * (p.seq_q + 2 * keys) * p.head_dim * p.elem_bytes


def streamk_read_bytes(p: Problem, bn: int, W: int) -> tuple[int, int]:
    """(decode, combine): segments = cuts in (0, T) (worker starts ∪ pair starts) + 1; the decode kernel reads K and
    V once and the M packed Q rows per segment; the combine reads each segment's M partial rows, (d + 1)·4 bytes."""
    tn = -(-p.seq_kv // bn)
    T = p.batch * p.kv_heads * tn
    W = min(W, T)
    starts = {w * (T // W) + min(w, T % W) for w in range(1, W)}
    segs = len(starts | {x * tn for x in range(1, p.batch * p.kv_heads)}) + 1
    M = p.heads // p.kv_heads * p.seq_q
    decode = (2 * p.batch * p.kv_heads * p.seq_kv + segs * M) * p.head_dim * p.elem_bytes
    return decode, segs * M * (p.head_dim + 1) * 4


@pytest.mark.parametrize("p", [Problem(2, 32, 8, 4096, 4096, 128, causal=True), Problem(1, 16, 16, 3000, 5000, 64),
                               Problem(3, 8, 2, 1000, 777, 64, causal=True)])
def test_persistent_sm_read_bytes_closed_form(p):
    kc = launch_config(p.head_dim, p.causal)
    W = persistent_workers(p, kc)
    want_bytes = persistent_read_bytes(p, kc.block_m, kc.block_n)
    for w, order in ((W, "lpt"), (W, "rr"), (97, "rr")):
        c = count(persistent_schedule(p, kc, w, order))
        assert c.sm_read_bytes == want_bytes
        assert c.sm_write_bytes == p.batch * p.heads * p.seq_q * (p.head_dim * p.elem_bytes + 4)
    assert count(kernel_schedule(p, kc, decode=False)).sm_read_bytes == want_bytes  # = the non-persistent grid's


@pytest.mark.parametrize("p,W", [(Problem(4, 32, 8, 1, 32768, 128), None), (Problem(1, 32, 8, 4, 100_000, 128, causal=True), 100),
                                 (Problem(3, 6, 2, 2, 5000, 64), 7)])
def test_streamk_sm_read_bytes_closed_form(p, W):
    bn = launch_config(p.head_dim, p.causal).block_n
    W = W or streamk_workers(p, bn)
    c = count(streamk_decode_schedule(p, KernelConfig(16, bn), W))
    assert tuple(k.sm_read_bytes for k in c.kernels) == streamk_read_bytes(p, bn, W)
    assert c.kernels[0].sm_write_bytes == c.kernels[1].sm_read_bytes  # every partial written once, read once


def test_default_workers_and_dispatch():
    p = Problem(2, 32, 8, 4096, 4096, 128, causal=True)
    kc = launch_config(128, True)
    # 128×64, 4 warps, 2 stages: one CTA per H100 SM — 131,104 B of shared memory measured (Q, two K/V stages and the
    # O staging tile of the TMA store; schedule.PERSISTENT_SMEM_MEASURED), not the two the K/V buffers alone allow
    assert persistent_workers(p, kc) == 132
    assert persistent_workers(Problem(1, 2, 2, 100, 100, 128), kc) == 2 * 1  # at most one worker per item
    assert streamk_workers(Problem(1, 8, 8, 1, 640, 64), 64) == 40 and streamk_workers(p, 64) == 264
    s = kernel_schedule(p, kc, persistent=True, num_workers=9)
    assert s.kernels[0].persistent and s.kernels[0].num_programs == 9 and s.tables["num_items"].sum() == 32 * 64
    assert [k.name for k in kernel_schedule(Problem(1, 8, 2, 1, 4096, 64), KernelConfig(16, 64), decode="streamk").kernels] \
        == ["iosim_streamk_decode", "iosim_streamk_combine"]


def test_bad_inputs_raise_iosim_error():
    q, k, v = inputs(1, 2, 1, 20, 20, 16)
    for kw, msg in (({"persistent": True, "order": "fifo"}, "order="), ({"persistent": True, "num_workers": 0}, "num_workers"),
                    ({"persistent": True, "decode": "streamk"}, "persistent=True"), ({"decode": "lean"}, "decode="),
                    ({"decode": "streamk", "num_workers": -1}, "num_workers"),
                    ({"persistent": True, "config": KernelConfig(16, 16, q_order="descending")}, "persistent kernel")):
        with pytest.raises(IosimError, match=msg):
            K.attention(q, k, v, **kw)
    with pytest.raises(IosimError, match="block_m and config.block_n"):
        persistent_schedule(Problem(1, 2, 1, 20, 20, 16), KernelConfig(), 2)
