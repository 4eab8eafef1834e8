"""Backbones give methods what they promise: logits, pre- and post-activation pooled features, stages."""

from __future__ import annotations

import pytest
import torch

from cmkd_bench.errors import UserError
from cmkd_bench.registry import BACKBONES


def test_small_cnn_outputs_and_preactivation():
    model = BACKBONES.build("small-cnn", (3, 16, 16), 7)
    out = model(torch.randn(4, 3, 16, 16))
    assert out.logits.shape == (4, 7) and out.feature.shape == (4, 64) and out.feature_post.shape == (4, 64)
    assert list(out.stages) == ["stages.0", "stages.1", "stages.2"]
    assert out.stages["stages.2"].shape == (4, 64, 4, 4)
    last = out.stages["stages.2"]
    assert torch.allclose(out.feature_post, last.mean(dim=(2, 3)))  # the classifier's input
    assert (out.feature < 0).any() and (out.feature_post >= 0).all()  # pre-activation has negatives
    assert torch.allclose(out.logits, model.net.fc(out.feature_post))
    assert model.info.stage_shapes["stages.0"] == (16, 16, 16) and model.info.feature_dim == 64


def test_timm_model_by_name_with_in_chans_from_modality():
    model = BACKBONES.build("resnet18", (1, 64, 64), 5)
    torch.nn.init.ones_(model.net.layer4[1].bn2.weight)  # timm zero-inits it, which makes the residual sum >= 0
    out = model(torch.randn(3, 1, 64, 64))
    assert out.logits.shape == (3, 5) and out.feature.shape == (3, 512)
    assert list(out.stages) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    # act2 of the last block is an in-place ReLU: the hook must keep a copy of its input
    assert model.preact_module == "layer4.1.act2"
    assert (out.feature < 0).any() and (out.feature_post >= 0).all()
    assert torch.allclose(out.feature_post, out.stages["layer4"].mean(dim=(2, 3)))


def test_mlp_and_linear_on_vectors():
    mlp = BACKBONES.build("mlp", (10,), 3, hidden=8)
    out = mlp(torch.randn(5, 10))
    assert out.feature.shape == (5, 8) and list(out.stages) == ["blocks.0", "blocks.1"]
    linear = BACKBONES.build("linear", (10,), 3)
    x = torch.randn(5, 10)
    out = linear(x)
    assert torch.equal(out.feature, x) and out.stages == {}  # a linear model's feature is its input


def test_image_backbone_refuses_vectors():
    with pytest.raises(UserError, match="needs image-like input"):
        BACKBONES.build("small-cnn", (25,), 2)


def test_gradients_flow_through_hooked_features():
    model = BACKBONES.build("small-cnn", (1, 12, 12), 3)
    out = model(torch.randn(4, 1, 12, 12))
    out.feature.pow(2).sum().backward()
    assert model.net.stages[0].conv1.weight.grad.abs().sum() > 0
    assert model.net.fc.weight.grad is None  # the pre-activation feature does not touch the head


def test_dense_models_expose_the_heads_native_resolution_logits():
    import torch.nn.functional as F

    seg = BACKBONES.build("small-seg", (3, 16, 16), 4).eval()
    out = seg(torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        head = seg.net.head(out.decoder)  # the 1x1 head on the map it reads: half the input's size
    assert out.logits.shape == (2, 4, 16, 16) and out.logits_native.shape == (2, 4, 8, 8)
    torch.testing.assert_close(out.logits_native, head)
    torch.testing.assert_close(out.logits, F.interpolate(head, size=(16, 16), mode="bilinear", align_corners=False))
    unet = BACKBONES.build("unet:resnet18", (3, 32, 32), 4).eval()  # its head outputs at the input's size
    out = unet(torch.randn(2, 3, 32, 32))
    assert out.logits_native is out.logits or torch.equal(out.logits_native, out.logits)
    cnn = BACKBONES.build("small-cnn", (3, 16, 16), 4)
    out = cnn(torch.randn(2, 3, 16, 16))
    assert out.logits_native is out.logits
