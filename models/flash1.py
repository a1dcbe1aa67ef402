"""FlashAttention (v1) forward, Algorithm 1 of Dao et al., arXiv 2205.14135 §3.1.

Line 2 initialises O = 0, ℓ = 0, m = −∞ in HBM (kernel ``flash1_init``). One CTA per (batch, head) then runs the
paper's loops: outer j over K/V blocks (K_j, V_j loaded once, line 6), inner i over Q blocks, loading Q_i, O_i,
ℓ_i, m_i (line 8) and writing O_i, ℓ_i, m_i back every step (lines 12–13). Tiles from the SRAM size M (elements):
B_c = ⌈M/4d⌉, B_r = min(⌈M/4d⌉, d) (line 1), unless block_m/block_n are given. Causal: the inner loop starts at the
first Q block with a row that sees key block j (block skipping, as the FlashAttention CUDA kernel does).

Per head, non-causal (paper's count, derived from lines 2, 6, 8, 12, 13):
  reads 2·N_kv·d + T_c·(N_q·d + N_q·d + 2·N_q) [K, V once; Q, O, ℓ, m per outer step],
  writes N_q·d + 2·N_q [init] + T_c·(N_q·d + 2·N_q).
O is stored in the problem dtype, ℓ and m in fp32.

Work per (i, j) step of r×c valid elements: matmul 2·r·c·d + 2·r·c·d; exp r·c + 2·r (P̃, e^{m_i−m_new},
e^{m̃−m_new}); other 4·r·c (scale, row max, subtract, row sum) + 5·r·d (line 12 update) + 6·r (lines 10–11).
"""

from __future__ import annotations

import sympy as sp

from iosim.errors import IosimError
from iosim.models._common import check_fit, kv_tile, lse_tensor, q_tile, qkvo_tensors, row_tile, sram_limit
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, Work, cdiv, clamp, var


def paper_tiles(sram_elements: int, head_dim: int) -> tuple[int, int]:
    """(B_r, B_c) = (min(⌈M/4d⌉, d), ⌈M/4d⌉) — Algorithm 1, line 1."""
    bc = -(-sram_elements // (4 * head_dim))
    return min(bc, head_dim), bc


def smem_bytes(br: int, bc: int, d: int, elem_bytes: int) -> int:
    """K_j, V_j (B_c×d), Q_i, O_i (B_r×d) in the problem dtype, ℓ_i, m_i (B_r) in fp32; S_ij lives in registers."""
    return (2 * bc + 2 * br) * d * elem_bytes + 2 * br * STAT_BYTES


def default_sram_elements(limit_bytes: int, d: int, elem_bytes: int) -> int:
    """Largest M (a multiple of 4d, in elements) whose paper tiles fit in ``limit_bytes``."""
    m = (limit_bytes // elem_bytes) // (4 * d) * (4 * d)
    while m >= 4 * d:
        br, bc = paper_tiles(m, d)
        if smem_bytes(br, bc, d, elem_bytes) <= limit_bytes:
            return m
        m -= 4 * d
    raise IosimError(f"flash1: head_dim={d} is too large for {limit_bytes:,} B of SRAM (needs at least "
                     f"{smem_bytes(1, 1, d, elem_bytes):,} B for one row of each tile)")


def tiles(p: Problem, cfg: KernelConfig, hw) -> tuple[int, int, int | None]:
    """(B_r, B_c, M): given tiles, or the paper's rule from M = SRAM elements."""
    if cfg.block_m is not None and cfg.block_n is not None:
        return cfg.block_m, cfg.block_n, None
    if hw is None and cfg.sram_bytes is None:
        raise IosimError("flash1: give block_m and block_n, or an SRAM size (sram_bytes or a hardware profile)")
    limit, _ = sram_limit(cfg, hw)
    m = default_sram_elements(limit, p.head_dim, p.elem_bytes)
    br, bc = paper_tiles(m, p.head_dim)
    return cfg.block_m or br, cfg.block_n or bc, m


def q_start(p: Problem, j, br, bc):
    """First Q block with a row r that sees key j·B_c under the bottom-right causal mask (r ≥ j·B_c − (N_kv − N_q))."""
    if not p.causal:
        return 0
    first_row = sp.sympify(j * bc - (p.seq_kv - p.seq_q))
    return clamp(sp.floor(first_row / br), 0, cdiv(p.seq_q, br))


@register("flash1", "FlashAttention (v1) Algorithm 1: outer loop over K/V blocks, inner over Q blocks; O, ℓ, m read and written every inner step")
def build(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    br, bc, m = tiles(p, cfg, hw)
    d, e = p.head_dim, p.elem_bytes
    tr, tc = cdiv(p.seq_q, br), cdiv(p.seq_kv, bc)
    b, h, i, j = var("b"), var("h"), var("i"), var("j")
    grid = (GridAxis("b", b, p.batch), GridAxis("h", h, p.heads))
    rows, cols = Span(i, br, p.seq_q), Span(j, bc, p.seq_kv)
    init_buffers = (Buffer("o", (br, d), e, space="reg"), Buffer("l", (br,), STAT_BYTES, space="reg"),
                    Buffer("m", (br,), STAT_BYTES, space="reg"))
    init = Kernel("flash1_init", grid, init_buffers, (
        Loop(i, 0, tr, (
            Compute("init", ("o", "l", "m")),
            Store("o", q_tile(p, "O", b, h, rows)),
            Store("l", row_tile(p, "L", b, h, rows)),
            Store("m", row_tile(p, "M", b, h, rows)),
        )),
    ))
    inner = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Load("o", q_tile(p, "O", b, h, rows)),
        Load("l", row_tile(p, "L", b, h, rows)),
        Load("m", row_tile(p, "M", b, h, rows)),
        Compute("flash1_step", ("q", "k", "v", "o", "l", "m"),
                matmul=(Work(4 * d, (rows, cols)),),
                exp=(Work(1, (rows, cols)), Work(2, (rows,))),
                other=(Work(4, (rows, cols)), Work(5 * d + 6, (rows,)))),
        Store("o", q_tile(p, "O", b, h, rows)),
        Store("l", row_tile(p, "L", b, h, rows)),
        Store("m", row_tile(p, "M", b, h, rows)),
    )
    body = (Loop(j, 0, tc, (
        Load("k", kv_tile(p, "K", b, h, cols)),
        Load("v", kv_tile(p, "V", b, h, cols)),
        Loop(i, q_start(p, j, br, bc), tr, inner),
    )),)
    buffers = (
        Buffer("k", (bc, d), e), Buffer("v", (bc, d), e), Buffer("q", (br, d), e), Buffer("o", (br, d), e),
        Buffer("l", (br,), STAT_BYTES), Buffer("m", (br,), STAT_BYTES), Buffer("s", (br, bc), 4, space="reg"),
    )
    kernel = Kernel("flash1_fwd", grid, buffers, body)
    what = f"B_r={br}, B_c={bc}, head_dim={d}" + (f" (paper tiles from M={m:,} elements)" if m else "")
    check_fit(kernel, cfg, hw, what)
    tensors = qkvo_tensors(p) | {"L": lse_tensor(p, "L", "scratch"), "M": lse_tensor(p, "M", "scratch")}
    notes = (f"tiles B_r={br}, B_c={bc}" + (f" from M={m} elements (Algorithm 1, line 1)" if m else " (given)"),)
    return Schedule("flash1", p, cfg, tensors, (init, kernel), notes)
