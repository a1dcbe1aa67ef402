"""Sparse-family validation sweep (issue 23): each family's sparse kernel as FlexAttention (and iosim's Triton
kernel) runs it with the family's block pattern, under ncu.

Device command (from the repository root):

    python3 -m pip install -q --no-deps --no-build-isolation . && \
      python3 benchmarks/gpu/validate_sparse.py --out "$OUT/sparse"

Then, on any machine: ``.venv/bin/python benchmarks/gpu/compare_sparse.py DIR/kernels.csv --profile h100 --out
reports/validation/h100/sparse``.

All cases are held out: listed and committed (2026-12-06) before any was measured; nothing is tuned on them. What is
validated is each family's *sparse attention kernel* with its block pattern, run by a real block-sparse kernel
(compiled FlexAttention, ``BlockMask.from_kv_blocks`` of the pattern, 128-token blocks; and iosim's Triton kernel
with ``BlockMask.from_dense``); the pre-passes (scoring, selection, gathers) are not run on the GPU here. The
patterns, at 128×128 blocks, per head, seeded (``pattern``):
* ``xattention`` — density of causal-valid blocks as XAttention's RULER Table 8 (27.9% at stride 16), column 0 and
  the diagonal forced (``find_blocks_chunked``), the rest random (the method keeps by score; the kernel's IO depends
  only on how many and which columns).
* ``seer`` — 10% of valid blocks (SeerAttention's 90% sparsity claim), diagonal forced; the method's own 64-token
  blocks are rounded to FlexAttention's 128.
* ``power`` — PowerAttention: the diagonal block and the blocks at distances 2^k (k ≥ 0) to the left.
* ``pbs`` — PBS-Attn after its key permutation: 35% of valid blocks, the first block and each 256-token segment's
  own diagonal (2 blocks) forced.
* ``vdit_diag`` / ``vdit_multi`` / ``vdit_stripe`` — Sparse-vDiT's modes, non-causal: a diagonal band of ±2 blocks;
  bands at multiples of a frame stride (16 blocks); vertical stripes (every 8th KV block) plus the diagonal.
* ``draft`` — DraftAttention after its reorder: 25% of all blocks, non-causal, diagonal forced.
Mask strings (``iosim`` cases): ``sparse:FAMILY:DENSITY:SEED`` (+``causal``).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import validate_masks as vm  # noqa: E402  (Flex / Triton calls, ncu runner)

# The families live in iosim.models, which exists only in an installed iosim (models/ installs as iosim.models): the
# source tree's iosim/ must not shadow it, so the repository root leaves sys.path again (validate_masks adds it).
if os.path.isdir(os.path.join(ROOT, "iosim")) and not os.path.isdir(os.path.join(ROOT, "iosim", "models")):
    try:
        import iosim.models  # noqa: F401
    except ImportError:
        sys.path[:] = [x for x in sys.path if os.path.abspath(x or ".") != ROOT]
        for _m in [m for m in sys.modules if m == "iosim" or m.startswith("iosim.")]:
            del sys.modules[_m]

# id, impl, B, H, Hkv, N, d, mask, varlen (validate_masks.py's layout)
CASES = [
    (1101, "flex", 1, 32, 8, 32768, 128, "sparse:xattention:0.279:1+causal", ""),
    (1102, "flex", 1, 32, 8, 65536, 128, "sparse:xattention:0.279:2+causal", ""),
    (1103, "flex", 1, 32, 8, 65536, 128, "sparse:seer:0.10:3+causal", ""),
    (1104, "flex", 1, 16, 16, 65536, 64, "sparse:seer:0.10:4+causal", ""),
    (1105, "flex", 1, 32, 8, 131072, 128, "sparse:power:1:0+causal", ""),
    (1106, "flex", 1, 16, 16, 32768, 128, "sparse:power:1:0+causal", ""),
    (1107, "flex", 1, 32, 8, 32768, 128, "sparse:pbs:0.35:5+causal", ""),
    (1108, "flex", 1, 16, 16, 32768, 128, "sparse:vdit_diag:1:0", ""),
    (1109, "flex", 1, 16, 16, 65536, 128, "sparse:vdit_multi:1:0", ""),
    (1110, "flex", 1, 16, 16, 32768, 64, "sparse:vdit_stripe:1:0", ""),
    (1111, "flex", 1, 24, 24, 32768, 128, "sparse:draft:0.25:6", ""),
    (1121, "triton_blocks", 1, 32, 8, 32768, 128, "sparse:xattention:0.279:1+causal", ""),
    (1122, "triton_blocks", 1, 16, 16, 32768, 128, "sparse:power:1:0+causal", ""),
    (1123, "triton_blocks", 1, 16, 16, 32768, 128, "sparse:vdit_multi:1:0", ""),
]
BLOCK = 128


def pattern(family: str, density: float, seed: int, heads: int, n: int, causal: bool):
    """[H, T, T] bool blocks of a family at 128-token blocks (see the module docstring)."""
    import numpy as np
    from iosim.models.sparse import common as sc
    from iosim.problem import Problem
    p = Problem(1, heads, heads, n, n, 128, "bf16", causal)
    t = -(-n // BLOCK)
    valid = sc.valid_blocks(p, BLOCK, BLOCK)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    if family in ("xattention", "seer", "pbs", "draft"):
        forced = sc.forced_blocks(p, BLOCK, BLOCK, first=1 if family in ("xattention", "pbs") else 0, diagonal=True)
        if family == "pbs":  # each 256-token segment's own diagonal: the two 128-blocks of the segment
            seg = (i // 2 == j // 2) & (j <= i)
            forced |= seg & valid
        m = sc.density_blocks(p, BLOCK, BLOCK, density, seed, forced=forced, per_head=True)[0]
        return m
    if family == "power":
        d = i - j
        m = (d == 0) | ((d > 0) & ((d & (d - 1)) == 0))
    elif family == "vdit_diag":
        m = np.abs(i - j) <= 2
    elif family == "vdit_multi":
        m = (np.abs(i - j) % 16 <= 1) | (np.abs(i - j) % 16 == 15)
    elif family == "vdit_stripe":
        m = (j % 8 == 0) | (i == j)
    else:
        raise ValueError(f"unknown family {family}")
    return np.broadcast_to(m & valid, (heads, t, t)).copy()


def mask_spec(c: dict):
    import numpy as np
    from iosim.maskspec import CAUSAL, MaskSpec, combine
    parts = c["mask"].split("+")
    _, family, dens, seed = parts[0].split(":")
    causal = "causal" in parts[1:]
    blocks = pattern(family, float(dens), int(seed), c["Hq"], c["N"], causal)
    spec = MaskSpec(parts[0], (), np.ascontiguousarray(blocks), None, BLOCK)
    return combine([spec, CAUSAL]) if causal else spec


def install() -> None:
    """Point validate_masks at these cases (its make_call, worker and main read its module globals)."""
    vm.CASES = CASES
    vm.mask_spec = mask_spec


def main(argv=None) -> int:
    install()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:  # ncu runs this script as the worker
        ap = argparse.ArgumentParser()
        ap.add_argument("--worker")
        a, _ = ap.parse_known_args(argv)
        vm.worker([int(x) for x in a.worker.split(",")])
        return 0
    vm.__file__ = os.path.abspath(__file__)
    return vm.main(argv)


if __name__ == "__main__":
    sys.exit(main())
