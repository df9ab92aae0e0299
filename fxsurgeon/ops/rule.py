"""The base of every op rule: what fxsurgeon knows about one kind of op.

A rule answers every pass's question about its op, so no pass keeps a list of op
names of its own:

- **channels** (:meth:`Rule.propagate`, run by the identity walk): how the op moves,
  produces, consumes, couples or pins channel identities, and what it records on the
  way — which of its tensors hold which channel axis (and what new channels of them
  start at), its cost terms, where it reads channels through a weight, which per-channel
  scale judges its channels' liveliness;
- **shapes** (:attr:`elementwise`, :attr:`keeps_shape`, :meth:`forward_with`,
  :attr:`measure_macs`): how the shape pass may compute its output cheaply, and whether
  its multiply-accumulates are measured by ``FlopCounterMode``;
- **rescaling** (:meth:`homogeneous`): whether ``f(c·x) = c·f(x)`` per channel for ``c > 0``;
- **rewriting** (:meth:`sync`, :meth:`restricted`, :attr:`channelwise`): how a module's
  constructor attributes follow its resized tensors, and how removed constant inputs are
  folded into it (:meth:`absorb_shift`: into a norm that reads it);
- **streams** (:meth:`stream`, :meth:`fresh`): how the op runs on a value held as one
  tensor per generation of its channels (:mod:`fxsurgeon.surgery.streams`), and whether its
  output is always new memory (an in-place write into it then cannot reach a value held
  in parts);
- **tracing** (:attr:`leaf`): a module type with a rule is traced as one call;
  (:attr:`mode_argument`): the argument of a function that says whether it runs in
  training mode, which the torch.export front end ties to the module's ``training`` flag.

Rules are registered in the op table (:mod:`fxsurgeon.ops.table`); users add their own
with :func:`fxsurgeon.register_op`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, fx, nn

if TYPE_CHECKING:      # the walk runs rules; rules only take it as an argument
    from ..analysis.propagation import Walk


class Rule:
    """What one kind of op does; subclass it and override what differs.

    The default is the safe one: an op whose rule says nothing pins every channel it
    touches (see :class:`Opaque`).
    """

    #: shapes: the output has the broadcast shape and promoted dtype of the tensor operands
    elementwise = False
    #: shapes: the output has the shape and dtype of the first input
    keeps_shape = False
    #: shapes: count this op's multiply-accumulates with FlopCounterMode (the rule may add
    #: them as a cost term where it cannot describe them itself)
    measure_macs = False
    #: tracing: a module of this type is kept as one call, not traced through
    leaf = True
    #: folding: the op acts on each channel on its own, the same way (an activation,
    #: pooling, spatial padding), so it can be replayed on removed channels alone
    channelwise = False
    #: tracing: ``(name, position)`` of the argument saying whether the op runs in training
    #: mode (``aten.batch_norm``'s ``training``); an exported graph reads it from the
    #: module's ``training`` flag, so ``train()`` and ``eval()`` switch it
    mode_argument: tuple[str, int] | None = None

    def propagate(self, walk: Walk, node: fx.Node, args: tuple, kwargs: dict):
        """The tag value of ``node`` given the tag values of its arguments.

        ``walk`` is the :class:`~fxsurgeon.analysis.propagation.Walk` running the graph: it makes
        and reads tag tensors (``walk.tags``) and takes the records through its methods
        (``walk.ref``, ``walk.pin``, ``walk.flops``, ``walk.produced``, ``walk.reader``,
        ``walk.size``, ``walk.divisor``, ...: its "what rules record" section); a rule
        never writes ``walk.out`` itself."""
        return walk.opaque(node, args, kwargs)

    @property
    def pins_all(self) -> bool:
        """channels: the op pins every channel it reads and emits only pinned ones (it
        keeps the default :meth:`propagate`), so a constant it reads needs no identities."""
        return type(self).propagate in (Rule.propagate, Opaque.propagate)

    def weights(self, walk: Walk, node: fx.Node) -> list[fx.Node]:
        """The arguments of ``node`` that it uses as weights (computed from parameters,
        they are read through their provenance, not as channels)."""
        return []

    def forward_with(self, module: nn.Module, tensors: dict, args: tuple, kwargs: dict):
        """``module(*args, **kwargs)`` computed with ``tensors`` in place of its parameters and
        buffers (meta tensors, for the shape pass), or None to let the pass swap them in."""
        return None

    def homogeneous(self, node: fx.Node, module: nn.Module | None) -> bool:
        """Whether the op is positively homogeneous of degree one, channel by channel."""
        return False

    def restricted(self, node: fx.Node, root: nn.Module, weight: Tensor) -> nn.Module | None:
        """For a layer that reads channels through a weight: a module computing the layer
        on those channels alone, with ``weight`` (its weight's columns of them) and no
        bias, for folding removed constants; None if the layer cannot say (folding then
        refuses where the constants' contribution varies over the output)."""
        return None

    def folded_scale(self, node: fx.Node, root: nn.Module) -> Tensor | None:
        """deploying: the per-channel scale this op only multiplies its input by, which
        deployment folds into the layers around it (a judge's gate), or None: the op stays
        (the safe answer)."""
        return None

    def absorbs_scale(self, node: fx.Node, root: nn.Module) -> bool:
        """deploying: whether :meth:`absorb_scale` can take a per-channel scale of the op's
        input into its weight; False, the safe answer (a gate then stays in front of it)."""
        return False

    def absorb_scale(self, node: fx.Node, root: nn.Module, scale: Tensor) -> None:
        """deploying: multiply, inside the op's own weight, each input channel the op reads
        (its first argument's channel axis) by ``scale``, so that on the unscaled input it
        computes what it computed on the scaled one (only where :meth:`absorbs_scale`)."""
        raise NotImplementedError

    def absorbs_output_scale(self, node: fx.Node, root: nn.Module) -> bool:
        """deploying: whether :meth:`absorb_output_scale` can take a per-channel scale of the
        op's output into its weight and bias; False, the safe answer."""
        return False

    def absorb_output_scale(self, node: fx.Node, root: nn.Module, scale: Tensor) -> None:
        """deploying: multiply each output channel's weight rows and bias by ``scale``, so the
        op computes what it computed followed by the scale (only where
        :meth:`absorbs_output_scale`)."""
        raise NotImplementedError

    def absorb_shift(self, node: fx.Node, module: nn.Module | None, shift: Tensor) -> bool:
        """folding: take ``shift`` (one constant per channel of axis 1), added to the op's
        input, into the op's own state, so that its output without the shift is what it
        was with it, in training and in evaluation and on every later step; False, the
        safe answer, if it cannot (the shift is then added before the call)."""
        return False

    def output_axes(self, module: nn.Module) -> list[tuple[str, int]]:
        """For a layer: its tensors that hold its output channels, and on which axis (what
        folding lays out anew and a later surgery resizes in a fold built from it, see
        :meth:`restricted`)."""
        return []

    def unpack(self, module: nn.Module) -> nn.Module | None:
        """The standard layer that computes exactly what ``module`` computes, with its
        weights as one tensor, or None: a rewrite resizes that layer instead (a layer a
        rewrite put in, such as a ``cr`` partitioned one), and export deploys it."""
        return None

    def stream(self, node: fx.Node, module: nn.Module | None) -> str | None:
        """How the op runs on a value whose channels are held as one tensor per generation
        (see :mod:`fxsurgeon.surgery.streams`): ``"each"`` applied to every part as to the whole,
        ``"spatial"`` the same where the channel axis is 1, ``"concat"``, ``"batch_norm"``,
        ``"depthwise"`` (one group per channel), ``"blocks"`` (a partitioned layer),
        ``"fold"`` (a folded constant), ``"shape"`` (reads only the shape), ``"together"``
        (:meth:`on_parts` takes every part at once); None: the parts are joined first."""
        return None

    def on_parts(self, node: fx.Node, module: nn.Module | None):
        """For the stream kind ``"together"``: a function of the list of parts of the op's
        first argument and its other arguments, returning the output's parts (an op whose
        one random draw spans every channel draws once for them all)."""
        return None

    def fresh(self, node: fx.Node, module: nn.Module | None) -> bool:
        """streams: whether the op's output is always new memory, never a view of an input
        or the input itself (an in-place call writes into its input whatever this says);
        False, the safe answer, lets streams assume it may alias any of its inputs."""
        return False

    def sync(self, module: nn.Module, old: nn.Module) -> None:
        """Bring ``module``'s attributes in line with its resized tensors (``old`` is the
        module before the rewrite)."""

    def sync_call(self, node: fx.Node, root: nn.Module, old_root: nn.Module) -> None:
        """Bring the literal arguments of a function call ``node`` in line with the resized
        tensors of ``root`` (``old_root`` holds them as they were), as :meth:`sync` does
        for a module's attributes."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Opaque(Rule):
    """An op fxsurgeon does not understand: it pins what it touches, and its
    multiply-accumulates are measured so the cost stays exact."""

    measure_macs = True

    def __init__(self, reason: str | None = None):
        self.reason = reason

    def propagate(self, walk, node, args, kwargs):
        return walk.opaque(node, args, kwargs, reason=self.reason)
