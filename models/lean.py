"""LeanAttention forward (Sanovar et al., arXiv 2405.10480) as onnxruntime runs it
(``onnxruntime/contrib_ops/cuda/bert/lean_attention/``): stream-K over the KV tiles of every output tile, one launch.

* Launch (``lean_api.cc``, ``get_num_splits_and_buffer_sizes``): tiles kBlockM 64, kBlockN 256 (d ≤ 64) / 128
  (d ≤ 128) / 64, 4 warps; seqlen_q = 1 with H > H_k is GQA-packed (``mha_fwd_kvcache``: seqlenq_ngroups_swapped:
  a tile's rows are the G query heads of one KV head). total = Σ KV tiles of all output tiles; grid = 2·SMs, or
  min(⌈total/2⌉, ⌈32·total/n_blocks⌉) when total ≤ 4·SMs, capped at total; the KV stream is split
  ``persistent.stream_k`` (max_tiles_per_tb, high_load_tbs). Causal prefill: a query block's KV tiles stop at the
  bottom-right diagonal (as flash2; lean_api.cc's own count assumes Nq = Nkv).
* Kernel (``lean_fwd_kernel.h``, ``lean_compute_attn_impl_ver3``): a CTA walks its segments in stream order, each
  segment's KV tiles descending (n_tile down to n_tile_min). A segment that does not hold its tile's KV tile 0
  writes fp32 partial O_s = acc/ℓ and LSE_s (``out_accum`` / ``softmax_lse_accum`` [splits, B, H', Nq', d]) at split
  s = its CTA − the host's, and bumps the tile's sync flag. The host (the segment with n_tile_min = 0) waits for
  the other splits, reads their LSE_s and O_s, merges them into its own running state (``combine_step``) and writes
  O; a tile one CTA covers whole writes O directly. No LSE output, no separate combine launch.
* Programs are enumerated from the last CTA down (CTA = W − 1 − program): every CTA is resident at once (the host
  spins on its peers), and this order lets the NumPy reference see every partial before its host reads it. The
  L2 timeline starts all programs at 0 when they fit the slots, so the order changes nothing there.
Per segment: Q tile once; K and V once per KV tile; work as flash2 per tile; partial finalize as flash2; merge per
row per split: exp 2, other 2·d + 4 (as splitkv's combine). Scratch dims: the largest split count of any tile.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp

from iosim.errors import IosimError
from iosim.models import flash2
from iosim.models._common import check_fit, check_head_dim, qkvo_tensors
from iosim.models.persistent import concrete, reset, stream_k, workers_of
from iosim.problem import STAT_BYTES, KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            Work, full, lookup, point, table, var)


def lean_tiles(head_dim: int) -> tuple[int, int]:
    """(kBlockM, kBlockN) of lean_api.cc: 64 × (256 | 128 | 64) for d ≤ 64 | ≤ 128 | else."""
    return 64, 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


def lean_grid(total_tiles: int, n_blocks: int, sms: int) -> int:
    """lean_griddimz of get_num_splits_and_buffer_sizes."""
    g = 2 * sms
    if total_tiles <= 4 * sms:
        g = min((total_tiles + 1) // 2, (32 * total_tiles + n_blocks - 1) // n_blocks)
    return max(1, min(g, total_tiles))


@register("lean", "LeanAttention (stream-K decode/prefill): the KV tiles of all output tiles split evenly over "
          "persistent CTAs; partial O/LSE to scratch, a host CTA per output tile reduces in the same kernel")
def build(p: Problem, cfg: KernelConfig, hw=None, workers: int | None = None) -> Schedule:
    """workers: the grid (None = lean_api.cc's lean_griddimz for ``hw``'s SMs, 132 without hardware)."""
    check_head_dim(p, "lean")
    concrete(p, "lean")
    dm, dn = lean_tiles(p.head_dim)
    cfg = replace(cfg, block_m=cfg.block_m or dm, block_n=cfg.block_n or dn, num_warps=4, num_stages=1,
                  kv_order="descending")
    bm, bn, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    B, H, G = p.batch, p.heads, p.group
    packed = p.seq_q == 1 and H > p.kv_heads
    Hx, Mq = (p.kv_heads, G) if packed else (H, p.seq_q)
    tm, tn = -(-Mq // bm), -(-p.seq_kv // bn)
    if packed and tm > 1 and G % bm:
        raise IosimError(f"lean: a packed group of G={G} query heads over {tm} row blocks needs block_m={bm} to "
                         f"divide G; use block_m ≥ {G} or a divisor of G")
    per_m = [int(flash2.kv_stop(p, i, bm, bn, tn)) if not packed else tn for i in range(tm)]
    if 0 in per_m:
        raise IosimError("lean: a query block sees no key (causal with seq_q > seq_kv); not modeled")
    per = np.tile(per_m, B * Hx)  # output tile (b·Hx + h)·T_m + m, as start_tile_gid decodes
    W = workers if workers is not None else lean_grid(int(per.sum()), tn, workers_of(hw))
    sk = stream_k(per, W)
    ns = int(sk.splits.max())
    pid, k, j, s, z = var("pid"), var("seg"), var("j"), var("split"), var("flag")
    cta = W - 1 - pid

    def t(name):
        return lookup(table(f"lean_{name}"), cta, k)
    i, h, b = t("m"), t("h"), t("b")
    rows = Span(i, bm, Mq)
    if packed:
        heads = Span(h, G, H) if tm == 1 else Span(h * tm + i, bm, H)
        q_t, o_t = Tile("Q", (point(b, B), heads, full(1), full(d))), Tile("O", (point(b, B), heads, full(1), full(d)))
        step_h, prow = h * G, full(1)
    else:
        heads = point(h, H)
        q_t, o_t = Tile("Q", (point(b, B), heads, rows, full(d))), Tile("O", (point(b, B), heads, rows, full(d)))
        step_h, prow = h, rows

    def part(name, split, *rest):
        return Tile(name, (point(split, ns), point(b, B), heads, prow) + rest)
    cols = Span(j, bn, p.seq_kv)
    host, partial = t("host"), 1 - t("host")
    buffers = flash2.buffers(bm, bn, d, e) + (Buffer("lse_s", (bm,), STAT_BYTES), Buffer("o_s", (bm, d), 4, space="reg"))
    body = (Loop(k, 0, lookup(table("lean_count"), cta), (
        reset(buffers),
        Load("q", q_t),
        Loop(j, t("lo"), t("hi"), flash2.kv_step(p, b, step_h, rows, cols), reverse=True),
        Loop(z, 0, partial, (
            flash2.finalize(p, rows, "finalize_split"),
            Store("acc", part("O_accum", t("split"), full(d))),
            Store("lse", part("LSE_accum", t("split"))),
        )),
        Loop(z, 0, host, (
            Loop(s, 1, t("splits"), (
                Load("lse_s", part("LSE_accum", s)),
                Load("o_s", part("O_accum", s, full(d))),
                Compute("combine_step", ("lse_s", "o_s", "m", "l", "acc"),
                        exp=(Work(2, (rows,)),), other=(Work(2 * d + 4, (rows,)),)),
            )),
            flash2.finalize(p, rows),
            Store("acc", o_t),
        )),
    )),)
    kernel = Kernel("lean_fwd", (GridAxis("n", pid, W),), buffers, body, threads_per_cta=128, persistent=True)
    check_fit(kernel, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}")
    tables = {"lean_count": sk.count, "lean_m": sk.tile % tm, "lean_h": (sk.tile // tm) % Hx,
              "lean_b": sk.tile // (tm * Hx), **{f"lean_{n}": getattr(sk, n) for n in ("lo", "hi", "split", "host", "splits")}}
    tensors = qkvo_tensors(p) | {
        "O_accum": TensorSpec("O_accum", (ns, B, H, p.seq_q, d), 4, "scratch"),
        "LSE_accum": TensorSpec("LSE_accum", (ns, B, H, p.seq_q), STAT_BYTES, "scratch"),
    }
    notes = (f"lean: {W} persistent CTAs over {int(per.sum()):,} KV tiles of {bn} ({len(per):,} output tiles of "
             f"{bm} rows{', GQA-packed' if packed else ''}); {int(sk.per_worker.max())} tiles per CTA at most, up to "
             f"{ns} splits per output tile",)
    return Schedule("lean", p, cfg, tensors, (kernel,), notes, tables)
