"""Squeezed Attention (Hooper et al., arXiv 2411.09688): centroid lookup over a fixed context, then exact attention on
the keys it keeps.

Source: SqueezeAILab/SqueezedAttention @4a50c64 — ``squeezedattention/kernels.py`` (the Triton kernels), their launch
code ``transformers/src/transformers/models/llama/modeling_llama.py`` (``_attention_causal``, ``_centroid_lookup_simple``,
``compute_k_idx_optimized``, ``_attention_qk``), and ``offline_clustering.py`` / ``squeezedattention/clustering.py``
(cuML K-means per head, ``percent_clusters`` = 5 % of the context as centroids, a 100-token observation window).

The problem: N_kv = N_ctx + N_user keys, the first N_ctx the fixed context (``context``, default seq_kv − seq_q), the
rest the user input's own keys; seq_q user queries (prefill) or 1 (generation). Batch 1 (the launch code asserts
it). Heads: the kernels assert H_q = H_kv; with GQA, query head h reads KV head h // g here and the centroids are the
KV heads'. Kernels, in launch order (per head h unless said):

* ``sq_kmeans_*`` (only with ``offline_iters`` > 0: the offline step, priced for reference; ``clustering.py`` runs cuML
  KMeans(max_iter=300, k-means++)): an init that gathers C keys, then per Lloyd iteration an assign pass (each key's
  distance to every centroid, 128 × 128 tiles, argmin → labels) and an update pass (each centroid the mean of its
  members, gathered through the final labels). k-means++ seeding's passes and the normalisation are left out.
* ``sq_causal`` (_fwd_kernel_causal, 64 × 64 tiles, 4 / 8 warps): the user queries against the user keys
  [N_ctx, N_kv), every key tile of the user part (no causal skipping: the mask is applied in the tile; the kernel's
  ``causal`` flag is the problem's — without it the user keys are all visible); writes the
  fp32 output, the row max M and the row sum L (the reduce's starting point).
* ``sq_centroids`` (_fwd_centroid_simple_kernel_qk, 128 queries a CTA): two passes over the C centroids in 128-row
  tiles: pass 1 reads the centroids and their key counts (denominator Σ_c n_c·e^{q·c}), pass 2 reads the centroids again
  and writes each centroid's summed probability over the CTA's queries into score_avg [H, C + 1, ⌈N_q/128⌉] (fp32,
  column stride: a scattered store per centroid).
* ``sq_score_sum`` (score_avg.sum(-1) / N_q; the observation-window slot C is 1/N_q, its fill left out),
  ``sq_gather_scores`` (torch.gather of each key's centroid score through its int64 label: reads N_ctx labels,
  writes N_ctx fp32), ``sq_threshold`` (avg > global_threshold → a bool mask), ``sq_compact`` (compact_indices_kernel,
  4096 keys a CTA: reads the mask, an atomic add on the head's counter, writes the kept keys' int64 indices; the
  atomic order of the blocks is taken ascending). The host's ``.item()`` and the per-head block counts are left out.
* hierarchical lookup (``levels=2``, the paper's §3.3; the kernels are not released, this is the same kernels applied
  twice): level 1 scores the C1 coarse centroids, thresholds each fine centroid by its parent's score and compacts the
  surviving fine centroids; level 2 runs the centroid kernel over those survivors only (their rows gathered) and
  writes their scores into a zeroed score_avg; then the per-key gather / threshold / compaction as above.
* ``sq_sparse`` (_fwd_kernel_qk, 128 × 128, 4 / 8 warps): grid (⌈N_q/128⌉, Σ_h ⌈kept_h / 2048⌉): a CTA per 2048-key
  split of a head's kept keys, ≤ 16 tiles of 128 keys each read through the int64 index list (a token-level gather of
  the K and V rows, ``Span.gather``); writes the split's normalised partial (o_tmp, bf16 in the launch code — the
  research notes say fp32) and its row sum and max (fp32).
* ``sq_reduce`` (_reduce_kernel_qk): per 128 queries, the causal output, M and L, then every split of the head:
  partial, max, sum; rescales and writes the output (fp32).

Selection (which context keys a head keeps, shared by all its queries — token granularity), one of:
* ``density`` + ``seed``: keys are assigned to C clusters uniformly (``default_rng(seed)``; hierarchical: the C
  clusters to C1 parents too), the clusters are visited in random order (hierarchical: parent by parent) and kept
  until ``density`` of the non-window context keys are kept; the last ``observation_window`` context keys are always
  kept (they form the extra score slot). density None keeps every key.
* ``table``: a bool mask of kept context keys [N_ctx], [H, N_ctx] or [1, H, N_ctx] (.npy or array).
* ``scores``: attention probabilities [N_q, N_kv] or [1, H, N_q, N_kv]: a key's importance is its mean probability
  over the queries (the paper's averaged score), the top ``density`` of the non-window keys kept (the percentile
  threshold); the window is kept.
The sparse kernel's loops come from the selection; the pre-pass kernels compute their real values, their mask with
``threshold`` (the paper's calibrated global threshold; default 0: keep every key) — only the reference reads it.
"""

from __future__ import annotations

import os

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_head_dim
from iosim.models.sparse.kernels import INT64, STREAM_REGS, triton_kernel
from iosim.models.sparse.selection import check_params, concrete
from iosim.problem import KernelConfig, Problem
from iosim.reference import register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work,
                            cdiv, clamp, full, lookup, point, table, var)

_sym = table
BLOCK_KV = 2048  # _attention_qk: keys of a head per CTA
MAX_KEY_ENTRIES = 1 << 25  # per-head kept-key table entries (int64)


def _grid(*axes):
    return tuple(GridAxis(n, v, e) for n, v, e in axes)


# --- selection -----------------------------------------------------------------------------------------------------

def _centroids(n: int, pct: float) -> int:
    """offline_clustering.py: int(percentage · (context − observation window)), at least 1."""
    return max(1, int(pct / 100.0 * n))


def select(p: Problem, n_ctx: int, window: int, c2: int, c1: int | None, density, seed: int, table_, scores,
           method: str = "squeezed") -> dict:
    """Per-head kept context keys (bool [H, N_ctx]), the labels (key → fine cluster, fine → coarse), and the fine
    clusters surviving level 1 ([H, C2] bool; all True for one level)."""
    H, Hkv = p.heads, p.kv_heads
    given = [n for n, v in (("table", table_), ("scores", scores)) if v is not None]
    if len(given) > 1 or (table_ is not None and density is not None):
        raise IosimError(f"{method}: give one of density, table or scores (scores may take density), not "
                         f"{' and '.join(given + (['density'] if density is not None and table_ is not None else []))}")
    if density is not None:
        check_params(method, density=(density, 0.0, 1.0))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise IosimError(f"{method}: seed={seed!r} must be an integer")
    rng = np.random.default_rng(seed)
    nclu = n_ctx - window  # clustered keys
    lab = np.full((Hkv, n_ctx), c2, dtype=np.int64)  # window keys → the extra slot C
    lab[:, :nclu] = rng.integers(0, c2, size=(Hkv, nclu)) if nclu else lab[:, :0]
    parent = rng.integers(0, c1, size=(Hkv, c2)).astype(np.int64) if c1 else np.zeros((Hkv, c2), dtype=np.int64)
    grp = H // Hkv
    keep = np.zeros((H, n_ctx), dtype=bool)
    keep[:, nclu:] = True
    survive = np.ones((H, c2), dtype=bool)
    if table_ is not None:
        arr = np.load(table_) if isinstance(table_, (str, os.PathLike)) else np.asarray(table_)
        if isinstance(table_, (str, os.PathLike)) and not os.path.isfile(str(table_)):
            raise IosimError(f"{method}: key table {table_!r} does not exist")
        if arr.dtype != bool:
            raise IosimError(f"{method}: the key table must be a bool mask of kept context keys, got {arr.dtype}")
        arr = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr
        if arr.shape not in ((n_ctx,), (H, n_ctx)):
            raise IosimError(f"{method}: key table of shape {arr.shape}; give [N_ctx={n_ctx}] or [heads={H}, {n_ctx}]")
        keep[:, :nclu] = np.broadcast_to(arr, (H, n_ctx))[:, :nclu]
        src = "key table " + (str(table_) if isinstance(table_, (str, os.PathLike)) else "given")
    elif scores is not None:
        s = np.load(scores) if isinstance(scores, (str, os.PathLike)) else np.asarray(scores, dtype=np.float64)
        s = s[None, None] if s.ndim == 2 else s
        if s.ndim != 4 or s.shape[2:] != (p.seq_q, p.seq_kv) or s.shape[0] != 1 or s.shape[1] not in (1, H):
            raise IosimError(f"{method}: scores have shape {np.shape(scores)}; give [seq_q, seq_kv] = [{p.seq_q}, "
                             f"{p.seq_kv}] or [1, heads, {p.seq_q}, {p.seq_kv}]")
        imp = np.broadcast_to(s, (1, H, p.seq_q, p.seq_kv))[0, :, :, :nclu].mean(axis=1)  # [H, nclu]
        d = 1.0 if density is None else float(density)
        k = int(np.rint(d * nclu))
        order = np.argsort(-imp, axis=1, kind="stable")[:, :k]
        for h in range(H):
            keep[h, order[h]] = True
        src = f"the top {d:g} of context keys by mean probability (percentile threshold)"
    else:
        d = 1.0 if density is None else float(density)
        target = int(np.rint(d * nclu))
        for h in range(H):
            kv = h // grp
            sizes = np.bincount(lab[kv, :nclu], minlength=c2)
            if c1:
                order = np.concatenate([rng.permutation(np.flatnonzero(parent[kv] == a)) for a in rng.permutation(c1)])
            else:
                order = rng.permutation(c2)
            csum = np.cumsum(sizes[order])
            nkeep = int(np.searchsorted(csum, target, side="left")) + 1 if target > 0 else 0
            kept = np.zeros(c2, dtype=bool)
            kept[order[:nkeep]] = True
            keep[h, :nclu] = kept[lab[kv, :nclu]]
            if c1:
                alive = np.zeros(c1, dtype=bool)
                alive[parent[kv, order[:nkeep]]] = True
                survive[h] = alive[parent[kv]]
        src = f"density {d:g} of the clustered context keys (whole clusters), seed {seed}"
    if c1 and (table_ is not None or scores is not None):
        for h in range(H):  # level-1 survivors: the parents of the fine clusters holding a kept key
            kv = h // grp
            fine = np.unique(lab[kv, :nclu][keep[h, :nclu]])
            alive = np.zeros(c1, dtype=bool)
            alive[parent[kv, fine]] = True
            survive[h] = alive[parent[kv]]
    return {"keep": keep, "labels": lab, "parent": parent, "survive": survive, "source": src}


def key_tables(keep: np.ndarray, block: int = 4096) -> dict:
    """Compacted kept-key lists per head (ascending) and the 2048-key splits of the sparse kernel."""
    H, n = keep.shape
    kvlen = keep.sum(axis=1).astype(np.int64)
    kidx = np.zeros((1, H, max(1, n)), dtype=np.int64)
    for h in range(H):
        kk = np.flatnonzero(keep[h])
        kidx[0, h, :kk.size] = kk
    nblk = -(-kvlen // BLOCK_KV)
    hstart = np.cumsum(nblk) - nblk
    total = int(nblk.sum())
    blk_head = np.repeat(np.arange(H, dtype=np.int64), nblk)
    blk_split = np.arange(total, dtype=np.int64) - np.repeat(hstart, nblk)
    nb4 = -(-n // block)
    per = keep[:, :nb4 * block] if n >= nb4 * block else np.pad(keep, ((0, 0), (0, nb4 * block - n)))
    cnt4 = per.reshape(H, nb4, block).sum(-1).astype(np.int64)
    kstart = np.cumsum(cnt4, axis=1) - cnt4
    return {"sq_kidx": kidx, "sq_kvlen": kvlen, "sq_nblk": nblk.astype(np.int64), "sq_hstart": hstart.astype(np.int64),
            "sq_blk_head": blk_head if total else np.zeros(1, np.int64),
            "sq_blk_split": blk_split if total else np.zeros(1, np.int64),
            "sq_ccnt": cnt4, "sq_cstart": kstart, "_total_blocks": total}


# --- kernels -------------------------------------------------------------------------------------------------------

def causal_kernel(p: Problem, n_ctx: int, hw):
    """_fwd_kernel_causal: user queries × user keys [N_ctx, N_kv), 64 × 64, every key tile."""
    H, Nq, Nkv, d, e = p.heads, p.seq_q, p.seq_kv, p.head_dim, p.elem_bytes
    nu = Nkv - n_ctx
    h, i, j = var("h"), var("pid_m"), var("j")
    rows, cols = Span(i, 64, Nq), Span(j, 64, nu, offset=n_ctx)
    body = (
        Load("q", Tile("Q", (point(0, 1), point(h, H), rows, full(d)))),
        Loop(j, 0, cdiv(nu, 64), flash2.kv_step(p, 0, h, rows, cols, masked=p.causal)),
        Compute("sq_finalize", ("acc", "m", "l"), other=(Work(d, (rows,)),)),
        Store("acc", Tile("O", (point(0, 1), point(h, H), rows, full(d)))),
        Store("m", Tile("MO", (point(0, 1), point(h, H), rows))),
        Store("l", Tile("LO", (point(0, 1), point(h, H), rows))),
    )
    return triton_kernel("sq_causal", _grid(("m", i, cdiv(Nq, 64)), ("h", h, H)), flash2.buffers(64, 64, d, e), body,
                         warps=4 if d <= 64 else 8, stages=2)


def centroid_kernel(p: Problem, name: str, cent: str, nk: str, sa: str, n_rows: int, gather: str | None = None,
                    length=None):
    """_fwd_centroid_simple_kernel_qk over ``n_rows`` centroid rows (``gather``: a table of the rows to read, the
    hierarchical level 2; ``length``: per-head row count expression)."""
    H, Hkv, Nq, d, e = p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    grp = H // Hkv
    h, i, t = var("h"), var("pid_m"), var("t")
    kh = sp.floor(h / grp) if grp > 1 else h
    rows = Span(i, 128, Nq)
    ln = n_rows if length is None else length
    g = None if gather is None else (_sym(gather), 0, h)
    crow = Span(t, 128, ln, gather=g)
    qb = cdiv(Nq, 128)
    ctile = Tile(cent, (point(0, 1), point(kh, Hkv), crow, full(d)))
    nkt = Tile(nk, (point(0, 1), point(kh, Hkv), crow, full(1)))
    body = (
        Load("q", Tile("Q", (point(0, 1), point(h, H), rows, full(d)))),
        Loop(t, 0, cdiv(ln, 128), (
            Load("c", ctile), Load("nk", nkt),
            Compute("sq_cent_pass1", ("q", "c", "nk", "m", "den"), matmul=(Work(2 * d, (rows, crow)),),
                    exp=(Work(1, (rows, crow)), Work(1, (rows,))), other=(Work(4, (rows, crow)),)),
        )),
        Loop(t, 0, cdiv(ln, 128), (
            Load("c", ctile),
            Compute("sq_cent_pass2", ("q", "c", "m", "den", "sa"), matmul=(Work(2 * d, (rows, crow)),),
                    exp=(Work(1, (rows, crow)),), other=(Work(4, (rows, crow)),)),
            Store("sa", Tile(sa, (point(0, 1), point(h, H), crow, point(i, qb)))),
        )),
    )
    bufs = (Buffer("q", (128, d), e), Buffer("c", (128, d), e, pipelined=True), Buffer("nk", (128,), 4, "reg"),
            Buffer("m", (128,), 4, "reg"), Buffer("den", (128,), 4, "reg"), Buffer("sa", (128,), 4, "reg"),
            Buffer("s", (128, 128), 4, "reg"))
    return triton_kernel(name, _grid(("m", i, qb), ("h", h, H)), bufs, body, warps=4 if d <= 64 else 8, stages=2)


def sum_kernel(p: Problem, name: str, sa: str, avg: str, n_rows: int):
    """score_avg.sum(-1) / N_q: per head, the (C + 1) rows of ⌈N_q/128⌉ partial sums → one fp32 score each."""
    H, Nq = p.heads, p.seq_q
    qb = cdiv(Nq, 128)
    h, i = var("h"), var("pid_m")
    rows = Span(i, 128, n_rows)
    body = (
        Load("x", Tile(sa, (point(0, 1), point(h, H), rows, full(qb)))),
        Compute("sq_score_sum", ("x", "y"), other=(Work(qb + 1, (rows,)),)),
        Store("y", Tile(avg, (point(0, 1), point(h, H), rows, full(1)))),
    )
    return triton_kernel(name, _grid(("m", i, cdiv(n_rows, 128)), ("h", h, H)),
                         (Buffer("x", (128, qb), 4, "reg"), Buffer("y", (128,), 4, "reg")), body, warps=4, stages=1,
                         regs=STREAM_REGS)


def gather_kernel(p: Problem, name: str, lab: str, avg: str, out: str, n: int, lab_table: str):
    """torch.gather(avg, 2, labels): per element, its int64 label and the score it points to (a scattered read)."""
    H, Hkv = p.heads, p.kv_heads
    grp = H // Hkv
    h, i = var("h"), var("pid_m")
    kh = sp.floor(h / grp) if grp > 1 else h
    rows = Span(i, 1024, n)
    body = (
        Load("lab", Tile(lab, (point(0, 1), point(kh, Hkv), rows))),
        Load("s", Tile(avg, (point(0, 1), point(h, H), Span(i, 1024, n, gather=(_sym(lab_table), kh)), full(1)))),
        Compute("sq_gather_copy", ("s", "y")),
        Store("y", Tile(out, (point(0, 1), point(h, H), rows))),
    )
    return triton_kernel(name, _grid(("m", i, cdiv(n, 1024)), ("h", h, H)),
                         (Buffer("lab", (1024,), INT64, "reg"), Buffer("s", (1024, 1), 4, "reg"), Buffer("y", (1024,), 4, "reg")),
                         body, warps=4, stages=1, regs=STREAM_REGS)


def threshold_kernel(p: Problem, name: str, src: str, out: str, n: int):
    """avg > global_threshold: reads fp32, writes a bool (1 byte) mask."""
    H = p.heads
    h, i = var("h"), var("pid_m")
    rows = Span(i, 1024, n)
    body = (
        Load("x", Tile(src, (point(0, 1), point(h, H), rows))),
        Compute("sq_threshold", ("x", "y"), other=(Work(1, (rows,)),)),
        Store("y", Tile(out, (point(0, 1), point(h, H), rows))),
    )
    return triton_kernel(name, _grid(("m", i, cdiv(n, 1024)), ("h", h, H)),
                         (Buffer("x", (1024,), 4, "reg"), Buffer("y", (1024,), 1, "reg")), body, warps=4, stages=1,
                         regs=STREAM_REGS)


def compact_kernel(p: Problem, name: str, mask: str, out: str, cnt: str, n: int, start_t: str, count_t: str):
    """compact_indices_kernel (4096 elements a CTA, 4 warps): read the mask block, one atomic add on the head's
    counter, write the kept elements' int64 indices at the block's offset (ascending block order assumed)."""
    H = p.heads
    b, h, i = var("b"), var("h"), var("pid_m")
    rows = Span(i, 4096, n)
    kept = lookup(_sym(count_t), h, i)
    start = lookup(_sym(start_t), h, i)
    body = (
        Load("m", Tile(mask, (point(0, 1), point(h, H), rows))),
        Compute("sq_compact", ("m", "lst", "c"), other=(Work(2, (rows,)),)),
        Store("c", Tile(cnt, (point(0, 1), point(h, H), full(1))), atomic=True),
        Store("lst", Tile(out, (point(0, 1), point(h, H), Span(0, 4096, kept, offset=start)))),
    )
    return triton_kernel(name, _grid(("b", b, 1), ("h", h, H), ("m", i, cdiv(n, 4096))),
                         (Buffer("m", (4096,), 1, "reg"), Buffer("lst", (4096,), INT64, "reg"), Buffer("c", (1,), 4, "reg")),
                         body, warps=4, stages=1, regs=STREAM_REGS)


def sparse_kernel(p: Problem, total_blocks: int, hw):
    """_fwd_kernel_qk (module docstring): CTA (128 queries, one 2048-key split of a head's kept keys)."""
    H, Hkv, Nq, d, e = p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    grp = H // Hkv
    i, blk, t = var("pid_m"), var("pid_n"), var("t")
    h = lookup(_sym("sq_blk_head"), blk)
    kh = sp.floor(h / grp) if grp > 1 else h
    split = lookup(_sym("sq_blk_split"), blk)
    kvlen = lookup(_sym("sq_kvlen"), h)
    rows = Span(i, 128, Nq)
    tiles = BLOCK_KV // 128
    cols = Span(split * tiles + t, 128, kvlen, gather=(_sym("sq_kidx"), 0, h))
    kv = lambda n: Tile(n, (point(0, 1), point(kh, Hkv), cols, full(d)))  # noqa: E731
    body = (
        Load("q", Tile("Q", (point(0, 1), point(h, H), rows, full(d)))),
        Loop(t, 0, clamp(cdiv(kvlen - split * BLOCK_KV, 128), 0, tiles), (
            Load("kidx", Tile("KIDX", (point(0, 1), point(h, H), Span(split * tiles + t, 128, kvlen)))),
            Load("k", kv("K")),
            Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols)),)),
            Compute("online_softmax", ("s", "m", "l", "acc"), exp=(Work(1, (rows, cols)), Work(1, (rows,))),
                    other=(Work(4, (rows, cols)), Work(d + 4, (rows,)))),
            Load("v", kv("V")),
            Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (rows, cols)),)),
        )),
        Compute("sq_finalize", ("acc", "m", "l"), other=(Work(d, (rows,)),)),
        Store("acc", Tile("OT", (point(0, 1), point(blk, max(total_blocks, 1)), rows, full(d)))),
        Store("l", Tile("LT", (point(blk, max(total_blocks, 1)), rows))),
        Store("m", Tile("MT", (point(blk, max(total_blocks, 1)), rows))),
    )
    bufs = flash2.buffers(128, 128, d, e) + (Buffer("kidx", (128,), INT64, "reg"),)
    return triton_kernel("sq_sparse", _grid(("m", i, cdiv(Nq, 128)), ("n", blk, max(total_blocks, 1))), bufs, body,
                         warps=4 if d <= 64 else 8, stages=2)


def reduce_kernel(p: Problem, total_blocks: int):
    """_reduce_kernel_qk: the causal part's O, M, L, then every split of the head (module docstring)."""
    H, Nq, d = p.heads, p.seq_q, p.head_dim
    i, h, t = var("pid_m"), var("h"), var("t")
    rows = Span(i, 128, Nq)
    blk = lookup(_sym("sq_hstart"), h) + t
    nb = max(total_blocks, 1)
    body = (
        Load("m", Tile("MO", (point(0, 1), point(h, H), rows))),
        Load("l", Tile("LO", (point(0, 1), point(h, H), rows))),
        Load("acc", Tile("O", (point(0, 1), point(h, H), rows, full(d)))),
        Loop(t, 0, lookup(_sym("sq_nblk"), h), (
            Load("ot", Tile("OT", (point(0, 1), point(blk, nb), rows, full(d)))),
            Load("mt", Tile("MT", (point(blk, nb), rows))),
            Load("lt", Tile("LT", (point(blk, nb), rows))),
            Compute("sq_reduce_step", ("ot", "mt", "lt", "acc", "m", "l"), exp=(Work(2, (rows,)),),
                    other=(Work(4 * d + 6, (rows,)),)),
        )),
        Store("acc", Tile("O", (point(0, 1), point(h, H), rows, full(d)))),
    )
    bufs = (Buffer("m", (128,), 4, "reg"), Buffer("l", (128,), 4, "reg"), Buffer("acc", (128, d), 4, "reg"),
            Buffer("ot", (128, d), 2, "reg"), Buffer("mt", (128,), 4, "reg"), Buffer("lt", (128,), 4, "reg"))
    return triton_kernel("sq_reduce", _grid(("m", i, cdiv(Nq, 128)), ("h", h, H)), bufs, body, warps=4 if d <= 64 else 8,
                         stages=1)


def fill_kernel(p: Problem, name: str, tensor: str, rows: int, cols: int):
    """A torch.zeros of a [1, H, rows, cols] fp32 tensor (the hierarchical level-2 score buffer)."""
    H = p.heads
    h, i = var("h"), var("pid_m")
    r = Span(i, 128, rows)
    return triton_kernel(name, _grid(("m", i, cdiv(rows, 128)), ("h", h, H)), (Buffer("z", (128, cols), 4, "reg"),), (
        Compute("nsa_fill_zero", ("z",)),
        Store("z", Tile(tensor, (point(0, 1), point(h, H), r, full(cols)))),
    ), warps=4, stages=1, regs=STREAM_REGS)


def small_fill_kernel(p: Problem, name: str, stores: list[tuple[str, tuple, str, tuple]]):
    """Tiny torch fills, one CTA per head: (tensor, spans after the head, op, buffer shape) each."""
    H = p.heads
    h = var("h")
    body, bufs = [], []
    for k, (t, spans, op, shape) in enumerate(stores):
        body += [Compute(op, (f"f{k}",)), Store(f"f{k}", Tile(t, (point(0, 1), point(h, H)) + spans))]
        bufs.append(Buffer(f"f{k}", shape, 4, "reg"))
    return triton_kernel(name, _grid(("h", h, H),), bufs, body, warps=1, stages=1, regs=STREAM_REGS)


def kmeans_kernels(p: Problem, tag: str, pts: str, n_pts: int, cent: str, nk: str, n_c: int, iters: int, d: int):
    """Offline Lloyd iterations over ``pts`` [1, Hkv, n_pts, d] into ``cent`` [1, Hkv, n_c, d] (module docstring):
    init (gather n_c points), then per iteration assign (distances 128 × 128, argmin) and update (members' mean)."""
    Hkv, e = p.kv_heads, p.elem_bytes
    kh, i, t, c = var("h"), var("pid_m"), var("t"), var("pid_n")
    out = []
    init_rows = Span(i, 128, n_c, gather=(_sym(f"sq_{tag}_seed"), kh))
    out.append(triton_kernel(f"sq_kmeans_{tag}_init", _grid(("m", i, cdiv(n_c, 128)), ("h", kh, Hkv)),
                             (Buffer("x", (128, d), e, "reg"),), (
        Load("x", Tile(pts, (point(0, 1), point(kh, Hkv), init_rows, full(d)))),
        Store("x", Tile(cent, (point(0, 1), point(kh, Hkv), Span(i, 128, n_c), full(d)))),
    ), warps=4, stages=1))
    rows = Span(i, 128, n_pts)
    ctile = Span(t, 128, n_c)
    start = lookup(_sym(f"sq_{tag}_mstart"), kh, c)
    cnt = lookup(_sym(f"sq_{tag}_mcount"), kh, c)
    mem = Span(t, 128, cnt, offset=start, gather=(_sym(f"sq_{tag}_members"), kh))
    for it in range(iters):
        out.append(triton_kernel(f"sq_kmeans_{tag}_assign{it}", _grid(("m", i, cdiv(n_pts, 128)), ("h", kh, Hkv)), (
            Buffer("x", (128, d), e), Buffer("c", (128, d), e, pipelined=True), Buffer("best", (128,), 4, "reg"),
            Buffer("arg", (128,), INT64, "reg")), (
            Load("x", Tile(pts, (point(0, 1), point(kh, Hkv), rows, full(d)))),
            Loop(t, 0, cdiv(n_c, 128), (
                Load("c", Tile(cent, (point(0, 1), point(kh, Hkv), ctile, full(d)))),
                Compute("sq_assign", ("x", "c", "best", "arg"), matmul=(Work(2 * d, (rows, ctile)),),
                        other=(Work(3, (rows, ctile)),)),
            )),
            Store("arg", Tile(f"LAB_{tag}_est", (point(0, 1), point(kh, Hkv), rows))),
        ), warps=8, stages=2))
        out.append(triton_kernel(f"sq_kmeans_{tag}_update{it}", _grid(("n", c, n_c), ("h", kh, Hkv)), (
            Buffer("x", (128, d), e, pipelined=True), Buffer("sum", (1, d), 4, "reg"), Buffer("n", (1,), 4, "reg")), (
            Loop(t, 0, cdiv(cnt, 128), (
                Load("x", Tile(pts, (point(0, 1), point(kh, Hkv), mem, full(d)))),
                Compute("sq_accumulate", ("x", "sum", "n"), other=(Work(1, (mem, full(d))),)),
            )),
            Compute("sq_mean", ("sum", "n"), other=(Work(d, ()),)),
            Store("sum", Tile(cent, (point(0, 1), point(kh, Hkv), Span(c, 1, n_c), full(d)))),
            Store("n", Tile(nk, (point(0, 1), point(kh, Hkv), Span(c, 1, n_c), full(1)))),
        ), warps=4, stages=2))
    return out


def _members(lab: np.ndarray, n_c: int) -> dict:
    """Points grouped by cluster: ascending member lists, their starts and counts (the update pass's gathers)."""
    Hkv, n = lab.shape
    order = np.argsort(lab, axis=1, kind="stable")
    cnt = np.stack([np.bincount(np.minimum(lab[h], n_c), minlength=n_c + 1)[:n_c] for h in range(Hkv)]).astype(np.int64)
    start = (np.cumsum(cnt, axis=1) - cnt).astype(np.int64)
    return {"members": order.astype(np.int64), "mstart": start, "mcount": cnt}


# --- the schedule --------------------------------------------------------------------------------------------------

@register("squeezed", "Squeezed Attention: centroid lookup (1 or 2 levels) over a fixed context, compacted key "
          "indices, sparse FA over 2048-key splits of the kept keys + reduce, causal part over the user keys")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed=0, table=None, scores=None, context=None,
          centroids_pct=5.0, levels=1, l1_pct=1.0, observation_window=100, threshold=0.0, offline_iters=0) -> Schedule:
    """Squeezed Attention for seq_q user queries (1 = generation) against a fixed context of ``context`` keys
    (default seq_kv − seq_q) followed by the user keys (module docstring). centroids_pct: fine centroids as % of the
    clustered context (offline_clustering.py's percent_clusters, 5); levels: 1 or 2 (hierarchical; l1_pct: coarse
    centroids as %, assumed 1); observation_window: last context keys always kept (100); threshold: the global
    threshold the reference's mask uses (0: keep all); offline_iters: Lloyd iterations of the offline K-means to price
    (0: centroids given)."""
    method = "squeezed"
    check_head_dim(p, method)
    concrete(p, method)
    if p.batch != 1:
        raise IosimError(f"{method}: batch={p.batch}; Squeezed Attention's kernels take batch 1 (modeling_llama.py "
                         "asserts q.shape[0] == 1); use --batch 1")
    for name, v in (("levels", levels), ("observation_window", observation_window), ("offline_iters", offline_iters)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise IosimError(f"{method}: {name}={v!r} must be a nonnegative integer")
    if levels not in (1, 2):
        raise IosimError(f"{method}: levels={levels}; use 1 (one centroid level) or 2 (hierarchical)")
    check_params(method, centroids_pct=(centroids_pct, 1e-9, 100.0), l1_pct=(l1_pct, 1e-9, 100.0))
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise IosimError(f"{method}: threshold={threshold!r} must be a number")
    n_ctx = p.seq_kv - p.seq_q if context is None else context
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or not 1 <= n_ctx < p.seq_kv:
        raise IosimError(f"{method}: context={n_ctx!r} must be an integer in [1, seq_kv) — the fixed-context keys "
                         f"before the user keys (seq_kv={p.seq_kv}, seq_q={p.seq_q}); give seq_kv > seq_q or --param context=")
    n_ctx = int(n_ctx)
    if p.seq_kv - n_ctx < p.seq_q:
        raise IosimError(f"{method}: the user part has {p.seq_kv - n_ctx} keys for {p.seq_q} queries; it needs at "
                         "least seq_q (the user input's own keys); lower context")
    win = min(int(observation_window), n_ctx)
    c2 = _centroids(n_ctx - win, centroids_pct)
    c1 = _centroids(n_ctx - win, l1_pct) if levels == 2 else None
    if c1 is not None and c1 > c2:
        raise IosimError(f"{method}: l1_pct={l1_pct} gives more coarse ({c1}) than fine ({c2}) centroids; lower l1_pct")
    if p.heads * n_ctx > MAX_KEY_ENTRIES:
        raise IosimError(f"{method}: the per-head key tables would hold {p.heads * n_ctx:,} entries (heads·context), "
                         f"over {MAX_KEY_ENTRIES:,}; use fewer heads or a shorter context")
    sel = select(p, n_ctx, win, c2, c1, density, seed, table, scores)
    kt = key_tables(sel["keep"])
    total = kt.pop("_total_blocks")
    H, Hkv, Nq, d, e = p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    qb = cdiv(Nq, 128)
    T = {
        "Q": TensorSpec("Q", (1, H, Nq, d), e, "input"),
        "K": TensorSpec("K", (1, Hkv, p.seq_kv, d), e, "input"),
        "V": TensorSpec("V", (1, Hkv, p.seq_kv, d), e, "input"),
        "C2": TensorSpec("C2", (1, Hkv, c2, d), e, "scratch" if offline_iters else "input"),
        "NK2": TensorSpec("NK2", (1, Hkv, c2, 1), 4, "scratch" if offline_iters else "input"),
        "LAB": TensorSpec("LAB", (1, Hkv, n_ctx), INT64, "input"),
        "SA": TensorSpec("SA", (1, H, c2 + 1, qb), 4, "scratch"),
        "AVG": TensorSpec("AVG", (1, H, c2 + 1, 1), 4, "scratch"),
        "KS": TensorSpec("KS", (1, H, n_ctx), 4, "scratch"),
        "MASK": TensorSpec("MASK", (1, H, n_ctx), 1, "scratch"),
        "KIDX": TensorSpec("KIDX", (1, H, n_ctx), INT64, "scratch"),
        "NKV": TensorSpec("NKV", (1, H, 1), 4, "scratch"),
        "OT": TensorSpec("OT", (1, max(total, 1), Nq, d), 2, "scratch"),
        "LT": TensorSpec("LT", (max(total, 1), Nq), 4, "scratch"),
        "MT": TensorSpec("MT", (max(total, 1), Nq), 4, "scratch"),
        "MO": TensorSpec("MO", (1, H, Nq), 4, "scratch"),
        "LO": TensorSpec("LO", (1, H, Nq), 4, "scratch"),
        "O": TensorSpec("O", (1, H, Nq, d), 4, "output"),
    }
    tables = dict(kt)
    tables["sq_labels"] = sel["labels"]
    tables["sq_threshold"] = np.array([np.float64(threshold)]).view(np.int64)
    ks = []
    if offline_iters:
        m2 = _members(sel["labels"][:, :n_ctx - win], c2)
        seed2 = np.stack([np.random.default_rng(seed + 1 + h).choice(max(n_ctx - win, 1), size=c2,
                                                                     replace=n_ctx - win < c2) for h in range(Hkv)])
        tables |= {"sq_l2_members": m2["members"], "sq_l2_mstart": m2["mstart"], "sq_l2_mcount": m2["mcount"],
                   "sq_l2_seed": seed2.astype(np.int64)}
        T["LAB_l2_est"] = TensorSpec("LAB_l2_est", (1, Hkv, n_ctx - win), INT64, "scratch")
        ks += kmeans_kernels(p, "l2", "K", n_ctx - win, "C2", "NK2", c2, int(offline_iters), d)
    if levels == 2:
        T |= {"C1": TensorSpec("C1", (1, Hkv, c1, d), e, "scratch" if offline_iters else "input"),
              "NK1": TensorSpec("NK1", (1, Hkv, c1, 1), 4, "scratch" if offline_iters else "input"),
              "PAR": TensorSpec("PAR", (1, Hkv, c2), INT64, "input"),
              "SA1": TensorSpec("SA1", (1, H, c1, qb), 4, "scratch"),
              "AVG1": TensorSpec("AVG1", (1, H, c1, 1), 4, "scratch"),
              "KS1": TensorSpec("KS1", (1, H, c2), 4, "scratch"),
              "MASK1": TensorSpec("MASK1", (1, H, c2), 1, "scratch"),
              "LIST2": TensorSpec("LIST2", (1, H, c2), INT64, "scratch"),
              "NC2": TensorSpec("NC2", (1, H, 1), 4, "scratch")}
        surv = sel["survive"]
        l2t = key_tables(surv)
        tables |= {"sq_parent": sel["parent"], "sq_l2list": l2t["sq_kidx"], "sq_l2len": l2t["sq_kvlen"],
                   "sq_l2_ccnt": l2t["sq_ccnt"], "sq_l2_cstart": l2t["sq_cstart"]}
        if offline_iters:
            m1 = _members(sel["parent"], c1)
            seed1 = np.stack([np.random.default_rng(seed + 101 + h).choice(c2, size=c1, replace=c2 < c1)
                              for h in range(Hkv)])
            tables |= {"sq_l1_members": m1["members"], "sq_l1_mstart": m1["mstart"], "sq_l1_mcount": m1["mcount"],
                       "sq_l1_seed": seed1.astype(np.int64)}
            T["LAB_l1_est"] = TensorSpec("LAB_l1_est", (1, Hkv, c2), INT64, "scratch")
            ks += kmeans_kernels(p, "l1", "C2", c2, "C1", "NK1", c1, int(offline_iters), d)
    ks.append(causal_kernel(p, n_ctx, hw))
    zeros = [("NKV", (full(1),), "nsa_fill_zero", (1,))] + ([("NC2", (full(1),), "nsa_fill_zero", (1,))]
                                                            if levels == 2 else [])
    ks.append(small_fill_kernel(p, "sq_init", zeros))
    if levels == 2:
        ks += [centroid_kernel(p, "sq_centroids_l1", "C1", "NK1", "SA1", c1),
               sum_kernel(p, "sq_score_sum_l1", "SA1", "AVG1", c1),
               gather_kernel(p, "sq_gather_scores_l1", "PAR", "AVG1", "KS1", c2, "sq_parent"),
               threshold_kernel(p, "sq_threshold_l1", "KS1", "MASK1", c2),
               compact_kernel(p, "sq_compact_l1", "MASK1", "LIST2", "NC2", c2, "sq_l2_cstart", "sq_l2_ccnt"),
               fill_kernel(p, "sq_fill_scores", "SA", c2 + 1, qb),
               small_fill_kernel(p, "sq_window_slot", [("SA", (point(c2, c2 + 1), full(qb)), "sq_fill_window", (qb,))]),
               centroid_kernel(p, "sq_centroids", "C2", "NK2", "SA", c2, gather="sq_l2list",
                               length=lookup(_sym("sq_l2len"), var("h")))]
    else:
        ks += [small_fill_kernel(p, "sq_window_slot", [("SA", (point(c2, c2 + 1), full(qb)), "sq_fill_window", (qb,))]),
               centroid_kernel(p, "sq_centroids", "C2", "NK2", "SA", c2)]
    ks += [sum_kernel(p, "sq_score_sum", "SA", "AVG", c2 + 1),
           gather_kernel(p, "sq_gather_scores", "LAB", "AVG", "KS", n_ctx, "sq_labels"),
           threshold_kernel(p, "sq_threshold", "KS", "MASK", n_ctx),
           compact_kernel(p, "sq_compact", "MASK", "KIDX", "NKV", n_ctx, "sq_cstart", "sq_ccnt"),
           sparse_kernel(p, total, hw), reduce_kernel(p, total)]
    kept = int(sel["keep"].sum())
    notes = (f"squeezed: context {n_ctx:,} keys ({win} observation window), user part {p.seq_kv - n_ctx:,} keys, "
             f"{c2:,} centroids" + (f", {c1:,} level-1 centroids" if c1 else "") + f"; selection: {sel['source']}",
             f"kept {kept:,} of {H * n_ctx:,} (head, context key) pairs ({kept / (H * n_ctx):.1%}); {total:,} "
             f"2048-key splits",)
    config = cfg.with_tiles(cfg.block_m or 128, cfg.block_n or 128)
    from dataclasses import replace
    config = replace(config, num_stages=max(2, config.num_stages))
    return Schedule("squeezed", p, config, T, tuple(ks), notes, tables)


# --- reference ops -------------------------------------------------------------------------------------------------

def _threshold(ctx) -> float:
    return float(np.asarray(ctx.tables["sq_threshold"]).view(np.float64)[0])


@register_op("sq_finalize")
def op_sq_finalize(ctx, acc, m, l):
    """acc /= ℓ (rows with no visible key → 0); M and L kept for the reduction."""
    a, lv = acc.value(0.0), l.value(0.0)
    m.value(-np.inf)
    nz = lv > 0
    a[:] = np.where(nz[:, None], a / np.where(nz, lv, 1.0)[:, None], 0.0)


@register_op("sq_cent_pass1")
def op_cent_pass1(ctx, q, c, nk, m, den):
    """Pass 1: running max and the denominator Σ_c n_c·e^{scale·q·c − m}."""
    r, n = q.ext[0], c.ext[0]
    x = (q.data[:r] @ c.data[:n].T) * ctx.scale
    mo = m.value(-np.inf)[:r]
    dv = den.value(0.0)
    mn = np.maximum(mo, x.max(axis=1))
    safe = np.where(np.isfinite(mn), mn, 0.0)
    dv[:r] = dv[:r] * np.exp(mo - safe) + (np.exp(x - safe[:, None]) * nk.data[:n][None, :]).sum(axis=1)
    m.data[:r] = mn


@register_op("sq_cent_pass2")
def op_cent_pass2(ctx, q, c, m, den, sa):
    """Pass 2: each centroid's probability e^{scale·q·c − m}/den summed over the CTA's queries."""
    r, n = q.ext[0], c.ext[0]
    x = (q.data[:r] @ c.data[:n].T) * ctx.scale
    pr = np.exp(x - m.data[:r, None]) / den.data[:r, None]
    sa.data[:n] = pr.sum(axis=0)
    sa.set((c.origin[0],), (n,))


@register_op("sq_score_sum")
def op_score_sum(ctx, x, y):
    """Σ over query blocks / N_q (the observation-window slot holds 1/⌈N_q/128⌉ per block: 1/N_q after the sum)."""
    r = x.ext[0]
    y.data[:r] = x.data[:r, :x.ext[1]].sum(axis=1) / int(ctx.problem.seq_q)
    y.set((x.origin[0],), (r,))


@register_op("sq_fill_window")
def op_fill_window(ctx, b):
    """score_avg[:, :, -1:, :] = 1 / num_query_blocks."""
    b.data.fill(1.0 / b.data.shape[0])
    b.fresh = False


@register_op("sq_gather_copy")
def op_gather_copy(ctx, s, y):
    """avg_per_token = the gathered scores."""
    r = s.ext[0]
    y.data[:r] = s.data[:r, 0]
    y.set((s.origin[0],), (r,))


@register_op("sq_threshold")
def op_threshold(ctx, x, y):
    """mask = score > global threshold."""
    r = x.ext[0]
    y.data[:r] = x.data[:r] > _threshold(ctx)
    y.set(x.origin, (r,))


@register_op("sq_compact")
def op_compact(ctx, m, lst, c):
    """The block's kept positions (global indices, ascending) and their count (atomically added)."""
    r = m.ext[0]
    kept = np.flatnonzero(m.data[:r] > 0) + m.origin[0]
    lst.data[:kept.size] = kept
    lst.set((-(1 << 40),), (kept.size,))
    c.data[0] = kept.size
    c.fresh = False


@register_op("sq_reduce_step")
def op_reduce_step(ctx, ot, mt, lt, acc, m, l):
    """_reduce_kernel_qk's merge of a split's normalised partial (ot, mt, lt) into (acc, m, l), natural log."""
    r = ot.ext[0]
    a, mp, lp = acc.data[:r], m.data[:r], l.data[:r]
    mc, lc = mt.data[:r], lt.data[:r]
    mn = np.maximum(mp, mc)
    safe = np.where(np.isfinite(mn), mn, 0.0)
    s1 = np.where(np.isfinite(mp), np.exp(mp - safe), 0.0) * lp
    s2 = np.where(np.isfinite(mc), np.exp(mc - safe), 0.0) * lc
    tot = s1 + s2
    acc.data[:r] = np.where((tot > 0)[:, None], (a * s1[:, None] + ot.data[:r] * s2[:, None]) /
                            np.where(tot > 0, tot, 1.0)[:, None], 0.0)
    l.data[:r] = tot
    m.data[:r] = mn


@register_op("sq_assign")
def op_assign(ctx, x, c, best, arg):
    """Nearest centroid so far (squared distance ‖x‖² − 2x·c + ‖c‖²) over this centroid tile."""
    r, n = x.ext[0], c.ext[0]
    dist = (x.data[:r] ** 2).sum(1)[:, None] - 2 * x.data[:r] @ c.data[:n].T + (c.data[:n] ** 2).sum(1)[None, :]
    b = best.value(np.inf)[:r]
    a = arg.value(0.0)
    j = dist.argmin(axis=1)
    v = dist[np.arange(r), j]
    better = v < b
    best.data[:r] = np.where(better, v, b)
    a[:r] = np.where(better, j + c.origin[0], a[:r])
    arg.set((x.origin[0],), (r,))


@register_op("sq_accumulate")
def op_accumulate(ctx, x, s, n):
    """Running sum and count of a cluster's members."""
    r = x.ext[0]
    s.value(0.0)[0] += x.data[:r].sum(axis=0)
    n.value(0.0)[0] += r


@register_op("sq_mean")
def op_mean(ctx, s, n):
    """Centroid = sum / count (0 for an empty cluster); n holds the count (the key counts n_c)."""
    cnt = n.value(0.0)[0]
    s.value(0.0)[0] = s.data[0] / cnt if cnt else 0.0
    s.set((-(1 << 40), 0), s.data.shape)
    n.set((-(1 << 40),), n.data.shape)
