"""Roofline reports: ``iosim report`` writes index.html, report.md, table.csv and PNG plots into one folder.

Plots (matplotlib, Agg, no pyplot state):

* ``roofline_<hw>.png`` — per hardware: the tensor-core ceiling (peak × path efficiency) and the DRAM, L2 and
  shared-memory bandwidth slopes; each kernel of each algorithm is three points, its arithmetic intensity (matmul
  FLOPs per byte) at DRAM, L2 and shared memory, at its predicted FLOP/s.
* ``io_time_vs_n.png`` — SM↔L2 bytes and compulsory DRAM bytes vs N, and predicted time vs N per hardware.
* ``io_vs_sram.png`` — HBM accesses (elements) of FlashAttention (Algorithm 1) and Saha & Ye's SquareTiling vs the
  SRAM size M, between the certified constants of their Θ theorems (``iosim.symbolic.theorems()``: "fa1_forward"
  for d ≤ M ≤ Nd, "square_tiling_small_cache" for M ≤ d²), above the lower bound for any algorithm with explicit
  constants (``iosim.symbolic.lower_bounds``: trivial, Saha & Ye large-cache, matmul small-cache; ``.best``).
* ``tiles_<hw>.png`` — predicted time of flash2 over block_m × block_n (best num_warps/num_stages per cell);
  illegal cells are marked.

``iosim report --masks`` writes a separate page (``generate_masks``: masks.png, masks.csv): IO and predicted time of
FA2's loop over a block mask (``block_sparse``, l2=False) at N = 32K on the H100 profile against the sliding-window
size, the number of equal documents and the density of a random block mask, beside the symbolic IO
(``iosim.mask_bounds``) and the lower bound for any exact algorithm.

Deterministic: the same arguments give byte-identical files (no timestamps; PNG metadata Software=None; fixed
svg.hashsalt; sorted iteration). Each file is written to a temporary name and renamed. A sweep point that fails
(IosimError) is recorded in the report and the rest continues; index.html and report.md are rewritten after every
section, so an interrupted run leaves what finished.
"""

from __future__ import annotations

import html
import io
import math
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from iosim.atomic import atomic_write_bytes
from iosim.errors import IosimError

DEFAULT_HARDWARE = ("h100", "a100", "b200")
DEFAULT_ALGORITHMS = ("flash2", "flash1", "standard", "square_tiling")
DEFAULT_SEQS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
DEFAULT_OUT = "reports/default"
PROGRESS_AFTER_S = 2.0
MASK_OUT = "reports/masks"
MASK_HARDWARE = "h100"
MASK_SEQ = 32768
MASK_SWEEPS = (("window W", (1024, 2048, 4096, 8192, 16384, 32768)), ("documents", (1, 2, 4, 8, 16, 32, 64)),
               ("density", (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)))
DEFAULT_JOBS: int | None = 1  # in this process: on every core it ran slower here (benchmarks/bench_cli.py)

_RC = {"svg.hashsalt": "iosim", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100,
       "savefig.dpi": 100, "font.family": "DejaVu Sans"}
_PNG_META = {"Software": None}
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class ReportConfig:
    hardware: tuple[str, ...] = DEFAULT_HARDWARE
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    seqs: tuple[int, ...] = DEFAULT_SEQS
    batch: int = 1
    heads: int = 16
    head_dim: int = 128
    dtype: str = "bf16"
    causal: bool = False
    point_seq: int = 8192  # roofline points and tile heatmaps
    sram_seq: int = 4096  # IO-vs-M sweep
    sram_head_dim: int = 64
    out: str = DEFAULT_OUT


@dataclass
class ReportResult:
    out: Path
    files: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- small utilities -----------------------------------------------------------------------------------------------

class Progress:
    """A plain-text progress bar on stderr, shown only once a sweep has run longer than PROGRESS_AFTER_S."""

    def __init__(self, label: str, total: int, stream=None, enabled: bool = True, after_s: float = PROGRESS_AFTER_S):
        self.label, self.total, self.done = label, max(1, total), 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.after_s = enabled, after_s
        self.start = time.monotonic()
        self.shown = False

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.shown or time.monotonic() - self.start > self.after_s:
            self.shown = True
            width = 30
            fill = int(width * self.done / self.total)
            self.stream.write(f"\r{self.label:<14} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def save_figure(fig, path: Path) -> None:
    """PNG with no Software/date metadata, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_META)
    atomic_write_bytes(path, buf.getvalue())


def _figure(w: float, h: float, ncols: int = 1, right: float = 0.97):
    """A Figure with fixed margins (constrained layout costs more than all the sweeps together)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(left=0.6 / w * ncols ** 0 + 0.02, right=right, bottom=0.5 / h + 0.03, top=1 - 0.6 / h,
                        wspace=0.22)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _rc():
    import matplotlib
    return matplotlib.rc_context(_RC)


def _fmt_n(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def markdown_table(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _frac(x) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def io_bound_curves(n: int, d: int, ms) -> list[dict]:
    """Curves for the IO-vs-SRAM plot (elements, one head, N_q = N_kv = n, non-causal) at SRAM sizes ``ms``: the
    certified lower/upper constants of FA1's and SquareTiling's Θ theorems (``symbolic.theorems()``, each over its
    regime) and the lower bound for any algorithm (``symbolic.lower_bounds(problem, M).best``).
    Each curve: label, M (elements), values, and for a band the matching upper values."""
    from iosim.problem import Problem
    from iosim.symbolic import lower_bounds, theorem
    ms = np.asarray(ms, dtype=float)
    curves = []
    for key, name, ftext, f, regime in (
            ("fa1_forward", "FA Alg. 1", "N²d²/M", lambda m: n * n * d * d / m, (d, n * d)),
            ("square_tiling_small_cache", "SquareTiling", "N²d/√M", lambda m: n * n * d / np.sqrt(m), (16, d * d))):
        t = theorem(key)
        lo, up = t.lower, t.upper
        sel = ms[(ms >= regime[0]) & (ms <= regime[1])]
        g = n * d  # both theorems' g term is N·d
        curves.append({
            "label": f"{name} {t.asymptotic}: {_frac(lo.c_f)}·{ftext} + {_frac(lo.c_g)}·Nd ≤ IO ≤ "
                     f"{_frac(up.c_f)}·{ftext} + {_frac(up.c_g)}·Nd (certified constants, symbolic.theorems "
                     f"'{key}'; {t.source.split(';')[0].split(' (')[0]})",
            "M": sel, "lower": float(lo.c_f) * f(sel) + float(lo.c_g) * g,
            "upper": float(up.c_f) * f(sel) + float(up.c_g) * g, "key": key})
    p = Problem(1, 1, 1, n, n, d, "bf16", False)
    curves.append({"label": "lower bound, any algorithm: max(trivial 4Nd, N²d²/(4(M+d²)) − M, "
                            "N²d/(2√2·√M) − M − N²) (symbolic.lower_bounds; Saha & Ye Lemmas 3.3–3.4, Thm 3.7)",
                   "M": ms, "lower": np.array([lower_bounds(p, int(m)).best for m in ms]), "upper": None,
                   "key": "lower_bounds"})
    return curves


# --- sweeps -------------------------------------------------------------------------------------------------------

def problem_text(cfg: ReportConfig, n: int | None = None) -> str:
    """The sweep's problem in words: every title and section states it (causal or not included)."""
    return (f"B={cfg.batch}, H={cfg.heads}, d={cfg.head_dim}, {cfg.dtype}, "
            f"{'causal' if cfg.causal else 'non-causal'}" + (f", N={_fmt_n(n)}" if n else ""))


def _sram_problem_text(cfg: ReportConfig) -> str:
    return (f"N={_fmt_n(cfg.sram_seq)}, d={cfg.sram_head_dim}, one head (B=1, H=1), non-causal (the theorems' "
            f"setting), {cfg.dtype} elements")


def _problem(cfg: ReportConfig, n: int, d: int | None = None):
    from iosim.problem import Problem
    return Problem(cfg.batch, cfg.heads, cfg.heads, n, n, d or cfg.head_dim, cfg.dtype, cfg.causal)


def sweep_point(cfg: ReportConfig, point: tuple[str, str, int]) -> dict | str:
    """One (hardware, algorithm, N) of ``sweep_n``: its row, or the failure line (a module-level function, so that
    ``iosim.parallel.map_ordered`` can run it in a worker)."""
    from iosim.cost import estimate, tensor_dtype
    from iosim.counts import count
    from iosim.hwprofile import load_hardware
    from iosim.pipeline import build_schedule
    from iosim.problem import KernelConfig
    hw_name, alg, n = point
    try:
        hw = load_hardware(hw_name)
    except IosimError as e:
        return f"hardware {hw_name}: {e}"
    try:
        s = build_schedule(alg, _problem(cfg, n), KernelConfig(), hw)
        c = count(s)
        e = estimate(s, c, hw)
    except IosimError as ex:
        return f"{hw_name} {alg} N={n}: {ex}"
    peak = hw.tensor_flops(tensor_dtype(cfg.dtype))
    return {"hardware": hw.name, "algorithm": alg, "N": n, "time_ms": e.time_s * 1e3,
            "TFLOP/s": e.achieved_flops_per_s / 1e12, "pct_peak": 100 * e.achieved_flops_per_s / peak,
            "bound": e.bound, "sm_bytes": c.sm_read_bytes + c.sm_write_bytes,
            "dram_bytes": e.dram_read_bytes + e.dram_write_bytes, "kernels": len(s.kernels),
            "ctas": ", ".join(str(k.programs) for k in e.kernels) + f" / {hw.sm_count}",
            "_estimate": e, "_peak": peak, "_sms": hw.sm_count}


def sweep_points(cfg: ReportConfig) -> list[tuple[str, str, int]]:
    return [(h, a, n) for h in cfg.hardware for a in cfg.algorithms for n in cfg.seqs]


def collect(results: list[dict | str]) -> tuple[list[dict], list[str]]:
    """``sweep_point`` results → (rows, failure lines); an unloadable profile is one failure, not one per point."""
    rows, failures = [], []
    for r in results:
        if isinstance(r, dict):
            rows.append(r)
        elif r not in failures:
            failures.append(r)
    return rows, failures


def sweep_n(cfg: ReportConfig, progress: Progress, jobs: int = 1) -> tuple[list[dict], list[str]]:
    """One row per (hardware, algorithm, N): predicted time and traffic, or the error; ``jobs`` worker processes."""
    from iosim.parallel import map_ordered
    return collect(map_ordered(partial(sweep_point, cfg), sweep_points(cfg), jobs, progress.step))


def _io_elements(schedule, counts) -> int:
    """HBM accesses in elements (FA paper's unit): bytes of each tensor / its element size."""
    tot = 0
    for which in ("read", "write"):
        for t, v in counts.tensor_bytes(which).items():
            tot += v // schedule.tensors[t].elem_bytes
    return tot


def sram_sizes(cfg: ReportConfig) -> list[int]:
    """The SRAM sizes M (elements) of the IO-vs-M sweep: d²/4 … 32·d² in steps of √2, within [4d, N·d]."""
    d = cfg.sram_head_dim
    ms = (int(d * d * 2.0 ** k) for k in np.arange(-2.0, 5.01, 0.5))
    return sorted({m for m in ms if 4 * d <= m <= cfg.sram_seq * d})


def bound_curves(cfg: ReportConfig) -> list[dict]:
    """``io_bound_curves`` of the IO-vs-M plot (200 sizes over ``sram_sizes``)."""
    ms = sram_sizes(cfg)
    return io_bound_curves(cfg.sram_seq, cfg.sram_head_dim, np.logspace(math.log10(ms[0]), math.log10(ms[-1]), 200))


def sweep_sram(cfg: ReportConfig, progress: Progress) -> tuple[dict, list[str]]:
    """IO (elements) of flash1 and square_tiling vs the SRAM size M (elements), d = sram_head_dim, N = sram_seq."""
    from iosim.counts import count
    from iosim.pipeline import build_schedule
    from iosim.problem import DTYPE_BYTES, KernelConfig
    n, d = cfg.sram_seq, cfg.sram_head_dim
    e = DTYPE_BYTES[cfg.dtype]
    ms = sram_sizes(cfg)
    out: dict = {"M": ms, "N": n, "d": d}
    failures = []
    p = _problem(cfg, n, d)
    p = replace(p, batch=1, heads=1, kv_heads=1, causal=False)
    for alg in ("flash1", "square_tiling"):
        vals = []
        for m in ms:
            try:
                s = build_schedule(alg, p, KernelConfig(sram_bytes=m * e), None)
                vals.append(_io_elements(s, count(s)))
            except IosimError as ex:
                vals.append(math.nan)
                failures.append(f"io_vs_sram {alg} M={m}: {ex}")
            progress.step()
        out[alg] = vals
    return out, failures


def sweep_tiles(cfg: ReportConfig, hw_name: str) -> tuple[np.ndarray, list[int], list[int], str]:
    """Best predicted time (ms) per (block_m, block_n) for flash2; NaN where no configuration is legal."""
    from iosim.hwprofile import load_hardware
    from iosim.tiles import BLOCK_CHOICES, candidates
    hw = load_hardware(hw_name)
    cands = candidates(hw, _problem(cfg, cfg.point_seq), "flash2")
    bms, bns = list(BLOCK_CHOICES), list(BLOCK_CHOICES)
    grid = np.full((len(bms), len(bns)), np.nan)
    for c in cands:
        if c.legal:
            i, j = bms.index(c.block_m), bns.index(c.block_n)
            t = c.time_s * 1e3
            if not t >= grid[i, j]:  # NaN-aware min
                grid[i, j] = t
    if np.isnan(grid).all():
        raise IosimError(f"no legal flash2 tile on {hw.name}: " + " | ".join(sorted({c.reason for c in cands})[:3]))
    from iosim.cost import native_path
    return grid, bms, bns, native_path(hw)


def mask_point(cfg: ReportConfig, sweep: str, value, hw_name: str = MASK_HARDWARE, n: int = MASK_SEQ) -> dict:
    """One point of the mask page: block_sparse with the block mask of a sliding window of ``value`` keys (causal),
    of ``value`` equal documents (causal if cfg.causal), or a random block mask keeping a ``value`` fraction of the
    tiles (``default_rng(0)``, causal if cfg.causal); FA2's tiles for the head dim; counts and time with l2=False."""
    from iosim import mask_bounds as mb
    from iosim import symbolic as S
    from iosim.models.flash2 import default_tiles
    from iosim.pipeline import predict
    from iosim.problem import KernelConfig, Problem
    bm, bn = default_tiles(cfg.head_dim)
    env = {S.BATCH: cfg.batch, S.HEADS: cfg.heads, S.N: n, S.D: cfg.head_dim, S.ELEM_BYTES: 0, S.BLOCK_M: bm,
           S.BLOCK_N: bn}
    mask = lb = None
    if sweep == "window W":
        mask, io = mb.SlidingWindow(value), mb.sliding_io(value)
    elif sweep == "documents":
        mask = mb.equal_documents(n, value, cfg.causal)
        io = mb.documents_io(mask)
    if mask is not None:
        blocks = mb.block_mask(mask, n, bm, bn)
    else:
        tm, tn = -(-n // bm), -(-n // bn)
        blocks = np.random.default_rng(0).random((tm, tn)) < value
    p = Problem(cfg.batch, cfg.heads, cfg.heads, n, n, cfg.head_dim, cfg.dtype, cfg.causal or sweep == "window W")
    pr = predict(hw_name, p, KernelConfig(block_m=bm, block_n=bn), "block_sparse", block_mask=blocks, l2=False)
    c, e = pr.counts, p.elem_bytes
    env[S.ELEM_BYTES] = e
    if mask is not None:
        sym = S.evaluate_int(io.exact_bytes, env)
        m = S.schedule_fast_memory_elements(pr.schedule)
        # every element is at least e bytes (fp32 LSE: 4), so e × the element bound bounds the bytes
        lb = e * mb.lower_bounds(mask, n, cfg.head_dim, m, cfg.batch, cfg.heads).best
    else:  # FA §3.3 Prop. 4's form: Q, O once, LSE, and K, V for a fraction s of the T_r × T_c tiles
        s_frac = float(blocks.mean()) if not p.causal else None
        sym = None if s_frac is None else round(cfg.batch * cfg.heads * (e * 2 * n * cfg.head_dim + 4 * n + e * 2 *
                                                cfg.head_dim * s_frac * blocks.size * bn))
    return {"sweep": sweep, "value": value, "tiles": f"{bm}x{bn}",
            "tiles visited (%)": round(100 * int(pr.schedule.tables["kv_num_blocks"].sum()) / blocks.size, 2),
            "IO (GB)": (c.sm_read_bytes + c.sm_write_bytes) / 1e9, "symbolic IO (GB)": None if sym is None else sym / 1e9,
            "lower bound (GB)": None if lb is None else lb / 1e9, "time (ms)": pr.time_s * 1e3, "bound": pr.time.bound}


def mask_rows(cfg: ReportConfig = ReportConfig(), progress: Progress | None = None) -> list[dict]:
    """``mask_point`` over ``MASK_SWEEPS``."""
    rows = []
    for sweep, values in MASK_SWEEPS:
        for v in values:
            rows.append(mask_point(cfg, sweep, v))
            if progress:
                progress.step()
    return rows


def mask_figure(rows: list[dict], cfg: ReportConfig):
    """Three panels (window W, documents, density): IO counted, symbolic, lower bound (left), time (right)."""
    fig, axes = _figure(15, 4.4, 3, right=0.95)
    fig.subplots_adjust(wspace=0.42)
    for ax, (sweep, values) in zip(axes, MASK_SWEEPS):
        r = [x for x in rows if x["sweep"] == sweep]
        xs = [x["value"] for x in r]
        ax.plot(xs, [x["IO (GB)"] for x in r], "-o", ms=3, color=_COLORS[0], label="IO counted")
        for key, style, color in (("symbolic IO (GB)", "x", _COLORS[1]), ("lower bound (GB)", "--", "black")):
            pts = [(x["value"], x[key]) for x in r if x[key] is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=key.replace(" (GB)", ""))
        tw = ax.twinx()
        tw.plot(xs, [x["time (ms)"] for x in r], ":s", ms=3, color=_COLORS[2], label="time")
        tw.set_ylabel("predicted time (ms)", color=_COLORS[2])
        if sweep != "density":
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [_fmt_n(v) for v in xs])
        ax.set_yscale("log")
        tw.set_yscale("log")
        ax.set_xlabel({"window W": "sliding window W (keys, causal)", "documents": "equal documents",
                       "density": "fraction of tiles kept (random)"}[sweep])
        ax.set_ylabel("SM↔L2 bytes (GB)")
        ax.set_title(f"{sweep}: N={_fmt_n(MASK_SEQ)}, {MASK_HARDWARE}", fontsize=8)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = tw.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    return fig


def generate_masks(cfg: ReportConfig = ReportConfig(out=MASK_OUT), *, progress: bool = True, stream=None) -> ReportResult:
    """The mask page: masks.csv, masks.png, index.html, report.md in cfg.out."""
    import pandas as pd
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = ReportResult(out)
    pr = Progress("mask sweeps", sum(len(v) for _, v in MASK_SWEEPS), stream, progress)
    rows = mask_rows(cfg, pr)
    pr.close()
    df = pd.DataFrame(rows, dtype=object)
    atomic_write_bytes(out / "masks.csv", df.to_csv(index=False).encode())
    with _rc():
        save_figure(mask_figure(rows, cfg), out / "masks.png")
    res.files += ["masks.csv", "masks.png"]
    shown = df.copy()
    for col in ("IO (GB)", "symbolic IO (GB)", "lower bound (GB)", "time (ms)"):
        shown[col] = shown[col].map(lambda v: "-" if v is None or v != v else f"{v:.4g}")
    page = replace(cfg, hardware=(MASK_HARDWARE,), algorithms=("block_sparse",), seqs=(MASK_SEQ,))
    text = (f"Problem: {problem_text(page, MASK_SEQ)} (sliding windows are causal), on {MASK_HARDWARE}: FA2's loop "
            "over the mask's blocks (block_sparse, FA2's tiles for d), counted, with time from iosim/cost.py "
            "without the L2 model. symbolic IO: iosim.mask_bounds (sliding: the exact sum over query blocks; "
            "documents: the sum of flash2's IO per document; density: FA §3.3 Prop. 4's form, Q and O once plus K "
            "and V for the fraction s of tiles kept, non-causal only). lower bound: for any exact algorithm, "
            "Saha & Ye's large-cache argument applied to the mask's needed pairs (iosim.mask_bounds; a derivation, "
            "not a theorem of the paper), × e bytes per element. IO grows as Θ(N·W·d²/M) with the window, falls as "
            "1/k with k equal documents, and grows linearly with the density.")
    _write_documents(out, page, [("Masks: IO and time vs window, documents, density", text, ["masks.png"])],
                     [("Mask table", "One row per point (masks.csv has the unformatted numbers).", shown)], [])
    res.files += ["index.html", "report.md"]
    res.seconds = time.monotonic() - t0
    return res


# --- plots --------------------------------------------------------------------------------------------------------

def plot_io_time(rows: list[dict], cfg: ReportConfig, path: Path) -> None:
    if not rows:
        raise IosimError("no predicted point (see the failed points); no IO/time plot drawn")
    with _rc():
        fig, (ax1, ax2) = _figure(11, 4.2, 2)
        first = cfg.hardware[0] if cfg.hardware else None
        for ai, alg in enumerate(cfg.algorithms):
            color = _COLORS[ai % len(_COLORS)]
            r1 = [r for r in rows if r["algorithm"] == alg and r["hardware"] == first]
            if r1:
                ax1.plot([r["N"] for r in r1], [r["sm_bytes"] for r in r1], "-o", ms=3, color=color, label=f"{alg} SM↔L2")
                ax1.plot([r["N"] for r in r1], [r["dram_bytes"] for r in r1], "--", color=color, alpha=0.7,
                         label=f"{alg} DRAM (compulsory)")
            for hi, hw in enumerate(cfg.hardware):
                r2 = [r for r in rows if r["algorithm"] == alg and r["hardware"] == hw]
                if r2:
                    ax2.plot([r["N"] for r in r2], [r["time_ms"] for r in r2], _STYLES[hi % len(_STYLES)], marker="o",
                             ms=3, color=color, label=f"{alg} · {hw}")
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length N")
            ax.set_xticks(list(cfg.seqs), [_fmt_n(n) for n in cfg.seqs])
        ax1.set_ylabel("bytes")
        ax1.set_title(f"IO vs N on {first} ({problem_text(cfg)})")
        ax2.set_ylabel("predicted time (ms)")
        ax2.set_title(f"predicted time vs N ({problem_text(cfg)})")
        ax1.legend(fontsize=7, ncol=1)
        ax2.legend(fontsize=7, ncol=2)
        save_figure(fig, path)


def plot_roofline(rows: list[dict], cfg: ReportConfig, hw_name: str, path: Path) -> None:
    from iosim.cost import dram_bandwidth, l2_bandwidth, native_path, path_efficiency, tensor_dtype
    from iosim.hwprofile import load_hardware
    hw = load_hardware(hw_name)
    pts = [r for r in rows if r["hardware"] == hw.name and r["N"] == cfg.point_seq]
    if not pts:
        raise IosimError(f"no predicted point on {hw.name} at N={cfg.point_seq} (see the failed points); "
                         "no roofline drawn")
    peak = hw.tensor_flops(tensor_dtype(cfg.dtype))
    eff = path_efficiency(hw, native_path(hw), cfg.dtype).value
    bws = {"DRAM": dram_bandwidth(hw), "L2": l2_bandwidth(hw)}
    if hw.smem_bandwidth_bytes_per_clock_per_sm:
        bws["smem"] = hw.smem_bandwidth_bytes_per_clock_per_sm * hw.sm_count * hw.boost_clock_hz
    x = np.logspace(-1, 4, 200)
    with _rc():
        fig, (ax,) = _figure(7.5, 5)
        ax.axhline(peak, color="black", lw=1.2)
        ax.axhline(peak * eff, color="black", lw=0.8, ls="--")
        ax.text(x[0] * 1.2, peak * 1.08, f"tensor peak {cfg.dtype} {peak / 1e12:.0f} TFLOP/s", fontsize=8)
        ax.text(x[0] * 1.2, peak * eff * 0.80, f"× {eff:.2f} {native_path(hw)} efficiency", fontsize=8)
        for k, ((name, bw), ls) in enumerate(zip(bws.items(), (":", "-.", (0, (5, 1))))):
            y = np.minimum(bw * x, peak)
            ax.plot(x, y, color="grey", ls=ls, lw=1)
            yl = peak / (8 * 4 ** k)  # stagger the labels so they never overlap
            ax.text(yl / bw * 1.15, yl, f"{name} {bw / 1e12:.1f} TB/s", fontsize=7, color="dimgray",
                    ha="left", va="top")
        markers = {"dram": "o", "l2": "s", "smem": "^"}
        for ai, alg in enumerate(cfg.algorithms):
            color = _COLORS[ai % len(_COLORS)]
            for r in pts:
                if r["algorithm"] != alg:
                    continue
                ks = [k for k in r["_estimate"].kernels if k.matmul_flops]
                for k in ks:
                    y = k.achieved_flops_per_s
                    for lvl, ai_val in sorted(k.intensity().items()):
                        if math.isfinite(ai_val) and ai_val > 0:
                            ax.plot([ai_val], [y], markers[lvl], color=color, ms=6, mfc="none" if lvl != "l2" else color)
        from matplotlib.lines import Line2D
        nk = {r["algorithm"]: sum(1 for k in r["_estimate"].kernels if k.matmul_flops) for r in pts}
        handles = [Line2D([], [], color=_COLORS[i % len(_COLORS)], marker="s", ls="",
                          label=f"{a} ({nk.get(a, 0)} matmul kernel{'s' if nk.get(a, 0) != 1 else ''})")
                   for i, a in enumerate(cfg.algorithms)]
        handles += [Line2D([], [], color="black", marker=m, mfc="none" if lvl != "l2" else "black", ls="",
                           label=f"intensity vs {lvl}") for lvl, m in markers.items()]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(peak / 2000, peak * 2)
        ax.set_xlabel("arithmetic intensity (matmul FLOP / byte)")
        ax.set_ylabel("predicted FLOP/s")
        ax.set_title(f"Roofline: {hw.full_name}\n{problem_text(cfg, cfg.point_seq)}")
        save_figure(fig, path)


def plot_io_vs_sram(data: dict, curves: list[dict], cfg: ReportConfig, path: Path) -> None:
    """data: ``sweep_sram``'s; curves: ``bound_curves(cfg)``."""
    d = data["d"]
    ms = np.array(data["M"], dtype=float)
    with _rc():
        fig, (ax,) = _figure(8, 5.6)
        fig.subplots_adjust(bottom=0.30, top=0.9)
        ax.plot(ms, data["flash1"], "o-", color=_COLORS[0], label="FlashAttention Alg. 1 (counted)")
        ax.plot(ms, data["square_tiling"], "s-", color=_COLORS[1], label="Saha & Ye SquareTiling (counted)")
        for i, c in enumerate(curves):
            if c["upper"] is None:
                ax.plot(c["M"], c["lower"], "-", color="black", lw=1.5, label=c["label"])
            else:
                ax.fill_between(c["M"], c["lower"], c["upper"], color=_COLORS[i], alpha=0.12, lw=0, label=c["label"])
        ax.axvline(d * d, color="grey", ls=":", lw=1)
        ax.text(d * d * 1.05, float(np.max(data["square_tiling"])), "M = d²", fontsize=8, color="dimgray")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("SRAM size M (elements)")
        ax.set_ylabel("HBM accesses (elements)")
        ax.set_title(f"IO vs SRAM size\n{_sram_problem_text(cfg)}", fontsize=9)
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(-0.08, -0.13), frameon=False)
        save_figure(fig, path)


def plot_tiles(grid: np.ndarray, bms: list[int], bns: list[int], hw_name: str, path_name: str, cfg: ReportConfig,
               path: Path) -> None:
    with _rc():
        fig, (ax,) = _figure(5.6, 4.6, right=0.86)
        masked = np.ma.masked_invalid(grid)
        im = ax.imshow(masked, cmap="viridis_r", origin="lower", aspect="auto")
        ax.set_facecolor("#dddddd")
        best = np.nanmin(grid) if np.isfinite(grid).any() else math.nan
        for i in range(len(bms)):
            for j in range(len(bns)):
                v = grid[i, j]
                if math.isnan(v):
                    ax.text(j, i, "×", ha="center", va="center", color="dimgray", fontsize=11)
                else:
                    ax.text(j, i, f"{v:.3g}" + ("\n★" if v == best else ""), ha="center", va="center",
                            color="white" if v > (best * 1.5) else "black", fontsize=7)
        ax.set_xticks(range(len(bns)), [str(b) for b in bns])
        ax.set_yticks(range(len(bms)), [str(b) for b in bms])
        ax.set_xlabel("block_n")
        ax.set_ylabel("block_m")
        ax.grid(False)
        ax.set_title(f"flash2 predicted ms on {hw_name} ({path_name}), best warps/stages per cell\n"
                     f"{problem_text(cfg, cfg.point_seq)}; × = no legal config", fontsize=8)
        fig.colorbar(im, ax=ax, label="ms")
        save_figure(fig, path)


# --- documents ----------------------------------------------------------------------------------------------------

def _table(rows: list[dict], cfg: ReportConfig):
    """The comparison table: one row per (N, hardware, algorithm); the problem columns make the CSV self-contained."""
    import pandas as pd
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    if df.empty:
        return df
    df = df.sort_values(["N", "hardware", "algorithm"], kind="stable").reset_index(drop=True)
    out = pd.DataFrame({
        "N": df["N"], "hardware": df["hardware"], "algorithm": df["algorithm"],
        "time (ms)": df["time_ms"].map(lambda v: f"{v:.4g}"), "TFLOP/s": df["TFLOP/s"].map(lambda v: f"{v:.1f}"),
        "% of peak": df["pct_peak"].map(lambda v: f"{v:.1f}"), "bound": df["bound"],
        "CTAs per kernel / SMs": df["ctas"],
        "SM↔L2 (GB)": (df["sm_bytes"] / 1e9).map(lambda v: f"{v:.4g}"),
        "DRAM (GB)": (df["dram_bytes"] / 1e9).map(lambda v: f"{v:.4g}"), "kernels": df["kernels"]})
    for col, v in (("B", cfg.batch), ("H", cfg.heads), ("d", cfg.head_dim), ("dtype", cfg.dtype),
                   ("causal", cfg.causal)):
        out[col] = v
    return out


_PROBLEM_COLUMNS = ("B", "H", "d", "dtype", "causal")  # in table.csv; the documents state them once


def _kernel_table(rows: list[dict], n: int):
    """One row per kernel at N = n: CTAs vs SMs, occupancy, time, % of peak, bound and what the bound means."""
    import pandas as pd
    from iosim.cost import BOUND_EXPLANATIONS
    out = []
    for r in sorted((r for r in rows if r["N"] == n), key=lambda r: (r["hardware"], r["algorithm"])):
        for k in r["_estimate"].kernels:
            out.append({"hardware": r["hardware"], "algorithm": r["algorithm"], "kernel": k.name,
                        "CTAs / SMs": f"{k.programs} / {r['_sms']}", "CTAs per SM": k.ctas_per_sm,
                        "waves": f"{k.waves:.3g}", "time (ms)": f"{k.time_s * 1e3:.4g}",
                        "% of peak": f"{100 * k.achieved_flops_per_s / r['_peak']:.1f}", "bound": k.bound,
                        "what bounds it": BOUND_EXPLANATIONS.get(k.bound, "see iosim/cost.py")})
    return pd.DataFrame(out)


def time_vs_bytes(rows: list[dict], cfg: ReportConfig) -> list[str]:
    """Where square_tiling beats flash2 although it moves more DRAM bytes, say why with the model's numbers: per
    kernel the compute time (tensor + the softmax not hidden, SM-scaled) against the memory time (DRAM at the
    profile's bandwidth); pipelined kernels take the larger of the two (iosim/cost.py, overlap rule)."""
    if not {"flash2", "square_tiling"} <= set(cfg.algorithms):
        return []
    out = ["Time is not bytes: in pipelined kernels the model overlaps memory traffic with compute and charges "
           "max(compute, memory) per kernel (iosim/cost.py), so extra DRAM bytes cost time only once their DRAM "
           "time exceeds the kernel's compute time (tensor work + the softmax the MMAs do not hide). square_tiling "
           "moves far more DRAM bytes than flash2 (it writes and re-reads exp(QKᵀ)); where the chip's DRAM bandwidth "
           "is high relative to its tensor rate, that traffic hides under compute."]
    n = max(cfg.seqs)
    for hw in cfg.hardware:
        by = {r["algorithm"]: r for r in rows if r["N"] == n and r["hardware"] == hw}
        f2, sq = by.get("flash2"), by.get("square_tiling")
        if not (f2 and sq and sq["time_ms"] < f2["time_ms"] and sq["dram_bytes"] > f2["dram_bytes"]):
            continue

        def parts(r: dict) -> str:
            return "; ".join(f"{k.name}: compute {k.compute_s * k.sm_scale * 1e3:.3g} ms (tensor "
                             f"{k.tensor_s * k.sm_scale * 1e3:.3g}), DRAM {k.dram_s * 1e3:.3g} ms → {k.bound}"
                             for k in r["_estimate"].kernels)
        out.append(
            f"On {hw} at N={_fmt_n(n)}, square_tiling ({sq['time_ms']:.4g} ms) is faster than flash2 "
            f"({f2['time_ms']:.4g} ms) although it moves {sq['dram_bytes'] / f2['dram_bytes']:.0f}× the DRAM bytes "
            f"({sq['dram_bytes'] / 1e9:.4g} GB vs {f2['dram_bytes'] / 1e9:.4g} GB): on this chip "
            "square_tiling's DRAM time stays close to its compute time, while flash2 runs its softmax in the same "
            "kernel as its matmuls "
            "and exposes more of it (FA2 counts a running max and rescale per element; Saha & Ye's Algorithm 1 "
            f"does not). flash2 — {parts(f2)}. square_tiling — {parts(sq)}. Each kernel's bound is the side "
            "(compute = tensor + exposed softmax, or memory) that sets its time, and within it the largest resource.")
    return out


def _md_html_table(df) -> tuple[str, str]:
    return markdown_table(df), df.to_html(index=False, border=0, escape=True)


def _write_documents(out: Path, cfg: ReportConfig, sections: list[tuple[str, str, list[str]]],
                     tables: list[tuple[str, str, object]], failures: list[str]) -> None:
    """sections: (title, text, [png file names]); tables: (title, text, DataFrame). Rewritten after every section."""
    from iosim import cost
    head = (f"Hardware: {', '.join(cfg.hardware)}; algorithms: {', '.join(cfg.algorithms)}; "
            f"{problem_text(cfg)}; N = {', '.join(_fmt_n(n) for n in cfg.seqs)}. Predicted by iosim's cost model "
            "(iosim/cost.py): DRAM bytes are compulsory traffic (no L2 model), tensor efficiency per instruction path "
            f"(wgmma on sm90 {cost.PATH_EFFICIENCY[('sm90', 'wgmma')].value}, measured; others assumed or from "
            "papers, see iosim/cost.py); % of peak = matmul FLOP/s / the datasheet dense tensor peak. No GPU was used.")
    md = ["# iosim report", "", head, ""]
    ht = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>iosim report</title>",
          "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
          "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style>",
          "</head><body>", "<h1>iosim report</h1>", f"<p>{html.escape(head)}</p>"]
    for title, text, pngs in sections:
        paras = text.split("\n\n")
        md += [f"## {title}", ""] + [x for t in paras for x in (t, "")] + [f"![{p}]({p})" for p in pngs] + [""]
        ht += [f"<h2>{html.escape(title)}</h2>"] + [f"<p>{html.escape(t)}</p>" for t in paras]
        ht += [f"<img src='{html.escape(p)}' alt='{html.escape(p)}'>" for p in pngs]
    for title, text, df in tables:
        if df is None or not len(df):
            continue
        df = df.drop(columns=[c for c in _PROBLEM_COLUMNS if c in df.columns])
        m, h = _md_html_table(df)
        paras = [t for t in text.split("\n\n") if t]
        md += [f"## {title}", ""] + [x for t in paras for x in (t, "")] + [m]
        ht += [f"<h2>{html.escape(title)}</h2>"] + [f"<p>{html.escape(t)}</p>" for t in paras] + [h]
    if failures:
        md += ["## Failed points", ""] + [f"- {f}" for f in failures] + [""]
        ht += ["<h2>Failed points</h2>", "<ul>"] + [f"<li>{html.escape(f)}</li>" for f in failures] + ["</ul>"]
    ht += ["</body></html>", ""]
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    atomic_write_bytes(out / "index.html", "\n".join(ht).encode())


def _attempt(fn: Callable[[], object]) -> object:
    """fn(), or the exception it raised: a failed computation fails its own section only (``generate``)."""
    try:
        return fn()
    except Exception as e:
        return e


def _value(x):
    if isinstance(x, Exception):
        raise x
    return x


def generate(cfg: ReportConfig = ReportConfig(), *, progress: bool = True, stream=None,
             jobs: int | None = DEFAULT_JOBS) -> ReportResult:
    """Run every sweep and write the report folder. Returns the files written and the failed points.

    jobs: worker processes for the computations (the bound curves, one tile sweep per hardware, the points of the
    N sweep; ``iosim.parallel.map_ordered``: None = every core, 1 = in this process); the plots and documents are
    drawn in this process afterwards, in order. The files do not depend on ``jobs``."""
    from iosim.hwprofile import load_hardware
    from iosim.parallel import map_ordered
    from iosim.registry import algorithms as registered
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    known = registered()
    bad = [a for a in cfg.algorithms if a not in known]
    if bad:
        raise IosimError(f"unknown algorithm(s) {', '.join(bad)}; known: {', '.join(known)}")
    for h in cfg.hardware:
        load_hardware(h)  # fail early with the profile's message
    if not cfg.seqs or any(n < 1 for n in cfg.seqs):
        raise IosimError("sequence lengths must be positive")
    if cfg.point_seq not in cfg.seqs:  # the rooflines and kernel table show swept points: the N swept nearest to it
        cfg = replace(cfg, point_seq=min(cfg.seqs, key=lambda n: (abs(math.log(n / cfg.point_seq)), n)))
    res = ReportResult(out)
    sections: list[tuple[str, str, list[str]]] = []
    tables: list[tuple[str, str, object]] = []

    def emit(title: str, text: str, pngs: list[str]) -> None:
        sections.append((title, text, pngs))
        res.files.extend(pngs)
        _write_documents(out, cfg, sections, tables, res.failures)

    def guarded(title: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # a failed section leaves the others
            res.failures.append(f"section '{title}' failed: {type(e).__name__}: {e}")
            _write_documents(out, cfg, sections, tables, res.failures)

    # computed first, on the worker processes (the bound curves first: the longest, sympy's certified constants)
    points = sweep_points(cfg)
    tasks = ([partial(bound_curves, cfg)] + [partial(sweep_tiles, cfg, h) for h in cfg.hardware]
             + [partial(sweep_point, cfg, p) for p in points])
    pr = Progress("sweeps", len(tasks), stream, progress)
    curves, *done = map_ordered(_attempt, tasks, jobs, pr.step)
    pr.close()
    tiles, n_results = done[:len(cfg.hardware)], done[len(cfg.hardware):]
    rows, fails = collect([_value(r) for r in n_results])
    res.failures += fails
    table = _table(rows, cfg)
    if len(table):
        atomic_write_bytes(out / "table.csv", table.to_csv(index=False).encode())
        res.files.append("table.csv")
        from iosim.cost import BOUND_EXPLANATIONS
        legend = "; ".join(f"{b} — {BOUND_EXPLANATIONS.get(b, 'see iosim/cost.py')}" for b in sorted(set(table["bound"])))
        tables.append(("Comparison table", f"Problem: {problem_text(cfg)}; N = {', '.join(_fmt_n(n) for n in cfg.seqs)} "
                       "(every row; table.csv repeats it in its B, H, d, dtype, causal columns).\n\n"
                       f"bound = what sets the time of the slowest kernel: {legend}. % of peak = matmul FLOP/s / the "
                       "dense tensor peak; CTAs per kernel / SMs: a grid smaller than the SM count leaves SMs idle."
                       + "".join("\n\n" + t for t in time_vs_bytes(rows, cfg)), table))
        tables.append((f"Kernels at N={_fmt_n(cfg.point_seq)}", f"Problem: {problem_text(cfg, cfg.point_seq)}. "
                       "Each kernel's grid against the SMs, resident CTAs per SM, waves (CTAs / (SMs × CTAs per SM)), "
                       "time, % of the tensor peak, and its bound with what that bound means.",
                       _kernel_table(rows, cfg.point_seq)))

    def s_io():
        plot_io_time(rows, cfg, out / "io_time_vs_n.png")
        emit("IO and time vs N", f"Problem: {problem_text(cfg)}; N = {', '.join(_fmt_n(n) for n in cfg.seqs)}.\n\n"
             "Left: bytes between the SMs and L2 (solid) and compulsory DRAM bytes (dashed) on the "
             "first hardware. Right: predicted time per algorithm and hardware.", ["io_time_vs_n.png"])

    def s_roof():
        pngs = []
        for h in cfg.hardware:
            name = f"roofline_{load_hardware(h).name}.png"
            try:
                plot_roofline(rows, cfg, h, out / name)
                pngs.append(name)
            except IosimError as e:
                res.failures.append(f"roofline {h}: {e}")
        emit("Rooflines", f"Problem: {problem_text(cfg, cfg.point_seq)}.\n\n"
             "Each kernel is three points: matmul FLOPs per DRAM byte (circle), "
             "per SM↔L2 byte (filled square) and per shared-memory operand byte (triangle), at its predicted FLOP/s. "
             "Dashed: tensor peak × instruction-path efficiency.", pngs)

    def s_sram():
        p = Progress("sweep M", 2 * 15, stream, progress)
        data, f = sweep_sram(cfg, p)
        p.close()
        res.failures.extend(f)
        plot_io_vs_sram(data, _value(curves), cfg, out / "io_vs_sram.png")
        emit("IO vs SRAM size", f"Problem: {_sram_problem_text(cfg)}.\n\nHBM accesses as the SRAM size M varies. "
             "Above M = d² FlashAttention's Θ(N²d²/M) is optimal; below it the square tiling's Θ(N²d/√M) is "
             "(Saha & Ye, arXiv 2402.07443, §3). Shaded: each Θ theorem's certified lower and upper constants over "
             "its regime (iosim.symbolic.theorems(); FA1 for d ≤ M ≤ Nd, SquareTiling for M ≤ d²); black: the "
             "lower bound for any algorithm with explicit constants (iosim.symbolic.lower_bounds, .best).",
             ["io_vs_sram.png"])

    def s_tiles():
        pngs = []
        for h, t in zip(cfg.hardware, tiles):
            try:
                grid, bms, bns, path_name = _value(t)
                name = f"tiles_{load_hardware(h).name}.png"
                plot_tiles(grid, bms, bns, load_hardware(h).name, path_name, cfg, out / name)
                pngs.append(name)
            except IosimError as e:
                res.failures.append(f"tiles {h}: {e}")
        emit("Tile heatmaps", f"Problem: {problem_text(cfg, cfg.point_seq)}.\n\n"
             "flash2's predicted time over block_m × block_n (best num_warps ∈ {2,4,8} and "
             "num_stages ∈ {1..4} per cell; ★ = fastest). See `iosim tiles` for the ranking and reasons.", pngs)

    for title, fn in (("IO and time vs N", s_io), ("Rooflines", s_roof), ("IO vs SRAM size", s_sram),
                      ("Tile heatmaps", s_tiles)):
        guarded(title, fn)
    _write_documents(out, cfg, sections, tables, res.failures)
    res.files += ["index.html", "report.md"]
    res.seconds = time.monotonic() - t0
    return res
