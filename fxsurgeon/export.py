"""Deployable modules: S/R-partitioned layers back to standard torch layers where exact."""
from __future__ import annotations

import copy

from torch import fx, nn

from .partitioned import Partitioned

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _dense(part: Partitioned) -> nn.Module:
    """The standard layer that computes what a ``cr`` partitioned layer computes."""
    w = part.dense_weight()
    out, n_in = w.shape[:2]
    bias = part.bias is not None
    kw = {"dtype": w.dtype, "device": w.device}
    if part.ndim == 0:
        layer = nn.Linear(n_in, out, bias=bias, **kw)
    else:
        layer = _CONVS[part.ndim](n_in, out, part.kernel, part.stride, part.padding, part.dilation,
                                  bias=bias, **kw)
    layer.weight.data.copy_(w)
    if bias:
        layer.bias.data.copy_(part.bias.detach())
    return layer


def export(module: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``module`` for deployment: every ``cr`` partitioned layer becomes the
    standard conv or linear layer it equals (zero cross blocks); ``nr`` and ``prune``
    modules are standard already. ``ca`` layers stay: their gate is not a linear
    layer, and they script with TorchScript and export to ONNX as they are."""
    out = copy.deepcopy(module)
    for name, m in list(out.named_modules()):
        if isinstance(m, Partitioned) and m.scheme == "cr":
            owner, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(owner) if owner else out, leaf, _dense(m))
    return out
