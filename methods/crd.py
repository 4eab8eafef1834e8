"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020).

Reference: HobbitLong/RepDistiller (commit b84f547): crd/criterion.py (`CRDLoss`, `ContrastLoss`,
`Embed`), crd/memory.py (`ContrastMemory`) and dataset/cifar100.py (`CIFAR100InstanceSample`);
defaults from train_student.py (`--feat_dim 128 --mode exact --nce_k 16384 --nce_t 0.07
--nce_m 0.5`, `-r 1` CE weight) and scripts/run_cifar_distill.sh (`--distill crd -a 0 -b 0.8`),
the same as megvii-research/mdistiller mdistiller/engine/cfg.py (CFG.CRD).

The pooled post-activation features (RepDistiller's feat[-1]) are embedded (linear + L2 norm,
128-d) per network. A memory bank per network holds one embedding per training sample (row =
the sample's "index" in the train split), updated with momentum 0.5 and renormalised, and
initialised uniform in +-1 / sqrt(feat_dim / 3). For a student embedding v_s the positive is the
teacher memory row of the same sample and K negatives are teacher rows of other samples; with
h(v, m) = exp(<v, m> / nce_t) / Z (Z fixed from the first batch as mean(h) * N) and the uniform
noise distribution P_n = 1 / N, the NCE objective is

    L(v) = -[ log h_0 / (h_0 + K P_n) + sum_k log K P_n / (h_k + K P_n) ]      (batch mean)
    loss = CE + weight * (L_student-anchor + L_teacher-anchor)

as in ContrastMemory / ContrastLoss (eps 1e-7), with weight 0.8, K = 16384, nce_t = 0.07.

Negatives (`negatives`):
- "exact" (default, the official `mode='exact'`): K distinct samples drawn uniformly, without
  replacement, from the train samples of the other classes (CIFAR100InstanceSample's
  `np.random.choice(cls_negative[target], k, replace=False)`). It needs every train label, which
  `prepare()` reads from the data before training. K is capped at N - (size of the largest
  class), the fewest other-class samples any anchor has, so every anchor draws K distinct
  negatives; on CIFAR-100 (N = 50000, 500 per class) 16384 is not capped. Deliberate difference
  for small datasets: where K exceeds an anchor's pool, the official code draws K with
  replacement (repeating negatives); here K is capped instead, one K for the whole batch.
  The official "relax" mode (a random same-class positive) is not offered.
- "uniform": K draws with replacement among all other training samples (K capped at N - 1).
  Deliberate difference from ContrastMemory's fallback sampler (the alias method over all N
  rows), which can also draw the anchor's own row as a negative; here it is skipped.
Draws use torch's global RNG on the batch's device (seeded and restored by the engine), not
NumPy in DataLoader workers. The NCE noise term keeps P_n = 1 / N in both modes, as the official
code does. Scores are computed in float32 even under bf16 autocast (exp(<v, m> / 0.07)
magnifies rounding).

Under torchrun (DDP; RepDistiller itself trains on one GPU) each rank scores its part of the
batch, but the negatives are drawn for the whole batch on every rank (the draws one process makes,
this rank's rows kept), Z comes from the whole batch's mean, and both banks are updated with the
whole batch's embeddings (all-gathered), so the banks stay identical on every rank and the run
matches a single process up to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench import distributed
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


def train_labels(data) -> Tensor:
    """Every label of the train split, by position (the batches' "index")."""
    if callable(getattr(data, "labels", None)):
        return torch.as_tensor(data.labels("train"), dtype=torch.long).cpu()
    splits = getattr(data, "splits", None)
    if isinstance(splits, dict) and "train" in splits:
        return splits["train"]["label"].long().cpu()
    labels = torch.full((data.spec.split_sizes["train"],), -1, dtype=torch.long)  # one pass, in order
    for batch in data.batches("train", 256, shuffle=False):
        labels[batch["index"].cpu()] = batch["label"].cpu().long()
    return labels


@METHODS.register("crd", tasks=("classification",),
                  description="contrastive (NCE) matching of embedded features against per-sample memory banks",
                  reference="Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020",
                  search_space={"weight": [0.008, 0.08, 0.8, 8.0], "nce_t": [0.05, 0.07, 0.2]},
                  loss_weights=("weight",))
class CRD(Method):
    needs = frozenset({"index"})

    def __init__(self, student, teacher, spec, weight: float = 0.8, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, momentum: float = 0.5, negatives: str = "exact"):
        super().__init__(student, teacher, spec)
        n = spec.split_sizes["train"]
        if n < 2:
            raise ValueError(f"CRD needs at least 2 training samples for negatives, got {n}")
        if feat_dim < 1 or nce_k < 1 or nce_t <= 0 or not 0 <= momentum < 1 or weight < 0:
            raise ValueError(f"need feat_dim >= 1, nce_k >= 1, nce_t > 0, 0 <= momentum < 1, weight >= 0; got "
                             f"feat_dim={feat_dim}, nce_k={nce_k}, nce_t={nce_t}, momentum={momentum}, weight={weight}")
        if negatives not in ("exact", "uniform"):
            raise ValueError(f"negatives is 'exact' (other classes, the official default) or 'uniform', "
                             f"got {negatives!r}")
        self.weight, self.nce_t, self.momentum, self.negatives = weight, nce_t, momentum, negatives
        self.n_data, self.nce_k = n, nce_k
        self.k = min(nce_k, n - 1)  # exact mode: capped again by the class sizes in prepare()
        self.embed_s, self.embed_t = Embed(student.feature_dim, feat_dim), Embed(teacher.feature_dim, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3)  # the official uniform initialisation of the banks
        self.register_buffer("memory_s", torch.rand(n, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n, feat_dim) * 2 * bound - bound)
        self.register_buffer("z_s", torch.tensor(-1.0))  # set from the first batch, then fixed
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))  # exact mode: set by prepare()
        self.labels_checked = False

    def prepare(self, teacher, data, device, cache_dir) -> None:
        if self.negatives == "exact":
            self.set_train_labels(train_labels(data))

    def set_train_labels(self, labels: Tensor) -> None:
        """The train split's labels by position; caps K at the fewest other-class samples of any anchor."""
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if len(labels) != self.n_data or bool((labels < 0).any()):
            raise ValueError(f"crd: expected {self.n_data} non-negative train labels, got {len(labels)}")
        pool = self.n_data - int(torch.bincount(labels).max())
        if pool < 1:
            raise UserError("crd with negatives=exact needs train samples of at least two classes; "
                            "use --set negatives=uniform")
        self.labels.copy_(labels.to(self.labels.device))
        self.k = min(self.nce_k, pool)
        self.labels_checked = True

    def check_labels(self) -> None:
        """Once: exact mode needs the labels (from prepare(), or a restored state dict; K follows them)."""
        if self.negatives != "exact" or self.labels_checked:
            return
        if int(self.labels.min()) < 0:
            raise RuntimeError("crd: prepare() must run before training; exact negatives need the train labels")
        self.set_train_labels(self.labels.clone())

    def sample_contrast(self, index: Tensor) -> Tensor:
        """B x (1 + K) memory rows: the sample itself, then its K negatives."""
        self.check_labels()
        if self.negatives == "uniform":  # K draws with replacement among the other samples
            negatives = torch.randint(0, self.n_data - 1, (len(index), self.k), device=index.device)
            negatives = negatives + (negatives >= index[:, None]).long()  # skip the positive's own row
        else:  # K distinct samples of other classes: the K smallest of uniform keys, own class pushed last
            labels = self.labels.to(index.device)
            same = labels[None, :] == labels[index][:, None]
            keys = torch.rand(len(index), self.n_data, device=index.device) + same
            negatives = keys.topk(self.k, dim=1, largest=False, sorted=False).indices
        return torch.cat([index[:, None], negatives], dim=1)

    def scores(self, anchor: Tensor, memory: Tensor, contrast: Tensor, z: Tensor) -> Tensor:
        if self.n_data <= 4 * contrast.shape[1]:
            # K is a good part of the bank: scoring every row (B x N) beats gathering B x K x D rows
            dots = (anchor @ memory.detach().clone().T).gather(1, contrast)  # a copy: the bank updates in place
        else:
            dots = torch.bmm(memory[contrast].detach(), anchor.unsqueeze(2)).squeeze(2)  # B x (1 + K)
        h = torch.exp(dots / self.nce_t)
        # set once (no host sync); under torchrun from the whole batch's mean (equal parts: the mean of the ranks')
        z.copy_(torch.where(z < 0, distributed.mean(h.detach().mean()) * self.n_data, z))
        return h / z

    @torch.no_grad()
    def update(self, memory: Tensor, index: Tensor, embedding: Tensor) -> None:
        mixed = memory[index] * self.momentum + embedding.detach() * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(mixed, dim=1).to(memory.dtype))

    def teacher_reads(self):
        return frozenset({"feature_post"})

    def forward(self, student, teacher, batch):
        if "index" not in batch:
            raise UserError("method 'crd' needs batch['index'] (each sample's position in the train split) "
                            "for its memory bank; this dataset's batches do not provide it")
        self.check_labels()
        index, dtype = batch["index"], self.memory_s.dtype
        whole = distributed.gather(index)  # under torchrun: the whole batch's rows, in one process's order
        with torch.autocast(index.device.type, enabled=False):  # exp(<v, m> / 0.07) magnifies bf16 rounding
            v_s = self.embed_s(student.feature_post.to(dtype))
            v_t = self.embed_t(teacher.feature_post.detach().to(dtype))
            # the whole batch's negatives drawn on every rank (the same draws as one process), this rank's rows kept
            contrast = distributed.local_rows(self.sample_contrast(whole))
            noise = self.k / self.n_data
            loss = (nce_loss(self.scores(v_s, self.memory_t, contrast, self.z_s), noise)
                    + nce_loss(self.scores(v_t, self.memory_s, contrast, self.z_t), noise))
        self.update(self.memory_s, whole, distributed.gather(v_s))  # every rank's bank sees the whole batch
        self.update(self.memory_t, whole, distributed.gather(v_t))
        return {"ce": self.task_loss(student.logits, batch["label"]), "crd": self.weight * loss}
