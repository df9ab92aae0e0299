"""Death by activations (DemP's test): known answers on hand-made models, and removal of
what it finds dead keeps the function on the death set (random CNNs)."""
import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.judging.activations import activation_liveliness, activation_peaks
from helpers.surgery import TOO_BIG, randomise_norms
from randomnets import examples, nets
from zoo import SUBSET, sweep


def batches(n=3, shape=(4, 3, 6, 6), dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


def test_a_unit_is_dead_when_its_activation_is_zero_on_every_sample():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[0].weight[1:] = 0
        model[0].bias[1:] = torch.tensor([-1.0, 0.0, 0.5])    # dead, dead (zero), constant 0.5
    graph = fxs.analyze(model, torch.randn(1, 3, 6, 6))
    peaks = activation_peaks(graph, batches())
    assert peaks["0"][1:].tolist() == [0.0, 0.0, 0.5] and peaks["0"][0] > 0
    assert activation_liveliness(graph, batches())["0"].tolist() == [True, False, False, True]
    assert activation_liveliness(graph, batches(), epsilon=0.6)["0"].tolist() == [True, False, False, False]
    with torch.no_grad():
        model[0].bias[1] = float("nan")                          # broken, not dead
    assert activation_liveliness(graph, batches())["0"].tolist() == [True, True, False, True]


def test_a_batch_of_a_death_set_may_carry_labels_and_training_mode_is_kept():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = fxs.analyze(model, torch.randn(1, 3, 6, 6))
    graph.module.train()
    with_labels = [(x, torch.zeros(len(x))) for x in batches()]
    labelled, plain = activation_peaks(graph, with_labels), activation_peaks(graph, batches())
    assert all(np.array_equal(labelled[k], plain[k]) for k in plain)
    assert graph.module.training and graph.module.get_submodule("1").training
    assert torch.equal(graph.module.get_submodule("1").running_mean, torch.zeros(4))   # eval: stats untouched
    with pytest.raises(fxs.FxSurgeonError, match="death set is empty"):
        activation_peaks(graph, [])


class Trunk(nn.Module):
    """A residual trunk written by ``a`` and ``b``; read by ``b`` (a's output) and ``c``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        r1 = torch.relu(self.a(x))
        return self.c(r1 + torch.relu(self.b(r1)))


def test_a_coupled_channel_is_dead_only_when_dead_at_every_read():
    model = Trunk()
    with torch.no_grad():
        for conv in (model.a, model.b):
            conv.weight[2:] = 0
        model.a.bias[2:] = -1.0        # channels 2 and 3 die after a
        model.b.bias[2] = 1.0          # ... channel 2 comes back through b
        model.b.bias[3] = -1.0
    graph = fxs.analyze(model, torch.randn(1, 3, 6, 6))
    (trunk,) = [d for d in graph.free_dims if d.kind == "residual trunk"]
    assert activation_liveliness(graph, batches())[trunk.name].tolist() == [True, True, True, False]


class InPlace(nn.Module):
    """``b`` reads ``a``; then ``a`` is zeroed in place and ``c`` reads it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = self.b(a)
        a.mul_(0)
        return b + self.c(a)


def test_a_read_is_what_its_layer_sees_even_when_changed_in_place_later():
    model = InPlace()
    with torch.no_grad():
        model.a.weight.zero_()
        model.a.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    graph = fxs.analyze(model, torch.randn(1, 3, 6, 6))
    (hidden,) = graph.free_dims
    assert activation_liveliness(graph, batches())[hidden.name].tolist() == [True, False, True, False]


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4)

    def forward(self, x):
        a = torch.softmax(torch.relu(self.q(x)) @ torch.relu(self.k(x)).transpose(-1, -2), -1)
        return self.o(a @ torch.relu(self.v(x)))


def test_channels_read_by_a_contraction_are_never_called_dead():
    model = Attention()
    with torch.no_grad():
        for lin in (model.q, model.k, model.v):
            lin.weight.zero_()
            lin.bias.fill_(-1.0)                    # every unit's activation is zero
    graph = fxs.analyze(model, torch.randn(1, 5, 4))
    alive = activation_liveliness(graph, batches(shape=(2, 5, 4)))
    by_producer = {d.producers[0]: alive[d.name] for d in graph.free_dims}
    assert by_producer["q"].all() and not by_producer["v"].any()


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.data())
def test_removing_activation_dead_channels_keeps_the_function_on_the_death_set(net, data):
    model, x = net
    model = model.double().eval()
    randomise_norms(model, data.draw(st.integers(0, 10)))
    with torch.no_grad():   # drive random BatchNorm channels below zero: whatever ReLU follows dies
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                kill = torch.tensor(data.draw(st.lists(st.booleans(), min_size=m.num_features,
                                                       max_size=m.num_features)))
                m.bias[kill] = -1e4
    graph = fxs.analyze(model, x.double())
    death_set = batches(shape=(4, 3, 8, 8), dtype=torch.float64)
    alive = activation_liveliness(graph, death_set)
    surgery = fxs.rewrite(graph, fxs.plan(graph, alive, target=None, scheme="prune"), fold=False)
    new = surgery.module.eval()
    for xb in death_set:
        torch.testing.assert_close(new(xb), model(xb), rtol=1e-9, atol=1e-9)
    removed = sum(d.width - len(d.survivors) for d in surgery.plan.dims.values())
    assert removed <= sum(int((~a).sum()) for a in alive.values())


def _kill_biases(model: nn.Module, fraction: float = 0.3, seed: int = 0) -> None:
    """Drive a random ``fraction`` of the biases of every norm and layer to -1e4: the
    units that an activation follows die (ReLU, GELU, SiLU, Hardswish all give 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Conv2d, nn.Linear)) and \
                    getattr(m, "bias", None) is not None:
                m.bias[torch.rand(m.bias.shape, generator=g) < fraction] = -1e4


@pytest.mark.parametrize("name", sweep(SUBSET))
def test_torchvision_model_loses_only_what_is_dead_on_the_death_set(name):
    if name in TOO_BIG:
        pytest.skip("over 140M parameters: float64 surgery copies do not fit beside another worker")
    model = torchvision.models.get_model(name).double().eval()
    randomise_norms(model)
    _kill_biases(model)
    size = 299 if name == "inception_v3" else 224
    g = torch.Generator().manual_seed(0)
    death_set = [torch.randn(2, 3, size, size, dtype=torch.float64, generator=g) for _ in range(2)]
    graph = fxs.analyze(model, death_set[0][:1])
    alive = activation_liveliness(graph, death_set)
    plan = fxs.plan(graph, alive, target=None, scheme="prune")
    assert sum(d.width - d.new_width for d in plan.dims.values()) > 0       # something died
    new = fxs.rewrite(graph, plan, fold=False).module.eval()
    with torch.no_grad():
        for x in death_set:
            torch.testing.assert_close(new(x), model(x), rtol=1e-9, atol=1e-9)
