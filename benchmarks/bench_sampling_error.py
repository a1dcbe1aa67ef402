"""Set-sampling error of the L2 model, measured: every case predicted with the default stride and with stride 1.

    .venv/bin/python benchmarks/bench_sampling_error.py [--json benchmarks/results/sampling_error.json]

The L2 is simulated on 1 in ``stride`` sets (``iosim.memory.l2.choose_stride``); the result claims ``exact`` when every
access covers whole aligned groups, else it is an estimate. For each case of ``CASES`` (fixed before any error was
looked at: FA2/flex/Triton presets and the standard, split-KV, block-sparse and FA2-backward algorithms; ragged N,
causal, GQA, d 64/128/96; small enough that stride 1 runs in seconds) this runs the default stride and the largest
stride that can be exact on the profile's L2 (``L2Geometry.exact_stride``: with duplicated partitions, the home
granule; added after the first run showed that the default stride, above it on every built-in profile, never claims
exact), each against stride 1: DRAM read and write bytes and their relative error (sampled − stride 1) / stride 1.
A run that claims exact must have zero error: any other is listed under ``claim_exact_failures`` and the script
exits 1. Summary per stride, over the non-exact runs: n, median, 95th percentile and worst |error| of the read and
of the write bytes. ``iosim.memory.sampling`` carries this summary as data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from iosim.atomic import atomic_write_text
from iosim.hwprofile import load_hardware
from iosim.masks import random_block_mask
from iosim.memory.l2 import L2Geometry
from iosim.pipeline import predict
from iosim.problem import KernelConfig, Problem

# (hardware, kernel preset or algorithm, B, H, Hkv, Nq, Nkv, d, causal, block-mask density or None)
PRESETS = ("fa2", "flex", "triton-tutorial", "iosim-triton")
CASES = (
    ("h100", "fa2", 1, 8, 8, 2048, 2048, 128, False, None),
    ("h100", "fa2", 1, 4, 4, 4096, 4096, 128, True, None),
    ("h100", "fa2", 1, 8, 2, 8192, 8192, 128, True, None),
    ("h100", "fa2", 1, 2, 2, 16384, 16384, 128, True, None),
    ("h100", "fa2", 1, 4, 4, 16384, 16384, 64, False, None),
    ("h100", "fa2", 1, 8, 8, 3000, 3000, 128, True, None),
    ("h100", "fa2", 1, 4, 4, 5000, 5000, 96, False, None),
    ("h100", "fa2", 1, 2, 2, 12345, 12345, 64, True, None),
    ("h100", "fa2", 1, 8, 8, 2048, 8192, 128, False, None),
    ("h200", "fa2", 1, 8, 8, 8192, 8192, 128, True, None),
    ("h200", "fa2", 1, 4, 1, 16384, 16384, 128, True, None),
    ("h200", "fa2", 1, 4, 4, 6000, 6000, 96, True, None),
    ("a100", "fa2", 1, 8, 8, 4096, 4096, 128, False, None),
    ("a100", "fa2", 1, 4, 4, 10000, 10000, 64, True, None),
    ("b200", "fa2", 1, 8, 8, 8192, 8192, 128, True, None),
    ("h100", "flex", 1, 8, 8, 4096, 4096, 128, True, None),
    ("h100", "flex", 1, 4, 1, 16384, 16384, 64, True, None),
    ("h100", "flex", 1, 4, 4, 7000, 7000, 96, False, None),
    ("h200", "flex", 1, 8, 2, 8192, 8192, 128, False, None),
    ("h100", "flex", 1, 4, 4, 8192, 8192, 128, True, 0.3),
    ("h100", "triton-tutorial", 1, 8, 8, 4096, 4096, 64, True, None),
    ("h100", "triton-tutorial", 1, 2, 2, 16384, 16384, 128, False, None),
    ("h200", "triton-tutorial", 1, 4, 4, 9000, 9000, 128, True, None),
    ("a100", "triton-tutorial", 1, 4, 4, 8192, 8192, 64, False, None),
    ("h100", "iosim-triton", 1, 4, 4, 8192, 8192, 128, True, None),
    ("h100", "flash2", 1, 8, 8, 8192, 8192, 128, True, None),
    ("h100", "standard", 1, 4, 4, 2048, 2048, 64, False, None),
    ("h100", "standard", 1, 2, 2, 4096, 4096, 128, True, None),
    ("h200", "standard", 1, 2, 2, 3000, 3000, 96, False, None),
    ("h100", "splitkv", 4, 8, 2, 1, 16384, 128, False, None),
    ("h100", "splitkv", 2, 8, 8, 64, 8192, 64, False, None),
    ("h200", "splitkv", 1, 4, 4, 4096, 4096, 128, True, None),
    ("h100", "splitkv", 8, 4, 1, 1, 10000, 96, False, None),
    ("h100", "block_sparse", 1, 4, 4, 8192, 8192, 128, False, 0.5),
    ("h100", "block_sparse", 1, 2, 2, 16384, 16384, 64, True, 0.3),
    ("h200", "block_sparse", 1, 4, 4, 5000, 5000, 128, False, None),
    ("h100", "flash2_bwd", 1, 4, 4, 2048, 2048, 128, True, None),
    ("h100", "flash2_bwd", 1, 4, 4, 4096, 4096, 64, False, None),
    ("h200", "flash2_bwd", 1, 2, 2, 3000, 3000, 96, True, None),
    ("h100", "flash2_bwd", 1, 2, 1, 8192, 8192, 128, True, None),
)
SPARSE_TILE = 128  # block_sparse cases: 128 × 128 tiles, the mask over them


def _run(case, stride):
    hw, who, b, h, hkv, nq, nkv, d, causal, density = case
    p = Problem(b, h, hkv, nq, nkv, d, "bf16", causal)
    kernel = who if who in PRESETS else None
    config = KernelConfig(block_m=SPARSE_TILE, block_n=SPARSE_TILE) if who == "block_sparse" else None
    mask = None
    if density is not None:
        block = SPARSE_TILE if who == "block_sparse" else 128  # flex: its sparse block (iosim.masks.SPARSE_BLOCK)
        mask = random_block_mask(b, h, nq, nkv, block, density, seed=0, causal=causal)
    t0 = time.perf_counter()
    pred = predict(hw, p, config, "flash2" if kernel else who, kernel=kernel, block_mask=mask, l2_stride=stride)
    l2 = pred.to_dict()["l2"]
    return pred.dram_read_bytes, pred.dram_write_bytes, l2["sampling_stride"], l2["exact"], time.perf_counter() - t0


def exact_capable_stride(hw: str, stride: int) -> int:
    """The largest power of two ≤ ``stride`` at which sampling on ``hw``'s L2 can be exact."""
    geom = L2Geometry.from_hardware(load_hardware(hw))
    while stride > 1 and not geom.exact_stride(stride):
        stride //= 2
    return stride


def _rel(sampled: int, exact: int) -> float:
    return (sampled - exact) / exact if exact else float(sampled != 0)


def summarize(rows: list[dict]) -> list[dict]:
    """Per stride, over the non-exact rows: n, and the median, p95 and worst |error| of DRAM read and write bytes."""
    out = []
    for k in sorted({r["stride"] for r in rows if not r["exact"]}):
        sel = [r for r in rows if r["stride"] == k and not r["exact"]]
        s = {"stride": k, "n": len(sel)}
        for q in ("read", "write"):
            e = np.abs([r[f"{q}_error"] for r in sel])
            s |= {f"{q}_median_abs_error": float(np.median(e)), f"{q}_p95_abs_error": float(np.percentile(e, 95)),
                  f"{q}_worst_abs_error": float(e.max())}
        out.append(s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="benchmarks/results/sampling_error.json")
    args = ap.parse_args()
    rows = []
    for case in CASES:
        hw, who, b, h, hkv, nq, nkv, d, causal, density = case
        r_1, w_1, _, _, t_1 = _run(case, 1)
        default = None
        for which in ("default", "exact-capable"):
            r_s, w_s, k, exact, t_s = _run(case, default and exact_capable_stride(hw, default))
            default = default or k
            er, ew = _rel(r_s, r_1), _rel(w_s, w_1)
            rows.append({"hardware": hw, "kernel": who, "batch": b, "heads": h, "kv_heads": hkv, "seq_q": nq,
                         "seq_kv": nkv, "head_dim": d, "causal": causal, "mask_density": density, "which": which,
                         "stride": k, "exact": exact, "dram_read_bytes_sampled": r_s, "dram_read_bytes_stride1": r_1,
                         "dram_write_bytes_sampled": w_s, "dram_write_bytes_stride1": w_1, "read_error": er,
                         "write_error": ew, "sampled_s": round(t_s, 3), "stride1_s": round(t_1, 3)})
            print(f"{hw:5} {who:16} B={b} H={h}/{hkv} N={nq}/{nkv} d={d} {'causal' if causal else 'full  '} "
                  f"{'' if density is None else f'mask {density} '}stride {k:3} {'exact   ' if exact else 'estimate'}: "
                  f"read {100 * er:+.3f}%, write {100 * ew:+.3f}% ({t_s:.2f} s vs {t_1:.2f} s)", flush=True)
    failures = [r for r in rows if r["exact"] and (r["read_error"] or r["write_error"])]
    summary = summarize(rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"source": "benchmarks/bench_sampling_error.py", "date": datetime.date.today().isoformat(),
              "commit": commit, "error": "(sampled - stride 1) / stride 1 of DRAM read and write bytes",
              "summary": summary,
              "claim_exact_runs": sum(r["exact"] for r in rows), "claim_exact_failures": failures, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"\n|error| over the non-exact runs\n{'stride':>6} {'n':>4}  {'read: median':>12} {'p95':>8} {'worst':>8}  "
          f"{'write: median':>13} {'p95':>8} {'worst':>8}")
    for s in summary:
        print(f"{s['stride']:>6} {s['n']:>4}  " + "  ".join(
            f"{100 * s[q + '_median_abs_error']:>{12 + (q == 'write')}.3f}% {100 * s[q + '_p95_abs_error']:>7.3f}% "
            f"{100 * s[q + '_worst_abs_error']:>7.3f}%" for q in ("read", "write")))
    print(f"claimed exact: {result['claim_exact_runs']} runs, {len(failures)} with a nonzero error; wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
