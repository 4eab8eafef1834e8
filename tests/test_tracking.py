"""Experiment logging while a run runs: history.csv, --logger tensorboard / wandb, epoch lines in
pipes and logs (steps/s, ETA), and a suite's overall progress."""

from __future__ import annotations

import csv
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cmkd_bench.cli import main
from cmkd_bench.cli.run import epoch_line
from cmkd_bench.experiments.scheduler import Outcome, PlannedRun, Scheduler
from cmkd_bench.training.engine import EpochReport
from cmkd_bench.training.runner import RunRequest
from cmkd_bench.training.tracking import HISTORY_FILE, HistoryCSV

from conftest import TINY_SYNTH, cli


def run_main(capsys, *args: str) -> tuple[int, str]:
    """`cmkd-bench ARGS` in this process (so that fake logger packages are seen): exit code, stdout + stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    captured = capsys.readouterr()
    return int(stopped.value.code or 0), captured.out + captured.err


def report(epoch: int, epochs: int = 3, **losses: float) -> EpochReport:
    return EpochReport(epoch, epochs, losses or {"ce": 1.0 / epoch}, val=10.0 * epoch, best_val=10.0 * epoch,
                       lr=0.05, seconds=2.0, steps=10)


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_history_has_a_line_per_epoch_and_a_resumed_run_keeps_the_earlier_ones(tmp_path: Path) -> None:
    history = HistoryCSV(tmp_path / HISTORY_FILE)
    history.add("teacher", report(1, 1))
    history.add("student", report(1, ce=0.9, kd=0.5))
    history.add("student", report(2, ce=0.8, kd=0.4))
    rows = read(tmp_path / HISTORY_FILE)
    assert list(rows[0]) == ["phase", "epoch", "epochs", "ce", "kd", "val", "best_val", "lr", "seconds"]
    assert [(r["phase"], r["epoch"]) for r in rows] == [("teacher", "1"), ("student", "1"), ("student", "2")]
    assert rows[0]["kd"] == "" and rows[2]["kd"] == "0.4" and rows[2]["seconds"] == "2.000"
    # resumed after epoch 1 (the line of epoch 2 came after the last checkpoint): epoch 2 again, then 3
    history.add("student", report(2, ce=0.7, kd=0.3))
    history.add("student", report(3, ce=0.6, kd=0.2))
    rows = read(tmp_path / HISTORY_FILE)
    assert [(r["phase"], r["epoch"], r["ce"]) for r in rows] == [
        ("teacher", "1", "1"), ("student", "1", "0.9"), ("student", "2", "0.7"), ("student", "3", "0.6")]


def test_a_quiet_run_writes_history_and_prints_epoch_lines_with_speed_and_eta_to_a_pipe(tmp_path: Path) -> None:
    result = cli("run", "--method", "kd", "--dataset", "synth-av", "--epochs", "2", "--out", str(tmp_path),
                 "--device", "cpu", "--quiet", *TINY_SYNTH)
    assert result.returncode == 0, result.stderr
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("  epoch ")]
    assert len(epoch_lines) == 4  # teacher and student, 2 epochs each: stdout is a pipe here
    assert all("steps/s" in line for line in epoch_lines) and "ETA" in epoch_lines[0] and "ETA" not in epoch_lines[1]
    (history,) = tmp_path.glob(f"kd-*/{HISTORY_FILE}")
    rows = read(history)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("teacher", "1"), ("teacher", "2"),
                                                        ("student", "1"), ("student", "2")]
    assert {"ce", "kd", "val", "lr", "seconds"} <= set(rows[-1]) and float(rows[-1]["seconds"]) > 0


def test_epoch_line_shows_steps_per_second_and_the_phase_eta() -> None:
    line = epoch_line(report(1, 4), [2.0])
    assert "5.0 steps/s" in line and "ETA 0m06s" in line
    assert "ETA" not in epoch_line(report(4, 4), [2.0] * 4)


@pytest.mark.parametrize("logger, package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_logger_whose_package_is_missing_is_one_line_and_exit_2(tmp_path: Path, logger: str, package: str,
                                                                   monkeypatch, capsys) -> None:
    # hide the package even where it is installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard" if logger == "tensorboard" else "wandb", None)
    code, output = run_main(capsys, "run", "--method", "no-kd", "--dataset", "synth-av", "--epochs", "1",
                                       "--out", str(tmp_path), "--logger", logger, *TINY_SYNTH)
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--logger {logger} needs the {package} package" in lines[0]
    assert not any(tmp_path.iterdir())


class FakeWriter:
    made: list["FakeWriter"] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.hparams, self.closed = log_dir, [], None, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.append((tag, step))

    def add_hparams(self, hparams, metrics) -> None:
        self.hparams = (hparams, metrics)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_per_epoch_scalars_and_the_hparams_at_the_end(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    FakeWriter.made.clear()
    code, output = run_main(capsys, "run", "--method", "kd", "--dataset", "synth-av", "--epochs", "2",
                                       "--out", str(tmp_path), "--device", "cpu", "--logger", "tensorboard",
                                       *TINY_SYNTH)
    assert code == 0, output
    (writer,) = FakeWriter.made
    assert writer.log_dir.endswith("tensorboard") and writer.closed
    assert ("student/loss/kd", 2) in writer.scalars and ("teacher/val", 1) in writer.scalars
    hparams, metrics = writer.hparams
    assert hparams["method"] == "kd" and "hparam/test" in metrics


def test_wandb_runs_offline_unless_told_otherwise(tmp_path: Path, monkeypatch, capsys) -> None:
    calls = {}

    class Run:
        summary: dict = {}

        def log(self, values) -> None:
            calls.setdefault("log", []).append(values)

        def finish(self) -> None:
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    code, output = run_main(capsys, "run", "--method", "no-kd", "--dataset", "synth-av", "--epochs", "1",
                                       "--out", str(tmp_path), "--device", "cpu", "--logger", "wandb", *TINY_SYNTH)
    assert code == 0, output
    assert calls["init"]["mode"] == "offline" and calls["finished"] and "student/val" in calls["log"][-1]


def test_pyproject_offers_the_loggers_as_optional_extras_only() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'wandb = ["wandb"]' in text and 'tensorboard = ["tensorboard"]' in text
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "wandb" not in dependencies and "tensorboard" not in dependencies


def test_a_suite_shows_its_overall_progress_after_each_run(tmp_path: Path) -> None:
    runs = [PlannedRun(RunRequest(method="kd", dataset="synth-av", out=str(tmp_path)), f"r{i}", f"r{i}", "new")
            for i in range(5)]
    lines: list[str] = []
    scheduler = Scheduler(runs, 2, ["cpu"], [], lambda *args: [], lines.append)
    scheduler.pending.clear()
    scheduler.pending.extend(runs[3:])  # 2 left, 1 running, 2 done
    scheduler.running = [object()]
    scheduler.outcomes = [Outcome(runs[0], "completed", "test top1 50.00", 10.0)]
    outcome = Outcome(runs[1], "completed", "test top1 51.00", 30.0)
    scheduler.outcomes.append(outcome)
    scheduler._report(outcome)
    assert lines[-1].startswith("[2/5] completed r1") and "2 done, 1 running, 2 left, ETA 0m25s" in lines[-1]


def test_a_suite_run_logs_its_epoch_lines_and_the_suite_its_progress(tmp_path: Path) -> None:
    result = cli("suite", "--methods", "no-kd", "--datasets", "synth-av", "--seeds", "0", "--directions", "default",
                 "--epochs", "2", "--device", "cpu", "--out", str(tmp_path), *TINY_SYNTH)
    assert result.returncode == 0, result.stderr
    assert "1 done, 0 running, 0 left" in result.stdout
    (log,) = tmp_path.glob("no-kd-*/run.log")
    text = log.read_text()
    assert "--quiet" in text and "  epoch   2/2" in text and "steps/s" in text
