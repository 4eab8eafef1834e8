"""Every stored file knows whose it is: a teacher, checkpoint or record made for another run, teacher
or code is never taken silently (issue: files were checked for damage, not for whose they are).

Each case copies a real file where a user or a script might (with its digest, so it passes the damage
check) and runs the same command again; before the identity checks each was accepted with exit 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmkd_bench.artefacts.files import digest_file
from cmkd_bench.artefacts.provenance import code_digest

from conftest import TINY_SYNTH, cli
from test_reliability import RUN, assert_one_line, record, reference, run_cli, stop_after_first_epoch  # noqa: F401

EPOCHS = ("--epochs", "2")


def copy_saved(source: Path, target: Path) -> None:
    """A torch file and its digest, as `cp teacher.pt* elsewhere/` copies them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    shutil.copy(digest_file(source), digest_file(target))


def test_a_teacher_copied_in_from_another_teacher_folder_is_not_reused(tmp_path, capsys, reference):
    out = tmp_path / "runs"
    assert run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))[0] == 0
    assert run_cli(capsys, *RUN, *EPOCHS, "--seed", "1", "--out", str(out))[0] == 0  # another teacher (seed 1)
    mine = out / "teachers" / reference["teacher"]["key"]
    (other,) = [folder for folder in (out / "teachers").iterdir() if folder != mine]
    copy_saved(other / "teacher.pt", mine / "teacher.pt")
    code, stdout, _ = run_cli(capsys, *RUN, *EPOCHS, "--out", str(out), "--force")
    assert code == 0
    assert "teacher.pt is not the weights teacher.json was written with" in stdout and "training it again" in stdout
    again = json.loads((out / reference["run_id"] / "result.json").read_text())
    assert again["metrics"] == reference["metrics"] and again["teacher"]["metrics"] == reference["teacher"]["metrics"]
    # the record names the weights it distilled from: those its teacher.json was written with, and the file's
    teacher_json = json.loads((mine / "teacher.json").read_text())
    assert again["teacher"]["weights_sha256"] == teacher_json["weights_sha256"] == reference["teacher"]["weights_sha256"]
    assert len(again["teacher"]["weights_sha256"]) == 64
    other_json = json.loads((other / "teacher.json").read_text())
    assert other_json["weights_sha256"] != again["teacher"]["weights_sha256"]


def test_a_checkpoint_of_another_configuration_is_refused_not_resumed(tmp_path, capsys, reference, monkeypatch):
    out = tmp_path / "runs"
    stop_after_first_epoch(monkeypatch)
    assert run_cli(capsys, *RUN, *EPOCHS, "--set", "T=8", "--out", str(out))[0] == 130  # kd at T=8, killed
    monkeypatch.undo()
    (other,) = out.glob("kd-*/checkpoint.pt")
    mine = out / reference["run_id"] / "checkpoint.pt"
    copy_saved(other, mine)  # into the default kd run's folder
    code, _, err = run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))
    line = assert_one_line(code, err, str(mine), f"run_id {other.parent.name}", f"not of run_id {reference['run_id']}",
                           "--force")
    assert "resumed" not in line and not (mine.parent / "result.json").exists()


def test_another_runs_record_in_the_folder_is_not_taken_as_this_runs(tmp_path, capsys, reference):
    out = tmp_path / "runs"
    assert run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))[0] == 0
    fd = ("run", "--method", "fd", *RUN[3:])
    assert run_cli(capsys, *fd, *EPOCHS, "--out", str(out))[0] == 0
    (fd_record,) = out.glob("fd-*/result.json")
    shutil.copy(fd_record, out / reference["run_id"] / "result.json")
    code, stdout, _ = run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))
    assert code == 0 and f"is the record of run '{fd_record.parent.name}', not of {reference['run_id']}" in stdout
    assert "already completed" not in stdout
    again = record(out)
    assert again["method"] == "kd" and again["metrics"] == reference["metrics"]


def test_a_damaged_record_is_run_again_with_a_line_saying_so(tmp_path, capsys, reference):
    out = tmp_path / "runs"
    assert run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))[0] == 0
    (out / reference["run_id"] / "result.json").write_text('{"run_id": ')
    code, stdout, _ = run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))
    assert code == 0 and "cannot be read back as a run record (damaged); running it again" in stdout
    assert record(out)["metrics"] == reference["metrics"]


def test_the_epochs_history_row_is_on_disk_before_the_checkpoint_that_claims_it(tmp_path, capsys, reference,
                                                                                monkeypatch):
    """A kill right after the checkpoint of epoch 1 left no row for epoch 1, and the resumed run never wrote it."""
    out = tmp_path / "runs"
    stop_after_first_epoch(monkeypatch)  # stops right after the student's first checkpoint is written
    assert run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))[0] == 130
    monkeypatch.undo()
    assert run_cli(capsys, *RUN, *EPOCHS, "--out", str(out))[0] == 0
    import csv

    rows = list(csv.DictReader(open(out / reference["run_id"] / "history.csv", encoding="utf-8")))
    assert [(r["phase"], r["epoch"]) for r in rows] == [("teacher", "1"), ("teacher", "2"),
                                                          ("student", "1"), ("student", "2")]


def test_a_history_csv_that_is_not_utf8_is_rewritten_not_a_traceback(tmp_path, capsys, reference):
    run_dir = tmp_path / "runs" / reference["run_id"]
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_bytes(b"phase,epoch\n\xff\xfe\x00garbage\n")
    code, _, err = run_cli(capsys, *RUN, *EPOCHS, "--out", str(tmp_path / "runs"))
    assert code == 0 and "Traceback" not in err
    assert record(tmp_path / "runs")["metrics"] == reference["metrics"]


# -- the method's code is part of what makes a run the same run ----------------------------------------
PLUGIN = '''
"""A plug-in kd whose loss a user edits between two runs."""
from cmkd_bench.methods.kd import KD
from cmkd_bench.registry import METHODS


@METHODS.register("edited-kd", tasks=("classification",), description="kd, scaled (tests)")
class EditedKD(KD):
    def forward(self, student, teacher, batch):
        losses = super().forward(student, teacher, batch)
        return {**losses, "kd": SCALE * losses["kd"]}
'''


def test_editing_a_plugin_method_reruns_it_and_a_docstring_edit_does_not(tmp_path):
    plugin = tmp_path / "edited_kd.py"
    plugin.write_text(PLUGIN.replace("SCALE", "1.0"))
    command = ("run", "--plugin", str(plugin), "--method", "edited-kd", "--dataset", "synth-av", "--device", "cpu",
               "--quiet", "--epochs", "2", *TINY_SYNTH, "--out", str(tmp_path / "runs"))
    first = cli(*command)
    assert first.returncode == 0, first.stderr
    before = record_of(tmp_path / "runs")
    plugin.write_text(PLUGIN.replace("SCALE", "5.0"))  # the loss changed
    second = cli(*command)
    assert second.returncode == 0, second.stderr
    assert "was made by other code of method 'edited-kd' (the code in edited_kd.py, methods/kd.py has digest" \
        in second.stdout
    assert "running it again" in second.stdout and "already completed" not in second.stdout
    after = record_of(tmp_path / "runs")
    assert after["run_id"] == before["run_id"] and after["code"] != before["code"]
    assert after["history"][0]["losses"]["kd"] != before["history"][0]["losses"]["kd"]
    plugin.write_text(PLUGIN.replace("SCALE", "5.0").replace("whose loss a user edits", "edited again, words only"))
    third = cli(*command)
    assert third.returncode == 0 and "already completed" in third.stdout


def record_of(runs: Path) -> dict:
    import json

    (path,) = runs.glob("edited-kd-*/result.json")
    return json.loads(path.read_text())


def test_the_code_digest_reads_code_not_its_text(tmp_path, monkeypatch):
    import importlib.util

    def digest(source: str) -> str:
        path = tmp_path / "probe_method.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"probe_{abs(hash(source))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return code_digest(module.Probe)["digest"]

    base = 'import math\n\n\nclass Probe:\n    """Doc."""\n\n    def f(self, x):\n        return 2 * x  # two\n'
    assert digest(base) == digest(base.replace('"""Doc."""', '"""Other words."""').replace("# two", "# 2"))
    assert digest(base) == digest(base.replace("import math", "import math as m"))
    assert digest(base) != digest(base.replace("2 * x", "3 * x"))


@pytest.mark.parametrize("name", ["kd", "fd", "fd-no-freq"])
def test_built_in_methods_name_their_file(name):
    from cmkd_bench.registry import METHODS

    code = code_digest(METHODS.get(name).implementation)
    assert code["files"] == [f"methods/{'kd' if name == 'kd' else 'fd'}.py"] and len(code["digest"]) == 16


def test_records_made_by_other_code_of_a_built_in_method_are_marked_stale_in_tables(reference):
    """A built-in's code change marks its earlier records (the leaderboard's §, `--rerun-stale`) instead
    of rerunning the leaderboard; a docstring edit leaves the digest, so nothing is marked."""
    from cmkd_bench.reporting.leaderboard.summary import stale_runs

    current = dict(reference)
    older = {**reference, "run_id": "kd-older", "code": {"method": {"files": ["methods/kd.py"], "digest": "0" * 16}}}
    legacy = {key: value for key, value in reference.items() if key != "code"} | {"run_id": "kd-legacy"}
    stale = stale_runs([current, older, legacy])
    assert stale == {"kd-older": [f"method code {'0' * 16}, now {reference['code']['method']['digest']}"]}


SHADOW = '''
from cmkd_bench.methods.no_kd import NoKD
from cmkd_bench.registry import METHODS


@METHODS.register("kd", tasks=("classification",), description="not kd"REPLACE)
class NotKD(NoKD):
    pass
'''


def test_a_plugin_cannot_take_a_built_in_name_unless_it_says_so_and_then_its_run_id_differs(tmp_path):
    """A plug-in registering `kd` replaced the built-in silently, under the built-in's run ids."""
    plugin = tmp_path / "shadow.py"
    plugin.write_text(SHADOW.replace("REPLACE", ""))
    command = ("run", "--plugin", str(plugin), "--method", "kd", "--dataset", "synth-av", *TINY_SYNTH, "--dry-run")
    refused = cli(*command)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1
    assert "method name 'kd' is already registered (by cmkd_bench.methods.kd)" in lines[0] and "replace=True" in lines[0]
    plugin.write_text(SHADOW.replace("REPLACE", ", replace=True"))
    replaced, builtin = cli(*command), cli(*command[:1], *command[3:])
    assert replaced.returncode == 0 and builtin.returncode == 0, replaced.stderr + builtin.stderr
    run_id = lambda text: next(line.split()[-1] for line in text.splitlines() if "kd-synth-av" in line)  # noqa: E731
    assert "replacement_code: null" in builtin.stdout and "replacement_code: null" not in replaced.stdout
    assert run_id(replaced.stdout) != run_id(builtin.stdout)


@pytest.mark.parametrize("setting", ["T=1e308", "alpha=1e30"])
def test_a_setting_whose_arithmetic_overflows_is_one_line_before_anything_is_written(tmp_path, capsys, setting):
    code, _, err = run_cli(capsys, *RUN, "--set", setting, "--out", str(tmp_path / "runs"))
    assert_one_line(code, err, "is too large for the arithmetic a run does")
    assert not (tmp_path / "runs").exists()
