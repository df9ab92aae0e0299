"""Judges for free dimensions no norm judges (gates): every free dimension of a transformer,
ConvNeXt or SwiGLU network gets one; putting them in and folding them out keeps the
function; surgery and Neural Rejuvenation work on them (timm ConvNeXt and ViT, a
HuggingFace Llama through torch.export)."""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import fxsurgeon as fxs
from fxsurgeon.layers.gate import Gate
from fxsurgeon.surgery.judges import judged_share, unjudged_dims
from helpers.surgery import kill, randomise_norms
from randomnets import examples
from randomnets import nets as random_cnns
from tokennets import Mlp, nets

SETTINGS = settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _gates(module):
    return [m for m in module.modules() if isinstance(m, Gate)]


def _randomise_gates(module, seed=0):
    """Gates as training leaves them: some at zero, the rest anywhere in (0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in _gates(module):
            w = gate.weight
            w.copy_(torch.rand(w.shape, generator=g, dtype=w.dtype) + 0.5)
            w[::3] = 0


@SETTINGS
@given(nets())
def test_every_free_dimension_of_a_transformer_or_convnext_gets_a_judge(case):
    net, x, _ = case
    graph = fxs.analyze(net, x)
    judged = fxs.add_judges(graph)
    assert judged.unjudged == {}
    assert not unjudged_dims(judged.graph) and judged_share(judged.graph) == 1.0
    mlps = sum(isinstance(m, Mlp) for m in net.modules())
    assert len(judged.gates) == mlps == len(_gates(judged.graph.module))
    # the gates cost nothing: a budget is the cost of the network they fold out of
    assert judged.graph.count("params") == graph.count("params") == sum(p.numel() for p in net.parameters())


@SETTINGS
@given(nets())
def test_judges_keep_the_function_and_fold_away_on_export(case):
    net, x, x2 = case
    gated = fxs.add_judges(fxs.analyze(net, x)).graph.module
    with torch.no_grad():
        for inp in (x, x2):
            assert torch.equal(gated(inp), net(inp))        # g = 1 multiplies exactly
        _randomise_gates(gated)
        deployed = fxs.export(gated)
        assert _gates(deployed) == []
        for inp in (x, x2):
            torch.testing.assert_close(deployed(inp), gated(inp), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(nets())
def test_surgery_on_dead_gates_keeps_the_function_in_every_scheme(case):
    net, x, x2 = case
    graph = fxs.add_judges(fxs.analyze(net, x)).graph
    _randomise_gates(graph.module)
    alive = fxs.liveliness(graph)
    assert any(not a.all() for a in alive.values())
    with torch.no_grad():
        for scheme in ("prune", "nr", "cr", "ca"):
            target = None if scheme == "prune" else 1.0
            plan = fxs.plan(graph, alive, target=target, scheme=scheme, round_to=1)
            new = fxs.rewrite(graph, plan, rescale=True).module
            for inp in (x, x2):
                torch.testing.assert_close(new(inp), graph.module(inp), rtol=1e-9, atol=1e-10)


def test_a_dimension_read_elsewhere_too_gets_its_gate_after_the_layer_that_writes_it():
    class Leaky(torch.nn.Module):
        """The hidden units reach fc2, and fc3 through a product: one gate cannot stand
        before both readers, so it stands after fc1."""

        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = (torch.nn.Linear(4, 8), torch.nn.Linear(8, 3),
                                            torch.nn.Linear(8, 3))

        def forward(self, x):
            h = torch.nn.functional.gelu(self.fc1(x))
            return self.fc2(h) + self.fc3(h * 2)

    x = torch.randn(2, 4, dtype=torch.float64)
    net = Leaky().double()
    judged = fxs.add_judges(fxs.analyze(net, x))
    assert list(judged.gates) == ["judges.fc1"] and judged.unjudged == {}
    _randomise_gates(judged.graph.module)
    with torch.no_grad():
        deployed = fxs.export(judged.graph.module)            # folded into fc1's rows
        assert _gates(deployed) == []
        torch.testing.assert_close(deployed(x), judged.graph.module(x), rtol=1e-10, atol=1e-12)


def test_a_depthwise_writer_gets_its_gate_and_a_dimension_no_gate_can_judge_is_reported():
    class Mixed(torch.nn.Module):
        """A depthwise conv writes a's channels too, and a conv reads them concatenated with
        others: gates after a and after dw. An embedding's channels, read concatenated
        too, have a writer that says nothing of its axis: reported."""

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 1)
            self.dw = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.b = torch.nn.Conv2d(3, 2, 1)
            self.out = torch.nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.out(torch.cat([torch.relu(self.dw(self.a(x))), self.b(x)], 1)).mean((2, 3))

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    net = Mixed().double()
    judged = fxs.add_judges(fxs.analyze(net, x))
    assert {"judges.a", "judges.dw"} <= set(judged.gates) and judged.unjudged == {}
    with torch.no_grad():
        assert torch.equal(judged.graph.module(x), net(x))

    class Embedded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.b = torch.nn.Embedding(10, 4), torch.nn.Linear(3, 2)
            self.out = torch.nn.Linear(6, 2)

        def forward(self, tokens, x):
            return self.out(torch.cat([torch.relu(self.emb(tokens)), self.b(x)], -1))

    judged = fxs.add_judges(fxs.analyze(Embedded(), (torch.tensor([[1, 2]]), torch.randn(1, 2, 3))))
    assert judged.unjudged == {"emb": "emb writes it without saying on which axis"}
    assert list(judged.gates) == ["judges.b"]


def test_a_gate_a_layer_cannot_take_stays_in_the_deployed_network_with_a_warning():
    class Twice(torch.nn.Module):
        """fc2 is called twice, on two gated values: neither call can take its gate alone."""

        def __init__(self):
            super().__init__()
            self.fc1, self.fc3, self.fc2 = (torch.nn.Linear(4, 8), torch.nn.Linear(4, 8),
                                            torch.nn.Linear(8, 4))

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x))) + self.fc2(torch.tanh(self.fc3(x)))

    x = torch.randn(2, 4, dtype=torch.float64)
    judged = fxs.add_judges(fxs.analyze(Twice().double(), x))
    assert len(judged.gates) == 2 and judged.unjudged == {}
    _randomise_gates(judged.graph.module)
    with pytest.warns(UserWarning, match="2 gate.s. stay in the deployed network"):
        deployed = fxs.export(judged.graph.module)
    assert len(_gates(deployed)) == 2
    torch.testing.assert_close(deployed(x), judged.graph.module(x))


# ---- Neural Rejuvenation on models nobody here wrote ----------------------------------

def _timm(name, **kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **kwargs), torch.randn(8, 3, 32, 32)


def _llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                                      use_cache=False)
    return transformers.LlamaForCausalLM(config), torch.randint(0, 50, (8, 8))


MODELS = {"convnext_atto": lambda: _timm("convnext_atto"),
          "vit_tiny": lambda: _timm("vit_tiny_patch16_224", img_size=32, patch_size=8),
          "llama": _llama}


def _logits(out):
    return out.logits[:, -1, :5] if hasattr(out, "logits") else out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nr_rejuvenates_mlp_units_and_heads_of_transformers_and_convnexts(name):
    model, x = MODELS[name]()
    y = torch.arange(8) % 5
    nr = fxs.NeuralRejuvenation(model, x[:2], torch.optim.AdamW(model.parameters(), lr=1e-3),
                                threshold=0.9, round_to=1)
    assert nr.judged.gates and nr.judged.unjudged == {}

    def train(steps):
        losses = []
        for _ in range(steps):
            nr.zero_grad()
            loss = torch.nn.functional.cross_entropy(_logits(nr.model(x)), y)
            loss.backward()
            nr.step()
            losses.append(float(loss.detach()))
        return sum(losses) / steps

    before = train(30)
    network = nr.model.network
    with torch.no_grad():              # the L1 search's outcome, on purpose: a third dead
        for gate in _gates(network):
            gate.weight[::3] = 0
        heads = [n for n, m in network.named_modules() if n.endswith("attn.proj")]
        if heads:                       # a ViT head: its output-projection columns
            network.get_submodule(heads[0]).weight[:, :64] = 0
    nr.model.eval()
    with torch.no_grad():
        old = _logits(nr.model(x))
    event = nr.check()
    assert event is not None and event.alpha > 1
    with torch.no_grad():
        torch.testing.assert_close(_logits(nr.model(x)), old, rtol=1e-4, atol=1e-5)
    gated = {d for d, _ in nr.judged.gates.values()}     # dead units gone, the budget regrown
    assert all(event.widths_alive[d] < event.widths_before[d] for d in gated)
    assert all(event.widths_after[d] > event.widths_alive[d] for d in gated)
    if heads:
        head_dims = [d for d in event.widths_before if d.endswith("attn.heads")]
        assert any(event.widths_alive[d] < event.widths_before[d] for d in head_dims)
    nr.model.train()
    after = train(30)
    assert after < 2 * before
    assert _gates(fxs.export(nr.model.network)) == []


# ---- DemP's death test on GELU / SiLU units --------------------------------------------

@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny"])
def test_demp_prunes_gelu_units_below_a_fraction_of_the_largest(name):
    """A GELU unit whose row is zero and bias -4 emits GELU(-4) = -1.3e-4 whatever its input:
    dead, but never exactly zero, so the exact test finds nothing; 1 % of its dimension's
    largest peak finds it (and any live unit that quiet: like ``epsilon``, the test removes
    quasi-dead units, so the function changes by what they emitted). A SwiGLU unit with a
    zero gate row is exactly zero already: SiLU(0) times anything."""
    model, x = MODELS[name]()
    model = model.eval()
    with torch.no_grad():
        for n, m in model.named_modules():
            if n.endswith("mlp.fc1"):
                m.weight[::3] = 0
                m.bias[::3] = -4
    for fraction, pruned in ((0.0, False), (0.01, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        demp = fxs.DemP(model, x[:2], opt, [x], total_steps=2, prune_every=1, reg_peak=0.0,
                        noise_peak=0.0, fraction=fraction)
        demp.zero_grad()
        _logits(demp.model(x)).sum().backward()
        demp.step()
        assert bool(demp.prunings) == pruned
        if pruned:
            event = demp.prunings[0]
            mlps = [d for d in event.widths_before if d.endswith("mlp.fc1")]
            assert mlps and all(event.widths_after[d] <= event.widths_before[d] * 2 // 3 for d in mlps)


def test_judges_on_the_export_front_end_keep_the_function_and_fold_away():
    """The same gates through torch.export: SwiGLU and GELU MLPs of a token network."""
    from tokennets import Block, TokenNet

    torch.manual_seed(0)
    net = TokenNet(6, 16, [Block(16, 2, 24, "rms", "swiglu", True), Block(16, 2, 16, "layer", "gelu", False)])
    net = net.double().eval()
    x, x2 = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(3, 7, 6, dtype=torch.float64)
    judged = fxs.add_judges(fxs.analyze(net, x, frontend="export"), frontend="export")
    assert judged.graph.frontend == "export" and len(judged.gates) == 2 and judged.unjudged == {}
    gated = judged.graph.module
    with torch.no_grad():
        for inp in (x, x2):
            assert torch.equal(gated(inp), net(inp))
        _randomise_gates(gated)
        deployed = fxs.export(gated)
        assert _gates(deployed) == []
        for inp in (x, x2):
            torch.testing.assert_close(deployed(inp), gated(inp), rtol=1e-10, atol=1e-12)


def test_repeated_events_on_gates_keep_the_function():
    """Two events on a gated network: the gates of the first event's new units start at 1
    and are judged at the second like the survivors'."""
    model, x = MODELS["vit_tiny"]()
    model = model.double()
    x = x.double()
    nr = fxs.NeuralRejuvenation(model, x[:2], torch.optim.AdamW(model.parameters(), lr=1e-3),
                                threshold=0.95, round_to=1, max_events=2)
    for event_number in range(2):
        network = nr.model.network
        with torch.no_grad():
            for gate in _gates(network):
                gate.weight[event_number::4] = 0
        network.eval()
        with torch.no_grad():
            old = network(x)
        event = nr.check()
        assert event is not None
        with torch.no_grad():
            torch.testing.assert_close(nr.model.network.eval()(x), old, rtol=1e-9, atol=1e-10)
        new_gates = _gates(nr.model.network)
        assert new_gates and all(bool((g.weight != 0).all()) for g in new_gates)
    assert len(nr.events) == 2 and not nr.searching


def test_inspect_and_the_plan_name_the_dimensions_no_scale_judges(capsys):
    from fxsurgeon.cli import main
    from fxsurgeon.zoo import vit_digits

    graph = fxs.analyze(vit_digits(), torch.zeros(1, 1, 8, 8))
    notes = {d.name: d.note for d in fxs.plan(graph, fxs.liveliness(graph), scheme="nr").dims.values()}
    assert notes["blocks.0.mlp.fc1"].startswith("no scale judges it")
    judged = fxs.add_judges(graph).graph
    notes = {d.name: d.note for d in fxs.plan(judged, fxs.liveliness(judged), scheme="nr").dims.values()}
    assert "no scale judges it" not in notes["blocks.0.mlp.fc1"]
    assert main(["inspect", "zoo:vit_digits"]) == 0
    out = capsys.readouterr().out
    assert "judged: 0.0% of the free channels by a norm or a head; 100.0% with 2 gate(s)" in out


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cnns())
def test_judges_on_random_cnns_keep_the_function_through_surgery_and_export(net):
    """BatchNorm networks with squeeze-excitation gates, concatenations, grouped convs and
    shared blocks: dimensions a BN only partly judges get gates (after their writers where
    one gate cannot stand before the readers); the function holds with them in, after an
    nr surgery with a third of every judge at zero, and after export (which folds the gates
    it can and keeps the others)."""
    model, x = net
    model = model.double().eval()
    randomise_norms(model)
    x = torch.randn(3, *x.shape[1:], dtype=torch.float64)
    graph = fxs.analyze(model, x)
    judged = fxs.add_judges(graph)
    assert judged_share(judged.graph) >= judged_share(graph)
    judging = {m.tensor for d in judged.graph.free_dims if d.scaled for m in d.sources}
    assert all(f"{gate}.weight" in judging for gate in judged.gates)     # no gate for nothing
    gated = judged.graph.module
    with torch.no_grad():
        assert torch.equal(gated(x), model(x))
        kill(judged.graph, 0.3, seed=1)
        want = gated(x)
        plan = fxs.plan(judged.graph, fxs.liveliness(judged.graph), target=1.0, scheme="nr", round_to=1)
        new = fxs.rewrite(judged.graph, plan).module
        torch.testing.assert_close(new(x), want, rtol=1e-9, atol=1e-10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            deployed = fxs.export(new)
        torch.testing.assert_close(deployed(x), want, rtol=1e-9, atol=1e-10)
