"""Golden values: kd, rkd, pkd, cwd and fd at their defaults against re-implementations of the
official code, written here in that code's own style (float64, fixed inputs).

References read (see each method's docstring): mdistiller distillers/KD.py + engine/cfg.py and
RepDistiller distiller_zoo/KD.py (kd); lenscloth/RKD metric/loss.py, RepDistiller
distiller_zoo/RKD.py, mdistiller distillers/RKD.py (rkd); mmrazor models/losses/pkd_loss.py and
configs/distill/mmdet/pkd (pkd); TorchDistiller SemSeg-distill/utils/criterion.py + exp_cwd.sh and
mmrazor models/losses/cwd.py (cwd); zxn0710/re-FD-CMKD-main main_fd_cmkd.py + utils/utils.py (fd).
Nothing below calls the methods' helpers: only the built method's forward and its parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmkd_bench.catalog import load_all
from cmkd_bench.data.spec import DatasetSpec, Modality, Recipe
from cmkd_bench.models.features import ModelInfo, ModelOutput
from cmkd_bench.registry import METHODS

load_all()

B, C = 6, 5
LABELS = torch.tensor([0, 1, 2, 3, 4, 1])
ATOL = 1e-9


def spec(task: str = "classification") -> DatasetSpec:
    shape = (4,) if task == "classification" else (3, 4, 4)
    backbone = "mlp" if task == "classification" else "small-seg"
    return DatasetSpec(name="golden", task=task, num_classes=C, ignore_index=255 if task == "segmentation" else -100,
                       modalities={"a": Modality(shape, backbone), "b": Modality(shape, backbone)},
                       teacher_modality="a", student_modality="b", recipe=Recipe(),
                       split_sizes={"train": B, "val": B, "test": B})


def info(dim: int, stages: dict | None = None) -> ModelInfo:
    return ModelInfo(name="m", num_classes=C, feature_dim=dim, stage_shapes=stages or {"s0": (dim,)})


def output(seed: int, dim: int, stages: dict | None = None, logits_shape: tuple[int, ...] = (C,)) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    maps = {name: leaf(B, *shape) for name, shape in (stages or {"s0": (dim,)}).items()}
    # feature and feature_post differ (the latter non-negative, like a ReLU output): the choice shows
    return ModelOutput(logits=leaf(B, *logits_shape), feature=leaf(B, dim),
                       feature_post=leaf(B, dim).detach().abs().requires_grad_(True), stages=maps)


def build(name: str, s_info: ModelInfo, t_info: ModelInfo, task: str = "classification", **hparams):
    torch.manual_seed(0)
    return METHODS.build(name, s_info, t_info, spec(task), **hparams).double()


def close(value: torch.Tensor, expected: torch.Tensor) -> None:
    assert value.item() == pytest.approx(expected.item(), abs=ATOL, rel=1e-9)


# -- KD: mdistiller kd_loss / RepDistiller DistillKL, CE 0.1 + KD 0.9, T = 4 -----------------------
def mdistiller_kd_loss(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


def repdistiller_distill_kl(y_s, y_t, T):
    p_s = F.log_softmax(y_s / T, dim=1)
    p_t = F.softmax(y_t / T, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * (T**2) / y_s.shape[0]


def test_kd_defaults_are_the_official_ce_0_1_kd_0_9_at_t_4():
    assert {k: METHODS.get("kd").hparams[k] for k in ("T", "alpha")} == {"T": 4.0, "alpha": 0.9}
    s, t = output(1, 8), output(2, 8)
    losses = build("kd", info(8), info(8))(s, t, {"label": LABELS})
    logits_teacher = t.logits.detach()
    close(losses["ce"], 0.1 * F.cross_entropy(s.logits, LABELS))
    close(losses["kd"], 0.9 * mdistiller_kd_loss(s.logits, logits_teacher, 4.0))
    close(losses["kd"], 0.9 * repdistiller_distill_kl(s.logits, logits_teacher, 4.0))


# -- RKD: lenscloth/RKD pdist + RkdDistance + RKdAngle, weights 25 / 50 on the pooled post feature -
def pdist(e, squared=False, eps=1e-12):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def rkd_distance(student, teacher):
    with torch.no_grad():
        t_d = pdist(teacher, squared=False)
        mean_td = t_d[t_d > 0].mean()
        t_d = t_d / mean_td
    d = pdist(student, squared=False)
    mean_d = d[d > 0].mean()
    d = d / mean_d
    return F.smooth_l1_loss(d, t_d, reduction="mean")


def rkd_angle(student, teacher):
    with torch.no_grad():
        td = teacher.unsqueeze(0) - teacher.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = student.unsqueeze(0) - student.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    return F.smooth_l1_loss(s_angle, t_angle, reduction="mean")


@pytest.mark.parametrize("weight", [None, 0.3])
def test_rkd_matches_the_official_distance_and_angle_losses(weight):
    s, t = output(3, 7), output(4, 5)  # widths differ: relations do not depend on them
    hparams = {} if weight is None else {"weight": weight}
    method = build("rkd", info(7), info(5), **hparams)
    losses = method(s, t, {"label": LABELS})
    scale = 1.0 if weight is None else weight
    f_s, f_t = s.feature_post.view(B, -1), t.feature_post.detach().view(B, -1)  # RepDistiller's feat[-1]
    close(losses["rkd_distance"], scale * 25 * rkd_distance(f_s, f_t))
    close(losses["rkd_angle"], scale * 50 * rkd_angle(f_s, f_t))
    close(losses["ce"], F.cross_entropy(s.logits, LABELS))


def test_rkd_normalises_by_the_mean_of_non_zero_distances_even_with_duplicates():
    # Two identical samples: their clamped distance is sqrt(1e-12) = 1e-6 > 0, so it counts in the
    # mean exactly as in the official d[d > 0].mean().
    s, t = output(5, 4), output(6, 4)
    with torch.no_grad():
        s.feature_post[1] = s.feature_post[0]
        t.feature_post[2] = t.feature_post[3]
    losses = build("rkd", info(4), info(4))(s, t, {"label": LABELS})
    close(losses["rkd_distance"], 25 * rkd_distance(s.feature_post, t.feature_post.detach()))


# -- PKD: mmrazor PKDLoss, loss_weight 6 -----------------------------------------------------------
class PKDLoss(nn.Module):
    def __init__(self, loss_weight=1.0, resize_stu=True):
        super().__init__()
        self.loss_weight = loss_weight
        self.resize_stu = resize_stu

    def norm(self, feat):
        N, C, H, W = feat.shape
        feat = feat.permute(1, 0, 2, 3).reshape(C, -1)
        mean = feat.mean(dim=-1, keepdim=True)
        std = feat.std(dim=-1, keepdim=True)
        feat = (feat - mean) / (std + 1e-6)
        return feat.reshape(C, N, H, W).permute(1, 0, 2, 3)

    def forward(self, preds_S, preds_T):
        if isinstance(preds_S, torch.Tensor):
            preds_S, preds_T = (preds_S,), (preds_T,)
        loss = 0.0
        for pred_S, pred_T in zip(preds_S, preds_T):
            size_S, size_T = pred_S.shape[2:], pred_T.shape[2:]
            if size_S[0] != size_T[0]:
                if self.resize_stu:
                    pred_S = F.interpolate(pred_S, size_T, mode="bilinear")
                else:
                    pred_T = F.interpolate(pred_T, size_S, mode="bilinear")
            norm_S, norm_T = self.norm(pred_S), self.norm(pred_T)
            loss += F.mse_loss(norm_S, norm_T) / 2
        return loss * self.loss_weight


@pytest.mark.parametrize("s_shape, t_shape", [((4, 6, 6), (4, 3, 3)), ((4, 3, 3), (4, 3, 3))])
def test_pkd_matches_mmrazor_pkd_loss_at_loss_weight_6(s_shape, t_shape):
    assert METHODS.get("pkd").hparams["weight"] == 6.0
    s, t = output(7, 8, {"s0": s_shape}), output(8, 8, {"t0": t_shape})
    method = build("pkd", info(8, {"s0": s_shape}), info(8, {"t0": t_shape}))
    assert isinstance(method.project, nn.Identity)  # equal channels: no connector, as in mmrazor
    losses = method(s, t, {"label": LABELS})
    close(losses["pkd"], PKDLoss(loss_weight=6)(s.stages["s0"], t.stages["t0"].detach()))
    close(losses["ce"], F.cross_entropy(s.logits, LABELS))


# -- CWD: TorchDistiller CriterionCWD('channel', 'kl', T) x lambda; mmrazor ChannelWiseDivergence ---
class ChannelNorm(nn.Module):
    def forward(self, featmap):
        n, c, h, w = featmap.shape
        return featmap.reshape((n, c, -1)).softmax(dim=-1)


def criterion_cwd(preds_S, preds_T, temperature):
    n, c, h, w = preds_S.shape
    norm_s = ChannelNorm()(preds_S / temperature)
    norm_t = ChannelNorm()(preds_T.detach() / temperature)
    loss = nn.KLDivLoss(reduction="sum")(norm_s.log(), norm_t)
    loss /= n * c
    return loss * (temperature**2)


def channel_wise_divergence(preds_S, preds_T, tau, loss_weight):
    N, C, H, W = preds_S.shape
    softmax_pred_T = F.softmax(preds_T.view(-1, W * H) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(softmax_pred_T * logsoftmax(preds_T.view(-1, W * H) / tau)
                     - softmax_pred_T * logsoftmax(preds_S.view(-1, W * H) / tau)) * (tau**2)
    return loss_weight * loss / (C * N)


@pytest.mark.parametrize("hparams, T, weight", [({}, 4.0, 3.0), ({"T": 1.0, "weight": 5.0}, 1.0, 5.0)])
def test_cwd_matches_the_authors_criterion_and_mmrazor(hparams, T, weight):
    # {}: the authors' `exp_cwd.sh channel kl 3 4`; T=1, weight=5: mmrazor's cityscapes config.
    dense = info(8, {"decoder": (8, 4, 4)})
    s, t = output(9, 8, {"decoder": (8, 4, 4)}, (C, 4, 4)), output(10, 8, {"decoder": (8, 4, 4)}, (C, 4, 4))
    labels = torch.randint(0, C, (B, 4, 4), generator=torch.Generator().manual_seed(0))
    losses = build("cwd", dense, dense, task="segmentation", **hparams)(s, t, {"label": labels})
    close(losses["cwd"], weight * criterion_cwd(s.logits, t.logits, T))
    close(losses["cwd"], channel_wise_divergence(s.logits, t.logits.detach(), T, weight))


def cwd_formula(s_map, t_map, T):
    """CWD written out: per (sample, channel), softmax over the H x W positions at temperature T,
    KL(teacher || student), summed, divided by N C, times T^2 (TorchDistiller's normalisation)."""
    n, c = s_map.shape[:2]
    total = 0.0
    for i in range(n):
        for k in range(c):
            p_t = torch.softmax(t_map[i, k].flatten() / T, dim=0)
            log_p_s = torch.log_softmax(s_map[i, k].flatten() / T, dim=0)
            total = total + (p_t * (p_t.log() - log_p_s)).sum()
    return T**2 * total / (n * c)


def test_cwd_reads_the_heads_native_resolution_logits_not_the_upsampled_ones():
    # TorchDistiller distils preds_S[0] and mmrazor decode_head.conv_seg: the head's output at 1/4 of
    # the input (DeepLabV3+), before any upsampling to the input's size. Defaults: exp_cwd.sh (3, 4).
    assert {k: METHODS.get("cwd").hparams[k] for k in ("T", "weight", "feature")} == {"T": 4.0, "weight": 3.0,
                                                                                     "feature": "logits"}
    g = torch.Generator().manual_seed(21)
    native_s, native_t = (torch.randn(B, C, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
                          for _ in range(2))
    up = lambda z: F.interpolate(z, scale_factor=4, mode="bilinear", align_corners=True)  # noqa: E731  smp's head
    feat = torch.zeros(B, 8, dtype=torch.float64)
    s = ModelOutput(logits=up(native_s), feature=feat, feature_post=feat, stages={}, logits_native=native_s)
    t = ModelOutput(logits=up(native_t), feature=feat, feature_post=feat, stages={}, logits_native=native_t)
    dense = ModelInfo(name="d", num_classes=C, feature_dim=8, stage_shapes={"decoder": (8, 4, 4)},
                      decoder_shape=(8, 4, 4))
    labels = torch.randint(0, C, (B, 16, 16), generator=g)
    losses = build("cwd", dense, dense, task="segmentation")(s, t, {"label": labels})
    close(losses["cwd"], 3.0 * cwd_formula(native_s, native_t, 4.0))
    on_upsampled = 3.0 * cwd_formula(s.logits, t.logits, 4.0)
    assert abs(losses["cwd"].item() - on_upsampled.item()) > 0.1 * on_upsampled.item()
    close(losses["ce"], F.cross_entropy(s.logits, labels, ignore_index=255))  # CE on the upsampled logits
    sum(losses.values()).backward()
    assert native_s.grad.abs().sum() > 0 and native_t.grad is None


def test_cwd_on_a_deeplabv3plus_student_and_teacher_uses_the_quarter_resolution_logits():
    from cmkd_bench.registry import BACKBONES

    torch.manual_seed(0)
    student, teacher = (BACKBONES.build("deeplabv3plus:resnet18", (3, 32, 32), C).double().eval() for _ in range(2))
    x_s, x_t = (torch.randn(2, 3, 32, 32, dtype=torch.float64) for _ in range(2))
    s, t = student(x_s), teacher(x_t)
    with torch.no_grad():  # the head's conv, run by hand on the map it reads
        native_t = teacher.net.segmentation_head[0](t.decoder)
    assert s.logits.shape[-2:] == (32, 32) and s.logits_native.shape[-2:] == (8, 8)
    torch.testing.assert_close(t.logits_native, native_t)
    method = METHODS.build("cwd", student.info, teacher.info, spec("segmentation"))
    losses = method(s, t, {"label": torch.zeros(2, 32, 32, dtype=torch.long)})
    expected = 3.0 * cwd_formula(s.logits_native, native_t, 4.0)
    assert losses["cwd"].item() == pytest.approx(expected.item(), rel=1e-9)
    on_upsampled = 3.0 * cwd_formula(s.logits, t.logits, 4.0)
    assert losses["cwd"].item() != pytest.approx(on_upsampled.item(), rel=0.05)


# -- FD-CMKD: zxn0710/re-FD-CMKD-main train_epoch at D = 512 ---------------------------------------
class FDFilter(nn.Module):
    def __init__(self):
        super().__init__()
        self.filter1 = nn.Parameter(torch.zeros(257, dtype=torch.float64), requires_grad=False)
        self.filter2 = nn.Parameter(torch.zeros(257, dtype=torch.float64), requires_grad=False)
        self.filter1.data[1:129] = 1
        self.filter2.data[129:] = 1

    def forward(self, x):
        freq_domain = torch.fft.rfft(x, dim=1)
        low = torch.fft.irfft(freq_domain * (self.filter1 >= 0.5).double(), dim=1).real
        high = torch.fft.irfft(freq_domain * (self.filter2 >= 0.5).double(), dim=1).real
        return low, high


def norm_feat(x):
    return x / torch.norm(x, p=2, dim=1, keepdim=True).clamp(min=1e-8)


def log(tensor):
    result = torch.zeros_like(tensor)
    positive, negative = tensor > 0, tensor < 0
    result[positive] = torch.log1p(tensor[positive])
    result[negative] = -torch.log1p(torch.abs(tensor[negative]))
    return result


def classifier(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """utils.Classifier: F.relu, then the Linear layer (the method's own parameters)."""
    linear = head[1]
    return F.linear(F.relu(x), linear.weight, linear.bias)


def test_fd_matches_the_reference_training_loss_at_resnet18_width():
    D = 512
    s, t = output(11, D), output(12, D)
    method = build("fd", info(D), info(D))
    assert method.cut == 128  # rfft bins 1..128 low, 129..256 high, as FDFilter
    losses = method(s, t, {"label": LABELS})

    criterion, criterion2, filt = nn.CrossEntropyLoss(), nn.MSELoss(), FDFilter()
    with torch.no_grad():
        t_feat = t.feature_post.detach()  # `pre_out` of the reference is post-ReLU (in-place ReLU)
    s_low, s_high = filt(s.feature_post)
    t_low, t_high = filt(t_feat)
    expected = {
        "align_low": criterion2(norm_feat(t_low).detach(), norm_feat(s_low)),
        "align_high": criterion2(log(norm_feat(t_high)).detach(), log(norm_feat(s_high))),
        "shared_low": criterion(classifier(method.shared["low"], s_low), LABELS)
        + criterion(classifier(method.shared["low"], t_low), LABELS),
        "shared_high": criterion(classifier(method.shared["high"], s_high), LABELS)
        + criterion(classifier(method.shared["high"], t_high), LABELS),
        "ce": criterion(s.logits, LABELS),
        "task_low": criterion(classifier(method.task_heads["low"], s_low), LABELS),
        "task_high": criterion(classifier(method.task_heads["high"], s_high), LABELS),
    }
    assert set(losses) == set(expected)
    for name, value in expected.items():
        close(losses[name], value)
    # loss_a = loss_kd_a + loss_align_a + loss_task_a, every term with weight 1
    close(sum(losses.values()), sum(expected.values()))
    sum(losses.values()).backward()
    assert t.feature_post.grad is None and t.feature.grad is None and s.feature.grad is None
    assert s.feature_post.grad is not None and s.feature_post.grad.abs().sum() > 0


def test_fd_pre_feature_is_an_option():
    D = 64
    s, t = output(13, D), output(14, D)
    pre = build("fd", info(D), info(D), feature="pre")(s, t, {"label": LABELS})
    mask = torch.zeros(D // 2 + 1, dtype=torch.float64)
    mask[1:17] = 1
    low_s = torch.fft.irfft(torch.fft.rfft(s.feature.detach(), dim=1) * mask, dim=1)
    low_t = torch.fft.irfft(torch.fft.rfft(t.feature.detach(), dim=1) * mask, dim=1)
    close(pre["align_low"], F.mse_loss(norm_feat(low_s), norm_feat(low_t)))
    with pytest.raises(ValueError):
        build("fd", info(D), info(D), feature="logits")


def test_fd_no_freq_aligns_every_frequency_but_the_dc_as_fd_drops_it():
    # FDFilter keeps bins 1..128 and 129..256: the DC (bin 0) is in neither band. fd-no-freq keeps
    # all of fd's frequencies in one band, so it drops the DC too: only the split is removed.
    D = 64
    s, t = output(15, D), output(16, D)
    method = build("fd-no-freq", info(D), info(D))
    losses = method(s, t, {"label": LABELS})
    mask = torch.ones(D // 2 + 1, dtype=torch.float64)
    mask[0] = 0  # the DC bin
    full_s = torch.fft.irfft(torch.fft.rfft(s.feature_post.detach(), dim=1) * mask, n=D, dim=1)
    full_t = torch.fft.irfft(torch.fft.rfft(t.feature_post.detach(), dim=1) * mask, n=D, dim=1)
    close(losses["align_full"], F.mse_loss(norm_feat(full_s), norm_feat(full_t)))
    # like fd's alignment, invariant to a constant added to every channel of both features
    for name in ("fd", "fd-no-freq"):
        shifted = [output(15, D), output(16, D)]
        for out, c in zip(shifted, (3.0, -2.0)):
            out.feature_post = (out.feature_post.detach() + c).requires_grad_(True)
        base = build(name, info(D), info(D))(output(15, D), output(16, D), {"label": LABELS})
        moved = build(name, info(D), info(D))(*shifted, {"label": LABELS})
        for key in base:
            if key.startswith("align_"):
                close(moved[key], base[key])


def test_the_reference_pre_out_is_the_post_relu_tensor():
    # models/backbone.py BasicBlock: `out += identity; pre_out = out; out = self.relu(out)` with an
    # in-place ReLU, so `pre_out` is the very tensor the ReLU overwrote: the post-activation feature.
    relu = nn.ReLU(inplace=True)
    out = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    out += torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    pre_out = out
    out = relu(out)
    assert pre_out is out and bool((pre_out >= 0).all())


# -- search spaces ---------------------------------------------------------------------------------
def test_cwd_space_holds_both_official_settings():
    space = METHODS.get("cwd").meta["search_space"]
    assert 4.0 in space["T"] and 3.0 in space["weight"]  # TorchDistiller exp_cwd.sh
    assert 1.0 in space["T"] and 5.0 in space["weight"]  # mmrazor's cityscapes config


@pytest.mark.parametrize("preset", ["fd-no-freq", "fd-no-align", "fd-no-scale", "fd-no-log", "fd-no-shared",
                                    "fd-high-downweight"])
def test_fd_presets_tune_their_free_loss_weights_never_the_ones_they_fix(preset):
    """A preset that fixes fd's loss weights (fd-no-align: w_low = w_high = 0; fd-high-downweight:
    w_high) would tune nothing of fd's space, so it declares its own over the weights it keeps; the
    others tune fd's space."""
    from cmkd_bench.experiments.search import declared_space
    entry, fd = METHODS.get(preset), METHODS.get("fd")
    space = declared_space(entry)
    fixed = {key for key, value in entry.hparams.items() if value != fd.hparams[key]}
    assert space and not set(space) & fixed
    assert set(entry.meta["loss_weights"]) <= set(space)
    if not entry.meta.get("own_search_space"):
        assert space == declared_space(fd)
