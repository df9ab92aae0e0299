"""What removed constant channels still add to a layer, at every input size.

A channel whose scale is exactly zero emits a constant (``ReLU(β)``). Removing it must
leave the layers that read it unchanged, so its contribution is added back. Where that
contribution is not the same at every position (a zero-padded convolution sees less of
the constant near the border; a zero pad or an average pool that counts padding in
between makes the constant itself vary), :class:`FoldedConstant` computes it at run
time from the sizes: the removed channels' constants, spread over the map where they
are still constant, through the channel-wise ops that lie between (:attr:`chain`), then
through the layer's weight columns of those channels (:class:`FoldedConv`). It is exact
at every resolution and costs that layer on one image of the removed channels only (not
counted as multiply-accumulates: the result is a constant map per input size, like a
bias).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FoldedConv(nn.Module):
    """A convolution (transposed or not) with a fixed weight and no bias: a layer restricted
    to the columns of some of its input channels."""

    def __init__(self, weight: Tensor, stride, padding, dilation, transposed: bool = False,
                 output_padding=0):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.ndim = weight.dim() - 2
        self.stride = _ints(stride, self.ndim)
        self.padding = _ints(padding, self.ndim)
        self.dilation = _ints(dilation, self.ndim)
        self.output_padding = _ints(output_padding, self.ndim)
        self.transposed = transposed

    def forward(self, x: Tensor) -> Tensor:
        if self.transposed:
            if self.ndim == 1:
                return F.conv_transpose1d(x, self.weight, None, self.stride, self.padding,
                                          self.output_padding, 1, self.dilation)
            if self.ndim == 2:
                return F.conv_transpose2d(x, self.weight, None, self.stride, self.padding,
                                          self.output_padding, 1, self.dilation)
            return F.conv_transpose3d(x, self.weight, None, self.stride, self.padding,
                                      self.output_padding, 1, self.dilation)
        if self.ndim == 1:
            return F.conv1d(x, self.weight, None, self.stride, self.padding, self.dilation)
        if self.ndim == 2:
            return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        return F.conv3d(x, self.weight, None, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}"


class FoldedConstant(nn.Module):
    """``forward(y, size)``: ``y`` plus what removed channels holding the constants
    ``values`` add to it, spread over a map of ``size`` (the ``.size()`` of the tensor
    where they are constant: only its shape is read), through ``chain`` and ``layer``."""

    def __init__(self, values: Tensor, layer: nn.Module, chain: nn.Module | None = None):
        super().__init__()
        self.register_buffer("values", values.detach().clone())
        self.layer = layer
        self.chain = chain if chain is not None else nn.Identity()

    def forward(self, y: Tensor, size: list[int]) -> Tensor:
        return y + self.constant(y, size)

    def constant(self, y: Tensor, size: list[int]) -> Tensor:
        """What the removed channels add to ``y`` (of ``y``'s dtype), one image of it."""
        shape = [1, self.values.shape[0]] + list(size[2:])
        spread = self.values.to(y.dtype).view([1, -1] + [1] * (len(size) - 2)).expand(shape)
        return self.layer(self.chain(spread))


def _ints(v, n: int) -> list[int]:
    return [int(u) for u in v] if isinstance(v, (tuple, list)) else [int(v)] * n
