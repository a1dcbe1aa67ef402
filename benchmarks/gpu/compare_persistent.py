"""iosim's predictions beside the persistent-kernel measurements of validate_persistent.py (issue 21), all held out.

    .venv/bin/python benchmarks/gpu/compare_persistent.py DIR/kernels.csv [--profile auto|h100|h200] \
        [--out reports/validation/h100/persistent] [--jobs 2] [--no-l2]

Each case is predicted the way ``iosim.pipeline.predict`` predicts a preset (schedule → ``count`` → the L2 model
``simulate_schedule`` → ``estimate``):
* ``cudnn`` — ``predict(hw, problem, None, kernel="cudnn")`` (``models/cudnn.py``).
* ``triton_persistent`` / ``triton_streamk`` — the ``iosim-triton`` preset has no persistent or stream-K switch, so the
  schedule is built as ``iosim.triton_kernels.attention(..., persistent=True, order=...)`` / ``(..., decode="streamk")``
  launch it: ``launch_config`` tiles of an empty config, workers by the launcher's own rule (``persistent_workers``
  with its default H100 occupancy / ``streamk_workers``) on the profile's SM count, then ``kernel_schedule``. The rest
  is ``predict``'s, with the iosim-triton preset's launch facts: registers estimated, the chip's native instruction
  path, no in-CTA prefetch, CTA timeline not persistent (the grid is at most one wave of the slots, where both
  timelines agree; the combine kernel is an ordinary grid). The worker count is checked against the measured grid.

Error = predicted / measured − 1 for SM read bytes (``l1tex__m_xbar2l1tex_read_bytes.sum``), DRAM read bytes
(``dram__bytes_read.sum``) and time (``gpu__time_duration.sum``), each summed over the case's own kernels (``KEEP``).
DRAM rows count only where the PREDICTED DRAM read exceeds 1.15 × (Q + K + V bytes) (``DRAM_RULE``: fixed before
the measurement, by the prediction, never by the measured value); the others are listed but left out of the DRAM
statistics. Baseline beside the time: the plain roofline max(FLOPs / peak tensor rate, (Q+K+V+O bytes) / DRAM
bandwidth) of the profile, with no efficiency constant (one constant per implementation set to the median ratio
would be fitted on these very rows). Targets (issue 21, "Must show"): SM read median ≤ 0.5%, DRAM read median ≤ 10%
on the counted rows, time median ≤ 10%.

Every row is held out: the case list was committed before the sweep ran and no model choice is tuned on it. The label
"held out (measured <date>, case list committed <commit>)" takes the date from log.txt beside kernels.csv and the
commit as the first commit of validate_persistent.py whose CASES equal today's; log.txt's case-list hash must match.

Writes ``held.csv`` (per case), ``held.md`` (per implementation: median and worst signed error of each quantity,
the runs that miss the target, then every case) and ``held.json``, atomically, under --out.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from iosim.atomic import atomic_write_text  # noqa: E402
from iosim.hwprofile import load_hardware  # noqa: E402
from iosim.problem import Problem  # noqa: E402
from validate_persistent import CASES, COLS, IMPLS, SUMMED, case_flops_bytes, case_list_hash  # noqa: E402

QUANTITIES = (("sm_read", "l1tex__m_xbar2l1tex_read_bytes.sum"), ("dram_read", "dram__bytes_read.sum"),
              ("time", "gpu__time_duration.sum"))
TARGETS = {"sm_read": 0.005, "dram_read": 0.10, "time": 0.10}
"""Median |error| each quantity must reach (issue 21, "Must show")."""
DRAM_RULE = 1.15
"""A row's DRAM read is scored only if iosim PREDICTS more than DRAM_RULE × (Q + K + V bytes) (issue 21)."""
KEEP = re.compile(r"cudnn|_persistent_fwd_kernel|_streamk_decode_kernel|_streamk_combine_kernel")
"""The implementations' own kernels: cuDNN's (``cudnn_generated_fort_native_sdpa_sm90_flash_fprop…``) and iosim's Triton
kernels. Anything else between two markers (a layout copy, a KV-head expansion) is left out and listed per case."""
CASES_FILE = "benchmarks/gpu/validate_persistent.py"


def _num(s) -> float:
    try:
        return float(str(s).replace(",", ""))
    except (TypeError, ValueError):
        return float("nan")


def problem_of(r: dict) -> Problem:
    return Problem(int(r["B"]), int(r["Hq"]), int(r["Hkv"]), int(r["Nq"]), int(r["Nkv"]), int(r["d"]), "bf16",
                   bool(int(r["causal"])))


def qkv_bytes(r: dict) -> int:
    """Bytes of Q, K and V (bf16), each once: the DRAM rule's yardstick."""
    B, H, Hk, Nq, Nk, d = (int(r[k]) for k in ("B", "Hq", "Hkv", "Nq", "Nkv", "d"))
    return 2 * (B * H * Nq * d + 2 * B * Hk * Nk * d)


def dram_counted(dram_read_pred: float | None, qkv: int) -> bool:
    """The DRAM rule (``DRAM_RULE``), on the prediction only."""
    return dram_read_pred is not None and dram_read_pred > DRAM_RULE * qkv


def triton_schedule(p: Problem, impl: str, order: str, num_sms: int, workers: int | None = None):
    """The schedule ``iosim.triton_kernels.attention`` launches for a case (config=None), workers as the launcher
    picks them (``kernels._persistent``: ``persistent_workers(p, kc, num_sms)``; ``kernels._streamk_decode``:
    ``streamk_workers(p, block_n, num_sms)``). workers: the persistent forward's grid as measured (the launcher of
    the day chose it from the occupancy model of the day), which the prediction then takes as given."""
    from iosim.triton_kernels.schedule import kernel_schedule, launch_config, persistent_workers, streamk_workers
    kc = launch_config(p.head_dim, p.causal)
    if impl == "triton_persistent":
        w = int(workers) if workers else persistent_workers(p, kc, num_sms)
        return kernel_schedule(p, kc, persistent=True, num_workers=w, order=order)
    if impl == "triton_streamk":
        return kernel_schedule(p, kc, decode="streamk", num_workers=streamk_workers(p, kc.block_n, num_sms))
    raise ValueError(f"not a Triton case: {impl}")


def predict_case(r: dict, hw, l2: bool = True) -> dict:
    """iosim's prediction of one case: sm_read, dram_read (None without the L2 model), time (ns), the kernels with
    their programs and per-tensor read bytes, and the worker count of the first kernel."""
    from iosim.counts import count
    from iosim.cost import estimate
    from iosim.memory.hierarchy import simulate_schedule
    from iosim.pipeline import predict
    if isinstance(hw, str):
        hw = load_hardware(hw)
    p = problem_of(r)
    if r["impl"] == "cudnn":
        pr = predict(hw, p, None, kernel="cudnn", l2=l2)
        counts, dram_read, time_s = pr.counts, pr.dram_read_bytes, pr.time_s
    else:
        sched = triton_schedule(p, r["impl"], r["order"], hw.sm_count, r.get("grid_meas"))
        counts = count(sched)
        res = simulate_schedule(sched, hw, None, regs_per_thread=None, persistent=False) if l2 else None
        dram = ({k.name: k.dram_read_bytes for k in res.kernels}, {k.name: k.dram_write_bytes for k in res.kernels}) \
            if res is not None else (None, None)
        t = estimate(sched, counts, hw, *dram, path=None, prefetch=False, regs_per_thread=None)
        dram_read, time_s = (None if res is None else res.dram_read_bytes), t.time_s
    return {"sm_read": counts.sm_read_bytes, "dram_read": dram_read, "time": time_s * 1e9,
            "workers": counts.kernels[0].programs,
            "kernels": " | ".join(f"{k.name}×{k.programs}" for k in counts.kernels),
            "read_bytes": [dict(k.read_bytes) for k in counts.kernels]}


def measured_cases(kernels_csv: str) -> list[dict]:
    """Per case of validate_persistent.CASES with profiled kernels: the counters summed over its KEEP kernels, the
    grid of its first KEEP kernel, and the rest apart."""
    with open(kernels_csv, newline="") as f:
        ks = list(csv.DictReader(f))
    out = []
    for c in CASES:
        r = {k: str(v) for k, v in zip(COLS, c)}
        mine = [k for k in ks if int(k["id"]) == c[0]]
        if not mine:
            continue
        keep = [k for k in mine if KEEP.search(k["kernel"])]
        rest = [k for k in mine if not KEEP.search(k["kernel"])]
        for m in SUMMED:
            r[m] = sum(_num(k[m]) for k in keep) if keep else float("nan")
        r["grid_meas"] = _grid_size(keep[0]["grid"]) if keep else None
        r["kernels"] = " | ".join(k["kernel"].split("(")[0].split("<")[0][:60] for k in keep)
        r["left_out"] = " | ".join(k["kernel"].split("(")[0][-60:] for k in rest)
        r["left_out_time_ns"] = sum(_num(k["gpu__time_duration.sum"]) for k in rest)
        out.append(r)
    return out


def _grid_size(s: str) -> int | None:
    """ncu's "(264, 1, 1)" → 264."""
    try:
        return math.prod(int(x) for x in str(s).strip("() ").split(",") if x.strip())
    except ValueError:
        return None


def err(pred, meas) -> float:
    if pred is None or meas is None or not meas or math.isnan(meas):
        return float("nan")
    return pred / meas - 1


def summarize(rows: list[dict], key: str) -> dict:
    vals = [(r[key], r["id"]) for r in rows if not math.isnan(r[key])]
    if not vals:
        return {"n": 0}
    worst = max(vals, key=lambda v: abs(v[0]))
    return {"n": len(vals), "median_abs": statistics.median(abs(v) for v, _ in vals),
            "median": statistics.median(v for v, _ in vals), "worst": worst[0], "worst_id": worst[1]}


def hurt(rows: list[dict]) -> list[tuple[int, str, float]]:
    """(id, quantity, error) of every run whose |error| exceeds its target (DRAM: counted rows only)."""
    out = []
    for r in rows:
        for q, tgt in TARGETS.items():
            e = r[f"{q}_err"]
            if q == "dram_read" and not r["dram_counted"]:
                continue
            if not math.isnan(e) and abs(e) > tgt:
                out.append((r["id"], q, e))
    return out


def _log_facts(kernels_csv: str) -> dict:
    """date, device and case-list hash from the log.txt beside kernels.csv (validate_persistent.py writes it)."""
    facts: dict = {}
    path = os.path.join(os.path.dirname(os.path.abspath(kernels_csv)), "log.txt")
    if not os.path.exists(path):
        return facts
    with open(path, errors="replace") as f:
        for ln in f:
            if ln.startswith("date: "):
                facts["date"] = ln.split(": ", 1)[1].strip()[:10]
            elif ln.startswith("device: "):
                facts["device"] = ln.split(": ", 1)[1].strip()
            elif ln.startswith("case list "):
                facts["case_list"] = ln.split()[-1].strip()
    return facts


def _cases_of(source: str):
    """The CASES literal of a version of validate_persistent.py (None if it has none)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CASES" for t in node.targets):
            return [tuple(c) for c in ast.literal_eval(node.value)]
    return None


def case_list_commit() -> tuple[str, str]:
    """(short hash, ISO commit date) of the first commit of validate_persistent.py whose CASES equal today's."""
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, check=True).stdout
    try:
        for h in git("log", "--reverse", "--format=%H", "--", CASES_FILE).split():
            if _cases_of(git("show", f"{h}:{CASES_FILE}")) == [tuple(c) for c in CASES]:
                return h[:7], git("show", "-s", "--format=%cI", h).strip()
    except (subprocess.CalledProcessError, OSError, SyntaxError, ValueError):
        pass
    return "uncommitted", ""


def profile_of(arg: str, device: str | None) -> str:
    if arg != "auto":
        return arg
    return "h200" if device and "H200" in device else "h100"


def _row(r: dict, pr: dict, hw, label: str) -> dict:
    f, nbytes = case_flops_bytes({k: (int(r[k]) if k in ("B", "Hq", "Hkv", "Nq", "Nkv", "d", "causal") else r[k])
                                  for k in COLS})
    roof_ns = max(f / hw.tensor_flops("bf16"), nbytes / hw.hbm_bandwidth_bytes_per_s) * 1e9
    qkv = qkv_bytes(r)
    row = {"id": int(r["id"]), "impl": r["impl"], "order": r["order"],
           "shape": f"B{r['B']} H{r['Hq']}/{r['Hkv']} Nq{r['Nq']} Nkv{r['Nkv']} d{r['d']}"
                    f"{' causal' if int(r['causal']) else ''}",
           "workers_pred": pr["workers"], "grid_meas": r.get("grid_meas"),
           "qkv_bytes": qkv, "dram_counted": dram_counted(pr["dram_read"], qkv), "roofline_ns": roof_ns,
           "kernels_pred": pr["kernels"], "kernels_meas": r.get("kernels", ""), "left_out": r.get("left_out", ""),
           "left_out_time_ns": r.get("left_out_time_ns", 0.0), "label": label}
    for q, m in QUANTITIES:
        row[f"{q}_meas"], row[f"{q}_pred"] = _num(r[m]), pr[q]
        row[f"{q}_err"] = err(pr[q], _num(r[m]))
    row["roofline_time_err"] = err(roof_ns, row["time_meas"])
    return row


def _pct(x: float, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.{digits}f}%"


def render(rows: list[dict], summary: dict, hw_name: str, profile: str, label: str, notes: list[str]) -> str:
    md = [f"# Persistent kernels on the {hw_name}: {label}", "",
          f"Profile {profile}; {len(rows)} cases; error = predicted / measured − 1 (ncu, sums over each case's own "
          f"kernels). DRAM read is scored only where iosim predicts more than {DRAM_RULE} × (Q+K+V bytes) (rule fixed "
          "before the measurement, on the prediction). Roofline = max(FLOPs / peak tensor rate, (Q+K+V+O) bytes / DRAM "
          "bandwidth) of the profile, no efficiency constant. Targets (issue 21): SM read median ≤ 0.5%, DRAM read "
          "median ≤ 10%, time median ≤ 10%.", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    names = {"sm_read": "SM read bytes", "dram_read": f"DRAM read (pred > {DRAM_RULE}×QKV)",
             "dram_read_all": "DRAM read, every run (not the target's rule)", "time": "time",
             "roofline_time": "roofline time (baseline)"}
    for impl in IMPLS:
        mine = [r for r in rows if r["impl"] == impl]
        if not mine:
            continue
        s = summary[impl]
        md += [f"## {impl} — {label}", "",
               "| quantity | n | median abs | median signed | worst signed (id) | target | met |", "|" + "---|" * 7]
        for q in ("sm_read", "dram_read", "dram_read_all", "time", "roofline_time"):
            if q not in s:
                continue
            x = s[q]
            if not x.get("n"):
                md.append(f"| {names[q]} | 0 | — | — | — | {_target(q)} | — |")
                continue
            met = "—" if q not in TARGETS else ("yes" if x["median_abs"] <= TARGETS[q] else "NO")
            dig = 2 if q == "sm_read" else 1
            md.append(f"| {names[q]} | {x['n']} | {100 * x['median_abs']:.{dig}f}% | {_pct(x['median'], dig)} | "
                      f"{_pct(x['worst'], dig)} ({x['worst_id']}) | {_target(q)} | {met} |")
        bad = hurt(mine)
        md += ["", "Runs that miss the target (|error| above it): " +
               ("none." if not bad else "; ".join(f"{i} {names[q]} {_pct(e, 2)}" for i, q, e in bad) + "."), ""]
        md += ["| id | shape | order | workers pred / grid meas | SM read err | DRAM read err | DRAM scored | time err | "
               "roofline err | measured µs | left out | rows |", "|" + "---|" * 12]
        for r in mine:
            md.append(f"| {r['id']} | {r['shape']} | {r['order']} | {r['workers_pred']} / {r['grid_meas']} | "
                      f"{_pct(r['sm_read_err'], 2)} | {_pct(r['dram_read_err'])} | {'yes' if r['dram_counted'] else 'no'} | "
                      f"{_pct(r['time_err'])} | {_pct(r['roofline_time_err'])} | {r['time_meas'] / 1e3:.1f} | "
                      f"{r['left_out'] or '—'} | {'fitted' if r['label'].startswith('fitted') else 'held out'} |")
        md.append("")
    return "\n".join(md) + "\n"


def _target(q: str) -> str:
    return f"≤ {100 * TARGETS[q]:g}%" if q in TARGETS else "—"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measured", help="kernels.csv of validate_persistent.py (one row per profiled kernel)")
    ap.add_argument("--profile", default="auto", help="hardware profile (auto: h200 if log.txt names an H200, else h100)")
    ap.add_argument("--out", default=None, help="default reports/validation/<profile>/persistent")
    ap.add_argument("--date", default=None, help="measurement date (default: log.txt's)")
    ap.add_argument("--no-l2", action="store_true", help="no L2 model: no DRAM prediction, time from compulsory traffic")
    ap.add_argument("--jobs", type=int, default=1, help="cases predicted in parallel processes")
    ap.add_argument("--label", default=None, help="row label (default: held out (measured …, case list committed …)); "
                    "say 'fitted' for a set a model choice was made on")
    ap.add_argument("--stem", default="held", help="output file stem: STEM.csv, STEM.md, STEM.json")
    a = ap.parse_args(argv)
    facts = _log_facts(a.measured)
    profile = profile_of(a.profile, facts.get("device"))
    hw = load_hardware(profile)
    date = a.date or facts.get("date", "unknown date")
    commit, commit_date = case_list_commit()
    label = a.label or f"held out (measured {date}, case list committed {commit})"
    notes = []
    if facts.get("case_list") and facts["case_list"] != case_list_hash():
        notes.append(f"WARNING: log.txt's case list {facts['case_list']} is not today's {case_list_hash()}: the "
                     "measured cases are not the committed ones")
    if commit_date and a.date is None and "date" in facts and commit_date[:10] > date[:10]:
        notes.append(f"WARNING: case list commit {commit} ({commit_date[:10]}) is after the measurement ({date})")
    if facts.get("device"):
        notes.append(f"measured on: {facts['device']}")
    meas = measured_cases(a.measured)
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            preds = list(ex.map(predict_case, meas, [profile] * len(meas), [not a.no_l2] * len(meas)))
    else:
        preds = [predict_case(r, hw, l2=not a.no_l2) for r in meas]
    rows = [_row(r, pr, hw, label) for r, pr in zip(meas, preds)]
    for r in rows:
        if r["grid_meas"] is not None and r["grid_meas"] != r["workers_pred"]:
            notes.append(f"case {r['id']}: measured grid {r['grid_meas']} ≠ predicted workers {r['workers_pred']}")
    summary = {}
    for impl in IMPLS:
        mine = [r for r in rows if r["impl"] == impl]
        counted = [r for r in mine if r["dram_counted"]]
        summary[impl] = {"sm_read": summarize(mine, "sm_read_err"), "dram_read": summarize(counted, "dram_read_err"),
                         "dram_read_all": summarize([r for r in mine if r["dram_read_err"] == r["dram_read_err"]],
                                                    "dram_read_err"),
                         "time": summarize(mine, "time_err"), "roofline_time": summarize(mine, "roofline_time_err"),
                         "hurt": [{"id": i, "quantity": q, "error": e} for i, q, e in hurt(mine)]}
    out = a.out or os.path.join("reports", "validation", profile, "persistent")
    os.makedirs(out, exist_ok=True)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(os.path.join(out, a.stem + ".csv"), buf.getvalue())
    md = render(rows, summary, hw.name, profile, label, notes)
    atomic_write_text(os.path.join(out, a.stem + ".md"), md)
    atomic_write_text(os.path.join(out, a.stem + ".json"), json.dumps(
        {"label": label, "date": date, "case_list_commit": commit, "case_list_hash": case_list_hash(),
         "profile": profile, "l2": not a.no_l2, "dram_rule": DRAM_RULE, "targets": TARGETS, "notes": notes,
         "summary": summary, "rows": rows}, indent=1, default=float))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
