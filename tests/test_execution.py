"""--compile and --channels-last (cmkd_bench/training/execution.py), and no host sync per training step on CUDA."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from cmkd_bench.catalog import load_all
from cmkd_bench.data.spec import Recipe
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS, METHODS
from cmkd_bench.training.engine import Fit
from cmkd_bench.training.runner import RunRequest, build_model, execute, resolve_run

from conftest import cli

TINY = ("train=64", "val=32", "test=32", "image_size=16")


def request(tmp_path, **changes) -> RunRequest:
    return RunRequest(method="kd", dataset="synth-av", epochs=1, device="cpu", out=str(tmp_path), sets=TINY, **changes)


def test_channels_last_runs_are_recorded_and_keep_the_run_id(tmp_path):
    plain = resolve_run(request(tmp_path / "a"))
    fast = resolve_run(request(tmp_path / "b", channels_last=True))
    assert fast.config.run_id == plain.config.run_id
    record = execute(fast)
    assert record["execution"] == {"compile": False, "channels_last": True}
    assert record["status"] == "completed" and record["teacher_outputs"] == "cached"


def test_channels_last_stores_the_weights_and_inputs_channels_last():
    from cmkd_bench.training.execution import Execution, as_input, prepare_models

    load_all()
    data = DATASETS.build("synth-av", None, train=8, val=4, test=4, image_size=16)
    model = build_model("small-cnn", data, "visual", 0, torch.device("cpu"))
    prepare_models(Execution(channels_last=True), model)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = as_input(torch.zeros(2, 3, 16, 16), Execution(channels_last=True))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_channels_last_with_a_1d_model_is_one_line():
    result = cli("run", "--method", "kd", "--dataset", "mfh-gauss", "--channels-last", "--device", "cpu", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--channels-last needs image-shaped (C x H x W) inputs" in result.stderr and "1-D model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_compile_on_a_torch_without_it_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(UserError, match=r"--compile needs torch.compile \(torch 2.0 or later\)"):
        resolve_run(request(tmp_path, compile=True))
    assert not any(tmp_path.iterdir())


def test_the_run_options_reach_the_request():
    from click.testing import CliRunner

    from cmkd_bench.cli.run import run_command

    result = CliRunner().invoke(run_command, ["--method", "kd", "--dataset", "synth-av", "--compile", "--channels-last",
                                              "--dry-run", "--device", "cpu", *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_compiled_run_gives_the_eager_runs_metrics(tmp_path):
    eager = execute(resolve_run(request(tmp_path / "eager")))
    compiled = execute(resolve_run(request(tmp_path / "compiled", compile=True)))
    assert compiled["execution"]["compile"] is True
    assert compiled["metrics"]["test"] == pytest.approx(eager["metrics"]["test"], abs=5.0)


def syncs_in_a_fit(train: int) -> int:
    """Host syncs while fitting kd on synth-av with `train` samples, batch 8, on CUDA (sync debug mode "warn")."""
    load_all()
    device = torch.device("cuda")
    data = DATASETS.build("synth-av", None, train=train, val=16, test=16, image_size=16)
    spec = data.spec
    teacher = build_model("small-cnn", data, "visual", 0, device).eval()
    student = build_model("small-cnn", data, "audio", 1, device)
    method = METHODS.build("kd", student.info, teacher.info, spec).to(device)
    fit = Fit(student=student, method=method, data=data, student_modality="audio", recipe=Recipe(epochs=1, batch_size=8),
              seed=0, device=device, teacher=teacher, teacher_modality="visual", check_every=10_000,
              on_step=lambda step, steps: None)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit.run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (tests see one with CMKD_BENCH_TEST_CUDA=1)")
@pytest.mark.gpu
def test_training_steps_make_no_host_sync_on_cuda():
    """Syncs happen per epoch (the loss means, the finiteness check, validation), never per step:
    an epoch of 16 steps makes as many as an epoch of 4."""
    few, many = syncs_in_a_fit(32), syncs_in_a_fit(128)
    assert many == few, json.dumps({"syncs with 4 steps": few, "syncs with 16 steps": many})
