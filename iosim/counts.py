"""Arithmetic counting of a schedule: bytes between the SMs and global memory per tensor, FLOPs, SRAM per CTA.

The loop nest is summed without expanding it element by element: an innermost loop whose tiles depend on the
loop variable through at most one Span is summed in closed form,

    Σ_{k=a}^{b-1} clamp(L − k·B, 0, B) = clamp(b·B, 0, L) − clamp(a·B, 0, L),

and only loops whose bounds depend on an outer variable (causal trip counts, FA1's outer loop) are enumerated, as
NumPy vectors. Grid axes that no size depends on (batch, heads) are multiplied, not enumerated. FA2 at N = 2²⁰
enumerates 8,192 query blocks, not 8,192 × 16,384 tile pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.expr import evaluate, table_env
from iosim.schedule import Compute, Kernel, Load, Loop, Schedule, Span, Store, full, walk

MAX_POINTS = 50_000_000  # enumerated (program, outer-iteration) points; beyond this counting refuses (bounded memory)


@dataclass(frozen=True)
class KernelCounts:
    """Totals for one kernel launch. *_bytes are SM ↔ global-memory (L2) traffic; flops are executed work.

    atomic_bytes: the part of write_bytes that atomic stores (``Store(atomic=True)``, fp32 RED) send to the L2; they
    are SM → L2 writes and return nothing to the SM, so they never count as SM read bytes."""

    name: str
    programs: int
    read_bytes: Mapping[str, int]
    write_bytes: Mapping[str, int]
    matmul_flops: int
    exp_ops: int
    other_flops: int
    sram_bytes: int
    atomic_bytes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    issued_matmul_flops: int | None = None  # matmul FLOPs on whole tiles (ragged edges padded): what the tensor cores
    # execute — an FA2 CTA of 128 query rows with 16 valid still issues 128-row MMAs (flash_fwd_kernel.h predicates
    # only its loads and stores); None: equal to matmul_flops

    @property
    def sm_atomic_bytes(self) -> int:
        return sum(self.atomic_bytes.values())

    @property
    def sm_read_bytes(self) -> int:
        return sum(self.read_bytes.values())

    @property
    def sm_write_bytes(self) -> int:
        return sum(self.write_bytes.values())

    @property
    def flops(self) -> int:
        """matmul + exp + other: every executed floating-point operation (an exp counts as one)."""
        return self.matmul_flops + self.exp_ops + self.other_flops


@dataclass(frozen=True)
class Counts:
    algorithm: str
    kernels: tuple[KernelCounts, ...]

    def _sum(self, attr: str) -> int:
        return sum(getattr(k, attr) for k in self.kernels)

    sm_read_bytes = property(lambda self: self._sum("sm_read_bytes"))
    sm_write_bytes = property(lambda self: self._sum("sm_write_bytes"))
    sm_atomic_bytes = property(lambda self: self._sum("sm_atomic_bytes"))
    matmul_flops = property(lambda self: self._sum("matmul_flops"))
    exp_ops = property(lambda self: self._sum("exp_ops"))
    other_flops = property(lambda self: self._sum("other_flops"))
    flops = property(lambda self: self._sum("flops"))

    def tensor_bytes(self, which: str) -> dict[str, int]:
        """Per-tensor totals over all kernels; which = 'read' or 'write'."""
        out: dict[str, int] = {}
        for k in self.kernels:
            for t, v in (k.read_bytes if which == "read" else k.write_bytes).items():
                out[t] = out.get(t, 0) + v
        return out


# --- quantities: what each statement contributes, as coeff × Π extent(span) -------------------------------------

def _quantities(stmt, schedule: Schedule):
    if isinstance(stmt, Load):
        yield ("read", stmt.tile.tensor), schedule.tensors[stmt.tile.tensor].elem_bytes, stmt.tile.spans
    elif isinstance(stmt, Store):
        yield ("write", stmt.tile.tensor), schedule.tensors[stmt.tile.tensor].elem_bytes, stmt.tile.spans
        if stmt.atomic:
            yield ("atomic", stmt.tile.tensor), schedule.tensors[stmt.tile.tensor].elem_bytes, stmt.tile.spans
    elif isinstance(stmt, Compute):
        for key, works in (("matmul", stmt.matmul), ("exp", stmt.exp), ("other", stmt.other)):
            for w in works:
                yield (key, ""), w.coeff, w.spans
        for w in stmt.matmul:  # the tensor cores run whole tiles: ragged rows/keys padded to the block
            yield ("matmul_issued", ""), w.coeff, tuple(full(s.block) for s in w.spans)


def _free(e) -> set:
    return sp.sympify(e).free_symbols


def _is_point(s: Span) -> bool:
    """A one-element span (batch or head index): extent 1 for every valid index, whatever the index expression."""
    return isinstance(s.block, int) and s.block == 1 or getattr(s.block, "is_Integer", False) and int(s.block) == 1


def _span_free(s: Span) -> set:
    """Symbols the span's extent depends on (none for a point span)."""
    if _is_point(s):
        return set()
    return _free(s.index) | _free(s.block) | _free(s.length)


def _prod_extents(spans, env, skip=None):
    out = 1
    for s in spans:
        if s is skip or _is_point(s):
            continue
        out = out * _extent(s, env)
    return out


def _extent(s: Span, env):
    L, B, k = evaluate(s.length, env), evaluate(s.block, env), evaluate(s.index, env)
    return _clip(L - k * B, 0, B)


def _clip(x, lo, hi):
    if isinstance(x, np.ndarray) or isinstance(lo, np.ndarray) or isinstance(hi, np.ndarray):
        return np.minimum(np.maximum(x, lo), hi)
    return min(max(x, lo), hi)


def _affine(index, v):
    """index = a·v + c with a = ±1 and c free of v → (a, c); else None."""
    e = sp.expand(sp.sympify(index))
    a = e.coeff(v)
    c = sp.expand(e - a * v)
    if a in (1, -1) and v not in c.free_symbols:
        return int(a), c
    return None


def _add(acc: dict, key, val) -> None:
    acc[key] = acc[key] + val if key in acc else val


class _Counter:
    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def block(self, stmts, env, npts) -> dict:
        acc: dict = {}
        for st in stmts:
            if isinstance(st, Loop):
                for k, v in self.loop(st, env, npts).items():
                    _add(acc, k, v)
            else:
                for key, coeff, spans in _quantities(st, self.schedule):
                    _add(acc, key, evaluate(coeff, env) * _prod_extents(spans, env))
        return acc

    def loop(self, lp: Loop, env, npts) -> dict:
        v = lp.var
        lo, hi = evaluate(lp.start, env), evaluate(lp.stop, env)
        trips = np.maximum(hi - lo, 0) if isinstance(hi - lo, np.ndarray) else max(hi - lo, 0)
        body_free: set = set()
        nested = False
        for st in walk(lp.body):
            if isinstance(st, Loop):
                nested = True
                body_free |= _free(st.start) | _free(st.stop)
            for _, coeff, spans in _quantities(st, self.schedule):
                body_free |= _free(coeff)
                for s in spans:
                    body_free |= _span_free(s)
        if v not in body_free:
            return {k: val * trips for k, val in self.block(lp.body, env, npts).items()}
        if not nested:
            closed = self._closed(lp, env, lo, hi, trips)
            if closed is not None:
                return closed
        return self._enumerate(lp, env, npts, lo, trips)

    def _closed(self, lp: Loop, env, lo, hi, trips):
        v = lp.var
        acc: dict = {}
        nonempty = (hi > lo)
        for st in lp.body:
            for key, coeff, spans in _quantities(st, self.schedule):
                if v in _free(coeff):
                    return None
                dep = [s for s in spans if v in _span_free(s)]
                c = evaluate(coeff, env)
                if not dep:
                    _add(acc, key, c * _prod_extents(spans, env) * trips)
                    continue
                if len(dep) > 1 or v in _free(dep[0].block) | _free(dep[0].length):
                    return None
                aff = _affine(dep[0].index, v)
                if aff is None:
                    return None
                a, off = aff
                off = evaluate(off, env)
                L, B = evaluate(dep[0].length, env), evaluate(dep[0].block, env)
                if a == 1:
                    kb, ka = hi + off, lo + off
                else:
                    kb, ka = off - lo + 1, off - hi + 1
                s = _clip(kb * B, 0, L) - _clip(ka * B, 0, L)
                s = s * nonempty if isinstance(nonempty, np.ndarray) else (s if nonempty else 0)
                _add(acc, key, c * _prod_extents(spans, env, skip=dep[0]) * s)
        return acc

    def _enumerate(self, lp: Loop, env, npts, lo, trips):
        trips_arr = np.broadcast_to(np.asarray(trips, dtype=np.int64), (npts,))
        total = int(trips_arr.sum())
        if total > MAX_POINTS:
            raise IosimError(f"schedule loop over {lp.var} expands to {total:,} points (limit {MAX_POINTS:,}); "
                             "this model needs a closed form for that loop")
        owner = np.repeat(np.arange(npts), trips_arr)
        starts = np.cumsum(trips_arr) - trips_arr
        offset = np.arange(total, dtype=np.int64) - starts[owner]
        lo_arr = np.broadcast_to(np.asarray(lo, dtype=np.int64), (npts,))
        new_env = {k: (val[owner] if isinstance(val, np.ndarray) else val) for k, val in env.items()}
        new_env[lp.var] = lo_arr[owner] + offset
        inner = self.block(lp.body, new_env, total)
        out = {}
        for k, val in inner.items():
            arr = np.broadcast_to(np.asarray(val, dtype=np.int64), (total,))
            cs = np.concatenate(([0], np.cumsum(arr)))
            ends = starts + trips_arr
            out[k] = cs[ends] - cs[starts]
        return out


def _total(v) -> int:
    return int(np.sum(v)) if isinstance(v, np.ndarray) else int(v)


def sram_bytes(kernel: Kernel, num_stages: int) -> int:
    """Shared memory one CTA needs: Σ smem buffers, pipelined ones × num_stages."""
    total = 0
    for b in kernel.buffers:
        if b.space == "smem":
            total += int(evaluate(b.bytes, {})) * (num_stages if b.pipelined else 1)
    return total


def count_kernel(schedule: Schedule, kernel: Kernel) -> KernelCounts:
    env: dict = table_env(getattr(schedule, "tables", None))  # data tables for lookup() bounds (block-sparse)
    npts = 1
    mult = 1
    used: set = set()
    for st in walk(kernel.body):
        if isinstance(st, Loop):
            used |= _free(st.start) | _free(st.stop)
        if isinstance(st, Store) and st.atomic and schedule.tensors[st.tile.tensor].elem_bytes != 4:
            raise IosimError(f"{kernel.name}: atomic store into {st.tile.tensor}, which is not fp32; atomics here "
                             f"are fp32 adds (make the tensor's elem_bytes 4)")
        for _, coeff, spans in _quantities(st, schedule):
            used |= _free(coeff)
            for s in spans:
                used |= _span_free(s)
    body = kernel.body
    # Grid axes no size depends on are multiplied; the others become loops around the body (inner ones last).
    for ax in reversed(kernel.grid):
        ext = int(evaluate(ax.extent, {}))
        if ax.var in used:
            body = (Loop(ax.var, 0, ext, body),)
        else:
            mult *= ext
    acc = _Counter(schedule).block(body, env, npts)
    tot = {k: _total(v) * mult for k, v in acc.items()}
    cfg = schedule.config
    return KernelCounts(
        name=kernel.name,
        programs=int(evaluate(kernel.num_programs, {})),
        read_bytes=MappingProxyType({t: v for (k, t), v in tot.items() if k == "read"}),
        write_bytes=MappingProxyType({t: v for (k, t), v in tot.items() if k == "write"}),
        matmul_flops=tot.get(("matmul", ""), 0),
        issued_matmul_flops=tot.get(("matmul_issued", ""), 0),
        exp_ops=tot.get(("exp", ""), 0),
        other_flops=tot.get(("other", ""), 0),
        sram_bytes=sram_bytes(kernel, getattr(cfg, "num_stages", 1)),
        atomic_bytes=MappingProxyType({t: v for (k, t), v in tot.items() if k == "atomic"}),
    )


def count(schedule: Schedule) -> Counts:
    """Counts of every kernel of the schedule (exact integers)."""
    return Counts(schedule.algorithm, tuple(count_kernel(schedule, k) for k in schedule.kernels))
