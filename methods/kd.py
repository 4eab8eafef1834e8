"""Vanilla knowledge distillation (Hinton et al., 2015), per sample or, for segmentation, per pixel.

Checked against megvii-research/mdistiller (mdistiller/distillers/KD.py, defaults in
mdistiller/engine/cfg.py: TEMPERATURE 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9, used by
configs/cifar100/kd.yaml) and HobbitLong/RepDistiller (distiller_zoo/KD.py; its
scripts/run_cifar_distill.sh runs kd with `-r 0.1 -a 0.9 -b 0`, --kd_T 4 in train_student.py).
Both compute T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes and averaged
over the batch, and weight CE by 0.1 and the KL term by 0.9; here that is alpha = 0.9, T = 4:

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * mean KL(p_teacher^T || p_student^T)

For segmentation every labelled pixel is a sample (pixel-wise KD, as in Liu et al., "Structured
Knowledge Distillation for Semantic Segmentation", CVPR 2019): the KL is summed over classes at
each pixel and averaged over the pixels whose label is not the ignore index. The helpers of
cmkd_bench/losses.py work along dim 1 (classes) for B x C and B x C x H x W alike, so one formula
serves both tasks.
Deliberate extensions (neither reference has them): that segmentation form, and the teacher's
logits resized bilinearly to the student's when their spatial sizes differ (cross-modal
backbones). On classification the loss is exactly the references'.

Logit standardisation (Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD,
mdistiller/distillers/KD.py `kd_loss(..., logit_stand)`): `logit_stand=true` replaces both models'
logits by their Z-score over the classes (cmkd_bench.losses.standardized: (z - mean) / (1e-7 + std),
unbiased std) before the temperature; CE keeps the raw logits, as there. The authors run it with
`--logit-stand --base-temp 2 --kd-weight 9` (README, tools/train.py), i.e. T = 2, CE weight 0.1 and
KD weight 9: the preset `kd-ls`, where `kd_weight` (default: alpha) sets the KD term's weight apart
from the CE weight 1 - alpha.
"""

from __future__ import annotations

import torch.nn.functional as F

from cmkd_bench.losses import kl_per_position, masked_mean, resized_like, standardized, valid_positions
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


@METHODS.register("kd", aliases=("vanilla-kd", "hinton"), tasks=("classification", "segmentation"),
                  description="KL between temperature-softened teacher and student predictions (per pixel for segmentation)",
                  reference="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015",
                  search_space={"T": [1.0, 4.0], "alpha": [0.0009, 0.009, 0.09, 0.9]}, loss_weights=("alpha",))
class KD(Method):
    """loss = (1 - alpha) * CE(student, y) + alpha * T^2 * mean_valid KL(p_teacher^T || p_student^T).

    Defaults T = 4, alpha = 0.9: mdistiller's cfg.py (CE 0.1, KD 0.9) and RepDistiller's
    `-r 0.1 -a 0.9` (see the module docstring).
    """

    added_hparams = {"logit_stand": False, "kd_weight": None}  # records before them computed these values

    def __init__(self, student, teacher, spec, T: float = 4.0, alpha: float = 0.9, logit_stand: bool = False,
                 kd_weight: float | None = None):
        super().__init__(student, teacher, spec)
        if T <= 0 or not 0 <= alpha <= 1 or (kd_weight is not None and kd_weight < 0):
            raise ValueError(f"need T > 0, 0 <= alpha <= 1 and kd_weight >= 0, got T={T}, alpha={alpha}, "
                             f"kd_weight={kd_weight}")
        self.T, self.alpha, self.logit_stand = T, alpha, logit_stand
        self.kd_weight = alpha if kd_weight is None else kd_weight

    def teacher_reads(self):
        return frozenset({"logits"})

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        z_s, z_t = student.logits, resized_like(teacher.logits.detach(), student.logits)
        if self.logit_stand:
            z_s, z_t = standardized(z_s), standardized(z_t)
        log_p_s = F.log_softmax(z_s / self.T, dim=1)
        log_p_t = F.log_softmax(z_t / self.T, dim=1)
        kl = masked_mean(kl_per_position(log_p_s, log_p_t), valid_positions(labels, self.ignore_index))
        return {"ce": (1 - self.alpha) * self.task_loss(student.logits, labels),
                "kd": self.kd_weight * self.T**2 * kl}


# The authors' setting: `--logit-stand --base-temp 2 --kd-weight 9` with KD's CE weight 0.1. Its space crosses
# the KD weight with the CE weight (1 - alpha: here alpha sets nothing else) at the authors' 0.1 and at 1, no-kd's,
# as ctkd's does: with the CE fixed at 0.1 a small KD weight is no-kd at a tenth of its learning rate, not the
# regime where distillation is negligible (issue 30). T stays at the authors' 2: 4 x 2 fills the budget of 8.
METHODS.register_preset("kd-ls", "kd", logit_stand=True, T=2.0, alpha=0.9, kd_weight=9.0, tasks=("classification",),
                        search_space={"kd_weight": [0.09, 0.9, 9.0, 90.0], "alpha": [0.9, 0.0]},
                        loss_weights=("kd_weight",),
                        description="KD with logit standardisation (Sun et al. CVPR 2024) at the authors' "
                                    "settings: Z-scored logits, T 2, CE 0.1, KD 9")
