"""FD-CMKD (Liu et al., AAAI 2026): distilling cross-modal knowledge via feature disentanglement.

Checked against the reference training code zxn0710/re-FD-CMKD-main, a public reproduction of
the paper's CREMA-D code (its README gives the reproduction steps; the authors' repository named
in the paper, Johumliu/FD-CMKD, was not available to read): main_fd_cmkd.py (train_epoch: the
loss), utils/utils.py (FDFilter, norm_feat, log, Classifier), models/basic_model.py and
models/backbone.py (which feature).
What it computes, for each direction (teacher of one modality, student of the other):

- feature: the pooled last-stage feature of ResNet-18, D = 512. basic_model.py pools what the
  backbone returns as `pre_out`, but backbone.py's BasicBlock sets `pre_out = out` and then
  applies an in-place ReLU (nn.ReLU(inplace=True)) to that same tensor, so the feature the
  reference actually distils is the post-activation one, the classifier's input. That is our
  default, `feature="post"`; `feature="pre"` gives the pre-activation feature the name suggests.
- bands (FDFilter): rfft along the feature dimension (257 bins for 512), low = bins 1..128,
  high = bins 129..256 (Nyquist included), DC dropped, each back in R^512 by irfft. Here the
  low band is bins 1..cut with cut = int(split * (D // 2)): split = 0.5 gives 128 of 256 at
  D = 512, and scales with other widths (the reference hard-codes 512).
- scale normalisation (norm_feat): x / max(||x||_2, 1e-8) per sample.
- alignment: low = MSE(norm(s_low), norm(t_low)); high = MSE(slog(norm(s_high)), slog(norm(t_high)))
  with slog(x) = sign(x) log(1 + |x|) (utils.log); nn.MSELoss, the mean over B x D.
- shared classifiers (cls_align_*: ReLU -> Linear): one per band, trained with CE on the
  student's band and on the teacher's band (no gradient reaches the teacher), before
  normalisation; task heads (cls_task_*) on the student's bands; the student's own CE.
- weights: every term 1 (loss_kd + loss_align + loss_task summed), so the defaults w_ce = w_low =
  w_high = w_shared = w_task = 1.

Deliberate differences: the reference trains both directions at once in one summed loss; no
parameter is shared between the halves, so that is two independent single-direction problems,
and one direction is one run here. The reference keeps, per student, the checkpoint whose best
of three heads (main, low, high band) scores highest on the test split; here the student's main
head alone is evaluated, selected on validation like every other method. When the student's
width differs from the teacher's, a learned linear map projects it first (the reference pairs
two 512-d ResNet-18s and needs none). irfft is given n = D, so odd widths work.

Search space (tuning, protocol v2): w_low x w_high, each in {0.01, 0.1, 1, 10}, the reference's
1 / 1 included: each weight spans three decades and reaches 1/100 of its default, where the
alignment is negligible beside CE (the aligned vectors have unit norm, so each MSE is at most
4 / D). The tuner draws 8 of the 16 points, the defaults always among them.

Without the split (`freq_split=False`, the `fd-no-freq` ablation) the one aligned band is the
whole feature less its DC component, i.e. the feature minus its mean over dim 1 (= the sum of
fd's two bands, rfft bins 1..D//2), aligned with MSE at w_low: the ablation removes the split
and nothing else, since fd's bands never carry the DC either.

Other band bases: `use_band_bases(low, high)` replaces the DFT split by orthogonal projections
onto two given orthonormal bases (cmkd_bench.losses.subspace_bands). `fd-random-split`
(methods/fd_random_split.py, a control the reference does not have) uses it; it is a method
that derives from this one through the registry, so fd's hyper-parameters, and its run ids,
stay as they were.

Segmentation (the paper's NYU-Depth V2 RGB <-> depth setting; the reference has no code for it):
the features are dense maps (default `seg_map="decoder"`, the map the segmentation head reads;
any stage reference works; `feature` is not used). The channel vector at each spatial position
plays the role of the classification feature: the frequency split runs along the channel
dimension per position, scale normalisation divides each position's band vector by its L2 norm,
and low-band MSE / high-band logMSE average over all positions. The shared classifiers are not
used, as in the paper's segmentation experiments, and the band task heads (classification heads
too) go with them, so `w_shared`, `w_task` and `shared_heads` have no effect there. A 1x1
convolution projects the student's channels to the teacher's when they differ, and the
student's map is resized bilinearly to the teacher's size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_bench.losses import (at_least_float32, frequency_bands, low_band_cut, resized_like, scale_normalise,
                               signed_log, subspace_bands)
from cmkd_bench.method import Method
from cmkd_bench.registry import METHODS


FEATURES = {"post": "feature_post", "pre": "feature"}


def band_head(dim: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Linear(dim, num_classes))


@METHODS.register("fd", aliases=("fd-cmkd",), tasks=("classification", "segmentation"),
                  description="frequency-decoupled CMKD: strong low-band MSE, weak high-band logMSE, shared heads",
                  reference="Liu et al. Distilling Cross-Modal Knowledge via Feature Disentanglement. AAAI 2026",
                  search_space={"w_low": [0.01, 0.1, 1.0, 10.0], "w_high": [0.01, 0.1, 1.0, 10.0]},
                  loss_weights=("w_low", "w_high"))
class FDCMKD(Method):
    def __init__(self, student, teacher, spec, split: float = 0.5, w_ce: float = 1.0, w_low: float = 1.0,
                 w_high: float = 1.0, w_shared: float = 1.0, w_task: float = 1.0, freq_split: bool = True,
                 scale_norm: bool = True, log_high: bool = True, shared_heads: bool = True, eps: float = 1e-8,
                 seg_map: str = "decoder", feature: str = "post"):
        super().__init__(student, teacher, spec)
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
        self.attr = FEATURES[feature]
        self.dense = spec.task == "segmentation"
        dim = self._dense_maps(student, teacher, seg_map) if self.dense else teacher.feature_dim
        if not 0 < split < 1:
            raise ValueError(f"split must be in (0, 1), got {split}")
        if freq_split and not 1 <= low_band_cut(dim, split) < dim // 2:
            raise ValueError(f"feature dimension {dim} is too small to split at {split}")
        self.cut = low_band_cut(dim, split)
        self.dim = dim
        self.register_buffer("low_basis", None, persistent=False)  # set by use_band_bases: projections, not the DFT
        self.register_buffer("high_basis", None, persistent=False)
        self.weights = {"ce": w_ce, "low": w_low, "high": w_high, "full": w_low, "shared": w_shared, "task": w_task}
        self.freq_split, self.scale_norm, self.log_high, self.eps = freq_split, scale_norm, log_high, eps
        bands = ("low", "high") if freq_split else ("full",)
        if not self.dense:
            self.project = nn.Linear(student.feature_dim, dim) if student.feature_dim != dim else nn.Identity()
        with_heads = not self.dense  # classification only (see the module docstring)
        self.shared = nn.ModuleDict({b: band_head(dim, spec.num_classes) for b in bands}) if shared_heads and with_heads else None
        self.task_heads = nn.ModuleDict({b: band_head(dim, spec.num_classes) for b in bands}) if w_task and with_heads else None

    def _dense_maps(self, student, teacher, seg_map: str) -> int:
        """Resolve the map on both models, build the channel projection; returns the teacher's channels."""
        self.s_map, self.t_map = student.stage(seg_map), teacher.stage(seg_map)
        s_shape, t_shape = student.stage_shapes[self.s_map], teacher.stage_shapes[self.t_map]
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError(f"fd on segmentation needs C x H x W maps; got {self.s_map} {s_shape} and {self.t_map} {t_shape}")
        self.project = nn.Conv2d(s_shape[0], t_shape[0], 1) if s_shape[0] != t_shape[0] else nn.Identity()
        return t_shape[0]

    def features(self, student, teacher) -> tuple[Tensor, Tensor]:
        """The student's (projected) and the teacher's (detached) feature: vectors, or maps of one size."""
        if not self.dense:
            return self.project(getattr(student, self.attr)), getattr(teacher, self.attr).detach()
        t = teacher.stages[self.t_map].detach()
        return resized_like(self.project(student.stages[self.s_map]), t), t

    def bands(self, feature: Tensor) -> dict[str, Tensor]:
        """Split along dim 1: the feature dimension of vectors, the channels of maps (per position)."""
        if not self.freq_split:  # every frequency but the DC, which fd's bands leave out too
            feature = at_least_float32(feature)
            return {"full": feature - feature.mean(dim=1, keepdim=True)}
        if self.low_basis is not None:
            low, high = subspace_bands(feature, self.low_basis, self.high_basis, dim=1)
        else:
            low, high = frequency_bands(feature, self.cut, dim=1)
        return {"low": low, "high": high}

    def use_band_bases(self, low_basis: Tensor, high_basis: Tensor) -> None:
        """Split by orthogonal projection onto these orthonormal bases (D x d_low, D x d_high) instead
        of the DFT. They are fixed buffers, not trained and not saved (whoever sets them rebuilds them)."""
        if not self.freq_split:
            raise ValueError("use_band_bases needs freq_split=True (there is no split to replace)")
        if low_basis.shape[0] != self.dim or high_basis.shape[0] != self.dim:
            raise ValueError(f"band bases must have {self.dim} rows, got {low_basis.shape[0]} and {high_basis.shape[0]}")
        self.low_basis, self.high_basis = low_basis.float(), high_basis.float()

    def alignment(self, band: str, s: Tensor, t: Tensor) -> Tensor:
        if self.scale_norm:
            s, t = scale_normalise(s, self.eps, dim=1), scale_normalise(t, self.eps, dim=1)
        if band == "high" and self.log_high:
            s, t = signed_log(s), signed_log(t)
        return F.mse_loss(s, t)

    def teacher_reads(self):
        return frozenset({f"stage:{self.t_map}" if self.dense else self.attr})

    def forward(self, student, teacher, batch):
        labels = batch["label"]
        s_feature, t_feature = self.features(student, teacher)
        s_bands, t_bands = self.bands(s_feature), self.bands(t_feature)
        losses = {"ce": self.weights["ce"] * self.task_loss(student.logits, labels)}
        for band, s in s_bands.items():
            t = t_bands[band]
            if self.weights[band]:
                losses[f"align_{band}"] = self.weights[band] * self.alignment(band, s, t)
            if self.shared is not None and self.weights["shared"]:
                head = self.shared[band]
                losses[f"shared_{band}"] = self.weights["shared"] * (
                    self.task_loss(head(s), labels) + self.task_loss(head(t), labels))
            if self.task_heads is not None:
                losses[f"task_{band}"] = self.weights["task"] * self.task_loss(self.task_heads[band](s), labels)
        return losses
