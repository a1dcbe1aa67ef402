"""The compiled core of the L2 (``iosim.memory.l2``): the same exact model, one access at a time, with numba.

Sets are independent, so processing the accesses in array order gives every set its own sequence in order, the same
as the per-set lockstep of ``iosim.memory.l2.simulate_lines``; "step" t (replacement stamps, the ``random`` hash) is the
access's position in its set's sequence (plus ``t0``, ``iosim.memory.l2stream``'s chunk offset) and the ``random`` hash sees
the row the lockstep gives the set (``hrow``), so every policy, sector, partition and way-spread rule gives
bit-identical counts (tests/test_l2_jit.py compares both paths on random traces). Semantics are those of
``iosim.memory.l2._State`` (the general NumPy loop): see its ``_cand``, ``_update``, ``access`` and ``access2``, including
its handling of a store that misses near with ``store_allocate=False`` and ``store_near`` (the near way it would
have taken loses its dirty sectors, and the store is sent to DRAM by both partitions).

State (``CompiledState``), flat over (row, partition·ways + way) as ``iosim.memory.l2.PartitionedState``: tags T (−1
invalid, ``DISABLED`` a way switched off by the way spread), stamps S (last use for lru/mru/random/lip: fills of lip
at −(t+2); insertion for fifo; the RRPV for srrip/brrip), valid and dirty sector masks V and D, the kernel K that
last dirtied the line, and per (row, partition) B (plru tree bits or the brrip fill count).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from iosim.memory.l2 import DISABLED, POLICIES, _plru_tables, _popcount

LRU, FIFO, MRU, RANDOM, PLRU, SRRIP, BRRIP, LIP = (POLICIES.index(p) for p in
                                                   ("lru", "fifo", "mru", "random", "plru", "srrip", "brrip", "lip"))
_BIG = np.iinfo(np.int64).max // 4
# slots of the scalar counters the kernel accumulates
_COUNTERS = ("hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors", "dram_write_sectors",
             "fabric_reads")


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


@functools.cache
def _kernel(pol: int, P: int, touch: bool, alloc: bool):
    """The access loop compiled for one policy, partition count and store rule: known at compile time, they halve
    the time per access (numba caches each variant on disk, the closure's values being part of its key)."""

    @njit(cache=True)
    def run(row, hrow, tag, sec, wr, kern, nr, hm, t0, cnt, T, S, V, D, K, B, W, PM, PV, L, acc, k_read, k_write,
            k_hit, nf):
        """Every access in array order; counters into acc (``_COUNTERS``) and k_*; nf[a] = DRAM sectors access a
        read (when nf is not empty). Returns the longest per-row sequence (the lockstep's number of steps)."""
        C = W * P
        want = len(nf) > 0
        steps = 0
        hits = misses = evictions = dirty = reads = writes = fabric = 0
        for a in range(len(row)):
            r = row[a]
            t = t0 + cnt[r]
            cnt[r] += 1
            steps = max(steps, cnt[r])
            x = tag[a]
            s = np.int64(sec[a])
            w = wr[a]
            k = np.int64(kern[a])
            q = np.int64(nr[a]) if P > 1 else 0
            h = np.int64(hm[a]) if P > 1 else q
            lo = r * C + q * W
            jq, hit = _lookup(T, S, B, lo, r * P + q, q * W, W, x, pol, t, hrow[a], L)
            fwd = False
            lo2, jh, hit2 = lo, 0, False
            # the home partition is asked when the near copy misses, lacks requested sectors, or for a store
            if P > 1 and h != q and (w or not hit or (s & ~V[lo + jq]) != 0):
                fwd = True
                lo2 = r * C + h * W
                jh, hit2 = _lookup(T, S, B, lo2, r * P + h, h * W, W, x, pol, t, hrow[a], L)
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
                    f2, wb2, wk2, ev2 = _install(T, S, V, D, K, B, lo2, r * P + h, jh, W, hit2, x, s, w, k, t, pol,
                                                 touch, PM, PV)
                f = f2   # the home copy supplies what it holds, DRAM the rest
                fabric += hit2
                evictions += ev2
                dirty += ev2 and wb2 != 0
                n2 = _pc(wb2)
                writes += n2
                k_write[wk2] += n2
            if hit:
                if touch or not w:
                    hits += 1
                    k_hit[k] += 1
            else:
                misses += 1
            evictions += ev
            dirty += ev and wb != 0
            nfa = _pc(f)
            reads += nfa
            k_read[k] += nfa
            nw = _pc(wb)
            writes += nw
            k_write[wk] += nw
            if want:
                nf[a] = nfa
        acc[:] += np.array([hits, misses, evictions, dirty, reads, writes, fabric])
        return steps

    return run


class CompiledState:
    """The cache state of the ``_kernel`` loops for ``rows`` simulated sets of ``partitions`` caches of ``ways`` physical ways."""

    def __init__(self, rows: int, ways: int, partitions: int, policy: str, num_kernels: int,
                 store_allocate: bool = True, pycachesim_stores: bool = False):
        C = ways * partitions
        self.rows, self.W, self.P, self.nk = rows, ways, partitions, num_kernels
        self.pol = POLICIES.index(policy)
        self.alloc, self.touch = store_allocate, not pycachesim_stores
        self.T = np.full(rows * C, -1, np.int64)
        self.S = np.full(rows * C, -1, np.int64)
        self.V = np.zeros(rows * C, np.int64)
        self.D = np.zeros(rows * C, np.int64)
        self.K = np.zeros(rows * C, np.int32)
        self.B = np.zeros(rows * partitions, np.int64)
        if policy == "plru":
            self.PM, self.PV, _ = _plru_tables(ways)
        else:
            self.PM = self.PV = np.zeros(1, np.int64)
        self.L = ways.bit_length() - 1
        self.cnt = np.zeros(rows, np.int64)

    def disable(self, dis: np.ndarray) -> None:
        """Switch off the ways ``dis`` (rows × columns, ``iosim.memory.l2.disabled_ways``)."""
        self.T[dis.ravel()] = DISABLED

    def run(self, counts: dict, row, hrow, tag, sectors, write, kernel, near, home, t0: int = 0,
            want_fetched: bool = False):
        """Simulate the accesses (row: the state row of each; hrow: the row the ``random`` hash sees; near: the
        partition looked up first; home) with stamps from t0, adding to ``counts`` (``simulate_lines``' keys, but
        accesses and k_acc). Returns (DRAM sectors each access read or None, the longest per-row sequence)."""
        n = len(row)
        i32 = lambda v: np.ascontiguousarray(v, np.int32)
        row, hrow = i32(row), i32(hrow)
        kernel = np.zeros(n, np.int32) if kernel is None else i32(kernel)
        if self.P > 1:
            near, home = np.ascontiguousarray(near, np.int8), np.ascontiguousarray(home, np.int8)
        else:
            near = home = np.zeros(1, np.int8)
        acc = np.zeros(len(_COUNTERS), np.int64)
        kr, kw, kh = (np.zeros(self.nk, np.int64) for _ in range(3))
        nf = np.zeros(n if want_fetched else 0, np.int64)
        self.cnt[:] = 0
        run = _kernel(self.pol, self.P, self.touch, self.alloc)
        steps = run(row, hrow, np.ascontiguousarray(tag, np.int64), np.ascontiguousarray(sectors, np.uint32),
                    np.ascontiguousarray(write, np.bool_), kernel, near, home, t0, self.cnt, self.T, self.S, self.V,
                    self.D, self.K, self.B, self.W, self.PM, self.PV, self.L, acc, kr, kw, kh, nf)
        for name, v in zip(_COUNTERS, acc.tolist()):
            counts[name] += v
        counts["k_read"] += kr
        counts["k_write"] += kw
        counts["k_hit"] += kh
        return (nf if want_fetched else None), int(steps)

    def flush(self, counts: dict) -> None:
        """Write back what is still dirty (counted as DRAM writes of the kernel that dirtied it), then forget it."""
        nd = _popcount(self.D)
        counts["dram_write_sectors"] += int(nd.sum())
        counts["k_write"] += np.bincount(self.K, weights=nd, minlength=self.nk).astype(np.int64)
        counts["flush_lines"] += int((self.D != 0).sum())
        self.D[:] = 0


def run_lines(out: dict, row, tags, sectors, write, kernel, near, home, rows: int, ways: int, partitions: int,
              policy: str, dis, pycachesim_stores: bool, store_allocate: bool, num_kernels: int) -> dict:
    """``simulate_lines`` after its set grouping: row = the lockstep's row of each access's set (also what the
    ``random`` hash sees), near = the partition each access looks up first, ways the physical ways."""
    st = CompiledState(rows, ways, partitions, policy, num_kernels, store_allocate, pycachesim_stores)
    if dis is not None:
        st.disable(dis)
    st.run(out, row, row, tags, sectors, write, kernel, near, home)
    st.flush(out)
    return out
