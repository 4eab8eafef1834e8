"""FitNets hints (Romero et al., ICLR 2015): regress the teacher's feature map from the student's.

Reference: megvii-research/mdistiller (commit a08d46f), mdistiller/distillers/FitNet.py and
mdistiller/distillers/_common.py (`ConvReg`); defaults from mdistiller/engine/cfg.py (CFG.FITNET:
HINT_LAYER = 2, FEAT_WEIGHT = 100, CE_WEIGHT = 1), the same as HobbitLong/RepDistiller
(train_student.py `--hint_layer 2`, models/util.py `ConvReg`, scripts/run_cifar_distill.sh
`--distill hint -a 0 -b 100`, so CE weight 1 and no KD term).

    loss = CE + weight * MSE(regressor(student stage), teacher stage),      weight = 100

Stage: the official hint layer 2 indexes the feature list [stem, stage 1, stage 2, stage 3, ...]
of a CIFAR ResNet, i.e. the middle residual stage, FitNets' "middle layer". The default
`auto` resolves, for classification, to `middle`: stage len(stages) // 2 of each model, which is
index 2 of a 5-entry list such as a timm ResNet's [act1, layer1, layer2, layer3, layer4] (the
official choice exactly) and the middle of a 3-stage small CNN. Any stage reference ('last', a
name, an index) can be given instead.

Regressor (`ConvReg`): a conv chosen by the two spatial sizes, then BatchNorm, then ReLU
(use_relu=True in both official codes): 3x3 stride-2 conv when the student map is twice the
teacher's size, 4x4 stride-2 transposed conv when it is half, 1x1 conv when the sizes are equal
(the official (1 + sH - tH)-wide kernel at sH = tH). Deliberate differences, for cross-modal pairs:
- any other pair of sizes (the official code would use a (1 + sH - tH) x (1 + sW - tW) kernel,
  whose size grows with the gap, or raise when the student map is smaller) gets a 1x1 conv and
  BatchNorm, then adaptive average pooling of the hint to the teacher's size; sizes are compared
  per axis, so non-square maps (spectrograms) work;
- vector stages (MLPs; the official code only hints maps) are regressed by one linear layer.

Segmentation (no official setting): `auto` resolves to `last`, the decoder map the segmentation
head reads (the usual choice of segmentation feature KD); the regressor is 1x1 conv + BatchNorm
without the ReLU, so the hint can match a decoder map that is not the output of a ReLU; the weight
is the classification default.

Also here: `feat`, the feature-KD baseline ("Feat") of FD-CMKD's results table. The reproduction
repository zxn0710/re-FD-CMKD-main (main_fd_cmkd.py, models/basic_model.py, utils/utils.py)
holds FD-CMKD itself and no Feat baseline, so it is built on what FD-CMKD distils there: the
pooled post-activation last-stage features (`ModelOutput.feature_post`, what `fd` reads by
default: basic_model.py pools backbone.py's `pre_out`, but that tensor is the one the block's
in-place ReLU then overwrites, see methods/fd.py), compared with nn.MSELoss after a learned linear
projection of the student's, at FD-CMKD's unit loss weight.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cmkd_bench.method import Method
from cmkd_bench.models import ModelInfo
from cmkd_bench.registry import METHODS


def hint_stage(info: ModelInfo, ref: str, task: str) -> str:
    """Resolve a stage reference; `auto` is `middle` for classification, `last` for segmentation."""
    if ref == "auto":
        ref = "last" if task == "segmentation" else "middle"
    if ref == "middle":
        names = info.stage_names
        return names[len(names) // 2] if names else info.stage("last")  # the error naming the model
    return info.stage(ref)


def conv_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], relu: bool) -> nn.Sequential:
    """ConvReg for C x H x W maps: conv by the size ratio, BatchNorm, ReLU (see the module docstring)."""
    (s_c, *s_size), (t_c, *t_size) = student_shape, teacher_shape
    if s_size == [2 * t for t in t_size]:
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif [2 * s for s in s_size] == t_size:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    else:  # equal sizes (the official branch), or any other pair (1x1, then pooled in forward)
        conv = nn.Conv2d(s_c, t_c, kernel_size=1)
    layers = [conv, nn.BatchNorm2d(t_c)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


@METHODS.register("fitnet", aliases=("fitnets", "hint"), tasks=("classification", "segmentation"),
                  description="MSE between a learned regression of a student stage and the teacher's stage",
                  reference="Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015",
                  search_space={"weight": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]},
                  loss_weights=("weight",))
class FitNet(Method):
    def __init__(self, student, teacher, spec, student_stage: str = "auto", teacher_stage: str = "auto",
                 weight: float = 100.0):
        super().__init__(student, teacher, spec)
        if weight < 0:
            raise ValueError(f"need weight >= 0, got {weight}")
        self.student_stage = hint_stage(student, student_stage, spec.task)
        self.teacher_stage = hint_stage(teacher, teacher_stage, spec.task)
        s_shape, t_shape = student.stage_shapes[self.student_stage], teacher.stage_shapes[self.teacher_stage]
        if len(s_shape) != len(t_shape) or len(s_shape) not in (1, 3):
            raise ValueError(f"student stage {self.student_stage} {s_shape} and teacher stage {self.teacher_stage} "
                             f"{t_shape} must both be vectors or both C x H x W maps")
        self.target_size = tuple(t_shape[1:])
        if len(s_shape) == 1:
            self.regressor: nn.Module = nn.Linear(s_shape[0], t_shape[0])
        else:
            self.regressor = conv_regressor(s_shape, t_shape, relu=spec.task != "segmentation")
        self.weight = weight

    def teacher_reads(self):
        return frozenset({f"stage:{self.teacher_stage}"})

    def forward(self, student, teacher, batch):
        hint = self.regressor(student.stages[self.student_stage])
        if hint.dim() > 2 and tuple(hint.shape[2:]) != self.target_size:
            hint = F.adaptive_avg_pool2d(hint, self.target_size)
        target = teacher.stages[self.teacher_stage].detach()
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "hint": self.weight * F.mse_loss(hint, target)}


@METHODS.register("feat", aliases=("feature-kd",), tasks=("classification",),
                  description="Feature KD, the 'Feat' baseline of FD-CMKD's table",
                  reference="Liu et al. Distilling Cross-Modal Knowledge via Feature Disentanglement. AAAI 2026",
                  search_space={"weight": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
                  loss_weights=("weight",))
class FeatureKD(Method):
    """loss = CE + weight * MSE(project(student feature_post), teacher feature_post): the pooled
    post-activation features, the ones fd distils (see the module docstring)."""

    def __init__(self, student, teacher, spec, weight: float = 1.0):
        super().__init__(student, teacher, spec)
        if weight < 0:
            raise ValueError(f"need weight >= 0, got {weight}")
        self.project = nn.Linear(student.feature_dim, teacher.feature_dim)
        self.weight = weight

    def teacher_reads(self):
        return frozenset({"feature_post"})

    def forward(self, student, teacher, batch):
        target = teacher.feature_post.detach()
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "feat": self.weight * F.mse_loss(self.project(student.feature_post), target)}
