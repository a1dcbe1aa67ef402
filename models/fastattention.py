"""FastAttention (Lin et al., arXiv 2410.16663, "FastAttention: Extend FlashAttention2 to NPUs and Low-resource
GPUs"): FlashAttention-2 ported to the Ascend 910B. Ascend code is in the functions named ``*_ascend``.

The paper's body was not readable here (only its abstract, §Abstract/§1 claims: two-level tiling for the Cube and
Vector units, a tiling-mask for causal masks, tiling-AllReduce across NPUs); the device facts below are from CANN's
documentation, and every choice the abstract leaves open says which one this schedule takes.

Device (dav-c220, Ascend C docs "NPU Architecture Version 220x"): an AI core is an AIC (Cube unit; L1, L0A/L0B,
L0C) and 2 AIV (Vector unit; a 192 KiB Unified Buffer each), independent cores that pass data **through global
memory** (GM, cached in L2): L0C → UB and UB → L1 do not exist on A2 (CANN cannbot-skills "a2 Cube-to-Vec-to-Cube
pattern"). One block runs per AI core (``max_ctas_per_sm`` = 1). Buffer spaces here: 'smem' = L1 (the profile's
shared memory), 'reg' = L0C (its registers), 'ub' = the AIVs' Unified Buffers (checked against
``ub_per_vector_core_bytes`` here; no other model reads them).

``fastattention_ascend``: one block per (query block i of B_r rows, b, h), as FA2. Level 1 (the Cube tile, our
reading of "two-level tiling": a large B_r × B_c block per Cube↔Vector hand-off, fewer synchronisations) — for
each KV block j of B_c columns:
  Cube:   load K_j (L1), S = QK_jᵀ (L0C), store S (fp32) to the workspace S_ws;
  Vector: level 2 — for each sub-block of B_v rows (B_v: the largest power of two ≤ B_r/2 whose UB working set
          fits, the two AIVs taking alternate sub-blocks; our choice): load S rows (and the mask tile if the block
          crosses the diagonal), online softmax, store P (input dtype) to P_ws;
  Cube:   load P (L1) and V_j (L1), O_j = PV_j (L0C), store O_j (fp32) to O_ws;
  Vector: for each sub-block, load O_j rows, acc = acc·α + O_j (α applied by the softmax step, as FA2).
After the loop the Vector writes O = acc/ℓ and LSE. The workspaces are per AI core (slot = program mod the
resident blocks), reused by every block that core runs, as Ascend kernels allocate them (cannbot-skills:
workspace [GetCubeNum(), 2, TILE_M, TILE_N]; one slot here, the ping-pong second slot left out).

Cube → Vector → Cube traffic per visited r × c tile (SM↔L2 bytes, both directions):
  S: 4·r·c written + 4·r·c read; P: e·r·c written + e·r·c read; O_j: 4·r·d written + 4·r·d read.

Tiling-mask (causal): instead of an N_q × N_kv mask, one precomputed mask M of B_r × (B_r + 2·B_c − 2) bytes
(M[r, t] = 1 iff t > r + B_c − 1) serves every tile that crosses the diagonal: tile (i, j) reads the B_r × B_c
window at column offset clamp(j·B_c − i·B_r − (N_kv − N_q) + B_c − 1, 0, B_r + B_c − 2) (our construction of the
paper's "tiling-mask": exact for the bottom-right-aligned causal mask). Tiles below the diagonal read no mask;
tiles above it are skipped (FA2). Mask bytes per crossing tile: r·c (uint8), against N_q·N_kv for a full mask.

Work per visited tile as flash2 (``models.flash2``), plus r·d (acc += O_j on the Vector) and, on crossing tiles,
r·c (the select with the loaded mask; no compare: the mask is data). L1: Q + num_stages × (K + V) + P.
"""

from __future__ import annotations

import numpy as np

from iosim import reference
from iosim.errors import IosimError
from iosim.models._common import check_fit, check_head_dim, kv_tile, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models.flash2 import band_start, finalize, grid_axes, kv_stop
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv,
                            clamp, full, point, var)

DEFAULT_TILES_ASCEND = (128, 256)
"""(B_r, B_c) for d ≤ 128; B_c = 128 above (L1 fit with 2 stages). PTO-ISA's dav-c220 flash-attention kernel
(pto-isa kernels/manual/common/flash_atten): CUBE_S0 = 128 query rows, TILE_S1 ∈ {128, 256, 512}; we take 256."""

UB_RESERVED_BYTES = 8192
"""UB the Ascend C framework keeps for itself (Ascend C docs, NPU architecture: storage units, "Unified Buffer
reserves 8 KB")."""

MASK_SELECT_FLOPS = 1
"""Per element of a crossing tile: one select against the loaded mask tile (assumed: the mask replaces the index
compare that flash2.MASK_FLOPS counts)."""


def default_tiles_ascend(head_dim: int) -> tuple[int, int]:
    return (DEFAULT_TILES_ASCEND[0], DEFAULT_TILES_ASCEND[1] if head_dim <= 128 else 128)


def tiling_mask_ascend(bm: int, bn: int) -> np.ndarray:
    """The tiling-mask M (B_r × (B_r + 2·B_c − 2), 1 = masked): M[r, t] = 1 iff t > r + B_c − 1 (module docstring)."""
    r, t = np.arange(bm)[:, None], np.arange(bm + 2 * bn - 2)[None, :]
    return (t > r + bn - 1).astype(np.float64)


def ub_bytes_ascend(bm: int, bn: int, bv: int, d: int, e: int) -> int:
    """UB one AIV needs: its half of acc (fp32) and of m, ℓ, LSE, plus one sub-block's S (fp32), P (e), mask (1 B)
    and O_j rows (fp32)."""
    half = -(-bm // 2)
    return half * d * 4 + 3 * half * STAT_BYTES + bv * bn * (4 + e + 1) + bv * d * 4


def vector_rows_ascend(bm: int, bn: int, d: int, e: int, hw) -> int:
    """B_v: the largest power of two ≤ max(1, B_r/2) whose UB working set fits one AIV (any if hw has no UB)."""
    bv = 1 << (max(1, bm // 2).bit_length() - 1)
    ub = getattr(hw, "ub_per_vector_core_bytes", None)
    if ub is None:
        return bv
    while bv >= 1 and ub_bytes_ascend(bm, bn, bv, d, e) > ub - UB_RESERVED_BYTES:
        bv //= 2
    if bv < 1:
        raise IosimError(f"fastattention_ascend: block_m={bm}, block_n={bn}, head_dim={d} need "
                         f"{ub_bytes_ascend(bm, bn, 1, d, e):,} B of Unified Buffer per vector core, more than "
                         f"{hw.name}'s {ub - UB_RESERVED_BYTES:,} B; use a smaller block_m or block_n")
    return bv


# --- NumPy reference ops (reference.OPS) ----------------------------------------------------------------------------

def op_softmax_ascend(ctx, s_ub, mask_ub, m, l, acc, p_ub):
    """One Vector sub-block: rows o..o+r of the block (o = the sub-block's row in the workspace); the masked variant
    applies the loaded tiling-mask window (mask_ub None: no mask). P = exp(S − m') goes to p_ub; acc rows ·= α."""
    (o, _), (r, c) = s_ub.origin, s_ub.ext
    x = s_ub.data[:r, :c]
    if mask_ub is not None:
        x = np.where(mask_ub.data[:r, :c] > 0.5, reference.NEG_INF, x)
    mv, lv, a = m.value(reference.NEG_INF), l.value(0.0), acc.value(0.0)
    m_new = np.maximum(mv[o:o + r], x.max(axis=1))
    safe = reference._safe(m_new)
    p = np.exp(x - safe[:, None])
    alpha = np.exp(mv[o:o + r] - safe)
    lv[o:o + r] = lv[o:o + r] * alpha + p.sum(axis=1)
    a[o:o + r] *= alpha[:, None]
    mv[o:o + r] = m_new
    p_ub.data[:r, :c] = p
    p_ub.set((o, 0), (r, c))
    _consumed(s_ub, mask_ub)
    for b in (m, l):
        b.set((0,), b.data.shape)
    acc.set((0, 0), acc.data.shape)


def op_softmax_nomask_ascend(ctx, s_ub, m, l, acc, p_ub):
    op_softmax_ascend(ctx, s_ub, None, m, l, acc, p_ub)


def op_pv_ascend(ctx, p, v, o_part):
    """O_j = P V_j into a fresh L0C tile (the Cube does not accumulate across KV blocks: the Vector does)."""
    r, c = p.ext
    o_part.data[:r] = p.data[:r, :c] @ v.data[:c]
    o_part.set((0, 0), (r, o_part.data.shape[1]))
    _consumed(p)


def op_update_ascend(ctx, o_ub, acc):
    """acc rows o..o+r += O_j rows (α was applied by the softmax step of the same KV block)."""
    (o, _), (r, _) = o_ub.origin, o_ub.ext
    acc.value(0.0)[o:o + r] += o_ub.data[:r]
    _consumed(o_ub)


def _consumed(*bufs):
    """Workspace tiles sit at the same workspace origin every KV block: mark them consumed so the next load sets
    their extent afresh (a ragged last KV block must not keep the previous block's columns)."""
    for b in bufs:
        if b is not None:
            b.fresh = True


for _name, _fn in (("softmax_ascend", op_softmax_ascend), ("softmax_nomask_ascend", op_softmax_nomask_ascend),
                   ("pv_ascend", op_pv_ascend), ("update_ascend", op_update_ascend)):
    reference.OPS.setdefault(_name, _fn)


# --- the schedule ----------------------------------------------------------------------------------------------------

def kv_step_ascend(p: Problem, b, h, i, rows: Span, cols: Span, slot, slots: int, bm: int, bn: int, bv: int,
                   masked: bool) -> tuple:
    """One level-1 KV block: Cube QKᵀ → S_ws → Vector softmax (B_v-row sub-blocks) → P_ws → Cube PV → O_ws → Vector.
    slot: this block's workspace slot of ``slots``."""
    d, r, c = p.head_dim, rows.extent, cols.extent
    i2 = var("i2")
    ws = lambda name, sub, width: Tile(name, (point(slot, slots), sub, width))  # noqa: E731
    blk, sub = Span(0, bm, r), Span(i2, bv, r)
    nsub = cdiv(bm, bv)
    j_cols = Span(0, bn, c)
    softmax_work = dict(exp=(Work(1, (sub, j_cols)), Work(1, (sub,))),
                        other=(Work(4 + (MASK_SELECT_FLOPS if masked else 0), (sub, j_cols)), Work(d + 4, (sub,))))
    if masked:
        off = clamp(cols.index * bn - i * bm - (p.seq_kv - p.seq_q) + bn - 1, 0, bm + bn - 2)
        vec = (Load("mask_ub", Tile("MASK", (sub, Span(0, bn, c, offset=off)))),
               Compute("softmax_ascend", ("s_ub", "mask_ub", "m", "l", "acc", "p_ub"), **softmax_work))
    else:
        vec = (Compute("softmax_nomask_ascend", ("s_ub", "m", "l", "acc", "p_ub"), **softmax_work),)
    return (
        Load("k", kv_tile(p, "K", b, h, cols)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),)),
        Store("s", ws("S_ws", blk, j_cols)),
        Loop(i2, 0, nsub, (Load("s_ub", ws("S_ws", sub, j_cols)), *vec, Store("p_ub", ws("P_ws", sub, j_cols)))),
        Load("p", ws("P_ws", blk, j_cols)),
        Load("v", kv_tile(p, "V", b, h, cols)),
        Compute("pv_ascend", ("p", "v", "o_part"), matmul=(Work(2 * d, (rows, cols)),)),
        Store("o_part", ws("O_ws", blk, full(d))),
        Loop(i2, 0, nsub, (Load("o_ub", ws("O_ws", sub, full(d))),
                           Compute("update_ascend", ("o_ub", "acc"), other=(Work(d, (sub,)),)))),
    )


def buffers_ascend(bm: int, bn: int, bv: int, d: int, e: int) -> tuple[Buffer, ...]:
    """L1 ('smem'): Q, K and V (pipelined), P; L0C ('reg'): S, O_j; UB ('ub'): acc, m, ℓ, LSE and one sub-block's S,
    P, mask and O_j rows."""
    return (
        Buffer("q", (bm, d), e), Buffer("k", (bn, d), e, pipelined=True), Buffer("v", (bn, d), e, pipelined=True),
        Buffer("p", (bm, bn), e),
        Buffer("s", (bm, bn), 4, space="reg"), Buffer("o_part", (bm, d), 4, space="reg"),
        Buffer("acc", (bm, d), 4, space="ub"), Buffer("m", (bm,), STAT_BYTES, space="ub"),
        Buffer("l", (bm,), STAT_BYTES, space="ub"), Buffer("lse", (bm,), STAT_BYTES, space="ub"),
        Buffer("s_ub", (bv, bn), 4, space="ub"), Buffer("p_ub", (bv, bn), e, space="ub"),
        Buffer("mask_ub", (bv, bn), 1, space="ub"), Buffer("o_ub", (bv, d), 4, space="ub"),
    )


@register("fastattention_ascend", "FastAttention on Ascend 910B (arXiv 2410.16663): FA2 with two-level Cube/Vector "
          "tiling; S, P and PV partials pass Cube↔Vector through GM/L2 workspaces; causal via a tiling-mask")
def build_ascend(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    check_head_dim(p, "fastattention_ascend", multiple=16)  # Cube fractals are 16×16 (CANN ini cube_k_size=16)
    if not all(isinstance(x, int) for x in (p.batch, p.heads, p.seq_q, p.seq_kv, p.head_dim)):
        raise IosimError("fastattention_ascend needs concrete sizes (its workspace slots depend on the block count), "
                         "not symbolic ones")
    if hw is not None and getattr(hw, "vendor", "huawei") != "huawei":
        raise IosimError(f"fastattention_ascend schedules Ascend AI cores (Cube + Vector); use hardware ascend910b "
                         f"(got {hw.name}); on NVIDIA GPUs use flash2 or fastattention_volta")
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = default_tiles_ascend(p.head_dim)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    bv = vector_rows_ascend(bm, bn, d, e, hw)
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    grid, vs = grid_axes(p, cfg, tm)
    b, h, pid = vs["b"], vs["h"], vs["m"]
    programs = tm * p.batch * p.heads
    slots = min(programs, hw.sm_count * hw.max_ctas_per_sm) if hw is not None else programs
    linear, stride = 0, 1
    for ax in grid:  # grid[0] fastest: the launch index of this block
        linear, stride = linear + ax.var * stride, stride * ax.extent
    slot = linear % slots
    i = pid if cfg.q_order == "ascending" else tm - 1 - pid
    j = var("j")
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    rev = cfg.kv_order == "descending"
    step = lambda masked: kv_step_ascend(p, b, h, i, rows, cols, slot, slots, bm, bn, bv, masked)  # noqa: E731
    if p.causal:
        mid = band_start(p, i, bm, bn, tn)
        loops = (Loop(j, 0, mid, step(False), reverse=rev), Loop(j, mid, kv_stop(p, i, bm, bn, tn), step(True), reverse=rev))
        loops = loops[::-1] if rev else loops
    else:
        loops = (Loop(j, 0, tn, step(False), reverse=rev),)
    body = (Load("q", q_tile(p, "Q", b, h, rows)), *loops, finalize(p, rows),
            Store("acc", q_tile(p, "O", b, h, rows)), Store("lse", row_tile(p, "LSE", b, h, rows)))
    kernel = Kernel("fastattention_ascend", grid, buffers_ascend(bm, bn, bv, d, e), body,
                    threads_per_cta=3)  # 1 AIC + 2 AIV instruction streams (the profile's max_threads_per_sm analog)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages} (L1)")
    work = {n: TensorSpec(n, (slots, bm, w), eb, "scratch") for n, w, eb in
            (("S_ws", bn, 4), ("P_ws", bn, e), ("O_ws", d, 4))}
    tensors = qkvo_tensors(p) | {"LSE": lse_tensor(p)} | work
    notes = (f"two-level tiling: Cube tile {bm}×{bn}, Vector sub-blocks of {bv} rows (UB fit); S, P and PV partials "
             f"pass Cube↔Vector through {slots} per-core GM workspaces (L2)",)
    if p.causal:
        tensors["MASK"] = TensorSpec("MASK", (bm, bm + 2 * bn - 2), 1, "input")
        notes += (f"tiling-mask: one {bm}×{bm + 2 * bn - 2} mask (input MASK = models.fastattention."
                  "tiling_mask_ascend) read as a window by each diagonal tile",)
    return Schedule("fastattention_ascend", p, cfg, tensors, (kernel,), notes)


# --- Volta (sm70): FA2's loop with the paper's shared-memory operand layout and the CPU–GPU cooperative KV offload ---
# From the abstract only: "we adapt FlashAttention for Volta-based GPUs by redesigning the operands layout in shared
# memory and introducing a simple yet effective CPU-GPU cooperative strategy" (256K tokens on eight V100s).
#
# fastattention_volta = flash2's schedule (same SM↔L2 bytes: the layout changes where operands sit in shared memory,
# not what is loaded) on the sm70 path mma.sync.m8n8k4 (iosim.cost.NATIVE_PATH), FA2's tiles halved to fit the
# V100's 96 KiB (models.flash2.fitting_tiles). Layout: iosim's smem term already charges conflict-free operand reads
# at the profile's 32 banks × 4 B per clock, which is what the redesigned layout is for; FA2's sm80 layout (ldmatrix
# swizzles) does not exist on sm70, so nothing is added for bank conflicts. Host level: a share of K/V lives in host
# memory and crosses the host link (profile key host_bandwidth_bytes_per_s) once per call, staged into HBM in chunks
# and read by the loop from there; its time is reported in the notes, not added to the kernel time.

HOST_KV_FRACTION_VOLTA = 1.0
"""Share of the call's K/V kept in host memory (our choice, the abstract gives no split): 1.0, every K/V byte crosses
the host link once — the offload's upper cost."""


def host_bytes_volta(p: Problem, fraction: float = HOST_KV_FRACTION_VOLTA) -> int:
    """Host-link bytes per call: the offloaded ⌊fraction·N_kv⌋ tokens of K and V, each once: 2·B·H_kv·tokens·d·e."""
    return 2 * p.batch * p.kv_heads * int(fraction * p.seq_kv) * p.head_dim * p.elem_bytes


@register("fastattention_volta", "FastAttention on Volta: FA2's loop on mma.sync.m8n8k4 (conflict-free smem layout), "
          "a share of K/V in host memory read over the host link once per call")
def build_volta(p: Problem, cfg: KernelConfig, hw=None, host_kv_fraction: float = HOST_KV_FRACTION_VOLTA) -> Schedule:
    from dataclasses import replace

    from iosim.models import flash2
    if not (isinstance(host_kv_fraction, (int, float)) and 0 <= host_kv_fraction <= 1):
        raise IosimError(f"host_kv_fraction={host_kv_fraction!r}: give the share of K/V in host memory, 0 to 1")
    s = flash2.build(p, cfg, hw)
    notes = ("operand layout: FastAttention's shared-memory layout for mma.m8n8k4 (arXiv 2410.16663) — the smem term "
             "counts conflict-free reads, as for flash2",)
    host = host_bytes_volta(p, host_kv_fraction) if isinstance(p.seq_kv, int) else 0
    if host and hw is not None:
        bw = hw.host_bandwidth_bytes_per_s
        notes += (f"host: {host:,} B of K/V ({host_kv_fraction:.0%}) cross the host link once per call"
                  + (f" at {bw / 1e9:.2f} GB/s = {host / bw * 1e3:.3f} ms, not included in the kernel time" if bw else
                     f"; {hw.name} has no host_bandwidth_bytes_per_s, so no host time (add the host link to the "
                     "profile, PCIe 3.0 x16: 15.75e9)"),)
    return replace(s, algorithm="fastattention_volta", notes=s.notes + notes)
