"""Decode and backward validation sweep (issue 20): PyTorch SDPA flash (FA2) and iosim's Triton kernels under ncu.

Device command (from the repository root):

    python3 -m pip install -q --no-deps --no-build-isolation . && \
      python3 benchmarks/gpu/validate_decode_bwd.py --set fit --out "$OUT/dec_bwd_fit"

Two sets, both listed and committed before either was measured (2026-12-05):
* ``fit`` (ids 701–799): the first sweep, measured before any model choice was tuned on it. Whatever is tuned on it
  (the backward and decode time terms) makes it in-sample: its rows are reported as *fitted*.
* ``held`` (ids 801–899): the second sweep, measured after every model choice; reported as *held out*. The
  Triton backward cases (861–868) appear only here (the kernel did not exist when ``fit`` was measured).

Implementations (bf16):
* ``sdpa_dec`` — ``F.scaled_dot_product_attention`` under the flash backend, no grad, non-causal (SDPA refuses causal
  with Nq ≠ Nkv), GQA through ``enable_gqa=True``: PyTorch's FA2 ``mha_fwd`` (split-KV kernel + combine, or the plain
  forward when its heuristic gives one split; GQA packing when Nq = 1).
* ``triton_dec`` — ``iosim.triton_kernels.attention(..., decode=True)`` (split-KV decode + combine).
* ``sdpa_bwd`` — ``torch.autograd.grad`` of SDPA flash's output (forward run outside the profiled range): PyTorch's FA2
  ``mha_bwd`` (dot_do_o, dq_dk_dv seqk-parallel, convert_dq; with GQA the two ATen sums over the group).
* ``triton_bwd`` — ``iosim.triton_kernels.kernels.backward_launch`` (iosim's Triton backward: its three kernels).

How it measures (as validate_l2.py): ncu runs worker processes of this script, ``--group-size`` cases per process,
``--clock-control none``, default cache control (caches flushed before each kernel), ``--profile-from-start off``.
Each case runs once unprofiled (Triton compiles then), then, between cudaProfilerStart/Stop, a marker kernel whose grid
size is the case id and the measured call. EVERY kernel after a marker and before the next is the case's (no kernel
filter: an unexpected copy kernel shows up). Output under --out: ``kernels.csv`` (one row per profiled kernel),
``measured.csv`` (per case: sums over its kernels, the kernel names), ``ncu_raw.csv``, ``log.txt``, ``device.txt``.
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

# id, impl, B, Hq, Hkv, Nq, Nkv, d, causal
CASES = [
    # ---- set "fit": first sweep (measured before tuning; in-sample once anything is tuned on it) ----
    (701, "sdpa_dec", 1, 32, 8, 1, 8192, 128, 0),
    (702, "sdpa_dec", 1, 32, 8, 1, 32768, 128, 0),
    (703, "sdpa_dec", 1, 32, 8, 1, 131072, 128, 0),
    (704, "sdpa_dec", 4, 32, 8, 1, 65536, 128, 0),
    (705, "sdpa_dec", 16, 32, 8, 1, 16384, 128, 0),
    (706, "sdpa_dec", 1, 8, 8, 1, 65536, 128, 0),        # G = 1 (no packing)
    (707, "sdpa_dec", 8, 16, 16, 1, 8192, 64, 0),        # G = 1
    (708, "sdpa_dec", 1, 32, 4, 1, 262144, 128, 0),      # G = 8
    (709, "sdpa_dec", 2, 32, 8, 16, 32768, 128, 0),      # speculative decoding: Nq = 16
    (710, "sdpa_dec", 1, 16, 4, 16, 131072, 64, 0),
    (711, "sdpa_dec", 16, 32, 8, 16, 4096, 128, 0),
    (712, "sdpa_dec", 4, 64, 8, 1, 32768, 64, 0),        # G = 8, d = 64
    (721, "triton_dec", 1, 32, 8, 1, 32768, 128, 0),
    (722, "triton_dec", 4, 32, 8, 1, 65536, 128, 0),
    (723, "triton_dec", 1, 32, 4, 1, 262144, 128, 0),
    (724, "triton_dec", 16, 32, 8, 1, 8192, 64, 0),
    (725, "triton_dec", 2, 32, 8, 16, 32768, 128, 0),
    (741, "sdpa_bwd", 1, 16, 16, 4096, 4096, 128, 0),
    (742, "sdpa_bwd", 1, 16, 16, 8192, 8192, 128, 1),
    (743, "sdpa_bwd", 1, 8, 8, 16384, 16384, 64, 0),
    (744, "sdpa_bwd", 1, 16, 16, 32768, 32768, 128, 1),
    (745, "sdpa_bwd", 2, 16, 16, 2048, 2048, 64, 1),
    (746, "sdpa_bwd", 1, 32, 8, 8192, 8192, 128, 1),     # GQA 4:1
    (747, "sdpa_bwd", 1, 16, 4, 16384, 16384, 64, 0),    # GQA 4:1
    (748, "sdpa_bwd", 4, 16, 16, 4096, 4096, 64, 0),
    (749, "sdpa_bwd", 1, 32, 32, 16384, 16384, 128, 0),
    (750, "sdpa_bwd", 1, 16, 2, 32768, 32768, 128, 1),   # GQA 8:1
    # ---- set "held": second sweep, held out (measured after every model choice) ----
    (801, "sdpa_dec", 2, 32, 8, 1, 16384, 128, 0),
    (802, "sdpa_dec", 1, 32, 8, 1, 262144, 128, 0),
    (803, "sdpa_dec", 8, 32, 8, 1, 32768, 128, 0),
    (804, "sdpa_dec", 1, 16, 16, 1, 32768, 128, 0),      # G = 1
    (805, "sdpa_dec", 1, 28, 4, 1, 65536, 128, 0),       # G = 7
    (806, "sdpa_dec", 4, 32, 8, 8, 65536, 128, 0),       # Nq = 8
    (807, "sdpa_dec", 1, 32, 8, 16, 196608, 64, 0),
    (808, "sdpa_dec", 16, 8, 8, 1, 4096, 64, 0),         # G = 1
    (809, "sdpa_dec", 2, 64, 8, 1, 98304, 128, 0),       # G = 8
    (810, "sdpa_dec", 12, 32, 8, 4, 8192, 128, 0),       # Nq = 4
    (821, "triton_dec", 2, 32, 8, 1, 131072, 128, 0),
    (822, "triton_dec", 8, 32, 8, 1, 16384, 128, 0),
    (823, "triton_dec", 1, 16, 16, 1, 65536, 64, 0),
    (824, "triton_dec", 4, 32, 4, 16, 32768, 128, 0),
    (841, "sdpa_bwd", 1, 16, 16, 6144, 6144, 128, 0),
    (842, "sdpa_bwd", 1, 12, 12, 12288, 12288, 128, 1),
    (843, "sdpa_bwd", 2, 8, 8, 16384, 16384, 64, 1),
    (844, "sdpa_bwd", 1, 16, 16, 24576, 24576, 64, 0),
    (845, "sdpa_bwd", 1, 32, 8, 16384, 16384, 128, 0),   # GQA 4:1
    (846, "sdpa_bwd", 1, 16, 4, 32768, 32768, 64, 1),    # GQA 4:1
    (847, "sdpa_bwd", 3, 16, 16, 3072, 3072, 128, 1),
    (848, "sdpa_bwd", 1, 24, 24, 8192, 8192, 64, 0),
    (861, "triton_bwd", 1, 16, 16, 4096, 4096, 128, 0),
    (862, "triton_bwd", 1, 16, 16, 8192, 8192, 128, 1),
    (863, "triton_bwd", 1, 8, 8, 16384, 16384, 64, 0),
    (864, "triton_bwd", 1, 32, 8, 8192, 8192, 128, 1),   # GQA 4:1
    (865, "triton_bwd", 2, 16, 16, 2048, 2048, 64, 1),
    (866, "triton_bwd", 1, 16, 4, 16384, 16384, 64, 0),  # GQA 4:1
    (867, "triton_bwd", 1, 16, 16, 32768, 32768, 128, 1),
    (868, "triton_bwd", 1, 12, 12, 12288, 12288, 128, 0),
]
COLS = ["id", "impl", "B", "Hq", "Hkv", "Nq", "Nkv", "d", "causal"]
SETS = {"fit": lambda i: 700 < i < 800, "held": lambda i: 800 < i < 900, "all": lambda i: True}
METRICS = ["dram__bytes_read.sum", "dram__bytes_write.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
           "gpu__time_duration.sum", "launch__grid_size", "launch__block_size", "launch__registers_per_thread",
           "launch__shared_mem_per_block_dynamic"]
SUMMED = METRICS[:4]


def case_dict(c) -> dict:
    return dict(zip(COLS, c))


def make_call(c: dict):
    """The measured call of a case (inputs built here, outside the profiled range)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = torch.Generator(device="cuda").manual_seed(2000 + c["id"])
    B, H, Hk, Nq, Nk, d = c["B"], c["Hq"], c["Hkv"], c["Nq"], c["Nkv"], c["d"]
    bwd = c["impl"].endswith("_bwd")

    def rnd(*shape):
        return torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v = rnd(B, H, Nq, d), rnd(B, Hk, Nk, d), rnd(B, Hk, Nk, d)
    gqa = H != Hk
    causal = bool(c["causal"])

    def sdpa(q, k, v):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    if c["impl"] == "sdpa_dec":
        return lambda: sdpa(q, k, v)
    if c["impl"] == "triton_dec":
        from iosim.triton_kernels import kernels
        return lambda: kernels.attention(q, k, v, causal=causal, decode=True)
    do = rnd(B, H, Nq, d)
    if c["impl"] == "sdpa_bwd":
        for t in (q, k, v):
            t.requires_grad_(True)
        with torch.enable_grad():
            o = sdpa(q, k, v)
        return lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    assert bwd and c["impl"] == "triton_bwd"
    from iosim.triton_kernels import kernels
    o, lse = kernels.attention(q, k, v, causal=causal, return_lse=True)
    return lambda: kernels.backward_launch(q, k, v, o, lse, do, causal)


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
    iosim_marker[(1,)](buf)
    torch.cuda.synchronize()
    table = {c[0]: case_dict(c) for c in CASES}
    for cid in ids:
        c = table[cid]
        t0 = time.time()
        try:
            call = make_call(c)
            with torch.no_grad():
                out = call()  # warm-up (Triton compiles here), not profiled
            torch.cuda.synchronize()
            del out
            torch.cuda.profiler.start()
            iosim_marker[(cid,)](buf)
            with torch.no_grad():
                out = call()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            outs = out if isinstance(out, (tuple, list)) else (out,)
            ok = all(bool(torch.isfinite(t).all()) for t in outs)
            print(f"case {cid} done in {time.time() - t0:.1f}s finite={ok}", flush=True)
            del out, outs, call
        except Exception as e:  # one case failing must not lose the group
            try:
                torch.cuda.profiler.stop()
            except Exception:
                pass
            print(f"case {cid} FAILED: {type(e).__name__}: {str(e)[:400]}", flush=True)
        torch.cuda.empty_cache()


def num(s) -> float:
    s = (str(s) if s is not None else "").replace(",", "").strip()
    try:
        return float(s)
    except ValueError:
        return float("nan")


def run_group(gi: int, ids: list[int], timeout: int, log) -> tuple[list[dict], str, str]:
    cmd = ["ncu", "--target-processes", "all", "--clock-control", "none", "--profile-from-start", "off",
           "--metrics", ",".join(METRICS), "--csv", "--page", "raw",
           sys.executable, os.path.abspath(__file__), "--worker", ",".join(map(str, ids))]
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = "timeout", -1
    log.write(f"# group {gi} cases {ids} rc={rc} wall={time.time() - t:.1f}s\n")
    log.write("\n".join(ln for ln in text.splitlines() if not ln.startswith('"'))[-20000:] + "\n")
    log.write(err[-20000:] + "\n")
    log.flush()
    print(f"group {gi} {ids}: rc={rc} {time.time() - t:.1f}s", flush=True)
    return parse_raw(text), text, err


def attribute(rows: list[dict]) -> list[dict]:
    """One dict per profiled kernel, with the case id of the marker before it."""
    out, case = [], None
    for r in rows:
        name = r.get("Kernel Name", "")
        if "iosim_marker" in name:
            gs = r.get("Grid Size", "") or r.get("launch__grid_size", "")
            try:
                case = int(str(gs).strip("()").split(",")[0].replace(" ", ""))
            except ValueError:
                case = None
            continue
        if case is None:
            continue
        d = {"id": case, "kernel": name[:300], "grid": r.get("Grid Size", ""), "block": r.get("Block Size", "")}
        for m in METRICS:
            d[m] = num(r.get(m, ""))
        out.append(d)
    return out


def groups_of(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def dry_run(cases: list[dict]) -> int:
    """List the cases and their GPU memory; no torch needed."""
    for c in cases:
        e = 2
        nbytes = e * c["B"] * (c["Hq"] * c["Nq"] * c["d"] * (4 if c["impl"].endswith("bwd") else 2)
                               + c["Hkv"] * c["Nkv"] * c["d"] * (4 if c["impl"].endswith("bwd") else 2))
        print(f"{c['id']:>4} {c['impl']:<10} B={c['B']:<3} H={c['Hq']:<3}/{c['Hkv']:<3} Nq={c['Nq']:<6} "
              f"Nkv={c['Nkv']:<7} d={c['d']:<4} causal={c['causal']}  ~{nbytes / 2**30:.2f} GiB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--set", default="fit", choices=sorted(SETS))
    ap.add_argument("--cases", default=None, help="comma-separated case ids (default: the --set)")
    ap.add_argument("--group-size", type=int, default=6)
    ap.add_argument("--timeout-per-group", type=int, default=200)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker([int(x) for x in a.worker.split(",")])
        return 0
    ids = [int(x) for x in a.cases.split(",")] if a.cases else [c[0] for c in CASES if SETS[a.set](c[0])]
    cases = [case_dict(c) for c in CASES if c[0] in ids]
    if a.dry_run:
        return dry_run(cases)
    os.makedirs(a.out, exist_ok=True)
    import torch
    gpu = torch.cuda.get_device_name(0)
    with open(os.path.join(a.out, "device.txt"), "w") as f:
        p = torch.cuda.get_device_properties(0)
        f.write(f"{p.name} sms={p.multi_processor_count} l2={p.L2_cache_size} torch={torch.__version__}\n")
        import triton
        f.write(f"triton={triton.__version__}\n")
        f.write(subprocess.run(["ncu", "--version"], capture_output=True, text=True).stdout)
    kernels: list[dict] = []
    t_all = time.time()
    with open(os.path.join(a.out, "ncu_raw.csv"), "w") as raw, open(os.path.join(a.out, "log.txt"), "w") as log:
        for gi, grp in enumerate(groups_of([c["id"] for c in cases], max(1, a.group_size))):
            rows, text, err = run_group(gi, grp, a.timeout_per_group, log)
            raw.write(f"# group {gi} cases {','.join(map(str, grp))}\n")
            raw.write("\n".join(ln for ln in text.splitlines() if ln.startswith('"')) + "\n")
            raw.flush()
            kernels += attribute(rows)
        log.write(f"total wall {time.time() - t_all:.1f}s\n")
    kcols = ["id", "kernel", "grid", "block"] + METRICS
    with open(os.path.join(a.out, "kernels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=kcols)
        w.writeheader()
        w.writerows(kernels)
    per = {c["id"]: [k for k in kernels if k["id"] == c["id"]] for c in cases}
    with open(os.path.join(a.out, "measured.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS + SUMMED + ["num_kernels", "kernels", "gpu"])
        w.writeheader()
        for c in cases:
            ks = per[c["id"]]
            w.writerow(dict(c, **{m: sum(k[m] for k in ks) if ks else float("nan") for m in SUMMED},
                            num_kernels=len(ks), kernels=" | ".join(k["kernel"][:80] for k in ks), gpu=gpu))
    print(f"{'id':>4} {'impl':<10} {'SM rd MB':>10} {'DRAM rd MB':>11} {'us':>9} kernels")
    for c in cases:
        ks = per[c["id"]]
        sm = sum(k["l1tex__m_xbar2l1tex_read_bytes.sum"] for k in ks) / 1e6
        dr = sum(k["dram__bytes_read.sum"] for k in ks) / 1e6
        us = sum(k["gpu__time_duration.sum"] for k in ks) / 1e3
        print(f"{c['id']:>4} {c['impl']:<10} {sm:>10.2f} {dr:>11.2f} {us:>9.1f} {len(ks)}")
    print(f"total {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
