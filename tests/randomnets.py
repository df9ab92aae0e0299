"""Random traceable CNNs for property tests: conv/BN/activation, residual adds,
concatenations, chunk splits, pooling, squeeze-excitation gates, grouped and
depthwise convs, a block called twice, tied weights, a buffer read in forward,
transposed convs (dense, grouped, depthwise) in a down-up pair, GroupNorm, functional
convs, and a linear head. ``nets()`` is the hypothesis strategy."""
from __future__ import annotations

import os

import torch
from hypothesis import strategies as st
from torch import nn


def examples(n: int) -> int:
    """Hypothesis examples for a property test: ``n`` times FXS_HYPOTHESIS_SCALE (default 1),
    so a stress run is ``FXS_HYPOTHESIS_SCALE=10 make test``."""
    return n * int(os.environ.get("FXS_HYPOTHESIS_SCALE", "1"))


ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish, "identity": nn.Identity}


class ConvBlock(nn.Module):
    def __init__(self, cin, cout, k=3, groups=1, act="relu", bias=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.act = ACTS[act]()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class Concat(nn.Module):
    def __init__(self, branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class Split(nn.Module):
    """Halves by chunk, one half through a block, then concatenated back."""

    def __init__(self, c, act):
        super().__init__()
        self.block = ConvBlock(c // 2, c // 2, 3, act=act)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([a, self.block(b)], 1)


class Gate(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class Twice(nn.Module):
    """One block applied at two places (one set of weights, two call sites)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(self.block(x))


class Tied(nn.Module):
    """Two convs sharing one weight, each with its own norm."""

    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b.weight = self.a.weight
        self.na, self.nb = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.nb(self.b(torch.relu(self.na(self.a(x))))))


class Shift(nn.Module):
    """A per-channel buffer added in forward."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("shift", torch.randn(1, c, 1, 1))

    def forward(self, x):
        return x + self.shift


class DownUp(nn.Module):
    """A strided conv down, a transposed conv (dense, grouped or depthwise) back up."""

    def __init__(self, c, groups, act):
        super().__init__()
        self.down = ConvBlock(c, c, 3, act=act)
        self.down.conv.stride = (2, 2)
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.up(self.down(x))))


class Grouped(nn.Module):
    """A conv then GroupNorm (one group per channel, or fewer)."""

    def __init__(self, c, c2, groups):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(c, c2, 3, padding=1), nn.GroupNorm(groups, c2)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class Functional(nn.Module):
    """``F.conv2d`` with a parameter of the block's own, then a BatchNorm."""

    def __init__(self, c, c2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c2, c, 3, 3) / (3 * c) ** 0.5)
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x):
        return torch.relu(self.bn(nn.functional.conv2d(x, self.weight, padding=1)))


class Net(nn.Module):
    def __init__(self, blocks, c, classes):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(x), 1), 1))


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def nets(draw, max_blocks=5):
    """A random ``(model, example_input)`` pair (its weights drawn too, so a failure replays)."""
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    c, size = 3, 8
    widths = st.integers(2, 12)
    blocks = [ConvBlock(c, c2 := draw(widths) * 2, 3, act=draw(st.sampled_from(list(ACTS))))]
    c = c2
    for _ in range(draw(st.integers(0, max_blocks))):
        kind = draw(st.sampled_from(["conv", "grouped", "depthwise", "residual", "concat",
                                     "split", "gate", "pool", "twice", "tied", "buffer", "downup",
                                     "groupnorm", "functional"]))
        act = draw(st.sampled_from(list(ACTS)))
        if kind == "conv":
            c2 = draw(widths)
            blocks.append(ConvBlock(c, c2, draw(st.sampled_from([1, 3])), act=act,
                                    bias=draw(st.booleans())))
        elif kind == "grouped":
            g = draw(st.sampled_from(_divisors(c)))
            c2 = g * draw(st.integers(1, 4))
            blocks.append(ConvBlock(c, c2, 3, groups=g, act=act))
        elif kind == "depthwise":
            c2 = c * draw(st.sampled_from([1, 1, 2]))
            blocks.append(ConvBlock(c, c2, 3, groups=c, act=act))
        elif kind == "residual":
            if draw(st.booleans()):
                inner = ConvBlock(c, c, 3, act=act)
            else:
                h = draw(widths)
                inner = nn.Sequential(ConvBlock(c, h, 1, act=act), ConvBlock(h, c, 3, act="identity"))
            blocks.append(Residual(inner))
            c2 = c
        elif kind == "concat":
            outs = draw(st.lists(widths, min_size=2, max_size=3))
            blocks.append(Concat([ConvBlock(c, o, draw(st.sampled_from([1, 3])), act=act) for o in outs]))
            c2 = sum(outs)
        elif kind == "split":
            if c % 2:
                continue
            blocks.append(Split(c, act))
            c2 = c
        elif kind == "gate":
            blocks.append(Gate(c, draw(widths)))
            c2 = c
        elif kind == "twice":
            blocks.append(Twice(ConvBlock(c, c, 3, act=act)))
            c2 = c
        elif kind == "tied":
            blocks.append(Tied(c))
            c2 = c
        elif kind == "buffer":
            blocks.append(Shift(c))
            c2 = c
        elif kind == "downup":
            if size < 2 or size % 2:
                continue
            blocks.append(DownUp(c, draw(st.sampled_from([1, c] + _divisors(c)[1:2])), act))
            c2 = c
        elif kind == "groupnorm":
            c2 = draw(widths)
            blocks.append(Grouped(c, c2, draw(st.sampled_from([c2] + _divisors(c2)[:2]))))
        elif kind == "functional":
            c2 = draw(widths)
            blocks.append(Functional(c, c2))
        else:
            if size < 2:
                continue
            blocks.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            size //= 2
            c2 = c
        c = c2
    return Net(blocks, c, draw(st.integers(2, 5))), torch.randn(1, 3, 8, 8)
