"""Two streams: a ``cr`` or ``ca`` network run with each generation's channels as a tensor
of its own.

A partitioned layer (:mod:`fxsurgeon.layers.partitioned`) computes one block per generation.
Held as one tensor, its input must be sliced per block (a copy: a channel slice is not
contiguous) and its outputs concatenated (another copy), and the norms, activations and
residual additions between layers run over the whole width. :func:`stream` rewrites the
graph so that a value whose channels belong to several generations is held as one tensor
per generation (its positions of that generation, in order): the layers read and emit
those parts, ops that act on each channel on their own run on each part, a concatenation
concatenates part by part. A value is joined back into one tensor only where an op needs
it whole (a flatten before a classifier, an op the table says nothing about).

How an op runs on parts is the op table's answer (:meth:`~fxsurgeon.ops.Rule.stream`):
``"each"`` (applied to every part as to the whole), ``"spatial"`` (the same, for ops
whose channel axis is 1), ``"concat"``, ``"batch_norm"``, ``"depthwise"`` (a convolution
with one group per channel), ``"blocks"`` (a partitioned layer), ``"fold"`` (a folded
constant, added to each part), ``"shape"`` (an op that reads only the shape) and
``"together"`` (the rule's function of all the parts at once: stochastic depth draws
once for every part). The
streamed network shares its modules and parameters with the plain one and keeps the
plain graph (:func:`canonical`): analysis, export and later surgeries read that.
"""
from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx
from torch.fx.node import map_arg

from ..analysis.shapes import propagate_shapes
from ..channels.modes import own_run
from ..channels.nodes import mutates, tensors_in
from ..layers.streamed import CANONICAL, Streamed, blocks, join, shaped, share, take
from ..ops import TABLE
from ..ops.layers import depthwise_part
from ..ops.norms import batch_norm_part


class Unsafe(Exception):
    """The graph cannot be streamed safely (the reason is the message)."""


@dataclass
class _Parts:
    """A value held as one tensor per generation along ``axis`` (negative)."""
    axis: int
    gens: np.ndarray
    nodes: dict[int, fx.Node]

    def same(self, axis: int, gens: np.ndarray) -> bool:
        return self.axis == axis and np.array_equal(self.gens, gens)


def _positions(gens: np.ndarray, g: int) -> tuple[int, int, list[int] | None]:
    at = np.nonzero(gens == g)[0]
    if len(at) and at[-1] - at[0] + 1 == len(at):
        return int(at[0]), len(at), None
    return 0, 0, at.tolist()


def _negative(axis: int, ndim: int) -> int:
    return axis - ndim if axis >= 0 else axis


def _value(node) -> Tensor | None:
    v = node.meta.get("fxs_value") if isinstance(node, fx.Node) else None
    return v if isinstance(v, Tensor) else None


class _Builder:
    """Builds the streamed graph from the plain one, node by node."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.graph = fx.Graph()
        self.whole: dict[fx.Node, fx.Node] = {}     # plain node -> its value as one tensor
        self.parts: dict[fx.Node, _Parts] = {}      # plain node -> its value in parts
        self.attrs: dict[str, fx.Node] = {}
        self.kinds: dict[fx.Node, str | None] = {}
        self.writes: set[fx.Node] = set()           # nodes writing into their first argument
        self.storage: dict[fx.Node, set[fx.Node]] = {}
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for n in gm.graph.nodes:
            self._classify(n)
        self.wanted = self._wanted()

    def _classify(self, n: fx.Node) -> None:
        """``n``'s stream kind, whether it writes in place into its first argument, and the
        values whose memory its output may share: itself where its op always allocates (and
        does not write into its input), else also its inputs' (a view, or the input itself)."""
        kind, fresh = None, n.op in ("placeholder", "get_attr")
        if n.op in ("call_module", "call_function", "call_method"):
            module = self.modules.get(n.target) if n.op == "call_module" else None
            rule = TABLE.lookup(n, self.modules)
            kind = rule.stream(n, module)
            writes = mutates(n, self.modules)
            if writes and n.args and isinstance(n.args[0], fx.Node):
                self.writes.add(n)
            fresh = rule.fresh(n, module) and not writes and "out" not in n.kwargs
        self.kinds[n] = kind
        self.storage[n] = {n} if fresh else {n}.union(*(self.storage[a] for a in n.all_input_nodes))

    def _read_after(self, v: fx.Node, n: fx.Node) -> bool:
        """Whether a node after ``n`` reads ``v`` (the write at ``n`` cannot show otherwise:
        a classifier's in-place dropout on the flattened features, the last read of the
        pooled parts)."""
        return any(self.order[u] > self.order[n] for u in v.users)

    # -- what partitioned layers want their inputs split into, traced back to producers
    def _wanted(self) -> dict[fx.Node, tuple[int, np.ndarray]]:
        wanted: dict[fx.Node, tuple[int, np.ndarray]] = {}
        for n in reversed(self.gm.graph.nodes):
            kind = self.kinds[n]
            if kind == "blocks":
                x, m = n.args[0], self.modules[n.target]
                v = _value(x)
                if v is not None:
                    wanted.setdefault(x, (_negative(m.axis, v.dim()), m.generations()[1]))
            elif n in wanted and kind in ("each", "spatial", "batch_norm", "depthwise"):
                axis, gens = wanted[n]
                for a in n.all_input_nodes:
                    v = _value(a)
                    if v is not None and v.dim() >= -axis and v.shape[axis] == len(gens):
                        wanted.setdefault(a, (axis, gens))
            elif n in wanted and kind == "concat":
                axis, gens = wanted[n]
                tensors, dim = self._cat_args(n)
                values = [_value(t) for t in tensors]
                if dim is None or any(v is None for v in values) or self._axis(dim, n) != axis:
                    continue
                start = 0
                for t, v in zip(tensors, values, strict=True):
                    wanted.setdefault(t, (axis, gens[start:start + v.shape[axis]]))
                    start += v.shape[axis]
        return wanted

    @staticmethod
    def _cat_args(n: fx.Node):
        tensors = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return [], None
        return list(tensors), dim

    @staticmethod
    def _axis(dim: int, n: fx.Node) -> int | None:
        v = _value(n)
        return None if v is None else _negative(dim, v.dim())

    # -- values
    def plain(self, n):
        """The new graph's node holding ``n``'s value as one tensor (joining its parts)."""
        if not isinstance(n, fx.Node):
            return n
        if n not in self.whole:
            p = self.parts[n]
            gens = sorted(p.nodes)
            perm = np.argsort(p.gens, kind="stable")
            order = None if (perm == np.arange(len(perm))).all() else np.argsort(perm).tolist()
            self.whole[n] = self.graph.call_function(join, ([p.nodes[g] for g in gens], p.axis, order))
        return self.whole[n]

    def split(self, n: fx.Node, axis: int, gens: np.ndarray) -> dict[int, fx.Node]:
        """``n``'s value in parts by ``gens`` along ``axis``."""
        held = self.parts.get(n)
        if held is not None and held.same(axis, gens):
            return held.nodes
        whole = self.plain(n)
        nodes = {int(g): self.graph.call_function(take, (whole, axis, *_positions(gens, g)))
                 for g in np.unique(gens)}
        if held is None:
            self.parts[n] = _Parts(axis, gens, nodes)
        return nodes

    def attr(self, target: str) -> fx.Node:
        if target not in self.attrs:
            self.attrs[target] = self.graph.get_attr(target)
        return self.attrs[target]

    # -- the ops
    def run(self) -> fx.Graph:
        """The streamed graph; :class:`Unsafe` where an in-place op could leave one of a
        value's two forms stale."""
        for n in self.gm.graph.nodes:
            kind = self.kinds[n]
            writes = n in self.writes
            if writes and n.args[0] in self.whole and any(
                    v in self.whole and self.storage[v] & self.storage[n.args[0]] and self._read_after(v, n)
                    for v in self.parts):
                # a value held both ways whose memory the write may reach, and read again: the
                # write may reach its other form through a view, or miss it (a join is a copy)
                raise Unsafe(f"{n.name} writes in place into a value that is also held in parts")
            done = kind is not None and not (writes and n.args[0] in self.whole) \
                and getattr(self, f"_{kind}")(n)
            if not done:
                self.whole[n] = self.graph.node_copy(n, self.plain)
                if writes:          # it wrote into the joined tensor: the parts are stale
                    self.parts.pop(n.args[0], None)
            if n not in self.parts and n in self.wanted and len(n.users) > 0:
                axis, gens = self.wanted[n]
                if len(np.unique(gens)) > 1:
                    self.split(n, axis, gens)
        return self.graph

    def _blocks(self, n: fx.Node) -> bool:
        m, x = self.modules[n.target], n.args[0]
        v = _value(x)
        if v is None or len(n.args) != 1 or n.kwargs or (not len(m.blocks) and m.weight_f is None):
            return False
        axis = _negative(m.axis, v.dim())
        rows, cols = m.generations()
        have = self.split(x, axis, cols)
        parts = [have.get(g) for g in range(len(m.cols))] + [have.get(-1)]
        like = next(p for p in parts if p is not None)
        out = self.graph.call_function(blocks, (self.attr(n.target), parts, like))
        self.parts[n] = _Parts(axis, rows, {g: self.graph.call_function(operator.getitem, (out, g))
                                            for g in range(len(m.rows)) if m.rows[g]})
        return True

    def _each(self, n: fx.Node, spatial: bool = False) -> bool:
        streamed = [a for a in n.all_input_nodes if a in self.parts]
        out = _value(n)
        if not streamed or out is None:
            return False
        ref = self.parts[streamed[0]]
        axis, gens = ref.axis, ref.gens
        if out.dim() < -axis or out.shape[axis] != len(gens) or (spatial and out.dim() + axis != 1):
            return False
        use: dict[fx.Node, dict[int, fx.Node] | None] = {}
        for a in n.all_input_nodes:
            v = _value(a)
            if a in self.parts and self.parts[a].same(axis, gens):
                use[a] = self.parts[a].nodes
            elif v is None or v.dim() < -axis or v.shape[axis] == 1:
                use[a] = None                              # not a tensor, or broadcast along the axis
            elif v.shape[axis] == len(gens):
                use[a] = self.split(a, axis, gens)
            else:
                return False
        nodes = {}
        for g in ref.nodes:
            def pick(a, g=g):
                return self.plain(a) if use[a] is None else use[a][g]
            nodes[g] = self.graph.create_node(n.op, n.target, map_arg(n.args, pick), map_arg(n.kwargs, pick))
        self.parts[n] = _Parts(axis, gens, nodes)
        return True

    def _shape(self, n: fx.Node) -> bool:
        if not n.args or n.args[0] not in self.parts:
            return False
        p = self.parts[n.args[0]]
        proxy = self.graph.call_function(shaped, (next(iter(p.nodes.values())), p.axis, len(p.gens)))
        self.whole[n] = self.graph.node_copy(n, lambda a: proxy if a is n.args[0] else self.plain(a))
        return True

    def _fold(self, n: fx.Node) -> bool:
        """A folded constant after a layer: its map, one image, added to each part."""
        y = n.args[0] if n.args else None
        p = self.parts.get(y)
        if p is None or len(n.args) != 2 or n.kwargs or p.axis + _value(n).dim() != 1:
            return False
        first = next(iter(p.nodes.values()))
        constant = self.graph.call_method("constant", (self.attr(n.target), first, self.plain(n.args[1])))
        self.parts[n] = _Parts(p.axis, p.gens, {
            g: self.graph.call_function(operator.add, (node, self.graph.call_function(
                take, (constant, p.axis, *_positions(p.gens, g))))) for g, node in p.nodes.items()})
        return True

    def _spatial(self, n: fx.Node) -> bool:
        return self._each(n, spatial=True)

    def _together(self, n: fx.Node) -> bool:
        """The rule's function of all the parts of the first argument at once."""
        x = n.args[0] if n.args else None
        p = self.parts.get(x)
        if p is None or any(a in self.parts for a in n.all_input_nodes if a is not x):
            return False
        function = TABLE.lookup(n, self.modules).on_parts(n, None)
        gens = sorted(p.nodes)
        parts = [p.nodes[g] for g in gens]
        out = self.graph.call_function(function, (parts, *map_arg(n.args[1:], self.plain)),
                                       map_arg(n.kwargs, self.plain))
        self.parts[n] = _Parts(p.axis, p.gens, {g: self.graph.call_function(operator.getitem, (out, i))
                                                for i, g in enumerate(gens)})
        return True

    def _concat(self, n: fx.Node) -> bool:
        tensors, dim = self._cat_args(n)
        axis = None if dim is None else self._axis(dim, n)
        if axis is None or not any(t in self.parts and self.parts[t].axis == axis for t in tensors):
            return False
        pieces: dict[int, list[fx.Node]] = {}
        gens = []
        for t in tensors:
            p = self.parts.get(t)
            v = _value(t)
            if p is None or p.axis != axis:
                if v is None or v.dim() < -axis:
                    return False
                p = _Parts(axis, np.full(v.shape[axis], -1), {-1: self.plain(t)})
            gens.append(p.gens)
            for g, node in p.nodes.items():
                pieces.setdefault(g, []).append(node)
        cat = n.target if n.op == "call_function" else torch.cat
        self.parts[n] = _Parts(axis, np.concatenate(gens), {
            g: ps[0] if len(ps) == 1 else self.graph.call_function(cat, (ps, axis))
            for g, ps in sorted(pieces.items())})
        return True

    def _batch_norm(self, n: fx.Node) -> bool:
        return self._per_channel(n, batch_norm_part, lambda k: (k == 0,))

    def _depthwise(self, n: fx.Node) -> bool:
        return self._per_channel(n, depthwise_part, lambda k: ())

    def _per_channel(self, n: fx.Node, function, extra) -> bool:
        """A module whose every channel's output reads that channel alone, with per-channel
        tensors: ``function(module, part, start, length, index, *extra(k))`` per part."""
        x = n.args[0] if n.args else None
        p = self.parts.get(x)
        out = _value(n)
        if p is None or len(n.args) != 1 or n.kwargs or out is None or out.dim() + p.axis != 1 \
                or out.shape[1] != len(p.gens):
            return False
        module = self.attr(n.target)
        self.parts[n] = _Parts(p.axis, p.gens, {
            g: self.graph.call_function(function, (module, node, *_positions(p.gens, g), *extra(k)))
            for k, (g, node) in enumerate(sorted(p.nodes.items()))})
        return True


def _drop_unused(graph: fx.Graph) -> None:
    """Remove the parts and joins nothing reads (a split whose readers joined after all)."""
    for n in reversed(graph.nodes):
        if n.op == "call_function" and n.target in (take, join, operator.getitem) and not n.users:
            graph.erase_node(n)


def stream(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` (a network with partitioned layers, its nodes annotated with shapes) with each
    generation's channels held as a tensor of their own; it shares ``gm``'s modules, and
    computes the same function."""
    builder = _Builder(gm)
    try:
        graph = builder.run()
    except Unsafe as why:
        warnings.warn(f"fxsurgeon: the network runs in its plain form, one tensor per value: {why}",
                      stacklevel=3)
        return gm
    if not builder.parts:
        return gm
    _drop_unused(graph)
    out = Streamed(gm, graph, gm.__class__.__name__)
    share(gm, out)
    out.meta.update(gm.meta)
    out.meta[CANONICAL] = copy.deepcopy(gm.graph)
    return out


def streamed(gm: fx.GraphModule, example_inputs: tuple, want=None) -> fx.GraphModule:
    """:func:`stream` ``gm``, proved on the example inputs (in eval mode): the streamed network
    must give what ``gm`` gives (``want``, when the caller ran it already); where it does not
    (a bug in this module or in an op rule's ``stream()``), this warns and returns ``gm``, the
    plain form (checked by the rewrite)."""
    propagate_shapes(gm, example_inputs)        # the nodes a rewrite added have no shapes yet
    out = stream(gm)
    if out is gm:
        return gm
    with own_run(gm):
        if want is None:
            want = gm(*example_inputs)
        try:
            got = out(*example_inputs)
        except Exception as exc:  # noqa: BLE001 - a rule's stream() that does not fit: plain form
            got = exc
    if isinstance(got, Exception):
        why = f"held in parts it fails ({type(got).__name__}: {got})"
    else:
        pairs = zip(tensors_in(want), tensors_in(got), strict=True)
        why = next((f"held in parts, its output {k} differs from the plain one's"
                    for k, (a, b) in enumerate(pairs) if not _close(a, b)), None)
    if why is not None:
        warnings.warn(f"fxsurgeon: the network runs in its plain form, one tensor per value: {why} "
                      f"(a bug in fxsurgeon.surgery.streams or in an op rule's stream(); please report it)",
                      stacklevel=2)
        return gm
    return out


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(a.abs().max())))
