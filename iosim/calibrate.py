"""``iosim calibrate``: measure a GPU's effective ceilings with torch/Triton and write a calibrated profile TOML.

Microbenchmarks (CUDA events, median of repetitions after warm-up):

* DRAM bandwidth — ``dst.copy_(src)`` of a buffer far larger than L2 (default 1 GiB); bytes = read + write.
* L2 bandwidth — the same copy on a buffer of 1/8 of the L2 (both copies stay resident; Hopper's L2 is two
  partitions, so 1/8 keeps each half well inside one partition); bytes = read + write.
* tensor-core throughput per dtype — ``torch.matmul`` of n×n matrices (default 8192; cuBLAS, the native path);
  fp8 through ``torch._scaled_mm`` when the GPU and torch have it. FLOPs = 2n³.
* exp throughput — a Triton kernel that applies ``exp2`` ITERS times to register-resident values; ops = elements ×
  ITERS; reported per clock per SM with the clock read from nvidia-smi (max SM clock) or the base profile.
* launch overhead — back-to-back launches of a one-element kernel; recorded in the TOML header (the profile schema
  has no key for it; ``iosim.cost.LAUNCH_OVERHEAD_S`` is the model's constant).

The output profile starts from a built-in one (``--base``, default from the device name) and replaces the measured
keys with ``kind = "calibrated"`` entries whose source names the GPU, the tool versions, the method and the date.
The cost model then treats those rates as achieved ones (native-path efficiency 1, DRAM efficiency 1).

Import-safe without torch/triton: they are imported inside the measuring functions only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Mapping

from iosim.atomic import atomic_write_text
from iosim.errors import IosimError
from iosim.hwprofile import Hardware, load_hardware, parse_profile

COMMAND = "calibrate"

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "tf32": "float32", "fp8": "float8_e4m3fn"}


@dataclass(frozen=True)
class Measurements:
    """What one calibration run measured (None = not measured). Rates in base units."""

    gpu_name: str
    tool: str  # e.g. "torch 2.11.0+cu130, triton 3.6.0, CUDA 13.0"
    date: str  # ISO date
    dram_bytes_per_s: float | None = None
    l2_bytes_per_s: float | None = None
    tensor_flops_per_s: Mapping[str, float] = field(default_factory=dict)
    sfu_ops_per_clock_per_sm: float | None = None
    launch_s: float | None = None
    clock_hz: float | None = None
    methods: Mapping[str, str] = field(default_factory=dict)  # key → how it was measured


# --- TOML writing (no third-party writer needed) ------------------------------------------------------------------

def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _toml_num(v) -> str:
    if isinstance(v, bool):
        raise TypeError("booleans are not profile values")
    if isinstance(v, int):
        return str(v)
    r = repr(float(v))
    return r if ("e" in r or "." in r) else r + ".0"


def _entry(value, kind: str, source: str) -> str:
    return f"{{ value = {_toml_num(value)}, kind = {_toml_str(kind)}, source = {_toml_str(source)} }}"


_INT_KEYS = ("sm_count", "hbm_capacity_bytes", "l2_size_bytes", "l2_line_bytes", "l2_sector_bytes",
             "smem_per_sm_bytes", "smem_per_block_bytes", "registers_per_sm", "max_ctas_per_sm", "max_threads_per_sm",
             "sfu_ops_per_clock_per_sm", "l2_partitions", "l2_ways", "smem_bandwidth_bytes_per_clock_per_sm",
             "max_registers_per_thread")
_FLOAT_KEYS = ("boost_clock_hz", "hbm_bandwidth_bytes_per_s", "fp32_flops_per_s", "l2_bandwidth_bytes_per_s")


def profile_toml(base: Hardware, m: Measurements) -> str:
    """The calibrated profile as TOML text: ``base``'s values, with the measured ones replaced (kind calibrated)."""
    def src(what: str) -> str:
        how = m.methods.get(what, "")
        return f"iosim calibrate on {m.gpu_name} ({m.tool}), {m.date}" + (f": {how}" if how else "")

    replaced: dict[str, tuple[object, str, str]] = {}
    if m.dram_bytes_per_s:
        replaced["hbm_bandwidth_bytes_per_s"] = (float(m.dram_bytes_per_s), "calibrated", src("dram"))
    if m.l2_bytes_per_s:
        replaced["l2_bandwidth_bytes_per_s"] = (float(m.l2_bytes_per_s), "calibrated", src("l2"))
    if m.sfu_ops_per_clock_per_sm:
        replaced["sfu_ops_per_clock_per_sm"] = (max(1, int(round(m.sfu_ops_per_clock_per_sm))), "calibrated",
                                                src("exp") + f" (measured {m.sfu_ops_per_clock_per_sm:.2f}/clk/SM)")
    lines = [
        f"# Calibrated profile of {base.full_name}, written by `iosim calibrate` on {m.gpu_name}, {m.date}.",
        f"# Tools: {m.tool}. Base profile: {base.name} ({base.path or 'built-in'}); values not measured keep its sources.",
    ]
    if m.launch_s is not None:
        lines.append(f"# Measured launch overhead (back-to-back one-element kernels): {m.launch_s * 1e6:.2f} us "
                     "(not a profile key; compare iosim.cost.LAUNCH_OVERHEAD_S).")
    if m.clock_hz is not None:
        lines.append(f"# SM clock used for per-clock rates: {m.clock_hz / 1e6:.0f} MHz.")
    lines += ["schema_version = 1", f"name = {_toml_str(base.name + '-calibrated')}",
              f"full_name = {_toml_str(base.full_name + ' (calibrated)')}", f"vendor = {_toml_str(base.vendor)}",
              f"arch = {_toml_str(base.arch)}", "", "[values]"]
    for key in _INT_KEYS + _FLOAT_KEYS:
        if key in replaced:
            v, k, s = replaced[key]
        else:
            v = getattr(base, key)
            if v is None:
                continue
            so = base.sources.get(key)
            k, s = (so.kind, so.text) if so else ("assumed", "copied from the base profile")
        lines.append(f"{key} = {_entry(v, k, s)}")
    lines += ["", "[values.tensor_flops_per_s]"]
    dtypes = sorted(set(base.tensor_flops_per_s) | set(m.tensor_flops_per_s))
    for dt in dtypes:
        if dt in m.tensor_flops_per_s:
            lines.append(f"{dt} = {_entry(float(m.tensor_flops_per_s[dt]), 'calibrated', src('matmul_' + dt))}")
        else:
            so = base.sources.get(f"tensor_flops_per_s.{dt}")
            lines.append(f"{dt} = {_entry(base.tensor_flops_per_s[dt], so.kind if so else 'assumed', so.text if so else 'base profile')}")
    text = "\n".join(lines) + "\n"
    parse_profile(tomllib.loads(text), "<calibrated>")  # never write a profile the loader rejects
    return text


def write_profile(base: Hardware, m: Measurements, path: str | Path) -> Path:
    """Write the calibrated TOML atomically; returns the path."""
    path = Path(path)
    text = profile_toml(base, m)
    atomic_write_text(path, text)
    return path


# --- measurements (need torch + an NVIDIA GPU) -------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        raise IosimError("iosim calibrate needs torch with CUDA (pip install 'iosim[gpu]') and an NVIDIA GPU") from None
    if not torch.cuda.is_available():
        raise IosimError("iosim calibrate needs an NVIDIA GPU: torch.cuda.is_available() is False")
    return torch


def _time_s(torch, fn, reps: int = 20, warmup: int = 3) -> float:
    """Median time of fn() in seconds, CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def measure_copy_bandwidth(nbytes: int, reps: int = 20, inner: int = 1) -> float:
    """(read + write bytes) / s of a device-to-device copy of ``nbytes`` (``inner`` copies per timed call)."""
    torch = _torch()
    n = max(1, nbytes // 16) * 16
    src = torch.empty(n, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)

    def f():
        for _ in range(inner):
            dst.copy_(src)
    t = _time_s(torch, f, reps)
    return 2.0 * n * inner / t


def measure_matmul(dtype: str, n: int = 8192, reps: int = 10) -> float | None:
    """FLOP/s of an n×n×n matmul in ``dtype`` (None if this torch/GPU cannot run it)."""
    torch = _torch()
    if dtype == "fp8":
        if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
            return None
        a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()
        one = torch.tensor(1.0, device="cuda")
        try:
            f = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
            f()
        except Exception:
            return None
    else:
        tdt = getattr(torch, _TORCH_DTYPES[dtype])
        if dtype == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
        a = torch.randn(n, n, device="cuda", dtype=tdt)
        b = torch.randn(n, n, device="cuda", dtype=tdt)
        f = lambda: a @ b  # noqa: E731
    return 2.0 * n ** 3 / _time_s(torch, f, reps)


def measure_exp_ops_per_s(iters: int = 256, elements: int = 1 << 24) -> float | None:
    """exp2 evaluations per second from a Triton kernel (None without triton)."""
    torch = _torch()
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def _exp_kernel(x_ptr, y_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        acc = tl.load(x_ptr + offs)
        for _ in range(ITERS):
            acc = tl.math.exp2(acc * 0.5 - 1.0)  # one MUFU.EX2 (+ one FMA on the FP32 pipe) per element
        tl.store(y_ptr + offs, acc)

    block = 1024
    x = torch.rand(elements, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    grid = (elements // block,)
    t = _time_s(torch, lambda: _exp_kernel[grid](x, y, ITERS=iters, BLOCK=block), reps=10)
    return elements * iters / t


def measure_launch_s(n: int = 2000) -> float:
    """Seconds per back-to-back launch of a one-element kernel."""
    torch = _torch()
    x = torch.zeros(1, device="cuda")

    def f():
        for _ in range(n):
            x.add_(1)
    return _time_s(torch, f, reps=5) / n


def _max_sm_clock_hz() -> float | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
        return float(r.stdout.strip().splitlines()[0]) * 1e6
    except Exception:
        return None


def _tool_versions(torch) -> str:
    parts = [f"torch {torch.__version__}"]
    try:
        import triton
        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts)


def detect_base() -> str:
    torch = _torch()
    name = torch.cuda.get_device_name().lower()
    for key in ("h200", "h100", "b200", "a100", "v100"):
        if key in name:
            return key
    raise IosimError(f"no built-in profile matches GPU {name!r}; pass --base NAME or a .toml path")


def calibrate(base: Hardware, dtypes=("bf16", "fp16", "fp8"), quick: bool = False) -> Measurements:
    """Run every microbenchmark on the current GPU."""
    torch = _torch()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 0) or base.l2_size_bytes
    dram = measure_copy_bandwidth(256 << 20 if quick else 1 << 30)
    l2bw = measure_copy_bandwidth(max(1 << 20, l2 // 8), inner=20)
    n = 4096 if quick else 8192
    flops = {}
    for dt in dtypes:
        v = measure_matmul(dt, n)
        if v:
            flops[dt] = v
    clock = _max_sm_clock_hz() or base.boost_clock_hz
    exp = measure_exp_ops_per_s(64 if quick else 256)
    sfu = exp / (props.multi_processor_count * clock) if exp else None
    methods = {"dram": f"median D2D copy of {'256 MiB' if quick else '1 GiB'}, read+write bytes",
               "l2": f"median of 20 back-to-back D2D copies of {max(1 << 20, l2 // 8):,} B (1/8 of L2), read+write bytes",
               "exp": "Triton kernel, exp2 applied repeatedly to register-resident fp32 values"}
    for dt in flops:
        methods["matmul_" + dt] = (f"median torch.matmul {n}x{n}x{n} (cuBLAS)" if dt != "fp8"
                                   else f"median torch._scaled_mm {n}x{n}x{n} e4m3 -> bf16")
    return Measurements(gpu_name=torch.cuda.get_device_name(), tool=_tool_versions(torch),
                        date=_dt.date.today().isoformat(), dram_bytes_per_s=dram, l2_bytes_per_s=l2bw,
                        tensor_flops_per_s=flops, sfu_ops_per_clock_per_sm=sfu, launch_s=measure_launch_s(),
                        clock_hz=clock, methods=methods)


# --- CLI ----------------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="measure this GPU's ceilings (torch/Triton) and write a calibrated profile TOML")
    p.add_argument("--base", default=None, help="profile to start from (default: detected from the GPU name)")
    p.add_argument("--out", default=None, help="output .toml (default calibrated/<base>-calibrated.toml)")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp8"], choices=sorted(_TORCH_DTYPES))
    p.add_argument("--quick", action="store_true", help="smaller buffers and matrices (about 10 s)")
    p.add_argument("--l2", action="store_true",
                   help="L2 microbenchmarks under ncu (iosim.l2bench, ~3 min) + model fit (iosim.l2fit); writes raw "
                        "CSVs, plots and <base>_l2_calibrated.toml under --l2-dir")
    p.add_argument("--l2-dir", default=None, help="folder for --l2 (default reports/calibration/<base>)")
    p.add_argument("--fit-only", action="store_true", help="with --l2: refit existing measurements in --l2-dir")
    p.add_argument("--l2-reference", default=None,
                   help="with --l2: profile whose L2 is plotted as 'uncalibrated' (default: --base)")


def run(args: argparse.Namespace, out: IO[str]) -> int:
    if args.l2:
        return run_l2(args, out)
    base = load_hardware(args.base or detect_base())
    m = calibrate(base, tuple(args.dtypes), args.quick)
    path = write_profile(base, m, args.out or f"calibrated/{base.name}-calibrated.toml")
    out.write(f"{m.gpu_name}: DRAM {m.dram_bytes_per_s / 1e12:.2f} TB/s, L2 {m.l2_bytes_per_s / 1e12:.2f} TB/s, "
              + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in m.tensor_flops_per_s.items())
              + (f", exp {m.sfu_ops_per_clock_per_sm:.1f}/clk/SM" if m.sfu_ops_per_clock_per_sm else "")
              + (f", launch {m.launch_s * 1e6:.2f} us" if m.launch_s else "") + f"\nwrote {path}\n")
    return 0


def run_l2(args: argparse.Namespace, out: IO[str]) -> int:
    """``iosim calibrate --l2``: measure (unless --fit-only) and fit the L2 model parameters."""
    from iosim import l2fit

    base = args.base or (None if args.fit_only else detect_base())
    d = args.l2_dir or f"reports/calibration/{base or 'h100'}"
    if not args.fit_only:
        from iosim import l2bench

        l2bench.run(d, quick=args.quick, log=lambda s: out.write(s + "\n"))
    elif not Path(d, "l2bench_raw.csv").exists():
        raise IosimError(f"--fit-only: no l2bench_raw.csv in {d}; run `iosim calibrate --l2` on a GPU first")
    s = l2fit.calibrate_dir(d, base, log=lambda s: out.write(s + "\n"), reference=args.l2_reference)
    out.write(f"wrote {s['profile']} and {', '.join(s['plots'])}; RMS miss-ratio error "
              + ", ".join(f"{k} {v:.3f}" for k, v in s["rms"].items()) + "\n")
    return 0
