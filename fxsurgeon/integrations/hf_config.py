"""A HuggingFace model's ``config`` brought in line with the widths a surgery in place gave it,
so that ``save_pretrained`` and ``from_pretrained`` give the same network.

``from_pretrained`` builds the model from its config and then loads the weights, so the
config must describe every width. :func:`sync_config` finds, for each parameter whose shape
the config no longer builds, the integer config fields that make it build again: a field
holding the old width (``intermediate_size`` 64 → 48), or a count of which the width is a
multiple (``num_attention_heads`` 4 → 3 where ``head_dim`` is its own field), and keeps a
change only when the model built on the meta device then has every parameter's shape.
Widths a config cannot say (each layer its own MLP width, heads where the head size is
``hidden_size / num_attention_heads``) are refused, naming the parameters: save those with
:func:`fxsurgeon.save` and load them with :func:`fxsurgeon.load`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..channels.modes import evaluating
from ..errors import FxSurgeonError
from ..surgery.selfcheck import difference


@dataclass(frozen=True)
class Misfit:
    """Parameter ``name`` has ``shape``; the config builds it as ``built``."""

    name: str
    shape: tuple[int, ...]
    built: tuple[int, ...] | None

    def __str__(self) -> str:
        built = list(self.built) if self.built else "none"
        return f"{self.name} {list(self.shape)} (the config builds {built})"


def _misfits(model: nn.Module, config) -> list[Misfit] | None:
    """The parameters and buffers of ``model`` whose shapes a model built from ``config``
    does not have (None: the config builds no model)."""
    with torch.device("meta"):
        try:
            built = type(model)(config)
        except Exception:  # noqa: BLE001 - a config that does not build fits nothing
            return None
    want = {n: tuple(t.shape) for n, t in [*built.named_parameters(), *built.named_buffers()]}
    have = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    return [Misfit(n, s, want.get(n)) for n, s in have.items() if want.get(n) != s]


def _candidates(config, changes: set[tuple[int, int]]) -> list[tuple[str, int]]:
    """``(field, value)`` guesses: an integer field holding an old width takes the new one;
    one whose value divides the old width scales with it."""
    fields = {k: v for k, v in config.to_dict().items() if type(v) is int and v > 0}
    guesses = []
    for old, new in sorted(changes):
        for k, v in fields.items():
            if v == old:
                guesses.append((k, new))
            elif old % v == 0 and new % (old // v) == 0:
                guesses.append((k, new // (old // v)))
    return list(dict.fromkeys(guesses))


def sync_config(model: nn.Module, example_inputs=None) -> dict[str, tuple[int, int]]:
    """Update ``model.config`` (a HuggingFace ``PretrainedConfig``) so that it builds every
    parameter of ``model`` with its current shape; returns each field changed, ``(old,
    new)``. Refused, naming the parameters and changing nothing, where no setting of its
    integer fields does. With ``example_inputs`` (a tensor or a tuple), the model built from
    the new config and given ``model``'s weights must also compute what ``model`` does on
    them (what ``from_pretrained`` will give), else it is refused too."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise FxSurgeonError(f"{type(model).__name__} has no HuggingFace config to update")
    trial = copy.deepcopy(config)
    misfits = _misfits(model, trial)
    if misfits is None:
        raise FxSurgeonError(f"{type(model).__name__} cannot be built from its own config")
    steps = _search(model, trial, misfits, [_MAX_BUILDS])
    if steps is None:
        shown = "; ".join(map(str, misfits[:3])) + ("; ..." if len(misfits) > 3 else "")
        raise FxSurgeonError(
            f"the config of {type(model).__name__} cannot describe its widths: {shown} (per-layer "
            f"widths, or heads of a size the config derives): save it with fxsurgeon.save and load "
            f"it with fxsurgeon.load")
    changed = {}
    for field, value in steps:
        changed[field] = (getattr(config, field), value)
        setattr(trial, field, value)
    if example_inputs is not None and changed:
        _check_function(model, trial, example_inputs)
    for field, (_, value) in changed.items():
        setattr(config, field, value)
    return changed


#: most models a search for a config builds (on the meta device)
_MAX_BUILDS = 64


def _search(model: nn.Module, trial, misfits: list[Misfit],
            budget: list[int]) -> list[tuple[str, int]] | None:
    """Field changes that make ``trial`` build every shape of ``model``: each step a guess
    that leaves fewer misfits, the fewest first, backtracking where that leads nowhere
    (``head_dim`` 8 → 4 fits q, k, v and o of a model that lost half its key/value heads
    at once, but not its rotary embedding: the head counts do); None when none does
    within ``budget[0]`` builds."""
    if not misfits:
        return []
    changes = {(b, s) for m in misfits if m.built and len(m.built) == len(m.shape)
               for b, s in zip(m.built, m.shape, strict=True) if b != s}
    options = []
    for field, value in _candidates(trial, changes):
        if budget[0] <= 0:
            break
        budget[0] -= 1
        attempt = copy.deepcopy(trial)
        setattr(attempt, field, value)
        left = _misfits(model, attempt)
        if left is not None and len(left) < len(misfits):
            options.append((len(left), field, value, attempt, left))
    for _, field, value, attempt, left in sorted(options, key=lambda o: o[0]):
        rest = _search(model, attempt, left, budget)
        if rest is not None:
            return [(field, value), *rest]
    return None


def _check_function(model: nn.Module, config, example_inputs) -> None:
    """Refuse ``config`` where the model it builds, with ``model``'s weights, computes other
    outputs than ``model`` on ``example_inputs``."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    built = type(model)(config).to(next(model.parameters()).dtype)
    built.load_state_dict(model.state_dict())
    with evaluating(model), evaluating(built), torch.no_grad():
        d = difference(model(*inputs), built(*inputs))
    if d is None or d > 1:
        raise FxSurgeonError(f"the config the widths need builds a {type(model).__name__} that computes "
                             f"something else on the example: save it with fxsurgeon.save and load it "
                             f"with fxsurgeon.load")
