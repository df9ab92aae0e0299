"""cr and ca networks hold each generation's channels as a tensor of their own
(fxsurgeon.surgery.streams): the streamed network computes and trains exactly as its plain form,
reaches its partitioned layers without slicing or concatenating, and every other pass
(analysis, export, a later surgery) reads the plain form."""
import copy
import io
import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.layers.streamed import canonical, join, take
from fxsurgeon.ops.elementwise import stochastic_depth_parts
from fxsurgeon.surgery.streams import streamed
from fxsurgeon.zoo import MODELS
from helpers.surgery import kill, randomise_norms
from randomnets import examples, nets


def _surgery(model, x, scheme, fraction=0.3, seed=0):
    graph = fxs.analyze(model, x[:1])
    kill(graph, fraction, seed)
    plan = fxs.plan(graph, fxs.liveliness(graph), metric="flops", target=1.0, scheme=scheme)
    return fxs.rewrite(graph, plan)


def _train_step(net, x):
    """Output, gradients and the state after one training step (dropout off: its masks are
    drawn per part; stochastic depth on, from the same random state: it draws once)."""
    torch.manual_seed(0)
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    y = net(x)
    y.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return y.detach(), grads, {k: v.clone() for k, v in net.state_dict().items()}


def _close(got, want, msg=None):
    """Equal to float64 rounding, measured against the tensor's own scale: the two forms sum
    in other orders (parts, and kernels that split work by thread count, which a busy
    machine changes), and an entry that cancels to near zero keeps the absolute rounding of
    the large terms it came from."""
    scale = 1 + float(want.abs().max()) if want.is_floating_point() and want.numel() else 1
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * scale, msg=msg)


def assert_trains_as_plain(streamed, x):
    plain = copy.deepcopy(canonical(streamed))
    y0, g0, s0 = _train_step(plain, x)
    y1, g1, s1 = _train_step(streamed, x)
    _close(y1, y0)
    assert g1.keys() == g0.keys()
    for k in g0:
        _close(g1[k], g0[k], msg=k)
    assert s1.keys() == s0.keys()
    for k in s0:        # running statistics, num_batches_tracked counted once
        _close(s1[k], s0[k], msg=k)


def _streamed_calls(net) -> dict[str, int]:
    count = {"take": 0, "join": 0, "blocks": 0}
    for n in net.graph.nodes:
        name = getattr(n.target, "__name__", "")
        if n.op == "call_function" and name in count:
            count[name] += 1
    return count


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets(), st.sampled_from(["cr", "ca"]), st.floats(0.1, 0.6), st.integers(0, 3))
def test_streamed_random_nets_train_as_their_plain_form(net, scheme, fraction, seed):
    model, x = net
    model = model.double().eval()
    randomise_norms(model, seed)
    x = torch.randn(3, *x.shape[1:], dtype=torch.float64)
    surgery = _surgery(model, x, scheme, fraction, seed)
    assert_trains_as_plain(surgery.module, x)


@pytest.mark.parametrize("scheme", ["cr", "ca"])
@pytest.mark.parametrize("name", ["resnet164_cifar", "densenet_bc100_k40_cifar", "vgg19_cifar"])
def test_paper_nets_stream_every_layer(name, scheme):
    """Between the stem and the classifier no value is sliced or joined: every
    partitioned layer reads its parts as they come."""
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    surgery = _surgery(model, x, scheme)
    calls = _streamed_calls(surgery.module)
    assert calls["blocks"] == len(surgery.partitioned)
    # what is split: the stem's output and the per-channel constants folding added
    folds = sum(1 for n in surgery.module.graph.nodes if n.op == "get_attr" and "_fxs_fold" in n.target)
    assert calls["take"] <= 2 * (1 + folds), calls
    assert calls["join"] <= 1, calls
    assert_trains_as_plain(surgery.module, x)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18", "densenet121", "efficientnet_b0"])
def test_torchvision_models_stream_and_train_as_their_plain_form(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    surgery = _surgery(model, x, "cr")
    calls = _streamed_calls(surgery.module)
    assert calls["blocks"] == len(surgery.partitioned) > 0
    assert calls["join"] <= 2, calls
    assert_trains_as_plain(surgery.module, x)


def test_analysis_export_and_later_surgeries_read_the_plain_form():
    torch.manual_seed(0)
    model = MODELS["vgg19_cifar"]().eval()
    x = torch.randn(2, 3, 32, 32)
    surgery = _surgery(model, x, "cr")
    net = surgery.module
    plain = canonical(net)
    assert _streamed_calls(net)["blocks"] and not _streamed_calls(plain)["blocks"]
    assert dict(plain.named_parameters()) == dict(net.named_parameters())   # the very tensors
    graph = fxs.analyze(net, x[:1])
    assert not _streamed_calls(graph.module)["blocks"]
    assert graph.count("flops") == fxs.analyze(plain, x[:1]).count("flops")
    deployed = fxs.export(net).eval()
    assert not any(isinstance(m, fxs.Partitioned) for m in deployed.modules())
    net.eval()
    torch.testing.assert_close(deployed(x), net(x))
    again = _surgery(net, x, "cr", seed=1)      # a second event on the streamed network
    assert_trains_as_plain(again.module, x)


def test_a_pickled_streamed_network_comes_back_in_its_plain_form():
    torch.manual_seed(0)
    model = MODELS["vgg19_cifar"]().eval()
    x = torch.randn(2, 3, 32, 32)
    net = _surgery(model, x, "cr").module.eval()
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False).eval()
    torch.testing.assert_close(loaded(x), net(x))
    assert not _streamed_calls(loaded)["blocks"]
    assert dict(loaded.state_dict()).keys() == dict(net.state_dict()).keys()
    assert fxs.analyze(loaded, x[:1]).count("flops") == fxs.analyze(net, x[:1]).count("flops")


def test_parts_and_joins_keep_positions():
    x = torch.randn(2, 7, 3)
    gens = np.array([1, 0, -1, 1, 0, 0, 1])
    parts = {}
    for g in (-1, 0, 1):
        at = np.nonzero(gens == g)[0]
        parts[g] = take(x, 1, 0, 0, at.tolist())
        torch.testing.assert_close(parts[g], x[:, at])
    order = np.argsort(np.argsort(gens, kind="stable")).tolist()
    torch.testing.assert_close(join([parts[-1], parts[0], parts[1]], 1, order), x)


def _vgg_with_a_write(into: str, before_reads: bool):
    """A cr VGG-19 whose features.5 (a BatchNorm, held in parts) is also read flattened (so
    held whole too), with ``add_`` into it or into its flattened view, before its other
    readers or after the last."""
    torch.manual_seed(0)
    model = MODELS["vgg19_cifar"]().double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plain = canonical(_surgery(model, x, "cr").module)
    g = plain.graph
    bn = next(n for n in g.nodes if n.op == "call_module" and n.target == "features.5")
    last = max(bn.users, key=lambda u: list(g.nodes).index(u))
    with g.inserting_after(bn):
        flat = g.call_method("flatten", (bn, 1))
    with g.inserting_after(flat if before_reads else last):
        wrote = g.call_method("add_", (bn if into == "the value" else flat, 1.0))
    out = next(n for n in g.nodes if n.op == "output")
    with g.inserting_before(out):
        total = g.call_function(torch.add, (out.args[0], g.call_method("sum", (flat,))))
        total = g.call_function(torch.add, (total, g.call_method("sum", (wrote,))))
    out.args = (total,)
    plain.recompile()
    return plain, x


@pytest.mark.parametrize("into", ["the value", "a view of it"])
def test_a_write_into_a_value_held_both_ways_and_read_again_keeps_the_plain_form(into):
    """An in-place op on a value that is also held whole (a flatten read it), or on a view
    of it, could reach one form and miss the other: where either is read after the write,
    that network runs in its plain form, with a warning."""
    plain, x = _vgg_with_a_write(into, before_reads=True)
    with pytest.warns(UserWarning, match="writes in place"):
        assert streamed(plain, (x,)) is plain


@pytest.mark.parametrize("into", ["the value", "a view of it"])
def test_a_write_after_the_last_read_of_the_parts_leaves_the_network_streamed(into):
    """A classifier's in-place dropout writes into the flattened features after the last
    read of their parts (EfficientNet, MNASNet): nothing can see the parts go stale."""
    plain, x = _vgg_with_a_write(into, before_reads=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = streamed(plain, (x,))
    assert out is not plain
    with torch.no_grad():
        torch.testing.assert_close(out.eval()(x), copy.deepcopy(plain).eval()(x), rtol=1e-12, atol=1e-12)


def test_in_place_writes_into_other_memory_leave_the_network_streamed():
    """torchvision's bottlenecks add the shortcut and apply ReLU in place on the trunk;
    with the trunk fixed (the paper's ResNets) only the middle convs are split, and those
    writes cannot reach a value held in parts."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50().double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = fxs.analyze(model, x[:1])
    kill(graph, 0.3, 0)
    plan = fxs.plan(graph, fxs.liveliness(graph), metric="flops", target=1.0, scheme="cr", fixed="trunk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surgery = fxs.rewrite(graph, plan)
    assert surgery.module is not canonical(surgery.module) and surgery.partitioned
    assert_trains_as_plain(surgery.module, x)


def test_an_op_that_fails_on_parts_leaves_the_network_in_its_plain_form(monkeypatch):
    """A rule whose stream() is wrong (here: a BatchNorm called on each part as on the
    whole, which its per-channel statistics refuse) costs speed, never the function."""
    from fxsurgeon.ops import Norm
    monkeypatch.setattr(Norm, "stream", lambda self, node, module: "each")
    torch.manual_seed(0)
    model = MODELS["vgg19_cifar"]().eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="held in parts it fails"):
        surgery = _surgery(model, x, "cr")
    assert not _streamed_calls(surgery.module)["blocks"]
    torch.testing.assert_close(surgery.module(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_stochastic_depth_on_parts_draws_once_for_all_of_them(mode, p, training):
    parts = [torch.randn(5, c, 3, 3) for c in (2, 3, 1)]
    torch.manual_seed(1)
    want = torchvision.ops.stochastic_depth(torch.cat(parts, 1), p, mode, training)
    torch.manual_seed(1)
    got = stochastic_depth_parts(parts, p, mode, training)
    assert torch.equal(torch.cat(got, 1), want)
    with pytest.raises(ValueError, match="mode"):
        stochastic_depth_parts(parts, p, "rows", training)


def test_a_functional_norm_between_partitioned_layers_streams():
    """A norm called as a function (no module: timm's tiny_vit) between two layers that
    cr partitions: asking its rule how it runs on parts crashed on the missing module."""

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.weight, self.bias = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))
            self.register_buffer("mean", torch.zeros(8))
            self.register_buffer("var", torch.ones(8))
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            y = self.b(torch.relu(self.bn_a(self.a(x))))
            y = torch.relu(nn.functional.batch_norm(y, self.mean, self.var, self.weight, self.bias, False))
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    model = Functional().double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    kill(graph, 0.3, 0)
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme="cr"))
    torch.testing.assert_close(surgery.module(x), model(x), rtol=1e-9, atol=1e-10)
