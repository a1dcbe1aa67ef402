"""The shared L2: a set-associative, sectored, write-back cache simulated exactly over an ordered line trace.

Model (parameters from the hardware profile, see ``L2Geometry.from_hardware``). Which values are measured: on the
H100 (``iosim calibrate --l2``, reports/calibration/h100/l2_calibration.md) the partitions (2, duplicated: pair test),
the home-partition granule (4 KiB: latency probe), the 128-B line and 64-B DRAM fetch (sector-stride sweeps), store
allocation and ``store_near`` (write-read and hot+write-stream runs) are measured; 16 ways is the model option that
best reproduces the random-line sweep; the replacement policy is LRU because no other policy reproduces the capacity
and hot+stream sweeps better by more than the run-to-run noise (``iosim.l2fit.TIE_RMS``); the set-index hash is only
known to be hashed (no power-of-two stride conflicts, a 256-B stride keeps the full capacity), so ``xor`` is assumed.
The H200 was measured the same way on 2026-12-03 (reports/calibration/h200: same organisation, 64 + 68 SMs per
partition); the other profiles say what they assume.

* ``sets × ways`` lines of ``line_bytes``, each line split into ``sector_bytes`` sectors. A line is allocated on any
  access (loads and stores: the H100 L2 is write-allocate for stores and keeps per-byte masks, so a store fetches
  nothing from DRAM; ``store_allocate=False`` sends store misses straight to DRAM instead); a load fetches from DRAM
  only the requested sectors not already valid in the line.
* Write-back: a dirty line's dirty sectors go to DRAM when it is evicted; what is still dirty when the trace ends is
  flushed and counted too (the data has to reach DRAM eventually). ncu counts only writes during the kernel, so on
  the H100 the measured FA2 writes are 0.77–1.67× O (reports/validation/h100); writes are not validated.
* Replacement per set (the calibration picks one per GPU); invalid ways are always filled first,
  lowest index first:
  ``lru`` (default); ``fifo``; ``mru``; ``random`` (a deterministic hash of step, simulated row and way);
  ``plru``, tree pseudo-LRU (ways a power of two; ways−1 bits per set, an access points the bits on its path away
  from it, the victim follows them: Al-Zoubi, Milenkovic & Milenkovic, ACM-SE 2004; Handy, "The Cache Memory Book");
  ``srrip``, SRRIP-HP with 2-bit RRPVs (insert at 2, hit → 0, victim the first way at 3 after ageing the set by
  3 − max: Jaleel et al., "High Performance Cache Replacement Using Re-Reference Interval Prediction", ISCA 2010);
  ``brrip``, the same paper's bimodal RRIP (insert at 3, at 2 for ≈ 1 fill in 32, chosen by a hash of the set's fill
  count instead of a random number, so results are deterministic and sampling stays exact);
  ``lip``, LRU insertion (a fill goes to the LRU position, a hit to MRU: Qureshi et al., "Adaptive Insertion Policies
  for High Performance Caching", ISCA 2007).
* Set index (``L2Geometry.set_index``): ``modulo`` (line mod sets), ``rotate`` (line mod sets, rotated by a hash of
  line // sets in steps of ``hash_granule_lines``), ``xor`` (the line's b-bit chunks XOR-folded onto it above the
  low log2(``hash_granule_lines``) bits, then mod sets; 2^b ≥ sets; granule 1 = the plain fold) or ``xor_low`` (``xor``
  with the low log2(G) bits XORed with a hash of the granule index, ``granule_low_hash``, so strides of 2–64 lines
  reach every set too): stand-ins for the undocumented slice/set hash.
* Way spread (``way_spread`` k, profile key ``l2_way_spread``; 0 = off): set s of partition p has ``ways`` + d ways,
  d ∈ [−k, k] from ``way_offsets`` (a golden-ratio sequence over groups of ``hash_granule_lines`` sets, so the mean
  is the nominal size and set sampling stays exact). A calibrated stand-in, not a measured organisation: the GPU's
  sets do not all overflow at the same working set (the measured capacity knees are gradual, and measured DRAM reads
  of causal FA2 change far less with L2 size between the H100 and H200 than an L2 with equal sets predicts); which
  value the profiles use and why: ``hardware/h100.toml`` ``l2_way_spread``. Not with ``plru``.
* DRAM fetch: a load fetches aligned groups of ``dram_fetch_bytes`` around each requested sector (``widen_loads``;
  0 = only the requested sectors).
* Partitions: ``shared`` (one cache of all the sets) or ``duplicated`` (the H100/A100 organisation, whitepaper "H100
  L2 cache"; RRZE-HPC/gpu-benches #3, #13): ``partitions`` P caches of sets/P sets each. Every line has a home
  partition (a hash of its address in granules of ``home_granule_lines``); SM s sits at partition s mod P (assumed).
  A load looks up its own (near) partition; on a miss for a line homed elsewhere it asks the home partition across
  the fabric (a hit there costs no DRAM), and both partitions keep a copy. Stores go to the home partition, or with
  ``store_near`` (measured on the H100: write streams evict read data as fast as read streams do) like loads — near
  first, then home — leaving a clean copy near and the dirty one at home. Data read
  from both sides thus takes room in both: the effective capacity for it is about half the nominal size.

Algorithm. Sets are independent, so the trace is grouped by set (a radix sort on the set id, program order kept
inside a set) into a (steps × sets) matrix, and all sets advance in lockstep: step t processes the t-th access of
every set that has one, with NumPy over a (sets × ways) state (a contiguous prefix of rows: sets are ordered by
decreasing sequence length). Work per step is O(active sets × ways); the number of steps is the longest per-set
sequence, i.e. about line accesses ÷ sets, independent of sampling. With few sampled sets a step is ~20 NumPy calls
(~40 µs), so the simulated rate is about sets ÷ 40 µs ≈ 600 M line accesses/s on the H100 geometry
(benchmarks/bench_l2.py: 20–35× pycachesim on the same trace). Exactness against pycachesim's LRU and FIFO is a CI
test (tests/test_l2.py), including pycachesim's accounting of stores (``pycachesim_stores=True``); every policy is
checked against an independent per-set reference model and hand-worked traces (tests/test_l2_policies.py). Whole-line
single-kernel traces take a leaner loop (``_fast_lockstep*``) for every policy but ``random``. Where numba imports,
``simulate_lines``, ``simulate`` and ``iosim.memory.l2stream`` run the compiled core ``iosim.memory.l2_jit`` instead:
the same model one access at a time in array order, bit-identical (tests/test_l2_jit.py), with lru/fifo/lip kept as
recency-ordered ways (one int64 per way) and the rows split over the CPU's threads; ``simulate`` and
``L2Stream.feed_ranges`` hand it the byte ranges, whose lines it walks itself (no per-line arrays). Speed beside
pycachesim on one exact trace, and on an FA2-like range trace: benchmarks/bench_l2_engine.py. ``IOSIM_L2_ENGINE=numpy``
forces the NumPy loops.

Set sampling (``stride`` k > 1): only sets whose index ≡ 0 (mod k) are simulated (for every index function but
``xor_low`` the set of a line is ≡ line (mod k) when k divides the set count and the hash granule,
``L2Geometry.max_stride``; for ``xor_low`` it is ≡ line ⊕ g (mod k), g = ``granule_low_hash`` of the line's granule, so
the sampled lines of a granule are those ≡ g (mod k): ``L2Geometry.sample_offset``, ``first_sampled``) and every count
is multiplied by k. When every access covers whole aligned groups of k lines, all sets of a group see isomorphic
sequences, so the sampled result is *exact* (for every policy but ``random``, whose hash sees the simulated row);
otherwise it is a set-sampling estimate (Kessler, Hill & Wood, IEEE TC 1994) and ``exact`` is False.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from iosim.errors import IosimError

POLICIES = ("lru", "fifo", "mru", "random", "plru", "srrip", "brrip", "lip")
HASHES = ("modulo", "rotate", "xor", "xor_low")
SHARING = ("shared", "duplicated")


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
    home_granule_lines: int = 128
    store_allocate: bool = True
    store_near: bool = False
    dram_fetch_bytes: int = 0   # DRAM read granularity; 0 = one sector (a load fetches only the sectors it asks for)
    way_spread: int = 0         # ways per set vary by up to ± this (``way_offsets``); 0 = every set has ``ways``

    def __post_init__(self) -> None:
        for name in ("size_bytes", "line_bytes", "sector_bytes", "ways", "partitions", "hash_granule_lines", "home_granule_lines"):
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
        f = self.dram_fetch_bytes
        if f and (f & (f - 1) or f < self.sector_bytes or f > self.line_bytes):
            raise IosimError(f"L2 dram_fetch_bytes {f} must be a power of two between the sector "
                             f"({self.sector_bytes} B) and the line ({self.line_bytes} B)")
        k = self.way_spread
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k >= self.ways:
            raise IosimError(f"L2 way_spread must be a whole number from 0 to ways − 1 = {self.ways - 1}, got {k!r}")
        if k and self.policy == "plru":
            raise IosimError("L2 policy plru (a fixed binary tree over the ways) cannot vary the ways per set; "
                             "use way_spread = 0 or another policy")
        if self.policy not in POLICIES:
            raise IosimError(f"unknown L2 replacement policy {self.policy!r}; known: {', '.join(POLICIES)}")
        if self.policy == "plru" and self.ways & (self.ways - 1):
            raise IosimError(f"L2 policy plru (tree pseudo-LRU) needs a power-of-two number of ways, got {self.ways}")
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
        """Sets of one cache: all of them when shared, sets/partitions when duplicated."""
        return self.sets // self.partitions if self.sharing == "duplicated" else self.sets

    @property
    def num_partitions(self) -> int:
        """Independent caches simulated (1 when shared)."""
        return self.partitions if self.sharing == "duplicated" else 1

    @classmethod
    def from_hardware(cls, hw, **overrides) -> "L2Geometry":
        """The profile's L2: size, line, sector, ways (16 if the profile has none: assumed), partitions; a profile
        with more than one partition gets ``duplicated`` sharing (validated on the H100, reports/validation/h100)."""
        parts = hw.l2_partitions or 1
        g = cls(size_bytes=hw.l2_size_bytes, line_bytes=hw.l2_line_bytes, sector_bytes=hw.l2_sector_bytes,
                ways=hw.l2_ways or 16, partitions=parts, sharing="duplicated" if parts > 1 else "shared")
        # Optional profile keys a calibrated profile may carry (issue 9); absent ones keep the defaults above.
        extra = {}
        for field_name, key in (("policy", "l2_policy"), ("hash", "l2_hash"), ("sharing", "l2_sharing"),
                                ("hash_granule_lines", "l2_hash_granule_lines"),
                                ("home_granule_lines", "l2_home_granule_lines"),
                                ("store_allocate", "l2_store_allocate"), ("store_near", "l2_store_near"),
                                ("dram_fetch_bytes", "l2_dram_fetch_bytes"), ("way_spread", "l2_way_spread")):
            v = getattr(hw, key, None)
            if v is not None:
                extra[field_name] = v
        extra.update(overrides)
        try:
            return replace(g, **extra) if extra else g
        except IosimError as e:   # contradictory keys (e.g. plru with a way spread): name the profile
            raise IosimError(f"hardware profile {hw.path or hw.name}: {e}") from None

    def max_stride(self) -> int:
        """Largest power of two k that may be used for set sampling: k divides the set count and, for ``rotate``,
        ``xor`` and ``xor_low``, the hash granule (the first two leave ``line mod granule`` alone, so set ≡ line
        (mod k); ``xor_low`` XORs it with one value g per granule, so set ≡ line ⊕ g (mod k); either way an aligned
        group of k lines lands on k consecutive sets, one of them ≡ 0 (mod k)). The home granule does not limit k: a
        group spanning several home granules is still sampled correctly on average, but no longer exactly
        (``exact_stride``)."""
        n = self.sets_per_cache
        k = n & -n
        if self.hash in ("rotate", "xor", "xor_low") or self.way_spread:
            # with way_spread, the ways of a set depend on set // hash_granule_lines (``way_offsets``): a sampled
            # group of k consecutive sets must share them
            k = min(k, self.hash_granule_lines & -self.hash_granule_lines)
        return k

    def sample_offset(self, granule: np.ndarray, stride: int) -> np.ndarray:
        """Offset (mod ``stride``) of the sampled lines (set ≡ 0 mod stride) in each hash granule: g mod stride for
        ``xor_low`` (set ≡ line ⊕ g), 0 for the other hashes (set ≡ line)."""
        granule = np.asarray(granule, dtype=np.int64)
        if self.hash != "xor_low":
            return np.zeros_like(granule)
        return granule_low_hash(granule, self.hash_granule_lines) & (stride - 1)

    def exact_stride(self, stride: int) -> bool:
        """Whether sampling with ``stride`` can be exact (given an aligned trace): with duplicated partitions an
        aligned group of lines must have one home, i.e. stride ≤ the home granule."""
        return self.sharing != "duplicated" or stride <= (self.home_granule_lines & -self.home_granule_lines)

    def home(self, line: np.ndarray) -> np.ndarray:
        """Home partition of each line (duplicated sharing)."""
        g = line // self.home_granule_lines
        return ((g * 0x9E3779B1) >> 16) % self.partitions

    def set_index(self, line: np.ndarray) -> np.ndarray:
        """Set of each line within its cache (partition), n = ``sets_per_cache``:

        * ``modulo``: line mod n.
        * ``rotate``: (line mod n + G·(h(line div n) mod n/G)) mod n, G = ``hash_granule_lines``.
        * ``xor``: (line ⊕ ((line ≫ b) ⊕ (line ≫ 2b) ⊕ …) ∧ ¬(G−1)) mod n, b = bit length of n−1 (2^b ≥ n), i.e.
          the b-bit chunks of the line number folded onto it by XOR (full width, so the mod stays uniform when n is
          not a power of two), except for the low log2(G) bits (G = ``hash_granule_lines``, a power of two): those
          stay as they are so set sampling remains possible (``max_stride``). G = 1 is the plain XOR fold.
        * ``xor_low``: ((line ⊕ g) ⊕ (fold ∧ ¬(G−1))) mod n with the same fold and g = ``granule_low_hash``(line ≫
          log2 G, G) < G: the low bits are hashed too (one g per granule), so a layout touching a few lines every
          2–64 lines still reaches every set (the GPU keeps its full capacity at a 256-B stride, hardware/h100.toml
          ``l2_hash``); set ≡ line ⊕ g (mod k) for every k | G, so sampling picks, in each granule, the lines
          ≡ g (mod k) (``sample_offset``).
        """
        n = self.sets_per_cache
        line = np.asarray(line, dtype=np.int64)
        if self.hash == "modulo" and line.ndim == 1 and len(line) >= 100_000:
            jit = compiled_core()
            if jit is not None:   # the same, threaded
                return jit.set_index_modulo(line, n)
        if self.hash in ("xor", "xor_low"):
            G = self.hash_granule_lines
            if G & (G - 1):
                raise IosimError(f"{self.hash} hash needs a power-of-two hash_granule_lines, got {G}")
            b = max((n - 1).bit_length(), 1)
            v = line >> b
            fold = np.zeros_like(line)
            while v.any():
                fold ^= v
                v = v >> b
            if self.hash == "xor_low":
                line = line ^ granule_low_hash(line >> (G.bit_length() - 1), G)
            return (line ^ (fold & ~np.int64(G - 1))) % n
        s = line % n
        if self.hash == "rotate":
            groups = n // self.hash_granule_lines if n % self.hash_granule_lines == 0 else None
            if groups is None:
                raise IosimError(f"rotate hash needs hash_granule_lines ({self.hash_granule_lines}) to divide the "
                                 f"set count {n}")
            h = ((line // n) * 0x9E3779B1) >> 7
            s = (s + (h % groups) * self.hash_granule_lines) % n
        return s


def granule_low_hash(granule, G: int):
    """g(granule) = ⌊((granule · 0x9E3779B1) mod 2^32) / 2^(32 − log2 G)⌋ ∈ [0, G): the top log2(G) bits of the 32-bit
    Fibonacci (multiplicative) hash of the granule index (Knuth, TAOCP vol. 3 §6.4; 0x9E3779B1 ≈ 2^32·(√5 − 1)/2, the
    constant ``home`` uses). The low bits of the set index of an ``xor_low`` line are line ⊕ g. Only the low 32 bits of
    the product matter, so int64 wrap-around (NumPy, numba) gives the same value as exact integers. G a power of two;
    G = 1 gives 0. Works on ints and int64 arrays."""
    lg = G.bit_length() - 1
    return ((granule * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - lg) if lg else granule & 0


def first_sampled(line, geom: L2Geometry, stride: int, residue: int = 0):
    """The first line ≥ ``line`` whose set is ≡ ``residue`` (mod ``stride``): for ``xor_low`` the first line ≥ it,
    in its hash granule or else the next one, whose offset is ≡ residue ⊕ g (mod stride) (stride | G); for the other
    hashes the first line ≡ residue (mod stride). Works on ints and int64 arrays."""
    if geom.hash != "xor_low" or stride == 1:
        return line + ((residue - line) % stride)
    G, m = geom.hash_granule_lines, stride - 1
    lg = G.bit_length() - 1
    gr = line >> lg
    c = line + (((residue ^ granule_low_hash(gr, G)) - line) & m)
    nxt = ((gr + 1) << lg) + ((residue ^ granule_low_hash(gr + 1, G)) & m)
    crossed = (c >> lg) != gr
    if isinstance(crossed, np.ndarray):
        return np.where(crossed, nxt, c)
    return nxt if crossed else c


_GOLDEN = (5 ** 0.5 - 1) / 2
DISABLED = -3
"""Tag of a way that ``way_spread`` switches off in its set: it never matches a line and is never a victim."""


def way_offsets(sets: np.ndarray, partitions: int, spread: int, granule_sets: int) -> np.ndarray:
    """Ways added to (or, negative, taken from) the nominal ``ways`` of each set in each partition: a
    (len(sets), partitions) int array with values in [−spread, spread].

    d(s, p) = ⌊frac(φ·(g·P + p))·(2·spread + 1)⌋ − spread, g = s div ``granule_sets``, φ = (√5 − 1)/2: a Weyl
    (golden-ratio) sequence over the groups, so the values are spread evenly over [−spread, spread] (mean ≈ 0: the
    total capacity stays the nominal one) and every ``granule_sets`` consecutive sets share them, which keeps set
    sampling with a stride dividing ``granule_sets`` exact. Calibrated stand-in for the unequal effective capacity of
    the GPU's sets (a working set of the nominal size overflows some before others: the gradual knee of the measured
    capacity curves, reports/calibration/h100), see the profiles' ``l2_way_spread``."""
    g = (np.asarray(sets, dtype=np.int64) // granule_sets)[:, None] * partitions + np.arange(partitions)[None, :]
    frac = np.modf(g * _GOLDEN)[0]
    return np.minimum(np.floor(frac * (2 * spread + 1)).astype(np.int64), 2 * spread) - spread


def disabled_ways(sets: np.ndarray, partitions: int, ways: int, spread: int, granule_sets: int) -> np.ndarray:
    """Bool (len(sets), partitions·(ways + spread)): the physical ways (``ways + spread`` per partition, partition p
    in columns p·(ways+spread) …) that ``way_offsets`` leaves unused in each set."""
    en = ways + way_offsets(sets, partitions, spread, granule_sets)            # enabled ways per (set, partition)
    w = np.arange(ways + spread)[None, None, :]
    return (w >= en[:, :, None]).reshape(len(sets), partitions * (ways + spread))


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


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int64)


def _plru_tables(ways: int):
    """Tree pseudo-LRU over ``ways`` (a power of two) leaves: ways−1 bits in heap order (node 0 the root, node i's
    children 2i+1 (left) and 2i+2 (right), way w the leaf ways−1+w); a bit 0 sends the victim search left, 1 right.
    Returns (PM, PV, victim): accessing way w sets the bits of the nodes on its path (mask PM[w]) to PV[w], each
    pointing away from w; victim(bits) follows the bits from the root."""
    L = ways.bit_length() - 1
    PM = np.zeros(ways, np.int64)
    PV = np.zeros(ways, np.int64)
    for w in range(ways):
        for lev in range(L):
            node = (1 << lev) - 1 + (w >> (L - lev))
            right = (w >> (L - 1 - lev)) & 1
            PM[w] |= 1 << node
            PV[w] |= (1 - right) << node

    def follow(bits):
        node = np.zeros(np.shape(bits), np.int64)
        for _ in range(L):
            node = 2 * node + 1 + ((bits >> node) & 1)
        return node - (ways - 1)

    if L <= 4:   # up to 16 ways: a table of all 2^(ways−1) bit patterns
        table = follow(np.arange(1 << (ways - 1), dtype=np.int64))
        return PM, PV, lambda bits: table[bits]
    return PM, PV, follow


def _brrip_long(fills: np.ndarray) -> np.ndarray:
    """BRRIP's infrequent long re-reference insertion (RRPV 2 instead of 3), with probability ≈ 1/32: a hash of the
    set's fill count, so it is deterministic and the same in sets that see isomorphic sequences (set sampling)."""
    return ((((fills + 1) * 0x9E3779B1) & 0xFFFFFFFF) >> 27) == 0



class _State:
    """Per-way state of every simulated set: row r holds the ways of all P partitions of set r side by side
    (columns p·W … p·W+W−1 belong to partition p), so a step works on a contiguous prefix of rows."""

    def __init__(self, rows: int, ways: int, partitions: int, policy: str, tag_dtype, mask_dtype,
                 store_hits_touch: bool = True, track_valid: bool = True, track_kernel: bool = True,
                 store_allocate: bool = True):
        self.policy = policy
        self.store_allocate = store_allocate
        self.store_hits_touch = store_hits_touch
        self.track_valid = track_valid     # False when every access covers whole lines: valid = all sectors
        self.track_kernel = track_kernel   # False for one kernel: no attribution needed
        self.W = ways
        self.P = partitions
        c = ways * partitions
        self.BIG = np.iinfo(np.int64).max // 4
        self.T = np.full((rows, c), -1, dtype=tag_dtype)   # tags (line numbers), -1 = invalid
        self.S = np.full((rows, c), -1, dtype=np.int64)    # stamps: last use (LRU/MRU) or insertion (FIFO)
        self.V = np.zeros((rows, c), dtype=mask_dtype)     # valid sector masks
        self.D = np.zeros((rows, c), dtype=mask_dtype)     # dirty sector masks
        self.K = np.zeros((rows, c), dtype=np.int32)       # kernel that last dirtied the line
        # per set and partition: plru tree bits, brrip fill count (srrip/brrip keep the RRPV in S)
        self.B = np.zeros((rows, partitions), dtype=np.int64)
        if policy == "plru":
            self.PM, self.PV, self.victim = _plru_tables(ways)
        self.colpart = (np.arange(c) // ways)[None, :]
        self.cols = np.arange(c)[None, :]
        self.zero = mask_dtype(0)
        self.ar = np.arange(rows)
        self.kzero = np.zeros(rows, dtype=np.int32)
        self.has_disabled = False

    def disable(self, dis: np.ndarray) -> None:
        """Switch off the ways ``dis`` (rows × columns, ``disabled_ways``): they never hit and are never victims."""
        self.T[dis] = DISABLED
        self.has_disabled = bool(dis.any())

    def _cand(self, T, St, r, t):
        """Victim preference per way (larger = evicted first), before restricting to a partition."""
        c = self._cand_policy(T, St, r, t)
        return np.where(T == DISABLED, -self.BIG, c) if self.has_disabled else c

    def _cand_policy(self, T, St, r, t):
        if self.policy == "mru":
            return np.where(T < 0, self.BIG - 1, St)
        if self.policy == "random":
            # invalid ways first, else a deterministic pseudo-random way (hash of step, row and column)
            hsh = ((np.int64(t) * 0x9E3779B1 + r[:, None] * 0x85EBCA77 + self.cols * 0xC2B2AE3D) * 0x27D4EB2F) >> 20 & 0xFFFF
            return np.where(T < 0, self.BIG - 1, hsh)
        if self.policy in ("srrip", "brrip"):
            return np.where(T < 0, self.BIG - 1, St)  # the first way with the largest RRPV (3 after ageing)
        if self.policy == "lip":
            return np.where(T < 0, self.BIG - 1, -St)  # fills carry stamps −(t+2): below every hit (t ≥ 0)
        if self.policy == "plru":
            v = self.victim(self.B[r])[:, self.colpart[0]]   # the tree's victim of each column's partition
            return np.where(T < 0, self.BIG - 1, (self.cols % self.W == v).astype(np.int64))
        return -St  # LRU and FIFO: the oldest stamp (invalid ways have −1)

    def _update(self, r, way, hit, old_tag, old_stamp, x, s, w, kid, t):
        """Install/refresh line x at (r, way); returns (fetched sectors, written-back sectors, their kernel, evicted).
        Without store allocation a store miss leaves the set alone and its sectors go straight to DRAM (reported as
        written back)."""
        if not self.store_allocate:
            bypass = w & ~hit
            if bypass.any():
                keep = ~bypass
                f, wb, wk, ev = self._update(r[keep], way[keep], hit[keep], old_tag[keep], old_stamp[keep], x[keep],
                                             s[keep], w[keep], None if kid is None else kid[keep], t)
                n = len(r)
                F = np.zeros(n, dtype=f.dtype); F[keep] = f
                WB = np.where(bypass, s, self.zero).astype(wb.dtype); WB[keep] = wb
                WK = np.zeros(n, dtype=np.int32); WK[keep] = wk
                if kid is not None:
                    WK[bypass] = kid[bypass]
                EV = np.zeros(n, dtype=bool); EV[keep] = ev
                return F, WB, WK, EV
        ev = ~hit & (old_tag >= 0)
        z = self.zero
        d_old = self.D[r, way]
        if self.track_valid:
            v_old = np.where(hit, self.V[r, way], z)
            fetched = np.where(w, z, s & ~v_old)
            self.V[r, way] = v_old | s
        else:
            fetched = np.where(hit | w, z, s)
        wb = np.where(ev, d_old, z)
        self.T[r, way] = x
        pol = self.policy
        if pol == "fifo":
            self.S[r, way] = np.where(hit, old_stamp, t)
        elif pol in ("lru", "mru", "random"):
            self.S[r, way] = t if self.store_hits_touch else np.where(hit & w, old_stamp, t)
        else:
            keep = None if self.store_hits_touch else hit & w   # pycachesim: store hits leave the state alone
            if pol == "lip":
                new = np.where(hit, t, -(t + 2))
            elif pol == "plru":
                p, wl = way // self.W, way % self.W
                b_old = self.B[r, p]
                nb = (b_old & ~self.PM[wl]) | self.PV[wl]
                self.B[r, p] = nb if keep is None else np.where(keep, b_old, nb)
                new = np.full(len(r), t)
            else:  # srrip / brrip
                if ev.any():   # no RRPV 3 and no invalid way: age the partition's ways until the victim has 3
                    i = np.flatnonzero(ev)
                    cols = (way[i] // self.W * self.W)[:, None] + np.arange(self.W)[None, :]
                    self.S[r[i][:, None], cols] += (3 - old_stamp[i])[:, None]
                if pol == "srrip":
                    ins = 2
                else:
                    p = way // self.W
                    fills = self.B[r, p]
                    ins = np.where(_brrip_long(fills), 2, 3)
                    self.B[r, p] = fills + ~hit
                new = np.where(hit, 0, ins)
            self.S[r, way] = new if keep is None else np.where(keep, old_stamp, new)
        self.D[r, way] = np.where(hit, d_old, z) | np.where(w, s, z)
        if self.track_kernel:
            k_old = self.K[r, way]
            self.K[r, way] = np.where(w, kid, np.where(hit, k_old, 0))
        else:
            k_old = self.kzero[:len(r)]
        return fetched, wb, k_old, ev

    def access(self, m, x, s, w, kid, t):
        """Unpartitioned: one access in each of rows 0…m−1. Returns (hit, fetched, written back, its kernel, evicted)."""
        T = self.T[:m]
        St = self.S[:m]
        ar = self.ar[:m]
        match = T == x[:, None]
        way = np.where(match, self.BIG, self._cand(T, St, ar, t)).argmax(axis=1)
        hit = match[ar, way]
        f, wb, wk, ev = self._update(ar, way, hit, T[ar, way], St[ar, way], x, s, w, kid, t)
        return hit, f, wb, wk, ev

    def access2(self, m, q, h, x, s, w, kid, t):
        """Partitioned: rows 0…m−1 look up partition q; those that miss there for a line homed at h ≠ q then look
        up partition h (one tag comparison serves both). Returns the near results and (index, home hit, fetched,
        written back, its kernel, evicted) of the second lookups."""
        T = self.T[:m]
        St = self.S[:m]
        ar = self.ar[:m]
        eq = T == x[:, None]
        inq = self.colpart == q[:, None]
        cand = self._cand(T, St, ar, t)
        mq = eq & inq
        wq = np.where(mq, self.BIG, np.where(inq, cand, -self.BIG)).argmax(axis=1)
        hit = mq[ar, wq]
        # the home partition is asked when the near copy misses, lacks requested sectors (a load), or for a store
        # issued near (store_near: the dirty copy lives at home)
        partial = hit & ~w & ((s & ~self.V[ar, wq]) != 0) if self.track_valid else False
        fwd = np.flatnonzero((~hit | partial | w) & (q != h))
        # the second lookup reads the state before the first update (different columns: no interference)
        if len(fwd):
            Tf, Sf, cf, hf = T[fwd], St[fwd], cand[fwd], h[fwd]
            inh = self.colpart == hf[:, None]
            mh = (Tf == x[fwd][:, None]) & inh
            wh = np.where(mh, self.BIG, np.where(inh, cf, -self.BIG)).argmax(axis=1)
            af = self.ar[:len(fwd)]
            hit2 = mh[af, wh]
            old2, st2 = Tf[af, wh], Sf[af, wh]
        f, wb, wk, ev = self._update(ar, wq, hit, T[ar, wq], St[ar, wq], x, s, w, kid, t)
        far_store = w & (q != h)
        if far_store.any():  # a store issued near (store_near) leaves a clean copy there; the home copy is dirty
            self.D[ar[far_store], wq[far_store]] = self.zero
        if len(fwd):
            f2, wb2, wk2, ev2 = self._update(fwd, wh, hit2, old2, st2, x[fwd], s[fwd], w[fwd],
                                             None if kid is None else kid[fwd], t)
            second = (fwd, hit2, f2, wb2, wk2, ev2)
        else:
            second = None
        return hit, f, wb, wk, ev, second


def compiled_core():
    """The compiled core (``iosim.memory.l2_jit``, numba), or None for the NumPy loops: ``IOSIM_L2_ENGINE=numpy`` forces
    them, ``numba`` requires the compiled core, unset takes it when numba imports."""
    engine = os.environ.get("IOSIM_L2_ENGINE", "").strip().lower()
    if engine not in ("", "numba", "numpy"):
        raise IosimError(f"IOSIM_L2_ENGINE must be numba or numpy (or unset), got {engine!r}")
    if engine == "numpy":
        return None
    try:
        from iosim.memory import l2_jit
    except ImportError as e:
        if engine == "numba":
            raise IosimError(f"IOSIM_L2_ENGINE=numba but the compiled L2 core does not import ({e}); install numba "
                             "or unset IOSIM_L2_ENGINE") from None
        return None
    return l2_jit


def simulate_lines(sets: np.ndarray, tags: np.ndarray, sectors: np.ndarray, write: np.ndarray, ways: int,
                   policy: str = "lru", kernel: np.ndarray | None = None, num_kernels: int = 1,
                   near: np.ndarray | None = None, home: np.ndarray | None = None, partitions: int = 1,
                   pycachesim_stores: bool = False, store_allocate: bool = True, store_near: bool = False,
                   way_spread: int = 0, spread_granule_sets: int = 128):
    """Exact simulation of an ordered line trace; returns raw (unscaled) counts.

    sets, tags: int arrays (the tag may be the full line number); sectors: requested sector mask per access;
    write: bool. Accesses are processed in array order within each set. With ``partitions`` P > 1, ``near`` is the
    partition of the issuing SM and ``home`` the partition that owns the line: a load looks up its near partition,
    and on a miss there for a line homed elsewhere, the home partition (a hit there crosses the fabric, a miss reads
    DRAM); both keep the line (duplication). Stores go to the home partition. Sets are indexed within a partition.

    pycachesim_stores: pycachesim's accounting of stores, for the exactness tests: a store that hits neither counts
    as a hit nor refreshes the line's LRU position (pycachesim ``Cache__store`` only marks it dirty).

    way_spread k > 0: set s of partition p has ``ways`` + d(s, p) ways, d = ``way_offsets`` (values from the set
    numbers given here, in groups of ``spread_granule_sets``); not with plru.
    """
    n = len(sets)
    if policy not in POLICIES:
        raise IosimError(f"unknown replacement policy {policy!r}; known: {', '.join(POLICIES)}")
    if policy == "plru" and ways & (ways - 1):
        raise IosimError(f"plru (tree pseudo-LRU) needs a power-of-two number of ways, got {ways}")
    if way_spread and (policy == "plru" or not 0 < way_spread < ways):
        raise IosimError(f"way_spread {way_spread} needs 0 < way_spread < ways ({ways}) and a policy other than plru")
    k_acc = (np.array([n] + [0] * (num_kernels - 1), np.int64) if kernel is None else
             np.bincount(np.asarray(kernel, dtype=np.int64), minlength=num_kernels).astype(np.int64))
    out = {"accesses": n, "hits": 0, "misses": 0, "evictions": 0, "dirty_evictions": 0, "flush_lines": 0,
           "dram_read_sectors": 0, "dram_write_sectors": 0, "fabric_reads": 0,
           "k_read": np.zeros(num_kernels, np.int64), "k_write": np.zeros(num_kernels, np.int64),
           "k_acc": k_acc, "k_hit": np.zeros(num_kernels, np.int64)}
    if n == 0:
        return out
    P = partitions
    if P > 1 and (near is None or home is None):
        raise IosimError("a partitioned L2 needs the near and home partition of every access")
    sectors = np.asarray(sectors)
    sets = np.asarray(sets, dtype=np.int64)
    smax = int(sets.max()) + 1
    dense = smax <= 4 * n + 1024
    jit = compiled_core()
    if jit is not None:   # state rows indexed by set id (dense) or by rank among the distinct sets
        if dense:
            row, rows, uniq = sets, smax, np.arange(smax)
        else:
            uniq, row = np.unique(sets, return_inverse=True)
            rows = len(uniq)
        hrow = None
        if policy == "random":   # the lockstep's row: rank by decreasing count, then set id
            rank = np.empty(rows, np.int64)
            rank[np.argsort(-np.bincount(row, minlength=rows), kind="stable")] = np.arange(rows)
            hrow = rank[row]
        dis = disabled_ways(uniq, P, ways, way_spread, spread_granule_sets) if way_spread else None
        nr = None
        if P > 1:
            nr = near if store_near else np.where(np.asarray(write, dtype=bool), home, near)
        spl = 8 if sectors.dtype.itemsize == 1 or int(sectors.max()) < 256 else 32
        return jit.run_lines(out, row, hrow, tags, sectors, write, kernel if num_kernels > 1 else None, nr, home,
                             rows, ways + way_spread, P, policy, dis, pycachesim_stores, store_allocate, num_kernels,
                             spl)
    kernel = np.zeros(n, dtype=np.int8) if kernel is None else np.asarray(kernel, dtype=np.int64)
    mask_dtype = np.uint8 if int(sectors.max()) < 256 else np.uint32
    tags = np.asarray(tags, dtype=np.int64)
    tag_dtype = np.int32 if int(tags.max()) < 2**31 - 1 else np.int64
    # Per-set sequences as columns of a (steps × sets) matrix; sets ordered by decreasing length, so the sets
    # active at step t are a prefix of the columns and every step works on contiguous views.
    if dense:   # dense set ids: remap through a table instead of sorting
        present = np.bincount(sets, minlength=smax) > 0
        remap = np.cumsum(present) - 1
        set_id = remap[sets]
        nsets = int(present.sum())
        uniq = np.flatnonzero(present) if way_spread else None
    else:
        uniq, set_id = np.unique(sets, return_inverse=True)
        nsets = int(set_id.max()) + 1
    cnt = np.bincount(set_id, minlength=nsets)
    rank = np.empty(nsets, dtype=np.int32)
    rank[np.argsort(-cnt, kind="stable")] = np.arange(nsets)
    col = rank[set_id]
    dis = None
    if way_spread:   # physical ways ways + k per partition; those beyond a set's own count are switched off
        col_set = np.empty(nsets, np.int64)
        col_set[rank] = uniq
        dis = disabled_ways(col_set, P, ways, way_spread, spread_granule_sets)
        ways = ways + way_spread
        del col_set
    # position of each access within its set's sequence; a stable sort on small ints is a radix sort
    key = set_id.astype(np.int16) if nsets < 2**15 else (set_id.astype(np.int32) if nsets < 2**31 else set_id)
    order = np.argsort(key, kind="stable")
    del key
    first = np.concatenate(([0], np.cumsum(cnt)))[:-1]
    within = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
    within[order] = np.arange(n) - first[set_id[order]]
    del order, set_id
    steps = int(cnt.max())
    active = _active_counts(np.sort(cnt)[::-1], steps)

    def mat(vals, dtype, fill=0):
        M = np.full((steps, nsets), fill, dtype=dtype)
        M[within, col] = vals
        return M

    multi = num_kernels > 1
    X = mat(tags, tag_dtype, -2)
    SC = mat(sectors, mask_dtype)
    WR = mat(np.asarray(write, dtype=bool), bool)
    KI = mat(kernel, np.int32) if num_kernels > 1 else np.zeros((steps, 1), np.int32)
    if P > 1:
        HM = mat(np.asarray(home, dtype=np.int64), np.int8)
        # stores go to the home partition, or (store_near) like loads: near first, then home, both keep the line
        NR = mat(near if store_near else np.where(np.asarray(write, dtype=bool), home, near), np.int8)
    del within, col
    full = (1 << int(sectors.max()).bit_length()) - 1
    track_valid = not bool(np.all(sectors == full))
    if P == 1 and policy != "random" and not track_valid and not multi and store_allocate:
        return _fast_lockstep(out, X, SC, WR, active, steps, nsets, ways, policy, mask_dtype, tag_dtype,
                              pycachesim_stores, num_kernels, dis)
    if P > 1 and policy != "random" and not track_valid and not multi and store_allocate and not pycachesim_stores:
        return _fast_lockstep_partitioned(out, X, SC, WR, NR, HM, active, steps, nsets, ways, P, policy, mask_dtype,
                                          tag_dtype, dis)
    st = _State(nsets, ways, P, policy, tag_dtype, mask_dtype, store_hits_touch=not pycachesim_stores,
                track_valid=track_valid, track_kernel=num_kernels > 1, store_allocate=store_allocate)
    if dis is not None:
        st.disable(dis)
    HIT = np.zeros((steps, nsets), dtype=bool)
    FET = np.zeros((steps, nsets), dtype=mask_dtype)
    WB = np.zeros((steps, nsets), dtype=mask_dtype)
    WBK = np.zeros((steps, nsets) if num_kernels > 1 else (steps, 1), dtype=np.int32)
    EV = np.zeros((steps, nsets), dtype=bool)
    if P > 1:
        FAB = np.zeros((steps, nsets), dtype=bool)
        WB2 = np.zeros((steps, nsets), dtype=mask_dtype)
        WBK2 = np.zeros((steps, nsets) if num_kernels > 1 else (steps, 1), dtype=np.int32)
        EV2 = np.zeros((steps, nsets), dtype=bool)
    for t in range(steps):
        m = int(active[t])
        x = X[t, :m]
        s = SC[t, :m]
        w = WR[t, :m]
        k = KI[t, :m] if multi else None
        if P == 1:
            h, f, wb, wk, ev = st.access(m, x, s, w, k, t)
        else:
            h, f, wb, wk, ev, second = st.access2(m, NR[t, :m], HM[t, :m], x, s, w, k, t)
            if second is not None:
                i, h2, f2, wb2, wk2, ev2 = second
                # the home copy supplies what it holds; DRAM supplies the rest (requested sectors missing there)
                f[i] = f2
                FAB[t, i] = h2
                WB2[t, i] = wb2
                if multi:
                    WBK2[t, i] = wk2
                EV2[t, i] = ev2
        HIT[t, :m] = h
        FET[t, :m] = f
        WB[t, :m] = wb
        if multi:
            WBK[t, :m] = wk
        EV[t, :m] = ev
    valid = X != -2
    nf = _popcount(FET)
    nw = _popcount(WB)
    flush = _popcount(st.D.ravel())
    kv = KI[valid] if multi else np.zeros(n, np.int32)
    out["misses"] = int((valid & ~HIT).sum())
    if pycachesim_stores:
        HIT &= ~WR
    out["hits"] = int(HIT.sum())
    out["evictions"] = int(EV.sum())
    out["dirty_evictions"] = int((EV & (WB != 0)).sum())
    out["dram_read_sectors"] = int(nf.sum())
    out["dram_write_sectors"] = int(nw.sum() + flush.sum())
    out["k_read"] = np.bincount(kv, weights=nf[valid], minlength=num_kernels).astype(np.int64)
    k_write = np.bincount(WBK.ravel() if multi else np.zeros(nw.size, np.int32), weights=nw.ravel(), minlength=num_kernels)
    if P > 1:
        nw2 = _popcount(WB2)
        out["evictions"] += int(EV2.sum())
        out["dirty_evictions"] += int((EV2 & (WB2 != 0)).sum())
        out["dram_write_sectors"] += int(nw2.sum())
        out["fabric_reads"] = int(FAB.sum())
        k_write = k_write + np.bincount(WBK2.ravel() if multi else np.zeros(nw2.size, np.int32), weights=nw2.ravel(),
                                        minlength=num_kernels)
    k_write = k_write + np.bincount(st.K.ravel(), weights=flush, minlength=num_kernels)
    out["k_write"] = k_write.astype(np.int64)
    out["k_hit"] = np.bincount(kv, weights=HIT[valid], minlength=num_kernels).astype(np.int64)
    out["flush_lines"] = int((st.D.ravel() != 0).sum())
    return out


class _FastPolicy:
    """Replacement state of the fast loops: NS (flat, per way) is the victim preference, larger = evicted first
    (invalid ways INV, above everything, so they are filled first, lowest index first); per set and partition (state
    index row·P + partition) srrip/brrip keep an RRPV offset (RRPV = NS + OFF, so ageing a set is one addition) and a
    fill count, plru its tree bits and its number of valid ways (lines are never invalidated here, so ways fill in
    index order and the first invalid way is that count)."""

    def __init__(self, policy: str, ways: int, nstate: int, NS: np.ndarray):
        self.policy, self.W, self.NS = policy, ways, NS
        if policy in ("srrip", "brrip"):
            self.OFF = np.zeros(nstate, np.int64)
            self.FC = np.zeros(nstate, np.int64)
        if policy == "plru":
            self.CNT = np.zeros(nstate, np.int64)
            self.BITS = np.zeros(nstate, np.int64)
            self.PM, self.PV, self.victim = _plru_tables(ways)

    def plru_victim(self, sp):
        """Way (within its partition) a plru miss takes: the first invalid one, else the tree's victim."""
        c = self.CNT[sp]
        return np.where(c < self.W, c, self.victim(self.BITS[sp]))

    def update(self, t, idx, sp, h, keep):
        """Way idx (state sp) was accessed at step t, a hit where h; keep: store hits that leave the state alone
        (pycachesim accounting) or None."""
        NS, pol = self.NS, self.policy
        if pol == "fifo":
            NS[idx] = np.where(h, NS[idx], -t)
            return
        if pol == "plru":
            wl = idx % self.W
            b = self.BITS[sp]
            nb = (b & ~self.PM[wl]) | self.PV[wl]
            self.BITS[sp] = nb if keep is None else np.where(keep, b, nb)
            c = self.CNT[sp]
            self.CNT[sp] = c + (~h & (c < self.W))
            return
        if pol == "lru":
            new = -t
        elif pol == "mru":
            new = t
        elif pol == "lip":
            new = np.where(h, -t, t + 2)
        else:  # srrip / brrip
            old = NS[idx]
            off = self.OFF[sp]
            off = off + np.where(~h & (old != _INV), 3 - (old + off), 0)  # age so the victim's RRPV is 3
            self.OFF[sp] = off
            if pol == "srrip":
                ins = 2
            else:
                fc = self.FC[sp]
                ins = np.where(_brrip_long(fc), 2, 3)
                self.FC[sp] = fc + ~h
            new = np.where(h, 0, ins) - off
        NS[idx] = new if keep is None else np.where(keep, NS[idx], new)


_INV = np.iinfo(np.int64).max // 8


def _fast_lockstep(out, X, SC, WR, active, steps, nsets, ways, policy, mask_dtype, tag_dtype, pycachesim_stores,
                   num_kernels, dis=None):
    """The common case, with fewer NumPy calls per step: one cache (no partitions), any policy but random, every
    access a whole line, one kernel. Same results as the general loop (tests/test_l2.py compares both with pycachesim)."""
    C = ways
    T = np.full(nsets * C, -1, dtype=tag_dtype)      # flat (row-major sets × ways)
    NS = np.full(nsets * C, _INV, dtype=np.int64)   # victim preference (_FastPolicy), e.g. minus the LRU stamp
    D = np.zeros(nsets * C, dtype=mask_dtype)        # dirty sectors
    if dis is not None:                               # way_spread: switched-off ways never match, never evicted
        T[dis.ravel()] = DISABLED
        NS[dis.ravel()] = -_INV
    HIT = np.zeros((steps, nsets), dtype=bool)
    OLDV = np.zeros((steps, nsets), dtype=bool)      # the way taken held a valid line
    DOLD = np.zeros((steps, nsets), dtype=mask_dtype)
    base = np.arange(nsets, dtype=np.int64) * C
    BIG = np.iinfo(np.int64).max // 4
    pol = _FastPolicy(policy, ways, nsets, NS)
    plru = policy == "plru"
    for t in range(steps):
        m = int(active[t])
        x = X[t, :m]
        Tm = T[:m * C].reshape(m, C)
        match = Tm == x[:, None]
        if plru:
            hany = match.any(axis=1)
            way = np.where(hany, match.argmax(axis=1), pol.plru_victim(slice(0, m)))
        else:
            way = np.where(match, BIG, NS[:m * C].reshape(m, C)).argmax(axis=1)
        idx = base[:m] + way
        h = match.reshape(-1)[idx]
        HIT[t, :m] = h
        OLDV[t, :m] = T[idx] >= 0
        d_old = D[idx]
        DOLD[t, :m] = d_old
        T[idx] = x
        pol.update(t, idx, slice(0, m), h, (h & WR[t, :m]) if pycachesim_stores else None)
        w = WR[t, :m]
        D[idx] = (d_old * h) | (SC[t, :m] * w)
    valid = X != -2
    EV = OLDV & ~HIT & valid
    WB = np.where(EV, DOLD, 0)
    fetched = np.where(HIT | WR | ~valid, 0, SC)
    nf = _popcount(fetched)
    nw = _popcount(WB)
    flush = _popcount(D)
    n = out["accesses"]
    out["misses"] = int((valid & ~HIT).sum())
    if pycachesim_stores:
        HIT &= ~WR
    out["hits"] = int(HIT.sum())
    out["evictions"] = int(EV.sum())
    out["dirty_evictions"] = int((WB != 0).sum())
    out["dram_read_sectors"] = int(nf.sum())
    out["dram_write_sectors"] = int(nw.sum() + flush.sum())
    out["k_read"] = np.array([out["dram_read_sectors"]], dtype=np.int64)
    out["k_write"] = np.array([out["dram_write_sectors"]], dtype=np.int64)
    out["k_hit"] = np.array([out["hits"]], dtype=np.int64)
    out["k_acc"] = np.array([n], dtype=np.int64)
    out["flush_lines"] = int((D != 0).sum())
    return out


class PartitionedState:
    """The kept state of the fast partitioned loop (``partitioned_steps``): tags T, victim preference NS and dirty
    sectors D, flat over (row, partition·ways + way), and the policy's per-(row, partition) state. One pass
    (``_fast_lockstep_partitioned``) and the chunked feed of ``iosim.memory.l2stream`` share it."""

    def __init__(self, rows: int, ways: int, P: int, policy: str, mask_dtype, tag_dtype):
        C = ways * P
        self.C, self.W, self.P = C, ways, P
        self.T = np.full(rows * C, -1, dtype=tag_dtype)
        self.NS = np.full(rows * C, _INV, dtype=np.int64)
        self.D = np.zeros(rows * C, dtype=mask_dtype)
        self.pol = _FastPolicy(policy, ways, rows * P, self.NS)
        self.plru = policy == "plru"
        self.base = np.arange(rows, dtype=np.int64) * C
        self.colpart = (np.arange(C) // ways)[None, :].astype(np.int8)
        self.sbase = np.arange(rows, dtype=np.int64) * P   # state index of (row, partition): row·P + partition

    def disable(self, dis: np.ndarray) -> None:
        """Switch off the ways ``dis`` (rows × columns, ``disabled_ways``): a tag no line has and a victim preference
        below every way of the partition, so they never hit and are never taken; ``permute`` carries them along."""
        self.T[dis.ravel()] = DISABLED
        self.NS[dis.ravel()] = -_INV

    def permute(self, src: np.ndarray) -> None:
        """Row r of the state becomes old row src[r] (NS in place: the policy object shares it)."""
        R, C, P = len(src), self.C, self.P
        self.T = self.T.reshape(R, C)[src].ravel()
        self.NS[:] = self.NS.reshape(R, C)[src].ravel()
        self.D = self.D.reshape(R, C)[src].ravel()
        for name in ("OFF", "FC", "CNT", "BITS"):
            if hasattr(self.pol, name):
                setattr(self.pol, name, getattr(self.pol, name).reshape(R, P)[src].ravel())


def partitioned_steps(st: PartitionedState, X, SC, WR, NR, HM, active, steps: int, t0: int = 0):
    """Run the (steps × rows) matrices through ``st``, replacement stamps from t0; returns (counts without the
    final flush, DRAM sectors fetched per matrix cell). Whole-line accesses, one kernel, any policy but random."""
    T, D, NS, pol, base, sbase, colpart, C, ways = st.T, st.D, st.NS, st.pol, st.base, st.sbase, st.colpart, st.C, st.W
    shape = X.shape
    md = D.dtype
    HIT, OLDV, DOLD = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, md)
    FWD, HIT2, OLDV2, DOLD2 = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, md)
    BIG = np.iinfo(np.int64).max // 4
    plru = st.plru
    for t in range(steps):
        m = int(active[t])
        x = X[t, :m]
        q = NR[t, :m]
        Tm = T[:m * C].reshape(m, C)
        NSm = NS[:m * C].reshape(m, C)
        eq = Tm == x[:, None]
        inq = colpart == q[:, None]
        mq = eq & inq
        sp = sbase[:m] + q
        if plru:
            way = np.where(mq.any(axis=1), mq.argmax(axis=1), q * ways + pol.plru_victim(sp))
        else:
            way = np.where(mq, BIG, np.where(inq, NSm, -BIG)).argmax(axis=1)
        idx = base[:m] + way
        hit = mq.reshape(-1)[idx]
        fwd = np.flatnonzero((~hit | WR[t, :m]) & (q != HM[t, :m]))  # stores issued near go through to home
        if len(fwd):
            hf = HM[t, :m][fwd]
            inh = colpart == hf[:, None]
            mh = eq[fwd] & inh
            sp2 = sbase[fwd] + hf
            if plru:
                wh = np.where(mh.any(axis=1), mh.argmax(axis=1), hf * ways + pol.plru_victim(sp2))
            else:
                wh = np.where(mh, BIG, np.where(inh, NSm[fwd], -BIG)).argmax(axis=1)
            hit2 = mh[np.arange(len(fwd)), wh]
            idx2 = base[fwd] + wh
        HIT[t, :m] = hit
        OLDV[t, :m] = T[idx] >= 0
        d_old = D[idx]
        DOLD[t, :m] = d_old
        T[idx] = x
        pol.update(t0 + t, idx, sp, hit, None)
        D[idx] = (d_old * hit) | (SC[t, :m] * (WR[t, :m] & (q == HM[t, :m])))  # only the home copy is dirty
        if len(fwd):
            FWD[t, fwd] = True
            HIT2[t, fwd] = hit2
            OLDV2[t, fwd] = T[idx2] >= 0
            d2 = D[idx2]
            DOLD2[t, fwd] = d2
            T[idx2] = x[fwd]
            pol.update(t0 + t, idx2, sp2, hit2, None)
            D[idx2] = (d2 * hit2) | (SC[t, :m][fwd] * WR[t, :m][fwd])  # a forwarded store dirties the home copy
    valid = X != -2
    EV = OLDV & ~HIT & valid
    EV2 = OLDV2 & ~HIT2 & FWD
    WB = np.where(EV, DOLD, 0)
    WB2 = np.where(EV2, DOLD2, 0)
    dram = valid & ~WR & ~HIT & ~(FWD & HIT2)
    nf = _popcount(np.where(dram, SC, 0))
    counts = {"misses": int((valid & ~HIT).sum()), "hits": int(HIT.sum()),
              "evictions": int(EV.sum() + EV2.sum()), "dirty_evictions": int((WB != 0).sum() + (WB2 != 0).sum()),
              "fabric_reads": int((FWD & HIT2).sum()), "dram_read_sectors": int(nf.sum()),
              "dram_write_sectors": int(_popcount(WB).sum() + _popcount(WB2).sum())}
    return counts, nf


def _fast_lockstep_partitioned(out, X, SC, WR, NR, HM, active, steps, nsets, ways, P, policy, mask_dtype, tag_dtype,
                               dis=None):
    """``_fast_lockstep`` for duplicated partitions (same results as the general loop: tests/test_l2.py)."""
    st = PartitionedState(nsets, ways, P, policy, mask_dtype, tag_dtype)
    if dis is not None:
        st.disable(dis)
    counts, _ = partitioned_steps(st, X, SC, WR, NR, HM, active, steps)
    flush = _popcount(st.D)
    out.update(counts)
    out["dram_write_sectors"] += int(flush.sum())
    out["k_read"] = np.array([out["dram_read_sectors"]], dtype=np.int64)
    out["k_write"] = np.array([out["dram_write_sectors"]], dtype=np.int64)
    out["k_hit"] = np.array([out["hits"]], dtype=np.int64)
    out["k_acc"] = np.array([out["accesses"]], dtype=np.int64)
    out["flush_lines"] = int((st.D != 0).sum())
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
    """Lines touched by each range, restricted to those whose set is ≡ residue (mod stride) (lines ≡ residue, or for
    ``xor_low`` lines ≡ residue ⊕ g (mod stride) in each hash granule, ``first_sampled``): (line, sectors, write, sm,
    kernel), in range order, lines ascending within a range."""
    lb, sb = geom.line_bytes, geom.sector_bytes
    a = tr.addr
    e = tr.addr + tr.nbytes
    if geom.hash == "xor_low" and stride > 1:
        idx, line = _sampled_xor_low(a // lb, (e - 1) // lb, tr.nbytes > 0, geom, stride, residue)
    else:
        fl = a // lb
        f = fl + ((residue - fl) % stride)
        del fl
        cnt = np.where(tr.nbytes > 0, np.maximum(((e - 1) // lb - f) // stride + 1, 0), 0)
        total = int(cnt.sum())
        if bool(np.all(cnt == 1)):
            idx = None
            line = f
        else:
            idx = np.repeat(np.arange(len(a), dtype=np.int64), cnt)
            line = np.arange(total, dtype=np.int64)
            line -= np.repeat(np.cumsum(cnt) - cnt, cnt)
            line *= stride
            line += f[idx]
        del f, cnt
    g = (lambda v: v) if idx is None else (lambda v: v[idx])
    base = line * lb
    s0 = (np.maximum(g(a), base) - base) // sb
    s1 = (np.minimum(g(e), base + lb) - base - 1) // sb
    del base
    mask = ((np.left_shift(np.int64(1), s1 + 1) - 1) ^ (np.left_shift(np.int64(1), s0) - 1)).astype(
        np.uint8 if geom.sectors_per_line <= 8 else np.uint32)
    del s0, s1
    return line, mask, g(tr.write), g(tr.sm), g(tr.kernel)


def _sampled_xor_low(fl: np.ndarray, ll: np.ndarray, nonempty: np.ndarray, geom: L2Geometry, stride: int,
                     residue: int):
    """``expand_lines`` for ``xor_low``: the lines of [fl, ll] (per range) whose offset in their hash granule is
    ≡ residue ⊕ g (mod stride). Each range is cut at granule boundaries into pieces (one g per piece), and each piece
    expanded at the stride. Returns (range index per line, line)."""
    G = geom.hash_granule_lines
    lg = G.bit_length() - 1
    g0 = fl >> lg
    npieces = np.where(nonempty, (ll >> lg) - g0 + 1, 0)
    pr = np.repeat(np.arange(len(fl), dtype=np.int64), npieces)                 # range of each piece
    gr = np.arange(len(pr), dtype=np.int64) - np.repeat(np.cumsum(npieces) - npieces, npieces) + g0[pr]
    lo = np.maximum(fl[pr], gr << lg)
    hi = np.minimum(ll[pr], ((gr + 1) << lg) - 1)
    f = lo + (((residue ^ granule_low_hash(gr, G)) - lo) & (stride - 1))
    del lo, gr
    cnt = np.maximum((hi - f) // stride + 1, 0)
    del hi
    li = np.repeat(np.arange(len(pr), dtype=np.int64), cnt)
    line = np.arange(len(li), dtype=np.int64)
    line -= np.repeat(np.cumsum(cnt) - cnt, cnt)
    line *= stride
    line += f[li]
    return pr[li], line


def aligned(tr: RunTrace, geom: L2Geometry, stride: int) -> bool:
    """Whether every range covers whole aligned groups of ``stride`` lines (then sampling with it is exact)."""
    g = stride * geom.line_bytes
    ok = tr.nbytes == 0
    ok |= (tr.addr % g == 0) & (tr.nbytes % g == 0)
    return bool(ok.all())


def choose_stride(tr: RunTrace, geom: L2Geometry, min_sets: int = 96) -> int:
    """The sampling stride: the largest allowed power of two that still leaves at least ``min_sets`` sets simulated
    (per cache), preferring the largest stride at which the trace is aligned, i.e. sampling stays exact."""
    kmax = geom.max_stride()
    k = 1
    while k * 2 <= kmax and geom.sets_per_cache // (k * 2) >= min_sets:
        k *= 2
    return k


def simulate(tr: RunTrace, geom: L2Geometry, stride: int | None = None, num_kernels: int | None = None,
             min_sets: int = 96) -> L2Result:
    """Run the trace through the L2. stride=None picks one (``choose_stride``); 1 simulates every set exactly."""
    return simulate_owned([tr], geom, stride, num_kernels, min_sets)


def widen_loads(mask: np.ndarray, write: np.ndarray, geom: L2Geometry) -> np.ndarray:
    """Loads fetch whole aligned groups of ``dram_fetch_bytes`` (measured 64 B on the H100: one 32-B sector per
    128-B line reads 64 B from DRAM, reports/calibration/h100); stores keep their exact sector masks."""
    g = geom.dram_fetch_bytes // geom.sector_bytes if geom.dram_fetch_bytes else 1
    if g <= 1:
        return mask
    full = (1 << g) - 1
    out = mask.copy()
    for k in range(0, geom.sectors_per_line, g):
        grp = (full << k)
        hit = (mask & grp) != 0
        out = np.where(hit & ~write, out | grp, out)
    return out.astype(mask.dtype)


def simulate_owned(holder: list, geom: L2Geometry, stride: int | None = None, num_kernels: int | None = None,
                   min_sets: int = 96) -> L2Result:
    """``simulate`` for a trace passed as ``[trace]``: the list is emptied once the ranges are simulated (compiled
    core: ``iosim.memory.l2stream.L2Stream.feed_ranges`` walks their lines in place) or expanded into lines (NumPy
    loops), so a caller that keeps no other reference lets them be freed as soon as possible (peak memory)."""
    tr = holder[0]
    if stride is None:
        stride = choose_stride(tr, geom, min_sets)
    if stride < 1 or stride & (stride - 1) or stride > geom.max_stride():
        raise IosimError(f"sampling stride {stride} must be a power of two dividing {geom.max_stride()}")
    nk = int(tr.kernel.max()) + 1 if num_kernels is None and len(tr.kernel) else (num_kernels or 1)
    # 'random' hashes the simulated row, so isomorphic sets need not evict alike: sampling it is never exact
    exact = stride == 1 or (geom.policy != "random" and geom.exact_stride(stride) and aligned(tr, geom, stride))
    if compiled_core() is not None:   # the compiled core walks the ranges' lines in place
        from iosim.memory.l2stream import L2Stream
        st = L2Stream(geom, geom.sets_per_cache // stride, nk, stride=stride)
        st.feed_ranges(tr.addr, tr.nbytes, tr.write, tr.sm, tr.kernel if nk > 1 else None)
        holder.clear()
        del tr
        r = st.finish()
    else:
        r = _simulate_expanded(holder, geom, stride, nk)
    k = stride
    per_kernel = tuple((int(r["k_read"][i]) * k, int(r["k_write"][i]) * k, int(r["k_acc"][i]) * k, int(r["k_hit"][i]) * k)
                       for i in range(nk))
    return L2Result(accesses=r["accesses"] * k, hits=r["hits"] * k, misses=r["misses"] * k,
                    evictions=r["evictions"] * k, dirty_evictions=r["dirty_evictions"] * k,
                    dram_read_sectors=r["dram_read_sectors"] * k, dram_write_sectors=r["dram_write_sectors"] * k,
                    stride=k, exact=exact, per_kernel=per_kernel)


def _simulate_expanded(holder: list, geom: L2Geometry, stride: int, nk: int) -> dict:
    """``simulate_owned``'s NumPy path: the lines expanded, the ranges freed, then ``simulate_lines``."""
    tr = holder[0]
    line, mask, w, sm, kern = expand_lines(tr, geom, stride)
    mask = widen_loads(mask, w, geom)
    holder.clear()
    del tr
    P = geom.num_partitions
    near = home = None
    if P > 1:
        near, home = (sm % P).astype(np.int8), geom.home(line).astype(np.int8)
    del sm
    sets = geom.set_index(line)
    r = simulate_lines(sets, line, mask, w, geom.ways, geom.policy, kern if nk > 1 else None, nk, near, home, P,
                       store_allocate=geom.store_allocate, store_near=geom.store_near, way_spread=geom.way_spread,
                       spread_granule_sets=geom.hash_granule_lines)
    return r
