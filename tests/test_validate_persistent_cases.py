"""Issue 21's persistent-kernel sweep (benchmarks/gpu/validate_persistent.py) and its comparison
(benchmarks/gpu/compare_persistent.py), on the CPU: the case list (ids, coverage, size), ``--dry-run`` without torch,
every case accepted by the comparison's predictor on the h100 profile (no L2 model) with SM read bytes equal to a
closed form enumerated here, the measured-kernel bookkeeping, the DRAM rule, and the comparison end to end on a
synthetic kernels.csv whose errors are known."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(ROOT, "benchmarks", "gpu")
sys.path.insert(0, GPU)

import compare_persistent as cp  # noqa: E402
import validate_persistent as vp  # noqa: E402
from iosim.hwprofile import load_hardware  # noqa: E402

HW = load_hardware("h100")
E = 2  # bf16 bytes
STAT = 4  # fp32 partial LSE and O


def row(c) -> dict:
    return {k: str(v) for k, v in zip(vp.COLS, c)}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- closed forms of the SM read bytes, enumerated here -------------------------------------------------------------

def tiled_reads(B, H, Nq, Nkv, d, causal, bm, bn) -> int:
    """One CTA (or work item) per (query block, b, h): Q tile once, then K and V of KV blocks j < stop(i), where
    stop(i) = T_c, or under the bottom-right causal mask ⌈((i+1)·bm + Nkv − Nq)/bn⌉ clamped to [0, T_c] (the last
    query row of block i sees keys up to (i+1)·bm − 1 + Nkv − Nq); a ragged last KV block reads its Nkv − j·bn rows."""
    tm, tn = cdiv(Nq, bm), cdiv(Nkv, bn)
    kv_rows_prefix = [0]
    for j in range(tn):
        kv_rows_prefix.append(kv_rows_prefix[-1] + min(bn, Nkv - j * bn))
    per_head = 0
    for i in range(tm):
        stop = tn if not causal else max(0, min(tn, cdiv((i + 1) * bm + Nkv - Nq, bn)))
        per_head += 2 * kv_rows_prefix[stop] * d * E
    return B * H * (Nq * d * E + per_head)


def streamk_reads(B, H, Hk, Nkv, d, bn, num_sms=132) -> int:
    """Stream-K decode (Nq = 1): the T = B·Hkv·T_c KV tiles split over W = min(2·SMs, ⌈T/2⌉, T) workers, worker w
    taking [s_w, s_{w+1}), s_w = w·⌊T/W⌋ + min(w, T mod W) (LeanAttention's even split). Each pair (b, hk) a worker
    touches is a segment: the decode kernel reads the G packed query rows per segment and every K/V tile once; the
    combine kernel reads, per pair, row and segment, one fp32 LSE and one fp32 O row."""
    G, tn = H // Hk, cdiv(Nkv, bn)
    T = B * Hk * tn
    W = min(2 * num_sms, cdiv(T, 2), T)
    s = [w * (T // W) + min(w, T % W) for w in range(W + 1)]
    segs = [0] * (B * Hk)
    for w in range(W):
        for pair in range(s[w] // tn, (s[w + 1] - 1) // tn + 1):
            segs[pair] += 1
    decode = sum(segs) * G * d * E + 2 * B * Hk * Nkv * d * E
    combine = sum(segs) * G * (STAT + STAT * d)
    return decode + combine


def expected_sm_read(c: dict) -> int:
    B, H, Hk, Nq, Nkv, d, causal = (c[k] for k in ("B", "Hq", "Hkv", "Nq", "Nkv", "d", "causal"))
    if c["impl"] == "cudnn":
        from iosim.models.cudnn import TILE_M, TILE_N  # inferred tiles of the model (models/cudnn.py)
        return tiled_reads(B, H, Nq, Nkv, d, causal, TILE_M, TILE_N)
    from iosim.triton_kernels.schedule import launch_config
    kc = launch_config(d, bool(causal))  # the launcher's tiles for config=None
    if c["impl"] == "triton_persistent":
        return tiled_reads(B, H, Nq, Nkv, d, causal, kc.block_m, kc.block_n)
    return streamk_reads(B, H, Hk, Nkv, d, kc.block_n)


# --- the case list -------------------------------------------------------------------------------------------------

def test_ids_unique_in_range_and_coverage():
    ids = [c[0] for c in vp.CASES]
    assert len(ids) == len(set(ids)) and all(1001 <= i <= 1099 or 1201 <= i <= 1399 for i in ids)
    held = [c for c in vp.CASES if vp.SETS["held"](c[0])]
    held2 = [c for c in vp.CASES if vp.SETS["held2"](c[0])]
    held3 = [c for c in vp.CASES if vp.SETS["held3"](c[0])]
    held4 = [c for c in vp.CASES if vp.SETS["held4"](c[0])]
    held5 = [c for c in vp.CASES if vp.SETS["held5"](c[0])]
    held6 = [c for c in vp.CASES if vp.SETS["held6"](c[0])]
    held7 = [c for c in vp.CASES if vp.SETS["held7"](c[0])]
    assert 35 <= len(held) <= 45 and 20 <= len(held2) <= 29 and 12 <= len(held3) <= 30
    assert 12 <= len(held4) <= 29 and 6 <= len(held5) <= 9 and 6 <= len(held6) <= 9
    assert len(held) + len(held2) + len(held3) + len(held4) + len(held5) + len(held6) + len(held7) == len(ids)
    assert {vp.case_dict(c)["impl"] for c in held5 + held6} == {"triton_streamk"}
    vp.check_cases()
    shapes = set()
    for later in (held, held2, held3, held4, held5, held6, held7):   # no set repeats a case of an earlier one
        assert not any(tuple(c[1:]) in shapes for c in later)
        shapes |= {tuple(c[1:]) for c in later}
    cs = [vp.case_dict(c) for c in held]
    by = {i: [c for c in cs if c["impl"] == i] for i in vp.IMPLS}
    assert all(len(v) >= 8 for v in by.values())
    for impl in ("cudnn", "triton_persistent"):
        assert {c["causal"] for c in by[impl]} == {0, 1}
        assert {c["d"] for c in by[impl]} == {64, 128}
        assert any(c["Hq"] != c["Hkv"] for c in by[impl])
        assert min(c["Nq"] for c in by[impl]) >= 4096 and max(c["Nq"] for c in by[impl]) == 65536
        assert all(16 <= c["Hq"] <= 32 for c in by[impl])
    assert {c["order"] for c in by["triton_persistent"]} == {"rr", "lpt"}
    assert {(c["Hq"], c["Hkv"]) for c in by["triton_streamk"]} == {(32, 8), (32, 4)}
    assert all(c["Nq"] == 1 and 8192 <= c["Nkv"] <= 262144 and 1 <= c["B"] <= 8 for c in by["triton_streamk"])
    # every kernel within ~50 ms: at most the FLOPs of causal 64K tokens, H = 16, d = 128 (4·16·(65536·65537/2)·128)
    limit = 4 * 16 * (65536 * 65537 // 2) * 128
    assert all(vp.case_flops_bytes(c)[0] <= limit for c in cs)


def test_visible_pairs_by_enumeration():
    for nq, nkv in ((5, 5), (3, 7), (7, 3), (1, 9), (4, 1)):
        want = sum(1 for r in range(nq) for k in range(nkv) if k <= r + nkv - nq)
        assert vp.visible_pairs(nq, nkv, True) == want and vp.visible_pairs(nq, nkv, False) == nq * nkv


def test_dry_run_lists_every_case_without_torch():
    script = os.path.join(GPU, "validate_persistent.py")
    code = ("import sys, runpy; sys.modules['torch'] = None; "  # any `import torch` now raises ImportError
            f"sys.argv = [{script!r}, '--dry-run', '--set', 'all']; runpy.run_path({script!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    listed = [int(ln.split()[0]) for ln in p.stdout.splitlines() if ln.split() and ln.split()[0].isdigit()
              and not ln.split()[1] == "cases,"]
    assert listed == [c[0] for c in vp.CASES]
    assert f"{len(vp.CASES)} cases" in p.stdout and vp.case_list_hash() in p.stdout


# --- the predictor -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", vp.CASES, ids=lambda c: str(c[0]))
def test_every_case_predicted_without_l2(case):
    pr = cp.predict_case(row(case), HW, l2=False)
    c = vp.case_dict(case)
    assert pr["dram_read"] is None and pr["time"] > 0
    assert pr["sm_read"] == expected_sm_read(c)
    assert pr["workers"] == {"cudnn": 132}.get(c["impl"], pr["workers"]) and pr["workers"] >= 1


@pytest.mark.filterwarnings("ignore::iosim.errors.IosimWarning")  # causal rows that see no key (Nq > Nkv)
@settings(max_examples=80, deadline=None)
@given(impl=st.sampled_from(vp.IMPLS), B=st.integers(1, 2), Hk=st.integers(1, 3), G=st.sampled_from([1, 2, 4, 8]),
       nq=st.integers(1, 700), nkv=st.integers(1, 2000), d=st.sampled_from([64, 128]), causal=st.booleans(),
       order=st.sampled_from(["rr", "lpt"]))
def test_random_shapes_read_closed_form(impl, B, Hk, G, nq, nkv, d, causal, order):
    if impl == "triton_streamk":
        nq, causal, order = 1, False, "-"
    elif impl == "cudnn":
        order = "-"
    c = {"id": 1099, "impl": impl, "B": B, "Hq": G * Hk, "Hkv": Hk, "Nq": nq, "Nkv": nkv, "d": d,
         "causal": int(causal), "order": order}
    pr = cp.predict_case({k: str(v) for k, v in c.items()}, HW, l2=False)
    assert pr["sm_read"] == expected_sm_read(c)


def test_dram_rule_is_on_the_prediction():
    r = row(vp.CASES[0])
    q = cp.qkv_bytes(r)
    B, H, N, d = 1, 16, 4096, 128
    assert q == E * (B * H * N * d + 2 * B * H * N * d)
    assert cp.dram_counted(1.16 * q, q) and not cp.dram_counted(1.15 * q, q) and not cp.dram_counted(None, q)


# --- measured bookkeeping and the comparison end to end --------------------------------------------------------------

def _kernel(cid, name, grid, sm, dram, t_ns):
    return {"id": cid, "kernel": name, "grid": grid, "block": "(128, 1, 1)", "dram__bytes_read.sum": dram,
            "dram__bytes_write.sum": 0, "l1tex__m_xbar2l1tex_read_bytes.sum": sm, "gpu__time_duration.sum": t_ns,
            "launch__grid_size": 0, "launch__block_size": 128, "launch__registers_per_thread": 0,
            "launch__shared_mem_per_block_dynamic": 0}


def _write(tmp_path, kernels, log=True):
    path = tmp_path / "kernels.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(kernels[0]))
        w.writeheader()
        w.writerows(kernels)
    if log:
        (tmp_path / "log.txt").write_text(f"date: 2027-01-05T10:00:00Z\ndevice: NVIDIA H100 80GB HBM3 sms=132\n"
                                          f"case list {vp.case_list_hash()}\n")
    return str(path)


def test_measured_cases_keep_own_kernels(tmp_path):
    ks = [_kernel(1012, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", "(132, 1, 1)",
                  100.0, 10.0, 1000.0),
          _kernel(1012, "void at::native::elementwise_kernel<128, 4>(copy)", "(4096, 1, 1)", 7.0, 7.0, 50.0),
          _kernel(1061, "_streamk_decode_kernel", "(264, 1, 1)", 30.0, 3.0, 200.0),
          _kernel(1061, "_streamk_combine_kernel", "(4, 1, 8)", 5.0, 1.0, 20.0)]
    m = {int(r["id"]): r for r in cp.measured_cases(_write(tmp_path, ks, log=False))}
    assert set(m) == {1012, 1061}
    a, b = m[1012], m[1061]
    assert (a["l1tex__m_xbar2l1tex_read_bytes.sum"], a["gpu__time_duration.sum"], a["grid_meas"]) == (100.0, 1000.0, 132)
    assert "elementwise_kernel" in a["left_out"] and a["left_out_time_ns"] == 50.0
    assert (b["l1tex__m_xbar2l1tex_read_bytes.sum"], b["dram__bytes_read.sum"], b["gpu__time_duration.sum"]) == \
        (35.0, 4.0, 220.0)
    assert b["grid_meas"] == 264 and b["left_out"] == ""


def test_compare_end_to_end_known_errors(tmp_path):
    """Measured = prediction / (1 + e) per quantity, so the comparison must report exactly e."""
    picks = {1001: (0.01, 0.20), 1031: (-0.002, -0.05), 1061: (0.0, 0.08)}  # id: (SM read error, time error)
    ks = []
    for cid, (e_sm, e_t) in picks.items():
        c = next(c for c in vp.CASES if c[0] == cid)
        pr = cp.predict_case(row(c), HW, l2=False)
        name = {"cudnn": "cudnn_generated_fort_native_sdpa", "triton_persistent": "_persistent_fwd_kernel",
                "triton_streamk": "_streamk_decode_kernel"}[c[1]]
        ks.append(_kernel(cid, name, f"({pr['workers']}, 1, 1)", pr["sm_read"] / (1 + e_sm), 1e6,
                          pr["time"] / (1 + e_t)))
    out = tmp_path / "out"
    assert cp.main([_write(tmp_path, ks), "--no-l2", "--profile", "h100", "--out", str(out)]) == 0
    res = json.loads((out / "held.json").read_text())
    assert res["label"].startswith("held out (measured 2027-01-05, case list committed ")
    assert all(r["label"] == res["label"] for r in res["rows"]) and len(res["rows"]) == 3
    for r in res["rows"]:
        e_sm, e_t = picks[r["id"]]
        assert math.isclose(r["sm_read_err"], e_sm, abs_tol=1e-9) and math.isclose(r["time_err"], e_t, abs_tol=1e-9)
        assert r["dram_counted"] is False and r["workers_pred"] == r["grid_meas"]
    s = res["summary"]
    assert s["cudnn"]["sm_read"]["worst"] == pytest.approx(0.01) and s["cudnn"]["dram_read"] == {"n": 0}
    assert {(h["id"], h["quantity"]) for i in vp.IMPLS for h in s[i]["hurt"]} == {(1001, "sm_read"), (1001, "time")}
    md = (out / "held.md").read_text()
    assert "## triton_streamk — held out (measured 2027-01-05" in md and "WARNING" not in md


def test_ncu_rows_attributed_to_the_marker_before_them(tmp_path):
    """validate_persistent's bookkeeping on an ncu ``--csv --page raw`` text: each kernel goes to the case whose marker
    (grid size = case id) precedes it; kernels before any marker are dropped; both CSVs hold exactly those rows."""
    from measure_sdpa import parse_raw
    head = ["ID", "Kernel Name", "Grid Size", "Block Size"] + vp.METRICS
    units = ["", "", "", ""] + ["byte", "byte", "byte", "nsecond", "", "", "register/thread", "byte"]

    def line(cells):
        return ",".join(f'"{c}"' for c in cells)
    body = [["0", "warmup_kernel", "(1, 1, 1)", "(1, 1, 1)"] + ["1"] * 8,
            ["1", "iosim_marker", "(1031, 1, 1)", "(128, 1, 1)"] + ["0"] * 8,
            ["2", "_persistent_fwd_kernel", "(264, 1, 1)", "(128, 1, 1)", "1,000", "10", "5,000", "700", "264", "128",
             "200", "98,304"],
            ["3", "iosim_marker", "(1061, 1, 1)", "(128, 1, 1)"] + ["0"] * 8,
            ["4", "_streamk_decode_kernel", "(264, 1, 1)", "(128, 1, 1)", "300", "1", "400", "50", "264", "128",
             "96", "0"],
            ["5", "_streamk_combine_kernel", "(4, 1, 8)", "(32, 1, 1)", "2", "3", "4", "5", "32", "32", "20", "0"]]
    text = "==PROF== noise\n" + "\n".join(line(r) for r in [head, units] + body) + "\n"
    ks = vp.attribute(parse_raw(text))
    assert [(k["id"], k["kernel"]) for k in ks] == [(1031, "_persistent_fwd_kernel"), (1061, "_streamk_decode_kernel"),
                                                    (1061, "_streamk_combine_kernel")]
    assert ks[0]["l1tex__m_xbar2l1tex_read_bytes.sum"] == 5000.0 and ks[0]["launch__shared_mem_per_block_dynamic"] == 98304
    cases = [vp.case_dict(c) for c in vp.CASES if c[0] in (1031, 1061, 1062)]
    vp.write_csvs(str(tmp_path), cases, ks, "fake GPU")
    assert sorted(os.listdir(tmp_path)) == ["kernels.csv", "measured.csv"]
    with open(tmp_path / "measured.csv", newline="") as f:
        m = {int(r["id"]): r for r in csv.DictReader(f)}
    assert set(m) == {1031, 1061}  # 1062 has no kernels: no row
    assert float(m[1061]["gpu__time_duration.sum"]) == 55.0 and int(m[1061]["num_kernels"]) == 2
    back = {int(r["id"]): r for r in cp.measured_cases(str(tmp_path / "kernels.csv"))}
    assert back[1061]["grid_meas"] == 264 and back[1061]["l1tex__m_xbar2l1tex_read_bytes.sum"] == 404.0
