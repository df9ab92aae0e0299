"""Surgery creates every tensor on its parameter's device and in its dtype: an NR event
and a DemP pruning with a default device of "meta" (a tensor made without an explicit
device lands there and fails loudly) or a default dtype other than the model's, the
same for grouped convolutions and attention heads, and a bfloat16 model through an NR
event."""
import contextlib

import pytest
import torch

import fxsurgeon as fxs
from helpers.training import kill_half
from wrapped import batch, small_net, train_step


@contextlib.contextmanager
def defaults(default: dict):
    """Torch's default device (``{"device": ...}``) or dtype (``{"dtype": ...}``) set for the block."""
    old = torch.get_default_dtype()
    try:
        if "device" in default:
            torch.set_default_device(default["device"])
        else:
            torch.set_default_dtype(default["dtype"])
        yield
    finally:
        torch.set_default_device(None)
        torch.set_default_dtype(old)


def nr_event(model, dtype=torch.float32, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1].to(dtype), opt, threshold=0.9, **kwargs)
    train_step(nr, 0, dtype)
    kill_half(nr)
    return nr


@pytest.mark.parametrize("scheme", ["nr", "cr", "ca"])
@pytest.mark.parametrize("default", [{"device": "meta"}, {"dtype": torch.float64}])
def test_an_event_and_a_pruning_make_no_tensor_by_default(scheme, default):
    nr = nr_event(small_net(), scheme=scheme, rescale=True)
    model = small_net()
    demp = fxs.DemP(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                    [batch()], total_steps=5, prune_every=None)
    train_step(demp)
    with torch.no_grad():
        demp.model.network.get_submodule("1").weight[:3] = 0
    with defaults(default):
        event, pruning = nr.check(), demp.prune()
    assert event is not None and pruning is not None and pruning.removed == 3
    for wrapper in (nr, demp):
        tensors = [*wrapper.model.parameters(), *wrapper.model.buffers(),
                   *(v for s in wrapper.optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
        assert all(t.device.type == "cpu" for t in tensors)
        assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
        train_step(wrapper, 1)


@pytest.mark.parametrize("scheme", ["nr", "cr", "ca"])
def test_a_bfloat16_model_goes_through_an_event(scheme):
    nr = nr_event(small_net().to(torch.bfloat16), torch.bfloat16, scheme=scheme, rescale=True)
    x = batch(9)[0].to(torch.bfloat16)
    nr.model.eval()
    before = nr.model(x)
    assert nr.check() is not None
    assert all(p.dtype == torch.bfloat16 for p in nr.model.parameters())
    torch.testing.assert_close(nr.model(x), before, rtol=0.05, atol=0.05)    # bfloat16's precision
    nr.model.train()
    train_step(nr, 1, torch.bfloat16)
    assert all(torch.isfinite(p).all() for p in nr.model.parameters())


def _grouped():
    from helpers.models import block_net
    from helpers.surgery import randomise_norms
    net = block_net().eval()
    randomise_norms(net)
    with torch.no_grad():
        net[1].a.bn.weight[[1, 6, 11]] = 0       # one channel of each group of the grouped conv
    return net, torch.randn(2, 3, 8, 8)


def _heads():
    from helpers.models import HandWritten
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), HandWritten(8, 4, False), torch.nn.Linear(8, 2)).eval()
    with torch.no_grad():
        net[1].o.weight[:, 2:4] = 0              # head 1 adds nothing
    return net, torch.randn(2, 5, 3)


@pytest.mark.parametrize("build", [_grouped, _heads], ids=["grouped", "heads"])
@pytest.mark.parametrize("default", [{"device": "meta"}, {"dtype": torch.float64}])
def test_resizing_groups_and_heads_makes_no_tensor_by_default(build, default):
    net, x = build()
    graph = fxs.analyze(net, x)
    alive = fxs.liveliness(graph)
    with defaults(default):
        surgeries = [fxs.rewrite(graph, fxs.plan(graph, alive, target=None, scheme="prune")),
                     fxs.rewrite(graph, fxs.plan(graph, alive, target=1.0, scheme="nr", alpha=2.0))]
    for surgery in surgeries:
        assert surgery.plan.dims != {} and any(d.new_width != d.width for d in surgery.plan.dims.values())
        tensors = [*surgery.module.parameters(), *surgery.module.buffers()]
        assert all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
                   for t in tensors)
        torch.testing.assert_close(surgery.module(x), net(x), rtol=1e-4, atol=1e-5)
