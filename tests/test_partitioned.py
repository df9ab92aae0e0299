"""S/R-partitioned layers compute the paper's blocks exactly, cost what the planner
prices, export, script (every scheme's deployed copy) and run in ONNX; neural rescaling
is exact where it applies."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fxsurgeon as fxs
from fxsurgeon.layers.partitioned import Partitioned
from fxsurgeon.zoo import vgg19_cifar
from helpers.surgery import assert_same_function, kill, randomise_norms
from randomnets import examples


def _blocks(layer, x, rows, cols):
    """``A``: the dense layer applied to the inputs at ``cols`` only, outputs ``rows``."""
    mask = torch.zeros(x.shape[-1] if isinstance(layer, nn.Linear) else x.shape[1], dtype=x.dtype)
    mask[cols] = 1
    xm = x * (mask if isinstance(layer, nn.Linear) else mask.view(-1, 1, 1))
    y = F.linear(xm, layer.weight) if isinstance(layer, nn.Linear) else \
        F.conv2d(xm, layer.weight, None, layer.stride, layer.padding)
    return y[..., rows] if isinstance(layer, nn.Linear) else y[:, rows]


@st.composite
def layouts(draw, generations=2):
    """A dense layer, the generation of each output (grouped) and a random interleaving of
    its inputs' generations (-1: fixed)."""
    rows = [draw(st.integers(1, 4))] + [draw(st.integers(0, 4)) for _ in range(generations - 1)]
    cols = [draw(st.integers(1, 4))] + [draw(st.integers(0, 4)) for _ in range(generations - 1)]
    fixed = draw(st.integers(0, 3))
    n_in, out = sum(cols) + fixed, sum(rows)
    col_gen = np.random.default_rng(draw(st.integers(0, 99))).permutation(
        np.repeat(np.arange(-1, generations), [fixed, *cols]))
    row_gen = np.repeat(np.arange(generations), rows)
    linear = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 99)))
    layer = (nn.Linear(n_in, out, bias=draw(st.booleans())) if linear else
             nn.Conv2d(n_in, out, 3, padding=1, stride=draw(st.sampled_from([1, 2])),
                       bias=draw(st.booleans()))).double()
    x = torch.randn((2, 3, n_in) if linear else (2, n_in, 5, 5), dtype=torch.float64)
    return layer, row_gen, col_gen, x


def _check_blocks(layer, row_gen, col_gen, x, scheme):
    out = len(row_gen)
    bias = torch.zeros(out, dtype=x.dtype) if layer.bias is None else layer.bias.detach()
    b = bias if isinstance(layer, nn.Linear) else bias.view(-1, 1, 1)
    fixed = np.nonzero(col_gen == -1)[0]
    gens = max(row_gen.max(), col_gen.max(), 1 if scheme == "ca" else 0) + 1
    mine = [(np.nonzero(row_gen == g)[0], np.nonzero(col_gen == g)[0]) for g in range(gens)]
    own = [_blocks(layer, x, rows, np.r_[cols, fixed]) + (b[..., rows] if isinstance(layer, nn.Linear)
                                                           else b[rows]) for rows, cols in mine]
    if scheme == "cr":                      # fixed inputs feed every generation
        want = own
    else:
        (s_rows, s_cols), (r_rows, r_cols) = mine
        a_rs, a_sr = _blocks(layer, x, s_rows, r_cols), _blocks(layer, x, r_rows, s_cols)
        want = [own[0] + 2 * torch.sigmoid(own[0]) * a_rs, own[1] + 2 * torch.sigmoid(own[1]) * a_sr]
    part = Partitioned.from_dense(scheme, layer, row_gen, col_gen)
    torch.testing.assert_close(part(x), torch.cat(want, -1 if isinstance(layer, nn.Linear) else 1))
    # its shape without running it: what shape propagation asks its rule on the meta device
    meta = {k: v.to("meta") for k, v in [*part.named_parameters(), *part.named_buffers()]}
    rule = fxs.ops.TABLE.module_rule(part)
    assert rule.forward_with(part, meta, (x.to("meta"),), {}).shape == part(x).shape
    # multiply-accumulates: cr only the diagonal blocks, ca exactly one dense layer
    with FlopCounterMode(display=False) as dense:
        layer(x)
    with FlopCounterMode(display=False) as parted:
        part(x)
    if scheme == "cr":
        share = sum(len(rows) * (len(cols) + len(fixed)) for rows, cols in mine) / (out * len(col_gen))
    else:
        share = 1.0
    assert parted.get_total_flops() == pytest.approx(dense.get_total_flops() * share)
    # the dense weight it equals, cross blocks zero under cr
    if scheme == "cr":
        torch.testing.assert_close(part.dense()(x), part(x))


@settings(max_examples=examples(60), deadline=None)
@given(layouts(), st.sampled_from(["cr", "ca"]))
def test_partitioned_layers_compute_the_papers_blocks(layout, scheme):
    _check_blocks(*layout, scheme)


@settings(max_examples=examples(30), deadline=None)
@given(layouts(generations=3))
def test_cr_layers_keep_each_generation_apart(layout):
    """After several cr events a layer holds several generations, each on its own."""
    _check_blocks(*layout, "cr")


def _train_step(part, x):
    """The output and every parameter's gradient of one backward pass of ``part`` on ``x``."""
    part.zero_grad()
    y = part(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in part.named_parameters()}


@settings(max_examples=examples(40), deadline=None)
@given(layouts(generations=3), st.sampled_from(["cr", "ca"]))
def test_the_dense_form_computes_and_trains_what_the_split_form_does(layout, scheme):
    """One kernel on the assembled dense weight: the same outputs, the same outputs part
    by part, the same gradient for every block (the blocks between generations are no
    parameters), and it scripts."""
    layer, row_gen, col_gen, x = layout
    if scheme == "ca":                       # two generations
        row_gen, col_gen = np.minimum(row_gen, 1), np.minimum(col_gen, 1)
    part = Partitioned.from_dense(scheme, layer, row_gen, col_gen)
    split, grads = _train_step(part, x)
    parts = [p.detach() for p in part._inputs(x)]
    by_parts = part.forward_parts(parts, x)
    part.form = "dense"
    dense, dense_grads = _train_step(part, x)
    torch.testing.assert_close(dense, split)
    for name, g in grads.items():
        torch.testing.assert_close(dense_grads[name], g, msg=name)
    for got, want in zip(part.forward_parts(parts, x), by_parts, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(part)(x), split)
    with FlopCounterMode(display=False) as dense_flops:
        layer(x)
    with FlopCounterMode(display=False) as flops:
        part(x)
    assert flops.get_total_flops() == dense_flops.get_total_flops() * (1 if scheme == "cr" else 2)


def _rejuvenated(scheme, rescale=False, make=vgg19_cifar, size=32):
    torch.manual_seed(0)
    model = make().double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    kill(graph, 0.3)
    plan = fxs.plan(graph, fxs.liveliness(graph), metric="params", target=1.0, scheme=scheme)
    return model, x, fxs.rewrite(graph, plan, rescale=rescale)


def _perturb(module):
    """Train-like noise on every parameter, so cross blocks and gates matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_export_turns_cr_layers_into_standard_ones():
    model, x, surgery = _rejuvenated("cr")
    _perturb(surgery.module)
    deployable = fxs.export(surgery.module)
    assert surgery.partitioned and not any(isinstance(m, Partitioned) for m in deployable.modules())
    torch.testing.assert_close(deployable(x), surgery.module(x))
    conv = deployable.get_submodule(surgery.partitioned[3])
    part = surgery.module.get_submodule(surgery.partitioned[3])
    assert isinstance(conv, nn.Conv2d)
    row_gen, col_gen = part.generations()
    cross = torch.as_tensor(row_gen[:, None] != col_gen[None, :]) & torch.as_tensor(col_gen[None, :] >= 0)
    assert cross.any() and (conv.weight[cross] == 0).all()                   # no cross blocks


@pytest.mark.parametrize("scheme", ["prune", "nr", "cr", "ca"])
def test_the_deployed_copy_scripts_in_every_scheme(scheme):
    model, x, surgery = _rejuvenated(scheme)
    _perturb(surgery.module)
    deployable = fxs.export(surgery.module)
    assert deployable.training == surgery.module.training
    torch.testing.assert_close(torch.jit.script(deployable)(x), surgery.module(x))


class _WithAux(nn.Module):
    """A head its forward calls only in training (as GoogLeNet's aux heads)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.aux = nn.Linear(8, 3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.body(x).mean((2, 3))
        return self.head(y) + self.aux(y) if self.training else self.head(y)


def test_the_deployed_copy_holds_what_the_rewrite_holds():
    model, x, surgery = _rejuvenated("prune", make=_WithAux, size=8)
    deployed = fxs.export(surgery.module)
    assert "aux.weight" in surgery.module.state_dict()           # the rewrite carried it
    assert deployed.state_dict().keys() == surgery.module.state_dict().keys()
    torch.testing.assert_close(torch.jit.script(deployed)(x), surgery.module(x))


def test_ca_layers_run_in_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, x, surgery = _rejuvenated("ca")
    _perturb(surgery.module)
    module = fxs.export(surgery.module).float()
    assert any(isinstance(m, Partitioned) for m in module.modules())
    x = x.float()
    want = module(x)
    torch.onnx.export(module, (x,), tmp_path / "ca.onnx", dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "ca.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_index_maps_carry_old_tensors_into_the_blocks():
    model, x, surgery = _rejuvenated("cr")
    name = surgery.partitioned[2]
    part = surgery.module.get_submodule(name)
    old_momentum = torch.randn_like(model.get_submodule(name).weight)
    assert surgery.origin(f"{name}.blocks.0") == f"{name}.weight"
    carried = surgery.carry(f"{name}.blocks.0", old_momentum)
    assert carried.shape == part.blocks[0].shape
    rows, cols = (idx for _, idx in surgery.index_maps[f"{name}.blocks.0"])
    assert (rows >= 0).all() and (cols >= 0).all()                      # S block: all survivors
    assert torch.equal(carried, old_momentum[rows][:, cols])
    # the R block holds only new channels: it starts from zero state
    assert (surgery.carry(f"{name}.blocks.1", old_momentum) == 0).all()


class Paths(nn.Module):
    """b1 reaches its consumer through ReLU and max pooling; b2 reaches an add, b3 a
    ReLU6; b4's input is also read around it, into the same consumer."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2, self.c3 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 6, 1)
        self.c4, self.b3 = nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4)
        self.c5, self.b4 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.c6, self.fc = nn.Conv2d(8, 4, 1), nn.Linear(4 * 4, 3)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        a = self.b2(self.c2(h))
        a = a + self.c3(a)
        y = F.relu6(self.b3(self.c4(a)))
        z = self.c5(y)
        w = torch.cat([torch.relu(self.b4(z)), z], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.c6(w), 2), 1))


def test_rescaling_lifts_small_scales_only_where_exact():
    model = Paths().double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    plan = fxs.plan(graph, {}, target=None, scheme="prune")
    surgery = fxs.rewrite(graph, plan, rescale=True)
    assert_same_function(model, surgery.module, x)
    level = model.b1.weight.hypot(model.b1.bias)       # the RMS of γ·x̂ + β
    small = (level < 1).sum().item()
    assert surgery.rescaled == {"b1": small} and small > 0
    b1 = surgery.module.get_submodule("b1")
    assert torch.allclose(b1.weight.hypot(b1.bias), level.clamp(min=1))   # lifted to γ0 = 1
    assert torch.equal(b1.weight.sign(), model.b1.weight.sign())
    reasons = {k: why for k, (_, why) in surgery.rescale_skipped.items()}
    assert "add()" in reasons["b2"] and "relu6()" in reasons["b3"]
    assert reasons["b4"] == "its input is also read around it"
    channels, _ = surgery.rescale_skipped["b2"]
    assert channels == torch.nonzero(model.b2.weight.hypot(model.b2.bias) < 1).reshape(-1).tolist()


def test_rescaling_a_cifar_net_changes_nothing_it_computes():
    model, x, surgery = _rejuvenated("ca", rescale=True)
    assert_same_function(model, surgery.module, x)
    assert sum(surgery.rescaled.values()) > 1000 and not surgery.rescale_skipped


def test_torchvision_resnet_rescales_only_inside_blocks():
    model = torchvision.models.resnet18().double().eval()
    randomise_norms(model)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    surgery = fxs.rewrite(graph, fxs.plan(graph, {}, target=None, scheme="prune"), rescale=True)
    assert_same_function(model, surgery.module, x)
    assert set(surgery.rescaled) == {f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)}
    assert all("add()" in why for _, why in surgery.rescale_skipped.values())


@pytest.mark.parametrize("scheme", ["cr", "ca", "prune"])
def test_a_rewrite_in_training_mode_leaves_the_running_statistics_alone(scheme):
    """A second rewrite of a rejuvenated network in training mode (NR's events happen while
    it trains) keeps its eval function: the shapes of partitioned layers need a real run,
    which must not update any BatchNorm's running statistics."""
    from wrapped import small_net
    first = "cr" if scheme == "prune" else scheme
    _, x, surgery = _rejuvenated(first, make=small_net, size=8)
    net = surgery.module
    _perturb(net)
    net.train()
    stats = {n: b.clone() for n, b in net.named_buffers() if "running" in n}
    graph = fxs.analyze(net, x)
    kill(graph, 0.3, seed=2)
    plan = fxs.plan(graph, fxs.liveliness(graph), metric="params", target=1.0 if scheme != "prune" else None,
                    scheme=scheme)
    again = fxs.rewrite(graph, plan)                     # its self-check compares in eval mode
    assert net.training and again.module.training
    kept = dict(again.module.named_buffers())
    for name, before in stats.items():      # the survivors' statistics, carried as they were
        survivors = np.ones(kept[name].shape[0], bool)
        for _, idx in again.index_maps.get(name, []):
            survivors = idx >= 0
        assert survivors.any()
        assert torch.equal(kept[name][survivors], again.carry(name, before)[survivors]), name
    assert all(torch.equal(b, stats[n]) for n, b in net.named_buffers() if n in stats)


def test_a_layer_pickled_before_the_dense_form_loads_split_and_can_run_dense():
    import pickle
    layer = nn.Conv2d(5, 4, 3, padding=1).double()
    part = Partitioned.from_dense("ca", layer, np.array([0, 0, 0, 1]), np.array([1, 0, -1, 0, 1]))
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    want = part(x)
    del part.form, part._buffers["order"], part._buffers["own"]     # what such a pickle holds
    part.like = part.like.new_zeros(0)
    old = pickle.loads(pickle.dumps(part))
    assert old.form == "split"
    torch.testing.assert_close(old(x), want)
    old.form = "dense"
    torch.testing.assert_close(old(x), want)
