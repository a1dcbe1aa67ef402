"""Expand one kernel of a schedule into its global-memory accesses: per program, which byte ranges it loads and
stores at which step ("tick") of its own timeline. Vectorized with NumPy over all programs and loop iterations
(never per element); a tile becomes one contiguous byte range per run of its trailing full dimensions.

Ticks: every iteration of a loop is one tick (plus the ticks of the loops nested in it); statements outside loops
happen at the current tick without advancing it. So FA2's CTA issues Q with its first KV step (tick 0), K_j and V_j
at ticks 0…trips−1, and O, LSE at tick ``trips``; its duration is trips + 1 ticks. The scheduler
(``iosim.memory.scheduler``) turns ticks into global time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iosim.errors import IosimError
from iosim.expr import evaluate, table_env
from iosim.memory.layout import Layout
from iosim.schedule import Kernel, Load, Loop, Schedule, Store, Tile

MAX_RUNS = 60_000_000  # byte ranges one kernel may expand to (bounded memory: ~ 0.5 GB per field)


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

    @property
    def read_bytes(self) -> int:
        return int(self.nbytes[~self.write].sum())

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
    starts, exts = [], []
    for s, length in zip(tile.spans, t.dims):
        k = evaluate(s.index, env)
        b = evaluate(s.block, env)
        L = evaluate(s.length, env)
        st = k * b
        ext = np.clip(np.asarray(L - st), 0, b)
        starts.append(_bcast(st, npts))
        exts.append(_bcast(ext, npts))
    nd = len(t.dims)
    # c: first dim of the contiguous run; every dim after it must be complete at every point.
    c = nd - 1
    while c > 0 and bool(np.all(starts[c] == 0)) and bool(np.all(exts[c] == t.dims[c])):
        c -= 1
    eb = t.spec.elem_bytes
    inner = 1
    for d in t.dims[c + 1:]:
        inner *= d
    run_bytes = exts[c] * inner * eb
    base = t.base + eb * sum(starts[i] * t.strides[i] for i in range(nd))
    nruns = np.ones(npts, dtype=np.int64)
    for i in range(c):
        nruns = nruns * exts[i]
    nruns = np.where(run_bytes > 0, nruns, 0)
    if bool(np.all(nruns == 1)):
        pts = np.arange(npts)
        return pts, np.asarray(base, dtype=np.int64).copy(), np.asarray(run_bytes, dtype=np.int64).copy()
    total = int(nruns.sum())
    if total > MAX_RUNS:
        raise IosimError(f"tile of {tile.tensor} expands to {total:,} byte ranges (limit {MAX_RUNS:,}); use --no-l2")
    pts = np.repeat(np.arange(npts), nruns)
    r = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(nruns) - nruns, nruns)
    off = np.zeros(total, dtype=np.int64)
    for i in range(c - 1, -1, -1):  # mixed radix over the leading dims, last fastest
        e = exts[i][pts]
        off += (r % e) * t.strides[i] * eb
        r //= e
    return pts, base[pts] + off, run_bytes[pts].astype(np.int64)


class _Expander:
    def __init__(self, schedule: Schedule, lay: Layout):
        self.schedule = schedule
        self.lay = lay
        self.order: dict[int, int] = {}
        self.runs = 0

    def block(self, stmts, env: dict, npts: int):
        """Events of ``stmts`` at every point: list of (point, tick, order, write, addr, nbytes) and ticks used."""
        events = []
        cursor = np.zeros(npts, dtype=np.int64)
        for st in stmts:
            if isinstance(st, (Load, Store)):
                pts, addr, nb = tile_runs(st.tile, self.lay, env, npts)
                self.runs += len(pts)
                if self.runs > MAX_RUNS:
                    raise IosimError(f"kernel expands to more than {MAX_RUNS:,} accesses; the L2 model would need "
                                     "too much memory for this size (use --no-l2)")
                o = self.order.setdefault(id(st), len(self.order))
                events.append((pts, cursor[pts], o, isinstance(st, Store), addr, nb))
            elif isinstance(st, Loop):
                lo = _bcast(evaluate(st.start, env), npts)
                hi = _bcast(evaluate(st.stop, env), npts)
                trips = np.maximum(hi - lo, 0)
                total = int(trips.sum())
                if total > MAX_RUNS:
                    raise IosimError(f"loop over {st.var} expands to {total:,} iterations (limit {MAX_RUNS:,}); "
                                     "use --no-l2")
                owner = np.repeat(np.arange(npts), trips)
                first = np.cumsum(trips) - trips
                k = np.arange(total, dtype=np.int64) - first[owner]
                sub_env = _gather(env, owner)
                sub_env[st.var] = (hi[owner] - 1 - k) if st.reverse else (lo[owner] + k)
                sub_events, sub_ticks = self.block(st.body, sub_env, total)
                dur = 1 + sub_ticks
                cs = np.cumsum(dur)
                before = cs - dur                      # ticks of all earlier iterations (all points)
                nz = trips > 0
                safe_first = np.minimum(first, max(total - 1, 0))
                grp0 = np.where(nz, before[safe_first] if total else 0, 0)
                grp1 = np.where(nz, cs[np.minimum(first + trips - 1, max(total - 1, 0))] if total else 0, 0)
                iter_start = before - grp0[owner]
                loop_ticks = grp1 - grp0
                for pts, tk, o, w, addr, nb in sub_events:
                    own = owner[pts]
                    events.append((own, cursor[own] + iter_start[pts] + tk, o, w, addr, nb))
                cursor = cursor + loop_ticks
        return events, cursor


def expand_kernel(schedule: Schedule, kernel: Kernel, lay: Layout) -> KernelTrace:
    """All accesses of ``kernel``'s programs, in program-text order within each program (not yet in time order)."""
    extents = [int(evaluate(ax.extent, {})) for ax in kernel.grid]
    P = 1
    for e in extents:
        P *= e
    lin = np.arange(P, dtype=np.int64)
    env: dict = table_env(getattr(schedule, "tables", None))
    r = lin.copy()
    for ax, e in zip(kernel.grid, extents):  # grid[0] fastest
        env[ax.var] = r % e
        r = r // e
    ex = _Expander(schedule, lay)
    events, cursor = ex.block(kernel.body, env, P)
    if events:
        i32 = np.int32 if P < 2**31 and int(cursor.max(initial=0)) < 2**31 else np.int64
        prog = np.concatenate([e[0].astype(i32) for e in events])
        tick = np.concatenate([e[1].astype(i32) for e in events])
        order = np.concatenate([np.full(len(e[0]), e[2], dtype=np.int16) for e in events])
        write = np.concatenate([np.full(len(e[0]), e[3], dtype=bool) for e in events])
        addr = np.concatenate([e[4] for e in events])
        nb = np.concatenate([e[5] for e in events])
        del events
    else:
        prog = tick = order = addr = nb = np.zeros(0, dtype=np.int64)
        write = np.zeros(0, dtype=bool)
    keep = nb > 0
    if not keep.all():
        prog, tick, order, write, addr, nb = (a[keep] for a in (prog, tick, order, write, addr, nb))
    return KernelTrace(kernel.name, P, cursor + 1, prog, tick, order, write, addr, nb)
