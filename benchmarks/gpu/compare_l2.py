"""Predicted DRAM read bytes beside the measurements of validate_l2.py, for one or more hardware profiles (issue 9).

    .venv/bin/python benchmarks/gpu/compare_l2.py path/to/measured.csv \
        --profile uncalibrated=h100 --profile calibrated=reports/calibration/h100/h100_calibrated.toml [--out DIR]

Each case is predicted with ``iosim.pipeline.predict`` — the entry point ``iosim predict`` uses — with the matching
kernel preset (``fa2`` for SDPA flash, ``flex`` for FlexAttention; Flex block masks rebuilt from the case's density
and seed with the same ``validate_l2.mask_tables`` the GPU run used) and the profile's L2. A profile is NAME=SPEC,
SPEC a built-in name (h100, h200) or a TOML path (``iosim.hwprofile.load_hardware``); without --profile the
built-in profile of the measured GPU is used (name "uncalibrated").

Writes (atomically) ``compare_l2.csv`` (per case: measured and predicted DRAM reads and the error per profile,
measured DRAM ÷ (Q+K+V), SM reads) and ``compare_l2.md`` (the summary: for the runs whose measured DRAM reads exceed
1.15 × (Q+K+V) — "L2-bound" — and for the rest: count, median |error|, worst signed error and its case; overall and per
implementation). Error = predicted / measured − 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from iosim.atomic import atomic_write_text  # noqa: E402
from iosim.hwprofile import load_hardware  # noqa: E402
from iosim.pipeline import predict  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402

L2_BOUND = 1.15
KERNEL = {"sdpa": "fa2", "flex": "flex"}
INT_COLS = ("id", "B", "Hq", "Hkv", "N", "d", "causal", "seed")


def _num(s) -> float:
    try:
        return float(str(s).replace(",", ""))
    except (TypeError, ValueError):
        return float("nan")


def read_measured(path: str) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            c = {k: int(float(r[k])) for k in INT_COLS}
            c["impl"] = r["impl"]
            c["density"] = _num(r.get("density", 0)) or 0.0
            c["gpu"] = r.get("gpu", "")
            c["error"] = r.get("error", "")
            c["measured_dram_read"] = _num(r.get("dram__bytes_read.sum"))
            c["measured_dram_write"] = _num(r.get("dram__bytes_write.sum"))
            c["measured_sm_read"] = _num(r.get("l1tex__m_xbar2l1tex_read_bytes.sum"))
            c["measured_time_ms"] = _num(r.get("gpu__time_duration.sum")) / 1e6
            rows.append(c)
    return rows


def qkv_bytes(c: dict) -> int:
    return 2 * c["B"] * c["N"] * c["d"] * (c["Hq"] + 2 * c["Hkv"])


def default_profile(rows: list[dict]) -> str:
    gpu = next((r["gpu"] for r in rows if r["gpu"]), "").upper()
    return "h200" if "H200" in gpu else "h100"


def predict_case(args) -> dict:
    """Predictions of one case for every profile: {name: (dram_read, sm_read, l2_hit_rate, seconds)}."""
    c, profiles, stride = args[:3]
    from validate_l2 import mask_tables
    p = Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", bool(c["causal"]))
    kernel = KERNEL[c["impl"]]
    mask = mask_tables(c) if kernel == "flex" else None
    out = {}
    for name, spec in profiles:
        hw = load_hardware(spec)
        t = time.perf_counter()
        pr = predict(hw, p, KernelConfig(), kernel=kernel, block_mask=mask, l2_stride=stride)
        out[name] = (pr.dram_read_bytes, pr.counts.sm_read_bytes, pr.l2_hit_rate, time.perf_counter() - t)
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}%"


def describe(c: dict) -> str:
    extra = (" causal" if c["causal"] else "") + (f" sparse {c['density']}" if c["density"] else "")
    return f"{c['id']} ({c['impl']} B{c['B']} H{c['Hq']}/{c['Hkv']} N{c['N']} d{c['d']}{extra})"


def summarize(rows: list[dict], names: list[str]) -> str:
    lines = ["| profile | implementation | runs | n | median abs err | worst err | worst case |",
             "|---|---|---|---|---|---|---|"]
    impls = [("all", None)] + [(i, i) for i in sorted({r["impl"] for r in rows})]
    for name in names:
        for label, impl in impls:
            for glabel, bound in ((f"measured DRAM > {L2_BOUND} × QKV", 1), ("the rest", 0)):
                sel = [r for r in rows if r["l2_bound"] == bound and (impl is None or r["impl"] == impl)
                       and not math.isnan(r[f"err_{name}"])]
                if not sel:
                    lines.append(f"| {name} | {label} | {glabel} | 0 | - | - | - |")
                    continue
                errs = [r[f"err_{name}"] for r in sel]
                worst = max(sel, key=lambda r: abs(r[f"err_{name}"]))
                which = describe(worst)
                lines.append(f"| {name} | {label} | {glabel} | {len(sel)} | "
                             f"{100 * statistics.median(abs(e) for e in errs):.1f}% | "
                             f"{_pct(worst[f'err_{name}'])} | {which} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measured", help="measured.csv written by validate_l2.py")
    ap.add_argument("--profile", action="append", default=[],
                    help="NAME=SPEC (SPEC: built-in profile name or TOML path); repeatable")
    ap.add_argument("--out", default=None, help="output folder (default: the measured.csv folder)")
    ap.add_argument("--cases", default=None, help="comma-separated case ids (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="cases predicted in parallel (processes)")
    ap.add_argument("--l2-exact", action="store_true", help="simulate every L2 set (slower)")
    a = ap.parse_args(argv)
    rows = read_measured(a.measured)
    if a.cases:
        keep = {int(x) for x in a.cases.split(",")}
        rows = [r for r in rows if r["id"] in keep]
    profiles = []
    for spec in a.profile or [f"uncalibrated={default_profile(rows)}"]:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"--profile wants NAME=SPEC, got {spec!r}")
        load_hardware(path)  # fail early on a bad profile
        profiles.append((name, path))
    names = [n for n, _ in profiles]
    todo = [r for r in rows if not math.isnan(r["measured_dram_read"]) and r["impl"] in KERNEL]
    stride = 1 if a.l2_exact else None
    jobs = [(r, profiles, stride) for r in todo]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            preds = list(ex.map(predict_case, jobs))
    else:
        preds = []
        for j in jobs:
            preds.append(predict_case(j))
            r = j[0]
            print(f"case {r['id']:>3} {r['impl']:<5} N{r['N']} d{r['d']} c{r['causal']}: " + ", ".join(
                f"{n} {_pct(preds[-1][n][0] / r['measured_dram_read'] - 1)} [{preds[-1][n][3]:.1f}s]" for n in names),
                flush=True)
    pred_of = {r["id"]: p for r, p in zip(todo, preds)}
    out_rows = []
    for r in rows:
        q = qkv_bytes(r)
        m = r["measured_dram_read"]
        d = {k: r[k] for k in ("id", "impl", "B", "Hq", "Hkv", "N", "d", "causal", "density", "seed", "gpu")}
        d.update(qkv_bytes=q, measured_dram_read=m, measured_over_qkv=m / q if not math.isnan(m) else float("nan"),
                 l2_bound=int(not math.isnan(m) and m > L2_BOUND * q), measured_sm_read=r["measured_sm_read"],
                 measured_time_ms=r["measured_time_ms"], error=r["error"])
        pr = pred_of.get(r["id"])
        for n in names:
            if pr is None:
                d.update({f"pred_dram_read_{n}": float("nan"), f"err_{n}": float("nan"),
                          f"pred_over_qkv_{n}": float("nan"), f"l2_hit_{n}": float("nan")})
                continue
            dr, sm, hit, _ = pr[n]
            d.update({f"pred_dram_read_{n}": dr, f"err_{n}": dr / m - 1, f"pred_over_qkv_{n}": dr / q,
                      f"l2_hit_{n}": hit})
            d["predicted_sm_read"] = sm
            d["sm_read_err"] = sm / r["measured_sm_read"] - 1 if r["measured_sm_read"] else float("nan")
        out_rows.append(d)
    cols = list(dict.fromkeys(k for d in out_rows for k in d))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(out_rows)
    out = a.out or os.path.dirname(os.path.abspath(a.measured))
    atomic_write_text(os.path.join(out, "compare_l2.csv"), buf.getvalue())
    gpu = sorted({r["gpu"] for r in rows if r["gpu"]})
    md = [f"# DRAM read bytes: measured (ncu dram__bytes_read.sum) vs iosim", "",
          f"GPU: {', '.join(gpu) or 'unknown'}; measured: `{a.measured}`; profiles: "
          + ", ".join(f"{n} = `{p}`" for n, p in profiles) + "; error = predicted / measured − 1.", "",
          summarize(out_rows, names), "", "## Per case", "",
          "| id | impl | B | Hq/Hkv | N | d | causal | density | meas/QKV | "
          + " | ".join(f"{n} pred/QKV | {n} err" for n in names) + " |",
          "|" + "---|" * (9 + 2 * len(names))]
    for d in out_rows:
        md.append(f"| {d['id']} | {d['impl']} | {d['B']} | {d['Hq']}/{d['Hkv']} | {d['N']} | {d['d']} | {d['causal']} | "
                  f"{d['density'] or '-'} | {d['measured_over_qkv']:.2f}{' *' if d['l2_bound'] else ''} | "
                  + " | ".join(f"{d[f'pred_over_qkv_{n}']:.2f} | {_pct(d[f'err_{n}'])}" for n in names) + " |")
    md += ["", f"`*` = L2-bound (measured DRAM reads > {L2_BOUND} × Q+K+V)."]
    missing = [d for d in out_rows if math.isnan(d["measured_dram_read"])]
    if missing:
        md.append("Not measured: " + ", ".join(f"{d['id']} ({d['error'] or 'no row'})" for d in missing) + ".")
    atomic_write_text(os.path.join(out, "compare_l2.md"), "\n".join(md) + "\n")
    print(summarize(out_rows, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
