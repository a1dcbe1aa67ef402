"""Bad input (issue 18, errors): every case that gave a traceback or a silently wrong answer now gives one
`iosim: error:` line and exit 2 (CLI) or an IosimError (API); problems a GPU could not run are predicted with one
`iosim: warning:` line each; large L2 traces stream in bounded memory, with progress and a clean Ctrl-C."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from iosim import IosimError, KernelConfig, Problem, load_hardware, predict
from iosim.cli import main
from iosim.errors import IosimWarning
from iosim.limits import parse_size

HUGE = "12345678901234567890123"


def cli(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err.splitlines()


def assert_cli_error(capsys, argv, *names):
    rc, _, err = cli(capsys, argv)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("iosim: error: "), err
    for n in names:
        assert n in err[0], (n, err[0])
    return err[0]


def _writable(d: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=d):
            return True
    except OSError:
        return False


def _readonly_dir(tmp_path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    if os.path.isdir("/sys/kernel") and not _writable("/sys/kernel"):
        return Path("/sys/kernel")  # root writes anywhere but on a read-only file system
    pytest.skip("running as root with no read-only folder")


# --- 1. report --out -----------------------------------------------------------------------------------------------

@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "somefile"
    f.write_text("x")
    return f


def test_report_out_is_a_file(capsys, a_file):
    msg = assert_cli_error(capsys, ["report", "--out", str(a_file), "--quiet"], str(a_file))
    assert "is a file, not a folder" in msg


def test_report_out_under_a_file(capsys, a_file):
    msg = assert_cli_error(capsys, ["report", "--out", str(a_file / "sub"), "--quiet"], str(a_file / "sub"))
    assert f"{a_file} is a file" in msg


def test_report_out_read_only(capsys, tmp_path):
    d = _readonly_dir(tmp_path)
    assert_cli_error(capsys, ["report", "--out", str(d), "--quiet"], str(d), "writable")


def test_hints_out_under_a_file_and_a_folder(capsys, a_file, tmp_path):
    base = ["hints", "--seq-q", "1024", "--top", "1", "--out"]
    assert_cli_error(capsys, base + [str(a_file / "sub")], str(a_file / "sub"), "is a file")
    assert_cli_error(capsys, base + [str(tmp_path)], str(tmp_path), "is a folder")


# --- 2./3. size flags ------------------------------------------------------------------------------------------------

def test_parse_size_accepts_whole_numbers_in_any_notation():
    assert parse_size("131072", "--seq-q") == 131072
    assert parse_size("1e9", "--batch") == 10**9
    assert parse_size("1.5e3", "--batch") == 1500  # a whole number, written in scientific notation
    assert parse_size("1_000", "--batch") == 1000


@pytest.mark.parametrize("value", ["1.5", "1e-3", "2.5e0", "abc", "", "inf", "nan", "128K"])
def test_size_flag_not_a_whole_number(capsys, value):
    assert_cli_error(capsys, ["predict", "--no-l2", "--batch", value], "--batch", repr(value))


def test_batch_1e9_accepted_then_warned(capsys):
    rc, out, err = cli(capsys, ["predict", "--no-l2", "--json", "--batch", "1e9", "--heads", "1", "--seq-q", "128",
                                "--head-dim", "64"])
    assert rc == 0 and json.loads(out)["problem"]["batch"] == 10**9
    assert len(err) == 2 and all(e.startswith("iosim: warning: ") for e in err)
    assert "batch=1000000000" in err[0] and "grid.y = batch 1,000,000,000" in err[1]


def test_batch_1e9_at_default_sizes_exceeds_int64_counts(capsys):
    # 10^9 · 16 · 4096² · 128 = 3.4e19 > 2^57: its FLOPs (4× that) would not fit int64
    assert 10**9 * 16 * 4096**2 * 128 > 2**57
    assert_cli_error(capsys, ["predict", "--batch", "1e9"], "1000000000", "2^57")


@pytest.mark.parametrize("cmd", [["predict", "--no-l2"], ["tiles"], ["bounds"]])
def test_seq_q_too_large(capsys, cmd):
    assert_cli_error(capsys, cmd + ["--seq-q", HUGE], "seq_q", HUGE, "2^31")


def test_size_bound_in_the_api():
    with pytest.raises(IosimError, match="seq_q=1180591620717411303424 is too large"):
        Problem(1, 4, 4, 2**70, 512, 64)
    with pytest.raises(IosimError, match="2\\^57"):
        Problem(2**20, 128, 128, 2**20, 2**20, 128)


# --- 4. the Python API ---------------------------------------------------------------------------------------------

P = Problem(1, 4, 4, 512, 512, 64)


def test_predict_takes_a_profile_name_and_default_config():
    ref = predict(load_hardware("h100"), P, KernelConfig(), l2=False)
    by_name = predict("h100", P, None, l2=False)
    assert by_name.counts == ref.counts and by_name.hardware == ref.hardware


@pytest.mark.parametrize("args, msg", [
    ((lambda hw: (hw, KernelConfig(), P)), "problem must be a Problem, got KernelConfig; config must be a KernelConfig or None, got Problem"),
    ((lambda hw: (P, hw, KernelConfig())), "hardware must be a Hardware or a profile name or path, got Problem; problem must be a Problem, got Hardware"),
])
def test_predict_swapped_arguments(args, msg):
    with pytest.raises(IosimError) as e:
        predict(*args(load_hardware("h100")), l2=False)
    assert msg in str(e.value)


def test_causal_must_be_a_bool():
    with pytest.raises(IosimError, match="causal must be True or False, got 'no'"):
        Problem(1, 4, 4, 512, 512, 64, causal="no")
    p = Problem(1, 4, 4, 512, 512, 64, causal=np.bool_(True))
    assert p.causal is True


def test_numpy_integers_accepted_and_stored_as_int():
    p = Problem(np.int64(2), np.int32(8), np.uint8(2), np.int64(512), 512, np.int16(64))
    assert (p.batch, p.heads, p.kv_heads, p.head_dim) == (2, 8, 2, 64)
    assert all(type(v) is int for v in (p.batch, p.heads, p.kv_heads, p.seq_q, p.head_dim))
    c = KernelConfig(block_m=np.int64(64), block_n=np.int64(32), num_warps=np.int64(4))
    assert (c.block_m, c.block_n, c.num_warps) == (64, 32, 4) and type(c.block_m) is int
    assert predict("h100", p, c, l2=False).counts.kernels[0].programs == 512 // 64 * 2 * 8


def test_sympy_sizes_still_pass():
    n = sp.Symbol("N", positive=True, integer=True)
    assert Problem(1, 1, 1, n, n, 64).seq_q is n


@pytest.mark.parametrize("make, msg", [
    (lambda: Problem(1, 4, 4, 512, 512, 64, dtype=[1]), "unknown dtype"),
    (lambda: Problem(1, 4, 4, 512.0, 512, 64), "seq_q must be a positive integer"),
    (lambda: Problem(True, 4, 4, 512, 512, 64), "batch must be a positive integer"),
    (lambda: KernelConfig(grid_order="mbh"), "grid_order must be a permutation"),
    (lambda: KernelConfig(grid_order=5), "grid_order must be a permutation"),
    (lambda: KernelConfig(band_loop="no"), "band_loop must be True or False"),
    (lambda: KernelConfig(num_warps=64), "num_warps must be a power of two \\(1..32\\), got 64"),
    (lambda: load_hardware(None), "hardware must be a profile name"),
    (lambda: predict("h100", P, None, cta_jitter=-1), "cta_jitter must be a number in"),
    (lambda: predict("h100", P, None, cta_jitter=float("nan")), "cta_jitter must be a number in"),
    (lambda: predict("h100", P, None, l2_geometry="lru"), "l2_geometry must be an L2Geometry or None, got str"),
    (lambda: predict("h100", P, None, None), "algorithm must be an algorithm name, got NoneType"),
])
def test_api_bad_values(make, msg):
    with pytest.raises(IosimError, match=msg):
        make()


def test_grid_order_list_becomes_a_tuple():
    assert KernelConfig(grid_order=["m", "h", "b"]).grid_order == ("m", "h", "b")


def test_cli_cta_jitter_negative(capsys):
    assert_cli_error(capsys, ["predict", "--seq-q", "512", "--cta-jitter", "-1"], "cta_jitter", "-1")


# --- 5. warnings: memory and CUDA grid ------------------------------------------------------------------------------

def test_164_gb_problem_predicts_with_one_warning(capsys):
    b, h, n, d = 38, 32, 131072, 128
    total = 4 * b * h * n * d * 2 + b * h * n * 4  # Q, K, V, O in bf16 + fp32 LSE
    assert 163e9 < total < 165e9
    rc, out, err = cli(capsys, ["predict", "--no-l2", "--json", "--batch", str(b), "--heads", str(h), "--seq-q", str(n),
                                "--head-dim", str(d)])
    assert rc == 0
    assert len(err) == 1 and err[0].startswith("iosim: warning: Q, K, V, O, LSE take ")
    for s in (f"{total / 1e9:,.1f} GB", "batch=38", "heads=32", "seq_q=131072", "head_dim=128", "80.0 GB"):
        assert s in err[0]
    assert err[0][len("iosim: warning: "):] in json.loads(out)["notes"]


def test_34_gb_problem_does_not_warn(capsys):
    # the shape at batch 8: 4 · 8·32·131072·128 · 2 B = 34.4 GB of Q, K, V, O fits the 80 GB H100
    rc, _, err = cli(capsys, ["predict", "--no-l2", "--batch", "8", "--heads", "32", "--seq-q", "131072"])
    assert rc == 0 and err == []


def test_grid_y_over_cuda_limit_warns(capsys):
    rc, out, err = cli(capsys, ["predict", "--no-l2", "--batch", "70000", "--heads", "1", "--seq-q", "128"])
    assert rc == 0
    assert err == ["iosim: warning: flash2_fwd: grid.y = batch 70,000 exceeds CUDA's limit of 65,535; the launch "
                   "would fail; predicted anyway"]
    assert "grid.y = batch 70,000 exceeds" in out  # also among the notes of the text output


def test_triton_tutorial_grid_is_two_d(capsys):
    # (m, Z·H): 5000 · 16 = 80,000 > 65,535 on grid.y; FA2's (m, B, H) keeps y = 5000, z = 16
    args = ["predict", "--no-l2", "--batch", "5000", "--heads", "16", "--seq-q", "128"]
    rc, _, err = cli(capsys, args + ["--kernel", "triton-tutorial"])
    assert rc == 0 and len(err) == 1 and "heads 16 × batch 5,000 = 80,000" in err[0]
    rc, _, err = cli(capsys, args + ["--kernel", "fa2"])
    assert rc == 0 and err == []


def test_api_warns_with_iosim_warning():
    with pytest.warns(IosimWarning, match="grid.y = batch 70,000"):
        pred = predict("h100", Problem(70000, 1, 1, 128, 128, 128), None, l2=False)
    assert any("grid.y" in n for n in pred.to_dict()["notes"])


def test_causal_with_more_queries_than_keys_warns():
    with pytest.warns(IosimWarning, match="the first 512 query rows see no key"):
        predict("h100", Problem(1, 4, 4, 1024, 512, 64, causal=True), None, l2=False)


# --- 6. large L2 traces stream (issue 19: the guard that refused them is gone) ------------------------------------

def test_large_trace_streams_in_bounded_memory():
    """The 25000 × 1024 case the guard refused (112M ranges) now streams; the same shape at batch 50 and 200: FA2
    128×64 tiles, B·16·8 CTAs load K and V 16 times plus Q, O, LSE once, 2·(B·128)·16 + 3·(B·128) ranges. Streamed in
    50,000-range chunks, the traced peak stays flat as the trace grows 4×, and below the 20 bytes per range the
    ordered whole trace alone would take (8 + 8 B address and length, 2 B SM, 1 B write flag, 1 B kernel)."""
    import tracemalloc
    from iosim.memory.hierarchy import simulate_schedule
    from iosim.pipeline import build_schedule
    hw = load_hardware("h100")
    peaks = []
    for b in (50, 200):
        s = build_schedule("flash2", Problem(b, 16, 16, 1024, 1024, 128), KernelConfig(), hw)
        simulate_schedule(s, hw, chunk_ranges=50_000, stride=64)  # compile and warm up outside the measurement
        tracemalloc.start()
        simulate_schedule(s, hw, chunk_ranges=50_000, stride=64)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    ranges = 2 * (200 * 16 * 8) * 16 + 3 * (200 * 16 * 8)
    assert ranges == 896_000
    assert peaks[1] < 1.5 * peaks[0]
    assert peaks[1] < 20 * ranges


def test_cli_shows_progress_and_stops_cleanly_on_ctrl_c(capsys, monkeypatch):
    import iosim.memory.hierarchy as hierarchy
    monkeypatch.setattr(hierarchy, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(hierarchy.Progress, "update", _update_every_time(hierarchy.Progress.update))
    rc, out, err = cli(capsys, ["predict", "--seq-q", "4096", "--heads", "4", "--causal"])
    assert rc == 0 and "DRAM" in out
    assert any("iosim: L2 timeline" in line and "ETA" in line for line in err)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(hierarchy, "stream_kernel", interrupted)
    rc, out, err = cli(capsys, ["predict", "--seq-q", "4096"])
    assert rc == 130 and err == ["iosim: interrupted"]


def _update_every_time(update):
    def f(self, frac):
        self.drawn_s = 0.0   # no 0.2-s throttle: every window draws
        update(self, frac)
    return f


# --- found after the first pass: every subcommand reads sizes alike; tiles names unknown algorithms; jitter bounded ---

@pytest.mark.parametrize("cmd", [["tiles"], ["bounds", "--head-dim", "64"], ["hints"]])
def test_every_subcommand_reads_size_flags_alike(capsys, cmd):
    assert_cli_error(capsys, cmd + ["--seq-q", "2.5"], "--seq-q", "'2.5'", "not a whole number")
    rc, out, err = cli(capsys, cmd + ["--seq-q", "1e3"])
    assert rc == 0 and err == [] and out


def test_tiles_unknown_algorithm(capsys):
    msg = assert_cli_error(capsys, ["tiles", "--algorithm", "nope"], "unknown algorithm 'nope'", "flash2")
    assert "wgmma" not in msg  # the reason is the name, not a list of tile rejections


@pytest.mark.parametrize("value", ["1e9", "-0.1", "nan", "inf"])
def test_cta_jitter_out_of_range(capsys, value):
    assert_cli_error(capsys, ["predict", "--no-l2", "--cta-jitter", value], "cta_jitter", "[0, 2.0]")
