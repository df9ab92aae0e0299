"""A small VGG-style network for small images (the 8x8 digits of the demo)."""
from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers in two stages with max pooling, then a linear head on the
    flattened 2x2 map (so its columns repeat each channel four times)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        layers, c = [], in_channels
        for w in (width, width, "M", 2 * width, 2 * width, "M"):
            if w == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(4 * c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> SmallCNN:
    """The demo's network for 1x8x8 digits: 16-16-32-32 channels, 17,754 parameters."""
    return SmallCNN(num_classes, in_channels, width)
