"""Where a run stands between epochs (:class:`Run`): what its method changes as it goes,
what its checkpoint stores, and what each stored field must be beyond its type (in the
field's metadata), checked before a run resumes from a file."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

from ..errors import FxSurgeonError
from ..persistence.fileformat import schema_of


class Resuming(NamedTuple):
    """What a run's checkpoint is checked against: its method (and recipe), the optimizer
    steps its wrapper took and the batches of an epoch."""

    how: object             # the run's experiments.methods.Method
    steps: int
    batches: int


def _check(test, wanted: str):
    """A stored field's metadata: ``test(run, at)`` (``at`` a :class:`Resuming`), and what
    the field must be when it fails."""
    return {"test": test, "wanted": wanted}


def _steps_fit(logged: list[int], steps: int, batches: int) -> bool:
    """Whether the optimizer steps each epoch's record logged are in order, at most
    ``batches`` an epoch, the last one the checkpoint's ``steps``."""
    return logged == sorted(logged) and min(logged, default=0) >= 0 and \
        steps == (logged[-1] if logged else 0) and all(s <= (i + 1) * batches for i, s in enumerate(logged))


@dataclass
class Run:
    """A run's state between epochs: the epochs done, where its decaying schedule starts
    (``start``; None while NR searches at a constant LR) and how long it is (``length``),
    whether it pruned (then fine-tunes) and is done, its training seconds and every
    epoch's record."""

    epoch: int = field(default=0, metadata=_check(
        lambda run, at: run.epoch >= 0 and [h["epoch"] for h in run.history] == list(range(1, run.epoch + 1)),
        "the number of epochs its history records"))
    history: list[dict] = field(default_factory=list, metadata=_check(
        lambda run, at: _steps_fit([h["step"] for h in run.history], at.steps, at.batches),
        "optimizer steps in order, at most one per batch, the last one the checkpoint's"))
    start: int | None = field(default=None, metadata=_check(
        lambda run, at: run.start is None and at.how.searches or
        run.start is not None and 0 <= run.start <= run.epoch,
        "an epoch up to the run's (None while NR searches)"))
    pruned: bool = field(default=False, metadata=_check(
        lambda run, at: not run.pruned or at.how.prunes_then_tunes,
        "false but for a method that prunes then fine-tunes"))
    length: int = field(default=0, metadata=_check(
        lambda run, at: run.length == (at.how.recipe.finetune_epochs if run.pruned else at.how.recipe.epochs),
        "the recipe's epochs (once pruned, its finetune_epochs)"))
    done: bool = field(default=False, metadata=_check(
        lambda run, at: not run.done or run.start is not None and run.epoch - run.start >= run.length,
        "true once its schedule ran"))
    seconds: float = field(default=0.0, metadata=_check(lambda run, at: run.seconds >= 0, "a duration"))

    def stored(self) -> dict:
        """What a checkpoint holds of it."""
        return asdict(self)

    @classmethod
    def checked(cls, data: dict, at: Resuming) -> Run:
        """The run a checkpoint stored (``data``, of :data:`SCHEMA`), once every field is
        one ``at``'s run makes."""
        run = cls(**data)
        for f in fields(cls):
            if not f.metadata["test"](run, at):
                raise FxSurgeonError(f"its run's {f.name} is {data[f.name]!r:.60}, and must be "
                                     f"{f.metadata['wanted']}")
        return run


#: of each epoch's record, what a run reads back
EPOCH = {"epoch": int, "step": int, "accuracy": float, "sparsity": float}
#: a stored run's schema
SCHEMA = {**schema_of(Run), "history": list[EPOCH]}
