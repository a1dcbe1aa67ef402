"""iosim's predictions beside the decode/backward measurements of validate_decode_bwd.py (issue 20).

    .venv/bin/python benchmarks/gpu/compare_decode_bwd.py DIR/kernels.csv --label fit|held [--profile h200] \
        [--efficiency-from reports/validation/h200/decode_bwd/fit.json] --out reports/validation/h200/decode_bwd

Each case is predicted with ``iosim.pipeline.predict`` (what ``iosim predict`` runs): ``sdpa_dec`` with the ``fa2``
preset (forward: PyTorch's split heuristic, GQA packing, combine), ``sdpa_bwd`` with ``fa2`` and direction "bwd",
``triton_dec`` / ``triton_bwd`` with the ``iosim-triton`` preset. Error = predicted / measured − 1, for SM read bytes
(``l1tex__m_xbar2l1tex_read_bytes``), DRAM read bytes and time (sum over the case's kernels, ncu).

Baseline beside the model (the simplest one, same data): a roofline with one constant efficiency per (pass,
implementation), t = max(FLOPs / peak, compulsory bytes / DRAM bandwidth) / eff, eff = the median of
roofline / measured over the *fit* set (with --label fit it is chosen on the very rows it is scored on; with
--efficiency-from, the fit set's value is reused on the held-out rows).

Writes ``<label>.csv`` (per case) and ``<label>.md`` + ``<label>.json`` (per pass and implementation: count, median
|error| and the worst signed error with its case, for each quantity; the model and the baseline), atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from iosim.atomic import atomic_write_text  # noqa: E402
from iosim.hwprofile import load_hardware  # noqa: E402
from iosim.pipeline import predict  # noqa: E402
from iosim.problem import Problem  # noqa: E402

PRESET = {"sdpa_dec": ("fa2", "fwd"), "sdpa_bwd": ("fa2", "bwd"),
          "triton_dec": ("iosim-triton", "fwd"), "triton_bwd": ("iosim-triton", "bwd")}
QUANTITIES = (("sm_read", "l1tex__m_xbar2l1tex_read_bytes.sum"), ("dram_read", "dram__bytes_read.sum"),
              ("time", "gpu__time_duration.sum"))


def _num(s) -> float:
    try:
        return float(str(s).replace(",", ""))
    except (TypeError, ValueError):
        return float("nan")


def problem_of(r: dict) -> Problem:
    return Problem(int(r["B"]), int(r["Hq"]), int(r["Hkv"]), int(r["Nq"]), int(r["Nkv"]), int(r["d"]), "bf16",
                   bool(int(r["causal"])))


def compulsory(r: dict) -> tuple[float, float]:
    """(FLOPs, bytes): matmul FLOPs 4·B·H·Nq·Nkv·d (×2.5 backward, ×½ causal square) and each input/output once."""
    B, H, Hk, Nq, Nk, d = (int(r[k]) for k in ("B", "Hq", "Hkv", "Nq", "Nkv", "d"))
    bwd = r["impl"].endswith("bwd")
    f = 4.0 * B * H * Nq * Nk * d * (2.5 if bwd else 1.0) * (0.5 if int(r["causal"]) else 1.0)
    q, kv = B * H * Nq * d * 2, B * Hk * Nk * d * 2
    nbytes = (q * 4 + kv * 4) if bwd else (q * 2 + kv * 2)  # bwd: Q, O, dO, dQ + K, V, dK, dV
    return f, nbytes


KEEP = re.compile(r"flash_|reduce_kernel|_decode_kernel|_combine_kernel|_bwd_|_persistent|_streamk")
"""The attention implementation's own launches: FA2's kernels (flash_*), the ATen sums FA2's mha_bwd calls for GQA
(reduce_kernel), iosim's Triton kernels. Left out and reported apart: PyTorch's layout copies around SDPA's backward
(two at::direct_copy elementwise kernels of Q's size per call) — rule fixed before the errors were computed."""


def measured_cases(kernels_csv: str) -> list[dict]:
    """Per case (validate_decode_bwd.CASES): sums of the counters over its KEEP kernels, and the rest apart."""
    from validate_decode_bwd import CASES, COLS, SUMMED
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
            r[m] = sum(_num(k[m]) for k in keep)
        r["kernels"] = " | ".join(k["kernel"].split("<")[0].split("::")[-1][:40] for k in keep)
        r["left_out"] = " | ".join(k["kernel"].split("(")[0][-60:] for k in rest)
        r["left_out_time_ns"] = sum(_num(k["gpu__time_duration.sum"]) for k in rest)
        out.append(r)
    return out


def predict_case(r: dict, hw) -> dict:
    kernel, direction = PRESET[r["impl"]]
    if r["impl"] == "triton_dec":
        # validate_decode_bwd.py launches attention(..., decode=True): the split-KV path even where the launcher's
        # own rule (use_decode: G·Nq ≤ 64) would not take it (case 824, G·Nq = 128). The first comparison of the
        # held set (2026-12-06) predicted the launcher's default path there; this mirrors the launch.
        import iosim.triton_kernels.schedule as ts
        saved, ts.use_decode = ts.use_decode, (lambda *a, **k: True)
        try:
            p = predict(hw, problem_of(r), None, kernel=kernel, direction=direction)
        finally:
            ts.use_decode = saved
    else:
        p = predict(hw, problem_of(r), None, kernel=kernel, direction=direction)
    return {"sm_read": p.counts.sm_read_bytes, "dram_read": p.dram_read_bytes, "time": p.time_s * 1e9,
            "kernels": " | ".join(f"{k.name}×{k.programs}" for k in p.counts.kernels)}


def err(pred: float, meas: float) -> float:
    return pred / meas - 1 if meas and not math.isnan(meas) else float("nan")


def summarize(rows: list[dict], key: str) -> dict:
    vals = [(r[key], r["id"]) for r in rows if not math.isnan(r[key])]
    if not vals:
        return {"n": 0}
    worst = max(vals, key=lambda v: abs(v[0]))
    return {"n": len(vals), "median_abs": statistics.median(abs(v) for v, _ in vals), "worst": worst[0],
            "worst_id": worst[1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measured", help="kernels.csv of validate_decode_bwd.py (one row per profiled kernel)")
    ap.add_argument("--label", required=True, choices=["fit", "held"])
    ap.add_argument("--profile", default="h200")
    ap.add_argument("--efficiency-from", default=None, help="fit.json whose baseline efficiencies to reuse")
    ap.add_argument("--out", default="reports/validation/h200/decode_bwd")
    a = ap.parse_args(argv)
    hw = load_hardware(a.profile)
    meas = measured_cases(a.measured)
    rows = []
    for r in meas:
        pr = predict_case(r, hw)
        f, nbytes = compulsory(r)
        roof_ns = max(f / hw.tensor_flops("bf16"), nbytes / hw.hbm_bandwidth_bytes_per_s) * 1e9
        row = {"id": int(r["id"]), "impl": r["impl"], "pass": "bwd" if r["impl"].endswith("bwd") else "fwd",
               "shape": f"B{r['B']} H{r['Hq']}/{r['Hkv']} Nq{r['Nq']} Nkv{r['Nkv']} d{r['d']}"
                        f"{' causal' if int(r['causal']) else ''}",
               "roofline_ns": roof_ns, "kernels_pred": pr["kernels"], "kernels_meas": r["kernels"]}
        for q, m in QUANTITIES:
            row[f"{q}_meas"], row[f"{q}_pred"] = _num(r[m]), pr[q]
            row[f"{q}_err"] = err(pr[q], _num(r[m])) if pr[q] is not None else float("nan")
        rows.append(row)
    groups = sorted({(r["pass"], r["impl"]) for r in rows})
    if a.efficiency_from:
        with open(a.efficiency_from) as f:
            eff = {tuple(k.split("/")): v for k, v in json.load(f)["baseline_efficiency"].items()}
    else:
        eff = {g: statistics.median(r["roofline_ns"] / r["time_meas"] for r in rows if (r["pass"], r["impl"]) == g)
               for g in groups}
    for r in rows:
        e = eff.get((r["pass"], r["impl"]))
        r["baseline_time_err"] = err(r["roofline_ns"] / e, r["time_meas"]) if e else float("nan")
    summary = {f"{p}/{i}": {q: summarize([r for r in rows if (r["pass"], r["impl"]) == (p, i)], f"{q}_err")
                            for q in ("sm_read", "dram_read", "time", "baseline_time")} for p, i in groups}
    os.makedirs(a.out, exist_ok=True)
    cols = list(rows[0]) if rows else []
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(os.path.join(a.out, f"{a.label}.csv"), buf.getvalue())
    kind = "fitted (in-sample: the time terms were chosen on these runs)" if a.label == "fit" else \
        "held out (measured after every model choice)"
    md = [f"# Decode and backward on the {hw.name}: {a.label} set — {kind}", "",
          f"Profile {a.profile}; {len(rows)} cases; error = predicted / measured − 1; baseline = roofline ÷ one "
          "constant efficiency per pass and implementation" +
          (" (chosen on these rows)" if not a.efficiency_from else f" (from {a.efficiency_from})") + ".", "",
          "| pass | impl | n | SM read median | SM read worst | DRAM read median | DRAM read worst | time median | "
          "time worst | baseline time median | baseline worst |", "|" + "---|" * 11]

    def cell(s, k):
        return "—" if not s.get("n") else (f"{100 * s['median_abs']:.2f}%" if k == "m" else
                                           f"{100 * s['worst']:+.1f}% ({s['worst_id']})")
    for (p, i) in groups:
        s = summary[f"{p}/{i}"]
        md.append(f"| {p} | {i} | {s['time'].get('n', 0)} | " + " | ".join(
            cell(s[q], k) for q in ("sm_read", "dram_read", "time", "baseline_time") for k in ("m", "w")) + " |")
    md += ["", "| id | impl | shape | SM read err | DRAM read err | time err | baseline err | measured µs |",
           "|" + "---|" * 8]
    for r in rows:
        md.append(f"| {r['id']} | {r['impl']} | {r['shape']} | {100 * r['sm_read_err']:+.2f}% | "
                  f"{100 * r['dram_read_err']:+.1f}% | {100 * r['time_err']:+.1f}% | {100 * r['baseline_time_err']:+.1f}% "
                  f"| {r['time_meas'] / 1e3:.1f} |")
    atomic_write_text(os.path.join(a.out, f"{a.label}.md"), "\n".join(md) + "\n")
    atomic_write_text(os.path.join(a.out, f"{a.label}.json"), json.dumps(
        {"label": a.label, "profile": a.profile, "summary": summary,
         "baseline_efficiency": {f"{p}/{i}": eff[(p, i)] for p, i in groups if (p, i) in eff},
         "rows": rows}, indent=1, default=float))
    print("\n".join(md[:8 + len(groups)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
