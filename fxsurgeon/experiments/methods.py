"""The methods ``fxsurgeon train`` compares, each a small class behind one protocol:
its optimizer wrapper, its learning-rate schedule, what it does after an epoch and the
metrics it logs.

The state a method changes between epochs is the run's
:class:`~fxsurgeon.experiments.state.Run` (checkpointed with it).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import fields

import torch

from ..judging.liveliness import liveliness, smallest, smallest_filters
from ..persistence.fileformat import build, schema_of
from ..planning.planner import plan
from ..surgery.rewriter import rewrite
from ..training.base import SurgicalTraining, one_per_surgery
from ..training.demp import DemP, Pruning
from ..training.rejuvenation import NeuralRejuvenation
from .state import Run


class PlainTraining(SurgicalTraining):
    """The baselines' wrapper: an optional L1 on the free scales (``lam``) and pruning on
    request (:meth:`prune`), no event of its own."""

    FORMAT = "fxsurgeon.plain/1"
    SCHEMA = {**SurgicalTraining.SCHEMA, "lam": float, "prunings": list[schema_of(Pruning)]}
    CHECKS = (*SurgicalTraining.CHECKS,
              ("lam", lambda w, d: d["lam"] == (0.0 if d["prunings"] else w.lam),
               "this wrapper's lam before its pruning, 0 after"),
              ("prunings", lambda w, d: one_per_surgery(d["prunings"], d),
               "one per surgery of its history, at its steps in order"))

    def __init__(self, model, example_inputs, optimizer, lam: float = 0.0, sparsity: str = "auto"):
        super().__init__(model, example_inputs, optimizer, sparsity=sparsity)
        self.lam = lam
        self.prunings: list[Pruning] = []

    @property
    def surgeries(self) -> list[Pruning]:
        return self.prunings

    def prune(self, alive: dict) -> None:
        """Remove the channels ``alive`` calls dead as the pruning papers do: dropped, not
        folded (they are small, not constant); the L1 stops."""
        graph = self.graph
        before = {m: int(graph.count(m)) for m in ("params", "flops")}
        p = plan(graph, alive, target=None, scheme="prune")
        surgery = rewrite(graph, p, scheme="prune", fold=False)
        self.apply_surgery(surgery)
        dead, removed = int(sum((~a).sum() for a in alive.values())), sum(d.width - d.new_width
                                                                          for d in p.dims.values())
        self.prunings.append(Pruning(self.steps, dead, removed, before["params"],
                                     int(self.graph.count("params")), before["flops"],
                                     int(self.graph.count("flops")), {n: d.width for n, d in p.dims.items()},
                                     {n: d.new_width for n, d in p.dims.items()}, surgery))
        self.lam = 0.0

    def _state(self) -> dict:
        return {"lam": self.lam, "prunings": [{f.name: getattr(p, f.name) for f in fields(p)
                                               if f.name != "surgery"} for p in self.prunings]}

    def _load_state(self, data: dict) -> None:
        self.lam, self.prunings = data["lam"], [build(Pruning, p) for p in data["prunings"]]


class Method:
    """Plain training on the recipe's schedule from the first epoch (the baseline)."""

    searches = False        # a constant LR until the search ends (NR), then the schedule
    pruning = False         # its aim is sparsity (the sparsity plot)
    prunes_then_tunes = False   # prunes once its schedule is done, then fine-tunes

    def __init__(self, recipe):
        self.recipe = recipe

    def held_out(self) -> int:
        """Training samples kept out of training (DemP's held-out death set)."""
        return 0

    def wrapper(self, model, example, optimizer, steps_per_epoch: int) -> SurgicalTraining:
        return PlainTraining(model, example, optimizer)

    def total_epochs(self) -> int | None:
        """The run's length, when known before it starts (the progress bar's)."""
        return self.recipe.epochs

    def lr_factor(self, epoch: int, run: Run) -> float:
        """The LR multiplier at ``epoch``: 1 before ``run.start``, then the recipe's
        cosine, or its steps (×0.1 at each of ``lr_steps`` epochs after the start)."""
        if run.start is None or epoch < run.start:
            return 1.0
        t = min(epoch - run.start, run.length)
        if self.recipe.lr_steps is not None:
            return 0.1 ** sum(t >= s for s in self.recipe.lr_steps)
        return 0.5 * (1 + math.cos(math.pi * t / run.length))

    def on_batch(self, x: torch.Tensor) -> None:
        """Called with every training batch's inputs, before its step."""

    def after_epoch(self, wrapper, run: Run, surgeries_before: int) -> None:
        """Update ``run`` once ``run.epoch`` is done: by default the run is done when its
        schedule is."""
        run.done = run.start is not None and run.epoch - run.start >= run.length

    def resumed(self, wrapper, run: Run) -> None:
        """Bring a wrapper just loaded from a checkpoint to where ``run`` stands."""

    def metrics(self, wrapper) -> dict:
        return {"utilization": wrapper.graph.utilization(liveliness(wrapper.graph), self.recipe.metric)}


class FineTuned(Method):
    """Prune once the schedule is done, then fine-tune on a fresh cosine; what is pruned
    is :meth:`dead`'s choice."""

    pruning = True
    prunes_then_tunes = True

    def total_epochs(self) -> int:
        return self.recipe.epochs + self.recipe.finetune_epochs

    def dead(self, graph) -> dict:
        raise NotImplementedError

    def after_epoch(self, wrapper, run, surgeries_before):
        super().after_epoch(wrapper, run, surgeries_before)
        if run.done and not run.pruned:
            wrapper.prune(self.dead(wrapper.graph))
            run.start, run.length, run.pruned = run.epoch, self.recipe.finetune_epochs, True
            run.done = self.recipe.finetune_epochs == 0


class Slimming(FineTuned):
    """Network Slimming: L1 on γ for the schedule, then the smallest |γ| go."""

    def wrapper(self, model, example, optimizer, steps_per_epoch):
        return PlainTraining(model, example, optimizer, lam=self.recipe.slimming_lambda,
                             sparsity=self.recipe.sparsity)

    def dead(self, graph):
        return smallest(graph, self.recipe.prune_ratio)


class Magnitude(FineTuned):
    """Magnitude pruning: each layer's filters with the smallest L1 norm go."""

    def dead(self, graph):
        return smallest_filters(graph, self.recipe.prune_ratio)


class RecentBatches:
    """The inputs of the last ``size`` training batches: DemP's death set drawn from
    training, as the authors' code does. Re-iterable, and never reports a length (it is
    empty until the first batch)."""

    def __init__(self, size: int):
        self.batches: deque = deque(maxlen=size)

    def add(self, x: torch.Tensor) -> None:
        self.batches.append((x.detach(),))

    def __iter__(self):
        return iter(list(self.batches))


class DemPMethod(Method):
    """DemP: prunes as it trains, on a death set of the most recent training batches
    (``death_set: "train"``) or of samples held out of training (``"held-out"``)."""

    pruning = True

    def __init__(self, recipe):
        super().__init__(recipe)
        self.recent = RecentBatches(math.ceil(recipe.death_samples / recipe.batch_size))
        self.held: list = []            # the held-out batches, given by the training loop

    def held_out(self) -> int:
        return self.recipe.death_samples if self.recipe.death_set == "held-out" else 0

    def on_batch(self, x):
        if self.recipe.death_set == "train":
            self.recent.add(x)

    def wrapper(self, model, example, optimizer, steps_per_epoch):
        r = self.recipe
        death = self.recent if r.death_set == "train" else self.held
        steps = r.epochs * steps_per_epoch
        return DemP(model, example, optimizer, death, total_steps=steps, regularization=r.demp_regularization,
                    reg_peak=r.demp_reg, noise_peak=r.demp_noise,
                    prune_every=r.demp_prune_every or steps_per_epoch, epsilon=r.epsilon, seed=r.seed,
                    sparsity=r.sparsity)

    def metrics(self, wrapper):
        return {"sigma": wrapper.sigma}




class Rejuvenation(Method):
    """Neural Rejuvenation in ``scheme``: a search at a constant LR until the event budget
    (``events``) is spent or ``search_epochs`` have passed, then the full schedule."""

    searches = True
    scheme = "nr"

    def total_epochs(self):
        return None

    def wrapper(self, model, example, optimizer, steps_per_epoch):
        return self.nr_class(model, example, optimizer, **self.arguments())

    nr_class = NeuralRejuvenation

    def arguments(self) -> dict:
        """NeuralRejuvenation's keyword arguments."""
        r = self.recipe
        return dict(metric=r.metric, threshold=r.threshold, target=r.target, scheme=self.scheme,
                    rescale=r.rescale, check_every=r.check_every, delta_r=r.delta_r,
                    delta_lambda=r.delta_lambda, seed=r.seed, max_events=r.events, fixed=r.fixed,
                    sparsity=r.sparsity, round_to=r.round_to)

    def after_epoch(self, wrapper, run, surgeries_before):
        if self.recipe.check_every is None:
            wrapper.check()
        spent = self.recipe.events is not None and len(wrapper.events) >= self.recipe.events
        if run.start is None and (spent or run.epoch >= self.recipe.search_epochs):
            run.start = run.epoch
            wrapper.end_search()
        super().after_epoch(wrapper, run, surgeries_before)

    def resumed(self, wrapper, run):
        if run.start is not None:
            wrapper.end_search()

    def metrics(self, wrapper):
        return {"utilization": wrapper.utilization()}


class CrossRemoved(Rejuvenation):
    """NR-CR: survivors and new channels in separate blocks."""

    scheme = "cr"


class CrossAttention(Rejuvenation):
    """NR-CA: the blocks attend to each other."""

    scheme = "ca"


class _PruneAtEvent(NeuralRejuvenation):
    """NR's search, whose event only removes the dead channels (their constant output
    folded into the consumers: the function is kept) and reallocates nothing."""

    def _plan(self, alive, current):
        return plan(self.graph, alive, metric=self.metric, target=None, scheme="prune", fixed=self.fixed)


class _InPlaceEvent(NeuralRejuvenation):
    """NR's search, whose event gives every dimension back its width: the dead channels
    are replaced by as many new ones, initialised as NR's (no reallocation)."""

    def _plan(self, alive, current):
        return plan(self.graph, alive, metric=self.metric, scheme=self.scheme, fixed=self.fixed,
                    in_place=True)


class InPlace(Rejuvenation):
    """The ablation NR-IP, "NR without reallocation" (Table 1 of the paper, whose rows all
    keep the parameter count): NR's search, then at the event the dead channels are
    re-initialised in place, at the same widths (scheme nr: the new channels' links to
    the survivors start at zero), and the network trains on."""

    nr_class = _InPlaceEvent


class PrunedOnly(Rejuvenation):
    """NR's search, the dead channels removed at the event with no reallocation, and the
    pruned network trained on (what ``nr-ip`` meant before it was in place)."""

    nr_class = _PruneAtEvent


class FromScratch(Rejuvenation):
    """The ablation NR-FS: NR finds the architecture; at its (last) event every weight is
    re-initialised and the optimizer's state cleared, and that network trains from
    scratch on the full schedule."""

    def after_epoch(self, wrapper, run, surgeries_before):
        searching = run.start is None
        super().after_epoch(wrapper, run, surgeries_before)
        if searching and run.start is not None and wrapper.events:
            for m in wrapper.network.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            wrapper.optimizer.state.clear()


#: method name -> its class
METHODS = {"baseline": Method, "slimming": Slimming, "magnitude": Magnitude, "demp": DemPMethod,
           "nr": Rejuvenation, "nr-cr": CrossRemoved, "nr-ca": CrossAttention, "nr-ip": InPlace,
           "nr-prune": PrunedOnly,
           "nr-fs": FromScratch}
