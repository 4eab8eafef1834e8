"""Decoupled knowledge distillation (Zhao et al., CVPR 2022): KD split into target and non-target parts.

Reference: megvii-research/mdistiller (commit a08d46f), mdistiller/distillers/DKD.py (`dkd_loss`,
`DKD.forward_train`); defaults from mdistiller/engine/cfg.py (CFG.DKD: CE_WEIGHT = 1, ALPHA = 1,
BETA = 8, T = 4, WARMUP = 20) with the CIFAR-100 schedule of configs/cifar100/dkd/*.yaml (240
epochs; per-pair BETA overrides 2 and 6; the ImageNet configs configs/imagenet/*/dkd.yaml use BETA
0.5 / 2, T = 1, WARMUP = 1 of 100 epochs).

With p^T = softmax(z / T), the binary distribution b = [p_y, 1 - p_y] (target vs the rest) and the
distribution p_hat over the non-target classes alone (softmax of the non-target logits):

    TCKD = T^2 KL(b_t || b_s),   NCKD = T^2 KL(p_hat_t || p_hat_s)     (batch means)
    loss = w_ce * CE + w(t) * (alpha * TCKD + beta * NCKD)

as in `dkd_loss` (kl_div with size_average=False, times T^2, divided by the batch size).
Log-probabilities come from log-sum-exps rather than the official "- 1000 * gt_mask" trick and
log of the summed softmax; the values are the same (tests/test_fidelity_logit_feature.py checks
this against the official form). With two classes NCKD is zero: DKD is then TCKD.

Warm-up. The official weight is w = min(epoch / WARMUP, 1) with 1-based epochs, WARMUP = 20 of
240, held for a whole epoch. Here `warmup` is the fraction of training the ramp lasts (default
20 / 240) and the ramp advances per training step:

    w = min(progress / warmup, 1),   progress = (epoch * S + step) / (epochs * S)

with 0-based `epoch`, the 1-based `step` within the epoch and S steps per epoch (the engine
reports the step through `Method.on_step_start`). So in (1-based) epoch e, w rises linearly from
just above min((e - 1) / (warmup * epochs), 1) to min(e / (warmup * epochs), 1), reached at the
epoch's last step; with epochs = 240 and warmup = 20 / 240 the value at the last step of every
epoch is exactly the official min(e / 20, 1), and the first step trains with 1 / (20 S) instead of
1 / 20. Short recipes therefore still ramp: in a 12-epoch recipe the official min(e / 20, 1) would
never reach full weight, and its proportional per-epoch form min(e / (warmup * epochs), 1) is
already 1 in the first epoch; per step, the weight rises over the first 1/12 of the steps.
Outside a training step (step 0, e.g. a direct call) progress is (epoch + 1) / epochs, the
per-epoch value. warmup = 0 turns the ramp off.

Segmentation (no official setting): every labelled pixel is a sample; the batch means become
means over the pixels whose label is not ignored, the same extension as pixel-wise KD.

Logit standardisation (Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD,
mdistiller/distillers/DKD.py `dkd_loss(..., logit_stand)`): `logit_stand=true` Z-scores both
models' logits over the classes (cmkd_bench.losses.standardized) before the temperature and the
target / non-target split; CE keeps the raw logits. The authors' command line
(`--logit-stand --base-temp 2 --kd-weight 9`, tools/train.py) multiplies ALPHA and BETA by 9 and
sets T = 2: the preset `dkd-ls` (alpha 9, beta 72, T 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_bench.losses import (kl_per_position, masked_mean, non_target, resized_like, safe_labels, standardized,
                               valid_positions)
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


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
                  reference="Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022",
                  search_space={"beta": [0.08, 0.8, 8.0, 80.0], "T": [1.0, 4.0]}, loss_weights=("beta",))
class DKD(Method):
    added_hparams = {"logit_stand": False}  # records before it computed this value

    def __init__(self, student, teacher, spec, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
                 warmup: float = 20 / 240, w_ce: float = 1.0, logit_stand: bool = False):
        super().__init__(student, teacher, spec)
        if T <= 0 or alpha < 0 or beta < 0 or w_ce < 0:
            raise ValueError(f"need T > 0 and non-negative weights, got T={T}, alpha={alpha}, beta={beta}, w_ce={w_ce}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup is a fraction of training in [0, 1), got {warmup}")
        self.alpha, self.beta, self.T, self.warmup, self.w_ce = alpha, beta, T, warmup, w_ce
        self.logit_stand = logit_stand

    def progress(self) -> float:
        """Fraction of training done once the current step is taken (see the module docstring)."""
        steps = self.steps_per_epoch
        if self.step < 1 or steps < 1:
            return (self.epoch + 1) / self.epochs
        return (self.epoch * steps + self.step) / (self.epochs * steps)

    def warmup_factor(self) -> float:
        return 1.0 if self.warmup <= 0 else min(self.progress() / self.warmup, 1.0)

    def teacher_reads(self):
        return frozenset({"logits"})

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        valid = valid_positions(labels, self.ignore_index)
        safe = safe_labels(labels, valid)
        z_s, z_t = student.logits, resized_like(teacher.logits.detach(), student.logits)
        if self.logit_stand:
            z_s, z_t = standardized(z_s), standardized(z_t)
        s_bin, s_nt = decoupled_log_probs(z_s, safe, self.T)
        t_bin, t_nt = decoupled_log_probs(z_t, safe, self.T)
        scale = self.warmup_factor() * self.T**2
        tckd = masked_mean(kl_per_position(s_bin, t_bin), valid)
        nckd = masked_mean(kl_per_position(s_nt, t_nt), valid)
        return {"ce": self.w_ce * self.task_loss(student.logits, labels),
                "tckd": scale * self.alpha * tckd, "nckd": scale * self.beta * nckd}


# The authors' setting: `--logit-stand --base-temp 2 --kd-weight 9` (ALPHA and BETA times 9, T 2).
METHODS.register_preset("dkd-ls", "dkd", logit_stand=True, alpha=9.0, beta=72.0, T=2.0, tasks=("classification",),
                        search_space={"beta": [0.72, 7.2, 72.0, 720.0], "T": [2.0, 4.0]}, loss_weights=("beta",),
                        description="DKD with logit standardisation (Sun et al. CVPR 2024) at the authors' "
                                    "settings: Z-scored logits, T 2, alpha and beta times 9")
