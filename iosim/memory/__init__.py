"""The memory model: a schedule's SM ↔ L2 traffic streamed through the shared L2 to DRAM.

One entry point, :func:`simulate` (``hierarchy.simulate_schedule``): schedule + hardware (+ an optional
:class:`L2Geometry` override) → :class:`HierarchyResult` (DRAM read/write bytes per kernel, L2 hits, occupancy,
whether the result is exact or set-sampled). Inside, data flows one way:

* ``layout``    — where each tensor lives in the address space;
* ``trace``     — a kernel's CTAs as byte ranges (tile loads and stores), from the schedule;
* ``scheduler`` — the CTA timeline: launch order, resident slots, waves, drift (uses ``iosim.occupancy``);
* ``l2``        — the sectored, partitioned L2 (geometry from the profile, policies, hash, way spread):
                  where L2 hits and misses are counted; ``l2_jit`` is its compiled per-access core
                  (numba; ``IOSIM_L2_ENGINE=numpy`` forces the NumPy loops);
* ``l2stream``  — the same L2 fed in chunks with its state carried over;
* ``hierarchy`` — ties them together (``simulate_schedule``), streaming each kernel's trace window by window of
                  the CTA timeline through one ``L2Stream`` (bounded memory at any size).
"""

from iosim.memory.hierarchy import HierarchyResult, KernelL2, simulate_schedule as simulate
from iosim.memory.l2 import L2Geometry, L2Result

__all__ = ["simulate", "HierarchyResult", "KernelL2", "L2Geometry", "L2Result"]
