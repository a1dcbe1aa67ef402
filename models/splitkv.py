"""Split-KV forward (Flash-Decoding) as PyTorch's vendored FlashAttention-2 runs it (``flash_api.cpp``: ``mha_fwd``,
``set_params_splitkv``, ``num_splits_heuristic``; ``flash_fwd_launch_template.h``: ``run_mha_fwd_splitkv_dispatch``,
``run_flash_splitkv_fwd``; ``flash_fwd_kernel.h``: ``compute_attn_1rowblock_splitkv``, ``combine_attn_seqk_parallel``;
all under ``aten/src/ATen/native/transformers/cuda/flash_attn/``).

GQA packing (``gqa_packed``, default ``gqa_packs``: mha_fwd's ``seqlenq_ngroups_swapped`` — Nq = 1, H > H_k, head_dim
% 8 == 0): q is viewed as (B, G, H_k, d), so the kernels see seqlen_q = G rows and H_k heads; a tile's rows are the
G query heads of one KV head, whose K and V it reads once. Tiles here address the real [B, H, 1, d] Q/O and
[B, H, 1] LSE: row r of KV head hk's tile is query head hk·G + r (G > block_m needs block_m | G). Unpacked, the rows
are the Nq queries of one query head (K/V read once per query head). Nq = 1 is never causal (mha_fwd drops it).

Kernel 1, ``splitkv_fwd`` (``flash_fwd_splitkv_kernel``; num_splits > 1): grid (m_block, split, b·h) with
blockIdx.z = b·h_count + h, so m fastest, then split, head, batch. Split s walks KV blocks
[s·n_per, min((s+1)·n_per, n_stop)) descending (n_per = ⌈T_c/S⌉, n_stop the causal limit, as flash2), and writes
its fp32 partial O_s = acc/ℓ (``out_accum`` [S, B, H, Nq, d_rounded], d columns written) and LSE_s = m + log ℓ
(``lse_accum`` [S, B, H, Nq]); these are FA2's [S, B, H', seqlen_q', …] buffers (same bytes when packed). An empty
split (n_block_max ≤ n_block_min) loads no Q and writes O_s = 0, LSE_s = −∞ (its finalize is counted).
Tiles kBlockM 64, kBlockN 256 (d ≤ 64) / 128 (d ≤ 128) / 64, 4 warps, one smem stage: (64 + 2·kBlockN)·d·2 B.
Measured (ncu, H200, d = 128, ../shared/devices.md): 81,920 B shared memory, 246 registers → ``Kernel`` fields.
Kernel 2, ``splitkv_combine`` (``flash_fwd_splitkv_combine_kernel``): kBlockM = 4 (kHeadDim % 128 == 0), 8
(% 64), else 16 rows per CTA, 128 threads, a 1-D grid of ⌈B·H·Nq/kBlockM⌉ CTAs over the flattened (b, h, q) rows.
Per CTA it reads the S LSE_s of its rows (into shared memory), then O_s split by split (its d columns), and writes
O and LSE once. Modelled as an online merge over s (same reads and writes, interleaved per split). The CTA grid is
exact when kBlockM | Nq or (Nq = 1 and kBlockM | H); otherwise it is ⌈Nq/kBlockM⌉ CTAs per (b, h) (a note says so).
num_splits = 1: PyTorch runs its plain kernel: flash2's schedule, or (packed) the same packed tiles writing O
directly (``flash2_fwd``, one CTA per (m_block, b, KV head)).

num_splits default: ``fa2_launch`` — FA2's heuristic on PyTorch's own numbers (kBlockM 64 and the split kBlockN,
whatever the config's tiles), ``num_splits_heuristic(B·H'·⌈Nq'/64⌉, 2·SMs, ⌈Nkv/kBlockN⌉, 128)``; no hardware → 1.
Work: per visited tile as flash2; finalize as flash2; combine per row per split: exp 2, other 2·d + 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models._common import check_fit, check_head_dim, kv_head, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models import flash2
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, clamp, full, lookup, point, table, var)


def split_tiles(head_dim: int) -> tuple[int, int]:
    """FA2's split-KV tile: kBlockM = 64; kBlockN = 256 (d ≤ 64), 128 (d ≤ 128), else 64 (flash_api.cpp)."""
    return 64, 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


def num_splits_heuristic(batch_nheads_mblocks: int, num_sms: int, num_n_blocks: int, max_splits: int) -> int:
    """FA2's ``num_splits_heuristic`` (flash_api.cpp): 1 if the launch already fills 80% of the SMs; otherwise the
    smallest number of splits whose wave efficiency w/⌈w⌉ (w = launches·s/SMs) is ≥ 85% of the best, skipping
    split counts that do not change ⌈n_blocks/s⌉. FA2 calls it with num_sms = 2·SMs (two CTAs per SM)."""
    if batch_nheads_mblocks >= 0.8 * num_sms:
        return 1
    max_splits = min(max_splits, num_sms, num_n_blocks)

    def eligible(s: int) -> bool:
        return s == 1 or cdiv(num_n_blocks, s) != cdiv(num_n_blocks, s - 1)

    eff = []
    for s in range(1, max_splits + 1):
        if not eligible(s):
            eff.append(0.0)
            continue
        w = batch_nheads_mblocks * s / num_sms
        eff.append(w / math.ceil(w))
    best = max(eff) if eff else 1.0
    for s in range(1, max_splits + 1):
        if eligible(s) and eff[s - 1] >= 0.85 * best:
            return s
    return 1


@dataclass(frozen=True)
class Fa2Launch:
    """What PyTorch's ``mha_fwd`` (flash_api.cpp) decides for a forward: packed = ``seqlenq_ngroups_swapped`` (q
    reshaped (B, H_k, G, d) → (B, G, H_k, d)), then rows = seqlen_q and heads = num_heads as the kernels see them
    (G and H_k when packed), and num_splits from ``set_params_splitkv`` (1 → ``run_mha_fwd`` runs the plain kernel)."""

    packed: bool
    rows: int
    heads: int
    num_splits: int


def gqa_packs(p: Problem) -> bool:
    """``seqlenq_ngroups_swapped`` (mha_fwd): seqlen_q == 1, H > H_k, no window, no dropout, d % 8 == 0, no ALiBi.
    A causal mask makes no window here: mha_fwd sets is_causal = false when seqlen_q == 1 before the test."""
    return p.seq_q == 1 and p.heads > p.kv_heads and p.head_dim % 8 == 0


def fa2_launch(p: Problem, hw) -> Fa2Launch:
    """PyTorch's flash forward decision for ``p`` on ``hw`` (None: no GPU → 1 split): ``set_params_splitkv`` runs
    on every ``mha_fwd`` with num_splits = 0, after the swap: num_m_blocks = ⌈seqlen_q/64⌉, num_n_blocks with the
    split kernel's block_n, ``num_splits_heuristic(B·H·num_m_blocks, 2·SMs, num_n_blocks, 128)``."""
    packed = gqa_packs(p)
    rows, heads = (p.group, p.kv_heads) if packed else (p.seq_q, p.heads)
    bm, bn = split_tiles(p.head_dim)
    ns = 1 if hw is None else num_splits_heuristic(p.batch * heads * cdiv(rows, bm), 2 * hw.sm_count,
                                                   cdiv(p.seq_kv, bn), 128)
    return Fa2Launch(packed, rows, heads, ns)


@dataclass(frozen=True)
class PagedKV:
    """A paged KV cache (vLLM / FlashInfer layout, FA2's ``mha_fwd_kvcache`` with ``block_table``): K and V are
    [num_pages, page_size, H_k, d] pools (token-major, heads interleaved, as k_cache is), and sequence b's logical page
    g lives in physical page block_table[b, g]. FA2 addresses a KV block through the table
    (``compute_attn_1rowblock_splitkv``: row_offset_k = block_table[n_block·kBlockN / page_block_size]·k_batch_stride
    + (n_block·kBlockN % page_block_size)·k_row_stride); a block of kBlockN keys lies inside one page, since kBlockN
    divides page_size (a multiple of 256). Modelled as the flat [num_pages·page_size, H_k, d] pool with each tile moved
    by (block_table[b, g] − g)·page_size rows: same elements, so the same counts; other addresses for the L2."""

    page_size: int
    block_table: np.ndarray
    num_pages: int
    note: str

    def tile(self, p: Problem, name: str, b, h, cols: Span) -> Tile:
        g = sp.floor(sp.sympify(cols.index) / (self.page_size // cols.block))
        shift = (lookup(table("block_table"), b, g) - g) * self.page_size
        return Tile(name, (Span(cols.index, cols.block, cols.length, shift), point(kv_head(p, h), p.kv_heads),
                           full(p.head_dim)))


def paged_kv(p: Problem, block_n: int, page_size: int | None, block_table=None, page_seed: int = 0) -> PagedKV | None:
    """The paged cache of ``build`` (None without page_size): block_table [B, ≥ ⌈N_kv/page_size⌉] of physical pages,
    default a seeded random permutation of the B·⌈N_kv/page_size⌉ pages (``default_rng(page_seed)``, vLLM-like)."""
    if page_size is None:
        if block_table is not None:
            raise IosimError("splitkv: block_table needs page_size (the tokens per page)")
        return None
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0 or page_size % 256:
        raise IosimError(f"splitkv: page_size={page_size!r} must be a positive multiple of 256 (FA2's paged KV: "
                         "'Paged KV cache block size must be divisible by 256', flash_api.cpp)")
    if page_size % block_n:
        raise IosimError(f"splitkv: block_n={block_n} must divide page_size={page_size} (a KV block inside one page)")
    npg = -(-p.seq_kv // page_size)
    if block_table is None:
        bt, src = np.random.default_rng(page_seed).permutation(p.batch * npg).reshape(p.batch, npg), f"seed {page_seed}"
    else:
        bt, src = np.asarray(block_table), "given"
        if bt.ndim != 2 or bt.shape[0] != p.batch or bt.shape[1] < npg or bt.dtype.kind not in "iu" or bt.min() < 0:
            raise IosimError(f"splitkv: block_table of shape {bt.shape} ({bt.dtype}); it must be nonnegative integers "
                             f"[batch={p.batch}, ≥ {npg}] (pages of {page_size} tokens for seq_kv={p.seq_kv})")
    bt = bt.astype(np.int64)
    pages = max(int(bt.max()) + 1, p.batch * npg)
    return PagedKV(page_size, bt, pages, f"paged KV: {pages:,} pages of {page_size} tokens, block table {src}; "
                   "K/V tiles read their physical pages (the L2 sees them scattered)")


def combine_rows(head_dim: int) -> int:
    """Rows per combine CTA (``run_flash_splitkv_fwd``): 4 if kHeadDim % 128 == 0, 8 if % 64 == 0, else 16; kHeadDim
    is head_dim rounded up to 32, 64, 96, 128, 160, 192, 224 or 256 (``HEADDIM_SWITCH``)."""
    kd = next(x for x in (32, 64, 96, 128, 160, 192, 224, 256) if head_dim <= x)
    return 4 if kd % 128 == 0 else 8 if kd % 64 == 0 else 16


def rounded_head_dim(head_dim: int) -> int:
    """``head_size_rounded`` of mha_fwd: d rounded up to 32 (d ≤ 128) or 64 — the row stride of out_accum."""
    m = 32 if head_dim <= 128 else 64
    return -(-head_dim // m) * m


MEASURED_SPLIT_KERNEL = {128: (246, 81920)}
"""kHeadDim → (registers, dynamic shared memory bytes) of flash_fwd_splitkv_kernel<…<kHeadDim, 64, kBlockN, 4>>, ncu
on the validation H200 (../shared/devices.md); other head dims: estimated."""


def split_plan(p: Problem, cfg: KernelConfig, hw, num_splits, gqa_packed, who: str) -> tuple[KernelConfig, bool, int]:
    """(config with the split kernel's tiles, GQA-packed?, number of splits) of FA2's split-KV forward, as
    ``mha_fwd`` decides them (``gqa_packs``, ``fa2_launch``, ``num_splits_heuristic``); who names the caller in
    errors (splitkv, and the sparse decodes built on it)."""
    if not all(isinstance(getattr(p, n), int) for n in ("batch", "heads", "seq_q", "seq_kv", "head_dim")):
        raise IosimError(f"{who}: needs concrete sizes (the number of splits depends on them)")
    packed = gqa_packs(p) if gqa_packed is None else gqa_packed
    if not isinstance(packed, bool) or (packed and not (p.seq_q == 1 and p.heads > p.kv_heads)):
        raise IosimError(f"{who}: gqa_packed={gqa_packed!r} needs True/False, and True needs seq_q = 1 and "
                         f"heads > kv_heads (got seq_q={p.seq_q}, heads={p.heads}, kv_heads={p.kv_heads})")
    if cfg.block_m is None or cfg.block_n is None:
        dm, dn = split_tiles(p.head_dim)
        cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, d = cfg.block_m, p.head_dim
    G = p.group
    Hx, Mq = (p.kv_heads, G) if packed else (p.heads, p.seq_q)
    tm = cdiv(Mq, bm)
    if packed and tm > 1 and G % bm:
        raise IosimError(f"{who}: a packed group of G={G} query heads over {tm} row blocks needs block_m={bm} to "
                         f"divide G; use block_m ≥ {G} or a divisor of G")
    if num_splits is None:
        launch = fa2_launch(p, hw) if packed == gqa_packs(p) else None
        ns = launch.num_splits if launch else (1 if hw is None else num_splits_heuristic(
            p.batch * Hx * cdiv(Mq, 64), 2 * hw.sm_count, cdiv(p.seq_kv, split_tiles(d)[1]), 128))
    else:
        ns = num_splits
    if isinstance(ns, bool) or not isinstance(ns, int) or ns < 1:
        raise IosimError(f"{who}: num_splits must be a positive integer, got {ns!r}")
    return cfg, packed, ns


@register("splitkv", "Split-KV forward (flash-decoding, FA2's decode path): GQA-packed rows, KV range split over CTAs, "
          "fp32 partial O + LSE per split, combine kernel")
def build(p: Problem, cfg: KernelConfig, hw=None, num_splits: int | None = None,
          gqa_packed: bool | None = None, page_size: int | None = None, block_table=None,
          page_seed: int = 0) -> Schedule:
    """num_splits: KV splits (None = PyTorch's heuristic for ``hw``, 1 without hardware); gqa_packed: pack the G
    query heads of a KV head into one tile's rows (None = PyTorch's ``seqlenq_ngroups_swapped`` rule);
    page_size, block_table, page_seed: a paged KV cache (``paged_kv``)."""
    check_head_dim(p, "splitkv")
    cfg, packed, ns = split_plan(p, cfg, hw, num_splits, gqa_packed, "splitkv")
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    B, H, Hk, Nq, G = p.batch, p.heads, p.kv_heads, p.seq_q, p.group
    Hx, Mq = (Hk, G) if packed else (H, Nq)  # heads and rows per head as the kernels see them
    tm, tn = cdiv(Mq, bm), cdiv(p.seq_kv, bn)
    paged = paged_kv(p, bn, page_size, block_table, page_seed)
    kv = flash2.kv_tile if paged is None else paged.tile
    if ns == 1 and not packed and paged is None:
        sched = flash2.build(p, cfg, hw)
        return Schedule("splitkv", p, sched.config, sched.tensors, sched.kernels,
                        sched.notes + ("num_splits = 1: no partials, no combine (FA2 writes O directly)",))
    n_per = cdiv(tn, ns)
    b, h, i, s, j, z = var("b"), var("h"), var("pid_m"), var("split"), var("j"), var("q_loaded")
    rows, cols = Span(i, bm, Mq), Span(j, bn, p.seq_kv)
    if packed:  # row r of KV head h's tile = query head h·G + r (Nq = 1)
        heads = Span(h, G, H) if tm == 1 else Span(h * tm + i, bm, H)
        q_t, lse_t = Tile("Q", (point(b, B), heads, full(1), full(d))), Tile("LSE", (point(b, B), heads, full(1)))
        step, stop = flash2.kv_step(p, b, h * G, rows, cols, kv=kv), tn
        o_t = Tile("O", q_t.spans)
    else:
        heads = point(h, H)
        q_t, lse_t, o_t = q_tile(p, "Q", b, h, rows), row_tile(p, "LSE", b, h, rows), q_tile(p, "O", b, h, rows)
        step, stop = flash2.kv_step(p, b, h, rows, cols, kv=kv), flash2.kv_stop(p, i, bm, bn, tn)
    dr = rounded_head_dim(d)

    def part(name, s_, head, row, *rest):
        return Tile(name, (point(s_, ns), point(b, B), head, row) + rest)
    lo = s * n_per if ns > 1 else 0
    hi = clamp(sp.Min(lo + n_per, stop), lo, tn)  # empty split when the causal stop is below its start
    loop = Loop(j, lo, hi, step, reverse=cfg.kv_order == "descending")
    grid = (GridAxis("m", i, tm), GridAxis("n", s, ns), GridAxis("h", h, Hx), GridAxis("b", b, B))
    tensors, tables = qkvo_tensors(p) | {"LSE": lse_tensor(p)}, {}
    if paged is not None:
        tensors |= {n: TensorSpec(n, (paged.num_pages * paged.page_size, p.kv_heads, d), e, "input") for n in "KV"}
        tables = {"block_table": paged.block_table}
    pnotes = () if paged is None else (paged.note,)
    if ns == 1:  # one split: O and LSE written directly (packed: PyTorch's plain kernel on the swapped layout;
        # paged: the split kernel, which mha_fwd_kvcache always runs, run_mha_fwd(…, force_split_kernel=true))
        k = Kernel("flash2_fwd" if paged is None else "splitkv_fwd", grid[:1] + grid[2:], flash2.buffers(bm, bn, d, e), (
            Load("q", q_t), loop, flash2.finalize(p, rows), Store("acc", o_t), Store("lse", lse_t),
        ), threads_per_cta=32 * cfg.num_warps)
        check_fit(k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
        return Schedule("splitkv", p, cfg, tensors, (k,), ((
            f"GQA-packed (seqlenq_ngroups_swapped): {G} query heads per tile, K/V read once per KV head; " if packed
            else "") + "num_splits = 1: no partials, no combine",) + pnotes, tables)
    regs, smem = (MEASURED_SPLIT_KERNEL.get(128 if 96 < d <= 128 else 0, (None, None))
                  if (bm, bn) == split_tiles(d) and cfg.num_warps == 4 else (None, None))
    split_k = Kernel("splitkv_fwd", grid, flash2.buffers(bm, bn, d, e), (
        Loop(z, 0, sp.Min(1, hi - lo), (Load("q", q_t),)),  # an empty split exits before loading Q
        loop,
        flash2.finalize(p, rows, "finalize_split"),
        Store("acc", part("O_accum", s, heads, full(1) if packed else rows, Span(0, d, dr))),
        Store("lse", part("LSE_accum", s, heads, full(1) if packed else rows)),
    ), threads_per_cta=32 * cfg.num_warps, regs_per_thread=regs, smem_bytes=smem)
    check_fit(split_k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    combine, how = _combine(p, ns, dr)
    tensors |= {
        "O_accum": TensorSpec("O_accum", (ns, B, H, Nq, dr), 4, "scratch"),
        "LSE_accum": TensorSpec("LSE_accum", (ns, B, H, Nq), STAT_BYTES, "scratch"),
    }
    src = "given" if num_splits is not None else "FA2 num_splits_heuristic"
    notes = ((f"GQA-packed (seqlenq_ngroups_swapped): {G} query heads per tile, K/V read once per KV head"
              if packed else f"unpacked: K/V read once per query head"),
             f"num_splits={ns} ({src}), {n_per} KV blocks of {bn} per split", how)
    return Schedule("splitkv", p, cfg, tensors, (split_k, combine), notes + pnotes, tables)


def _combine(p: Problem, ns: int, dr: int) -> tuple[Kernel, str]:
    """FA2's combine kernel (``combine_attn_seqk_parallel``) for ``ns`` splits, and a note on its CTA grid."""
    B, H, Nq, d = p.batch, p.heads, p.seq_q, p.head_dim
    k = combine_rows(d)
    b, h, c, s = var("b"), var("h"), var("pid_m"), var("split")
    flat = -(-B * H * Nq // k)
    if Nq == 1 and H % k == 0:  # k consecutive heads of one batch
        grid, head, rows = (GridAxis("m", c, H // k), GridAxis("b", b, B)), Span(c, k, H), full(1)
    else:  # k consecutive queries of one head (exact when k | Nq)
        grid, head, rows = (GridAxis("m", c, cdiv(Nq, k)), GridAxis("h", h, H), GridAxis("b", b, B)), point(h, H), Span(c, k, Nq)
    ctas = math.prod(g.extent for g in grid)
    how = (f"combine: {ctas:,} CTAs of {k} rows" + ("" if ctas == flat else
           f" (FA2 runs {flat:,} over the flattened B·H·Nq rows; same bytes)"))

    def part(name, *rest):
        return Tile(name, (point(s, ns), point(b, B), head, rows) + rest)
    kernel = Kernel("splitkv_combine", grid, (
        Buffer("lse_s", (k,), STAT_BYTES),
        Buffer("o_s", (k, d), 4, space="reg"),
        Buffer("m", (k,), STAT_BYTES, space="reg"),
        Buffer("l", (k,), STAT_BYTES, space="reg"),
        Buffer("acc", (k, d), 4, space="reg"),
        Buffer("lse", (k,), STAT_BYTES, space="reg"),
    ), (
        Loop(s, 0, ns, (
            Load("lse_s", part("LSE_accum")),
            Load("o_s", part("O_accum", Span(0, d, dr))),
            Compute("combine_step", ("lse_s", "o_s", "m", "l", "acc"),
                    exp=(Work(2, (head, rows)),), other=(Work(2 * d + 4, (head, rows)),)),
        )),
        Compute("finalize", ("acc", "m", "l", "lse"), exp=(Work(1, (head, rows)),), other=(Work(d + 1, (head, rows)),)),
        Store("acc", Tile("O", (point(b, B), head, rows, full(d)))),
        Store("lse", Tile("LSE", (point(b, B), head, rows))),
    ), threads_per_cta=128)
    return kernel, how
