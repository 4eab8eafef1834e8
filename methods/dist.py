"""DIST (Huang et al., NeurIPS 2022): distil relations, not exact probabilities, via Pearson correlation.

Reference: hunto/DIST_KD (commit 2418f18), whose classification code is the submodule
hunto/image_classification_sota (pinned commit d9662f7; read at 6f7a70a):
lib/models/losses/dist_kd.py (`DIST`) and lib/models/losses/kd_loss.py (`KDLoss`: `'dist'` is
DIST(beta=1, gamma=1, tau=1), `'dist_tN'` the same with tau = N, total
`ori_loss * ori_loss_weight + kd_loss * kd_loss_weight`). Defaults from its ImageNet config
configs/strategies/distill/resnet_dist.yaml (`kd: 'dist'`, ori_loss_weight 1, kd_loss_weight 2);
its CIFAR-100 config dist_cifar.yaml uses `kd: dist_t4` (tau = 4), also with kd_loss_weight 2.

With Y = softmax(Z / tau) for a batch (B x C) and rho the Pearson correlation of two vectors:

    inter = 1 - mean_b rho(Y_s[b, :], Y_t[b, :])     (each sample's class ranking)
    intra = 1 - mean_c rho(Y_s[:, c], Y_t[:, c])     (each class's ranking of the samples)
    loss  = CE + weight * tau^2 * (beta * inter + gamma * intra)

with the official defaults beta = gamma = tau = 1 and weight = 2 (kd_loss_weight). Pearson is
computed as in the official code: cosine similarity of the centred vectors, eps = 1e-8 in the
denominator.

For segmentation every pixel is a sample, as in the official segmentation code
(hunto/DIST_KD, segmentation/losses/dist_kd.py): B x C x H x W predictions become (B H W) x C
rows, so `inter` correlates each pixel's class scores and `intra` each class's scores over all
pixels of the batch, at the segmentation head's own resolution (`ModelOutput.logits_native`,
before the model upsamples them to the input's size: the official segmentation code distils the
head's output, and upsampling first would change the loss's value). Like
the official code, it uses no labels (ignored pixels included), so none are needed at that
resolution; that
code has no temperature (tau = 1, our default). Deliberate difference: DIST_KD's segmentation
script (segmentation/train_kd.py) weighs the term with `--lambda-kd`, default 1, while one default
serves both tasks here (the registry reads a single default per hyper-parameter, and the tuning
protocol's space must contain it), the classification one; `--set weight=1` reproduces the
segmentation setting, and the search space includes 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmkd_bench.losses import head_logits, resized_like
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


def rows(z: Tensor) -> Tensor:
    """B x C -> B x C; B x C x H x W -> (B H W) x C: one row per sample or per pixel."""
    return z if z.dim() == 2 else z.movedim(1, -1).reshape(-1, z.shape[1])


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@METHODS.register("dist", aliases=("dist-kd",), tasks=("classification", "segmentation"),
                  description="Pearson-correlation matching of predictions across classes (inter) and samples (intra)",
                  reference="Huang, You, Wang, Qian, Xu. Knowledge Distillation from A Stronger Teacher. NeurIPS 2022",
                  search_space={"tau": [1.0, 4.0], "weight": [0.02, 0.2, 2.0, 20.0]}, loss_weights=("weight",))
class DIST(Method):
    def __init__(self, student, teacher, spec, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0,
                 weight: float = 2.0):
        super().__init__(student, teacher, spec)
        if tau <= 0 or beta < 0 or gamma < 0 or weight < 0:
            raise ValueError(f"need tau > 0 and beta, gamma, weight >= 0, got tau={tau}, beta={beta}, gamma={gamma}, "
                             f"weight={weight}")
        self.beta, self.gamma, self.tau, self.weight = beta, gamma, tau, weight

    def teacher_reads(self):
        return frozenset({"logits_native"}) if self.task == "segmentation" else frozenset({"logits"})

    def forward(self, student, teacher, batch):
        if self.task == "segmentation":
            z_s = head_logits(student)
            logits = (z_s, resized_like(head_logits(teacher).detach(), z_s))
        else:
            logits = (student.logits, teacher.logits.detach())
        z_s, z_t = (rows(z if z.dtype == torch.float64 else z.float()) for z in logits)
        y_s, y_t = (z_s / self.tau).softmax(dim=1), (z_t / self.tau).softmax(dim=1)
        inter = 1 - pearson_rows(y_s, y_t).mean()
        intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
        scale = self.weight * self.tau**2
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "inter": scale * self.beta * inter, "intra": scale * self.gamma * intra}
