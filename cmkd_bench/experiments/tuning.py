"""The tuning protocol: every method gets the same budget of configurations, selected on validation.

A method declares a small search space in its registration (`search_space={key: [values]}` on
`METHODS.register`; presets inherit their base's space less the keys they fix). A study is one
method on one dataset and direction:

1. candidates: every configuration of the space, or, when the space has more than `budget`, the
   official defaults plus a subset drawn with a fixed seed (`sample_seed`), so no method gets more
   tries than another; the defaults come first, so a tie goes to them;
2. each candidate runs on the first protocol seed (the selection seed);
3. the candidate with the best validation metric (`metrics.val_best` of its record) is selected;
   test metrics are never read here;
4. the selected configuration runs on every protocol seed.

Runs are ordinary runs (their run ids hash their settings), so a study started again skips what
has completed and resumes what was interrupted; `jobs` runs that many at once. When a study ends,
each of its records gets a `tuning` entry (space, budget, every candidate's validation score,
the selection and the record's role), and OUT/tuning/<study>.json summarises it. The leaderboard
shows a selected configuration as the row "METHOD (tuned)" beside the default row, and leaves the
other candidates out of its tables.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..artefacts.files import write_json_atomic
from ..artefacts.records import direction_label, find_record, is_number, metric, tuning_entries, write_record
from ..catalog import load_all
from ..errors import UserError
from ..registry import METHODS
from ..training.runner import resolve_run
from .executors import start_runs
from .plan import DatasetEntry, MethodEntry, Suite, _direction_pairs, accepts_teacher, _planned, _probe_spec, _request, counted
from .scheduler import CommandBuilder, PlannedRun
from .search import (SearchSpace, TuneSettings, changed_settings, configurations, declared_space, search_space,
                     setting_text)

SELECTION_METRIC = "val_best"


@dataclass
class Study:
    study_id: str
    method: str
    dataset: DatasetEntry
    teacher_modality: str
    student_modality: str
    space: SearchSpace
    budget: int
    sample_seed: int
    seeds: list[int]  # the reported seeds: the selected configuration runs on each
    candidates: list[dict[str, Any]]  # settings that differ from the method's defaults ({} = the defaults)
    selection_seed: int = 0  # the candidates' seed: the first reported seed (protocol 1) or a seed of its own (2)
    protocol: int = 1
    candidate_runs: list[PlannedRun] = field(default_factory=list)
    final_runs: list[PlannedRun] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    selected: int | None = None

    @property
    def label(self) -> str:
        direction = direction_label(self.teacher_modality, self.student_modality, "compact")
        return f"{self.method} on {self.dataset.name} {direction}"


# ---------------------------------------------------------------------------------------------
# Planning


def plan_studies(suite: Suite, settings: TuneSettings, strict: bool) -> list[Study]:
    """One study per (dataset, direction, method with a space). `strict`: a method without one is an error."""
    load_all(suite.plugins)
    if not suite.seeds:
        raise UserError("tuning needs at least one seed (the first one selects)")
    if settings.protocol >= 2 and settings.selection_seed in suite.seeds:
        raise UserError(f"the selection seed {settings.selection_seed} is also a reported seed; under protocol 2 the "
                        f"candidates' seed is never reported: give tune selection_seed another value or drop it from seeds")
    studies = []
    for dataset in suite.datasets:
        spec = _probe_spec(suite, dataset)
        for method in _tunable(suite, spec.task, settings, strict):
            for teacher_modality, student_modality in _direction_pairs(suite, spec):
                if not accepts_teacher(method.name, teacher_modality):
                    continue
                studies.append(_study(suite, dataset, method, teacher_modality, student_modality, settings))
    return studies


def _tunable(suite: Suite, task: str, settings: TuneSettings, strict: bool) -> list[MethodEntry]:
    if suite.methods == "all":
        names = [name for name in METHODS.names(task=task) if name != "no-kd"]
        entries = [MethodEntry(name) for name in names]
    else:
        entries = list(suite.methods)
    kept = []
    for entry in entries:
        method = METHODS.get(entry.name)
        if entry.grid:
            raise UserError(f"method {entry.name!r} has a grid in the suite; tuning draws its own configurations, "
                            f"so give a search space instead")
        if settings.space_for(method.name) is None and not declared_space(method):
            if strict:
                search_space(method.name)  # raises the one-line error
            continue
        kept.append(entry)
    return kept


def _study(suite: Suite, dataset: DatasetEntry, method: MethodEntry, teacher_modality: str | None,
           student_modality: str | None, settings: TuneSettings) -> Study:
    entry = METHODS.get(method.name)
    space = search_space(entry.name, settings.space_for(entry.name))
    defaults = _method_defaults(suite, dataset, method, teacher_modality, student_modality)
    if settings.protocol >= 2 and space.size < settings.budget:
        raise UserError(f"{entry.name}'s search space has {counted(space.size, 'configuration')}, fewer than the budget "
                        f"{settings.budget}; under protocol 2 every study spends exactly its budget: widen the space")
    points = configurations(space, defaults, settings.budget, settings.sample_seed)
    candidates = [changed_settings(point, defaults) for point in points]
    selection_seed = settings.selection_seed if settings.protocol >= 2 else suite.seeds[0]
    runs = [_planned(_request(suite, dataset, method, selection_seed, teacher_modality, student_modality,
                              _as_sets(candidate)))
            for candidate in candidates]
    first = runs[0].request
    identity = {"default_run": _planned(_request(suite, dataset, method, selection_seed, teacher_modality,
                                                 student_modality, ())).run_id,
                "space": space.as_dict(), "budget": settings.budget, "sample_seed": settings.sample_seed}
    if settings.protocol >= 2:  # protocol 1's study ids stay as they were
        identity["protocol"] = settings.protocol
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    t_mod, s_mod = first.teacher_modality, first.student_modality
    study = Study(study_id=f"{entry.name}-{dataset.name}-{t_mod}2{s_mod}-b{settings.budget}-{digest}",
                  method=entry.name, dataset=dataset, teacher_modality=t_mod, student_modality=s_mod, space=space,
                  budget=settings.budget, sample_seed=settings.sample_seed, seeds=list(suite.seeds),
                  candidates=candidates, selection_seed=selection_seed, protocol=settings.protocol, candidate_runs=runs)
    return study


def _method_defaults(suite: Suite, dataset: DatasetEntry, method: MethodEntry, teacher_modality: str | None,
                     student_modality: str | None) -> dict[str, Any]:
    """The method's hyper-parameters in this suite before tuning: its defaults with the suite's settings."""
    request = _request(suite, dataset, method, suite.seeds[0], teacher_modality, student_modality, ())
    return dict(resolve_run(request).config.hparams)


def _as_sets(candidate: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f"method.{key}={setting_text(value)}" for key, value in candidate.items())


def _with_direction(suite: Suite, study: Study, seed: int) -> PlannedRun:
    method = MethodEntry(study.method)
    sets = _as_sets(study.candidates[study.selected]) if study.selected is not None else ()
    return _planned(_request(suite, study.dataset, method, seed, study.teacher_modality, study.student_modality, sets))


# ---------------------------------------------------------------------------------------------
# Running, selecting, recording


def run_studies(suite: Suite, studies: list[Study], jobs: int, devices: Sequence[str], command: CommandBuilder,
                echo: Callable[[str], None], stale: set[str] = frozenset()) -> int:
    """Candidates, selection on val, the selected configuration on every seed; returns the exit code."""
    failed = False
    candidates = _unique(run for study in studies for run in study.candidate_runs)
    seeds = sorted({study.selection_seed for study in studies})
    echo(f"tune: {counted(len(studies), 'study', 'studies')}, {counted(len(candidates), 'candidate run')} on seed "
         f"{', '.join(map(str, seeds))} "
         f"({sum(run.state == 'done' for run in candidates)} already completed)")
    failed |= _run(suite, candidates, jobs, devices, command, echo, score="val")  # their lines: what selects
    for study in studies:
        records = [find_record(run.run_dir / "result.json") for run in study.candidate_runs]
        study.scores = [_val(record) for record in records]
        study.selected = select(study.scores)
        if study.selected is None:
            echo(f"tune: {study.label}: no candidate completed; nothing selected")
            failed = True
            continue
        study.final_runs = [_with_direction(suite, study, seed) for seed in study.seeds]
        for run in study.final_runs:  # protocol 2's --rerun-stale (protocol.rerun)
            if run.state == "done" and run.run_id in stale:
                run.state, run.request = "stale", replace(run.request, force=True)
    finals = _unique(run for study in studies for run in study.final_runs)
    echo(f"tune: {counted(len(finals), 'run')} of the selected configurations on seeds {', '.join(map(str, suite.seeds))} "
         f"({sum(run.state == 'done' for run in finals)} already completed)")
    failed |= _run(suite, finals, jobs, devices, command, echo)
    for study in studies:
        if study.selected is not None:
            write_study(suite, study)
            echo(selection_line(study))
    return 1 if failed else 0


def select(scores: Sequence[float | None]) -> int | None:
    """The index of the best validation score; the first one wins a tie (the defaults come first)."""
    best = None
    for index, score in enumerate(scores):
        if score is not None and (best is None or score > scores[best]):
            best = index
    return best


def _val(record: dict[str, Any] | None) -> float | None:
    if record is None or record.get("status") != "completed":
        return None
    value = metric(record, SELECTION_METRIC)
    return float(value) if is_number(value) else None


def _unique(runs) -> list[PlannedRun]:
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        seen.setdefault(run.run_id, run)
    return list(seen.values())


def _run(suite: Suite, runs: list[PlannedRun], jobs: int, devices: Sequence[str], command: CommandBuilder,
         echo: Callable[[str], None], score: str = "test") -> bool:
    todo = [run for run in runs if run.state != "done"]
    if not todo:
        return False
    outcomes = start_runs(suite, todo, jobs, devices, command, echo, score=score)
    return any(outcome.status == "failed" for outcome in outcomes)


def study_summary(study: Study) -> dict[str, Any]:
    selected = study.candidates[study.selected] if study.selected is not None else None
    return {
        "study": study.study_id,
        "method": study.method,
        "dataset": study.dataset.name,
        "teacher_modality": study.teacher_modality,
        "student_modality": study.student_modality,
        "space": study.space.as_dict(),
        "space_size": study.space.size,
        "budget": study.budget,
        "sample_seed": study.sample_seed,
        "selection_seed": study.selection_seed,
        "reported_seeds": list(study.seeds),
        "selection_metric": SELECTION_METRIC,
        "protocol": study.protocol,
        "spent": len(study.candidates),  # configurations evaluated, failed and diverged ones included
        "configurations": [{"hparams": candidate, "run_id": run.run_id, "val": score}
                           for candidate, run, score in zip(study.candidates, study.candidate_runs, study.scores)],
        "selected": selected,
        "selected_runs": [run.run_id for run in study.final_runs],
    }


def write_study(suite: Suite, study: Study) -> None:
    """The study's summary file, and a `tuning` entry in each of its records (role: candidate or selected)."""
    summary = study_summary(study)
    write_json_atomic(summary, Path(suite.out) / "tuning" / f"{study.study_id}.json")
    roles = {run.run_id: "candidate" for run in study.candidate_runs}
    roles.update({run.run_id: "selected" for run in study.final_runs})
    runs = {run.run_id: run for run in [*study.candidate_runs, *study.final_runs]}
    for run_id, role in roles.items():
        path = runs[run_id].run_dir / "result.json"
        record = find_record(path)
        if record is None or record.get("status") != "completed":
            continue
        entries = [entry for entry in tuning_entries(record) if entry.get("study") != study.study_id]
        entry = {"role": role, **{k: v for k, v in summary.items() if k != "selected_runs"}}
        record["tuning"] = entries + [entry]
        write_record(record, path)


def selection_line(study: Study) -> str:
    chosen = study.candidates[study.selected] if study.selected is not None else None
    settings = ", ".join(f"{k}={v}" for k, v in sorted(chosen.items())) if chosen else "the defaults"
    scores = [score for score in study.scores if score is not None]
    return (f"tune: {study.label}: selected {settings} (val {study.scores[study.selected]:.2f}; "
            f"{len(scores)}/{len(study.candidates)} candidates, space of {study.space.size}, budget {study.budget})")


def plan_text(studies: list[Study]) -> str:
    lines = []
    for study in studies:
        lines.append(f"{study.label}: {len(study.candidates)} of {counted(study.space.size, 'configuration')} "
                     f"(budget {study.budget}) on seed {study.selection_seed}, then the best on seeds "
                     f"{', '.join(map(str, study.seeds))}")
        for candidate, run in zip(study.candidates, study.candidate_runs):
            settings = ", ".join(f"{k}={v}" for k, v in sorted(candidate.items())) or "(defaults)"
            state = "done" if run.state == "done" else "run"
            lines.append(f"  {state:<4} {run.run_id}  {settings}")
    return "\n".join(lines)
