"""Problem (what attention to compute) and KernelConfig (how a kernel tiles it): the two inputs besides hardware.

Sizes may be sympy symbols: the symbolic module builds schedules with symbolic sizes, so validation checks only
concrete integers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.limits import MAX_SIZE, check_work, size_error

DTYPE_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
STAT_BYTES = 4  # softmax statistics (m, l, logsumexp) are fp32 in every kernel modeled (FA1 §3.1, FA2 Alg. 1)


def _check_positive(obj, name: str, flag: str) -> None:
    """A size or tile of a frozen dataclass: a sympy symbol (symbolic schedules) or a whole number in
    [1, MAX_SIZE], stored as a plain int (numpy and sympy integers accepted)."""
    v = getattr(obj, name)
    if isinstance(v, sp.Basic) and not v.is_number:
        return
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral) or int(v) <= 0:
        raise IosimError(f"{name} must be a positive integer, got {v!r} (set {flag} to a value >= 1)")
    if int(v) > MAX_SIZE:
        raise size_error(name, v, flag)
    object.__setattr__(obj, name, int(v))


def _check_bool(obj, name: str) -> None:
    v = getattr(obj, name)
    if not isinstance(v, (bool, np.bool_)):
        raise IosimError(f"{name} must be True or False, got {v!r}")
    object.__setattr__(obj, name, bool(v))


@dataclass(frozen=True)
class Problem:
    """Attention O = softmax(Q Kᵀ / sqrt(d) [+ causal mask]) V over batch × heads.

    Q is [batch, heads, seq_q, head_dim]; K, V are [batch, kv_heads, seq_kv, head_dim]; query head h reads KV head
    h // (heads // kv_heads) (GQA; MQA when kv_heads = 1). Causal masking is aligned to the bottom-right corner
    (FlashAttention >= 2.1 convention): query row r sees keys c <= r + seq_kv - seq_q.
    """

    batch: int
    heads: int
    kv_heads: int
    seq_q: int
    seq_kv: int
    head_dim: int
    dtype: str = "bf16"
    causal: bool = False

    def __post_init__(self) -> None:
        for name, flag in (("batch", "--batch"), ("heads", "--heads"), ("kv_heads", "--kv-heads"),
                           ("seq_q", "--seq-q"), ("seq_kv", "--seq-kv"), ("head_dim", "--head-dim")):
            _check_positive(self, name, flag)
        _check_bool(self, "causal")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_BYTES:
            raise IosimError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_BYTES)}")
        h, g = self.heads, self.kv_heads
        if isinstance(h, int) and isinstance(g, int) and h % g:
            raise IosimError(f"kv_heads={g} does not divide heads={h}: GQA needs heads to be a multiple of kv_heads")
        check_work(self)

    @property
    def elem_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def group(self):
        """Query heads per KV head (1 = MHA, heads = MQA)."""
        return self.heads // self.kv_heads if isinstance(self.heads, int) else sp.Symbol("g", positive=True, integer=True)


KV_ORDERS = ("ascending", "descending")


@dataclass(frozen=True)
class KernelConfig:
    """Triton's vocabulary (BLOCK_M, BLOCK_N, num_warps, num_stages) plus the launch knobs that decide L2 reuse.

    grid_order: grid axes from fastest to slowest as the hardware hands out CTAs ('m' = query block,
    'b' = batch, 'h' = head). FA2 and the Triton tutorial launch (m, b, h) / (m, b·h): query block fastest.
    kv_order: direction of the KV loop (FA2's CUDA kernel walks it descending; Triton's tutorial ascending).
    sram_bytes: on-chip memory the algorithm may use (None = the hardware's shared memory per block); FA1's
    tile rule is derived from it.
    band_loop: under causal masking the kernel visits the KV blocks that cross the diagonal in a second loop of
    its own, the only one that applies the mask (Triton's fused-attention tutorial STAGE 1/2, iosim's Triton
    kernel, FlexAttention's full/partial blocks); False = one loop that masks where needed (FA2's CUDA kernel).
    """

    block_m: int | None = None
    block_n: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    grid_order: tuple[str, ...] = ("m", "b", "h")
    kv_order: str = "ascending"
    q_order: str = "ascending"
    sram_bytes: int | None = None
    band_loop: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "sram_bytes", "num_warps", "num_stages"):
            if getattr(self, name) is not None or name.startswith("num_"):
                _check_positive(self, name, "--" + name.replace("_", "-"))
        if isinstance(self.num_warps, int) and (self.num_warps & (self.num_warps - 1) or self.num_warps > 32):
            raise IosimError(f"num_warps must be a power of two (1..32), got {self.num_warps}")
        _check_bool(self, "band_loop")
        if not isinstance(self.grid_order, (tuple, list)) or sorted(map(str, self.grid_order)) != ["b", "h", "m"]:
            raise IosimError(f"grid_order must be a permutation of ('m', 'b', 'h'), got {self.grid_order!r}")
        object.__setattr__(self, "grid_order", tuple(self.grid_order))
        if self.kv_order not in KV_ORDERS or self.q_order not in KV_ORDERS:
            raise IosimError(f"kv_order and q_order must be one of {KV_ORDERS}, got {self.kv_order!r}, {self.q_order!r}")

    def with_tiles(self, block_m: int, block_n: int) -> "KernelConfig":
        return replace(self, block_m=block_m, block_n=block_n)
