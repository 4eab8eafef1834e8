"""The interface every distillation method implements (one file each in methods/).

A method is an `nn.Module` built from the student's and the teacher's `ModelInfo` and the
dataset spec, whose teacher_modality / student_modality are the run's direction (the harness
builds it with `spec.with_direction(...)`); its keyword constructor arguments are its
hyper-parameters. `forward` turns the two models' outputs into a dict of named, already weighted loss terms; the engine sums them,
logs each by name, and optimises the student together with the method's own parameters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .artefacts.files import atomic_save, load_checked
from .data.spec import DatasetSpec, PairedData
from .errors import UserError
from .models.features import FeatureModel, ModelInfo, ModelOutput


@dataclass
class RunContext:
    """What the runner tells a method before `prepare` (Method.context): the run's student model
    (before training), the student's recipe (a training.config.Recipe), the run's seed, its
    direction, and the extra teachers the method declared (`Method.extra_teachers`), trained and
    in eval mode: modality -> model."""

    student: FeatureModel
    recipe: Any
    seed: int
    teacher_modality: str
    student_modality: str
    cross_teachers: dict[str, FeatureModel] = field(default_factory=dict)


class Method(nn.Module):
    uses_teacher: ClassVar[bool] = True  # False: the engine never runs the teacher in training
    trains_teacher: ClassVar[bool] = False  # True: the teacher is optimised too, in train mode
    # with trains_teacher: the weight decay of the teacher's parameter group (None: the recipe's)
    teacher_weight_decay: ClassVar[float | None] = None
    needs: ClassVar[frozenset[str]] = frozenset()  # extra batch keys, e.g. {"index"} for memory banks
    # Hyper-parameters a method gained after records of it existed, with the value that computes what
    # those records computed: at that value a key stays out of the run's configuration, so earlier
    # runs keep their run ids (training.config.resolve); any other value is part of the run id.
    added_hparams: ClassVar[dict[str, Any]] = {}
    # Why the method needs a one-modality teacher, in a few words (None, the default: it also distils
    # from a multimodal teacher, `--teacher-modality a+b`). A multimodal teacher gives its fused logits,
    # its concatenated pooled feature and the stages of its encoder of the student's modality
    # (cmkd_bench/models/fusion.py); a method that reads the teacher's input of one modality or its
    # single backbone's parts says why here, and such a run is refused in one line before anything is written.
    unimodal_teacher_only: ClassVar[str | None] = None
    # The converse (None, the default: it also distils from a one-modality teacher): why the method
    # needs a multimodal teacher; such a run with a one-modality teacher is refused in one line.
    multimodal_teacher_only: ClassVar[str | None] = None
    # Teachers besides the run's that the method reads, obtained (trained once and cached like any
    # teacher) by the runner before `prepare` and handed over in `context.cross_teachers`:
    # "cross": with a multimodal teacher, the one-modality teacher of each of its other modalities
    # than the student's (each the teacher a run in that direction would use).
    extra_teachers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, student: ModelInfo, teacher: ModelInfo, spec: DatasetSpec) -> None:
        super().__init__()
        self.task = spec.task
        self.num_classes = spec.num_classes
        self.ignore_index = spec.ignore_index
        self.epoch = 0
        self.epochs = 1
        self.step = 0  # 1-based training step within the epoch; 0 outside a training step
        self.steps_per_epoch = 0
        self.context: RunContext | None = None  # set by the runner before prepare

    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the engine before each epoch (0-based), for schedules such as warm-ups."""
        self.epoch, self.epochs = epoch, epochs
        self.step = 0

    def on_step_start(self, step: int, steps_per_epoch: int) -> None:
        """Called by the engine before each training step (1-based within the epoch), for per-step schedules."""
        self.step, self.steps_per_epoch = step, steps_per_epoch

    def prepare(self, teacher: FeatureModel, data: PairedData, device: str, cache_dir: Path | None) -> None:
        """One-time step before student training (for example ranking teacher channels).

        `cache_dir` belongs to this run's teacher: results that depend only on the teacher and the
        data may be stored there and reused by later runs with the same teacher. `self.context`
        (a RunContext, set by the runner before this call) gives what else a stage-wise method
        needs: the student (which it may train here: the engine starts from its weights), the
        recipe, the seed and the `extra_teachers` it declared.
        """

    def teacher_reads(self) -> frozenset[str] | None:
        """The teacher outputs `forward` reads: "logits", "feature", "feature_post", "decoder",
        "stage:<name>"; None (the default) when it needs the teacher's live forward.

        A method that declares them, does not train the teacher, and runs on a dataset whose
        teacher input is not augmented is given those fields from a cache computed once per run
        (cmkd_bench/training/teacher_outputs.py); the other fields of its teacher `ModelOutput` are then None.
        """
        return None

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError


def cached_per_teacher(cache_dir: Path | None, prefix: str, key: dict, compute: Callable[[], Tensor]) -> Tensor:
    """A tensor that depends only on the teacher, the data and `key`, computed once per teacher.

    Stored as `<cache_dir>/<prefix>-<hash of key>.pt` (the teacher's cache folder, see `prepare`);
    a missing, damaged (its content is not the SHA-256 stored beside it), unreadable or stale file
    (another key) is recomputed and rewritten atomically. Under torchrun rank 0 loads or computes it
    and every rank gets rank 0's value: ranks that each computed it could disagree (a ranking from
    non-deterministic GPU kernels), and then would distil from different teachers.
    """
    return distributed.from_rank_0(lambda: _cached_or_computed(cache_dir, prefix, key, compute))


def _cached_or_computed(cache_dir: Path | None, prefix: str, key: dict, compute: Callable[[], Tensor]) -> Tensor:
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(cache_dir) / f"{prefix}-{digest}.pt"
        try:
            cached = load_checked(path, "cache", "recompute") if path.exists() else None
        except UserError:  # a damaged, torn or foreign file: recompute
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key and "value" in cached:
            return cached["value"]
    value = compute()
    if path is not None:
        atomic_save({"key": key, "value": value}, path)
    return value
