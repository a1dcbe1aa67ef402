"""The shared L2: a set-associative, sectored, write-back cache simulated exactly over an ordered line trace.

Model (parameters from the hardware profile, see ``L2Geometry.from_hardware``):

* ``sets × ways`` lines of ``line_bytes``, each line split into ``sector_bytes`` sectors. A line is allocated on any
  access (loads and stores: the H100 L2 is write-allocate for stores and keeps per-byte masks, so a store fetches
  nothing from DRAM); a load fetches from DRAM only the requested sectors not already valid in the line.
* Write-back: a dirty line's dirty sectors go to DRAM when it is evicted; what is still dirty when the trace ends is
  flushed and counted too (the data has to reach DRAM eventually; ncu's dram__bytes_write on FA2 equals O).
* Replacement per set: ``lru`` (default), ``fifo`` or ``mru``; invalid ways are filled first.
* Set index: ``modulo`` (line mod sets) or ``rotate`` (line mod sets, rotated by a hash of line // sets in steps of
  ``hash_granule_lines``; a stand-in for the undocumented slice/set hash until issue 9 measures it).
* Partitions: ``shared`` (one cache, the default) or ``replicated``: each of ``partitions`` partitions is its own
  cache of sets/partitions sets that sees only the accesses of its SMs (SM s belongs to partition s mod P), the bound
  where every line read on both sides is duplicated. Misses in both count as DRAM reads (an upper bound).

Algorithm. Sets are independent, so the trace is grouped by set (stable sort, program order kept inside a set) and all
sets advance in lockstep: step t processes the t-th access of every set that has one, with NumPy over a
(sets × ways) state. Work per step is O(active sets × ways), and the number of steps is the longest per-set sequence.

Set sampling (``stride`` k > 1): only sets whose index ≡ 0 (mod k) are simulated (for both index functions the set of
a line is ≡ line (mod k) when k divides the set count and the hash granule) and every count is multiplied by k. When
every access covers whole aligned groups of k lines, all sets of a group see isomorphic sequences, so the sampled
result is *exact*; otherwise it is a set-sampling estimate (Kessler, Hill & Wood, IEEE TC 1994) and ``exact`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from iosim.errors import IosimError

POLICIES = ("lru", "fifo", "mru")
HASHES = ("modulo", "rotate")
SHARING = ("shared", "replicated")


@dataclass(frozen=True)
class L2Geometry:
    """Everything the L2 model needs; sizes in bytes."""

    size_bytes: int
    line_bytes: int
    sector_bytes: int
    ways: int
    partitions: int = 1
    sharing: str = "shared"
    policy: str = "lru"
    hash: str = "modulo"
    hash_granule_lines: int = 128
    store_allocate: bool = True

    def __post_init__(self) -> None:
        for name in ("size_bytes", "line_bytes", "sector_bytes", "ways", "partitions", "hash_granule_lines"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise IosimError(f"L2 {name} must be a positive integer, got {v!r}")
        if self.line_bytes & (self.line_bytes - 1) or self.sector_bytes & (self.sector_bytes - 1):
            raise IosimError("L2 line and sector sizes must be powers of two")
        if self.line_bytes % self.sector_bytes or self.line_bytes // self.sector_bytes > 32:
            raise IosimError(f"L2 sector size {self.sector_bytes} must divide the line size {self.line_bytes} (≤ 32 sectors)")
        if self.size_bytes % (self.line_bytes * self.ways):
            raise IosimError(f"L2 size {self.size_bytes} B is not a whole number of sets of {self.ways} ways × "
                             f"{self.line_bytes} B lines")
        if self.sets % self.partitions:
            raise IosimError(f"L2 partitions ({self.partitions}) must divide the number of sets ({self.sets})")
        if self.policy not in POLICIES:
            raise IosimError(f"unknown L2 replacement policy {self.policy!r}; known: {', '.join(POLICIES)}")
        if self.hash not in HASHES:
            raise IosimError(f"unknown L2 set-index hash {self.hash!r}; known: {', '.join(HASHES)}")
        if self.sharing not in SHARING:
            raise IosimError(f"unknown L2 partition sharing {self.sharing!r}; known: {', '.join(SHARING)}")

    @property
    def sets(self) -> int:
        return self.size_bytes // (self.line_bytes * self.ways)

    @property
    def sectors_per_line(self) -> int:
        return self.line_bytes // self.sector_bytes

    @property
    def sets_per_cache(self) -> int:
        """Sets of one independent cache: all of them when shared, sets/partitions when replicated."""
        return self.sets // self.partitions if self.sharing == "replicated" else self.sets

    @classmethod
    def from_hardware(cls, hw, **overrides) -> "L2Geometry":
        """The profile's L2: size, line, sector, ways (16 if the profile has none: assumed), partitions."""
        g = cls(size_bytes=hw.l2_size_bytes, line_bytes=hw.l2_line_bytes, sector_bytes=hw.l2_sector_bytes,
                ways=hw.l2_ways or 16, partitions=hw.l2_partitions or 1)
        return replace(g, **overrides) if overrides else g

    def max_stride(self) -> int:
        """Largest power of two k that may be used for set sampling (k divides the set count, and the hash granule)."""
        n = self.sets_per_cache
        k = n & -n
        if self.hash == "rotate":
            k = min(k, self.hash_granule_lines & -self.hash_granule_lines)
        return k

    def set_index(self, line: np.ndarray, sm: np.ndarray | None = None) -> np.ndarray:
        """Global set id of each line (partition-major when replicated)."""
        n = self.sets_per_cache
        s = line % n
        if self.hash == "rotate":
            groups = n // self.hash_granule_lines if n % self.hash_granule_lines == 0 else None
            if groups is None:
                raise IosimError(f"rotate hash needs hash_granule_lines ({self.hash_granule_lines}) to divide the "
                                 f"set count {n}")
            h = ((line // n) * 0x9E3779B1) >> 7
            s = (s + (h % groups) * self.hash_granule_lines) % n
        if self.sharing == "replicated":
            if sm is None:
                raise IosimError("replicated L2 partitions need the SM of each access")
            s = s + (sm % self.partitions) * n
        return s


@dataclass(frozen=True)
class L2Result:
    """Counts over the whole trace (already scaled by the sampling stride). Counts are in lines/sectors."""

    accesses: int          # line accesses (one per line touched by a load or store)
    hits: int
    misses: int
    evictions: int         # valid lines replaced
    dirty_evictions: int   # evicted lines with at least one dirty sector
    dram_read_sectors: int
    dram_write_sectors: int  # dirty sectors written back on eviction plus those flushed at the end
    stride: int
    exact: bool
    per_kernel: tuple = ()   # (dram_read_sectors, dram_write_sectors, accesses, hits) per kernel id

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    return _POPCOUNT[x & 255] + _POPCOUNT[(x >> 8) & 255] + _POPCOUNT[(x >> 16) & 255] + _POPCOUNT[x >> 24]


def simulate_lines(sets: np.ndarray, tags: np.ndarray, sectors: np.ndarray, write: np.ndarray, ways: int,
                   policy: str = "lru", kernel: np.ndarray | None = None, num_kernels: int = 1,
                   store_allocate: bool = True):
    """Exact simulation of an ordered line trace; returns raw (unscaled) counts.

    sets, tags: int arrays (the tag may be the full line number); sectors: requested sector mask per access (uint32);
    write: bool. Accesses are processed in array order. Returns a dict of totals and per-kernel arrays.
    """
    n = len(sets)
    if policy not in POLICIES:
        raise IosimError(f"unknown replacement policy {policy!r}; known: {', '.join(POLICIES)}")
    kernel = np.zeros(n, dtype=np.int64) if kernel is None else np.asarray(kernel, dtype=np.int64)
    out = {"accesses": n, "hits": 0, "misses": 0, "evictions": 0, "dirty_evictions": 0,
           "dram_read_sectors": 0, "dram_write_sectors": 0,
           "k_read": np.zeros(num_kernels, np.int64), "k_write": np.zeros(num_kernels, np.int64),
           "k_acc": np.bincount(kernel, minlength=num_kernels).astype(np.int64), "k_hit": np.zeros(num_kernels, np.int64)}
    if n == 0:
        return out
    uniq, set_id = np.unique(sets, return_inverse=True)
    nsets = len(uniq)
    order = np.argsort(set_id, kind="stable")
    cnt = np.bincount(set_id, minlength=nsets)
    # Renumber sets by decreasing access count so that the sets active at step t are a prefix.
    rank = np.argsort(-cnt, kind="stable")
    cnt_sorted = cnt[rank]
    first = np.concatenate(([0], np.cumsum(cnt)))[:-1]
    start = first[rank]
    tg = np.asarray(tags, dtype=np.int64)[order]
    sc = np.asarray(sectors, dtype=np.uint32)[order]
    wr = np.asarray(write, dtype=bool)[order]
    kid = kernel[order]
    del order
    steps = int(cnt_sorted[0])
    active = _active_counts(cnt_sorted, steps)  # sets with more than t accesses: a prefix

    T = np.full((nsets, ways), -1, dtype=np.int64)        # tags
    S = np.full((nsets, ways), -1, dtype=np.int64)        # stamps (last use for LRU/MRU, insertion for FIFO)
    V = np.zeros((nsets, ways), dtype=np.uint32)          # valid sector masks
    D = np.zeros((nsets, ways), dtype=np.uint32)          # dirty sector masks
    DK = np.zeros((nsets, ways), dtype=np.int64)          # kernel that last dirtied the line
    hit_all = np.zeros(len(tg), dtype=bool)
    fetched = np.zeros(len(tg), dtype=np.uint32)          # sectors read from DRAM by each access
    wback = np.zeros(len(tg), dtype=np.uint32)            # dirty sectors written back by the eviction it caused
    wback_k = np.zeros(len(tg), dtype=np.int64)
    evicted = np.zeros(len(tg), dtype=bool)
    rows_full = np.arange(nsets)
    for t in range(steps):
        m = int(active[t])
        rows = rows_full[:m]
        pos = start[:m] + t
        x = tg[pos]
        Tm = T[:m]
        match = Tm == x[:, None]
        hit = match.any(axis=1)
        if policy == "mru":
            # evict the most recently used valid line, after the invalid ways
            victim = np.where(Tm < 0, np.iinfo(np.int64).max, S[:m]).argmax(axis=1)
            inv = (Tm < 0).any(axis=1)
            victim = np.where(inv, (Tm < 0).argmax(axis=1), victim)
        else:
            victim = S[:m].argmin(axis=1)
        way = np.where(hit, match.argmax(axis=1), victim)
        old_tag = Tm[rows, way]
        ev = ~hit & (old_tag >= 0)
        s = sc[pos]
        w = wr[pos]
        v_old = np.where(hit, V[rows, way], 0).astype(np.uint32)
        d_old = D[rows, way]
        hit_all[pos] = hit
        fetched[pos] = np.where(w, 0, s & ~v_old)
        wb = np.where(ev, d_old, 0).astype(np.uint32)
        wback[pos] = wb
        wback_k[pos] = DK[rows, way]
        evicted[pos] = ev
        T[rows, way] = x
        if policy == "fifo":
            S[rows, way] = np.where(hit, S[rows, way], t)
        else:
            S[rows, way] = t
        V[rows, way] = v_old | s
        D[rows, way] = np.where(hit, d_old, 0).astype(np.uint32) | np.where(w, s, 0).astype(np.uint32)
        DK[rows, way] = np.where(w, kid[pos], np.where(hit, DK[rows, way], 0))
    nf = _popcount(fetched)
    nw = _popcount(wback)
    flush = _popcount(D.ravel())
    out["hits"] = int(hit_all.sum())
    out["misses"] = len(tg) - out["hits"]
    out["evictions"] = int(evicted.sum())
    out["dirty_evictions"] = int((evicted & (wback != 0)).sum())
    out["dram_read_sectors"] = int(nf.sum())
    out["dram_write_sectors"] = int(nw.sum() + flush.sum())
    out["k_read"] = np.bincount(kid, weights=nf, minlength=num_kernels).astype(np.int64)
    out["k_write"] = (np.bincount(wback_k, weights=nw, minlength=num_kernels)
                      + np.bincount(DK.ravel(), weights=flush, minlength=num_kernels)).astype(np.int64)
    out["k_hit"] = np.bincount(kid, weights=hit_all, minlength=num_kernels).astype(np.int64)
    out["flush_lines"] = int((D.ravel() != 0).sum())
    return out


def _active_counts(cnt_sorted: np.ndarray, steps: int) -> np.ndarray:
    """active[t] = #{sets with count > t} for a count array sorted in decreasing order."""
    # cnt_sorted is non-increasing: the sets with count > t form a prefix whose length searchsorted finds.
    return np.searchsorted(-cnt_sorted, -np.arange(steps), side="left").astype(np.int64)


@dataclass(frozen=True)
class RunTrace:
    """Ordered byte ranges: the global-memory accesses of one or more kernels, in the order the L2 sees them."""

    addr: np.ndarray      # int64 start byte
    nbytes: np.ndarray    # int64 length
    write: np.ndarray     # bool
    sm: np.ndarray        # int64 SM of the issuing CTA
    kernel: np.ndarray    # int64 kernel index


def expand_lines(tr: RunTrace, geom: L2Geometry, stride: int = 1, residue: int = 0):
    """Lines touched by each range, restricted to lines ≡ residue (mod stride): (line, sectors, write, sm, kernel)."""
    lb, sb = geom.line_bytes, geom.sector_bytes
    a = tr.addr
    e = tr.addr + tr.nbytes
    fl = a // lb
    ll = (e - 1) // lb
    f = fl + ((residue - fl) % stride)
    cnt = np.where(tr.nbytes > 0, np.maximum((ll - f) // stride + 1, 0), 0)
    total = int(cnt.sum())
    idx = np.repeat(np.arange(len(a)), cnt)
    off = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    line = f[idx] + off * stride
    lo = np.maximum(a[idx], line * lb) - line * lb
    hi = np.minimum(e[idx], (line + 1) * lb) - line * lb
    s0 = lo // sb
    s1 = (hi - 1) // sb
    mask = ((np.left_shift(np.int64(1), s1 + 1) - 1) ^ (np.left_shift(np.int64(1), s0) - 1)).astype(np.uint32)
    return line, mask, tr.write[idx], tr.sm[idx], tr.kernel[idx]


def aligned(tr: RunTrace, geom: L2Geometry, stride: int) -> bool:
    """Whether every range covers whole aligned groups of ``stride`` lines (then sampling with it is exact)."""
    g = stride * geom.line_bytes
    ok = tr.nbytes == 0
    ok |= (tr.addr % g == 0) & (tr.nbytes % g == 0)
    return bool(ok.all())


def choose_stride(tr: RunTrace, geom: L2Geometry, min_sets: int = 192) -> int:
    """The sampling stride: the largest allowed power of two that still leaves at least ``min_sets`` sets simulated
    (per cache), preferring the largest stride at which the trace is aligned, i.e. sampling stays exact."""
    kmax = geom.max_stride()
    k = 1
    while k * 2 <= kmax and geom.sets_per_cache // (k * 2) >= min_sets:
        k *= 2
    return k


def simulate(tr: RunTrace, geom: L2Geometry, stride: int | None = None, num_kernels: int | None = None,
             min_sets: int = 192) -> L2Result:
    """Run the trace through the L2. stride=None picks one (``choose_stride``); 1 simulates every set exactly."""
    if stride is None:
        stride = choose_stride(tr, geom, min_sets)
    if stride < 1 or stride & (stride - 1) or stride > geom.max_stride():
        raise IosimError(f"sampling stride {stride} must be a power of two dividing {geom.max_stride()}")
    nk = int(tr.kernel.max()) + 1 if num_kernels is None and len(tr.kernel) else (num_kernels or 1)
    line, mask, w, sm, kern = expand_lines(tr, geom, stride)
    sets = geom.set_index(line, sm)
    if not geom.store_allocate:
        raise IosimError("store_allocate=False is not modeled yet")
    r = simulate_lines(sets, line, mask, w, geom.ways, geom.policy, kern, nk)
    k = stride
    per_kernel = tuple((int(r["k_read"][i]) * k, int(r["k_write"][i]) * k, int(r["k_acc"][i]) * k, int(r["k_hit"][i]) * k)
                       for i in range(nk))
    return L2Result(accesses=r["accesses"] * k, hits=r["hits"] * k, misses=r["misses"] * k,
                    evictions=r["evictions"] * k, dirty_evictions=r["dirty_evictions"] * k,
                    dram_read_sectors=r["dram_read_sectors"] * k, dram_write_sectors=r["dram_write_sectors"] * k,
                    stride=k, exact=(k == 1 or aligned(tr, geom, k)), per_kernel=per_kernel)
