"""The kernel builders the sparse-attention family shares (issue 23): each returns an ``iosim.schedule.Kernel`` (its
docstring gives the IO per (b, h)); the family modules chain them into their schedules. Choosing the blocks is
``models/sparse/selection.py``.

Attention over kept tiles:
* ``listed_fwd_kernel`` — FA2's forward over the KV tiles a table lists per query tile (``models/block_sparse.py``'s
  kernel, FlexAttention's kv_num_blocks / kv_indices tables); ``tile_tables`` builds its tables from a block mask in
  O(kept tiles) (mask blocks a multiple of the kernel tiles: Block-Sparse-Attention's 128-token blocks),
  ``listed_tables`` from tile masks; ``sparse_fwd_kernel`` — the same kernel and its tables from a tile-level mask;
  ``bsa_tiles`` / ``fill_tiles`` — Block-Sparse-Attention's tiles for a head dim;
* ``permuted_fwd_kernel`` — FA2's forward over permuted K/V copies with position tables, two listed loops
  (``list_tables``: the tiles before / after a split per query tile; ``tiles_of``, ``tiles_dividing``).

Pre-passes:
* ``pool_kernel`` — mean-pool ``block`` consecutive rows of a [B, H, N, d] tensor (reference op ``pool_mean``);
  ``pool_gather_kernel`` — the same pooling, 64 output rows per CTA by default with the tail CTA's row loop
  clamped, optionally over rows gathered through a table (reference op ``gath_pool_mean``);
* ``score_kernel`` — S = A·Bᵀ of two pooled/strided tensors, a [B, H, Na, Nb] fp32 score matrix;
* ``select_kernel`` — per score row: read it, write the kept indices (top-k / threshold / sort: a row pass);
* ``gather_kernel`` — copy rows tables[perm][b, h, x] of a tensor into a contiguous scratch copy (permutations);
* ``copy_kernel`` / ``repeat_kv_kernels`` — row copies: F.pad, HF ``repeat_kv`` materialised for GQA.

Triton / PyTorch launches (NSA, FSA, Squeezed Attention): ``triton_kernel`` (shared memory from ``triton_smem``),
``fill_kernel`` (torch.zeros / torch.full), ``STREAM_REGS``, ``INT32`` / ``INT64`` index bytes.

Small pieces: ``attention_tensors`` (Q, K, V, O, LSE), ``bh_grid`` (a (rows, b, h) grid), ``rename_tensors``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, kv_head, lse_tensor, q_tile, qkvo_tensors, row_tile
from iosim.models.block_sparse import block_visible_causal, normalize_mask
from iosim.problem import KernelConfig, Problem
from iosim.reference import register_op
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Span, Store, TensorSpec, Tile, Work, cdiv,
                            clamp, full, gathered, lookup, point, table, var)

FA2_REGS = 255  # FA2 flash_fwd_kernel registers per thread (iosim.presets "fa2"); the fork keeps FA2's kernel traits
INT32 = 4  # bytes of an int32 index (torch.int32)
INT64 = 8  # bytes of an int64 index (torch.int64: argsort, topk)

STREAM_REGS = 32
"""Registers per thread assumed for the streaming PyTorch / small Triton kernels (fills, casts, top-k, gathers,
compactions, the gate combine): they hold a few elements per thread at a time, while their buffers here are whole
CTA tiles (for the reference), which the register estimate would count as live at once. Assumed, not measured."""


# --- small pieces -----------------------------------------------------------------------------------------------------

def attention_tensors(p: Problem) -> dict[str, TensorSpec]:
    """Q, K, V, O and the fp32 LSE of a forward."""
    return qkvo_tensors(p) | {"LSE": lse_tensor(p)}


def bh_grid(batch, heads, rows, name: str = "m") -> tuple[tuple[GridAxis, ...], tuple]:
    """A grid (rows fastest, then b, h) and its variables (r, b, h)."""
    r, b, h = var("r"), var("b"), var("h")
    return (GridAxis(name, r, rows), GridAxis("b", b, batch), GridAxis("h", h, heads)), (r, b, h)


def rename_tensors(kernel: Kernel, names: dict) -> Kernel:
    """The kernel with the tensors of its loads and stores renamed (``names``: old → new), e.g. K → K_rep."""
    def stmt(s):
        if isinstance(s, Loop):
            return replace(s, body=tuple(stmt(x) for x in s.body))
        if isinstance(s, (Load, Store)) and s.tile.tensor in names:
            return replace(s, tile=replace(s.tile, tensor=names[s.tile.tensor]))
        return s
    return replace(kernel, body=tuple(stmt(s) for s in kernel.body))


# --- attention over listed tiles --------------------------------------------------------------------------------------

def bsa_tiles(head_dim: int) -> tuple[int, int]:
    """Block-Sparse-Attention's forward tiles on sm80/sm90 without dropout (``block_sparse_attn_interface.py``
    ``_get_block_size``): d ≤ 64: 128×128; ≤ 128: 128×64; ≤ 160: 128×32; ≤ 256: 128×64."""
    if head_dim <= 64:
        return 128, 128
    if head_dim <= 128:
        return 128, 64
    if head_dim <= 160:
        return 128, 32
    return 128, 64


def fill_tiles(cfg: KernelConfig, tiles: tuple[int, int]) -> KernelConfig:
    return cfg.with_tiles(cfg.block_m or tiles[0], cfg.block_n or tiles[1])


def _compress_rows(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(num [R], idx [R, max(1, max num)]) of a bool [R, C] matrix: each row's True columns ascending, 0-padded —
    the FlexAttention layout of ``block_sparse.compress``, in O(nnz)."""
    rows, cols = np.nonzero(e)
    num = np.bincount(rows, minlength=e.shape[0]).astype(np.int64)
    width = max(1, int(num.max()) if num.size else 1)
    idx = np.zeros((e.shape[0], width), dtype=np.int64)
    start = np.cumsum(num) - num
    idx[rows, np.arange(rows.size) - start[rows]] = cols
    return num, idx


def tile_tables(p: Problem, mask: np.ndarray, block: int, bm: int, bn: int, prefix: str) -> tuple[dict, bool]:
    """Tables of ``listed_fwd_kernel`` from a bool block mask at ``block`` ([T_q, T_kv], or [1|B, H, T_q, T_kv] with
    the first axis 1: per head, shared by the batch): every bm×bn tile inside a kept block is listed, tiles holding
    no visible element (past N, above the causal diagonal) dropped. block must be a multiple of bm and bn (the
    Block-Sparse-Attention fork: one 128-token mask block is two 64-key tiles). Returns (tables, per_head)."""
    if block % bm or block % bn:
        raise IosimError(f"block_m={bm} and block_n={bn} must divide the mask block {block} (a mask block covers whole "
                         "kernel tiles); use tiles that divide it")
    m = np.asarray(mask, dtype=bool)
    per_head = m.ndim == 4
    if per_head and m.shape[0] != 1:
        if not (m == m[:1]).all():
            raise IosimError("a block mask that differs across the batch is not modelled; give [H, T_q, T_kv] "
                             "(shared by the batch) or [T_q, T_kv]")
        m = m[:1]
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    vis = block_visible_causal(p, tm, tn, bm, bn) if p.causal else np.ones((tm, tn), dtype=bool)
    rm, rn = block // bm, block // bn
    tiles = (np.repeat(np.repeat(mh, rm, axis=0), rn, axis=1)[:tm, :tn] & vis for mh in m.reshape(-1, *m.shape[-2:]))
    return listed_tables(p, tiles, per_head, prefix), per_head


def listed_tables(p: Problem, tile_masks, per_head: bool, prefix: str) -> dict:
    """{prefix}kv_num_blocks / {prefix}kv_indices of ``listed_fwd_kernel`` from bool tile masks [T_r, T_c], one per
    head (per_head: lead axis h, p.heads of them) or one shared by heads: each row's kept tiles ascending, 0-padded
    (``_compress_rows``, O(kept tiles))."""
    nums, idxs = [], []
    for e in tile_masks:
        n, i = _compress_rows(e)
        nums.append(n)
        idxs.append(i)
    width = max(i.shape[1] for i in idxs)
    idx = np.zeros((len(idxs), idxs[0].shape[0], width), dtype=np.int64)
    for h, i in enumerate(idxs):
        idx[h, :, :i.shape[1]] = i
    num = np.stack(nums)
    if per_head:
        if num.shape[0] != p.heads:
            raise IosimError(f"a per-head block mask has {num.shape[0]} heads, the problem {p.heads}")
        return {prefix + "kv_num_blocks": num, prefix + "kv_indices": idx}
    return {prefix + "kv_num_blocks": num[0], prefix + "kv_indices": idx[0]}


def listed_fwd_kernel(p: Problem, cfg: KernelConfig, per_head: bool, hw=None, name: str = "sparse_fwd",
                      prefix: str = "", kv_names=("K", "V"), kv_heads: int | None = None, lse: bool = True,
                      fa2_launch: bool = True) -> Kernel:
    """FA2's forward over the KV tiles the tables ``{prefix}kv_num_blocks`` / ``{prefix}kv_indices`` list per query
    tile (``tile_tables``; lead axis h when per_head), the tables built apart (``tile_tables``, ``listed_tables``). Per (b, h):
    reads Q = N_q·d, K + V = 2·d·Σ listed tile rows; writes O = N_q·d (+ LSE = N_q fp32 when ``lse``).
    kv_names: the K/V tensors read (K_rep/V_rep after repeat_kv); kv_heads: their head count (default p.kv_heads).
    fa2_launch: FA2's kernel traits (255 registers, one shared-memory stage (B_r + 2·B_c)·d·e; its cp.async prefetch is
    the schedule's num_stages ≥ 2 overlap), as the Block-Sparse-Attention fork keeps them."""
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    pk = p if kv_heads is None else replace(p, kv_heads=kv_heads)
    tm = cdiv(p.seq_q, bm)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i = vs["b"], vs["h"], vs["m"]
    t = var("t")
    lead = (h,) if per_head else ()
    j = lookup(table(prefix + "kv_indices"), *lead, i, t)
    stop = lookup(table(prefix + "kv_num_blocks"), *lead, i)
    rows, cols = Span(i, bm, p.seq_q), Span(j, bn, p.seq_kv)
    body = (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Loop(t, 0, stop, flash2.kv_step(pk, b, h, rows, cols), reverse=cfg.kv_order == "descending"),
        flash2.finalize(p, rows),
        Store("acc", q_tile(p, "O", b, h, rows)),
    ) + ((Store("lse", row_tile(p, "LSE", b, h, rows)),) if lse else ())
    kernel = Kernel(name, grid, flash2.buffers(bm, bn, d, e), body, threads_per_cta=32 * cfg.num_warps,
                    regs_per_thread=FA2_REGS if fa2_launch else None,
                    smem_bytes=(bm + 2 * bn) * d * e if fa2_launch else None)
    check_fit(kernel, replace(cfg, num_stages=1) if fa2_launch else cfg, hw,
              f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    if tuple(kv_names) != ("K", "V"):
        kernel = rename_tensors(kernel, {"K": kv_names[0], "V": kv_names[1]})
    return kernel


def sparse_fwd_kernel(p: Problem, cfg: KernelConfig, mask: np.ndarray, hw=None, name: str = "sparse_fwd",
                      prefix: str = "") -> tuple[Kernel, dict]:
    """``listed_fwd_kernel`` over the tiles a tile-level mask keeps ([T_r, T_c] or [B, H, T_r, T_c] at block_m ×
    block_n, the same for every batch entry; causal tiles above the diagonal dropped), and its tables: (kernel,
    tables). Per (b, h): reads Q = N_q·d, K + V = 2·d·Σ_listed c_j; writes O = N_q·d, LSE = N_q (fp32) (FA1 Prop. 4).
    Tables are named ``{prefix}kv_num_blocks`` / ``{prefix}kv_indices`` so several sparse kernels can share one
    schedule. The launch is the config's (``fa2_launch=False``)."""
    bm, bn = cfg.block_m, cfg.block_n
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    m = normalize_mask(p, mask, tm, tn)
    if m.ndim == 4:
        if not (m == m[:1]).all():
            raise IosimError("sparse_fwd_kernel: a block mask that differs across the batch is not modelled; give "
                             "[1, H, T_r, T_c] (per head, shared by the batch) or [T_r, T_c]")
        m = m[0]
    vis = block_visible_causal(p, tm, tn, bm, bn) if p.causal else np.ones((tm, tn), dtype=bool)
    per_head = m.ndim == 3
    tables = listed_tables(p, (mh & vis for mh in m.reshape(-1, tm, tn)), per_head, prefix)
    return listed_fwd_kernel(p, cfg, per_head, hw, name, prefix, fa2_launch=False), tables


def tiles_of(mask: np.ndarray, block: int, bm: int, bn: int, tm: int, tn: int) -> np.ndarray:
    """A logical block mask [..., ⌈Nq/B⌉, ⌈Nk/B⌉] at block B as kernel tiles [..., tm, tn] (B a multiple of bm, bn)."""
    ri = (np.arange(tm) * bm) // block
    ci = (np.arange(tn) * bn) // block
    return mask[..., ri, :][..., ci]


def tiles_dividing(p: Problem, cfg: KernelConfig, block: int, method: str) -> KernelConfig:
    """cfg's tiles, or FA2's defaults for the head dim halved until they divide ``block``; refused if given tiles do
    not divide it (the permuted kernels index the logical block of a tile as tile_start // block)."""
    dm, dn = flash2.default_tiles(p.head_dim)
    bm, bn = cfg.block_m, cfg.block_n
    if bm is None:
        bm = dm
        while block % bm and bm > 1:
            bm //= 2
    if bn is None:
        bn = dn
        while block % bn and bn > 1:
            bn //= 2
    if block % bm or block % bn:
        raise IosimError(f"{method}: tiles {bm}×{bn} must divide the block size {block} (the kernel maps a tile to "
                         f"its logical block); give --block-m/--block-n dividing {block}")
    return cfg.with_tiles(bm, bn)


def list_tables(first: np.ndarray, second: np.ndarray, prefix: str) -> dict:
    """Per tile row, the kept tiles of ``first`` then those of ``second`` (each ascending): tables
    {prefix}kv_indices [..., tm, W], {prefix}kv_split [..., tm] (= count of first), {prefix}kv_count [..., tm]."""
    first, second = np.asarray(first, bool), np.asarray(second, bool) & ~np.asarray(first, bool)
    tn = first.shape[-1]
    key = np.where(first, np.arange(tn), np.where(second, tn + np.arange(tn), 2 * tn))
    order = np.argsort(key, axis=-1, kind="stable")
    n1, n = first.sum(-1), (first | second).sum(-1)
    width = max(1, int(n.max()) if n.size else 1)
    idx = np.where(np.arange(width) < n[..., None], order[..., :width], 0).astype(np.int64)
    return {prefix + "kv_indices": idx, prefix + "kv_split": n1.astype(np.int64), prefix + "kv_count": n.astype(np.int64)}


def permuted_fwd_kernel(p: Problem, cfg: KernelConfig, hw, prefix: str, per_head: bool, *, name: str,
                        q: str = "Q", k: str = "K", v: str = "V", o: str = "O", lse: str | None = "LSE",
                        q_pos: str | None = None, k_pos: str | None = None, masked=(False, True)) -> Kernel:
    """FA2's forward over the tiles ``list_tables(prefix)`` lists per query tile, K/V read from the copies ``k``, ``v``
    ([B, H_kv, N_kv, d]) whose rows sit at sequence positions tables[k_pos][b, h_kv, row] (``Span.positions``), Q from
    ``q`` (positions tables[q_pos][b, h, row]). Two loops: the listed tiles before kv_split (mask work per
    ``masked[0]``), then the rest (``masked[1]``). Per (b, h): reads Q = N_q·d, K + V = 2·d·Σ listed tile widths;
    writes O = N_q·d (and LSE = N_q fp32)."""
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    tm = cdiv(p.seq_q, bm)
    grid, vs = flash2.grid_axes(p, cfg, tm)
    b, h, i = vs["b"], vs["h"], vs["m"]
    t = var("t")
    lead = (b, h) if per_head else ()
    j = lookup(table(prefix + "kv_indices"), *lead, i, t)
    split, count = lookup(table(prefix + "kv_split"), *lead, i), lookup(table(prefix + "kv_count"), *lead, i)
    rows = Span(i, bm, p.seq_q, positions=(table(q_pos), b, h) if q_pos else None)

    def kv(p_, nm, b_, h_, cols):
        pos = (table(k_pos), b_, kv_head(p, h_)) if k_pos else None
        return Tile(k if nm == "K" else v, (point(b_, p.batch), point(kv_head(p, h_), p.kv_heads),
                                            Span(cols.index, cols.block, cols.length, positions=pos), full(d)))

    body = [Load("q", Tile(q, (point(b, p.batch), point(h, p.heads), rows, full(d))))]
    rev = cfg.kv_order == "descending"
    for lo, hi, msk in ((0, split, masked[0]), (split, count, masked[1])):
        body.append(Loop(t, lo, hi, flash2.kv_step(p, b, h, rows, Span(j, bn, p.seq_kv), masked=msk, kv=kv),
                         reverse=rev))
    body += [flash2.finalize(p, rows), Store("acc", Tile(o, (point(b, p.batch), point(h, p.heads), rows, full(d))))]
    if lse:
        body.append(Store("lse", Tile(lse, (point(b, p.batch), point(h, p.heads), rows))))
    kernel = Kernel(name, grid, flash2.buffers(bm, bn, d, e), tuple(body), threads_per_cta=32 * cfg.num_warps)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    return kernel


# --- pre-passes -------------------------------------------------------------------------------------------------------

def pool_kernel(name: str, src: TensorSpec, dst: TensorSpec, block: int, rows_per_cta: int = 1,
                num_warps: int = 4) -> Kernel:
    """dst[b, h, x] = mean of src[b, h, x·block : (x+1)·block] (mean pooling of a [B, H, N, d] tensor, block rows
    per output row). Per (b, h): reads N·d·e_src, writes ⌈N/block⌉·d·e_dst; other FLOPs N·d (adds). Each CTA pools
    rows_per_cta output rows (rows_per_cta·block input rows, streamed block by block)."""
    B, H, N, d = src.dims
    n_out = dst.dims[2]
    grid, (r, b, h) = bh_grid(B, H, cdiv(n_out, rows_per_cta))
    x = var("x")
    out_row = r * rows_per_cta + x
    body = (
        Loop(x, 0, rows_per_cta, (
            Load("src", Tile(src.name, (point(b, B), point(h, H), Span(out_row, block, N), full(d)))),
            Compute("pool_mean", ("src", "dst"), other=(Work(1, (Span(out_row, block, N), full(d))),)),
            Store("dst", Tile(dst.name, (point(b, B), point(h, H), Span(out_row, 1, n_out), full(d)))),
        )),
    )
    bufs = (Buffer("src", (block, d), src.elem_bytes, "smem", pipelined=True), Buffer("dst", (1, d), 4, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


@register_op("gath_pool_mean")
def op_gath_pool_mean(ctx, src, dst):
    """dst[0] = mean of the valid rows of src (``pool_gather_kernel``; ``pool_kernel``'s op ``pool_mean`` sets a 1-d
    origin on its 2-d dst)."""
    r = src.ext[0]
    dst.value(0.0)[0] = src.data[:r].mean(axis=0) if r else 0.0
    dst.set((src.origin[0], 0), (1, dst.data.shape[1]))


def pool_gather_kernel(name: str, src: TensorSpec, dst: TensorSpec, block: int, rows_per_cta: int = 64,
                       gather: str | None = None, num_warps: int = 4) -> Kernel:
    """dst[b, h, x] = mean of src[b, h, rows of block x]: ``pool_kernel``'s pooling with the tail CTA's row loop
    clamped (64 output rows per CTA by default) and the reference op ``gath_pool_mean`` (a 2-d origin); rows
    x·block … (x+1)·block − 1, or with ``gather`` the rows tables[gather][b, h, x·block + r] — a pooled region of
    scattered tokens, each row its own run (PBS-Attn, DraftAttention, S2O).
    Per (b, h): reads N·d·e_src, writes ⌈N/block⌉·d·e_dst; other FLOPs N·d."""
    B, H, N, d = src.dims
    n_out = dst.dims[2]
    grid, (r, b, h) = bh_grid(B, H, cdiv(n_out, rows_per_cta))
    x = var("x")
    out_row = r * rows_per_cta + x
    rows = Span(out_row, block, N) if gather is None else gathered(out_row, block, N, table(gather), b, h)
    body = (Loop(x, 0, clamp(n_out - r * rows_per_cta, 0, rows_per_cta), (  # point spans count 1: stay in range
        Load("src", Tile(src.name, (point(b, B), point(h, H), rows, full(d)))),
        Compute("gath_pool_mean", ("src", "dst"), other=(Work(1, (rows, full(d))),)),
        Store("dst", Tile(dst.name, (point(b, B), point(h, H), Span(out_row, 1, n_out), full(d)))),
    )),)
    bufs = (Buffer("src", (block, d), src.elem_bytes, "smem", pipelined=True), Buffer("dst", (1, d), 4, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def score_kernel(name: str, a: TensorSpec, bmat: TensorSpec, out: TensorSpec, tile_a: int = 128, tile_b: int = 128,
                 a_heads_per_b: int = 1, lower_triangular: bool = False, num_warps: int = 4) -> Kernel:
    """out[b, h, x, y] = a[b, h, x] · bmat[b, h // a_heads_per_b, y] (a block-score GEMM, fp32 out), tile_a ×
    tile_b output tiles, one CTA per (x tile, b, h) looping over y tiles (lower_triangular: only y tiles whose first
    row ≤ the x tile's last row, the causal scores). Per (b, h): reads Na·w + Σ tiles·tile_b·w, writes the visited
    out tiles; matmul FLOPs 2·w per output element."""
    B, H, Na, w = a.dims
    Nb = bmat.dims[2]
    grid, (r, b, h) = bh_grid(B, H, cdiv(Na, tile_a))
    y = var("y")
    rows, cols = Span(r, tile_a, Na), Span(y, tile_b, Nb)
    stop = cdiv(Nb, tile_b)
    if lower_triangular:
        stop = clamp(cdiv((r + 1) * tile_a, tile_b), 0, cdiv(Nb, tile_b))
    hb = h if a_heads_per_b == 1 else h // a_heads_per_b
    import sympy as sp
    if a_heads_per_b != 1:
        hb = sp.floor(h / a_heads_per_b)
    body = (
        Load("a", Tile(a.name, (point(b, B), point(h, H), rows, full(w)))),
        Loop(y, 0, stop, (
            Load("bm", Tile(bmat.name, (point(b, B), point(hb, bmat.dims[1]), cols, full(w)))),
            Compute("score_nt", ("a", "bm", "s"), matmul=(Work(2 * w, (rows, cols)),)),
            Store("s", Tile(out.name, (point(b, B), point(h, H), rows, cols))),
        )),
    )
    bufs = (Buffer("a", (tile_a, w), a.elem_bytes), Buffer("bm", (tile_b, w), bmat.elem_bytes, pipelined=True),
            Buffer("s", (tile_a, tile_b), 4, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def select_kernel(name: str, scores: TensorSpec, out: TensorSpec, rows_per_cta: int = 1, flops_per_score: int = 2,
                  num_warps: int = 4) -> Kernel:
    """Per score row (b, h, x): read the row of ``scores`` [B, H, Nx, Ny], write row x of ``out`` [B, H, Nx, K]
    (the kept indices, int32: top-k, cumulative threshold or a sort; the values written are the host selection,
    ``Schedule.tables['selected']`` when present, else the row's argsort). other FLOPs flops_per_score per score
    (compare + scan)."""
    B, H, Nx, Ny = scores.dims
    K = out.dims[3]
    grid, (r, b, h) = bh_grid(B, H, cdiv(Nx, rows_per_cta))
    x = var("x")
    row = r * rows_per_cta + x
    body = (
        Loop(x, 0, rows_per_cta, (
            Load("row", Tile(scores.name, (point(b, B), point(h, H), Span(row, 1, Nx), full(Ny)))),
            Compute("select_row", ("row", "idx"), other=(Work(flops_per_score, (Span(row, 1, Nx), full(Ny))),)),
            Store("idx", Tile(out.name, (point(b, B), point(h, H), Span(row, 1, Nx), full(K)))),
        )),
    )
    bufs = (Buffer("row", (1, Ny), scores.elem_bytes, "reg"), Buffer("idx", (1, K), out.elem_bytes, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def gather_kernel(name: str, src: TensorSpec, dst: TensorSpec, perm: str, rows_per_cta: int = 128,
                  head_of=None, num_warps: int = 4) -> Kernel:
    """dst[b, h, x] = src[b, h, tables[perm][b, h, x]] (a row permutation / index gather into a contiguous copy:
    PBS-Attn's key sort, HyperAttention's LSH sort). Per (b, h): reads N·d·e (each row its own run: the L2 sees
    the scattered rows), writes N·d·e contiguous."""

    B, H, N, d = dst.dims
    grid, (r, b, h) = bh_grid(B, H, cdiv(N, rows_per_cta))
    rows = Span(r, rows_per_cta, N)
    body = (
        Load("x", Tile(src.name, (point(b, B), point(h, H), gathered(r, rows_per_cta, N, table(perm), b, h), full(d)))),
        Compute("copy", ("x", "y"), other=()),
        Store("y", Tile(dst.name, (point(b, B), point(h, H), rows, full(d)))),
    )
    bufs = (Buffer("x", (rows_per_cta, d), src.elem_bytes), Buffer("y", (rows_per_cta, d), dst.elem_bytes, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=32 * num_warps)


def copy_kernel(name: str, src: TensorSpec, dst: TensorSpec, head_of=None, rows: int = 128) -> Kernel:
    """dst[b, h, r] = src[b, head_of(h), r] for the rows of dst (rows past src's length are zeros): repeat_kv
    (head_of = h // g) and F.pad (dst longer). Per (b, h of dst): reads min(N_src, N_dst)·d, writes N_dst·d."""
    B, H, n_dst, d = dst.dims
    n_src = src.dims[2]
    r, b, h = var("pid_m"), var("b"), var("h")
    hs = h if head_of is None else head_of(h)
    grid = (GridAxis("m", r, cdiv(n_dst, rows)), GridAxis("h", h, H), GridAxis("b", b, B))
    body = (
        Load("x", Tile(src.name, (point(b, B), point(hs, src.dims[1]), Span(r, rows, n_src), full(d)))),
        Compute("copy", ("x", "y")),
        Store("y", Tile(dst.name, (point(b, B), point(h, H), Span(r, rows, n_dst), full(d)))),
    )
    bufs = (Buffer("x", (rows, d), src.elem_bytes, "reg"), Buffer("y", (rows, d), dst.elem_bytes, "reg"))
    return Kernel(name, grid, bufs, body, threads_per_cta=128)


def repeat_kv_kernels(p: Problem, prefix: str, rows: int = 128) -> tuple[tuple[Kernel, ...], dict]:
    """HF ``repeat_kv`` materialised for K and V (GQA, g = H/H_kv > 1): two copy kernels K → K_rep, V → V_rep
    [B, H, N, d]; per query head each reads its KV head's N·d (the expanded view: g reads of each KV head, the
    repeats L2 hits) and writes N·d, so 2·N·d·g written per KV head, +2·N·d·(g−1) over K and V (none when g = 1)."""
    if p.heads == p.kv_heads:
        return (), {}
    import sympy as sp
    g = p.heads // p.kv_heads
    tensors = {f"{n}_rep": TensorSpec(f"{n}_rep", (p.batch, p.heads, p.seq_kv, p.head_dim), p.elem_bytes, "scratch")
               for n in "KV"}
    src = {n: TensorSpec(n, (p.batch, p.kv_heads, p.seq_kv, p.head_dim), p.elem_bytes, "input") for n in "KV"}
    kernels = tuple(copy_kernel(f"{prefix}repeat_{n.lower()}", src[n], tensors[f"{n}_rep"],
                                head_of=lambda h: sp.floor(h / g), rows=rows) for n in "KV")
    return kernels, tensors


# --- Triton / PyTorch launches (NSA, FSA, Squeezed Attention) ---------------------------------------------------------

def triton_smem(buffers: tuple[Buffer, ...], stages: int) -> int:
    """Shared memory of a Triton kernel (assumed): (num_stages − 1) copies of each pipelined tile (the loads in flight
    under software pipelining), one of each other smem tile."""
    tot = 0
    for b in buffers:
        if b.space == "smem":
            tot += int(b.bytes) * (max(1, stages - 1) if b.pipelined else 1)
    return tot


def triton_kernel(name, grid, buffers, body, warps=4, stages=2, regs=None) -> Kernel:
    """A Triton / PyTorch launch with its shared memory set from ``triton_smem``; regs: registers per thread when
    given (``STREAM_REGS`` for streaming kernels), else estimated from the register buffers."""
    return Kernel(name, tuple(grid), tuple(buffers), tuple(body), threads_per_cta=32 * warps,
                  smem_bytes=triton_smem(tuple(buffers), stages), regs_per_thread=regs)


def fill_kernel(name: str, fills: list[tuple[Tile, str, tuple]], rows_per_cta: int, grid, warps: int = 4) -> Kernel:
    """A PyTorch fill (torch.zeros / torch.full): stores a constant into each tile (op ``nsa_fill_zero`` /
    ``nsa_fill_neginf`` / ``nsa_fill_minus1``)."""
    body, bufs = [], []
    for k, (tile, op, shape) in enumerate(fills):
        bname = f"f{k}"
        body += [Compute(op, (bname,)), Store(bname, tile)]
        bufs.append(Buffer(bname, shape, 4, "reg"))
    return triton_kernel(name, grid, bufs, body, warps=warps, stages=1, regs=STREAM_REGS)
