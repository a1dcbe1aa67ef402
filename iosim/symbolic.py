"""Symbolic IO: every registered algorithm's SRAM ↔ HBM traffic as a sympy expression, derived from its schedule.

The model builders are called with a ``Problem`` whose sizes are sympy symbols (batch B, heads H, KV heads H_kv,
N_q, N_kv, d) and with symbolic tiles (B_r = block_m, B_c = block_n; B_t for the square tiles of
``square_tiling``). The loop nest of the resulting schedule is then summed with sympy, statement by statement:

* a tile's element count is Π extent(span), extent(Span(k, B, L)) = clamp(L − k·B, 0, B) (``iosim.schedule``);
* a loop over k whose only k-dependence is one span with index ±k + c is summed in closed form by telescoping,
  Σ_{k=a}^{b−1} clamp(L − k·B, 0, B) = clamp(b·B, 0, L) − clamp(a·B, 0, L), and clamp(⌈L/B⌉·B, 0, L) = L, so a
  loop over all tiles of an axis contributes exactly L (ragged last tiles included);
* a loop the statement does not depend on multiplies by its trip count max(b − a, 0);
* the GQA head map floor(h/g) over h < g·H_kv becomes g × a sum over KV heads;
* anything else (causal trip counts that depend on an outer loop variable) stays an unevaluated ``sympy.Sum``,
  evaluated exactly by :func:`evaluate` (empty when the upper limit is below the lower one, like ``range``).

Nothing is typed in a second time: the expressions come from the same ``Schedule`` objects ``iosim.counts`` counts,
and ``tests/test_symbolic.py`` checks they are equal to the counts, exactly, for random (also ragged) sizes.

Units: IO is in **bytes** (``io_bytes``) with ``e`` = bytes per element of the problem dtype and fp32 (4 bytes) for
softmax statistics; ``io_elements`` counts every transferred element as 1 (the FlashAttention paper's "HBM
accesses"). M, the SRAM size in the theorems, is in **elements** as in FlashAttention §3.1 (Algorithm 1, line 1)
and Saha & Ye §2.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType
from typing import Callable, Mapping
from unittest import mock

import sympy as sp

from iosim.errors import IosimError
from iosim.expr import Lookup, Table
from iosim.problem import DTYPE_BYTES, STAT_BYTES, KernelConfig, Problem
from iosim.registry import algorithms, get
from iosim.schedule import Load, Loop, Schedule, Span, Store, var


def _size(name: str) -> sp.Symbol:
    return sp.Symbol(name, positive=True, integer=True)


# The size symbols. g (query heads per KV head) is the symbol ``Problem.group`` uses for symbolic heads.
BATCH, HEADS, KV_HEADS, GROUP = _size("B"), _size("H"), _size("H_kv"), _size("g")
NQ, NKV, D = _size("N_q"), _size("N_kv"), _size("d")
ELEM_BYTES = _size("e")                # bytes per element of the problem dtype
BLOCK_M, BLOCK_N = _size("B_r"), _size("B_c")  # block_m (query rows per tile), block_n (keys per tile)
BLOCK_SQ = _size("B_t")                # square_tiling's B × B tile
SRAM_BYTES = _size("S_sram")           # on-chip bytes per CTA (only where a builder branches on it)
M = _size("M")                         # SRAM size in elements (FA §3.1, Saha & Ye §2.2)
N = _size("N")                         # N_q = N_kv = N in the theorems
SPARSITY = sp.Symbol("s", positive=True)  # fraction of nonzero blocks (FA Prop. 4)

_SYMBOLIC_DTYPE = "fp64"  # 8 bytes ≠ STAT_BYTES: tensors built with 8-byte elements are the problem dtype → e


# --- exact evaluation ----------------------------------------------------------------------------------------

def _frac_floor(x) -> int:
    return math.floor(x) if isinstance(x, Fraction) else int(x)


def _frac_ceil(x) -> int:
    return math.ceil(x) if isinstance(x, Fraction) else int(x)


@lru_cache(maxsize=8192)
def _compile(e: sp.Basic) -> Callable[[Mapping], object]:
    """env → exact value (int or Fraction). Handles the nodes schedules and this module produce, incl. Sum."""
    if e.is_Integer:
        c = int(e)
        return lambda env: c
    if e.is_Rational:
        c = Fraction(int(e.p), int(e.q))
        return lambda env: c
    if e.is_Symbol:
        def sym(env, e=e):
            try:
                return env[e]
            except KeyError:
                raise IosimError(f"no value for symbol {e} (known: {', '.join(sorted(map(str, env)))})") from None
        return sym
    if e is sp.true:
        return lambda env: True
    if e is sp.false:
        return lambda env: False
    if isinstance(e, sp.Add):
        fs = [_compile(a) for a in e.args]
        return lambda env: sum(f(env) for f in fs)
    if isinstance(e, sp.Mul):
        fs = [_compile(a) for a in e.args]

        def mul(env):
            out = 1
            for f in fs:
                out = out * f(env)
            return out
        return mul
    if isinstance(e, sp.Pow) and e.exp.is_Integer:
        fb, k = _compile(e.base), int(e.exp)
        if k >= 0:
            return lambda env: fb(env) ** k
        return lambda env: Fraction(1) / Fraction(fb(env)) ** (-k)
    if isinstance(e, (sp.floor, sp.ceiling)):
        f = _compile(e.args[0])
        return (lambda env: _frac_floor(f(env))) if isinstance(e, sp.floor) else (lambda env: _frac_ceil(f(env)))
    if isinstance(e, (sp.Min, sp.Max)):
        fs = [_compile(a) for a in e.args]
        op = min if isinstance(e, sp.Min) else max
        return lambda env: op(f(env) for f in fs)
    if isinstance(e, sp.Mod):
        fa, fb = _compile(e.args[0]), _compile(e.args[1])
        return lambda env: fa(env) % fb(env)
    if isinstance(e, sp.Sum):
        body = _compile(e.function)
        (v, lo, hi), = e.limits
        flo, fhi = _compile(lo), _compile(hi)

        def summ(env):
            a, b = _frac_ceil(flo(env)), _frac_floor(fhi(env))
            inner = dict(env)
            tot = 0
            for k in range(a, b + 1):  # empty when b < a (range semantics, not Karr's)
                inner[v] = k
                tot += body(inner)
            return tot
        return summ
    if isinstance(e, sp.Piecewise):
        pairs = [(_compile(ex), _compile(c)) for ex, c in e.args]

        def pw(env):
            for fe, fc in pairs:
                if fc(env):
                    return fe(env)
            raise IosimError(f"no branch of {e} holds")
        return pw
    if isinstance(e, (sp.Le, sp.Lt, sp.Ge, sp.Gt, sp.Eq, sp.Ne)):
        fa, fb = _compile(e.lhs), _compile(e.rhs)
        op = {sp.Le: lambda a, b: a <= b, sp.Lt: lambda a, b: a < b, sp.Ge: lambda a, b: a >= b,
              sp.Gt: lambda a, b: a > b, sp.Eq: lambda a, b: a == b, sp.Ne: lambda a, b: a != b}[type(e)]
        return lambda env: op(fa(env), fb(env))
    if isinstance(e, (sp.And, sp.Or)):
        fs = [_compile(a) for a in e.args]
        return (lambda env: all(f(env) for f in fs)) if isinstance(e, sp.And) else (lambda env: any(f(env) for f in fs))
    if isinstance(e, Lookup):
        name, fs = e.args[0], [_compile(a) for a in e.args[1:]]

        def look(env):
            tbl = env.get(name)
            if not isinstance(tbl, Table):
                raise IosimError(f"cannot evaluate {e}: no table {name} bound")
            return int(tbl.array[tuple(int(f(env)) for f in fs)])
        return look
    raise IosimError(f"cannot evaluate symbolic expression {e} (node {type(e).__name__})")


def evaluate(expr, env: Mapping) -> Fraction | int:
    """Exact value of a symbolic IO expression at integer sizes (``env``: Symbol → int, table symbols → Table)."""
    return _compile(sp.sympify(expr))(env)


def evaluate_int(expr, env: Mapping) -> int:
    v = evaluate(expr, env)
    if isinstance(v, Fraction):
        if v.denominator != 1:
            raise IosimError(f"{expr} is not an integer at these sizes ({v})")
        v = v.numerator
    return int(v)


# --- proving simple inequalities -----------------------------------------------------------------------------

def _bound_atoms(expr: sp.Expr, lower: bool) -> sp.Expr | None:
    """A lower (or upper) bound of expr with every floor/ceiling replaced by its argument ± 1, chosen by the sign
    of expr's derivative in that atom (None if a sign is unknown). ⌈x⌉ ∈ [x, x+1), ⌊x⌋ ∈ (x−1, x]."""
    for _ in range(16):
        outer = [a for a in expr.atoms(sp.ceiling, sp.floor)
                 if not any(a in b.args[0].atoms(sp.ceiling, sp.floor) for b in expr.atoms(sp.ceiling, sp.floor))]
        if not outer:
            return expr
        a = outer[0]
        t = sp.Dummy("t", positive=True)
        deriv = sp.diff(expr.xreplace({a: t}), t)
        inc = _sign(deriv)
        if inc is None:
            return None
        x = a.args[0]
        lo, hi = (x, x + 1) if isinstance(a, sp.ceiling) else (x - 1, x)
        pick = (lo if inc > 0 else hi) if lower else (hi if inc > 0 else lo)
        expr = expr.xreplace({a: pick})
    return None


def _sign(e: sp.Expr) -> int | None:
    """+1 if e ≥ 0, −1 if e ≤ 0 (all symbols positive), else None."""
    e = sp.together(sp.expand(e))
    if e.is_nonnegative:
        return 1
    if e.is_nonpositive:
        return -1
    num, den = sp.fraction(e)
    sn, sd = _poly_sign(num), _poly_sign(den)
    if sn is None or sd is None:
        return None
    return sn * sd


def _poly_sign(e: sp.Expr) -> int | None:
    e = sp.expand(e)
    if e.is_number:
        return 1 if e >= 0 else -1
    if e.has(sp.Min, sp.Max, sp.floor, sp.ceiling, sp.Sum, sp.Piecewise, Lookup):
        return None
    try:
        poly = sp.Poly(e, *sorted(e.free_symbols, key=str))
    except sp.polys.polyerrors.PolynomialError:
        return None
    coeffs = poly.coeffs()
    if all(c >= 0 for c in coeffs):
        return 1
    if all(c <= 0 for c in coeffs):
        return -1
    return None


def provably_nonnegative(e: sp.Expr) -> bool:
    """True if e ≥ 0 for all positive values of its symbols (floors/ceilings bounded by their arguments)."""
    e = sp.sympify(e)
    if e.is_nonnegative:
        return True
    if e.has(sp.Min, sp.Max, sp.Sum, sp.Piecewise, Lookup):
        return False
    lb = _bound_atoms(e, lower=True)
    return lb is not None and _sign(lb) == 1


def _clamp(x: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    """clamp(x, lo, hi), simplified when the order is provable (e.g. clamp(⌈L/B⌉·B, 0, L) = L)."""
    x, lo, hi = sp.sympify(x), sp.sympify(lo), sp.sympify(hi)
    if provably_nonnegative(lo - x):
        return lo
    if provably_nonnegative(x - hi):
        return hi
    if provably_nonnegative(x - lo) and provably_nonnegative(hi - x):
        return x
    return sp.Min(sp.Max(x, lo), hi)


# --- summing a schedule ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Term:
    """coeff × Π extent(span) elements."""

    coeff: sp.Expr
    spans: tuple[Span, ...]


def _free(e) -> set:
    return sp.sympify(e).free_symbols


def _span_free(s: Span) -> set:
    return _free(s.index) | _free(s.block) | _free(s.length)


def _extent(s: Span) -> sp.Expr:
    return _clamp(sp.sympify(s.length) - sp.sympify(s.index) * s.block, 0, s.block)


def _affine(index, v):
    e = sp.expand(sp.sympify(index))
    a = e.coeff(v)
    c = sp.expand(e - a * v)
    if a in (1, -1) and v not in c.free_symbols:
        return int(a), c
    return None


def _trips(lo, hi) -> sp.Expr:
    t = sp.sympify(hi) - sp.sympify(lo)
    return t if provably_nonnegative(t) else sp.Max(t, 0)


def _sum_term(t: _Term, v: sp.Symbol, lo, hi) -> list[_Term]:
    """Σ_{v=lo}^{hi−1} t, in closed form where the loop structure allows it."""
    dep = [s for s in t.spans if v in _span_free(s)]
    coeff_dep = v in _free(t.coeff)
    if not coeff_dep and not dep:
        return [_Term(t.coeff * _trips(lo, hi), t.spans)]
    if not coeff_dep and len(dep) == 1 and v not in _free(dep[0].block) | _free(dep[0].length):
        s = dep[0]
        rest = tuple(x for x in t.spans if x is not s)
        aff = _affine(s.index, v)
        if aff is not None:
            a, off = aff
            kb, ka = (hi + off, lo + off) if a == 1 else (off - lo + 1, off - hi + 1)
            tele = _clamp(kb * s.block, 0, s.length) - _clamp(ka * s.block, 0, s.length)
            if not provably_nonnegative(sp.sympify(hi) - lo):
                tele = sp.Piecewise((tele, sp.StrictGreaterThan(hi, lo)), (0, True))
            return [_Term(t.coeff * tele, rest)]
        # GQA: index floor(v/c) with v over [0, c·K) → c × Σ_{u<K} (index u)
        idx = sp.sympify(s.index)
        if isinstance(idx, sp.floor) and sp.sympify(lo) == 0:
            arg = sp.together(idx.args[0])
            num, den = sp.fraction(arg)
            if num == v and v not in den.free_symbols:
                k = sp.simplify(sp.sympify(hi) / den)
                if sp.fraction(sp.together(k))[1] == 1:
                    u = sp.Dummy(f"{v}_div", integer=True, nonnegative=True)
                    t2 = _Term(t.coeff * den, rest + (Span(u, s.block, s.length),))
                    return _sum_term(t2, u, 0, k)
    # general case: an unevaluated Sum over v of the v-dependent factors (spans free of v stay outside)
    const = tuple(s for s in t.spans if v not in _span_free(s))
    body = t.coeff
    for s in t.spans:
        if v in _span_free(s):
            body = body * _extent(s)
    return [_Term(sp.Sum(body, (v, lo, sp.sympify(hi) - 1)), const)]


def _io_terms(stmts, subs: dict) -> dict:
    acc: dict = {}
    for st in stmts:
        if isinstance(st, Loop):
            inner = _io_terms(st.body, subs)
            lo, hi = sp.sympify(st.start).xreplace(subs), sp.sympify(st.stop).xreplace(subs)
            for key, terms in inner.items():
                out = acc.setdefault(key, [])
                for t in terms:
                    out.extend(_sum_term(t, st.var, lo, hi))
        elif isinstance(st, (Load, Store)):
            # an atomic Store (fp32 RED) is a write: SM → L2 bytes, nothing back to the SM (as iosim.counts)
            key = ("read" if isinstance(st, Load) else "write", st.tile.tensor)
            spans = tuple(Span(sp.sympify(s.index).xreplace(subs), sp.sympify(s.block).xreplace(subs),
                               sp.sympify(s.length).xreplace(subs)) for s in st.tile.spans)
            acc.setdefault(key, []).append(_Term(sp.Integer(1), spans))
    return acc


def _total(terms: list[_Term]) -> sp.Expr:
    out = sp.Integer(0)
    for t in terms:
        e = t.coeff
        for s in t.spans:
            e = e * _extent(s)
        out = out + e
    return sp.expand(out) if not out.has(sp.Sum, sp.Piecewise) else out


def kernel_io_elements(schedule: Schedule, subs: dict | None = None) -> dict[str, dict[tuple[str, str], sp.Expr]]:
    """{kernel name: {('read'|'write', tensor): elements}} summed over the kernel's grid and loops."""
    subs = subs or {}
    out = {}
    for k in schedule.kernels:
        body = tuple(k.body)
        for ax in reversed(k.grid):
            body = (Loop(ax.var, 0, sp.sympify(ax.extent).xreplace(subs), body),)
        out[k.name] = {key: _total(terms) for key, terms in _io_terms(body, subs).items()}
    return out


# --- the symbolic problem -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """The discrete choices a symbolic schedule is specialised to: causal mask, GQA (H = g·H_kv) or MHA."""

    causal: bool = False
    gqa: bool = False


def tile_symbols(algorithm: str) -> tuple[sp.Symbol, sp.Symbol]:
    """(block_m, block_n) symbols a family is built with; square_tiling has one square tile B_t."""
    return (BLOCK_SQ, BLOCK_SQ) if algorithm == "square_tiling" else (BLOCK_M, BLOCK_N)


def symbolic_problem(variant: Variant) -> Problem:
    heads = GROUP * KV_HEADS if variant.gqa else HEADS
    kv = KV_HEADS if variant.gqa else HEADS
    return Problem(BATCH, heads, kv, NQ, NKV, D, _SYMBOLIC_DTYPE, variant.causal)


@dataclass(frozen=True)
class SymbolicIO:
    """Elements moved per kernel and tensor, and each tensor's bytes per element (``e`` or 4 for fp32 stats).

    kernels: {kernel: {('read'|'write', tensor): elements}}. All expressions are in the module's size symbols.
    """

    algorithm: str
    variant: Variant
    kernels: Mapping[str, Mapping[tuple[str, str], sp.Expr]]
    elem_bytes: Mapping[str, sp.Expr]
    notes: tuple[str, ...] = field(default=())

    def _total(self, which, tensors, kernels, weight) -> sp.Expr:
        tot = sp.Integer(0)
        for kname, d in self.kernels.items():
            if kernels is not None and kname not in kernels:
                continue
            for (kind, t), v in d.items():
                if (which is None or kind == which) and (tensors is None or t in tensors):
                    tot = tot + v * weight(t)
        return tot

    def elements(self, which: str | None = None, tensors=None, kernels=None) -> sp.Expr:
        """Σ elements over kernels/tensors (which = 'read', 'write' or None for both)."""
        return self._total(which, tensors, kernels, lambda t: 1)

    def bytes(self, which: str | None = None, tensors=None, kernels=None) -> sp.Expr:
        """Σ bytes: elements × each tensor's element size."""
        return self._total(which, tensors, kernels, lambda t: self.elem_bytes[t])

    @property
    def io_bytes(self) -> sp.Expr:
        """SRAM ↔ HBM bytes, reads + writes (what ``Counts.sm_read_bytes + sm_write_bytes`` counts)."""
        return self.bytes()

    @property
    def io_elements(self) -> sp.Expr:
        """Transferred elements, each counted once whatever its dtype (FlashAttention's "HBM accesses")."""
        return self.elements()

    def tensor_bytes(self, which: str) -> dict[str, sp.Expr]:
        out: dict = {}
        for d in self.kernels.values():
            for (kind, t), v in d.items():
                if kind == which:
                    out[t] = out.get(t, 0) + v * self.elem_bytes[t]
        return out


def _elem_bytes_map(schedule: Schedule) -> dict[str, sp.Expr]:
    sym_size = DTYPE_BYTES[_SYMBOLIC_DTYPE]
    return {n: (ELEM_BYTES if t.elem_bytes == sym_size else sp.Integer(t.elem_bytes)) for n, t in schedule.tensors.items()}


def _build(algorithm: str, variant: Variant) -> Schedule:
    bm, bn = tile_symbols(algorithm)
    cfg = KernelConfig(block_m=bm, block_n=bn)
    try:
        return get(algorithm).build(symbolic_problem(variant), cfg, None)
    except IosimError:
        raise
    except Exception as err:  # a builder that cannot take symbolic sizes
        raise IosimError(f"{algorithm}: its schedule builder does not accept symbolic sizes "
                         f"({type(err).__name__}: {err}); make its Python branches skip sympy values") from err


def _from_schedule(algorithm: str, variant: Variant, sched: Schedule) -> SymbolicIO:
    subs = {} if variant.gqa else {GROUP: sp.Integer(1)}  # MHA: kv_head(h) = floor(h/g) with g = 1
    return SymbolicIO(algorithm, variant, MappingProxyType(kernel_io_elements(sched, subs)),
                      MappingProxyType(_elem_bytes_map(sched)))


@lru_cache(maxsize=64)
def symbolic_io(algorithm: str, causal: bool = False, gqa: bool = False) -> SymbolicIO:
    """The IO of ``algorithm`` as sympy expressions, summed from its schedule built on symbolic sizes.

    standard: the builder reads S once when a B_r × N_kv row block fits in SRAM, else twice (two-pass softmax,
    FA §2.2 Algorithm 0 step 2). Both schedules are built (the one-pass one by forcing that predicate) and joined in
    a Piecewise on B_r·N_kv·e ≤ S_sram.
    """
    variant = Variant(causal, gqa)
    if algorithm not in algorithms():
        get(algorithm)  # raises with the known names
    if algorithm == "standard":
        from iosim.models import standard as std
        two = _from_schedule(algorithm, variant, _build(algorithm, variant))
        with mock.patch.object(std, "softmax_one_pass", lambda *a: True):
            one = _from_schedule(algorithm, variant, _build(algorithm, variant))
        cond = sp.Le(BLOCK_M * NKV * ELEM_BYTES, SRAM_BYTES)
        kernels = {}
        for kname in two.kernels:
            keys = set(two.kernels[kname]) | set(one.kernels[kname])
            kernels[kname] = {}
            for key in sorted(keys):
                a, b = one.kernels[kname].get(key, sp.Integer(0)), two.kernels[kname].get(key, sp.Integer(0))
                kernels[kname][key] = a if sp.expand(a - b) == 0 else sp.Piecewise((a, cond), (b, True))
        return replace(two, kernels=MappingProxyType(kernels),
                       notes=two.notes + ("S read once if B_r·N_kv·e ≤ S_sram (one-pass softmax), else twice",))
    return _from_schedule(algorithm, variant, _build(algorithm, variant))


# --- binding concrete sizes -----------------------------------------------------------------------------------

def resolved_tiles(algorithm: str, problem: Problem, config: KernelConfig, hw=None) -> tuple[int, int]:
    """The (block_m, block_n) the numeric builder uses for this problem (its defaults and tile rules)."""
    if algorithm == "flash1":
        from iosim.models import flash1
        br, bc, _ = flash1.tiles(problem, config, hw)
        return br, bc
    if algorithm in ("flash2", "fastattention_volta"):  # FastAttention-Volta runs flash2's schedule
        from iosim.models import flash2
        dm, dn = flash2.default_tiles(problem.head_dim)
        return config.block_m or dm, config.block_n or dn
    if algorithm == "standard":
        from iosim.models import standard
        return config.block_m or standard.DEFAULT_TILES[0], config.block_n or standard.DEFAULT_TILES[1]
    if algorithm == "square_tiling":
        from iosim.models import square_tiling
        b, _ = square_tiling.tile(problem, config, hw)
        return b, b
    import sys
    mod = sys.modules[get(algorithm).build.__module__]
    if hasattr(mod, "default_tiles") and isinstance(problem.head_dim, int):
        dm, dn = mod.default_tiles(problem.head_dim)
        return config.block_m or dm, config.block_n or dn
    if config.block_m is None or config.block_n is None:
        raise IosimError(f"{algorithm}: give block_m and block_n to evaluate its symbolic IO")
    return config.block_m, config.block_n


def bind(algorithm: str, problem: Problem, config: KernelConfig, hw=None) -> dict:
    """The environment {symbol: int} of a concrete problem, config and hardware, for :func:`evaluate`."""
    bm, bn = resolved_tiles(algorithm, problem, config, hw)
    tm, tn = tile_symbols(algorithm)
    limit = config.sram_bytes if config.sram_bytes is not None else (hw.smem_per_block_bytes if hw is not None else 0)
    return {BATCH: problem.batch, HEADS: problem.heads, KV_HEADS: problem.kv_heads,
            GROUP: problem.heads // problem.kv_heads, NQ: problem.seq_q, NKV: problem.seq_kv, D: problem.head_dim,
            ELEM_BYTES: problem.elem_bytes, tm: bm, tn: bn, SRAM_BYTES: limit}


def io_bytes_at(algorithm: str, problem: Problem, config: KernelConfig, hw=None) -> int:
    """The symbolic expression evaluated at concrete sizes: equals ``count(schedule)`` read + write bytes."""
    gqa = problem.heads != problem.kv_heads
    sio = symbolic_io(algorithm, bool(problem.causal), gqa)
    return evaluate_int(sio.io_bytes, bind(algorithm, problem, config, hw))


# --- FlashAttention Algorithm 4 (backward) as a schedule, for Theorem 5 ----------------------------------------

def flash1_backward_schedule(p: Problem, cfg: KernelConfig) -> Schedule:
    """FlashAttention backward, Algorithm 4 of Dao et al. (arXiv 2205.14135, App. B.4), as a schedule.

    Not registered (the catalogue's backward family is flash2_bwd); built here so Theorem 5 is derived from a loop
    nest the engine counts too. Tiles B_r = block_m, B_c = block_n (paper: B_c = ⌈M/4d⌉, B_r = min(B_c, d)).
    Line 5: dQ, dK, dV = 0 are written to HBM. Outer loop j (line 6): load K_j, V_j (line 7); inner loop i (line 9):
    load Q_i, O_i, dO_i, dQ_i, ℓ_i, m_i (line 10), write dQ_i (line 21); write dK_j, dV_j (line 24).
    Per head, elements: init writes N_q·d + 2N_kv·d; reads 2N_kv·d + T_c·(4N_q·d + 2N_q); writes T_c·N_q·d + 2N_kv·d
    (N_q = N_kv = N: 7Nd + T_c·(5Nd + 2N), the count behind Theorem 5). MHA, non-causal, no dropout.
    """
    from iosim.models._common import kv_tile, lse_tensor, q_tile, qkvo_tensors, row_tile
    from iosim.schedule import Buffer, Compute, GridAxis, Kernel, TensorSpec, Work, cdiv

    br, bc, d, e = cfg.block_m, cfg.block_n, p.head_dim, p.elem_bytes
    if br is None or bc is None:
        raise IosimError("flash1 backward: give block_m and block_n (paper: B_c = ⌈M/4d⌉, B_r = min(B_c, d))")
    if p.causal is True or (isinstance(p.heads, int) and p.heads != p.kv_heads):
        raise IosimError("flash1 backward (Algorithm 4) is modelled for MHA without a causal mask; use kv_heads = "
                         "heads and drop causal")
    tr, tc = cdiv(p.seq_q, br), cdiv(p.seq_kv, bc)
    b, h, i, j = var("b"), var("h"), var("i"), var("j")
    grid = (GridAxis("b", b, p.batch), GridAxis("h", h, p.heads))
    rows, cols = Span(i, br, p.seq_q), Span(j, bc, p.seq_kv)
    init = Kernel("flash1_bwd_init", grid, (Buffer("zero_q", (br, d), e, space="reg"),
                                             Buffer("zero_kv", (bc, d), e, space="reg")), (
        Loop(i, 0, tr, (Store("zero_q", q_tile(p, "dQ", b, h, rows)),)),
        Loop(j, 0, tc, (Store("zero_kv", kv_tile(p, "dK", b, h, cols)), Store("zero_kv", kv_tile(p, "dV", b, h, cols)))),
    ))
    inner = (
        Load("q", q_tile(p, "Q", b, h, rows)), Load("o", q_tile(p, "O", b, h, rows)),
        Load("do", q_tile(p, "dO", b, h, rows)), Load("dq", q_tile(p, "dQ", b, h, rows)),
        Load("l", row_tile(p, "L", b, h, rows)), Load("m", row_tile(p, "M", b, h, rows)),
        Compute("flash1_bwd_step", ("q", "k", "v", "o", "do", "dq", "l", "m", "dk", "dv"),
                matmul=(Work(8 * d, (rows, cols)),)),
        Store("dq", q_tile(p, "dQ", b, h, rows)),
    )
    main = Kernel("flash1_bwd", grid, (
        Buffer("k", (bc, d), e), Buffer("v", (bc, d), e), Buffer("dk", (bc, d), e), Buffer("dv", (bc, d), e),
        Buffer("q", (br, d), e), Buffer("o", (br, d), e), Buffer("do", (br, d), e), Buffer("dq", (br, d), e),
        Buffer("l", (br,), STAT_BYTES), Buffer("m", (br,), STAT_BYTES),
        Buffer("s", (br, bc), 4, space="reg"), Buffer("dp", (br, bc), 4, space="reg")), (  # S/P and dP/dS tiles
        Loop(j, 0, tc, (
            Load("k", kv_tile(p, "K", b, h, cols)), Load("v", kv_tile(p, "V", b, h, cols)),
            Loop(i, 0, tr, inner),
            Store("dk", kv_tile(p, "dK", b, h, cols)), Store("dv", kv_tile(p, "dV", b, h, cols)),
        )),
    ))
    tensors = qkvo_tensors(p) | {
        "L": lse_tensor(p, "L", "input"), "M": lse_tensor(p, "M", "input"),
        "dO": TensorSpec("dO", (p.batch, p.heads, p.seq_q, d), e, "input"),
        "dQ": TensorSpec("dQ", (p.batch, p.heads, p.seq_q, d), e, "output"),
        "dK": TensorSpec("dK", (p.batch, p.kv_heads, p.seq_kv, d), e, "output"),
        "dV": TensorSpec("dV", (p.batch, p.kv_heads, p.seq_kv, d), e, "output"),
    }
    return Schedule("flash1_bwd", p, cfg, tensors, (init, main))


@lru_cache(maxsize=4)
def symbolic_flash1_backward() -> SymbolicIO:
    """Algorithm 4's IO summed from :func:`flash1_backward_schedule` on symbolic sizes (MHA, non-causal)."""
    variant = Variant()
    sched = flash1_backward_schedule(symbolic_problem(variant), KernelConfig(block_m=BLOCK_M, block_n=BLOCK_N))
    return _from_schedule("flash1_bwd", variant, sched)


# --- tile rules (M in elements) -------------------------------------------------------------------------------

def fa1_paper_tiles(m=M, d=D) -> dict:
    """FA Algorithm 1 line 1 (and Algorithm 4 lines 2–4): B_c = ⌈M/4d⌉, B_r = min(⌈M/4d⌉, d)."""
    bc = sp.ceiling(m / (4 * d))
    return {BLOCK_N: bc, BLOCK_M: sp.Min(bc, d)}


def square_paper_tile(m=M) -> dict:
    """Saha & Ye Algorithm 1 line 1: B = ⌊√(M/4)⌋."""
    return {BLOCK_SQ: sp.floor(sp.sqrt(m) / 2)}


def _square_problem(expr: sp.Expr) -> sp.Expr:
    """One head, N_q = N_kv = N (the papers' setting)."""
    return expr.xreplace({BATCH: 1, HEADS: 1, KV_HEADS: 1, GROUP: 1, NQ: N, NKV: N})


# --- theorems with explicit constants -------------------------------------------------------------------------

_C_F, _C_G = sp.Symbol("c_f"), sp.Symbol("c_g")


def _nonneg(name: str) -> sp.Symbol:
    return sp.Symbol(name, nonnegative=True)


def _linear_constraints(expr: sp.Expr, shifts) -> list[tuple[Fraction, Fraction, Fraction]] | None:
    """expr (linear in c_f, c_g) ≥ 0 for all regime points ⇐ every coefficient of its numerator (in the regime's
    nonnegative variables) is ≥ 0, the denominator having one sign. Returns rows (a, b, r): a·c_f + b·c_g + r ≥ 0."""
    e = sp.sympify(expr)
    for old, new in shifts:
        e = e.xreplace({old: new})
    num, den = sp.fraction(sp.together(e))
    sd = _poly_sign(den)
    if sd is None:
        return None
    num = sp.expand(num * sd)
    gens = sorted(num.free_symbols - {_C_F, _C_G}, key=str)
    poly = sp.Poly(num, *gens) if gens else None
    rows = []
    for coeff in (poly.coeffs() if poly is not None else [num]):
        c = sp.expand(coeff)
        a, b = c.coeff(_C_F), c.coeff(_C_G)
        r = sp.expand(c - a * _C_F - b * _C_G)
        if r.free_symbols or a.free_symbols or b.free_symbols:
            return None
        rows.append((Fraction(str(a)), Fraction(str(b)), Fraction(str(r))))
    return rows


def _solve(rows, maximize: bool) -> tuple[Fraction, Fraction] | None:
    """Lexicographically best (c_f, then c_g) with a·c_f + b·c_g + r ≥ 0 for every row; c_f, c_g ≥ 0."""
    # c_f: bound by rows without c_g, and by rows whose c_g coefficient cannot help
    lo_f, hi_f = Fraction(0), None
    for a, b, r in rows:
        if b <= 0:  # c_g cannot help this row: it bounds c_f with c_g = 0
            if a > 0:
                lo_f = max(lo_f, -r / a)
            elif a < 0:
                hi_f = -r / a if hi_f is None else min(hi_f, -r / a)
            elif r < 0:
                return None
    cf = hi_f if maximize else lo_f
    if cf is None or (hi_f is not None and cf > hi_f) or cf < lo_f:
        return None
    lo_g, hi_g = Fraction(0), None
    for a, b, r in rows:
        rest = a * cf + r
        if b > 0:
            lo_g = max(lo_g, -rest / b)
        elif b < 0:
            hi_g = -rest / b if hi_g is None else min(hi_g, -rest / b)
        elif rest < 0:
            return None
    cg = (hi_g if hi_g is not None else Fraction(0)) if maximize else lo_g
    if cg < lo_g or (hi_g is not None and cg > hi_g):
        return None
    return cf, cg


@dataclass(frozen=True)
class Bound:
    """c_f·f + c_g·g, certified: (bound − quantity or quantity − bound) has a nonnegative-coefficient certificate."""

    c_f: Fraction
    c_g: Fraction
    expr: sp.Expr
    certified: bool


def fit_upper(quantity: sp.Expr, f: sp.Expr, g: sp.Expr, shifts) -> Bound | None:
    """Smallest (c_f, c_g) with quantity ≤ c_f·f + c_g·g over the regime; ceilings/floors replaced by upper
    bounds first (⌈x⌉ ≤ x + 1, monotonicity checked by the sign of the derivative)."""
    ub = _bound_atoms(sp.sympify(quantity), lower=False)
    if ub is None:
        return None
    rows = _linear_constraints(_C_F * f + _C_G * g - ub, shifts)
    sol = rows and _solve(rows, maximize=False)
    if not sol:
        return None
    cf, cg = sol
    expr = sp.Rational(cf.numerator, cf.denominator) * f + sp.Rational(cg.numerator, cg.denominator) * g
    check = _linear_constraints(expr - ub, shifts)
    return Bound(cf, cg, expr, bool(check) and all(r >= 0 for _, _, r in check))


def fit_lower(quantity: sp.Expr, f: sp.Expr, g: sp.Expr, shifts) -> Bound | None:
    """Largest (c_f, then c_g) with c_f·f + c_g·g ≤ quantity over the regime (⌈x⌉ ≥ x, ⌊x⌋ ≥ x − 1)."""
    lb = _bound_atoms(sp.sympify(quantity), lower=True)
    if lb is None:
        return None
    rows = _linear_constraints(lb - _C_F * f - _C_G * g, shifts)
    sol = rows and _solve(rows, maximize=True)
    if not sol:
        return None
    cf, cg = sol
    expr = sp.Rational(cf.numerator, cf.denominator) * f + sp.Rational(cg.numerator, cg.denominator) * g
    check = _linear_constraints(lb - expr, shifts)
    return Bound(cf, cg, expr, bool(check) and all(r >= 0 for _, _, r in check))


@dataclass(frozen=True)
class Theorem:
    """A Θ/Ω statement checked on a schedule's derived IO (elements, one head, N_q = N_kv = N).

    lower.expr ≤ quantity ≤ upper.expr holds for every point of the regime; the certificate is: after bounding each
    ceiling/floor (⌈x⌉ ∈ [x, x+1), direction from the sign of the derivative), substituting the regime's shifts
    (e.g. M = d + m, d = 1 + a with m, a ≥ 0) and clearing denominators, every coefficient is ≥ 0.
    """

    key: str
    title: str
    source: str
    algorithm: str | None
    quantity: sp.Expr
    f: sp.Expr
    g: sp.Expr
    regime: tuple[str, ...]
    asymptotic: str
    lower: Bound | None
    upper: Bound | None
    note: str = ""

    @property
    def certified(self) -> bool:
        return all(b is not None and b.certified for b in (self.lower, self.upper) if b is not None) and \
            (self.lower is not None or self.upper is not None)


def _nn(name: str) -> sp.Symbol:
    return sp.Symbol(name, nonnegative=True)


_MU = sp.Symbol("mu", positive=True)  # √M


def _fa1_quantity() -> sp.Expr:
    return _square_problem(symbolic_io("flash1").io_elements).xreplace(fa1_paper_tiles())


def _fa1_bwd_quantity() -> sp.Expr:
    return _square_problem(symbolic_flash1_backward().io_elements).xreplace(fa1_paper_tiles())


def block_sparse_flash1_elements() -> sp.Expr:
    """Block-sparse FlashAttention (FA §3.3, Prop. 4) from Algorithm 1's derived IO: only the inner-loop traffic
    (Q_i, O_i, ℓ_i, m_i per (i, j) step) runs for the fraction s of nonzero blocks; the init kernel and the K_j, V_j
    loads are kept whole (an upper bound for masks with empty columns). One head, N_q = N_kv = N, paper tiles."""
    sio = symbolic_io("flash1")
    q = (sio.elements(kernels=["flash1_init"]) + sio.elements("read", ["K", "V"], ["flash1_fwd"])
         + SPARSITY * sio.elements(tensors=["Q", "O", "L", "M"], kernels=["flash1_fwd"]))
    return _square_problem(q).xreplace(fa1_paper_tiles())


def _theorem(key, title, source, algorithm, quantity, f, g, regime, asymptotic, shifts, note="", lower=True, upper=True):
    lo = fit_lower(quantity, f, g, shifts) if lower else None
    up = fit_upper(quantity, f, g, shifts) if upper else None
    return Theorem(key, title, source, algorithm, quantity, f, g, regime, asymptotic, lo, up, note)


@lru_cache(maxsize=1)
def theorems() -> tuple[Theorem, ...]:
    """Every theorem, with constants fitted and certified (about 2 s of sympy)."""
    n, d, m = N, D, M
    fa_regime = ("1 <= d <= M <= N*d", "B_c = ceil(M/(4d)), B_r = min(B_c, d)")
    fa_shifts = [(M, D + _nn("m")), (D, 1 + _nn("a"))]
    out = [
        _theorem("fa1_forward", "FlashAttention forward IO is Θ(N²d²/M)",
                 "Dao et al. 2022 (arXiv 2205.14135) §3.2 Theorem 2; Algorithm 1", "flash1",
                 _fa1_quantity(), n**2 * d**2 / m, n * d, fa_regime, "Θ(N²d²/M)", fa_shifts),
        _theorem("standard_forward", "Standard attention IO is Θ(Nd + N²)",
                 "Dao et al. 2022 §3.2 Theorem 2 (proof in App. C); Algorithm 0", "standard",
                 _square_problem(symbolic_io("standard").io_elements).xreplace({SRAM_BYTES: 0}),
                 n * d + n**2, sp.Integer(0), ("B_r >= d, B_c >= d (tiles at least the head dim)",
                                              "S row block exceeds SRAM (two-pass softmax)"),
                 "Θ(Nd + N²)", [(BLOCK_M, D + _nn("r")), (BLOCK_N, D + _nn("c")), (D, 1 + _nn("a"))]),
        _theorem("block_sparse_forward", "Block-sparse FlashAttention IO is Θ(Nd + s·N²d²/M)",
                 "Dao et al. 2022 §3.3 Proposition 4 (App. D.1)", "flash1",
                 block_sparse_flash1_elements(), SPARSITY * n**2 * d**2 / m, n * d,
                 fa_regime + ("0 < s <= 1 (fraction of nonzero blocks)",), "Θ(Nd + s·N²d²/M)",
                 [(SPARSITY, 1 / (1 + _nn("sigma")))] + fa_shifts),
        _theorem("fa1_backward", "FlashAttention backward IO is Θ(N²d²/M)",
                 "Dao et al. 2022 App. B.4 Theorem 5; Algorithm 4", "flash1_bwd",
                 _fa1_bwd_quantity(), n**2 * d**2 / m, n * d, fa_regime, "Θ(N²d²/M)", fa_shifts),
        _theorem("backward_large_cache", "Backward IO with a large cache is Θ((N²d² + Nd³)/M): FlashAttention is optimal",
                 "Li, Liang, Shi, Song, Zhou 2024 (arXiv 2410.09397) main result, large-cache case M = Ω(d²)",
                 "flash1_bwd", _fa1_bwd_quantity(), (n**2 * d**2 + n * d**3) / m, n * d,
                 ("d**2 <= M <= N*d", "B_c = ceil(M/(4d)), B_r = min(B_c, d)"), "Θ((N²d² + Nd³)/M)",
                 [(M, D**2 + _nn("m")), (D, 1 + _nn("a"))]),
        _theorem("backward_small_cache_gap", "With a small cache (M < d²) FlashAttention's backward exceeds the tight "
                 "Θ((N²d + Nd²)/√M) bound by a factor Ω(d/√M)",
                 "Li et al. 2024 (arXiv 2410.09397) main result, small-cache case M = o(d²); FA App. B.4 Algorithm 4",
                 "flash1_bwd", _fa1_bwd_quantity(), n**2 * d**2 / m, n * d,
                 ("d <= M <= d**2", "B_c = ceil(M/(4d)), B_r = min(B_c, d)"), "Ω(N²d²/M) ≥ (d/√M)·(N²d/√M)",
                 [(M, D + _nn("m")), (D, 1 + _nn("a"))], upper=False,
                 note="the paper's small-cache backward algorithm is not implemented; this shows the gap"),
        _theorem("square_tiling_small_cache", "SquareTilingAttention IO is Θ(N²d/√M) for M ≤ d²",
                 "Saha & Ye 2024 (ICML, arXiv 2402.07443) §3.2 Theorem 3.5; Algorithm 1", "square_tiling",
                 _square_problem(symbolic_io("square_tiling").io_elements).xreplace(square_paper_tile()),
                 n**2 * d / sp.sqrt(m), n * d, ("16 <= M <= d**2", "B = floor(sqrt(M/4)) >= 2"), "Θ(N²d/√M)",
                 [(M, _MU**2), (_MU, 4 + _nn("nu")), (D, 4 + _nn("nu") + _nn("delta"))]),
        _theorem("fa1_optimal_large_cache", "FlashAttention is optimal for large caches: its IO is within a constant "
                 "factor of the Saha & Ye lower bound for any algorithm",
                 "Saha & Ye 2024 §3.1 Lemmas 3.3–3.4 (constants: LowerBounds.saha_ye_large); FA Theorem 2", "flash1",
                 _fa1_quantity(), n**2 * d**2 / (4 * (m + d**2)) - m, sp.Integer(0),
                 ("d**2 <= M <= N*d/4", "B_c = ceil(M/(4d)), B_r = min(B_c, d)"),
                 "IO_FA1 = Θ(lower bound) = Θ(N²d²/M)",
                 [(N, (4 * M + _nn("n")) / D), (M, D**2 + _nn("m")), (D, 1 + _nn("a"))], lower=False),
        _theorem("square_tiling_optimal_small_cache", "SquareTilingAttention is optimal for small caches: its IO is "
                 "within a constant factor of the matmul-reduction lower bound for any algorithm",
                 "Saha & Ye 2024 §3.2 Theorem 3.7 with Irony–Toledo–Tiskin 2004 (1/(2√2) ≥ 35/99); Theorem 3.5",
                 "square_tiling",
                 _square_problem(symbolic_io("square_tiling").io_elements).xreplace(square_paper_tile()),
                 sp.Rational(35, 99) * n**2 * d / sp.sqrt(m) - m - n**2, sp.Integer(0),
                 ("16 <= M <= d**2/64", "N >= d", "B = floor(sqrt(M/4))"), "IO = Θ(lower bound) = Θ(N²d/√M)",
                 [(M, _MU**2), (N, D + _nn("nu")), (D, 8 * _MU + _nn("delta")), (_MU, 4 + _nn("eps"))],
                 lower=False),
    ]
    return tuple(out)


def theorem(key: str) -> Theorem:
    for t in theorems():
        if t.key == key:
            return t
    raise IosimError(f"unknown theorem {key!r}; known: {', '.join(t.key for t in theorems())}")


# --- lower bounds for any algorithm (explicit constants, elements) -------------------------------------------

def visible_pairs(seq_q: int, seq_kv: int, causal: bool) -> int:
    """Query–key pairs whose score is needed: N_q·N_kv, or under the bottom-right causal mask Σ_r min(N_kv, max(0,
    r + N_kv − N_q + 1))."""
    if not causal:
        return seq_q * seq_kv
    off = seq_kv - seq_q
    # rows r with r + off + 1 in [1, N_kv): an arithmetic series; rows beyond see all N_kv keys
    r_lo = max(0, -off)                    # first row that sees a key
    r_full = max(r_lo, min(seq_q, seq_kv - off - 1))  # rows < r_full see fewer than N_kv keys
    partial = sum_range(r_lo + off + 1, r_full + off + 1)
    return partial + (seq_q - r_full) * seq_kv


def sum_range(a: int, b: int) -> int:
    """a + (a+1) + … + (b−1)."""
    return (a + b - 1) * (b - a) // 2 if b > a else 0


@dataclass(frozen=True)
class LowerBounds:
    """Lower bounds on the IO (elements) of ANY algorithm computing exact attention with M elements of fast memory.

    trivial: every needed input element read once, every output element written once.
    saha_ye_large: Saha & Ye §3.1, Lemmas 3.3–3.4 with the constants carried through: a 2M-partition part
      holds level-1 vertices of at most 4M trees (dominators, minimum set) plus C ≤ (2M)²/d² 'extra' trees
      (√C·d ≤ |D| ≤ 2M), d products each, so with P·d products in all, Q ≥ M·(parts − 1) ≥
      P·d²/(4(M + d²)) − M; Ω(N²d²/M) when M ≥ d².
    matmul_small: Saha & Ye §3.2 Theorem 3.7: writing each QKᵀ entry when first computed turns an attention
      algorithm into a matmul one with ≤ P more I/Os; the sequential bound of Irony, Toledo & Tiskin (2004),
      products/(2√2·√M) − M, then gives P·d/(2√2·√M) − M − P; Ω(N²d/√M) when M < d².
    P = visible query–key pairs per head × heads. Both hold with standard (non-Strassen) QKᵀ (Saha & Ye §2–3).
    """

    trivial: int
    saha_ye_large: float
    matmul_small: float

    @property
    def best(self) -> float:
        return max(self.trivial, self.saha_ye_large, self.matmul_small)

    @property
    def binding(self) -> str:
        return max(("trivial", self.trivial), ("saha_ye_large", self.saha_ye_large),
                   ("matmul_small", self.matmul_small), key=lambda kv: kv[1])[0]


def lower_bounds(problem: Problem, fast_memory_elements: int) -> LowerBounds:
    """Explicit lower bounds (elements) for ``problem`` with M = ``fast_memory_elements`` (see :class:`LowerBounds`)."""
    p, m = problem, fast_memory_elements
    if m <= 0:
        raise IosimError(f"fast memory must be a positive number of elements, got {m}")
    pairs = visible_pairs(p.seq_q, p.seq_kv, p.causal)
    heads = p.batch * p.heads
    d = p.head_dim
    # trivial: Q rows that see a key, K/V rows some query sees, all of O
    rows_q = p.seq_q if not p.causal else p.seq_q - max(0, p.seq_q - p.seq_kv)
    rows_kv = p.seq_kv
    trivial = heads * (rows_q + p.seq_q) * d + p.batch * p.kv_heads * 2 * rows_kv * d
    total_pairs = heads * pairs
    sy = total_pairs * d * d / (4 * (m + d * d)) - m
    mm = total_pairs * d / (2 * math.sqrt(2) * math.sqrt(m)) - m - total_pairs
    return LowerBounds(trivial, sy, mm)


def schedule_fast_memory_elements(schedule: Schedule) -> int:
    """M of a schedule: the largest Σ over one kernel's buffers (shared memory, pipelined ×num_stages, and
    registers) in elements — everything a CTA holds on chip."""
    from iosim.expr import evaluate as ev
    stages = getattr(schedule.config, "num_stages", 1)
    best = 0
    for k in schedule.kernels:
        tot = 0
        for b in k.buffers:
            n = 1
            for x in b.shape:
                n *= int(ev(x, {}))
            tot += n * (stages if b.pipelined else 1)
        best = max(best, tot)
    return best


def schedule_io_elements(schedule: Schedule, counts=None) -> int:
    """The engine's IO of a schedule in elements (bytes of each tensor / its element size)."""
    from iosim.counts import count
    c = counts or count(schedule)
    tot = 0
    for which in ("read", "write"):
        for t, v in c.tensor_bytes(which).items():
            tot += v // schedule.tensors[t].elem_bytes
    return tot
