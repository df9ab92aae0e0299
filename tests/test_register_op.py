"""Users teach fxsurgeon their own layers (fxs.register_op), and the rewrite's self-check
refuses what a wrong rule gets wrong. The layers here exist only in this file, so the
registrations (the op table is global) touch nothing else."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxsurgeon as fxs
from helpers.surgery import randomise_norms


class Affine(nn.Module):
    """A per-channel affine that torch.fx cannot trace (it branches on its input)."""

    def __init__(self, c):
        super().__init__()
        self.gain, self.offset = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError("images only")
        return x * self.gain.view(1, -1, 1, 1) + self.offset.view(1, -1, 1, 1)


class Kernel(nn.Module):
    """A convolution of one's own: weight named ``kernel``, bias ``shift``, zero padding."""

    def __init__(self, cin, cout):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(cout, cin, 3, 3) / cin)
        self.shift = nn.Parameter(torch.randn(cout))

    def forward(self, x):
        if x.shape[-1] < 1:
            raise ValueError("empty")
        return F.conv2d(x, self.kernel, self.shift, padding=1)


def net():
    return nn.Sequential(Kernel(3, 12), Affine(12), nn.ReLU(), Kernel(12, 10), Affine(10), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 4))


class Unregistered(Kernel):
    def forward(self, x):
        return super().forward(x)


def test_an_unknown_layer_fx_cannot_trace_names_itself():
    """... and torch.export, which the default front end falls back to, takes it."""
    model, x = nn.Sequential(Unregistered(3, 4)), torch.randn(1, 3, 8, 8)
    with pytest.raises(fxs.UntraceableModelError, match="Unregistered"):
        fxs.analyze(model, x, frontend="fx")
    assert fxs.analyze(model, x).frontend == "export"


def test_a_registered_layer_is_analysed_planned_and_rewritten_like_a_builtin():
    fxs.register_op(Affine, fxs.ops.PerChannel({"gain": 1.0, "offset": 0.0}, scale="gain", shift="offset"))
    fxs.register_op(Kernel, fxs.ops.Layer(weight="kernel", bias="shift"))
    model = net().double().eval()
    x, other = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(1, 3, 11, 6, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    assert graph.count("params") == sum(p.numel() for p in model.parameters())
    assert [m.tensor for m in graph["0"].sources] == ["1.gain"] and graph["0"].free
    with torch.no_grad():
        model[1].gain[:4] = 0
        model[4].gain[::3] = 0
    alive = fxs.liveliness(graph)
    assert int((~alive["0"]).sum()) == 4 and int((~alive["3"]).sum()) == 4
    for scheme in ("prune", "nr", "cr", "ca"):
        plan = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme)
        surgery = fxs.rewrite(graph, plan, rescale=scheme == "ca")
        for inp in (x, other):
            assert torch.allclose(model(inp), surgery.module(inp), rtol=0, atol=1e-10), scheme
        assert sum(p.numel() for p in surgery.module.parameters()) == plan.predicted
        new = surgery.module
        assert new.get_submodule("1").gain.shape[0] == new.get_submodule("0").kernel.shape[0]


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_the_self_check_refuses_what_a_wrong_rule_gets_wrong():
    """Swish registered as positively homogeneous (it is not): neural rescaling through it
    changes the function; the rewrite names the first layer that differs."""
    fxs.register_op(Swish, fxs.ops.Carry(homogeneous=True))
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), Swish(), nn.Conv2d(8, 4, 1)).double().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    plan = fxs.plan(graph, target=None, scheme="prune")
    with pytest.raises(fxs.FxSurgeonError, match=r"changed the function: the output of 3 \(Conv2d\) differs"):
        fxs.rewrite(graph, plan, rescale=True)
    unchecked = fxs.rewrite(graph, plan, rescale=True, check=False)
    assert not torch.allclose(model(x), unchecked.module(x))      # the check is what caught it


def test_bad_registrations_are_clear_errors():
    with pytest.raises(fxs.FxSurgeonError, match="needs a fxsurgeon.ops.Rule"):
        fxs.register_op(Swish, "carry")
    with pytest.raises(fxs.FxSurgeonError, match="not an nn.Module"):
        fxs.register_op(int, fxs.ops.Carry())


class Shifted(Affine):
    """A subclass with a forward of its own does not inherit its base's rule."""

    def forward(self, x):
        return super().forward(x) + 1


def test_a_subclass_keeps_its_bases_rule_only_with_its_forward():
    fxs.register_op(Affine, fxs.ops.PerChannel({"gain": 1.0, "offset": 0.0}, scale="gain", shift="offset"))
    same = type("Same", (Affine,), {})
    assert fxs.ops.TABLE.module_rule(same(3)) is fxs.ops.TABLE.module_rule(Affine(3))
    assert fxs.ops.TABLE.module_rule(Shifted(3)) is None


def test_a_dotted_name_registers_a_class_without_importing_it():
    fxs.register_op(f"{__name__}.Swish", fxs.ops.Carry())
    assert isinstance(fxs.ops.TABLE.module_rule(Swish()), fxs.ops.Carry)


class Scale(nn.Module):
    """A per-channel scale torch.fx cannot trace, known only to the analyses given its rule
    (nothing registers it process-wide)."""

    def __init__(self, c):
        super().__init__()
        self.g = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError("images only")
        return x * self.g.view(1, -1, 1, 1)


def scaled_net():
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), Scale(12), nn.ReLU(), nn.Conv2d(12, 4, 1))
    return net.double().eval()


def test_rules_given_to_one_analysis_serve_its_passes_and_no_other():
    rule = fxs.ops.PerChannel({"g": 1.0}, scale="g", homogeneous=True)
    model, x = scaled_net(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = fxs.analyze(model, x, ops={Scale: rule})
    assert graph.frontend == "fx" and [m.tensor for m in graph["0"].sources] == ["1.g"]
    assert fxs.ops.TABLE.module_rule(model[1]) is None           # the process-wide table is as it was
    assert fxs.analyze(scaled_net(), x).frontend == "export"     # another analysis does not see the rule
    with torch.no_grad():
        model[1].g[:5] = 0
    alive = fxs.liveliness(graph)
    assert int((~alive["0"]).sum()) == 5
    for scheme in ("prune", "nr", "cr", "ca"):
        plan = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme)
        surgery = fxs.rewrite(graph, plan, rescale=scheme == "ca")
        assert torch.allclose(model(x), surgery.module(x), rtol=0, atol=1e-10), scheme
        again = fxs.analyze(surgery.module, x)                   # a rewritten network keeps its rules
        assert again.count("params") == sum(p.numel() for p in surgery.module.parameters()) == plan.predicted
        assert [d.name for d in again.free_dims] == [d.name for d in graph.free_dims], scheme
    prune = fxs.rewrite(graph, fxs.plan(graph, alive, target=None, scheme="prune"))
    y = model(x)
    assert fxs.apply(graph, prune) is model and model[1].g.shape == (7,)
    assert torch.allclose(model(x), y, rtol=0, atol=1e-10)


def test_rules_in_scope_win_over_the_tables_and_leave_with_it():
    from fxsurgeon.ops.table import scope, scoped
    mine = fxs.ops.Carry()
    table = scoped({nn.ReLU: mine, "relu": mine})
    builtin = fxs.ops.TABLE.module_rule(nn.ReLU())
    with scope(table):
        assert fxs.ops.TABLE.module_rule(nn.ReLU()) is mine
        assert fxs.ops.TABLE.module_rule(nn.Conv2d(1, 1, 1)) is not None      # the rest is the table's
    assert fxs.ops.TABLE.module_rule(nn.ReLU()) is builtin
    with pytest.raises(fxs.FxSurgeonError, match="ops must be a dict"):
        fxs.analyze(nn.ReLU(), torch.randn(1, 3), ops=[mine])
    with pytest.raises(fxs.FxSurgeonError, match="needs a fxsurgeon.ops.Rule"):
        fxs.analyze(nn.ReLU(), torch.randn(1, 3), ops={nn.ReLU: "carry"})


@pytest.mark.parametrize("in_place", [False, True])
def test_rejuvenation_keeps_one_analysis_rules_across_its_events(in_place):
    """NR analyses again after every event: the rules it was given serve each analysis."""
    torch.manual_seed(0)
    model, x = scaled_net(), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    nr = fxs.NeuralRejuvenation(model, x[:1], opt, threshold=1.0, scheme="nr", in_place=in_place,
                                ops={Scale: fxs.ops.PerChannel({"g": 1.0}, scale="g", homogeneous=True)})
    assert nr.graph.frontend == "fx" and [d.name for d in nr.graph.free_dims] == ["0"]
    with torch.no_grad():
        model[1].g[:5] = 0
    nr.model.eval()
    before = nr.model(x)
    event = nr.check()
    assert event is not None and event.widths_alive["0"] == 7
    torch.testing.assert_close(nr.model(x), before, rtol=1e-9, atol=1e-12)
    assert [d.name for d in nr.graph.free_dims] == ["0"] and nr.graph.ops is not None
