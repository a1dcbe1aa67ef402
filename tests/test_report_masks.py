"""`iosim report --masks`: the mask page's files, and its numbers against IO worked out by hand."""

from __future__ import annotations

import csv
import io

import pytest

from iosim.cli import run
from iosim.report import MASK_SEQ, MASK_SWEEPS, ReportConfig, mask_point

N, H, D, E = MASK_SEQ, 16, 128, 2  # the page's problem (ReportConfig defaults); FA2's tiles for d = 128: 128 × 64
BM = 128


def per_head_rest() -> int:
    return 2 * N * D * E + 4 * N  # Q read, O written, fp32 LSE written


def test_sliding_point_by_hand():
    w = 1024
    kv = sum(min((i + 1) * BM, w + BM) for i in range(N // BM))  # keys query block i loads (aligned tiles)
    row = mask_point(ReportConfig(), "window W", w)
    assert row["IO (GB)"] * 1e9 == H * (per_head_rest() + 2 * D * E * kv)
    assert row["symbolic IO (GB)"] == row["IO (GB)"]
    assert 0 < row["lower bound (GB)"] < row["IO (GB)"] and row["time (ms)"] > 0


@pytest.mark.parametrize("k", [1, 64])
def test_documents_point_by_hand(k):
    length = N // k  # each of its L/B_r query blocks reads the document's L keys of K and V
    row = mask_point(ReportConfig(), "documents", k)
    assert row["IO (GB)"] * 1e9 == H * (per_head_rest() + k * (length // BM) * 2 * length * D * E)
    assert row["symbolic IO (GB)"] == row["IO (GB)"]


def test_mask_page_through_the_cli(tmp_path):
    out = io.StringIO()
    assert run(["report", "--masks", "--quiet", "--out", str(tmp_path)], out) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"masks.csv", "masks.png", "index.html", "report.md"}
    rows = list(csv.DictReader((tmp_path / "masks.csv").open()))
    assert [(r["sweep"], float(r["value"])) for r in rows] == [(s, float(v)) for s, vs in MASK_SWEEPS for v in vs]
    for sweep, _ in MASK_SWEEPS:
        io_gb = [float(r["IO (GB)"]) for r in rows if r["sweep"] == sweep]
        grows = sweep != "documents"  # more keys per query with W and density; fewer with more documents
        assert io_gb == sorted(io_gb, reverse=not grows)
    for r in rows:
        assert float(r["symbolic IO (GB)"]) == pytest.approx(float(r["IO (GB)"]), rel=1e-9)
        if r["lower bound (GB)"]:
            assert float(r["lower bound (GB)"]) <= float(r["IO (GB)"])
    md = (tmp_path / "report.md").read_text()
    assert "![masks.png](masks.png)" in md and "| sweep | value |" in md
