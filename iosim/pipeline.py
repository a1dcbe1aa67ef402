"""The pipeline: hardware + problem + kernel config → schedule → counts → L2/DRAM → cost (``iosim.cost``).

``predict`` runs the hierarchy model (``iosim.memory.hierarchy``: layout, CTA scheduler, shared L2) unless ``l2=False``,
which gives the SRAM ↔ HBM-only model (DRAM fields None). The L2 is simulated exactly on a sample of its sets
(``iosim.memory.l2``: exact whenever every access covers whole aligned groups of the sampling stride, which holds for Q, K,
V and O tiles; the result says so). The trace is streamed window by window of the CTA timeline, so memory stays
bounded (under half a GiB at 128K tokens) and time grows with the byte ranges: ~0.1 s at the CLI's default sizes,
about 20 s for FA2 causal GQA 32/8 at 128K tokens, d=128, on the H100 profile (benchmarks/bench_long_context.py).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, replace
from numbers import Real

from iosim.cost import TimeEstimate, estimate
from iosim.counts import Counts, KernelCounts, count
from iosim.errors import IosimError, IosimWarning
from iosim.memory.hierarchy import HierarchyResult, simulate_schedule
from iosim import maskspec
from iosim.hwprofile import Hardware, load_hardware
from iosim.memory.l2 import L2Geometry
from iosim.passes import Pass, backward_of, concat_estimates, concat_schedules, pass_totals, passes_of, pin_launch
from iosim.limits import prediction_warnings
from iosim.problem import KernelConfig, Problem
from iosim.registry import get
from iosim.schedule import Schedule


@dataclass(frozen=True)
class Prediction:
    hardware: Hardware
    schedule: Schedule
    counts: Counts
    dram_read_bytes: int | None = None
    dram_write_bytes: int | None = None
    time_s: float | None = None
    l2: HierarchyResult | None = None
    kernel_preset: str | None = None
    time: TimeEstimate | None = None
    direction: str = "fwd"  # the pass: "fwd", "bwd" or "fwd+bwd" (``iosim.passes``)
    passes: tuple[Pass, ...] = ()  # the passes in launch order, each with its algorithm, config and kernels
    mask: dict | None = None  # a mask by name (``iosim.maskspec.describe``): spec, blocks, densities
    varlen: dict | None = None  # a packed varlen batch: sequences, tokens, longest (``predict(varlen=...)``)
    paged: dict | None = None  # a paged KV cache: page size, pages, seed (``predict(page_size=...)``)

    @property
    def l2_hit_rate(self) -> float | None:
        return None if self.l2 is None else self.l2.l2.hit_rate

    def to_dict(self) -> dict:
        """The `iosim predict --json` object (the CLI contract): totals plus the same fields per kernel."""
        s = self.schedule

        l2k = {k.name: k for k in self.l2.kernels} if self.l2 is not None else {}
        tk = {k.name: k for k in self.time.kernels} if self.time is not None else {}

        def kernel_dict(k: KernelCounts) -> dict:
            h = l2k.get(k.name)
            return {
                "name": k.name, "programs": k.programs,
                "flops": k.flops, "matmul_flops": k.matmul_flops, "exp_ops": k.exp_ops, "other_flops": k.other_flops,
                "sm_read_bytes": k.sm_read_bytes, "sm_write_bytes": k.sm_write_bytes,
                "read_bytes_by_tensor": dict(k.read_bytes), "write_bytes_by_tensor": dict(k.write_bytes),
                "dram_read_bytes": h.dram_read_bytes if h else None,
                "dram_write_bytes": h.dram_write_bytes if h else None,
                "l2_hit_rate": h.l2_hit_rate if h else None,
                "time_s": tk[k.name].time_s if k.name in tk else None,
                "bound": tk[k.name].bound if k.name in tk else None,
                "sram_bytes_per_cta": k.sram_bytes,
                "occupancy": None if h is None else {
                    "ctas_per_sm": h.occupancy.ctas_per_sm, "limiter": h.occupancy.limiter,
                    "regs_per_thread": h.occupancy.regs_per_thread, "regs_source": h.occupancy.regs_source,
                    "concurrent_ctas": h.occupancy.slots, "timeline_ticks": h.ticks},
            }

        c = self.counts
        kernels = [kernel_dict(k) for k in c.kernels]
        return {
            "algorithm": s.algorithm,
            "pass": self.direction,
            "hardware": self.hardware.name,
            "problem": asdict(s.problem),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s.config).items()},
            "flops": c.flops, "matmul_flops": c.matmul_flops, "exp_ops": c.exp_ops, "other_flops": c.other_flops,
            "sm_read_bytes": c.sm_read_bytes, "sm_write_bytes": c.sm_write_bytes,
            "read_bytes_by_tensor": c.tensor_bytes("read"), "write_bytes_by_tensor": c.tensor_bytes("write"),
            "dram_read_bytes": self.dram_read_bytes, "dram_write_bytes": self.dram_write_bytes,
            "l2_hit_rate": self.l2_hit_rate,
            "time_s": self.time_s,
            "bound": None if self.time is None else self.time.bound,
            "achieved_flops_per_s": None if self.time is None else self.time.achieved_flops_per_s,
            "time": None if self.time is None else self.time.to_dict(),
            "kernel_preset": self.kernel_preset,
            "l2": None if self.l2 is None else self._l2_dict(),
            "notes": list(s.notes) + (list(self.l2.notes) if self.l2 is not None else []),
            "kernels": kernels,
            "passes": pass_totals(kernels, self.passes),
            "mask": self.mask,
            "varlen": self.varlen,
            "paged": self.paged,
        }


    def _l2_dict(self) -> dict:
        g, r = self.l2.geometry, self.l2.l2
        return {
            "size_bytes": g.size_bytes, "line_bytes": g.line_bytes, "sector_bytes": g.sector_bytes, "ways": g.ways,
            "sets": g.sets, "partitions": g.partitions, "sharing": g.sharing, "policy": g.policy, "hash": g.hash,
            "line_accesses": r.accesses, "hits": r.hits, "misses": r.misses, "evictions": r.evictions,
            "sampling_stride": r.stride, "exact": r.exact,
        }


def build_schedule(algorithm: str, problem: Problem, config: KernelConfig, hardware: Hardware | None) -> Schedule:
    return get(algorithm).build(problem, config, hardware)


MAX_CTA_JITTER = 2.0  # σ of log CTA speed: 2 already spreads speeds e^±2 (≈ 55×) over ±1σ; beyond it is no GPU

def _check_args(hardware, problem, config, algorithm: str, cta_jitter, l2_geometry) -> tuple[Hardware, KernelConfig]:
    """predict's arguments: a profile name or path loads the profile, config None is KernelConfig(); a wrong type
    (swapped arguments) is named."""
    if isinstance(hardware, (str, os.PathLike)):
        hardware = load_hardware(hardware)
    config = KernelConfig() if config is None else config
    wrong = [f"{name} must be {want}, got {type(v).__name__}" for name, v, cls, want in (
        ("hardware", hardware, Hardware, "a Hardware or a profile name or path"), ("problem", problem, Problem, "a Problem"),
        ("config", config, KernelConfig, "a KernelConfig or None"), ("algorithm", algorithm, str, "an algorithm name"),
        ("l2_geometry", l2_geometry, (L2Geometry, type(None)), "an L2Geometry or None")) if not isinstance(v, cls)]
    if wrong:
        raise IosimError("predict(hardware, problem, config, algorithm): " + "; ".join(wrong))
    if cta_jitter is not None and not (isinstance(cta_jitter, Real) and 0 <= cta_jitter <= MAX_CTA_JITTER):
        raise IosimError(f"cta_jitter must be a number in [0, {MAX_CTA_JITTER}] (0 = lockstep; CTA speeds are "
                         f"exp(jitter·z), the calibrated values are 0.03-0.15), got {cta_jitter!r} (--cta-jitter)")
    return hardware, config


@dataclass(frozen=True)
class _Pass:
    """One pass as built: its schedule and the preset's launch facts that the L2 timeline and the cost read."""

    name: str
    schedule: Schedule
    regs: int | None = None
    persistent: bool = False
    path: str | None = None
    prefetch: bool = False


MASK_HONOURED = ("--kernel flex, --kernel iosim-triton or --algorithm block_sparse (every mask); --kernel fa2 or "
                 "--algorithm flash2 (causal, sliding:W: FA2's local window; causal:top-left when N_q ≥ N_kv); "
                 "any algorithm (causal)")


def _mask_args(spec, problem: Problem, config: KernelConfig, algorithm: str, kernel: str | None) -> tuple:
    """(block_mask, build keywords) that make ``algorithm`` / preset ``kernel`` run the named mask ``spec``
    (``iosim.maskspec``): the flex preset gets FlexAttention's exact tables, block-sparse kernels the tiles holding a
    visible element, FA2 its local window; a causal mask is ``Problem.causal`` (set by ``predict``)."""
    import inspect
    if kernel == "flex":
        return maskspec.flex_tables(spec, problem), {}
    window = maskspec.fa2_window(spec, problem.seq_q, problem.seq_kv)
    if window == (-1, 0):
        return None, {}
    if kernel == "iosim-triton" or (kernel is None and algorithm == "block_sparse"):
        from iosim.models.flash2 import default_tiles
        dm, dn = default_tiles(problem.head_dim)  # block_sparse's own defaults; the preset's config has its tiles
        bm, bn = config.block_m or dm, config.block_n or dn
        m = maskspec.tile_mask(spec, problem, bm, bn)
        return (m, bm, bn) if kernel else m, {}
    if window is not None and kernel in (None, "fa2") and "window" in inspect.signature(get(algorithm).build).parameters:
        return None, {"window": window}
    who = f"--kernel {kernel} (here {algorithm})" if kernel else f"--algorithm {algorithm}"
    why = ", whose model takes no local window" if window is not None else ""
    raise IosimError(f"mask {spec.text!r} cannot run on {who}{why}; use {MASK_HONOURED}")


VARLEN_RUNS = "--kernel fa2 or --algorithm flash2 (FA2's mha_varlen_fwd)"
PAGED_RUNS = "--kernel fa2 or --algorithm splitkv (FA2's mha_fwd_kvcache)"


def _layout_kernel(layout: dict, problem: Problem, config: KernelConfig, hardware: Hardware, algorithm: str,
                   kernel: str | None):
    """(algorithm, config, preset or None) that run a varlen batch (FA2's plain varlen forward with the fa2 tiles and
    orders) or a paged KV cache (FA2's split-KV kernel, which mha_fwd_kvcache always runs, with its split tiles)."""
    from iosim.presets import PRESETS
    varlen = "seqlens_q" in layout
    model, want, runs = ("flash2_varlen", ("flash2", "flash2_varlen"), VARLEN_RUNS) if varlen else \
        ("splitkv", ("splitkv",), PAGED_RUNS)
    if kernel not in (None, "fa2") or (kernel is None and algorithm not in want):
        who = f"--kernel {kernel}" if kernel else f"--algorithm {algorithm}"
        raise IosimError(f"{'varlen' if varlen else 'a paged KV cache (page_size)'} cannot run on {who}; use {runs}")
    if kernel is None:
        return model, config, None
    fa2 = PRESETS["fa2"]
    if varlen:
        return model, fa2.config(problem, hardware, config), fa2
    from iosim.models.splitkv import split_tiles
    bm, bn = split_tiles(problem.head_dim)
    return model, replace(fa2.config(problem, hardware, config), block_m=bm, block_n=bn, num_warps=4), \
        replace(fa2, algorithm=model, regs_per_thread=None, launch=None)


def _varlen_mask(spec: maskspec.MaskSpec, problem: Problem) -> None:
    """FA2's varlen forward takes a causal mask or a local window (per sequence, bottom-right): nothing else."""
    if maskspec.fa2_window(spec, problem.seq_q, problem.seq_kv) is None or \
            any(isinstance(e, maskspec.Causal) and e.top_left for e in spec.elements):
        raise IosimError(f"mask {spec.text!r} cannot run on a varlen batch: FA2's varlen forward takes causal or "
                         "sliding:W (a window per sequence); give one of those, or drop varlen")


def check_params(algorithm: str, params: dict) -> None:
    """One-line error for method parameters (``--param KEY=VALUE``) the algorithm's builder does not take."""
    import inspect
    sig = inspect.signature(get(algorithm).build).parameters
    known = [n for n, q in sig.items() if q.kind == q.KEYWORD_ONLY or (q.default is not q.empty and
                                                                       n not in ("hw", "hardware"))]
    bad = [k for k in params if k not in known]
    if bad:
        raise IosimError(f"--algorithm {algorithm} takes no parameter {', '.join(map(repr, bad))}; its parameters: "
                         f"{', '.join(known) or 'none'}")


def _build_pass(name: str, hardware: Hardware, problem: Problem, config: KernelConfig, algorithm: str,
                kernel: str | None, block_mask, layout: dict, params: dict | None = None) -> _Pass:
    """The forward ("fwd") or the backward ("bwd"): a preset decides both, else ``iosim.passes.BACKWARD``;
    layout: the build keywords of a varlen batch or a paged KV cache (forward only)."""
    pre, kw = None, {}
    if layout:
        if name == "bwd":
            raise IosimError("varlen and paged KV are modelled for the forward only; use --pass fwd")
        algorithm, config, pre = _layout_kernel(layout, problem, config, hardware, algorithm, kernel)
        if "seqlens_q" in layout and isinstance(block_mask, maskspec.MaskSpec):
            _varlen_mask(block_mask, problem)
    elif kernel is not None:
        from iosim.presets import apply
        algorithm, config, pre = apply(kernel, problem, hardware, config, direction=name)
    elif name == "bwd":
        algorithm = backward_of(algorithm)
    if isinstance(block_mask, maskspec.MaskSpec):
        block_mask, kw = _mask_args(block_mask, problem, config, algorithm, kernel)
    kw |= layout
    if params:
        if pre is not None and pre.schedule is not None:
            raise IosimError(f"--kernel {kernel} takes no method parameters (--param); give --algorithm instead")
        check_params(algorithm, params)
        kw |= params
    if pre is not None and pre.schedule is not None:
        schedule = pre.schedule(problem, config, hardware, block_mask)
    elif block_mask is not None or kw:
        kw = kw if block_mask is None else kw | {"block_mask": block_mask}
        schedule = get(algorithm).build(problem, config, hardware, **kw)
    else:
        schedule = build_schedule(algorithm, problem, config, hardware)
    if pre is None:
        return _Pass(name, schedule)
    return _Pass(name, schedule, pre.regs_per_thread, pre.persistent, pre.instruction_path, pre.prefetch)


def _layout(varlen, varlen_kv, page_size, page_seed) -> dict:
    """The build keywords of ``predict``'s varlen / page_size arguments."""
    if varlen is None:
        if varlen_kv is not None:
            raise IosimError("varlen_kv (--varlen-kv) needs varlen (--varlen: the query lengths of the same sequences)")
        return {} if page_size is None else {"page_size": page_size, "page_seed": page_seed}
    if page_size is not None:
        raise IosimError("varlen with a paged KV cache (mha_varlen_fwd's block_table) is not modelled; give varlen "
                         "or page_size")
    import numpy as np
    from iosim.models.varlen import parse_lengths
    lq, lk = (x if x is None or isinstance(x, np.ndarray) else parse_lengths(x) for x in (varlen, varlen_kv))
    return {"seqlens_q": lq, "seqlens_kv": lk}


def _layout_facts(schedule: Schedule, layout: dict) -> tuple[dict | None, dict | None, tuple[str, ...]]:
    """(varlen, paged) descriptions for ``Prediction`` and the notes they add."""
    t = schedule.tables
    if "seqlens_q" in layout:
        lq, lk = t["seqlens_q"], t["seqlens_k"]
        return ({"sequences": len(lq), "q_tokens": int(lq.sum()), "kv_tokens": int(lk.sum()),
                 "max_seqlen_q": int(lq.max()), "max_seqlen_kv": int(lk.max())}, None,
                ("varlen: PyTorch's mha_varlen_fwd plain forward; its GQA swap and split-KV for max_seqlen_q = 1 "
                 "(varlen decode) are not modelled",))
    if "page_size" in layout:
        ps = layout["page_size"]
        return None, {"page_size": ps, "pages": int(schedule.tensors["K"].dims[0]) // ps,
                      "page_seed": layout["page_seed"]}, ()
    return None, None, ()


def predict(hardware: Hardware | str, problem: Problem, config: KernelConfig | None, algorithm: str = "flash2", *,
            kernel: str | None = None, l2: bool = True, l2_geometry: L2Geometry | None = None,
            l2_stride: int | None = None, cta_jitter: float | None = None, block_mask=None, varlen=None,
            varlen_kv=None, page_size: int | None = None, page_seed: int = 0, progress: bool | None = None,
            direction: str = "fwd", params: dict | None = None) -> Prediction:
    """Counts, and (unless ``l2`` is False) DRAM traffic through the shared L2.

    kernel: a preset name (``iosim.presets``: fa2, triton-tutorial, iosim-triton, flex) that pins the algorithm, tiles,
    warps, stages, grid and loop orders and the register count; l2_geometry: override the profile's L2
    (``L2Geometry.from_hardware(hw, policy=..., ...)``); l2_stride: set-sampling stride (None automatic, 1 exact);
    cta_jitter: spread of per-CTA speeds in the CTA timeline (None = ``iosim.memory.hierarchy.drift_for`` the KV walk
    direction, 0 = lockstep);
    block_mask: a block mask for the ``flex`` preset (``iosim.presets.flex_schedule``: bool blocks or the tables of
    ``iosim.masks.from_flex``) or the ``block_sparse`` algorithm (its ``block_mask`` argument); or a mask by name, a
    ``--mask`` string or an ``iosim.maskspec.MaskSpec`` (``combine`` for several), run by every algorithm that can
    (``MASK_HONOURED``), intersected with the causal mask when ``problem.causal``, and described in ``Prediction.mask``.
    hardware may be a profile name or path, config None (``KernelConfig()``). A problem the GPU could not run as given
    (``iosim.limits.prediction_warnings``) is predicted with an IosimWarning and a note. The L2 trace is streamed
    (``iosim.memory.hierarchy.simulate_schedule``): memory stays bounded at any size, time grows with the accesses;
    progress: a progress line on stderr once the L2 model has run a few seconds (None: when stderr is a terminal).
    direction: "fwd" (the algorithm or preset as given), "bwd" (its backward: the preset's, else
    ``iosim.passes.BACKWARD``) or "fwd+bwd" (both, one schedule: ``iosim.passes.concat_schedules``; the L2 runs them
    as one trace, each pass is timed with its own config, instruction path and registers; the CTA drift of the
    timeline is the forward's KV walk direction's).
    varlen: a packed batch of sequences (FA2's ``mha_varlen_fwd``): query lengths as an array, a list, "L1,L2,…" or a
    file, cu_seqlens alike (``iosim.models.varlen.parse_lengths``); varlen_kv the key lengths (default varlen). The
    problem's batch / seq_q / seq_kv must be their count and longest (``varlen_problem``). Runs ``flash2_varlen``
    (the fa2 preset's tiles and orders with ``kernel="fa2"``); a causal or sliding mask applies per sequence.
    params: the algorithm's method parameters (keyword arguments of its builder: the sparse family's density, seed,
    table, stride, threshold, …; ``iosim algorithms`` lists them), checked by name (``check_params``).
    page_size: decode over a paged KV cache of page_size-token pages (a multiple of 256), pages in the seeded random
    physical order of page_seed: the fa2 preset's (or ``splitkv``'s) split-KV kernel (``splitkv``'s page_size).
    """
    hardware, config = _check_args(hardware, problem, config, algorithm, cta_jitter, l2_geometry)
    mask = None
    if isinstance(block_mask, (str, maskspec.MaskSpec)):
        block_mask = maskspec.combine([block_mask] + ([maskspec.CAUSAL] if problem.causal else []))
        if maskspec.fa2_window(block_mask, problem.seq_q, problem.seq_kv) == (-1, 0):
            problem = replace(problem, causal=True)
        mask = maskspec.describe(block_mask, problem)
    layout = _layout(varlen, varlen_kv, page_size, page_seed)
    parts = [_build_pass(d, hardware, problem, config, algorithm, kernel, block_mask, layout, params)
             for d in passes_of(direction)]
    if len(parts) == 1:
        schedule, regs = parts[0].schedule, parts[0].regs
    else:
        schedule, regs = concat_schedules(*(pin_launch(p.schedule, p.regs) for p in parts)), None
    part_counts = [count(p.schedule) for p in parts]
    counts = Counts(schedule.algorithm, tuple(k for c in part_counts for k in c.kernels))
    varlen_d, paged, layout_notes = _layout_facts(schedule, layout)
    notes = prediction_warnings(schedule, hardware, kernel)
    for n in notes:
        warnings.warn(n, IosimWarning, stacklevel=2)
    schedule = replace(schedule, notes=schedule.notes + layout_notes + tuple(notes))
    passes = tuple(Pass.of(p.name, p.schedule) for p in parts)
    res = None
    if l2:
        kw = {} if cta_jitter is None else {"jitter": cta_jitter}
        res = simulate_schedule(schedule, hardware, l2_geometry, regs_per_thread=regs,
                                persistent=any(p.persistent for p in parts), stride=l2_stride, progress=progress, **kw)
    # without the L2, time from compulsory DRAM traffic (each tensor a kernel touches read/written once; it says so)
    dram = ({k.name: k.dram_read_bytes for k in res.kernels}, {k.name: k.dram_write_bytes for k in res.kernels}) \
        if res is not None else (None, None)
    t = concat_estimates([estimate(p.schedule, c, hardware, *dram, path=p.path, prefetch=p.prefetch,
                                   regs_per_thread=p.regs) for p, c in zip(parts, part_counts)], schedule.algorithm)
    return Prediction(hardware, schedule, counts, None if res is None else res.dram_read_bytes,
                      None if res is None else res.dram_write_bytes, t.time_s, l2=res, kernel_preset=kernel, time=t,
                      direction=direction, passes=passes, mask=mask, varlen=varlen_d, paged=paged)
