"""The README's promises: its one-file method works as printed, and synth-av's defaults are sane."""

from __future__ import annotations

import json
import re

import pytest
import torch

from cmkd_bench.data.spec import Recipe
from cmkd_bench.registry import DATASETS, METHODS
from cmkd_bench.training.engine import Fit
from cmkd_bench.training.runner import build_model

from conftest import REPO, TINY_SYNTH, cli


def readme_method_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(# my_method\.py.*?)```", text, re.S)
    assert block, "README lost its one-file method example"
    return block.group(1)


def test_readme_method_example_is_short_and_runs(tmp_path):
    source = readme_method_example()
    assert len(source.strip().splitlines()) < 40
    plugin = tmp_path / "my_method.py"
    plugin.write_text(source)
    result = cli("run", "--plugin", str(plugin), "--method", "cosine-kd", "--dataset", "synth-av", "--epochs", "1",
                 "--out", str(tmp_path / "runs"), *TINY_SYNTH)
    assert result.returncode == 0, result.stderr
    record = json.loads(next((tmp_path / "runs").glob("cosine-kd-*/result.json")).read_text())
    assert set(record["history"][0]["losses"]) == {"ce", "kd", "feat"}


@pytest.mark.slow  # two full default teachers, 40 s; the data generator rarely changes
@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_synth_av_default_teachers_are_neither_perfect_nor_chance(modality):
    """Both unimodal teachers with the default recipe: well above chance (12.5%), well below 100%."""
    torch.set_num_threads(2)
    data = DATASETS.build("synth-av", None)
    model = build_model("small-cnn", data, modality, 0, torch.device("cpu"))
    objective = METHODS.build("no-kd", model.info, model.info, data.spec)
    result = Fit(student=model, method=objective, data=data, student_modality=modality,
                 recipe=Recipe(**data.spec.recipe.as_dict()), seed=0, device=torch.device("cpu")).run()
    torch.set_num_threads(1)
    assert 35.0 < result.test < 92.0, result.test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (tests see one with CMKD_BENCH_TEST_CUDA=1)")
@pytest.mark.gpu
def test_cuda_run_uses_the_device(tmp_path):
    result = cli("run", "--method", "fd", "--dataset", "synth-av", "--epochs", "2", "--device", "cuda",
                 "--out", str(tmp_path), *TINY_SYNTH)
    assert result.returncode == 0, result.stderr
    record = json.loads(next(tmp_path.glob("fd-*/result.json")).read_text())
    assert record["device"].startswith("cuda") and 0 <= record["metrics"]["test"] <= 100


@pytest.mark.slow
def test_every_classification_method_completes_a_default_run(tmp_path):
    """Full default synth-av runs of every method, one direction (minutes of CPU: `make test-slow`)."""
    for method in METHODS.names(task="classification"):
        teacher = ("--teacher-modality", "visual+audio") if getattr(
            METHODS.get(method).implementation, "multimodal_teacher_only", None) else ()
        result = cli("run", "--method", method, "--dataset", "synth-av", *teacher, "--out", str(tmp_path), "--quiet")
        assert result.returncode == 0, f"{method}: {result.stderr}"
