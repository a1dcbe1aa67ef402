"""Issue 24 part A: the Ascend 910B as a Cube + Vector device and FastAttention's Ascend schedule
(models/fastattention.py): Cube↔Vector workspace traffic in closed form, the tiling-mask, reference = naive
attention, and the CLI on the ascend910b profile's defaults."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from iosim.cli import run as cli_run
from iosim.counts import count
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.models.fastattention import tiling_mask_ascend, ub_bytes_ascend, vector_rows_ascend
from iosim.occupancy import occupancy
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get

ASCEND = load_hardware("ascend910b")


def build(p, cfg=KernelConfig(), hw=ASCEND):
    return get("fastattention_ascend").build(p, cfg, hw)


def per_tensor(sched):
    (k,) = count(sched).kernels
    return dict(k.read_bytes), dict(k.write_bytes)


def test_profile_has_the_split_cube_vector_units():
    # CANN Ascend910B2.ini: 24 AIC, 48 AIV (2 per AI core), UB 192 KiB per AIV, L1 512 KiB per AIC
    assert (ASCEND.sm_count, ASCEND.vector_cores_per_sm, ASCEND.ub_per_vector_core_bytes) == (24, 2, 196608)
    assert ASCEND.smem_per_sm_bytes == 512 * 1024 and ASCEND.sources["ub_per_vector_core_bytes"].kind == "documentation"


def test_one_block_per_ai_core_without_thread_or_register_limits():
    occ = occupancy(build(Problem(1, 16, 16, 4096, 4096, 128, "bf16")).kernels[0], ASCEND)
    assert (occ.ctas_per_sm, occ.limiter, occ.slots) == (1, "ctas", 24)
    assert dict(occ.limits).keys() == {"ctas", "smem"}


def test_cube_vector_traffic_equals_closed_form_noncausal():
    # per (b, h) and per visited B_r×B_c tile: S fp32 out of L0C and back into UB (4+4 B per element), P in the input
    # dtype out of UB and back into L1 (2e), the PV partial fp32 B_r×d out and back (8·B_r·d)
    B, H, N, d, e, br, bc = 2, 3, 1024, 128, 2, 128, 256
    r, w = per_tensor(build(Problem(B, H, H, N, N, d, "bf16"), KernelConfig(br, bc)))
    tiles = B * H * (N // br) * (N // bc)
    expect = {"S_ws": tiles * br * bc * 4, "P_ws": tiles * br * bc * e, "O_ws": tiles * br * d * 4}
    for t, v in expect.items():
        assert r[t] == v and w[t] == v, t
    assert sum(r[t] + w[t] for t in expect) == tiles * (br * bc * (8 + 2 * e) + 8 * br * d)
    # everything else is FA2's: Q and O once, K and V once per query block
    assert r["Q"] == w["O"] == B * H * N * d * e and r["K"] == r["V"] == B * H * (N // br) * N * d * e


def test_causal_traffic_and_tiling_mask_bytes_closed_form():
    # N_q = N_kv = N (no shift): block i visits j·B_c ≤ (i+1)·B_r − 1; tile (i, j) crosses the diagonal iff its last
    # column j·B_c + B_c − 1 exceeds its first row i·B_r; only crossing tiles read a B_r×B_c mask window (1 B each)
    N, d, br, bc = 1024, 64, 64, 128
    r, w = per_tensor(build(Problem(1, 1, 1, N, N, d, "fp16", causal=True), KernelConfig(br, bc)))
    visited = [(i, j) for i in range(N // br) for j in range(N // bc) if j * bc <= (i + 1) * br - 1]
    crossing = [(i, j) for i, j in visited if j * bc + bc - 1 > i * br]
    assert r["S_ws"] == w["S_ws"] == len(visited) * br * bc * 4
    assert r["P_ws"] == len(visited) * br * bc * 2 and r["O_ws"] == len(visited) * br * d * 4
    assert r["MASK"] == len(crossing) * br * bc
    assert r["MASK"] < N * N  # a full N×N uint8 mask would be read once per (b, h) at least


def test_tiling_mask_windows_reproduce_the_causal_mask():
    br, bc, shift = 32, 48, 20
    m = tiling_mask_ascend(br, bc)
    assert m.shape == (br, br + 2 * bc - 2)
    for i in range(6):
        for j in range(6):
            delta = j * bc - i * br - shift
            if not (-bc < delta < br):  # tiles that do not cross the diagonal read no mask
                continue
            off = min(max(delta + bc - 1, 0), br + bc - 2)
            rows, cols = np.arange(i * br, (i + 1) * br)[:, None], np.arange(j * bc, (j + 1) * bc)[None, :]
            assert np.array_equal(m[:, off:off + bc] > 0.5, cols > rows + shift)


def naive(q, k, v, causal):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if causal:
        nq, nk = s.shape[-2:]
        s = np.where(np.arange(nk)[None, :] > np.arange(nq)[:, None] + nk - nq, -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_reference_equals_naive_attention(causal):
    rng = np.random.default_rng(24)
    nq, nk, d, br, bc = 100, 130, 32, 32, 48  # ragged query and KV blocks, GQA 2:1, bottom-right causal shift 30
    q, k, v = rng.standard_normal((1, 2, nq, d)), rng.standard_normal((1, 1, nk, d)), rng.standard_normal((1, 1, nk, d))
    sched = build(Problem(1, 2, 1, nq, nk, d, "bf16", causal), KernelConfig(br, bc))
    inputs = {"Q": q, "K": k, "V": v} | ({"MASK": tiling_mask_ascend(br, bc)} if causal else {})
    res = run(sched, inputs)
    np.testing.assert_allclose(res.tensors["O"], naive(q, k, v, causal), rtol=1e-10, atol=1e-12)
    assert count_mismatches(res, count(sched)) == []


def test_vector_sub_blocks_fit_the_unified_buffer():
    # UB per AIV = 196,608 − 8,192 reserved; at B_r = 256, B_c = 512, d = 128 a 128-row sub-block needs
    # half of acc and m, ℓ, LSE (128 rows) + per sub-block row S fp32, P bf16, mask 1 B (512 cols) and O_j fp32 (128):
    # 65,536 + 1,536 + rows·(512·7 + 512) → 32 rows 198,144 B > 188,416; 16 rows 132,608 B is the largest that fits
    assert ub_bytes_ascend(256, 512, 32, 128, 2) == 128 * 128 * 4 + 3 * 128 * 4 + 32 * 512 * 7 + 32 * 128 * 4 == 198_144
    assert ub_bytes_ascend(256, 512, 16, 128, 2) == 132_608
    assert vector_rows_ascend(256, 512, 128, 2, ASCEND) == 16
    with pytest.raises(IosimError, match="Unified Buffer"):
        vector_rows_ascend(4096, 4096, 256, 2, ASCEND)


def cli(argv):
    out = io.StringIO()
    assert cli_run(argv, out) == 0
    return out.getvalue()


@pytest.mark.parametrize("algorithm", ["flash2", "fastattention_ascend"])
def test_predict_and_tiles_on_ascend_defaults(algorithm):
    d = json.loads(cli(["predict", "--hardware", "ascend910b", "--algorithm", algorithm, "--seq-q", "2048", "--json"]))
    assert d["time_s"] > 0 and d["dram_read_bytes"] > 0
    if algorithm == "fastattention_ascend":  # the workspaces are SM↔L2 traffic the L2 model sees
        assert d["sm_write_bytes"] > 2 * 16 * 2048 * 2048 * 4
    text = cli(["tiles", "--hardware", "ascend910b", "--algorithm", algorithm, "--seq-q", "2048"])
    assert "legal configurations" in text and "fastest" in text
