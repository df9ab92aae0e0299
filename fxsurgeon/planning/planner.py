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

from ..analysis.cost import METRICS
from ..analysis.graph import ChannelGraph
from ..analysis.report import human
from ..errors import FxSurgeonError, require
from ..judging import importance
from ..judging.fixed import Fixed, fixed_names
from ..judging.liveliness import channel_scales
from ..judging.modulated import carried
from ..layers.schemes import Scheme, scheme_of
from .budget import Prunable, choose

#: the largest expansion α a plan takes or searches: past it the budget never binds
MAX_ALPHA = 1e6

#: the largest budget (times the original cost) a plan takes unless told otherwise
MAX_TARGET = 100.0


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
    #: channels a budget removed although alive, per dimension: the rewrite silences them
    #: (output zero) where the dead keep the constant they emit
    silenced: dict[str, np.ndarray] = field(default_factory=dict)
    #: how grown widths meet ``round_to`` (see :func:`plan`)
    rounding: str = "nearest"
    #: channels added past α's rounded width to spend what rounding left, per dimension
    filled: dict[str, int] = field(default_factory=dict)
    #: dead channels regrown at the same widths (NR-IP), no α
    in_place: bool = False
    #: per dimension, the scales of the channels the plan removes, as it judged them (a
    #: rewrite refuses the plan once they changed: it would no longer remove the dead)
    judged: dict[str, np.ndarray] = field(default_factory=dict)

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
        goal = "dead channels regrown in place, same widths" if self.in_place else \
            "remove the dead only" if self.budget is None else \
            f"target {self.target:g} x {human(self.original)} = {human(self.budget)}"
        lines += ["", f"scheme {self.scheme}, metric {self.metric}: {goal}",
                  f"alpha = {self.alpha:.4f}; predicted {self.metric} {human(self.predicted)}"
                  + ("" if self.miss is None else f" ({self.miss:.3%} under the budget)")]
        if self.filled:
            lines.append(f"rounding to {self.round_to}: {sum(self.filled.values())} channel(s) in "
                         f"{len(self.filled)} dimension(s) added past it to spend the budget")
        return "\n".join(lines)


def _multiple(d, round_to: int) -> int:
    return math.lcm(d.multiple_of, round_to)


#: how a grown width meets ``round_to``: the nearest multiple, or the one below (files
#: written before widths were rounded to the nearest replay with ``"down"``)
ROUNDINGS = ("nearest", "down")


def _half(round_to: int, rounding: str) -> float:
    """What :func:`_steps` adds before flooring: a half step to round to the nearest, none
    channel by channel (the paper's floor)."""
    return 0.5 if round_to > 1 and rounding == "nearest" else 0.0


def _steps(alpha, survivors, step, half: float):
    """How many steps of its multiple a growing width α·survivors takes (rounding down
    left a width short of its next multiple at its odd survivor count: 10 of 16 at
    α 1.59 stayed at 10 rather than reach 16)."""
    return np.floor(alpha * np.asarray(survivors) / np.maximum(step, 1) + half + 1e-9)


def _keeps_width(d) -> str | None:
    """Why a free dimension can neither shrink nor grow yet, if it cannot."""
    if d.split_by_position:
        return "split by position (chunk)"   # would send channels to other branches
    if d.grouping:
        return d.grouping
    return None


def _pinned_costs(graph: ChannelGraph, metric: str, shown: int = 3) -> str:
    """Which pinned dimensions hold the most of the cost, and why each is pinned (for a
    refused budget)."""
    total = graph.count(metric)
    pinned = [(total - graph.count(metric, {d.name: np.zeros(d.width, bool)}), d) for d in graph.dims
              if d.pinned and total]
    pinned = sorted([(c, d) for c, d in pinned if c > 0], key=lambda cd: -cd[0])[:shown]
    if not pinned:
        return ""
    parts = [f"{d.name!r} {100 * c / total:.0f} % ({d.pinned})" for c, d in pinned]
    return f". The cost that scales with pinned dimensions: {'; '.join(parts)}"


def _cannot_grow(d, growable: bool, scheme: Scheme) -> str | None:
    """Why a free dimension can lose dead channels but not gain new ones, if so."""
    if d.slots is not None and scheme.partitioned:
        # every group would interleave survivors and new channels, where cr's layers
        # hold each generation in one block
        return f"grouped convolution under {scheme}"
    if d.repeated:
        return "a producer repeats its channels (depthwise multiplier)"
    if d.held:
        return d.held
    if not growable:
        return "held in part by some axis"
    return None


def _keep(d, mask: np.ndarray, m: int, score: np.ndarray) -> tuple[np.ndarray, str]:
    """Survivors of a free dimension. Every producer keeps at least one channel (a
    layer cannot have zero outputs), then the survivors are padded up to a multiple of
    ``m`` (the dimension's own constraint, groups or shuffles, and under ``prune`` the
    plan's ``round_to``, up to the whole width); both take the dead channels whose
    scales (``score``) are largest."""
    keep = mask.copy()
    notes = ["all channels dead: keeps the minimum"] if not mask.any() else []
    for member in d.members:
        own = np.unique(member.channels)
        if member.role == "out" and not keep[own].any():
            keep[own[np.argmax(score[own])]] = True
    if not notes and keep.sum() > mask.sum():
        notes.append(f"keeps {int(keep.sum() - mask.sum())} dead channel(s): every producer keeps one")
    if d.slots is not None:             # every group keeps as many: groups x that, a multiple of m
        q, size = m // math.gcd(m, d.groups), d.width // d.groups
        per = min(size, max(q, -(-int(np.bincount(d.slots[keep], minlength=d.groups).max()) // q) * q))
        before = int(keep.sum())
        for g in range(d.groups):
            _pad(keep, score, d.slots == g, per)
        if keep.sum() > before:
            notes.append(f"keeps {int(keep.sum()) - before} dead channel(s): each of {d.groups} groups "
                         f"keeps {per}")
        return np.nonzero(keep)[0], "; ".join(notes)
    short = _pad(keep, score, np.ones_like(keep), min(d.width, max(m, -(-int(keep.sum()) // m) * m)))
    if short:
        notes.append(f"keeps {short} dead channel(s) for a multiple of {m}")
    return np.nonzero(keep)[0], "; ".join(notes)


def _pad(keep: np.ndarray, score: np.ndarray, where: np.ndarray, count: int) -> int:
    """Keep the dead channels of ``where`` with the largest scores until it keeps ``count``."""
    short = count - int(keep[where].sum())
    dead = np.nonzero(~keep & where)[0]
    keep[dead[np.argsort(-score[dead], kind="stable")][:max(short, 0)]] = True
    return max(short, 0)


def _check_arguments(graph: ChannelGraph, kind: Scheme, metric: str, target: float | None, round_to: int,
                     alpha: float | None, max_target: float, rounding: str, in_place: bool) -> None:
    """Refuse arguments :func:`plan` cannot plan with, naming them."""
    if metric not in METRICS:
        raise FxSurgeonError(f"unknown metric {metric!r}: use one of {METRICS}")
    require("round_to", round_to, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    if rounding not in ROUNDINGS:
        raise FxSurgeonError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if in_place and (not kind.grows or alpha is not None):
        raise FxSurgeonError(f"in_place regrows every dimension to its width: it needs a growing scheme "
                             f"and no alpha, got {kind.name!r} and alpha={alpha}")
    if target is not None and not in_place:
        require("target", target, lambda v: v > 0, "a finite number above 0 (of the original cost)")
        if target > max_target and kind.grows:
            raise FxSurgeonError(f"target {target:g} would make the network {target:g}x its cost; "
                                 f"pass max_target={target:g} (or more) if you mean it")
    if graph.propagation.generations and kind.grows and kind.crosses:
        raise FxSurgeonError(f"this network has layers split by an earlier cr rewrite "
                             f"({next(iter(graph.propagation.generations))}, ...): plan it with "
                             f"scheme 'cr' (a new generation) or 'prune', not {kind.name!r}")


@dataclass
class _Start:
    """Every dimension's survivors, before budget pruning and growth: its :class:`DimPlan`,
    ``base`` (survivors; 0 when pinned) and ``step`` (its growth step; 0 where it does not
    grow) per dimension; per channel ``kept`` and ``partitioned`` (in a dimension that grows:
    split into survivors and new ones); the ``prunable`` candidates where pruning to a budget;
    the per-channel ``scales`` that judged them."""

    dims: dict[str, DimPlan]
    base: list[int]
    step: list[int]
    kept: np.ndarray
    partitioned: np.ndarray
    prunable: list[Prunable]
    scales: dict[str, np.ndarray]


def _survivors(graph: ChannelGraph, alive: dict, kind: Scheme, round_to: int, kept_as_is: set[str],
               scores: dict | None) -> _Start:
    """Every dimension's survivors (its alive channels, or all where it keeps its width) and
    whether it may grow; with ``scores``, its candidates for pruning to a budget. Dead
    channels a computed map multiplies while not zero are kept (see
    :mod:`fxsurgeon.judging.modulated`): removing them would change the function."""
    must = carried(graph, alive)
    cost = graph.cost
    growable = cost.growable()
    # channels of dimensions that grow split into survivors and new ones (S and R); all
    # others (pinned, or free but kept at their width) feed and read both halves
    partitioned = np.zeros(int(cost.offsets[-1]), bool)
    start = _Start({}, [], [], np.ones_like(partitioned), partitioned, [],
                   channel_scales(graph, graph.free_dims))
    for i, d in enumerate(graph.dims):
        sl = slice(cost.offsets[i], cost.offsets[i + 1])
        if not d.free:
            start.dims[d.name] = DimPlan(d.name, d.width, np.arange(d.width), d.width, pinned=True)
            start.base.append(0)
            start.step.append(0)
            continue
        mask = np.asarray(alive.get(d.name, np.ones(d.width, bool)), bool)
        whole = "fixed" if d.name in kept_as_is else _keeps_width(d)
        if whole:
            survivors, note = np.arange(d.width), f"{whole}: keeps its width"
        else:
            m = d.multiple_of if kind.grows else _multiple(d, round_to)
            held = must.get(d.name, np.zeros(d.width, bool)) & ~mask
            survivors, note = _keep(d, mask | held, m, start.scales[d.name])
            if held.any():
                note = "; ".join([f"keeps {int(held.sum())} dead channel(s) a computed map multiplies "
                                  f"or a position embedding adds to (c·ψ(x), c + p(h, w): no constant "
                                  f"to fold)", *filter(None, [note])])
            if scores is not None:
                start.prunable.append(_prunable(d, survivors, scores[d.name], _multiple(d, round_to)))
        start.kept[sl] = False
        start.kept[sl.start + survivors] = True
        stuck = whole or _cannot_grow(d, growable[i], kind)
        if stuck and not whole:
            note = note or f"{stuck}: does not grow"
        if not (whole or (d.scaled and d.sources)):
            note = note or "no scale judges it (fxs.add_judges gives it a gate, or says why not)"
        start.dims[d.name] = DimPlan(d.name, d.width, survivors, len(survivors), grows=not stuck, note=note)
        start.base.append(len(survivors))
        start.step.append(0 if stuck else _multiple(d, round_to))
        partitioned[sl] = not stuck
    return start


def _prune_to_budget(graph: ChannelGraph, start: _Start, metric: str, target: float, kind: Scheme,
                     ranking: str) -> dict[str, np.ndarray]:
    """Keep the most important of ``start``'s prunable channels while the cost fits ``target``
    (see :mod:`fxsurgeon.planning.budget`), updating ``start``; returns the channels silenced
    per dimension."""
    cost = graph.cost
    index = {d.name: i for i, d in enumerate(graph.dims)}

    def pruned_cost(chosen: dict[str, np.ndarray]) -> float:
        mask = start.kept.copy()
        for name, survivors in chosen.items():
            sl = slice(cost.offsets[index[name]], cost.offsets[index[name] + 1])
            mask[sl] = False
            mask[sl.start + survivors] = True
        none_added = np.zeros(len(graph.dims), np.int64)
        return cost.count_plan(metric, mask, start.partitioned, none_added, kind.name)

    try:
        chosen = choose(start.prunable, ranking, pruned_cost, target * graph.count(metric))
    except FxSurgeonError as err:
        raise FxSurgeonError(f"{err}{_pinned_costs(graph, metric)}") from None
    silenced = {}
    for name, survivors in chosen.items():
        i, dp = index[name], start.dims[name]
        silenced[name] = np.setdiff1d(dp.survivors, survivors)
        start.kept[cost.offsets[i]:cost.offsets[i + 1]] = False
        start.kept[cost.offsets[i] + survivors] = True
        dp.survivors, dp.new_width = survivors, len(survivors)
        start.base[i] = len(survivors)
    return silenced


def plan(graph: ChannelGraph, alive: dict[str, np.ndarray] | None = None, metric: str = "params",
         target: float | None = 1.0, scheme: str = "nr", round_to: int = 1,
         alpha: float | None = None, max_target: float = MAX_TARGET, fixed: Fixed = None,
         scores: dict[str, np.ndarray] | None = None, ranking: str = "global",
         rounding: str = "nearest", in_place: bool = False) -> Plan:
    """Remove the dead channels and find the shared expansion α for ``target · cost``.

    ``alive`` maps free dimension names to bool masks (missing: all alive), as
    :func:`fxsurgeon.liveliness` returns. Widths always respect the graph's own
    multiples (groups, shuffles); a width that grows is ``α × its survivors``, rounded
    down channel by channel (``round_to=1``, the paper's), else to the nearest multiple
    of ``round_to`` and the dimension's own (``rounding="down"``: the one below), never
    below its survivors. ``alpha`` fixes the expansion instead of searching it (the
    budget is then only reported, not enforced). ``target=None`` only removes the dead.

    ``scheme="prune"`` with ``target`` below 1 prunes to a budget: after the dead, it
    keeps the most important channels while the cost is at most ``target`` of the
    original (within one channel of it), by ``scores`` (``{dimension: importance per
    channel}``, from :mod:`fxsurgeon.importance`; default its ``magnitude``), ranked
    ``"global"``, ``"per-dimension"`` or ``"uniform"`` (dimensions of one width keep one width:
    what a HuggingFace config can say, see :mod:`fxsurgeon.planning.budget`); pruned widths are
    multiples of ``round_to``. ``fixed`` (dimension names, a predicate on a dimension, or
    ``"trunk"``: see :mod:`fxsurgeon.judging.fixed`) keeps those free dimensions as they are:
    every channel, dead or alive, and no new one. Raises :class:`FxSurgeonError` when
    the budget is impossible, and for a ``target`` above ``max_target`` (a budget that
    large is more likely a typo).

    ``in_place=True`` reallocates nothing: every dimension that can grow gets back its
    width, its dead channels replaced by as many new ones (the paper's NR-IP, "without
    reallocation"; under ``scheme="nr"`` the cost is the original's). ``target``,
    ``alpha`` and ``round_to`` play no part then.
    """
    kind = scheme_of(scheme)
    _check_arguments(graph, kind, metric, target, round_to, alpha, max_target, rounding, in_place)
    if in_place:
        target, round_to = None, 1
    searched = alpha is None            # α found for the budget (not given): rounding's leftover is spent
    alive = alive or {}
    _check_masks(graph, alive)
    budgeted = not kind.grows and target is not None and target < 1
    if budgeted:
        scores = importance.magnitude(graph) if scores is None else scores
        _check_scores(graph, scores)
    start = _survivors(graph, alive, kind, round_to, fixed_names(graph, fixed), scores if budgeted else None)
    dims, kept, partitioned, prunable = start.dims, start.kept, start.partitioned, start.prunable
    base, step, scales, cost = start.base, start.step, start.scales, graph.cost
    silenced = _prune_to_budget(graph, start, metric, target, kind, ranking) if prunable else {}
    base_a, step_a, half = np.array(base), np.array(step), _half(round_to, rounding)
    priced = cost.pricer(kept, partitioned, scheme)

    def widths(alpha: float) -> np.ndarray:
        if in_place:
            return np.where(step_a > 0, [d.width for d in dims.values()], base_a).astype(np.int64)
        if alpha <= 1:          # nothing grows (rounding to the nearest would grow 6 to 8)
            return base_a.astype(np.int64)
        grown = np.where(step_a > 0, _steps(alpha, base_a, step_a, half) * step_a, base_a)
        return np.maximum(grown, base_a).astype(np.int64)

    def cost_at(alpha: float) -> float:
        return priced(metric, widths(alpha) - base_a)

    original = graph.count(metric)
    budget = target * original if budgeted or (kind.grows and target is not None) else None
    if alpha is not None:
        require("alpha", alpha, lambda v: 1 <= v <= MAX_ALPHA, f"a number from 1 to {MAX_ALPHA:g}")
        if not kind.grows:
            raise FxSurgeonError(f"alpha needs a growing scheme, got {alpha} with {scheme!r}")
    elif budget is None or not kind.grows:
        alpha = 1.0
        if budget is not None and cost_at(1.0) > budget:
            raise FxSurgeonError(
                f"impossible budget: with every prunable channel at its minimum the model still costs "
                f"{human(cost_at(1.0))} {metric}, above the target {target:g} x {human(original)} = "
                f"{human(budget)} ({len(prunable)} of {len(graph.free_dims)} free dimensions can shrink; "
                f"the rest are pinned, fixed or keep their width){_pinned_costs(graph, metric)}")
    else:
        if cost_at(1.0) > budget:
            raise FxSurgeonError(
                f"impossible budget: without its dead channels the model still costs "
                f"{human(cost_at(1.0))} {metric} under scheme {scheme!r}, above the target "
                f"{target:g} x {human(original)} = {human(budget)}; raise the target or let "
                f"more channels die first{_pinned_costs(graph, metric)}")
        alpha = _largest_alpha(cost_at, budget) if (step_a > 0).any() else 1.0
    final = widths(alpha)
    if searched and budget is not None and kind.grows and round_to > 1:
        fine = np.array([d.multiple_of if st else 0 for d, st in zip(graph.dims, step_a, strict=True)])
        final = _spend(final, alpha * base_a, step_a, fine, budget,
                       lambda w: priced(metric, w - base_a))
    filled = {}
    for dp, w, grown, st in zip(dims.values(), final, widths(alpha), step_a, strict=True):
        if dp.pinned:
            continue
        dp.new_width = int(w)
        if w > grown:
            filled[dp.name] = int(w - grown)
            dp.note = dp.note or f"+{int(w - grown)} past alpha's multiple of {st}: spends what rounding left"
        elif st and w % st and round_to > 1:
            dp.note = dp.note or f"round_to {round_to} not reached without exceeding the budget"
    predicted = priced(metric, final - base_a)
    judged = {name: scales[name][np.setdiff1d(np.arange(dp.width), dp.survivors)]
              for name, dp in dims.items() if name in scales and len(dp.survivors) < dp.width}
    return Plan(metric, scheme, target, alpha, original, budget, predicted, dims, round_to, graph.token,
                silenced, rounding, filled, in_place, judged)


def cost_of(p: Plan, graph: ChannelGraph, metric: str = "params") -> float:
    """The cost of the network ``p`` describes on ``graph``, at its widths as they are now
    (a file's recorded widths included): what rewriting it would build."""
    cost = graph.cost
    kept, partitioned = np.zeros(int(cost.offsets[-1]), bool), np.zeros(int(cost.offsets[-1]), bool)
    added = np.zeros(len(graph.dims), np.int64)
    for i, d in enumerate(graph.dims):
        dp, start = p.dims[d.name], int(cost.offsets[i])
        kept[start + np.asarray(dp.survivors, np.int64)] = True
        partitioned[start:int(cost.offsets[i + 1])] = dp.grows
        added[i] = 0 if dp.pinned else dp.new_width - len(dp.survivors)
    return cost.count_plan(metric, kept, partitioned, added, p.scheme)


def _spend(widths: np.ndarray, ideal: np.ndarray, coarse: np.ndarray, fine: np.ndarray, budget: float,
           cost_of) -> np.ndarray:
    """Spend what rounding to ``coarse`` multiples left of ``budget``: widths that grow
    take one more ``coarse`` step (their multiple kept), else one ``fine`` step (the
    dimension's own multiple), the one furthest below its ideal α·survivors first,
    while the cost stays within the budget. The cost only grows with widths, so a step
    that does not fit never will: each is tried until it fails once."""
    widths = widths.copy()
    tries = {(int(i), int(s)) for i in np.nonzero(coarse > 0)[0] for s in (coarse[i], fine[i]) if s}
    while True:
        for i, s in sorted(tries, key=lambda t: (widths[t[0]] / max(ideal[t[0]], 1e-9), -t[1], t[0])):
            widths[i] += s
            if cost_of(widths) <= budget:
                break
            widths[i] -= s
            tries.discard((i, s))
        else:
            return widths


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


def _check_scores(graph: ChannelGraph, scores: dict) -> None:
    """Scores name free dimensions of ``graph``, one finite number per channel, for each."""
    free = {d.name: d for d in graph.free_dims}
    for name, s in scores.items():
        if name not in free:
            raise FxSurgeonError(f"scores for {name!r}, which is not a free dimension of this graph")
        s = np.asarray(s)
        if s.shape != (free[name].width,) or not np.isfinite(s).all():
            raise FxSurgeonError(f"scores for {name!r} must be {free[name].width} finite numbers, "
                                 f"got shape {s.shape}")
    missing = [n for n in free if n not in scores]
    if missing:
        raise FxSurgeonError(f"no scores for {missing[:3]}{'...' if len(missing) > 3 else ''}: give every "
                             f"free dimension a score per channel (fxsurgeon.importance)")


def _prunable(d, survivors: np.ndarray, scores, step: int) -> Prunable:
    """A dimension's survivors as candidates, the best of each producer's kept whatever."""
    scores = np.asarray(scores, dtype=np.float64)
    forced = set()
    for member in d.members:
        own = np.intersect1d(np.unique(member.channels), survivors) if member.role == "out" else []
        if len(own) and not forced & set(own.tolist()):
            forced.add(int(own[np.argmax(scores[own])]))
    if d.slots is not None:        # every block keeps as many: counts are multiples of the blocks too
        step = math.lcm(step, d.groups)
    return Prunable(d.name, survivors, scores[survivors], np.array(sorted(forced), dtype=np.int64), step,
                    None if d.slots is None else d.slots[survivors], d.groups, d.width)


def _largest_alpha(cost_at, budget: float) -> float:
    """The largest α whose widths fit the budget, by doubling then bisection (cost is a
    non-decreasing step function of α)."""
    lo, hi = 1.0, 2.0
    while cost_at(hi) <= budget:
        lo, hi = hi, hi * 2
        if hi > MAX_ALPHA:
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
            half = _half(plan_.round_to, plan_.rounding)
            if plan_.alpha <= 1 and _steps(1.0, s, m, half) * m > s:      # grows right above 1
                return math.nextafter(1.0, 2.0)
            best = min(best, float(_steps(plan_.alpha, s, m, half) + 1 - half) * m / s)
    return best
