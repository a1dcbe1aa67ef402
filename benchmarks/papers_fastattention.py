"""FastAttention (Lin et al., arXiv 2410.16663) against its paper's own headline numbers (issue 24).

    .venv/bin/python benchmarks/papers_fastattention.py   # writes reports/papers/fastattention.json (+ prints rows)

Discipline (as benchmarks/papers.py): the paper numbers, the settings and which iosim algorithm stands for each side
were written into this file and committed BEFORE it was first run; no model code, constant or profile is changed
after the ratios are seen. Ratio = iosim / paper (> 1: iosim predicts a larger speedup / length than the paper).

What could be read of the paper here: only its abstract (arxiv.org/html/2410.16663v1, huggingface.co/papers/2410.16663
and copies; the body's tables and figures were not in any stored copy). So every setting below except the hardware is
``assumed`` (the reason given with it), and an abstract's "up to"/"can achieve" is compared with iosim's MAXIMUM over
the assumed grid (the per-point values are in the JSON).

Headline numbers (abstract, p. 1):
  A. "On Ascend NPUs, our FastAttention can achieve a 10.7x speedup compared to the standard attention
     implementation."                                                           -> predicted (kernel level)
  B. "Llama-7B within FastAttention reaches up to 5.16x higher throughput than within the standard attention."
                                                                                 -> not predicted (end to end)
  C. "On Volta architecture GPUs, FastAttention yields 1.43x speedup compared to its equivalents in xformers."
                                                                                 -> predicted (kernel level)
  D. "Pangu-38B within FastAttention brings 1.46x end-to-end speedup using FasterTransformer."
                                                                                 -> not predicted (end to end)
  E. "Coupled with the proposed CPU-GPU cooperative strategy, FastAttention supports a maximal input length of 256K
     on 8 V100 GPUs."                                                            -> memory arithmetic + host time

Which iosim algorithm stands for each side:
  A. FastAttention = ``fastattention_ascend`` (default tiles 128x256, two-level Cube/Vector tiling, tiling-mask when
     causal) vs standard attention = ``standard`` (three kernels, S and P materialised in HBM in fp16; the PyTorch
     math path, which is what "standard attention implementation" is taken to mean), both on ``ascend910b``.
  C. FastAttention-Volta = ``fastattention_volta`` (FA2's loop on mma.m8n8k4, FA2's tiles fitted to 96 KiB) vs
     xformers' memory-efficient attention = ``flash2`` with 64x64 tiles on ``v100``. Why flash2 and not flash1:
     xformers' forward is CUTLASS FMHA (kernel_forward.h), which keeps one query block per CTA and streams K/V in the
     inner loop with the output held on chip until the end -- FA2's loop order; flash1 (K/V outer loop, O and the
     row statistics re-read and re-written to HBM every KV block) would over-charge xformers. Why 64x64: CUTLASS
     FMHA's forward tiles are 64 queries x 64 keys for head dim <= 64 and 32 x 128 above (as recalled, not read
     here); the brief fixes 64x64, and that is what is run; the 32x128 variant is also recorded (``extra``).
  E. per V100 (32 GB HBM): the share of heads of an assumed model (tensor parallel over 8 GPUs), K/V of all layers
     + the weight share vs 32 GB without offload; standard attention's S per layer on top; the host-link time of one
     layer's K/V (``fastattention_volta`` notes, host_kv_fraction 1.0) against one layer's attention kernel time.

Assumed settings (the paper's are not readable here):
  * Model shape for A, C, E: Llama-7B attention (32 heads, head dim 128, 32 layers, hidden 4096, 6.74e9 params fp16)
    -- A's own end-to-end model is Llama-7B (abstract B), so its attention shape is the natural kernel setting.
  * batch 1, fp16, self-attention prefill (N_q = N_kv), causal (LLM inference) -- non-causal also run and reported.
  * sequence lengths 1K..16K by powers of two. 32K is left out: standard attention's S + P for 32 heads at 32K are
    2 x 32 x 32K^2 x 2 B = 128 GiB > the 910B's 64 GB (and > a V100's 32 GB from 8K on -- on V100 only C runs).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iosim.hwprofile import load_hardware as load_hw  # noqa: E402
from iosim.models.fastattention import host_bytes_volta  # noqa: E402
from iosim.pipeline import predict  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402

OUT = ROOT / "reports" / "papers"
SOURCE = "arXiv 2410.16663 abstract (v1, p. 1)"
PAPER = {"A_speedup_vs_standard_ascend": 10.7, "B_llama7b_e2e_throughput": 5.16, "C_speedup_vs_xformers_volta": 1.43,
         "D_pangu38b_e2e_speedup": 1.46, "E_max_len_8xV100": 262144}

HEADS, HEAD_DIM, DTYPE, BATCH = 32, 128, "fp16", 1  # assumed: Llama-7B attention
LAYERS, HIDDEN, PARAMS = 32, 4096, 6.74e9  # assumed: Llama-7B
SEQS = (1024, 2048, 4096, 8192, 16384)  # assumed
CAUSAL = (True, False)  # causal is the headline setting (assumed); non-causal reported alongside
GPUS_E, SEQ_E = 8, 262144
XFORMERS_TILES = (64, 64)  # the brief's choice; (32, 128) recorded as a variant
XFORMERS_TILES_ALT = (32, 128)


def run(hw, p, algorithm, cfg=None, l2=True):
    """(time_s, bounds, notes, error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = predict(hw, p, cfg or KernelConfig(), algorithm, l2=l2)
        except Exception as e:  # noqa: BLE001 — a model error is a result to report
            return None, None, (), f"{type(e).__name__}: {e}"
    bounds = [(k.name, k.bound) for k in r.time.kernels] if r.time else None
    return r.time_s, bounds, tuple(r.schedule.notes), None


def sweep(hw, fast, other, other_cfg=None):
    pts = []
    for causal in CAUSAL:
        for n in SEQS:
            p = Problem(BATCH, HEADS, HEADS, n, n, HEAD_DIM, DTYPE, causal)
            tf, bf, _, ef = run(hw, p, fast)
            to, bo, _, eo = run(hw, p, other, other_cfg)
            sp = to / tf if tf and to else None
            pts.append(dict(causal=causal, seq=n, t_fast_s=tf, t_other_s=to, speedup=sp, bound_fast=bf,
                            bound_other=bo, error=ef or eo))
            print(f"  {hw} causal={causal} N={n}: {fast} {tf} / {other} {to} -> {sp}", flush=True)
    return pts


def best(pts, causal=None):
    ok = [q for q in pts if q["speedup"] is not None and (causal is None or q["causal"] == causal)]
    return max(ok, key=lambda q: q["speedup"]) if ok else None


def row(key, quantity, setting, paper, pred, note="", extra=None):
    return dict(key=key, source=SOURCE, quantity=quantity, setting=setting, paper=paper, iosim=pred,
                ratio=None if pred is None or not paper else pred / paper, note=note, extra=extra or {})


def main():
    t0 = time.time()
    rows = []
    grid = "batch 1, 32 heads, d 128, fp16, N 1K-16K (assumed)"

    print("A: ascend910b fastattention_ascend vs standard", flush=True)
    a = sweep("ascend910b", "fastattention_ascend", "standard")
    for c in (True, False):
        b = best(a, c)
        rows.append(row("A", f"max speedup fastattention_ascend / standard ({'causal' if c else 'non-causal'})",
                        dict(hw="ascend910b", grid=grid, causal=c, at_seq=b and b["seq"]),
                        PAPER["A_speedup_vs_standard_ascend"], b and b["speedup"],
                        "causal = headline setting (assumed)" if c else "non-causal: alongside",
                        dict(points=[q for q in a if q["causal"] == c])))

    rows.append(row("B", "Llama-7B end-to-end throughput, FastAttention / standard", dict(hw="ascend910b"),
                    PAPER["B_llama7b_e2e_throughput"], None,
                    "not predicted: end to end (all layers, GEMMs, KV cache, batching, CANN runtime); iosim prices "
                    "one attention call"))

    print("C: v100 fastattention_volta vs flash2 64x64 (xformers)", flush=True)
    cfg = KernelConfig().with_tiles(*XFORMERS_TILES)
    c_pts = sweep("v100", "fastattention_volta", "flash2", cfg)
    alt = sweep("v100", "fastattention_volta", "flash2", KernelConfig().with_tiles(*XFORMERS_TILES_ALT))
    for c in (True, False):
        b, b2 = best(c_pts, c), best(alt, c)
        rows.append(row("C", f"max speedup fastattention_volta / xformers≈flash2 64×64 ({'causal' if c else 'non-causal'})",
                        dict(hw="v100", grid=grid, causal=c, at_seq=b and b["seq"]),
                        PAPER["C_speedup_vs_xformers_volta"], b and b["speedup"],
                        "causal = headline setting (assumed)" if c else "non-causal: alongside",
                        dict(points=[q for q in c_pts if q["causal"] == c],
                             variant_flash2_32x128=dict(max_speedup=b2 and b2["speedup"], at_seq=b2 and b2["seq"],
                                                        points=[q for q in alt if q["causal"] == c]))))

    rows.append(row("D", "Pangu-38B end-to-end speedup (FasterTransformer), FastAttention / xformers-equivalent",
                    dict(hw="v100"), PAPER["D_pangu38b_e2e_speedup"], None,
                    "not predicted: end to end (Pangu-38B's shape is not given; FasterTransformer's GEMMs, "
                    "communication and runtime are outside a kernel model)"))

    print("E: 256K on 8 V100", flush=True)
    v100 = load_hw("v100")
    cap = v100.hbm_capacity_bytes
    h_gpu = HEADS // GPUS_E
    e = 2
    w_gpu = PARAMS * e / GPUS_E
    kv_tok = 2 * LAYERS * h_gpu * HEAD_DIM * e  # K and V, all layers, per token per GPU
    s_tok2 = h_gpu * e  # standard attention: one layer's S per GPU, per N^2 (P aliased onto S: the lower bound)
    n_flash = int((cap - w_gpu) // kv_tok)
    # standard: largest N with w + kv_tok*N + s_tok2*N^2 <= cap
    lo, hi = 0, 1 << 22
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if w_gpu + kv_tok * mid + s_tok2 * mid * mid <= cap else (lo, mid - 1)
    n_std = lo
    p256 = Problem(1, h_gpu, h_gpu, SEQ_E, SEQ_E, HEAD_DIM, DTYPE, True)
    t_k, bk, notes, err = run("v100", p256, "fastattention_volta", l2=False)  # L2 off: 6 MiB L2 vs 64 MiB K/V per head
    host_b = host_bytes_volta(p256)
    t_host = host_b / v100.host_bandwidth_bytes_per_s
    mem = dict(gpus=GPUS_E, heads_per_gpu=h_gpu, weights_per_gpu_bytes=w_gpu, kv_all_layers_per_gpu_at_256k_bytes=
               kv_tok * SEQ_E, kv_one_layer_per_gpu_at_256k_bytes=kv_tok * SEQ_E / LAYERS,
               standard_S_one_layer_per_gpu_at_256k_bytes=s_tok2 * SEQ_E ** 2, hbm_bytes=cap,
               max_seq_no_offload_flash=n_flash, max_seq_no_offload_standard=n_std,
               host_bytes_one_layer=host_b, host_time_one_layer_s=t_host, attn_kernel_time_one_layer_s=t_k,
               attn_kernel_bound=bk, host_over_kernel=t_host / t_k if t_k else None, notes=notes, error=err)
    rows.append(row("E", "max input length on 8×V100 without offload, flash-style attention (memory arithmetic)",
                    dict(hw="v100 x8", model="Llama-7B shape (assumed)", tensor_parallel_heads=h_gpu),
                    PAPER["E_max_len_8xV100"], n_flash,
                    "paper: 256K WITH CPU-GPU cooperation; iosim: K/V (all layers) + weight share vs 32 GB, "
                    "activations and workspaces not counted", mem))
    rows.append(row("E", "max input length on 8×V100 without offload, standard attention (S of one layer on top)",
                    dict(hw="v100 x8", model="Llama-7B shape (assumed)"), PAPER["E_max_len_8xV100"], n_std,
                    "standard attention's S (fp16, P written over S) for the GPU's 4 heads"))

    out = dict(paper="FastAttention (arXiv 2410.16663)", source=SOURCE, assumed=dict(
        heads=HEADS, head_dim=HEAD_DIM, dtype=DTYPE, batch=BATCH, seqs=SEQS, layers=LAYERS, params=PARAMS,
        xformers="flash2 with 64x64 tiles (variant 32x128 in extra)"), rows=rows, seconds=time.time() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fastattention.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    for r in rows:
        print(f"{r['key']} | {r['quantity']} | paper {r['paper']} | iosim {r['iosim']} | ratio {r['ratio']}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
