"""What the identity walk records about channels, one named record per kind of fact.

Op rules make them (they take nothing from later stages); the walk collects them in its
:class:`~fxsurgeon.analysis.propagation.Propagation`, and the dimensions, the planner and
the rewrite read them by name. They are named tuples: unpacking them still works.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Pin(NamedTuple):
    """Channels that must keep their width, and why."""

    tags: np.ndarray
    why: str


class Divisor(NamedTuple):
    """Channels whose width must stay a multiple of ``factor`` (groups, chunks, head_dim)."""

    tags: np.ndarray
    factor: int


class Coupling(NamedTuple):
    """Channels that are one (an add, a concat), and the op that couples them."""

    tags: np.ndarray
    why: str


#: the :class:`Coupling` of the two sides of a product contracted over channels (``q @ kᵀ``):
#: no weight reads them, and a new channel on both sides adds to every product
CONTRACTION = "contraction"


class Modulated(NamedTuple):
    """Channels that ``node`` combines with a value computed from the inputs and broadcast
    across them (an attention gate's one-channel map ψ, a per-sample scale): the channels
    ``tags`` along ``axis`` of ``operand`` (a node's name). A channel constant at ``c``
    there (dead: its BatchNorm's γ is 0) comes out as ``c·ψ(x)``, which varies: removing
    it would change the function, unless ``keeps_zero`` (a product: ``0·ψ = 0``) and ``c``
    is 0. A constant that varies along the positions (a position embedding ``p``) does the
    same: ``c + p(h, w)`` is no per-channel constant either."""

    node: str
    operand: str
    axis: int
    tags: np.ndarray
    keeps_zero: bool


class Group(NamedTuple):
    """The channels ``node`` emits (or takes in), and which kind of node it is:
    ``"producer"``, ``"input"`` or ``"heads"``."""

    node: str
    tags: np.ndarray
    origin: str


class Grouped(NamedTuple):
    """Channels around a grouped conv: ``groups`` equal consecutive blocks."""

    tags: np.ndarray
    groups: int
    transposed: bool


class Generations(NamedTuple):
    """A partitioned layer's output and input identities, each with its generation (an
    input's is -1 when it is fixed)."""

    out: np.ndarray
    out_gen: np.ndarray
    inputs: np.ndarray
    in_gen: np.ndarray


class Size(NamedTuple):
    """A literal size that follows a channel axis: the node, its index in the node's size
    list, and the channels it counts."""

    node: str
    index: int
    tags: np.ndarray
