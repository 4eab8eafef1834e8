"""The training loop: repeatability, resume after interruption, non-finite losses, teacher cache."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmkd_bench.errors import RunFailed
from cmkd_bench.training.runner import RunCallbacks, RunRequest, execute, resolve_run

from conftest import REPO

TINY = ("train=64", "val=32", "test=32", "image_size=16")


def request(out: Path, method: str = "kd", epochs: int = 3, **extra) -> RunRequest:
    return RunRequest(method=method, dataset="synth-av", epochs=epochs, device="cpu", out=str(out),
                      sets=TINY + tuple(extra.pop("sets", ())), **extra)


def student_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["models"]["student"]


def test_cpu_runs_are_bitwise_repeatable(tmp_path):
    first = execute(resolve_run(request(tmp_path / "a", method="fd")))
    second = execute(resolve_run(request(tmp_path / "b", method="fd")))
    assert first["run_id"] == second["run_id"]
    assert first["metrics"] == second["metrics"]
    assert [h["losses"] for h in first["history"]] == [h["losses"] for h in second["history"]]


def test_resume_after_interruption_reaches_the_same_result(tmp_path):
    reference = execute(resolve_run(request(tmp_path / "straight", epochs=4)))

    class Stop(Exception):
        pass

    phase = []

    def stop_student_after_two(report) -> None:
        if phase[-1].startswith("kd") and report.epoch == 2:
            raise Stop

    interrupted = resolve_run(request(tmp_path / "resumed", epochs=4))
    with pytest.raises(Stop):
        execute(interrupted, RunCallbacks(on_phase=lambda label, *_: phase.append(label), on_epoch=stop_student_after_two))
    assert not (interrupted.run_dir / "result.json").exists()
    # the epoch's report (history.csv) comes before its checkpoint: stopped while reporting epoch 2,
    # the last checkpoint is epoch 1's (0-based 0), and the resumed run does epoch 2 again
    assert torch.load(interrupted.run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 0

    resumed = execute(resolve_run(request(tmp_path / "resumed", epochs=4)))
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["metrics"] == reference["metrics"]
    assert [h["losses"] for h in resumed["history"]] == [h["losses"] for h in reference["history"]]
    assert not (interrupted.run_dir / "checkpoint.pt").exists()  # removed once the record is written


def test_killed_process_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL a real `cmkd-bench run` after its first student checkpoint, then run it again."""
    args = ["--method", "fitnet", "--dataset", "synth-av", "--epochs", "6", "--device", "cpu", "--quiet",
            "--set", "train=256", "--set", "val=32", "--set", "test=32", "--set", "image_size=16"]
    env = {"OMP_NUM_THREADS": "1"}
    straight = subprocess.run([sys.executable, "-m", "cmkd_bench", "run", *args, "--out", str(tmp_path / "a")],
                              capture_output=True, text=True, env={**__import__("os").environ, **env}, timeout=300)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "b"
    process = subprocess.Popen([sys.executable, "-m", "cmkd_bench", "run", *args, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**__import__("os").environ, **env})
    deadline = time.time() + 240
    checkpoints = []
    while time.time() < deadline and process.poll() is None:
        checkpoints = [p for p in out.glob("fitnet-*/checkpoint.pt")]
        if checkpoints:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints, "the run finished or failed before its first checkpoint; nothing was interrupted"
    run_dir = checkpoints[0].parent
    assert not (run_dir / "result.json").exists()
    again = subprocess.run([sys.executable, "-m", "cmkd_bench", "run", *args, "--out", str(out)],
                           capture_output=True, text=True, env={**__import__("os").environ, **env}, timeout=300)
    assert again.returncode == 0, again.stderr
    record = json.loads((run_dir / "result.json").read_text())
    reference = json.loads(next((tmp_path / "a").glob("fitnet-*/result.json")).read_text())
    assert record["resumed_from_epoch"] >= 1
    assert record["metrics"] == reference["metrics"]


def test_non_finite_loss_fails_the_run_naming_the_term(tmp_path):
    plugin = tmp_path / "exploding.py"
    plugin.write_text(
        "import torch\n"
        "from cmkd_bench.method import Method\n"
        "from cmkd_bench.registry import METHODS\n"
        "@METHODS.register('exploding-test', description='returns inf from its third step (one step per epoch here)')\n"
        "class Exploding(Method):\n"
        "    def __init__(self, student, teacher, spec):\n"
        "        super().__init__(student, teacher, spec)\n"
        "        self.register_buffer('calls', torch.zeros(()))\n"
        "    def forward(self, student, teacher, batch):\n"
        "        self.calls += 1\n"
        "        boom = torch.where(self.calls > 2, torch.tensor(float('inf')), torch.tensor(0.0))\n"
        "        return {'ce': self.task_loss(student.logits, batch['label']), 'boom': boom + 0 * student.logits.sum()}\n")
    from cmkd_bench.registry import load_plugin_file

    load_plugin_file(plugin)
    prepared = resolve_run(request(tmp_path / "runs", method="exploding-test"))
    with pytest.raises(RunFailed, match="loss term 'boom' became non-finite at epoch 3, step 1"):
        execute(prepared)
    record = json.loads((prepared.run_dir / "result.json").read_text())
    assert record["status"] == "failed" and "'boom'" in record["error"]


def test_teacher_is_trained_once_and_reused(tmp_path):
    first = execute(resolve_run(request(tmp_path, method="kd")))
    teacher_json = Path(first["teacher"]["checkpoint"]).with_name("teacher.json")
    stamp = teacher_json.stat().st_mtime_ns
    second = execute(resolve_run(request(tmp_path, method="fitnet")))
    assert second["teacher"]["key"] == first["teacher"]["key"]
    assert second["teacher"]["metrics"] == first["teacher"]["metrics"]
    assert teacher_json.stat().st_mtime_ns == stamp
    other_seed = execute(resolve_run(request(tmp_path, method="kd", seed=1)))
    assert other_seed["teacher"]["key"] != first["teacher"]["key"]


def test_teacher_checkpoint_option_uses_the_given_weights(tmp_path):
    trained = execute(resolve_run(request(tmp_path / "a", method="kd")))
    given = execute(resolve_run(request(tmp_path / "b", method="kd", teacher_checkpoint=trained["teacher"]["checkpoint"])))
    assert given["teacher"]["metrics"]["test"] == trained["teacher"]["metrics"]["test"]
    assert given["run_id"] != trained["run_id"]  # the checkpoint's content is part of the identity
    assert not (tmp_path / "b" / "teachers").exists() or not list((tmp_path / "b" / "teachers").glob("*/teacher.pt"))


def test_completed_run_is_not_repeated_unless_forced(tmp_path):
    record = execute(resolve_run(request(tmp_path)))
    again = execute(resolve_run(request(tmp_path)))
    assert again.get("skipped") and again["created"] == record["created"]
    forced = execute(resolve_run(request(tmp_path)), force=True)
    assert not forced.get("skipped") and forced["metrics"] == record["metrics"]


def test_record_has_the_promised_fields(tmp_path):
    record = execute(resolve_run(request(tmp_path, method="fd")))
    on_disk = json.loads((tmp_path / record["run_id"] / "result.json").read_text())
    for key in ("run_id", "status", "error", "method", "dataset", "task", "student_modality", "teacher_modality",
                "student_backbone", "teacher_backbone", "seed", "hparams", "config", "metrics", "teacher", "device",
                "versions", "git_revision", "wall_time_s", "steps_per_s"):
        assert key in on_disk, key
    assert on_disk["status"] == "completed" and on_disk["metric"] == "top1"
    assert set(on_disk["metrics"]) >= {"val_best", "test", "test_last"}
    assert on_disk["hparams"]["split"] == 0.5 and on_disk["config"]["recipe"]["epochs"] == 3
    assert 0 <= on_disk["metrics"]["test"] <= 100
    assert set(on_disk["versions"]) >= {"torch", "timm"}
    assert on_disk["teacher"]["metrics"]["test"] >= 0 and on_disk["teacher"]["checkpoint"].endswith("teacher.pt")
    assert on_disk["train_steps"] == 3 * 1  # 64 samples, batch 64, three epochs
    saved = torch.load(on_disk["student_checkpoint"], weights_only=True)
    assert "net.fc.weight" in saved and not (tmp_path / record["run_id"] / "checkpoint.pt").exists()


def test_selection_uses_val_and_reports_both_test_numbers(tmp_path):
    record = execute(resolve_run(request(tmp_path, epochs=4)))
    vals = [h["val"] for h in record["history"]]
    assert record["metrics"]["val_best"] == max(vals)
    assert record["metrics"]["best_epoch"] == vals.index(max(vals)) + 1


def test_teacher_stays_frozen_during_student_training():
    """Weights and BatchNorm statistics of the teacher are untouched; the student's change."""
    from cmkd_bench.data.spec import Recipe
    from cmkd_bench.training.engine import Fit
    from cmkd_bench.registry import DATASETS, METHODS
    from cmkd_bench.training.runner import build_model

    data = DATASETS.build("synth-av", None, train=128, val=32, test=32, image_size=16)
    cpu = torch.device("cpu")
    teacher = build_model("small-cnn", data, "visual", 0, cpu)
    student = build_model("small-cnn", data, "audio", 1, cpu)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    method = METHODS.build("kd", student.info, teacher.info, data.spec)
    Fit(student=student, method=method, data=data, student_modality="audio", recipe=Recipe(epochs=2, batch_size=32),
        seed=0, device=cpu, teacher=teacher, teacher_modality="visual").run()
    assert not teacher.training
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(before_s["net.stages.0.bn1.running_mean"], student.state_dict()["net.stages.0.bn1.running_mean"])
    assert not torch.equal(before_s["net.fc.weight"], student.state_dict()["net.fc.weight"])


def test_a_run_already_running_elsewhere_is_refused(tmp_path):
    import fcntl

    from cmkd_bench.errors import UserError

    prepared = resolve_run(request(tmp_path))
    prepared.run_dir.mkdir(parents=True)
    with open(prepared.run_dir / ".run.lock", "a") as held:  # what a live process holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="already running in another process"):
            execute(prepared)
    assert execute(prepared)["status"] == "completed"
