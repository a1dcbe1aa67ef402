"""Attention across GPUs on paper, up to internet scale (issue 25): predicted time and communication share of ring
attention and DeepSpeed-Ulysses against sequence length (32K-4M tokens) and GPU count (2-1024), H100 and H200,
causal and not.

    .venv/bin/python benchmarks/multigpu_sweep.py            # writes reports/multigpu/sweep.md and sweep.json
    .venv/bin/python benchmarks/multigpu_sweep.py --papers   # the predictions of reports/multigpu/papers.md
                                                              # (-> reports/multigpu/papers.json)

Settings (every one a choice, none measured):
  * shapes: MHA, 32 heads of 128 (Llama-2-7B attention, the Ring Attention paper's 7B setting) and GQA 32/8 heads
    (Llama-3-8B); batch 1, bf16, one attention call (forward) of one layer.
  * ring: zigzag balancing when causal, contiguous otherwise; K/V sent while each step computes (overlap); the merge as
    one fused kernel per step (``merge="fused"``: the eager merge of the measurement script adds 9 launches a step,
    which at 1024 GPUs and short shards is most of a step and not intrinsic to ring attention).
  * Ulysses: where P divides the heads (P ≤ 32); K/V repeated to 32 heads when P > H_kv (DeepSpeed's rule).
  * per-GPU kernels: ``iosim.pipeline.predict`` with the fa2 preset and ``l2=False`` (compulsory DRAM traffic: the
    L2 model at 4M tokens would take hours; FA2 at these sizes is tensor-bound, where the L2 changes little).
  * links: the profiles' [interconnect] tables (NVLink 4 at 450 GB/s per direction inside a node of 8, one 400 Gb/s
    NIC per GPU between nodes: assumed), NCCL's latency constants.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iosim import Problem  # noqa: E402
from iosim.atomic import atomic_write_text  # noqa: E402
from iosim.multigpu import predict_ring, predict_ulysses  # noqa: E402

HARDWARE = ("h100", "h200")
SEQS = tuple(2 ** k for k in range(15, 23))  # 32K .. 4M
DEVICES = tuple(2 ** k for k in range(1, 11))  # 2 .. 1024
SHAPES = {"mha32": (32, 32), "gqa32/8": (32, 8)}
HEAD_DIM, DTYPE = 128, "bf16"
OUT = ROOT / "reports" / "multigpu"


def label(n: int) -> str:
    return f"{n // 2 ** 20}M" if n >= 2 ** 20 else f"{n // 1024}K"


def rows() -> list[dict]:
    out = []
    for hw in HARDWARE:
        for shape, (h, hkv) in SHAPES.items():
            for causal in (False, True):
                for n in SEQS:
                    p = Problem(1, h, hkv, n, n, HEAD_DIM, DTYPE, causal)
                    for P in DEVICES:
                        r = predict_ring(hw, p, P, "zigzag" if causal else "contiguous", l2=False, merge="fused")
                        out.append(record(hw, shape, "ring", r))
                        if h % P == 0:
                            out.append(record(hw, shape, "ulysses", predict_ulysses(hw, p, P, l2=False)))
    return out


def record(hw: str, shape: str, parallel: str, r) -> dict:
    return {"hardware": hw, "shape": shape, "parallel": parallel, "balance": r.balance, "causal": r.problem.causal,
            "seq": r.problem.seq_q, "devices": r.devices, "nodes": r.nodes, "time_s": r.time_s,
            "step_time_s": r.step_time_s, "compute_only_s": r.compute_only_s, "exposed_comm_s": r.exposed_comm_s,
            "comm_share": r.comm_share, "transfer_busy_s": r.transfer_busy_s,
            "bytes_sent_per_gpu": r.bytes_sent_per_gpu}


def table(recs: list[dict], what: str) -> str:
    """Rows: sequence length; columns: GPU count; cell: step time (ring) or time (Ulysses) and comm share."""
    by = {(r["seq"], r["devices"]): r for r in recs}
    cols = [P for P in DEVICES if any((n, P) in by for n in SEQS)]
    lines = ["| N \\ P | " + " | ".join(str(P) for P in cols) + " |", "|---|" + "---|" * len(cols)]
    for n in SEQS:
        cells = []
        for P in cols:
            r = by.get((n, P))
            if r is None:
                cells.append("—")
                continue
            t = r["step_time_s"] if what == "step" else r["time_s"]
            share = f"{100 * r['comm_share']:.0f}%" if r["comm_share"] >= 0.005 else "0"
            cells.append(f"{fmt_t(t)} / {share}")
        lines.append(f"| {label(n)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt_t(t: float) -> str:
    return f"{t * 1e6:.3g} µs" if t < 1e-3 else (f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s")


CROSS_SHARDS = tuple(2 ** k for k in range(7, 17))  # per-GPU shard N/P searched for the crossover: 128 .. 64K


def crossover() -> tuple[str, list[dict]]:
    """Per hardware, shape and mask: the smallest shard N/P (a power of two, 128-64K) from which the ring hides its
    transfers (communication share < 1% there and at every longer shard), on 8 GPUs (one node) and 16 (two nodes)."""
    lines = ["| hardware | shape | causal | 8 GPUs, one node | 16 GPUs, two nodes |", "|---|---|---|---|---|"]
    found = []
    for hw in HARDWARE:
        for shape, (h, hkv) in SHAPES.items():
            for causal in (False, True):
                cells = []
                for P in (8, 16):
                    shares = []
                    for n in CROSS_SHARDS:
                        p = Problem(1, h, hkv, n * P, n * P, HEAD_DIM, DTYPE, causal)
                        shares.append(predict_ring(hw, p, P, "zigzag" if causal else "contiguous", l2=False,
                                                   merge="fused").comm_share)
                    ok = [n for i, n in enumerate(CROSS_SHARDS) if all(x < 0.01 for x in shares[i:])]
                    cells.append(f"{ok[0]:,}" if ok else "> 65,536")
                    found.append({"hardware": hw, "shape": shape, "causal": causal, "devices": P,
                                  "shards": CROSS_SHARDS, "comm_share": shares, "hidden_from": ok[0] if ok else None})
                lines.append(f"| {hw} | {shape} | {'yes' if causal else 'no'} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n", found


def markdown(recs: list[dict], seconds: float, cross: str) -> str:
    parts = [
        "# Attention across GPUs: predicted time and communication share (issue 25)\n",
        "Written by `benchmarks/multigpu_sweep.py` (settings in its docstring; this run took "
        f"{seconds:.0f} s on the CPU). **Every number here is a prediction; none is measured.** "
        "Per-GPU attention kernels: iosim's fa2 preset without the L2 model (`l2=False`); links: the profiles' "
        "`[interconnect]` tables (NVLink 4: 450 GB/s per direction inside a node of 8; beyond 8 GPUs one 400 Gb/s "
        "NIC per GPU, **assumed**; NCCL's latency constants, **estimates**). One forward attention call of one "
        "layer, batch 1, bf16, head dim 128. Ring: zigzag when causal, contiguous otherwise, transfers overlapped, "
        "fused merge. Ulysses: three all-to-alls, attention on H/P heads, one all-to-all (no overlap), only where P "
        "divides the 32 heads.\n",
        "Cell: **time / communication share** — for the ring the steady-state *step* time (one K/V block), for "
        "Ulysses the whole call; share = exposed communication / total time (communication hidden behind compute "
        "counts 0). GPU counts beyond 8 cross nodes.\n",
        "## Where the ring hides its transfers\n",
        "Smallest per-GPU shard N/P (a power of two from 128 to 64K) from which the ring's communication share stays "
        "below 1%, searched directly (not from the grid below):\n",
        cross,
        "\nThe ring's compute per step grows as (N/P)² and its transfer as N/P, so each chip has a shard length above "
        "which the K/V transfer hides (Ring Attention's condition, block ≥ FLOPS / bandwidth; "
        "reports/multigpu/papers.md). Between nodes the link is 9× slower (50 vs 450 GB/s), so the shard must be about 9× "
        "longer; GQA 32/8 sends 4× fewer K/V bytes for the same compute and hides at a shard about 4× shorter (the "
        "powers of two round these ratios; at short shards the fixed latencies also count).\n",
    ]
    for hw in HARDWARE:
        for causal in (False, True):
            mask = "causal" if causal else "non-causal"
            sel = [r for r in recs if r["hardware"] == hw and r["causal"] == causal and r["shape"] == "mha32"]
            parts.append(f"## {hw.upper()}, {mask}, MHA 32 heads\n")
            parts.append(f"### Ring attention ({'zigzag' if causal else 'contiguous'}): step time / share\n")
            parts.append(table([r for r in sel if r["parallel"] == "ring"], "step"))
            parts.append("\n### DeepSpeed-Ulysses: call time / share\n")
            parts.append(table([r for r in sel if r["parallel"] == "ulysses"], "total"))
            parts.append("\n")
    parts.append("## What the model leaves out\n\n"
                 "- NCCL's kernels take SMs and HBM bandwidth from the attention while they run; the overlap here is "
                 "free. Measured on one node this costs a few percent of the step (to be measured: "
                 "benchmarks/gpu/ring_attention.py).\n"
                 "- Achieved link bandwidth: the peak per-direction NVLink rate is used; NVIDIA's own p2p test "
                 "reaches about 380 of 450 GB/s on H100 SXM (NVIDIA/nccl issue 1264).\n"
                 "- Multi-node: one NIC per GPU, no congestion, no rail or topology effects; the ring's inter-node "
                 "hop sets every step; Ulysses' all-to-all is priced by the busier of the NVLink and NIC shares.\n"
                 "- Memory: points whose shards do not fit (e.g. Ulysses at 4M tokens on 2 GPUs) are predicted "
                 "anyway; activations, the rest of the layer and the backward pass are not modelled.\n"
                 "- Ulysses' layout copies around each all-to-all, and any overlap of its collectives with compute, "
                 "are not modelled.\n")
    return "\n".join(parts)


# --- predictions for the papers (reports/multigpu/papers.md) ------------------------------------------------------------

def papers() -> dict:
    """Every number papers.md quotes from iosim, computed before any comparison is written."""
    from iosim.hwprofile import load_hardware
    from iosim.multigpu import interconnect_of, predict_tiling_allreduce, ulysses_plan
    out: dict = {}
    # A. Ring Attention's overlap condition: per-device block c >= F / B (bf16 K and V: 4cd bytes vs 4dc^2 FLOPs per
    #    head), at datasheet F and per-direction B, against iosim's shard from which the ring hides its transfers.
    ring = []
    for hw, P, link in (("a100", 8, "NVLink"), ("a100", 16, "InfiniBand (assumed 200 Gb/s per GPU)"),
                        ("h100", 8, "NVLink"), ("h100", 16, "InfiniBand (assumed 400 Gb/s per GPU)")):
        h = load_hardware(hw)
        ic = interconnect_of(h)
        B = ic.peer_bandwidth_bytes_per_s if P <= ic.gpus_per_node else ic.internode_bandwidth_bytes_per_s
        fb = h.tensor_flops("bf16") / B
        for causal in (False, True):
            shares = {}
            for n in CROSS_SHARDS + (2 ** 17,):
                pr = Problem(1, 32, 32, n * P, n * P, HEAD_DIM, DTYPE, causal)
                shares[n] = predict_ring(hw, pr, P, "zigzag" if causal else "contiguous", l2=False,
                                         merge="fused").comm_share
            ok = [n for n in shares if all(v < 0.01 for m, v in shares.items() if m >= n)]
            ring.append({"hardware": hw, "devices": P, "link": link, "link_bytes_per_s": B, "causal": causal,
                         "paper_condition_tokens": fb, "iosim_hidden_from_tokens": ok[0] if ok else None,
                         "comm_share_by_shard": shares})
    out["ring_attention"] = ring
    # B. Ulysses: bytes per GPU vs the paper's 4Nh/P per link; and the all-to-all time as N and P grow together.
    uly = []
    for n_per, P in ((8192, 4), (8192, 8), (8192, 16), (8192, 32), (8192, 64)):
        N = n_per * P
        pr = Problem(1, 64, 64, N, N, 128, DTYPE, True)  # 64 heads so that P up to 64 divides them
        plan = ulysses_plan(pr, P)
        r = predict_ulysses("a100", pr, P, l2=False)
        a2a = sum(st.transfer_s for st in r.steps)
        uly.append({"seq": N, "devices": P, "hidden": 64 * 128, "bytes_sent_per_gpu": plan.bytes_sent(),
                    "paper_4Nh_over_P_bytes": 4 * N * 64 * 128 * 2 // P,
                    "ratio_to_paper_times_P_over_P_minus_1": plan.bytes_sent() * P / (P - 1) / (4 * N * 64 * 128 * 2 / P),
                    "all_to_all_s": a2a, "attention_s": r.compute_only_s, "comm_share": r.comm_share,
                    "nodes": r.nodes})
    out["ulysses"] = uly
    # C. FastAttention: 256K on 8 V100s (Llama-7B attention, fp16, causal, one layer) by each scheme; tiling-AllReduce
    #    on 8 Ascend 910B (its home) and 8 V100s, tiled vs not.
    fa = []
    p256 = Problem(1, 32, 32, 262144, 262144, 128, "fp16", True)
    for name, fn in (("ring zigzag", lambda: predict_ring("v100", p256, 8, "zigzag", kernel=None,
                                                          algorithm="fastattention_volta", l2=False, merge="fused")),
                     ("ulysses", lambda: predict_ulysses("v100", p256, 8, kernel=None, algorithm="fastattention_volta",
                                                         l2=False)),
                     ("tensor parallel, tiling-AllReduce (8 tiles)",
                      lambda: predict_tiling_allreduce("v100", p256, 8, 8, kernel=None,
                                                       algorithm="fastattention_volta", l2=False)),
                     ("tensor parallel, one AllReduce after the call",
                      lambda: predict_tiling_allreduce("v100", p256, 8, 1, kernel=None,
                                                       algorithm="fastattention_volta", l2=False))):
        r = fn()
        fa.append({"scheme": name, "time_s": r.time_s, "compute_only_s": r.compute_only_s,
                   "comm_share": r.comm_share, "bytes_sent_per_gpu": r.bytes_sent_per_gpu})
    out["fastattention_v100_256k"] = fa
    tiled = []
    for hw, alg, dtype in (("ascend910b", "fastattention_ascend", "fp16"), ("v100", "fastattention_volta", "fp16")):
        for n in (4096, 16384, 65536):
            pr = Problem(1, 32, 32, n, n, 128, dtype, True)
            one = predict_tiling_allreduce(hw, pr, 8, 1, kernel=None, algorithm=alg, l2=False)
            eight = predict_tiling_allreduce(hw, pr, 8, 8, kernel=None, algorithm=alg, l2=False)
            tiled.append({"hardware": hw, "seq": n, "untiled_s": one.time_s, "tiled_s": eight.time_s,
                          "untiled_comm_share": one.comm_share, "tiled_comm_share": eight.comm_share,
                          "speedup": one.time_s / eight.time_s})
    out["tiling_allreduce"] = tiled
    return out


def main() -> None:
    if "--papers" in sys.argv[1:]:
        t0 = time.time()
        res = papers()
        atomic_write_text(OUT / "papers.json", json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        print(f"{time.time() - t0:.0f} s -> {OUT / 'papers.json'}")
        return
    t0 = time.time()
    recs = rows()
    cross, found = crossover()
    seconds = time.time() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "sweep.json", json.dumps({"settings": {
        "hardware": HARDWARE, "seqs": SEQS, "devices": DEVICES, "shapes": SHAPES, "head_dim": HEAD_DIM,
        "dtype": DTYPE, "batch": 1, "l2": False, "kernel": "fa2", "ring_merge": "fused", "overlap": True},
        "rows": recs, "crossover": found}, indent=1) + "\n")
    atomic_write_text(OUT / "sweep.md", markdown(recs, seconds, cross))
    print(f"{len(recs)} points in {seconds:.0f} s -> {OUT / 'sweep.md'}, {OUT / 'sweep.json'}")


if __name__ == "__main__":
    main()
