"""FastAttention's tiling-AllReduce (Lin et al., arXiv 2410.16663): tensor-parallel attention whose output-projection
AllReduce is cut into tiles and overlapped with the attention of the next tile.

Only the abstract and secondary reviews of the paper were readable here ("split the AllReduce into block-wise
operations overlapped with block computation", reports/papers/fastattention.md); the construction below is our
reading, every choice named:

* Tensor parallelism over P devices (Megatron-style): each device holds H/P query heads (H_kv/P KV heads) for the
  whole sequence and the matching rows of the output projection W_o ((H/P)·d × hidden).
* The query rows are cut into T tiles of ⌈N/T⌉ rows (the last ragged). Tile k: attention of its rows on the device's
  heads (causal: against keys [0, end of tile), bottom-right aligned, which is exact for a block of query rows), then
  its partial projection O_k·W_o (B·rows × hidden), then an AllReduce (sum over devices) of that B·rows × hidden
  message, which runs while tile k+1 computes.
* AllReduce: NCCL's ring (reduce-scatter + all-gather), 2(P−1) steps of message/P: each device sends
  2·(P−1)/P of the message (exact: hidden = H·d is a multiple of P because P divides H).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from iosim.errors import IosimError
from iosim.multigpu.interconnect import check_devices
from iosim.multigpu.ring import INTERCONNECT
from iosim.problem import Problem

DEFAULT_TILES = 8
"""Tiles per call (assumed: the abstract gives no tile count; 8 keeps each AllReduce message several MB at 8K tokens
and lets the pipeline hide all but one tile's AllReduce)."""


@dataclass(frozen=True)
class TpTile:
    index: int
    row_start: int
    row_stop: int
    attention: Problem  # the device's call for this tile
    proj_flops: int  # 2·B·rows·(H/P·d)·hidden
    proj_bytes: int  # O tile + W_o shard + output tile, each once (e bytes an element)
    message_bytes: int  # the AllReduce message: B·rows·hidden·e
    bytes_sent: int  # per device: 2·(P−1)·message/P
    level: str = INTERCONNECT

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start


@dataclass(frozen=True)
class TilingAllReducePlan:
    problem: Problem
    devices: int
    hidden: int
    tiles: tuple[TpTile, ...]

    def bytes_sent(self) -> int:
        return sum(t.bytes_sent for t in self.tiles)


def tiling_allreduce_plan(p: Problem, devices: int, tiles: int = DEFAULT_TILES, hidden: int | None = None
                          ) -> TilingAllReducePlan:
    check_devices(devices)
    P = devices
    if p.heads % P or p.kv_heads % P:
        raise IosimError(f"tensor parallelism gives each device heads/devices heads: heads={p.heads}, "
                         f"kv_heads={p.kv_heads} must both be divisible by devices={P}; use a device count that "
                         "divides them")
    if isinstance(tiles, bool) or not isinstance(tiles, int) or not 1 <= tiles <= p.seq_q:
        raise IosimError(f"tiles must be a whole number from 1 to seq_q={p.seq_q}, got {tiles!r} (set --tiles)")
    if p.causal and p.seq_kv < p.seq_q:
        raise IosimError(f"causal tiling-AllReduce needs seq_kv >= seq_q (got {p.seq_kv} < {p.seq_q}: the first rows "
                         "would see no key); give --seq-kv >= --seq-q")
    hidden = p.heads * p.head_dim if hidden is None else hidden
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0 or hidden % P:
        raise IosimError(f"hidden must be a positive multiple of devices={P} (the AllReduce splits it), got "
                         f"{hidden!r}")
    e, b, N = p.elem_bytes, p.batch, p.seq_q
    hl = p.heads // P
    rows_per = -(-N // tiles)
    out = []
    for k in range(tiles):
        r0, r1 = k * rows_per, min(N, (k + 1) * rows_per)
        if r0 >= r1:
            break
        rows = r1 - r0
        nkv = p.seq_kv - (N - r1) if p.causal else p.seq_kv  # bottom-right: rows up to r1 see keys < r1 + Nkv − Nq
        att = replace(p, heads=hl, kv_heads=p.kv_heads // P, seq_q=rows, seq_kv=nkv)
        msg = b * rows * hidden * e
        out.append(TpTile(k, r0, r1, att, 2 * b * rows * hl * p.head_dim * hidden,
                          (b * rows * hl * p.head_dim + hl * p.head_dim * hidden + b * rows * hidden) * e,
                          msg, 2 * (P - 1) * (msg // P)))
    return TilingAllReducePlan(p, P, hidden, tuple(out))
