"""Autotune hints for kernels: ranked configurations as ``triton.Config``-style JSON, a ``perf_model`` and an
``early_config_prune`` for ``triton.autotune``, and FlexAttention ``BlockMask`` inputs from a block-sparse pattern.

Plugging into Triton (signatures as in triton/runtime/autotuner.py, Triton 3.x)::

    import iosim.hints as hints
    @triton.autotune(configs, key=["N_CTX", "HEAD_DIM"],
                     prune_configs_by={"early_config_prune": hints.prune, "perf_model": hints.perf_model, "top_k": 3})

``prune(configs, named_args, **kwargs)`` keeps the legal configs (shared memory, registers, instruction shape; see
``iosim.tiles``) ranked by predicted time, at most ``top_k`` (default ``PRUNE_TOP_K``; ``make_prune(top_k=...)``
for another). ``perf_model(**named_args, **kwargs, **config.all_kwargs())`` returns the predicted time in ms
(inf for an illegal config). The problem is read from the kernel's arguments (``problem_from_kernel_args``); the
hardware from ``IOSIM_HARDWARE``, else the current CUDA device's name, else h100.

Nothing here imports triton or torch at module level.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from iosim.errors import IosimError
from iosim.hwprofile import Hardware, load_hardware
from iosim.problem import KernelConfig, Problem

PRUNE_TOP_K = 4
DEFAULT_HARDWARE = "h100"

# --- configurations as triton.Config-style JSON -------------------------------------------------------------------


def config_entries(hw: Hardware, problem: Problem, algorithm: str = "flash2", *, top: int = 5,
                   path: str | None = None, params: Mapping | None = None) -> list[dict]:
    """The ``top`` fastest legal configurations as ``triton.Config(kwargs, num_warps, num_stages, num_ctas, maxnreg)``
    fields, plus an ``iosim`` block (predicted time, bound, rank, why slower). params: the algorithm's method
    parameters (a sparse family's density, seed, …; ``iosim.tiles.candidates``), echoed in the ``iosim`` block."""
    from iosim.tiles import choose
    if top < 1:
        raise IosimError(f"top must be at least 1, got {top}")
    ch = choose(hw, problem, algorithm, path=path, **({"params": dict(params)} if params else {}))
    extra = {"params": ch.to_dict()["params"]} if ch.params else {}
    out = []
    for rank, c in enumerate(ch.ranked[:top], 1):
        out.append({"kwargs": {"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, "num_warps": c.num_warps,
                    "num_stages": c.num_stages, "num_ctas": 1, "maxnreg": None,
                    "iosim": {"rank": rank, "predicted_time_s": c.time_s, "bound": c.estimate.bound,
                              "hardware": hw.name, "algorithm": algorithm, **extra, "path": ch.path,
                              "why": c.reason}})
    return out


def decode_entries(hw: Hardware, problem: Problem, *, top: int = 5) -> list[dict]:
    """The ``top`` fastest (num_splits, block_n) of FA2's split-KV decode (``iosim.tiles.choose_decode``): kwargs
    NUM_SPLITS, BLOCK_N (kBlockM 64, 4 warps, one stage), the reason, and FA2's own heuristic choice with its reason."""
    from iosim.tiles import choose_decode
    if top < 1:
        raise IosimError(f"top must be at least 1, got {top}")
    ch = choose_decode(hw, problem)
    fa2 = {"num_splits": ch.fa2.num_splits, "block_n": ch.fa2.block_n, "predicted_time_s": ch.fa2.time_s,
           "why": ch.fa2.reason}
    return [{"kwargs": {"NUM_SPLITS": c.num_splits, "BLOCK_M": 64, "BLOCK_N": c.block_n}, "num_warps": 4,
             "num_stages": 1, "num_ctas": 1, "maxnreg": None,
             "iosim": {"rank": rank, "pass": "fwd", "mode": "decode", "predicted_time_s": c.time_s,
                       "hardware": hw.name, "algorithm": "splitkv", "gqa_packed": ch.packed, "why": c.reason,
                       "fa2": fa2}} for rank, c in enumerate(ch.ranked[:top], 1)]


def backward_entries(hw: Hardware, problem: Problem, algorithm: str = "flash2", *, top: int = 5,
                     kernel: str = "fa2") -> list[dict]:
    """The ``top`` fastest backward tiles (``iosim.tiles.choose_bwd``) with reasons, ``kernel``'s own tiles beside
    and the sequence-parallel comparison."""
    from iosim.tiles import choose_bwd
    if top < 1:
        raise IosimError(f"top must be at least 1, got {top}")
    ch = choose_bwd(hw, problem, algorithm, kernel=kernel)
    f = ch.fa2
    own = {"BLOCK_M": f.block_m, "BLOCK_N": f.block_n, "num_warps": f.num_warps, "num_stages": f.num_stages,
           "predicted_time_s": f.time_s if f.legal else None, "why": f.reason}
    return [{"kwargs": {"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, "num_warps": c.num_warps,
             "num_stages": c.num_stages, "num_ctas": 1, "maxnreg": None,
             "iosim": {"rank": rank, "pass": "bwd", "predicted_time_s": c.time_s, "bound": c.estimate.bound,
                       "hardware": hw.name, "algorithm": "flash2_bwd", "why": c.reason, kernel: own,
                       "sequence_parallel": ch.seq_parallel}} for rank, c in enumerate(ch.ranked[:top], 1)]


def persistent_entries(hw: Hardware, problem: Problem, kernel: str, *, top: int = 5) -> list[dict]:
    """The ``top`` fastest knobs of a persistent preset (``iosim.tiles.choose_persistent``: fa3, cudnn, fa4, lean):
    kwargs BLOCK_M, BLOCK_N, NUM_WORKERS (CTAs launched), num_ctas = the cluster, the workers, cluster, scheduler
    order and the reason, with the preset's own launch and the knobs its model fixes."""
    from iosim.tiles import choose_persistent
    if top < 1:
        raise IosimError(f"top must be at least 1, got {top}")
    ch = choose_persistent(hw, problem, kernel)

    def knobs(c) -> dict:
        return {"block_m": c.block_m, "block_n": c.block_n, "workers": c.workers, "persistent": c.persistent,
                "cluster": c.cluster, "order": c.order}
    own = knobs(ch.default) | {"predicted_time_s": ch.default.time_s, "why": ch.default.reason}
    return [{"kwargs": {"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "NUM_WORKERS": c.workers}, "num_warps": c.num_warps,
             "num_stages": c.num_stages, "num_ctas": c.cluster, "maxnreg": None,
             "iosim": {"rank": rank, "pass": "fwd", "mode": "persistent", "kernel": kernel, "predicted_time_s": c.time_s,
                       "bound": c.estimate.bound, "hardware": hw.name, "path": ch.path, **knobs(c), "why": c.reason,
                       "default": own, "fixed_by_model": ch.fixed}} for rank, c in enumerate(ch.ranked[:top], 1)]


def to_triton_configs(entries: Sequence[Mapping]) -> list:
    """``triton.Config`` objects from ``config_entries`` output (needs triton)."""
    try:
        import triton
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise IosimError("to_triton_configs needs triton (pip install 'iosim[gpu]')") from e
    return [triton.Config(dict(e["kwargs"]), num_warps=e["num_warps"], num_stages=e["num_stages"]) for e in entries]


# --- reading the problem from a kernel's arguments ----------------------------------------------------------------

_ALIASES = {
    "batch": ("Z", "BATCH", "B", "batch", "Z_DIM"),
    "heads": ("H", "NUM_HEADS", "H_Q", "heads", "num_heads"),
    "kv_heads": ("H_KV", "NUM_KV_HEADS", "kv_heads", "num_kv_heads"),
    "seq_q": ("N_CTX", "N_CTX_Q", "SEQ_Q", "SEQ_LEN", "seq_q", "seq_len", "Q_LEN"),
    "seq_kv": ("N_CTX_KV", "SEQ_KV", "seq_kv", "KV_LEN"),
    "head_dim": ("HEAD_DIM", "BLOCK_DMODEL", "D", "head_dim", "D_HEAD"),
}
_TENSOR_NAMES = ("q", "Q", "desc_q", "query", "k", "K", "desc_k")
_TORCH_DTYPES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32",
                 "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "float8_e4m3fnuz": "fp8", "float8_e5m2fnuz": "fp8"}


def _dtype_of(v) -> str | None:
    t = getattr(v, "dtype", None)
    if t is None and hasattr(v, "base"):
        t = getattr(v.base, "dtype", None)
    if t is None:
        return None
    return _TORCH_DTYPES.get(str(t).replace("torch.", "").replace("tl.", ""))


def problem_from_kernel_args(args: Mapping[str, Any]) -> Problem:
    """A Problem from a Triton kernel's named arguments (names of the Triton fused-attention tutorial and common
    aliases; sizes may also come from a [B, H, N, d] q tensor). causal: CAUSAL/causal/IS_CAUSAL, or STAGE == 3
    (the tutorial). dtype: of q (or its TensorDescriptor's base); FP8_OUTPUT → fp8; default fp16."""
    found: dict[str, int] = {}
    for field, names in _ALIASES.items():
        for n in names:
            if n in args and isinstance(args[n], (int, np.integer)) and not isinstance(args[n], bool):
                found[field] = int(args[n])
                break
    dtype = None
    for n in _TENSOR_NAMES:
        if n in args:
            v = args[n]
            dtype = dtype or _dtype_of(v)
            shape = getattr(v, "shape", None)
            if shape is not None and len(shape) == 4 and n.lower().endswith("q"):
                found.setdefault("batch", int(shape[0]))
                found.setdefault("heads", int(shape[1]))
                found.setdefault("seq_q", int(shape[2]))
                found.setdefault("head_dim", int(shape[3]))
            if shape is not None and len(shape) == 4 and n.lower().endswith("k"):
                found.setdefault("kv_heads", int(shape[1]))
                found.setdefault("seq_kv", int(shape[2]))
    if args.get("FP8_OUTPUT"):
        dtype = "fp8"
    missing = [f for f in ("batch", "heads", "seq_q", "head_dim") if f not in found]
    if missing:
        raise IosimError("cannot read the attention problem from the kernel arguments: missing "
                         + ", ".join(f"{m} (one of {', '.join(_ALIASES[m])})" for m in missing))
    causal = bool(args.get("CAUSAL", args.get("causal", args.get("IS_CAUSAL", False)))) or args.get("STAGE") == 3
    heads = found["heads"]
    return Problem(found["batch"], heads, found.get("kv_heads", heads), found["seq_q"],
                   found.get("seq_kv", found["seq_q"]), found["head_dim"], dtype or "fp16", causal)


def _detect_hardware() -> str:
    env = os.environ.get("IOSIM_HARDWARE")
    if env:
        return env
    try:  # pragma: no cover - needs a GPU
        import torch
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name().lower()
            for key in ("h200", "h100", "b200", "a100", "v100"):
                if key in name:
                    return key
    except Exception:
        pass
    return DEFAULT_HARDWARE


def _cfg_fields(cfg) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a triton.Config, a config_entries dict, or flat kwargs."""
    if isinstance(cfg, Mapping):
        kw = cfg.get("kwargs", cfg)
        w, s = cfg.get("num_warps", 4), cfg.get("num_stages", 2)
    else:
        kw, w, s = getattr(cfg, "kwargs", {}), getattr(cfg, "num_warps", 4), getattr(cfg, "num_stages", 2)
    try:
        return int(kw["BLOCK_M"]), int(kw["BLOCK_N"]), int(w), int(s)
    except KeyError as e:
        raise IosimError(f"config {cfg!r} has no {e.args[0]} (iosim hints need BLOCK_M and BLOCK_N)") from None


@lru_cache(maxsize=65536)
def _predict(hw_name: str, algorithm: str, path: str | None, problem: Problem, bm: int, bn: int, w: int, s: int,
             params: tuple = ()):
    """(time_s, reason): time is inf with the reason when the configuration is illegal. params: the method
    parameters as sorted (name, value) pairs (hashable, for the cache)."""
    from iosim.tiles import candidates
    hw = load_hardware(hw_name)
    c = candidates(hw, problem, algorithm, path=path, block_m=(bm,), block_n=(bn,), num_warps=(w,), num_stages=(s,),
                   params=dict(params) or None)[0]
    return (c.time_s if c.legal else math.inf), c.reason


def _params_key(params: Mapping | None) -> tuple:
    """Method parameters as a hashable cache key; one-line error for values that are not (arrays: save a .npy)."""
    key = tuple(sorted((params or {}).items()))
    try:
        hash(key)
    except TypeError:
        raise IosimError("hints: method parameters must be numbers, strings or file paths (save arrays with "
                         "np.save and pass the path)") from None
    return key


def make_perf_model(hardware: str | None = None, algorithm: str = "flash2", path: str | None = None,
                    params: Mapping | None = None) -> Callable:
    """A Triton ``perf_model``: called as f(**named_args, **kwargs, **config.all_kwargs()); returns ms. params: the
    algorithm's method parameters (a sparse family's density, seed, …)."""
    key = _params_key(params)

    def perf_model(**kw) -> float:
        problem = problem_from_kernel_args(kw)
        bm, bn, w, s = _cfg_fields({"kwargs": kw, "num_warps": kw.get("num_warps", 4), "num_stages": kw.get("num_stages", 2)})
        t, _ = _predict(hardware or _detect_hardware(), algorithm, path, problem, bm, bn, w, s, key)
        return t * 1e3

    return perf_model


def make_prune(top_k: int = PRUNE_TOP_K, hardware: str | None = None, algorithm: str = "flash2",
               path: str | None = None, params: Mapping | None = None) -> Callable:
    """A Triton ``early_config_prune``: f(configs, named_args, **kwargs) → at most top_k legal configs, fastest
    first. If none is legal, the first config is kept (autotune needs one) with a warning. params: as
    ``make_perf_model``."""
    if top_k < 1:
        raise IosimError(f"top_k must be at least 1, got {top_k}")
    key = _params_key(params)

    def prune(configs, named_args, **kwargs):
        args = dict(named_args) | dict(kwargs)
        problem = problem_from_kernel_args(args)
        hw = hardware or _detect_hardware()
        scored = []
        for i, cfg in enumerate(configs):
            bm, bn, w, s = _cfg_fields(cfg)
            t, _ = _predict(hw, algorithm, path, problem, bm, bn, w, s, key)
            if math.isfinite(t):
                scored.append((t, i, cfg))
        if not scored:
            warnings.warn(f"iosim.hints.prune: no legal configuration for {problem} on {hw}; keeping the first")
            return list(configs)[:1]
        scored.sort(key=lambda x: (x[0], x[1]))
        return [c for _, _, c in scored[:top_k]]

    return prune


perf_model = make_perf_model()
prune = make_prune()

# --- FlexAttention BlockMask inputs from a block-sparse pattern ---------------------------------------------------


def _as_4d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.bool_:
        raise IosimError(f"{name} must be a boolean numpy array (True = block computed), got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None, None]
    if a.ndim != 4:
        raise IosimError(f"{name} must be [Q_blocks, KV_blocks] or [B, H, Q_blocks, KV_blocks], got shape {a.shape}")
    return a


def _rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    num = m.sum(-1).astype(np.int32)
    # stable argsort of ~m: the True columns first, ascending, then the rest (what create_block_mask stores)
    idx = np.argsort(~m, axis=-1, kind="stable").astype(np.int32)
    return num, idx


def block_mask_inputs(mask: np.ndarray, full: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """FlexAttention ``BlockMask.from_kv_blocks`` inputs from a boolean block pattern.

    mask: [Qb, Kb] or [B, H, Qb, Kb], True where the block is computed. full: optional same-shape boolean marking
    blocks that need no mask_mod (subset of mask); then ``kv_*`` hold only the partial blocks (mask & ~full) and
    ``full_kv_*`` the full ones, as ``create_block_mask(..., separate_full_blocks=True)`` does.
    Returns int32 arrays kv_num_blocks [B, H, Qb], kv_indices [B, H, Qb, Kb] (valid indices first, ascending)
    and, with ``full``, full_kv_num_blocks / full_kv_indices.
    """
    m = _as_4d(mask, "mask")
    if full is None:
        num, idx = _rows(m)
        return {"kv_num_blocks": num, "kv_indices": idx}
    f = _as_4d(full, "full")
    if f.shape != m.shape:
        raise IosimError(f"full has shape {f.shape}, mask {m.shape}: they must match")
    if np.any(f & ~m):
        raise IosimError("full marks blocks that mask leaves out: full must be a subset of mask")
    num, idx = _rows(m & ~f)
    fnum, fidx = _rows(f)
    return {"kv_num_blocks": num, "kv_indices": idx, "full_kv_num_blocks": fnum, "full_kv_indices": fidx}


def dense_from_inputs(kv_num_blocks: np.ndarray, kv_indices: np.ndarray, full_kv_num_blocks: np.ndarray | None = None,
                      full_kv_indices: np.ndarray | None = None) -> np.ndarray:
    """The boolean [B, H, Qb, Kb] pattern back from BlockMask inputs (partial ∪ full); the inverse of
    ``block_mask_inputs``."""
    num, idx = np.asarray(kv_num_blocks), np.asarray(kv_indices)
    out = np.zeros(idx.shape, dtype=bool)
    for n, ix in ((num, idx), (full_kv_num_blocks, full_kv_indices)):
        if n is None:
            continue
        n, ix = np.asarray(n), np.asarray(ix)
        valid = np.arange(ix.shape[-1]) < n[..., None]
        b, h, q, j = np.nonzero(valid)
        out[b, h, q, ix[b, h, q, j]] = True
    return out


def causal_block_pattern(seq_q: int, seq_kv: int, block_q: int = 128, block_kv: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(mask, full) block patterns of bottom-right-aligned causal attention: a block is computed if any query row
    r sees any key c ≤ r + seq_kv − seq_q, and full if every one does."""
    if min(seq_q, seq_kv, block_q, block_kv) < 1:
        raise IosimError("sizes and block sizes must be positive")
    qb, kb = -(-seq_q // block_q), -(-seq_kv // block_kv)
    off = seq_kv - seq_q
    r_lo = np.arange(qb) * block_q
    r_hi = np.minimum(r_lo + block_q, seq_q) - 1
    c_lo = np.arange(kb) * block_kv
    c_hi = np.minimum(c_lo + block_kv, seq_kv) - 1
    mask = c_lo[None, :] <= (r_hi[:, None] + off)
    full = c_hi[None, :] <= (r_lo[:, None] + off)
    return mask, full


def to_flex_block_mask(mask: np.ndarray, full: np.ndarray | None = None, block_size: int = 128, mask_mod=None):
    """A torch ``BlockMask`` via ``BlockMask.from_kv_blocks`` (needs torch ≥ 2.5)."""
    try:
        import torch
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise IosimError("to_flex_block_mask needs torch with FlexAttention (torch >= 2.5)") from e
    d = {k: torch.from_numpy(v) for k, v in block_mask_inputs(mask, full).items()}
    return BlockMask.from_kv_blocks(d["kv_num_blocks"], d["kv_indices"], d.get("full_kv_num_blocks"),
                                    d.get("full_kv_indices"), BLOCK_SIZE=block_size, mask_mod=mask_mod)
