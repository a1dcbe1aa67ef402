"""Persistent-kernel validation sweep (issue 21): cuDNN's SDPA forward, iosim's persistent Triton forward and iosim's
stream-K decode, under ncu. Seven sets, each listed and committed before any of it was measured: ``held`` (ids
1001–1070; choices were later fitted on it), ``held2`` (1071–1095; in-sample for the persistent kernel's measured
shared memory), ``held3`` (1201–1249; in-sample for the L2-coupled item timeline), ``held4`` (1251–1279; held
out), ``held5`` (1281–1289, stream-K decodes; held out), ``held6`` (1291–1299, stream-K
decodes after the combine kernel's rewrite; held out), ``held7`` (1301–1399; held out for kappa = 2) — benchmarks/gpu/compare_persistent.py ``--label`` says which.

Device command (from the repository root; one H100, about 2 minutes of GPU time, see "Runtime" below):

    python3 -m pip install -q --no-deps --no-build-isolation . && \
      python3 benchmarks/gpu/validate_persistent.py --set held --out "$OUT/persistent_held"

Then, on any machine with the repository (CPU only):

    .venv/bin/python benchmarks/gpu/compare_persistent.py DIR/persistent_held/kernels.csv \
        --out reports/validation/h100/persistent

The ``pip install .`` matters: the persistent and stream-K launchers size their grids with ``iosim.models`` and
``iosim.hardware`` (``schedule.persistent_workers``, ``schedule.streamk_segments``), which exist only in an installed
iosim (pyproject maps models/ and hardware/ into the package). So this script does not put the working tree on
sys.path: it imports the installed copy (the one just built from this tree) and says where it came from in log.txt.

Implementations (bf16, forward, under ``torch.no_grad()``):
* ``cudnn`` — ``F.scaled_dot_product_attention`` under ``sdpa_kernel(SDPBackend.CUDNN_ATTENTION)`` (cuDNN only: a
  shape cuDNN refuses fails the case, it never falls back to another backend), causal and not. GQA cases pass
  ``enable_gqa=True`` with K/V of Hkv heads: PyTorch's cuDNN gate accepts GQA (sdp_utils.cpp
  ``can_use_cudnn_attention``: ``check_batch_size_and_num_heads_dense<true /*supports_gqa*/, false, true>``, torch ≥ 2.8)
  and MHA.cpp ``build_graph`` hands cuDNN K and V with their own sizes (``set_dim(k.sizes())``): no repeat of KV heads.
  Should the installed torch expand them after all, the copy kernel shows up in kernels.csv (every kernel between
  two markers is recorded) and compare_persistent.py lists it as left out.
* ``triton_persistent`` — ``iosim.triton_kernels.attention(q, k, v, causal, persistent=True, order=...)``: grid of
  W = SMs × CTAs per SM workers (``schedule.persistent_workers``), items in order ``rr`` (query block fastest) or
  ``lpt`` (longest KV loop first), default tiles (``schedule.default_config``).
* ``triton_streamk`` — ``attention(q, k, v, decode="streamk")``: Nq = 1, ``_streamk_decode_kernel`` on
  ``schedule.streamk_workers`` workers + ``_streamk_combine_kernel``; GQA 32/8 and 32/4 (8 and 4 packed rows).

How it measures (as validate_decode_bwd.py): ncu runs worker processes of this script, ``--group-size`` cases per
process, ``--clock-control none``, default cache control (caches flushed before each kernel replay),
``--profile-from-start off``. Each case runs once unprofiled (Triton compiles and cuDNN builds its graph then), then,
between cudaProfilerStart/Stop, a marker kernel whose grid size is the case id and the measured call. EVERY kernel after
a marker and before the next is the case's (no kernel filter). After the profiled range the output is checked
against SDPA's flash backend (max |error|, in log.txt). Output under --out, and nothing else: ``kernels.csv`` (one row
per profiled kernel), ``measured.csv`` (per case: sums over its kernels, their names), ``log.txt`` (date, device,
torch / triton / cuDNN / CUDA / ncu / driver versions, the case-list hash, each group's worker output). The two CSVs
are rewritten after every group, so a run cut short still returns the groups it finished.

Runtime (H100): 40 cases in 7 ncu groups. The kernels themselves are short (``--dry-run`` prints a roofline estimate
per case, 0.22 s for all 40 at 600 TFLOP/s; Triton's kernels run slower, the longest, 64K causal tokens at H = 16,
d = 128, about 30–50 ms; ncu replays each a few times). The cost is per ncu group: process start-up, Triton compiles
(about 10 persistent/stream-K variants) and cuDNN graph builds, about 10–20 s a group (validate_decode_bwd.py's 5
groups took 47 s on the H100): expect 1.5–2.5 minutes of wall time, under 150 s of GPU time. ``--deadline``
(default 540 s) skips the groups that would start after it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# id, impl, B, Hq, Hkv, Nq, Nkv, d, causal, order (triton_persistent: "rr" | "lpt"; the others "-")
CASES = [
    # ---- cudnn: SDPA's cuDNN backend (sm90: persistent cudnn_generated_fort_native_sdpa_sm90_flash_fprop) ----
    (1001, "cudnn", 1, 16, 16, 4096, 4096, 128, 0, "-"),
    (1002, "cudnn", 1, 16, 16, 8192, 8192, 128, 1, "-"),
    (1003, "cudnn", 2, 16, 16, 16384, 16384, 128, 0, "-"),
    (1004, "cudnn", 1, 32, 32, 16384, 16384, 128, 1, "-"),
    (1005, "cudnn", 1, 16, 16, 32768, 32768, 128, 0, "-"),
    (1006, "cudnn", 1, 16, 16, 65536, 65536, 128, 1, "-"),
    (1007, "cudnn", 1, 16, 16, 65536, 65536, 64, 0, "-"),
    (1008, "cudnn", 4, 16, 16, 8192, 8192, 64, 1, "-"),
    (1009, "cudnn", 1, 32, 32, 32768, 32768, 64, 1, "-"),
    (1010, "cudnn", 2, 24, 24, 12288, 12288, 128, 0, "-"),
    (1011, "cudnn", 1, 16, 16, 10000, 10000, 128, 1, "-"),     # ragged: 10000 = 78·128 + 16
    (1012, "cudnn", 1, 32, 8, 16384, 16384, 128, 1, "-"),      # GQA 4:1
    (1013, "cudnn", 1, 32, 8, 32768, 32768, 128, 0, "-"),      # GQA 4:1
    (1014, "cudnn", 2, 32, 4, 8192, 8192, 128, 1, "-"),        # GQA 8:1
    (1015, "cudnn", 1, 16, 2, 65536, 65536, 64, 1, "-"),       # GQA 8:1
    (1016, "cudnn", 1, 32, 32, 4096, 4096, 64, 0, "-"),
    # ---- triton_persistent: iosim's persistent Triton forward, orders rr / lpt ----
    (1031, "triton_persistent", 1, 16, 16, 4096, 4096, 128, 0, "rr"),
    (1032, "triton_persistent", 1, 16, 16, 4096, 4096, 128, 0, "lpt"),
    (1033, "triton_persistent", 1, 16, 16, 16384, 16384, 128, 1, "lpt"),
    (1034, "triton_persistent", 1, 16, 16, 16384, 16384, 128, 1, "rr"),
    (1035, "triton_persistent", 1, 16, 16, 65536, 65536, 128, 1, "lpt"),
    (1036, "triton_persistent", 2, 16, 16, 16384, 16384, 64, 0, "rr"),
    (1037, "triton_persistent", 1, 32, 32, 8192, 8192, 64, 1, "lpt"),
    (1038, "triton_persistent", 1, 32, 32, 8192, 8192, 64, 1, "rr"),
    (1039, "triton_persistent", 1, 32, 8, 16384, 16384, 128, 1, "lpt"),   # GQA 4:1
    (1040, "triton_persistent", 1, 32, 8, 16384, 16384, 128, 0, "rr"),    # GQA 4:1
    (1041, "triton_persistent", 1, 16, 16, 32768, 32768, 64, 0, "lpt"),
    (1042, "triton_persistent", 1, 16, 16, 10000, 10000, 128, 1, "lpt"),  # ragged
    (1043, "triton_persistent", 4, 16, 4, 8192, 8192, 128, 1, "rr"),      # GQA 4:1
    (1044, "triton_persistent", 1, 24, 24, 24576, 24576, 128, 1, "lpt"),
    # ---- triton_streamk: iosim's stream-K decode (LeanAttention split), Nq = 1 ----
    (1061, "triton_streamk", 1, 32, 8, 1, 8192, 128, 0, "-"),
    (1062, "triton_streamk", 1, 32, 8, 1, 32768, 128, 0, "-"),
    (1063, "triton_streamk", 1, 32, 8, 1, 131072, 128, 0, "-"),
    (1064, "triton_streamk", 1, 32, 4, 1, 262144, 128, 0, "-"),
    (1065, "triton_streamk", 4, 32, 8, 1, 65536, 128, 0, "-"),
    (1066, "triton_streamk", 8, 32, 8, 1, 16384, 128, 0, "-"),
    (1067, "triton_streamk", 8, 32, 4, 1, 131072, 128, 0, "-"),
    (1068, "triton_streamk", 2, 32, 4, 1, 100000, 128, 0, "-"),   # ragged: 100000 = 1562·64 + 32
    (1069, "triton_streamk", 1, 32, 8, 1, 65536, 64, 0, "-"),
    (1070, "triton_streamk", 4, 32, 4, 1, 262144, 64, 0, "-"),
    # ==== set "held2" (ids 1071–1099): listed 2026-12-06 after the choices fitted on "held" (cudnn_sm90's
    # GROUPS_PER_BLOCK = 1, cost.KERNEL_EFFICIENCY of iosim_persistent_fwd) and before any of it was measured ====
    (1071, "cudnn", 1, 16, 16, 16384, 16384, 128, 1, "-"),
    (1072, "cudnn", 1, 32, 32, 8192, 8192, 64, 1, "-"),
    (1073, "cudnn", 2, 16, 16, 32768, 32768, 128, 1, "-"),
    (1074, "cudnn", 1, 8, 8, 98304, 98304, 128, 1, "-"),
    (1075, "cudnn", 1, 40, 8, 24576, 24576, 128, 1, "-"),      # GQA 5:1
    (1076, "cudnn", 1, 24, 24, 49152, 49152, 64, 0, "-"),
    (1077, "cudnn", 1, 16, 16, 24576, 24576, 128, 0, "-"),
    (1078, "cudnn", 2, 32, 8, 16384, 16384, 64, 1, "-"),       # GQA 4:1
    (1079, "cudnn", 1, 16, 4, 40960, 40960, 128, 0, "-"),      # GQA 4:1
    (1080, "cudnn", 1, 12, 12, 20000, 20000, 128, 1, "-"),     # ragged: 20000 = 156·128 + 32
    (1081, "triton_persistent", 1, 16, 16, 8192, 8192, 128, 0, "rr"),
    (1082, "triton_persistent", 1, 16, 16, 8192, 8192, 128, 1, "lpt"),
    (1083, "triton_persistent", 1, 24, 24, 16384, 16384, 64, 1, "rr"),
    (1084, "triton_persistent", 2, 16, 16, 12288, 12288, 128, 1, "lpt"),
    (1085, "triton_persistent", 1, 32, 8, 32768, 32768, 128, 1, "rr"),    # GQA 4:1
    (1086, "triton_persistent", 1, 8, 8, 32768, 32768, 128, 1, "lpt"),
    (1087, "triton_persistent", 1, 16, 16, 20000, 20000, 64, 0, "rr"),    # ragged
    (1088, "triton_persistent", 1, 32, 32, 4096, 4096, 64, 0, "lpt"),
    (1089, "triton_persistent", 4, 16, 16, 4096, 4096, 128, 1, "rr"),
    (1090, "triton_persistent", 1, 16, 2, 16384, 16384, 128, 1, "lpt"),   # GQA 8:1
    (1091, "triton_streamk", 1, 32, 8, 1, 49152, 128, 0, "-"),
    (1092, "triton_streamk", 2, 32, 8, 1, 200000, 128, 0, "-"),   # ragged
    (1093, "triton_streamk", 16, 32, 8, 1, 8192, 128, 0, "-"),
    (1094, "triton_streamk", 1, 64, 8, 1, 131072, 128, 0, "-"),   # GQA 8:1
    (1095, "triton_streamk", 4, 32, 4, 1, 65536, 64, 0, "-"),
    # ==== set "held3" (ids 1201–1299): listed 2026-12-06 after the persistent Triton kernel's measured shared
    # memory (schedule.PERSISTENT_SMEM_MEASURED: one CTA per SM at d = 128, so the launcher now starts 132 workers
    # there), its refitted efficiency (cost.KERNEL_EFFICIENCY 0.746) and the L2 set hash xor_low; before any of it
    # was measured ====
    (1201, "triton_persistent", 1, 16, 16, 12288, 12288, 128, 0, "rr"),
    (1202, "triton_persistent", 1, 16, 16, 12288, 12288, 128, 1, "lpt"),
    (1203, "triton_persistent", 2, 16, 16, 8192, 8192, 128, 1, "rr"),
    (1204, "triton_persistent", 1, 32, 8, 24576, 24576, 128, 1, "lpt"),   # GQA 4:1
    (1205, "triton_persistent", 1, 24, 24, 8192, 8192, 64, 0, "rr"),
    (1206, "triton_persistent", 1, 16, 16, 16384, 16384, 64, 1, "lpt"),
    (1207, "triton_persistent", 1, 32, 32, 16384, 16384, 64, 1, "rr"),
    (1208, "triton_persistent", 1, 8, 8, 49152, 49152, 128, 0, "lpt"),
    (1209, "triton_persistent", 1, 16, 4, 20000, 20000, 128, 1, "rr"),    # ragged, GQA 4:1
    (1210, "triton_persistent", 2, 16, 16, 6144, 6144, 64, 0, "lpt"),
    (1221, "cudnn", 1, 16, 16, 12288, 12288, 128, 1, "-"),
    (1222, "cudnn", 1, 32, 8, 20480, 20480, 128, 0, "-"),       # GQA 4:1
    (1223, "cudnn", 1, 24, 24, 32768, 32768, 64, 1, "-"),
    (1224, "cudnn", 2, 16, 16, 16384, 16384, 64, 0, "-"),
    (1241, "triton_streamk", 2, 32, 8, 1, 65536, 128, 0, "-"),
    (1242, "triton_streamk", 1, 32, 4, 1, 16384, 64, 0, "-"),
    # ==== set "held4" (ids 1251–1299): listed 2026-12-06 (session 11) after the L2-coupled item timeline of static
    # persistent kernels was chosen (reports/persistent_coupled_timeline.md: kappa 1, window 0.5 tick, EMA 0.5) and
    # the efficiency refit rule written there; before any of it was measured ====
    (1251, "triton_persistent", 1, 16, 16, 24576, 24576, 128, 1, "rr"),
    (1252, "triton_persistent", 1, 16, 16, 24576, 24576, 128, 1, "lpt"),
    (1253, "triton_persistent", 1, 8, 8, 32768, 32768, 64, 1, "rr"),
    (1254, "triton_persistent", 2, 24, 8, 12288, 12288, 128, 1, "lpt"),   # GQA 3:1
    (1255, "triton_persistent", 1, 32, 32, 12288, 12288, 64, 0, "rr"),
    (1256, "triton_persistent", 1, 16, 16, 16384, 16384, 128, 0, "lpt"),
    (1257, "triton_persistent", 1, 40, 8, 16384, 16384, 128, 1, "rr"),    # GQA 5:1
    (1258, "triton_persistent", 1, 16, 16, 40000, 40000, 64, 1, "lpt"),   # ragged
    (1259, "triton_persistent", 2, 16, 16, 10000, 10000, 128, 1, "rr"),   # ragged
    (1260, "triton_persistent", 4, 16, 16, 8192, 8192, 64, 1, "lpt"),
    (1261, "triton_persistent", 1, 16, 16, 28672, 28672, 128, 0, "rr"),
    (1262, "triton_persistent", 1, 32, 32, 8192, 8192, 128, 0, "lpt"),
    (1271, "cudnn", 1, 16, 16, 36864, 36864, 128, 0, "-"),
    (1272, "cudnn", 1, 8, 8, 65536, 65536, 64, 1, "-"),
    (1273, "cudnn", 1, 32, 8, 49152, 49152, 128, 0, "-"),      # GQA 4:1
    (1274, "cudnn", 2, 16, 16, 32768, 32768, 64, 0, "-"),
    (1275, "cudnn", 1, 16, 16, 81920, 81920, 128, 1, "-"),
    (1276, "cudnn", 1, 24, 24, 28672, 28672, 128, 0, "-"),
    # ==== set "held5" (ids 1281–1299): listed 2026-12-06 (session 11) after held4 was measured, to give the stream-K
    # decode (unchanged since held3: its model, tiles and workers) a held-out set of more than two runs ====
    (1281, "triton_streamk", 1, 32, 8, 1, 40000, 128, 0, "-"),     # ragged
    (1282, "triton_streamk", 4, 32, 8, 1, 16384, 128, 0, "-"),
    (1283, "triton_streamk", 1, 64, 8, 1, 262144, 128, 0, "-"),   # GQA 8:1
    (1284, "triton_streamk", 8, 32, 32, 1, 4096, 128, 0, "-"),     # MHA
    (1285, "triton_streamk", 2, 16, 2, 1, 100000, 64, 0, "-"),     # ragged
    (1286, "triton_streamk", 1, 32, 4, 1, 524288, 128, 0, "-"),
    (1287, "triton_streamk", 16, 32, 8, 1, 2048, 64, 0, "-"),
    (1288, "triton_streamk", 1, 40, 8, 1, 81920, 128, 0, "-"),
    # ==== set "held6" (ids 1291–1299): listed 2026-12-06 (session 11) after held5 showed the stream-K combine
    # kernel's time (17–79 µs with 33–66 partials a pair: one register tile of all of them) and the combine was
    # rewritten to merge 8 partials a step; the model is unchanged since held3 ====
    (1291, "triton_streamk", 1, 32, 4, 1, 196608, 128, 0, "-"),
    (1292, "triton_streamk", 2, 16, 2, 1, 65536, 64, 0, "-"),
    (1293, "triton_streamk", 1, 32, 8, 1, 24576, 128, 0, "-"),
    (1294, "triton_streamk", 1, 48, 8, 1, 131072, 128, 0, "-"),   # GQA 6:1
    (1295, "triton_streamk", 4, 32, 8, 1, 32768, 64, 0, "-"),
    (1296, "triton_streamk", 1, 16, 1, 1, 300000, 128, 0, "-"),   # MQA: one pair over every worker
    (1297, "triton_streamk", 8, 32, 8, 1, 8192, 128, 0, "-"),
    (1298, "triton_streamk", 2, 40, 8, 1, 50000, 128, 0, "-"),    # ragged
    # ==== set "held7" (ids 1301–1399): listed 2026-12-06 (session 11) after kappa = 2 was chosen for the coupled
    # timeline on held/held2/held3/held4 (reports/persistent_coupled_timeline.md, "Second choice"), before any of it
    # was measured ====
    (1301, "triton_persistent", 1, 16, 16, 20480, 20480, 128, 1, "rr"),
    (1302, "triton_persistent", 1, 24, 24, 12288, 12288, 64, 1, "rr"),
    (1303, "triton_persistent", 2, 8, 8, 24576, 24576, 128, 1, "rr"),
    (1304, "triton_persistent", 1, 32, 8, 24576, 24576, 64, 1, "rr"),     # GQA 4:1
    (1305, "triton_persistent", 1, 16, 16, 36000, 36000, 128, 1, "rr"),   # ragged
    (1306, "triton_persistent", 1, 16, 16, 20480, 20480, 128, 1, "lpt"),
    (1307, "triton_persistent", 1, 24, 24, 12288, 12288, 64, 1, "lpt"),
    (1308, "triton_persistent", 2, 8, 8, 24576, 24576, 128, 1, "lpt"),
    (1309, "triton_persistent", 1, 24, 24, 16384, 16384, 128, 0, "rr"),
    (1310, "triton_persistent", 1, 16, 4, 32768, 32768, 64, 0, "lpt"),   # GQA 4:1
]
COLS = ["id", "impl", "B", "Hq", "Hkv", "Nq", "Nkv", "d", "causal", "order"]
IMPLS = ("cudnn", "triton_persistent", "triton_streamk")
SETS = {"held": lambda i: 1000 < i <= 1070, "held2": lambda i: 1070 < i < 1100, "held3": lambda i: 1200 < i < 1250,
        "held4": lambda i: 1250 < i < 1280, "held5": lambda i: 1280 < i < 1290,
        "held6": lambda i: 1290 < i < 1300, "held7": lambda i: 1300 < i < 1400,
        "all": lambda i: True}
METRICS = ["dram__bytes_read.sum", "dram__bytes_write.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
           "gpu__time_duration.sum", "launch__grid_size", "launch__block_size", "launch__registers_per_thread",
           "launch__shared_mem_per_block_dynamic"]
SUMMED = METRICS[:4]
ROOF_FLOPS, ROOF_BYTES = 600e12, 3.0e12
"""Only for --dry-run's time estimate (not a model): about the bf16 tensor rate cuDNN reaches on an H100 and the
H100's device-to-device copy bandwidth (../shared/devices.md: about 3.0 TB/s)."""


def case_dict(c) -> dict:
    return dict(zip(COLS, c))


def case_list_hash(cases=None) -> str:
    """A hash of the case list, written to log.txt, so the comparison can tell the measured list is the committed one."""
    return hashlib.sha256(json.dumps([list(c) for c in (CASES if cases is None else cases)]).encode()).hexdigest()[:16]


def visible_pairs(nq: int, nkv: int, causal: bool) -> int:
    """(query, key) pairs attended: all, or under the bottom-right causal mask row r sees max(0, r + Nkv − Nq + 1)."""
    if not causal:
        return nq * nkv
    s = nkv - nq
    return nq * (s + 1) + nq * (nq - 1) // 2 if s >= 0 else nkv * (nkv + 1) // 2


def case_flops_bytes(c: dict) -> tuple[float, float]:
    """(matmul FLOPs 4·B·H·pairs·d, bytes of Q, K, V and O once) of a case (bf16)."""
    B, H, Hk, Nq, Nk, d = c["B"], c["Hq"], c["Hkv"], c["Nq"], c["Nkv"], c["d"]
    return 4.0 * B * H * visible_pairs(Nq, Nk, bool(c["causal"])) * d, 2.0 * (2 * B * H * Nq * d + 2 * B * Hk * Nk * d)


def check_cases(cases=None) -> None:
    """The case list's own rules: ids unique and in 1001–1099 or 1201–1399, a known impl, decode rows Nq = 1, GQA
    groups whole."""
    cases = CASES if cases is None else cases
    ids = [c[0] for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for c in cases:
        d = case_dict(c)
        assert 1001 <= d["id"] <= 1099 or 1201 <= d["id"] <= 1399, d
        assert d["impl"] in IMPLS and d["Hq"] % d["Hkv"] == 0, d
        assert (d["order"] in ("rr", "lpt")) == (d["impl"] == "triton_persistent"), d
        assert (d["impl"] == "triton_streamk") == (d["Nq"] == 1), d


def make_call(c: dict):
    """(the measured call, the reference call) of a case; inputs built here, outside the profiled range."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = torch.Generator(device="cuda").manual_seed(3000 + c["id"])
    B, H, Hk, Nq, Nk, d = c["B"], c["Hq"], c["Hkv"], c["Nq"], c["Nkv"], c["d"]

    def rnd(*shape):
        return torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v = rnd(B, H, Nq, d), rnd(B, Hk, Nk, d), rnd(B, Hk, Nk, d)
    causal = bool(c["causal"])
    kw = {"enable_gqa": True} if H != Hk else {}

    def sdpa(backend):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **kw)
    ref = lambda: sdpa(SDPBackend.FLASH_ATTENTION)  # noqa: E731
    if c["impl"] == "cudnn":
        return (lambda: sdpa(SDPBackend.CUDNN_ATTENTION)), ref
    from iosim.triton_kernels import kernels
    if c["impl"] == "triton_persistent":
        return (lambda: kernels.attention(q, k, v, causal=causal, persistent=True, order=c["order"])), ref
    assert c["impl"] == "triton_streamk"
    return (lambda: kernels.attention(q, k, v, causal=causal, decode="streamk")), ref


def launch_facts(c: dict, num_sms: int) -> str:
    """The grid the Triton launcher picks for a case (what compare_persistent.py predicts with), for log.txt."""
    if c["impl"] == "cudnn":
        return ""
    from iosim.problem import Problem
    from iosim.triton_kernels.schedule import launch_config, persistent_workers, streamk_segments, streamk_workers
    p = Problem(c["B"], c["Hq"], c["Hkv"], c["Nq"], c["Nkv"], c["d"], "bf16", bool(c["causal"]))
    kc = launch_config(p.head_dim, p.causal)
    if c["impl"] == "triton_persistent":
        return (f"tiles {kc.block_m}x{kc.block_n} warps {kc.num_warps} stages {kc.num_stages} order {c['order']} "
                f"workers {persistent_workers(p, kc, num_sms)}")
    W, kmax, smax, _ = streamk_segments(p, kc.block_n, streamk_workers(p, kc.block_n, num_sms))
    return f"block_n {kc.block_n} workers {W} max segments/worker {kmax} max slots/pair {smax}"


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
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    table = {c[0]: case_dict(c) for c in CASES}
    for cid in ids:
        c = table[cid]
        t0 = time.time()
        try:
            call, ref = make_call(c)
            with torch.no_grad():
                out = call()  # warm-up (Triton compiles, cuDNN builds its graph), not profiled
            torch.cuda.synchronize()
            del out
            torch.cuda.profiler.start()
            iosim_marker[(cid,)](buf)
            with torch.no_grad():
                out = call()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            ok = bool(torch.isfinite(out).all())
            try:
                with torch.no_grad():
                    err = f"{(out.float() - ref().float()).abs().max().item():.3g}"
            except Exception as e:  # the reference is a check, not the measurement
                err = f"n/a ({type(e).__name__})"
            print(f"case {cid} done in {time.time() - t0:.1f}s finite={ok} max|err| vs flash={err} "
                  f"{launch_facts(c, num_sms)}", flush=True)
            del out, call, ref
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


def run_group(gi: int, ids: list[int], timeout: int, log) -> list[dict]:
    from measure_sdpa import parse_raw  # ncu --csv --page raw: one row per kernel
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
    log.write(err[-8000:] + "\n")
    log.flush()
    print(f"group {gi} {ids}: rc={rc} {time.time() - t:.1f}s", flush=True)
    return parse_raw(text)


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


def write_csvs(out: str, cases: list[dict], kernels: list[dict], gpu: str) -> None:
    kcols = ["id", "kernel", "grid", "block"] + METRICS
    with open(os.path.join(out, "kernels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=kcols)
        w.writeheader()
        w.writerows(kernels)
    with open(os.path.join(out, "measured.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS + SUMMED + ["num_kernels", "kernels", "gpu"])
        w.writeheader()
        for c in cases:
            ks = [k for k in kernels if k["id"] == c["id"]]
            if ks:
                w.writerow(dict(c, **{m: sum(k[m] for k in ks) for m in SUMMED}, num_kernels=len(ks),
                                kernels=" | ".join(k["kernel"][:80] for k in ks), gpu=gpu))


def dry_run(cases: list[dict]) -> int:
    """List the cases, their GPU memory and a roofline kernel-time estimate; needs no torch."""
    total = 0.0
    for c in cases:
        f, nbytes = case_flops_bytes(c)
        est_s = max(f / ROOF_FLOPS, nbytes / ROOF_BYTES)
        total += est_s
        print(f"{c['id']:>4} {c['impl']:<17} B={c['B']:<2} H={c['Hq']:<2}/{c['Hkv']:<2} Nq={c['Nq']:<6} "
              f"Nkv={c['Nkv']:<7} d={c['d']:<3} causal={c['causal']} order={c['order']:<3} "
              f"~{nbytes / 2**30:.2f} GiB ~{est_s * 1e3:.1f} ms")
    print(f"{len(cases)} cases, kernels ~{total:.2f} s at {ROOF_FLOPS / 1e12:.0f} TFLOP/s / {ROOF_BYTES / 1e12:.1f} TB/s; "
          f"case list {case_list_hash()}")
    return 0


def _versions() -> list[str]:
    import torch
    import triton
    p = torch.cuda.get_device_properties(0)
    lines = [f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
             f"device: {p.name} sms={p.multi_processor_count} l2={p.L2_cache_size} cc={p.major}.{p.minor}",
             f"torch={torch.__version__} cuda={torch.version.cuda} cudnn={torch.backends.cudnn.version()} "
             f"triton={triton.__version__}"]
    try:
        import iosim
        lines.append(f"iosim from {os.path.dirname(iosim.__file__)}")
    except ImportError as e:
        lines.append(f"iosim not importable: {e} (run pip install . first)")
    for cmd in (["ncu", "--version"], ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                                       "--format=csv,noheader"]):
        try:
            lines.append(" ".join(subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.split()))
        except Exception as e:
            lines.append(f"{cmd[0]}: {e}")
    lines.append(f"case list {case_list_hash()}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--set", default="held", choices=sorted(SETS))
    ap.add_argument("--cases", default=None, help="comma-separated case ids (default: the --set)")
    ap.add_argument("--group-size", type=int, default=6)
    ap.add_argument("--timeout-per-group", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds after which no further group starts")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker([int(x) for x in a.worker.split(",")])
        return 0
    check_cases()
    ids = [int(x) for x in a.cases.split(",")] if a.cases else [c[0] for c in CASES if SETS[a.set](c[0])]
    unknown = sorted(set(ids) - {c[0] for c in CASES})
    if unknown:
        ap.error(f"unknown case ids {unknown}")
    cases = [case_dict(c) for c in CASES if c[0] in ids]
    if a.dry_run:
        return dry_run(cases)
    os.makedirs(a.out, exist_ok=True)
    import torch
    gpu = torch.cuda.get_device_name(0)
    kernels: list[dict] = []
    t_all = time.time()
    with open(os.path.join(a.out, "log.txt"), "w") as log:
        log.write("\n".join(_versions()) + "\n")
        log.flush()
        for gi, grp in enumerate(groups_of([c["id"] for c in cases], max(1, a.group_size))):
            if time.time() - t_all > a.deadline:
                log.write(f"# group {gi} cases {grp} SKIPPED: past the {a.deadline:.0f} s deadline\n")
                continue
            kernels += attribute(run_group(gi, grp, a.timeout_per_group, log))
            write_csvs(a.out, cases, kernels, gpu)
        log.write(f"total wall {time.time() - t_all:.1f}s\n")
    write_csvs(a.out, cases, kernels, gpu)
    print(f"{'id':>4} {'impl':<17} {'SM rd MB':>10} {'DRAM rd MB':>11} {'us':>9} kernels")
    for c in cases:
        ks = [k for k in kernels if k["id"] == c["id"]]
        sm = sum(k["l1tex__m_xbar2l1tex_read_bytes.sum"] for k in ks) / 1e6
        dr = sum(k["dram__bytes_read.sum"] for k in ks) / 1e6
        us = sum(k["gpu__time_duration.sum"] for k in ks) / 1e3
        print(f"{c['id']:>4} {c['impl']:<17} {sm:>10.2f} {dr:>11.2f} {us:>9.1f} {len(ks)}")
    print(f"total {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
