"""Rules of layers from libraries fxsurgeon does not import (torchvision, timm), by dotted
name: their normalisations with a fused activation or frozen statistics, and timm's
self-attention, whose heads are channels."""
from __future__ import annotations

from torch import nn

from .attention import HeadAttention
from .norms import Norm, PerChannel
from .table import TABLE


def _homogeneous(m: nn.Module | None) -> bool:
    rule = TABLE.module_rule(m) if m is not None else None
    return m is None or (rule is not None and rule.homogeneous(None, m))


class NormAct(Norm):
    """A batch norm followed, inside the same module, by its ``drop`` and ``act`` modules
    (timm's ``BatchNormAct2d``): a dead channel still emits a constant, and rescaling is
    exact when the activation is positively homogeneous (ReLU)."""

    def __init__(self):
        super().__init__("batch")

    def after_scale_homogeneous(self, module: nn.Module) -> bool:
        return _homogeneous(getattr(module, "drop", None)) and _homogeneous(getattr(module, "act", None))


#: torchvision's frozen batch norm (detection backbones): statistics and affine as buffers
FROZEN = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


def register_libraries(table) -> None:
    table.register("torchvision.ops.misc.FrozenBatchNorm2d", PerChannel(FROZEN, scale="weight", shift="bias"))
    norm_act = NormAct()
    for name in ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d"):
        table.register(f"timm.layers.norm_act.{name}", norm_act)
    table.register("timm.layers.attention.Attention", HeadAttention())
