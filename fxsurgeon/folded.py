"""What removed constant channels still add to a convolution, at every input size.

A channel whose scale is exactly zero emits a constant (``ReLU(β)``). Removing it must
leave the consumer's output unchanged, so its contribution is added back. Through a
zero-padded convolution that contribution is not uniform: positions near the border see
fewer taps of the constant. :class:`FoldedConstant` computes it at run time from the
input's size, by the consumer's own geometry applied to a one-channel map of ones with
the summed kernel ``Σ_c v_c · W[:, c]``; it is exact at every resolution and costs one
single-channel convolution of one image (not counted as multiply-accumulates: it is a
constant map, like a bias).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FoldedConstant(nn.Module):
    """``forward(y, size)``: ``y`` plus the map a constant input contributes to a
    convolution of an input of ``size`` (the input's ``.size()``: only its shape is read).

    ``kernel`` is ``(out, 1, *k)`` (``(1, out, *k)`` when ``transposed``): the consumer's
    weight columns of the removed channels, summed with their constant values.
    """

    def __init__(self, kernel: Tensor, stride, padding, dilation, transposed: bool = False,
                 output_padding=0):
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone())
        self.ndim = kernel.dim() - 2
        self.stride = _ints(stride, self.ndim)
        self.padding = _ints(padding, self.ndim)
        self.dilation = _ints(dilation, self.ndim)
        self.output_padding = _ints(output_padding, self.ndim)
        self.transposed = transposed

    def forward(self, y: Tensor, size: list[int]) -> Tensor:
        ones = y.new_ones([1, 1] + list(size[2:]))
        if self.transposed:
            if self.ndim == 1:
                m = F.conv_transpose1d(ones, self.kernel, None, self.stride, self.padding,
                                       self.output_padding, 1, self.dilation)
            elif self.ndim == 2:
                m = F.conv_transpose2d(ones, self.kernel, None, self.stride, self.padding,
                                       self.output_padding, 1, self.dilation)
            else:
                m = F.conv_transpose3d(ones, self.kernel, None, self.stride, self.padding,
                                       self.output_padding, 1, self.dilation)
        elif self.ndim == 1:
            m = F.conv1d(ones, self.kernel, None, self.stride, self.padding, self.dilation)
        elif self.ndim == 2:
            m = F.conv2d(ones, self.kernel, None, self.stride, self.padding, self.dilation)
        else:
            m = F.conv3d(ones, self.kernel, None, self.stride, self.padding, self.dilation)
        return y + m

    def spec(self) -> dict:
        """Everything but the kernel's values, as plain data (checkpoints rebuild it)."""
        return {"shape": list(self.kernel.shape), "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "transposed": self.transposed,
                "output_padding": self.output_padding}

    @classmethod
    def from_spec(cls, spec: dict) -> FoldedConstant:
        """A fold shaped as ``spec`` says, with a zero kernel (weights load over it)."""
        return cls(torch.zeros(spec["shape"]), spec["stride"], spec["padding"], spec["dilation"],
                   spec["transposed"], spec["output_padding"])

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, stride={self.stride}, padding={self.padding}"


def _ints(v, n: int) -> list[int]:
    return [int(u) for u in v] if isinstance(v, (tuple, list)) else [int(v)] * n
