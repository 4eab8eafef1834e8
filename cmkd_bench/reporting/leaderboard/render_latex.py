"""LaTeX: a booktabs tabular per grid, its title and notes spanning the columns."""

from __future__ import annotations

from typing import Iterable

from .grid import Grid

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "→": r"$\rightarrow$", "·": r"$\cdot$", "—": "--", "Δ": r"$\Delta$",
    "†": r"\textsuperscript{\dag}", "‡": r"\textsuperscript{\ddag}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def latex_grid(grid: Grid) -> str:
    columns = len(grid.headers)
    headers = grid.latex_headers or [latex_escape(header) for header in grid.headers]
    lines = [rf"\begin{{tabular}}{{{''.join(grid.align)}}}", r"\toprule",
             rf"\multicolumn{{{columns}}}{{l}}{{{latex_escape(grid.title)}}} \\", r"\midrule",
             latex_line(headers), r"\midrule"]
    for index, row in enumerate(grid.rows):
        lines.append(latex_line(rf"\textbf{{{latex_escape(c.text)}}}" if c.bold and c.text else latex_escape(c.text)
                                for c in row))
        if index + 1 == grid.pinned:
            lines.append(r"\midrule")
    lines.append(r"\bottomrule")
    lines += [rf"\multicolumn{{{columns}}}{{l}}{{\footnotesize {latex_escape(note)}}} \\" for note in grid.notes]
    lines.append(r"\end{tabular}")
    return "\n".join(lines)


def latex_line(cells: Iterable[str]) -> str:
    return " & ".join(cells) + r" \\"


def latex_document(grids: list[Grid], failed: Grid | None, empty: str) -> str:
    """The grids, or the `empty` message as a comment where there are none, then the failed runs."""
    blocks = [latex_grid(grid) for grid in grids] or ["% " + empty]
    if failed is not None:
        blocks.append(latex_grid(failed))
    return "\n\n".join(blocks) + "\n"
