"""benchmarks/gpu/compare_l2.py on a tiny synthetic measured.csv (CPU, seconds), and validate_l2.py's dry run."""

import csv
import importlib.util
import math
import os

import pytest

from iosim.hwprofile import load_hardware
from iosim.masks import flex_block_tables, random_block_mask
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem

GPU_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(GPU_DIR, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


COLS = ["id", "impl", "B", "Hq", "Hkv", "N", "d", "causal", "density", "seed", "qkv_bytes", "flops",
        "dram__bytes_read.sum", "dram__bytes_write.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
        "gpu__time_duration.sum", "gpu", "error"]
GPU = "NVIDIA H100 80GB HBM3"
ROWS = [
    [1, "sdpa", 1, 4, 4, 2048, 64, 1, 0.0, 0, 0, 0, 5.0e6, 1e6, 2e7, 1e5, GPU, ""],     # QKV 3.1 MB: L2-bound
    [2, "flex", 1, 4, 2, 2048, 128, 0, 0.0, 0, 0, 0, 4.2e6, 2e6, 9e7, 1e5, GPU, ""],    # QKV 4.2 MB: the rest
    [3, "flex", 1, 4, 4, 2048, 64, 1, 0.5, 3, 0, 0, 3.0e6, 1e6, 1e7, 1e5, GPU, ""],     # random block-sparse
    [4, "flex", 1, 4, 4, 2048, 64, 0, 0.0, 0, 0, 0, "", "", "", "", GPU, "case 4 FAILED: x"],
]


def test_compare_l2_synthetic(tmp_path):
    m = tmp_path / "measured.csv"
    with open(m, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLS)
        w.writerows(ROWS)
    cmp = _load("compare_l2")
    out = tmp_path / "out"
    toml = os.path.join(os.path.dirname(os.path.dirname(GPU_DIR)), "hardware", "h100.toml")
    assert cmp.main([str(m), "--profile", "a=h100", "--profile", f"b={toml}", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["compare_l2.csv", "compare_l2.md"]  # atomic writes leave no temp files
    rows = {int(r["id"]): r for r in csv.DictReader(open(out / "compare_l2.csv"))}
    assert set(rows) == {1, 2, 3, 4}
    hw = load_hardware("h100")
    # case 1: SDPA -> fa2 preset
    p1 = predict(hw, Problem(1, 4, 4, 2048, 2048, 64, "bf16", True), KernelConfig(), kernel="fa2")
    assert float(rows[1]["pred_dram_read_a"]) == p1.dram_read_bytes
    assert math.isclose(float(rows[1]["err_a"]), p1.dram_read_bytes / 5.0e6 - 1)
    assert rows[1]["l2_bound"] == "1" and rows[2]["l2_bound"] == "0"
    qkv1 = 2 * 2048 * 64 * 12
    assert math.isclose(float(rows[1]["measured_over_qkv"]), 5.0e6 / qkv1)
    # case 3: Flex with the seeded random mask the harness builds
    mask = random_block_mask(1, 4, 2048, 2048, 128, 0.5, 3, True)
    p3 = predict(hw, Problem(1, 4, 4, 2048, 2048, 64, "bf16", True), KernelConfig(), kernel="flex",
                 block_mask=flex_block_tables(mask, 2048, 2048, True))
    assert float(rows[3]["pred_dram_read_b"]) == p3.dram_read_bytes
    assert int(rows[3]["predicted_sm_read"]) == p3.counts.sm_read_bytes
    assert math.isnan(float(rows[4]["err_a"]))
    md = (out / "compare_l2.md").read_text()
    assert "| a | all | measured DRAM > 1.15 × QKV | 1 |" in md
    assert "| a | all | the rest | 2 |" in md
    assert "| b | flex | the rest | 2 |" in md
    assert "Not measured: 4 (case 4 FAILED: x)" in md


def test_validate_l2_dry_run_small(capsys):
    pytest.importorskip("numpy")
    v = _load("validate_l2")
    assert v.main(["--dry-run", "--cases", "2,23"]) == 0
    text = capsys.readouterr().out
    assert "ERROR" not in text and " 23 flex" in text
    # every case respects the work bound and SDPA's limits
    assert v.check_cases([v.case_dict(c) for c in v.CASES]) == []
    assert v.groups_of([1, 2, 14, 15, 3], 2) == [[1, 2], [14, 15], [3]]
