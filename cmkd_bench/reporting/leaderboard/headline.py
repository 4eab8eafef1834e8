"""The headline: what `cmkd-bench leaderboard` prints first, and what LEADERBOARD.md and the README open with.

Protocol v2's tuned rows only: each method's selected configuration (a reported record with a "selected"
tuning entry) against no-kd's tuned recipe, the reference. One column per table (a dataset and direction;
a multimodal teacher's direction, "audio+visual→visual", is a column of its own, never merged with a
unimodal teacher's); a cell is the method's mean test score over the reported seeds and, in brackets, its
paired difference to no-kd with the Student-t 95% CI and the Holm mark within the column (the statistics
of `summary`, so that the per-direction tables say the same); per method, the IQM of its per-seed
differences across its columns with a stratified bootstrap CI and the probability of improvement. Above
the table, two or three sentences computed from the same numbers (`takeaway`).

A configuration that two presets share (their rows are the same runs, or the same settings with the same
scores, in every column both have) is one row, labelled with both names ("at / at-all-stages"); where they
coincide in some columns only, the second row's cell refers to the first ("= at").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ...artefacts import records as rec
from .. import statistics as stats
from .grid import (AGGREGATE_HEADERS, BETTER_MARK, MISSING, SIGNIFICANCE_LEVEL, STALE_MARK, WORSE_MARK, Aggregate, Cell,
                   Grid, column_labels, paired_text, significance_mark, wide_tables)
from .protocol import REPORTED, protocol_of, protocol_role, protocol_title, protocol_version
from .summary import NO_KD, RowData, TableData, _no_kd_baseline, summarize

HEADLINE_PROTOCOL = 2  # the first protocol whose rows are all tuned (no-kd's recipe included)
REFERENCE_LABEL = "no-kd (tuned recipe)"


@dataclass
class HeadlineCell:
    row: RowData  # the method's tuned row in this column (its statistics against the column's no-kd)
    same_as: str | None = None  # the headline row that shows the same configuration in this column

    @property
    def mark(self) -> str:
        return "" if self.same_as else significance_mark(self.row)


@dataclass
class HeadlineRow:
    label: str  # a method, "at / at-all-stages" for a shared configuration, or REFERENCE_LABEL
    methods: tuple[str, ...]
    cells: list[HeadlineCell | None]  # per column; None where the method has no tuned row there
    reference: bool = False
    aggregate: Aggregate | None = None  # None for the reference


@dataclass
class Headline:
    columns: list[str]  # labels, in the order of `tables`
    tables: list[TableData]
    rows: list[HeadlineRow]  # the reference first, then by IQM Δ (highest first)
    sentences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    title: str = ""

    @property
    def reference(self) -> HeadlineRow | None:
        return next((row for row in self.rows if row.reference), None)

    @property
    def methods(self) -> list[HeadlineRow]:
        return [row for row in self.rows if not row.reference]


def is_selected(record: dict[str, Any]) -> bool:
    """A reported protocol v2 record of a selected configuration (no-kd's: of the tuned recipe)."""
    return (protocol_version(record) >= HEADLINE_PROTOCOL and protocol_role(record) == REPORTED
            and any(entry.get("role") == "selected" for entry in rec.tuning_entries(record)))


def headline_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The completed records the headline is made of (see `is_selected`)."""
    return [record for record in records if record.get("status") == "completed" and is_selected(record)]


def build_headline(records: Sequence[dict[str, Any]]) -> Headline | None:
    """The headline of `records` (of one protocol: `protocol.split_protocols`), or None without any
    tuned protocol v2 row."""
    chosen = headline_records(records)
    if not chosen:
        return None
    tables = wide_tables(summarize(chosen, "tuned"))
    columns = headline_columns(tables)
    per_table = [{row.method: row for row in table.rows if row.kind == "method" and row.method != NO_KD}
                 for table in tables]
    groups = _groups(per_table)
    group_of = {method: group for group in groups for method in group}
    rows = []
    for group in groups:
        cells = [_cell(group, methods, group_of) for methods in per_table]
        if any(cells):
            rows.append(HeadlineRow(" / ".join(group), group, cells))
    baselines = [_no_kd_baseline([row for row in table.rows if row.kind == "method"]) for table in tables]
    for row in rows:
        row.aggregate = _aggregate(row, baselines)
    rows.sort(key=lambda row: (row.aggregate is None or row.aggregate.iqm is None,
                               -(row.aggregate.iqm or 0.0) if row.aggregate else 0.0, row.label))
    if any(baselines):
        reference = HeadlineRow(REFERENCE_LABEL, (NO_KD,), [HeadlineCell(b) if b else None for b in baselines],
                                reference=True)
        rows.insert(0, reference)
    headline = Headline(columns, tables, rows)
    headline.title = headline_title(tables)
    headline.sentences = takeaway(headline)
    headline.notes = headline_notes(headline, chosen)
    return headline


def headline_columns(tables: Sequence[TableData]) -> list[str]:
    """The tables' column labels: dataset and direction ("synth-av audio→visual"; a multimodal teacher's,
    "audio+visual→visual", is a column of its own), and what tells apart two tables that share them."""
    return column_labels(list(tables))


def _same(a: RowData, b: RowData) -> bool:
    return a.same_as == b.label or b.same_as == a.label or (a.same_as is not None and a.same_as == b.same_as)


def _groups(per_table: list[dict[str, RowData]]) -> list[tuple[str, ...]]:
    """The methods, with those whose tuned rows are the same configuration in every column both have
    (at least one) joined into one group."""
    methods = sorted({method for rows in per_table for method in rows})
    parent = {method: method for method in methods}

    def root(method: str) -> str:
        while parent[method] != method:
            method = parent[method]
        return method

    for index, a in enumerate(methods):
        for b in methods[index + 1:]:
            shared = [rows for rows in per_table if a in rows and b in rows]
            if shared and all(_same(rows[a], rows[b]) for rows in shared):
                parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for method in methods:
        groups.setdefault(root(method), []).append(method)
    return [tuple(group) for group in groups.values()]


def _cell(group: tuple[str, ...], rows: dict[str, RowData],
          group_of: dict[str, tuple[str, ...]]) -> HeadlineCell | None:
    present = [rows[method] for method in group if method in rows]
    if not present:
        return None
    row = next((row for row in present if row.same_as is None), present[0])
    if row.same_as is None:
        return HeadlineCell(row)
    by_label = {other.label: other for other in rows.values()}
    twin = by_label.get(row.same_as)
    if twin is None or twin.method in group:
        return HeadlineCell(row)
    return HeadlineCell(row, " / ".join(group_of[twin.method]))


def _aggregate(row: HeadlineRow, baselines: Sequence[RowData | None]) -> Aggregate:
    """IQM Δ with its stratified bootstrap CI and P(improvement), over the row's columns (grid.AGGREGATE_NOTE)."""
    differences, pairs = [], []
    for cell, baseline in zip(row.cells, baselines):
        if cell is None or baseline is None:
            continue
        if cell.row.paired is not None and cell.row.paired.n:
            differences.append(cell.row.paired.differences)
        pairs.append((cell.row.values, baseline.values))
    improvement = stats.probability_of_improvement(pairs)
    if not differences:
        return Aggregate(None, None, None, improvement)
    return Aggregate(*stats.stratified_bootstrap_iqm(differences), improvement)


# ---------------------------------------------------------------------------------------------
# Text


def headline_title(tables: Sequence[TableData]) -> str:
    metrics = "/".join(sorted({table.metric for table in tables}))
    return (f"Headline: each method's tuned configuration against the tuned no-kd, test {metrics} (%) "
            f"· {protocol_title(HEADLINE_PROTOCOL)}")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def takeaway(headline: Headline) -> list[str]:
    """Two or three sentences, from the headline's own numbers: which methods beat no-kd after Holm's
    correction and in which columns, where none does (and how many cells are worse), and the aggregate
    leader by IQM Δ, with whether its CI excludes 0."""
    if not headline.methods:
        return [f"No tuned method has a row yet; only {REFERENCE_LABEL} is measured."]
    better: dict[str, list[str]] = {}
    worse = tested = 0
    beaten = set()
    for row in headline.methods:
        for column, cell in zip(headline.columns, row.cells):
            if cell is None or cell.same_as or cell.row.p_holm is None:
                continue
            tested += 1
            if cell.mark == BETTER_MARK:
                better.setdefault(row.label, []).append(column)
                beaten.add(column)
            elif cell.mark == WORSE_MARK:
                worse += 1
    level = f"Holm-adjusted p < {SIGNIFICANCE_LEVEL} within the column"
    if better:
        by_columns: dict[tuple[str, ...], list[str]] = {}  # methods that beat it in the same columns, together
        for label, columns in better.items():
            by_columns.setdefault(tuple(columns), []).append(label)
        parts = [f"{_join(labels)} in {_join(columns)}" for columns, labels in by_columns.items()]
        sentences = [f"After correction ({level}), these beat the tuned no-kd: {'; '.join(parts)}."]
        rest = [column for column in headline.columns if column not in beaten]
        second = f"In {_join(rest)} no method does" if rest else ""
    else:
        sentences = [f"No method beats the tuned no-kd in any of the {len(headline.columns)} "
                     f"column{'s' if len(headline.columns) != 1 else ''} after correction ({level})."]
        second = ""
    if worse:
        cells = f"{worse} of the {tested} tested method-column cells {'is' if worse == 1 else 'are'} significantly worse"
        second = f"{second}; {cells}" if second else cells[0].upper() + cells[1:]
    if second:
        sentences.append(second + ".")
    sentences.append(_leader_sentence(headline))
    if stale := _stale_cells(headline):
        cells = sum(len(columns) for columns in stale.values())
        sentences.append(f"{STALE_MARK}: {cells} cell{'s' if cells != 1 else ''} hold{'s' if cells == 1 else ''} records "
                         "made under another code revision, environment or teacher than most of their column's, whose "
                         f"pairing with no-kd may not compare like with like (rows: {_join(list(stale))}; the "
                         "provenance appendix says what differs).")
    return sentences


def _stale_cells(headline: Headline) -> dict[str, list[str]]:
    """Row label -> the columns whose cell holds a record that summary marks stale (another environment,
    code revision or teacher than most of its table's)."""
    stale: dict[str, list[str]] = {}
    for row in headline.rows:
        for column, cell in zip(headline.columns, row.cells):
            if cell is not None and not cell.same_as and cell.row.stale:
                stale.setdefault(row.label, []).append(column)
    return stale


def _leader_sentence(headline: Headline) -> str:
    ranked = [row for row in headline.methods if row.aggregate is not None and row.aggregate.iqm is not None]
    if not ranked:
        return "No method has paired seeds with no-kd: no aggregate gain to report."
    leader = max(ranked, key=lambda row: row.aggregate.iqm)  # the first of the rows' order on a tie
    result = leader.aggregate
    columns = sum(cell is not None for cell in leader.cells)
    chance = "" if result.p_improvement is None else f"; P({leader.label} > no-kd) = {result.p_improvement:.2f}"
    where = f"over its {columns} column{'s' if columns != 1 else ''}"
    if result.ci_low is None or result.ci_high is None:
        return (f"Across columns the highest IQM Δ is {leader.label}'s, {result.iqm:+.2f} points {where}, "
                f"without a CI (fewer than 2 paired seeds){chance}.")
    interval = f"{result.iqm:+.2f} points [95% CI {result.ci_low:+.2f}, {result.ci_high:+.2f}] {where}"
    if result.ci_low > 0:
        return f"Across columns {leader.label} leads by IQM Δ, {interval}, an interval that excludes 0{chance}."
    if result.ci_high < 0:
        return (f"Across columns even the highest IQM Δ, {leader.label}'s {interval}, is below 0 with a CI that "
                f"excludes 0: no method gains on aggregate{chance}.")
    return (f"Across columns {leader.label} leads by IQM Δ, {interval}, but the interval includes 0: no aggregate "
            f"gain is established{chance}.")


def _seeds_text(seeds: Sequence[Any]) -> str:
    values = sorted(seeds, key=lambda seed: (not rec.is_number(seed), seed if rec.is_number(seed) else str(seed)))
    numbers = [int(seed) for seed in values if rec.is_number(seed) and float(seed).is_integer()]
    if len(numbers) == len(values) > 2 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(str(seed) for seed in values)


def headline_notes(headline: Headline, records: Sequence[dict[str, Any]]) -> list[str]:
    """How to read the table, in three lines: the cell, the rows' protocol, the aggregate."""
    seeds = {seed for record in records for seed in (protocol_of(record).get("reported_seeds") or [])}
    seeds |= {record["seed"] for record in records}
    selection = sorted({str(protocol_of(record).get("selection_seed")) for record in records
                        if protocol_of(record).get("selection_seed") is not None})
    budgets = sorted({str(protocol_of(record).get("budget")) for record in records
                      if protocol_of(record).get("budget") is not None})
    notes = [f"Cell: mean test score over the reported seeds ({_seeds_text(seeds)}), then (Δ [95% CI] mark): the "
             "mean paired difference to no-kd (same seed: same teacher and data order) with its Student-t CI; "
             f"{BETTER_MARK} / {WORSE_MARK}: better / worse than no-kd, Holm-adjusted p < {SIGNIFICANCE_LEVEL} "
             f"within the column. {REFERENCE_LABEL}: mean ± std. {MISSING}: no tuned row there.",
             f"Rows: each method's configuration chosen on validation, on selection seed "
             f"{' / '.join(selection) or '?'} (never reported), among {' / '.join(budgets) or '?'} configurations of "
             "its search space; no-kd's recipe (learning rate, weight decay) was tuned the same way and every row "
             "uses it.",
             f"{AGGREGATE_HEADERS[0]}: the interquartile mean of the per-seed differences to no-kd over the method's "
             f"columns, stratified bootstrap CI ({stats.BOOTSTRAP_REPS} resamples, fixed seed); {AGGREGATE_HEADERS[1]}: "
             "the probability that a seed of the method beats a seed of no-kd, averaged over its columns "
             "(Agarwal et al. 2021)."]
    if any(" / " in row.label for row in headline.methods):
        notes.append("A / B: presets whose selected configurations are the same runs (or the same settings with the "
                     "same scores) in every column both have, shown once.")
    if any(cell is not None and cell.same_as for row in headline.methods for cell in row.cells):
        notes.append("= X: the same configuration as X's row in that column, shown there once.")
    return notes


# ---------------------------------------------------------------------------------------------
# As a grid (every format renders it)


def headline_cell_text(cell: HeadlineCell | None, reference: bool = False) -> str:
    if cell is None:
        return MISSING
    row = cell.row
    if row.mean is None:
        return MISSING
    stale = f" {STALE_MARK}" if row.stale else ""
    if reference:
        return (f"{row.mean:.2f}" if row.std is None else f"{row.mean:.2f} ± {row.std:.2f}") + stale
    if cell.same_as:
        return f"= {cell.same_as}"
    paired = paired_text(row)
    inner = " ".join(part for part in (paired, cell.mark) if part)
    return (f"{row.mean:.2f} ({inner})" if inner else f"{row.mean:.2f}") + stale


def aggregate_text(result: Aggregate | None) -> tuple[str, str]:
    if result is None:
        return "", ""
    if result.iqm is None or (isinstance(result.iqm, float) and math.isnan(result.iqm)):
        iqm = ""
    elif result.ci_low is None or result.ci_high is None:
        iqm = f"{result.iqm:+.2f}"
    else:
        iqm = f"{result.iqm:+.2f} [{result.ci_low:+.2f}, {result.ci_high:+.2f}]"
    return iqm, "" if result.p_improvement is None else f"{result.p_improvement:.2f}"


def headline_grid(headline: Headline, *, notes: bool = True) -> Grid:
    headers = ["Method", *headline.columns, *AGGREGATE_HEADERS]
    rows = []
    for row in headline.rows:
        cells = [Cell(row.label, row.label)]
        for cell in row.cells:
            cells.append(Cell(headline_cell_text(cell, row.reference), cell.row.mean if cell else None))
        iqm, improvement = aggregate_text(row.aggregate)
        cells += [Cell(iqm, row.aggregate.iqm if row.aggregate else None),
                  Cell(improvement, row.aggregate.p_improvement if row.aggregate else None)]
        rows.append(cells)
    shown = list(headline.notes) if notes else []
    return Grid(title=headline.title, headers=headers, rows=rows, align=["l"] + ["r"] * (len(headers) - 1),
                pinned=1 if headline.reference else 0, notes=shown, paper_notes=shown, lead=list(headline.sentences))
