"""The user's module hooks: silent while fxsurgeon runs the network itself, carried to the
networks it builds.

fxsurgeon runs a model to trace it, to know its shapes, to check a rewrite and to measure
activations; none of these runs is the user's, so :func:`quiet` empties every hook for
their length (and restores it after). One kind stays: a forward pre-hook of a module
whose tensors it computes (``torch.nn.utils.weight_norm``, ``spectral_norm``), which
tracing must enter to see how the weights are made. :func:`lost_hooks` says which hooks a
traced network no longer calls: those on modules tracing entered rather than kept whole.
"""
from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: a module's hook tables (each a dict, emptied and refilled in place)
HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks")
#: what each table holds, in words
_KINDS = {"_forward_hooks": "forward hook", "_forward_pre_hooks": "forward pre-hook",
          "_backward_hooks": "backward hook", "_backward_pre_hooks": "backward pre-hook"}


def computes_tensors(m: nn.Module) -> bool:
    """Whether ``m`` holds a tensor that is neither a parameter nor a buffer: one its
    forward pre-hooks compute (a weight-normalised layer's ``weight``)."""
    return any(isinstance(v, torch.Tensor) for v in vars(m).values())


def hook_kinds(m: nn.Module) -> list[str]:
    """The kinds of hooks ``m`` holds, in words."""
    return [kind for table, kind in _KINDS.items() if getattr(m, table, None)]


@contextmanager
def quiet(module: nn.Module, keep: Callable[[nn.Module], bool] = computes_tensors) -> Iterator[None]:
    """No hook of ``module`` or its submodules fires in the block, but the forward pre-hooks
    of modules ``keep`` selects (those whose tensors they compute)."""
    held = []
    for m in module.modules():
        for table in HOOK_TABLES:
            hooks = getattr(m, table, None)
            if hooks and not (table.startswith("_forward_pre") and keep(m)):
                held.append((hooks, dict(hooks)))
                hooks.clear()
    try:
        yield
    finally:
        for hooks, saved in held:
            hooks.update(saved)


def hookless_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` without hooks (for fxsurgeon's own use of a user's layer)."""
    copied = copy.deepcopy(module)
    for m in copied.modules():
        for table in HOOK_TABLES:
            if hasattr(m, table):
                setattr(m, table, type(getattr(m, table))())
    return copied


def share_hooks(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` ``source``'s own hooks: the same tables, so a handle the user removes
    from one is gone from both."""
    for table in HOOK_TABLES:
        if hasattr(source, table):
            setattr(target, table, getattr(source, table))
    target._is_full_backward_hook = getattr(source, "_is_full_backward_hook", None)


def _calls(network: nn.Module) -> Counter:
    """How many times the graph of ``network`` (a GraphModule) calls each of its modules."""
    graph = getattr(network, "graph", None)
    return Counter(n.target for n in graph.nodes if n.op == "call_module") if graph is not None else Counter()


def carry_hooks(old: nn.Module, new: nn.Module) -> list[str]:
    """Give each module of ``new`` (a network rewritten from ``old``) the hooks of the module
    of ``old`` at its name, root included, where ``new`` calls it as often as ``old`` did;
    returns the hooks it could not give (a layer held in parts is called once per part)."""
    modules, before, after = dict(new.named_modules()), _calls(old), _calls(new)
    lost = []
    for name, m in old.named_modules():
        if not hook_kinds(m):
            continue
        if name in modules and (not name or before[name] == after[name]):
            share_hooks(m, modules[name])
        else:
            lost += [f"{kind} on '{name}' ({type(m).__name__})" for kind in hook_kinds(m)]
    return lost


def lost_hooks(model: nn.Module, network: nn.Module) -> list[str]:
    """The hooks on submodules of ``model`` that ``network`` (its trace) never calls, in
    words: tracing entered those modules, so the network runs their code but not them.
    A pre-hook whose module's tensors it computes is not lost: its work is traced."""
    called = {id(m) for m in network.modules()}
    lost = []
    for name, m in model.named_modules():
        if not name or id(m) in called:
            continue
        kinds = [k for k in hook_kinds(m) if not (k == "forward pre-hook" and computes_tensors(m))]
        lost += [f"{kind} on '{name}' ({type(m).__name__})" for kind in kinds]
    return lost
