"""Neural rescaling: lift small BatchNorm scales back to their initial level.

A channel whose scale γ shrank (survivors of an L1-regularised run) gets
``|γ'| = max(|γ|, γ0)`` with its sign kept, β scaled by the same factor ``c``, and the
weights of every consumer of that channel divided by ``c``. This is exact only when
every path from the norm to its consumers is positively homogeneous (ReLU, max/avg
pooling, moves, identity): ``f(c·x) = c·f(x)`` for ``c > 0``. Norms with any other path
(a residual add, a gate, a bounded activation, the model output) are left alone and
reported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .ops import classify, describe
from .propagation import AxisRef, Propagation

#: unary ops with f(c·x) = c·f(x) for c > 0
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                        nn.Dropout3d)
_HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.dropout, F.dropout1d, F.dropout2d,
                          F.dropout3d}
_HOMOGENEOUS_METHODS = {"relu", "relu_", "contiguous", "clone", "detach", "to", "float", "double"}
_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)


def _homogeneous(node: fx.Node, kind: str, modules) -> bool:
    if kind == "spatial":          # pooling and interpolation: per channel, degree one
        return True
    if kind == "move":             # positions only, unless a pad fills with a nonzero value
        if node.op == "call_module" and isinstance(modules[node.target], _PADS):
            return modules[node.target].value == 0
        if node.target is F.pad:
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0)
            return not value
        return True
    if kind != "unary":
        return False
    if node.op == "call_module":
        return isinstance(modules[node.target], _HOMOGENEOUS_MODULES)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCTIONS
    return node.target in _HOMOGENEOUS_METHODS


def _consumers(norm: fx.Node, modules) -> tuple[list[fx.Node], str]:
    """The conv/linear layers the norm's output reaches through homogeneous ops, or why not."""
    found, stack, seen = [], list(norm.users), set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        kind = classify(u, modules)
        if kind == "scalar":
            continue
        if kind in ("producer:conv", "producer:linear"):
            found.append(u)
        elif u.op == "output":
            return [], "reaches the model output"
        elif _homogeneous(u, kind, modules):
            stack.extend(u.users)
        else:
            return [], f"path through {describe(u, modules)} is not positively homogeneous"
    return found, ""


def rescale(module: fx.GraphModule, prop: Propagation, gamma0: float = 1.0
            ) -> tuple[dict[str, int], dict[str, tuple[list[int], str]]]:
    """Rescale every BatchNorm of ``module`` (in place) whose paths allow it.

    ``prop`` is the identity propagation of ``module``. Returns the number of channels
    rescaled per norm, and per norm that had small scales but was skipped, those
    channels and the reason.
    """
    modules = dict(module.named_modules())
    refs: dict[str, dict[str, AxisRef]] = {}
    for r in prop.axes:
        refs.setdefault(r.param, {}).setdefault(r.role, r)
    done, skipped = {}, {}
    for node in module.graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        if not (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine):
            continue
        g = m.weight.detach()
        small = (g.abs() < gamma0) & (g != 0)
        if not small.any():
            continue
        consumers, why = _consumers(node, modules)
        own = refs.get(f"{node.target}.weight", {}).get("param")
        reads = [refs.get(f"{u.target}.weight", {}).get("in") for u in consumers]
        if not why and any(u.name in prop.depthwise for u in consumers):
            why = "a depthwise convolution reads it"
        if not why and (own is None or any(r is None for r in reads)):
            why = "its channels carry no identities into a consumer"
        if not why and any(r.divisor > 1 for r in reads):
            why = "a grouped convolution reads it"
        src = node.args[0] if node.args else None
        if not why and isinstance(src, fx.Node) and len(src.users) > 1:
            why = "its input is also read around it"
        if why:
            skipped[node.target] = (torch.nonzero(small).reshape(-1).tolist(), why)
            continue
        c = torch.where(small, gamma0 / g.abs().clamp_min(1e-30), torch.ones_like(g))
        with torch.no_grad():
            m.weight.mul_(c)
            m.bias.mul_(c)
        # raw identities, not their coupled classes: a depthwise conv's outputs are coupled
        # to its inputs but carry identities of their own
        factor = dict(zip(own.tags.tolist(), c.tolist(), strict=True))
        for u, ref in zip(consumers, reads, strict=True):
            div = torch.tensor([factor.get(int(t), 1.0) for t in ref.tags], dtype=g.dtype)
            shape = [1] * modules[u.target].weight.dim()
            shape[ref.axis] = -1
            with torch.no_grad():
                modules[u.target].weight.div_(div.view(shape))
        done[node.target] = int(small.sum())
    return done, skipped
