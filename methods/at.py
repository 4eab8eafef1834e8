"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): the student matches where the teacher looks.

Reference: szagoruyko/attention-transfer (commit 893df54), utils.py `at()` / `at_loss()` and
cifar.py `h()`; defaults cross-checked with megvii-research/mdistiller, mdistiller/distillers/AT.py
and mdistiller/engine/cfg.py (CFG.AT: P = 2, FEAT_WEIGHT = 1000, CE_WEIGHT = 1), and with
HobbitLong/RepDistiller, distiller_zoo/AT.py and scripts/run_cifar_distill.sh (`-b 1000`).

The attention map of a stage map A (C x H x W) is Q = mean_c |A_c|^p (p = 2), flattened and
L2-normalised per sample (the official `at(x) = normalize(x.pow(2).mean(1).view(B, -1))`).
Student and teacher stages are paired by position in `stages`, and, as in the official cifar.py
(`loss = ... + opt.beta * sum(loss_groups)`, `at_loss = (at(x) - at(y)).pow(2).mean()`, beta =
1e3 in its README's command line):

    loss = CE + beta * sum_pairs mean_{b, hw} (Q_s - Q_t)^2,      beta = 1000

The paper writes beta / 2 in front of a sum of p-norms of the difference; the official code, and
mdistiller / RepDistiller after it, use beta * mean of squares without the 1/2, which is what is
implemented here. The CE weight is 1 (cifar.py with alpha = 0, mdistiller CE_WEIGHT = 1).

Stages. The official code transfers every residual group (cifar.py: group0..group2; mdistiller:
feats[1:]; RepDistiller: feat_s[1:-1], i.e. all residual stages, never the stem or the pooled
vector). Here the default is `stages=last`, a deliberate difference: early stages are the most
modality-specific, and across modalities their attention rarely corresponds. The official choice
is the preset `at-all-stages` (the same as `--set stages=all`): every stage but the stem, paired
from the deepest one back when the two models have different numbers of stages. No official code
transfers the stem, so `all` leaves it out where a backbone lists it as a stage: the first stage
when its name is of another family than the next one's (digits aside: timm ResNets' `act1`
before `layer1`..`layer4`, RegNets' `stem`, MobileNetV3's `bn1`, DenseNets' `features.norm0`),
and an smp encoder's stride-2 output `encoder[1]` (the conv-BN-ReLU stem of its ResNet
encoders). Backbones whose stages are all of one family (small-cnn, ConvNeXt's `stages.*`) keep
every stage. A stage list such as `--set stages=0,1,2` is taken as given, stem included.

Deliberate differences, all for cross-modal pairs:
- Sizes: the official cifar.py assumes equal sizes; mdistiller / RepDistiller pool the larger
  *feature map* to the smaller (square) size. Here the student's *attention map* (not its
  features) is always resized to the teacher's size by adaptive average pooling before
  normalising, so the target never changes with the student and non-square maps work: it
  averages cells when shrinking and repeats them when growing. With equal sizes this is the
  official computation exactly.
- |A|^p rather than A^p: the paper's definition; identical to the official code for even p.
- Which tensor: a stage is the output of the backbone's stage module, which for ResNets is after
  the block's final ReLU (timm `layer*`, small-cnn `stages.*`); attention-transfer's groups
  (cifar.py `group0..2`, WRN blocks with pre-activation) are residual sums before any activation,
  and mdistiller's `feats` are the ReLU outputs too (mdistiller/models/cifar/resnet.py: `f1 = x`
  after each block's `F.relu`, the sums before it in `preact_feats`, which AT.py does not read).
  The post-activation output is kept: it is what mdistiller transfers, and what every other
  stage-reading method here reads.
- Maps are computed in at least float32 (bf16 autocast would round the normalised maps).
Text models (cmkd_bench.models.text_backbones) have no positions that correspond to an image's: their
stages are D x 1 x 1 token means, whose attention map is the constant 1, so `at` declines them in
one line rather than train with a loss that is identically zero.
For segmentation the formula is unchanged; a dense model's stages end with "decoder", so `last`
transfers the attention of the map the segmentation head reads (the official code has no
segmentation setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_bench.method import Method
from cmkd_bench.models import ModelInfo
from cmkd_bench.registry import METHODS


def attention_map(stage: Tensor, p: float, size: tuple[int, ...] | None = None) -> Tensor:
    """B x C x H x W -> B x (H'W'): channel mean of |A|^p, pooled to `size`, L2-normalised (>= float32)."""
    energy = (stage if stage.dtype == torch.float64 else stage.float()).abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None and tuple(energy.shape[2:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy, size)
    return F.normalize(energy.flatten(1), dim=1)


def family(name: str) -> str:
    return "".join(ch for ch in name if not ch.isdigit())


def without_stem(names: list[str]) -> list[str]:
    """The stages `all` transfers: every stage but a stem (see the module docstring)."""
    names = [n for n in names if not n.endswith("encoder[1]")]  # smp: the stride-2 stem output
    if len(names) > 1 and family(names[0]) != family(names[1]):
        names = names[1:]
    return names


def stage_pairs(student: ModelInfo, teacher: ModelInfo, stages: str) -> list[tuple[str, str]]:
    """Resolve each comma-separated stage reference on both models; pairs go by position.

    `all` pairs every stage but the stem, from the deepest back when the two models have different
    numbers of stages (the official code pairs its residual groups one by one, on same-depth networks).
    """
    refs = [ref.strip() for ref in stages.split(",") if ref.strip()]
    if not refs:
        raise ValueError(f"stages must name at least one stage (e.g. 'last', 'all' or '1,2'), got {stages!r}")
    if refs == ["all"]:
        s_names, t_names = without_stem(student.stage_names), without_stem(teacher.stage_names)
        n = min(len(s_names), len(t_names))
        if n == 0:
            student.stage("last"), teacher.stage("last")  # the one-line error naming the model without stages
        pairs = list(zip(s_names[-n:], t_names[-n:]))
    else:
        pairs = [(student.stage(ref), teacher.stage(ref)) for ref in refs]
    for s, t in pairs:
        for who, info, name in (("student", student, s), ("teacher", teacher, t)):
            if len(info.stage_shapes[name]) != 3:
                raise ValueError(f"attention transfer needs C x H x W stage maps; {who} stage {name!r} "
                                 f"has shape {info.stage_shapes[name]}")
            if info.stage_shapes[name][1] * info.stage_shapes[name][2] < 2:  # text models: D x 1 x 1
                raise ValueError(f"attention transfer compares where two models look, which needs stage maps with "
                                 f"positions; {who} stage {name!r} of {info.name!r} has one position "
                                 f"{info.stage_shapes[name]} (a text model's stages are pooled over its tokens)")
    return pairs


@METHODS.register("at", aliases=("attention-transfer",), tasks=("classification", "segmentation"),
                  description="MSE between L2-normalised spatial attention maps (channel mean of |A|^p)",
                  reference="Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017",
                  search_space={"beta": [10.0, 100.0, 1000.0, 10000.0], "stages": ["last", "all"]},
                  loss_weights=("beta",))
class AttentionTransfer(Method):
    """loss = CE + beta * sum over stage pairs of mean (Q_s - Q_t)^2 (the official code's form)."""

    def __init__(self, student, teacher, spec, stages: str = "last", beta: float = 1000.0, p: float = 2.0):
        super().__init__(student, teacher, spec)
        if beta < 0 or p <= 0:
            raise ValueError(f"need beta >= 0 and p > 0, got beta={beta}, p={p}")
        self.pairs = stage_pairs(student, teacher, stages)
        self.sizes = [teacher.stage_shapes[t][1:] for _, t in self.pairs]
        self.beta, self.p = beta, p

    def teacher_reads(self):
        return frozenset(f"stage:{t}" for _, t in self.pairs)

    def forward(self, student, teacher, batch):
        at = sum((attention_map(student.stages[s], self.p, size)
                  - attention_map(teacher.stages[t].detach(), self.p)).pow(2).mean()
                 for (s, t), size in zip(self.pairs, self.sizes))
        return {"ce": self.task_loss(student.logits, batch["label"]), "at": self.beta * at}


# The official choice of stages: every residual group, not the stem (attention-transfer cifar.py).
METHODS.register_preset("at-all-stages", "at", stages="all",
                        search_space={"beta": [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]},
                        loss_weights=("beta",),
                        description="attention transfer on every stage, the official code's choice (beta = 1000)")
