"""Triton attention kernels: FA2 loop order, causal, GQA/MQA, ragged lengths, block-sparse masks and split-KV
decode, with TMA tensor descriptors on sm90 and pointer loads elsewhere; an FA2-style backward (pointer loads).

torch and triton are imported lazily: ``import iosim`` (and this package) never needs them. The kernels live in
``iosim.triton_kernels.kernels``; set ``TRITON_INTERPRET=1`` before importing it to run them on the CPU.

Public names (each imports torch/triton on first use):

* ``attention(q, k, v, causal=False, block_mask=None, config=None, ...)`` — the entry point;
* ``attention_backward(q, k, v, o, lse, do, causal=False, config=None)`` — (dQ, dK, dV) from the forward's O and
  logsumexp (``attention(..., return_lse=True)``); ``attention_autograd`` — ``attention`` differentiable by torch;
* ``BlockMask`` — a FlexAttention-style block-sparse mask (kv_num_blocks / kv_indices per query block);
* ``kernel_schedule(problem, config, ...)`` — the iosim schedule of exactly what the kernel launches
  (``iosim.triton_kernels.schedule``; needs neither torch nor triton); ``backward_schedule(problem, config)`` the
  same for the backward; ``persistent_schedule`` and ``streamk_decode_schedule`` for ``attention(...,
  persistent=True)`` and ``attention(..., decode="streamk")``.
"""

from __future__ import annotations

__all__ = ["attention", "attention_backward", "attention_autograd", "BlockMask", "kernel_schedule",
           "backward_schedule", "persistent_schedule", "streamk_decode_schedule"]


def __getattr__(name: str):
    if name in ("attention", "attention_backward", "attention_autograd", "BlockMask"):
        from iosim.triton_kernels import kernels as _a
        return getattr(_a, name)
    if name in ("kernel_schedule", "backward_schedule", "persistent_schedule", "streamk_decode_schedule"):
        from iosim.triton_kernels import schedule as _s
        return getattr(_s, name)
    raise AttributeError(name)
