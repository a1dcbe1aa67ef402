"""Pieces every attention family shares: the global tensors, tile spans, and the shared-memory fit check."""

from __future__ import annotations

import sympy as sp

from iosim.counts import sram_bytes
from iosim.errors import IosimError
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.schedule import Kernel, Span, TensorSpec, Tile, full, point


def qkvo_tensors(p: Problem) -> dict[str, TensorSpec]:
    """Q, O: [B, H, Nq, d]; K, V: [B, Hkv, Nkv, d] in the problem dtype (row-major, contiguous per head)."""
    e = p.elem_bytes
    return {
        "Q": TensorSpec("Q", (p.batch, p.heads, p.seq_q, p.head_dim), e, "input"),
        "K": TensorSpec("K", (p.batch, p.kv_heads, p.seq_kv, p.head_dim), e, "input"),
        "V": TensorSpec("V", (p.batch, p.kv_heads, p.seq_kv, p.head_dim), e, "input"),
        "O": TensorSpec("O", (p.batch, p.heads, p.seq_q, p.head_dim), e, "output"),
    }


def lse_tensor(p: Problem, name: str = "LSE", role: str = "output") -> TensorSpec:
    """A per-row fp32 statistic [B, H, Nq] (logsumexp, m or ℓ)."""
    return TensorSpec(name, (p.batch, p.heads, p.seq_q), STAT_BYTES, role)


def kv_head(p: Problem, h):
    """KV head read by query head h: h // (heads / kv_heads) (GQA/MQA)."""
    if isinstance(p.heads, int) and p.heads == p.kv_heads:
        return h
    return sp.floor(h / p.group) if not isinstance(p.group, int) or p.group > 1 else h


def q_tile(p: Problem, name: str, b, h, rows: Span) -> Tile:
    return Tile(name, (point(b, p.batch), point(h, p.heads), rows, full(p.head_dim)))


def kv_tile(p: Problem, name: str, b, h, cols: Span) -> Tile:
    return Tile(name, (point(b, p.batch), point(kv_head(p, h), p.kv_heads), cols, full(p.head_dim)))


def row_tile(p: Problem, name: str, b, h, rows: Span) -> Tile:
    return Tile(name, (point(b, p.batch), point(h, p.heads), rows))


def check_head_dim(p: Problem, algorithm: str, max_head_dim: int = 256, multiple: int = 8) -> None:
    d = p.head_dim
    if isinstance(d, int) and (d > max_head_dim or d % multiple):
        raise IosimError(f"{algorithm}: head_dim={d} is not supported; it must be a multiple of {multiple} "
                         f"and at most {max_head_dim} (FlashAttention-2's limits)")


def sram_limit(config: KernelConfig, hw) -> tuple[int, str]:
    if config.sram_bytes is not None:
        return config.sram_bytes, "--sram-bytes"
    return hw.smem_per_block_bytes, f"{hw.name} shared memory per block"


def check_fit(kernel: Kernel, config: KernelConfig, hw, what: str) -> None:
    """Refuse tiles whose shared-memory buffers exceed the SRAM available to one CTA."""
    if hw is None and config.sram_bytes is None:
        return
    limit, label = sram_limit(config, hw)
    need = sram_bytes(kernel, config.num_stages)
    if need > limit:
        parts = []
        for b in kernel.buffers:
            if b.space == "smem":
                nb = int(b.bytes)
                parts.append(f"{b.name} {nb:,} B" + (f" × {config.num_stages} stages" if b.pipelined else ""))
        raise IosimError(
            f"{kernel.name}: {what} need {need:,} B of shared memory ({' + '.join(parts)}), but {label} is "
            f"{limit:,} B; use smaller block_m/block_n, fewer num_stages, or a chip with more shared memory")
