"""Ring attention (Liu et al., arXiv 2310.01889): the sequence split over P GPUs, K/V blocks passed around a ring.

Each GPU r holds N/P query tokens and the K/V of the same tokens. At ring step t (0 ≤ t < P) it holds the K/V block
that started on GPU s = (r − t) mod P, computes attention of its queries against it (one ordinary single-GPU kernel:
an iosim schedule of the shard's shape) and merges the result into its output by log-sum-exp; meanwhile it sends the
block to GPU r + 1 and receives the next from GPU r − 1 (P − 1 transfers, the last step sends nothing). Each
transfer carries K and V of N/P tokens: 2·B·H_kv·(N/P)·d·e bytes, whatever the balancing.

Causal attention and its balancing (which tokens a GPU holds; every call's mask is none or causal on a square):

* ``contiguous``: GPU r holds tokens [r·n, (r+1)·n), n = N/P. Block s < r: every key visible (no mask); s = r: causal;
  s > r: nothing visible, no call. GPU P−1 works P times as long as GPU 0 (the imbalance Striped Attention fixes).
* ``striped`` (Brandon et al., arXiv 2311.09431): GPU r holds tokens r, r+P, r+2P, … Query a sees key b of block s
  iff s + P·b ≤ r + P·a: for s ≤ r iff b ≤ a (causal n × n); for s > r iff b < a, i.e. causal on queries 1..n−1
  against keys 0..n−2 (an (n−1) × (n−1) causal call).
* ``zigzag`` (zhuzilin/ring-flash-attention, zigzag_ring_flash_attn): the sequence is cut into 2P chunks of
  c = N/(2P) tokens and GPU r holds chunks r and 2P−1−r. Step 0: causal 2c × 2c (the two chunks in order); block
  s < r: all 2c queries against the first c keys (chunk s), no mask; s > r: the last c queries (chunk 2P−1−r) against
  all 2c keys, no mask. Every GPU then does 2c(2c+1)/2 + (P−1)·2c² visible (query, key) pairs: exactly balanced.

Non-causal attention calls every (GPU, step) with all n queries against all n keys, whatever the balancing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from iosim.errors import IosimError
from iosim.multigpu.interconnect import check_devices
from iosim.problem import Problem

BALANCES = ("contiguous", "striped", "zigzag")
INTERCONNECT = "interconnect"  # the hierarchy level below HBM: GPU ↔ GPU links


@dataclass(frozen=True)
class StepCall:
    """GPU ``gpu`` at ring step ``step``, holding the K/V block of GPU ``source``: attention of its local queries
    [q_start, q_stop) against the block's local keys [k_start, k_stop), with a causal mask on that (square) selection
    or none. An empty selection (nq = 0) is no call."""

    gpu: int
    step: int
    source: int
    q_start: int
    q_stop: int
    k_start: int
    k_stop: int
    causal: bool

    @property
    def nq(self) -> int:
        return self.q_stop - self.q_start

    @property
    def nk(self) -> int:
        return self.k_stop - self.k_start

    @property
    def empty(self) -> bool:
        return self.nq <= 0 or self.nk <= 0

    def problem(self, p: Problem) -> Problem:
        """The single-GPU problem this call runs (the global problem's batch, heads, head_dim, dtype)."""
        return replace(p, seq_q=self.nq, seq_kv=self.nk, causal=self.causal)

    def visible_pairs(self) -> int:
        """(query, key) pairs the call computes, per batch and head."""
        if self.empty:
            return 0
        return self.nq * (self.nq + 1) // 2 if self.causal else self.nq * self.nk


@dataclass(frozen=True)
class Transfer:
    """One message on the interconnect level: ``nbytes`` of ``tensors`` from GPU ``src`` to GPU ``dst``."""

    step: int
    src: int
    dst: int
    tensors: str
    nbytes: int
    level: str = INTERCONNECT


@dataclass(frozen=True)
class RingPlan:
    """``call(r, t)``: GPU r's call at step t; ``calls[r][t]`` and ``transfers`` (every message, step by step) are
    built on demand (P² of each: a million at 1024 GPUs)."""

    problem: Problem
    devices: int
    balance: str
    shard_tokens: int
    transfer_bytes: int  # one message: K and V of one shard

    def call(self, gpu: int, step: int) -> StepCall:
        s = (gpu - step) % self.devices
        n = self.shard_tokens
        if not self.problem.causal:
            return StepCall(gpu, step, s, 0, n, 0, n, False)
        return _causal_call(self.balance, gpu, step, s, n)

    @property
    def calls(self) -> tuple[tuple[StepCall, ...], ...]:
        return tuple(tuple(self.call(r, t) for t in range(self.devices)) for r in range(self.devices))

    @property
    def transfers(self) -> tuple[Transfer, ...]:
        P = self.devices
        return tuple(Transfer(t, r, (r + 1) % P, "K,V", self.transfer_bytes) for t in range(P - 1) for r in range(P))

    def positions(self, gpu: int) -> np.ndarray:
        """Global token indices GPU ``gpu`` holds, in its local order."""
        return token_positions(self.problem.seq_q, self.devices, self.balance, gpu)

    def bytes_sent(self, gpu: int) -> int:
        """Per GPU: one message per step but the last (every GPU sends and receives the same)."""
        return (self.devices - 1) * self.transfer_bytes

    def bytes_received(self, gpu: int) -> int:
        return (self.devices - 1) * self.transfer_bytes


def kv_block_bytes(p: Problem, tokens: int) -> int:
    """K and V of ``tokens`` tokens: 2·B·H_kv·tokens·d·e."""
    return 2 * p.batch * p.kv_heads * tokens * p.head_dim * p.elem_bytes


def token_positions(n_tokens: int, devices: int, balance: str, gpu: int) -> np.ndarray:
    if balance == "contiguous":
        n = n_tokens // devices
        return np.arange(gpu * n, (gpu + 1) * n)
    if balance == "striped":
        return np.arange(gpu, n_tokens, devices)
    c = n_tokens // (2 * devices)
    return np.concatenate([np.arange(gpu * c, (gpu + 1) * c),
                           np.arange((2 * devices - 1 - gpu) * c, (2 * devices - gpu) * c)])


def check_ring(p: Problem, devices: int, balance: str) -> None:
    """One-line IosimErrors for what the ring cannot split."""
    check_devices(devices)
    if balance not in BALANCES:
        raise IosimError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r} (set --balance)")
    if not isinstance(p, Problem):
        raise IosimError(f"ring attention needs a Problem, got {type(p).__name__}")
    if p.seq_q != p.seq_kv:
        raise IosimError(f"ring attention splits one sequence: seq_q ({p.seq_q}) must equal seq_kv ({p.seq_kv}); "
                         "give --seq-kv equal to --seq-q")
    parts = 2 * devices if balance == "zigzag" else devices
    if p.seq_q % parts:
        why = f"2·devices = {parts} chunks (zigzag)" if balance == "zigzag" else f"devices = {devices}"
        raise IosimError(f"sequence length {p.seq_q} is not divisible by {why}; pad the sequence to a multiple of "
                         f"{parts} (e.g. {-(-p.seq_q // parts) * parts})")


def _causal_call(balance: str, r: int, t: int, s: int, n: int) -> StepCall:
    if balance == "contiguous":
        if s < r:
            return StepCall(r, t, s, 0, n, 0, n, False)
        if s == r:
            return StepCall(r, t, s, 0, n, 0, n, True)
        return StepCall(r, t, s, 0, 0, 0, 0, False)
    if balance == "striped":
        return StepCall(r, t, s, 0, n, 0, n, True) if s <= r else StepCall(r, t, s, 1, n, 0, n - 1, True)
    c = n // 2
    if s == r:
        return StepCall(r, t, s, 0, n, 0, n, True)
    if s < r:
        return StepCall(r, t, s, 0, n, 0, c, False)
    return StepCall(r, t, s, c, n, 0, n, False)


def ring_plan(p: Problem, devices: int, balance: str = "zigzag") -> RingPlan:
    """The calls and transfers of ring attention over ``devices`` GPUs (module docstring)."""
    check_ring(p, devices, balance)
    n = p.seq_q // devices
    return RingPlan(p, devices, balance, n, kv_block_bytes(p, n))
