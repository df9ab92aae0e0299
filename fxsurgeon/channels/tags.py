"""Tag tensors: channel identities carried through the real ops in place of values.

A *tag tensor* has the shape of the value it stands for; each entry is the identity of
the channel it holds (0: no channel). Identities live in a :class:`UnionFind`, whose
sets are the coupled channel *classes*. Most tag tensors vary along one axis only (a
vector expanded to the value's shape); :class:`Tags` keeps that vector at hand, so the
common cases never look at every element.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .unionfind import UnionFind


def prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


class Tags:
    """Makes and reads tag tensors over one union-find of identities."""

    def __init__(self, uf: UnionFind):
        self.uf = uf
        self._vec: dict[int, tuple[torch.Tensor, dict[int, np.ndarray | None]]] = {}
        self._unique: dict[int, tuple[torch.Tensor, np.ndarray]] = {}

    # ---- making --------------------------------------------------------------------
    def fresh(self, shape, axis: int, vec: np.ndarray | None = None) -> torch.Tensor:
        """Fresh identities along ``axis`` (or the given ``vec``), constant along the others."""
        shape = tuple(shape)
        axis %= len(shape)
        vec = self.uf.new(shape[axis]) if vec is None else np.asarray(vec, dtype=np.int64)
        return self.structured(vec, shape, axis)

    def fresh_elements(self, shape, ids: np.ndarray | None = None) -> torch.Tensor:
        """A fresh identity for every element (they are all distinct), or the given ``ids``."""
        ids = self.uf.new(prod(shape)) if ids is None else np.asarray(ids, dtype=np.int64)
        t = torch.from_numpy(ids).view(tuple(shape))
        self._unique[id(t)] = (t, ids)
        return t

    @staticmethod
    def none(shape) -> torch.Tensor:
        """A tag tensor that holds no channel."""
        return torch.zeros((), dtype=torch.int64).expand(tuple(shape))

    def structured(self, vec: np.ndarray, shape, axis: int) -> torch.Tensor:
        """``vec`` along ``axis``, expanded (no copy) to ``shape``; remembered as structured."""
        view = [1] * len(shape)
        view[axis] = len(vec)
        t = torch.from_numpy(np.ascontiguousarray(vec)).view(view).expand(tuple(shape))
        self._vec[id(t)] = (t, {axis % len(shape): vec})
        return t

    # ---- reading -------------------------------------------------------------------
    def axis_vector(self, t: torch.Tensor, axis: int) -> np.ndarray | None:
        """The identities along ``axis`` if they are the same classes at every other index."""
        if t.dim() == 0:
            return None
        axis %= t.dim()
        hit = self._vec.get(id(t))
        if hit is not None and hit[0] is t and axis in hit[1]:
            return hit[1][axis]
        s = self.structure(t, t.dim())
        if s is not None and s[0] == axis:
            return s[1]
        m = t.movedim(axis, 0).reshape(t.shape[axis], -1)
        if m.shape[1] == 0:
            vec = None
        elif bool((m == m[:, :1]).all()):
            vec = m[:, 0].numpy().copy()
        else:       # zeros (no channel: padding) are not another class
            rep = m.amax(1).numpy().copy()
            roots, m = self.uf.find(m.numpy()), m.numpy()
            vec = rep if ((m == 0) | (roots == self.uf.find(rep)[:, None])).all() else None
        if hit is None or hit[0] is not t:
            hit = (t, {})
            self._vec[id(t)] = hit
        hit[1][axis] = vec
        return vec

    def carries(self, t: torch.Tensor, axis: int) -> bool:
        """Whether ``axis`` of ``t`` holds channels: they vary along it, or it is the axis
        of a tensor with one channel."""
        axis %= max(t.dim(), 1)
        if self.varies_along(t, axis):
            return True
        st = self.structure(t, t.dim()) if t.dim() else None
        return st is not None and st[0] == axis and bool((st[1] != 0).any())

    @staticmethod
    def _compact(t: torch.Tensor) -> torch.Tensor:
        """``t`` cut to one position along every axis it is constant along (a tag tensor
        copied out of a view varies along its channel axes only): the same identities
        in the same pattern, at a fraction of the size (a view: nothing is kept)."""
        small = t
        for a in range(t.dim()):
            if small.shape[a] > 1 and (small.stride(a) == 0 or bool((small == small.narrow(a, 0, 1)).all())):
                small = small.narrow(a, 0, 1)
        return small

    def varies_along(self, t: torch.Tensor, axis: int, scratch: dict | None = None) -> bool:
        """Whether the channel classes in ``t`` change along ``axis`` (zeros, no channel, do
        not count: padding does not mix channels). ``scratch``, a dict a caller keeps for
        one ``t``, lets calls for several axes compact it and find its classes once."""
        if t.dim() == 0 or t.shape[axis] <= 1 or t.stride(axis) == 0:
            return False
        scratch = {} if scratch is None else scratch
        if "small" not in scratch:
            scratch["small"] = self._compact(t)
        small = scratch["small"]
        if small.shape[axis] == 1:
            return False
        if "classes" not in scratch:
            scratch["classes"] = torch.from_numpy(self.uf.find(small.numpy()))
        classes = scratch["classes"]
        high = classes.amax(axis)
        low = torch.where(classes == 0, torch.iinfo(classes.dtype).max, classes).amin(axis)
        return bool(((high != 0) & (low != high)).any())

    def carrying_axes(self, t: torch.Tensor) -> list[int]:
        """Every axis of ``t`` that :meth:`carries` channels, reading its classes once."""
        scratch: dict = {}
        st = self.structure(t, t.dim()) if t.dim() else None
        one = st[0] if st is not None and bool((st[1] != 0).any()) else None
        return [a for a in range(t.dim()) if self.varies_along(t, a, scratch) or a == one]

    def unique(self, t: torch.Tensor) -> np.ndarray:
        """The distinct identities in ``t`` (no zeros), cached per tag tensor."""
        hit = self._unique.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        if t.numel() and not any(t.stride(a) and t.shape[a] > 1 for a in range(t.dim())):
            tags = np.array([int(t[(0,) * t.dim()])])       # one value, expanded
        else:
            s = self.structure(t, t.dim())
            tags = np.unique(s[1]) if s is not None else torch.unique(self._compact(t)).numpy()
        tags = tags[tags != 0]
        self._unique[id(t)] = (t, tags)
        return tags

    def structure(self, t: torch.Tensor, nd: int):
        """(axis in broadcast coordinates, vector) of a tag tensor that varies along one axis.

        Known from the cache, or read off the strides: an expanded vector, however
        permuted, has stride 0 on every axis of size > 1 but one.
        """
        hit = self._vec.get(id(t))
        found = [(len(v), a, v) for a, v in hit[1].items() if v is not None] \
            if hit is not None and hit[0] is t else []
        if not found:
            if not t.numel():           # an empty tensor (a cut of nothing) holds no channels
                return None
            moving = [a for a in range(t.dim()) if t.shape[a] > 1 and t.stride(a) != 0]
            if len(moving) != 1:
                return None
            a = moving[0]
            vec = t[tuple(slice(None) if k == a else 0 for k in range(t.dim()))].numpy()
            found = [(len(vec), a, vec)]
        _, axis, vec = max(found, key=lambda f: f[0])
        return axis + nd - t.dim(), vec

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        """Make ``a[i]`` and ``b[i]`` one class, for every ``i``."""
        self.uf.union(np.asarray(a).ravel(), np.asarray(b).ravel())
