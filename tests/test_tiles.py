"""Tile chooser: only legal configurations are offered, ranked by predicted time, each with a reason."""

from __future__ import annotations

import io
import json

import pytest

from iosim.cli import run
from iosim.counts import sram_bytes
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem
from iosim.tiles import candidates, choose, shape_rule

P = Problem(1, 16, 16, 8192, 8192, 128, "bf16")


@pytest.mark.parametrize("hw_name", ["h100", "a100", "v100"])
def test_tiles_exceeding_smem_are_never_offered(hw_name):
    hw = load_hardware(hw_name)
    p = P if hw_name != "v100" else Problem(1, 16, 16, 8192, 8192, 128, "fp16")
    ch = choose(hw, p)
    for c in ch.ranked:
        s = build_schedule("flash2", p, KernelConfig(c.block_m, c.block_n, c.num_warps, c.num_stages), None)
        assert sram_bytes(s.kernels[0], c.num_stages) <= hw.smem_per_block_bytes
        assert not any(k.spills for k in c.estimate.kernels)
    # the biggest tiles with many stages do not fit: 256×256 at d=128 needs 64 KiB Q + 4 × 128 KiB K/V
    assert any("shared memory" in c.reason for c in ch.illegal)
    assert all(c.time_s <= d.time_s for c, d in zip(ch.ranked, ch.ranked[1:]))


def test_instruction_shape_rules():
    assert shape_rule("wgmma", 64, 64, 2)  # a warpgroup is 4 warps
    assert shape_rule("wgmma", 64, 64, 8)  # 2 warpgroups × 64 rows do not divide 64
    assert not shape_rule("wgmma", 128, 64, 8)
    assert shape_rule("mma.sync", 32, 64, 4)  # 4 warps × 16 rows = 64 > 32
    assert not shape_rule("mma.sync", 64, 64, 4)
    assert shape_rule("mma.sync", 64, 24, 4)  # block_n not a multiple of 16


def test_each_loser_says_why():
    ch = choose(load_hardware("h100"), P, path="mma.sync")
    assert ch.ranked[0].reason == "fastest"
    for c in ch.ranked[1:]:
        assert "× time" in c.reason and "-bound" in c.reason
    # a small block_m re-reads K/V more: its reason names SM↔L2 bytes
    # (pipelined ones: a one-stage 32×256×2 at 1 CTA/SM has bigger reasons first — its 2 warps issue at half rate)
    small = [c for c in ch.ranked if c.block_m == 32 and c.num_stages >= 2]
    assert small and all("SM↔L2" in c.reason or "shared-memory" in c.reason for c in small)


def test_tiles_no_larger_than_the_problem():
    ch = choose(load_hardware("h100"), Problem(1, 4, 4, 100, 100, 64, "bf16"))
    assert all(c.block_m <= 128 and c.block_n <= 128 for c in ch.ranked)


def test_cli_tiles_text_and_json():
    out = io.StringIO()
    assert run(["tiles", "--hardware", "h100", "--algorithm", "flash2", "--seq-q", "4096", "--head-dim", "128",
                "--dtype", "bf16", "--causal", "--top", "3"], out) == 0
    text = out.getvalue()
    assert "legal configurations" in text and "fastest" in text
    out = io.StringIO()
    run(["tiles", "--seq-q", "4096", "--top", "4", "--json"], out)
    d = json.loads(out.getvalue())
    assert len(d["candidates"]) == 4 and d["candidates"][0]["reason"] == "fastest"
    assert d["legal_count"] >= 4 and d["illegal_count"] > 0
    with pytest.raises(IosimError, match="--top"):
        run(["tiles", "--top", "0"], io.StringIO())


def test_no_legal_configuration_is_a_clear_error():
    with pytest.raises(IosimError, match="no legal tile configuration"):
        choose(load_hardware("h100"), P, block_m=(512,), block_n=(512,), num_warps=(4,), num_stages=(4,))


def test_stage_ties_prefer_the_deeper_pipeline_that_keeps_occupancy():
    """2, 3 and 4 stages are predicted equal once loads are pipelined; the chooser takes the deepest (measured
    faster on the H100 at d=128) unless it costs a resident CTA per SM."""
    from iosim.tiles import choose
    hw = load_hardware("h100")
    ch = choose(hw, Problem(4, 16, 16, 8192, 8192, 128, "bf16"))
    by = {c.key: c for c in ch.ranked}
    for (bm, bn, w) in {(c.block_m, c.block_n, c.num_warps) for c in ch.ranked}:
        tied = [by[(bm, bn, w, s)] for s in (2, 3, 4) if (bm, bn, w, s) in by]
        tied = [c for c in tied if round(c.time_s, 12) == round(tied[0].time_s, 12)
                and c.totals()["ctas_per_sm"] == tied[0].totals()["ctas_per_sm"]]
        if len(tied) > 1:
            pos = [ch.ranked.index(c) for c in tied]
            assert pos == sorted(pos, reverse=True), (bm, bn, w, [c.num_stages for c in tied])


def test_parallel_candidates_equal_serial():
    """Worker processes (one block_m × block_n each) give the same candidates, in the grid's order."""
    import itertools

    from iosim.tiles import BLOCK_CHOICES, STAGE_CHOICES, WARP_CHOICES
    hw, p = load_hardware("h100"), Problem(1, 8, 8, 3000, 3000, 128, "bf16", True)
    serial, parallel = candidates(hw, p, jobs=1), candidates(hw, p, jobs=3)
    assert [c.key for c in serial] == list(itertools.product(BLOCK_CHOICES, BLOCK_CHOICES, WARP_CHOICES, STAGE_CHOICES))
    assert parallel == serial
    out1, out2 = io.StringIO(), io.StringIO()
    run(["tiles", "--seq-q", "3000", "--causal", "--jobs", "1", "--json"], out1)
    run(["tiles", "--seq-q", "3000", "--causal", "--jobs", "2", "--json"], out2)
    assert out1.getvalue() == out2.getvalue()
