"""DRAM/L2 validation sweep (issue 9): PyTorch SDPA flash (FA2) and FlexAttention under Nsight Compute.

Device command (from the repository root; the carried ``.devwheels`` folder holds the sympy + mpmath wheels, the
device has no network):

    python -m pip install -q --no-deps .devwheels/*.whl && python -m pip install -q --no-deps --no-build-isolation . \
      && python benchmarks/gpu/validate_l2.py --out "$OUT"

Without a GPU, ``python benchmarks/gpu/validate_l2.py --dry-run`` lists the cases, checks the case list (work bound,
memory, SDPA's limits) and builds every case's iosim schedule (``fa2`` / ``flex`` presets, the same block-mask tables
the GPU run hands to FlexAttention) on the CPU; if torch is importable it also builds the BlockMasks on the CPU.

How it measures (the style of measure_sdpa.py): ``ncu`` runs worker processes of this script, ``--group-size``
cases per process (ncu writes its CSV only when the process exits, so a crash or timeout loses one group). ncu runs
with ``--clock-control none``, the default cache control (all caches flushed before each profiled kernel) and
``--profile-from-start off``: each case first runs once unprofiled (Flex compiles then), then, between
cudaProfilerStart/Stop, a tiny Triton marker kernel whose grid size is the case id and the measured call. The first
attention kernel after a marker is attributed to that case. Counters: METRICS (+ EXTRA_METRICS; if a group returns no
rows with them, it is rerun with METRICS only).

Implementations:
* ``sdpa`` — ``F.scaled_dot_product_attention`` under ``sdpa_kernel([SDPBackend.FLASH_ATTENTION])``, bf16, no grad;
  GQA through ``enable_gqa=True`` (the flash backend accepts Hkv < Hq natively in torch ≥ 2.5; if the installed torch
  refuses, that case's row says so in ``error`` and GQA is covered by the Flex cases only). SDPA refuses causal with
  Nq ≠ Nkv, so every case has Nq = Nkv.
* ``flex`` — ``torch.compile(flex_attention, dynamic=False)`` with ``kernel_options`` pinning BLOCK_M, BLOCK_N,
  num_warps, num_stages to ``iosim.presets.flex_tiles`` (so the ``flex`` preset is exactly what ran); recompile
  limits raised (past them torch silently falls back to eager). Block masks (causal and/or random block-sparse) are
  built from ``iosim.masks.flex_block_tables`` with ``BlockMask.from_kv_blocks`` (partial = diagonal blocks with a
  causal mask_mod, full = the rest) — the very tables the model visits; dense non-causal runs without a block mask.

Output under --out (at most 5 files): ``measured.csv`` (one row per case), ``ncu_raw.csv`` (every group's raw ncu
page, each after a ``# group <i>`` line), ``log.txt``, ``device.txt``, ``cases.csv``.
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

from measure_sdpa import parse_raw  # noqa: E402  (ncu --csv --page raw: one row per kernel)

# id, impl, B, Hq, Hkv, N, d, causal, density (0 = no random block mask), seed
CASES = [
    # SDPA flash (FA2 preset)
    (1, "sdpa", 1, 16, 16, 8192, 128, 1, 0.0, 0),
    (2, "sdpa", 2, 8, 8, 8192, 64, 0, 0.0, 0),
    (3, "sdpa", 1, 16, 16, 32768, 128, 1, 0.0, 0),
    (4, "sdpa", 1, 8, 8, 65536, 128, 1, 0.0, 0),
    (5, "sdpa", 1, 8, 8, 131072, 64, 1, 0.0, 0),
    (6, "sdpa", 1, 32, 32, 16384, 64, 1, 0.0, 0),
    (7, "sdpa", 1, 16, 16, 65536, 128, 0, 0.0, 0),
    (8, "sdpa", 1, 8, 8, 131072, 128, 0, 0.0, 0),
    (9, "sdpa", 2, 16, 16, 32768, 64, 0, 0.0, 0),
    (10, "sdpa", 1, 24, 24, 24576, 128, 1, 0.0, 0),
    (11, "sdpa", 1, 16, 16, 131072, 64, 1, 0.0, 0),
    (12, "sdpa", 1, 32, 8, 32768, 128, 1, 0.0, 0),      # GQA 4:1 (if the flash backend accepts enable_gqa)
    (13, "sdpa", 1, 16, 2, 65536, 64, 0, 0.0, 0),       # GQA 8:1, non-causal
    # FlexAttention (flex preset)
    (14, "flex", 1, 16, 16, 16384, 128, 0, 0.0, 0),
    (15, "flex", 1, 16, 16, 32768, 128, 1, 0.0, 0),
    (16, "flex", 1, 8, 8, 65536, 64, 1, 0.0, 0),
    (17, "flex", 1, 16, 16, 65536, 128, 0, 0.0, 0),
    (18, "flex", 1, 32, 8, 32768, 128, 1, 0.0, 0),      # GQA 4:1
    (19, "flex", 1, 16, 2, 65536, 128, 1, 0.0, 0),      # GQA 8:1
    (20, "flex", 1, 32, 8, 16384, 64, 0, 0.0, 0),       # GQA 4:1, non-causal
    (21, "flex", 1, 8, 8, 131072, 64, 1, 0.0, 0),
    (22, "flex", 1, 32, 32, 8192, 128, 1, 0.0, 0),
    (23, "flex", 1, 16, 16, 32768, 128, 0, 0.5, 1),     # random block-sparse
    (24, "flex", 1, 16, 16, 65536, 64, 1, 0.4, 2),      # random block-sparse, causal
    (25, "flex", 1, 16, 16, 16384, 64, 0, 0.3, 3),      # random block-sparse
    (26, "flex", 2, 8, 8, 32768, 128, 1, 0.5, 4),       # random block-sparse, causal
    (27, "flex", 1, 16, 4, 65536, 128, 0, 0.3, 5),      # random block-sparse, GQA 4:1
    # Set 2 (ids > 100): held out — shapes chosen after the L2 model choices were made on set 1 (cases 1–27)
    (101, "sdpa", 1, 12, 12, 49152, 128, 1, 0.0, 0),
    (102, "sdpa", 1, 8, 8, 98304, 64, 1, 0.0, 0),
    (103, "sdpa", 1, 24, 24, 40960, 64, 0, 0.0, 0),
    (104, "sdpa", 1, 8, 8, 98304, 128, 0, 0.0, 0),
    (105, "sdpa", 1, 32, 4, 49152, 64, 1, 0.0, 0),      # GQA 8:1
    (106, "sdpa", 1, 24, 8, 24576, 128, 0, 0.0, 0),     # GQA 3:1
    (107, "sdpa", 1, 16, 16, 20480, 128, 1, 0.0, 0),
    (108, "sdpa", 1, 4, 4, 131072, 128, 1, 0.0, 0),
    (109, "flex", 1, 12, 12, 49152, 128, 1, 0.0, 0),
    (110, "flex", 1, 8, 8, 98304, 64, 0, 0.0, 0),
    (111, "flex", 1, 24, 6, 40960, 128, 1, 0.0, 0),     # GQA 4:1
    (112, "flex", 1, 16, 4, 98304, 64, 1, 0.0, 0),      # GQA 4:1
    (113, "flex", 1, 16, 16, 49152, 128, 0, 0.4, 11),   # random block-sparse
    (114, "flex", 1, 8, 8, 98304, 64, 1, 0.6, 12),      # random block-sparse, causal
    (115, "flex", 1, 32, 8, 32768, 128, 1, 0.25, 13),   # random block-sparse, causal, GQA 4:1
    (116, "flex", 1, 32, 32, 12288, 128, 1, 0.0, 0),
    (117, "flex", 4, 8, 8, 16384, 64, 1, 0.0, 0),
    # Set 3 (ids > 200): held out — new shapes measured on the H200 on 2026-12-03 after the session-4 model choices
    # (LRU, drift by KV walk direction) were made on set 1; compared once, at the end
    (201, "sdpa", 1, 16, 16, 57344, 128, 1, 0.0, 0),
    (202, "sdpa", 1, 8, 8, 114688, 64, 1, 0.0, 0),
    (203, "sdpa", 1, 12, 12, 81920, 128, 0, 0.0, 0),
    (204, "sdpa", 1, 32, 8, 65536, 64, 0, 0.0, 0),      # GQA 4:1, non-causal
    (205, "sdpa", 2, 16, 16, 28672, 128, 1, 0.0, 0),
    (206, "sdpa", 1, 24, 24, 36864, 64, 1, 0.0, 0),
    (207, "sdpa", 1, 16, 4, 40960, 128, 1, 0.0, 0),     # GQA 4:1
    (208, "sdpa", 1, 6, 6, 114688, 128, 1, 0.0, 0),
    (209, "flex", 1, 16, 16, 57344, 64, 1, 0.0, 0),
    (210, "flex", 1, 8, 8, 114688, 128, 1, 0.0, 0),
    (211, "flex", 1, 16, 16, 81920, 128, 0, 0.0, 0),
    (212, "flex", 1, 32, 8, 49152, 64, 0, 0.0, 0),      # GQA 4:1, non-causal
    (213, "flex", 1, 16, 16, 65536, 128, 1, 0.5, 21),   # random block-sparse, causal
    (214, "flex", 1, 8, 8, 81920, 64, 0, 0.35, 22),     # random block-sparse
    (215, "flex", 2, 16, 4, 24576, 128, 1, 0.0, 0),     # GQA 4:1
    (216, "flex", 1, 24, 24, 28672, 64, 1, 0.0, 0),
    # Set 4 (ids > 300): held out — new shapes measured on the H200 on 2026-12-04 before the session-6 choice of the
    # way spread and drift (made on sets 1 of both GPUs); compared once, after those values were committed
    (301, "sdpa", 1, 12, 12, 65536, 128, 1, 0.0, 0),
    (302, "sdpa", 1, 8, 8, 81920, 64, 1, 0.0, 0),
    (303, "sdpa", 1, 32, 32, 20480, 128, 1, 0.0, 0),
    (304, "sdpa", 1, 16, 8, 49152, 128, 1, 0.0, 0),     # GQA 2:1
    (305, "sdpa", 2, 8, 8, 57344, 64, 1, 0.0, 0),
    (306, "sdpa", 1, 4, 4, 163840, 128, 1, 0.0, 0),
    (307, "sdpa", 1, 24, 24, 49152, 64, 1, 0.0, 0),
    (308, "sdpa", 1, 16, 16, 98304, 64, 0, 0.0, 0),
    (309, "flex", 1, 12, 12, 65536, 128, 1, 0.0, 0),
    (310, "flex", 1, 8, 8, 81920, 64, 1, 0.0, 0),
    (311, "flex", 1, 32, 32, 20480, 128, 1, 0.0, 0),
    (312, "flex", 1, 16, 8, 49152, 128, 1, 0.0, 0),     # GQA 2:1
    (313, "flex", 1, 16, 16, 49152, 64, 1, 0.5, 31),    # random block-sparse, causal
    (314, "flex", 1, 8, 8, 98304, 128, 0, 0.3, 32),     # random block-sparse
    (315, "flex", 2, 8, 8, 57344, 64, 1, 0.0, 0),
    (316, "flex", 1, 16, 16, 65536, 64, 0, 0.0, 0),
    # Set 5 (ids > 500): held out — new shapes measured on the H200 on 2026-12-04 after the session-6 choices were
    # committed (547265d); compared once
    (501, "sdpa", 1, 10, 10, 73728, 128, 1, 0.0, 0),
    (502, "sdpa", 1, 12, 12, 106496, 64, 1, 0.0, 0),
    (503, "sdpa", 3, 8, 8, 36864, 128, 1, 0.0, 0),
    (504, "sdpa", 1, 32, 4, 57344, 128, 1, 0.0, 0),     # GQA 8:1
    (505, "sdpa", 1, 20, 20, 40960, 64, 1, 0.0, 0),
    (506, "sdpa", 1, 8, 8, 147456, 64, 1, 0.0, 0),
    (507, "sdpa", 1, 8, 8, 114688, 128, 0, 0.0, 0),
    (508, "sdpa", 1, 24, 6, 65536, 64, 0, 0.0, 0),      # GQA 4:1, non-causal
    (509, "flex", 1, 10, 10, 73728, 128, 1, 0.0, 0),
    (510, "flex", 1, 12, 12, 106496, 64, 1, 0.0, 0),
    (511, "flex", 3, 8, 8, 36864, 128, 1, 0.0, 0),
    (512, "flex", 1, 32, 4, 57344, 128, 1, 0.0, 0),     # GQA 8:1
    (513, "flex", 1, 16, 16, 57344, 128, 1, 0.4, 51),   # random block-sparse, causal
    (514, "flex", 1, 12, 12, 73728, 64, 0, 0.25, 52),   # random block-sparse
    (515, "flex", 1, 8, 8, 147456, 64, 1, 0.0, 0),
    (516, "flex", 1, 8, 8, 114688, 128, 0, 0.0, 0),
    # Set 6 (ids > 600): held out — new shapes chosen on 2026-12-05 (issue 18) to be L2-bound by the fixed rule
    # (iosim/validation_rule.py: 15 of 16 on both GPUs, 606 the one that is not), listed and committed before they
    # were measured, after every model choice; compared once
    (601, "sdpa", 1, 12, 12, 90112, 128, 1, 0.0, 0),
    (602, "sdpa", 1, 16, 4, 81920, 128, 1, 0.0, 0),     # GQA 4:1
    (603, "sdpa", 1, 8, 8, 131072, 64, 1, 0.0, 0),
    (604, "sdpa", 2, 8, 8, 65536, 128, 1, 0.0, 0),
    (605, "sdpa", 1, 8, 8, 98304, 128, 0, 0.0, 0),
    (606, "sdpa", 1, 32, 8, 40960, 128, 1, 0.0, 0),     # GQA 4:1
    (607, "sdpa", 1, 6, 6, 196608, 64, 1, 0.0, 0),
    (608, "sdpa", 1, 16, 2, 65536, 128, 0, 0.0, 0),     # GQA 8:1, non-causal
    (609, "flex", 1, 12, 12, 90112, 128, 1, 0.0, 0),
    (610, "flex", 1, 16, 4, 81920, 128, 1, 0.0, 0),     # GQA 4:1
    (611, "flex", 1, 8, 8, 131072, 64, 1, 0.0, 0),
    (612, "flex", 2, 8, 8, 65536, 128, 1, 0.0, 0),
    (613, "flex", 1, 8, 8, 98304, 128, 0, 0.0, 0),
    (614, "flex", 1, 16, 16, 81920, 128, 1, 0.45, 61),  # random block-sparse, causal
    (615, "flex", 1, 8, 8, 131072, 64, 0, 0.3, 62),     # random block-sparse
    (616, "flex", 1, 6, 6, 196608, 64, 1, 0.0, 0),
]
COLS = ["id", "impl", "B", "Hq", "Hkv", "N", "d", "causal", "density", "seed"]
METRICS = ["dram__bytes_read.sum", "dram__bytes_write.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
           "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum", "lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum",
           "gpu__time_duration.sum"]
EXTRA_METRICS = ["launch__grid_size", "launch__block_size", "launch__registers_per_thread",
                 "launch__shared_mem_per_block_dynamic"]
KERNEL_REGEX = "flash_fwd|iosim_marker|triton_tem|flex_attention"
MAX_FLOPS = 1.0e14        # ~0.3 s per kernel at ~350 TFLOP/s
SPARSE_BLOCK = 128


def case_dict(c) -> dict:
    return dict(zip(COLS, c))


def flops(c: dict) -> float:
    f = 4.0 * c["B"] * c["Hq"] * c["N"] ** 2 * c["d"]
    if c["causal"]:
        f /= 2
    if c["density"]:
        f *= c["density"]
    return f


def qkv_bytes(c: dict) -> int:
    return 2 * c["B"] * c["N"] * c["d"] * (c["Hq"] + 2 * c["Hkv"])


def flex_options(c: dict) -> dict:
    from iosim.presets import flex_tiles
    bm, bn, stages, warps = flex_tiles("bf16", c["d"])
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_stages": stages, "num_warps": warps}


def mask_tables(c: dict):
    """The BlockMask tables of a Flex case (None: dense non-causal, no block mask) — shared with compare_l2.py."""
    from iosim.masks import flex_block_tables, random_block_mask
    if not c["density"] and not c["causal"]:
        return None
    bm = None
    if c["density"]:
        bm = random_block_mask(c["B"], c["Hq"], c["N"], c["N"], SPARSE_BLOCK, c["density"], c["seed"],
                               bool(c["causal"]))
    return flex_block_tables(bm, c["N"], c["N"], bool(c["causal"]), SPARSE_BLOCK)


def build_block_mask(c: dict, device: str):
    import torch
    from torch.nn.attention.flex_attention import BlockMask
    tabs = mask_tables(c)
    if tabs is None:
        return None

    def causal_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def t(name):
        return torch.from_numpy(tabs[name]).to(device=device, dtype=torch.int32).contiguous()

    return BlockMask.from_kv_blocks(kv_num_blocks=t("kv_num_blocks"), kv_indices=t("kv_indices"),
                                    full_kv_num_blocks=t("full_kv_num_blocks"), full_kv_indices=t("full_kv_indices"),
                                    BLOCK_SIZE=SPARSE_BLOCK, mask_mod=causal_mod if c["causal"] else None,
                                    seq_lengths=(c["N"], c["N"]))


def make_call(c: dict):
    import torch
    import torch.nn.functional as F
    g = torch.Generator(device="cuda").manual_seed(1000 + c["id"])
    shape_q = (c["B"], c["Hq"], c["N"], c["d"])
    shape_kv = (c["B"], c["Hkv"], c["N"], c["d"])
    q = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=g)
    gqa = c["Hq"] != c["Hkv"]
    if c["impl"] == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def call():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=bool(c["causal"]), enable_gqa=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=bool(c["causal"]))
        return call
    from iosim.validate import _flex_fn  # torch.compile(flex_attention), recompile limits raised

    fn = _flex_fn()
    bmask = build_block_mask(c, "cuda")
    opts = flex_options(c)

    def call():
        if gqa:
            return fn(q, k, v, block_mask=bmask, enable_gqa=True, kernel_options=opts)
        return fn(q, k, v, block_mask=bmask, kernel_options=opts)
    return call


def worker(ids: list[int]) -> None:
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_marker(x_ptr):
        pid = tl.program_id(0)
        if pid < 0:
            tl.store(x_ptr, pid)

    buf = torch.zeros(1, device="cuda", dtype=torch.int32)
    iosim_marker[(1,)](buf)  # compile the marker outside the profiled range
    torch.cuda.synchronize()
    table = {c[0]: case_dict(c) for c in CASES}
    with torch.no_grad():
        for cid in ids:
            c = table[cid]
            t0 = time.time()
            try:
                call = make_call(c)
                o = call()  # warm-up (Flex compiles here), not profiled
                torch.cuda.synchronize()
                del o
                torch.cuda.profiler.start()
                iosim_marker[(cid,)](buf)
                o = call()
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
                ok = bool(torch.isfinite(o).all())
                print(f"case {cid} done in {time.time() - t0:.1f}s finite={ok}", flush=True)
                del o, call
            except Exception as e:  # one case failing must not lose the group
                try:
                    torch.cuda.profiler.stop()
                except Exception:
                    pass
                print(f"case {cid} FAILED: {type(e).__name__}: {str(e)[:400]}", flush=True)
            torch.cuda.empty_cache()


def num(s: str) -> float:
    s = (s or "").replace(",", "").strip()
    try:
        return float(s)
    except ValueError:
        return float("nan")


def run_group(gi: int, ids: list[int], metrics: list[str], timeout: int, log) -> tuple[list[dict], str, str]:
    cmd = ["ncu", "--target-processes", "all", "--clock-control", "none", "--profile-from-start", "off",
           "-k", f"regex:{KERNEL_REGEX}", "--metrics", ",".join(metrics), "--csv", "--page", "raw",
           sys.executable, os.path.abspath(__file__), "--worker", ",".join(map(str, ids))]
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = "timeout", -1
    log.write(f"# group {gi} cases {ids} rc={rc} wall={time.time() - t:.1f}s metrics={len(metrics)}\n")
    log.write("\n".join(ln for ln in text.splitlines() if not ln.startswith('"'))[-20000:] + "\n")
    log.write(err[-20000:] + "\n")
    log.flush()
    print(f"group {gi} {ids}: rc={rc} {time.time() - t:.1f}s", flush=True)
    return parse_raw(text), text, err


def attribute(rows: list[dict], metrics: list[str]) -> dict[int, dict]:
    """case id -> counters of the first attention kernel after that case's marker."""
    out: dict[int, dict] = {}
    case = None
    for r in rows:
        name = r.get("Kernel Name", "")
        if "iosim_marker" in name:
            gs = r.get("Grid Size", "") or r.get("launch__grid_size", "")
            try:
                case = int(str(gs).strip("()").split(",")[0].replace(" ", ""))
            except ValueError:
                case = None
        elif case is not None and case not in out:
            d = {"kernel": name[:200], "grid": r.get("Grid Size", ""), "block": r.get("Block Size", "")}
            for m in metrics:
                d[m] = num(r.get(m, ""))
            out[case] = d
    return out


def groups_of(ids: list[int], size: int) -> list[list[int]]:
    """Consecutive groups of at most ``size`` ids, never mixing implementations (Flex groups share compile state)."""
    table = {c[0]: c for c in CASES}
    out: list[list[int]] = []
    for cid in ids:
        if out and len(out[-1]) < size and table[out[-1][-1]][1] == table[cid][1]:
            out[-1].append(cid)
        else:
            out.append([cid])
    return out


def check_cases(cases: list[dict]) -> list[str]:
    """Problems with the case list (empty = fine)."""
    errs = []
    seen = set()
    for c in cases:
        if c["id"] in seen:
            errs.append(f"case {c['id']}: duplicate id")
        seen.add(c["id"])
        if c["impl"] not in ("sdpa", "flex"):
            errs.append(f"case {c['id']}: unknown impl {c['impl']}")
        if c["Hq"] % c["Hkv"]:
            errs.append(f"case {c['id']}: Hkv does not divide Hq")
        if flops(c) > MAX_FLOPS:
            errs.append(f"case {c['id']}: {flops(c):.2e} FLOPs > {MAX_FLOPS:.0e}")
        if c["impl"] == "sdpa" and c["density"]:
            errs.append(f"case {c['id']}: SDPA flash has no block-sparse mask")
        if c["N"] % SPARSE_BLOCK:
            errs.append(f"case {c['id']}: N must be a multiple of {SPARSE_BLOCK}")
        mem = qkv_bytes(c) + 2 * c["B"] * c["Hq"] * c["N"] * c["d"]
        if mem > 40e9:
            errs.append(f"case {c['id']}: {mem / 1e9:.1f} GB of tensors")
    return errs


def dry_run(cases: list[dict]) -> int:
    """List the cases, check them, build each case's iosim schedule (and, with torch, its BlockMask) on the CPU."""
    from iosim.counts import count
    from iosim.hwprofile import load_hardware
    from iosim.presets import apply, get_preset
    from iosim.problem import KernelConfig, Problem
    hw = load_hardware("h100")
    errs = check_cases(cases)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    print(f"{'id':>3} {'impl':<5} {'B':>2} {'Hq':>3} {'Hkv':>3} {'N':>7} {'d':>4} {'c':>2} {'dens':>5} "
          f"{'TFLOP':>7} {'QKV MB':>8} {'tiles':<16} {'SM rd/QKV':>9}  note")
    for c in cases:
        p = Problem(c["B"], c["Hq"], c["Hkv"], c["N"], c["N"], c["d"], "bf16", bool(c["causal"]))
        kernel = "fa2" if c["impl"] == "sdpa" else "flex"
        t = time.perf_counter()
        try:
            alg, cfg, pre = apply(kernel, p, hw, KernelConfig())
            if c["impl"] == "flex":
                sched = get_preset("flex").schedule(p, cfg, hw, mask_tables(c))
                opts = flex_options(c)
                if (opts["BLOCK_M"], opts["BLOCK_N"], opts["num_warps"], opts["num_stages"]) != \
                        (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages):
                    errs.append(f"case {c['id']}: kernel_options {opts} differ from the preset {cfg}")
                if have_torch and mask_tables(c) is not None:
                    bmask = build_block_mask(c, "cpu")
                    if tuple(bmask.kv_num_blocks.shape[-1:]) != (c["N"] // SPARSE_BLOCK,):
                        errs.append(f"case {c['id']}: BlockMask has {tuple(bmask.kv_num_blocks.shape)} rows")
            else:
                from iosim.pipeline import build_schedule
                sched = build_schedule(alg, p, cfg, hw)
            cnt = count(sched)
            note = f"{time.perf_counter() - t:.1f}s"
            ratio = cnt.sm_read_bytes / qkv_bytes(c)
        except Exception as e:
            errs.append(f"case {c['id']}: schedule failed: {type(e).__name__}: {e}")
            note, ratio, cfg = "FAILED", float("nan"), None
        tiles = f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}" if cfg else "-"
        print(f"{c['id']:>3} {c['impl']:<5} {c['B']:>2} {c['Hq']:>3} {c['Hkv']:>3} {c['N']:>7} {c['d']:>4} "
              f"{c['causal']:>2} {c['density']:>5} {flops(c) / 1e12:>7.1f} {qkv_bytes(c) / 1e6:>8.0f} {tiles:<16} "
              f"{ratio:>9.2f}  {note}", flush=True)
    nflex = len({(c["B"], c["Hq"], c["Hkv"], c["N"], c["d"], c["causal"], c["density"]) for c in cases
                 if c["impl"] == "flex"})
    print(f"{len(cases)} cases ({sum(c['impl'] == 'sdpa' for c in cases)} sdpa, {nflex} distinct Flex compiles); "
          f"torch {'present: BlockMasks built on the CPU' if have_torch else 'absent: BlockMasks not built'}")
    for e in errs:
        print("ERROR", e)
    return 1 if errs else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--cases", default=None, help="comma-separated case ids (default: the --set)")
    ap.add_argument("--set", default="1", choices=["1", "2", "3", "4", "5", "6", "all"],
                    help="1: cases 1–27 (model choices were made on these), 2: held-out cases 101–117, 3: held-out "
                         "cases 201–216 (H200, session 4), 4 and 5: held-out cases 301–316 and 501–516 (H200, session 6), 6: held-out cases 601–616 (2026-12-05), all")
    ap.add_argument("--group-size", type=int, default=5, help="cases per profiled worker process")
    ap.add_argument("--timeout-per-group", type=int, default=150, help="seconds before a worker group is killed")
    ap.add_argument("--dry-run", action="store_true", help="list and check the cases and build their schedules (CPU)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker([int(x) for x in a.worker.split(",")])
        return 0
    in_set = {"1": lambda i: i < 100, "2": lambda i: 100 < i < 200, "3": lambda i: 200 < i < 300,
              "4": lambda i: 300 < i < 400, "5": lambda i: 500 < i < 600, "6": lambda i: 600 < i < 700,
              "all": lambda i: True}[a.set]
    ids = [int(x) for x in a.cases.split(",")] if a.cases else [c[0] for c in CASES if in_set(c[0])]
    known = {c[0] for c in CASES}
    bad = [i for i in ids if i not in known]
    if bad:
        ap.error(f"unknown case ids {bad}")
    cases = [case_dict(c) for c in CASES if c[0] in ids]
    if a.dry_run:
        return dry_run(cases)
    errs = check_cases(cases)
    if errs:
        print("\n".join(errs), file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    import torch
    gpu = torch.cuda.get_device_name(0)
    with open(os.path.join(a.out, "device.txt"), "w") as f:
        p = torch.cuda.get_device_properties(0)
        f.write(f"{p.name} sms={p.multi_processor_count} l2={p.L2_cache_size} torch={torch.__version__}\n")
        try:
            import triton
            f.write(f"triton={triton.__version__}\n")
        except ImportError:
            pass
        f.write(subprocess.run(["ncu", "--version"], capture_output=True, text=True).stdout)
    with open(os.path.join(a.out, "cases.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLS)
        w.writerows([[c[k] for k in COLS] for c in cases])
    metrics = METRICS + EXTRA_METRICS
    results: dict[int, dict] = {}
    t_all = time.time()
    with open(os.path.join(a.out, "ncu_raw.csv"), "w") as raw, open(os.path.join(a.out, "log.txt"), "w") as log:
        for gi, grp in enumerate(groups_of([c["id"] for c in cases], max(1, a.group_size))):
            rows, text, err = run_group(gi, grp, metrics, a.timeout_per_group, log)
            if not rows and metrics != METRICS:
                print("no rows; retrying with the base metrics only", flush=True)
                log.write("no rows with EXTRA_METRICS; base metrics from now on\n")
                metrics = METRICS
                rows, text, err = run_group(gi, grp, metrics, a.timeout_per_group, log)
            raw.write(f"# group {gi} cases {','.join(map(str, grp))}\n")
            raw.write("\n".join(ln for ln in text.splitlines() if ln.startswith('"')) + "\n")
            raw.flush()
            got = attribute(rows, metrics)
            for cid in grp:
                if cid not in got:
                    reason = "no kernel row"
                    for ln in (text + "\n" + err).splitlines():
                        if f"case {cid} FAILED" in ln:
                            reason = ln.strip()[:300]
                    got[cid] = {"error": reason}
            results.update(got)
        log.write(f"total wall {time.time() - t_all:.1f}s\n")
    out_cols = COLS + ["qkv_bytes", "flops"] + METRICS + EXTRA_METRICS + ["kernel", "grid", "block", "gpu", "error"]
    with open(os.path.join(a.out, "measured.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=out_cols, extrasaction="ignore")
        w.writeheader()
        for c in cases:
            d = dict(c, qkv_bytes=qkv_bytes(c), flops=flops(c), gpu=gpu, **results.get(c["id"], {"error": "not run"}))
            w.writerow(d)
    print(f"{'id':>3} {'impl':<5} {'N':>7} {'d':>4} {'c':>2} {'DRAM rd/QKV':>12} {'ms':>8}  kernel")
    for c in cases:
        r = results.get(c["id"], {})
        rd = r.get("dram__bytes_read.sum", float("nan"))
        ms = r.get("gpu__time_duration.sum", float("nan")) / 1e6
        print(f"{c['id']:>3} {c['impl']:<5} {c['N']:>7} {c['d']:>4} {c['causal']:>2} {rd / qkv_bytes(c):>12.3f} "
              f"{ms:>8.3f}  {r.get('kernel', r.get('error', ''))[:60]}")
    print(f"total {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
