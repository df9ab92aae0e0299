"""Analyse a hand-written model: see which widths are free, which are pinned and why.

    python examples/inspect_custom_model.py
"""
import torch
from torch import nn

import fxsurgeon as fxs


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False)   # depthwise
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.se = SqueezeExcite(2 * c)
        self.conv2, self.bn3 = nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.se(torch.relu(self.bn2(self.dw(y))))
        return x + self.bn3(self.conv2(y))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(Block(32), Block(32))
        self.norm = nn.GroupNorm(4, 32)             # statistics over channel groups: pins the trunk
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x))).mean((2, 3)))


if __name__ == "__main__":
    graph = fxs.analyze(Net(), torch.randn(1, 3, 32, 32))
    print(graph.summary())
    print("\nwhy the trunk is pinned:", *graph["stem.0+2"].reasons, sep="\n  ")
