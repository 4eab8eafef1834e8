"""The leaderboard as text (`render`) or on the terminal and in files (`print_leaderboard`).

Tables never mix protocols: of records made under protocol v2 and older ones, only the v2 records are
tabulated, and a line says how many were left out (`protocol.split_protocols`); every results table's title
names its protocol. Under protocol v2 the headline (`headline`) comes first, in every format but CSV
(whose rows carry the same statistics), then the tables of the layout and the failed runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.text import Text

from ...artefacts import records as rec
from ...artefacts.files import temporary
from ...errors import UserError
from .grid import Grid, failed_grid, grids, published_grid
from .headline import build_headline, headline_grid
from .protocol import protocol_title, split_protocols
from .published import PUBLISHED_METRICS, PublishedValue, published_index
from .render_csv import long_csv, wide_csv
from .render_html import html_document, html_grid
from .render_latex import LatexOptions, latex_document, latex_grid
from .render_md import md_document, md_grid
from .render_rich import print_rich, rich_document, rich_renderables
from .summary import failed_runs, summarize

FORMATS = ("rich", "md", "csv", "latex", "html")
LAYOUTS = ("long", "wide")
_DOCUMENTS = {"md": md_document, "html": html_document}


def render(records: Sequence[dict[str, Any]], fmt: str, *, paths: Sequence[str | Path] | None = None,
           width: int = 120, layout: str = "long", published: Sequence[PublishedValue] | None = None,
           view: str = "all", notes: bool = True, caption: str | None = None, label: str | None = None) -> str:
    """The leaderboard as text in `fmt` (one of FORMATS); rich output is plain, without colour codes.

    `layout` is "long" or "wide"; `published` (from `load_published`) adds the published columns;
    `view` chooses the rows (see `summarize`); `notes=False` leaves out the notes under the tables;
    `caption` and `label` (LaTeX only) see `LatexOptions`.
    """
    _check_format(fmt)
    _check_layout(layout)
    _check_latex_only(fmt, caption, label)
    if fmt == "csv":
        tables, index = summarize(split_protocols(records).records, view), published_index(published)
        return wide_csv(tables, index) if layout == "wide" else long_csv(tables, index)
    laid_out, failed_block, empty = _grids(records, fmt, layout, published, view, paths, notes)
    if fmt == "rich":
        return rich_document(laid_out, failed_block, empty, width)
    if fmt == "latex":
        return latex_document(laid_out, failed_block, empty, LatexOptions(caption, label, span=layout == "wide"))
    return _DOCUMENTS[fmt](laid_out, failed_block, empty)


def print_leaderboard(records: Sequence[dict[str, Any]], fmt: str, output_path: str | Path | None = None,
                      *, paths: Sequence[str | Path] | None = None, console: Console | None = None,
                      layout: str = "long", published: Sequence[PublishedValue] | None = None,
                      view: str = "all", notes: bool = True, caption: str | None = None,
                      label: str | None = None) -> None:
    """Print the leaderboard (rich: styled, to the terminal) or write it to `output_path`."""
    _check_format(fmt)
    _check_layout(layout)
    console = console or Console()
    options = {"paths": paths, "layout": layout, "published": published, "view": view, "notes": notes,
               "caption": caption, "label": label}
    if output_path is not None:
        _write(Path(output_path), render(records, fmt, **options))
        console.print(Text(f"wrote {fmt} leaderboard to {output_path}"))
    elif fmt == "rich":
        _check_latex_only(fmt, caption, label)
        print_rich(console, rich_renderables(*_grids(records, fmt, layout, published, view, paths, notes)))
    else:
        console.file.write(render(records, fmt, **options))
    if fmt == "csv":
        _print_csv_notes(records, paths)
    elif fmt == "latex" and (failed := failed_runs(split_protocols(records).records)):
        print(f"{len(failed)} failed run(s) are not typeset; the LaTeX lists them in comments at its end",
              file=sys.stderr)


def _grids(records: Sequence[dict[str, Any]], fmt: str, layout: str, published: Sequence[PublishedValue] | None,
           view: str, paths: Sequence[str | Path] | None = None,
           notes: bool = True) -> tuple[list[Grid], Grid | None, str]:
    """The grids to show (under protocol v2 the headline first), the failed runs' grid (None without any)
    and the message for no tables."""
    split = split_protocols(records)
    failed = failed_runs(split.records)
    plain = _plain(fmt, layout, published, split.records)
    laid_out = grids(summarize(split.records, view), layout, published_index(published), plain=plain)
    if split.version >= 2 or any(rec.tuning_entries(record) for record in split.records):
        for grid in laid_out:  # tuned tables say which protocol tuned them; plain runs (make demo) need no label
            grid.title = f"{grid.title} · {protocol_title(split.version)}"
    headline = build_headline(split.records) if split.version >= 2 else None
    if headline is not None:
        laid_out.insert(0, headline_grid(headline))
    if (note := split.note()) and laid_out:  # under the first table: the headline, where there is one
        first = laid_out[0]
        first.notes, first.paper_notes = [*first.notes, note], [*(first.paper_notes or first.notes), note]
    if not notes:
        for grid in laid_out:
            grid.notes, grid.paper_notes = [], None
    return laid_out, failed_grid(failed) if failed else None, no_completed_message(paths)


def _plain(fmt: str, layout: str, published: Sequence[PublishedValue] | None,
           records: Sequence[dict[str, Any]]) -> bool:
    # The long layout without published numbers or tuned rows prints plain grids in md, latex and
    # rich, as it always has (and its golden outputs hold); html, published columns and tuned rows
    # (whose selected settings are in the notes) come with marks and notes.
    tuned = any(rec.tuning_entries(record) for record in records)
    return layout == "long" and fmt != "html" and published is None and not tuned


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown leaderboard format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _check_latex_only(fmt: str, caption: str | None, label: str | None) -> None:
    if fmt != "latex" and (caption is not None or label is not None):
        raise UserError(f"--caption and --label are for --format latex, not {fmt}; "
                        "add --format latex or leave them out")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise UserError(f"unknown leaderboard layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _write(path: Path, text: str) -> None:
    # beside the file, then renamed over it: a failed write leaves no half-written table
    partial = temporary(path)
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        reason = error.strerror or rec.one_line(error)  # (strerror: without the temporary file's name)
        raise UserError(f"{path}: cannot write the leaderboard ({reason}); check the path") from None


def _print_csv_notes(records: Sequence[dict[str, Any]], paths: Sequence[str | Path] | None) -> None:
    # The CSV is one flat table for machines; what it cannot hold is said on stderr instead.
    split = split_protocols(records)
    if note := split.note():
        print(note, file=sys.stderr)
    records = split.records
    if not any(record.get("status") == "completed" for record in records):
        print(no_completed_message(paths), file=sys.stderr)
    failed = failed_runs(records)
    if failed:
        print(f"{len(failed)} failed run(s) are not in the CSV; the md or rich format lists them",
              file=sys.stderr)


def no_completed_message(paths: Sequence[str | Path] | None) -> str:
    where = f" under {', '.join(map(str, paths))}" if paths else ""
    return f"No completed runs found{where}; nothing to tabulate."


def render_published(published: Sequence[PublishedValue], fmt: str = "md") -> str:
    """Every metric's published grid in `fmt` (md, latex or html blocks)."""
    renderer = {"md": md_grid, "latex": latex_grid, "html": html_grid}[fmt]
    grids = [grid for metric in PUBLISHED_METRICS if (grid := published_grid(published, metric)) is not None]
    return "\n\n".join(renderer(grid) for grid in grids)
