"""Where a schedule's tensors live in global memory: row-major at aligned base addresses.

Tensors are placed one after another in the schedule's order (inputs, then outputs, then scratch, as the models list
them), each at the next multiple of ``align_bytes``. The default 2 MiB is the granule of PyTorch's CUDA caching
allocator for large tensors (one cudaMalloc segment per large tensor, segments rounded to 2 MiB), so every base is
at least line-, 16 KiB- and set-group-aligned, as on the GPU. Addresses start at ``base_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from iosim.errors import IosimError
from iosim.expr import evaluate
from iosim.schedule import Schedule, TensorSpec

DEFAULT_ALIGN_BYTES = 2 << 20


@dataclass(frozen=True)
class Placed:
    spec: TensorSpec
    base: int                 # byte address of element 0
    dims: tuple[int, ...]     # concrete extents
    strides: tuple[int, ...]  # element strides (row-major)

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n * self.spec.elem_bytes


@dataclass(frozen=True)
class Layout:
    tensors: Mapping[str, Placed]
    end: int  # first byte after the last tensor

    def __getitem__(self, name: str) -> Placed:
        try:
            return self.tensors[name]
        except KeyError:
            raise IosimError(f"tile refers to tensor {name!r}, which the schedule does not declare") from None


def layout(schedule: Schedule, align_bytes: int = DEFAULT_ALIGN_BYTES, base_bytes: int = 0) -> Layout:
    """Row-major placement of every tensor of the schedule (concrete sizes only)."""
    if align_bytes <= 0 or align_bytes & (align_bytes - 1):
        raise IosimError(f"tensor alignment must be a power of two, got {align_bytes}")
    out = {}
    addr = base_bytes
    for name, spec in schedule.tensors.items():
        dims = []
        for d in spec.dims:
            v = evaluate(d, {})
            if not isinstance(v, int):
                raise IosimError(f"tensor {name} has a symbolic extent {d}; the L2 model needs concrete sizes")
            dims.append(int(v))
        strides = [1] * len(dims)
        for i in range(len(dims) - 2, -1, -1):
            strides[i] = strides[i + 1] * dims[i + 1]
        addr = -(-addr // align_bytes) * align_bytes
        p = Placed(spec, addr, tuple(dims), tuple(strides))
        out[name] = p
        addr += p.nbytes
    return Layout(MappingProxyType(out), addr)
