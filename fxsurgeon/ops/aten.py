"""The rules of the ATen ops that ``torch.export`` graphs call
(see :mod:`fxsurgeon.analysis.export_frontend`).

An exported graph calls ``torch.ops.aten`` overloads with parameters read as attributes
under the user's module names, much as a symbolic trace calls functional layers
(``F.conv2d(x, self.weight)``): most overloads take the rule of the torch function they
mirror, with the same argument names. What differs: ``view``/``reshape``/``expand`` sizes
are literals, so the ones that keep a channel axis whole follow its width on a rewrite;
``slice``/``select`` index by ``dim``; ``addmm`` and ``embedding`` lay their weights out
their own way; ``batch_norm`` and ``dropout`` say whether they train. An overload
without a rule here is opaque, like any op fxsurgeon does not know.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from .attention import DotProductAttention
from .elementwise import Carry, Couple, Glu, Pow
from .layers import Addmm, FunctionalEmbedding, FunctionalLayer, Matmul
from .movement import Chunk, Concat, Move, Pad, Reshape, Spatial, Squeeze, Unbind, class_rows, varying_axes
from .norms import Norm
from .reductions import Reduce, Softmax
from .rule import Rule
from .table import OpTable

aten = torch.ops.aten


def _overloads(*packets) -> list:
    """Every overload of each op packet (``aten.add`` -> ``aten.add.Tensor``, ...)."""
    return [getattr(p, name) for p in packets for name in p.overloads()]


def _with_mode(rule: Rule, name: str, position: int) -> Rule:
    rule.mode_argument = (name, position)
    return rule


class Split(Move):
    """``split``/``split_with_sizes``/``unsafe_split`` (sizes at position 1, ``dim`` at 2): an
    exported graph's sizes are literals, so a channel axis it cuts is pinned; but equal
    parts that end up holding the same channels (q, k and v cut from one projection, then
    coupled head by head by attention) keep one size, which follows their width."""

    def check(self, walk, node, x, out, args, kwargs):
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if not walk.tags.carries(x, dim % x.dim()):
            return
        why = f"constant split sizes on a channel axis at {walk.describe(node)}"
        parts = [walk.tags.axis_vector(p, dim) for p in out]
        if not isinstance(node.args[1], int) or any(p is None or len(p) != len(parts[0]) for p in parts):
            walk.pin(x, why)
            return
        pinned = walk.tags.unique(x)

        def decide():
            roots = [np.sort(walk.tags.uf.find(p)) for p in parts]
            if all(np.array_equal(r, roots[0]) for r in roots):
                walk.size(node, 1, parts[0])
            else:
                walk.pin_channels(pinned, why)
        walk.later(decide)

    def set_size(self, node, index: int, width: int) -> None:
        """Set the split size (recorded by :meth:`check`) to ``width``."""
        node.update_arg(index, width)


class Slice(Move):
    """``slice(x, dim, start, end, step)``, ``select(x, dim, index)``, ``narrow(x, dim, start,
    length)``: a cut of a channel axis by literal bounds pins it, by computed bounds cuts it
    by position; a slice over the whole axis is no cut."""

    def check(self, walk, node, x, out, args, kwargs):
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % x.dim()
        if not walk.tags.carries(x, dim) or out.dim() == x.dim() and out.shape[dim] == x.shape[dim] \
                and _whole_slice(node, x.shape[dim]):
            return
        bounds = [a for a in node.args[2:] if a is not None]
        if all(isinstance(b, int) for b in bounds):
            walk.later(_within_channels(walk, node, x, dim))
        else:
            walk.split_by_position(walk.tags.unique(x))


def _within_channels(walk, node: fx.Node, x, dim: int):
    """What to decide, once every coupling is known, about a cut of axis ``dim`` of ``x`` by
    literal bounds: where the classes of ``x`` change along one other axis only, each
    position of that axis holding one class, ``dim`` lies within channels (rotary
    embeddings' halves of a head's ``head_dim``): a rewrite takes or adds whole positions of
    the other axis, so the cut keeps its meaning. Anything else (the cut crosses channels,
    or one class alone leaves it unclear which axis grows) pins ``x``."""
    why = f"constant slice of a channel axis at {walk.describe(node)}"
    pinned = walk.tags.unique(x)

    def decide():
        axes = varying_axes(walk.tags, x)
        if len(axes) != 1 or axes[0] == dim or class_rows(walk.tags, x, axes[0]) is None:
            walk.pin_channels(pinned, why)
    return decide


def _whole_slice(node: fx.Node, size: int) -> bool:
    """Whether a ``slice`` node takes every position of an axis of ``size`` (of any size)."""
    if node.target is not aten.slice.Tensor:
        return False
    start, end, step = (list(node.args[2:5]) + [None, None, None])[:3]
    return start in (None, 0) and (end is None or isinstance(end, int) and end >= 2 ** 62) \
        and step in (None, 1)


def register_aten(table: OpTable) -> None:
    """Fill ``table`` with the rules of the ATen overloads exported graphs call."""
    def each(packets, rule):
        for overload in _overloads(*packets):
            table.register(overload, rule)

    each([aten.relu, aten.relu_, aten.leaky_relu, aten.leaky_relu_, aten.clone, aten.contiguous,
          aten.alias, aten.detach, aten.lift_fresh_copy], Carry(homogeneous=True))
    each([aten.dropout, aten.feature_dropout], _with_mode(Carry(homogeneous=True), "train", 2))
    each([aten.alpha_dropout], _with_mode(Carry(), "train", 2))
    each([aten.to, aten._to_copy, aten.type_as], Carry(homogeneous=True, keeps_dtype=False))
    each([aten.gelu, aten.gelu_, aten.silu, aten.silu_, aten.sigmoid, aten.sigmoid_, aten.tanh,
          aten.tanh_, aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_,
          aten.hardtanh, aten.hardtanh_, aten.relu6, aten.elu, aten.elu_, aten.selu, aten.celu,
          aten.mish, aten.softplus, aten.exp, aten.sqrt, aten.rsqrt, aten.abs, aten.neg,
          aten.erf, aten.log, aten.sin, aten.cos, aten.reciprocal, aten.square],
         Carry())
    # scalar-only overloads: a tensor bound is a second operand, opaque
    for overload in (aten.clamp.default, aten.clamp_.default, aten.clamp_min.default,
                     aten.clamp_max.default, aten.clip.default):
        table.register(overload, Carry())
    each([aten.pow, aten.pow_], Pow())
    each([aten.add, aten.add_, aten.sub, aten.sub_], Couple("residual"))
    each([aten.mul, aten.mul_], Couple("gate", keeps_zero=(0, 1)))
    each([aten.div, aten.div_], Couple("gate", keeps_zero=(0,)))
    each([aten.maximum, aten.minimum], Couple("gate"))
    table.register(aten.glu.default, Glu())

    each([aten.permute, aten.transpose, aten.t, aten.flatten, aten.unsqueeze, aten.unflatten,
          aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle, aten.native_channel_shuffle,
          aten.roll, aten.flip, aten.movedim, aten.swapaxes, aten.stack, aten.repeat],
         Move())
    each([aten.squeeze, aten.squeeze_], Squeeze())
    table.register(aten.unbind.int, Unbind())
    each([aten.view, aten.reshape, aten._unsafe_view],
         Reshape(tag_function=aten.reshape.default, follow_sizes=True))
    table.register(aten.expand.default, Reshape(follow_sizes=True))
    table.register(aten.reshape_as.default, Move(shape_only=True))
    table.register(aten.view_as.default, Move(shape_only=True, tag_function=aten.reshape_as.default))
    table.register(aten.expand_as.default, Move(shape_only=True))
    each([aten.cat, aten.concat, aten.concatenate], Concat())
    table.register(aten.chunk.default, Chunk())
    each([aten.split, aten.split_with_sizes, aten.unsafe_split], Split())
    each([aten.slice, aten.select, aten.narrow], Slice())
    table.register(aten.constant_pad_nd.default, Pad(value_at=2))
    table.register(aten.pad.default, Pad(value_at=3))
    each([aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
          aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
          aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d,
          aten._adaptive_avg_pool2d, aten.adaptive_max_pool1d, aten.adaptive_max_pool2d,
          aten.adaptive_max_pool3d, aten.upsample_nearest1d, aten.upsample_nearest2d,
          aten.upsample_nearest3d, aten.upsample_bilinear2d, aten.upsample_linear1d,
          aten.upsample_bicubic2d, aten.upsample_trilinear3d], Spatial())

    each([aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std, aten.logsumexp], Reduce())
    each([aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax], Softmax())
    table.register(aten.batch_norm.default, _with_mode(Norm("batch"), "training", 5))
    table.register(aten.instance_norm.default, Norm("batch"))
    table.register(aten.layer_norm.default, Norm("layer"))
    table.register(aten.group_norm.default, Norm("group"))

    each([aten.conv1d, aten.conv2d, aten.conv3d], FunctionalLayer())
    each([aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d],
         FunctionalLayer(transposed=True))
    table.register(aten.linear.default, FunctionalLayer(linear=True))
    table.register(aten.addmm.default, Addmm())
    each([aten.matmul, aten.mm, aten.bmm], Matmul())
    table.register(aten.embedding.default, FunctionalEmbedding())
    table.register(aten.scaled_dot_product_attention.default, DotProductAttention())

