"""What a model gives a method: logits, pooled features and stage maps, read by forward hooks.

Every backbone, ours, timm's or segmentation-models-pytorch's, is wrapped by `FeatureModel`,
which hooks modules by name: the stage modules (their outputs are the stage maps; `name[i]`
takes item i of a module that returns a list of maps, such as an smp encoder), the final
activation of the last stage (its input is the pre-activation map), the head (its input is
the pooled feature of a classifier, or the decoder map of a dense model) and, for dense models,
the layer that outputs the logits at the head's own resolution (before the model resizes them
to the input's size). No model code is copied or rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class ModelOutput:
    """What one forward gives a method.

    Classification: logits B x C; `feature` / `feature_post` pooled pre- / post-activation
    features of the last stage (B x D); `stages` the stage maps; `decoder` None.
    Segmentation (dense models): logits B x C x H x W at the input's size; `logits_native` the
    same logits at the segmentation head's own resolution, before the model upsamples them (what
    dense distillation such as CWD reads; equal to `logits` where the head outputs at the input's
    size, and on classifiers); `decoder` the map the
    segmentation head reads, B x D x h x w, kept as a map (not pooled); `stages` the encoder
    stages followed by "decoder" (the same map), so a stage reference `last` means the decoder;
    `feature` / `feature_post` the decoder map pooled (pre- / post-activation), B x D.
    """

    logits: Tensor
    feature: Tensor  # pooled pre-activation feature of the last stage, B x D
    feature_post: Tensor  # pooled post-activation feature (what the classifier sees), B x D
    stages: dict[str, Tensor] = field(default_factory=dict)  # stage name -> map, in order
    decoder: Tensor | None = None  # dense models: the segmentation head's input map, B x D x h x w
    logits_native: Tensor | None = None  # logits before the model's final resizing (None: not read)


@dataclass(frozen=True)
class ModelInfo:
    """Shapes a method needs to build its own parts, without holding the model."""

    name: str
    num_classes: int
    feature_dim: int
    stage_shapes: dict[str, tuple[int, ...]]  # per-sample shapes, in order
    decoder_shape: tuple[int, ...] | None = None  # dense models: per-sample decoder map shape, D x h x w

    @property
    def dense(self) -> bool:
        return self.decoder_shape is not None

    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_shapes)

    def stage(self, name: str) -> str:
        """Resolve a stage name ('last', 'first', a name, or an index) to a stage name."""
        from ..errors import UserError

        names = self.stage_names
        if not names:
            raise UserError(f"backbone {self.name!r} has no stage feature maps; choose a backbone with stages")
        if name == "last":
            return names[-1]
        if name == "first":
            return names[0]
        if name in names:
            return name
        if name.lstrip("-").isdigit() and -len(names) <= int(name) < len(names):
            return names[int(name)]
        raise UserError(f"backbone {self.name!r} has no stage {name!r}; its stages are {', '.join(names)}")


def split_item(ref: str) -> tuple[str, int | None]:
    """'encoder[2]' -> ('encoder', 2): item 2 of what module 'encoder' returns; 'layer1' -> ('layer1', None)."""
    if ref.endswith("]") and "[" in ref:
        module, _, item = ref[:-1].rpartition("[")
        return module, int(item)
    return ref, None


def global_pool(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x


class FeatureModel(nn.Module):
    """Wraps a classifier or a dense model so that one forward returns a `ModelOutput`.

    `preact_module` names the last stage's final activation: a pre-hook reads (and clones, since
    activations are often in-place) its input. Without one, the pre-activation feature is the
    pooled feature itself (models whose last stage ends in a norm, or linear models).
    `dense=True` (segmentation) keeps the head's input as the decoder map instead of a vector.
    `native_logits_module` names the layer whose output is the logits at the head's own
    resolution (a forward hook reads it); without one, `logits_native` is `logits`.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str,
        num_classes: int,
        stage_modules: list[str],
        head_module: str,
        preact_module: str | None = None,
        dense: bool = False,
        native_logits_module: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.num_classes = num_classes
        self.stage_modules = list(stage_modules)
        self.head_module = head_module
        self.preact_module = preact_module
        self.dense = dense
        self.native_logits_module = native_logits_module
        self._captured: dict[str, Tensor] = {}
        for stage in self.stage_modules:
            module, item = split_item(stage)
            net.get_submodule(module).register_forward_hook(self._keep_output(stage, item))
        net.get_submodule(head_module).register_forward_pre_hook(self._keep_input("__pooled__", clone=False))
        if preact_module is not None:
            net.get_submodule(preact_module).register_forward_pre_hook(self._keep_input("__preact__", clone=True))
        if native_logits_module is not None:
            net.get_submodule(native_logits_module).register_forward_hook(self._keep_output("__native__"))
        self.info: ModelInfo | None = None

    def _keep_output(self, key: str, item: int | None = None):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self._captured[key] = output if item is None else output[item]

        return hook

    def _keep_input(self, key: str, clone: bool):
        def hook(module: nn.Module, args: tuple) -> None:
            self._captured[key] = args[0].clone() if clone else args[0]

        return hook

    def forward(self, x: Tensor) -> ModelOutput:
        self._captured = {}
        logits = self.net(x)
        captured, self._captured = self._captured, {}
        head_input = captured["__pooled__"]
        decoder = head_input if self.dense else None
        pooled = global_pool(head_input).flatten(1) if self.dense else head_input.flatten(1)
        preact = captured.get("__preact__")
        feature = global_pool(preact).flatten(1) if preact is not None else pooled
        stages = {name: captured[name] for name in self.stage_modules}
        native = captured.get("__native__", logits)
        return ModelOutput(logits=logits, feature=feature, feature_post=pooled, stages=stages, decoder=decoder,
                           logits_native=native)

    @torch.no_grad()
    def describe(self, input_shape: tuple[int, ...]) -> ModelInfo:
        """Shapes of every output, from one forward of a dummy batch (the mode is restored)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = self(torch.zeros((2, *input_shape), device=device))
        self.train(was_training)
        self.info = ModelInfo(
            name=self.name,
            num_classes=self.num_classes,
            feature_dim=out.feature.shape[1],
            stage_shapes={k: tuple(v.shape[1:]) for k, v in out.stages.items()},
            decoder_shape=tuple(out.decoder.shape[1:]) if out.decoder is not None else None,
        )
        return self.info
