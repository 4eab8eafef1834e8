"""LaTeX for a paper: a float per grid with its caption, booktabs rules, and the notes below the
tabular (threeparttable); the document starts with a comment naming the packages it needs.

Fit: the long layout's tables go in one column (`table`), the wide layout's across both columns of a
two-column paper (`table*`): a column per dataset and direction does not fit one column. The tabular is
set in \\footnotesize with narrower column gaps, and adjustbox's `max totalsize` shrinks table and notes
together only where they are still wider than the column or taller than the page (it never enlarges
them): no table overflows into the margin or off the page, whatever the method names and row count.
The notes wrap at the tabular's width (one-line `\\multicolumn` notes made a table hundreds of points
too wide) and carry what a reader needs (marks, protocol, selected settings, sources), not run ids or
commands.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Iterable

from ...errors import UserError
from .grid import Cell, Grid

LATEX_PACKAGES = {"booktabs": "rules", "threeparttable": "notes",
                  "adjustbox": "shrinks a table too wide for its column or too tall for the page"}
PACKAGES_COMMENT = ("% Tables from `cmkd-bench leaderboard --format latex`. Preamble: "
                    + ", ".join(rf"\usepackage{{{name}}} ({why})" for name, why in LATEX_PACKAGES.items()) + ".")
# the float's caption and skips take the rest of the page
FIT = r"\begin{adjustbox}{max totalsize={\linewidth}{0.85\textheight}}"
HEADER_WIDTH = 16  # characters per line of a column header: long headers take two lines, not a wider column

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",  # (OT1 text would print ¡ ¿ —)
    "±": r"$\pm$", "→": r"$\rightarrow$", "·": r"$\cdot$", "—": "--", "Δ": r"$\Delta$",
    "†": r"\textsuperscript{\dag}", "‡": r"\textsuperscript{\ddag}",
}
_LABEL = re.compile(r"[^\s\\{}%#$&^~]+")


@dataclass(frozen=True)
class LatexOptions:
    caption: str | None = None  # LaTeX as written; where there are several floats, each one's title follows it
    label: str | None = None  # the float's \label; LABEL-1, LABEL-2, ... in order where there are several
    span: bool = False  # table*: across both columns of a two-column paper (the wide layout)


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def check_latex_options(options: LatexOptions) -> None:
    """Refuse (one line) a caption or label that would break the document it goes into."""
    if options.label is not None and not _LABEL.fullmatch(options.label):
        raise UserError(f"--label {options.label!r}: a LaTeX label has no spaces nor any of \\ {{ }} % # $ & ^ ~; "
                        "pass one such as tab:cmkd")
    if options.caption is not None:
        _check_caption(options.caption)


def _check_caption(caption: str) -> None:
    unescaped = re.sub(r"\\.", "", caption)  # \% \{ \} are the characters themselves
    if "%" in unescaped:
        raise UserError("--caption has a bare %, which would comment out the rest of the caption; write \\%")
    depth = 0
    for char in unescaped:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise UserError("--caption has unbalanced braces { }; balance them (or write \\{ and \\} for the characters)")


def latex_grid(grid: Grid, options: LatexOptions = LatexOptions(), *, caption: str | None = None,
               label: str | None = None) -> str:
    """One float: caption (the grid's title unless `caption`), label, tabular, notes."""
    environment = "table*" if options.span else "table"
    lines = [rf"\begin{{{environment}}}[tbp]", r"\centering",
             rf"\caption{{{caption if caption is not None else latex_escape(grid.title)}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    notes = grid.lead + (grid.notes if grid.paper_notes is None else grid.paper_notes)
    body = latex_tabular(grid)
    if notes:
        body = [r"\begin{threeparttable}", *body, r"\begin{tablenotes}[flushleft]", r"\raggedright",
                *(r"\item[] " + latex_escape(note) for note in notes), r"\end{tablenotes}", r"\end{threeparttable}"]
    lines += [r"\footnotesize", r"\setlength{\tabcolsep}{4pt}", FIT, *body, r"\end{adjustbox}",
              rf"\end{{{environment}}}"]
    return "\n".join(lines)


def latex_tabular(grid: Grid) -> list[str]:
    headers = grid.latex_headers or [latex_escape(header) for header in grid.headers]
    lines = [rf"\begin{{tabular}}{{{''.join(grid.align)}}}", r"\toprule",
             latex_line(header_cell(header, align) for header, align in zip(headers, grid.align)), r"\midrule"]
    for index, row in enumerate(grid.rows):
        lines.append(latex_line(latex_cell(cell) for cell in row))
        if index + 1 == grid.pinned:
            lines.append(r"\midrule")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def header_cell(header: str, align: str) -> str:
    """A header (LaTeX) on two or more lines where it is long, a line per ` · ` part at least (a nested
    tabular: no package needed)."""
    parts = [line for part in header.split(r" $\cdot$ ")
             for line in textwrap.wrap(part, HEADER_WIDTH, break_long_words=False, break_on_hyphens=False)] or [header]
    if len(parts) == 1:
        return header
    return rf"\begin{{tabular}}[b]{{@{{}}{align}@{{}}}}" + r" \\ ".join(parts) + r"\end{tabular}"


def latex_cell(cell: Cell) -> str:
    # a paper bolds the winning number, not the row's name or seed count
    text = latex_escape(cell.text)
    return rf"\textbf{{\boldmath {text}}}" if cell.bold and cell.ranked and text else text


def latex_line(cells: Iterable[str]) -> str:
    return " & ".join(cells) + r" \\"


def latex_document(grids: list[Grid], failed: Grid | None, empty: str,
                   options: LatexOptions = LatexOptions()) -> str:
    """The packages comment, a float per grid (or the `empty` message as a comment), then the failed runs
    as comments: a paper's table holds results, but whoever reads the file still sees what failed."""
    check_latex_options(options)
    blocks = [PACKAGES_COMMENT]
    several = len(grids) > 1
    for number, grid in enumerate(grids, start=1):
        caption = None if options.caption is None else (
            f"{options.caption} {latex_escape(grid.title)}" if several else options.caption)
        label = None if options.label is None else (f"{options.label}-{number}" if several else options.label)
        blocks.append(latex_grid(grid, options, caption=caption, label=label))
    if not grids:
        blocks.append("% " + empty)
    if failed is not None:
        blocks.append(failed_comment(failed))
    return "\n\n".join(blocks) + "\n"


def failed_comment(failed: Grid) -> str:
    lines = [f"% {failed.title} (not typeset): {' | '.join(failed.headers)}"]
    return "\n".join(lines + ["% " + " | ".join(cell.text for cell in row) for row in failed.rows])
