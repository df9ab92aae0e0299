"""How important each channel is: the scores that pruning to a budget ranks by.

Every criterion returns ``{free dimension name: float array over its channels}``, the
higher the more important, for :func:`fxsurgeon.plan` (``scores=``). A channel written
by several layers (a residual trunk, a concatenation's parts are one channel each) sums
its producers' contributions.

- :func:`magnitude`: the Lp norm of the weights that write the channel (its producer
  rows: conv filters, linear rows, depthwise filters), Li et al. 2017 for ``p=1``.
- :func:`bn_scale`: |γ| of the norms that judge it (Network Slimming); 0 where none.
- :func:`taylor`: first order, ``|Σ w·∂L/∂w|`` over the producer rows, from the
  gradients the user accumulated in ``.grad`` (Molchanov et al. 2019).
- :func:`activation`: the largest |post-activation value| over batches, where the
  network reads the channel (DemP's measurement, :func:`fxsurgeon.activation_peaks`).
- :func:`random`: uniform, a baseline.
"""
from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import numpy as np
import torch

from ..analysis.graph import ChannelGraph
from ..errors import FxSurgeonError
from .activations import activation_peaks
from .liveliness import channel_scales


def _producer_rows(graph: ChannelGraph, per_row) -> dict[str, np.ndarray]:
    """``per_row(weight, axis)`` (a value per position of ``axis``) summed over every
    producer row that writes each channel of each free dimension."""
    tensors = {**dict(graph.module.named_parameters()), **dict(graph.module.named_buffers())}
    out = {}
    for d in graph.free_dims:
        total = np.zeros(d.width)
        for m in d.members:
            if m.role == "out":
                values = per_row(tensors[m.tensor], m.axis)
                np.add.at(total, m.channels, values[m.positions])
        out[d.name] = total
    return out


def _sum_others(w: torch.Tensor, axis: int) -> torch.Tensor:
    """``w`` summed over every axis but ``axis`` (a 1-D ``w``, a bias, as it is)."""
    others = [a for a in range(w.dim()) if a != axis]
    return w.sum(others) if others else w


def magnitude(graph: ChannelGraph, p: float = 2) -> dict[str, np.ndarray]:
    """The Lp norm (``p`` 1 or 2) of each channel's producer weights."""
    if p not in (1, 2):
        raise FxSurgeonError(f"magnitude importance takes p=1 or p=2, not {p!r}")

    def block(w, axis):
        # a float64 copy made anew (``.double()`` of a float64 weight is the weight itself),
        # taken to |w| or w² in place: the same values as out of place
        w = w.to(torch.float64, copy=True)
        return (_sum_others(w.abs_(), axis) if p == 1 else _sum_others(w.pow_(2), axis).sqrt()).cpu().numpy()

    def norm(w, axis):
        w = w.detach()
        bounds = _row_blocks(w, axis)
        if bounds is None:
            return block(w, axis)
        return np.concatenate([block(w[a:b], axis) for a, b in pairwise(bounds)])
    return _producer_rows(graph, norm)


#: elements of a block of rows that :func:`_row_blocks` gives (128 KB in float64: a block
#: stays in cache, under torch's grain size of 32,768 elements, so it runs in one thread)
_BLOCK = 1 << 14


def _row_blocks(w: torch.Tensor, axis: int) -> list[int] | None:
    """Bounds of blocks of ``w``'s rows (its first axis, the channels) to take a norm over
    one block at a time, or None to take it whole. The sums are the same either way: on
    the CPU, a contiguous tensor reduced over every axis but its first sums each row on its
    own, in the same order whatever the number of rows, as long as there are at least two
    (a single output is summed in parts across threads); so every block has two or more.
    Whole, a 5632 x 2048 weight cost two float64 copies of itself (184 MB) and 5-6x the
    time on two cores, in fresh pages."""
    if axis != 0 or w.dim() < 2 or w.device.type != "cpu" or not w.is_contiguous():
        return None
    rows = max(2, _BLOCK // max(w[0].numel(), 1))
    if w.shape[0] < 2 * rows:
        return None
    bounds = list(range(0, w.shape[0], rows))
    if w.shape[0] - bounds[-1] < 2:
        bounds.pop()
    return [*bounds, w.shape[0]]


def bn_scale(graph: ChannelGraph) -> dict[str, np.ndarray]:
    """|γ| of each channel's norms (0 for a channel no norm judges)."""
    return channel_scales(graph, graph.free_dims)


def taylor(graph: ChannelGraph) -> dict[str, np.ndarray]:
    """``|Σ w·∂L/∂w|`` over each channel's producer rows, from the weights' ``.grad``
    (accumulate them over a few batches first: ``loss.backward()`` without a step)."""
    def first_order(w, axis):
        if w.grad is None:
            raise FxSurgeonError(f"taylor importance needs gradients: {tuple(w.shape)} weight has no .grad "
                                 f"(run loss.backward() on a few batches first)")
        return _sum_others((w.detach() * w.grad).double(), axis).abs().cpu().numpy()
    return _producer_rows(graph, first_order)


def activation(graph: ChannelGraph, batches: Iterable) -> dict[str, np.ndarray]:
    """Each channel's largest |activation| over ``batches`` where the network reads it
    (channels read where that cannot be measured score as the most important)."""
    peaks = activation_peaks(graph, batches)
    top = max((float(v[np.isfinite(v)].max(initial=0)) for v in peaks.values()), default=0.0)
    return {name: np.where(np.isfinite(v), v, top + 1) for name, v in peaks.items()}


def random(graph: ChannelGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform random scores from ``seed``."""
    rng = np.random.default_rng(seed)
    return {d.name: rng.random(d.width) for d in graph.free_dims}


CRITERIA = {"magnitude": magnitude, "bn_scale": bn_scale, "taylor": taylor, "random": random}
