"""Validation on a real GPU: time our Triton kernel and the references, read Nsight Compute counters, and set the
measured SM read bytes beside iosim's count of the same schedule.

Implementations (``IMPLS``):

* ``iosim-triton`` — ``iosim.triton_kernels.attention`` with the case's KernelConfig; its schedule is
  ``models/flash2.py`` with that config, so iosim's SM read bytes must match ncu's almost exactly;
* ``flex`` — PyTorch FlexAttention, ``torch.compile``d (dynamic=False, recompile limit raised: past the limit it
  silently falls back to eager, which materialises the scores), causal through a BlockMask;
* ``sdpa-flash`` / ``sdpa-cudnn`` — ``F.scaled_dot_product_attention`` pinned to one backend.

Timing: CUDA events around each call, a 256 MiB buffer zeroed before every call (flushes the 50 MB L2), the median
of at least 5 calls after 2 warm-ups. FLOPs count the visible (query, key) pairs exactly: 4·d per pair (QKᵀ and PV,
2 FLOPs per multiply-add), so causal N×N counts N(N+1)/2 pairs, not N²/2 and not N².

Counters: one ncu child process (``python -m iosim.validate --child cases.json``) runs each case once between two
marker kernels, so kernels are attributed to cases by position (the marker's grid size is the case id);
``--clock-control none``, ``--cache-control all``. Without ncu, only times are reported (``ncu: missing``).

torch and triton are imported inside the functions: importing this module needs neither.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from iosim.errors import IosimError
from iosim.problem import KernelConfig, Problem

IMPLS = ("iosim-triton", "flex", "sdpa-flash", "sdpa-cudnn")
NCU_METRICS = (
    "l1tex__m_xbar2l1tex_read_bytes.sum",
    "lts__t_sectors_srcunit_tex_op_read.sum",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "gpu__time_duration.sum",
)
FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Case:
    """One measurement: an implementation on a problem (bf16), with our kernel's config where it applies."""

    impl: str
    batch: int
    heads: int
    kv_heads: int
    seq_q: int
    seq_kv: int
    head_dim: int
    causal: bool
    config: tuple[int, int, int, int] | None = None  # (block_m, block_n, num_warps, num_stages) for iosim-triton
    use_tma: bool | None = None
    kv_order: str = "ascending"
    q_order: str = "ascending"

    @property
    def problem(self) -> Problem:
        return Problem(self.batch, self.heads, self.kv_heads, self.seq_q, self.seq_kv, self.head_dim, "bf16",
                       self.causal)

    @property
    def shape(self) -> str:
        c = " causal" if self.causal else ""
        kv = f"/{self.kv_heads}" if self.kv_heads != self.heads else ""
        nkv = f"x{self.seq_kv}" if self.seq_kv != self.seq_q else ""
        return f"B{self.batch} H{self.heads}{kv} N{self.seq_q}{nkv} d{self.head_dim}{c}"

    def kernel_config(self) -> KernelConfig:
        if self.config is None:
            from iosim.models.flash2 import default_tiles
            bm, bn = default_tiles(self.head_dim)
            return KernelConfig(bm, bn)
        bm, bn, w, s = self.config
        return KernelConfig(bm, bn, w, s, kv_order=self.kv_order, q_order=self.q_order)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def visible_pairs(p: Problem) -> int:
    """(query, key) pairs the mask lets through, per (batch, head): bottom-right causal counted exactly."""
    nq, nkv = p.seq_q, p.seq_kv
    if not p.causal:
        return nq * nkv
    # row r sees max(r + nkv - nq + 1, 0) keys (never more than nkv, since r <= nq - 1)
    c = nkv - nq + 1
    r0 = max(0, nq - nkv)
    n = nq - r0
    return n * (r0 + c) + n * (n - 1) // 2


def flops(p: Problem) -> int:
    """4·d FLOPs per visible pair (S = QKᵀ and O = PV, 2 per multiply-add), times batch·heads."""
    return 4 * p.head_dim * visible_pairs(p) * p.batch * p.heads


def predicted_sm_read(case: Case, hw_name: str = "h100") -> int | None:
    """iosim's SM←L2 read bytes for the case's kernel (flash2 schedule with its tiles); None where not modeled."""
    from iosim.counts import count
    from iosim.hwprofile import load_hardware
    from iosim.models.flash2 import build
    cfg = case.kernel_config()
    if case.impl == "flex":
        bm, bn = flex_tiles(case.head_dim)
        # Flex walks 128-wide mask blocks: a causal query block visits every KV block up to its diagonal mask block.
        cfg = KernelConfig(bm, 128 if case.causal else bn)
    elif case.impl == "sdpa-cudnn":
        return None  # persistent cuDNN kernel with its own tiles: not modeled here
    elif case.impl == "sdpa-flash":
        cfg = KernelConfig(*_fa2_tiles(case.head_dim), kv_order="descending")
    try:
        hw = load_hardware(hw_name)
    except IosimError:
        hw = None
    return count(build(case.problem, cfg, hw)).sm_read_bytes


def _fa2_tiles(d: int) -> tuple[int, int]:
    from iosim.models.flash2 import default_tiles
    return default_tiles(d)


def flex_tiles(d: int) -> tuple[int, int]:
    """FlexAttention's H100 bf16 forward defaults (torch/_inductor/template_heuristics, h100_default_flex_config)."""
    return {64: (128, 128), 128: (128, 64), 256: (64, 32)}.get(d, (128, 64))


# ------------------------------------------------------------------------------------------------------------------
# Running cases (GPU)
# ------------------------------------------------------------------------------------------------------------------


def _need_gpu():
    try:
        import torch
    except ImportError as e:
        raise IosimError("iosim validate needs torch and triton with an NVIDIA GPU (pip install 'iosim[gpu]')") from e
    if not torch.cuda.is_available():
        raise IosimError("iosim validate needs an NVIDIA GPU: torch.cuda.is_available() is False")
    return torch


def make_inputs(case: Case, seed: int = 0):
    torch = _need_gpu()
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(case.batch, case.heads, case.seq_q, case.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(case.batch, case.kv_heads, case.seq_kv, case.head_dim, device="cuda", dtype=torch.bfloat16,
                    generator=g)
    v = torch.randn_like(k)
    return q, k, v


_FLEX = {}


def _flex_fn():
    import torch
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 4096)
        for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 65536)
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _causal_block_mask(nq: int, nkv: int):
    from torch.nn.attention.flex_attention import create_block_mask
    off = nkv - nq

    def causal(b, h, qi, ki):
        return ki <= qi + off

    try:
        return create_block_mask(causal, None, None, nq, nkv, device="cuda", _compile=True)
    except TypeError:
        return create_block_mask(causal, None, None, nq, nkv, device="cuda")


def make_fn(case: Case, q, k, v):
    """A zero-argument callable running the case once (inputs bound). None if the backend refuses the shape."""
    import torch.nn.functional as F
    gqa = case.kv_heads != case.heads
    if case.impl == "iosim-triton":
        from iosim.triton_kernels.kernels import TritonConfig, attention
        cfg = TritonConfig(case.kernel_config(), use_tma=case.use_tma)
        return lambda: attention(q, k, v, causal=case.causal, config=cfg)
    if case.impl == "flex":
        fn = _flex_fn()
        bmask = _causal_block_mask(case.seq_q, case.seq_kv) if case.causal else None
        return lambda: fn(q, k, v, block_mask=bmask, enable_gqa=gqa)
    if case.impl in ("sdpa-flash", "sdpa-cudnn"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        if case.causal and case.seq_q != case.seq_kv:
            return None  # SDPA's is_causal is top-left aligned; ours is bottom-right
        backend = SDPBackend.FLASH_ATTENTION if case.impl == "sdpa-flash" else SDPBackend.CUDNN_ATTENTION

        def run():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, enable_gqa=gqa)
        return run
    raise IosimError(f"unknown implementation {case.impl!r}; known: {', '.join(IMPLS)}")


def time_fn(fn, min_reps: int = 5, budget_s: float = 0.3) -> float:
    """Median milliseconds of fn() over CUDA events, the L2 flushed (256 MiB zeroed) before each call."""
    import torch
    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = time.perf_counter() - t0
    reps = max(min_reps, min(50, int(budget_s / max(est, 1e-6))))
    times = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def reference_check(case: Case, out, q, k, v) -> float:
    """‖out − ref‖/‖ref‖ against float64 attention on the GPU (first batch and up to 4 heads, to bound memory)."""
    import torch
    nh = min(case.heads, 4)
    g = case.heads // case.kv_heads
    qd = q[:1, :nh].double()
    kd = k[:1].double().repeat_interleave(g, dim=1)[:, :nh]
    vd = v[:1].double().repeat_interleave(g, dim=1)[:, :nh]
    rows = min(case.seq_q, 2048)
    qd = qd[:, :, -rows:]
    s = (qd @ kd.transpose(-1, -2)) / math.sqrt(case.head_dim)
    if case.causal:
        r = torch.arange(case.seq_q - rows, case.seq_q, device="cuda")[:, None]
        c = torch.arange(case.seq_kv, device="cuda")[None, :]
        s = s.masked_fill(c > r + case.seq_kv - case.seq_q, float("-inf"))
    ref = torch.softmax(s, -1) @ vd
    o = out[:1, :nh, -rows:].double()
    return ((o - ref).norm() / ref.norm()).item()


@dataclass
class Result:
    case: Case
    time_ms: float | None = None
    tflops: float | None = None
    rel_err: float | None = None
    pred_sm_read: int | None = None
    ncu: dict = field(default_factory=dict)
    note: str = ""

    def row(self) -> dict:
        c = self.case
        meas = self.ncu.get("l1tex__m_xbar2l1tex_read_bytes.sum")
        err = (100.0 * (self.pred_sm_read - meas) / meas) if (meas and self.pred_sm_read) else None
        return {
            "impl": c.impl, "batch": c.batch, "heads": c.heads, "kv_heads": c.kv_heads, "seq_q": c.seq_q,
            "seq_kv": c.seq_kv, "head_dim": c.head_dim, "causal": int(c.causal),
            "config": config_label(c),
            "time_ms": _fmt(self.time_ms, 4), "tflops": _fmt(self.tflops, 1), "rel_err": _fmt(self.rel_err, 6, "e"),
            "pred_sm_read_bytes": self.pred_sm_read, "ncu_sm_read_bytes": meas,
            "sm_read_err_pct": _fmt(err, 3),
            "ncu_l2_read_sectors": self.ncu.get("lts__t_sectors_srcunit_tex_op_read.sum"),
            "ncu_dram_read_bytes": self.ncu.get("dram__bytes_read.sum"),
            "ncu_dram_write_bytes": self.ncu.get("dram__bytes_write.sum"),
            "ncu_time_ns": self.ncu.get("gpu__time_duration.sum"),
            "ncu_kernels": self.ncu.get("kernels", ""),
            "note": self.note,
        }


def config_label(c: Case) -> str:
    """BLOCK_M x BLOCK_N x num_warps x num_stages [/tma=0|1] [/q-desc] [/kv-desc]."""
    if c.config is None:
        return ""
    out = "x".join(map(str, c.config))
    if c.use_tma is not None:
        out += f"/tma={int(c.use_tma)}"
    if c.q_order == "descending":
        out += "/q-desc"
    if c.kv_order == "descending":
        out += "/kv-desc"
    return out


def _fmt(x, nd, kind="f"):
    if x is None:
        return ""
    return f"{x:.{nd}{kind}}"


def measure(cases: list[Case], check: bool = True, log=print) -> list[Result]:
    """Time every case (and check it against float64 where ``check``); inputs are shared between cases of one shape."""
    torch = _need_gpu()
    results = []
    cache: dict = {}
    for c in cases:
        shape_key = (c.batch, c.heads, c.kv_heads, c.seq_q, c.seq_kv, c.head_dim)
        if shape_key not in cache:
            cache.clear()
            torch.cuda.empty_cache()
            cache[shape_key] = make_inputs(c)
        q, k, v = cache[shape_key]
        r = Result(c, pred_sm_read=_safe(lambda: predicted_sm_read(c)))
        try:
            fn = make_fn(c, q, k, v)
            if fn is None:
                r.note = "backend refuses this shape"
            else:
                out = fn()
                if check:
                    r.rel_err = reference_check(c, out, q, k, v)
                del out
                r.time_ms = time_fn(fn)
                r.tflops = flops(c.problem) / (r.time_ms * 1e-3) / 1e12
        except Exception as e:  # a backend that fails on one shape must not stop the sweep
            r.note = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        log(f"{c.impl:<13}{c.shape:<34}{config_label(c):<24}"
            f"{_fmt(r.time_ms, 3):>9} ms {_fmt(r.tflops, 1):>7} TFLOP/s  err {_fmt(r.rel_err, 2, 'e'):>9} {r.note}")
        results.append(r)
    return results


def _safe(f):
    try:
        return f()
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------------------------
# Nsight Compute
# ------------------------------------------------------------------------------------------------------------------


def find_ncu() -> str | None:
    p = shutil.which("ncu")
    if p:
        return p
    for pat in ("/usr/local/cuda/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda-*/bin/ncu"):
        hits = sorted(glob.glob(pat))
        if hits:
            return hits[-1]
    return None


def _marker_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_mark_begin(x):
        tl.store(x + tl.program_id(0), 1)

    @triton.jit
    def iosim_mark_end(x):
        tl.store(x + tl.program_id(0), 2)

    return iosim_mark_begin, iosim_mark_end


def child(cases_path: str) -> int:
    """Run inside ncu: each case once after a warm-up, between begin (grid = id + 1) and end markers."""
    torch = _need_gpu()
    cases = [Case(**{**d, "config": tuple(d["config"]) if d["config"] else None}) for d in json.load(open(cases_path))]
    begin, end = _marker_kernels()
    buf = torch.zeros(len(cases) + 1, dtype=torch.int32, device="cuda")
    for i, c in enumerate(cases):
        try:
            q, k, v = make_inputs(c)
            fn = make_fn(c, q, k, v)
            if fn is None:
                continue
            fn()
            torch.cuda.synchronize()
            begin[(i + 1,)](buf)
            fn()
            end[(1,)](buf)
            torch.cuda.synchronize()
            del q, k, v, fn
        except Exception as e:
            print(f"iosim validate child: case {i} failed: {e}", file=sys.stderr)
    return 0


def run_ncu(cases: list[Case], workdir: str, timeout_s: int = 900, log=print) -> tuple[dict[int, dict], str]:
    """Counters per case index (metrics summed over the case's kernels, plus 'kernels': names and grids)."""
    ncu = find_ncu()
    if ncu is None:
        return {}, "ncu: missing (times only)"
    os.makedirs(workdir, exist_ok=True)
    cp = os.path.join(workdir, "triton_ncu_cases.json")
    json.dump([asdict(c) for c in cases], open(cp, "w"))
    cmd = [ncu, "--target-processes", "all", "--clock-control", "none", "--cache-control", "all", "--csv",
           "--metrics", ",".join(NCU_METRICS), sys.executable, "-m", "iosim.validate", "--child", cp]
    log("running: " + " ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {}, f"ncu: timed out after {timeout_s} s (no CSV: ncu writes it at exit)"
    raw = os.path.join(workdir, "triton_ncu_raw.csv")
    open(raw, "w").write(p.stdout)
    if p.returncode != 0:
        log(p.stderr[-2000:])
    return parse_ncu_csv(p.stdout), f"ncu: {ncu} rc={p.returncode}"


def parse_ncu_csv(text: str) -> dict[int, dict]:
    """ncu --csv output, long or ``--page raw`` (read by ``iosim.ncu.read_ncu_csv``) → metrics per case, summed over
    the case's kernels, plus 'kernels' (name, grid, block of each). A case is the kernels after a marker:
    ``iosim_mark_begin`` with grid x = id + 1 (this module's and ``iosim.l2bench``'s children), up to
    ``iosim_mark_end`` or the next marker, or ``iosim_marker`` with grid x = id (benchmarks/gpu/measure_sdpa.py,
    validate_l2.py). Without any marker every launch is its own case, numbered from 0 in file order. Byte metrics of
    NCU_METRICS are ints; times (``gpu__time_*``) are in ns, as ncu prints them."""
    from iosim.ncu import read_ncu_csv
    launches = read_ncu_csv(text + "\n") if '"' in text else []
    marked = any(ln.is_marker for ln in launches)
    out: dict[int, dict] = {}
    cur = None
    for i, ln in enumerate(launches):
        name = ln.kernel_name
        if name.startswith("iosim_mark_begin") or name.startswith("iosim_marker"):
            cur = ln.grid[0] - (1 if name.startswith("iosim_mark_begin") else 0)
            out[cur] = {"kernels": ""}
            continue
        if name.startswith("iosim_mark_end"):
            cur = None
            continue
        key = cur if marked else i
        if key is None:
            continue
        acc = out.setdefault(key, {"kernels": ""})
        for m, val in ln.metrics.items():
            acc[m] = acc.get(m, 0) + (val * 1e9 if m.startswith("gpu__time_") else val)
        acc["kernels"] = (acc["kernels"] + "; " if acc["kernels"] else "") + f"{name[:60]} grid{ln.grid} block{ln.block}"
    for acc in out.values():
        for m in acc:
            if m.startswith("gpu__time_"):
                acc[m] = round(acc[m], 3)
            elif m in NCU_METRICS:
                acc[m] = int(acc[m])
    return out


# ------------------------------------------------------------------------------------------------------------------
# Sweeps and reports
# ------------------------------------------------------------------------------------------------------------------


def speed_shapes(seqs=(4096, 8192, 16384, 32768, 65536), head_dims=(64, 128), tokens: int = 65536,
                 heads: int = 16) -> list[tuple[int, int, int, int, int, int, bool]]:
    """(batch, heads, kv_heads, Nq, Nkv, d, causal): batch·N = tokens, so every shape does comparable work per token."""
    out = []
    for d in head_dims:
        for causal in (False, True):
            for n in seqs:
                out.append((max(1, tokens // n), heads, heads, n, n, d, causal))
    return out


def write_reports(results: list[Result], out_dir: str, prefix: str, header: str = "") -> tuple[str, str]:
    """CSV of every result and a markdown table: per shape, TFLOP/s of each implementation; SM read error of ours."""
    os.makedirs(out_dir, exist_ok=True)
    rows = [r.row() for r in results]
    csv_path = os.path.join(out_dir, f"{prefix}.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["impl"])
        w.writeheader()
        w.writerows(rows)
    md_path = os.path.join(out_dir, f"{prefix}.md")
    md_path_txt = markdown(results, header)
    open(md_path, "w").write(md_path_txt)
    return csv_path, md_path


def markdown(results: list[Result], header: str = "") -> str:
    by_shape: dict[str, dict[str, Result]] = {}
    for r in results:
        by_shape.setdefault(r.case.shape, {})
        cur = by_shape[r.case.shape].get(r.case.impl)
        if cur is None or (r.tflops or 0) > (cur.tflops or 0):
            by_shape[r.case.shape][r.case.impl] = r
    impls = [i for i in IMPLS if any(i in d for d in by_shape.values())]
    lines = [header, "", "| shape | " + " | ".join(f"{i} TFLOP/s" for i in impls) + " | ours / flex | our config |",
             "|---|" + "---:|" * len(impls) + "---:|---|"]
    for shape, d in by_shape.items():
        cells = [_fmt(d[i].tflops, 1) if i in d and d[i].tflops else "–" for i in impls]
        ours, flex = d.get("iosim-triton"), d.get("flex")
        ratio = _fmt(ours.tflops / flex.tflops, 3) if ours and flex and ours.tflops and flex.tflops else "–"
        cfg = ours.row()["config"] if ours else ""
        lines.append(f"| {shape} | " + " | ".join(cells) + f" | {ratio} | {cfg} |")
    ncu_rows = [r for r in results if r.ncu]
    if ncu_rows:
        lines += ["", "SM read bytes (ncu `l1tex__m_xbar2l1tex_read_bytes.sum`) against iosim's flash2 count with the "
                  "kernel's tiles:", "",
                  "| impl | shape | config | predicted | measured | error % | L2 read sectors | DRAM read | DRAM write | "
                  "ncu time (ms) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ncu_rows:
            row = r.row()
            t = r.ncu.get("gpu__time_duration.sum")
            lines.append(f"| {r.case.impl} | {r.case.shape} | {row['config']} | {row['pred_sm_read_bytes'] or '–'} | "
                         f"{row['ncu_sm_read_bytes'] or '–'} | {row['sm_read_err_pct'] or '–'} | "
                         f"{row['ncu_l2_read_sectors'] or '–'} | {row['ncu_dram_read_bytes'] or '–'} | "
                         f"{row['ncu_dram_write_bytes'] or '–'} | {_fmt(t / 1e6 if t else None, 3) or '–'} |")
    return "\n".join(lines) + "\n"


def plot_sm_read(results: list[Result], path: str) -> str | None:
    """Scatter of predicted vs measured SM read bytes (log–log), one colour per implementation."""
    pts = [(r.case.impl, r.pred_sm_read, r.ncu.get("l1tex__m_xbar2l1tex_read_bytes.sum")) for r in results]
    pts = [p for p in pts if p[1] and p[2]]
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    for impl in sorted({p[0] for p in pts}):
        xs = [p[2] for p in pts if p[0] == impl]
        ys = [p[1] for p in pts if p[0] == impl]
        ax.scatter(xs, ys, label=impl, s=18)
    lo = min(min(p[1], p[2]) for p in pts)
    hi = max(max(p[1], p[2]) for p in pts)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured SM read bytes (ncu)")
    ax.set_ylabel("iosim predicted SM read bytes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validate(out_dir: str | None, seqs, head_dims, impls=IMPLS, configs=None, ncu: bool = True,
             ncu_seqs=(4096, 16384), log=print, prefix: str = "speed_validate") -> list[Result]:
    """The `iosim validate` sweep: speed of every implementation on every shape, then ncu counters on a subset.
    out_dir None: reports/validation/<gpu> (``gpu_slug``)."""
    torch = _need_gpu()
    if out_dir is None:
        out_dir = os.path.join("reports", "validation", gpu_slug(torch.cuda.get_device_name()))
    configs = configs or {}
    cases = []
    for (b, h, hk, nq, nkv, d, causal) in speed_shapes(seqs, head_dims):
        for impl in impls:
            cfg = configs.get((d, causal)) if impl == "iosim-triton" else None
            if impl == "iosim-triton" and cfg is None:
                from iosim.triton_kernels.kernels import default_config
                kc = default_config(d, causal)
                cfg = (kc.block_m, kc.block_n, kc.num_warps, kc.num_stages)
            cases.append(Case(impl, b, h, hk, nq, nkv, d, causal, cfg))
    results = measure(cases, log=log)
    status = "ncu: not run"
    if ncu:
        sel = [i for i, r in enumerate(results) if r.case.seq_q in ncu_seqs and r.time_ms is not None]
        got, status = run_ncu([results[i].case for i in sel], out_dir, log=log)
        for j, i in enumerate(sel):
            results[i].ncu = got.get(j, {})
    log(status)
    dev = torch.cuda.get_device_name()
    header = (f"# Forward attention, bf16, on {dev} (torch {torch.__version__}, triton {_triton_version()})\n\n"
              f"TFLOP/s = 4·d·(visible query-key pairs)·B·H / median time (L2 flushed). {status}.")
    csv_path, md_path = write_reports(results, out_dir, prefix, header)
    plot_sm_read(results, os.path.join(out_dir, f"{prefix}_sm_read.png"))
    log(f"wrote {csv_path}, {md_path}")
    return results


def gpu_slug(name: str) -> str:
    """Report folder name of a GPU: 'NVIDIA H100 80GB HBM3' → 'h100'; unknown names → lower-case alphanumerics."""
    for key in ("H200", "H100", "B200", "A100", "V100", "L40S", "GH200"):
        if key in name.upper():
            return key.lower()
    return "".join(ch for ch in name.lower() if ch.isalnum()) or "gpu"


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "-"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2]))
    from iosim.cli import main
    sys.exit(main(["validate", *sys.argv[1:]]))
