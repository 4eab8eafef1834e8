"""Vanilla knowledge distillation (Hinton et al., 2015)."""

from __future__ import annotations

import torch.nn.functional as F

from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


@METHODS.register("kd", aliases=("vanilla-kd", "hinton"), tasks=("classification",),
                  description="KL between temperature-softened teacher and student predictions",
                  reference="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015")
class KD(Method):
    """loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher^T || p_student^T)."""

    def __init__(self, student, teacher, spec, T: float = 4.0, alpha: float = 0.5):
        super().__init__(student, teacher, spec)
        if T <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need T > 0 and 0 <= alpha <= 1, got T={T}, alpha={alpha}")
        self.T, self.alpha = T, alpha

    def forward(self, student, teacher, batch):
        log_p_s = F.log_softmax(student.logits / self.T, dim=1)
        log_p_t = F.log_softmax(teacher.logits.detach() / self.T, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return {"ce": (1 - self.alpha) * self.task_loss(student.logits, batch["label"]),
                "kd": self.alpha * self.T**2 * kl}
