"""A run's hyper-parameters: :class:`Recipe`, each setting with its meaning (the command
line's help) and what it must be, in its field's metadata."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields

from ..errors import FxSurgeonError
from ..persistence.fileformat import problem
from ..planning.planner import MAX_TARGET
from ..surgery.rescaling import GOALS as RESCALE_GOALS
from ..training.demp import REGULARIZATIONS

SPARSITY = ("auto", "subgradient", "proximal")
DEATH_SETS = ("train", "held-out")
SEEDS = 2 ** 63         # seeds are below it: torch.manual_seed takes them, with room for seed + k
OPTIMIZERS = ("sgd", "adamw")

_WHOLE = (lambda v: v >= 1, "a whole number of at least 1")
_AT_LEAST_0 = (lambda v: v >= 0, "a number of at least 0")
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")


def _one_of(*choices) -> tuple:
    return lambda v: v in choices, " or ".join(map(str, choices))


def _setting(default, help: str, limit: tuple = (None, "")):
    """A recipe field: its default, what it means and what it must be beyond its type
    (``limit``: a test of a value that is not None, and what it says when it fails)."""
    test, wanted = limit
    return field(default=default, metadata={"help": help, "test": test, "wanted": wanted})


@dataclass
class Recipe:
    """Every hyper-parameter of a run (paper defaults; the demo overrides a few); what
    each one means is in :data:`HELP`."""

    epochs: int = _setting(160, "epochs of the LR schedule: the whole run, or what follows NR's search",
                           _WHOLE)
    batch_size: int = _setting(64, "training batch size", _WHOLE)
    optimizer: str = _setting("sgd", "sgd (with momentum, the paper's) or adamw (transformers, ConvNeXts)",
                              _one_of(*OPTIMIZERS))
    lr: float = _setting(0.1, "learning rate", (lambda v: v > 0, "a positive number"))
    momentum: float = _setting(0.9, "SGD momentum", _FRACTION)
    weight_decay: float = _setting(1e-4, "weight decay (AdamW's decoupled)", _AT_LEAST_0)
    metric: str = _setting("params", "NR's resource: params or flops", _one_of("params", "flops"))
    target: float = _setting(1.0, "NR's budget: this times the original model's cost",
                             (lambda v: 0 < v <= MAX_TARGET, f"a positive number, at most {MAX_TARGET:g}"))
    threshold: float = _setting(0.5, "NR's T_r: an event fires when utilization falls below it",
                                (lambda v: 0 < v <= 1,
                                 "in (0, 1]: an event fires when utilization falls below it"))
    delta_r: float = _setting(0.01, "NR's Δr: λ grows at each check where utilization fell by less",
                              _AT_LEAST_0)
    delta_lambda: float = _setting(5e-5, "NR's Δλ: what λ grows by", _AT_LEAST_0)
    check_every: int | None = _setting(None, "NR: optimizer steps between checks", _WHOLE)
    search_epochs: int = _setting(160, "NR: at most this many epochs at constant LR while it searches",
                                  _WHOLE)
    rescale: bool | str = _setting(True, "NR: neural rescaling at the event: layer (true), paper, gamma0 or "
                                         "none (false); see docs/nr.md",
                                   (lambda v: v in (True, False, *RESCALE_GOALS),
                                    "true, false or one of " + ", ".join(RESCALE_GOALS)))
    events: int | None = _setting(1, "NR: the search ends once this many events fired (unlimited: at "
                                     "search_epochs)",
                                  (lambda v: v >= 1, "a whole number of at least 1, or null (unlimited)"))
    fixed: str | None = _setting(None, "NR: trunk keeps residual trunks and the stem at their width, out of "
                                       "the L1", (lambda v: v == "trunk", "trunk or null"))
    sparsity: str = _setting("auto", "NR, DemP: the L1's form: subgradient (the paper's), proximal, or auto "
                                     "(by optimizer)", _one_of(*SPARSITY))
    round_to: int = _setting(8, "NR: widths that grow are multiples of this (1: channel by channel, as the "
                                "paper)", _WHOLE)
    lr_steps: list[int] | None = _setting(None, "epochs after the schedule's start where the LR drops ×0.1, "
                                                "e.g. 30,60,90 (default: a cosine)",
                                          (lambda v: v == sorted(set(v)) and min(v, default=1) >= 1,
                                           "increasing whole numbers of at least 1"))
    equal_epochs: bool = _setting(True, "baseline: train as many epochs as the first NR method of its seed "
                                        "did (search + schedule), when both run")
    slimming_lambda: float = _setting(1e-4, "Network Slimming's L1 on γ", _AT_LEAST_0)
    prune_ratio: float = _setting(0.5, "slimming, magnitude: the share of channels removed", _FRACTION)
    finetune_epochs: int = _setting(40, "slimming, magnitude: epochs of fine-tuning after pruning",
                                    (lambda v: v >= 0, "a whole number of at least 0"))
    demp_reg: float = _setting(1e-3, "DemP: peak λ of the one-cycle regularization", _AT_LEAST_0)
    demp_noise: float = _setting(1e-3, "DemP: peak σ of the noise on live units", _AT_LEAST_0)
    demp_regularization: str = _setting("l1", "DemP: l1 (on the scales) or l2+ (positive part of scales and "
                                              "shifts)", _one_of(*REGULARIZATIONS))
    demp_prune_every: int | None = _setting(None, "DemP: optimizer steps between prunings", _WHOLE)
    death_set: str = _setting("held-out", "DemP: train (the latest training batches, as the authors' code) "
                                          "or held-out", _one_of(*DEATH_SETS))
    death_samples: int = _setting(128, "DemP: samples in the death set", _WHOLE)
    epsilon: float = _setting(0.0, "DemP: dead means |activation| <= epsilon on the whole death set",
                              _AT_LEAST_0)
    seed: int = _setting(0, "seed of the model's initialisation, the data order and every surgery",
                         (lambda v: 0 <= v < SEEDS, "a whole number in [0, 2**63)"))

    def __post_init__(self):
        hints = typing.get_type_hints(Recipe)
        for f in fields(self):
            value = getattr(self, f.name)
            found = problem(value, hints[f.name], f.name)
            if found:
                raise FxSurgeonError(f"recipe: {found}")
            test = f.metadata["test"]
            if test and value is not None and not test(value):
                raise FxSurgeonError(f"recipe: {f.name} must be {f.metadata['wanted']}, not {value!r}")


#: what each recipe setting means (the command line's help)
HELP = {f.name: f.metadata["help"] for f in fields(Recipe)}
