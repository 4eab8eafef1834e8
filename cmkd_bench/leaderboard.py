"""Leaderboard: run records (`result.json`) turned into tables of mean ± std over seeds.

A table holds only records that share dataset, task, direction, backbones, data options and
recipe, so that no number is ever averaged with one trained under a different protocol. The
teacher and the no-KD student are always rows (DESIGN.md, Protocol), and failed runs are listed
after the tables rather than hidden.

`summarize` is the data API; `render` turns it into rich, md, csv or latex text, and
`print_leaderboard` is what the CLI calls.
"""

from __future__ import annotations

import csv
import io
import json
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

FORMATS = ("rich", "md", "csv", "latex")
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
)
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


def summarize(records: Iterable[dict[str, Any]]) -> list[TableData]:
    """Group completed records into tables of rows; failed records are left out (see `failed_runs`)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") == "completed":
            groups.setdefault(_table_key(record), []).append(record)
    keys = sorted(groups)
    extras = _distinguishing_settings([groups[key][0] for key in keys])
    return [_build_table(groups[key], extra) for key, extra in zip(keys, extras)]


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


def _build_table(records: list[dict[str, Any]], extra: list[str]) -> TableData:
    first = records[0]
    table = TableData(
        title="", dataset=first["dataset"], task=first["task"], metric=_metric_name(first),
        teacher_modality=first["teacher_modality"], student_modality=first["student_modality"],
        student_backbone=first["student_backbone"], teacher_backbone=first["teacher_backbone"],
        data_options=_data_options(first), recipe=_recipe(first),
    )
    table.title = _title(table, extra)
    per_row = _latest_per_seed(records)
    method_rows = [_method_row(row_records) for row_records in per_row.values()]
    _set_deltas(method_rows)
    _mark_best(method_rows)
    kept = [record for row_records in per_row.values() for record in row_records]
    table.rows = [_teacher_row(table, kept), *_ordered(method_rows)]
    return table


def _title(table: TableData, extra: list[str]) -> str:
    parts = [
        table.dataset, table.direction, f"{table.metric} (%)",
        f"student {table.student_backbone}, teacher {table.teacher_backbone}", *extra,
    ]
    return " · ".join(parts)


def _latest_per_seed(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per row, one record per seed: the most recent, since an older one was the same run repeated."""
    latest: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
    for record in records:
        seeds = latest.setdefault(_row_key(record), {})
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


def _method_row(records: list[dict[str, Any]]) -> RowData:
    first = records[0]
    hparams = _hparams_changed(first)
    label = str(first["method"]) + (f" ({_hparams_text(hparams)})" if hparams else "")
    return _row(
        label, "method", str(first["method"]), hparams,
        values=[_metric(r, "test") for r in records],
        last_values=[v for v in (_metric(r, "test_last") for r in records) if _is_number(v)],
        sources=[str(r["run_id"]) for r in records],
    )


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
    no_kd = sorted((row for row in rows if row.method == NO_KD), key=lambda row: bool(row.hparams))
    return no_kd[0] if no_kd else None


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
           width: int = 120) -> str:
    """The leaderboard as text in `fmt` (one of FORMATS); rich output is plain, without colour codes."""
    _check_format(fmt)
    tables, failed = summarize(records), failed_runs(records)
    if fmt == "csv":
        return _render_csv(tables)
    if fmt == "md":
        return _render_md(tables, failed, paths)
    if fmt == "latex":
        return _render_latex(tables, failed, paths)
    return _render_rich_text(tables, failed, paths, width)


def print_leaderboard(records: Sequence[dict[str, Any]], fmt: str, output_path: str | Path | None = None,
                      *, paths: Sequence[str | Path] | None = None, console: Console | None = None) -> None:
    """Print the leaderboard (rich: styled, to the terminal) or write it to `output_path`."""
    _check_format(fmt)
    console = console or Console()
    if output_path is not None:
        _write(Path(output_path), render(records, fmt, paths=paths))
        console.print(Text(f"wrote {fmt} leaderboard to {output_path}"))
    elif fmt == "rich":
        _print_rich(console, _rich_renderables(summarize(records), failed_runs(records), paths))
    else:
        console.file.write(render(records, fmt, paths=paths))
    if fmt == "csv":
        _print_csv_notes(records, paths)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown leaderboard format {fmt!r}; choose one of {', '.join(FORMATS)}")


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


def _render_csv(tables: list[TableData]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        writer.writerows(_csv_row(table, row) for row in table.rows)
    return buffer.getvalue()


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
        "recipe": _canonical(table.recipe),
    }


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


# --- latex

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "→": r"$\rightarrow$", "·": r"$\cdot$", "—": "--", "Δ": r"$\Delta$",
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
