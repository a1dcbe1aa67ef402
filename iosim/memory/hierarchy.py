"""SRAM (per CTA) → L2 (shared) → DRAM for a whole schedule: layout, trace, CTA scheduler and L2 put together.

The SRAM level is the schedule itself: every Load/Store is SM ↔ L2 traffic (``iosim.counts``). Kernels run in launch
order, each after the previous one ends, over one L2 whose contents carry over between launches.

Streamed: the CTA timeline is computed per CTA (``iosim.memory.scheduler.timeline``), then each kernel's accesses
are generated window by window of global time (``stream_kernel``: only the CTAs running in the window, only at their
ticks in it), ordered as the whole trace would be, expanded to sampled lines and fed to one ``L2Stream``. Windows of
time rather than waves: a causal kernel's CTAs overlap across waves (drift, unequal lengths), and one long CTA can
span the whole kernel (N = 2²⁰: 8192 ticks of 2 tiles each), so only a time window bounds the chunk. Peak memory is
set by ``DEFAULT_CHUNK_RANGES``, not by the problem; the counts are those of the whole trace at once
(tests/test_stream_trace.py; ``build_trace`` is that reference).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from iosim.errors import IosimError
from iosim.memory.sampling import describe
from iosim.memory.l2 import L2Geometry, L2Result, RunTrace, aligned, choose_stride, first_sampled
from iosim.memory.coupled import stream_coupled
from iosim.memory.l2stream import L2Stream
from iosim.memory.layout import layout
from iosim.memory.scheduler import Timeline, order_trace, timeline, work_items
from iosim.memory.trace import expand_kernel, kernel_durations
from iosim.occupancy import Occupancy, occupancy
from iosim.schedule import Schedule

DEFAULT_JITTER = 0.15
"""The drift of descending KV walks (``DRIFT_BY_KV_ORDER``), also the fallback for schedules without a KV order.
Spread of per-CTA speeds (``iosim.memory.scheduler.cta_speeds``): calibrated, not measured. Applied only to kernels whose
CTAs have unequal trip counts (causal, block-sparse): CTAs with identical loops move as a convoy
(``iosim.memory.scheduler.order_trace``; drift there was checked and is wrong: non-causal N=49152, d=128 gives 19× Q+K+V
with drift, 1.95× measured). History: 0.25 from session 1 (8 H100 FA2 runs, L2 without way spread) to session 5; a
coupled timeline (CTA speed from its own L2 hits) was fitted on set 1 of issue 9 and did not beat the drift
(reports/memory_model_notes.md)."""


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
                jitter: float = 0.0, disorder: float = 0.0):
    """The whole time-ordered access trace of all kernels at once, with each kernel's (name, occupancy, timeline
    length): the reference the streamed ``simulate_schedule`` is checked against (tests/test_stream_trace.py), and
    the trace of the L2 engine benchmarks. Memory grows with the trace (about 92 bytes per byte range). Every kernel
    on its fixed timeline: a ``static_items`` kernel's coupled timeline exists only streamed
    (tests/test_coupled_timeline.py checks it against the fixed one at kappa 0)."""
    lay = layout(schedule)
    cfg = schedule.config
    parts, info = [], []
    for ki, k in enumerate(schedule.kernels):
        tr = expand_kernel(schedule, k, lay)
        occ = occupancy(k, hw, getattr(cfg, "num_stages", 1), regs_per_thread)
        perm, sm, end = order_trace(tr, occ.slots, hw.sm_count, persistent, jitter, disorder,
                                    work_items(schedule, k))
        parts.append((tr.addr[perm], tr.nbytes[perm], tr.write[perm], sm.astype(np.int16),
                      np.full(len(perm), ki, dtype=np.int8 if len(schedule.kernels) < 128 else np.int64)))
        info.append((k.name, occ, end))
        del tr, perm, sm
    if len(parts) == 1:
        cat = list(parts[0])
    else:
        cat = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in range(5)]
    del parts
    return RunTrace(cat[0], cat[1], cat[2].astype(bool), cat[3], cat[4]), info


DEFAULT_CHUNK_RANGES = 2_000_000
"""Byte ranges per chunk of the streamed trace (the window of global time adapts to hold about this many): peak
memory is a few hundred bytes per range of one chunk (ranges, their lines, the sort), whatever the problem size."""

PROGRESS_AFTER_S = 3.0
"""A progress line appears on stderr once a prediction has run this long (``Progress``)."""


class Progress:
    """Fraction of the timeline done and ETA on one stderr line, after ``PROGRESS_AFTER_S``, at most 5 times a
    second; cleared at the end."""

    def __init__(self, enabled: bool):
        self.enabled, self.start_s, self.drawn_s, self.shown = enabled, time.monotonic(), 0.0, False

    def update(self, frac: float) -> None:
        now = time.monotonic()
        el = now - self.start_s
        if not self.enabled or el < PROGRESS_AFTER_S or now - self.drawn_s < 0.2:
            return
        self.drawn_s, self.shown = now, True
        eta = el * (1 - frac) / frac if frac > 0 else float("nan")
        sys.stderr.write(f"\riosim: L2 timeline {100 * frac:5.1f}%  {el:.0f} s  ETA {eta:.0f} s   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


class _Sink:
    """The L2 fed chunk by chunk (``iosim.memory.l2stream.L2Stream``) with ordered byte ranges."""

    def __init__(self, geom: L2Geometry, stride: int, num_kernels: int):
        self.geom, self.stride, self.nk = geom, stride, num_kernels
        self.l2 = L2Stream(geom, geom.sets_per_cache // stride, num_kernels, stride=stride)
        self.aligned = True

    def sampled(self, addr: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """Indices of the ranges that touch a sampled line (set ≡ 0 mod stride, ``first_sampled``; the others add
        nothing to the counts),
        noting whether every range covers whole aligned groups (``aligned``: then sampling is exact)."""
        k, lb = self.stride, self.geom.line_bytes
        if k == 1:
            return np.arange(len(addr))
        if self.aligned:
            self.aligned = aligned(RunTrace(addr, nbytes, None, None, None), self.geom, k)
        fl = addr // lb
        return np.flatnonzero(first_sampled(fl, self.geom, k) * lb < addr + nbytes)

    def feed(self, tr: RunTrace) -> None:
        """One time-ordered chunk of byte ranges: the L2 walks their sampled lines (``L2Stream.feed_ranges``)."""
        self.l2.feed_ranges(tr.addr, tr.nbytes, tr.write, tr.sm, tr.kernel if self.nk > 1 else None)

    def result(self) -> L2Result:
        c, k, g = self.l2.finish(), self.stride, self.geom
        exact = k == 1 or (g.policy != "random" and g.exact_stride(k) and self.aligned)
        per_kernel = tuple((int(c["k_read"][i]) * k, int(c["k_write"][i]) * k, int(c["k_acc"][i]) * k,
                            int(c["k_hit"][i]) * k) for i in range(self.nk))
        return L2Result(accesses=c["accesses"] * k, hits=c["hits"] * k, misses=c["misses"] * k,
                        evictions=c["evictions"] * k, dirty_evictions=c["dirty_evictions"] * k,
                        dram_read_sectors=c["dram_read_sectors"] * k, dram_write_sectors=c["dram_write_sectors"] * k,
                        stride=k, exact=exact, per_kernel=per_kernel)


def _time_order(tl: Timeline, tr, idx: np.ndarray, t0, t1, slots: int):
    """(indices among ``idx`` into ``tr`` of the accesses at times in [t0, t1), sorted by (time, slot, statement
    order, trace order); their slots, aligned). One stable sort of an int64 key where it fits: whole-number times
    relative to t0, or the bits of non-negative float times (ordered as the floats) relative to t0's; else a lexsort
    of the three keys."""
    prog = tr.prog[idx]
    t, o, s = tl.times(prog, tr.tick[idx]), tr.order[idx], tl.slot[prog]
    nord = int(tr.order.max()) + 1 if len(tr.order) else 1
    if tl.speed is None and tl.disorder <= 0:   # integer times, tick windows exact: nothing to drop
        p = np.argsort(((t - t0) * slots + s) * nord + o, kind="stable")
        return idx[p], s[p]
    keep = np.flatnonzero((t >= t0) & (t < t1))
    t, o, s = t[keep], o[keep], s[keep]
    base = np.float64(t0).view(np.int64)
    span = int(np.float64(t1).view(np.int64) - base) + 1
    if span * slots * nord < 2**62:
        p = np.argsort(((t.view(np.int64) - base) * slots + s) * nord + o, kind="stable")
    else:
        p = np.lexsort((o, s, t))
    return idx[keep[p]], s[p]


def stream_kernel(schedule: Schedule, kernel, lay, tl: Timeline, kid: int, num_sms: int, sink: _Sink,
                  chunk_ranges: int, on_progress=None) -> None:
    """Feed one kernel's accesses to ``sink`` window by window of global time [t0, t1): only the CTAs running then
    are expanded, only at their ticks in the window (``expand_kernel``'s tick range), and the window's accesses are
    sorted by (time, slot, statement order, trace order), the key ``order_trace`` sorts the whole trace by, so
    the L2 sees the same sequence. The window's length adapts so that it holds about ``chunk_ranges`` ranges."""
    P = len(tl.start)
    slots = int(tl.slot.max()) + 1 if P else 1
    by_start = np.argsort(tl.start, kind="stable")
    start_sorted = tl.start[by_start]
    last = tl.last_time()
    t_end = float(last.max()) if P else 0.0
    kd = np.int8 if sink.nk < 128 else np.int64
    live = np.zeros(0, np.int64)
    nxt = 0
    t0 = start_sorted[0] if P else 0
    width = 16 if tl.speed is None else 16.0     # ticks; adapted after each window
    while nxt < P or len(live):
        if not len(live) and start_sorted[nxt] >= t0:
            t0 = start_sorted[nxt]     # nothing runs before the next CTA starts
        t1 = t0 + width
        k = int(np.searchsorted(start_sorted, t1, side="left"))
        live = np.concatenate([live, by_start[nxt:k]])
        nxt = k
        lo, hi = tl.tick_window(live, t0, t1)
        tr = expand_kernel(schedule, kernel, lay, live, lo, hi)
        perm, sl = _time_order(tl, tr, sink.sampled(tr.addr, tr.nbytes), t0, t1, slots)
        n = len(perm)
        if n:
            sink.feed(RunTrace(tr.addr[perm], tr.nbytes[perm], tr.write[perm], (sl % num_sms).astype(np.int16),
                               np.full(n, kid, dtype=kd)))
        expanded = len(tr.addr)
        del tr, perm, sl
        live = live[last[live] > t1]
        t0 = t1
        grow = chunk_ranges / max(expanded, 1)
        width = min(width * min(max(grow, 0.5), 4.0), t_end + 1)   # no wider than the kernel: keys stay small
        if tl.speed is None:
            width = max(int(width), 1)
        if on_progress is not None:
            on_progress(min(float(t0) / t_end, 1.0) if t_end > 0 else 1.0)


def simulate_schedule(schedule: Schedule, hw, geometry: L2Geometry | None = None, regs_per_thread: int | None = None,
                      persistent: bool = False, stride: int | None = None, min_sets: int = 96,
                      jitter: float | None = None, disorder: float = 0.0, chunk_ranges: int = DEFAULT_CHUNK_RANGES,
                      progress: bool | None = None) -> HierarchyResult:
    """DRAM traffic of a schedule on ``hw``. stride: set-sampling stride (None = automatic, 1 = every set).
    jitter: CTA drift σ (None: ``drift_for`` the schedule's KV walk direction); disorder: ``timeline``'s.
    The trace is streamed kernel after kernel, window by window of each kernel's timeline (``stream_kernel``; a
    persistent kernel with ``static_items``: ``iosim.memory.coupled.stream_coupled``, its timeline coupled to its L2
    misses, jitter and disorder not applied), through one L2 whose contents carry over; chunk_ranges bounds the byte
    ranges held at once. progress: a
    progress line on stderr past ``PROGRESS_AFTER_S`` (None: when stderr is a terminal)."""
    geom = geometry or L2Geometry.from_hardware(hw)
    if jitter is None:
        jitter = drift_for(schedule)
    if stride is None:
        stride = choose_stride(None, geom, min_sets)
    if stride < 1 or stride & (stride - 1) or stride > geom.max_stride():
        raise IosimError(f"sampling stride {stride} must be a power of two dividing {geom.max_stride()}")
    lay = layout(schedule)
    nk = len(schedule.kernels)
    sink = _Sink(geom, stride, nk)
    cfg = schedule.config
    tls, info = [], []
    for k in schedule.kernels:
        occ = occupancy(k, hw, getattr(cfg, "num_stages", 1), regs_per_thread)
        dur = kernel_durations(schedule, k)
        if k.static_items and k.persistent:   # coupled timeline: its length is known once it has run
            tls.append((dur, float(dur.sum()) / max(min(len(dur), occ.slots), 1)))
        else:
            tl = timeline(dur, occ.slots, persistent, jitter, disorder,
                          work_items(schedule, k))   # persistent workers: drift per work item
            tls.append((tl, float(tl.end)))
        info.append([k.name, occ, tls[-1][1]])
    total = sum(e for _, e in tls) or 1.0
    bar = Progress(sys.stderr.isatty() if progress is None else progress)
    try:
        done = 0.0
        for ki, (k, (tl, e)) in enumerate(zip(schedule.kernels, tls)):
            prog = (lambda f, d=done, e=e: bar.update((d + f * e) / total))
            if not isinstance(tl, Timeline):   # the durations of a coupled kernel
                info[ki][2] = stream_coupled(schedule, k, lay, ki, hw.sm_count, sink, info[ki][1].slots, prog,
                                             durations=tl)
            else:
                stream_kernel(schedule, k, lay, tl, ki, hw.sm_count, sink, chunk_ranges, prog)
            done += e
    finally:
        bar.close()
    res = sink.result()
    kernels = tuple(KernelL2(name, occ, end, r * geom.sector_bytes, w * geom.sector_bytes, acc, hit)
                    for (name, occ, end), (r, w, acc, hit) in zip(info, res.per_kernel))
    notes = []
    if res.stride > 1:
        notes.append(describe(res.stride, res.exact))
    return HierarchyResult(geom, res, kernels, tuple(notes))
