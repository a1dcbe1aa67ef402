"""``iosim bounds``: an algorithm's symbolic IO, its theorems (regime, asymptotic class, certified constants) and,
with concrete sizes, the numeric IO against the best lower bound for any algorithm.

    iosim bounds --algorithm flash1 [--json] [--latex]
    iosim bounds --algorithm flash1 --seq-q 4096 --head-dim 64 --sram-bytes 65536
    iosim bounds --mask sliding:1024 --seq-q 8192 --head-dim 64 --sram-bytes 65536
    iosim bounds --mask document:4096,2048,2048 [--causal]

Sizes use ``iosim predict``'s flag names. M in the theorems is SRAM in elements (FlashAttention §3.1); with
concrete sizes the lower bound uses the schedule's own fast memory (Σ of its on-chip buffers, in elements).
"""

from __future__ import annotations

import argparse
import json
from typing import IO

import sympy as sp

from iosim.errors import IosimError
from iosim.problem import DTYPE_BYTES, KernelConfig, Problem

COMMAND = "bounds"

SAHA_YE_SUMMARY = ("any exact algorithm with standard matmul: Θ(min(N²d/√M, N²d²/M)) — Saha & Ye 2024 Thm 3.1 "
                   "(M ≥ d²: Lemma 3.4, §3.1; M < d²: Thm 3.5 + Thm 3.7, §3.2; crossover M = d²)")

TILE_RULES = {
    "flash1": "B_c = ceil(M/(4d)), B_r = min(B_c, d)  (FA Algorithm 1, line 1)",
    "flash1_bwd": "B_c = ceil(M/(4d)), B_r = min(B_c, d)  (FA Algorithm 4, lines 2-4)",
    "square_tiling": "B_t = floor(sqrt(M/4))  (Saha & Ye Algorithm 1, line 1)",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(COMMAND, help="symbolic IO, theorems with constants, and lower bounds of an algorithm")
    p.add_argument("--algorithm", default=None, help="algorithm family (see `iosim algorithms`), or flash1_bwd "
                   "(default flash1; with --mask block_sparse, FA2's loop over the mask's blocks)")
    p.add_argument("--mask", default=None, metavar="SPEC",
                   help="structured mask: sliding:W (causal window of W keys) or document:L1,L2,... (--causal: "
                        "causal within each document); IO of FA2's loop order (iosim.mask_bounds)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--latex", action="store_true", help="print expressions as LaTeX")
    p.add_argument("--causal", action="store_true", help="the causal variant of the expression")
    g = p.add_argument_group("concrete sizes (give --seq-q to evaluate)")
    g.add_argument("--hardware", default="h100", help="profile for the SRAM size when --sram-bytes is not given")
    g.add_argument("--batch", default=1)
    g.add_argument("--heads", default=1)
    g.add_argument("--kv-heads", default=None, help="default = --heads")
    g.add_argument("--seq-q", default=None)
    g.add_argument("--seq-kv", default=None, help="default = --seq-q")
    g.add_argument("--head-dim", default=128)
    g.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    g.add_argument("--block-m", default=None)
    g.add_argument("--block-n", default=None)
    g.add_argument("--num-stages", type=int, default=2)
    g.add_argument("--sram-bytes", default=None, help="on-chip memory per CTA (default: the hardware's)")
    return p


def _fmt(e, latex: bool) -> str:
    return sp.latex(e) if latex else sp.sstr(e)


def _bound_str(b, f, g, latex: bool) -> str | None:
    if b is None:
        return None
    return _fmt(b.expr, latex)


def describe(algorithm: str, causal: bool = False, latex: bool = False, concrete_only_ok: bool = False) -> dict:
    """Everything ``iosim bounds`` prints without sizes, as a JSON-ready dict.

    Families whose loops depend on data (block masks) or on concrete sizes (split counts) have no symbolic IO:
    with ``concrete_only_ok`` they get io_bytes = None (the concrete part still counts them), else IosimError.
    """
    from iosim import symbolic as S
    from iosim.registry import get
    if algorithm != "flash1_bwd":
        get(algorithm)  # unknown names fail here, with the list of known ones
        try:
            S.symbolic_io(algorithm, causal=causal)
        except IosimError as err:
            if not concrete_only_ok:
                raise IosimError(f"{err}; give concrete sizes (--seq-q …) to count it") from None
            return {"algorithm": algorithm, "causal": causal, "io_bytes": None, "io_elements": None,
                    "tile_rule": None, "theorems": [], "lower_bounds_any_algorithm": SAHA_YE_SUMMARY,
                    "notes": [f"no symbolic IO: {err}"]}
    if algorithm == "flash1_bwd":
        if causal:
            raise IosimError("flash1_bwd: only the non-causal Algorithm 4 is modelled; drop --causal")
        sio = S.symbolic_flash1_backward()
    else:
        sio = S.symbolic_io(algorithm, causal=causal)
    ths = [t for t in S.theorems() if t.algorithm == algorithm]
    if algorithm == "flash1":
        ths = [t for t in S.theorems() if t.algorithm in ("flash1",)]
    out = {
        "algorithm": algorithm,
        "causal": causal,
        "units": {"io_bytes": "bytes; e = bytes per element of the problem dtype, statistics fp32 (4 bytes)",
                  "io_elements": "elements (FlashAttention's HBM accesses)", "M": "SRAM in elements"},
        "io_bytes": _fmt(sio.io_bytes, latex),
        "io_elements": _fmt(sio.io_elements, latex),
        "read_bytes_by_tensor": {t: _fmt(v, latex) for t, v in sio.tensor_bytes("read").items()},
        "write_bytes_by_tensor": {t: _fmt(v, latex) for t, v in sio.tensor_bytes("write").items()},
        "tile_rule": TILE_RULES.get(algorithm),
        "theorems": [{
            "key": t.key, "title": t.title, "source": t.source, "regime": list(t.regime),
            "asymptotic": t.asymptotic, "quantity_elements": _fmt(t.quantity, latex),
            "lower": _bound_str(t.lower, t.f, t.g, latex), "upper": _bound_str(t.upper, t.f, t.g, latex),
            "constants": {"lower": None if t.lower is None else [str(t.lower.c_f), str(t.lower.c_g)],
                          "upper": None if t.upper is None else [str(t.upper.c_f), str(t.upper.c_g)]},
            "f": _fmt(t.f, latex), "g": _fmt(t.g, latex), "certified": t.certified, "note": t.note,
        } for t in ths],
        "lower_bounds_any_algorithm": SAHA_YE_SUMMARY,
        "notes": list(sio.notes),
    }
    return out


def evaluate_concrete(algorithm: str, problem: Problem, config: KernelConfig, hw) -> dict:
    """Numeric IO (symbolic expression and engine count, which must agree), fast memory, lower bound, ratio."""
    from iosim import symbolic as S
    from iosim.counts import count
    sio = None
    if algorithm == "flash1_bwd":
        from iosim.models import flash1
        br, bc, m = flash1.tiles(problem, config, hw)
        cfg = config.with_tiles(br, bc)
        sched = S.flash1_backward_schedule(problem, cfg)
        sio = S.symbolic_flash1_backward()
        env = S.bind("flash1", problem, config, hw)
    else:
        from iosim.registry import get
        sched = get(algorithm).build(problem, config, hw)
        try:
            sio = S.symbolic_io(algorithm, causal=bool(problem.causal), gqa=problem.heads != problem.kv_heads)
            env = S.bind(algorithm, problem, config, hw)
        except IosimError:
            sio, env = None, {}
    c = count(sched)
    engine_bytes = c.sm_read_bytes + c.sm_write_bytes
    sym_bytes = S.evaluate_int(sio.io_bytes, env) if sio is not None else engine_bytes
    io_el = S.schedule_io_elements(sched, c)
    m = S.schedule_fast_memory_elements(sched)
    lb = S.lower_bounds(problem, m)
    tm, tn = S.tile_symbols(algorithm if algorithm != "flash1_bwd" else "flash1")
    tiles = {"block_m": env.get(tm, sched.config.block_m), "block_n": env.get(tn, sched.config.block_n)}
    return {
        "problem": {"batch": problem.batch, "heads": problem.heads, "kv_heads": problem.kv_heads,
                    "seq_q": problem.seq_q, "seq_kv": problem.seq_kv, "head_dim": problem.head_dim,
                    "dtype": problem.dtype, "causal": problem.causal},
        "tiles": tiles, "symbolic": sio is not None,
        "io_bytes": sym_bytes, "engine_io_bytes": engine_bytes, "io_elements": io_el,
        "fast_memory_elements": m,
        "lower_bound_elements": {"trivial": lb.trivial, "saha_ye_large": lb.saha_ye_large,
                                 "matmul_small": lb.matmul_small, "best": lb.best, "binding": lb.binding},
        "ratio_io_to_lower_bound": io_el / lb.best if lb.best > 0 else None,
        "regime": "large cache (M >= d^2)" if m >= problem.head_dim ** 2 else "small cache (M < d^2)",
    }


def _problem(args) -> tuple[Problem, KernelConfig]:
    kv = args.kv_heads if args.kv_heads is not None else args.heads
    p = Problem(args.batch, args.heads, kv, args.seq_q, args.seq_kv if args.seq_kv is not None else args.seq_q,
                args.head_dim, args.dtype, args.causal)
    cfg = KernelConfig(block_m=args.block_m, block_n=args.block_n, num_stages=args.num_stages, sram_bytes=args.sram_bytes)
    return p, cfg


MASK_ALGORITHMS = ("block_sparse", "flash2")


def parse_mask(spec: str, causal: bool = False):
    """sliding:W or document:L1,L2,... → ``iosim.mask_bounds.SlidingWindow`` / ``Documents``."""
    from iosim.mask_bounds import Documents, SlidingWindow
    kind, _, rest = spec.partition(":")
    try:
        values = tuple(int(x) for x in rest.split(","))
    except ValueError:
        values = ()
    if kind == "sliding" and len(values) == 1:
        return SlidingWindow(values[0])
    if kind == "document" and values:
        return Documents(values, causal)
    raise IosimError(f"bad --mask {spec!r}; use sliding:W (e.g. sliding:4096) or document:L1,L2,... "
                     "(e.g. document:4096,4096)")


def mask_io(mask):
    from iosim import mask_bounds as mb
    return mb.sliding_io() if isinstance(mask, mb.SlidingWindow) else mb.documents_io(mask)


def describe_mask(mask, latex: bool = False) -> dict:
    """What ``iosim bounds --mask`` prints without sizes (``iosim.mask_bounds.MaskIO``)."""
    io = mask_io(mask)
    f = (lambda e: None if e is None else _fmt(e, latex))
    return {"mask": mask.spec, "algorithm": "block_sparse", "io_bytes": f(io.exact_bytes),
            "io_elements": f(io.exact_elements), "closed_form_elements": f(io.closed_elements),
            "at_tile_rule_elements": f(io.tile_rule_elements), "upper_elements": f(io.upper_elements),
            "theta": io.theta, "lower_bound_elements": f(io.lower_elements), "lower_class": io.lower_class,
            "conditions": list(io.conditions)}


def _mask_schedule(mask, problem: Problem, config: KernelConfig, hw):
    """(block_m, block_n, block_sparse schedule of the mask's block mask); without --block-m/--block-n FA2's tiles
    for the head dim, halved until they fit the on-chip memory."""
    from iosim.mask_bounds import block_mask
    from iosim.models.flash2 import default_tiles
    from iosim.registry import get
    dm, dn = default_tiles(problem.head_dim)
    bm, bn = config.block_m or dm, config.block_n or dn
    while True:
        try:
            return bm, bn, get("block_sparse").build(problem, config.with_tiles(bm, bn), hw,
                                                     block_mask=block_mask(mask, problem.seq_q, bm, bn))
        except IosimError:
            if config.block_m or config.block_n or min(bm, bn) <= 16:
                raise
            bm, bn = bm // 2, bn // 2


def evaluate_mask(mask, problem: Problem, config: KernelConfig, hw) -> dict:
    """The mask's symbolic IO at these sizes against the counter's count of ``block_sparse`` with its block mask."""
    from iosim import mask_bounds as mb
    from iosim import symbolic as S
    from iosim.counts import count
    if problem.seq_kv != problem.seq_q:
        raise IosimError("--mask models self-attention: drop --seq-kv or set it equal to --seq-q")
    bm, bn, sched = _mask_schedule(mask, problem, config, hw)
    c = count(sched)
    engine = c.sm_read_bytes + c.sm_write_bytes
    io = mask_io(mask)
    env = {S.BATCH: problem.batch, S.HEADS: problem.heads, S.N: problem.seq_q, S.D: problem.head_dim,
           S.ELEM_BYTES: problem.elem_bytes, S.BLOCK_M: bm, S.BLOCK_N: bn}
    if isinstance(mask, mb.SlidingWindow):
        env[mb.window_symbol()] = mask.window
    aligned = mb.closed_form_exact(mask, problem.seq_q, bm, bn)
    sym = S.evaluate_int(io.exact_bytes, env)
    m = S.schedule_fast_memory_elements(sched)
    lb = mb.lower_bounds(mask, problem.seq_q, problem.head_dim, m, problem.batch, problem.heads, problem.kv_heads)
    io_el = S.schedule_io_elements(sched, c)
    return {"problem": {"batch": problem.batch, "heads": problem.heads, "kv_heads": problem.kv_heads,
                        "seq": problem.seq_q, "head_dim": problem.head_dim, "dtype": problem.dtype},
            "tiles": {"block_m": bm, "block_n": bn}, "aligned": aligned, "tiles_visited": sched.notes[0],
            "symbolic_io_bytes": sym, "engine_io_bytes": engine, "ratio_engine_to_symbolic": engine / sym,
            "io_elements": io_el,
            "closed_form_elements": int(S.evaluate(io.closed_elements, env)) if aligned else None,
            "upper_elements": None if io.upper_elements is None else S.evaluate_int(io.upper_elements, env),
            "fast_memory_elements": m,
            "lower_bound_elements": {"trivial": lb.trivial, "saha_ye_large": lb.saha_ye_large,
                                     "matmul_small": lb.matmul_small, "best": lb.best, "binding": lb.binding},
            "ratio_io_to_lower_bound": io_el / lb.best if lb.best > 0 else None}


def _write_mask(info: dict, out: IO[str]) -> None:
    out.write(f"mask {info['mask']}: IO between SRAM and HBM of FA2's loop over the mask's blocks (block_sparse)\n")
    for key, label in (("io_bytes", "bytes (exact)"), ("io_elements", "elements (exact)"),
                       ("closed_form_elements", "elements, closed form"), ("at_tile_rule_elements",
                       "elements at B_r = M/(4d)"), ("upper_elements", "elements, upper bound")):
        if info[key] is not None:
            out.write(f"  {label} = {info[key]}\n")
    out.write(f"  class: {info['theta']}\n  lower bound (any exact algorithm), elements: "
              f"{info['lower_bound_elements']}\n    {info['lower_class']}\n")
    for c in info["conditions"]:
        out.write(f"  note: {c}\n")
    c = info.get("concrete")
    if c:
        pr = c["problem"]
        out.write(f"at B={pr['batch']} H={pr['heads']} Hkv={pr['kv_heads']} N={pr['seq']} d={pr['head_dim']} "
                  f"{pr['dtype']}, tiles {c['tiles']['block_m']}x{c['tiles']['block_n']} "
                  f"({'aligned' if c['aligned'] else 'not aligned'}; {c['tiles_visited']}):\n")
        out.write(f"  symbolic IO = {c['symbolic_io_bytes']:,} bytes\n  counter IO  = {c['engine_io_bytes']:,} bytes "
                  f"(ratio counter / symbolic = {c['ratio_engine_to_symbolic']:.4f}) = {c['io_elements']:,} elements\n")
        if c["closed_form_elements"] is not None:
            out.write(f"  closed form = {c['closed_form_elements']:,} elements\n")
        if c["upper_elements"] is not None:
            out.write(f"  upper bound = {c['upper_elements']:,} elements\n")
        lb = c["lower_bound_elements"]
        out.write(f"  fast memory M = {c['fast_memory_elements']:,} elements; lower bound = {lb['best']:,.0f} "
                  f"elements ({lb['binding']}); ratio IO / lower bound = {c['ratio_io_to_lower_bound']:.3f}\n")


def run_mask(args, out: IO[str]) -> int:
    if args.algorithm not in (None,) + MASK_ALGORITHMS:
        raise IosimError(f"--mask is modelled for FA2's loop order; use --algorithm block_sparse (or flash2), "
                         f"not {args.algorithm}")
    mask = parse_mask(args.mask, args.causal)
    info = describe_mask(mask, args.latex)
    if args.seq_q is not None:
        hw = None
        if args.sram_bytes is None:
            from iosim.hwprofile import load_hardware
            hw = load_hardware(args.hardware)
        problem, cfg = _problem(args)
        info["concrete"] = evaluate_mask(mask, problem, cfg, hw)
    if args.json:
        out.write(json.dumps(info, indent=1, default=str) + "\n")
    else:
        _write_mask(info, out)
    return 0


def run(args, out: IO[str]) -> int:
    if args.mask is not None:
        return run_mask(args, out)
    args.algorithm = args.algorithm or "flash1"
    info = describe(args.algorithm, args.causal, args.latex, concrete_only_ok=args.seq_q is not None)
    if args.seq_q is not None:
        hw = None
        if args.sram_bytes is None:
            from iosim.hwprofile import load_hardware
            hw = load_hardware(args.hardware)
        problem, cfg = _problem(args)
        info["concrete"] = evaluate_concrete(args.algorithm, problem, cfg, hw)
        if info["concrete"]["io_bytes"] != info["concrete"]["engine_io_bytes"]:
            raise IosimError(f"symbolic IO {info['concrete']['io_bytes']} != engine count "
                             f"{info['concrete']['engine_io_bytes']} (a bug in iosim.symbolic; please report)")
    if args.json:
        out.write(json.dumps(info, indent=1, default=str) + "\n")
        return 0
    out.write(f"{info['algorithm']}{' (causal)' if info['causal'] else ''}: IO between SRAM and HBM\n")
    if info["io_bytes"] is not None:
        out.write(f"  bytes    = {info['io_bytes']}\n")
        out.write(f"  elements = {info['io_elements']}\n")
        out.write("  (B batch, H heads, N_q/N_kv sequence, d head dim, B_r/B_c tiles, e bytes per element; "
                  "statistics fp32; M = SRAM in elements)\n")
    if info["tile_rule"]:
        out.write(f"  tile rule: {info['tile_rule']}\n")
    for t in info["theorems"]:
        out.write(f"theorem {t['key']}: {t['title']}\n    source: {t['source']}\n")
        out.write(f"    regime: {'; '.join(t['regime'])}\n    class: {t['asymptotic']}  "
                  f"({'certified' if t['certified'] else 'NOT certified'})\n")
        if t["lower"] is not None:
            out.write(f"    lower: {t['lower']} <= IO_elements\n")
        if t["upper"] is not None:
            out.write(f"    upper: IO_elements <= {t['upper']}\n")
        if t["note"]:
            out.write(f"    note: {t['note']}\n")
    out.write(f"lower bounds: {info['lower_bounds_any_algorithm']}\n")
    for n in info["notes"]:
        out.write(f"  note: {n}\n")
    c = info.get("concrete")
    if c:
        pr = c["problem"]
        out.write(f"at B={pr['batch']} H={pr['heads']} Hkv={pr['kv_heads']} Nq={pr['seq_q']} Nkv={pr['seq_kv']} "
                  f"d={pr['head_dim']} {pr['dtype']}{' causal' if pr['causal'] else ''}, tiles "
                  f"{c['tiles']['block_m']}x{c['tiles']['block_n']}:\n")
        how = f"engine count {c['engine_io_bytes']:,}" if c["symbolic"] else "engine count; no symbolic form"
        out.write(f"  IO = {c['io_bytes']:,} bytes ({how}) = {c['io_elements']:,} elements\n")
        lb = c["lower_bound_elements"]
        out.write(f"  fast memory M = {c['fast_memory_elements']:,} elements ({c['regime']})\n")
        out.write(f"  lower bound = {lb['best']:,.0f} elements ({lb['binding']}; trivial {lb['trivial']:,}, "
                  f"Saha-Ye large-cache {lb['saha_ye_large']:,.0f}, matmul small-cache {lb['matmul_small']:,.0f})\n")
        r = c["ratio_io_to_lower_bound"]
        out.write(f"  ratio IO / lower bound = {r:.3f}\n" if r is not None else "  ratio: -\n")
    return 0
