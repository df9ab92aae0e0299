"""Neural Rejuvenation as an optimizer wrapper (Qiao et al., CVPR 2019, Algorithm 1).

``nr.step()`` replaces ``optimizer.step()``: it adds the L1 subgradient ``λ·sign(γ)``
to the scales of free dimensions, steps the user's optimizer and, every
``check_every`` steps, measures utilization. Below ``threshold`` it removes the dead
channels, spends the freed budget with one shared α and keeps training: the model,
optimizer and scheduler objects the user holds stay valid.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from .checkpoint import read
from .errors import FxSurgeonError
from .graph import ChannelGraph, analyze
from .history import record, replay, write_atomic
from .liveliness import liveliness
from .optimizer_state import remap_optimizer
from .planner import SCHEMES, plan
from .rewriter import Surgery, rewrite
from .tracing import as_tuple

FORMAT = "fxsurgeon.nr/1"


class Rejuvenating(nn.Module):
    """The one model object of a run: it forwards to the current network, which a
    rejuvenation event replaces. Under DistributedDataParallel it holds the DDP wrapper
    of the current network (``ddp``), rebuilt after every event."""

    def __init__(self, network: nn.Module, ddp: dict | None = None):
        super().__init__()
        self.ddp_kwargs = ddp
        self.replace(network)

    @property
    def network(self) -> nn.Module:
        """The current network (without the DDP wrapper)."""
        return self.ddp.module if self.ddp_kwargs is not None else self.net

    def replace(self, network: nn.Module) -> None:
        """Run ``network`` from now on (wrapped anew in DDP when distributed)."""
        self._modules.pop("ddp", None)
        self._modules.pop("net", None)
        if self.ddp_kwargs is not None:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(network, **self.ddp_kwargs)
        else:
            self.net = network

    def forward(self, *args, **kwargs):
        return (self.ddp if self.ddp_kwargs is not None else self.net)(*args, **kwargs)


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


class NeuralRejuvenation:
    """Wrap ``optimizer`` to train ``model`` with Neural Rejuvenation.

    ``metric`` ("params" or "flops") is the resource; the budget is ``target`` times
    the original model's cost. ``threshold`` is T_r: an event fires when utilization
    drops below it (at most ``max_events`` times). λ starts at 0 and grows by
    ``delta_lambda`` at every check where utilization fell by less than ``delta_r``
    since the previous check; it returns to 0 after an event (and stays there after the
    last one). ``check_every`` counts
    optimizer steps (``None``: call :meth:`check` yourself, e.g. once per epoch).
    ``dead_threshold`` is the paper's 0.01. ``on_event`` is called with each
    :class:`Event`. Train :attr:`model`, not the model you passed in.

    Under ``torchrun``, pass ``ddp=True`` (or DistributedDataParallel's keyword
    arguments) instead of wrapping the model yourself: :attr:`model` then runs the DDP
    wrapper, which is rebuilt after each event; every rank follows rank 0's liveliness
    and builds identical new parameters (DDP broadcasts rank 0's anyway).
    """

    def __init__(self, model: nn.Module, example_inputs, optimizer: torch.optim.Optimizer, *,
                 metric: str = "params", threshold: float = 0.5, target: float = 1.0,
                 scheme: str = "nr", rescale: bool = False, check_every: int | None = None,
                 delta_r: float = 0.01, delta_lambda: float = 5e-5, max_events: int = 1,
                 dead_threshold: float = 0.01, seed: int = 0,
                 on_event: Callable[[Event], None] | None = None, ddp: dict | bool = False,
                 **analyze_kwargs):
        if scheme not in SCHEMES or scheme == "prune":
            raise FxSurgeonError(f"scheme must be one of nr, cr, ca, not {scheme!r}")
        if check_every is not None and check_every < 1:
            raise FxSurgeonError(f"check_every must be a positive number of steps, got {check_every}")
        self.example_inputs = as_tuple(example_inputs)
        self.optimizer = optimizer
        self.metric, self.threshold, self.target = metric, threshold, target
        self.scheme, self.rescale = scheme, rescale
        self.check_every, self.delta_r, self.delta_lambda = check_every, delta_r, delta_lambda
        self.max_events, self.dead_threshold, self.seed = max_events, dead_threshold, seed
        self.on_event = on_event
        self._analyze_kwargs = analyze_kwargs
        self._set_graph(analyze(model, self.example_inputs, **analyze_kwargs))
        self.model = Rejuvenating(self.graph.module, None if ddp is False else {} if ddp is True else ddp)
        self.model.train(model.training)
        self.budget = target * self.graph.count(metric)
        self.lam = 0.0
        self.steps = 0
        self.events: list[Event] = []
        self.history: list[dict] = []          # each surgery as data, for checkpoints
        self.log: list[dict] = []
        self._last_utilization: float | None = None

    # ---- the graph of the current network ------------------------------------------
    def _set_graph(self, graph: ChannelGraph) -> None:
        self.graph = graph
        params = dict(graph.module.named_parameters())
        masks: dict[str, torch.Tensor] = {}
        for d in graph.free_dims:
            for m in d.sources:
                p = params[m.tensor]
                mask = masks.setdefault(m.tensor, torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
                mask[torch.as_tensor(m.positions, device=p.device)] = 1
        self._scales = [(params[n], mask.view_as(params[n])) for n, mask in masks.items()]

    # ---- training ------------------------------------------------------------------
    def step(self, closure=None):
        """Add the L1 subgradient, step the optimizer, and check every ``check_every`` steps."""
        if self.lam:
            with torch.no_grad():
                for p, mask in self._scales:
                    if p.grad is not None:
                        p.grad.add_(self.lam * torch.sign(p) * mask)
        loss = self.optimizer.step(closure)
        self.steps += 1
        if self.check_every and self.steps % self.check_every == 0:
            self.check()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def utilization(self) -> float:
        """The paper's r = U(θ) / c(A) of the current network."""
        return self.graph.utilization(self._liveliness(), self.metric)

    def _liveliness(self) -> dict:
        """Alive masks; under torch.distributed every rank takes rank 0's."""
        alive = liveliness(self.graph, self.dead_threshold)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [alive]
            torch.distributed.broadcast_object_list(box, src=0)
            alive = box[0]
        return alive

    def check(self) -> Event | None:
        """Measure utilization; rejuvenate below the threshold, else adapt λ."""
        alive = self._liveliness()
        r = self.graph.utilization(alive, self.metric)
        entry = {"step": self.steps, "lambda": self.lam, "utilization": r, "event": False}
        self.log.append(entry)
        if r < self.threshold and len(self.events) < self.max_events:
            try:
                event = self._rejuvenate(alive, r)
            except FxSurgeonError as err:       # keep training the network as it is
                entry["error"] = str(err)
                warnings.warn(f"rejuvenation at step {self.steps} skipped: {err}", stacklevel=2)
                return None
            entry["event"] = True
            self.lam, self._last_utilization = 0.0, None
            if self.on_event:
                self.on_event(event)
            return event
        more = len(self.events) < self.max_events      # after the last event λ stays where it is
        if more and self._last_utilization is not None and self._last_utilization - r < self.delta_r:
            self.lam += self.delta_lambda
        self._last_utilization = r
        return None

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything to resume: the surgery history (the architecture is rebuilt from the
        original model), the network's and the optimizer's state, λ, the step and the log.
        Plain data: it loads with ``torch.load(weights_only=True)``."""
        return {"format": FORMAT, "history": list(self.history), "lam": self.lam, "steps": self.steps,
                "last_utilization": self._last_utilization, "log": list(self.log),
                "events": [{f.name: getattr(e, f.name) for f in fields(e) if f.name != "surgery"}
                           for e in self.events],
                "model": self.model.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, data: dict) -> None:
        """Resume from :meth:`state_dict` on a wrapper built as the saved one was (same
        original model, optimizer type and arguments), before it has trained."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FxSurgeonError("not a NeuralRejuvenation checkpoint")
        if self.events or self.steps:
            raise FxSurgeonError("load a checkpoint into a fresh NeuralRejuvenation, before training")
        for rec in data["history"]:
            self.apply_surgery(replay(self.graph, rec), remember=False)
        self.history = list(data["history"])
        result = self.model.network.load_state_dict(data["model"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise FxSurgeonError(f"the checkpoint's network does not match: missing "
                                 f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        try:
            self.optimizer.load_state_dict(data["optimizer"])
        except ValueError as err:
            raise FxSurgeonError(f"the checkpoint's optimizer does not match: {err}") from None
        self.lam, self.steps = data["lam"], data["steps"]
        self._last_utilization, self.log = data["last_utilization"], list(data["log"])
        self.events = [Event(**e) for e in data["events"]]

    def save(self, path: str | os.PathLike, **extra) -> None:
        """Write :meth:`state_dict` atomically, with ``extra`` (an epoch, a scheduler's
        state) stored beside it."""
        write_atomic({**self.state_dict(), "extra": extra}, path)

    def load(self, path: str | os.PathLike) -> dict:
        """Resume from a file written by :meth:`save`; returns its ``extra``."""
        data = read(path)
        try:
            self.load_state_dict(data)
        except FxSurgeonError as err:
            raise FxSurgeonError(f"cannot resume from {str(path)!r}: {err}") from None
        return data.get("extra", {})

    # ---- the event -------------------------------------------------------------------
    def apply_surgery(self, surgery: Surgery, seed: int = 0, remember: bool = True) -> None:
        """Train ``surgery.module`` from now on: the optimizer is pointed at it, with the
        survivors' state carried, and checkpoints record the surgery (with its ``seed``)."""
        old, new = self.model.network, surgery.module
        new.train(old.training)
        remap_optimizer(self.optimizer, old, new, surgery)
        self.model.replace(new)
        self._set_graph(analyze(new, self.example_inputs, **self._analyze_kwargs))
        if remember:
            self.history.append(record(surgery, seed))

    def _rejuvenate(self, alive: dict, r: float) -> Event:
        graph = self.graph
        current = graph.count(self.metric)
        p = plan(graph, alive, metric=self.metric, target=self.budget / current, scheme=self.scheme)
        seed = self.seed + len(self.events)
        surgery = rewrite(graph, p, seed=seed, rescale=self.rescale)
        self.apply_surgery(surgery, seed)
        event = Event(self.steps, r, p.alpha, self.metric, self.scheme, current,
                      graph.count(self.metric, alive), self.graph.count(self.metric),
                      {n: d.width for n, d in p.dims.items()},
                      {n: d.new_width for n, d in p.dims.items()},
                      {n: len(d.survivors) for n, d in p.dims.items()}, surgery)
        self.events.append(event)
        return event
