"""Normalisations: per-channel affine tensors, statistics that may span channels, and the
scales that judge whether a channel is alive.
"""
from __future__ import annotations

from torch import fx, nn

from ..nodes import value_users
from .rule import Rule

#: what a new channel's per-channel tensors start at
_INIT = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


class Norm(Rule):
    """A normalisation layer or function.

    ``flavour`` says over what it takes statistics: ``"batch"`` (per channel, over the
    batch: BatchNorm, InstanceNorm), ``"layer"`` (over the trailing ``normalized_shape``:
    channels there are pinned) or ``"group"`` (over groups of channels: pinned unless
    every channel is its own group). Its weight and bias, and a batch norm's running
    statistics, are per-channel tensors; a batch norm's weight judges liveliness.
    """

    keeps_shape = True

    def __init__(self, flavour: str):
        self.flavour = flavour
        self.keeps_shape = True

    def _tensors(self, walk, node) -> dict[str, str]:
        """The norm's per-channel tensors by role: weight, bias, running_mean, running_var."""
        if node.op == "call_module":
            m = walk.submodule(node)
            return {k: f"{node.target}.{k}" for k in _INIT if getattr(m, k, None) is not None}
        found = {}
        for k in _INIT:
            arg = walk.node_argument(node, k)
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                found[k] = arg.target
        return found

    def _options(self, walk, node):
        if node.op == "call_module":
            m = walk.submodule(node)
            return getattr(m, "num_groups", None), getattr(m, "normalized_shape", None)
        if self.flavour == "group":
            return walk.argument(node, "num_groups", 1), None
        if self.flavour == "layer":
            return None, walk.argument(node, "normalized_shape", 1)
        return None, None

    def propagate(self, walk, node, args, kwargs):
        x = args[0] if args else walk.argument(node, "input", 0)
        tags = walk.tags
        groups, nshape = self._options(walk, node)
        axis = x.dim() - 1 if self.flavour == "layer" else 1
        vec = tags.axis_vector(x, axis)
        where = walk.describe(node)
        if self.flavour == "layer":
            axes = range(x.dim() - len(nshape), x.dim())
            if any(tags.varies_along(x, k) for k in axes):
                walk.pin(x, f"LayerNorm statistics over the channel axis at {where}")
            if len(nshape) != 1:
                return x
        elif self.flavour == "group" and groups not in (None, x.shape[1]):
            walk.pin(x, f"GroupNorm statistics over channel groups at {where}")
        if vec is None:
            if not bool((x == 0).all()):
                walk.pin(x, f"normalisation of unstructured channels at {where}")
            return x
        found = self._tensors(walk, node)
        for role, name in found.items():
            walk.ref(name, 0, vec, "param", node, init=_INIT[role])
        if self.flavour == "batch" and "weight" in found:
            walk.scale(node, found["weight"], found.get("bias"), vec)
            writer = walk.writer_of(x)
            if writer is not None and _sole_reader(node, writer):
                walk.out.follows.add((writer, node.name))
        return x

    def sync(self, module: nn.Module, old: nn.Module) -> None:
        held = [t for t in (getattr(module, "weight", None), getattr(module, "running_mean", None))
                if t is not None]
        if not held:
            return
        width = held[0].shape[0]
        if self.flavour == "batch":
            module.num_features = width
        elif self.flavour == "group":
            if old.num_groups == old.num_channels:
                module.num_groups = width
            module.num_channels = width
        elif tuple(module.normalized_shape) != (width,):
            module.normalized_shape = (width,)


def _sole_reader(norm: fx.Node, writer: str) -> bool:
    """Whether everything ``writer`` emits reaches ``norm`` and nothing else: each node on
    the way (unary ops only, as the shared tag tensor shows) has one user that reads its
    values (reading its shape or dtype does not count)."""
    src = norm.args[0] if norm.args else None
    while isinstance(src, fx.Node) and len(value_users(src)) == 1:
        if src.name == writer:
            return True
        src = src.args[0] if src.args else None
    return False
