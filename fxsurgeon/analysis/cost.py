"""Exact cost model: parameters and multiply-accumulates, for any set of alive channels.

Each cost term is ``const * prod(alive positions of factor / divisor)``; a factor is a
tensor axis whose positions carry channels. With every channel alive the parameter
count equals ``sum(p.numel())`` and FLOPs are the multiply-accumulates of every conv,
linear and matmul (plus what FlopCounterMode measured inside opaque ops).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ..errors import FxSurgeonError
from ..layers.schemes import scheme_of
from .propagation import Term

METRICS = ("params", "flops")


def dimension_of(offsets: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Which dimension each global channel index belongs to (-1 for -1)."""
    return np.where(channels >= 0, np.searchsorted(offsets, np.maximum(channels, 0), side="right") - 1, -1)


class CostModel:
    """Evaluates cost terms against alive masks over all dimension channels.

    Held as arrays: every factor of every term is a run of one long array of global
    channel indices (-1: a position in no dimension), so a count is a few vector
    operations however many layers the model has."""

    def __init__(self, terms: list[Term], lookup, widths: list[int], names: list[str],
                 blockwise: frozenset[str] = frozenset()):
        self.names = names
        self.blockwise = blockwise      # layers whose S/R blocks the rewriter can split
        self.widths = widths
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.terms = terms
        self.const = np.array([t.const for t in terms], dtype=np.float64)
        self.metric = np.array([METRICS.index(t.metric) for t in terms], dtype=np.int64)
        factors = [(i, np.asarray(tags).ravel(), div) for i, t in enumerate(terms) for tags, div in t.factors]
        #: per factor: its term, divisor and length; per position: its factor and channel
        self.factor_term = np.array([i for i, _, _ in factors], dtype=np.int64)
        self.divisor = np.array([d for _, _, d in factors], dtype=np.float64)
        lengths = np.array([len(v) for _, v, _ in factors], dtype=np.int64)
        tags = np.concatenate([v for _, v, _ in factors]) if factors else np.zeros(0, np.int64)
        index = lookup(tags.astype(np.int64)) if len(tags) else np.zeros(0, np.int64)
        factor = np.repeat(np.arange(len(factors)), lengths)
        held = index >= 0
        self.fixed = np.bincount(factor[~held], minlength=len(factors)).astype(np.float64)
        self.index, self.factor = index[held], factor[held]
        self.full = self.fixed + np.bincount(self.factor, minlength=len(factors))
        #: terms with two factors whose S/R blocks ``cr`` drops: (term, output factor, input factor)
        pairs = [(i, (self.factor_term == i).nonzero()[0]) for i, t in enumerate(terms)
                 if len(t.factors) == 2 and t.node in blockwise]
        self._blocks = tuple(np.array(column, np.int64).reshape(-1) for column in
                             ([i for i, _ in pairs], [f[0] for _, f in pairs], [f[1] for _, f in pairs]))
        self._rep: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

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

    def _held(self, mask: np.ndarray) -> np.ndarray:
        """Per factor: how many of its channel positions ``mask`` keeps."""
        return np.bincount(self.factor, weights=mask[self.index], minlength=len(self.fixed))

    def _terms(self, sizes: np.ndarray) -> np.ndarray:
        """Per term: ``const * prod(factor sizes)``, multiplied in factor order."""
        v = self.const.copy()
        np.multiply.at(v, self.factor_term, sizes)
        return v

    def count(self, metric: str, flat: np.ndarray | None, by: str | None = None):
        """Total cost, or a dict of it per layer (``by="layer"``) or parameter."""
        if metric not in METRICS:
            raise FxSurgeonError(f"unknown metric {metric!r}: use one of {METRICS}")
        sizes = self.full if flat is None else self.fixed + self._held(flat)
        return self._total(self._terms(sizes / self.divisor), metric, by)

    def _total(self, values: np.ndarray, metric: str, by: str | None = None):
        ours = self.metric == METRICS.index(metric)
        if not by:          # summed in term order, as a running sum
            return _exact(float(np.cumsum(values[ours])[-1])) if ours.any() else 0
        per: dict[str, float] = defaultdict(float)
        for i, v in zip(np.nonzero(ours)[0].tolist(), values[ours].tolist(), strict=True):
            key = self.terms[i].node if by == "layer" else self.terms[i].param if by == "param" else None
            if key:
                per[key] += v
        return {k: _exact(v) for k, v in per.items()}

    @property
    def rep(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(factor, dimension, positions per channel)`` for every dimension a factor
        holds: the count where it holds every channel of it equally often, else 0 (it
        cannot grow new channels there). Computed when a plan first asks."""
        if self._rep is None:
            total = int(self.offsets[-1])
            key, count = np.unique(self.factor * max(total, 1) + self.index, return_counts=True)
            factor, channel = key // max(total, 1), key % max(total, 1)
            dim = dimension_of(self.offsets, channel)
            pair, first = np.unique(factor * len(self.widths) + dim, return_index=True)
            lo, hi = np.minimum.reduceat(count, first), np.maximum.reduceat(count, first)
            n = np.diff(np.append(first, len(count)))
            d = pair % len(self.widths)
            whole = (lo == hi) & (n == np.asarray(self.widths, np.int64)[d])
            self._rep = pair // len(self.widths), d, np.where(whole, lo, 0)
        return self._rep

    def growable(self) -> np.ndarray:
        """Per dimension: whether every axis that holds it holds all of its channels
        (only then can it grow new ones)."""
        factor, dim, rep = self.rep
        partial = np.array([t.partial for t in self.terms], bool)[self.factor_term[factor]] \
            if len(factor) else np.zeros(0, bool)
        stuck = np.bincount(dim[(rep == 0) & ~partial], minlength=len(self.widths))
        return stuck == 0

    def count_plan(self, metric: str, kept: np.ndarray, partitioned: np.ndarray, added: np.ndarray,
                   scheme: str) -> float:
        """Cost with only ``kept`` channels plus ``added[d]`` new ones per dimension.

        A scheme without cross blocks (``"cr"``) drops those between survivors and new
        channels from the weights and MACs of every dense conv or linear module (fixed
        channels feed and read both); every other scheme and layer computes the dense layer.
        """
        return self.pricer(kept, partitioned, scheme)(metric, added)

    def pricer(self, kept: np.ndarray, partitioned: np.ndarray,
               scheme: str) -> Callable[[str, np.ndarray], float]:
        """:meth:`count_plan` for these ``kept`` and ``partitioned`` channels, as a function of
        the metric and ``added``: what the channels hold is counted once, for a search that
        prices many widths (a 1.1B Llama's NR event priced 150, at 25 ms each). With nothing
        added (no R channels, no cross blocks) it is :meth:`count`, and counts nothing more."""
        t, o, i = self._blocks
        crosses = scheme_of(scheme).crosses
        held: list[np.ndarray] = []         # S and the rest per factor, at the first price that adds

        def price(metric: str, added: np.ndarray) -> float:
            if not np.any(added):
                return self.count(metric, kept)
            if not held:
                held.extend([self._held(kept & partitioned) / self.divisor,
                             (self.fixed + self._held(kept & ~partitioned)) / self.divisor])
            (s, f), (factor, dim, rep) = held, self.rep
            r = np.bincount(factor, weights=rep * np.asarray(added, np.float64)[dim],
                            minlength=len(self.fixed)) / self.divisor
            values = self._terms(s + r + f)
            if not crosses:
                values[t] -= self.const[t] * (s[o] * r[i] + r[o] * s[i])
            return self._total(values, metric)
        return price


def _exact(v: float):
    r = round(v)
    return int(r) if abs(v - r) < 1e-6 * max(1.0, abs(v)) else v
