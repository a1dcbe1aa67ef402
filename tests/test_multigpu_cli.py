"""`iosim multigpu` and `iosim predict --devices P --parallel ring|ulysses` (iosim.cli_multigpu). iosim.cli lists the
multigpu command and predict's --devices/--parallel/--balance flags (``run`` hands such a predict to
``cli_multigpu.run_predict``)."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from iosim import IosimError
from iosim import cli_multigpu as m
from iosim.cli import create_parser, read_sizes


def multigpu_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="iosim")
    m.add_parser(ap.add_subparsers(dest="command", required=True))
    return ap


def run_multigpu(argv: list[str]) -> str:
    out = io.StringIO()
    assert m.run(read_sizes(multigpu_parser().parse_args(["multigpu", *argv])), out) == 0
    return out.getvalue()


def predict_parser() -> argparse.ArgumentParser:
    """iosim's own parser (predict carries the --devices flags)."""
    return create_parser(load=[])


def run_predict(argv: list[str]) -> str:
    out = io.StringIO()
    assert m.run_predict(read_sizes(predict_parser().parse_args(["predict", *argv])), out) == 0
    return out.getvalue()


def test_multigpu_ring_json_carries_the_exact_bytes():
    d = json.loads(run_multigpu(["--hardware", "h200", "--devices", "4", "--seq-q", "16384", "--heads", "8",
                                 "--causal", "--no-l2", "--json"]))
    assert d["parallel"] == "ring" and d["balance"] == "zigzag" and d["devices"] == 4
    assert d["levels"]["interconnect"]["bytes_sent_per_gpu"] == 3 * 2 * 8 * 4096 * 128 * 2
    assert len(d["steps"]) == 4 and d["steps"][-1]["transfer_bytes"] == 0
    assert len(set(d["matmul_flops_per_gpu"])) == 1  # zigzag: every GPU the same work
    assert 0 <= d["comm_share"] < 1 and d["time_s"] >= d["compute_only_s"]


def test_multigpu_text_names_the_parts():
    text = run_multigpu(["--devices", "16", "--seq-q", "1e6", "--heads", "32", "--causal", "--balance", "striped",
                         "--no-l2", "--seq-kv", "1e6"])
    assert "ring over 16 × h100, balance striped" in text and "2 nodes of 8" in text
    assert "…" in text and "exposed communication" in text and "bytes sent per GPU" in text
    text = run_multigpu(["--devices", "8", "--parallel", "ulysses", "--seq-q", "65536", "--heads", "32", "--no-l2"])
    assert "all-to-all Q" in text and "attention on 4 heads" in text and "all-to-all O" in text
    text = run_multigpu(["--devices", "4", "--parallel", "tiling-allreduce", "--tiles", "4", "--seq-q", "8192",
                         "--heads", "32", "--no-l2", "--causal"])
    assert text.count("tile ") >= 4 and "without tiling" in text


def test_links_table():
    text = run_multigpu(["--links", "--hardware", "ascend910b"])
    assert "hccs" in text and "full-mesh" in text and "3.92e+11" in text


def test_predict_devices_matches_multigpu():
    """`iosim predict --devices 2 --parallel ring --balance striped` = the library call with predict's defaults."""
    from iosim import Problem
    from iosim.multigpu import predict_ring
    d = json.loads(run_predict(["--devices", "2", "--parallel", "ring", "--balance", "striped", "--seq-q", "8192",
                                "--causal", "--no-l2", "--json", "--kernel", "fa2"]))
    want = predict_ring("h100", Problem(1, 16, 16, 8192, 8192, 128, "bf16", True), 2, "striped", l2=False)
    assert d["time_s"] == pytest.approx(want.time_s) and d["balance"] == "striped"
    d = json.loads(run_predict(["--devices", "4", "--parallel", "ulysses", "--seq-q", "8192", "--no-l2", "--json"]))
    assert d["parallel"] == "ulysses" and d["kernel"] is None and d["algorithm"] == "flash2"


@pytest.mark.parametrize("argv, words", [
    (["--devices", "3", "--seq-q", "1000"], "not divisible by devices = 3"),
    (["--devices", "2", "--parallel", "ulysses", "--heads", "3"], "heads=3 is not divisible by devices=2"),
    (["--devices", "2", "--parallel", "ulysses", "--balance", "zigzag"], "ring options"),
    (["--devices", "2", "--tiles", "4"], "tiling-allreduce options"),
    (["--devices", "0"], "devices must be"),
])
def test_bad_flags_are_one_line_errors(argv, words):
    with pytest.raises(IosimError) as ei:
        run_multigpu(argv + ["--no-l2"])
    assert "\n" not in str(ei.value) and words in str(ei.value)


def test_predict_refuses_single_gpu_flags():
    with pytest.raises(IosimError, match="--pass is single-GPU only"):
        run_predict(["--devices", "2", "--pass", "bwd"])
