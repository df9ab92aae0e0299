"""Reductions and softmax: a statistic over a channel axis pins its channels."""
from __future__ import annotations

from .rule import Rule


class Reduce(Rule):
    """``mean``, ``sum``, ``amax``...: the reduced axes go; reducing over channels pins them."""

    def propagate(self, walk, node, args, kwargs):
        x = args[0]
        dims = walk.argument(node, "dim", 1)
        keep = walk.argument(node, "keepdim", 2, False)
        keep = keep if isinstance(keep, bool) else False
        dims = list(range(x.dim())) if dims is None else [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % x.dim() for d in dims)
        if not x.numel():           # a statistic of nothing: no identity reaches it
            shape = [1 if d in dims else n for d, n in enumerate(x.shape)] if keep else \
                [n for d, n in enumerate(x.shape) if d not in dims]
            return walk.tags.none(shape)
        out = x
        for d in reversed(dims):
            out = out.narrow(d, 0, 1) if keep else out.select(d, 0)
        if any(walk.tags.carries(x, d) for d in dims):
            walk.pin(x, f"reduction over the channel axis at {walk.describe(node)}")
            return walk.tags.none(out.shape)       # a statistic of channels is none of them
        return out


class Softmax(Rule):
    """Softmax along ``dim``: a channel axis there is pinned, the rest carries through."""

    def propagate(self, walk, node, args, kwargs):
        x = args[0]
        dim = (walk.submodule(node).dim if node.op == "call_module" else walk.argument(node, "dim", 1))
        if dim is None or walk.tags.carries(x, dim % x.dim()):
            walk.pin(x, f"softmax over the channel axis at {walk.describe(node)}")
        return x
