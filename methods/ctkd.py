"""Curriculum temperature KD (Li et al., AAAI 2023): vanilla KD at a learnable temperature that is
trained adversarially (to raise the KD loss) through a gradient reversal layer whose strength
grows along a cosine curriculum.

Reference read: zhengli97/CTKD at commit 7d5252241259ae70d38a832371fed9697d15fc14.
- models/temp_global.py lines 9-17 (`Global_T`: one parameter initialised to 1, passed through the
  reversal layer) and 21-40 (`GradientReversalFunction`: identity forward, backward multiplies
  the gradient by `lambda_`, the schedule's value);
- train_student.py lines 186-202 (`CosineDecay.get_value(i)`: i clamped to [0, num_loops],
  v = (cos(i pi / num_loops) + 1) / 2 * (max - min) + min), 293-311 (the global module, the only
  one released, joins `trainable_list`), 379-382 (one SGD over student and temperature: the same
  lr, momentum and weight decay), 401-421 (v = get_value(epoch) once per 1-based epoch);
- helper/loops.py lines 132-141 (temp = t_start + t_end * sigmoid(Global_T(v)); CE and
  `DistillKL(logit_s, logit_t, temp)`) and 174 (loss = gamma CE + alpha KD + beta * 0 for kd);
- distiller_zoo/KD.py lines 13-20 (KLDivLoss(batchmean)(log_softmax(y_s / T), softmax(y_t / T)) T^2:
  the teacher's softmax depends on T too, so the temperature's gradient has both parts);
- defaults: train_student.py's parser (t_start 1, t_end 20) and scripts/run_cifar_distill.sh
  (`-r 0.1 -a 0.9 -b 0`, `--have_mlp 1 --mlp_name 'global' --cosine_decay 1 --decay_max 0
  --decay_min -1 --decay_loops 10`, 240 epochs by the parser's default); the ImageNet script uses
  `-r 1 -a 1` and 5 decay loops of 120 epochs (the same fraction, 1/24).

With theta the temperature parameter (initially 1: a temperature of 1 + 20 sigmoid(1) = 15.6):

    tau = t_start + t_end * sigmoid(GRL_lambda(theta))
    loss = ce_weight * CE + kd_weight * tau^2 * mean_b KL(softmax(z_t / tau) || softmax(z_s / tau))

GRL_lambda is the identity forward and multiplies the gradient by -lambda backward: the student
descends the KD loss while theta ascends it, lambda times as fast. The official layer multiplies
by the schedule's value v, which runs from decay_max = 0 to decay_min = -1; here lambda = -v runs
from lambda_min = -decay_max = 0 to lambda_max = -decay_min = 1, the same factor:

    lambda = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(x, 1))) / 2

with x = i / decay_loops officially (i the 1-based epoch). Schedule mapping: `curriculum` is the
fraction of training the ramp lasts (default 10 / 240) and x advances per training step, as DKD's
warm-up in this harness (methods/dkd.py): x = progress / curriculum with progress = (epoch * S +
step) / (epochs * S), 0-based epoch, 1-based step, S steps per epoch. At the last step of
(1-based) epoch e, x = e / (curriculum * epochs): with 240 epochs that is the official e / 10, the
value the official run holds through all of epoch e; within an epoch lambda rises smoothly to it
(the first step of a 240-epoch run uses x = 1 / (10 S) instead of 1 / 10). A 30-epoch recipe
finishes the ramp after 1.25 epochs; an official-style count of 10 epochs would instead span a
third of it. Outside a training step (step 0) progress is (epoch + 1) / epochs, the per-epoch
value. curriculum = 0 holds lambda at lambda_max.

Deliberate differences: that per-step, fraction-of-training schedule; the engine's optimiser
(the recipe's, with the student's lr, momentum and weight decay, as the official single SGD)
updates theta; classification only (no official dense setting); the KL in at least float32.
The instance-wise temperature (README: its code and logs are on cloud drives, not in the
repository) is not implemented; the official default and released code is the global one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.losses import at_least_float32, kl_per_position
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by `scale` (the official
    GradientReversalFunction with lambda_ = scale = -lambda)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def cosine_lambda(x: float, lambda_min: float, lambda_max: float) -> float:
    """lambda_min + (lambda_max - lambda_min) (1 - cos(pi min(x, 1))) / 2, x >= 0 the ramp's progress."""
    x = min(max(x, 0.0), 1.0)
    return lambda_min + (lambda_max - lambda_min) * (1 - math.cos(math.pi * x)) / 2


@METHODS.register("ctkd", aliases=("curriculum-temperature-kd",), tasks=("classification",),
                  description="KD at a learnable global temperature trained adversarially through a gradient "
                              "reversal layer, its strength following a cosine curriculum",
                  reference="Li, Li, Yang, Zhao, Song, Luo, Li, Yang. Curriculum Temperature for Knowledge "
                            "Distillation. AAAI 2023",
                  search_space={"kd_weight": [0.009, 0.09, 0.9, 9.0], "ce_weight": [0.1, 1.0]},
                  loss_weights=("kd_weight",))
class CTKD(Method):
    """loss = ce_weight CE + kd_weight tau^2 KL(p_t^tau || p_s^tau), tau = t_start + t_end sigmoid(GRL(theta)).

    Defaults: ce_weight 0.1, kd_weight 0.9, t_start 1, t_end 20, theta initially 1, lambda from 0
    to 1 over the first 10 / 240 of training (scripts/run_cifar_distill.sh; see the module docstring).
    """

    def __init__(self, student, teacher, spec, ce_weight: float = 0.1, kd_weight: float = 0.9,
                 t_start: float = 1.0, t_end: float = 20.0, lambda_min: float = 0.0, lambda_max: float = 1.0,
                 curriculum: float = 10 / 240):
        super().__init__(student, teacher, spec)
        if ce_weight < 0 or kd_weight < 0 or t_start <= 0 or t_end < 0:
            raise ValueError(f"need non-negative weights, t_start > 0 and t_end >= 0, got ce_weight={ce_weight}, "
                             f"kd_weight={kd_weight}, t_start={t_start}, t_end={t_end}")
        if not 0 <= curriculum < 1:
            raise ValueError(f"curriculum is a fraction of training in [0, 1), got {curriculum}")
        if not (math.isfinite(lambda_min) and math.isfinite(lambda_max)):
            raise ValueError(f"need finite lambda_min and lambda_max, got {lambda_min}, {lambda_max}")
        self.ce_weight, self.kd_weight, self.t_start, self.t_end = ce_weight, kd_weight, t_start, t_end
        self.lambda_min, self.lambda_max, self.curriculum = lambda_min, lambda_max, curriculum
        self.global_T = nn.Parameter(torch.ones(1))  # Global_T's parameter, initialised to 1 as there

    def progress(self) -> float:
        """Fraction of training done once the current step is taken (as methods/dkd.py)."""
        steps = self.steps_per_epoch
        if self.step < 1 or steps < 1:
            return (self.epoch + 1) / self.epochs
        return (self.epoch * steps + self.step) / (self.epochs * steps)

    def reversal_strength(self) -> float:
        """lambda now: the cosine curriculum at this point of training."""
        x = 1.0 if self.curriculum <= 0 else self.progress() / self.curriculum
        return cosine_lambda(x, self.lambda_min, self.lambda_max)

    def temperature(self) -> Tensor:
        """tau (shape (1,)), through the reversal layer: its gradient reaches theta times -lambda."""
        theta = GradientReversal.apply(self.global_T, -self.reversal_strength())
        return self.t_start + self.t_end * torch.sigmoid(theta)

    def teacher_reads(self):
        return frozenset({"logits"})

    def forward(self, student, teacher, batch):
        z_s, z_t = at_least_float32(student.logits), at_least_float32(teacher.logits.detach())
        tau = self.temperature().to(z_s.dtype)
        kl = kl_per_position(F.log_softmax(z_s / tau, dim=1), F.log_softmax(z_t / tau, dim=1)).mean()
        return {"ce": self.ce_weight * self.task_loss(student.logits, batch["label"]),
                "kd": self.kd_weight * (tau.squeeze(0) ** 2) * kl}
