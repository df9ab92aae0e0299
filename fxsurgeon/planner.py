"""Plan the widths of the rejuvenated (or pruned) network: Step 8 of the paper's Algorithm 1.

Dead channels go; every free dimension then grows by one shared expansion rate α,
``new width = α · survivors`` rounded down to the dimension's allowed multiple, so that
the cost, counted the way the scheme computes it, comes as close to ``target ·
original cost`` as integer widths allow without exceeding it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .cost import METRICS
from .errors import FxSurgeonError, require
from .fixed import Fixed, fixed_names
from .graph import ChannelGraph
from .liveliness import channel_scales
from .report import human

SCHEMES = ("nr", "cr", "ca", "prune")


@dataclass
class DimPlan:
    """What happens to one dimension: which channels survive and how many are added."""

    name: str
    width: int
    survivors: np.ndarray      # old channel indices kept, in order
    new_width: int
    pinned: bool = False
    grows: bool = False        # whether α widens it (free, and its layers allow it)
    note: str = ""

    @property
    def added(self) -> int:
        """New (R) channels appended after the survivors."""
        return self.new_width - len(self.survivors)


@dataclass
class Plan:
    """A printable plan: per dimension the survivors and new width, α and the costs."""

    metric: str
    scheme: str
    target: float | None
    alpha: float
    original: float
    budget: float | None
    predicted: float
    dims: dict[str, DimPlan] = field(default_factory=dict)
    round_to: int = 1
    graph_token: int | None = None      # the ChannelGraph it was made for

    @property
    def miss(self) -> float | None:
        """How far below the budget the plan lands, relative to the budget."""
        return None if self.budget is None else (self.budget - self.predicted) / self.budget

    def __str__(self) -> str:
        rows = [(d.name, str(d.width), str(len(d.survivors)), str(d.new_width), str(d.added),
                 "pinned" if d.pinned else d.note) for d in self.dims.values()]
        header = ("dimension", "width", "alive", "new width", "added", "note")
        w = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in [header, *rows]]
        goal = "remove the dead only" if self.budget is None else \
            f"target {self.target:g} x {human(self.original)} = {human(self.budget)}"
        lines += ["", f"scheme {self.scheme}, metric {self.metric}: {goal}",
                  f"alpha = {self.alpha:.4f}; predicted {self.metric} {human(self.predicted)}"
                  + ("" if self.miss is None else f" ({self.miss:.3%} under the budget)")]
        return "\n".join(lines)


def _multiple(d, round_to: int) -> int:
    return math.lcm(d.multiple_of, round_to)


def _keeps_width(d) -> str | None:
    """Why a free dimension can neither shrink nor grow yet, if it cannot."""
    if d.split_by_position:
        return "split by position (chunk)"   # would send channels to other branches
    if d.grouped:
        return "grouped convolution"         # not rewritten yet
    return None


def _cannot_grow(d, growable: bool) -> str | None:
    """Why a free dimension can lose dead channels but not gain new ones, if so."""
    if d.repeated:
        return "a producer repeats its channels (depthwise multiplier)"
    if not growable:
        return "held in part by some axis"
    return None


def _keep(graph: ChannelGraph, d, mask: np.ndarray) -> tuple[np.ndarray, str]:
    """Survivors of a free dimension. Every producer keeps at least one channel (a
    layer cannot have zero outputs), then the survivors are padded up to a multiple of
    the dimension's own constraint (groups, shuffles); both take the dead channels
    whose scales are largest. The original width is such a multiple, so this fits."""
    score = channel_scales(graph, d)
    keep = mask.copy()
    notes = ["all channels dead: keeps the minimum"] if not mask.any() else []
    for member in d.members:
        own = np.unique(member.channels)
        if member.role == "out" and not keep[own].any():
            keep[own[np.argmax(score[own])]] = True
    if not notes and keep.sum() > mask.sum():
        notes.append(f"keeps {int(keep.sum() - mask.sum())} dead channel(s): every producer keeps one")
    m = d.multiple_of
    short = max(m, -(-int(keep.sum()) // m) * m) - int(keep.sum())
    if short:
        dead = np.nonzero(~keep)[0]
        keep[dead[np.argsort(-score[dead], kind="stable")][:short]] = True
        notes.append(f"keeps {short} dead channel(s) for a multiple of {m}")
    return np.nonzero(keep)[0], "; ".join(notes)


def plan(graph: ChannelGraph, alive: dict[str, np.ndarray] | None = None, metric: str = "params",
         target: float | None = 1.0, scheme: str = "nr", round_to: int = 1,
         alpha: float | None = None, max_target: float = 100.0, fixed: Fixed = None) -> Plan:
    """Remove the dead channels and find the shared expansion α for ``target · cost``.

    ``alive`` maps free dimension names to bool masks (missing: all alive), as
    :func:`fxsurgeon.liveliness` returns. Widths always respect the graph's own
    multiples (groups, shuffles); widths that grow are multiples of ``round_to`` too.
    ``alpha`` fixes the expansion instead of searching it (the budget is then only
    reported, not enforced). ``target=None`` (or ``scheme="prune"``) only
    removes the dead. ``fixed`` (dimension names, a predicate on a dimension, or
    ``"trunk"``: see :mod:`fxsurgeon.fixed`) keeps those free dimensions as they are:
    every channel, dead or alive, and no new one. Raises :class:`FxSurgeonError` when
    the budget is impossible, and for a ``target`` above ``max_target`` (a budget that
    large is more likely a typo).
    """
    if scheme not in SCHEMES:
        raise FxSurgeonError(f"unknown scheme {scheme!r}: use one of {SCHEMES}")
    if metric not in METRICS:
        raise FxSurgeonError(f"unknown metric {metric!r}: use one of {METRICS}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise FxSurgeonError(f"round_to must be a positive integer, got {round_to!r}")
    if target is not None and scheme != "prune":
        require("target", target, lambda v: v > 0, "a finite number above 0 (of the original cost)")
        if target > max_target:
            raise FxSurgeonError(f"target {target:g} would make the network {target:g}x its cost; "
                                 f"pass max_target={target:g} (or more) if you mean it")
    if graph.propagation.generations and scheme in ("nr", "ca"):
        raise FxSurgeonError(f"this network has layers split by an earlier cr rewrite "
                             f"({next(iter(graph.propagation.generations))}, ...): plan it with "
                             f"scheme 'cr' (a new generation) or 'prune', not {scheme!r}")
    alive = alive or {}
    _check_masks(graph, alive)
    kept_as_is = fixed_names(graph, fixed)
    cost = graph.cost
    growable = cost.growable()
    # channels of dimensions that grow split into survivors and new ones (S and R); all
    # others (pinned, or free but kept at their width) feed and read both halves
    partitioned = np.zeros(int(cost.offsets[-1]), bool)
    kept = np.ones_like(partitioned)
    base, step, dims = [], [], {}
    for i, d in enumerate(graph.dims):
        sl = slice(cost.offsets[i], cost.offsets[i + 1])
        if not d.free:
            dims[d.name] = DimPlan(d.name, d.width, np.arange(d.width), d.width, pinned=True)
            base.append(0)
            step.append(0)
            continue
        mask = np.asarray(alive.get(d.name, np.ones(d.width, bool)), bool)
        whole = "fixed" if d.name in kept_as_is else _keeps_width(d)
        if whole:
            survivors, note = np.arange(d.width), f"{whole}: keeps its width"
        else:
            survivors, note = _keep(graph, d, mask)
        kept[sl] = False
        kept[sl.start + survivors] = True
        stuck = whole or _cannot_grow(d, growable[i])
        if stuck and not whole:
            note = note or f"{stuck}: does not grow"
        dims[d.name] = DimPlan(d.name, d.width, survivors, len(survivors), grows=not stuck, note=note)
        base.append(len(survivors))
        step.append(0 if stuck else _multiple(d, round_to))
        partitioned[sl] = not stuck
    base_a, step_a = np.array(base), np.array(step)

    def widths(alpha: float) -> np.ndarray:
        grown = np.where(step_a > 0, np.floor(alpha * base_a / np.maximum(step_a, 1) + 1e-9)
                         * step_a, base_a)
        return np.maximum(grown, base_a).astype(np.int64)

    def cost_at(alpha: float) -> float:
        return cost.count_plan(metric, kept, partitioned, widths(alpha) - base_a, scheme)

    original = graph.count(metric)
    budget = None if scheme == "prune" or target is None else target * original
    if alpha is not None:
        if alpha < 1 or scheme == "prune":
            raise FxSurgeonError(f"alpha must be at least 1 and needs a growing scheme, got "
                                 f"{alpha} with {scheme!r}")
    elif budget is None:
        alpha = 1.0
    else:
        if cost_at(1.0) > budget:
            raise FxSurgeonError(
                f"impossible budget: without its dead channels the model still costs "
                f"{human(cost_at(1.0))} {metric} under scheme {scheme!r}, above the target "
                f"{target:g} x {human(original)} = {human(budget)}; raise the target or let "
                f"more channels die first")
        alpha = _largest_alpha(cost_at, budget) if (step_a > 0).any() else 1.0
    for dp, w, st in zip(dims.values(), widths(alpha), step_a, strict=True):
        if dp.pinned:
            continue
        dp.new_width = int(w)
        if st and w % st and round_to > 1:
            dp.note = dp.note or f"round_to {round_to} not reached without exceeding the budget"
    return Plan(metric, scheme, target, alpha, original, budget, cost_at(alpha), dims, round_to, graph.token)


def _check_masks(graph: ChannelGraph, alive: dict) -> None:
    """Alive masks name dimensions of ``graph``, have their widths, and kill nothing pinned."""
    for name, mask in alive.items():
        try:
            d = graph[name]
        except KeyError:
            raise FxSurgeonError(f"alive mask for {name!r}, which is not a dimension of this graph") from None
        mask = np.asarray(mask)
        if mask.shape != (d.width,):
            raise FxSurgeonError(f"alive mask for {name!r} has shape {mask.shape}, "
                                 f"the dimension has width {d.width}")
        if not d.free and not mask.all():
            raise FxSurgeonError(f"alive mask calls channels of {name!r} dead, but it is pinned "
                                 f"({d.pinned}): its channels cannot be removed")


def _largest_alpha(cost_at, budget: float) -> float:
    """The largest α whose widths fit the budget, by doubling then bisection (cost is a
    non-decreasing step function of α)."""
    lo, hi = 1.0, 2.0
    while cost_at(hi) <= budget:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise FxSurgeonError("the budget never binds: the cost does not grow with α")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost_at(mid) <= budget else (lo, mid)
    return lo


def next_breakpoint(plan_: Plan, graph: ChannelGraph) -> float:
    """The smallest α above the plan's at which some growing dimension gains a step."""
    best = math.inf
    for d in graph.dims:
        dp = plan_.dims[d.name]
        if dp.grows:
            m, s = _multiple(d, plan_.round_to), len(dp.survivors)
            best = min(best, (math.floor(plan_.alpha * s / m + 1e-9) + 1) * m / s)
    return best
