"""DenseNet-BC for CIFAR as DenseNet-100-40 in Neural Rejuvenation.

Post-activation (conv-BN-ReLU), like the paper's own code, so each new feature map is
followed by the BatchNorm γ that measures its liveliness; bottleneck layers of width
4k, transitions with compression 0.5, global average pooling, one classifier.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DenseLayer(nn.Module):
    """conv1x1 (4k)-BN-ReLU, conv3x3 (k)-BN-ReLU, concatenated to the input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bottleneck = _conv_bn_relu(cin, 4 * growth, 1)
        self.conv = _conv_bn_relu(4 * growth, growth, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], 1)


class DenseNetBC(nn.Module):
    """Three dense blocks of ``(depth - 4) / 6`` layers with transitions in between."""

    def __init__(self, depth: int = 100, growth: int = 40, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        c = 2 * growth
        layers: list[nn.Module] = [_conv_bn_relu(3, c, 3)]
        for block in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if block < 2:
                layers += [_conv_bn_relu(c, c // 2, 1), nn.AvgPool2d(2)]
                c //= 2
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def densenet_bc100_k40_cifar(num_classes: int = 10) -> DenseNetBC:
    """DenseNet-BC-100 with growth rate 40 for CIFAR (8.27M parameters for 10 classes)."""
    return DenseNetBC(100, 40, num_classes)
