"""Counting speed: FA2 forward at N = 1,048,576, d = 128, B = 1, H = 32 (issue target: < 2 s on a 2-core CPU).

Run:  python benchmarks/bench_counts.py [--json results.json]
Prints a table (algorithm, causal, seconds, peak Python memory, SM read bytes) and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

from iosim.atomic import atomic_write_text
from iosim.counts import count
from iosim.hwprofile import load_hardware
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem

CASES = [
    ("flash2", False, KernelConfig(128, 64)),
    ("flash2", True, KernelConfig(128, 64)),
    ("flash1", False, KernelConfig()),
    ("flash1", True, KernelConfig()),
    ("standard", False, KernelConfig(128, 128)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=1_048_576)
    ap.add_argument("--json", default=None, help="write results here")
    a = ap.parse_args()
    hw = load_hardware("h100")
    rows = []
    print(f"{'algorithm':<10}{'causal':>8}{'seconds':>10}{'peak MB':>10}{'SM read bytes':>24}")
    for alg, causal, cfg in CASES:
        p = Problem(1, 32, 32, a.seq, a.seq, 128, "bf16", causal)
        tracemalloc.start()
        t0 = time.perf_counter()
        c = count(build_schedule(alg, p, cfg, hw))
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        rows.append(dict(algorithm=alg, causal=causal, seq=a.seq, seconds=dt, peak_mb=peak, sm_read_bytes=c.sm_read_bytes))
        print(f"{alg:<10}{causal!s:>8}{dt:>10.3f}{peak:>10.1f}{c.sm_read_bytes:>24,}")
    if a.json:
        atomic_write_text(a.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
