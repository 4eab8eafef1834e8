"""Relational knowledge distillation (Park et al., CVPR 2019): match distances and angles in a batch.

On the pooled features (by default the post-activation ones the classifier sees, as in the
official code and mdistiller), with psi_D(i, j) = ||x_i - x_j|| / mean_{i != j} ||x_i - x_j|| and
psi_A(i, j, k) = <(x_j - x_i)/||.||, (x_k - x_i)/||.||> over all B^3 triplets:

    loss = CE + w_distance * smoothL1(psi_D^s, psi_D^t) + w_angle * smoothL1(psi_A^s, psi_A^t)

with the paper's weights 25 and 50. Relations do not depend on the feature width, so the student
and teacher dimensions may differ without a projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS

FEATURES = {"post": "feature_post", "pre": "feature"}


def full_precision(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances with a zero diagonal (clamped before the root, as in the official code)."""
    sq = x.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def distance_relations(x: Tensor) -> Tensor:
    """Distances divided by their off-diagonal mean (all off-diagonal ones are > 0 after the clamp)."""
    d = pairwise_distances(x)
    n = len(x)
    return d / (d.sum() / (n * (n - 1)))


def angle_relations(x: Tensor) -> Tensor:
    """Cosine of the angle at vertex i between x_j and x_k, for all (i, j, k)."""
    edges = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [i, j] = unit(x_j - x_i)
    return torch.bmm(edges, edges.transpose(1, 2)).flatten()


@METHODS.register("rkd", aliases=("relational-kd",), tasks=("classification",),
                  description="smooth-L1 between normalised pairwise distances and triplet angles of pooled features",
                  reference="Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019")
class RKD(Method):
    def __init__(self, student, teacher, spec, w_distance: float = 25.0, w_angle: float = 50.0, feature: str = "post"):
        super().__init__(student, teacher, spec)
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
        if w_distance < 0 or w_angle < 0:
            raise ValueError(f"weights must not be negative, got w_distance={w_distance}, w_angle={w_angle}")
        self.attr, self.w_distance, self.w_angle = FEATURES[feature], w_distance, w_angle

    def forward(self, student, teacher, batch):
        s = full_precision(getattr(student, self.attr).flatten(1))
        t = full_precision(getattr(teacher, self.attr).detach().flatten(1))
        with torch.autocast(s.device.type, enabled=False):  # |x|^2 + |y|^2 - 2xy cancels badly in bf16
            distance = F.smooth_l1_loss(distance_relations(s), distance_relations(t))
            angle = F.smooth_l1_loss(angle_relations(s), angle_relations(t))
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "rkd_distance": self.w_distance * distance, "rkd_angle": self.w_angle * angle}
