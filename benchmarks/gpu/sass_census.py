"""Which tensor-core instructions iosim's Triton kernels compile to, and their registers and spills (a diagnostic for
the held-out decode/backward time miss, issue 20: our Triton backward runs ~2× slower than the model's wgmma path).

Device command: ``python3 benchmarks/gpu/sass_census.py > "$OUT/sass.txt"``. Runs each kernel once at a small shape,
then disassembles every cubin in Triton's cache with ``cuobjdump -sass`` and counts opcodes (HGMMA = wgmma, HMMA =
mma.sync) and local-memory accesses (STL/LDL = spills)."""

import collections
import glob
import os
import re
import subprocess
import sys

import torch


def main() -> int:
    from iosim.triton_kernels import kernels
    dev = "cuda"
    for (B, H, Hk, N, d, causal) in [(1, 16, 4, 4096, 64, False), (1, 32, 8, 4096, 128, True)]:
        q = torch.randn(B, H, N, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, Hk, N, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(B, Hk, N, d, device=dev, dtype=torch.bfloat16)
        o, lse = kernels.attention(q, k, v, causal=causal, return_lse=True)
        do = torch.randn_like(o)
        kernels.backward_launch(q, k, v, o, lse, do, causal)
        torch.cuda.synchronize()
    cache = os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache"))
    for cubin in sorted(glob.glob(os.path.join(cache, "**", "*.cubin"), recursive=True)):
        name = os.path.basename(cubin)
        sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
        ops = collections.Counter(m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]+)", sass))
        keep = {k: v for k, v in ops.items() if k.startswith(("HGMMA", "HMMA", "STL", "LDL", "RED", "ATOM", "WARPGROUP"))}
        meta = glob.glob(os.path.join(os.path.dirname(cubin), "*.json"))
        info = ""
        if meta:
            import json
            j = json.load(open(meta[0]))
            info = f"regs? shared={j.get('shared')} warps={j.get('num_warps')} stages={j.get('num_stages')}"
        print(name, info, dict(sorted(keep.items())), "total", sum(ops.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
