"""Pruning to a budget: keep the most important channels while the cost fits.

The channels of every prunable dimension are ranked by their scores (see
:mod:`fxsurgeon.importance`). ``ranking="global"`` ranks all of them together, each
dimension's scores divided by its largest (so layers of different scales compare); keeping
the top ``t`` of that order keeps, in each dimension, those of its channels among them.
``ranking="per-dimension"`` keeps the same share ``t / N`` of every dimension's
candidates; ``ranking="uniform"`` the same share of every dimension's width, so that
dimensions of one width keep one width (each layer's MLP alike: what a model config with
one ``intermediate_size`` can say), as far as their dead channels allow. Every way, a
dimension keeps at least one channel per producer (a layer cannot have zero outputs) and a
multiple of its step (its own constraint and ``round_to``), rounding down. The cost never
falls as ``t`` grows, so a bisection finds the largest ``t`` whose cost fits. With a
global ranking, the budget left is then spent down the same order: a dimension whose next
step still fits takes it, until no dimension's does (with widths in steps, the first step
that does not fit can be a costly layer's while cheaper ones still fit: SqueezeNet at half
its FLOPs and ``round_to=8`` was left up to 6 % under its budget).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import FxSurgeonError

RANKINGS = ("global", "per-dimension", "uniform")


@dataclass
class Prunable:
    """One dimension's candidates for pruning to a budget."""

    name: str
    candidates: np.ndarray      # channel indices that may stay (the dead are gone already)
    scores: np.ndarray          # importance of each candidate
    forced: np.ndarray          # candidates that stay whatever the budget (one per producer)
    step: int                   # kept counts are multiples of this
    slots: np.ndarray | None = None     # a grouped conv's block of each candidate: every
    groups: int = 1                     # block keeps as many (the candidates do too)
    width: int = 0                      # the dimension's width, before its dead went
    _kept: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def keep(self, k: int) -> np.ndarray:
        """The ``k`` most important candidates (rounded as the dimension requires), forced
        ones first; of a grouped dimension, the ``k / groups`` most important of each group.
        (Made once per ``k``: spending a budget asks for every dimension's at each step.)"""
        if k not in self._kept:
            self._kept[k] = self._keep(k)
        return self._kept[k]

    def _keep(self, k: int) -> np.ndarray:
        if self.slots is None:
            return self._top(self.candidates, self.scores, self.forced, k, self.step)
        q = self.step // self.groups
        forced = np.bincount(self.slots[np.searchsorted(self.candidates, self.forced)], minlength=self.groups)
        per = max(k // self.step * q, math.ceil(max(forced.max(initial=0), 1) / q) * q)
        return np.sort(np.concatenate([
            self._top(self.candidates[self.slots == g], self.scores[self.slots == g],
                      np.intersect1d(self.forced, self.candidates[self.slots == g]), per, 1)
            for g in range(self.groups)]))

    @staticmethod
    def _top(candidates: np.ndarray, scores: np.ndarray, forced: np.ndarray, k: int, step: int) -> np.ndarray:
        least = math.ceil(max(len(forced), 1) / step) * step
        k = min(len(candidates), max(least, k // step * step))
        rest = np.setdiff1d(candidates, forced, assume_unique=True)
        order = np.argsort(-scores[np.searchsorted(candidates, rest)], kind="stable")
        return np.sort(np.concatenate([forced, rest[order[:max(k - len(forced), 0)]]]))


def choose(dims: list[Prunable], ranking: str, cost: Callable[[dict[str, np.ndarray]], float],
           budget: float) -> dict[str, np.ndarray]:
    """Survivors per dimension: the most channels, by importance, whose ``cost`` fits ``budget``."""
    if ranking not in RANKINGS:
        raise FxSurgeonError(f"ranking must be one of {RANKINGS}, not {ranking!r}")
    if ranking == "global":
        normalised = [d.scores / d.scores.max() if d.scores.max() > 0 else np.zeros_like(d.scores)
                      for d in dims]
        owner = np.concatenate([np.full(len(d.candidates), i) for i, d in enumerate(dims)]
                               or [np.zeros(0, int)])
        flat = np.concatenate(normalised or [np.zeros(0)])
        order = owner[np.argsort(-flat, kind="stable")]
        total = len(order)

        def counts(t: int) -> list[int]:
            return np.bincount(order[:t], minlength=len(dims)).tolist()
    elif ranking == "per-dimension":
        total = max((len(d.candidates) for d in dims), default=0)

        def counts(t: int) -> list[int]:
            return [math.ceil(t * len(d.candidates) / total) for d in dims]
    else:
        total = max((d.width for d in dims), default=0)

        def counts(t: int) -> list[int]:
            return [min(len(d.candidates), math.ceil(t * d.width / total)) for d in dims]

    def survivors(ks: list[int]) -> dict[str, np.ndarray]:
        return {d.name: d.keep(k) for d, k in zip(dims, ks, strict=True)}

    if cost(survivors(counts(0))) > budget:
        raise FxSurgeonError(f"impossible budget: keeping one channel per layer still costs "
                             f"{cost(survivors(counts(0))):g}, above {budget:g}")
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(survivors(counts(mid))) <= budget else (lo, mid - 1)
    ks = counts(lo)
    if ranking == "global":
        ks = _spend(dims, ks, order[lo:], lambda ks: cost(survivors(ks)) <= budget)
    return survivors(ks)


def _spend(dims: list[Prunable], ks: list[int], order: np.ndarray,
           fits: Callable[[list[int]], bool]) -> list[int]:
    """``ks`` grown down ``order`` (the dimension of each next channel by importance): a
    dimension takes its next channel where what it keeps then still ``fits``. A step that
    does not fit never will (the cost only grows with the others), so its dimension closes."""
    kept = [len(d.keep(k)) for d, k in zip(dims, ks, strict=True)]
    closed = np.zeros(len(dims), bool)
    for i in order.tolist():
        if closed[i]:
            continue
        trial = ks.copy()
        trial[i] += 1
        more = len(dims[i].keep(trial[i]))
        if more != kept[i] and not fits(trial):
            closed[i] = True
            continue
        ks, kept[i] = trial, more
    return ks
