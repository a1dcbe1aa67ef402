"""SRAM (per CTA) → L2 (shared) → DRAM for a whole schedule: layout, trace, CTA scheduler and L2 put together.

The SRAM level is the schedule itself: every Load/Store is SM ↔ L2 traffic (``iosim.counts``). Kernels run in launch
order, each after the previous one ends, over one L2 whose contents carry over between launches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from iosim.memory.coupled import Coupling, simulate_coupled
from iosim.errors import IosimError
from iosim.memory.l2 import L2Geometry, L2Result, RunTrace, simulate_owned
from iosim.memory.layout import layout
from iosim.occupancy import Occupancy, occupancy
from iosim.schedule import Schedule
from iosim.memory.scheduler import is_layered_convoy, order_trace
from iosim.memory.trace import expand_kernel

DEFAULT_JITTER = 0.15
"""The drift of descending KV walks (``DRIFT_BY_KV_ORDER``), also the fallback for schedules without a KV order.
Spread of per-CTA speeds (``iosim.memory.scheduler.cta_speeds``): calibrated, not measured. Applied only to kernels whose
CTAs have unequal trip counts (causal, block-sparse): CTAs with identical loops move as a convoy
(``iosim.memory.scheduler.order_trace``; drift there was checked and is wrong: non-causal N=49152, d=128 gives 19× Q+K+V
with drift, 1.95× measured). History: 0.25 from session 1 (8 H100 FA2 runs, L2 without way spread) to session 5; the
coupled timeline (``iosim.memory.coupled``, through ``coupling=``) was fitted on set 1 of issue 9 and did not beat the
drift (reports/validation/h100/coupled_timeline/README.md)."""


DRIFT_BY_KV_ORDER = {"descending": DEFAULT_JITTER, "ascending": 0.03}
"""Drift σ by the direction of the KV walk (``KernelConfig.kv_order``), calibrated jointly with the L2 way spread of
the H100/H200 profiles (``l2_way_spread`` = 4; issue 9, session 6). Descending (FA2's CUDA kernel): each causal CTA
starts at its own diagonal, on K/V no other CTA has just read, and walks down into what its neighbours read before
it, so any spread between CTAs moves the reuse distances. Ascending (FlexAttention, Triton kernels): every CTA of a
head starts at block 0 and re-reads the prefix the others read; a CTA that falls behind hits in L2 and catches up,
so the spread that survives is small. Chosen on the L2-bound runs (measured DRAM > 1.15 × Q+K+V) of H100 sets 1–2
and H200 sets 1–3 (median |err| / worst, H100 ; H200). Descending, way spread 4, on the 23 causal SDPA runs of a
probe over {0.1, 0.15, 0.2} (scanned with a hash of the set group in place of the committed golden-ratio sequence)
→ 0.15 (5.7% / −23.1% ; 6.2% / −24.4%; 0.1: 11.0% / −24.2% ; 17.9% / −36.2%; 0.2: 11.7% / +39.1% ; 11.6% /
−19.8%). Ascending, on all 42 Flex runs, over {0, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2} → 0.03 (1.3% / +33.2% ; 2.2% /
−26.9%; 0: 1.5% / +51.2% ; 2.9% / +14.1%; 0.05: +42.9% worst on the H100; 0.2: +122.7%). H200 sets 4 and 5
(measured before and after this choice) are held out. Applies only to kernels whose CTAs have unequal trip counts."""


def drift_for(schedule: Schedule) -> float:
    """The default drift σ of a schedule: ``DRIFT_BY_KV_ORDER`` of its KV walk direction."""
    return DRIFT_BY_KV_ORDER.get(getattr(schedule.config, "kv_order", "ascending"), DEFAULT_JITTER)


DEFAULT_PHASES = 1
"""Co-resident phases averaged over by default (1: the lockstep convoy alone). The option (``phases`` > 1,
``iosim.memory.scheduler.layer_offsets``): when an SM holds R ≥ 2 CTAs of a kernel whose CTAs all run the same loop
(non-causal FA2, Flex d=64), the r-th resident CTAs of all SMs form a convoy of their own, and nothing on the GPU fixes
how far apart these R convoys run (a lead persists: each finished CTA is replaced at once in its own slot). With
``phases`` = Q the model averages DRAM traffic over offsets spread evenly over [0, D/R) (D the CTA's duration), at the
midpoints of Q equal intervals — the expected traffic under a uniformly unknown offset; no fitted number.
Evaluated with the LRU profiles on the 13 L2-bound such runs of issue 9 (session 4, Q = 4): it fixes the case that
motivated it (SDPA flash non-causal 128K d128, 2 CTAs/SM: −29.5% → +2.2% on the H100, −30.0% → 0.0% on the H200) but
overshoots 96K d128 (H200 −8.2% → +22.4%) and lowers GQA runs (sdpa 24/8 24K: −0.3% → −14.7%); L2-bound medians:
H100 set 1 5.4% → 4.0%, held-out set 2 12.5% → 14.0%, H200 7.9% → 9.9%. Not the default for that reason; it costs Q
simulations of such kernels (reports/validation/h100/README.md, issue 9 session 4)."""


def mean_result(results: list[L2Result]) -> L2Result:
    """The element-wise mean (rounded to whole lines/sectors) of L2 results of the same trace's kernels."""
    if len(results) == 1:
        return results[0]
    n = len(results)

    def m(vals) -> int:
        return int(round(sum(vals) / n))

    fields = ("accesses", "hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors")
    kw = {f: m(getattr(r, f) for r in results) for f in fields}
    per_kernel = tuple(tuple(m(col) for col in zip(*ks)) for ks in zip(*(r.per_kernel for r in results)))
    return replace(results[0], per_kernel=per_kernel, exact=all(r.exact for r in results), **kw)


@dataclass(frozen=True)
class KernelL2:
    name: str
    occupancy: Occupancy
    ticks: float               # length of the kernel's timeline (waves × steps)
    dram_read_bytes: int
    dram_write_bytes: int
    line_accesses: int
    l2_hits: int

    @property
    def l2_hit_rate(self) -> float:
        return self.l2_hits / self.line_accesses if self.line_accesses else 0.0


@dataclass(frozen=True)
class HierarchyResult:
    geometry: L2Geometry
    l2: L2Result
    kernels: tuple[KernelL2, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def dram_read_bytes(self) -> int:
        return self.l2.dram_read_sectors * self.geometry.sector_bytes

    @property
    def dram_write_bytes(self) -> int:
        return self.l2.dram_write_sectors * self.geometry.sector_bytes


def build_trace(schedule: Schedule, hw, regs_per_thread: int | None = None, persistent: bool = False,
                jitter: float = 0.0, disorder: float = 0.0, phase: float = 0.0):
    """The time-ordered access trace of all kernels, with each kernel's occupancy, timeline length and whether the
    co-resident phase applies to it (``iosim.memory.scheduler.is_layered_convoy``)."""
    lay = layout(schedule)
    cfg = schedule.config
    parts, info = [], []
    for ki, k in enumerate(schedule.kernels):
        tr = expand_kernel(schedule, k, lay)
        occ = occupancy(k, hw, getattr(cfg, "num_stages", 1), regs_per_thread)
        perm, sm, end = order_trace(tr, occ.slots, hw.sm_count, persistent, jitter, disorder, phase)
        layered = disorder <= 0 and is_layered_convoy(tr.duration, occ.slots, hw.sm_count, persistent)
        parts.append((tr.addr[perm], tr.nbytes[perm], tr.write[perm], sm.astype(np.int16),
                      np.full(len(perm), ki, dtype=np.int8 if len(schedule.kernels) < 128 else np.int64)))
        info.append((k.name, occ, end, layered))
        del tr, perm, sm
    if len(parts) == 1:
        cat = list(parts[0])
    else:
        cat = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in range(5)]
    del parts
    return RunTrace(cat[0], cat[1], cat[2].astype(bool), cat[3], cat[4]), info


def simulate_schedule(schedule: Schedule, hw, geometry: L2Geometry | None = None, regs_per_thread: int | None = None,
                      persistent: bool = False, stride: int | None = None, min_sets: int = 96,
                      jitter: float | None = None, disorder: float = 0.0,
                      coupling: Coupling | None = None, phases: int = DEFAULT_PHASES) -> HierarchyResult:
    """DRAM traffic of a schedule on ``hw``. stride: set-sampling stride (None = automatic, 1 = every set).
    jitter: CTA drift σ (None: ``drift_for`` the schedule's KV walk direction). phases: co-resident phases averaged
    over (``DEFAULT_PHASES``; 1 = the lockstep convoy alone).
    coupling: use the coupled timeline (``iosim.memory.coupled``: CTA speed from its own L2 hits) instead of
    convoy/drift; jitter and disorder are then ignored."""
    if phases < 1:
        raise IosimError(f"phases must be a whole number ≥ 1 (1 = lockstep convoy), got {phases}")
    geom = geometry or L2Geometry.from_hardware(hw)
    if jitter is None:
        jitter = drift_for(schedule)
    if coupling is not None:
        res, info = simulate_coupled(schedule, hw, geom, coupling, regs_per_thread, persistent, stride, min_sets)
        kernels = tuple(KernelL2(name, occ, end, r * geom.sector_bytes, w * geom.sector_bytes, acc, hit)
                        for (name, occ, end), (r, w, acc, hit) in zip(info, res.per_kernel))
        notes = []
        if res.stride > 1:
            notes.append(f"L2 simulated on 1 in {res.stride} sets (coupled timeline; "
                         f"{'exact' if res.exact else 'set-sampling estimate'})")
        return HierarchyResult(geom, res, kernels, tuple(notes))
    results, info = [], None
    for i in range(phases):
        phase = (i + 0.5) / phases if phases > 1 else 0.0
        holder = [build_trace(schedule, hw, regs_per_thread, persistent, jitter, disorder, phase)]
        info = info or holder[0][1]
        holder = [holder[0][0]]  # only this list refers to the trace: simulate_owned frees it after expansion
        results.append(simulate_owned(holder, geom, stride=stride, num_kernels=len(schedule.kernels),
                                      min_sets=min_sets))
        if not any(layered for *_, layered in info):
            break  # no kernel is a convoy of several resident CTAs per SM: the phase changes nothing
    res = mean_result(results)
    kernels = tuple(KernelL2(name, occ, end, r * geom.sector_bytes, w * geom.sector_bytes, acc, hit)
                    for (name, occ, end, _), (r, w, acc, hit) in zip(info, res.per_kernel))
    notes = []
    if res.stride > 1:
        notes.append(f"L2 simulated on 1 in {res.stride} sets ({'exact: every access covers whole aligned groups' if res.exact else 'set-sampling estimate'})")
    if len(results) > 1:
        notes.append(f"mean over {len(results)} co-resident phases (convoy of several resident CTAs per SM)")
    return HierarchyResult(geom, res, kernels, tuple(notes))
