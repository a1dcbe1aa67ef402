"""Hardware profiles: one TOML file per chip, every number with its kind and source.

File format (``schema_version = 1``)::

    schema_version = 1
    name = "h100"
    full_name = "NVIDIA H100 SXM5 80GB"
    vendor = "nvidia"            # nvidia | huawei
    arch = "sm90"

    [values]
    sm_count = { value = 132, kind = "datasheet", source = "Hopper whitepaper, Table 3" }
    ...

    [values.tensor_flops_per_s]  # dense, per dtype
    bf16 = { value = 989.4e12, kind = "datasheet", source = "..." }

An optional ``[interconnect]`` table (links between GPUs, same entry shape) is read by ``iosim.multigpu.interconnect``.

``kind`` is one of KINDS. ``measured`` and ``calibrated`` values name the tool and date in their source.
Base units only (bytes, Hz, s, flop); the unit is in the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from iosim.errors import IosimError

SCHEMA_VERSION = 1
CHANGES_SINCE: dict[int, str] = {}  # version -> what changed after it; empty while only version 1 exists
KINDS = ("datasheet", "whitepaper", "paper", "documentation", "measured", "calibrated", "derived", "assumed", "estimate")
VENDORS = ("nvidia", "huawei", "amd")
DTYPES = ("fp64", "tf32", "fp16", "bf16", "fp8")


@dataclass(frozen=True)
class Source:
    kind: str
    text: str


@dataclass(frozen=True)
class Hardware:
    """One chip. Field names carry their units; all values are base units."""

    name: str
    full_name: str
    vendor: str
    arch: str
    sm_count: int
    boost_clock_hz: float
    hbm_bandwidth_bytes_per_s: float
    hbm_capacity_bytes: int
    l2_size_bytes: int
    l2_line_bytes: int
    l2_sector_bytes: int
    smem_per_sm_bytes: int
    smem_per_block_bytes: int
    registers_per_sm: int
    max_ctas_per_sm: int
    max_threads_per_sm: int
    tensor_flops_per_s: Mapping[str, float]
    fp32_flops_per_s: float
    sfu_ops_per_clock_per_sm: int
    # Optional: geometry the L2 model and cost model refine (None = not known for this chip).
    l2_partitions: int | None = None
    l2_ways: int | None = None
    l2_bandwidth_bytes_per_s: float | None = None
    smem_bandwidth_bytes_per_clock_per_sm: int | None = None
    max_registers_per_thread: int | None = None
    # Optional L2 organisation (iosim.memory.l2.L2Geometry.from_hardware; measured by `iosim calibrate --l2`, issue 9).
    l2_sharing: str | None = None
    l2_policy: str | None = None
    l2_hash: str | None = None
    l2_hash_granule_lines: int | None = None
    l2_home_granule_lines: int | None = None
    l2_store_allocate: bool | None = None
    l2_store_near: bool | None = None
    l2_dram_fetch_bytes: int | None = None
    l2_way_spread: int | None = None
    # Optional: the host link (PCIe/NVLink to CPU memory) for K/V offloaded to host memory (models.fastattention).
    host_bandwidth_bytes_per_s: float | None = None
    # Optional: split Cube/Vector devices (Ascend dav-c220): vector cores paired with each AI core and the Unified
    # Buffer of one vector core (the Vector unit's only on-chip memory; Cube results reach it through GM/L2).
    vector_cores_per_sm: int | None = None
    ub_per_vector_core_bytes: int | None = None
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)
    path: str = field(default="", compare=False)

    def tensor_flops(self, dtype: str) -> float:
        """Dense tensor-core FLOP/s for ``dtype``; clear error if the chip has none for it."""
        try:
            return self.tensor_flops_per_s[dtype]
        except KeyError:
            known = ", ".join(sorted(self.tensor_flops_per_s))
            raise IosimError(f"hardware {self.name!r} has no tensor-core rate for {dtype!r}; it has: {known}") from None


_REQUIRED_INT = ("sm_count", "hbm_capacity_bytes", "l2_size_bytes", "l2_line_bytes", "l2_sector_bytes",
                 "smem_per_sm_bytes", "smem_per_block_bytes", "registers_per_sm", "max_ctas_per_sm",
                 "max_threads_per_sm", "sfu_ops_per_clock_per_sm")
_REQUIRED_FLOAT = ("boost_clock_hz", "hbm_bandwidth_bytes_per_s", "fp32_flops_per_s")
_OPTIONAL_INT = ("l2_partitions", "l2_ways", "smem_bandwidth_bytes_per_clock_per_sm", "max_registers_per_thread",
                 "l2_hash_granule_lines", "l2_home_granule_lines", "l2_dram_fetch_bytes", "l2_way_spread",
                 "vector_cores_per_sm", "ub_per_vector_core_bytes")
_OPTIONAL_BOOL = ("l2_store_allocate", "l2_store_near")


def _l2_choices() -> dict[str, tuple[str, ...]]:
    from iosim.memory.l2 import HASHES, POLICIES, SHARING
    return {"l2_sharing": SHARING, "l2_policy": POLICIES, "l2_hash": HASHES}


_OPTIONAL_STR = ("l2_sharing", "l2_policy", "l2_hash")
_OPTIONAL_FLOAT = ("l2_bandwidth_bytes_per_s", "host_bandwidth_bytes_per_s")
_VALUE_KEYS = set(_REQUIRED_INT + _REQUIRED_FLOAT + _OPTIONAL_INT + _OPTIONAL_FLOAT + _OPTIONAL_BOOL + _OPTIONAL_STR
                  + ("tensor_flops_per_s",))


def _fail(path: str, key: str, msg: str) -> IosimError:
    return IosimError(f"{path}: key {key!r}: {msg}")


def _source(path: str, key: str, raw: object) -> Source:
    """Check an entry's shape ({value, kind, source[, note]}) and return its kind and source."""
    if not isinstance(raw, dict):
        raise _fail(path, key, f"expected an inline table {{ value = ..., kind = ..., source = \"...\" }}, got {raw!r}")
    missing = [k for k in ("value", "kind", "source") if k not in raw]
    if missing:
        raise _fail(path, key, f"missing {', '.join(missing)} (every value needs value, kind and source)")
    extra = set(raw) - {"value", "kind", "source", "note"}
    if extra:
        raise _fail(path, key, f"unknown field(s) {sorted(extra)}; allowed: value, kind, source, note")
    kind, source = raw["kind"], raw["source"]
    if kind not in KINDS:
        raise _fail(path, key, f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(source, str) or len(source.strip()) < 4:
        raise _fail(path, key, "source must say where the number comes from (datasheet, paper section, measurement)")
    return Source(kind, source.strip())


_ZERO_OK = ("values.l2_way_spread",)   # a count whose 0 is meaningful (every set has the nominal ways)


def _entry(path: str, key: str, raw: object, integral: bool) -> tuple[int | float, Source]:
    src = _source(path, key, raw)
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, key, f"value must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite or value < 0 or (value == 0 and key not in _ZERO_OK):
        raise _fail(path, key, f"value must be a {'non-negative' if key in _ZERO_OK else 'positive'} finite number, "
                    f"got {value!r}")
    if integral:
        if float(value) != int(value):
            raise _fail(path, key, f"value must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    return value, src


def _choice_entry(path: str, key: str, raw: object, choices: tuple | None) -> tuple[object, Source]:
    """A {value, kind, source} entry whose value is one of ``choices`` (strings) or a bool (choices None)."""
    src = _source(path, key, raw)
    v = raw["value"]
    if choices is None:
        if not isinstance(v, bool):
            raise _fail(path, key, f"value must be true or false, got {v!r}")
    elif v not in choices:
        raise _fail(path, key, f"value must be one of {', '.join(choices)}, got {v!r}")
    return v, src


def parse_profile(doc: dict, path: str) -> Hardware:
    """Validate a parsed TOML document and build a Hardware; errors name the file and key."""
    version = doc.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        changes = "; ".join(f"since v{v}: {c}" for v, c in sorted(CHANGES_SINCE.items())
                            if type(version) is int and v >= version)
        raise _fail(path, "schema_version", f"expected {SCHEMA_VERSION}, got {version!r}" + (f" ({changes})" if changes else ""))
    head: dict[str, str] = {}
    for key in ("name", "full_name", "vendor", "arch"):
        v = doc.get(key)
        if not isinstance(v, str) or not v:
            raise _fail(path, key, "expected a non-empty string")
        head[key] = v
    if head["vendor"] not in VENDORS:
        raise _fail(path, "vendor", f"expected one of {', '.join(VENDORS)}, got {head['vendor']!r}")
    values = doc.get("values")
    if not isinstance(values, dict):
        raise _fail(path, "values", "expected a [values] table")
    unknown_top = set(doc) - {"schema_version", "name", "full_name", "vendor", "arch", "values", "interconnect"}
    if unknown_top:
        raise _fail(path, sorted(unknown_top)[0], "unknown top-level key; allowed: schema_version, name, full_name, "
                    "vendor, arch, [values], [interconnect]")
    if "interconnect" in doc and not isinstance(doc["interconnect"], dict):  # read by iosim.multigpu.interconnect
        raise _fail(path, "interconnect", "expected an [interconnect] table of {value, kind, source} entries")
    unknown = set(values) - _VALUE_KEYS
    if unknown:
        raise _fail(path, f"values.{sorted(unknown)[0]}", f"unknown key; known keys: {', '.join(sorted(_VALUE_KEYS))}")
    out: dict[str, object] = dict(head)
    sources: dict[str, Source] = {}
    for key in _REQUIRED_INT + _REQUIRED_FLOAT + _OPTIONAL_INT + _OPTIONAL_FLOAT:
        if key not in values:
            if key in _REQUIRED_INT or key in _REQUIRED_FLOAT:
                raise _fail(path, f"values.{key}", "missing (required)")
            continue
        res = _entry(path, f"values.{key}", values[key], key in _REQUIRED_INT or key in _OPTIONAL_INT)
        out[key], sources[key] = res
    choices = _l2_choices()
    for key in _OPTIONAL_STR + _OPTIONAL_BOOL:
        if key in values:
            out[key], sources[key] = _choice_entry(path, f"values.{key}", values[key], choices.get(key))
    tf = values.get("tensor_flops_per_s")
    if not isinstance(tf, dict) or not tf:
        raise _fail(path, "values.tensor_flops_per_s", f"expected a table of dtype = {{...}} entries ({', '.join(DTYPES)})")
    rates: dict[str, float] = {}
    for dt, raw in tf.items():
        if dt not in DTYPES:
            raise _fail(path, f"values.tensor_flops_per_s.{dt}", f"unknown dtype; known: {', '.join(DTYPES)}")
        res = _entry(path, f"values.tensor_flops_per_s.{dt}", raw, False)
        rates[dt], sources[f"tensor_flops_per_s.{dt}"] = res
    out["tensor_flops_per_s"] = MappingProxyType(rates)
    hw = Hardware(**out, sources=MappingProxyType(sources), path=path)  # type: ignore[arg-type]
    _check_consistency(hw)
    return hw


def _check_consistency(hw: Hardware) -> None:
    p = hw.path
    for key in ("l2_line_bytes", "l2_sector_bytes"):
        v = getattr(hw, key)
        if v & (v - 1):
            raise _fail(p, f"values.{key}", f"must be a power of two, got {v}")
    if hw.l2_line_bytes % hw.l2_sector_bytes:
        raise _fail(p, "values.l2_sector_bytes", f"sector ({hw.l2_sector_bytes} B) must divide the line ({hw.l2_line_bytes} B)")
    if hw.smem_per_block_bytes > hw.smem_per_sm_bytes:
        raise _fail(p, "values.smem_per_block_bytes", f"{hw.smem_per_block_bytes} B per block exceeds {hw.smem_per_sm_bytes} B per SM")


def load_profile_file(path: str | Path) -> Hardware:
    """Load a user's TOML profile by path."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise IosimError(f"cannot read hardware profile {path}: {e.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise IosimError(f"{path}: malformed TOML: {e}") from None
    return parse_profile(doc, str(path))


def builtin_names() -> list[str]:
    """Names of the profiles embedded in iosim.hardware, sorted."""
    pkg = resources.files("iosim.hardware")
    return sorted(p.name[:-5] for p in pkg.iterdir() if p.name.endswith(".toml"))


_CACHE: dict[str, Hardware] = {}


def load_hardware(name_or_path: str | Path) -> Hardware:
    """A built-in profile by name (``h100``) or a TOML file by path."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise IosimError(f"hardware must be a profile name ({', '.join(builtin_names())}) or a path to a .toml "
                         f"profile, got {name_or_path!r}")
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s or Path(s).is_file():
        return load_profile_file(s)
    key = s.lower()
    if key not in _CACHE:
        names = builtin_names()
        if key not in names:
            raise IosimError(f"unknown hardware {s!r}; known: {', '.join(names)} (or give a path to a .toml profile)")
        res = resources.files("iosim.hardware").joinpath(f"{key}.toml")
        try:
            doc = tomllib.loads(res.read_text())
        except tomllib.TOMLDecodeError as e:
            raise IosimError(f"{res}: malformed TOML: {e}") from None
        _CACHE[key] = parse_profile(doc, str(res))
    return _CACHE[key]


def profile_table(hw: Hardware) -> list[tuple[str, object, str, str]]:
    """(key, value, kind, source) rows for display."""
    rows = []
    for f in fields(hw):
        if f.name in ("sources", "path", "name", "full_name", "vendor", "arch"):
            continue
        v = getattr(hw, f.name)
        if f.name == "tensor_flops_per_s":
            for dt, r in v.items():
                s = hw.sources.get(f"tensor_flops_per_s.{dt}")
                rows.append((f"tensor_flops_per_s.{dt}", r, s.kind if s else "", s.text if s else ""))
        elif v is not None:
            s = hw.sources.get(f.name)
            rows.append((f.name, v, s.kind if s else "", s.text if s else ""))
    return rows
