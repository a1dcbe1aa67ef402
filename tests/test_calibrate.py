"""iosim calibrate: import-safe without torch; the TOML it writes from (fake) measurements loads and is used."""

from __future__ import annotations

import importlib
import io
import sys

import pytest

from iosim import calibrate, cost
from iosim.calibrate import Measurements, profile_toml, write_profile
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware, load_profile_file
from iosim.problem import KernelConfig, Problem

FAKE = Measurements(gpu_name="NVIDIA H100 80GB HBM3", tool="torch 2.11.0+cu130, triton 3.6.0, CUDA 13.0",
                    date="2026-11-25", dram_bytes_per_s=3.0e12, l2_bytes_per_s=9.5e12,
                    tensor_flops_per_s={"bf16": 798e12, "fp8": 1.3e15}, sfu_ops_per_clock_per_sm=15.6,
                    launch_s=2.4e-6, clock_hz=1.98e9, methods={"dram": "median D2D copy of 1 GiB"})


def test_import_safe_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
    monkeypatch.setitem(sys.modules, "triton", None)
    mod = importlib.reload(calibrate)
    with pytest.raises(IosimError, match="needs torch"):
        mod.measure_copy_bandwidth(1 << 20)
    importlib.reload(calibrate)


def test_written_profile_loads_with_calibrated_values(tmp_path):
    base = load_hardware("h100")
    path = write_profile(base, FAKE, tmp_path / "h100-cal.toml")
    hw = load_profile_file(path)
    assert hw.name == "h100-calibrated" and hw.arch == "sm90"
    assert hw.hbm_bandwidth_bytes_per_s == 3.0e12 and hw.sources["hbm_bandwidth_bytes_per_s"].kind == "calibrated"
    assert "NVIDIA H100 80GB HBM3" in hw.sources["hbm_bandwidth_bytes_per_s"].text
    assert "2026-11-25" in hw.sources["l2_bandwidth_bytes_per_s"].text
    assert hw.sfu_ops_per_clock_per_sm == 16  # 15.6 rounded: the schema keeps an integer
    assert hw.tensor_flops_per_s["bf16"] == 798e12 and hw.tensor_flops_per_s["fp8"] == 1.3e15
    # unmeasured values keep the base profile's value and source
    assert hw.tensor_flops_per_s["fp16"] == base.tensor_flops_per_s["fp16"]
    assert hw.sources["sm_count"] == base.sources["sm_count"]
    assert "launch overhead" in path.read_text() and "2.40 us" in path.read_text()
    # the cost model treats calibrated rates as achieved ones
    assert cost.path_efficiency(hw, "wgmma", "bf16").value == pytest.approx(cost.PATH_EFFICIENCY[("sm90", "wgmma")].value / 0.807)
    assert cost.dram_bandwidth(hw) == 3.0e12
    e = cost.estimate_problem(hw, Problem(1, 16, 16, 4096, 4096, 128), KernelConfig())
    assert e.time_s > 0


def test_partial_measurements_and_escaping():
    m = Measurements(gpu_name='GPU "quoted" \\ name', tool="t", date="2026-01-01")
    text = profile_toml(load_hardware("a100"), m)
    import tomllib
    doc = tomllib.loads(text)
    assert doc["values"]["hbm_bandwidth_bytes_per_s"]["kind"] == "datasheet"  # nothing measured: base kept


def test_cli_calibrate_without_gpu_is_a_clear_error(monkeypatch):
    from iosim.cli import run
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(IosimError, match="torch"):
        run(["calibrate", "--base", "h100", "--quick"], io.StringIO())
