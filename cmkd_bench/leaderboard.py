"""Leaderboard: run records (`result.json`) turned into tables of mean ± std over seeds.

A table holds only records that share dataset, task, direction, backbones, data options and
recipe, so that no number is ever averaged with one trained under a different protocol. The
teacher and the no-KD student are always rows (DESIGN.md, Protocol), and failed runs are listed
after the tables rather than hidden.

`summarize` is the data API; `render` turns it into rich, md, csv, latex or html text, and
`print_leaderboard` is what the CLI calls. Two layouts: "long" (one table per dataset, direction
and protocol, a row per method) and "wide" (one column per table, a row per method, with the
average rank across columns, like Table 1 of the CMKD papers). Method rows carry Welch's t-test
against the no-KD row of their table (marked in the wide layout and in html), and
`--with-published` adds numbers published in papers (leaderboard/published.csv) in columns of
their own, labelled as published, beside ours.
"""

from __future__ import annotations

import csv
import io
import html
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .errors import UserError

FORMATS = ("rich", "md", "csv", "latex", "html")
LAYOUTS = ("long", "wide")
VIEWS = ("all", "default", "tuned")  # which rows: every row, the defaults only, or tuned ones in their place
TUNED = "\0tuned"  # the row key of a method's tuned configuration
NO_KD = "no-kd"
REQUIRED_KEYS = (
    "run_id", "status", "method", "dataset", "task", "student_modality", "teacher_modality",
    "student_backbone", "teacher_backbone", "seed",
)
CSV_COLUMNS = (
    "dataset", "task", "direction", "student_backbone", "teacher_backbone", "metric", "method",
    "hparams", "mean", "std", "n", "mean_last", "std_last", "delta_vs_nokd", "is_best", "kind",
    # Beyond the summary columns: without these, two tables that differ only in recipe or data
    # options would give CSV rows that cannot be told apart.
    "data_options", "recipe",
    "p_vs_nokd",  # Welch's t-test against no-KD over seeds; empty with fewer than 2 seeds on a side
    "selection",  # default, or tuned (the configuration the tuning protocol selected on val)
)
PUBLISHED_CSV_COLUMNS = ("published", "published_source", "gap_vs_published")
HEADERS = ("Method", "test", "test@last", "seeds (n)", "Δ vs no-KD")
FAILED_HEADERS = ("run", "method", "dataset", "direction", "seed", "error")
MISSING = "—"
DEFAULT_METRIC = {"classification": "top1", "segmentation": "miou"}
_UNSET = "\0unset"  # stands for a setting that a table's records do not have at all
_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


@dataclass
class RowData:
    label: str
    kind: str  # "teacher" or "method"
    method: str
    hparams: dict[str, Any]
    values: list[float]  # per-seed test values (per-teacher for the teacher row)
    last_values: list[float]
    sources: list[str]  # run ids, or teacher keys for the teacher row: where each number came from
    mean: float | None
    std: float | None
    n: int
    mean_last: float | None
    std_last: float | None
    delta: float | None = None
    is_best: bool = False
    p_value: float | None = None  # Welch's t-test against the table's no-KD row (two-sided)
    selection: str = "default"  # "tuned": the configuration the tuning protocol selected on val
    tuning: dict[str, Any] | None = None  # the record's tuning entry (space, budget, scores) for tuned rows


@dataclass
class TableData:
    title: str
    dataset: str
    task: str
    metric: str
    teacher_modality: str
    student_modality: str
    student_backbone: str
    teacher_backbone: str
    data_options: dict[str, Any]
    recipe: dict[str, Any]
    rows: list[RowData] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return direction_of(self.teacher_modality, self.student_modality)


def direction_of(teacher_modality: str, student_modality: str) -> str:
    return f"{teacher_modality} → {student_modality}"


# ---------------------------------------------------------------------------------------------
# Loading


def load_records(paths: Iterable[str | Path] | str | Path) -> list[dict[str, Any]]:
    """Read every `result.json` under the given runs directories or files, checked."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: dict[Path, None] = {}  # ordered set: a file reached through two paths counts once
    for path in map(Path, paths):
        for file in _result_files(path):
            files.setdefault(file.resolve(), None)
    return [_read_record(file) for file in files]


def _result_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; pass a runs directory or a result.json file")
    if path.is_file():
        return [path]
    # Only result.json: teacher caches under runs/teachers/ hold teacher.json, not run records.
    return sorted(file for file in path.rglob("result.json") if file.is_file())


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}); fix or delete that run"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({_one_line(error)}); fix or delete that run") from None
    _check_record(record, path)
    return record


def _check_record(record: Any, path: Path) -> None:
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a run record (expected a JSON object); fix or delete that run")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise UserError(
            f"{path}: not a run record (missing {', '.join(missing)}); fix or delete that run"
        )
    if record["status"] == "completed" and not _is_number(_metric(record, "test")):
        raise UserError(f"{path}: completed run has no numeric metrics.test; re-run or delete it")


# ---------------------------------------------------------------------------------------------
# Summarizing


def summarize(records: Iterable[dict[str, Any]], view: str = "all") -> list[TableData]:
    """Group completed records into tables of rows; failed records are left out (see `failed_runs`).

    `view`: "all" rows, the "default" configurations only, or "tuned": each tuned method's
    selected configuration in place of its default (methods without a search space keep theirs).
    """
    _check_view(view)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") == "completed":
            groups.setdefault(_table_key(record), []).append(record)
    keys = sorted(groups)
    extras = _distinguishing_settings([groups[key][0] for key in keys])
    return [_build_table(groups[key], extra, view) for key, extra in zip(keys, extras)]


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise UserError(f"unknown leaderboard view {view!r}; choose one of {', '.join(VIEWS)}")


def tuning_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's entries from tuning studies (see cmkd_bench.tuning), oldest first."""
    entries = record.get("tuning") or []
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def _row_entries(records: list[dict[str, Any]], view: str) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """(row key, record) pairs. A record is a row of its own settings unless it was only a tuning
    candidate with other settings than the defaults; a selected one is also its method's tuned row."""
    entries = []
    for record in records:
        tuning = tuning_entries(record)
        selected = [entry for entry in tuning if entry.get("role") == "selected"]
        if view != "tuned" or not selected:
            if not tuning or not _hparams_changed(record):
                if view != "default" or not _hparams_changed(record):
                    entries.append((_row_key(record), record))
        if selected and view != "default":
            entries.append(((str(record["method"]), TUNED), record))
    if view == "tuned":  # a tuned method shows only its tuned row
        tuned = {key[0] for key, _ in entries if key[1] == TUNED}
        entries = [(key, record) for key, record in entries
                   if key[1] == TUNED or (key[0] not in tuned and not key[1])]
    return entries


def failed_runs(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record that did not complete, in a stable order."""
    failed = [record for record in records if record.get("status") != "completed"]
    return sorted(failed, key=lambda r: tuple(map(str, (
        r["dataset"], r["teacher_modality"], r["student_modality"], r["method"], r["seed"], r["run_id"]))))


def _table_key(record: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(record["dataset"]), str(record["task"]), _metric_name(record),
        str(record["teacher_modality"]), str(record["student_modality"]),
        str(record["student_backbone"]), str(record["teacher_backbone"]),
        _canonical(_data_options(record)), _canonical(_recipe(record)),
    )


def _distinguishing_settings(representatives: list[dict[str, Any]]) -> list[list[str]]:
    """Per table, the data options and recipe settings that are not the same in every table."""
    data = [_data_options(record) for record in representatives]
    recipes = [_recipe(record) for record in representatives]
    varying_data, varying_recipe = _varying_keys(data), _varying_keys(recipes)
    extras = []
    for options, recipe in zip(data, recipes):
        parts = []
        if varying_data:
            parts.append("data " + _settings_text(options, varying_data))
        if varying_recipe:
            parts.append("recipe " + _settings_text(recipe, varying_recipe))
        extras.append(parts)
    return extras


def _varying_keys(settings: list[dict[str, Any]]) -> list[str]:
    keys = sorted(set().union(*settings)) if settings else []
    return [key for key in keys if len({_canonical(s.get(key, _UNSET)) for s in settings}) > 1]


def _settings_text(settings: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key}={_value_text(settings[key]) if key in settings else 'unset'}" for key in keys)


def _build_table(records: list[dict[str, Any]], extra: list[str], view: str = "all") -> TableData:
    first = records[0]
    table = TableData(
        title="", dataset=first["dataset"], task=first["task"], metric=_metric_name(first),
        teacher_modality=first["teacher_modality"], student_modality=first["student_modality"],
        student_backbone=first["student_backbone"], teacher_backbone=first["teacher_backbone"],
        data_options=_data_options(first), recipe=_recipe(first),
    )
    table.title = _title(table, extra)
    per_row = _latest_per_seed(_row_entries(records, view))
    method_rows = [_method_row(key, row_records) for key, row_records in per_row.items()]
    _set_deltas(method_rows)
    _set_significance(method_rows)
    _mark_best(method_rows)
    kept = [record for row_records in per_row.values() for record in row_records]
    table.rows = [_teacher_row(table, kept), *_ordered(method_rows)]
    return table


def _title(table: TableData, extra: list[str]) -> str:
    # A real dataset's preprocessing protocol is always named: numbers of two protocols never compare.
    named = "protocol" in table.data_options and not any("protocol=" in part for part in extra)
    protocol = [f"protocol={table.data_options['protocol']}"] if named else []
    parts = [
        table.dataset, table.direction, f"{table.metric} (%)",
        f"student {table.student_backbone}, teacher {table.teacher_backbone}", *protocol, *extra,
    ]
    return " · ".join(parts)


def _latest_per_seed(entries: list[tuple[tuple[str, str], dict[str, Any]]]
                     ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per row, one record per seed: the most recent, since an older one was the same run repeated."""
    latest: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
    for key, record in entries:
        seeds = latest.setdefault(key, {})
        seed = _canonical(record["seed"])
        if seed not in seeds or _created_at(record) >= _created_at(seeds[seed]):
            seeds[seed] = record
    return {
        key: sorted(seeds.values(), key=lambda r: _canonical(r["seed"]))
        for key, seeds in latest.items()
    }


def _row_key(record: dict[str, Any]) -> tuple[str, str]:
    # Keyed by the label, so 2 and 2.0 (the same setting) share a row.
    return str(record["method"]), _hparams_text(_hparams_changed(record))


def _method_row(key: tuple[str, str], records: list[dict[str, Any]]) -> RowData:
    first = records[0]
    hparams = _hparams_changed(first)
    tuned = key[1] == TUNED
    if tuned:
        label = f"{first['method']} (tuned)"
    else:
        label = str(first["method"]) + (f" ({_hparams_text(hparams)})" if hparams else "")
    row = _row(
        label, "method", str(first["method"]), hparams,
        values=[_metric(r, "test") for r in records],
        last_values=[v for v in (_metric(r, "test_last") for r in records) if _is_number(v)],
        sources=[str(r["run_id"]) for r in records],
    )
    if tuned:
        row.selection = "tuned"
        row.tuning = next(e for e in reversed(tuning_entries(first)) if e.get("role") == "selected")
    return row


def _teacher_row(table: TableData, records: list[dict[str, Any]]) -> RowData:
    teachers = _distinct_teachers(records)
    keys = sorted(teachers)
    metrics = [teachers[key].get("metrics") or {} for key in keys]
    return _row(
        f"teacher ({table.teacher_modality}, {table.teacher_backbone})", "teacher", "teacher", {},
        values=[m["test"] for m in metrics],
        last_values=[m["test_last"] for m in metrics if _is_number(m.get("test_last"))],
        sources=keys,
    )


def _distinct_teachers(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    teachers: dict[str, dict[str, Any]] = {}
    for record in records:
        teacher = record.get("teacher") or {}
        # A teacher fine-tuned by the method is no longer the teacher the others distilled from.
        if teacher.get("trained_by_method") or not _is_number((teacher.get("metrics") or {}).get("test")):
            continue
        key = str(teacher.get("key") or teacher.get("checkpoint") or f"run {record['run_id']}")
        teachers.setdefault(key, teacher)
    return teachers


def _row(label: str, kind: str, method: str, hparams: dict[str, Any], *, values: list[float],
         last_values: list[float], sources: list[str]) -> RowData:
    mean, std = _mean_std(values)
    mean_last, std_last = _mean_std(last_values)
    return RowData(
        label=label, kind=kind, method=method, hparams=hparams, values=values,
        last_values=last_values, sources=sources, mean=mean, std=std, n=len(values),
        mean_last=mean_last, std_last=std_last,
    )


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    # Sample std (ddof=1); one seed has no spread to estimate, shown as 0.
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std


def _set_deltas(rows: list[RowData]) -> None:
    baseline = _no_kd_baseline(rows)
    if baseline is None or baseline.mean is None:
        return
    for row in rows:
        if row.method != NO_KD and row.mean is not None:
            row.delta = row.mean - baseline.mean


def _no_kd_baseline(rows: list[RowData]) -> RowData | None:
    no_kd = sorted((row for row in rows if row.method == NO_KD and row.selection == "default"),
                   key=lambda row: bool(row.hparams))
    return no_kd[0] if no_kd else None


def _set_significance(rows: list[RowData]) -> None:
    baseline = _no_kd_baseline(rows)
    if baseline is None:
        return
    for row in rows:
        if row is not baseline:
            row.p_value = welch_p_value(row.values, baseline.values)


def welch_p_value(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances); None where it is undefined."""
    if len(values) < 2 or len(baseline) < 2:
        return None
    from scipy.stats import ttest_ind  # scipy is slow to import; only tables need it

    p_value = float(ttest_ind(list(values), list(baseline), equal_var=False).pvalue)
    return None if math.isnan(p_value) else p_value  # nan: no spread on either side


def _mark_best(rows: list[RowData]) -> None:
    means = [row.mean for row in rows if row.mean is not None]
    if not means:
        return
    best = max(means)
    for row in rows:
        row.is_best = row.mean == best


def _ordered(rows: list[RowData]) -> list[RowData]:
    no_kd = sorted((row for row in rows if row.method == NO_KD), key=lambda row: row.label)
    others = [row for row in rows if row.method != NO_KD]
    others.sort(key=lambda row: (row.mean is None, -(row.mean or 0.0), row.label))
    return no_kd + others


# ---------------------------------------------------------------------------------------------
# Record fields


def _metric(record: dict[str, Any], name: str) -> Any:
    return (record.get("metrics") or {}).get(name)


def _metric_name(record: dict[str, Any]) -> str:
    return str(record.get("metric") or DEFAULT_METRIC.get(record["task"], "score"))


def _data_options(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("data_options") or {}


def _recipe(record: dict[str, Any]) -> dict[str, Any]:
    return (record.get("config") or {}).get("recipe") or {}


def _hparams_changed(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("hparams_changed") or {}


def _created_at(record: dict[str, Any]) -> datetime:
    text = str(record.get("created") or "")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _OLDEST
    # Naive and aware times cannot be compared; the suite writes UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _hparams_text(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_value_text(hparams[key])}" for key in sorted(hparams))


def _value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


# ---------------------------------------------------------------------------------------------
# Rendering


def render(records: Sequence[dict[str, Any]], fmt: str, *, paths: Sequence[str | Path] | None = None,
           width: int = 120, layout: str = "long", published: Sequence[PublishedValue] | None = None,
           view: str = "all") -> str:
    """The leaderboard as text in `fmt` (one of FORMATS); rich output is plain, without colour codes.

    `layout` is "long" or "wide"; `published` (from `load_published`) adds the published columns;
    `view` chooses the rows (see `summarize`).
    """
    _check_format(fmt)
    _check_layout(layout)
    tables, failed = summarize(records, view), failed_runs(records)
    if _needs_grids(fmt, layout, published, records):
        return _render_grids(tables, failed, fmt, layout, _index(published), paths, width)
    if fmt == "csv":
        return _render_csv(tables)
    if fmt == "md":
        return _render_md(tables, failed, paths)
    if fmt == "latex":
        return _render_latex(tables, failed, paths)
    return _render_rich_text(tables, failed, paths, width)


def print_leaderboard(records: Sequence[dict[str, Any]], fmt: str, output_path: str | Path | None = None,
                      *, paths: Sequence[str | Path] | None = None, console: Console | None = None,
                      layout: str = "long", published: Sequence[PublishedValue] | None = None,
                      view: str = "all") -> None:
    """Print the leaderboard (rich: styled, to the terminal) or write it to `output_path`."""
    _check_format(fmt)
    _check_layout(layout)
    console = console or Console()
    options = {"paths": paths, "layout": layout, "published": published, "view": view}
    if output_path is not None:
        _write(Path(output_path), render(records, fmt, **options))
        console.print(Text(f"wrote {fmt} leaderboard to {output_path}"))
    elif fmt == "rich" and _needs_grids(fmt, layout, published, records):
        tables, failed = summarize(records, view), failed_runs(records)
        _print_rich(console, _grid_renderables(_grids(tables, layout, _index(published)), failed, paths))
    elif fmt == "rich":
        _print_rich(console, _rich_renderables(summarize(records, view), failed_runs(records), paths))
    else:
        console.file.write(render(records, fmt, **options))
    if fmt == "csv":
        _print_csv_notes(records, paths)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown leaderboard format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise UserError(f"unknown leaderboard layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _needs_grids(fmt: str, layout: str, published: Sequence[PublishedValue] | None,
                 records: Sequence[dict[str, Any]] = ()) -> bool:
    # The long layout without published numbers or tuned rows keeps its own renderers (and their
    # golden outputs); tuned rows need the grids' notes (the selected settings).
    tuned = any(tuning_entries(record) for record in records)
    return fmt == "html" or layout != "long" or published is not None or (tuned and fmt != "csv")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot write the leaderboard ({_one_line(error)}); check the path") from None


def _print_csv_notes(records: Sequence[dict[str, Any]], paths: Sequence[str | Path] | None) -> None:
    # The CSV is one flat table for machines; what it cannot hold is said on stderr instead.
    if not any(record.get("status") == "completed" for record in records):
        print(_no_completed_message(paths), file=sys.stderr)
    failed = failed_runs(records)
    if failed:
        print(f"{len(failed)} failed run(s) are not in the CSV; the md or rich format lists them",
              file=sys.stderr)


def _no_completed_message(paths: Sequence[str | Path] | None) -> str:
    where = f" under {', '.join(map(str, paths))}" if paths else ""
    return f"No completed runs found{where}; nothing to tabulate."


def _row_cells(row: RowData) -> list[str]:
    return [
        row.label, _mean_std_text(row.mean, row.std), _mean_std_text(row.mean_last, row.std_last),
        str(row.n), "" if row.delta is None else f"{row.delta:+.2f}",
    ]


def _mean_std_text(mean: float | None, std: float | None) -> str:
    return MISSING if mean is None else f"{mean:.2f} ± {std:.2f}"


def _failed_cells(record: dict[str, Any]) -> list[str]:
    error = record.get("error") or f"(status: {record['status']})"
    return [
        str(record["run_id"]), str(record["method"]), str(record["dataset"]),
        direction_of(record["teacher_modality"], record["student_modality"]),
        str(record["seed"]), _one_line(error),
    ]


# --- markdown


def _render_md(tables: list[TableData], failed: list[dict[str, Any]],
               paths: Sequence[str | Path] | None) -> str:
    blocks = [_md_table(table) for table in tables] or [_no_completed_message(paths)]
    if failed:
        blocks.append(_md_failed(failed))
    return "\n\n".join(blocks) + "\n"


def _md_table(table: TableData) -> str:
    lines = [f"### {table.title}", "", _md_line(HEADERS), "|---|---:|---:|---:|---:|"]
    for row in table.rows:
        cells = _row_cells(row)
        if row.is_best:
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        lines.append(_md_line(cells))
    return "\n".join(lines)


def _md_failed(failed: list[dict[str, Any]]) -> str:
    lines = ["### failed runs", "", _md_line(FAILED_HEADERS), "|---|---|---|---|---:|---|"]
    lines += [_md_line(_failed_cells(record)) for record in failed]
    return "\n".join(lines)


def _md_line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


# --- csv


def _render_csv(tables: list[TableData], published: PublishedIndex | None = None) -> str:
    buffer = io.StringIO()
    columns = CSV_COLUMNS + (PUBLISHED_CSV_COLUMNS if published is not None else ())
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            cells = _csv_row(table, row)
            if published is not None:
                cells.update(_published_csv_cells(published.lookup(table, row), row))
            writer.writerow(cells)
    return buffer.getvalue()


def _published_csv_cells(value: PublishedValue | None, row: RowData) -> dict[str, str]:
    if value is None:
        return dict.fromkeys(PUBLISHED_CSV_COLUMNS, "")
    gap = None if row.mean is None else row.mean - value.value
    return {"published": _number(value.value), "published_source": value.citation, "gap_vs_published": _number(gap)}


def _csv_row(table: TableData, row: RowData) -> dict[str, str]:
    return {
        "dataset": table.dataset, "task": table.task,
        "direction": f"{table.teacher_modality}->{table.student_modality}",
        "student_backbone": table.student_backbone, "teacher_backbone": table.teacher_backbone,
        "metric": table.metric, "method": row.method,
        "hparams": "" if row.kind == "teacher" else _canonical(row.hparams),
        "mean": _number(row.mean), "std": _number(row.std), "n": str(row.n),
        "mean_last": _number(row.mean_last), "std_last": _number(row.std_last),
        "delta_vs_nokd": _number(row.delta), "is_best": "true" if row.is_best else "false",
        "kind": row.kind, "data_options": _canonical(table.data_options),
        "recipe": _canonical(table.recipe), "p_vs_nokd": _number(row.p_value, digits=6),
        "selection": "" if row.kind == "teacher" else row.selection,
    }


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# --- latex

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "→": r"$\rightarrow$", "·": r"$\cdot$", "—": "--", "Δ": r"$\Delta$",
    "†": r"\textsuperscript{\dag}", "‡": r"\textsuperscript{\ddag}",
}
_LATEX_HEADERS = ("Method", "test", "test@last", "seeds ($n$)", r"$\Delta$ vs no-KD")


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def _render_latex(tables: list[TableData], failed: list[dict[str, Any]],
                  paths: Sequence[str | Path] | None) -> str:
    blocks = [_latex_table(table) for table in tables] or ["% " + _no_completed_message(paths)]
    if failed:
        blocks.append(_latex_failed(failed))
    return "\n\n".join(blocks) + "\n"


def _latex_table(table: TableData) -> str:
    lines = [
        r"\begin{tabular}{lrrrr}", r"\toprule",
        rf"\multicolumn{{5}}{{l}}{{{latex_escape(table.title)}}} \\", r"\midrule",
        _latex_line(_LATEX_HEADERS), r"\midrule",
    ]
    for row in table.rows:
        cells = [latex_escape(cell) for cell in _row_cells(row)]
        if row.is_best:
            cells = [rf"\textbf{{{cell}}}" if cell else cell for cell in cells]
        lines.append(_latex_line(cells))
        if row.kind == "teacher":
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _latex_failed(failed: list[dict[str, Any]]) -> str:
    lines = [r"\begin{tabular}{llllrl}", r"\toprule", r"\multicolumn{6}{l}{failed runs} \\",
             r"\midrule", _latex_line(FAILED_HEADERS), r"\midrule"]
    lines += [_latex_line([latex_escape(cell) for cell in _failed_cells(record)]) for record in failed]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _latex_line(cells: Iterable[str]) -> str:
    return " & ".join(cells) + r" \\"


# --- rich


def _render_rich_text(tables: list[TableData], failed: list[dict[str, Any]],
                      paths: Sequence[str | Path] | None, width: int) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    _print_rich(console, _rich_renderables(tables, failed, paths))
    return buffer.getvalue()


def _print_rich(console: Console, renderables: list[RenderableType]) -> None:
    for index, renderable in enumerate(renderables):
        if index and not isinstance(renderable, Table):
            console.print()  # a blank line before each table's title
        console.print(renderable)


def _rich_renderables(tables: list[TableData], failed: list[dict[str, Any]],
                      paths: Sequence[str | Path] | None) -> list[RenderableType]:
    renderables: list[RenderableType] = []
    for table in tables:
        # The title goes above the table rather than in it, where rich would wrap it to the table's width.
        renderables += [Text(table.title, style="italic"), _rich_table(table)]
    if not tables:
        renderables.append(Text(_no_completed_message(paths)))
    if failed:
        renderables += [Text("failed runs", style="italic red"), _rich_failed(failed)]
    return renderables


def _rich_table(table: TableData) -> Table:
    rich_table = Table()
    rich_table.add_column(HEADERS[0])
    for header in HEADERS[1:]:
        rich_table.add_column(header, justify="right")
    for row in table.rows:
        # Text cells, so that a label or message is never read as rich markup.
        rich_table.add_row(*map(Text, _row_cells(row)), style="bold" if row.is_best else None,
                           end_section=row.kind == "teacher")
    return rich_table


def _rich_failed(failed: list[dict[str, Any]]) -> Table:
    rich_table = Table()
    for header in FAILED_HEADERS:
        # Folded, never cut short: a run id is what the user looks up.
        rich_table.add_column(header, justify="right" if header == "seed" else "left", overflow="fold")
    for record in failed:
        rich_table.add_row(*map(Text, _failed_cells(record)))
    return rich_table


# ---------------------------------------------------------------------------------------------
# Filters: --dataset, --method, --where


def filter_records(records: Sequence[dict[str, Any]], *, datasets: Sequence[str] = (),
                   methods: Sequence[str] = (), where: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The records that match every filter; no-KD records stay whatever `methods` says (the baseline).

    `where` holds KEY=VALUE tests on a record field (seed, student_backbone, ...), a method
    hyper-parameter, a dataset option or a recipe setting; prefix hparams., data. or recipe. to
    choose. A record without the key never matches, except a no-KD record, which keeps being the
    baseline of what it is compared with.
    """
    kept = list(records)
    if datasets:
        _check_known("--dataset", datasets, {str(r["dataset"]) for r in records}, "datasets")
        kept = [r for r in kept if str(r["dataset"]) in datasets]
    if methods:
        _check_known("--method", methods, {str(r["method"]) for r in records}, "methods")
        kept = [r for r in kept if str(r["method"]) in methods or r["method"] == NO_KD]
    for test in where:
        key, wanted = _parse_where(test)
        if not any(has_setting(r, key) for r in records):
            raise UserError(f"--where {test}: no run record has a field, hyper-parameter or setting {key!r}")
        kept = [r for r in kept if _where_matches(r, key, wanted)]
    return kept


def _check_known(option: str, wanted: Sequence[str], present: set[str], kind: str) -> None:
    for name in wanted:
        if name not in present:
            known = ", ".join(sorted(present)) or "none"
            raise UserError(f"{option} {name}: no run record has it; the records hold {kind}: {known}")


def _parse_where(test: str) -> tuple[str, str]:
    key, sep, value = test.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--where {test!r} is not KEY=VALUE; write for example --where seed=0 or --where T=2")
    return key.strip(), value.strip()


NO_SETTING = object()  # what record_setting returns for a key a record does not have
_SCOPES = {"hparams": "hparams", "method": "hparams", "data": "data_options", "data_options": "data_options",
           "recipe": "recipe"}


def settings_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A record's hyper-parameters, dataset options and recipe, by scope."""
    hparams = {**(record.get("hparams") or {}), **_hparams_changed(record)}
    return {"hparams": hparams, "data_options": _data_options(record), "recipe": _recipe(record)}


def has_setting(record: dict[str, Any], key: str) -> bool:
    return record_setting(record, key) is not NO_SETTING


def record_setting(record: dict[str, Any], key: str) -> Any:
    """A record's value for KEY: a field, else a hyper-parameter, a dataset option, a recipe setting."""
    scope, dot, name = key.partition(".")
    settings = settings_of(record)
    if dot and scope in _SCOPES:
        return settings[_SCOPES[scope]].get(name, NO_SETTING)
    if key in record and not isinstance(record[key], (dict, list)):
        return record[key]
    for values in settings.values():
        if key in values:
            return values[key]
    return NO_SETTING


def _where_matches(record: dict[str, Any], key: str, wanted: str) -> bool:
    actual = record_setting(record, key)
    if actual is NO_SETTING:
        return record["method"] == NO_KD
    return _same_value(actual, wanted)


def _same_value(actual: Any, wanted_text: str) -> bool:
    import yaml

    try:
        wanted = yaml.safe_load(wanted_text)
    except yaml.YAMLError:
        wanted = wanted_text
    if _is_number(actual) and _is_number(wanted):
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return actual == wanted or str(actual) == wanted_text


# ---------------------------------------------------------------------------------------------
# Published numbers (leaderboard/published.csv)

PUBLISHED_COLUMNS = ("method", "dataset", "teacher_modality", "student_modality", "metric", "value",
                     "source", "table", "confidence")
LEGACY_PUBLISHED_COLUMNS = PUBLISHED_COLUMNS[:-1]  # files from before the confidence column: primary
CONFIDENCES = ("primary", "secondary")  # read in the paper itself / taken from a secondary source
PUBLISHED_METRICS = ("top1", "miou")
TEACHER_METHOD = "teacher"  # the method name of a published teacher (own-modality) number
DEFAULT_PUBLISHED = Path(__file__).resolve().parents[1] / "leaderboard" / "published.csv"


@dataclass(frozen=True)
class PublishedValue:
    method: str
    dataset: str
    teacher_modality: str
    student_modality: str
    metric: str
    value: float
    source: str  # the paper: authors, title, venue, arXiv id
    table: str  # where in the paper: "Table 1"
    confidence: str = "primary"  # primary: read in the paper; secondary: from a summary of it

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.method, self.dataset, self.teacher_modality, self.student_modality, self.metric)

    @property
    def citation(self) -> str:
        standing = "" if self.confidence == "primary" else f" (published, {self.confidence} source)"
        return f"{self.source}, {self.table}{standing}"


def load_published(path: str | Path) -> list[PublishedValue]:
    """Read published numbers: CSV with the PUBLISHED_COLUMNS header; lines starting with # are comments."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read published values ({_one_line(error)}); pass a CSV file") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise UserError(f"{path}: no header; the first non-comment line must be {','.join(PUBLISHED_COLUMNS)}")
    header = tuple(cell.strip() for cell in next(csv.reader([numbered[0][1]])))
    if header not in (PUBLISHED_COLUMNS, LEGACY_PUBLISHED_COLUMNS):
        raise UserError(f"{path}:{numbered[0][0]}: header must be {','.join(PUBLISHED_COLUMNS)}")
    values: dict[tuple[str, ...], PublishedValue] = {}
    for number, line in numbered[1:]:
        value = _published_row(path, number, next(csv.reader([line])), header)
        if value.key in values:
            raise UserError(f"{path}:{number}: a second value for {'/'.join(value.key)}; keep one per key")
        values[value.key] = value
    return list(values.values())


def _published_row(path: Path, number: int, cells: list[str],
                   columns: tuple[str, ...] = PUBLISHED_COLUMNS) -> PublishedValue:
    where = f"{path}:{number}"
    if len(cells) != len(columns):
        raise UserError(f"{where}: {len(cells)} cells, expected {len(columns)}: {','.join(columns)}")
    row = dict(zip(columns, (cell.strip() for cell in cells)))
    empty = [name for name, cell in row.items() if not cell]
    if empty:
        raise UserError(f"{where}: empty {', '.join(empty)}; every column needs a value")
    try:
        number_value = float(row["value"])
    except ValueError:
        raise UserError(f"{where}: value {row['value']!r} is not a number") from None
    if not 0.0 <= number_value <= 100.0:
        raise UserError(f"{where}: value {number_value} is not a percentage in [0, 100]")
    if row["metric"] not in PUBLISHED_METRICS:
        raise UserError(f"{where}: metric {row['metric']!r} is not one of {', '.join(PUBLISHED_METRICS)}")
    if row["teacher_modality"] == row["student_modality"]:
        raise UserError(f"{where}: teacher and student modality are both {row['student_modality']!r}")
    if row.get("confidence", "primary") not in CONFIDENCES:
        raise UserError(f"{where}: confidence {row['confidence']!r} is not one of {', '.join(CONFIDENCES)}")
    return PublishedValue(**{**row, "value": number_value})


class PublishedIndex:
    """Published values by (method, dataset, direction, metric), matched to rows of our tables."""

    def __init__(self, values: Sequence[PublishedValue]) -> None:
        self.by_key = {value.key: value for value in values}

    def lookup(self, table: TableData, row: RowData) -> PublishedValue | None:
        if row.kind == "teacher":
            method = TEACHER_METHOD
        elif row.hparams or row.selection != "default":
            return None  # a paper's number is for the method's own settings, not a variant or a tuned one
        else:
            method = row.method
        return self.by_key.get((method, table.dataset, table.teacher_modality, table.student_modality, table.metric))

    def has_any(self, table: TableData) -> bool:
        return any(self.lookup(table, row) is not None for row in table.rows)


def published_grid(published: Sequence[PublishedValue], metric: str) -> Grid | None:
    """The published numbers of one metric on their own: a row per method, a column per dataset and direction.

    For datasets this suite has no records of (a paper's real datasets, beside our embedded ones), so
    that they are shown, labelled, and never mixed with measured numbers.
    """
    values = [value for value in published if value.metric == metric]
    if not values:
        return None
    columns = sorted({(v.dataset, v.teacher_modality, v.student_modality) for v in values})
    methods = sorted({v.method for v in values}, key=lambda m: (m != TEACHER_METHOD, m != NO_KD, m))
    by_key = {(v.method, v.dataset, v.teacher_modality, v.student_modality): v for v in values}
    sources = _Sources()
    rows = []
    for method in methods:
        cells = [Cell(method, method)]
        for column in columns:
            value = by_key.get((method, *column))
            cells.append(Cell(MISSING) if value is None else
                         Cell(f"{value.value:.2f} [{sources.ref(value.citation)}]", value.value))
        rows.append(cells)
    headers = ["Method (published)"] + [f"{d} {t}→{s} published" for d, t, s in columns]
    return Grid(title=f"published {metric} (%), as reported; not measured by this suite", headers=headers,
                rows=rows, align=["l"] + ["r"] * len(columns),
                notes=[PUBLISHED_NOTE.replace("; gap = our mean - published", ""), *sources.notes()])


def render_published(published: Sequence[PublishedValue], fmt: str = "md") -> str:
    """Every metric's published grid in `fmt` (md, latex or html blocks)."""
    grids = [grid for metric in PUBLISHED_METRICS if (grid := published_grid(published, metric)) is not None]
    return "\n\n".join(_GRID_RENDERERS[fmt](grid) for grid in grids)


def _index(published: Sequence[PublishedValue] | None) -> PublishedIndex | None:
    return None if published is None else PublishedIndex(published)


# ---------------------------------------------------------------------------------------------
# Grids: the wide layout, published columns and html, rendered to every format

BETTER_MARK, WORSE_MARK = "†", "‡"
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_NOTE = (f"{BETTER_MARK} / {WORSE_MARK}: significantly better / worse than no-kd in the same table "
                     f"(Welch's t-test over seeds, two-sided p < {SIGNIFICANCE_LEVEL}; needs 2 or more seeds "
                     "on each side).")
PUBLISHED_NOTE = ("published: a number reported in the paper cited, not measured by this suite, with its source's "
                  "standing; gap = our mean - published. Published and measured numbers are not the same statistic: "
                  "this suite selects the epoch on validation and reports the student's main head, while, for "
                  "example, FD-CMKD's reference code selects the best epoch on test and takes the maximum over its "
                  "three heads.")
TUNED_NOTE = ("(tuned): the configuration with the best validation score among at most {budget} configurations "
              "of the method's declared search space (the same budget for every method), run on seed {seed} and "
              "then on every seed; test scores are never read for the selection.")
RANK_NOTE = ("avg rank: the rank of the method's mean among the methods of each column (1 = best, ties "
             "share the mean rank), averaged over the columns it has; (k/K) when it has k of K columns. "
             "Bold: the best mean of a column.")


@dataclass
class Cell:
    text: str
    sort: float | str | None = None  # what html sorts by; None sorts last
    bold: bool = False


@dataclass
class Grid:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    align: list[str]  # "l" or "r" per column
    pinned: int = 0  # leading rows (the teacher) kept above a rule and out of html sorting
    notes: list[str] = field(default_factory=list)


class _Sources:
    """Numbers the papers cited in one grid: [1], [2], ..."""

    def __init__(self) -> None:
        self.citations: list[str] = []

    def ref(self, citation: str) -> int:
        if citation not in self.citations:
            self.citations.append(citation)
        return self.citations.index(citation) + 1

    def notes(self) -> list[str]:
        return [f"[{number}] {citation}" for number, citation in enumerate(self.citations, start=1)]


def significance_mark(row: RowData) -> str:
    if row.p_value is None or row.p_value >= SIGNIFICANCE_LEVEL or row.delta is None:
        return ""
    return BETTER_MARK if row.delta > 0 else WORSE_MARK


def _grids(tables: list[TableData], layout: str, published: PublishedIndex | None) -> list[Grid]:
    if not tables:
        return []
    if layout == "wide":
        return [_wide_grid(tables, published)]
    return [_long_grid(table, published) for table in tables]


def _value_cell(mean: float | None, std: float | None, mark: str = "") -> Cell:
    return Cell(_mean_std_text(mean, std) + (f" {mark}" if mark else ""), mean)


def _published_cells(value: PublishedValue | None, mean: float | None, sources: _Sources) -> list[Cell]:
    if value is None:
        return [Cell(""), Cell("")]
    gap = None if mean is None else mean - value.value
    return [Cell(f"{value.value:.2f} [{sources.ref(value.citation)}]", value.value),
            Cell("" if gap is None else f"{gap:+.2f}", gap)]


def _grid_notes(rows: Iterable[RowData], sources: _Sources, published: PublishedIndex | None,
                tables: Sequence[TableData] = ()) -> list[str]:
    rows = list(rows)
    notes = [SIGNIFICANCE_NOTE] if any(row.p_value is not None for row in rows) else []
    notes += tuned_notes(tables)
    if published is not None:
        notes += [PUBLISHED_NOTE, *sources.notes()]
    return notes


def tuned_notes(tables: Sequence[TableData]) -> list[str]:
    """The protocol behind "(tuned)" rows, and each one's selected settings per table."""
    selected: dict[str, list[str]] = {}
    protocol: set[tuple[int, int]] = set()
    for table in tables:
        for row in table.rows:
            if row.selection != "tuned" or row.tuning is None:
                continue
            settings = _hparams_text(row.hparams) or "the defaults"
            where = f"{table.dataset} {table.teacher_modality}→{table.student_modality}: " if len(tables) > 1 else ""
            selected.setdefault(row.method, []).append(where + settings)
            protocol.add((int(row.tuning.get("budget", 0)), int(row.tuning.get("selection_seed", 0))))
    if not selected:
        return []
    budgets = ", ".join(str(budget) for budget in sorted({budget for budget, _ in protocol}))
    seeds = ", ".join(str(seed) for seed in sorted({seed for _, seed in protocol}))
    lines = [TUNED_NOTE.format(budget=budgets, seed=seeds)]
    lines += [f"{method} (tuned) selected {'; '.join(parts)}." for method, parts in sorted(selected.items())]
    return lines


# --- long layout


def _long_grid(table: TableData, published: PublishedIndex | None) -> Grid:
    headers = list(HEADERS) + (["published", "gap vs published"] if published is not None else [])
    sources = _Sources()
    rows = [_long_cells(table, row, published, sources) for row in table.rows]
    return Grid(title=table.title, headers=headers, rows=rows, align=["l"] + ["r"] * (len(headers) - 1),
                pinned=sum(row.kind == "teacher" for row in table.rows),
                notes=_grid_notes(table.rows, sources, published, [table]))


def _long_cells(table: TableData, row: RowData, published: PublishedIndex | None, sources: _Sources) -> list[Cell]:
    cells = [Cell(row.label, row.label), _value_cell(row.mean, row.std, significance_mark(row)),
             _value_cell(row.mean_last, row.std_last), Cell(str(row.n), row.n),
             Cell("" if row.delta is None else f"{row.delta:+.2f}", row.delta)]
    if published is not None:
        cells += _published_cells(published.lookup(table, row), row.mean, sources)
    for cell in cells:
        cell.bold = row.is_best
    return cells


# --- wide layout


def _wide_grid(tables: list[TableData], published: PublishedIndex | None) -> Grid:
    tables = sorted(tables, key=lambda t: (t.dataset, t.teacher_modality, t.student_modality, t.title))
    labels = _column_labels(tables)
    with_published = [published is not None and published.has_any(table) for table in tables]
    headers = ["Method"]
    for label, extra in zip(labels, with_published):
        headers += [label] + ([f"{label} published", f"{label} gap"] if extra else [])
    headers.append("avg rank")
    ranks = average_ranks(tables)
    sources = _Sources()
    rows = [_wide_teacher_cells(tables, with_published, published, sources)]
    rows += [_wide_method_cells(label, tables, with_published, published, sources, ranks.get(label))
             for label in _wide_row_order(tables, ranks)]
    all_rows = [row for table in tables for row in table.rows]
    notes = [RANK_NOTE] + _grid_notes(all_rows, sources, published if any(with_published) else None, tables)
    return Grid(title=_wide_title(tables), headers=headers, rows=rows,
                align=["l"] + ["r"] * (len(headers) - 1), pinned=1, notes=notes)


def _wide_title(tables: list[TableData]) -> str:
    metrics = sorted({table.metric for table in tables})
    metric = metrics[0] if len(metrics) == 1 else "/".join(metrics)
    return f"test {metric} (%) at the best-validation epoch, mean ± std over seeds; one column per table"


def _column_labels(tables: list[TableData]) -> list[str]:
    short = [f"{table.dataset} {table.teacher_modality}→{table.student_modality}" for table in tables]
    labels = []
    for label, table in zip(short, tables):
        # Tables that share dataset and direction differ in protocol: add the parts of their
        # titles (metric, backbones, settings) that are not the same in all of them.
        twins = [t.title.split(" · ")[2:] for s, t in zip(short, tables) if s == label]
        parts = [part for part in table.title.split(" · ")[2:] if not all(part in twin for twin in twins)]
        labels.append(" · ".join([label, *parts]))
    return labels


def _method_rows(table: TableData) -> dict[str, RowData]:
    return {row.label: row for row in table.rows if row.kind == "method"}


def _wide_row_order(tables: list[TableData], ranks: dict[str, tuple[float, int]]) -> list[str]:
    labels = sorted({label for table in tables for label in _method_rows(table)})
    no_kd = [label for label in labels if any(_method_rows(t).get(label, _NO_ROW).method == NO_KD for t in tables)]
    others = sorted((label for label in labels if label not in no_kd),
                    key=lambda label: (ranks.get(label, (math.inf, 0))[0], label))
    return no_kd + others


def _wide_teacher_cells(tables: list[TableData], with_published: list[bool], published: PublishedIndex | None,
                        sources: _Sources) -> list[Cell]:
    cells = [Cell("teacher (own modality)", "teacher")]
    for table, extra in zip(tables, with_published):
        teacher = next((row for row in table.rows if row.kind == "teacher"), None)
        cells.append(_value_cell(teacher.mean, teacher.std) if teacher else Cell(MISSING))
        if extra:
            value = published.lookup(table, teacher) if (published and teacher) else None
            cells += _published_cells(value, teacher.mean if teacher else None, sources)
    return cells + [Cell("")]


def _wide_method_cells(label: str, tables: list[TableData], with_published: list[bool],
                       published: PublishedIndex | None, sources: _Sources,
                       rank: tuple[float, int] | None) -> list[Cell]:
    cells = [Cell(label, label)]
    for table, extra in zip(tables, with_published):
        row = _method_rows(table).get(label)
        if row is None:
            cells.append(Cell(MISSING))
        else:
            cells.append(_value_cell(row.mean, row.std, significance_mark(row)))
            cells[-1].bold = row.is_best
        if extra:
            value = published.lookup(table, row) if (published and row) else None
            cells += _published_cells(value, row.mean if row else None, sources)
    cells.append(_rank_cell(rank, len(tables)))
    return cells


def _rank_cell(rank: tuple[float, int] | None, columns: int) -> Cell:
    if rank is None:
        return Cell(MISSING)
    mean_rank, count = rank
    return Cell(f"{mean_rank:.2f}" + (f" ({count}/{columns})" if count < columns else ""), mean_rank)


def average_ranks(tables: Sequence[TableData]) -> dict[str, tuple[float, int]]:
    """Per method row label: (mean rank over the tables it is in, how many tables)."""
    per_label: dict[str, list[float]] = {}
    for table in tables:
        rows = [row for row in table.rows if row.kind == "method" and row.mean is not None]
        for row, rank in zip(rows, tied_ranks([row.mean for row in rows])):
            per_label.setdefault(row.label, []).append(rank)
    return {label: (statistics.mean(ranks), len(ranks)) for label, ranks in per_label.items()}


def tied_ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 for the highest value; equal values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


_NO_ROW = RowData(label="", kind="", method="", hparams={}, values=[], last_values=[], sources=[], mean=None,
                  std=None, n=0, mean_last=None, std_last=None)


def _failed_grid(failed: list[dict[str, Any]]) -> Grid:
    rows = [[Cell(text, text) for text in _failed_cells(record)] for record in failed]
    return Grid(title="failed runs", headers=list(FAILED_HEADERS), rows=rows, align=["l"] * 4 + ["r", "l"])


# --- rendering grids


def _render_grids(tables: list[TableData], failed: list[dict[str, Any]], fmt: str, layout: str,
                  published: PublishedIndex | None, paths: Sequence[str | Path] | None, width: int) -> str:
    if fmt == "csv":
        return _render_wide_csv(tables, published) if layout == "wide" else _render_csv(tables, published)
    grids = _grids(tables, layout, published)
    if fmt == "rich":
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
        _print_rich(console, _grid_renderables(grids, failed, paths))
        return buffer.getvalue()
    blocks = [_GRID_RENDERERS[fmt](grid) for grid in grids]
    if not grids:
        blocks.append(_no_data_block(fmt, _no_completed_message(paths)))
    if failed:
        blocks.append(_GRID_RENDERERS[fmt](_failed_grid(failed)))
    if fmt == "html":
        return _html_document(blocks)
    return "\n\n".join(blocks) + "\n"


def _no_data_block(fmt: str, message: str) -> str:
    return {"md": message, "latex": "% " + message, "html": f"<p>{html.escape(message)}</p>"}[fmt]


def _md_grid(grid: Grid) -> str:
    rule = "|" + "|".join("---:" if align == "r" else "---" for align in grid.align) + "|"
    lines = [f"### {grid.title}", "", _md_line(grid.headers), rule]
    lines += [_md_line(f"**{cell.text}**" if cell.bold and cell.text else cell.text for cell in row)
              for row in grid.rows]
    if grid.notes:
        lines += [""] + [f"- {note}" for note in grid.notes]
    return "\n".join(lines)


def _latex_grid(grid: Grid) -> str:
    columns = len(grid.headers)
    lines = [rf"\begin{{tabular}}{{{''.join(grid.align)}}}", r"\toprule",
             rf"\multicolumn{{{columns}}}{{l}}{{{latex_escape(grid.title)}}} \\", r"\midrule",
             _latex_line(latex_escape(header) for header in grid.headers), r"\midrule"]
    for index, row in enumerate(grid.rows):
        lines.append(_latex_line(rf"\textbf{{{latex_escape(c.text)}}}" if c.bold and c.text else latex_escape(c.text)
                                 for c in row))
        if index + 1 == grid.pinned:
            lines.append(r"\midrule")
    lines.append(r"\bottomrule")
    lines += [rf"\multicolumn{{{columns}}}{{l}}{{\footnotesize {latex_escape(note)}}} \\" for note in grid.notes]
    lines.append(r"\end{tabular}")
    return "\n".join(lines)


def _rich_grid(grid: Grid) -> Table:
    rich_table = Table()
    for header, align in zip(grid.headers, grid.align):
        rich_table.add_column(header, justify="right" if align == "r" else "left", overflow="fold")
    for index, row in enumerate(grid.rows):
        rich_table.add_row(*(Text(cell.text, style="bold" if cell.bold else "") for cell in row),
                           end_section=index + 1 == grid.pinned)
    return rich_table


def _grid_renderables(grids: list[Grid], failed: list[dict[str, Any]],
                      paths: Sequence[str | Path] | None) -> list[RenderableType]:
    renderables: list[RenderableType] = []
    for grid in grids:
        renderables += [Text(grid.title, style="italic"), _rich_grid(grid)]
        renderables += [Text(note, style="dim") for note in grid.notes]
    if not grids:
        renderables.append(Text(_no_completed_message(paths)))
    if failed:
        renderables += [Text("failed runs", style="italic red"), _rich_failed(failed)]
    return renderables


def _html_grid(grid: Grid) -> str:
    head = "".join(f'<th class="{_html_align(a)}" title="click to sort">{html.escape(h)}</th>'
                   for h, a in zip(grid.headers, grid.align))
    pinned = "".join(_html_row(row, grid.align) for row in grid.rows[:grid.pinned])
    body = "".join(_html_row(row, grid.align) for row in grid.rows[grid.pinned:])
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in grid.notes)
    return (f"<h2>{html.escape(grid.title)}</h2>\n<table class=\"sortable\"><thead><tr>{head}</tr></thead>"
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


def _html_document(blocks: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>cmkd-bench leaderboard</title>\n"
            f"<style>{_HTML_STYLE}</style>\n</head>\n<body>\n<h1>cmkd-bench leaderboard</h1>\n"
            + "\n".join(blocks) + f"\n<script>{_HTML_SCRIPT}</script>\n</body>\n</html>\n")


_GRID_RENDERERS = {"md": _md_grid, "latex": _latex_grid, "html": _html_grid}


# --- wide csv: one line per method, a group of columns per table


def _render_wide_csv(tables: list[TableData], published: PublishedIndex | None) -> str:
    tables = sorted(tables, key=lambda t: (t.dataset, t.teacher_modality, t.student_modality, t.title))
    labels = [label.replace("→", "->") for label in _column_labels(tables)]
    ranks = average_ranks(tables)
    fields = ["method", "hparams", "kind", "selection", "avg_rank", "ranked_columns"]
    for label in labels:
        fields += [f"{label} {part}" for part in ("mean", "std", "n", "p_vs_nokd")]
        if published is not None:
            fields += [f"{label} {part}" for part in PUBLISHED_CSV_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    teacher_rows = [next((row for row in table.rows if row.kind == "teacher"), None) for table in tables]
    writer.writerow(_wide_csv_line("teacher", {}, "teacher", None, tables, labels, teacher_rows, published))
    for label in _wide_row_order(tables, ranks):
        rows = [_method_rows(table).get(label) for table in tables]
        first = next(row for row in rows if row is not None)
        line = _wide_csv_line(first.method, first.hparams, "method", ranks.get(label), tables, labels, rows, published)
        writer.writerow({**line, "selection": first.selection})
    return buffer.getvalue()


def _wide_csv_line(method: str, hparams: dict[str, Any], kind: str, rank: tuple[float, int] | None,
                   tables: list[TableData], labels: list[str], rows: list[RowData | None],
                   published: PublishedIndex | None) -> dict[str, str]:
    line = {"method": method, "hparams": "" if kind == "teacher" else _canonical(hparams), "kind": kind, "selection": "",
            "avg_rank": _number(rank[0] if rank else None), "ranked_columns": str(rank[1]) if rank else ""}
    for table, label, row in zip(tables, labels, rows):
        line.update({f"{label} mean": _number(row.mean if row else None),
                     f"{label} std": _number(row.std if row else None),
                     f"{label} n": str(row.n) if row else "",
                     f"{label} p_vs_nokd": _number(row.p_value if row else None, digits=6)})
        if published is not None:
            cells = _published_csv_cells(published.lookup(table, row) if row else None, row or _NO_ROW)
            line.update({f"{label} {name}": value for name, value in cells.items()})
    return line
