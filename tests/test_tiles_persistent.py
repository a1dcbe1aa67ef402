"""Issue 21: ``iosim tiles`` / ``iosim hints`` for the persistent presets fa3, cudnn, fa4 (tiles) and lean (workers ×
block_n). Expected candidate sets are worked here from the kernels' rules: fa3 one consumer warpgroup per 64 rows and
Q + 2 stages × (K + V) in shared memory; fa4 q_stage · (block_n + d) ≤ 512 tensor-memory columns; lean's stream-K
split capped at the total KV tiles and lean_api.cc's grid (2·SMs, or ⌈total/2⌉ / ⌈32·total/n⌉ when total ≤ 4·SMs)."""

from __future__ import annotations

import io
import json
import math
import warnings

import pytest

from iosim.cli import main, run
from iosim.hints import persistent_entries
from iosim.hwprofile import load_hardware
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem
from iosim.tiles import choose_persistent, sm_share_time_s

H100, B200 = load_hardware("h100"), load_hardware("b200")
BN = range(64, 257, 16)  # block_n: multiples of 16 (PV MMA K = 16), 64..256


def _predicted(hw, p, kernel, cfg=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = predict(hw, p, cfg or KernelConfig(), kernel=kernel, l2=False)
    return sum(sm_share_time_s(k, hw) for k in pred.time.kernels), pred


def test_fa3_candidates_are_the_warpgroup_tiles_that_fit_shared_memory():
    p = Problem(1, 4, 4, 2048, 2048, 128, "bf16", True)
    ch = choose_persistent(H100, p, "fa3")
    smem = lambda m, n: (m * 128 + 2 * 2 * n * 128) * 2  # Q + kStages 2 × (K + V), bf16
    grid = {(m, n) for m in (64, 128, 192, 256) for n in BN}  # block_m: 1..4 consumer warpgroups of 64 rows
    want = {(m, n) for m, n in grid if smem(m, n) <= H100.smem_per_block_bytes}
    assert {(c.block_m, c.block_n) for c in ch.ranked} == want
    assert {(c.block_m, c.block_n) for c in ch.illegal} == grid - want
    assert (64, 256) not in want and (256, 160) in want and (256, 176) not in want  # by hand: 278,528 / 230,400 / 246,784 B
    assert all("shared memory" in c.reason for c in ch.illegal)
    assert all(a.time_s <= b.time_s for a, b in zip(ch.ranked, ch.ranked[1:]))
    # workers = 132 SMs, causal → LPT + swizzle, causal → no cluster (models/fa3.py's rules, not knobs)
    assert {(c.workers, c.cluster, c.order) for c in ch.ranked} == {(132, 1, "LPT+swizzle (dynamic)")}
    # the preset's own tiles (tile_size_fwd_sm90, d = 128 causal: 128×128), predicted as predict(kernel="fa3") does
    d = ch.default
    assert (d.block_m, d.block_n) == (128, 128) and d.reason.endswith("(fa3's own launch)")
    t, _ = _predicted(H100, p, "fa3")
    assert math.isclose(d.time_s, t, rel_tol=1e-12)
    same = next(c for c in ch.ranked if (c.block_m, c.block_n) == (128, 128))
    assert math.isclose(same.time_s, d.time_s, rel_tol=1e-12)
    assert ch.best.reason == "fastest" and all(c.reason.split("×")[0] for c in ch.ranked[1:])


def test_fa3_cluster_and_static_order_when_not_causal():
    p = Problem(1, 4, 4, 2048, 2048, 128, "bf16", False)
    ch = choose_persistent(H100, p, "fa3")
    # cluster 2 when d ≥ 128, not causal and ⌈2048/block_m⌉ even: 64, 128, 256 yes; 192 (11 blocks) no
    for c in ch.ranked:
        assert c.cluster == (2 if math.ceil(2048 / c.block_m) % 2 == 0 else 1), c.key
        assert c.order == "static round-robin" and c.workers == 132
    assert (ch.default.block_m, ch.default.block_n) == (128, 176)


def test_fa4_block_n_limited_by_tensor_memory_and_refused_off_blackwell():
    p = Problem(1, 16, 16, 4096, 4096, 128, "bf16", False)  # 8 · 16 = 128 tiles of 512 rows
    ch = choose_persistent(B200, p, "fa4")
    # q_stage 2 (Nq > 128): 2 · (n + 128) ≤ 512 → n ≤ 128
    assert sorted(c.block_n for c in ch.ranked) == [n for n in BN if 2 * (n + 128) <= 512] == [64, 80, 96, 112, 128]
    assert all("tensor-memory columns" in c.reason for c in ch.illegal)
    # 2-CTA pair (not causal, d = 128, Nq > 256): block_m 2 · 2 · 128, min(148 / 2, 128) pair workers, cluster 2
    assert {(c.block_m, c.workers, c.cluster) for c in ch.ranked} == {(512, 74, 2)}
    assert (ch.default.block_n, ch.default.workers) == (128, 74)
    with pytest.raises(Exception, match="b200"):
        choose_persistent(H100, p, "fa4")


def test_lean_workers_and_block_n_with_its_own_grid():
    p = Problem(1, 32, 8, 1, 4096, 128, "bf16")  # GQA-packed: 8 output tiles of the 4 query heads of a KV head
    ch = choose_persistent(H100, p, "lean")

    def own(total, n):  # lean_api.cc get_num_splits_and_buffer_sizes, 132 SMs
        g = 2 * 132 if total > 4 * 132 else min((total + 1) // 2, (32 * total + n - 1) // n)
        return max(1, min(g, total))
    want_legal, want_illegal = set(), set()
    for bn in (64, 128, 256):
        n = math.ceil(4096 / bn)
        total = 8 * n
        for w in {66, 132, 264, 396, 528, own(total, n)}:  # round(f · 132), f = 0.5, 1, 2, 3, 4, and the kernel's own
            (want_legal if w <= total else want_illegal).add((bn, w))
    assert {(c.block_n, c.workers) for c in ch.ranked} == want_legal
    assert {(c.block_n, c.workers_asked) for c in ch.illegal} == want_illegal
    assert own(256, 32) == 128 and (128, 128) in want_legal and (256, 264) in want_illegal  # by hand
    d = ch.default  # kBlockN 128 for d = 128; grid own(256, 32) = 128
    assert (d.block_m, d.block_n, d.workers, d.order) == (64, 128, 128, "stream-K")
    t, _ = _predicted(H100, p, "lean")
    assert math.isclose(d.time_s, t, rel_tol=1e-12)


def test_cli_tiles_names_workers_cluster_order_and_reasons():
    args = ["tiles", "--hardware", "h100", "--kernel", "fa3", "--heads", "4", "--seq-q", "2048", "--head-dim", "128",
            "--top", "3"]
    out = io.StringIO()
    assert run(args, out) == 0
    text = out.getvalue()
    ch = choose_persistent(H100, Problem(1, 4, 4, 2048, 2048, 128, "bf16", False), "fa3")
    for word in ("workers", "cluster", "order", "static round-robin", "fastest", "(fa3's own launch)",
                 "fixed inside models/fa3.py", ch.ranked[1].reason, ch.ranked[2].reason, ch.default.reason):
        assert word in text, word
    d = json.loads(_out(args + ["--json"]))
    assert d["mode"] == "persistent" and len(d["candidates"]) == 3 and d["default"]["block_n"] == 176
    assert d["candidates"][0]["workers"] == 132


def _out(argv) -> str:
    out = io.StringIO()
    assert run(argv, out) == 0
    return out.getvalue()


def test_hints_export_persistent_choice_with_reasons():
    e = json.loads(_out(["hints", "--hardware", "h100", "--kernel", "lean", "--heads", "32", "--kv-heads", "8",
                         "--seq-q", "1", "--seq-kv", "4096", "--top", "2"]))
    assert len(e) == 2 and {"BLOCK_M", "BLOCK_N", "NUM_WORKERS"} == set(e[0]["kwargs"])
    io_ = e[0]["iosim"]
    assert io_["mode"] == "persistent" and io_["why"] == "fastest" and io_["order"] == "stream-K"
    assert io_["default"]["workers"] == 128 and io_["default"]["why"].endswith("(lean's own launch)")
    assert e[1]["iosim"]["why"].split("×")[0] and "time" in e[1]["iosim"]["why"]
    f = persistent_entries(B200, Problem(1, 16, 16, 4096, 4096, 128, "bf16"), "fa4", top=1)[0]
    assert f["num_ctas"] == 2 and f["kwargs"] == {"BLOCK_M": 512, "BLOCK_N": 128, "NUM_WORKERS": 74}


@pytest.mark.parametrize("argv,names", [
    (["tiles", "--hardware", "h100", "--kernel", "fa4", "--seq-q", "1024"], ("fa4", "b200")),
    (["hints", "--hardware", "a100", "--kernel", "fa3", "--seq-q", "1024"], ("fa3", "h100 or h200")),
    (["tiles", "--hardware", "v100", "--kernel", "lean", "--seq-q", "1"], ("lean", "sm70")),
    (["tiles", "--kernel", "lean", "--decode", "on", "--seq-q", "1"], ("--decode on", "lean")),
    (["tiles", "--kernel", "cudnn", "--path", "mma.sync"], ("--path", "cudnn")),
    (["tiles", "--kernel", "fa3", "--pass", "bwd"], ("fa3", "no backward")),
])
def test_bad_combinations_are_one_line_errors(capsys, argv, names):
    rc = main(argv)
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("iosim: error: ") and "Traceback" not in err
    for n in names:
        assert n in lines[0], (n, lines[0])
