"""The real audio-visual loaders and paired-manifest, on tiny fake releases prepared by `prepare`.

Images are tiny (image_size=32) but the spectrograms have their full, real size: the fake clips
are looped to the datasets' real durations, exactly as real clips are.
"""

from __future__ import annotations

import csv
import importlib
import json
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cmkd_bench.errors import UserError
from cmkd_bench.media import IMAGENET_MEAN, IMAGENET_STD, AudioFeatures
from cmkd_bench.registry import DATASETS
from cmkd_bench.runner import build_model

from conftest import cli
from test_prepare import FAKES, fake_crema_d, frame_colour, prepare_in_process, tone

TINY = {"image_size": 32, "num_workers": 0}
# name: (options, classes, visual shape, audio shape, split sizes of the fake release)
EXPECTED = {
    "crema-d": ({**TINY, "val_fraction": 0.34}, 6, (3, 32, 32), (1, 257, 299), {"train": 12, "val": 6, "test": 6}),
    "ave": (TINY, 28, (3, 32, 32), (1, 257, 1004), {"train": 8, "val": 4, "test": 4}),
    "vggsound-50": ({**TINY, "val_fraction": 0.34}, 50, (3, 32, 32), (1, 129, 626), {"train": 8, "val": 4, "test": 4}),
    "ravdess": (TINY, 8, (3, 32, 32), (1, 128, 401), {"train": 8, "val": 4, "test": 4}),
    "av-mnist": ({"val_size": 10}, 10, (1, 28, 28), (1, 112, 112), {"train": 30, "val": 10, "test": 20}),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    roots = {}
    for name, make in FAKES.items():
        raw = make(tmp_path_factory.mktemp(f"{name}-raw"))
        if name == "av-mnist":
            roots[name] = raw  # the release layout is read as it is
            continue
        roots[name] = tmp_path_factory.mktemp(name)
        prepare_in_process(name, raw, roots[name])
    return roots


def build(name: str, root: Path, **options):
    return DATASETS.build(name, root, **{**EXPECTED[name][0], **options})


def one_training_step(data, modality: str) -> None:
    model = build_model("small-cnn", data, modality, 0, torch.device("cpu"))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    batch = next(data.batches("train", 4, shuffle=True, seed=0))
    loss = F.cross_entropy(model(batch[modality]).logits, batch["label"])
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_loader_shapes_classes_splits_and_one_training_step(name, prepared):
    _, classes, visual, audio, sizes = EXPECTED[name]
    data = build(name, prepared[name])
    spec = data.spec
    assert spec.num_classes == classes and spec.task == "classification"
    assert spec.modalities["visual"].shape == visual and spec.modalities["audio"].shape == audio
    assert spec.split_sizes == sizes
    if name != "av-mnist":
        assert spec.modalities["audio"].backbone == "resnet18" == spec.modalities["visual"].backbone
        assert (spec.recipe.optimizer, spec.recipe.lr, spec.recipe.schedule, spec.recipe.epochs, spec.recipe.batch_size) == \
            ("sgd", 0.01, "poly", 100, 64)
    for split in ("train", "val", "test"):
        batches = list(data.batches(split, 5, shuffle=False))
        indices = torch.cat([b["index"] for b in batches])
        assert torch.equal(indices, torch.arange(sizes[split]))
        for batch in batches:
            assert batch["visual"].shape[1:] == visual and batch["audio"].shape[1:] == audio
            assert torch.equal(batch["label"], data.labels(split)[batch["index"]])
            assert batch["label"].max() < classes and torch.isfinite(batch["audio"]).all()
    for modality in ("visual", "audio"):
        one_training_step(data, modality)


def test_the_literature_options(prepared):
    assert build("crema-d", prepared["crema-d"], frames=3).spec.modalities["visual"].shape == (9, 32, 32)
    assert build("vggsound-50", prepared["vggsound-50"], seconds=10.0).spec.modalities["audio"].shape == (1, 129, 1251)
    assert build("ave", prepared["ave"], seconds=3.0).spec.modalities["audio"].shape == (1, 257, 299)
    with pytest.raises(UserError, match=r"seconds must be in \(0, 10\], the audio length prepared"):
        build("ave", prepared["ave"], seconds=11.0)
    default = build("crema-d", prepared["crema-d"], image_size=224)
    assert default.spec.modalities["visual"].shape == (3, 224, 224)
    assert next(default.batches("test", 2, shuffle=False))["visual"].shape == (2, 3, 224, 224)


def test_validation_is_a_seeded_stratified_part_of_train_never_test(prepared):
    a, b = build("crema-d", prepared["crema-d"]), build("crema-d", prepared["crema-d"], split_seed=1)
    assert torch.bincount(a.labels("val")).tolist() == [1] * 6
    names = {split: set(a.readers[split].names) for split in ("train", "val", "test")}
    assert not names["val"] & names["test"] and not names["val"] & names["train"]
    with open(prepared["crema-d"] / "clips.csv") as handle:
        official_train = {r["clip"] for r in csv.DictReader(handle) if r["split"] == "train"}
    assert names["val"] | names["train"] == official_train
    assert set(b.readers["val"].names) != names["val"] and set(b.readers["test"].names) == names["test"]
    assert a.spec.options["split_seed"] == 0 and "num_workers" not in a.spec.options


def red_of_first_frame(batch: dict) -> torch.Tensor:
    """The red level (0..255) of each sample's visual, undoing the ImageNet normalisation."""
    red = batch["visual"][:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return red.mean(dim=(1, 2)) * 255


def test_middle_frame_at_test_random_frames_at_train(prepared):
    # The fake clips are 2 s at 4 fps: 1 fps gives the frames at 0 s and 1 s; frame k has red 20 + 40 k.
    data = build("ave", prepared["ave"])
    assert set(data.readers["test"].frame_counts.tolist()) == {2}
    middle = frame_colour(4, 0)[0]  # the frame at 1 s, the 4th at 4 fps
    assert torch.allclose(red_of_first_frame(next(data.batches("test", 4, shuffle=False))), torch.tensor(float(middle)), atol=12)
    plain = build("ave", prepared["ave"], augment=False)
    reds = torch.cat([red_of_first_frame(b) for seed in range(6) for b in plain.batches("train", 8, shuffle=True, seed=seed)])
    assert (reds < 60).any() and (reds > 140).any()  # both the 0 s and the 1 s frame were drawn


def test_batches_are_deterministic_from_the_seed_whatever_the_workers(prepared):
    data = build("crema-d", prepared["crema-d"])
    first, again = list(data.batches("train", 4, shuffle=True, seed=7)), list(data.batches("train", 4, shuffle=True, seed=7))
    other = list(data.batches("train", 4, shuffle=True, seed=8))
    data.num_workers = 2
    in_workers = list(data.batches("train", 4, shuffle=True, seed=7))
    for x, y, z in zip(first, again, in_workers):
        for key in ("visual", "audio", "index"):
            assert torch.equal(x[key], y[key]) and torch.equal(x[key], z[key])
    assert not all(torch.equal(x["visual"], y["visual"]) for x, y in zip(first, other))


@pytest.mark.parametrize("batch_size", [1, 4, 5, 12, 64])
def test_num_batches_matches_what_batches_yields(prepared, batch_size):
    data = build("crema-d", prepared["crema-d"])
    for split in ("train", "test"):
        for shuffle in (True, False):
            yielded = list(data.batches(split, batch_size, shuffle=shuffle, seed=1))
            assert len(yielded) == data.num_batches(split, batch_size, shuffle=shuffle)
            sizes = [len(b["label"]) for b in yielded]
            if shuffle and data.size(split) >= batch_size:
                assert set(sizes) == {batch_size}  # drop_last
            else:
                assert sum(sizes) == data.size(split)


def test_kd_run_from_the_command_line(prepared, tmp_path):
    result = cli("run", "--method", "kd", "--dataset", "crema-d", "--data-root", str(prepared["crema-d"]), "--epochs", "1",
                 "--batch-size", "4", "--set", "image_size=32", "--set", "val_fraction=0.34", "--set", "num_workers=0",
                 "--student", "small-cnn", "--teacher", "small-cnn", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads(next(tmp_path.glob("kd-crema-d-*/result.json")).read_text())
    assert record["status"] == "completed" and record["teacher_modality"] == "audio"
    assert record["data_options"]["prepared"] and record["data_options"]["image_size"] == 32


# -- errors: one line naming the file --------------------------------------------------------------
@pytest.fixture
def crema_copy(tmp_path) -> Path:
    dst = tmp_path / "prepared"
    prepare_in_process("crema-d", fake_crema_d(tmp_path / "raw", train_per_class=2, test_per_class=1), dst)
    return dst


def first_test_clip(root: Path) -> str:
    with open(root / "clips.csv") as handle:
        return next(r["clip"] for r in csv.DictReader(handle) if r["split"] == "test")


@pytest.mark.parametrize("damage, expected", [
    (lambda root, clip: (root / "audio" / f"{clip}.npy").write_bytes(b"garbage"), "not a readable .npy file"),
    (lambda root, clip: (root / "audio" / f"{clip}.npy").unlink(), "file not found"),
    (lambda root, clip: (root / "frames" / clip / "0001.jpg").write_bytes(b"garbage"), "not a readable image"),
])
def test_damaged_prepared_files_give_one_line_naming_the_file(crema_copy, damage, expected):
    clip = first_test_clip(crema_copy)
    damage(crema_copy, clip)
    data = DATASETS.build("crema-d", crema_copy, image_size=32, num_workers=0, val_fraction=0.5)
    with pytest.raises(UserError, match=expected) as caught:
        list(data.batches("test", 4, shuffle=False))
    assert clip in str(caught.value) and "\n" not in str(caught.value)


def test_unprepared_or_foreign_data_roots_are_refused(crema_copy, tmp_path):
    with pytest.raises(UserError, match="needs --data-root DIR"):
        DATASETS.build("crema-d", None)
    with pytest.raises(UserError, match="prepared.json' is missing.*cmkd-bench prepare crema-d"):
        (tmp_path / "empty").mkdir()
        DATASETS.build("crema-d", tmp_path / "empty")
    with pytest.raises(UserError, match="was prepared for 'crema-d', not 'ave'"):
        DATASETS.build("ave", crema_copy)
    result = cli("run", "--method", "kd", "--dataset", "ravdess", "--data-root", str(tmp_path / "absent"), "--out", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "is not a folder" in result.stderr


# -- paired-manifest -------------------------------------------------------------------------------
def write_manifest(root: Path, rows: list[dict], header: tuple[str, ...]) -> Path:
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return root / "pairs.csv"


def manifest_release(root: Path, n: int = 24, split: bool = True) -> Path:
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    (root / "wav").mkdir()
    rows = []
    for i in range(n):
        label = ("cat", "dog", "owl")[i % 3]
        Image.new("RGB", (40, 30), (i * 10, 100, 50)).save(root / "rgb" / f"{i}.png")
        np.save(root / "depth" / f"{i}.npy", np.full((20, 20), i, np.float32))
        with wave.open(str(root / "wav" / f"{i}.wav"), "wb") as handle:
            handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(8000)
            handle.writeframes((tone(0.5, 300 + 50 * i, 8000) * 32767).astype("<i2").tobytes())
        row = {"rgb": f"rgb/{i}.png", "depth": str(root / "depth" / f"{i}.npy"), "sound": f"wav/{i}.wav", "label": label}
        if split:
            row["split"] = "test" if i % 4 == 0 else "train"
        rows.append(row)
    header = ("rgb", "depth", "sound", "label", *(("split",) if split else ()))
    return write_manifest(root, rows, header)


def test_paired_manifest_decodes_by_file_type(tmp_path):
    manifest = manifest_release(tmp_path)
    data = DATASETS.build("paired-manifest", manifest, image_size=16, num_workers=0, val_fraction=0.34)
    spec = data.spec
    assert spec.num_classes == 3 and (spec.teacher_modality, spec.student_modality) == ("rgb", "depth")
    assert {m: spec.modalities[m].shape for m in ("rgb", "depth", "sound")} == \
        {"rgb": (3, 16, 16), "depth": (1, 20, 20), "sound": (1, 257, 299)}
    assert spec.split_sizes == {"train": 12, "val": 6, "test": 6}  # val: a stratified third of train (2 per class)
    assert torch.bincount(data.labels("val")).tolist() == [2, 2, 2]
    batch = next(data.batches("test", 6, shuffle=False))
    assert torch.equal(batch["depth"][:, 0, 0, 0], torch.tensor([0.0, 4, 8, 12, 16, 20]))  # rows 0, 4, 8, ... are test
    assert torch.equal(batch["label"], torch.tensor([0, 1, 2, 0, 1, 2]))  # cat dog owl, numbered in sorted order
    for modality in ("rgb", "depth", "sound"):
        one_training_step(data, modality)


def test_paired_manifest_without_split_is_stratified_70_15_15(tmp_path):
    data = DATASETS.build("paired-manifest", manifest_release(tmp_path, n=60, split=False), image_size=16, num_workers=0)
    assert data.spec.split_sizes == {"train": 42, "val": 9, "test": 9}


@pytest.mark.parametrize("edit, expected", [
    (lambda rows: [{k: v for k, v in r.items() if k != "label"} for r in rows], "has no `label` column"),
    (lambda rows: [{**r, "depth": r["rgb"]} if i == 3 else r for i, r in enumerate(rows)], "must hold files of one type"),
    (lambda rows: [{**r, "split": "holdout"} if i == 2 else r for i, r in enumerate(rows)], "line 4 has split 'holdout'"),
    (lambda rows: [{**r, "sound": "nowhere.txt"} for r in rows], "must hold files of one type"),
])
def test_paired_manifest_says_exactly_what_is_wrong(tmp_path, edit, expected):
    manifest = manifest_release(tmp_path, n=12)
    with open(manifest, newline="") as handle:
        rows = edit(list(csv.DictReader(handle)))
    write_manifest(tmp_path, rows, tuple(rows[0]))
    with pytest.raises(UserError, match=expected) as caught:
        DATASETS.build("paired-manifest", manifest, num_workers=0)
    assert "\n" not in str(caught.value)


def test_paired_manifest_missing_file_is_named_when_decoded(tmp_path):
    manifest = manifest_release(tmp_path, n=12)
    (tmp_path / "wav" / "0.wav").unlink()
    data = DATASETS.build("paired-manifest", manifest, image_size=16, num_workers=0, val_fraction=0.25)
    with pytest.raises(UserError, match=r"wav/0\.wav: file not found"):
        list(data.batches("test", 4, shuffle=False))


# -- spectrogram parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize("module, seconds, shape", [
    ("crema_d", 3.0, (257, 299)), ("ave", 10.0, (257, 1004)), ("vggsound_50", 5.0, (129, 626)), ("ravdess", 4.0, (128, 401)),
])
def test_the_datasets_audio_parameters_give_the_papers_shapes(module, seconds, shape):
    features = replace(importlib.import_module(f"cmkd_bench.datasets.{module}").AUDIO, seconds=seconds)
    spectrogram = features.compute(tone(1.3, 440.0))
    assert spectrogram.shape == shape == (features.bins(), features.frames_for(seconds))
    assert spectrogram.dtype == np.float32 and np.isfinite(spectrogram).all()


@pytest.mark.parametrize("kind", ["spectrogram", "stft", "mel"])
@pytest.mark.parametrize("seconds", [0.77, 2.5])
def test_frames_for_predicts_every_spectrogram_width(kind, seconds):
    from cmkd_bench.datasets.paired_manifest import SPECTROGRAMS

    features = AudioFeatures(kind, 16000, seconds, SPECTROGRAMS[kind])
    assert features.compute(tone(0.4, 440.0)).shape == (features.bins(), features.frames_for(seconds))
