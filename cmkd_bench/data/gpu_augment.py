"""Frame augmentation of whole batches on the batch's device: crop, resize, flip, normalise.

The per-file path (datasets/_av_common.py) draws, per sample, a RandomResizedCrop box on the stored
JPEG frame and a horizontal flip from the sample's `SampleSeed`, then crops and resizes with PIL
(bilinear, which filters over the source footprint when it shrinks). The packed path draws the very
same box and flip (the same rng calls, in the same order, on the JPEG's width and height) while it
gathers the batch, maps the box onto the packed S x S frame (`stored_box`) and applies it here:
per sample a crop and `F.interpolate(mode="bilinear", antialias=True)` (torch's counterpart of
PIL's filter), then one batched flip and normalisation, all on the frames' device.

Deliberate differences from the per-file path, each small: the box is rounded to whole pixels of
the packed frame (at most half a packed pixel off), the packed frame was itself resized once from
the JPEG (at prepare time), and on the CPU the resize runs on uint8 (torch's fast path), rounding
to whole levels before the scaling to [0, 1]. tests/test_packed.py checks the values against PIL's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .loading import batch_buffer, batch_buffer_or

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stored_box(box: tuple[float, float, float, float], width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box on a width x height frame, on that frame resized to side x side:
    rounded to whole pixels, at least one pixel wide and high."""
    left, top = round(box[0] * side / width), round(box[1] * side / height)
    right, bottom = round(box[2] * side / width), round(box[3] * side / height)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_resize(frames: Tensor, crops: list[tuple[int, int, int, int]], flips: list[bool], size: int,
                out: Tensor | None = None) -> Tensor:
    """uint8 B x k x S x S x 3 frames (k frames per sample, one box each) -> B x size x size x k x 3.

    crops: per sample (left, top, right, bottom) in pixels of the S x S frame; flips: per sample
    (host values, so nothing waits for the device). uint8 on the CPU (torch's fast channels-last
    uint8 path), float32 elsewhere (antialiasing there needs floats). Into `out` where given (a
    tensor of that shape and dtype), else into a batch buffer.
    """
    b, k = frames.shape[:2]
    source = frames.permute(0, 1, 4, 2, 3)  # B x k x 3 x S x S, channels-last in memory
    if frames.device.type != "cpu":
        source = source.to(torch.float32)
    shape = (b, size, size, k, 3)
    hwc = batch_buffer_or(out, shape, source.dtype, frames.device)
    for j, ((left, top, right, bottom), flip) in enumerate(zip(crops, flips)):
        crop = F.interpolate(source[j, :, :, top:bottom, left:right], size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)
        hwc[j] = (crop.flip(-1) if flip else crop).permute(2, 3, 0, 1)
    return hwc


def normalised(hwc: Tensor, normalise: bool = True) -> Tensor:
    """B x H x W x k x 3 pixels (0-255) -> float32 B x 3k x H x W in channels-last memory format (what
    convolutions read fastest), scaled to [0, 1] and ImageNet-normalised (as `media.image_array`).

    x * scale + bias in place, with scale and bias laid out as one sample's H x W x k x 3 values
    (made once per shape): broadcast along the batch only, the innermost loop runs over contiguous
    memory and vectorises, where a per-channel (1 x C x 1 x 1) broadcast on channels-last memory
    makes it three elements long (about 3 x slower on the CPU, same values). On the CPU the batch is a
    `batch_buffer` (mapped in huge pages)."""
    b, height, width, k = hwc.shape[:4]
    shape = (b, height * width * k * 3)
    flat = batch_buffer(shape, torch.float32, hwc.device)
    flat.copy_(hwc.reshape(shape))  # never the caller's tensor, even a float one
    scale, bias = _normaliser(flat.device, (height, width, k), normalise)
    torch.addcmul(bias, flat, scale, out=flat)
    return flat.view(b, height, width, k, 3).permute(0, 3, 4, 1, 2).reshape(b, 3 * k, height, width)  # a view


def crop_resize_flip(frames: Tensor, crops: list[tuple[int, int, int, int]], flips: list[bool], size: int,
                     normalise: bool = True) -> Tensor:
    """`crop_resize`, then `normalised`: uint8 B x k x S x S x 3 -> float B x 3k x size x size."""
    return normalised(crop_resize(frames, crops, flips, size), normalise)


_NORMALISERS: dict[tuple[str, tuple[int, int, int], bool], tuple[Tensor, Tensor]] = {}


def _normaliser(device: torch.device, shape: tuple[int, int, int], normalise: bool) -> tuple[Tensor, Tensor]:
    """(scale, bias) of one H x W x k x 3 sample, flattened, on `device`, made once per shape:
    x / 255, then (x - mean) / std if `normalise`."""
    key = (str(device), shape, normalise)
    if key not in _NORMALISERS:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if not normalise:
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        pattern = (*shape, 3)
        scale = (1 / (255.0 * std)).expand(pattern).reshape(-1).contiguous()
        bias = (-mean / std).expand(pattern).reshape(-1).contiguous()
        _NORMALISERS[key] = scale.to(device), bias.to(device)
    return _NORMALISERS[key]
