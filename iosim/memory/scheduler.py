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

Statically scheduled persistent kernels (``Kernel.static_items``: iosim's persistent Triton forward) do not use this
timeline: their workers run on one coupled to their L2 misses (``iosim.memory.coupled``).

Statically scheduled persistent kernels (``Kernel.static_items``: iosim's persistent Triton forward) do not use this
timeline: their workers run on one coupled to their L2 misses (``iosim.memory.coupled``).

Persistent kernels (``Kernel.persistent``: one CTA per worker, looping over work items; issue 21): drift is decided
per work item, not per worker program (``WorkItems``, ``timeline(items=...)``). A worker's program is a chain of items,
each the loop a non-persistent CTA would run; on the GPU each item's duration jitters on its own (clock, memory
latency and warp scheduling change from one tile to the next), so a worker that was slow on one item is not slow on
the next, and a CTA that falls behind a convoy hits in L2 and catches up. One speed per worker for the whole kernel
instead lets a worker 3% slow fall behind by 3% of all its items (iosim's static persistent Triton forward, 32K
non-causal, 31 items a worker: a whole item behind its round, 193× Q+K+V from DRAM where its non-persistent grid
reads 1×). So: items with identical trip counts (every item of the kernel as long) run in lockstep, as CTAs with
identical loops do; otherwise item i of the kernel runs at its own speed exp(σ·z_i) (``cta_speeds`` over the items, in
worker-major order), starting when its worker's previous item ends; the lag between workers is then a random walk
(σ·√k item lengths after k items), not a drift of σ·k.

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
class WorkItems:
    """The work items of a persistent kernel's programs: item i belongs to program ``owner[i]`` (non-decreasing),
    starts at its program's tick ``tick0[i]`` and lasts ``ticks[i]`` ticks; a program's items in order."""

    owner: np.ndarray
    tick0: np.ndarray
    ticks: np.ndarray


def work_items(schedule, kernel) -> WorkItems | None:
    """Items of a persistent kernel (``Kernel.persistent``): every iteration of a top-level loop of its body that holds
    a loop (worker_kernel's item loop, the Triton persistent forward's, LeanAttention's and stream-K's segment loops),
    at the ticks ``iosim.memory.trace`` gives them. None for a kernel that is not persistent or has no such loop."""
    from iosim.memory.trace import _grid_env, _has_loop, _iterations, _trips, block_ticks
    from iosim.schedule import Loop
    if not getattr(kernel, "persistent", False):
        return None
    P, _, env = _grid_env(schedule, kernel, None)
    cursor = np.zeros(P, dtype=np.int64)
    owners, starts, lens = [], [], []
    for st in kernel.body:
        if not isinstance(st, Loop):
            continue
        lo, hi, trips = _trips(st, env, P)
        if not _has_loop(st.body):
            cursor = cursor + trips
            continue
        owner, _, sub_env, total = _iterations(st, env, lo, hi, P, np.zeros(P, np.int64), trips)
        dur = 1 + block_ticks(st.body, sub_env, total)
        before = np.cumsum(dur) - dur
        first = np.minimum(np.cumsum(trips) - trips, max(total - 1, 0))
        off = before - before[first][owner] if total else before
        owners.append(owner)
        starts.append(cursor[owner] + off)
        lens.append(dur.astype(np.int64))
        cursor = cursor + np.bincount(owner, weights=dur, minlength=P).astype(np.int64)
    if not owners:
        return None
    owner, tick0, ticks = np.concatenate(owners), np.concatenate(starts), np.concatenate(lens)
    o = np.lexsort((tick0, owner))
    return WorkItems(owner[o].astype(np.int64), tick0[o].astype(np.int64), ticks[o])


@dataclass(frozen=True)
class ItemClock:
    """Piecewise-linear clocks of persistent workers (``timeline(items=...)``): segment s of program ``prog[s]``
    covers its ticks [tick0[s], tick0[s+1]) from time ``time0[s]`` after the program's start at ``speed[s]`` per
    tick. Every program's segments cover [0, duration) in order (items at their own speeds, the ticks between and
    after them at 1). ``total``: each program's length in time."""

    prog: np.ndarray
    tick0: np.ndarray
    time0: np.ndarray
    speed: np.ndarray
    first: np.ndarray      # first segment of every program; first[P] = number of segments
    total: np.ndarray
    tick_base: np.ndarray  # Σ durations of the programs before (global tick key)
    time_base: np.ndarray  # Σ (total + 1) of the programs before (global time key)

    @classmethod
    def of(cls, duration: np.ndarray, items: WorkItems, item_speed: np.ndarray) -> "ItemClock":
        P = len(duration)
        duration = np.asarray(duration, dtype=np.int64)
        # gaps: program starts and item ends that are not followed by an item start
        gap_prog = np.concatenate([np.arange(P, dtype=np.int64), items.owner])
        gap_tick = np.concatenate([np.zeros(P, np.int64), items.tick0 + items.ticks])
        seg_prog = np.concatenate([gap_prog, items.owner])
        seg_tick = np.concatenate([gap_tick, items.tick0])
        seg_speed = np.concatenate([np.ones(len(gap_prog)), np.asarray(item_speed, np.float64)])
        kind = np.concatenate([np.zeros(len(gap_prog), np.int8), np.ones(len(items.owner), np.int8)])
        o = np.lexsort((kind, seg_tick, seg_prog))   # at one tick an item start replaces the gap before it
        seg_prog, seg_tick, seg_speed, kind = seg_prog[o], seg_tick[o], seg_speed[o], kind[o]
        nxt_same = np.append((seg_prog[1:] == seg_prog[:-1]) & (seg_tick[1:] == seg_tick[:-1]), False)
        keep = ~nxt_same & (seg_tick < duration[seg_prog])
        seg_prog, seg_tick, seg_speed = seg_prog[keep], seg_tick[keep], seg_speed[keep]
        first = np.searchsorted(seg_prog, np.arange(P + 1))
        end_tick = np.append(seg_tick[1:], 0)
        last = np.append(seg_prog[1:] != seg_prog[:-1], True)
        end_tick[last] = duration[seg_prog[last]]
        span = (end_tick - seg_tick) * seg_speed
        cs = np.cumsum(span) - span
        time0 = cs - cs[first[seg_prog]]
        total = np.bincount(seg_prog, weights=span, minlength=P)
        tick_base = np.cumsum(duration) - duration
        tb = total + 1.0
        return cls(seg_prog, seg_tick, time0, seg_speed, first, total, tick_base, np.cumsum(tb) - tb)

    def elapsed(self, prog: np.ndarray, tick: np.ndarray) -> np.ndarray:
        """Time from each program's start to its tick ``tick``."""
        prog = np.asarray(prog, dtype=np.int64)
        key = self.tick_base[self.prog] + self.tick0
        s = np.searchsorted(key, self.tick_base[prog] + np.asarray(tick, np.int64), side="right") - 1
        s = np.clip(s, self.first[prog], self.first[prog + 1] - 1)
        return self.time0[s] + (tick - self.tick0[s]) * self.speed[s]

    def tick_at(self, prog: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The (fractional) tick of each program at time ``t`` after its start (clamped to the program)."""
        prog = np.asarray(prog, dtype=np.int64)
        rel = np.clip(t, 0.0, self.total[prog])
        key = self.time_base[self.prog] + self.time0
        s = np.searchsorted(key, self.time_base[prog] + rel, side="right") - 1
        s = np.clip(s, self.first[prog], self.first[prog + 1] - 1)
        return self.tick0[s] + (rel - self.time0[s]) / self.speed[s]


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
    clock: ItemClock | None = None   # persistent workers with per-item speeds (``speed``: their mean time per tick)

    def times(self, prog: np.ndarray, tick: np.ndarray) -> np.ndarray:
        """Global time of the accesses of ``prog`` at ``tick`` (the first key of the order)."""
        if self.disorder > 0:
            p = prog.astype(np.int64)
            h = (p * 0x9E3779B1 + tick.astype(np.int64) * 0x85EBCA77) * 0xC2B2AE3D
            u = ((h >> 11) & 0xFFFFF).astype(np.float64) / float(1 << 20)
            return (self.start[prog] + tick) + self.disorder * u
        if self.clock is not None:
            return self.start[prog] + self.clock.elapsed(prog, tick)
        if self.speed is not None:
            return self.start[prog] + tick * self.speed[prog]
        return self.start[prog] + tick.astype(np.int64)

    def last_time(self) -> np.ndarray:
        """A bound every CTA's accesses come before: start + duration (× speed) (+ disorder)."""
        if self.clock is not None:
            return self.start + self.clock.total
        d = self.duration if self.speed is None else self.duration * self.speed
        return self.start + d + self.disorder

    def tick_window(self, prog: np.ndarray, t0, t1) -> tuple[np.ndarray, np.ndarray]:
        """Per CTA, a tick range [lo, hi) holding every tick whose time falls in [t0, t1) (a little wider where times
        are not whole numbers: the caller keeps the accesses by their exact ``times``)."""
        s, d = self.start[prog], self.duration[prog]
        if self.clock is not None:
            lo = np.floor(self.clock.tick_at(prog, t0 - s)) - 1
            hi = np.ceil(self.clock.tick_at(prog, t1 - s)) + 1
            return np.clip(lo, 0, d).astype(np.int64), np.clip(hi, 0, d).astype(np.int64)
        if self.speed is None and self.disorder <= 0:
            lo, hi = t0 - s, t1 - s
        else:
            sp = 1.0 if self.speed is None else self.speed[prog]
            lo = np.floor((t0 - s - self.disorder) / sp) - 1
            hi = np.ceil((t1 - s) / sp) + 1
        return np.clip(lo, 0, d).astype(np.int64), np.clip(hi, 0, d).astype(np.int64)


def timeline(duration: np.ndarray, slots: int, persistent: bool = False, jitter: float = 0.0,
             disorder: float = 0.0, items: WorkItems | None = None) -> Timeline:
    """The CTA timeline of a kernel whose CTAs take ``duration`` ticks; see the module docstring and ``order_trace``.
    jitter: spread of per-CTA speeds (``cta_speeds``), a drift that grows along a CTA's loop; applied only when the
    CTAs' trip counts differ. disorder: each step of each CTA is displaced by a uniform offset in [0, disorder) ticks
    (a deterministic hash of program and tick): local disorder that, unlike drift, does not accumulate (not with
    jitter). items: the work items of a persistent kernel's programs (``work_items``): the jitter is then decided
    and drawn per item, not per program (module docstring); None: per program, as for any grid."""
    if items is not None and jitter > 0 and len(items.ticks):
        if bool(np.all(items.ticks == items.ticks[0])):
            jitter = 0.0   # identical items: a convoy in lockstep, whatever each worker's number of items
        else:
            clock = ItemClock.of(duration, items, cta_speeds(len(items.ticks), jitter))
            start, slot = start_times(clock.total, slots, persistent)
            end = float((start + clock.total).max()) if len(start) else 0.0
            mean = clock.total / np.maximum(np.asarray(duration, np.float64), 1.0)
            return Timeline(duration, start, slot, mean, 0.0, end, clock)
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
                disorder: float = 0.0, items: WorkItems | None = None):
    """Time-order a whole kernel's accesses: returns (perm, sm, end_time) where perm sorts the accesses by
    (global time, slot, statement order), ties kept in trace order (``timeline`` for jitter, disorder and items)."""
    tl = timeline(tr.duration, slots, persistent, jitter, disorder, items)
    t = tl.times(tr.prog, tr.tick)
    sl = tl.slot[tr.prog]
    perm = np.lexsort((tr.order, sl, t))
    return perm, (sl % num_sms)[perm], tl.end
