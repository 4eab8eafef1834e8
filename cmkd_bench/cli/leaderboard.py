"""`cmkd-bench leaderboard`: tables of completed runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from ..errors import UserError
from ..reporting.leaderboard import DEFAULT_PUBLISHED, filter_records, load_published, load_records, print_leaderboard


def runs_paths(runs_dirs: Sequence[str]) -> list[Path]:
    """The RUNS arguments of `leaderboard` and `plot` as paths; ./runs when none is given."""
    return [Path(p) for p in runs_dirs] or [Path("runs")]


def filtered_records(paths: Sequence[Path], datasets: Sequence[str], methods: Sequence[str],
                     wheres: Sequence[str]) -> list[dict[str, Any]]:
    """The records under `paths` that pass --dataset, --method and --where."""
    return filter_records(load_records(paths), datasets=datasets, methods=methods, where=wheres)


@click.command("leaderboard")
@click.argument("runs_dirs", nargs=-1, type=click.Path())
@click.option("--format", "fmt", default="rich", show_default=True,
              type=click.Choice(["rich", "md", "csv", "latex", "html"]),
              help="html: one self-contained file, sortable by clicking a column header; latex: a captioned float "
                   "per table for a two-column paper (table* for --layout wide; needs booktabs, threeparttable, "
                   "adjustbox).")
@click.option("--layout", default="long", show_default=True, type=click.Choice(["long", "wide"]),
              help="long: a table per dataset and direction; wide: a column per dataset and direction, "
                   "with the average rank (like the papers' Table 1).")
@click.option("--output", type=click.Path(), help="Write the table to this file instead of the terminal.")
@click.option("--dataset", "datasets", multiple=True, help="Only this dataset (repeatable).")
@click.option("--method", "methods", multiple=True, help="Only this method (repeatable); no-kd always stays.")
@click.option("--where", "wheres", multiple=True, metavar="KEY=VALUE",
              help="Only records whose field, hyper-parameter, dataset option or recipe setting KEY is VALUE "
                   "(repeatable; prefix hparams., data. or recipe. to choose).")
@click.option("--with-published", is_flag=True,
              help="Add the numbers published in papers (leaderboard/published.csv) in labelled columns, with the gap.")
@click.option("--published", "published_file", type=click.Path(),
              help="Published numbers from this CSV instead (implies --with-published).")
@click.option("--view", default="all", show_default=True, type=click.Choice(["all", "default", "tuned"]),
              help="Rows of the tables after the headline: all; only the default configurations; or each tuned "
                   "method's selected configuration (`cmkd-bench tune`) in place of its default.")
@click.option("--no-notes", is_flag=True, help="Leave out the notes under the tables (marks, protocol, selections).")
@click.option("--caption", metavar="LATEX",
              help="--format latex: the caption, as written (LaTeX); with several tables each one's title follows it. "
                   "Default: the table's title.")
@click.option("--label", metavar="LABEL",
              help="--format latex: the \\label; with several tables LABEL-1, LABEL-2, ... in order.")
def leaderboard_command(runs_dirs: tuple[str, ...], fmt: str, layout: str, output: str | None,
                        datasets: tuple[str, ...], methods: tuple[str, ...], wheres: tuple[str, ...],
                        with_published: bool, published_file: str | None, view: str, no_notes: bool,
                        caption: str | None, label: str | None) -> None:
    """Tables of completed runs: mean ± std over seeds, Δ vs no-KD, teacher row, failed runs listed.

    Tables never mix protocols: where any record was made under protocol v2, older records are left out (a
    line says how many). Under protocol v2 the headline comes first: each method's tuned configuration against
    the tuned no-kd, a column per dataset and direction, cells with the paired Δ, its 95% CI and Holm's mark,
    each method's IQM Δ and P(> no-kd), and two or three sentences saying what holds."""
    paths = runs_paths(runs_dirs)
    records = filtered_records(paths, datasets, methods, wheres)
    published = None
    if with_published or published_file:
        published = load_published(Path(published_file) if published_file else DEFAULT_PUBLISHED)
        if published_file:
            check_published_methods(published, published_file)
    print_leaderboard(records, fmt, Path(output) if output else None, paths=paths, layout=layout,
                      published=published, view=view, notes=not no_notes, caption=caption, label=label)


def check_published_methods(published: list, path: str) -> None:
    """A published row names a registered method, the teacher, or a method the packaged file lists (papers'
    methods not implemented here, such as cirkdv2); any other name is a typo that would match no row."""
    from ..catalog import METHODS, load_all
    from ..reporting.leaderboard import TEACHER_METHOD

    load_all()
    known = {TEACHER_METHOD} | {value.method for value in load_published(DEFAULT_PUBLISHED)}
    for value in published:
        if value.method not in known and value.method not in METHODS:
            raise UserError(f"{path}: method {value.method!r} is not a method here (see `cmkd-bench list methods`) "
                            "nor one the packaged published values list; fix its name")
