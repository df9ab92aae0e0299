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
