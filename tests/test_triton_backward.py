"""The Triton backward (kernels.attention_backward) and its schedule (schedule.backward_schedule).

Gradients against float64 torch autograd of naive attention; the schedule's NumPy reference against the same; the
kernel's memory accesses, as the interpreter executes them, against the schedule tensor by tensor; the schedule's
SM read bytes against a closed form written from the loop structure. Interpreter tests run at small sizes, fp32 and
fp16 (Triton 3.6's interpreter mishandles bf16 CPU tensors, see test_triton_interp.py).
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
from iosim.triton_kernels.schedule import backward_config, backward_schedule, instruction_path  # noqa: E402

K = pytest.importorskip("iosim.triton_kernels.kernels")

# (B, H, Hkv, Nq, Nkv, d, causal, (BLOCK_M, BLOCK_N)): ragged sizes, GQA, Nq < Nkv and Nq > Nkv (rows that see
# no key under the bottom-right causal mask)
CASES = [
    (1, 2, 2, 40, 33, 16, False, (16, 32)),
    (1, 4, 2, 50, 70, 32, True, (16, 32)),
    (2, 2, 1, 70, 40, 16, True, (16, 16)),
    (1, 1, 1, 64, 64, 16, True, (32, 16)),
]


def naive_grads(q, k, v, do, causal):
    """float64 autograd of softmax(QKᵀ/√d + bottom-right causal mask) V; rows that see no key: O = 0, grads 0."""
    q, k, v = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    nq, nkv = q.shape[2], k.shape[2]
    s = q @ k.repeat_interleave(g, 1).transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.arange(nkv)[None, :] > torch.arange(nq)[:, None] + nkv - nq, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    (p @ v.repeat_interleave(g, 1)).backward(do.double())
    return q.grad, k.grad, v.grad


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def inputs(B, H, Hk, Nq, Nkv, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, do = (torch.randn(B, H, Nq, d, generator=g).to(dtype) for _ in range(2))
    k, v = (torch.randn(B, Hk, Nkv, d, generator=g).to(dtype) for _ in range(2))
    return q, k, v, do


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_float64_autograd(case):
    B, H, Hk, Nq, Nkv, d, causal, tiles = case
    q, k, v, do = inputs(B, H, Hk, Nq, Nkv, d)
    o, lse = K.attention(q, k, v, causal=causal, return_lse=True, decode=False)
    got = K.attention_backward(q, k, v, o, lse, do, causal, config=KernelConfig(*tiles))
    for x, ref in zip(got, naive_grads(q, k, v, do, causal)):
        assert x.shape == ref.shape and x.dtype == q.dtype
        assert rel(x, ref) < 1e-5


def test_fp16_and_default_config():
    q, k, v, do = inputs(1, 2, 1, 48, 80, 64, torch.float16, seed=3)
    o, lse = K.attention(q, k, v, causal=True, return_lse=True, decode=False)
    got = K.backward_launch(q, k, v, o, lse, do, True)  # default config: 64×128 tiles, one ragged tile each way
    for x, ref in zip(got, naive_grads(q, k, v, do, True)):
        assert x.dtype == torch.float16 and rel(x, ref) < 1e-2


def test_autograd_wrapper():
    q, k, v, do = inputs(1, 2, 1, 30, 45, 16, seed=5)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    K.attention_autograd(q, k, v, causal=True).backward(do)
    for x, ref in zip((q.grad, k.grad, v.grad), naive_grads(q, k, v, do, True)):
        assert rel(x, ref) < 1e-5


@pytest.mark.parametrize("case", CASES)
def test_schedule_reference_gives_the_same_gradients(case):
    B, H, Hk, Nq, Nkv, d, causal, tiles = case
    q, k, v, do = (t.double() for t in inputs(B, H, Hk, Nq, Nkv, d, seed=1))
    o, lse = K.attention(q.float(), k.float(), v.float(), causal=causal, return_lse=True, decode=False)
    lse = torch.where(torch.isneginf(lse), torch.inf, lse)  # iosim.reference: +∞ for rows that see no key
    p = Problem(B, H, Hk, Nq, Nkv, d, causal=causal)
    sched = backward_schedule(p, backward_config(d, KernelConfig(*tiles)))
    res = reference.run(sched, {n: t.double().numpy() for n, t in
                                (("Q", q), ("K", k), ("V", v), ("O", o), ("dO", do), ("LSE", lse))})
    for name, ref in zip(("dQ", "dK", "dV"), naive_grads(q, k, v, do, causal)):
        assert rel(torch.from_numpy(res.tensors[name]), ref) < 1e-6  # O and LSE come from the fp32 forward
    assert reference.count_mismatches(res, count(sched)) == []


# --- the kernel's accesses, tallied in the interpreter, against the schedule --------------------------------------

ARG_TENSORS = {"Q": "Q", "K": "K", "V": "V", "O": "O", "DO": "dO", "LSE": "LSE", "DELTA": "D", "DQA": "dQ_accum",
               "DK": "dK", "DV": "dV", "DQ": "dQ"}  # kernel argument → schedule tensor


def tally_accesses(monkeypatch) -> dict:
    """Patch the interpreter so every load, store and atomic add of a launched kernel adds (masked-in elements ×
    element bytes) to tally[(kind, schedule tensor)], the tensor found from the launch's argument address ranges."""
    from triton.runtime import interpreter as it
    tally, ranges = {}, []
    orig_init = it.GridExecutor._init_args_hst

    def init(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig_init(self, args_dev, kwargs)
        named = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
        ranges[:] = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes(), ARG_TENSORS[n])
                     for n, t in named.items() if isinstance(t, torch.Tensor)]
        return args_hst, kwargs_hst

    def add(kind, ptrs, mask):
        m = np.broadcast_to(mask.data, ptrs.data.shape)
        if not m.any():
            return
        addr = int(ptrs.data[m].flat[0])
        name = next(n for base, size, n in ranges if base <= addr < base + size)
        key = (kind, name)
        tally[key] = tally.get(key, 0) + int(m.sum()) * (ptrs.get_element_ty().primitive_bitwidth // 8)

    def wrap(method, kind, mask_arg):
        orig = getattr(it.InterpreterBuilder, method)

        def f(self, ptrs, *args):
            add(kind, ptrs, args[mask_arg])
            return orig(self, ptrs, *args)
        monkeypatch.setattr(it.InterpreterBuilder, method, f)

    monkeypatch.setattr(it.GridExecutor, "_init_args_hst", init)
    wrap("create_masked_load", "load", 0)  # (ptrs, mask, other, …)
    wrap("create_masked_store", "write", 1)  # (ptrs, value, mask, …)
    orig_rmw = it.InterpreterBuilder.create_atomic_rmw

    def rmw(self, op, ptr, val, mask, sem, scope):
        add("atomic", ptr, mask)
        return orig_rmw(self, op, ptr, val, mask, sem, scope)
    monkeypatch.setattr(it.InterpreterBuilder, "create_atomic_rmw", rmw)
    return tally


@pytest.mark.parametrize("case", CASES[:3])
def test_kernel_accesses_equal_the_schedule(case, monkeypatch):
    B, H, Hk, Nq, Nkv, d, causal, tiles = case
    q, k, v, do = inputs(B, H, Hk, Nq, Nkv, d)
    o, lse = K.attention(q, k, v, causal=causal, return_lse=True, decode=False)
    tally = tally_accesses(monkeypatch)
    cfg = backward_config(d, KernelConfig(*tiles))
    K.attention_backward(q, k, v, o, lse, do, causal, config=cfg)
    c = count(backward_schedule(Problem(B, H, Hk, Nq, Nkv, d, "fp32", causal), cfg))
    want = {}
    for kc in c.kernels:
        for kind, table in (("load", kc.read_bytes), ("write", kc.write_bytes), ("atomic", kc.atomic_bytes)):
            for t, n in table.items():
                n -= kc.atomic_bytes.get(t, 0) if kind == "write" else 0
                if n:
                    want[(kind, t)] = want.get((kind, t), 0) + n
    assert tally == want


# --- SM read bytes: closed form from the loop structure -----------------------------------------------------------

def closed_form_read_bytes(p: Problem, bm: int, bn: int) -> tuple[int, int, int]:
    """(preprocess, main, convert) bytes read by the SMs, enumerated from the kernels' loops: preprocess O, dO;
    main K_j, V_j once per program plus, per query head of the group, Q_i, dO_i (d·e per row) and LSE_i, D_i (fp32)
    of every query block i from the first block with a row that sees key j·bn; convert dQ_accum (fp32)."""
    B, H, Hk, Nq, Nkv, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    rows = np.arange(Nq)
    main = B * Hk * 2 * Nkv * d * e
    for j in range(-(-Nkv // bn)):
        if p.causal:
            sees = rows + Nkv - Nq >= j * bn  # rows that see the block's first key
            first_block = rows[sees].min() // bm
        else:
            first_block = 0
        visited_rows = Nq - first_block * bm
        main += B * H * visited_rows * (2 * d * e + 2 * 4)
    return 2 * B * H * Nq * d * e, main, B * H * Nq * d * 4


@pytest.mark.parametrize("p,tiles", [
    (Problem(2, 32, 8, 4096, 4096, 128, causal=True), None),
    (Problem(2, 32, 8, 4096, 4096, 128, causal=False), None),
    (Problem(1, 8, 1, 1000, 3001, 64, causal=True), None),
    (Problem(3, 4, 4, 3001, 1000, 64, causal=True), (64, 64)),
    (Problem(1, 6, 2, 777, 777, 64, "fp32", causal=False), (32, 128)),
])
def test_sm_read_bytes_closed_form(p, tiles):
    cfg = backward_config(p.head_dim, KernelConfig(*tiles) if tiles else None)
    c = count(backward_schedule(p, cfg))
    assert tuple(k.sm_read_bytes for k in c.kernels) == closed_form_read_bytes(p, cfg.block_m, cfg.block_n)
    main = c.kernels[1]
    # every dQ partial goes out as an fp32 atomic, as many bytes as Q and dO rows read at 4 instead of 2·e bytes
    assert main.sm_atomic_bytes == main.read_bytes["Q"] * 4 // p.elem_bytes
    if not p.causal:
        tn = -(-p.seq_kv // cfg.block_n)
        assert main.sm_read_bytes == p.batch * (p.kv_heads * 2 * p.seq_kv + p.heads * tn * 2 * p.seq_q) * p.head_dim * \
            p.elem_bytes + p.batch * p.heads * tn * p.seq_q * 8


@pytest.mark.parametrize("d", [64, 128])
def test_default_configs_fit_h100_and_take_wgmma(d):
    cfg = backward_config(d)
    c = count(backward_schedule(Problem(1, 1, 1, 256, 256, d), cfg))
    assert c.kernels[1].sram_bytes == (2 * cfg.num_stages * cfg.block_m + 2 * cfg.block_n) * d * 2 <= 227 * 1024
    assert instruction_path("sm90", cfg.block_m, cfg.num_warps) == "wgmma"


def test_bad_inputs_raise_iosim_error():
    q, k, v, do = inputs(1, 2, 1, 20, 20, 16)
    o, lse = K.attention(q, k, v, return_lse=True, decode=False)
    with pytest.raises(IosimError, match="lse must be"):
        K.attention_backward(q, k, v, o, lse.double(), do)
    with pytest.raises(IosimError, match="do must be"):
        K.attention_backward(q, k, v, o, lse, do[..., :8])
    with pytest.raises(IosimError, match="fixed launch order"):
        K.attention_backward(q, k, v, o, lse, do, config=KernelConfig(16, 16, q_order="descending"))
    with pytest.raises(IosimError, match="block_m and config.block_n"):
        backward_schedule(Problem(1, 2, 1, 20, 20, 16), KernelConfig())
