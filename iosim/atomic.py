"""Atomic file writes: a temp file in the target folder, then rename, so readers never see a half-written file.
A path that cannot be written (a file where a folder should be, a read-only folder) raises one IosimError naming it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from iosim.errors import IosimError


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _why(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be written: a file in the way of a folder, or the system's reason."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    return f"{blocker} is a file, not a folder" if blocker is not None else (e.strerror or str(e))


def writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the folder ``path`` if missing and check that a file can be written in it (a real write, so read-only
    file systems and permissions count); IosimError naming the path and the flag if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise IosimError(f"{flag} {path}: cannot write there ({_why(path, e)}); give a writable folder "
                         "(it is created if missing)") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + os.replace (same folder, so the rename is atomic)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            reason = f"{path} is a folder" if path.is_dir() else _why(path.parent, e)
            raise IosimError(f"cannot write {path}: {reason}; choose another path") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
