"""The ``flex`` kernel preset (FlexAttention's Triton forward) and the shared block masks (iosim.masks)."""

import json

import numpy as np
import pytest

from iosim.counts import count
from iosim.hwprofile import load_hardware
from iosim.memory.layout import layout
from iosim.masks import flex_block_tables, random_block_mask
from iosim.pipeline import predict
from iosim.presets import apply, flex_schedule, flex_tiles, flex_visits, get_preset
from iosim.problem import KernelConfig, Problem
from iosim.memory.trace import expand_kernel

H100 = load_hardware("h100")
E = 2  # bf16


def sched(p, block_mask=None, cfg=None):
    alg, c, pre = apply("flex", p, H100, cfg or KernelConfig())
    return get_preset("flex").schedule(p, c, H100, block_mask)


def test_default_tiles_sm90():
    assert flex_tiles("bf16", 64) == (128, 128, 3, 4)
    assert flex_tiles("bf16", 128) == (128, 64, 3, 8)
    assert flex_tiles("bf16", 96) == (64, 64, 3, 4)
    _, cfg, _ = apply("flex", Problem(1, 2, 2, 512, 512, 128), H100, KernelConfig())
    assert (cfg.block_m, cfg.block_n, cfg.num_stages, cfg.num_warps) == (128, 64, 3, 8)
    assert cfg.grid_order == ("m", "b", "h")


@pytest.mark.parametrize("n,d", [(512, 64), (640, 128), (600, 128)])
def test_dense_noncausal_bytes(n, d):
    B, H = 2, 3
    p = Problem(B, H, H, n, n, d)
    c = count(sched(p))
    bm = 128
    tm = -(-n // bm)
    q = B * H * n * d * E
    kv = 2 * B * H * tm * n * d * E  # every query block reads all of K and V
    assert c.sm_read_bytes == q + kv
    assert c.sm_write_bytes == q  # O only: no logsumexp under no_grad
    assert c.tensor_bytes("read") == {"Q": q, "K": kv // 2, "V": kv // 2}


def test_causal_bytes_and_order():
    B, H, n, d = 1, 2, 512, 128  # BLOCK_M 128, BLOCK_N 64: sparse block 128 = 2 BLOCK_N steps
    p = Problem(B, H, H, n, n, d, causal=True)
    s = sched(p)
    # query block i: partial diagonal block i (2 steps), then full blocks 0..i-1 (2 steps each)
    steps = sum(2 * (i + 1) for i in range(n // 128))
    c = count(s)
    assert c.sm_read_bytes == B * H * (n * d * E + 2 * steps * 64 * d * E)
    cnt, vis = flex_visits(flex_block_tables(None, n, n, True), p, 128, 64)
    for i in range(4):
        assert list(vis[0, 0, i, :cnt[0, 0, i]]) == [2 * i, 2 * i + 1] + list(range(2 * i))
    # the traced K loads of program (query block 3, head 0) follow that order
    lay = layout(s)
    tr = expand_kernel(s, s.kernels[0], lay)
    kbase = lay["K"].base
    prog = 3  # grid (m, b, h), m fastest
    sel = (tr.prog == prog) & (tr.addr >= kbase) & (tr.addr < kbase + B * H * n * d * E) & ~tr.write
    order = np.argsort(tr.tick[sel], kind="stable")
    blocks = (tr.addr[sel][order] - kbase) // (64 * d * E)
    assert list(blocks) == [6, 7, 0, 1, 2, 3, 4, 5]


def test_causal_matches_fa2_bytes_for_same_tiles():
    p = Problem(8, 2, 2, 1024, 1024, 64, causal=True)  # BLOCK_M = BLOCK_N = 128 = sparse block: same tiles as FA2
    # (B·H·⌈N/64⌉ = 256 ≥ 0.8·2·132 CTAs: FA2 runs its plain kernel, no split-KV)
    fa2 = predict(H100, p, KernelConfig(), kernel="fa2", l2=False)
    fl = predict(H100, p, KernelConfig(), kernel="flex", l2=False)
    assert fl.counts.sm_read_bytes == fa2.counts.sm_read_bytes
    assert fl.counts.flops == fa2.counts.flops


def test_gqa_reads_kv_head_h_over_g():
    B, Hq, Hkv, n, d = 1, 4, 2, 256, 64
    p = Problem(B, Hq, Hkv, n, n, d)
    s = sched(p)
    c = count(s)
    tm = n // 128
    assert c.tensor_bytes("read")["K"] == B * Hq * tm * n * d * E
    lay = layout(s)
    tr = expand_kernel(s, s.kernels[0], lay)
    kbase, head = lay["K"].base, n * d * E
    for h in range(Hq):
        progs = np.arange(tm) + h * tm  # grid (m, b, h)
        sel = np.isin(tr.prog, progs) & (tr.addr >= kbase) & (tr.addr < kbase + Hkv * head) & ~tr.write
        assert set(((tr.addr[sel] - kbase) // head).tolist()) == {h // (Hq // Hkv)}


def test_random_mask_deterministic_and_diagonal():
    a = random_block_mask(2, 3, 1024, 1024, 128, 0.3, seed=5)
    b = random_block_mask(2, 3, 1024, 1024, 128, 0.3, seed=5)
    assert a.shape == (2, 3, 8, 8) and a.dtype == bool
    assert np.array_equal(a, b)
    assert not np.array_equal(a, random_block_mask(2, 3, 1024, 1024, 128, 0.3, seed=6))
    assert all(a[:, :, i, i].all() for i in range(8))
    c = random_block_mask(1, 2, 1024, 1024, 128, 0.5, seed=1, causal=True)
    assert not np.triu(c[0, 0], 1).any() and all(c[0, 0, i, i] for i in range(8))
    r = random_block_mask(1, 1, 512, 1024, 128, 1.0, seed=0, causal=True)  # bottom-right aligned
    assert r[0, 0].sum(axis=1).tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize("causal", [False, True])
def test_random_mask_bytes_and_order(causal):
    B, H, n, d = 1, 2, 768, 64  # BLOCK_M = BLOCK_N = 128
    m = random_block_mask(B, H, n, n, 128, 0.4, seed=3, causal=causal)
    p = Problem(B, H, H, n, n, d, causal=causal)
    c = count(sched(p, m))
    assert c.sm_read_bytes == B * H * n * d * E + 2 * int(m.sum()) * 128 * d * E
    cnt, vis = flex_visits(flex_block_tables(m, n, n, causal), p, 128, 128)
    for h in range(H):
        for i in range(n // 128):
            listed = list(np.nonzero(m[0, h, i])[0])
            got = list(vis[0, h, i, :cnt[0, h, i]])
            if causal:  # the diagonal block is partial: first; the others full, ascending
                assert got == [i] + [j for j in listed if j != i]
            else:
                assert got == listed
    # the dict of BlockMask tables gives the same schedule as the boolean mask
    assert count(sched(p, flex_block_tables(m, n, n, causal))).sm_read_bytes == c.sm_read_bytes


def test_random_mask_gqa_and_block_n_substeps():
    B, Hq, Hkv, n, d = 1, 4, 2, 512, 128  # BLOCK_N 64: every listed 128-block is two steps
    m = random_block_mask(B, Hq, n, n, 128, 0.5, seed=9)
    p = Problem(B, Hq, Hkv, n, n, d)
    c = count(sched(p, m))
    assert c.tensor_bytes("read")["K"] == int(m.sum()) * 128 * d * E
    cnt, vis = flex_visits(flex_block_tables(m, n, n, False), p, 128, 64)
    row = list(np.nonzero(m[0, 1, 2])[0])
    assert list(vis[0, 1, 2, :cnt[0, 1, 2]]) == [s for j in row for s in (2 * j, 2 * j + 1)]


def test_predict_with_l2_and_cli():
    p = Problem(1, 2, 2, 1024, 1024, 64, causal=True)
    m = random_block_mask(1, 2, 1024, 1024, 128, 0.5, seed=1, causal=True)
    pr = predict(H100, p, KernelConfig(), kernel="flex", block_mask=m)
    assert pr.dram_read_bytes > 0 and pr.kernel_preset == "flex" and pr.schedule.algorithm == "flex"
    import io
    out = io.StringIO()
    from iosim.cli import run
    run(["predict", "--kernel", "flex", "--seq-q", "1024", "--seq-kv", "1024", "--head-dim", "128", "--heads", "2",
         "--kv-heads", "2", "--causal", "--json"], out)
    d = json.loads(out.getvalue())
    assert d["kernel_preset"] == "flex" and d["config"]["block_n"] == 64 and d["config"]["num_warps"] == 8
    assert d["kernels"][0]["name"] == "flex_attention_fwd"


def test_tables_match_torch_create_block_mask():
    torch = pytest.importorskip("torch")
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    n = 640
    m = random_block_mask(2, 3, n, n, 128, 0.4, seed=7, causal=True)
    tbl = torch.from_numpy(m)

    def mask_mod(b, h, q, kv):
        return tbl[b, h, q // 128, kv // 128] & (kv <= q)

    bm = fa.create_block_mask(mask_mod, 2, 3, n, n, device="cpu")
    t = flex_block_tables(m, n, n, True)
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        a_num, a_idx = getattr(bm, num).numpy(), getattr(bm, idx).numpy()
        assert np.array_equal(a_num, t[num])
        for b in range(2):
            for h in range(3):
                for i in range(5):
                    k = a_num[b, h, i]
                    assert np.array_equal(a_idx[b, h, i, :k], t[idx][b, h, i, :k])


def test_flex_schedule_rejects_bad_mask():
    from iosim.errors import IosimError
    p = Problem(1, 2, 2, 512, 512, 64)
    with pytest.raises(IosimError):
        sched(p, np.ones((3, 3), dtype=bool))
    with pytest.raises(IosimError):
        flex_schedule(p, KernelConfig(96, 128), H100, np.ones((4, 4), dtype=bool))
