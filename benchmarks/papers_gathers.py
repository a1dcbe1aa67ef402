"""The permutation/gather sparse family against its papers' headline figures (issue 23): PBS-Attn, S2O,
AnchorAttention, HyperAttention, DraftAttention.

    .venv/bin/python benchmarks/papers_gathers.py          # writes reports/papers/<method>.md + .json
    .venv/bin/python benchmarks/papers_gathers.py --dry    # tiny sizes, writes nothing: exercises every code path

Discipline (as benchmarks/papers.py): every paper number, setting, density and dense baseline below was written into
this file and committed BEFORE its first run; no model code, constant or profile is changed after the ratios are
seen; the tables are kept as they first came out (a later fix adds a rerun below the first table, saying why).
Ratio = iosim / paper. Densities come from the papers' own figures where the notes give one; where they do not
(S2O, AnchorAttention) a grid fixed here is reported, plus the density at which iosim would reproduce the paper's
number, labelled an *inversion* (a statement about the model, not a prediction).

Sources: ../shared/research/seed-algorithms-io.md §4 (PBS), §5 (S2O), §10 (HyperAttention), §11 (AnchorAttention,
DraftAttention, Re-ttention); the repos named in each module's docstring. Both sides of every speedup are predicted
with ``l2=False`` (DRAM time from compulsory traffic, the same rule on both sides); the dense baseline is the
FlashAttention-2 preset (``kernel="fa2"``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iosim.atomic import atomic_write_text  # noqa: E402
from iosim.pipeline import predict  # noqa: E402
from iosim.problem import KernelConfig, Problem  # noqa: E402

OUT = ROOT / "reports" / "papers"
DRY = "--dry" in sys.argv
K = 1024

# --- settings, fixed before the first run -------------------------------------------------------------------------

LLAMA31_8B = dict(heads=32, kv_heads=8, head_dim=128)  # Llama-3.1-8B attention (PBS, S2O, AnchorAttention)
PBS = dict(hw="h100", hw_note="assumed: the GPU is not given in the notes (seed-algorithms-io.md §4 e: UNVERIFIED)",
           seqs=(8 * K, 16 * K, 32 * K, 64 * K, 128 * K), density=0.4, density_alt=0.3,
           density_note="block sparsity 'rises … to >60%' (notes §4 e, secondary summary): density 0.4 at the "
                        "headline; 0.3 alongside",
           e2e=2.75)
S2O = dict(hw="h100", hw_note="assumed: abstract only (no GPU named in it)", seq=128 * K, densities=(0.05, 0.1, 0.2),
           attn=7.51, e2e=3.81)
ANCHOR = dict(hw="a100", hw_note="assumed: the notes name no GPU; the FlexPrefill/MInference code the repo builds on "
                                 "was benchmarked on A100s", seq=128 * K, densities=(0.05, 0.1, 0.2), over_sota=1.44,
              over_full=4.6, over_full_src="third-party summary (sciencestack.ai TL;DR: 'up to 4.6x versus full KV "
                                           "attention'), not read in the paper")
HYPER = dict(hw="a100", hw_note="the repo README: 'a single NVIDIA A100 with 40GB VRAM' (iosim's a100 profile is the "
                                "80 GB SXM part: more HBM bandwidth)", seq=131072, heads=32, head_dim=64, speedup=5.0,
             chatglm_seq=32 * K, chatglm=dict(heads=32, kv_heads=2, head_dim=128), chatglm_e2e=1.5)
DRAFT = dict(hw="a100", hw_note="the repo README generates its videos on A100; the speedup figure's GPU is assumed the "
                                "same", heads=24, head_dim=128, text_len=256, visual=126720, sparsity=0.9, e2e=1.75,
             attn_share=0.8)

# --- helpers ------------------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        return subprocess.run(["git", "log", "-1", "--format=%h", "--", "benchmarks/papers_gathers.py"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def pred(hw, p, alg, params=None, kernel=None):
    """(time_s, {kernel: time_s}, flops, error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = predict(hw, p, KernelConfig(), alg, kernel=kernel, l2=False, params=params)
        except Exception as e:  # noqa: BLE001 — a model error is a result to report
            return None, {}, None, f"{type(e).__name__}: {e}"
    return r.time_s, {k.name: k.time_s for k in r.time.kernels}, r.counts.flops, None


def speedup(hw, p, alg, params, main_kernels):
    """Sparse vs FA2: speedup, the sparse side's pre-pass share (kernels not in main_kernels), both times."""
    ts, parts, fl, err = pred(hw, p, alg, params)
    td, _, fld, err2 = pred(hw, p, "flash2", kernel="fa2")
    if ts is None or td is None:
        return dict(error=err or err2)
    main = sum(v for k, v in parts.items() if any(k.endswith(m) for m in main_kernels))
    return dict(speedup=td / ts, t_sparse_s=ts, t_fa2_s=td, prepass_share=1 - main / ts, flops_sparse=fl,
                flops_fa2=fld, kernels_s=parts)


def invert(hw, p, alg, target, lo=0.002, hi=1.0, iters=12, key="density", extra=None):
    """The density at which iosim's speedup equals ``target`` (speedup falls with density), or None if outside."""
    f = lambda d: speedup(hw, p, alg, {key: d} | (extra or {}), ())  # noqa: E731
    s_lo, s_hi = f(lo).get("speedup"), f(hi).get("speedup")
    if s_lo is None or s_hi is None or not (s_hi <= target <= s_lo):
        return None
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        (lo, hi) = (mid, hi) if f(mid)["speedup"] >= target else (lo, mid)
    return (lo * hi) ** 0.5


def row(key, figure, setting, paper, iosim, note="", extra=None, ratio=True):
    r = None if (not ratio or iosim is None or not paper) else iosim / paper
    return dict(key=key, figure=figure, setting=setting, paper=paper, iosim=iosim, ratio=r, note=note,
                extra=extra or {})


def fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def write(name, title, intro, rows, leaves_out, extra_md=""):
    data = dict(paper=title, script="benchmarks/papers_gathers.py", script_commit=_commit(), rows=rows)
    lines = [f"# {title} against iosim — issue 23", "",
             f"Script: `benchmarks/papers_gathers.py` (settings committed in {data['script_commit']} before its first "
             f"run; this table is that run's, kept as it came out). Data: `reports/papers/{name}.json`. "
             "Ratio = iosim / paper. Both sides predicted with l2=False (compulsory DRAM traffic); dense baseline = "
             "the FlashAttention-2 preset (`kernel=\"fa2\"`).", "", intro, "", "## Rows", "",
             "| # | paper figure | setting | paper | iosim | ratio | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['key']} | {r['figure']} | {r['setting']} | {fmt(r['paper'])} | {fmt(r['iosim'])} | "
                     f"{fmt(r['ratio'], 2)} | {r['note']} |")
    lines += ["", extra_md, "", "## What the model leaves out", ""] + [f"* {x}" for x in leaves_out] + [""]
    if DRY:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / f"{name}.json", json.dumps(data, indent=1, default=str) + "\n")
    atomic_write_text(OUT / f"{name}.md", "\n".join(lines))


def prob(n, heads, kv_heads, head_dim, causal, batch=1):
    return Problem(batch, heads, kv_heads, n, n, head_dim, "bf16", causal)


def scale(n):
    return max(512, n // 64) if DRY else n


# --- per paper ----------------------------------------------------------------------------------------------------

def pbs():
    c = PBS
    rows, pts = [], []
    main = ("pbs_fwd",)
    for n in c["seqs"]:
        for dens in (c["density"], c["density_alt"]):
            s = speedup(c["hw"], prob(scale(n), **LLAMA31_8B, causal=True), "pbs_attn", {"density": dens}, main)
            pts.append(dict(seq=n, density=dens) | s)
            print(f"  pbs N={n} density={dens}: {s.get('speedup')}", flush=True)
    head = next(q for q in pts if q["seq"] == c["seqs"][-1] and q["density"] == c["density"])
    alt = next(q for q in pts if q["seq"] == c["seqs"][-1] and q["density"] == c["density_alt"])
    rows.append(row("P1", "up to 2.75× end-to-end prefill speedup", f"{c['hw']}, Llama-3.1-8B attention, 128K causal, "
                    f"density {c['density']}", c["e2e"], head.get("speedup"),
                    "iosim: attention only (PBS pre-pass + kernel vs FA2). An attention-only speedup bounds the "
                    "end-to-end one from above (Amdahl): ratio ≥ 1 is consistent, the e2e itself is not predicted"))
    rows.append(row("P1", "(same, density 0.3 alongside)", f"{c['hw']}, 128K causal, density {c['density_alt']}",
                    c["e2e"], alt.get("speedup"), "as above"))
    rows.append(row("P2", "block sparsity 30–40% → >60%", "—", None, None,
                    "an input here (density 0.4), not predicted: which blocks survive is data-dependent", ratio=False))
    rows.append(row("P3", "pre-pass share of PBS's attention time (no paper number)", f"{c['hw']}, 128K, density "
                    f"{c['density']}", None, head.get("prepass_share"), "permutation + pooled selection kernels / "
                    "total", ratio=False))
    one = speedup(c["hw"], prob(scale(c["seqs"][-1]), **LLAMA31_8B, causal=True), "pbs_attn", {"density": 1.0}, main)
    rows.append(row("P4", "(model context) PBS at density 1 vs FA2", f"{c['hw']}, 128K causal, density 1", None,
                    one.get("speedup"), "the permuted Triton kernel's path vs FA2's at equal work (on H100 Triton "
                    "issues wgmma, FA2 mma.sync), pre-pass included", ratio=False))
    md = "Per point (attention speedup over FA2, pre-pass share):\n\n| N | density | speedup | pre-pass share |\n|---|---|---|---|\n"
    md += "\n".join(f"| {q['seq']:,} | {q['density']} | {fmt(q.get('speedup'))} | {fmt(q.get('prepass_share'))} |"
                    for q in pts)
    write("pbs_attn", "PBS-Attn (arXiv 2510.21270)",
          f"**Settings.** GPU {c['hw']} ({c['hw_note']}). Llama-3.1-8B attention (32 query / 8 KV heads, d 128, "
          "bf16), batch 1, causal prefill 8K–128K (the repo's single-GPU efficiency runs, eval_efficiency.sh), "
          f"B 128, S_g 256 (eval_efficiency.py PBSArgs). Density: {c['density_note']}. The selection is a seeded "
          "random draw at that density (keys permuted by a seeded shuffle inside segments): the IO depends on how "
          "many blocks survive, not which.", rows,
          ["Non-attention prefill time (GEMMs, norms, the rest of the model): the 2.75× is end to end; iosim "
           "prices one attention call (all heads of one layer).",
           "The repo's eager-PyTorch copies (bf16 → fp32 score rows, padding to a multiple of B, int64 offset "
           "arithmetic) and its `repeat_kv` expansion for GQA (the selection asserts H = H_kv; iosim permutes per "
           "KV head).",
           "Autotuning: the repo autotunes BLOCK_M/BLOCK_N over {32, 64, 128}; iosim uses FA2's 128×64 (d 128).",
           "Which blocks survive (accuracy): PBS's point is that permuting raises sparsity at equal recall; the IO "
           "model takes the density as given."], md)
    return rows


def s2o():
    c = S2O
    rows, pts = [], []
    p = prob(scale(c["seq"]), **LLAMA31_8B, causal=True)
    for dens in c["densities"]:
        s = speedup(c["hw"], p, "s2o", {"density": dens}, ("s2o_fwd",))
        pts.append(dict(density=dens) | s)
        print(f"  s2o density={dens}: {s.get('speedup')}", flush=True)
        rows.append(row("S1", "7.51× attention speedup at 128K (Llama-3.1-8B)", f"{c['hw']}, 128K causal, kept "
                        f"fraction {dens} of (query block × granule) pairs", c["attn"], s.get("speedup"),
                        "density not given by the abstract: a fixed grid"))
    inv = invert(c["hw"], p, "s2o", c["attn"])
    rows.append(row("S1", "(inversion) density at which iosim gives 7.51×", f"{c['hw']}, 128K causal", None, inv,
                    "not a prediction: the kept fraction the model needs for the paper's number", ratio=False))
    rows.append(row("S2", "3.81× end-to-end speedup at 128K", "—", c["e2e"], None,
                    "not predicted: end to end (the rest of the model is outside a kernel model)"))
    rows.append(row("S3", "3.82× lower MSE at matched sparsity; 3.31× lower density at matched MSE", "—", None, None,
                    "accuracy figures: not IO quantities", ratio=False))
    one = speedup(c["hw"], p, "s2o", {"density": 1.0}, ("s2o_fwd",))
    rows.append(row("S5", "(model context) S2O at density 1 vs FA2", f"{c['hw']}, 128K causal, density 1", None,
                    one.get("speedup"), "equal work: the kernel path and the gathers' cost", ratio=False))
    rows.append(row("S4", "pre-pass share (no paper number)", f"{c['hw']}, 128K, density 0.1", None,
                    next(q for q in pts if q["density"] == 0.1).get("prepass_share"), "pooling + scores + sort / "
                    "total", ratio=False))
    write("s2o", "S2O (arXiv 2602.22575)",
          f"**Source and assumptions.** Only the abstract is available (no code); the structure is assumed "
          "(models/sparse/s2o.py docstring): pre-pass = mean-pool Q over 128-row query blocks and K over 16-key "
          "granules (~2·N·d), (N/128)·(N/16) scores, per-query-block sorted granule lists cut at the kept mass "
          "(the early stop = the truncation length); the kernel gathers the kept tokens' K/V rows (256 B each at "
          "d = 128, bf16) into virtual blocks of 64. GPU " + f"{c['hw']} ({c['hw_note']}); Llama-3.1-8B attention "
          "(32/8 heads, d 128, bf16), batch 1, 128K causal. The kept fraction is not in the abstract: the grid "
          f"{c['densities']} is reported, and the inversion.", rows,
          ["Everything the abstract does not fix (granule size, virtual block size, how the lists are built and "
           "stored, whether the kernel reads indices per token or per granule): assumed as stated.",
           "End-to-end time (3.81×): outside a kernel model.",
           "Accuracy at a density (MSE, the 3.31× density reduction): not IO."],
          "Per density: " + ", ".join(f"{q['density']}: speedup {fmt(q.get('speedup'))}, pre-pass share "
                                      f"{fmt(q.get('prepass_share'))}" for q in pts))
    return rows


def anchor():
    c = ANCHOR
    rows, pts = [], []
    p = prob(scale(c["seq"]), **LLAMA31_8B, causal=True)
    for dens in c["densities"]:
        s = speedup(c["hw"], p, "anchorattention", {"density": dens}, ("anchor_sparse", "anchor_fwd"))
        pts.append(dict(density=dens) | s)
        print(f"  anchor density={dens}: {s.get('speedup')}", flush=True)
        rows.append(row("A2", "up to 4.6× over full attention at 128K", f"{c['hw']}, 128K causal, kept stripe "
                        f"fraction {dens}", c["over_full"], s.get("speedup"), c["over_full_src"]))
    inv = invert(c["hw"], p, "anchorattention", c["over_full"])
    rows.append(row("A2", "(inversion) stripe fraction at which iosim gives 4.6×", f"{c['hw']}, 128K causal", None,
                    inv, "not a prediction", ratio=False))
    rows.append(row("A1", "1.44× over the previous state of the art at 128K", "—", c["over_sota"], None,
                    "not predicted: the previous best is taken to be FlexPrefill (the strongest baseline the repo "
                    "ships, anchor_attn/src/ops/flex_prefill_attention.py; MInference the other); this family has no "
                    "FlexPrefill schedule, and its density at 128K is not in the notes"))
    one = speedup(c["hw"], p, "anchorattention", {"density": 1.0}, ())
    rows.append(row("A4", "(model context) AnchorAttention at stripe fraction 1 vs FA2", f"{c['hw']}, 128K causal",
                    None, one.get("speedup"), "every candidate stripe kept: equal work to causal FA2 plus the "
                    "state round trip and the local region walked to the big block's end", ratio=False))
    rows.append(row("A3", "step-2 (stripe search) share of the time (no paper number)", f"{c['hw']}, 128K, 0.1",
                    None, next(q for q in pts if q["density"] == 0.1).get("prepass_share"),
                    "anchor_mask / total; anchor_fwd (initial + local regions) is counted as attention", ratio=False))
    write("anchorattention", "AnchorAttention (arXiv 2505.23520)",
          f"**Settings.** GPU {c['hw']} ({c['hw_note']}). Llama-3.1-8B attention (32/8 heads, d 128, bf16), batch "
          "1, 128K causal; block_size 128, step 16 (big blocks of 2048 queries), θ = 12, one initial and one local "
          "big block (anchor_attn_v4.py defaults). The kept stripe fraction is not in the notes: the grid "
          f"{c['densities']} and the inversion are reported.", rows,
          ["The 1.44× comparison (no FlexPrefill model here).",
           "The repo's quirks not reproduced: its stripe scan re-scans the initial region and skips the block before "
           "the local region; its HF patch runs N mod 2048 tail rows densely and repeat_kv-expands K/V for GQA.",
           "Recall/accuracy at a θ (which stripes survive): the model takes the kept fraction as given."],
          "Per density: " + ", ".join(f"{q['density']}: speedup {fmt(q.get('speedup'))}, step-2 share "
                                      f"{fmt(q.get('prepass_share'))}" for q in pts))
    return rows


def hyper():
    c = HYPER
    rows = []
    main = ("blockdiag", "sampled", "hyper_exact", "_exact")
    res = {}
    for causal in (True, False):
        p = prob(scale(c["seq"]), c["heads"], c["heads"], c["head_dim"], causal)
        res[causal] = speedup(c["hw"], p, "hyperattention", None, main)
        print(f"  hyper causal={causal}: {res[causal].get('speedup')}", flush=True)
    rows.append(row("H1", "5× faster single attention layer at 131K, causal", f"{c['hw']}, batch 1, 32 heads, d 64, "
                    "bf16, b 256, m 256, exact below 4096 (benchmark_single_attention.py)", c["speedup"],
                    res[True].get("speedup"), "iosim: forward only; the paper's benchmark default is fwd+bwd, its "
                    "baseline the Triton FlashAttention (iosim: the FA2 CUDA preset)"))
    rows.append(row("H1", "(non-causal, no number in the notes)", f"{c['hw']}, 131K non-causal", None,
                    res[False].get("speedup"), "alongside", ratio=False))
    fl = res[True]
    rows.append(row("H3", "FLOP reduction at 131K causal (no paper number)", f"{c['hw']}", None,
                    (fl.get("flops_fa2") or 0) / fl["flops_sparse"] if fl.get("flops_sparse") else None,
                    "FA2 FLOPs / HyperAttention FLOPs (all kernels)", ratio=False))
    g = c["chatglm"]
    ch = speedup(c["hw"], prob(scale(c["chatglm_seq"]), g["heads"], g["kv_heads"], g["head_dim"], True),
                 "hyperattention", None, main)
    print(f"  hyper chatglm 32K: {ch.get('speedup')}", flush=True)
    rows.append(row("H2", "ChatGLM2-32K inference 50% faster (perplexity 5.6 → 6.3)", f"{c['hw']}, 32K causal, 32 "
                    "heads / 2 KV groups, d 128", c["chatglm_e2e"], None,
                    "not predicted: end to end; iosim's attention-only speedup at this shape is "
                    f"{fmt(ch.get('speedup'))} (an upper bound of the e2e if every layer were patched)"))
    write("hyperattention", "HyperAttention (arXiv 2310.05869)",
          f"**Settings.** GPU {c['hw']} ({c['hw_note']}). benchmark_single_attention.py: batch 1, 32 heads, d 64, "
          "bf16, HyperAttention(block_size=256, sample_size=256, min_seq_len=4096), causal via the recursion; "
          "7 LSH projections; each sort priced as 8 radix passes over (int64 key, int64 index) pairs (assumed). "
          "HyperAttention is approximate: the schedule equals naive attention only at block_size ≥ N "
          "(tests/test_sparse_gathers.py), and with sampling it equals an independent NumPy HyperAttention on the "
          "same permutations and samples (tests/test_sparse_hyper.py).", rows,
          ["The backward pass (the paper's benchmark default measures fwd+bwd).",
           "Eager-PyTorch passes: the bias's bool→dtype→scale passes (one fused write charged), "
           "add_self_attentions' separate elementwise passes (one fused merge charged), torch.cat of each level's "
           "halves, padding copies; the Triton FlashAttention's own tiles (iosim: FA2's).",
           "The 40 GB A100 (1.56 TB/s) vs the profile's 80 GB part (2.04 TB/s): DRAM-bound kernels (gathers, sorts, "
           "merges) would be slower on the paper's card.",
           "Perplexity / accuracy of the approximation."],
          f"At 131K causal: total {fmt(res[True].get('t_sparse_s'))} s vs FA2 {fmt(res[True].get('t_fa2_s'))} s; "
          "pre-pass (hash, sort, "
          f"gathers, merges, unsort) share {fmt(res[True].get('prepass_share'))}.")
    return rows


def draft():
    c = DRAFT
    rows = []
    n = c["visual"] + c["text_len"]
    if DRY:
        n, params = 2 * 3840 + c["text_len"], dict(text_len=c["text_len"])
    else:
        params = dict(text_len=c["text_len"])
    p = prob(n, c["heads"], c["heads"], c["head_dim"], False)
    s = speedup(c["hw"], p, "draftattention", params | {"density": 1 - c["sparsity"]}, ("draft_fwd",))
    print(f"  draft: {s.get('speedup')}", flush=True)
    sp = s.get("speedup")
    e2e = None if sp is None else 1 / ((1 - c["attn_share"]) + c["attn_share"] / sp)
    rows.append(row("D1", "up to 1.75× end-to-end (HunyuanVideo 768p, 90% sparsity)", f"{c['hw']}, 24 heads, d 128, "
                    f"bf16, N = {n:,} (33 frames of 48×80 + 256 text), non-causal, density 0.1", c["e2e"], e2e,
                    "iosim attention speedup through Amdahl with the paper's own 'attention > 80% of latency': "
                    "1 / (0.2 + 0.8 / s)"))
    rows.append(row("D2", "attention speedup behind D1 (no paper number)", f"{c['hw']}, same", None, sp,
                    "draft pre-pass + reorder + block-sparse + restore vs dense FA2", ratio=False))
    rows.append(row("D3", "pre-pass + reorder share (no paper number)", f"{c['hw']}, same", None,
                    s.get("prepass_share"), "everything but draft_fwd / total", ratio=False))
    write("draftattention", "DraftAttention (arXiv 2505.14708)",
          f"**Settings.** GPU {c['hw']} ({c['hw_note']}). HunyuanVideo 768p as draft_attention.py's defaults: "
          "latent 48×80, 33 frames (126,720 visual tokens) + 256 text tokens, pool 8×16 (regions of 128 tokens), "
          "24 heads, d 128, bf16, sparsity 0.9 (density 0.1 of the region pairs, per head), non-causal.", rows,
          ["The non-attention 20% is taken from the paper's abstract (attention > 80%: so the Amdahl estimate is a "
           "lower bound of what 'over 80%' allows).",
           "Eager-PyTorch copies around the pooling (permute + reshape of Q and K), the boolean-mask → block-mask "
           "conversion, torch.topk's radix passes over the S² map.",
           "Re-ttention (arXiv 2505.22918) is not modelled: the notes give only its outcome (3.1% of tokens kept, "
           "softmax denominators reused from earlier denoising steps, a residual cache, −92% attention latency on "
           "H100), not which statistics are cached, how the residual enters, nor the sparse kernel; a cache that "
           "lives across diffusion steps is also outside one attention call's schedule."])
    return rows


def main():
    t0 = time.time()
    for name, fn in (("pbs", pbs), ("s2o", s2o), ("anchor", anchor), ("hyper", hyper), ("draft", draft)):
        print(name, flush=True)
        for r in fn():
            print(f"  {r['key']} | {r['figure']} | paper {fmt(r['paper'])} | iosim {fmt(r['iosim'])} | "
                  f"ratio {fmt(r['ratio'], 2)}", flush=True)
    print(f"{time.time() - t0:.0f} s{' (dry run: nothing written)' if DRY else ''}")


if __name__ == "__main__":
    main()
