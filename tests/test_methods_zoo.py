"""The baseline zoo: golden values against the papers' formulas, gradients, and one training step of
every registered method on every classification dataset."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cmkd_bench.methods.mgdfr as mgdfr_module
import cmkd_bench.methods.mgdfr_ridge as mgdfr_ridge_module
from cmkd_bench.catalog import load_all
from cmkd_bench.cli import cli
from cmkd_bench.data.spec import DatasetSpec, Modality, PairedData, Recipe, TensorPairs
from cmkd_bench.errors import UserError
from cmkd_bench.losses import frequency_bands, low_band_cut, scale_normalise, signed_log
from cmkd_bench.methods.fd_presets import HIGH_BAND_LOG_TO_MSE
from cmkd_bench.models.features import FeatureModel, ModelInfo, ModelOutput
from cmkd_bench.registry import BACKBONES, DATASETS, METHODS
from cmkd_bench.training.engine import Fit
from cmkd_bench.training.runner import build_model

from conftest import bilinear

load_all()  # parametrisation below reads the registries at collection time

B, C = 6, 5
LABELS = torch.tensor([0, 1, 2, 3, 4, 1])
ATOL = 1e-6


# -- hand-made inputs ------------------------------------------------------------------------------
def spec(train: int = B, num_classes: int = C) -> DatasetSpec:
    return DatasetSpec(name="golden", task="classification", num_classes=num_classes,
                       modalities={"a": Modality((4,), "mlp"), "b": Modality((4,), "mlp")},
                       teacher_modality="a", student_modality="b", recipe=Recipe(),
                       split_sizes={"train": train, "val": B, "test": B})


def info(dim: int, stages: dict[str, tuple[int, ...]] | None = None) -> ModelInfo:
    return ModelInfo(name="m", num_classes=C, feature_dim=dim, stage_shapes=stages or {"s0": (dim,)})


def output(seed: int, dim: int, stages: dict[str, tuple[int, ...]] | None = None) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    maps = {name: leaf(B, *shape) for name, shape in (stages or {"s0": (dim,)}).items()}
    return ModelOutput(logits=leaf(B, C), feature=leaf(B, dim), feature_post=leaf(B, dim), stages=maps)


def build(name: str, s_info: ModelInfo, t_info: ModelInfo, data_spec: DatasetSpec | None = None, **hparams):
    torch.manual_seed(0)
    return METHODS.build(name, s_info, t_info, data_spec or spec(), **hparams).double()


def tensors(out: ModelOutput) -> list[torch.Tensor]:
    return [out.logits, out.feature, out.feature_post, *out.stages.values()]


def backward_and_check(losses: dict[str, torch.Tensor], student_used: list[torch.Tensor], teacher: ModelOutput,
                       method: torch.nn.Module, teacher_trained: bool = False) -> None:
    """Gradients reach what the method uses on the student side and its own parameters, never a frozen teacher."""
    sum(losses.values()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in student_used)
    assert all(p.grad is not None for p in method.parameters())
    if not teacher_trained:
        assert all(t.grad is None for t in tensors(teacher))


# -- independent references (loops and plain tensor ops) ---------------------------------------
def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([logits[i].exp().sum().log() - logits[i, labels[i]] for i in range(len(labels))]).mean()


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = (z - z.max()).exp()
    return e / e.sum()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


def smooth_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def adaptive_pool(a: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """H x W -> out_h x out_w with PyTorch's bins [floor(i H / o), ceil((i + 1) H / o))."""
    h, w = a.shape
    return torch.stack([torch.stack([a[(i * h) // out_h: -(-((i + 1) * h) // out_h),
                                       (j * w) // out_w: -(-((j + 1) * w) // out_w)].mean()
                                     for j in range(out_w)]) for i in range(out_h)])


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-8)


# -- golden values, term by term ---------------------------------------------------------------
def test_at_matches_attention_transfer_with_the_student_map_resized():
    # the official form is beta * sum mean (Q_s - Q_t)^2 (tests/test_fidelity_logit_feature.py checks it
    # against szagoruyko/attention-transfer's at_loss); here the student's map is pooled to the teacher's size
    s_stages, t_stages = {"a": (4, 6, 6), "b": (8, 3, 3)}, {"x": (5, 4, 4), "y": (6, 2, 2)}
    s, t = output(1, 8, s_stages), output(2, 6, t_stages)
    method = build("at", info(8, s_stages), info(6, t_stages), stages="0,1")
    losses = method(s, t, {"label": LABELS})

    def q(stage: torch.Tensor, b: int, size: tuple[int, int]) -> torch.Tensor:
        energy = adaptive_pool((stage[b] ** 2).mean(dim=0), *size).flatten()
        return energy / energy.norm()

    total = 0.0
    for s_name, t_name in (("a", "x"), ("b", "y")):
        size = t_stages[t_name][1:]
        diffs = [(q(s.stages[s_name], b, size) - q(t.stages[t_name], b, size)) ** 2 for b in range(B)]
        total = total + torch.stack(diffs).mean()
    assert losses["at"].item() == pytest.approx(1000 * total.item(), abs=ATOL)
    assert losses["ce"].item() == pytest.approx(cross_entropy(s.logits, LABELS).item(), abs=ATOL)
    backward_and_check(losses, [s.logits, s.stages["a"], s.stages["b"]], t, method)


@pytest.mark.parametrize("hparams", [{}, {"weight": 0.1, "feature": "pre"}])
def test_rkd_matches_distance_and_angle_relations(hparams):
    s, t = output(3, 7), output(4, 5)
    method = build("rkd", info(7), info(5), **hparams)
    losses = method(s, t, {"label": LABELS})
    scale = hparams.get("weight", 1.0)  # one global scale on both terms (mdistiller's FEAT_WEIGHT)

    def relations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.stack([torch.stack([(x[i] - x[j]).norm() if i != j else x.new_zeros(()) for j in range(B)])
                         for i in range(B)])
        d = d / d[d > 0].mean()  # the official normalisation: the mean of the non-zero distances

        def unit(v: torch.Tensor) -> torch.Tensor:
            return v / v.norm() if v.norm() > 0 else v * 0

        a = torch.stack([unit(x[j] - x[i]) @ unit(x[k] - x[i]) for i in range(B) for j in range(B) for k in range(B)])
        return d, a

    used = s.feature if hparams.get("feature") == "pre" else s.feature_post  # default: post, the references'
    (d_s, a_s), (d_t, a_t) = relations(used), relations(t.feature if used is s.feature else t.feature_post)
    assert losses["rkd_distance"].item() == pytest.approx(scale * 25 * smooth_l1(d_s, d_t).item(), abs=ATOL)
    assert losses["rkd_angle"].item() == pytest.approx(scale * 50 * smooth_l1(a_s, a_t).item(), abs=ATOL)
    backward_and_check(losses, [s.logits, used], t, method)


def test_rkd_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="weight"):
        METHODS.build("rkd", info(4), info(4), spec(), weight=-0.1)


@pytest.mark.parametrize("s_shape, t_shape, loss_weight", [((6, 5, 5), (4, 3, 3), None), ((7,), (3,), None),
                                                            ((6, 5, 5), (4, 3, 3), 10.0)])
def test_pkd_matches_standardised_mse(s_shape, t_shape, loss_weight):
    # The projection (channels differ) and vector stages are our extensions; the formula is
    # mmrazor's PKDLoss (tests/test_fidelity_relational_fd.py checks it against that code directly).
    s, t = output(5, 8, {"s0": s_shape}), output(6, 8, {"t0": t_shape})
    hparams = {} if loss_weight is None else {"weight": loss_weight}
    method = build("pkd", info(8, {"s0": s_shape}), info(8, {"t0": t_shape}), **hparams)
    losses = method(s, t, {"label": LABELS})
    weight = method.project.weight.detach().flatten(1)  # the learned 1x1 projection, used as given
    projected = torch.einsum("oc,bc...->bo...", weight, s.stages["s0"])
    if len(s_shape) == 3:
        projected = torch.stack([torch.stack([bilinear(projected[b, c], *t_shape[1:]) for c in range(t_shape[0])])
                                 for b in range(B)])

    def standardised(x: torch.Tensor) -> torch.Tensor:
        channels = [x[:, c].flatten() for c in range(x.shape[1])]
        out = [(v - v.mean()) / (((v - v.mean()) ** 2).sum() / (len(v) - 1)).sqrt().add(1e-6) for v in channels]
        return torch.stack(out)

    expected = (loss_weight or 6.0) * ((standardised(projected) - standardised(t.stages["t0"])) ** 2).mean() / 2
    assert losses["pkd"].item() == pytest.approx(expected.item(), abs=ATOL)
    backward_and_check(losses, [s.logits, s.stages["s0"]], t, method)


def test_dkd_matches_tckd_and_nckd():
    s, t = output(7, 4), output(8, 4)
    method = build("dkd", info(4), info(4))
    method.on_epoch_start(100, 240)  # past the warm-up: the full weight
    losses = method(s, t, {"label": LABELS})
    tckd = nckd = 0.0
    for b, y in enumerate(LABELS.tolist()):
        p_s, p_t = softmax(s.logits[b] / 4), softmax(t.logits[b] / 4)
        tckd = tckd + kl(torch.stack([p_t[y], 1 - p_t[y]]), torch.stack([p_s[y], 1 - p_s[y]]))
        others = [c for c in range(C) if c != y]
        nckd = nckd + kl(p_t[others] / p_t[others].sum(), p_s[others] / p_s[others].sum())
    assert losses["tckd"].item() == pytest.approx(16 * 1.0 * tckd.item() / B, abs=ATOL)
    assert losses["nckd"].item() == pytest.approx(16 * 8.0 * nckd.item() / B, abs=ATOL)
    assert losses["ce"].item() == pytest.approx(cross_entropy(s.logits, LABELS).item(), abs=ATOL)
    backward_and_check(losses, [s.logits], t, method)


@pytest.mark.parametrize("epoch, step, steps, epochs, factor", [
    (0, 10, 10, 240, 1 / 20), (9, 10, 10, 240, 10 / 20), (9, 5, 10, 240, 9.5 / 20), (19, 10, 10, 240, 1.0),
    (200, 1, 10, 240, 1.0), (0, 1, 10, 12, 0.1), (0, 6, 10, 12, 0.6), (1, 1, 10, 12, 1.0)])
def test_dkd_warmup_scales_the_kd_terms_per_step(epoch, step, steps, epochs, factor):
    s, t = output(7, 4), output(8, 4)
    method = build("dkd", info(4), info(4))
    method.on_epoch_start(epochs - 1, epochs)
    full = method(s, t, {"label": LABELS})
    method.on_epoch_start(epoch, epochs)
    method.on_step_start(step, steps)
    ramped = method(s, t, {"label": LABELS})
    for term in ("tckd", "nckd"):
        assert ramped[term].item() == pytest.approx(factor * full[term].item(), rel=1e-9)
    assert ramped["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-12)  # CE is never ramped


@pytest.mark.parametrize("hparams", [{}, {"beta": 1.5, "gamma": 0.5, "tau": 2.0, "weight": 1.0}])
def test_dist_matches_inter_and_intra_pearson(hparams):
    s, t = output(9, 4), output(10, 4)
    method = build("dist", info(4), info(4), **hparams)
    losses = method(s, t, {"label": LABELS})
    beta, gamma, tau = hparams.get("beta", 1.0), hparams.get("gamma", 1.0), hparams.get("tau", 1.0)
    weight = hparams.get("weight", 2.0)  # DIST_KD's kd_loss_weight
    y_s = torch.stack([softmax(s.logits[b] / tau) for b in range(B)])
    y_t = torch.stack([softmax(t.logits[b] / tau) for b in range(B)])
    inter = 1 - torch.stack([pearson(y_s[b], y_t[b]) for b in range(B)]).mean()
    intra = 1 - torch.stack([pearson(y_s[:, c], y_t[:, c]) for c in range(C)]).mean()
    assert losses["inter"].item() == pytest.approx(weight * tau**2 * beta * inter.item(), abs=ATOL)
    assert losses["intra"].item() == pytest.approx(weight * tau**2 * gamma * intra.item(), abs=ATOL)
    backward_and_check(losses, [s.logits], t, method)


@pytest.mark.parametrize("n, k", [(20, 7), (40, 3)])  # bank scored whole (K large), rows gathered (K small)
def test_crd_matches_nce_with_memory_banks(n, k):
    s, t = output(11, 6), output(12, 5)
    method = build("crd", info(6), info(5), spec(train=n), feat_dim=4, nce_k=k)
    method.set_train_labels(torch.arange(n) % 5)  # exact negatives: K = k stays under N - N / 5
    index = torch.tensor([3, 0, 7, 12, 19, 5])
    assert (method.n_data <= 4 * (k + 1)) == (n == 20)
    negatives = torch.tensor([[(i + 1 + j * 2) % n for j in range(k)] for i in index.tolist()])
    contrast = torch.cat([index[:, None], negatives], dim=1)
    method.sample_contrast = lambda idx: contrast  # the sampler has its own test; here the formula
    memory_s, memory_t = method.memory_s.clone(), method.memory_t.clone()
    losses = method(s, t, {"label": LABELS, "index": index})

    def embed(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        v = x @ linear.weight.detach().t() + linear.bias.detach()
        return v / v.norm(dim=1, keepdim=True)

    def nce(anchor: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.stack([torch.stack([torch.exp(memory[contrast[b, j]] @ anchor[b] / 0.07) for j in range(k + 1)])
                         for b in range(B)])
        z = h.mean() * n
        p, noise = h / z, k / n
        total = sum(torch.log(p[b, 0] / (p[b, 0] + noise + 1e-7)) for b in range(B))
        total = total + sum(torch.log(noise / (p[b, j] + noise + 1e-7)) for b in range(B) for j in range(1, k + 1))
        return -total / B, z

    v_s, v_t = embed(method.embed_s.linear, s.feature_post), embed(method.embed_t.linear, t.feature_post)
    (loss_s, z_s), (loss_t, z_t) = nce(v_s, memory_t), nce(v_t, memory_s)
    assert losses["crd"].item() == pytest.approx(0.8 * (loss_s + loss_t).item(), abs=ATOL)
    assert (method.z_s.item(), method.z_t.item()) == pytest.approx((z_s.item(), z_t.item()), rel=1e-12)
    for memory, old, v in ((method.memory_s, memory_s, v_s), (method.memory_t, memory_t, v_t)):
        mixed = 0.5 * old[index] + 0.5 * v.detach()
        assert torch.allclose(memory[index], mixed / mixed.norm(dim=1, keepdim=True), atol=1e-12)
        untouched = [i for i in range(n) if i not in index.tolist()]
        assert torch.equal(memory[untouched], old[untouched])
    backward_and_check(losses, [s.logits, s.feature_post], t, method)
    method(output(13, 6), output(14, 5), {"label": LABELS, "index": index})
    assert method.z_s.item() == pytest.approx(z_s.item(), rel=1e-12)  # Z is fixed after the first batch
    resumed = build("crd", info(6), info(5), spec(train=n), feat_dim=4, nce_k=k)
    resumed.load_state_dict(method.state_dict())  # the labels come back with the state: no prepare() needed
    resumed(output(13, 6), output(14, 5), {"label": LABELS, "index": index})
    assert resumed.z_t.item() == pytest.approx(z_t.item(), rel=1e-12)  # a resumed run keeps its Z


def test_mgdfr_ridge_distils_only_the_kept_channels():
    s, t = output(15, 5), output(16, 6)
    method = build("mgdfr-ridge", info(5), info(6), weight=2.0)
    method.channels.copy_(torch.tensor([3, 0, 5]))  # as prepare() would leave them
    method.ranked = True
    losses = method(s, t, {"label": LABELS})
    w, bias = method.project.weight.detach(), method.project.bias.detach()
    expected = 2.0 * ((s.feature_post @ w.t() + bias - t.feature_post[:, [3, 0, 5]]) ** 2).mean()
    assert losses["mgd"].item() == pytest.approx(expected.item(), abs=ATOL)
    backward_and_check(losses, [s.logits, s.feature_post], t, method)


@pytest.mark.parametrize("name", ["mgdfr", "mgdfr-ridge"])
def test_mgdfr_refuses_to_train_unranked(name):
    method = build(name, info(5), info(6))
    with pytest.raises(RuntimeError, match="prepare"):
        method(output(15, 5), output(16, 6), {"label": LABELS})


# -- mixed precision: on CUDA the engine runs methods under bf16 autocast ---------------------------
def rounded(out: ModelOutput, dtype: torch.dtype, offset: float = 0.0) -> ModelOutput:
    """A copy in `dtype`; `offset` shifts the pooled features, like the positive mean of post-ReLU features."""
    return ModelOutput(out.logits.detach().to(dtype), (out.feature.detach() + offset).to(dtype),
                       (out.feature_post.detach() + offset).to(dtype),
                       {k: v.detach().to(dtype) for k, v in out.stages.items()})


S_MAPS, T_MAPS = {"a": (8, 6, 6)}, {"x": (6, 4, 4)}


@pytest.mark.parametrize("name, hparams, maps, rel", [
    ("at", {}, True, 1e-2), ("pkd", {}, True, 1e-2), ("rkd", {}, False, 1e-2), ("dkd", {}, False, 1e-2),
    ("dist", {}, False, 1e-2), ("crd", {"feat_dim": 8, "nce_k": 5}, False, 1e-4), ("mgdfr-ridge", {}, False, 1e-2),
    ("c2kd", {"proxy_stage": "-1"}, True, 1e-2)])  # mgdfr (the teacher's head in the loop): test_fidelity_cmkd.py
def test_bf16_autocast_changes_no_loss_by_more_than_rounding(name, hparams, maps, rel):
    # bf16 inputs under autocast against float64 on the same rounded inputs: only the method's own
    # bf16 layers may add error (~0.1-0.3%), no term may lose its meaning (e.g. a negative KL).
    # CRD keeps its embeddings and scores in float32 (exp(<v, m> / 0.07) magnifies rounding).
    s_maps, t_maps = (S_MAPS, T_MAPS) if maps else (None, None)
    s, t = rounded(output(40, 16, s_maps), torch.bfloat16, 3.0), rounded(output(41, 12, t_maps), torch.bfloat16, 3.0)
    batch = {"label": LABELS, "index": torch.tensor([3, 0, 7, 12, 19, 5])}
    results = []
    for double in (True, False):
        method = build(name, info(16, s_maps), info(12, t_maps), spec(train=20), **hparams)
        method = method if double else method.float()
        method.ranked = True  # mgdfr-ridge: any channels will do here
        method.on_epoch_start(100, 240)
        if name == "crd":
            method.set_train_labels(torch.arange(20) % 4)  # exact negatives need the train labels
        torch.manual_seed(1)  # crd: the same negatives for both
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not double):
            inputs = (rounded(s, torch.float64), rounded(t, torch.float64)) if double else (s, t)
            results.append(method(*inputs, batch))
    reference, low = results
    for term, value in reference.items():
        assert low[term].float().item() == pytest.approx(value.item(), rel=rel), term


# -- hyper-parameters and declared needs -------------------------------------------------------
MAPS = {"s0": (4, 4, 4)}


@pytest.mark.parametrize("name, s_info, t_info, hparams", [
    ("at", info(4, MAPS), info(4, MAPS), {"beta": -1.0}),
    ("at", info(4, MAPS), info(4, MAPS), {"stages": " , "}),
    ("at", info(4), info(4), {}),  # vector stages have no spatial attention
    ("rkd", info(4), info(4), {"feature": "logits"}),
    ("pkd", info(4, MAPS), info(4), {}),  # a map and a vector cannot be compared channel-wise
    ("dkd", info(4), info(4), {"warmup": 1.0}),
    ("dkd", info(4), info(4), {"T": 0.0}),
    ("dist", info(4), info(4), {"tau": 0.0}),
    ("dist", info(4), info(4), {"weight": -1.0}),
    ("fitnet", info(4), info(4), {"weight": -1.0}),
    ("fitnet", info(4, MAPS), info(4), {}),  # a map cannot be regressed onto a vector
    ("crd", info(4), info(4), {"momentum": 1.0}),
    ("crd", info(4), info(4), {"negatives": "hard"}),
    ("mgdfr", info(4), info(4), {"fraction": 1.0}),
    ("mgdfr", info(4), info(4), {"kd_reduction": "sum"}),
    ("mgdfr-ridge", info(4), info(4), {"fraction": 0.0}),
    ("c2kd", info(4), info(4), {"krc_threshold": 1.0}),
    ("c2kd", info(4), info(4), {"non_target": "keep"}),
])
def test_impossible_settings_are_value_errors(name, s_info, t_info, hparams):
    with pytest.raises(ValueError):
        METHODS.build(name, s_info, t_info, spec(), **hparams)


def test_crd_declares_and_checks_the_index():
    assert "index" in METHODS.get("crd").factory.needs
    method = build("crd", info(6), info(5))
    with pytest.raises(UserError, match=r"batch\['index'\]"):
        method(output(11, 6), output(12, 5), {"label": LABELS})


def test_crd_uniform_negatives_use_the_global_rng_and_skip_the_positive():
    # the option, not the default (exact negatives: tests/test_fidelity_logit_feature.py)
    method = build("crd", info(6), info(5), spec(train=10), negatives="uniform")  # nce_k=16384 is capped at 9
    index = torch.tensor([3, 3, 0, 9])
    torch.manual_seed(5)
    first = method.sample_contrast(index)
    torch.manual_seed(5)
    assert torch.equal(method.sample_contrast(index), first)  # the engine's seeding makes it repeatable
    assert first.shape == (4, 10) and torch.equal(first[:, 0], index)
    assert not (first[:, 1:] == index[:, None]).any() and first.min() >= 0 and first.max() < 10
    draws = torch.cat([method.sample_contrast(torch.tensor([3]))[0, 1:] for _ in range(30)])
    assert set(draws.tolist()) == set(range(10)) - {3}  # every other sample can be a negative


# -- MGDFR ranking ------------------------------------------------------------------------------
def linear_teacher(data: PairedData, modality: str, steps: int = 300) -> FeatureModel:
    torch.manual_seed(0)
    model = BACKBONES.build("linear", data.spec.modality(modality).shape, data.spec.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = data.splits["train"][modality], data.splits["train"]["label"]
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_mgdfr_ranks_the_shared_decisive_dims_first():
    # mfh-gauss with overlap 5: teacher dims 0-4 carry the latents the student modality also sees,
    # dims 5-9 latents it does not (decisive but modality-specific), dims 10-24 noise. mgdfr trains
    # its partner on x2 in prepare() and removes the 75 % least salient dims (18 of 25).
    data = DATASETS.build("mfh-gauss", None, overlap=5, train=1000, val=16, test=16, data_seed=1)
    teacher = linear_teacher(data, "x1")
    method = build("mgdfr", BACKBONES.build("linear", (50,), 2).info, teacher.info, data.spec).float()
    method.prepare(teacher, data, "cpu", None)
    kept = set(range(25)) - set(method.removed.tolist())
    assert len(kept) == 7 and len(kept & set(range(5))) >= 4
    salience = mgdfr_module.min_max(mgdfr_module.rank_channels(teacher, data, method.cache_key(data), "cpu"))
    assert salience[:5].mean() > 3 * salience[5:10].mean() and salience[:5].mean() > 3 * salience[10:].mean()


def test_mgdfr_ridge_ranks_the_shared_decisive_dims_first():
    data = DATASETS.build("mfh-gauss", None, overlap=5, train=1000, val=16, test=16, data_seed=1)
    teacher = linear_teacher(data, "x1")
    method = build("mgdfr-ridge", BACKBONES.build("linear", (50,), 2).info, teacher.info, data.spec, fraction=0.2)
    salience = mgdfr_ridge_module.channel_salience(teacher, data, "x1", "x2", "cpu", **method.ranking)
    method.prepare(teacher, data, "cpu", None)
    assert len(set(method.channels.tolist()) & set(range(5))) >= 4
    assert salience[:5].mean() > 3 * salience[5:10].mean()
    assert salience[:5].mean() > 3 * salience[10:].abs().mean()


def test_mgdfr_ranking_is_cached_per_teacher_and_reused(tmp_path, monkeypatch):
    data = DATASETS.build("mfh-gauss", None, train=64, val=16, test=16)
    teacher, student = linear_teacher(data, "x1", steps=20), BACKBONES.build("linear", (50,), 2)
    first = build("mgdfr", student.info, teacher.info, data.spec, partner_budget=0.05)
    first.prepare(teacher, data, "cpu", tmp_path)
    assert len(list(tmp_path.glob("mgdfr-*.pt"))) == 1

    def must_not_rank(*args, **kwargs):
        raise AssertionError("the cached ranking should have been reused")

    monkeypatch.setattr(mgdfr_module, "rank_channels", must_not_rank)
    again = build("mgdfr", student.info, teacher.info, data.spec, partner_budget=0.05, fraction=0.5, T=4.0)
    again.prepare(teacher, data, "cpu", tmp_path)  # the same ranking settings: the same ranking, another cut
    assert set(again.removed.tolist()) <= set(first.removed.tolist()) and len(again.removed) == 12
    other = build("mgdfr", student.info, teacher.info, data.spec, partner_budget=0.05, repeats=2)
    with pytest.raises(AssertionError, match="reused"):
        other.prepare(teacher, data, "cpu", tmp_path)  # a setting the ranking depends on


def test_mgdfr_ridge_ranking_is_cached_per_teacher_and_reused(tmp_path, monkeypatch):
    data = DATASETS.build("mfh-gauss", None, train=64, val=16, test=16)
    teacher, student = linear_teacher(data, "x1", steps=20), BACKBONES.build("linear", (50,), 2)
    first = build("mgdfr-ridge", student.info, teacher.info, data.spec)
    first.prepare(teacher, data, "cpu", tmp_path)
    assert len(list(tmp_path.glob("mgdfr-ridge-*.pt"))) == 1

    def must_not_rank(*args, **kwargs):
        raise AssertionError("the cached ranking should have been reused")

    monkeypatch.setattr(mgdfr_ridge_module, "channel_salience", must_not_rank)
    again = build("mgdfr-ridge", student.info, teacher.info, data.spec, fraction=0.2, weight=3.0)  # same ranking
    again.prepare(teacher, data, "cpu", tmp_path)
    assert torch.equal(again.channels, first.channels[:len(again.channels)])
    other = build("mgdfr-ridge", student.info, teacher.info, data.spec, repeats=2)  # a setting the ranking depends on
    with pytest.raises(AssertionError, match="reused"):
        other.prepare(teacher, data, "cpu", tmp_path)


def test_mgdfr_follows_the_run_direction_when_the_harness_gives_it(tmp_path):
    data = DATASETS.build("synth-av", None, **TINY["synth-av"])
    teacher = build_model("small-cnn", data, "audio", 0, torch.device("cpu")).eval()  # the reversed direction
    student = build_model("small-cnn", data, "visual", 1, torch.device("cpu"))
    for name in ("mgdfr", "mgdfr-ridge"):
        method = build(name, student.info, teacher.info, data.spec).float()
        with pytest.raises(UserError, match="default direction visual->audio"):
            method.prepare(teacher, data, "cpu", tmp_path)  # one clear line instead of a shape error
        method = build(name, student.info, teacher.info, data.spec.with_direction("audio", "visual")).float()
        method.prepare(teacher, data, "cpu", tmp_path)
        key = method.cache_key(data) if name == "mgdfr" else method.cache_key()
        assert key["teacher_modality"] == "audio" and key["student_modality"] == "visual"
        if name == "mgdfr":
            assert key["partner"] == "small-cnn" and method.head is teacher.net.fc  # the partner reads visual


# -- FD-CMKD ablation presets --------------------------------------------------------------------
PRESETS = {
    "fd-no-freq": {"freq_split": False},
    "fd-no-align": {"w_low": 0.0, "w_high": 0.0},
    "fd-no-scale": {"scale_norm": False},
    "fd-no-log": {"log_high": False},
    "fd-no-shared": {"shared_heads": False},
    "fd-high-downweight": {"log_high": False, "w_high": HIGH_BAND_LOG_TO_MSE},
}


@pytest.mark.parametrize("name", PRESETS)
def test_fd_presets_change_only_their_settings(name):
    entry = METHODS.get(name)
    assert entry.hparams == {**METHODS.get("fd").hparams, **PRESETS[name]}
    built = entry.factory(info(64), info(64), spec())
    changes = PRESETS[name]
    assert built.freq_split == changes.get("freq_split", True) and built.scale_norm == changes.get("scale_norm", True)
    assert built.log_high == changes.get("log_high", True) and (built.shared is None) == (name == "fd-no-shared")
    assert built.weights["high"] == changes.get("w_high", 1.0) and built.weights["low"] == changes.get("w_low", 1.0)
    assert built.attr == "feature_post"  # fd's (the reference's) feature in every preset
    # fd's search space is inherited unless the preset declares its own (the weights fd's space tunes are fixed)
    if not entry.meta.get("own_search_space"):
        assert entry.meta["search_space"] == METHODS.get("fd").meta["search_space"]


def test_fd_mse_both_is_the_same_preset_as_fd_no_log():
    assert METHODS.canonical("fd-mse-both") == "fd-no-log"


def test_high_downweight_matches_the_logmse_to_mse_ratio_at_small_cnn_width():
    # The reasoning behind w_high: scale-normalised high bands are small, so logMSE ~ 0.84 x MSE at D = 64.
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(512, 64, generator=g), torch.randn(512, 64, generator=g)
    cut = low_band_cut(64, 0.5)
    hs, ht = (scale_normalise(frequency_bands(x, cut)[1]) for x in (s, t))
    ratio = ((signed_log(hs) - signed_log(ht)) ** 2).mean() / ((hs - ht) ** 2).mean()
    assert abs(ratio.item() - HIGH_BAND_LOG_TO_MSE) < 0.03


# -- the catalogue -------------------------------------------------------------------------------
def method_class(entry) -> type:
    factory = entry.factory
    return factory.func if isinstance(factory, functools.partial) else factory


def test_list_methods_shows_every_name_and_reference():
    result = CliRunner().invoke(cli, ["list", "methods"], env={"COLUMNS": "4000"})
    assert result.exit_code == 0, result.output
    for entry in METHODS:
        if not method_class(entry).__module__.startswith("cmkd_bench.methods."):
            continue  # a plug-in another test registered in this process
        assert entry.name in result.output
        if getattr(method_class(entry), "uses_teacher", True):  # every distillation method cites its paper
            detail = CliRunner().invoke(cli, ["list", "methods", entry.name], env={"COLUMNS": "4000"})
            assert detail.exit_code == 0, detail.output
            assert entry.reference and entry.reference in detail.output


# -- every method, one step, every classification dataset ------------------------------------------
TINY = {"synth-av": {"train": 64, "val": 16, "test": 16, "image_size": 16},
        "synth-it": {"train": 64, "val": 16, "test": 16, "image_size": 16},
        "mfh-gauss": {"train": 32, "val": 16, "test": 16}}


REVERSED = "synth-it text→visual"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, PairedData]:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 3
    npz = tmp_path_factory.mktemp("npz") / "pairs.npz"
    np.savez(npz, img=(rng.normal(size=(40, 8, 8)) + labels[:, None, None]).astype(np.float32),
             vec=(rng.normal(size=(40, 6)) + labels[:, None]).astype(np.float32), label=labels)
    data = {name: DATASETS.build(name, None, **options) for name, options in TINY.items()}
    data["paired-npz"] = DATASETS.build("paired-npz", npz)
    image_text = data["synth-it"]  # and the other direction: a text teacher, an image student
    data[REVERSED] = TensorPairs(image_text.spec.with_direction("text", "visual"), image_text.splits)
    return data


def has_maps(model_info: ModelInfo) -> bool:
    """C x H x W stage maps with positions (a text model's stages are D x 1 x 1 token means)."""
    return any(len(shape) == 3 and shape[1] * shape[2] > 1 for shape in model_info.stage_shapes.values())


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


def test_tiny_datasets_cover_the_registered_ones():
    assert {"synth-av", "synth-it", "mfh-gauss", "paired-npz"} <= set(DATASETS.names(task="classification"))


# The real audio-visual datasets need prepared files: tests/test_av_datasets.py trains a step on each.
@pytest.mark.parametrize("dataset", [*TINY, REVERSED, "paired-npz"])
@pytest.mark.parametrize("name", METHODS.names(task="classification"))
def test_every_method_takes_a_training_step(name: str, dataset: str, tiny_data, tmp_path: Path):
    data, device = tiny_data[dataset], torch.device("cpu")
    if getattr(method_class(METHODS.get(name)), "multimodal_teacher_only", None):
        return  # needs a multimodal teacher and the runner's context: tests/test_mst.py trains its steps
    t_mod, s_mod = data.spec.teacher_modality, data.spec.student_modality
    teacher = build_model(data.spec.modalities[t_mod].backbone, data, t_mod, 0, device)
    student = build_model(data.spec.modalities[s_mod].backbone, data, s_mod, 1, device)
    try:
        method = METHODS.build(name, student.info, teacher.info, data.spec)
    except (UserError, ValueError) as exc:
        # A method may decline only where a model has no C x H x W stage maps with positions (a text model:
        # at needs positions, mgdfr-ridge a ridge on raw inputs, which token ids are not), in one line.
        assert "\n" not in str(exc)
        assert not (has_maps(student.info) and has_maps(teacher.info)), f"{name} failed to build: {exc}"
        return
    teacher.eval()
    method.prepare(teacher, data, "cpu", tmp_path)
    recipe = data.spec.recipe.updated(epochs=1, batch_size=64, weight_decay=0.0)  # no decay: a change means a gradient
    before_s, before_t, before_m = parameters(student), parameters(teacher), parameters(method)
    result = Fit(student=student, method=method, data=data, student_modality=s_mod, recipe=recipe, seed=0,
                 device=device, teacher=teacher, teacher_modality=t_mod).run()
    losses = result.history[0]["losses"]
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert changed(before_s, student) == set(before_s)
    assert changed(before_m, method) == set(before_m)
    assert bool(changed(before_t, teacher)) == method.trains_teacher
