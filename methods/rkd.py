"""Relational knowledge distillation (Park et al., CVPR 2019): match distances and angles in a batch.

Checked against the authors' code, lenscloth/RKD (metric/loss.py: RkdDistance, RKdAngle;
metric/utils.py: pdist), and against HobbitLong/RepDistiller (distiller_zoo/RKD.py, RKDLoss with
w_d = 25, w_a = 50, applied in helper/loops.py to feat[-1], the pooled post-activation feature
the classifier sees, with `-a 0 -b 1` in scripts/run_cifar_distill.sh) and
megvii-research/mdistiller (mdistiller/distillers/RKD.py, the same loss on "pooled_feat";
cfg.py: DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50, FEAT_WEIGHT 1, CE_WEIGHT 1, eps 1e-12, not squared).
The formula, all three alike:

    d(i, j)  = sqrt(clamp(|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, 1e-12)), 0 on the diagonal
    psi_D    = d / mean(d[d > 0])
    psi_A    = <unit(x_j - x_i), unit(x_k - x_i)> over all B^3 triplets (i, j, k)
    loss     = CE + weight * (w_distance * smoothL1(psi_D^s, psi_D^t) + w_angle * smoothL1(psi_A^s, psi_A^t))

smooth-L1 with beta 1 and the mean over all entries, teacher relations without gradient.
`weight` is mdistiller's FEAT_WEIGHT (RepDistiller's -b): one global scale, 1 by default, so the
defaults are the 25 / 50 of RepDistiller and mdistiller (lenscloth/RKD's metric-learning
scripts use the same 1 : 2 ratio, --dist_ratio 1 --angle_ratio 2). Relations do not depend on
the feature width, so the student and teacher dimensions may differ without a projection.
Implementation details that do not change the value: the mean of the non-zero distances is
sum(d) / count(d > 0) (no boolean indexing, which would sync the host on CUDA), and the
relations are computed in float32 even under bf16 autocast. `feature="pre"` (the pre-activation
pooled feature) is an option of ours; the references use the post-activation one, our default.
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
    """Distances divided by the mean of the non-zero ones (the references' d[d > 0].mean())."""
    d = pairwise_distances(x)
    return d / (d.sum() / (d > 0).sum())


def angle_relations(x: Tensor) -> Tensor:
    """Cosine of the angle at vertex i between x_j and x_k, for all (i, j, k)."""
    edges = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [i, j] = unit(x_j - x_i)
    return torch.bmm(edges, edges.transpose(1, 2)).flatten()


@METHODS.register("rkd", aliases=("relational-kd",), tasks=("classification",),
                  description="smooth-L1 between normalised pairwise distances and triplet angles of pooled features",
                  reference="Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019",
                  search_space={"weight": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
                  loss_weights=("weight",))
class RKD(Method):
    def __init__(self, student, teacher, spec, w_distance: float = 25.0, w_angle: float = 50.0, feature: str = "post",
                 weight: float = 1.0):
        super().__init__(student, teacher, spec)
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
        if w_distance < 0 or w_angle < 0 or weight < 0:
            raise ValueError(f"weights must not be negative, got w_distance={w_distance}, w_angle={w_angle}, "
                             f"weight={weight}")
        self.attr, self.w_distance, self.w_angle, self.weight = FEATURES[feature], w_distance, w_angle, weight

    def teacher_reads(self):
        return frozenset({self.attr})

    def forward(self, student, teacher, batch):
        s = full_precision(getattr(student, self.attr).flatten(1))
        t = full_precision(getattr(teacher, self.attr).detach().flatten(1))
        with torch.autocast(s.device.type, enabled=False):  # |x|^2 + |y|^2 - 2xy cancels badly in bf16
            distance = F.smooth_l1_loss(distance_relations(s), distance_relations(t))
            angle = F.smooth_l1_loss(angle_relations(s), angle_relations(t))
        return {"ce": self.task_loss(student.logits, batch["label"]),
                "rkd_distance": self.weight * self.w_distance * distance,
                "rkd_angle": self.weight * self.w_angle * angle}
