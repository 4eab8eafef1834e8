"""Models: the networks a run trains and what they hand to a method.

    features         FeatureModel (stage maps, pooled features and logits by forward hooks) and ModelOutput
    backbones        the BACKBONES registry's built-ins: linear, mlp, small-cnn, small-seg, timm and smp models
    small_resnet     small-resnet: ResNet basic blocks at small-cnn's widths
    text_backbones   text-cnn, text-transformer and Hugging Face encoders (`hf:`)

The package re-exports `features`' names (`from cmkd_bench.models import ModelOutput`); the backbone
modules register themselves when imported (cmkd_bench.catalog.load_all imports them).
"""

from .features import (ModelOutput, ModelInfo, split_item, global_pool, FeatureModel)

__all__ = ["ModelOutput", "ModelInfo", "split_item", "global_pool", "FeatureModel"]
