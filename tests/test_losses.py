"""Each method of the core set against an independent computation of its formula (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from cmkd_bench.data.spec import DatasetSpec, Modality, Recipe
from cmkd_bench.models.features import ModelInfo, ModelOutput
from cmkd_bench.registry import METHODS

B, C = 6, 5


def spec(num_classes: int = C) -> DatasetSpec:
    return DatasetSpec(name="golden", task="classification", num_classes=num_classes,
                       modalities={"a": Modality((4,), "mlp"), "b": Modality((4,), "mlp")},
                       teacher_modality="a", student_modality="b", recipe=Recipe(), split_sizes={"train": B, "val": B, "test": B})


def info(dim: int, stages: dict | None = None) -> ModelInfo:
    return ModelInfo(name="m", num_classes=C, feature_dim=dim, stage_shapes=stages or {"s0": (dim,)})


def output(generator: torch.Generator, dim: int, stages: dict | None = None, grad: bool = True) -> ModelOutput:
    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(grad)

    maps = {name: leaf(B, *shape) for name, shape in (stages or {"s0": (dim,)}).items()}
    return ModelOutput(logits=leaf(B, C), feature=leaf(B, dim), feature_post=leaf(B, dim), stages=maps)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([-(logits[i, labels[i]] - logits[i].exp().sum().log()) for i in range(len(labels))]).mean()


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = (z - z.max(dim=1, keepdim=True).values).exp()
    return e / e.sum(dim=1, keepdim=True)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 4, 1])


def test_no_kd_is_cross_entropy(gen, labels):
    s = output(gen, 8)
    method = METHODS.build("no-kd", info(8), info(8), spec())
    losses = method(s, None, {"label": labels})
    assert set(losses) == {"ce"}
    assert torch.allclose(losses["ce"], cross_entropy(s.logits, labels), atol=1e-12)


@pytest.mark.parametrize("T, alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0)])
def test_kd_matches_hinton(gen, labels, T, alpha):
    s, t = output(gen, 8), output(gen, 8)
    losses = METHODS.build("kd", info(8), info(8), spec(), T=T, alpha=alpha)(s, t, {"label": labels})
    p_t, p_s = softmax(t.logits.detach() / T), softmax(s.logits / T)
    kl = sum((p_t[i] * (p_t[i].log() - p_s[i].log())).sum() for i in range(B)) / B
    assert losses["kd"].item() == pytest.approx(alpha * T * T * kl.item(), abs=1e-10)
    assert losses["ce"].item() == pytest.approx((1 - alpha) * cross_entropy(s.logits, labels).item(), abs=1e-10)
    sum(losses.values()).backward()
    assert t.logits.grad is None and s.logits.grad is not None


def test_kd_rejects_impossible_settings():
    with pytest.raises(ValueError):
        METHODS.build("kd", info(8), info(8), spec(), T=0.0)
    with pytest.raises(ValueError):
        METHODS.build("kd", info(8), info(8), spec(), alpha=1.5)


def test_fitnet_vector_stage_is_mse_of_linear_projection(gen, labels):
    s, t = output(gen, 6), output(gen, 4, {"s0": (4,)})
    method = METHODS.build("fitnet", info(6), info(4, {"s0": (4,)}), spec(), weight=2.0).double()
    losses = method(s, t, {"label": labels})
    w, b = method.regressor.weight, method.regressor.bias
    hint = torch.stack([w @ s.stages["s0"][i] + b for i in range(B)])
    expected = ((hint - t.stages["s0"]) ** 2).mean() * 2.0
    assert losses["hint"].item() == pytest.approx(expected.item(), abs=1e-10)
    losses["hint"].backward()
    assert w.grad is not None and s.stages["s0"].grad is not None and t.stages["s0"].grad is None


def test_fitnet_maps_pool_student_to_teacher_size_and_select_named_stage(gen, labels):
    s_stages = {"early": (3, 8, 8), "late": (5, 4, 4)}
    t_stages = {"x": (2, 8, 8), "y": (7, 2, 2)}
    method = METHODS.build("fitnet", info(5, s_stages), info(7, t_stages), spec(), student_stage="early").double()
    assert (method.student_stage, method.teacher_stage) == ("early", "y")
    s, t = output(gen, 5, s_stages), output(gen, 7, t_stages)
    losses = method(s, t, {"label": labels})
    assert torch.isfinite(losses["hint"])


def test_fitnet_unknown_stage_names_the_choices():
    from cmkd_bench.errors import UserError

    with pytest.raises(UserError, match="its stages are s0"):
        METHODS.build("fitnet", info(4), info(4), spec(), student_stage="layer9")


# -- FD-CMKD ------------------------------------------------------------------------------------
def band_projection(dim: int, bins: range) -> torch.Tensor:
    """Real projection onto the given DFT bins, built from cosines (no FFT involved)."""
    n = torch.arange(dim, dtype=torch.float64)
    diff = n.view(-1, 1) - n.view(1, -1)
    total = torch.zeros(dim, dim, dtype=torch.float64)
    for k in bins:
        scale = 1.0 / dim if (k == 0 or 2 * k == dim) else 2.0 / dim
        total += scale * torch.cos(2 * math.pi * k * diff / dim)
    return total


def test_fd_bands_keep_the_right_bins_and_drop_dc():
    from cmkd_bench.losses import frequency_bands, low_band_cut

    dim = 32
    n = torch.arange(dim, dtype=torch.float64)
    wave = {k: torch.cos(2 * math.pi * k * n / dim + 0.3 * k) for k in (1, 5, 8, 9, 12, 16)}
    x = 3.0 + sum(wave.values())
    cut = low_band_cut(dim, 0.5)
    assert cut == dim // 4 == 8
    low, high = frequency_bands(x.unsqueeze(0), cut)
    assert torch.allclose(low[0], wave[1] + wave[5] + wave[8], atol=1e-10)
    assert torch.allclose(high[0], wave[9] + wave[12] + wave[16], atol=1e-10)
    assert abs(low.mean().item()) < 1e-12 and abs(high.mean().item()) < 1e-12  # DC removed
    assert torch.allclose(low + high + x.mean(), x.unsqueeze(0), atol=1e-10)


@pytest.mark.parametrize("dim", [10, 25, 64])
def test_fd_default_split_is_floor_quarter(dim):
    from cmkd_bench.losses import low_band_cut

    assert low_band_cut(dim, 0.5) == dim // 4


def test_fd_signed_log_and_normalisation():
    from cmkd_bench.losses import scale_normalise, signed_log

    x = torch.tensor([[-3.0, 0.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(signed_log(x), torch.tensor([[-math.log(4.0), 0.0, math.log(5.0)]], dtype=torch.float64))
    assert torch.allclose(scale_normalise(x), x / 5.0, rtol=0, atol=1e-15)
    assert torch.equal(scale_normalise(torch.zeros(1, 3)), torch.zeros(1, 3))  # norm clamped at eps, no NaN


def reference_fd(method, s: ModelOutput, t: ModelOutput, labels: torch.Tensor, dim: int, cut: int) -> dict[str, float]:
    """FD-CMKD written out with DFT projection matrices instead of FFTs, on the post-activation feature."""
    low_p, high_p = band_projection(dim, range(1, cut + 1)), band_projection(dim, range(cut + 1, dim // 2 + 1))
    sf, tf = s.feature_post.detach(), t.feature_post.detach()
    bands = {"low": (sf @ low_p.T, tf @ low_p.T), "high": (sf @ high_p.T, tf @ high_p.T)}
    out = {"ce": cross_entropy(s.logits, labels).item()}
    for name, (sb, tb) in bands.items():
        sn = sb / sb.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-8)
        tn = tb / tb.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-8)
        if name == "high":
            sn, tn = sn.sign() * (1 + sn.abs()).log(), tn.sign() * (1 + tn.abs()).log()
        out[f"align_{name}"] = ((sn - tn) ** 2).mean().item()

        def head(module, x):
            linear = module[1]
            return x.clamp(min=0) @ linear.weight.detach().T + linear.bias.detach()

        out[f"shared_{name}"] = (cross_entropy(head(method.shared[name], sb), labels)
                                 + cross_entropy(head(method.shared[name], tb), labels)).item()
        out[f"task_{name}"] = cross_entropy(head(method.task_heads[name], sb), labels).item()
    return out


def test_fd_loss_terms_match_reference(gen, labels):
    dim = 16
    method = METHODS.build("fd", info(dim), info(dim), spec()).double()
    s, t = output(gen, dim), output(gen, dim)
    losses = method(s, t, {"label": labels})
    expected = reference_fd(method, s, t, labels, dim, cut=4)
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, abs=1e-9), name


def test_fd_gradients_reach_student_and_heads_not_teacher(gen, labels):
    method = METHODS.build("fd", info(12), info(16), spec()).double()
    s, t = output(gen, 12), output(gen, 16)
    sum(method(s, t, {"label": labels}).values()).backward()
    assert t.feature_post.grad is None and t.feature.grad is None and t.logits.grad is None
    assert s.feature_post.grad is not None and s.feature_post.grad.abs().sum() > 0
    assert s.feature.grad is None  # the default feature is the post-activation one
    assert s.logits.grad is not None
    for part in (method.project, method.shared["low"][1], method.shared["high"][1], method.task_heads["low"][1]):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


def test_fd_switches_change_the_terms(gen, labels):
    s, t = output(gen, 16), output(gen, 16)
    batch = {"label": labels}
    no_freq = METHODS.build("fd", info(16), info(16), spec(), freq_split=False).double()(s, t, batch)
    assert set(no_freq) == {"ce", "align_full", "shared_full", "task_full"}
    every_but_dc = band_projection(16, range(1, 9))  # fd's two bands together: all bins but the DC
    full_s, full_t = s.feature_post.detach() @ every_but_dc.T, t.feature_post.detach() @ every_but_dc.T
    assert no_freq["align_full"].item() == pytest.approx(
        ((full_s / full_s.norm(dim=1, keepdim=True) - full_t / full_t.norm(dim=1, keepdim=True)) ** 2).mean().item(),
        abs=1e-9)
    no_heads = METHODS.build("fd", info(16), info(16), spec(), shared_heads=False, w_task=0.0).double()(s, t, batch)
    assert set(no_heads) == {"ce", "align_low", "align_high"}

    plain = METHODS.build("fd", info(16), info(16), spec(), log_high=False, scale_norm=False, shared_heads=False,
                          w_task=0.0, w_high=0.5).double()
    high_p = band_projection(16, range(5, 9))
    expected = 0.5 * ((s.feature_post.detach() @ high_p.T - t.feature_post.detach() @ high_p.T) ** 2).mean()
    assert plain(s, t, batch)["align_high"].item() == pytest.approx(expected.item(), abs=1e-9)


def test_fd_alias_and_bad_split():
    assert METHODS.get("fd-cmkd").name == "fd"
    with pytest.raises(ValueError):
        METHODS.build("fd", info(16), info(16), spec(), split=1.5)
