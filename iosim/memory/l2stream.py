"""The L2 of ``iosim.memory.l2`` fed in chunks: the cache state carries over from one chunk to the next, and every chunk
returns which of its accesses read DRAM. ``iosim.memory.hierarchy`` streams every kernel through it in windows of the
CTA timeline, so memory stays bounded by the window, not the trace.

Same model and accounting as the general loop of ``iosim.memory.l2.simulate_lines`` (its ``_State``: every policy, sectors,
duplicated partitions, store allocation and ``store_near``). A chunk is grouped by set like a whole trace there
(a (steps × sets) matrix, sets ordered by decreasing length so the active ones are a prefix); the state rows are
permuted to that order at the start of each chunk, and replacement stamps keep counting across chunks, so feeding a
trace in any number of chunks gives exactly the counts of feeding it at once (tests/test_l2stream.py).
With the compiled core (``iosim.memory.l2_jit``, unless ``IOSIM_L2_ENGINE=numpy``) the state rows stay in place and the
chunk goes through in time order, with the same stamps and the same results (tests/test_l2_jit.py); ``feed_ranges`` takes
a chunk as byte ranges and the compiled core walks their lines itself (no per-line arrays; the NumPy engine expands them).
Set sampling as in ``iosim.memory.l2``: the caller passes the sampled lines (set ≡ 0 mod stride: lines ≡ 0, or for the
``xor_low`` hash lines ≡ g (mod stride) in each hash granule, ``iosim.memory.l2.first_sampled``) and their row
(set // stride); counts come back unscaled.
"""

from __future__ import annotations

import numpy as np

from iosim.memory.l2 import (L2Geometry, PartitionedState, RunTrace, _active_counts, _popcount, _State, compiled_core,
                             disabled_ways, expand_lines, partitioned_steps, widen_loads)


class L2Stream:
    """Resumable L2 over ``rows`` sampled sets (of every partition). ``feed`` one time-ordered chunk at a time, then
    ``finish`` to flush dirty lines; ``counts`` then holds the raw totals (same keys as ``simulate_lines``)."""

    def __init__(self, geom: L2Geometry, rows: int, num_kernels: int = 1, whole_lines: bool = False,
                 stride: int = 1):
        """whole_lines: the caller promises that every access covers whole lines (after ``widen_loads``); with one
        kernel, store allocation and a deterministic policy the NumPy engine takes the leaner state of
        ``iosim.memory.l2.partitioned_steps`` (same results, tests/test_l2stream.py); the compiled core has one state. stride: the sampling stride (row r
        is set r·stride), which places the rows in ``geom.way_spread``'s groups."""
        self.geom = geom
        self.P = geom.num_partitions
        self.rows = rows
        self.nk = num_kernels
        self.mask_dtype = np.uint8 if geom.sectors_per_line <= 8 else np.uint32
        self.fast = whole_lines and num_kernels == 1 and geom.store_allocate and geom.policy != "random"
        ways = geom.ways + geom.way_spread   # physical ways; way_spread switches the surplus off set by set
        jit = compiled_core()
        self.cs = None   # the compiled core's state (``iosim.memory.l2_jit``), else one of the NumPy lockstep's
        if jit is not None:
            self.cs = jit.CompiledState(rows, ways, self.P, geom.policy, num_kernels, geom.store_allocate,
                                        sectors_per_line=geom.sectors_per_line)
        elif self.fast:
            self.ps = PartitionedState(rows, ways, self.P, geom.policy, self.mask_dtype, np.int64)
        else:
            self.st = _State(rows, ways, self.P, geom.policy, np.int64, self.mask_dtype, track_valid=True,
                             track_kernel=num_kernels > 1, store_allocate=geom.store_allocate)
        if geom.way_spread:
            dis = disabled_ways(np.arange(rows, dtype=np.int64) * stride, self.P, geom.ways, geom.way_spread,
                                geom.hash_granule_lines)
            (self.cs or (self.ps if self.fast else self.st)).disable(dis)
        self.stride = stride
        self.pos_row = np.arange(rows)   # state position → row
        self.t = 0                       # global step: replacement stamps keep their order across chunks
        z = np.zeros(num_kernels, np.int64)
        self.counts = {"accesses": 0, "hits": 0, "misses": 0, "evictions": 0, "dirty_evictions": 0,
                       "dram_read_sectors": 0, "dram_write_sectors": 0, "fabric_reads": 0, "flush_lines": 0,
                       "k_read": z.copy(), "k_write": z.copy(), "k_acc": z.copy(), "k_hit": z.copy()}

    def _arrange(self, order_rows: np.ndarray) -> None:
        """Permute the state so that position p holds row order_rows[p]."""
        inv = np.empty(self.rows, np.int64)
        inv[self.pos_row] = np.arange(self.rows)
        src = inv[order_rows]
        self.pos_row = order_rows
        if self.fast:
            self.ps.permute(src)
            return
        st = self.st
        for name in ("T", "S", "V", "D", "K", "B"):
            setattr(st, name, getattr(st, name)[src])

    def feed(self, row, tag, sectors, write, kernel=None, near=None, home=None) -> np.ndarray:
        """Simulate one chunk (accesses in time order); returns the DRAM sectors each access fetched."""
        n = len(row)
        c = self.counts
        kernel = np.zeros(n, np.int64) if kernel is None else np.asarray(kernel, np.int64)
        c["accesses"] += n
        c["k_acc"] += np.bincount(kernel, minlength=self.nk)
        if n == 0:
            return np.zeros(0, np.int64)
        if self.cs is not None:
            return self._feed_compiled(row, tag, sectors, write, kernel, near, home)
        cnt = np.bincount(row, minlength=self.rows)
        order_rows = np.argsort(-cnt, kind="stable")
        self._arrange(order_rows)
        pos = np.empty(self.rows, np.int64)
        pos[order_rows] = np.arange(self.rows)
        col = pos[row]
        o = np.argsort(col, kind="stable")
        cs = cnt[order_rows]
        first = np.concatenate(([0], np.cumsum(cs)))[:-1]
        within = np.empty(n, np.int64)
        within[o] = np.arange(n) - first[col[o]]
        steps = int(cs[0])
        m0 = int((cs > 0).sum())
        active = _active_counts(cs[:m0], steps)

        def mat(v, dtype, fill=0):
            M = np.full((steps, m0), fill, dtype=dtype)
            M[within, col] = v
            return M

        md = self.mask_dtype
        if self.fast:
            return self._feed_fast(mat, steps, m0, active, within, col, n, tag, sectors, write, near, home)
        X = mat(tag, np.int64, -2)
        SC = mat(sectors, md)
        WR = mat(np.asarray(write, bool), bool)
        multi = self.nk > 1
        KI = mat(kernel, np.int32) if multi else None
        P = self.P
        if P > 1:
            HM = mat(home, np.int8)
            wr = np.asarray(write, bool)
            NR = mat(near if self.geom.store_near else np.where(wr, home, near), np.int8)
        HIT = np.zeros((steps, m0), bool)
        FET = np.zeros((steps, m0), md)
        EV = np.zeros((steps, m0), bool)
        WB = np.zeros((steps, m0), md)
        WBK = np.zeros((steps, m0), np.int32)
        fab = ev2 = 0
        wb2_sectors = []
        st = self.st
        for t in range(steps):
            m = int(active[t])
            x, s, w = X[t, :m], SC[t, :m], WR[t, :m]
            k = KI[t, :m] if multi else None
            if P == 1:
                h, f, wb, wk, ev = st.access(m, x, s, w, k, self.t + t)
            else:
                h, f, wb, wk, ev, second = st.access2(m, NR[t, :m], HM[t, :m], x, s, w, k, self.t + t)
                if second is not None:
                    i, h2, f2, wb2, wk2, e2 = second
                    f[i] = f2
                    fab += int(h2.sum())
                    ev2 += int(e2.sum())
                    if wb2.any():
                        wb2_sectors.append((wb2, wk2, e2))
            HIT[t, :m] = h
            FET[t, :m] = f
            EV[t, :m] = ev
            WB[t, :m] = wb
            if multi:
                WBK[t, :m] = wk
        self.t += steps
        valid = X != -2
        nf = _popcount(FET)
        nw = _popcount(WB)
        c["hits"] += int(HIT.sum())
        c["misses"] += int((valid & ~HIT).sum())
        c["evictions"] += int(EV.sum()) + ev2
        c["dirty_evictions"] += int((EV & (WB != 0)).sum()) + sum(int((e & (b != 0)).sum())
                                                                  for b, _, e in wb2_sectors)
        c["fabric_reads"] += fab
        c["dram_read_sectors"] += int(nf.sum())
        c["dram_write_sectors"] += int(nw.sum()) + sum(int(_popcount(b).sum()) for b, _, _ in wb2_sectors)
        kv = KI[valid] if multi else np.zeros(n, np.int64)
        c["k_read"] += np.bincount(kv, weights=nf[valid], minlength=self.nk).astype(np.int64)
        c["k_hit"] += np.bincount(kv, weights=HIT[valid], minlength=self.nk).astype(np.int64)
        c["k_write"] += np.bincount(WBK.ravel() if multi else np.zeros(nw.size, np.int64), weights=nw.ravel(),
                                    minlength=self.nk).astype(np.int64)
        for b, wk, _ in wb2_sectors:
            c["k_write"] += np.bincount(wk if multi else np.zeros(len(b), np.int64), weights=_popcount(b),
                                        minlength=self.nk).astype(np.int64)
        return nf[within, col]

    def feed_ranges(self, addr, nbytes, write, sm=None, kernel=None) -> np.ndarray:
        """``feed`` for one chunk of byte ranges (``iosim.memory.l2.RunTrace``'s fields; sm and kernel may be None
        for all 0): their sampled lines (set ≡ 0 mod stride) as ``expand_lines`` gives them, loads widened by ``widen_loads``,
        row set // stride, near partition sm mod P, home ``geom.home``; the same counts as expanding them and
        feeding the lines (tests/test_l2_jit.py). The compiled core walks the lines in place (no per-line arrays).
        Returns the DRAM sectors each range read."""
        n = len(addr)
        sm = np.zeros(n, np.int64) if sm is None else sm
        if self.cs is not None:
            nf, steps = self.cs.run_ranges(self.counts, self.geom, self.stride, addr, nbytes, write, sm, kernel, self.t)
            self.t += steps
            return nf
        line, mask, w, near, rid = expand_lines(RunTrace(np.asarray(addr, np.int64), np.asarray(nbytes, np.int64),
                                                         np.asarray(write, bool), np.asarray(sm, np.int64),
                                                         np.arange(n)), self.geom, self.stride)
        home = None
        if self.P > 1:
            near, home = (near % self.P).astype(np.int8), self.geom.home(line).astype(np.int8)
        nf = self.feed(self.geom.set_index(line) // self.stride, line, widen_loads(mask, w, self.geom), w,
                       None if kernel is None else np.asarray(kernel, np.int64)[rid], near, home)
        return np.bincount(rid, weights=nf, minlength=n).astype(np.int64)

    def _feed_compiled(self, row, tag, sectors, write, kernel, near, home):
        """``feed`` through the compiled core (``iosim.memory.l2_jit``): the state rows stay in place; stamps count from
        ``self.t`` as in the lockstep, whose row order (decreasing count in the chunk) the ``random`` hash sees."""
        hrow = row
        if self.geom.policy == "random":
            pos = np.empty(self.rows, np.int64)
            pos[np.argsort(-np.bincount(row, minlength=self.rows), kind="stable")] = np.arange(self.rows)
            hrow = pos[row]
        nr = None
        if self.P > 1:
            nr = near if self.geom.store_near else np.where(np.asarray(write, bool), home, near)
        nf, steps = self.cs.run(self.counts, row, hrow, tag, sectors, write, kernel if self.nk > 1 else None, nr,
                                home, self.t, want_fetched=True)
        self.t += steps
        return nf

    def _feed_fast(self, mat, steps, m0, active, within, col, n, tag, sectors, write, near, home):
        """``feed`` for whole-line accesses: ``iosim.memory.l2.partitioned_steps`` on the kept state."""
        c = self.counts
        wr = np.asarray(write, bool)
        if self.P > 1:
            HM = mat(home, np.int8)
            NR = mat(near if self.geom.store_near else np.where(wr, home, near), np.int8)
        else:
            HM = NR = np.zeros((steps, m0), np.int8)
        X = mat(tag, np.int64, -2)
        got, nf = partitioned_steps(self.ps, X, mat(sectors, self.mask_dtype), mat(wr, bool), NR, HM, active, steps,
                                    self.t)
        self.t += steps
        for k, v in got.items():
            c[k] += v
        c["k_read"][0] += got["dram_read_sectors"]
        c["k_write"][0] += got["dram_write_sectors"]
        c["k_hit"][0] += got["hits"]
        return nf[within, col]

    def finish(self) -> dict:
        """Flush what is still dirty (counted as DRAM writes, as ``simulate_lines`` does) and return the counts."""
        c = self.counts
        if self.cs is not None:
            self.cs.flush(c)
            return c
        if self.fast:
            D = self.ps.D
            flush = _popcount(D)
            c["dram_write_sectors"] += int(flush.sum())
            c["k_write"][0] += int(flush.sum())
            c["flush_lines"] += int((D != 0).sum())
            D[:] = 0
            return c
        st = self.st
        flush = _popcount(st.D.ravel())
        c["dram_write_sectors"] += int(flush.sum())
        c["k_write"] += np.bincount(st.K.ravel(), weights=flush, minlength=self.nk).astype(np.int64)
        c["flush_lines"] += int((st.D.ravel() != 0).sum())
        st.D[:] = 0
        return c
