"""Validation figures a reviewer can trust (issue 18): every committed per-run figure, held-out data apart from the data
the model was tuned on, runs split by the rule fixed in advance (``iosim.validation_rule``), baselines beside.

    .venv/bin/python benchmarks/validation_summary.py [--out reports/validation]

Reads only committed files: the per-run DRAM comparisons (``compare_l2.csv`` of H100 sets 1–2 and H200 sets 1–5, the
session-1 FA2 table ``h100/sdpa_flash_fa2.csv``, the ``iosim validate`` run ``h100/speed_validate_l2.csv``), the time
comparisons of cost-model runs 1–3 (``cost_validation.csv``; the held-out-when-measured versions from the commits that
measured them, via ``git show``) and the exhaustive tile timings of runs 1–5 (``tiles_vs_exhaustive.csv``). Nothing
is re-simulated: the rule needs each launch's occupancy (``predict(..., l2=False)``: counts and the cost model, no
L2), and the tile chooser's pick is taken at HEAD (``iosim.tiles.choose``, compulsory DRAM) because the committed
picks of runs 1–2 predate the current model (those of runs 3–5 are checked against it).
Writes ``summary.md`` and ``summary.json`` (atomically, ``iosim.atomic``). Error = predicted / measured − 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, os.path.join(HERE, "gpu")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from iosim.atomic import atomic_write_text  # noqa: E402
from iosim.hwprofile import load_hardware  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402
from iosim.validation_rule import RULE_FIXED_ON, launch_working_set  # noqa: E402

V = "reports/validation"
HURT = 0.25  # |error| above which a run is listed by name
WITHIN = 5.0  # tile chooser: measured time within 5% of the exhaustive best
OLD_FILTER = 1.15  # the old split: measured DRAM reads > 1.15 × (Q+K+V) (benchmarks/gpu/compare_l2.py L2_BOUND)
LRU = "LRU policy (6268f5b: set-1 L2-bound 5.4% LRU vs 13.2% SRRIP)"
PHASES = "phases off by default (6268f5b: medians of H100 set 2 and H200 sets 1+2 got worse with them)"
SPREAD = "way spread 4 + drift 0.15/0.03 (547265d, f056398)"


@dataclass(frozen=True)
class DataSet:
    """One committed set of measured runs, when it was measured, and what was chosen looking at it."""

    key: str
    gpu: str
    path: str
    status: str  # "held out" | "unused, measured before a choice" | "fitted"
    measured: str
    chosen_on_it: str
    tag: str = "—"  # chosen_on_it in a few words, for the tables


DRAM_SETS = (
    DataSet("H100 set 6", "h100", f"{V}/h100/l2_validation_set6/compare_l2.csv", "held out",
            "2026-12-06 (device run 18), cases listed 2026-12-05 (issue 18) after every L2 choice; DRAM reads "
            "reconstructed from the printed DRAM/QKV table (3 decimals)", "nothing"),
    DataSet("H200 set 5", "h200", f"{V}/h200/l2_validation_set5/compare_l2.csv", "held out",
            "2026-12-04, 3d5d13a, after the last L2 choice (547265d)", "nothing"),
    DataSet("H200 set 4", "h200", f"{V}/h200/l2_validation_set4/compare_l2.csv", "unused, measured before a choice",
            "2026-12-04 14:59, e5f8244, 19 min before the way spread and drift were chosen (547265d); compared "
            "only after (46b57f2)", "nothing (its measured bytes were committed before the choice)"),
    DataSet("H100 validate run", "h100", f"{V}/h100/speed_validate_l2.csv", "unused, measured before a choice",
            "2026-11-25, 3db044c, before the L2 calibration, LRU, way spread and drift; its errors were seen with "
            "the session-1 and session-4 models", "nothing named by the commits"),
    DataSet("H100 set 1", "h100", f"{V}/h100/l2_validation_set1/compare_l2.csv", "fitted",
            "2026-11-25, 16a42bb, before every issue-9 choice",
            f"{LRU}; drift by KV walk direction (6268f5b); {SPREAD}", "LRU, drift, way spread"),
    DataSet("H100 set 2", "h100", f"{V}/h100/l2_validation_set2/compare_l2.csv", "fitted",
            "2026-11-25, 52a5303, after the session-2 calibration", f"{PHASES}; {SPREAD}",
            "phases off, drift, way spread"),
    DataSet("H200 sets 1+2", "h200", f"{V}/h200/l2_validation/compare_l2.csv", "fitted",
            "2026-12-03, 692d1d6, before the session-4 choices", f"{PHASES}; {SPREAD}",
            "phases off, drift, way spread"),
    DataSet("H200 set 3", "h200", f"{V}/h200/l2_validation_set3/compare_l2.csv", "fitted",
            "2026-12-03, 2ed6163, after the session-4 choices", SPREAD, "drift, way spread"),
    DataSet("H100 session-1 FA2", "h100", f"{V}/h100/sdpa_flash_fa2.csv", "fitted",
            "2026-11-25, cases 1–20 and 21–30 (b938c31)",
            "L2 partitions duplicated; drift only for kernels with unequal trip counts (after case 27); drift 0.25 "
            "on 8 run-1 cases (since replaced), re-checked in session 2", "duplicated partitions, convoy rule"),
)
STATUS_ORDER = ("held out", "unused, measured before a choice", "fitted")


@dataclass(frozen=True)
class DramRun:
    set: str
    run: str
    impl: str
    shape: str
    err: float  # calibrated (current) model
    err_qkv: float  # baseline: DRAM read = Q+K+V (a perfect L2)
    err_uncalibrated: float  # baseline: the pre-issue-9 L2 profile (nan where not committed)
    measured_over_qkv: float
    old_l2_bound: bool
    ws_bytes: int
    half_l2_bytes: int
    l2_bound: bool


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _read(path: str) -> list[dict]:
    with open(os.path.join(ROOT, path), newline="") as f:
        return list(csv.DictReader(f))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _shape(p: Problem, extra: str = "") -> str:
    h = f"H{p.heads}" + (f"/{p.kv_heads}" if p.kv_heads != p.heads else "")
    return f"B{p.batch} {h} N{p.seq_q} d{p.head_dim}" + (" causal" if p.causal else "") + extra


def _run(ds: DataSet, run: str, impl: str, p: Problem, ws, err, err_uncal, measured, qkv, old=None) -> DramRun:
    ratio = measured / qkv
    return DramRun(ds.key, run, impl, _shape(p), err, qkv / measured - 1, err_uncal, ratio,
                   ratio > OLD_FILTER if old is None else old, ws.ws_bytes, ws.half_l2_bytes, ws.l2_bound)


def load_compare_l2(ds: DataSet, hw) -> list[DramRun]:
    from validate_l2 import mask_tables  # the block mask the GPU run used (shared with compare_l2.py)
    out = []
    for r in _read(ds.path):
        c = {k: int(float(r[k])) for k in ("B", "Hq", "Hkv", "N", "d", "causal", "seed")}
        c["density"] = _f(r["density"]) or 0.0
        p = Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", bool(c["causal"]))
        kernel = {"sdpa": "fa2", "flex": "flex"}[r["impl"]]
        ws = launch_working_set(hw, p, kernel, block_mask=mask_tables(c) if kernel == "flex" else None)
        run = _run(ds, r["id"], {"sdpa": "sdpa (FA2)", "flex": "flex"}[r["impl"]], p, ws, _f(r["err_calibrated"]),
                   _f(r["err_uncalibrated"]), _f(r["measured_dram_read"]), int(r["qkv_bytes"]),
                   r["l2_bound"] == "1")
        sparse = {"shape": run.shape + f" sparse {c['density']}"} if c["density"] else {}
        out.append(DramRun(**{**asdict(run), **sparse}))
    return out


def load_fa2_session1(ds: DataSet, hw) -> list[DramRun]:
    out = []
    for r in _read(ds.path):
        b, h, n, d, c = (int(r[k]) for k in ("batch", "heads", "seq", "head_dim", "causal"))
        p = Problem(b, h, h, n, n, d, "bf16", bool(c))
        out.append(_run(ds, r["case"], "sdpa (FA2)", p, launch_working_set(hw, p, "fa2"), _f(r["dram_read_err"]),
                        math.nan, _f(r["measured_dram_read_bytes"]), int(r["qkv_bytes"]), r["l2_bound"] == "1"))
    return out


def validate_launches() -> list[tuple[dict, Problem, KernelConfig | None]]:
    """The rows of speed_validate.csv that compare_validate.py compared, in its order, with the launch that ran."""
    from compare_validate import PRESET, ran_config
    out = []
    for r in _read(f"{V}/h100/speed_validate.csv"):
        if not r["ncu_dram_read_bytes"] or r["impl"] not in PRESET:
            continue
        p = Problem(*(int(r[k]) for k in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim")), "bf16",
                    bool(int(r["causal"])))
        out.append((r, p, ran_config(r["config"], p) if r["impl"] == "iosim-triton" and r["config"] else None))
    return out


def load_validate(ds: DataSet, hw) -> list[DramRun]:
    out = []
    for i, (r, (m, p, cfg)) in enumerate(zip(_read(ds.path), validate_launches(), strict=True), 1):
        assert r["impl"] == m["impl"] and r["shape"] == _shape(p), (r, m)
        ws = launch_working_set(hw, p, config=cfg) if cfg else launch_working_set(hw, p, "fa2")
        impl = "iosim-triton" if cfg else "sdpa (FA2)"
        out.append(_run(ds, f"v{i}", impl, p, ws, _f(r["err_pct"]) / 100, math.nan, _f(r["measured_dram_read"]),
                        int(r["qkv_bytes"])))
    return out


def dram_runs() -> list[DramRun]:
    hws = {g: load_hardware(g) for g in ("h100", "h200")}
    load = {"H100 session-1 FA2": load_fa2_session1, "H100 validate run": load_validate}
    return [run for ds in DRAM_SETS for run in load.get(ds.key, load_compare_l2)(ds, hws[ds.gpu])]


def _stats(runs: list[DramRun], attr: str) -> dict:
    pairs = [(getattr(r, attr), r) for r in runs if not math.isnan(getattr(r, attr))]
    if not pairs:
        return {"n": 0}
    e, w = max(pairs, key=lambda x: abs(x[0]))
    return {"n": len(pairs), "median_abs": statistics.median(abs(x) for x, _ in pairs), "worst": e,
            "worst_run": f"{w.run} ({w.impl} {w.shape})"}


def dram_tables(runs: list[DramRun]) -> list[dict]:
    rows = []
    for ds in DRAM_SETS:
        sel = [r for r in runs if r.set == ds.key]
        impls = sorted({r.impl for r in sel})
        for impl in (["all"] if len(impls) > 1 else []) + impls:
            for cls, bound in (("L2-bound", True), ("rest", False)):
                g = [r for r in sel if impl in ("all", r.impl) and r.l2_bound == bound]
                if g:
                    rows.append({"set": ds.key, "status": ds.status, "impl": impl, "class": cls,
                                 "model": _stats(g, "err"), "qkv": _stats(g, "err_qkv"),
                                 "uncalibrated": _stats(g, "err_uncalibrated"), "chosen_on_it": ds.tag})
    return rows


def _pct(x: float | None, signed: bool = True) -> str:
    return "–" if x is None or math.isnan(x) else (f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%")


def _cell(s: dict, who: bool = False) -> str:
    if not s.get("n"):
        return "–"
    return f"{_pct(s['median_abs'], False)} / {_pct(s['worst'])}" + (f" ({s['worst_run']})" if who else "")


def dram_md(rows: list[dict], runs: list[DramRun]) -> list[str]:
    out = []
    titles = {"held out": "a1. Held out: measured after every L2-model choice",
              "unused, measured before a choice": "a2. Not used for any choice, but measured before the last one "
                                                  "(held out only by the choosers' account; not \"held out\" by the "
                                                  "project's rule)",
              "fitted": "a3. Fitted: a parameter of the current model was chosen looking at these runs"}
    for status in STATUS_ORDER:
        out += [f"### {titles[status]}", "",
                "| set | implementation | class | n | model: median abs / worst (run) | Q+K+V baseline | "
                "uncalibrated L2 | chosen on it |", "|---|---|---|---:|---|---|---|---|"]
        for r in (r for r in rows if r["status"] == status):
            out.append(f"| {r['set']} | {r['impl']} | {r['class']} | {r['model'].get('n', 0)} | "
                       f"{_cell(r['model'], True)} | {_cell(r['qkv'])} | {_cell(r['uncalibrated'])} | "
                       f"{r['chosen_on_it']} |")
        out.append("")
    out += ["### Old split (measured DRAM > 1.15 × Q+K+V) against the rule", "",
            "| set | runs | L2-bound by the rule | by the old split | both | rule only | old only |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for ds in DRAM_SETS:
        s = [r for r in runs if r.set == ds.key]
        both = sum(r.l2_bound and r.old_l2_bound for r in s)
        rule, old = sum(r.l2_bound for r in s), sum(r.old_l2_bound for r in s)
        out.append(f"| {ds.key} | {len(s)} | {rule} | {old} | {both} | {rule - both} | {old - both} |")
    out += ["", f"### Runs that hurt (|model error| > {HURT:.0%}), every set", "",
            "| set | run | implementation | shape | class (rule) | old split | measured ÷ QKV | model | Q+K+V | "
            "uncalibrated |", "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in sorted((r for r in runs if abs(r.err) > HURT), key=lambda r: -abs(r.err)):
        out.append(f"| {r.set} | {r.run} | {r.impl} | {r.shape} | {'L2-bound' if r.l2_bound else 'rest'} | "
                   f"{'L2-bound' if r.old_l2_bound else 'rest'} | {r.measured_over_qkv:.2f} | {_pct(r.err)} | "
                   f"{_pct(r.err_qkv)} | {_pct(r.err_uncalibrated)} |")
    return out


# ---- time (cost model) -------------------------------------------------------------------------------------------

RUN3 = f"{V}/h100/cost_validation_run3/cost_validation.csv"
TILE_RUNS = {1: f"{V}/h100/tiles_vs_exhaustive.csv", 2: f"{V}/h100/cost_validation_run2/tiles_vs_exhaustive.csv",
             **{k: f"{V}/h100/cost_validation_run{k}/tiles_vs_exhaustive.csv" for k in (3, 4, 5)}}
KERNEL = {"sdpa-flash": "FA2 preset", "iosim-triton": "our Triton kernel"}
RULES_ON_1_3 = ("band loop, P registers, pipeline smem, causal tail (70cfab8), prologue r^-1/2 (04a3002) chosen on "
                "runs 1–3")
TIME_SOURCES = (  # (label, status, what was chosen on it / why, file, commit that holds the figures, split filter)
    ("run 3 (H=24), current model", "fitted", RULES_ON_1_3 + "; the baseline's c fitted here", RUN3, None, None),
    ("run 3 as measured (model of 6edaeb9)", "held out when measured", "held out when measured (6edaeb9)", RUN3,
     "6edaeb9", None),
    ("run 2 (H=32) as measured (6bf8f2e)", "held out when measured",
     "residency overlap rule written after it (2020d67)", f"{V}/h100/cost_validation_run2/cost_validation.csv",
     None, None),
    ("run 1 (H=16) as measured (6c16623), its held-out split", "held out when measured",
     "prefetch, per-CTA overhead, stage tie-break written against it (f038e08)", f"{V}/h100/cost_validation.csv",
     None, "held-out"),
    ("H100 validate run (32K/64K d128)", "unused, measured before a choice",
     "measured 3db044c, before f038e08, 78fce32, 70cfab8, 04a3002; not named by them",
     f"{V}/h100/speed_validate_l2.csv",
     None, None),
    ("run 4 (H=20), every timed config", "fitted", "seen before the prologue rule (04a3002); compare_cost counts it "
     "in-sample", TILE_RUNS[4], None, None),
    ("run 5 (H=12, ragged N), every timed config", "unused, measured before a choice",
     "measured with the model of 04a3002; one later review change of the causal tail weights (aa1c2c4), whose "
     "commit regenerated its table", TILE_RUNS[5], None, None),
)
PREVIOUS_DEFAULTS = {64: "128x128x4x3", 128: "128x128x8x3"}  # iosim.triton_kernels.schedule before 0b2b594 (speed_tune)


@dataclass(frozen=True)
class TimeRun:
    source: str
    kernel: str
    shape: str
    flops: int
    measured_ms: float
    err: float


def _problem(r: dict) -> Problem:
    n = int(r["seq"])
    return Problem(int(r["batch"]), int(r["heads"]), int(r["heads"]), n, n, int(r["head_dim"]), "bf16",
                   bool(int(r["causal"])))


def time_runs() -> list[TimeRun]:
    from iosim.validate import flops
    out = []
    for label, _, _, path, commit, split in TIME_SOURCES:
        rows = list(csv.DictReader(io.StringIO(_git("show", f"{commit}:{path}")))) if commit else _read(path)
        if path == f"{V}/h100/speed_validate_l2.csv":
            for r, (m, p, cfg) in zip(rows, validate_launches(), strict=True):
                out.append(TimeRun(label, KERNEL[m["impl"]], _shape(p), flops(p), _f(r["measured_time_ms"]),
                                   _f(r["time_err_pct"]) / 100))
            continue
        for r in rows:
            if split and r["split"] != split or not r["measured_ms"]:
                continue
            p = _problem(r)
            kernel = KERNEL[r["impl"]] if "impl" in r else "our Triton kernel"
            shape = _shape(p) + (f" {r['config']}" if "impl" not in r else "")
            out.append(TimeRun(label, kernel, shape, flops(p), _f(r["measured_ms"]), _f(r["err_pct"]) / 100))
    return out


def constant_efficiency(runs: list[TimeRun], peak: float) -> dict[str, float]:
    """Per kernel, c = the median of achieved FLOP/s ÷ peak over run 3 (the baseline time = FLOPs / (c × peak))."""
    src = TIME_SOURCES[0][0]
    return {k: statistics.median(r.flops / (r.measured_ms * 1e-3) / peak for r in runs if r.source == src
                                 and r.kernel == k) for k in KERNEL.values()}


def time_table(runs: list[TimeRun], c: dict[str, float], peak: float) -> list[dict]:
    rows = []
    for label, status, why, *_ in TIME_SOURCES:
        for k in KERNEL.values():
            g = [r for r in runs if r.source == label and r.kernel == k]
            if not g:
                continue
            base = [r.flops / (c[k] * peak) / (r.measured_ms * 1e-3) - 1 for r in g]
            worst = max(g, key=lambda r: abs(r.err))
            rows.append({"source": label, "status": status, "why": why, "kernel": k, "n": len(g),
                         "median_abs": statistics.median(abs(r.err) for r in g), "worst": worst.err,
                         "worst_shape": worst.shape, "baseline_median_abs": statistics.median(abs(b) for b in base),
                         "baseline_worst": max(base, key=abs)})
    return rows


# ---- tile chooser --------------------------------------------------------------------------------------------------

def tile_shapes() -> dict[int, dict[tuple, dict[str, float]]]:
    """{run: {(B, H, N, d, causal): {config: measured ms}}} of every timed config of the exhaustive runs."""
    out = {}
    for run, path in TILE_RUNS.items():
        shapes = out.setdefault(run, {})
        for r in _read(path):
            key = tuple(int(r[k]) for k in ("batch", "heads", "seq", "head_dim", "causal"))
            shapes.setdefault(key, {})[r["config"]] = _f(r["measured_ms"])
    return out


def chooser_picks(shapes) -> tuple[dict, dict]:
    """The chooser's pick at HEAD per shape, and a check against the committed tables of runs 3–5 (written by
    compare_cost.py at aa1c2c4): picks reproduced, and the largest relative change of a config's predicted time."""
    from iosim.tiles import choose
    hw, picks, pred = load_hardware("h100"), {}, {}
    for run in shapes:
        for b, h, n, d, c in shapes[run]:
            ch = choose(hw, Problem(b, h, h, n, n, d, "bf16", bool(c)))
            picks[(run, b, h, n, d, c)] = "x".join(map(str, ch.best.key))
            pred.update({(run, b, h, n, d, c, "x".join(map(str, k.key))): k.time_s * 1e3 for k in ch.ranked})
    same = total = 0
    key = ("batch", "heads", "seq", "head_dim", "causal")
    for run in (3, 4, 5):
        for r in _read(TILE_RUNS[run].replace(".csv", "_summary.csv")):
            total += 1
            same += picks[(run, *(int(r[k]) for k in key))] == r["iosim_pick"]
    drift = max(abs(pred[(run, *(int(r[k]) for k in key), r["config"])] / _f(r["predicted_ms"]) - 1)
                for run in (3, 4, 5) for r in _read(TILE_RUNS[run]))
    return picks, {"picks_reproduced": same, "picks_committed": total, "max_predicted_time_change": drift}


def _gap(times: dict[str, float], config: str) -> float:
    return 100 * (times[config] / min(times.values()) - 1) if config in times else math.inf


def best_fixed(shapes) -> dict[int, str]:
    """Per head dim, the one config with the most shapes within 5% of the best on runs 1–3 (ties: lower median gap,
    untimed = infinite)."""
    out = {}
    for d in (64, 128):
        ts = [t for run in (1, 2, 3) for k, t in shapes[run].items() if k[3] == d]
        configs = sorted({c for t in ts for c in t})
        out[d] = min(configs, key=lambda c: (-sum(_gap(t, c) <= WITHIN for t in ts),
                                             statistics.median(_gap(t, c) for t in ts), c))
    return out


def tile_table(shapes, picks, fixed) -> tuple[list[dict], list[dict]]:
    from iosim.triton_kernels.schedule import DEFAULT_CONFIGS
    per_run, per_shape = [], []
    for run, ss in shapes.items():
        row = {"run": run, "shapes": len(ss), "chooser": 0, "best_fixed": 0, "current_defaults": 0,
               "previous_defaults": 0}
        for key, t in ss.items():
            d, c = key[3], bool(key[4])
            g = {"chooser": _gap(t, picks[(run, *key)]), "best_fixed": _gap(t, fixed[d]),
                 "current_defaults": _gap(t, "x".join(map(str, DEFAULT_CONFIGS[(d, c)]))),
                 "previous_defaults": _gap(t, PREVIOUS_DEFAULTS[d])}
            for name, v in g.items():
                row[name] += v <= WITHIN
            if run >= 4:
                per_shape.append({"run": run, "shape": f"B{key[0]} N{key[2]} d{d}" + (" causal" if c else ""),
                                  "pick": picks[(run, *key)], "fixed": fixed[d], **g})
        per_run.append(row)
    return per_run, per_shape


# ---- report --------------------------------------------------------------------------------------------------------

RULE_MD = ("**L2-bound** (rule fixed on {on}, before these tables were recomputed; `iosim/validation_rule.py`): the "
           "nominal K/V working set of the CTAs resident at once, ws = ⌈q_heads_in_flight ÷ (H ÷ H_kv)⌉ × 2 × N_kv × "
           "d × 2 B with q_heads_in_flight = min(B × H, ⌈SMs × CTAs/SM ÷ ⌈N_q ÷ block_m⌉⌉), exceeds half the nominal "
           "L2 (the two partitions keep duplicate copies: `reports/calibration/*/l2_calibration.md`). It looks at the "
           "launch only (CTAs/SM from `predict(..., l2=False).time.kernels[0].ctas_per_sm`), never at a measurement.")


def _ms(x: float) -> str:
    return f"{x:.1f}%"


def _finite(x):
    """JSON has no NaN/inf: a value not committed (nan) or a config not timed (inf) becomes null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    return [_finite(v) for v in x] if isinstance(x, (list, tuple)) else x


def report(out_dir: str) -> None:
    runs = dram_runs()
    rows = dram_tables(runs)
    hw = load_hardware("h100")
    peak = hw.tensor_flops("bf16")
    truns = time_runs()
    c = constant_efficiency(truns, peak)
    trows = time_table(truns, c, peak)
    shapes = tile_shapes()
    picks, check = chooser_picks(shapes)
    fixed = best_fixed(shapes)
    per_run, per_shape = tile_table(shapes, picks, fixed)
    head = _git("rev-parse", "--short", "HEAD").strip()
    dirty = bool(_git("status", "--porcelain", "--", "iosim").strip())
    occupancy = head + (" with uncommitted changes under iosim/" if dirty else "")
    counts = {ds.key: {"runs": sum(r.set == ds.key for r in runs),
                       "l2_bound": sum(r.set == ds.key and r.l2_bound for r in runs),
                       "rest": sum(r.set == ds.key and not r.l2_bound for r in runs)} for ds in DRAM_SETS}

    md = ["# Validation summary: held out apart from fitted, one rule for \"L2-bound\", baselines beside", "",
          f"Generated by `benchmarks/validation_summary.py` from the committed per-run files (no re-simulation); the "
          f"rule's occupancy is that of commit {occupancy}. Error = predicted / measured − 1; \"median / worst\" = "
          "median |error| / the signed error of largest magnitude. **Held out** = measured after every model choice "
          "it could have influenced; a set measured earlier but not named by any choice is kept apart (a2, c), not "
          "called held out.", "", RULE_MD.format(on=RULE_FIXED_ON), "",
          "## Data sets (DRAM read bytes)", "", "| set | runs | L2-bound / rest (rule) | measured | status | chosen on "
          "it |", "|---|---:|---|---|---|---|"]
    for ds in DRAM_SETS:
        k = counts[ds.key]
        md.append(f"| {ds.key} | {k['runs']} | {k['l2_bound']} / {k['rest']} | {ds.measured} | {ds.status} | "
                  f"{ds.chosen_on_it} |")
    worst_rest = max((r for r in runs if not r.l2_bound), key=lambda r: r.measured_over_qkv)
    md += ["", f"All {len(runs)} runs land in exactly one class. The rule sees one wave's K/V, not reuse across "
           f"waves: its \"rest\" holds causal runs that read up to {worst_rest.measured_over_qkv:.1f} × Q+K+V from "
           f"DRAM ({worst_rest.set} {worst_rest.run}, {worst_rest.shape}); it was fixed in advance and is not "
           "tuned here. "
           "Baselines on the same runs: **Q+K+V** (DRAM read = "
           "compulsory traffic, a perfect L2) and the **uncalibrated** L2 profile (pre-issue-9, same timeline; "
           "committed `err_uncalibrated`, not committed for the session-1 and validate runs).", "",
           "## a, b. DRAM read bytes, model beside its baselines", ""]
    md += dram_md(rows, runs)
    md += ["", "## c. Time (cost model), H100, CUDA events", "",
           f"Constant-efficiency baseline: time = FLOPs / (c × peak), FLOPs = 4·d per visible (q, k) pair "
           f"(`iosim.validate.flops`), peak = {peak / 1e12:.0f} TFLOP/s bf16 (`hardware/h100.toml`), c = median "
           f"achieved ÷ peak on run 3 only: FA2 preset {c['FA2 preset']:.3f}, our Triton kernel "
           f"{c['our Triton kernel']:.3f}. Run 3 is 16 shapes × 2 kernels (not 32 shapes). Runs 4 and 5 time our "
           "Triton kernel at every legal config (the chooser's predictions).", "",
           "| data | status | kernel | n | model: median / worst (shape) | constant efficiency | chosen on it |",
           "|---|---|---|---:|---|---|---|"]
    for r in trows:
        md.append(f"| {r['source']} | {r['status']} | {r['kernel']} | {r['n']} | {_pct(r['median_abs'], False)} / "
                  f"{_pct(r['worst'])} ({r['worst_shape']}) | {_pct(r['baseline_median_abs'], False)} / "
                  f"{_pct(r['baseline_worst'])} | {r['why']} |")
    md += ["", "## d. Tile chooser vs exhaustive timing (H100, every legal config timed; shapes within 5% of the "
           "fastest)", "",
           f"The chooser's pick is taken at HEAD (`iosim.tiles.choose`); it reproduces {check['picks_reproduced']}/"
           f"{check['picks_committed']} committed picks of runs 3–5, whose committed predicted times it matches "
           f"within {100 * check['max_predicted_time_change']:.2f}% (runs 1–2's committed picks predate the current "
           "model). Best fixed config, chosen on runs "
           f"1–3 only (most shapes within 5%): d64 {fixed[64]}, d128 {fixed[128]}. Current kernel defaults "
           "(`DEFAULT_CONFIGS`) were chosen on runs 1–5 (0b2b594: in-sample everywhere); previous defaults "
           f"(d64 {PREVIOUS_DEFAULTS[64]}, d128 {PREVIOUS_DEFAULTS[128]}) came from `speed_tune.md`, before any "
           "exhaustive run. A config the run did not time counts as not within 5%.", "",
           "| run | chooser | shapes | chooser | best fixed (runs 1–3) | current defaults (runs 1–5) | previous "
           "defaults |",
           "|---|---|---:|---:|---:|---:|---:|"]
    split = {1: "in-sample", 2: "in-sample", 3: "in-sample", 4: "in-sample (seen before 04a3002)",
             5: "measured before aa1c2c4 only"}
    for r in per_run:
        md.append(f"| {r['run']} | {split[r['run']]} | {r['shapes']} | {r['chooser']} | {r['best_fixed']} | "
                  f"{r['current_defaults']} | {r['previous_defaults']} |")
    tot = {k: sum(r[k] for r in per_run) for k in ("shapes", "chooser", "best_fixed", "current_defaults",
                                                   "previous_defaults")}
    md += [f"| all | | {tot['shapes']} | {tot['chooser']} | {tot['best_fixed']} | {tot['current_defaults']} | "
           f"{tot['previous_defaults']} |", "", "Runs 4–5, per shape (gap to the fastest measured config):", "",
           "| run | shape | chooser's pick | gap | best fixed | gap | better |", "|---|---|---|---:|---|---:|---|"]
    for s in per_shape:
        better = "tie" if abs(s["chooser"] - s["best_fixed"]) < 0.05 else (
            "chooser" if s["chooser"] < s["best_fixed"] else "fixed")
        md.append(f"| {s['run']} | {s['shape']} | {s['pick']} | {_ms(s['chooser'])} | {s['fixed']} | "
                  f"{_ms(s['best_fixed'])} | {better} |")
    data = {"rule": {"fixed_on": RULE_FIXED_ON, "module": "iosim/validation_rule.py", "occupancy_commit": occupancy},
            "sets": [asdict(ds) for ds in DRAM_SETS], "counts": counts, "total_runs": len(runs),
            "dram_runs": [asdict(r) for r in runs], "dram_tables": rows,
            "time": {"constant_efficiency": c, "peak_flops_per_s": peak, "rows": trows},
            "tiles": {"best_fixed": fixed, "previous_defaults": PREVIOUS_DEFAULTS, "per_run": per_run,
                      "per_shape_runs_4_5": per_shape, "check_against_committed": check}}
    atomic_write_text(os.path.join(out_dir, "summary.md"), "\n".join(md) + "\n")
    atomic_write_text(os.path.join(out_dir, "summary.json"),
                      json.dumps(_finite(data), indent=1, allow_nan=False) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, V), help="folder for summary.md and summary.json")
    report(ap.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
