"""Passes: the forward, the backward, or both as one schedule (``iosim predict --pass fwd|bwd|fwd+bwd``).

``BACKWARD`` maps an algorithm to the algorithm of its gradient. "fwd+bwd" concatenates the two schedules
(``concat_schedules``): kernels in launch order (forward, then backward), tensors merged by name (the backward's
inputs O and LSE are the forward's outputs), so counts, the L2 model (one trace, its contents carried from the
forward into the backward) and the cost read it as any schedule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from iosim.errors import IosimError

DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
BACKWARD = {"flash2": "flash2_bwd"}
"""Algorithm → the algorithm of its backward (``models/flash2_bwd.py``: FA2's backward kernels)."""


def passes_of(direction: str) -> tuple[str, ...]:
    """The single passes a direction runs, in launch order: "fwd+bwd" → ("fwd", "bwd")."""
    if direction not in DIRECTIONS:
        raise IosimError(f"unknown pass {direction!r}; use one of {', '.join(DIRECTIONS)} (--pass)")
    return tuple(direction.split("+"))


def backward_of(algorithm: str) -> str:
    try:
        return BACKWARD[algorithm]
    except KeyError:
        raise IosimError(f"{algorithm} has no backward; algorithms with one: {', '.join(BACKWARD)}") from None


def pin_launch(schedule, regs_per_thread: int | None):
    """``schedule`` with each kernel's shared memory (at its config's num_stages) and register count (the preset's,
    where given; a kernel's own count stays) written into the kernel, so that it keeps them inside a concatenation
    whose config is another pass's (the L2 timeline's occupancy reads them first)."""
    from iosim.counts import sram_bytes
    stages = getattr(schedule.config, "num_stages", 1)
    return replace(schedule, kernels=tuple(replace(
        k, smem_bytes=sram_bytes(k, stages) if k.smem_bytes is None else k.smem_bytes,
        regs_per_thread=regs_per_thread if k.regs_per_thread is None else k.regs_per_thread) for k in schedule.kernels))


def _merge(kind: str, a: dict, b: dict, same) -> dict:
    out = dict(a)
    for name, v in b.items():
        if name in a and not same(a[name], v):
            raise IosimError(f"cannot concatenate the passes: {kind} {name!r} differs between them; "
                             "the backward must run on the forward's problem")
        out.setdefault(name, v)
    return out


def concat_schedules(first, second):
    """One schedule launching ``first``'s kernels, then ``second``'s, over the union of their tensors and tables.

    A tensor (or table) both name must have the same shape and element size (equal contents); it keeps ``first``'s
    role (O: the forward's output, the backward's input). The config is ``first``'s (``pin_launch`` the parts to keep
    their own per-kernel shared memory and registers); notes are both, in order."""
    import numpy as np
    from iosim.schedule import Schedule
    if first.problem != second.problem:
        raise IosimError("cannot concatenate the passes: they are for different problems")
    dup = sorted({k.name for k in first.kernels} & {k.name for k in second.kernels})
    if dup:
        raise IosimError(f"cannot concatenate the passes: kernel name {dup[0]!r} is in both")
    tensors = _merge("tensor", first.tensors, second.tensors,
                     lambda x, y: (tuple(x.dims), x.elem_bytes) == (tuple(y.dims), y.elem_bytes))
    tables = _merge("table", first.tables, second.tables, lambda x, y: np.array_equal(x, y))
    return Schedule(f"{first.algorithm}+{second.algorithm}", first.problem, first.config, tensors,
                    first.kernels + second.kernels, first.notes + second.notes, tables=tables)


def concat_estimates(parts, algorithm: str):
    """The ``iosim.cost.TimeEstimate`` of passes estimated one by one (each with its own config, instruction path and
    registers), as ``estimate`` sums the kernels of one schedule: times and bytes add, the bound is the slowest
    kernel's; a source that differs between passes lists both."""
    from iosim.cost import RESOURCES
    if len(parts) == 1:
        return parts[0]
    kts = tuple(k for t in parts for k in t.kernels)
    slowest = max(kts, key=lambda k: k.time_s)
    total = lambda attr: sum(getattr(t, attr) for t in parts)  # noqa: E731
    return replace(parts[0], algorithm=algorithm, kernels=kts, **{f"{r}_s": total(f"{r}_s") for r in RESOURCES},
                   launch_s=total("launch_s"), time_s=total("time_s"), bound=slowest.bound, resource=slowest.resource,
                   matmul_flops=total("matmul_flops"), flops=total("flops"),
                   dram_read_bytes=total("dram_read_bytes"), dram_write_bytes=total("dram_write_bytes"),
                   dram_assumed=any(t.dram_assumed for t in parts),
                   sources={k: " | ".join(dict.fromkeys(t.sources.get(k, v) for t in parts))
                            for k, v in parts[0].sources.items()})


@dataclass(frozen=True)
class Pass:
    """One pass of a prediction: "fwd" or "bwd", the algorithm and config it ran with, its kernels in launch order."""

    name: str
    algorithm: str
    config: object  # iosim.problem.KernelConfig
    kernels: tuple[str, ...]

    @classmethod
    def of(cls, name: str, schedule) -> "Pass":
        return cls(name, schedule.algorithm, schedule.config, tuple(k.name for k in schedule.kernels))


PASS_FIELDS = ("time_s", "sm_read_bytes", "sm_write_bytes", "dram_read_bytes", "dram_write_bytes")


def pass_totals(kernels: list[dict], passes) -> dict[str, dict]:
    """Per pass: algorithm, config, kernel names and the sums of ``PASS_FIELDS`` over its kernels (``kernels``:
    ``Prediction.to_dict`` kernel dicts; a sum is None where a kernel has no value)."""
    by_name = {k["name"]: k for k in kernels}
    out = {}
    for p in passes:
        ks = [by_name[n] for n in p.kernels]
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p.config).items()}
        out[p.name] = {"algorithm": p.algorithm, "config": cfg, "kernels": list(p.kernels)} | {
            f: None if any(k[f] is None for k in ks) else sum(k[f] for k in ks) for f in PASS_FIELDS}
    return out
