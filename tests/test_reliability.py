"""Fault injection: damaged checkpoints and cached teachers, a full disk, kills between two writes.

Each test damages or interrupts a real run of `cmkd-bench run` (in this process, through the CLI's
`main`, so exit codes and stderr are the user's) and checks the promise in docs/reliability.md:
a damaged file is never used (one line naming it and the command that rebuilds it, and that command
works), a write the OS refuses is one line with nothing half-written, and a rerun cleans what a
killed process left.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cmkd_bench.artefacts.files as files
from cmkd_bench.artefacts.files import (TEMPORARY_GLOB, atomic_save, check_digest, digest_file, file_sha256,
                                        load_checked)
from cmkd_bench.cli import main
from cmkd_bench.errors import UserError

from conftest import TINY_SYNTH

RUN = ("run", "--method", "kd", "--dataset", "synth-av", "--device", "cpu", "--quiet", *TINY_SYNTH)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`cmkd-bench ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def assert_one_line(code: int, err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def record(out: Path) -> dict:
    return json.loads(next(out.glob("kd-*/result.json")).read_text())


def flip(path: Path, offset_from_end: int = 4096, count: int = 2048) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) - offset_from_end)
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """A clean 2-epoch run: the numbers every recovered run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.raises(SystemExit) as exit_:
        main([*RUN, "--epochs", "2", "--out", str(out)])
    assert exit_.value.code == 0
    return record(out)


# -- the digest mechanism ------------------------------------------------------------------------------
def test_every_saved_torch_file_has_its_sha256_beside_it_and_is_checked(tmp_path):
    path = tmp_path / "w.pt"
    atomic_save({"a": torch.arange(4.0)}, path)
    assert digest_file(path).read_text() == f"{file_sha256(path)}  w.pt\n"  # sha256sum -c reads it
    assert torch.equal(load_checked(path, "weights", "redo")["a"], torch.arange(4.0))
    flip(path, 64, 8)
    with pytest.raises(UserError, match=r"'.*w\.pt' is damaged: its content does not match .*; redo$"):
        load_checked(path, "weights", "redo")
    digest_file(path).unlink()
    with pytest.raises(UserError, match="has no content hash"):
        check_digest(path, "weights", "redo")


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_kill_between_the_file_and_its_digest_leaves_a_file_that_checks(tmp_path, monkeypatch, killed_at):
    """A save is three writes (digest listing old and new, the file, digest listing the new); a kill after
    the first or second leaves the old or the new file, and either checks."""
    path = tmp_path / "c.pt"
    atomic_save({"epoch": 0}, path)
    writes = []
    real = files.write_bytes

    def dies_after(data: bytes, target: Path) -> None:
        if len(writes) == killed_at:
            raise KeyboardInterrupt  # a kill: nothing after this write happens
        writes.append(target)
        real(data, target)

    monkeypatch.setattr(files, "write_bytes", dies_after)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 1}, path)
    monkeypatch.setattr(files, "write_bytes", real)
    assert load_checked(path, "checkpoint", "redo")["epoch"] == (0 if killed_at == 1 else 1)
    assert not list(tmp_path.glob(TEMPORARY_GLOB))


# -- damaged files are refused, and the rebuild command works ----------------------------------------
def test_a_garbled_cached_teacher_is_refused_and_rebuild_teacher_rebuilds_it(tmp_path, capsys, reference):
    out = tmp_path / "runs"
    assert run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out), "--set", "T=2")[0] == 0
    weights = next(out.glob("teachers/*/teacher.pt"))
    flip(weights)
    code, _, err = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))
    line = assert_one_line(code, err, "cached teacher", str(weights), "is damaged", "--rebuild-teacher")
    assert not (out / reference["run_id"]).exists()  # nothing trained, nothing written
    code, _, err = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out), "--rebuild-teacher")
    assert code == 0, err + line
    rebuilt = json.loads((out / reference["run_id"] / "result.json").read_text())
    assert rebuilt["metrics"] == reference["metrics"] and rebuilt["teacher"]["metrics"] == reference["teacher"]["metrics"]
    check_digest(weights, "cached teacher", "")  # the rebuilt file checks


def test_a_garbled_run_checkpoint_is_refused_and_force_starts_over(tmp_path, capsys, reference, monkeypatch):
    out = tmp_path / "runs"
    stop_after_first_epoch(monkeypatch)
    assert run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))[0] == 130
    monkeypatch.undo()
    checkpoint = out / reference["run_id"] / "checkpoint.pt"
    flip(checkpoint)
    code, _, err = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))
    assert_one_line(code, err, "checkpoint", str(checkpoint), "is damaged", "--force")
    assert not (out / reference["run_id"] / "result.json").exists()
    assert run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out), "--force")[0] == 0
    assert record(out)["metrics"] == reference["metrics"]


def test_a_checkpoint_of_another_structure_is_one_line(tmp_path, capsys, reference):
    run_dir = tmp_path / "runs" / reference["run_id"]
    from cmkd_bench.artefacts.provenance import code_digest
    from cmkd_bench.registry import METHODS

    identity = {"run_id": reference["run_id"], "method_code": code_digest(METHODS.get("kd").implementation)["digest"]}
    # a valid torch file, with its digest and this run's identity, and not a training state
    atomic_save({"epoch": 0, "weights": torch.zeros(2), "identity": identity}, run_dir / "checkpoint.pt")
    code, _, err = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(tmp_path / "runs"))
    assert_one_line(code, err, "does not hold this run's training state", "'models'", "--force")
    atomic_save({"epoch": 0, "weights": torch.zeros(2)}, run_dir / "checkpoint.pt")  # and one that names no run
    code, _, err = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(tmp_path / "runs"))
    assert_one_line(code, err, "names no run", "--force")


def test_a_truncated_teacher_training_checkpoint_names_rebuild_teacher_which_removes_it(tmp_path, capsys, reference,
                                                                                     monkeypatch):
    out = tmp_path / "runs"
    stop_after_first_epoch(monkeypatch, "train_checkpoint.pt")  # the teacher's first epoch
    assert run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))[0] == 130
    monkeypatch.undo()
    partial = next(out.glob("teachers/*/train_checkpoint.pt"))
    partial.write_bytes(partial.read_bytes()[:1000])
    code, _, err = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))
    assert_one_line(code, err, str(partial), "--rebuild-teacher")
    assert run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out), "--rebuild-teacher")[0] == 0
    assert record(out)["metrics"] == reference["metrics"] and not partial.exists()


def stop_after_first_epoch(monkeypatch, name: str = "checkpoint.pt") -> None:
    """Interrupt (Ctrl-C) right after the first checkpoint named `name` a Fit writes (the student's by default)."""
    from cmkd_bench.training import engine

    real = engine.Fit._save

    def save_then_stop(self, epoch, *args):
        real(self, epoch, *args)
        if self.checkpoint is not None and self.checkpoint.name == name:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.Fit, "_save", save_then_stop)


# -- a full disk ------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_leaves_no_temporary_and_a_rerun_resumes(tmp_path, capsys, reference, monkeypatch):
    out = tmp_path / "runs"
    real = files.write_bytes
    seen = []

    def disk_fills(data: bytes, target: Path) -> None:
        if target.name.startswith("checkpoint.pt.tmp-"):
            seen.append(target)
            if len(seen) == 2:  # the student's second checkpoint: half of it lands, then the disk is full
                target.write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(data, target)

    monkeypatch.setattr(files, "write_bytes", disk_fills)
    code, _, err = run_cli(capsys, *RUN, "--epochs", "3", "--out", str(out))
    assert_one_line(code, err, "cannot write", "checkpoint.pt", "No space left on device", "ENOSPC", "run the same command")
    run_dir = out / reference["run_id"]
    assert not list(out.rglob(TEMPORARY_GLOB)) and not (run_dir / "result.json").exists()
    monkeypatch.setattr(files, "write_bytes", real)
    straight = tmp_path / "straight"
    assert run_cli(capsys, *RUN, "--epochs", "3", "--out", str(straight))[0] == 0
    assert run_cli(capsys, *RUN, "--epochs", "3", "--out", str(out))[0] == 0
    assert record(out)["resumed_from_epoch"] == 1 and record(out)["metrics"] == record(straight)["metrics"]


# -- what a killed process leaves, a rerun removes ------------------------------------------------------
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_rerun_removes_temporaries_of_dead_processes_and_a_completed_runs_checkpoint(tmp_path, capsys, reference):
    out = tmp_path / "runs"
    assert run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))[0] == 0
    run_dir, teacher = out / reference["run_id"], next(out.glob("teachers/*"))
    pid = dead_pid()
    debris = [run_dir / f"checkpoint.pt.tmp-{pid}", teacher / f"teacher.pt.tmp-{pid}",
              run_dir / "checkpoint.pt", teacher / "train_checkpoint.pt"]  # killed between the two writes of a step
    for path in debris[:2]:
        path.write_bytes(b"x" * 1000)
    atomic_save({"epoch": 1}, debris[2])
    atomic_save({"epoch": 1}, debris[3])
    live = run_dir / "result.json.tmp-1"  # pid 1 is alive: a write under way is never touched
    live.write_text("{}")
    code, stdout, _ = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out))
    assert code == 0 and "already completed" in stdout
    assert [p for p in debris if p.exists()] == [debris[1], debris[3]]  # the teacher was not needed: not swept
    assert not digest_file(debris[2]).exists() and live.exists()
    code, _, _ = run_cli(capsys, *RUN, "--epochs", "2", "--out", str(out), "--set", "T=3")  # needs the teacher
    assert code == 0 and not debris[1].exists() and not debris[3].exists()


# -- divergence: blame the right term, and the teacher's own -----------------------------------------------
TIED = '''
import torch
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


@METHODS.register("tied-nan-test", description="two terms NaN at the same step; 'big' was 1e6 times larger (tests)")
class TiedNaN(Method):
    def __init__(self, student, teacher, spec):
        super().__init__(student, teacher, spec)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, student, teacher, batch):
        self.calls += 1
        poison = torch.where(self.calls > 2, torch.tensor(float("nan")), torch.tensor(1.0))
        ce = self.task_loss(student.logits, batch["label"])
        return {"ce": ce * poison, "big": 1e6 * ce.detach() * poison + 0 * student.logits.sum()}
'''


def test_when_every_term_goes_non_finite_at_once_the_largest_before_is_blamed(tmp_path):
    from cmkd_bench.errors import RunFailed
    from cmkd_bench.registry import load_plugin_file
    from cmkd_bench.training.runner import RunRequest, execute, resolve_run

    (tmp_path / "tied.py").write_text(TIED)
    load_plugin_file(tmp_path / "tied.py")
    sets = tuple(TINY_SYNTH[1::2])
    prepared = resolve_run(RunRequest(method="tied-nan-test", dataset="synth-av", epochs=3, device="cpu",
                                      out=str(tmp_path / "runs"), sets=sets + ("batch_size=64",)))
    with pytest.raises(RunFailed, match=r"loss term 'big' became non-finite at epoch 3, step 1 \(with 'ce' at the "
                                         r"same step; blamed as the largest before"):
        execute(prepared)


def test_a_teacher_that_diverges_is_named_as_the_teacher(tmp_path):
    from cmkd_bench.errors import RunFailed
    from cmkd_bench.training.runner import RunRequest, execute, resolve_run

    prepared = resolve_run(RunRequest(method="kd", dataset="synth-av", epochs=2, device="cpu", lr=1e30,
                                      out=str(tmp_path / "runs"), sets=tuple(TINY_SYNTH[1::2])))
    with pytest.raises(RunFailed, match=r"^training the teacher \(visual .*\) failed: loss term 'ce' became non-finite"):
        execute(prepared)
    record = json.loads((prepared.run_dir / "result.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("training the teacher")


def test_a_run_completed_by_another_process_while_waiting_is_not_retrained(tmp_path, monkeypatch):
    """The completed-record check is repeated under the run lock: a process that checked before another
    finished the run (its lock delayed) returns that record instead of training and overwriting it."""
    from cmkd_bench.training import runner
    from cmkd_bench.training.runner import RunRequest, execute, resolve_run

    request = RunRequest(method="kd", dataset="synth-av", epochs=1, device="cpu", out=str(tmp_path),
                         sets=tuple(TINY_SYNTH[1::2]))
    first = execute(resolve_run(request))
    result = tmp_path / first["run_id"] / "result.json"
    before = result.read_bytes(), result.stat().st_mtime_ns
    real, calls = runner.existing_record, []

    def not_yet_then_real(prepared):  # the check before the lock ran before the other process finished
        calls.append(1)
        return None if len(calls) == 1 else real(prepared)

    monkeypatch.setattr(runner, "existing_record", not_yet_then_real)
    again = execute(resolve_run(request))
    assert again.get("skipped") and len(calls) == 2
    assert (result.read_bytes(), result.stat().st_mtime_ns) == before
