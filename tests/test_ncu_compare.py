"""iosim.ncu (ncu CSV reader), validate.parse_ncu_csv on raw pages, and `iosim compare --ncu`."""

import csv
import io
import re
from pathlib import Path

import pytest

from iosim import KernelConfig, Problem, load_hardware, predict
from iosim.cli import main, run
from iosim.cli_compare import launch_grid
from iosim.ncu import kernel_family, kernel_hints, read_ncu_csv, to_base
from iosim.validate import parse_ncu_csv

ROOT = Path(__file__).resolve().parents[1]
H100_RAW = ROOT / "reports/validation/h100/raw"
SET5 = ROOT / "reports/validation/h200/l2_validation_set5_raw"


def _measured(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_raw_page_launches_grid_and_values_read_by_hand():
    launches = read_ncu_csv(H100_RAW / "ncu_raw_0.csv")
    assert len(launches) == 14  # 7 cases, each a marker then one FA2 launch
    assert [ln.is_marker for ln in launches] == [True, False] * 7
    fa = launches[1]
    assert "pytorch_flash::flash_fwd_kernel" in fa.kernel_name
    assert fa.grid == (128, 2, 16) and fa.block == (128, 1, 1) and fa.id == 1
    # the file's cells: "17,248,327,296" byte, "7,081,088" ns, "1,983,724.80" byte
    assert fa.metrics["l1tex__m_xbar2l1tex_read_bytes.sum"] == 17248327296
    assert fa.metrics["gpu__time_duration.sum"] == pytest.approx(7.081088e-3, rel=1e-12)
    assert fa.metrics["dram__bytes_write.avg"] == pytest.approx(1983724.80)
    assert launches[0].grid == (1, 1, 1) and launches[12].grid == (7, 1, 1)


LONG = """==PROF== Connected to process 1 (/usr/bin/python3)
hello from the program
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","1","p","h","_attn_fwd","1","7","(128, 1, 1)","(8, 4, 1)","0","9.0","s","dram__bytes_read.sum","Kbyte","1,536.50"
"0","1","p","h","_attn_fwd","1","7","(128, 1, 1)","(8, 4, 1)","0","9.0","s","gpu__time_duration.sum","usecond","12.5"
"0","1","p","h","_attn_fwd","1","7","(128, 1, 1)","(8, 4, 1)","0","9.0","s","l1tex__m_xbar2l1tex_read_bytes.sum","byte","n/a"
"1","1","p","h","iosim_mark_end","1","7","(32, 1, 1)","(1, 1, 1)","0","9.0","s","dram__bytes_read.sum","byte","0"
==PROF== Disconnected from process 1
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","2","p","h","triton_tem_fused_flex_attention_0","1","7","(256, 1, 1)","(16, 2, 8)","0","9.0","s","dram__bytes_write.sum","Mbyte","2.25"
"""


def test_long_format_units_separators_na_log_lines_and_sections():
    a, mark, b = read_ncu_csv(LONG)
    assert (a.kernel_name, a.grid, a.block) == ("_attn_fwd", (8, 4, 1), (128, 1, 1))
    assert a.metrics["dram__bytes_read.sum"] == pytest.approx(1536500.0)   # 1,536.50 Kbyte
    assert a.metrics["gpu__time_duration.sum"] == pytest.approx(12.5e-6)   # 12.5 usecond
    assert "l1tex__m_xbar2l1tex_read_bytes.sum" not in a.metrics           # n/a
    assert mark.is_marker and not a.is_marker
    assert (b.id, b.grid, b.metrics) == (0, (16, 2, 8), {"dram__bytes_write.sum": pytest.approx(2.25e6)})
    assert read_ncu_csv("==PROF== nothing profiled\n") == []
    assert to_base(3, "Gbyte/second") == 3e9 and to_base(400800, "ns") == 0.0004008 and to_base(7, "sector") == 7


def test_family_and_hints_from_real_kernel_names():
    fa2 = read_ncu_csv(H100_RAW / "ncu_raw_0.csv")[13].kernel_name  # case 7: causal, d = 128
    assert kernel_family(fa2) == "fa2"
    assert kernel_hints(fa2) == {"block_m": 128, "block_n": 64, "num_warps": 4, "causal": True}
    assert kernel_family("triton_tem_fused_flex_attention_0") == "flex"
    assert kernel_family("_attn_fwd") == "triton-tutorial" and kernel_family("_fwd_kernel") == "iosim-triton"
    assert kernel_family("void at::vectorized_elementwise_kernel<4, at::FillFunctor<int>>") is None
    assert kernel_hints("_attn_fwd") == {}


def test_parse_ncu_csv_on_raw_pages_matches_the_benchmark_tables():
    got = parse_ncu_csv((H100_RAW / "ncu_raw_0.csv").read_text())
    want = {int(r["case"]): r for r in _measured(H100_RAW / "measured.csv")}
    assert sorted(got) == list(range(1, 8))  # iosim_marker grid x = case id
    for case, acc in got.items():
        for m in ("l1tex__m_xbar2l1tex_read_bytes.sum", "dram__bytes_read.sum", "dram__bytes_write.sum"):
            assert acc[m] == int(float(want[case][m]))
        assert acc["gpu__time_duration.sum"] == float(want[case]["gpu__time_duration.sum"])  # ns, as before
    several = parse_ncu_csv((SET5 / "ncu_raw.csv").read_text())  # four CSVs, one per process, in one file
    assert sorted(several) == list(range(501, 517))
    m501 = next(r for r in _measured(SET5 / "measured.csv") if r["id"] == "501")
    assert several[501]["l1tex__m_xbar2l1tex_read_bytes.sum"] == int(float(m501["l1tex__m_xbar2l1tex_read_bytes.sum"]))


def test_parse_ncu_csv_without_markers_gives_one_case_per_launch():
    text = LONG.split("==PROF== Disconnected")[1]
    got = parse_ncu_csv(text)
    assert list(got) == [0] and got[0]["dram__bytes_write.sum"] == pytest.approx(2.25e6)


def _spec_for(cases: list[dict]) -> str:
    lines = ['kernel = "fa2"']
    for r in cases:
        lines += ["[[grid]]", f"batch = {r['batch']}", f"heads = {r['heads']}", f"seq_q = {r['seq']}",
                  f"head_dim = {r['head_dim']}", f"causal = {'true' if r['causal'] == '1' else 'false'}"]
    return "\n".join(lines) + "\n"


def test_compare_matches_every_fa2_launch_and_sm_read_is_exact(tmp_path):
    cases = [r for r in _measured(H100_RAW / "measured.csv") if int(r["case"]) <= 7]  # the cases of ncu_raw_0
    spec = tmp_path / "fa2.toml"
    spec.write_text(_spec_for(cases[::-1]))  # reversed: matching is by family, grid and name, not position
    out_csv = tmp_path / "cmp.csv"
    buf = io.StringIO()
    assert run(["compare", "--ncu", str(H100_RAW / "ncu_raw_0.csv"), "--spec", str(spec), "--no-l2",
                "--jobs", "1", "--out", str(out_csv)], buf) == 0
    text = buf.getvalue()
    assert "unmatched" not in text and "ambiguous" not in text
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 7 and {r["family"] for r in rows} == {"fa2"}
    by_case = {int(r["case"]): r for r in cases}
    for r in rows:
        case = by_case[(int(r["launch"]) + 1) // 2]  # launch 2k-1 is case k's FA2 kernel (after marker k)
        want = f"B{case['batch']} H{case['heads']} N{case['seq']} d{case['head_dim']}"
        assert r["problem"] == want + (" causal" if case["causal"] == "1" else "")
        assert int(r["sm_read_measured"]) == int(float(case["l1tex__m_xbar2l1tex_read_bytes.sum"]))
        assert abs(float(r["sm_read_err_pct"])) < 0.1
        assert r["dram_read_predicted"] == "" and r["dram_read_measured"] != ""  # --no-l2: no DRAM prediction
    assert "median |err| %" in text and "DRAM read" in text


def test_compare_lists_unmatched_and_ambiguous_launches(tmp_path):
    raw = str(H100_RAW / "ncu_raw_0.csv")
    buf = io.StringIO()
    # one problem by flags: case 2 (B1 H16 N4096 d128); case 7 has its grid but is causal (the name says so)
    assert run(["compare", "--ncu", raw, "--kernel", "fa2", "--seq-q", "4096", "--head-dim", "128", "--no-l2",
                "--jobs", "1"], buf) == 0
    text = buf.getvalue()
    assert "unmatched launches (6)" in text and "no fa2 problem given launches this grid" in text
    assert text.count(" fa2 ") >= 1 and "iosim_marker" not in text
    spec = tmp_path / "amb.toml"
    spec.write_text('kernel = "fa2"\nseq_q = 4096\nhead_dim = 128\nseq_kv = [4096, 8192]\n')  # same grid, same name
    buf = io.StringIO()
    assert run(["compare", "--ncu", raw, "--spec", str(spec), "--no-l2", "--jobs", "1"], buf) == 0
    assert "ambiguous: problems #0, #1 fit" in buf.getvalue()


def test_compare_shows_dash_for_metrics_the_csv_lacks(tmp_path):
    name = read_ncu_csv(H100_RAW / "ncu_raw_0.csv")[3].kernel_name  # case 2: d = 128, non-causal
    hdr = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
           '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')
    row = f'"0","1","p","h","{name}","1","7","(128, 1, 1)","(32, 1, 16)","0","9.0","s",' \
          '"l1tex__m_xbar2l1tex_read_bytes.sum","byte","1,090,530,176"'
    f = tmp_path / "one.csv"
    f.write_text(hdr + "\n" + row + "\n")
    buf = io.StringIO()
    assert run(["compare", "--ncu", str(f), "--seq-q", "4096", "--no-l2", "--jobs", "1"], buf) == 0
    line = next(ln for ln in buf.getvalue().splitlines() if ln.lstrip().startswith("0 "))
    cells = re.split(r"\s{2,}", line.strip())
    assert cells[:4] == ["0", "fa2", "(32, 1, 16)", "B1 H16 N4096 d128"] and cells[4] == "1.091 GB"
    assert cells[7:13] == ["-"] * 6  # DRAM read/write: not in the CSV, not predicted with --no-l2
    assert cells[13] == "-" and cells[14].endswith(" ms") and cells[15] == "-"  # time: predicted only


def test_compare_bad_input_one_line(tmp_path, capsys):
    assert main(["compare", "--ncu", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error: ") and err.count("\n") == 1 and "missing.csv" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("==PROF== nothing\n")
    assert main(["compare", "--ncu", str(empty)]) == 2
    assert "no kernel launches" in capsys.readouterr().err


def test_launch_grid_folds_like_the_real_launches():
    hw = load_hardware("h100")
    p = Problem(2, 4, 4, 512, 512, 64)
    tut = predict(hw, p, KernelConfig(), kernel="triton-tutorial", l2=False).schedule.kernels[0]
    assert launch_grid(tut, "triton-tutorial") == (512 // 128, 2 * 4, 1)  # (ceil(N/BLOCK_M), Z*H, 1)
    # PyTorch's mha_fwd splits this small launch (flash_api.cpp num_splits_heuristic, worked by hand): d=64 → split
    # tiles 64×256, B·H·m_blocks = 2·4·8 = 64 < 0.8·2·132; splits ≤ min(128, 264, 2 n-blocks): eff(1) = 64/264,
    # eff(2) = 128/264 → 2 splits. Split kernel grid (m blocks, splits, B·H) (flash_fwd_launch_template.h).
    fa2 = predict(hw, p, KernelConfig(), kernel="fa2", l2=False).schedule.kernels[0]
    assert launch_grid(fa2, "fa2") == (512 // 64, 2, 2 * 4)
    big = Problem(2, 16, 16, 4096, 4096, 64)  # B·H·m_blocks = 2·16·64 ≥ 0.8·264: one split, the plain forward
    fa2 = predict(hw, big, KernelConfig(), kernel="fa2", l2=False).schedule.kernels[0]
    assert launch_grid(fa2, "fa2") == (4096 // 128, 2, 16)  # FA2 d=64: BLOCK_M 128; grid (m blocks, B, H)
