"""The rule that splits validation runs into "L2-bound" and "the rest", from the nominal working set of the launch.

Fixed on 2026-12-05, before the validation tables were recomputed with it (issue 18), and not to be tuned on their
results. Why: the old split ("measured DRAM reads > 1.15 × (Q+K+V)", ``benchmarks/gpu/compare_l2.py``) classified
a run by the quantity under test, so a run the model got badly wrong could leave the table (one at 1.14× Q+K+V with a
+38.6% error did). The rule below looks only at the launch, never at a measurement.

A run is *L2-bound* when the K/V bytes of the query heads whose CTAs are resident at once exceed half the nominal L2
(the two L2 partitions keep duplicate near copies, so each side holds half: measured,
``reports/calibration/h100/l2_calibration.md`` and ``reports/calibration/h200/l2_calibration.md``, row
``l2_sharing``)::

    resident           = SMs × ctas_per_sm                       (the kernel as launched; occupancy of the cost model)
    blocks_per_head    = ceil(N_q / block_m)
    q_heads_in_flight  = min(B × H, ceil(resident / blocks_per_head))
    kv_heads_in_flight = ceil(q_heads_in_flight / (H / H_kv))    (query heads of one GQA group share a KV head)
    ws_bytes           = kv_heads_in_flight × 2 × N_kv × d × elem_bytes
    L2-bound          iff ws_bytes > l2_size_bytes / 2

A FlexAttention block-sparse run uses the same formula (the dense K/V span of a head).
"""

from __future__ import annotations

from dataclasses import dataclass

from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem

RULE_FIXED_ON = "2026-12-05"


@dataclass(frozen=True)
class WorkingSet:
    """The nominal K/V working set of the CTAs resident at once, and the verdict of the rule."""

    resident_ctas: int
    blocks_per_head: int
    q_heads_in_flight: int
    kv_heads_in_flight: int
    ws_bytes: int
    half_l2_bytes: int

    @property
    def l2_bound(self) -> bool:
        return self.ws_bytes > self.half_l2_bytes


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kv_working_set(problem: Problem, block_m: int, resident_ctas: int, l2_size_bytes: int) -> WorkingSet:
    """The rule of this module on explicit launch facts (block_m rows per CTA, CTAs resident on the whole GPU)."""
    for name, v in (("block_m", block_m), ("resident_ctas", resident_ctas), ("l2_size_bytes", l2_size_bytes)):
        if not isinstance(v, int) or v < 1:
            raise IosimError(f"{name}={v!r}: the L2-bound rule needs a positive integer {name}")
    blocks = _ceil_div(problem.seq_q, block_m)
    q_heads = min(problem.batch * problem.heads, _ceil_div(resident_ctas, blocks))
    kv_heads = _ceil_div(q_heads, problem.heads // problem.kv_heads)
    ws = kv_heads * 2 * problem.seq_kv * problem.head_dim * problem.elem_bytes
    return WorkingSet(resident_ctas, blocks, q_heads, kv_heads, ws, l2_size_bytes // 2)


def launch_working_set(hw, problem: Problem, kernel: str | None = None, config: KernelConfig = KernelConfig(),
                       algorithm: str = "flash2", block_mask=None) -> WorkingSet:
    """The rule for a launch as iosim models it: block_m from the preset (or ``config``), CTAs per SM from the cost
    model's occupancy (``predict(..., l2=False).time.kernels[0].ctas_per_sm``), SMs and L2 size from the profile."""
    from iosim.pipeline import predict
    from iosim.presets import apply

    cfg = apply(kernel, problem, hw, config)[1] if kernel is not None else config
    if cfg.block_m is None:
        raise IosimError("the L2-bound rule needs block_m: pass a kernel preset or a KernelConfig with block_m set")
    pr = predict(hw, problem, config, algorithm, kernel=kernel, l2=False, block_mask=block_mask)
    resident = hw.sm_count * pr.time.kernels[0].ctas_per_sm
    return kv_working_set(problem, cfg.block_m, resident, hw.l2_size_bytes)
