"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): the student matches where the teacher looks.

The attention map of a stage map A (C x H x W) is Q = mean_c |A_c|^p (p = 2), flattened and
L2-normalised per sample. Student and teacher stages are paired by position in `stages`, and

    loss = CE + beta / 2 * sum_pairs mean_{b, hw} (Q_s - Q_t)^2

which is the official code's form (at_loss = (at(x) - at(y)).pow(2).mean(), beta = 1e3).
Across modalities the two maps rarely share a spatial size, so the student's attention map (not
its features) is resized to the teacher's by adaptive average pooling before normalising: it
averages over cells when shrinking and repeats cells when growing, and keeps the map's total
energy per area. The paper transfers all residual groups; the default here is the last stage,
because early stages are the most modality-specific (set `stages=0,1,2` for the paper's choice).
For segmentation the formula is unchanged; a dense model's stages end with "decoder", so `last`
transfers the attention of the map the segmentation head reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_bench.method import Method
from cmkd_bench.models import ModelInfo
from cmkd_bench.registry import METHODS


def attention_map(stage: Tensor, p: float, size: tuple[int, ...] | None = None) -> Tensor:
    """B x C x H x W -> B x (H'W'): channel mean of |A|^p, pooled to `size`, L2-normalised (>= float32)."""
    energy = (stage if stage.dtype == torch.float64 else stage.float()).abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None and tuple(energy.shape[2:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy, size)
    return F.normalize(energy.flatten(1), dim=1)


def stage_pairs(student: ModelInfo, teacher: ModelInfo, stages: str) -> list[tuple[str, str]]:
    """Resolve each comma-separated stage reference on both models; pairs go by position."""
    refs = [ref.strip() for ref in stages.split(",") if ref.strip()]
    if not refs:
        raise ValueError(f"stages must name at least one stage (e.g. 'last' or '1,2'), got {stages!r}")
    pairs = [(student.stage(ref), teacher.stage(ref)) for ref in refs]
    for s, t in pairs:
        for who, info, name in (("student", student, s), ("teacher", teacher, t)):
            if len(info.stage_shapes[name]) != 3:
                raise ValueError(f"attention transfer needs C x H x W stage maps; {who} stage {name!r} "
                                 f"has shape {info.stage_shapes[name]}")
    return pairs


@METHODS.register("at", aliases=("attention-transfer",), tasks=("classification", "segmentation"),
                  description="MSE between L2-normalised spatial attention maps (channel mean of |A|^p)",
                  reference="Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017")
class AttentionTransfer(Method):
    def __init__(self, student, teacher, spec, stages: str = "last", beta: float = 1000.0, p: float = 2.0):
        super().__init__(student, teacher, spec)
        if beta < 0 or p <= 0:
            raise ValueError(f"need beta >= 0 and p > 0, got beta={beta}, p={p}")
        self.pairs = stage_pairs(student, teacher, stages)
        self.sizes = [teacher.stage_shapes[t][1:] for _, t in self.pairs]
        self.beta, self.p = beta, p

    def forward(self, student, teacher, batch):
        at = sum((attention_map(student.stages[s], self.p, size)
                  - attention_map(teacher.stages[t].detach(), self.p)).pow(2).mean()
                 for (s, t), size in zip(self.pairs, self.sizes))
        return {"ce": self.task_loss(student.logits, batch["label"]), "at": self.beta / 2 * at}
