"""Plug-ins through one mechanism for every command: `--plugin` before or after the command,
CMKD_BENCH_PLUGINS, a suite file's `plugins:` (relative to the file); they reach a suite's run
processes, and a plug-in method's run id does not depend on where its file lives."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import cli
from test_cli import assert_one_line_error

PLUGIN = '''
from cmkd_bench.methods.kd import KD
from cmkd_bench.registry import METHODS


@METHODS.register("{name}", tasks=("classification",), description="kd at half weight (a plug-in, tests)")
class HalfKD(KD):
    def forward(self, student, teacher, batch):
        return {{key: 0.5 * value for key, value in super().forward(student, teacher, batch).items()}}
'''
TINY = ("--set", "train=32", "--set", "val=16", "--set", "test=16")
HINT = "(a plug-in's method needs --plugin FILE.py or CMKD_BENCH_PLUGINS=FILE.py)"


def plugin_file(folder: Path, name: str = "half-kd", file_name: str = "half.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(PLUGIN.format(name=name))
    return path


def test_plugin_before_the_command_works_for_every_command(tmp_path) -> None:
    plugin = plugin_file(tmp_path)
    listed = cli("--plugin", str(plugin), "list", "methods", "half-kd")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == "half-kd" and "kd at half weight" in listed.stdout
    dry = cli("--plugin", str(plugin), "run", "--method", "half-kd", "--dataset", "mfh-gauss", "--dry-run")
    assert dry.returncode == 0 and "run id: half-kd-mfh-gauss-" in dry.stdout, dry.stderr


def test_an_unknown_name_says_how_to_load_a_plugin(tmp_path) -> None:
    assert_one_line_error(cli("list", "methods", "kdd"), "unknown method 'kdd'; did you mean 'kd' or", HINT)
    assert_one_line_error(cli("run", "--method", "my-own", "--dataset", "mfh-gauss"),
                          "unknown method 'my-own'; see `cmkd-bench list methods` " + HINT)


def test_the_environment_variable_loads_plugins_for_every_command(tmp_path) -> None:
    first, second = plugin_file(tmp_path / "a"), plugin_file(tmp_path / "b", "other-kd", "other.py")
    env = {"CMKD_BENCH_PLUGINS": os.pathsep.join([str(first), str(second)])}
    listed = cli("list", "methods", env=env)
    assert listed.returncode == 0 and "half-kd" in listed.stdout and "other-kd" in listed.stdout, listed.stderr
    # the same file named again with --plugin is loaded once (a second import would register the name twice)
    again = cli("--plugin", str(first), "list", "methods", "--plugin", str(first), env=env)
    assert again.returncode == 0, again.stderr
    missing = cli("list", env={"CMKD_BENCH_PLUGINS": str(tmp_path / "gone.py")})
    assert_one_line_error(missing, f"plugin file {str(tmp_path / 'gone.py')!r} (in CMKD_BENCH_PLUGINS) does not exist")


def suite_run(out: Path) -> tuple[str, dict]:
    (record_file,) = out.glob("half-kd-*/result.json")
    return record_file.parent.name, json.loads(record_file.read_text())


@pytest.mark.parametrize("how", ["suite file", "environment", "before the command"])
def test_a_suite_hands_its_plugins_to_its_run_processes(tmp_path, how) -> None:
    """A plug-in method on mfh-gauss at 1 epoch, its file named three ways, from another folder than
    the file's: every run completes in its own process, with the same run id."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    grid = ["--seeds", "0", "--directions", "default", "--epochs", "1", "--device", "cpu", *TINY]
    if how == "suite file":  # plugins: and out: relative to the file, not to where the command runs
        plugin_file(project / "plugins")
        (project / "suites").mkdir(parents=True)
        (project / "suites" / "s.yaml").write_text(
            "datasets: [mfh-gauss]\nmethods: [half-kd]\nplugins: [../plugins/half.py]\nout: ../runs\n")
        result = cli("suite", "../project/suites/s.yaml", *grid, cwd=elsewhere)
        out = project / "runs"
    elif how == "environment":
        plugin = plugin_file(tmp_path / "somewhere" / "else")
        out = elsewhere / "runs"
        result = cli("suite", "--methods", "half-kd", "--datasets", "mfh-gauss", *grid, "--out", "runs",
                     cwd=elsewhere, env={"CMKD_BENCH_PLUGINS": str(plugin)})
    else:
        plugin_file(elsewhere / "mine")
        out = elsewhere / "runs"
        result = cli("--plugin", "mine/half.py", "suite", "--methods", "half-kd", "--datasets", "mfh-gauss", *grid,
                     "--out", "runs", cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id, record = suite_run(out)
    assert record["status"] == "completed" and record["method"] == "half-kd"
    header = (out / run_id / "run.log").read_text().splitlines()[0]
    assert "--plugin /" in header  # the run's process was handed the file, by an absolute path
    expected = cli("--plugin", str(plugin_file(tmp_path / "reference")), "run", "--method", "half-kd",
                   "--dataset", "mfh-gauss", "--epochs", "1", *TINY, "--dry-run")
    assert f"run id: {run_id}" in expected.stdout  # wherever the plug-in file lives
    shutil.rmtree(out)
