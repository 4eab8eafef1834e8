"""Plots from run records (matplotlib, Agg backend; PNG and SVG, or the --format chosen: png, svg, pdf).

    cmkd-bench plot bars RUNS...                 per dataset: a bar per method (mean ± std over
                                                 seeds), the no-KD line, the teacher line
    cmkd-bench plot heatmap RUNS... --x K --y K  a method's test metric over a grid of two
                                                 settings (the paper's Figure 5: w_low x w_high)
    cmkd-bench plot sweep RUNS... --x K          per dataset, one panel per direction: each method's
                                                 gain over no-kd (paired by seed) against setting K
    cmkd-bench plot cd RUNS...                   the critical-difference diagram (Demšar 2006): average
                                                 ranks over the common columns, the Nemenyi CD, bars
                                                 joining methods not significantly different

Bars come from the leaderboard's tables, so they hold exactly the numbers the tables hold, of one protocol
(the newest the records hold, as the tables); the CD diagram ranks the headline's rows (protocol v2) or the
tuned overview's (protocol v1). Every
figure takes its colours from PALETTE; `highlight` (--highlight) gives the named methods accent
colours and mutes the rest. The same records give the same bytes in every format.
"""

from __future__ import annotations

import json
import os
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..artefacts.files import file_stem, temporary
from ..artefacts.records import (direction_label, has_setting, hparams_changed, is_number, metric,
                                 record_metric_name, record_setting, settings_of)
from ..errors import UserError
from .leaderboard import (BETTER_MARK, NO_KD, SIGNIFICANCE_NOTE, WORSE_MARK, build_headline, significance_mark,
                          split_protocols, summarize)
from .leaderboard.grid import column_labels, rank_summary, wide_tables
from .leaderboard.protocol import protocol_title
from .statistics import RankResult

if TYPE_CHECKING:  # matplotlib itself is imported by `pyplot()`, after choosing the Agg backend
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("png", "svg", "pdf")  # what can be written; pdf is what papers embed
DEFAULT_FORMATS = ("png", "svg")
TITLE_WIDTH = 70  # characters per line of a panel title: a long protocol wraps instead of widening the figure
NOTE_CHARS_PER_INCH = 17  # of 7-point note text: notes wrap at the figure's width, not at a fixed count
BAR_INCHES = 0.3  # of figure width per bar


@dataclass(frozen=True)
class Palette:
    """Every figure's colours: Okabe and Ito's colour-blind-safe set, which also survives greyscale print."""

    bar: str = "#0072B2"  # a method's bar when none is highlighted
    muted: str = "#CDD1D6"  # the other methods' bars and lines when some are highlighted
    no_kd: str = "#8C8C8C"  # the no-kd bar: the reference, not a contender
    reference: str = "#000000"  # the no-kd line (dashed; 0 in sweeps)
    teacher: str = "#009E73"  # the teacher line (dotted)
    accents: tuple[str, ...] = ("#D55E00", "#0072B2", "#CC79A7", "#E69F00", "#56B4E9")  # --highlight, in order
    series: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
                               "#F0E442")  # a line per method
    markers: tuple[str, ...] = ("o", "s", "^", "D")  # with `series`: 32 lines before a style repeats
    grid: str = "#E6E6E6"
    colormap: str = "viridis"  # heat-maps: perceptually uniform, readable in greyscale


PALETTE = Palette()


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend: files only, never a window (and no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats to write, refused (one line) before any figure is drawn where one is unknown."""
    unknown = [fmt for fmt in formats if fmt not in FIGURE_FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown figure format {(unknown or [''])[0]!r}; choose among {', '.join(FIGURE_FORMATS)}")
    return tuple(dict.fromkeys(formats))


# No dates in the files, SVG element ids hashed from the file's name instead of a random salt: the
# same records give the same bytes (a regenerated figure shows no diff). PDF fonts as TrueType
# (42), not Type 3, which publishers' PDF checkers reject.
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def save_figure(figure: Figure, directory: Path, stem: str, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in check_formats(formats):
            paths.append(_save_atomic(figure, directory / f"{stem}.{fmt}", fmt, stem))
    finally:
        pyplot().close(figure)
    return paths


def _save_atomic(figure: Figure, path: Path, fmt: str, stem: str) -> Path:
    # written beside its name and renamed over it: a failed write leaves no half-written figure
    partial = temporary(path)
    try:
        with pyplot().rc_context({"svg.hashsalt": stem, "pdf.fonttype": 42}):
            figure.savefig(partial, format=fmt, bbox_inches="tight", dpi=150, metadata=_METADATA[fmt])
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise UserError(f"cannot write {str(path)!r}: {error.strerror or error}; pass another --output-dir") from None
    return path


def wrapped_notes(notes: Sequence[str], figure: Figure) -> str:
    width = max(40, int(figure.get_figwidth() * NOTE_CHARS_PER_INCH))
    return "\n".join(textwrap.fill(note, width) for note in notes)


def highlight_colours(highlight: Sequence[str], names: Iterable[tuple[str, str]]) -> dict[str, str]:
    """--highlight NAME (a method, or a row label such as "kd (tuned)") -> its accent colour, in the order
    given; a NAME that matches nothing drawn is refused before any figure is drawn."""
    names = list(names)
    known = {name for pair in names for name in pair}
    for name in highlight:
        if name not in known:
            methods = ", ".join(sorted({method for method, _ in names}))
            raise UserError(f"--highlight {name!r}: no method or row of that name in these records; "
                            f"choose among {methods}")
    return {name: PALETTE.accents[index % len(PALETTE.accents)]
            for index, name in enumerate(dict.fromkeys(highlight))}


def title_and_legend(figure: Figure, title: str, handles: list[Any], labels: list[str]) -> None:
    """The legend in one row above the panels, so that it covers no data, under the figure's title (as
    the legend's own title: a suptitle and an outside legend overlap under constrained layout)."""
    if not handles:
        figure.suptitle(title, fontsize=10)
        return
    figure.legend(handles, labels, loc="outside upper center", ncol=len(handles), fontsize=7, frameon=False,
                  title=title, title_fontsize=10)


def _tidy(axis: Axes) -> None:
    """Light horizontal grid behind the data, no top and right frame: values read off a zoomed axis."""
    axis.yaxis.grid(True, color=PALETTE.grid, linewidth=0.6)
    axis.set_axisbelow(True)
    axis.spines[["top", "right"]].set_visible(False)


# ---------------------------------------------------------------------------------------------
# Bars


@dataclass
class Bar:
    label: str
    mean: float
    std: float
    n: int
    mark: str  # significance against no-KD (leaderboard.significance_mark)
    is_no_kd: bool
    method: str = ""


@dataclass
class BarPanel:
    dataset: str
    title: str
    metric: str
    bars: list[Bar]
    no_kd: float | None
    teacher: float | None


def bar_panels(records: Sequence[dict[str, Any]]) -> list[BarPanel]:
    """One panel per leaderboard table: its method rows as bars, no-KD and teacher as lines."""
    panels = []
    for table in summarize(split_protocols(records).records):
        # a configuration two rows share (protocol v2: `same_as`) is one bar
        methods = [row for row in table.rows if row.kind == "method" and row.mean is not None and row.same_as is None]
        teacher = next((row.mean for row in table.rows if row.kind == "teacher"), None)
        no_kd = next((row.mean for row in sorted(methods, key=lambda row: row.selection != "tuned")
                      if row.method == NO_KD and not row.hparams), None)
        bars = [Bar(row.label, row.mean, row.std or 0.0, row.n, significance_mark(row), row.method == NO_KD, row.method)
                for row in methods]
        panels.append(BarPanel(table.dataset, table.title.split(" · ", 1)[1], table.metric, bars, no_kd, teacher))
    return panels


def plot_bars(records: Sequence[dict[str, Any]], directory: Path, *, highlight: Sequence[str] = (),
              formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    formats = check_formats(formats)
    panels = bar_panels(records)
    if not panels:
        raise UserError("no completed runs to plot; run some first (or check the filters)")
    colours = highlight_colours(highlight, ((bar.method, bar.label) for panel in panels for bar in panel.bars))
    written = []
    for dataset in sorted({panel.dataset for panel in panels}):
        written += _bars_figure(dataset, [p for p in panels if p.dataset == dataset], directory, colours, formats)
    return written


def _bars_figure(dataset: str, panels: list[BarPanel], directory: Path, colours: dict[str, str],
                 formats: Sequence[str]) -> list[Path]:
    return save_figure(bars_figure(dataset, panels, colours), directory, f"bars-{file_stem(dataset)}", formats)


def bars_figure(dataset: str, panels: list[BarPanel], colours: dict[str, str] | None = None) -> Figure:
    """One dataset's panels in one figure: title and legend above, the marks' note below."""
    plt = pyplot()
    colours = colours or {}
    widest = max(len(panel.bars) for panel in panels)
    # constrained layout sizes the margins to the labels, title, legend and note: no empty strips
    size = (max(5.0, BAR_INCHES * widest + 1.2), 3.0 * len(panels) + 0.8)
    figure, axes = plt.subplots(len(panels), 1, figsize=size, squeeze=False, layout="constrained")
    for axis, panel in zip(axes[:, 0], panels):
        _draw_bars(axis, panel, colours)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    title_and_legend(figure, f"{dataset}: test metric per method (mean ± std over seeds)", handles,
                     labels + list(colours))
    notes = bars_notes(panels)
    if notes:
        figure.supxlabel(wrapped_notes(notes, figure), x=0.0, ha="left", fontsize=7)
    return figure


def bars_notes(panels: Sequence[BarPanel]) -> list[str]:
    """What the figure's marks mean, when it has any (the same test as the tables')."""
    marks = {bar.mark for panel in panels for bar in panel.bars if bar.mark}
    return [SIGNIFICANCE_NOTE] if marks & {BETTER_MARK, WORSE_MARK} else []


def panel_title(panel: BarPanel) -> str:
    return textwrap.fill(panel.title, TITLE_WIDTH)


def bar_colour(bar: Bar, colours: dict[str, str]) -> str:
    """The bar's accent where it is highlighted (its row, else its method); the no-kd grey; the others
    muted where some are highlighted."""
    chosen = colours.get(bar.label) or colours.get(bar.method)
    if chosen:
        return chosen
    if bar.is_no_kd:
        return PALETTE.no_kd
    return PALETTE.muted if colours else PALETTE.bar


def value_limits(panel: BarPanel) -> tuple[float, float]:
    """The value axis zoomed to the error bars and reference lines: from zero, 1-3 point differences
    between methods vanish. Never below zero; room above for the marks."""
    lines = [value for value in (panel.no_kd, panel.teacher) if value is not None]
    low = min([bar.mean - bar.std for bar in panel.bars] + lines)
    high = max([bar.mean + bar.std for bar in panel.bars] + lines)
    margin = max(0.5, 0.06 * (high - low))
    return max(0.0, low - margin), high + 2 * margin


def _draw_bars(axis: Axes, panel: BarPanel, colours: dict[str, str] | None = None) -> None:
    colours = colours or {}
    positions = range(len(panel.bars))
    floor, ceiling = value_limits(panel)
    # drawn up from the axis floor, which the zoomed axis shows instead of zero
    axis.bar(positions, [b.mean - floor for b in panel.bars], bottom=floor, yerr=[b.std for b in panel.bars],
             color=[bar_colour(bar, colours) for bar in panel.bars], width=0.75, capsize=2,
             error_kw={"elinewidth": 0.8, "capthick": 0.8})
    if panel.no_kd is not None:
        axis.axhline(panel.no_kd, color=PALETTE.reference, linestyle="--", linewidth=0.9, label="no-KD")
    if panel.teacher is not None:
        axis.axhline(panel.teacher, color=PALETTE.teacher, linestyle=":", linewidth=1.2, label="teacher (own modality)")
    for position, bar in zip(positions, panel.bars):
        if bar.mark:
            axis.annotate(bar.mark, (position, bar.mean + bar.std), ha="center", va="bottom", fontsize=7)
    axis.set_xticks(list(positions), [b.label for b in panel.bars], rotation=45, ha="right",
                    rotation_mode="anchor", fontsize=7)
    axis.set_xlim(-0.6, len(panel.bars) - 0.4)  # no empty strip beside the first and last bar
    axis.set_ylim(floor, ceiling)
    axis.set_ylabel(f"{panel.metric} (%)")
    axis.set_title(panel_title(panel), fontsize=8)
    _tidy(axis)


# ---------------------------------------------------------------------------------------------
# Heat-map over two settings


@dataclass
class Heatmap:
    title: str
    method: str
    x_key: str
    y_key: str
    x_values: list[Any]
    y_values: list[Any]
    means: list[list[float | None]]  # [y][x]
    counts: list[list[int]]
    metric: str


def heatmaps(records: Sequence[dict[str, Any]], x_key: str, y_key: str) -> list[Heatmap]:
    """Per (method, dataset, direction): mean test over seeds for every (x, y) pair of settings."""
    usable = [r for r in records if r.get("status") == "completed" and has_setting(r, x_key) and has_setting(r, y_key)]
    if not usable:
        raise UserError(f"no completed run has both {x_key!r} and {y_key!r}; "
                        f"run a grid first, e.g. cmkd-bench suite --grid {x_key}=... --grid {y_key}=...")
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in usable:
        key = (str(record["method"]), str(record["dataset"]), str(record["teacher_modality"]),
               str(record["student_modality"]))
        groups.setdefault(key, []).append(record)
    # a heat-map needs at least two values on each axis; a group with one (every run has lr, epochs,
    # ...) would be a 1 x 1 or 1 x N figure, so it is left out, and nothing left is an error
    grids = {key: group for key, group in groups.items()
             if all(len({json.dumps(record_setting(r, k), sort_keys=True, default=str) for r in group}) >= 2
                    for k in (x_key, y_key))}
    if not grids:
        raise UserError(f"the runs are no grid over {x_key!r} and {y_key!r} (no method's runs take two or more values "
                        f"of both); run one first, e.g. cmkd-bench suite --grid {x_key}=A,B --grid {y_key}=C,D")
    maps = []
    for (method, dataset, teacher, student), group in sorted(grids.items()):
        _check_only_x_and_y_vary(group, x_key, y_key, method)
        title = f"{method} · {dataset} · {direction_label(teacher, student)}"
        maps.append(_heatmap(group, x_key, y_key, title, method))
    return maps


def _check_only_x_and_y_vary(group: list[dict[str, Any]], x_key: str, y_key: str, method: str) -> None:
    def protocol(record: dict[str, Any]) -> str:
        scopes = {scope: {k: v for k, v in values.items() if k not in (x_key, y_key)}
                  for scope, values in settings_of(record).items()}
        return json.dumps([scopes, record["student_backbone"], record["teacher_backbone"]], sort_keys=True, default=str)

    if len({protocol(record) for record in group}) > 1:
        raise UserError(f"runs of {method} differ in more than {x_key} and {y_key}; "
                        "narrow them with --where KEY=VALUE so that one grid remains")


def _heatmap(group: list[dict[str, Any]], x_key: str, y_key: str, title: str, method: str) -> Heatmap:
    xs = _sorted_values(record_setting(r, x_key) for r in group)
    ys = _sorted_values(record_setting(r, y_key) for r in group)
    cells: dict[tuple[int, int], list[float]] = {}
    for record in group:
        x, y = xs.index(record_setting(record, x_key)), ys.index(record_setting(record, y_key))
        cells.setdefault((y, x), []).append(float(metric(record, "test")))
    means = [[statistics.mean(cells[(y, x)]) if (y, x) in cells else None for x in range(len(xs))]
             for y in range(len(ys))]
    counts = [[len(cells.get((y, x), [])) for x in range(len(xs))] for y in range(len(ys))]
    return Heatmap(title, method, x_key, y_key, xs, ys, means, counts, record_metric_name(group[0]))


def _sorted_values(values: Iterable[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def plot_heatmaps(records: Sequence[dict[str, Any]], x_key: str, y_key: str, directory: Path, *,
                  formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    formats = check_formats(formats)
    written = []
    for heatmap in heatmaps(records, x_key, y_key):
        written += _heatmap_figure(heatmap, directory, formats)
    return written


def _heatmap_figure(heatmap: Heatmap, directory: Path, formats: Sequence[str]) -> list[Path]:
    plt = pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in heatmap.means], dtype=float)
    figure, axis = plt.subplots(figsize=(1.1 * len(heatmap.x_values) + 2.5, 0.8 * len(heatmap.y_values) + 2),
                                layout="constrained")
    image = axis.imshow(values, origin="lower", cmap=PALETTE.colormap, aspect="auto")
    for y, row in enumerate(heatmap.means):
        for x, value in enumerate(row):
            text = "—" if value is None else f"{value:.1f}\n(n={heatmap.counts[y][x]})"
            axis.text(x, y, text, ha="center", va="center", fontsize=7, color=_text_colour(image, value))
    axis.set_xticks(range(len(heatmap.x_values)), [str(v) for v in heatmap.x_values])
    axis.set_yticks(range(len(heatmap.y_values)), [str(v) for v in heatmap.y_values])
    axis.set_xlabel(heatmap.x_key)
    axis.set_ylabel(heatmap.y_key)
    axis.set_title(f"{heatmap.title}\ntest {heatmap.metric} (%), mean over seeds", fontsize=9)
    figure.colorbar(image, ax=axis, label=f"{heatmap.metric} (%)")
    stem = f"heatmap-{file_stem(heatmap.title.replace(' · ', '-'))}-{file_stem(heatmap.x_key)}-{file_stem(heatmap.y_key)}"
    return save_figure(figure, directory, stem, formats)


def _text_colour(image: Any, value: float | None) -> str:
    """Black on the colour map's light end, white on its dark end: every cell's number stays readable."""
    if value is None:
        return "black"
    red, green, blue, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


# ---------------------------------------------------------------------------------------------
# Sweep: each method's gain over no-kd against one setting


@dataclass
class SweepPoint:
    x: Any
    mean: float  # gain over no-kd in metric points, mean over the seeds both have
    std: float  # sample std over those seeds (0 with one seed)
    n: int


@dataclass
class SweepPanel:
    dataset: str
    direction: str
    x_key: str
    metric: str
    series: dict[str, list[SweepPoint]]  # method label -> points, in x order
    no_kd: list[SweepPoint]  # no-kd's own test metric (not a gain), for reference


def sweep_panels(records: Sequence[dict[str, Any]], x_key: str) -> list[SweepPanel]:
    """Per (dataset, direction): for every method and value of x_key, test(method) - test(no-kd)
    paired by seed (same x, same seed: the same teacher and data), mean and std over seeds."""
    usable = [r for r in records if r.get("status") == "completed" and metric(r, "test") is not None
              and has_setting(r, x_key)]
    if not usable:
        raise UserError(f"no completed run has the setting {x_key!r}; run a sweep first, "
                        f"e.g. cmkd-bench suite --grid {x_key}=A,B,C")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in usable:
        groups.setdefault((str(record["dataset"]), str(record["teacher_modality"]), str(record["student_modality"])),
                          []).append(record)
    panels = []
    for (dataset, teacher, student), group in sorted(groups.items()):
        _check_only_x_and_method_vary(group, x_key, dataset)
        xs = _sorted_values(record_setting(r, x_key) for r in group)
        if len(xs) < 2:
            continue  # one value is no sweep
        tests: dict[str, dict[tuple[int, int], float]] = {}
        for record in group:
            cell = (xs.index(record_setting(record, x_key)), int(record["seed"]))
            label = _method_label(record)
            if cell in tests.setdefault(label, {}):
                raise UserError(f"{dataset} {direction_label(teacher, student)}: two runs of {label} at "
                                f"{x_key}={xs[cell[0]]} seed {cell[1]}; narrow them with --where KEY=VALUE")
            tests[label][cell] = float(metric(record, "test"))
        if NO_KD not in tests:
            raise UserError(f"{dataset} {direction_label(teacher, student)}: no no-kd runs to measure gains against; "
                            f"include no-kd in the sweep")
        base = tests.pop(NO_KD)
        series = {label: _gains(cells, base, xs) for label, cells in tests.items()}
        panels.append(SweepPanel(dataset, direction_label(teacher, student), x_key, record_metric_name(group[0]),
                                 {k: v for k, v in series.items() if v}, _gains(base, {}, xs)))
    if not panels:
        raise UserError(f"the runs take one value of {x_key!r} only; a sweep needs two or more")
    return panels


def _method_label(record: dict[str, Any]) -> str:
    changed = hparams_changed(record)
    return str(record["method"]) + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")"
                                    if changed else "")


def _gains(cells: dict[tuple[int, int], float], base: dict[tuple[int, int], float], xs: list[Any]) -> list[SweepPoint]:
    """Points of cells - base (paired by (x, seed)); with an empty base, the cells' own values."""
    points = []
    for index, x in enumerate(xs):
        values = [value - base[cell] if base else value for cell, value in sorted(cells.items())
                  if cell[0] == index and (not base or cell in base)]
        if values:
            points.append(SweepPoint(x, statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                                     len(values)))
    return points


def _check_only_x_and_method_vary(group: list[dict[str, Any]], x_key: str, dataset: str) -> None:
    def protocol(record: dict[str, Any]) -> str:
        settings = settings_of(record)
        kept = {scope: {k: v for k, v in settings[scope].items() if k != x_key} for scope in ("data_options", "recipe")}
        return json.dumps([kept, record["student_backbone"], record["teacher_backbone"]], sort_keys=True, default=str)

    if len({protocol(record) for record in group}) > 1:
        raise UserError(f"{dataset}: the runs differ in more than {x_key} (data options, recipe or backbones); "
                        "narrow them with --where KEY=VALUE so that one sweep remains")


def plot_sweep(records: Sequence[dict[str, Any]], x_key: str, directory: Path, *, highlight: Sequence[str] = (),
               formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    formats = check_formats(formats)
    panels = sweep_panels(records, x_key)
    labels = {label for panel in panels for label in panel.series}
    colours = highlight_colours(highlight, ((_series_method(label), label) for label in labels))
    written = []
    for dataset in sorted({panel.dataset for panel in panels}):
        written += _sweep_figure([p for p in panels if p.dataset == dataset], directory, colours, formats)
    return written


def _series_method(label: str) -> str:
    return label.split(" (", 1)[0]  # "kd (alpha=0.5)" is kd's


def series_style(index: int, label: str, colours: dict[str, str]) -> dict[str, Any]:
    """A method's line: its accent where highlighted (drawn on top), muted where others are, else the
    palette's colour and marker by its place among the figure's methods."""
    chosen = colours.get(label) or colours.get(_series_method(label))
    if chosen:
        return {"color": chosen, "marker": "o", "linewidth": 1.6, "zorder": 3}
    if colours:
        return {"color": PALETTE.muted, "marker": "o", "linewidth": 0.8, "zorder": 1}
    count = len(PALETTE.series)
    return {"color": PALETTE.series[index % count], "marker": PALETTE.markers[index // count % len(PALETTE.markers)],
            "linewidth": 1.0, "zorder": 2}


def _sweep_figure(panels: list[SweepPanel], directory: Path, colours: dict[str, str],
                  formats: Sequence[str]) -> list[Path]:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 3.6), squeeze=False, sharey=True,
                                layout="constrained")
    labels = sorted({label for panel in panels for label in panel.series})
    for axis, panel in zip(axes[0], panels):
        xs = [p.x for p in panel.no_kd if is_number(p.x)]
        spread = 0.012 * (max(xs) - min(xs)) if len(xs) > 1 else 0.0  # methods side by side at each x
        for index, label in enumerate(labels):
            points = panel.series.get(label, [])
            offset = (index - (len(labels) - 1) / 2) * spread
            if points:
                axis.errorbar([p.x + offset if is_number(p.x) else p.x for p in points], [p.mean for p in points],
                              yerr=[p.std for p in points], markersize=3, capsize=2, label=label,
                              **series_style(index, label, colours))
        axis.axhline(0.0, color=PALETTE.reference, linewidth=0.9, linestyle="--")
        axis.set_xlabel(panel.x_key)
        axis.set_title(f"{panel.dataset} · {panel.direction}\nno-kd: "
                       + ", ".join(f"{p.mean:.1f}" for p in panel.no_kd), fontsize=8)
        _tidy(axis)
    axes[0][0].set_ylabel(f"test {panels[0].metric} gain over no-kd (points)")
    handles = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=7, frameon=False)
    figure.suptitle(f"{panels[0].dataset}: gain over no-kd against {panels[0].x_key} (mean ± std over seeds)",
                    fontsize=9)
    return save_figure(figure, directory, f"sweep-{file_stem(panels[0].dataset)}-{file_stem(panels[0].x_key)}",
                       formats)


# ---------------------------------------------------------------------------------------------
# Critical-difference diagram (Demšar 2006)

CD_ALPHA = 0.05


def nemenyi_q(k: int, alpha: float = CD_ALPHA) -> float:
    """q_alpha of the Nemenyi test for k methods: the studentized range's 1 - alpha quantile at infinite
    degrees of freedom over sqrt(2) (Demšar 2006, Table 5(a): 1.960, 2.343, 2.569, ... for k = 2, 3, 4)."""
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(1 - alpha, k, np.inf)) / float(np.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = CD_ALPHA) -> float:
    """CD = q_alpha sqrt(k (k + 1) / (6 N)): two average ranks over N columns differ significantly where
    they differ by at least this."""
    return nemenyi_q(k, alpha) * float(np.sqrt(k * (k + 1) / (6 * n)))


def cd_cliques(ranks: dict[str, float], cd: float) -> list[tuple[str, ...]]:
    """The groups of methods whose average ranks lie closer than `cd` (not significantly different), each
    as long as it can be and none inside another, in rank order: the diagram's bars."""
    names = sorted(ranks, key=lambda name: (ranks[name], name))
    cliques: list[tuple[str, ...]] = []
    last_end = -1
    for start in range(len(names)):
        end = start
        while end + 1 < len(names) and ranks[names[end + 1]] - ranks[names[start]] < cd:
            end += 1
        if end > start and end > last_end:
            cliques.append(tuple(names[start:end + 1]))
            last_end = end
    return cliques


@dataclass
class CdData:
    protocol: int
    ranking: RankResult  # ranks over the common columns, and Friedman's test
    columns: list[str]  # the common columns' labels
    cd: float
    caption: str


def cd_data(records: Sequence[dict[str, Any]], alpha: float = CD_ALPHA) -> CdData:
    """The ranks to draw: the headline's rows (protocol v2: each method's tuned configuration and the tuned
    no-kd), else the tuned overview's rows (each tuned method's selection, the others' defaults)."""
    split = split_protocols(records)
    headline = build_headline(split.records) if split.version >= 2 else None
    if headline is not None:
        scores = {row.label: {index: cell.row.mean for index, cell in enumerate(row.cells)
                              if cell is not None and cell.row.mean is not None} for row in headline.rows}
        ranking = _ranks(scores)
        labels = headline.columns
    else:
        tables = wide_tables(summarize(split.records, "tuned"))
        ranking, labels = rank_summary(tables), column_labels(tables)
    if len(ranking.ranks) < 2 or len(ranking.columns) < 2:
        raise UserError("a critical-difference diagram needs 2 or more methods that share 2 or more columns "
                        "(datasets and directions); these records have fewer (check the filters)")
    k, n = len(ranking.ranks), len(ranking.columns)
    cd = critical_difference(k, n, alpha)
    common = [labels[index] for index in ranking.columns]
    friedman = ("Friedman's test needs 3 or more methods: none." if ranking.friedman_p is None else
                f"Friedman's test over them: chi-square = {ranking.friedman_statistic:.2f}, "
                f"p = {ranking.friedman_p:.3g}.")
    caption = (f"Average ranks (1 = best) of {k} methods over the {n} columns all of them have ({', '.join(common)}); "
               f"CD = {cd:.2f} (Nemenyi, alpha = {alpha}, q = {nemenyi_q(k, alpha):.3f}); a bar joins methods whose "
               f"ranks differ by less than CD (not significantly different). {friedman} "
               f"Records of {protocol_title(split.version)}.")
    return CdData(split.version, ranking, common, cd, caption)


def _ranks(scores: dict[str, dict[int, float]]) -> RankResult:
    from .statistics import ranks_over_common_columns

    return ranks_over_common_columns({label: columns for label, columns in scores.items() if columns})


def plot_cd(records: Sequence[dict[str, Any]], directory: Path, *, formats: Sequence[str] = DEFAULT_FORMATS,
            alpha: float = CD_ALPHA) -> list[Path]:
    formats = check_formats(formats)
    data = cd_data(records, alpha)
    return save_figure(cd_figure(data), directory, "cd", formats)


def cd_figure(data: CdData) -> Figure:
    """Demšar's diagram: the rank axis (1 at the left), the CD above it, each method's name at its rank (the
    better half to the left, the others to the right) and thick bars joining the cliques under the axis."""
    plt = pyplot()
    ranks = data.ranking.ranks
    names = sorted(ranks, key=lambda name: (ranks[name], name))
    k = len(names)
    cliques = cd_cliques(ranks, data.cd)
    half = (k + 1) // 2
    step, bar_step = 0.32, 0.14
    top_of_labels = -0.25 - bar_step * len(cliques)
    height = 1.6 + 0.28 * (max(half, k - half) + len(cliques))
    figure, axis = plt.subplots(figsize=(7.0, height), layout="constrained")
    low, high = 1, max(k, int(np.ceil(max(ranks.values()))))
    axis.plot([low, high], [0, 0], color=PALETTE.reference, linewidth=1.0)
    for tick in range(low, high + 1):
        axis.plot([tick, tick], [0, 0.08], color=PALETTE.reference, linewidth=1.0)
        axis.text(tick, 0.13, str(tick), ha="center", va="bottom", fontsize=8)
    axis.plot([low, low + data.cd], [0.55, 0.55], color=PALETTE.reference, linewidth=1.6)
    for end in (low, low + data.cd):
        axis.plot([end, end], [0.5, 0.6], color=PALETTE.reference, linewidth=1.0)
    axis.text(low + data.cd / 2, 0.63, f"CD = {data.cd:.2f}", ha="center", va="bottom", fontsize=8)
    for index, name in enumerate(names):
        left = index < half
        row = index if left else k - 1 - index
        y = top_of_labels - step * row
        x_text = low - 0.35 if left else high + 0.35
        colour = PALETTE.no_kd if name.startswith(NO_KD) else PALETTE.bar
        axis.plot([ranks[name], ranks[name], x_text], [0, y, y], color=colour, linewidth=0.8)
        axis.text(x_text + (-0.05 if left else 0.05), y, f"{name} ({ranks[name]:.2f})", ha="right" if left else "left",
                  va="center", fontsize=8)
    for index, clique in enumerate(cliques):
        y = -0.15 - bar_step * index
        axis.plot([ranks[clique[0]] - 0.04, ranks[clique[-1]] + 0.04], [y, y], color=PALETTE.reference,
                  linewidth=3.0, solid_capstyle="round")
    axis.set_xlim(low - 0.4, high + 0.4)
    axis.set_ylim(top_of_labels - step * max(half, k - half), 0.9)
    axis.axis("off")
    figure.suptitle(f"Critical-difference diagram: average ranks, 1 = best · {protocol_title(data.protocol)}",
                    fontsize=10)
    figure.supxlabel(wrapped_notes([data.caption], figure), x=0.0, ha="left", fontsize=7)
    return figure
