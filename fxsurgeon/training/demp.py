"""Demon Pruning as an optimizer wrapper (Dufort-Labbé et al., 2024).

DemP lets neurons die on purpose and removes them while training. ``demp.step()``
replaces ``optimizer.step()``: it adds a regularization gradient to the normalization
scales of free dimensions, steps the user's optimizer, and adds Gaussian noise
``σ_t·N(0, I)`` to the update of live units only (entries whose loss gradient is
nonzero); λ_t and σ_t follow a one-cycle schedule. Every ``prune_every`` steps, and at
the last step, the channels whose activations are zero on a held-out death set
(:mod:`fxsurgeon.judging.activations`) are removed by ``rewrite(scheme="prune")``: the model,
optimizer and scheduler objects the user holds stay valid.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from ..analysis.graph import ChannelGraph
from ..errors import FxSurgeonError, require
from ..judging.activations import activation_liveliness
from ..persistence.fileformat import build, schema_of
from ..planning.planner import plan
from ..surgery.rewriter import Surgery, rewrite
from .base import SurgicalTraining, one_per_surgery, shared
from .schedules import one_cycle

REGULARIZATIONS = ("l1", "l2+")


@dataclass
class Pruning:
    """What one removal of dead channels changed."""

    step: int
    dead: int                          # channels found dead
    removed: int                       # ... and removed (every layer keeps one)
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    surgery: Surgery | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """The pruning's numbers, for logs."""
        return {k: getattr(self, k) for k in ("step", "dead", "removed", "params_before",
                                              "params_after", "flops_before", "flops_after")}


@dataclass
class Noise:
    """The noise a step adds after its update: σ_t, and which entries of each parameter
    were live (a nonzero loss gradient) before it."""

    sigma: float
    params: list[torch.Tensor]
    live: list[torch.Tensor]


class DemP(SurgicalTraining):
    """Wrap ``optimizer`` to train ``model`` with Demon Pruning.

    ``death_set`` is a re-iterable of held-out batches (tensors, or tuples whose first
    entries are the model's inputs, so ``(x, y)`` works); a channel is dead when its
    activation is at most ``epsilon`` on all of it, or at most ``fraction`` of the largest
    peak of its dimension (0.01 for GELU or SiLU units, which are never exactly zero).
    Activations judge every free dimension, so ``judges`` (the gates Neural Rejuvenation
    puts where no norm judges) are off by default. ``total_steps`` is the length of the
    run: the one-cycle schedule of λ (peak ``reg_peak``) and σ (peak ``noise_peak``)
    rises over its first ``rise`` fraction and decays to 0 at its end, where the last
    pruning happens. ``regularization`` is ``"l1"`` (λ·sign(γ) on the free scales) or
    ``"l2+"`` (λ·max(θ, 0) on the free scales and their shifts: the gradient of the
    positive-part L2 penalty, which pushes pre-activations below zero). ``sparsity``
    is the form of the penalty: ``"subgradient"`` (its gradient added before the step),
    ``"proximal"`` (its proximal step after it, with the group's learning rate: L1
    soft-thresholds, l2+ divides positive entries by ``1 + lr·λ``) or ``"auto"`` (the
    gradient for plain SGD, the proximal step for other optimizers, which would
    normalise the gradient away). ``prune_every``
    counts optimizer steps (``None``: only at the end and when you call
    :meth:`prune`). ``on_prune`` is called with each :class:`Pruning`. Train
    :attr:`model`, not the model you passed in; ``ddp`` as in
    :class:`~fxsurgeon.NeuralRejuvenation` (rank 0 measures death for every rank).
    """

    FORMAT = "fxsurgeon.training.demp/2"
    SCHEMA = {**SurgicalTraining.SCHEMA, "prunings": list[schema_of(Pruning)],
              "generators": dict[str, torch.Tensor]}
    CHECKS = (*SurgicalTraining.CHECKS, ("prunings", lambda w, d: one_per_surgery(d["prunings"], d),
                                         "one per surgery of its history, at its steps in order"))

    def __init__(self, model: nn.Module, example_inputs, optimizer: torch.optim.Optimizer,
                 death_set: Iterable, *, total_steps: int, regularization: str = "l1",
                 reg_peak: float = 1e-3, noise_peak: float = 1e-3, rise: float = 0.3,
                 prune_every: int | None = 1000, epsilon: float = 0.0, fraction: float = 0.0, seed: int = 0,
                 on_prune: Callable[[Pruning], None] | None = None, ddp: dict | bool = False,
                 sparsity: str = "auto", judges: bool = False, in_place: bool = False, **analyze_kwargs):
        if regularization not in REGULARIZATIONS:
            raise FxSurgeonError(f"regularization must be one of {', '.join(REGULARIZATIONS)}, "
                                 f"not {regularization!r}")
        if total_steps < 1:
            raise FxSurgeonError(f"total_steps must be a positive number of steps, got {total_steps}")
        require("reg_peak", reg_peak, lambda v: v >= 0, "at least 0")
        require("noise_peak", noise_peak, lambda v: v >= 0, "at least 0")
        require("rise", rise, lambda v: 0 < v < 1, "between 0 and 1")
        require("epsilon", epsilon, lambda v: v >= 0, "at least 0")
        require("fraction", fraction, lambda v: 0 <= v < 1, "in [0, 1)")
        if prune_every is not None and prune_every < 1:
            raise FxSurgeonError(f"prune_every must be a positive number of steps, got {prune_every}")
        if iter(death_set) is death_set:
            raise FxSurgeonError("the death set must be re-iterable (a list or a DataLoader), "
                                 "not an iterator: it is read at every pruning")
        if hasattr(death_set, "__len__") and len(death_set) == 0:
            raise FxSurgeonError("the death set is empty: death is measured on at least one batch")
        super().__init__(model, example_inputs, optimizer, ddp=ddp, sparsity=sparsity, judges=judges,
                         in_place=in_place, **analyze_kwargs)
        self.death_set, self.total_steps, self.regularization = death_set, total_steps, regularization
        self.reg_peak, self.noise_peak, self.rise = reg_peak, noise_peak, rise
        self.prune_every, self.epsilon, self.seed, self.on_prune = prune_every, epsilon, seed, on_prune
        self.fraction = fraction
        self.original = {m: self.graph.count(m) for m in ("params", "flops")}
        self.prunings: list[Pruning] = []
        self._generators: dict[str, torch.Generator] = {}
        self._noise: Noise | None = None        # from before_step to after_step

    # ---- the schedule ------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """λ_t for the next step."""
        return self.reg_peak * one_cycle(self.steps, self.total_steps, self.rise)

    @property
    def sigma(self) -> float:
        """σ_t for the next step."""
        return self.noise_peak * one_cycle(self.steps, self.total_steps, self.rise)

    @property
    def surgeries(self) -> list[Pruning]:
        """The prunings so far."""
        return self.prunings

    def sparsity(self, metric: str = "params") -> float:
        """The share of the original model's parameters (or FLOPs) removed so far."""
        return 1 - self.graph.count(metric) / self.original[metric]

    # ---- training ----------------------------------------------------------------------
    def step(self, closure=None):
        """Regularize, step the optimizer, add noise to live units, and prune on schedule.

        A ``closure`` is evaluated once, before the step: the noise needs the gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        super().step()
        return loss

    def before_step(self) -> None:
        """Note the live entries (a nonzero loss gradient) that the noise will go to, then add
        the penalty's gradient (in its subgradient form)."""
        sigma = self.sigma
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._noise = Noise(sigma, params, [p.grad != 0 for p in params]) if sigma else None
        super().before_step()

    def _stepped(self) -> Pruning | None:
        """Add the noise to the live entries, and prune on schedule."""
        if self._noise is not None:
            with torch.no_grad():
                for p, mask in zip(self._noise.params, self._noise.live, strict=True):
                    p.add_(torch.randn(p.shape, generator=self._generator(p.device), device=p.device,
                                       dtype=p.dtype) * mask, alpha=self._noise.sigma)
            self._noise = None
        if self.steps == self.total_steps or (self.prune_every and self.steps % self.prune_every == 0):
            return self.prune()
        return None

    def _set_graph(self, graph: ChannelGraph) -> None:
        super()._set_graph(graph)
        params = dict(graph.module.named_parameters())
        shift_of = {sc.weight: sc.bias for sc in graph.propagation.scales.values()}
        shifts = {name: params.get(shift_of.get(name)) for name in self.scales}
        #: what "l2+" pushes down: the free scales and the shifts beside them
        self._positive = list(self.scales.values()) + [
            (shifts[name], mask) for name, (_, mask) in self.scales.items()
            if shifts[name] is not None and shifts[name].shape == mask.shape]

    def _penalty_gradient(self, lam: float) -> None:
        if self.regularization == "l1":
            super()._penalty_gradient(lam)
        elif lam:
            with torch.no_grad():
                for p, mask in self._positive:
                    if p.grad is not None:
                        p.grad.add_(lam * p.clamp(min=0) * mask)

    def _penalty_proximal(self, lam: float) -> None:
        if self.regularization == "l1":
            super()._penalty_proximal(lam)
        elif lam:
            lr = self._learning_rates()
            with torch.no_grad():
                for p, mask in self._positive:
                    p.copy_(torch.where(p > 0, p / (1 + lr[id(p)] * lam * mask), p))

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[key]

    # ---- pruning -----------------------------------------------------------------------
    def alive(self) -> dict[str, np.ndarray]:
        """Alive masks of the current network on the death set (rank 0's under DDP)."""
        return shared(lambda: activation_liveliness(self.graph, self.death_set, self.epsilon,
                                                            self.fraction))

    def prune(self) -> Pruning | None:
        """Remove the channels that are dead on the death set now (None if none can go)."""
        alive = self.alive()
        graph: ChannelGraph = self.graph
        p = plan(graph, alive, target=None, scheme="prune")
        removed = sum(d.width - d.new_width for d in p.dims.values())
        self.log.append({"step": self.steps, "dead": int(sum((~a).sum() for a in alive.values())),
                         "removed": removed})
        if not removed:
            return None
        before = {m: int(graph.count(m)) for m in ("params", "flops")}
        surgery = rewrite(graph, p, scheme="prune", fold=False)   # dead channels emit zeros
        self.apply_surgery(surgery)
        pruning = Pruning(self.steps, self.log[-1]["dead"], removed, before["params"],
                          int(self.graph.count("params")), before["flops"], int(self.graph.count("flops")),
                          {n: d.width for n, d in p.dims.items()},
                          {n: d.new_width for n, d in p.dims.items()}, surgery)
        self.prunings.append(pruning)
        if self.on_prune:
            self.on_prune(pruning)
        return pruning

    # ---- checkpoints -------------------------------------------------------------------
    def _state(self) -> dict:
        return {"prunings": [{f.name: getattr(p, f.name) for f in fields(p) if f.name != "surgery"}
                             for p in self.prunings],
                "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def _load_state(self, data: dict) -> None:
        generators = {}
        for key, state in data["generators"].items():
            generators[key] = torch.Generator(key)
            generators[key].set_state(state)
        self.prunings, self._generators = [build(Pruning, p) for p in data["prunings"]], generators
