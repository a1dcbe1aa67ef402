"""The fa2 preset launches what PyTorch's flash backend launches (flash_api.cpp mha_fwd → set_params_splitkv →
run_mha_fwd), worked out by hand on the H100 profile (132 SMs: the heuristic sees 2·132 = 264), and FA2's backward."""

import pytest

from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.models.splitkv import Fa2Launch, fa2_launch
from iosim.pipeline import predict
from iosim.presets import apply
from iosim.problem import KernelConfig, Problem

H100, A100 = load_hardware("h100"), load_hardware("a100")


def test_gqa_decode_packs_and_splits():
    p = Problem(1, 32, 8, 1, 8192, 128)
    # swapped: seqlen_q = G = 4, heads = 8 → 8 CTAs per split; 64 KV blocks of 128. Eligible s (⌈64/s⌉ changes):
    # 1–11, 13, 16, 22, 32, 64; 8s/264 over ⌈·⌉ is .97 at 32 and 64 (the best), .67 at 22, lower below: 32
    assert fa2_launch(p, H100) == Fa2Launch(packed=True, rows=4, heads=8, num_splits=32)
    algo, cfg, pre = apply("fa2", p, H100, KernelConfig())
    assert (algo, cfg.block_m, cfg.block_n, cfg.num_warps, pre.regs_per_thread) == ("splitkv", 64, 128, 4, None)
    pr = predict(H100, p, KernelConfig(), kernel="fa2", l2=False)
    assert [k.name for k in pr.schedule.kernels] == ["splitkv_fwd", "splitkv_combine"]
    assert pr.counts.kernels[0].read_bytes["K"] == 8 * 8192 * 128 * 2  # K once per KV head


def test_mha_decode_splits_unpacked():
    # H = H_k: no swap; 32 CTAs, 64 KV blocks. Eligible s: 1–11, 13, 16, 22, 32, 64; efficiencies 32s/264 over
    # ⌈·⌉: s = 7 → .848, 8 → .970 (the best, also 16, 32, 64); the first ≥ .85·.970 = .824 is 7
    assert fa2_launch(Problem(1, 32, 32, 1, 8192, 128), H100).num_splits == 7
    assert fa2_launch(Problem(1, 32, 32, 1, 8192, 128), H100).packed is False


def test_large_batch_decode_runs_the_plain_kernel_packed():
    p = Problem(64, 32, 8, 1, 8192, 128)  # 64·8 = 512 ≥ 211 CTAs: one split, plain kernel on the swapped layout
    algo, cfg, pre = apply("fa2", p, H100, KernelConfig())
    assert (algo, cfg.block_m, cfg.block_n, pre.regs_per_thread) == ("splitkv", 128, 64, 255)
    pr = predict(H100, p, KernelConfig(), kernel="fa2", l2=False)
    assert [k.name for k in pr.schedule.kernels] == ["flash2_fwd"]
    assert pr.counts.kernels[0].read_bytes["V"] == 64 * 8 * 8192 * 128 * 2


def test_causal_decode_still_packs():
    assert fa2_launch(Problem(1, 32, 8, 1, 8192, 128, causal=True), H100).packed  # mha_fwd drops causal for Nq = 1


@pytest.mark.parametrize("p,algo,tiles", [
    (Problem(1, 16, 16, 4096, 4096, 128, causal=True), "flash2", (128, 64)),  # 16·64 = 1024 CTAs ≥ 211
    # 2·16 = 32 CTAs, 4 KV blocks of 256: efficiencies 32s/264 = .12, .24, .36, .48 → the first ≥ .85·.48 is 4
    (Problem(1, 2, 2, 1024, 1024, 64, causal=True), "splitkv", (64, 256)),
])
def test_prefill(p, algo, tiles):
    a, cfg, _ = apply("fa2", p, H100, KernelConfig())
    assert (a, (cfg.block_m, cfg.block_n)) == (algo, tiles)


def test_backward_config():
    a, cfg, pre = apply("fa2", Problem(1, 16, 16, 4096, 4096, 128), H100, KernelConfig(), direction="bwd")
    assert (a, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages) == ("flash2_bwd", 64, 128, 8, 2)
    # hdim 64: 128×128 with ≥ 144 KB per block (H100 227 KB); hdim 256 on the A100 (163 KB < 176 KB): no double buffer
    assert apply("fa2", Problem(1, 4, 4, 512, 512, 64), H100, KernelConfig(), "bwd")[1].block_m == 128
    c = apply("fa2", Problem(1, 4, 4, 512, 512, 256), A100, KernelConfig(), "bwd")[1]
    assert (c.block_m, c.block_n, c.num_stages) == (64, 64, 1)


def test_backward_errors():
    p = Problem(1, 4, 4, 512, 512, 64)
    with pytest.raises(IosimError, match="^kernel preset 'flex' has no backward pass modelled; use one of: fa2, iosim-triton$"):
        apply("flex", p, H100, KernelConfig(), direction="bwd")
    with pytest.raises(IosimError, match="direction must be one of"):
        apply("fa2", p, H100, KernelConfig(), direction="backward")
