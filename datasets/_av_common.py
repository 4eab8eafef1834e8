"""What the real audio-visual loaders share: named preprocessing protocols applied to the
prepared clips, and the split-file readers.

Real datasets do not fit in memory, so each sample is decoded when a batch asks for it (JPEG
frames, .npy waveforms turned into the protocol's spectrogram) by cmkd_bench.data.spec's
`DecodedPairs`, in `num_workers` DataLoader processes. Everything random is a function of
`batches(seed=...)`: the order comes from a torch.Generator seeded with it, and a sample's
augmentation (frame choice, crop, flip, audio window) from its `SampleSeed` (seed, index), so a
resumed epoch decodes the same samples as the interrupted one, whatever the number of workers.
Where a protocol draws something at random at evaluation too (C2KD's VGGSound audio window), the
draw comes from a fixed seed per clip, so every evaluation sees the same input.

A `Protocol` is one paper's preprocessing, reproduced from its reference code (each dataset's
docstring names the files): the sample rate the audio is resampled to, how it is looped and cut,
the transform (librosa.stft or scipy.signal.spectrogram, with their parameters), whether the
spectrogram is standardised, which frames are taken at train and at test. Its name is a dataset
option (`--set protocol=...`), recorded in every run record's data_options, so runs of different
protocols never share a leaderboard table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmkd_bench.data import DatasetSpec, DecodedPairs, Modality, Recipe, SampleSeed, stratified_split
from cmkd_bench.data.clips import audio_file, clips_fingerprint, frame_file, read_prepared
from cmkd_bench.data.media import (LFS_POINTER_PREFIX, MediaError, image_array, librosa_stft_magnitude, load_npy,
                                   log_mel, log_spectrogram, random_resized_box, read_image, resample)
from cmkd_bench.errors import UserError

VIDEO_RECIPE = Recipe(epochs=100, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                      schedule="poly")
VIDEO_RECIPE_SOURCE = ("C2KD (Huo et al., CVPR 2024) and FD-CMKD (Liu et al., AAAI 2026): ResNet-18 per modality "
                       "(1-channel audio), SGD lr 0.01 momentum 0.9, poly decay, 100 epochs, batch 64; weight decay "
                       "1e-4 as in OGM-GE (Peng et al., CVPR 2022; C2KD's and FD-CMKD's code use none)")
EVAL_WINDOW_SEED = 20240617  # the fixed seed of evaluation-time random audio windows (any constant would do)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
LOG_FLOOR = 1e-7  # every reference takes log(x + 1e-7)


# -- protocols ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioRecipe:
    """How a stored waveform becomes the spectrogram a protocol feeds the audio network.

    In order: resample to `rate`; cut the annotated segment (`segment`, AVE); loop: np.tile(x, k)
    for each k of `tiles` while shorter than `seconds`, then np.tile(x, 2) while shorter than
    `double_until` seconds; take `seconds` from the start (`window="start"`) or from a random start
    in [0, samples(double_until) - samples(seconds)] (`window="random"`, at train and at test);
    clip to [-1, 1]; transform; standardise; np.resize.
    transform: "librosa-stft" = log(|librosa.stft(n_fft, hop_length=hop)| + 1e-7) (centre padding
    `pad_mode`); "scipy-spectrogram" = log(|scipy.signal.spectrogram(fs=rate, nperseg=n_fft,
    noverlap=n_fft - hop)| + 1e-7) (scipy's defaults: Tukey(0.25) window, constant detrend,
    density scaling); "mel" = log(128-band HTK mel power + 1e-7) of a centred STFT (the suite's).
    Where the reference's loop would leave a clip shorter than `seconds` (a clip under 1 s looped
    3 times), it is looped further, so every spectrogram has the protocol's shape.
    """

    rate: int
    transform: str
    n_fft: int
    hop: int
    seconds: float
    tiles: tuple[int, ...] = ()
    double_until: float = 0.0
    window: str = "start"
    pad_mode: str = "constant"
    standardize: bool = False
    resize: tuple[int, int] | None = None
    segment: bool = False
    n_mels: int = 128
    mel_window: int = 400

    def samples(self, seconds: float) -> int:
        return int(round(seconds * self.rate))

    def shape(self) -> tuple[int, int]:
        """(bins, frames) of the spectrogram, without computing one."""
        if self.resize is not None:
            return self.resize
        n = self.samples(self.seconds)
        if self.transform == "librosa-stft":
            return self.n_fft // 2 + 1, 1 + n // self.hop
        if self.transform == "scipy-spectrogram":
            return self.n_fft // 2 + 1, (n - self.n_fft) // self.hop + 1
        return self.n_mels, -(-n // self.hop) + 1  # scipy.signal.stft pads the centred signal to whole hops

    def describe(self) -> str:
        bins, frames = self.shape()
        how = {"librosa-stft": f"log |librosa.stft| (n_fft {self.n_fft}, hop {self.hop}, {self.pad_mode} centre padding)",
               "scipy-spectrogram": f"log PSD (scipy.signal.spectrogram, nperseg {self.n_fft}, noverlap {self.n_fft - self.hop})",
               "mel": f"log-mel ({self.n_mels} HTK bands, window {self.mel_window}, hop {self.hop})"}[self.transform]
        resized = f", np.resize to {bins} x {frames}" if self.resize is not None else f": 1 x {bins} x {frames}"
        return (f"{how} of {self.seconds:g} s at {self.rate} Hz{' (annotated segment)' if self.segment else ''}, "
                f"{'standardised per clip' if self.standardize else 'not standardised'}{resized}")

    def spectrogram(self, wave: np.ndarray, stored_rate: int, segment: tuple[float, float] | None,
                    rng: np.random.Generator | None) -> np.ndarray:
        wave = resample(wave, stored_rate, self.rate)
        if self.segment and segment is not None:
            start, end = segment
            wave = wave[int(self.rate * start):int(self.rate * end)]
        if wave.size == 0:
            raise MediaError("no audio in the clip (or its annotated segment)")
        n = self.samples(self.seconds)
        for k in self.tiles:
            if len(wave) >= n:
                break
            wave = np.tile(wave, k)
        while self.double_until and len(wave) < self.samples(self.double_until):
            wave = np.tile(wave, 2)
        if len(wave) < n:
            wave = np.tile(wave, -(-n // len(wave)))
        offset = 0
        if self.window == "random":
            offset = int(rng.integers(0, self.samples(self.double_until) - n + 1))
        wave = np.clip(wave[offset:offset + n], -1.0, 1.0)
        if self.transform == "librosa-stft":
            out = np.log(librosa_stft_magnitude(wave, self.n_fft, self.hop, self.pad_mode) + LOG_FLOOR)
        elif self.transform == "scipy-spectrogram":
            out = log_spectrogram(wave, self.rate, nperseg=self.n_fft, noverlap=self.n_fft - self.hop)
        else:
            out = log_mel(wave, self.rate, n_fft=512, window=self.mel_window, hop=self.hop, n_mels=self.n_mels)
        if self.standardize:
            out = np.divide(out - out.mean(), out.std() + 1e-9)
        if self.resize is not None:
            out = np.resize(out, self.resize)
        return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class VisualRecipe:
    """Which stored frames (frame k is second k of the clip, 1 fps) a protocol takes.

    "first": the first `frames` frames. The references take `os.listdir(folder)[:frames]`, whose
    order is the file system's; the suite takes the earliest ones, the order their file names
    (frame numbers) sort in. "segments" (FD-CMKD): the sorted frames cut into `frames` equal
    segments, a random frame of each at train and the middle one (index seg // 2) at test.
    """

    frames: int = 1
    train: str = "first"
    test: str = "first"

    def indices(self, available: list[int], frames: int, rng: np.random.Generator | None) -> list[int]:
        mode = self.train if rng is not None else self.test
        if mode == "first":
            return [available[min(i, len(available) - 1)] for i in range(frames)]
        seg = max(1, len(available) // frames)
        chosen = []
        for i in range(frames):
            k = int(rng.integers(i * seg, i * seg + seg)) if rng is not None else i * seg + seg // 2
            chosen.append(available[min(k, len(available) - 1)])
        return chosen


@dataclass(frozen=True)
class Protocol:
    """One paper's preprocessing of one dataset; `source` names the reference files it reproduces,
    `differences` what the suite does not (or cannot) reproduce."""

    name: str
    source: str
    audio: AudioRecipe
    visual: VisualRecipe
    differences: str = ""


def choose_protocol(dataset: str, protocols: dict[str, Protocol], name: str) -> Protocol:
    if name not in protocols:
        raise UserError(f"{dataset}: unknown protocol {name!r}; choose one of {', '.join(protocols)} "
                        f"(`--set protocol=NAME`; each is described in the dataset's documentation)")
    return protocols[name]


# -- prepared clips (the layout `cmkd-bench prepare` writes) -----------------------------------------
@dataclass
class ClipReader:
    root: Path
    split: str
    names: list[str]
    labels: np.ndarray
    frame_counts: np.ndarray
    segments: np.ndarray  # N x 2 seconds, NaN where the clip has no annotated segment
    stored_rate: int
    audio: AudioRecipe
    visual: VisualRecipe
    frames: int
    image_size: int
    augment: bool

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def fixed_modalities(self) -> frozenset[str]:
        """Modalities decoded the same at train as in an unshuffled pass (see PairedData.fixed_modalities):
        frames without crop or flip, taken "first" at train and test; audio without a random window."""
        fixed = {"audio"} if self.audio.window != "random" else set()
        if not self.augment and self.visual.train == self.visual.test == "first":
            fixed.add("visual")
        return frozenset(fixed)

    def read(self, index: int, seed: SampleSeed | None) -> dict[str, np.ndarray]:
        rng = None if seed is None else seed.rng()
        return {"visual": self._visual(index, rng), "audio": self._audio(index, rng)}

    def _segment(self, index: int) -> tuple[float, float] | None:
        start, end = self.segments[index]
        return None if np.isnan(start) else (float(start), float(end))

    def frame_choice(self, index: int, rng: np.random.Generator | None) -> list[int]:
        """The clip's stored frames the protocol takes (drawn from `rng` at train); the first draws of a sample."""
        available = list(range(int(self.frame_counts[index])))
        segment = self._segment(index)
        if self.audio.segment and segment is not None:  # C2KD's *_SE frames: seconds StartTime..EndTime, both included
            available = [k for k in available if segment[0] <= k <= segment[1]] or available
        return self.visual.indices(available, self.frames, rng)

    def crop_choice(self, rng: np.random.Generator | None, width: int, height: int) -> tuple[tuple[int, int, int, int] | None, bool]:
        """RandomResizedCrop box and horizontal flip, one draw per clip after the frame choice (None, False: none)."""
        if rng is None or not self.augment:
            return None, False
        box = random_resized_box(rng, width, height)
        return box, bool(rng.random() < 0.5)

    def _visual(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        name = self.names[index]
        images = [read_image(frame_file(self.root, name, i)) for i in self.frame_choice(index, rng)]
        box, flip = self.crop_choice(rng, *images[0].size)
        return np.concatenate([image_array(im, self.image_size, box, flip) for im in images])

    def _audio(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        path = audio_file(self.root, self.names[index])
        wave = load_npy(path)
        if wave.ndim != 1:
            raise MediaError(f"{path}: holds an array of shape {wave.shape}, not a waveform; prepare the dataset again")
        if self.audio.window == "random" and rng is None:
            rng = np.random.default_rng([EVAL_WINDOW_SEED, SPLIT_CODES[self.split], index])
        try:
            return self.audio.spectrogram(wave, self.stored_rate, self._segment(index), rng)[None]
        except MediaError as exc:
            raise MediaError(f"{path}: {exc}") from None


def split_positions(labels: np.ndarray, splits: np.ndarray, val_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    """Row positions of each split; without a val split, a seeded stratified part of train (never test)."""
    positions = {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}
    if len(positions["val"]) == 0 and len(positions["train"]):
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        train = positions["train"]
        keep, held = stratified_split(torch.from_numpy(labels[train]), (1 - val_fraction, val_fraction), seed=split_seed)
        if len(held) == 0 or len(keep) == 0:
            raise UserError(f"val_fraction {val_fraction:g} of the {len(train)} prepared train clips holds out "
                            f"{'none' if len(held) == 0 else 'all'} (it is taken per class, rounded); "
                            f"set another, e.g. --set val_fraction=0.34, or prepare more clips")
        positions["train"], positions["val"] = train[keep.numpy()], train[held.numpy()]
    return positions


def check_image_options(dataset: str, image_size: int, frames: int) -> None:
    if image_size < 16:
        raise UserError(f"{dataset}: image_size must be at least 16, got {image_size}")
    if frames < 1:
        raise UserError(f"{dataset}: frames must be at least 1, got {frames}")


def build_clip_dataset(name: str, root: Path | None, *, num_classes: int, teacher: str, student: str,
                       protocol: Protocol, image_size: int, frames: int | None, augment: bool,
                       standardize: bool | None, val_fraction: float, split_seed: int, num_workers: int,
                       segment: bool | None = None, extra: dict | None = None, store: str = "auto") -> DecodedPairs:
    """A video dataset from its prepared folder under `protocol`; None options take the protocol's value.

    `store`: "packed" reads the packed store (cmkd_bench/data/packed.py), "files" the JPEG frames and
    waveforms, "auto" the packed store where `prepare` wrote one that holds this protocol's audio
    and frames at least image_size large. The run's identity (spec.options) holds the protocol's
    name and every resolved option, the store used included.
    """
    for option, value, kind in (("frames", frames, int), ("standardize", standardize, bool), ("segment", segment, bool)):
        if value is not None and (type(value) is not kind):
            raise UserError(f"{name}: {option} must be {'an integer' if kind is int else 'true or false'}, got {value!r}")
    audio = protocol.audio
    if standardize is not None:
        audio = _replace(audio, standardize=standardize)
    if segment is not None:
        audio = _replace(audio, segment=segment)
    frames = protocol.visual.frames if frames is None else frames
    check_image_options(name, image_size, frames)
    clips = read_prepared(name, root, num_classes)
    stored_rate = int(clips.info.get("audio", {}).get("rate", 0))
    positions = split_positions(clips.labels, clips.splits, val_fraction, split_seed)
    readers = {split: ClipReader(clips.root, split, [clips.names[i] for i in rows], clips.labels[rows],
                                 clips.frame_counts[rows], clips.segments[rows], stored_rate, audio, protocol.visual,
                                 frames, image_size, augment)
               for split, rows in positions.items()}
    from cmkd_bench.datasets._av_packed import packed_readers  # the packed store's readers, where it serves

    packed = packed_readers(name, clips, positions, readers, protocol.name, audio, store)
    held_out = not (clips.splits == "val").any()  # val_fraction and split_seed matter only without a val split
    recorded = {"protocol": protocol.name, "image_size": image_size, "frames": frames, "augment": augment,
                "standardize": audio.standardize, **({"segment": audio.segment} if segment is not None or audio.segment else {}),
                **({"val_fraction": val_fraction, "split_seed": split_seed} if held_out else {}), **(extra or {}),
                "prepared": clips_fingerprint(clips.root), "store": "packed" if packed else "files"}
    spec = DatasetSpec(
        name=name, task="classification", num_classes=num_classes,
        modalities=clip_modalities(protocol.name, audio, frames, image_size),
        teacher_modality=teacher, student_modality=student, recipe=VIDEO_RECIPE,
        split_sizes={split: len(rows) for split, rows in positions.items()},
        recipe_source=VIDEO_RECIPE_SOURCE, options=recorded,
    )
    if packed:
        from cmkd_bench.data.packed import PackedPairs

        return PackedPairs(spec, packed, num_workers)
    return DecodedPairs(spec, readers, num_workers)


def clip_modalities(protocol: str, audio: AudioRecipe, frames: int, image_size: int) -> dict[str, Modality]:
    """The two modalities a protocol serves, with their shapes and default backbones."""
    bins, width = audio.shape()
    return {"visual": Modality((3 * frames, image_size, image_size), "resnet18",
                               f"{frames} RGB frame(s) stacked on channels, ImageNet-normalised ({protocol})"),
            "audio": Modality((1, bins, width), "resnet18", f"{audio.describe()} ({protocol})")}


def protocol_specs(name: str, protocols: dict[str, Protocol], *, num_classes: int, teacher: str, student: str,
                   split_rows: dict[str, int] | None = None):
    """What `cmkd-bench list datasets NAME` shows without --data-root (the registry's `specs_without_data`):
    a function of the dataset's options giving, for each protocol, its source and the spec a run would
    get, from the declarations alone; no file is read. Its split_sizes are the rows of the published
    split files (`split_rows`; none where the dataset declares none), before the suite's split rule
    and, where there is no val file, before `val_fraction` of train is held out (options: val_fraction)."""
    def specs(options: dict) -> dict[str, tuple[str, DatasetSpec]]:
        shown = {}
        for key, protocol in protocols.items():
            audio = protocol.audio
            if options.get("standardize") is not None:
                audio = _replace(audio, standardize=options["standardize"])
            rows = dict(split_rows or {})
            held = {"val_fraction": options["val_fraction"]} if rows and "val" not in rows and "val_fraction" in options else {}
            spec = DatasetSpec(name=name, task="classification", num_classes=num_classes,
                               modalities=clip_modalities(key, audio, options.get("frames") or protocol.visual.frames,
                                                          options["image_size"]),
                               teacher_modality=teacher, student_modality=student, recipe=VIDEO_RECIPE,
                               split_sizes=rows, recipe_source=VIDEO_RECIPE_SOURCE, options={"protocol": key, **held})
            shown[key] = (protocol.source, spec)
        return shown
    return specs


def _replace(recipe: AudioRecipe, **changes) -> AudioRecipe:
    from dataclasses import replace

    return replace(recipe, **changes)


# -- reading the raw release's split files -----------------------------------------------------------
def require_file(dataset: str, path: Path, where: str) -> Path:
    """The split file `path`, or one line naming it and where the user gets it."""
    if not path.is_file():
        raise UserError(f"{dataset}: split file {str(path)!r} is missing; {where}")
    return path


def read_text(dataset: str, path: Path, where: str) -> str:
    """A split file's text: UTF-8 with or without a byte-order mark, any line ends; one line when it
    is missing, a Git LFS pointer, or not UTF-8."""
    raw = require_file(dataset, path, where).read_bytes()
    if raw.startswith(LFS_POINTER_PREFIX):
        raise UserError(f"{dataset}: {str(path)!r} is a Git LFS pointer file, not the list itself; "
                        f"run `git lfs pull` in the clone it comes from, or {where}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"{dataset}: {str(path)!r} is not UTF-8 text (line {line}); {where}") from None


def read_csv_rows(dataset: str, path: Path, where: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty row of a comma-separated split file (quoted commas,
    CRLF or LF line ends, a BOM: as csv and utf-8-sig read them)."""
    reader = csv.reader(io.StringIO(read_text(dataset, path, where), newline=""))
    try:
        return [(reader.line_num, [field.strip() for field in row]) for row in reader if any(f.strip() for f in row)]
    except csv.Error as exc:
        raise UserError(f"{dataset}: {str(path)!r} line {reader.line_num} is not valid CSV ({exc})") from None


def index_files(src: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Every file under src with one of the suffixes, by stem (first found wins)."""
    found: dict[str, Path] = {}
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            found.setdefault(path.stem, path)
    return found


@dataclass(frozen=True)
class Listed:
    """One row of a split file: the clip it names, its split, its category, where it was read."""

    clip: str
    split: str
    category: str
    where: str  # "trainSet.txt line 12"
    start: float | None = None
    end: float | None = None


EVALUATION_ORDER = ("test", "val", "train")  # where a clip listed in several splits is kept


def one_row_per_clip(rows: list[Listed], file_names: dict[str, str]) -> tuple[list[Listed], list[tuple[str, str, str]], list[str]]:
    """The suite's split rule, applied once before clips are planned: (kept rows, excluded rows
    (clip, split, reason), summary notes).

    1. Within one split, a clip listed again with the same category keeps its first row; listed
       with different categories, its label is ambiguous and it leaves that split.
    2. A clip still in two splits is kept in the evaluation split (test, else val) and leaves
       train, so no run trains on a clip it is evaluated on (in AVE, always with another label).
    """
    by_split: dict[tuple[str, str], list[Listed]] = {}
    for row in rows:
        by_split.setdefault((row.clip, row.split), []).append(row)
    listed_in: dict[str, set[str]] = {}
    for clip, split in by_split:
        listed_in.setdefault(clip, set()).add(split)
    overlaps: dict[tuple[str, str], int] = {}  # as the files list them, before the rule
    order = ("train", "val", "test")
    for splits in listed_in.values():
        ordered = sorted(splits, key=order.index)
        for a in range(len(ordered)):
            for b in range(a + 1, len(ordered)):
                overlaps[(ordered[a], ordered[b])] = overlaps.get((ordered[a], ordered[b]), 0) + 1
    excluded, kept = [], {}
    within = {split: 0 for split in file_names}
    for (clip, split), group in by_split.items():
        if len(group) > 1:
            within[split] += 1
        categories = list(dict.fromkeys(r.category for r in group))
        if len(categories) > 1:
            listed = ", ".join(f"{r.category!r} ({r.where})" for r in group)
            excluded += [(clip, split, f"{r.where}: listed with different categories in {file_names[split]}: {listed}; "
                                       f"the label is ambiguous") for r in group]
            continue
        kept[(clip, split)] = group[0]
        excluded += [(clip, split, f"{r.where}: listed again (same category as {group[0].where}); one row kept")
                     for r in group[1:]]
    splits_of: dict[str, list[str]] = {}
    for clip, split in kept:
        splits_of.setdefault(clip, []).append(split)
    for clip, splits in splits_of.items():
        if len(splits) < 2:
            continue
        ordered = sorted(splits, key=EVALUATION_ORDER.index)
        for split in ordered[1:]:
            row, other = kept.pop((clip, split)), kept[(clip, ordered[0])]
            excluded.append((clip, split, f"{row.where} ({row.category!r}): also in {other.where} ({other.category!r}); "
                                          f"kept in {ordered[0]} only"))
    notes = []
    if any(within.values()) or overlaps:
        repeated = sum(1 for clip, splits in listed_in.items()
                       if len(splits) > 1 or any(len(by_split[(clip, s)]) > 1 for s in splits))
        parts = [f"{n} listed twice within {file_names[s]}" for s, n in within.items() if n]
        parts += [f"{n} in both {file_names[a]} and {file_names[b]}"
                  for (a, b), n in sorted(overlaps.items(), key=lambda item: (order.index(item[0][0]), order.index(item[0][1])))]
        kept_count = {split: sum(1 for (_, s) in kept if s == split) for split in file_names}
        notes.append(f"split rule: {repeated} clips are listed more than once ({', '.join(parts)}); a clip listed with "
                     f"two categories in one split leaves it (ambiguous label), a clip in train and in val/test stays "
                     f"only in val/test; kept: " + ", ".join(f"{n} {split}" for split, n in kept_count.items()))
    position = {id(row): i for i, row in enumerate(rows)}
    return sorted(kept.values(), key=lambda r: position[id(r)]), excluded, notes
