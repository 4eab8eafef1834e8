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
"""

from __future__ import annotations

import torch.nn.functional as F

from cmkd_bench.losses import kl_per_position, masked_mean, resized_like, valid_positions
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


@METHODS.register("kd", aliases=("vanilla-kd", "hinton"), tasks=("classification", "segmentation"),
                  description="KL between temperature-softened teacher and student predictions (per pixel for segmentation)",
                  reference="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015",
                  search_space={"T": [1.0, 2.0, 4.0, 8.0], "alpha": [0.5, 0.9]})
class KD(Method):
    """loss = (1 - alpha) * CE(student, y) + alpha * T^2 * mean_valid KL(p_teacher^T || p_student^T).

    Defaults T = 4, alpha = 0.9: mdistiller's cfg.py (CE 0.1, KD 0.9) and RepDistiller's
    `-r 0.1 -a 0.9` (see the module docstring).
    """

    def __init__(self, student, teacher, spec, T: float = 4.0, alpha: float = 0.9):
        super().__init__(student, teacher, spec)
        if T <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need T > 0 and 0 <= alpha <= 1, got T={T}, alpha={alpha}")
        self.T, self.alpha = T, alpha

    def teacher_reads(self):
        return frozenset({"logits"})

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        log_p_s = F.log_softmax(student.logits / self.T, dim=1)
        log_p_t = F.log_softmax(resized_like(teacher.logits.detach(), student.logits) / self.T, dim=1)
        kl = masked_mean(kl_per_position(log_p_s, log_p_t), valid_positions(labels, self.ignore_index))
        return {"ce": (1 - self.alpha) * self.task_loss(student.logits, labels),
                "kd": self.alpha * self.T**2 * kl}
