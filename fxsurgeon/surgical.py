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
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .checkpoint import read
from .errors import FxSurgeonError
from .graph import ChannelGraph, analyze
from .history import record, replay, write_atomic
from .optimizer_state import remap_optimizer
from .rewriter import Surgery
from .tracing import as_tuple

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


class SurgicalTraining:
    """Base of the optimizer wrappers: train :attr:`model`, call :meth:`step` instead
    of ``optimizer.step()``. Subclasses set ``FORMAT`` and add their own state through
    :meth:`_state` / :meth:`_load_state`."""

    FORMAT = ""

    def __init__(self, model: nn.Module, example_inputs, optimizer: torch.optim.Optimizer, *,
                 ddp: dict | bool = False, **analyze_kwargs):
        self.example_inputs = as_tuple(example_inputs)
        self.optimizer = optimizer
        self._analyze_kwargs = analyze_kwargs
        self._set_graph(analyze(model, self.example_inputs, **analyze_kwargs))
        self.model = SurgicalModel(self.graph.module, None if ddp is False else {} if ddp is True else ddp)
        self.model.train(model.training)
        self.steps = 0
        self.history: list[dict] = []          # each surgery as data, for checkpoints
        self.log: list[dict] = []

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
        #: scale name -> (the parameter, the mask of its positions in free dimensions)
        self.scales = {n: (params[n], mask.view_as(params[n])) for n, mask in masks.items()}

    def add_l1(self, lam: float) -> None:
        """Add the subgradient ``lam · sign(γ)`` to the gradients of the free scales."""
        if lam:
            with torch.no_grad():
                for p, mask in self.scales.values():
                    if p.grad is not None:
                        p.grad.add_(lam * torch.sign(p) * mask)

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
        old, new = self.model.network, surgery.module
        new.train(old.training)
        remap_optimizer(self.optimizer, old, new, surgery)
        self.model.replace(new)
        self._set_graph(analyze(new, self.example_inputs, **self._analyze_kwargs))
        if remember:
            self.history.append(record(surgery, seed))

    # ---- checkpoints -----------------------------------------------------------------
    def _state(self) -> dict:
        return {}

    def _load_state(self, data: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything to resume: the surgery history (the architecture is rebuilt from the
        original model), the network's and the optimizer's state, the step, the log and
        the method's own state. Plain data: it loads with ``torch.load(weights_only=True)``."""
        return {"format": self.FORMAT, "history": list(self.history), "steps": self.steps,
                "log": list(self.log), "model": self.model.network.state_dict(),
                "optimizer": self.optimizer.state_dict(), **self._state()}

    def load_state_dict(self, data: dict) -> None:
        """Resume from :meth:`state_dict` on a wrapper built as the saved one was (same
        original model, optimizer type and arguments), before it has trained."""
        if not isinstance(data, dict) or data.get("format") != self.FORMAT:
            raise FxSurgeonError(f"not a {type(self).__name__} checkpoint")
        if self.steps or self.history:
            raise FxSurgeonError(f"load a checkpoint into a fresh {type(self).__name__}, before training")
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
        self.steps, self.log = data["steps"], list(data["log"])
        self._load_state(data)

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
