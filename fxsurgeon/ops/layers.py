"""Layers that mix channels through a weight: convolutions, linear layers, ``x @ W``,
embeddings, PReLU. They produce fresh identities for their outputs and consume (read)
their inputs' channels; a depthwise convolution couples each output to its input.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..channels.facts import CONTRACTION
from ..channels.hooks import hookless_copy
from ..channels.nodes import getattr_path, normalized, tensors_in
from ..channels.provenance import WeightSource
from ..channels.tags import prod
from ..layers.folded import FoldedConv
from .parts import part_of
from .rule import Rule


def _init(walk, name: str, axis: int) -> float | str:
    """New entries of a weight start He-initialised; of a per-output scale (its other
    axes all of size one), at 1."""
    shape = walk.real_tensor(name).shape
    return 1.0 if all(s == 1 for k, s in enumerate(shape) if k != axis) else "he"


def produce(walk, node: fx.Node, x, weight: WeightSource, bias: WeightSource | None, wshape: tuple,
            groups: int, linear: bool, transposed: bool, source: fx.Node | None = None,
            weight_node: fx.Node | None = None):
    """Fresh output channels of a layer reading ``x`` through a weight of shape ``wshape``
    (``transposed``: its first axis is the input's) that comes from the parameter axes of
    ``weight``. Records those axes and the bias's, the read of ``source`` (the node ``x``
    is the value of; the first argument by default), the multiply-accumulates, and
    returns the output's tag tensor."""
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
    depthwise = vin is not None and (groups == n_in > 1 if walk.was_depthwise is None
                                     else node.name in walk.was_depthwise)
    if vin is None and groups > 1:
        # its output channels are blocks, one per group of input channels that no dimension
        # holds: nothing resizes the input or its groups with them, so they keep their width
        walk.pin(out, f"{walk.describe(node)} has {groups} groups over an input that is not "
                      f"channel-structured")

    def refs(w_axis, vec, role, divisor=1):
        if w_axis not in weight.axes:
            walk.pin(tags.structured(vec, (len(vec),), 0), f"{weight.why} at {walk.describe(node)}")
        for name, a in weight.axes.get(w_axis, []):
            walk.ref(name, a, vec, role, node, divisor, init=_init(walk, name, a) if role == "out" else 0.0)

    if depthwise:
        walk.depthwise_conv(node)
        walk.couple(np.repeat(vin, len(vout) // groups), vout)
        # one weight row per channel: the output's (a multiplier repeats it), or for a
        # transposed conv the input's, whose outputs all share its class
        refs(0, vin if transposed else vout, "out")
    else:
        if groups > 1 and vin is not None:
            for vec in (vin, vout):
                walk.divisor(vec, groups)
                walk.grouped_conv(vec, groups, transposed)
        refs(out_axis, vout, "out", groups if transposed else 1)
        if vin is not None:
            refs(in_axis, vin, "in", 1 if transposed else groups)
        walk.reader(node, node.args[0] if source is None else source, axis, vin, weight.direct, in_axis,
                    1 if transposed else groups, None if bias is None else bias.direct, weight_node)
    if bias is not None:
        for name, a in bias.axes.get(0, []):
            walk.ref(name, a, vout, "param", node)
        if 0 not in bias.axes:
            walk.pin(out, f"{bias.why} at {walk.describe(node)}")
    kernel = prod(wshape[2:])
    if transposed:          # every input position reaches out / groups outputs per tap
        spatial = prod(x.shape) // n_in
        if depthwise:
            walk.flops(node, spatial * kernel * (len(vout) // groups), (vin, 1))
        else:
            walk.flops(node, spatial * kernel / groups * (n_in if vin is None else 1), (vin, 1), (vout, 1))
    else:
        spatial = prod(y.shape) // y.shape[axis]
        ins = None if depthwise else vin
        const = spatial * kernel * (n_in // groups if depthwise or vin is None else 1 / groups)
        walk.flops(node, const, (vout, 1), (ins, 1))
    walk.wrote(out, node, axis)
    if depthwise:   # its outputs are its inputs' channels: no new group of its own
        return out
    return walk.produced(node, out, axis)


class Layer(Rule):
    """A convolution (any dimensionality, transposed or not) or a linear layer, as a
    module or as a function (``F.conv2d(x, self.weight, ...)``).

    A module's weight and bias are its tensors named ``weight`` and ``bias``; the weight
    is laid out as torch's own layers lay it out (``(out, in / groups, *kernel)``, or
    ``(in, out / groups, *kernel)`` when ``transposed``; ``(out, in)`` when ``linear``), and
    the module's ``groups`` attribute (1 if absent) groups it."""

    def __init__(self, linear: bool = False, transposed: bool = False, weight: str = "weight",
                 bias: str = "bias"):
        self.linear = linear
        self.transposed = transposed
        self.weight, self.bias = weight, bias

    def propagate(self, walk, node, args, kwargs):
        if node.op == "call_module":
            m = walk.submodule(node)
            if not isinstance(getattr(m, self.weight, None), torch.Tensor) or \
                    self.weight not in {**m._parameters, **m._buffers}:
                return walk.opaque(node, args, kwargs, reason=f"{walk.describe(node)} computes its weight "
                                                              f"inside (trace through it instead)")
            weight = f"{node.target}.{self.weight}"
            bias = f"{node.target}.{self.bias}" if getattr(m, self.bias, None) is not None else None
            w = getattr(m, self.weight)
            out = produce(walk, node, args[0], WeightSource.of(walk.tensor_name(weight), w.dim()),
                          None if bias is None else WeightSource.of(walk.tensor_name(bias), 1),
                          tuple(w.shape), getattr(m, "groups", 1), self.linear, self.transposed)
            tied = len(walk.out.aliases.get(walk.tensor_name(weight), ())) > 1
            if (type(m).forward in _TORCH_FORWARDS and not self.transposed and not tied
                    and getattr(m, "groups", 1) == 1
                    and node.name not in walk.out.depthwise
                    and getattr(m, "padding_mode", "zeros") == "zeros"
                    and not isinstance(getattr(m, "padding", 0), str)):
                walk.blockwise_layer(node)
            return out
        wnode, bnode = walk.node_argument(node, "weight", 1), walk.node_argument(node, "bias", 2)
        if not (isinstance(wnode, fx.Node) and wnode in walk.const) or \
                (isinstance(bnode, fx.Node) and bnode not in walk.const):
            return walk.opaque(node, args, kwargs, reason=f"{walk.describe(node)} computes its weight "
                                                          f"from its inputs")
        w_axes = (1, 0) if self.transposed else (0, 1)
        weight = walk.weight_source(wnode, w_axes)
        bias = walk.weight_source(bnode, (0,)) if isinstance(bnode, fx.Node) else None
        groups = 1 if self.linear else walk.argument(node, "groups", 6, 1)
        x_node = walk.node_argument(node, "input", 0)
        return produce(walk, node, walk.env[x_node], weight, bias, tuple(walk.real(wnode).shape), groups,
                       self.linear, self.transposed, x_node, None if weight.direct else wnode)

    def stream(self, node, module):
        convolution = module is not None and not self.linear and not self.transposed
        one_per_channel = convolution and module.groups == module.in_channels == module.out_channels > 1
        return "depthwise" if (one_per_channel and type(module).forward in _TORCH_FORWARDS
                               and module.padding_mode == "zeros") else None

    def fresh(self, node, module):
        return module is None or type(module).forward in _TORCH_FORWARDS

    def weights(self, walk, node):
        if node.op == "call_module":
            return []
        return [a for a in (walk.node_argument(node, "weight", 1), walk.node_argument(node, "bias", 2))
                if isinstance(a, fx.Node)]

    def forward_with(self, module, tensors, args, kwargs):
        if type(module).forward not in _TORCH_FORWARDS or kwargs:
            return None
        weight, bias = tensors.get(self.weight), tensors.get(self.bias)
        if self.linear and weight is not None:
            out = _linear_shape(args[0], weight)
            return F.linear(args[0], weight, bias) if out is None else out
        if not self.transposed and weight is not None and hasattr(module, "_conv_forward"):
            out = _conv_shape(module, args[0], weight)
            return module._conv_forward(args[0], weight, bias) if out is None else out
        return None

    def restricted(self, node, root, weight):
        if node.op == "call_module":        # the module itself, with those columns and no bias
            if node.kwargs or len(node.args) > 1:
                return None
            layer = hookless_copy(root.get_submodule(node.target))
            for name, t in list(layer.named_parameters(recurse=False)):
                delattr(layer, name)                        # fixed: no parameter of its own
                layer.register_buffer(name, t.detach())
            layer.register_buffer(self.weight, weight.detach().clone())
            if not self.transposed and getattr(layer, "groups", 1) > 1:
                layer.groups = 1        # folding passes a grouped conv's columns dense
            if isinstance(getattr(layer, self.bias, None), torch.Tensor):
                getattr(layer, self.bias).zero_()
            return layer
        if self.linear:
            return None         # a linear layer sees a constant the same everywhere
        call = normalized(node, root) or {}
        geometry = {k: call.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                                   ("output_padding", 0))}
        if any(isinstance(v, fx.Node) for v in geometry.values()):
            return None
        padding = _explicit_padding(geometry["padding"], weight.shape[2:], geometry["dilation"])
        if padding is None:
            return None
        return FoldedConv(weight, geometry["stride"], padding, geometry["dilation"], self.transposed,
                          geometry["output_padding"])

    def _input_weight(self, node, root) -> tuple[torch.Tensor, int] | None:
        """The weight whose input channels a scale can be folded into, and its groups."""
        if node.op == "call_module":
            module = root.get_submodule(node.target)
            if type(module).forward not in _TORCH_FORWARDS or self.weight not in module._parameters:
                return None
            weight, groups = getattr(module, self.weight), getattr(module, "groups", 1)
        else:
            wnode = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if not (isinstance(wnode, fx.Node) and wnode.op == "get_attr" and len(wnode.users) == 1):
                return None
            weight = getattr_path(root, wnode.target)
            groups = 1 if self.linear else (normalized(node, root) or {}).get("groups")
        if not isinstance(weight, torch.Tensor) or not isinstance(groups, int) or \
                sum(t is weight for _, t in root.named_parameters(remove_duplicate=False)) > 1:
            return None          # tied to another layer, which reads no gate
        return weight, groups

    def absorbs_scale(self, node, root):
        return self._input_weight(node, root) is not None

    def absorb_scale(self, node, root, scale):
        weight, groups = self._input_weight(node, root)
        with torch.no_grad():
            if self.transposed:          # (in, out / groups, *kernel): a row per input channel
                weight.mul_(scale.view(-1, *[1] * (weight.dim() - 1)).to(weight))
            else:                        # (out, in / groups, *kernel): columns per group
                blocks = weight.view(groups, weight.shape[0] // groups, *weight.shape[1:])
                blocks.mul_(scale.view(groups, 1, -1, *[1] * (weight.dim() - 2)).to(weight))

    def absorbs_output_scale(self, node, root):
        return not self.transposed and self._input_weight(node, root) is not None and \
            (node.op == "call_module" or len(node.args) < 3 or _single_use(node.args[2]))

    def absorb_output_scale(self, node, root, scale):
        weight, _ = self._input_weight(node, root)
        if node.op == "call_module":
            bias = getattr(root.get_submodule(node.target), self.bias, None)
        else:
            bnode = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            bias = getattr_path(root, bnode.target) if isinstance(bnode, fx.Node) else None
        with torch.no_grad():       # (out, in / groups, *kernel): a row per output channel
            weight.mul_(scale.view(-1, *[1] * (weight.dim() - 1)).to(weight))
            if isinstance(bias, torch.Tensor):
                bias.mul_(scale.to(bias))

    def output_axes(self, module):
        held = [(self.weight, 1 if self.transposed else 0)]
        return held + ([(self.bias, 0)] if isinstance(getattr(module, self.bias, None), torch.Tensor) else [])

    def sync_call(self, node, root, old_root):
        """A functional depthwise conv's literal ``groups`` follows its channels."""
        wnode = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        groups = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
        if self.linear or not (isinstance(wnode, fx.Node) and wnode.op == "get_attr") or \
                not isinstance(groups, int) or groups == 1:
            return
        old, new = getattr_path(old_root, wnode.target), getattr_path(root, wnode.target)
        if self.transposed:             # (in, out / groups, k): depthwise when in == groups
            width = new.shape[0] if old.shape[0] == groups else groups
        else:                           # (out, in / groups, k): depthwise when in / groups == 1
            width = new.shape[0] // (old.shape[0] // groups) if old.shape[1] == 1 else groups
        if width != groups:
            if "groups" in node.kwargs:
                node.update_kwarg("groups", width)
            else:
                node.update_arg(6, width)

    def sync(self, module, old):
        w = getattr(module, self.weight)
        if self.linear:
            _set(module, out_features=w.shape[0], in_features=w.shape[1])
            return
        groups = getattr(old, "groups", 1)
        depthwise = groups > 1 and groups == getattr(old, "in_channels", None)
        if self.transposed:
            groups = w.shape[0] if depthwise else groups
            _set(module, in_channels=w.shape[0], groups=groups, out_channels=w.shape[1] * groups)
        else:
            if depthwise:
                groups = w.shape[0] // (old.out_channels // old.groups)
            _set(module, out_channels=w.shape[0], groups=groups, in_channels=w.shape[1] * groups)


def _single_use(bias) -> bool:
    """A functional layer's bias that only it reads (or none)."""
    return not isinstance(bias, fx.Node) or (bias.op == "get_attr" and len(bias.users) == 1)


#: layers computed as torch's own modules compute them (a subclass may pad or scale first)
_TORCH_FORWARDS = {c.forward for c in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                       nn.ConvTranspose2d, nn.ConvTranspose3d)}


def _linear_shape(x, weight) -> torch.Tensor | None:
    """What ``F.linear(x, weight)`` returns on meta tensors, without its (slow) meta kernel;
    None where the operands do not fit (the kernel then says what is wrong)."""
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or x.dtype != weight.dtype:
        return None
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device=x.device)


def _conv_shape(module, x, weight) -> torch.Tensor | None:
    """What a torch conv module returns for ``x`` on meta tensors, from its geometry (None:
    let its kernel answer)."""
    nd = weight.dim() - 2
    if x.dim() not in (nd + 1, nd + 2) or x.shape[-nd - 1] != weight.shape[1] * module.groups \
            or x.dtype != weight.dtype or not x.is_contiguous():
        return None
    size = x.shape[-nd:]
    if module.padding != "same":
        padding = (0,) * nd if module.padding == "valid" else module.padding
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(size, padding, module.dilation, weight.shape[2:], module.stride, strict=True)]
        if min(size) < 1:
            return None
    return torch.empty((*x.shape[:-nd - 1], weight.shape[0], *size), dtype=x.dtype, device=x.device)


def _set(module: nn.Module, **values) -> None:
    """Set the attributes ``module`` has (a layer of one's own may lack some)."""
    for k, v in values.items():
        if hasattr(module, k):
            setattr(module, k, v)


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


def depthwise_part(module: nn.Module, x: torch.Tensor, start: int, length: int,
                   index: list[int] | None) -> torch.Tensor:
    """A depthwise convolution module on its channels ``start:start+length`` (or ``index``)
    alone: each channel's filter and bias, one group per channel."""
    at, _ = part_of(start, length, index, x.device)
    conv = (F.conv1d, F.conv2d, F.conv3d)[module.weight.dim() - 3]
    return conv(x, at(module.weight), at(module.bias), module.stride, module.padding, module.dilation,
                x.shape[1])


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


class FunctionalEmbedding(Rule):
    """``embedding(weight, indices)`` (ATen's argument order): fresh channels along the last
    axis, from the columns of a weight read as an attribute."""

    def propagate(self, walk, node, args, kwargs):
        w = node.args[0]
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            return walk.opaque(node, args, kwargs, reason=f"{walk.describe(node)} computes its table")
        y = tensors_in(walk.real(node))[0]
        out = walk.fresh(y.shape, -1, node)
        walk.ref(w.target, 1, walk.tags.axis_vector(out, -1), "out", node, init="he")
        return walk.produced(node, out, -1)

    def weights(self, walk, node):
        w = node.args[0]
        return [w] if isinstance(w, fx.Node) and w.op == "get_attr" else []


class Addmm(Rule):
    """``addmm(bias, x, W)``: a linear layer whose weight is laid out ``(in, out)``
    (HuggingFace's ``Conv1D``), with a bias of one entry per output."""

    measure_macs = True

    def propagate(self, walk, node, args, kwargs):
        bnode, xnode, wnode = node.args[:3]
        plain = node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1
        if not (plain and isinstance(wnode, fx.Node) and wnode in walk.const
                and isinstance(bnode, fx.Node) and bnode in walk.const and walk.real(bnode).dim() == 1):
            return walk.opaque(node, args, kwargs, reason=f"{walk.describe(node)} is not a linear layer "
                                                          f"with a weight and a bias of parameters")
        weight = walk.weight_source(wnode, (1, 0))
        return produce(walk, node, walk.env[xnode], weight, walk.weight_source(bnode, (0,)),
                       tuple(walk.real(wnode).shape), 1, True, True, xnode,
                       None if weight.direct else wnode)

    def weights(self, walk, node):
        return [a for a in (node.args[0], node.args[2]) if isinstance(a, fx.Node) and a in walk.const]


class Matmul(Rule):
    """``a @ b``: the contracted axis couples, ``b``'s columns carry on; ``x @ W`` with a
    parameter ``W`` is a linear layer whose weight is transposed."""

    measure_macs = True

    def propagate(self, walk, node, args, kwargs):
        a, b = args[0], args[1]
        tags = walk.tags
        out_shape = tensors_in(walk.real(node))[0].shape
        where = walk.describe(node)
        if a.dim() < 2 or b.dim() < 2 or tags.carries(a, a.dim() - 2):
            return walk.opaque(node, args, kwargs, reason=f"matmul with channels on its rows at {where}")
        w = node.args[1]
        if w in walk.weight_only and b.dim() == 2:      # x @ W: a linear layer, weight (in, out)
            weight = walk.weight_source(w, (1, 0))
            return produce(walk, node, a, weight, None, tuple(b.shape), 1, True, True,
                           weight_node=None if weight.direct else w)
        a_k, b_k = tags.carries(a, a.dim() - 1), tags.carries(b, b.dim() - 2)
        k_vec = None
        if a_k and b_k:
            k_vec, kb = tags.axis_vector(a, -1), tags.axis_vector(b, -2)
            if k_vec is None or kb is None:
                return walk.opaque(node, args, kwargs, reason=f"matmul over a split channel axis at {where}")
            walk.couple(k_vec, kb, CONTRACTION)     # read without a weight
        elif a_k or b_k:
            walk.pin(a if a_k else b, f"matmul contracts channels with an operand without them at {where}")
        j_vec = None
        if tags.carries(b, b.dim() - 1):
            j_vec = tags.axis_vector(b, -1)
            if j_vec is None:
                return walk.opaque(node, args, kwargs, reason=f"matmul over a split channel axis at {where}")
        k, j = a.shape[-1], b.shape[-1]
        walk.flops(node, prod(out_shape) // j * (1 if k_vec is not None else k)
                   * (1 if j_vec is not None else j), (k_vec, 1), (j_vec, 1))
        if j_vec is not None:
            return tags.structured(j_vec, out_shape, len(out_shape) - 1)
        return tags.none(out_shape)


    def weights(self, walk, node):
        w = node.args[1] if len(node.args) > 1 else None
        return [w] if isinstance(w, fx.Node) and w in walk.const else []


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
