"""Issue 24: every built-in profile answers predict, tiles and report on flash2's defaults; report's exit status
says when a point fails; V100's default tiles and FastAttention's host-memory K/V on Volta."""

from __future__ import annotations

import io
import tomllib
from importlib import resources

import pytest

from iosim.cli import run
from iosim.errors import IosimError
from iosim.hwprofile import load_hardware
from iosim.models.fastattention import build_volta, host_bytes_volta
from iosim.pipeline import build_schedule
from iosim.problem import KernelConfig, Problem
from iosim.tiles import candidates, shape_rule

PROFILES = ("a100", "ascend910b", "b200", "h100", "h200", "v100")


def _cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return run(args, out), out.getvalue()


@pytest.mark.parametrize("hw", PROFILES)
def test_predict_tiles_and_report_succeed_on_defaults(hw, tmp_path):
    dtype = "bf16" if "bf16" in load_hardware(hw).tensor_flops_per_s else "fp16"  # V100: FP16 tensor cores only
    rc, text = _cli(["predict", "--hardware", hw, "--seq-q", "1024", "--heads", "2"])  # flash2 defaults, L2 model on
    assert rc == 0 and f"d=128 {dtype}" in text and "L2: hit rate" in text
    rc, text = _cli(["tiles", "--hardware", hw, "--seq-q", "2048"])  # 16 heads × 32 row blocks: no split-KV decode
    assert rc == 0 and "legal configurations" in text and f"flash2 on {hw}" in text
    rc, text = _cli(["report", "--hardware", hw, "--algorithms", "flash2", "--seqs", "512", "--heads", "2",
                     "--quiet", "--out", str(tmp_path)])
    assert rc == 0 and "failed" not in text
    assert (tmp_path / f"roofline_{hw}.png").stat().st_size > 0 and (tmp_path / f"tiles_{hw}.png").exists()


def test_report_exits_nonzero_when_every_point_fails_and_draws_no_empty_plot(tmp_path):
    doc = resources.files("iosim.hardware").joinpath("v100.toml").read_text()
    assert tomllib.loads(doc)["values"]["smem_per_sm_bytes"]["value"] == 98304
    tiny = doc.replace('name = "v100"', 'name = "tiny"').replace("value = 98304", "value = 2048")
    (tmp_path / "tiny.toml").write_text(tiny)  # 2 KiB of shared memory: no flash2 tile fits (16×16 at d=128: 12 KiB)
    rc, text = _cli(["report", "--hardware", str(tmp_path / "tiny.toml"), "--algorithms", "flash2", "--seqs", "512",
                     "--quiet", "--out", str(tmp_path / "r")])
    assert rc == 1
    assert "flash2 N=512: flash2: no halving of FA2's tiles 128×64 fits tiny" in text
    assert "no roofline drawn" in text and "no legal flash2 tile on tiny" in text and "no IO/time plot drawn" in text
    drawn = {f.name for f in (tmp_path / "r").iterdir()}
    assert drawn == {"io_vs_sram.png", "index.html", "report.md"}  # the chip-free IO-vs-SRAM plot only
    assert "Failed points" in (tmp_path / "r" / "report.md").read_text()


def test_v100_default_tiles_are_halved_to_fit_and_say_so():
    v100 = load_hardware("v100")
    p = Problem(1, 16, 16, 4096, 4096, 128, "fp16")
    # FA2's 128×64 at d=128, 2 stages: Q 128·128·2 + 2 stages × (K + V) 2·64·128·2 = 98,304 B + the pipeline's
    # 1,024 B > the V100's 98,304 B per SM; 128×32: 32,768 + 2·2·32·128·2 = 65,536 + 1,024 fits
    assert 128 * 128 * 2 + 2 * 2 * 64 * 128 * 2 + 1024 > v100.smem_per_sm_bytes >= 128 * 128 * 2 + 2 * 2 * 32 * 128 * 2
    s = build_schedule("flash2", p, KernelConfig(), v100)
    assert (s.config.block_m, s.config.block_n) == (128, 32)
    assert any("default tiles 128×64" in n and "using 128×32" in n for n in s.notes)
    h = build_schedule("flash2", p, KernelConfig(), load_hardware("h100"))  # fits: FA2's own, no note
    assert (h.config.block_m, h.config.block_n) == (128, 64) and not any("default tiles" in n for n in h.notes)
    assert shape_rule("mma.sync.m8n8k4", 128, 32, 4) == ""        # 32 rows per warp: four 8×8 quad-pair blocks
    assert shape_rule("mma.sync.m8n8k4", 32, 16, 4)               # 8 rows × 16 keys = two 8×8 blocks per warp
    assert shape_rule("mma.sync.m8n8k4", 32, 32, 4) == ""         # 8 rows × 32 keys = four
    assert shape_rule("mma.sync.m8n8k4", 48, 32, 4)               # 12 rows per warp is no multiple of 8
    cs = candidates(v100, Problem(1, 2, 2, 512, 512, 64, "fp16"), block_m=(64,), block_n=(64,), num_warps=(4,))
    assert [c.legal for c in cs] == [True, True, False, False]    # stages 1, 2 legal; 3, 4: no cp.async on sm70


def test_host_bytes_of_the_256k_offload_on_eight_v100s():
    # Llama-7B (32 heads, d=128) at 256K tokens over eight V100s: 4 heads per GPU; all of K and V in host memory
    p = Problem(1, 4, 4, 262144, 262144, 128, "fp16")
    expected = 2 * 4 * 262144 * 128 * 2  # K and V, 4 heads, 256K tokens, 128 dims, 2 bytes: 512 MiB
    assert host_bytes_volta(p) == expected == 512 * 2**20
    assert host_bytes_volta(p, 0.25) == expected // 4
    v100 = load_hardware("v100")
    s = build_volta(p, KernelConfig(), v100)
    ms = expected / 15.75e9 * 1e3  # PCIe 3.0 x16: 8 GT/s × 16 lanes × 128/130 / 8 bits
    assert s.algorithm == "fastattention_volta" and any(f"{expected:,} B" in n and f"{ms:.3f} ms" in n for n in s.notes)
    assert any("h100 has no host_bandwidth_bytes_per_s, so no host time" in n
               for n in build_volta(p, KernelConfig(), load_hardware("h100")).notes)
    with pytest.raises(IosimError, match="host_kv_fraction=2"):
        build_volta(p, KernelConfig(), v100, 2)
    assert not any("host:" in n for n in build_volta(p, KernelConfig(), load_hardware("h100"), 0.0).notes)
