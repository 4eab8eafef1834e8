"""paired-npz: bring your own paired data as one .npz file.

The file holds one array per modality (first axis = samples; any trailing shape: vectors, images
C x H x W, spectrograms 1 x F x T; a 2-D trailing shape is read as a one-channel image), `label`
(integer class ids 0..C-1) and optionally `split` (0 train, 1 val, 2 test). Without `split`, a
seeded stratified 70/15/15 split is made. Modality names are the array names; the first two
arrays are the default teacher and student. The default backbone follows the array's rank: MLP
for vectors, the small CNN for images.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from cmkd_bench.artefacts.files import file_sha256
from cmkd_bench.data import SPLIT_NAMES, DatasetSpec, Modality, Recipe, TensorPairs, stratified_split
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

RESERVED = ("label", "split")
BATCH_KEYS = ("index",)  # what every batch also holds (the samples' index): no modality may be named so


def _load(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise UserError(f"{what}: file {str(path)!r} does not exist; pass --data-root FILE.npz")
    if path.is_dir():
        raise UserError(f"{what}: {str(path)!r} is a folder; pass --data-root FILE.npz")
    if not zipfile.is_zipfile(path):  # np.load would blame pickles (allow_pickle) for any other file
        raise UserError(f"{what}: {str(path)!r} is not an .npz file (an .npz is a zip archive of arrays); "
                        "write one with numpy.savez(PATH, label=..., MODALITY=...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{what}: {str(path)!r} is not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _check_arrays(path: Path, arrays: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    where = f"paired-npz {str(path)!r}"
    if "label" not in arrays:
        raise UserError(f"{where} has no 'label' array; add integer class ids as 'label'")
    labels = arrays["label"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where}: 'label' must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size == 0 or labels.min() < 0:
        raise UserError(f"{where}: 'label' must be non-empty class ids >= 0")
    absent = np.setdiff1d(np.arange(int(labels.max()) + 1), labels)
    if absent.size:
        raise UserError(f"{where}: 'label' has {np.unique(labels).size} classes but ids up to {int(labels.max())}; "
                        f"class ids must be 0..C-1, each used ({absent.size} unused, e.g. {int(absent[0])}); "
                        "renumber the labels")
    for name in BATCH_KEYS:
        if name in arrays:
            raise UserError(f"{where}: an array is named {name!r}, which every batch already holds (the samples' "
                            "index); rename that array")
    modalities = [name for name in arrays if name not in RESERVED]
    if len(modalities) < 2:
        raise UserError(f"{where} has {len(modalities)} modality array(s) ({', '.join(modalities) or 'none'}); cross-modal distillation needs two")
    for name in modalities:
        array = arrays[name]
        if array.shape[0] != labels.shape[0]:
            raise UserError(f"{where}: array {name!r} has {array.shape[0]} samples but 'label' has {labels.shape[0]}")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise UserError(f"{where}: array {name!r} has dtype {array.dtype}; modalities must be numeric")
        if array.ndim not in (2, 3, 4):
            raise UserError(f"{where}: array {name!r} has shape {array.shape}; use N x D, N x H x W or N x C x H x W")
        if 0 in array.shape[1:]:
            raise UserError(f"{where}: array {name!r} has shape {array.shape}: a sample of it holds no values")
        if not np.isfinite(array).all():
            raise UserError(f"{where}: array {name!r} contains NaN or infinite values")
    return modalities, labels


def _split_indices(path: Path, arrays: dict[str, np.ndarray], labels: np.ndarray, split_seed: int) -> dict[str, torch.Tensor]:
    if "split" not in arrays:
        parts = stratified_split(torch.from_numpy(labels), (0.70, 0.15, 0.15), seed=split_seed)
        return dict(zip(("train", "val", "test"), parts))
    split = arrays["split"]
    if split.shape != labels.shape or not np.isin(split, list(SPLIT_NAMES)).all():
        raise UserError(f"paired-npz {str(path)!r}: 'split' must have one entry per sample, each 0 (train), 1 (val) or 2 (test)")
    indices = {name: torch.from_numpy(np.nonzero(split == code)[0]) for code, name in SPLIT_NAMES.items()}
    for name, idx in indices.items():
        if len(idx) == 0:
            raise UserError(f"paired-npz {str(path)!r}: 'split' marks no {name} samples; every split needs samples")
    return indices


@DATASETS.register("paired-npz", aliases=("npz",), tasks=("classification",),
                   description="your own paired data: one .npz with an array per modality, 'label', optional 'split'")
def paired_npz(data_root: Path | None, split_seed: int = 0) -> TensorPairs:
    if data_root is None:
        raise UserError("dataset paired-npz needs --data-root FILE.npz")
    arrays = _load(data_root, "paired-npz")
    modalities, labels = _check_arrays(data_root, arrays)
    tensors = {}
    for name in modalities:
        array = torch.from_numpy(np.ascontiguousarray(arrays[name])).float()
        tensors[name] = array.unsqueeze(1) if array.dim() == 3 else array
    tensors["label"] = torch.from_numpy(labels).long()
    indices = _split_indices(data_root, arrays, labels, split_seed)
    splits = {name: {k: v[idx] for k, v in tensors.items()} for name, idx in indices.items()}
    spec = DatasetSpec(
        name="paired-npz", task="classification", num_classes=int(labels.max()) + 1,
        modalities={name: Modality(tuple(tensors[name].shape[1:]), "mlp" if tensors[name].dim() == 2 else "small-cnn")
                    for name in modalities},
        teacher_modality=modalities[0], student_modality=modalities[1],
        recipe=Recipe(epochs=30, batch_size=64, lr=1e-3, optimizer="adamw", momentum=0.9, weight_decay=1e-4, schedule="cosine"),
        split_sizes={name: len(idx) for name, idx in indices.items()},
        recipe_source="generic defaults for small bring-your-own data (AdamW 1e-3, cosine, 30 epochs)",
        options={"split_seed": split_seed, "sha256": file_sha256(data_root)},  # content, not path, names the data
    )
    return TensorPairs(spec, splits)
