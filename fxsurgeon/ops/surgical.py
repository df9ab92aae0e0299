"""Rules of the layers fxsurgeon itself puts into rewritten networks."""
from __future__ import annotations

from .rule import Rule


class Folded(Rule):
    """A :class:`~fxsurgeon.folded.FoldedConstant` after a layer: its output holds the
    layer's channels, and its kernel's output axis holds them too (so a later surgery
    resizes it). It costs nothing: a constant map per input size, like a bias."""

    def propagate(self, walk, node, args, kwargs):
        y = args[0]
        vec = walk.tags.axis_vector(y, 1)
        if vec is None:
            return walk.opaque(node, args, kwargs)
        walk.ref(f"{node.target}.kernel", 1 if walk.submodule(node).transposed else 0, vec, "param", node)
        return y
