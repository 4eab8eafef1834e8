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

Other sbatch options (an account, a QOS, memory, a constraint, ...) come from `--slurm KEY=VALUE` and
the suite file's `slurm: {KEY: VALUE}` (`slurm_options`): a key submitit names is passed as its
`slurm_KEY` parameter, any other sbatch option through `slurm_additional_parameters`; a key that is
no sbatch option, or one that the suite's own flags or submitit set, is refused in one line.

The suite command itself stays on the submitting machine and waits for the waves (submitit polls
`sacct`); submitted from inside a SLURM job (a driver job), the job's own SLURM_* variables are
hidden while submitting, or sbatch would hand them to the runs' jobs.

`--executor submitit-local` runs the same path with submitit's LocalExecutor (jobs as processes on
this machine), which is how the tests exercise it without a cluster.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..artefacts.files import write_json_atomic
from ..artefacts.records import find_record, metric, record_metric_name
from ..errors import UserError
from .plan import counted
from .scheduler import CommandBuilder, Outcome, PlannedRun, Scheduler, print_now, thread_environment

EXECUTORS = ("local", "slurm", "submitit-local")
_CLUSTER = {"slurm": "slurm", "submitit-local": "local"}  # submitit.AutoExecutor's names
JOB_FILE = "submitit.json"  # per run: the SLURM job ids that ran it, its requeues
PLAN_FILE = "suite.json"  # OUT/.submitit/: the run ids of the last submission (for --status)
POLL_SECONDS = 1.0
SLURM_TOOLS = ("sbatch", "srun", "sacct")  # submitit submits with sbatch, requires srun, polls with sacct

# -- sbatch options (`--slurm KEY=VALUE`, a suite file's `slurm:`), spelled as sbatch spells them with _ for -
# submitit's own parameters (submitit/slurm/slurm.py, _make_sbatch_string), passed as slurm_KEY
SUBMITIT_OPTIONS = frozenset({
    "account", "qos", "mem", "mem_per_cpu", "mem_per_gpu", "constraint", "exclude", "nodelist", "gres", "comment",
    "mail_type", "mail_user", "dependency", "exclusive", "wckey", "job_name", "cpus_per_gpu",
    "setup", "teardown", "srun_args", "signal_delay_s", "use_srun"})  # the last five are submitit's, not sbatch's
# sbatch's other long options (man sbatch), passed through slurm_additional_parameters
SBATCH_OPTIONS = frozenset({
    "acctg_freq", "batch", "bb", "bbf", "begin", "cluster_constraint", "clusters", "container", "container_id",
    "contiguous", "core_spec", "cores_per_socket", "cpu_freq", "deadline", "delay_boot", "distribution", "export",
    "export_file", "extra", "extra_node_info", "get_user_env", "gpu_bind", "gpu_freq", "gpus_per_socket",
    "gres_flags", "hint", "hold", "ignore_pbs", "kill_on_invalid_dep", "licenses", "mcs_label", "mem_bind",
    "mincpus", "network", "nice", "no_kill", "no_requeue", "overcommit", "oversubscribe", "power", "prefer",
    "priority", "profile", "propagate", "reboot", "requeue", "reservation", "sockets_per_node", "spread_job",
    "switches", "thread_spec", "threads_per_core", "time_min", "tmp", "tres_per_task", "use_min_nodes",
    "wait_all_nodes"})
OWN_FLAGS = {"partition": "--partition", "time": "--time", "cpus_per_task": "--cpus-per-run",
             "gpus_per_node": "--gpus-per-run", "gpus": "--gpus-per-run", "gpus_per_task": "--gpus-per-run",
             "num_gpus": "--gpus-per-run", "array": "--array-parallelism", "array_parallelism": "--array-parallelism"}
_ONE_TASK = "each run is one task on one node (multi-GPU runs in a job are not wired in)"
_SUBMITIT_SETS = "submitit sets it (the job array, its logs, the pre-emption signal)"
MANAGED = {"output": _SUBMITIT_SETS, "error": _SUBMITIT_SETS, "open_mode": _SUBMITIT_SETS, "signal": _SUBMITIT_SETS,
           "wrap": _SUBMITIT_SETS, "parsable": _SUBMITIT_SETS, "wait": _SUBMITIT_SETS, "test_only": _SUBMITIT_SETS,
           "stderr_to_stdout": _SUBMITIT_SETS, "additional_parameters": _SUBMITIT_SETS, "map_count": _SUBMITIT_SETS,
           "nodes": _ONE_TASK, "ntasks": _ONE_TASK, "ntasks_per_node": _ONE_TASK, "ntasks_per_core": _ONE_TASK,
           "ntasks_per_gpu": _ONE_TASK, "ntasks_per_socket": _ONE_TASK,
           "chdir": "the runs' paths are relative to the folder the suite runs from"}
LIST_OPTIONS = frozenset({"setup", "teardown", "srun_args"})  # lines / arguments: repeatable, a list in YAML
FLAG_OPTIONS = frozenset({"exclusive", "requeue", "no_requeue", "contiguous", "overcommit", "oversubscribe",
                          "spread_job", "use_min_nodes", "reboot", "hold", "no_kill", "ignore_pbs", "get_user_env"})
INT_OPTIONS = frozenset({"cpus_per_gpu", "signal_delay_s", "nice", "mincpus", "priority"})
MEMORY_OPTIONS = frozenset({"mem", "mem_per_cpu", "mem_per_gpu"})
EXAMPLE = "e.g. --slurm account=myproject"


@dataclass(frozen=True)
class ClusterSettings:
    """`suite --executor ...` and the SLURM resources of each run."""

    executor: str = "local"
    partition: str | None = None
    gpus_per_run: int | None = None  # default: 1, or 0 for --device cpu
    cpus_per_run: int | None = None  # also each run's CPU threads; default 8
    time: str = "04:00:00"
    array_parallelism: int = 64
    slurm: tuple[tuple[str, Any], ...] = ()  # other sbatch options, checked (slurm_options)

    @property
    def submits(self) -> bool:
        return self.executor != "local"

    @property
    def cpus(self) -> int:
        return self.cpus_per_run or 8

    def gpus(self, device: str) -> int:
        return self.gpus_per_run if self.gpus_per_run is not None else (0 if device == "cpu" else 1)

    def timeout_minutes(self) -> int:
        return time_limit_minutes(self.time)


def cluster_settings(executor: str, partition: str | None, gpus_per_run: int | None, cpus_per_run: int | None,
                     time_limit: str | None, array_parallelism: int | None, slurm_flags: Sequence[str] = (),
                     file_slurm: Mapping[str, Any] | None = None, file_label: str = "suite file") -> ClusterSettings:
    """The settings from the command line (and the suite file's `slurm:`), checked: one line for anything
    wrong, before anything runs. `slurm_flags` are `--slurm KEY=VALUE` texts; they win over the file's."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown --executor {executor!r}; use {', '.join(EXECUTORS)}")
    given = {"--partition": partition, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run,
             "--time": time_limit, "--array-parallelism": array_parallelism, "--slurm": slurm_flags or None}
    if executor == "local" and (names := [name for name, value in given.items() if value is not None]):
        raise UserError(f"{names[0]} is an option of --executor slurm; add --executor slurm or drop {names[0]}")
    for name, value, least in (("--gpus-per-run", gpus_per_run, 0), ("--cpus-per-run", cpus_per_run, 1),
                               ("--array-parallelism", array_parallelism, 1)):
        if value is not None and value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    options: tuple[tuple[str, Any], ...] = ()
    if executor != "local":  # a suite file's slurm: is for the cluster; a local suite leaves it aside
        items = [(key, value, f"{file_label}: slurm:") for key, value in (file_slurm or {}).items()]
        options = slurm_options(items + [(*parse_slurm_flag(text), "--slurm") for text in slurm_flags])
    settings = ClusterSettings(executor, partition, gpus_per_run, cpus_per_run,
                               time_limit or ClusterSettings.time,
                               array_parallelism or ClusterSettings.array_parallelism, options)
    settings.timeout_minutes()  # a bad --time: one line now
    if settings.submits:
        import_submitit()
    return settings


def parse_slurm_flag(text: str) -> tuple[str, Any]:
    """`--slurm KEY=VALUE` as (KEY, VALUE); a bare KEY is an sbatch flag without a value (requeue)."""
    key, sep, value = text.partition("=")
    if not key.strip():
        raise UserError(f"--slurm {text!r} is not KEY=VALUE; write for example --slurm account=myproject")
    return key.strip(), (value.strip() if sep else True)


def slurm_options(items: Sequence[tuple[str, Any, str]]) -> tuple[tuple[str, Any], ...]:
    """(key, value, where it was given) -> the checked options, later items winning (list options add up)."""
    chosen: dict[str, Any] = {}
    for key, value, where in items:
        name = _sbatch_name(str(key), where)
        value = _sbatch_value(name, value, f"{where} {name.replace('_', '-')}")
        chosen[name] = (*chosen.get(name, ()), *value) if name in LIST_OPTIONS else value
    return tuple(chosen.items())


def _sbatch_name(key: str, where: str) -> str:
    name = key.strip().removeprefix("--").replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(f"{where} {key!r} is no sbatch option name; write KEY=VALUE with KEY as `man sbatch` spells "
                        f"it, {EXAMPLE}")
    if name in OWN_FLAGS:
        raise UserError(f"{where} {key}: the suite sets it from {OWN_FLAGS[name]}; use {OWN_FLAGS[name]} instead")
    if name in MANAGED:
        raise UserError(f"{where} {key}: {MANAGED[name]}; drop it")
    if name not in SUBMITIT_OPTIONS and name not in SBATCH_OPTIONS:
        close = difflib.get_close_matches(name, sorted(SUBMITIT_OPTIONS | SBATCH_OPTIONS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0].replace('_', '-')!r}? " if close else ""
        raise UserError(f"{where} {key!r} is no sbatch option; {hint}(sbatch's long options, see `man sbatch`; "
                        f"{EXAMPLE})")
    return name


def _sbatch_value(name: str, value: Any, where: str) -> Any:
    if name in LIST_OPTIONS:
        return tuple(_one_line(item, where) for item in (value if isinstance(value, list) else [value]))
    if name == "use_srun":
        text = str(value).lower()
        if text not in ("true", "false"):
            raise UserError(f"{where}={value}: use_srun is true or false")
        return text == "true"
    if name in FLAG_OPTIONS and (value is True or str(value).lower() in ("true", "yes")):
        return True  # `#SBATCH --requeue`
    if isinstance(value, bool):
        raise UserError(f"{where}={str(value).lower()}: " + ("sbatch cannot turn it off; drop it" if name in FLAG_OPTIONS
                                                           else f"it takes a value, {EXAMPLE}"))
    text = _one_line(value, where)
    if name in INT_OPTIONS and not re.fullmatch(r"-?\d+", text):
        raise UserError(f"{where}={text}: expects an integer")
    if name in MEMORY_OPTIONS and not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", text, re.IGNORECASE):
        raise UserError(f"{where}={text}: not a memory size; write for example 32G or 4000M")
    return int(text) if name in INT_OPTIONS else text


def _one_line(value: Any, where: str) -> str:
    if isinstance(value, (list, dict)) or value is None:
        raise UserError(f"{where}: expects one value, got {value!r}")
    text = str(value).strip()
    if not text or any(ord(char) < 32 for char in text):
        raise UserError(f"{where}: expects a non-empty value on one line, got {value!r}")
    return text


def sbatch_text(options: Sequence[tuple[str, Any]]) -> str:
    """The options as sbatch flags (--account=proj --requeue); submitit's own parameters left out."""
    flags = []
    for name, value in options:
        if name in LIST_OPTIONS or name in ("signal_delay_s", "use_srun"):
            continue
        flag = "--" + name.replace("_", "-")
        flags.append(flag if value is True else f"{flag}={value}")
    return " ".join(flags)


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


def check_can_submit(settings: ClusterSettings) -> None:
    """`--executor slurm` where there is no SLURM: one line, before anything is written."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if settings.executor == "slurm" and missing:
        raise UserError(f"--executor slurm: no SLURM on this machine ({', '.join(missing)} not found); run the suite "
                        f"on the cluster's login node (docs/scaling.md), or use --executor local; --dry-run shows "
                        f"what would be submitted")


def submission_parameters(settings: ClusterSettings, device: str) -> dict[str, Any]:
    """What `AutoExecutor.update_parameters` gets: each task's resources, then the other sbatch options."""
    parameters: dict[str, Any] = {"name": "cmkd-bench", "timeout_min": settings.timeout_minutes(),
                                  "gpus_per_node": settings.gpus(device), "cpus_per_task": settings.cpus,
                                  "tasks_per_node": 1, "nodes": 1, "slurm_array_parallelism": settings.array_parallelism}
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    additional = {}
    for name, value in settings.slurm:
        if name in SUBMITIT_OPTIONS:
            parameters[f"slurm_{name}"] = list(value) if name in LIST_OPTIONS else value
        else:
            additional[name] = value  # submitit writes `#SBATCH --{name with - for _}={value}`
    if additional:
        parameters["slurm_additional_parameters"] = additional
    return parameters


def make_executor(settings: ClusterSettings, device: str, folder: Path) -> Any:
    """submitit's executor for the suite, its parameters set; one line where submitit refuses."""
    submitit = import_submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=_CLUSTER[settings.executor])
    except RuntimeError:  # SlurmExecutor: 'Could not detect "srun"'
        check_can_submit(settings)
        raise
    try:
        executor.update_parameters(**submission_parameters(settings, device))
    except (ValueError, NameError, AssertionError) as error:  # submitit's checks of the parameters
        raise UserError(f"submitit refused the SLURM options: {str(error).splitlines()[0]}; fix --slurm") from None
    return executor


def submit_runs(todo: list[PlannedRun], settings: ClusterSettings, device: str, out: str, plugins: Sequence[str],
                command: CommandBuilder, echo: Callable[[str], None] = print_now,
                planned: Sequence[PlannedRun] = (), score: str = "test") -> list[Outcome]:
    """Submit `todo` through submitit in teacher waves, wait for each, return the outcomes. `score`: what
    each run's line reports, "test" or "val" (tuning's candidates, selected on validation)."""
    folder = Path(out) / ".submitit"
    created = _first_missing(folder)  # removed again where the first submission fails
    try:
        executor = make_executor(settings, device, folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"runs": sorted({run.run_id for run in (*planned, *todo)})}, folder / PLAN_FILE)
    except BaseException:
        _remove(created)
        raise
    outcomes: list[Outcome] = []
    for number, wave in enumerate(teacher_waves(todo), start=1):
        if not wave:
            continue
        began = time.perf_counter()
        jobs = _submit_wave(executor, wave, settings, device, plugins, command, created)
        created = None  # submitted: the folder holds the jobs' files from now on
        what = (counted(len(wave), "run that trains its teacher", "runs that train their teacher") if number == 1
                else counted(len(wave), "run"))
        echo(f"submitted {what} (job {jobs[0].job_id.split('_')[0]}, logs in {folder}/)")
        _wait(dict(zip((job.job_id for job in jobs), zip(wave, jobs))), began, outcomes, len(todo), echo, score)
    return outcomes


def _submit_wave(executor: Any, wave: list[PlannedRun], settings: ClusterSettings, device: str,
                 plugins: Sequence[str], command: CommandBuilder, created: Path | None) -> list[Any]:
    """One job array of `wave`; sbatch refusing it is one line (and the folder this command made goes)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        with _outside_own_job(settings.executor), executor.batch():
            return [executor.submit(RunJob(command(run.request, device, plugins), str(run.run_dir), settings.cpus))
                    for run in wave]
    except (FailedJobError, FailedSubmissionError) as error:
        _remove(created)
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"sbatch refused the job array: {reason}; check --partition, --slurm and the limits of "
                        f"your account") from None


def _wait(pending: dict[str, tuple[PlannedRun, Any]], began: float, outcomes: list[Outcome], total: int,
          echo: Callable[[str], None], score: str) -> None:
    while pending:
        for job_id, (run, job) in list(pending.items()):
            if job.done():
                del pending[job_id]
                outcome = _outcome(run, job, time.perf_counter() - began, score)
                outcomes.append(outcome)
                echo(_report_line(outcome, len(outcomes), total))
        if pending:
            time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def _outside_own_job(executor: str) -> Iterator[None]:
    """Submitting from inside a SLURM job (the suite run as a job of its own): its SLURM_* variables hidden,
    or sbatch would pass them on to the runs' jobs (its memory, CPUs, job ids); SLURM_CONF stays, it says
    where the cluster's configuration is."""
    hidden: dict[str, str] = {}
    if executor == "slurm" and "SLURM_JOB_ID" in os.environ:
        hidden = {name: os.environ.pop(name) for name in list(os.environ)
                  if name.startswith(("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")) and name != "SLURM_CONF"}
    try:
        yield
    finally:
        os.environ.update(hidden)


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet (what mkdir would create)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def _remove(created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


def score_text(record: dict[str, Any], score: str = "test") -> str:
    """A completed run's number for its progress line: its test metric, or (score "val") the best
    validation one, which is what tuning selects on."""
    key = "val_best" if score == "val" else "test"
    return f"{score} {record_metric_name(record)} {metric(record, key):.2f}"


def submission_plan_text(todo: list[PlannedRun], settings: ClusterSettings, device: str, out: str) -> str:
    """What `suite --dry-run` adds for --executor slurm: the job arrays, their tasks and waves, each task's resources."""
    where = "SLURM" if settings.executor == "slurm" else "submitit's local executor (this machine)"
    lines = [f"submission through submitit to {where}: one job array per wave, one task per run"]
    waves = [wave for wave in teacher_waves(todo) if wave]
    for number, wave in enumerate(waves, start=1):
        first = len(waves) == 2 and number == 1
        what = ("the runs that train a teacher not cached yet, one per teacher" if first else
                "the other runs, once wave 1 has ended (their teachers cached by then)" if number == 2 else "every run")
        jobs = (f"a job array of {len(wave)} tasks, at most {min(len(wave), settings.array_parallelism)} at once"
                if len(wave) > 1 else "one job")  # submitit submits a batch of one as a plain job
        lines.append(f"  wave {number}: {jobs}: {what}")
    if not waves:
        lines.append("  nothing to submit: every run has completed")
    options = dict(settings.slurm)
    memory = next((f"{options[key]}{per}" for key, per in (("mem", ""), ("mem_per_gpu", " per GPU"),
                                                           ("mem_per_cpu", " per CPU")) if key in options),
                  "the partition's default")
    gpus = settings.gpus(device)
    lines.append(f"  each task: {counted(settings.cpus, 'CPU')} (also its threads), {counted(gpus, 'GPU')}, memory "
                 f"{memory}, time {settings.time} ({settings.timeout_minutes()} min), partition "
                 f"{settings.partition or 'the default'}, account {options.get('account', 'the default')}")
    if settings.slurm:
        lines.append(f"  sbatch options: {sbatch_text(settings.slurm) or '(none)'}")
    lines += [f"  {name} (each job, before its run): {line}" for name in ("setup", "teardown")
              for line in options.get(name, ())]
    lines += [f"  logs: {out}/.submitit/<job>/ (submitit's), {out}/<run_id>/run.log (each run's output)",
              "  this command waits for every wave on this machine: keep it alive (tmux, screen, or a job of its "
              "own: docs/scaling.md); stopped, the same command resubmits only what has not completed"]
    return "\n".join(lines)


def _outcome(run: PlannedRun, job: Any, seconds: float, score: str = "test") -> Outcome:
    record = find_record(run.run_dir / "result.json")
    requeues = int(read_job_file(run.run_dir).get("requeues", 0))
    resumed = run.state == "resume" or requeues > 0
    if record is not None and record.get("status") == "completed":
        detail = score_text(record, score)
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
    notes += f" ({counted(outcome.requeues, 'requeue')})" if outcome.requeues else ""
    return f"[{done}/{total}] {state} {outcome.run.run_id}  {outcome.detail}  {outcome.seconds:.1f} s{notes}"


# -- a suite's runs, here or through submitit ----------------------------------------------------
def start_runs(suite: Any, todo: list[PlannedRun], jobs: int, devices: Sequence[str], command: CommandBuilder,
               echo: Callable[[str], None] = print_now, score: str = "test") -> list[Outcome]:
    """Run `todo` as local processes, `jobs` at a time, each with its share of the CPU threads; or,
    with `--executor slurm`, as submitit jobs. `score`: each completed run's line shows its "test" or
    its "val" metric (tuning's candidates: selection reads validation only)."""
    if suite.cluster is not None and suite.cluster.submits:
        return submit_runs(todo, suite.cluster, devices[0], suite.out, suite.plugins, command, echo, score=score)
    scheduler = ValidationScheduler if score == "val" else Scheduler
    return scheduler(todo, jobs, devices, suite.plugins, command, echo, threads=suite.threads_per_run).run()


class ValidationScheduler(Scheduler):
    """The local scheduler, each completed run's line showing its validation metric instead of its test one."""

    def _report(self, outcome: Outcome) -> None:
        record = find_record(outcome.run.run_dir / "result.json") if outcome.status == "completed" else None
        if record is not None:
            elsewhere = " (run by another process)" if outcome.detail.endswith("(run by another process)") else ""
            outcome.detail = score_text(record, "val") + elsewhere
        super()._report(outcome)


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
             + (f"; {counted(requeues, 'requeue')}" if requeues else "")]
    for state in ("failed", "running", "pending"):
        lines += [f"  {state:<8} {run_id}" for run_id in states[state]]
    return "\n".join(lines)

