"""--pass fwd|bwd|fwd+bwd: the backward by table or preset, both passes as one schedule (iosim.passes), the CLI."""

import io
import json
from dataclasses import replace

import pytest

from iosim import sweep
from iosim.cli import create_parser, main, run
from iosim.counts import count
from iosim.errors import IosimError
from iosim.passes import backward_of, concat_schedules
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem
from iosim.registry import get
from iosim.schedule import TensorSpec

B, H, N, D, E = 1, 2, 512, 64, 2  # bf16
P = Problem(B, H, H, N, N, D, "bf16", False)
CFG = KernelConfig(block_m=128, block_n=64)
SMALL = ["--batch", "1", "--heads", "2", "--seq-q", "512", "--head-dim", "64", "--block-m", "128", "--block-n", "64"]


def run_cli(argv):
    out = io.StringIO()
    assert run(argv, out) == 0
    return out.getvalue()


def test_fwd_bwd_counts_are_the_sum_of_the_passes():
    both = predict("h100", P, CFG, direction="fwd+bwd", l2=False)
    fwd = count(get("flash2").build(P, CFG, None))
    bwd = count(get("flash2_bwd").build(P, CFG, None))
    assert [k.name for k in both.counts.kernels] == [k.name for k in fwd.kernels + bwd.kernels]
    for attr in ("flops", "matmul_flops", "exp_ops", "other_flops", "sm_read_bytes", "sm_write_bytes"):
        assert getattr(both.counts, attr) == getattr(fwd, attr) + getattr(bwd, attr), attr
    for t in ("Q", "K", "V", "O", "LSE", "dO"):
        assert both.counts.tensor_bytes("read").get(t, 0) == \
            fwd.tensor_bytes("read").get(t, 0) + bwd.tensor_bytes("read").get(t, 0)
    # by hand: forward reads Q once and K, V once per query block (N/128 = 4), writes O and the fp32 LSE;
    # matmul FLOPs non-causal: forward 2 GEMMs (4·N²·d per head), backward 5 (10·N²·d)
    d = both.to_dict()["passes"]
    assert d["fwd"]["sm_read_bytes"] == E * B * H * N * D * (1 + 2 * 4)
    assert d["fwd"]["sm_write_bytes"] == E * B * H * N * D + 4 * B * H * N
    assert both.counts.matmul_flops == (4 + 10) * B * H * N * N * D


def test_fwd_bwd_time_is_each_pass_with_its_own_config():
    fwd, bwd = (predict("h100", P, CFG, direction=d, l2=False) for d in ("fwd", "bwd"))
    both = predict("h100", P, CFG, direction="fwd+bwd", l2=False)
    assert both.time_s == pytest.approx(fwd.time_s + bwd.time_s, rel=1e-12)
    assert [k.name for k in both.time.kernels] == [k.name for k in fwd.time.kernels + bwd.time.kernels]


def test_fwd_bwd_l2_carries_the_forward_into_the_backward():
    # everything fits in the 50 MiB L2: after the forward, the backward misses only on dO (the forward never touched it)
    both = predict("h100", P, CFG, direction="fwd+bwd", l2_stride=1).to_dict()["passes"]
    alone = predict("h100", P, CFG, direction="bwd", l2_stride=1)
    assert both["bwd"]["dram_read_bytes"] == E * B * H * N * D
    assert alone.dram_read_bytes > both["bwd"]["dram_read_bytes"]


def test_bwd_without_preset_maps_the_algorithm():
    pred = predict("h100", P, CFG, direction="bwd", l2=False)
    assert pred.schedule.algorithm == "flash2_bwd" and pred.direction == "bwd"
    with pytest.raises(IosimError, match="^splitkv has no backward; algorithms with one: flash2$"):
        backward_of("splitkv")
    with pytest.raises(IosimError, match="unknown pass 'back'"):
        predict("h100", P, CFG, direction="back")


def test_concat_refuses_what_does_not_match():
    fwd, bwd = get("flash2").build(P, CFG, None), get("flash2_bwd").build(P, CFG, None)
    wrong_o = replace(bwd, tensors=bwd.tensors | {"O": TensorSpec("O", (B, H, N, D), 4, "input")})
    with pytest.raises(IosimError, match="tensor 'O' differs"):
        concat_schedules(fwd, wrong_o)
    with pytest.raises(IosimError, match="kernel name 'flash2_fwd' is in both"):
        concat_schedules(fwd, fwd)
    other = get("flash2_bwd").build(replace(P, seq_q=256, seq_kv=256), CFG, None)
    with pytest.raises(IosimError, match="different problems"):
        concat_schedules(fwd, other)
    s = concat_schedules(fwd, bwd)
    assert s.tensors["O"].role == "output" and s.tensors["dO"].role == "input"
    assert s.algorithm == "flash2+flash2_bwd"


def test_cli_pass_bwd_prints_the_backward_kernels():
    text = run_cli(["predict", *SMALL, "--pass", "bwd"])
    assert text.splitlines()[0].startswith("flash2_bwd, pass bwd, on ")
    for k in ("flash2_bwd_preprocess", "flash2_bwd ", "flash2_bwd_convert_dq"):
        assert k in text
    assert "flash2_fwd" not in text


def test_cli_fwd_bwd_json_and_subtotals():
    d = json.loads(run_cli(["predict", *SMALL, "--pass", "fwd+bwd", "--json"]))
    assert d["pass"] == "fwd+bwd" and list(d["passes"]) == ["fwd", "bwd"]
    assert d["passes"]["bwd"]["algorithm"] == "flash2_bwd"
    for f in ("time_s", "sm_read_bytes", "dram_read_bytes"):
        assert d["passes"]["fwd"][f] + d["passes"]["bwd"][f] == pytest.approx(d[f], rel=1e-12)
    text = run_cli(["predict", *SMALL, "--pass", "fwd+bwd"])
    assert "per pass:" in text and "\nbwd: algorithm flash2_bwd" in text


def test_default_output_is_pass_fwd():
    for extra in ([], ["--json"]):
        assert run_cli(["predict", *SMALL, *extra]) == run_cli(["predict", *SMALL, *extra, "--pass", "fwd"])
    assert json.loads(run_cli(["predict", *SMALL, "--json"]))["pass"] == "fwd"


@pytest.mark.parametrize("argv, needle", [
    (["--pass", "bwd", "--algorithm", "splitkv"], "iosim: error: splitkv has no backward; algorithms with one: flash2"),
    (["--pass", "bwd", "--kernel", "flex"], "iosim: error: kernel preset 'flex' has no backward"),
])
def test_cli_bad_pass_is_one_line(argv, needle, capsys):
    assert main(["predict", *SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(needle) and err.count("\n") == 1


def test_sweep_pass_column():
    df = sweep({"seq_q": 512, "heads": 2, "head_dim": 64, "block_m": 128, "block_n": 64,
                "pass": ["fwd", "bwd", "fwd+bwd"]}, jobs=1, l2=False, progress=False)
    assert list(df["pass"]) == ["fwd", "bwd", "fwd+bwd"] and df["error"].isna().all()
    assert df["sm_read_bytes"][2] == df["sm_read_bytes"][0] + df["sm_read_bytes"][1]
    df = sweep({"seq_q": 512, "heads": 2, "head_dim": 64}, jobs=1, l2=False, progress=False, direction="bwd")
    assert list(df["pass"]) == ["bwd"] and list(df["algorithm"]) == ["flash2_bwd"]
    with pytest.raises(IosimError, match="sweep key 'pass'"):
        sweep({"pass": "back"}, jobs=1)


def test_compare_points_take_the_pass():
    from iosim.cli_compare import _points, problem_text
    args = create_parser(load=["compare"]).parse_args(["compare", "--ncu", "x.csv", *SMALL, "--pass", "bwd"])
    pts = _points(args)
    assert [p["pass"] for p in pts] == ["bwd"] and problem_text(pts[0]).endswith(" bwd")


def test_sweep_cli_pass_sets_the_spec_default(tmp_path):
    import pandas as pd
    spec, out = tmp_path / "s.toml", tmp_path / "s.csv"
    spec.write_text('seq_q = 512\nheads = 2\nhead_dim = 64\n[[grid]]\ncausal = false\n[[grid]]\npass = "fwd"\n')
    run_cli(["sweep", str(spec), "--pass", "bwd", "--jobs", "1", "--no-l2", "--no-progress", "--out", str(out)])
    assert list(pd.read_csv(out)["pass"]) == ["bwd", "fwd"]
