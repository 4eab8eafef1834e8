"""Rich: a terminal table per grid, its title above and its notes below (plain text for files)."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .grid import Grid


def rich_grid(grid: Grid) -> Table:
    rich_table = Table()
    for header, align in zip(grid.headers, grid.align):
        # Folded, never cut short: a label or a run id is what the user looks up.
        rich_table.add_column(header, justify="right" if align == "r" else "left", overflow="fold")
    for index, row in enumerate(grid.rows):
        # Text cells, so that a label or message is never read as rich markup.
        rich_table.add_row(*(Text(cell.text, style="bold" if cell.bold else "") for cell in row),
                           end_section=index + 1 == grid.pinned)
    return rich_table


def rich_renderables(grids: list[Grid], failed: Grid | None, empty: str) -> list[RenderableType]:
    """The grids, or the `empty` message where there are none, then the failed runs."""
    renderables: list[RenderableType] = []
    for grid in grids:
        # The title goes above the table rather than in it, where rich would wrap it to the table's width.
        renderables += [Text(grid.title, style="italic"), *([Text(" ".join(grid.lead))] if grid.lead else []),
                        rich_grid(grid)]
        renderables += [Text(note, style="dim") for note in grid.notes]
    if not grids:
        renderables.append(Text(empty))
    if failed is not None:
        renderables += [Text(failed.title, style="italic red"), rich_grid(failed)]
    return renderables


def print_rich(console: Console, renderables: list[RenderableType]) -> None:
    for index, renderable in enumerate(renderables):
        if index and not isinstance(renderable, Table):
            console.print()  # a blank line before each table's title
        console.print(renderable)


def rich_document(grids: list[Grid], failed: Grid | None, empty: str, width: int = 120) -> str:
    """What `print_rich` shows, as plain text without colour codes."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    print_rich(console, rich_renderables(grids, failed, empty))
    return buffer.getvalue()
