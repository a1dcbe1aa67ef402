"""NumPy execution of a ring plan (small sizes): each GPU runs its calls on its own token shard and merges them by
log-sum-exp, exactly as ``iosim.multigpu.ring`` describes; the gathered output must equal naive attention. Used by the
tests to check that the plans (which queries see which keys at each step) and the merge are right."""

from __future__ import annotations

import numpy as np

from iosim.multigpu.ring import RingPlan


def call_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(O, LSE) of one call: q [..., m, d], k/v [..., m or n, d]; causal on a square selection."""
    s = np.einsum("...md,...nd->...mn", q, k) * scale
    if causal:
        m, n = s.shape[-2:]
        s = np.where(np.arange(n)[None, :] <= np.arange(m)[:, None], s, -np.inf)
    mx = s.max(axis=-1, keepdims=True)
    p = np.exp(s - mx)
    l = p.sum(axis=-1, keepdims=True)
    return np.einsum("...mn,...nd->...md", p / l, v), (mx + np.log(l))[..., 0]


def merge(out: np.ndarray, lse: np.ndarray, o: np.ndarray, lse_t: np.ndarray) -> None:
    """In place: out, lse ← the log-sum-exp combination of (out, lse) and (o, lse_t) (rows already selected)."""
    new = np.logaddexp(lse, lse_t)
    out *= np.exp(lse - new)[..., None]
    out += o * np.exp(lse_t - new)[..., None]
    lse[...] = new


def ring_attention(plan: RingPlan, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """O [B, H, N, d] of ring attention as ``plan`` runs it; q [B, H, N, d], k/v [B, H_kv, N, d] (GQA repeats)."""
    p = plan.problem
    g = p.heads // p.kv_heads
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1.0 / np.sqrt(p.head_dim)
    out = np.zeros_like(q, dtype=np.float64)
    for r in range(plan.devices):
        pos = plan.positions(r)
        qr = q[:, :, pos]
        acc = np.zeros(qr.shape, dtype=np.float64)
        lse = np.full(qr.shape[:-1], -np.inf)
        for call in plan.calls[r]:
            if call.empty:
                continue
            src = plan.positions(call.source)  # the K/V block this GPU holds at this step
            kk, vv = k[:, :, src][:, :, call.k_start:call.k_stop], v[:, :, src][:, :, call.k_start:call.k_stop]
            o, l_t = call_attention(qr[:, :, call.q_start:call.q_stop], kk, vv, call.causal, scale)
            rows = slice(call.q_start, call.q_stop)
            a, ls = acc[:, :, rows], lse[:, :, rows]
            merge(a, ls, o, l_t)
            acc[:, :, rows], lse[:, :, rows] = a, ls
        out[:, :, pos] = acc
    return out
