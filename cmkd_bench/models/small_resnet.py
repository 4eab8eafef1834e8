"""`small-resnet`: a small residual CNN for the embedded sets, in small-cnn's cost class.

ResNet-18's BasicBlock at small widths: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut (identity,
or conv1x1-BN where the shape changes), then the block's final ReLU. As in ResNet-18 the block
output before that ReLU (BN output plus the post-ReLU shortcut) is the pre-activation feature
FeatureModel reads (its pre-hook on the last block's `act`); pooled after the ReLU it is the
classifier's input (`feature_post`). Why it exists: the premise of FD-CMKD (a high cross-modal
cosine of the pooled feature's low band) was observed on ResNet-18, whose residual sums have a
large positive mean; small-cnn has no residual path (see `analyze freq-similarity`).

Layout (defaults width 16, stages 3, blocks 1, last_blocks 2): a 3x3 stem conv-BN-ReLU at
`width`, then stages of BasicBlocks at width x 2^i (`blocks` each, `last_blocks` in the last
stage), the first block of every stage after the first with stride 2, global average pooling and
a linear head: the same stage widths and strides as small-cnn (so D = 64 by default). The last
stage has two blocks so that its final block's shortcut is the identity, as in ResNet-18 (two
blocks per stage): the pre-activation feature is then BN output plus a post-ReLU map, whose
positive mean is what the issue is about; with one block the shortcut would be the strided 1x1
projection (a BN output, near zero-mean). Takes any C x H x W input (images, 1 x F x T
spectrograms), as small-cnn does.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ..errors import UserError
from ..registry import BACKBONES
from .backbones import _described, _image_shape
from .features import FeatureModel


class BasicBlock(nn.Module):
    """ResNet's basic block; `act` (not in-place) is the final ReLU, after the residual sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                   bn=nn.BatchNorm2d(cout)))
                         if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                              bn=nn.BatchNorm2d(widths[0]), act=nn.ReLU()))
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(cin if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1) for b in range(blocks[i])]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for module in self.modules():  # ResNet's initialisation (torchvision, and the FD-CMKD reference's)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


@BACKBONES.register("small-resnet", tasks=("classification",),
                    description="small residual CNN (ResNet basic blocks) for small images, small-cnn's cost class")
def small_resnet(input_shape: tuple[int, ...], num_classes: int, width: int = 16, stages: int = 3,
                 blocks: int = 1, last_blocks: int = 2) -> FeatureModel:
    chans, _, _ = _image_shape("small-resnet", input_shape)
    if stages < 1 or width < 1 or blocks < 1 or last_blocks < 1:
        raise UserError(f"small-resnet needs stages, width, blocks and last_blocks >= 1, got {stages}, {width}, "
                        f"{blocks}, {last_blocks}")
    per_stage = (blocks,) * (stages - 1) + (last_blocks,)
    net = SmallResNet(chans, num_classes, tuple(width * 2**i for i in range(stages)), per_stage)
    names = [f"stages.{i}" for i in range(stages)]
    model = FeatureModel(net, "small-resnet", num_classes, names, head_module="fc",
                         preact_module=f"stages.{stages - 1}.{last_blocks - 1}.act")
    return _described(model, input_shape)
