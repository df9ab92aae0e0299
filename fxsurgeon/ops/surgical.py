"""Rules of the layers fxsurgeon itself puts into rewritten networks."""
from __future__ import annotations

from .rule import Rule


class Folded(Rule):
    """A :class:`~fxsurgeon.folded.FoldedConstant` after a layer: its output holds the
    layer's channels, and so does its weight's output axis (a later surgery resizes it).
    It costs nothing: a constant map per input size, like a bias."""

    def propagate(self, walk, node, args, kwargs):
        y = args[0]
        vec = walk.tags.axis_vector(y, 1)
        if vec is None:
            return walk.opaque(node, args, kwargs)
        layer = walk.submodule(node).layer
        walk.ref(f"{node.target}.layer.weight", 1 if layer.transposed else 0, vec, "param", node)
        return y
