"""Store(atomic=True): an fp32 atomic add (RED) into a tile — counted as SM → L2 writes (and atomic bytes), never as
SM reads; executed by the NumPy reference as an add into the array."""

import numpy as np
import pytest

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.schedule import Buffer, GridAxis, Kernel, Load, Schedule, Span, Store, TensorSpec, Tile, full, point, var

P, W = 3, 64  # programs, row width (fp32: 256 B a row, two 128-B lines)


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
    np.testing.assert_allclose(res.tensors["Y"], y0 + x.sum(axis=0, keepdims=True), rtol=0, atol=1e-13)
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


def test_atomic_trace_is_an_l2_read_then_a_write_and_not_an_sm_read():
    from iosim.memory.layout import layout
    from iosim.memory.trace import expand_kernel
    s = _schedule()
    tr = expand_kernel(s, s.kernels[0], layout(s))
    # per program: load X row, RMW read of Y, write of Y at one tick; the read is ordered before the write
    for pid in range(P):
        mine = tr.prog == pid
        kinds = sorted(zip(tr.order[mine], tr.write[mine], tr.rmw[mine]))
        assert [(w, r) for _, w, r in kinds] == [(False, False), (False, True), (True, False)]
        assert len(set(tr.tick[mine])) == 1
    assert tr.read_bytes == P * W * 4 and tr.write_bytes == P * W * 4


@pytest.mark.parametrize("atomic", [True, False])
def test_atomic_to_a_line_not_in_l2_reads_it_from_dram(atomic):
    from iosim.hwprofile import load_hardware
    from iosim.memory import simulate
    s = _schedule()
    k = s.kernels[0]
    store = Store("x", k.body[1].tile, atomic=atomic)
    # only the store: Y (256 B, whole 64-B DRAM fetch groups) was never touched, so it is not in the L2
    s1 = Schedule(s.algorithm, s.problem, s.config, s.tensors, (Kernel(k.name, k.grid, k.buffers, (store,)),))
    r = simulate(s1, load_hardware("h100"), stride=1)
    y_bytes = W * 4
    # an atomic fetches Y's sectors from DRAM once (later atomics hit); a plain full-sector store fetches nothing
    assert r.dram_read_bytes == (y_bytes if atomic else 0)
    assert r.dram_write_bytes == y_bytes


def test_cost_charges_the_atomic_read_modify_write_at_the_l2():
    from iosim.cost import L2_ATOMIC_EFFICIENCY, estimate
    from iosim.hwprofile import load_hardware
    hw = load_hardware("h100")
    s = _schedule()
    k = s.kernels[0]
    plain = Schedule(s.algorithm, s.problem, s.config, s.tensors,
                     (Kernel(k.name, k.grid, k.buffers, (k.body[0], Store("x", k.body[1].tile))),))
    ta, tp = estimate(s, count(s), hw).kernels[0], estimate(plain, count(plain), hw).kernels[0]
    red_bytes = P * W * 4
    assert ta.l2_s - tp.l2_s == pytest.approx(red_bytes / (hw.l2_bandwidth_bytes_per_s * L2_ATOMIC_EFFICIENCY.value))
    # compulsory DRAM: the atomic's L2 fetches Y (W·4 B) once; a plain store reads nothing of Y
    assert ta.dram_read_bytes - tp.dram_read_bytes == W * 4
