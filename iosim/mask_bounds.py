"""IO of structured masks (sliding window, documents) for FA2's loop order, symbolic and at the block level.

The schedule is ``block_sparse`` (FA2's forward visiting only listed KV blocks) with the block mask of the
structured mask, computed from each query block's visible key interval (never an N × N array). Self-attention:
N_q = N_kv = N. Units as ``iosim.symbolic``: bytes with ``e`` per element and fp32 LSE; elements count each transferred
element once (FA's "HBM accesses"); M = fast memory in elements.

Sliding window of W keys (causal): query r sees keys r − W < c ≤ r (FA2's ``window_size=(W − 1, 0)``). Query block
i (rows [i·B_r, min((i+1)·B_r, N) − 1]) needs keys [max(i·B_r − W + 1, 0), min((i+1)·B_r, N) − 1], an interval of
at most L = W + B_r − 1 keys, so it visits the KV blocks ⌊lo/B_c⌋ … ⌊hi/B_c⌋:

* any tiles: ⌈L/B_c⌉ ≤ blocks ≤ ⌈(L − 1)/B_c⌉ + 1 for an interior block (an interval of L keys starting anywhere
  touches at most ⌈(L − 1)/B_c⌉ + 1 blocks), and the exact count is the sum over i in :func:`sliding_io`;
* aligned tiles (B_c ≥ 2, B_c | B_r, B_r | N, B_r | W or W ≥ N): the interval of query block i starts on a
  KV-block boundary, so it loads exactly min((i+1)·B_r, W + B_r) keys (⌈L/B_c⌉ = (W + B_r)/B_c blocks when
  interior); summed over the T = N/B_r query blocks, with W' = min(W, N), IO = 2Nd + N + d(W' + B_r)(2N − W')/B_r
  elements per head (Q and O once, LSE, K and V per block) — B_c drops out;
* at FA's tile rule B_r = M/(4d) (FA Algorithm 1, line 1): 2Nd + N + d(2N − W) + 4d²W(2N − W)/M = Θ(Nd + NWd²/M).

Documents L_1 … L_k (Σ L_k = N), each attending only itself (causal or not): the IO is Σ_k of the dense flash2 IO at
N = L_k (``iosim.symbolic.symbolic_io("flash2", causal)``), exact when every L_k is a multiple of B_r and B_c (no
tile straddles a boundary); a straddling tile is visited whole, so the counter then counts more.

Lower bound for any exact algorithm (standard QKᵀ), a derivation here — not a theorem of Saha & Ye: their
large-cache argument (Saha & Ye 2024, arXiv 2402.07443, §3.1 Lemmas 3.3–3.4; constants as
``iosim.symbolic.LowerBounds``) bounds the products one 2M-partition part can perform by a function of M and d alone,
whichever query–key pairs are needed, so P needed pairs (d products each) force P·d²/(4(M + d²)) − M IOs. The band
holds ⌊N/W⌋ disjoint diagonal W × W blocks whose lower triangles are causal attention instances of size W, so
P ≥ ⌊N/W⌋·W(W+1)/2 ≈ NW/2 (exactly P = NW − W(W−1)/2 for W ≤ N), and the bound is Ω(NWd²/M) for M ≥ d²: FA2's
Θ(NWd²/M) is optimal up to a constant there, as FA is for dense attention (Saha & Ye Thm 3.1). Documents:
P = Σ L_k² (or Σ L_k(L_k+1)/2 causal). The trivial bound (read Q, K, V, write O) and the small-cache matmul bound
(Saha & Ye Thm 3.7) are taken with the same P, as ``iosim.symbolic.lower_bounds`` does for dense masks.

sympy is imported inside the symbolic functions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iosim.errors import IosimError


@dataclass(frozen=True)
class SlidingWindow:
    """Causal sliding window: query r sees the W keys r − W < c ≤ r."""

    window: int

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise IosimError(f"sliding window must be a positive number of keys, got {self.window!r}; e.g. sliding:4096")

    @property
    def spec(self) -> str:
        return f"sliding:{self.window}"


@dataclass(frozen=True)
class Documents:
    """Packed documents of these lengths; a query sees the keys of its own document (causal: up to itself)."""

    lengths: tuple[int, ...]
    causal: bool = False

    def __post_init__(self) -> None:
        if not self.lengths or any(not isinstance(x, int) or x < 1 for x in self.lengths):
            raise IosimError(f"document lengths must be positive integers, got {self.lengths!r}; e.g. document:4096,4096")

    @property
    def spec(self) -> str:
        return "document:" + ",".join(map(str, self.lengths)) + (" (causal)" if self.causal else "")


def equal_documents(n: int, count: int, causal: bool = False) -> Documents:
    """``count`` documents of N/count keys each (N must be a multiple of count)."""
    if count < 1 or n % count:
        raise IosimError(f"{count} equal documents do not split N={n}; give a count that divides N")
    return Documents((n // count,) * count, causal)


def _check_n(mask, n: int) -> None:
    if isinstance(mask, Documents) and sum(mask.lengths) != n:
        raise IosimError(f"document lengths sum to {sum(mask.lengths)}, not N={n}; make them add up to --seq-q")


def closed_form_exact(mask, n: int, block_m: int, block_n: int) -> bool:
    """True where the closed form (``MaskIO.closed_elements``) equals the block mask's IO: tiles aligned to the
    window or to every document boundary (module doc)."""
    if isinstance(mask, SlidingWindow):
        return (block_n >= 2 and block_m % block_n == 0 and n % block_m == 0
                and (mask.window % block_m == 0 or mask.window >= n))
    return (all(x % block_m == 0 and x % block_n == 0 for x in mask.lengths)
            and (not mask.causal or block_m % block_n == 0))


def key_intervals(mask, n: int, block_m: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) [T_r]: the first and last key some query of query block i sees (inclusive; the keys between are
    all seen by some query of the block, both masks being intervals per row with nondecreasing ends)."""
    _check_n(mask, n)
    first = np.arange(0, n, block_m, dtype=np.int64)
    last = np.minimum(first + block_m, n) - 1
    if isinstance(mask, SlidingWindow):
        return np.maximum(first - mask.window + 1, 0), last
    ends = np.cumsum(mask.lengths)
    starts = ends - np.asarray(mask.lengths)
    lo = starts[np.searchsorted(ends, first, side="right")]
    hi = ends[np.searchsorted(ends, last, side="right")] - 1
    return lo, (np.minimum(hi, last) if mask.causal else hi)


def block_mask(mask, n: int, block_m: int, block_n: int) -> np.ndarray:
    """bool [T_r, T_c]: KV block j is visited by query block i iff it meets the block's key interval."""
    lo, hi = key_intervals(mask, n, block_m)
    j = np.arange(-(-n // block_n), dtype=np.int64)[None, :] * block_n
    return (j <= hi[:, None]) & (j + block_n - 1 >= lo[:, None])


def visible_pairs(mask, n: int) -> int:
    """Query–key pairs the mask needs, per head."""
    _check_n(mask, n)
    if isinstance(mask, SlidingWindow):
        w = min(mask.window, n)
        return n * w - w * (w - 1) // 2
    return sum(x * (x + 1) // 2 if mask.causal else x * x for x in mask.lengths)


def lower_bounds(mask, n: int, head_dim: int, fast_memory_elements: int, batch: int = 1, heads: int = 1,
                 kv_heads: int | None = None):
    """``iosim.symbolic.LowerBounds`` (elements, any exact algorithm) with the mask's P needed pairs (module doc)."""
    from iosim.symbolic import LowerBounds
    m, d = fast_memory_elements, head_dim
    if m <= 0:
        raise IosimError(f"fast memory must be a positive number of elements, got {m}")
    pairs = batch * heads * visible_pairs(mask, n)
    # every query sees a key and every key is seen: read Q, write O per head, read K, V per KV head
    trivial = batch * (2 * heads + 2 * (kv_heads or heads)) * n * d
    return LowerBounds(trivial, pairs * d * d / (4 * (m + d * d)) - m,
                       pairs * d / (2 * math.sqrt(2) * math.sqrt(m)) - m - pairs)


# --- symbolic ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskIO:
    """A mask's IO as sympy expressions (per the whole problem: B·H heads) in ``iosim.symbolic``'s size symbols and
    W (window). exact_*: any tiles (documents: aligned tiles); closed_elements: aligned tiles, closed form;
    tile_rule_elements: at B_r = M/(4d); upper_elements: any tiles (None if not derived); lower_elements: the
    large-cache lower bound for any exact algorithm."""

    mask: str
    exact_bytes: object
    exact_elements: object
    closed_elements: object
    tile_rule_elements: object
    upper_elements: object
    lower_elements: object
    theta: str
    lower_class: str
    conditions: tuple[str, ...]


def window_symbol():
    import sympy as sp
    return sp.Symbol("W", positive=True, integer=True)


def _rest_elements(n, d):
    """Q read, O written (elements), LSE written (fp32), per head."""
    return 2 * n * d, n


def sliding_io(window=None) -> MaskIO:
    """The sliding window's IO (module doc); ``window`` an int fixes W, None keeps the symbol W."""
    import sympy as sp
    from iosim import symbolic as S
    n, d, e, br, bc, m = S.N, S.D, S.ELEM_BYTES, S.BLOCK_M, S.BLOCK_N, S.M
    w = window_symbol() if window is None else sp.Integer(window)
    heads = S.BATCH * S.HEADS
    i = sp.Symbol("i", integer=True, nonnegative=True)
    lo, hi = sp.Max(i * br - w + 1, 0), sp.Min((i + 1) * br, n) - 1
    kv = sp.Sum(sp.Min((sp.floor(hi / bc) + 1) * bc, n) - sp.floor(lo / bc) * bc, (i, 0, sp.ceiling(n / br) - 1))
    qo, lse = _rest_elements(n, d)
    ws = sp.Min(w, n)
    closed = heads * (qo + lse + d * (ws + br) * (2 * n - ws) / br)
    pairs = n * ws - ws * (ws - 1) / 2
    return MaskIO(
        f"sliding:{w}", heads * (e * qo + 4 * lse + 2 * e * d * kv), heads * (qo + lse + 2 * d * kv),
        closed, sp.expand(closed.xreplace({br: m / (4 * d)})),
        heads * (qo + lse + 2 * d * bc * sp.ceiling(n / br) * (sp.ceiling((w + br - 2) / bc) + 1)),
        heads * pairs * d**2 / (4 * (m + d**2)) - m,
        "Θ(N·d + N·W·d²/M)  (W ≤ N, d ≤ M ≤ N·d, B_r = M/(4d))",
        "Ω(N·W·d²/M) for M ≥ d²: P·d²/(4(M+d²)) − M with P = N·W − W(W−1)/2 ≥ ⌊N/W⌋·W(W+1)/2 pairs "
        "(Saha & Ye 2024 §3.1 Lemmas 3.3–3.4 applied to the band; a derivation here, not a theorem of the paper)",
        ("query r sees keys r-W < c <= r (causal); N_q = N_kv = N",
         "exact: any tiles (sum over query blocks i of the keys of KV blocks floor(lo_i/B_c)..floor(hi_i/B_c))",
         "closed form: aligned tiles, B_c >= 2, B_c | B_r, B_r | N, B_r | W or W >= N",
         "upper: any tiles, at most ceil((W+B_r-2)/B_c)+1 KV blocks per query block"))


def documents_io(docs: Documents) -> MaskIO:
    """Σ over documents of flash2's dense IO at N = L_k (exact when every L_k is a multiple of B_r and B_c)."""
    import sympy as sp
    from iosim import symbolic as S
    sio = S.symbolic_io("flash2", causal=docs.causal)
    d, m, br = S.D, S.M, S.BLOCK_M

    def per_doc(expr, length):
        return expr.xreplace({S.NQ: length, S.NKV: length})

    def total(expr):
        return sum((per_doc(expr, sp.Integer(x)) for x in docs.lengths), sp.Integer(0))

    heads = S.BATCH * S.HEADS
    # aligned closed form per head: each of the L/B_r query blocks reads all L keys (non-causal), or query block i
    # the (i+1)·B_r keys up to its last row (causal, B_c | B_r): Σ_i 2(i+1)·B_r = L(L + B_r)/B_r for K and V
    kv = sum(((x * (x + br) / br) if docs.causal else 2 * x * x / br) for x in map(sp.Integer, docs.lengths))
    n = sum(docs.lengths)
    qo, lse = _rest_elements(sp.Integer(n), d)
    closed = heads * (qo + lse + d * kv)
    pairs = visible_pairs(docs, n)
    return MaskIO(
        docs.spec, total(sio.io_bytes), total(sio.io_elements), closed, sp.expand(closed.xreplace({br: m / (4 * d)})),
        None, heads * sp.Integer(pairs) * d**2 / (4 * (m + d**2)) - m,
        "Θ(N·d + d²·Σ_k L_k²/M)  (d ≤ M, B_r = M/(4d); equal documents of L = N/k: Θ(N·d + N·L·d²/M))",
        f"Ω(d²·Σ_k L_k²/M) for M ≥ d²: P·d²/(4(M+d²)) − M with P = {pairs} pairs per head (Saha & Ye 2024 §3.1 "
        "Lemmas 3.3–3.4 applied to the documents' blocks; a derivation here, not a theorem of the paper)",
        (f"{len(docs.lengths)} documents, N = {n}; a query sees its own document" + (" up to itself" if docs.causal else ""),
         "exact: sum over documents of flash2's IO at N = L_k; equals the block mask's IO when every L_k is a "
         "multiple of B_r and B_c",
         "closed form: B_r | L_k and B_c | L_k (causal: also B_c | B_r)"))
