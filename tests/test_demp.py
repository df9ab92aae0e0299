"""The DemP optimizer wrapper: one-cycle schedules, noise on live units only, removal of
dead units that keeps the function and the optimizer state, resumable runs."""
from itertools import pairwise

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.training.schedules import one_cycle
from helpers.training import kill_relu_units
from wrapped import batch, resumable_run, same_state, small_net, train_step

DEATH_SET = [batch(100 + i) for i in range(2)]


@given(st.integers(1, 5000), st.floats(0.05, 0.95))
def test_one_cycle_rises_to_the_peak_then_decays_to_zero(total, rise):
    values = [one_cycle(t, total, rise) for t in range(total + 2)]
    top = max(range(total + 1), key=lambda t: values[t])
    assert values[0] == 0 and values[total] == 0 == values[total + 1]
    assert max(values) <= 1 and abs(top - rise * total) <= 1
    assert all(a <= b for a, b in pairwise(values[:top + 1]))
    assert all(a >= b for a, b in pairwise(values[top:]))
    if total >= 10:
        assert max(values) > 0.9


def test_lambda_and_sigma_follow_the_schedule():
    model = small_net()
    demp = fxs.DemP(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.0), DEATH_SET,
                    total_steps=10, reg_peak=2.0, noise_peak=3.0, prune_every=None)
    seen = []
    for i in range(10):
        seen.append((demp.lam, demp.sigma))
        train_step(demp, i)
    assert seen[0] == (0.0, 0.0) and seen[3] == (2.0, 3.0)
    assert [s for s, _ in seen] == [2.0 * one_cycle(t, 10) for t in range(10)]


def test_noise_touches_only_live_units():
    model = small_net()
    kill_relu_units(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    demp = fxs.DemP(model, batch()[0][:1], opt, DEATH_SET, total_steps=10, reg_peak=0.0,
                    noise_peak=0.5, prune_every=None)
    demp.steps = 3                                      # the peak
    x, y = batch()
    nn.functional.cross_entropy(demp.model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    demp.step()
    for n, p in model.named_parameters():
        moved = p.detach() != before[n]
        assert torch.equal(moved, grads[n] != 0), n      # lr 0: only the noise moves them
    dead_rows = model.get_submodule("0").weight[[0, 2, 5]]
    assert torch.equal(dead_rows, before["0.weight"][[0, 2, 5]])
    assert (grads["3.weight"][:, [0, 2, 5]] == 0).all()  # readers of dead units get no noise there


@pytest.mark.parametrize("regularization", ["l1", "l2+"])
def test_regularization_touches_only_free_scales(regularization):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4))                    # its output is pinned
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1, 1, 8))
        model[1].bias.copy_(torch.linspace(1, -1, 8))
    demp = fxs.DemP(model, torch.randn(1, 3, 4, 4), torch.optim.SGD(model.parameters(), lr=0.0),
                    [torch.randn(2, 3, 4, 4)], total_steps=10, reg_peak=0.5, noise_peak=0.0,
                    regularization=regularization, prune_every=None)
    demp.steps = 3
    (0 * demp.model(torch.randn(1, 3, 4, 4)).sum()).backward()
    demp.step()
    w, b = model[1].weight, model[1].bias
    if regularization == "l1":
        assert torch.equal(w.grad, 0.5 * torch.sign(w)) and (b.grad == 0).all()
    else:
        assert torch.equal(w.grad, 0.5 * w.clamp(min=0)) and torch.equal(b.grad, 0.5 * b.clamp(min=0))
    assert (model[4].weight.grad == 0).all() and (model[4].bias.grad == 0).all()


def test_pruning_keeps_the_function_the_objects_and_the_optimizer_state():
    model = small_net().double()
    kill_relu_units(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    death = [(x.double(), y) for x, y in DEATH_SET]
    demp = fxs.DemP(model, batch()[0][:1].double(), opt, death, total_steps=100, noise_peak=0.0,
                    reg_peak=0.0, prune_every=None)
    net = demp.model
    for i in range(2):
        train_step(demp, i, torch.float64)
    kill_relu_units(demp.model.network)                      # momentum revived them a little: dead again
    net.eval()
    x = batch(9)[0].double()
    before = net(x)
    old = dict(net.network.named_parameters())
    momentum = {n: opt.state[p]["momentum_buffer"].clone() for n, p in old.items()}
    pruning = demp.prune()
    assert pruning is not None and demp.model is net and pruning.removed == 3
    assert pruning.params_after < pruning.params_before and demp.sparsity() > 0
    torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)   # dead units emitted zeros
    assert net.network.get_submodule("0").out_channels == 5
    new = dict(net.network.named_parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in new.values()}
    for name, p in new.items():
        assert torch.equal(opt.state[p]["momentum_buffer"],
                           pruning.surgery.carry(name, momentum[pruning.surgery.origin(name)])), name
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.025
    assert demp.prune() is None                   # nothing more is dead


def test_the_last_step_prunes():
    model = small_net()
    kill_relu_units(model)
    demp = fxs.DemP(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.0), DEATH_SET,
                    total_steps=3, noise_peak=0.0, prune_every=None)
    for i in range(3):
        train_step(demp, i)
    assert [p.step for p in demp.prunings] == [3]


def _run(tmp_path, steps, save_at=None, resume=None):
    """A DemP run with noise and L1 on, pruning every 3 steps; units die at step 2."""
    def make(model, example, opt):
        return fxs.DemP(model, example, opt, DEATH_SET, total_steps=steps, prune_every=3, reg_peak=1e-2,
                        noise_peak=1e-2, seed=7)
    return resumable_run(make, steps, tmp_path / "run.pt", save_at, resume,
                          lambda w: kill_relu_units(w.model.network))


@pytest.mark.parametrize("save_at", [2, 4])
def test_resuming_gives_the_same_continuation_to_the_bit(tmp_path, save_at):
    straight = _run(tmp_path, 8, save_at=save_at)
    assert straight.prunings and straight.prunings[0].step == 3
    resumed = _run(tmp_path, 8, resume=tmp_path / "run.pt")
    assert [p.summary() for p in resumed.prunings] == [p.summary() for p in straight.prunings]
    assert same_state(straight.model, resumed.model) and resumed.log == straight.log


def test_bad_arguments_and_resumes_are_clear_errors(tmp_path):
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(fxs.FxSurgeonError, match="regularization must be one of l1, l2"):
        fxs.DemP(model, batch()[0][:1], opt, DEATH_SET, total_steps=5, regularization="l2")
    with pytest.raises(fxs.FxSurgeonError, match="re-iterable"):
        fxs.DemP(model, batch()[0][:1], opt, iter(DEATH_SET), total_steps=5)
    with pytest.raises(fxs.FxSurgeonError, match="death set is empty"):
        fxs.DemP(model, batch()[0][:1], opt, [], total_steps=5)
    nr_file = tmp_path / "nr.pt"
    fxs.NeuralRejuvenation(model, batch()[0][:1], opt).save(nr_file)
    with pytest.raises(fxs.FxSurgeonError, match="not a DemP checkpoint"):
        fxs.DemP(model, batch()[0][:1], opt, DEATH_SET, total_steps=5).load(nr_file)
