import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.channels.modes import evaluating


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def _net(mid: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), mid, nn.Conv2d(8, 4, 1))


def test_untraceable_error_names_module_line_and_leaf_hint():
    with pytest.raises(fxs.UntraceableModelError) as err:
        fxs.analyze(_net(DataDependent()), torch.randn(1, 3, 8, 8))
    msg = str(err.value)
    assert "'2' (DataDependent)" in msg
    assert "if x.sum() > 0:" in msg and "test_tracing.py" in msg
    assert "leaf_modules=[DataDependent]" in msg


def test_leaf_module_is_opaque_and_pins_what_it_touches():
    graph = fxs.analyze(_net(DataDependent()), torch.randn(1, 3, 8, 8), leaf_modules=[DataDependent])
    first = graph["0"]
    assert not first.free and "leaf module 2 (DataDependent)" in first.pinned
    assert graph.count("params") == sum(p.numel() for p in _net(DataDependent()).parameters())


def branchy(x):
    return x.relu() if x.mean() > 0 else x


class UsesFunction(nn.Module):
    def forward(self, x):
        return branchy(x)


def test_autowrapped_function_is_one_opaque_call():
    graph = fxs.analyze(_net(UsesFunction()), torch.randn(1, 3, 8, 8), autowrap_functions=[branchy])
    assert "unknown op branchy()" in graph["0"].pinned


class Cumsum(nn.Module):
    def forward(self, x):
        return x.cumsum(1)


def test_unknown_op_pins_instead_of_passing_channels_through():
    graph = fxs.analyze(_net(Cumsum()), torch.randn(1, 3, 8, 8))
    assert "unknown op .cumsum()" in graph["0"].pinned
    assert graph["3"].pinned == "model output"


def test_users_model_is_not_modified():
    model = _net(nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxs.analyze(model, torch.randn(2, 3, 8, 8))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_bad_inputs_get_clear_errors():
    with pytest.raises(fxs.FxSurgeonError, match="needs a torch.nn.Module"):
        fxs.analyze(lambda x: x, torch.randn(1))
    with pytest.raises(fxs.FxSurgeonError, match=r"failed on the example inputs \[\(1, 5, 8, 8\)\]"):
        fxs.analyze(_net(nn.ReLU()), torch.randn(1, 5, 8, 8))


class BranchInRoot(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_control_flow_in_the_root_gets_a_hint_that_can_help():
    with pytest.raises(fxs.UntraceableModelError) as err:
        fxs.analyze(BranchInRoot(), torch.randn(1, 3, 8, 8))
    msg = str(err.value)
    assert "'<root>' (BranchInRoot)" in msg and "concrete_args" in msg
    assert "leaf_modules=[BranchInRoot]" not in msg


def test_a_data_parallel_model_is_told_to_pass_its_module():
    with pytest.raises(fxs.UntraceableModelError, match=r"wrapped in DataParallel: pass .*\.module"):
        fxs.analyze(nn.DataParallel(_net(nn.ReLU())), torch.randn(1, 3, 8, 8))


def test_analysis_leaves_every_modules_training_flag_as_it_was():
    model = _net(nn.ReLU())
    model[1].eval()                          # mixed: the BatchNorm alone in eval mode
    fxs.analyze(model, torch.randn(1, 3, 8, 8))
    assert [m.training for m in model.modules()] == [True, True, False, True, True]
    graph = fxs.analyze(model.eval(), torch.randn(1, 3, 8, 8))
    graph.module.train()
    graph.module.get_submodule("1").eval()
    with pytest.raises(ZeroDivisionError):
        with evaluating(graph.module):
            assert not any(m.training for m in graph.module.modules())
            1 / 0                                # noqa: B018 - the flags come back on errors too
    assert [m.training for m in graph.module.modules()] == [True, True, False, True, True]


def test_the_traced_module_runs_prints_and_saves_though_its_code_is_made_on_first_use(tmp_path):
    model = _net(nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxs.analyze(model, x[:1])
    assert torch.equal(graph.module(x), model(x))
    assert "conv" in graph.module.code.lower() or "getattr" in graph.module.code
    torch.save(fxs.analyze(model, x[:1]).module, tmp_path / "m.pt")       # never run before saving
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(loaded(x), model(x))


class ReadsTensors(nn.Module):
    """A forward that reads a tied parameter by its second name, a buffer and a parameter
    twice (torch.fx names each by its first name, once)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("shift", torch.randn(4))
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        x = torch.nn.functional.linear(x, self.b.weight) * self.scale + self.shift
        return self.a(x) * self.scale


def test_tensors_read_in_forward_are_named_as_torch_fx_names_them():
    from torch import fx

    from fxsurgeon.analysis.tracing import trace
    model = ReadsTensors()
    ours, theirs = trace(model).graph, fx.symbolic_trace(model).graph
    assert [(n.op, n.target) for n in ours.nodes] == [(n.op, n.target) for n in theirs.nodes]
    assert [n.target for n in ours.nodes if n.op == "get_attr"] == ["a.weight", "scale", "shift"]


class OpaqueOverTwo(nn.Module):
    """A leaf module reading a concatenation of two free dimensions: one pin spans both."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.opaque, self.head = DataDependent(), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.head(self.opaque(torch.cat([self.a(x), self.b(x)], 1)))


def test_a_pin_over_several_dimensions_pins_each_of_them():
    graph = fxs.analyze(OpaqueOverTwo(), torch.randn(1, 3, 8, 8), leaf_modules=[DataDependent])
    for name in ("a", "b"):
        assert not graph[name].free and "leaf module opaque (DataDependent)" in graph[name].pinned
