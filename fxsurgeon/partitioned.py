"""S/R-partitioned conv and linear layers: the NR-CR and NR-CA layers of the paper.

A rejuvenated layer's outputs are its survivors (S) followed by its new channels (R);
its inputs are S, R and fixed (F) channels in whatever order the graph gives them.
Writing ``A_XY`` for the layer applied to the X inputs into the Y outputs:

- ``cr`` computes only the diagonal blocks: ``S_out = A_SS``, ``R_out = A_RR``;
- ``ca`` adds the cross blocks through a gate (Eq. 9/10):
  ``S_out = A_SS + 2σ(A_SS)·A_RS`` and ``R_out = A_RR + 2σ(A_RR)·A_SR``.

Fixed inputs (the image, a pinned trunk) feed both halves, as part of ``A_SS`` and
``A_RR``; the bias belongs there too. ``cr`` costs ``S_out·(S_in+F_in) + R_out·(R_in+F_in)``
multiply-accumulates per position; ``ca`` costs exactly one dense layer of the same
widths, computed as one layer call per input part. Both script with TorchScript.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import FxSurgeonError

SCHEMES = ("cr", "ca")


def _span(index: np.ndarray) -> tuple[int, int, bool]:
    """(start, length, contiguous) of sorted positions."""
    if len(index) == 0:
        return 0, 0, True
    start = int(index[0])
    return start, len(index), bool((np.diff(index) == 1).all())


class Partitioned(nn.Module):
    """A conv or linear layer split into S/R blocks (see the module docstring).

    Parameters ``weight_s``, ``weight_r``, ``weight_f`` hold the columns of the S, R and
    F inputs (``None`` where a part is empty); under ``cr`` ``weight_s`` has only the S
    output rows and ``weight_r`` only the R rows. Build one with :meth:`from_dense`.
    """

    def __init__(self, scheme: str, layer: nn.Module, out_s: int, out_r: int,
                 parts: list[np.ndarray]):
        super().__init__()
        if scheme not in SCHEMES:
            raise FxSurgeonError(f"partitioned layers exist for {SCHEMES}, not {scheme!r}")
        self.scheme = scheme
        self.out_s, self.out_r = out_s, out_r
        if isinstance(layer, nn.Linear):
            self.ndim, self.axis = 0, -1
            self.stride, self.padding, self.dilation = [1], [0], [1]
        else:
            self.ndim, self.axis = layer.weight.dim() - 2, 1
            self.stride, self.padding = list(layer.stride), list(layer.padding)
            self.dilation = list(layer.dilation)
        self.kernel = list(layer.weight.shape[2:])
        spans = [_span(p) for p in parts]
        self.starts = [s[0] for s in spans]
        self.lengths = [s[1] for s in spans]
        self.contiguous = [s[2] for s in spans]
        # parts that are contiguous tile the input: one split, whose backward is one cat
        self.split = all(self.contiguous)
        order = sorted(range(3), key=lambda k: (self.lengths[k] == 0, self.starts[k]))
        self.split_sizes = [self.lengths[k] for k in order]
        self.slot = [order.index(k) for k in range(3)]
        for name, p in zip(("index_s", "index_r", "index_f"), parts, strict=True):
            self.register_buffer(name, torch.as_tensor(p, dtype=torch.long, device=layer.weight.device),
                                 persistent=False)
        for name in ("weight_s", "weight_r", "weight_f", "bias"):
            self.register_parameter(name, None)

    @classmethod
    def from_dense(cls, scheme: str, layer: nn.Module, out_s: int,
                   s: np.ndarray, r: np.ndarray, f: np.ndarray) -> Partitioned:
        """The partitioned form of a dense ``layer`` whose first ``out_s`` outputs are S
        and the rest R, reading its S, R and F inputs at positions ``s``, ``r``, ``f``.
        Under ``cr`` the cross blocks of ``layer`` are dropped; under ``ca`` they are kept."""
        w = layer.weight.detach()
        out_r = w.shape[0] - out_s
        if len(s) + len(f) == 0:
            raise FxSurgeonError("a partitioned layer needs survivor or fixed inputs")
        m = cls(scheme, layer, out_s, out_r, [s, r, f])
        rows = {"s": w[:out_s], "r": w[out_s:]} if scheme == "cr" else {}   # cr: diagonal only
        for k, cols in zip("srf", (s, r, f), strict=True):
            block = rows.get(k, w)
            if len(cols) and block.shape[0]:
                value = block.index_select(1, torch.as_tensor(cols, device=w.device)).clone()
                setattr(m, f"weight_{k}", nn.Parameter(value, layer.weight.requires_grad))
        if layer.bias is not None:
            m.bias = nn.Parameter(layer.bias.detach().clone(), layer.bias.requires_grad)
        return m

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight (zero cross blocks under ``cr``), inputs in place."""
        ref = next(p for p in (self.weight_s, self.weight_r, self.weight_f) if p is not None)
        n_in = sum(self.lengths)
        w = ref.new_zeros([self.out_s + self.out_r, n_in, *self.kernel])
        rows = {"s": slice(0, self.out_s), "r": slice(self.out_s, None)} if self.scheme == "cr" else {}
        for k in "srf":
            p, at = getattr(self, f"weight_{k}"), rows.get(k, slice(None))
            if p is not None:
                w[at] = w[at].index_copy(1, getattr(self, f"index_{k}"), p.detach())
        return w

    def _inputs(self, x: Tensor) -> list[Tensor]:
        """The S, R and F inputs (empty where a part is)."""
        if self.split:
            pieces = torch.split(x, self.split_sizes, self.axis)
            return [pieces[self.slot[0]], pieces[self.slot[1]], pieces[self.slot[2]]]
        return [x.index_select(self.axis, self.index_s), x.index_select(self.axis, self.index_r),
                x.index_select(self.axis, self.index_f)]

    def _layer(self, x: Tensor, w: Tensor) -> Tensor:
        if self.ndim == 0:
            return F.linear(x, w)
        if self.ndim == 1:
            return F.conv1d(x, w, None, self.stride, self.padding, self.dilation)
        if self.ndim == 2:
            return F.conv2d(x, w, None, self.stride, self.padding, self.dilation)
        return F.conv3d(x, w, None, self.stride, self.padding, self.dilation)

    def _rows(self, y: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``y``'s S and R outputs."""
        if y is None:
            return None, None
        s, r = torch.split(y, [self.out_s, self.out_r], self.axis)
        return s, r

    def _with_bias(self, y: Optional[Tensor], start: int, length: int, like: Tensor) -> Tensor:
        """``y`` (None: zeros) plus the bias of outputs ``start:start+length``."""
        if y is None:
            shape = list(like.shape)
            shape[self.axis] = length
            y = like.new_zeros(shape)
        if self.bias is not None:
            b = self.bias.narrow(0, start, length)
            if self.ndim > 0:
                b = b.reshape([length] + [1] * self.ndim)
            y = y + b
        return y

    def forward(self, x: Tensor) -> Tensor:
        so, ro = self.out_s, self.out_r
        a: Optional[Tensor] = None       # from S inputs
        b: Optional[Tensor] = None       # from R inputs
        f: Optional[Tensor] = None       # from F inputs, every output
        xs, xr, xf = self._inputs(x)
        if self.weight_s is not None:
            a = self._layer(xs, self.weight_s)
        if self.weight_r is not None:
            b = self._layer(xr, self.weight_r)
        if self.weight_f is not None:
            f = self._layer(xf, self.weight_f)
        if self.scheme == "cr":
            self_s, self_r = a, b
            cross_s: Optional[Tensor] = None
            cross_r: Optional[Tensor] = None
        else:
            self_s, cross_r = self._rows(a)
            cross_s, self_r = self._rows(b)
        f_s, f_r = self._rows(f)
        if f_s is not None and f_r is not None:
            self_s = f_s if self_s is None else self_s + f_s
            self_r = f_r if self_r is None else self_r + f_r
        like = a if a is not None else f     # S or F inputs exist: see from_dense
        assert like is not None
        out_s = self._with_bias(self_s, 0, so, like)
        if cross_s is not None:
            out_s = torch.addcmul(out_s, torch.sigmoid(out_s), cross_s, value=2.0)
        if ro == 0:
            return out_s
        out_r = self._with_bias(self_r, so, ro, like)
        if cross_r is not None:
            out_r = torch.addcmul(out_r, torch.sigmoid(out_r), cross_r, value=2.0)
        return torch.cat([out_s, out_r], self.axis)

    def extra_repr(self) -> str:
        return (f"{self.scheme}, out S {self.out_s} R {self.out_r}, in S {self.lengths[0]} "
                f"R {self.lengths[1]} F {self.lengths[2]}")
