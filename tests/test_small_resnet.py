"""small-resnet: shapes on image and spectrogram inputs, the pre-activation hook is the last block's
output before its final ReLU (recomputed from the block's own layers), gradients reach every parameter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmkd_bench.catalog import load_all
from cmkd_bench.errors import UserError
from cmkd_bench.registry import BACKBONES

load_all()


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 20, 12)])  # an RGB image, a 1 x F x T spectrogram
def test_shapes_match_small_cnns_stages(shape):
    model = BACKBONES.build("small-resnet", shape, 5)
    cnn = BACKBONES.build("small-cnn", shape, 5)
    out = model(torch.randn(4, *shape))
    assert out.logits.shape == (4, 5) and out.feature.shape == out.feature_post.shape == (4, 64)
    assert model.info.stage_shapes == cnn.info.stage_shapes  # same widths and strides as small-cnn
    assert list(out.stages) == ["stages.0", "stages.1", "stages.2"]
    assert [len(stage) for stage in model.net.stages] == [1, 1, 2]
    deeper = BACKBONES.build("small-resnet", shape, 5, width=8, stages=2, blocks=2, last_blocks=3)
    assert deeper.info.feature_dim == 16 and [len(stage) for stage in deeper.net.stages] == [2, 3]


def test_pre_activation_is_the_block_output_before_its_final_relu():
    torch.manual_seed(0)
    model = BACKBONES.build("small-resnet", (3, 16, 16), 5).eval()
    x = torch.randn(3, 3, 16, 16)
    out = model(x)
    net = model.net
    h = net.stages[2][0](net.stages[1](net.stages[0](net.stem(x))))
    block = net.stages[2][1]
    residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h)))))
    pre = residual + h  # the last block's shortcut is the identity: the previous block's post-ReLU output
    assert (h >= 0).all()
    torch.testing.assert_close(out.feature, pre.mean(dim=(2, 3)))
    torch.testing.assert_close(out.feature_post, F.relu(pre).mean(dim=(2, 3)))
    torch.testing.assert_close(out.logits, F.linear(F.relu(pre).mean(dim=(2, 3)), net.fc.weight, net.fc.bias))
    assert (out.feature < 0).any()  # before the ReLU: negative entries survive the pooling


def test_gradients_reach_every_parameter():
    model = BACKBONES.build("small-resnet", (1, 12, 12), 3)
    out = model(torch.randn(4, 1, 12, 12))
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 0])) + out.feature.pow(2).mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_inputs_and_settings_are_one_line_errors():
    with pytest.raises(UserError, match="image-like input"):
        BACKBONES.build("small-resnet", (8,), 3)
    with pytest.raises(UserError, match="last_blocks >= 1"):
        BACKBONES.build("small-resnet", (1, 8, 8), 3, blocks=0)
