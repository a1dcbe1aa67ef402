"""Wall time of the command line, each command run afresh (a new interpreter) ``--repeat`` times; the median counts.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 5] [--json benchmarks/results/bench_cli.json]

Rows: ``import iosim`` (``python -X importtime -c "import iosim"``: the package's own cumulative import time, and the
process's wall time), ``iosim predict --no-l2`` and ``iosim predict`` at the default shape (H100, FA2, B=1 H=16
N=4096 d=128), then the batch commands in this process (``--jobs 1``) and on every core (``--jobs 0``): ``iosim tiles``
at the default shape and at N=128K causal, and ``iosim report`` with its defaults. Issue 19's limits: import under
0.3 s, ``predict --no-l2`` under 0.6 s. The load average is recorded before and after: other work on the machine
slows the parallel rows first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from iosim.atomic import atomic_write_text

IOSIM = [sys.executable, "-m", "iosim"]
TILES_LONG = ["tiles", "--seq-q", "131072", "--causal"]
ROWS = (
    ("predict --no-l2", ["predict", "--no-l2"]),
    ("predict (L2)", ["predict"]),
    ("tiles --jobs 1", ["tiles", "--jobs", "1"]),
    ("tiles --jobs 0", ["tiles", "--jobs", "0"]),
    ("tiles N=128K causal --jobs 1", TILES_LONG + ["--jobs", "1"]),
    ("tiles N=128K causal --jobs 0", TILES_LONG + ["--jobs", "0"]),
    ("report --jobs 1", ["report", "--quiet", "--jobs", "1"]),
    ("report --jobs 0", ["report", "--quiet", "--jobs", "0"]),
)


def wall_s(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def import_s() -> tuple[float, float]:
    """(cumulative import time of the ``iosim`` package, wall time of the whole process), seconds."""
    t0 = time.perf_counter()
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import iosim"], check=True,
                         capture_output=True, text=True).stderr
    wall = time.perf_counter() - t0
    us = next(int(m.group(1)) for m in re.finditer(r"\|\s*(\d+) \| iosim$", err, re.M))
    return us / 1e6, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/bench_cli.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows = []
    imports = [import_s() for _ in range(args.repeat)]
    rows.append({"name": "import iosim (-X importtime, package)", "runs_s": [i for i, _ in imports]})
    rows.append({"name": "import iosim (process wall)", "runs_s": [w for _, w in imports]})
    with tempfile.TemporaryDirectory() as out:
        for name, argv in ROWS:
            argv = argv + ["--out", out] if argv[0] == "report" else argv
            rows.append({"name": name, "command": "iosim " + " ".join(argv),
                         "runs_s": [wall_s(IOSIM + argv) for _ in range(args.repeat)]})
    for r in rows:
        r["median_s"] = statistics.median(r["runs_s"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"source": "benchmarks/bench_cli.py", "date": datetime.date.today().isoformat(), "commit": commit,
              "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "repeat": args.repeat, "rows": rows}
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"{'what':<38} {'median':>8} {'min':>8} {'max':>8}")
    for r in rows:
        print(f"{r['name']:<38} {r['median_s']:>7.3f}s {min(r['runs_s']):>7.3f}s {max(r['runs_s']):>7.3f}s")
    print(f"{os.cpu_count()} cores; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
