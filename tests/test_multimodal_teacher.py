"""Multimodal (fusion) teachers: `--teacher-modality a+b` (cmkd_bench/models/fusion.py).

One encoder per modality, each built as that modality's unimodal teacher, and a registered fusion
head; trained once and cached under a key that holds the modality set, the backbones and the fusion;
methods read its fused logits and pooled feature and the stages of its encoder of the student's
modality; a method that needs a one-modality teacher refuses in one line before anything is written.
Unimodal run ids and teacher keys are what they were before (pinned, and every committed record's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmkd_bench.artefacts.files import file_sha256
from cmkd_bench.artefacts.records import direction_label, load_records
from cmkd_bench.catalog import load_all
from cmkd_bench.errors import UserError
from cmkd_bench.method import Method
from cmkd_bench.models.fusion import FUSIONS, FusionModel, model_input
from cmkd_bench.registry import METHODS
from cmkd_bench.training.config import RunConfig
from cmkd_bench.training.runner import (RunCallbacks, RunRequest, build_model, build_teacher, execute, resolve_run,
                                        teacher_key)
from cmkd_bench.training.teacher_outputs import TeacherOutputs, plan

from conftest import REPO, TINY_SYNTH, cli

CPU = torch.device("cpu")
TINY = tuple(TINY_SYNTH[1::2])  # the --set values: train=64 val=32 test=32 image_size=16


def request(tmp_path: Path, method: str = "kd", dataset: str = "synth-av", **options) -> RunRequest:
    sets = options.pop("sets", TINY if dataset == "synth-av" else ())
    return RunRequest(method=method, dataset=dataset, epochs=1, device="cpu", out=str(tmp_path), sets=sets, **options)


def run(req: RunRequest) -> tuple[dict, list[str]]:
    messages: list[str] = []
    record = execute(resolve_run(req), RunCallbacks(on_message=messages.append))
    return record, messages


# -- the command line ----------------------------------------------------------------------------
def test_cli_run_with_a_multimodal_teacher_writes_its_record_and_table(tmp_path):
    out = tmp_path / "runs"
    result = cli("run", "--method", "kd", "--dataset", "synth-av", "--teacher-modality", "audio+visual",
                 "--student-modality", "visual", "--epochs", "1", *TINY_SYNTH, "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    [path] = list(out.glob("kd-synth-av-visual_audio2visual-s0-*/result.json"))  # '+' is '_' in the folder name
    record = json.loads(path.read_text())
    # the set in the dataset's modality order (synth-av: visual, audio), whatever order was written
    assert record["status"] == "completed" and record["teacher_modality"] == "visual+audio"
    assert record["teacher_backbone"] == "small-cnn+small-cnn" and record["config"]["teacher_fusion"] == "concat"
    teacher = record["teacher"]
    assert teacher["fusion"] == "concat" and teacher["encoders"] == {"visual": "small-cnn", "audio": "small-cnn"}
    assert 0 <= teacher["metrics"]["test"] <= 100 and "val" in teacher["metrics"]
    assert "visual encoder" in teacher["stages"] and "stages: its visual encoder's (small-cnn)" in result.stdout
    assert "(concat fusion, 1 epoch" in result.stdout  # the summary line names the teacher's fusion
    assert record["teacher_outputs"] == "cached"  # synth-av's inputs are fixed: both of the teacher's modalities
    # tables: the teacher setting is part of the column, and the teacher row has the fusion teacher's accuracy
    from cmkd_bench.reporting.leaderboard import summarize

    [table] = summarize(load_records(out))
    assert direction_label(table.teacher_modality, table.student_modality) == "visual+audio → visual"
    [row] = [r for r in table.rows if r.kind == "teacher"]
    assert row.values == [teacher["metrics"]["test"]]


@pytest.mark.parametrize("teacher_modality, expected", [
    ("audio+", "--teacher-modality 'audio+' has an empty modality name"),
    ("+", "has an empty modality name"),
    ("audio+sound", "dataset 'synth-av' has no modality 'sound'; its modalities are visual, audio"),
    ("audio+audio", "names a modality twice"),
])
def test_an_impossible_set_is_refused(tmp_path, teacher_modality, expected):
    with pytest.raises(UserError, match=expected.replace("+", r"\+")):
        resolve_run(request(tmp_path, teacher_modality=teacher_modality))
    assert not any(tmp_path.iterdir())


def test_an_impossible_set_is_one_line_exit_2_and_nothing_written(tmp_path):
    result = cli("run", "--method", "kd", "--dataset", "synth-av", "--teacher-modality", "audio+sound",
                 *TINY_SYNTH, "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and "dataset 'synth-av' has no modality 'sound'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_method_that_needs_a_one_modality_teacher_refuses_in_one_line(tmp_path):
    result = cli("run", "--method", "mgdfr", "--dataset", "synth-av", "--teacher-modality", "visual+audio",
                 *TINY_SYNTH, "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "method 'mgdfr' cannot distil from a multimodal teacher (visual+audio): it trains a partner" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_refusal_is_the_method_contract_s_capability(tmp_path, monkeypatch):
    assert Method.unimodal_teacher_only is None  # the default allows a multimodal teacher
    refusing = [e.name for e in METHODS if getattr(e.implementation, "unimodal_teacher_only", None)]
    assert {"mgdfr", "mgdfr-ridge"} <= set(refusing)
    kd = METHODS.get("kd").implementation
    monkeypatch.setattr(kd, "unimodal_teacher_only", "it needs one modality (a test)")
    with pytest.raises(UserError, match=r"method 'kd' cannot distil from a multimodal teacher \(visual\+audio\): "
                                        r"it needs one modality \(a test\)"):
        resolve_run(request(tmp_path, teacher_modality="audio+visual"))
    resolve_run(request(tmp_path, teacher_modality="visual"))  # a one-modality teacher is not concerned
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("options, expected", [
    ({"teacher_modality": "visual", "teacher_fusion": "concat"}, "--teacher-fusion concat fuses the modalities"),
    ({"teacher_modality": "visual+audio", "teacher_fusion": "sum-of-squares"}, "unknown teacher fusion 'sum-of-squares'"),
    ({"teacher_modality": "visual+audio", "teacher_backbone": "small-cnn+mlp+mlp"}, "names 3 backbones for the 2"),
])
def test_other_impossible_teachers_are_refused(tmp_path, options, expected):
    with pytest.raises(UserError, match=expected.replace("+", r"\+")):
        resolve_run(request(tmp_path, **options))


# -- the model -----------------------------------------------------------------------------------
def fusion_teacher(tmp_path: Path, student: str = "visual", **options):
    resolved = resolve_run(request(tmp_path, teacher_modality="audio+visual", student_modality=student, **options))
    return resolved, build_teacher(resolved.config, resolved.data, CPU).eval()


def test_fusion_teacher_outputs_and_stages_come_from_the_student_modality_encoder(tmp_path):
    resolved, teacher = fusion_teacher(tmp_path)
    assert isinstance(teacher, FusionModel) and teacher.modalities == ("visual", "audio")
    batch = next(resolved.data.batches("train", 8, shuffle=False))
    out = teacher(model_input(batch, "visual+audio"))
    # each encoder is the modality's unimodal teacher as built today (same seed): same weights, same outputs
    alone = {m: build_model("small-cnn", resolved.data, m, resolved.config.seed, CPU).eval() for m in ("visual", "audio")}
    for m, model in alone.items():
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     teacher.encoders[m].state_dict().values()))
    parts = {m: model(batch[m]) for m, model in alone.items()}
    classes, dim = resolved.data.spec.num_classes, sum(model.info.feature_dim for model in alone.values())
    assert out.logits.shape == (8, classes) and torch.equal(out.logits_native, out.logits)
    assert out.feature_post.shape == out.feature.shape == (8, dim) == (8, teacher.info.feature_dim)
    assert torch.allclose(out.feature_post, torch.cat([parts["visual"].feature_post, parts["audio"].feature_post], 1))
    assert torch.allclose(out.feature, torch.cat([parts["visual"].feature, parts["audio"].feature], 1))  # pre-activation
    assert torch.allclose(out.logits, teacher.net["head"](out.feature_post))  # concat -> one linear layer
    assert list(out.stages) == list(parts["visual"].stages) == teacher.info.stage_names
    assert all(torch.allclose(out.stages[k], parts["visual"].stages[k]) for k in out.stages)
    assert {k: tuple(v.shape[1:]) for k, v in out.stages.items()} == teacher.info.stage_shapes
    # the encoders' own heads feed nothing: frozen, never in the optimiser
    assert not any(p.requires_grad for enc in teacher.encoders.values()
                   for p in enc.net.get_submodule(enc.head_module).parameters())
    # an audio student reads the audio encoder's stages; a teacher without the student's modality has none
    teacher.use_stages_of("audio")
    assert all(torch.allclose(teacher(model_input(batch, "visual+audio")).stages[k], parts["audio"].stages[k])
               for k in parts["audio"].stages)
    teacher.use_stages_of(None)
    assert teacher(model_input(batch, "visual+audio")).stages == {} and teacher.info.stage_names == []
    with pytest.raises(UserError, match="no encoder of the student's modality"):
        teacher.info.stage("last")


def test_concat_mlp_fusion_and_per_modality_backbones(tmp_path):
    resolved, teacher = fusion_teacher(tmp_path, teacher_fusion="concat-mlp", teacher_backbone="small-resnet+small-cnn")
    # backbones pair with the modalities as written (audio+visual), recorded in the dataset's order
    assert resolved.config.teacher_backbone == "small-cnn+small-resnet" and teacher.backbones == ("small-cnn", "small-resnet")
    assert set(FUSIONS) >= {"concat", "concat-mlp"} and teacher.name == "concat-mlp(small-cnn+small-resnet)"
    head = teacher.net["head"]
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [
        teacher.fused_dim // 2, teacher.fused_dim // 4, resolved.data.spec.num_classes]
    out = teacher(model_input(next(resolved.data.batches("train", 4, shuffle=False)), "visual+audio"))
    assert out.logits.shape == (4, resolved.data.spec.num_classes)


def test_fusion_teacher_outputs_cache_keys_on_every_modality(tmp_path):
    resolved, teacher = fusion_teacher(tmp_path)
    data, method = resolved.data, METHODS.build("kd", teacher.info, teacher.info, resolved.data.spec)
    assert plan(method, teacher, data, "visual+audio", CPU).cached

    class VisualFixedOnly:  # the audio input is augmented: no cache, and the reason names it
        spec = data.spec

        @staticmethod
        def fixed_modalities(split):
            return frozenset({"visual"})

    assert plan(method, teacher, VisualFixedOnly(), "visual+audio", CPU).reason == \
        "live: the training input of modality 'audio' is augmented"
    cache = TeacherOutputs.compute(teacher, data, "train", "visual+audio", frozenset({"logits", "feature_post"}), CPU)
    batch = next(data.batches("train", 16, shuffle=True, seed=3))
    live, served = teacher(model_input(batch, "visual+audio")), cache.gather(batch["index"])
    assert torch.allclose(live.logits, served.logits, atol=1e-5)
    assert torch.allclose(live.feature_post, served.feature_post, atol=1e-5)


# -- cached once, reused; the key holds the set, each backbone and the fusion ---------------------------
def test_the_fusion_teacher_is_trained_once_and_its_key_holds_set_backbones_and_fusion(tmp_path):
    first, messages = run(request(tmp_path, teacher_modality="audio+visual", student_modality="visual"))
    folder = Path(first["teacher"]["checkpoint"]).parent
    assert folder.name.startswith("synth-av-visual+audio-small-cnn+small-cnn-concat-s0-")
    weights, summary = file_sha256(folder / "teacher.pt"), json.loads((folder / "teacher.json").read_text())
    assert summary["fusion"] == "concat" and summary["modality"] == "visual+audio"
    # another method, the other student, the set written the other way: the same teacher, reused
    second, messages = run(request(tmp_path, method="fitnet", teacher_modality="visual+audio", student_modality="audio"))
    assert any(m.endswith(f"{first['teacher']['key']}: reused (top1 test {first['teacher']['metrics']['test']:.2f})")
               for m in messages)
    assert second["teacher"]["key"] == first["teacher"]["key"] and file_sha256(folder / "teacher.pt") == weights
    assert second["teacher"]["metrics"] == first["teacher"]["metrics"] and "audio encoder" in second["teacher"]["stages"]
    assert json.loads((folder / "teacher.json").read_text()) == summary  # not trained again
    same = resolve_run(request(tmp_path, teacher_modality="visual+audio", student_modality="visual")).config
    assert same.run_id == first["run_id"] and same.teacher_modality == "visual+audio"
    keys = {teacher_key(resolve_run(request(tmp_path, teacher_modality="visual+audio", **options)).config)
            for options in ({}, {"teacher_fusion": "concat-mlp"}, {"teacher_backbone": "small-resnet"},
                            {"teacher_backbone": "small-cnn+small-resnet"})}
    keys.add(teacher_key(resolve_run(request(tmp_path, teacher_modality="visual")).config))
    assert len(keys) == 5  # another fusion, backbone or modality set is another teacher


# -- segmentation: an RGB-D fusion teacher ------------------------------------------------------
def test_segmentation_fusion_teacher_keeps_native_logits_and_the_fused_decoder(tmp_path):
    sets = ("image_size=32", "train=16", "val=8", "test=8", "augment=true")
    resolved = resolve_run(request(tmp_path, method="cwd", dataset="synth-rgbd", teacher_modality="depth+rgb",
                                   teacher_backbone="small-seg", sets=sets))
    assert resolved.config.teacher_modality == "rgb+depth" and resolved.config.student_modality == "depth"
    teacher = build_teacher(resolved.config, resolved.data, CPU).eval()
    batch = next(resolved.data.batches("train", 2, shuffle=False))
    out = teacher(model_input(batch, "rgb+depth"))
    depth = teacher.encoders["depth"](batch["depth"])
    classes = resolved.data.spec.num_classes
    assert out.logits.shape == (2, classes, 32, 32)
    assert out.logits_native.shape == (2, classes, 16, 16)  # small-seg's decoder works at half the input's size
    assert out.decoder.shape == (2, 32, 16, 16) == (2, *teacher.info.decoder_shape)  # two 16-channel decoders
    assert out.stages["decoder"] is out.decoder and list(out.stages) == list(depth.stages)
    assert all(torch.equal(out.stages[k], depth.stages[k]) for k in depth.stages if k != "decoder")
    assert torch.allclose(out.logits_native, teacher.net["head"](out.decoder))
    record = execute(resolved, RunCallbacks())
    assert record["status"] == "completed" and record["metric"] == "miou"
    assert record["teacher"]["modality"] == "rgb+depth" and 0 <= record["teacher"]["metrics"]["test"] <= 100
    assert "'decoder' is the fused decoder map" in record["teacher"]["stages"]
    assert record["teacher_outputs"] == "live: the training input of modality 'rgb' is augmented"


def test_segmentation_fusion_of_two_decoders_at_different_sizes(tmp_path):
    resolved = resolve_run(request(tmp_path, method="cwd", dataset="synth-rgbd", teacher_modality="rgb+depth",
                                   teacher_backbone="small-seg+deeplabv3plus:resnet18",
                                   sets=("image_size=32", "train=8", "val=4", "test=4")))
    teacher = build_teacher(resolved.config, resolved.data, CPU).eval()
    out = teacher(model_input(next(resolved.data.batches("train", 2, shuffle=False)), "rgb+depth"))
    # small-seg's decoder at 16 x 16, DeepLabV3+'s at 8 x 8: resized to the finer, then concatenated
    assert out.decoder.shape == (2, 16 + 256, 16, 16) and out.logits.shape[-2:] == (32, 32)


# -- real loaders, on their test fixtures -------------------------------------------------------------
def test_av_mnist_fixture_with_a_multimodal_teacher(tmp_path):
    from test_prepare import fake_av_mnist

    root = fake_av_mnist(tmp_path / "av-mnist")
    record, _ = run(request(tmp_path / "runs", dataset="av-mnist", data_root=str(root), sets=("val_size=10",),
                            teacher_modality="audio+visual", batch_size=8))
    assert record["status"] == "completed" and record["teacher_modality"] == "visual+audio"
    assert record["student_modality"] == "audio" and "audio encoder" in record["teacher"]["stages"]
    assert record["teacher"]["encoders"] == {"visual": "small-cnn", "audio": "small-cnn"}


def test_nyuv2_fixture_with_an_rgbd_fusion_teacher(tmp_path):
    from test_segmentation_data import HEIGHT, WIDTH, fake_nyu, write_folder_layout

    write_folder_layout(tmp_path / "nyu", fake_nyu())
    sets = (f"height={HEIGHT}", f"width={WIDTH}", "val_fraction=0.25", "num_workers=0")
    record, _ = run(request(tmp_path / "runs", method="kd", dataset="nyuv2", data_root=str(tmp_path / "nyu"), sets=sets,
                            teacher_modality="rgb+depth", teacher_backbone="small-seg", student_backbone="small-seg",
                            batch_size=2))
    assert record["status"] == "completed" and record["teacher_modality"] == "rgb+depth"
    assert record["teacher"]["fusion"] == "concat" and record["student_modality"] == "depth"


# -- every method: distils from a multimodal teacher, or refuses in one line --------------------------------
load_all()
CLASSIFICATION = sorted(e.name for e in METHODS if e.supports("classification"))
SEGMENTATION = sorted(e.name for e in METHODS if e.supports("segmentation"))


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("every-method")  # one teacher per dataset, trained once, for every method


@pytest.mark.parametrize("method", CLASSIFICATION)
def test_every_classification_method_with_a_multimodal_teacher(method, shared_out):
    req = request(shared_out, method=method, teacher_modality="audio+visual", student_modality="visual")
    if getattr(METHODS.get(method).implementation, "unimodal_teacher_only", None):
        with pytest.raises(UserError, match="cannot distil from a multimodal teacher"):
            resolve_run(req)
        return
    record, _ = run(req)
    assert record["status"] == "completed" and record["teacher_modality"] == "visual+audio"


@pytest.mark.parametrize("method", SEGMENTATION)
def test_every_segmentation_method_with_an_rgbd_teacher(method, shared_out):
    record, _ = run(request(shared_out, method=method, dataset="synth-rgbd", teacher_modality="rgb+depth",
                            sets=("image_size=16", "train=8", "val=4", "test=4")))
    assert record["status"] == "completed" and record["teacher_modality"] == "rgb+depth"


# -- unimodal runs: the same run ids and teacher keys as before multimodal teachers -----------------------
@pytest.mark.parametrize("options, run_id, key", [
    ({"method": "kd", "dataset": "synth-av"}, "kd-synth-av-visual2audio-s0-4930e397b5",
     "synth-av-visual-small-cnn-s0-dcc451a3ae"),
    ({"method": "fitnet", "dataset": "synth-av", "teacher_modality": "audio", "student_modality": "visual",
      "teacher_backbone": "small-resnet", "epochs": 3}, "fitnet-synth-av-audio2visual-s0-22bd31c557",
     "synth-av-audio-small-resnet-s0-46ece258ce"),
    ({"method": "cwd", "dataset": "synth-rgbd", "threads": 2}, "cwd-synth-rgbd-rgb2depth-s0-2ad31b4988",
     "synth-rgbd-rgb-small-seg-s0-ffbe53e721"),
])
def test_unimodal_run_ids_and_teacher_keys_are_unchanged(options, run_id, key):
    config = resolve_run(RunRequest(device="cpu", **options)).config  # values computed by the code before this change
    assert config.teacher_fusion is None and "teacher_fusion" not in config.identity()
    assert config.run_id == run_id and teacher_key(config) == key


def test_every_committed_record_keeps_its_run_id():
    files = sorted((REPO / "leaderboard").rglob("result.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        assert RunConfig(**record["config"]).run_id == record["run_id"], path


# -- suites: the multimodal teacher's fusion ------------------------------------------------------------
def test_a_suite_s_teacher_fusion_reaches_its_multimodal_runs_only(tmp_path):
    from cmkd_bench.experiments.plan import expand, suite_from_mapping, suite_with_flags

    raw = {"datasets": [{"name": "synth-av", "sets": dict(s.split("=") for s in TINY)}], "methods": ["kd"],
           "teachers": ["cross", "multimodal"], "seeds": [0], "directions": "default", "out": str(tmp_path / "runs")}
    default = expand(suite_from_mapping(raw))
    mlp = expand(suite_from_mapping({**raw, "teacher_fusion": "concat-mlp"}))
    fusions = {run.request.teacher_modality: run.request.teacher_fusion for run in mlp}
    assert fusions == {"visual": None, "visual+audio": "concat-mlp"}  # the cross column keeps its one-modality teacher
    assert {run.request.teacher_fusion for run in default} == {None}  # concat, run's default
    [fused] = [run for run in mlp if run.request.teacher_fusion]
    assert fused.run_id not in {run.run_id for run in default}  # another teacher, another run id
    with pytest.raises(UserError, match="unknown teacher fusion 'sum'"):
        suite_from_mapping({**raw, "teacher_fusion": "sum"})
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text("datasets: [synth-av]\nmethods: [kd]\nteacher_fusion: concat-mlp\n")
    with pytest.raises(UserError, match="fuses a multimodal teacher, which this suite has none of"):
        suite_with_flags(str(suite_file), {key: None for key in ("methods", "datasets", "seeds", "directions")}
                         | {"sets": (), "grid": (), "plugins": ()})
