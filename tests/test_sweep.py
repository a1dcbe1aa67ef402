"""iosim.sweep (grid -> DataFrame) and `iosim sweep SPEC.toml`."""

import csv
import io

import pandas as pd
import pytest

from iosim import IosimError, sweep
from iosim.cli import main, run
from iosim.sweeps import Progress, points

SMALL = {"algorithm": "flash2", "batch": 2, "heads": 4, "seq_q": [256, 512], "head_dim": 64, "block_m": 64,
         "block_n": 64, "causal": [False, True]}


def test_points_cross_lists_in_key_order_last_fastest():
    reordered = {"causal": [False, True], "seq_q": [256, 512], "heads": 4}  # dict order does not matter
    got = [(p["seq_q"], p["causal"]) for p in points(reordered)]
    assert got == [(256, False), (256, True), (512, False), (512, True)]
    two = points([{"seq_q": 128}, {"seq_q": [64, 32]}])  # a list of grids: one after another
    assert [p["seq_q"] for p in two] == [128, 64, 32]
    assert two[0]["hardware"] == "h100" and two[0]["kv_heads"] is None and two[0]["num_warps"] == 4


def test_sweep_rows_order_and_bytes_of_a_flash2_point():
    df = sweep(SMALL, jobs=1, progress=False, l2=False)
    assert len(df) == 4
    assert list(zip(df["seq_q"], df["causal"])) == [(256, False), (256, True), (512, False), (512, True)]
    # flash2, non-causal, N = 256, tiles 64: Q read once, K and V read once per query block, O and LSE written once
    B, H, N, d, e, bm = 2, 4, 256, 64, 2, 64
    tensor = B * H * N * d * e
    row = df.iloc[0]
    assert row["sm_read_bytes"] == tensor + (N // bm) * 2 * tensor
    assert row["sm_write_bytes"] == tensor + B * H * N * 4  # O in bf16, logsumexp in fp32
    assert row["matmul_flops"] == 4 * N * N * d * B * H  # QK^T and PV, 2 FLOPs per multiply-add
    assert row["kv_heads"] == 4 and row["seq_kv"] == 256  # defaults resolved
    assert df["dram_read_bytes"].isna().all() and df["error"].isna().all()
    assert (df["time_s"] > 0).all() and set(df["bound"]) <= {"tensor", "sfu", "fp32", "smem", "l2", "dram",
                                                            "launch", "parallelism"}
    assert list(df.columns[:3]) == ["hardware", "kernel", "algorithm"] and df.columns[-1] == "error"


def test_jobs_1_and_2_give_identical_frames():
    pd.testing.assert_frame_equal(sweep(SMALL, jobs=1, progress=False, l2=False),
                                  sweep(SMALL, jobs=2, progress=False, l2=False))


def test_bad_point_keeps_an_error_row_and_the_others_their_results():
    df = sweep({"heads": 16, "kv_heads": [16, 3], "seq_q": 256, "head_dim": 64}, jobs=2, progress=False, l2=False)
    assert len(df) == 2
    assert pd.isna(df["error"][0]) and df["sm_read_bytes"][0] > 0
    assert "kv_heads=3" in df["error"][1] and pd.isna(df["sm_read_bytes"][1])


def test_kernel_preset_resolves_config_columns():
    df = sweep({"kernel": "fa2", "seq_q": 1024, "head_dim": 128}, jobs=1, progress=False, l2=False)
    # FA2 forward for d <= 128: 128 x 64 tiles, 4 warps, one stage, KV walked descending (iosim/presets.py sources)
    assert (df["block_m"][0], df["block_n"][0], df["num_stages"][0], df["kv_order"][0]) == (128, 64, 1, "descending")


def test_one_small_point_with_l2():
    df = sweep({"batch": 1, "heads": 2, "seq_q": 512, "head_dim": 64}, jobs=1, progress=False)
    r = df.iloc[0]
    qkv = 3 * 1 * 2 * 512 * 64 * 2
    assert qkv <= r["dram_read_bytes"] <= r["sm_read_bytes"]  # every input byte comes from DRAM at least once
    assert 0 <= r["l2_hit_rate"] <= 1 and pd.isna(r["error"])


@pytest.mark.parametrize("grid, words", [
    ({"seq": 128}, ["unknown sweep key 'seq'", "seq_q", "head_dim"]),
    ({"seq_q": []}, ["'seq_q'", "empty list"]),
    ({"batch": "2"}, ["'batch'", "integer"]),
    ({"causal": 1}, ["'causal'", "true or false"]),
    ({"dtype": [16]}, ["'dtype'", "string"]),
])
def test_bad_grids_get_one_line_errors(grid, words):
    with pytest.raises(IosimError) as e:
        points(grid)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_progress_line_shows_done_total_rate_eta():
    buf = io.StringIO()
    bar = Progress(3, True, buf)
    for _ in range(3):
        bar.step()
    bar.close()
    assert "3/3" in buf.getvalue() and "points/s" in buf.getvalue() and "ETA" in buf.getvalue()
    quiet = io.StringIO()
    Progress(3, False, quiet).step()
    assert quiet.getvalue() == ""


SPEC = """
algorithm = "flash2"
heads = 4
head_dim = 64
seq_q = [256, 512]
[[grid]]
causal = [false, true]
[[grid]]
kv_heads = 2
"""


def test_cli_sweep_writes_csv_atomically_and_deterministically(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    out = tmp_path / "res" / "sweep.csv"
    argv = ["sweep", str(spec), "--out", str(out), "--no-l2", "--jobs", "2", "--no-progress"]
    buf = io.StringIO()
    assert run(argv, buf) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["seq_q"], r["causal"], r["kv_heads"]) for r in rows] == [
        ("256", "False", "4"), ("256", "True", "4"), ("512", "False", "4"), ("512", "True", "4"),
        ("256", "False", "2"), ("512", "False", "2")]
    assert sorted(p.name for p in out.parent.iterdir()) == ["sweep.csv"]  # no temp file left behind
    first = out.read_bytes()
    assert run(argv[:-3] + ["--jobs", "1", "--no-progress"], io.StringIO()) == 0
    assert out.read_bytes() == first
    text = buf.getvalue()
    assert "seq_q" in text and "SM read" in text and "wrote 6 rows" in text


def test_cli_sweep_exits_1_after_writing_when_a_point_fails(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('heads = 16\nkv_heads = [16, 3]\nseq_q = 256\nhead_dim = 64\n')
    out = tmp_path / "r.csv"
    assert main(["sweep", str(spec), "--out", str(out), "--no-l2", "--jobs", "1", "--no-progress"]) == 1
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and rows[0]["error"] == "" and "kv_heads=3" in rows[1]["error"]
    err = capsys.readouterr().err
    assert "1 of 2 points failed" in err and "point 1" in err and "kv_heads=3" in err


@pytest.mark.parametrize("text, words", [
    ("seq = 128\n", ["unknown sweep key 'seq'", "seq_q"]),
    ("seq_q = []\n", ["empty list"]),
    ("batch = 1.5\n", ["'batch'", "integer"]),
    ("seq_q = [1,\n", ["invalid TOML"]),
    ("grid = 3\n", ["[[grid]]"]),
])
def test_cli_sweep_bad_spec_one_line_exit_2(tmp_path, capsys, text, words):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    assert main(["sweep", str(spec), "--no-l2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert all(w in err for w in words) and str(spec) in err


def test_cli_sweep_out_extension_and_parquet_without_pyarrow(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text("seq_q = 256\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "x.txt"), "--no-progress"]) == 2
    assert ".csv or .parquet" in capsys.readouterr().err
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert main(["sweep", str(spec), "--out", str(tmp_path / "x.parquet"), "--no-progress"]) == 2
        assert "pip install pyarrow" in capsys.readouterr().err
        assert not (tmp_path / "x.parquet").exists()
