"""C2KD (Huo et al., CVPR 2024): bridging the modality gap with proxies and on-the-fly sample selection.

Both networks keep learning. A proxy head (Linear-BN-LeakyReLU(0.1)-Linear, as the official
Tea/Stu proxies, here on each network's pooled post-activation feature) sits on each network;
each network and its own proxy distil into each other (bidirectional KL, the target side
detached), and the two proxies exchange only their non-target-class knowledge, and only on the
samples where they already rank the classes alike (Kendall's tau of the two proxies' logits above
`krc_threshold`, default 0, the official `--krc`):

    L_net(x)   = KL(p_x || q_x) + KL(q_x || p_x)            p: network x, q: its proxy, T = 1, batch means
    L_nt(a<-b) = mean_i [tau_i > thr] KL(q_hat_b || q_hat_a)   q_hat: softmax over the non-target classes
    loss = CE_s + CE_t + w_proxy (L_net(s) + L_net(t)) + w_nt (L_nt(s<-t) + L_nt(t<-s))

The teacher is trained too (`trains_teacher`), with its own CE so it keeps its task. The
non-target distribution drops the target class (as in the paper and DKD); the official code
instead multiplies the target logit by zero and keeps it in the softmax. The masked mean
divides by the batch size, as the official code does. Tau is tau-b (ties counted as scipy does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.method import Method
from cmkd_bench.methods.dkd import non_target
from cmkd_bench.registry import METHODS


def proxy_head(dim: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.LeakyReLU(0.1),
                         nn.Linear(dim, num_classes))


def kendall_tau(x: Tensor, y: Tensor) -> Tensor:
    """Per-row Kendall tau-b of two B x C score matrices (O(C^2) pairwise sign agreement)."""
    dx = torch.sign(x.unsqueeze(2) - x.unsqueeze(1))
    dy = torch.sign(y.unsqueeze(2) - y.unsqueeze(1))
    untied = (dx != 0).sum(dim=(1, 2)) * (dy != 0).sum(dim=(1, 2))
    return (dx * dy).sum(dim=(1, 2)) / untied.clamp(min=1).to(x.dtype).sqrt()


def kl(log_q: Tensor, target_logits: Tensor) -> Tensor:
    """Per-sample KL(softmax(target) || q), the target side detached."""
    return F.kl_div(log_q, F.log_softmax(target_logits.detach(), dim=1), reduction="none", log_target=True).sum(1)




@METHODS.register("c2kd", tasks=("classification",),
                  description="proxies on both networks, bidirectional KL, non-target KL on Kendall-selected samples; "
                              "the teacher is fine-tuned",
                  reference="Huo et al. C2KD: Bridging the Modality Gap for Cross-Modal Knowledge Distillation. "
                            "CVPR 2024")
class C2KD(Method):
    trains_teacher = True

    def __init__(self, student, teacher, spec, krc_threshold: float = 0.0, w_proxy: float = 1.0, w_nt: float = 1.0):
        super().__init__(student, teacher, spec)
        if not -1 <= krc_threshold < 1 or w_proxy < 0 or w_nt < 0:
            raise ValueError(f"need -1 <= krc_threshold < 1 and non-negative weights, got "
                             f"krc_threshold={krc_threshold}, w_proxy={w_proxy}, w_nt={w_nt}")
        self.threshold, self.w_proxy, self.w_nt = krc_threshold, w_proxy, w_nt
        self.proxy_s = proxy_head(student.feature_dim, spec.num_classes)
        self.proxy_t = proxy_head(teacher.feature_dim, spec.num_classes)

    def mutual(self, logits: Tensor, proxy: Tensor) -> Tensor:
        """A network and its own proxy distil into each other."""
        return (kl(F.log_softmax(proxy, dim=1), logits) + kl(F.log_softmax(logits, dim=1), proxy)).mean()

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        q_s, q_t = self.proxy_s(student.feature_post), self.proxy_t(teacher.feature_post)
        selected = (kendall_tau(q_s.detach(), q_t.detach()) > self.threshold).to(q_s.dtype)
        nt_s, nt_t = non_target(q_s, labels), non_target(q_t, labels)
        exchange = kl(F.log_softmax(nt_s, dim=1), nt_t) + kl(F.log_softmax(nt_t, dim=1), nt_s)
        return {"ce": self.task_loss(student.logits, labels),
                "ce_teacher": self.task_loss(teacher.logits, labels),
                "student_proxy": self.w_proxy * self.mutual(student.logits, q_s),
                "teacher_proxy": self.w_proxy * self.mutual(teacher.logits, q_t),
                "proxy_nt": self.w_nt * (selected * exchange).mean()}
