"""Neural Rejuvenation as an optimizer wrapper (Qiao et al., CVPR 2019, Algorithm 1).

``nr.step()`` replaces ``optimizer.step()``: it steps the user's optimizer with the L1
penalty ``λ·|γ|`` on the scales of free dimensions (the paper's subgradient, or its
proximal form for adaptive optimizers) and, every
``check_every`` steps, measures utilization. Below ``threshold`` it removes the dead
channels, spends the freed budget with one shared α and keeps training: the model,
optimizer and scheduler objects the user holds stay valid.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from ..errors import FxSurgeonError, require
from ..judging.fixed import Fixed
from ..judging.liveliness import liveliness
from ..layers.schemes import SCHEMES
from ..persistence.fileformat import build, schema_of
from ..planning.planner import MAX_ALPHA, MAX_TARGET, Plan, plan
from ..surgery.forms import FORMS
from ..surgery.rescaling import GOALS as RESCALE_GOALS
from ..surgery.rewriter import Surgery, rewrite
from .base import SurgicalTraining, one_per_surgery, shared


@dataclass
class Event:
    """What one rejuvenation changed."""

    step: int
    utilization: float
    alpha: float
    metric: str
    scheme: str
    cost_before: float                 # the network before the event, every channel counted
    cost_alive: float                  # ... only its alive channels (U(θ))
    cost_after: float                  # the new network
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    widths_alive: dict[str, int] = field(default_factory=dict)   # the survivors per dimension
    surgery: Surgery | None = field(default=None, repr=False)   # plan, index maps, new module

    def summary(self) -> dict:
        """The event's numbers, for logs."""
        return {k: getattr(self, k) for k in ("step", "utilization", "alpha", "cost_before",
                                              "cost_alive", "cost_after")}


def _not_extended(saved: int | None, events: int, mine: int | None) -> bool:
    """Whether a checkpoint's ``max_events`` (after ``events``) is this wrapper's, or the
    search ended early (:meth:`NeuralRejuvenation.end_search`): never a longer search."""
    if saved is None:
        return mine is None
    return events <= saved and (mine is None or saved <= mine)


class NeuralRejuvenation(SurgicalTraining):
    """Wrap ``optimizer`` to train ``model`` with Neural Rejuvenation.

    ``metric`` ("params" or "flops") is the resource; the budget is ``target`` times
    the original model's cost, and every event plans against it. ``threshold`` is T_r: an
    event fires when utilization drops below it (at most ``max_events`` times; None: no
    limit). λ starts at 0 and grows by ``delta_lambda`` at every check where utilization
    fell by less than ``delta_r`` since the previous one (at the first check, and the first
    after an event, it grows); it returns to 0 after an event and stays there after the
    last one and after :meth:`end_search`. ``fixed`` keeps dimensions at their width and
    out of the penalty (names, a predicate on a dimension, or ``"trunk"``: the residual
    trunk and the stem, as the paper does for ResNets). ``sparsity`` is the form of the
    penalty: ``"subgradient"``, ``"proximal"`` or ``"auto"`` (see
    :class:`~fxsurgeon.training.base.SurgicalTraining`). ``check_every`` counts
    optimizer steps (``None``: call :meth:`check` yourself, e.g. once per epoch).
    ``dead_threshold`` is the paper's 0.01. ``round_to``: widths that grow are multiples
    of it (8 by default: at odd widths the same FLOPs train up to 1.3x slower, see
    docs/performance.md; 1 grows them as the paper does, channel by channel). ``on_event``
    is called with each :class:`Event`. ``judges`` gates the free dimensions no norm judges
    (an MLP's hidden units, a ConvNeXt expansion: see :mod:`fxsurgeon.surgery.judges`), so
    they are penalised, judged and rejuvenated like BatchNorm channels; :attr:`judged` says
    which got a gate. ``form`` is the form of ``cr``/``ca`` layers (``"split"``,
    ``"dense"`` or ``"auto"``: each layer's faster, timed at the event on
    ``example_inputs``, so pass a batch of the size you train with; see
    :mod:`fxsurgeon.surgery.forms`). Train :attr:`model`, not the model you passed in; or pass
    ``in_place=True``, and every event changes your model object itself (see
    :class:`~fxsurgeon.training.base.SurgicalTraining`).

    Under ``torchrun``, pass ``ddp=True`` (or DistributedDataParallel's keyword
    arguments) instead of wrapping the model yourself: :attr:`model` then runs the DDP
    wrapper, which is rebuilt after each event; every rank follows rank 0's liveliness
    and builds identical new parameters (DDP broadcasts rank 0's anyway).
    """

    FORMAT = "fxsurgeon.nr/4"
    #: failed events in a row after which the search ends
    MAX_FAILURES = 3
    SCHEMA = {**SurgicalTraining.SCHEMA, "lam": float, "last_utilization": float | None,
              "failures": int, "wait": int,
              "events": list[schema_of(Event)], "max_events": int | None}
    CHECKS = (*SurgicalTraining.CHECKS,
              # λ grows by delta_lambda at a check (each logs a line), and only then
              ("lam", lambda w, d: 0 <= d["lam"] <= w.delta_lambda * len(d["log"]) * (1 + 1e-6),
               "from 0 to delta_lambda times the checks of its log"),
              ("last_utilization", lambda w, d: d["last_utilization"] is None or
               0 <= d["last_utilization"] <= 1, "a utilization from 0 to 1, or None"),
              ("failures", lambda w, d: 0 <= d["failures"] <= w.MAX_FAILURES, "from 0 to MAX_FAILURES"),
              ("wait", lambda w, d: 0 <= d["wait"] <= 2 ** w.MAX_FAILURES, "a number of checks to wait"),
              ("events", lambda w, d: one_per_surgery(d["events"], d) and
               all(1 <= e["alpha"] <= MAX_ALPHA for e in d["events"]),
               "one per surgery of its history, at its steps in order, each with an alpha a plan makes"),
              ("max_events", lambda w, d: _not_extended(d["max_events"], len(d["events"]), w.max_events),
               "at least its events, and at most this wrapper's max_events"))

    def __init__(self, model: nn.Module, example_inputs, optimizer: torch.optim.Optimizer, *,
                 metric: str = "params", threshold: float = 0.5, target: float = 1.0,
                 scheme: str = "nr", rescale: bool | str = False, check_every: int | None = None,
                 delta_r: float = 0.01, delta_lambda: float = 5e-5, max_events: int | None = 1,
                 dead_threshold: float = 0.01, round_to: int = 8, seed: int = 0,
                 on_event: Callable[[Event], None] | None = None, ddp: dict | bool = False,
                 fixed: Fixed = None, sparsity: str = "auto", judges: bool = True, in_place: bool = False,
                 form: str = "split", **analyze_kwargs):
        if scheme not in SCHEMES or not SCHEMES[scheme].grows:
            raise FxSurgeonError(f"scheme must be one of nr, cr, ca, not {scheme!r}")
        require("target", target, lambda v: 0 < v <= MAX_TARGET,
                f"a positive multiple of the model's cost, at most {MAX_TARGET:g}")
        require("threshold", threshold, lambda v: 0 < v <= 1,
                "a utilization in (0, 1]: an event fires when utilization falls below it (1: as soon as "
                "anything is dead)")
        require("delta_r", delta_r, lambda v: v >= 0, "at least 0")
        require("delta_lambda", delta_lambda, lambda v: v >= 0, "at least 0")
        require("dead_threshold", dead_threshold, lambda v: 0 < v < 1, "between 0 and 1")
        require("round_to", round_to, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
        if max_events is not None and (isinstance(max_events, bool) or not isinstance(max_events, int)
                                       or max_events < 0):
            raise FxSurgeonError(f"max_events must be a number of events or None, got {max_events!r}")
        if rescale not in (False, True, *RESCALE_GOALS):
            raise FxSurgeonError(f"rescale must be True, False or one of {RESCALE_GOALS}, got {rescale!r}")
        if check_every is not None and check_every < 1:
            raise FxSurgeonError(f"check_every must be a positive number of steps, got {check_every}")
        if form not in FORMS:
            raise FxSurgeonError(f"form must be one of {FORMS}, got {form!r}")
        super().__init__(model, example_inputs, optimizer, ddp=ddp, fixed=fixed, sparsity=sparsity,
                         judges=judges, in_place=in_place, **analyze_kwargs)
        self.metric, self.threshold, self.target = metric, threshold, target
        self.scheme, self.rescale = scheme, rescale
        self.check_every, self.delta_r, self.delta_lambda = check_every, delta_r, delta_lambda
        self.max_events, self.dead_threshold, self.seed = max_events, dead_threshold, seed
        self.round_to, self.form = round_to, form
        self.on_event = on_event
        self.budget = target * self.graph.count(metric)
        self.lam = 0.0
        self.events: list[Event] = []
        self._last_utilization: float | None = None
        self._failures, self._wait = 0, 0     # failed events in a row; checks to wait

    # ---- training ------------------------------------------------------------------
    def _stepped(self) -> Event | None:
        """Check every ``check_every`` steps."""
        if self.check_every and self.steps % self.check_every == 0:
            return self.check()
        return None

    @property
    def surgeries(self) -> list[Event]:
        """The rejuvenation events so far."""
        return self.events

    def utilization(self) -> float:
        """The paper's r = U(θ) / c(A) of the current network."""
        return self.graph.utilization(self._liveliness(), self.metric)

    @property
    def searching(self) -> bool:
        """Whether more events may come."""
        return self.max_events is None or len(self.events) < self.max_events

    def end_search(self) -> None:
        """End the search phase: λ → 0 and no further events."""
        self.lam, self.max_events = 0.0, len(self.events)

    def _liveliness(self) -> dict:
        """Alive masks (fixed dimensions count as alive: they are not rejuvenated); under
        torch.distributed every rank takes rank 0's."""
        alive = shared(lambda: liveliness(self.graph, self.dead_threshold))
        return {n: m for n, m in alive.items() if n not in self.fixed_dims}

    def check(self) -> Event | None:
        """Measure utilization; rejuvenate below the threshold, else adapt λ."""
        alive = self._liveliness()
        r = self.graph.utilization(alive, self.metric)
        entry = {"step": self.steps, "lambda": self.lam, "utilization": r, "event": False}
        self.log.append(entry)
        if r < self.threshold and self.searching:
            if self._wait:                      # backing off after a failed event; λ held
                self._wait -= 1
                entry["waiting"] = True
                return None
            try:
                with self._all_or_nothing():
                    event = self._rejuvenate(alive, r)
            except FxSurgeonError as err:       # keep training the network as it is
                self._failed(entry, str(err), "skipped")
                return None
            except Exception as err:            # a bug: the network and optimizer are as they were
                self._failed(entry, f"{type(err).__name__}: {err}", "failed (please report it)")
                return None
            entry["event"] = True
            self._failures = 0
            self.lam, self._last_utilization = 0.0, None
            if self.on_event:
                self.on_event(event)
            return event
        last = self._last_utilization          # after the last event λ stays where it is
        if self.searching and (last is None or last - r < self.delta_r):
            self.lam += self.delta_lambda
        self._last_utilization = r
        return None

    def _failed(self, entry: dict, error: str, what: str) -> None:
        """After a failed event the network trains on as it was, λ held: the next try comes
        2, then 4 checks later, and after :attr:`MAX_FAILURES` failures in a row the search
        ends (λ = 0, no more events). One warning when it first fails, one when it gives up."""
        entry["error"] = error
        self._failures += 1
        if self._failures >= self.MAX_FAILURES:
            self.end_search()
            warnings.warn(f"rejuvenation at step {self.steps} {what}: {error}; after {self._failures} "
                          f"failed events in a row the search ends (λ = 0, no more events)", stacklevel=3)
        else:
            self._wait = 2 ** self._failures
            if self._failures == 1:
                warnings.warn(f"rejuvenation at step {self.steps} {what}: {error}; the network trains on as "
                              f"it was, λ held, and the event is tried again {self._wait} checks later "
                              f"(the search ends after {self.MAX_FAILURES} failures in a row)", stacklevel=3)

    # ---- checkpoints -----------------------------------------------------------------
    def _state(self) -> dict:
        return {"lam": self.lam, "last_utilization": self._last_utilization, "max_events": self.max_events,
                "failures": self._failures, "wait": self._wait,
                "events": [{f.name: getattr(e, f.name) for f in fields(e) if f.name != "surgery"}
                           for e in self.events]}

    def _load_state(self, data: dict) -> None:
        self.lam, self._last_utilization = data["lam"], data["last_utilization"]
        self._failures, self._wait = data["failures"], data["wait"]
        self.events, self.max_events = [build(Event, e) for e in data["events"]], data["max_events"]

    def _upgrade(self, data):
        if isinstance(data, dict) and data.get("format") == "fxsurgeon.nr/2":   # before end_search
            data = {**data, "format": "fxsurgeon.nr/3", "max_events": self.max_events}
        if isinstance(data, dict) and data.get("format") == "fxsurgeon.nr/3":   # before the back-off
            data = {**data, "format": self.FORMAT, "failures": 0, "wait": 0}
        return data

    # ---- the event -------------------------------------------------------------------
    def _rejuvenate(self, alive: dict, r: float) -> Event:
        graph = self.graph
        current = graph.count(self.metric)
        if all(d.name in self.fixed_dims for d in graph.free_dims):
            why = sorted({d.pinned for d in graph.dims if d.pinned})
            raise FxSurgeonError(f"nothing to rejuvenate: every dimension is fixed "
                                 f"({len(self.fixed_dims)}) or pinned ({'; '.join(why)})")
        p = self._plan(alive, current)
        if all(len(d.survivors) == d.width == d.new_width for d in p.dims.values()):
            raise FxSurgeonError("nothing to rejuvenate: the plan keeps every channel and adds none "
                                 "(the dead channels are all in dimensions that keep their width)")
        seed = self.seed + len(self.events)
        surgery = rewrite(graph, p, seed=seed, rescale=self.rescale if SCHEMES[p.scheme].grows else False,
                          form=self.form)
        self.apply_surgery(surgery, seed)
        event = Event(self.steps, r, p.alpha, self.metric, p.scheme, current,
                      graph.count(self.metric, alive), self.graph.count(self.metric),
                      {n: d.width for n, d in p.dims.items()},
                      {n: d.new_width for n, d in p.dims.items()},
                      {n: len(d.survivors) for n, d in p.dims.items()}, surgery)
        self.events.append(event)
        return event

    def _plan(self, alive: dict, current: float) -> Plan:
        """The event's plan: the survivors and one shared α that spends the original budget."""
        return plan(self.graph, alive, metric=self.metric, target=self.budget / current, scheme=self.scheme,
                    fixed=self.fixed, round_to=self.round_to)
