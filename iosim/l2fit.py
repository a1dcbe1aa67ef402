"""Turn the L2 microbenchmark measurements (``iosim.l2bench``) into L2 model parameters: each benchmark is replayed
through the L2 model (``iosim.l2``) as the same line trace the GPU ran, and the candidate geometry whose simulated
curves match the measured ones best is the calibrated one.

Quantities compared (all from ncu's ``dram__bytes_read.sum``, so the L2's own lookup accounting never enters):

* ``sweep`` — steady-state DRAM miss ratio: (DRAM read − cold read) ÷ ((passes − 1) × cold read), where the cold read
  is what the first pass fetches (the working set; for the gather layout plus its index table; for one-sector
  layouts the GPU fetches 64 B per touched sector pair, which the ratio divides out);
* ``hotstream`` — hot-set re-miss ratio: (DRAM read − hot set − streamed reads) ÷ ((passes − 1) × hot set);
* ``writeread`` — DRAM read ÷ bytes written (0 when stores allocate in L2).

The trace of a benchmark: pass by pass, the workers advance in lockstep, one 128-B line (or one 32-B sector) each
per step; a worker's accesses carry its measured partition (``part_sms`` from the pair test) as the issuing SM, so
the model's near partition (SM mod partitions) is the measured one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, replace

import numpy as np

from iosim.l2 import L2Geometry, RunTrace, simulate

LINE = 128


def load(dirpath: str) -> tuple[list[dict], dict]:
    rows = list(csv.DictReader(open(os.path.join(dirpath, "l2bench_raw.csv"))))
    meta = json.load(open(os.path.join(dirpath, "l2bench_meta.json")))
    return rows, meta


def _f(r: dict, k: str) -> float:
    v = r.get(k)
    return float(v) if v not in ("", None) else float("nan")


def _cold_factor(layout: str) -> float:
    """Cold DRAM read ÷ bytes requested per pass, as measured on the H100/H200 (64-B DRAM fetch; the gather index
    table adds 8 B per 128-B line)."""
    if layout == "dense":
        return 1.0
    if layout == "gather":
        return 1.0 + 1.0 / 16
    return 2.0


def measured_value(r: dict) -> float | None:
    """The benchmark's measured quantity (see module docstring), or None for benches not compared."""
    dr = _f(r, "dram__bytes_read.sum")
    if math.isnan(dr):
        return None
    b = r["bench"]
    if b == "sweep":
        per = _f(r, "bytes_per_pass") * _cold_factor(r["layout"])
        return (dr - per) / ((int(r["passes"]) - 1) * per)
    if b == "hotstream":
        hot, st = _f(r, "hot_bytes"), _f(r, "stream_bytes_per_pass")
        P = int(r["passes"])
        return (dr - hot - (0 if int(r["write_stream"]) else P * st)) / ((P - 1) * hot)
    if b == "writeread":
        return dr / _f(r, "bytes")
    return None


def _partition_of_workers(r: dict, part: set[int]) -> np.ndarray:
    w = [int(x) for x in r.get("workers", "").split()]
    if not w:
        T = int(float(r.get("T") or 1))
        return np.arange(T) % 2
    return np.array([0 if s in part else 1 for s in w], dtype=np.int64)


@dataclass(frozen=True)
class Sim:
    value: float
    exact: bool
    stride: int


def bench_trace(r: dict, part: set[int], seed: int = 0) -> tuple[RunTrace, dict] | None:
    """The line trace of one benchmark row (None for benches not simulated) and what the value formula needs."""
    b = r["bench"]
    wp = _partition_of_workers(r, part)
    T = len(wp)
    if b == "sweep":
        P = int(r["passes"])
        rpc = int(float(r["rows_per_chunk"]))
        step = max(1, T // 2 + 1) if T > 2 else 1
        lay = r["layout"]
        p = np.arange(P)[:, None, None]
        i = np.arange(rpc)[None, :, None]
        rk = np.arange(T)[None, None, :]
        chunk = (rk + p * step) % T
        row = chunk * rpc + i                               # (P, rpc, T)
        sm = np.broadcast_to(wp[None, None, :], row.shape)
        if lay == "dense":
            addr, nb = row * LINE, LINE
        elif lay == "gather":
            rng = np.random.default_rng(seed)
            span_lines = 4 * 2**30 // LINE
            lines = rng.choice(span_lines, size=T * rpc, replace=False)
            addr = lines[row] * LINE + 8 * 2**30          # the gathered buffer, away from the index table
            nb = LINE
            # the index table: 8 B per row; a 64-row block reads 4 lines, issued with the block's first row
            first = (i % 64 == 0)
            idx_addr = (row // 64) * 512
            extra = [(idx_addr[:, :, :] + 128 * q) for q in range(4)]
        else:
            s = int(lay[len("sector"):])
            addr, nb = row * s, 32
        if lay == "gather":
            # interleave: for each (p, i, rk) the data line, and at block starts the 4 index lines before it
            A = [addr]
            M = [np.ones(addr.shape, bool)]
            for e in extra:
                A.insert(0, e)
                M.insert(0, np.broadcast_to(first, addr.shape))
            stackA = np.stack(A, axis=-1)
            stackM = np.stack(M, axis=-1)
            stackS = np.broadcast_to(sm[..., None], stackA.shape)
            addr_f = stackA[stackM]
            sm_f = stackS[stackM]
            nb_f = np.full(addr_f.shape, LINE, dtype=np.int64)
        else:
            addr_f = addr.reshape(-1)
            sm_f = sm.reshape(-1)
            nb_f = np.full(addr_f.shape, nb, dtype=np.int64)
        tr = RunTrace(addr_f.astype(np.int64), nb_f, np.zeros(addr_f.shape, bool), sm_f.astype(np.int64),
                      np.zeros(addr_f.shape, np.int64))
        per = int(T * rpc * (LINE if lay in ("dense", "gather") else 32))
        cold = per * (1 + 1 / 16) if lay == "gather" else per
        return tr, {"per_pass": cold, "passes": P}
    if b == "hotstream":
        P = int(r["passes"])
        hot_rows = int(_f(r, "hot_bytes")) // LINE // T
        st_rows = int(_f(r, "stream_bytes_per_pass")) // LINE // T
        write = bool(int(r["write_stream"]))
        hot_base = 0
        st_base = T * hot_rows * LINE
        parts_a, parts_w, parts_s = [], [], []
        for p in range(P):
            i = np.arange(hot_rows)[:, None]
            rk = np.arange(T)[None, :]
            parts_a.append(((rk * hot_rows + i) * LINE + hot_base).reshape(-1))
            parts_w.append(np.zeros(hot_rows * T, bool))
            parts_s.append(np.broadcast_to(wp[None, :], (hot_rows, T)).reshape(-1))
            i = np.arange(st_rows)[:, None]
            parts_a.append((((p * T + rk) * st_rows + i) * LINE + st_base).reshape(-1))
            parts_w.append(np.full(st_rows * T, write))
            parts_s.append(np.broadcast_to(wp[None, :], (st_rows, T)).reshape(-1))
        a = np.concatenate(parts_a)
        tr = RunTrace(a.astype(np.int64), np.full(a.shape, LINE, np.int64), np.concatenate(parts_w),
                      np.concatenate(parts_s).astype(np.int64), np.zeros(a.shape, np.int64))
        return tr, {"hot": T * hot_rows * LINE, "stream": 0 if write else P * T * st_rows * LINE, "passes": P}
    if b == "writeread":
        rows = int(_f(r, "bytes")) // LINE // T
        i = np.arange(rows)[:, None]
        rk = np.arange(T)[None, :]
        a = ((rk * rows + i) * LINE).reshape(-1)
        s = np.broadcast_to(wp[None, :], (rows, T)).reshape(-1)
        A = np.concatenate([a, a])
        tr = RunTrace(A.astype(np.int64), np.full(A.shape, LINE, np.int64),
                      np.concatenate([np.ones(a.shape, bool), np.zeros(a.shape, bool)]),
                      np.concatenate([s, s]).astype(np.int64), np.zeros(A.shape, np.int64))
        return tr, {"bytes": len(a) * LINE}
    return None


def simulate_bench(r: dict, geom: L2Geometry, part: set[int], stride: int | None = None) -> Sim | None:
    built = bench_trace(r, part)
    if built is None:
        return None
    tr, info = built
    res = simulate(tr, geom, stride=stride)
    dr = res.dram_read_sectors * geom.sector_bytes
    b = r["bench"]
    if b == "sweep":
        v = (dr - info["per_pass"]) / ((info["passes"] - 1) * info["per_pass"])
    elif b == "hotstream":
        v = (dr - info["hot"] - info["stream"]) / ((info["passes"] - 1) * info["hot"])
    else:
        v = dr / info["bytes"]
    return Sim(float(v), res.exact, res.stride)


def compared_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["bench"] in ("sweep", "hotstream", "writeread") and measured_value(r) is not None]


def score(rows: list[dict], geom: L2Geometry, part: set[int], stride: int | None = None) -> tuple[float, list]:
    """RMS of (simulated − measured) over the compared rows; returns (rms, [(row, measured, simulated)])."""
    out = []
    for r in compared_rows(rows):
        s = simulate_bench(r, geom, part, stride)
        if s is None:
            continue
        out.append((r, measured_value(r), s.value))
    err = np.array([b - a for _, a, b in out])
    return float(np.sqrt(np.mean(err ** 2))) if len(err) else float("nan"), out
