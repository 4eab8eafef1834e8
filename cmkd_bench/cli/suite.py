"""`cmkd-bench suite` and `cmkd-bench tune`: grids of runs, each run in a process of its own.

A suite's run is the process `python -m cmkd_bench run ...` whose arguments `run_command_line`
builds from `run`'s own options (cli/run.py `run_arguments`): whatever `run` takes, a suite passes.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Sequence

import click

from ..catalog import load_all
from ..errors import UserError
from ..experiments.executors import EXECUTORS, cluster_settings, status_text
from ..experiments.plan import job_devices, suite_with_flags
from ..experiments.search import TuneSettings, check_budget, parse_space_flags
from ..experiments.protocol import run_protocol
from ..experiments.suite import run_suite
from ..experiments.tuning import plan_studies, plan_text, run_studies
from ..training.runner import RunRequest
from .options import per_run_options, plugin_option
from .run import run_arguments


def run_command_line(request: RunRequest, device: str, plugins: Sequence[str]) -> list[str]:
    """The process of one run of a suite: `run` with the request's options, on the job slot's
    device, quiet, with the suite's plug-ins (same request, same run id)."""
    return [sys.executable, "-m", "cmkd_bench", "run",
            *run_arguments(replace(request, device=device), quiet=True, plugins=plugins)]


@click.command("suite")
@click.argument("suite_file", required=False, type=click.Path())
@click.option("--methods", help="Comma-separated methods, or 'all' (every method for the dataset's task).")
@click.option("--datasets", help="Comma-separated datasets.")
@click.option("--seeds", help="Comma-separated seeds. Default: the file's, else 0,1,2.")
@click.option("--directions", help="default, both, or TEACHER->STUDENT pairs, comma-separated. Default: both.")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="A run per value (repeatable: every combination).")
@per_run_options
@click.option("--out", help="Runs go to OUT/<run_id>/ (default: the file's, else runs).")
@click.option("--jobs", "-j", type=int, help="Runs at once on this machine. Default: 1 (one per --devices entry).")
@click.option("--device", help="auto, cpu, cuda or cuda:N for every run. Default: the file's, else auto.")
@click.option("--devices", help="Comma-separated devices; job slots take them in turn (e.g. cuda:0,cuda:1).")
@click.option("--dry-run", is_flag=True, help="List the runs and what would happen to each; run nothing.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: runs as processes here (--jobs at a time); slurm: a SLURM job array through submitit "
                   "(pip install 'cmkd-bench[cluster]'); submitit-local: submitit's jobs on this machine.")
@click.option("--partition", help="--executor slurm: the SLURM partition.")
@click.option("--gpus-per-run", type=int, help="--executor slurm: GPUs of each run's job (default 1; 0 with --device cpu).")
@click.option("--cpus-per-run", type=int, help="--executor slurm: CPUs of each run's job, also its threads (default 8).")
@click.option("--time", "time_limit", help="--executor slurm: each job's time limit, HH:MM:SS (default 04:00:00).")
@click.option("--array-parallelism", type=int, help="--executor slurm: jobs of the array running at once (default 64).")
@click.option("--slurm", "slurm_flags", multiple=True, metavar="KEY=VALUE",
              help="--executor slurm: another sbatch option of each job (repeatable), as sbatch spells it: "
                   "account=myproject, qos=high, mem=32G, constraint=a100, requeue, setup='module load cuda'; "
                   "also the suite file's slurm: {KEY: VALUE}.")
@click.option("--status", "status_dir", type=click.Path(), metavar="DIR",
              help="Print how the runs in DIR stand (completed, running, failed, pending) from their files; run nothing.")
@click.option("--rerun-stale", is_flag=True,
              help="Also rerun completed runs made under another environment (library versions, CPU threads) or "
                   "code revision than most of their table (the leaderboard marks them); same run ids.")
@plugin_option
def suite_command(suite_file: str | None, jobs: int | None, device: str | None, devices: str | None,
                  dry_run: bool, rerun_stale: bool, executor: str, partition: str | None, gpus_per_run: int | None,
                  cpus_per_run: int | None, time_limit: str | None, array_parallelism: int | None,
                  slurm_flags: tuple[str, ...], status_dir: str | None, **flags: Any) -> None:
    """Run a grid of runs (SUITE_FILE and/or flags); finished runs are skipped, interrupted ones resume.

    With --executor slurm this command submits the runs as job arrays and waits for them: keep it
    running (tmux, screen, or a job of its own; see docs/scaling.md). --dry-run shows the job arrays.

    Exit code 0 when no run failed, 1 when one did, 2 for bad input (nothing runs).
    """
    if status_dir is not None:
        click.echo(status_text(status_dir))
        return
    suite = suite_with_flags(suite_file, flags)
    suite.cluster = cluster_settings(executor, partition, gpus_per_run, cpus_per_run, time_limit, array_parallelism,
                                     slurm_flags, suite.slurm, f"suite file {suite_file!r}")
    if device is not None:
        suite.device = device
    device_names, jobs = job_devices(None if devices else suite.device, devices, jobs)
    code = run_suite(suite, jobs, device_names, dry_run, run_command_line, click.echo, rerun_stale=rerun_stale)
    if code:
        sys.exit(code)


@click.command("tune")
@click.argument("suite_file", required=False, type=click.Path())
@click.option("--method", "method_names", multiple=True,
              help="Method to tune (repeatable, or 'all': every method with a search space).")
@click.option("--dataset", "dataset_names", multiple=True, help="Dataset (repeatable).")
@click.option("--budget", type=int, help="Configurations per study (default 8, the same for every method).")
@click.option("--space", "spaces", multiple=True, metavar="KEY=V1,V2",
              help="Search this space instead of the method's declared one (repeatable; one --method only).")
@click.option("--sample-seed", type=int, help="Seed of the subset drawn from a space larger than the budget (default 0).")
@click.option("--protocol", type=click.Choice(["1", "2"]),
              help="1: candidates on the first seed, which is reported too. 2 (the committed leaderboards'): the "
                   "recipe tuned on no-kd first, exactly --budget candidates a study on a selection seed never "
                   "reported. Default: the file's, else 1.")
@click.option("--selection-seed", type=int, help="Protocol 2: the candidates' seed (default 1000; not one of --seeds).")
@click.option("--seeds", help="Protocol seeds, comma-separated; the first selects. Default: the file's, else 0,1,2.")
@click.option("--directions", help="default, both, or TEACHER->STUDENT pairs, comma-separated. Default: both.")
@per_run_options
@click.option("--out", help="Runs go to OUT/<run_id>/, study summaries to OUT/tuning/ (default: runs).")
@click.option("--jobs", "-j", type=int, help="Runs at once on this machine. Default: 1 (one per --devices entry).")
@click.option("--device", help="auto, cpu, cuda or cuda:N for every run.")
@click.option("--devices", help="Comma-separated devices; job slots take them in turn.")
@click.option("--dry-run", is_flag=True, help="List the studies and their configurations; run nothing.")
@plugin_option
def tune_command(suite_file: str | None, method_names: tuple[str, ...], dataset_names: tuple[str, ...],
                 budget: int | None, spaces: tuple[str, ...], sample_seed: int | None, protocol: str | None,
                 selection_seed: int | None, jobs: int | None,
                 device: str | None, devices: str | None, dry_run: bool, **flags: Any) -> None:
    """Tune METHOD on DATASET: candidates on the selection seed, the best on val run on every seed.

    Protocol 1: candidates on the first seed. Protocol 2: the dataset's recipe is tuned on no-kd first,
    each study spends exactly --budget on --selection-seed, and the selection runs on --seeds.

    Exit code 0 when no run failed, 1 when one did, 2 for bad input (nothing runs).
    """
    load_all(flags["plugins"])
    flags.update(methods=",".join(method_names) or None, datasets=",".join(dataset_names) or None, grid=())
    suite = suite_with_flags(suite_file, flags)
    base = suite.tune or TuneSettings()
    single = method_names[0] if len(method_names) == 1 and method_names[0] != "all" else None
    settings = TuneSettings(budget=check_budget(budget) if budget is not None else base.budget,
                            spaces=parse_space_flags(spaces, single) or base.spaces,
                            sample_seed=base.sample_seed if sample_seed is None else sample_seed,
                            protocol=int(protocol) if protocol is not None else base.protocol,
                            selection_seed=base.selection_seed if selection_seed is None else selection_seed,
                            recipe=base.recipe, defaults=base.defaults)
    if selection_seed is not None and settings.protocol < 2:
        raise UserError("--selection-seed belongs to protocol 2 (under protocol 1 the first seed selects); "
                        "add --protocol 2")
    if device is not None:
        suite.device = device
    device_names, jobs = job_devices(None if devices else suite.device, devices, jobs)
    if settings.protocol >= 2:  # the recipe study, no-kd, then the studies: the whole protocol for these methods
        code = run_protocol(suite, settings, jobs, device_names, run_command_line, click.echo, dry_run=dry_run)
        if not dry_run:
            click.echo(f"tables: cmkd-bench leaderboard {suite.out}")
        if code:
            sys.exit(code)
        return
    studies = plan_studies(suite, settings, strict=suite.methods != "all")
    if not studies:
        raise UserError("no method to tune: none of the methods given declares a search space")
    if dry_run:
        click.echo(plan_text(studies))
        return
    code = run_studies(suite, studies, jobs, device_names, run_command_line, click.echo)
    click.echo(f"tables: cmkd-bench leaderboard {suite.out}")
    if code:
        sys.exit(code)
