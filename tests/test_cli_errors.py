"""Errors a user can cause, end to end through `python -m cmkd_bench`: one line on stderr, exit 2,
nothing written; and what an interrupted run says (the resume hint, then "resumed from epoch N")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from conftest import REPO, TINY_SYNTH, cli, gated_plugin
from test_cli import assert_one_line_error

RUNS = REPO / "leaderboard" / "runs"  # the committed records, read only


def written(path) -> list:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("command", ["run", "suite", "tune"])
@pytest.mark.parametrize("where", ["proc", "file", "under-file"])
def test_an_out_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, command, where):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = {"proc": "/proc/cmkd-x", "file": str(a_file), "under-file": str(a_file / "runs")}[where]
    if command == "run":
        args = ["run", "--method", "kd", "--dataset", "synth-av", "--device", "cpu", "--epochs", "1", *TINY_SYNTH]
    elif command == "suite":
        args = ["suite", "--methods", "kd", "--datasets", "synth-av", "--seeds", "0", "--epochs", "1"]
    else:
        args = ["tune", "--method", "kd", "--dataset", "synth-av", "--seeds", "0", "--epochs", "1", "--dry-run"]
    before = written(tmp_path)
    result = cli(*args, "--out", out, cwd=tmp_path)
    assert_one_line_error(result, repr(out), "--out")
    assert written(tmp_path) == before
    assert a_file.read_text() == "x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_index_without_a_gpu_is_one_line(tmp_path):
    result = cli("run", "--method", "kd", "--dataset", "synth-av", "--device", "cuda:0", "--out", str(tmp_path / "r"),
                 *TINY_SYNTH)
    assert_one_line_error(result, "cuda:0", "no CUDA device")
    assert not (tmp_path / "r").exists()
    result = cli("suite", "--methods", "kd", "--datasets", "synth-av", "--devices", "cuda:0,cuda:1", "--dry-run",
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "cuda:0")


def test_a_file_that_is_no_npz_is_called_so(tmp_path):
    (tmp_path / "pairs.npz").write_text("label,visual\n0,1\n")
    result = cli("run", "--method", "kd", "--dataset", "paired-npz", "--data-root", str(tmp_path / "pairs.npz"),
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "is not an .npz file")
    assert "pickle" not in result.stderr
    assert not (tmp_path / "r").exists()
    assert zipfile.is_zipfile(tmp_path / "pairs.npz") is False


@pytest.mark.parametrize("dataset", ["synth-av", "synth-rgbd", "mfh-gauss"])
def test_a_data_root_for_a_dataset_that_reads_none_is_refused(tmp_path, dataset):
    result = cli("run", "--method", "kd", "--dataset", dataset, "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, dataset, "--data-root")
    assert not (tmp_path / "r").exists()


def test_a_where_that_matches_no_run_is_an_error(tmp_path):
    result = cli("leaderboard", str(RUNS), "--where", "T=3", "--output", str(tmp_path / "t.md"), "--format", "md")
    assert_one_line_error(result, "--where T=3", "no run matches")
    assert not (tmp_path / "t.md").exists()
    assert cli("leaderboard", str(RUNS), "--where", "T=4", "--format", "md").returncode == 0


def test_a_heatmap_over_records_that_are_no_grid_is_refused(tmp_path):
    result = cli("plot", "heatmap", str(RUNS), "--x", "lr", "--y", "epochs", "--output-dir", str(tmp_path / "p"))
    assert_one_line_error(result, "no grid over 'lr' and 'epochs'")
    assert not (tmp_path / "p").exists()


def gated_run_signalled(tmp_path, signum: int):
    """A real `cmkd-bench run` (gated-kd: waits at epoch 1 until tmp_path/release exists) sent `signum`
    once its first checkpoint exists; returns (process, its stderr, checkpoints seen, args, env)."""
    out, plugin = tmp_path / "runs", gated_plugin(tmp_path)
    args = [sys.executable, "-m", "cmkd_bench", "run", "--method", "gated-kd", "--dataset", "synth-av", "--epochs", "3",
            "--device", "cpu", "--quiet", "--out", str(out), "--plugin", str(plugin), "--set", "train=256",
            "--set", "val=32", "--set", "test=32", "--set", "image_size=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # SIGINT at its default in the run, as in a terminal's foreground job (a test run started with `&` from a
    # script has it ignored, and so would every process it starts)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, checkpoints = time.time() + 240, []
    while time.time() < deadline and process.poll() is None:
        checkpoints = list(out.glob("gated-kd-*/checkpoint.pt"))
        if checkpoints:
            break
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    (tmp_path / "release").touch()
    assert checkpoints, "the run finished or failed before its first checkpoint; nothing was interrupted"
    return process, stderr, checkpoints, args, env


def test_ctrl_c_shows_the_resume_hint_and_the_resumed_run_says_so(tmp_path):
    process, stderr, _, args, env = gated_run_signalled(tmp_path, signal.SIGINT)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "interrupted; run the same command again to resume from the last finished epoch"]
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed from epoch " in again.stdout


def test_sigterm_is_one_line_with_the_resume_hint_and_exit_143(tmp_path):
    """SIGTERM (a scheduler's kill, `kill PID`) ended the run with exit 143 and nothing said."""
    process, stderr, _, args, env = gated_run_signalled(tmp_path, signal.SIGTERM)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "terminated (SIGTERM); run the same command again to resume from the last finished epoch"]
    assert not list((tmp_path / "runs").rglob("*.tmp-*"))  # nothing half-written
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "resumed from epoch " in again.stdout, again.stderr


def test_a_suite_files_out_is_relative_to_its_folder(tmp_path, monkeypatch):
    from cmkd_bench.experiments.plan import load_suite

    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "s.yaml").write_text("datasets: [synth-av]\nmethods: [kd]\nout: ../runs\n")
    (folder / "t.yaml").write_text("datasets: [synth-av]\nmethods: [kd]\n")
    monkeypatch.chdir(REPO)
    assert load_suite(folder / "s.yaml").out == str(tmp_path / "runs")
    assert load_suite(folder / "t.yaml").out == "runs"  # no out: ./runs, where the command runs
    committed = load_suite(os.path.join("leaderboard", "suites", "synth-av.yaml"))
    assert committed.out == os.path.join("leaderboard", "runs")


def test_dry_run_prints_the_run_id_and_writes_nothing_and_teacher_epochs_shape_the_teacher(tmp_path):
    import json

    out = tmp_path / "runs"
    args = ("run", "--method", "kd", "--dataset", "synth-av", "--epochs", "2", "--teacher-epochs", "1",
            "--device", "cpu", "--quiet", "--out", str(out), *TINY_SYNTH)
    dry = cli(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing trained, nothing written" in dry.stdout and "teacher_epochs: 1" in dry.stdout
    assert not out.exists()
    run_id = next(line.split(": ")[1] for line in dry.stdout.splitlines() if line.startswith("run id: "))
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert run_id in done.stdout and "(1 epoch; the student's recipe with --teacher-epochs 1)" in done.stdout
    record = json.loads((out / run_id / "result.json").read_text())
    assert record["teacher"]["recipe"]["epochs"] == 1 and record["config"]["recipe"]["epochs"] == 2
    teacher = json.loads((out / "teachers" / record["teacher"]["key"] / "teacher.json").read_text())
    assert teacher["recipe"]["epochs"] == 1
    plain = cli(*[a for a in args if a not in ("--teacher-epochs", "1")], "--dry-run")
    plain_id = next(line.split(": ")[1] for line in plain.stdout.splitlines() if line.startswith("run id: "))
    assert plain_id != run_id and "teacher_epochs: null" in plain.stdout
    from cmkd_bench.training.config import RunConfig

    # without --teacher-epochs the identity (so the run id) is what it was before the option existed
    assert "teacher_epochs" not in RunConfig(**{**record["config"], "teacher_epochs": None}).identity()
    bad = cli("run", "--method", "kd", "--dataset", "synth-av", "--teacher-epochs", "0", "--out", str(tmp_path / "x"))
    assert_one_line_error(bad, "--teacher-epochs")
    assert not (tmp_path / "x").exists()
