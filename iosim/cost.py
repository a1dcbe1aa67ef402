"""Time model: a Schedule + its Counts + a Hardware profile → predicted time per kernel, limiting resource, FLOP/s.

Per kernel, seven resource times are computed from exact counts (``iosim.counts``) and the profile's ceilings:

==========  ==========================================================================================================
tensor      matmul FLOPs / (tensor_flops_per_s[dtype] × path efficiency)          (profile + PATH_EFFICIENCY below)
sfu         exp evaluations / (sfu_ops_per_clock_per_sm × sm_count × boost_clock_hz)   (profile; FA3 footnote 16/clk/SM)
fp32        other FLOPs / (fp32_flops_per_s / 2): the datasheet FP32 rate counts an FMA as 2 FLOPs, while the
            models count max/subtract/sum/rescale as one FLOP per instruction (models' docstrings)
smem        shared-memory bytes / (smem_bandwidth_bytes_per_clock_per_sm × sm_count × boost_clock_hz): operand bytes
            the MMAs read from shared memory, as FA4's roofline counts them (rule in ``smem_bytes``)
l2          SM↔L2 bytes (the counts' read + write bytes) / l2_bandwidth_bytes_per_s (profile; if absent,
            4 × HBM bandwidth, the assumption of Triton's old matmul_perf_model); atomic stores (fp32 RED, counted
            among the writes) add atomic bytes / (L2 bandwidth × L2_ATOMIC_EFFICIENCY): their read-modify-write;
            index-gathered rows (``Span.gather``) are priced at whole sectors (``gather_sector_bytes``)
dram        DRAM bytes / (hbm_bandwidth_bytes_per_s × DRAM_EFFICIENCY); DRAM bytes come from the L2 model when the
            caller passes them, else the compulsory traffic (``compulsory_dram_bytes``: every tensor a kernel reads
            is read from DRAM once, every tensor it writes is written once; re-reads are assumed to hit in L2)
launch      LAUNCH_OVERHEAD_S per kernel
==========  ==========================================================================================================

Overlap rule (each constant's source is in its docstring below):

* compute = max(tensor, sfu, fp32) + (1 − COMPUTE_OVERLAP[path]) × (the other two) × min(r, 2)^−½: how much of
  the softmax hides under the MMAs. COMPUTE_OVERLAP is one CTA's own overlap (FA3 arXiv 2407.08608 §3.2; fitted on
  the H100 for FA2's mma.sync kernel and iosim's Triton wgmma kernel); r = resident CTAs per SM, the independent
  streams: a second CTA's MMAs run under this one's exp (FA3 §3.1 pingpong, inter-warpgroup), while the warpgroups
  of one CTA share its barriers and stay in phase (``overlapped_compute``, STREAM_CAP, STREAM_EXPONENT). Plus the tile-step chain: tile steps × STEP_OVERHEAD_CYCLES /
  (clock × SMs × resident CTAs per SM); tile steps = matmul FLOPs / FLOPs of one full-tile step.
* warp-specialized kernels (``Kernel.pipeline`` "ws", "ws-pingpong", "ws-2cta": FA3/FA4-style producer TMA warp,
  consumer warpgroups, pingpong) take neither COMPUTE_OVERLAP nor the stream rule: ``iosim.cost_ws`` gives their
  compute (FA3 §3.1–3.2 intra-warpgroup pipelining and pingpong; FA4's exp emulation and conditional rescaling move
  work between sfu and fp32), their memory overlaps compute completely, and the last softmax of a loop is exposed.
* memory (smem, L2, DRAM) overlaps compute completely when loads are software-pipelined (num_stages ≥ 2) or
  prefetched inside the CTA (``prefetch``, set by presets such as ``fa2``: FA2's CUDA kernel has one smem buffer
  per tensor but issues the cp.async for K tile j+1 before the softmax/PV of tile j and loads V under QKᵀ —
  ``flash_fwd_kernel.h``, ``compute_attn_1rowblock``): body = max(compute, smem, l2, dram). With one stage a CTA waits for its own loads, and only the other r − 1
  resident CTAs hide them: body = max(compute + M / r, M), M = max(smem, l2, dram), r = resident CTAs per SM. The
  ÷ r is waiting a CTA sees, not bandwidth: M is a whole-chip (DRAM, L2) or busiest-SM (smem) busy time that no
  number of resident CTAs shortens, so M is a floor for every kernel (issue 21: LeanAttention's 216 persistent
  CTAs, r = 2, were predicted at compute + DRAM/2, below their own DRAM time).
* SM-local resources (tensor, sfu, fp32, smem) are divided by the tail efficiency (``tail_efficiency``): mean work
  per SM / the busiest SM's work, CTAs handed in launch order to the least-loaded SM; with equal work per CTA this
  is (P/S)/⌈P/S⌉ for P CTAs on S SMs; a causal CTA's work is its KV steps (``program_steps``) + its
  ``cta_overhead`` in steps of one SM, and by
  the warp-issue factor min(1, resident warps per SM / 4) (4 tensor cores per SM, one per sub-partition; Triton's
  old matmul model uses the same min(warps, 4)/4). DRAM and L2 are chip-wide and not scaled.

plus, per round of resident CTAs on the busiest SM, the per-CTA prologue/epilogue (``cta_overhead``: pipeline fill
at one global latency + the prologue's tile bytes, O/LSE store bytes, the last step's exposed softmax; per KV loop),
in full for the first round and r^−½ of it for each later one (``fill_rounds``).

time = body + fill + launch. Achieved FLOP/s is matmul FLOPs / time (the FlashAttention papers' convention; masked
elements of diagonal tiles are counted because the tensor cores compute them).

resource = the resource that sets the body (``binding_resource``): the largest compute-side time (tensor, sfu, fp32)
when compute is at least the memory side as the body combines them, else the largest memory-side time (smem, l2,
dram); SM-local times enter × sm_scale, sm_scale = 1 / (tail efficiency × warp-issue factor). bound (``bound_of``), in this order:
  "launch"       launch overhead exceeds the body;
  "parallelism"  resource is SM-local (tensor, sfu, fp32, smem) and sm_scale ≥ PARALLELISM_SCALE (2): at least half
                 of the binding time is idle SMs (fewer CTAs than SMs: sms_busy < sm_count), a short last wave or too
                 few warps to issue — e.g. 16 CTAs on 132 SMs, sm_scale 8.25, the busy SMs at full rate but the GPU
                 at 12% of its peak;
  resource       otherwise.
Occupancy (resident CTAs per SM, registers, shared memory) is ``iosim.occupancy``, the rule the L2 timeline uses.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from iosim import cost_ws
from iosim.counts import Counts, KernelCounts
from iosim.errors import IosimError
from iosim.expr import evaluate
from iosim.hwprofile import Hardware
from iosim.occupancy import occupancy, registers_per_thread
from iosim.schedule import Compute, Kernel, Load, Loop, Schedule, Store, walk

# --- modeled constants, each with its source ------------------------------------------------------------------------

PATHS = ("mma.sync", "mma.sync.m8n8k4", "wgmma", "tcgen05", "cube")
"""Tensor-core instruction paths: sm80 warp-level mma.sync m16n8k16 (also what FA2's CUDA kernel runs on Hopper),
sm70 mma.sync.m8n8k4 (Volta's only f16 MMA shape: PTX ISA, "Warp-level Matrix Multiply-Accumulate Instructions",
mma.m8n8k4 requires sm_70; m16n8k16 requires sm_80; Volta has no cp.async either, which is sm_80+),
sm90 warpgroup wgmma, sm100 tcgen05 (TMEM accumulators), Ascend Cube unit."""

NATIVE_PATH = {"sm70": "mma.sync.m8n8k4", "sm75": "mma.sync", "sm80": "mma.sync", "sm86": "mma.sync", "sm89": "mma.sync",
               "sm90": "wgmma", "sm100": "tcgen05", "dav-c220": "cube"}
"""The fastest path each architecture offers (what cuBLAS and Triton emit there)."""


@dataclass(frozen=True)
class Efficiency:
    value: float
    kind: str
    source: str


_FIT_SOURCE = ("least-squares fit of time = matmul/(peak·eff) + (1 − overlap)·(exp + fp32 time) + step/fill/launch to "
               "the best measured times of 12 shapes (B·N = 65536, H = 16, d 64/128, causal and not) in "
               "reports/validation/h100/speed_tune.csv (H100 SXM5, torch 2.11, triton 3.6, 2026-11-25); in-sample "
               "median |error| ")

PATH_EFFICIENCY: dict[tuple[str, str], Efficiency] = {
    ("sm90", "wgmma"): Efficiency(0.708, "calibrated",
        _FIT_SOURCE + "3.9% (max 11.4%) for iosim's Triton kernel (wgmma, no warp specialization; overlap 0.23 per "
        "CTA, residency rule of overlapped_compute; before that rule 0.66 / 0.46). A cuBLAS "
        "bf16 8192³ GEMM reaches 0.807 of peak (798 TFLOP/s, /work/shared/devices.md)"),
    ("sm90", "mma.sync"): Efficiency(0.406, "calibrated",
        _FIT_SOURCE + "4.3% (max 11.5%) for PyTorch SDPA's FlashAttention-2 (sm80 mma.sync code on Hopper, 2 CTAs/SM; "
        "overlap 0.35 per CTA under the residency rule; before it 0.40 / 0.52); FA3 "
        "(arXiv 2407.08608) abstract: FA2 reaches only 35% of H100 peak"),
    ("sm80", "mma.sync"): Efficiency(0.85, "paper",
        "FlashAttention-2 (arXiv 2307.08691) §1: optimized GEMM reaches 80-90% of the A100 theoretical maximum"),
    ("sm70", "mma.sync.m8n8k4"): Efficiency(0.85, "assumed", "same as sm80 (GEMM 80-90% of peak, FA2 §1) on the "
        "profile's FP16 tensor rate; V100 datasheet constants only, not measured on a V100"),
    ("sm100", "tcgen05"): Efficiency(0.66, "assumed",
        "taken equal to the H100 wgmma fit; FA4 (arXiv 2603.05451) reaches 71% of B200 peak in attention"),
    ("sm100", "wgmma"): Efficiency(0.4, "assumed", "sm90a wgmma code does not run on sm100; Hopper-style kernels "
                                   "fall back to mma.sync-class rates; assumed like sm90 mma.sync"),
    ("sm100", "mma.sync"): Efficiency(0.4, "assumed", "legacy mma.sync on Blackwell; assumed like sm90 mma.sync"),
    ("dav-c220", "cube"): Efficiency(0.927, "estimate",
        "third-party BF16 GEMM about 328 of 353.9 TFLOPS on Ascend 910B (hardware/ascend910b.toml source text)"),
}

GEMM_FRACTION = {
    "sm90": Efficiency(0.807, "measured", "bf16 8192³ torch.matmul 798 TFLOP/s on the validation H100 / 989.4 "
                       "(/work/shared/devices.md)"),
    "sm80": Efficiency(0.85, "paper", "FA2 (arXiv 2307.08691) §1: GEMM 80-90% of peak on A100"),
    "sm70": Efficiency(0.85, "assumed", "as sm80"),
    "sm100": Efficiency(0.807, "assumed", "as the measured H100 fraction"),
    "dav-c220": Efficiency(0.927, "estimate", "third-party BF16 GEMM 328/353.9 TFLOPS"),
}
"""Fraction of the datasheet peak a large GEMM reaches (what ``iosim calibrate``'s matmul measures). A calibrated
tensor rate is divided back out: path efficiency = PATH_EFFICIENCY / GEMM_FRACTION (capped at 1)."""

COMPUTE_OVERLAP = {"mma.sync": 0.35, "mma.sync.m8n8k4": 0.35, "wgmma": 0.23, "tcgen05": 0.23, "cube": 1.0}
"""Fraction of the non-dominant compute (tensor vs exp vs fp32) one CTA hides under its own MMAs (one stream; a
second resident CTA hides more, ``overlapped_compute``). mma.sync 0.35 and wgmma 0.23: refitted with
PATH_EFFICIENCY on the H100 sweep under the residency rule (see _FIT_SOURCE; before it, 0.52 / 0.46 with
efficiencies 0.40 / 0.66 and no residency term). tcgen05: assumed like wgmma (FA4's warp-specialized kernels would
hide more). mma.sync.m8n8k4: assumed as mma.sync (the same warp-synchronous MMA, one CTA's warps in step; not
measured on a V100). Ascend Cube and Vector units are separate cores: 1.0 (assumed)."""

STREAM_CAP = 2
"""Independent streams beyond which more resident CTAs hide no more softmax: two streams already alternate on the
tensor cores (FA3 §3.1 pingpong uses exactly two warpgroups: while one does softmax, the other's GEMMs run; a third
finds no idle tensor-core time left to fill). Also keeps small, high-occupancy tiles from being credited for
overlap the step overhead already undercounts (tiles_vs_exhaustive_notes.md: block_n ≤ 32 predicted too fast)."""

STREAM_EXPONENT = 0.5
"""Exposed softmax with 2 independent streams = 1/√2 of one stream's. The two CTAs are not synchronised as in FA3's
pingpong (which would hide all of it, exponent → ∞), nor is the hiding proportional to the streams (exponent 1:
refitting efficiency/overlap on speed_tune.csv with it leaves a median error of 8.0% for the Triton kernel vs 3.9%
with 0.5). Chosen once between these two candidates on the fit's 12 shapes (not per shape); measured on the H100 at
d=128, 128×64×4 tiles: 2 stages (2 CTAs/SM) 4.40 ms vs 3 stages (1 CTA/SM) 5.01 ms, the same tile and warps
(cost_validation_raw/tiles.csv, B4 H16 N8192), exposed softmax about 0.6× — close to 1/√2."""

KERNEL_EFFICIENCY: dict[str, Efficiency] = {
    "iosim_persistent_fwd": Efficiency(0.773, "fitted",
        "refit 2026-12-06 (session 11) by the rule of reports/persistent_coupled_timeline.md, written before held4 "
        "(ids 1251–1299) was measured: 0.746 × the median predicted/measured time (1.0358) over the 34 persistent-"
        "Triton runs of the H100 sets held, held2 and held3 under the L2-coupled timeline (all in-sample for it). "
        "Before: "
        "iosim's persistent Triton forward (iosim/triton_kernels/kernels.py ``_persistent_fwd_kernel``) ran 1.34× "
        "(median; geometric mean 1.35×) longer than this model's time for its schedule on the 14 runs of the H100 "
        "held-out set of issue 21 (ids 1031–1044, measured 2026-12-06; reports/validation/h100/persistent/held.md), "
        "its SM read bytes within 0.07%, occupancy from its measured shared memory (one CTA per SM at d = 128, "
        "``schedule.PERSISTENT_SMEM_MEASURED``); 1/1.34 = 0.746, applied to its SM-local times (sm_scale). First fitted "
        "(0.694) before the shared memory was corrected. Cause not identified (255 registers at d = 128: likely "
        "spills; the outer item loop around Triton's software-pipelined KV loop). Sets 1001–1070 and 1071–1095 are "
        "in-sample from these choices on; ids 1201–1299 were measured after them"),
}
"""Per-kernel efficiency beyond its instruction path's, by ``Kernel.name``: divides the SM-local times (``sm_scale``).
Only for kernels measured to run slower than their path's fit, with the data it was fitted on."""

DRAM_EFFICIENCY = Efficiency(0.896, "measured",
    "device-to-device copy about 3.0 TB/s on the validation H100 vs 3.35 datasheet (4.3 vs 4.8 on the H200: 0.896); "
    "/work/shared/devices.md; applied to every chip unless its hbm_bandwidth_bytes_per_s is calibrated/measured")

SMEM_EFFICIENCY = Efficiency(1.0, "paper", "FA4 (arXiv 2603.05451) §2.2: 128 B/clk/SM microbenchmarked = the "
                             "32-bank × 4 B peak; bank-conflict-free ldmatrix/TMA layouts assumed")

SFU_EFFICIENCY = Efficiency(1.0, "documentation", "MUFU.EX2 at the CUDA guide's 16 results/clk/SM (FA3 footnote); "
                            "iosim calibrate measures it")

L2_ATOMIC_EFFICIENCY = Efficiency(1.0, "assumed",
    "an fp32 RED is a read-modify-write in the L2 slice: besides the write's L2 bandwidth (counted with the writes), "
    "its read of the line is charged once more at the full L2 bandwidth. No published or measured RED throughput for "
    "the H100/H200 was found; to be measured (ncu lts__t_sectors_op_red against FA2's backward)")

LAUNCH_OVERHEAD_S = 3e-6
"""Per kernel launch (host launch + GPU front end), assumed 3 µs (typical CUDA launch latency 2–5 µs); iosim
calibrate measures an empty launch and records it in the calibrated profile's header."""

GLOBAL_LATENCY_CYCLES = 1000
"""Round-trip latency of a global load that misses in L1 (L2 or DRAM), in SM cycles: several hundred ns on V100–H100
(Jia et al. arXiv 1804.06826, DRAM ≈ 400–600 ns; about 1000 cycles at the H100's ~1.8–2 GHz). Paid once per
pipeline fill: the fill's loads are issued back to back, so they share one latency."""

@dataclass(frozen=True)
class CtaOverhead:
    """Per-CTA work that its own KV loop cannot hide, each part derived from the schedule (``cta_overhead``)."""

    fill_s: float      # per KV loop: one GLOBAL_LATENCY_CYCLES + the prologue's bytes (Q + (stages−1) K/V tiles)
    epilogue_s: float  # O / LSE store bytes leaving the SM after the loop
    drain_s: float     # the last step's softmax, which no next QKᵀ hides (COMPUTE_OVERLAP × its exp + fp32 time)
    loops: int         # KV loops per CTA (Triton's causal kernel: unmasked + diagonal-band loop, each refills)

    @property
    def total_s(self) -> float:
        return self.fill_s + self.epilogue_s + self.drain_s


STEP_OVERHEAD_CYCLES = 128
"""Per tile step (one visit of the inner loop: QKᵀ → softmax → PV) a dependent chain a CTA cannot overlap with its
own MMAs: row max/sum shuffle reductions, the rescale, barrier/mbarrier waits. Assumed 128 SM cycles, to be fitted on
the H100 validation sweep; divided by the CTAs resident per SM (their chains overlap). This is what makes small
block_n lose when the kernel is otherwise tensor-bound."""

L2_FALLBACK_FACTOR = 4.0
"""L2 bandwidth = 4 × HBM when a profile has none: triton/ops/matmul_perf_model.py (removed in Triton 3.2)."""

RESOURCES = ("tensor", "sfu", "fp32", "smem", "l2", "dram")
SM_LOCAL = ("tensor", "sfu", "fp32", "smem")  # divided by the tail × warp-issue efficiency (sm_scale)

PARALLELISM_SCALE = 2.0
"""bound = "parallelism" when the binding resource is SM-local and sm_scale (1 / (tail × warp-issue efficiency)) is
at least this: the idle SMs, the short last wave or the missing warps then account for at least half of the binding
time (the resource runs at ≤ 50% of its whole-GPU rate), so more CTAs or warps, not a faster resource, is what
would speed the kernel up. 2 is a round threshold (not fitted): a one-wave kernel filling half the SMs reaches it."""

# What each ``bound`` value means, in one sentence a report can print beside it (one source for the CLI and reports).
BOUND_EXPLANATIONS: dict[str, str] = {
    "tensor": "matrix-multiply throughput of the tensor cores (the SMs that have work run at their tensor peak)",
    "sfu": "exponentials on the special-function units (softmax)",
    "fp32": "scalar fp32 work (softmax rescaling, masking) on the CUDA cores",
    "smem": "shared-memory bandwidth (tile loads from shared memory into registers)",
    "l2": "L2 bandwidth (every SM read and write passes the L2)",
    "dram": "DRAM bandwidth (bytes that miss the L2)",
    "launch": "kernel launch overhead (the kernel body is shorter than a launch)",
    "parallelism": "too few CTAs or warps to keep the GPU busy: the grid leaves SMs idle (or the last wave is "
                   "short, or too few warps issue), so the busiest resource runs far below its peak",
}


# --- helpers -----------------------------------------------------------------------------------------------------------

def native_path(hw: Hardware) -> str:
    try:
        return NATIVE_PATH[hw.arch]
    except KeyError:
        raise IosimError(f"no tensor-core instruction path known for arch {hw.arch!r} of {hw.name!r}; "
                         f"known: {', '.join(NATIVE_PATH)}") from None


def tensor_dtype(dtype: str) -> str:
    """The tensor-core rate a problem dtype runs at (fp32 inputs run as tf32, Triton's tl.dot default)."""
    return {"fp32": "tf32"}.get(dtype, dtype)


def path_efficiency(hw: Hardware, path: str, dtype: str) -> Efficiency:
    """Fraction of ``tensor_flops_per_s[dtype]`` the path sustains. A calibrated/measured rate is already a GEMM
    rate on the native path: the native path gets 1.0 and others their ratio to it."""
    if path not in PATHS:
        raise IosimError(f"unknown instruction path {path!r}; known: {', '.join(PATHS)}")
    key = (hw.arch, path)
    if key not in PATH_EFFICIENCY:
        known = sorted(p for a, p in PATH_EFFICIENCY if a == hw.arch)
        raise IosimError(f"instruction path {path!r} is not modeled on {hw.name} ({hw.arch}); known there: {', '.join(known) or 'none'}")
    eff = PATH_EFFICIENCY[key]
    src = hw.sources.get(f"tensor_flops_per_s.{tensor_dtype(dtype)}")
    if src is not None and src.kind in ("calibrated", "measured"):
        g = GEMM_FRACTION.get(hw.arch, Efficiency(1.0, "assumed", "unknown arch"))
        return Efficiency(min(1.0, eff.value / g.value), "derived",
                          f"{hw.name} tensor rate is {src.kind} (a GEMM rate): {path} {eff.value} / GEMM {g.value}")
    return eff


def _is_calibrated(hw: Hardware, key: str) -> bool:
    s = hw.sources.get(key)
    return s is not None and s.kind in ("calibrated", "measured")


def l2_bandwidth(hw: Hardware) -> float:
    return hw.l2_bandwidth_bytes_per_s or L2_FALLBACK_FACTOR * hw.hbm_bandwidth_bytes_per_s


def dram_bandwidth(hw: Hardware) -> float:
    eff = 1.0 if _is_calibrated(hw, "hbm_bandwidth_bytes_per_s") else DRAM_EFFICIENCY.value
    return hw.hbm_bandwidth_bytes_per_s * eff


def _int(e) -> int:
    return int(evaluate(e, {}))


def overlapped_compute(comp: Sequence[float], overlap: float, streams: int) -> float:
    """compute = max(comp) + (1 − overlap) × (the other two) × min(streams, STREAM_CAP) ** −STREAM_EXPONENT.

    ``overlap`` (COMPUTE_OVERLAP) is what one stream hides of its own softmax under its own MMAs (FA3 §3.2,
    intra-warpgroup pipelining). With a second independent stream on the SM, one CTA's exp/FMA work runs while the
    other's wgmma/mma keeps the tensor cores busy (FA3 §3.1 "pingpong scheduling", there enforced for two
    warpgroups): the exposed softmax shrinks. See STREAM_CAP and STREAM_EXPONENT.

    ``streams`` = CTAs resident together on an SM, whatever their warps: the warpgroups of one CTA (iosim's Triton
    kernel, FA2's CUDA kernel) run the same loop and meet at the per-step barriers, so they stay in phase (FA3 §3.1
    needs explicit named barriers to put two warpgroups half a step apart); CTAs share no barrier and drift apart.
    So 8 warps in one CTA add no overlap, two 4-warp CTAs do."""
    m = max(comp)
    rest = sum(comp) - m
    return m + (1.0 - overlap) * rest * min(max(1, streams), STREAM_CAP) ** -STREAM_EXPONENT


def _tensor_roles(kernel: Kernel) -> dict[str, str]:
    """tensor name → space of the buffer it is loaded into / stored from (first use wins)."""
    roles: dict[str, str] = {}
    for st in walk(kernel.body):
        if isinstance(st, (Load, Store)):
            try:
                space = kernel.buffer(st.buffer).space
            except KeyError:
                space = "reg"
            roles.setdefault(("L:" if isinstance(st, Load) else "S:") + st.tile.tensor, space)
    return roles


def _operand_readers(path: str, num_warps: int, block_rows: int) -> int:
    """How many times a shared B operand (K, V) is read from smem per MMA call:
    mma.sync: every warp reads it (warps split the rows, FA2 §3.3); wgmma: once per 4-warp warpgroup;
    tcgen05: once per 128-row MMA (FA4 §2.2); cube: once."""
    if path.startswith("mma.sync"):
        return max(1, num_warps)
    if path == "wgmma":
        return max(1, num_warps // 4)
    if path == "tcgen05":
        return max(1, -(-block_rows // 128))
    return 1


def smem_bytes(schedule: Schedule, kernel: Kernel, kc: KernelCounts, path: str) -> int:
    """Shared-memory traffic of one kernel.

    Counted as in FA4's roofline (arXiv 2603.05451 §3.1.1, T_smem = 3MNd/8192 cycles = Q, K and V operand reads per
    tile): operand reads by the MMAs, plus stores issued from smem buffers (read once). Global→smem fills
    (cp.async/TMA writes) are not counted (they use the write path).
    operand reads: for each Compute with matmul work, the first argument is the A operand (rows split across
    warps: read once) and later smem arguments are B operands (read ``_operand_readers`` times). Per full tile the
    call reads Σ buffer bytes × readers while doing coeff × Π span blocks FLOPs; the kernel's matmul FLOPs are split
    evenly over its matmul computes (exact for FA2's QKᵀ and PV, which do equal work).
    """
    roles = _tensor_roles(kernel)
    total = 0
    for t, v in kc.write_bytes.items():
        if roles.get("S:" + t) == "smem":
            total += v
    cfg = schedule.config
    num_warps = getattr(cfg, "num_warps", 4)
    calls = [st for st in walk(kernel.body) if isinstance(st, Compute) and st.matmul]
    if not calls or kc.matmul_flops == 0:
        return total
    share = kc.matmul_flops / len(calls)
    for st in calls:
        read, flops_per_call = operand_read_bytes(kernel, st, path, num_warps)
        if flops_per_call == 0:
            continue
        total += int(share * read / flops_per_call)
    return total


def operand_read_bytes(kernel: Kernel, st: Compute, path: str, num_warps: int) -> tuple[float, int]:
    """(smem operand bytes one full-tile call of ``st`` reads, its FLOPs) under ``smem_bytes``' rule. A 2-CTA pair
    ("ws-2cta", modeled as one program of the pair's rows, ``cost_ws.sms_per_program``) runs MMAs of M = 256 rows
    whose B operand is split between the two CTAs' smem and read once per MMA (FA4 arXiv 2603.05451 §2.2): B is read
    once per 128·2 rows, half the reads two 1-CTA MMAs of 128 rows would make. A cluster that only multicasts its
    TMA loads (FA3's ClusterM = 2) still reads B from every CTA's smem: unchanged."""
    flops_per_call = 0
    rows = 1
    for w in st.matmul:
        blocks = [_int(s.block) for s in w.spans]
        flops_per_call += _int(w.coeff) * math.prod(blocks)
        rows = blocks[0] if blocks else 1
    read = 0
    for pos, name in enumerate(st.args):
        try:
            buf = kernel.buffer(name)
        except KeyError:
            continue
        if buf.space != "smem":
            continue
        readers = 1 if pos == 0 else _operand_readers(path, num_warps, -(-rows // cost_ws.sms_per_program(kernel)))
        read += _int(buf.bytes) * readers
    return read, flops_per_call


def tile_steps(kernel: Kernel, kc: KernelCounts) -> float:
    """Inner-loop steps: matmul FLOPs / the FLOPs of all matmul computes on full tiles (ragged tiles count as a
    fraction of a step)."""
    per = 0
    for st in walk(kernel.body):
        if isinstance(st, Compute) and st.matmul:
            for w in st.matmul:
                per += _int(w.coeff) * math.prod(_int(s.block) for s in w.spans)
    return kc.matmul_flops / per if per else 0.0


def _load_store_bytes(kernel: Kernel, schedule_elem_bytes: Mapping[str, int]) -> tuple[int, int, int, int]:
    """(bytes loaded outside any loop, bytes loaded per iteration of the KV loop(s), bytes stored outside loops,
    number of top-level loops that load) — one CTA's view of its buffers."""
    bufs = {b.name: _int(b.bytes) for b in kernel.buffers}
    elems = {b.name: _int(b.bytes) // b.elem_bytes for b in kernel.buffers}
    outer_ld = inner_ld = outer_st = 0
    loops = 0
    for st in kernel.body:
        if isinstance(st, Load):
            outer_ld += bufs.get(st.buffer, 0)
        elif isinstance(st, Store):
            # bytes leaving the SM are in the stored tensor's element size (an fp32 accumulator stored as bf16 O)
            outer_st += elems.get(st.buffer, 0) * schedule_elem_bytes.get(st.tile.tensor, 0)
        elif isinstance(st, Loop):
            per = sum(bufs.get(x.buffer, 0) for x in walk(st.body) if isinstance(x, Load))
            if per:
                loops += 1
                inner_ld = max(inner_ld, per)
    return outer_ld, inner_ld, outer_st, loops


def cta_overhead(schedule: Schedule, kernel: Kernel, kc: KernelCounts, hw: Hardware, num_stages: int,
                 comp: Sequence[float], overlap: float, resident: int) -> CtaOverhead:
    """One round of resident CTAs: what each CTA pays outside its steady-state loop (none of it shrinks with N).

    * fill (per KV loop): the first QKᵀ waits for the Q tile and the first K/V tile: one global round trip
      (GLOBAL_LATENCY_CYCLES) + those bytes at the SM's share of L2 bandwidth (l2_bandwidth / sm_count, the
      ``resident`` CTAs of the round sharing it). Triton's pipeliner peels num_stages − 1 loads into the prologue,
      but the consumer waits only on stage 0's barrier (TMA/cp.async requests of one CTA are issued in order), so
      stages 1 … num_stages − 2 arrive under the first step's compute: the fill does not depend on num_stages
      (FA2's CUDA kernel likewise loads Q and K tile 0 before its loop). A kernel with two KV loops (Triton's causal
      kernel: off-band, then the diagonal band) drains and refills its pipeline once more (Q is loaded once).
    * epilogue: the O tile and LSE row stores (the schedule's stores outside loops) at the same per-SM share.
    * drain: in steady state the softmax of step j hides under the MMAs of step j ± 1 (COMPUTE_OVERLAP); the last
      step's softmax + rescale has no following QKᵀ, so COMPUTE_OVERLAP × (its exp + fp32 time) is exposed once per
      loop. One step's time on one SM = (whole-GPU time) × sm_count / tile steps.
    Not modeled: in-kernel TMA descriptor creation (a 128-B global write + tensormap fence per descriptor;
    ``tl.make_tensor_descriptor``) — no schedule field says a kernel does it.
    """
    outer_ld, inner_ld, outer_st, loops = _load_store_bytes(
        kernel, {n: t.elem_bytes for n, t in schedule.tensors.items()})
    loops = max(1, loops)
    S = hw.sm_count // cost_ws.sms_per_program(kernel)
    per_sm_bw = l2_bandwidth(hw) / S / max(1, resident)
    lat = GLOBAL_LATENCY_CYCLES / hw.boost_clock_hz if (outer_ld or inner_ld) else 0.0
    fill = loops * lat + (outer_ld + loops * inner_ld) / per_sm_bw
    epi = outer_st / per_sm_bw
    steps = tile_steps(kernel, kc)
    soft = (sum(comp) - max(comp)) if comp else 0.0
    drain = loops * overlap * soft * S / steps if steps else 0.0
    return CtaOverhead(fill, epi, drain, loops)


TAIL_EXACT_CTAS = 8
"""``tail_efficiency`` list-schedules only the last TAIL_EXACT_CTAS × S CTAs one by one; the earlier ones are
spread evenly over the SMs (their imbalance is absorbed by the later CTAs, which go to the least-loaded SM)."""


def program_steps(kernel: Kernel) -> list[int] | None:
    """KV steps of every program (linear id, grid[0] fastest): the trips of its top-level loops, evaluated over the
    grid. None if every program has the same trips (or there is no loop), so callers keep the closed form."""
    loops = [st for st in kernel.body if isinstance(st, Loop)]
    if not loops:
        return None
    extents = [_int(ax.extent) for ax in kernel.grid]
    P = math.prod(extents)
    r = np.arange(P, dtype=np.int64)
    env: dict = {}
    for ax, e in zip(kernel.grid, extents):
        env[ax.var] = r % e
        r = r // e
    trips = np.zeros(P, dtype=np.int64)
    for lp in loops:
        try:
            t = np.asarray(evaluate(lp.stop, env)) - np.asarray(evaluate(lp.start, env))
        except (IosimError, KeyError):  # table lookups or symbols the grid does not bind: no per-program work
            return None
        trips = trips + np.maximum(np.broadcast_to(t, (P,)), 0)
    if P == 0 or int(trips.min()) == int(trips.max()):
        return None
    return trips.tolist()


def tail_efficiency(work: Sequence[float] | None, programs: int, sms: int) -> float:
    """Mean work per SM / the busiest SM's work when CTAs go, in launch order, to the SM with the least work
    assigned (greedy list scheduling, Graham 1969; resident CTAs share their SM, so an SM's time ∝ its total work).
    work None: equal CTAs, (P/S)/⌈P/S⌉."""
    if programs <= 0:
        return 1.0
    if work is None:
        per = programs / sms
        return per / math.ceil(per)
    k = min(len(work), TAIL_EXACT_CTAS * sms)
    head = sum(work[:len(work) - k])
    loads = [head / sms] * sms
    heapq.heapify(loads)
    for w in work[len(work) - k:]:
        heapq.heappush(loads, heapq.heappop(loads) + w)
    total = head + sum(work[len(work) - k:])
    return (total / sms) / max(loads) if total > 0 else 1.0


FILL_EXPOSED_EXPONENT = 0.5
"""After the first round of resident CTAs, CTAs start whenever one ends, so one CTA's prologue/epilogue runs while
the other r − 1 resident CTAs are mid-loop: only r^−FILL_EXPOSED_EXPONENT of it stays exposed (``fill_rounds``).
Chosen among {0 (all exposed, the rule before), ½, 1, fully hidden for r ≥ 2, ½ with STREAM_CAP} on the tile-chooser
runs 1–3 on the H100 (23 shapes, reports/validation/h100/cost_validation*_raw/tiles.csv): picks within 5% of the
measured best 19, 21, 20, 18, 20 of 23; time-sweep medians unchanged (FA2 2.5/1.6/2.8%, Triton 7.4/6.4/6.1%)."""


def fill_rounds(rounds: int, resident: int) -> float:
    """Exposed prologue/epilogue rounds: the first round of resident CTAs starts together and pays it in full; each
    later round pays resident^−FILL_EXPOSED_EXPONENT of it (the other resident CTAs keep the SM busy)."""
    if rounds <= 0:
        return 0.0
    return 1.0 + (rounds - 1) * max(1, resident) ** -FILL_EXPOSED_EXPONENT


def tensor_bytes(schedule: Schedule, name: str) -> int:
    t = schedule.tensors[name]
    return math.prod(_int(d) for d in t.dims) * t.elem_bytes


def _gathered_axis(tile) -> int | None:
    """The last axis of ``tile`` read through an index gather (``Span.gather``), or None."""
    axes = [i for i, s in enumerate(tile.spans) if s.gather is not None]
    return max(axes) if axes else None


def _only(stmts, keep) -> tuple:
    """``stmts`` with every statement but the Load ``keep`` dropped (loops kept around it, empty ones dropped)."""
    out = []
    for st in stmts:
        if isinstance(st, Loop):
            body = _only(st.body, keep)
            if body:
                out.append(Loop(st.var, st.start, st.stop, body, st.reverse))
        elif st is keep:
            out.append(st)
    return tuple(out)


def _complete(span, dim) -> bool:
    """The span covers its whole tensor axis (``full(dim)``, or a point of a 1-long axis)."""
    import sympy as sp
    return sp.sympify(span.index) == 0 and sp.sympify(span.block) == sp.sympify(dim) and \
        sp.sympify(span.length) == sp.sympify(dim)


def gather_run_bytes(schedule: Schedule, tile) -> int | None:
    """Bytes of one contiguous run of a gathered tile (the rows the L2 trace reads one by one,
    ``iosim.memory.trace.tile_runs``): the extent of the last incomplete axis after the gathered one times the
    axes after it, × elem_bytes (a whole row [d] of a [B, H, N, d] tensor: d·e). None if that extent is not a
    constant (a ragged inner tile)."""
    g = _gathered_axis(tile)
    t = schedule.tensors[tile.tensor]
    c = len(tile.spans) - 1
    while c > g + 1 and _complete(tile.spans[c], t.dims[c]):
        c -= 1
    c = max(c, g + 1)
    if c >= len(tile.spans):  # a gather on the last axis: every element its own run
        return t.elem_bytes
    try:
        ext = _int(tile.spans[c].extent)
        inner = math.prod(_int(d) for d in t.dims[c + 1:])
    except (IosimError, TypeError, ValueError, KeyError):
        return None
    return ext * inner * t.elem_bytes


def gather_sector_bytes(schedule: Schedule, kernel: Kernel, sector_bytes: int) -> tuple[int, int]:
    """(counted bytes, sector-priced bytes) of the kernel's index-gathered loads (``Span.gather``: scattered rows).

    The L2 hands the SMs whole 32-byte sectors (NVIDIA CUDA C++ Best Practices Guide, "Coalesced Access to Global
    Memory": a warp's request is served in 32-byte segments; the profile's ``l2_sector_bytes``). A contiguous tile
    wastes at most its two edge sectors, but each gathered row is its own run, so a row of r bytes moves
    ⌈r / sector⌉ · sector bytes: rows × ⌈row_bytes/32⌉·32 (d = 8 fp16: 16-B rows priced 32 B, half the bytes
    wasted; rows that are a multiple of 32 B cost nothing extra, whatever the 128-B line). Rows are taken
    sector-aligned (row strides that are multiples of 32 B: d·e ∈ 32ℕ); a misaligned row can straddle one sector
    more, which this leaves out. Each gathered Load is counted alone (``iosim.counts.count_kernel`` on the kernel
    reduced to that Load and its loops); a gather whose inner extent is not a constant is priced as counted."""
    from dataclasses import replace as _replace
    from iosim.counts import count_kernel
    loads = [st for st in walk(kernel.body) if isinstance(st, Load) and _gathered_axis(st.tile) is not None]
    counted = priced = 0
    for ld in loads:
        run = gather_run_bytes(schedule, ld.tile)
        kc = count_kernel(schedule, _replace(kernel, body=_only(kernel.body, ld)))
        b = kc.read_bytes.get(ld.tile.tensor, 0)
        counted += b
        if run is None or run <= 0 or b % run:
            priced += b
            continue
        priced += b // run * (-(-run // sector_bytes) * sector_bytes)
    return counted, priced


def compulsory_dram_bytes(schedule: Schedule, kc: KernelCounts) -> tuple[int, int]:
    """(read, write) DRAM bytes of one kernel when no L2 model is given: each tensor the kernel reads, or updates
    atomically (the L2 fetches the line to add into it), is read from DRAM once (min(SM bytes, tensor size)), each
    tensor it writes is written once; all re-reads hit in L2."""
    fetched = dict(kc.read_bytes)
    for t, v in kc.atomic_bytes.items():
        fetched[t] = fetched.get(t, 0) + v
    r = sum(min(v, tensor_bytes(schedule, t)) for t, v in fetched.items())
    w = sum(min(v, tensor_bytes(schedule, t)) for t, v in kc.write_bytes.items())
    return r, w


# --- results -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelTime:
    """Predicted time of one kernel launch. *_s are unscaled resource times (whole GPU at full rate); time_s applies
    overlap, tail and warp-issue scaling and adds launch overhead."""

    name: str
    path: str
    tensor_s: float
    sfu_s: float
    fp32_s: float
    smem_s: float
    l2_s: float
    dram_s: float
    launch_s: float
    compute_s: float  # after the compute-overlap rule (+ step_s), before SM scaling
    step_s: float  # tile-step chains: steps × STEP_OVERHEAD_CYCLES / (clock × SMs × resident CTAs)
    fill_s: float  # per-CTA prologue/epilogue: rounds of resident CTAs × cta_overhead().total_s (in body_s)
    sm_scale: float  # 1 / (tail efficiency × warp-issue factor): multiplies SM-local times
    body_s: float
    time_s: float
    bound: str  # ``bound_of``: the resource, "parallelism" or "launch"
    resource: str  # the resource with the largest scaled time (what bound names unless parallelism/launch)
    programs: int
    sms_busy: int  # SMs that get at least one CTA: min(programs, sm_count)
    ctas_per_sm: int
    occupancy_limiter: str
    registers_per_thread: int
    smem_per_cta: int
    waves: float  # programs / (sm_count × ctas_per_sm)
    tail_efficiency: float
    tensor_efficiency: float
    spills: bool
    matmul_flops: int
    flops: int
    sm_bytes: int
    smem_bytes: int
    dram_read_bytes: int
    dram_write_bytes: int
    dram_assumed: bool  # True: compulsory traffic, no L2 model
    notes: tuple[str, ...] = ()
    cta_overhead: CtaOverhead | None = None  # per-round parts of fill_s
    prefetch: bool = False  # loads overlapped in-CTA although num_stages = 1 (preset)
    sector_pad_bytes: int = 0  # index-gathered rows priced at whole L2 sectors beyond their counted bytes (in l2_s)

    @property
    def achieved_flops_per_s(self) -> float:
        return self.matmul_flops / self.time_s if self.time_s else 0.0

    @property
    def resource_times(self) -> dict[str, float]:
        """Per-resource times as they enter the bound (SM-local ones scaled by sm_scale)."""
        s = self.sm_scale
        return {"tensor": self.tensor_s * s, "sfu": self.sfu_s * s, "fp32": self.fp32_s * s,
                "smem": self.smem_s * s, "l2": self.l2_s, "dram": self.dram_s}

    def intensity(self) -> dict[str, float]:
        """Arithmetic intensity (matmul FLOPs per byte) at each memory level."""
        dram = self.dram_read_bytes + self.dram_write_bytes
        return {"dram": self.matmul_flops / dram if dram else math.inf,
                "l2": self.matmul_flops / self.sm_bytes if self.sm_bytes else math.inf,
                "smem": self.matmul_flops / self.smem_bytes if self.smem_bytes else math.inf}


@dataclass(frozen=True)
class TimeEstimate:
    """Predicted time of a schedule: its kernels run one after another. Resource times are sums over kernels."""

    algorithm: str
    hardware: str
    kernels: tuple[KernelTime, ...]
    tensor_s: float
    sfu_s: float
    fp32_s: float
    smem_s: float
    l2_s: float
    dram_s: float
    launch_s: float
    time_s: float
    bound: str  # bound of the kernel that takes the most time
    resource: str  # resource of that kernel
    matmul_flops: int
    flops: int
    dram_read_bytes: int
    dram_write_bytes: int
    dram_assumed: bool
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def achieved_flops_per_s(self) -> float:
        """matmul FLOPs / time (FLOP/s)."""
        return self.matmul_flops / self.time_s if self.time_s else 0.0

    @property
    def achieved_total_flops_per_s(self) -> float:
        """all FLOPs (matmul + exp + other) / time."""
        return self.flops / self.time_s if self.time_s else 0.0

    def to_dict(self) -> dict:
        def kd(k: KernelTime) -> dict:
            return {"name": k.name, "path": k.path, "time_s": k.time_s, "bound": k.bound, "resource": k.resource,
                    "sms_busy": k.sms_busy, "programs": k.programs,
                    "achieved_flops_per_s": k.achieved_flops_per_s,
                    **{f"{r}_s": getattr(k, f"{r}_s") for r in RESOURCES}, "launch_s": k.launch_s,
                    "ctas_per_sm": k.ctas_per_sm, "occupancy_limiter": k.occupancy_limiter,
                    "registers_per_thread": k.registers_per_thread, "waves": k.waves,
                    "tail_efficiency": k.tail_efficiency, "tensor_efficiency": k.tensor_efficiency,
                    "smem_bytes": k.smem_bytes, "dram_read_bytes": k.dram_read_bytes,
                    "dram_write_bytes": k.dram_write_bytes, "dram_assumed": k.dram_assumed, "notes": list(k.notes)}
        return {"time_s": self.time_s, "bound": self.bound, "resource": self.resource,
                "achieved_flops_per_s": self.achieved_flops_per_s,
                **{f"{r}_s": getattr(self, f"{r}_s") for r in RESOURCES}, "launch_s": self.launch_s,
                "dram_assumed": self.dram_assumed, "kernels": [kd(k) for k in self.kernels]}


def binding_resource(times: Mapping[str, float], compute_part_s: float, memory_part_s: float) -> str:
    """The resource that sets the body: of the compute side (tensor, sfu, fp32: compute = the largest of them plus
    the exposed rest, ``overlapped_compute``) when it is at least the memory side as the body adds them up, else of
    the memory side (smem, l2, dram). Taking the largest raw resource time instead would name DRAM for a kernel
    whose DRAM time hides under a longer compute (square_tiling on the A100 in the main report)."""
    side = ("tensor", "sfu", "fp32") if compute_part_s >= memory_part_s else ("smem", "l2", "dram")
    return max(side, key=lambda r: (times[r], -RESOURCES.index(r)))


def bound_of(resource: str, sm_scale: float, launch_exceeds_body: bool) -> str:
    """What limits a kernel (module docstring, "bound"): "launch" if the launch overhead exceeds the body;
    "parallelism" if the binding resource is SM-local and sm_scale ≥ PARALLELISM_SCALE; else the resource."""
    if launch_exceeds_body:
        return "launch"
    if resource in SM_LOCAL and sm_scale >= PARALLELISM_SCALE:
        return "parallelism"
    return resource


# --- the model -----------------------------------------------------------------------------------------------------

def estimate_kernel(schedule: Schedule, kernel: Kernel, kc: KernelCounts, hw: Hardware, *, path: str | None = None,
                    dram_read_bytes: int | None = None, dram_write_bytes: int | None = None,
                    prefetch: bool = False, regs_per_thread: int | None = None,
                    softmax: cost_ws.SoftmaxTricks | None = None) -> KernelTime:
    """Time of one kernel (see the module docstring for every term and its source). prefetch: the kernel
    overlaps its loads with its own compute although num_stages = 1 (``KernelPreset.prefetch``, FA2);
    regs_per_thread: the kernel preset's register count (None: estimated, ``iosim.occupancy``); softmax: exp
    emulation / conditional rescaling (``iosim.cost_ws.SoftmaxTricks``; None: FA4's for a warp-specialized tcgen05
    kernel, ``cost_ws.default_tricks``, else none). A kernel with ``pipeline`` set is timed by ``iosim.cost_ws``."""
    p = schedule.problem
    cfg = schedule.config
    path = path or native_path(hw)
    dtype = tensor_dtype(p.dtype)
    eff = path_efficiency(hw, path, p.dtype)
    notes: list[str] = []
    num_stages = getattr(cfg, "num_stages", 1)
    occ = occupancy(kernel, hw, num_stages, regs_per_thread)
    if occ.spills:
        notes.append(f"register tiles need about {registers_per_thread(kernel, transient=False)} registers per thread, above "
                     f"{hw.max_registers_per_thread}: the compiler would spill (time not penalised; tiles treats it as illegal)")

    issued = kc.matmul_flops if kc.issued_matmul_flops is None else kc.issued_matmul_flops  # whole tiles (counts)
    tensor_s = issued / (hw.tensor_flops(dtype) * eff.value) if issued else 0.0
    sfu_rate = hw.sfu_ops_per_clock_per_sm * hw.sm_count * hw.boost_clock_hz * SFU_EFFICIENCY.value
    if kernel.pipeline not in cost_ws.PIPELINES:
        raise IosimError(f"{kernel.name}: unknown pipeline {kernel.pipeline!r}; known: {cost_ws.PIPELINES[1:]}")
    tricks = softmax if softmax is not None or not kernel.pipeline else cost_ws.default_tricks(kernel, p, path)
    exp_ops, other_ops = kc.exp_ops, kc.other_flops
    if tricks is not None and tricks != cost_ws.NO_TRICKS:
        exp_ops, other_ops = cost_ws.softmax_work(kernel, exp_ops, other_ops, tile_steps(kernel, kc), p.head_dim,
                                                  tricks)
        notes.append(f"softmax: {tricks.exp_emulation_fraction:.1%} of exps emulated on the FMA pipe, O rescaled in "
                     f"{tricks.rescaled_fraction:.0%} of steps (threshold {tricks.rescale_threshold_log2:g}; FA4)")
    sfu_s = exp_ops / sfu_rate
    fp32_s = other_ops / (hw.fp32_flops_per_s / 2)
    smem = smem_bytes(schedule, kernel, kc, path)
    if hw.smem_bandwidth_bytes_per_clock_per_sm:
        smem_s = smem / (hw.smem_bandwidth_bytes_per_clock_per_sm * hw.sm_count * hw.boost_clock_hz * SMEM_EFFICIENCY.value)
    else:
        smem_s = 0.0
        notes.append(f"{hw.name} has no shared-memory bandwidth: smem time not modeled")
    sm_bytes = kc.sm_read_bytes + kc.sm_write_bytes
    l2_s = sm_bytes / l2_bandwidth(hw)
    if kc.sm_atomic_bytes:
        l2_s += kc.sm_atomic_bytes / (l2_bandwidth(hw) * L2_ATOMIC_EFFICIENCY.value)
        notes.append(f"{kc.sm_atomic_bytes:,} B of fp32 atomics: L2 read-modify-write charged "
                     f"({L2_ATOMIC_EFFICIENCY.kind}: L2_ATOMIC_EFFICIENCY {L2_ATOMIC_EFFICIENCY.value:g})")
    gathered, priced = gather_sector_bytes(schedule, kernel, hw.l2_sector_bytes)
    sector_pad = priced - gathered
    if sector_pad:
        l2_s += sector_pad / l2_bandwidth(hw)
        notes.append(f"index gathers: {gathered:,} B of scattered rows move {priced:,} B in whole "
                     f"{hw.l2_sector_bytes}-B sectors (+{sector_pad:,} B at the L2)")
    if hw.l2_bandwidth_bytes_per_s is None:
        notes.append(f"L2 bandwidth assumed {L2_FALLBACK_FACTOR:g} × HBM ({hw.name} profile has none)")
    assumed = dram_read_bytes is None or dram_write_bytes is None
    cr, cw = compulsory_dram_bytes(schedule, kc)
    dr = cr if dram_read_bytes is None else int(dram_read_bytes)
    dw = cw if dram_write_bytes is None else int(dram_write_bytes)
    if assumed:
        notes.append("DRAM bytes assumed compulsory (each tensor read/written once; no L2 model)")
    dram_s = (dr + dw) / dram_bandwidth(hw)

    comp = [tensor_s, sfu_s, fp32_s]
    ov = COMPUTE_OVERLAP[path]
    spp = cost_ws.sms_per_program(kernel)  # a 2-CTA pair modeled as one program runs on 2 SMs
    P, S = kc.programs, hw.sm_count // spp
    per_sm = P / S
    resident = min(occ.ctas_per_sm, math.ceil(per_sm)) if P else 1
    steps = tile_steps(kernel, kc)
    step_s = steps * STEP_OVERHEAD_CYCLES / (hw.boost_clock_hz * S * max(1, resident))
    if kernel.pipeline:  # warp specialization: iosim.cost_ws (no fitted overlap; the last softmax fully exposed)
        ov = 1.0
        compute_s = cost_ws.ws_compute(tensor_s, sfu_s, fp32_s, kernel.pipeline) + step_s
    else:
        compute_s = overlapped_compute(comp, ov, max(1, resident)) + step_s
    ovh = cta_overhead(schedule, kernel, kc, hw, num_stages, comp, ov, resident)
    steps_p = program_steps(kernel) if getattr(p, "causal", False) else None
    if steps_p is not None:  # a CTA's work: its KV steps + its prologue/epilogue in steps of one SM
        fixed = ovh.total_s / (compute_s * S / steps) if steps and compute_s else 0.0
        steps_p = [t + fixed for t in steps_p]
    tail = tail_efficiency(steps_p, P, S)
    warps = resident * max(1, kernel.threads_per_cta // 32)
    issue = min(1.0, warps / 4) if hw.vendor == "nvidia" else 1.0
    scale = 1.0 / (tail * issue)
    keff = KERNEL_EFFICIENCY.get(kernel.name)
    if keff is not None:
        scale /= keff.value
        notes.append(f"{kernel.name}: SM-local times ÷ {keff.value:g} ({keff.kind}: KERNEL_EFFICIENCY)")
    if tail < 0.999:
        notes.append(f"tail: {P} CTAs on {S} SMs" + (f", busiest SM runs {math.ceil(per_sm)}" if steps_p is None
                     else ", unequal work per CTA (list-scheduled)") + f" ({tail:.0%} efficiency)")
    if issue < 1.0:
        notes.append(f"only {warps} warps resident per SM: tensor/SFU issue at {issue:.0%}")

    mem = max(smem_s * scale, l2_s, dram_s)
    overlapped = num_stages >= 2 or prefetch or bool(kernel.pipeline)
    mem_part = mem  # the memory side of the body as it combines them (binding_resource)
    if overlapped:
        body = max(compute_s * scale, mem)
        if kernel.pipeline:
            notes.append(f"warp-specialized ({kernel.pipeline}): producer TMA loads overlap compute (FA3 §3.1)")
        elif num_stages < 2:
            notes.append("one stage, but the kernel prefetches the next K/V tile in-CTA: loads overlap compute")
    else:
        exposed = compute_s * scale + mem / max(1, resident)
        body = max(exposed, mem)  # memory busy time is a floor: resident CTAs hide waiting, not bytes (docstring)
        notes.append(f"one stage: loads not pipelined, only the {resident} resident CTA(s) per SM overlap them")
        if mem <= exposed:
            mem_part = mem / max(1, resident)
        else:
            notes.append("memory-bound: its busy time exceeds compute + memory / resident CTAs (chip-wide floor)")
    rounds = math.ceil(math.ceil(per_sm) / occ.ctas_per_sm) if P else 0
    fill = fill_rounds(rounds, occ.ctas_per_sm) * ovh.total_s
    body += fill
    launch = LAUNCH_OVERHEAD_S
    times = {"tensor": tensor_s * scale, "sfu": sfu_s * scale, "fp32": fp32_s * scale,
             "smem": smem_s * scale, "l2": l2_s, "dram": dram_s}
    resource = binding_resource(times, compute_s * scale, mem_part)
    bound = bound_of(resource, scale, launch > body)
    return KernelTime(
        name=kernel.name, path=path, tensor_s=tensor_s, sfu_s=sfu_s, fp32_s=fp32_s, smem_s=smem_s, l2_s=l2_s,
        dram_s=dram_s, launch_s=launch, compute_s=compute_s, step_s=step_s, fill_s=fill, sm_scale=scale, body_s=body, time_s=body + launch,
        bound=bound, resource=resource, programs=P, sms_busy=min(P, S) * spp, ctas_per_sm=occ.ctas_per_sm,
        occupancy_limiter=occ.limiter, registers_per_thread=occ.regs_per_thread, smem_per_cta=occ.smem_per_cta_bytes,
        waves=P / (S * occ.ctas_per_sm), tail_efficiency=tail, tensor_efficiency=eff.value, spills=occ.spills,
        matmul_flops=kc.matmul_flops, flops=kc.flops, sm_bytes=sm_bytes, smem_bytes=smem,
        dram_read_bytes=dr, dram_write_bytes=dw, dram_assumed=assumed, notes=tuple(notes),
        cta_overhead=ovh, prefetch=prefetch, sector_pad_bytes=sector_pad)


def _split(total, kernels: Sequence[KernelCounts], weights: Sequence[int], what: str) -> list:
    """A per-schedule DRAM figure → per kernel: None stays None; a sequence/mapping is per kernel; an int is split in
    proportion to each kernel's compulsory traffic (``weights``)."""
    n = len(kernels)
    if total is None:
        return [None] * n
    if isinstance(total, Mapping):
        missing = [k.name for k in kernels if k.name not in total]
        if missing:
            raise IosimError(f"{what}: no value for kernel(s) {', '.join(missing)}")
        return [int(total[k.name]) for k in kernels]
    if isinstance(total, (list, tuple)):
        if len(total) != n:
            raise IosimError(f"{what}: {len(total)} values for {n} kernels")
        return [int(v) for v in total]
    if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0:
        raise IosimError(f"{what} must be a non-negative number of bytes, got {total!r}")
    if n == 1:
        return [int(total)]
    wsum = sum(weights)
    out = [int(total * w // wsum) if wsum else int(total // n) for w in weights]
    out[-1] += int(total) - sum(out)
    return out


def estimate(schedule: Schedule, counts: Counts, hw: Hardware, dram_read_bytes=None, dram_write_bytes=None, *,
             path: str | None = None, prefetch: bool = False, regs_per_thread: int | None = None,
             softmax: cost_ws.SoftmaxTricks | None = None) -> TimeEstimate:
    """Predicted time of ``schedule`` (its kernels in launch order) on ``hw``.

    Args:
        schedule, counts: from ``iosim.pipeline`` (``count(schedule)``).
        dram_read_bytes, dram_write_bytes: from the L2 model — an int for the whole schedule (split over kernels
            in proportion to their compulsory traffic), a per-kernel list, or a {kernel name: bytes} mapping.
            None: compulsory traffic (each tensor a kernel touches read/written once).
        path: tensor-core instruction path ('mma.sync', 'wgmma', 'tcgen05', 'cube'); default the chip's native one.
            FA2's CUDA kernel runs 'mma.sync' on Hopper; Triton emits 'wgmma' there.
        prefetch: loads are prefetched inside the CTA (overlap compute) even with num_stages = 1
            (``KernelPreset.prefetch``; FA2's CUDA kernel).
        regs_per_thread: registers per thread from the kernel preset (``KernelPreset.regs_per_thread``; None:
            estimated by ``iosim.occupancy``), as the L2 timeline takes them.
        softmax: exp emulation / conditional rescaling for every kernel (``iosim.cost_ws.SoftmaxTricks``; None:
            ``cost_ws.default_tricks`` per kernel).
    Raises:
        IosimError: counts that do not belong to the schedule, unknown path, a CTA that fits on no SM.
    """
    if len(counts.kernels) != len(schedule.kernels):
        raise IosimError(f"counts have {len(counts.kernels)} kernels but the schedule has {len(schedule.kernels)}")
    comp = [compulsory_dram_bytes(schedule, kc) for kc in counts.kernels]
    reads = _split(dram_read_bytes, counts.kernels, [c[0] for c in comp], "dram_read_bytes")
    writes = _split(dram_write_bytes, counts.kernels, [c[1] for c in comp], "dram_write_bytes")
    kts = []
    for kernel, kc, r, w in zip(schedule.kernels, counts.kernels, reads, writes):
        if kernel.name != kc.name:
            raise IosimError(f"counts kernel {kc.name!r} does not match schedule kernel {kernel.name!r}")
        kts.append(estimate_kernel(schedule, kernel, kc, hw, path=path, dram_read_bytes=r, dram_write_bytes=w,
                                   prefetch=prefetch, regs_per_thread=regs_per_thread, softmax=softmax))
    kts = tuple(kts)
    total = sum(k.time_s for k in kts)
    slowest = max(kts, key=lambda k: k.time_s)
    eff = path_efficiency(hw, path or native_path(hw), schedule.problem.dtype)
    sources = {
        "tensor": f"{hw.name} tensor_flops_per_s.{tensor_dtype(schedule.problem.dtype)} × {eff.value:.3g} ({eff.kind}: {eff.source})",
        "sfu": f"{hw.name} sfu_ops_per_clock_per_sm × sm_count × boost_clock_hz",
        "fp32": f"{hw.name} fp32_flops_per_s / 2 (one FLOP per instruction)",
        "smem": f"{hw.name} smem_bandwidth_bytes_per_clock_per_sm × sm_count × boost_clock_hz",
        "l2": f"{hw.name} l2_bandwidth_bytes_per_s" if hw.l2_bandwidth_bytes_per_s else f"{L2_FALLBACK_FACTOR:g} × HBM (assumed)",
        "dram": f"{hw.name} hbm_bandwidth_bytes_per_s × {DRAM_EFFICIENCY.value} ({DRAM_EFFICIENCY.source})",
        "launch": f"{LAUNCH_OVERHEAD_S * 1e6:g} µs per kernel (assumed)",
    }
    return TimeEstimate(
        algorithm=schedule.algorithm, hardware=hw.name, kernels=kts,
        **{f"{r}_s": sum(getattr(k, f"{r}_s") for k in kts) for r in RESOURCES},
        launch_s=sum(k.launch_s for k in kts), time_s=total, bound=slowest.bound,
        resource=slowest.resource,
        matmul_flops=sum(k.matmul_flops for k in kts), flops=sum(k.flops for k in kts),
        dram_read_bytes=sum(k.dram_read_bytes for k in kts), dram_write_bytes=sum(k.dram_write_bytes for k in kts),
        dram_assumed=any(k.dram_assumed for k in kts), sources=sources)


def estimate_problem(hw: Hardware, problem, config, algorithm: str = "flash2", *, path: str | None = None,
                     dram_read_bytes=None, dram_write_bytes=None) -> TimeEstimate:
    """Convenience: build the schedule, count it, estimate it."""
    from iosim.counts import count
    from iosim.pipeline import build_schedule
    s = build_schedule(algorithm, problem, config, hw)
    return estimate(s, count(s), hw, dram_read_bytes, dram_write_bytes, path=path)
