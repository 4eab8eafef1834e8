"""Plots from run records (matplotlib, Agg backend; every figure is written as PNG and SVG).

    cmkd-bench plot bars RUNS...                 per dataset: a bar per method (mean ± std over
                                                 seeds), the no-KD line, the teacher line
    cmkd-bench plot heatmap RUNS... --x K --y K  a method's test metric over a grid of two
                                                 settings (the paper's Figure 5: w_low x w_high)
    cmkd-bench plot sweep RUNS... --x K          per dataset, one panel per direction: each method's
                                                 gain over no-kd (paired by seed) against setting K

Bars come from the leaderboard's tables, so they hold exactly the numbers the tables hold.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..artefacts.files import file_stem
from ..artefacts.records import (direction_label, has_setting, hparams_changed, is_number, metric,
                                 record_metric_name, record_setting, settings_of)
from ..errors import UserError
from .leaderboard import BETTER_MARK, NO_KD, SIGNIFICANCE_NOTE, WORSE_MARK, significance_mark, summarize

if TYPE_CHECKING:  # matplotlib itself is imported by `pyplot()`, after choosing the Agg backend
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("png", "svg")
TITLE_WIDTH = 70  # characters per line of a panel title: a long protocol wraps instead of widening the figure


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend: files only, never a window (and no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Figure, directory: Path, stem: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FIGURE_FORMATS:
        path = directory / f"{stem}.{fmt}"
        # No dates in the files, and SVG element ids hashed from the file's name instead of a random
        # salt: the same records give the same bytes (a regenerated figure shows no diff).
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with pyplot().rc_context({"svg.hashsalt": stem}):
            figure.savefig(path, format=fmt, bbox_inches="tight", dpi=150, metadata=metadata)
        paths.append(path)
    pyplot().close(figure)
    return paths


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
    for table in summarize(records):
        methods = [row for row in table.rows if row.kind == "method" and row.mean is not None]
        teacher = next((row.mean for row in table.rows if row.kind == "teacher"), None)
        no_kd = next((row.mean for row in methods if row.method == NO_KD and not row.hparams), None)
        bars = [Bar(row.label, row.mean, row.std or 0.0, row.n, significance_mark(row), row.method == NO_KD)
                for row in methods]
        panels.append(BarPanel(table.dataset, table.title.split(" · ", 1)[1], table.metric, bars, no_kd, teacher))
    return panels


def plot_bars(records: Sequence[dict[str, Any]], directory: Path) -> list[Path]:
    panels = bar_panels(records)
    if not panels:
        raise UserError("no completed runs to plot; run some first (or check the filters)")
    written = []
    for dataset in sorted({panel.dataset for panel in panels}):
        written += _bars_figure(dataset, [p for p in panels if p.dataset == dataset], directory)
    return written


def _bars_figure(dataset: str, panels: list[BarPanel], directory: Path) -> list[Path]:
    plt = pyplot()
    widest = max(len(panel.bars) for panel in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.55 * widest + 2), 3.6 * len(panels)),
                                squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        _draw_bars(axis, panel)
    figure.suptitle(f"{dataset}: test metric per method (mean ± std over seeds)")
    notes = bars_notes(panels)
    if notes:
        figure.text(0.01, 0.005, "\n".join(textwrap.fill(note, 110) for note in notes), fontsize=7, va="bottom")
    note_inches = 0.5 if notes else 0.0  # room below the panels for the note
    figure.tight_layout(rect=(0, note_inches / figure.get_figheight(), 1, 1))
    return save_figure(figure, directory, f"bars-{file_stem(dataset)}")


def bars_notes(panels: Sequence[BarPanel]) -> list[str]:
    """What the figure's marks mean, when it has any (the same test as the tables')."""
    marks = {bar.mark for panel in panels for bar in panel.bars if bar.mark}
    return [SIGNIFICANCE_NOTE] if marks & {BETTER_MARK, WORSE_MARK} else []


def panel_title(panel: BarPanel) -> str:
    return textwrap.fill(panel.title, TITLE_WIDTH)


def _draw_bars(axis: Axes, panel: BarPanel) -> None:
    positions = range(len(panel.bars))
    colours = ["#9e9e9e" if bar.is_no_kd else "#4c72b0" for bar in panel.bars]
    axis.bar(positions, [b.mean for b in panel.bars], yerr=[b.std for b in panel.bars], color=colours,
             capsize=3, error_kw={"elinewidth": 1})
    if panel.no_kd is not None:
        axis.axhline(panel.no_kd, color="#c44e52", linestyle="--", linewidth=1, label="no-KD")
    if panel.teacher is not None:
        axis.axhline(panel.teacher, color="#55a868", linestyle=":", linewidth=1, label="teacher (own modality)")
    for position, bar in zip(positions, panel.bars):
        if bar.mark:
            axis.annotate(bar.mark, (position, bar.mean + bar.std), ha="center", va="bottom")
    axis.set_xticks(list(positions), [b.label for b in panel.bars], rotation=35, ha="right", fontsize=8)
    axis.set_ylabel(f"{panel.metric} (%)")
    axis.set_title(panel_title(panel), fontsize=9)
    lines = [value for value in (panel.no_kd, panel.teacher) if value is not None]
    high = max([b.mean + b.std for b in panel.bars] + lines)
    axis.set_ylim(0.0, high + max(1.0, 0.08 * high))  # bars from zero: a bar's height is its value
    # beside the axes, never over a bar
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


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


def plot_heatmaps(records: Sequence[dict[str, Any]], x_key: str, y_key: str, directory: Path) -> list[Path]:
    written = []
    for heatmap in heatmaps(records, x_key, y_key):
        written += _heatmap_figure(heatmap, directory)
    return written


def _heatmap_figure(heatmap: Heatmap, directory: Path) -> list[Path]:
    plt = pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in heatmap.means], dtype=float)
    figure, axis = plt.subplots(figsize=(1.1 * len(heatmap.x_values) + 2.5, 0.8 * len(heatmap.y_values) + 2))
    image = axis.imshow(values, origin="lower", cmap="viridis", aspect="auto")
    for y, row in enumerate(heatmap.means):
        for x, value in enumerate(row):
            text = "—" if value is None else f"{value:.1f}\n(n={heatmap.counts[y][x]})"
            axis.text(x, y, text, ha="center", va="center", fontsize=7, color="white" if value is not None else "k")
    axis.set_xticks(range(len(heatmap.x_values)), [str(v) for v in heatmap.x_values])
    axis.set_yticks(range(len(heatmap.y_values)), [str(v) for v in heatmap.y_values])
    axis.set_xlabel(heatmap.x_key)
    axis.set_ylabel(heatmap.y_key)
    axis.set_title(f"{heatmap.title}\ntest {heatmap.metric} (%), mean over seeds", fontsize=9)
    figure.colorbar(image, ax=axis, label=f"{heatmap.metric} (%)")
    stem = f"heatmap-{file_stem(heatmap.title.replace(' · ', '-'))}-{file_stem(heatmap.x_key)}-{file_stem(heatmap.y_key)}"
    return save_figure(figure, directory, stem)


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


def plot_sweep(records: Sequence[dict[str, Any]], x_key: str, directory: Path) -> list[Path]:
    panels = sweep_panels(records, x_key)
    written = []
    for dataset in sorted({panel.dataset for panel in panels}):
        written += _sweep_figure([p for p in panels if p.dataset == dataset], directory)
    return written


def _sweep_figure(panels: list[SweepPanel], directory: Path) -> list[Path]:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    labels = sorted({label for panel in panels for label in panel.series})
    for axis, panel in zip(axes[0], panels):
        xs = [p.x for p in panel.no_kd if is_number(p.x)]
        spread = 0.012 * (max(xs) - min(xs)) if len(xs) > 1 else 0.0  # methods side by side at each x
        for index, label in enumerate(labels):
            points = panel.series.get(label, [])
            offset = (index - (len(labels) - 1) / 2) * spread
            if points:
                axis.errorbar([p.x + offset if is_number(p.x) else p.x for p in points], [p.mean for p in points], yerr=[p.std for p in points],
                              marker="o", markersize=3, capsize=2, linewidth=1, color=colours(index % 10), label=label)
        axis.axhline(0.0, color="k", linewidth=0.8, linestyle="--")
        axis.set_xlabel(panel.x_key)
        axis.set_title(f"{panel.dataset} · {panel.direction}\nno-kd: "
                       + ", ".join(f"{p.mean:.1f}" for p in panel.no_kd), fontsize=8)
    axes[0][0].set_ylabel(f"test {panels[0].metric} gain over no-kd (points)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.suptitle(f"{panels[0].dataset}: gain over no-kd against {panels[0].x_key} (mean ± std over seeds)",
                    fontsize=9)
    figure.tight_layout()
    return save_figure(figure, directory, f"sweep-{file_stem(panels[0].dataset)}-{file_stem(panels[0].x_key)}")
