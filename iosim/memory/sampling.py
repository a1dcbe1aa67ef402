"""What L2 set sampling costs in accuracy, measured, and the sentence that says so beside every prediction.

The L2 is simulated on 1 in ``stride`` sets (``iosim.memory.l2``): exact where every access covers whole aligned
groups of ``stride`` lines, otherwise a set-sampling estimate. ``MEASURED`` is the error of that estimate against
stride 1 (every set), from ``benchmarks/bench_sampling_error.py`` (results: ``benchmarks/results/sampling_error.json``;
40 cases: FA2/flex/Triton presets, standard, split-KV, block-sparse and FA2 backward; ragged N, causal, GQA,
d 64/128/96; 2K–16K tokens; H100, H200, A100, B200). The large write errors are split-KV decode (Nq = 1), whose DRAM
writes are a few hundred lines (93–124 kB), so 1 in 128 sets sees only a handful of them.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "benchmarks/bench_sampling_error.py"
DATE = "2026-12-05"
COMMIT = "5c7ced1"  # HEAD when the benchmark ran


@dataclass(frozen=True)
class SamplingError:
    """|sampled − stride 1| / stride 1 of DRAM read and write bytes over the non-exact runs at one stride."""

    stride: int
    runs: int
    read_median: float
    read_p95: float
    read_worst: float
    write_median: float
    write_p95: float
    write_worst: float


MEASURED: tuple[SamplingError, ...] = (
    SamplingError(32, 36, 0, 0.000939029, 0.00275519, 0, 0.0157252, 0.0989011),
    SamplingError(64, 3, 0, 0.000145091, 0.000161212, 0, 0.000654545, 0.000727273),
    SamplingError(128, 37, 0, 0.00467929, 0.0112531, 0, 0.0709263, 0.582418),
)


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%"


def describe(stride: int, exact: bool) -> str:
    """One line: the sampling stride, whether the result is exact, and where it is not the measured error."""
    if stride == 1:
        return "L2 simulated on every set: exact"
    head = f"L2 simulated on 1 in {stride} sets"
    if exact:
        return f"{head}: exact (every access covers whole aligned groups)"
    m = next((m for m in MEASURED if m.stride == stride), None)
    if m is None:
        return (f"{head}: set-sampling estimate; error not measured at this stride (measured at "
                f"{', '.join(str(m.stride) for m in MEASURED)}: {SOURCE})")
    return (f"{head}: set-sampling estimate; measured error of DRAM read bytes median {_pct(m.read_median)}, "
            f"p95 {_pct(m.read_p95)}, worst {_pct(m.read_worst)}, of write bytes median {_pct(m.write_median)}, "
            f"p95 {_pct(m.write_p95)}, worst {_pct(m.write_worst)} over {m.runs} non-exact runs ({SOURCE}, {DATE})")
