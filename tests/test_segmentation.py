"""Segmentation as a task of the harness: dense model outputs, mIoU, per-pixel methods against
independent float64 references, one training step of every segmentation method, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cmkd_bench.catalog import load_all
from cmkd_bench.cli import main
from cmkd_bench.data.spec import DatasetSpec, Modality, PairedData, Recipe
from cmkd_bench.errors import UserError
from cmkd_bench.models.features import ModelInfo, ModelOutput
from cmkd_bench.registry import BACKBONES, DATASETS, METHODS
from cmkd_bench.training.engine import Fit, eval_batch_size
from cmkd_bench.training.metrics import MeanIoU
from cmkd_bench.training.runner import build_model

from conftest import bilinear

from conftest import cli

load_all()  # parametrisation below reads the registries at collection time

B, C, H, W = 2, 4, 3, 4
IGNORE = 255
ATOL = 1e-6
LABELS = torch.tensor([[[0, 1, 2, 3], [IGNORE, 1, 1, 0], [3, 3, IGNORE, 2]],
                       [[2, 2, 0, IGNORE], [1, 0, 3, 3], [0, IGNORE, 1, 2]]])


# -- hand-made dense inputs ----------------------------------------------------------------------
def seg_spec() -> DatasetSpec:
    return DatasetSpec(name="golden-seg", task="segmentation", num_classes=C, ignore_index=IGNORE,
                       modalities={"a": Modality((3, H, W), "small-seg"), "b": Modality((1, H, W), "small-seg")},
                       teacher_modality="a", student_modality="b", recipe=Recipe(),
                       split_sizes={"train": B, "val": B, "test": B})


def dense_info(channels: int, size: tuple[int, int] = (H, W)) -> ModelInfo:
    return ModelInfo(name="dense", num_classes=C, feature_dim=channels,
                     stage_shapes={"enc": (5, 2, 2), "decoder": (channels, *size)}, decoder_shape=(channels, *size))


def dense_output(seed: int, model_info: ModelInfo) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    stages = {name: leaf(B, *shape) for name, shape in model_info.stage_shapes.items()}
    return ModelOutput(logits=leaf(B, C, H, W), feature=leaf(B, model_info.feature_dim),
                       feature_post=leaf(B, model_info.feature_dim), stages=stages, decoder=stages["decoder"])


def build(name: str, s_info: ModelInfo, t_info: ModelInfo, **hparams):
    torch.manual_seed(0)
    return METHODS.build(name, s_info, t_info, seg_spec(), **hparams).double()


def pixels(valid_only: bool = True) -> list[tuple[int, int, int]]:
    return [(b, y, x) for b in range(B) for y in range(H) for x in range(W)
            if not valid_only or LABELS[b, y, x] != IGNORE]


# -- independent references (loops over pixels, plain tensor ops) --------------------------------
def softmax(z: torch.Tensor) -> torch.Tensor:
    e = (z - z.max()).exp()
    return e / e.sum()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


def ce_reference(logits: torch.Tensor) -> torch.Tensor:
    terms = [-softmax(logits[b, :, y, x])[LABELS[b, y, x]].log() for b, y, x in pixels()]
    return torch.stack(terms).mean()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-8)


def dft_band(dim: int, bins: range) -> torch.Tensor:
    """Projection onto the given DFT bins, from cosines (no FFT)."""
    n = torch.arange(dim, dtype=torch.float64)
    diff = n.view(-1, 1) - n.view(1, -1)
    out = torch.zeros(dim, dim, dtype=torch.float64)
    for k in bins:
        out += (1.0 if k == 0 or 2 * k == dim else 2.0) / dim * torch.cos(2 * math.pi * k * diff / dim)
    return out


def assert_terms(losses: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, abs=ATOL), name


def backward_reaches(losses: dict[str, torch.Tensor], student_used: list[torch.Tensor], teacher: ModelOutput) -> None:
    sum(losses.values()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in student_used)
    assert all(t.grad is None for t in (teacher.logits, *teacher.stages.values()))


# -- metric ----------------------------------------------------------------------------------------
def test_miou_pixel_accuracy_and_per_class_iou_by_hand():
    # 3 classes, ignore 255; class 2 never appears (neither labelled nor predicted): left out of the mean
    labels = torch.tensor([[[0, 0, 1], [1, 255, 0]]])
    predicted = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metric = MeanIoU(3, 255, "cpu")
    metric.update(logits, labels)
    # valid pixels (true, predicted): (0, 0) (0, 1) (1, 1) (1, 1) (0, 0); the ignored one predicts 0 but does not count
    # class 0: labelled 3, predicted 2, both 2 -> IoU 2 / (3 + 2 - 2); class 1: labelled 2, predicted 3, both 2 -> 2 / 3
    assert metric.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 0, 0]]
    iou = metric.iou()
    assert iou[0].item() == pytest.approx(2 / 3) and iou[1].item() == pytest.approx(2 / 3) and math.isnan(iou[2].item())
    assert metric.compute() == pytest.approx(100 * 2 / 3)
    assert metric.pixel_accuracy() == pytest.approx(100 * 4 / 5)
    assert metric.details()["per_class_iou"] == [pytest.approx(66.6667, abs=1e-4), pytest.approx(66.6667, abs=1e-4), None]
    metric.update(logits, torch.full_like(labels, 2))  # now class 2 is labelled and never predicted: IoU 0
    assert metric.iou()[2].item() == 0.0 and metric.compute() < 100 * 2 / 3


def test_miou_resizes_logits_to_the_labels():
    metric = MeanIoU(2, 255, "cpu")
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 1.0  # class 1 everywhere, at half resolution
    metric.update(logits, torch.ones(1, 4, 4, dtype=torch.long))
    assert metric.compute() == 100.0 and metric.confusion.sum().item() == 16


def test_eval_batches_shrink_for_large_segmentation_images():
    spec = DatasetSpec(name="big", task="segmentation", num_classes=40, ignore_index=255,
                       modalities={"rgb": Modality((3, 480, 640), "small-seg"), "depth": Modality((1, 480, 640), "small-seg")},
                       teacher_modality="rgb", student_modality="depth", recipe=Recipe(), split_sizes={})
    data = PairedData()
    data.spec = spec
    assert eval_batch_size(data, "rgb") == 6


# -- models ----------------------------------------------------------------------------------------
def test_small_seg_gives_logits_maps_and_the_decoder():
    model = BACKBONES.build("small-seg", (1, 16, 16), 5)
    out = model(torch.randn(3, 1, 16, 16))
    assert out.logits.shape == (3, 5, 16, 16)
    assert list(out.stages) == ["stages.0", "stages.1", "stages.2", "decoder"]
    assert out.decoder is out.stages["decoder"] and out.decoder.shape == (3, 16, 8, 8)
    assert torch.allclose(out.feature_post, out.decoder.mean(dim=(2, 3)))  # pooled decoder map
    assert (out.feature < 0).any() and (out.feature_post >= 0).all()  # pre-activation has negatives
    assert model.info.dense and model.info.decoder_shape == (16, 8, 8) and model.info.stage("last") == "decoder"
    assert torch.allclose(out.logits, torch.nn.functional.interpolate(model.net.head(out.decoder), size=(16, 16),
                                                                      mode="bilinear", align_corners=False))


def test_smp_model_by_arch_and_encoder_with_in_channels_from_modality():
    entry = BACKBONES.get("unet:resnet18")
    assert entry.tasks == ("segmentation",) and BACKBONES.get("resnet18").tasks == ("classification",)
    model = entry.factory((1, 32, 32), 3)
    assert model.net.encoder.conv1.in_channels == 1
    out = model(torch.randn(2, 1, 32, 32))
    assert out.logits.shape == (2, 3, 32, 32)
    assert list(out.stages) == ["encoder[1]", "encoder[2]", "encoder[3]", "encoder[4]", "encoder[5]", "decoder"]
    assert out.stages["encoder[5]"].shape == (2, 512, 1, 1) and out.decoder.shape == (2, 16, 32, 32)
    assert torch.allclose(out.logits, model.net.segmentation_head(out.decoder))
    out.decoder.sum().backward()
    assert model.net.encoder.conv1.weight.grad.abs().sum() > 0


def test_unknown_smp_names_are_one_line_errors():
    with pytest.raises(UserError, match="unknown backbone 'unet:resnet17'"):
        BACKBONES.get("unet:resnet17")
    with pytest.raises(UserError, match="cannot take 40 x 40 inputs"):
        BACKBONES.build("deeplabv3plus:resnet18", (3, 40, 40), 2)


# -- golden values (float64, per term, within 1e-6) ------------------------------------------------
def test_no_kd_is_cross_entropy_over_labelled_pixels():
    s = dense_output(1, dense_info(4))
    losses = build("no-kd", dense_info(4), dense_info(4))(s, None, {"label": LABELS})
    assert_terms(losses, {"ce": ce_reference(s.logits).item()})


@pytest.mark.parametrize("T, alpha", [(4.0, 0.5), (1.0, 0.9)])
def test_kd_is_pixelwise_kl_over_labelled_pixels(T, alpha):
    s, t = dense_output(1, dense_info(4)), dense_output(2, dense_info(4))
    losses = build("kd", dense_info(4), dense_info(4), T=T, alpha=alpha)(s, t, {"label": LABELS})
    kls = [kl(softmax(t.logits[b, :, y, x] / T), softmax(s.logits[b, :, y, x] / T)) for b, y, x in pixels()]
    assert_terms(losses, {"ce": (1 - alpha) * ce_reference(s.logits).item(),
                          "kd": alpha * T * T * torch.stack(kls).mean().item()})
    backward_reaches(losses, [s.logits], t)
    ignored = s.logits.grad[1, :, 0, 3]  # label 255: no term reaches it
    assert torch.equal(ignored, torch.zeros_like(ignored))


def test_dkd_is_pixelwise_tckd_and_nckd():
    s, t = dense_output(3, dense_info(4)), dense_output(4, dense_info(4))
    method = build("dkd", dense_info(4), dense_info(4))
    method.on_epoch_start(100, 240)  # past the warm-up
    losses = method(s, t, {"label": LABELS})
    T, tckd, nckd = 4.0, [], []
    for b, y, x in pixels():
        label = int(LABELS[b, y, x])
        p_s, p_t = softmax(s.logits[b, :, y, x] / T), softmax(t.logits[b, :, y, x] / T)
        tckd.append(kl(torch.stack([p_t[label], 1 - p_t[label]]), torch.stack([p_s[label], 1 - p_s[label]])))
        others = [c for c in range(C) if c != label]
        nckd.append(kl(softmax(t.logits[b, others, y, x] / T), softmax(s.logits[b, others, y, x] / T)))
    assert_terms(losses, {"ce": ce_reference(s.logits).item(), "tckd": T * T * torch.stack(tckd).mean().item(),
                          "nckd": 8.0 * T * T * torch.stack(nckd).mean().item()})
    backward_reaches(losses, [s.logits], t)


def test_dist_treats_every_pixel_as_a_sample():
    s, t = dense_output(5, dense_info(4)), dense_output(6, dense_info(4))
    # DIST_KD's segmentation script (train_kd.py, --lambda-kd 1): weight 1; our one default (2) is the classification configs'
    losses = build("dist", dense_info(4), dense_info(4), weight=1.0)(s, t, {"label": LABELS})
    rows_s = torch.stack([softmax(s.logits[b, :, y, x]) for b, y, x in pixels(valid_only=False)])
    rows_t = torch.stack([softmax(t.logits[b, :, y, x]) for b, y, x in pixels(valid_only=False)])
    inter = 1 - torch.stack([pearson(rows_s[i], rows_t[i]) for i in range(len(rows_s))]).mean()
    intra = 1 - torch.stack([pearson(rows_s[:, c], rows_t[:, c]) for c in range(C)]).mean()
    assert_terms(losses, {"ce": ce_reference(s.logits).item(), "inter": inter.item(), "intra": intra.item()})
    backward_reaches(losses, [s.logits], t)


def test_cwd_is_channelwise_spatial_kl_on_logits():
    s, t = dense_output(7, dense_info(4)), dense_output(8, dense_info(4))
    losses = build("cwd", dense_info(4), dense_info(4))(s, t, {"label": LABELS})
    T = 4.0
    total = sum(kl(softmax(t.logits[b, c].flatten() / T), softmax(s.logits[b, c].flatten() / T))
                for b in range(B) for c in range(C))
    assert_terms(losses, {"ce": ce_reference(s.logits).item(), "cwd": 3.0 * T * T * total.item() / (B * C)})
    backward_reaches(losses, [s.logits], t)


def test_cwd_on_a_map_aligns_channels_and_resizes_the_student():
    s_info, t_info = dense_info(3, (2, 2)), dense_info(5)
    s, t = dense_output(9, s_info), dense_output(10, t_info)
    method = build("cwd", s_info, t_info, feature="decoder", T=2.0, weight=1.0)
    losses = method(s, t, {"label": LABELS})
    weight, bias = method.align.weight.detach()[:, :, 0, 0], method.align.bias.detach()
    total = 0.0
    for b in range(B):
        aligned = torch.einsum("oc,chw->ohw", weight, s.decoder[b]) + bias.view(-1, 1, 1)
        for c in range(5):
            resized = bilinear(aligned[c], H, W)
            total = total + kl(softmax(t.decoder[b, c].flatten() / 2.0), softmax(resized.flatten() / 2.0))
    assert losses["cwd"].item() == pytest.approx(4.0 * total.item() / (B * 5), abs=ATOL)
    backward_reaches(losses, [s.decoder], t)


def reference_fd_dense(s_map: torch.Tensor, t_map: torch.Tensor, cut: int) -> dict[str, float]:
    """Per position: the channel vector's low / high DFT bands, L2-normalised, MSE / logMSE."""
    dim = t_map.shape[1]
    low_p, high_p = dft_band(dim, range(1, cut + 1)), dft_band(dim, range(cut + 1, dim // 2 + 1))
    out = {}
    for band, proj in (("low", low_p), ("high", high_p)):
        errors = []
        for b in range(B):
            for y in range(t_map.shape[2]):
                for x in range(t_map.shape[3]):
                    sv, tv = proj @ s_map[b, :, y, x], proj @ t_map[b, :, y, x]
                    sv, tv = sv / (sv.norm() + 1e-8), tv / (tv.norm() + 1e-8)
                    if band == "high":
                        sv, tv = sv.sign() * sv.abs().log1p(), tv.sign() * tv.abs().log1p()
                    errors.append(((sv - tv) ** 2).sum())
        out[f"align_{band}"] = (torch.stack(errors).sum() / t_map.numel()).item()
    return out


def test_fd_splits_channels_per_position_of_the_decoder_without_heads():
    s, t = dense_output(11, dense_info(16)), dense_output(12, dense_info(16))
    method = build("fd", dense_info(16), dense_info(16))
    assert method.shared is None and method.task_heads is None and (method.s_map, method.t_map) == ("decoder", "decoder")
    losses = method(s, t, {"label": LABELS})
    expected = {"ce": ce_reference(s.logits).item(), **reference_fd_dense(s.decoder.detach(), t.decoder, cut=4)}
    assert_terms(losses, expected)
    backward_reaches(losses, [s.logits, s.decoder], t)


def test_fd_projects_channels_and_resizes_the_student_map():
    s_info, t_info = dense_info(6, (2, 2)), dense_info(12)
    s, t = dense_output(13, s_info), dense_output(14, t_info)
    method = build("fd", s_info, t_info)
    losses = method(s, t, {"label": LABELS})
    weight, bias = method.project.weight.detach()[:, :, 0, 0], method.project.bias.detach()
    projected = torch.einsum("oc,bchw->bohw", weight, s.decoder.detach()) + bias.view(1, -1, 1, 1)
    resized = torch.stack([torch.stack([bilinear(projected[b, c], H, W) for c in range(12)]) for b in range(B)])
    expected = {"ce": ce_reference(s.logits).item(), **reference_fd_dense(resized, t.decoder, cut=3)}
    assert_terms(losses, expected)
    backward_reaches(losses, [s.decoder], t)
    assert method.project.weight.grad.abs().sum() > 0


def test_fitnet_hints_the_decoder_by_default():
    s_info, t_info = dense_info(3), dense_info(5)
    s, t = dense_output(15, s_info), dense_output(16, t_info)
    method = build("fitnet", s_info, t_info, weight=2.0)
    assert (method.student_stage, method.teacher_stage) == ("decoder", "decoder")
    losses = method(s, t, {"label": LABELS})
    conv = torch.einsum("oc,bchw->bohw", method.regressor[0].weight.detach()[:, :, 0, 0], s.decoder.detach())
    mean = conv.mean(dim=(0, 2, 3), keepdim=True)
    var = ((conv - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # training-mode BatchNorm: biased variance
    hint = (conv - mean) / (var + 1e-5).sqrt()
    assert_terms(losses, {"ce": ce_reference(s.logits).item(), "hint": 2.0 * ((hint - t.decoder) ** 2).mean().item()})


def test_at_transfers_the_decoder_attention_by_default():
    s, t = dense_output(17, dense_info(3)), dense_output(18, dense_info(5))
    losses = build("at", dense_info(3), dense_info(5))(s, t, {"label": LABELS})

    def q(m: torch.Tensor, b: int) -> torch.Tensor:
        energy = (m[b] ** 2).mean(dim=0).flatten()
        return energy / energy.norm()

    at = torch.stack([((q(s.decoder, b) - q(t.decoder, b)) ** 2).mean() for b in range(B)]).mean()
    assert_terms(losses, {"ce": ce_reference(s.logits).item(), "at": 1000.0 * at.item()})


# -- which methods take segmentation ---------------------------------------------------------------
SEGMENTATION_METHODS = {"no-kd", "kd", "fitnet", "at", "dist", "dkd", "cwd", "fd"}


def test_registry_declares_segmentation_support():
    names = set(METHODS.names(task="segmentation"))
    assert SEGMENTATION_METHODS <= names
    assert not names & {"rkd", "crd", "mgdfr", "c2kd"}  # relational / sample-level methods stay classification-only
    assert METHODS.get("cwd").tasks == ("segmentation",)  # it needs spatial maps: logits B x C are not


# -- one training step of every segmentation method -------------------------------------------------
@pytest.fixture(scope="module")
def tiny_rgbd() -> PairedData:
    return DATASETS.build("synth-rgbd", None, image_size=16, train=16, val=4, test=4)


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


@pytest.mark.parametrize("name", METHODS.names(task="segmentation"))
def test_every_segmentation_method_takes_a_training_step(name: str, tiny_rgbd: PairedData, tmp_path: Path):
    data, device = tiny_rgbd, torch.device("cpu")
    teacher = build_model("small-seg", data, "rgb", 0, device).eval()
    student = build_model("small-seg", data, "depth", 1, device)
    method = METHODS.build(name, student.info, teacher.info, data.spec)
    method.prepare(teacher, data, "cpu", tmp_path)
    recipe = data.spec.recipe.updated(epochs=1, batch_size=8, weight_decay=0.0)
    before_s, before_t, before_m = parameters(student), parameters(teacher), parameters(method)
    result = Fit(student=student, method=method, data=data, student_modality="depth", recipe=recipe, seed=0,
                 device=device, teacher=teacher, teacher_modality="rgb").run()
    losses = result.history[0]["losses"]
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert result.metric == "miou" and 0 <= result.test <= 100
    assert set(result.test_details) == {"pixel_acc", "per_class_iou"} and len(result.test_details["per_class_iou"]) == 6
    assert changed(before_s, student) == set(before_s)
    assert changed(before_m, method) == set(before_m)
    assert not changed(before_t, teacher)


# -- the command line ------------------------------------------------------------------------------
TINY_RGBD = ("--set", "train=16", "--set", "val=8", "--set", "test=8", "--set", "image_size=16")


def test_cli_runs_fd_on_synth_rgbd_and_records_miou(tmp_path):
    result = cli("run", "--method", "fd", "--dataset", "synth-rgbd", "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path), *TINY_RGBD)
    assert result.returncode == 0, result.stderr
    assert "miou" in result.stdout
    record = json.loads(next(tmp_path.glob("fd-synth-rgbd-rgb2depth-*/result.json")).read_text())
    assert record["status"] == "completed" and record["task"] == "segmentation" and record["metric"] == "miou"
    assert 0 <= record["metrics"]["test"] <= 100 and set(record["history"][0]["losses"]) == {"ce", "align_low", "align_high"}
    assert record["student_backbone"] == record["teacher_backbone"] == "small-seg"


@pytest.mark.parametrize("args, fragment", [
    (("--method", "rkd", "--dataset", "synth-rgbd"), "method 'rkd' does not support segmentation"),
    (("--method", "kd", "--dataset", "synth-rgbd", "--student", "small-cnn"), "backbone 'small-cnn' does not support segmentation"),
    (("--method", "kd", "--dataset", "synth-av", "--teacher", "small-seg"), "backbone 'small-seg' does not support classification"),
])
def test_cli_refuses_mismatched_tasks_in_one_line(args, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # in-process: the same entry point as the console script
        main(["run", *args, "--epochs", "1", "--out", str(tmp_path), "--device", "cpu", *TINY_RGBD])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and fragment in err[0]
    assert not list(tmp_path.glob("*/result.json"))  # refused before anything ran
