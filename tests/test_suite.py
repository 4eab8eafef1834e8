"""Suites: expansion through runner.resolve_run, each run's command line from `run`'s own options,
one-line errors, parallel runs sharing one teacher, skip-finished, failures summarised, and a suite
killed mid-way resuming to the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import click
import pytest

from cmkd_bench.cli import main
from cmkd_bench.cli.run import RUN_ONLY_OPTIONS, run_command
from cmkd_bench.cli.suite import run_command_line
from cmkd_bench.experiments.plan import expand, load_suite, suite_from_mapping
from cmkd_bench.training.runner import RunRequest, resolve_run

from conftest import REPO, cli

TINY = ["train=64", "val=32", "test=32", "image_size=16"]
TINY_FLAGS = [arg for setting in TINY for arg in ("--set", setting)]

# A method that pauses before every epoch after the first, so that a test can kill a suite while a
# run is between checkpoints; and one whose loss is NaN, so that a run fails.
PLUGIN = '''
import time

from cmkd_bench.methods.kd import KD
from cmkd_bench.registry import METHODS


@METHODS.register("slow-kd", tasks=("classification",), description="kd that pauses between epochs (tests)")
class SlowKD(KD):
    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        if epoch > 0:
            time.sleep(0.4)


@METHODS.register("nan-kd", tasks=("classification",), description="a loss that is NaN (tests)")
class NanKD(KD):
    def forward(self, student, teacher, batch):
        return {"ce": self.task_loss(student.logits, batch["label"]) * float("nan")}
'''


def suite_args(out: Path, plugin: Path, methods: str = "no-kd,slow-kd", jobs: int = 1) -> list[str]:
    return ["suite", "--methods", methods, "--datasets", "synth-av", "--seeds", "0", "--directions", "default",
            "--epochs", "3", "--device", "cpu", "--out", str(out), "--jobs", str(jobs), "--plugin", str(plugin),
            "--threads-per-run", "1", *TINY_FLAGS]  # one thread whatever --jobs: bitwise-equal results


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def records_by_method(out: Path) -> dict[str, dict]:
    records = [json.loads(path.read_text()) for path in out.glob("*/result.json")]
    return {record["method"]: record for record in records}


def logs(out: Path) -> str:
    return "".join(path.read_text() for path in sorted(out.glob("*/run.log")))


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "test_methods.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, plugin) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted suite of two runs needing one teacher, two at a time."""
    out = tmp_path_factory.mktemp("reference") / "runs"
    return out, cli(*suite_args(out, plugin, jobs=2))


# --- expansion


def test_expansion_gives_exactly_the_run_ids_of_single_runs() -> None:
    suite = suite_from_mapping({
        "datasets": ["synth-av"], "methods": ["no-kd", "none", {"name": "kd", "grid": {"T": [2, 4]}}],
        "directions": "both", "seeds": [0, 1], "sets": TINY, "epochs": 1, "out": "nowhere",
    })
    planned = expand(suite)
    expected = []
    for seed in (0, 1):
        for teacher, student in (("visual", "audio"), ("audio", "visual")):
            for method, sets in (("no-kd", ()), ("kd", ("T=2",)), ("kd", ("T=4",))):
                request = RunRequest(method=method, dataset="synth-av", teacher_modality=teacher,
                                     student_modality=student, seed=seed, epochs=1, out="nowhere",
                                     sets=(*TINY, *sets))
                expected.append(resolve_run(request).config.run_id)
    # "none" is an alias of no-kd: the same run, listed once.
    assert [run.run_id for run in planned] == expected
    assert all(run.state == "new" for run in planned)
    assert not Path("nowhere").exists()


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    code, stdout, _ = run_main(capsys, "suite", "--methods", "no-kd,kd", "--datasets", "synth-av", "--seeds", "0,1",
                               "--epochs", "1", "--out", str(out), "--dry-run", *TINY_FLAGS)
    assert code == 0
    assert "8 runs: 0 already completed (skipped), 0 to resume, 8 to run" in stdout  # 2 methods x 2 dirs x 2 seeds
    request = RunRequest(method="kd", dataset="synth-av", teacher_modality="audio", student_modality="visual",
                         seed=1, epochs=1, out=str(out), sets=tuple(TINY))
    assert resolve_run(request).config.run_id in stdout
    assert not out.exists()


@pytest.mark.parametrize("suite_text, fragments", [
    ("datasets: [synth-av]\nmethods: [kd, kdd]\n", ("method kdd", "unknown method 'kdd'", "did you mean")),
    ("datasets: [synth-av]\nmethods: [kd]\nsets: {T: 2, nope: 1}\n", ("--set nope", "no such setting")),
    ("datasets: [synth-av]\nmethods: [kd]\nseed: [0]\n", ("unknown key 'seed'",)),
    ("datasets: [synth-av]\nmethods: [kd]\ndirections: [visual->smell]\n", ("no modality 'smell'",)),
    ("datasets: [synth-av\n", ("not valid YAML",)),
])
def test_a_bad_suite_is_one_line_and_exit_2_before_anything_runs(tmp_path, capsys, suite_text, fragments) -> None:
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(suite_text + f"out: {tmp_path / 'runs'}\nepochs: 1\n")
    code, stdout, stderr = run_main(capsys, "suite", str(suite_file))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not (tmp_path / "runs").exists() and stdout == ""


def test_every_path_in_a_suite_file_is_relative_to_the_file(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "project" / "suites"
    folder.mkdir(parents=True)
    (folder / "s.yaml").write_text(
        "datasets: [mfh-gauss, {name: paired-npz, data_root: ../data/pairs.npz}]\nmethods: [kd]\n"
        "out: ../runs\ndata_root: ../data\nteacher_cache: cache\nplugins: [../plugins/mine.py]\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the file's folder
    suite = load_suite("project/suites/s.yaml")
    project = Path("project")
    assert suite.out == str(project / "runs") and suite.data_root == str(project / "data")
    assert suite.teacher_cache == str(project / "suites" / "cache")
    assert suite.plugins == (str(project / "plugins" / "mine.py"),)
    assert suite.datasets[1].data_root == str(project / "data" / "pairs.npz") and suite.datasets[0].data_root is None
    (folder / "t.yaml").write_text(f"datasets: [mfh-gauss]\nmethods: [kd]\nout: {tmp_path / 'abs'}\n")
    assert load_suite(folder / "t.yaml").out == str(tmp_path / "abs")  # an absolute path stays as it is
    (folder / "u.yaml").write_text("datasets: [mfh-gauss]\nmethods: [kd]\n")
    assert load_suite(folder / "u.yaml").out == "runs"  # no out: ./runs, as with `run`


# --- each run's command line


def request_unlike_the_defaults() -> RunRequest:
    """A request whose every field differs from its default, so that any field left out would show."""
    values = {}
    for index, field in enumerate(fields(RunRequest)):
        kind = str(field.type)
        if kind == "bool":
            values[field.name] = True
        elif kind.startswith("tuple[str"):
            values[field.name] = (f"{field.name}.a=1", f"{field.name}.b=-2")
        elif kind.startswith("int"):
            values[field.name] = 100 + index
        elif kind.startswith("float"):
            values[field.name] = 0.125 + index
        elif kind.startswith("str"):
            values[field.name] = f"{field.name}-value"
        else:
            raise AssertionError(f"RunRequest.{field.name}: give this test a value of type {kind}")
    return RunRequest(**values)


def test_run_options_are_the_run_request_fields_plus_the_documented_display_ones() -> None:
    options = [param.name for param in run_command.params]
    assert set(RUN_ONLY_OPTIONS) <= set(options)
    assert sorted(set(options) - set(RUN_ONLY_OPTIONS)) == sorted(field.name for field in fields(RunRequest))


def test_a_suite_run_gets_every_field_of_its_request_through_runs_own_options() -> None:
    request = request_unlike_the_defaults()
    command = run_command_line(request, "cuda:7", ["plugins/a.py", "plugins/b.py"])
    assert command[:4] == [sys.executable, "-m", "cmkd_bench", "run"]
    parsed = run_command.make_context("run", command[4:]).params  # what the subprocess's `run` receives
    assert parsed.pop("quiet") is True and parsed.pop("plugins") == ("plugins/a.py", "plugins/b.py")
    assert parsed.pop("logger") is None  # suite runs log to run.log and history.csv
    assert parsed.pop("dry_run") is False  # a suite's run trains (suite --dry-run lists, runs nothing)
    assert parsed.pop("sync_bn") is False  # a suite's run is one process (torchrun's option)
    assert RunRequest(**parsed) == replace(request, device="cuda:7")  # the job slot's device, all else as asked
    plain = run_command_line(RunRequest(method="kd", dataset="synth-av", sets=("T=2",)), "cpu", [])
    assert plain[4:] == ["--method", "kd", "--dataset", "synth-av", "--seed", "0", "--device", "cpu",
                         "--out", "runs", "--set", "T=2", "--quiet"]


def test_a_run_option_that_is_no_request_field_stops_the_suite_instead_of_being_dropped(monkeypatch) -> None:
    monkeypatch.setattr(run_command, "params", [*run_command.params, click.Option(["--new-knob"], type=int)])
    with pytest.raises(RuntimeError, match="'new_knob' is no RunRequest field"):
        run_command_line(RunRequest(method="kd", dataset="synth-av"), "cpu", [])


# --- running


def test_parallel_runs_train_their_shared_teacher_once(reference) -> None:
    out, result = reference
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 completed, 0 skipped (already completed), 0 failed" in result.stdout
    text = logs(out)
    # The runner prints "teacher visual: N epochs" when it trains a teacher and "reused" when it loads one.
    assert text.count("teacher visual: 3 epochs") == 1, text
    assert text.count(": reused (") == 1, text
    assert len(list((out / "teachers").glob("*/teacher.json"))) == 1
    assert set(records_by_method(out)) == {"no-kd", "slow-kd"}


def test_a_suite_started_again_skips_finished_runs_and_summarises_failures(reference, plugin) -> None:
    out, first = reference
    assert first.returncode == 0, first.stdout + first.stderr
    runs_before = logs(out).count("=== ")
    result = cli(*suite_args(out, plugin, methods="no-kd,slow-kd,nan-kd"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 completed, 2 skipped (already completed), 1 failed" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("  failed: nan-kd-synth-av")]
    assert len(failed) == 1 and "loss term 'ce' became non-finite" in failed[0], result.stdout
    assert logs(out).count("=== ") == runs_before + 1  # only the new run was launched


def test_a_killed_suite_resumes_and_reaches_the_results_of_an_uninterrupted_one(tmp_path, reference, plugin) -> None:
    reference_out, first = reference
    assert first.returncode == 0, first.stdout + first.stderr
    expected = {m: r for m, r in records_by_method(reference_out).items() if m in ("no-kd", "slow-kd")}
    out = tmp_path / "runs"
    slow_checkpoint = out / expected["slow-kd"]["run_id"] / "checkpoint.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    suite = subprocess.Popen([sys.executable, "-m", "cmkd_bench", *suite_args(out, plugin)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not slow_checkpoint.exists() and suite.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(suite.pid, signal.SIGKILL)  # the suite and the run it started, mid-way through the second run
    suite.wait()
    assert slow_checkpoint.exists(), "the suite ended before the second run wrote its first checkpoint"
    assert set(records_by_method(out)) == {"no-kd"}

    result = cli(*suite_args(out, plugin))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 completed (1 resumed), 1 skipped (already completed), 0 failed" in result.stdout
    resumed = records_by_method(out)
    assert resumed["slow-kd"]["resumed_from_epoch"] is not None
    for method, record in expected.items():
        assert resumed[method]["run_id"] == record["run_id"]
        assert resumed[method]["metrics"] == record["metrics"]
        assert resumed[method]["teacher"]["metrics"] == record["teacher"]["metrics"]
        assert [h["losses"] for h in resumed[method]["history"]] == [h["losses"] for h in record["history"]]
