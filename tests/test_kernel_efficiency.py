"""KERNEL_EFFICIENCY: a per-kernel fitted factor divides that kernel's SM-local times, and only that kernel's."""

import pytest

from iosim import cost
from iosim.counts import count
from iosim.hwprofile import load_hardware
from iosim.problem import Problem
from iosim.triton_kernels.schedule import kernel_schedule, launch_config


def _time(sched, hw):
    return cost.estimate(sched, count(sched), hw, None, None, path=None, prefetch=False, regs_per_thread=None)


def test_persistent_forward_sm_local_times_divided_by_its_efficiency(monkeypatch):
    hw = load_hardware("h100")
    p = Problem(1, 16, 16, 4096, 4096, 128, "bf16", False)
    kc = launch_config(128, False)
    sched = kernel_schedule(p, kc, persistent=True, num_workers=264)
    with_eff = _time(sched, hw).kernels[0]
    monkeypatch.setattr(cost, "KERNEL_EFFICIENCY", {})
    without = _time(sched, hw).kernels[0]
    eff = 0.773   # cost.KERNEL_EFFICIENCY, refit in session 11
    assert with_eff.sm_scale == pytest.approx(without.sm_scale / eff)
    assert with_eff.tensor_s == without.tensor_s               # raw resource times unchanged
    # compute-bound here (tensor), so the body grows by the factor (less the fixed fill, which is not scaled)
    assert with_eff.body_s - with_eff.fill_s == pytest.approx((without.body_s - without.fill_s) / eff, rel=1e-9)
    assert any("KERNEL_EFFICIENCY" in n for n in with_eff.notes)


def test_other_kernels_untouched(monkeypatch):
    hw = load_hardware("h100")
    p = Problem(1, 16, 16, 4096, 4096, 128, "bf16", True)
    sched = kernel_schedule(p, launch_config(128, True))
    a = _time(sched, hw).kernels[0]
    monkeypatch.setattr(cost, "KERNEL_EFFICIENCY", {})
    b = _time(sched, hw).kernels[0]
    assert a.time_s == b.time_s and a.sm_scale == b.sm_scale
