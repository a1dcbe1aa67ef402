"""Limits on input: the largest sizes iosim models, and the warnings for problems a GPU
could not run as given (more memory than it has, a grid over CUDA's launch limits). All checks are arithmetic on
sizes and exact counts; none allocates per access."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from math import prod

from iosim.errors import IosimError
from iosim.expr import evaluate
from iosim.schedule import Schedule

MAX_SIZE = 2**31 - 1
"""Largest batch, heads, sequence length, head dim or tile: the kernels modeled hold sizes as 32-bit ints (FA2's
``Flash_fwd_params``: ``int b, seqlen_q, seqlen_k, d, h, h_k``; Triton's program ids are int32)."""

MAX_WORK = 2**57
"""Largest batch·heads·seq_q·seq_kv·head_dim. The largest count is the backward pass's matmul FLOPs (5 matmuls, 2
FLOPs per multiply-add: 10 × this) or the K+V bytes re-read with 1-row query tiles in fp64 (16 × this); at 2^57 both
stay below 2^61, a factor 4 inside int64, the type of iosim.counts' NumPy vectors and of JSON consumers' integers."""

CUDA_GRID_X_MAX, CUDA_GRID_YZ_MAX = 2**31 - 1, 65535
"""CUDA C++ Programming Guide, "Features and Technical Specifications" table (compute capability ≥ 3.0): maximum
x-dimension of a grid of thread blocks 2^31 − 1, maximum y- or z-dimension 65535."""

TWO_D_GRID_PRESETS = ("triton-tutorial",)
"""Presets that launch a 2-D grid (⌈N/BLOCK_M⌉, Z·H): iosim.presets, Triton's 06-fused-attention.py. Every other
schedule launches its grid axes as x, y and the product of the rest as z: FA2 dim3(num_m_block, b, h)
(``run_flash_fwd``); split-KV and the standard GEMMs (m, n, b·h)."""

GRID_AXIS_NAMES = {"m": "query blocks", "n": "KV blocks or splits", "b": "batch", "h": "heads", "bh": "batch·heads"}


def size_error(name: str, value, flag: str) -> IosimError:
    """The message for a size above MAX_SIZE."""
    return IosimError(f"{name}={value} is too large: sizes must be at most {MAX_SIZE:,} = 2^31 - 1 (the kernels hold "
                      f"sizes as 32-bit ints); set {flag} lower")


def parse_size(text: str, flag: str) -> int:
    """A size flag's value: a whole number, plainly or in scientific notation ("131072", "1e9", "1.5e3" = 1500)."""
    try:
        d = Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        d = Decimal("NaN")
    if not d.is_finite() or d != d.to_integral_value():
        raise IosimError(f"{flag} {text!r} is not a whole number; give one such as 131072 or 1e9")
    if d > MAX_SIZE:
        raise size_error(flag.lstrip("-").replace("-", "_"), text, flag)
    return int(d)


def check_work(problem) -> None:
    """Refuse a concrete problem whose batch·heads·seq_q·seq_kv·head_dim exceeds MAX_WORK."""
    sizes = (problem.batch, problem.heads, problem.seq_q, problem.seq_kv, problem.head_dim)
    if all(isinstance(v, int) for v in sizes) and prod(sizes) > MAX_WORK:
        raise IosimError(f"batch·heads·seq_q·seq_kv·head_dim = {' × '.join(map(str, sizes))} = {prod(sizes):.3g} exceeds "
                         f"2^57 = {MAX_WORK:.3g}, beyond which FLOP and byte counts leave int64; lower --batch, --heads, "
                         "--seq-q/--seq-kv or --head-dim")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def prediction_warnings(schedule: Schedule, hw, kernel_preset: str | None = None) -> list[str]:
    """Why the real kernels could not run this problem as given: memory over the GPU's, a grid over CUDA's limits,
    causal rows that see no key. Empty when none applies."""
    p = schedule.problem
    out = []
    tensor_bytes = {n: prod(int(evaluate(d, {})) for d in t.dims) * t.elem_bytes for n, t in schedule.tensors.items()}
    total = sum(tensor_bytes.values())
    if total > hw.hbm_capacity_bytes:
        out.append(f"{', '.join(tensor_bytes)} take {_gb(total)} (batch={p.batch} heads={p.heads} kv_heads={p.kv_heads} "
                   f"seq_q={p.seq_q} seq_kv={p.seq_kv} head_dim={p.head_dim} {p.dtype}), more than the "
                   f"{_gb(hw.hbm_capacity_bytes)} of {hw.full_name} memory; predicted anyway")
    if hw.vendor == "nvidia":
        for k in schedule.kernels:
            axes = [(ax.name, int(evaluate(ax.extent, {}))) for ax in k.grid]
            rest = axes[1:]
            dims = [axes[:1], rest, []] if kernel_preset in TWO_D_GRID_PRESETS else [axes[:1], rest[:1], rest[1:]]
            for label, part, limit in zip("xyz", dims, (CUDA_GRID_X_MAX, CUDA_GRID_YZ_MAX, CUDA_GRID_YZ_MAX)):
                n = prod(e for _, e in part)
                if n > limit:
                    what = " × ".join(f"{GRID_AXIS_NAMES.get(a, a)} {e:,}" for a, e in part)
                    what += f" = {n:,}" if len(part) > 1 else ""
                    out.append(f"{k.name}: grid.{label} = {what} exceeds CUDA's limit of {limit:,}; the launch would "
                               "fail; predicted anyway")
    if p.causal and isinstance(p.seq_q, int) and isinstance(p.seq_kv, int) and p.seq_q > p.seq_kv:
        out.append(f"causal with seq_q={p.seq_q} > seq_kv={p.seq_kv}: the first {p.seq_q - p.seq_kv} query rows see no "
                   "key (mask aligned bottom-right, FlashAttention >= 2.1) and their output is zero; predicted anyway")
    return out
