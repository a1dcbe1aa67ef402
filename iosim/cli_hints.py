"""``iosim hints``: autotune hints for kernels.

``--format triton`` writes a JSON list of ``triton.Config``-style entries (kwargs BLOCK_M/BLOCK_N, num_warps,
num_stages, num_ctas, maxnreg, and an ``iosim`` block with the predicted time and why); a decode shape gives FA2's
split-KV (NUM_SPLITS, BLOCK_N) beside FA2's heuristic choice, ``--pass bwd`` the backward's tiles beside FA2's, ``--kernel fa3|cudnn|fa4|lean`` that persistent
kernel's tiles / workers beside its own launch; ``--format blockmask`` turns a
boolean block pattern (.npy, [Qb, Kb] or [B, H, Qb, Kb]) into FlexAttention BlockMask inputs (.npz).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import IO

import numpy as np

from iosim.cli_tiles import add_mode_args, add_problem_args, fwd_params, mode_of, problem_from_args
from iosim.atomic import atomic_write_bytes
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware

COMMAND = "hints"


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="autotune hints: triton.Config JSON, or FlexAttention BlockMask inputs")
    add_problem_args(p)
    p.add_argument("--format", default="triton", choices=["triton", "blockmask"])
    p.add_argument("--top", type=int, default=5, help="configurations to export (default 5)")
    add_mode_args(p)
    p.add_argument("--mask", default=None, help="blockmask: boolean block pattern, .npy")
    p.add_argument("--full", default=None, help="blockmask: optional .npy of blocks that need no mask_mod")
    p.add_argument("--out", default=None, help="output file (default: stdout for triton; required for blockmask)")


def _load_bool(path: str, what: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IosimError(f"cannot read {what} {path}: {e}") from None
    return a


def run(args: argparse.Namespace, out: IO[str]) -> int:
    from iosim.hints import backward_entries, block_mask_inputs, config_entries, decode_entries, persistent_entries
    if args.format == "triton":
        hw, problem = load_hardware(args.hardware), problem_from_args(args)
        mode = mode_of(args, problem, hw)
        params = fwd_params(args, mode)
        if mode == "persistent":
            entries = persistent_entries(hw, problem, args.kernel, top=args.top)
        elif mode == "decode":
            entries = decode_entries(hw, problem, top=args.top)
        elif mode == "bwd":
            entries = backward_entries(hw, problem, args.algorithm, top=args.top, kernel=args.kernel)
        else:
            entries = config_entries(hw, problem, args.algorithm, top=args.top, path=args.path, params=params)
        text = json.dumps(entries, indent=1) + "\n"
        if args.out:
            atomic_write_bytes(Path(args.out), text.encode())
            out.write(f"wrote {len(entries)} configurations to {args.out}\n")
        else:
            out.write(text)
        return 0
    if not args.mask or not args.out:
        raise IosimError("--format blockmask needs --mask PATTERN.npy and --out FILE.npz")
    arrays = block_mask_inputs(_load_bool(args.mask, "--mask"),
                               _load_bool(args.full, "--full") if args.full else None)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(args.out), buf.getvalue())
    out.write(f"wrote {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} to {args.out}\n")
    return 0
