"""Event after event in every scheme, fixed dimensions, the end of the search and the
penalty's two forms."""
import warnings

import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.zoo import CifarResNet, DenseNetBC
from helpers.training import kill_half
from wrapped import batch, small_net, train_step

NETS = {"resnet": lambda: CifarResNet(11), "densenet": lambda: DenseNetBC(10, 4)}


def kill_some(nr, seed):
    """Zero γ of about a third of the penalised channels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, mask in nr.scales.values():
            p[(torch.rand(p.shape, generator=g) < 0.3) & (mask > 0)] = 0


def zero_the_quasi_dead(nr):
    """Zero the scales liveliness calls dead though not zero (|γ| < 1 % of their layer's
    largest): a step after ``kill_some`` makes the killed ones small, not zero."""
    with torch.no_grad():
        for p, mask in nr.scales.values():
            p[(p.abs() < 0.01 * p.abs().max()) & (mask > 0)] = 0


def step(nr, x, y):
    nr.model.train()
    nr.zero_grad()
    nn.functional.cross_entropy(nr.model(x), y).backward()
    params = [p for n, p in nr.model.named_parameters() if p.grad is not None or ".blocks." not in n]
    # a cr generation whose outputs all died leaves its inputs' generation unread: those
    # blocks take no gradient (the function does not depend on them), every other tensor does
    assert all(p.grad is not None for p in params)
    nr.step()
    assert all("momentum_buffer" in nr.optimizer.state[p] for p in params)


@pytest.mark.parametrize("scheme", ["cr", "ca"])
@pytest.mark.parametrize("net", NETS)
def test_three_events_keep_the_function_the_budget_and_the_optimizer(net, scheme):
    torch.manual_seed(0)
    model = NETS[net]().double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, x[:1], opt, threshold=1.0, scheme=scheme, rescale=True,
                                max_events=None)
    grown = []
    for k in range(3):
        step(nr, x, y)
        kill_some(nr, k)
        nr.model.eval()
        zero_the_quasi_dead(nr)        # the rewrite's reference: removed scales at zero
        before = nr.model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # nothing to rejuvenate is no event, and no warning
            event = nr.check()
        assert not nr.log[-1].get("waiting", False)
        torch.testing.assert_close(nr.model(x), before, rtol=1e-9, atol=1e-12)
        assert nr.graph.count("params") <= nr.budget
        grown.append(event is not None and event.alpha > 1)
        step(nr, x, y)
    # cr re-plans a new generation at each event; ca layers keep their channels, so
    # after a ca event no free dimension is left: utilization stays 1, no event is tried
    assert grown == ([True] * 3 if scheme == "cr" else [True, False, False])
    assert len(nr.events) == (3 if scheme == "cr" else 1)


def test_the_trunk_keeps_its_width_and_takes_no_penalty():
    torch.manual_seed(0)
    model = CifarResNet(11)
    x = torch.randn(4, 3, 8, 8)
    nr = fxs.NeuralRejuvenation(model, x[:1], torch.optim.SGD(model.parameters(), lr=0.0),
                                threshold=1.0, scheme="cr", fixed="trunk")
    trunk = {"stem.0", "layer1.0.*", "layer2.0.*", "layer3.0.*"}
    assert nr.fixed_dims == trunk
    with torch.no_grad():                       # every scale nearly dead: the trunk's too
        for m in nr.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[::2] = 0
    widths = {n: nr.graph[n].width for n in trunk}
    event = nr.check()
    assert event is not None and {n: nr.graph[n].width for n in trunk} == widths
    nr.lam = 1.0
    nr.zero_grad()
    (0 * nr.model(x).sum()).backward()
    nr.step()
    scales = {n: p for n, p in nr.model.network.named_parameters()}
    assert (scales["stem.1.weight"].grad == 0).all() and (scales["layer1.0.conv3.1.weight"].grad == 0).all()
    assert (scales["layer1.0.conv1.1.weight"].grad != 0).any()
    with pytest.raises(fxs.FxSurgeonError, match="fixed names 'nope'"):
        fxs.plan(nr.graph, scheme="cr", fixed=["nope", "stem.0"])


def test_end_search_turns_the_penalty_off_and_stops_events():
    model = small_net()
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.0),
                                threshold=0.9, check_every=1, delta_lambda=0.1, max_events=None)
    train_step(nr)
    assert nr.lam == 0.1                          # λ grows from the first check
    nr.end_search()
    kill_half(nr)
    train_step(nr)
    assert nr.lam == 0.0 and not nr.events and nr.max_events == 0
    assert nr.state_dict()["max_events"] == 0


@pytest.mark.parametrize("form, dies", [("proximal", True), ("subgradient", False)])
def test_with_adamw_only_the_proximal_penalty_kills_scales(form, dies):
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, sparsity=form)
    other = small_net()
    auto = fxs.NeuralRejuvenation(other, batch()[0][:1], torch.optim.AdamW(other.parameters()))
    assert auto.sparsity_form == "proximal"
    nr.lam = 4.0
    for i in range(30):
        train_step(nr, i)
    gamma = model[1].weight.detach().abs()     # subgradient: Adam normalises it, all shrink alike
    assert bool((gamma < 0.01 * gamma.max()).any() or (gamma == 0).any()) == dies


@pytest.mark.parametrize("scheme", ["nr", "cr"])
def test_the_training_network_compiles_whole_before_and_after_an_event(scheme):
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=0.9, check_every=2,
                                scheme=scheme)
    compiled = torch.compile(nr.model, backend="eager", fullgraph=True)
    for k in range(4):
        if k == 1:
            with torch.no_grad():
                model[1].weight[::2] = 0
        x, y = batch(k)
        nr.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        nr.step()
    assert [e.step for e in nr.events] == [2]      # and two steps of the new network after it


def test_a_failing_event_backs_off_then_ends_the_search(monkeypatch):
    """An event the rewrite refuses keeps the network, holds λ, is tried again 2 and then 4
    checks later, and after 3 failures in a row the search ends: two warnings, never an
    endless retry that grows λ for nothing (issue: events that fail over and over)."""
    model = small_net()
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1),
                                threshold=1.0)
    kill_half(nr)                                          # every check is below it
    tries = []

    def refuse(alive, r):
        tries.append(nr.steps)
        raise fxs.FxSurgeonError("the rewrite changed the function (on purpose)")

    monkeypatch.setattr(nr, "_rejuvenate", refuse)
    nr.lam = 0.25
    network = nr.model.network
    with pytest.warns(UserWarning) as caught:
        for step in range(12):
            nr.steps = step
            assert nr.check() is None
    assert tries == [0, 3, 8]
    assert [str(w.message).split(":")[0] for w in caught] == ["rejuvenation at step 0 skipped",
                                                              "rejuvenation at step 8 skipped"]
    assert "the search ends" in str(caught[-1].message)
    assert not nr.searching and nr.lam == 0.0 and nr.model.network is network
    assert [e.get("waiting", False) for e in nr.log[:9]] == [False, True, True, False] + [True] * 4 + [False]


def test_a_checkpoint_from_before_the_back_off_resumes(tmp_path):
    model = small_net()
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1))
    state = nr.state_dict()
    del state["failures"], state["wait"]
    state["format"] = "fxsurgeon.nr/3"
    model = small_net()
    fresh = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1))
    fresh.load_state_dict(state)
    assert (fresh._failures, fresh._wait) == (0, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0.0}, "threshold must be a utilization in"), ({"threshold": -1.0}, "threshold must be"),
    ({"threshold": 5.0}, "threshold must be"), ({"target": 1e9}, "target must be a positive multiple")])
def test_numbers_that_mean_nothing_are_refused(kwargs, message):
    """A threshold outside (0, 1] would fire with nothing dead or never; a target past the
    planner's limit would warn at every check (issue: reliability 2, item 5)."""
    model = small_net()
    with pytest.raises(fxs.FxSurgeonError, match=message):
        fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_an_event_that_would_change_nothing_is_refused():
    """Dead channels only in a dimension that keeps its width (split by chunk): the plan
    changes nothing, so no event is spent; the search backs off with one warning."""
    from randomnets import ConvBlock, Split
    torch.manual_seed(0)
    model = nn.Sequential(ConvBlock(3, 8), Split(8, "relu"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bn.weight[::2] = 0
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1),
                                threshold=1.0, fixed=lambda d: d.name != "0.conv")
    network = nr.model.network
    with pytest.warns(UserWarning, match="nothing to rejuvenate: the plan keeps every channel"):
        assert nr.check() is None
    assert not nr.events and nr.model.network is network and nr.log[-1]["utilization"] < 1
