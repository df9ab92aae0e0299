"""Frozen means frozen: a scale that does not require grad is never penalised, in either
form of the L1, whether or not the optimizer holds it (issue: reliability, round 2)."""
import pytest
import torch

import fxsurgeon as fxs
from wrapped import batch, small_net, train_step


def _frozen_gamma():
    model = small_net()
    bn = model[1]
    bn.weight.requires_grad_(False)
    return model, bn


@pytest.mark.parametrize("wrapper", ["nr", "demp"])
@pytest.mark.parametrize("in_optimizer", [True, False])
def test_a_frozen_scale_is_never_penalised(wrapper, in_optimizer):
    model, bn = _frozen_gamma()
    params = model.parameters() if in_optimizer else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1)         # the proximal form of the L1
    x = batch()[0][:1]
    if wrapper == "nr":
        w = fxs.NeuralRejuvenation(model, x, opt, threshold=0.01)
        w.lam = 0.5
    else:
        w = fxs.DemP(model, x, opt, [x], total_steps=4, reg_peak=0.5, prune_every=None)
    before = bn.weight.detach().clone()
    other = model[4].weight.detach().clone()
    for _ in range(2):
        train_step(w)
    assert torch.equal(bn.weight, before)
    assert not torch.equal(model[4].weight, other)      # the trainable one is penalised
    assert "1.weight" not in w.scales


def test_the_subgradient_form_leaves_a_frozen_scale_alone_too():
    model, bn = _frozen_gamma()
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1),
                                threshold=0.01)
    nr.lam = 0.5
    before = bn.weight.detach().clone()
    train_step(nr)
    assert torch.equal(bn.weight, before)


@pytest.mark.parametrize("frozen", ["1.weight", "3.weight"])
def test_rescaling_leaves_a_frozen_scale_and_a_frozen_reader_alone(frozen):
    """Neither a frozen γ (or β) nor a frozen layer reading it is changed by neural
    rescaling: the norm is skipped, and the rewrite says why."""
    model = small_net().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(0.05, 0.4, 8))
        model[4].weight.copy_(torch.linspace(0.05, 0.4, 8))
    model.get_parameter(frozen).requires_grad_(False)
    x = batch()[0]
    graph = fxs.analyze(model, x)
    surgery = fxs.rewrite(graph, fxs.plan(graph, target=None, scheme="prune"), rescale="paper")
    assert "1" not in surgery.rescaled and "frozen" in surgery.rescale_skipped["1"][1]
    assert "4" in surgery.rescaled                       # the trainable norm is rescaled
    assert torch.equal(surgery.module.get_parameter(frozen), model.get_parameter(frozen))
    torch.testing.assert_close(surgery.module(x), model(x))


def test_the_dimensions_left_alone_are_named_once():
    model, _ = _frozen_gamma()
    with pytest.warns(UserWarning, match=r"1 free dimension\(s\) have frozen scales .* left alone: never "
                                         r"penalised, never rescaled \(0\)"):
        fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1))
