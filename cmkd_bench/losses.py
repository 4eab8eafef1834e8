"""Loss helpers shared by methods (methods/) and analyses: no method imports another, none is imported here.

Per-position helpers work along dim 1 (classes) for B x C and B x C x H x W alike, so one formula
serves classification (a sample) and segmentation (a labelled pixel). The FD band split is
FD-CMKD's (methods/fd.py documents it against the reference code); `cmkd-bench analyze
freq-similarity` splits features with the same functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# -- per sample / per pixel -----------------------------------------------------------------------
def valid_positions(labels: Tensor, ignore_index: int) -> Tensor:
    """True at every sample / pixel whose label counts."""
    return labels != ignore_index


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean over the valid positions, without boolean indexing (which would sync the host on CUDA)."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


def safe_labels(labels: Tensor, valid: Tensor) -> Tensor:
    """Ignored labels replaced by class 0, so that gathers stay in range (their terms are masked)."""
    return torch.where(valid, labels, torch.zeros_like(labels))


def kl_per_position(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    """KL(p_t || p_s) summed over classes (dim 1): one value per sample or per pixel."""
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)


def resized_like(x: Tensor, reference: Tensor) -> Tensor:
    """A dense map resized (bilinearly) to the reference's spatial size; vectors pass unchanged."""
    if x.dim() < 3 or x.shape[2:] == reference.shape[2:]:
        return x
    return F.interpolate(x, size=reference.shape[2:], mode="bilinear", align_corners=False)


def head_logits(out) -> Tensor:
    """A `ModelOutput`'s logits at the segmentation head's own resolution, before the model resizes
    them to the input's size (`logits_native`, what dense distillation reads); `logits` when the
    output has none (a classifier, or an output built by hand)."""
    return out.logits_native if getattr(out, "logits_native", None) is not None else out.logits


def non_target(z: Tensor, labels: Tensor) -> Tensor:
    """B x (C-1) [x H x W]: every class but the label, in order (a gather: no host sync, unlike a boolean mask)."""
    others = torch.arange(z.shape[1] - 1, device=z.device).view(1, -1, *[1] * (z.dim() - 2))
    target = labels.unsqueeze(1)
    return z.gather(1, others + (others >= target).long())


# -- FD-CMKD's frequency bands ----------------------------------------------------------------------
def frequency_bands(x: Tensor, cut: int, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Low band (rfft bins 1..cut) and high band (bins cut+1..D//2) of x along dim, each back in R^D."""
    size = x.shape[dim]
    spectrum = torch.fft.rfft(at_least_float32(x), dim=dim)
    bins = torch.arange(spectrum.shape[dim], device=x.device)
    shape = [1] * spectrum.dim()
    shape[dim] = -1
    low_mask = ((bins >= 1) & (bins <= cut)).view(shape)
    high_mask = (bins > cut).view(shape)
    low = torch.fft.irfft(spectrum * low_mask, n=size, dim=dim)
    high = torch.fft.irfft(spectrum * high_mask, n=size, dim=dim)
    return low, high


def at_least_float32(x: Tensor) -> Tensor:
    """FFTs and losses run in float32 under bf16 autocast, and stay float64 in golden tests."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def low_band_cut(size: int, split: float) -> int:
    """Number of non-DC bins in the low band: split x (D // 2); split=0.5 keeps bins 1..floor(D/4)."""
    return int(split * (size // 2))


def scale_normalise(x: Tensor, eps: float = 1e-8, dim: int = -1) -> Tensor:
    """x / max(||x||_2, eps) along dim (the reference's norm_feat)."""
    return x / x.norm(dim=dim, keepdim=True).clamp(min=eps)


def signed_log(x: Tensor) -> Tensor:
    """sign(x) log(1 + |x|) (the reference's utils.log, for the high band's logMSE)."""
    return torch.sign(x) * torch.log1p(x.abs())


# -- random subspace splits (the control for FD-CMKD's Fourier split) ------------------------------
def fourier_band_dims(size: int, cut: int) -> tuple[int, int]:
    """Real dimensions of fd's low band (rfft bins 1..cut) and high band (bins cut+1..D//2).

    Each complex bin spans two real dimensions, except the Nyquist bin of an even D (one); with
    the DC bin (one) they make up R^D, so low + high = D - 1, the mean-free subspace.
    """
    return 2 * cut, size - 1 - 2 * cut


def random_subspace_bases(size: int, low_dim: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed, seeded random orthonormal basis of the mean-free subspace of R^size (float64),
    split into its first `low_dim` columns and the other size - 1 - low_dim: (size x low_dim,
    size x (size - 1 - low_dim)). Every column is orthogonal to the all-ones vector (the DC)."""
    if not 0 <= low_dim <= size - 1:
        raise ValueError(f"low_dim must be in [0, {size - 1}], got {low_dim}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(size, size - 1, generator=generator, dtype=torch.float64)
    gaussian = gaussian - gaussian.mean(dim=0, keepdim=True)  # columns orthogonal to the ones vector
    basis, _ = torch.linalg.qr(gaussian)
    return basis[:, :low_dim].contiguous(), basis[:, low_dim:].contiguous()


def subspace_bands(x: Tensor, low_basis: Tensor, high_basis: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """x's orthogonal projections onto span(low_basis) and span(high_basis) along dim, each in R^D.

    With the bases of `random_subspace_bases` the two parts sum to x minus its mean along dim (the
    DC drops out, as in fd's bands). Runs in float32 at least, outside autocast (a bf16 matmul
    would blur the projection)."""
    x = at_least_float32(x).movedim(dim, -1)
    with torch.autocast(device_type=x.device.type, enabled=False):
        low_basis, high_basis = low_basis.to(x.dtype), high_basis.to(x.dtype)
        low = (x @ low_basis) @ low_basis.T
        high = (x @ high_basis) @ high_basis.T
    return low.movedim(-1, dim), high.movedim(-1, dim)


def standardized(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR
    2024): the Z-score of each sample's logits over the classes (dim 1), (z - mean) / (eps + std)
    with the unbiased std, as `normalize` in sunshangquan/logit-standardization-KD
    (mdistiller/distillers/KD.py and DKD.py there); in at least float32 (bf16 would round the std)."""
    z = z if z.dtype == torch.float64 else z.float()
    return (z - z.mean(dim=1, keepdim=True)) / (eps + z.std(dim=1, keepdim=True))
