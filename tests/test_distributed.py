"""One run on two processes (torchrun, gloo on CPU): the same losses, metrics and weights as one
process, SyncBatchNorm over the whole batch, a killed run resumed on another world size, one record.

The single-process references run in this process (cmkd_bench.cli.main); the two-process runs are
`python -m torch.distributed.run --standalone --nproc-per-node 2 -m cmkd_bench run ...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmkd_bench import distributed
from cmkd_bench.cli import main

from conftest import REPO

LINEAR = ["--method", "kd", "--dataset", "mfh-gauss", "--student", "linear", "--teacher", "linear",
          "--epochs", "2", "--batch-size", "32", "--lr", "0.1", "--device", "cpu", "--quiet",
          "--set", "train=64", "--set", "val=30", "--set", "test=33"]  # 33: uneven evaluation parts
CNN = ["--method", "kd", "--dataset", "synth-av", "--student", "small-cnn", "--teacher", "small-cnn",
       "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet",
       "--set", "train=32", "--set", "val=16", "--set", "test=17", "--set", "image_size=16"]

# kd that kills its own process (rank 0) at the start of the second epoch, once: after the first
# epoch's checkpoint, as a pre-emption would.
KILLER = '''
import os
import signal
from pathlib import Path

import torch.distributed as dist

from cmkd_bench.methods.kd import KD
from cmkd_bench.registry import METHODS


@METHODS.register("kill-once-kd", tasks=("classification",), description="kd killed once after epoch 1 (tests)")
class KillOnceKD(KD):
    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        marker = Path(os.environ["KILL_MARKER"])
        if epoch == 1 and marker.exists() and (not dist.is_initialized() or dist.get_rank() == 0):
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
'''


def torchrun(*args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "cmkd_bench", "run", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)


def in_process(*args: str) -> int:
    try:
        main(["run", *args])
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def the_record(out: Path) -> dict:
    (path,) = [p for p in out.glob("*/result.json")]
    return json.loads(path.read_text())


def assert_same_training(one: dict, two: dict, tolerance: float = 1e-5) -> None:
    assert one["run_id"] == two["run_id"]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["losses"].keys() == b["losses"].keys()
        for name in a["losses"]:
            assert a["losses"][name] == pytest.approx(b["losses"][name], rel=tolerance, abs=tolerance)
        assert a["val"] == pytest.approx(b["val"], abs=1e-9)
    for key in ("val_best", "test", "test_last", "best_epoch"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], abs=1e-9), key
    assert one["teacher"]["metrics"] == pytest.approx(two["teacher"]["metrics"], abs=1e-9)


def assert_same_weights(one: Path, two: Path, tolerance: float = 1e-5) -> None:
    a, b = (torch.load(next(out.glob("*/student.pt")), weights_only=True) for out in (one, two))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), rtol=tolerance, atol=tolerance), name


@pytest.fixture(scope="module")
def linear_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp-linear")
    assert in_process(*LINEAR, "--out", str(root / "one")) == 0
    done = torchrun(*LINEAR, "--out", str(root / "two"))
    assert done.returncode == 0, done.stdout + done.stderr
    return {"one": root / "one", "two": root / "two", "stdout": done.stdout}


def test_two_processes_reproduce_one_process_loss_trajectory_metrics_and_weights(linear_runs) -> None:
    one, two = the_record(linear_runs["one"]), the_record(linear_runs["two"])
    assert_same_training(one, two)
    assert_same_weights(linear_runs["one"], linear_runs["two"])
    assert one["distributed"] == {"world_size": 1, "backend": None, "sync_bn": False}
    assert two["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": False}


def test_crd_gathers_its_memory_banks_and_negatives_so_two_processes_match_one(tmp_path) -> None:
    args = [*LINEAR, "--method", "crd", "--set", "nce_k=20"]
    assert in_process(*args, "--out", str(tmp_path / "one")) == 0
    done = torchrun(*args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stdout + done.stderr
    # epoch 2's NCE loss reads the banks epoch 1 wrote: equal only if every rank's bank saw the whole batch
    assert_same_training(the_record(tmp_path / "one"), the_record(tmp_path / "two"))
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_only_rank_0_writes_and_prints(linear_runs) -> None:
    out = linear_runs["two"]
    (run_dir,) = [p for p in out.iterdir() if p.name != "teachers"]
    assert sorted(p.name for p in run_dir.iterdir()) == [".run.lock", "history.csv", "result.json", "student.pt", "student.pt.sha256"]
    lines = (run_dir / "history.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 + 2  # header, the teacher's 2 epochs, the student's 2: no rank writes twice
    assert not list(out.rglob("*.tmp-*")) and not list(out.rglob("checkpoint.pt"))
    assert linear_runs["stdout"].count("kd on mfh-gauss") == 1  # the summary line, once


@pytest.mark.parametrize("method", ["kd", "fitnet"])  # fitnet: its regressor's BatchNorm is the method's own
def test_sync_batchnorm_over_two_processes_matches_batchnorm_over_the_whole_batch(tmp_path, method) -> None:
    args = [*CNN[:1], method, *CNN[2:]]
    assert in_process(*args, "--out", str(tmp_path / "one")) == 0
    done = torchrun(*args, "--sync-bn", "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = the_record(tmp_path / "one"), the_record(tmp_path / "two")
    assert two["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": True}
    assert_same_training(one, two, tolerance=1e-4)
    assert_same_weights(tmp_path / "one", tmp_path / "two", tolerance=1e-4)  # BN running statistics included


def test_a_killed_two_process_run_resumes_on_one_process_to_the_uninterrupted_result(tmp_path, linear_runs) -> None:
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    marker = tmp_path / "kill"
    marker.touch()
    args = [*LINEAR, "--method", "kill-once-kd", "--out", str(tmp_path / "runs"), "--plugin", str(plugin)]
    killed = torchrun(*args, env={"KILL_MARKER": str(marker)})
    assert killed.returncode != 0 and not marker.exists()
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "teachers"]
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    os.environ["KILL_MARKER"] = str(marker)  # (gone: the resumed run is not killed)
    try:
        assert in_process(*args) == 0  # another world size, the same global batch
    finally:
        del os.environ["KILL_MARKER"]
    resumed, reference = the_record(tmp_path / "runs"), the_record(linear_runs["one"])
    assert resumed["resumed_from_epoch"] == 1
    for a, b in zip(resumed["history"], reference["history"], strict=True):
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=1e-6)
    assert resumed["metrics"] == pytest.approx(reference["metrics"], abs=1e-9)


def test_a_world_size_that_does_not_divide_the_batch_is_one_line_from_rank_0_and_exit_2(tmp_path) -> None:
    done = torchrun(*LINEAR, "--batch-size", "33", "--out", str(tmp_path / "runs"))
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: torchrun world size 2 does not divide the training batch of 33 samples (--batch-size 33); "
                    "use a batch size that is a multiple of 2 or --nproc-per-node that divides 33"]
    assert "exitcode  : 2" in done.stderr  # each rank exits 2 (torchrun then reports it and exits 1)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_parts_of_a_batch_are_contiguous_cover_it_once_and_gather_restores_its_order() -> None:
    index = torch.arange(10)
    parts = [distributed.shard(index, (rank, 3)) for rank in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert distributed.shard(index, (0, 1)) is index
