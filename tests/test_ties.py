"""A parameter the wrapped model shares with a module outside it stays tied through every
surgery, or the method refuses it when built, naming it (issue: reliability, round 2)."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.errors import FxSurgeonError


class Body(nn.Module):
    """A language model's body: embedding, one gated hidden layer, output projection."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(self.emb(x)))))


class TiedLM(nn.Module):
    """The body and a head tied to its embedding; the methods wrap the body alone."""

    def __init__(self):
        super().__init__()
        self.body = Body()
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.body.emb.weight

    def forward(self, x):
        return self.head(self.body(x))


TOKENS = torch.arange(10)


def _nr(lm, **kw):
    opt = torch.optim.SGD(lm.body.parameters(), lr=0.1, momentum=0.9)
    return fxs.NeuralRejuvenation(lm.body, TOKENS, opt, threshold=1.0, round_to=1, **kw)


def _event(nr):
    with torch.no_grad():
        nr.network.bn.weight[:4] = 0
    event = nr.check()
    assert event is not None and event.widths_alive["fc1"] == 12
    return event


def test_a_tie_a_surgery_may_resize_is_refused_naming_it():
    with pytest.raises(FxSurgeonError, match=r"emb\.weight \(also the weight of a Linear outside .* "
                                             r"along emb .*fixed=\['emb'\]"):
        _nr(TiedLM())


def test_a_tie_is_kept_through_events_and_trains_as_one_parameter():
    torch.manual_seed(0)
    lm = TiedLM()
    nr = _nr(lm, fixed=["emb"], max_events=2)
    assert [t.name for t in nr.ties] == ["emb.weight"]
    for _ in range(2):
        _event(nr)
        assert lm.head.weight is nr.model.network.emb.weight
    before = lm.head.weight.detach().clone()
    nr.zero_grad()
    lm.head(nr.model(TOKENS)).square().mean().backward()
    nr.step()
    assert not torch.equal(lm.head.weight, before)      # the step through both uses moved it


def test_a_tie_in_pinned_channels_alone_needs_nothing_fixed():
    lm = TiedLM()
    teacher = nn.Linear(16, 8)
    teacher.bias = lm.body.fc2.bias                     # fc2's output feeds the head: pinned
    lm.head.weight = nn.Parameter(lm.head.weight.detach().clone())
    nr = _nr(lm)
    _event(nr)
    assert teacher.bias is nr.model.network.fc2.bias


def test_demp_keeps_a_tie_through_a_pruning():
    lm = TiedLM()
    teacher = nn.Linear(16, 8)
    teacher.bias = lm.body.fc2.bias
    lm.head.weight = nn.Parameter(lm.head.weight.detach().clone())
    opt = torch.optim.SGD(lm.body.parameters(), lr=0.1)
    demp = fxs.DemP(lm.body, TOKENS, opt, [TOKENS], total_steps=4, prune_every=None)
    with torch.no_grad():
        demp.model.network.bn.weight[:4] = 0
    assert demp.prune() is not None
    assert demp.model.network.fc1.out_features == 12
    assert teacher.bias is demp.model.network.fc2.bias


def test_a_resumed_run_ties_the_new_model_and_a_failed_resume_leaves_the_tie(tmp_path):
    torch.manual_seed(0)
    lm = TiedLM()
    nr = _nr(lm, fixed=["emb"])
    _event(nr)
    nr.save(tmp_path / "ck.pt")
    fresh = TiedLM()
    again = _nr(fresh, fixed=["emb"])
    again.load(tmp_path / "ck.pt")
    assert fresh.head.weight is again.model.network.emb.weight
    assert torch.equal(fresh.head.weight, lm.head.weight)

    broken = torch.load(tmp_path / "ck.pt", weights_only=True)
    broken["model"]["fc2.weight"] = broken["model"]["fc2.weight"][:, :3]
    torch.save(broken, tmp_path / "broken.pt")
    other = TiedLM()
    third = _nr(other, fixed=["emb"])
    with pytest.raises(FxSurgeonError):
        third.load(tmp_path / "broken.pt")
    assert other.head.weight is third.model.network.emb.weight
    assert third.model.network.fc1.out_features == 16


def test_a_tie_is_kept_when_the_surgery_changes_the_model_in_place():
    torch.manual_seed(0)
    lm = TiedLM()
    nr = _nr(lm, fixed=["emb"], in_place=True)
    _event(nr)
    assert nr.model is lm.body and lm.head.weight is lm.body.emb.weight
