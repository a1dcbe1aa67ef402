"""Exact integer evaluation of schedule expressions over NumPy arrays (int64) or Python ints.

sympy's lambdify goes through floats for floor/ceiling of rationals; schedules need exact integer arithmetic at
N = 10⁶ and beyond, so this compiles the few node types schedules use (Add, Mul, integer Pow, Min, Max, floor,
ceiling, Mod) into closures, once per expression.

Data-dependent schedules (block-sparse masks) add one node: ``Lookup(T, i₀, i₁, …)`` reads entry [i₀, i₁, …] of
the integer table named by the symbol T. Tables travel with the schedule (``Schedule.tables``, name → int array)
and are bound into the environment by ``table_env`` as ``Table`` objects (not ndarrays, so code that indexes the
env's enumerated arrays leaves them alone). Indices may be ints or int64 arrays (NumPy fancy indexing), so counting
stays vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np
import sympy as sp

from iosim.errors import IosimError

Env = Mapping[sp.Symbol, object]


class Lookup(sp.Function):
    """Lookup(T, i₀, …): entry [i₀, …] of the integer table bound to symbol T (a nonnegative integer).

    Left unevaluated by sympy; ``compile_expr`` indexes the ``Table`` bound to T in the environment.
    """

    is_integer = True
    is_nonnegative = True


@dataclass(frozen=True, eq=False)
class Table:
    """An int64 table bound in an evaluation environment (wrapped so it is never mistaken for an enumerated var)."""

    name: str
    array: np.ndarray


def table_env(tables: Mapping[str, object] | None) -> dict:
    """Environment entries {Symbol(name): Table} for a schedule's tables (empty for schedules without any)."""
    out: dict = {}
    for name, arr in (tables or {}).items():
        a = np.asarray(arr)
        if a.dtype.kind not in "iub":
            raise IosimError(f"schedule table {name!r} must hold integers, got dtype {a.dtype}")
        out[sp.Symbol(name)] = Table(name, a.astype(np.int64, copy=False))
    return out


def _lookup(name: sp.Symbol, fs, e):
    def look(env):
        tbl = env.get(name) if hasattr(env, "get") else env[name]
        if not isinstance(tbl, Table):
            raise IosimError(f"cannot evaluate {e}: no table {name} is attached to the schedule (Schedule.tables)")
        idx = tuple(f(env) for f in fs)
        try:
            out = tbl.array[idx]
        except IndexError as err:
            raise IosimError(f"table {name} of shape {tbl.array.shape} indexed out of range in {e}: {err}") from None
        return int(out) if np.ndim(out) == 0 else out
    return look


def _min(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.minimum(a, b)
    return min(a, b)


def _max(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return max(a, b)


def _fraction(e: sp.Expr) -> tuple[sp.Expr, int]:
    """e = num/den with num integer-valued and den a positive int."""
    e = sp.together(e)
    num, den = sp.fraction(e)
    if not den.is_Integer:
        raise IosimError(f"cannot evaluate {e}: the divisor {den} must be a concrete integer")
    return sp.expand(num), int(den)


@lru_cache(maxsize=4096)
def compile_expr(e) -> Callable[[Env], object]:
    """A closure env -> value; value is an int or an int64 array broadcast over the env's arrays."""
    e = sp.sympify(e)
    if e.is_Integer:
        c = int(e)
        return lambda env: c
    if e.is_Symbol:
        return lambda env: env[e]
    if e.is_Rational:
        raise IosimError(f"non-integer constant {e} in a schedule expression")
    if isinstance(e, (sp.floor, sp.ceiling)):
        num, den = _fraction(e.args[0])
        f = compile_expr(num)
        if isinstance(e, sp.floor):
            return lambda env: f(env) // den
        return lambda env: -((-f(env)) // den)
    if isinstance(e, Lookup):
        if not e.args or not e.args[0].is_Symbol:
            raise IosimError(f"Lookup needs a table symbol as its first argument, got {e}")
        return _lookup(e.args[0], [compile_expr(a) for a in e.args[1:]], e)
    if isinstance(e, sp.Mod):
        fa, fb = compile_expr(e.args[0]), compile_expr(e.args[1])
        return lambda env: fa(env) % fb(env)
    if isinstance(e, (sp.Add, sp.Mul)) and any(a.is_Rational and not a.is_Integer for a in e.atoms(sp.Rational)):
        num, den = _fraction(e)
        if den != 1:
            f = compile_expr(num)

            def exact_div(env, f=f, den=den, e=e):
                v = f(env)
                if np.any(np.asarray(v) % den):
                    raise IosimError(f"expression {e} is not an integer at these sizes")
                return v // den
            return exact_div
        e = num
    if isinstance(e, sp.Add):
        fs = [compile_expr(a) for a in e.args]
        return lambda env: sum_(f(env) for f in fs)
    if isinstance(e, sp.Mul):
        fs = [compile_expr(a) for a in e.args]

        def mul(env):
            out = 1
            for f in fs:
                out = out * f(env)
            return out
        return mul
    if isinstance(e, sp.Pow) and e.exp.is_Integer and int(e.exp) >= 0:
        fb, k = compile_expr(e.base), int(e.exp)
        return lambda env: fb(env) ** k
    if isinstance(e, (sp.Min, sp.Max)):
        fs = [compile_expr(a) for a in e.args]
        op = _min if isinstance(e, sp.Min) else _max

        def mm(env):
            vals = [f(env) for f in fs]
            out = vals[0]
            for v in vals[1:]:
                out = op(out, v)
            return out
        return mm
    raise IosimError(f"cannot evaluate schedule expression {e} (node {type(e).__name__})")


def sum_(vals):
    out = 0
    for v in vals:
        out = out + v
    return out


def evaluate(e, env: Env):
    """Evaluate e exactly; ints stay Python ints, arrays stay int64."""
    if isinstance(e, int):
        return e
    return compile_expr(sp.sympify(e))(env)
