"""L2 microbenchmarks run on a GPU (``iosim calibrate --l2``): the raw measurements the L2 model is calibrated from.

Why Triton (and torch for buffers): both are iosim's ``gpu`` extra already, so no new dependency; Triton gives
what the benchmarks need — loads that bypass L1 (``cache_modifier=".cg"``: every load is an L2 lookup), ``%smid``
and ``%clock64`` through inline PTX (``triton.language.extra.cuda``), atomics to claim one worker program per SM —
and ncu attributes its counters to each named kernel. CuPy raw CUDA would give the same with a second toolchain.

Every benchmark kernel is a set of *workers*, one program per selected SM: the grid has 4 programs per SM; each
program reads ``%smid``, and the first program on a selected SM claims it (atomic exchange) and takes the next
worker rank (atomic add); the others exit. A worker writes its SM id at its rank, so the host knows which SM did
which part (``workers`` column). Counters come from Nsight Compute (``--cache-control all``: L2 flushed before each
kernel, ``--clock-control none``), one marker kernel before each case (grid size = case id + 1).

Benchmarks (``plan``):

* ``pair`` — SM a reads a 2 MiB region, then (flag hand-off) SM b reads it. L2-fabric sectors
  (``lts__t_sectors_srcunit_ltcfabric``) and B's lookup hits tell whether b sits in a's partition and whether a
  line read across the fabric is kept (duplicated) in the reader's partition. a = SM 0, b = every other SM.
* ``sweep`` — T workers read a working set of W bytes ``passes`` times; in pass p worker r reads chunk
  (r + p·step) mod T, so each line is re-read once per pass, by a different SM, after the whole working set (reuse
  distance W). Modes: ``one_sm`` (T = 1), ``part`` (the SMs of SM 0's partition, from ``pair``; the first half of
  the SMs if ``pair`` found no split), ``all`` (every SM). Layouts: ``dense`` (whole 128-B lines, contiguous),
  ``gather`` (whole lines at random line addresses in a 4 GiB span: random set/slice mapping, for associativity),
  ``sector<s>`` (one 32-B sector every s bytes: tag line size and fetch granularity).
  Steady-state miss ratio = (DRAM read − cold bytes) ÷ ((passes − 1) × bytes per pass).
* ``conflict`` — one SM cycles over K lines at a power-of-two stride S, 20 times (set-index hash: which strides
  collide).
* ``hotstream`` — every SM re-reads a hot set H (one quarter of the effective capacity) and between two re-reads
  reads (or writes) X bytes of fresh data; hot re-misses vs X separate LRU from scan-resistant insertion policies,
  and read vs write streams show whether stores allocate with the same priority.
* ``writeread`` — every SM writes its chunk of W bytes, then reads it back: DRAM reads ≈ 0 iff stores allocate.
* ``lat_probe`` (not profiled; timed with ``%clock64``) — SM a loads 4096 consecutive lines, then SM b reads them
  one by one (dependent loads) and records each latency: with a and b in different partitions the lines homed in
  b's partition are fast and the others slow, which gives the address → home-partition map and its granularity.

Import-safe without torch/triton (imported inside the functions).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

LINE_BYTES = 128
METRICS = (
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum",
    "lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum",
    "lts__t_sectors_srcunit_tex_op_write.sum",
    "lts__t_sectors_srcunit_ltcfabric.sum",
    "l1tex__m_xbar2l1tex_read_bytes.sum",
    "gpu__time_duration.sum",
)
GATHER_SPAN_BYTES = 4 * 2**30
PAIR_BYTES = 2 * 2**20
PROBE_LINES = 4096


@dataclass(frozen=True)
class Case:
    """One profiled kernel launch. Sizes in bytes; ``mode`` names the worker set."""

    id: int
    bench: str                 # pair | sweep | conflict | hotstream | writeread
    mode: str = "all"          # one_sm | part | all | pair
    layout: str = "dense"      # dense | gather | sector64 | sector128 | sector256 ...
    ws_bytes: int = 0          # working set (sweep), hot set (hotstream), written set (writeread), region (pair)
    stream_bytes: int = 0      # hotstream: fresh bytes per pass
    write_stream: int = 0
    passes: int = 3
    stride_bytes: int = 0      # conflict
    lines: int = 0             # conflict: K
    sm_a: int = 0
    sm_b: int = 0


def sweep_sizes(l2_bytes: int) -> list[int]:
    """Working sets for the capacity sweeps: 1/16 … 3× the nominal L2, dense around C/2 and C."""
    c = l2_bytes
    fr = [0.0625, 0.125, 0.25, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05,
          1.1, 1.2, 1.35, 1.5, 2.0, 3.0]
    return [int(f * c) for f in fr]


def chunk_step(workers: int) -> int:
    """Pass-to-pass rotation of the chunk a worker reads (``sweep``): in pass p worker r reads chunk
    (r + p·step) mod T, so a line's reader changes every pass (and, with T > 2, its side of the L2 too)."""
    return workers // 2 + 1 if workers > 2 else 1


def plan(l2_bytes: int, num_sms: int, quick: bool = False) -> list[Case]:
    """The case list (ids in order). ``pair`` cases come first: the ``part`` mode needs their result, so the
    runner measures them in a first ncu process and the rest in a second one."""
    cases: list[Case] = []

    def add(**kw):
        cases.append(Case(id=len(cases), **kw))

    for b in (range(1, num_sms) if not quick else sorted({1, 2, 3, 4, 5, 6, 7, 8, num_sms // 2, num_sms - 1})):
        add(bench="pair", mode="pair", ws_bytes=PAIR_BYTES, sm_a=0, sm_b=b)
    sizes = sweep_sizes(l2_bytes)
    if quick:
        sizes = sizes[::4]
    for mode in ("all", "part", "one_sm"):
        for w in sizes:
            if mode == "one_sm" and w > 2 * l2_bytes:
                continue
            add(bench="sweep", mode=mode, layout="dense", ws_bytes=w)
    for w in sizes:
        add(bench="sweep", mode="all", layout="gather", ws_bytes=w)
    for s in (64, 256):
        for w in sizes[::2]:
            add(bench="sweep", mode="all", layout=f"sector{s}", ws_bytes=w)
    for k in ((16, 32, 48, 64) if not quick else (32, 64)):
        for sh in ((12, 16, 20, 21, 22, 23, 24, 25, 26) if not quick else (16, 24)):
            add(bench="conflict", mode="one_sm", layout="dense", stride_bytes=1 << sh, lines=k, passes=20)
    hot = l2_bytes // 8
    for wstream in (0, 1):
        for f in (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 2.0):
            add(bench="hotstream", mode="all", ws_bytes=hot, stream_bytes=int(f * l2_bytes), write_stream=wstream,
                passes=4)
    for f in (0.125, 0.25, 0.4):
        add(bench="writeread", mode="all", ws_bytes=int(f * l2_bytes), passes=1)
    return cases


# ----------------------------------------------------------------------------------------------------------------
# GPU side
# ----------------------------------------------------------------------------------------------------------------

def _kernels():
    import triton
    import triton.language as tl
    from triton.language.extra import cuda as tlc

    @triton.jit
    def _claim(sel, claim, ctr, info):
        """Rank of this program if it is the first on a selected SM, else −1."""
        sm = tlc.smid()
        rank = -1
        if tl.load(sel + sm) != 0:
            if tl.atomic_xchg(claim + sm, 1) == 0:
                rank = tl.atomic_add(ctr, 1)
                tl.store(info + rank, sm)
        return rank

    @triton.jit
    def _wait_flag(flag, SPIN: tl.constexpr):
        """Spin until another program sets ``flag`` (at most SPIN polls, so a missing partner cannot hang)."""
        f = tl.atomic_add(flag, 0)
        n = 0
        while (f == 0) & (n < SPIN):
            f = tl.atomic_add(flag, 0)
            n += 1
        return f

    @triton.jit
    def l2b_read(buf, idx, sel, claim, ctr, info, sink, T, rows_per_chunk, row_stride, passes, step,
                 ROWS: tl.constexpr, COLS: tl.constexpr, GATHER: tl.constexpr):
        rank = _claim(sel, claim, ctr, info)
        if rank >= 0:
            r_ar = tl.arange(0, ROWS)
            c_ar = tl.arange(0, COLS)
            acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
            for p in range(passes):
                chunk = (rank + p * step) % T
                base = chunk.to(tl.int64) * rows_per_chunk
                for i in range(0, rows_per_chunk, ROWS):
                    rows = base + i + r_ar
                    if GATHER:
                        rows = tl.load(idx + rows, cache_modifier=".cg")
                    offs = rows.to(tl.int64)[:, None] * row_stride + c_ar[None, :]
                    acc += tl.load(buf + offs, cache_modifier=".cg")
            tl.store(sink + rank, tl.sum(acc))

    @triton.jit
    def l2b_hotstream(hot, stream, sel, claim, ctr, info, sink, T, hot_rows, stream_rows, passes,
                      WRITE: tl.constexpr, ROWS: tl.constexpr):
        rank = _claim(sel, claim, ctr, info)
        if rank >= 0:
            r_ar = tl.arange(0, ROWS)
            c_ar = tl.arange(0, 32)
            acc = tl.zeros([ROWS, 32], dtype=tl.float32)
            for p in range(passes):
                hb = rank.to(tl.int64) * hot_rows
                for i in range(0, hot_rows, ROWS):
                    offs = (hb + i + r_ar)[:, None] * 32 + c_ar[None, :]
                    acc += tl.load(hot + offs, cache_modifier=".cg")
                sb = (p * T + rank).to(tl.int64) * stream_rows
                for i in range(0, stream_rows, ROWS):
                    offs = (sb + i + r_ar)[:, None] * 32 + c_ar[None, :]
                    if WRITE:
                        tl.store(stream + offs, acc)
                    else:
                        acc += tl.load(stream + offs, cache_modifier=".cg")
            tl.store(sink + rank, tl.sum(acc))

    @triton.jit
    def l2b_writeread(buf, sel, claim, ctr, info, sink, rows, ROWS: tl.constexpr):
        rank = _claim(sel, claim, ctr, info)
        if rank >= 0:
            r_ar = tl.arange(0, ROWS)
            c_ar = tl.arange(0, 32)
            base = rank.to(tl.int64) * rows
            val = tl.zeros([ROWS, 32], dtype=tl.float32) + 1.0
            for i in range(0, rows, ROWS):
                offs = (base + i + r_ar)[:, None] * 32 + c_ar[None, :]
                tl.store(buf + offs, val)
            acc = tl.zeros([ROWS, 32], dtype=tl.float32)
            for i in range(0, rows, ROWS):
                offs = (base + i + r_ar)[:, None] * 32 + c_ar[None, :]
                acc += tl.load(buf + offs, cache_modifier=".cg")
            tl.store(sink + rank, tl.sum(acc))

    @triton.jit
    def l2b_pair(buf, claim, flag, sink, sm_a, sm_b, rows, ROWS: tl.constexpr, SPIN: tl.constexpr):
        sm = tlc.smid()
        r_ar = tl.arange(0, ROWS)
        c_ar = tl.arange(0, 32)
        if sm == sm_a:
            if tl.atomic_xchg(claim, 1) == 0:
                acc = tl.zeros([ROWS, 32], dtype=tl.float32)
                for i in range(0, rows, ROWS):
                    offs = (i + r_ar)[:, None] * 32 + c_ar[None, :]
                    acc += tl.load(buf + offs, cache_modifier=".cg")
                tl.atomic_xchg(flag, 1 + (tl.sum(acc) > 1e30).to(tl.int32))
        if sm == sm_b:
            if tl.atomic_xchg(claim + 1, 1) == 0:
                f = _wait_flag(flag, SPIN)
                acc = tl.zeros([ROWS, 32], dtype=tl.float32) + f.to(tl.float32) * 0.0
                for i in range(0, rows, ROWS):
                    offs = (i + r_ar)[:, None] * 32 + c_ar[None, :]
                    acc += tl.load(buf + offs, cache_modifier=".cg")
                tl.store(sink, tl.sum(acc))
                tl.store(sink + 1, f.to(tl.float32))

    @triton.jit
    def _clock(dep):
        return tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [dep], dtype=tl.int64, is_pure=False,
                                         pack=1)

    @triton.jit
    def lat_probe(buf, claim, flag, lat, scratch, sm_a, sm_b, nlines, SPIN: tl.constexpr):
        """buf: int32, zero-filled; line i is buf[32 i]. a loads every line; b times a dependent chain over them.
        The loaded value is stored (to scratch) before the second clock read: the store cannot issue before the
        load returns, and the clock read (a side-effecting asm) is not moved above the store."""
        sm = tlc.smid()
        if sm == sm_a:
            if tl.atomic_xchg(claim, 1) == 0:
                s = tl.load(buf, cache_modifier=".cg")
                for i in range(1, nlines):
                    s += tl.load(buf + i * 32, cache_modifier=".cg")
                tl.atomic_xchg(flag, 1 + (s > 1000000).to(tl.int32))
        if sm == sm_b:
            if tl.atomic_xchg(claim + 1, 1) == 0:
                f = _wait_flag(flag, SPIN)
                dep = f - f
                for i in range(nlines):
                    t0 = _clock(dep)
                    v = tl.load(buf + i * 32 + dep, cache_modifier=".cg")
                    tl.store(scratch + i, v)
                    t1 = _clock(v)
                    tl.store(lat + i, t1 - t0)
                    dep = v
                tl.store(lat + nlines, f.to(tl.int64))

    return l2b_read, l2b_hotstream, l2b_writeread, l2b_pair, lat_probe


@dataclass
class _Bufs:
    torch: object
    big: object       # 4 GiB float32: gather span, conflict strides, streams
    idx: object       # int64 line indices for gather
    claim: object
    ctr: object
    info: object
    sink: object
    num_sms: int


def _worker_sel(torch, num_sms: int, sms: list[int]):
    sel = torch.zeros(num_sms, dtype=torch.int32, device="cuda")
    sel[list(sms)] = 1
    return sel


def _launch(case: Case, k, B: _Bufs, part_sms: list[int]) -> dict:
    """Launch one case's kernel; returns host-side facts (workers, sizes actually used)."""
    torch = B.torch
    l2b_read, l2b_hotstream, l2b_writeread, l2b_pair, _ = k
    n = B.num_sms
    grid = (4 * n,)
    B.claim.zero_()
    B.ctr.zero_()
    B.info.fill_(-1)
    facts: dict = {}
    if case.bench == "pair":
        rows = case.ws_bytes // LINE_BYTES
        buf = B.big[: rows * 32]
        flag = B.ctr
        l2b_pair[grid](buf, B.claim, flag, B.sink, case.sm_a, case.sm_b, rows, ROWS=64, SPIN=1 << 22, num_warps=4)
        facts["bytes"] = rows * LINE_BYTES
        return facts
    sms = {"one_sm": [0], "part": part_sms, "all": list(range(n))}[case.mode]
    sel = _worker_sel(torch, n, sms)
    T = len(sms)
    if case.bench == "sweep":
        if case.layout == "dense" or case.layout == "gather":
            rows_total = case.ws_bytes // LINE_BYTES
            ROWS, COLS, row_stride = 64, 32, 32
        else:  # sector<s>: one 32-B sector every s bytes
            s = int(case.layout[len("sector"):])
            rows_total = case.ws_bytes // s
            ROWS, COLS, row_stride = 256, 8, s // 4
        rpc = max(ROWS, (rows_total // T // ROWS) * ROWS)
        gather = case.layout == "gather"
        if gather:
            assert T * rpc <= B.idx.numel(), "gather index table too small"
        l2b_read[grid](B.big, B.idx, sel, B.claim, B.ctr, B.info, B.sink, T, rpc, row_stride, case.passes,
                       chunk_step(T), ROWS=ROWS, COLS=COLS, GATHER=gather, num_warps=4)
        facts["bytes_per_pass"] = T * rpc * (LINE_BYTES if COLS == 32 else 32)
        facts["span_bytes"] = T * rpc * (row_stride * 4 if not gather else LINE_BYTES)
        facts["rows_per_chunk"] = rpc
    elif case.bench == "conflict":
        rs = case.stride_bytes // 4
        l2b_read[grid](B.big, B.idx, sel, B.claim, B.ctr, B.info, B.sink, 1, case.lines, rs, case.passes, 1,
                       ROWS=16, COLS=32, GATHER=False, num_warps=4)
        facts["bytes_per_pass"] = case.lines * LINE_BYTES
    elif case.bench == "hotstream":
        hot_rows = max(64, (case.ws_bytes // LINE_BYTES // T // 64) * 64)
        stream_rows = max(64, (case.stream_bytes // LINE_BYTES // T // 64) * 64)
        hot = B.big[: T * hot_rows * 32]
        stream = B.big[T * hot_rows * 32:]
        assert (case.passes * T * stream_rows) * 32 <= stream.numel()
        l2b_hotstream[grid](hot, stream, sel, B.claim, B.ctr, B.info, B.sink, T, hot_rows, stream_rows, case.passes,
                            WRITE=bool(case.write_stream), ROWS=64, num_warps=4)
        facts["hot_bytes"] = T * hot_rows * LINE_BYTES
        facts["stream_bytes_per_pass"] = T * stream_rows * LINE_BYTES
    elif case.bench == "writeread":
        rows = max(64, (case.ws_bytes // LINE_BYTES // T // 64) * 64)
        l2b_writeread[grid](B.big, sel, B.claim, B.ctr, B.info, B.sink, rows, ROWS=64, num_warps=4)
        facts["bytes"] = T * rows * LINE_BYTES
    else:
        raise ValueError(case.bench)
    facts["T"] = T
    return facts


def child(plan_path: str, facts_path: str) -> int:
    """Run inside ncu: every case once, after a begin marker (grid = id + 1); the next marker ends it."""
    import torch

    from iosim.validate import _marker_kernels

    spec = json.load(open(plan_path))
    cases = [Case(**c) for c in spec["cases"]]
    part_sms = spec["part_sms"]
    n = torch.cuda.get_device_properties(0).multi_processor_count
    begin, _ = _marker_kernels()
    mark = torch.zeros(max(c.id for c in cases) + 2, dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    big = torch.zeros(GATHER_SPAN_BYTES // 4, dtype=torch.float32, device="cuda")
    max_rows = max((c.ws_bytes // LINE_BYTES for c in cases if c.layout == "gather"), default=64) + 64 * n
    idx = torch.randperm(GATHER_SPAN_BYTES // LINE_BYTES, generator=g)[:max_rows].to("cuda")
    B = _Bufs(torch, big, idx, torch.zeros(n, dtype=torch.int32, device="cuda"),
              torch.zeros(1, dtype=torch.int32, device="cuda"), torch.full((n,), -1, dtype=torch.int32, device="cuda"),
              torch.zeros(4 * n, dtype=torch.float32, device="cuda"), n)
    k = _kernels()
    facts = {}
    for c in cases:
        try:
            begin[(c.id + 1,)](mark)       # the next begin marker ends this case (parse_ncu_csv)
            f = _launch(c, k, B, part_sms)
            torch.cuda.synchronize()
            f["workers"] = " ".join(str(x) for x in B.info.tolist() if x >= 0)
            if c.bench == "pair":
                f["flag_seen"] = float(B.sink[1].item())
            facts[c.id] = f
        except Exception as e:  # one broken case must not lose the sweep
            print(f"l2bench child: case {c.id} ({c.bench}) failed: {e}", file=sys.stderr)
    with open(facts_path, "w") as fh:
        json.dump(facts, fh)
    return 0


def latency_probes(candidates: list[int], nlines: int = PROBE_LINES) -> list[dict]:
    """lat_probe with loader SM a ∈ candidates and timer SM 0 (not under ncu). Returns one row per (a, line)."""
    import torch

    _, _, _, _, lat_probe = _kernels()
    n = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    base = torch.zeros(len(candidates) * (nlines + 1024) * 32 + 64, dtype=torch.int32, device="cuda")
    claim = torch.zeros(2, dtype=torch.int32, device="cuda")
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    lat = torch.zeros(nlines + 1, dtype=torch.int64, device="cuda")
    scratch = torch.zeros(nlines, dtype=torch.int32, device="cuda")
    for j, a in enumerate(candidates):
        off = j * (nlines + 1024) * 32   # a fresh region for every loader (nothing cached from before)
        buf = base[off: off + nlines * 32]
        claim.zero_()
        flag.zero_()
        lat.zero_()
        lat_probe[(4 * n,)](buf, claim, flag, lat, scratch, a, 0, nlines, SPIN=1 << 22, num_warps=1)
        torch.cuda.synchronize()
        vals = lat.tolist()
        for i in range(nlines):
            rows.append({"loader_sm": a, "timer_sm": 0, "line": i, "addr_offset": off * 4 + i * LINE_BYTES,
                         "cycles": vals[i], "flag": vals[nlines]})
    return rows


def csv_text(rows: list[dict]) -> str:
    """CSV of dict rows (columns in first-seen order; missing values empty)."""
    import io

    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    s = io.StringIO()
    w = csv.DictWriter(s, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return s.getvalue()


def _write_csv(path: str, rows: list[dict]) -> None:
    from iosim.atomic import atomic_write_text

    atomic_write_text(path, csv_text(rows))


def _ncu_run(cases: list[Case], part_sms: list[int], workdir: str, out_dir: str, tag: str, timeout_s: int,
             log) -> list[dict]:
    from iosim.validate import find_ncu, parse_ncu_csv

    ncu = find_ncu()
    if ncu is None:
        raise RuntimeError("ncu not found: the L2 benchmarks need Nsight Compute")
    plan_path = os.path.join(workdir, f"l2bench_plan_{tag}.json")
    facts_path = os.path.join(workdir, f"l2bench_facts_{tag}.json")
    json.dump({"cases": [asdict(c) for c in cases], "part_sms": part_sms}, open(plan_path, "w"))
    cmd = [ncu, "--target-processes", "all", "--clock-control", "none", "--cache-control", "all", "--csv",
           "-k", "regex:l2b_|iosim_mark_begin", "--metrics", ",".join(METRICS),
           sys.executable, "-m", "iosim.l2bench", "--child", plan_path, facts_path]
    log("running: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    open(os.path.join(out_dir, f"l2bench_ncu_{tag}.csv"), "w").write(p.stdout)
    if p.returncode != 0:
        log(p.stderr[-3000:])
    meas = parse_ncu_csv(p.stdout)
    facts = json.load(open(facts_path)) if os.path.exists(facts_path) else {}
    rows = []
    for c in cases:
        m = meas.get(c.id, {})
        f = facts.get(str(c.id), {})
        row = asdict(c)
        row.update({kk: v for kk, v in f.items()})
        for mm in METRICS:
            row[mm] = m.get(mm, "")
        rows.append(row)
    return rows


def partition_of(pair_rows: list[dict], region_bytes: int = PAIR_BYTES) -> tuple[list[int], str]:
    """SMs in SM 0's partition from the pair runs: b is with SM 0 when b's read crossed the fabric for fewer than
    a quarter of the region's sectors beyond what SM 0's own read did. Returns (SMs, note)."""
    fab = {}
    for r in pair_rows:
        v = r.get("lts__t_sectors_srcunit_ltcfabric.sum")
        if v not in ("", None):
            fab[int(r["sm_b"])] = float(v)
    if len(fab) < 2:
        return [], "pair runs gave no fabric counts"
    vals = sorted(fab.values())
    lo, hi = vals[0], vals[-1]
    sectors = region_bytes / 32
    if hi - lo < 0.25 * sectors:
        return [], f"no split: fabric sectors {lo:.0f}–{hi:.0f} for every SM pair (region {sectors:.0f} sectors)"
    cut = (lo + hi) / 2
    same = [0] + sorted(b for b, v in fab.items() if v < cut)
    return same, f"split at {cut:.0f} fabric sectors: {len(same)} SMs with SM 0, {len(fab) + 1 - len(same)} across"


def run(out_dir: str, quick: bool = False, timeout_s: int = 540, log=print) -> dict:
    """Measure everything; writes l2bench_raw.csv, l2bench_latency.csv and l2bench_meta.json under out_dir."""
    import torch

    import tempfile

    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="l2bench_")
    props = torch.cuda.get_device_properties(0)
    l2 = int(props.L2_cache_size)
    n = int(props.multi_processor_count)
    cases = plan(l2, n, quick=quick)
    pairs = [c for c in cases if c.bench == "pair"]
    rest = [c for c in cases if c.bench != "pair"]
    rows = _ncu_run(pairs, [], work, out_dir, "pair", timeout_s // 3, log)
    part, note = partition_of(rows)
    log("partition: " + note)
    if not part:
        part = list(range(n // 2))
        note += "; 'part' mode uses SMs 0…n/2−1 instead"
    rows += _ncu_run(rest, part, work, out_dir, "sweep", timeout_s, log)
    _write_csv(os.path.join(out_dir, "l2bench_raw.csv"), rows)
    across = [b for b in range(1, n) if b not in part][:1]
    cands = sorted(set(across + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]))
    try:
        lat = latency_probes(cands)
    except Exception as e:  # timing probes are secondary; keep the counters
        log(f"latency probes failed: {e}")
        lat = []
    _write_csv(os.path.join(out_dir, "l2bench_latency.csv"), lat)
    import datetime

    meta = {"gpu": props.name, "l2_bytes": l2, "num_sms": n, "part_sms": part, "partition_note": note,
            "torch": torch.__version__, "date": datetime.date.today().isoformat(), "metrics": list(METRICS)}
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:
        pass
    from iosim.atomic import atomic_write_text

    atomic_write_text(os.path.join(out_dir, "l2bench_meta.json"), json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1], argv[2])
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the case list for a GPU (--l2-bytes, --sms)")
    ap.add_argument("--l2-bytes", type=int, default=52428800)
    ap.add_argument("--sms", type=int, default=132)
    a = ap.parse_args(argv)
    if a.dry_run:
        cs = plan(a.l2_bytes, a.sms, quick=a.quick)
        from collections import Counter

        print(len(cs), "cases", dict(Counter(c.bench for c in cs)))
        return 0
    run(a.out, quick=a.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
