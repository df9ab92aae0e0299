"""A judge for channels no norm judges: a per-channel scale, initialised to 1.

Neural Rejuvenation judges a channel by the per-channel scale that follows it (BatchNorm
γ). Transformers, ConvNeXts and MLPs have none on their widest dimensions (an MLP's
hidden units, a ConvNeXt block's expansion), so fxsurgeon puts a :class:`Gate` where
such a dimension is read: ``y = g · x`` channel by channel, ``g`` starting at 1 (the
function is unchanged). The L1 penalty and the dead test then apply to ``g`` as to γ
(Network Slimming; Sparse Structure Selection's scaling factors), and
:func:`fxsurgeon.export` folds each gate into the layers that read it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Gate(nn.Module):
    """``x`` times ``weight`` along the channel axis ``axis`` (negative: counted from the
    last axis, so the same gate fits any batch shape)."""

    def __init__(self, width: int, axis: int, device=None, dtype=None):
        super().__init__()
        if axis >= 0:
            raise ValueError(f"a gate's axis counts from the last axis (negative), not {axis}")
        self.axis = axis
        self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return x * self.weight.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, axis={self.axis}"
