"""FitNets hints (Romero et al., ICLR 2015): regress the teacher's feature map from the student's.

For segmentation the stages of a dense model end with "decoder" (the map the segmentation head
reads), so the default `last` hints the decoder feature, the usual choice in segmentation KD
(e.g. the feature baselines of Liu et al., CVPR 2019); `-2` picks the last encoder stage.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


def projector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """A learned regressor from the student's channels to the teacher's (1x1 conv for maps)."""
    if len(student_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    return nn.Sequential(nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False), nn.BatchNorm2d(teacher_shape[0]))


@METHODS.register("fitnet", aliases=("fitnets", "hint"), tasks=("classification", "segmentation"),
                  description="MSE between a learned projection of a student stage and the teacher's stage",
                  reference="Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015")
class FitNet(Method):
    def __init__(self, student, teacher, spec, student_stage: str = "last", teacher_stage: str = "last",
                 weight: float = 1.0):
        super().__init__(student, teacher, spec)
        self.student_stage, self.teacher_stage = student.stage(student_stage), teacher.stage(teacher_stage)
        s_shape, t_shape = student.stage_shapes[self.student_stage], teacher.stage_shapes[self.teacher_stage]
        if len(s_shape) != len(t_shape):
            raise ValueError(f"student stage {self.student_stage} {s_shape} and teacher stage {self.teacher_stage} {t_shape} differ in rank")
        self.target_size = t_shape[1:]
        self.regressor = projector(s_shape, t_shape)
        self.weight = weight

    def forward(self, student, teacher, batch):
        hint = self.regressor(student.stages[self.student_stage])
        if hint.dim() > 2 and hint.shape[2:] != self.target_size:
            hint = F.adaptive_avg_pool2d(hint, self.target_size)
        target = teacher.stages[self.teacher_stage].detach()
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "hint": self.weight * F.mse_loss(hint, target)}
