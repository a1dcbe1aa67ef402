"""CTA scheduler model: how many CTAs run at once, which CTA runs when, and in which order the L2 sees their accesses.

Occupancy (how many CTAs are resident per SM, hence the slots of the timeline) is ``iosim.occupancy``, the same
rule the time model uses.

Timeline. Every CTA advances one tick per step of its own timeline (``iosim.memory.trace``): one loop iteration per tick,
all resident CTAs in lockstep, round robin (at each tick, slot 0's accesses, then slot 1's, …). CTAs are handed out
in linear grid order (grid[0] fastest, as blockIdx.x), each to the slot that frees first (ties: lowest slot);
slot s sits on SM s mod #SMs, so the first wave fills every SM once before any SM gets a second CTA. Waves and tails
follow. A persistent kernel instead launches one CTA per slot and gives tile t to slot t mod #slots, in order.

Drift (calibrated, see iosim.memory.hierarchy.DRIFT_BY_KV_ORDER and reports/validation/h100): CTAs of a kernel whose trip
counts differ (causal) advance at per-CTA speeds exp(σ·z) (fixed seed), so their relative positions drift along the
loop; CTAs with identical trip counts (non-causal) stay in lockstep, as the convoy the measured kernels form.
Speeds are fixed before the L2 is simulated (a timeline where a CTA's speed follows its own L2 hits, and one with
co-resident convoys run apart, were tried and dropped: reports/memory_model_notes.md).

The timeline is computed per CTA (``timeline``: start, slot, speed; O(#CTAs)); the time of one access is
``Timeline.times`` of its (program, tick), so a caller can order any subset of a kernel's accesses (one window of
global time, ``iosim.memory.hierarchy``) exactly as the whole trace would be ordered (``order_trace``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from iosim.memory.trace import KernelTrace


def start_times(duration: np.ndarray, slots: int, persistent: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(start time, slot) of every CTA in linear order; see the module docstring. Durations may be floats."""
    P = len(duration)
    if persistent:
        slot = np.arange(P, dtype=np.int64) % slots
        start = np.zeros(P, dtype=duration.dtype)
        order = np.argsort(slot, kind="stable")
        d = duration[order]
        cs = np.cumsum(d) - d
        first = np.searchsorted(slot[order], np.arange(slots))
        start[order] = cs - np.repeat(cs[np.minimum(first, max(P - 1, 0))], np.diff(np.append(first, P)))
        return start, slot
    if P == 0 or bool(np.all(duration == duration[0])):
        idx = np.arange(P, dtype=np.int64)
        return (idx // slots) * (duration[0] if P else 0), idx % slots
    start = np.zeros(P, dtype=duration.dtype)
    slot = np.zeros(P, dtype=np.int64)
    n0 = min(P, slots)
    slot[:n0] = np.arange(n0)
    dur = duration.tolist()
    heap = [(dur[i], i) for i in range(n0)]
    heapq.heapify(heap)
    for c in range(n0, P):
        t, s = heapq.heappop(heap)
        start[c] = t
        slot[c] = s
        heapq.heappush(heap, (t + dur[c], s))
    return start, slot


def cta_speeds(num_programs: int, jitter: float, seed: int = 0) -> np.ndarray:
    """Time per tick of every CTA: 1 without jitter, else exp(jitter · z) with z standard normal (fixed seed).

    Real CTAs do not advance in lockstep (clock, memory latency, warp scheduling); a spread of speeds turns the
    sharp all-or-nothing reuse threshold of an exact lockstep timeline into the gradual one measured on GPUs."""
    if jitter <= 0:
        return np.ones(num_programs)
    z = np.random.default_rng(seed).standard_normal(num_programs)
    return np.exp(jitter * z)


@dataclass(frozen=True)
class Timeline:
    """When every CTA of a kernel runs: CTA c starts at ``start[c]`` on ``slot[c]`` and issues its tick k at
    ``times(c, k)``; ``end`` is when the last CTA ends. ``speed`` None: one time unit per tick (integer times)."""

    duration: np.ndarray       # ticks per CTA
    start: np.ndarray
    slot: np.ndarray
    speed: np.ndarray | None   # time per tick of every CTA (drift), or None
    disorder: float            # uniform per-(CTA, tick) offset in [0, disorder) ticks, or 0
    end: float | int

    def times(self, prog: np.ndarray, tick: np.ndarray) -> np.ndarray:
        """Global time of the accesses of ``prog`` at ``tick`` (the first key of the order)."""
        if self.disorder > 0:
            p = prog.astype(np.int64)
            h = (p * 0x9E3779B1 + tick.astype(np.int64) * 0x85EBCA77) * 0xC2B2AE3D
            u = ((h >> 11) & 0xFFFFF).astype(np.float64) / float(1 << 20)
            return (self.start[prog] + tick) + self.disorder * u
        if self.speed is not None:
            return self.start[prog] + tick * self.speed[prog]
        return self.start[prog] + tick.astype(np.int64)

    def last_time(self) -> np.ndarray:
        """A bound every CTA's accesses come before: start + duration (× speed) (+ disorder)."""
        d = self.duration if self.speed is None else self.duration * self.speed
        return self.start + d + self.disorder

    def tick_window(self, prog: np.ndarray, t0, t1) -> tuple[np.ndarray, np.ndarray]:
        """Per CTA, a tick range [lo, hi) holding every tick whose time falls in [t0, t1) (a little wider where times
        are not whole numbers: the caller keeps the accesses by their exact ``times``)."""
        s, d = self.start[prog], self.duration[prog]
        if self.speed is None and self.disorder <= 0:
            lo, hi = t0 - s, t1 - s
        else:
            sp = 1.0 if self.speed is None else self.speed[prog]
            lo = np.floor((t0 - s - self.disorder) / sp) - 1
            hi = np.ceil((t1 - s) / sp) + 1
        return np.clip(lo, 0, d).astype(np.int64), np.clip(hi, 0, d).astype(np.int64)


def timeline(duration: np.ndarray, slots: int, persistent: bool = False, jitter: float = 0.0,
             disorder: float = 0.0) -> Timeline:
    """The CTA timeline of a kernel whose CTAs take ``duration`` ticks; see the module docstring and ``order_trace``.
    jitter: spread of per-CTA speeds (``cta_speeds``), a drift that grows along a CTA's loop; applied only when the
    CTAs' trip counts differ. disorder: each step of each CTA is displaced by a uniform offset in [0, disorder) ticks
    (a deterministic hash of program and tick): local disorder that, unlike drift, does not accumulate (not with
    jitter)."""
    if disorder > 0 and jitter <= 0:
        start, slot = start_times(duration, slots, persistent)
        end = int((start + duration).max()) if len(start) else 0
        return Timeline(duration, start, slot, None, disorder, end)
    if jitter > 0 and len(duration) and bool(np.all(duration == duration[0])):
        # CTAs with identical loops over the same K/V move as a convoy on the GPU (one that falls behind hits in
        # L2 and catches up): measured non-causal FA2 keeps its L2 reuse, so no drift is applied there
        # (``iosim.memory.hierarchy.DEFAULT_JITTER``: a small spread there was checked and made things worse).
        jitter = 0.0
    if jitter > 0:
        speed = cta_speeds(len(duration), jitter)
        start, slot = start_times(duration * speed, slots, persistent)
        end = float((start + duration * speed).max()) if len(start) else 0.0
        return Timeline(duration, start, slot, speed, 0.0, end)
    start, slot = start_times(duration, slots, persistent)
    end = int((start + duration).max()) if len(start) else 0
    return Timeline(duration, start, slot, None, 0.0, end)


def order_trace(tr: KernelTrace, slots: int, num_sms: int, persistent: bool = False, jitter: float = 0.0,
                disorder: float = 0.0):
    """Time-order a whole kernel's accesses: returns (perm, sm, end_time) where perm sorts the accesses by
    (global time, slot, statement order), ties kept in trace order (``timeline`` for jitter and disorder)."""
    tl = timeline(tr.duration, slots, persistent, jitter, disorder)
    t = tl.times(tr.prog, tr.tick)
    sl = tl.slot[tr.prog]
    perm = np.lexsort((tr.order, sl, t))
    return perm, (sl % num_sms)[perm], tl.end
