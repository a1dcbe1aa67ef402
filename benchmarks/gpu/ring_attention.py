"""Ring attention of our own in PyTorch over 2 GPUs (NCCL), measured step by step against iosim.multigpu (issue 25).

Three subcommands:

    # 1. here, BEFORE any measurement: the predictions, written down first (iosim installed; minutes: the L2 model)
    .venv/bin/python benchmarks/gpu/ring_attention.py predict --hardware h200 --out reports/multigpu

    # 2. on a machine with 2 GPUs (torch with CUDA + NCCL; iosim NOT needed): one process per GPU via mp.spawn
    python3 benchmarks/gpu/ring_attention.py measure --out "$OUT"
    #    or: torchrun --nproc-per-node 2 benchmarks/gpu/ring_attention.py measure --out "$OUT"

    # 3. here again: measured vs predicted per ring step and total, with median and worst error
    .venv/bin/python benchmarks/gpu/ring_attention.py compare --measured "$OUT/ring_measured.csv" \
        --predicted reports/multigpu/ring_predicted_h200.csv

The implementation (``measure``; nothing from iosim): each GPU holds Q, K, V of its N/P tokens (contiguous for
non-causal; zigzag for causal: chunks r and 2P−1−r of 2P). At ring step t it runs one SDPA flash call
(``torch.ops.aten._scaled_dot_product_flash_attention``, FlashAttention-2, which returns the log-sum-exp) on the K/V
block it holds, merges the result into an fp32 output by log-sum-exp (``merge_step``: plain PyTorch ops, the
kernels ``iosim.multigpu.cost.MERGE_KERNELS`` prices), and — at the same time, on NCCL's stream — sends that block
(K and V stacked in one buffer) to GPU r+1 and receives the next from GPU r−1 with one ``dist.batch_isend_irecv``.
The call of each (GPU, step) is exactly ``iosim.multigpu.ring``'s plan (written out again in ``call_of``; ``compare``
checks the recorded shapes against the plan, and the bytes each GPU sent against the model, exactly).

``measure --cpu`` is a dry run of all of it on the CPU (gloo, PyTorch's CPU flash op, host timers): it checks the
logic, the bytes and the output; its times mean nothing.

Modes, each timed with CUDA events on the compute stream (REPS runs after one warm-up):
  ring        overlapped, as above: per-step time (step start → call, merge and both transfers done) and total;
  sequential  the same, each transfer posted only after the step's call and merge (``overlap=False`` in iosim);
  compute     the calls and merges alone (no transfers): iosim's per-call time c[r][t];
  comm        the transfers alone: iosim's p2p_time_s.
A correctness check first: at N = 4096 (H = 4, d = 128) the gathered ring output of every balancing is compared with
single-GPU ``F.scaled_dot_product_attention`` on the whole sequence.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEQS = (32768, 65536, 131072, 262144, 524288)
CASES = [(n, causal) for n in SEQS for causal in (False, True)]  # causal → zigzag, non-causal → contiguous
BATCH, HEADS, HEAD_DIM, DTYPE = 1, 32, 128, "bf16"  # MHA (SDPA's flash op takes equal Q and K/V heads)
REPS = 3
MODES = ("ring", "sequential", "compute", "comm")
CHECK = (4096, 4, 128)  # correctness check: N, heads, head_dim
STEP_FIELDS = ["heads", "seq", "causal", "balance", "mode", "rep", "rank", "step", "nq", "nk", "call_causal", "step_ms",
               "bytes_sent"]


def balance_of(causal: bool) -> str:
    return "zigzag" if causal else "contiguous"


def call_of(balance: str, causal: bool, r: int, t: int, P: int, n: int) -> tuple[int, int, int, int, bool] | None:
    """(q_start, q_stop, k_start, k_stop, causal) of GPU r's call at step t on its local rows (iosim.multigpu.ring's
    plan, written out here so that this file runs without iosim); None: no call."""
    s = (r - t) % P
    if not causal:
        return 0, n, 0, n, False
    if balance == "contiguous":
        return (0, n, 0, n, False) if s < r else ((0, n, 0, n, True) if s == r else None)
    if balance == "striped":
        return (0, n, 0, n, True) if s <= r else ((1, n, 0, n - 1, True) if n > 1 else None)
    c = n // 2
    if s == r:
        return 0, n, 0, n, True
    return (0, n, 0, c, False) if s < r else (c, n, 0, n, False)


def positions(balance: str, N: int, P: int, r: int):
    import torch
    if balance == "contiguous":
        return torch.arange(r * (N // P), (r + 1) * (N // P))
    if balance == "striped":
        return torch.arange(r, N, P)
    c = N // (2 * P)
    return torch.cat([torch.arange(r * c, (r + 1) * c), torch.arange((2 * P - 1 - r) * c, (2 * P - r) * c)])


# --- measurement (torch only) -------------------------------------------------------------------------------------------

CPU = False  # measure --cpu: gloo, CPU tensors, PyTorch's CPU flash op, wall-clock timers (a dry run of the logic)


def device(rank: int | None = None):
    import torch
    return torch.device("cpu") if CPU else torch.device("cuda", torch.cuda.current_device() if rank is None else rank)


class _WallEvent:
    """torch.cuda.Event's timing interface on the host clock (--cpu)."""

    def __init__(self, **_):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, other) -> float:
        return 1e3 * (other.t - self.t)


def event():
    import torch
    return _WallEvent() if CPU else torch.cuda.Event(enable_timing=True)


def sync() -> None:
    import torch
    if not CPU:
        torch.cuda.synchronize()


def flash(q, k, v, causal: bool):
    """(O, LSE) of one SDPA flash call; LSE fp32 [B, H, Nq] (natural log)."""
    import torch
    if CPU:
        res = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)
    else:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False)
    return res[0], res[1][..., :q.shape[2]]


def merge_step(out, lse, o, lse_t, rows: slice, first: bool) -> None:
    """out[:, :, rows], lse[:, :, rows] ← their log-sum-exp merge with (o, lse_t). The PyTorch kernels launched here
    are iosim.multigpu.cost.MERGE_KERNELS (INIT_KERNELS when ``first``), in this order: keep the two in step."""
    import torch
    o_sl, l_sl = out[:, :, rows], lse[:, :, rows]
    if first:
        o_sl.copy_(o)
        l_sl.copy_(lse_t)
        return
    new = torch.logaddexp(l_sl, lse_t)
    o_sl.mul_(torch.exp(l_sl - new).unsqueeze(-1))
    o_sl.add_(o * torch.exp(lse_t - new).unsqueeze(-1))
    l_sl.copy_(new)


class Ring:
    """One GPU's part of ring attention over the default process group."""

    def __init__(self, rank: int, P: int, N: int, H: int, d: int, causal: bool, balance: str, seed: int = 0,
                 keep_full: bool = False):
        import torch
        self.rank, self.P, self.N, self.causal, self.balance = rank, P, N, causal, balance
        self.n = N // P
        dev = device()
        g = torch.Generator(device=dev).manual_seed(seed)
        if keep_full:  # the whole sequence, drawn with one seed on every rank (the check rebuilds it); keep the shard
            pos = positions(balance, N, P, rank).to(dev)
            self.full = [torch.randn((BATCH, H, N, d), device=dev, dtype=torch.bfloat16, generator=g)
                         for _ in range(3)]
            self.q, k, v = (x[:, :, pos].contiguous() for x in self.full)
        else:  # timing: the shard only (values do not change the time)
            self.full = None
            self.q, k, v = (torch.randn((BATCH, H, self.n, d), device=dev, dtype=torch.bfloat16, generator=g)
                            for _ in range(3))
        self.local_kv = torch.stack([k, v])  # [2, B, H, n, d]: K and V travel as one message
        self.kv = [self.local_kv.clone(), torch.empty_like(self.local_kv)]
        self.out = torch.empty((BATCH, H, self.n, d), device=dev, dtype=torch.float32)
        self.lse = torch.empty((BATCH, H, self.n), device=dev, dtype=torch.float32)
        self.bytes_sent = 0

    def transfer(self, t: int):
        """Send the block held at step t to r+1, receive the next from r−1 (double buffer)."""
        import torch.distributed as dist
        send, recv = self.kv[t % 2], self.kv[(t + 1) % 2]
        ops = [dist.P2POp(dist.isend, send, (self.rank + 1) % self.P),
               dist.P2POp(dist.irecv, recv, (self.rank - 1) % self.P)]
        self.bytes_sent += send.numel() * send.element_size()
        return dist.batch_isend_irecv(ops)

    def compute(self, t: int, kv) -> tuple | None:
        call = call_of(self.balance, self.causal, self.rank, t, self.P, self.n)
        if call is None:
            return None
        q0, q1, k0, k1, cz = call
        o, lse_t = flash(self.q[:, :, q0:q1], kv[0][:, :, k0:k1], kv[1][:, :, k0:k1], cz)
        merge_step(self.out, self.lse, o, lse_t, slice(q0, q1), t == 0)
        return call

    def run(self, mode: str) -> tuple[list[float], float, list[tuple]]:
        """(per-step times in ms, total ms, calls made) of one run of ``mode`` (module docstring)."""
        P = self.P
        if P > 2:  # step 1 onward overwrote the first buffer: start from the local block again (not timed)
            self.kv[0].copy_(self.local_kv)
        ev = [(event(), event()) for _ in range(P)]
        calls = []
        for t in range(P):
            ev[t][0].record()
            reqs = None
            if mode in ("ring", "comm") and t < P - 1:
                reqs = self.transfer(t)
            if mode != "comm":  # compute mode: the same (local) buffer every step; the calls' shapes are the plan's
                calls.append(self.compute(t, self.kv[0] if mode == "compute" else self.kv[t % 2]))
            if mode == "sequential" and t < P - 1:
                reqs = self.transfer(t)
            for w in reqs or ():
                w.wait()  # the compute stream waits for NCCL's (the host does not block)
            ev[t][1].record()
        sync()
        return [a.elapsed_time(b) for a, b in ev], ev[0][0].elapsed_time(ev[-1][1]), calls


def gathered_output(ring: "Ring"):
    """The global output [B, H, N, d] on every rank (all_gather of the shards, scattered to their positions)."""
    import torch
    import torch.distributed as dist
    parts = [torch.empty_like(ring.out) for _ in range(ring.P)]
    dist.all_gather(parts, ring.out.contiguous())
    full = torch.empty((BATCH, ring.out.shape[1], ring.N, ring.out.shape[3]), device=device(), dtype=torch.float32)
    for r, part in enumerate(parts):
        full[:, :, positions(ring.balance, ring.N, ring.P, r).to(device())] = part
    return full


def check(rank: int, P: int) -> list[dict]:
    """Ring output vs single-GPU SDPA at a small size, every balancing."""
    import torch.nn.functional as F
    N, H, d = CHECK
    rows = []
    for causal, balance in ((False, "contiguous"), (True, "zigzag"), (True, "striped"), (True, "contiguous")):
        ring = Ring(rank, P, N, H, d, causal, balance, seed=1234, keep_full=True)
        ring.run("ring")
        got = gathered_output(ring)
        q, k, v = ring.full
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        err = (got - want).abs().max().item()
        rows.append({"causal": causal, "balance": balance, "max_abs_err": err, "ok": err < 2e-2})
    return rows


def worker(rank: int, P: int, out_dir: str, seqs: list[int], reps: int, cpu: bool = False, heads: int = HEADS
           ) -> None:
    import torch
    import torch.distributed as dist
    global CPU
    CPU = cpu
    if not CPU:
        torch.cuda.set_device(rank)
    if not dist.is_initialized():
        if CPU:
            dist.init_process_group("gloo", rank=rank, world_size=P)
        else:
            dist.init_process_group("nccl", rank=rank, world_size=P, device_id=torch.device("cuda", rank))
    barrier = (lambda: dist.barrier()) if CPU else (lambda: dist.barrier(device_ids=[rank]))
    meta = {"gpu": "cpu (dry run)" if CPU else torch.cuda.get_device_name(rank), "torch": torch.__version__,
            "nccl": "gloo" if CPU else str(torch.cuda.nccl.version()), "world_size": P, "heads": heads,
            "head_dim": HEAD_DIM, "batch": BATCH, "dtype": DTYPE, "reps": reps,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    checks = check(rank, P)
    if rank == 0:
        print("correctness:", json.dumps(checks), flush=True)
    rows = []
    for N, causal in [(n, causal) for n in seqs for causal in (False, True)]:
        bal = balance_of(causal)
        ring = Ring(rank, P, N, heads, HEAD_DIM, causal, bal)
        barrier()
        ring.run("ring")  # warm-up: NCCL p2p connection, kernel selection
        for mode in MODES:
            for rep in range(reps):
                barrier()
                sync()
                ring.bytes_sent = 0
                steps, total, calls = ring.run(mode)
                base = {"heads": heads, "seq": N, "causal": int(causal), "balance": bal, "mode": mode, "rep": rep,
                        "rank": rank}
                for t, ms in enumerate(steps):
                    c = calls[t] if mode != "comm" else None
                    rows.append({**base, "step": t, "nq": "" if c is None else c[1] - c[0],
                                 "nk": "" if c is None else c[3] - c[2], "call_causal": "" if c is None else int(c[4]),
                                 "step_ms": ms, "bytes_sent": ""})
                rows.append({**base, "step": "total", "nq": "", "nk": "", "call_causal": "", "step_ms": total,
                             "bytes_sent": ring.bytes_sent})
        if rank == 0:
            tot = [r["step_ms"] for r in rows if r["seq"] == N and r["causal"] == int(causal) and r["mode"] == "ring"
                   and r["step"] == "total"]
            print(f"N={N} causal={causal}: ring total {statistics.median(tot):.3f} ms (rank 0)", flush=True)
        del ring
        if not CPU:
            torch.cuda.empty_cache()
    everything = [None] * P
    dist.all_gather_object(everything, rows)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "ring_measured.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=STEP_FIELDS)
            w.writeheader()
            for part in everything:
                w.writerows(part)
        with open(os.path.join(out_dir, "ring_meta.json"), "w") as f:
            json.dump({**meta, "correctness": checks}, f, indent=1)
    barrier()
    dist.destroy_process_group()


def _spawned(rank: int, P: int, port: int, out_dir: str, seqs: list[int], reps: int, cpu: bool, heads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    worker(rank, P, out_dir, seqs, reps, cpu, heads)


def measure(a: argparse.Namespace) -> None:
    import socket

    import torch
    import torch.multiprocessing as mp
    seqs = [int(x) for x in a.seqs.split(",")] if a.seqs else list(SEQS)
    if "RANK" in os.environ:  # torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), a.out, seqs, a.reps, a.cpu, a.heads)
        return
    P = a.devices or (2 if a.cpu else torch.cuda.device_count())
    if P < 2:
        sys.exit(f"measure needs at least 2 GPUs, found {torch.cuda.device_count()} (--cpu: a dry run on the CPU)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(P, port, a.out, seqs, a.reps, a.cpu, a.heads), nprocs=P, join=True)


# --- predictions and comparison (iosim) --------------------------------------------------------------------------------

PRED_FIELDS = ["hardware", "heads", "seq", "causal", "balance", "devices", "mode", "step", "pred_ms", "bytes_sent"]


def _iosim():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import iosim.multigpu as mg
    return mg


def predict(a: argparse.Namespace) -> None:
    """Predicted per-step times (the slowest GPU's duration of each step) and totals of every mode and case."""
    import numpy as np
    mg = _iosim()
    from iosim import Problem, load_hardware
    from iosim.atomic import atomic_write_text
    from iosim.multigpu.cost import ring_compute_times, ring_schedule
    from iosim.multigpu.interconnect import Topology, p2p_time_s
    hw, P, rows = load_hardware(a.hardware), a.devices, []
    ic = mg.interconnect_of(hw)
    t0 = time.time()
    seqs = [int(v) for v in a.seqs.split(",")] if a.seqs else list(SEQS)
    for N, causal in [(n, causal) for n in seqs for causal in (False, True)]:
        bal = balance_of(causal)
        p = Problem(BATCH, a.heads, a.heads, N, N, HEAD_DIM, DTYPE, causal)
        plan = mg.ring_plan(p, P, bal)
        c, _ = ring_compute_times(hw, plan, "fa2", l2=not a.no_l2, merge="eager")
        x = p2p_time_s(ic, Topology(P, ic.gpus_per_node), plan.transfer_bytes)
        for mode in MODES:
            if mode == "compute":  # no transfers: the GPUs do not wait for each other
                dur, total = c.max(axis=0), float(c.sum(axis=1).max())
            else:
                cc = np.zeros_like(c) if mode == "comm" else c
                start, end = ring_schedule(cc, [x] * (P - 1), overlap=(mode != "sequential"))
                dur, total = (end - start).max(axis=0), float(end[:, -1].max())  # per step: the slowest GPU
            key = {"hardware": hw.name, "heads": a.heads, "seq": N, "causal": int(causal), "balance": bal, "devices": P,
                   "mode": mode}
            rows += [{**key, "step": t, "pred_ms": 1e3 * dur[t], "bytes_sent": ""} for t in range(P)]
            rows.append({**key, "step": "total", "pred_ms": 1e3 * total,
                         "bytes_sent": plan.bytes_sent(0) if mode != "compute" else 0})
        print(f"N={N} causal={causal}: predicted ring total {_total(rows, N, causal, 'ring'):.3f} ms "
              f"({time.time() - t0:.0f} s)", flush=True)
    lines = [",".join(PRED_FIELDS)] + [",".join(str(r[k]) for k in PRED_FIELDS) for r in rows]
    path = os.path.join(a.out, f"ring_predicted_{hw.name}.csv")
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path} (l2={'off' if a.no_l2 else 'on'}, {time.time() - t0:.0f} s)")


def _total(rows: list[dict], N: int, causal: bool, mode: str) -> float:
    return next(r["pred_ms"] for r in rows if r["seq"] == N and r["causal"] == int(causal) and r["mode"] == mode
                and r["step"] == "total")


def compare(a: argparse.Namespace) -> None:
    """Measured (median over reps; per step the slowest rank) vs predicted; bytes and call shapes checked exactly."""
    mg = _iosim()
    from iosim import Problem
    meas = list(csv.DictReader(open(a.measured)))
    pred = {(int(r["heads"]), int(r["seq"]), int(r["causal"]), r["mode"], r["step"]): float(r["pred_ms"])
            for r in csv.DictReader(open(a.predicted))}
    P = max(int(r["rank"]) for r in meas) + 1
    problems = []
    out_rows = []
    for H, N, causal in sorted({(int(r["heads"]), int(r["seq"]), bool(int(r["causal"]))) for r in meas}):
        sel = [r for r in meas if (int(r["heads"]), int(r["seq"]), int(r["causal"])) == (H, N, int(causal))]
        bal = balance_of(causal)
        plan = mg.ring_plan(Problem(BATCH, H, H, N, N, HEAD_DIM, DTYPE, causal), P, bal)
        for r in sel:  # the calls run are the plan's, and every GPU sent exactly the model's bytes
            if r["mode"] in ("ring", "sequential", "compute") and r["nq"] != "":
                call = plan.call(int(r["rank"]), int(r["step"]))
                if (int(r["nq"]), int(r["nk"]), bool(int(r["call_causal"]))) != (call.nq, call.nk, call.causal):
                    problems.append(f"N={N} causal={causal} rank {r['rank']} step {r['step']}: ran {r['nq']}×"
                                    f"{r['nk']}, plan {call.nq}×{call.nk}")
            if r["mode"] in ("ring", "sequential", "comm") and r["step"] == "total":
                if int(r["bytes_sent"]) != plan.bytes_sent(int(r["rank"])):
                    problems.append(f"N={N} rank {r['rank']} {r['mode']}: sent {r['bytes_sent']} B, model "
                                    f"{plan.bytes_sent(int(r['rank']))} B")
        reps = sorted({int(r["rep"]) for r in sel})
        for mode in MODES:
            ms = [r for r in sel if r["mode"] == mode]
            for t in [str(t) for t in range(P)] + ["total"]:
                # per step the slowest rank, then the median over repetitions
                per_rep = [max(float(r["step_ms"]) for r in ms if int(r["rep"]) == k and r["step"] == t)
                           for k in reps]
                key = (H, N, int(causal), mode, t)
                if key not in pred:
                    sys.exit(f"no prediction for heads={H} N={N} causal={causal} {mode} step {t} in {a.predicted}; "
                             "run `predict` with the same --heads / --seqs first")
                out_rows.append((N, causal, mode, t, statistics.median(per_rep), pred[key]))
    print(f"{'N':>8} {'causal':>6} {'mode':>10} {'step':>5} {'measured ms':>12} {'predicted ms':>12} {'error':>8}")
    for N, causal, mode, step, m, p in out_rows:
        print(f"{N:>8} {int(causal):>6} {mode:>10} {step:>5} {m:>12.3f} {p:>12.3f} {100 * (p / m - 1):>+7.1f}%")
    print()
    for mode in MODES:
        for what in ("step", "total"):
            errs = [p / m - 1 for N, c, md, s, m, p in out_rows if md == mode and (s == "total") == (what == "total")
                    and p > 1e-3 and m > 1e-3]  # steps with no work (the comm run's last step) are left out
            if errs:
                worst = max(errs, key=abs)
                print(f"{mode:>10} {what:>5}: median |error| {100 * statistics.median(map(abs, errs)):.1f}%, worst "
                      f"{100 * worst:+.1f}% over {len(errs)}")
    print("bytes sent and call shapes: " + ("exactly the model's" if not problems else f"{len(problems)} MISMATCHES"))
    for line in problems[:20]:
        print("  " + line)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seq", "causal", "mode", "step", "measured_ms", "predicted_ms", "error"])
            w.writerows([(N, int(c), md, s, f"{m:.4f}", f"{p:.4f}", f"{p / m - 1:.4f}")
                         for N, c, md, s, m, p in out_rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", default=os.environ.get("OUT", "."))
    m.add_argument("--devices", type=int, default=None, help="GPUs (default: all visible)")
    m.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default 32K..512K)")
    m.add_argument("--reps", type=int, default=REPS)
    m.add_argument("--heads", type=int, default=HEADS)
    m.add_argument("--cpu", action="store_true", help="dry run on the CPU (gloo, CPU flash op, host timers): checks "
                   "the logic, bytes and output; its times mean nothing")
    p = sub.add_parser("predict")
    p.add_argument("--hardware", default="h200")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--heads", type=int, default=HEADS)
    p.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default 32K..512K)")
    p.add_argument("--out", default=os.path.join(ROOT, "reports", "multigpu"))
    p.add_argument("--no-l2", action="store_true", help="kernels without the L2 model (fast; not the validated model)")
    c = sub.add_parser("compare")
    c.add_argument("--measured", required=True)
    c.add_argument("--predicted", default=os.path.join(ROOT, "reports", "multigpu", "ring_predicted_h200.csv"))
    c.add_argument("--out", default=None, help="CSV of the rows")
    a = ap.parse_args()
    {"measure": measure, "predict": predict, "compare": compare}[a.cmd](a)


if __name__ == "__main__":
    main()
