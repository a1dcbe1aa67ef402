"""`iosim hardware template`: a profile to fill in that loads unchanged and carries every key of its source."""

import io
import tomllib
from dataclasses import fields

import pytest

from iosim.cli import main, run
from iosim.cli_hardware import TEMPLATE_SOURCE
from iosim.hwprofile import Hardware, builtin_names, load_hardware, profile_table

HEAD = {"name", "full_name", "vendor", "arch", "sources", "path"}


def template_text(argv) -> str:
    out = io.StringIO()
    assert run(["hardware", "template"] + argv, out) == 0
    return out.getvalue()


@pytest.mark.parametrize("name", builtin_names())
def test_template_loads_with_the_source_numbers(name, tmp_path):
    path = tmp_path / f"{name}_template.toml"
    msg = template_text(["--from", name, "--out", str(path)])
    assert str(path) in msg and "--hardware" in msg
    hw, src = load_hardware(path), load_hardware(name)
    got = {k: v for k, v, _, _ in profile_table(hw)}
    want = {k: v for k, v, _, _ in profile_table(src)}
    assert got == want  # every key and number of the source, exactly (floats round-trip)
    assert (hw.vendor, hw.arch) == (src.vendor, src.arch)
    assert {(s.kind, s.text) for s in hw.sources.values()} == {("assumed", TEMPLATE_SOURCE)}
    # the same text on stdout; no temporary file left beside the output
    assert path.read_text() == template_text(["--from", name])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_default_is_h100_and_every_key_is_commented_with_a_unit():
    text = template_text([])
    assert "values copied from h100" in text
    doc = tomllib.loads(text)
    lines = text.splitlines()
    keys = [f.name for f in fields(Hardware) if f.name not in HEAD]
    for key in keys:
        if key == "tensor_flops_per_s":
            continue
        comment = next(i for i, line in enumerate(lines) if line.startswith(f"# {key}:"))
        assert "[" in lines[comment] and "]" in lines[comment]  # the unit or the allowed values
        if key in doc["values"]:
            assert lines[comment + 1].startswith(f"{key} = {{ value = ")
    assert "# hbm_bandwidth_bytes_per_s: peak DRAM (HBM) bandwidth [bytes/s]" in text
    assert "# boost_clock_hz: SM clock the per-clock rates are taken at [Hz]" in text
    assert "# l2_policy: L2 replacement policy (optional) [lru, fifo" in text
    for dt in ("fp64", "tf32", "fp16", "bf16", "fp8"):  # the H100 has all five tensor rates
        assert dt in doc["values"]["tensor_flops_per_s"]
    assert doc["values"]["sm_count"]["value"] == 132 and doc["values"]["hbm_capacity_bytes"]["value"] == 80 * 10**9


def test_optional_keys_the_source_lacks_are_listed_commented_out():
    text = template_text(["--from", "ascend910b"])  # no l2_ways, l2_partitions, max_registers_per_thread
    doc = tomllib.loads(text)
    for key in ("l2_ways", "l2_partitions", "max_registers_per_thread"):
        assert key not in doc["values"]
        assert f"# {key}:" in text and "not set for ascend910b" in text


def test_unknown_source_profile_is_a_one_line_error(capsys):
    assert main(["hardware", "template", "--from", "h999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error: unknown hardware 'h999'") and "Traceback" not in err
