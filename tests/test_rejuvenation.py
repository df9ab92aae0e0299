"""The NeuralRejuvenation optimizer wrapper: L1 on free scales, adaptive λ, events that
keep the user's model, optimizer and scheduler objects valid."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from helpers.surgery import randomise_norms
from helpers.training import kill_half
from wrapped import batch, resumable_run, same_state, small_net, train_step


def test_l1_subgradient_touches_only_free_scales():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4))                        # its output is pinned
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    nr = fxs.NeuralRejuvenation(model, torch.randn(1, 3, 4, 4), opt)
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1, 1, 8))
    nr.lam = 0.5
    (0 * nr.model(torch.randn(1, 3, 4, 4)).sum()).backward()     # zero gradients
    nr.step()
    assert torch.equal(model[1].weight.grad, 0.5 * torch.sign(model[1].weight))
    assert (model[4].weight.grad == 0).all()


def test_lambda_grows_while_utilization_stalls_and_resets_after_an_event():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=0.9, check_every=2,
                                delta_lambda=1e-3, delta_r=0.01)
    for i in range(6):
        train_step(nr, i)
    # checks at steps 2, 4, 6: λ grows from the first; then r fell by 0 < Δr twice
    assert [e["lambda"] for e in nr.log] == [0.0, 1e-3, 2e-3]
    assert nr.lam == pytest.approx(3e-3) and not nr.events
    kill_half(nr)
    train_step(nr, 6)
    train_step(nr, 7)                                  # check at step 8 fires the event
    assert [e.step for e in nr.events] == [8] and nr.lam == 0.0 and nr.log[-1]["event"]
    event = nr.events[0]
    assert event.utilization < 0.9 and event.cost_after <= nr.budget
    assert event.cost_alive < event.cost_before and event.alpha > 1


def test_an_event_keeps_the_function_and_the_users_objects():
    model = small_net().double()
    randomise_norms(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1].double(), opt, threshold=0.9)
    net = nr.model
    for i in range(3):
        train_step(nr, i, torch.float64)
    kill_half(nr)
    x = batch(9)[0].double()
    net.eval()
    before = net(x)
    old = dict(net.network.named_parameters())
    momentum = {n: opt.state[p]["momentum_buffer"].clone() for n, p in old.items()}
    event = nr.check()
    assert event is not None and nr.model is net
    torch.testing.assert_close(net(x), before)                   # NR starts where it was
    new = dict(net.network.named_parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in new.values()}
    for name, p in new.items():          # survivors keep their momentum, new channels start at 0
        carried = event.surgery.carry(name, momentum[event.surgery.origin(name)])
        assert torch.equal(opt.state[p]["momentum_buffer"], carried), name
    assert any((opt.state[p]["momentum_buffer"] == 0).any() for p in new.values())
    lr = opt.param_groups[0]["lr"]
    sched.step()
    assert opt.param_groups[0]["lr"] == lr / 2                   # the scheduler drives the same optimizer
    net.train()
    w = net.network.get_submodule("3").weight.clone()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), batch(9)[1]).backward()
    nr.step()
    assert not torch.equal(w, net.network.get_submodule("3").weight)  # new parameters train


@pytest.mark.parametrize("scheme", ["nr", "cr", "ca"])
def test_adam_moments_are_carried_in_every_scheme(scheme):
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=0.9, scheme=scheme)
    for i in range(2):
        train_step(nr, i)
    old = dict(nr.model.network.named_parameters())
    moments = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in old.items()}
    kill_half(nr)
    event = nr.check()
    assert event is not None
    for name, p in nr.model.network.named_parameters():
        origin = event.surgery.origin(name)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], event.surgery.carry(name, moments[origin][key]))
        assert torch.equal(opt.state[p]["step"], moments[origin]["step"])
    train_step(nr, 5)                                              # and training goes on


def test_an_impossible_budget_warns_and_training_goes_on():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=0.9, target=0.1)
    kill_half(nr)
    with pytest.warns(UserWarning, match="impossible budget"):
        assert nr.check() is None
    assert not nr.events and "impossible budget" in nr.log[-1]["error"]
    train_step(nr)


def _run(tmp_path, steps, save_at=None, resume=None, scheme="cr"):
    """An NR run whose event fires at step 4."""
    def make(model, example, opt):
        return fxs.NeuralRejuvenation(model, example, opt, threshold=0.9, check_every=4, scheme=scheme,
                                      rescale=True, delta_lambda=1e-3)
    return resumable_run(make, steps, tmp_path / "run.pt", save_at, resume,
                          kill_half)


@pytest.mark.parametrize("save_at", [3, 6])
def test_resuming_gives_the_same_continuation_to_the_bit(tmp_path, save_at):
    straight = _run(tmp_path, 9, save_at=save_at)
    assert [e.step for e in straight.events] == [4]
    data = torch.load(tmp_path / "run.pt", weights_only=True)        # plain data only
    assert len(data["history"]) == (save_at > 4)
    resumed = _run(tmp_path, 9, resume=tmp_path / "run.pt")
    assert [e.step for e in resumed.events] == [4] and resumed.log == straight.log
    assert same_state(straight.model, resumed.model) and straight.lam == resumed.lam


def test_bad_resumes_are_clear_errors(tmp_path):
    _run(tmp_path, 6, save_at=6)
    (tmp_path / "corrupt.pt").write_bytes(b"junk")
    with pytest.raises(fxs.FxSurgeonError, match="cannot read checkpoint"):
        _run(tmp_path, 6, resume=tmp_path / "corrupt.pt")
    other = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    other(torch.randn(1, 3, 8, 8))
    nr = fxs.NeuralRejuvenation(other, torch.randn(1, 3, 8, 8), torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(fxs.FxSurgeonError, match="cannot resume from .*run.pt"):
        nr.load(tmp_path / "run.pt")
    assert not list(tmp_path.glob(".run.pt.*"))                      # no half-written files left


def wide_net() -> nn.Sequential:
    """small_net with 16 channels where it has 8."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("wrapper", [fxs.NeuralRejuvenation,
                                     lambda *a: fxs.DemP(*a, [batch()], total_steps=5)])
def test_an_optimizer_without_the_models_parameters_is_refused(wrapper):
    model, other = small_net(), small_net()
    with pytest.raises(fxs.FxSurgeonError, match="does not hold 8 of the model's trainable parameters "
                                                 r"\(the first: '0.weight'\)"):
        wrapper(model, batch()[0][:1], torch.optim.SGD(other.parameters(), lr=0.1))
    model[0].requires_grad_(False)                           # frozen: the optimizer need not hold it
    wrapper(model, batch()[0][:1], torch.optim.SGD(model[1:].parameters(), lr=0.1))
    with pytest.raises(fxs.FxSurgeonError, match=r"does not hold 2 .* \(the first: '1.weight'\)"):
        wrapper(model, batch()[0][:1], torch.optim.SGD(model[3:].parameters(), lr=0.1))


def test_a_checkpoint_names_the_architecture_optimizer_and_version_it_needs(tmp_path):
    _run(tmp_path, 6, save_at=6)
    path = tmp_path / "run.pt"
    wide = wide_net()
    nr = fxs.NeuralRejuvenation(wide, batch()[0][:1], torch.optim.SGD(wide.parameters(), lr=0.05))
    with pytest.raises(fxs.FxSurgeonError, match=r"cannot resume from .*run.pt.: it was written for another "
                                                 r"architecture: dimension '0' is 8 wide in the file, 16"):
        nr.load(path)
    model = small_net()
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.Adam(model.parameters()))
    with pytest.raises(fxs.FxSurgeonError, match=r"written with the optimizer torch.optim.sgd.SGD, "
                                                 r"not torch.optim.adam.Adam"):
        nr.load(path)
    data = torch.load(path, weights_only=True)
    torch.save({**data, "format": "fxsurgeon.nr/5"}, path)
    with pytest.raises(fxs.FxSurgeonError, match=r"written by a newer fxsurgeon \(format fxsurgeon.nr/5"):
        nr.load(path)


def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    _run(tmp_path, 6, save_at=6)                     # its history holds the event of step 4
    data = torch.load(tmp_path / "run.pt", weights_only=True)
    data["optimizer"]["param_groups"][0]["lr"] = "fast"
    torch.save(data, tmp_path / "run.pt")
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=0.9)
    network = nr.model.network
    with pytest.raises(fxs.FxSurgeonError, match=r"does not fit .* group 0's 'lr' is 'fast' in the"):
        nr.load(tmp_path / "run.pt")
    assert nr.model.network is network and nr.graph.module is network and not nr.history
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    assert opt.param_groups[0]["lr"] == 0.05
    train_step(nr)                                  # and it trains as if nothing happened


@pytest.mark.parametrize("wrapper, kwargs, message", [
    (fxs.NeuralRejuvenation, {"target": float("nan")}, "target must be a positive multiple"),
    (fxs.NeuralRejuvenation, {"target": 0}, "target must be a positive multiple"),
    (fxs.NeuralRejuvenation, {"threshold": float("inf")}, "threshold must be a utilization"),
    (fxs.NeuralRejuvenation, {"delta_lambda": -1e-3}, "delta_lambda must be at least 0"),
    (fxs.NeuralRejuvenation, {"dead_threshold": 1.5}, "dead_threshold must be between 0 and 1"),
    (lambda *a, **k: fxs.DemP(*a, [batch()], total_steps=5, **k), {"reg_peak": float("nan")},
     "reg_peak must be at least 0"),
    (lambda *a, **k: fxs.DemP(*a, [batch()], total_steps=5, **k), {"rise": 1.0}, "rise must be between"),
])
def test_bad_numbers_are_refused_when_the_wrapper_is_built(wrapper, kwargs, message):
    model = small_net()
    with pytest.raises(fxs.FxSurgeonError, match=message):
        wrapper(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


@pytest.mark.parametrize("round_to", [1, 8])
def test_grown_widths_are_multiples_of_round_to_and_replay_so(round_to, tmp_path):
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], opt, threshold=0.9, target=3.0, round_to=round_to)
    kill_half(nr)
    event = nr.check()
    grown = {n: w for n, w in event.widths_after.items() if w != event.widths_alive[n]}
    filled = event.surgery.plan.filled                  # what rounding left, spent channel by channel
    assert grown and all((w - filled.get(n, 0)) % round_to == 0 for n, w in grown.items())
    if round_to == 1:
        assert any(w % 8 for w in grown.values()) and not filled    # the paper's widths: floor(α·s)
    else:
        assert filled                                   # this budget: rounding to 8 left room
    nr.save(tmp_path / "nr.pt")
    fresh = small_net()
    again = fxs.NeuralRejuvenation(fresh, batch()[0][:1], torch.optim.SGD(fresh.parameters(), lr=0.0),
                                   round_to=3)          # the file says how it rounded, not the caller
    again.load(tmp_path / "nr.pt")
    assert [d.width for d in fxs.analyze(again.model.network, batch()[0][:1]).dims] == \
        [d.width for d in fxs.analyze(nr.model.network, batch()[0][:1]).dims]


def test_a_record_without_round_to_replays_channel_by_channel():
    from fxsurgeon.persistence.history import record, replay
    graph = fxs.analyze(small_net(), batch()[0][:1])
    alive = {d.name: torch.arange(d.width).numpy() % 2 == 0 for d in graph.free_dims}
    p = fxs.plan(graph, alive, metric="flops", target=2.0)
    rec = record(fxs.rewrite(graph, p))
    del rec["round_to"]                                  # as files written before it
    again = replay(graph, rec)
    assert {n: d.new_width for n, d in again.plan.dims.items()} == {n: d.new_width for n, d in p.dims.items()}


def test_a_record_without_rounding_replays_rounded_down():
    """Files written while grown widths were rounded down to their multiple replay so."""
    from fxsurgeon.persistence.history import record, replay
    graph = fxs.analyze(small_net(), batch()[0][:1])
    alive = {d.name: torch.arange(d.width).numpy() % 2 == 0 for d in graph.free_dims}
    widths = {}
    for rounding in ("nearest", "down"):
        p = fxs.plan(graph, alive, metric="flops", alpha=1.5, round_to=8, rounding=rounding)
        widths[rounding] = {n: d.new_width for n, d in p.dims.items()}
        rec = record(fxs.rewrite(graph, p))
        assert rec["rounding"] == rounding
        if rounding == "down":
            del rec["rounding"]                          # as files written before it
        again = replay(graph, rec)
        assert {n: d.new_width for n, d in again.plan.dims.items()} == widths[rounding]
    assert widths["nearest"] != widths["down"]


def _grads(net, x, y) -> dict[str, torch.Tensor]:
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("optimizer, keys", [
    (lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9), {"momentum_buffer": 1}),
    (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0), {"exp_avg": 1, "exp_avg_sq": 2})])
@pytest.mark.parametrize("scheme", ["nr", "cr"])
def test_optimizer_state_follows_neural_rescaling_as_the_gradients_do(optimizer, keys, scheme):
    """A state that sums gradients (to a power) stands to the gradient after the event
    as it did before: rescaling multiplies a tensor by c and divides its gradient by c."""
    model = small_net().double()
    randomise_norms(model)
    opt = optimizer(model.parameters())
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1].double(), opt, threshold=0.9, scheme=scheme,
                                rescale="paper")
    for i in range(3):
        train_step(nr, i, torch.float64)
    kill_half(nr)
    with torch.no_grad():           # survivors well below γ0 = 1: the paper's rule lifts them
        for m in nr.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[1::2] = torch.linspace(0.05, 0.4, 4, dtype=torch.float64)
    net = nr.model.network.eval()
    x, y = batch(7)
    old = _grads(net, x.double(), y)
    state = {n: dict(opt.state[p]) for n, p in net.named_parameters()}
    event = nr.check()
    assert event is not None and event.surgery.rescaled and event.surgery.rescale_factors
    new_net = nr.model.network.eval()
    new = _grads(new_net, x.double(), y)
    followed = 0
    for name, p in new_net.named_parameters():
        origin = event.surgery.origin(name)
        for key, power in keys.items():
            ratio = state[origin][key] / old[origin].abs().pow(power).clamp_min(1e-30)
            before = event.surgery.carry(name, ratio)
            after = opt.state[p][key] / new[name].abs().pow(power).clamp_min(1e-30)
            sure = (new[name].abs() > 1e-8) & (event.surgery.carry(name, old[origin]).abs() > 1e-8)
            torch.testing.assert_close(after[sure], before[sure], rtol=1e-6, atol=1e-9)
            followed += origin in event.surgery.rescale_factors and bool(sure.any())
    assert followed


@pytest.mark.parametrize("opt", ["sgd", "lbfgs"])
def test_a_step_with_a_closure_that_zeroes_the_gradients_keeps_the_penalty(opt):
    """The subgradient goes onto the gradients the closure makes (it zeroed them first): a
    step through a closure moves the scales as a step after backward() does."""
    x, y = batch()
    models = []
    for with_closure in (False, True):
        model = small_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if opt == "sgd" else \
            torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=1)
        nr = fxs.NeuralRejuvenation(model, x[:1], optimizer, threshold=0.01, sparsity="subgradient")
        nr.lam = 0.5

        def closure(nr=nr):
            nr.zero_grad()
            loss = nn.functional.cross_entropy(nr.model(x), y)
            loss.backward()
            return loss
        if with_closure:
            nr.step(closure)
        else:
            closure()
            nr.before_step()
            optimizer.step(lambda: torch.tensor(0.0)) if opt == "lbfgs" else optimizer.step()
            nr.after_step()
        models.append(nr.model.network)
    torch.testing.assert_close(models[0].get_submodule("1").weight, models[1].get_submodule("1").weight)
