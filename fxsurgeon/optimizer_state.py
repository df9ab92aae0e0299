"""Carry an optimizer across a surgery (same object, new parameters, survivors' state
kept), and check that an optimizer and a saved optimizer state fit a wrapper."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .errors import FxSurgeonError
from .fileformat import problem
from .rewriter import Surgery


def remap_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module,
                    surgery: Surgery) -> None:
    """Point ``optimizer`` (in place) from ``old``'s parameters to ``new``'s.

    Each new parameter joins the group of the old parameter it comes from
    (``surgery.origin``); per-parameter state shaped like the old parameter (momentum,
    Adam moments) is carried by the surgery's index maps, zero for new channels; other
    state (Adam's step) is copied. Hyper-parameters, and so any LR scheduler holding
    the optimizer, are untouched. Parameters the optimizer holds that are not ``old``'s
    stay as they are.
    """
    old_names = {id(p): n for n, p in old.named_parameters()}
    new_params = dict(new.named_parameters())
    children = defaultdict(list)
    for name in new_params:
        children[surgery.origin(name)].append(name)
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            name = old_names.get(id(p))
            if name is None:
                params.append(p)
                continue
            state = optimizer.state.pop(p, {})
            for child in children.get(name, []):
                q = new_params[child]
                params.append(q)
                if state:
                    optimizer.state[q] = {
                        k: surgery.carry(child, v) if torch.is_tensor(v) and v.shape == p.shape
                        else (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
        group["params"] = params


def optimizer_type(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class, as a checkpoint records it (a name, never imported)."""
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def missing_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The names of ``model``'s trainable parameters that ``optimizer`` does not hold."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]


def check_state(saved, optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`FxSurgeonError` unless ``saved`` (an optimizer's ``state_dict()``)
    fits ``optimizer``: as many groups of as many parameters, hyper-parameters of the
    same kinds, and per-parameter state of tensors (shaped like a scalar or like their
    parameter) or None, as torch.optim's optimizers keep it."""
    found = problem(saved, _SCHEMA, "the optimizer state")
    if found:
        raise FxSurgeonError(found)
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise FxSurgeonError(f"the optimizer has {len(optimizer.param_groups)} parameter groups, "
                             f"the checkpoint's {len(saved['param_groups'])}")
    params = {}
    for i, (theirs, mine) in enumerate(zip(saved["param_groups"], optimizer.param_groups, strict=True)):
        if len(theirs["params"]) != len(mine["params"]):
            raise FxSurgeonError(f"parameter group {i} holds {len(mine['params'])} parameters, "
                                 f"the checkpoint's {len(theirs['params'])}")
        params.update(zip(theirs["params"], mine["params"], strict=True))
        for key, value in mine.items():       # hyper-parameters; a scheduler's notes may be missing
            wanted = key != "params" and (key in optimizer.defaults or key in theirs)
            if wanted and not _same_kind(theirs.get(key, _MISSING), value):
                raise FxSurgeonError(f"parameter group {i}'s {key!r} is {theirs.get(key, 'missing')!r:.40} "
                                     f"in the checkpoint, a {type(value).__name__} here")
    for pid, state in saved["state"].items():
        p = params.get(pid)
        if p is None:
            raise FxSurgeonError(f"the checkpoint has optimizer state for parameter {pid}, in no group")
        for key, value in state.items():
            if value is not None and value.dim() and value.shape != p.shape:
                raise FxSurgeonError(f"the optimizer state {key!r} of parameter {pid} is shaped "
                                     f"{tuple(value.shape)}, its parameter {tuple(p.shape)}")


_GROUP = {"params": list[int]}
_SCHEMA = {"state": dict[int, dict[str, torch.Tensor | None]], "param_groups": list[_GROUP]}
_MISSING = object()


def _same_kind(a, b) -> bool:
    """Whether a saved hyper-parameter ``a`` can stand where ``b`` is (numbers for numbers)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_kind(x, y) for x, y in zip(a, b, strict=True))
    return _number(a) and _number(b) or type(a) is type(b)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
