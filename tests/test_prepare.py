"""`cmkd-bench prepare`: tiny fake raw releases into the loaders' layout.

The fake releases are built from excerpts of the real public split files (tests/fixtures/splits/,
bytes unchanged: CRLF line ends, no header, quoted commas, AVE's duplicated VideoIDs) plus tiny
media written here: a few frames of solid colours and a few seconds of tones. The helpers are
shared with test_av_datasets.py.
"""

from __future__ import annotations

import csv
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from conftest import cli

RATE = 16000
SPLITS = Path(__file__).parent / "fixtures" / "splits"
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 123456\n")


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
                shade: int = 60, audio_freq: float | None = None, red_per_second: bool = False) -> Path:
    """Solid-colour frames (one colour per frame, or per second), optionally with an AAC tone track."""
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
            colour = frame_colour(i // fps if red_per_second else i, shade)
            image = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
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


# -- fake raw releases, on the real split files --------------------------------------------------------
def copy_splits(dataset: str, root: Path, bom: bool = False) -> Path:
    """The excerpt of `dataset`'s real split files into root (a UTF-8 byte-order mark added if `bom`)."""
    root.mkdir(parents=True, exist_ok=True)
    for source in sorted((SPLITS / dataset).iterdir()):
        (root / source.name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + source.read_bytes())
    return root


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [row for row in csv.reader(handle) if row]


def ampersand_rows(path: Path) -> list[list[str]]:
    return [line.split("&") for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


CREMA_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def fake_crema_d(root: Path, bom: bool = False, without: tuple[str, ...] = ()) -> Path:
    """OGM-GE's rows (2 train and 1 test clip per emotion); a wav and an flv for each listed clip but `without`."""
    copy_splits("crema-d", root, bom)
    for split in ("train", "test"):
        for name, emotion in csv_rows(root / f"{split}.csv"):
            if name in without:
                continue
            label = CREMA_CLASSES.index(emotion)
            write_wav(root / "AudioWAV" / f"{name}.wav", seconds=1.2, freq=200 + 100 * label)
            write_video(root / "VideoFlash" / f"{name}.flv", codec="flv", shade=40 * label)
    return root


AVE_MEDIA_CATEGORIES = ("Church bell", "Male speech, man speaking", "Bark", "Female speech, woman speaking")


def fake_ave(root: Path) -> Path:
    """The official rows; 10 s videos (the segments are annotated in seconds 0-10) for every row of
    4 categories, including the duplicated VideoIDs. Frame colour changes every second."""
    copy_splits("ave", root)
    written = set()
    for name in ("trainSet.txt", "valSet.txt", "testSet.txt"):
        for category, video_id, *_ in ampersand_rows(root / name):
            if category in AVE_MEDIA_CATEGORIES and video_id not in written:
                k = AVE_MEDIA_CATEGORIES.index(category)
                write_video(root / "AVE" / f"{video_id}.mp4", seconds=10.0, fps=2, shade=50 * k,
                            audio_freq=300 + 100 * k, red_per_second=True)
                written.add(video_id)
    return root


def fake_vggsound(root: Path, short: str | None = None) -> Path:
    """C2KD's rows (2 train and 1 test clip of each of the 50 labels); videos of 5 s for the clips of
    the first 4 labels, named YouTubeID_START.mp4; `short`, if given, gets a 3 s video."""
    copy_splits("vggsound-50", root)
    labels: list[str] = []
    for split in ("train", "test"):
        for video_id, start, label, _ in csv_rows(root / f"{split}_tiny.csv"):
            labels += [label] if label not in labels else []
            k = labels.index(label)
            if k < 4:
                name = f"{video_id}_{int(start):06d}"
                write_video(root / "video" / f"{name}.mp4", seconds=3.0 if name == short else 5.0, fps=2, shade=50 * k,
                            audio_freq=300 + 100 * k)
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


def fake_av_mnist(root: Path, train: int = 40, test: int = 20, seed: int = 0, float_labels: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        np.save(root / "image" / f"{split}_data.npy", rng.integers(0, 256, (n, 784)).astype(np.float32))
        np.save(root / "audio" / f"{split}_data.npy", rng.integers(0, 256, (n, 112, 112)).astype(np.uint8))
        labels = np.arange(n) % 10
        np.save(root / f"{split}_labels.npy", labels.astype(np.float64) if float_labels else labels)
    return root


FAKES = {"crema-d": fake_crema_d, "ave": fake_ave, "vggsound-50": fake_vggsound, "ravdess": fake_ravdess,
         "av-mnist": fake_av_mnist}


def prepare_in_process(name: str, src: Path, dst: Path, workers: int = 1, force: bool = False):
    """What `cmkd-bench prepare` does, without a subprocess (faster for the loader tests)."""
    from rich.console import Console

    return DATASETS.get(name).meta["prepare"](src, dst, workers, force, Console(quiet=True))


def read_csv_dicts(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_clips(root: Path) -> list[dict[str, str]]:
    return read_csv_dicts(root / "clips.csv")


# -- the command on CREMA-D ----------------------------------------------------------------------------
BROKEN, ABSENT = "1017_IWW_HAP_XX", "1069_IWW_SAD_XX"  # rows 2 and 5 of OGM-GE's train.csv


@pytest.fixture(scope="module")
def crema_raw(tmp_path_factory) -> Path:
    root = fake_crema_d(tmp_path_factory.mktemp("crema-raw"), without=(ABSENT,))
    (root / "VideoFlash" / f"{BROKEN}.flv").write_bytes(b"this is not a flash video")
    return root


def test_the_fixture_is_ogm_ge_s_real_format():
    raw = (SPLITS / "crema-d" / "train.csv").read_bytes()
    assert raw.startswith(b"1088_IOM_NEU_XX,NEU\r\n1017_IWW_HAP_XX,HAP\r\n") and b"\r\n" in raw and not raw.startswith(b"\xef")


def test_prepare_writes_the_layout_in_parallel_and_reports_each_problem_once(crema_raw, tmp_path):
    dst = tmp_path / "crema"
    result = cli("prepare", "crema-d", "--src", str(crema_raw), "--dst", str(dst), "--workers", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "prepared 16 crema-d clips" in out and "Traceback" not in out + result.stderr
    missing = [line for line in out.splitlines() if "missing from --src" in line]
    broken = [line for line in out.splitlines() if "did not decode" in line]
    assert len(missing) == 1 and missing[0].startswith("1 clips listed in the split files") and "failed.csv" in missing[0]
    assert len(broken) == 1 and BROKEN in broken[0] and f"{BROKEN}.flv" in broken[0]
    rows = read_clips(dst)
    assert len(rows) == 16 and {r["split"] for r in rows} == {"train", "test"}
    assert {BROKEN, ABSENT}.isdisjoint(r["clip"] for r in rows)
    assert rows[0]["clip"] == "1088_IOM_NEU_XX" and rows[0]["start"] == rows[0]["end"] == ""
    info = json.loads((dst / "prepared.json").read_text())
    assert info["layout"] == 2 and info["classes"] == list(CREMA_CLASSES) and info["audio"] == {"stored": "waveform", "rate": 16000}
    assert info["problems"] == {"missing": 1, "lfs-pointer": 0, "undecodable": 1, "too-few-frames": 0}
    waveform = np.load(dst / "waveforms" / "1088_IOM_NEU_XX.npy")
    assert waveform.dtype == np.float32 and waveform.shape == (int(1.2 * RATE),)  # the wav, sample for sample
    expected = tone(1.2, 200.0)
    assert np.array_equal(waveform, (expected * 32767).astype("<i2") / np.float32(32768))  # int16 / 32768, as soundfile reads
    assert int(rows[0]["frames"]) == 2 and len(list((dst / "frames" / rows[0]["clip"]).glob("*.jpg"))) == 2  # 2 s at 1 fps
    failed = {r["clip"]: r for r in read_csv_dicts(dst / "failed.csv")}
    assert failed[ABSENT]["problem"] == "missing" and f"{ABSENT}.flv" in failed[ABSENT]["detail"]
    assert failed[BROKEN]["problem"] == "undecodable" and f"{BROKEN}.flv" in failed[BROKEN]["detail"]


def test_prepare_resumes_skipping_finished_clips(crema_raw, tmp_path):
    dst = tmp_path / "crema"
    prepare_in_process("crema-d", crema_raw, dst)
    kept, redone = read_clips(dst)[0]["clip"], read_clips(dst)[1]["clip"]
    kept_time = (dst / "waveforms" / f"{kept}.npy").stat().st_mtime_ns
    (dst / "waveforms" / f"{redone}.npy").unlink()
    (dst / "frames" / "stale.tmp-999").mkdir()  # what an interrupted run leaves
    report = prepare_in_process("crema-d", crema_raw, dst)
    assert report.skipped == 15 and len(report.prepared) == 16
    assert (dst / "waveforms" / f"{redone}.npy").is_file() and not (dst / "frames" / "stale.tmp-999").exists()
    assert (dst / "waveforms" / f"{kept}.npy").stat().st_mtime_ns == kept_time


def test_a_byte_order_mark_renames_no_clip(tmp_path):
    src = fake_crema_d(tmp_path / "raw", bom=True)
    assert (src / "train.csv").read_bytes().startswith(b"\xef\xbb\xbf1088_IOM_NEU_XX,NEU\r\n")
    report = prepare_in_process("crema-d", src, tmp_path / "out")
    assert not report.failed and "1088_IOM_NEU_XX" in report.prepared and len(report.prepared) == 18


def test_git_lfs_pointers_are_named_in_one_line_and_nothing_is_written(tmp_path):
    src = copy_splits("crema-d", tmp_path / "raw")
    for split in ("train", "test"):
        for name, _ in csv_rows(src / f"{split}.csv"):
            for folder, suffix in (("AudioWAV", ".wav"), ("VideoFlash", ".flv")):
                (src / folder).mkdir(exist_ok=True)
                (src / folder / f"{name}{suffix}").write_bytes(LFS_POINTER)
    dst = tmp_path / "out"
    result = cli("prepare", "crema-d", "--src", str(src), "--dst", str(dst))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Git LFS pointer files" in lines[0] and "git lfs pull" in lines[0]
    assert not dst.exists()
    (src / "train.csv").write_bytes(LFS_POINTER)
    with pytest.raises(UserError, match=r"train\.csv' is a Git LFS pointer file, not the list itself"):
        prepare_in_process("crema-d", src, dst)


def test_a_release_with_none_of_the_listed_clips_writes_nothing(tmp_path):
    src = copy_splits("crema-d", tmp_path / "raw")
    for folder in ("AudioWAV", "VideoFlash"):
        (src / folder).mkdir()
    dst = tmp_path / "out"
    result = cli("prepare", "crema-d", "--src", str(src), "--dst", str(dst))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "none of the 18 clips the split files list" in result.stderr and "1088_IOM_NEU_XX" in result.stderr
    assert not dst.exists()


def test_a_folder_of_the_older_layout_is_not_mixed_in(crema_raw, tmp_path):
    dst = tmp_path / "old"
    dst.mkdir()
    (dst / "prepared.json").write_text(json.dumps({"dataset": "crema-d", "layout": 1}))
    with pytest.raises(UserError, match="prepared in layout 1.*--force"):
        prepare_in_process("crema-d", crema_raw, dst)
    assert len(prepare_in_process("crema-d", crema_raw, dst, force=True).prepared) == 16


# -- AVE: the official files' duplicated VideoIDs ------------------------------------------------------
def test_ave_keeps_one_row_per_video_id_and_reports_the_overlaps(tmp_path):
    src, dst = fake_ave(tmp_path / "raw"), tmp_path / "out"
    result = cli("prepare", "ave", "--src", str(src), "--dst", str(dst), "--workers", "2")
    assert result.returncode == 0, result.stderr
    rule = [line for line in result.stdout.splitlines() if line.startswith("ave: split rule")]
    listed = [line for line in result.stdout.splitlines() if "excluded.csv" in line]
    assert len(rule) == 1 and len(listed) == 1 and listed[0].startswith("6 split-file rows are left out")
    for part in ("1 listed twice within trainSet.txt", "1 listed twice within valSet.txt",
                 "1 in both trainSet.txt and valSet.txt", "1 in both trainSet.txt and testSet.txt"):
        assert part in rule[0], rule[0]
    rows = read_clips(dst)
    by_clip = {}
    for row in rows:
        assert row["clip"] not in by_clip  # one frames folder, one row per VideoID
        by_clip[row["clip"]] = row
    assert "-ccciEuH9FE" not in by_clip and "3tsi7DKGrWQ" not in by_clip  # two categories in one split: ambiguous
    assert by_clip["00N83yxKYUI"]["split"] == "val" and by_clip["0qvQIuQoODo"]["split"] == "test"
    classes = json.loads((dst / "prepared.json").read_text())["classes"]
    assert classes[:2] == ["Church bell", "Male speech, man speaking"] and len(classes) == 28  # testSet.txt's order
    assert classes[int(by_clip["00N83yxKYUI"]["label"])] == "Female speech, woman speaking"  # valSet.txt's category
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "train" for r in rows) == 8 and sum(r["split"] == "val" for r in rows) == 5
    assert (by_clip["fCZi6I6kPpU"]["start"], by_clip["fCZi6I6kPpU"]["end"]) == ("6", "10")  # the annotated segment
    failed = read_csv_dicts(dst / "failed.csv")
    assert {r["problem"] for r in failed} == {"missing"} and len(failed) == 24  # the test clips of 24 categories
    excluded = read_csv_dicts(dst / "excluded.csv")
    assert len(excluded) == 6  # both rows of each ambiguous pair, and the train rows of the two overlaps
    reasons = {(r["clip"], r["split"]): r["reason"] for r in excluded}
    assert "ambiguous" in reasons[("-ccciEuH9FE", "train")] and "ambiguous" in reasons[("3tsi7DKGrWQ", "val")]
    assert "kept in test only" in reasons[("0qvQIuQoODo", "train")] and "kept in val only" in reasons[("00N83yxKYUI", "train")]


# -- VGGSound-50: C2KD's train_tiny.csv / test_tiny.csv -----------------------------------------------
def test_vggsound_reads_c2kd_s_tiny_lists_as_they_are(tmp_path):
    from cmkd_bench.datasets.vggsound_50 import C2KD_CLASSES

    raw = (SPLITS / "vggsound-50" / "train_tiny.csv").read_bytes()
    assert raw.startswith(b"--0PQM4-hqg,30,waterfall burbling,train\r\n") and b'"subway, metro, underground"' in raw
    src = fake_vggsound(tmp_path / "raw", short="--0PQM4-hqg_000030")  # the first row: a 3 s video
    dst = tmp_path / "out"
    report = prepare_in_process("vggsound-50", src, dst)
    info = json.loads((dst / "prepared.json").read_text())
    assert info["classes"] == list(C2KD_CLASSES)  # the order of first appearance in train_tiny.csv
    assert "subway, metro, underground" in info["classes"]
    assert len(report.problems("too-few-frames")) == 1 and "more than 3" in report.problems("too-few-frames")[0][2]
    assert len(report.prepared) == 11 and len(report.problems("missing")) == 150 - 12
    rows = read_clips(dst)
    assert all(r["clip"].rsplit("_", 1)[1].isdigit() and len(r["clip"].rsplit("_", 1)[1]) == 6 for r in rows)
    assert {int(r["label"]) for r in rows} == {0, 1, 2, 3}


def test_vggsound_reads_vggsound_csv_when_the_tiny_lists_are_absent(tmp_path):
    src = fake_vggsound(tmp_path / "raw")
    rows = csv_rows(src / "train_tiny.csv") + csv_rows(src / "test_tiny.csv")
    with open(src / "vggsound.csv", "w", newline="") as handle:  # VGGSound's list: the subset's rows and others
        writer = csv.writer(handle)
        writer.writerow(["zzzzzzzzzzz", 10, "a class outside the subset", "train"])
        writer.writerows(rows)
    tiny = tmp_path / "tiny"
    prepare_in_process("vggsound-50", src, tiny)
    for name in ("train_tiny.csv", "test_tiny.csv"):
        (src / name).unlink()
    listed = tmp_path / "listed"
    prepare_in_process("vggsound-50", src, listed)
    assert read_clips(tiny) == read_clips(listed)
    assert json.loads((tiny / "prepared.json").read_text())["classes"] == json.loads((listed / "prepared.json").read_text())["classes"]


# -- one line naming the file ----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset, remove, expected", [
    ("crema-d", "train.csv", "train.csv' is missing; copy train.csv and test.csv from OGM-GE"),
    ("crema-d", "AudioWAV", "AudioWAV' is missing"),
    ("ave", "valSet.txt", "valSet.txt' is missing"),
    ("vggsound-50", "test_tiny.csv", "test_tiny.csv' is missing .its partner is there."),
    ("vggsound-50", "both", "has neither train_tiny.csv . test_tiny.csv nor vggsound.csv"),
])
def test_missing_split_files_give_one_line_naming_the_file(dataset, remove, expected, tmp_path):
    src = copy_splits(dataset, tmp_path / "raw")
    if dataset == "crema-d":
        for folder in ("AudioWAV", "VideoFlash"):
            (src / folder).mkdir()
    for name in (("train_tiny.csv", "test_tiny.csv") if remove == "both" else (remove,)):
        target = src / name
        target.unlink() if target.is_file() else target.rmdir()
    with pytest.raises(UserError, match=expected) as caught:
        prepare_in_process(dataset, src, tmp_path / "out")
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset, name, content, expected", [
    ("crema-d", "train.csv", b"1088_IOM_NEU_XX;NEU\r\n", "line 1 is not `NAME,EMOTION`"),
    ("ave", "trainSet.txt", b"Church bell&c---zaDCTaE&good&zero&10\n", "StartTime/EndTime 'zero'"),
    ("ave", "testSet.txt", b"Church bell&c---zaDCTaE&good&0&10\n", "names 1 categories; AVE has 28"),
    ("vggsound-50", "train_tiny.csv", "\u00ff".encode("latin-1"), "is not UTF-8 text"),
])
def test_malformed_split_files_give_one_line(dataset, name, content, expected, tmp_path):
    src = copy_splits(dataset, tmp_path / "raw")
    if dataset == "crema-d":
        for folder in ("AudioWAV", "VideoFlash"):
            (src / folder).mkdir()
    (src / name).write_bytes(content)
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
    waveform = np.load(dst / "waveforms" / "01-01-01-01-01-01.npy")  # the audio-only .wav replaced the mp4's track
    assert waveform.shape == (int(1.5 * RATE),)
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * RATE / len(waveform) - 999) < 2


def test_audio_at_another_rate_is_resampled_and_averaged_over_channels(tmp_path):
    from cmkd_bench.data.media import decode_audio

    path = tmp_path / "stereo.wav"
    t = np.arange(44100) / 44100
    left, right = 0.4 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2), handle.setsampwidth(2), handle.setframerate(44100)
        handle.writeframes((np.stack([left, right], 1) * 32767).astype("<i2").tobytes())
    mono = decode_audio(path, 16000)
    assert mono.dtype == np.float32 and len(mono) == 16000
    middle = mono[2000:14000]
    assert abs(np.abs(middle).max() - 0.3) < 0.01  # (0.4 + 0.2) / 2, as librosa.to_mono
    assert abs(np.argmax(np.abs(np.fft.rfft(middle))) * 16000 / len(middle) - 1000) < 2


def test_av_mnist_prepare_checks_and_links_the_release(tmp_path):
    src = fake_av_mnist(tmp_path / "raw")
    result = cli("prepare", "av-mnist", "--src", str(src), "--dst", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "out" / "audio" / "test_data.npy"), np.load(src / "audio" / "test_data.npy"))
    np.save(src / "audio" / "test_data.npy", np.zeros((19, 112, 112)))
    result = cli("prepare", "av-mnist", "--src", str(src), "--dst", str(tmp_path / "out2"))
    assert result.returncode == 2 and "audio/test_data.npy has shape (19, 112, 112)" in result.stderr


def test_av_mnist_accepts_integer_valued_float_labels_only(tmp_path):
    src = fake_av_mnist(tmp_path / "raw", float_labels=True)
    data = DATASETS.build("av-mnist", src, val_size=10)
    assert data.labels("test").dtype.is_floating_point is False and data.labels("test")[:3].tolist() == [0, 1, 2]
    assert data.spec.options["protocol"] == "multibench"
    np.save(src / "test_labels.npy", np.arange(20) % 10 + 0.5)
    with pytest.raises(UserError, match="integer-valued|floats with integer values"):
        DATASETS.build("av-mnist", src, val_size=10)
    shutil.rmtree(src)
