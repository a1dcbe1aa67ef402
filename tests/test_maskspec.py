"""Masks by name (iosim.maskspec, --mask): block states against brute-force element checks, FlexAttention tables
against torch's create_block_mask (via iosim.masks.from_flex), the pipeline per algorithm, errors, the CLI."""

import inspect
import io
import json

import numpy as np
import pytest

from iosim.cli import main, run
from iosim.errors import IosimError
from iosim.masks import from_flex
from iosim.maskspec import block_states, combine, describe, flex_tables, from_tables, parse_mask, tile_mask
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem
from iosim.registry import get

torch = pytest.importorskip("torch")
from torch.nn.attention.flex_attention import create_block_mask  # noqa: E402


# The masks written out from their definitions (numpy or torch index arrays alike); A = q + N_kv − N_q.
def defs(nq, nkv, cu, w=37, c=50, pfx=45):
    off = nkv - nq

    def doc(x):
        return sum((x >= c) * 1 for c in cu[1:-1])  # document id: boundaries passed
    return {
        "causal": lambda q, k: k <= q + off,
        "causal:top-left": lambda q, k: k <= q,
        f"sliding:{w}": lambda q, k: (k <= q + off) & (q + off - k < w),
        f"chunked:{c}": lambda q, k: (k <= q + off) & ((q + off) // c == k // c),
        f"prefix:{pfx}": lambda q, k: (k < pfx) | (k <= q + off),
        "document:" + ",".join(str(b - a) for a, b in zip(cu, cu[1:])): lambda q, k: (q + off >= 0) & (doc(q + off) == doc(k)),
    }


def brute_blocks(visible, bq, bk):
    """(partial, full, some) per bq × bk block of a dense element mask, zero-padded as FlexAttention pads it."""
    nq, nkv = visible.shape
    tq, tk = -(-nq // bq), -(-nkv // bk)
    pad = np.zeros((tq * bq, tk * bk), dtype=bool)
    pad[:nq, :nkv] = visible
    s = pad.reshape(tq, bq, tk, bk).sum(axis=(1, 3))
    return (s > 0) & (s < bq * bk), s == bq * bk, s > 0


SHAPES = [(300, 300), (300, 400), (400, 300), (257, 129), (64, 500)]


@pytest.mark.parametrize("nq,nkv", SHAPES)
def test_block_states_tiles_and_density_equal_brute_force(nq, nkv):
    cu = [0, 70, 71, 200, nkv] if nkv > 200 else [0, 50, nkv]
    d = defs(nq, nkv, cu)
    names = list(d)
    combos = [[n] for n in names] + [[a, b] for i, a in enumerate(names) for b in names[i + 1:]]
    q, k = np.arange(nq)[:, None], np.arange(nkv)[None, :]
    p = Problem(1, 2, 2, nq, nkv, 64)
    for combo in combos:
        spec = combine([parse_mask(c, 32) for c in combo])
        vis = np.logical_and.reduce([np.broadcast_to(d[c](q, k), (nq, nkv)) for c in combo])
        partial, full, _ = brute_blocks(vis, 32, 32)
        got_p, got_f = block_states(spec, p)
        assert (got_p == partial).all() and (got_f == full).all(), combo
        assert (spec.visible(q, k, nq, nkv) == vis).all(), combo
        m = describe(spec, p)
        assert m["element_density"] == pytest.approx(vis.sum() / (nq * nkv), abs=1e-12), combo
        assert m["block_density"] == pytest.approx((partial | full).mean()), combo
        for bm, bn in ((16, 64), (64, 16), (48, 32)):
            assert (tile_mask(spec, p, bm, bn) == brute_blocks(vis, bm, bn)[2]).all(), (combo, bm, bn)


def test_blocks_file_per_head_intersected_with_sliding(tmp_path):
    nq = nkv = 320
    rng = np.random.default_rng(3)
    blk = rng.random((2, 10, 10)) < 0.5  # [H, T_q, T_kv] at block 32
    np.save(tmp_path / "m.npy", blk)
    spec = combine([f"blocks:{tmp_path / 'm.npy'}", "sliding:100"], block=32)
    q, k = np.arange(nq)[:, None], np.arange(nkv)[None, :]
    elem = (k <= q) & (q - k < 100)
    p = Problem(1, 2, 2, nq, nkv, 64)
    got_p, got_f = block_states(spec, p)
    seen = 0
    for h in range(2):
        vis = elem & blk[h][q // 32, k // 32]
        partial, full, _ = brute_blocks(vis, 32, 32)
        assert (got_p[h] == partial).all() and (got_f[h] == full).all()
        assert (tile_mask(spec, p, 64, 16)[0, h] == brute_blocks(vis, 64, 16)[2]).all()
        seen += vis.sum()
    assert describe(spec, p)["element_density"] == pytest.approx(seen / (2 * nq * nkv))


def flex_of(mask_mod, heads, nq, nkv):
    return from_flex(create_block_mask(mask_mod, 1, heads, nq, nkv, device="cpu", BLOCK_SIZE=128))


def listed(num, idx):
    return [sorted(idx[b, h, i, :num[b, h, i]].tolist()) for b in range(num.shape[0]) for h in range(num.shape[1])
            for i in range(num.shape[2])]


@pytest.mark.parametrize("nq,nkv", [(2048, 2048), (1024, 1536), (1100, 1300)])
def test_create_block_mask_via_from_flex_counts_equal_mask_spec(nq, nkv, tmp_path):
    cases = defs(nq, nkv, [0, 300, 301, 1000, nkv], 512, 384, 200)
    blk = np.random.default_rng(0).random((2, -(-nq // 128), -(-nkv // 128))) < 0.4
    np.save(tmp_path / "blk.npy", blk)
    tb = torch.from_numpy(blk)
    cases[f"blocks:{tmp_path / 'blk.npy'}"] = "per-head"
    hw = "h100"
    for text, fn in cases.items():
        heads = 2 if fn == "per-head" else 1
        mod = (lambda b, h, q, k: tb[h, q // 128, k // 128]) if fn == "per-head" else (lambda b, h, q, k: fn(q, k))
        tabs = flex_of(mod, heads, nq, nkv)
        assert (tabs["block_size"], tabs["seq_q"], tabs["seq_kv"]) == (128, nq, nkv)
        p = Problem(1, 2, 2, nq, nkv, 64)
        mine = flex_tables(parse_mask(text), p)
        for a, b in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
            assert (mine[a] == tabs[a]).all(), (text, a)
            assert listed(mine[a], mine[b]) == listed(tabs[a], tabs[b]), (text, b)
        by_spec = predict(hw, p, KernelConfig(), kernel="flex", block_mask=text, l2=False).counts
        by_torch = predict(hw, p, KernelConfig(), kernel="flex", block_mask=tabs, l2=False).counts
        assert (by_spec.sm_read_bytes, by_spec.sm_write_bytes, by_spec.flops) == \
               (by_torch.sm_read_bytes, by_torch.sm_write_bytes, by_torch.flops), text
        np.savez(tmp_path / "t.npz", **{k: tabs[k] for k in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                                                              "full_kv_indices")})
        wrapped = predict(hw, p, KernelConfig(), kernel="flex", block_mask=from_tables(tabs), l2=False)
        assert wrapped.counts.sm_read_bytes == by_torch.sm_read_bytes and wrapped.mask["blocks"] == tabs["kv_indices"][
            0, 0].size * heads
        by_file = predict(hw, p, KernelConfig(), kernel="flex", block_mask=f"flex:{tmp_path / 't.npz'}", l2=False)
        assert by_file.counts.sm_read_bytes == by_torch.sm_read_bytes, text
        assert by_file.mask["element_density"] is None


def test_block_sparse_kernels_visit_the_tiles_with_a_visible_element():
    # chunked:300 at N = 1024: tile (i, j) of bm × bn holds a visible pair iff some row r of block i and key c of
    # block j share a chunk with c ≤ r; K+V bytes = 2·bn·d·e per visited tile (N a multiple of bn), Q and O once
    n, d, e, H = 1024, 64, 2, 2
    r, c = np.arange(n)[:, None], np.arange(n)[None, :]
    vis = (c <= r) & (r // 300 == c // 300)
    p = Problem(1, H, H, n, n, d)
    for alg, kernel, cfg in (("block_sparse", None, KernelConfig(128, 64)), ("block_sparse", None, KernelConfig(32, 128)),
                             ("flash2", "iosim-triton", None)):
        pr = predict("h100", p, cfg, alg, kernel=kernel, block_mask="chunked:300", l2=False)
        bm, bn = pr.schedule.config.block_m, pr.schedule.config.block_n
        tiles = int(vis.reshape(n // bm, bm, n // bn, bn).any(axis=(1, 3)).sum())
        assert pr.counts.sm_read_bytes == H * (n * d * e + tiles * 2 * bn * d * e), (alg, kernel, bm, bn)


def test_fa2_window_from_sliding_and_causal_from_spec():
    n, d, e, H, W = 8192, 128, 2, 16, 1000  # a shape PyTorch's FA2 runs with its plain kernel (no split-KV)
    if "window" not in inspect.signature(get("flash2").build).parameters:
        pytest.skip("flash2 has no local window in this tree")
    p = Problem(1, H, H, n, n, d)
    pr = predict("h100", p, None, kernel="fa2", block_mask="sliding:1000", l2=False)
    assert pr.schedule.algorithm == "flash2"
    # FA2 128 × 64 tiles: query block i visits KV blocks [⌊(128i − (W−1))/64⌋⁺, 2i + 2)
    steps = sum(2 * i + 2 - max(0, (128 * i - (W - 1)) // 64) for i in range(n // 128))
    assert pr.counts.tensor_bytes("read")["K"] == H * steps * 64 * d * e
    causal = predict("h100", p, None, kernel="fa2", block_mask="causal", l2=False)
    assert causal.schedule.problem.causal
    assert causal.counts.sm_read_bytes == predict("h100", Problem(1, H, H, n, n, d, causal=True), None, kernel="fa2",
                                                  l2=False).counts.sm_read_bytes


@pytest.mark.parametrize("spec,msg", [
    ("sliding:0", "not a whole number ≥ 1"), ("sliding", "unknown mask"), ("bogus:3", "unknown mask"),
    ("causal:middle", "unknown mask"), ("chunked:-3", "not a whole number ≥ 1"), ("document:5,0", "≥ 1"),
    ("blocks:/no/such.npy", "no such file"), ("flex:/no/such.npz", "no such file"),
    ("document:/no/such.txt", "no such file"),
])
def test_bad_specs_one_line(spec, msg):
    with pytest.raises(IosimError, match=msg) as e:
        parse_mask(spec)
    assert "\n" not in str(e.value)


def test_shapes_that_do_not_fit_name_both(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((3, 4), dtype=bool))
    p = Problem(1, 2, 2, 1024, 1024, 64)
    with pytest.raises(IosimError, match=r"shape \[3, 4\].*expected \[8, 8\] or \[2, 8, 8\]"):
        block_states(parse_mask(f"blocks:{tmp_path / 'm.npy'}"), p)
    np.savez(tmp_path / "t.npz", kv_num_blocks=np.ones((1, 1, 4), np.int32), kv_indices=np.zeros((1, 1, 4, 4), np.int32))
    with pytest.raises(IosimError, match=r"\[1, 1, 4\].*expected \[B, H, 8\]"):
        predict("h100", p, None, kernel="flex", block_mask=f"flex:{tmp_path / 't.npz'}", l2=False)
    with pytest.raises(IosimError, match="cover 300 keys.*seq_kv=1024"):
        block_states(parse_mask("document:100,200"), p)
    with pytest.raises(IosimError, match="cannot be intersected"):
        combine([f"flex:{tmp_path / 't.npz'}", "causal"])


def test_npz_loaders_and_cu_seqlens(tmp_path):
    m = np.eye(8, dtype=bool)
    np.savez(tmp_path / "one.npz", anything=m)
    np.savez(tmp_path / "named.npz", mask=m, other=np.zeros(3))
    np.savez(tmp_path / "two.npz", a=m, b=m)
    for f in ("one", "named"):
        assert (parse_mask(f"blocks:{tmp_path / f}.npz").blocks == m).all()
    with pytest.raises(IosimError, match="one named 'mask'"):
        parse_mask(f"blocks:{tmp_path / 'two.npz'}")
    (tmp_path / "cu.txt").write_text("0, 100\n300 1024\n")
    p = Problem(1, 1, 1, 1024, 1024, 64)
    assert describe(parse_mask(f"document:{tmp_path / 'cu.txt'}"), p) == \
        describe(parse_mask("document:100,200,724"), p) | {"spec": f"document:{tmp_path / 'cu.txt'}"}


def test_unsupported_algorithm_names_those_that_can():
    p = Problem(1, 2, 2, 1024, 1024, 64)
    with pytest.raises(IosimError, match="cannot run on --kernel fa2 .*; use --kernel flex, --kernel iosim-triton"):
        predict("h100", p, None, kernel="fa2", block_mask="chunked:256", l2=False)
    with pytest.raises(IosimError, match="cannot run on --algorithm standard"):
        predict("h100", p, None, "standard", block_mask="prefix:64", l2=False)


def test_from_flex_rejects_other_objects():
    with pytest.raises(IosimError, match="need a torch.nn.attention.flex_attention.BlockMask"):
        from_flex(np.ones((2, 2), dtype=bool))


def test_cli_flex_sliding_prints_density_and_json():
    argv = ["predict", "--kernel", "flex", "--mask", "sliding:1024", "--causal", "--seq-q", "4096", "--heads", "2",
            "--no-l2"]
    out = io.StringIO()
    assert run(argv, out) == 0
    # 4096 rows, W = 1024: Σ_q min(q + 1, 1024) visible pairs; blocks: query block i sees min(i + 1, 9) of 32
    pairs = sum(min(q + 1, 1024) for q in range(4096))
    blocks = sum(min(i + 1, 9) for i in range(32))
    assert f"mask sliding:1024 ∩ causal: {100 * blocks / 32**2:.2f}% of 128×128 blocks visible" in out.getvalue()
    assert f"{100 * pairs / 4096**2:.2f}% of elements" in out.getvalue()
    js = io.StringIO()
    run(argv + ["--json"], js)
    m = json.loads(js.getvalue())["mask"]
    assert m["element_density"] == pytest.approx(pairs / 4096**2) and m["partial_blocks"] + m["full_blocks"] == blocks


def test_cli_bad_mask_exits_2_with_one_line(capsys):
    assert main(["predict", "--kernel", "fa2", "--mask", "document:1,2", "--no-l2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iosim: error: ") and err.count("\n") == 1
