"""The L2 set-index hash ``xor`` beside ``xor_low`` (issue 22) on the committed measurements, before any profile changes.

    .venv/bin/python benchmarks/l2_hash_compare.py [--jobs 2] [--max-n 32768] [--only attention|masks|curve]
        [--out benchmarks/results/l2_hash_compare.json]

* attention: every run of ``reports/validation/*/l2_validation*/compare_l2.csv`` predicted again as
  ``benchmarks/check_validation_predictions.py`` does (``compare_l2.predict_case``: the matching preset, Flex masks
  rebuilt from density and seed, the built-in profile of the measured GPU), once per hash, the profile's L2 with only
  ``hash`` overridden (``L2Geometry.from_hardware(hw, hash=...)``, ``predict(..., l2_geometry=...)``); error =
  predicted / measured DRAM reads − 1 (the csv's ``measured_dram_read``); per set: median |error| and the worst.
* curve: the H100 calibration's ``sector256`` capacity sweep (one 32-B sector every 256 B, reports/calibration/h100
  l2_curves.csv), simulated exactly (stride 1) as ``iosim.l2fit.curves`` does, with the h100 profile's L2 per hash.
* masks: the held-out mask / window / varlen cases of ``reports/validation/h100/masks/masks.csv`` (measured column
  ``dram_read_meas``), predicted with ``benchmarks/gpu/compare_masks.py``'s ``predict_case`` on the h100 profile.

Both hashes run through the same code; the set-sampling filter of ``iosim.memory.hierarchy._Sink.sampled`` (which ranges
touch a sampled line) is replaced here by ``iosim.memory.l2.first_sampled``, which is what ``xor_low`` needs (for
``xor`` it gives the same ranges as the committed filter). Results are written (atomically) after every case, so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, os.path.join(HERE, "gpu")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

from iosim.atomic import atomic_write_text  # noqa: E402

HASHES = ("xor", "xor_low")


def _patch(hash_name: str) -> None:
    """Route every ``predict`` of the comparison scripts through the profile's L2 with ``hash`` overridden, and the
    hierarchy's range filter through ``first_sampled``."""
    import compare_l2
    import compare_masks

    from iosim.memory import hierarchy
    from iosim.memory.l2 import L2Geometry, first_sampled
    from iosim.pipeline import predict

    def pred(hw, *a, **kw):
        return predict(hw, *a, l2_geometry=L2Geometry.from_hardware(hw, hash=hash_name), **kw)

    compare_l2.predict = compare_masks.predict = pred

    def sampled(self, addr, nbytes):
        k, lb = self.stride, self.geom.line_bytes
        if k == 1:
            return np.arange(len(addr))
        if self.aligned:
            self.aligned = hierarchy.aligned(hierarchy.RunTrace(addr, nbytes, None, None, None), self.geom, k)
        return np.flatnonzero(first_sampled(addr // lb, self.geom, k) * lb < addr + nbytes)

    hierarchy._Sink.sampled = sampled


def attention_runs(max_n: int | None) -> list[dict]:
    from compare_l2 import INT_COLS
    runs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "reports/validation/*/l2_validation*/compare_l2.csv"))):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                meas = float(r.get("measured_dram_read") or "nan")
                if math.isnan(meas) or (max_n and int(float(r["N"])) > max_n):
                    continue
                c = {k: int(float(r[k])) for k in INT_COLS}
                c.update(impl=r["impl"], density=float(r["density"] or 0), gpu=r["gpu"])
                runs.append({"kind": "attention", "set": os.path.relpath(os.path.dirname(path), ROOT), "case": c,
                             "measured": meas, "committed": float(r.get("pred_dram_read_calibrated") or "nan"),
                             "profile": "h200" if "H200" in r["gpu"].upper() else "h100"})
    return runs


def mask_runs() -> list[dict]:
    import validate_masks as vm
    meas = {}
    with open(os.path.join(ROOT, "reports/validation/h100/masks/masks.csv"), newline="") as f:
        for r in csv.DictReader(f):
            meas[int(r["id"])] = (float(r["dram_read_meas"]), float(r["dram_read_pred"]))
    return [{"kind": "masks", "set": "reports/validation/h100/masks", "case": c, "measured": meas[c["id"]][0],
             "committed": meas[c["id"]][1], "profile": "h100"}
            for c in map(vm.case_dict, vm.CASES) if c["id"] in meas]


def sector256_curve() -> list[dict]:
    """The sector256 rows of ``iosim.l2fit.curves`` (re-miss fraction per pass) for both hashes, h100 profile."""
    from iosim import l2fit
    from iosim.hwprofile import load_hardware
    from iosim.memory.l2 import L2Geometry
    hw = load_hardware("h100")
    rows, meta = l2fit.load(os.path.join(ROOT, "reports/calibration/h100"))
    rows = [r for r in rows if r.get("layout") == "sector256"]
    geoms = {h: L2Geometry.from_hardware(hw, hash=h) for h in HASHES}
    return l2fit.curves(rows, meta, geoms, geoms["xor"].dram_fetch_bytes or geoms["xor"].sector_bytes)


def work(args) -> dict:
    run, hash_name = args
    _patch(hash_name)
    from iosim.hwprofile import load_hardware
    t = time.perf_counter()
    if run["kind"] == "attention":
        from compare_l2 import predict_case
        pred = predict_case((run["case"], [("p", run["profile"])], None))["p"][0]
    else:
        from compare_masks import predict_case
        pred = predict_case(run["case"], load_hardware(run["profile"])).dram_read_bytes
    return {**run, "hash": hash_name, "pred": pred, "err": pred / run["measured"] - 1,
            "seconds": time.perf_counter() - t}


def key(r: dict) -> str:
    return f"{r['set']}#{r['case']['id']}#{r['hash']}"


def summary(done: list[dict]) -> list[str]:
    out = ["| set | n | median abs err, xor | worst, xor | median abs err, xor_low | worst, xor_low | Δ median (pp) |",
           "|---|---|---|---|---|---|---|"]
    for s in sorted({r["set"] for r in done if r["kind"] == "attention"}):
        by = {h: {r["case"]["id"]: r["err"] for r in done if r["set"] == s and r["hash"] == h} for h in HASHES}
        ids = sorted(set(by["xor"]) & set(by["xor_low"]))
        if not ids:
            continue
        cells = []
        med = {}
        for h in HASHES:
            e = [by[h][i] for i in ids]
            med[h] = statistics.median(abs(x) for x in e)
            w = max(e, key=abs)
            cells += [f"{100 * med[h]:.2f}%", f"{100 * w:+.1f}%"]
        out.append(f"| {s} | {len(ids)} | {' | '.join(cells)} | {100 * (med['xor_low'] - med['xor']):+.2f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-n", type=int, default=None, help="skip attention runs with more tokens")
    ap.add_argument("--only", choices=("attention", "masks", "curve"), default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "l2_hash_compare.json"))
    a = ap.parse_args(argv)
    if a.only in (None, "curve"):
        cr = sector256_curve()
        atomic_write_text(os.path.splitext(a.out)[0] + "_curve.json", json.dumps(cr, indent=1))
        print("| span / L2 | measured | xor | xor_low |\n|---|---|---|---|")
        for r in cr:
            print(f"| {r['x_over_l2']} | {r['measured']} | {r['xor']} | {r['xor_low']} |")
        if a.only == "curve":
            return 0
    runs = []
    if a.only in (None, "masks"):
        runs += mask_runs()
    if a.only in (None, "attention"):
        runs += attention_runs(a.max_n)
    done = []
    if os.path.exists(a.out):
        with open(a.out) as f:
            done = json.load(f)
    have = {key(r) for r in done}
    todo = [(r, h) for r in sorted(runs, key=lambda r: r["case"]["N"] * r["case"]["Hq"]) for h in HASHES
            if key({**r, "hash": h}) not in have]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with ProcessPoolExecutor(max(1, a.jobs)) as ex:
        futs = [ex.submit(work, t) for t in todo]
        for fu in as_completed(futs):
            r = fu.result()
            done.append(r)
            c = r["case"]
            print(f"{r['set']} {c['id']} {c['impl']} N{c.get('N')} {r['hash']}: err {100 * r['err']:+.1f}% "
                  f"({r['seconds']:.0f} s)", flush=True)
            atomic_write_text(a.out, json.dumps(done, indent=1))
    print("\n".join(summary(done)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
