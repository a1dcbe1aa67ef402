"""Index gathers of scattered rows priced at whole 32-B L2 sectors (iosim.cost.gather_sector_bytes): rows ×
⌈row_bytes/32⌉·32 at the SM↔L2 level; contiguous tiles and rows that are whole sectors cost nothing extra."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.cost import estimate, gather_sector_bytes, l2_bandwidth
from iosim.counts import count
from iosim.hwprofile import load_hardware
from iosim.models.sparse.common import gather_kernel
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem
from iosim.schedule import Schedule, TensorSpec

HW = load_hardware("h100")


def _gather_schedule(b, h, n, d, e, rows_per_cta=64):
    src = TensorSpec("K", (b, h, n, d), e, "input")
    dst = TensorSpec("Kp", (b, h, n, d), e, "output")
    perm = np.stack([np.random.default_rng(1).permutation(n) for _ in range(b * h)]).reshape(b, h, n)
    k = gather_kernel("gather", src, dst, "perm", rows_per_cta=rows_per_cta)
    p = Problem(b, h, h, n, n, d, {2: "fp16", 4: "fp32"}[e])
    return Schedule("gather_test", p, KernelConfig(), {"K": src, "Kp": dst}, (k,), tables={"perm": perm})


def test_d8_fp16_rows_are_priced_one_sector():
    """d = 8 fp16: each gathered row is 16 B and moves a whole 32-B sector; the contiguous copy it writes does not."""
    b, h, n = 2, 3, 1000  # 1000 rows: not a multiple of the 64-row CTA tile
    s = _gather_schedule(b, h, n, 8, 2)
    rows = b * h * n
    counted, priced = gather_sector_bytes(s, s.kernels[0], HW.l2_sector_bytes)
    assert (counted, priced) == (rows * 16, rows * 32)
    c = count(s)
    assert c.sm_read_bytes == rows * 16 and c.sm_write_bytes == rows * 16  # the counts contract is unchanged
    t = estimate(s, c, HW).kernels[0]
    assert t.sector_pad_bytes == rows * 16
    assert t.l2_s == pytest.approx((rows * 16 + rows * 16 + rows * 16) / l2_bandwidth(HW), rel=1e-12)
    assert any("32-B sectors" in note for note in t.notes)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 300), d=st.integers(1, 80),
       e=st.sampled_from([2, 4]), rows_per_cta=st.sampled_from([16, 64, 128]))
def test_gathered_rows_cost_whole_sectors(b, h, n, d, e, rows_per_cta):
    s = _gather_schedule(b, h, n, d, e, rows_per_cta)
    counted, priced = gather_sector_bytes(s, s.kernels[0], 32)
    rows = b * h * n
    assert counted == rows * d * e
    assert priced == rows * math.ceil(d * e / 32) * 32
    t = estimate(s, count(s), HW).kernels[0]
    assert t.sector_pad_bytes == priced - counted
    assert t.l2_s * l2_bandwidth(HW) == pytest.approx(counted + rows * d * e + priced - counted, rel=1e-12)


@pytest.mark.parametrize("d", [16, 64, 128])
def test_whole_sector_rows_and_contiguous_kernels_cost_nothing_extra(d):
    s = _gather_schedule(1, 2, 257, d, 2)
    counted, priced = gather_sector_bytes(s, s.kernels[0], 32)
    assert counted == priced == 2 * 257 * d * 2
    pr = predict(HW, Problem(1, 2, 2, 1000, 1000, 8, "fp16"), KernelConfig(64, 64), "flash2", l2=False)
    assert all(k.sector_pad_bytes == 0 for k in pr.time.kernels)  # d = 8 rows, but read as contiguous tiles
