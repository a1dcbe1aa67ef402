"""Held-out GPU evidence for the cost model (issue 6), one device call. Writes CSVs under --out ($OUT).

    python3 benchmarks/gpu/validate_cost.py --out "$OUT"          # on the H100
    python benchmarks/gpu/validate_cost.py --dry-run               # here: list the cases and configs, no GPU

Held-out run 3 (after the residency overlap rule in iosim.cost.overlapped_compute; shapes in neither run 1 (H16)
nor run 2 (H32): H = 24, B·N = 40960, d 64/128, causal and not; smallest kernel ≈ 1 ms):

    python3 benchmarks/gpu/validate_cost.py --out "$OUT" --heads 24 --seqs 2560,5120,10240,20480 --tokens 40960 \
        --tile-tokens 40960 --deadline 420 \
        --tile-shapes 64:0:5120,64:0:20480,64:1:2560,64:1:10240,128:0:2560,128:0:10240,128:1:5120,128:1:20480

Held-out runs 4 and 5 (session 3; tile shapes only, two calls each, d=64 then d=128; notes in
reports/validation/h100/tiles_run4_run5_notes.md):

    python3 benchmarks/gpu/validate_cost.py --out "$OUT" --parts tiles --heads 20 --tile-tokens 49152 --deadline 530 \
        --tile-shapes 64:1:4096,64:1:12288,64:1:5000,64:0:6144,64:0:16384      # then 128:1:6144,128:1:16384,
                                                                                 # 128:1:5000,128:0:4096,128:0:12288
    python3 benchmarks/gpu/validate_cost.py --out "$OUT" --parts tiles --heads 12 --tile-tokens 57344 --deadline 540 \
        --tile-shapes 64:1:2048,64:1:7000,64:1:20000,64:0:3000,64:0:8192,64:0:28672   # then --deadline 200 with
                                                                         # 128:1:10000,128:0:28672,128:1:3000,128:0:7000

The d=64 call takes 330–400 s and the d=128 call 260 s. Small N is slow to time: about 80–90 s per shape at
N ≤ 7000, against 8–12 s at N ≥ 12288. Concatenate the two calls' tiles.csv and compile.csv, write an env.json
listing both calls' tile_shapes, then run `compare_cost.py --parts tiles`.

--dry-run with the same options: 32 sweep cases, 8 tile shapes (78 configs at d=64, 56 at d=128; 536 timings),
268 unique compile tasks — the same counts as run 2. Measured on the H100 (2026-11-25): the call took 431 s, not
the 2–3 min run 2 suggested (the small-N tile shapes time slowly: B16 N2560 d64 causal alone 104 s); --deadline 420
stopped it before the last tile shape (d128 causal N20480), so 7 of the 8 shapes were timed. Then, here:

    python benchmarks/gpu/compare_cost.py --raw reports/validation/h100/cost_validation_run3_raw \
        --out reports/validation/h100/cost_validation_run3

Shape options (defaults = the first H100 run): --heads H, --seqs N1,N2,… with --tokens BUDGET[,…] (B = budget // N,
N ≤ budget), --head-dims, --causal 0,1, --impls, --tile-shapes d:causal:N,… with --tile-tokens and --tile-heads.
They are recorded in env.json, and compare_cost.py --raw <out> --out <dir> splits in-sample/held-out by shape.

Part 1, ``sweep.csv``: bf16, H = 16, N ∈ {1K … 64K}, d ∈ {64, 128}, causal and not, two token budgets
(B·N = 65536, the budget of the fit in reports/validation/h100/speed_tune.csv, and B·N = 16384 for N ≤ 16K), for
(a) PyTorch SDPA pinned to the flash backend (FlashAttention-2) and (b) iosim's Triton kernel at its default config
(``config=None`` → ``kernels.default_config``; TMA on sm90). Each case's compiled Triton kernel is inspected: its
PTX says whether ``tl.dot`` became wgmma, and registers, spills and shared memory are recorded.

Part 2, ``tiles.csv``: on 8 shapes (d 64/128, causal and not, N 4K–32K, B·N = 32768, H = 16) every configuration
``iosim.tiles.candidates`` calls legal on the H100 is timed (block_m, block_n, num_warps, num_stages; TMA, grid
(m, b, h), KV ascending). The configs are first compiled (and launched once on a small input) in a pool of worker
processes, so compilation runs in parallel and before any timing; a config that fails there, or is not compiled by
the compile deadline, is recorded in ``compile.csv`` and not timed. Every timed config's output is checked against
float64 attention (batch 0, 4 heads, last 512 rows).

Timing: ``iosim.validate.time_fn`` (the colleague's helper from benchmarks/gpu_attention.py): CUDA events, the
256 MiB L2 flush before every call, median of ≥ 5 calls after 2 warm-ups, reps sized to a per-case budget.
Every case is guarded: an exception is recorded in the row's ``note`` and the sweep goes on; rows are flushed to disk
as they come, so a killed run keeps what it measured. ``--deadline`` (s) stops starting new cases.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import traceback

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)


def _alias_subpackages():
    """Without an install (the device machine), map models/ and hardware/ to iosim.models / iosim.hardware as
    pyproject's package-dir does."""
    import importlib.util
    import iosim
    for sub in ("models", "hardware"):
        name = f"iosim.{sub}"
        if name in sys.modules:
            continue
        try:
            if importlib.util.find_spec(name) is not None:
                continue
        except ModuleNotFoundError:
            pass
        d = os.path.join(ROOT, sub)
        spec = importlib.util.spec_from_file_location(name, os.path.join(d, "__init__.py"),
                                                      submodule_search_locations=[d])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        setattr(iosim, sub, mod)
        spec.loader.exec_module(mod)


_alias_subpackages()

from iosim.problem import KernelConfig, Problem  # noqa: E402

SWEEP_NS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
HEADS = 16
SWEEP_TOKENS = ((65536, SWEEP_NS), (16384, (1024, 2048, 4096, 8192, 16384)))
# (head_dim, causal, N): B = 32768 // N, H = 16
TILE_SHAPES = (
    (64, False, 4096), (64, False, 32768), (64, True, 8192), (64, True, 16384),
    (128, False, 8192), (128, False, 16384), (128, True, 4096), (128, True, 32768),
)
TILE_TOKENS = 32768
TILE_HEADS = HEADS
HEAD_DIMS = (64, 128)
CAUSAL = (False, True)
IMPLS = ("sdpa-flash", "iosim-triton")
COMPILE_N = 2048  # the small input each compile worker launches on (same Triton specialization: all sizes % 16 == 0)

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def sweep_cases():
    out = []
    for tokens, ns in SWEEP_TOKENS:
        for d in HEAD_DIMS:
            for causal in CAUSAL:
                for n in ns:
                    b = max(1, tokens // n)
                    for impl in IMPLS:
                        out.append((impl, b, HEADS, n, d, causal))
    return out


def tile_configs(d, causal, n):
    """The legal configs iosim.tiles enumerates for this shape (the same grid `iosim tiles` ranks)."""
    from iosim.hwprofile import load_hardware
    from iosim.tiles import candidates
    hw = load_hardware("h100")
    p = Problem(max(1, TILE_TOKENS // n), TILE_HEADS, TILE_HEADS, n, n, d, "bf16", causal)
    return [c.key for c in candidates(hw, p) if c.legal]


def _ints(text):
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


def _causal(text):
    m = {"0": False, "no": False, "false": False, "1": True, "yes": True, "true": True}
    return tuple(m[x.lower()] for x in text.replace(" ", "").split(",") if x)


def _tile_shapes(text):
    """'d:causal:N,...' e.g. '64:0:3072,128:1:24576' → ((64, False, 3072), (128, True, 24576))."""
    out = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        d, c, n = item.split(":")
        out.append((int(d), _causal(c)[0], int(n)))
    return tuple(out)


def configure(a):
    """Apply the shape options to the module-level case lists (defaults = the first H100 run's cases)."""
    global HEADS, SWEEP_TOKENS, HEAD_DIMS, CAUSAL, IMPLS, TILE_SHAPES, TILE_TOKENS, TILE_HEADS
    HEADS = a.heads
    HEAD_DIMS = _ints(a.head_dims)
    CAUSAL = _causal(a.causal)
    IMPLS = tuple(x for x in a.impls.split(",") if x)
    if a.seqs or a.tokens:
        tokens = _ints(a.tokens) if a.tokens else (SWEEP_TOKENS[0][0],)
        ns = _ints(a.seqs) if a.seqs else SWEEP_NS
        SWEEP_TOKENS = tuple((t, tuple(n for n in ns if n <= t)) for t in tokens)
    TILE_HEADS = a.tile_heads if a.tile_heads else HEADS
    if a.tile_tokens:
        TILE_TOKENS = a.tile_tokens
    if a.tile_shapes:
        TILE_SHAPES = _tile_shapes(a.tile_shapes)


def default_cfg(d, causal):
    """The Triton kernel's default (block_m, block_n, num_warps, num_stages): what ``config=None`` launches."""
    from iosim.triton_kernels import kernels as K
    c = K.default_config(d, causal)
    return c.block_m, c.block_n, c.num_warps, c.num_stages


class Capture:
    """Wraps a @triton.jit function so the CompiledKernel of the last launch can be inspected."""

    def __init__(self, jit):
        self.jit = jit
        self.last = None

    def __getitem__(self, grid):
        launcher = self.jit[grid]

        def run(*a, **kw):
            r = launcher(*a, **kw)
            self.last = r
            return r
        return run


def kernel_info(ck) -> dict:
    if ck is None:
        return {}
    info = {}
    try:
        ptx = ck.asm.get("ptx", "")
        info["wgmma"] = int("wgmma.mma_async" in ptx)
        info["mma_sync"] = int("mma.sync" in ptx)
    except Exception:
        pass
    for name in ("n_regs", "n_spills"):
        v = getattr(ck, name, None)
        if v is not None:
            info[name] = int(v)
    try:
        info["shared"] = int(ck.metadata.shared)
    except Exception:
        pass
    return info


def install_capture():
    from iosim.triton_kernels import kernels as K
    if not isinstance(K._fwd_kernel, Capture):
        K._fwd_kernel = Capture(K._fwd_kernel)
    return K._fwd_kernel


# ---------------------------------------------------------------------------------------------------------------
# compile workers
# ---------------------------------------------------------------------------------------------------------------

def _compile_one(task):
    """(d, causal, cfg) → dict: compile and launch once on a small input; correctness against float64."""
    d, causal, cfg = task
    t0 = time.time()
    out = {"head_dim": d, "causal": int(causal), "config": "x".join(map(str, cfg)), "ok": 0, "note": ""}
    try:
        import torch
        from iosim.triton_kernels import kernels as K
        cap = install_capture()
        g = torch.Generator(device="cuda").manual_seed(7)
        q, k, v = (torch.randn(1, HEADS, COMPILE_N, d, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        o = K.attention(q, k, v, causal=causal, config=KernelConfig(*cfg))
        torch.cuda.synchronize()
        s = (q[:, :2].double() @ k[:, :2].double().transpose(-1, -2)) / math.sqrt(d)
        if causal:
            r = torch.arange(COMPILE_N, device="cuda")
            s = s.masked_fill(r[None, :] > r[:, None], float("-inf"))
        ref = torch.softmax(s, -1) @ v[:, :2].double()
        err = ((o[:, :2].double() - ref).norm() / ref.norm()).item()
        out.update(kernel_info(cap.last))
        out["rel_err"] = f"{err:.3e}"
        out["ok"] = int(math.isfinite(err) and err < 1e-2)
        if not out["ok"]:
            out["note"] = f"wrong result rel_err={err:.3e}"
    except Exception as e:
        out["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    out["compile_s"] = f"{time.time() - t0:.2f}"
    return out


def compile_all(tasks, workers, deadline_s, writer):
    """Compile tasks in a spawn pool; returns {(d, causal, cfg): row}. Stops collecting at the deadline."""
    import multiprocessing as mp
    done = {}
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers)
    t_end = time.time() + deadline_s
    try:
        it = pool.imap_unordered(_compile_one, tasks, chunksize=1)
        while len(done) < len(tasks):
            left = t_end - time.time()
            if left <= 0:
                log(f"compile deadline reached: {len(done)}/{len(tasks)} done")
                break
            try:
                r = it.next(timeout=left)
            except mp.TimeoutError:
                log(f"compile deadline reached: {len(done)}/{len(tasks)} done")
                break
            key = (r["head_dim"], bool(r["causal"]), tuple(int(x) for x in r["config"].split("x")))
            done[key] = r
            writer(r)
            if len(done) % 20 == 0 or not r["ok"]:
                log(f"  compiled {len(done)}/{len(tasks)} (last d{r['head_dim']} c{r['causal']} {r['config']} "
                    f"ok={r['ok']} {r['compile_s']}s {r['note'][:120]})")
    finally:
        pool.terminate()
        pool.join()
    return done


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------

class RowWriter:
    def __init__(self, path, fields):
        self.f = open(path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields, extrasaction="ignore")
        self.w.writeheader()
        self.f.flush()

    def __call__(self, row):
        self.w.writerow(row)
        self.f.flush()


SWEEP_FIELDS = ["impl", "batch", "heads", "seq", "head_dim", "causal", "config", "use_tma", "time_ms", "tflops",
                "rel_err", "wgmma", "mma_sync", "n_regs", "n_spills", "shared", "reps_budget_s", "note"]
TILE_FIELDS = ["batch", "heads", "seq", "head_dim", "causal", "block_m", "block_n", "num_warps", "num_stages",
               "time_ms", "tflops", "rel_err", "wgmma", "n_regs", "n_spills", "shared", "note"]
COMPILE_FIELDS = ["head_dim", "causal", "config", "ok", "compile_s", "rel_err", "wgmma", "mma_sync", "n_regs",
                  "n_spills", "shared", "note"]


def run_sweep(out_dir, deadline, budget_s):
    import torch
    from iosim import validate as V
    cap = install_capture()
    w = RowWriter(os.path.join(out_dir, "sweep.csv"), SWEEP_FIELDS)
    cache = {}
    for impl, b, h, n, d, causal in sweep_cases():
        row = {"impl": impl, "batch": b, "heads": h, "seq": n, "head_dim": d, "causal": int(causal),
               "reps_budget_s": budget_s}
        if time.time() - T0 > deadline:
            row["note"] = "skipped: deadline"
            w(row)
            continue
        try:
            key = (b, h, n, d)
            if key not in cache:
                cache.clear()
                torch.cuda.empty_cache()
                cache[key] = V.make_inputs(V.Case(impl, b, h, h, n, n, d, causal))
            q, k, v = cache[key]
            cfg = default_cfg(d, causal) if impl == "iosim-triton" else None
            case = V.Case(impl, b, h, h, n, n, d, causal, cfg)
            if impl == "iosim-triton":
                from iosim.triton_kernels import kernels as K
                row["config"] = "x".join(map(str, cfg))
                row["use_tma"] = int(K._tma_ok(q, k, v, q))
                def fn(q=q, k=k, v=v, causal=causal):  # config=None: the kernel's default
                    return K.attention(q, k, v, causal=causal)
            else:
                fn = V.make_fn(case, q, k, v)
            cap.last = None
            out = fn()
            torch.cuda.synchronize()
            if impl == "iosim-triton":
                row.update(kernel_info(cap.last))
            if n <= 16384:
                row["rel_err"] = f"{V.reference_check(case, out, q, k, v):.3e}"
            del out
            t = V.time_fn(fn, budget_s=budget_s)
            row["time_ms"] = f"{t:.5f}"
            row["tflops"] = f"{V.flops(case.problem) / (t * 1e-3) / 1e12:.1f}"
        except Exception as e:
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        w(row)
        log(f"sweep {impl:<13} B{b:<3} N{n:<6} d{d:<3} {'causal' if causal else 'full  '} "
            f"{row.get('config', ''):<12} {row.get('time_ms', '-'):>10} ms {row.get('tflops', ''):>6} TFLOP/s "
            f"wgmma={row.get('wgmma', '')} regs={row.get('n_regs', '')} {row.get('note', '')}")


def run_tiles(out_dir, compiled, deadline, budget_s):
    import torch
    from iosim import validate as V
    from iosim.triton_kernels import kernels as K
    cap = install_capture()
    w = RowWriter(os.path.join(out_dir, "tiles.csv"), TILE_FIELDS)
    rows_q = 512
    HEADS = TILE_HEADS  # noqa: N806 (the tile shapes' head count)
    for d, causal, n in TILE_SHAPES:
        b = max(1, TILE_TOKENS // n)
        cfgs = tile_configs(d, causal, n)
        log(f"tiles: B{b} H{HEADS} N{n} d{d} {'causal' if causal else 'full'}: {len(cfgs)} legal configs")
        try:
            torch.cuda.empty_cache()
            q, k, v = V.make_inputs(V.Case("iosim-triton", b, HEADS, HEADS, n, n, d, causal))
            s = (q[:1, :4, -rows_q:].double() @ k[:1, :4].double().transpose(-1, -2)) / math.sqrt(d)
            if causal:
                r = torch.arange(n - rows_q, n, device="cuda")[:, None]
                c = torch.arange(n, device="cuda")[None, :]
                s = s.masked_fill(c > r, float("-inf"))
            ref = torch.softmax(s, -1) @ v[:1, :4].double()
            del s
        except Exception as e:
            log(f"  shape setup failed: {type(e).__name__}: {e}")
            for cfg in cfgs:
                w({"batch": b, "heads": HEADS, "seq": n, "head_dim": d, "causal": int(causal), "block_m": cfg[0],
                   "block_n": cfg[1], "num_warps": cfg[2], "num_stages": cfg[3],
                   "note": f"skipped: shape setup failed ({type(e).__name__})"})
            continue
        flop = V.flops(Problem(b, HEADS, HEADS, n, n, d, "bf16", causal))
        for cfg in cfgs:
            row = {"batch": b, "heads": HEADS, "seq": n, "head_dim": d, "causal": int(causal),
                   "block_m": cfg[0], "block_n": cfg[1], "num_warps": cfg[2], "num_stages": cfg[3]}
            comp = compiled.get((d, causal, cfg))
            if time.time() - T0 > deadline:
                row["note"] = "skipped: deadline"
            elif comp is None:
                row["note"] = "skipped: not compiled by the compile deadline"
            elif not comp["ok"]:
                row["note"] = "skipped: " + (comp["note"] or "compile/launch failed")
            else:
                try:
                    kc = KernelConfig(*cfg)
                    def fn(q=q, k=k, v=v, causal=causal, kc=kc):
                        return K.attention(q, k, v, causal=causal, config=kc)
                    cap.last = None
                    o = fn()
                    torch.cuda.synchronize()
                    row.update(kernel_info(cap.last))
                    err = ((o[:1, :4, -rows_q:].double() - ref).norm() / ref.norm()).item()
                    row["rel_err"] = f"{err:.3e}"
                    del o
                    t = V.time_fn(fn, budget_s=budget_s)
                    row["time_ms"] = f"{t:.5f}"
                    row["tflops"] = f"{flop / (t * 1e-3) / 1e12:.1f}"
                except Exception as e:
                    row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            w(row)
        log(f"  done N{n} d{d} causal={int(causal)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "reports/_scratch/validate_cost"))
    ap.add_argument("--dry-run", action="store_true", help="list the cases and configs; no GPU")
    ap.add_argument("--parts", default="sweep,tiles")
    ap.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--compile-deadline", type=float, default=200.0, help="s for the compile pool")
    ap.add_argument("--deadline", type=float, default=540.0, help="s after start: no new case starts")
    ap.add_argument("--sweep-budget", type=float, default=0.25, help="s of timed reps per sweep case")
    ap.add_argument("--tile-budget", type=float, default=0.08, help="s of timed reps per tile config")
    ap.add_argument("--heads", type=int, default=HEADS, help="H of the sweep (and of the tile shapes by default)")
    ap.add_argument("--seqs", default="", help="sweep N values, comma-separated (default 1K…64K)")
    ap.add_argument("--tokens", default="", help="sweep token budgets B·N, comma-separated; B = budget // N, N ≤ budget "
                    "(default 65536 and 16384 as in the first run; with --seqs alone: 65536)")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--causal", default="0,1", help="causal values of the sweep: 0,1 | 0 | 1")
    ap.add_argument("--impls", default="sdpa-flash,iosim-triton")
    ap.add_argument("--tile-shapes", default="", help="tile-chooser shapes 'd:causal:N,...' (e.g. 64:0:3072,128:1:24576); "
                    "default the first run's 8")
    ap.add_argument("--tile-tokens", type=int, default=0, help="B·N of the tile shapes (default 32768)")
    ap.add_argument("--tile-heads", type=int, default=0, help="H of the tile shapes (default --heads)")
    a = ap.parse_args()
    configure(a)
    parts = set(a.parts.split(","))

    tasks = []
    if "tiles" in parts:
        for d, causal, n in TILE_SHAPES:
            for cfg in tile_configs(d, causal, n):
                if (d, causal, cfg) not in tasks:
                    tasks.append((d, causal, cfg))
    # heavy first (big tiles, many stages compile slowest), so the deadline cuts the cheap tail
    tasks.sort(key=lambda t: -(t[2][0] * t[2][1] * t[2][3] * t[0]))

    if a.dry_run:
        cases = sweep_cases()
        print(f"sweep: {len(cases)} cases")
        for c in cases:
            cfg = default_cfg(c[4], c[5]) if c[0] == "iosim-triton" else ""
            print("  ", *c, cfg)
        for d, causal, n in TILE_SHAPES:
            cfgs = tile_configs(d, causal, n)
            print(f"tiles B{max(1, TILE_TOKENS // n)} H{TILE_HEADS} N{n} d{d} causal={int(causal)}: {len(cfgs)} configs: "
                  + " ".join("x".join(map(str, c)) for c in cfgs))
        print(f"compile tasks (unique d, causal, config): {len(tasks)}; first {tasks[:3]}")
        return 0

    os.makedirs(a.out, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/iosim_validate_triton_cache")
    import torch
    import triton
    env = {"torch": torch.__version__, "triton": triton.__version__, "workers": a.workers,
           "heads": HEADS, "sweep_tokens": [[t, list(ns)] for t, ns in SWEEP_TOKENS], "head_dims": list(HEAD_DIMS),
           "causal": [int(c) for c in CAUSAL], "impls": list(IMPLS), "tile_shapes": [list(x) for x in TILE_SHAPES],
           "tile_tokens": TILE_TOKENS, "tile_heads": TILE_HEADS,
           "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        env |= {"device": torch.cuda.get_device_name(),
                "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
                "capability": list(torch.cuda.get_device_capability())}
    except Exception as e:
        env["device"] = f"none ({type(e).__name__}: {e})"
    log(json.dumps(env))

    compiled = {}
    if tasks:
        log(f"compiling {len(tasks)} configs in {a.workers} workers (deadline {a.compile_deadline:.0f} s)")
        cw = RowWriter(os.path.join(a.out, "compile.csv"), COMPILE_FIELDS)
        try:
            compiled = compile_all(tasks, a.workers, a.compile_deadline, cw)
        except Exception:
            log("compile pool failed:\n" + traceback.format_exc())
        ok = sum(1 for r in compiled.values() if r["ok"])
        log(f"compiled {len(compiled)}/{len(tasks)}, {ok} ok")
        env["compile_tasks"], env["compiled"], env["compiled_ok"] = len(tasks), len(compiled), ok
        env["compile_wall_s"] = round(time.time() - T0, 1)

    if "sweep" in parts:
        try:
            run_sweep(a.out, a.deadline, a.sweep_budget)
        except Exception:
            log("sweep failed:\n" + traceback.format_exc())
        env["sweep_done_s"] = round(time.time() - T0, 1)
    if "tiles" in parts:
        try:
            run_tiles(a.out, compiled, a.deadline, a.tile_budget)
        except Exception:
            log("tiles failed:\n" + traceback.format_exc())
        env["tiles_done_s"] = round(time.time() - T0, 1)
    env["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(os.path.join(a.out, "env.json"), "w") as f:
        json.dump(env, f, indent=1)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
