"""Store(atomic=True): an fp32 atomic add (RED) into a tile — counted as SM → L2 writes (and atomic bytes), never as
SM reads; executed by the NumPy reference as an add into the array."""

import numpy as np
import pytest

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.schedule import Buffer, GridAxis, Kernel, Load, Schedule, Span, Store, TensorSpec, Tile, full, point, var

P, W = 3, 40  # programs, row width (fp32: 160 B a row)


def _schedule(y_elem_bytes: int = 4) -> Schedule:
    """P programs; program p loads row p of X and atomically adds it into the one row of Y."""
    pid = var("pid")
    tensors = {"X": TensorSpec("X", (P, W), 4, "input"), "Y": TensorSpec("Y", (1, W), y_elem_bytes, "output")}
    k = Kernel("red", (GridAxis("m", pid, P),), (Buffer("x", (W,), 4, space="reg"),), (
        Load("x", Tile("X", (point(pid, P), full(W)))),
        Store("x", Tile("Y", (Span(0, 1, 1), full(W))), atomic=True),
    ))
    return Schedule("atomic_test", Problem(1, 1, 1, 16, 16, 16), KernelConfig(), tensors, (k,))


def test_atomic_store_adds_into_memory_and_counts_as_writes_not_reads():
    rng = np.random.default_rng(0)
    x, y0 = rng.standard_normal((P, W)), rng.standard_normal((1, W))
    s = _schedule()
    res = run(s, {"X": x, "Y": y0})
    np.testing.assert_allclose(res.tensors["Y"], y0 + x.sum(axis=0, keepdims=True), rtol=1e-14)
    c = count(s)
    k = c.kernels[0]
    assert dict(k.read_bytes) == {"X": P * W * 4}  # the RED returns nothing: Y is never read by the SM
    assert dict(k.write_bytes) == {"Y": P * W * 4} and dict(k.atomic_bytes) == {"Y": P * W * 4}
    assert (c.sm_read_bytes, c.sm_write_bytes, c.sm_atomic_bytes) == (P * W * 4, P * W * 4, P * W * 4)
    assert count_mismatches(res, c) == []


def test_plain_store_has_no_atomic_bytes():
    s = _schedule()
    k = s.kernels[0]
    plain = Kernel(k.name, k.grid, k.buffers, (k.body[0], Store("x", k.body[1].tile)))
    c = count(Schedule(s.algorithm, s.problem, s.config, s.tensors, (plain,)))
    assert c.sm_atomic_bytes == 0 and c.sm_write_bytes == P * W * 4


def test_atomic_store_into_a_non_fp32_tensor_is_refused():
    s = _schedule(y_elem_bytes=2)
    with pytest.raises(IosimError, match="atomic store into Y, which is not fp32"):
        count(s)
    with pytest.raises(IosimError, match="atomic store into Y, which is not fp32"):
        run(s, {"X": np.zeros((P, W)), "Y": np.zeros((1, W))})
