"""A frozen teacher's training-split outputs, computed once per run and gathered by sample index.

A teacher that the method does not train is in eval mode (BatchNorm on running statistics, no
dropout) during student training, so its output for one sample depends on that sample alone. When,
in addition, the teacher's input for a sample is the same in every epoch (the dataset declares it:
`PairedData.fixed_modalities`, default none; for a multimodal teacher, every modality it reads), the
outputs of every training step are known before training starts. `TeacherOutputs.compute` runs the teacher once over the training split (no
gradients, the run's autocast), keeps only the fields the method reads (`Method.teacher_reads`),
on the training device, and `gather` serves a batch's outputs by its "index": a student step then
costs no teacher forward.

Not cached (the live forward of every step stays), each with its reason in `CachePlan.reason`:
a method that trains the teacher (c2kd) or that does not declare what it reads; a teacher modality
whose training input is augmented or randomly chosen (a fusion teacher: any of its modalities);
outputs larger than `MAX_BYTES`.
Values equal the live forward's to float tolerance (a different batch composition may change the
last bits of a convolution); tests/test_teacher_outputs.py checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.spec import PairedData
from ..method import Method
from ..models.features import FeatureModel, ModelOutput
from ..models.fusion import model_input, modalities_of
from ..recipes import autocast  # the run's precision: what the live forward would give

MAX_BYTES = 4 << 30  # the largest cache kept on the device; beyond it the teacher runs every step
FIELDS = ("logits", "logits_native", "feature", "feature_post", "decoder")  # and "stage:<name>" for stage maps


@dataclass(frozen=True)
class CachePlan:
    cached: bool
    reason: str  # what the run record says: "cached" or why the teacher runs live


def plan(method: Method, teacher: FeatureModel | None, data: PairedData, teacher_modality: str | None,
         device: torch.device) -> CachePlan:
    """Whether this fit may serve the teacher's outputs from a cache, and if not, why."""
    if teacher is None or not method.uses_teacher:
        return CachePlan(False, "no teacher forward")
    if method.trains_teacher:
        return CachePlan(False, "live: the method trains the teacher")
    reads = method.teacher_reads()
    if reads is None:
        return CachePlan(False, "live: the method does not declare which teacher outputs it reads")
    fixed = data.fixed_modalities("train")
    for modality in modalities_of(teacher_modality or ""):  # a fusion teacher: every modality it reads
        if modality not in fixed:
            return CachePlan(False, f"live: the training input of modality {modality!r} is augmented")
    return CachePlan(True, "cached")  # unless it proves larger than MAX_BYTES (TeacherOutputs.compute)


class CacheTooLarge(Exception):
    """The cache would hold more than its limit: the teacher runs live (the reason is the message)."""


def too_large(nbytes: int, limit: int) -> str:
    return f"live: the teacher outputs would take {nbytes / 2**30:.1f} GiB (more than {limit / 2**30:.0f} GiB)"


class TeacherOutputs:
    """The fields a method reads of a frozen teacher's outputs, for every sample of one split."""

    def __init__(self, fields: dict[str, Tensor]) -> None:
        self.fields = fields

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.fields.values())

    @classmethod
    @torch.no_grad()
    def compute(cls, teacher: FeatureModel, data: PairedData, split: str, modality: str, reads: frozenset[str],
                device: torch.device, batch_size: int = 256, max_bytes: int = MAX_BYTES) -> "TeacherOutputs":
        """Every sample's fields, stored as they come out (under the run's autocast on CUDA a field is
        bf16 or float32 by layer: a normalisation's output stays float32), so the size is measured
        from the first batch, not assumed: beyond `max_bytes`, CacheTooLarge before allocating."""
        was_training = teacher.training
        teacher.eval()
        fields: dict[str, Tensor] = {}
        n = data.spec.split_sizes[split]
        try:
            with autocast(device):
                for batch in data.batches(split, batch_size, shuffle=False, device=device):
                    out = teacher(model_input(batch, modality))
                    in_order = [n for n in FIELDS if n in reads] + [f"stage:{n}" for n in out.stages if f"stage:{n}" in reads]
                    if len(in_order) != len(reads):
                        select(out, next(iter(reads - set(in_order))))  # the error naming the unknown field
                    if not fields:
                        per_sample = sum(select(out, name)[0].numel() * select(out, name).element_size()
                                         for name in in_order)
                        if per_sample * n > max_bytes:
                            raise CacheTooLarge(too_large(per_sample * n, max_bytes))
                    for name in in_order:  # stages in the model's order
                        value = select(out, name)
                        if name not in fields:
                            fields[name] = torch.empty((n, *value.shape[1:]), dtype=value.dtype, device=device)
                        fields[name].index_copy_(0, batch["index"].to(device), value)
        finally:
            teacher.train(was_training)
        return cls(fields)

    def gather(self, index: Tensor) -> ModelOutput:
        """The batch's outputs; the fields the method does not read are None (stages: absent)."""
        got = {name: t.index_select(0, index) for name, t in self.fields.items()}
        stages = {name.removeprefix("stage:"): t for name, t in got.items() if name.startswith("stage:")}
        return ModelOutput(logits=got.get("logits"), feature=got.get("feature"), feature_post=got.get("feature_post"),
                           stages=stages, decoder=got.get("decoder"),
                           logits_native=got.get("logits_native"))  # type: ignore[arg-type]


def select(out: ModelOutput, name: str) -> Tensor:
    if name.startswith("stage:"):
        stage = name.removeprefix("stage:")
        if stage not in out.stages:
            raise ValueError(f"unknown teacher output {name!r}; the teacher's stages are {', '.join(out.stages)}")
        return out.stages[stage]
    if name not in FIELDS:
        raise ValueError(f"unknown teacher output {name!r}; fields are {', '.join(FIELDS)} or stage:<name>")
    return getattr(out, name)
