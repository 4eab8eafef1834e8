"""Fidelity of at / dkd / dist / fitnet / feat / crd to their authors' official code.

Each reference below is written in the style of the official code it stands for (its functions,
masks and reductions), independently of methods/, at the official defaults; the method must give
the same loss values (float64). The repositories read (see each method's module docstring):
szagoruyko/attention-transfer utils.py + cifar.py; megvii-research/mdistiller
mdistiller/distillers/{AT,DKD,FitNet,_common,CRD}.py + mdistiller/engine/cfg.py;
HobbitLong/RepDistiller crd/{criterion,memory}.py, dataset/cifar100.py, train_student.py;
hunto/image_classification_sota lib/models/losses/{dist_kd,kd_loss}.py (DIST_KD's classification
submodule) + hunto/DIST_KD segmentation/losses/dist_kd.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmkd_bench.catalog import load_all
from cmkd_bench.data.spec import DatasetSpec, Modality, Recipe, TensorPairs
from cmkd_bench.models.features import ModelInfo, ModelOutput
from cmkd_bench.registry import DATASETS, METHODS
from cmkd_bench.training.engine import Fit
from cmkd_bench.training.runner import build_model

load_all()

B, C = 6, 5
LABELS = torch.tensor([0, 1, 2, 3, 4, 1])
REL = 1e-10


def spec(train: int = B, task: str = "classification", num_classes: int = C) -> DatasetSpec:
    return DatasetSpec(name="fidelity", task=task, num_classes=num_classes,
                       modalities={"a": Modality((4,), "mlp"), "b": Modality((4,), "mlp")},
                       teacher_modality="a", student_modality="b", recipe=Recipe(),
                       split_sizes={"train": train, "val": B, "test": B}, ignore_index=255)


def info(dim: int, stages: dict[str, tuple[int, ...]] | None = None) -> ModelInfo:
    return ModelInfo(name="m", num_classes=C, feature_dim=dim, stage_shapes=stages or {"s0": (dim,)})


def output(seed: int, dim: int, stages: dict[str, tuple[int, ...]] | None = None, logits_shape=(B, C)) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    maps = {name: leaf(B, *shape) for name, shape in (stages or {"s0": (dim,)}).items()}
    return ModelOutput(logits=leaf(*logits_shape), feature=leaf(B, dim), feature_post=leaf(B, dim), stages=maps)


def build(name: str, s_info: ModelInfo, t_info: ModelInfo, data_spec: DatasetSpec | None = None, **hparams):
    torch.manual_seed(0)
    return METHODS.build(name, s_info, t_info, data_spec or spec(), **hparams).double()


def teacher_untouched(t: ModelOutput) -> bool:
    return all(x.grad is None for x in [t.logits, t.feature, t.feature_post, *t.stages.values()])


def official_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


# -- the official defaults ---------------------------------------------------------------------
OFFICIAL = {
    "at": {"beta": 1000.0, "p": 2.0},  # cifar.py README --beta 1e+3; mdistiller CFG.AT
    "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20 / 240, "w_ce": 1.0},  # mdistiller CFG.DKD, 240 epochs
    "dist": {"beta": 1.0, "gamma": 1.0, "tau": 1.0, "weight": 2.0},  # kd_loss.py 'dist'; resnet_dist.yaml
    "fitnet": {"weight": 100.0},  # mdistiller CFG.FITNET; RepDistiller -b 100
    "feat": {"weight": 1.0},  # FD-CMKD's unit loss weights
    "crd": {"weight": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "momentum": 0.5, "negatives": "exact"},
}
NAMES = [*OFFICIAL, "at-all-stages"]


@pytest.mark.parametrize("name", OFFICIAL)
def test_defaults_are_the_official_ones(name):
    hparams = METHODS.get(name).hparams
    assert {key: hparams[key] for key in OFFICIAL[name]} == OFFICIAL[name]


@pytest.mark.parametrize("name", NAMES)
def test_search_space_follows_the_tuning_rules(name):
    entry = METHODS.get(name)
    space = entry.meta["search_space"]
    size = math.prod(len(values) for values in space.values())
    assert 4 <= size <= 16 or entry.meta.get("preset_of")  # a preset drops the keys it fixes
    for key, values in space.items():
        assert key in entry.hparams
        assert METHODS.get(entry.meta.get("preset_of", name)).hparams[key] in values  # the official default


def test_feat_is_registered_as_fd_cmkds_feat_baseline():
    entry = METHODS.get("feat")
    assert entry.description == "Feature KD, the 'Feat' baseline of FD-CMKD's table"
    assert entry.tasks == ("classification",)


# -- AT: szagoruyko/attention-transfer utils.py at() / at_loss(), cifar.py h() -----------------------
def official_at(x):
    return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))


def official_at_loss(x, y):
    return (official_at(x) - official_at(y)).pow(2).mean()


AT_S = {"g0": (4, 8, 8), "g1": (6, 4, 4), "g2": (8, 2, 2)}
AT_T = {"g0": (5, 8, 8), "g1": (7, 4, 4), "g2": (9, 2, 2)}


@pytest.mark.parametrize("name, hparams", [("at", {"stages": "0,1,2"}), ("at", {"stages": "all"}),
                                           ("at-all-stages", {})])
def test_at_is_the_official_beta_times_summed_group_losses(name, hparams):
    s, t = output(1, 8, AT_S), output(2, 9, AT_T)
    method = build(name, info(8, AT_S), info(9, AT_T), **hparams)
    losses = method(s, t, {"label": LABELS})
    loss_groups = [official_at_loss(s.stages[g], t.stages[g].detach()) for g in ("g0", "g1", "g2")]
    beta = 1e3
    assert losses["at"].item() == pytest.approx((beta * sum(loss_groups)).item(), rel=REL)
    assert losses["ce"].item() == pytest.approx(official_ce(s.logits, LABELS).item(), rel=REL)
    sum(losses.values()).backward()
    assert all(s.stages[g].grad.abs().sum() > 0 for g in AT_S) and teacher_untouched(t)


def test_at_default_is_the_last_stage_and_all_pairs_from_the_deepest_back():
    s_info = info(8, {"x0": (4, 8, 8), **AT_S})
    method = build("at", s_info, info(9, AT_T))
    assert method.pairs == [("g2", "g2")]
    assert build("at-all-stages", s_info, info(9, AT_T)).pairs == [("g0", "g0"), ("g1", "g1"), ("g2", "g2")]


def test_at_all_stages_on_a_resnet_transfers_the_residual_stages_not_the_stem():
    # attention-transfer's groups g0..g2, mdistiller feats[1:], RepDistiller feat_s[1:-1]: never the stem
    from cmkd_bench.registry import BACKBONES

    torch.manual_seed(0)
    student, teacher = (BACKBONES.build("resnet18", (3, 64, 64), C).double() for _ in range(2))  # layer4: 2 x 2
    assert student.info.stage_names[0] == "act1"  # timm lists the stem first
    s, t = (model(torch.randn(B, 3, 64, 64, dtype=torch.float64)) for model in (student, teacher))
    method = build("at-all-stages", student.info, teacher.info)
    losses = method(s, t, {"label": LABELS})
    groups = ("layer1", "layer2", "layer3", "layer4")  # the residual stages
    loss_groups = [official_at_loss(s.stages[g], t.stages[g].detach()) for g in groups]
    assert losses["at"].item() == pytest.approx((1e3 * sum(loss_groups)).item(), rel=REL)
    with_stem = loss_groups + [official_at_loss(s.stages["act1"], t.stages["act1"].detach())]
    assert losses["at"].item() != pytest.approx((1e3 * sum(with_stem)).item(), rel=1e-6)
    seg = BACKBONES.build("deeplabv3plus:resnet18", (3, 32, 32), C)  # smp: encoder[1] is the conv-BN-ReLU stem
    seg_method = build("at-all-stages", seg.info, seg.info, spec(task="segmentation"))
    assert [a for a, _ in seg_method.pairs] == ["encoder[2]", "encoder[3]", "encoder[4]", "encoder[5]", "decoder"]
    cnn = BACKBONES.build("small-cnn", (3, 16, 16), C)  # no stem: every stage
    assert [a for a, _ in build("at-all-stages", cnn.info, cnn.info).pairs] == cnn.info.stage_names


def test_at_resizes_the_student_attention_not_its_features():
    """The deliberate cross-modal difference: the student's energy map is pooled to the teacher's size."""
    s_stages, t_stages = {"a": (3, 6, 4)}, {"x": (5, 3, 2)}
    s, t = output(3, 3, s_stages), output(4, 5, t_stages)
    losses = build("at", info(3, s_stages), info(5, t_stages))(s, t, {"label": LABELS})
    energy = s.stages["a"].pow(2).mean(1)  # B x 6 x 4, pooled 2 x 2 cells by hand
    pooled = energy.view(B, 3, 2, 2, 2).mean(dim=(2, 4))
    q_s = F.normalize(pooled.reshape(B, -1))
    expected = 1e3 * (q_s - official_at(t.stages["x"])).pow(2).mean()
    assert losses["at"].item() == pytest.approx(expected.item(), rel=REL)


# -- DKD: mdistiller/distillers/DKD.py --------------------------------------------------------------
def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def official_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature**2) / target.shape[0])
    return alpha * tckd_loss, beta * nckd_loss


@pytest.mark.parametrize("hparams", [{}, {"beta": 0.5, "T": 1.0}, {"beta": 2.0}])  # defaults; ImageNet r34-r18; CIFAR
def test_dkd_is_the_official_dkd_loss(hparams):
    s, t = output(7, 4), output(8, 4)
    method = build("dkd", info(4), info(4), **hparams)
    method.on_epoch_start(100, 240)  # official epoch 101 > 20: weight 1
    losses = method(s, t, {"label": LABELS})
    tckd, nckd = official_dkd_loss(s.logits, t.logits.detach(), LABELS, 1.0, hparams.get("beta", 8.0),
                                   hparams.get("T", 4.0))
    assert losses["tckd"].item() == pytest.approx(tckd.item(), rel=1e-9)
    assert losses["nckd"].item() == pytest.approx(nckd.item(), rel=1e-9)
    assert losses["ce"].item() == pytest.approx(1.0 * official_ce(s.logits, LABELS).item(), rel=REL)
    sum(losses.values()).backward()
    assert s.logits.grad.abs().sum() > 0 and teacher_untouched(t)
    assert not list(method.parameters())


def official_warmup(epoch_1based: int, warmup_epochs: int = 20) -> float:
    return min(epoch_1based / warmup_epochs, 1.0)  # DKD.forward_train: min(kwargs["epoch"] / self.warmup, 1.0)


def factor_at(method, epoch: int, step: int, steps: int, epochs: int) -> float:
    method.on_epoch_start(epoch, epochs)
    method.on_step_start(step, steps)
    return method.warmup_factor()


@pytest.mark.parametrize("epoch", [1, 2, 10, 19, 20, 21, 120, 240])  # 1-based, as in mdistiller
def test_dkd_ramp_at_240_epochs_is_the_official_one_at_every_epochs_last_step(epoch):
    method, steps = build("dkd", info(4), info(4)), 7
    assert factor_at(method, epoch - 1, steps, steps, 240) == pytest.approx(official_warmup(epoch), rel=1e-12)
    first = factor_at(method, epoch - 1, 1, steps, 240)  # within the epoch: between the official values
    assert official_warmup(epoch - 1) < first <= official_warmup(epoch) or first == 1.0
    if epoch <= 20:
        assert first == pytest.approx(official_warmup(epoch - 1) + 1 / (20 * steps), rel=1e-12)
    method.on_epoch_start(epoch - 1, 240)  # outside a training step: the official per-epoch value
    assert method.warmup_factor() == pytest.approx(official_warmup(epoch), rel=1e-12)


def test_dkd_ramp_on_a_short_recipe_rises_per_step():
    method, steps = build("dkd", info(4), info(4)), 5
    # 12 epochs x 5 steps, warm-up 20/240 of training = the first 5 steps
    assert [factor_at(method, 0, k, steps, 12) for k in range(1, 6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factor_at(method, 1, 1, steps, 12) == 1.0
    method = build("dkd", info(4), info(4), warmup=0.25)  # 12 epochs x 5 steps: 15 steps of ramp
    assert [factor_at(method, e, k, steps, 12) for e, k in [(0, 1), (1, 2), (2, 5), (3, 1)]] == \
        pytest.approx([1 / 15, 7 / 15, 1.0, 1.0])
    assert factor_at(build("dkd", info(4), info(4), warmup=0.0), 0, 1, steps, 12) == 1.0


def test_dkd_ramp_scales_only_the_kd_terms():
    s, t = output(7, 4), output(8, 4)
    method = build("dkd", info(4), info(4))
    factor = factor_at(method, 0, 3, 10, 240)
    assert factor == pytest.approx(3 / 200)
    ramped = method(s, t, {"label": LABELS})
    tckd, nckd = official_dkd_loss(s.logits, t.logits.detach(), LABELS, 1.0, 8.0, 4.0)
    assert ramped["tckd"].item() == pytest.approx(factor * tckd.item(), rel=1e-9)
    assert ramped["nckd"].item() == pytest.approx(factor * nckd.item(), rel=1e-9)
    assert ramped["ce"].item() == pytest.approx(official_ce(s.logits, LABELS).item(), rel=REL)


def test_the_engine_reports_every_training_step_to_the_method():
    data = DATASETS.build("synth-av", None, train=64, val=16, test=16, image_size=16)
    t_mod, s_mod = data.spec.teacher_modality, data.spec.student_modality
    teacher = build_model(data.spec.modalities[t_mod].backbone, data, t_mod, 0, torch.device("cpu"))
    student = build_model(data.spec.modalities[s_mod].backbone, data, s_mod, 1, torch.device("cpu"))
    method = METHODS.build("dkd", student.info, teacher.info, data.spec, warmup=0.5)
    seen, forward = [], method.forward

    def spy(*args):
        seen.append((method.epoch, method.step, method.steps_per_epoch, method.warmup_factor()))
        return forward(*args)

    method.forward = spy
    recipe = data.spec.recipe.updated(epochs=2, batch_size=16)
    Fit(student=student, method=method, data=data, student_modality=s_mod, recipe=recipe, seed=0,
        device=torch.device("cpu"),
        teacher=teacher, teacher_modality=t_mod).run()
    assert [(e, k, n) for e, k, n, _ in seen] == [(e, k, 4) for e in range(2) for k in range(1, 5)]
    assert [f for *_, f in seen] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


# -- DIST: image_classification_sota lib/models/losses/dist_kd.py + kd_loss.py ----------------------
def cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a, b, eps=1e-8):
    return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def inter_class_relation(y_s, y_t):
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s, y_t):
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def official_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


def official_dist_segmentation(y_s, y_t, beta=1.0, gamma=1.0):  # DIST_KD segmentation/losses/dist_kd.py
    num_classes = y_s.shape[1]
    y_s = y_s.transpose(1, 3).reshape(-1, num_classes)
    y_t = y_t.transpose(1, 3).reshape(-1, num_classes)
    y_s, y_t = y_s.softmax(dim=1), y_t.softmax(dim=1)
    return beta * inter_class_relation(y_s, y_t) + gamma * intra_class_relation(y_s, y_t)


@pytest.mark.parametrize("kd, hparams", [("dist", {}), ("dist_t4", {"tau": 4.0})])  # resnet_dist / dist_cifar
def test_dist_is_kdloss_with_the_official_kd_loss_weight(kd, hparams):
    s, t = output(9, 4), output(10, 4)
    method = build("dist", info(4), info(4), **hparams)
    losses = method(s, t, {"label": LABELS})
    tau = float(kd[6:]) if kd.startswith("dist_t") else 1.0
    ori_loss_weight, kd_loss_weight = 1.0, 2.0
    ori_loss, kd_loss = official_ce(s.logits, LABELS), official_dist(s.logits, t.logits, tau=tau)
    total = ori_loss * ori_loss_weight + kd_loss * kd_loss_weight
    assert sum(losses.values()).item() == pytest.approx(total.item(), rel=REL)
    assert losses["ce"].item() == pytest.approx(official_ce(s.logits, LABELS).item(), rel=REL)
    sum(losses.values()).backward()
    assert s.logits.grad.abs().sum() > 0 and teacher_untouched(t)


def test_dist_segmentation_with_weight_1_is_the_official_segmentation_loss():
    # the official segmentation code distils the head's output at its own resolution (here 3 x 4);
    # the model then upsamples the logits 4x to the input's size, which CE reads
    g = torch.Generator().manual_seed(11)
    z_s, z_t = (torch.randn(2, C, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    labels = torch.randint(0, C, (2, 12, 16), generator=g)
    labels[0, 0, 0] = 255  # ignored for CE only: the official DIST uses no labels
    dense = ModelInfo(name="d", num_classes=C, feature_dim=4, stage_shapes={"decoder": (4, 3, 4)},
                      decoder_shape=(4, 3, 4))
    method = build("dist", dense, dense, spec(task="segmentation"), weight=1.0)
    feat = torch.zeros(2, 4, dtype=torch.float64)
    up = lambda z: F.interpolate(z, scale_factor=4, mode="bilinear", align_corners=True)  # noqa: E731
    out = lambda z: ModelOutput(logits=up(z), feature=feat, feature_post=feat, stages={}, decoder=None,  # noqa: E731
                                logits_native=z)
    losses = method(out(z_s), out(z_t), {"label": labels})
    lambda_kd = 1.0  # train_kd.py --lambda-kd default
    expected = lambda_kd * official_dist_segmentation(z_s, z_t)
    assert (losses["inter"] + losses["intra"]).item() == pytest.approx(expected.item(), rel=REL)
    upsampled = lambda_kd * official_dist_segmentation(up(z_s), up(z_t))
    assert (losses["inter"] + losses["intra"]).item() != pytest.approx(upsampled.item(), rel=1e-3)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(up(z_s), labels, ignore_index=255).item(), rel=REL)
    assert method.teacher_reads() == {"logits_native"}  # what the teacher-output cache serves it


# -- FitNet: mdistiller FitNet.py + _common.py ConvReg (= RepDistiller models/util.py ConvReg) --------
def official_conv_reg_modules(s_shape, t_shape):
    """The layers ConvReg(s_shape, t_shape) builds (N x C x H x W shapes), for comparison."""
    s_N, s_C, s_H, s_W = s_shape
    t_N, t_C, t_H, t_W = t_shape
    if s_H == 2 * t_H:
        return ("Conv2d", s_C, t_C, (3, 3), (2, 2), (1, 1))
    elif s_H * 2 == t_H:
        return ("ConvTranspose2d", s_C, t_C, (4, 4), (2, 2), (1, 1))
    elif s_H >= t_H:
        return ("Conv2d", s_C, t_C, (1 + s_H - t_H, 1 + s_W - t_W), (1, 1), (0, 0))
    raise NotImplementedError


def conv_reg_forward(conv, bn, x, transposed, use_relu=True):
    """ConvReg.forward with the method's weights: conv, BatchNorm in training mode, ReLU."""
    op = F.conv_transpose2d if transposed else F.conv2d
    y = op(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return torch.relu(y) if use_relu else y


FEATS = ("f0", "f1", "f2", "f3", "f4")  # [stem, stage 1..4], e.g. a timm ResNet's act1, layer1..layer4


@pytest.mark.parametrize("s_hw, t_hw", [(4, 4), (8, 4), (2, 4)])  # equal, twice, half: the official branches
def test_fitnet_is_the_official_hint_through_convreg(s_hw, t_hw):
    s_stages = {name: (3 + i, 2 * s_hw, 2 * s_hw) for i, name in enumerate(FEATS)}
    s_stages["f2"] = (6, s_hw, s_hw)
    t_stages = {name: (5 + i, 2 * t_hw, 2 * t_hw) for i, name in enumerate(FEATS)}
    t_stages["f2"] = (7, t_hw, t_hw)
    s, t = output(21, 6, s_stages), output(22, 7, t_stages)
    method = build("fitnet", info(6, s_stages), info(7, t_stages))
    hint_layer = 2  # CFG.FITNET.HINT_LAYER
    assert (method.student_stage, method.teacher_stage) == (FEATS[hint_layer], FEATS[hint_layer])
    conv, bn, relu = method.regressor
    kind = ("ConvTranspose2d" if isinstance(conv, nn.ConvTranspose2d) else "Conv2d", conv.in_channels,
            conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    assert kind == official_conv_reg_modules((1, *s_stages["f2"]), (1, *t_stages["f2"]))
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU) and conv.bias is not None
    losses = method(s, t, {"label": LABELS})
    f_s = conv_reg_forward(conv, bn, s.stages["f2"], isinstance(conv, nn.ConvTranspose2d))
    feat_loss_weight = 100.0
    expected = feat_loss_weight * F.mse_loss(f_s, t.stages["f2"].detach())
    assert losses["hint"].item() == pytest.approx(expected.item(), rel=REL)
    assert losses["ce"].item() == pytest.approx(official_ce(s.logits, LABELS).item(), rel=REL)
    sum(losses.values()).backward()
    assert s.stages["f2"].grad.abs().sum() > 0 and teacher_untouched(t)
    assert all(p.grad is not None for p in method.regressor.parameters())  # the conv bias: BatchNorm cancels it
    assert all(p.grad.abs().sum() > 0 for p in (conv.weight, bn.weight, bn.bias))
    assert all(s.stages[name].grad is None for name in FEATS if name != "f2")


def test_fitnet_other_sizes_pool_a_1x1_regression_to_the_teacher_size():
    """The deliberate cross-modal difference: no (1 + sH - tH)-wide kernel, non-square maps allowed."""
    s_stages, t_stages = {"a": (3, 6, 9)}, {"x": (5, 2, 3)}  # 3x larger: no official branch
    s, t = output(23, 3, s_stages), output(24, 5, t_stages)
    method = build("fitnet", info(3, s_stages), info(5, t_stages))
    conv, bn, _ = method.regressor
    assert conv.kernel_size == (1, 1)
    losses = method(s, t, {"label": LABELS})
    hint = conv_reg_forward(conv, bn, s.stages["a"], False).view(B, 5, 2, 3, 3, 3).mean(dim=(3, 5))
    assert losses["hint"].item() == pytest.approx(100.0 * F.mse_loss(hint, t.stages["x"]).item(), rel=REL)


def test_fitnet_segmentation_hints_the_decoder_without_relu():
    dense = {"enc0": (4, 4, 4), "enc1": (5, 2, 2), "enc2": (6, 2, 2), "decoder": (3, 4, 4)}
    t_dense = {"enc0": (4, 4, 4), "enc1": (5, 2, 2), "enc2": (6, 2, 2), "decoder": (8, 4, 4)}
    s_info = ModelInfo(name="d", num_classes=C, feature_dim=3, stage_shapes=dense, decoder_shape=(3, 4, 4))
    t_info = ModelInfo(name="d", num_classes=C, feature_dim=8, stage_shapes=t_dense, decoder_shape=(8, 4, 4))
    method = build("fitnet", s_info, t_info, spec(task="segmentation"))
    assert (method.student_stage, method.teacher_stage) == ("decoder", "decoder")
    assert [type(m) for m in method.regressor] == [nn.Conv2d, nn.BatchNorm2d]


# -- Feat: FD-CMKD's feature-KD baseline -------------------------------------------------------------
def test_feat_is_mse_of_projected_post_activation_pooled_features():
    # FD-CMKD's distilled feature is the post-activation one: re-FD-CMKD's backbone.py sets
    # `pre_out = out` and then applies nn.ReLU(inplace=True) to that same tensor, so the pooled
    # `pre_out` basic_model.py returns is relu(pre-activation). Built here from the pre-activation
    # feature exactly as the reference computes it, and handed to the method as feature_post.
    s, t = output(31, 6), output(32, 4)
    for out in (s, t):
        out.feature_post = out.feature.detach().clone().relu_().requires_grad_(True)
    method = build("feat", info(6), info(4))
    assert method.teacher_reads() == frozenset({"feature_post"})
    losses = method(s, t, {"label": LABELS})
    w, b = method.project.weight, method.project.bias
    pre_out_s = s.feature.detach().clone()
    torch.relu_(pre_out_s)  # the in-place ReLU overwrites pre_out
    pre_out_t = t.feature.detach().clone()
    torch.relu_(pre_out_t)
    projected = torch.stack([w @ pre_out_s[i] + b for i in range(B)])
    criterion2 = nn.MSELoss()  # main_fd_cmkd.py
    assert losses["feat"].item() == pytest.approx(criterion2(pre_out_t, projected).item(), rel=REL)
    wrong = torch.stack([w @ s.feature[i] + b for i in range(B)])  # the pre-activation feature differs
    assert losses["feat"].item() != pytest.approx(criterion2(t.feature, wrong).item(), rel=1e-3)
    sum(losses.values()).backward()
    assert s.feature_post.grad.abs().sum() > 0 and w.grad.abs().sum() > 0 and s.feature.grad is None
    assert teacher_untouched(t)


# -- CRD: RepDistiller crd/memory.py ContrastMemory, crd/criterion.py ContrastLoss --------------------
CLASSES = torch.tensor([0] * 12 + [1] * 10 + [2] * 8)  # N = 30, largest class 12: K capped at 18
N = len(CLASSES)


def official_cls_negative(labels: torch.Tensor) -> list[np.ndarray]:
    """CIFAR100InstanceSample.__init__: for each class, the indices of every other class."""
    num_classes = int(labels.max()) + 1
    cls_positive = [[] for _ in range(num_classes)]
    for i in range(len(labels)):
        cls_positive[int(labels[i])].append(i)
    cls_negative = [[] for _ in range(num_classes)]
    for i in range(num_classes):
        for j in range(num_classes):
            if j != i:
                cls_negative[i].extend(cls_positive[j])
    return [np.asarray(c) for c in cls_negative]


def test_crd_exact_negatives_are_distinct_samples_of_other_classes():
    method = build("crd", info(6), info(5), spec(train=N), feat_dim=4)
    method.set_train_labels(CLASSES)
    assert method.k == 18  # min(16384, N - 12)
    index = torch.tensor([0, 11, 12, 21, 22, 29])
    torch.manual_seed(3)
    contrast = method.sample_contrast(index)
    torch.manual_seed(3)
    assert torch.equal(method.sample_contrast(index), contrast)  # the engine's seeding makes it repeatable
    assert contrast.shape == (6, 19) and torch.equal(contrast[:, 0], index)  # mode 'exact': pos_idx = index
    negative_pools = official_cls_negative(CLASSES)
    for row, anchor in zip(contrast.tolist(), index.tolist()):
        pool = set(negative_pools[int(CLASSES[anchor])].tolist())
        assert set(row[1:]) <= pool and len(set(row[1:])) == 18  # replace=False: k <= len(cls_negative)
    draws = torch.cat([method.sample_contrast(torch.tensor([25]))[0, 1:] for _ in range(20)])
    assert set(draws.tolist()) == set(negative_pools[2].tolist())  # every other-class sample can be drawn


def test_crd_prepare_reads_the_train_labels_and_caps_k():
    shuffled = CLASSES[torch.randperm(N, generator=torch.Generator().manual_seed(0))]
    splits = {split: {"a": torch.zeros(n, 4), "b": torch.zeros(n, 4), "label": labels}
              for split, n, labels in (("train", N, shuffled), ("val", 3, torch.tensor([0, 1, 2])),
                                       ("test", 3, torch.tensor([0, 1, 2])))}
    data = TensorPairs(spec(train=N, num_classes=3), splits)
    method = build("crd", info(6), info(5), spec(train=N, num_classes=3), feat_dim=4)
    with pytest.raises(RuntimeError, match="prepare"):
        method.sample_contrast(torch.tensor([0]))
    method.prepare(None, data, "cpu", None)
    assert torch.equal(method.labels, splits["train"]["label"]) and method.k == 18
    big = build("crd", info(6), info(5), spec(train=50000, num_classes=100), feat_dim=4)
    big.set_train_labels(torch.arange(50000) % 100)  # CIFAR-100: 500 per class
    assert big.k == 16384  # the official K, uncapped
    assert build("crd", info(6), info(5), spec(train=N), negatives="uniform").k == N - 1


def official_contrast(memory_v1, memory_v2, v1, v2, y, idx, T, momentum, Z_v1=-1.0, Z_v2=-1.0):
    """ContrastMemory.forward (v1 = student embedding, memory_v1 = the student's bank)."""
    batchSize, inputSize, outputSize = v1.size(0), memory_v1.size(1), memory_v1.size(0)
    K = idx.size(1) - 1
    weight_v1 = torch.index_select(memory_v1, 0, idx.view(-1)).detach().view(batchSize, K + 1, inputSize)
    out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batchSize, inputSize, 1)), T))
    weight_v2 = torch.index_select(memory_v2, 0, idx.view(-1)).detach().view(batchSize, K + 1, inputSize)
    out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batchSize, inputSize, 1)), T))
    if Z_v1 < 0:
        Z_v1 = (out_v1.mean() * outputSize).item()
    if Z_v2 < 0:
        Z_v2 = (out_v2.mean() * outputSize).item()
    out_v1, out_v2 = torch.div(out_v1, Z_v1).contiguous(), torch.div(out_v2, Z_v2).contiguous()
    with torch.no_grad():
        memory_v1, memory_v2 = memory_v1.clone(), memory_v2.clone()
        for memory, v in ((memory_v1, v1), (memory_v2, v2)):
            l_pos = torch.index_select(memory, 0, y.view(-1))
            l_pos.mul_(momentum)
            l_pos.add_(torch.mul(v, 1 - momentum))
            memory.index_copy_(0, y, l_pos.div(l_pos.pow(2).sum(1, keepdim=True).pow(0.5)))
    return out_v1, out_v2, Z_v1, Z_v2, memory_v1, memory_v2


def official_contrast_loss(x, n_data, eps=1e-7):
    bsz, m = x.shape[0], x.size(1) - 1
    Pn = 1 / float(n_data)
    P_pos = x.select(1, 0)
    log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
    P_neg = x.narrow(1, 1, m)
    log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log_()
    return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz


def official_embed(linear, x):
    x = x.view(x.shape[0], -1) @ linear.weight.detach().t() + linear.bias.detach()
    return x.div(x.pow(2).sum(1, keepdim=True).pow(1.0 / 2))


def test_crd_is_the_official_contrast_memory_and_loss():
    s, t = output(41, 6), output(42, 5)
    method = build("crd", info(6), info(5), spec(train=N), feat_dim=4)
    method.set_train_labels(CLASSES)
    index = torch.tensor([0, 11, 12, 21, 22, 29])
    drawn = []
    sampler = method.sample_contrast
    method.sample_contrast = lambda idx: drawn.append(sampler(idx)) or drawn[-1]
    memory_s, memory_t = method.memory_s.clone(), method.memory_t.clone()
    losses = method(s, t, {"label": LABELS, "index": index})
    f_s = official_embed(method.embed_s.linear, s.feature_post)
    f_t = official_embed(method.embed_t.linear, t.feature_post)
    out_s, out_t, z_v1, z_v2, new_s, new_t = official_contrast(memory_s, memory_t, f_s, f_t, index, drawn[0], 0.07, 0.5)
    crd = official_contrast_loss(out_s, N) + official_contrast_loss(out_t, N)
    assert losses["crd"].item() == pytest.approx(0.8 * crd.item(), rel=1e-9)
    assert (method.z_s.item(), method.z_t.item()) == pytest.approx((z_v1, z_v2), rel=1e-12)
    assert torch.allclose(method.memory_s, new_s, atol=1e-12) and torch.allclose(method.memory_t, new_t, atol=1e-12)
    sum(losses.values()).backward()
    assert s.feature_post.grad.abs().sum() > 0 and teacher_untouched(t)
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in [*method.embed_s.parameters(), *method.embed_t.parameters()])
