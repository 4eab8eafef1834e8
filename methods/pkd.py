"""PKD (Cao et al., NeurIPS 2022): feature imitation through the Pearson correlation coefficient.

Checked against PKD's reference implementation in open-mmlab/mmrazor: mmrazor/models/losses/pkd_loss.py
(PKDLoss) and its configs, configs/distill/mmdet/pkd/*.py and configs/distill/mmdet3d/pkd/*.py.
PKDLoss standardises each channel over the batch and the spatial positions (zero mean, unbiased
std, + 1e-6), resizes the student bilinearly to the teacher's size (`resize_stu=True`) and takes

    pkd = loss_weight * sum over FPN levels of MSE(norm(F_s), norm(F_t)) / 2

(the MSE of standardised maps is 1 - Pearson correlation per channel, so magnitude and offset
differences between modalities no longer matter). Here:

    loss = CE + weight * MSE(norm(P(F_s)), norm(F_t)) / 2

`weight` is loss_weight; its default 6 is that of pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco.py
and pkd_fpn_mask-rcnn_swin_retina_r50_2x_coco.py (the RetinaNet-X101, FCOS, RepPoints and FCOS3D
configs use 10; PKDLoss's own default is 1). Deliberate differences, for cross-modal classification / segmentation
backbones: one stage pair (by default the last stage of each) instead of the four FPN levels;
P, a learned 1x1 convolution (a linear map for vectors) when the channel counts differ, identity
otherwise (mmrazor's FPNs share 256 channels, so it has none); the student is resized whenever
its spatial size differs (mmrazor compares the heights only); vector stages (MLPs) are
standardised over the batch only; which tensor: a stage is the output of the backbone's stage
module, after its final activation (a ResNet stage ends in a ReLU), where mmrazor's FPN outputs
are convolutions with no activation after them (a segmentation model's `decoder` map is the head's
input, which small-seg's decoder ends with a ReLU). The post-activation map is kept: a backbone
stage is what a cross-modal pair has in common (no FPN), and it is what every other
stage-reading method here reads; the standardisation removes each channel's offset either way,
but not the clipping of negative values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


def standardise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Every channel to zero mean and unit (unbiased) std over the batch and spatial positions."""
    dims = [0, *range(2, x.dim())]
    x = x if x.dtype == torch.float64 else x.float()
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + eps)


def channel_projection(s_channels: int, t_channels: int, spatial: bool) -> nn.Module:
    if s_channels == t_channels:
        return nn.Identity()
    if spatial:
        return nn.Conv2d(s_channels, t_channels, 1, bias=False)
    return nn.Linear(s_channels, t_channels, bias=False)


@METHODS.register("pkd", aliases=("pearson-kd",), tasks=("classification", "segmentation"),
                  description="MSE of per-channel standardised stage maps (1 - Pearson correlation)",
                  reference="Cao et al. PKD: General Distillation Framework for Object Detectors via "
                            "Pearson Correlation Coefficient. NeurIPS 2022",
                  search_space={"weight": [0.06, 0.2, 0.6, 2.0, 6.0, 20.0, 60.0, 200.0]},
                  loss_weights=("weight",))
class PKD(Method):
    def __init__(self, student, teacher, spec, student_stage: str = "last", teacher_stage: str = "last",
                 weight: float = 6.0):
        super().__init__(student, teacher, spec)
        self.student_stage, self.teacher_stage = student.stage(student_stage), teacher.stage(teacher_stage)
        s_shape, t_shape = student.stage_shapes[self.student_stage], teacher.stage_shapes[self.teacher_stage]
        if len(s_shape) != len(t_shape) or len(s_shape) not in (1, 3):
            raise ValueError(f"student stage {self.student_stage} {s_shape} and teacher stage {self.teacher_stage} "
                             f"{t_shape} must both be vectors or both be C x H x W maps")
        if weight < 0:
            raise ValueError(f"weight must not be negative, got {weight}")
        self.project = channel_projection(s_shape[0], t_shape[0], spatial=len(s_shape) == 3)
        self.target_size = tuple(t_shape[1:])
        self.weight = weight

    def teacher_reads(self):
        return frozenset({f"stage:{self.teacher_stage}"})

    def forward(self, student, teacher, batch):
        s = self.project(student.stages[self.student_stage])
        if s.dim() == 4 and tuple(s.shape[2:]) != self.target_size:
            s = F.interpolate(s, self.target_size, mode="bilinear", align_corners=False)
        t = teacher.stages[self.teacher_stage].detach()
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "pkd": self.weight * F.mse_loss(standardise(s), standardise(t)) / 2}
