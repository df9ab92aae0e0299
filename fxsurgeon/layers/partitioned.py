"""Partitioned conv and linear layers: the NR-CR and NR-CA layers of the paper.

A rejuvenated layer's outputs are grouped by *generation*: the survivors (S, generation
0) first, then the channels each rejuvenation added (R, generation 1, and so on after
further ``cr`` events). Its inputs belong to a generation too, or are fixed (F: the
image, a pinned trunk, a dimension that keeps its width), in whatever order the graph
gives them. Writing ``A_XY`` for the layer applied to the X inputs into the Y outputs:

- ``cr`` computes only the diagonal blocks: generation ``g``'s outputs read generation
  ``g``'s inputs (and the fixed ones), ``S_out = A_SS``, ``R_out = A_RR``;
- ``ca`` (two generations) adds the cross blocks through a gate (Eq. 9/10):
  ``S_out = A_SS + 2σ(A_SS)·A_RS`` and ``R_out = A_RR + 2σ(A_RR)·A_SR``.

Fixed inputs feed every generation, as part of its diagonal block; the bias belongs
there too. ``cr`` costs ``Σ_g out_g·(in_g + F_in)`` multiply-accumulates per position;
``ca`` costs exactly one dense layer of the same widths. Both script with TorchScript.

A layer runs in one of two exact forms (:attr:`Partitioned.form`), with the same
parameters: ``"split"``, one kernel per block (the FLOPs above), or ``"dense"``, one kernel
on the dense weight assembled from the blocks each call, the blocks between generations
zero (not parameters, so they stay zero through every gradient and optimizer); ``ca``'s
dense form computes the diagonal and the cross blocks as one layer of twice the outputs,
then gates. Fewer, larger kernels for more FLOPs: which is faster depends on the layer,
the batch and the device (:mod:`fxsurgeon.surgery.forms` times both).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FxSurgeonError

SCHEMES = ("cr", "ca")


def _runs(index: np.ndarray) -> bool:
    """Whether sorted positions are one contiguous run."""
    return len(index) == 0 or bool((np.diff(index) == 1).all())


class _Gate(torch.autograd.Function):
    """``a + 2σ(a)·c`` with a backward of four elementwise kernels (autograd's takes six):
    ``∂a = g·(1 + 2c·σ(1-σ))``, ``∂c = 2g·σ``."""

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor) -> Tensor:
        s = torch.sigmoid(a)
        ctx.save_for_backward(s, c)
        return torch.addcmul(a, s, c, value=2.0)

    @staticmethod
    def backward(ctx, g: Tensor):
        s, c = ctx.saved_tensors
        u = g * s
        return torch.addcmul(g, torch.addcmul(u, u, s, value=-1.0), c, value=2.0), u.mul_(2.0)


def _gate(a: Tensor, c: Tensor) -> Tensor:
    """The gate of Eq. 9/10: ``a + 2σ(a)·c``."""
    if not torch.jit.is_scripting():            # TorchScript compiles only the line after
        return _Gate.apply(a, c)
    return torch.addcmul(a, torch.sigmoid(a), c, value=2.0)


class Partitioned(nn.Module):
    """A conv or linear layer split by generation (see the module docstring).

    ``blocks[k]`` holds the columns of generation ``block_gen[k]``'s inputs (under ``cr``
    only that generation's output rows, under ``ca`` every row; a block that would be
    empty is not there); ``weight_f`` the columns of the fixed inputs, every row (``None``
    where there are none). ``rows[g]`` counts generation ``g``'s outputs. Build one with
    :meth:`from_dense`.
    """

    __jit_unused_properties__ = ["weight"]

    def __init__(self, scheme: str, layer: nn.Module, rows: list[int], cols: list[np.ndarray],
                 fixed: np.ndarray):
        super().__init__()
        if scheme not in SCHEMES:
            raise FxSurgeonError(f"partitioned layers exist for {SCHEMES}, not {scheme!r}")
        if scheme == "ca" and len(rows) != 2:
            raise FxSurgeonError(f"a ca layer has two generations (S and R), not {len(rows)}")
        self.scheme = scheme
        self.rows = [int(r) for r in rows]
        self.cols = [len(c) for c in cols]
        if isinstance(layer, nn.Linear):
            self.ndim, self.axis = 0, -1
            self.stride, self.padding, self.dilation = [1], [0], [1]
        else:
            self.ndim, self.axis = layer.weight.dim() - 2, 1
            self.stride, self.padding = list(layer.stride), list(layer.padding)
            self.dilation = list(layer.dilation)
        self.kernel = list(layer.weight.shape[2:])
        parts = [*cols, fixed]
        # parts that are contiguous tile the input: one split, whose backward is one cat
        self.split = all(_runs(p) for p in parts)
        first = [int(p[0]) if len(p) else 0 for p in parts]
        order = sorted(range(len(parts)), key=lambda k: (len(parts[k]) == 0, first[k]))
        self.split_sizes = [len(parts[k]) for k in order]
        self.slot = [order.index(k) for k in range(len(parts))]
        device = layer.weight.device
        self.register_buffer("index", torch.as_tensor(np.concatenate(cols), dtype=torch.long, device=device),
                             persistent=False)
        self.register_buffer("index_f", torch.as_tensor(fixed, dtype=torch.long, device=device),
                             persistent=False)
        # the layer's dtype, device and kernel, for a layer whose every block is gone
        self.register_buffer("like", layer.weight.new_zeros([0, 0, *self.kernel]), persistent=False)
        self._dense_buffers(np.concatenate([*cols, fixed]).astype(np.int64))
        self.blocks = nn.ParameterList()
        self.block_gen: List[int] = []
        self.register_parameter("weight_f", None)
        self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, scheme: str, layer: nn.Module, row_gen: np.ndarray, col_gen: np.ndarray
                   ) -> Partitioned:
        """The partitioned form of a dense ``layer`` whose output ``i`` belongs to
        generation ``row_gen[i]`` (grouped, in increasing order) and whose input ``j`` to
        ``col_gen[j]`` (-1: fixed). Under ``cr`` the blocks between generations are
        dropped (they must be zero for the function to stay); under ``ca`` they are kept."""
        row_gen, col_gen = np.asarray(row_gen), np.asarray(col_gen)
        gens = int(max(row_gen.max(initial=0), col_gen.max(initial=0))) + 1
        gens = max(gens, 2) if scheme == "ca" else gens
        if len(row_gen) and (np.diff(row_gen) < 0).any():
            raise FxSurgeonError("a partitioned layer's outputs must be grouped by generation")
        rows = [int((row_gen == g).sum()) for g in range(gens)]
        cols = [np.nonzero(col_gen == g)[0] for g in range(gens)]
        fixed = np.nonzero(col_gen < 0)[0]
        m = cls(scheme, layer, rows, cols, fixed)
        w = layer.weight.detach()
        starts = np.concatenate([[0], np.cumsum(rows)])
        for g in range(gens):
            block = w[starts[g]:starts[g + 1]] if scheme == "cr" else w
            if block.shape[0] and len(cols[g]):
                at = torch.as_tensor(cols[g], device=w.device)
                m.blocks.append(nn.Parameter(block.index_select(1, at).clone(), layer.weight.requires_grad))
                m.block_gen.append(g)
        if len(fixed):
            m.weight_f = nn.Parameter(w.index_select(1, torch.as_tensor(fixed, device=w.device)).clone(),
                                      layer.weight.requires_grad)
        if layer.bias is not None:
            m.bias = nn.Parameter(layer.bias.detach().clone(), layer.bias.requires_grad)
        return m

    def _dense_buffers(self, parts: np.ndarray) -> None:
        """What the dense form reads besides the parameters, from the input positions of the
        parts (``index`` then ``index_f``): the order that puts them back in the layer's input
        order (:meth:`_in_order`) and, under ``ca``, which weights are on the diagonal; the
        layer starts in the split form."""
        out_gen = np.repeat(np.arange(len(self.rows)), self.rows)
        col_gen = np.full(len(parts), -1)
        col_gen[parts[:sum(self.cols)]] = np.repeat(np.arange(len(self.cols)), self.cols)
        kw = {"device": self.like.device}
        self.register_buffer("order", torch.as_tensor(np.argsort(parts) if not self.split else parts[:0],
                                                      dtype=torch.long, **kw), persistent=False)
        own = (out_gen[:, None] == col_gen[None, :]) | (col_gen[None, :] < 0)
        self.register_buffer("own", torch.as_tensor(own, dtype=self.like.dtype, **kw).reshape(
            [len(out_gen), len(col_gen)] + [1] * self.ndim) if self.scheme == "ca" else self.like[:0],
            persistent=False)
        self.form = "split"

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if "form" not in state:          # pickled before the dense form
            self.like = self.like.new_zeros([0, 0, *self.kernel])
            self._dense_buffers(torch.cat([self.index, self.index_f]).cpu().numpy())

    def generations(self) -> tuple[np.ndarray, np.ndarray]:
        """The generation of every output and input position (-1: fixed input)."""
        out = np.repeat(np.arange(len(self.rows)), self.rows)
        cols = np.full(sum(self.cols) + len(self.index_f), -1)
        cols[self.index.cpu().numpy()] = np.repeat(np.arange(len(self.cols)), self.cols)
        return out, cols

    @property
    def weight(self) -> Tensor:
        """The equivalent dense weight, as :meth:`dense_weight` (what the analyser sees)."""
        return self.dense_weight()

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight (zero blocks between generations under ``cr``)."""
        ref = self.weight_f if self.weight_f is not None else \
            self.blocks[0] if len(self.blocks) else self.like
        out_gen, col_gen = self.generations()
        w = ref.new_zeros([len(out_gen), len(col_gen), *self.kernel])
        cuts = np.concatenate([[0], np.cumsum(self.rows)])
        with torch.no_grad():
            for g, block in zip(self.block_gen, self.blocks, strict=True):
                at = slice(int(cuts[g]), int(cuts[g + 1])) if self.scheme == "cr" else slice(None)
                cols = torch.as_tensor(np.nonzero(col_gen == g)[0], device=w.device)
                w[at] = w[at].index_copy(1, cols, block.detach())
            if self.weight_f is not None:
                w.index_copy_(1, self.index_f, self.weight_f.detach())
        return w

    def dense(self) -> nn.Module:
        """The standard layer this one computes under ``cr`` (its cross blocks zero)."""
        w = self.dense_weight()
        out, n_in = w.shape[:2]
        kw = {"dtype": w.dtype, "device": w.device}
        if self.ndim == 0:
            layer = nn.Linear(n_in, out, bias=self.bias is not None, **kw)
        else:
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.ndim - 1]
            layer = conv(n_in, out, self.kernel, self.stride, self.padding, self.dilation,
                         bias=self.bias is not None, **kw)
        with torch.no_grad():
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        state = next(self.parameters(), None)       # none when every block and the bias are gone
        layer.requires_grad_(state is None or state.requires_grad)
        return layer

    def _inputs(self, x: Tensor) -> List[Tensor]:
        """Each generation's inputs, then the fixed ones (empty where a part is)."""
        if self.split:
            pieces = torch.split(x, self.split_sizes, self.axis)
            return [pieces[s] for s in self.slot]
        parts = list(torch.split(x.index_select(self.axis, self.index), self.cols, self.axis))
        parts.append(x.index_select(self.axis, self.index_f))
        return parts

    def _layer(self, x: Tensor, w: Tensor) -> Tensor:
        if self.ndim == 0:
            return F.linear(x, w)
        if self.ndim == 1:
            return F.conv1d(x, w, None, self.stride, self.padding, self.dilation)
        if self.ndim == 2:
            return F.conv2d(x, w, None, self.stride, self.padding, self.dilation)
        return F.conv3d(x, w, None, self.stride, self.padding, self.dilation)

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
        if self._dense_form():
            return self._dense_forward(x)
        parts: List[Optional[Tensor]] = []
        for part in self._inputs(x):
            parts.append(part)
        outs = self.forward_parts(parts, x)
        return outs[0] if len(outs) == 1 else torch.cat(outs, self.axis)

    def forward_parts(self, parts: List[Optional[Tensor]], x: Tensor) -> List[Tensor]:
        """The layer on its inputs held apart: ``parts[g]`` generation ``g``'s inputs (in
        increasing position), ``parts[-1]`` the fixed ones (None where a part is not read);
        one output per generation. ``x`` is any input of the layer's dtype and device (for
        the zeros of outputs that read nothing)."""
        if self._dense_form():
            return list(torch.split(self._dense_forward(self._whole(parts)), self.rows, self.axis))
        return self._split_parts(parts, x)

    def _dense_form(self) -> bool:
        """Whether this call runs the dense form (a layer that reads nothing runs split)."""
        return self.form == "dense" and (len(self.block_gen) > 0 or self.weight_f is not None)

    def _in_order(self, pieces: List[Tensor], axis: int) -> Tensor:
        """One tensor per part (each generation's, then the fixed), joined along ``axis``
        in the layer's own input order."""
        if self.split:
            ordered: List[Tensor] = []
            for s in range(len(pieces)):
                ordered.append(pieces[self.slot.index(s)])
            return torch.cat(ordered, axis)
        return torch.cat(pieces, axis).index_select(axis, self.order)

    def _whole(self, parts: List[Optional[Tensor]]) -> Tensor:
        """The layer's input from its parts; a part it does not read (None) as zeros."""
        ref: Optional[Tensor] = None
        for p in parts:
            if p is not None:
                ref = p
        assert ref is not None
        widths = self.cols + [len(self.index_f)]
        pieces: List[Tensor] = []
        for k, p in enumerate(parts):
            if p is None:
                shape = list(ref.shape)
                shape[self.axis] = widths[k]
                p = ref.new_zeros(shape)
            pieces.append(p)
        return self._in_order(pieces, self.axis)

    def _assembled(self) -> Tensor:
        """The dense weight, built from the blocks on every call (gradients reach the
        blocks; under ``cr`` the blocks between generations are zeros, not parameters)."""
        n = sum(self.rows)
        ref = self.weight_f if self.weight_f is not None else self.blocks[0]
        by_gen: List[Optional[Tensor]] = [None for _ in self.rows]
        for k, b in enumerate(self.blocks):
            by_gen[self.block_gen[k]] = b
        start = 0
        pieces: List[Tensor] = []
        for g in range(len(self.cols)):
            found = by_gen[g]
            if found is None:
                pieces.append(self._zeros(ref, n, self.cols[g]))
            elif self.scheme == "cr":
                above = self._zeros(ref, start, self.cols[g])
                below = self._zeros(ref, n - start - self.rows[g], self.cols[g])
                pieces.append(torch.cat([above, found, below], 0))
            else:
                pieces.append(found)
            start += self.rows[g]
        weight_f = self.weight_f
        pieces.append(weight_f if weight_f is not None else self._zeros(ref, n, 0))
        return self._in_order(pieces, 1)

    def _zeros(self, like: Tensor, rows: int, cols: int) -> Tensor:
        """A zero weight of ``rows`` outputs and ``cols`` inputs, ``like``'s dtype and device."""
        shape = [rows, cols]
        for k in self.like.shape[2:]:
            shape.append(k)
        return like.new_zeros(shape)

    def _dense_forward(self, x: Tensor) -> Tensor:
        """The dense form on the whole input: one kernel (ca: of twice the outputs, the
        diagonal blocks then the cross ones, gated)."""
        n = sum(self.rows)
        w = self._assembled()
        if self.scheme == "cr":
            return self._with_bias(self._layer(x, w), 0, n, x)
        y = self._layer(x, torch.cat([w * self.own, w - w * self.own], 0))
        own, cross = torch.split(y, [n, n], self.axis)
        return _gate(self._with_bias(own, 0, n, x), cross)

    def _split_parts(self, parts: List[Optional[Tensor]], x: Tensor) -> List[Tensor]:
        """The split form of :meth:`forward_parts`: one kernel per block."""
        f: Optional[Tensor] = None       # from the fixed inputs, every output
        fixed_in = parts[-1]
        if self.weight_f is not None and fixed_in is not None:
            f = self._layer(fixed_in, self.weight_f)
        fixed: List[Tensor] = []
        if f is not None:
            fixed = list(torch.split(f, self.rows, self.axis))
        own: List[Optional[Tensor]] = [None for _ in self.rows]
        cross: List[Optional[Tensor]] = [None for _ in self.rows]
        like = f
        for k, block in enumerate(self.blocks):
            g = self.block_gen[k]
            part = parts[g]
            assert part is not None
            y = self._layer(part, block)
            like = y
            if self.scheme == "cr":
                own[g] = y
            else:                       # ca: generation g's block reaches every output
                pieces = torch.split(y, self.rows, self.axis)
                own[g] = pieces[g]
                cross[g] = pieces[1 - g]
        if like is None:        # its outputs read nothing (their inputs all died): zeros
            like = self._layer(x.narrow(self.axis, 0, 1), self._zeros(x, sum(self.rows), 1))
        outs: List[Tensor] = []
        start = 0
        for g in range(len(self.rows)):
            mine = own[g]
            if len(fixed) > 0:
                mine = fixed[g] if mine is None else mine + fixed[g]
            out = self._with_bias(mine, start, self.rows[g], like)
            gate = cross[1 - g] if self.scheme == "ca" else None
            if gate is not None:
                out = _gate(out, gate)
            outs.append(out)
            start += self.rows[g]
        return outs

    def extra_repr(self) -> str:
        return (f"{self.scheme}, outputs {self.rows} by generation, inputs {self.cols} "
                f"and {len(self.index_f)} fixed, {self.form} form")
