"""The one fixed-width text table (``imgrec models list``, ``imgrec data inspect``,
the sweep's ``table.txt``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Collection[int] = ()) -> str:
    """Columns as wide as their widest cell, two spaces apart, left-aligned except
    the column indices in ``right``; trailing spaces trimmed. Cells are ``str()``-ed."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()
        for row in cells
    )
