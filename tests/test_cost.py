"""The cost model against counts worked out by hand."""
import numpy as np
import pytest
import torch
from torch import nn

import fxsurgeon as fxs


def mask(width, dead):
    m = np.ones(width, bool)
    m[list(dead)] = False
    return m


class Plain(nn.Module):
    """conv(3→8)-BN-ReLU-conv(8→6)-BN-ReLU-flatten(6x4x4)-linear(96→5)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.flatten(1))


def test_plain_chain_with_flatten():
    g = fxs.analyze(Plain(), torch.randn(1, 3, 4, 4))
    assert [d.name for d in g.dims] == ["x", "c1", "c2", "fc"]
    assert g["c2"].free and not g["fc"].free
    alive = {"c1": mask(8, [0, 3, 7]), "c2": mask(6, [1])}
    n1, n2 = 5, 5
    params = (3 * n1 * 9 + n1) + 2 * n1 + (n1 * n2 * 9) + 2 * n2 + (n2 * 16 * 5 + 5)
    assert g.count("params", alive) == params
    flops = 16 * (n1 * 3 * 9) + 16 * (n2 * n1 * 9) + n2 * 16 * 5
    assert g.count("flops", alive) == flops
    assert g.utilization(alive, "params") == pytest.approx(params / g.count("params"))
    fc = next(m for m in g["c2"].members if m.tensor == "fc.weight")
    assert fc.axis == 1 and np.array_equal(fc.channels, np.repeat(np.arange(6), 16))


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1, bias=False)
        self.a = nn.Conv2d(8, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 8, 1, bias=False)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.head = nn.Conv2d(8, 2, 1, bias=False)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b(torch.relu(self.a(x)))
        return self.head(self.dw(self.g(x)))


def test_residual_grouped_and_depthwise():
    g = fxs.analyze(Res(), torch.randn(1, 3, 2, 2))
    trunk = g["stem+1"]
    assert trunk.producers == ["stem", "b"] and trunk.kind == "residual trunk"
    assert g["g"].multiple_of == 2 and trunk.multiple_of == 2
    assert "dw" not in {d.name for d in g.dims}   # depthwise outputs are its inputs' channels
    alive = {"stem+1": mask(8, [0, 1]), "g": mask(8, [5, 6])}
    t, a, gg = 6, 4, 6
    params = 3 * t + t * a + a * t + gg * (t / 2) * 9 + gg * 9 + 2 * gg
    assert g.count("params", alive) == params
    assert g.count("flops", alive) == 4 * params - 0    # every layer is applied at 2x2 positions
    share = g.attributable("params")
    assert share["a"] == 8 * 4 + 4 * 8


def test_alive_masks_are_validated():
    g = fxs.analyze(Plain(), torch.randn(1, 3, 4, 4))
    with pytest.raises(fxs.FxSurgeonError, match="unknown dimension 'nope'"):
        g.count("params", {"nope": np.ones(3, bool)})
    with pytest.raises(fxs.FxSurgeonError, match="has 3 entries, the dimension has width 8"):
        g.count("params", {"c1": np.ones(3, bool)})
    with pytest.raises(fxs.FxSurgeonError, match="unknown metric"):
        g.count("bytes")


def test_per_layer_breakdown_adds_up():
    g = fxs.analyze(Plain(), torch.randn(1, 3, 4, 4))
    for metric in ("params", "flops"):
        assert sum(g.count(metric, by="layer").values()) == g.count(metric)
    assert g.count("params", by="param")["fc.weight"] == 96 * 5
