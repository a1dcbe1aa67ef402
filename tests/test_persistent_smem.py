"""The persistent Triton forward's shared memory (measured) and what it does to occupancy and the L2 timeline."""

import numpy as np

from iosim.hwprofile import load_hardware
from iosim.occupancy import occupancy
from iosim.problem import Problem
from iosim.triton_kernels.schedule import (PERSISTENT_SMEM_MEASURED, kernel_schedule, launch_config,
                                           persistent_smem_bytes, persistent_workers)


def test_measured_values_and_the_formula_behind_them():
    assert persistent_smem_bytes(128, 64, 128, 2, 2) == 131_104 == PERSISTENT_SMEM_MEASURED[(128, 64, 128, 2)]
    assert persistent_smem_bytes(64, 128, 64, 2, 2) == 82_944
    # elsewhere: Q tile + stages × (K + V) tiles + the O staging tile + 32 B of barriers, derived by hand here
    assert persistent_smem_bytes(128, 128, 64, 2, 3) == 128 * 64 * 2 + 3 * 2 * 128 * 64 * 2 + 128 * 64 * 2 + 32
    assert persistent_smem_bytes(128, 64, 128, 4, 2) == 128 * 128 * 4 * 2 + 2 * 2 * 64 * 128 * 4 + 32


def test_one_worker_per_sm_at_d128_two_at_d64_on_the_h100():
    hw = load_hardware("h100")
    for d, per_sm in ((128, 1), (64, 2)):
        p = Problem(1, 16, 16, 8192, 8192, d, "bf16", False)
        kc = launch_config(d, False)
        k = kernel_schedule(p, kc, persistent=True, num_workers=264).kernels[0]
        assert occupancy(k, hw, kc.num_stages).ctas_per_sm == per_sm
        assert persistent_workers(p, kc, 132, hw) == 132 * per_sm


def test_workers_beyond_the_resident_slots_start_when_a_slot_frees():
    """264 workers at d = 128 on 132 one-CTA SMs (the grid the launcher chose before the correction): the second
    132 start only when a first-wave worker has finished all its items, as the measured per-item trace shows."""
    from iosim.memory.scheduler import timeline
    from iosim.memory.trace import kernel_durations
    hw = load_hardware("h100")
    p = Problem(1, 16, 16, 4096, 4096, 128, "bf16", False)
    kc = launch_config(128, False)
    s = kernel_schedule(p, kc, persistent=True, num_workers=264)
    k = s.kernels[0]
    occ = occupancy(k, hw, kc.num_stages)
    dur = kernel_durations(s, k)
    tl = timeline(dur, occ.slots)
    first = tl.start[:132]
    assert occ.slots == 132 and np.all(first == 0)
    assert np.all(tl.start[132:] >= dur[:132].min())   # every second-wave worker waits for a whole first-wave one
