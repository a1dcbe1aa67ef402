"""Block-sparse and split-KV decode on the GPU: correctness against float64, time, and ncu SM read bytes against
``iosim.triton_kernels.kernel_schedule``; plus ``config="auto"`` on one dense shape.

    python benchmarks/gpu_schedule_check.py --out $OUT        (runs itself under ncu with --child)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from iosim import validate as V  # noqa: E402
from iosim.counts import count  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402
from iosim.triton_kernels import kernels as K  # noqa: E402
from iosim.triton_kernels.schedule import kernel_schedule  # noqa: E402

# name, B, H, Hkv, Nq, Nkv, d, causal, config, use_tma, sparse density (None = dense / decode), decode
CASES = [
    ("sparse 30% 128x128", 2, 16, 16, 8192, 8192, 128, False, (128, 64, 8, 3), None, 0.3, False),
    ("sparse 50% causal, pointer", 2, 16, 16, 8192, 8192, 128, True, (128, 64, 8, 3), False, 0.5, False),
    ("decode Nq1 H32/8 Nkv65536", 8, 32, 8, 1, 65536, 128, False, (16, 64, 4, 3), None, None, True),
    ("decode Nq4 H16/2 Nkv32768 causal, pointer", 4, 16, 2, 4, 32768, 64, True, (16, 64, 4, 3), False, None, True),
]


def inputs(i, case):
    name, B, H, Hk, nq, nkv, d, causal, cfg, tma, dens, dec = case
    g = torch.Generator(device="cuda").manual_seed(100 + i)
    q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, Hk, nkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, Hk, nkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    bmask = None
    if dens is not None:
        dense = torch.rand(B, H, -(-nq // 128), -(-nkv // 128), device="cuda", generator=g) < dens
        dense[..., 0] = True
        bmask = K.BlockMask.from_dense(dense, 128, 128)
    kc = KernelConfig(*cfg)
    tc = K.TritonConfig(kc, use_tma=tma, num_splits=None)
    fn = lambda: K.attention(q, k, v, causal=causal, block_mask=bmask, config=tc, decode=dec)  # noqa: E731
    return q, k, v, bmask, fn


def f64(q, k, v, causal, mask):
    """float64 attention, 4 heads at a time (bounded memory)."""
    g = q.shape[1] // k.shape[1]
    nq, nkv = q.shape[2], k.shape[2]
    allowed0 = torch.ones(nq, nkv, dtype=torch.bool, device="cuda")
    if causal:
        allowed0 &= torch.arange(nkv, device="cuda")[None, :] <= torch.arange(nq, device="cuda")[:, None] + nkv - nq
    out = torch.empty(q.shape, dtype=torch.float64, device="cuda")
    for b in range(q.shape[0]):
        for h0 in range(0, q.shape[1], 4):
            hs = slice(h0, min(h0 + 4, q.shape[1]))
            qd = q[b, hs].double()
            kd = k[b].double().repeat_interleave(g, 0)[hs]
            vd = v[b].double().repeat_interleave(g, 0)[hs]
            s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
            allowed = allowed0 if mask is None else allowed0 & mask[min(b, mask.shape[0] - 1), hs]
            s = s.masked_fill(~allowed, float("-inf"))
            m = s.amax(-1, keepdim=True)
            m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            p = torch.exp(s - m)
            l = p.sum(-1, keepdim=True)
            out[b, hs] = (p @ vd) / torch.where(l == 0, torch.ones_like(l), l)
            del s, p
    return out


def child():
    begin, end = V._marker_kernels()
    buf = torch.zeros(len(CASES) + 1, dtype=torch.int32, device="cuda")
    for i, case in enumerate(CASES):
        q, k, v, bmask, fn = inputs(i, case)
        fn()
        torch.cuda.synchronize()
        begin[(i + 1,)](buf)
        fn()
        end[(1,)](buf)
        torch.cuda.synchronize()
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child:
        sys.exit(child())
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for i, case in enumerate(CASES):
        name, B, H, Hk, nq, nkv, d, causal, cfg, tma, dens, dec = case
        q, k, v, bmask, fn = inputs(i, case)
        o = fn()
        torch.cuda.synchronize()
        emask = bmask.dense_mask(nq, nkv) if bmask is not None else None
        ref = f64(q, k, v, causal, emask)
        err = ((o.double() - ref).norm() / ref.norm()).item()
        del ref
        ms = V.time_fn(fn)
        p = Problem(B, H, Hk, nq, nkv, d, "bf16", causal)
        sched = kernel_schedule(p, KernelConfig(*cfg), block_mask=bmask, decode=dec, num_sms=sms)
        c = count(sched)
        bytes_min = (q.numel() + k.numel() + v.numel() + q.numel()) * 2
        rows.append({"case": name, "rel_err": f"{err:.3e}", "pass": int(err < 1e-2 and math.isfinite(err)),
                     "time_ms": f"{ms:.4f}", "pred_sm_read_bytes": c.sm_read_bytes,
                     "hbm_floor_GBps": f"{bytes_min / (ms * 1e-3) / 1e9:.0f}", "notes": "; ".join(sched.notes)})
        print(f"{name:<46} err {err:.2e}  {ms:8.3f} ms  predicted SM read {c.sm_read_bytes}", flush=True)
    # config="auto" on one dense shape
    q = torch.randn(4, 16, 16384, 128, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    t0 = time.time()
    K.attention(q, k, v, causal=True, config="auto")
    tune_s = time.time() - t0
    key, best = next(iter(K._TUNED.items()))
    ms = V.time_fn(lambda: K.attention(q, k, v, causal=True, config="auto"))
    fl = V.flops(Problem(4, 16, 16, 16384, 16384, 128, "bf16", True))
    auto = {"shape": "B4 H16 N16384 d128 causal", "chosen": repr(best), "tune_s": round(tune_s, 1),
            "time_ms": round(ms, 4), "tflops": round(fl / ms / 1e9, 1)}
    print("auto:", auto, flush=True)
    # ncu on the four cases
    ncu = V.find_ncu()
    status = "ncu: missing"
    got = {}
    if ncu:
        cmd = [ncu, "--target-processes", "all", "--clock-control", "none", "--cache-control", "all", "--csv",
               "--metrics", ",".join(V.NCU_METRICS), sys.executable, os.path.abspath(__file__), "--child"]
        pr = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        got = V.parse_ncu_csv(pr.stdout)
        status = f"ncu rc={pr.returncode}"
        if pr.returncode:
            print(pr.stderr[-2000:])
    for i, r in enumerate(rows):
        m = got.get(i, {})
        meas = m.get("l1tex__m_xbar2l1tex_read_bytes.sum")
        r["ncu_sm_read_bytes"] = meas
        r["sm_read_err_pct"] = f"{100 * (r['pred_sm_read_bytes'] - meas) / meas:.3f}" if meas else ""
        r["ncu_dram_read_bytes"] = m.get("dram__bytes_read.sum")
        r["ncu_time_ms"] = f"{m['gpu__time_duration.sum'] / 1e6:.4f}" if "gpu__time_duration.sum" in m else ""
        r["ncu_kernels"] = m.get("kernels", "")
    path = os.path.join(a.out, "triton_sparse_decode.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    json.dump({"device": torch.cuda.get_device_name(), "status": status, "auto": auto, "cases": rows},
              open(os.path.join(a.out, "triton_sparse_decode.json"), "w"), indent=1)
    for r in rows:
        print(f"{r['case']:<46} pred {r['pred_sm_read_bytes']} meas {r['ncu_sm_read_bytes']} err% {r['sm_read_err_pct']} "
              f"ncu {r['ncu_time_ms']} ms | {r['ncu_kernels'][:120]}")
    print(status)


if __name__ == "__main__":
    main()
