"""Paired RGB-D augmentation for segmentation (albumentations), shared by synth-rgbd and nyuv2.

Three pipelines, each seeded per sample from the seed given to `batches` (never global state):
- geometric, identical for RGB, depth and labels (`additional_targets`): horizontal flip, random
  up-scaling (1.0-1.4) and a random crop back to the input's size, as ESANet (Seichter et al.,
  ICRA 2021) does for NYUv2. Up-scaling only, so no padding is ever invented. Depth and labels
  are registered as masks, so they are resized nearest-neighbour (ESANet resizes depth that way
  too: it keeps missing-depth pixels crisp instead of blending them into valid ones);
- photometric, RGB only: brightness / saturation / hue jitter (ESANet's random HSV, +-10%);
- depth noise, depth only: the Kinect's axial noise sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 m
  (Nguyen, Izadi, Lovell, 3DIMPVT 2012) and 1% of pixels dropped to 0 (missing), as raw
  sensors lose pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

RGB_JITTER = 0.1  # ESANet: H, S and V each scaled by U(0.9, 1.1)
SCALE = (1.0, 1.4)  # ESANet's --aug_scale_min / --aug_scale_max
DEPTH_DROPOUT = 0.01


def kinect_sigma(depth: np.ndarray) -> np.ndarray:
    """Axial noise std (m) of a Kinect v1 at depth z (m), Nguyen et al. 2012."""
    return 0.0012 + 0.0019 * (depth - 0.4) ** 2


@lru_cache(maxsize=None)
def _depth_noise_class():
    import albumentations as A

    class DepthNoise(A.ImageOnlyTransform):
        """Depth-dependent Gaussian noise and randomly missing pixels (0); missing stays missing."""

        def __init__(self, dropout: float = DEPTH_DROPOUT, p: float = 1.0) -> None:
            super().__init__(p=p)
            self.dropout = dropout

        def get_params_dependent_on_data(self, params, data):
            shape = data["image"].shape
            return {"noise": self.random_generator.standard_normal(shape).astype(np.float32),
                    "drop": self.random_generator.random(shape) < self.dropout}

        def apply(self, img, noise, drop, **params):
            noisy = img + noise * kinect_sigma(img)
            return np.where(drop | (img <= 0), 0.0, np.maximum(noisy, 0.0)).astype(np.float32)

        def get_transform_init_args_names(self):
            return ("dropout",)

    return DepthNoise


@lru_cache(maxsize=8)
def _pipelines(height: int, width: int):
    import albumentations as A

    geometric = A.Compose([A.HorizontalFlip(p=0.5),
                           A.RandomScale(scale_limit=(SCALE[0] - 1, SCALE[1] - 1), p=1.0),
                           A.RandomCrop(height, width)],
                          additional_targets={"depth": "mask"})
    photometric = A.Compose([A.ColorJitter(brightness=RGB_JITTER, contrast=0.0, saturation=RGB_JITTER,
                                           hue=RGB_JITTER / 2, p=1.0)])
    depth_noise = A.Compose([_depth_noise_class()()])
    return geometric, photometric, depth_noise


def augment_arrays(rgb: np.ndarray, depth: np.ndarray, label: np.ndarray, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB H x W x 3 float32 in [0, 1], depth H x W float32 in metres (0 = missing), label H x W int."""
    geometric, photometric, depth_noise = _pipelines(*label.shape)
    geometric.set_random_seed(seed % 2**32)
    out = geometric(image=rgb, depth=depth, mask=label.astype(np.int32))
    photometric.set_random_seed((seed + 1) % 2**32)
    depth_noise.set_random_seed((seed + 2) % 2**32)
    rgb = np.clip(photometric(image=out["image"])["image"], 0.0, 1.0)
    return rgb, depth_noise(image=out["depth"])["image"], out["mask"]


class RGBDAugment:
    """A `SampleTransform` for in-memory data: C x H x W tensors, RGB in [0, 1], depth standardised
    as (z - depth_mean) / depth_std with missing pixels at exactly 0 (converted to metres and back
    around the augmentation, since the noise model is in metres)."""

    def __init__(self, rgb: str = "rgb", depth: str = "depth", depth_mean: float = 0.0, depth_std: float = 1.0) -> None:
        self.rgb, self.depth, self.depth_mean, self.depth_std = rgb, depth, depth_mean, depth_std

    def __call__(self, sample: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
        rgb = sample[self.rgb].permute(1, 2, 0).contiguous().numpy()
        standard = sample[self.depth][0].numpy()
        metres = np.where(standard == 0, 0.0, standard * self.depth_std + self.depth_mean).astype(np.float32)
        rgb, metres, label = augment_arrays(rgb, metres, sample["label"].numpy(), seed)
        standard = np.where(metres == 0, 0.0, (metres - self.depth_mean) / self.depth_std).astype(np.float32)
        return {**sample, self.rgb: torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
                self.depth: torch.from_numpy(standard)[None],
                "label": torch.from_numpy(np.ascontiguousarray(label)).to(sample["label"].dtype)}
