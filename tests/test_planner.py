"""Liveliness and the planner's budget arithmetic."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.planning.planner import next_breakpoint
from fxsurgeon.zoo import resnet164_cifar, vgg19_cifar
from helpers.surgery import kill
from randomnets import examples, nets


class Trunk(nn.Module):
    """Two blocks writing one residual trunk, each followed by its own BN."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.c1, self.bn1 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        return self.head(x + self.bn1(self.c1(x)))


def test_trunk_channel_dies_only_when_dead_in_every_block():
    model = Trunk()
    g = fxs.analyze(model, torch.randn(1, 3, 2, 2))
    with torch.no_grad():
        model.bn0.weight[:] = torch.tensor([1.0, 0.0, 0.0, 0.005])
        model.bn1.weight[:] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    trunk = fxs.liveliness(g)["stem+1"]
    # channel 1 is dead in bn0 but alive in bn1; channel 3 is 0.005 < 0.01 * max in bn0
    assert trunk.tolist() == [True, True, False, False]
    assert fxs.liveliness(g, threshold=0.001)["stem+1"].tolist() == [True, True, False, True]


def test_dimension_without_scales_stays_alive():
    g = fxs.analyze(nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU(), nn.Conv2d(5, 2, 1)),
                    torch.randn(1, 3, 2, 2))
    assert fxs.liveliness(g) == {"0": pytest.approx(np.ones(5, bool))}


def test_prune_plan_predicts_the_masked_count_exactly():
    g = fxs.analyze(vgg19_cifar(), torch.randn(1, 3, 32, 32))
    kill(g, 0.3)
    alive = fxs.liveliness(g)
    for metric in ("params", "flops"):
        p = fxs.plan(g, alive, metric=metric, target=None, scheme="prune")
        assert p.alpha == 1.0 and all(d.added == 0 for d in p.dims.values())
        assert p.predicted == g.count(metric, alive)


@pytest.mark.parametrize("scheme", ["nr", "cr", "ca"])
@pytest.mark.parametrize("metric", ["params", "flops"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_alpha_is_the_largest_that_fits_the_budget(scheme, metric, round_to):
    g = fxs.analyze(resnet164_cifar(), torch.randn(1, 3, 32, 32))
    kill(g, 0.3)
    alive = fxs.liveliness(g)
    p = fxs.plan(g, alive, metric=metric, target=1.0, scheme=scheme, round_to=round_to)
    assert p.predicted <= p.budget and p.alpha > 1
    # at the next width breakpoint some dimension gains a step and the budget breaks
    above = fxs.plan(g, alive, metric=metric, target=1.0, scheme=scheme, round_to=round_to,
                     alpha=next_breakpoint(p, g))
    assert above.predicted > p.budget
    assert p.miss < (0.01 if round_to == 1 else 0.05)


@pytest.mark.parametrize("round_to", [1, 8])
def test_a_grown_width_is_alpha_times_its_survivors_rounded(round_to):
    """Channel by channel, the paper's floor; in multiples, the nearest multiple (a width
    short of its next multiple would otherwise keep an odd survivor count), never fewer
    than the survivors."""
    g = fxs.analyze(resnet164_cifar(), torch.randn(1, 3, 32, 32))
    kill(g, 0.3)
    p = fxs.plan(g, fxs.liveliness(g), metric="flops", target=1.0, scheme="nr", round_to=round_to)
    grown = [(d, p.dims[d.name]) for d in g.dims if p.dims[d.name].grows]
    assert grown
    for d, dp in grown:
        m, s = math.lcm(d.multiple_of, round_to), len(dp.survivors)
        want = math.floor(p.alpha * s / m + (0.5 if round_to > 1 else 0) + 1e-9) * m
        assert dp.new_width - p.filled.get(d.name, 0) == max(want, s), (d.name, s, dp.new_width)
    assert round_to > 1 or not p.filled                 # the paper's floor is kept as it is


def test_cr_drops_exactly_the_cross_blocks():
    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8),
                        nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.Conv2d(6, 2, 1, bias=False))
    g = fxs.analyze(net, torch.randn(1, 3, 1, 1))
    alive = {"0": np.array([1, 1, 1, 1, 0, 0, 0, 0], bool), "2": np.array([1, 1, 1, 0, 0, 0], bool)}
    p = fxs.plan(g, alive, metric="flops", target=1.0, scheme="cr")
    a, b = p.dims["0"], p.dims["2"]
    s1, r1, s2, r2 = len(a.survivors), a.added, len(b.survivors), b.added
    # input (fixed) feeds S and R; S->S and R->R only in the middle; output reads both
    assert p.predicted == 3 * (s1 + r1) + (s1 * s2 + r1 * r2) + 2 * (s2 + r2)
    dense = fxs.plan(g, alive, metric="flops", target=1.0, scheme="nr")
    assert p.alpha > dense.alpha


def test_impossible_budget_and_bad_arguments_are_clear_errors():
    g = fxs.analyze(vgg19_cifar(), torch.randn(1, 3, 32, 32))
    kill(g, 0.3)
    alive = fxs.liveliness(g)
    with pytest.raises(fxs.FxSurgeonError, match="impossible budget: .* above the target 0.25"):
        fxs.plan(g, alive, target=0.25)
    with pytest.raises(fxs.FxSurgeonError, match="unknown scheme"):
        fxs.plan(g, alive, scheme="magic")
    with pytest.raises(fxs.FxSurgeonError, match="has shape"):
        fxs.plan(g, {"features.0": np.ones(3, bool)})


def test_fully_dead_dimension_is_reported_and_keeps_one_channel():
    g = fxs.analyze(vgg19_cifar(), torch.randn(1, 3, 32, 32))
    alive = {"features.3": np.zeros(64, bool)}
    p = fxs.plan(g, alive, target=None, scheme="prune")
    assert len(p.dims["features.3"].survivors) == 1
    assert "all channels dead" in p.dims["features.3"].note
    assert "features.3" in str(p) and "remove the dead only" in str(p)


class Shuffled(nn.Module):
    """A channel shuffle with a literal group count of 4: widths stay multiples of 4."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24)
        self.b = nn.Conv2d(24, 2, 1)

    def forward(self, x):
        y = self.bn(self.a(x))
        n, c, h, w = y.shape
        return self.b(y.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w))


def test_round_to_and_shuffle_multiples_are_respected():
    g = fxs.analyze(Shuffled(), torch.randn(1, 3, 4, 4))
    assert g["a"].multiple_of == 4 and g["a"].free
    alive = {"a": np.array([1] * 17 + [0] * 7, bool)}
    pruned = fxs.plan(g, alive, target=None, scheme="prune", round_to=4)
    assert len(pruned.dims["a"].survivors) == 20          # 17 alive + 3 dead for the shuffle
    assert "keeps 3 dead channel(s) for a multiple of 4" in pruned.dims["a"].note
    pruned = fxs.plan(g, alive, target=None, scheme="prune", round_to=8)
    assert len(pruned.dims["a"].survivors) == 24          # and for round_to: pruned widths honour it
    assert "keeps 7 dead channel(s) for a multiple of 8" in pruned.dims["a"].note
    grown = fxs.plan(g, alive, metric="params", target=1.0, round_to=8, scheme="nr")
    assert grown.dims["a"].new_width == 24


def test_chunked_dimensions_keep_their_width_and_grouped_ones_stay_even():
    from randomnets import ConvBlock, Split
    net = nn.Sequential(ConvBlock(3, 8), ConvBlock(8, 8, groups=4), Split(8, "relu"), nn.Conv2d(8, 2, 1))
    g = fxs.analyze(net, torch.randn(1, 3, 4, 4))
    kill(g, 0.5)
    p = fxs.plan(g, fxs.liveliness(g), target=1.0, scheme="nr")
    assert p.dims["0.conv"].new_width % 4 == 0 and g["0.conv"].groups == 4
    assert p.dims["1.conv"].new_width == 8 and "split by position" in p.dims["1.conv"].note


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.sampled_from(["nr", "cr", "ca"]), st.sampled_from(["params", "flops"]),
       st.floats(0.0, 0.6))
def test_random_plans_fit_their_budget_and_constraints(net, scheme, metric, fraction):
    model, x = net
    g = fxs.analyze(model, x)
    kill(g, fraction, seed=1)
    alive = fxs.liveliness(g)
    try:
        p = fxs.plan(g, alive, metric=metric, target=1.0, scheme=scheme)
    except fxs.FxSurgeonError as err:
        assert "impossible budget" in str(err)
        return
    assert p.predicted <= p.budget
    for d in g.dims:
        dp = p.dims[d.name]
        assert dp.new_width >= len(dp.survivors) >= 1
        assert dp.new_width % d.multiple_of == 0
        if dp.pinned:
            assert dp.new_width == d.width and dp.added == 0


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.sampled_from(["nr", "cr", "ca"]), st.floats(0.1, 0.6), st.sampled_from([4, 8]))
def test_rounding_leaves_no_budget_that_one_more_channel_could_spend(net, scheme, fraction, round_to):
    """Widths rounded to ``round_to`` then take what the budget still holds: every grown
    width is at least α's rounded width, and one more channel anywhere breaks the budget
    (counted on the rewritten module itself)."""
    model, x = net
    g = fxs.analyze(model, x)
    kill(g, fraction, seed=1)
    alive = fxs.liveliness(g)
    try:
        p = fxs.plan(g, alive, metric="params", target=1.0, scheme=scheme, round_to=round_to)
    except fxs.FxSurgeonError as err:
        assert "impossible budget" in str(err)
        return
    rounded = fxs.plan(g, alive, metric="params", target=1.0, scheme=scheme, round_to=round_to, alpha=p.alpha)
    params = lambda: sum(q.numel() for q in fxs.rewrite(g, p, check=False).module.parameters())  # noqa: E731
    assert p.predicted == params() <= p.budget
    for name, dp in p.dims.items():
        assert dp.new_width - rounded.dims[name].new_width == p.filled.get(name, 0) >= 0
        assert dp.new_width % g[name].multiple_of == 0
        if dp.grows:
            dp.new_width += g[name].multiple_of
            assert params() > p.budget, name
            dp.new_width -= g[name].multiple_of


def test_a_gated_dimension_is_not_judged_by_its_scales_alone():
    from randomnets import ConvBlock, Gate
    net = nn.Sequential(ConvBlock(3, 6), Gate(6, 2), nn.Conv2d(6, 2, 1))
    g = fxs.analyze(net, torch.randn(1, 3, 4, 4))
    with torch.no_grad():
        net[0].bn.weight[:3] = 0          # x * gate(x) still varies with the input
    assert fxs.liveliness(g)["0.conv+1"].all()


def test_a_writer_also_read_around_its_scale_is_not_judged():
    class Around(nn.Module):             # maxvit's stem: a BN and a shortcut read the conv
        def __init__(self):
            super().__init__()
            self.c, self.bn, self.short = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)
            self.d = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.c(x)
            return self.d(self.bn(y)) + self.short(y)
    model = Around()
    g = fxs.analyze(model, torch.randn(1, 3, 2, 2))
    with torch.no_grad():
        model.bn.weight[:2] = 0
    assert fxs.liveliness(g)["c"].all()
