"""Hardware profiles: every built-in profile loads and is internally consistent; bad profiles fail with clear messages."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest

from iosim.errors import IosimError
from iosim.hwprofile import (
    DTYPES,
    KINDS,
    Hardware,
    builtin_names,
    load_hardware,
    load_profile_file,
    profile_table,
)

EXPECTED_BUILTINS = {"v100", "a100", "h100", "h200", "b200", "ascend910b"}
_NOT_VALUES = {"name", "full_name", "vendor", "arch", "sources", "path", "tensor_flops_per_s"}
_VALUE_FIELDS = [f.name for f in dataclasses.fields(Hardware) if f.name not in _NOT_VALUES]


def _h100_text() -> str:
    return resources.files("iosim.hardware").joinpath("h100.toml").read_text()


def _set_line(text: str, key: str, new_line: str) -> str:
    """Replace the one line that starts with ``key =`` (the key's whole inline table)."""
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    assert len(pattern.findall(text)) == 1, f"template has no single line for {key}"
    return pattern.sub(new_line, text)


def _drop_line(text: str, key: str) -> str:
    return _set_line(text, key, "")


def _write(tmp_path: Path, text: str, name: str = "custom.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- built-in profiles: structure --------------------------------------------------------------------------------


def test_all_expected_profiles_are_built_in():
    assert EXPECTED_BUILTINS <= set(builtin_names())
    assert builtin_names() == sorted(builtin_names())


@pytest.mark.parametrize("name", builtin_names())
def test_profile_loads_and_is_consistent(name):
    hw = load_hardware(name)
    assert hw.name == name
    assert hw.full_name and hw.vendor in ("nvidia", "huawei") and hw.arch
    # every present value has a source, with a known kind and real text
    for key in _VALUE_FIELDS:
        value = getattr(hw, key)
        if value is None:
            assert key not in hw.sources
            continue
        if isinstance(value, str):   # L2 organisation choices (l2_policy, l2_hash, l2_sharing)
            from iosim.memory.l2 import HASHES, POLICIES, SHARING
            assert value in POLICIES + HASHES + SHARING, (key, value)
        elif not isinstance(value, bool):
            assert value > 0, key
        src = hw.sources[key]
        assert src.kind in KINDS, key
        assert len(src.text) >= 10, (key, src.text)
    assert hw.tensor_flops_per_s, "at least one tensor-core rate"
    for dtype, rate in hw.tensor_flops_per_s.items():
        assert dtype in DTYPES
        assert rate > 0
        src = hw.sources[f"tensor_flops_per_s.{dtype}"]
        assert src.kind in KINDS and len(src.text) >= 10
    # no stray source entries
    expected_keys = {k for k in _VALUE_FIELDS if getattr(hw, k) is not None}
    expected_keys |= {f"tensor_flops_per_s.{d}" for d in hw.tensor_flops_per_s}
    assert set(hw.sources) == expected_keys
    # physical sanity
    assert hw.smem_per_block_bytes <= hw.smem_per_sm_bytes
    assert hw.l2_line_bytes % hw.l2_sector_bytes == 0
    assert hw.l2_size_bytes % hw.l2_line_bytes == 0
    assert hw.l2_size_bytes < hw.hbm_capacity_bytes
    assert 1e8 < hw.boost_clock_hz < 5e9  # Hz, not MHz
    assert hw.max_ctas_per_sm <= hw.max_threads_per_sm
    for key in ("sm_count", "l2_size_bytes", "smem_per_sm_bytes", "registers_per_sm", "max_ctas_per_sm"):
        assert isinstance(getattr(hw, key), int), key
    # every row of the display table carries kind and source
    for key, value, kind, source in profile_table(hw):
        assert kind in KINDS and source, key


@pytest.mark.parametrize("name", builtin_names())
def test_measured_values_say_where_and_when(name):
    hw = load_hardware(name)
    for key, src in hw.sources.items():
        if src.kind in ("measured", "calibrated"):
            assert re.search(r"20\d\d", src.text), (key, src.text)  # a date
            assert re.search(r"torch|nvidia-smi|ncu|query|cudaDevAttr", src.text), (key, src.text)  # a tool


@pytest.mark.parametrize("name", ["h100", "h200", "b200"])
def test_fp8_is_twice_bf16_dense(name):
    # dense FP8 runs at twice the 16-bit rate on Hopper and Blackwell (datasheets, "with sparsity" halved)
    hw = load_hardware(name)
    assert hw.tensor_flops("fp8") == pytest.approx(2 * hw.tensor_flops("bf16"), rel=0.01)


def test_builtin_names_are_case_insensitive_and_cached():
    assert load_hardware("H100") is load_hardware("h100")


# --- spot values, each with its source ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("h100", "sm_count", 132),  # H100 whitepaper Table 3; torch on the validation H100
        ("h200", "sm_count", 132),  # devices.md (measured on the validation H200)
        ("a100", "sm_count", 108),  # A100 whitepaper Table 4
        ("v100", "sm_count", 80),  # A100 whitepaper Table 4, V100 column
        ("b200", "sm_count", 148),  # FlashAttention-4 section 2.2
        ("ascend910b", "sm_count", 24),  # CANN Ascend910B2.ini ai_core_cnt
        ("h200", "l2_size_bytes", 62914560),  # devices.md: torch L2_cache_size on the validation H200
        ("h100", "l2_size_bytes", 52428800),  # devices.md: torch L2_cache_size on the validation H100
        ("a100", "l2_size_bytes", 40960 * 1024),  # A100 whitepaper Table 4: 40960 KB
        ("v100", "l2_size_bytes", 6144 * 1024),  # A100 whitepaper Table 4: 6144 KB
        ("ascend910b", "l2_size_bytes", 192 * 1024 * 1024),  # CANN ini l2_size
        ("h200", "hbm_bandwidth_bytes_per_s", 4.8e12),  # H200 datasheet
        ("h200", "hbm_capacity_bytes", 141e9),  # H200 datasheet
        ("a100", "hbm_bandwidth_bytes_per_s", 2.039e12),  # A100 80GB datasheet
        ("v100", "hbm_bandwidth_bytes_per_s", 900e9),  # V100 datasheet
        ("a100", "smem_per_block_bytes", 163 * 1024),  # CUDA guide cc 8.0
        ("h200", "smem_per_block_bytes", 232448),  # devices.md (measured opt-in)
        ("v100", "smem_per_block_bytes", 96 * 1024),  # Volta tuning guide
        ("b200", "smem_per_sm_bytes", 228 * 1024),  # CUDA guide cc 10.0
        ("a100", "sfu_ops_per_clock_per_sm", 16),
        ("b200", "sfu_ops_per_clock_per_sm", 16),  # FlashAttention-4 section 2.2
    ],
)
def test_spot_values(name, key, value):
    assert getattr(load_hardware(name), key) == pytest.approx(value)


@pytest.mark.parametrize(
    "name, dtype, rate",
    [
        ("v100", "fp16", 125e12),  # V100 datasheet
        ("a100", "bf16", 312e12),  # A100 datasheet (dense)
        ("a100", "tf32", 156e12),
        ("a100", "fp64", 19.5e12),
        ("h100", "bf16", 989.4e12),  # H100 whitepaper Table 3
        ("h200", "fp8", 1978.9e12),  # H200 datasheet, 3958 with sparsity halved
        ("b200", "bf16", 2.25e15),  # HGX B200 spec halved; FA4 section 2.2
        ("ascend910b", "fp16", 24 * 4096 * 2 * 1.8e9),  # 24 cores x 16^3 MACs x 2 x 1.8 GHz
    ],
)
def test_spot_tensor_rates(name, dtype, rate):
    assert load_hardware(name).tensor_flops(dtype) == pytest.approx(rate, rel=1e-3)


def test_measured_h200_l2_is_marked_measured():
    src = load_hardware("h200").sources["l2_size_bytes"]
    assert src.kind == "measured" and "H200" in src.text


def test_v100_has_no_bf16_or_tf32():
    v100 = load_hardware("v100")
    assert set(v100.tensor_flops_per_s) == {"fp16"}
    with pytest.raises(IosimError, match=r"'v100' has no tensor-core rate for 'bf16'.*fp16"):
        v100.tensor_flops("bf16")


def test_no_fp8_before_hopper():
    for name in ("v100", "a100", "ascend910b"):
        assert "fp8" not in load_hardware(name).tensor_flops_per_s


def test_ascend_sources_name_the_analog():
    hw = load_hardware("ascend910b")
    assert hw.vendor == "huawei"
    for key in ("sm_count", "smem_per_sm_bytes", "registers_per_sm", "max_threads_per_sm"):
        assert "analog" in hw.sources[key].text.lower(), key
    assert hw.sources["hbm_bandwidth_bytes_per_s"].kind == "estimate"


# --- loading a user profile by path ------------------------------------------------------------------------------


def test_user_profile_by_path(tmp_path):
    text = _set_line(_h100_text(), "name", 'name = "my-h100"')
    text = _set_line(text, "sm_count", 'sm_count = { value = 114, kind = "datasheet", source = "H100 PCIe datasheet: 114 SMs" }')
    p = _write(tmp_path, text, "my_h100.toml")
    for arg in (p, str(p)):
        hw = load_hardware(arg)
        assert hw.name == "my-h100" and hw.sm_count == 114
        assert hw.sources["sm_count"].kind == "datasheet"
        assert hw.path == str(p)
    assert load_profile_file(p) == load_hardware(p)
    # built-in unchanged
    assert load_hardware("h100").sm_count == 132


def test_user_profile_without_toml_suffix(tmp_path):
    p = _write(tmp_path, _h100_text(), "profile_no_suffix")
    assert load_hardware(p).sm_count == 132


def test_user_profile_may_carry_a_note(tmp_path):
    text = _set_line(
        _h100_text(), "sm_count", 'sm_count = { value = 132, kind = "measured", source = "torch on my box, 2026-11", note = "x" }'
    )
    assert load_hardware(_write(tmp_path, text)).sm_count == 132


# --- bad input: each error says what is wrong ---------------------------------------------------------------------


def test_unknown_hardware_name_lists_known_names():
    with pytest.raises(IosimError) as ei:
        load_hardware("nosuchgpu")
    msg = str(ei.value)
    assert "nosuchgpu" in msg
    for name in EXPECTED_BUILTINS:
        assert name in msg
    assert ".toml" in msg  # says a path is accepted too


def test_missing_file(tmp_path):
    p = tmp_path / "absent.toml"
    with pytest.raises(IosimError, match="cannot read hardware profile") as ei:
        load_hardware(p)
    assert str(p) in str(ei.value)


def test_malformed_toml_names_the_file(tmp_path):
    p = _write(tmp_path, "schema_version = = 1\n", "broken.toml")
    with pytest.raises(IosimError, match="malformed TOML") as ei:
        load_hardware(p)
    assert str(p) in str(ei.value)


def test_missing_required_key_is_named(tmp_path):
    p = _write(tmp_path, _drop_line(_h100_text(), "sm_count"))
    with pytest.raises(IosimError, match=r"values\.sm_count.*missing \(required\)") as ei:
        load_hardware(p)
    assert str(p) in str(ei.value)


def test_missing_tensor_table(tmp_path):
    text = _h100_text().split("[values.tensor_flops_per_s]")[0]
    with pytest.raises(IosimError, match=r"values\.tensor_flops_per_s.*dtype"):
        load_hardware(_write(tmp_path, text))


def test_missing_values_table(tmp_path):
    text = _h100_text().replace("[values.tensor_flops_per_s]", "[other.tensor_flops_per_s]").replace("[values]", "[other]")
    with pytest.raises(IosimError, match=r"'values'.*\[values\] table"):
        load_hardware(_write(tmp_path, text))


def test_missing_header_string(tmp_path):
    p = _write(tmp_path, _drop_line(_h100_text(), "arch"))
    with pytest.raises(IosimError, match=r"'arch'.*non-empty string"):
        load_hardware(p)


@pytest.mark.parametrize(
    "entry, message",
    [
        ('{ value = "132", kind = "datasheet", source = "H100 whitepaper" }', "value must be a number"),
        ("{ value = true, kind = \"datasheet\", source = \"H100 whitepaper\" }", "value must be a number"),
        ('{ value = -132, kind = "datasheet", source = "H100 whitepaper" }', "positive finite"),
        ('{ value = 0, kind = "datasheet", source = "H100 whitepaper" }', "positive finite"),
        ('{ value = nan, kind = "datasheet", source = "H100 whitepaper" }', "positive finite"),
        ('{ value = 131.5, kind = "datasheet", source = "H100 whitepaper" }', "whole number"),
        ("132", "inline table"),
    ],
)
def test_bad_value_is_rejected(tmp_path, entry, message):
    p = _write(tmp_path, _set_line(_h100_text(), "sm_count", f"sm_count = {entry}"))
    with pytest.raises(IosimError, match=re.escape(message)) as ei:
        load_hardware(p)
    assert "values.sm_count" in str(ei.value)


def test_negative_float_value(tmp_path):
    line = 'hbm_bandwidth_bytes_per_s = { value = -3.35e12, kind = "datasheet", source = "H100 SXM datasheet" }'
    p = _write(tmp_path, _set_line(_h100_text(), "hbm_bandwidth_bytes_per_s", line))
    with pytest.raises(IosimError, match=r"values\.hbm_bandwidth_bytes_per_s.*positive"):
        load_hardware(p)


def test_missing_source(tmp_path):
    p = _write(tmp_path, _set_line(_h100_text(), "sm_count", 'sm_count = { value = 132, kind = "datasheet" }'))
    with pytest.raises(IosimError, match=r"values\.sm_count.*missing source"):
        load_hardware(p)


@pytest.mark.parametrize("source", ['""', '"   "', '"x"', "42"])
def test_empty_or_useless_source(tmp_path, source):
    p = _write(tmp_path, _set_line(_h100_text(), "sm_count", f'sm_count = {{ value = 132, kind = "datasheet", source = {source} }}'))
    with pytest.raises(IosimError, match=r"values\.sm_count.*source must say where"):
        load_hardware(p)


def test_missing_source_on_tensor_rate(tmp_path):
    p = _write(tmp_path, _set_line(_h100_text(), "bf16", 'bf16 = { value = 989.4e12, kind = "datasheet" }'))
    with pytest.raises(IosimError, match=r"values\.tensor_flops_per_s\.bf16.*missing source"):
        load_hardware(p)


def test_unknown_kind(tmp_path):
    p = _write(tmp_path, _set_line(_h100_text(), "sm_count", 'sm_count = { value = 132, kind = "rumour", source = "a forum post" }'))
    with pytest.raises(IosimError) as ei:
        load_hardware(p)
    msg = str(ei.value)
    assert "values.sm_count" in msg and "'rumour'" in msg
    for kind in KINDS:
        assert kind in msg


def test_unknown_field_in_entry(tmp_path):
    line = 'sm_count = { value = 132, kind = "datasheet", source = "H100 whitepaper", unit = "SMs" }'
    p = _write(tmp_path, _set_line(_h100_text(), "sm_count", line))
    with pytest.raises(IosimError, match=r"values\.sm_count.*unknown field.*unit"):
        load_hardware(p)


def test_unknown_value_key_lists_known_keys(tmp_path):
    text = _h100_text().replace("[values]\n", '[values]\nsm_cnt = { value = 1, kind = "assumed", source = "typo test" }\n')
    with pytest.raises(IosimError, match=r"values\.sm_cnt.*unknown key.*sm_count"):
        load_hardware(_write(tmp_path, text))


def test_unknown_dtype_lists_known(tmp_path):
    text = _h100_text() + 'fp4 = { value = 3958e12, kind = "datasheet", source = "made-up FP4 rate" }\n'
    with pytest.raises(IosimError, match=r"values\.tensor_flops_per_s\.fp4.*unknown dtype.*bf16"):
        load_hardware(_write(tmp_path, text))


@pytest.mark.parametrize("version, shown", [("2", "2"), ("0", "0"), ('"1"', "'1'")])
def test_wrong_schema_version(tmp_path, version, shown):
    p = _write(tmp_path, _set_line(_h100_text(), "schema_version", f"schema_version = {version}"))
    with pytest.raises(IosimError, match=rf"'schema_version'.*expected 1, got {re.escape(shown)}") as ei:
        load_hardware(p)
    assert str(p) in str(ei.value)


def test_missing_schema_version(tmp_path):
    p = _write(tmp_path, _drop_line(_h100_text(), "schema_version"))
    with pytest.raises(IosimError, match=r"'schema_version'.*expected 1, got None"):
        load_hardware(p)


def test_smem_per_block_over_per_sm_is_rejected(tmp_path):
    line = 'smem_per_block_bytes = { value = 300000, kind = "measured", source = "bad measurement, 2026-11" }'
    p = _write(tmp_path, _set_line(_h100_text(), "smem_per_block_bytes", line))
    with pytest.raises(IosimError, match=r"values\.smem_per_block_bytes.*300000 B per block exceeds 233472 B per SM"):
        load_hardware(p)


def test_sector_must_divide_line(tmp_path):
    line = 'l2_sector_bytes = { value = 256, kind = "assumed", source = "wrong sector size" }'
    p = _write(tmp_path, _set_line(_h100_text(), "l2_sector_bytes", line))
    with pytest.raises(IosimError, match=r"values\.l2_sector_bytes.*sector \(256 B\) must divide the line \(128 B\)"):
        load_hardware(p)


def test_line_size_must_be_power_of_two(tmp_path):
    line = 'l2_line_bytes = { value = 96, kind = "assumed", source = "not a power of two" }'
    p = _write(tmp_path, _set_line(_h100_text(), "l2_line_bytes", line))
    with pytest.raises(IosimError, match="l2_line_bytes.*power of two"):
        load_hardware(p)


def test_errors_are_value_errors():
    # IosimError subclasses ValueError so callers can catch either
    with pytest.raises(ValueError):
        load_hardware("nosuchgpu")
