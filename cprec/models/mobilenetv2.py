"""MobileNetV2 for CIFAR (stride-1 stem, first two downsamplings removed), in two versions:

- ``mobilenetv2``: torchvision's block (ReLU6, no expansion conv at expansion 1, a residual
  only where input and output shapes agree);
- ``cpt_mobilenetv2``: the one in CPT's code (``CPTMobileNetV2``: ReLU, an expansion conv in
  every block, a 1x1 conv + BN shortcut at stride 1 where the widths differ).
"""

from __future__ import annotations

import torch
from torch import nn

from cprec.config import ModelConfig
from cprec.tasks.base import DatasetInfo

# (expansion, out channels, blocks, stride): the ImageNet table with CIFAR strides (both
# versions; CPT's code has the same table)
CIFAR_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 32, 3), nn.ReLU6(inplace=True)]
        cin = 32
        for expansion, cout, blocks, stride in CIFAR_CFG:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv2(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return MobileNetV2(info.channels, info.classes)


class CPTBlock(nn.Module):
    """CPT's MobileNetV2 ``Block`` (cpt_cifar/models.py): expand (a 1x1 conv even at
    expansion 1), depthwise 3x3, project, each followed by BatchNorm, ReLU (not ReLU6) after
    the first two. At stride 1 a residual is added: the input itself, or where the widths
    differ a 1x1 conv + BatchNorm of it; none at stride 2.

    CPT's code runs the depthwise conv at ``DWS_BITS``/``DWS_GRAD_BITS``, names its code
    never defines; here it takes the schedule's bits like every other conv.
    """

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * cin
        self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride
        self.shortcut: nn.Module | None = None
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride != 1:
            return out
        return out + (x if self.shortcut is None else self.shortcut(x))


class CPTMobileNetV2(nn.Module):
    """CPT's CIFAR MobileNetV2 (cpt_cifar/models.py, after kuangliu/pytorch-cifar): a 3x3
    stem of 32 channels at stride 1, the blocks of ``CIFAR_CFG``, a 1x1 conv to 1280, BN and
    ReLU, average pooling, one Linear; no dropout, PyTorch's default initialization. CPT pools
    4x4 (the final map of a 32x32 input); the adaptive pooling here is the same there and
    also takes smaller images."""

    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, cin = [], 32
        for expansion, cout, n, stride in CIFAR_CFG:
            for i in range(n):
                blocks.append(CPTBlock(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


def cpt_mobilenetv2(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return CPTMobileNetV2(info.channels, info.classes)
