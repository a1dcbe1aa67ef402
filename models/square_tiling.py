"""SquareTilingAttention: the small-cache algorithm of Saha & Ye, "The I/O Complexity of Attention, or How Optimal is
Flash Attention?" (ICML 2024, arXiv 2402.07443), Algorithm 1 in §3.2 (Theorem 3.5).

Everything is tiled in B × B squares with B = ⌊√(M/4)⌋ (line 1; M = cache size in elements), so three B × B tiles
and one B-vector fit: 3B² + B ≤ 4B² ≤ M. Attention is computed without softmax max-subtraction, as in the paper:
O = D⁻¹AV with A = exp(QKᵀ) and D = diag(A·1).

Phase 1 (lines 3–14, kernel ``square_tiling_scores``, one CTA per (query block i, batch, head)): for every key block j
and head-dim block ℓ, read Q[i, ℓ] and K[j, ℓ] (B × B each) and accumulate A[i, j]; write exp(A[i, j]) to memory and
add its row sums to d[i]; finally write d[i].
Phase 2 (lines 16–25, kernel ``square_tiling_pv``, one CTA per (query block i, batch, head)): read d[i]; for every
head-dim block j and key block k read A[i, k] and V[k, j], accumulate O[i, j] (B × B), then write it.

Per head, in elements (T_q = ⌈N_q/B⌉, T_kv = ⌈N_kv/B⌉, T_d = ⌈d/B⌉):
  Phase 1 reads Q T_kv·N_q·d, K T_q·N_kv·d; writes A N_q·N_kv, d N_q.
  Phase 2 reads d N_q, A T_d·N_q·N_kv, V T_q·N_kv·d; writes O N_q·d.
With N_q = N_kv = N and B = √M/2 this is ≈ 6N²d/√M + 2N²d/√M + N² = O(N²d/√M) (Theorem 3.5).

A is stored in the problem dtype (as standard attention stores S and P); d in fp32. Causal masking is not part of
the paper's algorithm: the schedule computes the full square (a causal problem is refused).

Work per (i, j, ℓ) step of r×c valid elements and w head-dim columns: matmul 2·r·c·w; per (i, j): exp r·c, other
r·c (row sum); phase 2 per (i, j, k): matmul 2·r·c·w, other r·w (scale by d⁻¹, counted once per k step).
"""

from __future__ import annotations

import math

from iosim.errors import IosimError
from iosim.models._common import check_fit, kv_head, lse_tensor, qkvo_tensors, row_tile
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv, point, var


def paper_block(sram_elements: int) -> int:
    """B = ⌊√(M/4)⌋ — Saha & Ye Algorithm 1, line 1 (M in elements)."""
    if sram_elements < 4:
        raise IosimError(f"square_tiling: M={sram_elements} elements is too small; B = ⌊√(M/4)⌋ needs M >= 4")
    return math.isqrt(sram_elements // 4)


def smem_bytes(block: int, elem_bytes: int) -> int:
    """Q, K (or A, V) and the A (or O) accumulator: three B × B tiles, plus the B-vector d in fp32."""
    return 3 * block * block * elem_bytes + block * STAT_BYTES


def tile(p: Problem, cfg: KernelConfig, hw) -> tuple[int, int | None]:
    """(B, M): block_m if given, else the paper's B from M = SRAM bytes / element size, shrunk until it fits."""
    if cfg.block_m is not None:
        if cfg.block_n is not None and cfg.block_n != cfg.block_m:
            raise IosimError(f"square_tiling uses square B × B tiles; got block_m={cfg.block_m} != block_n={cfg.block_n} "
                             "(give only --block-m)")
        return cfg.block_m, None
    if hw is None and cfg.sram_bytes is None:
        raise IosimError("square_tiling: give block_m (the square tile B), or an SRAM size (sram_bytes or a hardware profile)")
    limit = cfg.sram_bytes if cfg.sram_bytes is not None else hw.smem_per_block_bytes
    m = limit // p.elem_bytes
    b = paper_block(m)
    while b > 1 and smem_bytes(b, p.elem_bytes) > limit:
        b -= 1
    return b, m


def _qk_tile(p: Problem, name: str, b, h, rows: Span, cols: Span, kv: bool) -> Tile:
    heads = p.kv_heads if kv else p.heads
    return Tile(name, (point(b, p.batch), point(kv_head(p, h) if kv else h, heads), rows, cols))


@register("square_tiling", "Saha & Ye SquareTilingAttention (Thm 3.5): B×B tiles, B=⌊√(M/4)⌋; writes A=exp(QKᵀ), then O=D⁻¹AV — O(N²d/√M) IO")
def build(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    if p.causal is True:
        raise IosimError("square_tiling: the paper's algorithm has no causal mask; drop --causal")
    bsz, m = tile(p, cfg, hw)
    d, e = p.head_dim, p.elem_bytes
    tq, tkv, td = cdiv(p.seq_q, bsz), cdiv(p.seq_kv, bsz), cdiv(d, bsz)
    b, h, i, j, ell, k = var("b"), var("h"), var("pid_m"), var("j"), var("l"), var("k")
    grid = (GridAxis("m", i, tq), GridAxis("b", b, p.batch), GridAxis("h", h, p.heads))
    rows, keys_j, dims_l = Span(i, bsz, p.seq_q), Span(j, bsz, p.seq_kv), Span(ell, bsz, d)
    keys_k, dims_j = Span(k, bsz, p.seq_kv), Span(j, bsz, d)

    def a_tile(cols: Span) -> Tile:
        return Tile("A", (point(b, p.batch), point(h, p.heads), rows, cols))

    scores = Kernel("square_tiling_scores", grid, (
        Buffer("q", (bsz, bsz), e), Buffer("k", (bsz, bsz), e), Buffer("a", (bsz, bsz), e),
        Buffer("d", (bsz,), STAT_BYTES)), (
        Loop(j, 0, tkv, (                                                              # line 5
            Loop(ell, 0, td, (                                                         # line 7
                Load("q", _qk_tile(p, "Q", b, h, rows, dims_l, kv=False)),            # line 8
                Load("k", _qk_tile(p, "K", b, h, keys_j, dims_l, kv=True)),
                Compute("square_qk_accumulate", ("q", "k", "a"), matmul=(Work(2, (rows, keys_j, dims_l)),)),  # line 9
            )),
            Compute("square_exp_rowsum", ("a", "d"), exp=(Work(1, (rows, keys_j)),), other=(Work(1, (rows, keys_j)),)),
            Store("a", a_tile(keys_j)),                                                # line 11
        )),
        Store("d", row_tile(p, "D", b, h, rows)),                                      # line 14
    ))
    pv = Kernel("square_tiling_pv", grid, (
        Buffer("a", (bsz, bsz), e), Buffer("v", (bsz, bsz), e), Buffer("o", (bsz, bsz), e),
        Buffer("d", (bsz,), STAT_BYTES)), (
        Load("d", row_tile(p, "D", b, h, rows)),                                       # line 17
        Loop(j, 0, td, (                                                               # line 18
            Loop(k, 0, tkv, (                                                          # line 20
                Load("a", a_tile(keys_k)),                                             # line 21
                Load("v", _qk_tile(p, "V", b, h, keys_k, dims_j, kv=True)),
                Compute("square_pv_accumulate", ("a", "v", "o", "d"), matmul=(Work(2, (rows, keys_k, dims_j)),),
                        other=(Work(1, (rows, dims_j)),)),                             # line 22
            )),
            Store("o", Tile("O", (point(b, p.batch), point(h, p.heads), rows, dims_j))),  # line 24
        )),
    ))
    what = f"B={bsz}" + (f" (B = ⌊√(M/4)⌋ from M={m:,} elements)" if m else "")
    for kern in (scores, pv):
        check_fit(kern, cfg, hw, what)
    tensors = qkvo_tensors(p) | {
        "A": TensorSpec("A", (p.batch, p.heads, p.seq_q, p.seq_kv), e, "scratch"),
        "D": lse_tensor(p, "D", "scratch"),
    }
    notes = (f"square tiles B={bsz}" + (f" from M={m} elements (Saha & Ye Alg. 1, line 1)" if m else " (given)"),)
    return Schedule("square_tiling", p, cfg, tensors, (scores, pv), notes)
