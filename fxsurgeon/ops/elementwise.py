"""Elementwise ops: unary ones carry channels through, binary ones couple them."""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ..channels.facts import Modulated
from ..channels.nodes import reads_values, tensors_in
from .rule import Rule


class Carry(Rule):
    """An op that maps each element on its own (an activation, dropout, a cast): its
    output holds its input's channels. ``homogeneous`` says whether ``f(c·x) = c·f(x)``
    for ``c > 0`` (ReLU, LeakyReLU, identity, dropout). ``per_element=False``: its
    randomness spans channels, so it cannot run on a value's parts one by one."""

    elementwise = True
    channelwise = True

    def __init__(self, homogeneous: bool = False, keeps_dtype: bool = True, per_element: bool = True):
        self._homogeneous = homogeneous
        self.elementwise = keeps_dtype          # casts change the dtype: run their own kernel
        self.per_element = per_element

    def propagate(self, walk, node, args, kwargs):
        return args[0] if args else next(iter(kwargs.values()))

    def homogeneous(self, node, module) -> bool:
        return self._homogeneous

    def stream(self, node, module):
        return "each" if self.per_element else None


class Bounded(Carry):
    """``clamp``/``clip``: a :class:`Carry` for scalar bounds; a tensor bound is a second
    operand no rule lines up with the channels, so the op is opaque."""

    def propagate(self, walk, node, args, kwargs):
        if tensors_in((args[1:], kwargs)):
            return walk.opaque(node, args, kwargs, reason=f"a tensor bound at {walk.describe(node)}")
        return args[0]


class Pow(Carry):
    """``x ** p`` (``operator.pow``, ``torch.pow``, ``Tensor.pow``, ATen's ``pow`` overloads):
    with a number ``p`` it maps each element on its own, so its output holds ``x``'s
    channels. A removed channel's constant ``c`` becomes ``c ** p``, still a constant, which
    folding replays and folds like any activation's (where ``c ** p`` is not finite, ``0 ** -1``,
    the network read ``inf`` there before the surgery: folding refuses, see
    :mod:`fxsurgeon.surgery.folding`). ``(s·x) ** p = s ** p · x ** p``: positively
    homogeneous of degree ``p``, so neural rescaling (which divides the reader's weights by
    ``s``) passes through it only where ``p`` is literally 1.

    A number raised to a tensor (``2 ** x``) maps each element of ``x`` on its own too, so
    it carries the exponent's channels. A tensor raised to a tensor is a second operand
    whose zeros do not stay zeros (``0 ** 0 = 1``), with no rule that couples them: it pins
    both, with that reason."""

    def __init__(self):
        super().__init__()

    @staticmethod
    def _operands(args, kwargs):
        base = args[0] if args else kwargs.get("input", kwargs.get("self"))
        exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
        return base, exponent

    def propagate(self, walk, node, args, kwargs):
        base, exponent = self._operands(args, kwargs)
        if isinstance(base, torch.Tensor) and isinstance(exponent, torch.Tensor):
            return walk.opaque(node, args, kwargs,
                               reason=f"a tensor raised to a tensor's power at {walk.describe(node)}")
        return base if isinstance(base, torch.Tensor) else exponent

    def homogeneous(self, node, module) -> bool:
        base, exponent = self._operands(node.args, node.kwargs)
        return isinstance(base, fx.Node) and isinstance(exponent, (int, float)) and exponent == 1

    def stream(self, node, module):
        base, exponent = self._operands(node.args, node.kwargs)
        tensors = [a for a in (base, exponent) if isinstance(a, fx.Node) and reads_values(a)]
        return "each" if len(tensors) == 1 else None


class Couple(Rule):
    """A binary elementwise op: the channels it lines up position by position become one
    class (``label``: "residual" for additions, "gate" for products). ``keeps_zero`` names
    the operands (0, 1) whose zero it keeps whatever the other holds (both of a product,
    the dividend of a quotient): a channel broadcast against a computed value (an attention
    map) stays removable there only if it is 0 (see :class:`~fxsurgeon.channels.facts.Modulated`)."""

    elementwise = True

    def __init__(self, label: str, keeps_zero: tuple[int, ...] = ()):
        self.label = label
        self.keeps_zero = keeps_zero

    def stream(self, node, module):
        return "each"

    def fresh(self, node, module):
        return True             # torch's binary ops allocate their output

    def propagate(self, walk, node, args, kwargs):
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            return a if isinstance(a, torch.Tensor) else b
        out_shape = tuple(torch.broadcast_shapes(a.shape, b.shape))
        out = self._structured(walk, node, a, b, out_shape)
        if out is None:
            out = self._general(walk, node, a, b, out_shape)
        # a layer's output plus a constant (a folded one, a bias) is still that layer's
        constant = [isinstance(arg, fx.Node) and arg in walk.const for arg in node.args[:2]]
        if len(constant) == 2 and any(constant) and not all(constant):
            writer = walk.writer_of(b if constant[0] else a)
            if writer is not None:
                walk.wrote(out, writer)
        return out

    def _structured(self, walk, node, a, b, out_shape):
        tags = walk.tags
        nd = len(out_shape)
        sa, sb = tags.structure(a, nd), tags.structure(b, nd)
        if sa is None or sb is None or sa[0] != sb[0]:
            return None
        axis, va, vb = sa[0], sa[1], sb[1]
        if len(va) == len(vb):
            walk.couple(va, vb, self.label)
            self._positional(walk, node, (a, b), axis - nd, va)
            return tags.structured(va, out_shape, axis)
        for k, (one, v, many) in enumerate(((b, va, a), (a, vb, b))):
            if len(v) > 1 and one.shape[axis - nd + one.dim()] == 1:   # broadcast across the other's channels
                self._broadcast(walk, node, one, axis - nd + one.dim())
                self._modulated(walk, node, k, axis - nd + many.dim(), v)
                return tags.structured(v, out_shape, axis)
        return None

    def _modulated(self, walk, node, k: int, axis: int, v) -> None:
        """Record channels ``v`` of operand ``k`` along its ``axis`` as modulated when the
        other operand, broadcast across them, is computed from the inputs (a constant one
        keeps a constant channel constant: folding takes it)."""
        operands = self._operands(node)
        many, one = operands[k], operands[1 - k]
        if isinstance(many, fx.Node) and isinstance(one, fx.Node) and one not in walk.const:
            walk.modulated(Modulated(node.name, many.name, axis, np.asarray(v), k in self.keeps_zero))

    def _positional(self, walk, node, values, axis: int, v) -> None:
        """Record channels ``v`` (along ``axis``, counted from the end) as modulated when one
        operand is a constant that varies along the positions (a position embedding): a
        channel constant at ``c`` comes out as ``c + p(h, w)``, which no per-channel
        constant can stand for (a bias, constant along them, is folded)."""
        operands = self._operands(node)
        const = [isinstance(o, fx.Node) and o in walk.const for o in operands]
        if const.count(True) != 1 or not isinstance(operands[const.index(False)], fx.Node):
            return
        k = const.index(False)
        c = values[1 - k]
        if any(size > 1 for i, size in enumerate(c.shape) if i != axis + c.dim()):
            walk.modulated(Modulated(node.name, operands[k].name, axis + values[k].dim(), np.asarray(v),
                                     k in self.keeps_zero))

    @staticmethod
    def _operands(node) -> list:
        """The op's two operands, as its call gives them (nodes or values)."""
        return [node.args[0] if node.args else node.kwargs.get("input"),
                node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]

    @staticmethod
    def _broadcast(walk, node, t, axis):
        """``t`` is shared by every channel of the other operand: if its own axis holds a
        channel, more of them would no longer broadcast, so that one channel stays one."""
        if walk.tags.carries(t, axis):
            walk.pin(t, f"one channel broadcast across many at {walk.describe(node)}")

    def _general(self, walk, node, a, b, out_shape):
        tags = walk.tags
        nd = len(out_shape)
        shared = []
        for t, other in ((a, b), (b, a)):
            pad = nd - t.dim()
            bcast = [k for k in range(nd) if out_shape[k] > 1 and (k < pad or t.shape[k - pad] == 1)]
            o = other.expand(out_shape)
            shared.append(any(tags.varies_along(o, k) for k in bcast))
            for k in bcast:
                if k >= pad and tags.varies_along(o, k):
                    self._broadcast(walk, node, t, k - pad)
        if shared[0] and shared[1]:
            return walk.opaque(node, (a, b), {}, reason=f"outer-product broadcast {walk.describe(node)}")
        if shared[0]:
            return b.expand(out_shape)
        if shared[1]:
            return a.expand(out_shape)
        ea, eb = a.expand(out_shape).reshape(-1), b.expand(out_shape).reshape(-1)
        tags.couple(ea.numpy(), eb.numpy())      # union copes with repeated pairs
        for t in (a, b):   # every pair is now one class: a structured operand stands for both
            st = tags.structure(t, nd)
            if st is not None and t.shape[st[0] - nd + t.dim()] == out_shape[st[0]]:
                walk.coupled(st[1], self.label)
                self._positional(walk, node, (a, b), st[0] - nd, st[1])
                return tags.structured(st[1], out_shape, st[0])
        walk.coupled(ea.numpy(), self.label)
        return torch.where(a.expand(out_shape) != 0, a.expand(out_shape), b.expand(out_shape))


class Glu(Couple):
    """``glu`` (``nn.GLU``): the first half of ``dim`` times the sigmoid of the second. The
    halves are cut by position, as ``chunk(2)`` cuts them (a multiple of 2), and channel
    ``c`` and channel ``c + n/2`` are lined up as a product lines them up: one class."""

    def __init__(self):
        super().__init__("gate", keeps_zero=(0,))

    def stream(self, node, module):
        return None             # its halves are cut by position: it reads a value whole

    def propagate(self, walk, node, args, kwargs):
        x = args[0] if args else kwargs["input"]
        dim = walk.submodule(node).dim if node.op == "call_module" else walk.argument(node, "dim", 1, -1)
        if walk.tags.carries(x, dim % x.dim()):
            walk.divisor(walk.tags.unique(x), 2)
            walk.split_by_position(walk.tags.unique(x))
        a, b = x.chunk(2, dim)
        out = self._structured(walk, node, a, b, tuple(a.shape))
        return self._general(walk, node, a, b, tuple(a.shape)) if out is None else out


class StochasticDepth(Carry):
    """torchvision's ``stochastic_depth``: drops whole samples (or the whole batch), one
    draw for all channels; on a value held in parts, one draw for all parts."""

    def __init__(self):
        super().__init__(per_element=False)

    def stream(self, node, module):
        return "together" if node.op == "call_function" else None

    def on_parts(self, node, module):
        return stochastic_depth_parts


def stochastic_depth_parts(parts: list[torch.Tensor], p: float, mode: str, training: bool = True
                           ) -> list[torch.Tensor]:
    """``torchvision.ops.stochastic_depth`` of each part with one draw for them all: its
    noise for the whole value, drawn by it on ones of the noise's own size (the same size,
    dtype and device, so the same random state gives the same draw), times every part."""
    from torchvision.ops import stochastic_depth  # the op's own library: loaded already
    x = parts[0]
    noise = stochastic_depth(x.new_ones([x.shape[0]] + [1] * (x.ndim - 1)), p, mode, training)
    return list(parts) if not training or p == 0.0 else [part * noise for part in parts]
