"""`iosim predict --varlen/--varlen-kv` (FA2's varlen forward), `--page-size` (paged-KV decode), and `--mask` in
`iosim compare` and `iosim sweep`: counts against dense per-sequence predictions built here, paged counts against the
unpaged decode's, one-line errors."""

import csv
import io
import json
from pathlib import Path

import pytest

from iosim.cli import main, run
from iosim.ncu import read_ncu_csv
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem

ROOT = Path(__file__).resolve().parents[1]
FA2_TILES = KernelConfig(128, 64, 4, 1, ("m", "b", "h"), "descending", "ascending")  # FA2's d=128 forward launch


def _json(argv: list[str]) -> dict:
    buf = io.StringIO()
    assert run(["predict", *argv, "--json"], buf) == 0
    return json.loads(buf.getvalue())


@pytest.mark.parametrize("lq,lk,causal", [([300, 1000, 17, 129], None, False),
                                          ([300, 1000, 17, 129], None, True),
                                          ([64, 200, 5], [64, 2000, 1], False)])
def test_varlen_counts_are_the_sum_of_dense_sequences(lq, lk, causal):
    argv = ["--kernel", "fa2", "--heads", "8", "--kv-heads", "2", "--varlen", ",".join(map(str, lq)), "--no-l2"]
    argv += (["--varlen-kv", ",".join(map(str, lk))] if lk else []) + (["--causal"] if causal else [])
    d = _json(argv)
    lk = lk or lq
    dense = [predict("h100", Problem(1, 8, 2, q, k, 128, "bf16", causal), FA2_TILES, "flash2", l2=False)
             for q, k in zip(lq, lk)]
    for f in ("sm_read_bytes", "sm_write_bytes", "flops", "matmul_flops", "exp_ops"):
        assert d[f] == sum(getattr(p.counts, f) for p in dense), f
    assert d["algorithm"] == "flash2_varlen" and d["config"]["block_m"] == 128 and d["config"]["block_n"] == 64
    assert (d["problem"]["batch"], d["problem"]["seq_q"], d["problem"]["seq_kv"]) == (len(lq), max(lq), max(lk))
    assert d["varlen"] == {"sequences": len(lq), "q_tokens": sum(lq), "kv_tokens": sum(lk),
                           "max_seqlen_q": max(lq), "max_seqlen_kv": max(lk)}
    assert any("GQA swap" in n for n in d["notes"])


def test_varlen_cu_seqlens_file_and_text_output(tmp_path):
    f = tmp_path / "cu.txt"
    f.write_text("0 300 1300 1317\n")  # cu_seqlens of 300, 1000, 17
    buf = io.StringIO()
    assert run(["predict", "--kernel", "fa2", "--varlen", str(f), "--no-l2"], buf) == 0
    text = buf.getvalue()
    assert "B=3 H=16 Hkv=16 Nq=1000 Nkv=1000" in text
    assert "varlen: 3 sequences packed, 1,317 query / 1,317 key tokens, longest 1,000 / 1,000" in text


def test_varlen_sliding_mask_is_a_window_per_sequence():
    """sliding:W on a varlen batch = the sum of the dense sequences under the same window."""
    lq = [300, 1000, 129]
    d = _json(["--algorithm", "flash2", "--varlen", ",".join(map(str, lq)), "--mask", "sliding:200", "--no-l2"])
    dense = [predict("h100", Problem(1, 16, 16, n, n, 128), KernelConfig(), "flash2", l2=False,
                     block_mask="sliding:200") for n in lq]
    assert d["sm_read_bytes"] == sum(p.counts.sm_read_bytes for p in dense)
    assert d["mask"]["spec"] == "sliding:200"


def test_paged_decode_counts_equal_unpaged_and_dram_runs():
    argv = ["--kernel", "fa2", "--batch", "2", "--heads", "32", "--kv-heads", "8", "--seq-q", "1", "--seq-kv", "4096"]
    unpaged, paged = _json(argv), _json(argv + ["--page-size", "256", "--page-seed", "3"])
    assert [k["name"] for k in paged["kernels"]] == [k["name"] for k in unpaged["kernels"]] == \
        ["splitkv_fwd", "splitkv_combine"]  # this decode runs FA2's split kernel either way
    for f in ("sm_read_bytes", "sm_write_bytes", "flops"):
        assert paged[f] == unpaged[f], f
    assert paged["dram_read_bytes"] > 0 and paged["l2_hit_rate"] is not None
    assert paged["paged"] == {"page_size": 256, "pages": 2 * 4096 // 256, "page_seed": 3}
    assert unpaged["paged"] is None


@pytest.mark.parametrize("argv,msg", [
    (["--varlen", "3,x"], "lengths '3,x'"),
    (["--varlen", "3,4", "--batch", "3"], "--batch 3 conflicts with --varlen (2 sequences"),
    (["--varlen", "3,4", "--seq-q", "9"], "--seq-q 9 conflicts with --varlen"),
    (["--varlen", "3,4", "--varlen-kv", "5"], "--varlen-kv gives 1 lengths for the 2 sequences"),
    (["--varlen-kv", "5"], "--varlen-kv needs --varlen"),
    (["--varlen", "3,4", "--kernel", "flex"], "cannot run on --kernel flex"),
    (["--varlen", "3,4", "--pass", "bwd"], "forward only"),
    (["--varlen", "3,4", "--mask", "chunked:2"], "cannot run on a varlen batch"),
    (["--varlen", "3,4", "--page-size", "256"], "give varlen or page_size"),
    (["--kernel", "fa2", "--seq-q", "1", "--page-size", "300"], "multiple of 256"),
    (["--seq-q", "1", "--page-size", "256"], "use --kernel fa2 or --algorithm splitkv"),
])
def test_errors_are_one_line(argv, msg, capsys):
    assert main(["predict", "--no-l2", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error: ") and err.count("\n") == 1 and msg in err, err


def test_compare_with_mask_predicts_the_window(tmp_path):
    """One FA2 launch (B1 H16 N4096 d128, non-causal name) against --mask sliding:1024: FA2's window (1023, 0) visits,
    for query block i of 128 rows, KV blocks of 64 from ⌊max(0, 128i − 1023)/64⌋ to 2i + 1."""
    name = read_ncu_csv(ROOT / "reports/validation/h100/raw/ncu_raw_0.csv")[3].kernel_name  # d = 128, non-causal
    hdr = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
           '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')
    row = f'"0","1","p","h","{name}","1","7","(128, 1, 1)","(32, 1, 16)","0","9.0","s",' \
          '"l1tex__m_xbar2l1tex_read_bytes.sum","byte","300,000,000"'
    f, out = tmp_path / "one.csv", tmp_path / "rows.csv"
    f.write_text(hdr + "\n" + row + "\n")
    buf = io.StringIO()
    assert run(["compare", "--ncu", str(f), "--kernel", "fa2", "--seq-q", "4096", "--mask", "sliding:1024",
                "--no-l2", "--jobs", "1", "--out", str(out)], buf) == 0
    (r,) = list(csv.DictReader(out.open()))
    blocks = sum(2 * i + 2 - max(0, 128 * i - 1023) // 64 for i in range(32))
    assert r["problem"] == "B1 H16 N4096 d128 sliding:1024"
    assert int(r["sm_read_predicted"]) == 16 * (4096 * 128 * 2 + blocks * 2 * 64 * 128 * 2)


def test_compare_takes_one_mask(capsys):
    assert main(["compare", "--ncu", str(ROOT / "reports/validation/h100/raw/ncu_raw_0.csv"), "--mask", "causal",
                 "--mask", "sliding:8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error: compare takes one --mask") and err.count("\n") == 1


def test_sweep_mask_column(tmp_path):
    spec, out = tmp_path / "s.toml", tmp_path / "s.csv"
    spec.write_text('algorithm = "flash2"\nseq_q = 1024\nblock_m = 128\nblock_n = 64\n'
                    'mask = ["sliding:256", "chunked:256"]\n')
    buf = io.StringIO()
    assert run(["sweep", str(spec), "--no-l2", "--jobs", "1", "--no-progress", "--out", str(out)], buf) == 1  # a failed point
    rows = list(csv.DictReader(out.open()))
    assert [r["mask"] for r in rows] == ["sliding:256", "chunked:256"] and "sliding:256" in buf.getvalue()
    # sliding:256 as FA2's window (255, 0): query block i of 128 visits KV blocks ⌊max(0, 128i − 255)/64⌋ … 2i + 1
    blocks = sum(2 * i + 2 - max(0, 128 * i - 255) // 64 for i in range(8))
    assert int(rows[0]["sm_read_bytes"]) == 16 * (1024 * 128 * 2 + blocks * 2 * 64 * 128 * 2)
    assert rows[0]["error"] == "" and "cannot run on --algorithm flash2" in rows[1]["error"]
