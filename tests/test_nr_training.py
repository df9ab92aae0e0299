"""NR and DemP trained on the digits: the loss stays where it was through an event in every
scheme (with and without neural rescaling) under a strong L1, and with AdamW the
proximal penalty makes NR fire and DemP prune."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.experiments.data import load_data


def cbr(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Inception(nn.Module):
    def __init__(self, cin, width):
        super().__init__()
        self.a, self.b, self.c = cbr(cin, width, 1), cbr(cin, width, 3), nn.Sequential(cbr(cin, width, 1),
                                                                                      cbr(width, width, 3))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.c(x)], 1)


def inception_net() -> nn.Module:
    """The small inception-style CNN of the issue that found the divergence."""
    torch.manual_seed(0)
    return nn.Sequential(cbr(1, 16, 3), Inception(16, 8), nn.MaxPool2d(2), Inception(24, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))


@pytest.fixture
def one_thread():
    """One thread, so that the trajectory (and the loss after the event) does not depend
    on how many cores the run has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def losses_around_events(wrapper, steps: int, count: int = 1, after: int = 20):
    """Train on the digits until ``after`` steps past the ``count``-th event (or ``steps``);
    returns the losses and the step of each event that fired."""
    x, y = load_data("digits").train.tensors
    g = torch.Generator().manual_seed(0)
    losses, events = [], []
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        wrapper.zero_grad()
        loss = nn.functional.cross_entropy(wrapper.model(x[idx]), y[idx])
        loss.backward()
        wrapper.step()
        losses.append(loss.item())
        if len(wrapper.surgeries) > len(events):
            events.append(step + 1)
        if len(events) == count and step + 1 >= events[-1] + after:
            break
    return losses, events


def losses_around_event(wrapper, steps: int, after: int = 20):
    """:func:`losses_around_events` for the first event (its step, or None)."""
    losses, events = losses_around_events(wrapper, steps, 1, after)
    return losses, (events[0] if events else None)


SCHEMES = ("nr", "cr", "ca")


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_loss_after_an_event_stays_where_it_was(scheme, rescale, one_thread):
    """Lifting γ alone multiplied an unpenalised β by γ0/|γ| (up to ~1 000): the loss went
    from 0.47 to 672 on the step after the event. Lifting every survivor to γ0 (the paper's
    goal) still doubled it: under this L1 every survivor is far below γ0, and their readers
    saw c² (~100) times the curvature. Survivors now rise to their layer's strongest."""
    model = inception_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, torch.zeros(1, 1, 8, 8), opt, threshold=0.9, target=1.0, scheme=scheme,
                                rescale=rescale, check_every=10, delta_lambda=0.005)
    losses, event = losses_around_event(nr, 400)
    assert event is not None, nr.log[-1]
    before, after = losses[event - 20:event], losses[event:event + 20]
    assert sum(after) / 20 <= 2 * sum(before) / 20, (sum(before) / 20, sum(after) / 20, max(after))


@pytest.mark.parametrize("scheme", ["nr", "cr"])
def test_the_loss_stays_where_it_was_through_three_rescaled_events(scheme, one_thread):
    """Event after event (a ca network has nothing left to re-plan: docs/nr.md)."""
    model = inception_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, torch.zeros(1, 1, 8, 8), opt, threshold=0.9, target=1.0, scheme=scheme,
                                rescale=True, check_every=10, delta_lambda=0.005, max_events=3)
    losses, events = losses_around_events(nr, 900, count=3)
    assert len(events) == 3, nr.log[-1]
    for e in events:
        before, after = losses[e - 20:e], losses[e:e + 20]
        assert sum(after) <= 2 * sum(before), (e, sum(before) / 20, sum(after) / 20)


def test_nr_with_adamw_fires_an_event():
    model = inception_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    nr = fxs.NeuralRejuvenation(model, torch.zeros(1, 1, 8, 8), opt, threshold=0.9, target=1.0, scheme="cr",
                                check_every=10, delta_lambda=0.1)
    assert nr.sparsity_form == "proximal"
    _, event = losses_around_event(nr, 600, after=1)
    assert event is not None, nr.log[-1]


def test_demp_with_adamw_prunes():
    model = inception_net()
    x = load_data("digits").train.tensors[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    before = sum(p.numel() for p in model.parameters())
    demp = fxs.DemP(model, torch.zeros(1, 1, 8, 8), opt, [x[:128]], total_steps=300, reg_peak=10.0,
                    prune_every=50)
    assert demp.sparsity_form == "proximal"
    losses_around_event(demp, 300, after=1)
    assert demp.surgeries and sum(p.numel() for p in demp.model.network.parameters()) < before
