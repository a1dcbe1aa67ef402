"""Report: files exist, are byte-identical across runs, failures are recorded, and the CLI drives it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from iosim.cli import run
from iosim.errors import IosimError
from iosim.report import Progress, ReportConfig, generate, lower_bound_elements

SMALL = dict(hardware=("h100",), algorithms=("flash2", "standard"), seqs=(1024, 4096), point_seq=2048,
             sram_seq=1024, sram_head_dim=32)


def test_report_files_exist_and_are_deterministic(tmp_path):
    a = generate(ReportConfig(**SMALL, out=str(tmp_path / "a")), progress=False)
    b = generate(ReportConfig(**SMALL, out=str(tmp_path / "b")), progress=False)
    assert not a.failures
    expected = {"index.html", "report.md", "table.csv", "io_time_vs_n.png", "roofline_h100.png", "io_vs_sram.png",
                "tiles_h100.png"}
    assert set(a.files) == expected
    for name in expected:
        pa, pb = tmp_path / "a" / name, tmp_path / "b" / name
        assert pa.stat().st_size > 0
        assert pa.read_bytes() == pb.read_bytes(), name
    assert (tmp_path / "a" / "roofline_h100.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "a" / "report.md").read_text()
    assert "![roofline_h100.png](roofline_h100.png)" in md and "| N | hardware |" in md
    html = (tmp_path / "a" / "index.html").read_text()
    assert "<img src='tiles_h100.png'" in html and "<table" in html
    # no temporary files left behind
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


def test_failed_points_are_recorded_and_the_rest_is_written(tmp_path):
    # v100 has no bf16 tensor cores: its points, roofline and heatmap fail; h100's are written (through the CLI)
    out = io.StringIO()
    rc = run(["report", "--hardware", "h100", "v100", "--algorithms", "flash2", "--seqs", "1024", "2048", "--quiet",
              "--out", str(tmp_path / "r")], out)
    assert rc == 0 and "failed: v100 flash2 N=1024" in out.getvalue() and "failed: roofline v100" in out.getvalue()
    assert (tmp_path / "r" / "roofline_h100.png").exists() and not (tmp_path / "r" / "roofline_v100.png").exists()
    assert "Failed points" in (tmp_path / "r" / "report.md").read_text()


def test_bad_arguments_raise_iosim_error(tmp_path):
    with pytest.raises(IosimError, match="unknown algorithm"):
        generate(ReportConfig(algorithms=("nope",), out=str(tmp_path)), progress=False)
    with pytest.raises(IosimError, match="unknown hardware"):
        run(["report", "--hardware", "h999", "--out", str(tmp_path)], io.StringIO())


def test_progress_bar_only_after_threshold():
    s = io.StringIO()
    p = Progress("x", 4, stream=s, after_s=3600)
    p.step(); p.close()
    assert s.getvalue() == ""
    s = io.StringIO()
    p = Progress("x", 4, stream=s, after_s=0)
    p.step(); p.step(); p.close()
    assert "[###############...............] 2/4" in s.getvalue() and s.getvalue().endswith("\n")


def test_lower_bound_regimes():
    n, d = 4096, 64
    # M ≥ d²: N²d²/M; M < d²: N²d/√M; both equal N² at M = d²; never below 4Nd
    assert lower_bound_elements(n, d, d * d) == n * n
    assert lower_bound_elements(n, d, 4 * d * d) == n * n / 4
    assert lower_bound_elements(n, d, d * d / 4) == n * n * 2
    assert lower_bound_elements(n, d, n * d) == 4 * n * d
