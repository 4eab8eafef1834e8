"""Multimodal (fusion) teachers: one encoder per modality and a registered fusion of their outputs.

`--teacher-modality visual+audio` (two or more of the dataset's modalities, joined with "+", in
any order; canonicalised to the dataset's modality order, so `audio+visual` on synth-av is the
teacher `visual+audio`) makes the teacher a `FusionModel`: for each modality the backbone that
modality uses today (`--teacher a+b` names one per modality, in the order written; one name
serves every modality), each built and seeded exactly as that modality's unimodal teacher is
(cmkd_bench.training.runner.build_model), and a fusion head over their outputs, chosen from
`FUSIONS` (`--teacher-fusion`, default "concat"). The whole model is trained with cross-entropy
like any teacher and cached by a key that holds the modality set, each backbone and the fusion.

Reference: MST-Distill (Gray-OREO/MST-Distill, ACM MM 2025) trains such a multimodal teacher
(`main-T.py`, `utils.get_Tmodules`) for every baseline. Its classification teachers are
intermediate fusion: each modality's branch without its classifier, the branches' features
concatenated (`torch.cat((x1, x2), dim=1)`), then a head: AV-MNIST's `IntermediateFusionNet`
fc1 -> fc2 with no activation between (a linear map of the concatenation), CMMD's
`IntermediateFusionMLP` Linear(1024, 512)-ReLU-Linear(512, 256)-ReLU-Linear(256, 8), RAVDESS's
`DualStreamCNN` Linear-ReLU-Linear-ReLU-Linear over flattened (not pooled) branch maps. Here:

- "concat" (default): the encoders' pooled features concatenated -> one linear layer (the
  AV-MNIST teacher's head, whose two linear layers compose to one linear map);
- "concat-mlp": the same concatenation -> Linear(D, D/2)-ReLU-Linear(D/2, D/4)-ReLU-Linear(D/4, C),
  the CMMD teacher's head shape (D = 1024 there).

Both pool each encoder's last map (global average) where MST-Distill's RAVDESS and AV-MNIST
branches flatten it: the encoders here are the benchmark's backbones, which pool before their head.

Segmentation (RGB-D): late fusion of the encoder-decoders' decoder outputs. Each modality's
segmentation model runs whole; the maps its segmentation head reads (its decoder's output) are
resized bilinearly to the finest of them and concatenated, and the fusion head (a 1x1 convolution
for "concat", 1x1 convolutions with ReLU for "concat-mlp") gives the logits at that native
resolution, upsampled bilinearly to the input's size. This is the simplest fusion that works with
every backbone (small-seg and any smp ARCH:ENCODER, whose decoders differ); MST-Distill's NYU
teacher (`FuseNet-I`, models/FuseNet.py) fuses inside the encoder instead (FuseNet: the depth
encoder's maps added to the RGB encoder's at each stage, one decoder), and its `FuseNet-L` is late
fusion of the two decoders' class scores by a 1x1 convolution: ours fuses the decoders' feature
maps, one step before.

What methods read of a fusion teacher (`FusionModel.forward`'s ModelOutput):
- `logits`: the fusion head's; `logits_native` the same before the final upsampling
  (segmentation; what cwd reads), equal to `logits` for classification;
- `feature_post`: the fused pooled feature, the concatenation of the encoders' pooled
  post-activation features (what the fusion head reads), B x sum(D_m); `feature`: the
  concatenation of their pooled pre-activation features (each encoder's `feature`);
- `stages`: the stages of the encoder of the student's modality where the teacher has one (in
  MST-Distill's setting it does: the student's modality is one of the teacher's); for
  segmentation their "decoder" entry is the fused decoder map (`decoder`), as for every dense
  model (the stage `last` is the map the head reads). Without an encoder of the student's
  modality there are no encoder stages (stage-reading methods then refuse in one line).
A method that needs a one-modality teacher (its raw input, or its single backbone's head)
declares it (`Method.unimodal_teacher_only`) and the run refuses before anything is written.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .features import FeatureModel, ModelInfo, ModelOutput, global_pool

SEPARATOR = "+"
DEFAULT_FUSION = "concat"


# -- names: a teacher's modality set ------------------------------------------------------------
def modalities_of(teacher_modality: str) -> tuple[str, ...]:
    """The modalities a teacher reads: ("visual", "audio") for "visual+audio", ("audio",) for "audio"."""
    return tuple(teacher_modality.split(SEPARATOR))


def is_fusion(teacher_modality: str | None) -> bool:
    """Whether a teacher modality names a multimodal (fusion) teacher: two or more joined with '+'."""
    return teacher_modality is not None and SEPARATOR in teacher_modality


def parse_modality_set(spec, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A `--teacher-modality a+b` as (the modalities as written, the same in the dataset's order);
    an impossible set (one modality, an empty or repeated name, an unknown modality) is one line."""
    written = tuple(part.strip() for part in text.split(SEPARATOR))
    known = ", ".join(spec.modalities)
    if any(not part for part in written):
        raise UserError(f"--teacher-modality {text!r} has an empty modality name; write two or more of "
                        f"{known} joined with '+', e.g. {SEPARATOR.join(spec.modalities)}")
    for part in written:
        if part not in spec.modalities:
            raise UserError(f"--teacher-modality {text!r}: dataset {spec.name!r} has no modality {part!r}; "
                            f"its modalities are {known}")
    if len(set(written)) != len(written):
        raise UserError(f"--teacher-modality {text!r} names a modality twice; a multimodal teacher reads each "
                        f"modality once (e.g. {SEPARATOR.join(spec.modalities)})")
    if len(written) < 2:  # unreachable through '+', kept for callers passing a one-element set
        raise UserError(f"--teacher-modality {text!r}: a multimodal teacher needs two or more modalities")
    return written, tuple(m for m in spec.modalities if m in written)


def all_modalities(spec) -> str:
    """The multimodal teacher that sees every modality of the dataset (MST-Distill's), canonical."""
    return SEPARATOR.join(spec.modalities)


def model_input(batch: Mapping[str, Tensor], modality: str):
    """What a model of `modality` reads from a batch: its tensor, or for a fusion teacher the dict of its modalities'."""
    if is_fusion(modality):
        return {name: batch[name] for name in modalities_of(modality)}
    return batch[modality]


# -- the registry of fusions --------------------------------------------------------------------
@dataclass(frozen=True)
class Fusion:
    """A fusion head: `build(input_dim, num_classes, dense)` returns the module from the fused
    feature (B x D, or B x D x h x w for segmentation) to the logits."""

    name: str
    build: Callable[[int, int, bool], nn.Module]
    description: str


FUSIONS: dict[str, Fusion] = {}


def register_fusion(name: str, description: str):
    def decorator(build: Callable[[int, int, bool], nn.Module]):
        if name in FUSIONS:
            raise ValueError(f"fusion {name!r} is already registered")
        FUSIONS[name] = Fusion(name, build, description)
        return build

    return decorator


def get_fusion(name: str) -> Fusion:
    if name not in FUSIONS:
        raise UserError(f"unknown teacher fusion {name!r}; fusions are {', '.join(sorted(FUSIONS))}")
    return FUSIONS[name]


def _layer(dense: bool, cin: int, cout: int) -> nn.Module:
    """A linear layer on a vector, or the same per pixel (a 1x1 convolution) on a map."""
    return nn.Conv2d(cin, cout, 1) if dense else nn.Linear(cin, cout)


@register_fusion("concat", "the encoders' pooled features (segmentation: decoder maps) concatenated -> one linear "
                           "layer (1x1 convolution); MST-Distill's AV-MNIST teacher head")
def concat_head(dim: int, num_classes: int, dense: bool) -> nn.Module:
    return _layer(dense, dim, num_classes)


@register_fusion("concat-mlp", "the same concatenation -> Linear(D, D/2)-ReLU-Linear(D/2, D/4)-ReLU-Linear(D/4, C) "
                               "(per pixel for segmentation); MST-Distill's CMMD teacher head shape")
def concat_mlp_head(dim: int, num_classes: int, dense: bool) -> nn.Module:
    first, second = max(dim // 2, num_classes), max(dim // 4, num_classes)
    return nn.Sequential(OrderedDict(fc1=_layer(dense, dim, first), act1=nn.ReLU(), fc2=_layer(dense, first, second),
                                     act2=nn.ReLU(), fc3=_layer(dense, second, num_classes)))


# -- the model ----------------------------------------------------------------------------------
class FusionModel(nn.Module):
    """One encoder per modality (each a FeatureModel, as that modality's unimodal teacher) and a
    fusion head; `forward({modality: tensor})` returns the ModelOutput described in the module doc.

    Everything is under `net` (`net.encoders.<modality>.net...`, `net.head...`), so state dicts
    load and save as a FeatureModel's do. Each encoder's own classifier head still runs (its input
    is the pooled feature that the hooks read) but is frozen and feeds nothing: its weights stay
    as initialised. `stage_modality` (the run's student modality, if the teacher has it) picks
    whose stages methods read; it is not part of the weights, so one cached teacher serves either
    student.
    """

    def __init__(self, encoders: Mapping[str, FeatureModel], fusion: str, num_classes: int,
                 stage_modality: str | None = None) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError("a fusion model needs two or more encoders")
        self.modalities = tuple(encoders)
        self.fusion = get_fusion(fusion)
        self.num_classes = num_classes
        infos = {m: enc.info for m, enc in encoders.items()}
        if any(info is None for info in infos.values()):
            raise ValueError("every encoder must be described (FeatureModel.describe) before fusion")
        dense = {info.dense for info in infos.values()}
        if len(dense) != 1:
            raise UserError("a fusion teacher's encoders must all be classifiers or all be segmentation models")
        self.dense = dense.pop()
        self.backbones = tuple(enc.name for enc in encoders.values())
        dim = sum(info.decoder_shape[0] if self.dense else info.feature_dim for info in infos.values())
        for encoder in encoders.values():  # the encoders' own heads: unused, kept out of training
            encoder.net.get_submodule(encoder.head_module).requires_grad_(False)
        self.net = nn.ModuleDict({"encoders": nn.ModuleDict(encoders),
                                  "head": self.fusion.build(dim, num_classes, self.dense)})
        self.fused_dim = dim
        self.stage_modality: str | None = None
        self.info: ModelInfo | None = None
        self.use_stages_of(stage_modality)

    @property
    def name(self) -> str:
        return f"{self.fusion.name}({SEPARATOR.join(self.backbones)})"

    @property
    def teacher_modality(self) -> str:
        return SEPARATOR.join(self.modalities)

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.net["encoders"]  # type: ignore[return-value]

    def networks(self) -> list[nn.Module]:
        """The networks `--compile` compiles: each encoder's, and the fusion head."""
        return [encoder.net for encoder in self.encoders.values()] + [self.net["head"]]

    def use_stages_of(self, modality: str | None) -> ModelInfo:
        """Serve the stages of `modality`'s encoder (None, or a modality the teacher lacks: no encoder stages)."""
        self.stage_modality = modality if modality in self.modalities else None
        self.info = self._describe()
        return self.info

    def _describe(self) -> ModelInfo:
        """The fused model's shapes, from its encoders' (no forward needed)."""
        infos = {m: enc.info for m, enc in self.encoders.items()}
        decoder_shape = None
        if self.dense:
            sizes = [info.decoder_shape[1:] for info in infos.values()]
            finest = max(sizes, key=lambda s: s[0] * s[1])
            decoder_shape = (self.fused_dim, *finest)
        stages: dict[str, tuple[int, ...]] = {}
        if self.stage_modality is not None:
            stages = {k: v for k, v in infos[self.stage_modality].stage_shapes.items() if not (self.dense and k == "decoder")}
        if self.dense:
            stages["decoder"] = decoder_shape
        name = self.name if self.stage_modality is not None else f"{self.name} (no encoder of the student's modality)"
        feature_dim = sum(info.feature_dim for info in infos.values())
        return ModelInfo(name=name, num_classes=self.num_classes, feature_dim=feature_dim, stage_shapes=stages,
                         decoder_shape=decoder_shape)

    def forward(self, x: Mapping[str, Tensor]) -> ModelOutput:
        if not isinstance(x, Mapping):
            raise TypeError(f"fusion teacher {self.name} reads a dict of its modalities "
                            f"({', '.join(self.modalities)}), got {type(x).__name__}")
        outs = {m: self.encoders[m](x[m]) for m in self.modalities}
        feature = torch.cat([out.feature for out in outs.values()], dim=1)
        head = self.net["head"]
        if not self.dense:
            fused = torch.cat([out.feature_post for out in outs.values()], dim=1)
            logits = head(fused)
            stages = dict(outs[self.stage_modality].stages) if self.stage_modality else {}
            return ModelOutput(logits=logits, feature=feature, feature_post=fused, stages=stages, logits_native=logits)
        maps = [out.decoder for out in outs.values()]
        size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        decoder = torch.cat(maps, dim=1)
        native = head(decoder)
        out_size = outs[self.modalities[0]].logits.shape[-2:]  # every modality's input (and label) size
        logits = native if native.shape[-2:] == out_size else F.interpolate(
            native, size=out_size, mode="bilinear", align_corners=False)
        stages = {}
        if self.stage_modality:
            stages = {k: v for k, v in outs[self.stage_modality].stages.items() if k != "decoder"}
        stages["decoder"] = decoder
        return ModelOutput(logits=logits, feature=feature, feature_post=global_pool(decoder).flatten(1), stages=stages,
                           decoder=decoder, logits_native=native)

    def check_sizes(self, input_shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Segmentation: every modality at one height and width (the labels' size)."""
        if not self.dense:
            return
        sizes = {tuple(shape[-2:]) for shape in input_shapes.values()}
        if len(sizes) > 1:
            raise UserError(f"a segmentation fusion teacher needs its modalities at one size; "
                            + ", ".join(f"{m} is {' x '.join(map(str, s[-2:]))}" for m, s in input_shapes.items()))


def stages_note(model: FusionModel, student_modality: str) -> str:
    """What a run says of the teacher's stages (record and log line)."""
    if model.stage_modality is None:
        return f"none: the teacher has no {student_modality} encoder"
    backbone = model.backbones[model.modalities.index(model.stage_modality)]
    note = f"its {model.stage_modality} encoder's ({backbone})"
    return note + ("; 'decoder' is the fused decoder map" if model.dense else "")
