"""HyperAttention: sortLSH block-diagonal attention plus uniformly sampled columns, merged by logsumexp (Han et al.,
arXiv 2310.05869; insuhan/hyper-attn @68b91e9, ``models/attention/hyper_attn.py``, ``angular_lsh.py``, ``utils.py``).

HyperAttention is *approximate*. Non-causal, for n_q ≥ min_seq_len (``forward_no_causal_mask``), the launches are:

1. ``hash_q`` / ``hash_k`` — angular LSH: r = 7 random projections, sign bits → a Gray-code bucket (int64 codes);
2. ``sort_q`` / ``sort_k`` / ``sort_qinv`` — torch.sort of the codes (stable) and the argsort that undoes the query
   order: modelled as a radix sort of (int64 key, int64 index) pairs, ``sort_passes`` passes over the pairs (assumed
   8: cub's onesweep radix sort takes 8 bits a pass of 64-bit keys);
3. ``gather_q`` / ``gather_k`` / ``gather_v`` — Q, K, V copied into sorted order (``indexing``): ``gather_kernel``;
4. ``blockdiag`` — exact attention of query block i with key block i of b = block_size sorted keys (n_q/⌈n_k/b⌉
   queries a block), reading the sorted copies with ``positions=`` spans (the permutations), O and LSE in sorted
   order;
5. if n_k > b: ``sample`` gathers m = sample_size sorted rows of K and V (``torch.randint``, with replacement),
   ``bias`` writes the n_q × m bias (the Triton path's own-block mask: a sample in the query's own block gets −∞,
   every other log(n_k/m) — the repo adds that shift to the LSE afterwards, which is the same), ``sampled`` attends
   every sorted query to the samples, and ``merge`` combines the two results by LSE (``add_self_attentions``);
6. ``unsort`` — O and LSE gathered back to the original row order (the inverse permutation; the unpermute).

Causal (``forward(causal=True)``): n ≤ min_seq_len is exact causal attention; otherwise the two diagonal halves
recurse (as 2·heads), the bottom-left quadrant (second-half queries × first-half keys) runs the non-causal path above
(exact if its n_q < min_seq_len) and is merged into the bottom half's result. The schedule unrolls the recursion:
one ``exact`` kernel over every base diagonal block writes O and LSE, then each level's quadrants (deepest first)
are computed and merged into O/LSE by an ``unsort`` (or ``merge_rows``) kernel.

IO per (b, h) of one non-causal call (elements, derived; seed-algorithms-io.md §10): hash reads 2·N·d, the gathers
read and write 3·N·d each way, the block-diagonal kernel ≈ 4·N·d, the sampled one ≈ 2·N·d + the bias, the merge
≈ 3·N·d, the unsort ≈ 2·N·d: ≈ 18·N·d plus the sorts; FLOPs ≈ 4·N·(b + m)·d. Causal: every level adds a quadrant
over N/2 rows.

Choices taken here:
* Odd lengths are split at ⌈n/2⌉ (the repo pads one zero row, which the causal mask hides: the same work ±1 row);
  ragged sorted copies are not padded to a multiple of b (the repo pads with zero rows, and those zero keys enter the
  last block's softmax unmasked — not reproduced).
* Keys are hashed, sorted and gathered once per KV head (the projections are shared by all heads, so the heads of a
  group would sort identically); queries per query head.
* The m sampled positions (in sorted order) are drawn once per quadrant and shared by all heads and batches (the
  repo draws them per head); the IO is the same, every head still gathers its own m rows.
* Eager-PyTorch traffic left out: the bias's bool → dtype → scale passes (one fused write of n_q·m·e is charged),
  ``add_self_attentions``' separate elementwise passes (one fused merge is charged), the ``torch.cat`` copies of each
  level's halves, and padding copies. The bias kernel is charged a 4-byte row read (the block-diagonal LSE) for the
  row index the repo reads as an int64 ``arange``.
* The sort is priced by its traffic; its NumPy op passes the tile through (the schedule's gathers use the host's
  seeded LSH permutation, so the reference output equals naive attention exactly when the permutation cannot
  matter: one block per quadrant and no sampling — the "full" settings block_size ≥ N).
* ``density``, ``table`` and ``scores`` do not apply (block_size and sample_size set the work); ``seed`` seeds the
  LSH codes and the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from iosim.errors import IosimError
from iosim.models._common import check_fit, check_head_dim, kv_head
from iosim.models import flash2
from iosim.models.sparse import common as sc
from iosim.models.sparse.selection import check_int, concrete
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.reference import online_update, register_op
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, full, lookup, point, var)
from iosim.schedule import table as tbl

CODE_BYTES = 8  # int64 LSH codes and sort indices (angular_lsh.py returns perm[bin_ids], an int64 tensor)
BIG_NEG = -1e30  # the own-block bias (hyper_attn.py adds torch.finfo(dtype).min)
ROWS = 128  # rows a CTA of the hash / merge / unsort passes handles
SORT_ROWS = 1024  # elements a CTA of a sort pass handles
MAX_BASE_BLOCKS = 1 << 16


# --- reference ops --------------------------------------------------------------------------------------------------

def _level(buf) -> str:
    return buf.name.rsplit("_", 1)[1]


@register_op("hyper_hash")
def op_hyper_hash(ctx, x, code):
    """code = Gray-code bucket of the sign bits of x·P (AngularLSH.hash; P seeded by tables['hyper_seed'])."""
    r = x.ext[0]
    nproj = int(ctx.tables["hyper_nproj"][0])
    proj = np.random.default_rng(int(ctx.tables["hyper_seed"][0])).standard_normal((x.data.shape[1], nproj))
    bits = (x.data[:r] @ proj) > 0
    gray = _gray(nproj)
    code.value(0.0)[:r] = gray[(bits * (1 << np.arange(nproj))).sum(-1)]
    code.set((x.origin[0],), (r,))


def _gray(n: int) -> np.ndarray:
    """AngularLSH._unit_hamming_distance_array: bucket order in which neighbours differ by one bit."""
    a = np.array([0, 1])
    for k in range(1, n):
        a = np.concatenate([a, a[::-1] + (1 << k)])
    return a


@register_op("hyper_sort_init")
def op_hyper_sort_init(ctx, code, kv):
    """(key, index) pairs of a tile of codes (the sort's first pass)."""
    r = code.ext[0]
    kv.data[:r, 0] = code.data[:r]
    kv.data[:r, 1] = code.origin[0] + np.arange(r)
    kv.set((code.origin[0], 0), (r, 2))


@register_op("hyper_sort_pass")
def op_hyper_sort_pass(ctx, kv):
    """One radix pass (traffic only; the schedule's gathers use the host permutation)."""


@register_op("hyper_sort_out")
def op_hyper_sort_out(ctx, kv, idx):
    r = kv.ext[0]
    idx.data[:r] = kv.data[:r, 1]
    idx.set((kv.origin[0],), (r,))


@register_op("hyper_bias")
def op_hyper_bias(ctx, rowc, bias):
    """bias[r, c] = −∞ (−1e30) where sample c of the row's quadrant lies in the row's own block, else log(n_k/m)."""
    lv = _level(bias)
    r0, r = rowc.origin[0], rowc.ext[0]
    t = ctx.tables
    qblk, qjob = t[f"hyper_{lv}_qblk"][r0:r0 + r], t[f"hyper_{lv}_qjob"][r0:r0 + r]
    j = int(qjob[0])
    s0, m, nk = (int(t[f"hyper_{lv}_jsoff"][j]), int(t[f"hyper_{lv}_jm"][j]), int(t[f"hyper_{lv}_jnk"][j]))
    sblk = t[f"hyper_{lv}_sblk"][s0:s0 + m]
    bias.value(0.0)[:r, :m] = np.where(qblk[:, None] == sblk[None, :], BIG_NEG, math.log(nk / m))
    bias.set((r0, 0), (r, m))


@register_op("hyper_qk_bias")
def op_hyper_qk_bias(ctx, q, k, bias, s):
    """S = scale·Q Kᵀ + bias (the sampled columns' attention, utils.py exact_attention(bias=…))."""
    r, c = q.ext[0], k.ext[0]
    s.data[:r, :c] = (q.data[:r] @ k.data[:c].T) * ctx.scale + bias.data[:r, :c]
    s.set((q.origin[0], k.origin[0]), (r, c))
    s.pos = None


@register_op("hyper_softmax_nomask")
def op_hyper_softmax_nomask(ctx, s, m, l, acc):
    """FA2's online softmax without a positional mask (the sampled columns precede every query, or the problem is
    not causal; the own-block exclusion is in the bias)."""
    r, c = s.ext
    online_update(s.data[:r, :c], s, m, l, acc)


@register_op("hyper_merge")
def op_hyper_merge(ctx, a1, l1, a2, l2):
    """(a1, l1) ← the LSE-weighted combination of two partial attentions (add_self_attentions)."""
    r = a1.ext[0]
    x, y = l1.data[:r].reshape(r), l2.data[:r].reshape(r)
    L = np.logaddexp(x, y)
    c1, c2 = np.exp(x - L), np.exp(y - L)
    a1.data[:r] = c1[:, None] * a1.data[:r] + c2[:, None] * a2.data[:r]
    l1.data[:r] = L.reshape(l1.data[:r].shape)


@register_op("hyper_col")
def op_hyper_col(ctx, src, dst):
    """dst = src as a row vector or a column ([n] ↔ [n, 1]: the sorted-order LSE scratch is a column so that its
    rows can be gathered)."""
    r = src.ext[0]
    dst.data[:r] = src.data[:r].reshape(dst.data[:r].shape)
    dst.set((src.origin[0],) + (0,) * (dst.data.ndim - 1), (r,) + dst.data.shape[1:])


# --- the plan: which quadrants run at which level -------------------------------------------------------------------

@dataclass
class _Level:
    lvl: int
    hyper: list = field(default_factory=list)  # (q_start, n_q, k_start, n_k)
    exact: list = field(default_factory=list)


def plan(N: int, causal: bool, min_len: int):
    """(levels, base blocks, top): base blocks are exact causal diagonal blocks; top = 'exact' or 'hyper' for a
    non-causal problem."""
    levels: dict[int, _Level] = {}
    if not causal:
        if N < min_len:
            return levels, [], "exact"
        levels[0] = _Level(0, [(0, N, 0, N)])
        return levels, [], "hyper"
    base = []
    stack = [(0, N, 0)]
    while stack:
        s, n, lv = stack.pop()
        if n <= min_len:
            base.append((s, n))
            if len(base) > MAX_BASE_BLOCKS:
                raise IosimError(f"hyperattention: min_seq_len={min_len} splits N={N} into more than "
                                 f"{MAX_BASE_BLOCKS} diagonal blocks; use a larger min_seq_len")
            continue
        h = (n + 1) // 2
        stack += [(s, h, lv + 1), (s + h, n - h, lv + 1)]
        L = levels.setdefault(lv, _Level(lv))
        (L.hyper if n - h >= min_len else L.exact).append((s + h, n - h, s, h))
    base.sort()
    return levels, base, "causal"


def _tiles(start: int, n: int, R: int):
    return [(start + t * R, min(R, n - t * R)) for t in range(-(-n // R))]


def _kv_tables(tag: str, items: list) -> dict:
    """items: [(q_off, q_len, [(k_off, k_len), …], ncol)] → the list kernel's tables."""
    W = len(items)
    T = max(1, max(len(it[2]) for it in items))
    qo = np.array([it[0] for it in items], dtype=np.int64)
    ql = np.array([it[1] for it in items], dtype=np.int64)
    nk = np.array([len(it[2]) for it in items], dtype=np.int64)
    ko, kl = np.zeros((W, T), np.int64), np.zeros((W, T), np.int64)
    for w, it in enumerate(items):
        for t, (o, ln) in enumerate(it[2]):
            ko[w, t], kl[w, t] = o, ln
    out = {f"{tag}_qoff": qo, f"{tag}_qlen": ql, f"{tag}_nkt": nk, f"{tag}_koff": ko, f"{tag}_klen": kl}
    if items and items[0][3] is not None:
        out[f"{tag}_ncol"] = np.array([it[3] for it in items], dtype=np.int64)
    return out


# --- kernels --------------------------------------------------------------------------------------------------------

def _list_kernel(p: Problem, cfg: KernelConfig, hw, name: str, tag: str, W: int, *, q: str, k: str, v: str, o: str,
                 lse: str, k_per_kv: bool = True, q_pos: str | None = None, k_pos: str | None = None,
                 masked: bool = False, bias: str | None = None, out_tag: str | None = None,
                 lse_col: bool = False) -> Kernel:
    """FA2 over work items w: query rows [qoff[w], +qlen[w]) of ``q``, KV tiles [koff[w, t], +klen[w, t]) of ``k``/``v``
    (t < nkt[w]); O and LSE stored at the query rows. ``bias``: a [B, H, rows, m] tensor added to the scores (columns
    t·block_n of the item's ncol[w]), with the unmasked online softmax. Per item: reads Q rows·d once, K + V
    2·d·Σ klen; FLOPs as flash2 per (row, key)."""
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    B, H, Hk = p.batch, p.heads, p.kv_heads
    w, b, h, t = var("w"), var("b"), var("h"), var("t")
    L = lambda nm, *ix: lookup(tbl(f"{tag}_{nm}"), *ix)  # noqa: E731
    qrows = Span(0, bm, L("qlen", w), offset=L("qoff", w), positions=(tbl(q_pos), b, h) if q_pos else None)
    ot = out_tag or tag
    orows = Span(0, bm, lookup(tbl(f"{ot}_qlen"), w), offset=lookup(tbl(f"{ot}_qoff"), w))
    brows = Span(0, bm, L("qlen", w), offset=L("qoff", w))
    kh, KH = (kv_head(p, h), Hk) if k_per_kv else (h, H)
    cols = Span(0, bn, L("klen", w, t), offset=L("koff", w, t), positions=(tbl(k_pos), b, kh) if k_pos else None)
    kvt = lambda nm: Tile(nm, (point(b, B), point(kh, KH), cols, full(d)))  # noqa: E731
    other = 4 + (flash2.MASK_FLOPS if masked else 0) + (1 if bias else 0)
    step = [Load("k", kvt(k))]
    if bias:
        step += [Load("bias", Tile(bias, (point(b, B), point(h, H), brows, Span(t, bn, L("ncol", w))))),
                 Compute("hyper_qk_bias", ("q", "k", "bias", "s"), matmul=(Work(2 * d, (qrows, cols)),))]
    else:
        step.append(Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (qrows, cols)),)))
    step += [Compute("hyper_softmax_nomask" if bias else "online_softmax", ("s", "m", "l", "acc"),
                     exp=(Work(1, (qrows, cols)), Work(1, (qrows,))), other=(Work(other, (qrows, cols)),
                                                                             Work(d + 4, (qrows,)))),
             Load("v", kvt(v)), Compute("pv", ("s", "v", "acc"), matmul=(Work(2 * d, (qrows, cols)),))]
    body = (Load("q", Tile(q, (point(b, B), point(h, H), qrows, full(d)))),
            Loop(t, 0, L("nkt", w), tuple(step)),
            flash2.finalize(p, qrows),
            Store("acc", Tile(o, (point(b, B), point(h, H), orows, full(d)))))
    if lse_col:  # a [B, H, n, 1] column (its rows are gathered later)
        body += (Compute("hyper_col", ("lse", "lsec")), Store("lsec", Tile(lse, (point(b, B), point(h, H), orows, full(1)))))
    else:
        body += (Store("lse", Tile(lse, (point(b, B), point(h, H), orows))),)
    bufs = flash2.buffers(bm, bn, d, e) + ((Buffer("bias", (bm, bn), e, pipelined=True),) if bias else ()) + \
        ((Buffer("lsec", (bm, 1), STAT_BYTES, "reg"),) if lse_col else ())
    kern = Kernel(name, (GridAxis("m", w, W), GridAxis("b", b, B), GridAxis("h", h, H)), bufs, body,
                  threads_per_cta=32 * cfg.num_warps)
    check_fit(kern, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}, num_stages={cfg.num_stages}")
    return kern


def _grid(W: int, B: int, H: int):
    w, b, h = var("w"), var("b"), var("h")
    return (GridAxis("m", w, W), GridAxis("b", b, B), GridAxis("h", h, H)), (w, b, h)


def _hash_kernel(p: Problem, name: str, tag: str, W: int, src: str, heads: int, dst: str, nproj: int) -> Kernel:
    """codes[b, h, coff[w] + x] = LSH(src[b, h, off[w] + x]) for x < len[w]: reads rows·d·e, writes rows·8;
    matmul 2·d·r per row (the projection), other 2·r (sign, encode)."""
    d = p.head_dim
    grid, (w, b, h) = _grid(W, p.batch, heads)
    L = lambda nm: lookup(tbl(f"{tag}_{nm}"), w)  # noqa: E731
    rows = Span(0, ROWS, L("len"), offset=L("off"))
    out = Span(0, ROWS, L("len"), offset=L("coff"))
    body = (Load("x", Tile(src, (point(b, p.batch), point(h, heads), rows, full(d)))),
            Compute("hyper_hash", ("x", "code"), matmul=(Work(2 * d * nproj, (rows,)),), other=(Work(2 * nproj, (rows,)),)),
            Store("code", Tile(dst, (point(b, p.batch), point(h, heads), out))))
    return Kernel(name, grid, (Buffer("x", (ROWS, d), p.elem_bytes), Buffer("code", (ROWS,), CODE_BYTES, "reg")), body)


def _sort_kernel(p: Problem, name: str, n: int, heads: int, codes: str, scratch: str, idx: str, passes: int) -> Kernel:
    """A radix sort of n (int64 key, int64 index) pairs per (b, h), tile by tile: reads the codes (8 B), ``passes``
    passes writing and reading the pairs back (32 B an element a pass), writes the indices (8 B)."""
    grid, (w, b, h) = _grid(-(-n // SORT_ROWS), p.batch, heads)
    x = var("x")
    rows = Span(w, SORT_ROWS, n)
    hd = (point(b, p.batch), point(h, heads))
    body = (Load("code", Tile(codes, hd + (rows,))),
            Compute("hyper_sort_init", ("code", "kv"), other=(Work(1, (rows,)),)),
            Loop(x, 0, passes, (Store("kv", Tile(scratch, hd + (rows, full(2)))),
                                Load("kv", Tile(scratch, hd + (rows, full(2)))),
                                Compute("hyper_sort_pass", ("kv",), other=(Work(4, (rows,)),)))),
            Compute("hyper_sort_out", ("kv", "idx")),
            Store("idx", Tile(idx, hd + (rows,))))
    return Kernel(name, grid, (Buffer("code", (SORT_ROWS,), CODE_BYTES, "reg"), Buffer("kv", (SORT_ROWS, 2), CODE_BYTES),
                               Buffer("idx", (SORT_ROWS,), CODE_BYTES, "reg")), body)


def _rows_kernel(p: Problem, name: str, tag: str, W: int, *, loads: list, stores: list, op: str | None) -> Kernel:
    """A row pass over work items (rows [off, +len) of each item, per (b, h)): loads [(buffer, tensor, which, kind)],
    the op (``hyper_merge`` of (a1, l1…, a2, l2…), or ``hyper_col`` copying the column l1c into l1), stores
    [(buffer, tensor, which, kind)]; which = 'off' / 'coff' (contiguous at tables[tag_off] / [tag_coff]) or
    ('gather', table) (rows tables[table][b, h, off + x], each its own run); kind = 'mat' ([…, d]), 'col' ([…, 1]),
    'vec' (a [B, H, n] row vector)."""
    d = p.head_dim
    grid, (w, b, h) = _grid(W, p.batch, p.heads)
    L = lambda nm: lookup(tbl(f"{tag}_{nm}"), w)  # noqa: E731

    def span(which):
        if isinstance(which, tuple):
            return Span(0, ROWS, L("len"), offset=L("off"), gather=(tbl(which[1]), b, h))
        return Span(0, ROWS, L("len"), offset=L(which))

    def tile(tensor, which, kind):
        tail = {"mat": (full(d),), "col": (full(1),), "vec": ()}[kind]
        return Tile(tensor, (point(b, p.batch), point(h, p.heads), span(which)) + tail)

    body = [Load(bf, tile(tn, wh, kd)) for bf, tn, wh, kd in loads]
    rows = span("off")
    if op == "hyper_merge":
        ls = [bf for bf, *_ in loads if bf.startswith("l")]
        body.append(Compute(op, ("a1", ls[0], "a2", ls[1]), exp=(Work(3, (rows,)),), other=(Work(3 * d + 4, (rows,)),)))
    elif op == "hyper_col":
        body.append(Compute(op, ("l1c", "l1")))
    body += [Store(bf, tile(tn, wh, kd)) for bf, tn, wh, kd in stores]
    bufs = (Buffer("a1", (ROWS, d), 4, "reg"), Buffer("a2", (ROWS, d), 4, "reg"),
            Buffer("l1", (ROWS,), STAT_BYTES, "reg"), Buffer("l2", (ROWS,), STAT_BYTES, "reg"),
            Buffer("l1c", (ROWS, 1), STAT_BYTES, "reg"), Buffer("l2c", (ROWS, 1), STAT_BYTES, "reg"))
    return Kernel(name, grid, bufs, tuple(body))


# --- the schedule ---------------------------------------------------------------------------------------------------

def _codes_perm(rng, n: int, nproj: int) -> np.ndarray:
    """The stable sort of seeded LSH codes (uniform over the 2^r buckets): a permutation of range(n)."""
    return np.argsort(rng.integers(0, 1 << nproj, n), kind="stable")


@register("hyperattention", "HyperAttention: LSH sort of Q and K, gathered block-diagonal FA + m sampled columns merged by LSE, unsort; causal by recursion (2310.05869)")
def build(p: Problem, cfg: KernelConfig, hw=None, *, density=None, seed: int = 0, table=None, scores=None,
          lsh_num_projs: int = 7, block_size: int = 256, sample_size: int = 256, min_seq_len: int = 4096,
          sort_passes: int = 8) -> Schedule:
    """HyperAttention(lsh_num_projs=7, block_size=256, sample_size=256, min_seq_len=4096) (hyper_attn.py defaults,
    benchmark_single_attention.py); sort_passes: radix passes of each sort (assumed 8). Tiles: cfg's or FA2's."""
    m_ = "hyperattention"
    check_head_dim(p, m_)
    concrete(p, m_)
    for n_, v_ in (("density", density), ("table", table), ("scores", scores)):
        if v_ is not None:
            raise IosimError(f"{m_}: {n_} does not apply (block_size and sample_size set its work); drop it")
    check_int(m_, lsh_num_projs=lsh_num_projs, block_size=block_size, min_seq_len=min_seq_len, sort_passes=sort_passes)
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 0:
        raise IosimError(f"{m_}: sample_size={sample_size!r} must be a whole number ≥ 0")
    sc.check_params(m_, seed=(seed, 0, None), lsh_num_projs=(lsh_num_projs, 1, 30))
    if p.seq_q != p.seq_kv:
        raise IosimError(f"{m_}: models self-attention (seq_q = seq_kv, as its benchmarks); got {p.seq_q}, {p.seq_kv}")
    dm, dn = flash2.default_tiles(p.head_dim)
    cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    bm, bn = cfg.block_m, cfg.block_n
    B, H, Hk, N, d, e = p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim, p.elem_bytes
    rng = np.random.default_rng(seed)
    levels, base, top = plan(N, p.causal, min_seq_len)
    tensors = sc.attention_tensors(p)
    tabs: dict = {"hyper_seed": np.array([seed]), "hyper_nproj": np.array([lsh_num_projs])}
    ks: list[Kernel] = []
    kv_t = lambda s, n: _tiles(s, n, bn)  # noqa: E731
    # exact diagonal blocks (causal) or the whole problem (non-causal, N < min_seq_len): O and LSE written first
    if top != "hyper":
        blocks = base if p.causal else [(0, N)]
        items = []
        for s, n in blocks:
            for qo, ql in _tiles(s, n, bm):
                hi = min(qo + ql, s + n) if p.causal else s + n
                items.append((qo, ql, kv_t(s, hi - s), None))
        tabs |= _kv_tables("hyper_exact", items)
        ks.append(_list_kernel(p, cfg, hw, "hyper_exact", "hyper_exact", len(items), q="Q", k="K", v="V", o="O",
                               lse="LSE", masked=p.causal))
    n_hyper = 0
    for lv in sorted(levels, reverse=True):
        L = levels[lv]
        tg = f"hyper_L{lv}"
        if L.exact:  # quadrants below min_seq_len: exact (Q, K, V read in place), merged into O
            items_q, items_o, rows, co = [], [], [], 0
            for qs, nq, ks_, nk in L.exact:
                for t0, ln in _tiles(0, nq, bm):
                    items_q.append((qs + t0, ln, kv_t(ks_, nk), None))
                    items_o.append((co + t0, ln, [], None))
                rows += [(qs + t0, ln, co + t0) for t0, ln in _tiles(0, nq, ROWS)]
                co += nq
            tensors |= {f"HXO_L{lv}": TensorSpec(f"HXO_L{lv}", (B, H, co, d), e, "scratch"),
                        f"HXL_L{lv}": TensorSpec(f"HXL_L{lv}", (B, H, co), STAT_BYTES, "scratch")}
            tabs |= _kv_tables(f"{tg}_xq", items_q)
            tabs |= {f"{tg}_xo_qoff": np.array([i[0] for i in items_o], np.int64),
                     f"{tg}_xo_qlen": np.array([i[1] for i in items_o], np.int64)}
            ks.append(_list_kernel(p, cfg, hw, f"{tg}_exact", f"{tg}_xq", len(items_q), q="Q", k="K", v="V",
                                   o=f"HXO_L{lv}", lse=f"HXL_L{lv}", out_tag=f"{tg}_xo"))
            tabs |= {f"{tg}_xm_off": np.array([r[0] for r in rows], np.int64),
                     f"{tg}_xm_len": np.array([r[1] for r in rows], np.int64),
                     f"{tg}_xm_coff": np.array([r[2] for r in rows], np.int64)}
            ks.append(_rows_kernel(p, f"{tg}_merge_exact", f"{tg}_xm", len(rows),
                                   loads=[("a1", "O", "off", "mat"), ("l1", "LSE", "off", "vec"),
                                          ("a2", f"HXO_L{lv}", "coff", "mat"), ("l2", f"HXL_L{lv}", "coff", "vec")],
                                   stores=[("a1", "O", "off", "mat"), ("l1", "LSE", "off", "vec")], op="hyper_merge"))
        if not L.hyper:
            continue
        n_hyper += 1
        jobs = L.hyper
        nq_t, nk_t = sum(j[1] for j in jobs), sum(j[3] for j in jobs)
        qc = np.cumsum([0] + [j[1] for j in jobs])
        kc = np.cumsum([0] + [j[3] for j in jobs])
        qperm = np.zeros((B, H, nq_t), np.int64)
        kperm = np.zeros((B, Hk, nk_t), np.int64)
        qinv = np.zeros((B, H, N), np.int64)
        for bb in range(B):
            for jj, (qs, nq, ks_, nk) in enumerate(jobs):
                for hh in range(H):
                    qperm[bb, hh, qc[jj]:qc[jj + 1]] = qs + _codes_perm(rng, nq, lsh_num_projs)
                for hh in range(Hk):
                    kperm[bb, hh, kc[jj]:kc[jj + 1]] = ks_ + _codes_perm(rng, nk, lsh_num_projs)
            for hh in range(H):
                qinv[bb, hh, qperm[bb, hh]] = np.arange(nq_t)
        # blocks: job j has nb = ⌈n_k/b⌉ key blocks and ⌈n_q/nb⌉ queries a block
        bd, qblk, qjob, sblk, samp, sm_items, bias_rows, merge_rows, jsoff, jm, jnk = [], [], [], [], [], [], [], [], [], [], []
        blk0, so = 0, 0
        for jj, (qs, nq, ks_, nk) in enumerate(jobs):
            nb = -(-nk // block_size)
            qb = -(-nq // nb)
            for i in range(nb):
                q0, q1 = i * qb, min((i + 1) * qb, nq)
                if q1 <= q0:
                    continue
                kv = kv_t(kc[jj] + i * block_size, min(block_size, nk - i * block_size))
                bd += [(qo, ql, kv, None) for qo, ql in _tiles(qc[jj] + q0, q1 - q0, bm)]
            qblk.append(blk0 + np.arange(nq) // qb)
            qjob.append(np.full(nq, jj))
            sampling = sample_size > 0 and nq > qb and nk > block_size
            mj = sample_size if sampling else 0
            jsoff.append(so)
            jm.append(mj)
            jnk.append(nk)
            if sampling:
                s_idx = rng.integers(0, nk, mj)
                samp.append(kc[jj] + s_idx)
                sblk.append(blk0 + s_idx // block_size)
                sm_items += [(qo, ql, kv_t(so, mj), mj) for qo, ql in _tiles(qc[jj], nq, bm)]
                bias_rows += _tiles(qc[jj], nq, ROWS)
                so += mj
            merge_rows += [(qs + (t0 - qc[jj]), ln, t0, sampling) for t0, ln in _tiles(qc[jj], nq, ROWS)]
            blk0 += nb
        ms = so
        tabs |= {f"{tg}_qperm": qperm, f"{tg}_kperm": kperm, f"{tg}_qinv": qinv,
                 f"{tg}_qblk": np.concatenate(qblk), f"{tg}_qjob": np.concatenate(qjob),
                 f"{tg}_jsoff": np.array(jsoff, np.int64), f"{tg}_jm": np.array(jm, np.int64),
                 f"{tg}_jnk": np.array(jnk, np.int64)}
        T = {f"HCQ_L{lv}": TensorSpec(f"HCQ_L{lv}", (B, H, nq_t), CODE_BYTES, "scratch"),
             f"HCK_L{lv}": TensorSpec(f"HCK_L{lv}", (B, Hk, nk_t), CODE_BYTES, "scratch"),
             f"HSQ_L{lv}": TensorSpec(f"HSQ_L{lv}", (B, H, nq_t, 2), CODE_BYTES, "scratch"),
             f"HSK_L{lv}": TensorSpec(f"HSK_L{lv}", (B, Hk, nk_t, 2), CODE_BYTES, "scratch"),
             f"HIQ_L{lv}": TensorSpec(f"HIQ_L{lv}", (B, H, nq_t), CODE_BYTES, "scratch"),
             f"HIK_L{lv}": TensorSpec(f"HIK_L{lv}", (B, Hk, nk_t), CODE_BYTES, "scratch"),
             f"HII_L{lv}": TensorSpec(f"HII_L{lv}", (B, H, nq_t), CODE_BYTES, "scratch"),
             f"QS_L{lv}": TensorSpec(f"QS_L{lv}", (B, H, nq_t, d), e, "scratch"),
             f"KS_L{lv}": TensorSpec(f"KS_L{lv}", (B, Hk, nk_t, d), e, "scratch"),
             f"VS_L{lv}": TensorSpec(f"VS_L{lv}", (B, Hk, nk_t, d), e, "scratch"),
             f"OB_L{lv}": TensorSpec(f"OB_L{lv}", (B, H, nq_t, d), e, "scratch"),
             f"LB_L{lv}": TensorSpec(f"LB_L{lv}", (B, H, nq_t, 1), STAT_BYTES, "scratch")}
        # 1. hashes of the quadrants' query rows (per query head) and key rows (per KV head)
        for side, heads, src, rng_, cc in (("q", H, "Q", [(j[0], j[1]) for j in jobs], qc),
                                           ("k", Hk, "K", [(j[2], j[3]) for j in jobs], kc)):
            its = [(o, ln, c0 + (o - s)) for (s, n), c0 in zip(rng_, cc) for o, ln in _tiles(s, n, ROWS)]
            tabs |= {f"{tg}_h{side}_off": np.array([i[0] for i in its], np.int64),
                     f"{tg}_h{side}_len": np.array([i[1] for i in its], np.int64),
                     f"{tg}_h{side}_coff": np.array([i[2] for i in its], np.int64)}
            ks.append(_hash_kernel(p, f"{tg}_hash_{side}", f"{tg}_h{side}", len(its), src, heads,
                                   f"HC{side.upper()}_L{lv}", lsh_num_projs))
        # 2. sorts (and the inverse permutation of the queries)
        ks.append(_sort_kernel(p, f"{tg}_sort_q", nq_t, H, f"HCQ_L{lv}", f"HSQ_L{lv}", f"HIQ_L{lv}", sort_passes))
        ks.append(_sort_kernel(p, f"{tg}_sort_k", nk_t, Hk, f"HCK_L{lv}", f"HSK_L{lv}", f"HIK_L{lv}", sort_passes))
        ks.append(_sort_kernel(p, f"{tg}_sort_qinv", nq_t, H, f"HIQ_L{lv}", f"HSQ_L{lv}", f"HII_L{lv}", sort_passes))
        # 3. gathers into sorted order
        base_t = sc.attention_tensors(p)
        ks += [sc.gather_kernel(f"{tg}_gather_q", base_t["Q"], T[f"QS_L{lv}"], f"{tg}_qperm"),
               sc.gather_kernel(f"{tg}_gather_k", base_t["K"], T[f"KS_L{lv}"], f"{tg}_kperm"),
               sc.gather_kernel(f"{tg}_gather_v", base_t["V"], T[f"VS_L{lv}"], f"{tg}_kperm")]
        # 4. block-diagonal attention over the sorted copies (positions: the permutations)
        tabs |= _kv_tables(f"{tg}_bd", bd)
        ks.append(_list_kernel(p, cfg, hw, f"{tg}_blockdiag", f"{tg}_bd", len(bd), q=f"QS_L{lv}", k=f"KS_L{lv}",
                               v=f"VS_L{lv}", o=f"OB_L{lv}", lse=f"LB_L{lv}", lse_col=True, q_pos=f"{tg}_qperm",
                               k_pos=f"{tg}_kperm"))
        src_o, src_l = f"OB_L{lv}", f"LB_L{lv}"
        if ms:  # 5. sampled columns: gather, bias, attention, merge
            tabs |= {f"{tg}_samp": np.broadcast_to(np.concatenate(samp), (B, Hk, ms)),
                     f"{tg}_sblk": np.concatenate(sblk)}
            T |= {f"KSUB_L{lv}": TensorSpec(f"KSUB_L{lv}", (B, Hk, ms, d), e, "scratch"),
                  f"VSUB_L{lv}": TensorSpec(f"VSUB_L{lv}", (B, Hk, ms, d), e, "scratch"),
                  f"HB_L{lv}": TensorSpec(f"HB_L{lv}", (B, H, nq_t, sample_size), e, "scratch"),
                  f"OR_L{lv}": TensorSpec(f"OR_L{lv}", (B, H, nq_t, d), e, "scratch"),
                  f"LR_L{lv}": TensorSpec(f"LR_L{lv}", (B, H, nq_t, 1), STAT_BYTES, "scratch"),
                  f"OM_L{lv}": TensorSpec(f"OM_L{lv}", (B, H, nq_t, d), e, "scratch"),
                  f"LM_L{lv}": TensorSpec(f"LM_L{lv}", (B, H, nq_t, 1), STAT_BYTES, "scratch")}
            ks += [sc.gather_kernel(f"{tg}_sample_k", T[f"KS_L{lv}"], T[f"KSUB_L{lv}"], f"{tg}_samp"),
                   sc.gather_kernel(f"{tg}_sample_v", T[f"VS_L{lv}"], T[f"VSUB_L{lv}"], f"{tg}_samp")]
            tabs |= {f"{tg}_bias_off": np.array([r[0] for r in bias_rows], np.int64),
                     f"{tg}_bias_len": np.array([r[1] for r in bias_rows], np.int64)}
            ks.append(_bias_kernel(p, f"{tg}_bias", f"{tg}_bias", len(bias_rows), f"LB_L{lv}", f"HB_L{lv}", sample_size,
                                   f"L{lv}"))
            tabs |= _kv_tables(f"{tg}_sm", sm_items)
            ks.append(_list_kernel(p, cfg, hw, f"{tg}_sampled", f"{tg}_sm", len(sm_items), q=f"QS_L{lv}",
                                   k=f"KSUB_L{lv}", v=f"VSUB_L{lv}", o=f"OR_L{lv}", lse=f"LR_L{lv}", bias=f"HB_L{lv}",
                                   lse_col=True))
            mr = [(r[2], r[1]) for r in merge_rows if r[3]]
            tabs |= {f"{tg}_mg_off": np.array([r[0] for r in mr], np.int64),
                     f"{tg}_mg_len": np.array([r[1] for r in mr], np.int64)}
            ks.append(_rows_kernel(p, f"{tg}_merge", f"{tg}_mg", len(mr),
                                   loads=[("a1", src_o, "off", "mat"), ("l1c", src_l, "off", "col"),
                                          ("a2", f"OR_L{lv}", "off", "mat"), ("l2c", f"LR_L{lv}", "off", "col")],
                                   stores=[("a1", f"OM_L{lv}", "off", "mat"), ("l1c", f"LM_L{lv}", "off", "col")],
                                   op="hyper_merge"))
        tensors |= T
        # 6. unsort: gather each original row's sorted result; causal: merge it into O
        for sampled_set in (True, False):
            rows = [r for r in merge_rows if r[3] == sampled_set]
            if not rows:
                continue
            so_, sl_ = (f"OM_L{lv}", f"LM_L{lv}") if sampled_set else (src_o, src_l)
            ut = f"{tg}_un{int(sampled_set)}"
            tabs |= {f"{ut}_off": np.array([r[0] for r in rows], np.int64),
                     f"{ut}_len": np.array([r[1] for r in rows], np.int64)}
            g = ("gather", f"{tg}_qinv")
            if p.causal:
                ks.append(_rows_kernel(p, f"{ut}sort", ut, len(rows),
                                       loads=[("a1", "O", "off", "mat"), ("l1", "LSE", "off", "vec"),
                                              ("a2", so_, g, "mat"), ("l2c", sl_, g, "col")],
                                       stores=[("a1", "O", "off", "mat"), ("l1", "LSE", "off", "vec")], op="hyper_merge"))
            else:
                ks.append(_rows_kernel(p, f"{ut}sort", ut, len(rows), loads=[("a1", so_, g, "mat"), ("l1c", sl_, g, "col")],
                                       stores=[("a1", "O", "off", "mat"), ("l1", "LSE", "off", "vec")], op="hyper_col"))
    notes = (f"{'causal recursion: ' + str(len(base)) + ' exact diagonal blocks, ' if p.causal else ''}"
             f"{n_hyper} level(s) of LSH block-diagonal + sampled attention (b = {block_size}, m = {sample_size}, "
             f"r = {lsh_num_projs}, exact below {min_seq_len}); approximate unless b ≥ N",)
    return Schedule(m_, p, cfg, tensors, tuple(ks), notes, tables=tabs)


def _bias_kernel(p: Problem, name: str, tag: str, W: int, rowc: str, dst: str, m: int, lv: str) -> Kernel:
    """bias[b, h, rows, :m]: the own-block mask and the log(n_k/m) shift of a tile of sorted query rows; reads the
    rows' block-diagonal LSE (4 B a row, the row index) and writes rows·m·e."""
    grid, (w, b, h) = _grid(W, p.batch, p.heads)
    L = lambda nm: lookup(tbl(f"{tag}_{nm}"), w)  # noqa: E731
    rows = Span(0, ROWS, L("len"), offset=L("off"))
    hd = (point(b, p.batch), point(h, p.heads))
    body = (Load(f"rowc_{lv}", Tile(rowc, hd + (rows, full(1)))),
            Compute("hyper_bias", (f"rowc_{lv}", f"bias_{lv}"), other=(Work(3 * m, (rows,)),)),
            Store(f"bias_{lv}", Tile(dst, hd + (rows, full(m)))))
    return Kernel(name, grid, (Buffer(f"rowc_{lv}", (ROWS, 1), STAT_BYTES, "reg"), Buffer(f"bias_{lv}", (ROWS, m), p.elem_bytes)),
                  body)
