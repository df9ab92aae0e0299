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
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..errors import FxSurgeonError, NoSpaceError, one_line, writing
from ..persistence.checkpoint import MISFIT
from ..persistence.fileformat import check_fields, problem
from ..training.base import SurgicalTraining
from ..training.demp import Pruning
from ..training.rejuvenation import Event
from .data import Data
from .devices import Hardware, Placement
from .methods import METHODS as _CLASSES
from .methods import Method
from .outdir import open_file
from .recipe import Recipe
from .state import SCHEMA as RUN_SCHEMA
from .state import Resuming, Run

METHODS = tuple(_CLASSES)
PRUNING = tuple(name for name, cls in _CLASSES.items() if cls.pruning)   # their aim is sparsity
SEARCHING = tuple(name for name, cls in _CLASSES.items() if cls.searches)  # NR and its ablations


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
    run = Run(start=None if how.searches else 0, length=recipe.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: how.lr_factor(e, run))   # run as it is then
    if checkpoint is not None and checkpoint.exists():
        run = _resume(wrapper, how, train_loader, place, checkpoint)
        sched.last_epoch = run.epoch          # the recipe's schedule, where the run is
        how.resumed(wrapper, run)
    saved = run.epoch if checkpoint is not None and checkpoint.exists() else None
    logger = _Logger(log, method, recipe.seed, tensorboard, progress and not run.done, how.total_epochs(),
                     run.epoch)
    net = wrapper.model
    net.train()
    try:
        while not run.done:
            tick = time.perf_counter()
            loss_sum, n, before = 0.0, 0, len(wrapper.surgeries)
            for x, y in train_loader:
                x, y = place.batch(x), y.to(place.device, non_blocking=place.pin_memory)
                how.on_batch(x)
                with place.autocast():
                    loss = F.cross_entropy(net(x), y)
                place.step(loss, opt, wrapper.step)
                loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
            run.epoch = epoch = run.epoch + 1
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
            run.history.append(record)
            logger.write(record)
            run.seconds += time.perf_counter() - tick
            if checkpoint is not None:
                scaler = place.scaler.state_dict() if place.scaler else {}
                wrapper.save(checkpoint, run=run.stored(), shuffle=train_loader.generator.get_state(),
                             rng=torch.get_rng_state(), scaler=scaler)
                saved = epoch
    except NoSpaceError as err:
        raise NoSpaceError(err.path, _last_good(checkpoint, saved)) from None
    finally:
        logger.close()
    accuracies = [h["accuracy"] for h in run.history]
    result = Result(method, recipe.seed, int(wrapper.graph.count("params")),
                    int(wrapper.graph.count("flops")), accuracies[-1], max(accuracies), run.epoch,
                    run.seconds, run.history, list(wrapper.surgeries))
    return wrapper.network, result


def _last_good(checkpoint: Path | None, epoch: int | None) -> str:
    """What a run that filled the disk leaves to continue from."""
    if checkpoint is None:
        return ""
    if epoch is None:
        return f"no checkpoint was written yet ({str(checkpoint)!r})"
    return f"the last good checkpoint, {str(checkpoint)!r} of epoch {epoch}, is kept"


def _resume(wrapper: SurgicalTraining, how: Method, loader: DataLoader, place: Placement,
            checkpoint: Path) -> Run:
    """Load a run's checkpoint into its fresh wrapper, shuffling, gradient scaler and
    torch's generator; returns the run's state. The recipe the run was started with is the
    truth: every number the checkpoint holds must be one it makes."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in wrapper.optimizer.param_groups]
    extra = wrapper.load(checkpoint)
    try:
        check_fields(extra, {"run": RUN_SCHEMA, "shuffle": torch.Tensor, "rng": torch.Tensor, "scaler": dict})
        run = Run.checked(extra["run"], Resuming(how, wrapper.steps, len(loader)))
        _check_hyperparameters(wrapper.optimizer, fresh, how.lr_factor(run.epoch, run))
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
