"""`cmkd-bench prepare`: tiny fake raw releases (wav, flv, mp4 written here) into the loaders' layout.

The fake releases follow each dataset's real file layout and split-file formats; their media are
a few frames of solid colours and a few seconds of tones. The helpers are shared with
test_av_datasets.py.
"""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from cmkd_bench.registry import DATASETS

from conftest import cli

RATE = 16000
AVE_CATEGORIES = ("Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane",
                  "Race car, auto racing", "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute",
                  "Ukulele", "Frying (food)", "Truck", "Shofar", "Motorcycle", "Acoustic guitar", "Train horn",
                  "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush",
                  "Rodents, rats, mouse", "Accordion", "Mandolin")


# -- tiny media ------------------------------------------------------------------------------------
def tone(seconds: float, freq: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, seconds: float = 1.0, freq: float = 440.0, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((tone(seconds, freq, rate) * 32767).astype("<i2").tobytes())
    return path


def frame_colour(index: int, shade: int) -> tuple[int, int, int]:
    """A colour per frame time (red ramps up), so tests can tell which frame was chosen."""
    return (min(255, 20 + 40 * index), shade, 128)


def write_video(path: Path, codec: str = "mpeg4", seconds: float = 2.0, fps: int = 4, size: tuple[int, int] = (32, 24),
                shade: int = 60, audio_freq: float | None = None) -> Path:
    """Solid-colour frames (one colour per frame), optionally with an AAC tone track."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = None
        if audio_freq is not None:
            audio = container.add_stream("aac", rate=RATE)
            audio.layout = "mono"
        for i in range(int(seconds * fps)):
            image = np.zeros((size[1], size[0], 3), np.uint8) + np.array(frame_colour(i, shade), np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            signal = tone(seconds, audio_freq)
            for start in range(0, len(signal), 1024):
                frame = av.AudioFrame.from_ndarray(signal[None, start:start + 1024], format="flt", layout="mono")
                frame.sample_rate = RATE
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


# -- fake raw releases -----------------------------------------------------------------------------
CREMA_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def fake_crema_d(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    actor = 1001
    for label, emotion in enumerate(CREMA_CLASSES):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for _ in range(count):
                name = f"{actor}_DFA_{emotion}_XX"
                actor += 1
                write_wav(root / "AudioWAV" / f"{name}.wav", seconds=1.2, freq=200 + 100 * label)
                write_video(root / "VideoFlash" / f"{name}.flv", codec="flv", shade=40 * label)
                rows[split].append((name, emotion))
    for split, items in rows.items():
        with open(root / f"{split}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(items)
    return root


def fake_ave(root: Path) -> Path:
    """All 28 categories annotated; videos only for 2 train, 1 val, 1 test clip of 4 categories each."""
    root.mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "val": [], "test": []}
    for k, category in enumerate(AVE_CATEGORIES):
        for split, count in (("train", 2), ("val", 1), ("test", 1)):
            for j in range(count):
                video_id = f"-v{k:02d}{split}{j}"
                lines[split].append(f"{category}&{video_id}&good&0&10")
                if k < 4:
                    write_video(root / "AVE" / f"{video_id}.mp4", shade=50 * k, audio_freq=300 + 100 * k)
    header = "Category&VideoID&Quality&StartTime&EndTime"
    (root / "Annotations.txt").write_text("\n".join([header, *sum(lines.values(), [])]) + "\n")
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (root / name).write_text("\n".join(lines[split]) + "\n")
    return root


def fake_vggsound(root: Path) -> Path:
    """50 subset classes plus one outside it; videos for 3 train and 1 test clip of 4 classes."""
    root.mkdir(parents=True, exist_ok=True)
    classes = [f"sound class {i:02d}, with comma" for i in range(50)]
    (root / "vggsound50_classes.txt").write_text("\n".join(classes) + "\n")
    rows = [("outside1234", 0, "a class outside the subset", "train")]
    for k, label in enumerate(classes):
        for split, count in (("train", 3), ("test", 1)):
            for j in range(count):
                video_id, start = f"yt{k:02d}{split}{j}", 10 * j + 30
                rows.append((video_id, start, label, split))
                if k < 4:
                    write_video(root / "video" / f"{video_id}_{start:06d}.mp4", shade=50 * k, audio_freq=300 + 100 * k)
    with open(root / "vggsound.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def ravdess_name(modality: int, emotion: int, actor: int, vocal: int = 1, repetition: int = 1) -> str:
    return f"{modality:02d}-{vocal:02d}-{emotion:02d}-01-01-{repetition:02d}-{actor:02d}"


def fake_ravdess(root: Path) -> Path:
    """Speech clips of actors 1, 2 (train), 17 (val), 21 (test); one audio-only .wav, one song clip."""
    root.mkdir(parents=True, exist_ok=True)
    for actor in (1, 2, 17, 21):
        for emotion in (1, 3, 5, 8):
            folder = root / f"Actor_{actor:02d}"
            write_video(folder / f"{ravdess_name(1, emotion, actor)}.mp4", size=(48, 32), shade=30 * emotion,
                        audio_freq=200 + 50 * emotion)
    write_wav(root / "Audio_Speech" / f"{ravdess_name(3, 1, 1)}.wav", seconds=1.5, freq=999)
    write_video(root / "Actor_01" / f"{ravdess_name(1, 2, 1, vocal=2)}.mp4", audio_freq=500)  # song: left out
    return root


def fake_av_mnist(root: Path, train: int = 40, test: int = 20, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        np.save(root / "image" / f"{split}_data.npy", rng.integers(0, 256, (n, 784)).astype(np.float32))
        np.save(root / "audio" / f"{split}_data.npy", rng.integers(0, 256, (n, 112, 112)).astype(np.uint8))
        np.save(root / f"{split}_labels.npy", np.arange(n) % 10)
    return root


FAKES = {"crema-d": fake_crema_d, "ave": fake_ave, "vggsound-50": fake_vggsound, "ravdess": fake_ravdess,
         "av-mnist": fake_av_mnist}


def prepare_in_process(name: str, src: Path, dst: Path, workers: int = 1):
    """What `cmkd-bench prepare` does, without a subprocess (faster for the loader tests)."""
    from rich.console import Console

    return DATASETS.get(name).meta["prepare"](src, dst, workers, False, Console(quiet=True))


def read_clips(root: Path) -> list[dict[str, str]]:
    with open(root / "clips.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# -- the command -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crema_raw(tmp_path_factory) -> Path:
    root = fake_crema_d(tmp_path_factory.mktemp("crema-raw"), train_per_class=1, test_per_class=1)
    (root / "VideoFlash" / "1001_DFA_NEU_XX.flv").write_bytes(b"this is not a flash video")
    return root


def test_prepare_writes_the_layout_in_parallel_and_reports_failed_clips(crema_raw, tmp_path):
    dst = tmp_path / "crema"
    result = cli("prepare", "crema-d", "--src", str(crema_raw), "--dst", str(dst), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "prepared 11 crema-d clips" in result.stdout
    assert "1 clips failed" in result.stdout and "1001_DFA_NEU_XX" in result.stdout and "1001_DFA_NEU_XX.flv" in result.stdout
    rows = read_clips(dst)
    assert len(rows) == 11 and {r["split"] for r in rows} == {"train", "test"}
    assert "1001_DFA_NEU_XX" not in {r["clip"] for r in rows}
    info = json.loads((dst / "prepared.json").read_text())
    assert info["classes"] == list(CREMA_CLASSES) and info["failed"] == 1
    first = rows[0]["clip"]
    assert np.load(dst / "audio" / f"{first}.npy").shape == (257, 299)  # 3 s at 16 kHz, nperseg 512, noverlap 353
    assert int(rows[0]["frames"]) == 2 and len(list((dst / "frames" / first).glob("*.jpg"))) == 2  # 2 s at 1 fps
    failed = list(csv.reader(open(dst / "failed.csv")))
    assert failed[1][0] == "1001_DFA_NEU_XX" and "1001_DFA_NEU_XX.flv" in failed[1][1]


def test_prepare_resumes_skipping_finished_clips(crema_raw, tmp_path):
    dst = tmp_path / "crema"
    prepare_in_process("crema-d", crema_raw, dst)
    kept, redone = read_clips(dst)[0]["clip"], read_clips(dst)[1]["clip"]
    kept_time = (dst / "audio" / f"{kept}.npy").stat().st_mtime_ns
    (dst / "audio" / f"{redone}.npy").unlink()
    (dst / "frames" / "stale.tmp-999").mkdir()  # what an interrupted run leaves
    report = prepare_in_process("crema-d", crema_raw, dst)
    assert report.skipped == 10 and len(report.prepared) == 11
    assert (dst / "audio" / f"{redone}.npy").is_file() and not (dst / "frames" / "stale.tmp-999").exists()
    assert (dst / "audio" / f"{kept}.npy").stat().st_mtime_ns == kept_time


@pytest.mark.parametrize("dataset, remove, expected", [
    ("crema-d", "train.csv", "train.csv' is missing; copy train.csv and test.csv from OGM-GE"),
    ("crema-d", "AudioWAV", "AudioWAV' is missing"),
    ("ave", "valSet.txt", "valSet.txt' is missing"),
    ("vggsound-50", "vggsound50_classes.txt", "vggsound50_classes.txt' is missing"),
    ("vggsound-50", "vggsound.csv", "get vggsound.csv from"),
])
def test_missing_split_files_give_one_line_naming_the_file(dataset, remove, expected, tmp_path):
    src = tmp_path / "raw"
    if dataset == "crema-d":
        src.mkdir()
        for folder in ("AudioWAV", "VideoFlash"):
            (src / folder).mkdir()
        for name in ("train.csv", "test.csv"):
            (src / name).write_text("1001_DFA_ANG_XX,ANG\n")
    elif dataset == "ave":
        src.mkdir()
        (src / "Annotations.txt").write_text("\n".join(f"{c}&id{i}&good&0&10" for i, c in enumerate(AVE_CATEGORIES)))
        for name in ("trainSet.txt", "valSet.txt", "testSet.txt"):
            (src / name).write_text("Bark&id2&good&0&10\n")
    else:
        src.mkdir()
        (src / "vggsound50_classes.txt").write_text("\n".join(f"c{i}" for i in range(50)))
        (src / "vggsound.csv").write_text("\n".join(f"id{i},0,c{i},train" for i in range(50)))
    target = src / remove
    target.unlink() if target.is_file() else target.rmdir()
    from cmkd_bench.errors import UserError

    with pytest.raises(UserError, match=expected) as caught:
        prepare_in_process(dataset, src, tmp_path / "out")
    assert "\n" not in str(caught.value)


def test_prepare_command_errors_are_one_line(tmp_path):
    for args, expected in [
        (("prepare", "synth-av", "--src", str(tmp_path), "--dst", str(tmp_path / "o")), "needs no preparation"),
        (("prepare", "crema-d", "--src", str(tmp_path / "absent"), "--dst", str(tmp_path / "o")), "is not a folder"),
        (("prepare", "ravdess", "--src", str(tmp_path), "--dst", str(tmp_path / "o")), "no RAVDESS speech files"),
    ]:
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr


def test_ravdess_prepare_derives_the_actor_split_and_prefers_the_wav(tmp_path):
    src, dst = fake_ravdess(tmp_path / "raw"), tmp_path / "out"
    prepare_in_process("ravdess", src, dst)
    rows = read_clips(dst)
    assert len(rows) == 16  # the song clip is left out
    by_actor = {r["clip"][-2:]: r["split"] for r in rows}
    assert by_actor == {"01": "train", "02": "train", "17": "val", "21": "test"}
    assert {int(r["label"]) for r in rows} == {0, 2, 4, 7}
    assert all(r["frames"] == "1" for r in rows)  # the middle frame only
    # neutral clip of actor 1: the audio-only .wav (999 Hz) replaced the mp4's track
    spectrogram = np.load(dst / "audio" / "01-01-01-01-01-01.npy")
    assert spectrogram.shape == (128, 401)
    mel_centres = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 130)[1:-1]
    peak_hz = 700 * (10 ** (mel_centres[spectrogram.mean(1).argmax()] / 2595) - 1)
    assert 850 < peak_hz < 1150


def test_av_mnist_prepare_checks_and_links_the_release(tmp_path):
    src = fake_av_mnist(tmp_path / "raw")
    result = cli("prepare", "av-mnist", "--src", str(src), "--dst", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "out" / "audio" / "test_data.npy"), np.load(src / "audio" / "test_data.npy"))
    np.save(src / "audio" / "test_data.npy", np.zeros((19, 112, 112)))
    result = cli("prepare", "av-mnist", "--src", str(src), "--dst", str(tmp_path / "out2"))
    assert result.returncode == 2 and "audio/test_data.npy has shape (19, 112, 112)" in result.stderr
