"""Training runs for ``fxsurgeon train``: one loop for every method of
:mod:`fxsurgeon.experiments.methods` (baseline, Neural Rejuvenation and its ablations, DemP, Network
Slimming, magnitude pruning), on CPU or CUDA, optionally in mixed precision.

NR's recipe follows its paper: SGD with momentum, λ adapted every epoch (Δλ = 5e-5,
Δr = 0.01), T_r = 0.5; the learning rate stays constant while NR searches (until its
``events`` have fired, or ``search_epochs``), then the full schedule of ``epochs`` runs
(a cosine, or steps at ``lr_steps``). The other methods run the schedule from the
start. Every epoch appends one JSON line to the log (and TensorBoard scalars if asked)
and, given a checkpoint file, saves the run there, so that an interrupted run continues.
"""
from __future__ import annotations

import json
import math
import os
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..errors import FxSurgeonError, NoSpaceError, one_line, writing
from ..persistence.checkpoint import MISFIT
from ..persistence.fileformat import check_fields, problem
from ..planning.planner import MAX_TARGET
from ..surgery.rescaling import GOALS as RESCALE_GOALS
from ..training.base import SurgicalTraining
from ..training.demp import REGULARIZATIONS, Pruning
from ..training.rejuvenation import Event
from .data import Data
from .devices import Hardware, Placement
from .methods import METHODS as _CLASSES
from .methods import FineTuned, Method
from .outdir import open_file

METHODS = tuple(_CLASSES)
PRUNING = tuple(name for name, cls in _CLASSES.items() if cls.pruning)   # their aim is sparsity
SEARCHING = tuple(name for name, cls in _CLASSES.items() if cls.searches)  # NR and its ablations


@dataclass
class Recipe:
    """Every hyper-parameter of a run (paper defaults; the demo overrides a few); what
    each one means is in :data:`HELP`."""

    epochs: int = 160
    batch_size: int = 64
    optimizer: str = "sgd"
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
    rescale: bool | str = True
    events: int | None = 1
    fixed: str | None = None
    sparsity: str = "auto"
    round_to: int = 8
    lr_steps: list[int] | None = None
    equal_epochs: bool = True
    slimming_lambda: float = 1e-4
    prune_ratio: float = 0.5
    finetune_epochs: int = 40
    demp_reg: float = 1e-3
    demp_noise: float = 1e-3
    demp_regularization: str = "l1"
    demp_prune_every: int | None = None
    death_set: str = "held-out"
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
    "epochs": "epochs of the LR schedule: the whole run, or what follows NR's search",
    "batch_size": "training batch size",
    "optimizer": "sgd (with momentum, the paper's) or adamw (transformers, ConvNeXts)",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (AdamW's decoupled)",
    "metric": "NR's resource: params or flops",
    "target": "NR's budget: this times the original model's cost",
    "threshold": "NR's T_r: an event fires when utilization falls below it",
    "delta_r": "NR's Δr: λ grows at each check where utilization fell by less",
    "delta_lambda": "NR's Δλ: what λ grows by",
    "check_every": "NR: optimizer steps between checks",
    "search_epochs": "NR: at most this many epochs at constant LR while it searches",
    "rescale": "NR: neural rescaling at the event: layer (true), paper, gamma0 or none (false); "
               "see docs/nr.md",
    "events": "NR: the search ends once this many events fired (unlimited: at search_epochs)",
    "fixed": "NR: trunk keeps residual trunks and the stem at their width, out of the L1",
    "sparsity": "NR, DemP: the L1's form: subgradient (the paper's), proximal, or auto (by optimizer)",
    "round_to": "NR: widths that grow are multiples of this (1: channel by channel, as the paper)",
    "lr_steps": "epochs after the schedule's start where the LR drops ×0.1, e.g. 30,60,90 "
                "(default: a cosine)",
    "equal_epochs": "baseline: train as many epochs as the first NR method of its seed did (search + "
                    "schedule), when both run",
    "slimming_lambda": "Network Slimming's L1 on γ",
    "prune_ratio": "slimming, magnitude: the share of channels removed",
    "finetune_epochs": "slimming, magnitude: epochs of fine-tuning after pruning",
    "demp_reg": "DemP: peak λ of the one-cycle regularization",
    "demp_noise": "DemP: peak σ of the noise on live units",
    "demp_regularization": "DemP: l1 (on the scales) or l2+ (positive part of scales and shifts)",
    "demp_prune_every": "DemP: optimizer steps between prunings",
    "death_set": "DemP: train (the latest training batches, as the authors' code) or held-out",
    "death_samples": "DemP: samples in the death set",
    "epsilon": "DemP: dead means |activation| <= epsilon on the whole death set",
    "seed": "seed of the model's initialisation, the data order and every surgery",
}

SPARSITY = ("auto", "subgradient", "proximal")
DEATH_SETS = ("train", "held-out")
SEEDS = 2 ** 63         # seeds are below it: torch.manual_seed takes them, with room for seed + k
OPTIMIZERS = ("sgd", "adamw")

#: what each recipe setting must be, beyond its type
_LIMITS = {name: (test, wanted) for names, test, wanted in [
    (("epochs", "batch_size", "search_epochs", "check_every", "demp_prune_every", "death_samples",
      "round_to"),
     lambda v: v >= 1, "a whole number of at least 1"),
    (("finetune_epochs",), lambda v: v >= 0, "a whole number of at least 0"),
    (("lr",), lambda v: v > 0, "a positive number"),
    (("target",), lambda v: 0 < v <= MAX_TARGET, f"a positive number, at most {MAX_TARGET:g}"),
    (("threshold",), lambda v: 0 < v <= 1, "in (0, 1]: an event fires when utilization falls below it"),
    (("weight_decay", "delta_r", "delta_lambda", "slimming_lambda", "demp_reg", "demp_noise", "epsilon"),
     lambda v: v >= 0, "a number of at least 0"),
    (("momentum", "prune_ratio"), lambda v: 0 <= v < 1, "a number in [0, 1)"),
    (("metric",), lambda v: v in ("params", "flops"), "params or flops"),
    (("events",), lambda v: v >= 1, "a whole number of at least 1, or null (unlimited)"),
    (("fixed",), lambda v: v == "trunk", "trunk or null"),
    (("rescale",), lambda v: v in (True, False, *RESCALE_GOALS),
     "true, false or one of " + ", ".join(RESCALE_GOALS)),
    (("sparsity",), lambda v: v in SPARSITY, " or ".join(SPARSITY)),
    (("optimizer",), lambda v: v in OPTIMIZERS, " or ".join(OPTIMIZERS)),
    (("death_set",), lambda v: v in DEATH_SETS, " or ".join(DEATH_SETS)),
    (("lr_steps",), lambda v: v == sorted(set(v)) and min(v, default=1) >= 1,
     "increasing whole numbers of at least 1"),
    (("demp_regularization",), lambda v: v in REGULARIZATIONS, " or ".join(REGULARIZATIONS)),
    (("seed",), lambda v: 0 <= v < SEEDS, "a whole number in [0, 2**63)"),
] for name in names}


@dataclass
class Result:
    """What a run ends with."""

    method: str
    seed: int
    params: int
    flops: int
    accuracy: float                     # at the last epoch
    best: float                         # the best of every epoch's
    epochs: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    events: list[Event | Pruning] = field(default_factory=list)    # NR's events or DemP's prunings

    @property
    def training_seconds(self) -> float:
        """The training part of every epoch (surgery included, evaluation not)."""
        return sum(h["seconds"] for h in self.history)


def evaluate(model: torch.nn.Module, loader: DataLoader, place: Placement | None = None) -> float:
    """Top-1 accuracy, in eval mode (the model's mode is restored), where ``place`` runs."""
    place = place or Hardware("cpu").resolve()
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad(), place.autocast():
        for x, y in loader:
            correct += int((model(place.batch(x)).argmax(1).cpu() == y).sum())
            total += len(y)
    model.train(was)
    return correct / total


def finite(value):
    """``value`` (numbers in nested dicts and lists) with every number that is not finite
    (NaN, ±inf: a diverged loss) as None, so that it is strict JSON, which has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class _Logger:
    """JSON lines (each appended whole, or not at all), optional TensorBoard and a progress
    bar, one record per epoch."""

    def __init__(self, path: Path | None, method: str, seed: int, tensorboard: bool, progress: bool,
                 total: int | None, initial: int = 0):
        self.path = path
        self.file = open_file(path, "ab", buffering=0) if path else None   # closed in close()
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
            self._append((json.dumps(finite(record), allow_nan=False) + "\n").encode())
        if self.writer is not None and "epoch" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "seed"):
                    self.writer.add_scalar(f"{self.method}/{k}", v, record["epoch"])
        if self.bar is not None and "accuracy" in record:
            self.bar.update(1)
            self.bar.set_postfix(acc=f"{record['accuracy']:.3f}", sparsity=f"{record['sparsity']:.2f}")

    def _append(self, line: bytes) -> None:
        """Append ``line`` to the log whole; a full disk leaves the log as it was."""
        start = self.file.seek(0, os.SEEK_END)
        with writing(self.path):
            try:
                while line:
                    line = line[self.file.write(line):]
            except OSError:
                self.file.truncate(start)
                raise

    def close(self) -> None:
        for h in (self.file, self.writer, self.bar):
            if h is not None:
                h.close()


def _loaders(data: Data, recipe: Recipe, hold_out: int, place: Placement) -> tuple[DataLoader, DataLoader,
                                                                                   list]:
    """Training and test loaders, and the first ``hold_out`` training samples (by a seeded
    permutation) as batches of a death set, kept out of training."""
    g = torch.Generator().manual_seed(recipe.seed)
    train_set = data.train
    death: list = []
    if hold_out:
        order = torch.randperm(len(train_set), generator=g).tolist()
        held = Subset(train_set, order[:hold_out])
        train_set = Subset(train_set, order[hold_out:])
        death = [(place.batch(x),) for x, _ in DataLoader(held, recipe.batch_size)]
    how = {"num_workers": place.workers, "pin_memory": place.pin_memory,
           "persistent_workers": place.workers > 0}
    return (DataLoader(train_set, recipe.batch_size, shuffle=True, generator=g, drop_last=True, **how),
            DataLoader(data.test, 256, **how), death)


#: the state of a run between epochs, as a checkpoint's ``extra`` holds it (of each epoch's
#: record, what the run reads back)
_EPOCH = {"epoch": int, "step": int, "accuracy": float, "sparsity": float}
_RUN = {"epoch": int, "start": int | None, "length": int, "pruned": bool, "done": bool, "seconds": float,
        "history": list[_EPOCH]}


class _Resuming(NamedTuple):
    """What a run's checkpoint is checked against: its method (and recipe), the optimizer
    steps its wrapper took and the batches of an epoch."""

    how: Method
    steps: int
    batches: int


#: what a run's state must be beyond its types: (field, test, what it must be)
_RUN_CHECKS = (
    ("epoch", lambda run, at: run["epoch"] >= 0 and
     [h["epoch"] for h in run["history"]] == list(range(1, run["epoch"] + 1)),
     "the number of epochs its history records"),
    ("history", lambda run, at: _steps_fit([h["step"] for h in run["history"]], at.steps, at.batches),
     "optimizer steps in order, at most one per batch, the last one the checkpoint's"),
    ("start", lambda run, at: run["start"] is None and at.how.searches or
     run["start"] is not None and 0 <= run["start"] <= run["epoch"],
     "an epoch up to the run's (None while NR searches)"),
    ("pruned", lambda run, at: not run["pruned"] or isinstance(at.how, FineTuned),
     "false but for a method that prunes then fine-tunes"),
    ("length", lambda run, at: run["length"] == (at.how.recipe.finetune_epochs if run["pruned"] else
                                                at.how.recipe.epochs),
     "the recipe's epochs (once pruned, its finetune_epochs)"),
    ("done", lambda run, at: not run["done"] or run["start"] is not None and
     run["epoch"] - run["start"] >= run["length"], "true once its schedule ran"),
    ("seconds", lambda run, at: run["seconds"] >= 0, "a duration"),
)


def _steps_fit(logged: list[int], steps: int, batches: int) -> bool:
    """Whether the optimizer steps each epoch's record logged are in order, at most
    ``batches`` an epoch, the last one the checkpoint's ``steps``."""
    return logged == sorted(logged) and min(logged, default=0) >= 0 and \
        steps == (logged[-1] if logged else 0) and all(s <= (i + 1) * batches for i, s in enumerate(logged))


#: what a GradScaler's state may hold that differs from a fresh one's (the rest are its settings)
_SCALER = {"scale": lambda v, fresh: problem(v, float) is None and v > 0,
           "_growth_tracker": lambda v, fresh: problem(v, int) is None and 0 <= v < fresh["growth_interval"]}


def train(model: torch.nn.Module, data: Data, method: str, recipe: Recipe, log: Path | None = None,
          tensorboard: bool = False, progress: bool = True, checkpoint: Path | None = None,
          hardware: Hardware | None = None) -> tuple[torch.nn.Module, Result]:
    """Train ``model`` by ``method`` (one of :data:`METHODS`) where ``hardware`` says
    (default: CUDA when there is one); returns the trained network and its
    :class:`Result`. With ``checkpoint`` the run saves itself there after every epoch,
    and continues from it if it exists (a finished run is only read back)."""
    if method not in _CLASSES:
        raise FxSurgeonError(f"unknown method {method!r}: use {', '.join(METHODS)}")
    how = _CLASSES[method](recipe)
    place = (hardware or Hardware()).resolve()
    torch.manual_seed(recipe.seed)
    train_loader, test_loader, death = _loaders(data, recipe, how.held_out(), place)
    if death:
        how.held = death
    model = place.model(model)
    example = place.batch(torch.zeros(data.input_shape))
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay) if recipe.optimizer == "sgd" else \
        torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    wrapper = how.wrapper(model, example, opt, len(train_loader))
    original = wrapper.graph.count("params")
    run = {"epoch": 0, "start": None if how.searches else 0, "length": recipe.epochs, "pruned": False,
           "done": False, "seconds": 0.0, "history": []}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: how.lr_factor(e, run))
    if checkpoint is not None and checkpoint.exists():
        run.update(_resume(wrapper, how, train_loader, place, checkpoint))
        sched.last_epoch = run["epoch"]       # the recipe's schedule, where the run is
        how.resumed(wrapper, run)
    saved = run["epoch"] if checkpoint is not None and checkpoint.exists() else None
    logger = _Logger(log, method, recipe.seed, tensorboard, progress and not run["done"], how.total_epochs(),
                     run["epoch"])
    net = wrapper.model
    net.train()
    try:
        while not run["done"]:
            tick = time.perf_counter()
            loss_sum, n, before = 0.0, 0, len(wrapper.surgeries)
            for x, y in train_loader:
                x, y = place.batch(x), y.to(place.device, non_blocking=place.pin_memory)
                how.on_batch(x)
                with place.autocast():
                    loss = F.cross_entropy(net(x), y)
                place.step(loss, opt, wrapper.step)
                loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
            run["epoch"] = epoch = run["epoch"] + 1
            how.after_epoch(wrapper, run, before)
            seconds = time.perf_counter() - tick
            sched.step()
            if len(wrapper.surgeries) > before:
                place.model(wrapper.network)     # a surgery's new tensors: channels-last too
            for e in wrapper.surgeries[before:]:
                logger.write({"epoch": epoch, "event": e.summary()})
            params = wrapper.graph.count("params")
            record = {"epoch": epoch, "step": wrapper.steps, "lr": opt.param_groups[0]["lr"],
                      "loss": loss_sum / max(n, 1), "accuracy": evaluate(net, test_loader, place),
                      "params": params, "flops": wrapper.graph.count("flops"),
                      "sparsity": 1 - params / original, "lambda": wrapper.lam, "seconds": seconds,
                      **how.metrics(wrapper)}
            run["history"].append(record)
            logger.write(record)
            run["seconds"] += time.perf_counter() - tick
            if checkpoint is not None:
                scaler = place.scaler.state_dict() if place.scaler else {}
                wrapper.save(checkpoint, run=run, shuffle=train_loader.generator.get_state(),
                             rng=torch.get_rng_state(), scaler=scaler)
                saved = epoch
    except NoSpaceError as err:
        raise NoSpaceError(err.path, _last_good(checkpoint, saved)) from None
    finally:
        logger.close()
    accuracies = [h["accuracy"] for h in run["history"]]
    result = Result(method, recipe.seed, int(wrapper.graph.count("params")),
                    int(wrapper.graph.count("flops")), accuracies[-1], max(accuracies), run["epoch"],
                    run["seconds"], run["history"], list(wrapper.surgeries))
    return wrapper.network, result


def _last_good(checkpoint: Path | None, epoch: int | None) -> str:
    """What a run that filled the disk leaves to continue from."""
    if checkpoint is None:
        return ""
    if epoch is None:
        return f"no checkpoint was written yet ({str(checkpoint)!r})"
    return f"the last good checkpoint, {str(checkpoint)!r} of epoch {epoch}, is kept"


def _resume(wrapper: SurgicalTraining, how: Method, loader: DataLoader, place: Placement,
            checkpoint: Path) -> dict:
    """Load a run's checkpoint into its fresh wrapper, shuffling, gradient scaler and
    torch's generator; returns the run's state. The recipe the run was started with is the
    truth: every number the checkpoint holds must be one it makes."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in wrapper.optimizer.param_groups]
    extra = wrapper.load(checkpoint)
    try:
        check_fields(extra, {"run": _RUN, "shuffle": torch.Tensor, "rng": torch.Tensor, "scaler": dict})
        run, at = extra["run"], _Resuming(how, wrapper.steps, len(loader))
        for name, test, wanted in _RUN_CHECKS:
            if not test(run, at):
                raise FxSurgeonError(f"its run's {name} is {run[name]!r:.60}, and must be {wanted}")
        _check_hyperparameters(wrapper.optimizer, fresh, how.lr_factor(run["epoch"], run))
        loader.generator.set_state(extra["shuffle"])
        torch.set_rng_state(extra["rng"])
        if place.scaler is not None and extra["scaler"]:
            _check_scaler(extra["scaler"], place.scaler.state_dict())
            place.scaler.load_state_dict(extra["scaler"])
    except MISFIT as err:
        raise FxSurgeonError(f"cannot resume from {str(checkpoint)!r}: {one_line(err)}") from None
    return run


def _check_hyperparameters(opt: torch.optim.Optimizer, fresh: list[dict], factor: float) -> None:
    """Raise unless every hyper-parameter a checkpoint gave ``opt`` is the one of the fresh
    optimizer the recipe built (``fresh``, per group), the LR where the recipe's schedule
    (``factor`` times the initial LR) puts it."""
    for i, (group, mine) in enumerate(zip(opt.param_groups, fresh, strict=True)):
        for key, value in mine.items():
            found, wanted = group.get(key), mine["initial_lr"] * factor if key == "lr" else value
            if not (found == wanted or key == "lr" and problem(found, float) is None and
                    math.isclose(found, wanted, rel_tol=1e-9)):
                raise FxSurgeonError(f"its optimizer's {key} is {found!r:.40} (group {i}), and the run's "
                                     f"recipe makes it {wanted!r}: it is not this run's checkpoint")


def _check_scaler(saved: dict, fresh: dict) -> None:
    """Raise unless a checkpoint's GradScaler state has a fresh one's settings (``fresh``),
    a positive scale and a growth count below its interval."""
    for key in dict.fromkeys([*fresh, *saved]):
        test = _SCALER.get(key, lambda v, fresh, key=key: v == fresh.get(key))
        if key not in fresh or not test(saved.get(key), fresh):
            raise FxSurgeonError(f"its gradient scaler's {key} is {saved.get(key)!r:.40}: "
                                 f"not one this run makes")
