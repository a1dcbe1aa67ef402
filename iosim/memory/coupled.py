"""Coupled CTA timeline: a CTA's speed depends on its own L2 hits (issue 9 follow-up).

The default timeline (``iosim.memory.scheduler.order_trace``) fixes every CTA's speed before the L2 is simulated: lockstep
("convoy") for equal trip counts, constant per-CTA speeds exp(σ·z) ("drift") otherwise. On a GPU the speed of a CTA
depends on where its K/V tiles come from: a CTA whose loads hit in L2 (a tile a CTA ahead of it just loaded) waits
less than the CTA ahead that misses to DRAM, so laggards inside the L2 window catch up and convoys form and persist,
while a CTA that falls out of the window pays DRAM latency and stays behind, re-reading from DRAM.

Rule. Global time runs in chunks of ``chunk_ticks`` ticks (1 tick = one loop step of a CTA whose loads all hit).
Within a chunk every resident CTA advances at a constant time per tick

    c = s_cta · (1 + miss_cost · m) · exp(noise · z / √chunk_ticks),

m the fraction of its load lines (sampled sets) that read DRAM in the previous chunk (the slot keeps its value when a
new CTA starts on it), z standard normal per (slot, chunk) from a fixed seed (``noise`` is the spread of one tick's
time: chunk times of independent ticks add up), s_cta = exp(drift · z_cta) the per-CTA speed of
``iosim.memory.scheduler.cta_speeds`` (same seed), applied as there only to kernels whose CTAs have unequal trip counts.
CTAs are handed out as in ``iosim.memory.scheduler`` (linear order, to the slot that frees first, ties to the lowest slot;
persistent: tile t to slot t mod #slots), accesses within a chunk are ordered by (time, slot, statement), and the
chunk goes through the L2 (``iosim.memory.l2stream.L2Stream``: state carried over) before the next chunk is laid out.
Deterministic; with miss_cost = noise = drift = 0 it is the lockstep timeline of ``iosim.memory.scheduler`` (same per-set
access order, so the same counts), with miss_cost = noise = 0 and drift σ the drift timeline within ~1%
(tests/test_l2_coupled.py; FA2 causal 16K/32K: 2.12 vs 2.10 and 6.54 vs 6.50 × QKV).

Why chunks and not a fixed point (simulate, take per-(CTA, tick) miss fractions, re-time, re-simulate): the fixed
point feeds a CTA the outcome of a whole previous pass, so leaders and followers swap roles from pass to pass instead
of settling, and every pass costs a full L2 simulation (2–3× the 30-s budget of benchmarks/bench_l2.py). Chunks are
causal — a CTA's speed depends only on what already happened — and cost one pass.

Cost: one L2 pass (chunks only regroup it; the steps of a chunk are its longest per-set sequence, so short chunks
cost more steps), plus the (CTA, tick) bookkeeping, O(Σ trip counts). FA2 causal B1 H16 N65536 d128, calibrated
H100 profile, miss_cost 1, noise 0.3: 22 s, 1.0 GB peak on this machine (convoy/drift: 15.7 s, 0.85 GB). Tight
convoys (non-causal, noise 0) are slower: every CTA of a chunk reads the same few lines, so the chunk's longest
per-set sequence is long (sdpa 128K d128 non-causal: ~4× the convoy/drift time).

Result (issue 9 follow-up, fit on H100 set 1 only, ``benchmarks/gpu/fit_coupling.py``; sweeps in
reports/validation/h100/coupled_timeline/): NOT adopted — it does not beat convoy/drift, so it is an option
(``simulate_schedule(coupling=...)``, ``predict(cta_coupling=...)``, ``compare_l2.py --coupling``).
L2-bound runs (measured DRAM > 1.15 × QKV), median |error| / worst, calibrated H100 profile as of issue 9 session 3
(SRRIP, no way spread, one drift 0.25; the defaults have changed since: iosim.memory.hierarchy.DRIFT_BY_KV_ORDER), chunk 4 ticks:

  timeline (chunk 4 ticks)                              set 1 (20 runs)     set 2 (16, held out)
  convoy/drift (the default, drift 0.25)                13.2% / −41.6%      17.1% / +34.7%
  drift 0, miss_cost 0.5–4, noise 0–0.8 (12 points)     32–35% / −63…−85%   not run
  drift 0.25, miss_cost 0,    noise 0                   13.2% / −41.6%      (= the default)
  drift 0.25, miss_cost 0,    noise 0.5                 12.9% / −44.1%      15.7% / −37.8%
  drift 0.25, miss_cost 0,    noise 1                   14.8% / +979%       19.6% / +387%
  drift 0.25, miss_cost 0.25, noise 0                   14.9% / +43.1%      not run
  drift 0.25, miss_cost 0.25, noise 0.5                 14.0% / +51.8%      16.4% / −42.6%
  drift 0.25, miss_cost 1,    noise 0                   18.0% / −48.9%      not run
  drift 0.25, miss_cost 1,    noise 0.5                 16.1% / −45.4%      not run

The runs that are not L2-bound stay at 0.6–0.8% median (worst −11.7%, Flex 16K non-causal) for every point above
but noise 2. What the sweeps show:
* Coupling holds CTAs together, and that is the wrong direction for FA2 causal (KV walked down from the diagonal):
  each CTA re-reads what its neighbour read one tick before, so a chain of 1-tick lags forms and reuse is nearly
  perfect (sdpa causal 64K d128: −16% with drift alone, −28% with miss_cost 0.25, −49% with 1; with drift 0 and
  noise only, −62…−84%). The GPU re-reads far more (32.6 × QKV there); a likely reason is that FA2's K/V loads are
  pipelined behind the MMAs, so a DRAM miss barely slows a CTA.
* Flex causal (KV walked up from block 0) stays over-predicted whatever the coupling (+41% at 128K d64 for miss_cost
  0, 0.25 and 1): the CTAs that drift apart fall out of the L2 window, miss, and the coupling only slows them more.
* Per-step noise in the non-causal convoy (miss_cost 0) re-reads K/V as the GPU does at 0.5 (sdpa 128K d128:
  −30% → −15%; set 2 96K d128: −16% → −9%), but the convoy is bistable: at noise 1 it breaks up completely
  (+979%, +387%), and at 0.5 other runs move the other way (Flex 96K d64 non-causal −25% → −38%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iosim.errors import IosimError
from iosim.memory.l2 import (
    L2Geometry,
    L2Result,
    RunTrace,
    aligned,
    choose_stride,
    expand_lines,
    widen_loads,
)
from iosim.memory.l2stream import L2Stream
from iosim.memory.layout import layout
from iosim.occupancy import occupancy
from iosim.schedule import Schedule
from iosim.memory.scheduler import cta_speeds
from iosim.memory.trace import expand_kernel


@dataclass(frozen=True)
class Coupling:
    """Parameters of the coupled timeline (module docstring). miss_cost: extra time of a tick whose loads all read
    DRAM, in ticks of one that hits; noise: log-normal spread of one tick's time; chunk_ticks: how often speeds are
    updated (not fitted); drift: per-CTA speed spread for unequal trip counts (``iosim.memory.hierarchy.DEFAULT_JITTER``
    is the calibrated one, 0.25); seed: of the noise."""

    miss_cost: float = 1.0
    noise: float = 0.0
    chunk_ticks: float = 4.0
    drift: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.miss_cost < 0 or self.noise < 0 or self.drift < 0 or self.chunk_ticks <= 0:
            raise IosimError(f"coupling parameters must be ≥ 0 (chunk_ticks > 0), got {self}")


def _kernel_lines(tr, geom: L2Geometry, stride: int):
    """The kernel's sampled line accesses grouped by (program, tick), statement order within a tick.
    Returns (pt offsets per program, line start per (program, tick), row, tag, sectors, write, home)."""
    dur = tr.duration.astype(np.int64)
    off = np.concatenate(([0], np.cumsum(dur)))
    npt = int(off[-1])
    pt = off[tr.prog.astype(np.int64)] + tr.tick.astype(np.int64)
    srt = np.lexsort((tr.order, pt))
    rt = RunTrace(tr.addr[srt], tr.nbytes[srt], tr.write[srt], pt[srt], np.zeros(len(srt), np.int8))
    del srt, pt
    line, mask, w, ptl, _ = expand_lines(rt, geom, stride)
    del rt
    mask = widen_loads(mask, w, geom)
    start = np.searchsorted(ptl, np.arange(npt + 1))
    home = geom.home(line).astype(np.int8) if geom.num_partitions > 1 else None
    row = geom.set_index(line) // stride
    return off, start, row, line, mask, w, home


def _gather_ranges(start: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Indices start[p] … start[p+1]−1 of every p in pts, concatenated in order."""
    a, b = start[pts], start[pts + 1]
    n = b - a
    tot = int(n.sum())
    if tot == 0:
        return np.zeros(0, np.int64)
    rep = np.repeat(np.arange(len(pts)), n)
    return a[rep] + (np.arange(tot) - np.repeat(np.cumsum(n) - n, n))


def run_kernel(tr, lines, slots: int, num_sms: int, geom: L2Geometry, l2: L2Stream, kid: int,
               coupling: Coupling, t0: float = 0.0, persistent: bool = False) -> np.ndarray:
    """Lay out one kernel's accesses (``lines``: its ``_kernel_lines``) chunk by chunk and feed them to ``l2``;
    returns the time every CTA ends."""
    P = tr.num_programs
    cta_end = np.full(P, float(t0))
    if P == 0:
        return cta_end
    dur = tr.duration.astype(np.int64)
    off, start, row, tag, mask, w, home = lines
    rng = np.random.default_rng(coupling.seed + 7919 * kid)
    dt = float(coupling.chunk_ticks)
    sig = coupling.noise / np.sqrt(dt)
    cur = np.full(slots, -1, np.int64)     # CTA on each slot (−1: free)
    k = np.zeros(slots, np.int64)          # its next tick
    tau = np.full(slots, float(t0))        # when that tick starts (free slots: when the slot freed)
    miss = np.zeros(slots)                 # DRAM fraction of the slot's loads in the last chunk
    # drift as in iosim.memory.scheduler.order_trace: only CTAs of unequal trip counts (causal, block-sparse) get it
    speed = cta_speeds(P, 0.0 if bool(np.all(dur == dur[0])) else coupling.drift)
    cost = np.ones(slots)
    if persistent:
        queue = [list(range(s, P, slots)) for s in range(slots)]
        qpos = np.zeros(slots, np.int64)
    nxt = 0
    remaining = P
    Pm = geom.num_partitions
    T0 = float(t0)

    def hand_out(free_slots):
        nonlocal nxt
        for s in free_slots:
            if persistent:
                if qpos[s] < len(queue[s]):
                    cur[s] = queue[s][qpos[s]]
                    qpos[s] += 1
            elif nxt < P:
                cur[s] = nxt
                nxt += 1

    base = np.ones(slots)
    hand_out(range(min(slots, P)) if not persistent else range(slots))
    while remaining > 0:
        T1 = T0 + dt
        got_s, got_pt, got_t = [], [], []
        while True:
            free = np.flatnonzero((cur < 0) & (tau < T1))
            if len(free) and (persistent or nxt < P):
                free = free[np.lexsort((free, tau[free]))]
                hand_out(free.tolist())
            s = np.flatnonzero((cur >= 0) & (tau < T1))
            if len(s) == 0:
                break
            cost[s] = speed[cur[s]] * base[s]
            rem = dur[cur[s]] - k[s]
            n = np.minimum(rem, np.ceil((T1 - tau[s]) / cost[s]).astype(np.int64))
            rep = np.repeat(np.arange(len(s)), n)
            j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            got_s.append(s[rep])
            got_t.append(tau[s][rep] + j * cost[s][rep])
            got_pt.append(off[cur[s]][rep] + k[s][rep] + j)
            k[s] += n
            tau[s] += n * cost[s]
            done = s[k[s] >= dur[cur[s]]]
            if len(done):
                cta_end[cur[done]] = tau[done]
                remaining -= len(done)
                cur[done] = -1
                k[done] = 0
        if got_s:
            gs, gt, gp = np.concatenate(got_s), np.concatenate(got_t), np.concatenate(got_pt)
            o = np.lexsort((gs, gt))
            gs, gp = gs[o], gp[o]
            idx = _gather_ranges(start, gp)
            if len(idx):
                near = ((gs % num_sms) % Pm).astype(np.int8) if Pm > 1 else None
                n_per = start[gp + 1] - start[gp]
                acc_slot = np.repeat(gs, n_per)
                fetched = l2.feed(row[idx], tag[idx], mask[idx], w[idx], np.full(len(idx), kid),
                                  None if near is None else np.repeat(near, n_per),
                                  None if home is None else home[idx])
                ld = ~w[idx]
                nl = np.bincount(acc_slot[ld], minlength=slots)
                nm = np.bincount(acc_slot[ld], weights=(fetched[ld] > 0), minlength=slots)
                has = nl > 0
                miss[has] = nm[has] / nl[has]
        z = rng.standard_normal(slots) if sig > 0 else 0.0
        base = (1.0 + coupling.miss_cost * miss) * np.exp(sig * z)
        T0 = T1
    return cta_end


def simulate_coupled(schedule: Schedule, hw, geom: L2Geometry, coupling: Coupling, regs_per_thread=None,
                     persistent: bool = False, stride: int | None = None, min_sets: int = 96):
    """DRAM traffic of a schedule with the coupled timeline. Returns (L2Result, [(kernel name, occupancy, end)])."""
    lay = layout(schedule)
    cfg = schedule.config
    if stride is None:
        stride = choose_stride(None, geom, min_sets)
    nk = len(schedule.kernels)
    l2 = None
    info, t0, exact = [], 0.0, stride == 1 or (geom.policy != "random" and geom.exact_stride(stride))
    for ki, kern in enumerate(schedule.kernels):
        tr = expand_kernel(schedule, kern, lay)
        if exact and stride > 1:
            exact = aligned(RunTrace(tr.addr, tr.nbytes, tr.write, tr.prog, tr.prog), geom, stride)
        occ = occupancy(kern, hw, getattr(cfg, "num_stages", 1), regs_per_thread)
        lines = _kernel_lines(tr, geom, stride)
        if l2 is None:
            full = (1 << geom.sectors_per_line) - 1
            l2 = L2Stream(geom, geom.sets_per_cache // stride, nk, whole_lines=nk == 1 and bool(np.all(lines[4] == full)),
                          stride=stride)
        ends = run_kernel(tr, lines, occ.slots, hw.sm_count, geom, l2, ki, coupling, t0, persistent)
        end = float(ends.max()) if len(ends) else t0
        del lines
        info.append((kern.name, occ, end - t0))
        t0 = end
        del tr
    c = (l2 or L2Stream(geom, geom.sets_per_cache // stride, nk, stride=stride)).finish()
    s = stride
    per_kernel = tuple((int(c["k_read"][i]) * s, int(c["k_write"][i]) * s, int(c["k_acc"][i]) * s,
                        int(c["k_hit"][i]) * s) for i in range(nk))
    res = L2Result(accesses=c["accesses"] * s, hits=c["hits"] * s, misses=c["misses"] * s,
                   evictions=c["evictions"] * s, dirty_evictions=c["dirty_evictions"] * s,
                   dram_read_sectors=c["dram_read_sectors"] * s, dram_write_sectors=c["dram_write_sectors"] * s,
                   stride=s, exact=exact, per_kernel=per_kernel)
    return res, info
