"""DeepSpeed-Ulysses (Jacobs et al., arXiv 2309.14509): sequence parallelism by all-to-all.

Each of P GPUs holds Q, K, V of N/P tokens for all heads. An all-to-all per tensor (DeepSpeed's
``DistributedAttention.forward``, deepspeed/sequence/layer.py: three ``_SeqAllToAll`` calls, query, key, value)
regroups them so that each GPU holds the full sequence for H/P query heads (H_kv/P KV heads); each GPU runs ordinary
full-sequence attention on its heads; one more all-to-all (the output) restores the sequence split.

Bytes, per GPU (the piece a GPU keeps is 1/P of its shard, the other (P−1)/P leave it, 1/P of the shard per peer):
  Q: (P−1)·B·(H/P)·(N/P)·d·e    K, V: (P−1)·B·(H_kv'/P)·(N/P)·d·e each    O: as Q
with H_kv' = H_kv when P divides H_kv; when P > H_kv, DeepSpeed repeats K and V to H heads before the all-to-all
(``repeat_interleave`` in the same file), so H_kv' = H and every GPU gets H/P KV heads (plain MHA after the repeat).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from iosim.errors import IosimError
from iosim.multigpu.interconnect import check_devices
from iosim.multigpu.ring import INTERCONNECT
from iosim.problem import Problem

COLLECTIVES = ("Q", "K", "V", "O")  # one all-to-all each, in order: three before the attention, one after


@dataclass(frozen=True)
class AllToAll:
    """One all-to-all on the interconnect level: each GPU sends ``bytes_per_peer`` to each of the other P−1."""

    tensor: str
    bytes_per_peer: int
    devices: int
    level: str = INTERCONNECT

    @property
    def bytes_sent(self) -> int:
        """Per GPU: (P−1) pieces."""
        return (self.devices - 1) * self.bytes_per_peer


@dataclass(frozen=True)
class UlyssesPlan:
    problem: Problem
    devices: int
    kv_heads_sent: int  # KV heads that travel (H_kv, or H when DeepSpeed repeats them)
    local: Problem  # what each GPU runs: the full sequence on H/P heads
    collectives: tuple[AllToAll, ...]
    notes: tuple[str, ...] = ()

    def bytes_sent(self) -> int:
        """Per GPU, all four all-to-alls."""
        return sum(c.bytes_sent for c in self.collectives)


def ulysses_plan(p: Problem, devices: int) -> UlyssesPlan:
    check_devices(devices)
    P = devices
    if p.seq_q != p.seq_kv:
        raise IosimError(f"Ulysses splits one sequence: seq_q ({p.seq_q}) must equal seq_kv ({p.seq_kv}); give "
                         "--seq-kv equal to --seq-q")
    if p.heads % P:
        raise IosimError(f"Ulysses gives each GPU heads/devices heads: heads={p.heads} is not divisible by "
                         f"devices={P}; use a device count that divides {p.heads}, or --parallel ring")
    if p.seq_q % P:
        raise IosimError(f"sequence length {p.seq_q} is not divisible by devices = {P}; pad the sequence to a "
                         f"multiple of {P} (e.g. {-(-p.seq_q // P) * P})")
    notes: tuple[str, ...] = ()
    if p.kv_heads % P == 0:
        hkv = p.kv_heads
    elif P > p.kv_heads:
        hkv = p.heads
        notes = (f"kv_heads={p.kv_heads} < devices={P}: K and V are repeated to {p.heads} heads before the all-to-all "
                 "(DeepSpeed DistributedAttention), so they travel and are attended as MHA",)
    else:
        raise IosimError(f"Ulysses splits KV heads too: kv_heads={p.kv_heads} is not divisible by devices={P}; use "
                         "a device count that divides it (or exceeds it: K/V are then repeated), or --parallel ring")
    n, e, b, d = p.seq_q // P, p.elem_bytes, p.batch, p.head_dim
    q_piece = b * (p.heads // P) * n * d * e
    kv_piece = b * (hkv // P) * n * d * e
    colls = tuple(AllToAll(t, q_piece if t in "QO" else kv_piece, P) for t in COLLECTIVES)
    local = replace(p, heads=p.heads // P, kv_heads=hkv // P)
    return UlyssesPlan(p, P, hkv, local, colls, notes)
