"""benchmarks/gpu_check.py keeps working: on CPU it runs every default stage at small sizes, printing
each row as it is measured; a failing stage is one FAILED row and the next stage runs; the budget
stops a stage; bad input is one line and exit code 2.

The CPU run costs about 75-100 s on 2 cores (more when the machine is busy), the other tests a few
seconds; the compile stage, 40-100 s of inductor on CPU, is a slow test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(lines: list[str]) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in lines if line.startswith("| ") and "---" not in line and not line.startswith("| measure")]


@pytest.mark.slow  # 24 s of CPU at small sizes; the GPU machine runs it for real (make gpu-check)
def test_the_gpu_check_runs_at_small_sizes_printing_each_row_as_it_is_measured():
    process = subprocess.Popen([sys.executable, "benchmarks/gpu_check.py", "--small", "--device", "cpu", "--skip-tests"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals: list[tuple[float, str]] = []
    for line in process.stdout:  # read as printed: a row held back until the end arrives with the last one
        arrivals.append((time.monotonic(), line.rstrip("\n")))
    stderr = process.stderr.read()
    assert process.wait(timeout=600) == 0, stderr[-2000:]
    ended = time.monotonic()
    lines = [line for _, line in arrivals]
    assert lines[0].startswith("GPU check on cpu") and "small sizes" in lines[0] and torch.__version__ in lines[0]
    rows = table_rows(lines)
    measures = [row[0] for row in rows]
    assert measures == ["kd run on synth-av", "kd run on synth-rgbd", "generated packed store", "AV step, data resident",
                        "AV step, packed loader", "packed / resident", "packed batches, workers = none",
                        "tiny suite, --jobs 2", "compile"], measures
    values = {row[0]: row for row in rows}
    assert not any(row[2].startswith(("FAILED", "stopped", "skipped")) for row in rows), rows
    assert values["AV step, packed loader"][1].startswith("2 workers, not pinned")  # the worker path, not 0 workers
    assert values["packed batches, workers = none"][2].startswith("identical (")
    assert float(values["packed / resident"][2]) > 0 and values["kd run on synth-av"][2].endswith("steps/s")
    assert values["tiny suite, --jobs 2"][2].endswith("runs/min") and values["compile"][2].startswith("not run")
    assert lines[-1].endswith("no row FAILED")
    first_row = next(at for at, line in arrivals if line.startswith("| kd run on synth-av"))
    assert ended - first_row > 5, "the first row came only at the end: rows are not flushed as measured"


def test_a_failing_stage_is_one_row_and_the_next_stage_runs(monkeypatch, capsys):
    gpu_check = load_gpu_check()

    def broken(*args, **kwargs):
        yield "kd run on synth-av", "default backbones", "1.0 steps/s"
        raise RuntimeError("first line\nCUDA error: an illegal memory access was encountered")

    def suite(*args, **kwargs):
        yield "tiny suite, --jobs 2", "2 no-kd runs on cpu", "9.0 runs/min"

    monkeypatch.setattr(gpu_check, "kd_runs", broken)
    monkeypatch.setattr(gpu_check, "suite_rates", suite)
    assert gpu_check.main(["--small", "--device", "cpu", "--stages", "runs,suite"]) == 1
    out = capsys.readouterr().out
    assert table_rows(out.splitlines()) == [
        ["kd run on synth-av", "default backbones", "1.0 steps/s"],
        ["runs", "", "FAILED: RuntimeError: CUDA error: an illegal memory access was encountered"],
        ["tiny suite, --jobs 2", "2 no-kd runs on cpu", "9.0 runs/min"]]
    assert out.rstrip().endswith("1 row(s) FAILED")


def test_the_budget_stops_a_stage_and_skips_the_rest(monkeypatch, capsys):
    gpu_check = load_gpu_check()

    def slow(*args, **kwargs):
        yield "kd run on synth-av", "", "1.0 steps/s"
        time.sleep(30)
        yield "kd run on synth-rgbd", "", "never"

    monkeypatch.setattr(gpu_check, "kd_runs", slow)
    began = time.monotonic()
    assert gpu_check.main(["--small", "--device", "cpu", "--stages", "runs,suite", "--budget-s", "1.5"]) == 0
    assert time.monotonic() - began < 15
    rows = table_rows(capsys.readouterr().out.splitlines())
    assert rows[0] == ["kd run on synth-av", "", "1.0 steps/s"]
    assert rows[1][0] == "runs" and rows[1][2].startswith("stopped: the budget ran out")
    assert rows[2] == ["suite", "", "skipped: budget spent"] and len(rows) == 3


@pytest.mark.parametrize("args, message", [
    (["--stages", "runs,warp"], "unknown stage(s) warp"),
    (["--budget-s", "0"], "--budget-s: expected at least 1"),
    (["--jobs", "1,x"], "--jobs: expected comma-separated positive integers"),
    (["--device", "cuda"], "no CUDA device is available"),  # the tests never see CUDA (conftest)
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys):
    gpu_check = load_gpu_check()
    with pytest.raises(SystemExit) as stopped:
        sys.exit(gpu_check.main(args))
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("gpu_check: error:") and message in lines[0], err


@pytest.mark.slow
def test_the_compile_stage_compiles_through_the_runs_code_path_and_matches_eager():
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--small", "--device", "cpu", "--stages",
                             "compile", "--compile"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    rows = {row[0]: row for row in table_rows(result.stdout.splitlines())}
    assert rows["compiled losses = eager"][2].startswith("agree"), rows
    assert rows["small step, --compile"][2].endswith("steps/s"), rows
