"""Channel-wise distillation (Shu et al., ICCV 2021): match where each channel puts its mass.

Each channel of a B x C x H x W map is turned into a distribution over the H x W positions,
softmax(y_c / T), and the student's is pulled towards the teacher's with KL:

    cwd  = T^2 / (B C) * sum_{b, c} KL(softmax(y^t_bc / T) || softmax(y^s_bc / T))
    loss = CE + weight * cwd

Checked against the authors' code, irfanICMLL/TorchDistiller: SemSeg-distill/utils/criterion.py
(CriterionCWD with norm_type="channel", i.e. ChannelNorm's softmax over H W, divergence="kl",
KLDivLoss(reduction="sum") / (n c) * T^2), applied in SemSeg-distill/networks/kd_model.py to the
logits, preds_S[0], times --lambda-cwd; and against open-mmlab/mmrazor's port,
mmrazor/models/losses/cwd.py (ChannelWiseDivergence, the same sum / (C N) * tau^2 * loss_weight).
Which logits: the segmentation head's output at its own resolution, `ModelOutput.logits_native`
(small-seg: half the input's size; DeepLabV3+: a quarter), not the logits the model then
upsamples to the input's size. TorchDistiller distils preds_S[0], the head's output before the
criterion upsamples it for CE, and mmrazor hooks decode_head.conv_seg; upsampling first changes
the loss's value (bilinear interpolation smooths each channel's spatial distribution), so the
official weight would not mean what it meant. Labels are not needed at that resolution (CE reads
the upsampled logits, as in both references).
Defaults are the authors' logits setting for segmentation, SemSeg-distill/README.md's
`bash exp_cwd.sh channel kl 3 4 ...`: weight (lambda-cwd) 3, T 4, on the logits.
mmrazor's configs/distill/mmseg/cwd/cwd_logits_pspnet_r101-d8_pspnet_r18-d8_*.py uses tau 1,
loss_weight 5 on the logits; the search space contains both settings.

Deliberate differences, for cross-modal backbones: the student's map is resized bilinearly to the
teacher's size when the two differ (both references require equal sizes). `feature` may name a
stage map instead of the logits ("decoder", "last", an index; the authors' --cwd-feat option);
the student's channels are then mapped to the teacher's by a plain 1x1 convolution with bias when
they differ, a linear connector like fitnet's and pkd's, where the authors' feature setting uses
1x1 conv (no bias) + BN + ReLU. Labels are not used (all positions count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.losses import head_logits, resized_like
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


def channel_distributions(x: Tensor, T: float) -> Tensor:
    """B x C x H x W -> B x C x (H W): per channel, log-softmax over positions (at least float32)."""
    x = x if x.dtype == torch.float64 else x.float()
    return F.log_softmax(x.flatten(2) / T, dim=2)


def channel_wise_kl(s: Tensor, t: Tensor, T: float) -> Tensor:
    b, c = s.shape[:2]
    kl = F.kl_div(channel_distributions(s, T), channel_distributions(t, T), reduction="sum", log_target=True)
    return T**2 * kl / (b * c)


@METHODS.register("cwd", aliases=("channel-wise",), tasks=("segmentation",),
                  description="KL between per-channel spatial distributions (softmax over positions) of logits or maps",
                  reference="Shu, Liu, Gao, Yan, Shen. Channel-wise Knowledge Distillation for Dense Prediction. ICCV 2021",
                  search_space={"T": [1.0, 4.0], "weight": [0.03, 0.3, 3.0, 5.0, 30.0]}, loss_weights=("weight",))
class CWD(Method):
    def __init__(self, student, teacher, spec, T: float = 4.0, weight: float = 3.0, feature: str = "logits"):
        super().__init__(student, teacher, spec)
        if T <= 0 or weight < 0:
            raise ValueError(f"need T > 0 and weight >= 0, got T={T}, weight={weight}")
        self.T, self.weight, self.feature = T, weight, feature
        self.align: nn.Module = nn.Identity()
        if feature != "logits":
            self.s_map, self.t_map = student.stage(feature), teacher.stage(feature)
            s_shape, t_shape = student.stage_shapes[self.s_map], teacher.stage_shapes[self.t_map]
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise ValueError(f"cwd needs C x H x W maps; got {self.s_map} {s_shape} and {self.t_map} {t_shape}")
            if s_shape[0] != t_shape[0]:
                self.align = nn.Conv2d(s_shape[0], t_shape[0], 1)

    def maps(self, student, teacher) -> tuple[Tensor, Tensor]:
        if self.feature == "logits":
            s, t = head_logits(student), head_logits(teacher).detach()
        else:
            s, t = self.align(student.stages[self.s_map]), teacher.stages[self.t_map].detach()
        return resized_like(s, t), t

    def teacher_reads(self):
        return frozenset({"logits_native"}) if self.feature == "logits" else frozenset({f"stage:{self.t_map}"})

    def forward(self, student, teacher, batch):
        s, t = self.maps(student, teacher)
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "cwd": self.weight * channel_wise_kl(s, t, self.T)}
