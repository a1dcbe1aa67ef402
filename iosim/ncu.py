"""Nsight Compute CSV → kernel launches: ``read_ncu_csv(path_or_text) -> list[NcuLaunch]``.

Reads both CSV layouts ``ncu --csv`` writes:

* long (the default details page): one row per (launch, metric), columns ``ID``, ``Kernel Name``, ``Block Size``,
  ``Grid Size``, …, ``Metric Name``, ``Metric Unit``, ``Metric Value``;
* wide (``--page raw``): one row per launch, one column per metric (every column whose name has ``__``, as ncu's
  metric names do), and a units row (empty ``ID``) after the header.

Log lines (``==PROF==``, the profiled program's own output, ``# …``) are skipped: only lines starting with ``"`` are
CSV. A file may hold several CSVs one after another (one per profiled process); launches keep file order. Values
lose their thousands separators; ``n/a`` and empty cells are left out of ``metrics``. Units become base units:
bytes (``byte``, ``Kbyte``…``Tbyte``, decimal prefixes as ncu prints them), seconds (``ns``, ``nsecond``, ``us``,
``usecond``, ``ms``, ``msecond``, ``s``, ``second``), and rates of those; other units (``sector``, ``cycle``, ``%``)
are kept as printed.

``kernel_family(name)`` names the iosim kernel preset (``iosim.presets``) a launch belongs to, from the kernel name;
``kernel_hints(name)`` the tiles and mask a name spells out (FA2's template arguments).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from iosim.errors import IosimError

_PREFIX = {"": 0, "K": 3, "M": 6, "G": 9, "T": 12}  # powers of ten
_SECONDS = {"ns": -9, "nsecond": -9, "us": -6, "usecond": -6, "ms": -3, "msecond": -3, "s": 0, "second": 0}
MARKER_PREFIX = "iosim_mark"
"""Marker kernels of iosim's harnesses (``iosim_mark_begin``/``_end``, ``iosim_marker``): not attention launches."""

FAMILIES = (  # (substring of the kernel name, preset), first match wins; names as in reports/validation/*/raw
    ("flash_fwd_splitkv", "fa2"),        # FA2's split-KV path (pytorch_flash::flash_fwd_splitkv_kernel, _combine_)
    ("flash_fwd_kernel", "fa2"),         # void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<…>, …>
    ("flex_attention", "flex"),          # triton_tem_fused_flex_attention_0 (torch.compile'd FlexAttention)
    ("_attn_fwd", "triton-tutorial"),    # triton tutorials/06-fused-attention.py
    ("_fwd_kernel", "iosim-triton"),     # iosim.triton_kernels.kernels: _fwd_kernel, _decode_kernel, _combine_kernel
    ("_decode_kernel", "iosim-triton"),
    ("_combine_kernel", "iosim-triton"),
)


@dataclass(frozen=True)
class NcuLaunch:
    """One profiled kernel launch. metrics: metric name → value in base units (bytes, seconds; see the module)."""

    id: int
    kernel_name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def is_marker(self) -> bool:
        return self.kernel_name.startswith(MARKER_PREFIX)


def kernel_family(name: str) -> str | None:
    """The iosim preset whose kernel this is (fa2, flex, triton-tutorial, iosim-triton), None for other kernels."""
    return next((preset for key, preset in FAMILIES if key in name), None)


_FA2_NAME = re.compile(r"Flash_fwd_kernel_traits<(\d+), (\d+), (\d+), (\d+),[^>]*>>, (\d), (\d)")


def kernel_hints(name: str) -> dict:
    """Launch choices a kernel name spells out, as KernelConfig/Problem field → value; {} for names without them.

    FA2 (``flash_fwd_kernel<Flash_fwd_kernel_traits<kHeadDim, kBlockM, kBlockN, kNWarps, …>, Is_dropout, Is_causal,
    …>``, flash_fwd_launch_template.h): block_m, block_n, num_warps and causal. (kHeadDim is the head dim rounded
    up to an instantiated one, so it is left out.)"""
    m = _FA2_NAME.search(name)
    if m is None:
        return {}
    bm, bn, warps, causal = (int(m.group(i)) for i in (2, 3, 4, 6))
    return {"block_m": bm, "block_n": bn, "num_warps": warps, "causal": bool(causal)}


def to_base(value: float, unit: str) -> float:
    """``value`` printed in ``unit`` → bytes / seconds (and rates of them); other units unchanged."""
    num, _, den = unit.strip().partition("/")

    def exponent(u: str) -> int:
        if u in _SECONDS:
            return _SECONDS[u]
        m = re.fullmatch(r"([KMGT]?)byte", u)
        return _PREFIX[m.group(1)] if m else 0

    e = exponent(num) - (exponent(den) if den else 0)
    return value * 10**e if e >= 0 else value / 10**-e  # divide: 400800 ns -> 0.0004008 s exactly rounded


def _number(text: str) -> float | None:
    t = text.strip().replace(",", "")
    if t in ("", "n/a"):
        return None
    try:
        return float(t)
    except ValueError:
        return None  # a text-valued column (device name, …)


def _dims(text: str) -> tuple[int, int, int]:
    v = [int(x) for x in re.findall(r"\d+", text)] + [1, 1, 1]
    return v[0], v[1], v[2]


def _sections(lines: list[str]) -> list[list[list[str]]]:
    """CSV rows per section; a section starts at each header row (first cell ``ID``)."""
    out: list[list[list[str]]] = []
    for row in csv.reader(io.StringIO("\n".join(lines))):
        if row and row[0] == "ID":
            out.append([row])
        elif out and row:
            out[-1].append(row)
    return out


def _read_section(rows: list[list[str]], src: str) -> list[NcuLaunch]:
    head = rows[0]
    col = {name: i for i, name in enumerate(head)}
    for need in ("Kernel Name", "Grid Size", "Block Size"):
        if need not in col:
            raise IosimError(f"{src}: ncu CSV without a {need!r} column; write it with `ncu --csv [--page raw] …`")
    body = [r for r in rows[1:] if len(r) == len(head)]

    def launch(r: list[str], metrics: dict) -> NcuLaunch:
        return NcuLaunch(int(_number(r[col["ID"]]) or 0), r[col["Kernel Name"]], _dims(r[col["Grid Size"]]),
                         _dims(r[col["Block Size"]]), metrics)

    if "Metric Name" in col and "Metric Value" in col:  # long: one row per (launch, metric)
        by_id: dict[str, tuple[list[str], dict]] = {}
        for r in body:
            first, metrics = by_id.setdefault(r[col["ID"]], (r, {}))
            v = _number(r[col["Metric Value"]])
            if v is not None:
                metrics[r[col["Metric Name"]]] = to_base(v, r[col["Metric Unit"]] if "Metric Unit" in col else "")
        return [launch(first, metrics) for first, metrics in by_id.values()]
    units = body[0] if body and body[0][col["ID"]] == "" else [""] * len(head)  # raw page: units row under header
    out = []
    for r in body:
        if r[col["ID"]] == "":
            continue
        metrics = {}
        for name, i in col.items():
            v = _number(r[i]) if "__" in name else None
            if v is not None:
                metrics[name] = to_base(v, units[i])
        out.append(launch(r, metrics))
    return out


def read_ncu_csv(path_or_text: str | Path) -> list[NcuLaunch]:
    """Every launch of an ncu CSV (a file path, or the CSV text itself when it has a line break), in file order.

    Text with no CSV line at all gives []; a file that does not exist, or a CSV that is not ncu's, raises
    IosimError."""
    if isinstance(path_or_text, Path) or "\n" not in path_or_text:
        src = str(path_or_text)
        try:
            text = Path(path_or_text).read_text(errors="replace")
        except OSError as e:
            raise IosimError(f"cannot read ncu CSV {src}: {e.strerror}; pass the path of `ncu --csv` output") from e
    else:
        src, text = "ncu CSV", path_or_text
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    sections = _sections(lines)
    if lines and not sections:
        raise IosimError(f"{src}: no ncu CSV header (a row starting with \"ID\"); write it with `ncu --csv …`")
    return [ln for rows in sections for ln in _read_section(rows, src)]
