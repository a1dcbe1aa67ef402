"""One device call: GPU correctness of the Triton kernels, a config sweep, the speed comparison with FlexAttention
and SDPA (flash, cudnn), and ncu counters against iosim's count. Writes CSV/markdown under --out.

    python benchmarks/gpu_attention.py --out $OUT [--seqs 4096,16384,65536] [--tune] [--no-ncu]

Shapes: bf16, batch·N = 65536 tokens, 16 heads, d ∈ {64, 128}, causal and not (iosim.validate.speed_shapes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from iosim import validate as V  # noqa: E402
from iosim.problem import KernelConfig  # noqa: E402
from iosim.triton_kernels import kernels as K  # noqa: E402

CANDIDATES = {
    64: [(128, 64, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 8, 3)],
    128: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
}

# The final sweep: the best of run 1's sweep (CANDIDATES) per (head_dim, causal), the pointer path beside TMA,
# and LPT order (q_order="descending"): the kernel's own config="auto" candidates, (config, use_tma, q_order).
FINAL = K.AUTOTUNE_CANDIDATES

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def f64_ref(q, k, v, causal, mask=None):
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    nq, nkv = q.shape[2], k.shape[2]
    allowed = torch.ones(nq, nkv, dtype=torch.bool, device=q.device)[None, None]
    if causal:
        r = torch.arange(nq, device=q.device)[:, None]
        c = torch.arange(nkv, device=q.device)[None, :]
        allowed = allowed & (c <= r + nkv - nq)
    if mask is not None:
        allowed = allowed & mask
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    return (p @ vd) / torch.where(l == 0, torch.ones_like(l), l)


def correctness(rows):
    """bf16 outputs vs float64 attention: ‖o − ref‖/‖ref‖ < 1e-2 (NaN never passes)."""
    g = torch.Generator(device="cuda").manual_seed(1234)

    def rnd(*s):
        return torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)

    cases = [
        # name, B, H, Hkv, Nq, Nkv, d, causal, cfg, sparse, decode
        ("dense d64", 2, 4, 4, 1024, 1024, 64, False, None, False, False),
        ("causal d128", 2, 4, 4, 1024, 1024, 128, True, None, False, False),
        ("GQA 8/2 causal d128", 1, 8, 2, 1536, 1536, 128, True, None, False, False),
        ("MQA 8/1 d64", 1, 8, 1, 777, 777, 64, False, None, False, False),
        ("ragged Nq1000 Nkv1537 causal", 1, 4, 4, 1000, 1537, 128, True, None, False, False),
        ("ragged Nq1537 Nkv1000 causal (empty rows)", 1, 4, 2, 1537, 1000, 64, True, None, False, False),
        ("ragged Nq999 Nkv1001", 1, 4, 4, 999, 1001, 64, False, None, False, False),
        ("kv descending, grid h,m,b causal", 2, 4, 4, 1100, 1100, 128, True,
         KernelConfig(128, 64, 8, 3, ("h", "m", "b"), "descending"), False, False),
        ("block-sparse 128x128 d128", 1, 4, 4, 2048, 2048, 128, False, KernelConfig(128, 64, 8, 3), True, False),
        ("block-sparse causal d64", 2, 2, 2, 1500, 1500, 64, True, KernelConfig(128, 128, 8, 3), True, False),
        ("decode Nq1 H32/8 Nkv8191 d128", 2, 32, 8, 1, 8191, 128, False, None, False, True),
        ("decode Nq4 H16/2 Nkv5000 causal d64", 1, 16, 2, 4, 5000, 64, True, None, False, True),
    ]
    ok = True
    for name, B, H, Hk, nq, nkv, d, causal, cfg, sparse, dec in cases:
        q, k, v = rnd(B, H, nq, d), rnd(B, Hk, nkv, d), rnd(B, Hk, nkv, d)
        bmask, emask = None, None
        if sparse:
            dense = torch.rand(B, H, -(-nq // 128), -(-nkv // 128), device="cuda", generator=None) < 0.4
            dense[..., 0] = True
            bmask = K.BlockMask.from_dense(dense, 128, 128)
            emask = bmask.dense_mask(nq, nkv)
        for tma in (True, False):
            tc = K.TritonConfig(cfg or KernelConfig(), use_tma=tma)
            try:
                o = K.attention(q, k, v, causal=causal, block_mask=bmask, config=tc, decode=dec)
                torch.cuda.synchronize()
                ref = f64_ref(q, k, v, causal, emask)
                err = ((o.double() - ref).norm() / ref.norm()).item()
                good = math.isfinite(err) and err < 1e-2 and bool(torch.isfinite(o).all())
            except Exception as e:  # report and go on
                err, good = float("nan"), False
                log(f"  {name} tma={tma}: {type(e).__name__}: {str(e)[:300]}")
            ok &= good
            rows.append({"check": name, "tma": int(tma), "rel_err": f"{err:.3e}", "pass": int(good)})
            log(f"  {'PASS' if good else 'FAIL'} {name:<44} tma={int(tma)} rel_err={err:.3e}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "reports/validation/h100"))
    ap.add_argument("--seqs", default="4096,8192,16384,32768,65536")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--tune", action="store_true", help="time every candidate config on every shape")
    ap.add_argument("--tune-tma", action="store_true", help="also time the pointer (non-TMA) path of the default config")
    ap.add_argument("--no-ncu", action="store_true")
    ap.add_argument("--ncu-seqs", default="4096,16384")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--prefix", default="speed")
    ap.add_argument("--final", action="store_true", help="time the FINAL candidates (not CANDIDATES)")
    ap.add_argument("--ncu-impls", default="iosim-triton,flex,sdpa-flash,sdpa-cudnn")
    ap.add_argument("--repeat-seqs", default="", help="shapes at these N are timed a second time (run-to-run spread)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    seqs = tuple(int(x) for x in a.seqs.split(","))
    dims = tuple(int(x) for x in a.head_dims.split(","))
    ncu_seqs = tuple(int(x) for x in a.ncu_seqs.split(","))
    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {V._triton_version()} ncu {V.find_ncu()}")

    if not a.skip_check:
        rows = []
        ok = correctness(rows)
        with open(os.path.join(a.out, "triton_correctness.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "all_pass": ok, "checks": rows}, f, indent=1)
        log(f"correctness: {'ALL PASS' if ok else 'FAILURES'}")

    shapes = V.speed_shapes(seqs, dims)
    cases = []
    repeat = tuple(int(x) for x in a.repeat_seqs.split(",") if x)
    for (b, h, hk, nq, nkv, d, causal) in shapes:
        if a.final:
            n_rounds = 2 if nq in repeat else 1
            for _ in range(n_rounds):
                for cfg, tma, qo in FINAL[(d, causal)]:
                    cases.append(V.Case("iosim-triton", b, h, hk, nq, nkv, d, causal, cfg, use_tma=tma, q_order=qo))
                for impl in ("flex", "sdpa-flash", "sdpa-cudnn"):
                    cases.append(V.Case(impl, b, h, hk, nq, nkv, d, causal))
            continue
        cands = CANDIDATES.get(d, []) if a.tune else []
        kc = K.default_config(d, causal)
        default = (kc.block_m, kc.block_n, kc.num_warps, kc.num_stages)
        for cfg in ([default] + [c for c in cands if c != default]):
            cases.append(V.Case("iosim-triton", b, h, hk, nq, nkv, d, causal, cfg))
            if a.tune_tma and cfg == default:
                cases.append(V.Case("iosim-triton", b, h, hk, nq, nkv, d, causal, cfg, use_tma=False))
        for impl in ("flex", "sdpa-flash", "sdpa-cudnn"):
            cases.append(V.Case(impl, b, h, hk, nq, nkv, d, causal))
    results = V.measure(cases, log=log)

    # Best of our configs per shape; ncu on those and on the references at ncu_seqs.
    best: dict = {}
    for r in results:
        if r.case.impl == "iosim-triton" and r.tflops:
            key = r.case.shape
            if key not in best or r.tflops > best[key].tflops:
                best[key] = r
    status = "ncu: not run"
    if not a.no_ncu:
        ncu_impls = set(a.ncu_impls.split(","))
        sel = [r for r in results if r.case.seq_q in ncu_seqs and r.time_ms is not None and r.case.impl in ncu_impls
               and (r.case.impl != "iosim-triton" or best.get(r.case.shape) is r)]
        # a ragged GQA case of ours: the count must hold off the power-of-two grid too
        extra = V.Case("iosim-triton", 2, 16, 4, 4000, 5000, 128, True, (128, 64, 8, 3))
        extra2 = V.Case("iosim-triton", 2, 16, 4, 4000, 5000, 128, True, (128, 64, 8, 3), use_tma=False)
        ncu_cases = [r.case for r in sel] + [extra, extra2]
        got, status = V.run_ncu(ncu_cases, a.out, log=log)
        for j, r in enumerate(sel):
            r.ncu = got.get(j, {})
        for j, c in enumerate((extra, extra2)):
            rr = V.Result(c, pred_sm_read=V.predicted_sm_read(c), ncu=got.get(len(sel) + j, {}))
            results.append(rr)
    log(status)
    dev = torch.cuda.get_device_name()
    header = (f"# Forward attention, bf16, {dev} (torch {torch.__version__}, triton {V._triton_version()})\n\n"
              "TFLOP/s = 4·d·(visible query-key pairs)·B·H / median time (CUDA events, L2 flushed, >= 5 runs). "
              "B·N = 65536, H = 16. Ours: best of the configs tried (BLOCK_M x BLOCK_N x num_warps x num_stages). "
              f"Flex: torch.compile(flex_attention), default kernel options. {status}.")
    V.write_reports(results, a.out, a.prefix, header)
    V.plot_sm_read(results, os.path.join(a.out, f"{a.prefix}_sm_read.png"))
    print(open(os.path.join(a.out, f"{a.prefix}.md")).read())
    log("done")


if __name__ == "__main__":
    main()
