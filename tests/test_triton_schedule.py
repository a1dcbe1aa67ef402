"""The schedule of our Triton kernels (iosim.triton_kernels.schedule): counts against independent enumerations of
what the kernels visit. Needs neither torch nor triton."""

from __future__ import annotations

import numpy as np
import pytest

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models import flash2
from iosim.problem import KernelConfig, Problem
from iosim.triton_kernels.schedule import decode_geometry, decode_splits, kernel_mask, kernel_schedule, use_decode


def test_dense_is_flash2():
    p = Problem(2, 8, 2, 1000, 1537, 128, causal=True)
    cfg = KernelConfig(128, 64, 8, 3, kv_order="descending", q_order="descending")
    a, b = count(kernel_schedule(p, cfg)), count(flash2.build(p, cfg))
    assert a.sm_read_bytes == b.sm_read_bytes and a.sm_write_bytes == b.sm_write_bytes and a.flops == b.flops


def _kernel_visits(p: Problem, dense: np.ndarray, sbm: int, sbn: int, bm: int, bn: int) -> int:
    """Bytes read by kernels._fwd_kernel's sparse loop, enumerated the way the kernel walks it."""
    e, d = p.elem_bytes, p.head_dim
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    total = 0
    for b in range(p.batch):
        for h in range(p.heads):
            for i in range(tm):
                total += min(bm, p.seq_q - i * bm) * d * e  # Q tile
                srow = i * bm // sbm
                lim = min((i + 1) * bm, p.seq_q) - 1 + p.seq_kv - p.seq_q
                for jb in np.nonzero(dense[b % dense.shape[0], h % dense.shape[1], srow])[0]:
                    for u in range(sbn // bn):
                        j = jb * (sbn // bn) + u
                        if j >= tn or (p.causal and j * bn > lim):
                            continue
                        total += 2 * min(bn, p.seq_kv - j * bn) * d * e  # K and V tiles
    return total


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nkv", [(1000, 1000), (700, 1300), (1300, 700)])
def test_block_sparse_matches_kernel_walk(causal, nq, nkv):
    rng = np.random.default_rng(0)
    p = Problem(2, 4, 2, nq, nkv, 64, causal=causal)
    sbm, sbn, bm, bn = 256, 128, 128, 64
    dense = rng.random((2, 4, -(-nq // sbm), -(-nkv // sbn))) < 0.4
    got = count(kernel_schedule(p, KernelConfig(bm, bn), block_mask=(dense, sbm, sbn))).sm_read_bytes
    assert got == _kernel_visits(p, dense, sbm, sbn, bm, bn)


def test_block_sparse_all_listed_equals_dense():
    p = Problem(1, 2, 2, 1024, 1024, 128, causal=False)
    dense = np.ones((8, 8), dtype=bool)
    sp_counts = count(kernel_schedule(p, KernelConfig(128, 64), block_mask=(dense, 128, 128)))
    assert sp_counts.sm_read_bytes == count(flash2.build(p, KernelConfig(128, 64))).sm_read_bytes


def test_kernel_mask_rejects_bad_blocks():
    p = Problem(1, 1, 1, 256, 256, 64)
    with pytest.raises(IosimError, match="multiples"):
        kernel_mask((np.ones((2, 2), bool), 128, 96), p, 128, 64)
    with pytest.raises(IosimError, match="too few"):
        kernel_mask((np.ones((1, 1), bool), 128, 128), p, 128, 64)


@pytest.mark.parametrize("nq,causal", [(1, False), (3, True)])
def test_decode_counts(nq, causal):
    p = Problem(2, 32, 8, nq, 5000, 128, causal=causal)
    bn, splits = 64, 7
    M, bm, bps, S = decode_geometry(p, bn, splits)
    assert M == 4 * nq and bm == 16 and S == -(-(-(-5000 // bn)) // bps)
    c = count(kernel_schedule(p, KernelConfig(bm, bn), decode=True, num_splits=splits))
    e, d = 2, 128
    q = S * p.batch * p.heads * nq * d * e  # every split program loads its G·Nq query rows
    kv = 2 * p.batch * p.kv_heads * 5000 * d * e  # each KV head read once, whatever the group size
    combine = p.batch * p.kv_heads * M * S * (4 + 4 * d)
    assert c.sm_read_bytes == q + kv + combine
    parts = p.batch * p.kv_heads * S * M * (4 * d + 4)
    assert c.sm_write_bytes == parts + p.batch * p.heads * nq * (d * e + 4)


def test_decode_dispatch_rules():
    assert use_decode(1, 32, 8, 8192)
    assert not use_decode(128, 32, 8, 8192)
    assert not use_decode(1, 32, 8, 8192, block_mask=object())
    assert decode_splits(1, 8, 65536, 64) == 33
    assert decode_splits(64, 8, 100, 64) == 1
