"""The compiled core of the L2 (``iosim.memory.l2``): the same exact model, one access at a time, with numba.

Sets are independent, so processing the accesses in array order gives every set its own sequence in order, the same
as the per-set lockstep of ``iosim.memory.l2.simulate_lines``; "step" t (replacement stamps, the ``random`` hash) is the
access's position in its set's sequence (plus ``t0``, ``iosim.memory.l2stream``'s chunk offset) and the ``random`` hash sees
the row the lockstep gives the set (``hrow``), so every policy, sector, partition and way-spread rule gives
bit-identical counts (tests/test_l2_jit.py compares both paths on random traces). Semantics are those of
``iosim.memory.l2._State`` (the general NumPy loop): see its ``_cand``, ``_update``, ``access`` and ``access2``, including
its handling of a store that misses near with ``store_allocate=False`` and ``store_near`` (the near way it would
have taken loses its dirty sectors, and the store is sent to DRAM by both partitions).

Two state layouts, flat over (row, partition, way):
* recency order (``lru``, ``fifo``, ``lip`` with ≤ 8 sectors per line, the calibrated profiles' case): the ways of a
  (row, partition) are kept in victim order, most recently used (lru/lip) or inserted (fifo) first, one int64 per way
  E = line·2^16 | valid sectors·2^8 | dirty sectors (−1 empty), and CAP its enabled ways (``way_spread``); a row
  holds a multiple of 8 entries from a 64-B boundary (those past CAP stay empty and unread). A victim
  is the last of the CAP, a fill of lip goes last (its stamp −(t+2) is below every other), other fills and lru/lip
  hits move to the front: the same victims as the stamps below (unique per set), with one cache line of state per
  8 ways instead of five arrays (4–10× fewer cache misses on an H100-sized L2). A lookup compares 8 ways at once
  (``_eq8``: one vector load, ~25 % less time per access when the state fits in the CPU's cache, as with sampling).
  Large line traces of one partition and kernel (lru, fifo) go through ``_blocks_kernel``: grouped by blocks of 64
  rows, a chunk at a time, each access one compare of the whole row and one vector shift of it, branch-free.
* stamps (every other policy, or more than 8 sectors): tags T (−1 invalid, ``DISABLED`` a way switched off by the
  way spread), stamps S (last use for lru/mru/random/lip: fills of lip at −(t+2); insertion for fifo; the RRPV for
  srrip/brrip), valid and dirty sector masks V and D, and per (row, partition) B (plru tree bits or the brrip fill
  count).
Both keep K, the kernel that last dirtied each line.

Parallelism: the rows are split into ``threads`` contiguous blocks and each thread walks the whole chunk in order,
simulating only the accesses of its rows (``numba.prange``; the line path gathers them ``_BLOCK`` at a time without
branches first): every set still sees its accesses in order, so the
counts are those of one thread (tests/test_l2_jit.py). The range path (``run_ranges``) walks byte ranges and their
(sampled) lines itself: set index, home partition, sector masks and the DRAM fetch granule as
``iosim.memory.l2.L2Geometry.set_index``, ``home``, ``expand_lines`` and ``widen_loads``, without per-line arrays.
"""

from __future__ import annotations

import functools
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.cpython.unsafe.numbers import trailing_zeros

from iosim.errors import IosimError
from iosim.memory.l2 import DISABLED, HASHES, POLICIES, _plru_tables, _popcount

LRU, FIFO, MRU, RANDOM, PLRU, SRRIP, BRRIP, LIP = (POLICIES.index(p) for p in
                                                   ("lru", "fifo", "mru", "random", "plru", "srrip", "brrip", "lip"))
_BIG = np.iinfo(np.int64).max // 4
# slots of the scalar counters the kernel accumulates
_COUNTERS = ("hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors",
             "fabric_reads", "accesses")
_ERR = 8      # counter slot flagging a line number outside 0 … 2^47 (the recency layout's tag field)
_PAD = 16     # per-thread counter rows padded to 128 B: no false sharing between threads
MAX_LINE = 1 << 47
if "NUMBA_THREADING_LAYER" not in os.environ:
    # workqueue survives fork(); GNU OpenMP, numba's first choice where TBB is missing, aborts a forked child that
    # runs a parallel loop after its parent did (iosim.parallel's process pools fork)
    numba.config.THREADING_LAYER = "workqueue"
_BLOCK = 4096   # accesses a thread sifts for its own rows before simulating them
PARALLEL_MIN = 100_000   # accesses (or ranges) below which one thread runs the chunk (thread start-up ~ 20 µs)
_RB_SHIFT = 6   # rows of a block of ``_blocks_kernel``: 2^6 = 64 (≤ 128), their ways in the first-level cache
_ROW_BLOCK = 1 << _RB_SHIFT
_ROW_WAYS_MAX = 64   # physical ways up to which ``_blocks_kernel`` holds a row as one vector
_GROUP_CHUNK = 1 << 18   # accesses ``_blocks_kernel`` groups at a time (≤ 2^18: its packed counters)
GROUP_MIN = 100_000   # accesses (and at least one per row) from which ``CompiledState.run`` groups them by row first


@njit(cache=True)
def _pc(x):
    """Set bits of a mask below 2^32."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


@njit(cache=True)
def _lookup(T, S, B, lo, si, col0, W, x, pol, t, hr, L):
    """Way (0 … W−1) of the partition whose ways start at flat index lo that line x takes, and whether it hits:
    the way holding x, else ``_State._cand``'s first largest victim preference: the first invalid way (lines are
    never invalidated and fills take the first invalid way, so the valid ways of a partition are a prefix and no
    line sits beyond an invalid way), else by policy, never a way switched off. The policy branches stay outside
    the loops over ways (inside, they cost ~4× the time per access)."""
    for j in range(W):
        tg = T[lo + j]
        if tg == x:
            return j, True
        if tg == -1:
            return j, False
    if pol == PLRU:   # the tree's victim (``_plru_tables``' follow); plru has no switched-off ways
        bits = B[si]
        node = 0
        for _ in range(L):
            node = 2 * node + 1 + ((bits >> node) & 1)
        return node - (W - 1), False
    best = -_BIG - 1
    bj = 0
    if pol == LRU or pol == FIFO or pol == LIP:   # the smallest stamp
        for j in range(W):
            c = -S[lo + j] if T[lo + j] != DISABLED else -_BIG
            if c > best:
                best, bj = c, j
    elif pol == RANDOM:   # a hash of step, row and column
        for j in range(W):
            c = ((t * 0x9E3779B1 + hr * 0x85EBCA77 + (col0 + j) * 0xC2B2AE3D) * 0x27D4EB2F) >> 20 & 0xFFFF
            if T[lo + j] != DISABLED and c > best:
                best, bj = c, j
    else:   # mru (the largest stamp), srrip and brrip (the largest RRPV)
        for j in range(W):
            c = S[lo + j] if T[lo + j] != DISABLED else -_BIG
            if c > best:
                best, bj = c, j
    return bj, False


@njit(cache=True)
def _install(T, S, V, D, K, B, lo, si, j, W, hit, x, s, w, k, t, pol, touch, PM, PV):
    """``_State._update`` for one access: line x into way j of the partition at lo (state index si). Returns
    (fetched sectors, written-back sectors, their kernel, evicted)."""
    i = lo + j
    old_tag = T[i]
    old_s = S[i]
    ev = (not hit) and old_tag >= 0
    d_old = D[i]
    v_old = V[i] if hit else 0
    fetched = 0 if w else s & ~v_old
    V[i] = v_old | s
    wb = d_old if ev else 0
    T[i] = x
    keep = (not touch) and hit and w   # pycachesim: a store hit leaves the replacement state alone
    if pol == FIFO:
        if not hit:
            S[i] = t
    elif pol == LRU or pol == MRU or pol == RANDOM:
        if not keep:
            S[i] = t
    elif pol == LIP:
        if not keep:
            S[i] = t if hit else -(t + 2)
    elif pol == PLRU:
        if not keep:
            B[si] = (B[si] & ~PM[j]) | PV[j]
    else:   # srrip / brrip
        if ev:   # age the partition until the victim's RRPV is 3
            for jj in range(W):
                S[lo + jj] += 3 - old_s
        ins = 2
        if pol == BRRIP:
            f = B[si]
            if ((((f + 1) * 0x9E3779B1) & 0xFFFFFFFF) >> 27) != 0:
                ins = 3
            if not hit:
                B[si] = f + 1
        if not keep:
            S[i] = 0 if hit else ins
    D[i] = (d_old if hit else 0) | (s if w else 0)
    k_old = K[i]
    K[i] = k if w else (k_old if hit else 0)
    return fetched, wb, k_old, ev




@njit(cache=True, inline="always")
def _stamp_access(T, S, V, D, K, B, PM, PV, W, L, r, hr, t, x, s, w, k, q, h, a, kr, kw, kh, pol, P, touch, alloc):
    """One access on the stamp layout (``_State.access``/``access2``): counters into a (``_COUNTERS``) and k*;
    returns the DRAM sectors it read."""
    C = W * P
    lo = r * C + q * W
    jq, hit = _lookup(T, S, B, lo, r * P + q, q * W, W, x, pol, t, hr, L)
    fwd = False
    lo2, jh, hit2 = lo, 0, False
    # the home partition is asked when the near copy misses, lacks requested sectors, or for a store
    if P > 1 and h != q and (w or not hit or (s & ~V[lo + jq]) != 0):
        fwd = True
        lo2 = r * C + h * W
        jh, hit2 = _lookup(T, S, B, lo2, r * P + h, h * W, W, x, pol, t, hr, L)
    if w and not hit and not alloc:   # no store allocation: the store goes straight to DRAM
        f, wb, wk, ev = 0, s, k, False
    else:
        f, wb, wk, ev = _install(T, S, V, D, K, B, lo, r * P + q, jq, W, hit, x, s, w, k, t, pol, touch, PM, PV)
    if P > 1 and w and h != q:   # a store issued near leaves a clean copy there; the home copy is dirty
        D[lo + jq] = 0
    if fwd:
        if w and not hit2 and not alloc:
            f2, wb2, wk2, ev2 = 0, s, k, False
        else:
            f2, wb2, wk2, ev2 = _install(T, S, V, D, K, B, lo2, r * P + h, jh, W, hit2, x, s, w, k, t, pol, touch,
                                         PM, PV)
        f = f2   # the home copy supplies what it holds, DRAM the rest
        _tally_second(a, kw, hit2, ev2, wb2, wk2)
    return _tally(a, kr, kw, kh, hit, ev, wb, wk, f, w, k, touch)


@njit(cache=True, inline="always")
def _tally_second(a, kw, hit2, ev2, wb2, wk2):
    a[6] += hit2
    a[2] += ev2
    a[3] += ev2 and wb2 != 0
    n2 = _pc(wb2)
    a[5] += n2
    kw[wk2] += n2


@njit(cache=True, inline="always")
def _tally(a, kr, kw, kh, hit, ev, wb, wk, f, w, k, touch):
    if hit:
        if touch or not w:
            a[0] += 1
            kh[k] += 1
    else:
        a[1] += 1
    a[2] += ev
    a[3] += ev and wb != 0
    nfa = _pc(f)
    a[4] += nfa
    kr[k] += nfa
    nw = _pc(wb)
    a[5] += nw
    kw[wk] += nw
    return nfa


@intrinsic
def _eq8(typingctx, arr, i, x):
    """Bits l (0 … 7): (arr[i + l] ≫ 16) = x; bits 8 + l: arr[i + l] ≥ 0, for the 8 int64 at i, compared at once
    (one vector load and two compares; the recency layout's state has 8 entries of padding at its end)."""
    def codegen(context, builder, sig, args):
        ary, idx, xv = args
        i64, vt = ir.IntType(64), ir.VectorType(ir.IntType(64), 8)
        p = builder.bitcast(builder.gep(context.make_array(sig.args[0])(context, builder, ary).data, [idx]),
                            vt.as_pointer())
        v = builder.load(p, align=8)
        xs = builder.insert_element(ir.Constant(vt, ir.Undefined), xv, ir.Constant(ir.IntType(32), 0))
        xs = builder.shuffle_vector(xs, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
        eq = builder.icmp_signed("==", builder.ashr(v, ir.Constant(vt, [16] * 8)), xs)
        ge = builder.icmp_signed(">=", v, ir.Constant(vt, [0] * 8))
        m = builder.zext(builder.bitcast(eq, ir.IntType(8)), i64)
        return builder.or_(m, builder.shl(builder.zext(builder.bitcast(ge, ir.IntType(8)), i64), ir.Constant(i64, 8)))
    return types.int64(types.Array(types.int64, 1, "C"), types.int64, types.int64), codegen


@intrinsic
def _popc(typingctx, x):
    """Set bits of an int64 (one ``popcnt``)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), [ir.IntType(64)]),
                                            "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])
    return types.int64(types.int64), codegen


@njit(cache=True, inline="always")
def _mtf_find(E, lo, cap, x):
    """Position of line x among the recency-ordered ways at lo and whether it is there; on a miss the number of
    valid ways (lines are never invalidated, so they are a prefix), cap when all are. Eight ways at a time."""
    for c in range(0, cap, 8):
        m = _eq8(E, lo + c, x)
        lim = (np.int64(1) << min(8, cap - c)) - 1
        if m & lim:
            return c + trailing_zeros(m & lim), True
        vl = (m >> 8) & lim
        if vl != lim:
            return c + trailing_zeros(~vl), False
    return cap, False


@njit(cache=True, inline="always")
def _mtf_put(E, K, lo, j, cap, hit, x, s, w, k, pol, touch, multi):
    """``_install`` on the recency layout: line x (at position j, or missing with j valid ways) into the ways at lo.
    Returns (fetched sectors, written-back sectors, their kernel, evicted, the line's new position)."""
    if hit:
        e = E[lo + j]
        v = (e >> 8) & 0xFF
        f = 0 if w else s & ~v
        ne = (x << 16) | ((v | s) << 8) | (e & 0xFF) | (s if w else 0)
        kk = (k if w else K[lo + j]) if multi else 0
        if pol == FIFO or (w and not touch):   # fifo hits, and pycachesim's store hits, keep their place
            p = j
        else:
            p = 0
            for i in range(j, 0, -1):
                E[lo + i] = E[lo + i - 1]
            if multi:
                for i in range(j, 0, -1):
                    K[lo + i] = K[lo + i - 1]
        E[lo + p] = ne
        if multi:
            K[lo + p] = kk
        return f, 0, 0, False, p
    ev = j == cap
    p = cap - 1 if ev else j   # the victim: the last enabled way, else the first empty one
    wb = E[lo + p] & 0xFF if ev else 0
    wk = K[lo + p] if ev and multi else 0
    if pol != LIP:   # lip fills stay at the victim's place (the LRU end)
        for i in range(p, 0, -1):
            E[lo + i] = E[lo + i - 1]
        if multi:
            for i in range(p, 0, -1):
                K[lo + i] = K[lo + i - 1]
        p = 0
    E[lo + p] = (x << 16) | (s << 8) | (s if w else 0)
    if multi:
        K[lo + p] = k if w else 0
    return 0 if w else s, wb, wk, ev, p


@njit(cache=True, inline="always")
def _mtf_access(E, K, CAP, W, r, x, s, w, k, q, h, a, kr, kw, kh, pol, P, touch, alloc, multi):
    """``_stamp_access`` on the recency layout."""
    if x < 0 or x >= MAX_LINE:
        a[_ERR] = 1
        return 0
    lo = (r * P + q) * W
    cq = CAP[r * P + q]
    jq, hit = _mtf_find(E, lo, cq, x)
    fwd = False
    lo2, ch, jh, hit2 = lo, cq, 0, False
    if P > 1 and h != q and (w or not hit or (s & ~((E[lo + jq] >> 8) & 0xFF)) != 0):
        fwd = True
        lo2 = (r * P + h) * W
        ch = CAP[r * P + h]
        jh, hit2 = _mtf_find(E, lo2, ch, x)
    if w and not hit and not alloc:
        f, wb, wk, ev, pq = 0, s, k, False, cq - 1 if jq == cq else -1   # the way it would have taken
    else:
        f, wb, wk, ev, pq = _mtf_put(E, K, lo, jq, cq, hit, x, s, w, k, pol, touch, multi)
    if P > 1 and w and h != q and pq >= 0:   # a store issued near leaves a clean copy there
        E[lo + pq] &= ~np.int64(0xFF)
    if fwd:
        if w and not hit2 and not alloc:
            f2, wb2, wk2, ev2 = 0, s, k, False
        else:
            f2, wb2, wk2, ev2, _ = _mtf_put(E, K, lo2, jh, ch, hit2, x, s, w, k, pol, touch, multi)
        f = f2
        _tally_second(a, kw, hit2, ev2, wb2, wk2)
    return _tally(a, kr, kw, kh, hit, ev, wb, wk, f, w, k, touch)


@functools.cache
def _lines_kernel(pol: int, P: int, touch: bool, alloc: bool, mtf: bool):
    """The access loop compiled for one policy, partition count, store rule and layout: known at compile time, they
    halve the time per access (numba caches each variant on disk, the closure's values being part of its key)."""

    @njit(cache=True, parallel=True)
    def run(row, hrow, tag, sec, wr, kern, nr, hm, t0, cnt, T, S, V, D, K, B, PM, PV, CAP, W, L, acc, kr, kw, kh,
            nf, NT):
        """Every access in array order, thread g taking the rows of block g (``_BLOCK`` accesses at a time, its own
        gathered first); counters into acc[g] (``_COUNTERS``) and k*[g]; nf[a] = DRAM sectors access a read (when nf is not empty)."""
        R = len(cnt)
        multi = len(kern) > 0
        want = len(nf) > 0
        n = len(row)
        for g in prange(NT):
            r0, r1 = g * R // NT, (g + 1) * R // NT
            a, kr_, kw_, kh_ = acc[g], kr[g], kw[g], kh[g]
            own = np.empty(_BLOCK, np.int64)
            for b0 in range(0, n, _BLOCK):
                m = 0
                for i in range(b0, min(b0 + _BLOCK, n)):   # this thread's accesses of the block, without branches
                    r = np.int64(row[i])
                    own[m] = i
                    m += (r >= r0) & (r < r1)
                for u in range(m):
                    i = own[u]
                    r = np.int64(row[i])
                    t = t0 + cnt[r]
                    cnt[r] += 1
                    x = tag[i]
                    s = np.int64(sec[i])
                    w = wr[i]
                    k = np.int64(kern[i]) if multi else 0
                    q = np.int64(nr[i]) if P > 1 else 0
                    h = np.int64(hm[i]) if P > 1 else q
                    if mtf:
                        nfa = _mtf_access(T, K, CAP, W, r, x, s, w, k, q, h, a, kr_, kw_, kh_, pol, P, touch, alloc,
                                          multi)
                    else:
                        nfa = _stamp_access(T, S, V, D, K, B, PM, PV, W, L, r, np.int64(hrow[i]), t, x, s, w, k, q,
                                            h, a, kr_, kw_, kh_, pol, P, touch, alloc)
                    a[7] += 1
                    if want:
                        nf[i] = nfa

    return run


@njit(cache=True, parallel=True)
def _group(row, tag, sec, wr, packed, NT, out, start):
    """Stable counting sort of the accesses by row (rows 0 … len(start) − 2): start[r] … start[r + 1] − 1 are the
    places of row r's accesses in ``out``, in array order. Thread g counts, then places, the g-th block of accesses
    (private counts per row: no atomics). ``out`` gets the access's index, or (``packed``) the access itself,
    line·2^9 | sectors·2^1 | store (−1 for a line outside 0 … 2^47, which the access flags)."""
    n = len(row)
    R = len(start) - 1
    H = np.zeros((NT, R), np.int64)
    for g in prange(NT):
        h = H[g]
        for i in range(g * n // NT, (g + 1) * n // NT):
            h[row[i]] += 1
    tot = 0
    for r in range(R):
        start[r] = tot
        for g in range(NT):
            c = H[g, r]
            H[g, r] = tot
            tot += c
    start[R] = tot
    for g in prange(NT):
        h = H[g]
        for i in range(g * n // NT, (g + 1) * n // NT):
            r = row[i]
            p = h[r]
            h[r] = p + 1
            if packed:
                x = np.int64(tag[i])
                v = (x << 9) | (np.int64(sec[i]) << 1) | np.int64(wr[i])
                out[p] = v if (x >= 0 and x < MAX_LINE) else -1
            else:
                out[p] = i




def _row_ptr(context, builder, sig, args, n):
    """Pointer to the n int64 at args[0][args[1]] as one vector."""
    vt = ir.VectorType(ir.IntType(64), n)
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    return builder.bitcast(builder.gep(ary.data, [args[1]]), vt.as_pointer()), vt


def _splat(builder, vt, x):
    xs = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(xs, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count))


@intrinsic
def _opaque(typingctx, x):
    """x, through an empty inline assembly block: the compiler no longer knows the value (a mask of 0 or −1), so
    it cannot turn the arithmetic on it back into a branch (LLVM's x86 cmov conversion did for the eviction mask
    of ``_blocks_kernel``: a branch mispredicted on about one access in two, ~40 % of the time per access)."""
    def codegen(context, builder, sig, args):
        return builder.asm(ir.FunctionType(ir.IntType(64), [ir.IntType(64)]), "", "=r,0", [args[0]], False)
    return types.int64(types.int64), codegen


@intrinsic(prefer_literal=True)
def _row_match(typingctx, arr, i, x, nw):
    """Bits l < nw (a literal ≤ 64): (arr[i + l] ≫ 16) = x, for the nw int64 at i compared as one vector."""
    if not isinstance(nw, types.IntegerLiteral) or not 0 < nw.literal_value <= 64:
        return None
    n = nw.literal_value

    def codegen(context, builder, sig, args):
        p, vt = _row_ptr(context, builder, sig, args, n)
        v = builder.load(p, align=8)
        eq = builder.icmp_signed("==", builder.ashr(v, ir.Constant(vt, [16] * n)), _splat(builder, vt, args[2]))
        return builder.zext(builder.bitcast(eq, ir.IntType(n)), ir.IntType(64))
    return types.int64(arr, types.int64, types.int64, nw), codegen


@intrinsic(prefer_literal=True)
def _row_move(typingctx, arr, i, mv, mp, e, nw):
    """The nw int64 at i (a literal ≤ 64) with entry e put at the lanes of bit mask mp and each lane of bit mask
    mv taking its predecessor's value (the recency order moved one place on): one vector load, a lane shift, two
    blends under the masks and one full-width store (the next load of the row takes it from the store buffer)."""
    if not isinstance(nw, types.IntegerLiteral) or not 0 < nw.literal_value <= 64:
        return None
    n = nw.literal_value

    def codegen(context, builder, sig, args):
        ptr, vt = _row_ptr(context, builder, sig, args, n)
        v = builder.load(ptr, align=8)
        ev = _splat(builder, vt, args[4])
        up = builder.shuffle_vector(v, ev, ir.Constant(ir.VectorType(ir.IntType(32), n), [n] + list(range(n - 1))))
        mt = ir.VectorType(ir.IntType(1), n)

        def mask(m):
            return builder.bitcast(builder.trunc(m, ir.IntType(n)) if n < 64 else m, mt)
        builder.store(builder.select(mask(args[2]), up, builder.select(mask(args[3]), ev, v)), ptr, align=8)
        return context.get_dummy_value()
    return types.none(arr, types.int64, types.int64, types.int64, types.int64, nw), codegen


@functools.cache
def _blocks_kernel(pol: int, touch: bool, alloc: bool, W: int):
    """lru and fifo for one partition and kernel, the accesses grouped by blocks of 64 rows and simulated in place
    on the recency layout. Thread g owns the blocks bsplit[g] … bsplit[g + 1] − 1 and walks the trace ``CH``
    accesses at a time, on its own: it counts its blocks' accesses (gathering their places without branches),
    places them block after block in a private buffer, packed as line·2^16 | (row mod 64)·2^9 | sectors·2^1 |
    store (array order kept within a block, so within each row), then simulates block after block, the block's rows of entries (64·W·8 B) staying in the CPU's
    first-level cache. No thread waits for another and no buffer is shared (one parallel region for the whole
    trace; the chunk's buffers stay in the CPU's second-level cache). An access is a vector compare of the row's
    tags (``_row_match``: the hit's place, else the last enabled way) and one vector shift of the row
    (``_row_move``), without branches on hit or miss (a row has W ≤ ``_ROW_WAYS_MAX`` entries, a multiple of 8 and
    a compile-time constant, CAP[r] of them enabled); consecutive accesses mostly belong to different rows, so
    they do not wait for each other. cnt[r] += accesses of row r; bad[g] = lines outside 0 … 2^47 (the run is then
    refused)."""

    @njit(cache=True, parallel=True)
    def run(row, tag, sec, wr, bsplit, CH, cnt, E, CAP, acc, kr, kw, kh, bad, NT):
        n = len(row)
        R = len(cnt)
        for g in prange(NT):
            B0 = bsplit[g]
            nb = bsplit[g + 1] - B0
            bs = np.empty(nb + 1, np.int64)
            h = np.empty(nb + 8, np.int64)   # + 8 slots the accesses of other threads' blocks are counted in
            idx = np.empty(min(CH, n), np.int64)
            grp = np.empty(min(CH, n), np.int64)
            cc = np.zeros(_ROW_BLOCK, np.int64)
            hits = misses = evs = devs = rd = wrt = tot = nbad = 0
            for c0 in range(0, n, CH):
                h[:] = 0
                m = 0
                for i in range(np.uint64(c0), np.uint64(min(n, c0 + CH))):   # unsigned: no wrap-around code
                    b = (row[i] >> _RB_SHIFT) - B0
                    own = np.uint64(b) < np.uint64(nb)
                    idx[m] = i
                    m += own
                    h[b if own else nb + (np.int64(i) & 7)] += 1   # 8 slots: no chain of increments of one
                t = 0
                for b in range(nb):
                    bs[b] = t
                    t += h[b]
                    h[b] = bs[b]
                bs[nb] = t
                tot += m
                for v in range(m):   # the packed accesses in block order (a bad line: line 0, no sectors)
                    i = idx[v]
                    r = row[i]
                    b = (r >> _RB_SHIFT) - B0
                    p = h[b]
                    h[b] = p + 1
                    x = np.int64(tag[i])
                    ok = x >= 0 and x < MAX_LINE
                    nbad += not ok
                    grp[p] = ((x << 16) | (np.int64(sec[i]) << 1) | np.int64(wr[i]) if ok else 0) | \
                        ((r & (_ROW_BLOCK - 1)) << 9)
                for b in range(nb):
                    u0, u1 = bs[b], bs[b + 1]
                    if u1 == u0:
                        continue
                    r0 = (B0 + b) * _ROW_BLOCK
                    Eb = E[r0 * W:]   # the block's rows and CAP: fewer values live in the loop
                    CAPb = CAP[r0:]
                    cc[:] = 0
                    # the block's counts packed in two registers (fewer live values, fewer spills): c1 = hits |
                    # misses·2^21 | evictions·2^42, c2 = DRAM sectors read | written·2^22 | dirty evictions·2^44,
                    # fields wide enough for the ≤ 2^18 accesses of a chunk (``_GROUP_CHUNK``)
                    c1 = c2 = 0
                    for u in range(np.uint64(u0), np.uint64(u1)):
                        pk = grp[u]
                        k = (pk >> 9) & (_ROW_BLOCK - 1)
                        cc[k] += 1
                        x = pk >> 16
                        s = (pk >> 1) & 0xFF
                        w = (pk & 1) != 0
                        lo = k * W
                        if not alloc and w:   # no store allocation: a store that misses goes straight to DRAM
                            if _row_match(Eb, lo, x, W) == 0:
                                c1 += np.int64(1) << 21
                                c2 += _popc(s) << 22
                                continue
                        # a miss moves the ways 0 … cap − 2 one place on and drops the last enabled one: where that
                        # one is empty, so are the ways before it down to the first empty one (valid ways are a
                        # prefix, lines are never invalidated), which gives the state of a fill of the first empty way
                        mt = _row_match(Eb, lo, x, W)
                        j = trailing_zeros(mt | (np.int64(1) << (CAPb[k] - 1)))
                        # masks, not branches, from here on (hit or miss is not predictable)
                        hh = np.int64(mt != 0)
                        hm = -hh   # all ones on a hit
                        wm = -np.int64(w)
                        old = Eb[np.uint64(lo + j)]
                        ev = (1 - hh) & ((old >> 63) + 1)   # a miss on a valid way
                        vo = (old >> 8) & 0xFF & hm
                        wb = old & 0xFF & _opaque(-ev)
                        ne = (x << 16) | ((vo | s) << 8) | (old & 0xFF & hm) | (s & wm)
                        if pol == FIFO:   # fifo hits, and pycachesim's store hits, keep their place
                            p = j & hm
                        elif touch:
                            p = 0
                        else:
                            p = j & hm & wm
                        # lanes p + 1 … j take their predecessor, lane p the entry
                        _row_move(Eb, lo, ((np.int64(2) << j) - 1) & -(np.int64(2) << p), np.int64(1) << p, ne, W)
                        c1 += (hh & (1 if touch else 1 + wm)) | ((1 - hh) << 21) | (ev << 42)
                        c2 += _popc(s & ~vo & ~wm) | (_popc(wb) << 22) | (np.int64(wb != 0) << 44)
                    F = (np.int64(1) << 21) - 1
                    hits += c1 & F
                    misses += (c1 >> 21) & F
                    evs += c1 >> 42
                    rd += c2 & ((np.int64(1) << 22) - 1)
                    wrt += (c2 >> 22) & ((np.int64(1) << 22) - 1)
                    devs += c2 >> 44
                    for k in range(min(_ROW_BLOCK, R - r0)):
                        cnt[r0 + k] += cc[k]
            a = acc[g]
            a[0] += hits
            a[1] += misses
            a[2] += evs
            a[3] += devs
            a[4] += rd
            a[5] += wrt
            a[7] += tot
            kh[g, 0] += hits
            kr[g, 0] += rd
            kw[g, 0] += wrt
            bad[g] = nbad

    return run


@functools.cache
def _grouped_kernel(pol: int, P: int, touch: bool, alloc: bool, mtf: bool, packed: bool):
    """``_lines_kernel`` over the accesses grouped by row (``_group``): row after row, each row's accesses in array
    order, thread g taking the rows rb[g] … rb[g + 1] − 1. Every set sees the same sequence, so the counts are the
    same; the state is swept once, in order, instead of being touched at random."""

    @njit(cache=True, parallel=True)
    def run(grp, start, rb, hrow, tag, sec, wr, kern, nr, hm, t0, cnt, T, S, V, D, K, B, PM, PV, CAP, W, L, acc,
            kr, kw, kh, nf, NT):
        multi = len(kern) > 0
        want = len(nf) > 0
        for g in prange(NT):
            a, kr_, kw_, kh_ = acc[g], kr[g], kw[g], kh[g]
            for r in range(rb[g], rb[g + 1]):
                u0, u1 = start[r], start[r + 1]
                cnt[r] = u1 - u0
                for u in range(u0, u1):
                    if packed:
                        pk = grp[u]
                        i = 0
                        x = pk >> 9
                        s = (pk >> 1) & 0xFF
                        w = (pk & 1) != 0
                    else:
                        i = grp[u]
                        x = np.int64(tag[i])
                        s = np.int64(sec[i])
                        w = wr[i]
                    k = np.int64(kern[i]) if multi else 0
                    q = np.int64(nr[i]) if P > 1 else 0
                    h = np.int64(hm[i]) if P > 1 else q
                    if mtf:
                        nfa = _mtf_access(T, K, CAP, W, r, x, s, w, k, q, h, a, kr_, kw_, kh_, pol, P, touch, alloc,
                                          multi)
                    else:
                        nfa = _stamp_access(T, S, V, D, K, B, PM, PV, W, L, r, np.int64(hrow[i]), t0 + u - u0, x, s,
                                            w, k, q, h, a, kr_, kw_, kh_, pol, P, touch, alloc)
                    a[7] += 1
                    if want:
                        nf[i] = nfa

    return run


@functools.cache
def _packed_kernel(pol: int, touch: bool, alloc: bool):
    """``_grouped_kernel`` for one partition, one kernel, the recency layout and no per-access results (``_group``'s
    packed accesses): the counters in registers."""

    @njit(cache=True, parallel=True)
    def run(grp, start, rb, cnt, E, K, CAP, W, acc, kr, kw, kh, NT):
        for g in prange(NT):
            hits = misses = evs = devs = rd = wrt = 0
            err = False
            for r in range(rb[g], rb[g + 1]):
                u0, u1 = start[r], start[r + 1]
                cnt[r] = u1 - u0
                lo = r * W
                cq = CAP[r]
                for u in range(u0, u1):
                    pk = grp[u]
                    if pk < 0:
                        err = True
                        continue
                    x = pk >> 9
                    s = (pk >> 1) & 0xFF
                    w = (pk & 1) != 0
                    j, hit = _mtf_find(E, lo, cq, x)
                    if w and not hit and not alloc:
                        f, wb, ev = 0, s, False
                    else:
                        f, wb, _, ev, _ = _mtf_put(E, K, lo, j, cq, hit, x, s, w, 0, pol, touch, False)
                    if hit:
                        if touch or not w:
                            hits += 1
                    else:
                        misses += 1
                    evs += ev
                    devs += ev and wb != 0
                    rd += _pc(f)
                    wrt += _pc(wb)
            a = acc[g]
            a[0] += hits
            a[1] += misses
            a[2] += evs
            a[3] += devs
            a[4] += rd
            a[5] += wrt
            a[7] += start[rb[g + 1]] - start[rb[g]]
            a[_ERR] = err
            kh[g, 0] += hits
            kr[g, 0] += rd
            kw[g, 0] += wrt

    return run


@njit(cache=True, inline="always")
def _glow(gr, lgG):
    """``iosim.memory.l2.granule_low_hash`` of granule gr, G = 2^lgG."""
    if lgG == 0:
        return np.int64(0)
    return ((gr * np.int64(0x9E3779B1)) & np.int64(0xFFFFFFFF)) >> (32 - lgG)


@njit(cache=True, inline="always")
def _set_of(line, n, hsh, G, b):
    """``L2Geometry.set_index`` of one line (hsh: 0 modulo, 1 rotate, 2 xor, 3 xor_low; b the xor chunk width)."""
    if hsh >= 2:
        gl = np.int64(0)
        if hsh == 3:
            lgG = np.int64(trailing_zeros(np.int64(G)))
            gl = _glow(line >> lgG, lgG)
        return _set_of_g(line, n, hsh, G, b, gl)
    s = line % n
    if hsh == 1:
        hh = ((line // n) * 0x9E3779B1) >> 7
        s = (s + (hh % (n // G)) * G) % n
    return s


@njit(cache=True, inline="always")
def _set_of_g(line, n, hsh, G, b, gl):
    """``_set_of`` with the granule's low-bit hash gl given (xor and xor_low: gl = 0 for xor)."""
    if hsh >= 2:
        v = line >> b
        fold = 0
        while v != 0:
            fold ^= v
            v >>= b
        return ((line ^ gl) ^ (fold & ~np.int64(G - 1))) % n
    s = line % n
    if hsh == 1:
        hh = ((line // n) * 0x9E3779B1) >> 7
        s = (s + (hh % (n // G)) * G) % n
    return s


@njit(cache=True, inline="always")
def _line_mask(line, a0, e, lbs, sbs, spl, fg, w):
    """``expand_lines``' sector mask of the range [a0, e) in one line (2^lbs bytes, sectors of 2^sbs), widened to
    ``fg``-sector DRAM fetch groups for a load (``widen_loads``)."""
    base = line << lbs
    s0 = (max(a0, base) - base) >> sbs
    s1 = (min(e, base + (np.int64(1) << lbs)) - base - 1) >> sbs
    m = ((np.int64(1) << (s1 + 1)) - 1) ^ ((np.int64(1) << s0) - 1)
    if fg > 1 and not w:
        full = (np.int64(1) << fg) - 1
        out = m
        for k0 in range(0, spl, fg):
            if m & (full << k0):
                out |= full << k0
        m = out
    return m


@njit(cache=True, parallel=True)
def _mod_rows(line, n, out):
    """out = line mod n; below 2^50 in magnitude through a float quotient (off by at most one, corrected)."""
    inv = 1.0 / n
    for i in prange(len(line)):
        x = line[i]
        if -(1 << 50) < x < (1 << 50):
            r = x - np.int64(np.float64(x) * inv) * n
            r = r + n if r < 0 else r
            r = r + n if r < 0 else r
            r = r - n if r >= n else r
            out[i] = r - n if r >= n else r
        else:
            out[i] = x % n


def set_index_modulo(line: np.ndarray, n: int) -> np.ndarray:
    """line mod n (floor, as NumPy's) of an int64 array, threaded: ``L2Geometry.set_index`` for the modulo hash."""
    out = np.empty(len(line), np.int64)
    _mod_rows(np.ascontiguousarray(line), np.int64(n), out)
    return out


@njit(cache=True, inline="always")
def _first_sampled(l0, hsh, lgG, ks):
    """(first sampled line ≥ l0, its granule's low-bit hash): ``iosim.memory.l2.first_sampled`` with residue 0 — the
    first line ≡ 0 (mod 2^ks), or for xor_low (hsh 3) the first whose offset in its granule is ≡ g (mod 2^ks)."""
    m = (np.int64(1) << ks) - 1
    if hsh != 3:
        return (l0 + m) >> ks << ks, np.int64(0)
    gr = l0 >> lgG
    gl = _glow(gr, lgG)
    c = l0 + ((gl - l0) & m)
    if (c >> lgG) == gr:
        return c, gl
    gl = _glow(gr + 1, lgG)
    return ((gr + 1) << lgG) + (gl & m), gl


@njit(cache=True, inline="always")
def _next_sampled(line, gl, hsh, lgG, ks):
    """The sampled line after ``line`` (one of them) and its granule's hash: + 2^ks, or for xor_low, on leaving the
    granule, the next granule's first sampled line (one hash per granule)."""
    nxt = line + (np.int64(1) << ks)
    if hsh != 3 or (nxt >> lgG) == (line >> lgG):
        return nxt, gl
    gr = nxt >> lgG
    gl = _glow(gr, lgG)
    return (gr << lgG) + (gl & ((np.int64(1) << ks) - 1)), gl


@njit(cache=True)
def _count_rows(addr, nbytes, lbs, n, hsh, G, b, ks, cnt):
    """Sampled lines (set ≡ 0 mod 2^ks) of the ranges per row (set ≫ ks): the order the ``random`` hash sees."""
    lgG = np.int64(trailing_zeros(np.int64(G)))
    for i in range(len(addr)):
        if nbytes[i] <= 0:
            continue
        line, gl = _first_sampled(addr[i] >> lbs, hsh, lgG, ks)
        last = (addr[i] + nbytes[i] - 1) >> lbs
        while line <= last:
            cnt[_set_of_g(line, n, hsh, G, b, gl) >> ks] += 1
            line, gl = _next_sampled(line, gl, hsh, lgG, ks)


@functools.cache
def _ranges_kernel(pol: int, P: int, touch: bool, alloc: bool, mtf: bool, hsh: int, store_near: bool):
    """``_lines_kernel`` over byte ranges: their sampled lines (set ≡ 0 mod stride: ``_first_sampled``,
    ``_next_sampled``) walked in place."""

    @njit(cache=True, parallel=True)
    def run(addr, nbytes, wr, sm, kern, hpos, lbs, sbs, fg, n, G, b, hg, ks, t0, cnt, T, S, V, D, K, B, PM, PV,
            CAP, W, L, acc, kr, kw, kh, ka, nf, NT):
        """nf[g, i] = DRAM sectors the lines of range i in thread g's rows read; line, sector and stride sizes
        2^lbs, 2^sbs, 2^ks (powers of two: shifts, not divisions)."""
        R = len(cnt)
        multi = len(kern) > 0
        rnd = len(hpos) > 0
        spl = 1 << (lbs - sbs)
        lgG = np.int64(trailing_zeros(np.int64(G)))
        for g in prange(NT):
            r0, r1 = g * R // NT, (g + 1) * R // NT
            a, kr_, kw_, kh_, ka_, nf_ = acc[g], kr[g], kw[g], kh[g], ka[g], nf[g]
            for i in range(len(addr)):
                if nbytes[i] <= 0:
                    continue
                a0 = addr[i]
                e = a0 + nbytes[i]
                line, gl = _first_sampled(a0 >> lbs, hsh, lgG, ks)   # the first sampled line, its granule's hash
                last = (e - 1) >> lbs
                w = wr[i]
                k = np.int64(kern[i]) if multi else 0
                near = np.int64(sm[i]) % P if P > 1 else 0
                tot = 0
                while line <= last:
                    r = _set_of_g(line, n, hsh, G, b, gl) >> ks if hsh >= 2 else _set_of(line, n, hsh, G, b) >> ks
                    if r >= r0 and r < r1:
                        s = _line_mask(line, a0, e, lbs, sbs, spl, fg, w)
                        h = (((line // hg) * 0x9E3779B1) >> 16) % P if P > 1 else 0
                        q = h if (P > 1 and w and not store_near) else near
                        t = t0 + cnt[r]
                        cnt[r] += 1
                        if mtf:
                            tot += _mtf_access(T, K, CAP, W, r, line, s, w, k, q, h, a, kr_, kw_, kh_, pol, P, touch,
                                               alloc, multi)
                        else:
                            tot += _stamp_access(T, S, V, D, K, B, PM, PV, W, L, r, hpos[r] if rnd else r, t, line,
                                                 s, w, k, q, h, a, kr_, kw_, kh_, pol, P, touch, alloc)
                        a[7] += 1
                        ka_[k] += 1
                    line, gl = _next_sampled(line, gl, hsh, lgG, ks)
                nf_[i] = tot

    return run


@njit(cache=True)
def _flush_mtf(E):
    """``CompiledState.flush`` of the recency layout: (dirty sectors, dirty lines) of the valid entries, whose
    dirty masks are then cleared."""
    nd = nl = 0
    for i in range(len(E) - 8):
        e = E[i]
        if e >= 0:
            d = e & 0xFF
            nd += _popc(d)
            nl += d != 0
            E[i] = e & ~np.int64(0xFF)
    return nd, nl


def _threads(n: int) -> int:
    return numba.get_num_threads() if n >= PARALLEL_MIN else 1


def _aligned_full(n: int, v: int) -> np.ndarray:
    """np.full(n, v, int64) starting at a 64-B boundary (NumPy's large arrays start 16 B past a page)."""
    buf = np.empty(n + 8, np.int64)
    k = (-buf.ctypes.data % 64) // 8
    out = buf[k:k + n]
    out[:] = v
    return out


class CompiledState:
    """The cache state of the compiled loops for ``rows`` simulated sets of ``partitions`` caches of ``ways``
    physical ways; ``sectors_per_line`` ≤ 8 lets lru, fifo and lip take the recency layout."""

    def __init__(self, rows: int, ways: int, partitions: int, policy: str, num_kernels: int,
                 store_allocate: bool = True, pycachesim_stores: bool = False, sectors_per_line: int = 32):
        self.pol = POLICIES.index(policy)
        self.mtf = self.pol in (LRU, FIFO, LIP) and sectors_per_line <= 8
        # the recency layout's rows hold a multiple of 8 entries (the ways beyond CAP stay empty, and no loop goes
        # past CAP): whole vectors for ``_blocks_kernel``, one variant of it per 8 ways
        W = -(-ways // 8) * 8 if self.mtf else ways
        C = W * partitions
        self.rows, self.ways, self.W, self.P, self.nk = rows, ways, W, partitions, num_kernels
        self.alloc, self.touch = store_allocate, not pycachesim_stores
        z = np.zeros(1, np.int64)
        # tags, or the recency layout's entries (+ ``_eq8``'s padding), from a 64-B boundary: a row of the recency
        # layout is then whole cache lines for the vector loads and stores
        self.T = _aligned_full(rows * C + 8, -1)
        self.S = self.V = self.D = self.B = z
        if not self.mtf:
            self.S = np.full(rows * C, -1, np.int64)
            self.V = np.zeros(rows * C, np.int64)
            self.D = np.zeros(rows * C, np.int64)
            self.B = np.zeros(rows * partitions, np.int64)
        self.K = np.zeros(rows * C if num_kernels > 1 or not self.mtf else 1, np.int32)
        self.CAP = np.full(rows * partitions, ways, np.int64)
        if policy == "plru":
            self.PM, self.PV, _ = _plru_tables(ways)
        else:
            self.PM = self.PV = z
        self.L = ways.bit_length() - 1
        self.cnt = np.zeros(rows, np.int64)

    def disable(self, dis: np.ndarray) -> None:
        """Switch off the ways ``dis`` (rows × columns, ``iosim.memory.l2.disabled_ways``: the top ways of each
        partition)."""
        if self.mtf:
            self.CAP[:] = self.ways - dis.reshape(self.rows * self.P, self.ways).sum(axis=1)
        else:
            self.T[:-8][dis.ravel()] = DISABLED

    def _args(self):
        return (self.cnt, self.T, self.S, self.V, self.D, self.K, self.B, self.PM, self.PV, self.CAP, self.W, self.L)

    def _add(self, counts: dict, acc, kr, kw, kh) -> None:
        if acc[:, _ERR].any():
            raise IosimError(f"a line number is outside 0 … 2^47 (byte addresses up to {MAX_LINE} lines); "
                             "shift the trace's addresses")
        for name, v in zip(_COUNTERS[:7], acc[:, :7].sum(axis=0).tolist()):
            counts[name] += v
        nk = self.nk
        counts["k_read"] += kr[:, :nk].sum(axis=0)
        counts["k_write"] += kw[:, :nk].sum(axis=0)
        counts["k_hit"] += kh[:, :nk].sum(axis=0)

    def _buffers(self, NT: int):
        return (np.zeros((NT, _PAD), np.int64),) + tuple(np.zeros((NT, self.nk + _PAD), np.int64) for _ in range(4))

    def run(self, counts: dict, row, hrow, tag, sectors, write, kernel, near, home, t0: int = 0,
            want_fetched: bool = False, threads: int | None = None, grouped: bool | None = None):
        """Simulate the accesses (row: the state row of each; hrow: the row the ``random`` hash sees; near: the
        partition looked up first; home) with stamps from t0, adding to ``counts`` (``simulate_lines``' keys, but
        accesses and k_acc). Returns (DRAM sectors each access read or None, the longest per-row sequence)."""
        n = len(row)
        c = np.ascontiguousarray
        kernel = np.zeros(0, np.int64) if kernel is None or self.nk == 1 else c(kernel, np.int64)
        if self.P > 1:
            near, home = c(near), c(home)
        else:
            near = home = np.zeros(1, np.int8)
        NT = threads or _threads(n)
        acc, kr, kw, kh, _ = self._buffers(NT)
        nf = np.zeros(n if want_fetched else 0, np.int64)
        self.cnt[:] = 0
        row, tag, sectors, write = c(row), c(tag), c(sectors), c(write, np.bool_)
        hrow = c(hrow) if self.pol == RANDOM else row
        if grouped is None:
            grouped = n >= GROUP_MIN and n >= self.rows
        if grouped:
            packed = self.mtf and self.P == 1 and len(kernel) == 0 and not want_fetched and sectors.dtype.itemsize == 1
            if packed and self.pol in (LRU, FIFO) and self.W <= _ROW_WAYS_MAX:   # by blocks of rows, in place
                NB = -(-self.rows // _ROW_BLOCK)
                # the threads' blocks, about as many accesses each (counted on a sample of the trace)
                bsplit = np.array([0, NB], np.int64)
                if NT > 1:
                    cum = np.cumsum(np.bincount(row[::max(1, n >> 16)] >> _RB_SHIFT, minlength=NB))
                    bsplit = np.concatenate(([0], np.searchsorted(cum, np.arange(1, NT) * cum[-1] / NT), [NB]))
                bad = np.zeros(NT, np.int64)
                _blocks_kernel(self.pol, self.touch, self.alloc, self.W)(
                    row, tag, sectors, write, bsplit.astype(np.int64), min(_GROUP_CHUNK, 1 << 18), self.cnt, self.T,
                    self.CAP, acc, kr, kw, kh, bad, NT)
                acc[0, _ERR] = bad.any()
                self._add(counts, acc, kr, kw, kh)
                return None, int(self.cnt.max(initial=0))
            grp = np.empty(n, np.int64)
            start = np.empty(self.rows + 1, np.int64)
            _group(row, tag, sectors, write, packed, NT, grp, start)
            # rows split where the accesses are, so the threads get about as many each
            rb = np.searchsorted(start, np.arange(NT + 1) * n // NT)
            rb[0], rb[-1] = 0, self.rows
            if packed:
                _packed_kernel(self.pol, self.touch, self.alloc)(grp, start, rb, self.cnt, self.T, self.K, self.CAP,
                                                                  self.W, acc, kr, kw, kh, NT)
            else:
                run = _grouped_kernel(self.pol, self.P, self.touch, self.alloc, self.mtf, packed)
                run(grp, start, rb, hrow, tag, sectors, write, kernel, near, home, t0, *self._args(), acc, kr, kw, kh,
                    nf, NT)
        else:
            run = _lines_kernel(self.pol, self.P, self.touch, self.alloc, self.mtf)
            run(row, hrow, c(tag, np.int64), sectors, write, kernel, near, home, t0, *self._args(), acc, kr, kw, kh,
                nf, NT)
        self._add(counts, acc, kr, kw, kh)
        return (nf if want_fetched else None), int(self.cnt.max(initial=0))

    def run_ranges(self, counts: dict, geom, stride: int, addr, nbytes, write, sm, kernel, t0: int = 0,
                   threads: int | None = None):
        """Simulate the sampled lines (set ≡ 0 mod stride: lines ≡ 0, for xor_low ≡ g in each hash granule) of byte
        ranges (``iosim.memory.l2.expand_lines``, ``widen_loads``),
        row = set // stride, stamps from t0, adding to ``counts`` (with accesses and k_acc). Returns (DRAM sectors
        each range read, the longest per-row sequence)."""
        c = np.ascontiguousarray
        n = len(addr)
        addr, nbytes = c(addr, np.int64), c(nbytes, np.int64)
        kernel = np.zeros(0, np.int64) if kernel is None or self.nk == 1 else c(kernel, np.int64)
        sm = c(sm, np.int64) if self.P > 1 else np.zeros(1, np.int64)
        nsets = geom.sets_per_cache
        hsh, G = HASHES.index(geom.hash), geom.hash_granule_lines
        b = max((nsets - 1).bit_length(), 1)
        if hsh >= 2 and G & (G - 1):
            raise IosimError(f"{geom.hash} hash needs a power-of-two hash_granule_lines, got {G}")
        if hsh == 1 and nsets % G:
            raise IosimError(f"rotate hash needs hash_granule_lines ({G}) to divide the set count {nsets}")
        lbs, sbs, ks = (v.bit_length() - 1 for v in (geom.line_bytes, geom.sector_bytes, stride))
        hpos = np.zeros(0, np.int64)
        if self.pol == RANDOM:   # the lockstep's row order: decreasing count in the chunk
            cnt = np.zeros(self.rows, np.int64)
            _count_rows(addr, nbytes, lbs, nsets, hsh, G, b, ks, cnt)
            hpos = np.empty(self.rows, np.int64)
            hpos[np.argsort(-cnt, kind="stable")] = np.arange(self.rows)
        fg = geom.dram_fetch_bytes // geom.sector_bytes if geom.dram_fetch_bytes else 1
        NT = threads or _threads(n * 4)
        acc, kr, kw, kh, ka = self._buffers(NT)
        nf = np.zeros((NT, n), np.int64)
        self.cnt[:] = 0
        run = _ranges_kernel(self.pol, self.P, self.touch, self.alloc, self.mtf, hsh, geom.store_near)
        run(addr, nbytes, c(write, np.bool_), sm, kernel, hpos, lbs, sbs, fg, nsets, G, b, geom.home_granule_lines, ks,
            t0, *self._args(), acc, kr, kw, kh, ka, nf, NT)
        self._add(counts, acc, kr, kw, kh)
        counts["accesses"] += int(acc[:, 7].sum())
        counts["k_acc"] += ka[:, :self.nk].sum(axis=0)
        return nf.sum(axis=0), int(self.cnt.max(initial=0))

    def flush(self, counts: dict) -> None:
        """Write back what is still dirty (counted as DRAM writes of the kernel that dirtied it), then forget it."""
        if self.mtf and self.nk == 1:   # one pass, compiled
            nd, nl = _flush_mtf(self.T)
            counts["dram_write_sectors"] += nd
            counts["k_write"] += np.array([nd], np.int64)
            counts["flush_lines"] += nl
            return
        if self.mtf:
            T = self.T[:-8]
            D = np.where(T >= 0, T & 0xFF, 0)
            T[T >= 0] &= ~np.int64(0xFF)
        else:
            D = self.D.copy()
            self.D[:] = 0
        nd = _popcount(D)
        counts["dram_write_sectors"] += int(nd.sum())
        K = self.K if self.nk > 1 else np.zeros(len(nd), np.int32)
        counts["k_write"] += np.bincount(K, weights=nd, minlength=self.nk).astype(np.int64)
        counts["flush_lines"] += int((D != 0).sum())


def run_lines(out: dict, row, hrow, tags, sectors, write, kernel, near, home, rows: int, ways: int, partitions: int,
              policy: str, dis, pycachesim_stores: bool, store_allocate: bool, num_kernels: int,
              sectors_per_line: int) -> dict:
    """``simulate_lines`` on the compiled core: row = the state row of each access's set, hrow the lockstep's row
    (what the ``random`` hash sees), near = the partition each access looks up first, ways the physical ways."""
    st = CompiledState(rows, ways, partitions, policy, num_kernels, store_allocate, pycachesim_stores,
                       sectors_per_line)
    if dis is not None:
        st.disable(dis)
    st.run(out, row, hrow, tags, sectors, write, kernel, near, home)
    st.flush(out)
    return out
