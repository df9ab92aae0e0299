"""Per-channel layers and normalisations: tensors that hold one entry per channel,
statistics that may span channels, and the scales that judge whether a channel is alive.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..channels.nodes import getattr_path, value_users
from .parts import part_of
from .rule import Rule


class PerChannel(Rule):
    """A module that treats each channel on its own, with per-channel tensors.

    ``tensors`` maps the module's tensor names to what a new channel's entry starts at;
    axis 0 of each holds the channels of the input's axis ``axis``. ``scale`` (and
    ``shift``) name the tensors of ``y = scale·f(x) + shift``: the scale judges whether a
    channel is alive and neural rescaling may lift it. ``homogeneous`` says whether
    ``f(c·x) = c·f(x)`` for ``c > 0``. ``attributes`` maps constructor attributes to a
    function of the resized module that gives their new value (``{"num_features":
    lambda m: m.weight.shape[0]}``).
    """

    keeps_shape = True

    def __init__(self, tensors: dict[str, float] | None = None, axis: int = 1, scale: str | None = None,
                 shift: str | None = None, homogeneous: bool = False,
                 attributes: dict[str, Callable[[nn.Module], object]] | None = None):
        self.init = dict(tensors or {"weight": 1.0, "bias": 0.0})
        self.axis = axis
        self.scale_name, self.shift_name = scale, shift
        self._homogeneous = homogeneous
        self.attributes = dict(attributes or {})

    def tensors(self, walk, node) -> dict[str, str]:
        """The call's per-channel tensors, by their names in :attr:`init`, as graph paths."""
        m = walk.submodule(node)
        return {k: f"{node.target}.{k}" for k in self.init if getattr(m, k, None) is not None}

    def statistics(self, walk, node, x) -> bool:
        """Pin what statistics across channels fix; False if the channels cannot be sliced."""
        return True

    def channel_axis(self, walk, node) -> int:
        """The axis of the input that holds the channels (the rule's ``axis``)."""
        return self.axis

    def propagate(self, walk, node, args, kwargs):
        x = args[0] if args else walk.argument(node, "input", 0)
        vec = walk.tags.axis_vector(x, self.channel_axis(walk, node))
        if not self.statistics(walk, node, x):
            return x
        if vec is None:
            if not bool((x == 0).all()):
                walk.pin(x, f"per-channel op on unstructured channels at {walk.describe(node)}")
            return x
        found = self.tensors(walk, node)
        for role, name in found.items():
            walk.ref(name, 0, vec, "param", node, init=self.init[role])
        if self.scale_name in found:
            module = walk.submodule(node) if node.op == "call_module" else None
            walk.scale(node, found[self.scale_name], found.get(self.shift_name), vec,
                       module is None or self.after_scale_homogeneous(module))
            writer = walk.writer_of(x)
            if writer is not None and _sole_reader(node, writer):
                walk.norm_after(writer, node)
        return x

    def homogeneous(self, node, module) -> bool:
        return self._homogeneous

    def after_scale_homogeneous(self, module: nn.Module) -> bool:
        """Whether what the module does after ``scale·x̂ + shift`` is positively homogeneous
        (so neural rescaling of its scale is exact); a fused activation may not be."""
        return True

    def sync(self, module: nn.Module, old: nn.Module) -> None:
        for attr, value in self.attributes.items():
            setattr(module, attr, value(module))


#: what a new channel's entries of a norm start at
_NORM_INIT = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


def _width(m: nn.Module) -> int:
    held = [t for t in (getattr(m, "weight", None), getattr(m, "running_mean", None)) if t is not None]
    return held[0].shape[0]


class Norm(PerChannel):
    """A normalisation layer or function.

    ``flavour`` says over what it takes statistics: ``"batch"`` (per channel, over the
    batch: BatchNorm, InstanceNorm), ``"layer"`` (over the trailing ``normalized_shape``:
    channels there are pinned) or ``"group"`` (over groups of channels: pinned unless
    every channel is its own group). Its weight and bias, and a batch norm's running
    statistics, are per-channel tensors; a batch norm's weight judges liveliness.
    """

    def __init__(self, flavour: str):
        super().__init__(_NORM_INIT, axis=-1 if flavour == "layer" else 1,
                         scale="weight" if flavour == "batch" else None, shift="bias")
        self.flavour = flavour

    def tensors(self, walk, node) -> dict[str, str]:
        if node.op == "call_module":
            return super().tensors(walk, node)
        found = {}
        for k in self.init:
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

    def statistics(self, walk, node, x) -> bool:
        groups, nshape = self._options(walk, node)
        where = walk.describe(node)
        if self.flavour == "layer":
            axes = range(x.dim() - len(nshape), x.dim())
            if any(walk.tags.carries(x, k) for k in axes):
                walk.pin(x, f"LayerNorm statistics over the channel axis at {where}")
            return len(nshape) == 1
        if self.flavour == "group" and groups not in (None, x.shape[1]):
            walk.pin(x, f"GroupNorm statistics over channel groups at {where}")
        elif self.flavour == "group" and node.op != "call_module" and self._group_weight(node) is None:
            walk.pin(x, f"GroupNorm with a group per channel and no weight whose width its count "
                        f"could follow at {where}")
        return True

    @staticmethod
    def _group_weight(node: fx.Node) -> fx.Node | None:
        """A functional group norm's weight, read as an attribute (None where it is not)."""
        w = node.kwargs.get("weight", node.args[2] if len(node.args) > 2 else None)
        return w if isinstance(w, fx.Node) and w.op == "get_attr" else None

    def sync_call(self, node, root, old_root):
        """A functional group norm with a group per channel: its literal count follows them."""
        if self.flavour != "group" or node.op == "call_module":
            return
        groups, w = node.kwargs.get("num_groups", node.args[1] if len(node.args) > 1 else None), \
            self._group_weight(node)
        if not isinstance(groups, int) or w is None:
            return
        old, new = getattr_path(old_root, w.target).shape[0], getattr_path(root, w.target).shape[0]
        if groups == old and new != old:
            if "num_groups" in node.kwargs:
                node.update_kwarg("num_groups", new)
            else:
                node.update_arg(1, new)

    def stream(self, node, module):
        plain_bn = module is not None and \
            type(module).forward is nn.modules.batchnorm._BatchNorm.forward   # not Sync, no act; a module
        return "batch_norm" if self.flavour == "batch" and plain_bn else None

    def fresh(self, node, module):
        return module is None or type(module).forward in _NORM_FORWARDS

    def absorb_shift(self, node, module, shift):
        """A batch or instance norm of torch's own: its statistics are taken per channel, so a
        per-channel shift of the input cancels in the batch mean; the running mean, which
        then tracks the mean without the shift, takes the shift off (its update is affine
        with weights summing to one, for every momentum)."""
        if self.flavour != "batch" or module is None or type(module).forward not in _NORM_FORWARDS:
            return False
        if module.running_mean is not None:
            with torch.no_grad():
                module.running_mean.sub_(shift.to(module.running_mean))
        return True

    def sync(self, module: nn.Module, old: nn.Module) -> None:
        if getattr(module, "weight", None) is None and getattr(module, "running_mean", None) is None:
            return
        width = _width(module)
        if self.flavour == "batch":
            module.num_features = width
        elif self.flavour == "group":
            if old.num_groups == old.num_channels:
                module.num_groups = width
            module.num_channels = width
        elif tuple(module.normalized_shape) != (width,):
            module.normalized_shape = (width,)


def batch_norm_part(module: nn.Module, x: Tensor, start: int, length: int, index: list[int] | None,
                    first: bool) -> Tensor:
    """A BatchNorm module on its channels ``start:start+length`` (or ``index``) alone, as its
    ``forward`` runs on all of them: the same statistics, and the running ones updated in
    place. ``first``: the part that counts the batch (``num_batches_tracked``)."""
    at, where = part_of(start, length, index, x.device)
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        if first:
            module.num_batches_tracked.add_(1)
        if module.momentum is None:
            factor = 1.0 / float(module.num_batches_tracked)
    mean, var = module.running_mean, module.running_var
    training = module.training or (mean is None and var is None)
    use_stats = not module.training or module.track_running_stats
    part_mean, part_var = (at(mean), at(var)) if use_stats else (None, None)
    y = F.batch_norm(x, part_mean, part_var, at(module.weight), at(module.bias), training, factor, module.eps)
    if where is not None and training and part_mean is not None:
        with torch.no_grad():       # the statistics of copied positions, written back
            mean.index_copy_(0, where, part_mean)
            var.index_copy_(0, where, part_var)
    return y


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


#: torch's own norm layers' forwards (a subclass's may return what it likes)
_NORM_FORWARDS = {nn.modules.batchnorm._BatchNorm.forward, nn.modules.instancenorm._InstanceNorm.forward,
                  nn.LayerNorm.forward, nn.GroupNorm.forward}
