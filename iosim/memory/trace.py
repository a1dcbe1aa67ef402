"""Expand one kernel of a schedule into its global-memory accesses: per program, which byte ranges it loads and
stores at which step ("tick") of its own timeline. Vectorized with NumPy over all programs and loop iterations
(never per element); a tile becomes one contiguous byte range per run of its trailing full dimensions.

Ticks: every iteration of a loop is one tick (plus the ticks of the loops nested in it); statements outside loops
happen at the current tick without advancing it. So FA2's CTA issues Q with its first KV step (tick 0), K_j and V_j
at ticks 0…trips−1, and O, LSE at tick ``trips``; its duration is trips + 1 ticks. The scheduler
(``iosim.memory.scheduler``) turns ticks into global time.

An atomic store (``Store(atomic=True)``, fp32 RED) is a read-modify-write done at the L2: it becomes a read of the
range (``rmw``: the L2 needs the line, a miss fetches it from DRAM; no bytes go back to the SM) and then a write
(the line is dirtied), at the same tick, the read ordered first. Traces of schedules without atomics are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iosim.errors import IosimError
from iosim.expr import evaluate, table_env
from iosim.memory.layout import Layout
from iosim.schedule import Kernel, Load, Loop, Schedule, Store, Tile

@dataclass(frozen=True)
class KernelTrace:
    """Accesses of one kernel. Arrays are aligned: access k is issued by program ``prog[k]`` at ``tick[k]``."""

    name: str
    num_programs: int
    duration: np.ndarray   # ticks per program (linear program id, grid[0] fastest)
    prog: np.ndarray       # int32/int64
    tick: np.ndarray       # int32/int64
    order: np.ndarray      # int16: statement position in program text (orders accesses within one tick)
    write: np.ndarray      # bool
    addr: np.ndarray       # int64 byte address
    nbytes: np.ndarray     # int64
    rmw: np.ndarray | None = None  # bool: the L2-side read of an atomic (no bytes to the SM); None: no atomics

    @property
    def read_bytes(self) -> int:
        """SM read bytes: loads (an atomic's L2-side read excluded)."""
        sm_read = ~self.write if self.rmw is None else ~self.write & ~self.rmw
        return int(self.nbytes[sm_read].sum())

    @property
    def write_bytes(self) -> int:
        return int(self.nbytes[self.write].sum())


def _bcast(v, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(v, dtype=np.int64), (n,))


def _gather(env: dict, idx: np.ndarray) -> dict:
    return {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in env.items()}


def tile_runs(tile: Tile, lay: Layout, env: dict, npts: int):
    """(point, addr, nbytes) of the contiguous byte ranges of ``tile`` at every point; empty tiles give none."""
    t = lay[tile.tensor]
    if len(tile.spans) != len(t.dims):
        raise IosimError(f"tile of {tile.tensor} has {len(tile.spans)} spans for a {len(t.dims)}-d tensor")
    starts, exts, gathers = [], [], {}
    for ax, (s, length) in enumerate(zip(tile.spans, t.dims)):
        k = evaluate(s.index, env)
        b = evaluate(s.block, env)
        L = evaluate(s.length, env)
        st = k * b
        ext = np.clip(np.asarray(L - st), 0, b)
        starts.append(_bcast(st + evaluate(s.offset, env), npts))
        exts.append(_bcast(ext, npts))
        if s.gather is not None:  # rows tables[T][lead…, x]: evaluated per point below
            tbl = env.get(s.gather[0])
            if tbl is None:
                raise IosimError(f"tile of {tile.tensor}: gather table {s.gather[0]} is not attached to the schedule")
            gathers[ax] = (tbl.array, [_bcast(evaluate(e, env), npts) for e in s.gather[1:]])
    nd = len(t.dims)
    # c: first dim of the contiguous run; every dim after it must be complete at every point.
    c = nd - 1
    while c > 0 and bool(np.all(starts[c] == 0)) and bool(np.all(exts[c] == t.dims[c])):
        c -= 1
    if gathers:
        g = max(gathers)
        if g == nd - 1:
            raise IosimError(f"tile of {tile.tensor}: a gather on the last (contiguous) axis is not supported")
        c = max(c, g + 1)  # every gathered row is its own run
    eb = t.spec.elem_bytes
    inner = 1
    for d in t.dims[c + 1:]:
        inner *= d
    run_bytes = exts[c] * inner * eb
    base = t.base + eb * sum(starts[i] * t.strides[i] for i in range(nd) if i not in gathers)
    nruns = np.ones(npts, dtype=np.int64)
    for i in range(c):
        nruns = nruns * exts[i]
    nruns = np.where(run_bytes > 0, nruns, 0)
    if not gathers and bool(np.all(nruns == 1)):
        pts = np.arange(npts)
        return pts, np.asarray(base, dtype=np.int64).copy(), np.asarray(run_bytes, dtype=np.int64).copy()
    total = int(nruns.sum())
    pts = np.repeat(np.arange(npts), nruns)
    r = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(nruns) - nruns, nruns)
    off = np.zeros(total, dtype=np.int64)
    for i in range(c - 1, -1, -1):  # mixed radix over the leading dims, last fastest
        e = exts[i][pts]
        x = r % e
        if i in gathers:
            arr, lead = gathers[i]
            x = arr[tuple(v[pts] for v in lead) + (starts[i][pts] + x,)]
        off += x * t.strides[i] * eb
        r //= e
    return pts, base[pts] + off, run_bytes[pts].astype(np.int64)


def _has_loop(stmts) -> bool:
    return any(isinstance(st, Loop) for st in stmts)


def _trips(st: Loop, env: dict, npts: int):
    lo = _bcast(evaluate(st.start, env), npts)
    hi = _bcast(evaluate(st.stop, env), npts)
    return lo, hi, np.maximum(hi - lo, 0)


def _iterations(st: Loop, env: dict, lo, hi, npts: int, k0, n):
    """Iterations k0 … k0+n−1 of every point: (owner point, iteration index k, env of the loop body)."""
    total = int(n.sum())
    owner = np.repeat(np.arange(npts), n)
    k = np.arange(total, dtype=np.int64) - (np.cumsum(n) - n)[owner] + k0[owner]
    sub_env = _gather(env, owner)
    sub_env[st.var] = (hi[owner] - 1 - k) if st.reverse else (lo[owner] + k)
    return owner, k, sub_env, total


def block_ticks(stmts, env: dict, npts: int) -> np.ndarray:
    """Ticks ``stmts`` take at every point, without expanding a tile: an innermost loop takes its trip count, a loop
    with loops inside the sum of its iterations' (1 + ticks of the body)."""
    cursor = np.zeros(npts, dtype=np.int64)
    for st in stmts:
        if isinstance(st, Loop):
            lo, hi, trips = _trips(st, env, npts)
            if not _has_loop(st.body):
                cursor = cursor + trips
                continue
            owner, _, sub_env, total = _iterations(st, env, lo, hi, npts, np.zeros(npts, np.int64), trips)
            dur = 1 + block_ticks(st.body, sub_env, total)
            cursor = cursor + np.bincount(owner, weights=dur, minlength=npts).astype(np.int64)
    return cursor


class _Expander:
    def __init__(self, schedule: Schedule, lay: Layout):
        self.schedule = schedule
        self.lay = lay
        self.order: dict[int, int] = {}

    def block(self, stmts, env: dict, npts: int, win=None):
        """Events of ``stmts`` at every point: list of (point, tick, order, write, addr, nbytes, rmw) and ticks used.
        win: None (every tick) or per-point (lo, hi): only the events at ticks lo ≤ tick < hi (relative to the start
        of the block) are expanded; the ticks used are the same either way."""
        events = []
        cursor = np.zeros(npts, dtype=np.int64)
        for st in stmts:
            if isinstance(st, (Load, Store)):
                atomic = isinstance(st, Store) and st.atomic
                o_rmw = self.order.setdefault((id(st), "rmw"), len(self.order)) if atomic else None
                o = self.order.setdefault(id(st), len(self.order))
                if win is None:
                    pts, addr, nb = tile_runs(st.tile, self.lay, env, npts)
                else:
                    sel = np.flatnonzero((cursor >= win[0]) & (cursor < win[1]))
                    pts, addr, nb = tile_runs(st.tile, self.lay, _gather(env, sel), len(sel))
                    pts = sel[pts]
                if atomic:
                    events.append((pts, cursor[pts], o_rmw, False, addr, nb, True))
                events.append((pts, cursor[pts], o, isinstance(st, Store), addr, nb, False))
            elif isinstance(st, Loop):
                lo, hi, trips = _trips(st, env, npts)
                if not _has_loop(st.body):   # one tick per iteration: the window picks iterations directly
                    k0 = np.zeros(npts, np.int64) if win is None else np.clip(win[0] - cursor, 0, trips)
                    k1 = trips if win is None else np.clip(win[1] - cursor, 0, trips)
                    owner, k, sub_env, total = _iterations(st, env, lo, hi, npts, k0, np.maximum(k1 - k0, 0))
                    sub_events, _ = self.block(st.body, sub_env, total)
                    iter_start, sub_win = k, None
                    loop_ticks = trips
                else:
                    owner, k, sub_env, total = _iterations(st, env, lo, hi, npts, np.zeros(npts, np.int64), trips)
                    dur = 1 + block_ticks(st.body, sub_env, total)
                    before = np.cumsum(dur) - dur           # ticks of all earlier iterations (all points)
                    first = np.minimum(np.cumsum(trips) - trips, max(total - 1, 0))
                    iter_start = before - before[first][owner] if total else before
                    loop_ticks = np.bincount(owner, weights=dur, minlength=npts).astype(np.int64)
                    if win is not None:
                        a = cursor[owner] + iter_start
                        keep = np.flatnonzero((a < win[1][owner]) & (a + dur > win[0][owner]))
                        owner, iter_start, a = owner[keep], iter_start[keep], a[keep]
                        sub_env = _gather(sub_env, keep)
                        sub_win = (win[0][owner] - a, win[1][owner] - a)
                        total = len(keep)
                    else:
                        sub_win = None
                    sub_events, _ = self.block(st.body, sub_env, total, sub_win)
                for pts, tk, o, w, addr, nb, rmw in sub_events:
                    own = owner[pts]
                    events.append((own, cursor[own] + iter_start[pts] + tk, o, w, addr, nb, rmw))
                cursor = cursor + loop_ticks
        return events, cursor


def _grid_env(schedule: Schedule, kernel: Kernel, programs: np.ndarray | None):
    """(number of programs, linear ids, env of the grid variables at those programs; grid[0] fastest)."""
    extents = [int(evaluate(ax.extent, {})) for ax in kernel.grid]
    P = 1
    for e in extents:
        P *= e
    lin = np.arange(P, dtype=np.int64) if programs is None else np.asarray(programs, dtype=np.int64)
    env: dict = table_env(getattr(schedule, "tables", None))
    r = lin.copy()
    for ax, e in zip(kernel.grid, extents):
        env[ax.var] = r % e
        r = r // e
    return P, lin, env


def kernel_durations(schedule: Schedule, kernel: Kernel) -> np.ndarray:
    """Ticks of every program (linear id), as ``expand_kernel``'s ``duration``, without expanding a tile."""
    P, _, env = _grid_env(schedule, kernel, None)
    return block_ticks(kernel.body, env, P) + 1


def expand_kernel(schedule: Schedule, kernel: Kernel, lay: Layout, programs: np.ndarray | None = None,
                  tick_lo: np.ndarray | None = None, tick_hi: np.ndarray | None = None) -> KernelTrace:
    """The accesses of ``kernel``'s programs, in program-text order within each program (not yet in time order).
    programs: linear ids to expand (default all; ``prog`` holds linear ids, ``duration`` is per expanded program);
    tick_lo/tick_hi: per expanded program, only its accesses at ticks lo ≤ tick < hi (the streamed trace,
    ``iosim.memory.hierarchy``)."""
    P, lin, env = _grid_env(schedule, kernel, programs)
    n = len(lin)
    win = None if tick_lo is None else (np.asarray(tick_lo, np.int64), np.asarray(tick_hi, np.int64))
    events, cursor = _Expander(schedule, lay).block(kernel.body, env, n, win)
    if events:
        i32 = np.int32 if P < 2**31 and int(cursor.max(initial=0)) < 2**31 else np.int64
        prog = np.concatenate([lin[e[0]].astype(i32) for e in events])
        tick = np.concatenate([e[1].astype(i32) for e in events])
        order = np.concatenate([np.full(len(e[0]), e[2], dtype=np.int16) for e in events])
        write = np.concatenate([np.full(len(e[0]), e[3], dtype=bool) for e in events])
        addr = np.concatenate([e[4] for e in events])
        nb = np.concatenate([e[5] for e in events])
        rmw = np.concatenate([np.full(len(e[0]), e[6], dtype=bool) for e in events]) if any(e[6] for e in events) \
            else None
        del events
    else:
        prog = tick = order = addr = nb = np.zeros(0, dtype=np.int64)
        write = np.zeros(0, dtype=bool)
        rmw = None
    keep = nb > 0
    if not keep.all():
        prog, tick, order, write, addr, nb = (a[keep] for a in (prog, tick, order, write, addr, nb))
        rmw = None if rmw is None else rmw[keep]
    return KernelTrace(kernel.name, P, cursor + 1, prog, tick, order, write, addr, nb, rmw)
