"""What a dataset declares (task, modalities, classes, splits, recipe) and how batches are served.

A batch is a dict: one tensor per modality, plus "label" and "index" (the sample's position in
its split, for methods that keep per-sample state such as a memory bank).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol as TypingProtocol

import numpy as np
import torch
from torch import Tensor

from ..distributed import shard
from ..errors import UserError
from .loading import PersistentLoader, batch_buffer
from .media import MediaError

if TYPE_CHECKING:
    from .text import TokenSpec

SPLITS = ("train", "val", "test")
TASKS = ("classification", "segmentation")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "poly", "constant")


@dataclass(frozen=True)
class Recipe:
    """The training recipe every method on a dataset shares (the fairness protocol)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0

    def updated(self, **changes: Any) -> "Recipe":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise UserError(f"unknown recipe setting {sorted(unknown)[0]!r}; recipe settings are {', '.join(f.name for f in fields(self))}")
        recipe = replace(self, **{k: v for k, v in changes.items() if v is not None})
        recipe.validate()
        return recipe

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.momentum < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise UserError("momentum, weight_decay and warmup_epochs must not be negative")
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Modality:
    shape: tuple[int, ...]  # per-sample shape
    backbone: str  # default backbone for this modality
    description: str = ""
    # text: the tensor is 2 x L token ids and attention mask, made with this vocabulary (cmkd_bench.data.text)
    tokens: "TokenSpec | None" = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    num_classes: int
    modalities: dict[str, Modality]
    # the dataset's default direction; a method is built with the run's (`with_direction`)
    teacher_modality: str
    student_modality: str
    recipe: Recipe
    split_sizes: dict[str, int]
    ignore_index: int = -100
    recipe_source: str = ""  # where the recipe's defaults come from
    options: dict[str, Any] = field(default_factory=dict)  # resolved dataset options

    def modality(self, name: str) -> Modality:
        if name not in self.modalities:
            raise UserError(f"dataset {self.name!r} has no modality {name!r}; its modalities are {', '.join(self.modalities)}")
        return self.modalities[name]

    def with_direction(self, teacher_modality: str, student_modality: str) -> "DatasetSpec":
        """This spec with a run's direction: how the harness tells a method which modality is whose."""
        self.modality(teacher_modality), self.modality(student_modality)
        return replace(self, teacher_modality=teacher_modality, student_modality=student_modality)


def check_classes(spec: DatasetSpec, labels: dict[str, Any]) -> None:
    """A classification dataset whose splits each hold two classes or more: with one, every
    prediction is right (a teacher and a student at 100.00 that learned nothing). `labels`: each
    split's labels where they are known without reading samples."""
    if spec.task != "classification":
        return
    if spec.num_classes < 2:
        raise UserError(f"dataset {spec.name!r} has {spec.num_classes} class; classification needs two or more "
                        f"(check its label column or array)")
    for split, values in labels.items():
        present = sorted({int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)})
        if len(present) < 2:
            raise UserError(f"dataset {spec.name!r}: its {split} split holds samples of one class only "
                            f"({present[0] if present else 'none'}); every split needs two classes or more "
                            f"(check the data's labels and split column)")


class PairedData:
    """A dataset with paired modalities and train/val/test splits.

    `batches(..., part=(rank, world))` yields rank's contiguous part of every batch (torchrun;
    cmkd_bench.distributed.shard); the batches themselves do not depend on `part`. A part that
    would be empty (a last evaluation batch smaller than the world) is skipped.
    """

    spec: DatasetSpec

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | str = "cpu", part: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Tensor]]:
        raise NotImplementedError

    def num_batches(self, split: str, batch_size: int, *, shuffle: bool) -> int:
        raise NotImplementedError

    def fixed_modalities(self, split: str) -> frozenset[str]:
        """Modalities whose value for a sample is the same in every shuffled epoch of `split` as in
        an unshuffled pass (no augmentation, no random choice); a frozen teacher's outputs on them
        can be computed once (cmkd_bench/training/teacher_outputs.py). Default: none."""
        return frozenset()


class TensorPairs(PairedData):
    """Paired data held in memory as tensors; batches are index slices (no DataLoader needed).

    Training batches drop the last incomplete batch (BatchNorm needs more than one sample) unless
    the split is smaller than one batch, in which case the whole split is one batch.
    """

    def __init__(self, spec: DatasetSpec, splits: dict[str, dict[str, Tensor]]) -> None:
        for split in SPLITS:
            if split not in splits or len(splits[split]["label"]) == 0:
                raise UserError(f"dataset {spec.name!r} has an empty {split} split; every split needs samples")
        check_classes(spec, {split: splits[split]["label"] for split in SPLITS})
        self.spec = spec
        self.splits = splits
        self._on_device: dict[tuple[str, str], dict[str, Tensor]] = {}

    def size(self, split: str) -> int:
        return len(self.splits[split]["label"])

    def fixed_modalities(self, split: str) -> frozenset[str]:
        return frozenset(self.spec.modalities)  # served as stored

    def _tensors(self, split: str, device: torch.device | str) -> dict[str, Tensor]:
        key = (split, str(device))
        if key not in self._on_device:
            self._on_device[key] = {k: v.to(device) for k, v in self.splits[split].items()}
        return self._on_device[key]

    def num_batches(self, split: str, batch_size: int, *, shuffle: bool) -> int:
        n = self.size(split)
        if shuffle:
            return max(1, n // batch_size)
        return -(-n // batch_size)

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | str = "cpu", part: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Tensor]]:
        tensors = self._tensors(split, device)
        n = self.size(split)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
        else:
            order = torch.arange(n, device=device)
        count = self.num_batches(split, batch_size, shuffle=shuffle)
        for b in range(count):
            idx = shard(order[b * batch_size:(b + 1) * batch_size], part)
            if len(idx) == 0:
                continue
            batch = {k: v.index_select(0, idx) for k, v in tensors.items()}
            batch["index"] = idx
            yield batch


def stratified_split(labels: Tensor, fractions: tuple[float, ...], seed: int) -> list[Tensor]:
    """Split sample indices into parts with the given fractions, class by class, seeded."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in fractions]
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        bounds = torch.tensor([0.0, *torch.tensor(fractions).cumsum(0).tolist()]) * len(members)
        bounds = bounds.round().long().tolist()
        bounds[-1] = len(members)
        for i in range(len(fractions)):
            parts[i].append(members[bounds[i]:bounds[i + 1]])
    return [torch.sort(torch.cat(p)).values for p in parts]


SPLIT_NAMES = {0: "train", 1: "val", 2: "test"}


# -- augmentation and per-sample decoding --------------------------------------------------------
# A transform takes one sample (modality tensors and "label") and its seed, and returns the sample.
SampleTransform = Callable[[dict[str, Tensor], int], dict[str, Tensor]]


@dataclass(frozen=True)
class SampleSeed:
    """Everything random about one training sample: the seed given to `batches` and the sample's index.

    Never global random state: a resumed run draws the augmentations an uninterrupted run drew,
    whichever DataLoader worker decodes the sample. One numpy SeedSequence of (seed, index) gives
    both forms a decoder may want: `int(...)` (albumentations' set_random_seed, transforms) and
    `rng()` (a numpy Generator).
    """

    seed: int
    index: int

    def sequence(self) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed & (2**64 - 1), self.index])

    def __int__(self) -> int:
        return int(self.sequence().generate_state(1)[0])

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.sequence())


def sample_seed(seed: int, index: int) -> int:
    """One sample's augmentation seed as an integer (see `SampleSeed`)."""
    return int(SampleSeed(seed, index))


def augments(split: str, shuffle: bool) -> bool:
    """Only shuffled training batches are augmented; evaluation sees the data as it is."""
    return split == "train" and shuffle


class AugmentedPairs(PairedData):
    """In-memory paired data whose training batches pass every sample through a transform.

    The transform runs on the CPU (albumentations works on arrays), then the batch moves to the
    device. Batch order and everything else are the wrapped data's.
    """

    def __init__(self, data: TensorPairs, transform: SampleTransform) -> None:
        self.data, self.transform, self.spec = data, transform, data.spec
        self.splits = data.splits

    def size(self, split: str) -> int:
        return self.data.size(split)

    def num_batches(self, split: str, batch_size: int, *, shuffle: bool) -> int:
        return self.data.num_batches(split, batch_size, shuffle=shuffle)

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | str = "cpu", part: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Tensor]]:
        if not augments(split, shuffle):
            yield from self.data.batches(split, batch_size, shuffle=shuffle, seed=seed, device=device, part=part)
            return
        for batch in self.data.batches(split, batch_size, shuffle=True, seed=seed, device="cpu", part=part):
            samples = [self.transform({k: v[i] for k, v in batch.items() if k != "index"}, sample_seed(seed, index))
                       for i, index in enumerate(batch["index"].tolist())]
            out = {k: torch.stack([sample[k] for sample in samples]).to(device) for k in samples[0]}
            out["index"] = batch["index"].to(device)
            yield out


class SampleReader(TypingProtocol):
    """One split's samples, decoded on demand (DataLoader workers get a pickled copy: open files lazily).

    A classification reader may hold `labels` (one class id per sample, known up front): the batch's
    "label" then comes from there (and `DecodedPairs.labels` works); otherwise `read` returns it.
    """

    def __len__(self) -> int: ...

    def read(self, index: int, seed: SampleSeed | None) -> dict[str, np.ndarray | Tensor]:
        """The sample's modality arrays (and "label" unless the reader has `labels`); `seed` is
        None outside shuffled training batches (no augmentation)."""


@dataclass(frozen=True)
class SampleFailure:
    """A sample that did not decode; carried through the DataLoader so the user sees one line."""

    message: str


class _SplitView:
    """One split of a `DecodedPairs`: a batch description (seed or None, sample indices) -> a collated
    batch (what the split's `PersistentLoader` workers run; readers open files lazily)."""

    def __init__(self, reader: SampleReader) -> None:
        self.reader = reader
        self.labels = getattr(reader, "labels", None)

    def sample(self, index: int, seed: int | None) -> dict[str, Tensor] | SampleFailure:
        try:
            arrays = self.reader.read(index, None if seed is None else SampleSeed(seed, index))
        except (MediaError, UserError) as exc:
            return SampleFailure(str(exc))
        sample = {name: torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
                  for name, value in arrays.items()}
        if self.labels is not None:
            sample["label"] = torch.tensor(int(self.labels[index]), dtype=torch.long)
        sample["index"] = torch.tensor(index, dtype=torch.long)
        return sample

    def __call__(self, item: tuple[int | None, list[int]]) -> dict[str, Tensor] | SampleFailure:
        seed, indices = item
        return _collate([self.sample(index, seed) for index in indices])


def _collate(samples: list) -> dict[str, Tensor] | SampleFailure:
    for sample in samples:
        if isinstance(sample, SampleFailure):
            return sample
    out = {}
    for key in samples[0]:
        first = samples[0][key]
        out[key] = torch.stack([s[key] for s in samples], out=batch_buffer((len(samples), *first.shape), first.dtype))
    return out


class DecodedPairs(PairedData):
    """Paired data decoded one sample at a time by a DataLoader (data too large to hold in memory).

    `readers[split]` reads one split (see `SampleReader`). Batches follow TensorPairs' rules and
    form ({modality: tensor, "label", "index"}, index = position in the split); their order comes
    from the seed given to `batches` alone, and a sample's augmentation from its `SampleSeed`, so
    `num_workers` decoding processes (0: this one) change no result. A sample that fails to decode
    (a `MediaError` or `UserError` in a worker) stops the iteration with one line naming it.
    """

    def __init__(self, spec: DatasetSpec, readers: dict[str, SampleReader], num_workers: int = 0) -> None:
        for split in SPLITS:
            if split not in readers or len(readers[split]) == 0:
                raise UserError(f"dataset {spec.name!r} has an empty {split} split; every split needs samples")
        if num_workers < 0:
            raise UserError(f"num_workers must be 0 or more, got {num_workers}")
        check_classes(spec, {split: readers[split].labels for split in SPLITS
                             if getattr(readers[split], "labels", None) is not None})
        self.spec, self.readers, self.num_workers = spec, readers, num_workers
        self._loaders: dict[tuple[str, bool], PersistentLoader] = {}

    def _loader(self, split: str, pin: bool) -> PersistentLoader:
        """The split's DataLoader, made once: its workers persist across epochs (cmkd_bench/data/loading.py)."""
        if (split, pin) not in self._loaders:
            self._loaders[(split, pin)] = PersistentLoader(_SplitView(self.readers[split]), self.num_workers, pin)
        return self._loaders[(split, pin)]

    def size(self, split: str) -> int:
        return len(self.readers[split])

    def fixed_modalities(self, split: str) -> frozenset[str]:
        """What the split's reader declares (`fixed_modalities`, default none)."""
        return frozenset(getattr(self.readers[split], "fixed_modalities", ()))

    def labels(self, split: str) -> Tensor:
        """Every class id of the split, by position (readers that hold `labels` only)."""
        return torch.as_tensor(self.readers[split].labels, dtype=torch.long)

    num_batches = TensorPairs.num_batches  # the same rule: drop the last incomplete training batch

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | str = "cpu", part: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Tensor]]:
        n, device = self.size(split), torch.device(device)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        count = self.num_batches(split, batch_size, shuffle=shuffle)
        chunks = [chunk for b in range(count) if (chunk := shard(order[b * batch_size:(b + 1) * batch_size], part).tolist())]
        seed_or_none = seed if augments(split, shuffle) else None
        for batch in self._loader(split, device.type == "cuda").iterate([(seed_or_none, chunk) for chunk in chunks]):
            if isinstance(batch, SampleFailure):
                name = self.spec.name
                raise UserError(batch.message if batch.message.startswith(f"{name}:") else f"{name}: {batch.message}")
            yield {key: value.to(device, non_blocking=True) for key, value in batch.items()}
