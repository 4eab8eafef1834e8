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

from ..errors import UserError
from ..registry import BACKBONES, Entry, signature_hparams
from .features import FeatureModel

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


def build_backbone(name: str, spec, modality: str) -> FeatureModel:
    """Backbone `name` for one modality of a dataset spec. Text backbones (registered with
    takes_tokens=True) also receive the modality's vocabulary (`Modality.tokens`); a text backbone on
    another modality, or another backbone on a text modality, is one line."""
    entry, declared = BACKBONES.get(name), spec.modality(modality)
    takes_tokens = bool(entry.meta.get("takes_tokens"))
    if takes_tokens and declared.tokens is None:
        raise UserError(f"backbone {name!r} reads text (token ids), but modality {modality!r} of {spec.name!r} is not "
                        f"text (shape {tuple(declared.shape)}); give it an image or vector backbone, e.g. {declared.backbone}")
    if declared.tokens is not None and not takes_tokens:
        raise UserError(f"modality {modality!r} of {spec.name!r} is text (token ids), which backbone {name!r} does not "
                        "read; use a text backbone: text-cnn, text-transformer or hf:<model type>")
    extra = {"tokens": declared.tokens} if takes_tokens else {}
    return entry.factory(declared.shape, spec.num_classes, **extra)


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
                         dense=True, native_logits_module="head")  # the head's output, before the resize
    return _described(model, input_shape)


def smp_backbone(name: str, input_shape: tuple[int, ...], num_classes: int) -> FeatureModel:
    """`ARCH:ENCODER` from segmentation-models-pytorch, never with downloaded weights.

    Stages are the encoder's feature maps (item i of the encoder's output list; item 0 is the
    input itself and some encoders return zero-channel placeholders, both skipped), then the
    decoder's output, which is what the segmentation head reads. The native-resolution logits are
    the output of the head's last convolution to the classes, before the head's own upsampling
    (e.g. 4x in DeepLabV3+, 8x in DeepLabV3; none in U-Net, whose head outputs at the input's size).
    """
    import segmentation_models_pytorch as smp

    arch, encoder = name.split(":", 1)
    chans, height, width = _image_shape(name, input_shape)
    net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=chans, classes=num_classes)
    stages = [f"encoder[{i}]" for i, c in enumerate(net.encoder.out_channels) if i > 0 and c > 0] + ["decoder"]
    model = FeatureModel(net, name, num_classes, stages, head_module="segmentation_head", dense=True,
                         native_logits_module=_class_conv(net, "segmentation_head", num_classes))
    try:
        return _described(model, input_shape)
    except RuntimeError as exc:  # smp checks the input size (multiples of the output stride)
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"backbone {name!r} cannot take {height} x {width} inputs: {first}") from exc


def _class_conv(net: nn.Module, head: str, num_classes: int) -> str | None:
    """The last convolution to `num_classes` channels inside the head: it outputs the logits at the
    head's resolution, before any upsampling the head does after it (None: no such layer)."""
    convs = [name for name, m in net.get_submodule(head).named_modules()
             if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
    return f"{head}.{convs[-1]}" if convs else None


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


# -- starting from given weights -----------------------------------------------------------------
_KEY_PREFIXES = ("net.", "net.encoder.", "net.encoder.model.")  # harness files are under net.; bare models,
# and for segmentation models a bare encoder's (timm/torchvision) weights, are tried under each


def input_convs(model: FeatureModel, in_chans: int) -> list[str]:
    """The parameter names of the convolutions that read the input: timm's `first_conv` for timm models,
    else the first Conv2d whose in_channels is the input's."""
    net = model.net
    for module in (net, getattr(getattr(net, "encoder", None), "model", None)):
        first = getattr(module, "pretrained_cfg", {}).get("first_conv") if module is not None else None
        if first:
            prefix = "net." if module is net else "net.encoder.model."
            names = [first] if isinstance(first, str) else list(first)
            found = [f"{prefix}{n}.weight" for n in names]
            if all(k in model.state_dict() for k in found):
                return found
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_chans:
            return [f"net.{name}.weight"]
    return []


def _under_prefix(state: dict, expected: dict) -> dict:
    """`state` with the key prefix (of _KEY_PREFIXES) under which most of its names are the model's."""
    if any(k.startswith("net.") for k in state):
        return state
    options = [{f"{p}{k}": v for k, v in state.items()} for p in _KEY_PREFIXES]
    return max(options, key=lambda s: sum(k in expected for k in s))


def init_from_weights(model: FeatureModel, state: dict, in_chans: int, path: str, sha256: str | None,
                      what: str = "student init") -> dict:
    """Load into `model` what fits of a state_dict, by rule, and report what was loaded, adapted, skipped.

    - a tensor of the same name and shape is loaded;
    - an input convolution whose input channels differ (an RGB stem for a 1-channel spectrogram or depth
      map) is adapted with timm's `adapt_input_conv` (1 channel: the sum over input channels);
    - any other tensor whose shape differs (a classifier for another number of classes) is skipped and
      stays freshly initialised, as does every tensor the file does not have.

    No tensor that fits: a UserError. Returns the report stored in the run record.
    """
    import torch
    from timm.models import adapt_input_conv

    expected = model.state_dict()
    example = next(iter(state), None)  # a name as the file has it, for the error below
    state = _under_prefix(state, expected)
    stems, head = set(input_convs(model, in_chans)), f"net.{model.head_module}."
    loaded, adapted, skipped, values, originals = [], [], [], {}, {}
    for key, target in expected.items():
        if key not in state:
            continue
        value = state[key]
        if tuple(value.shape) == tuple(target.shape):
            loaded.append(key)
            values[key] = value
            continue
        shapes = {"file_shape": list(value.shape), "model_shape": list(target.shape)}
        if key in stems and value.ndim == 4 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            try:
                converted = adapt_input_conv(target.shape[1], value, base_chans=value.shape[1])
            except (ValueError, NotImplementedError, AssertionError):
                converted = None
            if converted is not None and tuple(converted.shape) == tuple(target.shape):
                how = "summed over input channels" if target.shape[1] == 1 else "repeated over input channels, rescaled"
                adapted.append({"key": key, **shapes, "how": f"input stem: {how} (timm adapt_input_conv)"})
                values[key], originals[key] = converted, value
                continue
        reason = "classifier head for another number of classes" if key.startswith(head) else "shape differs"
        skipped.append({"key": key, **shapes, "reason": reason})
    if not any(torch.is_floating_point(v) for v in values.values()):
        raise UserError(f"{what} {path!r} fits no tensor of backbone {model.name!r} (it has {len(state)} tensors, e.g. "
                        f"{example}; the model's are named like {next(iter(expected))})")
    if _is_timm(model.net):
        _load_with_timm(model.net, path, {**values, **originals}, originals, in_chans)
    else:
        with torch.no_grad():
            for key, value in values.items():
                expected[key].copy_(value.to(dtype=expected[key].dtype))
    return {"file": str(path), "sha256": sha256,
            "loaded": loaded, "adapted": adapted, "skipped": skipped,
            "not_in_file": [k for k in expected if k not in state],
            "unused": sorted(k for k in state if k not in expected)}


def _is_timm(net: nn.Module) -> bool:
    return type(net).__module__.startswith("timm.") and bool(getattr(net, "pretrained_cfg", None))


def _load_with_timm(net: nn.Module, path: str, planned: dict, stems: dict, in_chans: int) -> None:
    """timm's own way for timm models: `load_pretrained` with the pretrained config overlaid with
    `file=` (as `pretrained_cfg_overlay=dict(file=...)` does in `create_model`), the number of classes
    and the file's input channels, so that timm reads the file and adapts the input stem; the filter
    keeps exactly the tensors `init_from_weights` planned (stems as in the file)."""
    from timm.models import load_pretrained

    bare = {k[len("net."):]: v for k, v in planned.items()}
    stem_names = [k[len("net."):-len(".weight")] for k in stems]
    cfg = dict(net.pretrained_cfg)
    cfg.update(file=str(path), state_dict=None, url=None, hf_hub_id=None, custom_load=False,
               num_classes=getattr(net, "num_classes", cfg.get("num_classes")))
    if stem_names:
        source_chans = {int(v.shape[1]) for v in stems.values()}
        cfg.update(first_conv=tuple(stem_names), input_size=(source_chans.pop(), *cfg.get("input_size", (3, 224, 224))[1:]))
    else:
        cfg.update(first_conv=None, input_size=(in_chans, *cfg.get("input_size", (3, 224, 224))[1:]))

    def keep_planned(state: dict, model: nn.Module) -> dict:
        """timm's reading of the file, limited to the planned tensors (under the file's own names)."""
        kept = {}
        for key, planned_value in bare.items():
            value = state.get(key, state.get(f"net.{key}"))
            same = value is not None and tuple(value.shape) == tuple(planned_value.shape)
            kept[key] = value if same else planned_value
        return kept

    load_pretrained(net, pretrained_cfg=cfg, num_classes=cfg["num_classes"], in_chans=in_chans,
                    filter_fn=keep_planned, strict=False)


def init_summary(role: str, report: dict) -> str:
    """One line for the run output: how many tensors were loaded, which adapted and skipped."""
    parts = [f"{role} init from {report['file']} ({(report['sha256'] or '')[:10]}): {len(report['loaded'])} tensors loaded"]
    if report["adapted"]:
        parts.append("adapted " + ", ".join(f"{a['key']} {a['file_shape']}→{a['model_shape']}" for a in report["adapted"]))
    if report["skipped"]:
        names = [s["key"] for s in report["skipped"]]
        parts.append(f"skipped {len(names)} (fresh): " + ", ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
    if report["not_in_file"]:
        parts.append(f"{len(report['not_in_file'])} not in the file (fresh)")
    if report["unused"]:
        parts.append(f"{len(report['unused'])} in the file unused")
    return "; ".join(parts)
