"""Fold what removed channels still emit into the layers that read them.

A channel removed because its scale is exactly zero still emits a constant (``ReLU(β)``
of a BatchNorm with ``γ = 0``). At every call that read it, its contribution is put back:
into the layer's bias when it is the same at every position and the bias belongs to that
call alone; else off the running mean of the batch norm that alone reads the call (its
batch statistics cancel a per-channel shift; the op table's ``absorb_shift``); else as a
per-channel constant added after the call; else (a zero-padded
convolution sees less of the constant near the border; a zero pad or an average pool
counting padding on the way makes the constant itself vary) as a
:class:`~fxsurgeon.layers.folded.FoldedConstant`, which computes the contribution at run time
from the input's size: the constants are spread over the last map where they are
constant, replayed through the channel-wise ops on the way (the op table says which
ops act on each channel on its own), then through the layer restricted to those
channels (its rule builds that). Each fold is exact at every input size, and is checked
on the example inputs as it is built. A removed channel that is constant nowhere on
the way was not dead: removing it changes the function, and folding refuses; so it does
where what a removed channel adds is not finite (``0 ** -1`` reached a layer: the network
computed inf or nan there already).
"""
from __future__ import annotations

import operator
from collections import Counter
from typing import NamedTuple

import numpy as np
import torch
from torch import fx

from ..channels.hooks import hookless_copy, quiet
from ..channels.nodes import getattr_path, reads_values, value_users
from ..errors import FxSurgeonError
from ..judging.reference import readout_sources
from ..layers.folded import FoldedConstant
from ..ops import TABLE
from .matching import is_identity, match, take

#: how many channel-wise ops back from a layer folding looks for where a constant is constant
_REACH = 8


class Folding:
    """The folds of one rewrite, in the order they happen: made from the graph and the
    channels it keeps (which calls read removed channels), it says what the reference run
    must hold (:attr:`args_of`, :attr:`outputs_of`), reads that run (:meth:`observe`),
    then folds the removed channels' constants into the new network (:meth:`apply`)."""

    def __init__(self, graph, kept):
        self.graph = graph
        self.removed = _removed_reads(graph, kept)
        #: ``run_graph``'s ``args_of`` and ``outputs_of``: what the reference run keeps
        self.args_of = _held_reads(graph, self.removed)
        self.outputs_of = _watched(self.removed)
        self._calls: dict | None = None
        self._sources: dict = {}

    def observe(self, calls: dict, values: dict) -> None:
        """Take the reference run's arguments of each call (``calls``) and the values of
        the watched nodes (``values``), which are read now and not kept."""
        self._calls = calls
        self._sources = _constant_sources(self.graph, self.removed, calls, values)

    def apply(self, new: fx.GraphModule, new_prop, surgery) -> None:
        """Fold every removed read's constants into ``new`` (in place); ``surgery.folded``
        says how per call, ``surgery.folds`` what was added (as data)."""
        if self._calls is None:
            raise RuntimeError("Folding.apply before the reference run was observed")
        _fold_constants(self.graph, new, new_prop, surgery, self.removed, self._calls, self._sources)


class _Removed(NamedTuple):
    """A call that reads removed channels."""
    reader: object              # its Reader (analysis.propagation)
    gone: np.ndarray            # which positions of its input go
    way: list[fx.Node]          # the way back from its input (see :func:`_way_back`)


class _Source(NamedTuple):
    """Where a removed read's channels are constant: the nearest node on its way back."""
    node: fx.Node
    between: list[fx.Node]      # the channel-wise nodes from it to the read, in order
    constants: torch.Tensor     # what each removed channel holds there
    shape: list[int]            # the node's value's shape


def _removed_reads(graph, kept) -> dict[str, _Removed]:
    """Every call that reads a channel ``kept`` drops, but for channels its own columns
    judge (an attention head: the reference zeroes those columns, so the head adds nothing
    to fold)."""
    prop = graph.propagation
    judged = {(r.param, r.axis) for r in readout_sources(prop)}
    modules = dict(graph.module.named_modules())
    nodes = {n.name: n for n in graph.module.graph.nodes}
    reads = {}
    for r in prop.readers.values():
        gone = ~kept(r.tags) & ((r.weight, r.weight_axis) not in judged)
        if gone.any():
            reads[r.node] = _Removed(r, gone, _way_back(nodes[r.input], modules))
    return reads


class _Cut(NamedTuple):
    """A value of the reference run cut to the channels removed from it (folding reads
    nothing else: held whole, a ViT-L's were 0.3 GB while its new network was built)."""
    values: torch.Tensor        # the removed channels
    axis: int
    at: torch.Tensor            # their positions along ``axis``, increasing
    shape: torch.Size           # the value's

    def full(self) -> torch.Tensor:
        """The value with every other channel at zero."""
        return self.values.new_zeros(self.shape).index_copy(self.axis, self.at, self.values)

    def constant(self, at: torch.Tensor) -> torch.Tensor | None:
        """What each channel ``at`` (removed ones) holds everywhere, or None if one varies."""
        return _constant(self.values, self.axis, torch.searchsorted(self.at, at))


def _cutter(reads: list[tuple[int, np.ndarray]]):
    """What to keep of a value that ``reads`` (each a channel axis, and which of its
    positions go) read: a :class:`_Cut` to the positions any of them removes, or the value
    itself where they disagree on the axis."""
    def cut(x):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return x
        axes = {a % x.dim() for a, _ in reads}
        sizes = {len(gone) for _, gone in reads}
        if len(axes) != 1 or sizes != {x.shape[next(iter(axes))]}:
            return x
        axis = axes.pop()
        gone = np.logical_or.reduce([gone for _, gone in reads])
        at = torch.as_tensor(np.nonzero(gone)[0], device=x.device)
        return _Cut(x.index_select(axis, at), axis, at, x.shape)
    return cut


def _held_reads(graph, removed: dict[str, _Removed]) -> dict:
    """What the reference run keeps of each ``removed`` read's arguments (``run_graph``'s
    ``args_of``): all of them, the input it reads the removed channels from cut to those."""
    nodes = {n.name: n for n in graph.module.graph.nodes}

    def holder(node: fx.Node, reader, gone: np.ndarray):
        cut = _cutter([(reader.axis, gone)])

        def hold(args: list, kwargs: dict):
            x = cut(_input(node, (args, kwargs), reader.input))
            if not isinstance(x, _Cut):
                raise FxSurgeonError(f"{node.name} reads {reader.input} as {type(x).__name__}, not "
                                     f"as the {len(gone)} channels its rule says")
            return _with_input(node, (args, kwargs), reader.input, x)
        return hold
    return {name: holder(nodes[name], read.reader, read.gone) for name, read in removed.items()}


def _way_back(start: fx.Node, modules) -> list[fx.Node]:
    """``start`` and the nodes before it through channel-wise ops of one tensor input,
    nearest first: where a layer's input may still hold the removed channels' constants."""
    way = [start]
    while len(way) <= _REACH:
        n = way[-1]
        inputs = [a for a in n.all_input_nodes if reads_values(a)]
        if not (n.op.startswith("call_") and TABLE.lookup(n, modules).channelwise and len(inputs) == 1
                and n.args and n.args[0] is inputs[0]):
            break
        way.append(inputs[0])
    return way


def _watched(removed: dict[str, _Removed]) -> dict:
    """The nodes whose values folding reads on the reference run (see
    :func:`_constant_sources`), each with what to keep of its value (``run_graph``'s
    ``outputs_of``): the channels removed from it."""
    reads: dict[str, list] = {}
    for read in removed.values():
        for n in read.way:
            reads.setdefault(n.name, []).append((read.reader.axis, read.gone))
    return {name: _cutter(its) for name, its in reads.items()}


def _constant_sources(graph, removed: dict[str, _Removed], calls: dict, values: dict) -> dict:
    """Per ``removed`` read, its :class:`_Source`, or None where the removed channels are
    constant nowhere on its way back on the reference run. Read from the :func:`_watched`
    nodes' ``values`` as soon as the reference has run, so they are
    not held while the new network is built (a ViT-L's were 0.23 GB)."""
    nodes = {n.name: n for n in graph.module.graph.nodes}
    out = {}
    for name, read in removed.items():
        reader, way = read.reader, read.way
        cut = _input(nodes[name], calls[name], reader.input)
        axis, at = cut.axis, cut.at
        found = ((i, _constant_in(values[n.name], axis, at)) for i, n in enumerate(way))
        i, constants = next(((i, c) for i, c in found if c is not None), (None, None))
        if i is not None:
            out[name] = _Source(way[i], way[:i][::-1], constants, list(values[way[i].name].shape))
        else:
            out[name] = None
    return out


def _fold_constants(graph, new: fx.GraphModule, new_prop, surgery, removed: dict[str, _Removed],
                    calls: dict, sources: dict) -> None:
    """:meth:`Folding.apply`, given, on the reference network, each call's arguments
    (``calls``) and the :func:`_constant_sources`."""
    prop = graph.propagation
    modules = dict(graph.module.named_modules())
    old_nodes = {n.name: n for n in graph.module.graph.nodes}
    new_nodes = {n.name: n for n in new.graph.nodes}
    new_modules = dict(new.named_modules())
    called = Counter(id(new_modules[n.target]) for n in new.graph.nodes if n.op == "call_module")
    out_old = {g.node: g.tags for g in prop.groups}
    out_new = {g.node: g.tags for g in new_prop.groups}
    for name, read in removed.items():
        reader, node, call = read.reader, old_nodes[name], calls[name]
        cut = _input(node, call, reader.input)
        axis, at = cut.axis, cut.at
        x = cut.full()              # the removed channels alone
        with torch.no_grad():
            delta = _call(graph.module, node, _with_input(node, call, reader.input, x)) \
                - _call(graph.module, node, _with_input(node, call, reader.input, torch.zeros_like(x)))
        if not torch.isfinite(delta).all():
            raise FxSurgeonError(
                f"cannot fold the channels removed from {name}: what they add to it is not finite (a "
                f"constant such as 0 ** -1 = inf reached it), so the network computed inf or nan there "
                f"before the surgery and no rewrite can keep that")
        raw, idx = delta, None
        if name in out_old and name in out_new:
            idx = match(prop.uf.find(out_old[name]), new_prop.uf.find(out_new[name]))
            if is_identity(idx, len(out_old[name])):
                idx = None
            else:       # the layer's own outputs changed too (new ones get nothing)
                delta = take(delta, axis, idx)
        per_channel = delta.mean([a for a in range(delta.dim()) if a != axis], keepdim=True)
        if _same(delta, per_channel) and cut.constant(at) is not None:
            if not per_channel.any():
                continue            # they add nothing (dead through a ReLU, or read by zeros)
            users = sum(r.bias == reader.bias for r in new_prop.readers.values())
            if reader.bias is not None and users == 1:
                with torch.no_grad():
                    getattr_path(new, reader.bias).add_(per_channel.reshape(-1))
                surgery.folded[name] = "bias"
                continue
            if _absorbed(new_modules, called, new_nodes[name], per_channel):
                surgery.folded[name] = "norm"
                continue
            surgery.folds[name] = _attach_constant(new, new_nodes[name], per_channel)
            surgery.folded[name] = "constant"
            continue
        if sources[name] is None:
            raise FxSurgeonError(
                f"cannot fold the channels removed from {name}: they are not constant on the example "
                f"inputs, so they are not dead and removing them changes the function (pass "
                f"fold=False to drop them anyway)")
        source = sources[name]
        chain = _chain(graph.module, source.between)
        weight = getattr_path(graph.module, reader.weight) if reader.weight is not None else \
            _input(node, call, reader.weight_node)
        columns = _columns(weight.detach(), reader, at.to(weight.device))
        layer = TABLE.lookup(node, modules).restricted(node, graph.module, columns)
        if layer is None:
            raise FxSurgeonError(f"cannot fold the channels removed from {name}: their constants add a "
                                 f"map that varies over its output, and its rule (fxsurgeon.ops) cannot "
                                 f"compute that at other input sizes")
        folded = FoldedConstant(source.constants, layer, chain)
        with torch.no_grad():
            got = folded(torch.zeros_like(raw[:1]), source.shape)
        if got.shape != raw[:1].shape or not _same(got, raw[:1]):
            raise FxSurgeonError(f"cannot fold the channels removed from {name}: computing their "
                                 f"contribution again from sizes does not give what they add")
        if idx is not None:         # the layer's outputs as they now are
            for attr, out_axis in TABLE.module_rule(layer).output_axes(layer):
                layer.register_buffer(attr, take(getattr(layer, attr), out_axis, idx))
        held = TABLE.module_rule(layer).output_axes(layer)[0][0]
        surgery.folds[name] = _attach_map(new, new_nodes[name], new_nodes[source.node.name], folded,
                                          [n.name for n in source.between],
                                          list(getattr(layer, held).shape))
        surgery.folded[name] = "map"


def _columns(weight: torch.Tensor, reader, at: torch.Tensor) -> torch.Tensor:
    """The weight's columns that read input positions ``at``; of a grouped conv, as a
    dense conv's: each column zero outside its own group's rows."""
    if reader.divisor == 1:
        return weight.index_select(reader.weight_axis, at)
    size, rows = weight.shape[1], weight.shape[0] // reader.divisor
    group_of_row = torch.arange(weight.shape[0], device=at.device) // rows
    same = (group_of_row[:, None] == (at // size)[None, :]).to(weight.dtype)
    return weight.index_select(1, at % size) * same.view(*same.shape, *[1] * (weight.dim() - 2))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    slack = 64 * torch.finfo(a.dtype).eps * max(1.0, float(a.abs().max()))
    return bool(((a - b).abs() <= slack).all())


def _constant_in(value, axis: int, at: torch.Tensor) -> torch.Tensor | None:
    """:func:`_constant` of a watched value, whole or cut (on another axis: None)."""
    if isinstance(value, _Cut):
        return value.constant(at) if value.axis == axis else None
    return _constant(value, axis, at)


def _constant(x, axis: int, at: torch.Tensor) -> torch.Tensor | None:
    """The value each channel ``at`` of ``x`` holds everywhere, or None if one varies."""
    if not isinstance(x, torch.Tensor) or x.dim() <= axis or x.shape[axis] <= int(at.max()):
        return None
    rows = x.index_select(axis, at.to(x.device)).movedim(axis, 0).reshape(len(at), -1)
    return rows[:, 0] if _same(rows, rows[:, :1]) else None


def _chain(gm: fx.GraphModule, nodes: list[fx.Node]) -> torch.nn.Module | None:
    """The channel-wise ops ``nodes`` (in order, each reading the one before) as a module of
    their own, or None if there are none; their other arguments must be literals."""
    if not nodes:
        return None
    g = fx.Graph()
    x = g.placeholder("x")
    env = {nodes[0].args[0]: x}
    for n in nodes:
        others = [a for a in n.all_input_nodes if a is not n.args[0]]
        if others:
            raise FxSurgeonError(f"cannot fold through {n.name}: it reads {others[0].name} besides "
                                 f"the channels, so it cannot be replayed on them alone")
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[nodes[-1]])
    return fx.GraphModule({n.target: hookless_copy(gm.get_submodule(n.target))     # as they are now
                           for n in nodes if n.op == "call_module"} |
                          {n.target: getattr_path(gm, n.target) for n in nodes if n.op == "get_attr"}, g)


def _free_name(module: torch.nn.Module) -> str:
    taken = {n for n, _ in module.named_modules()} | {n for n, _ in module.named_buffers()}
    k = 0
    while f"_fxs_fold{k}" in taken:
        k += 1
    return f"_fxs_fold{k}"


def _reroute(node: fx.Node, to: fx.Node) -> None:
    """Every user of ``node`` but ``to`` reads ``to`` instead."""
    node.replace_all_uses_with(to, delete_user_cb=lambda user: user is not to)


def _absorbed(modules: dict, called: Counter, node: fx.Node, value: torch.Tensor) -> bool:
    """Whether the norm that alone reads ``node`` took ``value`` (constant per channel of
    axis 1) into its own state (see :meth:`~fxsurgeon.ops.rule.Rule.absorb_shift`);
    ``called`` counts the calls of each module (by ``id``): a norm called twice would
    shift its other call too."""
    users = value_users(node)
    if len(users) != 1 or users[0].op != "call_module" or not users[0].args or users[0].args[0] is not node:
        return False
    norm = users[0]
    owner = modules.get(norm.target)      # (None: a module this folding added)
    if owner is None or called[id(owner)] != 1 or value.dim() < 2 or value.numel() != value.shape[1] \
            or getattr(owner, "num_features", None) != value.numel():
        return False
    return TABLE.lookup(norm, modules).absorb_shift(norm, owner, value.reshape(-1))


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
                chain: list[str], weight: list[int], name: str | None = None) -> dict:
    """Put ``folded(node's output, the size of source)`` in place of ``node``'s output."""
    name = name or _free_name(module)
    module.add_submodule(name, folded)
    with module.graph.inserting_after(node):
        size = module.graph.call_method("size", (source,))
    with module.graph.inserting_after(size):
        added = module.graph.call_module(name, (node, size))
    _reroute(node, added)
    return {"name": name, "kind": "map", "node": added.name, "source": source.name, "chain": chain,
            "shape": list(folded.values.shape), "weight": weight}


def restore_fold(module: fx.GraphModule, node_name: str, spec: dict) -> None:
    """Add back a fold that :meth:`Folding.apply` recorded (zeros: the weights load over them)."""
    nodes = {n.name: n for n in module.graph.nodes}
    like = next(module.parameters(), torch.zeros(()))      # the network's dtype and device
    zeros = (lambda shape: torch.zeros(shape, dtype=like.dtype, device=like.device))
    if spec["kind"] == "constant":
        _attach_constant(module, nodes[node_name], zeros(spec["shape"]), spec["name"])
        return
    chain = _chain(module, [nodes[n] for n in spec["chain"]])
    consumer = nodes[node_name]
    layer = TABLE.lookup(consumer, dict(module.named_modules())).restricted(
        consumer, module, zeros(spec["weight"]))
    folded = FoldedConstant(zeros(spec["shape"]), layer, chain)
    _attach_map(module, consumer, nodes[spec["source"]], folded, spec["chain"], spec["weight"], spec["name"])


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
        layer = module.get_submodule(node.target)
        with quiet(layer):
            return layer(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)
