"""Suites as data: a grid of runs (methods x datasets x directions x seeds x settings) defined once,
read from a suite file and the command line, and expanded into planned runs.

A suite expands to `cmkd-bench run` requests, each resolved by `runner.resolve_run`, so run ids,
defaults and checks are exactly those of a single run; an entry that a single run would refuse
stops the whole suite, with one line, before anything runs. Runs are identified by their run id:
started again, a suite skips what has completed and resumes what was interrupted (the run picks
up its checkpoint). `--jobs N` runs N at once, each in its own `python -m cmkd_bench run` process,
so that a crash or a kill takes down one run, not the suite; runs that need one teacher train it
once, the others waiting on the runner's teacher lock (cmkd_bench.experiments.scheduler runs them). The
command line of each run comes from the caller: the CLI builds it from `run`'s own options.

Suite file (YAML; every key optional except methods and datasets). Every relative path in a suite
file (out, data_root, a dataset's data_root, teacher_cache, plugins) is relative to the file's
folder, so `out: ../runs` in leaderboard/suites/ is leaderboard/runs wherever the command runs
from, and a suite file works from any folder; `~` is the home folder. Paths given on the command
line (--out, --data-root, --teacher-cache, --plugin) are relative to the folder the command runs
from, as everywhere else:

    datasets: [synth-av]          # names, or {name: NAME, sets: {KEY: VALUE}, data_root: PATH}
    methods: all                  # every method for the dataset's task, or a list of names,
                                  # or {name: NAME, sets: {KEY: VALUE}, grid: {KEY: [V1, V2]}}
    directions: both              # default | both | [visual->audio, audio->visual]
    teachers: [cross]             # cross: the other modality's teacher (the directions above); multimodal:
                                  # also a teacher of every modality (models/fusion.py) for each of those
                                  # students, e.g. visual+audio -> visual, for the methods that accept one
    teacher_fusion: concat-mlp    # the multimodal teacher's fusion (default concat; `cmkd-bench list backbones`)
    seeds: [0, 1, 2]
    sets: {epochs: 12}            # settings for every run, as with `run --set`
    grid: {T: [2, 4]}             # every combination of these values is a run of its own
    out: runs                     # runs go to OUT/<run_id>/ (relative to this file's folder;
                                  # without out:, ./runs)
    epochs: / teacher_epochs: / batch_size: / lr: / student: / teacher: / device: / teacher_cache: / data_root: / plugins: [...]
    threads_per_run: 1            # CPU threads of each run (default 1, as for `run`; in the run id otherwise)
    slurm: {account: myproject}   # sbatch options of --executor slurm, as `--slurm KEY=VALUE` (executors.py)
    tune: {budget: 8}             # also tune every method with a search space (see cmkd_bench.experiments.tuning):
                                  # true, or {budget: N, sample_seed: S, spaces: {METHOD: {KEY: [VALUES]}}}
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from ..artefacts.files import check_writable_dir
from ..artefacts.records import direction_label, find_record
from ..catalog import all_plugin_files, load_all
from ..data.spec import DatasetSpec
from ..errors import UserError
from ..models.fusion import all_modalities, get_fusion, is_fusion
from ..registry import METHODS
from ..training.engine import resolve_device
from ..training.runner import ResolvedRun, RunRequest, existing_record, reads_data_root, resolve_run
from .scheduler import PlannedRun
from .search import TuneSettings, setting_text, settings_from_mapping

DEFAULT_SEEDS = (0, 1, 2)  # the protocol: mean ± std over 3 seeds, both directions
DEFAULT_DIRECTIONS = "both"
TEACHER_SETTINGS = ("cross", "multimodal")
SUITE_KEYS = ("datasets", "methods", "directions", "teachers", "seeds", "sets", "grid", "out", "epochs", "teacher_epochs",
              "batch_size", "lr", "student", "teacher", "device", "teacher_cache", "data_root", "plugins", "tune",
              "threads_per_run", "slurm", "teacher_fusion")


# ---------------------------------------------------------------------------------------------
# The suite as data


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    sets: tuple[str, ...] = ()
    data_root: str | None = None


@dataclass(frozen=True)
class MethodEntry:
    name: str
    sets: tuple[str, ...] = ()
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass
class Suite:
    datasets: list[DatasetEntry]
    methods: list[MethodEntry] | str  # "all": every method that supports the dataset's task
    directions: str | list[tuple[str, str]] = DEFAULT_DIRECTIONS  # "default", "both" or explicit pairs
    teachers: tuple[str, ...] = ("cross",)  # TEACHER_SETTINGS: the directions' teachers and/or a multimodal one
    teacher_fusion: str | None = None  # the multimodal teacher's fusion (models/fusion.py FUSIONS; None: concat)
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    sets: tuple[str, ...] = ()
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    out: str = "runs"
    epochs: int | None = None
    teacher_epochs: int | None = None  # run --teacher-epochs for every run
    batch_size: int | None = None
    lr: float | None = None
    student: str | None = None
    teacher: str | None = None
    device: str = "auto"
    teacher_cache: str | None = None
    data_root: str | None = None
    plugins: tuple[str, ...] = ()
    tune: TuneSettings | None = None  # after the default runs, tune every method with a search space
    threads_per_run: int | None = None  # CPU threads of each run (default: run's, 1; on SLURM, the task's CPUs)
    cluster: Any = None  # executors.ClusterSettings: `--executor slurm` submits the runs through submitit
    slurm: dict[str, Any] = field(default_factory=dict)  # the file's sbatch options, checked by executors.cluster_settings


# ---------------------------------------------------------------------------------------------
# Reading a suite file and the command-line flags


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = f"not UTF-8 text at byte {error.start}" if isinstance(error, UnicodeDecodeError) else error.strerror or error
        raise UserError(f"suite file {str(path)!r} cannot be read ({reason}); pass a UTF-8 .yaml file") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"suite file {str(path)!r} is not valid YAML{line}; fix its syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"suite file {str(path)!r} must be a mapping of keys ({', '.join(SUITE_KEYS)})")
    suite = suite_from_mapping(raw, where=str(path))
    _paths_from(suite, raw, path.parent)
    return suite


def _paths_from(suite: Suite, raw: dict[str, Any], folder: Path) -> None:
    """The file's relative paths made relative to its folder, not to where the command runs."""
    def place(text: str | None) -> str | None:
        if text is None:
            return None
        expanded = os.path.expanduser(text)
        return expanded if os.path.isabs(expanded) else os.path.normpath(folder / expanded)

    for key in ("out", "data_root", "teacher_cache"):
        if raw.get(key) is not None:  # without out:, ./runs as with `run`
            setattr(suite, key, place(getattr(suite, key)))
    suite.plugins = tuple(place(plugin) for plugin in suite.plugins)
    suite.datasets = [DatasetEntry(entry.name, entry.sets, place(entry.data_root)) for entry in suite.datasets]


def suite_from_mapping(raw: dict[str, Any], where: str = "suite") -> Suite:
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; suite keys are {', '.join(SUITE_KEYS)}")
    for key in ("datasets", "methods"):
        if key not in raw:
            raise UserError(f"{where}: no {key!r}; a suite names its datasets and methods")
    return Suite(
        datasets=[_dataset_entry(item, where) for item in _as_list(raw["datasets"], "datasets", where)],
        methods=_methods(raw["methods"], where),
        directions=_directions(raw.get("directions", DEFAULT_DIRECTIONS), where),
        teachers=_teachers(raw.get("teachers", ["cross"]), where),
        teacher_fusion=_fusion(_optional(raw, "teacher_fusion", str, where), where),
        seeds=_seeds(raw.get("seeds", list(DEFAULT_SEEDS)), where),
        sets=_sets(raw.get("sets") or {}, "sets", where),
        grid=_grid(raw.get("grid") or {}, where),
        out=_optional(raw, "out", str, where) or "runs",
        epochs=_optional(raw, "epochs", int, where), teacher_epochs=_optional(raw, "teacher_epochs", int, where),
        batch_size=_optional(raw, "batch_size", int, where),
        lr=_optional(raw, "lr", float, where),
        student=_optional(raw, "student", str, where), teacher=_optional(raw, "teacher", str, where),
        device=str(raw.get("device", "auto")),
        teacher_cache=_optional(raw, "teacher_cache", str, where), data_root=_optional(raw, "data_root", str, where),
        plugins=tuple(str(p) for p in _as_list(raw["plugins"], "plugins", where)) if raw.get("plugins") else (),
        tune=_tune(raw.get("tune"), where),
        threads_per_run=_optional(raw, "threads_per_run", int, where),
        slurm=_slurm(raw.get("slurm"), where),
    )


def _fusion(name: str | None, where: str) -> str | None:
    """A registered fusion's name (models/fusion.py), or one line naming the registered ones."""
    if name is None:
        return None
    try:
        return get_fusion(name).name
    except UserError as error:
        raise UserError(f"{where}: {error}") from None


def _slurm(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: slurm must map sbatch options to values, e.g. slurm: {{account: myproject}}")
    return dict(value)


def _tune(value: Any, where: str) -> TuneSettings | None:
    if value is None or value is False:
        return None
    return settings_from_mapping(value, where)


def _as_list(value: Any, key: str, where: str) -> list[Any]:
    if isinstance(value, (str, dict)):
        return [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: {key} must be a name or a non-empty list")
    return value


def _optional(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if raw.get(key) is None:
        return None
    value = raw[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: {key} must be an integer, got {value!r}")
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise UserError(f"{where}: {key} must be a finite number, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise UserError(f"{where}: {key} must be a string (one path or name), got {value!r}")
    return kind(value)


def _dataset_entry(item: Any, where: str) -> DatasetEntry:
    if isinstance(item, str):
        return DatasetEntry(item)
    if isinstance(item, dict) and "name" in item and set(item) <= {"name", "sets", "data_root"}:
        root = item.get("data_root")
        return DatasetEntry(str(item["name"]), _sets(item.get("sets") or {}, "datasets.sets", where),
                            None if root is None else str(root))
    raise UserError(f"{where}: a dataset is a name or {{name, sets, data_root}}, got {item!r}")


def _methods(value: Any, where: str) -> list[MethodEntry] | str:
    if value == "all":
        return "all"
    return [_method_entry(item, where) for item in _as_list(value, "methods", where)]


def _method_entry(item: Any, where: str) -> MethodEntry:
    if isinstance(item, str):
        return MethodEntry(item)
    if isinstance(item, dict) and "name" in item and set(item) <= {"name", "sets", "grid"}:
        return MethodEntry(str(item["name"]), _sets(item.get("sets") or {}, "methods.sets", where),
                           _grid(item.get("grid") or {}, where))
    raise UserError(f"{where}: a method is a name or {{name, sets, grid}}, got {item!r}")


def _directions(value: Any, where: str) -> str | list[tuple[str, str]]:
    if value in ("default", "both"):
        return value
    pairs = []
    for item in _as_list(value, "directions", where):
        teacher, sep, student = str(item).replace("→", "->").partition("->")
        if not sep or not teacher.strip() or not student.strip():
            raise UserError(f"{where}: direction {item!r} is not TEACHER->STUDENT (or default, both)")
        pairs.append((teacher.strip(), student.strip()))
    return pairs


def _teachers(value: Any, where: str) -> tuple[str, ...]:
    settings = _as_list(value, "teachers", where)
    unknown = [item for item in settings if item not in TEACHER_SETTINGS]
    if unknown:
        raise UserError(f"{where}: teachers {unknown[0]!r} is not one of {', '.join(TEACHER_SETTINGS)} "
                        f"(cross: the other modality's teacher; multimodal: a teacher of every modality)")
    return tuple(dict.fromkeys(settings))


def _seeds(value: Any, where: str) -> list[int]:
    seeds = _as_list(value, "seeds", where) if not isinstance(value, int) else [value]
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise UserError(f"{where}: seeds must be integers, got {value!r}")
    return list(dict.fromkeys(seeds))


def _sets(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, dict):
        return tuple(f"{name}={setting_text(setting)}" for name, setting in value.items())
    if isinstance(value, list) and all(isinstance(item, str) and "=" in item for item in value):
        return tuple(value)
    raise UserError(f"{where}: {key} must map KEY: VALUE (or list KEY=VALUE strings), got {value!r}")


def _grid(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: grid must map KEY: [VALUES], got {value!r}")
    grid = []
    for name, values in value.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"{where}: grid key {name!r} has no values")
        grid.append((str(name), tuple(setting_text(v) for v in values)))
    return tuple(grid)


def parse_grid_flag(text: str) -> tuple[str, tuple[str, ...]]:
    key, sep, values = text.partition("=")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not key.strip() or not items:
        raise UserError(f"--grid {text!r} is not KEY=V1,V2,...; write for example --grid T=1,2,4")
    return key.strip(), items


def merge_grid(base: Sequence[tuple[str, tuple[str, ...]]],
               extra: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    merged = dict(base)
    merged.update(extra)  # a flag replaces the file's values for its key
    return tuple(merged.items())


def _comma_list(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def suite_with_flags(suite_file: str | None, flags: dict[str, Any]) -> Suite:
    """The suite file (if any) with the command-line flags taking precedence."""
    if suite_file is not None:
        suite = load_suite(suite_file)
    elif flags["methods"] and flags["datasets"]:
        suite = suite_from_mapping({"datasets": _comma_list(flags["datasets"]),
                                    "methods": _comma_list(flags["methods"])}, where="command line")
    else:
        raise UserError("give a suite file, or --methods and --datasets for a quick grid")
    if flags["datasets"]:
        suite.datasets = [DatasetEntry(name) for name in _comma_list(flags["datasets"]) or []]
    if flags["methods"]:
        names = _comma_list(flags["methods"]) or []
        suite.methods = "all" if names == ["all"] else [MethodEntry(name) for name in names]
    if flags["seeds"] is not None:
        suite.seeds = _seeds(_int_list(flags["seeds"]), "--seeds")
    if flags["directions"] is not None:
        suite.directions = _directions(flags["directions"] if flags["directions"] in ("default", "both")
                                       else _comma_list(flags["directions"]), "--directions")
    suite.sets = (*suite.sets, *flags["sets"])
    suite.grid = merge_grid(suite.grid, [parse_grid_flag(text) for text in flags["grid"]])
    # every plug-in file, absolute: each run's process gets them on its command line (cli/suite.py), from any folder
    suite.plugins = all_plugin_files((*suite.plugins, *flags["plugins"]))
    for key in ("out", "epochs", "teacher_epochs", "batch_size", "lr", "student", "teacher", "teacher_cache",
                "data_root", "threads_per_run"):
        if flags.get(key) is not None:
            setattr(suite, key, flags[key])
    if flags.get("teacher_fusion") is not None:
        suite.teacher_fusion = _fusion(flags["teacher_fusion"], "--teacher-fusion")
    if suite.teacher_fusion is not None and "multimodal" not in suite.teachers:
        raise UserError(f"teacher fusion {suite.teacher_fusion!r} fuses a multimodal teacher, which this suite has none "
                        "of; add multimodal to its teachers: (teachers: [cross, multimodal]) or drop the fusion")
    if not suite.datasets or not suite.methods:
        raise UserError("the suite names no dataset or no method; list them in the file or with --datasets/--methods")
    check_writable_dir(suite.out, "--out" if flags["out"] is not None else "the suite's out:")
    return suite


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in _comma_list(text) or []]
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a list of integers; write for example --seeds 0,1,2") from None


def job_devices(device: str | None, devices: str | None, jobs: int | None) -> tuple[list[str], int]:
    """The device of each job slot (from --device or --devices) and the number of slots (--jobs)."""
    names = _comma_list(devices) if devices else [device or "auto"]
    if not names:
        raise UserError("--devices is empty; write for example --devices cuda:0,cuda:1")
    jobs = jobs if jobs is not None else len(names)
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    for name in names:
        resolve_device(name)  # a bad name or a missing GPU: one line, before anything runs
    return names, jobs


# ---------------------------------------------------------------------------------------------
# Expansion: suite -> resolved run requests


def expand(suite: Suite) -> list[PlannedRun]:
    """Every run of the suite, in order, each checked by runner.resolve_run; duplicates once."""
    load_all(suite.plugins)
    planned: dict[str, PlannedRun] = {}
    for dataset in suite.datasets:  # runner.build_data reuses each dataset it has built
        for run in _expand_dataset(suite, dataset):
            planned.setdefault(run.run_id, run)
    return list(planned.values())


def _expand_dataset(suite: Suite, dataset: DatasetEntry) -> Iterator[PlannedRun]:
    spec = _probe_spec(suite, dataset)
    for seed in suite.seeds:
        for teacher_modality, student_modality in _direction_pairs(suite, spec):
            for method in _method_entries(suite, spec.task):
                if not accepts_teacher(method.name, teacher_modality):
                    continue
                for point in _grid_points(merge_grid(suite.grid, method.grid)):
                    request = _request(suite, dataset, method, seed, teacher_modality, student_modality, point)
                    yield _planned(request)


def _probe_spec(suite: Suite, dataset: DatasetEntry) -> DatasetSpec:
    """The dataset's spec (modalities, task), read through the first run the suite asks of it."""
    methods = suite.methods
    method = MethodEntry("no-kd") if methods == "all" else methods[0]
    point = next(_grid_points(merge_grid(suite.grid, method.grid)))
    request = _request(suite, dataset, method, suite.seeds[0], None, None, point)
    return _resolve(request).data.spec


def _direction_pairs(suite: Suite, spec: DatasetSpec) -> list[tuple[str | None, str | None]]:
    """(teacher modality, student modality) of each column: the directions' (teachers: cross) and, with
    teachers: multimodal, a teacher of every modality for each of their students."""
    default = (spec.teacher_modality, spec.student_modality)
    if suite.directions == "default":
        cross = [default]
    elif suite.directions == "both":
        cross = [default, default[::-1]]
    else:
        cross = list(suite.directions)
    pairs = list(cross) if "cross" in suite.teachers else []
    if "multimodal" in suite.teachers:
        pairs += [(all_modalities(spec), student) for student in dict.fromkeys(s for _, s in cross)]
    return pairs


def accepts_teacher(method: str, teacher_modality: str | None) -> bool:
    """Whether `method` runs with this teacher: a suite leaves a method out of the columns whose teacher
    it refuses (a multimodal one: Method.unimodal_teacher_only, e.g. mgdfr; a one-modality one:
    Method.multimodal_teacher_only, e.g. mst) instead of stopping."""
    try:
        implementation = METHODS.get(method).implementation
    except UserError:  # an unknown name: the suite's own check names it, in its words
        return True
    refusal = "unimodal_teacher_only" if is_fusion(teacher_modality) else "multimodal_teacher_only"
    return getattr(implementation, refusal, None) is None


def _method_entries(suite: Suite, task: str) -> list[MethodEntry]:
    if suite.methods != "all":
        return list(suite.methods)
    names = METHODS.names(task=task)
    return [MethodEntry(name) for name in ["no-kd"] + [n for n in names if n != "no-kd"]]


def _grid_points(grid: Sequence[tuple[str, tuple[str, ...]]]) -> Iterator[tuple[str, ...]]:
    keys = [key for key, _ in grid]
    for values in itertools.product(*(values for _, values in grid)):
        yield tuple(f"{key}={value}" for key, value in zip(keys, values))


def _request(suite: Suite, dataset: DatasetEntry, method: MethodEntry, seed: int, teacher_modality: str | None,
             student_modality: str | None, point: tuple[str, ...]) -> RunRequest:
    return RunRequest(
        method=method.name, dataset=dataset.name, student_modality=student_modality,
        teacher_modality=teacher_modality, student_backbone=suite.student, teacher_backbone=suite.teacher,
        epochs=suite.epochs, teacher_epochs=suite.teacher_epochs, batch_size=suite.batch_size, lr=suite.lr, seed=seed,
        device=suite.device,
        # a suite-wide data_root is for the datasets that read one (not synth-av, synth-rgbd, mfh-gauss)
        data_root=dataset.data_root or (suite.data_root if reads_data_root(dataset.name) else None), out=suite.out,
        sets=(*dataset.sets, *suite.sets, *method.sets, *point), teacher_cache=suite.teacher_cache,
        threads=run_threads(suite), teacher_fusion=suite.teacher_fusion if is_fusion(teacher_modality) else None,
    )


def run_threads(suite: Suite) -> int | None:
    """Each run's CPU threads, in its request (so in its run id where not the default): the suite's
    threads_per_run; on a cluster, each task's CPUs; else None, `run`'s default (1)."""
    if suite.threads_per_run is not None:
        if suite.threads_per_run < 1:
            raise UserError(f"--threads-per-run must be at least 1, got {suite.threads_per_run}")
        return suite.threads_per_run
    if suite.cluster is not None and suite.cluster.submits:
        return suite.cluster.cpus
    return None


def _resolve(request: RunRequest) -> ResolvedRun:
    try:
        return resolve_run(request)
    except UserError as error:
        raise UserError(f"suite entry {_request_label(request)}: {error}") from None


def _request_label(request: RunRequest) -> str:
    direction = (f" {direction_label(request.teacher_modality, request.student_modality, 'ascii')}"
                 if request.teacher_modality else "")
    sets = f" [{' '.join(request.sets)}]" if request.sets else ""
    return f"(method {request.method}, dataset {request.dataset}{direction}, seed {request.seed}{sets})"


def _planned(request: RunRequest) -> PlannedRun:
    resolved = _resolve(request)
    config = resolved.config
    changed = ", ".join(f"{k}={v}" for k, v in sorted(config.hparams_changed.items()))
    label = (f"{config.method} {config.dataset} "
             f"{direction_label(config.teacher_modality, config.student_modality, 'compact')} "
             f"seed {config.seed}" + (f" ({changed})" if changed else ""))
    if existing_record(resolved) is not None:
        state = "done"
    elif (resolved.run_dir / "checkpoint.pt").exists():
        state = "resume"
    elif find_record(resolved.run_dir / "result.json") is not None:
        state = "retry"
    else:
        state = "new"
    return PlannedRun(request=request, run_id=config.run_id, label=label, state=state)


def mark_stale(planned: list[PlannedRun]) -> int:
    """`--rerun-stale`: completed runs whose records were made under another environment (library
    versions, CPU threads) or code revision than most of their table's are run again (state
    "stale", with force: same run id, the record replaced). Returns how many."""
    from dataclasses import replace

    from ..reporting.leaderboard.summary import stale_runs  # the leaderboard's own rule, so both mark the same runs

    done = {run.run_id: run for run in planned if run.state == "done"}
    records = [record for run in done.values() if (record := find_record(run.run_dir / "result.json")) is not None]
    stale = stale_runs(records)
    for run_id, differs in stale.items():
        run = done[run_id]
        run.state, run.request = "stale", replace(run.request, force=True)
        run.label += f" [{'; '.join(differs)}]"
    return len(stale)


def plan_text(planned: list[PlannedRun]) -> str:
    states = {"done": "skip (completed)", "resume": "resume", "new": "run", "retry": "run (failed before)",
              "stale": "rerun (stale)"}
    lines = [f"{states[run.state]:<20} {run.run_id}  {run.label}" for run in planned]
    return "\n".join(lines + [counts_line(planned)])


def counts_line(planned: list[PlannedRun]) -> str:
    done = sum(run.state == "done" for run in planned)
    resume = sum(run.state == "resume" for run in planned)
    return (f"{counted(len(planned), 'run')}: {done} already completed (skipped), {resume} to resume, "
            f"{len(planned) - done - resume} to run")


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """'1 epoch', '2 epochs': a count with its noun, singular for one."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
