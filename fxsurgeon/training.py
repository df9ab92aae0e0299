"""Training runs for ``fxsurgeon train``: baseline, Neural Rejuvenation, DemP, and the
pruning baselines Network Slimming and magnitude (filter-norm) pruning.

NR's recipe follows its paper: SGD with momentum, λ adapted every epoch (Δλ = 5e-5,
Δr = 0.01), T_r = 0.5, one event; the learning rate stays constant until the event,
then the full cosine schedule of ``epochs`` runs. The other methods run the cosine
schedule from the start; slimming and magnitude pruning then prune and fine-tune on a
fresh cosine; DemP prunes as it goes, on a death set held out of the training data.
Every epoch writes one JSON line (and TensorBoard scalars if asked).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .data import Data
from .demp import DemP, Pruning
from .liveliness import smallest, smallest_filters
from .planner import plan
from .rejuvenation import Event, NeuralRejuvenation
from .rewriter import rewrite
from .surgical import SurgicalTraining

METHODS = ("baseline", "slimming", "magnitude", "demp", "nr", "nr-cr", "nr-ca")
PRUNING = ("slimming", "magnitude", "demp")     # the methods whose aim is sparsity


@dataclass
class Recipe:
    """Every hyper-parameter of a run (paper defaults; the demo overrides a few)."""

    epochs: int = 160                 # the schedule: the whole run, or after NR's event
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    metric: str = "params"            # NR's resource
    target: float = 1.0               # budget: target x the original cost
    threshold: float = 0.5            # T_r
    delta_r: float = 0.01
    delta_lambda: float = 5e-5
    check_every: int | None = None    # steps between checks (None: every epoch)
    search_epochs: int = 160          # NR: at most this long at constant LR before the event
    rescale: bool = True
    slimming_lambda: float = 1e-4     # Network Slimming's L1 on γ
    prune_ratio: float = 0.5          # slimming, magnitude: the share of channels that go
    finetune_epochs: int = 40         # ... then fine-tuning
    demp_reg: float = 1e-3            # DemP: peak λ of the one-cycle regularization
    demp_noise: float = 1e-3          # ... peak σ of the noise on live units
    demp_regularization: str = "l1"   # ... "l1" on scales or "l2+" (positive part)
    demp_prune_every: int | None = None   # ... steps between prunings (None: every epoch)
    death_samples: int = 128          # ... training samples held out as the death set
    epsilon: float = 0.0              # ... quasi-dead: |activation| <= epsilon
    seed: int = 0


@dataclass
class Result:
    """What a run ends with."""

    method: str
    seed: int
    params: int
    flops: int
    accuracy: float
    epochs: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    events: list[Event | Pruning] = field(default_factory=list)    # NR's events or DemP's prunings

    @property
    def training_seconds(self) -> float:
        """The training part of every epoch (surgery included, evaluation not)."""
        return sum(h["seconds"] for h in self.history)


def evaluate(model: torch.nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy, in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was)
    return correct / total


class _Logger:
    """JSON lines, optional TensorBoard and a progress bar, one record per epoch."""

    def __init__(self, path: Path | None, method: str, tensorboard: bool, progress: bool, total: int):
        self.file = open(path, "a") if path else None   # noqa: SIM115 - closed in close()
        self.method = method
        self.writer = None
        if tensorboard and path:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(path.parent / "tensorboard" / method))
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=method, unit="epoch", leave=False)

    def write(self, record: dict) -> None:
        record = {"method": self.method, **record}
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.writer is not None and "epoch" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(f"{self.method}/{k}", v, record["epoch"])
        if self.bar is not None and "accuracy" in record:
            self.bar.update(1)
            self.bar.set_postfix(acc=f"{record['accuracy']:.3f}", sparsity=f"{record['sparsity']:.2f}")

    def close(self) -> None:
        for h in (self.file, self.writer, self.bar):
            if h is not None:
                h.close()


def _loaders(data: Data, recipe: Recipe, hold_out: int) -> tuple[DataLoader, DataLoader, list]:
    """Training and test loaders, and the first ``hold_out`` training samples (by a seeded
    permutation) as batches of a death set, kept out of training."""
    g = torch.Generator().manual_seed(recipe.seed)
    train_set = data.train
    death: list = []
    if hold_out:
        order = torch.randperm(len(train_set), generator=g).tolist()
        held = Subset(train_set, order[:hold_out])
        train_set = Subset(train_set, order[hold_out:])
        death = list(DataLoader(held, recipe.batch_size))
    return (DataLoader(train_set, recipe.batch_size, shuffle=True, generator=g, drop_last=True),
            DataLoader(data.test, 256), death)


def _wrapper(method: str, model: torch.nn.Module, example, opt, recipe: Recipe, death: list,
             steps: int) -> SurgicalTraining:
    """The optimizer wrapper of ``method``: DemP, or NeuralRejuvenation (the other methods
    use it for its L1 and its surgery, with no event)."""
    if method == "demp":
        return DemP(model, example, opt, death, total_steps=steps, regularization=recipe.demp_regularization,
                    reg_peak=recipe.demp_reg, noise_peak=recipe.demp_noise,
                    prune_every=recipe.demp_prune_every or steps // recipe.epochs, epsilon=recipe.epsilon,
                    seed=recipe.seed)
    rejuvenating = method.startswith("nr")
    nr = NeuralRejuvenation(
        model, example, opt, metric=recipe.metric, threshold=recipe.threshold if rejuvenating else -1,
        target=recipe.target, scheme={"nr": "nr", "nr-cr": "cr", "nr-ca": "ca"}.get(method, "nr"),
        rescale=recipe.rescale, check_every=recipe.check_every, delta_r=recipe.delta_r,
        delta_lambda=recipe.delta_lambda if rejuvenating else 0.0, seed=recipe.seed,
        max_events=1 if rejuvenating else 0)
    if method == "slimming":
        nr.lam = recipe.slimming_lambda
    return nr


def train(model: torch.nn.Module, data: Data, method: str, recipe: Recipe, log: Path | None = None,
          tensorboard: bool = False, progress: bool = True) -> tuple[torch.nn.Module, Result]:
    """Train ``model`` by ``method`` (one of :data:`METHODS`); returns the trained
    network and its :class:`Result`."""
    torch.manual_seed(recipe.seed)
    train_loader, test_loader, death = _loaders(data, recipe, recipe.death_samples if method == "demp" else 0)
    example = torch.zeros(data.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    wrapper = _wrapper(method, model, example, opt, recipe, death, recipe.epochs * len(train_loader))
    rejuvenating = method.startswith("nr")
    fine_tuned = method in ("slimming", "magnitude")
    # constant LR until NR's event, then a cosine over `length` epochs from `start`
    phase = {"start": None if rejuvenating else 0, "length": recipe.epochs}

    def lr_factor(e: int) -> float:
        if phase["start"] is None or e < phase["start"]:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(e - phase["start"], phase["length"]) / phase["length"]))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    total = None if rejuvenating else recipe.epochs + (recipe.finetune_epochs if fine_tuned else 0)
    logger = _Logger(log, method, tensorboard, progress, total)
    original = wrapper.graph.count("params")
    history, t0, epoch, pruned = [], time.perf_counter(), 0, False
    net = wrapper.model
    net.train()
    try:
        while True:
            tick = time.perf_counter()
            loss_sum, n, events = 0.0, 0, len(wrapper.surgeries)
            for x, y in train_loader:
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                wrapper.step()
                loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
            if rejuvenating and recipe.check_every is None:
                wrapper.check()
            epoch += 1
            seconds = time.perf_counter() - tick
            fired = len(wrapper.surgeries) > events
            if rejuvenating and phase["start"] is None and (fired or epoch >= recipe.search_epochs):
                phase["start"] = epoch         # the event fired (or never will): full schedule
                wrapper.max_events = len(wrapper.events)
            done = phase["start"] is not None and epoch - phase["start"] >= phase["length"]
            if done and fine_tuned and not pruned:
                _prune(wrapper, smallest(wrapper.graph, recipe.prune_ratio) if method == "slimming"
                       else smallest_filters(wrapper.graph, recipe.prune_ratio))
                phase.update(start=epoch, length=recipe.finetune_epochs)   # fine-tune on a fresh cosine
                done, pruned = recipe.finetune_epochs == 0, True
            sched.step()
            for e in wrapper.surgeries[events:]:
                logger.write({"epoch": epoch, "event": e.summary()})
            params = wrapper.graph.count("params")
            record = {"epoch": epoch, "step": wrapper.steps, "lr": opt.param_groups[0]["lr"],
                      "loss": loss_sum / max(n, 1), "accuracy": evaluate(net, test_loader),
                      "params": params, "flops": wrapper.graph.count("flops"),
                      "sparsity": 1 - params / original, "lambda": wrapper.lam, "seconds": seconds}
            if method == "demp":
                record["sigma"] = wrapper.sigma
            else:
                record["utilization"] = wrapper.utilization()
            history.append(record)
            logger.write(record)
            if done:
                break
    finally:
        logger.close()
    result = Result(method, recipe.seed, int(wrapper.graph.count("params")),
                    int(wrapper.graph.count("flops")), history[-1]["accuracy"], epoch,
                    time.perf_counter() - t0, history, list(wrapper.surgeries))
    return wrapper.model.network, result


def _prune(nr: NeuralRejuvenation, alive: dict) -> None:
    """The pruning baselines' step: remove the channels ``alive`` calls dead (for Network
    Slimming, those its L1 drove down; for magnitude pruning, the smallest filters), as
    their papers do: dropped, not folded (they are small, not constant), and stop the L1."""
    graph = nr.graph
    nr.apply_surgery(rewrite(graph, plan(graph, alive, target=None, scheme="prune"), fold=False))
    nr.lam = 0.0
