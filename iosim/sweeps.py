"""Sweeps: ``iosim.pipeline.predict`` over a grid of problems and kernel configurations → a pandas DataFrame.

A grid is a mapping from field to a value or a list of values; lists are crossed (cartesian product). Fields
(``KEYS``; defaults as ``iosim predict``'s flags):

* ``hardware`` (str, "h100"), ``kernel`` (str, a preset of ``iosim.presets``: fa2, flex, triton-tutorial,
  iosim-triton; pins the algorithm, tiles, warps, stages and orders; default none), ``algorithm`` (str, "flash2");
* the Problem: ``batch`` (1), ``heads`` (16), ``kv_heads`` (= heads), ``seq_q`` (4096), ``seq_kv`` (= seq_q),
  ``head_dim`` (128) — ints; ``dtype`` (str, "bf16"); ``causal`` (bool, false);
* ``mask`` (str, one ``iosim predict --mask`` spec such as "sliding:1024", ``iosim.maskspec``; default none) and
  ``mask_block`` (int, 128: its ``--mask-block``);
* the KernelConfig: ``block_m``, ``block_n`` (ints, default: the algorithm's), ``num_warps`` (4), ``num_stages`` (2),
  ``sram_bytes`` (default: the hardware's) — ints; ``grid_order`` (str "m,b,h": axes fastest first), ``kv_order``,
  ``q_order`` (str, "ascending"/"descending"); ``band_loop`` (bool, false);
* ``pass`` (str, "fwd"): "fwd", "bwd" or "fwd+bwd" (``iosim.pipeline.predict``'s direction; with "fwd+bwd" the
  config columns are the forward's, the results the sum of both passes).

Point order: the product of the lists in ``KEYS`` order with the last key varying fastest (``itertools.product``),
each list in its given order. A list of grids gives their points one grid after another.

Spec files (``iosim sweep SPEC.toml``, ``load_spec``): top-level keys are fields, each a value or a list; optional
``[[grid]]`` tables are grids of their own (each crossed separately, over the top-level keys as defaults):

    hardware = "h100"
    kernel = "fa2"
    seq_q = [4096, 8192]        # crossed with causal: 4 points
    causal = [false, true]

    [[grid]]                    # with [[grid]] tables the points are theirs: here 2 more-specific ones
    batch = 2
    head_dim = 64
    [[grid]]
    seq_q = 32768

Columns of the frame: ``KEYS`` (problem and config as the kernel ran: preset choices and default tiles resolved;
the requested values on an error row), then ``RESULTS`` from the prediction (``dram_*`` and ``l2_hit_rate`` empty
with ``l2=False``), then ``error``: the IosimError message of a point that could not be predicted (its results
empty), empty otherwise.

``pandas`` is imported inside the functions: ``import iosim`` stays light.
"""

from __future__ import annotations

import itertools
import sys
import time
from functools import lru_cache, partial
from typing import IO, Callable, Mapping, Sequence

from iosim.errors import IosimError

DEFAULTS: dict[str, object] = {
    "hardware": "h100", "kernel": None, "algorithm": "flash2",
    "batch": 1, "heads": 16, "kv_heads": None, "seq_q": 4096, "seq_kv": None, "head_dim": 128, "dtype": "bf16",
    "causal": False, "mask": None, "mask_block": 128,
    "block_m": None, "block_n": None, "num_warps": 4, "num_stages": 2, "grid_order": "m,b,h",
    "kv_order": "ascending", "q_order": "ascending", "sram_bytes": None, "band_loop": False, "pass": "fwd",
}
KEYS: tuple[str, ...] = tuple(DEFAULTS)
_STR = {"hardware", "kernel", "algorithm", "dtype", "mask", "grid_order", "kv_order", "q_order", "pass"}
_BOOL = {"causal", "band_loop"}
RESULTS: tuple[str, ...] = ("flops", "matmul_flops", "sm_read_bytes", "sm_write_bytes", "dram_read_bytes",
                            "dram_write_bytes", "l2_hit_rate", "time_s", "bound", "achieved_flops_per_s")
_INT_COLUMNS = [k for k in KEYS if k not in _STR | _BOOL] + list(RESULTS[:6])  # counts: flops and bytes
_FLOAT_COLUMNS = ["l2_hit_rate", "time_s", "achieved_flops_per_s"]


def _check_value(key: str, v) -> None:
    if key in _STR:
        ok, want = isinstance(v, str), "a string"
    elif key in _BOOL:
        ok, want = isinstance(v, bool), "true or false"
    else:
        ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
    if key == "pass":
        from iosim.passes import DIRECTIONS
        ok, want = v in DIRECTIONS, " or ".join(map(repr, DIRECTIONS))
    if not ok:
        raise IosimError(f"sweep key {key!r}: expected {want} or a list of them, got {v!r}")


def points(grid: Mapping[str, object] | Sequence[Mapping[str, object]]) -> list[dict]:
    """Every point of ``grid`` (or of each grid of a list, in turn), in the documented order, defaults filled in."""
    grids = [grid] if isinstance(grid, Mapping) else list(grid)
    out = []
    for g in grids:
        unknown = [k for k in g if k not in DEFAULTS]
        if unknown:
            raise IosimError(f"unknown sweep key {unknown[0]!r}; known: {', '.join(KEYS)}")
        axes = []
        for key in KEYS:
            vals = g.get(key, DEFAULTS[key])
            vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
            if not vals:
                raise IosimError(f"sweep key {key!r} has an empty list; give at least one value")
            for v in vals:
                if not (v is None and DEFAULTS[key] is None):
                    _check_value(key, v)
            axes.append(vals)
        out += [dict(zip(KEYS, combo)) for combo in itertools.product(*axes)]
    return out


def load_spec(path: str) -> list[dict]:
    """The grids of a sweep spec file (TOML, see the module docstring), checked by ``points``."""
    import tomllib
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except OSError as e:
        raise IosimError(f"cannot read sweep spec {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise IosimError(f"{path}: invalid TOML ({e}); see `iosim sweep --help` for the format") from e
    subs = spec.pop("grid", None)
    if subs is None:
        grids = [spec]
    elif isinstance(subs, list) and subs and all(isinstance(s, dict) for s in subs):
        grids = [{**spec, **s} for s in subs]
    else:
        raise IosimError(f"{path}: 'grid' must be [[grid]] tables (each a grid of its own)")
    try:
        points(grids)
    except IosimError as e:
        raise IosimError(f"{path}: {e}") from None
    return grids


@lru_cache(maxsize=None)
def _hardware(name: str):
    from iosim.hwprofile import load_hardware
    return load_hardware(name)


def resolved(point: Mapping[str, object]) -> dict:
    """The point with kv_heads and seq_kv defaults (= heads, = seq_q) filled in."""
    p = dict(point)
    p["kv_heads"] = p["heads"] if p["kv_heads"] is None else p["kv_heads"]
    p["seq_kv"] = p["seq_q"] if p["seq_kv"] is None else p["seq_kv"]
    return p


def prediction(point: Mapping[str, object], l2: bool = True):
    """``iosim.pipeline.predict`` of one point (a dict of every key, as ``points`` gives); IosimError on bad input."""
    from iosim.maskspec import parse_mask
    from iosim.pipeline import predict
    from iosim.problem import KernelConfig, Problem
    p = resolved(point)
    problem = Problem(p["batch"], p["heads"], p["kv_heads"], p["seq_q"], p["seq_kv"], p["head_dim"], p["dtype"],
                      p["causal"])
    config = KernelConfig(p["block_m"], p["block_n"], p["num_warps"], p["num_stages"],
                          tuple(x.strip() for x in p["grid_order"].split(",")), p["kv_order"], p["q_order"],
                          p["sram_bytes"], p["band_loop"])
    mask = None if p["mask"] is None else parse_mask(p["mask"], p["mask_block"])
    return predict(_hardware(p["hardware"]), problem, config, p["algorithm"], kernel=p["kernel"], l2=l2,
                   direction=p["pass"], block_mask=mask)


def predict_point(point: Mapping[str, object], l2: bool = True) -> dict:
    """One row of the frame: the point's fields and the prediction's results, or the IosimError in ``error``."""
    from dataclasses import asdict
    row = resolved(point) | dict.fromkeys(RESULTS) | {"error": None}
    try:
        pred = prediction(point, l2)
    except IosimError as e:
        row["error"] = str(e)
        return row
    s, c, t = pred.schedule, pred.counts, pred.time
    cfg = asdict(s.config) | {"grid_order": ",".join(s.config.grid_order)}
    row |= asdict(s.problem) | cfg | {"algorithm": s.algorithm}
    row |= {"flops": c.flops, "matmul_flops": c.matmul_flops, "sm_read_bytes": c.sm_read_bytes,
            "sm_write_bytes": c.sm_write_bytes, "dram_read_bytes": pred.dram_read_bytes,
            "dram_write_bytes": pred.dram_write_bytes, "l2_hit_rate": pred.l2_hit_rate, "time_s": pred.time_s,
            "bound": t.bound, "achieved_flops_per_s": t.achieved_flops_per_s}
    return row


class Progress:
    """``done/total``, rate and ETA on one terminal line, redrawn at most 10 times a second."""

    def __init__(self, total: int, enabled: bool, stream: IO[str] | None = None):
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.done, self.start_s, self.drawn_s = 0, time.monotonic(), 0.0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self.drawn_s >= 0.1 or self.done == self.total):
            self.drawn_s = now
            rate = self.done / max(now - self.start_s, 1e-9)
            eta = (self.total - self.done) / rate
            self.stream.write(f"\rsweep {self.done}/{self.total}  {rate:.3g} points/s  ETA {eta:.0f} s   ")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _call(fn: Callable[[Mapping, bool], dict], l2: bool, point: Mapping[str, object]) -> dict:
    return fn(point, l2)


def run_points(pts: Sequence[Mapping[str, object]], *, jobs: int | None = None, progress: bool | None = None,
               l2: bool = True, fn: Callable[[Mapping, bool], dict] = predict_point) -> list[dict]:
    """``fn(point, l2)`` (default ``predict_point``; a module-level function, for the worker processes) of every
    point, in the points' order whatever order they finish in (``iosim.parallel.map_ordered``)."""
    from iosim.parallel import map_ordered
    bar = Progress(len(pts), sys.stderr.isatty() if progress is None else progress)
    try:
        return map_ordered(partial(_call, fn, l2), pts, jobs, bar.step)
    finally:
        bar.close()


def frame(rows: Sequence[Mapping[str, object]]):
    """The DataFrame of ``predict_point`` rows: columns KEYS + RESULTS + error, nullable integer columns."""
    import pandas as pd
    df = pd.DataFrame(list(rows), columns=[*KEYS, *RESULTS, "error"])
    return df.astype({**dict.fromkeys(_INT_COLUMNS, "Int64"), **dict.fromkeys(_FLOAT_COLUMNS, "float64")})


def sweep(grid: Mapping[str, object] | Sequence[Mapping[str, object]], *, jobs: int | None = None,
          progress: bool | None = None, l2: bool = True, direction: str | None = None):
    """Predictions over ``grid`` (see the module docstring) as a pandas DataFrame, one row per point in order.

    jobs: worker processes (default ``os.cpu_count()``; 1 = in this process); progress: a progress line on stderr
    (default: when stderr is a terminal); l2: run the L2/DRAM model (False: SM↔HBM counts only, much faster).
    direction: the pass ("fwd", "bwd", "fwd+bwd") of every grid that has no ``pass`` key of its own.
    A point whose prediction raises IosimError keeps its row, with the message in ``error``."""
    return frame(run_points(points(with_pass(grid, direction)), jobs=jobs, progress=progress, l2=l2))


def with_pass(grid: Mapping[str, object] | Sequence[Mapping[str, object]], direction: str | None):
    """``grid`` (or each grid of a list) with ``pass`` = direction where it names none; unchanged for None."""
    if direction is None:
        return grid
    if isinstance(grid, Mapping):
        return {"pass": direction} | dict(grid)
    return [{"pass": direction} | dict(g) for g in grid]

