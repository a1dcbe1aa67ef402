"""The report's sparsity page (``iosim report --sparsity``): does each sparse-attention method pay off?

For every registered sparse method (``iosim.sparsity.sparse_algorithms``, or the ``--algorithms`` given) on every
hardware profile of the report: predicted speedup over dense FlashAttention-2 (SDPA's, the fa2 preset) against the
density, the pre-pass share of the method's time, and the break-even density against every dense baseline that runs
there (``iosim.sparsity``: FA2, FA3 on Hopper, FA4 on Blackwell, and iosim's flash2 loop on the native path, the
like-for-like dense kernel). Files: sparsity.png, sparsity.csv (one row per method × hardware × N × density),
breakeven.csv, sparsity.json (``iosim.sparsity.to_json`` per method), index.html, report.md.

Time model: SM↔L2 counts with compulsory DRAM traffic (``l2=False``; the cost of an L2 simulation per point would
make the page minutes long at 32K). The problem is the report's (--batch, --heads, --head-dim, --dtype, --causal); N is
SPARSITY_SEQ unless --seqs is given (each N is swept; the plot shows the largest).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from iosim.atomic import atomic_write_bytes
from iosim.errors import IosimError
from iosim.report import (DEFAULT_ALGORITHMS, DEFAULT_SEQS, Progress, ReportConfig, ReportResult, _COLORS, _STYLES,
                          _fmt_n, _rc, _write_documents, problem_text, save_figure)

SPARSITY_OUT = "reports/sparsity"
SPARSITY_SEQ = 32768
SPARSITY_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def page_config(cfg: ReportConfig) -> tuple[ReportConfig, tuple[str, ...], tuple[int, ...]]:
    """(the page's config, its methods, its N): the report's dense defaults (algorithms, seqs) mean every sparse
    method at SPARSITY_SEQ; named algorithms must be sparse methods."""
    from iosim.sparsity import check_algorithm, sparse_algorithms
    if cfg.algorithms == DEFAULT_ALGORITHMS:
        algs = tuple(sparse_algorithms())
        if not algs:
            raise IosimError("no sparse method is registered (models/sparse/ holds no family module)")
    else:
        algs = tuple(cfg.algorithms)
        for a in algs:
            check_algorithm(a)
    seqs = (SPARSITY_SEQ,) if cfg.seqs == DEFAULT_SEQS else tuple(cfg.seqs)
    return replace(cfg, algorithms=algs, seqs=seqs), algs, seqs


def sparsity_curves(cfg: ReportConfig, progress: Progress | None = None, jobs: int | None = 1,
                    densities=SPARSITY_DENSITIES) -> tuple[list, list[str]]:
    """(curves, failures): ``iosim.sparsity.curve`` for every method × hardware × N of the page (the dense baselines
    computed once per hardware × N); a method that cannot run on a profile is a failure line, the rest continue."""
    from iosim.problem import Problem
    from iosim.sparsity import baselines, curve
    page, algs, seqs = page_config(cfg)
    out, failures = [], []
    for hw in cfg.hardware:
        for n in seqs:
            p = Problem(cfg.batch, cfg.heads, cfg.heads, n, n, cfg.head_dim, cfg.dtype, cfg.causal)
            try:
                dense = baselines(hw, p)
            except IosimError as e:
                failures.append(f"{hw} N={_fmt_n(n)}: dense baselines: {e}")
                if progress:
                    progress.step(len(algs) * len(densities))
                continue
            for a in algs:
                try:
                    out.append(curve(hw, p, a, densities, jobs=jobs, dense=dense,
                                     progress=progress.step if progress else None))
                except IosimError as e:
                    failures.append(f"{a} on {hw} at N={_fmt_n(n)}: {e}")
    return out, failures


def curve_rows(curves) -> list[dict]:
    """One row per method × hardware × N × density (sparsity.csv)."""
    from iosim.sparsity import PRIMARY
    rows = []
    for c in curves:
        prim = c.baseline(PRIMARY)
        for pt in c.points:
            row = {"algorithm": c.algorithm, "hardware": c.hardware, "N": c.problem.seq_q, "density": pt.density,
                   "time (ms)": pt.time_s * 1e3, "pre-pass (ms)": pt.prepass_s * 1e3,
                   "sparse (ms)": pt.sparse_s * 1e3, "reduction (ms)": pt.reduction_s * 1e3,
                   "pre-pass share": pt.prepass_share,
                   f"attn FLOPs / {prim.name}": pt.attention_flops / prim.matmul_flops if prim.matmul_flops else None,
                   "bound": pt.bound}
            for b in c.baselines:
                row[f"speedup vs {b.name}"] = pt.speedup[b.name]
            rows.append(row)
    return rows


def breakeven_rows(curves) -> list[dict]:
    """One row per method × hardware × N × baseline (breakeven.csv)."""
    rows = []
    for c in curves:
        for b in c.break_even:
            rows.append({"algorithm": c.algorithm, "hardware": c.hardware, "N": c.problem.seq_q,
                         "baseline": b.baseline, "dense (ms)": c.baseline(b.baseline).time_s * 1e3,
                         "break-even density": b.density, "how": b.kind, "text": b.text})
    return rows


def sparsity_figure(curves, cfg: ReportConfig):
    """Top row: speedup over FA2 (the primary baseline) vs density, one panel per hardware, one line per method, the
    break-even line at 1; bottom row: the pre-pass share of each method's time. The largest N of the page."""
    from matplotlib.figure import Figure
    from iosim.sparsity import PRIMARY
    hws = list(dict.fromkeys(c.hardware for c in curves))
    n = max(c.problem.seq_q for c in curves)
    algs = list(dict.fromkeys(c.algorithm for c in curves))
    fig = Figure(figsize=(4.6 * len(hws) + 1.2, 7.2))
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.08, top=0.92, wspace=0.28, hspace=0.32)
    axes = fig.subplots(2, len(hws), squeeze=False)
    for col, hw in enumerate(hws):
        top, bot = axes[0][col], axes[1][col]
        for i, a in enumerate(algs):
            c = next((c for c in curves if c.hardware == hw and c.algorithm == a and c.problem.seq_q == n), None)
            if c is None:
                continue
            base = c.baseline(PRIMARY)
            xs = [p.density for p in c.points]
            style = dict(color=_COLORS[i % len(_COLORS)], ls=_STYLES[(i // len(_COLORS)) % len(_STYLES)], ms=3)
            top.plot(xs, [p.speedup[base.name] for p in c.points], marker="o", label=a, **style)
            bot.plot(xs, [100 * p.prepass_share for p in c.points], marker="s", label=a, **style)
        top.axhline(1.0, color="black", lw=0.8, ls="--")
        top.set_yscale("log")
        top.set_xlabel("density (kept fraction of causal-valid blocks)")
        top.set_ylabel("speedup over FA2 (SDPA)")
        top.set_title(f"{hw}: N={_fmt_n(n)}, {problem_text(cfg)}", fontsize=8)
        bot.set_xlabel("density")
        bot.set_ylabel("pre-pass share of the time (%)")
        top.legend(fontsize=7, loc="best")
    return fig


def generate_sparsity(cfg: ReportConfig = ReportConfig(out=SPARSITY_OUT), *, progress: bool = True, stream=None,
                      jobs: int | None = 1, densities=SPARSITY_DENSITIES) -> ReportResult:
    """The sparsity page into cfg.out: sparsity.png, sparsity.csv, breakeven.csv, sparsity.json, index.html,
    report.md. Failures (a method that cannot run on a profile) are listed on the page and in the result."""
    import pandas as pd
    from iosim.sparsity import time_model_text, to_json
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = ReportResult(out)
    page, algs, seqs = page_config(cfg)
    pr = Progress("sparsity", len(cfg.hardware) * len(seqs) * len(algs) * len(densities), stream, progress)
    curves, res.failures = sparsity_curves(cfg, pr, jobs, densities)
    pr.close()
    rows, be = curve_rows(curves), breakeven_rows(curves)
    atomic_write_bytes(out / "sparsity.csv", pd.DataFrame(rows, dtype=object).to_csv(index=False).encode())
    atomic_write_bytes(out / "breakeven.csv", pd.DataFrame(be, dtype=object).to_csv(index=False).encode())
    doc = {a: [c.to_dict() for c in curves if c.algorithm == a] for a in algs}
    atomic_write_bytes(out / "sparsity.json", (json.dumps(doc, indent=1) + "\n").encode())
    res.files += ["sparsity.csv", "breakeven.csv", "sparsity.json"]
    sections = []
    if curves:
        with _rc():
            save_figure(sparsity_figure(curves, page), out / "sparsity.png")
        res.files.append("sparsity.png")
        text = (f"Each sparse method's whole schedule (pre-pass: scoring, pooling, selection, index building, "
                f"permutations; the sparse attention kernel(s); reductions) predicted at densities "
                f"{', '.join(f'{d:g}' for d in densities)} of causal-valid blocks (the density+seed selection of "
                f"models/sparse/common.py, seed 0), against dense baselines on the same problem ({problem_text(page)}; "
                f"N = {', '.join(_fmt_n(n) for n in seqs)}). Time model: {time_model_text(False)}. Kernel roles and "
                "baselines: iosim/sparsity.py. FA2 is PyTorch SDPA's (mma.sync on Hopper); a method's own kernels "
                "are timed on the chip's native path, so its speedup over FA2 at density 1 can exceed 1 by the "
                "instruction path alone: breakeven.csv also gives the break-even against flash2 on the native path "
                "(like for like), FA3 on Hopper and FA4 on Blackwell. Break-even densities are interpolated linearly "
                "in time between sampled densities ('always' / 'never': no crossing in the sampled range).")
        sections.append(("Sparse attention: speedup and pre-pass share vs density", text, ["sparsity.png"]))
    tables = []
    if be:
        shown = pd.DataFrame(be, dtype=object).drop(columns=["text"])
        shown["dense (ms)"] = shown["dense (ms)"].map(lambda v: f"{v:.4g}")
        shown["break-even density"] = shown["break-even density"].map(lambda v: "-" if v is None else f"{v:.3g}")
        tables.append(("Break-even densities", "Where the speedup crosses 1 (breakeven.csv).", shown))
    if rows:
        df = pd.DataFrame(rows, dtype=object)
        for col in df.columns:
            if col.endswith("(ms)") or col.startswith("speedup") or col.startswith("attn") or col == "pre-pass share":
                df[col] = df[col].map(lambda v: "-" if v is None else f"{v:.4g}")
        tables.append(("Sparsity table", "One row per point (sparsity.csv has the unformatted numbers).", df))
    _write_documents(out, page, sections, tables, res.failures)
    res.files += ["index.html", "report.md"]
    res.seconds = time.monotonic() - t0
    return res
