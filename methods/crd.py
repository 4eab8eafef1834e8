"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020).

Pooled post-activation features are embedded (linear + L2 norm, 128-d) per network. A memory bank
per network holds one embedding per training sample (row = the sample's "index" in the train
split), updated with momentum 0.5 and renormalised. For a student embedding v_s, the positive is
the teacher memory row of the same sample and K negatives are teacher rows of other samples;
with h(v, m) = exp(<v, m> / nce_t) / Z (Z fixed from the first batch as mean(h) * N) and the
uniform noise distribution P_n = 1 / N, the NCE objective is

    L(v) = -[ log h_0 / (h_0 + K P_n) + sum_k log K P_n / (h_k + K P_n) ]      (batch mean)
    loss = CE + weight * (L_student-anchor + L_teacher-anchor)

as in the official ContrastMemory / ContrastLoss (eps 1e-7), with weight 0.8, K = 4096 (capped
at N - 1), nce_t = 0.07. Negatives are drawn uniformly, with replacement, among the other
training samples using torch's global RNG (seeded and restored by the engine); the official
CIFAR code instead draws them from other classes ("exact" mode), which needs every label up front.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.errors import UserError
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS

EPS = 1e-7


class Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def nce_loss(scores: Tensor, noise: float) -> Tensor:
    """scores: B x (1 + K) normalised h, positive first; noise = K * P_n."""
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / len(scores)


@METHODS.register("crd", tasks=("classification",),
                  description="contrastive (NCE) matching of embedded features against per-sample memory banks",
                  reference="Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020")
class CRD(Method):
    needs = frozenset({"index"})

    def __init__(self, student, teacher, spec, weight: float = 0.8, feat_dim: int = 128, nce_k: int = 4096,
                 nce_t: float = 0.07, momentum: float = 0.5):
        super().__init__(student, teacher, spec)
        n = spec.split_sizes["train"]
        if n < 2:
            raise ValueError(f"CRD needs at least 2 training samples for negatives, got {n}")
        if feat_dim < 1 or nce_k < 1 or nce_t <= 0 or not 0 <= momentum < 1 or weight < 0:
            raise ValueError(f"need feat_dim >= 1, nce_k >= 1, nce_t > 0, 0 <= momentum < 1, weight >= 0; got "
                             f"feat_dim={feat_dim}, nce_k={nce_k}, nce_t={nce_t}, momentum={momentum}, weight={weight}")
        self.weight, self.nce_t, self.momentum = weight, nce_t, momentum
        self.n_data, self.k = n, min(nce_k, n - 1)
        self.embed_s, self.embed_t = Embed(student.feature_dim, feat_dim), Embed(teacher.feature_dim, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3)  # the official uniform initialisation of the banks
        self.register_buffer("memory_s", torch.rand(n, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n, feat_dim) * 2 * bound - bound)
        self.register_buffer("z_s", torch.tensor(-1.0))  # set from the first batch, then fixed
        self.register_buffer("z_t", torch.tensor(-1.0))

    def sample_contrast(self, index: Tensor) -> Tensor:
        """B x (1 + K) memory rows: the sample itself, then K uniform draws among the other samples."""
        negatives = torch.randint(0, self.n_data - 1, (len(index), self.k), device=index.device)
        negatives = negatives + (negatives >= index[:, None]).long()  # skip the positive's own row
        return torch.cat([index[:, None], negatives], dim=1)

    def scores(self, anchor: Tensor, memory: Tensor, contrast: Tensor, z: Tensor) -> Tensor:
        if self.n_data <= 4 * contrast.shape[1]:
            # K is a good part of the bank: scoring every row (B x N) beats gathering B x K x D rows
            dots = (anchor @ memory.detach().clone().T).gather(1, contrast)  # a copy: the bank updates in place
        else:
            dots = torch.bmm(memory[contrast].detach(), anchor.unsqueeze(2)).squeeze(2)  # B x (1 + K)
        h = torch.exp(dots / self.nce_t)
        z.copy_(torch.where(z < 0, h.detach().mean() * self.n_data, z))  # set once, no host sync
        return h / z

    @torch.no_grad()
    def update(self, memory: Tensor, index: Tensor, embedding: Tensor) -> None:
        mixed = memory[index] * self.momentum + embedding.detach() * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(mixed, dim=1).to(memory.dtype))

    def forward(self, student, teacher, batch):
        if "index" not in batch:
            raise UserError("method 'crd' needs batch['index'] (each sample's position in the train split) "
                            "for its memory bank; this dataset's batches do not provide it")
        index, dtype = batch["index"], self.memory_s.dtype
        with torch.autocast(index.device.type, enabled=False):  # exp(<v, m> / 0.07) magnifies bf16 rounding
            v_s = self.embed_s(student.feature_post.to(dtype))
            v_t = self.embed_t(teacher.feature_post.detach().to(dtype))
            contrast = self.sample_contrast(index)
            noise = self.k / self.n_data
            loss = (nce_loss(self.scores(v_s, self.memory_t, contrast, self.z_s), noise)
                    + nce_loss(self.scores(v_t, self.memory_s, contrast, self.z_t), noise))
        self.update(self.memory_s, index, v_s)
        self.update(self.memory_t, index, v_t)
        return {"ce": self.task_loss(student.logits, batch["label"]), "crd": self.weight * loss}
