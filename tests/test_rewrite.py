"""Surgery in every scheme: the rewritten network computes the same function, costs what
the plan predicted, and carries tensors of the old model over by its index maps."""
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.planning.planner import next_breakpoint
from helpers.surgery import TOO_BIG, assert_same_function, kill, randomise_norms
from randomnets import examples, nets
from zoo import sweep


def prune(model, x, fraction, seed=0):
    graph = fxs.analyze(model, x)
    kill(graph, fraction, seed)
    alive = fxs.liveliness(graph)
    plan = fxs.plan(graph, alive, metric="params", target=None, scheme="prune")
    return graph, alive, plan, fxs.rewrite(graph, plan)


def rejuvenate(model, x, fraction, metric="params", seed=0, scheme="nr", rescale=False):
    graph = fxs.analyze(model, x)
    kill(graph, fraction, seed)
    plan = fxs.plan(graph, fxs.liveliness(graph), metric=metric, target=1.0, scheme=scheme)
    return graph, plan, fxs.rewrite(graph, plan, seed=seed, rescale=rescale)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.floats(0.0, 0.7), st.integers(0, 3))
def test_pruning_random_nets_keeps_the_function_and_the_predicted_cost(net, fraction, seed):
    model, x = net
    model = model.double().eval()
    randomise_norms(model, seed)
    x = torch.randn(3, *x.shape[1:], dtype=torch.float64)
    graph, alive, plan, surgery = prune(model, x, fraction, seed)
    assert_same_function(model, surgery.module, x)
    assert sum(p.numel() for p in surgery.module.parameters()) == plan.predicted
    flops = fxs.plan(graph, alive, metric="flops", target=None, scheme="prune").predicted
    assert fxs.analyze(surgery.module, x).count("flops") == flops
    surgery.module.train()
    surgery.module(x).sum().backward()                  # forward and backward run


#: pruning needs BatchNorm scales: the CI subset for surgery skips models without them
@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.floats(0.0, 0.7), st.sampled_from(["params", "flops"]), st.integers(0, 3),
       st.sampled_from(["nr", "cr", "ca"]), st.booleans())
def test_rejuvenating_random_nets_keeps_the_function_and_meets_the_budget(net, fraction, metric, seed,
                                                                          scheme, rescale):
    model, x = net
    model = model.double().eval()
    randomise_norms(model, seed)
    x = torch.randn(3, *x.shape[1:], dtype=torch.float64)
    try:
        graph, plan, surgery = rejuvenate(model, x, fraction, metric, seed, scheme, rescale)
    except fxs.FxSurgeonError as err:
        assert "impossible budget" in str(err) or "never binds" in str(err)
        return
    assert_same_function(model, surgery.module, x)
    # recounted on the new module, not taken from the plan
    assert fxs.analyze(surgery.module, x).count(metric) == plan.predicted <= plan.budget
    surgery.module.train()
    surgery.module(x).sum().backward()
    for name, p in surgery.module.named_parameters():     # every parameter trains
        assert p.grad is not None, name


def test_new_channels_start_as_the_paper_says():
    model = torchvision.models.resnet18().eval()
    graph, plan, surgery = rejuvenate(model, torch.randn(1, 3, 64, 64), 0.5)
    hidden = plan.dims["layer1.0.conv1"]
    s, r = len(hidden.survivors), hidden.added
    trunk = next(plan.dims[d.name] for d in graph.dims if "conv1" in d.producers)
    ts, tr = len(trunk.survivors), trunk.added
    assert r > 0 and tr > 0
    new = surgery.module
    w = new.get_submodule("layer1.0.conv1").weight            # (hidden, trunk, 1, 1)
    assert w.shape[:2] == (s + r, ts + tr)
    assert (w[:s, ts:] == 0).all() and (w[s:, :ts] == 0).all()  # no cross-connections yet
    assert w[s:, ts:].std() > 0                                   # R -> R: He initialised
    bn = new.get_submodule("layer1.0.bn1")
    assert (bn.weight[s:] == 1).all() and (bn.bias[s:] == 0).all()
    assert (bn.running_mean[s:] == 0).all() and (bn.running_var[s:] == 1).all()
    stem = new.get_submodule("conv1").weight                     # the image feeds R channels
    assert stem[ts:].std() > 0
    last = next(plan.dims[d.name] for d in graph.dims if "layer4.0.conv2" in d.producers)
    fc = new.get_submodule("fc").weight                          # the classifier ignores R
    assert last.added > 0 and (fc[:, len(last.survivors):] == 0).all()


SUBSET = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
          "regnet_y_400mf"]


def _check_zoo(name):
    if name in TOO_BIG:
        pytest.skip("over 140M parameters: float64 surgery copies do not fit beside another worker")
    model = torchvision.models.get_model(name).double().eval()
    randomise_norms(model)
    size = 299 if name == "inception_v3" else 224
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    graph, alive, plan, surgery = prune(model, x, 0.3)
    assert_same_function(model, surgery.module, x)
    assert sum(p.numel() for p in surgery.module.parameters()) == plan.predicted
    for scheme in ("nr", "cr", "ca"):
        plan = fxs.plan(graph, alive, metric="params", target=1.0, scheme=scheme)
        surgery = fxs.rewrite(graph, plan, rescale=scheme == "ca")
        assert_same_function(model, surgery.module, x)
        assert sum(p.numel() for p in surgery.module.parameters()) == plan.predicted <= plan.budget
        assert_within_rounding(graph, alive, plan)


def assert_within_rounding(graph, alive, plan):
    """The next width any dimension can take exceeds the budget: α is the largest."""
    if any(d.grows for d in plan.dims.values()):
        bigger = fxs.plan(graph, alive, plan.metric, plan.target, plan.scheme,
                          alpha=next_breakpoint(plan, graph))
        assert bigger.predicted > plan.budget


@pytest.mark.parametrize("name", sweep(SUBSET))
def test_surgery_on_torchvision_model(name):
    _check_zoo(name)


def test_index_maps_carry_old_tensors_to_the_new_layout():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    graph, alive, plan, surgery = prune(model, x, 0.4)
    survivors = plan.dims["layer1.0.conv1"].survivors
    momentum = torch.randn_like(model.layer1[0].conv1.weight)
    carried = surgery.carry("layer1.0.conv1.weight", momentum)
    trunk = next(d for d in graph.dims if "conv1" in d.producers)   # stem + stage-1 trunk
    stem = plan.dims[trunk.name].survivors
    assert torch.equal(carried, momentum[survivors][:, stem])
    assert carried.shape == surgery.module.get_submodule("layer1.0.conv1").weight.shape


@pytest.mark.parametrize("scheme", ["prune", "nr", "cr", "ca"])
def test_a_rewritten_network_compiles_whole(scheme):
    """torch.compile(fullgraph=True) before the first call: torch.fx's lazy module would
    generate its code in that call, which dynamo refuses to trace."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    x = torch.randn(2, 3, 8, 8)
    graph = fxs.analyze(model.eval(), x)
    kill(graph, 0.3)
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None if scheme == "prune" else 1.0,
                    scheme=scheme)
    new = fxs.rewrite(graph, plan).module
    torch.testing.assert_close(torch.compile(new, backend="eager", fullgraph=True)(x), new(x))


def test_users_model_is_untouched_and_bad_requests_are_clear():
    model = torchvision.models.resnet18().eval()
    graph = fxs.analyze(model, torch.randn(1, 3, 64, 64))
    kill(graph, 0.3)                         # this does change the model: γ are shared
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery = fxs.rewrite(graph, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert surgery.module is not graph.module
    with pytest.raises(fxs.FxSurgeonError, match="unknown scheme 'dense'"):
        fxs.rewrite(graph, plan, scheme="dense")
    grown = fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme="nr")
    with pytest.raises(fxs.FxSurgeonError, match="scheme 'prune' adds no channels"):
        fxs.rewrite(graph, grown, scheme="prune")
    with pytest.raises(fxs.FxSurgeonError, match="plan again with scheme='cr'"):
        fxs.rewrite(graph, grown, scheme="cr")


def test_a_dimension_whose_producer_repeats_channels_does_not_grow():
    """A depthwise conv with channel multiplier 2 feeding a residual add (found by hypothesis)."""
    from randomnets import ConvBlock, Net, Residual
    model = Net([ConvBlock(3, 4), ConvBlock(4, 8, groups=4), Residual(ConvBlock(8, 8))], 8, 2)
    model = model.double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph, plan, surgery = rejuvenate(model, x, 0.5)
    assert "repeats its channels" in plan.dims["blocks.*"].note
    assert_same_function(model, surgery.module, x)


@pytest.mark.parametrize("rescale, goal", [(True, 0.4), ("layer", 0.4), ("gamma0", 1.0)])
def test_rescaling_lifts_survivors_to_the_layers_strongest_or_to_gamma0(rescale, goal):
    """Survivors rise to their layer's strongest level (at most γ0), or to γ0 itself."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.4, 0.1, -0.05, 0.0]))
        model[1].bias.zero_()
    x = torch.randn(2, 3, 8, 8)
    graph = fxs.analyze(model, x)
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    surgery = fxs.rewrite(graph, plan, rescale=rescale)
    bn = [m for m in surgery.module.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert torch.allclose(bn.weight.abs(), torch.full((3,), goal)), bn.weight
    assert (bn.weight[2] < 0) and torch.allclose(surgery.module(x), model(x), atol=1e-5)


def test_rescaling_refuses_an_unknown_goal():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = fxs.analyze(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(fxs.FxSurgeonError, match="rescale must be"):
        fxs.rewrite(graph, fxs.plan(graph, target=None, scheme="prune"), rescale="bogus")


@pytest.mark.parametrize("rescale, gamma", [("paper", 1.0),
                                            ("gamma0", 0.01 / (0.01 ** 2 + 0.05 ** 2) ** 0.5)])
def test_the_papers_rescaling_lifts_gamma_itself_to_gamma0(rescale, gamma):
    """|γ| → γ0 with β multiplied alike (the paper's); "gamma0" lifts the RMS √(γ²+β²)."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1))
    model = model.double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, -0.01]))
        model[1].bias.copy_(torch.tensor([0.0, 0.05]))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    surgery = fxs.rewrite(graph, fxs.plan(graph, target=None, scheme="prune"), rescale=rescale)
    bn = surgery.module.get_submodule("1")
    c = gamma / 0.01
    torch.testing.assert_close(bn.weight, torch.tensor([1.0, -gamma], dtype=torch.float64))
    torch.testing.assert_close(bn.bias, torch.tensor([0.0, 0.05 * c], dtype=torch.float64))
    torch.testing.assert_close(surgery.rescale_factors["3.weight"].flatten(), torch.tensor(
        [1.0, 1 / c], dtype=torch.float64))
    torch.testing.assert_close(surgery.module(x), model(x))


def test_a_stale_plan_is_refused_naming_the_dimension():
    """A plan applied after the channels it judged dead came back to life (the model
    trained on) would remove live channels, and the self-check (which zeroes the removed
    scales in its reference) would not see it: the rewrite refuses it."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 0.0, 0.5, 0.0]))
    graph = fxs.analyze(model, torch.randn(1, 3, 8, 8))
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    assert plan.dims["0"].survivors.tolist() == [0, 2]
    fxs.rewrite(graph, plan)                              # fresh: fine
    with torch.no_grad():
        model[1].weight[1] = 0.3                          # back to life
    with pytest.raises(fxs.FxSurgeonError, match="the plan is stale: the scales of the channels it removes "
                                                 "from '0' changed since it was made \\(by up to 0.3\\)"):
        fxs.rewrite(graph, plan)
