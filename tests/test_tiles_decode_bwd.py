"""Decode (FA2 split-KV: num_splits × block_n) and backward (flash2_bwd tiles) choosers: candidates, FA2's own
choice beside, reasons, CLI and hints. Expected values are worked here from flash_api.cpp / flash_bwd_launch_template.h."""

from __future__ import annotations

import io
import json
import math

import pytest

from iosim.cli import main, run
from iosim.hints import backward_entries, decode_entries
from iosim.hwprofile import load_hardware
from iosim.problem import Problem
from iosim.tiles import bwd_warp_rule, choose_bwd, choose_decode

HW = load_hardware("h100")  # 132 SMs: FA2's heuristic sees 2·132 = 264 slots
DEC = Problem(1, 8, 2, 1, 2048, 128, "bf16")  # GQA 4 query heads per KV head, one token: PyTorch packs it


def eligible(n: int) -> list[int]:
    """flash_api.cpp num_splits_heuristic: s ≤ min(128, 2·SMs, n), s = 1 or ⌈n/s⌉ ≠ ⌈n/(s−1)⌉."""
    return [s for s in range(1, min(128, 264, n) + 1) if s == 1 or math.ceil(n / s) != math.ceil(n / (s - 1))]


def test_decode_candidates_are_exactly_the_eligible_split_counts():
    ch = choose_decode(HW, DEC)
    got = {(c.num_splits, c.block_n) for c in ch.ranked + ch.illegal}
    want = {(s, bn) for bn in (64, 128, 256) for s in eligible(-(-2048 // bn))}
    assert got == want
    assert eligible(16) == [1, 2, 3, 4, 6, 8, 16]  # n = 2048/128 blocks, by hand
    assert ch.pruned == {64: 128 - len(eligible(32)), 128: 128 - 7, 256: 128 - len(eligible(8))}
    assert all(a.time_s <= b.time_s for a, b in zip(ch.ranked, ch.ranked[1:]))


def test_fa2_heuristic_choice_worked_by_hand():
    # packed: rows G = 4, heads H_k = 2, one 64-row block → B·H·m = 2 CTAs < 0.8·264; kBlockN 128 (d = 128), n = 16.
    # efficiency w/⌈w⌉, w = 2·s/264 < 1: grows with s, best at s = 16 (32/264); 85% of it = 0.103: s = 8 gives 0.061,
    # so the smallest eligible count reaching it is 16
    f = choose_decode(HW, DEC).fa2
    assert (f.num_splits, f.block_n) == (16, 128)
    assert "B·H·m = 2 CTAs" in f.reason and "16 splits at 12%" in f.reason and "GQA-packed" in f.reason
    # a launch that fills the GPU: B·H = 256 ≥ 211.2 → no split, FA2's plain kernel
    full = choose_decode(HW, Problem(8, 32, 32, 1, 1024, 128, "bf16"), block_n=(128,)).fa2
    assert full.num_splits == 1 and "no split" in full.reason


def test_decode_reasons_carry_waves_combine_partial_and_kv_bytes():
    ch = choose_decode(HW, DEC, block_n=(128,))
    c = next(c for c in ch.ranked if c.num_splits == 8)
    # partial O: S·B·H·Nq·d fp32 + LSE S·B·H·Nq fp32; K/V read once per KV head (packed): 2·B·H_k·N·d·2 B
    assert c.partial_bytes == 8 * 1 * 8 * 1 * (128 + 1) * 4
    assert c.kv_bytes == 2 * 1 * 2 * 2048 * 128 * 2
    assert c.wave_efficiency == pytest.approx((2 * 8 / 264) / 1)
    assert c.combine_s > 0 and next(x for x in ch.ranked if x.num_splits == 1).combine_s == 0
    assert ch.ranked[0].reason.startswith("fastest: waves")
    assert all("× time" in x.reason for x in ch.ranked[1:])


def test_backward_candidates_respect_the_shared_memory_limit():
    p, d, e = Problem(1, 4, 4, 1024, 1024, 128, "bf16"), 128, 2
    ch = choose_bwd(HW, p)

    def smem(bm, bn, st):  # Q, dO tiles × stages + K, V tiles (bf16) + LSE, D rows (fp32)
        return st * 2 * bm * d * e + 2 * bn * d * e + 2 * bm * 4
    limit = 232448  # H100 opt-in shared memory per block (227 KB)
    assert HW.smem_per_block_bytes == limit
    assert ch.ranked and all(smem(c.block_m, c.block_n, c.num_stages) <= limit for c in ch.ranked)
    over = [c for c in ch.illegal if "shared memory" in c.reason]
    assert over and all(smem(c.block_m, c.block_n, c.num_stages) > limit for c in over)
    # every grid point that fits, lays out its warps and is no larger than the problem is offered
    fits = {(bm, bn, w, st) for bm in (16, 32, 64, 128, 256) for bn in (16, 32, 64, 128, 256) for w in (4, 8)
            for st in (1, 2) if smem(bm, bn, st) <= limit and not bwd_warp_rule(bm, bn, w)}
    assert {c.key for c in ch.ranked} == fits
    # FA2's own (flash_bwd_launch_template.h, hdim 128, ≥ 144 KB per block): 64×128, 8 warps, Q double-buffered
    assert ch.fa2.key == (64, 128, 8, 2) and "fa2's own backward tiles" in ch.fa2.reason
    assert "4 CTAs on" in ch.seq_parallel and f"{(1024 // ch.best.block_n) * 4:,} CTAs" in ch.seq_parallel


def test_bwd_warp_layout_rule():
    assert not bwd_warp_rule(64, 128, 8)  # 2 warps along M × 4 along N (AtomLayoutMSdP = 2)
    assert not bwd_warp_rule(128, 128, 8)
    assert bwd_warp_rule(16, 16, 8)  # 8 warps × 16×16 atoms need 8 atoms of the 16×16 tile


def test_cli_tiles_decode_and_bwd_say_why(capsys):
    out = io.StringIO()
    assert run(["tiles", "--heads", "8", "--kv-heads", "2", "--seq-q", "1", "--seq-kv", "2048", "--top", "3"], out) == 0
    text = out.getvalue()
    for word in ("split-KV decode", "waves", "combine", "partial O", "pruned", "FA2", "heuristic", "16 splits"):
        assert word in text, word
    out = io.StringIO()
    assert run(["tiles", "--pass", "bwd", "--heads", "4", "--seq-q", "1024", "--top", "2"], out) == 0
    text = out.getvalue()
    for word in ("backward", "fastest", "FA2", "fa2's own backward tiles", "sequence-parallel",
                 "flash_bwd_dq_dk_dv_loop_kernel", "CTA-count comparison only"):
        assert word in text, word
    d = json.loads(_out(["tiles", "--pass", "bwd", "--heads", "4", "--seq-q", "1024", "--json", "--top", "2"]))
    assert d["mode"] == "bwd" and len(d["candidates"]) == 2 and d["fa2"]["block_n"] == 128


def _out(argv) -> str:
    out = io.StringIO()
    assert run(argv, out) == 0
    return out.getvalue()


def test_hints_export_decode_and_backward_with_reasons():
    dec = json.loads(_out(["hints", "--heads", "8", "--kv-heads", "2", "--seq-q", "1", "--seq-kv", "2048", "--top", "2"]))
    assert len(dec) == 2 and {"NUM_SPLITS", "BLOCK_N"} <= set(dec[0]["kwargs"])
    assert dec[0]["iosim"]["fa2"]["num_splits"] == 16 and "waves" in dec[0]["iosim"]["why"]
    bwd = backward_entries(HW, Problem(1, 4, 4, 1024, 1024, 128, "bf16"), top=1)
    assert bwd[0]["iosim"]["pass"] == "bwd" and bwd[0]["iosim"]["why"] == "fastest"
    assert bwd[0]["iosim"]["fa2"]["BLOCK_N"] == 128 and "sequence-parallel" in bwd[0]["iosim"]["sequence_parallel"]
    assert decode_entries(HW, DEC, top=1)[0]["kwargs"]["NUM_SPLITS"] == dec[0]["kwargs"]["NUM_SPLITS"]


@pytest.mark.parametrize("argv,names", [
    (["tiles", "--pass", "bwd", "--kernel", "flex"], ("flex", "no backward", "fa2")),
    (["hints", "--pass", "bwd", "--kernel", "triton-tutorial"], ("triton-tutorial", "no backward")),
    (["tiles", "--pass", "bwd", "--algorithm", "splitkv"], ("splitkv has no backward", "flash2")),
    (["tiles", "--pass", "bwd", "--decode", "on"], ("--decode on", "--pass bwd")),
    (["tiles", "--algorithm", "splitkv", "--decode", "off"], ("splitkv", "--decode off")),
])
def test_bad_combinations_are_one_line_errors(capsys, argv, names):
    rc = main(argv)
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("iosim: error: ") and "Traceback" not in err
    for n in names:
        assert n in lines[0], (n, lines[0])
