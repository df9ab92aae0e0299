"""Surgery in place (``fxs.apply``): the user's model object becomes the rewritten network,
keeping its class, methods, hooks and references, with the same function; or it is refused,
naming the cause, and the model is left exactly as it was (issue: your model stays your model)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.errors import FxSurgeonError
from helpers.surgery import kill, randomise_norms
from randomnets import examples, nets
from wrapped import batch, small_net, train_step


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model, state, x, out):
    return model.state_dict().keys() == state.keys() and \
        all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and torch.equal(model(x), out)


@settings(max_examples=examples(15), deadline=None)
@given(nets(), st.floats(0.1, 0.9), st.integers(0, 2 ** 16), st.sampled_from(["prune", "nr"]))
def test_in_place_the_model_computes_the_rewritten_network_or_is_left_as_it_was(net, fraction, seed, scheme):
    model, x = net
    model, x = model.double().eval(), x.double()
    randomise_norms(model, seed)
    graph = fxs.analyze(model, x)
    kill(graph, fraction, seed)
    plan = fxs.plan(graph, fxs.liveliness(graph), scheme=scheme, target=1.0, round_to=1)
    surgery = fxs.rewrite(graph, plan)
    cls, state, before = type(model), _state(model), model(x)
    try:
        out = fxs.apply(graph, surgery)
    except FxSurgeonError:
        assert _unchanged(model, state, x, before)
        return
    assert out is model and type(model) is cls
    torch.testing.assert_close(model(x), surgery.module(x), rtol=0, atol=1e-10)


def test_a_pruned_model_keeps_its_identity_hooks_and_trains_in_its_optimizer():
    model = small_net().eval()
    with torch.no_grad():
        model[1].weight[:3] = 0
    seen = []
    model[3].register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    x = batch()[0]
    graph = fxs.analyze(model, x[:1])
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme="prune"))
    assert fxs.apply(graph, surgery) is model
    assert isinstance(model, nn.Sequential) and model[0].out_channels == 5 and model[3].in_channels == 5
    assert model[1].num_features == 5 and model[0].weight.shape == (5, 3, 3, 3)
    want = surgery.module(x)
    seen.clear()
    torch.testing.assert_close(model(x), want)
    assert seen == [8]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)      # the parameters the model now holds
    before = model[0].weight.detach().clone()
    model(x).sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
@pytest.mark.parametrize("scheme", ["prune", "nr"])
def test_timm_models_keep_their_methods_after_surgery_in_place(name, scheme):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = fxs.analyze(model, x[:1])
    alive = {d.name: np.arange(d.width) % 4 != 0 for d in graph.free_dims}
    surgery = fxs.rewrite(graph, fxs.plan(graph, alive, scheme=scheme, target=1.0, round_to=1))
    assert fxs.apply(graph, surgery) is model
    torch.testing.assert_close(model(x), surgery.module(x), rtol=0, atol=1e-10)
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), surgery.module(x), rtol=0, atol=1e-10)
    assert model.pretrained_cfg["architecture"] == name


@pytest.mark.parametrize("scheme", ["cr", "ca"])
def test_a_network_held_in_parts_is_refused_and_the_model_left_alone(scheme):
    model = small_net().eval()
    with torch.no_grad():
        model[1].weight[:3] = 0
    x = batch()[0]
    graph = fxs.analyze(model, x[:1])
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme=scheme, target=1.0))
    state, before = _state(model), model(x)
    with pytest.raises(FxSurgeonError, match=f"a {scheme} network holds layers in parts"):
        fxs.apply(graph, surgery)
    assert _unchanged(model, state, x, before)


class Depthwise(nn.Module):
    """A depthwise convolution written functionally, its groups from an attribute or a literal."""

    def __init__(self, literal: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 1, 3, 3))
        self.literal = literal
        if not literal:
            self.groups = 8

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight, padding=1, groups=8 if self.literal else self.groups)


def _depthwise_net(literal: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), Depthwise(literal),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("literal", [False, True])
def test_a_width_the_forward_reads_from_an_attribute_follows_and_a_literal_one_is_refused(literal):
    model = _depthwise_net(literal)
    with torch.no_grad():                   # both norms of the depthwise conv's channels
        model[1].weight[:2] = 0
        model[4].weight[:2] = 0
    x = batch()[0]
    graph = fxs.analyze(model, x[:1])
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme="prune"))
    state, before = _state(model), model(x)
    if literal:
        blocked = r"reads the width 8 at conv2d \(in '3' at .*test_inplace.py:\d+ " \
            r"`return nn.functional.conv2d.*`\), "
        with pytest.raises(FxSurgeonError, match=blocked + "which the rewrite makes 6, and no attribute"):
            fxs.apply(graph, surgery)
        assert _unchanged(model, state, x, before)
    else:
        fxs.apply(graph, surgery)
        assert model[3].groups == 6
        torch.testing.assert_close(model(x), surgery.module(x))


def test_a_huggingface_model_exported_is_pruned_in_place():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=50)
    model = transformers.BertModel(config).double().eval()
    tokens = torch.randint(0, 50, (2, 8))
    graph = fxs.analyze(model, tokens)        # an export is specialised to its batch size
    assert graph.frontend == "export"
    alive = {d.name: np.arange(d.width) % 4 != 1 for d in graph.free_dims}       # a head and units go
    surgery = fxs.rewrite(graph, fxs.plan(graph, alive, scheme="prune"))
    assert fxs.apply(graph, surgery) is model
    assert model.encoder.layer[0].intermediate.dense.out_features == 48
    assert model.encoder.layer[0].attention.self.query.out_features == 24
    torch.testing.assert_close(model(tokens).last_hidden_state, surgery.module(tokens).last_hidden_state)


def _nr_in_place(model, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=1.0, round_to=1, in_place=True, **kw)


def test_rejuvenation_in_place_trains_the_users_own_object_across_events_and_resumes(tmp_path):
    model = small_net()
    seen = []
    model[3].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    nr = _nr_in_place(model, max_events=3)
    assert nr.model is model and nr.network is model
    for _ in range(3):
        with torch.no_grad():           # dead, and constant (β > 0): the next layer takes a fold
            model[1].weight[:3] = 0
            model[1].bias[:3] = 0.5
        event = nr.check()
        assert event is not None and nr.model is model and isinstance(model, nn.Sequential)
        assert all(p is q for p, q in zip(model.parameters(), event.surgery.module.parameters(), strict=True))
        held = {id(p) for g in nr.optimizer.param_groups for p in g["params"]}
        assert held == {id(p) for p in model.parameters()}
        train_step(nr)
    assert seen and seen[-1] == model[0].out_channels
    x = batch()[0]
    nr.save(tmp_path / "ck.pt")
    fresh = small_net()
    again = _nr_in_place(fresh, max_events=3)
    again.load(tmp_path / "ck.pt")
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))
    assert fresh[0].out_channels == model[0].out_channels


def test_demp_prunes_the_users_own_object_in_place():
    model = small_net()
    x = batch()[0]
    demp = fxs.DemP(model, x[:1], torch.optim.SGD(model.parameters(), lr=0.1), [x], total_steps=4,
                    prune_every=None, in_place=True)
    with torch.no_grad():
        model[1].weight[:3] = 0
    assert demp.prune() is not None
    assert demp.model is model and model[0].out_channels == 5 and model[1].num_features == 5
    train_step(demp)


def test_in_place_rejuvenation_refuses_gates_and_ddp_up_front():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 2))
    with pytest.raises(FxSurgeonError, match="gate.*judges=False"):
        fxs.NeuralRejuvenation(mlp, torch.randn(1, 4), torch.optim.SGD(mlp.parameters(), lr=0.1),
                               in_place=True)
    with pytest.raises(FxSurgeonError, match="DistributedDataParallel"):
        _nr_in_place(small_net(), ddp=True)


def test_gpt2_heads_and_mlp_pruned_in_place_still_generate():
    """GPT-2's attention splits by ``split_size``, which holds the same width as ``embed_dim``:
    of the two, the one its forward follows is found by running it."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                     use_cache=False, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    tokens = torch.randint(0, 50, (1, 8))
    graph = fxs.analyze(model, tokens)
    alive = {d.name: np.arange(d.width) % 4 != 1 for d in graph.free_dims}      # a head, a quarter of units
    surgery = fxs.rewrite(graph, fxs.plan(graph, alive, scheme="prune"))
    assert fxs.apply(graph, surgery) is model
    attn = model.transformer.h[0].attn
    assert (attn.split_size, attn.embed_dim, attn.c_attn.weight.shape[1]) == (24, 32, 72)
    torch.testing.assert_close(model(tokens).logits, surgery.module(tokens).logits)
    assert model.generate(tokens, max_new_tokens=3, do_sample=False).shape == (1, 11)
