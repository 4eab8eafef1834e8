"""CSV, for machines: the long layout as one flat table (a line per row of every table), the wide
layout as a line per method with a group of columns per table (the wide grid's columns, rows and
ranks). Numbers carry more digits than the grids' two: 4, and 6 for p-values."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from ...artefacts import records as rec
from .grid import (NO_ROW, aggregate, average_ranks, column_labels, coverage, method_rows, rank_summary,
                   wide_row_order, wide_tables)
from .summary import RowData, TableData, canonical

if TYPE_CHECKING:
    from .published import PublishedIndex, PublishedValue

CSV_COLUMNS = (
    "dataset", "task", "direction", "student_backbone", "teacher_backbone", "metric", "method",
    "hparams", "mean", "std", "n", "mean_last", "std_last", "delta_vs_nokd", "is_best", "kind",
    # Beyond the summary columns: without these, two tables that differ only in recipe or data
    # options would give CSV rows that cannot be told apart.
    "data_options", "recipe",
    # Against no-KD, paired by seed (the seeds both rows have): the mean difference, its 95% CI, the paired
    # t-test's p and that p Holm-adjusted within the table (what the marks read); empty below 2 pairs
    "delta", "delta_ci_low", "delta_ci_high", "p_paired", "p_holm",
    "selection",  # default, or tuned (the configuration the tuning protocol selected on val)
    "protocol",  # the tuning protocol of the table's records: 1, or 2 (protocol.protocol_version)
    # where each number came from: the rows' run ids (the teacher row: its teachers' keys), ";"-separated; the
    # markdown leaves them out. A row that repeats another row's configuration names it in same_as
    "run_ids", "same_as",
)
PUBLISHED_CSV_COLUMNS = ("published", "published_source", "gap_vs_published")
AGGREGATE_FIELDS = ("iqm_delta", "iqm_delta_ci_low", "iqm_delta_ci_high", "p_improvement")  # grid.AGGREGATE_NOTE


def long_csv(tables: list[TableData], published: PublishedIndex | None = None) -> str:
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
        "direction": rec.direction_label(table.teacher_modality, table.student_modality, "ascii"),
        "student_backbone": table.student_backbone, "teacher_backbone": table.teacher_backbone,
        "metric": table.metric, "method": row.method,
        "hparams": "" if row.kind == "teacher" else canonical(row.hparams),
        "mean": _number(row.mean), "std": _number(row.std), "n": str(row.n),
        "mean_last": _number(row.mean_last), "std_last": _number(row.std_last),
        "delta_vs_nokd": _number(row.delta), "is_best": "true" if row.is_best else "false",
        "kind": row.kind, "data_options": canonical(table.data_options),
        "recipe": canonical(table.recipe), **_paired_cells(row),
        "selection": "" if row.kind == "teacher" else row.selection,
        "protocol": str(table.protocol), "run_ids": ";".join(row.sources), "same_as": row.same_as or "",
    }


def _paired_cells(row: RowData) -> dict[str, str]:
    paired = row.paired
    return {"delta": _number(paired.mean if paired else None),
            "delta_ci_low": _number(paired.ci_low if paired else None),
            "delta_ci_high": _number(paired.ci_high if paired else None),
            "p_paired": _number(row.p_value, digits=6), "p_holm": _number(row.p_holm, digits=6)}


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def wide_csv(tables: list[TableData], published: PublishedIndex | None) -> str:
    tables = wide_tables(tables)
    labels = [label.replace(rec.ARROW, rec.ASCII_ARROW) for label in column_labels(tables)]
    ranks = average_ranks(tables, rank_summary(tables))
    # avg_rank is over the common columns (ranked_columns of them); columns: how many the method has
    fields = ["method", "hparams", "kind", "selection", "protocol", "avg_rank", "ranked_columns", "columns",
              *AGGREGATE_FIELDS]
    for label in labels:
        fields += [f"{label} {part}" for part in ("mean", "std", "n", "delta", "p_holm")]
        if published is not None:
            fields += [f"{label} {part}" for part in PUBLISHED_CSV_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    teacher_rows = [next((row for row in table.rows if row.kind == "teacher"), None) for table in tables]
    writer.writerow(_wide_csv_line("teacher", {}, "teacher", None, tables, labels, teacher_rows, published))
    for label in wide_row_order(tables, ranks):
        rows = [method_rows(table).get(label) for table in tables]
        first = next(row for row in rows if row is not None)
        line = _wide_csv_line(first.method, first.hparams, "method", ranks.get(label), tables, labels, rows, published)
        writer.writerow({**line, "selection": first.selection, "columns": str(coverage(tables)[label]),
                         **_aggregate_cells(label, tables)})
    return buffer.getvalue()


def _wide_csv_line(method: str, hparams: dict[str, Any], kind: str, rank: tuple[float, int] | None,
                   tables: list[TableData], labels: list[str], rows: list[RowData | None],
                   published: PublishedIndex | None) -> dict[str, str]:
    line = {"method": method, "hparams": "" if kind == "teacher" else canonical(hparams), "kind": kind, "selection": "",
            "protocol": str(max((table.protocol for table in tables), default=1)),
            "avg_rank": _number(rank[0] if rank else None), "ranked_columns": str(rank[1]) if rank else "",
            "columns": "", **dict.fromkeys(AGGREGATE_FIELDS, "")}
    for table, label, row in zip(tables, labels, rows):
        line.update({f"{label} mean": _number(row.mean if row else None),
                     f"{label} std": _number(row.std if row else None),
                     f"{label} n": str(row.n) if row else "",
                     f"{label} delta": _number(row.paired.mean if row and row.paired else None),
                     f"{label} p_holm": _number(row.p_holm if row else None, digits=6)})
        if published is not None:
            cells = _published_csv_cells(published.lookup(table, row) if row else None, row or NO_ROW)
            line.update({f"{label} {name}": value for name, value in cells.items()})
    return line


def _aggregate_cells(label: str, tables: list[TableData]) -> dict[str, str]:
    result = aggregate(label, tables)
    values = (result.iqm, result.ci_low, result.ci_high, result.p_improvement)
    return {name: _number(value) for name, value in zip(AGGREGATE_FIELDS, values)}
