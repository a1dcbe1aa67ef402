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
