"""Warp-specialized kernels (``Kernel.pipeline`` set): what overlaps what, and FA4's softmax changes.

``iosim.cost.estimate_kernel`` calls this module only for kernels whose ``pipeline`` is set; every other kernel keeps
the fitted rule of ``iosim.cost`` (COMPUTE_OVERLAP, STREAM_EXPONENT), untouched. No constant here is fitted.

Per tile step, t = tensor time (QKᵀ then PV, equal FLOPs in the forward: t/2 each), e = exp (MUFU) time,
f = fp32 (FMA pipe) time, x = e + f the softmax of one warpgroup, whose phases (row max → exp → row sum, rescale)
depend on each other (FA3 arXiv 2407.08608 Algorithm 1); the tensor core, MUFU and FMA pipes are separate units
of the SM, so none can be busy longer than its own total time (FA4 arXiv 2603.05451 §3.1.1 roofline:
max(T_MMA, T_exp, T_smem)).

* memory: a producer warp issues the TMA loads into an s-stage circular smem buffer and the consumer warpgroups
  never issue loads (FA3 §3.1, "producer-consumer asynchrony"): loads (L2, DRAM) overlap compute completely,
  whatever num_stages says; smem operand reads are made by the tensor cores during the MMAs and also overlap
  (FA4 §3.1.1 puts T_smem beside T_MMA in a max). body = max(compute, smem, l2, dram).
* "ws": one stream of consumer warpgroups (several warpgroups of one CTA meet at the same barriers and stay in
  phase) with FA3 §3.2's intra-warpgroup 2-stage pipelining: the QKᵀ of step j+1 is issued, then the PV of step j;
  the softmax of j+1 waits for its QKᵀ and runs while PV(j) is on the tensor cores; the next QKᵀ is issued after the
  softmax. Per step: t/2 + max(t/2, x). Exposed: the part of the softmax longer than one GEMM.
* "ws-pingpong" / "ws-2cta": two consumer warpgroups (FA3 §3.1 pingpong with named barriers; FA4 §3.1: two Q tiles
  per CTA, one softmax warpgroup each, the MMA warp alternating) — the softmax of one overlaps the GEMMs of the
  other. Each warpgroup is still a chain GEMMs (t) → softmax (x), so two of them finish a step every (t + x)/2 at
  best; the pipes bound it by t, e and f. Per step: max(t, e, f, (t + x)/2). It equals max(t, e, f) — the tensor
  or the exp time — whenever one pipe dominates the two others together, and it is never above the "ws" time
  (t/2 + max(t/2, x) ≥ both t and (t + x)/2, and ≥ e, f).
  Resident CTAs beyond one are not credited with more overlap (these kernels run 1 CTA per SM, persistent).
* kept from ``iosim.cost`` as for every kernel: STEP_OVERHEAD_CYCLES per step (assumed), the tail, the warp-issue
  factor and the per-CTA fill/epilogue; a 2-CTA pair modeled as one program spans 2 SMs (``sms_per_program``).
* the last step's softmax of each KV loop has no later GEMM to hide under: exposed once per loop (overlap 1.0 in
  ``iosim.cost.cta_overhead``).

FA4's softmax changes (``SoftmaxTricks``; default ``fa4_tricks`` on the tcgen05 path, else none):
* exp emulation: a fraction of the exps runs on the FMA pipe as Cody–Waite range reduction + a degree-3 polynomial
  (FA4 §3.1.1; FA4_EMU_FP32_OPS_PER_EXP fp32 instructions each); sfu ops × (1 − fraction), fp32 ops + fraction ×
  exps × FA4_EMU_FP32_OPS_PER_EXP.
* conditional rescaling: the row max (and the O rescale) is updated only when it grows by more than τ = 8 (log2
  units; FA4 §3.1.1, ``rescale_threshold = 8.0`` for 16-bit inputs): the O·α multiply of dv FLOPs per row and step
  (the models' count) runs in ``rescaled_fraction`` of the steps; the rest leaves fp32. The per-row exp of α is still
  computed (``SoftmaxSm100.update_row_max`` computes it before the threshold test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from iosim.expr import evaluate
from iosim.schedule import Compute, Kernel, Loop, walk

PIPELINES = (None, "ws", "ws-pingpong", "ws-2cta")
PINGPONG = ("ws-pingpong", "ws-2cta")

MMA_FLOPS_PER_CLOCK_PER_SM = {"sm90": 4096, "sm100": 8192}
"""Dense 16-bit tensor-core FLOP per clock per SM: FA4 (arXiv 2603.05451) §2.2, B200 8192 (= 2.25 PF / 148 SMs /
1.85 GHz), Hopper 4096 (= 989.4 TF / 132 / 1.83 GHz). Used for per-tile cycles (``tile_cycles``) only; times in
seconds use the profile's tensor_flops_per_s, which is the same rate at the datasheet's tensor clock."""

FA4_EMU_FP32_OPS_PER_EXP = 7
"""fp32 instructions per emulated exp2, FA4's ``ex2_emulation_2`` (Dao-AILab/flash-attention
flash_attn/cute/utils.py @0251105a, 2026-08-15): fmax clamp, add.rm of 1.5·2²³ (round down), two subtracts (the
fraction; Cody–Waite range reduction), 3 FMAs (degree-3 Horner). The exponent's shl + integer add run on the
integer pipe and are not counted."""

FA4_RESCALE_THRESHOLD_LOG2 = 8.0
"""τ = log2 256 (FA4 §3.1.1; flash_fwd_sm100.py ``rescale_threshold = 8.0`` for 16-bit inputs, 0 for FP8)."""

FA4_RESCALED_FRACTION = 0.1
"""Fraction of steps whose O rescale still runs with τ = 8: reported about 10× fewer rescales (Modal, "We
reverse-engineered Flash Attention 4", 2025-09-26). Data-dependent (the row max grows by > τ rarely after the first
KV tiles of random-like scores); not measured by us."""

FA4_EX2_EMU = {(True, False, 128): (10, 1), (False, True, 128): (16, 1), (True, False, 192): (16, 0),
               (False, True, 192): (32, 1)}
"""(ex2_emu_freq, ex2_emu_start_frg) by (2-CTA, causal, head dim), bf16 on sm100: ``_TUNING_CONFIG`` of
flash_attn/cute/flash_fwd_sm100.py @0251105a (other head dims ≤ 128: freq 16, start 1; above: no emulation)."""


@dataclass(frozen=True)
class SoftmaxTricks:
    exp_emulation_fraction: float = 0.0  # exps computed on the FMA pipe instead of MUFU
    rescale_threshold_log2: float = 0.0  # 0: rescale O every step (FA2, FA3)
    rescaled_fraction: float = 1.0       # of the steps whose O rescale runs when the threshold is > 0


NO_TRICKS = SoftmaxTricks()


def ex2_emulated_fraction(freq: int, cols: int, start_frg: int = 1, res: int = 4, frg_tile: int = 32) -> float:
    """Fraction of a row's exps FA4 emulates (``SoftmaxSm100.apply_exp2_convert``): the row is cut into fragments of
    32; in fragments start_frg … last − 1, pair k (k even) is emulated when k mod freq ≥ freq − res."""
    if freq <= 0 or cols < frg_tile:
        return 0.0
    per_frg = sum(2 for k in range(0, frg_tile, 2) if k % freq >= freq - res)
    frgs = max(0, cols // frg_tile - 1 - start_frg)
    return per_frg * frgs / cols


def sms_per_program(kernel: Kernel) -> int:
    """SMs one program of ``kernel`` runs on: a 2-CTA MMA pair ("ws-2cta") is modeled as one program of the pair's
    rows (models/fa4.py), so it spans ``cluster`` SMs; otherwise 1 (FA3's cluster only multicasts loads)."""
    return max(1, kernel.cluster) if kernel.pipeline == "ws-2cta" else 1


def _step_shape(kernel: Kernel) -> tuple[int, int]:
    """(rows, cols) of the first matmul tile (block_m × block_n in the forward)."""
    for st in walk(kernel.body):
        if isinstance(st, Compute) and st.matmul:
            b = [int(evaluate(s.block, {})) for s in st.matmul[0].spans]
            return (b[0], b[1]) if len(b) >= 2 else (b[0] if b else 1, 1)
    return 1, 1


def fa4_tricks(kernel: Kernel, problem) -> SoftmaxTricks:
    """FA4's defaults for this kernel (bf16/fp16; FP8 uses neither trick)."""
    if problem.dtype not in ("bf16", "fp16"):
        return NO_TRICKS
    d = problem.head_dim
    freq, start = FA4_EX2_EMU.get((kernel.cluster == 2, bool(problem.causal), d), (16, 1) if d <= 128 else (0, 0))
    return SoftmaxTricks(ex2_emulated_fraction(freq, _step_shape(kernel)[1], start), FA4_RESCALE_THRESHOLD_LOG2,
                         FA4_RESCALED_FRACTION)


def default_tricks(kernel: Kernel, problem, path: str) -> SoftmaxTricks:
    """FA4's tricks for a warp-specialized tcgen05 forward kernel (one with an online softmax; FA4 is the one
    modeled); none otherwise (FA4's backward recomputes P = exp(S − L): nothing to rescale, no emulation there)."""
    ok = kernel.pipeline and path == "tcgen05" and online_softmax_rows(kernel)
    return fa4_tricks(kernel, problem) if ok else NO_TRICKS


def online_softmax_rows(kernel: Kernel) -> int:
    """Rows per step of an online softmax: the span of a per-row exp (the rescale factor e^{m_old − m_new}) inside a
    loop; 0 when the kernel has none (a backward pass: P = exp(S − L), nothing to rescale)."""
    for lp in walk(kernel.body):
        if isinstance(lp, Loop):
            for st in walk(lp.body):
                if isinstance(st, Compute):
                    for w in st.exp:
                        if len(w.spans) == 1:
                            return int(evaluate(w.spans[0].block, {}))
    return 0


def softmax_work(kernel: Kernel, exp_ops: float, other_ops: float, steps: float, head_dim: int,
                 tricks: SoftmaxTricks) -> tuple[float, float]:
    """(exps on MUFU, fp32 ops) after exp emulation and conditional rescaling (module docstring)."""
    moved = exp_ops * tricks.exp_emulation_fraction
    skipped = 0.0
    if tricks.rescale_threshold_log2 > 0:
        skipped = (1.0 - tricks.rescaled_fraction) * steps * online_softmax_rows(kernel) * head_dim
    return exp_ops - moved, max(0.0, other_ops + moved * FA4_EMU_FP32_OPS_PER_EXP - skipped)


def ws_compute(tensor_s: float, sfu_s: float, fp32_s: float, pipeline: str) -> float:
    """Compute time of a warp-specialized kernel (module docstring): "ws" t/2 + max(t/2, e + f); pingpong
    max(t, e, f, (t + e + f)/2). Totals stand for per-step times (every step does the same work)."""
    x = sfu_s + fp32_s
    if pipeline in PINGPONG:
        return max(tensor_s, sfu_s, fp32_s, (tensor_s + x) / 2)
    return tensor_s / 2 + max(tensor_s / 2, x)


def tile_cycles(kernel: Kernel, hw, path: str, num_warps: int = 4, tricks: SoftmaxTricks = NO_TRICKS,
                head_dim: int | None = None) -> dict[str, float]:
    """SM cycles of one full tile step at peak per-SM rates: tensor (MMA_FLOPS_PER_CLOCK_PER_SM, else the profile's
    bf16 rate / (SMs × clock)), sfu (sfu_ops_per_clock_per_sm), fp32 (fp32_flops_per_s / 2 per SM and clock) and
    smem (the operand reads of ``iosim.cost.smem_bytes``' rule / smem_bandwidth_bytes_per_clock_per_sm), after
    ``tricks``; per SM (a 2-CTA pair's step over its two SMs). FA4 §3.1.1's forward roofline at M = N = d = 128 on
    the B200: 1024, 1024 (exp), 768 (smem); a 2-CTA pair (M = 256 over 2 SMs) reads K and V once: smem 512."""
    from iosim.cost import operand_read_bytes
    per_clk = hw.sm_count * hw.boost_clock_hz
    mma = MMA_FLOPS_PER_CLOCK_PER_SM.get(hw.arch) or hw.tensor_flops("bf16") / per_clk
    loop = next(lp for lp in kernel.body if isinstance(lp, Loop) and any(
        isinstance(st, Compute) and st.matmul for st in walk(lp.body)))
    val = lambda ws: sum(int(evaluate(w.coeff, {})) * math.prod(int(evaluate(s.block, {})) for s in w.spans)  # noqa: E731
                         for w in ws)
    calls = [st for st in walk(loop.body) if isinstance(st, Compute)]  # one KV step (the finalize is outside)
    flops, exp, other = (sum(val(getattr(st, a)) for st in calls) for a in ("matmul", "exp", "other"))
    smem = sum(operand_read_bytes(kernel, st, path, num_warps)[0] for st in calls if st.matmul)
    d = head_dim if head_dim is not None else int(evaluate(calls[0].matmul[0].coeff, {})) // 2 if calls[0].matmul else 0
    exp, other = softmax_work(kernel, exp, other, 1.0, d, tricks)
    n = sms_per_program(kernel)  # a pair's step runs on its two SMs: cycles per SM
    smem_bw = hw.smem_bandwidth_bytes_per_clock_per_sm
    return {"tensor": flops / mma / n, "sfu": exp / hw.sfu_ops_per_clock_per_sm / n,
            "fp32": other / (hw.fp32_flops_per_s / 2 / per_clk) / n, "smem": smem / smem_bw / n if smem_bw else 0.0}
