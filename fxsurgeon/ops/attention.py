"""``nn.MultiheadAttention``: kept whole (its embedding width is pinned), costed by formula
because the fused kernel hides its matmuls from ``FlopCounterMode``."""
from __future__ import annotations

from .rule import Rule


class MultiheadAttention(Rule):
    """A leaf ``nn.MultiheadAttention``: opaque, with its exact multiply-accumulates."""

    def propagate(self, walk, node, args, kwargs):
        m = walk.submodule(node)
        q = walk.node_argument(node, "query", 0)
        k = walk.node_argument(node, "key", 1)
        q, k = walk.real(q), walk.real(k)
        e = m.embed_dim
        n = 1 if q.dim() == 2 else q.shape[0 if m.batch_first else 1]
        rq, rk = q.numel() // e, k.numel() // m.kdim
        macs = rq * e * e + rk * e * m.kdim + rk * e * m.vdim + 2 * rq * (rk // n) * e + rq * e * e
        node.meta["fxs_macs"] = macs
        return walk.opaque(node, args, kwargs,
                           reason=f"nn.MultiheadAttention keeps its embed_dim ({node.target})")
