"""av-mnist: AV-MNIST (Vielzeuf et al., CentralNet, ECCV-W 2018), spoken and written digits, 10 classes.

Read from the `.npy` release layout of MultiBench (Liang et al., NeurIPS 2021 Datasets and
Benchmarks; github.com/pliang279/MultiBench, datasets/avmnist/get_data.py), which MST-Distill's
loader reads too (Gray-OREO/MST-Distill, utils.py `get_av_mnist`):

    avmnist/image/train_data.npy   60000 x 784 (or x 28 x 28): MNIST digits, PCA-degraded
    avmnist/image/test_data.npy    10000 x 784
    avmnist/audio/train_data.npy   60000 x 12544 (or x 112 x 112): spectrograms of spoken digits
    avmnist/audio/test_data.npy    10000 x 12544
    avmnist/train_labels.npy       60000 class ids 0-9 (integers, or integer-valued floats)
    avmnist/test_labels.npy        10000

Protocol `multibench` (the only one), as get_data.py: the first 55,000 training samples train, the
last 5,000 (`val_size`) validate, the 10,000 test samples test; values divided by 255; labels cast
to integers (`astype(int)`, so labels stored as integer-valued floats are accepted; other floats
are refused). MST-Distill instead pools train and test, min-max normalises each modality and splits
60/20/20 at random from a permutation file (utils.py `get_indices`, metadata/ on Google Drive), so
its numbers are not comparable with this protocol's.
`--data-root` may be the release folder itself; `cmkd-bench prepare av-mnist --src avmnist/
--dst DIR` only checks every array and links them into DIR. Samples are read from memory-mapped
arrays, so the 60000 x 12544 audio array is never loaded whole.

    cmkd-bench run --method fd --dataset av-mnist --data-root avmnist/

Backbone: MultiBench's AV-MNIST encoders are small LeNet-style CNNs, so the default here is the
suite's `small-cnn`, not ResNet-18. The recipe is the suite's shared CMKD recipe (SGD lr 0.01,
momentum 0.9, poly decay, 100 epochs, batch 64), as for the video datasets.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmkd_bench.artefacts.files import file_sha256
from cmkd_bench.data import DatasetSpec, DecodedPairs, Modality, SampleSeed
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import VIDEO_RECIPE

NUM_CLASSES, TRAIN_TOTAL = 10, 60000
SHAPES = {"visual": (1, 28, 28), "audio": (1, 112, 112)}
FOLDERS = {"visual": "image", "audio": "audio"}
WHERE = "--data-root must be the AV-MNIST folder of MultiBench's release (image/, audio/, *_labels.npy)"
RECIPE_SOURCE = ("suite's shared CMKD recipe (SGD lr 0.01 momentum 0.9, poly, 100 epochs, batch 64); small-cnn because "
                 "MultiBench's AV-MNIST encoders are LeNet-style CNNs (Liang et al., NeurIPS 2021 D&B)")


def release_files(root: Path) -> dict[tuple[str, str], Path]:
    """(part, split) -> file, part being visual, audio or label."""
    files = {("label", split): root / f"{split}_labels.npy" for split in ("train", "test")}
    for modality, folder in FOLDERS.items():
        files.update({(modality, split): root / folder / f"{split}_data.npy" for split in ("train", "test")})
    return files


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"av-mnist: {str(path)!r} is missing; {WHERE}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"av-mnist: {str(path)!r} is not a readable .npy file ({exc})") from None


def _class_ids(labels: np.ndarray) -> bool:
    """Class ids 0-9, stored as integers or as integer-valued floats (some copies of the release store 3.0)."""
    if labels.size == 0 or not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        return False
    values = np.asarray(labels)
    if np.issubdtype(values.dtype, np.floating) and not (np.isfinite(values).all() and (values == np.round(values)).all()):
        return False
    return bool(values.min() >= 0 and values.max() < NUM_CLASSES)


def check_release(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every array opened (memory-mapped) and checked against the others; one line per problem."""
    if not root.is_dir():
        raise UserError(f"av-mnist: {str(root)!r} is not a folder; {WHERE}")
    arrays = {key: _open(path) for key, path in release_files(root).items()}
    for split in ("train", "test"):
        labels = arrays[("label", split)]
        if labels.ndim != 1 or not _class_ids(labels):
            raise UserError(f"av-mnist: {split}_labels.npy must hold class ids 0-9, one per sample "
                            f"(integers, or floats with integer values); it has shape {labels.shape}, dtype {labels.dtype}")
        for modality, shape in SHAPES.items():
            array = arrays[(modality, split)]
            if len(array) != len(labels) or int(np.prod(array.shape[1:])) != int(np.prod(shape)):
                raise UserError(f"av-mnist: {FOLDERS[modality]}/{split}_data.npy has shape {array.shape}; "
                                f"expected {len(labels)} samples of {shape[1]} x {shape[2]} values")
    return arrays


@dataclass
class AvMnistReader:
    """One split of the release: rows `rows` of the memory-mapped arrays, opened once per process."""

    files: dict[str, Path]
    rows: np.ndarray
    labels: np.ndarray
    normalise: bool
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int, seed: SampleSeed | None) -> dict[str, np.ndarray]:
        if not self._arrays:
            self._arrays = {m: np.load(path, mmap_mode="r") for m, path in self.files.items()}
        row = int(self.rows[index])
        scale = 255.0 if self.normalise else 1.0
        return {m: (np.asarray(self._arrays[m][row], dtype=np.float32) / scale).reshape(SHAPES[m]) for m in SHAPES}


@DATASETS.register("av-mnist", aliases=("avmnist",), tasks=("classification",),
                   prepare=lambda src, dst, workers, force, console: link_release(src, dst, console),
                   description="AV-MNIST (10 digits): 28 x 28 image + 112 x 112 audio spectrogram; MultiBench .npy layout",
                   reference="Vielzeuf et al., CentralNet, ECCV-W 2018; release and split of MultiBench (NeurIPS 2021 D&B)")
def av_mnist(data_root: Path | None, protocol: str = "multibench", val_size: int = 5000, normalize: bool = True,
             num_workers: int = 0) -> DecodedPairs:
    if protocol != "multibench":
        raise UserError(f"av-mnist: unknown protocol {protocol!r}; av-mnist has one, multibench (MultiBench's release and split)")
    if data_root is None:
        raise UserError(f"dataset av-mnist needs --data-root DIR; {WHERE}")
    arrays = check_release(data_root)
    train_labels = np.asarray(arrays[("label", "train")])
    if not 0 < val_size < len(train_labels):
        raise UserError(f"av-mnist: val_size must be between 1 and {len(train_labels) - 1}, got {val_size}")
    cut = len(train_labels) - val_size
    files = release_files(data_root)
    parts = {"train": ("train", np.arange(cut)), "val": ("train", np.arange(cut, len(train_labels))),
             "test": ("test", np.arange(len(arrays[("label", "test")])))}
    readers = {split: AvMnistReader({m: files[(m, source)] for m in SHAPES}, rows,
                                    np.asarray(arrays[("label", source)])[rows].astype(np.int64), normalize)
               for split, (source, rows) in parts.items()}
    spec = DatasetSpec(
        name="av-mnist", task="classification", num_classes=NUM_CLASSES,
        modalities={"visual": Modality(SHAPES["visual"], "small-cnn", "28 x 28 PCA-degraded digit image"),
                    "audio": Modality(SHAPES["audio"], "small-cnn", "112 x 112 spoken-digit spectrogram")},
        teacher_modality="visual", student_modality="audio", recipe=VIDEO_RECIPE,
        split_sizes={split: len(rows) for split, (_, rows) in parts.items()}, recipe_source=RECIPE_SOURCE,
        options={"protocol": protocol, "val_size": val_size, "normalize": normalize,
                 "labels": file_sha256(files[("label", "train")])[:16] + file_sha256(files[("label", "test")])[:16]},
    )
    return DecodedPairs(spec, readers, num_workers)


def link_release(src: Path, dst: Path, console) -> None:
    """`prepare av-mnist`: check the release, then link (or, where links fail, copy) it into dst."""
    arrays = check_release(src)
    for (part, split), path in release_files(src).items():
        target = release_files(dst)[(part, split)]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.symlink(path.resolve(), target)
        except OSError:
            shutil.copyfile(path, target)
    sizes = {split: len(arrays[("label", split)]) for split in ("train", "test")}
    console.print(f"av-mnist release checked ({sizes['train']} train, {sizes['test']} test) and linked into {dst}; "
                  f"use `--data-root {dst}`")
