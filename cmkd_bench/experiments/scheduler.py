"""Running planned runs as subprocesses, `jobs` at a time, each job slot bound to a device.

Each run is its own `python -m cmkd_bench run` process, so that a crash or a kill takes down one
run, not the suite; its output goes to `<run_dir>/run.log`. The command line comes from the caller
(the CLI builds it from `run`'s own options, cmkd_bench.cli.suite), so no option is re-spelled here.

Each run's CPU threads are a setting of the run (`run --threads`, the suite's --threads-per-run;
default 1, training.execution.DEFAULT_THREADS, for `run` and `suite` alike): the planned request
carries them, so the run id names them where they are not the default, and the run sets them itself;
the environment also gets OMP_NUM_THREADS / MKL_NUM_THREADS and at most as many DataLoader workers
(CMKD_BENCH_WORKERS, read by the data loaders). The number follows from settings alone, never from
the cores or the load of the moment, since CPU threads change a run's numbers; the record keeps it
(`environment.threads`).

A run's failure reason is the last line of its own stderr (an unnamed file of this process, appended
to run.log when it ends), never of run.log, which another suite over the same OUT may be writing. A
run refused because another process is running it is waited for, then its record is read again. On
Linux each run gets a parent-death signal, so killing the suite (even with SIGKILL) stops its runs.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

from ..artefacts.files import write_failed
from ..artefacts.records import find_record, metric, record_metric_name
from ..errors import UserError
from ..training.execution import DEFAULT_THREADS
from ..training.runner import ALREADY_RUNNING, RunRequest

POLL_SECONDS = 0.05

@dataclass
class PlannedRun:
    request: RunRequest
    run_id: str
    label: str
    state: str  # "done" (completed record), "resume" (checkpoint), "new", "retry" (failed record),
    # "stale" (completed under another environment than its table's, rerun with --rerun-stale)

    @property
    def run_dir(self) -> Path:
        return Path(self.request.out) / self.run_id


@dataclass
class Outcome:
    run: PlannedRun
    status: str  # "completed" or "failed"
    detail: str  # the test metric, or the reason it failed
    seconds: float
    resumed: bool = False
    requeues: int = 0  # --executor slurm: times the cluster pre-empted or timed out and requeued it


# The process command line of one run: (request, device of the job slot, plug-in files) -> argv.
# The CLI gives `cmkd_bench.cli.suite.run_command_line`, built from the `run` command's own options.
CommandBuilder = Callable[[RunRequest, str, Sequence[str]], list[str]]


def print_now(text: str) -> None:
    """The default `echo`: a line on stdout, flushed (a suite's progress shows in pipes and logs as it happens)."""
    print(text, flush=True)


WORKERS_VARIABLE = "CMKD_BENCH_WORKERS"  # the most DataLoader workers a run of a suite starts


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a SLURM or taskset share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_run(jobs: int, requested: int | None = None) -> int:
    """Each run's CPU threads: `requested` (--threads-per-run) or the runs' default, DEFAULT_THREADS,
    as `run` has it: the count is a setting of the run (its run id names a count other than the
    default), never the cores divided by the jobs, so a run id computes alike however it is started."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads-per-run must be at least 1, got {requested}")
        return requested
    return DEFAULT_THREADS


def thread_environment(threads: int) -> dict[str, str]:
    """The environment variables that give a run's process `threads` CPU threads and workers."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), WORKERS_VARIABLE: str(threads)}


@dataclass
class _Running:
    run: PlannedRun
    process: subprocess.Popen
    log: IO[str]
    errors: IO[bytes]  # the run's stderr: an unnamed temporary file, gone with this process
    began: float
    slot: int


class Scheduler:
    """Runs planned runs as subprocesses, `jobs` at a time, each slot bound to a device."""

    def __init__(self, runs: list[PlannedRun], jobs: int, devices: Sequence[str], plugins: Sequence[str],
                 command: CommandBuilder, echo: Callable[[str], None] = print_now,
                 threads: int | None = None) -> None:
        self.pending = deque(runs)
        self.threads = threads_per_run(jobs, threads)  # each run's CPU threads (and DataLoader workers)
        self.total = len(runs)
        self.slots = [devices[i % len(devices)] for i in range(jobs)]
        self.free = list(range(jobs))
        self.plugins = plugins
        self.command = command
        self.echo = echo
        self.running: list[_Running] = []
        self.outcomes: list[Outcome] = []
        self.waiting: list[tuple[PlannedRun, float]] = []  # refused as running elsewhere: (run, when refused)
        self.retried: set[str] = set()

    def run(self) -> list[Outcome]:
        try:
            while self.pending or self.running or self.waiting:
                while self.pending and self.free:
                    self._start(self.pending.popleft(), self.free.pop(0))
                if not self._collect() and not self._settle_waiting():
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._stop_all()
            raise
        return self.outcomes

    def _start(self, run: PlannedRun, slot: int) -> None:
        path = run.run_dir / "run.log"
        command = self.command(run.request, self.slots[slot], self.plugins)
        try:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            log = open(path, "a", encoding="utf-8")
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            log.flush()
            errors = tempfile.TemporaryFile(dir=run.run_dir)
        except OSError as exc:
            raise write_failed(path, exc) from exc
        process = subprocess.Popen(command, stdout=log, stderr=errors, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **thread_environment(self.threads)},
                                   preexec_fn=_die_with_parent)
        self.running.append(_Running(run, process, log, errors, time.perf_counter(), slot))

    def _collect(self) -> bool:
        done = [job for job in self.running if job.process.poll() is not None]
        for job in done:
            self.running.remove(job)
            self.free.append(job.slot)
            stderr = _close_logs(job)
            outcome = _outcome(job, stderr)
            if outcome.status == "failed" and ALREADY_RUNNING in outcome.detail:
                self.waiting.append((job.run, job.began))  # another process has it: see what it leaves
                continue
            self.outcomes.append(outcome)
            self._report(outcome)
        return bool(done)

    def _settle_waiting(self) -> bool:
        """Runs another process was running: once its lock is free, its completed record counts (the run is
        not done twice); without one the run is started again, once."""
        settled = False
        for run, began in list(self.waiting):
            if not _lock_free(run.run_dir / ".run.lock"):
                continue
            self.waiting.remove((run, began))
            settled = True
            record = find_record(run.run_dir / "result.json")
            if record is not None and record.get("status") == "completed":
                score = f"test {record_metric_name(record)} {metric(record, 'test'):.2f} (run by another process)"
                outcome = Outcome(run, "completed", score, time.perf_counter() - began)
            elif run.run_id not in self.retried:
                self.retried.add(run.run_id)
                self.pending.appendleft(run)
                continue
            else:
                outcome = Outcome(run, "failed", "another process was running it and left no completed record; "
                                  "run the suite again", time.perf_counter() - began)
            self.outcomes.append(outcome)
            self._report(outcome)
        return settled

    def _report(self, outcome: Outcome) -> None:
        count = f"[{len(self.outcomes)}/{self.total}]"
        state = "completed" if outcome.status == "completed" else "FAILED   "
        resumed = " (resumed)" if outcome.resumed else ""
        self.echo(f"{count} {state} {outcome.run.run_id}  {outcome.detail}  {outcome.seconds:.1f} s{resumed}"
                  f"  · {self.progress_text()}")

    def progress_text(self) -> str:
        """The suite so far: done / running / left, and an ETA from the mean time of the runs done
        (left and running runs shared among the job slots)."""
        done, running, left = len(self.outcomes), len(self.running), len(self.pending)
        text = f"{done} done, {running} running, {left} left"
        if done and (running or left):
            mean = sum(outcome.seconds for outcome in self.outcomes) / done
            eta = mean * (left + running / 2) / max(1, len(self.slots))
            text += f", ETA {_duration(eta)}"
        return text

    def _stop_all(self) -> None:
        for job in self.running:
            job.process.terminate()
        for job in self.running:
            try:
                job.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.process.kill()
            _close_logs(job)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the suite process dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the suite died before prctl took effect
            os._exit(143)


def _lock_free(path: Path) -> bool:
    try:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _close_logs(job: _Running) -> str:
    """Append the run's stderr to its run.log (one write, after the run) and return it."""
    text = ""
    try:
        job.errors.seek(0)
        text = job.errors.read().decode("utf-8", errors="replace")
    except OSError:
        pass
    finally:
        job.errors.close()
    try:
        if text:
            job.log.write(text if text.endswith("\n") else text + "\n")
        job.log.close()
    except OSError:  # a full disk: the reason is still the stderr's last line
        pass
    return text


def _outcome(job: _Running, stderr: str = "") -> Outcome:
    seconds = time.perf_counter() - job.began
    code = job.process.returncode
    record = find_record(job.run.run_dir / "result.json")
    resumed = job.run.state == "resume"
    if code == 0 and record is not None and record.get("status") == "completed":
        score = f"test {record_metric_name(record)} {metric(record, 'test'):.2f}"
        return Outcome(job.run, "completed", score, seconds, resumed)
    if code == 1 and record is not None and record.get("status") == "failed" and record.get("error"):
        reason = str(record["error"])
    elif code is not None and code < 0:
        reason = f"killed by signal {-code}"
    else:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exited with code {code}"
    return Outcome(job.run, "failed", " ".join(reason.split()), seconds, resumed)
