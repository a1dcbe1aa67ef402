"""The CLI contract (`iosim predict --json` keys), readable output, error exit codes, packaging layout."""

import importlib.metadata
import io
import json
import subprocess
import sys

import pytest

from iosim.cli import main, run

CONTRACT = ["flops", "sm_read_bytes", "sm_write_bytes", "dram_read_bytes", "dram_write_bytes", "time_s", "kernels"]
ISSUE_ARGS = ["predict", "--hardware", "h100", "--algorithm", "flash2", "--batch", "2", "--heads", "16",
              "--kv-heads", "16", "--seq-q", "16384", "--seq-kv", "16384", "--head-dim", "64", "--dtype", "bf16",
              "--block-m", "128", "--block-n", "128", "--num-warps", "4", "--num-stages", "1"]


def run_cli(argv):
    out = io.StringIO()
    assert run(argv, out) == 0
    return out.getvalue()


def test_predict_json_contract():
    d = json.loads(run_cli(ISSUE_ARGS + ["--json"]))
    for key in CONTRACT:
        assert key in d
    assert d["sm_read_bytes"] == 17_246_978_048
    assert len(d["kernels"]) == 1
    k = d["kernels"][0]
    for key in CONTRACT[:-1]:
        assert key in k
    assert k["sm_read_bytes"] == d["sm_read_bytes"]
    # non-causal FA2 matmul FLOPs: 4·B·H·N²·d exactly
    assert d["matmul_flops"] == 4 * 2 * 16 * 16384**2 * 64


def test_predict_json_is_deterministic():
    a = run_cli(ISSUE_ARGS + ["--json", "--causal"])
    b = run_cli(ISSUE_ARGS + ["--json", "--causal"])
    assert a == b


def test_predict_table_mentions_kernels_and_tensors():
    text = run_cli(["predict", "--algorithm", "standard", "--seq-q", "1000", "--head-dim", "64"])
    for needle in ("standard_qk", "standard_softmax", "standard_pv", "reads by tensor", "S "):
        assert needle in text


def test_hardware_list_and_show():
    listing = run_cli(["hardware", "list"])
    for name in ("v100", "a100", "h100", "h200", "b200", "ascend910b"):
        assert name in listing
    show = run_cli(["hardware", "show", "h100"])
    assert "sm_count" in show and "132" in show and "datasheet" in show


@pytest.mark.parametrize("argv,needle", [
    (["predict", "--hardware", "nope"], "unknown hardware 'nope'"),
    (["predict", "--seq-q", "0"], "seq_q must be a positive integer"),
    (["predict", "--heads", "6", "--kv-heads", "4"], "kv_heads=4 does not divide heads=6"),
    (["predict", "--head-dim", "256", "--block-m", "128", "--block-n", "128"], "shared memory"),
    (["predict", "--algorithm", "flash9"], "unknown algorithm"),
])
def test_errors_exit_2_with_message(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error:") and needle in err
    assert "Traceback" not in err


def test_python_dash_m_and_console_script():
    r = subprocess.run([sys.executable, "-m", "iosim", "algorithms"], capture_output=True, text=True, check=True)
    assert "flash2" in r.stdout and "flash1" in r.stdout and "standard" in r.stdout


def test_single_import_root():
    # models/ and hardware/ install as iosim.models / iosim.hardware; nothing else is a top-level package.
    top = importlib.metadata.distribution("iosim").read_text("top_level.txt").split()
    assert top == ["iosim"]
    import iosim.hardware
    import iosim.models
    assert iosim.models.__name__ == "iosim.models" and iosim.hardware.__name__ == "iosim.hardware"


def test_predict_fills_time_from_cost_model_with_and_without_l2():
    from iosim.cost import RESOURCES, estimate
    from iosim.hwprofile import load_hardware
    from iosim.predict import predict
    from iosim.problem import KernelConfig, Problem

    hw = load_hardware("h100")
    p = Problem(1, 4, 4, 2048, 2048, 64, "bf16", causal=True)
    with_l2 = predict(hw, p, KernelConfig(128, 64), "flash2")
    no_l2 = predict(hw, p, KernelConfig(128, 64), "flash2", l2=False)
    assert no_l2.dram_read_bytes is None and no_l2.time_s > 0
    # the time is the cost model's, fed with the L2 model's DRAM bytes
    ref = estimate(with_l2.schedule, with_l2.counts, hw, with_l2.dram_read_bytes, with_l2.dram_write_bytes)
    assert with_l2.time_s == ref.time_s
    d = with_l2.to_dict()
    assert d["bound"] in RESOURCES + ("launch",)
    assert d["kernels"][0]["time_s"] == d["time_s"]
