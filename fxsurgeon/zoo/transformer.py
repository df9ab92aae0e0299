"""Small transformer-style networks for the 8x8 digits: a ViT and a ConvNeXt, with
LayerNorms and GELU MLPs and no BatchNorm, so that every free channel is judged by a
gate (see :mod:`fxsurgeon.surgery.judges`). The ViT's attention is torch's
``nn.MultiheadAttention``, whose heads stay as they are (its embedding is pinned)."""
from __future__ import annotations

import torch
from torch import nn


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2, self.mlp = nn.LayerNorm(dim), _Mlp(dim, hidden)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patches of 2x2 pixels as tokens, a learned position embedding, pre-norm blocks of
    attention and a GELU MLP, mean pooling and a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image: int = 8, dim: int = 32,
                 depth: int = 2, heads: int = 4, hidden: int = 64):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, (image // 2) ** 2, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads, hidden) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, expansion: int):
        super().__init__()
        self.dw, self.norm = nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, expansion * dim)

    def forward(self, x):
        return x + self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    """A patchify stem, ConvNeXt blocks (depthwise conv, channels-last LayerNorm, a GELU
    expansion), global average pooling and a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dim: int = 32, depth: int = 2,
                 expansion: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.blocks = nn.Sequential(*[_ConvNeXtBlock(dim, expansion) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


def vit_digits(num_classes: int = 10) -> TinyViT:
    """A ViT for 1x8x8 digits: 16 tokens of 32 channels, 2 blocks of 4 heads, MLPs of 64."""
    return TinyViT(num_classes)


def convnext_digits(num_classes: int = 10) -> TinyConvNeXt:
    """A ConvNeXt for 1x8x8 digits: 32 channels on a 4x4 map, 2 blocks expanding to 128."""
    return TinyConvNeXt(num_classes)
