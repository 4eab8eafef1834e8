"""freq-similarity's maths against independent numpy formulas: both DC conventions, the DC share,
the channel-permutation control and the random orthonormal split (cmkd_bench.reporting.freqsim)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd_bench.losses import fourier_band_dims, random_subspace_bases, subspace_bands
from cmkd_bench.reporting.freqsim import (band_cosines, channel_permutation, dc_share, random_split_bands,
                                          similarity_rows)


def features(seed: int, n: int = 6, dim: int = 12) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(n, dim)) + rng.uniform(0, 2, size=(n, 1)))  # with a DC


def numpy_bands(x: np.ndarray, low_bins: range) -> tuple[np.ndarray, np.ndarray]:
    """The reference notebook's / loss's FDFilter in numpy: keep bins `low_bins`, high = the bins above."""
    spectrum = np.fft.rfft(x, axis=1)
    low_mask = np.zeros(spectrum.shape[1])
    low_mask[list(low_bins)] = 1
    high_mask = np.zeros(spectrum.shape[1])
    high_mask[low_bins.stop:] = 1
    return (np.fft.irfft(spectrum * low_mask, n=x.shape[1], axis=1),
            np.fft.irfft(spectrum * high_mask, n=x.shape[1], axis=1))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("dc, low_bins", [("include", range(0, 4)), ("exclude", range(1, 4))])
def test_band_cosines_match_the_reference_filters_in_numpy(dc: str, low_bins: range) -> None:
    a, b, cut = features(0), features(1), 3  # D = 12: bins 0..6, K = 3
    got = band_cosines(a, b, cut, dc)
    (low_a, high_a), (low_b, high_b) = numpy_bands(a.numpy(), low_bins), numpy_bands(b.numpy(), low_bins)
    np.testing.assert_allclose(got["low"].numpy(), cosine(low_a, low_b), atol=1e-12)
    np.testing.assert_allclose(got["high"].numpy(), cosine(high_a, high_b), atol=1e-12)
    np.testing.assert_allclose(got["raw"].numpy(), cosine(a.numpy(), b.numpy()), atol=1e-12)


def test_the_dc_convention_changes_only_the_low_band_and_a_shared_mean_dominates_it() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=generator, dtype=torch.float64) + 5.0  # independent, large positive mean
    b = torch.randn(200, 16, generator=generator, dtype=torch.float64) + 5.0
    kept, dropped = band_cosines(a, b, 4, "include"), band_cosines(a, b, 4, "exclude")
    assert torch.equal(kept["high"], dropped["high"]) and torch.equal(kept["raw"], dropped["raw"])
    assert kept["low"].mean() > 0.9 and abs(dropped["low"].mean()) < 0.1  # the DC alone makes the "premise"


def test_dc_share_is_the_dc_bins_energy_share() -> None:
    x = features(2)
    spectrum = np.fft.rfft(x.numpy(), axis=1)
    # Parseval for rfft of even D: |X0|^2 / (|X0|^2 + 2 sum_{1..D/2-1} |Xk|^2 + |X_{D/2}|^2)
    power = np.abs(spectrum) ** 2
    total = power[:, 0] + 2 * power[:, 1:-1].sum(1) + power[:, -1]
    np.testing.assert_allclose(dc_share(x).numpy(), power[:, 0] / total, atol=1e-12)
    assert dc_share(torch.zeros(1, 4)).item() == 0.0


def test_the_permutation_control_permutes_the_second_models_channels_only() -> None:
    a, b, cut = features(3), features(4), 3
    perm = channel_permutation(12, seed=5)
    assert sorted(perm.tolist()) == list(range(12)) and perm.tolist() != list(range(12))
    rows = {(r.control, r.convention, r.band): r.mean for r in similarity_rows(a, b, cut, seed=5)}
    shuffled = b.numpy()[:, perm.numpy()]
    for dc, bins in (("include", range(0, 4)), ("exclude", range(1, 4))):
        (low_a, high_a), (low_b, high_b) = numpy_bands(a.numpy(), bins), numpy_bands(shuffled, bins)
        assert rows[("permuted", dc, "low")] == pytest.approx(cosine(low_a, low_b).mean(), abs=1e-12)
        assert rows[("permuted", dc, "high")] == pytest.approx(cosine(high_a, high_b).mean(), abs=1e-12)
    assert rows[("permuted", "include", "raw")] == pytest.approx(cosine(a.numpy(), shuffled).mean(), abs=1e-12)
    # What a permutation cannot change: each feature's norm, its mean (the DC bin), hence its DC share.
    assert torch.allclose(dc_share(b[:, perm]), dc_share(b)) and torch.allclose(b[:, perm].norm(dim=1), b.norm(dim=1))


def test_the_random_split_is_orthonormal_of_the_fourier_bands_sizes_and_sums_to_the_mean_free_feature() -> None:
    dim, cut = 12, 3
    low_dim, high_dim = fourier_band_dims(dim, cut)
    assert (low_dim, high_dim) == (6, 5)  # bins 1..3: 3 complex; 4, 5 complex + Nyquist 6: 5 real dims
    spectrum_dims = np.linalg.matrix_rank(np.stack(numpy_bands(np.eye(dim), range(1, cut + 1))[0]))
    assert spectrum_dims == low_dim  # the Fourier low band's projection has that rank
    low_basis, high_basis = random_subspace_bases(dim, low_dim, seed=0)
    basis = torch.cat([low_basis, high_basis], dim=1).numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(dim - 1), atol=1e-12)
    np.testing.assert_allclose(basis.T @ np.ones(dim), 0, atol=1e-12)
    x = features(6)
    low, high = subspace_bands(x, low_basis, high_basis)
    np.testing.assert_allclose((low + high).numpy(), (x - x.mean(dim=1, keepdim=True)).numpy(), atol=1e-12)
    np.testing.assert_allclose(low.numpy(), x.numpy() @ basis[:, :low_dim] @ basis[:, :low_dim].T, atol=1e-12)
    with_dc, _ = random_split_bands(x, cut, "include", seed=0)
    np.testing.assert_allclose((with_dc - low).numpy(), x.mean(dim=1, keepdim=True).expand_as(x).numpy(), atol=1e-12)
    assert torch.equal(random_subspace_bases(dim, low_dim, seed=0)[0], low_basis)  # fixed by its seed
    assert not torch.allclose(random_subspace_bases(dim, low_dim, seed=1)[0], low_basis)


def test_subspace_bands_work_along_the_channels_of_maps() -> None:
    low_basis, high_basis = random_subspace_bases(8, 4, seed=0)
    maps = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    low, high = subspace_bands(maps, low_basis, high_basis, dim=1)
    np.testing.assert_allclose((low + high).numpy(), (maps - maps.mean(dim=1, keepdim=True)).numpy(), atol=1e-12)
