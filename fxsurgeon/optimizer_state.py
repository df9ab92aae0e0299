"""Carry an optimizer across a surgery: same object, new parameters, survivors' state kept."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

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
