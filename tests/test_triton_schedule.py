"""The schedule of our Triton kernels (iosim.triton_kernels.schedule): counts against independent enumerations of
what the kernels visit. Needs neither torch nor triton."""

from __future__ import annotations

import numpy as np
import pytest

from iosim.counts import count
from iosim.errors import IosimError
from iosim.models import flash2
from iosim.problem import KernelConfig, Problem
from iosim.triton_kernels.schedule import decode_geometry, decode_splits, kernel_mask, kernel_schedule, use_decode


def test_dense_is_flash2():
    p = Problem(2, 8, 2, 1000, 1537, 128, causal=True)
    cfg = KernelConfig(128, 64, 8, 3, kv_order="descending", q_order="descending")
    a, b = count(kernel_schedule(p, cfg)), count(flash2.build(p, cfg))
    assert a.sm_read_bytes == b.sm_read_bytes and a.sm_write_bytes == b.sm_write_bytes and a.flops == b.flops


def _kernel_visits(p: Problem, dense: np.ndarray, sbm: int, sbn: int, bm: int, bn: int) -> int:
    """Bytes read by kernels._fwd_kernel's sparse loop, enumerated the way the kernel walks it."""
    e, d = p.elem_bytes, p.head_dim
    tm, tn = -(-p.seq_q // bm), -(-p.seq_kv // bn)
    total = 0
    for b in range(p.batch):
        for h in range(p.heads):
            for i in range(tm):
                total += min(bm, p.seq_q - i * bm) * d * e  # Q tile
                srow = i * bm // sbm
                lim = min((i + 1) * bm, p.seq_q) - 1 + p.seq_kv - p.seq_q
                for jb in np.nonzero(dense[b % dense.shape[0], h % dense.shape[1], srow])[0]:
                    for u in range(sbn // bn):
                        j = jb * (sbn // bn) + u
                        if j >= tn or (p.causal and j * bn > lim):
                            continue
                        total += 2 * min(bn, p.seq_kv - j * bn) * d * e  # K and V tiles
    return total


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nkv", [(1000, 1000), (700, 1300), (1300, 700)])
def test_block_sparse_matches_kernel_walk(causal, nq, nkv):
    rng = np.random.default_rng(0)
    p = Problem(2, 4, 2, nq, nkv, 64, causal=causal)
    sbm, sbn, bm, bn = 256, 128, 128, 64
    dense = rng.random((2, 4, -(-nq // sbm), -(-nkv // sbn))) < 0.4
    got = count(kernel_schedule(p, KernelConfig(bm, bn), block_mask=(dense, sbm, sbn))).sm_read_bytes
    assert got == _kernel_visits(p, dense, sbm, sbn, bm, bn)


def test_block_sparse_all_listed_equals_dense():
    p = Problem(1, 2, 2, 1024, 1024, 128, causal=False)
    dense = np.ones((8, 8), dtype=bool)
    sp_counts = count(kernel_schedule(p, KernelConfig(128, 64), block_mask=(dense, 128, 128)))
    assert sp_counts.sm_read_bytes == count(flash2.build(p, KernelConfig(128, 64))).sm_read_bytes


def test_kernel_mask_rejects_bad_blocks():
    p = Problem(1, 1, 1, 256, 256, 64)
    with pytest.raises(IosimError, match="multiples"):
        kernel_mask((np.ones((2, 2), bool), 128, 96), p, 128, 64)
    with pytest.raises(IosimError, match="too few"):
        kernel_mask((np.ones((1, 1), bool), 128, 128), p, 128, 64)


@pytest.mark.parametrize("nq,causal", [(1, False), (3, True)])
def test_decode_counts(nq, causal):
    p = Problem(2, 32, 8, nq, 5000, 128, causal=causal)
    bn, splits = 64, 7
    M, bm, bps, S = decode_geometry(p, bn, splits)
    assert M == 4 * nq and bm == 16 and S == -(-(-(-5000 // bn)) // bps)
    c = count(kernel_schedule(p, KernelConfig(bm, bn), decode=True, num_splits=splits))
    e, d = 2, 128
    q = S * p.batch * p.heads * nq * d * e  # every split program loads its G·Nq query rows
    kv = 2 * p.batch * p.kv_heads * 5000 * d * e  # each KV head read once, whatever the group size
    combine = p.batch * p.kv_heads * M * S * (4 + 4 * d)
    assert c.sm_read_bytes == q + kv + combine
    parts = p.batch * p.kv_heads * S * M * (4 * d + 4)
    assert c.sm_write_bytes == parts + p.batch * p.heads * nq * (d * e + 4)


def test_decode_dispatch_rules():
    assert use_decode(1, 32, 8, 8192)
    assert not use_decode(128, 32, 8, 8192)
    assert not use_decode(1, 32, 8, 8192, block_mask=object())
    assert decode_splits(1, 8, 65536, 64) == 33
    assert decode_splits(64, 8, 100, 64) == 1


# --- iosim.validate pieces that need no GPU -------------------------------------------------------------------

def test_visible_pairs_brute_force():
    from iosim.validate import visible_pairs
    for nq in (1, 3, 7, 10):
        for nkv in (1, 4, 7, 12):
            p = Problem(1, 1, 1, nq, nkv, 16, causal=True)
            assert visible_pairs(p) == sum(1 for r in range(nq) for c in range(nkv) if c <= r + nkv - nq)


def test_parse_ncu_csv_attributes_kernels_between_markers():
    from iosim.validate import parse_ncu_csv
    hdr = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
           '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')
    rows = [hdr]

    def add(i, name, grid, metric, val):
        rows.append(f'"{i}","1","p","h","{name}","1","7","(128, 1, 1)","{grid}","0","9.0","s","{metric}","byte","{val}"')
    add(0, "warmup", "(1, 1, 1)", "dram__bytes_read.sum", "5")
    add(1, "iosim_mark_begin", "(3, 1, 1)", "dram__bytes_read.sum", "0")
    add(2, "_fwd_kernel", "(32, 4, 16)", "l1tex__m_xbar2l1tex_read_bytes.sum", "1,234,567")
    add(3, "_combine_kernel", "(4, 1, 1)", "l1tex__m_xbar2l1tex_read_bytes.sum", "33")
    add(4, "iosim_mark_end", "(1, 1, 1)", "dram__bytes_read.sum", "0")
    add(5, "after", "(1, 1, 1)", "dram__bytes_read.sum", "9")
    got = parse_ncu_csv("==PROF== Connected\n" + "\n".join(rows))
    assert list(got) == [2]
    assert got[2]["l1tex__m_xbar2l1tex_read_bytes.sum"] == 1234600
    assert "_fwd_kernel grid(32, 4, 16)" in got[2]["kernels"] and "_combine_kernel" in got[2]["kernels"]


def test_reports_from_results(tmp_path):
    from iosim.validate import Case, Result, write_reports
    c1 = Case("iosim-triton", 1, 2, 2, 256, 256, 64, True, (128, 64, 4, 3), use_tma=False, q_order="descending")
    c2 = Case("flex", 1, 2, 2, 256, 256, 64, True)
    res = [Result(c1, 0.1, 400.0, 1e-3, 1000, {"l1tex__m_xbar2l1tex_read_bytes.sum": 1000}),
           Result(c2, 0.12, 350.0, 1e-3, 1000)]
    csv_path, md_path = write_reports(res, str(tmp_path), "t")
    md = open(md_path).read()
    assert "| B1 H2 N256 d64 causal | 400.0 | 350.0 | 1.143 | 128x64x4x3/tma=0/q-desc |" in md
    assert "| iosim-triton | B1 H2 N256 d64 causal | 128x64x4x3/tma=0/q-desc | 1000 | 1000 | 0.000 |" in md
    assert open(csv_path).read().count("\n") == 3


def test_validate_cli_without_gpu_fails_clearly(capsys):
    import importlib.util
    from iosim.cli import main
    if importlib.util.find_spec("torch") is not None:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert main(["validate", "--no-ncu", "--seqs", "256"]) == 2
    assert "needs" in capsys.readouterr().err
    assert main(["validate", "--impls", "nope"]) == 2


def test_gpu_slug():
    from iosim.validate import gpu_slug
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("Some GPU-9") == "somegpu9"


# --- the iosim-triton preset: the kernel's own launch choices --------------------------------------------------

from dataclasses import replace  # noqa: E402

from iosim.hwprofile import load_hardware  # noqa: E402
from iosim.pipeline import predict  # noqa: E402
from iosim.presets import apply  # noqa: E402
from iosim.triton_kernels.schedule import (DEFAULT_CONFIGS, default_config, instruction_path,  # noqa: E402
                                           launch_config, launch_grid)

H100 = load_hardware("h100")
PRESET_CASES = [(16, False), (32, True), (64, False), (64, True), (128, False), (128, True), (256, False), (256, True)]


@pytest.mark.parametrize("d,causal", PRESET_CASES)
def test_iosim_triton_preset_is_default_config(d, causal):
    p = Problem(2, 8, 2, 1000, 1537, d, causal=causal)
    alg, cfg, pre = apply("iosim-triton", p, H100, KernelConfig(64, 32, 2, 1, ("h", "b", "m"), "descending",
                                                                 "descending", sram_bytes=12345))
    want = default_config(d, causal)
    assert alg == "flash2"
    assert cfg == KernelConfig(want.block_m, want.block_n, want.num_warps, want.num_stages, ("m", "b", "h"),
                               "ascending", "ascending", sram_bytes=12345, band_loop=True)
    assert cfg == replace(launch_config(d, causal), sram_bytes=12345)
    if (d, causal) in DEFAULT_CONFIGS:
        assert (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages) == DEFAULT_CONFIGS[(d, causal)]
    # Triton picks wgmma on sm90 for these tiles; the preset leaves the path to the chip's native one (= wgmma)
    assert pre.instruction_path is None and instruction_path("sm90", cfg.block_m, cfg.num_warps) == "wgmma"


@pytest.mark.parametrize("d,causal", [(64, False), (64, True), (128, False), (128, True)])
def test_iosim_triton_predict_counts_kernel_schedule(d, causal):
    p = Problem(2, 8, 4, 700, 1300, d, causal=causal)
    pred = predict(H100, p, KernelConfig(), kernel="iosim-triton", l2=False)
    want = count(kernel_schedule(p, default_config(d, causal)))
    got = pred.counts
    assert (got.sm_read_bytes, got.sm_write_bytes, got.flops, got.exp_ops) == \
        (want.sm_read_bytes, want.sm_write_bytes, want.flops, want.exp_ops)
    assert [k.programs for k in got.kernels] == [k.programs for k in want.kernels]
    assert pred.time.kernels[0].path == "wgmma"


def test_iosim_triton_predict_l2_equals_flash2_with_kernel_config():
    p = Problem(1, 4, 4, 2048, 2048, 128, causal=True)
    a = predict(H100, p, KernelConfig(), kernel="iosim-triton")
    b = predict(H100, p, default_config(128, True), "flash2")
    assert (a.dram_read_bytes, a.dram_write_bytes, a.time_s) == (b.dram_read_bytes, b.dram_write_bytes, b.time_s)


def test_iosim_triton_preset_runs_decode_and_refuses_what_the_kernel_refuses():
    # decode shape (G·Nq = 4 ≤ 64, Nkv ≥ 256): the launcher's split-KV path, two kernels; one packed program per
    # (KV head, split): K and V read once per KV head (8 heads × 8192 keys × 128 × 2 B each)
    dec = predict(H100, Problem(1, 32, 8, 1, 8192, 128), KernelConfig(), kernel="iosim-triton", l2=False)
    assert [k.name for k in dec.counts.kernels] == ["iosim_decode_split", "iosim_decode_combine"]
    assert dec.counts.kernels[0].read_bytes["K"] == dec.counts.kernels[0].read_bytes["V"] == 8 * 8192 * 128 * 2
    with pytest.raises(IosimError, match="head_dim=96"):
        predict(H100, Problem(1, 4, 4, 1024, 1024, 96), KernelConfig(), kernel="iosim-triton", l2=False)
    with pytest.raises(IosimError, match="65535"):
        predict(H100, Problem(70000, 1, 1, 128, 128, 64), KernelConfig(), kernel="iosim-triton", l2=False)


def test_launch_config_fills_like_attention():
    # block_m given: its warps/stages are kept, block_n from the defaults; block_m missing: defaults for all four
    # band_loop: the kernel always visits the causal diagonal band in a loop of its own
    assert launch_config(64, False, KernelConfig(block_m=64)) == KernelConfig(64, 128, 4, 2, band_loop=True)
    assert launch_config(128, True, KernelConfig(block_n=32, num_warps=2, kv_order="descending")) == \
        KernelConfig(128, 32, 4, 2, kv_order="descending", band_loop=True)
    full = KernelConfig(64, 32, 2, 1, ("h", "m", "b"))
    assert launch_config(64, True, full) == replace(full, band_loop=True)
    assert launch_grid(full, 8, 2, 16) == ((16, 8, 2), {"AX_M": 1, "AX_B": 2, "AX_H": 0})


def test_instruction_path_rules():
    assert instruction_path("sm90", 128, 8) == "wgmma"
    assert instruction_path("sm90", 16, 4) == "mma.sync"  # decode tiles: M % 64 != 0
    assert instruction_path("sm90", 128, 2) == "mma.sync"
    assert instruction_path("sm80", 128, 4) == "mma.sync"
    assert instruction_path("sm100", 128, 8) == "tcgen05"


def test_kernels_module_uses_the_schedule_choices():
    kernels = pytest.importorskip("iosim.triton_kernels.kernels")
    assert kernels.default_config is default_config and kernels.DEFAULT_CONFIGS is DEFAULT_CONFIGS
    assert kernels._grid(KernelConfig(128, 64), 4, 2, 3) == launch_grid(KernelConfig(128, 64), 4, 2, 3)
