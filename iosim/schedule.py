"""Schedules: what every CTA (program) of every kernel loads, computes and stores, as loop nests over tiles.

A schedule is data, not code: loop bounds, tile positions and work amounts are sympy expressions in the grid and
loop variables (and, for the symbolic module, in symbolic problem sizes). Three consumers read the same object:

* ``iosim.counts`` sums it arithmetically (closed forms for the innermost loops; never per element);
* ``iosim.events`` expands it lazily, program by program, into ordered load/store events for the L2 model;
* ``iosim.reference`` executes it on NumPy arrays, and ``iosim.symbolic`` sums it with sympy.

Tile extents follow one rule along every axis: a ``Span(index, block, length)`` covers elements
``[index·block, min((index+1)·block, length))``, so ragged last tiles are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import Iterator, Union

import sympy as sp

from iosim.expr import Lookup

Expr = Union[sp.Expr, int]


def var(name: str) -> sp.Symbol:
    """A grid or loop variable: a nonnegative integer."""
    return sp.Symbol(name, integer=True, nonnegative=True)


def cdiv(a: Expr, b: Expr) -> Expr:
    """⌈a/b⌉ for positive b, exact for ints and symbolic for sympy expressions."""
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return sp.ceiling(sp.sympify(a) / b)


def clamp(x: Expr, lo: Expr, hi: Expr) -> Expr:
    if all(isinstance(v, int) for v in (x, lo, hi)):
        return min(max(x, lo), hi)
    return sp.Min(sp.Max(x, lo), hi)


@dataclass(frozen=True)
class Span:
    """Elements offset + [index·block, min((index+1)·block, length)) of one tensor axis; extent = clamp(length −
    index·block, 0, block). offset moves the tile without changing its extent (a varlen sequence packed at
    cu_seqlens[b], a paged KV block in its physical page); counting never reads it, addresses do."""

    index: Expr
    block: Expr
    length: Expr
    offset: Expr = 0
    gather: tuple | None = None  # (table symbol, *leading index exprs): element x of [start, start + extent) is
    # row tables[T][lead…, x] of the tensor axis (an index gather of scattered rows: S2O, AnchorAttention, NSA's
    # selected blocks); counts are unchanged (same extent), the L2 trace reads each gathered row as its own run,
    # the NumPy reference indexes the rows and masks by the gathered positions.
    positions: tuple | None = None  # (table symbol, *leading index exprs): the sequence positions of the rows for
    # causal/window masks when they differ from the rows read (a permuted copy K' = K[perm]: positions = perm);
    # None: the rows read (gathered or contiguous) are the positions. Only the NumPy reference reads it.

    @property
    def extent(self) -> Expr:
        return clamp(sp.sympify(self.length) - sp.sympify(self.index) * self.block, 0, self.block)

    @property
    def start(self) -> Expr:
        return sp.sympify(self.offset) + sp.sympify(self.index) * self.block


def full(length: Expr) -> Span:
    """The whole axis."""
    return Span(0, length, length)


def gathered(index: Expr, block: Expr, length: Expr, tbl: sp.Symbol, *lead: Expr, positions: tuple | None = None) -> Span:
    """Rows tables[tbl][lead…, index·block + x] for x < extent of an axis of ``length`` logical rows (an index
    gather; ``length`` bounds the logical index, the table maps it to a physical row)."""
    return Span(index, block, length, 0, (tbl, *lead), positions)


def point(index: Expr, length: Expr) -> Span:
    """One element (a batch or head index)."""
    return Span(index, 1, length)


@dataclass(frozen=True)
class TensorSpec:
    """A global-memory tensor: dims are extents (row-major, last dim contiguous), elem_bytes its element size.

    role: 'input' (read by the first kernel), 'output', or 'scratch' (written and read back by the algorithm).
    """

    name: str
    dims: tuple[Expr, ...]
    elem_bytes: int
    role: str


@dataclass(frozen=True)
class Tile:
    tensor: str
    spans: tuple[Span, ...]

    @property
    def elements(self) -> Expr:
        return reduce(lambda a, b: a * b, (s.extent for s in self.spans), sp.Integer(1))


@dataclass(frozen=True)
class Buffer:
    """An on-chip buffer of one tile. space: 'smem' (counts toward shared memory) or 'reg' (registers).

    pipelined buffers are multi-buffered num_stages times (software pipelining of loads, as Triton and FA3 do).
    transient register buffers live only between two computes (P = exp(S − m) in the input dtype, the A operand of
    the PV MMA): they take registers (occupancy), but the compiler can form them piecewise from a dying buffer, so
    they do not make a kernel spill (``iosim.occupancy.registers_per_thread``).
    """

    name: str
    shape: tuple[Expr, ...]
    elem_bytes: int
    space: str = "smem"
    pipelined: bool = False
    transient: bool = False

    @property
    def bytes(self) -> Expr:
        return reduce(lambda a, b: a * b, self.shape, sp.Integer(1)) * self.elem_bytes


@dataclass(frozen=True)
class Work:
    """coeff × Π extent(span): an amount of arithmetic proportional to tile sizes."""

    coeff: Expr
    spans: tuple[Span, ...] = ()

    @property
    def value(self) -> Expr:
        return reduce(lambda a, b: a * b, (s.extent for s in self.spans), sp.sympify(self.coeff))


@dataclass(frozen=True)
class Load:
    """HBM → on-chip: the tile's elements are read from global memory into ``buffer``."""

    buffer: str
    tile: Tile


@dataclass(frozen=True)
class Store:
    """On-chip → HBM: ``buffer`` is written to the tile. atomic: an fp32 atomic add (``red.global.add``) of the buffer
    into the tile instead of a plain write (FA2's dQ accumulation, flash_bwd_kernel.h): SM → L2 bytes like a write, no
    bytes back to the SM, a read-modify-write at the L2."""

    buffer: str
    tile: Tile
    atomic: bool = False


@dataclass(frozen=True)
class Compute:
    """On-chip arithmetic. ``op`` names the step for the NumPy executor; ``args`` the buffers it touches.

    matmul: tensor-core FLOPs (2 per multiply-add); exp: special-function evaluations; other: remaining
    elementwise FLOPs (max, subtract, sum, rescale), counted as in each model's docstring.
    """

    op: str
    args: tuple[str, ...]
    matmul: tuple[Work, ...] = ()
    exp: tuple[Work, ...] = ()
    other: tuple[Work, ...] = ()


@dataclass(frozen=True)
class Loop:
    """for var in range(start, stop) (reverse=True walks it from stop−1 down to start)."""

    var: sp.Symbol
    start: Expr
    stop: Expr
    body: tuple["Stmt", ...]
    reverse: bool = False


Stmt = Union[Load, Store, Compute, Loop]


@dataclass(frozen=True)
class GridAxis:
    """One grid dimension: ``var`` runs over range(extent). ``name`` is 'm', 'n', 'b', 'h' or 'bh'."""

    name: str
    var: sp.Symbol
    extent: Expr


@dataclass(frozen=True)
class Kernel:
    """One launch. grid[0] is the fastest-varying axis (blockIdx.x): CTAs are handed out in that order."""

    name: str
    grid: tuple[GridAxis, ...]
    buffers: tuple[Buffer, ...]
    body: tuple[Stmt, ...]
    threads_per_cta: int = 128
    regs_per_thread: int | None = None  # measured registers of this launch (ncu); None: the preset's or estimated
    smem_bytes: int | None = None  # measured dynamic shared memory per CTA (ncu); None: the schedule's smem buffers
    persistent: bool = False  # one CTA per resident slot, each looping over work items (grid = workers; FA3, cuDNN)
    pipeline: str | None = None  # warp specialization: None (every warp loads and computes), "ws" (producer warps
    # load, consumer warpgroups compute; FA3 arXiv 2407.08608 §3.1), "ws-pingpong" (two consumer warpgroups alternate
    # softmax and MMAs, FA3 §3.1), "ws-2cta" (FA4 arXiv 2603.05451: a 2-CTA MMA pair shares K/V, tensor memory)
    cluster: int = 1  # CTAs of a cluster that share operand tiles (FA4's 2-CTA MMA: 2)
    static_items: bool = False  # persistent, items assigned before launch (item t to worker t mod W): the L2 model
    # runs its workers on the L2-coupled timeline (iosim.memory.coupled), not a fixed one

    @property
    def num_programs(self) -> Expr:
        return reduce(lambda a, b: a * b, (g.extent for g in self.grid), sp.Integer(1))

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)


def table(name: str) -> sp.Symbol:
    """The symbol naming a data table of a schedule (``Schedule.tables[name]``), for ``lookup``."""
    return sp.Symbol(name)


def lookup(tbl: sp.Symbol, *index: Expr) -> sp.Expr:
    """tables[tbl][index…] as a schedule expression: data-dependent loop bounds and tile indices (block-sparse
    kv_num_blocks / kv_indices, FlexAttention-style). Evaluated exactly by ``iosim.expr``."""
    return Lookup(tbl, *index)


@dataclass(frozen=True)
class Schedule:
    """An algorithm's kernels in launch order, over its global tensors.

    tables: integer arrays that ``lookup`` expressions in the schedule index (name → array); empty for
    schedules whose loops depend only on sizes.
    """

    algorithm: str
    problem: object  # iosim.problem.Problem
    config: object  # iosim.problem.KernelConfig
    tensors: dict[str, TensorSpec]
    kernels: tuple[Kernel, ...]
    notes: tuple[str, ...] = field(default=())
    tables: dict = field(default_factory=dict)


def walk(stmts: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """Every statement, depth first (loops before their bodies)."""
    for s in stmts:
        yield s
        if isinstance(s, Loop):
            yield from walk(s.body)
