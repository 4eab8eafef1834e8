"""fd-random-split: the DFT split of fd replaced by a fixed random orthonormal one of the same sizes.
Golden values against an independent formula (numpy projections, the reference's loss terms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd_bench.catalog import load_all
from cmkd_bench.data.spec import DatasetSpec, Modality, Recipe
from cmkd_bench.models.features import ModelInfo, ModelOutput
from cmkd_bench.registry import METHODS

load_all()
B, C, D = 6, 5, 64
LABELS = torch.tensor([0, 1, 2, 3, 4, 1])


def spec() -> DatasetSpec:
    return DatasetSpec(name="golden", task="classification", num_classes=C,
                       modalities={"a": Modality((4,), "mlp"), "b": Modality((4,), "mlp")},
                       teacher_modality="a", student_modality="b", recipe=Recipe(),
                       split_sizes={"train": B, "val": B, "test": B})


def info(dim: int) -> ModelInfo:
    return ModelInfo(name="m", num_classes=C, feature_dim=dim, stage_shapes={"s0": (dim,)})


def output(seed: int, dim: int) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) + mean).requires_grad_(True)

    return ModelOutput(logits=leaf(B, C), feature=leaf(B, dim), feature_post=leaf(B, dim, mean=1.0))


def build(**hparams):
    torch.manual_seed(0)
    return METHODS.build("fd-random-split", info(D), info(D), spec(), **hparams).double()


def norm_feat(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def ce(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(1, keepdims=True)
    return float((np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(labels)), labels]).mean())


def head(module, x: np.ndarray) -> np.ndarray:
    linear = module[1]  # ReLU -> Linear, the reference's Classifier
    return np.maximum(x, 0) @ linear.weight.detach().numpy().T + linear.bias.detach().numpy()


def test_the_split_is_orthonormal_of_fds_band_sizes_and_sums_to_the_mean_free_feature():
    method = build()
    low, high = method.low_basis.numpy(), method.high_basis.numpy()
    assert method.cut == 16 and low.shape == (D, 32) and high.shape == (D, 31)  # fd's 2 x 16 and 64 - 1 - 32
    basis = np.concatenate([low, high], axis=1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(D - 1), atol=1e-6)  # stored in float32
    np.testing.assert_allclose(basis.T @ np.ones(D), 0, atol=1e-5)
    x = output(1, D).feature_post.detach()
    bands = method.bands(x)
    np.testing.assert_allclose((bands["low"] + bands["high"]).numpy(), (x - x.mean(1, keepdim=True)).numpy(), atol=1e-5)
    assert not torch.allclose(bands["low"], METHODS.build("fd", info(D), info(D), spec()).double().bands(x)["low"])
    again = build()
    assert torch.equal(again.low_basis, method.low_basis)  # fixed: the same basis in every run
    assert "low_basis" not in method.state_dict()  # rebuilt from basis_seed, not saved


def test_losses_equal_fds_formula_on_the_projected_parts():
    method = build()
    s, t = output(11, D), output(12, D)
    losses = method(s, t, {"label": LABELS})
    low, high = method.low_basis.numpy(), method.high_basis.numpy()
    s_feat, t_feat, y = s.feature_post.detach().numpy(), t.feature_post.detach().numpy(), LABELS.numpy()
    parts = {name: {"low": f @ low @ low.T, "high": f @ high @ high.T} for name, f in (("s", s_feat), ("t", t_feat))}
    expected = {
        "ce": ce(s.logits.detach().numpy(), y),
        "align_low": float(((norm_feat(parts["s"]["low"]) - norm_feat(parts["t"]["low"])) ** 2).mean()),
        "align_high": float(((slog(norm_feat(parts["s"]["high"])) - slog(norm_feat(parts["t"]["high"]))) ** 2).mean()),
    }
    for band in ("low", "high"):
        expected[f"shared_{band}"] = (ce(head(method.shared[band], parts["s"][band]), y)
                                      + ce(head(method.shared[band], parts["t"][band]), y))
        expected[f"task_{band}"] = ce(head(method.task_heads[band], parts["s"][band]), y)
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5, abs=1e-7), name
    sum(losses.values()).backward()
    assert s.feature_post.grad is not None and s.feature_post.grad.abs().sum() > 0
    assert t.feature_post.grad is None and t.logits.grad is None


def test_it_adds_only_the_basis_seed_and_leaves_fd_as_it_was():
    entry, fd = METHODS.get("fd-random-split"), METHODS.get("fd")
    assert entry.hparams == {**fd.hparams, "basis_seed": 0} and entry.meta["search_space"] == fd.meta["search_space"]
    assert "basis_seed" not in fd.hparams  # fd's hyper-parameters, hence its run ids, are unchanged
    assert METHODS.build("fd", info(D), info(D), spec()).low_basis is None  # fd splits with the DFT
    other = METHODS.build("fd-random-split", info(D), info(D), spec(), basis_seed=1, w_low=3.0)
    assert other.weights["low"] == 3.0 and not torch.allclose(other.low_basis, build().low_basis.float())
    with pytest.raises(ValueError, match="rows"):
        METHODS.build("fd", info(D), info(D), spec()).use_band_bases(torch.eye(8), torch.eye(8))
