"""Wall time and accuracy of the NumPy reference executor at N = 4096, d = 64 (one batch, one head by default).

Run: ``.venv/bin/python benchmarks/bench_reference.py [--n 4096] [--d 64] [--heads 1]``. For every algorithm it
prints the executor's wall time, its relative error against naive float64 attention (max |O − O_ref| / max |O_ref|),
and whether its byte tallies equal ``iosim.counts`` (they must). Not a test: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from iosim.counts import count
from iosim.problem import KernelConfig
from iosim.reference import problem_for, run
from iosim.registry import get


def naive(q, k, v, do, causal: bool):
    """Float64 O and analytic (dQ, dK, dV) of softmax attention (MHA), bottom-right causal."""
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    nq, nkv, d = q.shape[2], k.shape[2], q.shape[3]
    s = 1 / np.sqrt(d)
    S = q @ np.swapaxes(k, -1, -2) * s
    if causal:
        S = np.where(np.arange(nkv)[None, :] <= np.arange(nq)[:, None] + nkv - nq, S, -np.inf)
    P = np.exp(S - S.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    O = P @ v
    lse = np.log(np.exp(S - S.max(-1, keepdims=True)).sum(-1)) + S.max(-1)
    dP = do @ np.swapaxes(v, -1, -2)
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))
    return O, lse, (s * dS @ k, s * np.swapaxes(dS, -1, -2) @ q, np.swapaxes(P, -1, -2) @ do)


def rel(x, ref) -> float:
    return float(np.abs(x - ref).max() / np.abs(ref).max())


def counts_match(res, sched) -> bool:
    c = count(sched)
    nz = lambda m: {t: v for t, v in m.items() if v}  # noqa: E731
    return all(nz(a.read_bytes) == nz(b.read_bytes) and nz(a.write_bytes) == nz(b.write_bytes)
               for a, b in zip(c.kernels, res.kernels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="report the best of this many runs (shared machines)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((1, a.heads, a.n, a.d)) for _ in range(4))
    rows = [("flash2", {}, KernelConfig()), ("flash1", {}, KernelConfig(block_m=64, block_n=128)),
            ("standard", {}, KernelConfig()), ("splitkv", {"num_splits": 4}, KernelConfig()),
            ("block_sparse", {}, KernelConfig()), ("square_tiling", {}, KernelConfig(block_m=64))]
    print(f"N_q = N_kv = {a.n}, d = {a.d}, heads = {a.heads}; default tiles unless shown; times are wall seconds")
    print(f"{'algorithm':14s} {'causal':6s} {'dtype':8s} {'time_s':>7s} {'rel_err':>9s}  counts==engine")
    for causal in (False, True):
        O_ref, lse_ref, grads = naive(q, k, v, do, causal)
        for alg, kw, cfg in rows:
            if alg == "square_tiling" and causal:
                continue
            sched = get(alg).build(problem_for(q, k, causal=causal), cfg, None, **kw)
            for dt in (np.float64, np.float32):
                inp = {"Q": q.astype(dt), "K": k.astype(dt), "V": v.astype(dt)}
                el = float("inf")
                for _ in range(a.repeat):
                    t0 = time.perf_counter()
                    res = run(sched, inp)
                    el = min(el, time.perf_counter() - t0)
                print(f"{alg:14s} {str(causal):6s} {np.dtype(dt).name:8s} {el:7.2f} {rel(res.tensors['O'], O_ref):9.1e}  "
                      f"{counts_match(res, sched)}")
        sched = get("flash2_bwd").build(problem_for(q, k, causal=causal), KernelConfig())
        for dt in (np.float64, np.float32):
            inp = {"Q": q, "K": k, "V": v, "O": O_ref, "dO": do, "LSE": lse_ref}
            el = float("inf")
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                res = run(sched, {n: x.astype(dt) for n, x in inp.items()})
                el = min(el, time.perf_counter() - t0)
            err = max(rel(res.tensors[n], g) for n, g in zip(("dQ", "dK", "dV"), grads))
            print(f"{'flash2_bwd':14s} {str(causal):6s} {np.dtype(dt).name:8s} {el:7.2f} {err:9.1e}  "
                  f"{counts_match(res, sched)}")


if __name__ == "__main__":
    main()
