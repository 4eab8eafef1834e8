"""--student-init / --teacher-init: what fits of a weights file is loaded, a 3-channel stem is adapted to
a 1-channel modality (timm's adapt_input_conv: the sum over input channels), other mismatches are
skipped; the report and the file's hash are in the record and the run id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmkd_bench.artefacts.files import file_sha256
from cmkd_bench.errors import UserError
from cmkd_bench.training.runner import RunRequest, build_model, execute, initialise, resolve_run, teacher_key

from conftest import TINY_SYNTH, cli

TINY = ("train=64", "val=32", "test=32", "image_size=16")


def request(out: Path, **extra) -> RunRequest:
    extra.setdefault("method", "no-kd")
    return RunRequest(dataset="synth-av", epochs=1, device="cpu", out=str(out), sets=TINY, **extra)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """A resnet18 state_dict as timm would ship it: a 3-channel stem and a 1000-class head."""
    import timm

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18-in1k.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def test_timm_student_from_imagenet_like_weights(tmp_path, imagenet_like, monkeypatch):
    import timm.models

    calls = []
    real = timm.models.load_pretrained
    monkeypatch.setattr(timm.models, "load_pretrained", lambda *a, **k: calls.append(k) or real(*a, **k))
    prepared = resolve_run(request(tmp_path, student_backbone="resnet18", student_init=str(imagenet_like)))
    config = prepared.config
    assert config.student_init_sha256 == file_sha256(imagenet_like)
    student = build_model("resnet18", prepared.data, config.student_modality, config.seed, prepared.device)
    report = initialise(student, prepared.student_init, config.student_init_sha256, prepared.data,
                        config.student_modality, "student", prepared.device)
    assert [c["pretrained_cfg"]["file"] for c in calls] == [str(imagenet_like)]  # timm's own way, file=
    given = torch.load(imagenet_like, weights_only=True)
    mine = student.state_dict()
    assert mine["net.conv1.weight"].shape[1] == 1  # audio: one channel
    assert torch.equal(mine["net.conv1.weight"], given["conv1.weight"].sum(dim=1, keepdim=True))
    assert [a["key"] for a in report["adapted"]] == ["net.conv1.weight"]
    assert sorted(s["key"] for s in report["skipped"]) == ["net.fc.bias", "net.fc.weight"]
    assert all("classifier" in s["reason"] for s in report["skipped"])
    assert mine["net.fc.weight"].shape == (8, 512)  # fresh, for this dataset's 8 classes
    rest = [k for k in given if k not in ("conv1.weight", "fc.weight", "fc.bias")]
    assert sorted(report["loaded"]) == sorted(f"net.{k}" for k in rest)
    assert all(torch.equal(mine[f"net.{k}"], given[k]) for k in rest)
    assert report["sha256"] == file_sha256(imagenet_like) and report["not_in_file"] == []


def test_init_is_in_the_record_output_and_run_id(tmp_path, imagenet_like):
    other = tmp_path / "other.pth"
    state = torch.load(imagenet_like, weights_only=True)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"] + 1
    torch.save(state, other)
    plain = resolve_run(request(tmp_path / "o", student_backbone="resnet18"))
    first = resolve_run(request(tmp_path / "o", student_backbone="resnet18", student_init=str(imagenet_like)))
    second = resolve_run(request(tmp_path / "o", student_backbone="resnet18", student_init=str(other)))
    assert len({plain.config.run_id, first.config.run_id, second.config.run_id}) == 3
    assert "student_init_sha256" not in plain.config.identity()  # run ids without init are unchanged

    messages: list[str] = []
    from cmkd_bench.training.runner import RunCallbacks

    record = execute(first, RunCallbacks(on_message=messages.append))
    assert record["status"] == "completed"
    assert record["config"]["student_init_sha256"] == file_sha256(imagenet_like)
    assert record["student_init"]["sha256"] == file_sha256(imagenet_like)
    assert [a["key"] for a in record["student_init"]["adapted"]] == ["net.conv1.weight"]
    assert any(m.startswith("student init from") and "adapted net.conv1.weight" in m for m in messages)


def test_teacher_init_is_another_cached_teacher(tmp_path, imagenet_like):
    plain = resolve_run(request(tmp_path, teacher_backbone="resnet18"))
    started = resolve_run(request(tmp_path, teacher_backbone="resnet18", teacher_init=str(imagenet_like)))
    assert teacher_key(plain.config) != teacher_key(started.config)
    assert plain.config.run_id != started.config.run_id
    with pytest.raises(UserError, match="pass one of them"):
        resolve_run(request(tmp_path, teacher_init=str(imagenet_like), teacher_checkpoint=str(imagenet_like)))


def test_small_cnn_round_trip(tmp_path):
    first = execute(resolve_run(request(tmp_path / "a")))
    weights = Path(first["student_checkpoint"])
    prepared = resolve_run(request(tmp_path / "b", student_init=str(weights)))
    config = prepared.config
    student = build_model(config.student_backbone, prepared.data, config.student_modality, config.seed + 5,
                          prepared.device)
    report = initialise(student, prepared.student_init, config.student_init_sha256, prepared.data,
                        config.student_modality, "student", prepared.device)
    saved = torch.load(weights, weights_only=True)
    assert report["adapted"] == [] and report["skipped"] == [] and report["not_in_file"] == []
    assert sorted(report["loaded"]) == sorted(saved)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in saved.items())


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    first = execute(resolve_run(request(tmp_path / "a")))
    saved = torch.load(first["student_checkpoint"], weights_only=True)
    path = tmp_path / "student.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, str(path))
    prepared = resolve_run(request(tmp_path / "b", student_init=str(path)))
    student = build_model("small-cnn", prepared.data, "audio", 7, prepared.device)
    report = initialise(student, prepared.student_init, prepared.config.student_init_sha256, prepared.data,
                        "audio", "student", prepared.device)
    assert sorted(report["loaded"]) == sorted(saved)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_bad_init_files_are_one_line_exit_2_and_write_nothing(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not weights")
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.block.weight": torch.zeros(3, 3)}, unrelated)
    for path, fragment in ((tmp_path / "missing.pt", "does not exist"), (garbage, "cannot be read"),
                           (unrelated, "fits no tensor of backbone 'small-cnn'")):
        out = tmp_path / "out"
        result = cli("run", "--method", "no-kd", "--dataset", "synth-av", "--epochs", "1", "--out", str(out),
                     "--student-init", str(path), *TINY_SYNTH)
        assert_one_line_error(result, fragment)
        assert not out.exists() or not any(out.rglob("*.json")), list(out.rglob("*"))


def test_teacher_checkpoint_mismatch_names_the_keys(tmp_path, imagenet_like):
    prepared = resolve_run(request(tmp_path))
    teacher = build_model("small-cnn", prepared.data, "visual", 0, prepared.device)
    from cmkd_bench.artefacts.files import load_weights

    with pytest.raises(UserError) as caught:
        load_weights(teacher, imagenet_like, prepared.device, "teacher checkpoint")
    text = str(caught.value)
    assert "\n" not in text and "does not fit backbone 'small-cnn'" in text
    assert "missing (net.stages.0.conv1.weight" in text and "unexpected (net.conv1.weight" in text
