"""The maths of `cmkd-bench analyze freq-similarity`: band cosines under two DC conventions, the DC
share of each feature's energy, and two controls. Pure tensor functions; cmkd_bench.reporting.analysis
obtains the features and reports.

What the paper's figure measures, as the reference code has it (zxn0710/re-FD-CMKD-main, read
for this module): "Cross-Modal Similarity Analysis.ipynb" loads the two unimodal ResNet-18
teachers, takes the first output of AClassifier / VClassifier (models/basic_model.py: the last
block's `pre_out`, average-pooled; for video also over frames), splits it with the notebook's
own FDFilter and reports the mean over test samples of F.cosine_similarity per sample: raw, low,
high. No normalisation (a cosine needs none).

- which feature: models/backbone.py's BasicBlock sets `pre_out = out` and then applies
  nn.ReLU(inplace=True) to that same tensor, so `pre_out` is the post-activation map: the
  notebook's feature is the pooled post-activation feature (ours: `feature_post`), the same one
  fd distils by default. `feature="pre"` takes the pooled block output before the final ReLU.
- bins: the notebook's FDFilter keeps rfft bins [:129] (0..128: the DC bin, the mean over
  channels, INCLUDED) in its low band and [129:] in its high band; the training code's FDFilter
  (utils/utils.py, used by main_fd_cmkd.py) keeps bins [1:129] (DC dropped) and [129:].
  `dc="include"` is the notebook's convention (low = bins 0..K), `dc="exclude"` the training
  loss's (low = bins 1..K); K = int(split x D // 2), 128 at D = 512 and split 0.5, as in fd.
  The high band and the raw feature are the same in both.

DC share: the fraction of a feature's energy in its DC bin, D mean(x)^2 / ||x||^2 per sample (a
post-ReLU feature, all entries >= 0, has a large one). With the DC kept, two features of large
DC share have a high low-band cosine whatever their channels carry.

Controls (each answers "is it channel-frequency structure?"):
- `permuted`: the second model's channels in a fixed, seeded random order. A network with
  permuted channels (and the next layer's weights permuted alike) computes the same function, so
  this is an equally valid teacher; any channel-by-channel correspondence between the two
  models is gone, and what survives is what does not depend on channel order (the DC bin and
  the norms are permutation-invariant).
- `random-split`: the Fourier bands replaced by a seeded random orthonormal split of the
  mean-free subspace into subspaces of the Fourier bands' real dimensions (2K and D - 1 - 2K,
  cmkd_bench.losses.fourier_band_dims); with `dc="include"` the DC component joins the low part
  as it joins the Fourier low band. Same basis for both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import fourier_band_dims, frequency_bands, random_subspace_bases, subspace_bands

BANDS = ("raw", "low", "high")
CONVENTIONS = {"include": "notebook convention (DC kept, bins 0..K)",
               "exclude": "training-loss convention (bins 1..K)"}
CONTROLS = {"none": "Fourier split", "permuted": "one model's channels permuted",
            "random-split": "random orthonormal split"}


@dataclass
class BandRow:
    control: str  # "none" | "permuted" | "random-split"
    convention: str  # "include" | "exclude"
    band: str  # "raw" | "low" | "high"
    mean: float
    std: float


def dc_component(x: Tensor) -> Tensor:
    """The DC bin back in R^D: each row's mean, repeated (rows are samples)."""
    return x.mean(dim=1, keepdim=True).expand_as(x)


def dc_share(x: Tensor) -> Tensor:
    """Per sample, the share of ||x||^2 in the DC bin: D mean(x)^2 / ||x||^2 (0 for a zero row)."""
    x = x.double()
    energy = (x * x).sum(dim=1)
    return torch.where(energy > 0, x.shape[1] * x.mean(dim=1) ** 2 / energy.clamp(min=1e-300), torch.zeros_like(energy))


def fourier_bands(x: Tensor, cut: int, dc: str) -> tuple[Tensor, Tensor]:
    """fd's bands (bins 1..cut, cut+1..D//2); with dc="include" the low band keeps the DC bin."""
    low, high = frequency_bands(x, cut, dim=1)
    return (low + dc_component(x), high) if dc == "include" else (low, high)


def random_split_bands(x: Tensor, cut: int, dc: str, seed: int) -> tuple[Tensor, Tensor]:
    """The random-split control: a seeded orthonormal split of the same real dimensions as fd's bands."""
    low_dim, _ = fourier_band_dims(x.shape[1], cut)
    low_basis, high_basis = random_subspace_bases(x.shape[1], low_dim, seed)
    low, high = subspace_bands(x, low_basis, high_basis, dim=1)
    return (low + dc_component(x), high) if dc == "include" else (low, high)


def channel_permutation(dim: int, seed: int) -> Tensor:
    return torch.randperm(dim, generator=torch.Generator().manual_seed(seed))


def band_cosines(a: Tensor, b: Tensor, cut: int, dc: str, split_fn=None) -> dict[str, Tensor]:
    """Per-sample cosine similarity of paired rows of a and b: raw, low band, high band."""
    a, b = a.double(), b.double()
    split_fn = split_fn or (lambda x: fourier_bands(x, cut, dc))
    (low_a, high_a), (low_b, high_b) = split_fn(a), split_fn(b)
    return {"raw": F.cosine_similarity(a, b, dim=1), "low": F.cosine_similarity(low_a, low_b, dim=1),
            "high": F.cosine_similarity(high_a, high_b, dim=1)}


def similarity_rows(a: Tensor, b: Tensor, cut: int, conventions: tuple[str, ...] = ("include", "exclude"),
                    controls: tuple[str, ...] = tuple(CONTROLS), seed: int = 0) -> list[BandRow]:
    """Mean and std over samples of each band's cosine, for every control and DC convention."""
    rows = []
    for control in controls:
        for dc in conventions:
            if control == "none":
                per_sample = band_cosines(a, b, cut, dc)
            elif control == "permuted":
                per_sample = band_cosines(a, b[:, channel_permutation(b.shape[1], seed)], cut, dc)
            elif control == "random-split":
                per_sample = band_cosines(a, b, cut, dc, lambda x: random_split_bands(x, cut, dc, seed))
            else:
                raise ValueError(f"unknown control {control!r}; controls are {', '.join(CONTROLS)}")
            rows += [BandRow(control, dc, band, float(per_sample[band].mean()), float(per_sample[band].std()))
                     for band in BANDS]
    return rows
