"""The measured set-sampling error: the committed benchmark result, the table ``iosim.memory.sampling`` carries, and
the sentence ``describe`` prints beside every prediction."""

import json
import statistics
from pathlib import Path

import pytest

from iosim.memory.sampling import COMMIT, DATE, MEASURED, SOURCE, describe

RESULT = json.loads((Path(__file__).parent.parent / "benchmarks/results/sampling_error.json").read_text())


def _estimates(stride):
    return [r for r in RESULT["rows"] if r["stride"] == stride and not r["exact"]]


def test_describe_exact_and_every_set():
    assert describe(32, True) == "L2 simulated on 1 in 32 sets: exact (every access covers whole aligned groups)"
    assert describe(1, True) == "L2 simulated on every set: exact"


def test_describe_estimate_states_the_measured_error_and_its_source():
    rows = _estimates(128)
    worst_read = max(abs(r["read_error"]) for r in rows)
    worst_write = max(abs(r["write_error"]) for r in rows)
    text = describe(128, False)
    assert text.startswith("L2 simulated on 1 in 128 sets: set-sampling estimate; ")
    assert f"worst {100 * worst_read:.2g}%, of write bytes" in text
    assert f"worst {100 * worst_write:.2g}% over {len(rows)} non-exact runs" in text
    assert text.endswith(f"({SOURCE}, {DATE})") and Path(SOURCE).name == "bench_sampling_error.py"


def test_describe_unmeasured_stride_says_so():
    assert "error not measured at this stride" in describe(8, False)


def test_summary_counts_and_statistics_match_the_rows():
    strides = sorted({r["stride"] for r in RESULT["rows"] if not r["exact"]})
    assert [s["stride"] for s in RESULT["summary"]] == strides
    for s in RESULT["summary"]:
        rows = _estimates(s["stride"])
        assert s["n"] == len(rows) > 0
        for q in ("read", "write"):
            errs = [abs(r[f"{q}_error"]) for r in rows]
            assert s[f"{q}_median_abs_error"] == pytest.approx(statistics.median(errs), abs=1e-12)
            assert s[f"{q}_worst_abs_error"] == pytest.approx(max(errs), abs=1e-12)
    assert sum(s["n"] for s in RESULT["summary"]) + RESULT["claim_exact_runs"] == len(RESULT["rows"])


def test_rows_errors_are_relative_to_stride_one():
    for r in RESULT["rows"]:
        for q in ("read", "write"):
            exact = r[f"dram_{q}_bytes_stride1"]
            assert r[f"{q}_error"] == pytest.approx((r[f"dram_{q}_bytes_sampled"] - exact) / exact, abs=1e-12)


def test_claimed_exact_runs_have_zero_error():
    exact = [r for r in RESULT["rows"] if r["exact"]]
    assert len(exact) == RESULT["claim_exact_runs"] > 0 and RESULT["claim_exact_failures"] == []
    for r in exact:
        assert r["dram_read_bytes_sampled"] == r["dram_read_bytes_stride1"]
        assert r["dram_write_bytes_sampled"] == r["dram_write_bytes_stride1"]


def test_module_table_is_the_benchmark_summary():
    assert (RESULT["source"], RESULT["date"], RESULT["commit"]) == (SOURCE, DATE, COMMIT)
    assert len(MEASURED) == len(RESULT["summary"])
    for m, s in zip(MEASURED, RESULT["summary"]):
        assert (m.stride, m.runs) == (s["stride"], s["n"])
        for q in ("read", "write"):
            for stat in ("median", "p95", "worst"):
                assert getattr(m, f"{q}_{stat}") == pytest.approx(s[f"{q}_{stat}_abs_error"], rel=1e-5, abs=1e-9)
