"""Layers that mix channels through a weight: convolutions, linear layers, ``x @ W``,
embeddings, PReLU. They produce fresh identities for their outputs and consume (read)
their inputs' channels; a depthwise convolution couples each output to its input.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from ..folded import FoldedConstant
from ..nodes import normalized, tensors_in
from ..tags import prod
from .rule import Rule


def produce(walk, node: fx.Node, x, weight: str, bias: str | None, wshape: tuple, groups: int,
            linear: bool, transposed: bool, source: fx.Node | None = None):
    """Fresh output channels of a layer reading ``x`` through ``weight`` (shape ``wshape``;
    ``transposed``: its first axis is the input's). Records the weight's and bias's axes,
    the read of ``source`` (the node ``x`` is the value of; the first argument by default),
    the multiply-accumulates, and returns the output's tag tensor."""
    tags = walk.tags
    y = tensors_in(walk.real(node))[0]
    axis = -1 if linear else 1
    vin = tags.axis_vector(x, axis)
    if vin is None:
        walk.pin(x, f"input of {walk.describe(node)} is not channel-structured")
    out = walk.fresh(y.shape, axis, node)
    vout = tags.axis_vector(out, axis)
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    n_in = x.shape[axis]
    depthwise = vin is not None and groups == n_in and (groups > 1 or node.name in walk.was_depthwise)
    if depthwise:
        walk.out.depthwise.add(node.name)
        walk.couple(np.repeat(vin, len(vout) // groups), vout)
        # one weight row per channel: the output's (a multiplier repeats it), or for a
        # transposed conv the input's, whose outputs all share its class
        walk.ref(weight, 0, vin if transposed else vout, "out", node, init="he")
    else:
        if groups > 1 and vin is not None:
            walk.out.divisors.append((vin, groups))
            walk.out.divisors.append((vout, groups))
            walk.out.grouped += [vin, vout]
        walk.ref(weight, out_axis, vout, "out", node, groups if transposed else 1, init="he")
        walk.ref(weight, in_axis, vin, "in", node, 1 if transposed else groups)
        source = node.args[0] if source is None else source
        walk.reader(node, source, axis, vin, weight, in_axis, 1 if transposed else groups, bias)
    if bias is not None:
        walk.ref(bias, 0, vout, "param", node)
    kernel = prod(wshape[2:])
    if transposed:
        spatial = prod(x.shape) // n_in
        walk.flops(node, spatial * kernel / groups, (vin, 1), (vout, 1))
    else:
        spatial = prod(y.shape) // y.shape[axis]
        ins = None if depthwise else vin
        const = spatial * kernel * (n_in // groups if depthwise or vin is None else 1 / groups)
        walk.flops(node, const, (vout, 1), (ins, 1))
    walk.wrote(out, node)
    if depthwise:   # its outputs are its inputs' channels: no new group of its own
        return out
    return walk.produced(node, out, axis)


class Layer(Rule):
    """A convolution (any dimensionality, transposed or not) or a linear layer, as a
    module or as a function (``F.conv2d(x, self.weight, ...)``)."""

    def __init__(self, linear: bool = False, transposed: bool = False):
        self.linear = linear
        self.transposed = transposed

    def propagate(self, walk, node, args, kwargs):
        if node.op == "call_module":
            m = walk.submodule(node)
            bias = f"{node.target}.bias" if getattr(m, "bias", None) is not None else None
            out = produce(walk, node, args[0], f"{node.target}.weight", bias, tuple(m.weight.shape),
                          getattr(m, "groups", 1), self.linear, self.transposed)
            tied = len(walk.out.aliases.get(walk.tensor_name(f"{node.target}.weight"), ())) > 1
            if (not self.transposed and not tied and getattr(m, "groups", 1) == 1
                    and node.name not in walk.out.depthwise
                    and getattr(m, "padding_mode", "zeros") == "zeros"
                    and not isinstance(getattr(m, "padding", 0), str)):
                walk.out.blockwise.add(node.name)
            return out
        wnode = walk.node_argument(node, "weight", 1)
        if not (isinstance(wnode, fx.Node) and wnode.op == "get_attr"):
            return walk.opaque(node, args, kwargs)
        bnode = walk.node_argument(node, "bias", 2)
        bias = bnode.target if isinstance(bnode, fx.Node) and bnode.op == "get_attr" else None
        groups = 1 if self.linear else walk.argument(node, "groups", 6, 1)
        shape = tuple(walk.real(wnode).shape)
        return produce(walk, node, walk.argument(node, "input", 0), wnode.target, bias, shape, groups,
                       self.linear, self.transposed, walk.node_argument(node, "input", 0))

    def forward_with(self, module, tensors, args):
        if self.linear:
            return F.linear(args[0], tensors["weight"], tensors.get("bias"))
        if not self.transposed:
            return module._conv_forward(args[0], tensors["weight"], tensors.get("bias"))
        return None

    def constant_map(self, node, root, kernel):
        if self.linear:
            return None         # a linear layer sees a constant the same everywhere
        if node.op == "call_module":
            m = root.get_submodule(node.target)
            if node.kwargs.get("output_size") is not None or len(node.args) > 1:
                return None
        else:
            call = normalized(node, root) or {}
            geometry = {k: call.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                                       ("output_padding", 0))}
            if any(isinstance(v, fx.Node) for v in geometry.values()):
                return None
            m = SimpleNamespace(**geometry)
        padding = _explicit_padding(m.padding, kernel.shape[2:], m.dilation)
        if padding is None:
            return None
        return FoldedConstant(kernel, m.stride, padding, m.dilation, self.transposed,
                              getattr(m, "output_padding", 0))

    def sync(self, module, old):
        if self.linear:
            module.out_features, module.in_features = module.weight.shape
            return
        depthwise = old.groups > 1 and old.groups == old.in_channels
        if self.transposed:
            module.in_channels = module.weight.shape[0]
            module.groups = module.in_channels if depthwise else module.groups
            module.out_channels = module.weight.shape[1] * module.groups
        else:
            module.out_channels = module.weight.shape[0]
            if depthwise:
                module.groups = module.weight.shape[0] // (old.out_channels // old.groups)
            module.in_channels = module.weight.shape[1] * module.groups


def _explicit_padding(padding, kernel, dilation) -> list[int] | None:
    """Padding as numbers per side: ``"valid"`` is none, ``"same"`` is half the dilated
    kernel (None where that is uneven: the two sides differ)."""
    if padding == "valid":
        return [0] * len(kernel)
    if padding != "same":
        return list(padding) if isinstance(padding, (tuple, list)) else [int(padding)] * len(kernel)
    dilation = list(dilation) if isinstance(dilation, (tuple, list)) else [int(dilation)] * len(kernel)
    total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    return None if any(t % 2 for t in total) else [t // 2 for t in total]


class FunctionalLayer(Layer):
    """``F.conv*``/``F.linear``: MACs measured, since an unusual weight makes it opaque."""

    measure_macs = True


class Embedding(Rule):
    """An embedding table: fresh channels along the last axis, read from nothing."""

    def propagate(self, walk, node, args, kwargs):
        y = tensors_in(walk.real(node))[0]
        out = walk.fresh(y.shape, -1, node)
        walk.ref(f"{node.target}.weight", 1, walk.tags.axis_vector(out, -1), "out", node, init="he")
        return walk.produced(node, out, -1)

    def sync(self, module, old):
        module.num_embeddings, module.embedding_dim = module.weight.shape


class Matmul(Rule):
    """``a @ b``: the contracted axis couples, ``b``'s columns carry on; ``x @ W`` with a
    parameter ``W`` is a linear layer whose weight is transposed."""

    measure_macs = True

    def propagate(self, walk, node, args, kwargs):
        a, b = args[0], args[1]
        tags = walk.tags
        out_shape = tensors_in(walk.real(node))[0].shape
        where = walk.describe(node)
        if a.dim() < 2 or b.dim() < 2 or tags.varies_along(a, a.dim() - 2):
            return walk.opaque(node, args, kwargs, reason=f"matmul with channels on its rows at {where}")
        w = node.args[1]
        if isinstance(w, fx.Node) and w.op == "get_attr" and b.dim() == 2:
            return produce(walk, node, a, w.target, None, tuple(b.shape), 1, True, True)
        a_k, b_k = tags.varies_along(a, a.dim() - 1), tags.varies_along(b, b.dim() - 2)
        k_vec = None
        if a_k and b_k:
            k_vec, kb = tags.axis_vector(a, -1), tags.axis_vector(b, -2)
            if k_vec is None or kb is None:
                return walk.opaque(node, args, kwargs, reason=f"matmul over a split channel axis at {where}")
            walk.couple(k_vec, kb, "contraction")   # read without a weight
        elif a_k or b_k:
            walk.pin(a if a_k else b, f"matmul contracts channels with an operand without them at {where}")
        j_vec = None
        if tags.varies_along(b, b.dim() - 1):
            j_vec = tags.axis_vector(b, -1)
            if j_vec is None:
                return walk.opaque(node, args, kwargs, reason=f"matmul over a split channel axis at {where}")
        k, j = a.shape[-1], b.shape[-1]
        walk.flops(node, prod(out_shape) // j * (1 if k_vec is not None else k)
                   * (1 if j_vec is not None else j), (k_vec, 1), (j_vec, 1))
        if j_vec is not None:
            return tags.structured(j_vec, out_shape, len(out_shape) - 1)
        return tags.none(out_shape)


class PReLU(Rule):
    """PReLU: one slope per channel (or one for all)."""

    keeps_shape = True

    def propagate(self, walk, node, args, kwargs):
        x = args[0]
        m = walk.submodule(node)
        if m.weight.numel() > 1:
            vec = walk.tags.axis_vector(x, 1)
            if vec is None:
                return walk.opaque(node, args, kwargs)
            walk.ref(f"{node.target}.weight", 0, vec, "param", node)
        return x

    def sync(self, module: nn.Module, old: nn.Module) -> None:
        module.num_parameters = module.weight.numel()
