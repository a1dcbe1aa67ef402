"""Long-context predictions with the L2 model (issue 19): wall time and peak RSS of ``iosim.predict`` on the H100
profile, default settings, FA2 preset (``kernel="fa2"``), each case in a fresh process (peak RSS from ``os.wait4``
of that process alone; time of the ``predict`` call, imports excluded).

    .venv/bin/python benchmarks/bench_long_context.py [--max-seconds 600] [--sweep-max-n 262144] [--quick]
    .venv/bin/python benchmarks/bench_long_context.py --only "non-causal H32 1M" --max-seconds 2400

Targets: causal GQA 32/8 128K d128 < 30 s and < 1 GiB; non-causal H16 128K d128 < 60 s; non-causal H32 N=2^20 d128
completes with < 2 GiB (a case stopped at --max-seconds reports its projected time from the progress it had
made). Then a table against N (causal GQA 32/8 and non-causal H16, d128). Writes (atomically)
``benchmarks/results/bench_long_context.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

TARGETS = [  # (label, B, H, Hkv, N, causal, time target s, RSS target GiB)
    ("causal GQA 32/8 128K", 1, 32, 8, 131072, True, 30, 1.0),
    ("non-causal H16 128K", 1, 16, 16, 131072, False, 60, None),
    ("non-causal H32 1M", 1, 32, 32, 1 << 20, False, None, 2.0),
]
SWEEP = [("causal GQA 32/8", 32, 8, True), ("non-causal H16", 16, 16, False)]


def one(spec: dict) -> None:
    """Worker: one prediction; prints a JSON line."""
    from iosim import Problem, predict
    p = Problem(spec["B"], spec["H"], spec["Hkv"], spec["N"], spec["N"], 128, "bf16", spec["causal"])
    t = time.perf_counter()
    pr = predict("h100", p, None, kernel="fa2", progress=True)
    print(json.dumps({"seconds": time.perf_counter() - t, "dram_read_bytes": pr.dram_read_bytes,
                      "dram_read_over_qkv": pr.dram_read_bytes / (2 * spec["B"] * spec["N"] * 128
                                                                   * (spec["H"] + 2 * spec["Hkv"])),
                      "exact": pr.l2.l2.exact, "stride": pr.l2.l2.stride}))


def run_case(spec: dict, max_s: float) -> dict:
    """Run ``one`` in a fresh process; on timeout, kill it and project its time from its last progress line."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--one", json.dumps(spec)], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=ROOT)
        t0 = time.monotonic()
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        while pid == 0 and time.monotonic() - t0 < max_s:
            time.sleep(0.5)
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        timed_out = pid == 0
        if timed_out:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = status
        out = proc.stdout.read()
        err.seek(0)
        log = err.read()
    row = {**spec, "peak_rss_gib": ru.ru_maxrss / 2**20, "completed": not timed_out and status == 0}
    if row["completed"]:
        row.update(json.loads(out.strip().splitlines()[-1]))
        return row
    got = re.findall(r"L2 timeline\s+([\d.]+)%\s+(\d+) s", log)
    if got:
        pct, el = float(got[-1][0]), float(got[-1][1])
        row.update(stopped_at_fraction=pct / 100, projected_seconds=el / (pct / 100) if pct else None)
    row["error"] = "stopped at --max-seconds" if timed_out else log.strip().splitlines()[-1:]
    return row


def run_target(target: tuple, max_s: float) -> dict:
    label, B, H, Hkv, N, causal, t_s, rss = target
    r = run_case(dict(label=label, B=B, H=H, Hkv=Hkv, N=N, causal=causal), max_s)
    r.update(target_seconds=t_s, target_rss_gib=rss,
             met=r["completed"] and (t_s is None or r["seconds"] < t_s) and (rss is None or r["peak_rss_gib"] < rss))
    return r


def fmt(r: dict) -> str:
    t = f"{r['seconds']:8.1f}" if r.get("completed") else (
        f"~{r['projected_seconds']:7.0f}" if r.get("projected_seconds") else "       -")
    ratio = f"{r['dram_read_over_qkv']:8.2f}" if r.get("completed") else "       -"
    line = f"{r['label']:<26} {r['N']:>8} {t} s {r['peak_rss_gib']:7.2f} GiB {ratio}"
    if "met" in r:
        t_s, rss = r["target_seconds"], r["target_rss_gib"]
        line += (f"   target {'<' + str(t_s) + ' s ' if t_s else ''}{'<' + str(rss) + ' GiB ' if rss else ''}"
                 f"{'met' if r['met'] else 'NOT met'}")
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--max-seconds", type=float, default=600, help="stop a case after this long (projected time)")
    ap.add_argument("--sweep-max-n", type=int, default=262144, help="largest N of the table against N")
    ap.add_argument("--quick", action="store_true", help="only the table up to 32K (a smoke run)")
    ap.add_argument("--only", default=None, metavar="LABEL",
                    help="run only this target case and update its entry in an existing --out JSON")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_long_context.json"))
    a = ap.parse_args(argv)
    if a.one:
        one(json.loads(a.one))
        return 0
    from iosim.atomic import atomic_write_text
    from iosim.memory.l2 import compiled_core
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    head = f"{'case':<26} {'N':>8} {'time':>10} {'peak RSS':>11} {'DRAM/QKV':>8}"
    rows, targets = [], []
    if a.only:
        with open(a.out) as f:
            doc = json.load(f)
        r = run_target(next(t for t in TARGETS if t[0] == a.only), a.max_seconds)
        print(head + "\n" + fmt(r), flush=True)
        doc["targets"] = [r if t["label"] == a.only else t for t in doc["targets"]]
        doc[f"commit_{a.only}"] = commit.strip()
        atomic_write_text(a.out, json.dumps(doc, indent=1) + "\n")
        return 0
    if not a.quick:
        print("targets (H100 profile, FA2 preset, d128)\n" + head, flush=True)
        for target in TARGETS:
            r = run_target(target, a.max_seconds)
            targets.append(r)
            print(fmt(r), flush=True)
    print("\nagainst N\n" + head, flush=True)
    for label, H, Hkv, causal in SWEEP:
        N = 16384
        while N <= (32768 if a.quick else a.sweep_max_n):
            r = run_case(dict(label=label, B=1, H=H, Hkv=Hkv, N=N, causal=causal), a.max_seconds)
            rows.append(r)
            print(fmt(r), flush=True)
            if not r["completed"]:
                break
            N *= 2
    doc = {"commit": commit.strip(), "l2_engine": "compiled (numba)" if compiled_core() else "numpy",
           "cpus": os.cpu_count(), "profile": "h100", "kernel": "fa2", "head_dim": 128, "targets": targets,
           "against_n": rows}
    if not a.quick:
        atomic_write_text(a.out, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
