"""Attention across GPUs (issue 25): transfer sizes against closed forms derived here, the causal balancings counted
by enumeration, ring attention's log-sum-exp merge against naive attention (NumPy), the ring's timing against its
closed form in the balanced case, the profiles' [interconnect] tables, and bad input as one-line IosimErrors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iosim import IosimError, Problem, load_hardware
from iosim.hwprofile import KINDS, builtin_names
from iosim.multigpu import (BALANCES, interconnect_of, predict_multigpu, predict_ring, predict_tiling_allreduce,
                            predict_ulysses, ring_plan, tiling_allreduce_plan, ulysses_plan)
from iosim.multigpu.cost import kernel_estimate, ring_dataflow
from iosim.multigpu.interconnect import Topology, alltoall_time_s, p2p_time_s
from iosim.multigpu.reference import call_attention, ring_attention

ELEM = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}  # bytes per element, written out here (not read from iosim)


def shapes(max_p=8, max_chunk=40):
    """(problem, devices) with N a multiple of 2P (every balancing splits it), ragged against any tile."""
    @st.composite
    def build(draw):
        P = draw(st.integers(1, max_p))
        chunk = draw(st.integers(1, max_chunk))
        g = draw(st.sampled_from([1, 2, 4]))
        hkv = draw(st.integers(1, 3))
        p = Problem(draw(st.integers(1, 3)), hkv * g, hkv, 2 * P * chunk, 2 * P * chunk,
                    draw(st.sampled_from([16, 64, 96, 128])), draw(st.sampled_from(sorted(ELEM))),
                    draw(st.booleans()))
        return p, P
    return build()


# --- transfer sizes ---------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(shapes(), st.sampled_from(BALANCES))
def test_ring_transfers_equal_the_closed_form(pd, balance):
    p, P = pd
    plan = ring_plan(p, P, balance)
    shard = p.seq_q // P
    per_message = 2 * p.batch * p.kv_heads * shard * p.head_dim * ELEM[p.dtype]  # K and V of one shard
    assert len(plan.transfers) == P * (P - 1)
    assert all(x.nbytes == per_message and x.dst == (x.src + 1) % P and x.level == "interconnect"
               for x in plan.transfers)
    for r in range(P):
        assert plan.bytes_sent(r) == plan.bytes_received(r) == (P - 1) * per_message
        assert sorted(x.step for x in plan.transfers if x.src == r) == list(range(P - 1))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16), st.integers(1, 64), st.integers(1, 3), st.sampled_from([64, 128]),
       st.sampled_from(sorted(ELEM)), st.integers(1, 4))
def test_ulysses_all_to_all_bytes_equal_the_closed_form(P, tokens, batch, d, dtype, g):
    hkv = P * np.random.default_rng(P + tokens).integers(1, 3)  # P divides H_kv
    p = Problem(batch, int(hkv) * g, int(hkv), P * tokens, P * tokens, d, dtype)
    plan = ulysses_plan(p, P)
    e = ELEM[dtype]
    shard = {"Q": batch * p.heads * tokens * d * e, "K": batch * p.kv_heads * tokens * d * e}
    shard["V"], shard["O"] = shard["K"], shard["Q"]
    for c in plan.collectives:  # each GPU keeps 1/P of its shard, sends (P-1)/P of it
        assert c.bytes_sent * P == (P - 1) * shard[c.tensor]
    assert plan.bytes_sent() * P == (P - 1) * sum(shard.values())
    assert (plan.local.heads, plan.local.kv_heads, plan.local.seq_q) == (p.heads // P, p.kv_heads // P, p.seq_q)


def test_ulysses_repeats_kv_heads_when_devices_exceed_them():
    """DeepSpeed repeats K/V to H heads when P > H_kv: K and V then travel like Q."""
    p = Problem(1, 32, 4, 8192, 8192, 128, "bf16")
    plan = ulysses_plan(p, 8)
    per_kv = 7 * 1 * (32 // 8) * (8192 // 8) * 128 * 2
    assert [c.bytes_sent for c in plan.collectives] == [per_kv] * 4
    assert plan.local.heads == plan.local.kv_heads == 4 and plan.notes


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 300), st.integers(1, 12), st.booleans(),
       st.sampled_from(["bf16", "fp32"]))
def test_tiling_allreduce_bytes_equal_the_closed_form(P, n, tiles, causal, dtype):
    p = Problem(2, 8, 8, n, n, 64, dtype, causal)
    tiles = min(tiles, n)
    plan = tiling_allreduce_plan(p, P, tiles)
    hidden, e = 8 * 64, ELEM[dtype]
    message = 2 * n * hidden * e  # B × N × hidden, the whole projection output
    assert sum(t.message_bytes for t in plan.tiles) == message
    assert plan.bytes_sent() * P == 2 * (P - 1) * message  # ring AllReduce: 2(P-1)/P of the message per GPU
    assert [t.row_start for t in plan.tiles][0] == 0 and plan.tiles[-1].row_stop == n
    assert all(a.row_stop == b.row_start for a, b in zip(plan.tiles, plan.tiles[1:]))
    for t in plan.tiles:  # causal tile: its last row sees every key up to itself
        assert t.attention.seq_kv == (t.row_stop if causal else n) and t.attention.heads == 8 // P


# --- balance --------------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 30))
def test_causal_work_per_gpu_by_enumeration(P, chunk):
    """Visible (query, key) pairs per GPU from the tokens it holds (query at position q sees q+1 keys), against the
    pairs its calls compute: equal; zigzag gives every GPU the same work, striped differs by n per rank step."""
    N = 2 * P * chunk
    p = Problem(1, 1, 1, N, N, 64, "bf16", True)
    for balance in BALANCES:
        plan = ring_plan(p, P, balance)
        work = [sum(c.visible_pairs() for c in plan.calls[r]) for r in range(P)]
        held = [int((plan.positions(r) + 1).sum()) for r in range(P)]
        assert work == held and sum(work) == N * (N + 1) // 2
        assert sorted(np.concatenate([plan.positions(r) for r in range(P)]).tolist()) == list(range(N))
        n = N // P
        if balance == "zigzag":
            assert len(set(work)) == 1
        elif balance == "striped":
            assert work == [n * (n - 1) * P // 2 + n * (r + 1) for r in range(P)]
        else:
            assert work == [n * n * r + n * (n + 1) // 2 for r in range(P)]


@pytest.mark.parametrize("P, N", [(2, 4096), (4, 6144), (3, 3000)])
def test_zigzag_flops_per_gpu_equal_within_one_tile(P, N):
    """The counted matmul FLOPs of each GPU's fa2 calls (whole visited tiles): zigzag's GPUs within one 128×128 tile's
    FLOPs of each other (exactly equal: the same call shapes); striped within P tiles; contiguous far apart."""
    p = Problem(1, 2, 2, N, N, 64, "bf16", True)
    hw = load_hardware("h100")
    tile = 4 * 128 * 128 * 64 * 2  # QK^T and PV over one 128×128 tile, 2 heads
    spread = {}
    for balance in BALANCES:
        plan = ring_plan(p, P, balance)
        f = [sum(kernel_estimate(hw, c.problem(p), "fa2", l2=False).matmul_flops for c in plan.calls[r]
                 if not c.empty) for r in range(P)]
        spread[balance] = max(f) - min(f)
    assert spread["zigzag"] <= tile and spread["zigzag"] == 0
    assert spread["striped"] <= P * tile < spread["contiguous"]


# --- the merge against naive attention --------------------------------------------------------------------------------

def naive(q, k, v, causal):
    g = q.shape[1] // k.shape[1]
    return call_attention(q, np.repeat(k, g, 1), np.repeat(v, g, 1), causal, 1 / np.sqrt(q.shape[-1]))[0]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.sampled_from(BALANCES), st.booleans(), st.sampled_from([1, 2]),
       st.integers(0, 2**31 - 1))
def test_ring_lse_merge_equals_naive_attention(P, chunk, balance, causal, g, seed):
    N = 2 * P * chunk
    p = Problem(2, 2 * g, 2, N, N, 8, "fp32", causal)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 2 * g, N, 8))
    k, v = rng.standard_normal((2, 2, N, 8)), rng.standard_normal((2, 2, N, 8))
    got = ring_attention(ring_plan(p, P, balance), q, k, v)
    np.testing.assert_allclose(got, naive(q, k, v, causal), rtol=1e-10, atol=1e-12)


# --- timing ---------------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.floats(1e-6, 1e-2), st.floats(0, 1e-2))
def test_balanced_ring_time_closed_form(P, c, x):
    """Equal calls c and transfers x: overlapped (P-1)·max(c, x) + c; not overlapped (P-1)·(c + x) + c."""
    cc = [[c] * P for _ in range(P)]
    total, ends = ring_dataflow(cc, [x] * (P - 1), True)
    assert total == pytest.approx((P - 1) * max(c, x) + c, rel=1e-12)
    assert ring_dataflow(cc, [x] * (P - 1), False)[0] == pytest.approx((P - 1) * (c + x) + c, rel=1e-12)
    assert ends == sorted(ends) and ends[-1] == total


def test_ring_prediction_parts():
    p = Problem(1, 8, 8, 16384, 16384, 128, "bf16", True)
    one = predict_ring("h100", p, 1, l2=False)
    k = kernel_estimate(load_hardware("h100"), p, "fa2", l2=False)
    assert one.time_s > k.time_s and one.bytes_sent_per_gpu == 0 and one.comm_share == 0
    for bal in BALANCES:
        r = predict_ring("h100", p, 4, bal, l2=False)
        assert r.time_s >= r.compute_only_s > 0 and 0 <= r.comm_share < 1
        assert r.bytes_sent_per_gpu == 3 * 2 * 8 * 4096 * 128 * 2
        assert sum(s.time_s for s in r.steps) == pytest.approx(r.time_s)
    z, c = predict_ring("h100", p, 4, "zigzag", l2=False), predict_ring("h100", p, 4, "contiguous", l2=False)
    assert z.time_s < c.time_s  # the balanced ring finishes first
    no = predict_ring("h100", p, 4, "zigzag", l2=False, overlap=False)
    assert no.time_s == pytest.approx(z.compute_only_s + 3 * z.steps[0].transfer_s, rel=1e-9)
    u = predict_ulysses("h100", p, 4, l2=False)
    assert u.time_s == pytest.approx(sum(s.time_s for s in u.steps)) and u.comm_share > 0
    tp1 = predict_tiling_allreduce("h100", p, 4, 1, l2=False)
    tp8 = predict_tiling_allreduce("h100", p, 4, 8, l2=False)
    assert tp1.time_s == pytest.approx(tp1.compute_only_s + tp1.transfer_busy_s)  # one tile: nothing overlaps
    assert tp8.exposed_comm_s < tp1.exposed_comm_s


def test_transfer_times_from_the_profile():
    ic = interconnect_of("h100")
    lat = ic.launch_latency_s + ic.step_latency_s
    assert p2p_time_s(ic, Topology(2, 8), 450_000_000) == pytest.approx(lat + 1e-3)
    # 16 GPUs: two nodes, the ring's slowest hop is the 50 GB/s NIC
    assert p2p_time_s(ic, Topology(16, 8), 50_000_000) == pytest.approx(
        ic.launch_latency_s + ic.internode_step_latency_s + 1e-3)
    # all-to-all over 8 GPUs on NVSwitch: 7 pieces through 450 GB/s
    assert alltoall_time_s(ic, Topology(8, 8), 45_000_000) == pytest.approx(lat + 7 * 1e-4)
    mesh = interconnect_of("ascend910b")  # full mesh: one peer per 56 GB/s link, all 7 at once
    assert alltoall_time_s(mesh, Topology(8, 8), 56_000_000) == pytest.approx(
        mesh.launch_latency_s + mesh.step_latency_s + 1e-3)


# --- profiles ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", builtin_names())
def test_every_profile_has_its_links_with_sources(name):
    ic = interconnect_of(name)
    assert ic.gpu_bandwidth_bytes_per_s == pytest.approx(ic.links_per_gpu * ic.link_bandwidth_bytes_per_s, rel=0.02)
    assert ic.peer_bandwidth_bytes_per_s <= ic.gpu_bandwidth_bytes_per_s
    assert ic.internode_bandwidth_bytes_per_s < ic.gpu_bandwidth_bytes_per_s
    for key, _, kind, src in ic.rows():
        assert kind in KINDS and len(src) >= 10, key


NVLINK_PER_DIRECTION = {"v100": (2, 6, 150e9), "a100": (3, 12, 300e9), "h100": (4, 18, 450e9),
                        "h200": (4, 18, 450e9), "b200": (5, 18, 900e9)}


@pytest.mark.parametrize("name", sorted(NVLINK_PER_DIRECTION))
def test_nvlink_generations(name):
    ic = interconnect_of(name)
    assert (ic.fabric_generation, ic.links_per_gpu, ic.gpu_bandwidth_bytes_per_s) == NVLINK_PER_DIRECTION[name]


def _h100_with(tmp_path: Path, old: str, new: str) -> Path:
    text = Path(load_hardware("h100").path).read_text()
    assert old in text
    f = tmp_path / "x.toml"
    f.write_text(text.replace(old, new, 1))
    return f


def test_interconnect_errors_name_the_key(tmp_path):
    f = _h100_with(tmp_path, "links_per_gpu = { value = 18", "links_per_gpu = { value = 17")
    with pytest.raises(IosimError, match=r"interconnect\.gpu_bandwidth_bytes_per_s.*links_per_gpu"):
        interconnect_of(load_hardware(f))
    f = _h100_with(tmp_path, "topology = { value = \"switch\"", "topology = { value = \"torus\"")
    with pytest.raises(IosimError, match=r"interconnect\.topology.*switch"):
        interconnect_of(load_hardware(f))
    f = _h100_with(tmp_path, "[interconnect]\n", "[interconnect]\nlinks = { value = 1, kind = \"assumed\", "
                   "source = \"a typo\" }\n")
    with pytest.raises(IosimError, match=r"interconnect\.links.*unknown key"):
        interconnect_of(load_hardware(f))
    text = Path(load_hardware("h100").path).read_text()
    f = tmp_path / "none.toml"
    f.write_text(re.sub(r"\n# Links between GPUs.*?\n\n", "\n\n", text, flags=re.S))
    with pytest.raises(IosimError, match=r"no \[interconnect\] table"):
        predict_ring(load_hardware(f), Problem(1, 1, 1, 256, 256, 64), 2)


# --- bad input --------------------------------------------------------------------------------------------------------

BAD = [
    (lambda: ring_plan(Problem(1, 4, 4, 1000, 1000, 64), 3, "contiguous"), "not divisible by devices = 3"),
    (lambda: ring_plan(Problem(1, 4, 4, 1004, 1004, 64, causal=True), 4, "zigzag"), "2·devices = 8"),
    (lambda: ring_plan(Problem(1, 4, 4, 1024, 512, 64), 2, "zigzag"), "seq_kv"),
    (lambda: ring_plan(Problem(1, 4, 4, 1024, 1024, 64), 2, "diagonal"), "balance"),
    (lambda: ring_plan(Problem(1, 4, 4, 1024, 1024, 64), 0, "zigzag"), "devices"),
    (lambda: ring_plan(Problem(1, 4, 4, 1024, 1024, 64), 2048, "zigzag"), "1024"),
    (lambda: ring_plan(Problem(1, 4, 4, 1024, 1024, 64), True, "zigzag"), "devices"),
    (lambda: ulysses_plan(Problem(1, 12, 12, 1024, 1024, 64), 8), "heads=12 is not divisible by devices=8"),
    (lambda: ulysses_plan(Problem(1, 24, 12, 1024, 1024, 64), 8), "kv_heads=12 is not divisible by devices=8"),
    (lambda: ulysses_plan(Problem(1, 32, 8, 1000, 1000, 64), 16), "not divisible by devices = 16"),
    (lambda: tiling_allreduce_plan(Problem(1, 6, 6, 512, 512, 64), 4), "divisible by devices=4"),
    (lambda: tiling_allreduce_plan(Problem(1, 8, 8, 512, 512, 64), 4, 0), "tiles"),
    (lambda: predict_multigpu("h100", Problem(1, 8, 8, 512, 512, 64), 2, "tree"), "parallel"),
    (lambda: predict_ring("h100", Problem(1, 8, 8, 512, 512, 64), 2, merge="lazy"), "merge"),
]


@pytest.mark.parametrize("fn, words", BAD)
def test_bad_input_is_one_line(fn, words):
    with pytest.raises(IosimError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg and words in msg, msg

