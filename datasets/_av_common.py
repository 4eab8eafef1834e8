"""What the real audio-visual loaders share: per-sample decoding through a DataLoader, the
prepared-clip reader, the literature's recipe, and split-file helpers.

Real datasets do not fit in memory, so `DecodedPairs` decodes each sample when a batch asks for
it (JPEG frames, .npy spectrograms) in `num_workers` DataLoader processes. Batches have the same
form as `TensorPairs`' ({modality: tensor, "label", "index"}, index = position in the split) and
the same count (shuffled training batches drop the last incomplete one unless the split is
smaller than a batch). Everything random is a function of `batches(seed=...)`: the order comes
from a torch.Generator seeded with it, and a sample's augmentation (frame choice, crop, flip,
audio window) from numpy's generator seeded with (seed, index), so a resumed epoch decodes the
same samples as the interrupted one, whatever the number of workers.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from cmkd_bench.data import DatasetSpec, Modality, PairedData, Recipe, stratified_split
from cmkd_bench.errors import UserError
from cmkd_bench.media import AudioFeatures, MediaError, image_array, random_resized_box, read_image
from cmkd_bench.prepare import CLIPS_CSV, audio_file, clips_fingerprint, frame_file, read_info

VIDEO_RECIPE = Recipe(epochs=100, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                      schedule="poly")
VIDEO_RECIPE_SOURCE = ("C2KD (Huo et al., CVPR 2024) and FD-CMKD (Liu et al., AAAI 2026): ResNet-18 per modality "
                       "(1-channel audio), SGD lr 0.01 momentum 0.9, poly decay, 100 epochs, batch 64; weight decay "
                       "1e-4 as in OGM-GE (Peng et al., CVPR 2022)")
SEED_MODULUS = 2**63


# -- decoding per sample through a DataLoader ------------------------------------------------------
class SampleReader(Protocol):
    """One split's samples: labels up front, arrays decoded on demand."""

    labels: np.ndarray

    def read(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """The sample's modality arrays; rng is None outside training (no augmentation)."""


@dataclass(frozen=True)
class SampleFailure:
    """A sample that did not decode; carried through the DataLoader so the user sees one line."""

    message: str


class _SplitView(torch.utils.data.Dataset):
    def __init__(self, reader: SampleReader, seed: int | None) -> None:
        self.reader, self.seed = reader, seed

    def __len__(self) -> int:
        return len(self.reader.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor] | SampleFailure:
        rng = np.random.default_rng([self.seed, index]) if self.seed is not None else None
        try:
            arrays = self.reader.read(index, rng)
        except (MediaError, UserError) as exc:
            return SampleFailure(str(exc))
        sample = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
        sample["label"] = torch.tensor(int(self.reader.labels[index]), dtype=torch.long)
        sample["index"] = torch.tensor(index, dtype=torch.long)
        return sample


def _collate(samples: list) -> dict[str, Tensor] | SampleFailure:
    for sample in samples:
        if isinstance(sample, SampleFailure):
            return sample
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; intra-op threads would only contend


class DecodedPairs(PairedData):
    """Paired data decoded per sample by a DataLoader (see the module docstring)."""

    def __init__(self, spec: DatasetSpec, readers: dict[str, SampleReader], num_workers: int = 0) -> None:
        for split in ("train", "val", "test"):
            if split not in readers or len(readers[split].labels) == 0:
                raise UserError(f"dataset {spec.name!r} has an empty {split} split; every split needs samples")
        if num_workers < 0:
            raise UserError(f"num_workers must be 0 or more, got {num_workers}")
        self.spec, self.readers, self.num_workers = spec, readers, num_workers

    def size(self, split: str) -> int:
        return len(self.readers[split].labels)

    def labels(self, split: str) -> Tensor:
        return torch.as_tensor(self.readers[split].labels, dtype=torch.long)

    def num_batches(self, split: str, batch_size: int, *, shuffle: bool) -> int:
        n = self.size(split)
        return max(1, n // batch_size) if shuffle else -(-n // batch_size)

    def _batch_indices(self, split: str, batch_size: int, shuffle: bool, seed: int) -> list[list[int]]:
        n = self.size(split)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        count = self.num_batches(split, batch_size, shuffle=shuffle)
        return [order[b * batch_size:(b + 1) * batch_size].tolist() for b in range(count)]

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | str = "cpu") -> Iterator[dict[str, Tensor]]:
        device = torch.device(device)
        augment_seed = seed % SEED_MODULUS if shuffle and split == "train" else None
        loader = torch.utils.data.DataLoader(
            _SplitView(self.readers[split], augment_seed), batch_sampler=self._batch_indices(split, batch_size, shuffle, seed),
            num_workers=self.num_workers, collate_fn=_collate, pin_memory=device.type == "cuda",
            worker_init_fn=_single_thread if self.num_workers else None)
        for batch in loader:
            if isinstance(batch, SampleFailure):
                raise UserError(f"{self.spec.name}: {batch.message}")
            yield {key: value.to(device, non_blocking=True) for key, value in batch.items()}


# -- prepared clips (the layout `cmkd-bench prepare` writes) -----------------------------------------
@dataclass(frozen=True)
class ClipOptions:
    """How a prepared clip becomes tensors; the dataset options of the video loaders."""

    image_size: int = 224
    frames: int = 1
    audio_frames: int = 0  # spectrogram frames kept (the `seconds` option, converted)
    audio_window: str = "start"  # "start": the first frames, as the reference code; "random": random at train, centre at test
    augment: bool = True
    standardize: bool = True


@dataclass
class ClipReader:
    root: Path
    names: list[str]
    labels: np.ndarray
    frame_counts: np.ndarray
    options: ClipOptions

    def read(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        return {"visual": self._visual(index, rng), "audio": self._audio(index, rng)}

    def _frame_indices(self, available: int, rng: np.random.Generator | None) -> list[int]:
        wanted = self.options.frames
        if rng is not None:  # training: random frames, in temporal order (OGM-GE)
            return sorted(rng.choice(available, size=wanted, replace=available < wanted).tolist())
        # evaluation: evenly spaced and centred, so one frame is the middle one
        return [int(i) for i in np.floor(np.linspace(0, available, wanted + 2)[1:-1]).clip(0, available - 1)]

    def _visual(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        name, options = self.names[index], self.options
        images = [read_image(frame_file(self.root, name, i)) for i in self._frame_indices(int(self.frame_counts[index]), rng)]
        box, flip = None, False
        if rng is not None and options.augment:  # RandomResizedCrop + horizontal flip, one draw per clip
            box = random_resized_box(rng, *images[0].size)
            flip = bool(rng.random() < 0.5)
        return np.concatenate([image_array(im, options.image_size, box, flip) for im in images])

    def _audio(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        path = audio_file(self.root, self.names[index])
        spectrogram = load_npy(path)
        wanted = self.options.audio_frames
        if spectrogram.ndim != 2 or spectrogram.shape[1] < wanted:
            raise MediaError(f"{path}: spectrogram has shape {spectrogram.shape}, needs F x {wanted} or longer; "
                             f"prepare again or use fewer seconds")
        spare = spectrogram.shape[1] - wanted
        start = 0
        if self.options.audio_window == "random":
            start = int(rng.integers(0, spare + 1)) if rng is not None else spare // 2
        crop = spectrogram[:, start:start + wanted].astype(np.float32)
        if self.options.standardize:  # per spectrogram, as the VGGSound / OGM-GE reference code
            crop = (crop - crop.mean()) / (crop.std() + 1e-9)
        return crop[None]


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MediaError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise MediaError(f"{path}: not a readable .npy file ({exc})") from None


@dataclass
class PreparedClips:
    root: Path
    classes: list[str]
    info: dict
    names: list[str]
    labels: np.ndarray
    splits: np.ndarray
    frame_counts: np.ndarray


def read_prepared(dataset: str, root: Path | None, num_classes: int) -> PreparedClips:
    if root is None:
        raise UserError(f"dataset {dataset} needs --data-root DIR, the folder written by "
                        f"`cmkd-bench prepare {dataset} --src RAW_DIR --dst DIR`")
    info = read_info(root, dataset)
    if len(info.get("classes", [])) != num_classes:
        raise UserError(f"{dataset}: {str(root)!r} has {len(info.get('classes', []))} classes, {dataset} has {num_classes}; prepare it again")
    with open(root / CLIPS_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        names = [r["clip"] for r in rows]
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        frames = np.array([int(r["frames"]) for r in rows], dtype=np.int64)
        splits = np.array([r["split"] for r in rows])
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{dataset}: {str(root / CLIPS_CSV)!r} is damaged; prepare the dataset again") from None
    return PreparedClips(root, info["classes"], info, names, labels, splits, frames)


def split_positions(labels: np.ndarray, splits: np.ndarray, val_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    """Row positions of each split; without a val split, a seeded stratified part of train (never test)."""
    positions = {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}
    if len(positions["val"]) == 0 and len(positions["train"]):
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        train = positions["train"]
        keep, held = stratified_split(torch.from_numpy(labels[train]), (1 - val_fraction, val_fraction), seed=split_seed)
        positions["train"], positions["val"] = train[keep.numpy()], train[held.numpy()]
    return positions


def check_image_options(dataset: str, image_size: int, frames: int) -> None:
    if image_size < 16:
        raise UserError(f"{dataset}: image_size must be at least 16, got {image_size}")
    if frames < 1:
        raise UserError(f"{dataset}: frames must be at least 1, got {frames}")


def audio_frames(dataset: str, info: dict, seconds: float) -> tuple[int, int]:
    """(spectrogram bins, frames kept) for `seconds` of the prepared audio."""
    features = AudioFeatures.from_description(info["audio"])
    if not 0 < seconds <= features.seconds:
        raise UserError(f"{dataset}: seconds must be in (0, {features.seconds:g}], the audio length prepared; got {seconds:g}")
    return features.bins(), features.frames_for(seconds)


def build_clip_dataset(name: str, root: Path | None, *, num_classes: int, teacher: str, student: str,
                       options: ClipOptions, seconds: float, val_fraction: float, split_seed: int,
                       num_workers: int, recorded: dict) -> DecodedPairs:
    """A video dataset from its prepared folder; `recorded` are the options that name the run."""
    check_image_options(name, options.image_size, options.frames)
    clips = read_prepared(name, root, num_classes)
    height, kept = audio_frames(name, clips.info, seconds)
    options = replace(options, audio_frames=kept)
    positions = split_positions(clips.labels, clips.splits, val_fraction, split_seed)
    readers = {split: ClipReader(clips.root, [clips.names[i] for i in rows], clips.labels[rows], clips.frame_counts[rows], options)
               for split, rows in positions.items()}
    size = options.image_size
    spec = DatasetSpec(
        name=name, task="classification", num_classes=num_classes,
        modalities={"visual": Modality((3 * options.frames, size, size), "resnet18",
                                       f"{options.frames} RGB frame(s) stacked on channels, ImageNet-normalised"),
                    "audio": Modality((1, height, kept), "resnet18", "log spectrogram (F x T), standardised per clip")},
        teacher_modality=teacher, student_modality=student, recipe=VIDEO_RECIPE,
        split_sizes={split: len(rows) for split, rows in positions.items()},
        recipe_source=VIDEO_RECIPE_SOURCE,
        options={**recorded, "prepared": clips_fingerprint(clips.root)},
    )
    return DecodedPairs(spec, readers, num_workers)


# -- reading the raw release's split files -----------------------------------------------------------
def require_file(dataset: str, path: Path, where: str) -> Path:
    """The split file `path`, or one line naming it and where the user gets it."""
    if not path.is_file():
        raise UserError(f"{dataset}: split file {str(path)!r} is missing; {where}")
    return path


def index_files(src: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Every file under src with one of the suffixes, by stem (first found wins)."""
    found: dict[str, Path] = {}
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            found.setdefault(path.stem, path)
    return found
