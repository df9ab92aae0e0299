"""Rules of the layers fxsurgeon itself puts into rewritten networks."""
from __future__ import annotations

import torch
from torch import fx

from ..channels.facts import Generations
from ..channels.nodes import value_users
from ..channels.provenance import WeightSource
from ..layers.folded import FoldedConv
from ..layers.schemes import scheme_of
from .layers import produce
from .norms import PerChannel
from .rule import Rule
from .table import TABLE


class Folded(Rule):
    """A :class:`~fxsurgeon.layers.folded.FoldedConstant` after a layer: its output holds the
    layer's channels, and so does its weight's output axis (a later surgery resizes it).
    It costs nothing: a constant map per input size, like a bias."""

    def stream(self, node, module):
        return "fold"

    def propagate(self, walk, node, args, kwargs):
        y = args[0]
        vec = walk.tags.axis_vector(y, 1)
        if vec is None:
            return walk.opaque(node, args, kwargs)
        layer = walk.submodule(node).layer
        for name, axis in TABLE.module_rule(layer).output_axes(layer):
            walk.ref(f"{node.target}.layer.{name}", axis, vec, "param", node)
        return y


class Restricted(Rule):
    """A :class:`~fxsurgeon.layers.folded.FoldedConv`, the layer of a fold: its weight's output
    axis holds the channels of the layer it stands for."""

    def output_axes(self, module):
        return [("weight", 1 if module.transposed else 0)]


class Blocks(Rule):
    """A :class:`~fxsurgeon.layers.partitioned.Partitioned` layer (``cr`` or ``ca``).

    It is analysed as the dense layer it equals, less the blocks a ``cr`` layer drops
    between generations: those blocks stay dropped when it is planned again (a new
    generation adds its own), and a rewrite resizes the dense layer (:meth:`unpack`) and
    splits it again by generation. A ``ca`` layer has no dense equivalent (its gate),
    so its channels keep their widths.
    """

    def stream(self, node, module):
        return "blocks"

    def fresh(self, node, module):
        return True

    def propagate(self, walk, node, args, kwargs):
        m = walk.submodule(node)
        w = m.dense_weight()
        bias = None if m.bias is None else WeightSource.of(walk.tensor_name(f"{node.target}.bias"), 1)
        weight = WeightSource.of(f"{node.target}.weight", w.dim())
        if scheme_of(m.scheme).crosses:  # its dense weight is a copy: a pass that wrote into it (rescaling)
            weight.direct = None  # would change nothing, so it reads as a computed weight
        out = produce(walk, node, args[0], weight, bias, tuple(w.shape), 1, m.ndim == 0, False)
        vin, vout = walk.tags.axis_vector(args[0], m.axis), walk.tags.axis_vector(out, m.axis)
        if vin is None:
            return out
        kernel = int(w[0, 0].numel())
        spatial = int(out.numel() // out.shape[m.axis])
        dense = f"{node.target}.weight"
        first = dense not in walk.accounted          # a layer called twice has its weights once
        if first:
            walk.params(node, dense, kernel, (vout, 1), (vin, 1))
            walk.accounted |= {walk.tensor_name(f"{node.target}.{name}") for name, _ in m.named_parameters()
                               if name != "bias"}   # the blocks: counted as the dense weight less the gaps
        if scheme_of(m.scheme).crosses:
            why = f"a ca layer ({node.target}) keeps its widths: its gates have no dense form to resize"
            walk.pin(out, why)
            walk.pin(args[0], why)
            return out
        row_gen, col_gen = m.generations()
        walk.partitioned(node, Generations(vout, row_gen, vin, col_gen))
        walk.blockwise_layer(node)
        for g in range(len(m.rows)):         # the blocks between generations: not there
            for h in range(len(m.rows)):
                rows, cols = vout[row_gen == g], vin[col_gen == h]
                if g != h and len(rows) and len(cols):
                    if first:
                        walk.params(node, dense, -kernel, (rows, 1), (cols, 1), partial=True)
                    walk.flops(node, -spatial * kernel, (rows, 1), (cols, 1), partial=True)
        return out

    def forward_with(self, module, tensors, args, kwargs):
        if kwargs:
            return None
        x = args[0]
        w = torch.empty([sum(module.rows), x.shape[module.axis], *module.kernel],
                        dtype=x.dtype, device=x.device)
        return module._layer(x, w)

    def restricted(self, node, root, weight):
        m = root.get_submodule(node.target)
        return FoldedConv(weight, m.stride, m.padding, m.dilation) if m.ndim else None

    def unpack(self, module):
        return module.dense() if not scheme_of(module.scheme).crosses else None


class Judge(PerChannel):
    """A :class:`~fxsurgeon.layers.gate.Gate`: a per-channel scale ``g · x`` (positively
    homogeneous) that judges the channels it multiplies. The layers whose output reaches
    it alone, through elementwise ops only (an activation, SwiGLU's product of two
    projections), count as judged: with ``g`` at zero their channel adds nothing. Its
    parameters cost nothing: :func:`fxsurgeon.export` folds them into the layers after it,
    so a budget is the cost of the network without them."""

    def __init__(self):
        super().__init__({"weight": 1.0}, scale="weight", homogeneous=True)

    def channel_axis(self, walk, node) -> int:
        return walk.submodule(node).axis

    def fresh(self, node, module):
        return True

    def folded_scale(self, node, root):
        return root.get_submodule(node.target).weight.detach()

    def propagate(self, walk, node, args, kwargs):
        y = super().propagate(walk, node, args, kwargs)
        walk.params(node, walk.tensor_name(f"{node.target}.weight"), 0.0)   # folds away on export
        for writer in _writers_reaching_only(walk, node):
            walk.norm_after(writer, node)
        return y


def _writers_reaching_only(walk, gate: fx.Node) -> list[str]:
    """The layers whose every output value reaches ``gate`` and nothing else: walking back
    from its input through elementwise ops, each with one reader of its values."""
    found, stack, seen = [], [gate.args[0]], set()
    while stack:
        src = stack.pop()
        if not isinstance(src, fx.Node) or src in seen or len(value_users(src)) != 1:
            continue
        seen.add(src)
        if src.name in walk.writers:
            found.append(src.name)
        elif src.op.startswith("call_"):
            rule = walk.table.lookup(src, walk.modules)
            if rule.elementwise or rule.keeps_shape:
                stack.extend(src.all_input_nodes)
    return found
