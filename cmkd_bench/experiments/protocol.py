"""Protocol 2 (issue 30): one fair tuning protocol for every row, no-kd included.

A suite whose `tune:` says `protocol: 2` runs, per dataset:

1. the recipe study: no-kd in every direction of the suite, on the selection seed, for `budget`
   recipes drawn from the dataset's learning rate x weight decay times the protocol's factors
   (search.RECIPE_FACTORS: lr x {0.2, 0.5, 1, 2}, weight decay x {0.1, 1, 10}; the dataset's own
   recipe always among them). A recipe's score is the mean over the directions of no-kd's best
   validation metric (each direction's student is one modality's model trained alone); the best
   one is selected, and written to OUT/tuning/recipe-<dataset>-<digest>.json;
2. from then on that recipe is every run's recipe, the teacher's included (the teacher is trained
   with the run's recipe: runner.teacher_key hashes it): no-kd on the reported seeds, the
   methods' defaults where `defaults` asks for them, and every method's study (tuning.py), whose
   `budget` candidates run on the selection seed and whose selection runs on the reported seeds;
3. every record of the protocol gets, as soon as its phase (recipe study, reported runs, studies)
   has ended, `protocol`: {version, role (reported, candidate or
   recipe-candidate), selection_seed, reported_seeds, budget, recipe: {study, lr, weight_decay}};
   no-kd's reported records also get a tuning entry (role "selected") for the recipe study, so the
   leaderboard reads no-kd as tuned like every other row.

The selection seed is never a reported seed, so no selection run is reported. Runs are ordinary
runs: a protocol started again skips what completed (the recipe selection is recomputed from the
candidates' records, so it is the same).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..artefacts.files import write_json_atomic
from ..catalog import load_all
from ..artefacts.records import find_record, tuning_entries, write_record
from ..errors import UserError
from ..registry import METHODS
from ..training.runner import resolve_run
from .plan import (DatasetEntry, MethodEntry, Suite, _direction_pairs, _method_entries, _planned, _probe_spec,
                   _request, counted, expand)
from .scheduler import CommandBuilder, PlannedRun
from .search import SearchSpace, TuneSettings, configurations, setting_text
from .tuning import SELECTION_METRIC, Study, _run, _unique, _val, plan_studies, plan_text, run_studies, select

RECIPE_KEYS = ("lr", "weight_decay")


@dataclass
class RecipeStudy:
    study_id: str
    dataset: DatasetEntry
    directions: list[tuple[str, str]]
    base: dict[str, float]  # the dataset's recipe values (with the suite's settings) the factors multiply
    space: SearchSpace
    budget: int
    selection_seed: int
    candidates: list[dict[str, float]]  # absolute recipe values, the dataset's own first
    candidate_runs: list[list[PlannedRun]] = field(default_factory=list)  # per candidate, one run per direction
    scores: list[float | None] = field(default_factory=list)
    selected: int | None = None

    @property
    def chosen(self) -> dict[str, float]:
        return self.candidates[self.selected] if self.selected is not None else dict(self.base)

    def sets(self, index: int | None = None) -> tuple[str, ...]:
        values = self.candidates[index] if index is not None else self.chosen
        return tuple(f"recipe.{key}={setting_text(value)}" for key, value in values.items())


def rounded(value: float) -> float:
    """A recipe value as a short decimal (0.05 x 0.2 is 0.01, not 0.010000000000000002)."""
    return float(f"{value:.6g}")


def plan_recipe_study(suite: Suite, dataset: DatasetEntry, settings: TuneSettings) -> RecipeStudy:
    spec = _probe_spec(suite, dataset)
    # one direction per student modality: no-kd's student does not see its teacher, so a multimodal
    # teacher's column would score the same student again
    by_student: dict[str | None, tuple[str, str]] = {}
    for t, s in _direction_pairs(suite, spec):
        by_student.setdefault(s, (t, s))
    directions = list(by_student.values())
    no_kd = MethodEntry("no-kd")
    first = _request(suite, dataset, no_kd, settings.selection_seed, *directions[0], ())
    recipe = resolve_run(first).config.recipe
    factors = settings.recipe_factors
    base = {key: rounded(float(recipe[key])) for key in RECIPE_KEYS if key in factors}
    space = SearchSpace("recipe", tuple((key, tuple(rounded(base[key] * f) for f in factors[key])) for key in base))
    if space.size < settings.budget:
        raise UserError(f"the recipe space of {dataset.name} has {counted(space.size, 'configuration')}, fewer than the "
                        f"budget {settings.budget}; give more factors in tune recipe")
    candidates = configurations(space, base, settings.budget, settings.sample_seed)
    full = [{**base, **candidate} for candidate in candidates]
    identity = {"dataset": dataset.name, "sets": list(dataset.sets), "suite_sets": list(suite.sets),
                "directions": directions, "space": space.as_dict(), "budget": settings.budget,
                "sample_seed": settings.sample_seed, "selection_seed": settings.selection_seed,
                "base_run": _planned(first).run_id}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    study = RecipeStudy(study_id=f"recipe-{dataset.name}-b{settings.budget}-{digest}", dataset=dataset,
                        directions=directions, base=base, space=space, budget=settings.budget,
                        selection_seed=settings.selection_seed, candidates=full)
    study.candidate_runs = [[_planned(_request(suite, dataset, no_kd, settings.selection_seed, t, s, study.sets(i)))
                             for t, s in directions] for i in range(len(full))]
    return study


def tuned_suite(suite: Suite, recipes: dict[str, RecipeStudy]) -> Suite:
    """The suite with each dataset's selected recipe in front of its own sets (its sets still win)."""
    datasets = [DatasetEntry(entry.name, (*recipes[entry.name].sets(), *entry.sets), entry.data_root)
                for entry in suite.datasets if entry.name in recipes]
    return replace(suite, datasets=datasets)


def reported_runs(suite: Suite, settings: TuneSettings) -> list[PlannedRun]:
    """no-kd, and the methods whose defaults the protocol reports, on the reported seeds."""
    names = ["no-kd"]
    if settings.defaults:
        wanted = None if settings.defaults is True else {METHODS.canonical(name) for name in settings.defaults}
        for dataset in suite.datasets:
            task = _probe_spec(suite, dataset).task
            names += [entry.name for entry in _method_entries(suite, task)
                      if entry.name != "no-kd" and (wanted is None or entry.name in wanted)]
    methods = [MethodEntry(name) for name in dict.fromkeys(names)]
    return expand(replace(suite, methods=methods, grid=()))


# ---------------------------------------------------------------------------------------------
# Running


def check_protocol_suite(suite: Suite, settings: TuneSettings) -> None:
    names = [entry.name for entry in suite.datasets]
    if len(set(names)) < len(names):
        raise UserError("a protocol 2 suite names each dataset once (its recipe is tuned per dataset); put a second "
                        "variant of a dataset in a suite of its own")
    if suite.grid:
        raise UserError("a protocol 2 suite has no grid: tuning draws each method's configurations from its "
                        "search space (drop grid:, or tune: protocol 1)")
    if settings.selection_seed in suite.seeds:
        raise UserError(f"the selection seed {settings.selection_seed} is also a reported seed; under protocol 2 the "
                        f"candidates' seed is never reported: give tune selection_seed another value or drop it from seeds")
    if settings.defaults and settings.defaults is not True:
        for name in settings.defaults:
            METHODS.get(name)  # an unknown name: one line with close matches


def run_protocol(suite: Suite, settings: TuneSettings, jobs: int, devices: Sequence[str], command: CommandBuilder,
                 echo: Callable[[str], None], dry_run: bool = False, rerun_stale: bool = False) -> int:
    """The whole protocol over the suite's datasets; returns the exit code (1 when a run failed).
    `rerun_stale`: completed runs of OUT made under another environment or source than most of their
    table are run again (same run ids), as `suite --rerun-stale` does for protocol 1."""
    load_all(suite.plugins)
    check_protocol_suite(suite, settings)
    stale = stale_ids(suite) if rerun_stale else set()
    recipe_studies = [plan_recipe_study(suite, dataset, settings) for dataset in suite.datasets]
    if dry_run:
        echo(recipe_plan_text(recipe_studies))
        # what follows depends on the recipes selected; planned here under each dataset's own recipe
        reported = reported_runs(suite, settings)
        studies = plan_studies(suite, settings, strict=False)
        echo(f"then, under each dataset's selected recipe: {counted(len(reported), 'reported run')} (no-kd"
             f"{' and defaults' if settings.defaults else ''}, seeds {', '.join(map(str, suite.seeds))}) and "
             f"{counted(len(studies), 'study', 'studies')}, each {counted(settings.budget, 'candidate')} on seed "
             f"{settings.selection_seed}:")
        echo(plan_text(studies))
        return 0
    runs = _unique(run for study in recipe_studies for per_candidate in study.candidate_runs for run in per_candidate)
    echo(f"protocol 2: recipe studies of {', '.join(s.dataset.name for s in recipe_studies)}: "
         f"{counted(len(runs), 'no-kd run')} on seed {settings.selection_seed} "
         f"({sum(run.state == 'done' for run in runs)} already completed)")
    failed = _run(suite, rerun(runs, stale), jobs, devices, command, echo, score="val")
    selected: dict[str, RecipeStudy] = {}
    for study in recipe_studies:
        study.scores = [recipe_score(per_candidate) for per_candidate in study.candidate_runs]
        study.selected = select(study.scores)
        if study.selected is None:
            echo(f"protocol 2: {study.dataset.name}: no recipe candidate completed in every direction; the dataset "
                 f"is left out")
            failed = True
            continue
        write_json_atomic(recipe_summary(study), Path(suite.out) / "tuning" / f"{study.study_id}.json")
        echo(recipe_line(study))
        selected[study.dataset.name] = study
    stamp_recipe_studies(recipe_studies, settings, suite.seeds)  # each phase's records as soon as it ends
    if not selected:
        return 1
    tuned = tuned_suite(suite, selected)
    reported = reported_runs(tuned, settings)
    echo(f"protocol 2: {counted(len(reported), 'reported run')} under the selected recipes on seeds "
         f"{', '.join(map(str, suite.seeds))} ({sum(run.state == 'done' for run in reported)} already completed)")
    failed |= _run(tuned, rerun(reported, stale), jobs, devices, command, echo)
    stamp_reported(reported, selected, settings, suite.seeds)
    studies = plan_studies(tuned, settings, strict=False)
    for study in studies:
        rerun(study.candidate_runs, stale)
    code = run_studies(tuned, studies, jobs, devices, command, echo, stale=stale) if studies else 0
    stamp_studies(studies, selected, settings, suite.seeds)
    return max(code, 1 if failed else 0)


def stale_ids(suite: Suite) -> set[str]:
    from ..reporting.leaderboard.summary import stale_runs  # the leaderboard's own rule, so both mark the same runs

    records = [record for path in sorted(Path(suite.out).glob("*/result.json")) if (record := find_record(path))]
    return set(stale_runs(records))


def rerun(runs: list[PlannedRun], stale: set[str]) -> list[PlannedRun]:
    """`runs`, those completed but stale set to run again (forced: same run id, the record replaced)."""
    for run in runs:
        if run.state == "done" and run.run_id in stale:
            run.state, run.request = "stale", replace(run.request, force=True)
    return runs


def recipe_score(runs: list[PlannedRun]) -> float | None:
    """The mean over the directions of no-kd's best validation metric; None unless every direction completed."""
    scores = [_val(find_record(run.run_dir / "result.json")) for run in runs]
    if any(score is None for score in scores):
        return None
    return sum(scores) / len(scores)


def recipe_summary(study: RecipeStudy) -> dict[str, Any]:
    return {
        "study": study.study_id, "method": "no-kd", "kind": "recipe", "dataset": study.dataset.name,
        "directions": [f"{t}2{s}" for t, s in study.directions], "base": study.base,
        "space": study.space.as_dict(), "space_size": study.space.size, "budget": study.budget,
        "spent": len(study.candidates), "selection_seed": study.selection_seed,
        "selection_metric": f"mean over directions of {SELECTION_METRIC}", "protocol": 2,
        "configurations": [{"recipe": candidate, "run_ids": [run.run_id for run in runs], "val": score}
                           for candidate, runs, score in zip(study.candidates, study.candidate_runs, study.scores)],
        "selected": study.chosen if study.selected is not None else None,
    }


def recipe_line(study: RecipeStudy) -> str:
    settings = ", ".join(f"{key}={value:g}" for key, value in study.chosen.items())
    done = sum(score is not None for score in study.scores)
    return (f"protocol 2: recipe of {study.dataset.name}: selected {settings} (mean val {study.scores[study.selected]:.2f}"
            f" over {counted(len(study.directions), 'direction')}; {done}/{len(study.candidates)} candidates, "
            f"dataset's own {', '.join(f'{k}={v:g}' for k, v in study.base.items())})")


def recipe_plan_text(studies: list[RecipeStudy]) -> str:
    lines = []
    for study in studies:
        lines.append(f"recipe of {study.dataset.name}: {len(study.candidates)} of "
                     f"{counted(study.space.size, 'configuration')} of no-kd in {counted(len(study.directions), 'direction')} "
                     f"on seed {study.selection_seed}, the best mean validation metric selected")
        for candidate, runs in zip(study.candidates, study.candidate_runs):
            settings = ", ".join(f"{key}={value:g}" for key, value in candidate.items())
            for run in runs:
                lines.append(f"  {'done' if run.state == 'done' else 'run':<4} {run.run_id}  {settings}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Stamping the records


def stamp(run: PlannedRun, role: str, recipe: RecipeStudy, settings: TuneSettings, reported_seeds: Sequence[int],
          candidate: int | None = None, tuning: dict[str, Any] | None = None) -> None:
    """The run's record gets its `protocol` entry (and `tuning`, when given); runs without a record are left."""
    path = run.run_dir / "result.json"
    record = find_record(path)
    if record is None or record.get("status") not in ("completed", "failed"):
        return
    values = recipe.candidates[candidate] if candidate is not None else recipe.chosen
    record["protocol"] = {"version": 2, "role": role, "selection_seed": settings.selection_seed,
                          "reported_seeds": list(reported_seeds), "budget": settings.budget,
                          "recipe": {"study": recipe.study_id, **values}}
    if tuning is not None:
        entries = [entry for entry in tuning_entries(record) if entry.get("study") != tuning["study"]]
        record["tuning"] = entries + [tuning]
    write_record(record, path)


def stamp_recipe_studies(recipe_studies: list[RecipeStudy], settings: TuneSettings, seeds: Sequence[int]) -> None:
    for study in recipe_studies:
        for index, runs in enumerate(study.candidate_runs):
            for run in runs:
                stamp(run, "recipe-candidate", study, settings, seeds, index,
                      {"role": "candidate", **recipe_summary(study)} if study.selected is not None else None)


def stamp_reported(reported: list[PlannedRun], selected: dict[str, RecipeStudy], settings: TuneSettings,
                   seeds: Sequence[int]) -> None:
    for run in reported:
        recipe = selected[run.request.dataset]
        tuning = {"role": "selected", **recipe_summary(recipe)} if run.request.method == "no-kd" else None
        stamp(run, "reported", recipe, settings, seeds, tuning=tuning)


def stamp_studies(studies: list[Study], selected: dict[str, RecipeStudy], settings: TuneSettings,
                  seeds: Sequence[int]) -> None:
    for study in studies:
        recipe = selected[study.dataset.name]
        for run in study.candidate_runs:
            stamp(run, "candidate", recipe, settings, seeds)
        for run in study.final_runs:
            stamp(run, "reported", recipe, settings, seeds)
