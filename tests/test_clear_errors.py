"""Inputs a tester found giving raw tracebacks or misleading words: each is handled, or
refused with one line that names its cause, before any work."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs


class BatchDict(nn.Module):
    """A forward that takes one dict, as data pipelines hand batches over."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, batch):
        x = self.bn(self.conv(batch["image"])).relu()
        x = self.bn2(self.conv2(x)).relu() * batch["scale"]
        return self.head(x.mean((2, 3)))


def _batch(n=1):
    return {"image": torch.randn(n, 3, 8, 8), "scale": torch.rand(n, 1, 1, 1) + 0.5}


@pytest.mark.parametrize("scheme", ["nr", "cr"])
def test_a_dict_argument_is_analysed_and_rewritten_keeping_the_function(scheme):
    torch.manual_seed(0)
    model, batch = BatchDict().eval(), _batch()
    with torch.no_grad():
        model.bn.weight[:3] = 0
        model.bn2.weight[:2] = 0
    graph = fxs.analyze(model, (batch,), frontend="fx")
    assert {d.name: d.free for d in graph.dims if d.kind == "input"} == {"batch['image']": False,
                                                                         "batch['scale']": False}
    assert graph.input_shapes == [(1, 3, 8, 8), (1, 1, 1, 1)]
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme=scheme))
    five = _batch(5)
    torch.testing.assert_close(surgery.module(five), model(five))


def test_a_dict_as_the_example_inputs_is_refused_saying_how_to_pass_it():
    with pytest.raises(fxs.FxSurgeonError, match=r"a dict \(keys \['image', 'scale'\]\) is not taken as "
                                                 r"keyword arguments: pass \(inputs,\)"):
        fxs.analyze(BatchDict(), _batch())


@pytest.mark.parametrize("build", [
    lambda m, x: fxs.analyze(m, x),
    lambda m, x: fxs.NeuralRejuvenation(m, x, torch.optim.SGD(m.parameters(), lr=0.1)),
    lambda m, x: fxs.DemP(m, x, torch.optim.SGD(m.parameters(), lr=0.1), [(x,)], total_steps=10),
], ids=["analyze", "nr", "demp"])
def test_a_compiled_model_is_refused_saying_what_to_compile(build):
    from fxsurgeon.zoo import digits_cnn
    compiled = torch.compile(digits_cnn(), backend="eager")
    with pytest.raises(fxs.UntraceableModelError, match=r"compiled \(torch.compile\): pass the model itself "
                                                        r"\(its ._orig_mod\).*torch.compile\(nr.model\)"):
        build(compiled, torch.randn(1, 1, 8, 8))
