"""The reference network a rewrite keeps: ``run_graph`` with tensors swapped in by name,
each made when a node reads it (:class:`~fxsurgeon.judging.reference.Zeroed`)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fxsurgeon as fxs
from fxsurgeon.judging.reference import Zeroed, run_graph


class Tied(nn.Module):
    """A module parameter, a parameter read by a function (a get_attr) and a weight two
    modules share."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.scale = nn.Parameter(torch.randn(6))
        self.norm = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.b(F.relu(self.norm(self.a(x)) * self.scale))


def test_swapped_in_tensors_reach_module_calls_functions_and_every_name_of_a_tied_weight():
    model = Tied().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
    x = torch.randn(3, 6)
    graph = fxs.analyze(model, x)
    zeroed = Zeroed(graph.module)
    zeroed.zero("a.weight", 0, np.array([1, 4]))
    zeroed.zero("a.weight", 1, np.array([2]))
    zeroed.zero("scale", 0, np.array([0, 5]))
    zeroed.zero("norm.running_mean", 0, np.array([3]))
    swapped = {"a.weight": zeroed["a.weight"],        # b.weight too: they are tied
               "scale": zeroed["scale"], "norm.running_mean": zeroed["norm.running_mean"]}
    want = functional_call(model, swapped, (x,))
    got, _, _ = run_graph(graph.module, (x,), zeroed)
    assert torch.equal(got, want) and not torch.equal(got, model(x))
    assert zeroed["a.weight"][1].abs().sum() == 0 and zeroed["a.weight"][:, 2].abs().sum() == 0
    assert model.a.weight[1].abs().sum() > 0          # the model's own tensors are untouched
    assert [m.training for m in model.modules()] == [False] * 4


def test_a_name_that_is_no_parameter_or_buffer_is_an_error_not_ignored():
    graph = fxs.analyze(Tied().eval(), torch.randn(3, 6))
    with pytest.raises(fxs.FxSurgeonError, match="cannot swap in"):
        run_graph(graph.module, (torch.randn(3, 6),), {"a.weight.T": torch.zeros(6, 6)})


def test_the_self_check_tells_a_small_change_of_small_outputs_from_rounding():
    """float64 rounding moves an exact rewrite's outputs by at most ~1e-13 of their size; a
    change of 1.4e-8 of outputs under 1 (a SwiftFormer's, when a weight was drawn afresh)
    once passed, measured against a magnitude of at least 1."""
    from fxsurgeon.surgery.selfcheck import difference
    y = torch.linspace(-0.5, 0.5, 11, dtype=torch.float64)
    assert difference(y, y * (1 + 1.4e-8)) > 1
    assert difference(y, y * (1 + 1e-13)) <= 1
    zeros = torch.zeros(4, dtype=torch.float64)
    assert difference(zeros, zeros + 1e-17) <= 1          # rounding noise on an output of zeros
    assert difference(y.float(), y.float() * (1 + 1e-5)) <= 1
