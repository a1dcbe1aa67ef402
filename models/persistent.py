"""Persistent kernels as schedules: a grid of workers, a tile scheduler, and per-worker loops over work items.

No new statement types: the grid is (workers,), the body a ``Loop`` over the worker's items k ∈ [0, count[w]), and
each item's tile coordinates are ``lookup``s into per-worker tables (``Schedule.tables``) that a scheduler function
below builds on the host, as FA3/FA4/cuDNN/LeanAttention compute them on the device. Counting, the L2 trace, the
NumPy reference and the symbolic module read these loops like any data-dependent loop (block-sparse's).

Schedulers (plain functions → tables):
* ``static_round_robin`` — item t to worker t mod W, in order (FA3 ``hopper/tile_scheduler.hpp``:
  ``StaticPersistentTileScheduler``, tile_idx = blockIdx.x + k·gridDim.x).
* ``lpt_order`` — longest processing time first (stable sort by cost, non-increasing).
* ``l2_swizzle`` — FA3's causal tile order (``DynamicPersistentTileScheduler::to_underlying_arguments`` and
  ``get_block_coord``): (batch, head) pairs cut into sections of ``swizzle`` heads, swizzle = the largest power of two
  of heads whose K+V fit an L2 budget (32 MiB), × the GQA ratio; inside a section the tiles cycle over its heads at
  one query block, query blocks reversed (LPT: the longest causal rows first).
* ``natural_order`` — query block fastest, then batch, then head (CUTLASS ``examples/88_hopper_fmha/kernel/
  fmha_tile_scheduler.hpp`` ``PersistentTileScheduler::get_block_coord``; cudnn-frontend's SCHED_NATURAL decode).
* ``lpt_l2_order`` — cuDNN's causal order (NVIDIA/cudnn-frontend ``python/cudnn/sdpa/fwd``: ``lpt_l2_tile_coords``,
  chosen for causal graphs by ``heuristics._sched_points``): KV-head groups cut into blocks whose K+V fit an L2
  budget (50 MiB, ``_SCHED_L2_BUDGET_BYTES``), inside a block query blocks reversed (LPT), then the query heads of
  a group, then the groups.
* ``dynamic_assign`` — the atomic tile counter (``DynamicPersistentTileScheduler::get_next_work``): each next item of
  an order goes to the worker that frees first, by modelled cost (ties: lowest worker, as blockIdx.x starts). The
  workers' busy times must be those of the L2 timeline (``timeline_speeds``, ``item_ticks``): the timeline runs
  each persistent worker at its own drift speed (``iosim.memory.scheduler.cta_speeds``), and an assignment made at
  unit speed then runs its items out of order — a worker 3% slow over a 16,000-tick kernel ends up 500 ticks (a
  whole 64K head's KV walk) behind the CTAs that took the neighbouring items, which on the GPU it never is, because
  the counter gives a slow CTA fewer items (tests/test_cudnn_order.py).
* ``stream_k`` — LeanAttention (arXiv 2405.10480; onnxruntime ``contrib_ops/cuda/bert/lean_attention/lean_api.cc``
  ``get_num_splits_and_buffer_sizes``, ``lean_fwd_kernel.h`` ``lean_compute_attn_impl_ver3``): the KV tiles of all
  output tiles form one stream; the first ``high_load_tbs`` workers take ⌈total/W⌉ tiles, the rest one fewer; a
  worker's range cut at output-tile boundaries gives its segments.

``worker_kernel`` wraps FA2's forward inner loop (``models/flash2.py``: ``kv_loops``, ``finalize``, ``buffers``) into
a persistent kernel given a ``WorkTable`` of (query block, batch, head) items. Each item starts with ``reset``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import q_tile, row_tile
from iosim.problem import KernelConfig, Problem
from iosim.schedule import Compute, GridAxis, Kernel, Load, Loop, Span, Store, lookup, table, var


@dataclass(frozen=True)
class WorkTable:
    """count[w]: items of worker w; item[w, k]: its k-th item (0-padded past count)."""

    count: np.ndarray
    item: np.ndarray

    @staticmethod
    def of(lists: list[list[int]]) -> "WorkTable":
        width = max(1, max((len(x) for x in lists), default=1))
        item = np.zeros((len(lists), width), dtype=np.int64)
        for w, xs in enumerate(lists):
            item[w, :len(xs)] = xs
        return WorkTable(np.array([len(x) for x in lists], dtype=np.int64), item)


def _check_workers(workers) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise IosimError(f"workers={workers!r}: give a positive integer (persistent CTAs, usually the SM count)")


def static_round_robin(num_items: int, workers: int) -> WorkTable:
    """Item t to worker t mod W, each worker's items ascending (FA3/FA4 StaticPersistentTileScheduler)."""
    _check_workers(workers)
    return WorkTable.of([list(range(w, num_items, workers)) for w in range(workers)])


def lpt_order(cost) -> np.ndarray:
    """Item ids by non-increasing cost (longest processing time first); ties keep id order."""
    return np.argsort(-np.asarray(cost), kind="stable").astype(np.int64)


def fa3_swizzle(seq_kv: int, head_dim: int, elem_bytes: int, group: int, l2_bytes: int = 32 * 2 ** 20) -> int:
    """Heads per L2 section (DynamicPersistentTileScheduler::to_underlying_arguments): one KV head's K+V is
    seqlen_k·(d + dv)·elem bytes; swizzle = 1 if it exceeds the budget, else the largest power of two ≤ budget/size;
    × qhead_per_khead (not PackGQA)."""
    one = seq_kv * 2 * head_dim * elem_bytes
    return (1 if l2_bytes < one else 1 << int(math.floor(math.log2(l2_bytes // one)))) * group


def l2_swizzle(num_m_blocks: int, heads: int, batch: int, swizzle: int) -> np.ndarray:
    """FA3's causal tile order as item ids (b·H + h)·M + m: position t decodes (get_block_coord) to section
    t // (swizzle·M), then query block and head inside the section (the last, residual section divides by its own
    head count), query block reversed (M − 1 − block: LPT)."""
    t = np.arange(num_m_blocks * heads * batch, dtype=np.int64)
    hb_total = heads * batch
    quotient, rem = hb_total // swizzle, hb_total % swizzle
    section, within = t // (swizzle * num_m_blocks), t % (swizzle * num_m_blocks)
    div = np.where(section < quotient, swizzle, max(rem, 1))
    block, resid = within // div, within % div
    hb = section * swizzle + resid
    return hb * num_m_blocks + (num_m_blocks - 1 - block)


def dynamic_assign(order, cost, workers: int, speed=None) -> WorkTable:
    """The atomic tile counter: items in ``order`` go one by one to the worker whose modelled busy time (Σ cost of
    its items × its time per unit cost, ``speed[w]``, 1 without) ends first; ties to the lowest worker (the first W
    items go to workers 0..W−1, get_initial_work). Pass the L2 timeline's speeds (``timeline_speeds``) and costs in
    its ticks (``item_ticks``) so that the items start in ``order`` on that timeline, as the counter hands them out."""
    _check_workers(workers)
    cost = np.asarray(cost)
    if speed is None:
        heap = [(0, w) for w in range(workers)]
        step = [1] * workers
    else:
        step = np.asarray(speed, dtype=np.float64).tolist()
        if len(step) != workers or not all(x > 0 for x in step):
            raise IosimError(f"dynamic_assign: speed needs one positive time per cost unit for each of the {workers} "
                             "workers")
        heap = [(0.0, w) for w in range(workers)]
    lists: list[list[int]] = [[] for _ in range(workers)]
    for it in np.asarray(order).tolist():
        t, w = heapq.heappop(heap)
        lists[w].append(it)
        heapq.heappush(heap, (t + int(cost[it]) * step[w], w))
    return WorkTable.of(lists)


def timeline_speeds(workers: int, kv_order: str) -> np.ndarray:
    """Expected time per tick of each persistent worker on the L2 timeline: 1 for every worker. The timeline draws
    the speed spread per work item (``iosim.memory.scheduler.timeline`` with ``work_items``: a worker's lag grows
    like σ·√k, not σ·k), so every worker has the same expected speed and the dynamic tile counter assigns as at unit
    speed. (Before the per-item timeline, each worker kept one drifting speed for the whole kernel and this gave
    those speeds.) kv_order is kept for callers; it no longer changes the answer."""
    _check_workers(workers)
    return np.ones(workers)


def item_ticks(kv_blocks) -> np.ndarray:
    """Timeline ticks of ``worker_kernel`` items with these KV trip counts: one per KV block and one for the item's
    own Q load / O store (``iosim.memory.trace.kernel_durations``: a worker lasts 1 + Σ (blocks + 1) ticks)."""
    return np.asarray(kv_blocks, dtype=np.int64) + 1


def natural_order(num_m_blocks: int, heads: int, batch: int) -> np.ndarray:
    """Item ids (b·H + h)·M + m in launch order: query block fastest, then batch, then head (CUTLASS example 88
    ``PersistentTileScheduler::get_block_coord``: divmod m_block, then b, then h)."""
    t = np.arange(num_m_blocks * heads * batch, dtype=np.int64)
    m, b, h = t % num_m_blocks, (t // num_m_blocks) % batch, t // (num_m_blocks * batch)
    return (b * heads + h) * num_m_blocks + m


def static_order(order, workers: int) -> WorkTable:
    """Position t of ``order`` to worker t mod W, in order (a static persistent scheduler over a decoded order)."""
    _check_workers(workers)
    order = np.asarray(order, dtype=np.int64)
    return WorkTable.of([order[w::workers].tolist() for w in range(workers)])


CUDNN_L2_BUDGET_BYTES = 50 * 2 ** 20
"""cudnn-frontend's causal L2 budget (``_SCHED_L2_BUDGET_BYTES = 50 * 1024 * 1024``, python/cudnn/sdpa/fwd): the
K+V bytes of the KV-head groups one LPT_L2 block holds."""


def lpt_l2_order(num_m_blocks: int, heads: int, kv_heads: int, batch: int, seq_kv: int, kv_bytes_per_row: int,
                 l2_bytes: int = CUDNN_L2_BUDGET_BYTES, active: int | None = None) -> np.ndarray:
    """cuDNN's SCHED_LPT_L2 order as item ids (b·H + h)·M + m (cudnn-frontend ``lpt_l2_tile_coords``): groups =
    (KV head, batch) pairs, KV head fastest; a block holds active = clamp(l2_bytes // (seq_kv · kv_bytes_per_row),
    1, groups) groups (the last block the rest); inside a block, position → (row rank, Q head of the group, group),
    group fastest, and query block = M − 1 − row rank (LPT: the longest causal rows first). active: groups per
    block given directly (clamped to [1, groups]) instead of from l2_bytes."""
    if heads % kv_heads:
        raise IosimError(f"lpt_l2_order: heads={heads} is not a multiple of kv_heads={kv_heads}")
    g = heads // kv_heads
    groups = kv_heads * batch
    if active is None:
        active = l2_bytes // max(seq_kv * kv_bytes_per_row, 1)
    active = min(max(int(active), 1), groups)
    per_block = active * num_m_blocks * g
    num_blocks = -(-groups // active)
    t = np.arange(num_m_blocks * heads * batch, dtype=np.int64)
    blk, within = t // per_block, t % per_block
    eff = np.where(blk + 1 == num_blocks, groups - blk * active, active)
    rank, in_rank = within // (eff * g), within % (eff * g)
    sub, grp = in_rank // eff, in_rank % eff + blk * active
    kvh, b = grp % kv_heads, grp // kv_heads
    return (b * heads + kvh * g + sub) * num_m_blocks + (num_m_blocks - 1 - rank)


@dataclass(frozen=True)
class StreamK:
    """LeanAttention's segments, per worker w and segment k (0-padded past count[w]): output tile ``tile``, KV tiles
    [lo, hi) of it, ``split`` = w − (the worker holding the tile's KV tile 0), ``host`` = 1 if lo == 0 (that worker
    reduces the tile), ``splits`` = workers sharing the tile (on host segments; else 0)."""

    count: np.ndarray
    tile: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    split: np.ndarray
    host: np.ndarray
    splits: np.ndarray
    per_worker: np.ndarray  # KV tiles of each worker


def stream_k(tiles_per_output, workers: int) -> StreamK:
    """Split the stream of Σ tiles_per_output KV tiles over ``workers``: worker w < high_load_tbs takes
    max_tiles_per_tb = ⌈total/W⌉ consecutive tiles, the others one fewer (lean_api.cc); each worker's range is cut at
    output-tile boundaries into segments."""
    _check_workers(workers)
    per = np.asarray(tiles_per_output, dtype=np.int64)
    if per.ndim != 1 or per.size == 0 or (per < 1).any():
        raise IosimError("stream_k: tiles_per_output must be a nonempty list of positive KV tile counts")
    total = int(per.sum())
    if workers > total:
        raise IosimError(f"stream_k: {workers} workers for {total} KV tiles; use at most {total} (lean_api.cc caps "
                         "the grid at total_tiles)")
    mx = -(-total // workers)
    high = total - (mx - 1) * workers
    load = np.where(np.arange(workers) < high, mx, mx - 1)
    start = np.concatenate([[0], np.cumsum(load)])
    first = np.concatenate([[0], np.cumsum(per)])  # global index of each output tile's KV tile 0
    owner = np.searchsorted(start, first[:-1], side="right") - 1  # worker holding each tile's KV tile 0
    last = np.searchsorted(start, first[1:] - 1, side="right") - 1
    segs: list[list[tuple]] = [[] for _ in range(workers)]
    for w in range(workers):
        g, end = int(start[w]), int(start[w + 1])
        while g < end:
            t = int(np.searchsorted(first, g, side="right") - 1)
            lo, hi = g - int(first[t]), min(end, int(first[t + 1])) - int(first[t])
            host = lo == 0
            segs[w].append((t, lo, hi, w - int(owner[t]), int(host), int(last[t] - owner[t] + 1) if host else 0))
            g += hi - lo
    width = max(len(s) for s in segs)
    arr = np.zeros((6, workers, width), dtype=np.int64)
    for w, ss in enumerate(segs):
        for k, s in enumerate(ss):
            arr[:, w, k] = s
    return StreamK(np.array([len(s) for s in segs], dtype=np.int64), *arr, per_worker=load.astype(np.int64))


def reset(kernel_buffers) -> Compute:
    """Per work item: every buffer fresh again (O = 0, ℓ = 0, m = −∞, tiles placed anew), the per-tile prologue of a
    persistent kernel; no counted work."""
    return Compute("reset", tuple(b.name for b in kernel_buffers))


def item_tables(work: WorkTable, tm: int, heads: int) -> dict:
    """Per-worker (query block, head, batch) of item ids (b·H + h)·T_m + m, as the lookup tables of ``worker_kernel``."""
    it = work.item
    return {"work_count": work.count, "work_m": it % tm, "work_h": (it // tm) % heads, "work_b": it // (tm * heads)}


def worker_kernel(name: str, p: Problem, cfg: KernelConfig, work: WorkTable, **kernel_fields) -> tuple[Kernel, dict]:
    """A persistent FA2-style forward: worker w loops over its items k; item (m, b, h) loads Q_m, walks its KV
    blocks (``flash2.kv_loops``: causal stop, cfg.kv_order), writes O_m and LSE_m. Returns (kernel, tables)."""
    bm, bn = cfg.block_m, cfg.block_n
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    w, k, j = var("worker"), var("item"), var("j")
    i, b, h = (lookup(table(f"work_{c}"), w, k) for c in "mbh")
    rows = Span(i, bm, p.seq_q)
    bufs = flash2.buffers(bm, bn, p.head_dim, p.elem_bytes)
    body = (Loop(k, 0, lookup(table("work_count"), w), (
        reset(bufs),
        Load("q", q_tile(p, "Q", b, h, rows)),
        *flash2.kv_loops(p, cfg, b, h, i, rows, j, bm, bn, tn),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
        Store("lse", row_tile(p, "LSE", b, h, rows)),
    )),)
    kernel = Kernel(name, (GridAxis("n", w, len(work.count)),), bufs, body, persistent=True, **kernel_fields)
    return kernel, item_tables(work, tm, p.heads)


def concrete(p: Problem, algorithm: str) -> None:
    """Persistent schedules need concrete sizes: their tables are built from them."""
    if not all(isinstance(getattr(p, n), int) for n in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim")):
        raise IosimError(f"{algorithm}: needs concrete sizes (its tile scheduler's tables are built from them)")


def workers_of(hw, default: int = 132) -> int:
    """Persistent grid size: the chip's SM count (FA3 params.num_sm with sm_margin 0), 132 (an H100) without one."""
    return int(hw.sm_count) if hw is not None else default
