"""Exact cost model: parameters and multiply-accumulates, for any set of alive channels.

Each cost term is ``const * prod(alive positions of factor / divisor)``; a factor is a
tensor axis whose positions carry channels. With every channel alive the parameter
count equals ``sum(p.numel())`` and FLOPs are the multiply-accumulates of every conv,
linear and matmul (plus what FlopCounterMode measured inside opaque ops).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .errors import FxSurgeonError
from .propagation import Term

METRICS = ("params", "flops")


def dimension_of(offsets: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Which dimension each global channel index belongs to (-1 for -1)."""
    return np.where(channels >= 0, np.searchsorted(offsets, np.maximum(channels, 0), side="right") - 1, -1)


class _Factor:
    """One sliced axis of a cost term: fixed positions plus positions of dimension channels."""

    __slots__ = ("fixed", "index", "divisor", "_offsets", "_rep")

    def __init__(self, index: np.ndarray, divisor: int, offsets: np.ndarray):
        self.fixed = int((index < 0).sum())
        self.index = index[index >= 0]
        self.divisor = divisor
        self._offsets = offsets
        self._rep: dict[int, int] | None = None

    @property
    def rep(self) -> dict[int, int]:
        """Positions per channel of every dimension this axis holds completely; a
        dimension it holds only in part (rep 0) cannot grow new channels here. Computed
        when a plan first asks (counting needs none of it)."""
        if self._rep is None:
            offsets, dims = self._offsets, dimension_of(self._offsets, self.index)
            self._rep = {}
            for d in np.unique(dims).tolist():
                counts = np.bincount(self.index[dims == d] - offsets[d],
                                     minlength=int(offsets[d + 1] - offsets[d]))
                self._rep[d] = int(counts[0]) if (counts == counts[0]).all() else 0
        return self._rep

    def size(self, alive: np.ndarray | None) -> float:
        n = self.fixed + (len(self.index) if alive is None else int(alive[self.index].sum()))
        return n / self.divisor

    def parts(self, kept: np.ndarray, partitioned: np.ndarray, added: np.ndarray
              ) -> tuple[float, float, float]:
        """(survivors, added, fixed) positions: kept channels of growing dimensions, new
        channels, and everything in no partition (other dimensions, no dimension)."""
        k = kept[self.index]
        s = int((k & partitioned[self.index]).sum())
        f = self.fixed + int((k & ~partitioned[self.index]).sum())
        r = sum(rep * int(added[d]) for d, rep in self.rep.items())
        return s / self.divisor, r / self.divisor, f / self.divisor


class CostModel:
    """Evaluates cost terms against alive masks over all dimension channels."""

    def __init__(self, terms: list[Term], lookup, widths: list[int], names: list[str],
                 blockwise: frozenset[str] = frozenset()):
        self.names = names
        self.blockwise = blockwise      # layers whose S/R blocks the rewriter can split
        self.widths = widths
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.terms = [(t, [_Factor(lookup(tags), div, self.offsets) for tags, div in t.factors])
                      for t in terms]

    def flat_mask(self, alive: dict | None) -> np.ndarray | None:
        """One boolean vector over all channels of all dimensions (None: all alive)."""
        if not alive:
            return None
        flat = np.ones(int(self.offsets[-1]), dtype=bool)
        index = {n: i for i, n in enumerate(self.names)}
        for name, mask in alive.items():
            if name not in index:
                raise FxSurgeonError(f"alive mask for unknown dimension {name!r}")
            i = index[name]
            m = np.asarray(mask, dtype=bool).reshape(-1)
            if len(m) != self.widths[i]:
                raise FxSurgeonError(f"alive mask for {name!r} has {len(m)} entries, "
                                     f"the dimension has width {self.widths[i]}")
            flat[self.offsets[i]:self.offsets[i + 1]] = m
        return flat

    def count(self, metric: str, flat: np.ndarray | None, by: str | None = None):
        """Total cost, or a dict of it per layer (``by="layer"``) or parameter."""
        if metric not in METRICS:
            raise FxSurgeonError(f"unknown metric {metric!r}: use one of {METRICS}")
        per: dict[str, float] = defaultdict(float)
        total = 0.0
        for term, factors in self.terms:
            if term.metric != metric:
                continue
            v = term.const
            for f in factors:
                v *= f.size(flat)
            total += v
            if by == "layer":
                per[term.node] += v
            elif by == "param" and term.param:
                per[term.param] += v
        return {k: _exact(v) for k, v in per.items()} if by else _exact(total)

    def growable(self) -> np.ndarray:
        """Per dimension: whether every axis that holds it holds all of its channels
        (only then can it grow new ones)."""
        ok = np.ones(len(self.widths), bool)
        for term, factors in self.terms:
            if term.partial:
                continue
            for f in factors:
                for d, rep in f.rep.items():
                    ok[d] &= rep > 0
        return ok

    def count_plan(self, metric: str, kept: np.ndarray, partitioned: np.ndarray, added: np.ndarray,
                   scheme: str) -> float:
        """Cost with only ``kept`` channels plus ``added[d]`` new ones per dimension.

        ``scheme="cr"`` drops the cross blocks between survivors and new channels of
        the weights and MACs of every dense conv or linear module (fixed channels feed
        and read both); every other scheme and layer computes the dense layer.
        """
        total = 0.0
        for term, factors in self.terms:
            if term.metric != metric:
                continue
            parts = [f.parts(kept, partitioned, added) for f in factors]
            v = term.const
            for s, r, f in parts:
                v *= s + r + f
            if scheme == "cr" and len(parts) == 2 and term.node in self.blockwise:
                (s_o, r_o, _), (s_i, r_i, _) = parts
                v -= term.const * (s_o * r_i + r_o * s_i)
            total += v
        return _exact(total)


def _exact(v: float):
    r = round(v)
    return int(r) if abs(v - r) < 1e-6 * max(1.0, abs(v)) else v
