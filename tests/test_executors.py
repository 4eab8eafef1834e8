"""Suites through submitit (its LocalExecutor stands in for SLURM): a tiny suite completes, a run
killed mid-way is resumed by the next submission, a submission of a finished suite runs nothing,
pre-emption requeues through the checkpoint hook and resumes, and --status reads the records."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cmkd_bench.errors import UserError
from cmkd_bench.experiments import executors

from conftest import cli, gated_plugin

pytest.importorskip("submitit")

TINY = ["--set", "train=32", "--set", "val=16", "--set", "test=16"]

PLUGIN = '''
import os
import signal
import time
from pathlib import Path

from cmkd_bench.methods.kd import KD
from cmkd_bench.registry import METHODS


@METHODS.register("kill-once-kd", tasks=("classification",), description="kd killed once after epoch 1 (tests)")
class KillOnceKD(KD):
    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        marker = Path(os.environ["KILL_MARKER"])
        if epoch == 1 and marker.exists():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)


@METHODS.register("slow-kd", tasks=("classification",), description="kd that pauses between epochs (tests)")
class SlowKD(KD):
    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        if epoch > 0:
            time.sleep(1.5)
'''


def suite(out: Path, plugin: Path, methods: str, *extra: str, env: dict | None = None):
    return cli("suite", "--methods", methods, "--datasets", "mfh-gauss", "--seeds", "0", "--directions", "default",
               "--epochs", "2", "--device", "cpu", "--out", str(out), "--plugin", str(plugin),
               "--executor", "submitit-local", "--cpus-per-run", "1", *TINY, *extra, env=env)


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "plugin.py"
    path.write_text(PLUGIN)
    return path


def test_a_suite_completes_through_submitit_resumes_a_killed_run_and_then_runs_nothing(tmp_path, plugin) -> None:
    out, marker = tmp_path / "runs", tmp_path / "kill"
    marker.touch()
    env = {"KILL_MARKER": str(marker)}
    first = suite(out, plugin, "no-kd,kill-once-kd", env=env)
    assert first.returncode == 1, first.stdout + first.stderr  # the killed run failed, the other completed
    assert "submitted 1 run that trains its teacher" in first.stdout  # the teacher's wave first
    assert "killed by signal 9" in first.stdout and not marker.exists()
    status = cli("suite", "--status", str(out))
    assert status.stdout.splitlines()[0] == f"{out}: 1 completed, 1 running or interrupted, 0 failed, 0 pending"
    (killed,) = out.glob("kill-once-kd-*")
    assert (killed / "checkpoint.pt").exists() and "submitit job" in (killed / "run.log").read_text()
    jobs = json.loads((killed / "submitit.json").read_text())
    assert Path(jobs["submitit_log"]).is_dir()  # the run's log links submitit's folder

    second = suite(out, plugin, "no-kd,kill-once-kd", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 already completed (skipped), 1 to resume" in second.stdout and "(resumed)" in second.stdout
    record = json.loads((killed / "result.json").read_text())
    assert record["status"] == "completed" and record["resumed_from_epoch"] == 1
    assert len(json.loads((killed / "submitit.json").read_text())["jobs"]) == 2

    third = suite(out, plugin, "no-kd,kill-once-kd", env=env)
    assert third.returncode == 0 and "submitted" not in third.stdout
    assert "2 already completed (skipped), 0 to resume, 0 to run" in third.stdout
    assert cli("suite", "--status", str(out)).stdout.splitlines()[0] == (
        f"{out}: 2 completed, 0 running or interrupted, 0 failed, 0 pending")


@pytest.mark.slow  # 20 s; the submitit path itself is run by the test above
def test_a_preempted_job_is_requeued_by_submitit_and_resumes_from_its_checkpoint(tmp_path) -> None:
    import submitit

    run_dir, gated = tmp_path / "runs" / "the-run", gated_plugin(tmp_path)  # waits at epoch 1 for tmp_path/release
    argv = [sys.executable, "-m", "cmkd_bench", "run", "--method", "gated-kd", "--dataset", "mfh-gauss",
            "--epochs", "3", "--device", "cpu", "--out", str(run_dir.parent), "--plugin", str(gated), *TINY, "--quiet"]
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(executors.RunJob(argv, str(run_dir), 1))
    deadline = time.time() + 240
    while not list(run_dir.parent.glob("gated-kd-*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.2)
    pid = json.loads((run_dir / "submitit.json").read_text())["pid"]  # the job's process (submitit's task)
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends before pre-emption or the time limit: RunJob.checkpoint runs
    (tmp_path / "release").touch()  # the requeued run goes on past epoch 1
    assert job.result() == 0
    assert json.loads((run_dir / "submitit.json").read_text())["requeues"] == 1
    (record_file,) = run_dir.parent.glob("gated-kd-*/result.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "completed" and record["resumed_from_epoch"] >= 1


@pytest.mark.parametrize("arguments, message", [
    (["--partition", "gpu"], "error: --partition is an option of --executor slurm; add --executor slurm or drop --partition"),
    (["--executor", "submitit-local", "--time", "4h"],
     "error: --time '4h' is no time limit; write HH:MM:SS (e.g. 04:00:00) or D-HH:MM:SS"),
    (["--executor", "submitit-local", "--gpus-per-run", "-1"], "error: --gpus-per-run must be at least 0, got -1"),
])
def test_bad_cluster_options_are_one_line_and_exit_2(tmp_path, arguments, message) -> None:
    done = cli("suite", "--methods", "no-kd", "--datasets", "mfh-gauss", "--out", str(tmp_path / "runs"), *arguments)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [message]


def test_slurm_without_submitit_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(UserError, match=r"^--executor slurm needs submitit, which is not installed; "
                                        r"pip install 'cmkd-bench\[cluster\]'$"):
        executors.cluster_settings("slurm", "gpu", 1, 8, "04:00:00", 64)


@pytest.mark.parametrize("text, minutes", [("04:00:00", 240), ("90", 90), ("1-00:00:00", 1440), ("2-03", 3060),
                                           ("10:30", 11), ("00:00:30", 1)])
def test_slurm_time_formats_in_minutes(text, minutes) -> None:
    assert executors.time_limit_minutes(text) == minutes
