"""Running a suite: its runs, then its tuning studies, `--jobs` at a time or on a cluster.

The suite itself (the file format, the flags, the expansion into runs) is cmkd_bench.experiments.plan;
here the planned runs are started (cmkd_bench.experiments.executors), skipped where completed and
resumed where interrupted, then the suite's tuning studies run (cmkd_bench.experiments.tuning).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from .executors import check_can_submit, start_runs, submission_plan_text
from .plan import Suite, counted, counts_line, expand, mark_stale, plan_text
from .scheduler import CommandBuilder, Outcome, PlannedRun, print_now
from .protocol import run_protocol
from .tuning import plan_studies, plan_text as tuning_plan_text, run_studies


def run_suite(suite: Suite, jobs: int, devices: Sequence[str], dry_run: bool, command: CommandBuilder,
              echo: Callable[[str], None] = print_now, rerun_stale: bool = False) -> int:
    """Expand, then run what is left; returns the exit code (0 none failed, 1 some failed).
    `rerun_stale`: also rerun completed runs made under another environment than their table's (mark_stale)."""
    submits = suite.cluster is not None and suite.cluster.submits
    if submits and not dry_run:
        check_can_submit(suite.cluster)  # no SLURM here: one line, before anything is planned or written
    if suite.tune is not None and suite.tune.protocol >= 2:
        # the protocol decides every run (the recipe study, no-kd, the studies): no separate runs at the defaults
        code = run_protocol(suite, suite.tune, jobs, devices, command, echo, dry_run=dry_run, rerun_stale=rerun_stale)
        if not dry_run:
            echo(f"tables: cmkd-bench leaderboard {suite.out}")
        return code
    planned = expand(suite)
    if rerun_stale:
        mark_stale(planned)
    studies = []
    if suite.tune is not None:
        studies = plan_studies(suite, suite.tune, strict=False)
    todo = [run for run in planned if run.state != "done"]
    if dry_run:
        echo(plan_text(planned))
        if submits:
            echo(submission_plan_text(todo, suite.cluster, devices[0], suite.out))
        if studies:
            echo(tuning_plan_text(studies) + ("\n(the studies' runs are submitted the same way, after these)"
                                              if submits else ""))
        return 0
    where = (f"through submitit ({suite.cluster.executor}; this command waits for the jobs: keep it running)"
             if submits else f"{min(jobs, max(1, len(todo)))} at a time")
    echo(f"suite: {counts_line(planned)}; {where}; runs in {suite.out}/")
    began = time.perf_counter()
    outcomes = start_runs(suite, todo, jobs, devices, command, echo)
    echo(summary_text(planned, outcomes, time.perf_counter() - began))
    code = 1 if any(o.status == "failed" for o in outcomes) else 0
    if studies:
        # planned again: the default runs just completed are candidates of the studies too
        code = max(code, run_studies(suite, plan_studies(suite, suite.tune, strict=False), jobs, devices, command,
                                     echo))
    echo(f"tables: cmkd-bench leaderboard {suite.out}")
    return code


def summary_text(planned: list[PlannedRun], outcomes: list[Outcome], seconds: float) -> str:
    completed = [o for o in outcomes if o.status == "completed"]
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = sum(run.state == "done" for run in planned)
    resumed = sum(o.resumed for o in completed)
    requeues = sum(o.requeues for o in outcomes)
    lines = [f"suite finished in {seconds:.0f} s: {len(completed)} completed"
             + (f" ({resumed} resumed)" if resumed else "") + (f", {counted(requeues, 'requeue')}" if requeues else "")
             + f", {skipped} skipped (already completed), {len(failed)} failed"]
    lines += [f"  failed: {o.run.run_id} ({o.run.label}): {o.detail}" for o in failed]
    return "\n".join(lines)
