"""The L2-coupled timeline of statically scheduled persistent kernels (``iosim.memory.coupled``, issue 21).

* with kappa = 0 it is the fixed lockstep timeline: same DRAM sectors, hits and end time as the streamed fixed
  timeline (``simulate_schedule`` of the same kernel without ``static_items``, no drift), over random shapes that are
  not multiples of the tiles and worker counts above and below the resident slots;
* with the whole working set inside the L2, DRAM reads are the compulsory Q + K + V sectors whatever kappa;
* the persistent Triton forward takes this timeline in ``simulate_schedule`` (and the dynamic-scheduler presets do not).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from iosim.hwprofile import load_hardware
from iosim.memory.coupled import stream_coupled, tick_sectors
from iosim.memory.hierarchy import _Sink, simulate_schedule, stream_kernel
from iosim.memory.l2 import L2Geometry
from iosim.memory.layout import layout
from iosim.memory.scheduler import timeline, work_items
from iosim.memory.trace import kernel_durations
from iosim.occupancy import occupancy
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem
from iosim.triton_kernels.schedule import launch_config, persistent_schedule

HW = load_hardware("h100")


def _small_geom(sets: int = 64, ways: int = 4) -> L2Geometry:
    return L2Geometry(size_bytes=sets * ways * 128, line_bytes=128, sector_bytes=32, ways=ways)


def _coupled(s, geom, kappa, slots):
    sink = _Sink(geom, 1, 1)
    end = stream_coupled(s, s.kernels[0], layout(s), 0, HW.sm_count, sink, slots, kappa=kappa)
    return sink.result(), end


@settings(max_examples=12, deadline=None)
@given(n=st.integers(70, 300), heads=st.integers(1, 3), causal=st.booleans(), order=st.sampled_from(["rr", "lpt"]),
       workers=st.integers(1, 9), slots=st.integers(1, 6))
def test_kappa_zero_is_the_fixed_lockstep_timeline(n, heads, causal, order, workers, slots):
    p = Problem(1, heads, heads, n, n, 16, "fp32", causal)
    s = persistent_schedule(p, launch_config(16, causal, KernelConfig(32, 32)), workers, order)
    geom = _small_geom()
    res, end = _coupled(s, geom, 0.0, slots)
    fixed = dataclasses.replace(s, kernels=(dataclasses.replace(s.kernels[0], static_items=False),))
    # the fixed timeline with the same slots: its first-free heap (scheduler.start_times), integer ticks, no drift
    k = fixed.kernels[0]
    tl = timeline(kernel_durations(fixed, k), slots, False, 0.0, 0.0, work_items(fixed, k))
    sink = _Sink(geom, 1, 1)
    stream_kernel(fixed, k, layout(fixed), tl, 0, HW.sm_count, sink, 10_000)
    ref = sink.result()
    assert (res.dram_read_sectors, res.hits, res.accesses) == (ref.dram_read_sectors, ref.hits, ref.accesses)
    assert end == tl.end


def test_inside_the_l2_dram_reads_are_compulsory_whatever_kappa():
    p = Problem(1, 2, 2, 333, 333, 32, "bf16", True)
    s = persistent_schedule(p, launch_config(32, True, KernelConfig(64, 64)), 5, "rr")
    geom = L2Geometry.from_hardware(HW)          # 50 MiB ≫ 0.1 MiB of Q, K, V
    qkv_sectors = 3 * (2 * 333 * 32 * 2) // geom.sector_bytes
    for kappa in (0.0, 1.0, 5.0):
        res, _ = _coupled(s, geom, kappa, 4)
        assert res.dram_read_sectors == qkv_sectors


def test_misses_slow_the_workers_down():
    # an L2 of 8 lines: nearly every load misses, so each tick costs about 1 + kappa and the kernel runs longer
    p = Problem(1, 2, 2, 256, 256, 16, "fp32", False)
    s = persistent_schedule(p, launch_config(16, False, KernelConfig(32, 32)), 4, "rr")
    geom = _small_geom(sets=2, ways=4)
    _, end0 = _coupled(s, geom, 0.0, 4)
    _, end1 = _coupled(s, geom, 1.0, 4)
    dur = kernel_durations(s, s.kernels[0])
    assert end0 == dur.max()
    assert 1.5 * end0 < end1 <= 2.0 * end0 + 1


def test_tick_sectors_are_the_k_and_v_tiles():
    s = persistent_schedule(Problem(1, 1, 1, 512, 512, 128, "bf16", True), launch_config(128, True), 3, "rr")
    kc = launch_config(128, True)
    assert tick_sectors(s.kernels[0]) == 2 * kc.block_n * 128 * 2 / 32


def test_simulate_schedule_runs_the_persistent_forward_on_the_coupled_timeline():
    p = Problem(1, 4, 4, 2048, 2048, 64, "bf16", True)
    s = persistent_schedule(p, launch_config(64, True), 16, "lpt")
    assert s.kernels[0].static_items and s.kernels[0].persistent
    geom = _small_geom(sets=256, ways=8)
    res = simulate_schedule(s, HW, geom, stride=1)
    sink = _Sink(geom, 1, 1)
    end = stream_coupled(s, s.kernels[0], layout(s), 0, HW.sm_count, sink,
                         occupancy(s.kernels[0], HW, s.config.num_stages, None).slots)
    assert res.kernels[0].ticks == end
    assert res.l2.dram_read_sectors == sink.result().dram_read_sectors
    # deterministic
    assert simulate_schedule(s, HW, geom, stride=1).l2.dram_read_sectors == res.l2.dram_read_sectors
    assert np.isfinite(end) and end >= kernel_durations(s, s.kernels[0]).max()


def test_dynamic_schedulers_keep_the_fixed_timeline():
    # cuDNN and FA3 hand each next tile to the first free CTA (models/persistent.dynamic_assign): no static_items
    p = Problem(1, 4, 4, 2048, 2048, 128, "bf16", True)
    for kernel in ("cudnn", "fa3"):
        ks = predict(HW, p, None, kernel=kernel, l2=False).schedule.kernels
        assert any(k.persistent for k in ks) and not any(k.static_items for k in ks)
