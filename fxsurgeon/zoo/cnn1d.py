"""One-dimensional CNNs for MNIST-1D (sequences of 40 values): four conv-BN-ReLU layers,
a max-pool after the second, global average pooling and a linear head. A BatchNorm γ
follows every channel, as Neural Rejuvenation judges them."""
from __future__ import annotations

from torch import nn


class Cnn1d(nn.Module):
    """Conv1d layers of the given ``widths`` (kernel 5), BN and ReLU after each."""

    def __init__(self, widths: tuple[int, ...] = (32, 32, 32, 32), num_classes: int = 10,
                 in_channels: int = 1):
        super().__init__()
        layers, c = [], in_channels
        for k, w in enumerate(widths):
            layers += [nn.Conv1d(c, w, 5, padding=2, bias=False), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            if k == 1:
                layers.append(nn.MaxPool1d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mnist1d_skewed(num_classes: int = 10) -> Cnn1d:
    """Misallocated on purpose: 64-64-8-8 (most of the capacity early, a bottleneck late)."""
    return Cnn1d((64, 64, 8, 8), num_classes)


def mnist1d_balanced(num_classes: int = 10) -> Cnn1d:
    """About the skewed network's parameter count, spread evenly: 39-39-39-39 (23,722 against 24,058)."""
    return Cnn1d((39, 39, 39, 39), num_classes)


def mnist1d_uniform(num_classes: int = 10) -> Cnn1d:
    """The realistic case: 32 channels in every layer."""
    return Cnn1d((32, 32, 32, 32), num_classes)
