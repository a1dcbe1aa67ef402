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
Speeds are fixed before the L2 is simulated; ``iosim.memory.coupled`` is the alternative where a CTA's speed follows its own
L2 hits (checked on the H100 runs and not adopted: reports/validation/h100/coupled_timeline/README.md).

Co-resident phase (``layer_offsets``; issue 9, 2026-12-03): in a convoy kernel with R ≥ 2 resident CTAs per SM, the
r-th resident CTAs of all SMs form their own convoy, started r · phase · D/R ticks late (D the CTA's duration);
``iosim.memory.hierarchy.simulate_schedule(phases=Q)`` averages DRAM traffic over Q evenly spread phases, since nothing on the
GPU fixes how far apart these convoys run (an option, off by default: ``iosim.memory.hierarchy.DEFAULT_PHASES`` says why).
"""

from __future__ import annotations

import heapq

import numpy as np

from iosim.memory.trace import KernelTrace


def start_times(duration: np.ndarray, slots: int, persistent: bool = False,
                offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(start time, slot) of every CTA in linear order; see the module docstring. Durations may be floats.
    offset: time at which each slot first becomes free (default 0 for all)."""
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
    if offset is None and (P == 0 or bool(np.all(duration == duration[0]))):
        idx = np.arange(P, dtype=np.int64)
        return (idx // slots) * (duration[0] if P else 0), idx % slots
    start = np.zeros(P, dtype=duration.dtype)
    slot = np.zeros(P, dtype=np.int64)
    n0 = min(P, slots)
    slot[:n0] = np.arange(n0)
    dur = duration.tolist()
    off = [0] * n0 if offset is None else [offset[i].item() for i in range(n0)]
    start[:n0] = off
    heap = [(off[i] + dur[i], i) for i in range(n0)]
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


def is_layered_convoy(duration: np.ndarray, slots: int, num_sms: int, persistent: bool = False) -> bool:
    """True when the co-resident phase matters: CTAs of equal trip counts (a convoy, non-persistent) with more than
    one resident CTA per SM."""
    return (not persistent and slots // num_sms > 1 and len(duration) > 0
            and bool(np.all(duration == duration[0])))


def layer_offsets(duration: np.ndarray, slots: int, num_sms: int, persistent: bool, phase: float) -> np.ndarray | None:
    """First free time of every slot for a co-resident phase ``phase`` ∈ [0, 1): the r-th resident CTA of each SM
    (slots r·#SMs … (r+1)·#SMs − 1) starts r · round(phase · D / R) ticks late, D the CTA's duration, R the resident
    CTAs per SM. phase 0 is the lockstep convoy; phase → 1 the full splay (layers D/R apart). None when the phase
    does not apply (``is_layered_convoy``) or is 0."""
    if phase <= 0 or not is_layered_convoy(duration, slots, num_sms, persistent):
        return None
    R = slots // num_sms
    step = int(round(phase * int(duration[0]) / R))
    return (np.arange(slots, dtype=np.int64) // num_sms) * step


def order_trace(tr: KernelTrace, slots: int, num_sms: int, persistent: bool = False, jitter: float = 0.0,
                disorder: float = 0.0, phase: float = 0.0):
    """Time-order the kernel's accesses: returns (perm, sm, end_time) where perm sorts the accesses by
    (global time, slot, statement order). jitter: spread of per-CTA speeds (``cta_speeds``), a drift that grows
    along a CTA's loop. phase: co-resident phase of a convoy kernel (``layer_offsets``; iosim.memory.hierarchy averages
    the L2 over it). disorder: each step of each CTA is displaced by a uniform offset in [0, disorder) ticks
    (a deterministic hash of program and tick): local disorder that, unlike drift, does not accumulate, as CTAs that
    share data stay together on a GPU (a CTA that falls behind hits in L2 and catches up)."""
    if disorder > 0 and jitter <= 0:
        start, slot = start_times(tr.duration, slots, persistent)
        p = tr.prog.astype(np.int64)
        h = (p * 0x9E3779B1 + tr.tick.astype(np.int64) * 0x85EBCA77) * 0xC2B2AE3D
        u = ((h >> 11) & 0xFFFFF).astype(np.float64) / float(1 << 20)
        t = (start[tr.prog] + tr.tick) + disorder * u
        del h, u, p
        sl = slot[tr.prog]
        perm = np.lexsort((tr.order, sl, t))
        end = int((start + tr.duration).max()) if len(start) else 0
        return perm, (sl % num_sms)[perm], end
    if jitter > 0 and len(tr.duration) and bool(np.all(tr.duration == tr.duration[0])):
        # CTAs with identical loops over the same K/V move as a convoy on the GPU (one that falls behind hits in
        # L2 and catches up): measured non-causal FA2 keeps its L2 reuse, so no drift is applied there
        # (``iosim.memory.hierarchy.DEFAULT_JITTER``: a small spread there was checked and made things worse).
        jitter = 0.0
    if jitter > 0:
        speed = cta_speeds(tr.num_programs, jitter)
        start, slot = start_times(tr.duration * speed, slots, persistent)
        t = start[tr.prog] + tr.tick * speed[tr.prog]
        perm = np.lexsort((tr.order, slot[tr.prog], t))
        end = float((start + tr.duration * speed).max()) if len(start) else 0.0
        return perm, (slot[tr.prog] % num_sms)[perm], end
    offset = layer_offsets(tr.duration, slots, num_sms, persistent, phase)
    start, slot = start_times(tr.duration, slots, persistent, offset)
    t = start[tr.prog] + tr.tick.astype(np.int64)
    sl = slot[tr.prog]
    nord = int(tr.order.max()) + 1 if len(tr.order) else 1
    key = (t * slots + sl) * nord + tr.order
    del t
    perm = np.argsort(key, kind="stable")
    end = int((start + tr.duration).max()) if len(start) else 0
    return perm, (sl % num_sms)[perm], end
