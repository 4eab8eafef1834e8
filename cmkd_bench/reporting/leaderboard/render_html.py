"""HTML: one self-contained page (inline style and script, no links), a sortable table per grid."""

from __future__ import annotations

import html

from .grid import Cell, Grid


def html_grid(grid: Grid) -> str:
    head = "".join(f'<th class="{_html_align(a)}" title="click to sort">{html.escape(h)}</th>'
                   for h, a in zip(grid.headers, grid.align))
    pinned = "".join(_html_row(row, grid.align) for row in grid.rows[:grid.pinned])
    body = "".join(_html_row(row, grid.align) for row in grid.rows[grid.pinned:])
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in grid.notes)
    lead = f"<p>{html.escape(' '.join(grid.lead))}</p>\n" if grid.lead else ""
    return (f"<h2>{html.escape(grid.title)}</h2>\n{lead}<table class=\"sortable\"><thead><tr>{head}</tr></thead>"
            f"<tbody class=\"pinned\">{pinned}</tbody><tbody class=\"rows\">{body}</tbody></table>\n{notes}")


def _html_row(row: list[Cell], aligns: list[str]) -> str:
    cells = []
    for cell, align in zip(row, aligns):
        text = html.escape(cell.text)
        sort = "" if cell.sort is None else html.escape(str(cell.sort), quote=True)
        cells.append(f'<td class="{_html_align(align)}" data-sort="{sort}">'
                     f'{f"<strong>{text}</strong>" if cell.bold and text else text}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def _html_align(align: str) -> str:
    return "num" if align == "r" else "txt"


# Clicking a header sorts the rows below it (numbers as numbers, blanks last); the pinned teacher
# row stays on top. A few lines, inline: the file must open anywhere, offline.
_HTML_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.querySelector("tbody.rows");
      var up = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach(function (other) { delete other.dataset.order; });
      th.dataset.order = up ? "asc" : "desc";
      var key = function (row) { return row.cells[column].dataset.sort; };
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return up ? order : -order;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; }
th { cursor: pointer; background: #f3f3f3; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
tbody.pinned td { background: #fafafa; border-bottom: 2px solid #999; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
h2 { font-size: 1.05em; margin-top: 1.6em; }
"""


def html_document(grids: list[Grid], failed: Grid | None, empty: str) -> str:
    """The page: the grids, or the `empty` message where there are none, then the failed runs."""
    blocks = [html_grid(grid) for grid in grids] or [f"<p>{html.escape(empty)}</p>"]
    if failed is not None:
        blocks.append(html_grid(failed))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>cmkd-bench leaderboard</title>\n"
            f"<style>{_HTML_STYLE}</style>\n</head>\n<body>\n<h1>cmkd-bench leaderboard</h1>\n"
            + "\n".join(blocks) + f"\n<script>{_HTML_SCRIPT}</script>\n</body>\n</html>\n")
