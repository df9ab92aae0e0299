"""A growable union-find over integer channel identities, vectorised with numpy."""
from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over identities ``1..n`` (0 is reserved for "no channel")."""

    def __init__(self):
        self._parent = np.zeros(1, dtype=np.int64)
        self.size = 1
        self._flat = False      # every identity points at its root (after compress)

    def new(self, n: int) -> np.ndarray:
        """Allocate ``n`` fresh identities, each its own set."""
        start = self.size
        if start + n > len(self._parent):
            grown = np.empty(max(2 * len(self._parent), start + n), dtype=np.int64)
            grown[:start] = self._parent[:start]
            self._parent = grown
        ids = np.arange(start, start + n, dtype=np.int64)
        self._parent[start:start + n] = ids   # fresh roots keep a flat forest flat
        self.size = start + n
        return ids

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Roots of ``ids`` (any shape); 0 maps to 0."""
        p = self._parent
        r = p[ids]
        if self._flat:
            return r
        while True:
            rr = p[r]
            if (rr == r).all():
                return r
            r = rr

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of ``a[i]`` and ``b[i]`` for every ``i`` (zeros skipped).

        Vectorised: every root points at the smallest root it is merged with, and
        parents always have smaller indices, so the forest never forms a cycle.
        """
        keep = (a != 0) & (b != 0)
        a, b = a[keep], b[keep]
        self._flat = False
        while len(a):
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            ra, rb = ra[differ], rb[differ]
            np.minimum.at(self._parent, np.maximum(ra, rb), np.minimum(ra, rb))
            a, b = a[differ], b[differ]

    def copy(self) -> UnionFind:
        """An independent union-find with the same sets."""
        other = UnionFind()
        other._parent, other.size, other._flat = self._parent.copy(), self.size, self._flat
        return other

    def compress(self) -> None:
        """Point every identity straight at its root."""
        self._parent[: self.size] = self.find(np.arange(self.size))
        self._flat = True
