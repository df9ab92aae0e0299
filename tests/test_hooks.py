"""The user's hooks: silent while fxsurgeon runs the model itself, kept on the networks it
builds (root and every layer the graph calls), refused by name where a network cannot keep
them (issue: your model stays your model)."""
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.errors import FxSurgeonError
from helpers.surgery import randomise_norms
from wrapped import batch, small_net, train_step

KINDS = ("forward", "pre", "backward")
LEAVES = ("", "0", "1", "3", "4", "8")          # root, convs, norms, the head


def _hook(model: nn.Module, name: str, kind: str, calls: list):
    m = model.get_submodule(name)
    tag = f"{kind}:{name or 'root'}"
    if kind == "forward":
        return m.register_forward_hook(lambda mod, args, out: calls.append(tag))
    if kind == "pre":
        return m.register_forward_pre_hook(lambda mod, args: calls.append(tag))
    return m.register_full_backward_hook(lambda mod, gin, gout: calls.append(tag))


def _run(module: nn.Module, calls: list) -> list:
    calls.clear()
    x = batch()[0].requires_grad_()
    module(x).sum().backward()
    return list(calls)


def _kill(model: nn.Module, n: int) -> None:
    with torch.no_grad():
        model.get_submodule("1").weight[:n] = 0
        model.get_submodule("4").weight[-n:] = 0


@settings(max_examples=12, deadline=None)
@given(hooks=st.lists(st.tuples(st.sampled_from(LEAVES), st.sampled_from(KINDS)), min_size=1, max_size=5,
                      unique=True),
       scheme=st.sampled_from(["prune", "nr"]), dead=st.integers(1, 4))
def test_every_hook_fires_on_the_rewritten_network_as_on_the_model_and_never_during_surgery(hooks, scheme,
                                                                                             dead):
    model, calls = small_net(), []
    randomise_norms(model, dead)        # the dead channels' constants are folded into the next layer
    _kill(model, dead)
    handles = [_hook(model, name, kind, calls) for name, kind in hooks]
    want = _run(model, calls)
    calls.clear()
    graph = fxs.analyze(model, batch()[0][:1])
    plan = fxs.plan(graph, fxs.liveliness(graph), scheme=scheme, target=1.0, round_to=1)
    new = fxs.rewrite(graph, plan).module
    assert calls == []                                    # analyze, plan and rewrite fire none
    assert _run(new, calls) == want
    for handle in handles:                                # the user's handles reach the new network
        handle.remove()
    assert _run(new, calls) == []


def test_hooks_survive_rejuvenation_events_and_fire_in_none():
    model, calls = small_net(), []
    for name, kind in [("", "forward"), ("3", "pre"), ("4", "backward")]:
        _hook(model, name, kind, calls)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1),
                                threshold=1.0, max_events=2, round_to=1)
    want = _run(model, calls)
    for _ in range(2):
        _kill(nr.model.network, 2)
        calls.clear()
        assert nr.check() is not None and calls == []
        assert _run(nr.model, calls) == want
    train_step(nr)


def test_a_hook_on_a_module_tracing_enters_is_refused_by_name():
    model = torchvision.models.resnet18(num_classes=4)
    model.layer1.register_forward_hook(lambda mod, args, out: None)
    x = torch.randn(1, 3, 32, 32)
    graph = fxs.analyze(model, x)               # analysing is harmless: it says what would be lost
    assert graph.lost_hooks == ["forward hook on 'layer1' (Sequential)"]
    plan = fxs.plan(graph, fxs.liveliness(graph), scheme="prune")
    with pytest.raises(FxSurgeonError, match=r"lose 1 hook.*forward hook on 'layer1' \(Sequential\)"):
        fxs.rewrite(graph, plan)
    with pytest.raises(FxSurgeonError, match="'layer1'"):
        fxs.NeuralRejuvenation(model, x, torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("scheme", ["cr", "ca"])
def test_a_hook_on_a_layer_held_in_parts_is_refused_by_name(scheme):
    model = small_net()
    _kill(model, 2)
    model[3].register_forward_hook(lambda mod, args, out: None)
    graph = fxs.analyze(model, batch()[0][:1])
    plan = fxs.plan(graph, fxs.liveliness(graph), scheme=scheme, target=1.0, round_to=1)
    with pytest.raises(FxSurgeonError, match=r"cannot keep 1 hook.*forward hook on '3' \(Conv2d\)"):
        fxs.rewrite(graph, plan)


def test_a_torchvision_model_keeps_its_layer_hooks_through_pruning():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    with torch.no_grad():
        model.layer2[0].bn1.weight[:40] = 0
    calls, features = [], {}
    model.layer2[0].conv2.register_forward_hook(lambda mod, args, out: features.update(conv=out.shape))
    model.fc.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    x = torch.randn(2, 3, 64, 64)
    want = model(x)
    graph = fxs.analyze(model, x[:1])
    new = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme="prune")).module
    calls.clear()
    assert torch.allclose(new(x), want, atol=1e-4)
    assert calls == [torch.Size([2, 512])] and features["conv"] == torch.Size([2, 128, 8, 8])
    assert new.get_submodule("layer2.0.conv1").out_channels == 88


def test_weight_normalised_layers_are_still_traced_through_their_pre_hook():
    torch.manual_seed(0)
    model = small_net().eval()
    model[3] = torch.nn.utils.weight_norm(model[3])
    _kill(model, 2)
    x = batch()[0]
    graph = fxs.analyze(model, x[:1])
    assert graph.lost_hooks == []
    assert isinstance(model[3].weight, torch.Tensor)      # tracing leaves the user's layer as it was
    new = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme="prune")).module
    assert torch.allclose(new(x), model(x), atol=1e-5)
