"""iosim.sparsity / iosim sparsity / the report's sparsity page: break-even densities against cases computed by hand,
kernel roles from the schedule's structure, speedups and pre-pass shares against independent predictions, bad input.

Test-only sparse methods are registered for the duration of a test (``sparse_methods`` fixture) under a
``iosim.models.sparse`` module name, so the tool discovers them as it discovers the families."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from iosim import registry, sparsity as sp
from iosim.errors import IosimError
from iosim.models.flash2 import default_tiles
from iosim.models.sparse import common as sc
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem
from iosim.schedule import (Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile,
                            full, point, var)

TEST_MODULE = "iosim.models.sparse._testonly"


# --- test-only methods ---------------------------------------------------------------------------------------------

def build_pool_sparse(p, cfg, hw=None, *, density=None, seed=0, table=None, scores=None, pool=64):
    """Mean-pool K (a pre-pass), then FA2 over the blocks kept at ``density`` (common.sparse_fwd_kernel)."""
    dm, dn = default_tiles(p.head_dim)
    cfg = cfg.with_tiles(cfg.block_m or dm, cfg.block_n or dn)
    mask, src = sc.choose_blocks(p, cfg.block_m, cfg.block_n, density=density, seed=seed, table=table, scores=scores,
                                 forced=sc.forced_blocks(p, cfg.block_m, cfg.block_n, diagonal=True))
    t = sc.attention_tensors(p)
    kp = TensorSpec("Kpool", (p.batch, p.kv_heads, -(-p.seq_kv // pool), p.head_dim), 4, "scratch")
    k1 = sc.pool_kernel("pool_k", t["K"], kp, pool)
    k2, tables = sc.sparse_fwd_kernel(p, cfg, mask, hw)
    return Schedule("t_pool_sparse", p, cfg, t | {"Kpool": kp}, (k1, k2), (src,), tables=tables)


def build_linear_copy(p, cfg, hw=None, *, density=None, seed=0, rows=1000):
    """One CTA copies round(density · rows) rows of 128 bf16 from X to Y: no compute, a fixed grid and per-CTA
    overhead, DRAM bytes ∝ rows copied, so its predicted time is exactly affine in density."""
    d = 1.0 if density is None else float(density)
    n = int(round(d * rows))
    x = var("x")
    X = TensorSpec("X", (1, 1, rows, 128), 2, "input")
    Y = TensorSpec("Y", (1, 1, rows, 128), 2, "output")
    grid = (GridAxis("m", var("r"), 1),)
    body = (Loop(x, 0, n, (Load("a", Tile("X", (point(0, 1), point(0, 1), Span(x, 1, rows), full(128)))),
                           Compute("copy", ("a", "b")),
                           Store("b", Tile("Y", (point(0, 1), point(0, 1), Span(x, 1, rows), full(128)))))),)
    k = Kernel("copy_rows", grid, (Buffer("a", (1, 128), 2, "smem", pipelined=True), Buffer("b", (1, 128), 2, "reg")),
               body)
    return Schedule("t_linear_copy", p, cfg.with_tiles(64, 64), {"X": X, "Y": Y}, (k,))


def build_no_density(p, cfg, hw=None, *, seed=0):
    return build_pool_sparse(p, cfg, hw, seed=seed)


@pytest.fixture
def sparse_methods(monkeypatch):
    registry.algorithms()  # load the real ones first
    for name, fn in (("t_pool_sparse", build_pool_sparse), ("t_linear_copy", build_linear_copy),
                     ("t_no_density", build_no_density)):
        monkeypatch.setattr(fn, "__module__", TEST_MODULE)
        monkeypatch.setitem(registry._ALGORITHMS, name, registry.Algorithm(name, fn, "test only"))
    return ("t_pool_sparse", "t_linear_copy")


# --- break-even, by hand -------------------------------------------------------------------------------------------

def test_break_even_by_hand():
    ds, ts = (0.1, 0.5, 1.0), (2e-3, 6e-3, 11e-3)  # t = 1 ms + 10 ms · density
    b = sp.break_even(ds, ts, 4e-3)  # 1 + 10 d = 4 → d = 0.3
    assert (b.kind, b.crossings[0][1]) == ("interpolated", "down")
    assert b.density == pytest.approx(0.3, rel=1e-12)
    assert "interpolated linearly in time between densities 0.1 and 0.5" in b.text
    e = sp.break_even(ds, ts, 6e-3)
    assert (e.kind, e.density) == ("exact", 0.5)
    assert sp.break_even(ds, ts, 1.5e-3).kind == "never" and sp.break_even(ds, ts, 1.5e-3).density is None
    a = sp.break_even(ds, ts, 20e-3)
    assert a.kind == "always" and "every density from 0.1 to 1" in a.text
    # not monotone: pays off between two crossings; the break-even is where it stops paying off
    m = sp.break_even((0.0, 0.5, 1.0), (5.0, 1.0, 5.0), 3.0)
    assert m.crossings == ((0.25, "up"), (0.75, "down")) and m.density == 0.75


@settings(max_examples=60, deadline=None)
@given(a=st.floats(1e-6, 1e-2), slope=st.floats(1e-6, 1e-1), frac=st.floats(0.02, 0.98),
       grid=st.lists(st.floats(0, 1), min_size=2, max_size=12, unique=True))
def test_break_even_is_exact_for_time_linear_in_density(a, slope, frac, grid):
    ds = sorted(grid)
    if ds[-1] - ds[0] < 1e-6:
        return
    d_star = ds[0] + frac * (ds[-1] - ds[0])
    base = a + slope * d_star
    b = sp.break_even(ds, [a + slope * d for d in ds], base)
    assert b.kind in ("interpolated", "exact")
    assert b.density == pytest.approx(d_star, rel=1e-7, abs=1e-9)
    assert [c[1] for c in b.crossings] == ["down"]


@pytest.mark.parametrize("args, match", [
    (((0.1, 0.5), (1.0,), 1.0), "one time per density"),
    (((0.5, 0.1), (1.0, 2.0), 1.0), "ascending"),
    (((0.1, 0.5), (1.0, -2.0), 1.0), "positive"),
    (((0.1, 0.5), (1.0, 2.0), float("nan")), "positive"),
])
def test_break_even_bad_input(args, match):
    with pytest.raises(IosimError, match=match):
        sp.break_even(*args)


def test_parse_densities():
    assert sp.parse_densities("0.5, 0.1,0.5,1") == (0.1, 0.5, 1.0)
    assert sp.parse_densities([1, 0]) == (0.0, 1.0)
    for bad, match in (("", "comma-separated"), ("0.1,,0.2", "comma-separated"), ("a", "not a number"),
                       ("1.5", "outside"), ("-0.1", "outside"), ("nan", "outside")):
        with pytest.raises(IosimError, match=match):
            sp.parse_densities(bad)


# --- kernel roles ----------------------------------------------------------------------------------------------------

def _attn(p, name):
    k, _ = sc.sparse_fwd_kernel(p, KernelConfig(64, 64), np.ones((-(-p.seq_q // 64), -(-p.seq_kv // 64)), bool),
                                name=name)
    return k


def test_kernel_roles_follow_the_schedule_structure():
    p = Problem(1, 2, 2, 300, 300, 64, "bf16", True)
    t = sc.attention_tensors(p)
    kp = TensorSpec("Kp", (1, 2, 5, 64), 4, "scratch")
    sc_ = TensorSpec("S", (1, 2, 5, 5), 4, "scratch")
    idx = TensorSpec("I", (1, 2, 5, 2), 4, "scratch")
    pool = sc.pool_kernel("pool", t["K"], kp, 64)
    score = sc.score_kernel("score", kp, kp, sc_)  # one GEMM, no PV: not attention
    select = sc.select_kernel("select", sc_, idx)
    ks = (pool, score, select, _attn(p, "cmp"), select, _attn(p, "sel"), sc.pool_kernel("combine", t["O"], kp, 64))
    s = Schedule("x", p, KernelConfig(64, 64), t | {"Kp": kp, "S": sc_, "I": idx}, ks)
    roles, note = sp.kernel_roles(s)
    assert roles == (sp.PREPASS,) * 3 + (sp.SPARSE, sp.PREPASS, sp.SPARSE, sp.REDUCTION) and note is None
    roles, note = sp.kernel_roles(Schedule("y", p, KernelConfig(), t | {"Kp": kp, "S": sc_}, (pool, score)))
    assert roles == (sp.PREPASS, sp.SPARSE) and "score" in note  # no attention kernel: the most matmul FLOPs


def test_discovery(sparse_methods):
    algs = sp.sparse_algorithms()
    assert set(sparse_methods) <= set(algs)
    assert not {"t_no_density", "block_sparse", "flash2"} & set(algs)
    assert all(a.build.__module__.startswith("iosim.models.sparse") for a in algs.values())
    for name, match in (("flash2", "not a sparse method"), ("t_no_density", "not a sparse method"),
                        ("nope", "not a registered algorithm")):
        with pytest.raises(IosimError, match=match):
            sp.check_algorithm(name)


# --- whole method vs independent predictions ------------------------------------------------------------------------

@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # read-only
@given(n=st.integers(65, 700), heads=st.integers(1, 3), causal=st.booleans(), d=st.sampled_from([64, 128]),
       dens=st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.6, 1.0]), min_size=2, max_size=3, unique=True))
def test_curve_against_independent_predictions(sparse_methods, n, heads, causal, d, dens):
    p = Problem(1, heads, heads, n, n, d, "bf16", causal)
    c = sp.curve("h100", p, "t_pool_sparse", dens, {"pool": 32})
    base = {name: predict("h100", p, KernelConfig(), kernel=name, l2=False).time_s for name in ("fa2", "fa3")}
    base["flash2"] = predict("h100", p, KernelConfig(), "flash2", l2=False).time_s
    assert {b.name: b.time_s for b in c.baselines} == pytest.approx(base, rel=1e-12)
    assert [b for b in c.notes if "fa4" in b]  # fa4 does not run on sm90: said, not dropped silently
    assert c.roles == (("pool_k", sp.PREPASS), ("sparse_fwd", sp.SPARSE))
    for pt in c.points:
        pr = predict("h100", p, None, "t_pool_sparse", l2=False, params={"density": pt.density, "pool": 32})
        times = [k.time_s for k in pr.time.kernels]
        assert pt.time_s == pytest.approx(pr.time_s, rel=1e-12)
        assert (pt.prepass_s, pt.sparse_s, pt.reduction_s) == pytest.approx((times[0], times[1], 0.0), rel=1e-12)
        assert pt.prepass_share == pytest.approx(times[0] / pr.time_s, rel=1e-12)
        assert pt.attention_flops == pr.counts.kernels[1].matmul_flops
        assert dict(pt.speedup) == pytest.approx({k: v / pr.time_s for k, v in base.items()}, rel=1e-12)
    full_pt = next((pt for pt in c.points if pt.density == 1.0), None)
    if full_pt is not None and not causal:  # every block kept: QKᵀ and PV over all N² pairs, as FA2's
        assert full_pt.attention_flops == 4 * heads * n * n * d == c.baseline().matmul_flops
    ts = [pt.time_s for pt in c.points]
    for b in c.break_even:  # time grows with density here: the crossing is numpy's interpolation of base in time
        if ts[0] < b_time(c, b) <= ts[-1] and all(x < y for x, y in zip(ts, ts[1:])):
            assert b.density == pytest.approx(float(np.interp(b_time(c, b), ts, c_ds(c))), rel=1e-9)


def b_time(c, b):
    return c.baseline(b.baseline).time_s


def c_ds(c):
    return [pt.density for pt in c.points]


def test_break_even_of_a_method_linear_in_density(sparse_methods):
    """t_linear_copy's predicted time is affine in density (the test checks it); its break-even against FA2 is then
    (t_FA2 − t(0)) / (t(1) − t(0)), computed here from independent predictions."""
    p = Problem(1, 1, 1, 256, 256, 64, "bf16", False)
    fa2 = predict("h100", p, KernelConfig(), kernel="fa2", l2=False).time_s

    def t(dens, rows):
        return predict("h100", p, None, "t_linear_copy", l2=False, params={"density": dens, "rows": rows}).time_s

    probe = 1_000_000
    t0, t1 = t(0.0, probe), t(1.0, probe)
    assert t0 < fa2  # the copy's fixed cost alone is below FA2's time
    rows = int(round((fa2 - t0) / (0.37 * (t1 - t0) / probe) / 100)) * 100  # crossing near 0.37, between samples
    t0, t1 = t(0.0, rows), t(1.0, rows)
    assert t(0.5, rows) == pytest.approx((t0 + t1) / 2, rel=1e-12)  # affine: the hand formula is exact
    c = sp.curve("h100", p, "t_linear_copy", (0.1, 0.25, 0.5, 0.75, 1.0), {"rows": rows})
    b = next(b for b in c.break_even if b.baseline == "fa2")
    assert b.kind == "interpolated" and "interpolated" in b.text
    assert b.density == pytest.approx((fa2 - t0) / (t1 - t0), rel=1e-9)
    assert 0.25 < b.density < 0.5
    assert c.roles == (("copy_rows", sp.SPARSE),) and any("most matmul FLOPs" in n for n in c.notes)


def test_tail_bias_is_said(sparse_methods):
    small = sp.curve("h100", Problem(1, 16, 16, 4096, 4096, 128, "bf16", True), "t_pool_sparse", (1.0,))
    assert any(n.startswith("tail:") for n in small.notes)
    flat = sp.curve("h100", Problem(1, 16, 16, 4096, 4096, 128, "bf16", False), "t_pool_sparse", (1.0,))
    assert not any(n.startswith("tail:") for n in flat.notes)  # no causal imbalance to leave out


def test_curve_bad_parameters(sparse_methods):
    p = Problem(1, 1, 1, 256, 256, 64, "bf16", True)
    with pytest.raises(IosimError, match="--densities"):
        sp.curve("h100", p, "t_pool_sparse", (0.1,), {"density": 0.2})
    with pytest.raises(IosimError, match="takes no parameter 'stride'"):
        sp.curve("h100", p, "t_pool_sparse", (0.1,), {"stride": 8})
    with pytest.raises(IosimError, match="outside"):
        sp.curve("h100", p, "t_pool_sparse", (0.1, 2.0))
    with pytest.raises(IosimError, match="unknown hardware"):
        sp.curve("h999", p, "t_pool_sparse", (0.1,))


# --- the command -------------------------------------------------------------------------------------------------------

def _cli(argv):
    from iosim import cli_sparsity
    ap = argparse.ArgumentParser(prog="iosim")
    cli_sparsity.add_parser(ap.add_subparsers(dest="command"))
    out = io.StringIO()
    rc = cli_sparsity.run(ap.parse_args(["sparsity", *argv]), out)
    return rc, out.getvalue()


def test_cli_json_and_table(sparse_methods):
    argv = ["--algorithm", "t_pool_sparse", "--hardware", "h100,b200", "--seq-q", "1000", "--heads", "2",
            "--head-dim", "64", "--causal", "--densities", "0.1,0.5,1", "--param", "pool=32"]
    rc, text = _cli(argv + ["--json"])
    doc = json.loads(text)
    assert rc == 0 and doc["densities"] == [0.1, 0.5, 1.0] and not doc["l2"] and doc["failed"] == {}
    assert [c["hardware"] for c in doc["curves"]] == ["h100", "b200"]
    h100, b200 = doc["curves"]
    assert [b["name"] for b in h100["baselines"]] == ["fa2", "fa3", "flash2"]
    assert [b["name"] for b in b200["baselines"]] == ["fa2", "fa4", "flash2"]
    assert h100["params"] == {"pool": 32} and h100["problem"]["seq_q"] == 1000
    for c in doc["curves"]:
        base = {b["name"]: b["time_s"] for b in c["baselines"]}
        for pt in c["points"]:
            assert pt["speedup"] == pytest.approx({k: v / pt["time_s"] for k, v in base.items()})
            assert pt["prepass_s"] + pt["sparse_s"] + pt["reduction_s"] == pytest.approx(pt["time_s"])
    rc, text = _cli(argv)
    assert rc == 0
    assert "no L2 model" in text and "break-even vs fa2:" in text and "break-even density per hardware" in text
    assert "pre-pass: pool_k; sparse: sparse_fwd" in text


@pytest.mark.parametrize("argv, match", [
    (["--algorithm", "flash2"], "not a sparse method"),
    ([], "give --algorithm"),
    (["--algorithm", "t_pool_sparse", "--densities", "0.1,2"], "outside"),
    (["--algorithm", "t_pool_sparse", "--densities", "x"], "not a number"),
    (["--algorithm", "t_pool_sparse", "--param", "density=0.2"], "--densities"),
    (["--algorithm", "t_pool_sparse", "--param", "stride=4"], "takes no parameter"),
    (["--algorithm", "t_pool_sparse", "--param", "pool"], "KEY=VALUE"),
    (["--algorithm", "t_pool_sparse", "--hardware", "h100,,b200"], "separated by commas"),
    (["--algorithm", "t_pool_sparse", "--hardware", "h999"], "unknown hardware"),
    (["--algorithm", "t_pool_sparse", "--seq-q", "-3"], "seq-q"),
    (["--algorithm", "t_pool_sparse", "--jobs", "-1"], "--jobs"),
])
def test_cli_bad_input(sparse_methods, argv, match):
    with pytest.raises(IosimError, match=match):
        _cli(argv)


def test_cli_one_profile_failing_does_not_hide_the_others(sparse_methods):
    # FA2's 128×64 tiles at d = 128 need more shared memory than a V100 SM has: v100 fails, h100 prints
    rc, text = _cli(["--algorithm", "t_pool_sparse", "--hardware", "h100,v100", "--seq-q", "512", "--heads", "1",
                     "--densities", "0.5,1"])
    assert rc == 1 and "v100: failed:" in text and "t_pool_sparse on NVIDIA H100" in text


# --- the report page ---------------------------------------------------------------------------------------------------

def test_report_page(sparse_methods, tmp_path):
    from iosim.report import ReportConfig
    from iosim.report_sparsity import generate_sparsity
    cfg = ReportConfig(hardware=("h100",), algorithms=("t_pool_sparse",), seqs=(512, 1000), heads=2, head_dim=64,
                       causal=True, out=str(tmp_path))
    res = generate_sparsity(cfg, progress=False, densities=(0.2, 1.0))
    assert res.failures == []
    assert set(res.files) == {"sparsity.csv", "breakeven.csv", "sparsity.json", "sparsity.png", "index.html",
                              "report.md"}
    import pandas as pd
    df = pd.read_csv(tmp_path / "sparsity.csv")
    assert len(df) == 2 * 2 and set(df["N"]) == {512, 1000}
    be = pd.read_csv(tmp_path / "breakeven.csv")
    assert set(be["baseline"]) == {"fa2", "fa3", "flash2"}
    md = (tmp_path / "report.md").read_text()
    assert "Break-even densities" in md and "sparsity.png" in md
    again = tmp_path / "again"
    generate_sparsity(ReportConfig(**{**cfg.__dict__, "out": str(again)}), progress=False, densities=(0.2, 1.0))
    for f in ("sparsity.csv", "breakeven.csv", "sparsity.json", "report.md", "sparsity.png"):
        assert (again / f).read_bytes() == (tmp_path / f).read_bytes(), f  # deterministic
    with pytest.raises(IosimError, match="not a sparse method"):
        generate_sparsity(ReportConfig(**{**cfg.__dict__, "algorithms": ("flash2",)}), progress=False)


# --- the tile chooser and hints take a sparse method's parameters ------------------------------------------------------

def test_tiles_and_hints_take_method_parameters(sparse_methods):
    from iosim.hints import config_entries
    from iosim.hwprofile import load_hardware
    from iosim.tiles import candidates, choose
    hw, p = load_hardware("h100"), Problem(1, 2, 2, 1000, 1000, 64, "bf16", True)
    ch = choose(hw, p, "t_pool_sparse", block_m=(64, 128), block_n=(64,), params={"density": 0.3, "pool": 32})
    assert ch.params == {"density": 0.3, "pool": 32} and ch.to_dict()["params"] == ch.params
    best = ch.best
    cfg = KernelConfig(best.block_m, best.block_n, best.num_warps, best.num_stages, band_loop=True)
    pr = predict(hw, p, cfg, "t_pool_sparse", l2=False, params={"density": 0.3, "pool": 32})
    assert best.time_s == pytest.approx(pr.time_s, rel=1e-12)  # the same schedule as predict builds
    dense = candidates(hw, p, "t_pool_sparse", block_m=(64,), block_n=(64,), num_warps=(4,), num_stages=(2,))[0]
    sparse = candidates(hw, p, "t_pool_sparse", block_m=(64,), block_n=(64,), num_warps=(4,), num_stages=(2,),
                        params={"density": 0.3})[0]
    assert sparse.time_s < dense.time_s
    with pytest.raises(IosimError, match="takes no parameter"):
        candidates(hw, p, "t_pool_sparse", params={"stride": 2})
    e = config_entries(hw, p, "t_pool_sparse", top=1, params={"density": 0.3})
    assert e[0]["iosim"]["params"] == {"density": 0.3}


# --- every registered family runs through the tool --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(sp.sparse_algorithms()))
def test_every_registered_family(name):
    p = Problem(1, 2, 2, 2048, 2048, 128, "bf16", True)
    try:
        c = sp.curve("h100", p, name, (0.3, 1.0))
    except IosimError as e:  # a family that does not model this problem says so in one line
        assert "\n" not in str(e)
        pytest.skip(f"{name}: {e}")
    for pt in c.points:
        assert pt.prepass_s + pt.sparse_s + pt.reduction_s == pytest.approx(pt.time_s, rel=1e-12)
        assert 0 <= pt.prepass_share < 1 and pt.sparse_s > 0
    assert any(r == sp.SPARSE for _, r in c.roles)
