"""Where a layer's weight comes from: a parameter as is, or computed from parameters.

Weight standardization (``StdConv2d``), weight normalization, parametrizations and
low-rank updates compute a layer's weight in the graph from parameters alone. To resize
such a layer, fxsurgeon must know which axis of which parameter moves with the weight's
output and input axes. It finds out by probing the weight's own subgraph: a parameter
axis *maps* to a weight axis when changing the parameter at one position along it
changes the weight at that same position only. A weight axis that no parameter axis
maps to (standardization takes statistics over a filter's inputs) cannot be resized:
its channels are pinned, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from .hooks import quiet
from .nodes import getattr_path


@dataclass
class WeightSource:
    """For each weight axis, the ``(parameter, axis)`` pairs that move with it."""

    direct: str | None = None           # the weight is this parameter, as is
    axes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    why: str = ""                       # why an unmapped axis is not, for pin reasons

    @classmethod
    def of(cls, name: str, ndim: int) -> WeightSource:
        return cls(name, {a: [(name, a)] for a in range(ndim)})


def constant_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes that depend on no input: parameters, buffers, and what is computed from them."""
    const: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr" or (n.op.startswith("call_") and all(a in const for a in n.all_input_nodes)):
            const.add(n)
    return const


def _subgraph(node: fx.Node) -> list[fx.Node]:
    """``node`` and everything it is computed from, in graph order."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return [n for n in node.graph.nodes if n in seen]


def _evaluate(gm: fx.GraphModule, nodes: list[fx.Node], leaves: dict[str, torch.Tensor]) -> torch.Tensor:
    env: dict[fx.Node, object] = {}
    for n in nodes:
        if n.op == "get_attr":
            env[n] = leaves.get(n.target, getattr_path(gm, n.target))
            continue
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        if n.op == "call_function":
            env[n] = n.target(*args, **kwargs)
        elif n.op == "call_method":
            env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
        else:
            layer = gm.get_submodule(n.target)
            with quiet(layer):
                env[n] = layer(*args, **kwargs)
    return env[nodes[-1]]


def trace_weight(gm: fx.GraphModule, weight: fx.Node, axes: tuple[int, ...], canonical) -> WeightSource:
    """The parameter axes that map to each of the weight's ``axes`` (see the module docstring).
    ``canonical`` turns an attribute path into its tensor's name."""
    if weight.op == "get_attr":
        return WeightSource.of(canonical(weight.target), len(weight.meta["fxs_value"].shape))
    nodes = _subgraph(weight)
    params = {n.target: getattr_path(gm, n.target) for n in nodes if n.op == "get_attr"}
    params = {k: v for k, v in params.items() if isinstance(v, torch.Tensor)}
    if any(v.is_meta for v in params.values()):
        return WeightSource(why="its parameters are on the meta device, where it cannot be probed")
    # copies: the probes change them in place
    leaves = {k: v.detach().to("cpu", torch.float64, copy=True) for k, v in params.items()}
    gen = torch.Generator().manual_seed(0)
    found: dict[int, list[tuple[str, int]]] = {}
    with torch.no_grad():
        base = _evaluate(gm, nodes, leaves)
        tol = 1e-9 * max(1.0, float(base.abs().max()))      # what rounding explains
        for b in axes:
            moving = [(name, a) for name, p in leaves.items() for a in range(p.dim())
                      if p.shape[a] == base.shape[b] > 1
                      and _confined(gm, nodes, leaves, name, a, base, b, tol, gen)]
            if moving and len({name for name, _ in moving}) == len(moving) and \
                    _shrinks(gm, nodes, leaves, moving, base, b, tol):
                found[b] = [(canonical(name), a) for name, a in moving]
    why = "" if all(b in found for b in axes) else \
        f"the weight computed at {weight.name} cannot be resized along its channels"
    return WeightSource(None, found, why)


def _changed(got: torch.Tensor, base: torch.Tensor, b: int, tol: float) -> torch.Tensor:
    """Per position along axis ``b``: whether ``got`` differs from ``base`` there by more
    than ``tol``."""
    d = (got - base).abs_()
    return ~((d.amax([k for k in range(d.dim()) if k != b]) if d.dim() > 1 else d) <= tol)   # NaN: changed


def _confined(gm, nodes, leaves, name, a, base, b, tol, gen) -> bool:
    """Whether changing ``leaves[name]`` at one position along ``a`` changes the weight at
    that position along ``b`` and nowhere else (tried at both ends)."""
    p = leaves[name]
    for j in (0, p.shape[a] - 1):
        row = p.select(a, j)
        kept = row.clone()
        row.add_(torch.rand(row.shape, generator=gen, dtype=row.dtype) + 0.5)
        try:
            changed = _changed(_evaluate(gm, nodes, leaves), base, b, tol)
        finally:
            row.copy_(kept)
        if not changed[j] or changed.sum() != 1:
            return False
    return True


def _shrinks(gm, nodes, leaves, moving, base, b, tol) -> bool:
    """Whether dropping the last position along every ``(parameter, axis)`` of ``moving``
    drops the weight's last position along ``b`` and leaves the rest as it was (a size
    baked into the graph, such as a literal reshape, fails this)."""
    smaller = {name: leaves[name].narrow(a, 0, leaves[name].shape[a] - 1) for name, a in moving}
    try:
        got = _evaluate(gm, nodes, {**leaves, **smaller})
    except Exception:  # noqa: BLE001 - the computation cannot take the smaller size
        return False
    want = base.narrow(b, 0, base.shape[b] - 1)
    return got.shape == want.shape and not bool(_changed(got, want, b, tol).any())
