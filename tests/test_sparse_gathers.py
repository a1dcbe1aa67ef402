"""The permutation/gather sparse family (issue 23): PBS-Attn, DraftAttention, AnchorAttention, S2O, HyperAttention.

With every block kept (HyperAttention: the "full" settings block_size ≥ N, where its approximation is exact) each
method's schedule, executed by the NumPy reference, equals naive attention computed here (causal included: the
permuted copies carry their true positions); the executed tallies equal the counter's; bad parameters give one-line
IosimErrors; the methods run from the CLI with --param."""

import json
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.counts import count
from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem
from iosim.reference import count_mismatches, run
from iosim.registry import get


def naive(q, k, v, causal):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        nq, nk = s.shape[-2:]
        s = np.where(np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _check(alg, n, h, hk, causal, cfg, seed=0, d=16, **kw):
    rng = np.random.default_rng(seed)
    p = Problem(1, h, hk, n, n, d, "bf16", causal)
    sched = get(alg).build(p, cfg, None, **kw)
    q, k, v = rng.standard_normal((1, h, n, d)), rng.standard_normal((1, hk, n, d)), rng.standard_normal((1, hk, n, d))
    res = run(sched, {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(res.tensors["O"], naive(q, k, v, causal), atol=1e-10)
    assert count_mismatches(res, count(sched)) == []
    return sched, res


FULL = [
    ("pbs_attn", 300, 2, 1, True, KernelConfig(block_m=16, block_n=16), dict(density=1.0, block_size=32, segment_size=64)),
    ("pbs_attn", 200, 2, 2, False, KernelConfig(block_m=32, block_n=16), dict(density=1.0, block_size=32, segment_size=96)),
    ("pbs_attn", 60, 1, 1, True, KernelConfig(block_m=16, block_n=16), dict(block_size=32, segment_size=64)),  # SDPA fallback
    ("draftattention", 3 * 64 + 37, 2, 1, False, KernelConfig(), dict(density=1.0, pool_h=4, pool_w=4, latent_h=8,
                                                                      latent_w=8, text_len=37)),
    ("anchorattention", 300, 2, 1, True, KernelConfig(block_m=16, block_n=16), dict(density=1.0, block_size=16, step=4)),
    ("anchorattention", 256, 2, 2, True, KernelConfig(block_m=32, block_n=16), dict(density=1.0, block_size=16, step=4,
                                                                                   local_blocks=2)),
    ("s2o", 300, 2, 1, True, KernelConfig(block_n=32), dict(density=1.0, block_size=32, chunk=8)),
    ("s2o", 150, 2, 2, False, KernelConfig(block_n=16), dict(density=1.0, block_size=16, chunk=16)),
    # HyperAttention at its "full" settings (block_size ≥ N: one block, no sampling) is exact
    ("hyperattention", 200, 2, 1, False, KernelConfig(block_m=16, block_n=16), dict(block_size=256, min_seq_len=64)),
    ("hyperattention", 300, 2, 1, True, KernelConfig(block_m=16, block_n=16), dict(block_size=256, min_seq_len=40)),
    ("hyperattention", 100, 2, 2, False, KernelConfig(block_m=16, block_n=16), dict()),  # below min_seq_len: exact
]


@pytest.mark.parametrize("alg,n,h,hk,causal,cfg,kw", FULL)
def test_full_selection_equals_naive(alg, n, h, hk, causal, cfg, kw):
    _check(alg, n, h, hk, causal, cfg, **kw)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(70, 260), causal=st.booleans(), seed=st.integers(0, 3))
def test_permuted_methods_full_equal_naive_random_shapes(n, causal, seed):
    """Ragged N (no multiple of any tile): PBS and S2O at density 1, HyperAttention at b ≥ N."""
    _check("pbs_attn", n, 2, 1, causal, KernelConfig(block_m=16, block_n=16), seed, density=1.0, block_size=16,
           segment_size=32)
    _check("s2o", n, 2, 2, causal, KernelConfig(block_n=16), seed, density=1.0, block_size=16, chunk=8)
    _check("hyperattention", n, 2, 1, causal, KernelConfig(block_m=16, block_n=16), seed, block_size=512,
           min_seq_len=32)


@pytest.mark.parametrize("alg,kw,msg", [
    ("pbs_attn", dict(segment_size=100), "multiple of block_size"),
    ("pbs_attn", dict(threshold=1.5), "threshold"),
    ("pbs_attn", dict(density=0.5, scores=np.zeros((256, 256))), "give one of"),
    ("pbs_attn", dict(block_size=0), "block_size"),
    ("draftattention", dict(pool_h=5), "must tile the latent frame"),
    ("anchorattention", dict(step=0), "step"),
    ("s2o", dict(chunk=48), "multiple of chunk"),
    ("hyperattention", dict(density=0.2), "does not apply"),
    ("hyperattention", dict(sample_size=-1), "sample_size"),
])
def test_bad_parameters_one_line(alg, kw, msg):
    p = Problem(1, 2, 2, 256, 256, 64, "bf16", alg not in ("draftattention",))
    with pytest.raises(IosimError, match=msg) as e:
        get(alg).build(p, KernelConfig(), None, **kw)
    assert "\n" not in str(e.value)


def test_wrong_problem_kind_refused():
    with pytest.raises(IosimError, match="causal prefill"):
        get("anchorattention").build(Problem(1, 1, 1, 256, 256, 64, "bf16", False), KernelConfig(), None)
    with pytest.raises(IosimError, match="non-causal"):
        get("draftattention").build(Problem(1, 1, 1, 3840, 3840, 64, "bf16", True), KernelConfig(), None)
    with pytest.raises(IosimError, match="prefill"):
        get("pbs_attn").build(Problem(1, 1, 1, 128, 512, 64, "bf16", True), KernelConfig(), None)


@pytest.mark.parametrize("alg,params", [("pbs_attn", ["density=0.4"]), ("s2o", ["density=0.2", "chunk=32"]),
                                        ("anchorattention", ["density=0.1", "theta=8"]),
                                        ("hyperattention", ["block_size=128", "sample_size=64", "min_seq_len=1024"])])
def test_cli_param(alg, params):
    from iosim.cli import main
    out = io.StringIO()
    argv = ["predict", "--algorithm", alg, "--seq-q", "4096", "--seq-kv", "4096", "--heads", "2", "--head-dim", "64",
            "--causal", "--no-l2", "--json"] + [x for kv in params for x in ("--param", kv)]
    import contextlib
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    js = json.loads(out.getvalue())
    assert js["time_s"] > 0 and js["sm_read_bytes"] > 0


def test_cli_unknown_param_refused():
    from iosim.cli import main
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["predict", "--algorithm", "s2o", "--seq-q", "1024", "--head-dim", "64", "--param", "bogus=1"])
    assert rc == 2 and "bogus" in err.getvalue()


@pytest.mark.parametrize("alg,causal,params", [
    ("pbs_attn", True, {"density": 0.4}), ("s2o", True, {"density": 0.2}), ("anchorattention", True, {"density": 0.2}),
    ("hyperattention", True, {"block_size": 128, "sample_size": 64, "min_seq_len": 1024}),
    ("draftattention", False, {"density": 0.2, "latent_h": 16, "latent_w": 32})])
def test_l2_engine_runs_every_gather_schedule(alg, causal, params):
    """The L2 trace expands every kernel (gathered rows, permuted copies, column LSE scratch): DRAM reads cover at
    least Q, K and V once and never exceed what the SMs read."""
    import warnings
    from iosim.pipeline import predict
    p = Problem(1, 4, 2, 4096, 4096, 128, "bf16", causal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = predict("h100", p, KernelConfig(), alg, params=params)
    qkv = 4096 * 128 * 2 * (4 + 2 + 2)
    assert qkv <= pr.dram_read_bytes <= pr.counts.sm_read_bytes and pr.time_s > 0
