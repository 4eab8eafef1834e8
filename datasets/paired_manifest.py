"""paired-manifest: bring your own paired data as files listed in a CSV, decoded per sample.

One row per sample; one column per modality holding a file path (relative to the CSV's folder, or
absolute); `label` (integer class ids 0..C-1, or class names, numbered in sorted order); an
optional `split` (train, val or test). Example `pairs.csv`:

    rgb,depth,sound,label,split
    rgb/0001.jpg,depth/0001.npy,wav/0001.wav,cat,train
    rgb/0002.jpg,depth/0002.npy,wav/0002.wav,dog,val
    rgb/0003.jpg,depth/0003.npy,wav/0003.wav,cat,test

    cmkd-bench run --method kd --dataset paired-manifest --data-root pairs.csv \\
        --teacher-modality rgb --student-modality depth --set image_size=64

Each column's files are decoded by type, with the video loaders' preprocessing options:
images (.jpg .png .bmp .webp) become 3 x image_size x image_size, ImageNet-normalised (with
`augment=true`, a random resized crop and flip at train); .npy arrays are used as stored (a 2-D
array is a one-channel image, a 1-D array a vector, every file of a column must have one shape);
audio (.wav .flac .mp3 ...) is resampled to `sample_rate`, looped to `seconds` and turned into a
`spectrogram` ("spectrogram": log PSD, scipy.signal.spectrogram nperseg 512 / noverlap 353, the
transform of crema-d's fd-cmkd protocol; "stft": log |scipy.signal.stft|, 256 / 128 (not
librosa.stft, which vggsound-50's c2kd protocol reproduces); "mel": 128-band log-mel, 25 ms /
10 ms as ravdess), 1 x F x T, standardised per file. Without `split`, a seeded stratified 70/15/15 split is made; with a
`split` that has no val rows, a seeded stratified `val_fraction` of train is held out. The first
two modality columns are the default teacher and student. Backbones default to `small-cnn` for
images and spectrograms, `mlp` for vectors. The run id covers the CSV's content, not the files'.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmkd_bench.artefacts.files import file_sha256
from cmkd_bench.data import DatasetSpec, DecodedPairs, Modality, Recipe, SampleSeed, stratified_split
from cmkd_bench.data.media import (AUDIO_SUFFIXES, IMAGE_SUFFIXES, AudioFeatures, MediaError, decode_audio,
                                   image_array, load_npy, random_resized_box, read_image)
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import split_positions

RESERVED = ("label", "split")
SPLIT_CODES = {"train": "train", "val": "val", "test": "test", "0": "train", "1": "val", "2": "test"}
SPECTROGRAMS = {
    "spectrogram": (("noverlap", 353), ("nperseg", 512)),
    "stft": (("noverlap", 128), ("nperseg", 256)),
    "mel": (("hop", 160), ("n_fft", 512), ("n_mels", 128), ("window", 400)),
}


@dataclass(frozen=True)
class Decoding:
    image_size: int
    augment: bool
    audio: AudioFeatures
    standardize: bool


def file_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".npy":
        return "array"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return "unknown"


@dataclass
class ManifestReader:
    paths: dict[str, list[Path]]  # modality -> one file per sample
    kinds: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    labels: np.ndarray
    decoding: Decoding

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int, seed: SampleSeed | None) -> dict[str, np.ndarray]:
        rng = None if seed is None else seed.rng()
        return {m: self._decode(m, self.paths[m][index], rng) for m in self.paths}

    def _decode(self, modality: str, path: Path, rng: np.random.Generator | None) -> np.ndarray:
        kind, decoding = self.kinds[modality], self.decoding
        if kind == "image":
            image = read_image(path)
            training = rng is not None and decoding.augment
            box = random_resized_box(rng, *image.size) if training else None
            return image_array(image, decoding.image_size, box, flip=training and bool(rng.random() < 0.5))
        if kind == "audio":
            spectrogram = decoding.audio.compute(decode_audio(path, decoding.audio.rate))
            if decoding.standardize:
                spectrogram = (spectrogram - spectrogram.mean()) / (spectrogram.std() + 1e-9)
            return spectrogram[None]
        array = load_npy(path).astype(np.float32)
        array = array[None] if array.ndim == 2 else array
        if array.shape != self.shapes[modality]:
            raise MediaError(f"{path}: shape {array.shape} differs from the column's {self.shapes[modality]} (after adding a channel to 2-D arrays)")
        if not np.isfinite(array).all():
            raise MediaError(f"{path}: contains NaN or infinite values")
        return array


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise UserError(f"paired-manifest: {str(path)!r} is not a file; pass --data-root MANIFEST.csv")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"paired-manifest: {str(path)!r} is not a readable CSV ({exc})") from None
    if "label" not in columns:
        raise UserError(f"paired-manifest: {str(path)!r} has no `label` column; its columns are {', '.join(columns) or 'none'}")
    modalities = [c for c in columns if c not in RESERVED]
    if "index" in modalities:
        raise UserError(f"paired-manifest: {str(path)!r} has a column named 'index', which every batch already holds "
                        "(the samples' index); rename that column")
    if len(modalities) < 2:
        raise UserError(f"paired-manifest: {str(path)!r} has {len(modalities)} file column(s); cross-modal distillation needs two")
    if not rows:
        raise UserError(f"paired-manifest: {str(path)!r} lists no samples")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in rows]
    return modalities, rows


def _labels(path: Path, rows: list[dict[str, str]]) -> tuple[np.ndarray, int]:
    raw = [row["label"] for row in rows]
    if all(value.isdigit() for value in raw):
        return np.array([int(v) for v in raw], dtype=np.int64), max(int(v) for v in raw) + 1
    if any(value == "" for value in raw):
        raise UserError(f"paired-manifest: {str(path)!r} row {raw.index('') + 2} has an empty label")
    names = sorted(set(raw))
    return np.array([names.index(v) for v in raw], dtype=np.int64), len(names)


def _splits(path: Path, rows: list[dict[str, str]], labels: np.ndarray, val_fraction: float,
            split_seed: int) -> dict[str, np.ndarray]:
    if "split" not in rows[0]:
        parts = stratified_split(torch.from_numpy(labels), (0.70, 0.15, 0.15), seed=split_seed)
        return {name: part.numpy() for name, part in zip(("train", "val", "test"), parts)}
    for number, row in enumerate(rows, start=2):
        if row["split"].lower() not in SPLIT_CODES:
            raise UserError(f"paired-manifest: {str(path)!r} line {number} has split {row['split']!r}; use train, val or test")
    splits = np.array([SPLIT_CODES[row["split"].lower()] for row in rows])
    return split_positions(labels, splits, val_fraction, split_seed)


def _column(path: Path, rows: list[dict[str, str]], modality: str) -> tuple[list[Path], str]:
    files, kinds = [], set()
    for number, row in enumerate(rows, start=2):
        if not row.get(modality):
            raise UserError(f"paired-manifest: {str(path)!r} line {number} has no file in column {modality!r}")
        file = Path(row[modality])
        files.append(file if file.is_absolute() else path.parent / file)
        kinds.add(file_kind(row[modality]))
    if "unknown" in kinds or len(kinds) != 1:
        raise UserError(f"paired-manifest: column {modality!r} must hold files of one type: images (.jpg .png ...), "
                        f".npy arrays or audio (.wav .flac ...); found {', '.join(sorted({Path(r[modality]).suffix for r in rows}))}")
    missing = [(number, file) for number, file in enumerate(files, start=2) if not file.is_file()]
    if missing:  # before anything trains, not when the first batch reaches the file
        (number, file), more = missing[0], f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"paired-manifest: {str(path)!r} line {number}: {modality} file {str(file)!r} does not "
                        f"exist{more}; fix the path or drop the row")
    return files, kinds.pop()


def _shape(kind: str, first: Path, decoding: Decoding) -> tuple[int, ...]:
    if kind == "image":
        return (3, decoding.image_size, decoding.image_size)
    if kind == "audio":
        return (1, decoding.audio.bins(), decoding.audio.frames_for(decoding.audio.seconds))
    try:
        array = np.load(first, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"paired-manifest: {first}: file not found") from None
    except (ValueError, OSError) as exc:
        raise UserError(f"paired-manifest: {first}: not a readable .npy file ({exc})") from None
    if array.ndim not in (1, 2, 3):
        raise UserError(f"paired-manifest: {first} has shape {array.shape}; use a vector, H x W or C x H x W")
    return (1, *array.shape) if array.ndim == 2 else tuple(array.shape)


@DATASETS.register("paired-manifest", aliases=("manifest",), tasks=("classification",),
                   description="your own paired files: a CSV with a path column per modality (image, .npy, .wav), label, optional split")
def paired_manifest(data_root: Path | None, image_size: int = 224, augment: bool = False, seconds: float = 3.0,
                    sample_rate: int = 16000, spectrogram: str = "spectrogram", standardize: bool = True,
                    val_fraction: float = 0.1, split_seed: int = 0, num_workers: int = 4) -> DecodedPairs:
    if data_root is None:
        raise UserError("dataset paired-manifest needs --data-root MANIFEST.csv")
    if spectrogram not in SPECTROGRAMS:
        raise UserError(f"paired-manifest: spectrogram must be one of {', '.join(SPECTROGRAMS)}, got {spectrogram!r}")
    if image_size < 8 or seconds <= 0 or sample_rate < 1000:
        raise UserError(f"paired-manifest needs image_size >= 8, seconds > 0 and sample_rate >= 1000 "
                        f"(got {image_size}, {seconds:g}, {sample_rate})")
    decoding = Decoding(image_size, augment, AudioFeatures(spectrogram, sample_rate, seconds, SPECTROGRAMS[spectrogram]), standardize)
    modalities, rows = _read_rows(data_root)
    labels, num_classes = _labels(data_root, rows)
    columns = {m: _column(data_root, rows, m) for m in modalities}
    kinds = {m: kind for m, (_, kind) in columns.items()}
    shapes = {m: _shape(kind, files[0], decoding) for m, (files, kind) in columns.items()}
    positions = _splits(data_root, rows, labels, val_fraction, split_seed)
    readers = {split: ManifestReader({m: [files[i] for i in rows_] for m, (files, _) in columns.items()}, kinds, shapes,
                                     labels[rows_], decoding)
               for split, rows_ in positions.items()}
    spec = DatasetSpec(
        name="paired-manifest", task="classification", num_classes=num_classes,
        modalities={m: Modality(shapes[m], "mlp" if len(shapes[m]) == 1 else "small-cnn", f"{kinds[m]} files") for m in modalities},
        teacher_modality=modalities[0], student_modality=modalities[1],
        recipe=Recipe(epochs=30, batch_size=64, lr=1e-3, optimizer="adamw", momentum=0.9, weight_decay=1e-4, schedule="cosine"),
        split_sizes={split: len(rows_) for split, rows_ in positions.items()},
        recipe_source="generic defaults for small bring-your-own data (AdamW 1e-3, cosine, 30 epochs), as paired-npz",
        options={"image_size": image_size, "augment": augment, "seconds": seconds, "sample_rate": sample_rate,
                 "spectrogram": spectrogram, "standardize": standardize, "val_fraction": val_fraction,
                 "split_seed": split_seed, "sha256": file_sha256(data_root)},
    )
    return DecodedPairs(spec, readers, num_workers)
