"""Ops that only move data: views, permutes, concatenations, splits, pads, pooling.

They run unchanged on tag tensors, so every identity lands where its value would. Where
literal sizes or bounds fix how wide a channel axis must be, the channels are pinned
(or constrained to a multiple).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils._pytree import tree_map

from ..channels.nodes import tensors_in
from ..channels.tags import prod
from .rule import Rule


class Move(Rule):
    """Runs on the tag tensor itself: identities move exactly as values do.

    ``shape_only`` ops (``expand_as``, ``view_as``) take a second tensor for its shape
    only; ``tag_method`` names the method to run on tags instead, ``tag_function`` the
    function (tag tensors are often expanded views: ``view`` becomes ``reshape``)."""

    def __init__(self, shape_only: bool = False, tag_method: str | None = None, tag_function=None):
        self.shape_only = shape_only
        self.tag_method = tag_method
        self.tag_function = tag_function

    def propagate(self, walk, node, args, kwargs):
        if not self.shape_only and tensors_in((args[1:], kwargs)):
            # a tensor used as an index holds identities here, not the real indices
            return walk.opaque(node, args, kwargs,
                               reason=f"indexing with a tensor at {walk.describe(node)}")
        out = self._run(walk, node, args, kwargs)
        x = args[0] if args else next(iter(kwargs.values()))
        if isinstance(x, torch.Tensor):
            self.check(walk, node, x, out, args, kwargs)
        return out

    def check(self, walk, node, x, out, args, kwargs) -> None:
        """What the move implies for the channels of ``x`` (nothing, for a plain move)."""

    def homogeneous(self, node, module) -> bool:
        return True

    def _run(self, walk, node, args, kwargs):
        if node.op == "call_function":
            fn = self.tag_function or node.target
        elif node.op == "call_module":
            fn = walk.submodule(node)
        else:
            method = self.tag_method or node.target
            fn = (lambda s, *a, **k: getattr(s, method)(*a, **k))
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, NotImplementedError):
            # some data-movement kernels have no int64 version: float64 holds ids exactly
            as_f = tree_map(lambda v: v.double() if isinstance(v, torch.Tensor) else v, (args, kwargs))
            out = fn(*as_f[0], **as_f[1])
            return tree_map(lambda v: v.round().long() if isinstance(v, torch.Tensor) else v, out)


class Reshape(Move):
    """``view``/``reshape``: a channel axis whose new sizes are all literals is pinned;
    literal factors of a size-derived reshape become a multiple.

    ``follow_sizes`` (an exported graph, where every size is a literal): a literal size
    of an axis that holds a channel axis of the input whole is recorded instead, and a
    rewrite sets it to the axis's new width (:meth:`set_size`)."""

    def __init__(self, shape_only: bool = False, tag_method: str | None = None, tag_function=None,
                 follow_sizes: bool = False):
        super().__init__(shape_only, tag_method, tag_function)
        self.follow_sizes = follow_sizes

    def check(self, walk, node, x, out, args, kwargs):
        raw = node.args[1:]
        if len(raw) == 1 and isinstance(raw[0], (tuple, list)):
            raw = raw[0]
        if len(raw) != out.dim():
            return
        tags = walk.tags
        carrying = tags.carrying_axes(out)
        literal = [k for k in carrying if isinstance(raw[k], int) and raw[k] != -1]
        one = carrying[0] if len(carrying) == 1 else 0
        if one and isinstance(raw[one - 1], int) and raw[one - 1] == 1 and _whole(tags, x, out, one):
            # (..., 1, n): one head of n channels, if attention further on makes them one
            walk.later(_one_head(walk, node, one, x, out, one in literal, self.follow_sizes))
            carrying, literal = [], []
        if self.follow_sizes:
            for k in [k for k in literal if _whole(tags, x, out, k)]:
                walk.size(node, k, tags.axis_vector(out, k))
                literal.remove(k)
                carrying.remove(k)
        if carrying and len(literal) == len(carrying):
            # literal sizes pin, unless one is a head count (or heads times head_dim) that
            # attention, further on, shows to be whole heads: it then follows them
            heads = [h for h in _head_axes(tags, x, out) if h[0] in literal]
            if heads and (len(literal) > 1 or not heads[0][2]):
                k, m, split = heads[0]
                walk.later(_follow_heads(walk, node, k, m, split, x,
                                         prod(raw[j] for j in literal if j != k)))
            elif self.follow_sizes:
                walk.later(_follow_rows(walk, node, x, out, literal))
            else:
                walk.pin(x, f"constant reshape size at {walk.describe(node)}")
        elif literal and all(_within_channels(tags, x, out, k) for k in literal):
            walk.later(_follow_or_divide(walk, node, out, literal, tags.unique(x),
                                         prod(raw[k] for k in literal)))
        elif literal:
            # smp MAnet's ``[b, hw, C] -> [b, C, h, w]``: the literal size takes channels
            # and positions together, so no width of it holds whole channels
            walk.pin(x, f"reshape mixing channels with other axes at {walk.describe(node)}")
        # a size read off a channel axis of another tensor ties that width to this reshape
        classes = set(tags.uf.find(tags.unique(x)).tolist())
        for size in raw:
            for other, theirs, axis in walk.sized_by(size):
                if other is node.args[0] or theirs is None or not tags.unique(theirs).size:
                    continue
                if axis is not None and not tags.carries(theirs, axis):
                    continue
                if not set(tags.uf.find(tags.unique(theirs)).tolist()) <= classes:
                    why = f"reshape to the channel count of {walk.describe(other)} at {walk.describe(node)}"
                    walk.pin(theirs, why)
                    walk.pin(x, why)

    def set_size(self, node, index: int, width: int) -> None:
        """Set the literal size at ``index`` of ``node``'s size list (recorded by
        :meth:`check`) to ``width``."""
        if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
            sizes = list(node.args[1])
            sizes[index] = width
            node.update_arg(1, sizes)
        else:
            node.update_arg(1 + index, width)


def _head_axes(tags, x, out) -> list[tuple[int, np.ndarray, bool]]:
    """Axes of ``out`` that a reshape between ``(..., channels)`` and ``(..., heads,
    head_dim)`` makes: ``(axis, heads x head_dim identities, split)``, the heads axis of a
    split, or the merged axis of a merge (both of at least two: a head of one channel is
    not told apart from a plain view)."""
    found = []
    for a, b, split in ((x, out, True), (out, x, False)):
        for j in range(a.dim()):
            vec = tags.axis_vector(a, j) if tags.carries(a, j) else None
            if vec is None:
                continue
            for k in range(b.dim() - 1):
                if b.shape[k] * b.shape[k + 1] != len(vec) or min(b.shape[k], b.shape[k + 1]) < 2:
                    continue
                index = [0] * b.dim()
                index[k], index[k + 1] = slice(None), slice(None)
                m = b[tuple(index)].numpy()
                if np.array_equal(m.reshape(-1), vec):
                    found.append((k if split else j, m, split))
    return found


def _follow_heads(walk, node, k: int, heads: np.ndarray, split: bool, x, rest: int):
    """What to decide once every coupling is known: if each row of ``heads`` became one
    channel (attention made it a head), the literal size at axis ``k`` follows the heads
    (a split's head count, a merge's heads times head_dim) and the other literal sizes
    (``rest``, the head_dim) constrain as a multiple; else the reshape pins ``x``."""
    why = f"constant reshape size at {walk.describe(node)}"
    pinned = walk.tags.unique(x)

    def decide():
        roots = walk.tags.uf.find(heads)
        if (roots == roots[:, :1]).all():
            walk.size(node, k, heads[:, 0] if split else heads.reshape(-1))
            if rest > 1:
                walk.divisor(pinned, rest)
        else:
            walk.pin_channels(pinned, why)
    return decide


def varying_axes(tags, t) -> list[int]:
    """The axes of tag tensor ``t`` along which its channel classes change, as the
    couplings known now make them (read after the walk: see ``walk.later``)."""
    scratch: dict = {}
    return [a for a in range(t.dim()) if tags.varies_along(t, a, scratch)]


def class_rows(tags, t, k: int) -> np.ndarray | None:
    """One identity per position of axis ``k`` of tag tensor ``t``, where each position holds
    one class across every other axis (no channel aside) and every class holds as many
    positions; else None. Read after the walk, as :func:`varying_axes`."""
    m = torch.movedim(t, k, 0).reshape(t.shape[k], -1).numpy()
    rep = m.max(1) if m.shape[1] else np.zeros(len(m), np.int64)
    roots = tags.uf.find(m)
    if not ((m == 0) | (roots == tags.uf.find(rep)[:, None])).all():
        return None
    counts = np.unique(tags.uf.find(rep[rep != 0]), return_counts=True)[1]
    return rep if len(counts) and (counts == counts[0]).all() else None


def _follow_rows(walk, node, x, out, literal: list[int]):
    """What to decide, once every coupling is known, about a reshape or expand whose literal
    sizes hold channels in a pattern no simpler rule reads (grouped-query attention's
    ``k[:, :, None].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)``): where the
    classes of its output change along one axis only, and each position of that axis holds
    one class, whole heads (or groups of them) are along that axis and nothing else holds a
    channel apart: its literal size follows them (the count of positions the kept and new
    classes take) and the other literal sizes lie within channels, which a rewrite never
    cuts (head_dim, n_rep). Anything else, one class alone included (which axis would
    grow?), pins ``x``."""
    why = f"constant reshape size at {walk.describe(node)}"
    pinned = walk.tags.unique(x)

    def decide():
        found = _rows_along_one_axis(walk.tags, out)
        if found is None:
            walk.pin_channels(pinned, why)
        elif found[0] in literal:
            walk.size(node, *found)
    return decide


def _rows_along_one_axis(tags, out) -> tuple[int, np.ndarray] | None:
    """``(axis, one identity per position)`` where the classes of tag tensor ``out`` change
    along that one axis only, each position holding one class (:func:`class_rows`); else
    None. Read after the walk."""
    axes = varying_axes(tags, out)
    rows = class_rows(tags, out, axes[0]) if len(axes) == 1 else None
    return None if rows is None else (axes[0], rows)


def _follow_or_divide(walk, node, out, literal: list[int], channels: np.ndarray, factor: int):
    """What to decide, once every coupling is known, about a size-derived reshape with
    literal factors of a channel axis: where the classes of its output change along one
    literal axis only, each position holding one class (the heads of a fused qkv's
    ``reshape(b, t, 3, heads, -1)``), that size follows them and the rest lie within
    classes; else the width of ``channels`` stays a multiple of ``factor``."""

    def decide():
        found = _rows_along_one_axis(walk.tags, out)
        if found is not None and found[0] in literal:
            walk.size(node, *found)
        else:
            walk.divisor(channels, factor)
    return decide


def _one_head(walk, node, k: int, x, out, literal: bool, follow: bool):
    """What to decide once every coupling is known about a split of a channel axis into
    ``(1, n)`` at axes ``k - 1, k``: if attention made the ``n`` channels one head, the 1
    is the head count and follows the heads (``n``, the head_dim, keeps its size); else it
    is a plain view, and a literal ``n`` follows the width (``follow``) or pins ``x``."""
    vec, pinned = walk.tags.axis_vector(out, k), walk.tags.unique(x)
    why = f"constant reshape size at {walk.describe(node)}"

    def decide():
        uf = walk.tags.uf
        roots = uf.find(vec)
        heads = uf.find(np.concatenate(walk.out.heads)) if walk.out.heads else roots[:0]
        if (roots == roots[0]).all() and roots[0] in heads:
            walk.size(node, k - 1, vec[:1])
        elif literal and follow:
            walk.size(node, k, vec)
        elif literal:
            walk.pin_channels(pinned, why)
    return decide


def _within_channels(tags, x, out, k: int) -> bool:
    """Whether axis ``k`` of ``out`` is a factor of channel axes of ``x``: in the row-major
    order both share, every axis of ``x`` whose place values it overlaps holds channels
    (a literal group count of ``(b, C, h, w) -> (b, G, -1)``, not the ``C`` of a
    ``(b, hw, C) -> (b, C, h, w)``)."""
    lo = prod(out.shape[k + 1:])
    hi = lo * out.shape[k]
    place = 1
    for j in reversed(range(x.dim())):
        width = place * x.shape[j]
        if x.shape[j] > 1 and place < hi and lo < width and not tags.carries(x, j):
            return False
        place = width
    return True


def _whole(tags, x, out, k: int) -> bool:
    """Whether axis ``k`` of ``out`` holds the channels of one axis of ``x``, all of them, in order."""
    vec = tags.axis_vector(out, k)
    return vec is not None and any(
        tags.carries(x, j) and np.array_equal(tags.axis_vector(x, j), vec) for j in range(x.dim())
        if x.shape[j] == len(vec))


class Squeeze(Move):
    """``squeeze``: dropping a channel axis that holds one channel fixes its width at one."""

    def check(self, walk, node, x, out, args, kwargs):
        if out.dim() < x.dim():
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            squeezed = range(x.dim()) if dims is None else [d % x.dim() for d in (
                dims if isinstance(dims, (tuple, list)) else [dims])]
            if any(x.shape[d] == 1 and walk.tags.carries(x, d) for d in squeezed):
                walk.pin(x, f"squeeze of a one-channel axis at {walk.describe(node)}")


class Chunk(Move):
    """``chunk``: equal relative parts of a channel axis (a multiple, cut by position)."""

    def check(self, walk, node, x, out, args, kwargs):
        dim = walk.argument(node, "dim", 2, 0)
        if walk.tags.carries(x, dim % x.dim()):
            walk.divisor(walk.tags.unique(x), walk.argument(node, "chunks", 1))
            walk.split_by_position(walk.tags.unique(x))


class Unbind(Move):
    """``unbind``: one value per position of ``dim``. Where the channels' classes vary
    along it once every coupling is known (csatv2's ``Linear(1, 3)`` unbound into q, k and
    v, which nothing couples), each value is a channel read on its own, so they are pinned;
    a qkv's ``(3, heads, ...)`` axis, whose q, k and v of a head attention makes one class,
    stays free."""

    def check(self, walk, node, x, out, args, kwargs):
        dim = walk.argument(node, "dim", 1, 0) % x.dim()
        if not walk.tags.carries(x, dim):
            return
        channels, why = walk.tags.unique(x), f"one value per channel unbound at {walk.describe(node)}"

        def decide():
            if dim in varying_axes(walk.tags, x):
                walk.pin_channels(channels, why)
        walk.later(decide)


class Split(Move):
    """``split``: literal sizes on a channel axis fix its width, so it is pinned."""

    def check(self, walk, node, x, out, args, kwargs):
        sizes = walk.node_argument(node, "split_size_or_sections", 1)
        if sizes is None:
            sizes = walk.node_argument(node, "split_size", 1)
        dim = walk.argument(node, "dim", 2, 0)
        if _is_literal(sizes) and walk.tags.carries(x, dim % x.dim()):
            walk.pin(x, f"constant split sizes on a channel axis at {walk.describe(node)}")


class Select(Move):
    """Indexing (``x[:, :16]``) and ``narrow``: a literal bound on a channel axis fixes its
    width, so the channels there are pinned; a bound computed from sizes cuts the axis by
    position (which channel lands where depends on the width), so it keeps its width."""

    def __init__(self, narrow: bool = False):
        super().__init__()
        self.narrow = narrow

    def _cuts(self, node, x) -> list[tuple[int, bool]]:
        """(axis, literal) for every axis the selection cuts."""
        if self.narrow:
            dim, start, length = (node.args[1:4] + (None,) * 3)[:3]
            if not isinstance(dim, int):
                return []
            return [(dim % x.dim(), _is_literal(start) and _is_literal(length))]
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(i is Ellipsis for i in index):
            at = index.index(Ellipsis)
            rest = sum(i is not None for i in index[at + 1:])
            index = index[:at] + (slice(None),) * (x.dim() - sum(i is not None for i in index[:at]) - rest) \
                + index[at + 1:]
        cuts, axis = [], 0
        for i in index:
            if i is None:               # a new axis consumes none of x's
                continue
            if not (isinstance(i, slice) and i == slice(None)):
                bounds = [i.start, i.stop, i.step] if isinstance(i, slice) else [i]
                cuts.append((axis, all(b is None or _is_literal(b) for b in bounds)))
            axis += 1
        return cuts

    def check(self, walk, node, x, out, args, kwargs):
        for axis, literal in self._cuts(node, x):
            if axis < x.dim() and walk.tags.carries(x, axis):
                if literal:
                    walk.pin(x, f"constant slice of a channel axis at {walk.describe(node)}")
                else:
                    walk.split_by_position(walk.tags.unique(x))


class Pad(Move):
    """Padding: positively homogeneous only when it pads with zeros (``value_at``: the
    position of the fill value among a function's arguments)."""

    channelwise = True

    def __init__(self, value_at: int = 3):
        super().__init__()
        self.value_at = value_at

    def homogeneous(self, node, module) -> bool:
        if module is not None:
            return getattr(module, "value", 0) == 0
        at = self.value_at
        value = node.args[at] if len(node.args) > at else node.kwargs.get("value", 0)
        return not value


class Concat(Rule):
    """``cat``: each part keeps its identities at its offset."""

    def propagate(self, walk, node, args, kwargs):
        parts = list(walk.argument(node, "tensors", 0))
        dim = walk.argument(node, "dim", 1, 0)
        tags = walk.tags
        ref = parts[0]
        dim %= ref.dim()
        vecs = [tags.axis_vector(p, dim) if p.shape[dim] else np.zeros(0, np.int64) for p in parts]
        for p, v in zip(parts, vecs, strict=True):
            if len(parts) > 1 and p.numel():
                walk.coupled(v if v is not None else tags.unique(p), "concat")
        if all(v is not None for v in vecs):
            shape = list(ref.shape)
            shape[dim] = sum(len(v) for v in vecs)
            return tags.structured(np.concatenate(vecs), shape, dim)
        return torch.cat(parts, dim)

    def homogeneous(self, node, module) -> bool:
        return True

    def stream(self, node, module):
        return "concat"

    def fresh(self, node, module):
        return True


class Spatial(Rule):
    """Pooling and interpolation: each channel on its own, along the spatial axes."""

    channelwise = True

    def propagate(self, walk, node, args, kwargs):
        x = args[0]
        tags = walk.tags
        shape = tensors_in(walk.real(node))[0].shape
        vec = tags.axis_vector(x, 1)
        if vec is None:
            if not bool((x == 0).all()):
                return walk.opaque(node, args, kwargs, reason="spatial op on unstructured channels "
                                                              f"{walk.describe(node)}")
            return tags.none(shape)
        out = tags.structured(vec, shape, 1)
        return tree_map(lambda v: out if isinstance(v, torch.Tensor) and v.shape == shape else
                        (tags.none(v.shape) if isinstance(v, torch.Tensor) else v), walk.real(node))

    def homogeneous(self, node, module) -> bool:
        return True

    def stream(self, node, module):
        return "spatial"


def _is_literal(v) -> bool:
    if isinstance(v, (list, tuple)):
        return bool(v) and all(_is_literal(u) for u in v)
    return isinstance(v, int) and not isinstance(v, bool)





class Metadata(Rule):
    """Reading a tensor's shape, dtype or device (``x.size()``, ``x.shape``): no values, so
    any tensor of the same shape answers it. It pins what it reads, as an unknown op does."""

    #: the attributes ``getattr(x, name)`` may read
    ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda"}

    def stream(self, node, module):
        if node.op == "call_function":      # getattr(x, name)
            return "shape" if len(node.args) == 2 and node.args[1] in self.ATTRIBUTES else None
        return "shape"
