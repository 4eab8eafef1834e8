"""A run's CPU threads are a setting of the run: `run --threads` and the suite's --threads-per-run,
default 1 for both (never the machine's cores), part of the run id where not the default, applied by
the run itself, and kept in its record; a run id computes alike whether `run` or `suite` started it."""

from __future__ import annotations

import json

import pytest

from cmkd_bench.data.loading import worker_limit
from cmkd_bench.errors import UserError
from cmkd_bench.experiments import scheduler

from conftest import cli


def test_each_run_gets_the_default_or_the_requested_threads_whatever_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(scheduler, "available_cores", lambda: 16)
    assert [scheduler.threads_per_run(jobs) for jobs in (1, 2, 3, 16, 40)] == [1, 1, 1, 1, 1]
    assert scheduler.threads_per_run(4, requested=3) == 3
    with pytest.raises(UserError, match="--threads-per-run must be at least 1"):
        scheduler.threads_per_run(2, requested=0)
    assert scheduler.thread_environment(2) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "CMKD_BENCH_WORKERS": "2"}


def test_dataloader_workers_are_capped_by_the_runs_share(monkeypatch) -> None:
    monkeypatch.delenv("CMKD_BENCH_WORKERS", raising=False)
    assert worker_limit(4) == 4
    monkeypatch.setenv("CMKD_BENCH_WORKERS", "2")
    assert (worker_limit(4), worker_limit(1), worker_limit(0)) == (2, 1, 0)


def test_a_suite_runs_each_run_with_its_threads_and_the_record_says_so(tmp_path) -> None:
    out = tmp_path / "runs"
    done = cli("suite", "--methods", "no-kd", "--datasets", "mfh-gauss", "--seeds", "0", "--directions", "default",
               "--epochs", "1", "--device", "cpu", "--out", str(out), "--threads-per-run", "3",
               "--set", "train=32", "--set", "val=16", "--set", "test=16")
    assert done.returncode == 0, done.stdout + done.stderr
    (record_file,) = [p for p in out.glob("*/result.json")]
    record = json.loads(record_file.read_text())
    assert record["environment"]["threads"] == 3  # OMP_NUM_THREADS=3 in the child, torch's count
    assert record["device"].endswith(", 3 threads)")


def test_threads_per_run_below_one_is_one_line_and_exit_2(tmp_path) -> None:
    done = cli("suite", "--methods", "no-kd", "--datasets", "mfh-gauss", "--seeds", "0", "--directions", "default",
               "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "runs"), "--threads-per-run", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --threads-per-run must be at least 1, got 0"]


def test_run_and_suite_give_one_run_id_the_same_threads_and_the_same_record(tmp_path) -> None:
    """`suite` set cores // jobs threads while `run` kept the environment's: one run id, two results."""
    sets = ("--set", "train=32", "--set", "val=16", "--set", "test=16")
    suite = cli("suite", "--methods", "kd", "--datasets", "mfh-gauss", "--seeds", "0", "--directions", "default",
                "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "suite"), "--jobs", "1", *sets)
    run = cli("run", "--method", "kd", "--dataset", "mfh-gauss", "--epochs", "2", "--device", "cpu", "--quiet",
              "--out", str(tmp_path / "run"), *sets, env={"OMP_NUM_THREADS": "2"})
    assert suite.returncode == 0 and run.returncode == 0, suite.stderr + run.stderr
    (from_suite,), (from_run,) = ([json.loads(p.read_text()) for p in (tmp_path / d).glob("kd-*/result.json")]
                                  for d in ("suite", "run"))
    assert from_suite["run_id"] == from_run["run_id"]
    assert from_suite["environment"]["threads"] == from_run["environment"]["threads"] == 1
    assert from_suite["metrics"] == from_run["metrics"] and from_suite["history"] == from_run["history"]
    two = cli("run", "--method", "kd", "--dataset", "mfh-gauss", "--epochs", "2", "--device", "cpu", "--quiet",
              "--threads", "2", "--out", str(tmp_path / "run"), *sets)
    assert two.returncode == 0, two.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "run").glob("kd-*/result.json")]
    assert len({record["run_id"] for record in records}) == 2  # another count, another run
    assert sorted(record["environment"]["threads"] for record in records) == [1, 2]
