"""benchmarks/first_gpu.sh, the first GPU call's script: its bad input, its fallback install (a path
finder where pip cannot install the project editable) and, marked slow (about 4 minutes of CPU on 2
cores, more than CI allows), its small mode end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "first_gpu.sh"


def first_gpu(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, env, message", [
    (["--fast"], {}, "unknown argument '--fast'"),
    (["--small"], {"FIRST_GPU_BUDGET_S": "ten"}, "FIRST_GPU_BUDGET_S must be a whole number"),
    ([], {"FIRST_GPU_SMALL": "yes"}, "FIRST_GPU_SMALL must be 0 or 1"),
    (["--small"], {"PYTHON": "/nonexistent/python"}, "no python at '/nonexistent/python'"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, env, message):
    result = first_gpu(*args, env={"OUT": str(tmp_path), **env})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result
    assert not (tmp_path / "first-gpu.log").exists()  # refused before anything ran


def test_the_fallback_install_imports_the_project_from_this_tree_without_pip(tmp_path):
    """A fresh interpreter that has the dependencies but not the project (as the GPU image): the
    path finder makes cmkd_bench, cmkd_bench.methods and cmkd_bench.datasets import from this tree,
    from any folder, with nothing on PYTHONPATH."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, ...) from the test's environment, but not its .pth files (its editable install)
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"OUT": str(tmp_path / "out"), "PYTHON": str(python), "FIRST_GPU_INSTALL": "finder", "PYTHONPATH": ""}
    before = subprocess.run([str(python), "-c", "import cmkd_bench.methods"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, **env})
    assert before.returncode != 0  # not importable before the install

    result = first_gpu("--install-only", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "falling back to a path finder" in result.stdout
    assert f"cmkd_bench imports from {REPO / 'cmkd_bench'}" in result.stdout
    assert (purelib / "_cmkd_bench_source.pth").is_file()
    assert "falling back to a path finder" in (tmp_path / "out" / "first-gpu.log").read_text()
    after = subprocess.run([str(python), "-c", "import cmkd_bench.methods.kd, cmkd_bench.datasets.synth_av, "
                            "cmkd_bench.data; print(cmkd_bench.methods.kd.__file__, cmkd_bench.data.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert after.returncode == 0, after.stderr
    assert after.stdout.split() == [str(REPO / "methods" / "kd.py"), str(REPO / "cmkd_bench" / "data" / "__init__.py")]

    again = first_gpu("--install-only", env=env)  # idempotent: nothing to do the second time
    assert again.returncode == 0 and "already imports from this tree" in again.stdout, again.stdout


@pytest.mark.slow
def test_the_small_mode_runs_end_to_end_on_cpu(tmp_path):
    result = first_gpu("--small", env={"OUT": str(tmp_path), "FIRST_GPU_BUDGET_S": "600"}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout[result.stdout.index("== summary:"):].splitlines()
    assert "0 step(s) failed" in summary[0]
    steps = {line[:34].strip(): line[34:].strip() for line in summary[1:]}
    assert steps["gpu-marked tests"] == "skipped: no CUDA" and steps["torchrun on cuda (nccl)"] == "skipped: no CUDA"
    for name in ("install", "every method, 1 epoch, cpu", "torchrun 2 processes, gloo, cpu", "gpu_check"):
        assert steps[name].startswith("ok"), (name, steps)
    log = (tmp_path / "first-gpu.log").read_text()
    assert "| fd on synth-av |" in log and "| fd on synth-rgbd |" in log and "| AV step, packed loader |" in log
    assert not re.search(r"\| FAILED|: FAILED|TIMED OUT", log), log  # no table row, no step
