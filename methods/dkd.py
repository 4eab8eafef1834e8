"""Decoupled knowledge distillation (Zhao et al., CVPR 2022): KD split into target and non-target parts.

With p^T = softmax(z / T), the binary distribution b = [p_y, 1 - p_y] (target vs the rest) and the
distribution p_hat over the non-target classes alone (softmax of the non-target logits):

    TCKD = T^2 KL(b_t || b_s),   NCKD = T^2 KL(p_hat_t || p_hat_s)     (batch means)
    loss = CE + w * (alpha * TCKD + beta * NCKD)

with the paper's CIFAR-100 setting alpha = 1, beta = 8, T = 4. For segmentation every labelled
pixel is a sample: the batch means become means over the pixels whose label is not ignored (the
paper has no segmentation setting; pixel-wise application is the same extension as pixel-wise KD). The weight w rises linearly over
the first `warmup` of training, as in the official code (w = min(epoch / 20, 1) with 1-based
epochs out of 240). Recipes here are much shorter than 240 epochs, so `warmup` is the fraction of
the run's epochs (default 20/240, the paper's proportion); w = min((epoch + 1) / (warmup * epochs), 1)
with 0-based epochs, and warmup = 0 turns the ramp off. Log-probabilities come from log-sum-exps
rather than the official code's "- 1000 * mask" trick, which gives the same values exactly.
With two classes the non-target distribution has one class and NCKD is zero: DKD is then TCKD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_bench.method import Method
from cmkd_bench.methods.kd import kl_per_position, masked_mean, resized_like, safe_labels, valid_positions
from cmkd_bench.registry import METHODS


def non_target(z: Tensor, labels: Tensor) -> Tensor:
    """B x (C-1) [x H x W]: every class but the label, in order (a gather: no host sync, unlike a boolean mask)."""
    others = torch.arange(z.shape[1] - 1, device=z.device).view(1, -1, *[1] * (z.dim() - 2))
    target = labels.unsqueeze(1)
    return z.gather(1, others + (others >= target).long())


def decoupled_log_probs(logits: Tensor, labels: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """log [p_y, 1 - p_y] (B x 2 [x H x W]) and the log-softmax over the non-target classes (B x C-1 [x H x W]).

    In at least float32: bf16 log-sum-exps (autocast) would make the two log-distributions
    inconsistent and the KL terms negative.
    """
    z = (logits if logits.dtype == torch.float64 else logits.float()) / T
    others = non_target(z, labels)
    total = torch.logsumexp(z, dim=1, keepdim=True)
    binary = torch.cat([z.gather(1, labels.unsqueeze(1)), torch.logsumexp(others, dim=1, keepdim=True)], dim=1) - total
    return binary, F.log_softmax(others, dim=1)


@METHODS.register("dkd", aliases=("decoupled-kd",), tasks=("classification", "segmentation"),
                  description="KD decoupled into target-class (TCKD) and non-target-class (NCKD) terms",
                  reference="Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022")
class DKD(Method):
    def __init__(self, student, teacher, spec, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
                 warmup: float = 20 / 240, w_ce: float = 1.0):
        super().__init__(student, teacher, spec)
        if T <= 0 or alpha < 0 or beta < 0 or w_ce < 0:
            raise ValueError(f"need T > 0 and non-negative weights, got T={T}, alpha={alpha}, beta={beta}, w_ce={w_ce}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup is a fraction of the epochs in [0, 1), got {warmup}")
        self.alpha, self.beta, self.T, self.warmup, self.w_ce = alpha, beta, T, warmup, w_ce

    def warmup_factor(self) -> float:
        ramp = self.warmup * self.epochs
        return 1.0 if ramp <= 0 else min((self.epoch + 1) / ramp, 1.0)

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        valid = valid_positions(labels, self.ignore_index)
        safe = safe_labels(labels, valid)
        s_bin, s_nt = decoupled_log_probs(student.logits, safe, self.T)
        t_bin, t_nt = decoupled_log_probs(resized_like(teacher.logits.detach(), student.logits), safe, self.T)
        scale = self.warmup_factor() * self.T**2
        tckd = masked_mean(kl_per_position(s_bin, t_bin), valid)
        nckd = masked_mean(kl_per_position(s_nt, t_nt), valid)
        return {"ce": self.w_ce * self.task_loss(student.logits, labels),
                "tckd": scale * self.alpha * tckd, "nckd": scale * self.beta * nckd}
