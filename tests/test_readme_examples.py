"""Every `iosim ...` command of README.md's bash blocks runs as written (in one scratch folder, in README order), and
the Python block runs. Commands that need a GPU are skipped with the reason."""

import io
import re
import shlex
import time
from pathlib import Path

import pytest

from iosim.cli import run

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_GPU = {"calibrate": "needs a GPU (measures the chip)", "validate": "needs a GPU and ncu (measures kernels)"}
MAX_S = 60.0


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def commands() -> list[str]:
    """Lines of bash blocks that start with `iosim`, backslash continuations joined, comments stripped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("iosim "):
                out.append(line)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Shared by the commands (`hardware template --out my_gpu.toml` feeds later ones); holds the README's toml
    blocks under the file name their first line gives (`# fa2_h100.toml`)."""
    d = tmp_path_factory.mktemp("readme")
    for block in blocks("toml"):
        name = block.splitlines()[0].lstrip("# ").strip()
        (d / name).write_text(block)
    return d


def repo_paths(argv: list[str]) -> list[str]:
    """Arguments naming a committed file (the README says to run those from the repository root) made absolute."""
    return [str(README.parent / a) if "/" in a and not a.startswith(".") and (README.parent / a).is_file() else a
            for a in argv]


def test_readme_has_the_examples():
    cmds = commands()
    assert len(cmds) >= 15
    assert any("--no-l2" in c for c in cmds) and any("./my_gpu.toml" in c for c in cmds)
    assert not any("..." in c for c in cmds)  # no placeholders


@pytest.mark.parametrize("cmd", commands())
def test_readme_command_runs(cmd, scratch, monkeypatch):
    argv = repo_paths(shlex.split(cmd)[1:])
    if argv[0] in NEEDS_GPU:
        pytest.skip(NEEDS_GPU[argv[0]])
    monkeypatch.chdir(scratch)
    t0 = time.monotonic()
    assert run(argv, io.StringIO()) == 0
    assert time.monotonic() - t0 < MAX_S, f"{cmd} took over {MAX_S:.0f} s"


def test_readme_python_block_runs(tmp_path, monkeypatch):
    (code,) = blocks("python")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["pred"].counts.sm_read_bytes == 17_246_978_048  # the value the README's comment states
    df = ns["df"]
    assert len(df) == 4 and list(df["seq_q"]) == [8192, 8192, 16384, 16384] and df["error"].isna().all()
