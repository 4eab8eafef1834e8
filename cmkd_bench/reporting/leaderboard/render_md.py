"""Markdown: a `###` heading, a pipe table and a list of notes per grid."""

from __future__ import annotations

from typing import Iterable

from .grid import Grid


def md_grid(grid: Grid) -> str:
    rule = "|" + "|".join("---:" if align == "r" else "---" for align in grid.align) + "|"
    lines = [f"### {grid.title}", ""] + ([" ".join(grid.lead), ""] if grid.lead else []) + [md_line(grid.headers), rule]
    lines += [md_line(f"**{cell.text}**" if cell.bold and cell.text else cell.text for cell in row)
              for row in grid.rows]
    if grid.notes:
        lines += [""] + [f"- {note}" for note in grid.notes]
    return "\n".join(lines)


def md_line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def md_document(grids: list[Grid], failed: Grid | None, empty: str) -> str:
    """The grids, or the `empty` message where there are none, then the failed runs."""
    blocks = [md_grid(grid) for grid in grids] or [empty]
    if failed is not None:
        blocks.append(md_grid(failed))
    return "\n\n".join(blocks) + "\n"
