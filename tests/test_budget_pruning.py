"""Pruning to a budget: ``plan(..., scheme="prune", target=t, scores=...)`` keeps the most
important channels while the cost is at most ``t`` of the original, within a channel
step of it; widths are multiples of ``round_to``; fixed dimensions keep their width; the
rewrite is the original network with the removed channels silenced, at every input."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon import importance
from fxsurgeon.planning import budget
from helpers.surgery import same
from randomnets import examples, nets

SUBSET = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
          "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t", "squeezenet1_0"]


def widths_are_multiples(graph, plan, round_to):
    for d in graph.free_dims:
        dp = plan.dims[d.name]
        step = math.lcm(d.multiple_of, round_to)
        assert dp.new_width in (d.width, step) or dp.new_width % step == 0 or "keeps" in dp.note, \
            (d.name, d.width, dp.new_width, step)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.floats(0.2, 0.95), st.sampled_from(["params", "flops"]), st.sampled_from([1, 2, 4]),
       st.sampled_from(["global", "per-dimension", "uniform"]), st.integers(0, 3))
def test_a_budget_plan_fits_and_the_rewrite_costs_what_it_planned(net, target, metric, round_to, ranking,
                                                                   seed):
    model, x = net
    model = model.double().eval()
    x = torch.randn(2, *x.shape[1:], dtype=torch.float64)
    graph = fxs.analyze(model, x)
    try:
        plan = fxs.plan(graph, metric=metric, target=target, scheme="prune", round_to=round_to,
                        scores=importance.random(graph, seed), ranking=ranking)
    except fxs.FxSurgeonError as err:
        assert "impossible budget" in str(err)
        return
    assert plan.predicted <= target * plan.original
    widths_are_multiples(graph, plan, round_to)
    surgery = fxs.rewrite(graph, plan)          # checks itself against the silenced network
    assert fxs.analyze(surgery.module, x).count(metric) == plan.predicted


def test_the_pruned_network_is_the_original_with_its_removed_channels_silenced():
    """A removed live channel emits zero: its γ and β at zero where a norm judges it, its
    producer's rows and bias elsewhere; the dead keep their constant (folded)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).double().eval()
    with torch.no_grad():
        model[1].bias.uniform_(-1, 1)
        model[1].weight[:2] = 0                                  # two dead channels
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    scores = {"0": np.arange(16.0), "3": np.arange(16.0)}       # the first channels matter least
    plan = fxs.plan(graph, fxs.liveliness(graph), metric="params", target=0.5, scheme="prune", scores=scores)
    assert len(plan.silenced["0"]) and len(plan.silenced["3"]) and 0 not in plan.silenced["0"]
    surgery = fxs.rewrite(graph, plan)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[1].weight[plan.silenced["0"]] = 0
        reference[1].bias[plan.silenced["0"]] = 0
        reference[3].weight[plan.silenced["3"]] = 0
        reference[3].bias[plan.silenced["3"]] = 0
    other = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert same(reference(other), surgery.module(other))



class ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit`` where the width changes: conv, BatchNorm, activation, plus a
    plain 1x1 conv of the input (no norm), summed; then a conv."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.res = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))) + self.res(x))


def test_a_silenced_channel_loses_every_writer_also_those_no_norm_follows():
    """A channel the BatchNorm judges but a plain conv also writes: silencing it zeroed γ
    and β only, the residual conv's rows kept writing it, and the fold refused ('not
    constant'; MONAI UNet and SegResNet with BatchNorm pruned to a budget). Every writer's
    rows and bias go."""
    torch.manual_seed(0)
    model = ResidualUnit().double().eval()
    with torch.no_grad():
        model.bn.bias.uniform_(-1, 1)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    scores = {d.name: np.arange(float(d.width)) for d in graph.free_dims}
    plan = fxs.plan(graph, metric="params", target=0.6, scheme="prune", scores=scores)
    gone = plan.silenced[next(d.name for d in graph.free_dims if d.width == 8)]
    assert len(gone)
    surgery = fxs.rewrite(graph, plan)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for t in (reference.bn.weight, reference.bn.bias, reference.res.weight, reference.res.bias):
            t[gone] = 0
    other = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert same(reference(other), surgery.module(other))
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = fxs.analyze(model, torch.randn(1, 3, 4, 4))
    scores = {"0": np.arange(8.0)}
    plan = fxs.plan(graph, metric="params", target=0.55, scheme="prune", scores=scores)
    kept = plan.dims["0"].survivors
    assert list(kept) == list(range(8 - len(kept), 8))


def test_fixed_dimensions_keep_their_width_and_the_rest_pay():
    model = torchvision.models.resnet18().eval()
    graph = fxs.analyze(model, torch.randn(1, 3, 32, 32))
    plan = fxs.plan(graph, metric="flops", target=0.5, scheme="prune", fixed="trunk")
    trunk = fxs.plan(graph, target=None, scheme="prune", fixed="trunk")
    for name, dp in trunk.dims.items():
        if "fixed" in dp.note:
            assert plan.dims[name].new_width == dp.width
    assert plan.predicted <= 0.5 * plan.original


@pytest.mark.parametrize("name", SUBSET)
def test_budget_pruning_on_the_ci_subset(name):
    model = getattr(torchvision.models, name)(**({"image_size": 64} if name == "vit_b_16" else {})).eval()
    x = torch.randn(1, 3, 64, 64)
    graph = fxs.analyze(model, x)
    target = 0.5
    try:
        plan = fxs.plan(graph, metric="flops", target=target, scheme="prune", round_to=8)
    except fxs.FxSurgeonError as err:     # swin_t: its attention is pinned (~70 % of its MACs)
        assert "impossible budget" in str(err)
        target = 0.8
        plan = fxs.plan(graph, metric="flops", target=target, scheme="prune", round_to=8)
    budget = target * graph.count("flops")
    assert budget * 0.97 <= plan.predicted <= budget, plan.predicted / plan.original
    widths_are_multiples(graph, plan, 8)
    surgery = fxs.rewrite(graph, plan)
    assert fxs.analyze(surgery.module, x).count("flops") == plan.predicted


def test_criteria_score_every_free_channel():
    model = torchvision.models.resnet18()
    x = torch.randn(2, 3, 32, 32)
    graph = fxs.analyze(model, x)
    with pytest.raises(fxs.FxSurgeonError, match="needs gradients"):
        importance.taylor(graph)
    model(x).sum().backward()
    for scores in (importance.magnitude(graph), importance.magnitude(graph, p=1), importance.bn_scale(graph),
                   importance.taylor(graph), importance.random(graph), importance.activation(graph, [x])):
        assert {d.name: d.width for d in graph.free_dims} == {k: len(v) for k, v in scores.items()}
        assert all(np.isfinite(v).all() for v in scores.values())
        fxs.plan(graph, metric="flops", target=0.6, scheme="prune", scores=scores)


@pytest.mark.parametrize("threads", [1, 2])
def test_magnitude_by_blocks_of_rows_is_the_whole_weight_s_norm_bit_for_bit(threads):
    """importance.magnitude takes a large weight's norms a block of rows at a time (in
    cache, one thread per block): the very same float64 values as the whole weight's."""
    from fxsurgeon.judging.importance import _row_blocks
    g = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(5632, 64), (37, 4096), (2, 40000), (3, 40000), (1031, 17), (300, 7, 3, 3), (4097, 8),
                      (64, 16384)]:
            for dtype in (torch.float32, torch.bfloat16, torch.float64):
                w = torch.randn(shape, generator=g).to(dtype) * 3
                w[0, 0] = -0.0
                blocks = _row_blocks(w, 0)
                assert blocks is None or (len(blocks) > 2 and min(np.diff(blocks)) >= 2)
                for p in (1, 2):
                    if blocks is not None:
                        got = np.concatenate([_norm(w[a:b], p) for a, b in itertools.pairwise(blocks)])
                        assert np.array_equal(got, _norm(w, p)), (shape, dtype, p)
    finally:
        torch.set_num_threads(before)
    model = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 8))
    graph = fxs.analyze(model, torch.randn(2, 64))
    assert _row_blocks(model[0].weight, 0) is not None
    (name,) = [d.name for d in graph.free_dims]
    assert np.array_equal(importance.magnitude(graph)[name], _norm(model[0].weight.detach(), 2))
    assert np.array_equal(importance.magnitude(graph, p=1)[name], _norm(model[0].weight.detach(), 1))
    model.double()              # float64: taken in place, ``.double()`` would be the weight itself
    before = copy.deepcopy(model.state_dict())
    importance.magnitude(fxs.analyze(model, torch.randn(2, 64, dtype=torch.float64)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _norm(w, p):
    """The Lp norm of each row of ``w``, as importance.magnitude took it before blocks."""
    w, others = w.double(), list(range(1, w.dim()))
    return (w.abs().sum(others) if p == 1 else w.pow(2).sum(others).sqrt()).numpy()


@pytest.mark.parametrize("scores, message", [
    ({"nope": np.ones(3)}, "not a free dimension"),
    ({"layer1.0.conv1": np.ones(3)}, "finite numbers"),
    ({"layer1.0.conv1": np.ones(64)}, "no scores for"),
])
def test_bad_scores_are_clear_errors(scores, message):
    graph = fxs.analyze(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))
    with pytest.raises(fxs.FxSurgeonError, match=message):
        fxs.plan(graph, target=0.5, scheme="prune", scores=scores)
    with pytest.raises(fxs.FxSurgeonError, match="ranking"):
        fxs.plan(graph, target=0.5, scheme="prune", ranking="best")


@pytest.mark.parametrize("name, metric, target", [("bert", "params", 0.9), ("resnet", "flops", 0.5),
                                                   ("yolo", "flops", 0.5)])
def test_budget_pruning_on_exported_models(name, metric, target):
    """HuggingFace and ultralytics models come through torch.export; BERT's attention is
    pinned, so its budget is taken from the MLPs."""
    from helpers.models import hf, yolo
    model, (x, _) = yolo() if name == "yolo" else hf(name)
    model = model.eval()
    graph = fxs.analyze(model, x)
    assert graph.frontend == "export"
    plan = fxs.plan(graph, metric=metric, target=target, scheme="prune", round_to=2)
    assert plan.predicted <= target * plan.original
    surgery = fxs.rewrite(graph, plan)
    assert fxs.analyze(surgery.module, x, frontend="export").count(metric) == plan.predicted


@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.sampled_from([1, 2, 4, 8]),
       st.floats(0.02, 1.0), st.integers(0, 2**16))
def test_a_global_choice_spends_the_budget_until_no_next_step_fits(widths, step, share, seed):
    """Layers in a chain (each costs its inputs times its outputs): what is chosen fits, and
    no dimension can take one more step of channels without going over the budget (with a
    step, the first channel in the order that does not fit can be a costly layer's while
    cheaper layers' next steps still fit)."""
    rng = np.random.default_rng(seed)
    dims = [budget.Prunable(f"d{i}", np.arange(w), rng.random(w), np.zeros(0, np.int64), step)
            for i, w in enumerate(widths)]

    def cost(chosen: dict) -> float:
        ks = [3, *(len(chosen[d.name]) for d in dims), 10]
        return float(sum(a * b for a, b in itertools.pairwise(ks)))

    limit = share * cost({d.name: d.candidates for d in dims})
    try:
        chosen = budget.choose(dims, "global", cost, limit)
    except fxs.FxSurgeonError as err:
        assert "impossible budget" in str(err)
        return
    assert cost(chosen) <= limit
    for d in dims:
        k = len(chosen[d.name]) + step          # its next multiple of the step, if it has one
        if k <= len(d.candidates):
            assert cost({**chosen, d.name: d.keep(k)}) > limit, (d.name, k - step)


def test_an_impossible_budget_says_which_pinned_dimensions_hold_the_cost_and_why():
    model = nn.Sequential(nn.Linear(4, 64), nn.LayerNorm(64), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    graph = fxs.analyze(model, torch.randn(1, 4))
    with pytest.raises(fxs.FxSurgeonError, match=r"impossible budget.*pinned dimensions: '0' 9\d % "
                                                 r"\(LayerNorm statistics"):
        fxs.plan(graph, None, target=0.2, scheme="prune")
