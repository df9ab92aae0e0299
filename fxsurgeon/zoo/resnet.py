"""Bottleneck ResNet for CIFAR as ResNet-164 in Neural Rejuvenation.

Post-activation (conv-BN-ReLU, He et al. 2016a), like the paper's own code, so every
channel is followed by the BatchNorm γ that measures its liveliness.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) followed by BatchNorm."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3-BN-ReLU, conv1x1-BN, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_bn(cin, planes, 1)
        self.conv2 = conv_bn(planes, planes, 3, stride)
        self.conv3 = conv_bn(planes, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        return self.relu(self.conv3(out) + shortcut)


class CifarResNet(nn.Module):
    """CIFAR bottleneck ResNet with ``(depth - 2) / 9`` blocks per stage (widths 16/32/64 x4)."""

    def __init__(self, depth: int = 164, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"bottleneck ResNet depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.stem = conv_bn(3, 16, 3)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(cin, planes, stride if i == 0 else 1))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


def resnet164_cifar(num_classes: int = 10) -> CifarResNet:
    """ResNet-164 for CIFAR (1.70M parameters for 10 classes)."""
    return CifarResNet(164, num_classes)
