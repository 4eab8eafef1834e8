"""synth-rgbd: an embedded RGB-D semantic segmentation set, generated in memory from a seed.

Each scene is a tilted background plane with a few objects (ellipses or boxes, shape independent
of class) of five classes. Every class has a colour and a depth profile, and each modality leaves
some classes ambiguous, so that neither alone solves the task and a teacher on one modality knows
something the student's modality shows only weakly:

    class    colour   depth profile                      RGB sees      depth sees
    box      red      flat top, raised                   = ball        yes
    ball     red      dome                               = box         yes
    cone     blue     cone / pyramid                     yes           yes
    poster   green    flush with the background          = hole        no (= background)
    hole     green    recessed dome                      = poster      yes

Nuisances that carry no label: background colour field and texture, per-object colour jitter and
stripe texture, a lighting gradient and pixel noise (RGB); background depth and slope, object
heights, Kinect-like depth noise and missing pixels in blobs and at random (depth). RGB is in
[0, 1] (3 x S x S); depth (1 x S x S) is standardised, (z - 3.25 m) / 0.75 m, with missing pixels
at 0; labels are 0 (background) to 5 per pixel.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_bench.data import AugmentedPairs, DatasetSpec, Modality, PairedData, Recipe, TensorPairs
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

CLASS_NAMES = ("background", "box", "ball", "cone", "poster", "hole")
# depth is served standardised, missing pixels at 0 (ESANet's convention for NYUv2): raw metres
# with 0 for missing would make every hole a 3 m edge, far stronger than any object's relief
DEPTH_MEAN, DEPTH_STD = 3.25, 0.75
# base colours (RGB) per class; pairs share one so RGB alone cannot tell them apart
COLOURS = torch.tensor([[0.0, 0.0, 0.0], [0.75, 0.2, 0.15], [0.75, 0.2, 0.15], [0.2, 0.3, 0.8],
                        [0.25, 0.7, 0.3], [0.25, 0.7, 0.3]])


def _smooth(g: torch.Generator, n: int, channels: int, size: int, cells: int) -> Tensor:
    coarse = torch.randn(n, channels, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


# depth offset per class = height x (PLATEAU + DOME x sqrt(1 - r^2) + CONE x (1 - r)) + FLUSH metres
# (negative = towards the camera); r is the normalised radius inside the object, 0 at its centre.
# Index 0 (background) is all zeros.
PLATEAU = torch.tensor([0.0, -1.0, 0.0, 0.0, 0.0, 0.0])
DOME = torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0, 1.0])
CONE = torch.tensor([0.0, 0.0, 0.0, -1.0, 0.0, 0.0])
FLUSH = torch.tensor([0.0, 0.0, 0.0, 0.0, -0.005, 0.0])


def _objects(g: torch.Generator, n: int, size: int, max_objects: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Which object covers each pixel (-1: none; later objects occlude earlier ones), the pixel's
    normalised radius in that object (0 at its centre, 1 at its edge), and per-object draws (N x K)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    count = torch.randint(3, max_objects + 1, (n, 1, 1), generator=g)
    owner = torch.full((n, size, size), -1, dtype=torch.long)
    radius = torch.zeros(n, size, size)
    for k in range(max_objects):
        cx, cy = (_uniform(g, n, -0.8, 0.8).view(-1, 1, 1) for _ in range(2))
        ax, ay = (_uniform(g, n, 0.15, 0.45).view(-1, 1, 1) for _ in range(2))
        dx, dy = ((xs - cx) / ax).abs(), ((ys - cy) / ay).abs()
        is_box = torch.rand(n, 1, 1, generator=g) < 0.5
        r = torch.where(is_box, torch.maximum(dx, dy), torch.sqrt(dx * dx + dy * dy))
        inside = (r < 1) & (k < count)
        owner = torch.where(inside, k, owner)
        radius = torch.where(inside, r, radius)
    draws = {"class": torch.randint(1, len(CLASS_NAMES), (n, max_objects), generator=g),
             "height": 0.25 + 0.35 * torch.rand(n, max_objects, generator=g),
             "angle": math.pi * torch.rand(n, max_objects, generator=g),
             "frequency": 8 + 22 * torch.rand(n, max_objects, generator=g)}
    return owner, radius, draws


def _per_pixel(values: Tensor, owner: Tensor) -> Tensor:
    """N x K per-object values -> N x H x W, read through each pixel's owner (0 where none)."""
    n, size = owner.shape[0], owner.shape[-1]
    picked = values.gather(1, owner.clamp(min=0).view(n, -1)).view(n, size, size)
    return torch.where(owner >= 0, picked, torch.zeros((), dtype=values.dtype))


def _scenes(g: torch.Generator, n: int, size: int, max_objects: int) -> dict[str, Tensor]:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    owner, r, draws = _objects(g, n, size, max_objects)
    label = _per_pixel(draws["class"], owner)
    # depth: a tilted plane, each object's class profile on top of it
    plane = 3.0 + 0.5 * torch.rand(n, 1, 1, generator=g) + 0.15 * (torch.randn(n, 1, 1, generator=g) * xs
                                                                   + torch.randn(n, 1, 1, generator=g) * ys)
    profile = PLATEAU[label] + DOME[label] * torch.sqrt((1 - r * r).clamp(min=0)) + CONE[label] * (1 - r)
    depth = plane + _per_pixel(draws["height"], owner) * profile + FLUSH[label]
    depth = depth + 3 * torch.randn(n, size, size, generator=g) * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
    missing = (_smooth(g, n, 1, size, 6)[:, 0] > 1.6) | (torch.rand(n, size, size, generator=g) < 0.02)
    depth = torch.where(missing, torch.zeros_like(depth), (depth - DEPTH_MEAN) / DEPTH_STD)
    # RGB: a textured background field; objects in their class colour (jittered) with stripes
    background = 0.45 + 0.1 * _smooth(g, n, 3, size, 4) + 0.08 * torch.randn(n, 1, 1, 1, generator=g)
    background = background + 0.05 * torch.sin((6 + 14 * torch.rand(n, 1, 1, 1, generator=g)) * (xs + 0.5 * ys))
    colours = COLOURS[draws["class"]] + 0.08 * torch.randn(n, max_objects, 3, generator=g)
    colour = torch.stack([_per_pixel(colours[..., c], owner) for c in range(3)], dim=1)
    angle, frequency = _per_pixel(draws["angle"], owner), _per_pixel(draws["frequency"], owner)
    texture = 1 + 0.15 * torch.sin(frequency * (xs * angle.cos() + ys * angle.sin()))
    rgb = torch.where((owner >= 0).unsqueeze(1), colour * texture.unsqueeze(1), background)
    light = 0.75 + 0.25 * (torch.randn(n, 1, 1, 1, generator=g) * xs + torch.randn(n, 1, 1, 1, generator=g) * ys).tanh()
    rgb = (rgb * light + 0.04 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return {"rgb": rgb, "depth": depth.unsqueeze(1), "label": label}


@DATASETS.register("synth-rgbd", reads_data_root=False, aliases=("rgbd",), tasks=("segmentation",),
                   description="embedded RGB-D scenes for segmentation; each modality leaves other classes ambiguous")
def synth_rgbd(data_root: Path | None, image_size: int = 48, objects: int = 6, train: int = 400, val: int = 100,
               test: int = 200, data_seed: int = 0, augment: bool = False) -> PairedData:
    """`augment` is off by default: every scene is already a fresh random draw (placement, size,
    colour, lighting, noise), and on 2 CPU cores albumentations would cost more than it adds."""
    if image_size < 16 or objects < 3:
        raise UserError(f"synth-rgbd needs image_size >= 16 and objects >= 3 (got {image_size}, {objects})")
    if min(train, val, test) < 1:
        raise UserError("synth-rgbd needs at least one sample in every split")
    g = torch.Generator().manual_seed(data_seed)
    splits = {split: _scenes(g, n, image_size, objects) for split, n in (("train", train), ("val", val), ("test", test))}
    size = image_size
    spec = DatasetSpec(
        name="synth-rgbd", task="segmentation", num_classes=len(CLASS_NAMES),
        modalities={"rgb": Modality((3, size, size), "small-seg", "RGB image in [0, 1]"),
                    "depth": Modality((1, size, size), "small-seg",
                                      f"depth standardised: (z - {DEPTH_MEAN} m) / {DEPTH_STD} m, 0 = missing")},
        teacher_modality="rgb", student_modality="depth",
        recipe=Recipe(epochs=10, batch_size=16, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                      schedule="poly"),
        split_sizes={"train": train, "val": val, "test": test},
        recipe_source="chosen for synth-rgbd so a teacher + student run takes about a minute on 2 CPU cores "
                      "(poly schedule as in segmentation practice)",
        options={"image_size": image_size, "objects": objects, "train": train, "val": val, "test": test,
                 "data_seed": data_seed, "augment": augment},
    )
    data = TensorPairs(spec, splits)
    if not augment:
        return data
    from cmkd_bench.datasets.rgbd_augment import RGBDAugment

    return AugmentedPairs(data, RGBDAugment("rgb", "depth", depth_mean=DEPTH_MEAN, depth_std=DEPTH_STD))
