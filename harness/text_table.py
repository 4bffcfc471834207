"""Plain-text tables for the terminal: left-aligned columns, two spaces apart."""

from __future__ import annotations

from collections.abc import Sequence


def aligned_columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
