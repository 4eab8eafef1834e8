"""Each bad input of issue 16 through the CLI (in this process, through `main`): exit 2, one line on
stderr naming the problem, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmkd_bench.cli import main

from conftest import TINY_SYNTH

RUN = ("run", "--method", "kd", "--dataset", "synth-av", "--device", "cpu", "--epochs", "1", *TINY_SYNTH)


def refused(capsys, tmp_path: Path, args: list[str], *fragments: str) -> str:
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert sorted(tmp_path.rglob("*")) == before, "something was written"
    return lines[0]


@pytest.mark.parametrize("seed", ["18446744073709551617", "4611686018427387905", "4294967296", "-1"])
def test_a_seed_out_of_range(capsys, tmp_path, seed):
    refused(capsys, tmp_path, [*RUN, "--seed", seed, "--out", str(tmp_path / "r")], "seed", "out of range")


@pytest.mark.parametrize("setting", ["T=nan", "lr=inf", "recipe.lr=-inf"])
def test_a_nan_or_infinite_setting(capsys, tmp_path, setting):
    refused(capsys, tmp_path, [*RUN, "--set", setting, "--out", str(tmp_path / "r")], "not a finite number")


def test_an_infinite_lr_option(capsys, tmp_path):
    refused(capsys, tmp_path, [*RUN, "--lr", "inf", "--out", str(tmp_path / "r")], "lr", "not a finite number")


@pytest.mark.parametrize("option", ["--out", "--teacher-cache"])
def test_a_file_where_a_folder_goes_in_run(capsys, tmp_path, option):
    (tmp_path / "afile").write_text("x")
    extra = [] if option == "--out" else ["--out", str(tmp_path / "r")]
    refused(capsys, tmp_path, [*RUN, *extra, option, str(tmp_path / "afile")], option, "is a file")


def test_prepare_dst_a_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "src").mkdir()
    refused(capsys, tmp_path, ["prepare", "crema-d", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "afile")],
            "--dst", "is a file")


@pytest.mark.parametrize("command", [["plot", "bars"], ["plot", "heatmap", "--x", "T", "--y", "w"]])
def test_plot_output_dir_a_file(capsys, tmp_path, command):
    (tmp_path / "afile").write_text("x")
    refused(capsys, tmp_path, [*command, str(tmp_path), "--output-dir", str(tmp_path / "afile")],
            "--output-dir", "is a file")


def npz(tmp_path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    arrays.setdefault("label", np.array([0, 1] * 15))
    arrays.setdefault("a", rng.normal(size=(30, 4)))
    path = tmp_path / "pairs.npz"
    np.savez(path, **arrays)
    return path


def npz_run(path: Path, tmp_path: Path) -> list[str]:
    return ["run", "--method", "kd", "--dataset", "paired-npz", "--data-root", str(path), "--epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "r")]


def test_paired_npz_given_an_npy(capsys, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((30, 4)))
    refused(capsys, tmp_path, npz_run(tmp_path / "a.npy", tmp_path), "is not an .npz file")


def test_paired_npz_an_array_named_index(capsys, tmp_path):
    path = npz(tmp_path, index=np.zeros((30, 4)))
    refused(capsys, tmp_path, npz_run(path, tmp_path), "'index'", "rename that array")


def test_paired_npz_class_ids_with_gaps(capsys, tmp_path):
    labels = np.array([0, 1] * 15)
    labels[0] = 100000
    path = npz(tmp_path, label=labels, b=np.zeros((30, 4)))
    refused(capsys, tmp_path, npz_run(path, tmp_path), "ids up to 100000", "0..C-1")


def test_paired_npz_an_array_without_values(capsys, tmp_path):
    path = npz(tmp_path, b=np.zeros((30, 0)))
    refused(capsys, tmp_path, npz_run(path, tmp_path), "'b'", "holds no values")


def test_paired_manifest_a_missing_file_before_training(capsys, tmp_path):
    for i in range(6):
        np.save(tmp_path / f"a{i}.npy", np.full(4, float(i)))
        np.save(tmp_path / f"b{i}.npy", np.full(4, float(i)))
    (tmp_path / "b5.npy").unlink()
    rows = [f"a{i}.npy,b{i}.npy,{i % 2},{['train', 'val', 'test'][i // 2]}" for i in range(6)]
    (tmp_path / "pairs.csv").write_text("a,b,label,split\n" + "\n".join(rows) + "\n")
    refused(capsys, tmp_path, ["run", "--method", "kd", "--dataset", "paired-manifest", "--data-root",
                               str(tmp_path / "pairs.csv"), "--epochs", "1", "--device", "cpu",
                               "--out", str(tmp_path / "r")], "line 7", "b5.npy", "does not exist")


def test_a_suite_file_that_is_not_utf8(capsys, tmp_path):
    (tmp_path / "s.yaml").write_bytes(b"methods: [kd]\ndatasets: [synth-av]\n# caf\xe9\n")
    refused(capsys, tmp_path, ["suite", str(tmp_path / "s.yaml"), "--dry-run"], "not UTF-8")


def test_a_suite_out_that_is_a_list(capsys, tmp_path):
    (tmp_path / "s.yaml").write_text("methods: [kd]\ndatasets: [synth-av]\nout: [a, b]\n")
    refused(capsys, tmp_path, ["suite", str(tmp_path / "s.yaml"), "--dry-run"], "out must be a string")


def test_a_suite_lr_written_1e_3_is_a_number(capsys, tmp_path):
    (tmp_path / "s.yaml").write_text("methods: [kd]\ndatasets: [synth-av]\nlr: 1e-3\nepochs: 1\nseeds: [0]\n"
                                     "directions: default\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["suite", str(tmp_path / "s.yaml"), "--dry-run"])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["NaN", "1e9", "-5"])
def test_a_record_with_an_absurd_metric_is_not_tabled(capsys, tmp_path, value):
    from test_leaderboard import make_record

    record = make_record("kd", 0, 50.0, 49.0)
    record["metrics"]["test"] = float(value)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "result.json").write_text(json.dumps(record))  # NaN is written as JSON's NaN token
    refused(capsys, tmp_path, ["leaderboard", str(tmp_path)], "metrics.test", "not a percentage")


def test_an_unknown_method_in_a_published_csv(capsys, tmp_path):
    from cmkd_bench.reporting.leaderboard import DEFAULT_PUBLISHED

    text = Path(DEFAULT_PUBLISHED).read_text()
    header = next(line for line in text.splitlines() if line.startswith("method,"))
    row = next(line for line in text.splitlines() if line.startswith("kd,"))
    (tmp_path / "p.csv").write_text(header + "\n" + row.replace("kd,", "kdd,", 1) + "\n")
    refused(capsys, tmp_path, ["leaderboard", str(tmp_path), "--published", str(tmp_path / "p.csv")],
            "'kdd'", "not a method here")


def test_analyze_reads_a_copied_run_folders_own_weights(tmp_path):
    import shutil

    from cmkd_bench.reporting.analysis import run_features
    from cmkd_bench.training.runner import RunRequest, execute, resolve_run

    record = execute(resolve_run(RunRequest(method="kd", dataset="synth-av", epochs=1, device="cpu",
                                            out=str(tmp_path / "a"), sets=tuple(TINY_SYNTH[1::2]))))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in (tmp_path / "a").rglob("*.pt"):  # the original's weights, damaged: the copy must not read them
        path.write_bytes(b"damaged")
    features = run_features(tmp_path / "b" / record["run_id"], samples=8, device_name="cpu")
    assert features.teacher.shape[0] == features.student.shape[0] == 8
