"""OFA-KD, One-for-All KD (Hao et al., NeurIPS 2023): exit branches that map student stages into the
logit space, each distilled from the teacher's logits with a target-enhanced loss.

Reference: Hao840/OFAKD (commit f7bb896), distillers/ofa.py (`ofa_loss`, lines 13-18; the OFA
distiller, lines 21-140), distillers/utils.py (`SepConv`, lines 127-145; `init_weights`, lines
148-158; `is_cnn_model`, lines 169-179), custom_forward/resnet.py (which features: lines 9-25;
`stage_info`, lines 42-118) and train.py's defaults (lines 82-92: --gt-loss-weight 1,
--kd-loss-weight 1, --ofa-eps [1], --ofa-stage 1 2 3 4, --ofa-loss-weight 1, --ofa-temperature 1).

The loss (ofa.py lines 13-18), with p = softmax(z / T) and y the one-hot label:

    ofa(z_s, z_t) = mean_b  - sum_c ((p_t + y)^eps - y)_c * log p_s,c

i.e. the teacher's probability of every non-target class raised to eps, and (1 + p_t)^eps - 1 on
the target class (the adaptive target enhancement; eps = 1 is plain soft-label cross-entropy,
no T^2 factor). The distiller's terms (ofa.py lines 121-138), which train.py sums (line 798):

    loss = ce_weight * CE(z_s, y) + kd_weight * ofa(z_s, z_t) + ofa_weight * sum_stages ofa(branch_k(stage_k), z_t)

with every weight 1, eps 1 and T 1 by default; the final logits get the OFA loss too (`loss_kd`,
at the last eps of the list, lines 133-134), and a single --ofa-eps is used for every stage and
the logits (lines 28-30). eps is the one setting the authors change per experiment: README.md
runs `--ofa-eps 1.5` on ImageNet (line 63) and `--ofa-eps 1.0` on CIFAR-100 (line 85).

Stages. The official default is --ofa-stage 1 2 3 4: the outputs of the four residual stages
(custom_forward/resnet.py: layer1..layer4, the stem never), so `stages="all"` here is every stage
but a stem: the first stage when its name is of another family than the next one's (digits
aside: a timm ResNet's `act1` before `layer1`..`layer4`); small-cnn / small-resnet (`stages.*`),
mlp (`blocks.*`) and the text backbones (`taps.*`) keep every stage. Any comma-separated stage
references can be given instead (`--set stages=layer3,layer4`, `1,2`, `last`).

Branch for a C x H x W stage (ofa.py lines 44-65, the CNN-student branch): with n the number of
stages after this one (`4 - stage` officially, the stride-2 steps down to the last stage), n
SepConv blocks (depthwise 3x3 stride 2, 1x1, BN, ReLU, depthwise 3x3, 1x1, BN, ReLU; the
channels double at each block but the last, which goes to W = max(student, teacher pooled
feature width)), or for the last stage one 1x1 convolution (with bias) to W; then global average
pooling and a linear layer to the classes. Weights as `init_weights`: Kaiming-normal (fan_out,
ReLU) convolutions (their biases keep PyTorch's default), BN weight 1 / bias 0, linear weights
truncated-normal (std 0.02), bias 0. The width W is each model's pooled feature width
(`stage_info(-1)`, ModelInfo.feature_dim here).

Deliberate differences:
- Stages without positions: the text backbones' stages are D x 1 x 1 token means and an MLP's
  are vectors (read as D x 1 x 1). The same convolutional branch serves them: a stride-2 3x3
  convolution with padding 1 maps a 1 x 1 map to a 1 x 1 map (its centre tap only), so each
  SepConv acts as two pointwise layers with BN and ReLU. The official code builds a token branch
  (PatchMerging and ViT blocks, lines 66-103) for ViT / MLP-Mixer students, whose stages are
  L x D token sequences. That branch is not implemented: a student stage of that shape (a timm
  ViT's `blocks.*`) is refused in one line; the students this benchmark trains (small-cnn,
  small-resnet, timm CNNs, mlp, the text backbones) have none.
- One eps for every term: the official --ofa-eps also takes a list, one value per stage and one
  for the logits (lines 28-32), which no README command uses.
- The branch depth is counted in stages of the backbone (n = stages after it), which equals the
  official 4 - stage on 4-stage backbones; backbones with other stage counts get their own n.
- The search space (ours, issue 30's protocol) tunes the logits' OFA weight (`kd_weight`, 1 and 1/100)
  beside the branches' (`ofa_weight`) and eps: with `kd_weight` fixed at 1 the final logits' OFA term
  stays at full weight in every configuration, so no study could reach the regime where distillation is
  negligible. The budget's draw holds ofa_weight 0.01 with kd_weight 0.01.
- log_softmax rather than log(softmax): the same value, finite where a probability underflows;
  the loss runs in at least float32 (under bf16 autocast the branch logits are bf16).
- CE is the harness's plain cross-entropy on hard labels. The official criterion (train.py lines
  509-525) is label-smoothed CE for the CNN configs (configs/{cifar,imagenet}/cnn.yaml
  `smoothing: 0.1`) and soft-target CE under the mixup / cutmix of the vit_mlp and stronger
  configs, whose soft targets ofa.py reduces to their argmax for the one-hot mask (lines
  116-117). Those are recipe choices, the same for every method here.

Search space: ofa_weight in {0.01, 0.1, 1, 10} (the branch losses; three decades, default 1) x
eps in {1.0, 1.5} (the README's two values, train.py's default 1.0). The CE and final-logit
weights stay at 1 (the authors never change them) and T at 1 (never changed in the README).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.losses import at_least_float32, masked_mean, safe_labels, valid_positions
from cmkd_bench.method import Method
from cmkd_bench.models import ModelInfo
from cmkd_bench.registry import METHODS


def ofa_loss(z_s: Tensor, z_t: Tensor, labels: Tensor, eps: float, T: float, valid: Tensor) -> Tensor:
    """mean over valid samples of -sum_c ((p_t + y)^eps - y)_c log p_s,c, p = softmax(z / T)."""
    z_s = at_least_float32(z_s)
    z_t = z_t.to(z_s.dtype)
    log_p_s = F.log_softmax(z_s / T, dim=1)
    p_t = F.softmax(z_t / T, dim=1)
    y = F.one_hot(labels, z_s.shape[1]).to(p_t.dtype)
    target = (p_t + y).pow(eps) - y
    return masked_mean(-(target * log_p_s).sum(dim=1), valid)


def family(name: str) -> str:
    return "".join(ch for ch in name if not ch.isdigit())


def branch_stages(info: ModelInfo, stages: str) -> list[str]:
    """`all`: every stage but a stem (see the module docstring); otherwise the references given."""
    refs = [ref.strip() for ref in stages.split(",") if ref.strip()]
    if not refs:
        raise ValueError(f"stages must name at least one stage (e.g. 'all', 'last' or '1,2'), got {stages!r}")
    if refs == ["all"]:
        names = info.stage_names
        if not names:
            info.stage("last")  # the one-line error naming the model without stages
        if len(names) > 1 and family(names[0]) != family(names[1]):
            names = names[1:]
        return names
    return list(dict.fromkeys(info.stage(ref) for ref in refs))


def sep_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise-separable block that halves the size (OFAKD distillers/utils.py SepConv)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
        nn.Conv2d(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def exit_branch(channels: int, after: int, width: int, num_classes: int) -> nn.Sequential:
    """`after` SepConvs (channels doubling, the last to `width`), or a 1x1 conv for the last stage;
    then pooling and a linear classifier, initialised as OFAKD's init_weights."""
    if after == 0:
        body: list[nn.Module] = [nn.Conv2d(channels, width, 1)]
    else:
        body, c_in = [], channels
        for i in range(after):
            c_out = width if i == after - 1 else 2 * c_in
            body.append(sep_conv(c_in, c_out))
            c_in = c_out
    branch = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    for m in branch.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # a bias keeps its default
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return branch


@METHODS.register("ofa", aliases=("ofa-kd", "one-for-all"), tasks=("classification",),
                  description="exit branches on student stages, each distilled from the teacher's logits "
                              "with a target-enhanced loss",
                  reference="Hao et al. One-for-All: Bridge the Gap Between Heterogeneous Architectures in "
                            "Knowledge Distillation. NeurIPS 2023",
                  search_space={"ofa_weight": [0.01, 0.1, 1.0, 10.0], "kd_weight": [0.01, 1.0], "eps": [1.0, 1.5]},
                  loss_weights=("ofa_weight",))
class OFA(Method):
    """loss = ce_weight * CE + kd_weight * ofa(logits) + ofa_weight * sum over stages ofa(branch(stage))."""

    def __init__(self, student, teacher, spec, stages: str = "all", eps: float = 1.0, T: float = 1.0,
                 ofa_weight: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__(student, teacher, spec)
        if eps <= 0 or T <= 0 or min(ofa_weight, kd_weight, ce_weight) < 0:
            raise ValueError(f"need eps > 0, T > 0 and weights >= 0, got eps={eps}, T={T}, ofa_weight={ofa_weight}, "
                             f"kd_weight={kd_weight}, ce_weight={ce_weight}")
        self.stages = branch_stages(student, stages)
        names = student.stage_names
        width = max(student.feature_dim, teacher.feature_dim)
        branches = []
        for name in self.stages:
            shape = student.stage_shapes[name]
            if len(shape) not in (1, 3):
                raise ValueError(f"ofa builds its branches on C x H x W maps or vectors (no token-sequence branch); "
                                 f"student stage {name!r} of {student.name!r} has shape {shape}")
            branches.append(exit_branch(shape[0], len(names) - 1 - names.index(name), width, spec.num_classes))
        self.branches = nn.ModuleList(branches)
        self.eps, self.T = eps, T
        self.ofa_weight, self.kd_weight, self.ce_weight = ofa_weight, kd_weight, ce_weight

    def teacher_reads(self):
        return frozenset({"logits"})

    def branch_logits(self, student) -> list[Tensor]:
        """Each branch's logits, B x num_classes, in the order of `self.stages`."""
        out = []
        for name, branch in zip(self.stages, self.branches):
            x = student.stages[name]
            out.append(branch(x[:, :, None, None] if x.dim() == 2 else x))
        return out

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        valid = valid_positions(labels, self.ignore_index)
        targets = safe_labels(labels, valid)
        z_t = teacher.logits.detach()
        branches = sum(ofa_loss(z, z_t, targets, self.eps, self.T, valid) for z in self.branch_logits(student))
        return {"ce": self.ce_weight * self.task_loss(student.logits, labels),
                "kd": self.kd_weight * ofa_loss(student.logits, z_t, targets, self.eps, self.T, valid),
                "ofa": self.ofa_weight * branches}
