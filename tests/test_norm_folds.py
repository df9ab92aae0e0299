"""A removed channel's constant, folded off the running mean of the batch norm that alone
reads the layer: the same function in training and in evaluation, step after step, and
the same network again when a checkpoint replays the surgery."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.persistence.history import record, replay

DEAD = 3


class Chain(nn.Module):
    """conv → bn → relu → 1x1 conv without bias → ``norm``: the 1x1 conv reads the dead
    channels' constant ``relu(β)`` as the same value at every position."""

    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 6, 1, bias=False), norm(6)
        self.fc = nn.Linear(6, 4)

    def head(self, x):
        return torch.relu(self.b1(self.c1(x)))

    def forward(self, x):
        return self.fc(torch.relu(self.n2(self.c2(self.head(x)))).mean((2, 3)))


class Shared(Chain):
    """The norm is called twice: a shift taken off its running mean would shift both calls."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(8, 6, 1, bias=False)

    def forward(self, x):
        y = self.head(x)
        return self.fc((torch.relu(self.n2(self.c2(y))) + torch.relu(self.n2(self.c3(y)))).mean((2, 3)))


class Branch(Chain):
    """The layer's output is read by the norm and by something else."""

    def forward(self, x):
        z = self.c2(self.head(x))
        return self.fc((torch.relu(self.n2(z)) + z).mean((2, 3)))


class OwnForward(nn.BatchNorm2d):
    """A batch norm subclass with a forward of its own: nothing is known about its statistics."""

    def forward(self, x):
        return super().forward(x) * 2.0


def _trained_stats(model):
    """Running statistics away from their initial values, so a wrong shift shows."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 6, 6, dtype=torch.float64) * 2 + 1)


def _pruned(model):
    """The model with ``DEAD`` channels of ``b1`` dead (γ = 0, β > 0: each emits a constant),
    pruned; returns the analysed graph and the surgery."""
    model = model.double()
    _trained_stats(model)
    with torch.no_grad():
        model.b1.weight[:DEAD] = 0.0
        model.b1.bias[:DEAD] = torch.linspace(0.5, 1.5, DEAD, dtype=torch.float64)
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    alive = fxs.liveliness(graph)
    plan = fxs.plan(graph, alive, target=None, scheme="prune")
    return graph, fxs.rewrite(graph, plan)


def _same(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def _same_in_training_and_after(old, new):
    """Forward both in training mode on the same batches (running statistics move), then
    in evaluation mode: the outputs agree at every step."""
    g = torch.Generator().manual_seed(0)
    old.train(), new.train()
    for _ in range(4):
        x = torch.randn(5, 3, 6, 6, generator=g, dtype=torch.float64) * 3 - 1
        assert _same(old(x), new(x))
    old.eval(), new.eval()
    x = torch.randn(3, 3, 9, 7, generator=g, dtype=torch.float64)
    assert _same(old(x), new(x))


@pytest.mark.parametrize("norm", [
    nn.BatchNorm2d,
    lambda c: nn.BatchNorm2d(c, momentum=None),                 # cumulative average
    lambda c: nn.BatchNorm2d(c, track_running_stats=False),     # batch statistics only
    lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
], ids=["momentum", "cumulative", "untracked", "instance"])
def test_a_constant_read_by_a_batch_norm_alone_goes_into_its_running_mean(norm):
    model = Chain(norm)
    graph, surgery = _pruned(model)
    assert surgery.folded["c2"] == "norm" and "c2" not in surgery.folds
    assert not any(isinstance(n.target, str) and n.target.startswith("_fxs_fold")
                   for n in surgery.module.graph.nodes)      # nothing added to the graph
    assert surgery.module.b1.weight.shape[0] == 8 - DEAD
    _same_in_training_and_after(model, surgery.module)


@pytest.mark.parametrize("make", [
    Shared, Branch, lambda: Chain(OwnForward), lambda: Chain(lambda c: nn.GroupNorm(2, c)),
], ids=["norm called twice", "layer read twice", "own forward, traced through", "groupnorm"])
def test_elsewhere_the_constant_is_added_after_the_layer(make):
    model = make()
    _, surgery = _pruned(model)
    assert set(surgery.folded.values()) == {"constant"}     # (by node: traced through, c2 is renamed)
    _same_in_training_and_after(model, surgery.module)


def test_a_replayed_surgery_is_the_same_network():
    """The running mean travels in the state dict; the record holds no fold for it."""
    model = Chain()
    graph, surgery = _pruned(model)
    again = replay(graph, record(surgery))
    again.module.load_state_dict(surgery.module.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert _same(again.module(x), surgery.module(x))
    assert _same(again.module(x), model(x))
