"""Neural rescaling: lift small per-channel scales of survivors to a common level.

A surviving channel whose scale γ shrank (an L1-regularised run) is multiplied by
``c = goal / sqrt(γ² + β²)`` when that is above 1: γ and β by ``c``, the weights of
every layer reading the channel divided by it. ``sqrt(γ² + β²)`` is the RMS of the
norm's output ``γ·x̂ + β`` (x̂ has zero mean and unit variance). Lifting γ alone would
multiply an unpenalised β by ``goal/|γ|`` (hundreds, when L1 drove γ near the dead
threshold): a huge constant activation whose readers then take steps ∝ its square.

Three goals (``to``):

- ``"layer"`` (the default): the level of the norm's strongest survivor, at most γ0.
  Under a strong L1 every survivor of a layer is far below γ0 (the digits CNN of
  ``tests/test_nr_training.py``: medians ~0.1, maxima 0.2-0.5); lifting all of them to
  γ0 multiplies the curvature seen by their readers' weights by c² (~100), and SGD at
  the learning rate the network was stable at overshoots (the loss doubles after the
  event). Lifting to the layer's strongest survivor equalises the survivors at a level
  the optimizer already handles: no reader direction gets more curvature than the
  strongest channel gave it before the event.
- ``"gamma0"``: ``max(level, γ0)`` with the RMS level above.
- ``"paper"``: the paper's rule exactly (its "neural rescaling"): ``|γ'| = max(|γ|, γ0)``,
  ``c = γ0 / |γ|`` for every channel with ``|γ| < γ0``; β is multiplied by the same ``c``
  (the function is kept only so), however large that makes it.

New channels keep their initial scale in every goal. The factors are returned, so that
an optimizer's state can follow them (a momentum is a sum of gradients, and the
gradient of a tensor multiplied by ``c`` is divided by ``c``).

This is exact only when every path from the norm to those layers is positively
homogeneous (``f(c·x) = c·f(x)`` for ``c > 0``, as the op table says: ReLU, max/avg
pooling, moves, identity) and each layer reads the channel through a weight it holds
directly. Norms with any other path (a residual add, a gate, a bounded activation, the
model output) are left alone and reported.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from ..analysis.propagation import Propagation
from ..channels.nodes import describe, getattr_path, reads_values, value_users
from ..ops import TABLE


def _readers(norm: fx.Node, prop: Propagation, modules) -> tuple[list[fx.Node], str]:
    """The layers reading the norm's output through weights, reached through positively
    homogeneous ops only, or why there are none to rescale."""
    found, stack, seen = [], list(norm.users), set()
    while stack:
        u = stack.pop()
        if u in seen or not reads_values(u):
            continue
        seen.add(u)
        if u.name in prop.depthwise:
            return [], "a depthwise convolution reads it"
        if u.name in prop.readers:
            found.append(u)
        elif u.op == "output":
            return [], "reaches the model output"
        elif u.op.startswith("call_") and TABLE.lookup(u, modules).homogeneous(
                u, modules.get(u.target) if u.op == "call_module" else None):
            stack.extend(u.users)
        else:
            return [], f"path through {describe(u, modules)} is not positively homogeneous"
    return found, ""


GOALS = ("layer", "gamma0", "paper")


@dataclass
class Rescaling:
    """What :func:`rescale` did: per norm the channels it lifted (``done``) or, where it
    could not, those channels and why (``skipped``); per tensor it changed, the factor it
    multiplied it by (``factors``, broadcastable to the tensor)."""

    done: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, tuple[list[int], str]] = field(default_factory=dict)
    factors: dict[str, torch.Tensor] = field(default_factory=dict)


def rescale(module: fx.GraphModule, prop: Propagation, gamma0: float = 1.0, to: str = "layer",
            is_new: Callable[[np.ndarray], np.ndarray] | None = None) -> Rescaling:
    """Rescale every per-channel scale of ``module`` (in place) whose paths allow it.

    ``prop`` is the identity propagation of ``module``; ``to`` the goal (see the module
    docstring); ``is_new`` tells, from a norm's channel identities, which channels the
    rewrite added (they are neither lifted nor a measure of the layer's level).
    """
    modules = dict(module.named_modules())
    nodes = {n.name: n for n in module.graph.nodes}
    out = Rescaling()
    shared: dict[str, int] = {}          # weight or scale -> how many calls use it
    for t in [r.weight for r in prop.readers.values()] + [sc.weight for sc in prop.scales.values()]:
        shared[t] = shared.get(t, 0) + 1
    for name, scale in prop.scales.items():
        node = nodes[name]
        key = scale.weight.rpartition(".")[0] or scale.weight
        gamma = getattr_path(module, scale.weight)
        beta = getattr_path(module, scale.bias) if scale.bias is not None else None
        g = gamma.detach()
        level = g.hypot(beta.detach()) if beta is not None and to != "paper" else g.abs()
        old = torch.ones_like(g, dtype=torch.bool) if is_new is None else \
            torch.as_tensor(~is_new(scale.tags), device=g.device)
        if not old.any():
            continue
        goal = min(gamma0, level[old].max().item()) if to == "layer" else gamma0
        small = (level < goal) & (g != 0) & old
        if not small.any():
            continue
        readers, why = _readers(node, prop, modules) if scale.homogeneous else \
            ([], "its own activation after the scale is not positively homogeneous")
        if shared[scale.weight] > 1:
            why = "its norm is called at several places"
        if not why and not all(t.requires_grad for t in (gamma, beta) if t is not None):
            why = "its scale or shift is frozen (requires_grad=False)"
        reads = [prop.readers[u.name] for u in readers]
        if not why and any(r.weight is None for r in reads):
            why = "a layer reads it through a computed weight"
        if not why and any(r.divisor > 1 for r in reads):
            why = "a grouped convolution reads it"
        if not why and any(not getattr_path(module, r.weight).requires_grad for r in reads):
            why = "a layer reading it is frozen (requires_grad=False)"
        if not why and any(shared.get(r.weight, 0) > 1 for r in reads):
            why = "a layer reading it shares its weight with another"
        src = node.args[0] if node.args else None
        if not why and isinstance(src, fx.Node) and len(value_users(src)) > 1:
            why = "its input is also read around it"
        if why:
            out.skipped[key] = (torch.nonzero(small).reshape(-1).tolist(), why)
            continue
        c = torch.where(small, goal / level.clamp_min(1e-30), torch.ones_like(g))
        with torch.no_grad():
            gamma.mul_(c)
            out.factors[scale.weight] = c
            if beta is not None:
                beta.mul_(c)
                out.factors[scale.bias] = c
        # raw identities, not their coupled classes: a depthwise conv's outputs are coupled
        # to its inputs but carry identities of their own
        factor = dict(zip(scale.tags.tolist(), c.tolist(), strict=True))
        for r in reads:
            w = getattr_path(module, r.weight)
            div = torch.tensor([factor.get(int(t), 1.0) for t in r.tags], dtype=w.dtype, device=w.device)
            shape = [1] * w.dim()
            shape[r.weight_axis] = -1
            with torch.no_grad():
                w.div_(div.view(shape))
            out.factors[r.weight] = 1 / div.view(shape)
        out.done[key] = int(small.sum())
    return out
