"""Plain-text tables for the CLI: column widths from the content, so columns never run together."""

from __future__ import annotations

from typing import Sequence

GAP = "  "


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None,
                 indent: str = "") -> str:
    """Rows under headers, each column as wide as its widest cell, columns separated by two spaces.

    align: one character per column, "l" (left) or "r" (right); default: left. Cells are shown with ``str``.
    The last column is not padded on the right (no trailing spaces).
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    n = len(headers)
    align = align or "l" * n
    if len(align) != n or set(align) - {"l", "r"} or any(len(r) != n for r in cells):
        raise ValueError(f"format_table: {n} headers, align {align!r} and rows must have one entry per column")
    widths = [max(len(r[i]) for r in cells) for i in range(n)]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align)]
        lines.append((indent + GAP.join(parts)).rstrip())
    return "\n".join(lines) + "\n"


def fmt_bytes(n: float | None, spec: str = ".4g") -> str:
    """Bytes in decimal units (kB, MB, GB, TB: ncu's convention), the number formatted with ``spec``; None → "-"."""
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:{spec}} {unit}"
    return f"{int(n)} B"


def fmt_time(t: float | None, micro: bool = False) -> str:
    """Seconds shown in ms (4 significant digits), or in µs below 1 ms when ``micro``; None → "-"."""
    if t is None:
        return "-"
    return f"{t * 1e6:.4g} µs" if micro and t < 1e-3 else f"{t * 1e3:.4g} ms"
