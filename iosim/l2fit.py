"""Turn the L2 microbenchmark measurements (``iosim.l2bench``) into L2 model parameters: each benchmark is replayed
through the L2 model (``iosim.memory.l2``) as the same line trace the GPU ran, and the candidate geometry whose simulated
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
from dataclasses import replace

import numpy as np

from iosim.memory.l2 import L2Geometry, RunTrace, simulate
from iosim.l2bench import PROBE_LINES, chunk_step, csv_text

LINE = 128


def load(dirpath: str) -> tuple[list[dict], dict]:
    rows = list(csv.DictReader(open(os.path.join(dirpath, "l2bench_raw.csv"))))
    meta = json.load(open(os.path.join(dirpath, "l2bench_meta.json")))
    return rows, meta


def _f(r: dict, k: str) -> float:
    v = r.get(k)
    return float(v) if v not in ("", None) else float("nan")


INDEX_BYTES_PER_LINE = 8
"""The gather benchmark's index table: one int64 per gathered 128-B line, read with it (``iosim.l2bench``)."""


def cold_factor(layout: str, fetch_bytes: int) -> float:
    """Bytes a first pass reads from DRAM per byte it requests: 1 for whole lines; the gather layout adds its index
    table; one 32-B sector every s bytes fetches min(fetch_bytes, s) (the DRAM fetch granularity, measured by
    ``line_and_fetch_reading``, 64 B on the H100)."""
    if layout == "dense":
        return 1.0
    if layout == "gather":
        return 1.0 + INDEX_BYTES_PER_LINE / LINE
    return max(1.0, min(fetch_bytes, int(layout[len("sector"):])) / 32)


def measured_value(r: dict, fetch_bytes: int | None = None) -> float | None:
    """The benchmark's measured quantity (see module docstring), or None for benches not compared or not measured.
    ``fetch_bytes`` (the measured DRAM fetch granularity) is needed for the one-sector layouts only."""
    dr = _f(r, "dram__bytes_read.sum")
    if math.isnan(dr):
        return None
    b = r["bench"]
    if b == "sweep":
        if r["layout"].startswith("sector") and fetch_bytes is None:
            raise ValueError("measured_value: one-sector layouts need the measured fetch_bytes")
        per = _f(r, "bytes_per_pass") * cold_factor(r["layout"], fetch_bytes or 32)
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


def bench_trace(r: dict, part: set[int], seed: int = 0) -> tuple[RunTrace, dict] | None:
    """The line trace of one benchmark row (None for benches not simulated) and what the value formula needs."""
    b = r["bench"]
    wp = _partition_of_workers(r, part)
    T = len(wp)
    if b == "sweep":
        P = int(r["passes"])
        rpc = int(float(r["rows_per_chunk"]))
        step = chunk_step(T)
        lay = r["layout"]
        p = np.arange(P)[:, None, None]
        i = np.arange(rpc)[None, :, None]
        rk = np.arange(T)[None, None, :]
        chunk = (rk + p * step) % T
        row = chunk * rpc + i                               # (P, rpc, T)
        sm = np.broadcast_to(wp[None, None, :], row.shape)
        if lay == "gather":
            # random whole lines in a 4 GiB span; each 64-row block first reads its 4 index lines (8 B per row)
            lines = np.random.default_rng(seed).choice(4 * 2**30 // LINE, size=T * rpc, replace=False)
            data = lines[row] * LINE + 8 * 2**30          # the gathered buffer, away from the index table
            idx = (row // 64) * 512
            stack = np.stack([idx + 128 * q for q in range(4)] + [data], axis=-1)   # (P, rpc, T, 5)
            first = np.broadcast_to(i % 64 == 0, row.shape)
            keep = np.stack([first] * 4 + [np.ones(row.shape, bool)], axis=-1)
            addr_f = stack[keep]
            sm_f = np.broadcast_to(sm[..., None], stack.shape)[keep]
            nb_f = np.full(addr_f.shape, LINE, dtype=np.int64)
        else:
            s_ = LINE if lay == "dense" else int(lay[len("sector"):])
            addr_f = (row * s_).reshape(-1)
            sm_f = sm.reshape(-1)
            nb_f = np.full(addr_f.shape, LINE if lay == "dense" else 32, dtype=np.int64)
        tr = RunTrace(addr_f.astype(np.int64), nb_f, np.zeros(addr_f.shape, bool), sm_f.astype(np.int64),
                      np.zeros(addr_f.shape, np.int64))
        per = int(T * rpc * (LINE if lay in ("dense", "gather") else 32))
        return tr, {"per_pass": per, "passes": P}
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


def simulate_bench(r: dict, geom: L2Geometry, part: set[int], stride: int | None = None) -> float | None:
    """The model's value of the quantity ``measured_value`` gives for this benchmark row."""
    built = bench_trace(r, part)
    if built is None:
        return None
    tr, info = built
    dr = simulate(tr, geom, stride=stride).dram_read_sectors * geom.sector_bytes
    b = r["bench"]
    if b == "sweep":
        per = info["per_pass"] * cold_factor(r["layout"], geom.dram_fetch_bytes or geom.sector_bytes)
        return (dr - per) / ((info["passes"] - 1) * per)
    if b == "hotstream":
        return (dr - info["hot"] - info["stream"]) / ((info["passes"] - 1) * info["hot"])
    return dr / info["bytes"]


def compared_rows(rows: list[dict]) -> list[dict]:
    """The rows with a model-comparable quantity that ncu measured."""
    return [r for r in rows if r["bench"] in ("sweep", "hotstream", "writeread")
            and not math.isnan(_f(r, "dram__bytes_read.sum"))]


# ----------------------------------------------------------------------------------------------------------------
# Direct readings (no model needed)
# ----------------------------------------------------------------------------------------------------------------

def partition_reading(rows: list[dict], meta: dict) -> dict:
    """Pair test: SM b's lookups of a region SM 0 read just before. Same partition: every lookup hits; other
    partition: the lines homed at SM 0's side miss near (served across the fabric, no DRAM)."""
    pairs = [r for r in rows if r["bench"] == "pair"]
    part = set(meta["part_sms"])
    same = [r for r in pairs if int(r["sm_b"]) in part]
    other = [r for r in pairs if int(r["sm_b"]) not in part]

    def frac_hit(rs):
        # SM 0's first read misses on every lookup, so the hits are SM b's: hits ÷ the region's sectors
        h = sum(_f(r, "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum") for r in rs)
        return h / sum(float(r["ws_bytes"]) / 32 for r in rs) if rs else float("nan")

    def mean(rs, k):
        return float(np.mean([_f(r, k) for r in rs])) if rs else float("nan")

    sectors = float(pairs[0]["ws_bytes"]) / 32 if pairs else float("nan")
    return {"sms_with_sm0": len(part), "sms_across": meta["num_sms"] - len(part),
            "hit_frac_same": frac_hit(same), "hit_frac_other": frac_hit(other),
            "fabric_per_sector_same": mean(same, "lts__t_sectors_srcunit_ltcfabric.sum") / sectors,
            "fabric_per_sector_other": mean(other, "lts__t_sectors_srcunit_ltcfabric.sum") / sectors,
            "dram_per_region_same": mean(same, "dram__bytes_read.sum") / (sectors * 32),
            "dram_per_region_other": mean(other, "dram__bytes_read.sum") / (sectors * 32)}


def home_map_reading(dirpath: str, meta: dict) -> dict:
    """Latency probe: lines a far-partition SM loaded are slow (far) for SM 0 exactly when homed at the far side.
    Returns the granule (lines) of the address → home map, the near/far hit latencies and the far fraction."""
    p = os.path.join(dirpath, "l2bench_latency.csv")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        return {}
    rows = list(csv.DictReader(open(p)))
    part = set(meta["part_sms"])
    lat = np.array([int(r["cycles"]) for r in rows])
    loader = np.array([int(r["loader_sm"]) for r in rows])
    across = np.array([a not in part for a in loader])
    if not across.any():
        return {}
    near_lat = np.median(lat[~across])
    thr = 1.25 * near_lat
    slow = lat > thr
    offs = np.array([int(r["addr_offset"]) for r in rows])
    maps = []   # per loader across: slow (far-homed) flag of each line, in address order
    runs = []
    for a in np.unique(loader[across]):
        sel = loader == a
        m = slow[sel][np.argsort(offs[sel])]
        maps.append(m)
        ch = np.flatnonzero(np.diff(m.astype(int))) + 1
        runs += np.diff(np.concatenate([[0], ch, [len(m)]])).tolist()
    granule = None
    for g in (128, 64, 32, 16, 8, 4, 2, 1):   # the largest aligned block that is always all near or all far
        if all(bool(np.all((b := m[: len(m) // g * g].reshape(-1, g)).all(axis=1) | (~b).all(axis=1))) for m in maps):
            granule = g
            break
    return {"granule_lines": granule, "near_hit_cycles": float(near_lat),
            "far_hit_cycles": float(np.median(lat[across & slow])) if (across & slow).any() else float("nan"),
            "far_fraction": float(slow[across].mean()), "min_run_lines": int(min(runs)) if runs else None}


def crossing_bytes(rows: list[dict], mode: str, layout: str, fetch_bytes: int, level: float = 0.5) -> float:
    """Working set (span, for one-sector layouts) at which a sweep's steady-state miss ratio first reaches ``level``
    (linear interpolation between the measured sizes); NaN if it never does."""
    pts = sorted((_f(r, "span_bytes") if layout.startswith("sector") else _f(r, "bytes_per_pass"),
                  measured_value(r, fetch_bytes))
                 for r in rows if r["bench"] == "sweep" and r["mode"] == mode and r["layout"] == layout)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 < level <= y1:
            return x0 + (level - y0) * (x1 - x0) / (y1 - y0)
    return float("nan")


def line_and_fetch_reading(rows: list[dict], meta: dict) -> dict:
    """Fetch granularity: cold DRAM bytes per requested byte for one sector per 64/256 B (first pass). Line size:
    the working-set span at which the one-sector-per-256-B layout reaches half-miss, divided by the span at which
    the dense layout does: 2 when tags cover 128-B lines (every other line touched)."""
    C = meta["l2_bytes"]
    out = {}
    cold = []
    for r in rows:
        if r["bench"] == "sweep" and r["layout"].startswith("sector") and float(r["bytes_per_pass"]) < 0.1 * C:
            # passes 2.. hit at this size, so DRAM ≈ the first pass
            cold.append(_f(r, "dram__bytes_read.sum") / _f(r, "bytes_per_pass"))
    if cold:
        out["cold_bytes_per_requested"] = float(np.median(cold))
        out["dram_fetch_bytes"] = int(round(32 * out["cold_bytes_per_requested"]))

    fetch = out.get("dram_fetch_bytes", 32)
    d, s = crossing_bytes(rows, "all", "dense", fetch), crossing_bytes(rows, "all", "sector256", fetch)
    out["half_miss_span_dense_bytes"] = d
    out["half_miss_span_sector256_bytes"] = s
    out["span_ratio"] = s / d
    # a 256-B stride touches one line in 256 / line: the span ratio is 256 / line (2 → 128-B lines, 4 → 64-B)
    out["line_bytes"] = int(2 ** round(math.log2(256 / out["span_ratio"]))) if math.isfinite(out["span_ratio"]) else None
    return out


def conflict_reading(rows: list[dict]) -> dict:
    """One SM cycling over K lines at stride S, ``passes`` times: a collision of the K lines in fewer sets than
    K / ways would re-miss some lines every pass. Reported: the most lines re-missing per pass, from the spread of
    DRAM reads across strides for the same K (every kernel also reads ~10 KiB of setup data, the same for all)."""
    by_k: dict[int, list[tuple[int, float, int]]] = {}
    for r in rows:
        if r["bench"] == "conflict":
            by_k.setdefault(int(r["lines"]), []).append((int(r["stride_bytes"]), _f(r, "dram__bytes_read.sum"),
                                                         int(r["passes"])))
    worst = 0.0
    for k, v in by_k.items():
        d = [x[1] for x in v]
        worst = max(worst, (max(d) - min(d)) / ((v[0][2] - 1) * LINE))
    strides = sorted({s for v in by_k.values() for s, _, _ in v})
    return {"max_lines_remissed_per_pass": worst, "strides": strides, "lines": sorted(by_k)}


# ----------------------------------------------------------------------------------------------------------------
# Model fit
# ----------------------------------------------------------------------------------------------------------------

def _groups(rows, pred):
    return [r for r in compared_rows(rows) if pred(r)]


TIE_RMS = 0.0123
"""Two model options whose RMS errors differ by less than this are not told apart by the benchmarks: the RMS of
measured − measured miss ratio between two measurement runs of the same H100 (reports/calibration/h100 and its
repeat/, 136 benchmarks, two device sessions). Stage A then keeps LRU, the plainest policy (and the one checked
exactly against pycachesim): on the H100 srrip beat it by 0.012 and on the H200 by 0.001, both inside this band, and
on the attention validation sweeps LRU predicts DRAM reads better (reports/validation/h100/README.md, issue 9)."""


SPREADS = (0, 2, 4)
"""Way spreads stage D tries (``L2Geometry.way_spread``; 16 ways: ±12.5% and ±25% of a set's capacity)."""


def plainest_within_tie(rms_by_value: dict, plain) -> object:
    """The value with the lowest RMS, unless ``plain`` (the simpler model option) is within ``TIE_RMS`` of it (then
    ``plain``): the benchmarks cannot tell apart options closer than their run-to-run spread."""
    best = min(rms_by_value, key=rms_by_value.get)
    p = rms_by_value.get(plain)
    return plain if p is not None and p - rms_by_value[best] <= TIE_RMS else best


def policy_choice(rms_by_policy: dict[str, float]) -> str:
    """The stage-A policy: the lowest RMS, unless LRU is within ``TIE_RMS`` of it (then LRU)."""
    return plainest_within_tie(rms_by_policy, "lru")


def fit(rows: list[dict], meta: dict, base: L2Geometry, stride: int = 32, log=print) -> tuple[L2Geometry, dict]:
    """Staged choice among model options, each stage on the benchmarks that isolate it:
    A. replacement policy — capacity sweeps (dense, all three worker sets) and hot+read-stream; a policy other than
       LRU must beat LRU's RMS by more than ``TIE_RMS`` (measurement reproducibility) to be chosen;
    B. ways — the gather sweep (random line addresses: uneven set loads, whose effect grows as ways shrink);
    C. where stores allocate (home only / near and home) — hot+write-stream;
    D. per-set way spread (``L2Geometry.way_spread``) — the capacity sweeps again (a spread softens their knees);
       like stage A, a spread must beat none by more than ``TIE_RMS`` to be chosen.
    Score: RMS of simulated − measured over the stage's rows. Returns (chosen geometry, table of scores)."""
    part = set(meta["part_sms"])
    cap = _groups(rows, lambda r: (r["bench"] == "sweep" and r["layout"] == "dense") or
                  (r["bench"] == "hotstream" and r["write_stream"] == "0"))
    gat = _groups(rows, lambda r: r["bench"] == "sweep" and r["layout"] == "gather")
    wst = _groups(rows, lambda r: r["bench"] == "hotstream" and r["write_stream"] == "1")
    table = {}

    def rms(rs, g):
        e = [simulate_bench(r, g, part, stride) - measured_value(r) for r in rs]
        return float(np.sqrt(np.mean(np.square(e))))

    from iosim.memory.l2 import POLICIES
    stages = (("A", "policy", [p for p in POLICIES if p != "mru"], cap),
              ("B", "ways", [8, 16, 32], gat),
              ("C", "store_near", [False, True], wst),
              ("D", "way_spread", list(SPREADS), cap))
    g0 = base
    for stage, field_name, values, rs in stages:
        best = None
        for v in values:
            try:
                g = replace(g0, **{field_name: v})
            except Exception as e:  # e.g. the size is not a whole number of sets of that many ways
                log(f"  {stage} {field_name}={v}: {e}")
                continue
            s = rms(rs, g)
            table[f"{stage} {field_name}={v}"] = s
            log(f"  {stage} {field_name}={v}: rms {s:.4f}")
            if best is None or s < best[0]:
                best = (s, g)
        plain = {"A": "lru", "D": 0}.get(stage)   # stages where the simpler option wins ties (TIE_RMS)
        if plain is not None:
            scores = {v: table[f"{stage} {field_name}={v}"] for v in values if f"{stage} {field_name}={v}" in table}
            pick = plainest_within_tie(scores, plain)
            if pick != getattr(best[1], field_name):
                best = (scores[pick], replace(g0, **{field_name: pick}))
                log(f"  {stage}: {pick} within {TIE_RMS} of the best (run-to-run RMS): {pick} kept")
        g0 = best[1]
    return g0, table


# ----------------------------------------------------------------------------------------------------------------
# Outputs: calibrated profile, curves CSV, plots, summary
# ----------------------------------------------------------------------------------------------------------------

L2_KEYS = ("l2_line_bytes", "l2_partitions", "l2_ways", "l2_sharing", "l2_policy", "l2_hash", "l2_hash_granule_lines",
           "l2_home_granule_lines", "l2_store_allocate", "l2_store_near", "l2_dram_fetch_bytes", "l2_way_spread")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def profile_text(base_path: str, name: str, entries: dict[str, tuple[object, str, str]]) -> str:
    """The base profile's TOML with ``entries`` (key → (value, kind, source)) replacing or adding [values] keys and
    the name changed; everything else (and every other source) kept verbatim."""
    lines = open(base_path).read().splitlines()
    out, done = [], set()
    in_values = False
    last_l2 = None
    for ln in lines:
        s = ln.strip()
        if s.startswith("[") and s.endswith("]"):
            in_values = s == "[values]"
        key = s.split("=", 1)[0].strip() if "=" in s and not s.startswith("#") else None
        if key == "name" and not in_values:
            out.append(f"name = {json.dumps(name)}")
            continue
        if in_values and key in entries:
            v, kind, src = entries[key]
            out.append(f"{key} = {{ value = {_toml_value(v)}, kind = {json.dumps(kind)}, source = {json.dumps(src)} }}")
            done.add(key)
            last_l2 = len(out)
            continue
        out.append(ln)
        if in_values and key and key.startswith("l2_"):
            last_l2 = len(out)
    add = [f"{k} = {{ value = {_toml_value(v)}, kind = {json.dumps(kind)}, source = {json.dumps(src)} }}"
           for k, (v, kind, src) in entries.items() if k not in done]
    at = last_l2 if last_l2 is not None else len(out)
    return "\n".join(out[:at] + add + out[at:]) + "\n"


def curves(rows: list[dict], meta: dict, geoms: dict[str, L2Geometry], fetch_bytes: int,
           stride: int = 32) -> list[dict]:
    """One row per compared benchmark: measured value and each geometry's simulated value."""
    part = set(meta["part_sms"])
    out = []
    for r in compared_rows(rows):
        st = 1 if r["layout"].startswith("sector") else stride
        row = {"bench": r["bench"], "mode": r["mode"], "layout": r["layout"], "write_stream": r["write_stream"],
               "ws_bytes": r["ws_bytes"], "stream_bytes": r["stream_bytes"],
               "x_over_l2": round((_f(r, "span_bytes") if r["layout"].startswith("sector") else
                                   _f(r, "stream_bytes_per_pass") if r["bench"] == "hotstream" else
                                   _f(r, "bytes_per_pass") if r["bench"] == "sweep" else _f(r, "bytes"))
                                  / meta["l2_bytes"], 4),
               "measured": round(measured_value(r, fetch_bytes), 4)}
        for n, g in geoms.items():
            row[n] = round(simulate_bench(r, g, part, st), 4)
        out.append(row)
    return out


def plot(curve_rows: list[dict], rows: list[dict], meta: dict, dirpath: str, geoms: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iosim.atomic import atomic_write_bytes
    import io

    written = []
    gpu = meta["gpu"]

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
        atomic_write_bytes(os.path.join(dirpath, name), buf.getvalue())
        written.append(name)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, (title, pred) in zip(axes, [
            ("working set read by 1 SM / one partition / all SMs (dense)",
             lambda c: c["bench"] == "sweep" and c["layout"] == "dense"),
            ("all SMs: random line addresses (gather)", lambda c: c["bench"] == "sweep" and c["layout"] == "gather"),
            ("all SMs: one 32-B sector per 64 / 256 B (x = span)",
             lambda c: c["bench"] == "sweep" and c["layout"].startswith("sector"))]):
        sel = [c for c in curve_rows if pred(c)]
        for key in sorted({(c["mode"], c["layout"]) for c in sel}):
            pts = sorted((c["x_over_l2"], c["measured"], *[c[g] for g in geoms]) for c in sel if (c["mode"], c["layout"]) == key)
            x = [p[0] for p in pts]
            ln, = ax.plot(x, [p[1] for p in pts], "o", ms=4, label=f"{key[0]} {key[1]} measured")
            for gi, g in enumerate(geoms):
                ax.plot(x, [p[2 + gi] for p in pts], "-" if gi == 0 else ":", color=ln.get_color(), lw=1.2,
                        label=f"{key[0]} {key[1]} {g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("bytes ÷ nominal L2")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("steady-state DRAM miss ratio")
    fig.suptitle(f"{gpu}: L2 capacity (ncu dram__bytes_read; lines = model)", fontsize=10)
    save(fig, "capacity.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for ws in ("0", "1"):
        sel = sorted((c["x_over_l2"], c["measured"], *[c[g] for g in geoms]) for c in curve_rows
                     if c["bench"] == "hotstream" and c["write_stream"] == ws)
        x = [p[0] for p in sel]
        ln, = ax.plot(x, [p[1] for p in sel], "o", label=f"{'write' if ws == '1' else 'read'} stream measured")
        for gi, g in enumerate(geoms):
            ax.plot(x, [p[2 + gi] for p in sel], "-" if gi == 0 else ":", color=ln.get_color(), label=f"{g}")
    ax.set_xlabel("fresh bytes between two reads of the hot set ÷ nominal L2 (hot set = L2/8)")
    ax.set_ylabel("hot-set re-miss ratio")
    ax.set_title(f"{gpu}: hot set vs streamed reads / writes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "hotstream.png")

    pairs = [r for r in rows if r["bench"] == "pair"]
    if pairs:
        part = set(meta["part_sms"])
        fig, ax = plt.subplots(figsize=(8, 3.2))
        b = [int(r["sm_b"]) for r in pairs]
        fab = [_f(r, "lts__t_sectors_srcunit_ltcfabric.sum") / (float(r["ws_bytes"]) / 32) for r in pairs]
        ax.scatter(b, fab, c=["tab:blue" if x in part else "tab:red" for x in b], s=10)
        ax.set_xlabel("SM b (blue: with SM 0, red: across)")
        ax.set_ylabel("fabric sectors per region sector")
        ax.set_title(f"{gpu}: SM 0 reads 2 MiB, then SM b reads it", fontsize=9)
        ax.grid(alpha=0.3)
        save(fig, "partitions.png")

    p = os.path.join(dirpath, "l2bench_latency.csv")
    if os.path.exists(p) and os.path.getsize(p):
        lr = list(csv.DictReader(open(p)))
        part = set(meta["part_sms"])
        loaders = sorted({int(r["loader_sm"]) for r in lr})
        fig, ax = plt.subplots(figsize=(9, 3.5))
        img = []
        for a in loaders:
            v = [int(r["cycles"]) for r in lr if int(r["loader_sm"]) == a]
            img.append(v[:1024])
        im = ax.imshow(np.array(img), aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_yticks(range(len(loaders)), [f"{a}{'' if a in part else ' (across)'}" for a in loaders], fontsize=6)
        ax.set_xlabel("line (128 B) in the probed region")
        ax.set_title(f"{gpu}: SM 0's hit latency (cycles) after SM a loaded the lines", fontsize=9)
        fig.colorbar(im, ax=ax)
        save(fig, "home_map.png")
    return written


def calibrate_dir(dirpath: str, base: str | None = None, stride: int = 32, log=print,
                  reference: str | None = None) -> dict:
    """Readings + fit for one measurement folder; writes <base>_l2_calibrated.toml, l2_curves.csv, the plots and
    l2_calibration.md next to the raw files. Returns the summary dict."""
    from iosim.atomic import atomic_write_text
    from iosim.hwprofile import load_hardware, load_profile_file

    rows, meta = load(dirpath)
    if base is None:
        base = "h200" if "H200" in meta["gpu"].upper() else "h100"
    hw = load_hardware(base)
    uncal = L2Geometry.from_hardware(load_hardware(reference) if reference else hw)  # the curves' baseline
    part = partition_reading(rows, meta)
    home = home_map_reading(dirpath, meta)
    lf = line_and_fetch_reading(rows, meta)
    conf = conflict_reading(rows)
    log(f"partitions: {part}\nhome map: {home}\nline/fetch: {lf}\nconflicts: {conf}")
    # the pair test sees two sides when SMs across from SM 0 miss near on lines SM 0 just read; the near copies are
    # kept (duplication) when the SMs on SM 0's side then hit on every lookup
    split = part["sms_across"] > 0 and part["hit_frac_other"] < 0.9 * part["hit_frac_same"]
    parts, sharing = (2, "duplicated") if split and part["hit_frac_same"] > 0.95 else (1, "shared")
    measured_geom = replace(uncal, partitions=parts, sharing=sharing,
                            home_granule_lines=home.get("granule_lines") or uncal.home_granule_lines,
                            hash="xor", hash_granule_lines=128,
                            dram_fetch_bytes=lf.get("dram_fetch_bytes", 0) or 0, store_allocate=True)
    chosen, table = fit(rows, meta, measured_geom, stride, log)
    when = meta.get("date", "")
    tool = f"iosim.l2bench (Triton {meta.get('triton', '?')}, torch {meta.get('torch', '?')}, ncu --cache-control all)"
    m_on = f"measured on {meta['gpu']} with {tool} on {when}"
    C = meta["l2_bytes"]
    wr = [r for r in rows if r["bench"] == "writeread"]
    wr_ratio = max((measured_value(r) for r in wr), default=float("nan"))
    entries = {
        "l2_line_bytes": (lf.get("line_bytes") or hw.l2_line_bytes, "measured",
                          f"{m_on}: one 32-B sector every 256 B reaches half-miss at {lf.get('span_ratio', float('nan')):.2f}× the "
                          "span of dense reads (2 = 128-B tags: the sparse layout touches every other line)"),
        "l2_partitions": (parts, "measured",
                          f"{m_on}: pair test — SM b re-reading 2 MiB SM 0 just read: {part['sms_with_sm0']} SMs hit on "
                          f"{part['hit_frac_same']:.3f} of the region's sectors, the other {part['sms_across']} on "
                          f"{part['hit_frac_other']:.3f}, with {part['dram_per_region_other']:.3f}× the region read from DRAM "
                          "(the rest served across the fabric)"),
        "l2_sharing": (sharing, "measured",
                       f"{m_on}: near copies kept (pair test above); working set (÷ nominal L2) where steady-state "
                       "misses start (5%) and where nearly everything misses (95%): "
                       + "; ".join(f"{label} {crossing_bytes(rows, mode, 'dense', 32, 0.05) / C:.2f}–"
                                   f"{crossing_bytes(rows, mode, 'dense', 32, 0.95) / C:.2f}"
                                   for label, mode in (("one SM", "one_sm"), ("one partition's SMs", "part"),
                                                       ("all SMs", "all")))
                       + " (duplicated partitions: one side's readers fill their partition with near copies from "
                       "0.5×; the far-homed half still hits across the fabric up to 1×)"),
        "l2_home_granule_lines": (home.get("granule_lines"), "measured",
                                  f"{m_on}: latency probe — after an SM across loads {PROBE_LINES} lines, SM 0 sees each aligned "
                                  f"{(home.get('granule_lines') or 0) * LINE} B block either all near ({home.get('near_hit_cycles', float('nan')):.0f} cycles) or all far "
                                  f"({home.get('far_hit_cycles', float('nan')):.0f} cycles); which block goes where is not "
                                  "modelled: the model hashes these granules to partitions"),
        "l2_hash": ("xor_low", "assumed",
                    f"{m_on}: one SM cycling 20 times over {min(conf['lines'])}–{max(conf['lines'])} lines at every power-of-two stride "
                    f"{min(conf['strides'])} B – {max(conf['strides']) // 2**20} MiB re-misses at most {conf['max_lines_remissed_per_pass']:.2f} "
                    "lines per pass (no conflict set), and one sector every 256 B (every other line) keeps the full "
                    "capacity: the set index is hashed, low line bits included. The hash itself is not identified; "
                    "the model's xor_low hashes the low 7 line bits per 128-line granule, so strides of 2–64 lines "
                    "reach every set (l2_curves.csv, sector256; chosen over xor, which left them unhashed, by "
                    "reports/l2_hash_decision.md)"),
        "l2_hash_granule_lines": (128, "assumed", "G = 128 lines (16 KiB): xor_low XORs the low 7 line bits with one "
                                  "hash value per granule, so set sampling with a stride dividing 128 stays exact; "
                                  "stride 128 keeps FA2 causal 64K within the simulator's 30 s / 2 GB target "
                                  "(benchmarks/bench_l2.py)"),
        "l2_policy": (chosen.policy, "calibrated",
                      f"{m_on}: " + ("LRU kept: no policy beats it on the capacity sweeps and hot+read-stream runs by "
                                     f"more than the run-to-run RMS {TIE_RMS} (l2fit.TIE_RMS)"
                                     if chosen.policy == "lru" else
                                     "best of the model's policies on the capacity sweeps and hot+read-stream runs")
                      + " (RMS of DRAM miss ratio: " + ", ".join(f"{k.split('=')[1]} {v:.3f}" for k, v in table.items()
                                                                if k.startswith("A")) + ")"),
        "l2_ways": (chosen.ways, "calibrated",
                    f"{m_on}: best on the random-line (gather) sweep, whose knee softens as ways shrink (RMS "
                    + ", ".join(f"{k.split('=')[1]}-way {v:.3f}" for k, v in table.items() if k.startswith("B")) + ")"),
        "l2_store_allocate": (True, "measured",
                              f"{m_on}: every SM writes its chunk then reads it back: DRAM reads {wr_ratio:.4f} of the "
                              "bytes written (stores allocate in L2)"),
        "l2_store_near": (chosen.store_near, "calibrated",
                          f"{m_on}: hot set + write stream — " + ", ".join(f"{k.split('=')[1]} {v:.3f}" for k, v in table.items()
                                                                             if k.startswith("C"))
                          + " RMS; true = stores take room near and at home like loads"),
        "l2_dram_fetch_bytes": (lf.get("dram_fetch_bytes") or 32, "measured",
                                f"{m_on}: one 32-B sector per 64/256 B reads {lf.get('cold_bytes_per_requested', float('nan')):.2f}× "
                                "the requested bytes from DRAM on the first pass"),
        "l2_way_spread": (chosen.way_spread, "calibrated",
                          f"{m_on}: capacity sweeps and hot+read-stream runs again (stage D): "
                          + ("no spread beats none by more than the run-to-run RMS (l2fit.TIE_RMS), so 0"
                             if chosen.way_spread == 0 else "the best spread")
                          + " (RMS: " + ", ".join(f"±{k.split('=')[1]} {v:.3f}" for k, v in table.items()
                                                  if k.startswith("D")) + ")"),
    }
    if not home.get("granule_lines"):
        entries["l2_home_granule_lines"] = (hw.l2_home_granule_lines or uncal.home_granule_lines, "assumed",
                                            "no latency probe in this measurement folder: the base profile's value")
    cal_hw_name = f"{base}-l2-calibrated"
    toml = profile_text(hw.path, cal_hw_name, entries)
    out_toml = os.path.join(dirpath, f"{base}_l2_calibrated.toml")
    atomic_write_text(out_toml, toml)
    cal_geom = L2Geometry.from_hardware(load_profile_file(out_toml))  # what a user of the written profile gets
    geoms = {"calibrated": cal_geom, "uncalibrated": uncal}
    cr = curves(rows, meta, geoms, lf.get("dram_fetch_bytes", 32), stride)
    atomic_write_text(os.path.join(dirpath, "l2_curves.csv"), csv_text(cr))
    pngs = plot(cr, rows, meta, dirpath, list(geoms))
    err = {n: float(np.sqrt(np.mean([(c[n] - c["measured"]) ** 2 for c in cr]))) for n in geoms}
    summary = {"gpu": meta["gpu"], "partition": part, "home_map": home, "line_fetch": lf, "conflicts": conf,
               "fit_table": table, "rms": err, "profile": out_toml, "plots": pngs}
    atomic_write_text(os.path.join(dirpath, "l2_calibration.json"), json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    md = [f"# L2 calibration: {meta['gpu']} ({when})", "",
          f"Raw: `l2bench_raw.csv` (ncu counters per benchmark), `l2bench_latency.csv` (probe), `l2bench_meta.json`. "
          f"Profile: `{os.path.basename(out_toml)}`. Curves: `l2_curves.csv`; plots: {', '.join(f'`{p}`' for p in pngs)}.", "",
          "| parameter | value | kind | evidence |", "|---|---|---|---|"]
    for k, (v, kind, src) in entries.items():
        md.append(f"| {k} | {_toml_value(v)} | {kind} | {src.replace(m_on + ': ', '')} |")
    md += ["", f"RMS of simulated − measured miss ratios over all {len(cr)} compared benchmarks: "
           + ", ".join(f"{n} {v:.3f}" for n, v in err.items()) + ".", ""]
    atomic_write_text(os.path.join(dirpath, "l2_calibration.md"), "\n".join(md))
    return summary
