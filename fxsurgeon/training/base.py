"""What every training method that operates on the network mid-run shares.

:class:`SurgicalModel` is the one model object of a run; :class:`SurgicalTraining` is the
optimizer wrapper around it: the graph of the current network, the per-channel scales
of its free dimensions, the surgery that swaps in a new network while the user's
optimizer follows, the verdicts every rank shares, and checkpoints that replay the
surgeries from the original model. :class:`~fxsurgeon.NeuralRejuvenation` and
:class:`~fxsurgeon.DemP` are its two methods.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from ..analysis.graph import ChannelGraph, analyze, check_hooks
from ..analysis.tracing import as_tuple, generated
from ..errors import FxSurgeonError, one_line
from ..judging.fixed import Fixed, fixed_names
from ..ops.table import scope
from ..persistence.checkpoint import MISFIT, RECORD, check_finite, read, stored
from ..persistence.fileformat import FINGERPRINT, check_fields, check_format, fingerprint, first_difference
from ..persistence.history import record, replay, write_atomic
from ..surgery.inplace import Snapshot, apply
from ..surgery.judges import Judged, add_judges
from ..surgery.rewriter import Surgery
from .optimizer_state import check_state, missing_parameters, optimizer_type, remap_optimizer
from .ties import check_retie, held, outside_ties, refuse_resizable, retie

T = TypeVar("T")


class SurgicalModel(nn.Module):
    """The one model object of a run: it forwards to the current network, which a
    surgery replaces. Under DistributedDataParallel it holds the DDP wrapper of the
    current network (``ddp``), rebuilt after every surgery."""

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
        generated(network)
        if self.ddp_kwargs is not None:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(network, **self.ddp_kwargs)
        else:
            self.net = network

    def forward(self, *args, **kwargs):
        return (self.ddp if self.ddp_kwargs is not None else self.net)(*args, **kwargs)


def shared(compute: Callable[[], T]) -> T:
    """``compute()`` as rank 0 finds it, on every rank: under torch.distributed only rank 0
    computes and broadcasts, so every rank makes the same surgery."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [compute() if torch.distributed.get_rank() == 0 else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return compute()


SPARSITY = ("auto", "subgradient", "proximal")


def one_per_surgery(records: list[dict], data: dict) -> bool:
    """Whether ``records`` (a checkpoint's events or prunings) are one per surgery of its
    history, at steps in order, up to its own."""
    steps = [r["step"] for r in records]
    return len(steps) == len(data["history"]) and steps == sorted(steps) and \
        all(0 <= s <= data["steps"] for s in steps)


def _check_in_place(judged: Judged, ddp) -> None:
    """Refuse ``in_place=True`` where the user's model cannot be the network trained."""
    if ddp is not False:
        raise FxSurgeonError("in_place=True changes your model object itself, which DistributedDataParallel "
                             "wraps: train nr.model (ddp=True) instead")
    if judged.gates:
        raise FxSurgeonError(f"in_place=True cannot put the {len(judged.gates)} gate(s) that judge "
                             f"{len({d for d, _ in judged.gates.values()})} dimension(s) no norm judges "
                             f"into your model's forward: pass judges=False (only what norms judge is "
                             f"rejuvenated), or train nr.model")


class SurgicalTraining:
    """Base of the optimizer wrappers: train :attr:`model`, call :meth:`step` instead
    of ``optimizer.step()`` (or :meth:`before_step` and :meth:`after_step` around it). The
    optimizer must hold every trainable parameter of ``model``. A parameter that a module
    outside ``model`` holds too stays tied to it through every surgery (one a surgery may
    resize is refused). Subclasses set ``FORMAT`` and add their own state through
    :meth:`_state` / :meth:`_load_state`, and its fields and types to ``SCHEMA``.

    ``fixed`` (names, a predicate or ``"trunk"``, see :mod:`fxsurgeon.judging.fixed`) keeps free
    dimensions out of the penalty. ``judges`` puts a gate (:mod:`fxsurgeon.surgery.judges`)
    on every free dimension no norm judges, so that it can be judged and rejuvenated too
    (an MLP's hidden units, a ConvNeXt block's expansion); :attr:`judged` says where it did
    and why it could not elsewhere. Each gate joins the optimizer group of the layer it
    feeds, and :func:`fxsurgeon.export` folds it away. ``in_place=True`` makes every surgery
    change ``model`` itself (:func:`fxsurgeon.apply`): :attr:`model` is then your model object,
    its class, methods and hooks kept (no gates, no DDP; an event its forward cannot follow
    is refused and training goes on). ``sparsity`` is how the L1 penalty λ·|γ| on the free
    scales is applied: ``"subgradient"`` adds λ·sign(γ) to their gradients before the
    step (the paper's form), ``"proximal"`` soft-thresholds them after it,
    γ ← sign(γ)·max(|γ| − lr·λ, 0) with the scale's own learning rate (decoupled from the
    optimizer, as AdamW's weight decay; an adaptive optimizer would normalise the
    subgradient away), ``"auto"`` the subgradient for plain ``torch.optim.SGD``, the
    proximal form for every other optimizer."""

    FORMAT = ""
    #: λ of the L1 penalty on the free scales at the next step (each method keeps its own)
    lam = 0.0
    #: the fields of :meth:`state_dict` and their types, checked before a checkpoint loads
    SCHEMA = {"history": list[RECORD], "steps": int, "log": list[dict], "model": dict[str, torch.Tensor],
              "optimizer": dict, "optimizer_type": str, "architecture": FINGERPRINT}
    #: what those fields must be beyond their types, in this wrapper, as its arguments are
    #: checked: (field, test of the wrapper and the checkpoint, what the field must be)
    CHECKS = (("steps", lambda w, d: d["steps"] >= 0, "a number of steps"),)

    def __init__(self, model: nn.Module, example_inputs, optimizer: torch.optim.Optimizer, *,
                 ddp: dict | bool = False, fixed: Fixed = None, sparsity: str = "auto",
                 judges: bool = True, in_place: bool = False, **analyze_kwargs):
        if sparsity not in SPARSITY:
            raise FxSurgeonError(f"sparsity must be one of {', '.join(SPARSITY)}, not {sparsity!r}")
        missing = missing_parameters(optimizer, model)
        if missing:
            raise FxSurgeonError(
                f"the optimizer does not hold {len(missing)} of the model's trainable parameters "
                f"(the first: {missing[0]!r}), so they would never train: build it from "
                f"model.parameters() (and set requires_grad=False on what stays frozen)")
        self.example_inputs = as_tuple(example_inputs)
        self.optimizer = optimizer
        self._analyze_kwargs = analyze_kwargs
        self.fixed = fixed
        #: the form of the penalty: "subgradient" or "proximal"
        self.sparsity_form = sparsity if sparsity != "auto" else \
            "subgradient" if type(optimizer) is torch.optim.SGD else "proximal"
        graph = analyze(model, self.example_inputs, **analyze_kwargs)
        check_hooks(graph)
        self._architecture = fingerprint(graph)     # the original model's, checked on resume
        #: the gates put on the free dimensions no norm judges (see ``judges``)
        self.judged = add_judges(graph, fixed_names(graph, fixed), **analyze_kwargs) if judges \
            else Judged(graph)
        #: whether surgeries change the user's model object itself (see ``in_place``)
        self.in_place = in_place
        if in_place:
            _check_in_place(self.judged, ddp)
        self._join_gates(optimizer)
        self._set_graph(self.judged.graph)
        #: parameters shared with modules outside the model, kept tied through every surgery
        self.ties = outside_ties(self.graph.module, model, graph.module)
        refuse_resizable(self.ties, self.graph, self.fixed_dims)
        params = dict(self.graph.module.named_parameters())
        frozen = [d.name for d in self.graph.free_dims if d.name not in self.fixed_dims and
                  {not params[m.tensor].requires_grad for m in d.sources
                   if m.tensor in params and params[m.tensor].dim() == 1} == {True}]
        if frozen:
            warnings.warn(f"{len(frozen)} free dimension(s) have frozen scales (requires_grad=False) and are "
                          f"left alone: never penalised, never rescaled ({', '.join(frozen[:5])}"
                          f"{', ...' if len(frozen) > 5 else ''})", stacklevel=2)
        if in_place:
            self.model = model
        else:
            ddp = None if ddp is False else {} if ddp is True else ddp
            self.model = SurgicalModel(self.graph.module, ddp)
            self.model.train(model.training)
        self.steps = 0
        self.history: list[dict] = []          # each surgery as data, for checkpoints
        self.log: list[dict] = []

    @property
    def network(self) -> nn.Module:
        """The current network: the user's model in place, else the one :attr:`model` runs."""
        return self.model if self.in_place else self.model.network

    def _join_gates(self, optimizer: torch.optim.Optimizer) -> None:
        """Put each gate's parameter into the optimizer group of the layer it feeds (frozen,
        as that layer's weight is, where the weight is frozen)."""
        params = dict(self.judged.graph.module.named_parameters())
        for gate, (_, weight) in self.judged.gates.items():
            p = params[f"{gate}.weight"]
            p.requires_grad_(params[weight].requires_grad)
            group = next((g for g in optimizer.param_groups if any(q is params[weight] for q in g["params"])),
                         optimizer.param_groups[0])
            group["params"].append(p)

    # ---- the graph of the current network ------------------------------------------
    def _set_graph(self, graph: ChannelGraph) -> None:
        self.graph = graph
        params = dict(graph.module.named_parameters())
        masks: dict[str, torch.Tensor] = {}
        #: the free dimensions kept at their width and out of the penalty
        self.fixed_dims = fixed_names(graph, self.fixed)
        for d in graph.free_dims:
            if d.name in self.fixed_dims:
                continue
            for m in d.sources:
                if m.tensor not in params or params[m.tensor].dim() != 1 or \
                        not params[m.tensor].requires_grad:
                    continue        # a frozen scale (a buffer, or no gradient), or a head's projection
                p = params[m.tensor]
                mask = masks.setdefault(m.tensor, torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
                mask[torch.as_tensor(m.positions, device=p.device)] = 1
        #: scale name -> (the parameter, the mask of its positions in free dimensions)
        self.scales = {n: (params[n], mask.view_as(params[n])) for n, mask in masks.items()}

    def _penalty_gradient(self, lam: float) -> None:
        """Add the subgradient ``lam · sign(γ)`` to the gradients of the free scales."""
        if lam:
            with torch.no_grad():
                for p, mask in self.scales.values():
                    if p.grad is not None:
                        p.grad.add_(lam * torch.sign(p) * mask)

    def _learning_rates(self) -> dict[int, float]:
        return {id(q): float(g["lr"]) for g in self.optimizer.param_groups for q in g["params"]}

    def _penalty_proximal(self, lam: float) -> None:
        """Soft-threshold the free scales by ``lr · lam`` (the proximal step of the L1
        penalty), each with the learning rate of its parameter group."""
        if lam:
            lr = self._learning_rates()
            with torch.no_grad():
                for p, mask in self.scales.values():
                    if id(p) not in lr:         # out of the optimizer: not trained, not penalised
                        continue
                    shrunk = p.abs().sub_(lr[id(p)] * lam * mask).clamp_(min=0)
                    p.copy_(p.sign() * shrunk)

    # ---- a step ----------------------------------------------------------------------
    def step(self, closure=None):
        """``optimizer.step(closure)`` between :meth:`before_step` and :meth:`after_step`. A
        ``closure`` gets :meth:`before_step` after each time it is evaluated: it makes the
        gradients the subgradient goes onto (a closure zeroes them first)."""
        if closure is None:
            self.before_step()
            loss = self.optimizer.step()
        else:
            def penalised():
                loss = closure()
                self.before_step()
                return loss
            loss = self.optimizer.step(penalised)
        self.after_step()
        return loss

    def before_step(self) -> None:
        """What comes before ``optimizer.step()``: the L1 penalty's subgradient on the free
        scales' gradients (in its subgradient form). Where a trainer steps the optimizer
        itself, call this, the trainer's step, then :meth:`after_step`
        (:mod:`fxsurgeon.integrations` does)."""
        if self.sparsity_form == "subgradient":
            self._penalty_gradient(self.lam)

    def after_step(self):
        """What comes after ``optimizer.step()``: the penalty's proximal step (in its proximal
        form), the step count, and the method's checks and surgeries. Returns the surgery it
        made (an :class:`~fxsurgeon.Event` or a :class:`~fxsurgeon.Pruning`), or None."""
        if self.sparsity_form == "proximal":
            self._penalty_proximal(self.lam)
        self.steps += 1
        return self._stepped()

    def _stepped(self):
        """The method's own work once a step is counted (its checks and surgeries)."""
        return None

    @property
    def surgeries(self) -> list:
        """Every surgery of the run so far, as the method records it."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ---- surgery ---------------------------------------------------------------------
    def apply_surgery(self, surgery: Surgery, seed: int = 0, remember: bool = True) -> None:
        """Train ``surgery.module`` from now on: the optimizer is pointed at it, with the
        survivors' state carried, and checkpoints record the surgery (with its ``seed``)."""
        old, new = self.graph.module, surgery.module
        pending = held(self.ties, old)          # before an in-place change makes old new
        check_retie(pending, new)
        new.train(self.network.training)
        with scope(self.graph.ops):
            remap_optimizer(self.optimizer, old, new, surgery)
            if self.in_place:       # refused where it cannot (the caller puts the optimizer back)
                apply(self.graph, surgery)
            else:
                self.model.replace(new)
        retie(pending, new)
        self._set_graph(analyze(self.network, self.example_inputs, **self._analyze_kwargs))
        if remember:
            self.history.append(record(surgery, seed))

    # ---- checkpoints -----------------------------------------------------------------
    def _state(self) -> dict:
        return {}

    def _load_state(self, data: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything to resume: the surgery history (the architecture is rebuilt from the
        original model, whose fingerprint is kept), the network's and the optimizer's state
        (and the optimizer's class), the step, the log and the method's own state. Plain
        data: it loads with ``torch.load(weights_only=True)``."""
        return {"format": self.FORMAT, "architecture": self._architecture, "history": list(self.history),
                "steps": self.steps, "log": list(self.log), "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(), "optimizer_type": optimizer_type(self.optimizer),
                **self._state()}

    def _upgrade(self, data):
        """``data`` in this version's format, where an older one is cheap to read."""
        return data

    def load_state_dict(self, data: dict) -> None:
        """Resume from :meth:`state_dict` on a wrapper built as the saved one was (same
        original model, optimizer type and arguments), before it has trained. A checkpoint
        that does not fit, holds a number this wrapper never writes (:attr:`CHECKS`), or a
        NaN or infinity (:func:`~fxsurgeon.persistence.checkpoint.check_finite`) is an error
        that changes nothing."""
        data = self._upgrade(data)
        check_format(data, self.FORMAT)
        if self.steps or self.history:
            raise FxSurgeonError(f"load a checkpoint into a fresh {type(self).__name__}, before training")
        check_fields(data, self.SCHEMA)
        for name, test, wanted in self.CHECKS:
            if not test(self, data):
                raise FxSurgeonError(f"its {name} is {data[name]!r:.60}, and must be {wanted}")
        difference = first_difference(data["architecture"], self._architecture)
        if difference:
            raise FxSurgeonError(f"it was written for another architecture: {difference}")
        if data["optimizer_type"] != optimizer_type(self.optimizer):
            raise FxSurgeonError(f"it was written with the optimizer {data['optimizer_type']}, "
                                 f"not {optimizer_type(self.optimizer)}")
        most = max(self.graph.count("params"), stored(data))    # the largest network it may build
        with self._all_or_nothing():
            with self._fitting():
                for rec in data["history"]:
                    self.apply_surgery(replay(self.graph, rec, most), remember=False)
                self.network.load_state_dict(data["model"])
                check_state(data["optimizer"], self.optimizer)
                self.optimizer.load_state_dict(data["optimizer"])
            check_finite(self.network, self.optimizer)        # a diverged run's is refused
            with self._fitting():
                self._load_state(data)
        self.history, self.steps, self.log = list(data["history"]), data["steps"], list(data["log"])

    @contextmanager
    def _fitting(self) -> Iterator[None]:
        """Say that a checkpoint does not fit this wrapper when what the block builds from it
        raises."""
        try:
            yield
        except MISFIT as err:
            raise FxSurgeonError(f"it does not fit this {type(self).__name__}: {one_line(err)}") from None

    @contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Undo what the block did to the network, its graph and the optimizer if it raises."""
        network, graph, opt = self.network, self.graph, self.optimizer
        groups = [dict(g, params=list(g["params"])) for g in opt.param_groups]
        state = {p: dict(s) for p, s in opt.state.items()}
        snapshot = Snapshot(network) if self.in_place else None
        try:
            yield
        except BaseException:
            pending = held(self.ties, self.network)
            if snapshot is not None:
                snapshot.restore()
            else:
                self.model.replace(network)
            retie(pending, network)
            self._set_graph(graph)
            opt.param_groups, opt.state = groups, defaultdict(dict, state)
            raise

    def save(self, path: str | os.PathLike, **extra) -> None:
        """Write :meth:`state_dict` atomically, with ``extra`` (an epoch, a scheduler's
        state) stored beside it."""
        write_atomic({**self.state_dict(), "extra": extra}, path)

    def load(self, path: str | os.PathLike) -> dict:
        """Resume from a file written by :meth:`save`; returns its ``extra``."""
        data = self._upgrade(read(path))
        try:
            check_format(data, self.FORMAT)
            check_fields(data, {"extra": dict})
            self.load_state_dict(data)
        except FxSurgeonError as err:
            raise FxSurgeonError(f"cannot resume from {str(path)!r}: {err}") from None
        return data.get("extra", {})
