"""The pipeline: hardware + problem + kernel config → schedule → counts (→ L2 → cost, as those models land)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from iosim.counts import Counts, KernelCounts, count
from iosim.hwprofile import Hardware
from iosim.problem import KernelConfig, Problem
from iosim.registry import get
from iosim.schedule import Schedule


@dataclass(frozen=True)
class Prediction:
    hardware: Hardware
    schedule: Schedule
    counts: Counts
    dram_read_bytes: int | None = None
    dram_write_bytes: int | None = None
    time_s: float | None = None

    def to_dict(self) -> dict:
        """The `iosim predict --json` object (the CLI contract): totals plus the same fields per kernel."""
        s = self.schedule

        def kernel_dict(k: KernelCounts) -> dict:
            return {
                "name": k.name, "programs": k.programs,
                "flops": k.flops, "matmul_flops": k.matmul_flops, "exp_ops": k.exp_ops, "other_flops": k.other_flops,
                "sm_read_bytes": k.sm_read_bytes, "sm_write_bytes": k.sm_write_bytes,
                "read_bytes_by_tensor": dict(k.read_bytes), "write_bytes_by_tensor": dict(k.write_bytes),
                "dram_read_bytes": None, "dram_write_bytes": None, "time_s": None,
                "sram_bytes_per_cta": k.sram_bytes,
            }

        c = self.counts
        return {
            "algorithm": s.algorithm,
            "hardware": self.hardware.name,
            "problem": asdict(s.problem),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s.config).items()},
            "flops": c.flops, "matmul_flops": c.matmul_flops, "exp_ops": c.exp_ops, "other_flops": c.other_flops,
            "sm_read_bytes": c.sm_read_bytes, "sm_write_bytes": c.sm_write_bytes,
            "read_bytes_by_tensor": c.tensor_bytes("read"), "write_bytes_by_tensor": c.tensor_bytes("write"),
            "dram_read_bytes": self.dram_read_bytes, "dram_write_bytes": self.dram_write_bytes,
            "time_s": self.time_s,
            "notes": list(s.notes),
            "kernels": [kernel_dict(k) for k in c.kernels],
        }


def build_schedule(algorithm: str, problem: Problem, config: KernelConfig, hardware: Hardware | None) -> Schedule:
    return get(algorithm).build(problem, config, hardware)


def predict(hardware: Hardware, problem: Problem, config: KernelConfig, algorithm: str = "flash2") -> Prediction:
    schedule = build_schedule(algorithm, problem, config, hardware)
    return Prediction(hardware, schedule, count(schedule))
