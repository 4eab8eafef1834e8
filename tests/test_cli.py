"""The command line as a user meets it: runs, tables, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_SYNTH, cli


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_run_then_leaderboard_end_to_end(tmp_path):
    out = tmp_path / "runs"
    for method in ("no-kd", "kd", "fd-cmkd"):
        result = cli("run", "--method", method, "--dataset", "synth-av", "--epochs", "2", "--out", str(out),
                     "--device", "cpu", *TINY_SYNTH)
        assert result.returncode == 0, result.stderr
        assert "epoch   2/2" in result.stdout and "test top1" in result.stdout
    records = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    assert sorted(r["method"] for r in records) == ["fd", "kd", "no-kd"]  # the alias resolves to fd
    table = cli("leaderboard", str(out), "--format", "md")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ")]
    labels = [row.split("|")[1].strip().strip("*") for row in rows[1:]]
    assert labels[0] == "teacher (visual, small-cnn)" and labels[1] == "no-kd" and set(labels[2:]) == {"kd", "fd"}
    csv_file = tmp_path / "table.csv"
    assert cli("leaderboard", str(out), "--format", "csv", "--output", str(csv_file)).returncode == 0
    assert csv_file.read_text().startswith("dataset,")


def test_second_run_reports_the_existing_record(tmp_path):
    args = ("run", "--method", "no-kd", "--dataset", "synth-av", "--epochs", "1", "--out", str(tmp_path), *TINY_SYNTH)
    assert cli(*args).returncode == 0
    again = cli(*args)
    assert again.returncode == 0 and "already completed" in again.stdout and "  epoch " not in again.stdout


def test_both_entry_points_exist():
    import subprocess
    import sys
    from pathlib import Path

    assert cli("--help").returncode == 0
    exe = Path(sys.executable).with_name("cmkd-bench")
    assert exe.exists(), "the console script is installed beside the interpreter"
    assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.startswith("cmkd-bench")


def test_list_shows_hparams_and_aliases():
    result = cli("list", "methods")
    assert result.returncode == 0
    assert "fd-cmkd" in result.stdout  # aliases in the one-line listing
    detail = cli("list", "methods", "kd")  # hyper-parameters and search space in the full entry
    assert detail.returncode == 0
    from cmkd_bench.catalog import METHODS, load_all
    load_all()
    alphas = ",".join(str(value) for value in METHODS.get("kd").meta["search_space"]["alpha"])
    assert f"alpha={alphas}" in detail.stdout.replace("\n", "")  # the space the tuner searches, as declared


def test_list_is_one_line_per_entry_and_never_splits_words(tmp_path):
    from cmkd_bench.catalog import BACKBONES, DATASETS, METHODS, load_all

    load_all()
    result = cli("list", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert len(lines) < len(list(METHODS)) + len(list(DATASETS)) + 30
    from cmkd_bench.models.fusion import FUSIONS

    text = " ".join([entry.description for entry in [*METHODS, *DATASETS, *BACKBONES]] +
                    [fusion.description for fusion in FUSIONS.values()])
    assert all(any(line.startswith(f"  {name} ") for line in lines) for name in FUSIONS)  # the teacher fusions
    words = {word.strip(",;:()") for word in text.split()}
    for line in lines:  # every shortened description ends on a whole word and '…'
        if line.endswith("…"):
            assert line[:-1].split()[-1].strip(",;:()") in words, line
    detail = cli("list", "datasets", "synth-av", env={"COLUMNS": "80"})
    assert detail.returncode == 0, detail.stderr
    for fragment in ("modalities", "visual: 3x24x24, small-cnn", "default direction: visual (teacher) → audio",
                     "recipe: epochs=12", "recipe from: chosen for synth-av", "files: none"):
        assert fragment in detail.stdout, (fragment, detail.stdout)
    assert all(len(line) <= 80 for line in detail.stdout.splitlines())
    assert "steps: 31 per epoch (2,000 train samples; batch 64), 372 in 12 epochs" in detail.stdout  # 2000 // 64
    method = cli("list", "methods", "fd", env={"COLUMNS": "80"})
    assert "reference: Liu et al." in method.stdout and "search space (cmkd-bench tune):" in method.stdout
    mst = cli("list", "methods", "mst", env={"COLUMNS": "80"})
    assert "teacher: needs a multimodal teacher (--teacher-modality a+b)" in mst.stdout
    assert_one_line_error(cli("list", "methods", "kdd"), "unknown method 'kdd'")


def test_a_real_dataset_shows_each_protocols_inputs_backbones_recipe_and_cost_without_data(tmp_path):
    from cmkd_bench.datasets.crema_d import SPLIT_ROWS

    result = cli("list", "datasets", "crema-d", cwd=tmp_path, env={"COLUMNS": "200"})  # no --data-root
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    for protocol, audio in (("fd-cmkd (default)", "1x257x299"), ("c2kd", "1x257x188"), ("ogm-ge", "1x257x188")):
        at = lines.index(f"{protocol}:")
        assert lines[at + 1].startswith("reproduces: ")
        assert lines[at + 3].startswith(f"visual: 3x224x224, resnet18") and lines[at + 4].startswith(f"audio: {audio}, resnet18")
        # resnet18 with a 1-channel stem and 6 classes: 11,173,318 parameters; with 3 channels, 11,179,590
        assert lines[at + 5] == (f"cost: teacher resnet18 on {audio}: 11.2 M parameters; student resnet18 on "
                                 f"3x224x224: 11.2 M parameters")
        steps = (SPLIT_ROWS["train"] - round(SPLIT_ROWS["train"] * 0.1)) // 64  # val_fraction 0.1 held out, batch 64
        assert lines[at + 6] == (f"steps: about {steps} per epoch (the published split's 6,698 train clips less 10% "
                                 f"held out for val; batch 64), about {steps * 100:,} in 100 epochs")
    assert "recipe: epochs=100, batch_size=64, lr=0.01, optimizer='sgd', momentum=0.9, weight_decay=0.0001, " \
           "schedule='poly', warmup_epochs=0" in lines
    assert "default direction: audio (teacher) → visual (student); --teacher-modality / --student-modality change it" \
        in lines and "classes: 6" in lines
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written


@pytest.mark.parametrize("args, fragments", [
    (("run", "--method", "fitnetz", "--dataset", "synth-av"), ("unknown method 'fitnetz'", "did you mean 'fitnet'")),
    (("run", "--method", "kd", "--dataset", "synth-avv"), ("unknown dataset 'synth-avv'", "'synth-av'")),
    (("run", "--method", "kd", "--dataset", "synth-av", "--student", "resnet181"), ("unknown backbone 'resnet181'", "resnet18")),
    (("run", "--method", "kd", "--dataset", "synth-av", "--set", "T=hot"), ("T expects a number",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--set", "temperature=2"), ("no such setting",)),
    (("run", "--method", "fd", "--dataset", "synth-av", "--set", "w_lo=2"),
     ("--set w_lo: no such setting for method 'fd'", "did you mean 'w_low'? settings are ")),
    (("run", "--method", "fd", "--dataset", "synth-av", "--set", "method.w_hi=2"), ("did you mean 'w_high'?",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--set", "T"), ("not KEY=VALUE",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--epochs", "0"), ("epochs must be at least 1",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--student-modality", "smell"), ("no modality 'smell'",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--student-modality", "visual"), ("both 'visual'",)),
    (("run", "--method", "kd", "--dataset", "mfh-gauss", "--student", "resnet18"), ("needs image-like input",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--set", "T=-1"), ("cannot be built",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--teacher-checkpoint", "nope.pt"), ("does not exist",)),
    (("run", "--method", "kd", "--dataset", "paired-npz"), ("needs --data-root",)),
    (("run", "--method", "kd", "--dataset", "paired-npz", "--data-root", "missing.npz"), ("does not exist",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--device", "tpu"), ("unknown device",)),
    (("run", "--method", "kd", "--dataset", "synth-av", "--plugin", "absent.py"), ("plugin file",)),
    (("run", "--methd", "kd"), ("No such option",)),
    (("leaderboard", "no-such-dir"), ("no-such-dir",)),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, fragments):
    result = cli(*args, "--out", str(tmp_path / "out")) if args[0] == "run" and "--methd" not in args else cli(*args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_wrong_teacher_checkpoint_is_a_clear_error(tmp_path):
    import torch

    bogus = tmp_path / "bogus.pt"
    torch.save({"net.fc.weight": torch.zeros(3, 3)}, bogus)
    result = cli("run", "--method", "kd", "--dataset", "synth-av", "--epochs", "1", "--out", str(tmp_path / "o"),
                 "--teacher-checkpoint", str(bogus), *TINY_SYNTH)
    assert_one_line_error(result, "does not fit backbone 'small-cnn'")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    result = cli("run", "--method", "kd", "--dataset", "synth-av", "--epochs", "1", "--out", str(tmp_path / "o"),
                 "--teacher-checkpoint", str(garbage), *TINY_SYNTH)
    assert_one_line_error(result, "cannot be read")


def test_corrupt_npz_from_the_cli(tmp_path):
    broken = tmp_path / "broken.npz"
    np.savez(broken, a=np.zeros((4, 3)), b=np.zeros((5, 2)), label=np.arange(4))
    result = cli("run", "--method", "kd", "--dataset", "paired-npz", "--data-root", str(broken), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "array 'b' has 5 samples but 'label' has 4")
    assert not (tmp_path / "o").exists()


def test_mfh_recipe_is_expressible(tmp_path):
    result = cli("run", "--method", "kd", "--dataset", "mfh-gauss", "--set", "T=1", "--set", "overlap=10",
                 "--epochs", "20", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    record = json.loads(next(tmp_path.glob("kd-*/result.json")).read_text())
    recipe = record["config"]["recipe"]
    assert (recipe["batch_size"], recipe["lr"], recipe["momentum"], recipe["schedule"]) == (200, 0.1, 0.0, "constant")
    assert record["hparams"]["T"] == 1.0 and record["data_options"]["overlap"] == 10
    assert record["train_steps"] == 20  # full batch: one step per epoch
