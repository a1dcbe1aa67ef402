"""Does this sparse pattern pay off? A sparse-attention method's predicted time against dense FlashAttention, over a
range of densities, per hardware profile: speedup, the break-even density and the pre-pass share of the time
(``iosim sparsity``, the report's sparsity page ``iosim.report_sparsity``, notebooks/sparsity.ipynb).

The methods are the registered algorithms defined in modules under ``iosim.models.sparse`` whose builder takes
``density`` (``sparse_algorithms``); each is predicted by ``iosim.pipeline.predict`` with
``params={"density": d, **params}`` — the whole schedule: pre-pass kernels (scoring, pooling, selection, index
building, permutations and gathers), the sparse attention kernel(s) and the partial-result reductions, each timed by
``iosim.cost`` and summed (kernels launch one after another). density is the method's kept fraction of causal-valid
blocks (``models/sparse/common.py``: the density+seed selection source).

Kernel roles (``kernel_roles``), read from the schedule, not from names: an *attention* kernel runs two chained
GEMMs with a softmax between them (≥ 2 computes with matmul work and one with exp work: QKᵀ, softmax, PV, as
``models/flash2.kv_step``); a scoring GEMM (one matmul, no PV), a pooled gate with a softmax (one matmul), a
softmax/block-sum pass (no matmul), a top-k or a gather (neither) is not. Every other kernel launched before the
last attention kernel is *pre-pass* (it builds what an attention kernel reads: scores, indices, permuted copies —
NSA's selection after its compressed branch included); every other kernel after it is a *reduction* (combining
branches or split partials, restoring an order). A schedule without an attention kernel has its kernel with the most
matmul FLOPs taken as the sparse kernel (said in the notes).

Dense baselines (``BASELINES``), predicted on the same problem and time model: FlashAttention-2 as PyTorch SDPA
launches it (``predict(..., kernel="fa2")``, the primary baseline, on every chip whose path the profile models),
FlashAttention-3 on sm90 (H100/H200: FA3 targets Hopper, arXiv 2407.08608 §1), FlashAttention-4 on sm100 (B200:
arXiv 2603.05451), and iosim's ``flash2`` loop on the chip's native instruction path. The last one is the
like-for-like dense kernel: a family's own kernels are built as algorithms and timed on the native path (wgmma on
Hopper), while SDPA's FA2 runs mma.sync there (``iosim.cost.PATH_EFFICIENCY``: 0.406 vs 0.708 of the H100 peak), so
a sparse kernel can beat FA2 at density 1 by its instruction path alone; the speedup over flash2 is what the
sparsity itself buys. Where the fa2 preset cannot run (V100, Ascend) flash2 is the primary baseline. The column
"attn FLOPs / <primary>" (the method's attention-kernel matmul FLOPs over the baseline's) shows the work kept.

Break-even (``break_even``): speedup = baseline time / method time crosses 1 between two sampled densities; the
crossing is interpolated linearly in the method's time between them (exact when the time is linear in density) and
said to be interpolated; "never" when the method is slower at every sampled density, "always" when it is faster at
every one (up to the largest density sampled).

Known bias, said in the curve's notes when it shows: ``iosim.cost.program_steps`` cannot evaluate table lookups, so
the CTAs of a sparse kernel whose KV loop bound is a table (every ``kernels.listed_fwd_kernel``) are timed as equal
work, while the dense causal kernels are list-scheduled by their real work; on a small grid (4K tokens, 16 heads on an
H100: 25% at density 1) that favours the sparse kernel.

Time model: ``l2=False`` by default (SM↔L2 counts, DRAM taken as compulsory traffic; ~1 s for 11 densities at 32K
tokens), ``l2=True`` runs the L2 simulation for every point (tens of seconds per point at 128K).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Mapping, Sequence

from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem

SPARSE_PACKAGE = "iosim.models.sparse"
DEFAULT_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PREPASS, SPARSE, REDUCTION = "pre-pass", "sparse", "reduction"

BASELINES: tuple[tuple[str, tuple[str, ...] | None, str], ...] = (
    ("fa2", None, "FlashAttention-2 as PyTorch SDPA launches it (iosim.presets fa2: mma.sync)"),
    ("fa3", ("sm90",), "FlashAttention-3 (Hopper only: arXiv 2407.08608 §1; iosim.presets fa3)"),
    ("fa4", ("sm100",), "FlashAttention-4 (Blackwell sm100: arXiv 2603.05451; iosim.presets fa4)"),
    ("flash2", None, "iosim's FA2 loop (algorithm flash2) on the chip's native instruction path, the path a sparse "
                     "family's own kernels are timed on: the like-for-like dense kernel"),
)
"""(name, the archs it runs on (None: wherever the profile models its path), what it is). fa2, fa3, fa4 are kernel
presets (``predict(..., kernel=name)``); flash2 is the algorithm."""
TIE_REL = 1e-9
"""A method time within this relative distance of the baseline's ties it (an exact crossing): the same kernel at
density 1 reproduces the dense time up to float rounding."""
PRIMARY = "fa2"
TAIL_GAP = 0.05


# --- which algorithms, which kernels ---------------------------------------------------------------------------------

def is_sparse_algorithm(alg) -> bool:
    """Defined in a module under ``iosim.models.sparse`` and built with a ``density`` parameter."""
    mod = getattr(alg.build, "__module__", "") or ""
    if not (mod == SPARSE_PACKAGE or mod.startswith(SPARSE_PACKAGE + ".")):
        return False
    try:
        return "density" in inspect.signature(alg.build).parameters
    except (TypeError, ValueError):
        return False


def sparse_algorithms() -> dict:
    """name → ``iosim.registry.Algorithm`` of every registered sparse method (``is_sparse_algorithm``), sorted."""
    from iosim.registry import algorithms
    return {n: a for n, a in algorithms().items() if is_sparse_algorithm(a)}


def check_algorithm(name: str):
    """The sparse method ``name``, or a one-line IosimError naming the registered ones."""
    algs = sparse_algorithms()
    if name not in algs:
        from iosim.registry import algorithms
        known = ", ".join(algs) or "none registered yet (models/sparse/ holds no family module)"
        why = "is not a sparse method (no density parameter in a models/sparse module)" if name in algorithms() \
            else "is not a registered algorithm"
        raise IosimError(f"--algorithm {name} {why}; sparse methods: {known}")
    return algs[name]


def parse_densities(text) -> tuple[float, ...]:
    """'0.05,0.1,1' (or a sequence of numbers) → sorted unique densities in [0, 1]; one-line error otherwise."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(x == "" for x in items):
        raise IosimError(f"--densities {text!r}: give comma-separated densities in [0, 1], e.g. 0.05,0.1,0.5,1")
    out = []
    for x in items:
        try:
            v = float(x)
        except (TypeError, ValueError):
            raise IosimError(f"--densities: {x!r} is not a number; give densities in [0, 1], e.g. 0.05,0.1,0.5,1") \
                from None
        if not math.isfinite(v) or v < 0 or v > 1:
            raise IosimError(f"--densities: {x} is outside [0, 1]; a density is the kept fraction of causal-valid "
                             "blocks (1 = dense)")
        out.append(v)
    return tuple(sorted(set(out)))


def is_attention_kernel(kernel) -> bool:
    """Two chained GEMMs with a softmax: ≥ 2 computes with matmul work and ≥ 1 with exp work."""
    from iosim.schedule import Compute, walk
    comps = [st for st in walk(kernel.body) if isinstance(st, Compute)]
    return sum(1 for c in comps if c.matmul) >= 2 and any(c.exp for c in comps)


def kernel_roles(schedule, counts=None) -> tuple[tuple[str, ...], str | None]:
    """(role of each kernel in launch order: PREPASS, SPARSE or REDUCTION; a note when the rule had no attention
    kernel to go by) — the module docstring's rule."""
    ks = schedule.kernels
    attn = [i for i, k in enumerate(ks) if is_attention_kernel(k)]
    note = None
    if not attn:
        from iosim.counts import count
        c = counts or count(schedule)
        flops = [k.matmul_flops for k in c.kernels]
        attn = [max(range(len(ks)), key=lambda i: (flops[i], -i))]
        note = (f"no kernel runs QKᵀ, softmax and PV together: {ks[attn[0]].name} (the most matmul FLOPs) is taken "
                "as the sparse kernel")
    last = max(attn)
    roles = tuple(SPARSE if i in attn else (PREPASS if i < last else REDUCTION) for i in range(len(ks)))
    return roles, note


# --- results -----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelShare:
    name: str
    role: str
    time_s: float
    bound: str
    tail_efficiency: float = 1.0  # iosim.cost.tail_efficiency of the kernel's CTAs on the SMs


@dataclass(frozen=True)
class Point:
    """The method at one density: its time split by kernel role."""

    density: float
    time_s: float
    prepass_s: float
    sparse_s: float
    reduction_s: float
    attention_flops: int  # matmul FLOPs of its attention (SPARSE) kernels
    matmul_flops: int
    sm_bytes: int
    dram_bytes: int | None  # None without the L2 model
    bound: str
    kernels: tuple[KernelShare, ...]
    speedup: Mapping[str, float] = field(default_factory=dict)  # baseline name → baseline time / time_s

    @property
    def prepass_share(self) -> float:
        return self.prepass_s / self.time_s if self.time_s else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speedup"] = dict(self.speedup)
        d["prepass_share"] = self.prepass_share
        return d


@dataclass(frozen=True)
class Baseline:
    name: str  # fa2, fa3, fa4, or flash2 (iosim's FA2 loop where the fa2 preset cannot run)
    time_s: float
    matmul_flops: int
    what: str
    tail_efficiency: float = 1.0  # of its slowest kernel


@dataclass(frozen=True)
class BreakEven:
    """Where speedup over ``baseline`` crosses 1. kind: "interpolated" (density between two samples, linear in
    time), "exact" (a sampled density ties), "never" (slower at every sampled density), "always" (faster at every
    one); density None for never/always. crossings: every crossing (density, "down" = stops paying off as density
    grows, "up" = starts)."""

    baseline: str
    kind: str
    density: float | None
    crossings: tuple[tuple[float, str], ...]
    text: str


@dataclass(frozen=True)
class Curve:
    """One method on one hardware profile over the densities."""

    algorithm: str
    hardware: str
    problem: Problem
    params: Mapping[str, object]
    l2: bool
    baselines: tuple[Baseline, ...]
    points: tuple[Point, ...]
    break_even: tuple[BreakEven, ...]
    roles: tuple[tuple[str, str], ...]  # (kernel name, role) in launch order
    notes: tuple[str, ...] = ()

    def baseline(self, name: str = PRIMARY) -> Baseline | None:
        return next((b for b in self.baselines if b.name == name), None) or \
            (self.baselines[0] if name == PRIMARY and self.baselines else None)

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "hardware": self.hardware, "problem": asdict(self.problem),
                "params": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                           for k, v in self.params.items()},
                "time_model": time_model_text(self.l2), "l2": self.l2,
                "baselines": [asdict(b) for b in self.baselines],
                "points": [p.to_dict() for p in self.points],
                "break_even": [asdict(b) for b in self.break_even],
                "kernel_roles": [{"kernel": k, "role": r} for k, r in self.roles], "notes": list(self.notes)}


def time_model_text(l2: bool) -> str:
    return ("full model: L2 simulated (iosim.memory.hierarchy), DRAM bytes from it" if l2 else
            "no L2 model: SM↔L2 counts, DRAM taken as compulsory traffic (each tensor once; --l2 simulates the L2)")


# --- break-even --------------------------------------------------------------------------------------------------------

def break_even(densities: Sequence[float], times_s: Sequence[float], base_s: float, baseline: str = PRIMARY) -> BreakEven:
    """Where the method (``times_s`` at ``densities``, ascending) stops (or starts) beating a baseline of ``base_s``:
    between samples i and i+1 with t_i < base ≤ t_{i+1} (or the reverse) the density where the line through
    (d_i, t_i), (d_{i+1}, t_{i+1}) meets base; a sample whose time equals base is an exact crossing."""
    ds, ts = [float(d) for d in densities], [float(t) for t in times_s]
    if len(ds) != len(ts) or not ds:
        raise IosimError(f"break_even: {len(ds)} densities for {len(ts)} times; give one time per density")
    if any(b <= a for a, b in zip(ds, ds[1:])):
        raise IosimError("break_even: densities must be strictly ascending")
    if not (base_s > 0 and math.isfinite(base_s)) or any(not (t > 0 and math.isfinite(t)) for t in ts):
        raise IosimError("break_even: times must be positive and finite")
    f = [0.0 if abs(t - base_s) <= TIE_REL * base_s else t - base_s for t in ts]  # < 0: the method pays off
    cross: list[tuple[float, str]] = []
    for i, fi in enumerate(f):
        if fi == 0:
            before = f[i - 1] if i else None
            after = f[i + 1] if i + 1 < len(f) else None
            direction = "down" if (before is not None and before < 0) or (after is not None and after > 0) else "up"
            cross.append((ds[i], direction))
        elif i + 1 < len(f) and f[i + 1] != 0 and (fi < 0) != (f[i + 1] < 0):
            d = ds[i] + (ds[i + 1] - ds[i]) * (-fi) / (f[i + 1] - fi)
            cross.append((d, "down" if fi < 0 else "up"))
    lo, hi = ds[0], ds[-1]
    if not cross:
        if f[0] < 0:
            return BreakEven(baseline, "always", None, (), f"always: faster than {baseline} at every density from "
                             f"{lo:g} to {hi:g} (no crossing in the sampled range)")
        return BreakEven(baseline, "never", None, (), f"never: slower than {baseline} at every density from {lo:g} "
                         f"to {hi:g} (no crossing in the sampled range)")
    d, direction = next((c for c in cross if c[1] == "down"), cross[0])  # where it stops paying off, if it does
    exact = d in ds
    kind = "exact" if exact else "interpolated"
    if exact:
        how = f"a sampled density: the method ties {baseline} there"
    else:
        i = max(j for j, x in enumerate(ds) if x < d)
        how = f"interpolated linearly in time between densities {ds[i]:g} and {ds[i + 1]:g}"
    side = "below" if direction == "down" else "above"
    text = f"{d:.3g} ({how}); the method beats {baseline} {side} it"
    if len(cross) > 1:
        text += "; other crossings at " + ", ".join(f"{c:.3g} ({w})" for c, w in cross if c != d)
    return BreakEven(baseline, kind, d, tuple(cross), text)


# --- predictions -------------------------------------------------------------------------------------------------------

def _quiet_predict(*args, **kw):
    from iosim.pipeline import predict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memory / launch-limit warnings repeat per point; the schedule notes keep them
        return predict(*args, **kw)


def method_point(hardware, problem: Problem, config: KernelConfig | None, algorithm: str, params: Mapping,
                 l2: bool, density: float) -> tuple[Point, tuple[tuple[str, str], ...], str | None]:
    """(the method at ``density``, its (kernel, role) list, the roles note)."""
    pr = _quiet_predict(hardware, problem, config, algorithm, l2=l2, params={**dict(params), "density": density},
                        progress=False)
    roles, note = kernel_roles(pr.schedule, pr.counts)
    shares = tuple(KernelShare(k.name, r, k.time_s, k.bound, k.tail_efficiency)
                   for k, r in zip(pr.time.kernels, roles))
    by = {r: sum(s.time_s for s in shares if s.role == r) for r in (PREPASS, SPARSE, REDUCTION)}
    attn = sum(kc.matmul_flops for kc, r in zip(pr.counts.kernels, roles) if r == SPARSE)
    c = pr.counts
    dram = None if pr.dram_read_bytes is None else pr.dram_read_bytes + pr.dram_write_bytes
    pt = Point(float(density), pr.time_s, by[PREPASS], by[SPARSE], by[REDUCTION], attn, c.matmul_flops,
               c.sm_read_bytes + c.sm_write_bytes, dram, pr.time.bound, shares)
    return pt, tuple((k.name, r) for k, r in zip(pr.time.kernels, roles)), note


def baseline_point(hardware, problem: Problem, l2: bool, name: str) -> Baseline | str:
    """The dense baseline ``name`` (a BASELINES preset), or the reason it does not run on this profile."""
    from iosim.hwprofile import load_hardware
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    archs, what = next((a, w) for n, a, w in BASELINES if n == name)
    if archs is not None and hw.arch not in archs:
        return f"{name} runs on {'/'.join(archs)}, not {hw.name} ({hw.arch})"
    try:
        if name == "flash2":
            pr = _quiet_predict(hw, problem, KernelConfig(), "flash2", l2=l2, progress=False)
        else:
            pr = _quiet_predict(hw, problem, KernelConfig(), kernel=name, l2=l2, progress=False)
    except IosimError as e:
        return f"{name} cannot run here: {e}"
    main = max(pr.time.kernels, key=lambda k: k.time_s)
    return Baseline(name, pr.time_s, pr.counts.matmul_flops, what, main.tail_efficiency)


def _task(hardware, problem, config, algorithm, params, l2, item):
    kind, value = item
    if kind == "base":
        return baseline_point(hardware, problem, l2, value)
    return method_point(hardware, problem, config, algorithm, params, l2, value)


def baselines(hardware, problem: Problem, l2: bool = False) -> list[Baseline | str]:
    """Every BASELINES entry on this profile: a Baseline, or the reason it does not run (for ``curve``)."""
    return [baseline_point(hardware, problem, l2, n) for n, _, _ in BASELINES]


def curve(hardware, problem: Problem, algorithm: str, densities: Sequence[float] = DEFAULT_DENSITIES,
          params: Mapping | None = None, *, l2: bool = False, config: KernelConfig | None = None,
          jobs: int | None = 1, progress=None, dense: Sequence | None = None) -> Curve:
    """The method ``algorithm`` over ``densities`` on one hardware profile (name, path or Hardware), against the
    dense baselines that run there. params: the method's other parameters (not density); jobs: worker processes
    (``iosim.parallel.map_ordered``: one density or baseline per task; the result does not depend on it); dense:
    ``baselines(hardware, problem, l2)`` computed already (several methods on one problem share them)."""
    from iosim.hwprofile import load_hardware
    from iosim.parallel import map_ordered
    from iosim.pipeline import check_params
    check_algorithm(algorithm)
    params = dict(params or {})
    if "density" in params:
        raise IosimError("give the densities with --densities (densities=...), not --param density")
    check_params(algorithm, params)
    ds = parse_densities(densities)
    hw = load_hardware(hardware) if not hasattr(hardware, "arch") else hardware
    items = ([] if dense is not None else [("base", n) for n, _, _ in BASELINES]) + [("point", d) for d in ds]
    out = map_ordered(partial(_task, hw, problem, config, algorithm, params, l2), items, jobs, progress)
    if dense is not None:
        if len(dense) != len(BASELINES):
            raise IosimError(f"curve: dense has {len(dense)} entries; give baselines(hardware, problem, l2)")
        out = list(dense) + out
    bases = [b for b in out[:len(BASELINES)] if isinstance(b, Baseline)]
    notes = [b for b in out[:len(BASELINES)] if isinstance(b, str)]
    if not bases:
        raise IosimError(f"no dense baseline runs on {hw.name}: " + "; ".join(notes))
    pts = []
    roles: tuple = ()
    for pt, rl, note in out[len(BASELINES):]:
        pts.append(replace(pt, speedup={b.name: b.time_s / pt.time_s for b in bases}))
        if len(rl) > len(roles):
            roles = rl
        if note and note not in notes:
            notes.append(note)
    ref = next((b for b in bases if b.name == "flash2"), None)
    tails = [k.tail_efficiency for p in pts for k in p.kernels if k.role == SPARSE]
    if ref is not None and problem.causal and tails and max(tails) > ref.tail_efficiency + TAIL_GAP:
        notes.append(f"tail: the dense flash2 kernel's causal CTAs are list-scheduled by their work (tail efficiency "
                     f"{ref.tail_efficiency:.0%}) while the sparse kernel's reach {max(tails):.0%}: iosim.cost."
                     "program_steps reads no schedule tables, so CTAs whose KV loop is a table lookup are timed as "
                     "equal work — optimistic for the sparse kernel on a small grid")
    be = tuple(break_even(ds, [p.time_s for p in pts], b.time_s, b.name) for b in bases)
    return Curve(algorithm, hw.name, problem, params, l2, tuple(bases), tuple(pts), be, roles, tuple(notes))


def curves(hardware: Sequence, problem_of, algorithm: str, densities: Sequence[float] = DEFAULT_DENSITIES,
           params: Mapping | None = None, **kw) -> list[Curve]:
    """``curve`` per hardware profile; problem_of(hardware name) → its Problem (the dtype may differ per chip), or
    one Problem for all."""
    return [curve(h, problem_of(h) if callable(problem_of) else problem_of, algorithm, densities, params, **kw)
            for h in hardware]


# --- text --------------------------------------------------------------------------------------------------------------

def _ms(t: float) -> str:
    return f"{t * 1e3:.4g}"


def format_curve(c: Curve) -> str:
    from iosim.hwprofile import load_hardware
    from iosim.textfmt import format_table
    p = c.problem
    try:
        full = load_hardware(c.hardware).full_name
    except IosimError:
        full = c.hardware
    par = ", ".join(f"{k}={v}" for k, v in c.params.items()) or "paper defaults"
    lines = [f"{c.algorithm} on {full} ({c.hardware}): B={p.batch} H={p.heads} Hkv={p.kv_heads} Nq={p.seq_q} "
             f"Nkv={p.seq_kv} d={p.head_dim} {p.dtype}{' causal' if p.causal else ' non-causal'}; params: {par}",
             f"time model: {time_model_text(c.l2)}",
             "dense baselines: " + (", ".join(f"{b.name} {_ms(b.time_s)} ms" for b in c.baselines) or "none"), ""]
    names = [b.name for b in c.baselines]
    prim = c.baseline()
    head = ["density", "method ms", "pre-pass ms", "sparse ms", "reduce ms", "pre-pass %",
            f"attn FLOPs / {prim.name}" if prim else "attn FLOPs"] + [f"vs {n}" for n in names] + ["bound"]
    rows = []
    for pt in c.points:
        frac = f"{pt.attention_flops / prim.matmul_flops:.3f}" if prim and prim.matmul_flops else "-"
        rows.append([f"{pt.density:g}", _ms(pt.time_s), _ms(pt.prepass_s), _ms(pt.sparse_s), _ms(pt.reduction_s),
                     f"{100 * pt.prepass_share:.1f}", frac] + [f"{pt.speedup[n]:.3g}×" for n in names] + [pt.bound])
    lines.append(format_table(head, rows, "r" * (len(head) - 1) + "l").rstrip("\n"))
    for b in c.break_even:
        lines.append(f"break-even vs {b.baseline}: {b.text}")
    groups = {r: [k for k, rr in c.roles if rr == r] for r in (PREPASS, SPARSE, REDUCTION)}
    lines.append("kernels: " + "; ".join(f"{r}: {', '.join(ks) or '-'}" for r, ks in groups.items())
                 + " (roles: iosim.sparsity.kernel_roles)")
    lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def format_summary(cs: Sequence[Curve]) -> str:
    """One line per hardware: the break-even density against each baseline."""
    from iosim.textfmt import format_table
    rows = []
    for c in cs:
        for b in c.break_even:
            val = f"{b.density:.3g}" if b.density is not None else b.kind
            rows.append([c.hardware, b.baseline, f"{_ms(c.baseline(b.baseline).time_s)} ms", val, b.kind])
    return "break-even density per hardware:\n" + format_table(
        ["hardware", "baseline", "dense time", "break-even", "how"], rows, "llrrl", indent="  ")


def to_json(cs: Sequence[Curve], densities: Sequence[float]) -> dict:
    c0 = cs[0]
    return {"algorithm": c0.algorithm, "densities": list(densities), "l2": c0.l2, "time_model": time_model_text(c0.l2),
            "curves": [c.to_dict() for c in cs]}
