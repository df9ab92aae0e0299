"""Grouped convolutions resized by groups: every group keeps the same width, survivors
stay in their group, new channels join every group alike, and the function is kept."""
import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from helpers.models import block_net
from helpers.surgery import assert_same_function, kill, randomise_norms
from randomnets import ConvBlock, Residual, examples


def block_with_dead(dead):
    """``block_net`` in float64 with random norms, its input and graph, and ``dead``
    channels of the grouped conv's input killed (γ = 0, so they emit ReLU(β))."""
    net = block_net().double().eval()
    randomise_norms(net)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(net, x)
    with torch.no_grad():
        net[1].a.bn.weight[dead] = 0
    return net, x, graph


def grouped_weights(module):
    return {n: m for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}


def assert_groups_even(graph, plan):
    for d in graph.free_dims:
        if d.slots is None or d.grouping:
            continue
        dp = plan.dims[d.name]
        counts = np.bincount(d.slots[dp.survivors], minlength=d.groups)
        assert (counts == counts[0]).all(), (d.name, counts)
        assert dp.new_width % d.groups == 0


def test_a_grouped_dimension_loses_only_what_every_group_can_lose():
    net, x, graph = block_with_dead([0, 1, 5, 10])     # group 0 loses 2, groups 1 and 2 lose 1
    inner = graph["1.a.conv"]
    assert inner.groups == 3 and inner.grouping is None and list(inner.slots) == [0] * 4 + [1] * 4 + [2] * 4
    alive = fxs.liveliness(graph)
    pruned = fxs.plan(graph, alive, target=None, scheme="prune")
    assert len(pruned.dims["1.a.conv"].survivors) == 9          # 3 per group
    assert "each of 3 groups keeps 3" in pruned.dims["1.a.conv"].note
    surgery = fxs.rewrite(graph, pruned)
    assert_same_function(net, surgery.module, x)
    conv = surgery.module.get_submodule("1.b.conv")
    assert (conv.in_channels, conv.groups, tuple(conv.weight.shape[:2])) == (9, 3, (12, 3))
    grown = fxs.plan(graph, alive, target=1.0, scheme="nr", alpha=2.0)
    assert grown.dims["1.a.conv"].new_width == 18
    assert_groups_even(graph, grown)
    surgery = fxs.rewrite(graph, grown)
    assert_same_function(net, surgery.module, x)
    assert sum(p.numel() for p in surgery.module.parameters()) == grown.predicted


def test_new_channels_join_every_group_and_the_map_says_where_each_came_from():
    net, x, graph = block_with_dead([1, 6, 11])      # one per group, each at another place in it
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme="nr", alpha=2.0)
    width = plan.dims["1.a.conv"].new_width
    surgery = fxs.rewrite(graph, plan)
    assert_same_function(net, surgery.module, x)
    ((axis, per_group),) = [m for m in surgery.index_maps["1.b.conv.weight"] if m[0] == 1]
    assert per_group.shape == (3, width // 3)
    added = width // 3 - 3
    for g, dead in enumerate([1, 6, 11]):
        kept = [i for i in range(4) if 4 * g + i != dead]
        assert per_group[g].tolist() == kept + [-1] * added
    old = net[1].b.conv.weight
    carried = surgery.carry("1.b.conv.weight", old, fill=float("nan"))
    new = surgery.module.get_submodule("1.b.conv").weight
    known = ~carried.isnan()
    assert torch.equal(carried[known], new[known])       # the survivors' values, where they sit now


def test_groupings_that_cannot_stay_even_keep_their_width():
    class Two(nn.Module):       # one dimension read by convs of 2 and of 4 groups
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = ConvBlock(3, 8), ConvBlock(8, 8, groups=2), ConvBlock(8, 8, groups=4)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) + self.c(y)

    class Cat(nn.Module):       # a grouped conv reading two dimensions at once
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = ConvBlock(3, 4), ConvBlock(3, 4), ConvBlock(8, 8, groups=2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    x = torch.randn(1, 3, 6, 6)
    assert fxs.analyze(Two(), x)["a.conv"].grouping == "grouped convolutions group it differently"
    graph = fxs.analyze(Cat(), x)
    assert graph["a.conv"].grouping == "a grouped convolution reads it with other channels"
    kill(graph, 0.5)
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme="nr")
    assert plan.dims["a.conv"].new_width == 4 and "reads it with other channels" in plan.dims["a.conv"].note


def test_under_cr_a_grouped_dimension_sheds_its_dead_but_does_not_grow():
    net, x, graph = block_with_dead([1, 5, 9])
    for scheme in ("cr", "ca"):
        plan = fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme=scheme)
        dp = plan.dims["1.a.conv"]
        assert dp.new_width == 9 and not dp.grows and f"grouped convolution under {scheme}" in dp.note
        surgery = fxs.rewrite(graph, plan)
        assert_same_function(net, surgery.module, x)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.sampled_from(["nr", "cr", "ca", "prune"]),
       st.floats(0.0, 0.7), st.integers(0, 2 ** 16), st.booleans())
def test_random_grouped_blocks_keep_the_function_and_their_cost(groups, per_in, per_out, scheme, fraction,
                                                              seed, residual):
    """A grouped conv between two dense ones (and a grouped one after it), any group
    sizes, random dead channels with nonzero constants, every scheme."""
    torch.manual_seed(seed)
    w_in, w_out = groups * per_in, groups * per_out
    body = nn.Sequential(ConvBlock(4, w_in, 1), ConvBlock(w_in, w_out, 3, groups),
                         ConvBlock(w_out, w_out, 3, groups), ConvBlock(w_out, 4, 1))
    net = nn.Sequential(ConvBlock(3, 4), Residual(body) if residual else body, nn.Conv2d(4, 2, 1))
    net = net.double().eval()
    randomise_norms(net, seed)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    graph = fxs.analyze(net, x)
    kill(graph, fraction, seed)
    alive = fxs.liveliness(graph)
    plan = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme)
    assert_groups_even(graph, plan)
    surgery = fxs.rewrite(graph, plan, seed=seed)
    assert_same_function(net, surgery.module, x)
    assert sum(p.numel() for p in surgery.module.parameters()) == plan.predicted
    for name, conv in grouped_weights(surgery.module).items():
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0, name


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4), st.floats(0.2, 0.9), st.integers(0, 2 ** 16))
def test_pruning_grouped_blocks_to_a_budget_keeps_every_group_even(groups, target, seed):
    torch.manual_seed(seed)
    net = block_net(8, 4 * groups, groups).double().eval()
    randomise_norms(net, seed)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    graph = fxs.analyze(net, x)
    try:
        plan = fxs.plan(graph, None, metric="flops", target=target, scheme="prune")
    except fxs.FxSurgeonError as err:
        assert "impossible budget" in str(err)
        return
    assert plan.predicted <= plan.budget
    assert_groups_even(graph, plan)
    surgery = fxs.rewrite(graph, plan)
    recount = fxs.analyze(surgery.module, x).count("params")
    assert sum(p.numel() for p in surgery.module.parameters()) == recount


@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_y_400mf", "regnet_x_400mf"])
def test_torchvision_grouped_networks_prune_and_grow_their_grouped_convs(name):
    model = getattr(torchvision.models, name)(num_classes=10).double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    grouped = [d for d in graph.free_dims if d.slots is not None]
    assert grouped and not any(d.grouping for d in grouped)
    with torch.no_grad():       # every group of every grouped dimension loses its first channel
        for d in grouped:
            dead = np.nonzero(np.r_[True, np.diff(d.slots) > 0])[0]
            for s in d.sources:
                getattr_from(model, s.tensor)[torch.as_tensor(s.positions[np.isin(s.channels, dead)])] = 0
    alive = fxs.liveliness(graph)
    pruned = fxs.plan(graph, alive, target=None, scheme="prune")
    surgery = fxs.rewrite(graph, pruned)
    assert_same_function(model, surgery.module, x)
    assert sum(p.numel() for p in surgery.module.parameters()) == pruned.predicted
    judged = [d for d in grouped if d.scaled]    # a gate's outputs are not judged: they stay
    assert judged and all(pruned.dims[d.name].new_width == d.width - d.groups for d in judged)
    grown = fxs.plan(graph, alive, metric="flops", target=1.0, scheme="nr", alpha=1.5)
    assert_groups_even(graph, grown)
    assert all(grown.dims[d.name].added > 0 for d in grouped)
    surgery = fxs.rewrite(graph, grown)
    assert_same_function(model, surgery.module, x)
    again = fxs.analyze(surgery.module, x)
    assert again.count("flops") == grown.predicted
    assert again.count("params") == sum(p.numel() for p in surgery.module.parameters())


def getattr_from(model, name):
    return model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
