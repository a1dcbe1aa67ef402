"""The chunked L2 (iosim.memory.l2stream): feeding a line trace in any number of chunks gives the counts of one pass
(simulate_lines), for every policy, with and without duplicated partitions and partial-line accesses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from iosim.memory.l2 import L2Geometry, simulate_lines
from iosim.memory.l2stream import L2Stream


def _random_lines(n, sets, seed, whole=True, sectors=4):
    rng = np.random.default_rng(seed)
    line = rng.integers(0, sets * 12, n)
    write = rng.random(n) < 0.2
    full = (1 << sectors) - 1
    mask = np.full(n, full, np.uint8) if whole else rng.integers(1, full + 1, n).astype(np.uint8)
    return line, mask, write


@pytest.mark.parametrize("policy", ["lru", "srrip", "plru", "fifo"])
@pytest.mark.parametrize("partitions,whole", [(1, True), (2, True), (2, False)])
def test_chunked_feed_equals_one_pass(policy, partitions, whole):
    geom = L2Geometry(size_bytes=16 * 4 * 128 * partitions, line_bytes=128, sector_bytes=32, ways=4,
                      partitions=partitions, sharing="duplicated" if partitions > 1 else "shared", policy=policy,
                      store_near=True, home_granule_lines=1)
    n = 3000
    line, mask, write = _random_lines(n, geom.sets_per_cache, 1, whole)
    sets = geom.set_index(line)
    near = (np.arange(n) % 3 % partitions).astype(np.int8) if partitions > 1 else None
    home = geom.home(line).astype(np.int8) if partitions > 1 else None
    ref = simulate_lines(sets, line, mask, write, geom.ways, policy, near=near, home=home, partitions=partitions,
                         store_near=True)
    st = L2Stream(geom, geom.sets_per_cache, whole_lines=whole)
    assert st.fast == whole
    cuts = [0, 1, 17, 500, 501, 1400, 2999, n]
    fetched = []
    for a, b in itertools.pairwise(cuts):
        fetched.append(st.feed(sets[a:b], line[a:b], mask[a:b], write[a:b], None,
                               None if near is None else near[a:b], None if home is None else home[a:b]))
    got = st.finish()
    for key in ("accesses", "hits", "misses", "evictions", "dirty_evictions", "dram_read_sectors",
                "dram_write_sectors"):
        assert got[key] == ref[key], key
    assert int(np.concatenate(fetched).astype(bool).sum()) <= got["misses"]
