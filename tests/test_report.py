"""Report: files exist, are byte-identical across runs, failures are recorded, and the CLI drives it."""

from __future__ import annotations

import io

import pytest

from iosim.cli import run
from iosim.errors import IosimError
from iosim.report import Progress, ReportConfig, generate, io_bound_curves, sweep_n, sweep_sram, time_vs_bytes

SMALL = dict(hardware=("h100",), algorithms=("flash2", "standard"), seqs=(1024, 4096), point_seq=2048,
             sram_seq=1024, sram_head_dim=32)


def test_report_files_exist_and_are_deterministic(tmp_path):
    """Byte-identical files run after run, whether the sweeps run in this process or on worker processes."""
    a = generate(ReportConfig(**SMALL, out=str(tmp_path / "a")), progress=False, jobs=1)
    b = generate(ReportConfig(**SMALL, out=str(tmp_path / "b")), progress=False, jobs=2)
    assert not a.failures and not b.failures
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
    # v100 has no bf16 tensor cores: with --dtype bf16 its points, roofline and heatmap fail, h100's are written
    # (through the CLI) and the exit status says a point failed
    out = io.StringIO()
    rc = run(["report", "--hardware", "h100", "v100", "--algorithms", "flash2", "--seqs", "1024", "2048", "--quiet",
              "--dtype", "bf16", "--out", str(tmp_path / "r")], out)
    assert rc == 1 and "failed: v100 flash2 N=1024" in out.getvalue() and "failed: roofline v100" in out.getvalue()
    assert (tmp_path / "r" / "roofline_h100.png").exists() and not (tmp_path / "r" / "roofline_v100.png").exists()
    assert "Failed points" in (tmp_path / "r" / "report.md").read_text()


def test_a_failed_computation_fails_its_section_only(tmp_path):
    # sram_seq=1 leaves no SRAM size in [4d, N·d]: the bound curves fail on a worker, the other sections are written
    res = generate(ReportConfig(**{**SMALL, "sram_seq": 1}, out=str(tmp_path)), progress=False, jobs=2)
    assert [f for f in res.failures if f.startswith("section")] == [
        "section 'IO vs SRAM size' failed: IndexError: list index out of range"]
    assert "tiles_h100.png" in res.files and "io_vs_sram.png" not in res.files


def test_jobs_flag(tmp_path):
    with pytest.raises(IosimError, match="--jobs must be a whole number"):
        run(["report", "--jobs", "two", "--out", str(tmp_path)], io.StringIO())
    with pytest.raises(IosimError, match="--jobs must be a whole number"):
        run(["tiles", "--jobs", "-1"], io.StringIO())


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


def test_lower_bound_curve_has_the_explicit_constants():
    # symbolic.lower_bounds for one head, N = 4096, d = 64 (hand-worked): trivial 4Nd = 1,048,576;
    # Saha & Ye large-cache N²d²/(4(M + d²)) − M; matmul small-cache N²d/(2√2·√M) − M − N² (negative here)
    n, d = 4096, 64
    (lb,) = [c for c in io_bound_curves(n, d, [d * d, n * d]) if c["upper"] is None]
    assert lb["lower"][0] == n * n * d * d / (4 * 2 * d * d) - d * d == 2_093_056
    assert lb["lower"][1] == 4 * n * d == 1_048_576
    assert "symbolic.lower_bounds" in lb["label"]


def test_counted_io_lies_in_the_certified_bands_and_above_the_lower_bound():
    cfg = ReportConfig(sram_seq=1024, sram_head_dim=32)
    data, failures = sweep_sram(cfg, Progress("x", 1, enabled=False))
    assert not failures
    curves = {c["key"]: c for c in io_bound_curves(data["N"], data["d"], data["M"])}
    # labels carry the theorems' certified constants (FA Thm 2: 12/5 and 28 on N²d²/M; Saha & Ye Thm 3.5: 8 and 18)
    assert "12/5·N²d²/M" in curves["fa1_forward"]["label"] and "28·N²d²/M" in curves["fa1_forward"]["label"]
    assert "8·N²d/√M" in curves["square_tiling_small_cache"]["label"]
    for key, alg in (("fa1_forward", "flash1"), ("square_tiling_small_cache", "square_tiling")):
        c = curves[key]
        counted = dict(zip(data["M"], data[alg]))
        assert len(c["M"]) >= 3
        for m, lo, up in zip(c["M"], c["lower"], c["upper"]):
            assert lo <= counted[int(m)] <= up, (alg, m)
    for alg in ("flash1", "square_tiling"):
        assert all(v >= b for v, b in zip(data[alg], curves["lower_bounds"]["lower"]))


def test_report_states_the_problem_and_explains_bounds(tmp_path):
    from iosim.cost import BOUND_EXPLANATIONS
    cfg = ReportConfig(**{**SMALL, "algorithms": ("flash2", "flash1"), "point_seq": 4096}, causal=True, out=str(tmp_path))
    generate(cfg, progress=False)
    md = (tmp_path / "report.md").read_text()
    assert md.count("Problem: B=1, H=16, d=128, bf16, causal") == 5  # N sweep, rooflines, heatmaps, 2 tables
    assert "Problem: N=1K, d=32, one head (B=1, H=1), non-causal" in md
    csv = (tmp_path / "table.csv").read_text().splitlines()
    assert csv[0].endswith("B,H,d,dtype,causal") and all(line.endswith("1,16,128,bf16,True") for line in csv[1:])
    # flash1's forward grid is one CTA per head: 16 CTAs on the H100's 132 SMs, and its bound is explained
    row = next(line for line in md.splitlines() if line.startswith("| h100 | flash1 | flash1_fwd |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "16 / 132" and cells[-1] == BOUND_EXPLANATIONS[cells[-2]]


def test_time_vs_bytes_explains_square_tiling_against_flash2():
    cfg = ReportConfig(hardware=("a100", "h100"), algorithms=("flash2", "square_tiling"), seqs=(65536,))
    rows, _ = sweep_n(cfg, Progress("x", 1, enabled=False))
    text = time_vs_bytes(rows, cfg)
    assert text[0].startswith("Time is not bytes")
    by = {(r["hardware"], r["algorithm"]): r for r in rows}
    # DRAM bytes: square_tiling writes and re-reads exp(QKᵀ) (2·N²·H·2 B), flash2 reads Q, K, V and writes O
    # once (4·N·d·H·2 B): about N/(2d) = 256 times more
    for hw in ("a100", "h100"):
        faster = by[(hw, "square_tiling")]["time_ms"] < by[(hw, "flash2")]["time_ms"]
        said = [t for t in text if t.startswith(f"On {hw} at N=64K")]
        assert bool(said) == faster
        if said:
            assert "256× the DRAM bytes" in said[0] and "square_tiling_scores: compute" in said[0]
    assert time_vs_bytes(rows, ReportConfig(algorithms=("flash2",))) == []


def _sleep_then_square(x: int) -> int:
    import time
    time.sleep(0.05 * (3 - x))  # the first items finish last
    return x * x


def test_map_ordered_keeps_the_items_order_and_checks_jobs():
    from iosim.parallel import map_ordered
    ticks = []
    assert map_ordered(_sleep_then_square, range(4), jobs=4, progress=lambda: ticks.append(1)) == [0, 1, 4, 9]
    assert len(ticks) == 4 and map_ordered(_sleep_then_square, [2, 3], jobs=1) == [4, 9]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(IosimError, match="jobs must be a positive integer"):
            map_ordered(_sleep_then_square, [1], jobs=bad)
