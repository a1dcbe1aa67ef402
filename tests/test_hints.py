"""Autotune hints: Triton config JSON, perf_model/prune with Triton's signatures, BlockMask export round trip."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from iosim import hints
from iosim.cli import run
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.problem import Problem


def _cfg(bm, bn, w, s):
    """Duck-typed triton.Config (kwargs, num_warps, num_stages)."""
    return SimpleNamespace(kwargs={"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


TUTORIAL_CONFIGS = [_cfg(bm, bn, w, s) for bm in (64, 128) for bn in (32, 64, 128) for s in (2, 3, 4) for w in (4, 8)]
NAMED = {"sm_scale": 0.1, "Z": 4, "H": 32, "N_CTX": 4096, "HEAD_DIM": 128, "STAGE": 3, "FP8_OUTPUT": False}


def test_prune_keeps_at_most_top_k_legal_fastest_first(monkeypatch):
    monkeypatch.setenv("IOSIM_HARDWARE", "h100")
    kept = hints.prune(TUTORIAL_CONFIGS, NAMED)
    assert 1 <= len(kept) <= hints.PRUNE_TOP_K
    times = [hints.perf_model(**NAMED, BLOCK_M=c.kwargs["BLOCK_M"], BLOCK_N=c.kwargs["BLOCK_N"],
                              num_warps=c.num_warps, num_stages=c.num_stages) for c in kept]
    assert times == sorted(times) and all(math.isfinite(t) for t in times)
    best_all = min(hints.perf_model(**NAMED, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                   for c in TUTORIAL_CONFIGS)
    assert times[0] == best_all
    assert len(hints.make_prune(top_k=2)(TUTORIAL_CONFIGS, NAMED)) == 2


def test_perf_model_inf_for_illegal_and_problem_from_args(monkeypatch):
    monkeypatch.setenv("IOSIM_HARDWARE", "h100")
    # 256×256 tiles at d=128 with 4 stages need far more than 227 KiB of shared memory
    assert hints.perf_model(**NAMED, BLOCK_M=256, BLOCK_N=256, num_warps=8, num_stages=4) == math.inf
    p = hints.problem_from_kernel_args(NAMED)
    assert p == Problem(4, 32, 32, 4096, 4096, 128, "fp16", True)
    q = SimpleNamespace(shape=(2, 8, 1000, 64), dtype="torch.bfloat16")
    k = SimpleNamespace(shape=(2, 2, 3000, 64), dtype="torch.bfloat16")
    assert hints.problem_from_kernel_args({"q": q, "k": k}) == Problem(2, 8, 2, 1000, 3000, 64, "bf16", False)
    with pytest.raises(IosimError, match="missing"):
        hints.problem_from_kernel_args({"Z": 1})


def test_prune_with_nothing_legal_keeps_one(monkeypatch):
    monkeypatch.setenv("IOSIM_HARDWARE", "h100")
    with pytest.warns(UserWarning):
        kept = hints.prune([_cfg(256, 256, 8, 4)], NAMED)
    assert len(kept) == 1


def test_config_entries_and_cli_triton_json(tmp_path):
    e = hints.config_entries(load_hardware("h100"), Problem(1, 16, 16, 4096, 4096, 128), top=3)
    assert len(e) == 3 and set(e[0]) == {"kwargs", "num_warps", "num_stages", "num_ctas", "maxnreg", "iosim"}
    assert e[0]["iosim"]["rank"] == 1
    out_file = tmp_path / "cfg.json"
    run(["hints", "--hardware", "h100", "--seq-q", "4096", "--format", "triton", "--top", "2", "--out", str(out_file)],
        io.StringIO())
    data = json.loads(out_file.read_text())
    assert len(data) == 2 and data[0]["kwargs"].keys() == {"BLOCK_M", "BLOCK_N"}


def test_block_mask_round_trip_random_pattern():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 3, 5, 7)) < 0.4
    full = mask & (rng.random(mask.shape) < 0.5)
    d = hints.block_mask_inputs(mask, full)
    assert d["kv_num_blocks"].dtype == np.int32 and d["kv_indices"].shape == (2, 3, 5, 7)
    assert np.array_equal(d["kv_num_blocks"], (mask & ~full).sum(-1))
    assert np.array_equal(hints.dense_from_inputs(**d), mask)
    d2 = hints.block_mask_inputs(mask)
    assert np.array_equal(hints.dense_from_inputs(**d2), mask)


def test_causal_pattern_matches_create_block_mask():
    # triton-ncu-facts §5: create_block_mask(causal, 512, 512, BLOCK 128) → kv_num = [1,1,1,1], full = [0,1,2,3]
    mask, full = hints.causal_block_pattern(512, 512, 128, 128)
    d = hints.block_mask_inputs(mask, full)
    assert d["kv_num_blocks"].ravel().tolist() == [1, 1, 1, 1]
    assert d["full_kv_num_blocks"].ravel().tolist() == [0, 1, 2, 3]
    assert d["kv_indices"][0, 0, :, 0].tolist() == [0, 1, 2, 3]  # the diagonal block is the partial one
    assert d["full_kv_indices"][0, 0, 3, :3].tolist() == [0, 1, 2]


def test_block_mask_bad_input_and_cli(tmp_path):
    with pytest.raises(IosimError, match="boolean"):
        hints.block_mask_inputs(np.ones((2, 2), dtype=np.int8))
    with pytest.raises(IosimError, match="subset"):
        hints.block_mask_inputs(np.zeros((2, 2), bool), np.ones((2, 2), bool))
    mask, _ = hints.causal_block_pattern(256, 256, 64, 64)
    np.save(tmp_path / "m.npy", mask)
    run(["hints", "--format", "blockmask", "--mask", str(tmp_path / "m.npy"), "--out", str(tmp_path / "bm.npz")],
        io.StringIO())
    z = np.load(tmp_path / "bm.npz")
    assert np.array_equal(hints.dense_from_inputs(z["kv_num_blocks"], z["kv_indices"])[0, 0], mask)


def test_import_safe_without_triton_and_torch(monkeypatch):
    import importlib
    import sys
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    mod = importlib.reload(hints)
    assert callable(mod.perf_model) and callable(mod.prune)
    with pytest.raises(IosimError, match="needs triton"):
        mod.to_triton_configs([{"kwargs": {"BLOCK_M": 64, "BLOCK_N": 64}, "num_warps": 4, "num_stages": 2}])
    importlib.reload(hints)
