"""The CLI contract (`iosim predict --json` keys), readable output, error exit codes, packaging layout."""

import importlib.metadata
import io
import json
import re
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


def table_blocks(text: str) -> list[list[str]]:
    """Runs of consecutive lines that have a column gap (two spaces between words): the text tables."""
    blocks, cur = [], []
    for line in text.splitlines() + [""]:
        if line.strip() and "  " in line.strip() and not line.lstrip().startswith("-"):
            cur.append(line)
        else:
            if len(cur) >= 2:
                blocks.append(cur)
            cur = []
    return blocks


def assert_aligned(block: list[str]) -> None:
    """Every column starts at the same offset in every row: gutters (2+ character positions blank in every line)
    split the block into exactly as many columns as the header names (header cells are separated by 2+ spaces)."""
    width = max(len(line) for line in block)
    padded = [line.ljust(width) + "  " for line in block]
    blank = "".join("g" if all(line[i] == " " for line in padded) else "x" for i in range(width + 2))
    columns = re.findall(r"x+(?:g?x+)*", blank)  # a single blank position inside a column is not a gutter
    header_cells = re.split(r" {2,}", block[0].strip())
    assert len(columns) == len(header_cells), (columns, header_cells, block)


def test_predict_text_shows_tiles_occupancy_time_bound_and_notes():
    from iosim.cost import BOUND_EXPLANATIONS
    text = run_cli(ISSUE_ARGS + ["--causal"])
    d = json.loads(run_cli(ISSUE_ARGS + ["--causal", "--json"]))
    # problem line, tiles, warps, stages, grid and KV order
    assert "B=2 H=16 Hkv=16 Nq=16384 Nkv=16384 d=64 bf16 causal" in text
    assert "block_m × block_n = 128 × 128, 4 warps, 1 stage," in text
    assert "grid order m,b,h" in text and "KV order ascending" in text
    # 16384 / 128 query blocks × B·H = 2·16 heads = 4096 CTAs on the H100's 132 SMs
    assert "4,096 on 132 SMs" in text
    row = next(line for line in text.splitlines() if line.startswith("flash2_fwd") and "SMs" in line)
    per_sm = int(row.split("SMs")[1].split()[0])
    concurrent = int(row.split(")")[1].split()[0].replace(",", ""))
    waves = float(row.split(")")[1].split()[1])
    assert concurrent == per_sm * 132 and waves == pytest.approx(4096 / concurrent, rel=1e-2)
    # time with the bound named and explained; FLOP/s as a fraction of the bf16 dense peak (989.4 TFLOP/s)
    assert f"bound: {d['bound']} — {BOUND_EXPLANATIONS[d['bound']]}" in text
    pct = 100 * d["matmul_flops"] / d["time_s"] / 989.4e12
    assert f"= {pct:.1f}% of the h100 bf16 tensor peak 989.4 TFLOP/s" in text
    assert f"time {d['time_s'] * 1e3:.4g} ms" in text
    # the L2 line says whether the result is exact, and every note (schedule, L2 and per-kernel time notes) appears
    l2 = d["l2"]
    assert "L2: hit rate" in text and f"L2 simulated on 1 in {l2['sampling_stride']} sets: " in text
    assert ("exact (every access" in text) == l2["exact"] and ("set-sampling estimate" in text) != l2["exact"]
    for note in d["notes"] + d["time"]["kernels"][0]["notes"]:
        assert note in text
    tables = table_blocks(text)
    assert len(tables) == 2
    for block in tables:
        assert_aligned(block)


def test_predict_text_multi_kernel_and_no_l2():
    text = run_cli(["predict", "--algorithm", "standard", "--seq-q", "1000", "--head-dim", "64", "--no-l2"])
    for needle in ("standard_qk", "standard_softmax", "standard_pv", "reads by tensor", "S ",
                   "L2: not modeled (--no-l2)", "DRAM bytes assumed compulsory"):
        assert needle in text
    for block in table_blocks(text):
        assert_aligned(block)
    # a preset names itself and its choices (FA2 in SDPA walks KV descending)
    text = run_cli(["predict", "--kernel", "fa2", "--seq-q", "2048", "--causal"])
    assert "kernel preset fa2 (algorithm flash2)" in text and "KV order descending" in text


def test_hardware_list_and_show_and_algorithms_are_aligned_tables():
    listing = run_cli(["hardware", "list"])
    for name in ("v100", "a100", "h100", "h200", "b200", "ascend910b"):
        assert name in listing
    show = run_cli(["hardware", "show", "h100"])
    assert "sm_count" in show and "132" in show and "datasheet" in show
    algs = run_cli(["algorithms"])
    assert "flash2" in algs and "square_tiling" in algs
    for text in (listing, show, algs):
        (block,) = table_blocks(text)
        assert_aligned(block)
    assert len(table_blocks(listing)[0]) == 7  # header + 6 profiles


def test_format_table_widths_from_content():
    from iosim.textfmt import format_table
    assert format_table(("a", "bb"), [("xyz", 1), ("q", 22)], "lr") == "a    bb\nxyz   1\nq    22\n"
    with pytest.raises(ValueError):
        format_table(("a", "b"), [("x",)])


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
    from iosim.cost import BOUND_EXPLANATIONS, estimate
    from iosim.hwprofile import load_hardware
    from iosim.pipeline import predict
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
    assert d["bound"] in BOUND_EXPLANATIONS  # a resource, "launch" or "parallelism"
    assert d["kernels"][0]["time_s"] == d["time_s"]


def test_commands_load_lazily_and_help_lists_every_command():
    """`iosim predict` imports no command module; `iosim --help` lists every command with its module's own help."""
    import argparse

    from iosim.cli import COMMANDS, create_parser
    code = ("import sys, io; from iosim.cli import run; run(['predict', '--no-l2', '--seq-q', '256'], io.StringIO()); "
            "print(sorted(m for m in sys.modules if m.startswith('iosim.cli_') or m in "
            "('iosim.calibrate', 'iosim.report', 'iosim.symbolic', 'iosim.validate')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    sub = next(a for a in create_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert {name: h for name, _, h in COMMANDS} == {n: helps[n] for n, _, _ in COMMANDS}
    lazy = next(a for a in create_parser(load=[])._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest: c.help for c in lazy._choices_actions} == helps
    out = subprocess.run([sys.executable, "-m", "iosim", "--help"], capture_output=True, text=True, check=True).stdout
    for name, _, _ in COMMANDS:
        assert re.search(rf"^    {name} ", out, re.M), name
