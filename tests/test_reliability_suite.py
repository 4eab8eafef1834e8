"""Suites under concurrency and kills: failure reasons from each run's own stderr, a run refused as
running elsewhere counted by the record it leaves, two suites over one OUT, a suite killed alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmkd_bench.experiments.scheduler import PlannedRun, Scheduler
from cmkd_bench.training.runner import ALREADY_RUNNING, RunRequest, execute, resolve_run

from conftest import REPO, cli
from test_suite import PLUGIN, TINY, TINY_FLAGS, records_by_method


def planned(out: Path, run_id: str = "r") -> PlannedRun:
    return PlannedRun(RunRequest(method="kd", dataset="synth-av", out=str(out)), run_id, run_id, "new")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failure_reason_is_the_runs_own_last_stderr_line_not_the_shared_logs(tmp_path):
    run = planned(tmp_path)
    log = run.run_dir / "run.log"
    # the run fails; meanwhile another suite's run of the same id appends its success line to run.log
    code = (f"import sys; sys.stderr.write('error: my own reason\\n'); sys.stderr.flush(); "
            f"open({str(log)!r}, 'a').write('kd on synth-av: test top1 50.00 (another suite)\\n'); sys.exit(2)")
    outcomes = Scheduler([run], 1, ["cpu"], (), lambda *_: python(code), echo=lambda _: None).run()
    assert [(o.status, o.detail) for o in outcomes] == [("failed", "error: my own reason")]
    text = log.read_text()
    assert "error: my own reason" in text and "another suite" in text  # the stderr still lands in run.log
    assert sorted(p.name for p in run.run_dir.iterdir()) == ["run.log"]  # no stderr file left behind


def test_a_run_refused_as_running_elsewhere_counts_by_the_record_it_leaves(tmp_path):
    record = execute(resolve_run(RunRequest(method="no-kd", dataset="synth-av", epochs=1, device="cpu",
                                            out=str(tmp_path), sets=tuple(TINY))))
    done, missing = planned(tmp_path, record["run_id"]), planned(tmp_path, "never-completed")
    refuse = python(f"import sys; sys.stderr.write('error: run x {ALREADY_RUNNING}; wait\\n'); sys.exit(2)")
    calls = []

    def command(request, device, plugins):
        calls.append(1)
        return refuse

    outcomes = Scheduler([done, missing], 1, ["cpu"], (), command, echo=lambda _: None).run()
    by_id = {o.run.run_id: o for o in outcomes}
    assert by_id[record["run_id"]].status == "completed" and "run by another process" in by_id[record["run_id"]].detail
    assert by_id["never-completed"].status == "failed" and "left no completed record" in by_id["never-completed"].detail
    assert len(calls) == 3  # the run without a record was started again once


def suite_args(out: Path, plugin: Path, methods: str) -> list[str]:
    return ["suite", "--methods", methods, "--datasets", "synth-av", "--seeds", "0", "--directions", "default",
            "--epochs", "3", "--device", "cpu", "--out", str(out), "--jobs", "1", "--plugin", str(plugin), *TINY_FLAGS]


@pytest.fixture()
def plugin(tmp_path) -> Path:
    path = tmp_path / "test_methods.py"
    path.write_text(PLUGIN)
    return path


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_two_suites_over_one_out_both_succeed_with_each_run_done_once(tmp_path, plugin):
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "cmkd_bench", *suite_args(out, plugin, "no-kd,kd,slow-kd")]
    suites = [subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    texts = [suite.communicate(timeout=600)[0] for suite in suites]
    assert [suite.returncode for suite in suites] == [0, 0], texts
    assert all("FAILED" not in text for text in texts), texts
    records = records_by_method(out)
    assert {m: r["status"] for m, r in records.items()} == {"no-kd": "completed", "kd": "completed",
                                                            "slow-kd": "completed"}
    trained = sum(path.read_text().count("epoch   3/3") for path in out.glob("*/run.log"))
    assert trained <= 3 + 1, "a run was trained twice"  # + the one teacher


@pytest.mark.slow
def test_killing_only_the_suite_process_stops_its_run_and_a_rerun_finishes(tmp_path, plugin):
    out = tmp_path / "runs"
    suite = subprocess.Popen([sys.executable, "-m", "cmkd_bench", *suite_args(out, plugin, "slow-kd")], cwd=REPO,
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("slow-kd-*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    children = subprocess.run(["pgrep", "-P", str(suite.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the suite started no run"
    suite.send_signal(signal.SIGKILL)  # the suite alone, not its process group
    suite.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in children):
        assert time.monotonic() < deadline, "the run outlived its suite"
        time.sleep(0.05)
    result = cli(*suite_args(out, plugin, "slow-kd"))
    assert result.returncode == 0 and "0 failed" in result.stdout, result.stdout + result.stderr
    assert json.loads(next(out.glob("slow-kd-*/result.json")).read_text())["status"] == "completed"


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
