"""synth-av: an embedded audio-visual classification set, generated in memory from a seed.

Each sample has a class. Its class evidence lives in two latent codes: a shared code, which both
modalities render, and a modality-specific code per modality, which only that modality renders
(the "modality-general" and "modality-specific" decisive features of the Modality Focusing
Hypothesis). `shared` sets how much of each modality's class evidence is shared. On top come
nuisances that carry no label: a random smooth background and brightness for the visual images;
random noise bursts, a drifting noise floor and time shifts for the audio spectrograms.

The visual modality renders codes as sums of smooth colour blobs at class-independent fixed
places; the audio modality renders codes as harmonic-like frequency bands with temporal
amplitude patterns, on a 1 x F x T log-spectrogram-like image.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from cmkd_bench.data import DatasetSpec, Modality, Recipe, TensorPairs
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS


def _smooth_field(generator: torch.Generator, n: int, channels: int, size: int, cells: int) -> Tensor:
    """Random low-frequency images: coarse noise upsampled bilinearly."""
    coarse = torch.randn(n, channels, cells, cells, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _visual_basis(generator: torch.Generator, codes: int, size: int) -> Tensor:
    """One smooth, coloured blob pattern per latent code: codes x 3 x size x size."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    basis = []
    for _ in range(codes):
        centre = torch.rand(2, generator=generator) * 1.4 - 0.7
        width = 0.25 + 0.35 * torch.rand(1, generator=generator)
        blob = torch.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * width**2))
        freq = 2 + 4 * torch.rand(1, generator=generator)
        angle = math.pi * torch.rand(1, generator=generator)
        stripes = torch.cos(freq * math.pi * (xs * torch.cos(angle) + ys * torch.sin(angle)))
        colour = torch.randn(3, 1, 1, generator=generator)
        basis.append(colour * (blob * (0.6 + 0.4 * stripes)))
    basis = torch.stack(basis)
    return _unit_rms(basis)


def _unit_rms(basis: Tensor) -> Tensor:
    return basis / basis.flatten(1).pow(2).mean(dim=1).sqrt().view(-1, 1, 1, 1)


def _audio_basis(generator: torch.Generator, codes: int, freqs: int, frames: int) -> Tensor:
    """One time-frequency pattern per latent code: a harmonic stack with a temporal envelope."""
    f = torch.arange(freqs).float().view(-1, 1)
    t = torch.arange(frames).float().view(1, -1)
    basis = []
    for _ in range(codes):
        base = 2 + (freqs / 4) * torch.rand(1, generator=generator)
        harmonics = sum(torch.exp(-((f - k * base) ** 2) / 2.0) / k for k in range(1, 4))
        rate = 1 + 3 * torch.rand(1, generator=generator)
        phase = 2 * math.pi * torch.rand(1, generator=generator)
        envelope = 0.5 + 0.5 * torch.cos(2 * math.pi * rate * t / frames + phase)
        basis.append((harmonics * envelope).unsqueeze(0))
    return _unit_rms(torch.stack(basis))


def _render(codes: Tensor, basis: Tensor) -> Tensor:
    return torch.einsum("nk,kchw->nchw", codes, basis) / math.sqrt(basis.shape[0])


@DATASETS.register("synth-av", reads_data_root=False, aliases=("synth",), tasks=("classification",),
                   description="embedded paired visual images and audio spectrograms with shared and modality-specific class evidence")
def synth_av(data_root: Path | None, classes: int = 8, codes: int = 8, shared: float = 0.5, noise: float = 1.6,
             image_size: int = 24, train: int = 2000, val: int = 500, test: int = 1000, data_seed: int = 0) -> TensorPairs:
    if classes < 2 or codes < 1 or image_size < 8:
        raise UserError(f"synth-av needs classes >= 2, codes >= 1 and image_size >= 8 (got {classes}, {codes}, {image_size})")
    if not 0 <= shared <= 1:
        raise UserError(f"synth-av option shared must be in [0, 1], got {shared}")
    if min(train, val, test) < 1 or noise < 0:
        raise UserError("synth-av needs at least one sample in every split and a non-negative noise")
    g = torch.Generator().manual_seed(data_seed)
    size = image_size
    prototypes = {name: torch.randn(classes, codes, generator=g) for name in ("shared", "visual", "audio")}
    basis = {"visual": (_visual_basis(g, codes, size), _visual_basis(g, codes, size)),
             "audio": (_audio_basis(g, codes, size, size), _audio_basis(g, codes, size, size))}
    splits = {}
    for split, n in (("train", train), ("val", val), ("test", test)):
        labels = torch.randint(classes, (n,), generator=g)
        z_shared = prototypes["shared"][labels] + noise * torch.randn(n, codes, generator=g)
        sample = {"label": labels}
        for modality in ("visual", "audio"):
            z_own = prototypes[modality][labels] + noise * torch.randn(n, codes, generator=g)
            shared_basis, own_basis = basis[modality]
            signal = math.sqrt(shared) * _render(z_shared, shared_basis) + math.sqrt(1 - shared) * _render(z_own, own_basis)
            if modality == "audio":
                signal = _time_shift(signal, g, max_shift=size // 8)
            sample[modality] = signal + _nuisance(modality, g, n, size)
        splits[split] = sample
    spec = DatasetSpec(
        name="synth-av", task="classification", num_classes=classes,
        modalities={"visual": Modality((3, size, size), "small-cnn", "RGB-like image"),
                    "audio": Modality((1, size, size), "small-cnn", "log-spectrogram-like image (F x T)")},
        teacher_modality="visual", student_modality="audio",
        recipe=Recipe(epochs=12, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine"),
        split_sizes={"train": train, "val": val, "test": test},
        recipe_source="chosen for synth-av so a teacher + student run takes about a minute on 2 CPU cores",
        options={"classes": classes, "codes": codes, "shared": shared, "noise": noise, "image_size": image_size,
                 "train": train, "val": val, "test": test, "data_seed": data_seed},
    )
    return TensorPairs(spec, splits)


def _nuisance(modality: str, g: torch.Generator, n: int, size: int) -> Tensor:
    if modality == "visual":
        background = 0.8 * _smooth_field(g, n, 3, size, 4)
        brightness = 0.5 * torch.randn(n, 1, 1, 1, generator=g)
        return background + brightness + 0.3 * torch.randn(n, 3, size, size, generator=g)
    floor = 0.6 * _smooth_field(g, n, 1, size, 3)
    bursts = (torch.rand(n, 1, 1, size, generator=g) < 0.1).float() * torch.rand(n, 1, size, 1, generator=g) * 2
    return floor + bursts + 0.3 * torch.randn(n, 1, size, size, generator=g)


def _time_shift(x: Tensor, g: torch.Generator, max_shift: int) -> Tensor:
    """Roll each sample circularly along time by its own random offset."""
    n, _, _, frames = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (n, 1, 1, 1), generator=g)
    index = (torch.arange(frames).view(1, 1, 1, -1) - shift) % frames
    return x.gather(3, index.expand_as(x))
