"""Neural Rejuvenation and DemP in HuggingFace's ``transformers.Trainer``, which steps the
optimizer itself: :class:`SurgeryCallback`.

Where each part of a step runs: the penalty's subgradient in ``on_pre_optimizer_step`` (after
gradient clipping); the proximal step, the step count, the checks and the surgeries in
``on_optimizer_step`` (before the LR scheduler steps). Both come once per optimizer step, so
gradient accumulation works.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FxSurgeonError
from ..training.base import SurgicalTraining
from . import requires
from .base import TrainerSurgery

transformers = requires("transformers", "fxsurgeon.integrations.huggingface",
                        "pip install transformers accelerate")

#: the file the callback writes into each checkpoint folder of the Trainer
STATE_FILE = "fxsurgeon.pt"


class SurgeryCallback(TrainerSurgery, transformers.TrainerCallback):
    """Run ``method`` (``fxsurgeon.NeuralRejuvenation`` or ``fxsurgeon.DemP``, with its keyword
    ``options``) on the network that the Trainer's model holds at ``attribute`` (a dotted path).
    ``example_inputs`` are the network's positional inputs: the model itself may take keyword
    tensors and return a dict with ``"loss"``, as the Trainer wants; the network inside it is
    what is traced and rewritten.

    Build the optimizer yourself and give it to the Trainer, ``Trainer(...,
    optimizers=(optimizer, scheduler), callbacks=[callback])`` (the scheduler may be None): the
    method is built on it when the Trainer is built (``on_init_end``), before the Trainer loads a
    checkpoint into it. The attribute is then pointed at the method's
    :class:`~fxsurgeon.SurgicalModel`, so the model the Trainer calls runs the current network
    after every event; the optimizer and the scheduler go on with the new parameters.
    :attr:`wrapper` is the method.

    Checkpoints: at each save the callback writes the method's state (:meth:`save`: the surgery
    history, the network's and the optimizer's state) to ``fxsurgeon.pt`` in the checkpoint
    folder. To resume, name that folder twice: ``SurgeryCallback(..., resume_from=folder)``
    replays the history when the Trainer is built, so that ``trainer.train(
    resume_from_checkpoint=folder)`` loads its weights and optimizer state into a network of the
    saved widths (a Trainer that starts at another step than the method is refused when
    training begins).

    Limits: one process (not DDP, FSDP or DeepSpeed); the network must take positional tensors
    and trace; ``load_best_model_at_end`` and evaluating a checkpoint written after an event
    without ``resume_from`` meet a network of the original widths; under fp16 mixed precision a
    step the gradient scaler skips is still counted.
    """

    def __init__(self, method: type[SurgicalTraining], example_inputs, *, attribute: str,
                 resume_from: str | Path | None = None, **options):
        super().__init__(method, example_inputs, attribute, options)
        self.resume_from = resume_from

    def on_init_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None:
            raise FxSurgeonError("give the Trainer your optimizer (Trainer(..., optimizers=(optimizer, "
                                 "scheduler))): SurgeryCallback builds its method on it when the Trainer is "
                                 "built, before the Trainer loads a checkpoint into it")
        if args.world_size > 1:
            raise FxSurgeonError(f"SurgeryCallback runs on one process, not {args.world_size}: an event "
                                 f"replaces the parameters that a distributed wrapper holds")
        self.start(model, optimizer)
        if self.resume_from is not None:
            self.wrapper.load(Path(self.resume_from) / STATE_FILE)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step != self.wrapper.steps:
            raise FxSurgeonError(f"the Trainer starts at step {state.global_step} and its "
                                 f"{self.method.__name__} at step {self.wrapper.steps}: resume both from the "
                                 f"same checkpoint folder (SurgeryCallback(..., resume_from=folder) and "
                                 f"trainer.train(resume_from_checkpoint=folder))")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.wrapper.before_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.wrapper.after_step()

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.wrapper.save(Path(args.output_dir) / folder / STATE_FILE)
