"""Triton kernels in the interpreter (TRITON_INTERPRET=1, CPU torch tensors) against float64 naive attention.

Small sizes only: the interpreter runs a program at a time in NumPy. fp32/fp16 inputs only: Triton 3.6's
interpreter mishandles bf16 CPU tensors (garbage outputs; the same kernels pass in bf16 on the H100). GPU checks (bf16, the real compiler, TMA on
sm90) live in benchmarks/gpu_attention.py and the ``gpu`` tests at the bottom, which skip without CUDA.
"""

from __future__ import annotations

import math
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit runs: before the kernel module is imported
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from iosim.errors import IosimError  # noqa: E402
from iosim.problem import KernelConfig  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
attn = pytest.importorskip("iosim.triton_kernels.kernels")


def naive(q, k, v, causal=False, mask=None, scale=None):
    """float64 softmax(QKᵀ·scale + masks)V; bottom-right causal; rows that see no key give 0."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    B, H, Nq, D = q.shape
    g = H // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1.0 / math.sqrt(D))
    Nkv = k.shape[2]
    allowed = torch.ones(B, H, Nq, Nkv, dtype=torch.bool)
    if causal:
        r = torch.arange(Nq)[:, None]
        c = torch.arange(Nkv)[None, :]
        allowed &= c <= r + Nkv - Nq
    if mask is not None:
        allowed &= mask.cpu().expand(B, H, Nq, Nkv)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    o = (p @ v) / torch.where(l == 0, torch.ones_like(l), l)
    lse = torch.where(l[..., 0] == 0, torch.full_like(l[..., 0], float("-inf")), torch.log(l[..., 0]) + m[..., 0])
    return o, lse


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)


CASES = [
    # B, H, Hkv, Nq, Nkv, D, causal, (bm, bn), kv_order, grid_order
    (1, 2, 2, 64, 64, 16, False, (16, 16), "ascending", ("m", "b", "h")),
    (2, 2, 1, 50, 70, 32, True, (16, 32), "ascending", ("m", "b", "h")),   # MQA, ragged, Nq < Nkv
    (1, 4, 2, 70, 40, 16, True, (32, 16), "descending", ("h", "m", "b")),  # GQA, Nq > Nkv: empty rows
    (1, 2, 2, 33, 33, 64, True, (16, 16), "descending", ("m", "b", "h")),
    (1, 1, 1, 17, 100, 16, False, (16, 32), "ascending", ("b", "h", "m")),
]


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64(case, tma):
    B, H, Hkv, Nq, Nkv, D, causal, (bm, bn), order, grid = case
    q, k, v = rand(B, H, Nq, D, seed=1), rand(B, Hkv, Nkv, D, seed=2), rand(B, Hkv, Nkv, D, seed=3)
    cfg = attn.TritonConfig(KernelConfig(bm, bn, 4, 2, grid, order), use_tma=tma)
    o, lse = attn.attention(q, k, v, causal=causal, config=cfg, return_lse=True, decode=False)
    ro, rlse = naive(q, k, v, causal)
    assert torch.isfinite(o).all()
    assert rel(o, ro) < 1e-5
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (lse[fin].double() - rlse[fin]).abs().max().item() < 1e-4


def test_fp16_inputs():
    q, k, v = (rand(1, 2, 48, 32, dtype=torch.float16, seed=s) for s in (4, 5, 6))
    o = attn.attention(q, k, v, causal=True, config=KernelConfig(16, 16), decode=False)
    assert o.dtype == torch.float16
    assert rel(o, naive(q, k, v, True)[0]) < 5e-3


@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse(causal):
    B, H, Nq, Nkv, D = 1, 2, 64, 96, 16
    q, k, v = rand(B, H, Nq, D, seed=7), rand(B, H, Nkv, D, seed=8), rand(B, H, Nkv, D, seed=9)
    g = torch.Generator().manual_seed(10)
    dense = torch.rand(B, H, 2, 3, generator=g) < 0.5
    dense[0, 0, 0] = False  # a query block with no KV block at all: O = 0
    bmask = attn.BlockMask.from_dense(dense, 32, 32)
    assert torch.equal(bmask.to_dense(), dense)
    o = attn.attention(q, k, v, causal=causal, block_mask=bmask, config=KernelConfig(16, 16, kv_order="descending"))
    ro, _ = naive(q, k, v, causal, bmask.dense_mask(Nq, Nkv))
    assert rel(o, ro) < 1e-5
    assert o[0, 0, :32].abs().max().item() == 0.0


@pytest.mark.parametrize("causal", [False, True])
def test_split_kv_decode(causal):
    B, H, Hkv, Nq, Nkv, D = 2, 4, 2, 3, 300, 32  # G·Nq = 6 rows per KV head, ragged Nkv
    q, k, v = rand(B, H, Nq, D, seed=11), rand(B, Hkv, Nkv, D, seed=12), rand(B, Hkv, Nkv, D, seed=13)
    assert attn.use_decode(Nq, H, Hkv, Nkv, None)
    cfg = attn.TritonConfig(KernelConfig(16, 32), num_splits=4)
    o, lse = attn.attention(q, k, v, causal=causal, config=cfg, return_lse=True)
    ro, rlse = naive(q, k, v, causal)
    assert rel(o, ro) < 1e-5
    assert (lse.double() - rlse).abs().max().item() < 1e-4


def test_bad_input_raises_iosim_error():
    q = rand(1, 3, 16, 16)
    k = rand(1, 2, 16, 16)
    with pytest.raises(IosimError, match="divide"):
        attn.attention(q, k, k)
    with pytest.raises(IosimError, match="head_dim"):
        attn.attention(rand(1, 1, 16, 24), rand(1, 1, 16, 24), rand(1, 1, 16, 24))
    bm = attn.BlockMask.from_dense(torch.ones(1, 1), 16, 16)
    with pytest.raises(IosimError, match="multiples"):
        attn.attention(rand(1, 1, 16, 16), rand(1, 1, 16, 16), rand(1, 1, 16, 16), block_mask=bm,
                       config=KernelConfig(32, 32))


def test_auto_config_falls_back_to_default_in_interpreter():
    q, k, v = (rand(1, 2, 40, 16, seed=s) for s in (14, 15, 16))
    o = attn.attention(q, k, v, causal=True, config="auto", decode=False)
    assert rel(o, naive(q, k, v, True)[0]) < 1e-5
    with pytest.raises(IosimError, match="auto"):
        attn.attention(q, k, v, config="fastest")


def test_import_iosim_needs_no_torch():
    import subprocess
    import sys
    code = ("import sys, iosim, iosim.triton_kernels, iosim.cli_validate; "
            "assert 'torch' not in sys.modules and 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.skipif(INTERP or not torch.cuda.is_available(), reason="needs CUDA (and TRITON_INTERPRET unset)")
def test_gpu_bf16_matches_float64():
    for causal in (False, True):
        q, k, v = (torch.randn(2, 4, 1000, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        o = attn.attention(q, k, v, causal=causal)
        assert rel(o.cpu(), naive(q, k, v, causal)[0]) < 1e-2
