"""The grid model: summarised tables laid out as grids of cells, which every format renders.

Two layouts: "long" (a grid per table, a row per method) and "wide" (one grid, a column per
table and a row per method, with the average rank over the common columns and each method's
aggregate gain over no-kd, like Table 1 of the CMKD papers). The statistics are those of
`reporting.statistics`. A grid carries its notes (significance, tuned selections, ranks, published sources);
published numbers, when given, come in columns of their own, labelled, beside ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ...artefacts import records as rec
from .published import TEACHER_METHOD, PublishedIndex, PublishedValue
from .. import statistics as stats
from .protocol import is_candidate, protocol_of, protocol_role, protocol_title, protocol_version
from .summary import NO_KD, RowData, TableData, _no_kd_baseline, hparams_text, value_text

HEADERS = ("Method", "test", "test@last", "seeds (n)", "Δ vs no-KD")
LATEX_HEADERS = ("Method", "test", "test@last", "seeds ($n$)", r"$\Delta$ vs no-KD")  # the plain long grid's
FAILED_HEADERS = ("run", "method", "dataset", "direction", "seed", "error")
MISSING = "—"
BETTER_MARK, WORSE_MARK = "†", "‡"
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_NOTE = (f"{BETTER_MARK} / {WORSE_MARK}: significantly better / worse than no-kd in the same table "
                     "(paired t-test over seeds against no-kd, Holm-adjusted within the column, "
                     f"p < {SIGNIFICANCE_LEVEL}; pairs are the seeds both rows have, and a row with fewer than 2 "
                     "has no test and no mark).")
PUBLISHED_NOTE = ("published: a number reported in the paper cited, not measured by this suite, with its source's "
                  "standing; gap = our mean - published. Published and measured numbers are not the same statistic: "
                  "this suite selects the epoch on validation and reports the student's main head, while, for "
                  "example, FD-CMKD's reference code selects the best epoch on test and takes the maximum over its "
                  "three heads.")
TUNED_NOTE = ("(tuned): the configuration with the best validation score among at most {budget} configurations "
              "of the method's declared search space (the same budget for every method), run on seed {seed} and "
              "then on every seed; test scores are never read for the selection.")
TUNED_NOTE_V2 = ("(tuned): the configuration with the best validation score among the {budget} configurations its "
                 "study evaluated (the same budget for every method; a diverged one counts), chosen on selection "
                 "seed {seed}, which is never reported, then run on the reported seeds; no-kd (tuned recipe): the "
                 "recipe (learning rate, weight decay) tuned the same way on no-kd, which every row uses. Test scores "
                 "are never read for the selection.")
# the long layout's extra columns under protocol v2 (no "[": see AGGREGATE_HEADERS)
DETAIL_HEADERS = ("paired Δ (95% CI)", "p (Holm)")
STALE_MARK = "§"
STALE_PAPER_NOTE = (f"{STALE_MARK}: some of the row's records were made under another environment (library versions, "
                    "CPU threads) or code revision than most records of their table; they may differ by seed noise.")
# `suite` needs a suite file (or --methods and --datasets) to know the runs, so the command names one
STALE_NOTE = (STALE_PAPER_NOTE + " Rerun them with `cmkd-bench suite SUITE.yaml --rerun-stale`, SUITE.yaml being "
              "the suite file that made them (the committed leaderboard's: `python leaderboard/regenerate.py "
              "--rerun-stale`):")
RANK_NOTE = ("avg rank: the rank of the method's mean among the ranked methods of each common column (1 = best, "
             "ties share the mean rank), averaged over the common columns only: the columns every ranked method "
             "has (of the methods' column sets, the one shared by the largest block of methods x columns). A "
             "method lacking a common column has no rank (—) and shows the k of K columns it has (k/K); "
             "unranked methods come after the ranked ones. Bold: the best mean of a column.")
AGGREGATE_HEADERS = ("IQM Δ (95% CI)", "P(> no-kd)")  # no "[": LaTeX reads one after a line break as \\[length]
AGGREGATE_NOTE = ("IQM Δ: the interquartile mean of the method's per-seed differences to no-kd (paired by seed), "
                  "pooled over its columns, with a 95% stratified bootstrap CI (seeds resampled within each column, "
                  f"{stats.BOOTSTRAP_REPS} resamples, fixed seed); P(> no-kd): per column, the probability that a "
                  "seed of the method beats a seed of no-kd (ties count half), averaged over its columns "
                  "(rliable's definitions, Agarwal et al. 2021).")


@dataclass
class Cell:
    text: str
    sort: float | str | None = None  # what html sorts by; None sorts last
    bold: bool = False
    ranked: bool = False  # the number the table ranks by (a mean, its gap to no-kd): all that LaTeX bolds


@dataclass
class Grid:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    align: list[str]  # "l" or "r" per column
    pinned: int = 0  # leading rows (the teacher) kept above a rule and out of html sorting
    notes: list[str] = field(default_factory=list)
    latex_headers: list[str] | None = None  # the header row as LaTeX, where escaping `headers` is not it
    paper_notes: list[str] | None = None  # the notes as a paper prints them (no run ids, no commands); None: notes
    lead: list[str] = field(default_factory=list)  # sentences above the table (the headline's takeaway)


class Sources:
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
    """The mark of the Holm-adjusted paired test; its direction is the mean paired difference's sign."""
    if row.p_holm is None or row.p_holm >= SIGNIFICANCE_LEVEL or row.paired is None or not row.paired.mean:
        return ""
    return BETTER_MARK if row.paired.mean > 0 else WORSE_MARK


def significance_notes(rows: Sequence[RowData]) -> list[str]:
    """SIGNIFICANCE_NOTE and, in words, what holds after correction (DESIGN.md, Protocol)."""
    tested = [row for row in rows if row.p_holm is not None]
    if not tested:
        return []
    marks = [significance_mark(row) for row in tested]
    better, worse = marks.count(BETTER_MARK), marks.count(WORSE_MARK)
    return [SIGNIFICANCE_NOTE + f" After correction, {better} of the {len(tested)} tested rows are better than "
            f"no-kd and {worse} worse; the others do not differ from it at this level."]


def grids(tables: list[TableData], layout: str, published: PublishedIndex | None, *,
          plain: bool = False) -> list[Grid]:
    """The tables as grids of `layout`; `plain` long grids: see `long_grid`."""
    if not tables:
        return []
    if layout == "wide":
        return [wide_grid(tables, published)]
    return [long_grid(table, published, plain=plain) for table in tables]


def mean_std_text(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"  # no spread from one seed


def value_cell(mean: float | None, std: float | None, mark: str = "") -> Cell:
    return Cell(mean_std_text(mean, std) + (f" {mark}" if mark else ""), mean)


def published_cells(value: PublishedValue | None, mean: float | None, sources: Sources) -> list[Cell]:
    if value is None:
        return [Cell(""), Cell("")]
    gap = None if mean is None else mean - value.value
    return [Cell(f"{value.value:.2f} [{sources.ref(value.citation)}]", value.value),
            Cell("" if gap is None else f"{gap:+.2f}", gap)]


def grid_notes(rows: Iterable[RowData], sources: Sources, published: PublishedIndex | None,
               tables: Sequence[TableData] = (), *, paper: bool = False) -> list[str]:
    """The notes under a grid; `paper`: as a paper prints them (see `stale_notes`, `tuned_notes`)."""
    rows = list(rows)
    notes = significance_notes(rows)
    notes += tuned_notes(tables, paper=paper)
    notes += stale_notes(rows, paper=paper, compact=any(table.protocol >= 2 for table in tables))
    if published is not None:
        notes += [PUBLISHED_NOTE, *sources.notes()]
    return notes


def stale_label(row: RowData) -> str:
    """The row's label, marked when some of its records are stale (see STALE_NOTE)."""
    return f"{row.label} {STALE_MARK}" if row.stale else row.label


def stale_notes(rows: Iterable[RowData], *, paper: bool = False, compact: bool = False) -> list[str]:
    """STALE_NOTE and, per stale record, what differs from the majority of its table; `paper`: the
    mark's meaning only (STALE_PAPER_NOTE): run ids and commands are for whoever reruns, not for readers;
    `compact` (protocol v2): how many records differ in what, in one line, run ids left to the CSV."""
    rows = list(rows)
    lines = [f"{run_id}: {'; '.join(differs)}." for row in rows for run_id, differs in sorted(row.stale.items())]
    if not lines:
        return []
    if paper:
        return [STALE_PAPER_NOTE]
    if compact:
        return [STALE_NOTE.removesuffix(":") + " " + stale_counts(rows) + " Their run ids: the CSV's `run_ids`."]
    return [STALE_NOTE, *sorted(set(lines))]


def stale_counts(rows: Iterable[RowData]) -> str:
    """"12 records: revision 58b6743b57-dirty, most 62aad6d9fd-dirty." - the stale records counted by what differs."""
    counts: dict[str, set[str]] = {}
    for row in rows:
        for run_id, differs in row.stale.items():
            counts.setdefault("; ".join(differs), set()).add(run_id)
    return " ".join(f"{len(ids)} record{'s' if len(ids) != 1 else ''}: {what}."
                    for what, ids in sorted(counts.items(), key=lambda item: (-len(item[1]), item[0])))


def tuned_notes(tables: Sequence[TableData], *, paper: bool = False) -> list[str]:
    """The protocol behind "(tuned)" rows, and each one's selected settings per table; `paper`: the
    selections in one paragraph, a method's settings once where every table selected the same, so that
    twenty tuned rows take a few lines under a table, not twenty."""
    selected, protocol = _selections(tables)
    if not selected:
        return []
    budgets = ", ".join(str(budget) for budget in sorted({budget for budget, _ in protocol}))
    seeds = ", ".join(str(seed) for seed in sorted({seed for _, seed in protocol}))
    sentences = [f"{method} (tuned) selected {_selection_text(parts, paper)}."
                 for method, parts in sorted(selected.items()) if method != NO_KD]
    note = TUNED_NOTE_V2 if any(table.protocol >= 2 for table in tables) else TUNED_NOTE
    return [note.format(budget=budgets, seed=seeds), *([" ".join(sentences)] if paper else sentences)]


def _selections(tables: Sequence[TableData]) -> tuple[dict[str, list[tuple[str, str]]], set[tuple[int, int]]]:
    """Per tuned method, (where: the table, when there are several; its selected settings); and the
    (budget, selection seed) pairs of the tuning."""
    selected: dict[str, list[tuple[str, str]]] = {}
    protocol: set[tuple[int, int]] = set()
    for table in tables:
        for row in table.rows:
            if row.selection != "tuned" or row.tuning is None:
                continue
            direction = rec.direction_label(table.teacher_modality, table.student_modality, "compact")
            where = f"{table.dataset} {direction}: " if len(tables) > 1 else ""
            settings = row.hparams
            if table.protocol >= 2 and isinstance(row.tuning.get("selected"), dict):  # the study's own account
                settings = row.tuning["selected"]
            selected.setdefault(row.method, []).append((where, hparams_text(settings) or "the defaults"))
            protocol.add((int(row.tuning.get("budget", 0)), int(row.tuning.get("selection_seed", 0))))
    return selected, protocol


def _selection_text(parts: list[tuple[str, str]], paper: bool) -> str:
    if paper and len(parts) > 1 and len({settings for _, settings in parts}) == 1:
        return f"{parts[0][1]} in each of its {len(parts)} columns"
    return "; ".join(where + settings for where, settings in parts)


# ---------------------------------------------------------------------------------------------
# Long layout


def long_grid(table: TableData, published: PublishedIndex | None = None, *, plain: bool = False) -> Grid:
    """A grid per table. `plain`: the long layout as it prints without published numbers or tuned
    rows (md, latex, rich): no significance marks, no notes but the stale one (STALE_NOTE), and LaTeX
    headers in math mode."""
    detail = table.protocol >= 2
    headers = (list(HEADERS) + (list(DETAIL_HEADERS) if detail else [])
               + (["published", "gap vs published"] if published is not None else []))
    sources = Sources()
    shown = [row for row in table.rows if row.same_as is None]  # a repeated configuration shows once
    rows = [_long_cells(table, row, published, sources, marked=not plain, detail=detail) for row in shown]
    def notes(paper: bool) -> list[str]:
        # stale records are marked and listed even in plain grids: such numbers do not compare as they are
        if plain:
            return stale_notes(table.rows, paper=paper)
        return grid_notes(table.rows, sources, published, [table], paper=paper)

    return Grid(title=table.title, headers=headers, rows=rows, align=["l"] + ["r"] * (len(headers) - 1),
                pinned=sum(row.kind == "teacher" for row in table.rows), notes=notes(False), paper_notes=notes(True),
                latex_headers=list(LATEX_HEADERS) if plain and published is None else None)


def _long_cells(table: TableData, row: RowData, published: PublishedIndex | None, sources: Sources,
                marked: bool = True, detail: bool = False) -> list[Cell]:
    label = shared_label([row.label] + [other.label for other in table.rows if other.same_as == row.label])
    cells = [Cell(f"{label} {STALE_MARK}" if row.stale else label, row.label),
             value_cell(row.mean, row.std, significance_mark(row) if marked else ""),
             value_cell(row.mean_last, row.std_last), Cell(str(row.n), row.n),
             Cell("" if row.delta is None else f"{row.delta:+.2f}", row.delta)]
    if detail:
        cells += [Cell(paired_text(row), row.paired.mean if row.paired else None),
                  Cell("" if row.p_holm is None else f"{row.p_holm:.3g}", row.p_holm)]
    if published is not None:
        cells += published_cells(published.lookup(table, row), row.mean, sources)
    for cell in cells:
        cell.bold = row.is_best
    cells[1].ranked = cells[4].ranked = True  # test and its gap to no-kd: what the best row wins by
    return cells


def shared_label(labels: Sequence[str]) -> str:
    """One label for rows that are the same configuration: "at (tuned)", "at-all-stages (tuned)" ->
    "at / at-all-stages (tuned)"."""
    labels = list(dict.fromkeys(labels))
    if len(labels) == 1:
        return labels[0]
    suffixes = {label[label.find(" ("):] if " (" in label else "" for label in labels}
    if len(suffixes) == 1:
        suffix = suffixes.pop()
        return " / ".join(label.removesuffix(suffix) for label in labels) + suffix
    return " / ".join(labels)


def paired_text(row: RowData) -> str:
    """"+1.20 [+0.40, +2.00]": the mean paired difference to no-kd and its 95% CI ("+1.20" without a CI)."""
    paired = row.paired
    if paired is None or paired.mean is None:
        return ""
    if paired.ci_low is None or paired.ci_high is None:
        return f"{paired.mean:+.2f}"
    return f"{paired.mean:+.2f} [{paired.ci_low:+.2f}, {paired.ci_high:+.2f}]"


# ---------------------------------------------------------------------------------------------
# Wide layout


def wide_tables(tables: list[TableData]) -> list[TableData]:
    """The tables in the order of the wide layout's columns."""
    return sorted(tables, key=lambda t: (t.dataset, t.teacher_modality, t.student_modality, t.title))


def wide_grid(tables: list[TableData], published: PublishedIndex | None) -> Grid:
    tables = wide_tables(tables)
    labels = column_labels(tables)
    with_published = [published is not None and published.has_any(table) for table in tables]
    headers = ["Method"]
    for label, extra in zip(labels, with_published):
        headers += [label] + ([f"{label} published", f"{label} gap"] if extra else [])
    headers += ["avg rank", *AGGREGATE_HEADERS]
    ranking = rank_summary(tables)
    ranks = average_ranks(tables, ranking)
    sources = Sources()
    rows = [_wide_teacher_cells(tables, with_published, published, sources)]
    rows += [_wide_method_cells(label, tables, with_published, published, sources, ranks.get(label))
             + aggregate_cells(label, tables) for label in wide_row_order(tables, ranks)]
    all_rows = [row for table in tables for row in table.rows]
    shown = published if any(with_published) else None
    head = [rank_note(ranking, labels), AGGREGATE_NOTE]
    notes = head + grid_notes(all_rows, sources, shown, tables)
    paper_notes = head + grid_notes(all_rows, sources, shown, tables, paper=True)
    return Grid(title=_wide_title(tables), headers=headers, rows=rows,
                align=["l"] + ["r"] * (len(headers) - 1), pinned=1, notes=notes, paper_notes=paper_notes)


def _wide_title(tables: list[TableData]) -> str:
    metrics = sorted({table.metric for table in tables})
    metric = metrics[0] if len(metrics) == 1 else "/".join(metrics)
    return f"test {metric} (%) at the best-validation epoch, mean ± std over seeds; one column per table"


def column_labels(tables: list[TableData]) -> list[str]:
    """The wide layout's column labels: dataset and direction, and what tells apart tables that share them."""
    short = [f"{table.dataset} {rec.direction_label(table.teacher_modality, table.student_modality, 'compact')}"
             for table in tables]
    labels = []
    for label, table in zip(short, tables):
        # Tables that share dataset and direction differ in protocol: add the parts of their
        # titles (metric, backbones, settings) that are not the same in all of them.
        twins = [t.title.split(" · ")[2:] for s, t in zip(short, tables) if s == label]
        parts = [part for part in table.title.split(" · ")[2:] if not all(part in twin for twin in twins)]
        labels.append(" · ".join([label, *parts]))
    return labels


def method_rows(table: TableData) -> dict[str, RowData]:
    return {row.label: row for row in table.rows if row.kind == "method"}


def wide_row_order(tables: list[TableData], ranks: dict[str, tuple[float, int]]) -> list[str]:
    labels = sorted({label for table in tables for label in method_rows(table)})
    no_kd = [label for label in labels if any(method_rows(t).get(label, NO_ROW).method == NO_KD for t in tables)]
    # ranked methods by rank; the unranked ones (lacking a common column) after them, by coverage
    count = coverage(tables)
    others = sorted((label for label in labels if label not in no_kd),
                    key=lambda label: (label not in ranks, ranks.get(label, (0.0, 0))[0], -count[label], label))
    return no_kd + others


def _wide_teacher_cells(tables: list[TableData], with_published: list[bool], published: PublishedIndex | None,
                        sources: Sources) -> list[Cell]:
    cells = [Cell("teacher (own modality)", "teacher")]
    for table, extra in zip(tables, with_published):
        teacher = next((row for row in table.rows if row.kind == "teacher"), None)
        cells.append(value_cell(teacher.mean, teacher.std) if teacher else Cell(MISSING))
        if extra:
            value = published.lookup(table, teacher) if (published and teacher) else None
            cells += published_cells(value, teacher.mean if teacher else None, sources)
    return cells + [Cell("")] * (1 + len(AGGREGATE_HEADERS))


def _wide_method_cells(label: str, tables: list[TableData], with_published: list[bool],
                       published: PublishedIndex | None, sources: Sources,
                       rank: tuple[float, int] | None) -> list[Cell]:
    stale = any(row.stale for row in (method_rows(table).get(label) for table in tables) if row is not None)
    cells = [Cell(f"{label} {STALE_MARK}" if stale else label, label)]
    for table, extra in zip(tables, with_published):
        row = method_rows(table).get(label)
        if row is None:
            cells.append(Cell(MISSING))
        elif row.same_as is not None:  # the same configuration as another row: shown there, once
            cells.append(Cell(f"= {row.same_as}", row.mean))
        else:
            cells.append(value_cell(row.mean, row.std, significance_mark(row)))
            cells[-1].bold, cells[-1].ranked = row.is_best, True
        if extra:
            value = published.lookup(table, row) if (published and row) else None
            cells += published_cells(value, row.mean if row else None, sources)
    cells.append(_rank_cell(rank, coverage(tables)[label], len(tables)))
    return cells


def _rank_cell(rank: tuple[float, int] | None, count: int, columns: int) -> Cell:
    if rank is None:  # lacks a common column: no rank, and how many columns it has instead
        return Cell(f"{MISSING} ({count}/{columns})")
    return Cell(f"{rank[0]:.2f}", rank[0])


def rank_summary(tables: Sequence[TableData]) -> stats.RankResult:
    """Ranks of the method rows' means over the common columns (column = index in `tables`), and Friedman's test."""
    scores: dict[str, dict[int, float]] = {}
    for index, table in enumerate(tables):
        for row in table.rows:
            if row.kind == "method" and row.mean is not None:
                scores.setdefault(row.label, {})[index] = row.mean
    return stats.ranks_over_common_columns(scores)


def average_ranks(tables: Sequence[TableData], ranking: stats.RankResult | None = None
                  ) -> dict[str, tuple[float, int]]:
    """Per ranked method row label: (mean rank over the common columns, how many common columns)."""
    ranking = ranking or rank_summary(tables)
    return {label: (rank, len(ranking.columns)) for label, rank in ranking.ranks.items()}


def coverage(tables: Sequence[TableData]) -> dict[str, int]:
    """Per method row label, how many of the tables have it with a mean."""
    count: dict[str, int] = {}
    for table in tables:
        for label, row in method_rows(table).items():
            count[label] = count.get(label, 0) + (row.mean is not None)
    return count


def rank_note(ranking: stats.RankResult, labels: Sequence[str]) -> str:
    """RANK_NOTE, the common columns by name, and Friedman's test over them in words."""
    if not ranking.columns:
        return RANK_NOTE + " No two methods share a column here: no ranks."
    common = ", ".join(labels[index] for index in ranking.columns)
    text = f"{RANK_NOTE} Common columns ({len(ranking.columns)} of {len(labels)}): {common}."
    if ranking.friedman_p is None:
        return text + " Friedman's test needs 3 or more ranked methods and 2 or more common columns: none here."
    return (text + f" Friedman's test over the {len(ranking.ranks)} ranked methods on them: "
            f"chi-square = {ranking.friedman_statistic:.2f}, p = {ranking.friedman_p:.3g}.")


@dataclass(frozen=True)
class Aggregate:
    iqm: float | None  # IQM of the pooled per-seed differences to no-kd
    ci_low: float | None
    ci_high: float | None
    p_improvement: float | None  # P(method > no-kd), rliable's probability of improvement


def aggregate(label: str, tables: Sequence[TableData]) -> Aggregate:
    """The method's gain over no-kd across the columns it has (see AGGREGATE_NOTE)."""
    differences, pairs = [], []
    for table in tables:
        row, baseline = method_rows(table).get(label), _no_kd_baseline(list(method_rows(table).values()))
        if row is None or baseline is None or row is baseline:
            continue
        if row.paired is not None and row.paired.n:
            differences.append(row.paired.differences)
        pairs.append((row.values, baseline.values))
    if not differences:
        return Aggregate(None, None, None, stats.probability_of_improvement(pairs))
    return Aggregate(*stats.stratified_bootstrap_iqm(differences), stats.probability_of_improvement(pairs))


def aggregate_cells(label: str, tables: Sequence[TableData]) -> list[Cell]:
    result = aggregate(label, tables)
    if result.iqm is None:
        iqm = Cell("")
    elif result.ci_low is None:  # no column has 2 paired seeds: no interval
        iqm = Cell(f"{result.iqm:+.2f}", result.iqm)
    else:
        iqm = Cell(f"{result.iqm:+.2f} [{result.ci_low:+.2f}, {result.ci_high:+.2f}]", result.iqm)
    improvement = result.p_improvement
    return [iqm, Cell("" if improvement is None else f"{improvement:.2f}", improvement)]


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


NO_ROW = RowData(label="", kind="", method="", hparams={}, values=[], last_values=[], sources=[], mean=None,
                 std=None, n=0, mean_last=None, std_last=None)


# ---------------------------------------------------------------------------------------------
# Failed runs


def failed_grid(failed: list[dict[str, Any]]) -> Grid:
    """The failed runs; where any is a protocol v2 record, a column says what each run was: a tuning or
    recipe candidate with its configuration, or a reported run (of the selected configuration, or of the
    defaults) - a candidate that diverged is the study's spent budget, not the method's failure."""
    if any(protocol_version(record) >= 2 for record in failed):
        rows = [[Cell(text, text) for text in failed_cells_v2(record)] for record in failed]
        headers = list(FAILED_HEADERS[:2]) + ["what"] + list(FAILED_HEADERS[2:])
        return Grid(title=f"failed runs · {protocol_title(2)}", headers=headers, rows=rows,
                    align=["l"] * 5 + ["r", "l"])
    rows = [[Cell(text, text) for text in failed_cells(record)] for record in failed]
    return Grid(title="failed runs", headers=list(FAILED_HEADERS), rows=rows, align=["l"] * 4 + ["r", "l"])


def failed_cells_v2(record: dict[str, Any]) -> list[str]:
    cells = failed_cells(record)
    what = candidate_label(record)
    if what is None:
        settings = hparams_text(rec.hparams_changed(record))
        what = f"reported run, {settings}" if settings else "reported run, the defaults"
    return cells[:2] + [what] + cells[2:]


def failed_cells(record: dict[str, Any]) -> list[str]:
    error = record.get("error") or f"(status: {record['status']})"
    return [
        str(record["run_id"]), str(record["method"]), str(record["dataset"]),
        rec.record_direction(record), str(record["seed"]), rec.one_line(error),
    ]


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
    sources = Sources()
    rows = []
    for method in methods:
        cells = [Cell(method, method)]
        for column in columns:
            value = by_key.get((method, *column))
            cells.append(Cell(MISSING) if value is None else
                         Cell(f"{value.value:.2f} [{sources.ref(value.citation)}]", value.value))
        rows.append(cells)
    headers = ["Method (published)"] + [f"{d} {rec.direction_label(t, s, 'compact')} published"
                                        for d, t, s in columns]
    return Grid(title=f"published {metric} (%), as reported; not measured by this suite", headers=headers,
                rows=rows, align=["l"] + ["r"] * len(columns),
                notes=[PUBLISHED_NOTE.replace("; gap = our mean - published", ""), *sources.notes()])


def candidate_label(record: dict[str, Any]) -> str | None:
    """How a failed protocol v2 candidate is named in the failed runs: as a candidate with its configuration
    ("tuning candidate weight=1000", "recipe candidate lr=0.1, weight_decay=0.0005"); None for other records."""
    if not is_candidate(record):
        return None
    if protocol_role(record) == "recipe-candidate":
        recipe = (record.get("config") or {}).get("recipe") or {}
        chosen = {key: recipe[key] for key in ("lr", "weight_decay") if key in recipe}
        if not chosen:  # the protocol's own account of the recipe tried
            chosen = {k: v for k, v in (protocol_of(record).get("recipe") or {}).items() if k != "study"}
        settings = ", ".join(f"{key}={value_text(value)}" for key, value in sorted(chosen.items()))
        return f"recipe candidate {settings or 'the default recipe'}"
    return f"tuning candidate {hparams_text(record.get('hparams_changed') or {}) or 'the defaults'}"
