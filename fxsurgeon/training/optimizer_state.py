"""Carry an optimizer across a surgery (same object, new parameters, survivors' state
kept), and check that an optimizer and a saved optimizer state fit a wrapper."""
from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn

from ..errors import FxSurgeonError
from ..ops import TABLE
from ..persistence.fileformat import problem
from ..surgery.rewriter import Surgery

#: the power of the gradient that each known per-parameter state holds: a parameter
#: multiplied by ``c`` has its gradient divided by ``c``, so that state is divided by
#: ``c`` to that power (SGD's momentum, Adam's and RMSprop's moments, Adagrad's sum)
GRADIENT_POWER = {"momentum_buffer": 1, "exp_avg": 1, "grad_avg": 1, "exp_inf": 1,
                  "exp_avg_sq": 2, "max_exp_avg_sq": 2, "square_avg": 2, "sum": 2}


def _follow(key: str, value: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
    """``value`` (state ``key`` of a parameter that neural rescaling multiplied by
    ``factor``) as it would be had the parameter always been so scaled."""
    power = GRADIENT_POWER.get(key)
    if factor is None or power is None:
        return value
    return value / factor.to(value.dtype) ** power


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
    old_params = dict(old.named_parameters())
    new_params = dict(new.named_parameters())
    children = defaultdict(list)
    origins = {surgery.origin(name) for name in new_params}
    unpacked = {o: _unpack_state(optimizer, old, o, origins) for o in origins if o not in old_params}
    for name in new_params:
        origin = surgery.origin(name)
        children[unpacked.get(origin, origin)].append(name)
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            name = old_names.get(id(p))
            if name is None:
                params.append(p)
                continue
            state = optimizer.state.pop(p, {})
            dense = name in unpacked.values()        # its state is the unpacked layer's
            for child in children.get(name, []):
                q = new_params[child]
                params.append(q)
                if state:
                    factor = surgery.rescale_factors.get(surgery.origin(child))
                    optimizer.state[q] = {
                        k: surgery.carry(child, _follow(k, v, factor))
                        if torch.is_tensor(v) and (v.shape == p.shape or dense and v.dim() > 0)
                        else (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
        group["params"] = params


def _unpack_state(optimizer: torch.optim.Optimizer, old: nn.Module, name: str, taken: set[str]) -> str:
    """``name`` is a tensor of a layer of ``old`` that a rewrite unpacks into its standard
    form (a cr layer, whose generations' blocks are parameters): give its first parameter
    the state of the unpacked tensor (each state tensor unpacked as the weights are) and
    return that parameter's name, which the new tensor then follows."""
    owner, _, leaf = name.rpartition(".")
    layer = old.get_submodule(owner)
    named = [(f"{owner}.{n}", p) for n, p in layer.named_parameters() if p.requires_grad]
    parts = [p for _, p in named]
    free = [n for n, _ in named if n not in taken]
    rule = TABLE.module_rule(layer)
    if not free or rule is None:
        raise FxSurgeonError(f"cannot carry the optimizer state to {name}: it is no parameter of "
                             f"the old network and {owner} is no layer the rewrite unpacks")
    states = [optimizer.state.get(p, {}) for p in parts]
    carried = {}
    for key in {k for st in states for k in st}:
        if not all(torch.is_tensor(st.get(key)) and st[key].shape == p.shape
                   for p, st in zip(parts, states, strict=True)):
            carried[key] = next(st[key] for st in states if key in st)
            continue
        twin = copy.deepcopy(layer)
        with torch.no_grad():
            for q, st in zip([q for q in twin.parameters() if q.requires_grad], states, strict=True):
                q.copy_(st[key])
        carried[key] = getattr(rule.unpack(twin), leaf).detach().clone()
    if carried:
        optimizer.state[dict(named)[free[0]]] = carried
    return free[0]


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
            test, wanted = STATE_VALUES.get(key, (None, ""))
            if test is not None and value is not None and not bool(test(value).all()):
                raise FxSurgeonError(f"the optimizer state {key!r} of parameter {pid} holds values that are "
                                     f"not {wanted}")


#: what each known per-parameter state must hold (a negative second moment or step count
#: makes Adam's next step NaN)
STATE_VALUES = {**{key: (lambda v: v >= 0, "at least 0") for key in ("exp_avg_sq", "max_exp_avg_sq",
                                                                       "square_avg", "sum")},
                "step": (lambda v: (v >= 0) & (v == v.floor()), "a whole number of steps")}

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
