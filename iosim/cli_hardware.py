"""``iosim hardware``: list the built-in profiles, show one with its sources, or print a template to fill in."""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import MISSING, fields
from typing import IO

from iosim.hwprofile import Hardware, builtin_names, load_hardware, parse_profile, profile_table
from iosim.textfmt import format_table

COMMAND = "hardware"

TEMPLATE_KIND = "assumed"
TEMPLATE_SOURCE = "template: replace with your GPU's datasheet/measurement"
_HEAD = ("name", "full_name", "vendor", "arch")  # top-level strings, not [values] entries
_NOT_KEYS = _HEAD + ("sources", "path")

# What each key means (the unit is in its name; UNIT_BY_SUFFIX spells it out). A key missing here still gets its unit.
DESCRIPTIONS = {
    "sm_count": "streaming multiprocessors (compute units) on the chip",
    "boost_clock_hz": "SM clock the per-clock rates are taken at",
    "hbm_bandwidth_bytes_per_s": "peak DRAM (HBM) bandwidth",
    "hbm_capacity_bytes": "DRAM (HBM) capacity",
    "dram_capacity_bytes": "DRAM capacity",
    "l2_size_bytes": "L2 cache size (all partitions together)",
    "l2_line_bytes": "L2 line (tag) size, a power of two",
    "l2_sector_bytes": "L2 sector size (the unit fetched from DRAM), divides the line",
    "smem_per_sm_bytes": "shared memory per SM",
    "smem_per_block_bytes": "shared memory one CTA may opt into (<= per SM)",
    "registers_per_sm": "32-bit registers per SM",
    "max_ctas_per_sm": "resident CTAs (thread blocks) per SM",
    "max_threads_per_sm": "resident threads per SM",
    "fp32_flops_per_s": "non-tensor FP32 rate (an FMA counts 2 FLOPs)",
    "sfu_ops_per_clock_per_sm": "special-function (exp2) results per clock per SM",
    "l2_partitions": "L2 partitions (optional)",
    "l2_ways": "L2 associativity (optional)",
    "l2_bandwidth_bytes_per_s": "SM<->L2 bandwidth (optional; default 4 x HBM)",
    "smem_bandwidth_bytes_per_clock_per_sm": "shared-memory bandwidth per SM (optional; smem time not modeled without it)",
    "max_registers_per_thread": "register limit per thread (optional)",
    "l2_sharing": "L2 partitions: one shared cache or partitions that duplicate lines (optional)",
    "l2_policy": "L2 replacement policy (optional)",
    "l2_hash": "L2 set-index hash (optional)",
    "l2_hash_granule_lines": "lines kept together by the set hash (optional)",
    "l2_home_granule_lines": "lines per block homed in one partition (optional)",
    "l2_store_allocate": "stores allocate lines in L2 (optional)",
    "l2_store_near": "stores take room in the near partition like loads (optional)",
    "l2_dram_fetch_bytes": "bytes fetched from DRAM per L2 miss (optional)",
    "l2_way_spread": "ways per L2 set vary by +-this much around l2_ways (optional; 0 = none)",
    "tensor_flops_per_s": "dense tensor-core rate for this dtype (not the 'with sparsity' figure)",
}
UNIT_BY_SUFFIX = (("_flops_per_s", "FLOP/s"), ("_bytes_per_s", "bytes/s"), ("_bytes_per_clock_per_sm", "bytes per clock per SM"),
                  ("_per_clock_per_sm", "per clock per SM"), ("_bytes", "bytes"), ("_hz", "Hz"), ("_lines", "L2 lines"))


def unit(key: str) -> str:
    """The unit a key's name carries (a plain count if none)."""
    return next((u for suffix, u in UNIT_BY_SUFFIX if key.endswith(suffix)), "count")


def _value_keys() -> list[tuple[str, bool]]:
    """(key, required) for every [values] key, from the loader's Hardware dataclass, in its field order."""
    return [(f.name, f.default is MISSING and f.default_factory is MISSING) for f in fields(Hardware)
            if f.name not in _NOT_KEYS]


def _toml_value(v: object) -> str:
    """TOML literal that reads back to exactly ``v``: ints with digit groups, floats as short as round-trips."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:_}"
    if isinstance(v, float):
        s = next(s for p in range(1, 18) if float(s := f"{v:.{p}g}") == v)
        return s if ("e" in s or "." in s) else s + ".0"
    return json.dumps(v)


def _entry(v: object) -> str:
    return f"{{ value = {_toml_value(v)}, kind = {json.dumps(TEMPLATE_KIND)}, source = {json.dumps(TEMPLATE_SOURCE)} }}"


def _comment(key: str, was: str) -> str:
    from iosim.memory.l2 import HASHES, POLICIES, SHARING
    choices = {"l2_sharing": SHARING, "l2_policy": POLICIES, "l2_hash": HASHES}
    base = key.split(".")[0]
    what = DESCRIPTIONS.get(base, base.replace("_", " "))
    u = ", ".join(choices[base]) if base in choices else unit(base)
    u = "true or false" if base in ("l2_store_allocate", "l2_store_near") else u
    return f"# {key}: {what} [{u}]; {was}"


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def profile_template(hw: Hardware) -> str:
    """A TOML profile with every key of ``hw`` (kind assumed, source 'template: ...'), a comment per key saying
    what it is, its unit and what ``hw`` had; optional keys ``hw`` lacks are listed, commented out."""
    from iosim.hwprofile import DTYPES, KINDS, SCHEMA_VERSION, VENDORS
    table = {k: (v, kind, src) for k, v, kind, src in profile_table(hw)}
    lines = [f"# iosim hardware profile template, values copied from {hw.name} ({hw.full_name}).",
             "# Replace each value with your GPU's, and its kind and source with where the number comes from:",
             f"# kind is one of {', '.join(KINDS)}; base units only (the unit is in the key name).",
             "# Load it with: iosim predict --hardware ./this_file.toml   (check it: iosim hardware show ./this_file.toml)",
             f"schema_version = {SCHEMA_VERSION}",
             "# name: short name shown in outputs; full_name: the product; vendor: one of " + ", ".join(VENDORS) + ";",
             "# arch: sm70/sm80/sm90/sm100 (NVIDIA compute capability) or dav-c220 (Ascend): picks the tensor-core path",
             f"name = {json.dumps('my_gpu')}",
             f"full_name = {json.dumps('my GPU (template from ' + hw.full_name + ')')}",
             f"vendor = {json.dumps(hw.vendor)}",
             f"arch = {json.dumps(hw.arch)}",
             "", "[values]"]
    tensor = []
    for key, required in _value_keys():
        if key == "tensor_flops_per_s":
            tensor = [k for k in table if k.startswith("tensor_flops_per_s.")]
            continue
        if key in table:
            v, kind, src = table[key]
            lines += [_comment(key, f"{hw.name}: {kind}, {_short(src)}"), f"{key} = {_entry(v)}"]
        elif not required:
            lines.append(_comment(key, f"not set for {hw.name}; to set it: {key} = {{ value = ..., kind = ..., source = ... }}"))
    lines += ["", "[values.tensor_flops_per_s]", f"# one entry per dtype the tensor cores run ({', '.join(DTYPES)})"]
    for k in tensor:
        v, kind, src = table[k]
        lines += [_comment(k, f"{hw.name}: {kind}, {_short(src)}"), f"{k.split('.', 1)[1]} = {_entry(v)}"]
    text = "\n".join(lines) + "\n"
    parse_profile(tomllib.loads(text), "<template>")  # never emit a profile the loader rejects
    return text


def add_parser(sub) -> None:
    hw = sub.add_parser(COMMAND, help="list, show or template hardware profiles")
    hws = hw.add_subparsers(dest="hw_command", required=True)
    hws.add_parser("list", help="built-in profiles")
    show = hws.add_parser("show", help="every value of a profile with its kind and source")
    show.add_argument("name", help="profile name or path to a .toml file")
    tpl = hws.add_parser("template", help="print a TOML profile to fill in for your GPU (values copied from --from)")
    tpl.add_argument("--from", dest="base", default="h100", help="profile whose values to copy (default h100)")
    tpl.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout")


def _shown(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def run(args: argparse.Namespace, out: IO[str]) -> int:
    if args.hw_command == "list":
        rows = [(n, (hw := load_hardware(n)).full_name, hw.arch, hw.sm_count) for n in builtin_names()]
        out.write(format_table(("name", "full name", "arch", "SMs"), rows, "lllr"))
    elif args.hw_command == "show":
        hw = load_hardware(args.name)
        out.write(f"{hw.name}: {hw.full_name} ({hw.vendor} {hw.arch}), from {hw.path}\n")
        rows = [(key, _shown(val), kind, src) for key, val, kind, src in profile_table(hw)]
        out.write(format_table(("key", "value", "kind", "source"), rows, "lrll", indent="  "))
    else:
        text = profile_template(load_hardware(args.base))
        if args.out:
            from iosim.atomic import atomic_write_text
            atomic_write_text(args.out, text)
            out.write(f"wrote {args.out}: edit its values, kinds and sources, then "
                      f"`iosim predict --hardware {args.out}`\n")
        else:
            out.write(text)
    return 0
