"""Neural Rejuvenation and DemP in PyTorch Lightning's ``Trainer``, which steps the optimizer
itself: :class:`SurgeryCallback`.

Where each part of a step runs: the penalty's subgradient in ``on_before_optimizer_step`` (after
the backward, and after unscaling under mixed precision, before gradient clipping); the proximal
step, the step count, the checks and the surgeries in a step post-hook on the optimizer (right
after ``optimizer.step()``, before the LR scheduler steps; only steps the optimizer takes count,
so gradient accumulation works).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import FxSurgeonError
from ..training.base import SurgicalTraining
from . import requires
from .base import TrainerSurgery

lightning = requires("lightning.pytorch", "fxsurgeon.integrations.lightning", "pip install lightning")


class SurgeryCallback(TrainerSurgery, lightning.Callback):
    """Run ``method`` (``fxsurgeon.NeuralRejuvenation`` or ``fxsurgeon.DemP``, with its keyword
    ``options``: ``threshold=``, ``check_every=``; ``death_set=``, ``total_steps=``) on the network
    that the LightningModule holds at ``attribute`` (a dotted path), with the optimizer that
    ``configure_optimizers`` returns. ``example_inputs`` are the network's positional inputs.

    When the fit starts, the attribute is pointed at the method's
    :class:`~fxsurgeon.SurgicalModel`, so ``training_step`` runs the current network after every
    event; after the fit it still holds it (``.network`` is the network). The optimizer and its
    LR schedulers go on with the new parameters. :attr:`wrapper` is the method (its ``events``,
    ``prunings``, ``log``).

    Checkpoints: the callback's state is the method's :meth:`state_dict` (the surgery history,
    the network's and the optimizer's state: it adds their size to the checkpoint). On
    ``trainer.fit(model, ckpt_path=...)`` the network's entries are kept out of Lightning's
    loading of the module (the fresh network has the original widths); when the fit starts,
    the method is built on the fresh network and the optimizer and replays the history, and
    Lightning then loads the optimizer's and the schedulers' state into the rebuilt network's
    optimizer. A checkpoint written without this callback loads into the fresh network as usual.

    Limits: one process (not DDP or other multi-device strategies: they wrap the module, whose
    parameters an event replaces), automatic optimization with one optimizer, one fit per
    callback. Evaluating or predicting from a checkpoint written after an event
    (``trainer.validate(ckpt_path=...)``) does not rebuild the network: use the module after
    ``fit``, or resume with ``fit``.
    """

    def __init__(self, method: type[SurgicalTraining], example_inputs, *, attribute: str, **options):
        super().__init__(method, example_inputs, attribute, options)
        self._resume: dict | None = None          # the method's state from a checkpoint
        self._set_aside: dict[str, torch.Tensor] = {}     # the network's entries of a checkpoint
        self._handles: list = []

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.wrapper.state_dict() if self.wrapper is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._handles = [pl_module.register_load_state_dict_pre_hook(self._take_network),
                             pl_module.register_load_state_dict_post_hook(self._excuse_network)]

    def _take_network(self, module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
        """Set the network's entries of a checkpoint aside until the fit starts (they may have
        other widths than the fresh network's)."""
        if self.wrapper is None:
            mine = f"{prefix}{self.attribute}."
            self._set_aside = {k[len(mine):]: state_dict.pop(k)
                               for k in list(state_dict) if k.startswith(mine)}

    def _excuse_network(self, module: nn.Module, incompatible) -> None:
        """The network's entries set aside are not missing."""
        if self.wrapper is None:
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                            if not k.startswith(f"{self.attribute}.")]

    # ---- training ---------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            raise FxSurgeonError(f"SurgeryCallback runs on one process, not {trainer.world_size}: an event "
                                 f"replaces the parameters that a distributed strategy has wrapped")
        if not pl_module.automatic_optimization or len(trainer.optimizers) != 1:
            raise FxSurgeonError("SurgeryCallback needs automatic optimization with one optimizer "
                                 f"({len(trainer.optimizers)} here)")
        if self._resume is None and self._set_aside:       # a checkpoint written without the callback
            self.network(pl_module).load_state_dict(self._set_aside)
        optimizer = trainer.optimizers[0]
        self.start(pl_module, optimizer)
        if self._resume is not None:
            self.wrapper.load_state_dict(self._resume)
        self._resume, self._set_aside = None, {}
        self._handles.append(optimizer.register_step_post_hook(self._after_step))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.wrapper.before_step()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.wrapper.after_step()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
