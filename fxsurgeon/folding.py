"""Fold what removed channels still emit into the layers that read them.

A channel removed because its scale is exactly zero still emits a constant (``ReLU(β)``
of a BatchNorm with ``γ = 0``). At every call that read it, its contribution is put back:
into the layer's bias when it is the same at every position and the bias belongs to that
call alone; else as a per-channel constant added after the call; else (a zero-padded
convolution, where positions near the border see less of it) as a
:class:`~fxsurgeon.folded.FoldedConstant` that the layer's rule builds, computing the map
from the input's size. Each fold is exact at every input size. A removed channel that is
not constant on the example inputs was not dead: removing it changes the function, and
folding refuses.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx

from .errors import FxSurgeonError
from .folded import FoldedConstant
from .matching import is_identity, match, take
from .nodes import getattr_path
from .ops import TABLE


def removed_reads(prop, kept) -> dict:
    """``{call: (its Reader, which positions of its input go)}`` for every call that reads
    a channel ``kept`` drops."""
    return {r.node: (r, ~kept(r.tags)) for r in prop.readers.values() if not kept(r.tags).all()}


def fold_constants(graph, new: fx.GraphModule, new_prop, surgery, removed: dict, calls: dict) -> None:
    """Fold the constants of the ``removed`` reads (see :func:`removed_reads`) into ``new``
    (in place), given each call's arguments in the reference network (``calls``);
    ``surgery.folded`` says how per call, ``surgery.folds`` what was added (as data)."""
    prop = graph.propagation
    modules = dict(graph.module.named_modules())
    old_nodes = {n.name: n for n in graph.module.graph.nodes}
    new_nodes = {n.name: n for n in new.graph.nodes}
    out_old = {node: vec for node, vec, _ in prop.groups}
    out_new = {node: vec for node, vec, _ in new_prop.groups}
    for name, (reader, gone) in removed.items():
        node, call = old_nodes[name], calls[name]
        x = _input(node, call, reader.input)
        axis = reader.axis % x.dim()
        gone_at = torch.as_tensor(np.nonzero(gone)[0], device=x.device)
        values = _constants(x, axis, gone_at, name)
        only_removed = torch.zeros_like(x).index_copy(axis, gone_at, x.index_select(axis, gone_at))
        with torch.no_grad():
            delta = _call(graph.module, node, _with_input(node, call, reader.input, only_removed)) \
                - _call(graph.module, node, _with_input(node, call, reader.input, torch.zeros_like(x)))
        idx = None
        if name in out_old and name in out_new:
            idx = match(prop.uf.find(out_old[name]), new_prop.uf.find(out_new[name]))
            if is_identity(idx, len(out_old[name])):
                idx = None
            else:       # the layer's own outputs changed too (new ones get nothing)
                delta = take(delta, axis, idx)
        per_channel = delta.mean([a for a in range(delta.dim()) if a != axis], keepdim=True)
        if _same(delta, per_channel):
            users = sum(r.bias == reader.bias for r in new_prop.readers.values())
            if reader.bias is not None and users == 1:
                with torch.no_grad():
                    getattr_path(new, reader.bias).add_(per_channel.reshape(-1))
                surgery.folded[name] = "bias"
                continue
            surgery.folds[name] = _attach_constant(new, new_nodes[name], per_channel)
            surgery.folded[name] = "constant"
            continue
        folded = None
        if reader.weight is not None:
            kernel = _summed(getattr_path(graph.module, reader.weight), reader.weight_axis, gone_at, values)
            if idx is not None:
                kernel = take(kernel, 1 - reader.weight_axis, idx)
            folded = TABLE.lookup(node, modules).constant_map(node, graph.module, kernel)
        if folded is None:
            raise FxSurgeonError(f"cannot fold the channels removed from {name}: their constant "
                                 f"varies over the output of {node.format_node()}, and its rule "
                                 f"gives no way to compute that at other input sizes")
        surgery.folds[name] = _attach_map(new, new_nodes[name], new_nodes[reader.input], folded)
        surgery.folded[name] = "map"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    slack = 64 * torch.finfo(a.dtype).eps * max(1.0, float(a.abs().max()))
    return bool(((a - b).abs() <= slack).all())


def _constants(x: torch.Tensor, axis: int, gone_at: torch.Tensor, name: str) -> torch.Tensor:
    """The value each removed channel holds everywhere; a channel that varies was not dead."""
    rows = x.index_select(axis, gone_at).movedim(axis, 0).reshape(len(gone_at), -1)
    values = rows[:, :1]
    if not _same(rows, values):
        raise FxSurgeonError(
            f"cannot fold the channels removed from {name}: they are not constant on the example "
            f"inputs, so they are not dead and removing them changes the function (pass "
            f"fold=False to drop them anyway)")
    return values[:, 0]


def _summed(weight: torch.Tensor, axis: int, at: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``Σ_c values[c] · weight.select(axis, at[c])``, keeping ``axis`` with size one."""
    cols = weight.detach().index_select(axis, at.to(weight.device))
    shape = [1] * weight.dim()
    shape[axis] = -1
    return (cols * values.to(weight.dtype).view(shape)).sum(axis, keepdim=True)


def _free_name(module: torch.nn.Module) -> str:
    taken = {n for n, _ in module.named_modules()} | {n for n, _ in module.named_buffers()}
    k = 0
    while f"_fxs_fold{k}" in taken:
        k += 1
    return f"_fxs_fold{k}"


def _reroute(node: fx.Node, to: fx.Node) -> None:
    """Every user of ``node`` but ``to`` reads ``to`` instead."""
    node.replace_all_uses_with(to, delete_user_cb=lambda user: user is not to)


def _attach_constant(module: fx.GraphModule, node: fx.Node, value: torch.Tensor, name: str | None = None
                     ) -> dict:
    """Add ``value`` (as a buffer) to ``node``'s output."""
    name = name or _free_name(module)
    module.register_buffer(name, value.detach().clone())
    with module.graph.inserting_after(node):
        const = module.graph.get_attr(name)
    with module.graph.inserting_after(const):
        added = module.graph.call_function(operator.add, (node, const))
    _reroute(node, added)
    return {"name": name, "kind": "constant", "shape": list(value.shape), "node": added.name}


def _attach_map(module: fx.GraphModule, node: fx.Node, source: fx.Node, folded: FoldedConstant,
                name: str | None = None) -> dict:
    """Put ``folded(node's output, the size of its input)`` in place of ``node``'s output."""
    name = name or _free_name(module)
    module.add_submodule(name, folded)
    with module.graph.inserting_after(node):
        size = module.graph.call_method("size", (source,))
    with module.graph.inserting_after(size):
        added = module.graph.call_module(name, (node, size))
    _reroute(node, added)
    return {"name": name, "kind": "map", "input": source.name, "node": added.name, **folded.spec()}


def restore_fold(module: fx.GraphModule, node_name: str, spec: dict) -> None:
    """Add back a fold that :func:`fold_constants` recorded (zeros: the weights load over them)."""
    nodes = {n.name: n for n in module.graph.nodes}
    if spec.get("kind", "constant") == "constant":
        _attach_constant(module, nodes[node_name], torch.zeros(spec["shape"]), spec["name"])
    else:
        _attach_map(module, nodes[node_name], nodes[spec["input"]], FoldedConstant.from_spec(spec),
                    spec["name"])


def _input(node: fx.Node, call, source: str):
    args, kwargs = call
    for a, v in [*zip(node.args, args, strict=False), *((node.kwargs[k], kwargs[k]) for k in node.kwargs)]:
        if isinstance(a, fx.Node) and a.name == source:
            return v
    raise FxSurgeonError(f"{node.name} does not read {source} directly")


def _with_input(node: fx.Node, call, source: str, value):
    args, kwargs = call
    swap = (lambda a, v: value if isinstance(a, fx.Node) and a.name == source else v)
    return ([swap(a, v) for a, v in zip(node.args, args, strict=False)],
            {k: swap(a, kwargs[k]) for k, a in node.kwargs.items()})


def _call(module: fx.GraphModule, node: fx.Node, call):
    args, kwargs = call
    if node.op == "call_module":
        return module.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)
