"""Small readers of fx nodes, the values they hold, and the attributes they name."""
from __future__ import annotations

import inspect

import torch
from torch import fx
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.utils._pytree import tree_flatten


def tensors_in(value) -> list[torch.Tensor]:
    """Every tensor inside ``value`` (nested tuples, lists, dicts)."""
    return [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]


def has_tensor(value) -> bool:
    return bool(tensors_in(value))


def getattr_path(obj, path: str):
    """``obj.a.b.c`` for ``path = "a.b.c"``."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def value_users(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its values, not only its shape or dtype (known once
    shapes were propagated: a user that returns no tensor reads none)."""
    return [u for u in node.users if reads_values(u)]


def reads_values(node: fx.Node) -> bool:
    """Whether ``node`` returns a tensor (else it only reads a shape, a dtype, a size)."""
    return "fxs_value" not in node.meta or has_tensor(node.meta["fxs_value"])


def mutates(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` writes into its first argument (``relu_``, ``x += y``, a module or
    function called with ``inplace=True``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(modules.get(node.target), "inplace", False) is True
    if node.op == "call_function" and len(node.args) > 1:
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            bound = None
        if bound is not None and bound.arguments.get("inplace") is True:
            return True
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return isinstance(name, str) and (name.endswith("_") and not name.endswith("__")
                                      or name.startswith("i") and name[1:] in _OPERATORS)


#: binary operators whose in-place form is named "i" + their name in ``operator``
_OPERATORS = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "matmul"}


def describe(node: fx.Node, modules: dict) -> str:
    """A short human name of what ``node`` runs, for messages."""
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f".{node.target}() at {node.name}"
    return f"{getattr(node.target, '__name__', str(node.target))}() at {node.name}"


def normalized(node: fx.Node, root) -> dict | None:
    """``node``'s arguments by name, from the op's signature; None where it has none."""
    if node.op not in ("call_function", "call_module"):
        return None
    try:
        pair = node.normalized_arguments(root, normalize_to_only_use_kwargs=True)
    except RuntimeError:        # overloads: tell them apart by which arguments are tensors
        types = (lambda a: torch.Tensor if isinstance(a, fx.Node) and isinstance(
            a.meta.get("fxs_value"), torch.Tensor) else type(a))
        try:
            pair = node.normalized_arguments(
                root, arg_types=tuple(types(a) for a in node.args),
                kwarg_types={k: types(v) for k, v in node.kwargs.items()},
                normalize_to_only_use_kwargs=True)
        except Exception:  # noqa: BLE001 - no signature to go by: positions it is
            return None
    except Exception:  # noqa: BLE001 - no signature to go by: positions it is
        return None
    return None if pair is None else dict(pair.kwargs)


def mutable(value):
    """``value`` with fx's read-only lists and dicts (from a node's arguments) copied into
    plain ones: some user code mutates the lists it is given."""
    if isinstance(value, (immutable_list, list)):
        return [mutable(v) for v in value]
    if isinstance(value, (immutable_dict, dict)):
        return {k: mutable(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(mutable(v) for v in value)
    return value
