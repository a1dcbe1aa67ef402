"""The L2-bound rule of iosim.validation_rule on hand-worked launches (expected working sets derived here)."""

import csv
import json
from pathlib import Path

import pytest

from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.problem import KernelConfig, Problem
from iosim.validation_rule import kv_working_set, launch_working_set

MIB = 1 << 20
H100_HALF_L2 = 50 * MIB // 2  # 50 MiB nominal L2 (torch L2_cache_size on the validation H100), each side half
H200_HALF_L2 = 60 * MIB // 2  # 60 MiB on the validation H200


def test_fa2_h100_16k_three_heads_fit_half_l2():
    # 2 CTAs/SM x 132 SMs = 264 resident; N=16384, block_m=128 -> 128 blocks per head -> ceil(264/128) = 3 heads
    # (B x H = 16 allows 3); MHA: 3 KV heads; ws = 3 x 2 x 16384 x 128 x 2 B = 24 MiB <= 25 MiB
    ws = kv_working_set(Problem(1, 16, 16, 16384, 16384, 128, "bf16", True), 128, 264, 50 * MIB)
    assert (ws.blocks_per_head, ws.q_heads_in_flight, ws.kv_heads_in_flight) == (128, 3, 3)
    assert ws.ws_bytes == 24 * MIB and ws.half_l2_bytes == H100_HALF_L2 and not ws.l2_bound


def test_fa2_32k_two_heads_exceed_half_l2_on_both_gpus():
    # 256 blocks per head -> ceil(264/256) = 2 heads; ws = 2 x 2 x 32768 x 128 x 2 B = 32 MiB > 25 MiB and > 30 MiB
    p = Problem(2, 16, 16, 32768, 32768, 128)
    for l2 in (50 * MIB, 60 * MIB):
        ws = kv_working_set(p, 128, 264, l2)
        assert ws.q_heads_in_flight == 2 and ws.ws_bytes == 32 * MIB and ws.l2_bound


def test_gqa_heads_of_one_group_share_their_kv_head():
    # H=32, H_kv=4 (8 query heads per KV head); N=8192 -> 64 blocks; ceil(264/64) = 5 query heads -> ceil(5/8) = 1 KV
    # head; ws = 1 x 2 x 8192 x 128 x 2 B = 4 MiB
    ws = kv_working_set(Problem(1, 32, 4, 8192, 8192, 128), 128, 264, 50 * MIB)
    assert (ws.q_heads_in_flight, ws.kv_heads_in_flight, ws.ws_bytes) == (5, 1, 4 * MIB)


def test_batch_times_heads_caps_the_heads_in_flight():
    # N=4096 -> 32 blocks; ceil(264/32) = 9 but only B x H = 2 heads exist; ws = 2 x 2 x 4096 x 64 x 2 B = 2 MiB
    ws = kv_working_set(Problem(1, 2, 2, 4096, 4096, 64), 128, 264, 60 * MIB)
    assert ws.q_heads_in_flight == 2 and ws.ws_bytes == 2 * MIB and ws.half_l2_bytes == H200_HALF_L2


def test_launch_working_set_reads_the_fa2_launch():
    # FA2 (SDPA flash) launches 128 threads at 255 registers: 65536 // (128 x 256) = 2 CTAs per SM on the H100
    ws = launch_working_set(load_hardware("h100"), Problem(1, 16, 16, 16384, 16384, 128, "bf16", True), kernel="fa2")
    assert (ws.resident_ctas, ws.blocks_per_head, ws.ws_bytes) == (264, 128, 24 * MIB)


@pytest.mark.parametrize("block_m,resident", [(0, 264), (128, 0)])
def test_rule_refuses_non_positive_launch_facts(block_m, resident):
    with pytest.raises(IosimError, match="positive integer"):
        kv_working_set(Problem(1, 2, 2, 4096, 4096, 64), block_m, resident, 50 * MIB)


def test_rule_needs_block_m_without_a_preset():
    with pytest.raises(IosimError, match="block_m"):
        launch_working_set(load_hardware("h100"), Problem(1, 2, 2, 4096, 4096, 64), config=KernelConfig())


SUMMARY = Path(__file__).resolve().parent.parent / "reports" / "validation" / "summary.json"
DRAM_CSVS = {"H200 set 5": "h200/l2_validation_set5/compare_l2.csv",
             "H200 set 4": "h200/l2_validation_set4/compare_l2.csv",
             "H100 validate run": "h100/speed_validate_l2.csv",
             "H100 set 1": "h100/l2_validation_set1/compare_l2.csv",
             "H100 set 2": "h100/l2_validation_set2/compare_l2.csv",
             "H200 sets 1+2": "h200/l2_validation/compare_l2.csv",
             "H200 set 3": "h200/l2_validation_set3/compare_l2.csv",
             "H100 session-1 FA2": "h100/sdpa_flash_fa2.csv",
             "H100 set 6": "h100/l2_validation_set6/compare_l2.csv"}


def test_summary_counts_every_committed_run_once():
    data = json.loads(SUMMARY.read_text())
    total = 0
    for name, rel in DRAM_CSVS.items():
        with open(SUMMARY.parent / rel, newline="") as f:
            n = sum(1 for _ in csv.DictReader(f))
        c = data["counts"][name]
        assert c["runs"] == n and c["l2_bound"] + c["rest"] == n, name
        total += n
    assert total == data["total_runs"] == len(data["dram_runs"]) == 190
    assert set(data["counts"]) == set(DRAM_CSVS)


def test_summary_classifies_hand_worked_runs():
    runs = {(r["set"], r["run"]): r for r in json.loads(SUMMARY.read_text())["dram_runs"]}
    # H100 set 1 run 8: FA2 B1 H8 N131072 d128: 264 resident, 1024 blocks per head -> 1 head; 2 x 131072 x 128 x 2 B
    # = 64 MiB > 25 MiB
    r = runs[("H100 set 1", "8")]
    assert r["ws_bytes"] == 64 * MIB and r["half_l2_bytes"] == H100_HALF_L2 and r["l2_bound"]
    # session-1 case 29: FA2 B1 H48 N8192 d128 causal: 64 blocks -> ceil(264/64) = 5 heads; 5 x 2 x 8192 x 128 x 2 B
    # = 20 MiB <= 25 MiB, although it measured 1.65 x Q+K+V (the old split called it L2-bound)
    r = runs[("H100 session-1 FA2", "29")]
    assert r["ws_bytes"] == 20 * MIB and not r["l2_bound"] and r["old_l2_bound"]
