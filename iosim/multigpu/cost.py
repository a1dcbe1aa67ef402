"""Time of attention across GPUs: the per-GPU kernels are ordinary iosim predictions (``iosim.pipeline.predict`` of
each call's shard shape), the transfers are priced by ``iosim.multigpu.interconnect``, and the two overlap.

Ring (``predict_ring``): GPU r's step t costs c[r][t] = its attention call + the log-sum-exp merge of the result into
its output (``merge_time_s``: the eager PyTorch ops of benchmarks/gpu/ring_attention.py, bytes counted exactly, each
kernel at the HBM bandwidth plus ``iosim.cost.LAUNCH_OVERHEAD_S``). At step t < P−1 each GPU posts a send of its K/V
block to r+1 and a receive from r−1 at the start of the step; a transfer starts when both ends have posted and takes
x_t (``p2p_time_s``: launch + step latency + bytes / bandwidth). A GPU ends step t when its call, its receive and its
send are all done, and starts step t+1 then (dataflow, exact for this protocol):

    recv_end[r] = max(start[r−1], start[r]) + x_t,   end[r][t] = max(start[r] + c[r][t], recv_end[r], recv_end[r+1])

The last step has no transfer; the first step's call overlaps the first transfer. ``overlap=False`` posts the
transfers only after the call (compute, then communicate). Total = max_r end[r][P−1]. Exposed communication = total −
the same dataflow with x = 0; communication share = exposed / total.

Ulysses (``predict_ulysses``): all-to-all Q, K, V (three collectives), attention of the full sequence on H/P heads,
all-to-all O: their sum (DeepSpeed runs them in sequence).

Tiling-AllReduce (``predict_tiling_allreduce``): tile k computes (attention + output projection, c_k) and then
AllReduces (a_k) on a second stream: comp_end_k = comp_end_{k−1} + c_k, ar_end_k = max(comp_end_k, ar_end_{k−1}) + a_k;
total = ar_end_{T−1}; without tiling (tiles=1) the AllReduce follows the whole call.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from iosim.cost import LAUNCH_OVERHEAD_S
from iosim.errors import IosimError, IosimWarning
from iosim.hwprofile import Hardware, load_hardware
from iosim.multigpu.allreduce import DEFAULT_TILES, tiling_allreduce_plan
from iosim.multigpu.interconnect import (Interconnect, Topology, allreduce_time_s, alltoall_time_s, interconnect_of,
                                         p2p_time_s)
from iosim.multigpu.ring import RingPlan, StepCall, ring_plan
from iosim.multigpu.ulysses import ulysses_plan
from iosim.problem import STAT_BYTES, Problem

PARALLELS = ("ring", "ulysses", "tiling-allreduce")

# The merge of benchmarks/gpu/ring_attention.py (``merge_step``), one entry per PyTorch kernel it launches:
# (what, bytes per output element = a + b·e, bytes per output row). out and lse are fp32; o is the call's output (e).
MERGE_KERNELS = (
    ("logaddexp(lse, lse_t)", 0, 0, 3 * STAT_BYTES),
    ("lse - new", 0, 0, 3 * STAT_BYTES),
    ("exp", 0, 0, 2 * STAT_BYTES),
    ("out.mul_(alpha)", 8, 0, STAT_BYTES),
    ("lse_t - new", 0, 0, 3 * STAT_BYTES),
    ("exp", 0, 0, 2 * STAT_BYTES),
    ("o * beta (fp32)", 4, 1, STAT_BYTES),
    ("out.add_(o * beta)", 12, 0, 0),
    ("lse.copy_(new)", 0, 0, 2 * STAT_BYTES),
)
INIT_KERNELS = (("out.copy_(o) (to fp32)", 4, 1, 0), ("lse.copy_(lse_t)", 0, 0, 2 * STAT_BYTES))
# merge="fused": one kernel that reads out, o, lse, lse_t and writes out, lse (what a fused Triton/CUDA merge moves).
FUSED_MERGE_KERNELS = (("fused merge", 8, 1, 4 * STAT_BYTES),)
MERGES = ("eager", "fused")


def _merge_kernels(first: bool, merge: str) -> tuple:
    if merge not in MERGES:
        raise IosimError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
    return INIT_KERNELS if first else (MERGE_KERNELS if merge == "eager" else FUSED_MERGE_KERNELS)


def merge_bytes(p: Problem, rows: int, first: bool, merge: str = "eager") -> int:
    """HBM bytes of one merge (or, ``first``, the copy of step 0's output) over ``rows`` query rows."""
    bh, d, e = p.batch * p.heads, p.head_dim, p.elem_bytes
    return sum(bh * rows * ((a + b * e) * d + r) for _, a, b, r in _merge_kernels(first, merge))


def merge_time_s(hw: Hardware, p: Problem, rows: int, first: bool, merge: str = "eager") -> float:
    """Each merge kernel at the HBM bandwidth plus ``iosim.cost.LAUNCH_OVERHEAD_S``."""
    n = len(_merge_kernels(first, merge))
    return merge_bytes(p, rows, first, merge) / hw.hbm_bandwidth_bytes_per_s + n * LAUNCH_OVERHEAD_S


@dataclass(frozen=True)
class KernelEstimate:
    """One per-GPU attention call's prediction (the fields of ``Prediction.to_dict`` that the cost reads)."""

    problem: Problem
    time_s: float
    bound: str | None
    matmul_flops: int
    sm_read_bytes: int
    sm_write_bytes: int
    dram_read_bytes: int | None
    dram_write_bytes: int | None

    def to_dict(self) -> dict:
        p = self.problem
        return {"seq_q": p.seq_q, "seq_kv": p.seq_kv, "heads": p.heads, "kv_heads": p.kv_heads, "causal": p.causal,
                "time_s": self.time_s, "bound": self.bound, "matmul_flops": self.matmul_flops,
                "sm_read_bytes": self.sm_read_bytes, "sm_write_bytes": self.sm_write_bytes,
                "dram_read_bytes": self.dram_read_bytes, "dram_write_bytes": self.dram_write_bytes}


_KERNELS: dict[tuple, KernelEstimate] = {}


def kernel_estimate(hw: Hardware, p: Problem, kernel: str | None = "fa2", algorithm: str = "flash2",
                    l2: bool = True) -> KernelEstimate:
    """``iosim.pipeline.predict`` of one call (cached by hardware, problem, kernel, algorithm, l2). Shards that would
    not fit one GPU are predicted anyway, without the warning."""
    key = (hw.name, hw.path, p, kernel, algorithm, l2)
    if key not in _KERNELS:
        from iosim.pipeline import predict
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IosimWarning)
            pred = predict(hw, p, None, algorithm, kernel=kernel, l2=l2)
        c = pred.counts
        _KERNELS[key] = KernelEstimate(p, pred.time_s, pred.time.bound, c.matmul_flops, c.sm_read_bytes,
                                       c.sm_write_bytes, pred.dram_read_bytes, pred.dram_write_bytes)
    return _KERNELS[key]


@dataclass(frozen=True)
class Step:
    """One ring step (or one phase of Ulysses / one tile): its compute (the slowest GPU), transfer and time."""

    index: int
    compute_s: float
    transfer_s: float
    time_s: float
    transfer_bytes: int
    what: str = ""

    def to_dict(self) -> dict:
        return {"index": self.index, "what": self.what, "compute_s": self.compute_s, "transfer_s": self.transfer_s,
                "time_s": self.time_s, "transfer_bytes": self.transfer_bytes}


@dataclass(frozen=True)
class MultiGpuPrediction:
    parallel: str
    hardware: str
    problem: Problem
    devices: int
    nodes: int
    balance: str | None
    overlap: bool
    time_s: float
    compute_only_s: float  # the same schedule with free transfers
    transfer_busy_s: float  # sum of the transfers' times (hidden or not)
    bytes_sent_per_gpu: int
    steps: tuple[Step, ...]
    kernels: tuple[KernelEstimate, ...]  # the distinct per-GPU calls
    matmul_flops_per_gpu: tuple[int, ...]
    dram_bytes_per_gpu: tuple[int, ...] | None
    notes: tuple[str, ...] = ()
    l2: bool = True
    kernel: str | None = "fa2"
    algorithm: str = "flash2"
    per_gpu_compute_s: tuple[float, ...] = field(default=(), repr=False)

    @property
    def exposed_comm_s(self) -> float:
        return max(0.0, self.time_s - self.compute_only_s)

    @property
    def comm_share(self) -> float:
        """Exposed communication / total time."""
        return self.exposed_comm_s / self.time_s if self.time_s else 0.0

    @property
    def step_time_s(self) -> float:
        """The median step's time (ring: steady state; other schemes: total / steps)."""
        ts = sorted(s.time_s for s in self.steps)
        return ts[len(ts) // 2] if ts else 0.0

    def to_dict(self) -> dict:
        p = self.problem
        return {
            "parallel": self.parallel, "hardware": self.hardware, "devices": self.devices, "nodes": self.nodes,
            "balance": self.balance, "overlap": self.overlap, "l2": self.l2, "kernel": self.kernel,
            "algorithm": self.algorithm,
            "problem": {"batch": p.batch, "heads": p.heads, "kv_heads": p.kv_heads, "seq_q": p.seq_q,
                        "seq_kv": p.seq_kv, "head_dim": p.head_dim, "dtype": p.dtype, "causal": p.causal},
            "time_s": self.time_s, "compute_only_s": self.compute_only_s, "exposed_comm_s": self.exposed_comm_s,
            "comm_share": self.comm_share, "transfer_busy_s": self.transfer_busy_s, "step_time_s": self.step_time_s,
            "levels": {"interconnect": {"bytes_sent_per_gpu": self.bytes_sent_per_gpu},
                       "hbm": {"dram_bytes_per_gpu": None if self.dram_bytes_per_gpu is None
                               else list(self.dram_bytes_per_gpu)}},
            "matmul_flops_per_gpu": list(self.matmul_flops_per_gpu),
            "steps": [s.to_dict() for s in self.steps],
            "kernels": [k.to_dict() for k in self.kernels],
            "notes": list(self.notes),
        }


def _setup(hardware, p: Problem, devices: int) -> tuple[Hardware, Interconnect, Topology]:
    hw = load_hardware(hardware) if not isinstance(hardware, Hardware) else hardware
    if not isinstance(p, Problem):
        raise IosimError(f"problem must be a Problem, got {type(p).__name__}")
    ic = interconnect_of(hw)
    return hw, ic, Topology(devices, ic.gpus_per_node)


def _topology_note(ic: Interconnect, topo: Topology) -> tuple[str, ...]:
    if topo.nodes == 1:
        return (f"{topo.devices} GPU(s) in one node over {ic.fabric} ({ic.topology})",)
    return (f"{topo.devices} GPUs in {topo.nodes} nodes of {ic.gpus_per_node}: hops between nodes at "
            f"{ic.internode_bandwidth_bytes_per_s / 1e9:g} GB/s per GPU (internode_bandwidth_bytes_per_s)",)


def call_time_s(hw: Hardware, call: StepCall, p: Problem, kernel, algorithm, l2, merge: str = "eager"
                ) -> tuple[float, KernelEstimate | None]:
    """A ring call and its merge (step 0: the copy that starts the output)."""
    if call.empty:
        return 0.0, None
    k = kernel_estimate(hw, call.problem(p), kernel, algorithm, l2)
    return k.time_s + merge_time_s(hw, p, call.nq, call.step == 0, merge), k


def ring_schedule(c, x, overlap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(start, end), each P × P ([gpu, step]), of the ring protocol (module docstring); c[r][t] compute (P × P),
    x[t] the transfer of step t (P−1 of them)."""
    c = np.asarray(c, dtype=float)
    P = c.shape[0]
    start, end = np.zeros((P, P)), np.zeros((P, P))
    s = np.zeros(P)
    for t in range(P):
        comp = s + c[:, t]
        if t < P - 1:
            post = s if overlap else comp
            recv = np.maximum(np.roll(post, 1), post) + x[t]  # from r−1 into r
            e = np.maximum(np.maximum(comp, recv), np.roll(recv, -1))  # and r's own send, received by r+1
        else:
            e = comp
        start[:, t], end[:, t] = s, e
        s = e
    return start, end


def ring_dataflow(c, x, overlap: bool = True) -> tuple[float, list[float]]:
    """(total, end of each step over all GPUs) of ``ring_schedule``."""
    _, end = ring_schedule(c, x, overlap)
    return float(end[:, -1].max()), [float(v) for v in end.max(axis=0)]


def ring_compute_times(hw: Hardware, plan: RingPlan, kernel: str | None = "fa2", algorithm: str = "flash2",
                       l2: bool = True, merge: str = "eager") -> tuple[np.ndarray, dict]:
    """(c, calls): c[r][t] = GPU r's call at step t with its merge; calls: kind → (time, KernelEstimate or None).
    Every call is one of three kinds: its own block (s = r, always step 0), an earlier GPU's (s < r), a later one's
    (s > r); each kind has one shape, so three predictions serve all P² calls."""
    P = plan.devices
    r_, t_ = np.arange(P)[:, None], np.arange(P)[None, :]
    s_ = (r_ - t_) % P
    kind = np.where(s_ == r_, 0, np.where(s_ < r_, 1, 2))
    reps = ((0, 0), (1, 1), (0, 1))  # a (gpu, step) of each kind (kinds 1 and 2 need P ≥ 2)
    calls = {i: call_time_s(hw, plan.call(r, t), plan.problem, kernel, algorithm, l2, merge)
             for i, (r, t) in enumerate(reps[:1 if P == 1 else 3])}
    times = np.array([calls[i][0] if i in calls else 0.0 for i in range(3)])
    return times[kind], {"kind": kind, **calls}


def predict_ring(hardware, problem: Problem, devices: int, balance: str | None = None, *, kernel: str | None = "fa2",
                 algorithm: str = "flash2", l2: bool = True, overlap: bool = True, merge: str = "eager"
                 ) -> MultiGpuPrediction:
    """Ring attention over ``devices`` GPUs (balance: contiguous, striped or zigzag; default zigzag when causal);
    merge: "eager" (the PyTorch ops of benchmarks/gpu/ring_attention.py) or "fused" (one kernel)."""
    hw, ic, topo = _setup(hardware, problem, devices)
    balance = balance or ("zigzag" if problem.causal else "contiguous")
    _merge_kernels(False, merge)
    plan: RingPlan = ring_plan(problem, devices, balance)
    P = devices
    c, calls = ring_compute_times(hw, plan, kernel, algorithm, l2, merge)
    kernels, flops, dram = {}, [0] * P, [0] * P
    for i in range(3):
        k = calls.get(i, (0.0, None))[1]
        if k is None:
            continue
        kernels[k.problem] = k
        n_calls = (calls["kind"] == i).sum(axis=1)
        for r in range(P):
            flops[r] += int(n_calls[r]) * k.matmul_flops
            dram[r] += int(n_calls[r]) * ((k.dram_read_bytes or 0) + (k.dram_write_bytes or 0))
    nbytes = plan.transfer_bytes if P > 1 else 0
    x = [p2p_time_s(ic, topo, nbytes)] * (P - 1)
    total, ends = ring_dataflow(c, x, overlap)
    compute_only, _ = ring_dataflow(c, [0.0] * (P - 1), overlap)
    steps, prev = [], 0.0
    for t in range(P):
        steps.append(Step(t, float(c[:, t].max()), x[t] if t < P - 1 else 0.0, ends[t] - prev,
                          nbytes if t < P - 1 else 0, f"step {t}"))
        prev = ends[t]
    notes = _topology_note(ic, topo) + (
        f"each transfer: K and V of {plan.shard_tokens:,} tokens = {nbytes:,} B per GPU, {P - 1} transfer"
        f"{'s' if P != 2 else ''}",
        "merge: eager PyTorch log-sum-exp update (9 kernels, fp32 output) as in benchmarks/gpu/ring_attention.py"
        if merge == "eager" else "merge: one fused log-sum-exp kernel per step (fp32 output)",
        "NCCL kernels share SMs and HBM with the attention calls: not modelled (transfers cost no compute)")
    return MultiGpuPrediction("ring", hw.name, problem, P, topo.nodes, balance, overlap, total, compute_only,
                              sum(x), plan.bytes_sent(0), tuple(steps), tuple(kernels.values()), tuple(flops),
                              None if not l2 else tuple(dram), notes, l2, kernel, algorithm,
                              tuple(float(v) for v in c.sum(axis=1)))


def predict_ulysses(hardware, problem: Problem, devices: int, *, kernel: str | None = "fa2",
                    algorithm: str = "flash2", l2: bool = True) -> MultiGpuPrediction:
    """DeepSpeed-Ulysses: all-to-all Q, K, V → attention on H/P heads → all-to-all O, in sequence."""
    hw, ic, topo = _setup(hardware, problem, devices)
    plan = ulysses_plan(problem, devices)
    k = kernel_estimate(hw, plan.local, kernel, algorithm, l2)
    steps, i = [], 0
    for coll in plan.collectives[:3]:
        t = alltoall_time_s(ic, topo, coll.bytes_per_peer)
        steps.append(Step(i, 0.0, t, t, coll.bytes_sent, f"all-to-all {coll.tensor}"))
        i += 1
    steps.append(Step(i, k.time_s, 0.0, k.time_s, 0, f"attention on {plan.local.heads} heads, full sequence"))
    t = alltoall_time_s(ic, topo, plan.collectives[3].bytes_per_peer)
    steps.append(Step(i + 1, 0.0, t, t, plan.collectives[3].bytes_sent, "all-to-all O"))
    comm = sum(s.transfer_s for s in steps)
    total = comm + k.time_s
    dram = None if not l2 else ((k.dram_read_bytes or 0) + (k.dram_write_bytes or 0),) * devices
    notes = _topology_note(ic, topo) + plan.notes + (
        "all-to-alls and attention in sequence (DeepSpeed DistributedAttention); the layout copies around each "
        "all-to-all are not counted",)
    return MultiGpuPrediction("ulysses", hw.name, problem, devices, topo.nodes, None, False, total, k.time_s, comm,
                              plan.bytes_sent(), tuple(steps), (k,), (k.matmul_flops,) * devices, dram, notes, l2,
                              kernel, algorithm, (k.time_s,) * devices)


def projection_time_s(hw: Hardware, flops: int, nbytes: int, dtype: str) -> float:
    """The output projection GEMM as a roofline: tensor peak or HBM, whichever is slower (iosim has no GEMM model;
    assumed at 100% of both peaks), plus one launch."""
    from iosim.cost import tensor_dtype
    return max(flops / hw.tensor_flops(tensor_dtype(dtype)), nbytes / hw.hbm_bandwidth_bytes_per_s) + LAUNCH_OVERHEAD_S


def predict_tiling_allreduce(hardware, problem: Problem, devices: int, tiles: int = DEFAULT_TILES, *,
                             hidden: int | None = None, kernel: str | None = "fa2", algorithm: str = "flash2",
                             l2: bool = True) -> MultiGpuPrediction:
    """Tensor-parallel attention + output projection with FastAttention's tiling-AllReduce (``allreduce`` module)."""
    hw, ic, topo = _setup(hardware, problem, devices)
    plan = tiling_allreduce_plan(problem, devices, tiles, hidden)
    comp_end = ar_end = 0.0
    steps, kernels, flops, dram, comp_total, ar_total = [], {}, 0, 0, 0.0, 0.0
    for tile in plan.tiles:
        k = kernel_estimate(hw, tile.attention, kernel, algorithm, l2)
        kernels[k.problem] = k
        flops += k.matmul_flops + tile.proj_flops
        dram += (k.dram_read_bytes or 0) + (k.dram_write_bytes or 0)
        c = k.time_s + projection_time_s(hw, tile.proj_flops, tile.proj_bytes, problem.dtype)
        a = allreduce_time_s(ic, topo, tile.message_bytes)
        before = ar_end
        comp_end += c
        ar_end = max(comp_end, ar_end) + a
        comp_total += c
        ar_total += a
        steps.append(Step(tile.index, c, a, ar_end - before, tile.bytes_sent,
                          f"tile {tile.index}: rows {tile.row_start}-{tile.row_stop}"))
    untiled = comp_total + allreduce_time_s(ic, topo, sum(t.message_bytes for t in plan.tiles))
    hl = problem.heads // devices
    notes = _topology_note(ic, topo) + (
        f"tensor parallel: {hl} heads per GPU, output projection {hl * problem.head_dim}×{plan.hidden}; "
        f"{len(plan.tiles)} tiles, each AllReduce overlapped with the next tile (FastAttention tiling-AllReduce, our "
        "reading of the abstract)",
        f"without tiling (compute, then one AllReduce): {untiled * 1e3:.4g} ms",
        "projection GEMM at the tensor peak or HBM bandwidth (roofline, assumed)")
    return MultiGpuPrediction("tiling-allreduce", hw.name, problem, devices, topo.nodes, None, True, ar_end,
                              comp_total, ar_total, plan.bytes_sent(), tuple(steps), tuple(kernels.values()),
                              (flops,) * devices, None if not l2 else (dram,) * devices, notes, l2, kernel,
                              algorithm, (comp_total,) * devices)


def predict_multigpu(hardware, problem: Problem, devices: int, parallel: str = "ring", **kw) -> MultiGpuPrediction:
    if parallel == "ring":
        return predict_ring(hardware, problem, devices, **kw)
    if parallel == "ulysses":
        kw.pop("balance", None), kw.pop("overlap", None)
        return predict_ulysses(hardware, problem, devices, **kw)
    if parallel == "tiling-allreduce":
        kw.pop("balance", None), kw.pop("overlap", None)
        return predict_tiling_allreduce(hardware, problem, devices, **kw)
    raise IosimError(f"parallel must be one of {', '.join(PARALLELS)}, got {parallel!r} (set --parallel)")
