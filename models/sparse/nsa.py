"""Native Sparse Attention (NSA, Yuan et al., arXiv 2502.11089) as the kernels its open Triton implementation launches.

The kernels are those of ``nsa_ref`` as vendored in Relaxed-System-Lab/Flash-Sparse-Attention @1da34f3 (the FSA
authors' NSA baseline, Xunhao Lai's native-sparse-attention-triton), module ``fsa/module/fsa.py`` (the forward) and
``fsa_preview/`` (one-step decode). Defaults are the FSA README's (= the NSA paper's §4 settings): compression window
l = 32 with stride d = 16, selection blocks l' = 64, top n = 16 blocks per (token, KV head) of which 1 initial and 2
local are forced, sliding window w = 512.

Prefill (``nsa``, seq_q = seq_kv, causal), kernels in launch order, per (batch b, KV head kh) unless said:

1. ``nsa_compress_k`` / ``nsa_compress_v`` (``nsa_ref/ops/linear_compress.py``, linear_compress_fwd_kernel): grid
   (b·Hkv, ⌈Nc/64⌉, ⌈d/32⌉), Nc = ⌊(N − l)/d⌋ + 1 compressed tokens. A CTA makes 64 outputs × 32 columns: it reads
   the (64 − 1)·d + l rows its 64 windows span (windows overlap: l = 2d), over head-dim chunks of 8 (Hopper) / 4
   columns, and the chunk's l × 8 × 32 slice of the per-head weight W [Hkv, l·d, d]. Per (b, kh): reads
   ⌈d/32⌉ × Σ_r min(N − 1024r, 1040)·d (the windows' rows once per 32-column chunk; L1 serves the overlap inside a
   CTA) + ⌈Nc/64⌉·l·d·d of W; writes Nc·d. The compulsory traffic is the brief's 2Nd read, 2(N/16)d written.
   (The intra-block position bias, a [Hkv, d] vector added by PyTorch, and RoPE on q / compressed k are left out.)
2. ``nsa_cmp_fill``: ``torch.zeros_like(q)`` / ``torch.full(-inf)`` of the compressed branch's O and LSE (the kernel
   never writes the first l − 1 queries, which see no compressed token).
3. ``nsa_cmp_attn`` (``compressed_attention.py`` forward_kernel, 128 × 128 tiles): grid (B, H, ⌈N/128⌉); query block
   i holds queries [128i + l − 1, 128i + l + 127) ∩ [0, N) and walks compressed keys [0, min(Nc, ⌊(128i+127)/d⌋+1))
   in 128-key tiles; compressed key c is visible to query t iff t ≥ c·d + l − 1 (its window's last token).
4. Selection (``selection``):
   * ``"scores"`` (default; ``compressed_attention`` with parallel_topk_compute=False, what fsa.py runs):
     ``nsa_score`` (score_kernel, grid (B·Hkv, ⌈N/128⌉, ⌈Nc/128⌉), no causal skip) recomputes the probabilities
     p = exp(q·k_c/√d − LSE) of the group's FIRST query head (the kernel indexes q by the KV head, on q sliced to
     the group) and writes them as fp32 S_cmp [B, Hkv, N, Nc] — quadratic; ``nsa_block_score`` (_transform_score_kernel,
     16 queries × min(128, 2^⌈log2 Nb⌉) blocks a CTA) sums the compressed scores overlapping each 64-token block with
     the histogram weights of their offsets (NSA eq. 9), sets the forced blocks to +∞ and writes fp32 S_blk
     [B, Hkv, N, Nb]; ``nsa_score_cast`` (``score.to(bfloat16)``) and ``nsa_topk`` (torch.topk + sort + the
     causal −1 mask + int32 cast, modeled as one pass: read the row, write n indices).
   * ``"fused"`` (FSA's ``fsa/ops/fused_score_kernels.py``, fused_score_kernel): one kernel computes the probabilities
     and the block sums on chip and writes bf16 S_blk [B, Hkv, N, Nb] directly (128 MiB per KV head at 64K: still
     quadratic); then ``nsa_topk``. Each of its 5 offsets loads the CTA's K_c rows at stride 4 (a gather); rows past
     the ends of K_c are masked in the kernel and counted here (at most a few per CTA).
   * ``"none"``: the indices are given (the kernel's ``topk_idx`` is an input): no selection kernels.
5. ``nsa_select_attn`` (``topk_sparse_attention.py`` forward_kernel_orig): one CTA per (token t, KV head) — the
   NSA paper's group-centric loading. It loads the token's n indices, the g query heads' rows (padded to
   g_pad = max(16, 2^⌈log2 g⌉) rows for tl.dot: padded rows are not loaded but are issued to the tensor cores),
   then for each selected block (real_topk = the entries ≥ 0 and ≤ ⌊t/64⌋) the 64 × d K and V blocks. Reads
   n + g·d + 2·n_t·64·d per token, writes g·d + g (O, LSE). The blocks are contiguous, so the block gather is a
   ``lookup`` of the selection table in the K/V span.
6. ``nsa_swa``: FlashAttention-2 (``flash_attn_varlen_func``, causal, window_size = (w, −1) → FA2's (w, 0) local
   window; ``models/flash2.py`` with ``window``), FA2's tiles.
7. ``nsa_combine``: the gate combine O = g_cmp·O_cmp + g_slc·O_slc + g_swa·O_swa with the per-token gates G [B, N, 3]
   (fsa.py: sigmoid(Linear(x)), shared by the heads). Modeled fused (reads 3 partial outputs + 3 gates, writes O);
   PyTorch runs it as 5 elementwise kernels (3 multiplies, 2 adds), ≈ 2.7× these bytes.

Decode (``nsa`` with seq_q = 1, seq_kv = N; the query is token N − 1), ``decode`` =
* ``"fsa_preview"`` (default: FSA's one-step decode, ``fsa_preview/``): ``nsa_cmp_attn`` per query head
  (forward_kernel_decode: one CTA per (b, h) over all Nc compressed keys in 128-key tiles), the selection kernels on
  the one row (score_kernel_decode with 64-key tiles, transform, topk on fp32), ``nsa_select_attn`` (the prefill
  kernel on one token), FA2's local-window kernel per query head (its key blocks [⌊(N−1−w)/64⌋, ⌈N/64⌉)), combine;
* ``"packed"``: the NSA paper's design (§3.4 "group-centric data loading", Table 4): every branch loads a KV head's
  tokens once for its whole query group: (N − l)/d + 1 compressed tokens, n·64 selected, exactly the last w.
  Table 4's 64K count (N − l)/d + n·l' + w = 5630 tokens vs 65536 is this mode's K/V read (+1: Nc = ⌊(N−l)/d⌋ + 1).
The compression of the new token (one compressed token every d steps) is left out: Kc / Vc are cached inputs.

Data-dependent choice (per (batch, KV head, token): the n selected 64-token blocks), one of:
* ``density`` + ``seed`` (default, density None): every token keeps min(topk, n_valid) blocks, n_valid = ⌊t/64⌋ + 1:
  its forced blocks (the first ``init_blocks``, its own and the ``local_blocks`` − 1 before it), the rest drawn
  uniformly (``default_rng(seed)``) from its other causal blocks; density = s keeps max(forced, round(s·n_valid))
  blocks instead (s = 1: every causal block, the selected branch is then exact causal attention);
* ``table``: an int array / .npy of block indices [Hkv, N, w], [B, Hkv, N, w] or [N, w] (−1 = none): entries past
  the causal limit are dropped (the kernel's real_topk), the forced blocks are added, duplicates removed;
* ``scores``: the user's attention probabilities [Nq, Nkv] or [B, H, Nq, Nkv]; the method's rule: a block's score is
  the sum of its 64 keys' probabilities summed over the KV head's query group (NSA eq. 10 at token granularity),
  forced blocks +∞, the top n (or round(s·n_valid) with density s) kept.
The tables are [B, Hkv, Nq, width] int64 (8 bytes an entry): B·Hkv·Nq·width ≤ 2^25 (256 MiB); above that the
builder refuses with a one-line error (1M tokens × 16 × 8 B = 128 MiB per KV head: 2 KV heads fit).

Choices where the code leaves one open: the batch is a grid axis (the code loops over sequences in Python for
FSA and packs them for NSA — same bytes); Triton's shared memory per CTA is taken as (num_stages − 1) copies of each
pipelined tile plus the others (``triton_smem``), an estimate; registers are estimated from the register buffers for
the attention kernels and assumed 32 per thread for the streaming ones (``STREAM_REGS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_head_dim
from iosim.models.sparse.kernels import INT32, STREAM_REGS, fill_kernel, triton_kernel
from iosim.models.sparse.selection import check_params, concrete
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.reference import op_online_softmax, register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, cdiv, full, lookup, point, table, var)

MAX_SELECT_ENTRIES = 1 << 25  # selection-table entries B·Hkv·Nq·width (int64: 256 MiB); above: refused
_sym = table  # the schedule-table symbol (builders take a ``table`` argument)


# --- small helpers -----------------------------------------------------------------------------------------------------

def pow2(x: int) -> int:
    """triton.next_power_of_2."""
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def is_hopper(hw) -> bool:
    """``nsa_ref.ops.utils.is_hopper_gpu``: compute capability 9.x."""
    return hw is not None and getattr(hw, "arch", "") == "sm90"


def warps_stages(head_dim: int, block: int, hw) -> tuple[int, int]:
    """``nsa_ref.ops.utils.get_num_warps_stages`` (num_warps, num_stages) for a head dim and a block size."""
    head_large, block_large = head_dim > 64, block > 64
    if head_large and block_large:
        return 8, 3
    if head_large or block_large:
        return (4, 3) if is_hopper(hw) else (8, 3)
    return 2, 2


def retarget(k: Kernel, name: str, tensors: dict | None = None, ops: dict | None = None, **fields) -> Kernel:
    """``k`` renamed, with its tiles' tensors and its Compute ops renamed (a FlashAttention-2 kernel writing a branch's
    own O / LSE, its softmax masking a window)."""
    tensors, ops = tensors or {}, ops or {}

    def stmt(s):
        if isinstance(s, Loop):
            return replace(s, body=tuple(stmt(x) for x in s.body))
        if isinstance(s, (Load, Store)):
            return replace(s, tile=replace(s.tile, tensor=tensors.get(s.tile.tensor, s.tile.tensor)))
        if isinstance(s, Compute):
            return replace(s, op=ops.get(s.op, s.op))
        return s
    return replace(k, name=name, body=tuple(stmt(x) for x in k.body), **fields)


def fa2_sliding_kernel(p: Problem, hw, window: int, name: str, o: str, lse: str) -> tuple[Kernel, KernelConfig]:
    """FlashAttention-2's forward with a causal local window (w, 0) (``flash_attn_varlen_func(causal=True,
    window_size=(w, -1))``) writing ``o`` / ``lse``: ``models/flash2.py`` with the fa2 preset's tiles and orders; its
    softmax op masks the window in the reference (``nsa_window_softmax``); shared memory FA2's one stage
    (B_r + 2·B_c)·d·2 bytes (kernel_traits.h)."""
    from iosim.presets import PRESETS
    cfg = PRESETS["fa2"].config(p, hw, KernelConfig())
    sched = flash2.build(p, cfg, hw, window=(window, 0))
    k = sched.kernels[0]
    smem = (cfg.block_m + 2 * cfg.block_n) * p.head_dim * p.elem_bytes
    return retarget(k, name, {"O": o, "LSE": lse}, {"online_softmax": "nsa_window_softmax"}, smem_bytes=smem), cfg


# --- geometry and selection ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """NSA's method parameters and the sizes they give (FSA README / NSA §4 defaults)."""

    kernel_size: int
    kernel_stride: int
    block_size: int
    topk: int
    init_blocks: int
    local_blocks: int
    window: int
    n_ctx: int  # N: keys (= queries in prefill)

    @property
    def n_cmp(self) -> int:
        """Nc = ⌊(N − l)/d⌋ + 1 (0 when N < l: linear_compress's corner case)."""
        return 0 if self.n_ctx < self.kernel_size else (self.n_ctx - self.kernel_size) // self.kernel_stride + 1

    @property
    def n_blocks(self) -> int:
        """Nb = ⌈N/l'⌉ (transform_score's max_blocks)."""
        return -(-self.n_ctx // self.block_size)

    @property
    def offsets(self) -> np.ndarray:
        """Weights of the compressed tokens overlapping a block, by offset (transform_score: histc of
        arange(l/d)[:, None] + arange(l'/d)[None, :])."""
        a = (np.arange(self.kernel_size // self.kernel_stride)[:, None]
             + np.arange(self.block_size // self.kernel_stride)[None, :]).ravel()
        return np.bincount(a).astype(np.int64)

    @property
    def pad(self) -> int:
        return self.kernel_size // self.kernel_stride - 1

    @property
    def block_stride(self) -> int:
        return self.block_size // self.kernel_stride

    def table(self) -> np.ndarray:
        """The ints the reference ops read (``nsa_geom``)."""
        return np.array([self.kernel_size, self.kernel_stride, self.block_size, self.topk, self.init_blocks,
                         self.local_blocks, self.window, self.n_ctx], dtype=np.int64)


def geometry(p: Problem, method: str, kernel_size, kernel_stride, block_size, topk, init_blocks, local_blocks,
             window) -> Geometry:
    """Checked method parameters (one-line errors naming the parameter and the fix)."""
    for name, v in (("kernel_size", kernel_size), ("kernel_stride", kernel_stride), ("block_size", block_size),
                    ("topk", topk), ("init_blocks", init_blocks), ("local_blocks", local_blocks), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise IosimError(f"{method}: {name}={v!r} must be a nonnegative integer")
    check_params(method, kernel_stride=(kernel_stride, 1, None), topk=(topk, 1, None), window=(window, 1, None))
    if kernel_size not in (16, 32, 64, 128) or kernel_size % kernel_stride:
        raise IosimError(f"{method}: kernel_size={kernel_size} must be 16, 32, 64 or 128 and a multiple of "
                         f"kernel_stride={kernel_stride} (linear_compress asserts both)")
    if block_size not in (32, 64, 128, 256) or block_size % kernel_stride:
        raise IosimError(f"{method}: block_size={block_size} must be 32, 64, 128 or 256 and a multiple of "
                         f"kernel_stride={kernel_stride} (topk_sparse_attention asserts block_size ∈ {{32, 64, 128, 256}})")
    if topk < init_blocks + local_blocks:
        raise IosimError(f"{method}: topk={topk} < init_blocks + local_blocks = {init_blocks + local_blocks} "
                         "(compressed_attention asserts topk >= init_blocks + local_blocks); raise topk")
    return Geometry(int(kernel_size), int(kernel_stride), int(block_size), int(topk), int(init_blocks),
                    int(local_blocks), int(window), int(p.seq_kv))


@dataclass(frozen=True)
class Selection:
    """Per (batch, KV head, query): the selected blocks, ascending, valid first, −1 after; and how many."""

    idx: np.ndarray  # [B, Hkv, Nq, width] int64
    num: np.ndarray  # [B, Hkv, Nq] int64
    source: str

    @property
    def width(self) -> int:
        return int(self.idx.shape[-1])


def _positions(p: Problem) -> np.ndarray:
    """Sequence position of each query (bottom-right: query r is token r + N_kv − N_q)."""
    return np.arange(p.seq_q, dtype=np.int64) + p.seq_kv - p.seq_q


def forced_mask(g: Geometry, pos: np.ndarray) -> np.ndarray:
    """[Nq, Nb] bool: the blocks transform_score sets to +∞ (kb < init_blocks, or ⌊t/l'⌋ − local < kb ≤ ⌊t/l'⌋),
    within the causal ones (kb ≤ ⌊t/l'⌋)."""
    bq = pos // g.block_size
    kb = np.arange(g.n_blocks)[None, :]
    f = (kb < g.init_blocks) | ((bq[:, None] >= kb) & (bq[:, None] < kb + g.local_blocks))
    return f & (kb <= bq[:, None])


def _cap(method: str, entries: int) -> None:
    if entries > MAX_SELECT_ENTRIES:
        raise IosimError(f"{method}: the selection tables would hold {entries:,} entries (batch·kv_heads·seq_q·blocks "
                         f"kept), over {MAX_SELECT_ENTRIES:,} (256 MiB of int64); use fewer kv_heads, a shorter "
                         f"sequence, a smaller topk or density")


def _pack(rows: list[np.ndarray], shape: tuple[int, ...], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-query block lists (each ascending, unique) → (idx [..., width] with −1 pad, num)."""
    num = np.array([len(r) for r in rows], dtype=np.int64)
    width = max(1, int(num.max()) if num.size else 1)
    _cap(method, num.size * width)
    idx = np.full((num.size, width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        idx[i, :len(r)] = r
    return idx.reshape(*shape, width), num.reshape(shape)


def select_random(p: Problem, g: Geometry, density, seed: int, method: str) -> Selection:
    """The density + seed source (module docstring): forced blocks + uniform draws from the other causal blocks.
    A token's forced blocks are [0, init) and [local_lo, ⌊t/l'⌋] with local_lo = max(⌊t/l'⌋ − local + 1, init); its
    other causal blocks are the range between them, so each row is built ascending without a sort."""
    if density is not None:
        check_params(method, density=(density, 0.0, 1.0))
    pos = _positions(p)
    bq = pos // g.block_size  # last causal block
    nvalid = bq + 1
    init_hi = np.minimum(g.init_blocks, nvalid)
    local_lo = np.maximum(bq - g.local_blocks + 1, init_hi)
    nl = bq - local_lo + 1
    nforced = init_hi + nl
    keep = np.minimum(g.topk, nvalid) if density is None else \
        np.maximum(nforced, np.rint(density * nvalid)).astype(np.int64)
    keep = np.minimum(keep, nvalid)
    need = keep - nforced
    span = local_lo - init_hi
    width = max(1, int(keep.max()))
    B, Hkv, Nq = p.batch, p.kv_heads, p.seq_q
    _cap(method, B * Hkv * Nq * width)
    rng = np.random.default_rng(seed)
    col = np.arange(width, dtype=np.int64)[None, :]
    idx = np.empty((B, Hkv, Nq, width), dtype=np.int64)
    for b in range(B):
        for h in range(Hkv):
            picks = _draw(rng, span, need)
            picks = np.sort(np.where(np.arange(picks.shape[1])[None, :] < need[:, None], picks, 1 << 40),
                            axis=1) + init_hi[:, None]
            c_rand = col - init_hi[:, None]
            c_loc = c_rand - need[:, None]
            rnd = np.take_along_axis(picks, np.clip(c_rand, 0, picks.shape[1] - 1), axis=1)
            row = np.where(col < init_hi[:, None], col,
                           np.where(c_rand < need[:, None], rnd,
                                    np.where(c_loc < nl[:, None], local_lo[:, None] + c_loc, -1)))
            idx[b, h] = row
    num = np.broadcast_to(keep.astype(np.int64), (B, Hkv, Nq)).copy()
    return Selection(idx, num, ("the top-n rule: forced blocks + uniform draws" if density is None else
                                f"density {density:g} of causal blocks") + f", seed {seed}")


def _draw(rng, span: np.ndarray, need: np.ndarray) -> np.ndarray:
    """[T, max need] distinct draws from range(span[t]) per row (Floyd's algorithm for short rows, a random-key sort
    for long ones); entries ≥ need[t] are unused."""
    T = span.size
    m = int(need.max()) if T else 0
    out = np.zeros((T, max(m, 1)), dtype=np.int64)
    if m == 0:
        return out
    if m <= 32:  # Floyd: for j in R − m … R − 1: x = rand(0, j]; take x unless taken, else j (per row, m_t draws)
        R = span
        for k in range(m):
            j = R - need + k  # the k-th of the row's m_t draws (rows with k ≥ m_t are ignored later)
            x = np.floor(rng.random(T) * (np.maximum(j, 0) + 1)).astype(np.int64)
            taken = (out[:, :k] == x[:, None]).any(axis=1)
            out[:, k] = np.where(taken, j, x)
        return out
    # long rows (density near 1): a random-key argsort per row, in chunks
    maxr = int(span.max())
    step = max(1, (1 << 22) // max(maxr, 1))
    for s in range(0, T, step):
        keys = rng.random((min(step, T - s), maxr))
        keys[np.arange(maxr)[None, :] >= span[s:s + step, None]] = 2.0
        out[s:s + step, :m] = np.argsort(keys, axis=1, kind="stable")[:, :m]
    return out


def select_table(p: Problem, g: Geometry, table_, method: str) -> Selection:
    """The table source: block indices [Hkv, Nq, w], [B, Hkv, Nq, w] or [Nq, w] (module docstring)."""
    if isinstance(table_, (str, os.PathLike)):
        if not os.path.isfile(str(table_)):
            raise IosimError(f"{method}: block table {table_!r} does not exist; give a .npy of block indices "
                             f"[kv_heads, seq_q, n] (−1 = none)")
        arr = np.load(table_)
        name = str(table_)
    else:
        arr, name = np.asarray(table_), "given"
    if arr.dtype.kind not in "iu":
        raise IosimError(f"{method}: the block table holds {arr.dtype} values; it must hold integer block indices "
                         f"(−1 = none), not a bool mask")
    B, Hkv, Nq = p.batch, p.kv_heads, p.seq_q
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[2] != Nq or arr.shape[0] not in (1, B) or arr.shape[1] not in (1, Hkv):
        raise IosimError(f"{method}: block table of shape {np.shape(table_) if not isinstance(table_, str) else arr.shape}; "
                         f"it must be [kv_heads={Hkv}, seq_q={Nq}, n], [batch, kv_heads, seq_q, n] or [seq_q, n]")
    if arr.size and (arr.min() < -1 or arr.max() >= g.n_blocks):
        raise IosimError(f"{method}: block table entries must lie in [-1, {g.n_blocks}) (blocks of {g.block_size} "
                         f"tokens for seq_kv={p.seq_kv}); got [{arr.min()}, {arr.max()}]")
    arr = np.broadcast_to(arr, (B, Hkv, Nq, arr.shape[3]))
    pos = _positions(p)
    f = forced_mask(g, pos)
    bq = pos // g.block_size
    rows = []
    for b in range(B):
        for h in range(Hkv):
            for t in range(Nq):
                r = arr[b, h, t]
                r = r[(r >= 0) & (r <= bq[t])]
                rows.append(np.union1d(r, np.flatnonzero(f[t])).astype(np.int64))
    idx, num = _pack(rows, (B, Hkv, Nq), method)
    return Selection(idx, num, f"block table {name}")


def select_scores(p: Problem, g: Geometry, scores, density, method: str) -> Selection:
    """The scores source: NSA's rule on the user's attention probabilities (module docstring)."""
    if isinstance(scores, (str, os.PathLike)):
        if not os.path.isfile(str(scores)):
            raise IosimError(f"{method}: scores file {scores!r} does not exist; give a .npy of attention "
                             f"probabilities [seq_q, seq_kv] or [batch, heads, seq_q, seq_kv]")
        scores = np.load(scores)
    s = np.asarray(scores, dtype=np.float64)
    B, H, Hkv, Nq, N = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv
    if s.ndim == 2:
        s = s[None, None]
    if s.ndim != 4 or s.shape[2:] != (Nq, N) or s.shape[0] not in (1, B) or s.shape[1] not in (1, H):
        raise IosimError(f"{method}: scores have shape {np.shape(scores)}; give [seq_q, seq_kv] = [{Nq}, {N}] or "
                         f"[batch, heads, {Nq}, {N}]")
    if density is not None:
        check_params(method, density=(density, 0.0, 1.0))
    s = np.broadcast_to(s, (B, H, Nq, N))
    pad = g.n_blocks * g.block_size - N
    blk = np.pad(s, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(B, H, Nq, g.n_blocks, g.block_size).sum(-1)
    blk = blk.reshape(B, Hkv, H // Hkv, Nq, g.n_blocks).sum(2)  # summed over the query group
    pos = _positions(p)
    bq = pos // g.block_size
    f = forced_mask(g, pos)
    valid = np.arange(g.n_blocks)[None, :] <= bq[:, None]
    key = np.where(f, np.inf, np.where(valid, blk, -np.inf))
    nvalid = bq + 1
    keep = np.minimum(g.topk, nvalid) if density is None else np.minimum(
        nvalid, np.maximum(f.sum(1), np.rint(density * nvalid)).astype(np.int64))
    order = np.argsort(-key, axis=-1, kind="stable")
    rows = []
    for b in range(B):
        for h in range(Hkv):
            for t in range(Nq):
                rows.append(np.sort(order[b, h, t, :keep[t]]).astype(np.int64))
    idx, num = _pack(rows, (B, Hkv, Nq), method)
    return Selection(idx, num, "NSA's rule on the given scores")


def choose(p: Problem, g: Geometry, method: str, density=None, seed: int = 0, table=None, scores=None) -> Selection:
    """Exactly one of density / table / scores (or none: the top-n rule with random picks)."""
    given = [n for n, v in (("density", density), ("table", table), ("scores", scores)) if v is not None]
    if len(given) > 1 and not (given == ["density", "scores"]):
        raise IosimError(f"{method}: give one of density, table or scores, not {' and '.join(given)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise IosimError(f"{method}: seed={seed!r} must be an integer")
    if table is not None:
        return select_table(p, g, table, method)
    if scores is not None:
        return select_scores(p, g, scores, density, method)
    return select_random(p, g, density, seed, method)


def selection_tables(p: Problem, sel: Selection, prefix: str = "nsa_") -> dict:
    """The selected kernel's tables: block ids, counts, and the token positions its Q rows are at (a broadcast view,
    for the reference's causal mask)."""
    pos = np.broadcast_to(np.arange(p.seq_q, dtype=np.int64)[:, None], (p.seq_q, p.heads))
    return {prefix + "sel_idx": sel.idx, prefix + "sel_num": sel.num, prefix + "tokpos": pos}


# --- tensors ---------------------------------------------------------------------------------------------------------

def tensors(p: Problem, g: Geometry, sel_width: int, selection: str, decode: bool) -> dict[str, TensorSpec]:
    """Every global tensor of the NSA schedules (roles: the selection indices are an input when selection="none";
    the compressed K/V are cached inputs in decode)."""
    B, H, Hkv, Nq, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    Nc, Nb = g.n_cmp, g.n_blocks
    kc_role = "input" if decode else "scratch"
    t = {
        "Q": TensorSpec("Q", (B, H, Nq, d), e, "input"),
        "K": TensorSpec("K", (B, Hkv, N, d), e, "input"),
        "V": TensorSpec("V", (B, Hkv, N, d), e, "input"),
        "G": TensorSpec("G", (B, Nq, 3), e, "input"),
        "Kc": TensorSpec("Kc", (B, Hkv, max(Nc, 1), d), e, kc_role),
        "Vc": TensorSpec("Vc", (B, Hkv, max(Nc, 1), d), e, kc_role),
        "O_cmp": TensorSpec("O_cmp", (B, H, Nq, d), e, "scratch"),
        "LSE_cmp": TensorSpec("LSE_cmp", (B, H, Nq), STAT_BYTES, "scratch"),
        "O_slc": TensorSpec("O_slc", (B, H, Nq, d), e, "scratch"),
        "LSE_slc": TensorSpec("LSE_slc", (B, H, Nq), STAT_BYTES, "scratch"),
        "O_swa": TensorSpec("O_swa", (B, H, Nq, d), e, "scratch"),
        "LSE_swa": TensorSpec("LSE_swa", (B, H, Nq), STAT_BYTES, "scratch"),
        "O": TensorSpec("O", (B, H, Nq, d), e, "output"),
        "topk_idx": TensorSpec("topk_idx", (B, Hkv, Nq, sel_width), INT32,
                               "input" if selection == "none" else "scratch"),
    }
    if not decode:
        t |= {"Wk": TensorSpec("Wk", (Hkv, g.kernel_size, d, d), e, "input"),
              "Wv": TensorSpec("Wv", (Hkv, g.kernel_size, d, d), e, "input")}
    if selection == "scores":
        t["S_cmp"] = TensorSpec("S_cmp", (B, Hkv, Nq, max(Nc, 1)), 4, "scratch")
        t["S_blk"] = TensorSpec("S_blk", (B, Hkv, Nq, Nb), 4, "scratch")
        if not decode:
            t["S_blk16"] = TensorSpec("S_blk16", (B, Hkv, Nq, Nb), 2, "scratch")
    elif selection == "fused":
        t["S_blk16"] = TensorSpec("S_blk16", (B, Hkv, Nq, Nb), 2, "scratch")
    return t


# --- kernels ---------------------------------------------------------------------------------------------------------

def _grid(*axes) -> tuple[GridAxis, ...]:
    return tuple(GridAxis(n, v, e) for n, v, e in axes)


def compress_kernel(p: Problem, g: Geometry, src: str, w: str, dst: str, hw, name: str) -> Kernel:
    """linear_compress_fwd_kernel (module docstring, kernel 1)."""
    B, Hkv, N, d, e = p.batch, p.kv_heads, p.seq_kv, p.head_dim, p.elem_bytes
    BO, BD = 64, 32  # block_output_seq_size, block_headD_dim
    bd = 8 if is_hopper(hw) else 4  # block_head_dim (IS_HOPPER_GPU)
    s, l, Nc = g.kernel_stride, g.kernel_size, g.n_cmp
    b, kh, r, c, i = var("b"), var("h"), var("pid_m"), var("pid_n"), var("i")
    rows_blk = (BO - 1) * s + l
    x_rows = Span(0, rows_blk, N - r * BO * s, offset=r * BO * s)
    out_rows, out_cols = Span(r, BO, Nc), Span(c, BD, d)
    body = (
        Loop(i, 0, cdiv(d, bd), (
            Load("x", Tile(src, (point(b, B), point(kh, Hkv), x_rows, Span(i, bd, d)))),
            Load("w", Tile(w, (point(kh, Hkv), full(l), Span(i, bd, d), out_cols))),
            Compute("nsa_compress", ("x", "w", "y"), matmul=(Work(2 * l * bd, (out_rows, out_cols)),)),
        )),
        Store("y", Tile(dst, (point(b, B), point(kh, Hkv), out_rows, out_cols))),
    )
    bufs = (Buffer("x", (rows_blk, bd), e, "reg"), Buffer("w", (l, bd, BD), e, "smem", pipelined=True),
            Buffer("y", (BO, BD), 4, "reg"))
    grid = _grid(("h", kh, Hkv), ("b", b, B), ("m", r, cdiv(Nc, BO)), ("n", c, cdiv(d, BD)))
    return triton_kernel(name, grid, bufs, body, warps=4, stages=3)


def cmp_fill_kernel(p: Problem) -> Kernel:
    """torch.zeros_like(q) and torch.full((H, N), -inf) of compressed_attention's O and LSE, 128 rows a CTA."""
    B, H, Nq, d = p.batch, p.heads, p.seq_q, p.head_dim
    b, h, i = var("b"), var("h"), var("pid_m")
    rows = Span(i, 128, Nq)
    return fill_kernel("nsa_cmp_fill", [
        (Tile("O_cmp", (point(b, B), point(h, H), rows, full(d))), "nsa_fill_zero", (128, d)),
        (Tile("LSE_cmp", (point(b, B), point(h, H), rows)), "nsa_fill_neginf", (128,)),
    ], 128, _grid(("m", i, cdiv(Nq, 128)), ("h", h, H), ("b", b, B)))


def _kv_tile(name_map: dict, positions=None):
    """A K/V tile function for ``flash2.kv_step`` reading other tensors (compressed K/V), with key positions."""
    def kv(p, name, b, h, cols):
        from iosim.models._common import kv_head
        c = cols if positions is None else replace(cols, positions=positions)
        return Tile(name_map[name], (point(b, p.batch), point(kv_head(p, h), p.kv_heads), c, full(p.head_dim)))
    return kv


def cmp_attn_kernel(p: Problem, g: Geometry, hw) -> Kernel:
    """compressed_attention forward_kernel (module docstring, kernel 3): 128 × 128 tiles, grid (B, H, ⌈N/128⌉)."""
    B, H, N, d, e = p.batch, p.heads, p.seq_q, p.head_dim, p.elem_bytes
    BQ = BK = 128
    l, s, Nc = g.kernel_size, g.kernel_stride, g.n_cmp
    b, h, i, t, z = var("b"), var("h"), var("pid_m"), var("t"), var("q_loaded")
    rows = Span(i, BQ, N - (l - 1), offset=l - 1)
    hi = sp.Min(Nc, sp.floor((i * BQ + BQ - 1) / s) + 1)
    cols = Span(t, BK, Nc)
    kv = _kv_tile({"K": "Kc", "V": "Vc"}, positions=(table("nsa_cmp_pos"),))
    body = (
        Loop(z, 0, sp.Min(1, rows.extent), (
            Load("q", Tile("Q", (point(b, B), point(h, H), rows, full(d)))),
            Loop(t, 0, cdiv(hi, BK), flash2.kv_step(p, b, h, rows, cols, kv=kv)),
            flash2.finalize(p, rows),
            Store("acc", Tile("O_cmp", (point(b, B), point(h, H), rows, full(d)))),
            Store("lse", Tile("LSE_cmp", (point(b, B), point(h, H), rows))),
        )),
    )
    warps, stages = warps_stages(d, BQ, hw)
    return triton_kernel("nsa_cmp_attn", _grid(("b", b, B), ("h", h, H), ("m", i, cdiv(N, BQ))),
                         flash2.buffers(BQ, BK, d, e), body, warps=warps, stages=stages)


def score_kernel(p: Problem, g: Geometry, decode: bool) -> Kernel:
    """score_kernel (prefill: 128 × 128 tiles) / score_kernel_decode (64-key tiles): S_cmp = exp(q·k_c·scale − LSE) of
    the group's first query head, causal-masked on the compressed positions, fp32."""
    B, H, Hkv, Nq, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    Nc, grp = g.n_cmp, p.heads // p.kv_heads
    BQ, BK = (16, 64) if decode else (128, 128)
    b, kh, i, j = var("b"), var("h"), var("pid_m"), var("pid_n")
    rows, cols = Span(i, BQ, Nq), Span(j, BK, Nc, positions=(table("nsa_cmp_pos"),))
    qh = kh * grp
    body = (
        Load("k", Tile("Kc", (point(b, B), point(kh, Hkv), cols, full(d)))),
        Load("q", Tile("Q", (point(b, B), point(qh, H), rows, full(d)))),
        Load("lse", Tile("LSE_cmp", (point(b, B), point(qh, H), rows))),
        Compute("nsa_score", ("q", "k", "lse", "s"), matmul=(Work(2 * d, (rows, cols)),),
                exp=(Work(1, (rows, cols)),), other=(Work(3, (rows, cols)),)),
        Store("s", Tile("S_cmp", (point(b, B), point(kh, Hkv), rows, Span(j, BK, Nc)))),
    )
    bufs = (Buffer("k", (BK, d), e), Buffer("q", (BQ, d), e), Buffer("lse", (BQ,), 4, "reg"),
            Buffer("s", (BQ, BK), 4, "reg"))
    grid = _grid(("h", kh, Hkv), ("b", b, B), ("m", i, cdiv(Nq, BQ)), ("n", j, cdiv(max(Nc, 1), BK)))
    return triton_kernel("nsa_score", grid, bufs, body, warps=4 if decode else 8, stages=3)


def block_score_kernel(p: Problem, g: Geometry) -> Kernel:
    """_transform_score_kernel: 16 queries × BK blocks a CTA, BK = min(128, 2^⌈log2 Nb⌉); reads the compressed scores
    [4k0 − pad, 4(k0 + BK) − pad + num_offs − 1) ∩ [0, Nc) of its rows (L1 serves the overlap of neighbouring blocks),
    writes fp32 block scores (forced blocks +∞)."""
    B, Hkv, Nq = p.batch, p.kv_heads, p.seq_q
    Nc, Nb, bs, pad, no = g.n_cmp, g.n_blocks, g.block_stride, g.pad, len(g.offsets)
    BQ, BK = 16, min(128, pow2(Nb))
    b, kh, i, j = var("b"), var("h"), var("pid_m"), var("pid_n")
    lo = sp.Max(j * BK * bs - pad, 0)
    hi = sp.Min(Nc, (j + 1) * BK * bs - pad + no - 1)
    width = BK * bs + no - 1
    rows = Span(i, BQ, Nq)
    body = (
        Load("s", Tile("S_cmp", (point(b, B), point(kh, Hkv), rows, Span(0, width, hi - lo, offset=lo)))),
        Compute("nsa_block_score", ("s", "bs"), other=(Work(2 * no + 2, (rows, Span(j, BK, Nb))),)),
        Store("bs", Tile("S_blk", (point(b, B), point(kh, Hkv), rows, Span(j, BK, Nb)))),
    )
    bufs = (Buffer("s", (BQ, width), 4, "reg"), Buffer("bs", (BQ, BK), 4, "reg"))
    grid = _grid(("h", kh, Hkv), ("b", b, B), ("m", i, cdiv(Nq, BQ)), ("n", j, cdiv(Nb, BK)))
    return triton_kernel("nsa_block_score", grid, bufs, body, warps=4, stages=3)


def fused_score_kernel(p: Problem, g: Geometry) -> Kernel:
    """fused_score_kernel (FSA, fused_score_kernels.py): per (KV head, 128 queries, BK blocks), BK = max(16, min(128,
    2^⌈log2 Nb⌉)): Q tile and LSE of the group's first head, then for each of the num_offs offsets the BK compressed
    keys 4·kb − pad + o (a strided gather, ``nsa_koff``), exp2(qk − lse) weighted into the block scores; writes the
    bf16 block scores (forced +∞)."""
    B, H, Hkv, Nq, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    Nb, no, grp = g.n_blocks, len(g.offsets), p.heads // p.kv_heads
    BQ, BK = 128, max(16, min(128, pow2(Nb)))
    b, kh, i, j, o = var("b"), var("h"), var("pid_m"), var("pid_n"), var("o")
    rows = Span(i, BQ, Nq)
    blocks = Span(j, BK, Nb)
    krows = Span(j, BK, Nb, gather=(table("nsa_koff"), o), positions=(table("nsa_koff_pos"), o))
    qh = kh * grp
    body = (
        Load("q", Tile("Q", (point(b, B), point(qh, H), rows, full(d)))),
        Load("lse", Tile("LSE_cmp", (point(b, B), point(qh, H), rows))),
        Loop(o, 0, no, (
            Load("k", Tile("Kc", (point(b, B), point(kh, Hkv), krows, full(d)))),
            Compute("nsa_fused_score", ("q", "k", "lse", "bs"), matmul=(Work(2 * d, (rows, blocks)),),
                    exp=(Work(1, (rows, blocks)),), other=(Work(4, (rows, blocks)),)),
        )),
        Store("bs", Tile("S_blk16", (point(b, B), point(kh, Hkv), rows, blocks))),
    )
    bufs = (Buffer("q", (BQ, d), e), Buffer("lse", (BQ,), 4, "reg"), Buffer("k", (BK, d), e, pipelined=True),
            Buffer("bs", (BQ, BK), 4, "reg"))
    grid = _grid(("h", kh, Hkv), ("b", b, B), ("m", i, cdiv(Nq, BQ)), ("n", j, cdiv(Nb, BK)))
    return triton_kernel("nsa_fused_score", grid, bufs, body, warps=8, stages=3)


def cast_kernel(p: Problem, g: Geometry) -> Kernel:
    """score.to(torch.bfloat16): reads the fp32 block scores, writes bf16 (PyTorch elementwise, 1 row a CTA)."""
    B, Hkv, Nq, Nb = p.batch, p.kv_heads, p.seq_q, g.n_blocks
    b, kh, i = var("b"), var("h"), var("pid_m")
    row = Span(i, 1, Nq)
    body = (
        Load("x", Tile("S_blk", (point(b, B), point(kh, Hkv), row, full(Nb)))),
        Compute("copy", ("x", "y")),
        Store("y", Tile("S_blk16", (point(b, B), point(kh, Hkv), row, full(Nb)))),
    )
    return triton_kernel("nsa_score_cast", _grid(("m", i, Nq), ("h", kh, Hkv), ("b", b, B)),
                         (Buffer("x", (1, Nb), 4, "reg"), Buffer("y", (1, Nb), 2, "reg")), body, warps=4, stages=1,
                         regs=STREAM_REGS)


def topk_kernel(p: Problem, g: Geometry, src: str, width: int) -> Kernel:
    """torch.topk(k=n) over a token's block scores (+ sort, the causal −1 mask, the int32 cast) as one row pass:
    reads the row, writes its n indices (int32). other FLOPs 2 per score (compare + select)."""
    B, Hkv, Nq, Nb = p.batch, p.kv_heads, p.seq_q, g.n_blocks
    b, kh, i = var("b"), var("h"), var("pid_m")
    row = Span(i, 1, Nq)
    eb = 2 if src == "S_blk16" else 4
    body = (
        Load("row", Tile(src, (point(b, B), point(kh, Hkv), row, full(Nb)))),
        Compute("nsa_topk_row", ("row", "idx"), other=(Work(2, (row, full(Nb))),)),
        Store("idx", Tile("topk_idx", (point(b, B), point(kh, Hkv), row, full(width)))),
    )
    return triton_kernel("nsa_topk", _grid(("m", i, Nq), ("h", kh, Hkv), ("b", b, B)),
                         (Buffer("row", (1, Nb), eb, "reg"), Buffer("idx", (1, width), INT32, "reg")), body, warps=4, stages=1,
                         regs=STREAM_REGS)


def select_attn_kernel(p: Problem, g: Geometry, width: int, hw, prefix: str = "nsa_",
                       name: str = "nsa_select_attn") -> Kernel:
    """forward_kernel_orig (module docstring, kernel 5): a CTA per (token, KV head) over the token's selected blocks."""
    B, H, Hkv, Nq, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    grp = H // Hkv
    gp = max(16, pow2(grp))  # BLOCK_SIZE_H
    bk = g.block_size
    b, kh, t, i = var("b"), var("h"), var("pid_m"), var("i")
    heads = Span(kh, grp, H, positions=(table(prefix + "tokpos"), t))
    tok = Span(t, 1, Nq)
    rows_w = Span(0, gp, grp)  # g valid rows, g_pad issued
    j = lookup(table(prefix + "sel_idx"), b, kh, t, i)
    cols = Span(j, bk, N)
    kv = lambda name: Tile(name, (point(b, B), point(kh, Hkv), cols, full(d)))  # noqa: E731
    body = (
        Load("idx", Tile("topk_idx", (point(b, B), point(kh, Hkv), tok, full(width)))),
        Load("q", Tile("Q", (point(b, B), heads, tok, full(d)))),
        Loop(i, 0, lookup(table(prefix + "sel_num"), b, kh, t), (
            Load("k", kv("K")),
            Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows_w, cols)),)),
            Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows_w, cols)), Work(1, (rows_w,))),
                    other=(Work(4 + flash2.MASK_FLOPS, (rows_w, cols)), Work(d + 4, (rows_w,)))),
            Load("v", kv("V")),
            Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows_w, cols)),)),
        )),
        flash2.finalize(p, rows_w),
        Store("acc", Tile("O_slc", (point(b, B), heads, tok, full(d)))),
        Store("lse", Tile("LSE_slc", (point(b, B), heads, tok))),
    )
    bufs = (Buffer("idx", (1, width), INT32, "reg"), Buffer("q", (gp, d), e), Buffer("k", (bk, d), e, pipelined=True),
            Buffer("v", (bk, d), e, pipelined=True), Buffer("s", (gp, bk), 4, "reg"),
            Buffer("p", (gp, bk), e, "reg", transient=True), Buffer("acc", (gp, d), 4, "reg"),
            Buffer("m", (gp,), 4, "reg"), Buffer("l", (gp,), 4, "reg"), Buffer("lse", (gp,), 4, "reg"))
    warps, stages = warps_stages(d, bk, hw)
    return triton_kernel(name, _grid(("m", t, Nq), ("h", kh, Hkv), ("b", b, B)), bufs, body, warps=warps, stages=stages)


def combine_kernel(p: Problem) -> Kernel:
    """O = G[..,0]·O_cmp + G[..,1]·O_slc + G[..,2]·O_swa, 128 rows a CTA (fused; PyTorch: 5 kernels)."""
    B, H, Nq, d, e = p.batch, p.heads, p.seq_q, p.head_dim, p.elem_bytes
    b, h, i = var("b"), var("h"), var("pid_m")
    rows = Span(i, 128, Nq)
    o = lambda n: Tile(n, (point(b, B), point(h, H), rows, full(d)))  # noqa: E731
    body = (
        Load("oc", o("O_cmp")), Load("os", o("O_slc")), Load("ow", o("O_swa")),
        Load("g", Tile("G", (point(b, B), rows, full(3)))),
        Compute("nsa_gate", ("oc", "os", "ow", "g", "o"), other=(Work(5, (rows, full(d))),)),
        Store("o", o("O")),
    )
    bufs = tuple(Buffer(n, (128, d), e, "reg") for n in ("oc", "os", "ow", "o")) + (Buffer("g", (128, 3), e, "reg"),)
    return triton_kernel("nsa_combine", _grid(("m", i, cdiv(Nq, 128)), ("h", h, H), ("b", b, B)), bufs, body, warps=4, stages=1,
                         regs=STREAM_REGS)


def decode_attn_kernel(p: Problem, name: str, k: str, v: str, o: str, lse: str, n_keys: int, bn: int,
                       key_lo: int, packed: bool, hw, positions=None) -> Kernel:
    """One-query attention over keys [key_lo, n_keys) of tensor k / v in bn-key tiles: packed — one CTA per (b, KV
    head) with its g query heads as rows (the NSA paper's group-centric loading); else one CTA per (b, query head)
    with one row (fsa_preview's forward_kernel_decode; FA2's plain kernel). Tiles start at ⌊key_lo/bn⌋·bn when
    unpacked (FA2's n_block_min), exactly at key_lo when packed."""
    B, H, Hkv, d, e = p.batch, p.heads, p.kv_heads, p.head_dim, p.elem_bytes
    grp = H // Hkv
    b, hh, t = var("b"), var("h"), var("t")
    if packed:
        heads = Span(hh, grp, H, positions=(table("nsa_tokpos"), 0))
        rows_w = Span(0, max(16, pow2(grp)), grp)
        span_len, off = n_keys - key_lo, key_lo
        cols = Span(t, bn, span_len, offset=off, positions=positions)
        kvh = hh
        nt = cdiv(span_len, bn)
        lo = 0
        hn = Hkv
    else:
        heads = point(hh, H)
        rows_w = Span(0, 16, 1)
        cols = Span(t, bn, n_keys, positions=positions)
        kvh = sp.floor(hh / grp) if grp > 1 else hh
        lo, nt = key_lo // bn, cdiv(n_keys, bn)
        hn = H
    tok = Span(0, 1, 1)
    kvt = lambda name: Tile(name, (point(b, B), point(kvh, Hkv), cols, full(d)))  # noqa: E731
    body = (
        Load("q", Tile("Q", (point(b, B), heads, tok, full(d)))),
        Loop(t, lo, nt, (
            Load("k", kvt(k)),
            Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows_w, cols)),)),
            Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows_w, cols)), Work(1, (rows_w,))),
                    other=(Work(4, (rows_w, cols)), Work(d + 4, (rows_w,)))),
            Load("v", kvt(v)),
            Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows_w, cols)),)),
        )),
        flash2.finalize(p, rows_w),
        Store("acc", Tile(o, (point(b, B), heads, tok, full(d)))),
        Store("lse", Tile(lse, (point(b, B), heads, tok))),
    )
    gp = rows_w.block
    bufs = (Buffer("q", (gp, d), e), Buffer("k", (bn, d), e, pipelined=True), Buffer("v", (bn, d), e, pipelined=True),
            Buffer("s", (gp, bn), 4, "reg"), Buffer("p", (gp, bn), e, "reg", transient=True),
            Buffer("acc", (gp, d), 4, "reg"), Buffer("m", (gp,), 4, "reg"), Buffer("l", (gp,), 4, "reg"),
            Buffer("lse", (gp,), 4, "reg"))
    warps, stages = warps_stages(d, 16, hw)
    return triton_kernel(name, _grid(("b", b, B), ("h", hh, hn)), bufs, body, warps=warps, stages=stages)


# --- the schedule ----------------------------------------------------------------------------------------------------

SELECTIONS = ("scores", "fused", "none")
DECODES = ("fsa_preview", "packed")


def _check_choice(method, name, v, choices):
    if v not in choices:
        raise IosimError(f"{method}: {name}={v!r}; use one of {', '.join(choices)}")


def common_tables(p: Problem, g: Geometry) -> dict:
    """Tables every NSA/FSA schedule carries: the geometry, compressed-token positions, the strided K_c rows of the
    fused score kernel, the sliding window for the reference."""
    Nc, Nb, no = g.n_cmp, g.n_blocks, len(g.offsets)
    koff = np.arange(Nb, dtype=np.int64)[None, :] * g.block_stride - g.pad + np.arange(no, dtype=np.int64)[:, None]
    return {"nsa_geom": g.table(),
            "nsa_cmp_pos": np.arange(max(Nc, 1), dtype=np.int64) * g.kernel_stride + g.kernel_size - 1,
            "nsa_koff": np.clip(koff, 0, max(Nc - 1, 0)),
            "nsa_koff_pos": np.where((koff >= 0) & (koff < Nc), koff * g.kernel_stride + g.kernel_size - 1,
                                     np.iinfo(np.int64).max // 4),
            "nsa_window": np.array([g.window], dtype=np.int64)}


def selection_kernels(p: Problem, g: Geometry, selection: str, width: int, decode: bool) -> tuple[Kernel, ...]:
    if selection == "scores":
        ks = (score_kernel(p, g, decode), block_score_kernel(p, g))
        if decode:
            return ks + (topk_kernel(p, g, "S_blk", width),)
        return ks + (cast_kernel(p, g), topk_kernel(p, g, "S_blk16", width))
    if selection == "fused":
        return fused_score_kernel(p, g), topk_kernel(p, g, "S_blk16", width)
    return ()


def build_nsa(p: Problem, cfg: KernelConfig, hw=None, *, method: str = "nsa", density=None, seed=0, table=None,
              scores=None, kernel_size=32, kernel_stride=16, block_size=64, topk=16, init_blocks=1, local_blocks=2,
              window=512, selection="scores", decode="fsa_preview", selected=None) -> Schedule:
    """The NSA schedule; ``selected``: a function (p, g, sel, hw) → (kernels, tensors, tables, notes) replacing the
    selected branch (FSA's kernels), None for NSA's own."""
    check_head_dim(p, method)
    concrete(p, method)
    _check_choice(method, "selection", selection, SELECTIONS)
    _check_choice(method, "decode", decode, DECODES)
    is_decode = p.seq_q == 1 and p.seq_kv > 1
    if not is_decode:
        if p.seq_q != p.seq_kv:
            raise IosimError(f"{method}: prefill needs seq_q = seq_kv (got {p.seq_q}, {p.seq_kv}); for decode give "
                             "seq_q = 1")
        if not p.causal:
            raise IosimError(f"{method}: NSA's kernels are causal (every branch masks future tokens); add --causal")
    g = geometry(p, method, kernel_size, kernel_stride, block_size, topk, init_blocks, local_blocks, window)
    if g.n_cmp < 1:
        raise IosimError(f"{method}: seq_kv={p.seq_kv} is shorter than kernel_size={g.kernel_size}: no compressed "
                         "token exists (linear_compress's corner case); use a longer sequence or a smaller kernel_size")
    pq = replace(p, causal=True)
    sel = choose(pq, g, method, density, seed, table, scores)
    width = max(sel.width, g.topk) if selection != "none" else sel.width
    idx = sel.idx if sel.width == width else np.pad(sel.idx, ((0, 0),) * 3 + ((0, width - sel.width),),
                                                     constant_values=-1)
    sel = Selection(idx, sel.num, sel.source)
    tens = tensors(pq, g, width, selection, is_decode)
    tables = common_tables(pq, g) | selection_tables(pq, sel)
    notes = [f"{method}: l={g.kernel_size}, stride={g.kernel_stride}, blocks of {g.block_size}, top-{g.topk} "
             f"({g.init_blocks} initial + {g.local_blocks} local forced), window {g.window}; Nc={g.n_cmp}, Nb={g.n_blocks}",
             f"selection: {sel.source}; {int(sel.num.sum()):,} (token, KV head) blocks, mean "
             f"{float(sel.num.mean()):.2f} per token"]
    ks: list[Kernel] = []
    if not is_decode:
        ks += [compress_kernel(pq, g, "K", "Wk", "Kc", hw, "nsa_compress_k"),
               compress_kernel(pq, g, "V", "Wv", "Vc", hw, "nsa_compress_v"),
               cmp_fill_kernel(pq), cmp_attn_kernel(pq, g, hw)]
        ks += selection_kernels(pq, g, selection, width, False)
    else:
        packed = decode == "packed"
        ks.append(decode_attn_kernel(pq, "nsa_cmp_attn", "Kc", "Vc", "O_cmp", "LSE_cmp", g.n_cmp, 128, 0, packed, hw,
                                     positions=(_sym("nsa_cmp_pos"),)))
        ks += selection_kernels(pq, g, selection, width, True)
        notes.append(f"decode ({decode}): the compression of the new token is left out (Kc, Vc cached inputs)")
    if selected is None:
        ks.append(select_attn_kernel(pq, g, width, hw))
    else:
        k2, t2, tb2, n2 = selected(pq, g, sel, width, hw)
        ks += list(k2)
        tens |= t2
        tables |= tb2
        notes += list(n2)
    if not is_decode or decode == "fsa_preview":
        swa, _ = fa2_sliding_kernel(pq, hw, g.window, "nsa_swa", "O_swa", "LSE_swa")
        ks.append(swa)
    else:
        w0 = max(0, p.seq_kv - g.window)
        ks.append(decode_attn_kernel(pq, "nsa_swa", "K", "V", "O_swa", "LSE_swa", p.seq_kv, 64, w0, True, hw))
    ks.append(combine_kernel(pq))
    config = replace(cfg, block_m=cfg.block_m or 1, block_n=cfg.block_n or g.block_size,
                     num_stages=max(2, cfg.num_stages))
    return Schedule(method, pq, config, tens, tuple(ks), tuple(notes), tables)


@register("nsa", "Native Sparse Attention (nsa_ref Triton kernels): compression MLP, compressed attention, block "
          "scores + top-n, selected-block attention (CTA per token × KV head), FA2 sliding window, gate combine")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed=0, table=None, scores=None, kernel_size=32,
          kernel_stride=16, block_size=64, topk=16, init_blocks=1, local_blocks=2, window=512, selection="scores",
          decode="fsa_preview") -> Schedule:
    """NSA forward (seq_q = seq_kv, causal) or one-step decode (seq_q = 1): module docstring. Method parameters
    (``--param``): kernel_size, kernel_stride, block_size, topk, init_blocks, local_blocks, window (the FSA README's
    defaults), selection (scores | fused | none), decode (fsa_preview | packed); the selection source: density, seed,
    table (.npy of block indices), scores (.npy of attention probabilities)."""
    return build_nsa(p, cfg, hw, method="nsa", density=density, seed=seed, table=table, scores=scores,
                     kernel_size=kernel_size, kernel_stride=kernel_stride, block_size=block_size, topk=topk,
                     init_blocks=init_blocks, local_blocks=local_blocks, window=window, selection=selection,
                     decode=decode)


# --- reference ops -----------------------------------------------------------------------------------------------------

@register_op("nsa_compress")
def op_nsa_compress(ctx, x, w, y):
    """y[o, :] += Σ_k x[o·stride + k, chunk] @ W[k, chunk, cols] over the windows of this CTA (rows past the
    sequence read as 0: the kernel's mask)."""
    geo = ctx.tables["nsa_geom"]
    l, s = int(geo[0]), int(geo[1])
    nrow = x.ext[0]
    bo, bd = y.data.shape
    acc = y.value(0.0)
    xv = x.data[:nrow]
    for k in range(l):
        r = np.arange(bo) * s + k
        ok = r < nrow
        xr = np.where(ok[:, None], xv[np.minimum(r, max(nrow - 1, 0))], 0.0) if nrow else np.zeros((bo, x.data.shape[1]))
        acc += xr[:, :w.ext[1]] @ w.data[k, :w.ext[1], :]
    y.set((x.origin[0] // s, w.origin[2]), (bo, w.ext[2]))


@register_op("nsa_fill_zero")
def op_fill_zero(ctx, b):
    b.data.fill(0.0)
    b.fresh = False


@register_op("nsa_fill_neginf")
def op_fill_neginf(ctx, b):
    b.data.fill(-np.inf)
    b.fresh = False


@register_op("nsa_fill_minus1")
def op_fill_minus1(ctx, b):
    b.data.fill(-1.0)
    b.fresh = False


def _masked_scores(ctx, q, k):
    """scale·Q Kᵀ of the loaded rows with invisible keys → −∞ (causal on the buffers' positions)."""
    r, c = q.ext[0], k.ext[0]
    x = (q.data[:r] @ k.data[:c].T) * ctx.scale
    return ctx.masked(x, q.origin[0], k.origin[0], (q.row_pos(), k.row_pos()))


@register_op("nsa_score")
def op_nsa_score(ctx, q, k, lse, s):
    """S = exp(scale·q·k_cᵀ − LSE) where the compressed key is visible, else 0 (score_kernel)."""
    x = _masked_scores(ctx, q, k)
    r, c = x.shape
    L = lse.data[:r]
    with np.errstate(all="ignore"):
        v = np.exp(x - np.where(np.isfinite(L), L, 0.0)[:, None])
    s.data[:r, :c] = np.where(np.isfinite(x) & np.isfinite(L)[:, None], v, 0.0)
    s.set((q.origin[0], k.origin[0]), (r, c))


def _block_scores(ctx, rows0: int, nrows: int, cmp, c0: int, k0: int, nb: int) -> np.ndarray:
    """[nrows, nb] block scores of blocks k0 … from compressed scores cmp[:, c − c0] (NSA eq. 9 weights), forced +∞."""
    geo = ctx.tables["nsa_geom"]
    l, s, bsz, _, init, local = (int(v) for v in geo[:6])
    w = np.bincount((np.arange(l // s)[:, None] + np.arange(bsz // s)[None, :]).ravel())
    pad, bstride = l // s - 1, bsz // s
    out = np.zeros((nrows, nb))
    for o, wo in enumerate(w):
        col = (k0 + np.arange(nb)) * bstride - pad + o
        ok = (col >= c0) & (col - c0 < cmp.shape[1]) & (col >= 0)
        vals = np.where(ok[None, :], cmp[:nrows, np.clip(col - c0, 0, max(cmp.shape[1] - 1, 0))], 0.0)
        out += wo * vals
    bq = (rows0 + np.arange(nrows) + ctx.shift) // bsz
    kb = k0 + np.arange(nb)
    forced = ((bq[:, None] >= kb[None, :]) & (bq[:, None] < kb[None, :] + local)) | (kb[None, :] < init)
    return np.where(forced, np.inf, out)


@register_op("nsa_block_score")
def op_nsa_block_score(ctx, s, bs):
    """_transform_score_kernel: weighted sums of the compressed scores overlapping each block, forced blocks +∞."""
    geo = ctx.tables["nsa_geom"]
    l, st, bsz = int(geo[0]), int(geo[1]), int(geo[2])
    pad, bstride = l // st - 1, bsz // st
    r, cext = s.ext
    c0 = s.origin[1]
    k0 = 0 if c0 == 0 else (c0 + pad) // bstride
    nb = bs.data.shape[1]
    bs.data[:r, :] = _block_scores(ctx, s.origin[0], r, s.data[:, :cext], c0, k0, nb)
    bs.set((s.origin[0], k0), (r, nb))


@register_op("nsa_fused_score")
def op_nsa_fused_score(ctx, q, k, lse, bs):
    """One offset o of fused_score_kernel (o counts the calls in this program): bs += w[o]·exp(scale·q·k_cᵀ − lse)
    over the CTA's blocks k0 … (the gathered compressed keys 4·kb − pad + o; out-of-range or invisible → 0); after the
    last offset the forced blocks are set to +∞."""
    geo = ctx.tables["nsa_geom"]
    l, st, bsz, _, init, local = (int(v) for v in geo[:6])
    w = np.bincount((np.arange(l // st)[:, None] + np.arange(bsz // st)[None, :]).ravel())
    r, c = q.ext[0], k.ext[0]
    k0 = k.origin[0]
    keypos = np.asarray(k.row_pos()[:c])
    rows = q.origin[0] + np.arange(r) + ctx.shift
    x = (q.data[:r] @ k.data[:c].T) * ctx.scale
    L = lse.data[:r]
    ok = (keypos[None, :] <= rows[:, None]) & np.isfinite(L)[:, None]
    with np.errstate(all="ignore"):
        v = np.where(ok, np.exp(x - np.where(np.isfinite(L), L, 0.0)[:, None]), 0.0)
    o = ctx.regs.get("nsa_off", 0)
    acc = bs.value(0.0)
    acc[:r, :c] += w[o] * v
    if o + 1 == len(w):
        bq = rows // bsz
        kb = k0 + np.arange(c)
        forced = ((bq[:, None] >= kb[None, :]) & (bq[:, None] < kb[None, :] + local)) | (kb[None, :] < init)
        acc[:r, :c] = np.where(forced, np.inf, acc[:r, :c])
    ctx.regs["nsa_off"] = (o + 1) % len(w)
    bs.set((q.origin[0], k0), (r, c))


@register_op("nsa_topk_row")
def op_nsa_topk_row(ctx, row, idx):
    """torch.topk(n) of a token's block scores, sorted ascending, blocks past the causal limit → −1."""
    geo = ctx.tables["nsa_geom"]
    bsz, topk = int(geo[2]), int(geo[3])
    c = row.ext[1]
    vals = row.data.reshape(-1)[:c]
    t = row.origin[0] + ctx.shift
    k = min(topk, c)
    pick = np.sort(np.argsort(-vals, kind="stable")[:k])
    pick = np.where(pick > t // bsz, -1, pick)
    flat = idx.value(0.0).reshape(-1)
    flat[:] = -1
    flat[:k] = pick
    idx.set(row.origin[:idx.data.ndim], idx.data.shape)


@register_op("nsa_window_softmax")
def op_nsa_window_softmax(ctx, s, m, l, acc):
    """FA2's local window (w, 0): keys further than w left of the query are masked, then the online softmax."""
    w = int(ctx.tables["nsa_window"][0])
    r, c = s.ext
    rows = s.origin[0] + np.arange(r) + ctx.shift
    cols = s.origin[1] + np.arange(c)
    far = (rows[:, None] - cols[None, :]) > w
    if far.any():
        s.data[:r, :c] = np.where(far, -np.inf, s.data[:r, :c])
    op_online_softmax(ctx, s, m, l, acc)


@register_op("nsa_gate")
def op_nsa_gate(ctx, oc, os_, ow, g, o):
    """O = g_cmp·O_cmp + g_slc·O_slc + g_swa·O_swa (per-token gates)."""
    r = oc.ext[0]
    gv = g.data[:r]
    o.data[:r] = gv[:, 0:1] * oc.data[:r] + gv[:, 1:2] * os_.data[:r] + gv[:, 2:3] * ow.data[:r]
    o.set(oc.origin, oc.ext)
