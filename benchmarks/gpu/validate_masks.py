"""Mask, varlen and window validation sweep (issue 22): FlexAttention, FA2's local-window and varlen paths (through
``torch.ops.aten._flash_attention_forward``, what SDPA's flash backend calls) and iosim's Triton kernel, under ncu.

Device command (from the repository root):

    python3 -m pip install -q --no-deps --no-build-isolation . && \
      python3 benchmarks/gpu/validate_masks.py --out "$OUT/masks"

All cases are held out: listed and committed (2026-12-05) after the mask, window and varlen models were built and
before any of them was measured; nothing is tuned on them. Each case names its mask as an ``iosim --mask`` spec
(``iosim.maskspec``) and is built from it on the device, so the GPU runs the very mask the model predicts:
* ``flex`` — ``torch.compile(flex_attention)`` with ``kernel_options`` = the flex preset's tiles; the BlockMask is
  ``BlockMask.from_kv_blocks`` of ``maskspec.flex_tables`` (partial then full blocks) with a mask_mod that reads the
  spec's per-row key interval [lo(q), hi(q)] (``MaskSpec.interval``; block masks: no mask_mod, full blocks only).
* ``fa2_window`` — ``aten._flash_attention_forward`` dense (B, N, H, d views of B, H, N, d tensors) with
  window_size_left = W − 1, window_size_right = 0 (``maskspec.fa2_window`` of ``sliding:W``).
* ``fa2_varlen`` — the same op with cum_seq_q = cum_seq_k (packed [total, H, d]; PyTorch's ``mha_varlen_fwd``).
* ``triton_blocks`` — ``iosim.triton_kernels.attention`` with a ``BlockMask.from_dense`` of the spec's visible 128×128
  blocks (the kernel attends every listed block in full).
Output under --out: ``kernels.csv`` (every profiled kernel), ``measured.csv`` (per case), ``ncu_raw.csv``, ``log.txt``,
``device.txt``. Measurement as validate_decode_bwd.py (markers, no kernel filter, caches flushed per kernel).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import validate_decode_bwd as vdb  # noqa: E402  (ncu runner, attribution)

DOCS_A = "document:" + ",".join(["4096"] * 8)                      # 8 equal documents of 32K tokens
DOCS_B = "document:1000,5000,12000,30000,17536"                   # 65,536 tokens, ragged
VARLEN_A = "8192,8192,8192,8192"
VARLEN_B = "1000,5000,12000,30000,17536"
VARLEN_C = "3000,700,16000,9000,4100,1968"
DOCS_C = "document:" + ",".join(["4096"] * 16)                     # 16 equal documents of 64K tokens
VARLEN_D = ",".join(["4096"] * 8)
VARLEN_E = "2000,9000,4000,12000,5384"
VARLEN_F = "16384,16384"
VARLEN_G = ",".join(["1024"] * 16)
VARLEN_H = "30000,2768"
VARLEN_I = "7000,7000,7000,11768"
VARLEN_J = "6000,2000,9000,3000,12768"
VARLEN_K = ",".join(["2048"] * 16)
VARLEN_L = "20000,12768"
DOCS_D = "document:8192,8192,16384,32768"

# id, impl, B, H, Hkv, N, d, mask spec (iosim --mask; "random:DENSITY:SEED" = per-head random 128-blocks), varlen
CASES = [
    (901, "flex", 1, 16, 16, 32768, 128, "sliding:4096", ""),
    (902, "flex", 1, 8, 8, 131072, 64, "sliding:1024", ""),
    (903, "flex", 1, 16, 16, 65536, 128, "chunked:8192", ""),
    (904, "flex", 1, 16, 16, 32768, 128, "prefix:8192", ""),
    (905, "flex", 1, 16, 16, 32768, 128, DOCS_A + "+causal", ""),
    (906, "flex", 1, 8, 8, 65536, 128, DOCS_B, ""),
    (907, "flex", 1, 16, 16, 16384, 128, "random:0.3:71", ""),
    (908, "flex", 1, 4, 4, 131072, 128, "sliding:16384", ""),
    (909, "flex", 1, 32, 8, 32768, 128, "sliding:2048", ""),      # GQA 4:1
    (911, "fa2_window", 1, 16, 16, 32768, 128, "sliding:4096", ""),
    (912, "fa2_window", 1, 8, 8, 131072, 64, "sliding:1024", ""),
    (913, "fa2_window", 1, 16, 16, 65536, 128, "sliding:16384", ""),
    (914, "fa2_window", 1, 32, 32, 16384, 128, "sliding:512", ""),
    (915, "fa2_window", 1, 32, 8, 65536, 128, "sliding:4096", ""),  # GQA 4:1
    (921, "fa2_varlen", 4, 16, 16, 8192, 128, "causal", VARLEN_A),
    (922, "fa2_varlen", 5, 8, 8, 30000, 128, "causal", VARLEN_B),
    (923, "fa2_varlen", 6, 16, 16, 16000, 64, "", VARLEN_C),
    (924, "fa2_varlen", 5, 16, 4, 30000, 128, "", VARLEN_B),          # GQA 4:1
    (931, "triton_blocks", 1, 16, 16, 16384, 128, "random:0.3:72", ""),
    (932, "triton_blocks", 1, 16, 16, 32768, 128, "sliding:4096", ""),
    (933, "triton_blocks", 1, 8, 8, 65536, 64, DOCS_B, ""),
    # ==== set "held2" (ids 941–979): listed 2026-12-06, before any of it was measured, for the L2 set-hash change of
    # issue 22 (varlen) and every mask kind again at new shapes ====
    (941, "flex", 1, 16, 16, 65536, 128, "sliding:2048", ""),
    (942, "flex", 1, 8, 8, 98304, 128, "chunked:4096", ""),
    (943, "flex", 1, 16, 16, 16384, 128, "prefix:2048", ""),
    (944, "flex", 1, 16, 16, 65536, 128, DOCS_C + "+causal", ""),
    (945, "flex", 1, 32, 8, 16384, 128, "random:0.2:91", ""),     # GQA 4:1
    (946, "flex", 1, 16, 16, 32768, 64, "sliding:4096", ""),
    (951, "fa2_window", 1, 16, 16, 98304, 128, "sliding:2048", ""),
    (952, "fa2_window", 1, 32, 8, 32768, 128, "sliding:8192", ""),  # GQA 4:1
    (953, "fa2_window", 1, 16, 16, 32768, 64, "sliding:1024", ""),
    (961, "fa2_varlen", 8, 32, 32, 4096, 128, "causal", VARLEN_D),
    (962, "fa2_varlen", 5, 16, 16, 12000, 128, "", VARLEN_E),
    (963, "fa2_varlen", 2, 32, 8, 16384, 128, "causal", VARLEN_F),  # GQA 4:1
    (964, "fa2_varlen", 16, 16, 16, 1024, 64, "causal", VARLEN_G),
    (965, "fa2_varlen", 2, 8, 8, 30000, 128, "", VARLEN_H),
    (966, "fa2_varlen", 4, 24, 24, 11768, 128, "causal", VARLEN_I),
    (971, "triton_blocks", 1, 16, 16, 32768, 128, "chunked:4096", ""),
    (972, "triton_blocks", 1, 16, 16, 16384, 128, "random:0.5:93", ""),
    # ==== set "held3" (ids 981–999): listed 2026-12-06 before held2 was measured; measured after the L2 set-hash
    # choice that held2 decides (reports/l2_hash_decision.md), so held out for it ====
    (981, "fa2_varlen", 5, 16, 16, 12768, 128, "causal", VARLEN_J),
    (982, "fa2_varlen", 4, 32, 8, 8192, 128, "", VARLEN_A),           # GQA 4:1
    (983, "fa2_varlen", 16, 32, 32, 2048, 64, "causal", VARLEN_K),
    (984, "fa2_varlen", 2, 16, 16, 20000, 128, "causal", VARLEN_L),
    (985, "fa2_window", 1, 32, 32, 32768, 128, "sliding:4096", ""),
    (986, "flex", 1, 16, 16, 65536, 128, DOCS_D, ""),
    (987, "flex", 1, 16, 16, 65536, 128, "sliding:8192", ""),
    (988, "triton_blocks", 1, 16, 16, 65536, 128, "sliding:2048", ""),
]
SETS = {"held": lambda i: i < 940, "held2": lambda i: 940 < i < 980, "held3": lambda i: 980 < i < 1000,
        "all": lambda i: True}
COLS = ["id", "impl", "B", "Hq", "Hkv", "N", "d", "mask", "varlen"]


SPILL_METRICS = ["l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum", "l1tex__t_sectors_pipe_lsu_mem_local_op_ld_lookup_miss.sum",
                 "l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum"]
"""Local-memory (register spill) traffic, added to validate_decode_bwd's metrics from set held2 on: all three known to
the H100's ncu 2025.3.1 (reports/validation/h100/masks_diag_raw/metrics.txt). A local load that misses L1 crosses the
xbar and is counted in l1tex__m_xbar2l1tex_read_bytes (case 902: 1.87 GB of such misses = its SM-read gap)."""


def case_dict(c) -> dict:
    return dict(zip(COLS, c))


def lengths(c: dict) -> list[int]:
    return [int(x) for x in c["varlen"].split(",")] if c["varlen"] else []


def mask_spec(c: dict):
    """The iosim MaskSpec of a case (None: no mask)."""
    import numpy as np
    from iosim.maskspec import MaskSpec, combine
    from iosim.masks import random_block_mask
    m = c["mask"]
    if not m:
        return None
    if m.startswith("random:"):
        _, dens, seed = m.split(":")
        blocks = random_block_mask(1, c["Hq"], c["N"], c["N"], 128, float(dens), int(seed))[0]
        return MaskSpec(m, (), np.ascontiguousarray(blocks), None, 128)
    return combine(m.split("+"))


def problem(c: dict):
    from iosim.problem import Problem
    if c["impl"] == "fa2_varlen":
        return Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", c["mask"] == "causal")
    return Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", False)


def make_call(c: dict):
    import numpy as np
    import torch
    g = torch.Generator(device="cuda").manual_seed(3000 + c["id"])
    B, H, Hk, N, d = c["B"], c["Hq"], c["Hkv"], c["N"], c["d"]

    def rnd(*shape):
        return torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    spec, p = mask_spec(c), problem(c)
    if c["impl"] == "fa2_varlen":
        lens = lengths(c)
        total = sum(lens)
        cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), device="cuda", dtype=torch.int32)
        q, k, v = rnd(total, H, d), rnd(total, Hk, d), rnd(total, Hk, d)
        causal = c["mask"] == "causal"
        return lambda: torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max(lens), max(lens), 0.0, causal,
                                                               False)[0]
    q, k, v = rnd(B, H, N, d), rnd(B, Hk, N, d), rnd(B, Hk, N, d)
    if c["impl"] == "fa2_window":
        from iosim.maskspec import fa2_window
        left, right = fa2_window(spec, N, N)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        return lambda: torch.ops.aten._flash_attention_forward(qt, kt, vt, None, None, N, N, 0.0, False, False,
                                                               window_size_left=left, window_size_right=right)[0]
    if c["impl"] == "triton_blocks":
        from iosim.maskspec import tile_mask
        from iosim.triton_kernels import kernels
        dense = torch.from_numpy(np.ascontiguousarray(tile_mask(spec, p, 128, 128))).to("cuda")
        bm = kernels.BlockMask.from_dense(dense, 128, 128)
        return lambda: kernels.attention(q, k, v, block_mask=bm)
    assert c["impl"] == "flex"
    from torch.nn.attention.flex_attention import BlockMask
    from iosim.maskspec import flex_tables
    from iosim.presets import flex_tiles
    from iosim.validate import _flex_fn
    tabs = flex_tables(spec, p)

    def t(name):
        return torch.from_numpy(np.ascontiguousarray(tabs[name])).to(device="cuda", dtype=torch.int32)
    mask_mod = None
    if spec.elements:
        lo, hi = spec.interval(np.arange(N), N, N)
        lo_t, hi_t = torch.from_numpy(lo).to("cuda"), torch.from_numpy(hi).to("cuda")

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx >= lo_t[q_idx]) & (kv_idx <= hi_t[q_idx])
    bmask = BlockMask.from_kv_blocks(kv_num_blocks=t("kv_num_blocks"), kv_indices=t("kv_indices"),
                                     full_kv_num_blocks=t("full_kv_num_blocks"), full_kv_indices=t("full_kv_indices"),
                                     BLOCK_SIZE=128, mask_mod=mask_mod, seq_lengths=(N, N))
    bm_, bn_, stages, warps = flex_tiles("bf16", d)
    opts = {"BLOCK_M": bm_, "BLOCK_N": bn_, "num_stages": stages, "num_warps": warps}
    fn = _flex_fn()
    gqa = H != Hk
    return lambda: fn(q, k, v, block_mask=bmask, enable_gqa=gqa, kernel_options=opts)


def worker(ids: list[int]) -> None:
    vdb.make_call = make_call
    vdb.CASES = CASES
    vdb.case_dict = case_dict
    vdb.worker(ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--cases", default=None)
    ap.add_argument("--set", default="all", choices=tuple(SETS))
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--timeout-per-group", type=int, default=240)
    ap.add_argument("--dry-run", action="store_true", help="build every case's mask and problem (CPU)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker([int(x) for x in a.worker.split(",")])
        return 0
    ids = [int(x) for x in a.cases.split(",")] if a.cases else [c[0] for c in CASES if SETS[a.set](c[0])]
    cases = [case_dict(c) for c in CASES if c[0] in ids]
    if a.dry_run:
        from iosim.maskspec import describe
        for c in cases:
            spec = mask_spec(c)
            dens = describe(spec, problem(c)) if spec is not None and c["impl"] != "fa2_varlen" else {}
            print(c["id"], c["impl"], c["mask"], c["varlen"], {k: v for k, v in dens.items() if "fraction" in k})
        return 0
    os.makedirs(a.out, exist_ok=True)
    vdb.METRICS.extend(m for m in SPILL_METRICS if m not in vdb.METRICS)
    import torch
    gpu = torch.cuda.get_device_name(0)
    with open(os.path.join(a.out, "device.txt"), "w") as f:
        p = torch.cuda.get_device_properties(0)
        f.write(f"{p.name} sms={p.multi_processor_count} l2={p.L2_cache_size} torch={torch.__version__}\n")
        f.write(str(torch.ops.aten._flash_attention_forward.default._schema) + "\n")
    kernels: list[dict] = []
    t_all = time.time()
    script = os.path.abspath(__file__)
    with open(os.path.join(a.out, "ncu_raw.csv"), "w") as raw, open(os.path.join(a.out, "log.txt"), "w") as log:
        for gi, grp in enumerate(vdb.groups_of([c["id"] for c in cases], max(1, a.group_size))):
            vdb_file = vdb.__file__
            vdb.__file__ = script  # the ncu worker is this script
            try:
                rows, text, err = vdb.run_group(gi, grp, a.timeout_per_group, log)
            finally:
                vdb.__file__ = vdb_file
            raw.write(f"# group {gi} cases {','.join(map(str, grp))}\n")
            raw.write("\n".join(ln for ln in text.splitlines() if ln.startswith('"')) + "\n")
            raw.flush()
            kernels += vdb.attribute(rows)
        log.write(f"total wall {time.time() - t_all:.1f}s\n")
    with open(os.path.join(a.out, "kernels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "kernel", "grid", "block"] + vdb.METRICS)
        w.writeheader()
        w.writerows(kernels)
    per = {c["id"]: [k for k in kernels if k["id"] == c["id"]] for c in cases}
    with open(os.path.join(a.out, "measured.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS + vdb.SUMMED + ["num_kernels", "kernels", "gpu"])
        w.writeheader()
        for c in cases:
            ks = per[c["id"]]
            w.writerow(dict(c, **{m: sum(k[m] for k in ks) if ks else float("nan") for m in vdb.SUMMED},
                            num_kernels=len(ks), kernels=" | ".join(k["kernel"][:80] for k in ks), gpu=gpu))
    for c in cases:
        ks = per[c["id"]]
        print(f"{c['id']:>4} {c['impl']:<13} SM {sum(k['l1tex__m_xbar2l1tex_read_bytes.sum'] for k in ks) / 1e6:>10.1f} MB "
              f"DRAM {sum(k['dram__bytes_read.sum'] for k in ks) / 1e6:>10.1f} MB "
              f"{sum(k['gpu__time_duration.sum'] for k in ks) / 1e3:>9.1f} us  {len(ks)} kernels")
    print(f"total {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
