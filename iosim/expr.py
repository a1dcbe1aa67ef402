"""Exact integer evaluation of schedule expressions over NumPy arrays (int64) or Python ints.

sympy's lambdify goes through floats for floor/ceiling of rationals; schedules need exact integer arithmetic at
N = 10⁶ and beyond, so this compiles the few node types schedules use (Add, Mul, integer Pow, Min, Max, floor,
ceiling, Mod) into closures, once per expression.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Mapping

import numpy as np
import sympy as sp

from iosim.errors import IosimError

Env = Mapping[sp.Symbol, object]


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
