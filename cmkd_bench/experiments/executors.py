"""A suite's runs on a cluster through submitit (SLURM job arrays), and a suite's status from its records.

`suite --executor slurm` hands each planned run to submitit as one task of a job array; the task is
the same `python -m cmkd_bench run ...` process a local suite starts (scheduler.py), run by a small
`RunJob` wrapper inside the SLURM job. Its output is appended to `<run_dir>/run.log`, whose header
line names the SLURM job and submitit's own log folder (`OUT/.submitit/<job id>/`);
`<run_dir>/submitit.json` keeps the job ids and the requeue count.

Pre-emption and time limits: SLURM signals the job before it is stopped; submitit then calls
`RunJob.checkpoint`, which stops the run process (its last finished epoch is on disk in the run's
checkpoint.pt), counts the requeue and hands submitit the same command to requeue. The requeued
task resumes from the checkpoint, as a rerun of any interrupted run does. A task killed outright
(node failure, scancel) is resumed by the next submission of the same suite, which skips
completed runs (their records) and resumes the rest.

Teachers are trained once by submitting waves: first one run per teacher that is not cached yet
(each of those trains and caches its teacher, then its student), then, once they have ended, all
other runs, which find their teacher cached. No lock is needed: no two tasks ever train one
teacher. (runner.py's fcntl lock serialises processes on one machine, but fcntl locks are not
reliable on every network file system, and a lock file left by a pre-empted job would need
expiry rules; waves need neither.) The suite command waits for the waves and prints each run
as it ends; stopped, it can be run again at any time: it resubmits only what has not completed.

`--executor submitit-local` runs the same path with submitit's LocalExecutor (jobs as processes on
this machine), which is how the tests exercise it without a cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..artefacts.files import write_json_atomic
from ..artefacts.records import find_record, metric, record_metric_name
from ..errors import UserError
from .scheduler import CommandBuilder, Outcome, PlannedRun, Scheduler, print_now, thread_environment

EXECUTORS = ("local", "slurm", "submitit-local")
_CLUSTER = {"slurm": "slurm", "submitit-local": "local"}  # submitit.AutoExecutor's names
JOB_FILE = "submitit.json"  # per run: the SLURM job ids that ran it, its requeues
PLAN_FILE = "suite.json"  # OUT/.submitit/: the run ids of the last submission (for --status)
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ClusterSettings:
    """`suite --executor ...` and the SLURM resources of each run."""

    executor: str = "local"
    partition: str | None = None
    gpus_per_run: int | None = None  # default: 1, or 0 for --device cpu
    cpus_per_run: int | None = None  # also each run's CPU threads; default 8
    time: str = "04:00:00"
    array_parallelism: int = 64

    @property
    def submits(self) -> bool:
        return self.executor != "local"

    def timeout_minutes(self) -> int:
        return time_limit_minutes(self.time)


def cluster_settings(executor: str, partition: str | None, gpus_per_run: int | None, cpus_per_run: int | None,
                     time_limit: str | None, array_parallelism: int | None) -> ClusterSettings:
    """The settings from the command line, checked: one line for anything wrong, before anything runs."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown --executor {executor!r}; use {', '.join(EXECUTORS)}")
    given = {"--partition": partition, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run,
             "--time": time_limit, "--array-parallelism": array_parallelism}
    if executor == "local" and (names := [name for name, value in given.items() if value is not None]):
        raise UserError(f"{names[0]} is an option of --executor slurm; add --executor slurm or drop {names[0]}")
    for name, value, least in (("--gpus-per-run", gpus_per_run, 0), ("--cpus-per-run", cpus_per_run, 1),
                               ("--array-parallelism", array_parallelism, 1)):
        if value is not None and value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    settings = ClusterSettings(executor, partition, gpus_per_run, cpus_per_run,
                               time_limit or ClusterSettings.time, array_parallelism or ClusterSettings.array_parallelism)
    settings.timeout_minutes()  # a bad --time: one line now
    if settings.submits:
        import_submitit()
    return settings


def time_limit_minutes(text: str) -> int:
    """SLURM's time formats: MM, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (minutes, rounded up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise UserError(f"--time {text!r} is no time limit; write HH:MM:SS (e.g. 04:00:00) or D-HH:MM:SS")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is None and second is None:  # MM
        minutes, seconds = first, 0
    elif days is None:  # HH:MM:SS or MM:SS per SLURM ("MM:SS" with two fields)
        hours, minutes, seconds = (first, second, third) if third is not None else (0, first, second)
        minutes += 60 * hours
    else:  # D-HH[:MM[:SS]]
        minutes, seconds = 60 * (24 * days + first) + (second or 0), third or 0
    total = minutes + (1 if seconds else 0)
    if total < 1:
        raise UserError(f"--time {text!r} is shorter than a minute")
    return total


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit, which is not installed; "
                        "pip install 'cmkd-bench[cluster]'") from None
    return submitit


# -- one run as a submitit job -------------------------------------------------------------------
class RunJob:
    """The callable submitit runs for one planned run: the run's own process, its output in run.log.

    Checkpointable in submitit's sense (`checkpoint`): on pre-emption or at the time limit it stops
    the run process and returns itself for requeueing; the requeued job resumes from checkpoint.pt."""

    def __init__(self, argv: Sequence[str], run_dir: str, threads: int) -> None:
        self.argv, self.run_dir, self.threads = list(argv), run_dir, threads
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_process"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _process=None)

    def __call__(self) -> int:
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job_id, log_folder = _job_identity()
        info = read_job_file(run_dir)
        info["jobs"] = [*info.get("jobs", []), job_id]
        info.update(submitit_log=log_folder, host=socket.gethostname(), pid=os.getpid())  # the job's process
        write_json_atomic(info, run_dir / JOB_FILE)
        with open(run_dir / "run.log", "a", encoding="utf-8") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} submitit job {job_id} (logs: {log_folder}) "
                      f"{' '.join(self.argv)}\n")
            log.flush()
            self._process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                  **thread_environment(self.threads)},
                                             preexec_fn=_interruptible)
            # polled, not wait(): submitit's signal handler (checkpoint, below) runs in this thread and
            # must find Popen's wait lock free
            while (code := self._process.poll()) is None:
                time.sleep(0.2)
        self._process = None
        return code

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's hook on pre-emption / time-out: stop the run (its finished epochs are saved), count
        the requeue, and requeue the same command (it resumes from the run's checkpoint)."""
        from submitit.helpers import DelayedSubmission

        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # the CLI stops as on Ctrl-C; finished epochs are on disk
            if not _ended(process, 60):
                process.kill()
                _ended(process, 10)
        run_dir = Path(self.run_dir)
        info = read_job_file(run_dir)
        info["requeues"] = int(info.get("requeues", 0)) + 1
        write_json_atomic(info, run_dir / JOB_FILE)
        return DelayedSubmission(RunJob(self.argv, self.run_dir, self.threads), *args, **kwargs)


def _interruptible() -> None:
    """In the run's process before it starts: SIGINT back to its default, so the run stops on the SIGINT
    `checkpoint` sends even where this job was started with SIGINT ignored (as `cmd &` is in a
    non-interactive shell, and every process it starts inherits)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ended(process: subprocess.Popen, seconds: float) -> bool:
    """Whether `process` ends within `seconds`, by polling (never a blocking wait inside a signal handler)."""
    deadline = time.monotonic() + seconds
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _job_identity() -> tuple[str, str]:
    try:
        import submitit

        environment = submitit.JobEnvironment()
        return str(environment.job_id), str(environment.paths.folder)
    except Exception:  # not inside a submitit job (a direct call)
        return "-", "-"


def read_job_file(run_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((run_dir / JOB_FILE).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


# -- submitting a suite --------------------------------------------------------------------------
def teacher_waves(runs: list[PlannedRun]) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(first wave, second wave): the first holds one run per teacher not cached yet."""
    from ..training.runner import resolve_run, teacher_folder

    first, second, seen = [], [], set()
    for run in runs:
        resolved = resolve_run(run.request)
        folder = teacher_folder(resolved)
        if resolved.teacher_checkpoint is None and not (folder / "teacher.pt").exists() and folder not in seen:
            seen.add(folder)
            first.append(run)
        else:
            second.append(run)
    return first, second


def submit_runs(todo: list[PlannedRun], settings: ClusterSettings, device: str, out: str, plugins: Sequence[str],
                command: CommandBuilder, echo: Callable[[str], None] = print_now,
                planned: Sequence[PlannedRun] = ()) -> list[Outcome]:
    """Submit `todo` through submitit in teacher waves, wait for each, return the outcomes."""
    submitit = import_submitit()
    folder = Path(out) / ".submitit"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"runs": sorted({run.run_id for run in (*planned, *todo)})}, folder / PLAN_FILE)
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=_CLUSTER[settings.executor])
    gpus = settings.gpus_per_run if settings.gpus_per_run is not None else (0 if device == "cpu" else 1)
    cpus = settings.cpus_per_run or 8
    parameters: dict[str, Any] = {"name": "cmkd-bench", "timeout_min": settings.timeout_minutes(),
                                  "gpus_per_node": gpus, "cpus_per_task": cpus, "tasks_per_node": 1, "nodes": 1,
                                  "slurm_array_parallelism": settings.array_parallelism}
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    executor.update_parameters(**parameters)
    outcomes: list[Outcome] = []
    total = len(todo)
    for number, wave in enumerate(teacher_waves(todo), start=1):
        if not wave:
            continue
        began = time.perf_counter()
        with executor.batch():  # one job array
            jobs = [executor.submit(RunJob(command(run.request, device, plugins), str(run.run_dir), cpus))
                    for run in wave]
        kind = "runs that train their teacher" if number == 1 else "runs"
        echo(f"submitted {len(wave)} {kind} (job {jobs[0].job_id.split('_')[0]}, logs in {folder}/)")
        pending = dict(zip((job.job_id for job in jobs), zip(wave, jobs)))
        while pending:
            for job_id, (run, job) in list(pending.items()):
                if job.done():
                    del pending[job_id]
                    outcome = _outcome(run, job, time.perf_counter() - began)
                    outcomes.append(outcome)
                    echo(_report_line(outcome, len(outcomes), total))
            if pending:
                time.sleep(POLL_SECONDS)
    return outcomes


def _outcome(run: PlannedRun, job: Any, seconds: float) -> Outcome:
    record = find_record(run.run_dir / "result.json")
    requeues = int(read_job_file(run.run_dir).get("requeues", 0))
    resumed = run.state == "resume" or requeues > 0
    if record is not None and record.get("status") == "completed":
        detail = f"test {record_metric_name(record)} {metric(record, 'test'):.2f}"
        return Outcome(run, "completed", detail, seconds, resumed, requeues=requeues)
    if record is not None and record.get("status") == "failed" and record.get("error"):
        detail = str(record["error"])
    else:
        error = job.exception()
        code = None if error is not None else job.result()
        detail = (f"killed by signal {-code}" if isinstance(code, int) and code < 0 else
                  f"exited with code {code}" if code is not None else f"job failed ({type(error).__name__})")
        detail += f"; see {run.run_dir / 'run.log'}"
    return Outcome(run, "failed", " ".join(detail.split()), seconds, resumed, requeues=requeues)


def _report_line(outcome: Outcome, done: int, total: int) -> str:
    state = "completed" if outcome.status == "completed" else "FAILED   "
    notes = " (resumed)" if outcome.resumed else ""
    notes += f" ({outcome.requeues} requeue{'s' if outcome.requeues != 1 else ''})" if outcome.requeues else ""
    return f"[{done}/{total}] {state} {outcome.run.run_id}  {outcome.detail}  {outcome.seconds:.1f} s{notes}"


# -- a suite's runs, here or through submitit ----------------------------------------------------
def start_runs(suite: Any, todo: list[PlannedRun], jobs: int, devices: Sequence[str], command: CommandBuilder,
               echo: Callable[[str], None] = print_now) -> list[Outcome]:
    """Run `todo` as local processes, `jobs` at a time, each with its share of the CPU threads; or,
    with `--executor slurm`, as submitit jobs (cmkd_bench.experiments.executors)."""
    if suite.cluster is not None and suite.cluster.submits:
        return submit_runs(todo, suite.cluster, devices[0], suite.out, suite.plugins, command, echo)
    return Scheduler(todo, jobs, devices, suite.plugins, command, echo, threads=suite.threads_per_run).run()


# -- status --------------------------------------------------------------------------------------
def suite_status(out: str | Path) -> dict[str, list[str]]:
    """Each run of OUT by state, from the files alone (no cluster): completed and failed (their
    records), running (started: a checkpoint or log, no record yet; or interrupted), pending (in the
    last submission's plan, not started)."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"--status {str(out)!r} is no folder; pass a suite's OUT folder")
    states: dict[str, list[str]] = {"completed": [], "failed": [], "running": [], "pending": []}
    seen = set()
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "teachers"):
        record = find_record(run_dir / "result.json")
        if record is not None and record.get("status") in ("completed", "failed"):
            states[record["status"]].append(run_dir.name)
        elif any((run_dir / name).exists() for name in ("checkpoint.pt", "run.log", "history.csv")):
            states["running"].append(run_dir.name)
        else:
            continue
        seen.add(run_dir.name)
    try:
        plan = json.loads((out / ".submitit" / PLAN_FILE).read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        plan = []
    states["pending"] = [run_id for run_id in plan if run_id not in seen]
    return states


def status_text(out: str | Path) -> str:
    states = suite_status(out)
    requeues = sum(int(read_job_file(Path(out) / run_id).get("requeues", 0))
                   for run_id in states["completed"] + states["failed"] + states["running"])
    lines = [f"{out}: {len(states['completed'])} completed, {len(states['running'])} running or interrupted, "
             f"{len(states['failed'])} failed, {len(states['pending'])} pending"
             + (f"; {requeues} requeues" if requeues else "")]
    for state in ("failed", "running", "pending"):
        lines += [f"  {state:<8} {run_id}" for run_id in states[state]]
    return "\n".join(lines)

