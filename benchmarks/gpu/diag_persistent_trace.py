"""Diagnostic (issue 21), not a validation set: in what order does the GPU run the work items of iosim's static
persistent Triton forward? The DRAM model of that kernel misses both ways (reports/persistent_dram_notes.md); the
model assumes every worker runs its items back to back at about the same speed. This measures it.

A copy of ``kernels._persistent_fwd_kernel`` that also stores, per item u: %globaltimer before and after the item
(ns, one clock for the whole GPU), %smid and the worker id. Each item is the same ``kernels._fwd_tile`` call as in
the measured kernel, launched with the same grid, tiles, warps and stages (``attention(..., persistent=True)``'s).
No ncu: plain launches (one warm-up, then the traced run). Shapes: the runs of the held-out sets with the worst DRAM
errors both ways (1034, 1041, 1088, 1089) and two the model gets right (1031, 1081).

    python3 -m pip install -q --no-deps --no-build-isolation . && \
      python3 benchmarks/gpu/diag_persistent_trace.py --out "$OUT/ptrace"

Writes one ``trace_<id>.npy`` per case (int64 [items, 4]: start_ns, end_ns, smid, worker) and ``log.txt``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

CASES = {  # id: (B, H, Hkv, N, d, causal, order) as in validate_persistent.py
    1031: (1, 16, 16, 4096, 128, False, "rr"),
    1034: (1, 16, 16, 16384, 128, True, "rr"),
    1041: (1, 16, 16, 32768, 64, False, "lpt"),
    1081: (1, 16, 16, 8192, 128, False, "rr"),
    1088: (1, 32, 32, 4096, 64, False, "lpt"),
    1089: (4, 16, 16, 4096, 128, True, "rr"),
}

import triton  # noqa: E402  (device-only script)
import triton.language as tl  # noqa: E402

from iosim.triton_kernels import kernels as K  # noqa: E402

@triton.jit
def _clock():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                     pack=1)

@triton.jit
def _smid():
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)

@triton.jit
def traced(Q, Kt, V, O, LSE, T,
           stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
           stride_ob, stride_oh, stride_om, stride_lb, stride_lh,
           B, H, G, Nq, Nkv, qk_scale,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
           CAUSAL: tl.constexpr, USE_TMA: tl.constexpr, DESCENDING: tl.constexpr, LPT: tl.constexpr):
    tm = tl.cdiv(Nq, BLOCK_M)
    BH = B * H
    sm = _smid()
    for u in range(tl.program_id(0), tm * BH, tl.num_programs(0)):
        t0 = _clock()
        if LPT:
            i = tm - 1 - u // BH
            b = (u % BH) // H
            h = u % H
        else:
            i = u % tm
            b = (u // tm) % B
            h = u // (tm * B)
        K._fwd_tile(Q, Kt, V, O, LSE, b.to(tl.int64), h.to(tl.int64), i,
                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh,
                    stride_vn, stride_ob, stride_oh, stride_om, stride_lb, stride_lh, G, Nq, Nkv, qk_scale,
                    Q, Q, 0, 0, 0, 0, 0, 0, BLOCK_M, BLOCK_N, HEAD_DIM, CAUSAL, False, BLOCK_M, BLOCK_N, USE_TMA,
                    DESCENDING)
        t1 = _clock()
        tl.store(T + u * 4, t0)
        tl.store(T + u * 4 + 1, t1)
        tl.store(T + u * 4 + 2, sm.to(tl.int64))
        tl.store(T + u * 4 + 3, tl.program_id(0).to(tl.int64))



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    import torch
    from iosim.triton_kernels.schedule import launch_config, persistent_workers
    from iosim.problem import Problem

    log = open(os.path.join(a.out, "log.txt"), "w")
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    log.write(f"{torch.cuda.get_device_name(0)} sms={num_sms} torch={torch.__version__} triton={triton.__version__}\n")
    for cid, (B, H, Hk, N, d, causal, order) in CASES.items():
        try:
            g = torch.Generator(device="cuda").manual_seed(cid)
            q = torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(B, Hk, N, d, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(B, Hk, N, d, device="cuda", dtype=torch.bfloat16, generator=g)
            kc = launch_config(d, causal)
            p = Problem(B, H, Hk, N, N, d, "bf16", causal)
            W = persistent_workers(p, kc, num_sms)
            tm = -(-N // kc.block_m)
            U = tm * B * H
            o = torch.empty_like(q)
            lse = torch.empty((B, H, N), dtype=torch.float32, device="cuda")
            T = torch.zeros((U, 4), dtype=torch.int64, device="cuda")
            use_tma = K._tma_ok(q, k, v, o)
            if use_tma:
                K._ensure_allocator()
            scale = 1.0 / d ** 0.5

            def run():
                traced[(W,)](q, k, v, o, lse, T, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                             *lse.stride()[:2], B, H, H // Hk, N, N, scale * K.LOG2E,
                             BLOCK_M=kc.block_m, BLOCK_N=kc.block_n, HEAD_DIM=d, CAUSAL=causal, USE_TMA=use_tma,
                             DESCENDING=kc.kv_order == "descending", LPT=order == "lpt", num_warps=kc.num_warps,
                             num_stages=kc.num_stages)
            run()
            torch.cuda.synchronize()
            ref = K.attention(q, k, v, causal=causal, persistent=True, order=order)
            err = float((ref.float() - o.float()).abs().max())
            torch.cuda.synchronize()
            T.zero_()
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ev0.record()
            run()
            ev1.record()
            torch.cuda.synchronize()
            t = T.cpu().numpy()
            np.save(os.path.join(a.out, f"trace_{cid}.npy"), t)
            span = (t[:, 1].max() - t[:, 0].min()) / 1e3
            log.write(f"case {cid} W={W} items={U} tiles {kc.block_m}x{kc.block_n} warps {kc.num_warps} stages "
                      f"{kc.num_stages} tma={use_tma} max|o - persistent o|={err:.3g} kernel {ev0.elapsed_time(ev1):.3f} ms "
                      f"trace span {span:.1f} us\n")
        except Exception as e:  # one case failing must not lose the others
            log.write(f"case {cid} FAILED: {type(e).__name__}: {str(e)[:300]}\n")
        log.flush()
    log.close()
    print(open(os.path.join(a.out, "log.txt")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
