"""The real audio-visual loaders and paired-manifest, on tiny fake releases prepared by `prepare`.

The fake releases use excerpts of the real split files (see test_prepare.py). Images are tiny
(image_size=32) but the spectrograms have their full, real size: each protocol loops and cuts the
fake clips exactly as it does real ones. Each protocol's audio parameters are checked against the
reference formula (a tone's bin, the spectrogram's shape, librosa.stft's framing).
"""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cmkd_bench.data.media import IMAGENET_MEAN, IMAGENET_STD, AudioFeatures, librosa_stft_magnitude
from cmkd_bench.datasets import ave as ave_module
from cmkd_bench.datasets import crema_d as crema_module
from cmkd_bench.datasets import ravdess as ravdess_module
from cmkd_bench.datasets import vggsound_50 as vggsound_module
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS
from cmkd_bench.training.runner import build_model

from conftest import cli
from test_prepare import FAKES, fake_crema_d, frame_colour, prepare_in_process, read_clips, tone

TINY = {"image_size": 32, "num_workers": 0}
# name: (options, classes, visual shape, audio shape, split sizes of the fake release), default protocols
EXPECTED = {
    "crema-d": ({**TINY, "val_fraction": 0.5}, 6, (3, 32, 32), (1, 257, 299), {"train": 6, "val": 6, "test": 6}),
    "ave": (TINY, 28, (3, 32, 32), (1, 257, 1024), {"train": 8, "val": 5, "test": 5}),
    "vggsound-50": ({**TINY, "val_fraction": 0.5}, 50, (9, 32, 32), (1, 129, 626), {"train": 4, "val": 4, "test": 4}),
    "ravdess": (TINY, 8, (3, 32, 32), (1, 128, 401), {"train": 8, "val": 4, "test": 4}),
    "av-mnist": ({"val_size": 10}, 10, (1, 28, 28), (1, 112, 112), {"train": 30, "val": 10, "test": 20}),
}
PROTOCOLS = {"crema-d": crema_module.PROTOCOLS, "ave": ave_module.PROTOCOLS, "vggsound-50": vggsound_module.PROTOCOLS,
             "ravdess": ravdess_module.PROTOCOLS}


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
    assert spec.options["protocol"] == DATASETS.get(name).hparams["protocol"]  # recorded in every run's data_options
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


def test_the_protocols_of_crema_d(prepared):
    default = build("crema-d", prepared["crema-d"])
    assert default.spec.options["protocol"] == "fd-cmkd" and default.spec.options["standardize"] is False
    for protocol in ("c2kd", "ogm-ge"):
        data = build("crema-d", prepared["crema-d"], protocol=protocol)
        assert data.spec.modalities["audio"].shape == (1, 257, 188) and data.spec.options["protocol"] == protocol
        assert next(data.batches("test", 6, shuffle=False))["audio"].shape == (6, 1, 257, 188)
    assert build("crema-d", prepared["crema-d"], frames=3).spec.modalities["visual"].shape == (9, 32, 32)
    standardised = build("crema-d", prepared["crema-d"], standardize=True)
    audio = next(standardised.batches("test", 6, shuffle=False))["audio"]
    assert torch.allclose(audio.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-4) and standardised.spec.options["standardize"]
    with pytest.raises(UserError, match="unknown protocol 'mfh'; choose one of fd-cmkd, c2kd, ogm-ge"):
        build("crema-d", prepared["crema-d"], protocol="mfh")
    with pytest.raises(UserError, match="frames must be an integer"):
        build("crema-d", prepared["crema-d"], frames="three")
    assert build("vggsound-50", prepared["vggsound-50"], frames=1).spec.modalities["visual"].shape == (3, 32, 32)


def test_validation_is_a_seeded_stratified_part_of_train_never_test(prepared):
    a, b = build("crema-d", prepared["crema-d"]), build("crema-d", prepared["crema-d"], split_seed=1)
    assert torch.bincount(a.labels("val")).tolist() == [1] * 6
    names = {split: set(a.readers[split].names) for split in ("train", "val", "test")}
    assert not names["val"] & names["test"] and not names["val"] & names["train"]
    official_train = {r["clip"] for r in read_clips(prepared["crema-d"]) if r["split"] == "train"}
    assert names["val"] | names["train"] == official_train
    assert set(b.readers["val"].names) != names["val"] and set(b.readers["test"].names) == names["test"]
    assert a.spec.options["split_seed"] == 0 and "num_workers" not in a.spec.options


# -- each protocol's audio against the reference formula ------------------------------------------------
def hann_periodic(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # scipy.signal.get_window("hann", n, fftbins=True)


def librosa_by_the_book(y: np.ndarray, n_fft: int, hop: int, pad_mode: str) -> np.ndarray:
    """librosa.stft's documented framing, one frame at a time: centre padding of n_fft // 2,
    periodic Hann window, frame t = padded[t * hop : t * hop + n_fft], one-sided FFT."""
    padded = np.pad(y.astype(np.float64), n_fft // 2, mode=pad_mode)
    count = 1 + (len(padded) - n_fft) // hop
    return np.stack([np.abs(np.fft.rfft(padded[t * hop:t * hop + n_fft] * hann_periodic(n_fft))) for t in range(count)], 1)


@pytest.mark.parametrize("n, n_fft, hop, pad_mode", [(66150, 512, 353, "constant"), (66150, 512, 353, "reflect"),
                                                     (80000, 256, 128, "constant"), (1000, 256, 100, "reflect")])
def test_librosa_stft_framing(n, n_fft, hop, pad_mode):
    y = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.2
    ours = librosa_stft_magnitude(y, n_fft, hop, pad_mode)
    assert ours.dtype == np.float32 and ours.shape == (n_fft // 2 + 1, 1 + n // hop)
    assert np.allclose(ours, librosa_by_the_book(y, n_fft, hop, pad_mode), rtol=1e-5, atol=1e-5)
    try:
        import librosa  # not a dependency; when present, the numbers must be librosa's own
    except ImportError:
        return
    assert np.array_equal(ours, np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, pad_mode=pad_mode)))


@pytest.mark.parametrize("dataset, protocol, shape, rate, n_fft", [
    ("crema-d", "fd-cmkd", (257, 299), 16000, 512), ("crema-d", "c2kd", (257, 188), 22050, 512),
    ("crema-d", "ogm-ge", (257, 188), 22050, 512), ("ave", "c2kd", (257, 1024), 16000, 512),
    ("vggsound-50", "c2kd", (129, 626), 16000, 256),
])
def test_a_tone_through_each_protocol_lands_in_its_bin(dataset, protocol, shape, rate, n_fft):
    recipe = PROTOCOLS[dataset][protocol].audio
    assert (recipe.rate, recipe.n_fft) == (rate, n_fft) and recipe.shape() == shape
    freq = 1250.0
    stored = tone(1.3, freq)  # what `prepare` stores: the clip at 16 kHz
    out = recipe.spectrogram(stored, 16000, (0.0, 1.3) if recipe.segment else None, np.random.default_rng(0))
    assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()
    frames = out[:, 2:200] if recipe.resize is None else out.reshape(-1)[:257 * 1004].reshape(257, 1004)[:, 2:200]
    assert np.bincount(frames.argmax(axis=0)).argmax() == round(freq * n_fft / rate)


def test_the_reference_loops_cuts_and_standardisation():
    wave = tone(1.3, 500.0)
    fd = PROTOCOLS["crema-d"]["fd-cmkd"].audio
    from scipy import signal

    looped = np.clip(np.tile(wave, 3)[:48000], -1, 1)  # FD-CMKD: np.tile(samples, 3)[:sr * 3]
    expected = np.log(np.abs(signal.spectrogram(looped, 16000, nperseg=512, noverlap=353)[2]) + 1e-7)
    assert np.array_equal(fd.spectrogram(wave, 16000, None, None), expected.astype(np.float32))
    c2kd = PROTOCOLS["crema-d"]["c2kd"].audio
    ogm = PROTOCOLS["crema-d"]["ogm-ge"].audio
    a, b = c2kd.spectrogram(wave, 16000, None, None), ogm.spectrogram(wave, 16000, None, None)
    assert not np.allclose(a[:, 0], b[:, 0]) and np.array_equal(a[:, 1:-1], b[:, 1:-1])  # only the padded edge frames differ
    ave = PROTOCOLS["ave"]["c2kd"].audio
    ten = np.concatenate([tone(3.0, 3000.0), tone(2.0, 1000.0), tone(5.0, 3000.0)])  # 1 kHz in seconds 3-5 only
    trimmed = ave.spectrogram(ten, 16000, (3.0, 5.0), None)
    flat = trimmed.reshape(-1)[:257 * 1004].reshape(257, 1004)
    assert abs(flat.mean()) < 1e-4 and abs(flat.std() - 1) < 1e-3  # standardised before np.resize
    assert np.array_equal(trimmed.reshape(-1)[257 * 1004:], trimmed.reshape(-1)[:257 * 20])  # np.resize repeats
    assert np.bincount(flat.argmax(axis=0)).argmax() == 32  # 1 kHz: the segment, looped
    whole = ave.__class__(**{**ave.__dict__, "segment": False}).spectrogram(ten, 16000, (3.0, 5.0), None)
    assert np.bincount(whole.reshape(-1)[:257 * 1004].reshape(257, 1004).argmax(axis=0)).argmax() == 96  # 3 kHz


def test_vggsound_windows_are_random_at_train_and_fixed_per_clip_at_test(prepared):
    data = build("vggsound-50", prepared["vggsound-50"])
    first, again = next(data.batches("test", 4, shuffle=False)), next(data.batches("test", 4, shuffle=False))
    assert torch.equal(first["audio"], again["audio"])
    recipe = PROTOCOLS["vggsound-50"]["c2kd"].audio
    steps = np.concatenate([tone(0.25, 500.0 + 250 * k) for k in range(12)])  # 3 s, a new pitch every 250 ms
    # looped to 12 s (doubled twice), a 5 s window from a random start in [0, 5] s: its second frame's pitch shows where
    pitches = {int(recipe.spectrogram(steps, 16000, None, np.random.default_rng(seed))[:, 1].argmax()) for seed in range(8)}
    assert len(pitches) > 3


# -- which frame each protocol takes ------------------------------------------------------------------
def red_of_first_frame(batch: dict) -> torch.Tensor:
    """The red level (0..255) of each sample's visual, undoing the ImageNet normalisation."""
    red = batch["visual"][:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return red.mean(dim=(1, 2)) * 255


def test_frame_choice_per_protocol(prepared):
    # The fake CREMA-D clips are 2 s at 4 fps: 1 fps stores the frames at 0 s and 1 s; frame k has red 20 + 40 k.
    early, late = frame_colour(0, 0)[0], frame_colour(4, 0)[0]
    fd = build("crema-d", prepared["crema-d"], augment=False)
    assert set(fd.readers["test"].frame_counts.tolist()) == {2}
    assert torch.allclose(red_of_first_frame(next(fd.batches("test", 6, shuffle=False))), torch.tensor(float(late)), atol=12)
    reds = torch.cat([red_of_first_frame(b) for seed in range(4) for b in fd.batches("train", 6, shuffle=True, seed=seed)])
    assert (reds < early + 20).any() and (reds > late - 20).any()  # FD-CMKD: a random frame at train
    c2kd = build("crema-d", prepared["crema-d"], protocol="c2kd", augment=False)
    assert torch.allclose(red_of_first_frame(next(c2kd.batches("test", 6, shuffle=False))), torch.tensor(float(early)), atol=12)
    reds = torch.cat([red_of_first_frame(b) for seed in range(4) for b in c2kd.batches("train", 6, shuffle=True, seed=seed)])
    assert torch.allclose(reds, torch.tensor(float(early)), atol=12)  # C2KD: the first frame, always


def test_ave_frames_come_from_the_annotated_segment(prepared):
    data = build("ave", prepared["ave"], augment=False)
    plain = build("ave", prepared["ave"], augment=False, segment=False)
    assert data.spec.options["segment"] is True and plain.spec.options["segment"] is False
    reader, plain_reader = data.readers["val"], plain.readers["val"]
    for index, (start, _) in enumerate(reader.segments):
        red = (reader.read(index, None)["visual"][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).mean() * 255
        plain_red = (plain_reader.read(index, None)["visual"][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).mean() * 255
        assert abs(red - min(255, 20 + 40 * start)) < 12 and abs(plain_red - 20) < 12  # frame k: second k


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


def test_kd_runs_record_their_protocol_and_tables_keep_protocols_apart(prepared, tmp_path):
    from cmkd_bench.reporting.leaderboard import load_records, summarize

    for protocol in ("fd-cmkd", "c2kd"):
        result = cli("run", "--method", "kd", "--dataset", "crema-d", "--data-root", str(prepared["crema-d"]), "--epochs", "1",
                     "--batch-size", "4", "--set", "image_size=32", "--set", "val_fraction=0.5", "--set", "num_workers=0",
                     "--set", f"protocol={protocol}", "--student", "small-cnn", "--teacher", "small-cnn", "--out", str(tmp_path))
        assert result.returncode == 0, result.stderr
    records = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("kd-crema-d-*/result.json"))]
    assert sorted(r["data_options"]["protocol"] for r in records) == ["c2kd", "fd-cmkd"]
    assert all(r["status"] == "completed" and r["teacher_modality"] == "audio" and r["data_options"]["prepared"] for r in records)
    tables = summarize(load_records(tmp_path))
    assert len(tables) == 2 and {t.data_options["protocol"] for t in tables} == {"c2kd", "fd-cmkd"}
    assert all(t.title.count(f"protocol={t.data_options['protocol']}") == 1 for t in tables)
    [alone] = summarize([r for r in load_records(tmp_path) if r["data_options"]["protocol"] == "c2kd"])
    assert "protocol=c2kd" in alone.title  # named even when no other table differs from it


# -- errors: one line naming the file --------------------------------------------------------------
@pytest.fixture
def crema_copy(tmp_path) -> Path:
    dst = tmp_path / "prepared"
    prepare_in_process("crema-d", fake_crema_d(tmp_path / "raw"), dst)
    return dst


def first_test_clip(root: Path) -> str:
    return next(r["clip"] for r in read_clips(root) if r["split"] == "test")


@pytest.mark.parametrize("damage, expected", [
    (lambda root, clip: (root / "waveforms" / f"{clip}.npy").write_bytes(b"garbage"), "not a readable .npy file"),
    (lambda root, clip: (root / "waveforms" / f"{clip}.npy").unlink(), "file not found"),
    (lambda root, clip: np.save(root / "waveforms" / f"{clip}.npy", np.zeros((257, 299), np.float32)), "not a waveform"),
    (lambda root, clip: (root / "frames" / clip / "0001.jpg").write_bytes(b"garbage"), "not a readable image"),
])
def test_damaged_prepared_files_give_one_line_naming_the_file(crema_copy, damage, expected):
    """Without checksums.json (a folder prepared before it existed), the decoder names the file when it
    reaches it; with it, building the dataset refuses it first (tests/test_reliability_data.py)."""
    clip = first_test_clip(crema_copy)
    damage(crema_copy, clip)
    with pytest.raises(UserError, match=f"prepared file .*{clip}.*cmkd-bench verify"):
        DATASETS.build("crema-d", crema_copy, image_size=32, num_workers=0, val_fraction=0.5)
    (crema_copy / "checksums.json").unlink()
    data = DATASETS.build("crema-d", crema_copy, image_size=32, num_workers=0, val_fraction=0.5)
    with pytest.raises(UserError, match=expected) as caught:
        list(data.batches("test", 6, shuffle=False))
    assert clip in str(caught.value) and "\n" not in str(caught.value)


def test_unprepared_older_or_foreign_data_roots_are_refused(crema_copy, tmp_path):
    with pytest.raises(UserError, match="needs --data-root DIR"):
        DATASETS.build("crema-d", None)
    with pytest.raises(UserError, match="prepared.json' is missing.*cmkd-bench prepare crema-d"):
        (tmp_path / "empty").mkdir()
        DATASETS.build("crema-d", tmp_path / "empty")
    with pytest.raises(UserError, match="was prepared for 'crema-d', not 'ave'"):
        DATASETS.build("ave", crema_copy)
    info = json.loads((crema_copy / "prepared.json").read_text())
    (crema_copy / "prepared.json").write_text(json.dumps({**info, "layout": 1}))
    with pytest.raises(UserError, match="has prepared layout 1, this version reads 2.*--force"):
        DATASETS.build("crema-d", crema_copy)
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


def test_paired_manifest_missing_file_is_named_before_training(tmp_path):
    manifest = manifest_release(tmp_path, n=12)
    (tmp_path / "wav" / "0.wav").unlink()
    with pytest.raises(UserError, match=r"line 2: .*wav/0\.wav' does not exist"):
        DATASETS.build("paired-manifest", manifest, image_size=16, num_workers=0, val_fraction=0.25)


# -- paired-manifest's spectrograms -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["spectrogram", "stft", "mel"])
@pytest.mark.parametrize("seconds", [0.77, 2.5])
def test_frames_for_predicts_every_spectrogram_width(kind, seconds):
    from cmkd_bench.datasets.paired_manifest import SPECTROGRAMS

    features = AudioFeatures(kind, 16000, seconds, SPECTROGRAMS[kind])
    assert features.compute(tone(0.4, 440.0)).shape == (features.bins(), features.frames_for(seconds))
