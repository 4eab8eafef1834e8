"""Filters of records: --dataset, --method, --where (the leaderboard's, the plots' and the analyses')."""

from __future__ import annotations

import math
from typing import Any, Sequence

from ...artefacts import records as rec
from ...errors import UserError
from .summary import NO_KD


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
        if not any(rec.has_setting(r, key) for r in records):
            raise UserError(f"--where {test}: no run record has a field, hyper-parameter or setting {key!r}")
        had_runs = any(r["method"] != NO_KD for r in kept)
        kept = [r for r in kept if _where_matches(r, key, wanted)]
        if had_runs and not any(r["method"] != NO_KD for r in kept):  # only the kept baselines would be left
            values = sorted({str(rec.record_setting(r, key)) for r in records if rec.has_setting(r, key)})
            shown = ", ".join(values[:8]) + (", ..." if len(values) > 8 else "")
            raise UserError(f"--where {test}: no run matches (besides the no-kd baselines); "
                            f"the records have {key} = {shown}")
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


def _where_matches(record: dict[str, Any], key: str, wanted: str) -> bool:
    actual = rec.record_setting(record, key)
    if actual is rec.NO_SETTING:
        return record["method"] == NO_KD
    return _same_value(actual, wanted)


def _same_value(actual: Any, wanted_text: str) -> bool:
    import yaml

    try:
        wanted = yaml.safe_load(wanted_text)
    except yaml.YAMLError:
        wanted = wanted_text
    if rec.is_number(actual) and rec.is_number(wanted):
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return actual == wanted or str(actual) == wanted_text
