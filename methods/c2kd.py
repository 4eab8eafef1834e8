"""C2KD (Huo et al., CVPR 2024): bridging the modality gap with proxies and on-the-fly sample selection.

Reference: github.com/huofushuo/C2KD, `ave/utils/helper.py` (`train_network_distill`, `ntkl`),
`ave/utils/module.py` (`Tea`, `Stu`, `conv_1x1_bn`), `ave/utils/model_res.py` (the ResNet-18 whose
stage list the proxies read) and `ave/main_overlap_tag.py` (options and optimiser); the CREMA-D copy
(`cramed/`) is the same. Defaults are that script's.

Both networks keep learning. A proxy sits on each network: the official `Tea` / `Stu` average-pool
the network's penultimate stage (`f4` in model_res.py is the output of layer3 of ResNet-18, the
stage before the last), then conv1x1 (no bias) - BatchNorm - LeakyReLU(0.1) at that stage's
width, then a linear classifier; convolutions are Kaiming-normal (fan_out) initialised, BN 1 / 0.
Here `proxy_stage` is a stage reference of cmkd_bench.models.features (default "-2", the penultimate stage
of any backbone). Each network and its own proxy distil into each other, and the two proxies
exchange their non-target knowledge on the samples where their class rankings agree (scipy's
Kendall tau-b of the two proxies' logits above `krc_threshold`, the official `--krc` = 0):

    L_net(x)   = KL(p_x || q_x) + KL(q_x || p_x)       p: network x's logits, q: its proxy's; the
                                                        target side detached, T = 1, batchmean
    L_nt(a<-b) = mean_i m_i KL(nt(q_b) || nt(q_a))      m_i = [tau_i > krc], the mean over the whole
                                                        batch; nt(z) = softmax of z with the target
                                                        logit multiplied by zero (kept in the softmax)
    loss = CE_s + CE_t + w_proxy (L_net(s) + L_net(t)) + w_nt (L_nt(s<-t) + L_nt(t<-s))

with w_proxy = w_nt = 1 (the official loss sums the eight terms unweighted; its `--weight` option
only names the saved file). The teacher is optimised with its own CE (`trains_teacher`), in train
mode, and without weight decay (`teacher_weight_decay = 0`: the official SGD sets none). A sample
whose proxy logits are all equal has tau NaN (as scipy gives) and is never selected.

Deliberate differences, each for the suite's protocol:
- Learning rate, schedule, epochs and the student's weight decay come from the dataset's shared
  recipe, as for every method (official: SGD lr 1e-2, momentum 0.9, no weight decay anywhere,
  poly decay per epoch over 100 epochs); all groups share the recipe's learning rate as officially.
  The proxies are the method's own parts and get the recipe's weight decay like the student.
- The teacher starts from the suite's trained teacher, not from the official pre-training script.
Options beyond the official form: `non_target="drop"` (the paper's and DKD's non-target
distribution, the target class removed from the softmax) and `proxy_stage="pooled"` (the final
pooled feature, what the head reads; also the only choice for backbones without stage maps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.errors import UserError
from cmkd_bench.losses import non_target as drop_target
from cmkd_bench.method import Method
from cmkd_bench.models import ModelInfo, ModelOutput, global_pool
from cmkd_bench.registry import METHODS

NON_TARGET = ("zero-logit", "drop")


class Proxy(nn.Module):
    """The official proxy: global average pool, conv1x1 - BN - LeakyReLU(0.1) at the same width, linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        pooled = global_pool(x).flatten(1)[:, :, None, None]  # maps and vectors alike: B x C x 1 x 1
        return self.fc(F.leaky_relu(self.norm(self.conv(pooled)), 0.1).flatten(1))


def kendall_tau(x: Tensor, y: Tensor) -> Tensor:
    """Per-row Kendall tau-b of two B x C score matrices, as scipy.stats.kendalltau (NaN for a constant row)."""
    dx = torch.sign(x.unsqueeze(2) - x.unsqueeze(1))
    dy = torch.sign(y.unsqueeze(2) - y.unsqueeze(1))
    untied = ((dx != 0).sum(dim=(1, 2)) * (dy != 0).sum(dim=(1, 2))).to(x.dtype)
    return (dx * dy).sum(dim=(1, 2)) / untied.sqrt()  # 0 / 0 = NaN where a row is constant


def kl(log_q: Tensor, target_logits: Tensor) -> Tensor:
    """Per-sample KL(softmax(target) || q), the target side detached."""
    return F.kl_div(log_q, F.log_softmax(target_logits.detach(), dim=1), reduction="none", log_target=True).sum(1)


def zero_target(z: Tensor, labels: Tensor) -> Tensor:
    """The official `ntkl` input: the target logit multiplied by zero, all C classes kept."""
    return z.masked_fill(F.one_hot(labels, z.shape[1]).bool(), 0.0)


def proxy_width(info: ModelInfo, ref: str) -> tuple[str | None, int]:
    """(stage name, channels) the proxy reads; (None, feature_dim) for the pooled last feature."""
    if ref == "pooled":
        return None, info.feature_dim
    try:
        name = info.stage(ref)
    except UserError as exc:
        raise UserError(f"c2kd: {exc}; or set proxy_stage=pooled (the pooled final feature)") from exc
    return name, info.stage_shapes[name][0]


@METHODS.register("c2kd", tasks=("classification",),
                  description="proxies on both networks' penultimate stages, bidirectional KL, non-target KL on "
                              "Kendall-selected samples; the teacher is fine-tuned",
                  reference="Huo et al. C2KD: Bridging the Modality Gap for Cross-Modal Knowledge Distillation. "
                            "CVPR 2024",
                  search_space={"krc_threshold": [-1.0, 0.0, 0.2, 0.4], "w_nt": [0.01, 0.1, 1.0, 10.0]},
                  loss_weights=("w_nt",))
class C2KD(Method):
    trains_teacher = True
    teacher_weight_decay = 0.0

    def __init__(self, student, teacher, spec, krc_threshold: float = 0.0, w_proxy: float = 1.0, w_nt: float = 1.0,
                 proxy_stage: str = "-2", non_target: str = "zero-logit"):
        super().__init__(student, teacher, spec)
        if not -1 <= krc_threshold < 1 or w_proxy < 0 or w_nt < 0:
            raise ValueError(f"need -1 <= krc_threshold < 1 and non-negative weights, got "
                             f"krc_threshold={krc_threshold}, w_proxy={w_proxy}, w_nt={w_nt}")
        if non_target not in NON_TARGET:
            raise ValueError(f"non_target must be one of {', '.join(NON_TARGET)}, got {non_target!r}")
        self.threshold, self.w_proxy, self.w_nt, self.non_target = krc_threshold, w_proxy, w_nt, non_target
        self.s_stage, s_width = proxy_width(student, proxy_stage)
        self.t_stage, t_width = proxy_width(teacher, proxy_stage)
        self.proxy_s = Proxy(s_width, spec.num_classes)
        self.proxy_t = Proxy(t_width, spec.num_classes)

    @staticmethod
    def proxy_input(out: ModelOutput, stage: str | None) -> Tensor:
        return out.feature_post if stage is None else out.stages[stage]

    def proxy_logits(self, proxy: nn.Module, out: ModelOutput, stage: str | None) -> Tensor:
        """The proxy in float32 even under the run's bf16 autocast (CUDA): Kendall's tau ranks these
        logits, and bf16's 8-bit mantissa makes ties among them that the official float32 code has not
        (a deliberate difference from running everything under autocast; none on the CPU)."""
        x = self.proxy_input(out, stage)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return proxy(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)

    def nt_log_probs(self, z: Tensor, labels: Tensor) -> Tensor:
        z = z if z.dtype == torch.float64 else z.float()
        return F.log_softmax(zero_target(z, labels) if self.non_target == "zero-logit" else drop_target(z, labels), 1)

    def mutual(self, logits: Tensor, proxy: Tensor) -> Tensor:
        """A network and its own proxy distil into each other (each side's target detached)."""
        return (kl(F.log_softmax(proxy, dim=1), logits) + kl(F.log_softmax(logits, dim=1), proxy)).mean()

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        q_s = self.proxy_logits(self.proxy_s, student, self.s_stage)
        q_t = self.proxy_logits(self.proxy_t, teacher, self.t_stage)
        tau = kendall_tau(q_s.detach().float(), q_t.detach().float())
        selected = (tau > self.threshold).to(q_s.dtype)  # NaN compares False
        nt_s, nt_t = self.nt_log_probs(q_s, labels), self.nt_log_probs(q_t, labels)
        exchange = (F.kl_div(nt_s, nt_t.detach(), reduction="none", log_target=True).sum(1)
                    + F.kl_div(nt_t, nt_s.detach(), reduction="none", log_target=True).sum(1))
        return {"ce": self.task_loss(student.logits, labels),
                "ce_teacher": self.task_loss(teacher.logits, labels),
                "student_proxy": self.w_proxy * self.mutual(student.logits, q_s),
                "teacher_proxy": self.w_proxy * self.mutual(teacher.logits, q_t),
                "proxy_nt": self.w_nt * (selected * exchange).mean()}
