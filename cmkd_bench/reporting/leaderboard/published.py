"""Numbers published in papers (published.csv, shipped with the package), matched to our rows.

Published numbers are shown beside ours in columns of their own, labelled as published, with the
gap to our mean; `grid.published_grid` shows them alone for datasets this suite has no records of.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...artefacts import records as rec
from ...errors import UserError
from .summary import RowData, TableData

PUBLISHED_COLUMNS = ("method", "dataset", "teacher_modality", "student_modality", "metric", "value",
                     "source", "table", "confidence")
LEGACY_PUBLISHED_COLUMNS = PUBLISHED_COLUMNS[:-1]  # files from before the confidence column: primary
CONFIDENCES = ("primary", "secondary")  # read in the paper itself / taken from a secondary source
PUBLISHED_METRICS = tuple(rec.METRIC_NAMES.values())  # top1, miou
TEACHER_METHOD = "teacher"  # the method name of a published teacher (own-modality) number
# Package data, so that an installed wheel has it; leaderboard/published.csv links here.
DEFAULT_PUBLISHED = Path(__file__).resolve().parent / "published.csv"


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
        raise UserError(f"{path}: cannot read published values ({rec.one_line(error)}); pass a CSV file") from None
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


def published_index(published: Sequence[PublishedValue] | None) -> PublishedIndex | None:
    return None if published is None else PublishedIndex(published)
