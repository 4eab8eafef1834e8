"""Records summarised: tables of rows (mean ± std over seeds), views, tuned rows, paired tests against no-kd.

A table holds only records that share dataset, task, direction, backbones, data options and
recipe, so that no number is ever averaged with one trained under a different protocol. The
teacher and the no-KD student are always rows (DESIGN.md, Protocol); failed runs are not in any
table (`failed_runs` lists them), nor are protocol v2's selection candidates (`protocol.is_candidate`).
Callers keep protocols apart (`protocol.split_protocols`); a table of protocol v2 records also shows a
configuration that two rows share (the same runs, or the same settings with the same scores) once: the
second row says which it is the same as (`same_as`), and each selection (tuned, default) is its own
family for Holm's correction.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ...artefacts import records as rec
from ...errors import UserError
from ..statistics import PairedResult, holm, pair_by_seed, paired_difference
from .protocol import is_candidate, protocol_version

VIEWS = ("all", "default", "tuned")  # which rows: every row, the defaults only, or tuned ones in their place
TUNED = "\0tuned"  # the row key of a method's tuned configuration
NO_KD = "no-kd"
_UNSET = "\0unset"  # stands for a setting that a table's records do not have at all


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
    p_value: float | None = None  # paired t-test against the table's no-KD row over shared seeds (two-sided)
    p_holm: float | None = None  # p_value Holm-adjusted over the table's rows: what the marks read
    paired: PairedResult | None = None  # the per-seed differences to no-KD, their mean and 95% CI
    seeds: list[str] = field(default_factory=list)  # per value, its seed (canonical): what pairs rows up
    selection: str = "default"  # "tuned": the configuration the tuning protocol selected on val
    tuning: dict[str, Any] | None = None  # the record's tuning entry (space, budget, scores) for tuned rows
    # run id -> what differs, for the row's records made under another environment or code revision
    # than most records of the table (records.environment_outliers), or distilled from another teacher
    # under the same key (records.teacher_outliers); `suite --rerun-stale` reruns them
    stale: dict[str, list[str]] = field(default_factory=dict)
    # protocol v2: the label of the row (same selection, same table) whose runs or configuration and scores
    # this row repeats; such a row is not tested again (its statistics are that row's) and shows once
    same_as: str | None = None
    configuration: str = ""  # per seed, the full hyper-parameters: what tells two presets' shared settings


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
    protocol: int = 1  # the tuning protocol of its records (protocol.protocol_version)

    @property
    def direction(self) -> str:
        return direction_of(self.teacher_modality, self.student_modality)


def direction_of(teacher_modality: str, student_modality: str) -> str:
    """The spaced label, "visual → audio" (records.direction_label has the other styles)."""
    return rec.direction_label(teacher_modality, student_modality)


def summarize(records: Iterable[dict[str, Any]], view: str = "all") -> list[TableData]:
    """Group completed records into tables of rows; failed records are left out (see `failed_runs`).

    `view`: "all" rows, the "default" configurations only, or "tuned": each tuned method's
    selected configuration in place of its default (methods without a search space keep theirs).
    """
    check_view(view)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") == "completed" and not is_candidate(record):  # a candidate: never a row
            groups.setdefault(_table_key(record), []).append(record)
    keys = sorted(groups)
    extras = _distinguishing_settings([groups[key][0] for key in keys])
    return [_build_table(groups[key], extra, view) for key, extra in zip(keys, extras)]


def stale_runs(records: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """The completed records made under another environment or code revision than most records of
    their table, and the rows' records distilled from another teacher than most of the table's under
    the same key: run id -> what differs (what the leaderboard marks, `suite --rerun-stale` reruns)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") == "completed":
            groups.setdefault(_table_key(record), []).append(record)
    stale: dict[str, list[str]] = {}
    for group in groups.values():
        # the teacher is judged among the rows' records only (a study's candidates distil from the
        # selection seed's teacher, which no reported row shares)
        stale.update(_outliers(group, [r for r in group if not is_candidate(r)]))
    for run_id, change in code_changes(records for group in groups.values() for records in group).items():
        stale.setdefault(run_id, []).append(change)
    return stale


def _outliers(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What the § mark reads: run id -> what differs, for `records` made under another environment or
    code revision than most of them (records.environment_outliers), and for `rows` distilled from another
    teacher than most of them under the same key (records.teacher_outliers)."""
    outliers = rec.environment_outliers(records)
    for run_id, differs in rec.teacher_outliers(rows).items():
        outliers.setdefault(run_id, []).append(differs)
    return outliers


def code_changes(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Records whose method's code (the digest the runner records, provenance.code_digest) differs from
    that method's code here: run id -> what changed. Records from before code digests, and methods not
    registered here (a plug-in not loaded), are not judged."""
    made = [(record, ((record.get("code") or {}).get("method") or {}).get("digest")) for record in records]
    made = [(record, digest) for record, digest in made if digest]
    if not made:
        return {}
    from ...artefacts.provenance import code_digest
    from ...catalog import load_all
    from ...registry import METHODS

    load_all()
    current: dict[str, str | None] = {}
    changes = {}
    for record, digest in made:
        name = str(record.get("method"))
        if name not in current:
            current[name] = code_digest(METHODS.get(name).implementation)["digest"] if name in METHODS.names() else None
        if current[name] is not None and current[name] != digest:
            changes[str(record["run_id"])] = f"method code {digest}, now {current[name]}"
    return changes


def check_view(view: str) -> None:
    if view not in VIEWS:
        raise UserError(f"unknown leaderboard view {view!r}; choose one of {', '.join(VIEWS)}")


def failed_runs(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record that did not complete, in a stable order."""
    failed = [record for record in records if record.get("status") != "completed"]
    return sorted(failed, key=lambda r: tuple(map(str, (
        r["dataset"], r["teacher_modality"], r["student_modality"], r["method"], r["seed"], r["run_id"]))))


def _row_entries(records: list[dict[str, Any]], view: str) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """(row key, record) pairs. A record is a row of its own settings unless it was only a tuning
    candidate with other settings than the defaults; a selected one is also its method's tuned row (the
    tuned row of each study that selected it: a run two presets' studies share is in both presets' rows)."""
    entries = []
    for record in records:
        if is_candidate(record):  # a protocol v2 selection run: never a row
            continue
        tuning = rec.tuning_entries(record)
        selected = [entry for entry in tuning if entry.get("role") == "selected"]
        if view != "tuned" or not selected:
            if not tuning or not rec.hparams_changed(record):
                if view != "default" or not rec.hparams_changed(record):
                    entries.append((_row_key(record), record))
        if selected and view != "default":
            for method in dict.fromkeys(str(entry.get("method") or record["method"]) for entry in selected):
                entries.append(((method, TUNED), record))
    if view == "tuned":  # a tuned method shows only its tuned row
        tuned = {key[0] for key, _ in entries if key[1] == TUNED}
        entries = [(key, record) for key, record in entries
                   if key[1] == TUNED or (key[0] not in tuned and not key[1])]
    return entries


def _table_key(record: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(record["dataset"]), str(record["task"]), rec.record_metric_name(record),
        str(record["teacher_modality"]), str(record["student_modality"]),
        str(record["student_backbone"]), str(record["teacher_backbone"]),
        canonical(rec.data_options(record)), canonical(rec.recipe(record)),
        str((record.get("config") or {}).get("teacher_fusion") or ""),  # a multimodal teacher's fusion (models/fusion.py)
    )


def _distinguishing_settings(representatives: list[dict[str, Any]]) -> list[list[str]]:
    """Per table, the data options and recipe settings that are not the same in every table of its
    dataset (another dataset's options never show up as `unset`)."""
    data = [rec.data_options(record) for record in representatives]
    recipes = [rec.recipe(record) for record in representatives]
    datasets = [str(record["dataset"]) for record in representatives]
    varying: dict[str, tuple[list[str], list[str]]] = {}
    for dataset in dict.fromkeys(datasets):
        same = [i for i, name in enumerate(datasets) if name == dataset]
        varying[dataset] = (_varying_keys([data[i] for i in same]), _varying_keys([recipes[i] for i in same]))
    extras = []
    for dataset, options, recipe in zip(datasets, data, recipes):
        varying_data, varying_recipe = varying[dataset]
        parts = []
        if varying_data:
            parts.append("data " + _settings_text(options, varying_data))
        if varying_recipe:
            parts.append("recipe " + _settings_text(recipe, varying_recipe))
        extras.append(parts)
    return extras


def _varying_keys(settings: list[dict[str, Any]]) -> list[str]:
    keys = sorted(set().union(*settings)) if settings else []
    return [key for key in keys if len({canonical(s.get(key, _UNSET)) for s in settings}) > 1]


def _settings_text(settings: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key}={value_text(settings[key]) if key in settings else 'unset'}" for key in keys)


def _build_table(records: list[dict[str, Any]], extra: list[str], view: str = "all") -> TableData:
    first = records[0]
    table = TableData(
        title="", dataset=first["dataset"], task=first["task"], metric=rec.record_metric_name(first),
        teacher_modality=first["teacher_modality"], student_modality=first["student_modality"],
        student_backbone=first["student_backbone"], teacher_backbone=first["teacher_backbone"],
        data_options=rec.data_options(first), recipe=rec.recipe(first),
    )
    table.title = _title(table, extra)
    table.protocol = max(protocol_version(record) for record in records)
    per_row = _latest_per_seed(_row_entries(records, view))
    method_rows = [_method_row(key, row_records) for key, row_records in per_row.items()]
    if table.protocol >= 2:
        method_rows = _without_default_twins(method_rows)
        _mark_same(method_rows)
    _set_deltas(method_rows)
    _set_significance(method_rows, by_selection=table.protocol >= 2)
    _mark_best(method_rows)
    kept = [record for row_records in per_row.values() for record in row_records]
    outliers = _outliers(kept, kept)
    for row in method_rows:
        row.stale = {source: outliers[source] for source in row.sources if source in outliers}
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
        seed = canonical(record["seed"])
        if seed not in seeds or rec.created_at(record) >= rec.created_at(seeds[seed]):
            seeds[seed] = record
    return {
        key: sorted(seeds.values(), key=lambda r: canonical(r["seed"]))
        for key, seeds in latest.items()
    }


def _row_key(record: dict[str, Any]) -> tuple[str, str]:
    # Keyed by the label, so 2 and 2.0 (the same setting) share a row.
    return str(record["method"]), hparams_text(rec.hparams_changed(record))


def _method_row(key: tuple[str, str], records: list[dict[str, Any]]) -> RowData:
    first = records[0]
    hparams = rec.hparams_changed(first)
    tuned = key[1] == TUNED
    method = key[0] if tuned else str(first["method"])  # tuned: the method whose study selected the runs
    if tuned:  # no-kd has no hyper-parameters: under protocol v2 its recipe (lr, weight decay) is what was tuned
        label = f"{method} ({'tuned recipe' if method == NO_KD else 'tuned'})"
    else:
        label = method + (f" ({hparams_text(hparams)})" if hparams else "")
    row = _row(
        label, "method", method, hparams,
        values=[rec.metric(r, "test") for r in records],
        last_values=[v for v in (rec.metric(r, "test_last") for r in records) if rec.is_number(v)],
        sources=[str(r["run_id"]) for r in records],
    )
    row.seeds = [canonical(r["seed"]) for r in records]
    row.configuration = canonical([[canonical(r["seed"]), r.get("hparams") or {}] for r in records])
    if tuned:
        row.selection = "tuned"
        row.tuning = next(e for e in reversed(rec.tuning_entries(first)) if e.get("role") == "selected"
                          and str(e.get("method") or first["method"]) == method)
    return row


def _teacher_row(table: TableData, records: list[dict[str, Any]]) -> RowData:
    teachers = _distinct_teachers(records)
    keys = sorted(teachers)
    metrics = [teachers[key].get("metrics") or {} for key in keys]
    return _row(
        f"teacher ({table.teacher_modality}, {table.teacher_backbone})", "teacher", "teacher", {},
        values=[m["test"] for m in metrics],
        last_values=[m["test_last"] for m in metrics if rec.is_number(m.get("test_last"))],
        sources=keys,
    )


def _distinct_teachers(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    teachers: dict[str, dict[str, Any]] = {}
    for record in records:
        teacher = record.get("teacher") or {}
        # A teacher fine-tuned by the method is no longer the teacher the others distilled from.
        if teacher.get("trained_by_method") or not rec.is_number((teacher.get("metrics") or {}).get("test")):
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
    # Sample std (ddof=1); one seed has no spread to estimate: None, and the tables show no ± then.
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.mean(values), std


def _set_deltas(rows: list[RowData]) -> None:
    baseline = _no_kd_baseline(rows)
    if baseline is None or baseline.mean is None:
        return
    for row in rows:
        if row.method != NO_KD and row.mean is not None:
            row.delta = row.mean - baseline.mean


def _no_kd_baseline(rows: list[RowData]) -> RowData | None:
    """The no-kd row the others are measured against: under protocol v2 its tuned recipe (the recipe every
    row uses), else its default row; a no-kd row with settings changed only where there is no other."""
    no_kd = sorted((row for row in rows if row.method == NO_KD and row.selection in ("tuned", "default")),
                   key=lambda row: (row.selection != "tuned", bool(row.hparams)))
    return no_kd[0] if no_kd else None


def _set_significance(rows: list[RowData], by_selection: bool = False) -> None:
    """Each row against no-kd, paired by seed (same seed: same teacher and data order), and the p-values
    Holm-adjusted over the table's rows, the family a reader scans for marks. `by_selection` (protocol v2):
    the tuned rows are one family (the headline's column) and the default rows another; a row that repeats
    another (`same_as`) is not tested twice, and takes that row's statistics."""
    baseline = _no_kd_baseline(rows)
    if baseline is None:
        return
    tested = [row for row in rows if row is not baseline and row.values and row.same_as is None]
    for row in tested:
        row.paired = paired_difference(*pair_by_seed(row.values, row.seeds, baseline.values, baseline.seeds))
        row.p_value = row.paired.p_value
    families: dict[str, list[RowData]] = {}
    for row in tested:
        families.setdefault(row.selection if by_selection else "", []).append(row)
    for family in families.values():
        for row, adjusted in zip(family, holm([row.p_value for row in family])):
            row.p_holm = adjusted
    by_label = {row.label: row for row in tested}
    for row in rows:
        if row.same_as is not None and row.same_as in by_label:
            twin = by_label[row.same_as]
            row.paired, row.p_value, row.p_holm = twin.paired, twin.p_value, twin.p_holm


def _without_default_twins(rows: list[RowData]) -> list[RowData]:
    """A method's default row left out where its tuned row is the very same runs (the selection kept the
    defaults): the method is shown once, as tuned."""
    tuned = {(row.method, frozenset(row.sources)) for row in rows if row.selection == "tuned"}
    return [row for row in rows if row.selection == "tuned" or (row.method, frozenset(row.sources)) not in tuned]


def _mark_same(rows: list[RowData]) -> None:
    """Rows of one selection that are the same runs, or the same settings on the same seeds with the same
    scores (two presets whose selections coincide: at with stages=all and at-all-stages), get `same_as`: the
    label of the first of them by label, which stands for all."""
    first: dict[tuple[str, str, str], RowData] = {}
    for row in sorted(rows, key=lambda row: row.label):
        if row.method == NO_KD or not row.values:
            continue
        keys = [("runs", canonical(sorted(row.sources))),
                ("scores", canonical([row.configuration, row.seeds, row.values]))]
        twin = next((first[(row.selection, *key)] for key in keys if (row.selection, *key) in first), None)
        if twin is not None:
            row.same_as = twin.label
        for key in keys:
            first.setdefault((row.selection, *key), twin or row)


def welch_p_value(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances); None where it is undefined. No table reads it
    any more (seeds pair up: `_set_significance`); kept for callers comparing the two tests."""
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
        row.is_best = row.mean == best and row.same_as is None


def _ordered(rows: list[RowData]) -> list[RowData]:
    no_kd = sorted((row for row in rows if row.method == NO_KD), key=lambda row: row.label)
    others = [row for row in rows if row.method != NO_KD]
    others.sort(key=lambda row: (row.mean is None, -(row.mean or 0.0), row.label))
    return no_kd + others


# ---------------------------------------------------------------------------------------------
# Text of settings (row labels, table titles, CSV cells)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def hparams_text(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value_text(hparams[key])}" for key in sorted(hparams))


def value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)
