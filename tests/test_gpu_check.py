"""benchmarks/gpu_check.py keeps working: on CPU it runs every part at small sizes and prints one table."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import REPO


def test_the_gpu_check_runs_at_small_sizes_and_prints_its_table():
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--small", "--device", "cpu", "--skip-tests",
                             "--jobs", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("GPU check on cpu") and "small sizes" in lines[0]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    for measure in ("kd run on synth-av", "kd run on synth-rgbd", "AV step, data resident", "AV step, packed loader",
                    "packed / resident", "AV step, --compile", "tiny suite, --jobs 2"):
        assert measure in rows, measure
    assert "steps/s" in rows["AV step, packed loader"] and "runs/min" in rows["tiny suite, --jobs 2"]
    assert float(rows["packed / resident"].split(" | ")[-1].strip(" |")) > 0
    assert torch.__version__ in lines[0]
