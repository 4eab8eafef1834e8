"""Backbones: linear and MLP models for vectors, a small fast CNN, and any timm model by name;
for segmentation a small fast encoder-decoder and any segmentation-models-pytorch model as
`ARCH:ENCODER` (e.g. `deeplabv3plus:resnet18`, `unet:tu-convnext_atto`).

A factory takes (input_shape, num_classes, **options) and returns a described `FeatureModel`.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from math import prod

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .models import FeatureModel
from .registry import BACKBONES, Entry, signature_hparams

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UserError(
            f"backbone {name!r} needs image-like input (C x H x W), but this modality has shape "
            f"{tuple(input_shape)}; use `--student mlp` or `--teacher mlp` for vectors"
        )
    return input_shape  # type: ignore[return-value]


def _described(model: FeatureModel, input_shape: tuple[int, ...]) -> FeatureModel:
    model.describe(input_shape)
    return model


@BACKBONES.register("linear", tasks=("classification",), description="one linear layer on the flattened input")
def linear(input_shape: tuple[int, ...], num_classes: int) -> FeatureModel:
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(prod(input_shape), num_classes)))
    return _described(FeatureModel(net, "linear", num_classes, stage_modules=[], head_module="fc"), input_shape)


@BACKBONES.register("mlp", tasks=("classification",), description="multi-layer perceptron on the flattened input")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 256, depth: int = 2) -> FeatureModel:
    if depth < 1 or hidden < 1:
        raise UserError(f"mlp needs depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
    blocks, width = [], prod(input_shape)
    for _ in range(depth):
        blocks.append(nn.Sequential(OrderedDict(fc=nn.Linear(width, hidden), norm=nn.BatchNorm1d(hidden), act=nn.ReLU())))
        width = hidden
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(), blocks=nn.Sequential(*blocks), fc=nn.Linear(width, num_classes)))
    stages = [f"blocks.{i}" for i in range(depth)]
    model = FeatureModel(net, "mlp", num_classes, stages, head_module="fc", preact_module=f"blocks.{depth - 1}.act")
    return _described(model, input_shape)


class SmallCNN(nn.Module):
    """Stages of two 3x3 conv-BN blocks, stride 2 between stages, global pooling, linear head."""

    def __init__(self, in_chans: int, num_classes: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        stages, cin = [], in_chans
        for i, width in enumerate(widths):
            stages.append(
                nn.Sequential(
                    OrderedDict(
                        conv1=nn.Conv2d(cin, width, 3, 1 if i == 0 else 2, 1, bias=False),
                        bn1=nn.BatchNorm2d(width),
                        act1=nn.ReLU(),
                        conv2=nn.Conv2d(width, width, 3, 1, 1, bias=False),
                        bn2=nn.BatchNorm2d(width),
                        act=nn.ReLU(),
                    )
                )
            )
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(x)).flatten(1))


@BACKBONES.register("small-cnn", aliases=("cnn",), tasks=("classification",), description="small fast CNN for small images (three stages)")
def small_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 16, stages: int = 3) -> FeatureModel:
    chans, _, _ = _image_shape("small-cnn", input_shape)
    if stages < 1 or width < 1:
        raise UserError(f"small-cnn needs stages >= 1 and width >= 1, got stages={stages}, width={width}")
    widths = tuple(width * 2**i for i in range(stages))
    net = SmallCNN(chans, num_classes, widths)
    names = [f"stages.{i}" for i in range(stages)]
    model = FeatureModel(net, "small-cnn", num_classes, names, head_module="fc", preact_module=f"stages.{stages - 1}.act")
    return _described(model, input_shape)


def _final_activation(net: nn.Module, last_stage: str) -> str | None:
    """The activation that is a direct child of the last block of the last stage, if any."""
    stage = net.get_submodule(last_stage)
    blocks = list(stage.named_children())
    if not blocks:
        return None
    block_name, block = blocks[-1]
    acts = [n for n, m in block.named_children() if isinstance(m, ACTIVATIONS)]
    return f"{last_stage}.{block_name}.{acts[-1]}" if acts else None


def timm_backbone(name: str, input_shape: tuple[int, ...], num_classes: int) -> FeatureModel:
    import timm

    chans, _, _ = _image_shape(name, input_shape)
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=chans)
    stages = [info["module"] for info in net.feature_info]
    head = net.get_classifier()
    head_name = next(n for n, m in net.named_modules() if m is head)
    model = FeatureModel(net, name, num_classes, stages, head_module=head_name, preact_module=_final_activation(net, stages[-1]))
    return _described(model, input_shape)


@lru_cache(maxsize=1)
def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _resolve_timm(name: str) -> Entry | None:
    if name not in _timm_names():
        return None

    def factory(input_shape: tuple[int, ...], num_classes: int) -> FeatureModel:
        return timm_backbone(name, input_shape, num_classes)

    hparams, types = signature_hparams(factory, 2)
    return Entry(name=name, factory=factory, tasks=("classification",), description=f"timm model {name} (pretrained=False)",
                 hparams=hparams, hparam_types=types, meta={"family": "timm"})


BACKBONES.add_resolver(_resolve_timm, suggestions=_timm_names)


# -- segmentation --------------------------------------------------------------------------------
class SmallDecoder(nn.Module):
    """FPN-like: 1x1 laterals, top-down upsample-and-add, one 3x3 conv-BN-ReLU at the finest stage."""

    def __init__(self, widths: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(w, width, 1, bias=False) for w in widths)
        self.fuse = nn.Sequential(OrderedDict(conv=nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                              bn=nn.BatchNorm2d(width), act=nn.ReLU()))

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.laterals[-1](feats[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            x = F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False) + lateral(feat)
        return self.fuse(x)


class SmallSegNet(nn.Module):
    """SmallCNN-style stages, all strided (the decoder then works at half the input's size, which
    keeps CPU runs fast), the small decoder, a 1x1 head, logits resized to the input's size."""

    def __init__(self, in_chans: int, num_classes: int, widths: tuple[int, ...], decoder_width: int) -> None:
        super().__init__()
        stages, cin = [], in_chans
        for width in widths:
            stages.append(nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(cin, width, 3, 2, 1, bias=False), bn1=nn.BatchNorm2d(width), act1=nn.ReLU(),
                conv2=nn.Conv2d(width, width, 3, 1, 1, bias=False), bn2=nn.BatchNorm2d(width), act=nn.ReLU())))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.decoder = SmallDecoder(widths, decoder_width)
        self.head = nn.Conv2d(decoder_width, num_classes, 1)

    def forward(self, x):
        size, feats = x.shape[-2:], []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.head(self.decoder(feats))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@BACKBONES.register("small-seg", tasks=("segmentation",),
                    description="small fast encoder-decoder for segmentation of small images (three stages)")
def small_seg(input_shape: tuple[int, ...], num_classes: int, width: int = 16, stages: int = 3,
              decoder_width: int = 16) -> FeatureModel:
    chans, _, _ = _image_shape("small-seg", input_shape)
    if stages < 1 or width < 1 or decoder_width < 1:
        raise UserError(f"small-seg needs stages, width and decoder_width >= 1, got {stages}, {width}, {decoder_width}")
    net = SmallSegNet(chans, num_classes, tuple(width * 2**i for i in range(stages)), decoder_width)
    names = [f"stages.{i}" for i in range(stages)] + ["decoder"]
    model = FeatureModel(net, "small-seg", num_classes, names, head_module="head", preact_module="decoder.fuse.act",
                         dense=True)
    return _described(model, input_shape)


def smp_backbone(name: str, input_shape: tuple[int, ...], num_classes: int) -> FeatureModel:
    """`ARCH:ENCODER` from segmentation-models-pytorch, never with downloaded weights.

    Stages are the encoder's feature maps (item i of the encoder's output list; item 0 is the
    input itself and some encoders return zero-channel placeholders, both skipped), then the
    decoder's output, which is what the segmentation head reads.
    """
    import segmentation_models_pytorch as smp

    arch, encoder = name.split(":", 1)
    chans, height, width = _image_shape(name, input_shape)
    net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=chans, classes=num_classes)
    stages = [f"encoder[{i}]" for i, c in enumerate(net.encoder.out_channels) if i > 0 and c > 0] + ["decoder"]
    model = FeatureModel(net, name, num_classes, stages, head_module="segmentation_head", dense=True)
    try:
        return _described(model, input_shape)
    except RuntimeError as exc:  # smp checks the input size (multiples of the output stride)
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"backbone {name!r} cannot take {height} x {width} inputs: {first}") from exc


@lru_cache(maxsize=1)
def _smp_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    import segmentation_models_pytorch as smp

    return tuple(smp.MODEL_ARCHITECTURES_MAPPING), tuple(smp.encoders.get_encoder_names())


def _smp_names() -> list[str]:
    archs, encoders = _smp_parts()
    return [f"{arch}:{encoder}" for arch in archs for encoder in encoders]


def _resolve_smp(name: str) -> Entry | None:
    arch, sep, encoder = name.partition(":")
    if not sep:  # before importing smp, which is slow
        return None
    archs, encoders = _smp_parts()
    timm_encoder = encoder.startswith("tu-") and encoder[3:] in _timm_names()
    if arch not in archs or not (encoder in encoders or timm_encoder):
        return None

    def factory(input_shape: tuple[int, ...], num_classes: int) -> FeatureModel:
        return smp_backbone(name, input_shape, num_classes)

    hparams, types = signature_hparams(factory, 2)
    return Entry(name=name, factory=factory, tasks=("segmentation",),
                 description=f"segmentation-models-pytorch {arch} with encoder {encoder} (encoder_weights=None)",
                 hparams=hparams, hparam_types=types, meta={"family": "smp"})


BACKBONES.add_resolver(_resolve_smp, suggestions=_smp_names)
