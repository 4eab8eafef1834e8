"""The run record (`OUT/<run_id>/result.json`): the contract between running and reporting.

The runner writes one record per run (`write_record`); the leaderboard, plots, analyses and the
tuning protocol read them back (`read_record`, `load_records`) and look into them only through
the accessors here, so that a change of the record's layout is made in one place.

A record holds at least REQUIRED_KEYS; a completed one has a numeric `metrics.test`. Its
`metric` is the task's metric name (`metric_name`), its direction is labelled by
`direction_label`, and `tuning` holds the entries of the tuning studies it took part in.

Reading records imports neither torch nor rich, so that reporting stays quick to start.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .files import write_json_atomic

RECORD_SCHEMA = 1
RECORD_FILE = "result.json"
REQUIRED_KEYS = (
    "run_id", "status", "method", "dataset", "task", "student_modality", "teacher_modality",
    "student_backbone", "teacher_backbone", "seed",
)
METRIC_NAMES = {"classification": "top1", "segmentation": "miou"}  # the test metric of each task
UNKNOWN_METRIC = "score"  # the metric name of a task this version does not know
ARROW, ASCII_ARROW = "→", "->"
DIRECTION_STYLES = ("spaced", "compact", "ascii")
_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# Names: metric and direction


def metric_name(task: str) -> str:
    """The metric a run of `task` is scored by: top1 (classification) or miou (segmentation)."""
    return METRIC_NAMES.get(task, UNKNOWN_METRIC)


def direction_label(teacher_modality: str, student_modality: str, style: str = "spaced") -> str:
    """A direction as text: "visual → audio" (spaced: titles), "visual→audio" (compact: labels and
    column headers), "visual->audio" (ascii: CSV cells and command lines)."""
    if style == "spaced":
        return f"{teacher_modality} {ARROW} {student_modality}"
    if style == "compact":
        return f"{teacher_modality}{ARROW}{student_modality}"
    if style == "ascii":
        return f"{teacher_modality}{ASCII_ARROW}{student_modality}"
    raise ValueError(f"unknown direction style {style!r}; one of {', '.join(DIRECTION_STYLES)}")


def record_direction(record: dict[str, Any], style: str = "spaced") -> str:
    return direction_label(record["teacher_modality"], record["student_modality"], style)


# ---------------------------------------------------------------------------------------------
# Reading and writing


def load_records(paths: Iterable[str | Path] | str | Path) -> list[dict[str, Any]]:
    """Read every `result.json` under the given runs directories or files, checked."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: dict[Path, None] = {}  # ordered set: a file reached through two paths counts once
    for path in map(Path, paths):
        for file in record_files(path):
            files.setdefault(file.resolve(), None)
    return [read_record(file) for file in files]


def record_files(path: Path) -> list[Path]:
    """The record files at `path`: the file itself, or every result.json under a directory."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; pass a runs directory or a result.json file")
    if path.is_file():
        return [path]
    # Only result.json: teacher caches under runs/teachers/ hold teacher.json, not run records.
    return sorted(file for file in path.rglob(RECORD_FILE) if file.is_file())


def read_record(path: str | Path) -> dict[str, Any]:
    """One record file, checked; a one-line UserError names the file and what to do otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}); fix or delete that run"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({one_line(error)}); fix or delete that run") from None
    check_record(record, path)
    return record


def find_record(path: str | Path) -> dict[str, Any] | None:
    """The record at `path`, or None where there is none yet or none that reads back as a record
    (absent, half-written, corrupt): the run has to be done (again)."""
    try:
        return read_record(path)
    except UserError:
        return None


def check_record(record: Any, path: str | Path) -> None:
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a run record (expected a JSON object); fix or delete that run")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise UserError(
            f"{path}: not a run record (missing {', '.join(missing)}); fix or delete that run"
        )
    if record["status"] == "completed" and not is_number(metric(record, "test")):
        raise UserError(f"{path}: completed run has no numeric metrics.test; re-run or delete it")
    if record["status"] == "completed":
        for name in ("test", "val_best", "test_last"):  # percentages (top-1, mIoU): NaN or 1e9 is a damaged record
            value = metric(record, name)
            if value is not None and (not is_number(value) or not math.isfinite(value) or not 0 <= value <= 100):
                raise UserError(f"{path}: completed run has metrics.{name} = {value!r}, not a percentage in "
                                "[0, 100]; re-run or delete it")


def write_record(record: dict[str, Any], path: str | Path) -> None:
    """Write a record atomically (readers never see half a file); under torchrun only rank 0 writes."""
    write_json_atomic(record, Path(path))


# ---------------------------------------------------------------------------------------------
# Fields


def metric(record: dict[str, Any], name: str) -> Any:
    """`metrics[name]` (test, test_last, val_best, best_epoch), None where the record has none."""
    return (record.get("metrics") or {}).get(name)


def record_metric_name(record: dict[str, Any]) -> str:
    """The metric the record was scored by: its own `metric`, else its task's."""
    return str(record.get("metric") or metric_name(record["task"]))


def data_options(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("data_options") or {}


def recipe(record: dict[str, Any]) -> dict[str, Any]:
    """The run's recipe, with `teacher_epochs` when the run set --teacher-epochs (its teacher had
    another recipe: another protocol, so tables keep such runs apart and titles name it)."""
    config = record.get("config") or {}
    settings = config.get("recipe") or {}
    if config.get("teacher_epochs") is not None:
        settings = {**settings, "teacher_epochs": config["teacher_epochs"]}
    return settings


def hparams_changed(record: dict[str, Any]) -> dict[str, Any]:
    """The method's hyper-parameters set away from its defaults ({} at the defaults)."""
    return record.get("hparams_changed") or {}


def created_at(record: dict[str, Any]) -> datetime:
    """When the record was written (aware, UTC when it says no zone); the oldest time if unreadable."""
    text = str(record.get("created") or "")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _OLDEST
    # Naive and aware times cannot be compared; the suite writes UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def tuning_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's entries from tuning studies (see cmkd_bench.experiments.tuning), oldest first."""
    entries = record.get("tuning") or []
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


# --- the environment a record was made in (libraries, CPU threads, code revision)

# The libraries whose versions change a run's numbers (seed-noise-sized amounts between releases).
NUMERIC_LIBRARIES = ("torch", "timm", "segmentation_models_pytorch", "albumentations", "numpy", "scipy")
_THREADS = re.compile(r"(\d+) threads?\)")


def environment_signature(record: dict[str, Any]) -> dict[str, str]:
    """What, besides its settings, a record's numbers depend on: the NUMERIC_LIBRARIES' versions,
    `threads` (CPU threads), `cpu` (the CPU model) and `source` (the digest of the code it ran, provenance.source_digest) or,
    for records from before that digest, `revision` (the code's git revision). Older records, without an
    `environment`, give what their `versions`, `device` and `git_revision` say; unknown keys are absent."""
    environment = record.get("environment") or {}
    versions = {**(record.get("versions") or {}), **(environment.get("libraries") or {})}
    signature = {name: str(versions[name]) for name in NUMERIC_LIBRARIES if versions.get(name)}
    threads = environment.get("threads")
    if threads is None and (found := _THREADS.search(str(record.get("device") or ""))):
        threads = found.group(1)
    if threads is not None:
        signature["threads"] = str(threads)
    if environment.get("cpu"):  # the CPU model (provenance.cpu_model), on records that have it
        signature["cpu"] = str(environment["cpu"])
    source = environment.get("source")  # the code results depend on (provenance.source_digest), when recorded
    revision = environment.get("git_revision") or record.get("git_revision")
    if source:
        signature["source"] = str(source)
    elif revision:
        signature["revision"] = str(revision)
    return signature


def environment_outliers(records: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Among records that belong together (one table), those made under another environment or code
    revision than most of them: run id -> what differs ("torch 2.15.0, most 2.14.1"). Per key, the
    majority is the most frequent value (a tie goes to the value of the most recent record)."""
    records = list(records)
    signatures = [environment_signature(record) for record in records]
    majority: dict[str, str] = {}
    for key in sorted(set().union(*signatures)) if signatures else []:
        majority[key] = _majority([(signature[key], record) for record, signature in zip(records, signatures)
                                   if key in signature])
    outliers: dict[str, list[str]] = {}
    for record, signature in zip(records, signatures):
        differs = [f"{key} {_short(signature[key])}, most {_short(majority[key])}"
                   for key in sorted(signature) if signature[key] != majority[key]]
        if differs:
            outliers[str(record["run_id"])] = differs
    return outliers


TEACHER_DIFFERS = "another teacher than most records with its teacher key (its weights or scores differ)"


def teacher_outliers(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Among the records of one table, those distilled from other teacher weights than most records that
    name the same teacher key: run id -> TEACHER_DIFFERS. Per key, the majority as in
    environment_outliers.

    Teachers' weights are not committed: a record made where its teacher was trained again (another
    host, another library build: the same seed and recipe give other weights) distilled from another
    teacher under the same key, and its difference to no-kd paired by seed no longer compares like with
    like. (no-kd's records name the teacher of their column too, and were made on that host.) The
    teacher is told apart by `teacher.weights_sha256` where every record of the key has one, else by
    its recorded scores (`teacher.metrics`), which retraining on another host changes."""
    by_key: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for record in records:
        teacher = record.get("teacher")
        if isinstance(teacher, dict) and teacher.get("key"):
            by_key.setdefault(str(teacher["key"]), []).append((record, teacher))
    outliers: dict[str, str] = {}
    for group in by_key.values():
        by_hash = all(teacher.get("weights_sha256") for _, teacher in group)
        prints = [(str(teacher["weights_sha256"]) if by_hash else json.dumps(teacher.get("metrics"), sort_keys=True),
                   record) for record, teacher in group]
        common = _majority(prints)
        outliers.update({str(record["run_id"]): TEACHER_DIFFERS for value, record in prints if value != common})
    return outliers


def _majority(values: list[tuple[str, dict[str, Any]]]) -> str:
    """The most frequent of (value, record) pairs' values; a tie goes to the most recent record's."""
    counts: dict[str, tuple[int, datetime]] = {}
    for value, record in values:
        count, latest = counts.get(value, (0, _OLDEST))
        counts[value] = (count + 1, max(latest, created_at(record)))
    return max(counts, key=lambda value: counts[value])


def _short(value: str) -> str:
    """A git revision as its first 10 characters (and -dirty); other values as they are."""
    head, dash, tail = value.partition("-")
    if len(head) == 40 and all(c in "0123456789abcdef" for c in head):
        return head[:10] + dash + tail
    return value


# --- settings by key (--where, plot heat-maps)

NO_SETTING = object()  # what record_setting returns for a key a record does not have
_SCOPES = {"hparams": "hparams", "method": "hparams", "data": "data_options", "data_options": "data_options",
           "recipe": "recipe"}


def settings_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A record's hyper-parameters, dataset options and recipe, by scope."""
    hparams = {**(record.get("hparams") or {}), **hparams_changed(record)}
    return {"hparams": hparams, "data_options": data_options(record), "recipe": recipe(record)}


def has_setting(record: dict[str, Any], key: str) -> bool:
    return record_setting(record, key) is not NO_SETTING


def record_setting(record: dict[str, Any], key: str) -> Any:
    """A record's value for KEY: a field, else a hyper-parameter, a dataset option, a recipe setting;
    prefix hparams. (or method.), data. or recipe. to choose the scope."""
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


# ---------------------------------------------------------------------------------------------
# Small helpers


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def one_line(value: Any) -> str:
    return " ".join(str(value).split())
