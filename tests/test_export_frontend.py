"""torch.export as a second front end: the models symbolic tracing cannot take (HuggingFace
transformers, ultralytics YOLO) analysed exactly and rewritten with the same function.

Each model is built from a small config (nothing is downloaded), in float64: its parameters
are counted exactly, its multiply-accumulates equal FlopCounterMode's, and ``prune`` and
``nr`` keep its function, on the example and on inputs of other sizes.
"""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.ops import TABLE
from helpers.flops import flop_counter_macs
from helpers.models import hf, yolo
from helpers.surgery import kill, randomise_norms


def _fasterrcnn_fpn():
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None,
                                         weights_backbone=None)
    return model.backbone, (torch.randn(2, 3, 96, 96), torch.randn(1, 3, 128, 128))


def _leaves(y) -> list:
    if isinstance(y, torch.Tensor):
        return [y]
    if hasattr(y, "to_tuple"):
        y = y.to_tuple()
    if isinstance(y, dict):
        y = list(y.values())
    return [t for v in y for t in _leaves(v)] if isinstance(y, (list, tuple)) else []


def _same(a, b) -> bool:
    a, b = _leaves(a), _leaves(b)
    return len(a) == len(b) and all(
        s.shape == t.shape and float((s - t).abs().max()) <= 1e-9 * max(1.0, float(s.abs().max()))
        for s, t in zip(a, b, strict=True))


def _kill_outputs(graph, fraction: float, seed: int = 0) -> dict:
    """Make a ``fraction`` of the channels of every free dimension no scale judges dead:
    their producers' rows and biases at zero, so the activation after them (ReLU, GELU) is
    zero. Returns the alive masks."""
    rng = np.random.default_rng(seed)
    tensors = {**dict(graph.module.named_parameters()), **dict(graph.module.named_buffers())}
    alive = {}
    for d in [d for d in graph.free_dims if not d.scaled]:
        dead = rng.random(d.width) < fraction
        alive[d.name] = ~dead
        for m in d.members:
            if m.role in ("out", "param") and m.divisor == 1:
                with torch.no_grad():
                    tensors[m.tensor].index_fill_(m.axis, torch.as_tensor(m.positions[dead[m.channels]]), 0)
    return alive


def exact(model, example, other, frontend="export"):
    """Analyse ``model`` (float64, eval) from its example, check the cost model, make 30 % of
    its free channels dead (zero γ where a BatchNorm judges them, zero projection columns
    of attention heads, else zero producers, which DemP's activation test must find dead),
    then ``prune`` and ``nr``: the same function on ``example`` and on ``other`` (another
    size). Returns the graph and the two rewritten modules."""
    model = model.double().eval()
    randomise_norms(model)
    double = (lambda t: t.double() if t.is_floating_point() else t)
    example, other = double(example), double(other)
    graph = fxs.analyze(model, example, frontend=frontend)
    assert graph.frontend == frontend
    assert graph.count("params") == sum(p.numel() for p in model.parameters())
    assert graph.count("flops") == flop_counter_macs(model, example)
    assert graph.free_dims
    kill(graph, 0.3)        # where a scale judges (γ, an attention head's projection columns)
    alive = {k: a for k, a in fxs.liveliness(graph).items() if graph[k].scaled}
    # elsewhere DemP's test finds them dead (and maybe more, dead on these inputs by chance)
    killed = _kill_outputs(graph, 0.3)
    measured = fxs.activation_liveliness(graph, [example, other])
    assert all((measured[k] <= a).all() for k, a in killed.items())
    alive.update(killed)
    assert any((~a).any() for a in alive.values())
    with torch.no_grad():
        before = [model(example), model(other)]
    done = {}
    for scheme in ("prune", "nr"):
        plan = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme)
        new = fxs.rewrite(graph, plan).module
        assert sum(p.numel() for p in new.parameters()) == plan.predicted
        with torch.no_grad():
            assert _same(before[0], new(example)), scheme
            assert _same(before[1], new(other)), (scheme, "other input size")
        done[scheme] = new
    assert sum(p.numel() for p in done["prune"].parameters()) < graph.count("params")
    return graph, done


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "convnext", "resnet"])
def test_huggingface_models_need_export_and_are_exact(name):
    model, (x, other) = hf(name)
    with pytest.raises(fxs.UntraceableModelError):
        fxs.analyze(model, x, frontend="fx")
    graph, _ = exact(model, x, other, frontend="export")
    # the user's layer names, not the ATen calls'
    assert all(not d.name.startswith(("linear", "conv2d", "addmm")) for d in graph.free_dims)


def test_auto_falls_back_to_export_where_fx_fails():
    model, (x, _) = hf("resnet")
    assert fxs.analyze(model, x).frontend == "export"
    assert fxs.analyze(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)).frontend == "fx"


def test_yolov8n_from_its_yaml():
    model, (x, other) = yolo()
    with pytest.raises(fxs.UntraceableModelError):
        fxs.analyze(model, x, frontend="fx")
    exact(model, x, other)


def test_fasterrcnn_backbone_with_its_fpn_through_export():
    model, (x, other) = _fasterrcnn_fpn()
    exact(model, x, other)


def test_a_whole_detector_is_refused_with_both_front_ends_reasons():
    """Its NMS keeps a data-dependent number of boxes, which neither front end can trace."""
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None,
                                         weights_backbone=None).eval()
    with pytest.raises(fxs.UntraceableModelError, match="(?s)torch.fx cannot trace.*torch.export cannot"):
        fxs.analyze(model, ([torch.randn(3, 64, 64)],))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(8, 4)

    def forward(self, x):
        y = self.bn(self.conv(x)).relu()
        return self.fc(self.drop(y.mean((2, 3))))


def test_an_exported_graph_trains_and_evaluates_as_the_model_does():
    """Batch norms and dropout follow train()/eval(): their mode is read from the module."""
    model, x = _Net().eval(), torch.randn(4, 3, 8, 8)
    gm = fxs.analyze(model, x, frontend="export").module
    assert not gm.training
    assert torch.equal(gm(x), model(x))
    gm.train()
    torch.manual_seed(0)
    got = gm(x)
    model.train()
    torch.manual_seed(0)
    assert torch.equal(got, model(x))
    assert torch.equal(gm.get_submodule("bn").running_mean, model.bn.running_mean)  # shared, updated


def test_literal_sizes_that_keep_a_channel_axis_follow_its_width():
    """An exported graph's view sizes are literals; the one over a free axis is recorded
    (and rewritten), not pinned."""
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 6)

        def forward(self, x):
            h = self.fc1(x).relu()
            return self.fc2(h.view(x.shape[0], 1, h.shape[-1]).view(-1, h.shape[-1]))

    graph, _ = exact(Mlp(), torch.randn(2, 6), torch.randn(3, 6))
    assert [d.name for d in graph.free_dims] == ["fc1"]
    assert graph.propagation.sizes


def test_bad_front_end_arguments_are_refused():
    model, x = _Net(), torch.randn(1, 3, 8, 8)
    with pytest.raises(fxs.FxSurgeonError, match="unknown frontend"):
        fxs.analyze(model, x, frontend="dynamo")
    with pytest.raises(fxs.FxSurgeonError, match="torch.export takes none"):
        fxs.analyze(model, x, frontend="export", leaf_modules=[nn.Conv2d])


def test_aten_rules_live_in_the_op_table():
    aten = torch.ops.aten
    assert TABLE.function_rule(aten.conv2d.default) is not None
    assert TABLE.function_rule(aten.batch_norm.default).mode_argument == ("training", 5)
    assert TABLE.function_rule(aten.nonzero.default) is None        # unknown: opaque


def test_neural_rejuvenation_and_demp_train_an_exported_model():
    """The optimizer wrappers take an exported model unchanged: an event keeps the function,
    and training goes on in train mode (batch statistics) through the rewritten graph."""
    model, (x, _) = hf("resnet")
    model = model.double()
    randomise_norms(model)
    x = x.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, x, opt, threshold=0.9)
    assert nr.graph.frontend == "export"
    net = nr.model

    def step(wrapper):
        net.train()
        opt.zero_grad()
        _leaves(net(x))[0].square().mean().backward()
        wrapper.step()

    step(nr)
    kill(nr.graph, 0.5)
    net.eval()
    with torch.no_grad():
        before = net(x)
    assert nr.check() is not None
    with torch.no_grad():
        assert _same(before, net(x))
    step(nr)

    model, (x, _) = hf("vit")
    model, x = model.double().eval(), x.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    demp = fxs.DemP(model, x, opt, [x], total_steps=4, prune_every=2, reg_peak=0.0, noise_peak=0.0)
    _kill_outputs(demp.graph, 0.5)
    net = demp.model
    with torch.no_grad():
        before = net(x)
    step(demp)
    step(demp)
    assert demp.prunings
    net.eval()
    with torch.no_grad():
        assert _same(before, net(x))


def test_a_parameter_read_before_its_channels_exist_is_resized_with_them():
    """An exported graph reads every parameter first, so a per-channel one (a layer scale)
    holds the oldest identity of each class it is coupled into: it is still its channels'."""
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.gamma = nn.Parameter(torch.rand(8) + 0.5)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.bn(self.conv(x)).relu() * self.gamma.view(1, -1, 1, 1))

    graph, done = exact(LayerScale(), torch.randn(2, 3, 8, 8), torch.randn(1, 3, 12, 12))
    assert done["prune"].gamma.shape[0] < 8


def test_cli_and_saved_surgery_take_the_export_front_end(tmp_path, capsys):
    from fxsurgeon.cli import main
    assert main(["inspect", "torchvision:resnet18", "--frontend", "export",
                 "--input-shape", "1,3,64,64"]) == 0
    assert "11,689,512" in capsys.readouterr().out
    model, (x, other) = hf("resnet")
    model = model.double().eval()
    randomise_norms(model)
    x, other = x.double(), other.double()
    graph = fxs.analyze(model, x)
    kill(graph, 0.3)
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune"))
    fxs.save(graph, surgery, tmp_path / "net.pt")
    fresh, _ = hf("resnet")
    loaded = fxs.load(tmp_path / "net.pt", model=fresh.double().eval())
    with torch.no_grad():
        assert _same(surgery.module(other), loaded(other))


def test_a_rewrite_of_an_exported_model_exports_and_is_analysed_again():
    model, (x, _) = hf("resnet")
    graph = fxs.analyze(model.eval(), x)
    kill(graph, 0.3)
    new = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")).module
    with torch.no_grad():
        assert _same(new(x), torch.export.export(new, (x,), strict=False).module()(x))
    again = fxs.analyze(new, x)
    assert again.frontend == "export" and fxs.analyze(fxs.export(new), x).frontend == "export"
    assert again.count("params") == sum(p.numel() for p in new.parameters()) < graph.count("params")


def test_an_export_with_dynamic_sizes_that_takes_too_long_falls_back_to_the_examples(monkeypatch):
    """torch.export's shape reasoning can take hours (MONAI's SwinUNETR: over 15 minutes at
    64x64); past ``DYNAMIC_SECONDS`` the model is exported at the example's sizes, with a
    warning that says what that costs, and the timer and its handler are put back."""
    import signal
    import time

    from fxsurgeon.analysis import export_frontend
    handler = signal.getsignal(signal.SIGALRM)
    with pytest.raises(export_frontend._TooLong):        # the limit interrupts what runs past it
        with export_frontend._time_limit(0.01):
            time.sleep(60)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is handler
    export = torch.export.export

    def slow_when_dynamic(*args, dynamic_shapes=None, **kwargs):
        if dynamic_shapes is not None:        # what the limit raises once it rings
            raise export_frontend._TooLong()
        return export(*args, **kwargs)
    monkeypatch.setattr(torch.export, "export", slow_when_dynamic)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model, x = model.double().eval(), torch.randn(1, 3, 10, 10, dtype=torch.float64)
    with pytest.warns(UserWarning, match="exported at the example's sizes"):
        graph = fxs.analyze(model, x, frontend="export")
    monkeypatch.setattr(torch.export, "export", export)
    assert graph.count("params") == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(graph.module(x), model(x))
    with pytest.raises(AssertionError, match="Guard failed"):         # static: the example's size only
        graph.module(torch.randn(1, 3, 12, 12, dtype=torch.float64))
    monkeypatch.setattr(export_frontend, "DYNAMIC_SECONDS", None)
    graph = fxs.analyze(model, x, frontend="export")                  # no limit: dynamic sizes
    assert graph.module(torch.randn(1, 3, 12, 12, dtype=torch.float64)).shape == (1, 4, 10, 10)


def test_shapes_stay_on_meta_through_a_device_move(monkeypatch):
    """An exported graph that moves a tensor to the CPU (a Llama's causal mask) has its
    shapes found on meta tensors: no real forward pass in analyze, nor in rewrite."""
    from fxsurgeon.analysis import shapes

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            keep = (x.sum(-1, keepdim=True) > -1e9).to(device="cpu", dtype=torch.bool)
            return self.down(torch.relu(self.up(x))) * keep

    real = []
    recorder = shapes._ShapeRecorder

    class Counting(recorder):
        def __init__(self, gm, on_meta):
            super().__init__(gm, on_meta)
            real.append(not on_meta)
    monkeypatch.setattr(shapes, "_ShapeRecorder", Counting)
    model, x = Masked().eval(), torch.randn(2, 5, 8)
    graph = fxs.analyze(model, x, frontend="export")
    assert any(n.target in shapes._MOVES for n in graph.module.graph.nodes)
    plan = fxs.plan(graph, None, target=0.75, scheme="prune", scores=fxs.importance.magnitude(graph))
    surgery = fxs.rewrite(graph, plan)          # its self-check passes
    assert sum(p.numel() for p in surgery.module.parameters()) < sum(p.numel() for p in model.parameters())
    assert real and not any(real)


def test_an_example_sliced_from_a_batch_gives_a_graph_that_runs_on_fresh_inputs():
    """torch.export guards on a view's base; an example sliced out of a batch (``x[:2, :16]``)
    is exported from a copy, so the graph runs on tensors that are no views, of other sizes."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(50, 8), nn.Linear(8, 4)

        def forward(self, ids):
            return self.fc(self.emb(ids)).mean(1)

    model, batch = Tokens().eval(), torch.randint(0, 50, (4, 64))
    graph = fxs.analyze(model, batch[:2, :16], frontend="export")
    fresh = torch.randint(0, 50, (3, 20))
    assert torch.allclose(graph.module(fresh), model(fresh))
