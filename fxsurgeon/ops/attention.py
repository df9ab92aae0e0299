"""Attention modules. ``nn.MultiheadAttention``: kept whole (its embedding width is
pinned), costed by formula because the fused kernel hides its matmuls from
``FlopCounterMode``. timm's ``Attention``: its heads are a dimension of their own."""
from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from ..channels.nodes import tensors_in
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
        return walk.opaque(node, args, kwargs, axis=-1,       # embedding; the weights: source
                           reason=f"nn.MultiheadAttention keeps its embed_dim ({node.target})")

    def forward_with(self, module, tensors, args, kwargs):
        """The outputs' shapes from the inputs' (its meta kernels take longer than the rest
        of a ViT's shape pass)."""
        if type(module).forward is not nn.MultiheadAttention.forward:
            return None
        call = _MHA_ARGS.bind(module, *args, **kwargs).arguments
        q, k = call["query"], call["key"]
        if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)) or q.dim() not in (2, 3) \
                or q.shape[-1] != module.embed_dim or k.shape[-1] != module.kdim:
            return None         # its own forward says what is wrong
        out = torch.empty((*q.shape[:-1], module.embed_dim), dtype=q.dtype, device=q.device)
        if not call.get("need_weights", True):
            return out, None
        tokens = (q.shape[-2 if module.batch_first else 0], k.shape[-2 if module.batch_first else 0])
        batch = () if q.dim() == 2 else (q.shape[0 if module.batch_first else 1],)
        heads = () if call.get("average_attn_weights", True) else (module.num_heads,)
        return out, torch.empty((*batch, *heads, *tokens), dtype=q.dtype, device=q.device)


_MHA_ARGS = inspect.signature(nn.MultiheadAttention.forward)


class HeadAttention(Rule):
    """A leaf self-attention module whose heads are channels: timm's ``Attention``
    (``qkv`` a linear layer emitting q, k and v head by head, ``proj`` reading the heads
    back; ``num_heads`` heads of ``head_dim``).

    The heads form a dimension of their own, named ``<module>.heads``, with the head as
    its unit: a head's ``head_dim`` rows in each of q, k and v (and their bias) and its
    ``head_dim`` columns of ``proj`` go together, so heads are removed and added whole
    and ``num_heads`` follows. A head is dead when its columns of ``proj`` are (they are
    its liveliness source): it then adds nothing. The reference a rewrite keeps zeroes a
    removed head's columns (see :mod:`fxsurgeon.judging.reference`), so the rewrite is exact. The
    module's input channels are pinned: a removed input's constant cannot be folded
    through the softmax. Heads are kept whole (pinned) where a norm spans them
    (``scale_norm``) or a gate multiplies them (``gated``), and the module is opaque
    when called with a mask or on a tensor that is not ``(batch, tokens, channels)``.
    """

    measure_macs = True         # counted by FlopCounterMode where the module is opaque

    def propagate(self, walk, node, args, kwargs):
        m = walk.submodule(node)
        why = _unsupported(m, args, kwargs)
        if why:
            return walk.opaque(node, args, kwargs, reason=f"{why} ({node.target})")
        tags = walk.tags
        x = args[0]
        vin = tags.axis_vector(x, -1)       # None: no channel identities of its own, fixed
        walk.pin(x, f"input of attention {node.target}: a removed input's constant cannot be "
                    f"folded through its softmax")
        key = f"{node.target}.heads"
        heads = tags.axis_vector(tags.fresh((m.num_heads,), 0, walk.prescribed.get(key)), 0)
        walk.group(key, heads, "heads")
        rows = np.repeat(heads, m.head_dim)               # one head's positions in q, k or v
        qkv, proj = f"{node.target}.qkv", f"{node.target}.proj"
        walk.ref(f"{qkv}.weight", 0, np.tile(rows, 3), "out", node, init="he")
        walk.ref(f"{qkv}.weight", 1, vin, "in", node)      # (ref ignores None)
        if m.qkv.bias is not None:
            walk.ref(f"{qkv}.bias", 0, np.tile(rows, 3), "param", node)
        walk.ref(f"{proj}.weight", 1, rows, "in", node)
        walk.head(heads)        # judged by their proj columns, as sdpa's heads are
        if not isinstance(getattr(m, "norm", None), (nn.Identity, type(None))):
            walk.pin(tags.structured(heads, (len(heads),), 0), f"a norm spans the heads of {node.target}")
        y = tensors_in(walk.real(node))[0]
        out = walk.fresh(y.shape, -1, node)
        vout = tags.axis_vector(out, -1)
        walk.ref(f"{proj}.weight", 0, vout, "out", node, init="he")
        if m.proj.bias is not None:
            walk.ref(f"{proj}.bias", 0, vout, "param", node)
        tokens, n = x.numel() // x.shape[-1], x.shape[1]
        walk.flops(node, tokens * (1 if vin is not None else x.shape[-1]), (vin, 1),
                   (np.tile(rows, 3), 1))                                 # q, k, v
        walk.flops(node, 2 * tokens * n, (rows, 1))                      # q·kᵀ and attention·v
        walk.flops(node, tokens, (rows, 1), (vout, 1))                   # proj
        walk.wrote(out, node)
        return walk.produced(node, out, -1)

    def sync(self, module, old):
        module.num_heads = module.qkv.weight.shape[0] // 3 // module.head_dim
        module.attn_dim = module.num_heads * module.head_dim
        module.qkv.out_features, module.proj.in_features = module.qkv.weight.shape[0], module.attn_dim
        module.proj.out_features = module.proj.weight.shape[0]


def _unsupported(m, args, kwargs) -> str | None:
    """Why a timm ``Attention`` call is not one whose heads can be resized, if it is not."""
    masked = any(v is not None and v is not False for v in (*args[1:], *kwargs.values()))
    if masked or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
        return "attention called with a mask or not on (batch, tokens, channels)"
    if getattr(m, "gate", None) is not None:
        return "gated attention"
    if not (isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear)
            and m.qkv.out_features == 3 * m.num_heads * m.head_dim
            and m.proj.in_features == m.num_heads * m.head_dim):
        return "attention without a qkv and a proj linear layer over its heads"
    return None


class DotProductAttention(Rule):
    """``scaled_dot_product_attention(q, k, v)``: each head is one channel.

    Where q, k and v are ``(..., heads, tokens, head_dim)`` with channels on the heads
    and head-dim axes (the layers before them made each head's ``head_dim`` channels,
    ``view``/``transpose`` moved them there), the channels of head ``h`` in q, k and v
    become one (``enable_gqa``: k and v have a head per ``n_rep`` query heads, each read by
    its group; the group is then one channel, as after ``repeat_kv``): the layers writing
    them lose or gain whole heads, and the output, which carries v's heads, takes them to
    the layer reading the heads back (whose columns judge a head's liveliness, see
    :attr:`~fxsurgeon.analysis.propagation.Propagation.heads`).
    Anything else keeps its heads' width (opaque). Its cost is its two matmuls (``q @ kᵀ``,
    then ``@ v``), which a fused kernel hides from ``FlopCounterMode``.
    """

    def propagate(self, walk, node, args, kwargs):
        rq, rk, rv = (walk.real(a) for a in node.args[:3])
        rows = rq.numel() // rq.shape[-1]                    # (batch, head, query) triples
        q, k, v = (_heads(walk.tags, t) for t in args[:3])
        gqa = node.kwargs.get("enable_gqa", node.args[7] if len(node.args) > 7 else False)
        if gqa is True and q is not None and k is not None and v is not None and len(k) == len(v) \
                and len(q) % len(k) == 0:       # query head h reads key/value head h // n_rep
            k, v = (np.repeat(t, len(q) // len(k), axis=0) for t in (k, v))
        # a mask with a size per head would keep the old count
        per_head = [t for t in tensors_in((args[3:], kwargs)) if t.dim() >= 3 and t.shape[-3] > 1]
        if q is None or k is None or v is None or not (len(q) == len(k) == len(v)) or \
                q.shape[1] != k.shape[1] or per_head:
            node.meta["fxs_macs"] = rows * rk.shape[-2] * (rq.shape[-1] + rv.shape[-1])
            return walk.opaque(node, args, kwargs,
                               reason=f"attention keeps its heads' width at {walk.describe(node)}")
        for h in range(len(q)):
            walk.couple(np.full(q.shape[1] + k.shape[1] + v.shape[1], q[h, 0]),
                        np.concatenate([q[h], k[h], v[h]]), "heads")
        walk.head(q[:, 0])
        pairs = rows // len(q) * rk.shape[-2]      # (batch, query, key) per head channel
        walk.flops(node, pairs, (q.reshape(-1), 1))
        walk.flops(node, pairs, (v.reshape(-1), 1))
        out = tensors_in(walk.real(node))[0]
        view = [1] * out.dim()
        view[-3], view[-1] = v.shape
        return torch.from_numpy(np.ascontiguousarray(v)).view(view).expand(out.shape)


def _heads(tags, t) -> np.ndarray | None:
    """The ``(heads, head_dim)`` identities of a ``(..., heads, tokens, head_dim)`` tag
    tensor: a channel at every position, the same over batch and tokens, no identity in
    two heads, unless the two heads are the same one repeated whole (grouped-query
    attention's keys and values, each read by the query heads of its group). None
    otherwise."""
    if not isinstance(t, torch.Tensor) or t.dim() < 3:
        return None
    m = t.reshape(-1, *t.shape[-3:])[0, :, 0, :]
    if (m == 0).any() or not torch.equal(t, m.unsqueeze(-2).expand(t.shape)):
        return None
    m = m.numpy()
    per_head = sum(len(np.unique(row)) for row in np.unique(m, axis=0))
    return m if len(np.unique(m)) == per_head else None
