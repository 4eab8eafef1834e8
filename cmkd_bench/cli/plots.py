"""`cmkd-bench plot bars|heatmap|sweep|cd`: figures from run records (cmkd_bench.reporting.plots draws them)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ..artefacts.files import check_writable_dir
from ..errors import UserError
from ..reporting.plots import DEFAULT_FORMATS, FIGURE_FORMATS, plot_bars, plot_cd, plot_heatmaps, plot_sweep
from .leaderboard import filtered_records, runs_paths


def _filters(function: Callable[..., None]) -> Callable[..., None]:
    """The RUNS argument, the leaderboard's record filters, --output-dir and --format."""
    for decorator in reversed([
        click.argument("runs_dirs", nargs=-1, type=click.Path()),
        click.option("--dataset", "datasets", multiple=True, help="Only this dataset (repeatable)."),
        click.option("--method", "methods", multiple=True, help="Only this method (repeatable)."),
        click.option("--where", "wheres", multiple=True, metavar="KEY=VALUE",
                     help="Only records whose field or setting KEY is VALUE (repeatable), as in `leaderboard`."),
        click.option("--output-dir", default="plots", show_default=True, type=click.Path(),
                     help="Where the figure files go."),
        click.option("--format", "formats", multiple=True, type=click.Choice(FIGURE_FORMATS),
                     help=f"A file format to write (repeatable; pdf is what papers embed). Default: "
                          f"{' and '.join(DEFAULT_FORMATS)}."),
    ]):
        function = decorator(function)
    return function


_highlight = click.option("--highlight", multiple=True, metavar="METHOD",
                          help="Draw this method (or row, e.g. 'kd (tuned)') in an accent colour and mute the others "
                               "(repeatable: a colour each).")


@click.group("plot")
def plot_group() -> None:
    """Figures from run records: bar charts per dataset, heat-maps over two settings, sweeps over one, the
    critical-difference diagram of the methods' ranks."""


@plot_group.command("bars")
@_filters
@_highlight
def bars_command(runs_dirs: tuple[str, ...], datasets: tuple[str, ...], methods: tuple[str, ...],
                 wheres: tuple[str, ...], output_dir: str, formats: tuple[str, ...],
                 highlight: tuple[str, ...]) -> None:
    """Per dataset: a bar per method (mean ± std over seeds), the value axis zoomed to the data, with the
    no-KD and teacher lines."""
    check_writable_dir(output_dir, "--output-dir")
    records = filtered_records(runs_paths(runs_dirs), datasets, methods, wheres)
    for path in plot_bars(records, Path(output_dir), highlight=highlight, formats=formats or DEFAULT_FORMATS):
        click.echo(f"wrote {path}")


@plot_group.command("heatmap")
@_filters
@click.option("--x", "x_key", required=True, help="Setting on the x axis (hyper-parameter, data option or recipe).")
@click.option("--y", "y_key", required=True, help="Setting on the y axis.")
def heatmap_command(runs_dirs: tuple[str, ...], datasets: tuple[str, ...], methods: tuple[str, ...],
                    wheres: tuple[str, ...], output_dir: str, formats: tuple[str, ...], x_key: str, y_key: str) -> None:
    """A method's test metric over a grid of two settings, e.g. --x w_low --y w_high for fd."""
    if x_key == y_key:
        raise UserError(f"--x and --y are both {x_key!r}; a heat-map needs two settings")
    check_writable_dir(output_dir, "--output-dir")
    records = filtered_records(runs_paths(runs_dirs), datasets, methods, wheres)
    for path in plot_heatmaps(records, x_key, y_key, Path(output_dir), formats=formats or DEFAULT_FORMATS):
        click.echo(f"wrote {path}")


@plot_group.command("sweep")
@_filters
@_highlight
@click.option("--x", "x_key", required=True, help="The swept setting (data option, hyper-parameter or recipe), "
                                                  "e.g. shared for synth-av.")
def sweep_command(runs_dirs: tuple[str, ...], datasets: tuple[str, ...], methods: tuple[str, ...],
                  wheres: tuple[str, ...], output_dir: str, formats: tuple[str, ...], highlight: tuple[str, ...],
                  x_key: str) -> None:
    """Each method's test gain over no-kd (same setting, same seed; mean ± std over seeds) against --x,
    one panel per direction."""
    records = filtered_records(runs_paths(runs_dirs), datasets, methods, wheres)
    check_writable_dir(output_dir, "--output-dir")
    for path in plot_sweep(records, x_key, Path(output_dir), highlight=highlight, formats=formats or DEFAULT_FORMATS):
        click.echo(f"wrote {path}")


@plot_group.command("cd")
@_filters
def cd_command(runs_dirs: tuple[str, ...], datasets: tuple[str, ...], methods: tuple[str, ...],
               wheres: tuple[str, ...], output_dir: str, formats: tuple[str, ...]) -> None:
    """The critical-difference diagram (Demšar 2006): each method's average rank over the columns (datasets and
    directions) every ranked method has, the Nemenyi critical difference (alpha 0.05), bars joining methods not
    significantly different, and Friedman's p in the caption. The rows ranked: the headline's (protocol v2: each
    method's tuned configuration and the tuned no-kd), else each tuned method's selection and the others' defaults."""
    check_writable_dir(output_dir, "--output-dir")
    records = filtered_records(runs_paths(runs_dirs), datasets, methods, wheres)
    for path in plot_cd(records, Path(output_dir), formats=formats or DEFAULT_FORMATS):
        click.echo(f"wrote {path}")
