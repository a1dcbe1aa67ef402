"""Tile chooser: enumerate legal (block_m, block_n, num_warps, num_stages), rank them by predicted time
(``iosim.cost``), and say why each loses to the first.

Legality rules (each rejected configuration keeps its reason):

* instruction shape — mma.sync: every warp owns ≥ 16 query rows (m16n8k16; FA2 §3.3 splits Q across warps), so
  block_m is a multiple of 16·num_warps; mma.sync.m8n8k4 (sm70, Volta's only f16 shape): the PTX ISA's fragment
  layout for mma.m8n8k4 gives each of a warp's four quad-pairs its own 8×8 output block (K = 4), so a warp owns a
  multiple of 8 query rows and its S tile (rows × block_n) holds the four 8×8 blocks: block_m a multiple of
  8·num_warps and (block_m / num_warps)·block_n ≥ 256; and at most 2 stages: sm70 has no cp.async (PTX ISA:
  sm_80+), so loads are double-buffered through registers as CUTLASS's two-stage MmaPipelined does on Volta (its
  MmaMultistage needs cp.async); wgmma: a warpgroup (4 warps) issues M = 64 (PTX ISA, wgmma.mma_async), so
  num_warps ≥ 4 and block_m a multiple of 64·num_warps/4; tcgen05: M = 64 or 128 per CTA MMA (FA4 §2.2) with
  ≥ 4 warps; Ascend cube: multiples of 16 (16×16×16 Cube op). block_n is a multiple of 16 everywhere (the PV
  MMA's K = 16 for 16-bit inputs).
* no tile larger than the problem: block_m ≤ next power of two ≥ seq_q, likewise block_n vs seq_kv (the Triton
  tutorial prunes BLOCK_M > N_CTX).
* shared memory: the schedule's smem buffers (pipelined ones × num_stages) fit the chip's per-block limit
  (``models._common.check_fit``), and at least one CTA fits an SM (``iosim.occupancy``).
* registers: the register-resident tiles (S, O accumulator) over the CTA's threads + overhead stay within
  max_registers_per_thread (``iosim.occupancy.registers_per_thread``); above it the compiler spills.

The candidates are Triton kernels: unless ``base`` says otherwise, causal problems are scheduled with the diagonal
band in a loop of its own (``KernelConfig.band_loop``), as iosim's kernel, the Triton tutorial and FlexAttention do.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

from iosim.cost import TimeEstimate, estimate, native_path
from iosim.counts import Counts, count, sram_bytes
from iosim.errors import IosimError
from iosim.hwprofile import Hardware
from iosim.occupancy import occupancy
from iosim.pipeline import build_schedule
from iosim.registry import get as get_algorithm
from iosim.problem import KernelConfig, Problem

BLOCK_CHOICES = (16, 32, 64, 128, 256)
WARP_CHOICES = (2, 4, 8)
STAGE_CHOICES = (1, 2, 3, 4)
DEFAULT_JOBS: int | None = 1  # in this process: a default-size choice takes ~0.1 s (benchmarks/bench_cli.py)

STAGE_TIE_BREAK = "deeper"
"""Once loads are pipelined (≥ 2 stages) the cost model gives 2, 3 and 4 stages the same time (memory fully
overlapped; the fill waits only on stage 0, ``cost.cta_overhead``). What it leaves out — variable L2/DRAM latency
under load — a deeper pipeline absorbs: with s stages a tile may arrive up to s − 1 steps late without stalling the
MMAs (the reason Triton's tutorials and FA3 use 2–4 stages; measured on the H100 at 128×128×8, d=128: 3 stages 2.6–6.9%
faster than 2, reports/validation/h100/tiles_vs_exhaustive.md). So among configurations that tie, the chooser takes
the deepest pipeline whose shared memory still fits without costing a resident CTA per SM (ties first prefer more
resident CTAs), and one stage last (Triton pipelines loads only with ≥ 2 stages)."""


@dataclass(frozen=True)
class Candidate:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    legal: bool
    reason: str = ""  # why illegal, or (after ranking) why slower than the first
    estimate: TimeEstimate | None = None

    @property
    def time_s(self) -> float:
        return self.estimate.time_s if self.estimate else math.inf

    @property
    def key(self) -> tuple[int, int, int, int]:
        return self.block_m, self.block_n, self.num_warps, self.num_stages

    def totals(self) -> dict:
        """Aggregates over the kernels (for explanations and tables)."""
        e = self.estimate
        if e is None:
            return {}
        ks = e.kernels
        main = max(ks, key=lambda k: k.time_s)
        return {"sm_bytes": sum(k.sm_bytes for k in ks), "smem_bytes": sum(k.smem_bytes for k in ks),
                "ctas_per_sm": main.ctas_per_sm, "limiter": main.occupancy_limiter,
                "tail": main.tail_efficiency, "programs": main.programs, "waves": main.waves,
                "registers": main.registers_per_thread, "smem_per_cta": main.smem_per_cta,
                "resources": {r: sum(k.resource_times[r] for k in ks) for r in ks[0].resource_times}}

    def to_dict(self) -> dict:
        d = {"block_m": self.block_m, "block_n": self.block_n, "num_warps": self.num_warps,
             "num_stages": self.num_stages, "legal": self.legal, "reason": self.reason}
        if self.estimate is not None:
            t = self.totals()
            d |= {"time_s": self.estimate.time_s, "bound": self.estimate.bound,
                  "achieved_flops_per_s": self.estimate.achieved_flops_per_s,
                  "ctas_per_sm": t["ctas_per_sm"], "occupancy_limiter": t["limiter"],
                  "registers_per_thread": t["registers"], "smem_per_cta": t["smem_per_cta"],
                  "waves": t["waves"], "tail_efficiency": t["tail"], "sm_bytes": t["sm_bytes"],
                  "smem_bytes": t["smem_bytes"]}
        return d


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def shape_rule(path: str, block_m: int, block_n: int, num_warps: int) -> str:
    """'' if the instruction path can tile (block_m, block_n) with num_warps, else the reason."""
    if block_n % 16:
        return f"block_n={block_n} is not a multiple of 16 (MMA K = 16)"
    if path == "mma.sync":
        if block_m % (16 * num_warps):
            return f"mma.sync: {num_warps} warps × 16 rows do not divide block_m={block_m}"
    elif path == "mma.sync.m8n8k4":
        rows = block_m // num_warps
        if block_m % (8 * num_warps) or rows * block_n < 4 * 64:
            return (f"mma.sync.m8n8k4: {num_warps} warps × 8-row quad-pair blocks do not tile {block_m}×{block_n} "
                    "(each warp needs a multiple of 8 rows and 4 blocks of 8×8)")
    elif path == "wgmma":
        if num_warps < 4:
            return f"wgmma needs a 4-warp warpgroup, got num_warps={num_warps}"
        if block_m % (64 * (num_warps // 4)):
            return f"wgmma: {num_warps // 4} warpgroup(s) × 64 rows do not divide block_m={block_m}"
    elif path == "tcgen05":
        if num_warps < 4:
            return f"tcgen05 needs ≥ 4 warps, got {num_warps}"
        if block_m not in (64, 128, 256):
            return f"tcgen05: block_m={block_m} is not an MMA M of 64/128 (256 with 2 CTAs)"
    elif block_m % 16:
        return f"cube: block_m={block_m} is not a multiple of 16"
    return ""


def _tile_group(hw: Hardware, problem: Problem, algorithm: str, path: str, base: KernelConfig,
                dram_model: Callable | None, caps: tuple[int, int], num_warps: tuple[int, ...],
                num_stages: tuple[int, ...], params: dict | None, tile: tuple[int, int]) -> list[Candidate]:
    """The candidates of one (block_m, block_n), num_warps × num_stages in order: one schedule count, shared.
    params: the algorithm's method parameters (a sparse family's density, seed, …: its builder's keywords)."""
    bm, bn = tile
    out: list[Candidate] = []
    c0 = None
    for w, st in itertools.product(num_warps, num_stages):
        why = shape_rule(path, bm, bn, w)
        if not why and path == "mma.sync.m8n8k4" and st > 2:
            why = f"num_stages={st}: sm70 has no cp.async, loads are double-buffered through registers (≤ 2 stages)"
        if not why and bm > caps[0]:
            why = f"block_m={bm} exceeds seq_q={problem.seq_q}"
        if not why and bn > caps[1]:
            why = f"block_n={bn} exceeds seq_kv={problem.seq_kv}"
        if why:
            out.append(Candidate(bm, bn, w, st, False, why))
            continue
        cfg = dataclasses.replace(base, block_m=bm, block_n=bn, num_warps=w, num_stages=st)
        try:
            sched = build_schedule(algorithm, problem, cfg, hw) if not params else \
                get_algorithm(algorithm).build(problem, cfg, hw, **params)
            if c0 is None:
                c0 = count(sched)
            cnt = Counts(c0.algorithm, tuple(dataclasses.replace(kc, sram_bytes=sram_bytes(k, st))
                                             for kc, k in zip(c0.kernels, sched.kernels)))
            for k in sched.kernels:
                if occupancy(k, hw, st).spills:
                    raise IosimError(f"{k.name}: register tiles over {w} warps exceed {hw.max_registers_per_thread} "
                                     "registers per thread (would spill)")
            dr = dw = None
            if dram_model is not None:
                dr, dw = dram_model(sched, cnt)
            est = estimate(sched, cnt, hw, dr, dw, path=path)
        except IosimError as e:
            out.append(Candidate(bm, bn, w, st, False, str(e)))
            continue
        out.append(Candidate(bm, bn, w, st, True, "", est))
    return out


def candidates(hw: Hardware, problem: Problem, algorithm: str = "flash2", *, path: str | None = None,
               block_m: Iterable[int] = BLOCK_CHOICES, block_n: Iterable[int] = BLOCK_CHOICES,
               num_warps: Iterable[int] = WARP_CHOICES, num_stages: Iterable[int] = STAGE_CHOICES,
               base: KernelConfig | None = None, dram_model: Callable | None = None,
               jobs: int | None = DEFAULT_JOBS, params: dict | None = None) -> list[Candidate]:
    """Every configuration of the grid, legal or not, with an estimate for the legal ones (unsorted; in the order
    of the grid, block_m slowest).

    dram_model: optional ``f(schedule, counts) -> (dram_read_bytes, dram_write_bytes)`` (the L2 model; a
    module-level function where jobs ≠ 1); default compulsory traffic. jobs: worker processes, one
    (block_m, block_n) at a time (``iosim.parallel.map_ordered``; None = every core); the result does not depend on it.
    params: the algorithm's method parameters (``--param``: a sparse family's density, seed, stride, …), checked by
    name (``iosim.pipeline.check_params``) and passed to every build; a sparse kernel is ranked like any other (its
    pre-pass and reduction kernels timed with it, the tiles being its kernels' block_m × block_n).
    """
    from iosim.parallel import map_ordered
    path = path or native_path(hw)
    base = base or KernelConfig(band_loop=True)
    if not isinstance(problem.seq_q, int):
        raise IosimError("the tile chooser needs concrete sizes (seq_q, seq_kv, head_dim as integers)")
    caps = max(16, _pow2_ceil(problem.seq_q)), max(16, _pow2_ceil(problem.seq_kv))
    if params:
        from iosim.pipeline import check_params
        check_params(algorithm, params)
    group = partial(_tile_group, hw, problem, algorithm, path, base, dram_model, caps, tuple(num_warps),
                    tuple(num_stages), dict(params) if params else None)
    return [c for g in map_ordered(group, itertools.product(block_m, block_n), jobs) for c in g]


def explain(best: Candidate, c: Candidate) -> str:
    """Why ``c`` is slower than ``best``: the time ratio, its bound, and the differences that cause it."""
    if c is best or c.key == best.key:
        return "fastest"
    tb, tc = best.totals(), c.totals()
    ratio = c.time_s / best.time_s
    parts: list[tuple[float, str]] = []
    rb, rc = tb["resources"], tc["resources"]
    bound = c.estimate.resource  # the binding resource, also under a parallelism bound
    if rc["l2"] > rb["l2"] * 1.01 or tc["sm_bytes"] > tb["sm_bytes"] * 1.01:
        parts.append((rc["l2"] - rb["l2"] + (1 if bound == "l2" else 0),
                      f"{tc['sm_bytes'] / tb['sm_bytes']:.2f}× SM↔L2 bytes (block_m {c.block_m} vs {best.block_m}: K/V re-read once per query block)"))
    if rc["smem"] > rb["smem"] * 1.01:
        parts.append((rc["smem"] - rb["smem"] + (1 if bound == "smem" else 0),
                      f"{rc['smem'] / rb['smem']:.2f}× shared-memory time ({tc['smem_bytes'] / tb['smem_bytes']:.2f}× operand reads, {c.num_warps} warps)"))
    if tc["tail"] < tb["tail"] - 0.005:
        parts.append((0.5, f"tail {tc['tail']:.1%} vs {tb['tail']:.1%} ({tc['programs']} CTAs on the SMs)"))
    if tc["ctas_per_sm"] < tb["ctas_per_sm"]:
        parts.append((0.4, f"{tc['ctas_per_sm']} CTA/SM ({tc['limiter']}) vs {tb['ctas_per_sm']}"))
    for r in ("tensor", "sfu", "fp32"):
        if rc[r] > rb[r] * 1.01:
            parts.append((rc[r] - rb[r] + (1 if bound == r else 0), f"{rc[r] / rb[r]:.2f}× {r} time"))
    lb, lc = best.estimate.launch_s, c.estimate.launch_s
    if c.estimate.kernels and sum(k.step_s for k in c.estimate.kernels) > 1.01 * sum(k.step_s for k in best.estimate.kernels):
        st_c = sum(k.step_s for k in c.estimate.kernels)
        st_b = sum(k.step_s for k in best.estimate.kernels)
        parts.append((st_c - st_b + 1e-9, f"{st_c / st_b:.2f}× tile-step overhead ({c.block_m}×{c.block_n} tiles, "
                                          f"{tc['ctas_per_sm']} CTA/SM)"))
    if lc > lb:
        parts.append((lc - lb, f"{len(c.estimate.kernels)} launches"))
    if c.num_stages < 2 <= best.num_stages:
        parts.append((0.3, f"one stage: loads not pipelined ({tc['ctas_per_sm']} CTA/SM overlap them)"))
    parts.sort(key=lambda p: -p[0])
    if rc["smem"] + rc["l2"] + rc["fp32"] > rb["smem"] + rb["l2"] + rb["fp32"] and ratio < 1.0005 and not parts:
        parts.append((0, "same time, more total resource use"))
    if not parts and c.num_stages != best.num_stages:
        parts.append((0, f"same predicted time with {c.num_stages} stage(s) ({tc['smem_per_cta']:,} B smem); "
                         "ties prefer the deepest pipeline that keeps occupancy"))
    why = "; ".join(p[1] for p in parts[:3]) or "same predicted resources (tie broken by larger tiles, fewer warps, more CTAs/SM, more stages)"
    return f"{ratio:.3f}× time, {bound}-bound: {why}"


@dataclass(frozen=True)
class TileChoice:
    hardware: str
    algorithm: str
    problem: Problem
    path: str
    ranked: tuple[Candidate, ...]  # legal, fastest first (ties: less total resource time), reason = explain(first, it)
    illegal: tuple[Candidate, ...]
    params: dict | None = None  # the algorithm's method parameters (--param), if any

    @property
    def best(self) -> Candidate:
        return self.ranked[0]

    def to_dict(self, top: int | None = None) -> dict:
        return {"hardware": self.hardware, "algorithm": self.algorithm, "path": self.path,
                **({"params": {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                               for k, v in self.params.items()}} if self.params else {}),
                "problem": dataclasses.asdict(self.problem),
                "legal_count": len(self.ranked), "illegal_count": len(self.illegal),
                "candidates": [c.to_dict() for c in self.ranked[:top]],
                "illegal_examples": [c.to_dict() for c in self.illegal[:10]]}


def choose(hw: Hardware, problem: Problem, algorithm: str = "flash2", *, path: str | None = None, **kw) -> TileChoice:
    """Rank the legal configurations by predicted time (ties: larger tiles, fewer warps, more resident CTAs, deeper
    pipelines first; ``STAGE_TIE_BREAK``). kw: ``candidates``' grid, base, dram_model, jobs and params."""
    from iosim.registry import get
    get(algorithm)  # an unknown name fails here, with the list of known ones
    path = path or native_path(hw)
    cands = candidates(hw, problem, algorithm, path=path, **kw)
    legal = [c for c in cands if c.legal]
    if not legal:
        reasons = sorted({c.reason for c in cands})[:5]
        raise IosimError(f"no legal tile configuration for {algorithm} on {hw.name}: " + " | ".join(reasons))
    # ties (same bound resource): less total resource time first (less traffic = more headroom), then bigger tiles,
    # fewer warps, more resident CTAs, then the deeper pipeline (STAGE_TIE_BREAK)
    legal.sort(key=lambda c: (round(c.time_s, 12), sum(c.totals()["resources"].values()),
                              -c.block_m * c.block_n, c.num_warps, -c.totals()["ctas_per_sm"],
                              (c.num_stages < 2, -c.num_stages)))
    best = legal[0]
    ranked = tuple(dataclasses.replace(c, reason=explain(best, c)) for c in legal)
    illegal = tuple(c for c in cands if not c.legal)
    return TileChoice(hw.name, algorithm, problem, path, ranked, illegal, dict(kw["params"]) if kw.get("params") else None)


def format_table(choice: TileChoice, top: int = 5) -> str:
    p = choice.problem
    par = f" ({', '.join(f'{k}={v}' for k, v in choice.params.items())})" if choice.params else ""
    lines = [f"{choice.algorithm}{par} on {choice.hardware} ({choice.path}): B={p.batch} H={p.heads} "
             f"Hkv={p.kv_heads} Nq={p.seq_q} Nkv={p.seq_kv} d={p.head_dim} {p.dtype}{' causal' if p.causal else ''}",
             f"{len(choice.ranked)} legal configurations, {len(choice.illegal)} rejected",
             f"{'#':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'time':>11} {'TFLOP/s':>8} {'bound':>7} "
             f"{'CTA/SM':>6} {'smem/CTA':>9} {'regs':>4}  why slower than #1"]
    for i, c in enumerate(choice.ranked[:top], 1):
        t = c.totals()
        lines.append(f"{i:>3} {c.block_m:>4} {c.block_n:>4} {c.num_warps:>5} {c.num_stages:>6} "
                     f"{c.time_s * 1e3:>8.4f} ms {c.estimate.achieved_flops_per_s / 1e12:>8.1f} {c.estimate.bound:>7} "
                     f"{t['ctas_per_sm']:>6} {t['smem_per_cta']:>9,} {t['registers']:>4}  {c.reason}")
    return "\n".join(lines) + "\n"


# --- decode: FA2's split-KV (num_splits, block_n) ------------------------------------------------------------------

DECODE_BLOCK_N = (64, 128, 256)
MAX_SPLITS = 128
"""flash_api.cpp ``set_params_splitkv``: ``num_splits_heuristic(B·H·m, 2·SMs, n_blocks, 128)``: at most 128 splits,
2·SMs slots (FA2 assumes two split CTAs per SM), n_blocks = ⌈Nkv/kBlockN⌉."""


def eligible_splits(n_blocks: int, sm_count: int) -> tuple[int, ...]:
    """Split counts FA2's heuristic considers: s ≤ min(128, 2·SMs, n_blocks), and s = 1 or ⌈n/s⌉ ≠ ⌈n/(s−1)⌉ (a
    count that leaves the blocks per split unchanged only adds empty splits)."""
    top = min(MAX_SPLITS, 2 * sm_count, n_blocks)
    return tuple(s for s in range(1, top + 1) if s == 1 or -(-n_blocks // s) != -(-n_blocks // (s - 1)))


def wave_efficiency(ctas: int, splits: int, sm_count: int) -> float:
    """FA2's wave efficiency w/⌈w⌉, w = B·H·m·s / (2·SMs) (``num_splits_heuristic``)."""
    w = ctas * splits / (2 * sm_count)
    return w / math.ceil(w)


def sm_share_time_s(k, hw: Hardware) -> float:
    """A kernel's time, at least its SM↔L2 bytes moved at the busy SMs' share of L2 bandwidth (l2_bandwidth /
    sm_count per SM, the share ``cost.cta_overhead`` uses): ``cost.estimate`` treats L2 and DRAM as chip-wide, so
    8 CTAs on 132 SMs would stream K/V at the whole chip's rate — the very thing split-KV exists to avoid."""
    from iosim.cost import l2_bandwidth
    return max(k.time_s, k.launch_s + k.sm_bytes / (l2_bandwidth(hw) * max(1, k.sms_busy) / hw.sm_count))


def decode_applies(problem: Problem, hw: Hardware) -> bool:
    """PyTorch's split-KV path decides the launch: FA2 packs GQA rows or splits KV (``fa2_launch``), or seq_q ≤ 64
    (one kBlockM row block per head)."""
    from iosim.models.splitkv import fa2_launch
    launch = fa2_launch(problem, hw)
    return launch.packed or launch.num_splits > 1 or problem.seq_q <= 64


@dataclass(frozen=True)
class DecodeCandidate:
    num_splits: int
    block_n: int
    legal: bool
    reason: str = ""  # why illegal, or (ranked) why slower than the first
    estimate: TimeEstimate | None = None
    time_s: float = math.inf  # the estimate's kernels at ``sm_share_time_s``
    wave_efficiency: float = 0.0
    combine_s: float = 0.0
    partial_bytes: int = 0  # O_accum + LSE_accum written (and read back by the combine): S·B·H·Nq·(d+1)·4
    kv_bytes: int = 0  # K and V read by the attention kernel

    def facts(self) -> str:
        return (f"waves {self.wave_efficiency:.0%}, combine {self.combine_s * 1e6:.1f} µs, partial O "
                f"{self.partial_bytes:,} B, K/V {self.kv_bytes:,} B")

    def to_dict(self) -> dict:
        return {"num_splits": self.num_splits, "block_n": self.block_n, "legal": self.legal, "reason": self.reason,
                "time_s": self.time_s if self.legal else None, "wave_efficiency": self.wave_efficiency,
                "combine_s": self.combine_s, "partial_bytes": self.partial_bytes, "kv_bytes": self.kv_bytes}


def _decode_candidate(hw: Hardware, problem: Problem, packed: bool, ctas: int, s: int, bn: int) -> DecodeCandidate:
    from iosim.models import splitkv
    from iosim.presets import PRESETS
    pre = PRESETS["fa2"]  # FA2's CUDA kernel: mma.sync, K/V prefetched in-CTA
    cfg = KernelConfig(64, bn, 4, 1, ("m", "b", "h"), "descending", "ascending")  # split kernel: kBlockM 64, 4 warps
    try:
        sched = splitkv.build(problem, cfg, hw, num_splits=s, gqa_packed=packed)
    except IosimError as e:
        return DecodeCandidate(s, bn, False, str(e))
    cnt = count(sched)
    est = estimate(sched, cnt, hw, path=pre.instruction_path, prefetch=pre.prefetch)
    attn = cnt.kernels[0]
    comb = [k.time_s for k in est.kernels if k.name == "splitkv_combine"]
    partial = sum(kc.write_bytes.get(t, 0) for kc in cnt.kernels for t in ("O_accum", "LSE_accum"))
    return DecodeCandidate(s, bn, True, "", est, sum(sm_share_time_s(k, hw) for k in est.kernels),
                           wave_efficiency(ctas, s, hw.sm_count), sum(comb), partial,
                           attn.read_bytes.get("K", 0) + attn.read_bytes.get("V", 0))


def explain_decode(best: DecodeCandidate, c: DecodeCandidate) -> str:
    if (c.num_splits, c.block_n) == (best.num_splits, best.block_n):
        return "fastest: " + c.facts()
    parts = []
    if c.wave_efficiency < best.wave_efficiency - 0.005:
        parts.append(f"waves {c.wave_efficiency:.0%} vs {best.wave_efficiency:.0%}")
    if c.combine_s > best.combine_s * 1.01:
        parts.append(f"combine {c.combine_s * 1e6:.1f} vs {best.combine_s * 1e6:.1f} µs")
    if c.partial_bytes > best.partial_bytes:
        parts.append(f"partial O {c.partial_bytes:,} vs {best.partial_bytes:,} B")
    if c.kv_bytes > best.kv_bytes:
        parts.append(f"K/V {c.kv_bytes / best.kv_bytes:.2f}× bytes")
    if c.num_splits < best.num_splits:
        parts.append(f"{c.num_splits} split(s): fewer CTAs stream K/V")
    if c.block_n != best.block_n:
        parts.append(f"block_n {c.block_n} vs {best.block_n}")
    return f"{c.time_s / best.time_s:.3f}× time: " + ("; ".join(parts[:3]) or "same resources")


@dataclass(frozen=True)
class Fa2DecodePick:
    num_splits: int
    block_n: int
    time_s: float
    reason: str


@dataclass(frozen=True)
class DecodeChoice:
    hardware: str
    problem: Problem
    packed: bool
    ctas: int  # B·H'·⌈rows/64⌉: the split kernel's CTAs per split
    ranked: tuple[DecodeCandidate, ...]
    illegal: tuple[DecodeCandidate, ...]
    pruned: dict  # block_n → split counts of 1..128 FA2 would never try (not predicted)
    fa2: Fa2DecodePick

    @property
    def best(self) -> DecodeCandidate:
        return self.ranked[0]

    def to_dict(self, top: int | None = None) -> dict:
        f = self.fa2
        return {"mode": "decode", "hardware": self.hardware, "problem": dataclasses.asdict(self.problem),
                "gqa_packed": self.packed, "ctas_per_split": self.ctas, "legal_count": len(self.ranked),
                "pruned_split_counts": {str(k): v for k, v in self.pruned.items()},
                "fa2": {"num_splits": f.num_splits, "block_n": f.block_n, "time_s": f.time_s, "why": f.reason},
                "candidates": [c.to_dict() for c in self.ranked[:top]],
                "illegal_examples": [c.to_dict() for c in self.illegal[:10]]}


def _fa2_decode_pick(hw: Hardware, problem: Problem) -> Fa2DecodePick:
    """What PyTorch launches (``presets.apply('fa2')``), predicted as a candidate is, and the heuristic's reasons."""
    from iosim.models.splitkv import fa2_launch, split_tiles
    from iosim.presets import apply
    alg, cfg, pre = apply("fa2", problem, hw, KernelConfig())
    sched = build_schedule(alg, problem, cfg, hw)
    est = estimate(sched, count(sched), hw, path=pre.instruction_path, prefetch=pre.prefetch,
                   regs_per_thread=pre.regs_per_thread)
    launch, bn = fa2_launch(problem, hw), split_tiles(problem.head_dim)[1]
    ctas, slots, n = problem.batch * launch.heads * -(-launch.rows // 64), 2 * hw.sm_count, -(-problem.seq_kv // bn)
    if ctas >= 0.8 * slots:
        why = f"B·H·m = {ctas} CTAs ≥ 0.8 × 2·SMs = {0.8 * slots:g}: the launch fills the GPU, no split"
    else:
        effs = {s: wave_efficiency(ctas, s, hw.sm_count) for s in eligible_splits(n, hw.sm_count)}
        why = (f"B·H·m = {ctas} CTAs < 0.8 × 2·SMs = {0.8 * slots:g}: the smallest eligible split count (of "
               f"{len(effs)}, n = {n} blocks of {bn}) with wave efficiency ≥ 85% of the best {max(effs.values()):.0%}: "
               f"{launch.num_splits} splits at {effs.get(launch.num_splits, 1.0):.0%}")
    shown_bn = bn if launch.num_splits > 1 else cfg.block_n
    kind = "split kernel" if launch.num_splits > 1 else f"plain kernel {cfg.block_m}×{cfg.block_n}"
    return Fa2DecodePick(launch.num_splits, shown_bn, sum(sm_share_time_s(k, hw) for k in est.kernels),
                         f"{why} ({kind}{', GQA-packed' if launch.packed else ''})")


def choose_decode(hw: Hardware, problem: Problem, *, block_n: Iterable[int] = DECODE_BLOCK_N) -> DecodeChoice:
    """Rank (num_splits, block_n) of FA2's split-KV decode path (GQA-packed as PyTorch packs) by predicted time
    (compulsory DRAM traffic, as ``choose``; kernels at ``sm_share_time_s``). Split counts FA2 never tries
    (``eligible_splits``) are pruned, not predicted."""
    from iosim.models.splitkv import fa2_launch
    if not all(isinstance(getattr(problem, n), int) for n in ("batch", "heads", "seq_q", "seq_kv", "head_dim")):
        raise IosimError("the decode chooser needs concrete sizes (seq_q, seq_kv, head_dim as integers)")
    launch = fa2_launch(problem, hw)
    ctas = problem.batch * launch.heads * -(-launch.rows // 64)
    cands, pruned = [], {}
    for bn in block_n:
        splits = eligible_splits(-(-problem.seq_kv // bn), hw.sm_count)
        pruned[bn] = MAX_SPLITS - len(splits)
        cands += [_decode_candidate(hw, problem, launch.packed, ctas, s, bn) for s in splits]
    legal = sorted((c for c in cands if c.legal), key=lambda c: (round(c.time_s, 12), c.num_splits, -c.block_n))
    if not legal:
        raise IosimError(f"no legal split-KV configuration on {hw.name}: "
                         + " | ".join(sorted({c.reason for c in cands})[:3]))
    ranked = tuple(dataclasses.replace(c, reason=explain_decode(legal[0], c)) for c in legal)
    return DecodeChoice(hw.name, problem, launch.packed, ctas, ranked, tuple(c for c in cands if not c.legal), pruned,
                        _fa2_decode_pick(hw, problem))


def format_decode(choice: DecodeChoice, top: int = 5) -> str:
    p, f = choice.problem, choice.fa2
    pruned = ", ".join(f"{n} at block_n {bn}" for bn, n in choice.pruned.items())
    lines = [f"split-KV decode (FA2 as in PyTorch) on {choice.hardware}: B={p.batch} H={p.heads} Hkv={p.kv_heads} "
             f"Nq={p.seq_q} Nkv={p.seq_kv} d={p.head_dim} {p.dtype}{', GQA-packed' if choice.packed else ''}; "
             f"{choice.ctas} CTAs per split",
             f"{len(choice.ranked)} legal (num_splits, block_n), {len(choice.illegal)} rejected; of split counts "
             f"1..{MAX_SPLITS} pruned as FA2 never tries them (s > min(128, 2·SMs, n_blocks) or ⌈n/s⌉ = ⌈n/(s−1)⌉): "
             f"{pruned}",
             f"{'#':>3} {'splits':>6} {'BN':>4} {'time':>11}  why"]
    for i, c in enumerate(choice.ranked[:top], 1):
        lines.append(f"{i:>3} {c.num_splits:>6} {c.block_n:>4} {c.time_s * 1e3:>8.4f} ms  {c.reason}")
    lines.append(f"FA2 {f.num_splits:>6} {f.block_n:>4} {f.time_s * 1e3:>8.4f} ms  "
                 f"{f.time_s / choice.best.time_s:.3f}× the chosen; heuristic: {f.reason}")
    return "\n".join(lines) + "\n"


# --- backward: FA2's flash2_bwd (block_m, block_n, num_warps) --------------------------------------------------------

BWD_WARPS = (4, 8)
BWD_STAGES = (1, 2)  # Q (and dO) single- or double-buffered: the traits' No_double_buffer


def bwd_warp_rule(block_m: int, block_n: int, num_warps: int) -> str:
    """'' if FA2's backward can lay num_warps over the block_m × block_n S/dP tile: TiledMmaSdP is
    AtomLayoutMSdP × (warps / AtomLayoutMSdP) warps of 16×16 (``Flash_bwd_kernel_traits``, kernel_traits.h)."""
    for wm in (1, 2, 4, 8):
        if num_warps % wm == 0 and block_m % (16 * wm) == 0 and block_n % (16 * (num_warps // wm)) == 0:
            return ""
    return f"{num_warps} warps cannot tile {block_m}×{block_n} in 16×16 MMA atoms (AtomLayoutMSdP × the rest)"


@dataclass(frozen=True)
class BwdChoice:
    hardware: str
    problem: Problem
    ranked: tuple[Candidate, ...]
    illegal: tuple[Candidate, ...]
    fa2: Candidate  # FA2's own tiles (presets.fa2_bwd_tiles), predicted alike; reason = vs the chosen
    seq_parallel: str  # seqk-parallel vs one CTA per (b, h): CTA counts and wave efficiency

    @property
    def best(self) -> Candidate:
        return self.ranked[0]

    def to_dict(self, top: int | None = None) -> dict:
        return {"mode": "bwd", "hardware": self.hardware, "problem": dataclasses.asdict(self.problem),
                "legal_count": len(self.ranked), "illegal_count": len(self.illegal), "fa2": self.fa2.to_dict(),
                "sequence_parallel": self.seq_parallel, "candidates": [c.to_dict() for c in self.ranked[:top]],
                "illegal_examples": [c.to_dict() for c in self.illegal[:10]]}


def _bwd_candidate(hw: Hardware, problem: Problem, algorithm: str, base: KernelConfig, path: str | None,
                   caps: tuple[int, int], bm: int, bn: int, w: int, st: int) -> Candidate:
    why = bwd_warp_rule(bm, bn, w)
    if not why and (bm > caps[0] or bn > caps[1]):
        why = f"{bm}×{bn} exceeds seq_q={problem.seq_q} or seq_kv={problem.seq_kv}"
    if why:
        return Candidate(bm, bn, w, st, False, why)
    cfg = dataclasses.replace(base, block_m=bm, block_n=bn, num_warps=w, num_stages=st)
    try:  # legality: check_fit (shared memory); register estimates are not a rule here (FA2's own tiles exceed them)
        sched = build_schedule(algorithm, problem, cfg, hw)
        est = estimate(sched, count(sched), hw, path=path)
    except IosimError as e:
        return Candidate(bm, bn, w, st, False, str(e))
    return Candidate(bm, bn, w, st, True, "", est)


def _seq_parallel(hw: Hardware, problem: Problem, c: Candidate) -> str:
    main = max(c.estimate.kernels, key=lambda k: k.time_s)
    slots = hw.sm_count * main.ctas_per_sm
    bh = problem.batch * problem.heads
    alt = bh / slots / math.ceil(bh / slots)
    return (f"sequence-parallel (FA2: one CTA per KV block, dQ by fp32 atomics): {main.programs:,} CTAs, "
            f"{main.waves:.2f} waves, tail {main.tail_efficiency:.0%}; one CTA per (b, h) looping every KV block "
            f"(flash_bwd_dq_dk_dv_loop_kernel, no atomics): {bh:,} CTAs on {slots} slots, wave efficiency {alt:.0%}. "
            "PyTorch's run_flash_bwd always launches run_flash_bwd_seqk_parallel (the loop kernel is never chosen); "
            "iosim does not build the loop schedule, so this is the CTA-count comparison only")


def choose_bwd(hw: Hardware, problem: Problem, algorithm: str = "flash2", *, kernel: str = "fa2",
               block_m: Iterable[int] = BLOCK_CHOICES, block_n: Iterable[int] = BLOCK_CHOICES,
               num_warps: Iterable[int] = BWD_WARPS, num_stages: Iterable[int] = BWD_STAGES) -> BwdChoice:
    """Rank the backward's (block_m, block_n, num_warps, stages) by predicted time; ``kernel``'s backward preset
    gives the grid order, instruction path and its own tiles (shown beside)."""
    from iosim.passes import backward_of
    from iosim.presets import apply
    if not isinstance(problem.seq_q, int):
        raise IosimError("the tile chooser needs concrete sizes (seq_q, seq_kv, head_dim as integers)")
    bwd_alg = backward_of(algorithm)
    alg, own, pre = apply(kernel, problem, hw, KernelConfig(), direction="bwd")
    if alg != bwd_alg:
        raise IosimError(f"kernel preset {kernel!r} runs {alg} for the backward, not {bwd_alg}; use --algorithm "
                         f"{alg.removesuffix('_bwd')}")
    caps = max(16, _pow2_ceil(problem.seq_q)), max(16, _pow2_ceil(problem.seq_kv))
    make = partial(_bwd_candidate, hw, problem, alg, own, pre.instruction_path, caps)
    cands = [make(*k) for k in itertools.product(block_m, block_n, num_warps, num_stages)]
    legal = [c for c in cands if c.legal]
    if not legal:
        raise IosimError(f"no legal backward tiles on {hw.name}: " + " | ".join(sorted({c.reason for c in cands})[:3]))
    legal.sort(key=lambda c: (round(c.time_s, 12), -c.block_m * c.block_n, c.num_warps, -c.num_stages))
    best = legal[0]
    ranked = tuple(dataclasses.replace(c, reason=explain(best, c)) for c in legal)
    fa2 = make(own.block_m, own.block_n, own.num_warps, own.num_stages)
    fa2 = dataclasses.replace(fa2, reason=(explain(best, fa2) if fa2.legal else fa2.reason)
                              + f" ({kernel}'s own backward tiles for d={problem.head_dim})")
    return BwdChoice(hw.name, problem, ranked, tuple(c for c in cands if not c.legal), fa2,
                     _seq_parallel(hw, problem, best))


def format_bwd(choice: BwdChoice, top: int = 5) -> str:
    p = choice.problem
    lines = [f"backward (flash2_bwd) on {choice.hardware}: B={p.batch} H={p.heads} Hkv={p.kv_heads} Nq={p.seq_q} "
             f"Nkv={p.seq_kv} d={p.head_dim} {p.dtype}{' causal' if p.causal else ''}",
             f"{len(choice.ranked)} legal configurations, {len(choice.illegal)} rejected (warp layout, size, "
             "shared memory: Q, dO × stages + K, V + LSE, D)",
             f"{'#':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'time':>11} {'smem/CTA':>9}  why slower than #1"]
    rows = [(f"{i:>3}", c) for i, c in enumerate(choice.ranked[:top], 1)] + [("FA2", choice.fa2)]
    for tag, c in rows:
        t = f"{c.time_s * 1e3:>8.4f} ms" if c.legal else f"{'—':>11}"
        smem = f"{c.totals()['smem_per_cta']:>9,}" if c.legal else f"{'—':>9}"
        lines.append(f"{tag:>3} {c.block_m:>4} {c.block_n:>4} {c.num_warps:>5} {c.num_stages:>6} {t} {smem}  {c.reason}")
    lines.append(choice.seq_parallel)
    return "\n".join(lines) + "\n"


# --- persistent presets: fa3, cudnn, fa4 (forward tiles), lean (stream-K workers × block_n) -----------------------

PERSISTENT_KERNELS = ("fa3", "cudnn", "fa4", "lean")
PERSISTENT_BLOCK_M = (64, 128, 192, 256)
"""fa3 / cudnn: block_m a multiple of 64 (one consumer warpgroup per 64 rows of wgmma M = 64), up to 4 warpgroups."""
PERSISTENT_BLOCK_N = tuple(range(64, 257, 16))
"""fa3 / cudnn / fa4: block_n a multiple of 16 (the PV MMA's K = 16) from 64 to 256."""
LEAN_BLOCK_N = (64, 128, 256)
"""lean_api.cc's kBlockN choices (256 / 128 / 64 by head_dim); kBlockM stays 64."""
LEAN_WORKER_FACTORS = (0.5, 1, 2, 3, 4)
"""lean: persistent CTAs tried = round(f · SMs) for these f, plus LeanAttention's own grid (``lean_grid``)."""
TMEM_COLUMNS = 512
"""tcgen05 tensor memory: 128 lanes × 512 columns of 32 bits per SM; FA4 keeps S (block_n columns) and O (d columns)
of every Q stage there (flash_fwd_sm100.py), so q_stage · (block_n + d) ≤ 512."""
FIXED_KNOBS = {
    "fa3": "workers = SM count, scheduler (static round-robin; LPT + L2 swizzle when causal) and cluster (2 when "
           "d ≥ 128, not causal, ⌈Nq/block_m⌉ even) are fixed inside models/fa3.py's build (no argument for them)",
    "cudnn": "workers = SM count, static round-robin order, no cluster, 384 threads and the measured shared memory are "
             "fixed inside models/cudnn.py's build (no argument for them; the measured shared memory stands for every "
             "tile, so none is rejected for it)",
    "fa4": "block_m = 2-CTA pair × q_stage × 128, the pair (on when not causal, d = 128, Nq > 256, or d = 256), "
           "q_stage (2 when Nq > 128), workers = SMs / pair and the scheduler (LPT one CTA per tile when causal) are "
           "fixed inside models/fa4.py's build (no argument for them)",
    "lean": "kBlockM 64, 4 warps and the stream-K order are fixed inside models/lean.py's build; workers and block_n "
            "are its knobs",
}
_ARCH = {"fa3": (("sm90",), "h100 or h200"), "cudnn": (("sm90",), "h100 or h200"), "fa4": (("sm100",), "b200"),
         "lean": (("sm80", "sm86", "sm89", "sm90", "sm100"), "a100, h100, h200 or b200")}


def check_persistent(kernel: str, hw: Hardware) -> None:
    """One-line refusal of a persistent preset on hardware its kernel cannot run on."""
    if kernel not in PERSISTENT_KERNELS:
        raise IosimError(f"the persistent chooser takes --kernel {', '.join(PERSISTENT_KERNELS)}, not {kernel!r}")
    archs, names = _ARCH[kernel]
    if hw.arch not in archs:
        raise IosimError(f"--kernel {kernel} runs on {'/'.join(archs)} only; use hardware {names} "
                         f"(got {hw.name}, {hw.arch})")


@dataclass(frozen=True)
class PersistentCandidate:
    kernel: str
    block_m: int
    block_n: int
    legal: bool
    reason: str = ""  # why illegal, or (ranked) why slower than the first
    workers_asked: int | None = None  # lean: the grid given to build (None: the kernel's own)
    workers: int = 0  # CTAs launched (persistent: one per worker)
    persistent: bool = True
    cluster: int = 1
    order: str = ""
    work_items: int = 0
    time_s: float = math.inf  # the kernels at ``sm_share_time_s`` of predict(..., l2=False)
    estimate: TimeEstimate | None = None
    partial_bytes: int = 0  # lean: O_accum + LSE_accum written
    num_warps: int = 0
    num_stages: int = 0

    @property
    def key(self) -> tuple:
        return self.block_m, self.block_n, self.workers

    def main(self):
        return max(self.estimate.kernels, key=lambda k: k.time_s)

    def label(self) -> str:
        return (f"{self.block_m}×{self.block_n}, {self.workers} {'workers' if self.persistent else 'CTAs'}, "
                f"cluster {self.cluster}, {self.order}")

    def to_dict(self) -> dict:
        d = {"block_m": self.block_m, "block_n": self.block_n, "legal": self.legal, "reason": self.reason}
        if self.legal:
            d |= {"workers": self.workers, "persistent": self.persistent, "cluster": self.cluster, "order": self.order,
                  "work_items": self.work_items, "time_s": self.time_s, "bound": self.estimate.bound,
                  "num_warps": self.num_warps, "num_stages": self.num_stages, "partial_bytes": self.partial_bytes}
        elif self.workers_asked is not None:
            d["workers"] = self.workers_asked
        return d


def _order_of(kernel: str, sched) -> str:
    if kernel == "lean":
        return "stream-K"
    text = " ".join(sched.notes)
    for name, short in (("DynamicPersistentTileScheduler", "LPT+swizzle (dynamic)"),
                        ("SingleTileLPTScheduler", "LPT+swizzle (1 CTA/tile)"),
                        ("StaticPersistentTileScheduler", "static round-robin"),
                        ("static round-robin", "static round-robin")):
        if name in text:
            return short
    return "static round-robin"


def _persistent_candidate(hw: Hardware, problem: Problem, kernel: str, bm: int | None, bn: int | None,
                          workers: int | None = None) -> PersistentCandidate:
    """Build ``kernel``'s schedule with these knobs and predict it as ``predict(..., l2=False)`` does."""
    import warnings
    from iosim.pipeline import predict
    from iosim.presets import apply
    from iosim.registry import get
    cfg = KernelConfig(block_m=bm, block_n=bn)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if workers is None:
                pred = predict(hw, problem, cfg, kernel=kernel, l2=False)
                sched, est = pred.schedule, pred.time
            else:  # a build keyword predict does not pass: the same steps as predict(..., l2=False)
                alg, pcfg, pre = apply(kernel, problem, hw, cfg)
                sched = get(alg).build(problem, pcfg, hw, workers=workers)
                est = estimate(sched, count(sched), hw, path=pre.instruction_path, prefetch=pre.prefetch,
                               regs_per_thread=pre.regs_per_thread)
        k = sched.kernels[0]
        if kernel == "fa4":  # tensor memory: q_stage · (block_n + d) columns (TMEM_COLUMNS)
            q_stage = 2 if problem.seq_q > 128 else 1
            cols = q_stage * (sched.config.block_n + problem.head_dim)
            if cols > TMEM_COLUMNS:
                raise IosimError(f"fa4: q_stage {q_stage} × (block_n {sched.config.block_n} + d {problem.head_dim}) "
                                 f"= {cols} tensor-memory columns exceed {TMEM_COLUMNS}")
    except IosimError as e:
        return PersistentCandidate(kernel, bm or 0, bn or 0, False, str(e), workers_asked=workers)
    cnt_partial = 0
    if kernel == "lean":
        cnt_partial = sum(kc.write_bytes.get(t, 0) for kc in count(sched).kernels for t in ("O_accum", "LSE_accum"))
    n_items = int(sched.tables["lean_count" if kernel == "lean" else "work_count"].sum())  # tiles (lean: segments)
    return PersistentCandidate(kernel, sched.config.block_m, sched.config.block_n, True, "", workers,
                               math.prod(int(g.extent) for g in k.grid), bool(k.persistent), int(k.cluster),
                               _order_of(kernel, sched), n_items, sum(sm_share_time_s(x, hw) for x in est.kernels),
                               est, cnt_partial, k.threads_per_cta // 32, sched.config.num_stages)


def persistent_grid(kernel: str, hw: Hardware, problem: Problem) -> list[tuple]:
    """The (block_m, block_n, workers) the chooser tries for ``kernel`` (None = the model decides), before the
    builds' own checks (shared memory, tensor memory, stream-K's cap): the legal knobs of each kernel, capped by the
    problem (a tile at most the next power of two ≥ the sequence, 64 at least)."""
    cap_m, cap_n = max(64, _pow2_ceil(problem.seq_q)), max(64, _pow2_ceil(problem.seq_kv))
    if kernel in ("fa3", "cudnn"):
        return [(m, n, None) for m in PERSISTENT_BLOCK_M for n in PERSISTENT_BLOCK_N if m <= cap_m and n <= cap_n]
    if kernel == "fa4":
        return [(None, n, None) for n in PERSISTENT_BLOCK_N if n <= cap_n]
    workers = sorted({max(1, round(f * hw.sm_count)) for f in LEAN_WORKER_FACTORS})
    return [(None, n, w) for n in LEAN_BLOCK_N if n <= cap_n for w in workers]


def explain_persistent(best: PersistentCandidate, c: PersistentCandidate) -> str:
    """Why ``c`` is slower than ``best``: time ratio, bound, and the knob differences that cost it."""
    if c.key == best.key:
        return "fastest"
    kb, kc = best.main(), c.main()
    parts: list[tuple[float, str]] = []
    sb, sc = sum(k.sm_bytes for k in best.estimate.kernels), sum(k.sm_bytes for k in c.estimate.kernels)
    if sc > 1.01 * sb:
        parts.append((sc / sb, f"{sc / sb:.2f}× SM↔L2 bytes ({c.block_m}×{c.block_n} tiles: K/V re-read per query "
                               "block" + (", partial O to scratch" if c.partial_bytes > best.partial_bytes else "") + ")"))
    if kc.sms_busy < kb.sms_busy:
        parts.append((kb.sms_busy / kc.sms_busy, f"{kc.sms_busy} vs {kb.sms_busy} busy SMs "
                                                 f"({c.workers} workers)"))
    if kc.tail_efficiency < kb.tail_efficiency - 0.005:
        parts.append((1 + kb.tail_efficiency - kc.tail_efficiency,
                      f"load balance {kc.tail_efficiency:.0%} vs {kb.tail_efficiency:.0%} ({c.work_items:,} items on "
                      f"{c.workers} {'workers' if c.persistent else 'CTAs'}, {c.order})"))
    for r, what in (("tensor_s", "tensor (ragged tiles padded)"), ("step_s", "tile-step overhead"),
                    ("fp32_s", "fp32"), ("smem_s", "shared-memory"), ("l2_s", "L2"), ("dram_s", "DRAM"),
                    ("fill_s", "per-CTA fill/epilogue"), ("launch_s", "launch")):
        a, b = getattr(kc, r), getattr(kb, r)
        if b > 0 and a > 1.01 * b:
            parts.append((a / b, f"{a / b:.2f}× {what} time"))
    if c.partial_bytes > best.partial_bytes:
        parts.append((1.0, f"partial O {c.partial_bytes:,} vs {best.partial_bytes:,} B (more splits per output tile)"))
    if c.cluster < best.cluster:
        parts.append((1.0, f"cluster {c.cluster} vs {best.cluster}"))
    parts.sort(key=lambda p: -p[0])
    why = "; ".join(p[1] for p in parts[:3]) or "same predicted resources (ties: larger tiles, fewer workers first)"
    return f"{c.time_s / best.time_s:.3f}× time, {c.estimate.bound}-bound: {why}"


@dataclass(frozen=True)
class PersistentChoice:
    hardware: str
    kernel: str
    problem: Problem
    path: str
    ranked: tuple[PersistentCandidate, ...]
    illegal: tuple[PersistentCandidate, ...]
    default: PersistentCandidate  # the preset's own launch, predicted alike; reason = vs the chosen
    fixed: str  # the knobs the model's build does not take

    @property
    def best(self) -> PersistentCandidate:
        return self.ranked[0]

    def to_dict(self, top: int | None = None) -> dict:
        return {"mode": "persistent", "kernel": self.kernel, "hardware": self.hardware, "path": self.path,
                "problem": dataclasses.asdict(self.problem), "legal_count": len(self.ranked),
                "illegal_count": len(self.illegal), "default": self.default.to_dict(), "fixed_by_model": self.fixed,
                "candidates": [c.to_dict() for c in self.ranked[:top]],
                "illegal_examples": [c.to_dict() for c in self.illegal[:10]]}


def choose_persistent(hw: Hardware, problem: Problem, kernel: str) -> PersistentChoice:
    """Rank ``kernel``'s knobs (``persistent_grid``; fa3/cudnn: block_m × block_n, fa4: block_n, lean: workers ×
    block_n) by predicted time (``predict(..., l2=False)``, kernels at ``sm_share_time_s`` as ``choose_decode``),
    the preset's own launch beside."""
    from iosim.presets import get_preset
    check_persistent(kernel, hw)
    if not all(isinstance(getattr(problem, n), int) for n in ("batch", "heads", "seq_q", "seq_kv", "head_dim")):
        raise IosimError("the persistent chooser needs concrete sizes (seq_q, seq_kv, head_dim as integers)")
    default = _persistent_candidate(hw, problem, kernel, None, None)
    if not default.legal:
        raise IosimError(f"--kernel {kernel} cannot run this problem: {default.reason}")
    grid = persistent_grid(kernel, hw, problem)
    if kernel == "lean":  # LeanAttention's own grid for each block_n beside the multiples of the SM count
        own = {n: _persistent_candidate(hw, problem, kernel, None, n) for n in {g[1] for g in grid}}
        grid = sorted(set(grid) | {(None, n, c.workers) for n, c in own.items() if c.legal},
                      key=lambda g: (g[1], g[2]))
    cands = [_persistent_candidate(hw, problem, kernel, *g) for g in grid]
    legal = sorted((c for c in cands if c.legal), key=lambda c: (round(c.time_s, 12), -c.block_m * c.block_n,
                                                                 c.workers))
    if not legal:
        raise IosimError(f"no legal {kernel} configuration on {hw.name}: "
                         + " | ".join(sorted({c.reason for c in cands})[:3]))
    best = legal[0]
    ranked = tuple(dataclasses.replace(c, reason=explain_persistent(best, c)) for c in legal)
    default = dataclasses.replace(default, reason=explain_persistent(best, default) + f" ({kernel}'s own launch)")
    return PersistentChoice(hw.name, kernel, problem, get_preset(kernel).instruction_path or native_path(hw), ranked,
                            tuple(c for c in cands if not c.legal), default, FIXED_KNOBS[kernel])


def format_persistent(choice: PersistentChoice, top: int = 5) -> str:
    p = choice.problem
    knobs = {"fa3": "block_m × block_n", "cudnn": "block_m × block_n", "fa4": "block_n",
             "lean": "workers × block_n"}[choice.kernel]
    lines = [f"{choice.kernel} (persistent) on {choice.hardware} ({choice.path}): B={p.batch} H={p.heads} "
             f"Hkv={p.kv_heads} Nq={p.seq_q} Nkv={p.seq_kv} d={p.head_dim} {p.dtype}{' causal' if p.causal else ''}",
             f"{len(choice.ranked)} legal {knobs}, {len(choice.illegal)} rejected; {choice.fixed}",
             f"{'#':>7} {'BM':>4} {'BN':>4} {'workers':>7} {'cluster':>7} {'order':<25} {'items':>7} {'time':>11} "
             f"{'bound':>7}  why slower than #1"]
    rows = [(f"{i}", c) for i, c in enumerate(choice.ranked[:top], 1)] + [(choice.kernel, choice.default)]
    for tag, c in rows:
        w = f"{c.workers}" + ("" if c.persistent else "*")
        lines.append(f"{tag:>7} {c.block_m:>4} {c.block_n:>4} {w:>7} {c.cluster:>7} {c.order:<25} {c.work_items:>7,} "
                     f"{c.time_s * 1e3:>8.4f} ms {c.estimate.bound:>7}  {c.reason}")
    if not all(c.persistent for _, c in rows):
        lines.append("* not persistent: one CTA per tile")
    return "\n".join(lines) + "\n"
