"""benchmarks/gpu/ring_attention.py runs without iosim on the GPU machine, so it carries its own copy of the ring plan
and a merge whose kernels iosim prices: both are checked here against iosim.multigpu (torch on the CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from iosim import Problem
from iosim.multigpu import BALANCES, ring_plan
from iosim.multigpu.cost import INIT_KERNELS, MERGE_KERNELS, merge_bytes

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "ring_attention.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("ring_attention_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("P", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("causal", [False, True])
def test_script_calls_are_the_plan(script, P, causal):
    N = 2 * P * 6
    for balance in BALANCES:
        plan = ring_plan(Problem(1, 2, 2, N, N, 64, "bf16", causal), P, balance)
        for r in range(P):
            assert script.positions(balance, N, P, r).tolist() == plan.positions(r).tolist()
            for t in range(P):
                c, got = plan.call(r, t), script.call_of(balance, causal, r, t, P, N // P)
                assert (got is None) == c.empty
                if got is not None:
                    assert got == (c.q_start, c.q_stop, c.k_start, c.k_stop, c.causal)


def _ops_of(fn) -> list[str]:
    """The aten ops ``fn`` runs that launch a kernel (views and metadata ops left out)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Rec(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func._schema.name.startswith(("aten::view", "aten::unsqueeze", "aten::slice", "aten::detach",
                                                 "aten::alias", "aten::as_strided", "aten::expand")):
                seen.append(func._schema.name)
            return out

    with Rec():
        fn()
    return seen


def test_script_merge_launches_the_priced_kernels(script):
    B, H, n, d = 1, 2, 16, 8
    out = torch.zeros(B, H, n, d)
    lse = torch.full((B, H, n), -float("inf"))
    o1, o2 = torch.randn(B, H, n, d).bfloat16(), torch.randn(B, H, n // 2, d).bfloat16()
    l1, l2 = torch.randn(B, H, n), torch.randn(B, H, n // 2)
    first = _ops_of(lambda: script.merge_step(out, lse, o1, l1, slice(0, n), True))
    later = _ops_of(lambda: script.merge_step(out, lse, o2, l2, slice(n // 2, n), False))
    assert len(first) == len(INIT_KERNELS) and len(later) == len(MERGE_KERNELS), (first, later)
    # and the merge is right: the log-sum-exp combination of the two partial results
    new = torch.logaddexp(l1[:, :, n // 2:], l2)
    want = o1[:, :, n // 2:].float() * torch.exp(l1[:, :, n // 2:] - new)[..., None] + \
        o2.float() * torch.exp(l2 - new)[..., None]
    torch.testing.assert_close(out[:, :, n // 2:], want)
    torch.testing.assert_close(out[:, :, :n // 2], o1[:, :, :n // 2].float())
    # the bytes iosim charges for them: per row, 24 + e bytes per element of d and 68 of statistics (e = 2)
    p = Problem(B, H, H, n, n, d, "bf16")
    assert merge_bytes(p, n // 2, False) == B * H * (n // 2) * ((24 + 2) * d + 68)
    assert merge_bytes(p, n, True) == B * H * n * ((4 + 2) * d + 8)
