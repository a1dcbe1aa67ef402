"""Tables of reports/validation/h100/lane_timeline.md: per set, per timeline point (σ, lane headway), n / median |err| /
worst signed err on the L2-bound runs (measured DRAM > 1.15 × QKV) and on the rest, all runs (non-causal rows are
unchanged by the lane and drift: their err_calibrated comes from the set's baseline compare_l2.csv), plus the split by
implementation for the causal L2-bound runs. A point is reported only where every causal run of the set has a row.

    python reports/validation/h100/lane_timeline/summarize.py
"""
import csv
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
V = os.path.dirname(os.path.dirname(HERE))   # reports/validation
SETS = {
    "H100 set 1": (f"{V}/h100/l2_validation_set1/compare_l2.csv", ["h100_set1_*.csv"],
                   f"{V}/h100/coupled_timeline/drift_set1.csv"),
    "H100 set 2": (f"{V}/h100/l2_validation_set2/compare_l2.csv", ["h100_set2_*.csv"],
                   f"{V}/h100/coupled_timeline/drift_set2.csv"),
    "H200": (f"{V}/h200/l2_validation/compare_l2.csv", ["h200_*.csv"], None),
}


CASE_POINTS = [(0.25, "0.0"), (0.5, "0.0"), (0.5, "1.0")]


def load_points(patterns, drift):
    import glob
    pts = {}
    for pat in patterns:
        for fn in sorted(glob.glob(os.path.join(HERE, pat))):
            for r in csv.DictReader(open(fn)):
                if r["miss_cost"] != "jitter":
                    continue
                lane = r.get("lane", "") or "off"
                pts.setdefault((float(r["noise"]), lane), {})[int(r["id"])] = float(r["err"])
    if drift:
        for r in csv.DictReader(open(drift)):
            if r["miss_cost"] == "jitter":
                pts.setdefault((float(r["noise"]), "off"), {})[int(r["id"])] = float(r["err"])
    return pts


def desc(r):
    return f"{r['id']} {r['impl']} H{r['Hq']}/{r['Hkv']} N{r['N']} d{r['d']}{' c' if r['causal'] == '1' else ''}"


def stats(rows, err):
    if not rows:
        return "0 | - | -"
    e = [(err(r), r) for r in rows]
    med = statistics.median(abs(x) for x, _ in e)
    w = max(e, key=lambda x: abs(x[0]))
    return f"{len(e)} | {100 * med:.1f}% | {100 * w[0]:+.1f}% ({desc(w[1])})"


def main():
    out = []
    for name, (base, pats, drift) in SETS.items():
        rows = list(csv.DictReader(open(base)))
        pts = load_points(pats, drift)
        pts.setdefault((0.25, "off"), {})
        causal = {int(r["id"]) for r in rows if r["causal"] == "1"}
        out += [f"### {name}", "", "| σ | lane h | L2-bound n | median | worst | rest n | median | worst |"
                " causal L2-bound sdpa n | median | worst | causal L2-bound flex n | median | worst |",
                "|" + "---|" * 14]
        for (sig, lane) in sorted(pts, key=lambda p: (p[1] != "off", p[1], p[0])):
            e = pts[(sig, lane)]
            if (sig, lane) != (0.25, "off") and not causal <= set(e):
                continue

            def err(r, e=e):
                i = int(r["id"])
                return e[i] if i in e and r["causal"] == "1" else float(r["err_calibrated"])
            b = [r for r in rows if r["l2_bound"] == "1"]
            o = [r for r in rows if r["l2_bound"] != "1"]
            cs = [r for r in b if r["causal"] == "1" and r["impl"] == "sdpa"]
            cf = [r for r in b if r["causal"] == "1" and r["impl"] == "flex"]
            out.append(f"| {sig:g} | {lane} | {stats(b, err)} | {stats(o, err)} | {stats(cs, err)} | {stats(cf, err)} |")
        out.append("")
        show = [(0.25, "off")] + [k for k in CASE_POINTS if k in pts and causal <= set(pts[k])]
        out += [f"Per causal case ({name}): error at " + ", ".join(f"σ {a:g} lane {b}" for a, b in show), "",
                "| id | impl | Hq/Hkv | N | d | L2-bound | " + " | ".join(f"σ{a:g}/{b}" for a, b in show) + " |",
                "|" + "---|" * (6 + len(show))]
        for r in rows:
            if r["causal"] != "1":
                continue
            i = int(r["id"])
            cells = [pts[k].get(i, float(r["err_calibrated"])) if k != (0.25, "off") or i in pts[k]
                     else float(r["err_calibrated"]) for k in show]
            out.append(f"| {i} | {r['impl']} | {r['Hq']}/{r['Hkv']} | {r['N']} | {r['d']} | {r['l2_bound']} | "
                       + " | ".join(f"{100 * c:+.1f}%" for c in cells) + " |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
