"""The two forms of a cr/ca network's partitioned layers (split: a kernel per block; dense:
one kernel on the assembled weight) compute the same function, train the same
parameters, save and load, deploy, and survive the next surgery; ``form="auto"`` keeps
each layer's faster, timed on the example inputs, and leaves no gradient behind."""
import numpy as np
import pytest
import torch

import fxsurgeon as fxs
from fxsurgeon.layers.partitioned import Partitioned
from fxsurgeon.surgery.forms import choose_forms, set_forms
from fxsurgeon.zoo import vgg19_cifar
from fxsurgeon.zoo.densenet import DenseNetBC
from helpers.surgery import assert_same_function, kill, randomise_norms


def small_densenet():
    return DenseNetBC(16, 8)


def _grown(scheme, form, make=small_densenet, seed=0):
    torch.manual_seed(seed)
    model = make().double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    kill(graph, 0.3, seed)
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme=scheme)
    return model, x, graph, fxs.rewrite(graph, plan, form=form)


def _layers(module):
    return {n: m for n, m in module.named_modules() if isinstance(m, Partitioned)}


@pytest.mark.parametrize("make", [vgg19_cifar, small_densenet], ids=["vgg19", "densenet"])
@pytest.mark.parametrize("scheme", ["cr", "ca"])
def test_a_dense_network_computes_and_trains_what_the_split_one_does(scheme, make):
    model, x, _, split = _grown(scheme, "split", make)
    *_, dense = _grown(scheme, "dense", make)
    assert set(dense.forms.values()) == {"dense"} and set(dense.forms) == set(split.forms)
    assert all(m.form == "dense" for m in _layers(dense.module).values())
    assert_same_function(model, dense.module, x)
    # the same parameters, and one training step moves them alike
    assert dict(split.module.named_parameters()).keys() == dict(dense.module.named_parameters()).keys()
    for surgery in (split, dense):
        surgery.module.train()
        surgery.module(x).square().sum().backward()
    grads = {n: p.grad for n, p in dense.module.named_parameters()}
    for name, p in split.module.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_auto_keeps_the_faster_form_of_each_layer_and_leaves_no_gradient():
    model, x, _, surgery = _grown("cr", "auto")
    timings = {t.layer: t for t in surgery.form_timings}
    assert set(timings) == set(surgery.partitioned) and timings
    for name, t in timings.items():
        assert t.split_s > 0 and t.dense_s > 0
        assert t.form == ("dense" if t.dense_s < t.split_s else "split") == surgery.forms[name]
        assert surgery.module.get_submodule(name).form == t.form
    assert all(p.grad is None for p in surgery.module.parameters())
    assert_same_function(model, surgery.module, x)
    surgery.module.train()
    state = {k: v.clone() for k, v in surgery.module.state_dict().items()}
    choose_forms(surgery.module, (x,), repeats=1)         # mid-training: nothing moves
    assert all(m.training for m in surgery.module.modules())
    for k, v in surgery.module.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_choose_forms_times_a_layer_by_its_input():
    """A layer is timed on what it reads: a wide batch makes the split form's fewer FLOPs
    count, a batch of one the dense form's single kernel (both are exact; only the timings
    differ) -- here only that each is measured on its own input, whatever wins."""
    *_, surgery = _grown("ca", "split")
    module = surgery.module
    timings = choose_forms(module, (torch.randn(1, 3, 32, 32, dtype=torch.float64),), repeats=1)
    assert {t.layer for t in timings} == set(surgery.partitioned)
    with pytest.raises(fxs.FxSurgeonError, match="repeats must be at least 1"):
        choose_forms(module, (torch.randn(1, 3, 32, 32, dtype=torch.float64),), repeats=0)
    with pytest.raises(fxs.FxSurgeonError, match="form is one of"):
        set_forms(module, "fast")


def test_a_bad_form_is_refused_by_name():
    model = small_densenet().eval()
    graph = fxs.analyze(model, torch.randn(1, 3, 32, 32))
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.0, scheme="cr")
    with pytest.raises(fxs.FxSurgeonError, match="form must be one of"):
        fxs.rewrite(graph, plan, form="fused")
    with pytest.raises(fxs.FxSurgeonError, match="form must be one of"):
        fxs.NeuralRejuvenation(model, torch.randn(1, 3, 32, 32), torch.optim.SGD(model.parameters(), lr=0.1),
                               scheme="cr", form="fused")


@pytest.mark.parametrize("scheme", ["cr", "ca"])
def test_forms_are_saved_loaded_deployed_and_planned_again(tmp_path, scheme):
    model, x, graph, surgery = _grown(scheme, "split")
    names = sorted(surgery.forms)
    dense = names[::2]
    for name in dense:                                  # a mix: what "auto" may leave
        surgery.module.get_submodule(name).form = "dense"
    fxs.save(graph, surgery, tmp_path / "net.pt")
    fresh = small_densenet().double()
    loaded = fxs.load(tmp_path / "net.pt", model=fresh)
    assert sorted(n for n, m in _layers(loaded).items() if m.form == "dense") == dense
    assert_same_function(surgery.module.eval(), loaded, x)
    assert_same_function(model, fxs.export(surgery.module), x)
    # the next event reads a dense-form layer as the layer it equals
    again = fxs.analyze(surgery.module, x)
    kill(again, 0.2, 1)
    plan = fxs.plan(again, fxs.liveliness(again), target=1.0, scheme=scheme)
    assert_same_function(surgery.module.eval(), fxs.rewrite(again, plan, form="dense").module, x)


def test_a_file_naming_a_form_it_cannot_have_is_refused(tmp_path):
    _, _, graph, surgery = _grown("cr", "split")
    fxs.save(graph, surgery, tmp_path / "net.pt")
    data = torch.load(tmp_path / "net.pt", weights_only=True)
    for forms, path, why in (({"features.0.0": "dense"}, "conv.pt", "no such partitioned layer"),
                             ({surgery.partitioned[0]: 3}, "bad.pt", "forms")):
        data["surgery"]["forms"] = forms        # a conv that is not partitioned; not a form
        torch.save(data, tmp_path / path)
        with pytest.raises(fxs.FxSurgeonError, match=why):
            fxs.load(tmp_path / path, model=small_densenet().double())


def test_a_dense_form_survives_training_steps_of_an_nr_run():
    torch.manual_seed(0)
    model = small_densenet()
    x = torch.randn(4, 3, 32, 32)
    nr = fxs.NeuralRejuvenation(model, x, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                scheme="cr", threshold=0.99, form="dense")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight[::3] = 0
    assert nr.check() is not None
    layers = _layers(nr.model.network)
    assert layers and all(m.form == "dense" for m in layers.values())
    for _ in range(2):
        nr.zero_grad()
        nr.model(x).logsumexp(1).mean().backward()
        nr.step()
    # the blocks between generations are no parameters: they are still zero
    for m in layers.values():
        out_gen, col_gen = m.generations()
        cross = (out_gen[:, None] != col_gen[None, :]) & (col_gen[None, :] >= 0)
        w = m.dense_weight().flatten(2).abs().sum(2).detach().numpy()
        assert (w[cross] == 0).all()
        assert np.isfinite(w).all()
