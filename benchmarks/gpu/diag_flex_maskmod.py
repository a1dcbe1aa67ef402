"""Diagnostic (issue 22), not a validation set: why FlexAttention at d = 64 with a sliding window (validate_masks case
902, B1 H8 N131072 d64 sliding:1024) read 1.74× the SM bytes iosim counts, while d = 128 runs matched to 0.2%.

Hypothesis, written before this ran: validate_masks' mask_mod reads two int64 tensors per score element
(``lo_t[q_idx]``, ``hi_t[q_idx]``: the spec's per-row key interval) in every partial block; at d = 64 the kernel runs
at 255 registers (spills) and those loads and the spills miss L1 and reach L2, bytes the model does not count.
Test: the same case with an index-arithmetic mask_mod (``kv_idx <= q_idx and q_idx - kv_idx < W``, how users write a
sliding window: no tensor loads), and the d = 128 case 901 both ways, under ncu with local-memory and L1 metrics
(only those this ncu knows: ``ncu --query-metrics`` first, so no unknown name fails the run).

    python3 -m pip install -q --no-deps --no-build-isolation . && \
      python3 benchmarks/gpu/diag_flex_maskmod.py --out "$OUT/diag_flex"

Writes kernels.csv, metrics.txt, log.txt under --out.

Outcome (2026-12-06, reports/validation/h100/masks_diag_raw/): 902 ran 2.08 GB of local (spill) loads, 1.87 GB of them
missing L1 — the SM-read gap; 1901 matched 901 (the tensor loads cost nothing at d = 128). 1902 did not run:
``create_block_mask`` built a dense 131072² mask and ran out of memory, so the index-arithmetic variant was not
measured at d = 64.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import validate_decode_bwd as vdb  # noqa: E402
import validate_masks as vm  # noqa: E402

WISH = ["l1tex__t_bytes_pipe_lsu_mem_local_op_ld", "l1tex__t_bytes_pipe_lsu_mem_local_op_st",
        "l1tex__t_sectors_pipe_lsu_mem_local_op_ld_lookup_miss", "l1tex__t_sectors_pipe_lsu_mem_global_op_ld",
        "l1tex__t_sectors_pipe_lsu_mem_global_op_ld_lookup_miss", "l1tex__t_requests_pipe_lsu_mem_global_op_ld",
        "lts__t_sectors_srcunit_tex_op_read", "lts__t_sectors_srcunit_tex_op_read_lookup_hit",
        "smsp__sass_inst_executed_op_local_ld", "smsp__sass_inst_executed_op_global_ld",
        "l1tex__m_xbar2l1tex_read_bytes_mem_global_op_ld", "l1tex__m_xbar2l1tex_read_sectors_mem_lg_op_ld",
        "l1tex__m_l1tex2xbar_write_bytes"]

# id, impl, B, H, Hkv, N, d, mask, varlen — 902 / 901 as in validate_masks; 1902 / 1901 the same shapes and windows
# with an index-arithmetic mask_mod ("flex_arith")
CASES = [c for c in vm.CASES if c[0] in (901, 902)] + [
    (1901, "flex_arith", 1, 16, 16, 32768, 128, "sliding:4096", ""),
    (1902, "flex_arith", 1, 8, 8, 131072, 64, "sliding:1024", ""),
]


def make_call(c: dict):
    if c["impl"] != "flex_arith":
        return vm.make_call(c)
    import torch
    from torch.nn.attention.flex_attention import create_block_mask
    from iosim.presets import flex_tiles
    from iosim.validate import _flex_fn
    g = torch.Generator(device="cuda").manual_seed(3000 + c["id"])
    B, H, Hk, N, d = c["B"], c["Hq"], c["Hkv"], c["N"], c["d"]
    W = int(c["mask"].split(":")[1])

    def rnd(*shape):
        return torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < W)
    bmask = create_block_mask(mask_mod, None, None, N, N, device="cuda", BLOCK_SIZE=128)
    q, k, v = rnd(B, H, N, d), rnd(B, Hk, N, d), rnd(B, Hk, N, d)
    bm_, bn_, stages, warps = flex_tiles("bf16", d)
    opts = {"BLOCK_M": bm_, "BLOCK_N": bn_, "num_stages": stages, "num_warps": warps}
    fn = _flex_fn()
    return lambda: fn(q, k, v, block_mask=bmask, kernel_options=opts)


def case_dict(c) -> dict:
    return dict(zip(vm.COLS, c))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--worker", default=None)
    a = ap.parse_args(argv)
    if a.worker:
        vdb.make_call, vdb.CASES, vdb.case_dict = make_call, CASES, case_dict
        vdb.worker([int(x) for x in a.worker.split(",")])
        return 0
    os.makedirs(a.out, exist_ok=True)
    q = subprocess.run(["ncu", "--query-metrics"], capture_output=True, text=True).stdout
    known = {ln.split()[0] for ln in q.splitlines() if ln.strip()}
    extra = [m + ".sum" for m in WISH if m in known]
    with open(os.path.join(a.out, "metrics.txt"), "w") as f:
        f.write("known: " + " ".join(extra) + "\nunknown: " + " ".join(m for m in WISH if m not in known) + "\n")
    vdb.METRICS.extend(extra)
    vdb.__file__ = os.path.abspath(__file__)   # the ncu worker is this script
    rows = []
    with open(os.path.join(a.out, "log.txt"), "w") as log:
        for gi, grp in enumerate([[901, 1901], [902, 1902]]):
            r, text, err = vdb.run_group(gi, grp, 280, log)
            rows += vdb.attribute(r)
    with open(os.path.join(a.out, "kernels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "kernel", "grid", "block"] + vdb.METRICS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(r["id"], r["kernel"][:40], {k: r[k] for k in vdb.METRICS if k in r})
    return 0


if __name__ == "__main__":
    sys.exit(main())
