"""Training runs for ``fxsurgeon train``: baseline, Neural Rejuvenation, DemP, and the
pruning baselines Network Slimming and magnitude (filter-norm) pruning.

NR's recipe follows its paper: SGD with momentum, λ adapted every epoch (Δλ = 5e-5,
Δr = 0.01), T_r = 0.5, one event; the learning rate stays constant until the event,
then the full cosine schedule of ``epochs`` runs. The other methods run the cosine
schedule from the start; slimming and magnitude pruning then prune and fine-tune on a
fresh cosine; DemP prunes as it goes, on a death set held out of the training data.
Every epoch appends one JSON line to the log (and TensorBoard scalars if asked) and,
given a checkpoint file, saves the run there, so that an interrupted run continues.
"""
from __future__ import annotations

import json
import math
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .checkpoint import MISFIT
from .data import Data
from .demp import REGULARIZATIONS, DemP, Pruning
from .errors import FxSurgeonError, one_line
from .fileformat import check_fields, problem
from .liveliness import smallest, smallest_filters
from .planner import plan
from .rejuvenation import Event, NeuralRejuvenation
from .rewriter import rewrite
from .surgical import SurgicalTraining

METHODS = ("baseline", "slimming", "magnitude", "demp", "nr", "nr-cr", "nr-ca")
PRUNING = ("slimming", "magnitude", "demp")     # the methods whose aim is sparsity


@dataclass
class Recipe:
    """Every hyper-parameter of a run (paper defaults; the demo overrides a few); what
    each one means is in :data:`HELP`."""

    epochs: int = 160
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    metric: str = "params"
    target: float = 1.0
    threshold: float = 0.5
    delta_r: float = 0.01
    delta_lambda: float = 5e-5
    check_every: int | None = None
    search_epochs: int = 160
    rescale: bool = True
    slimming_lambda: float = 1e-4
    prune_ratio: float = 0.5
    finetune_epochs: int = 40
    demp_reg: float = 1e-3
    demp_noise: float = 1e-3
    demp_regularization: str = "l1"
    demp_prune_every: int | None = None
    death_samples: int = 128
    epsilon: float = 0.0
    seed: int = 0

    def __post_init__(self):
        hints = typing.get_type_hints(Recipe)
        for f in fields(self):
            value = getattr(self, f.name)
            found = problem(value, hints[f.name], f.name)
            if found:
                raise FxSurgeonError(f"recipe: {found}")
            test, wanted = _LIMITS.get(f.name, (None, ""))
            if test and value is not None and not test(value):
                raise FxSurgeonError(f"recipe: {f.name} must be {wanted}, not {value!r}")


#: what each recipe setting means (the command line's help)
HELP = {
    "epochs": "epochs of the cosine schedule: the whole run, or what follows NR's event",
    "batch_size": "training batch size",
    "lr": "SGD learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "metric": "NR's resource: params or flops",
    "target": "NR's budget: this times the original model's cost",
    "threshold": "NR's T_r: an event fires when utilization falls below it",
    "delta_r": "NR's Δr: λ grows at each check where utilization fell by less",
    "delta_lambda": "NR's Δλ: what λ grows by",
    "check_every": "NR: optimizer steps between checks",
    "search_epochs": "NR: at most this many epochs at constant LR before the event",
    "rescale": "NR: neural rescaling at the event",
    "slimming_lambda": "Network Slimming's L1 on γ",
    "prune_ratio": "slimming, magnitude: the share of channels removed",
    "finetune_epochs": "slimming, magnitude: epochs of fine-tuning after pruning",
    "demp_reg": "DemP: peak λ of the one-cycle regularization",
    "demp_noise": "DemP: peak σ of the noise on live units",
    "demp_regularization": "DemP: l1 (on the scales) or l2+ (positive part of scales and shifts)",
    "demp_prune_every": "DemP: optimizer steps between prunings",
    "death_samples": "DemP: training samples held out as the death set",
    "epsilon": "DemP: dead means |activation| <= epsilon on the whole death set",
    "seed": "seed of the model's initialisation, the data order and every surgery",
}

#: what each recipe setting must be, beyond its type
_LIMITS = {name: (test, wanted) for names, test, wanted in [
    (("epochs", "batch_size", "search_epochs", "check_every", "demp_prune_every", "death_samples"),
     lambda v: v >= 1, "a whole number of at least 1"),
    (("finetune_epochs",), lambda v: v >= 0, "a whole number of at least 0"),
    (("lr", "target"), lambda v: v > 0, "a positive number"),
    (("weight_decay", "delta_r", "delta_lambda", "slimming_lambda", "demp_reg", "demp_noise", "epsilon"),
     lambda v: v >= 0, "a number of at least 0"),
    (("momentum", "prune_ratio"), lambda v: 0 <= v < 1, "a number in [0, 1)"),
    (("metric",), lambda v: v in ("params", "flops"), "params or flops"),
    (("demp_regularization",), lambda v: v in REGULARIZATIONS, " or ".join(REGULARIZATIONS)),
] for name in names}


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
    """JSON lines (appended, flushed per record), optional TensorBoard and a progress bar,
    one record per epoch."""

    def __init__(self, path: Path | None, method: str, seed: int, tensorboard: bool, progress: bool,
                 total: int | None, initial: int = 0):
        self.file = open(path, "a") if path else None   # noqa: SIM115 - closed in close()
        self.method, self.seed = method, seed
        self.writer = None
        if tensorboard and path:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(path.parent / "tensorboard" / method))
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=method, unit="epoch", leave=False)

    def write(self, record: dict) -> None:
        record = {"method": self.method, "seed": self.seed, **record}
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.writer is not None and "epoch" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "seed"):
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


#: the state of a run between epochs, as a checkpoint's ``extra`` holds it
_RUN = {"epoch": int, "start": int | None, "length": int, "pruned": bool, "done": bool, "seconds": float,
        "history": list[dict]}


def train(model: torch.nn.Module, data: Data, method: str, recipe: Recipe, log: Path | None = None,
          tensorboard: bool = False, progress: bool = True,
          checkpoint: Path | None = None) -> tuple[torch.nn.Module, Result]:
    """Train ``model`` by ``method`` (one of :data:`METHODS`); returns the trained
    network and its :class:`Result`. With ``checkpoint`` the run saves itself there after
    every epoch, and continues from it if it exists (a finished run is only read back)."""
    torch.manual_seed(recipe.seed)
    train_loader, test_loader, death = _loaders(data, recipe, recipe.death_samples if method == "demp" else 0)
    example = torch.zeros(data.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    wrapper = _wrapper(method, model, example, opt, recipe, death, recipe.epochs * len(train_loader))
    original = wrapper.graph.count("params")
    rejuvenating = method.startswith("nr")
    fine_tuned = method in ("slimming", "magnitude")
    # constant LR until NR's event, then a cosine over `length` epochs from `start`
    run = {"epoch": 0, "start": None if rejuvenating else 0, "length": recipe.epochs, "pruned": False,
           "done": False, "seconds": 0.0, "history": []}

    def lr_factor(e: int) -> float:
        if run["start"] is None or e < run["start"]:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(e - run["start"], run["length"]) / run["length"]))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    if checkpoint is not None and checkpoint.exists():
        run.update(_resume(wrapper, sched, train_loader.generator, checkpoint))
        if rejuvenating and run["start"] is not None:
            wrapper.max_events = len(wrapper.events)
    total = None if rejuvenating else recipe.epochs + (recipe.finetune_epochs if fine_tuned else 0)
    logger = _Logger(log, method, recipe.seed, tensorboard, progress and not run["done"], total, run["epoch"])
    net = wrapper.model
    net.train()
    try:
        while not run["done"]:
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
            run["epoch"] = epoch = run["epoch"] + 1
            seconds = time.perf_counter() - tick
            fired = len(wrapper.surgeries) > events
            if rejuvenating and run["start"] is None and (fired or epoch >= recipe.search_epochs):
                run["start"] = epoch           # the event fired (or never will): full schedule
                wrapper.max_events = len(wrapper.events)
            done = run["start"] is not None and epoch - run["start"] >= run["length"]
            if done and fine_tuned and not run["pruned"]:
                _prune(wrapper, smallest(wrapper.graph, recipe.prune_ratio) if method == "slimming"
                       else smallest_filters(wrapper.graph, recipe.prune_ratio))
                run.update(start=epoch, length=recipe.finetune_epochs, pruned=True)   # a fresh cosine
                done = recipe.finetune_epochs == 0
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
            run["history"].append(record)
            logger.write(record)
            run.update(done=done, seconds=run["seconds"] + time.perf_counter() - tick)
            if checkpoint is not None:
                wrapper.save(checkpoint, run=run, scheduler=sched.state_dict(),
                             shuffle=train_loader.generator.get_state(), rng=torch.get_rng_state())
    finally:
        logger.close()
    result = Result(method, recipe.seed, int(wrapper.graph.count("params")),
                    int(wrapper.graph.count("flops")), run["history"][-1]["accuracy"], run["epoch"],
                    run["seconds"], run["history"], list(wrapper.surgeries))
    return wrapper.model.network, result


def _resume(wrapper: SurgicalTraining, sched, shuffle: torch.Generator, checkpoint: Path) -> dict:
    """Load a run's checkpoint into its fresh wrapper, scheduler, shuffling and torch's
    generator; returns the run's state."""
    extra = wrapper.load(checkpoint)
    try:
        check_fields(extra, {"run": _RUN, "scheduler": dict, "shuffle": torch.Tensor, "rng": torch.Tensor})
        sched.load_state_dict(extra["scheduler"])
        shuffle.set_state(extra["shuffle"])
        torch.set_rng_state(extra["rng"])
    except MISFIT as err:
        raise FxSurgeonError(f"cannot resume from {str(checkpoint)!r}: its run state is damaged: "
                             f"{one_line(err)}") from None
    return extra["run"]


def _prune(nr: NeuralRejuvenation, alive: dict) -> None:
    """The pruning baselines' step: remove the channels ``alive`` calls dead (for Network
    Slimming, those its L1 drove down; for magnitude pruning, the smallest filters), as
    their papers do: dropped, not folded (they are small, not constant), and stop the L1."""
    graph = nr.graph
    nr.apply_surgery(rewrite(graph, plan(graph, alive, target=None, scheme="prune"), fold=False))
    nr.lam = 0.0
