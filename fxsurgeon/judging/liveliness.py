"""Which channels are alive, read from the per-channel scales that follow them.

The paper's test: a channel is dead in a BatchNorm layer when ``|γ| < threshold ·
max|γ|`` of that layer. A channel written by several layers (a residual trunk written
by every block) is dead only when it is dead in the scale after every one of them.
A dimension with a writer that no scale follows (the excitation conv of a
squeeze-excitation gate) is not judged: its channels carry input-dependent values
whatever the scales say, so they stay alive. An attention head is judged by its
columns of the output projection, the largest |entry| among them standing for γ.
A channel its scale calls dead may still not be removable: one that a computed map
multiplies while its constant is not zero carries ``c·ψ(x)``; the plan keeps it
(:mod:`fxsurgeon.judging.modulated`), and it stays dead here.
"""
from __future__ import annotations

import numpy as np

from ..analysis.graph import ChannelGraph
from ..errors import require


def check_fraction(name: str, value: float) -> None:
    """A fraction in (0, 1), or a clear error."""
    require(name, value, lambda v: 0 < v < 1, "a fraction in (0, 1)")


def _tensors(graph: ChannelGraph) -> dict:
    """Parameters and buffers by name (a frozen norm's scale is a buffer)."""
    return {**dict(graph.module.named_parameters()), **dict(graph.module.named_buffers())}


def position_scales(t, axis: int) -> np.ndarray:
    """The largest |entry| at each position along ``axis`` of a liveliness source: γ
    itself, or an attention head's output-projection columns."""
    a = t.detach().abs().float()
    return (a.amax([k for k in range(a.dim()) if k != axis]) if a.dim() > 1 else a).cpu().numpy()


def channel_scales(graph: ChannelGraph, dims) -> dict[str, np.ndarray]:
    """Per dimension of ``dims``, the largest |scale| of each channel over its sources (0
    if none)."""
    params = _tensors(graph)
    out = {}
    for d in dims:
        best = out[d.name] = np.zeros(d.width)
        for m in d.sources:
            np.maximum.at(best, m.channels, position_scales(params[m.tensor], m.axis)[m.positions])
    return out


def smallest(graph: ChannelGraph, ratio: float) -> dict[str, np.ndarray]:
    """Network Slimming's global criterion: the ``ratio`` of all judged channels with
    the smallest scales are dead (alive masks as :func:`liveliness` returns)."""
    check_fraction("ratio", ratio)
    scales = channel_scales(graph, [d for d in graph.free_dims if d.scaled and d.sources])
    if not scales:
        return {}
    cut = np.quantile(np.concatenate(list(scales.values())), ratio)
    return {name: s > cut for name, s in scales.items()}


def smallest_filters(graph: ChannelGraph, ratio: float) -> dict[str, np.ndarray]:
    """Magnitude structured pruning (Li et al., 2017): in every free dimension, the
    ``ratio`` of its channels whose producer weights have the smallest L1 norm (summed
    over the layers that write the channel) are dead."""
    check_fraction("ratio", ratio)
    params = _tensors(graph)
    alive = {}
    for d in graph.free_dims:
        norms = np.zeros(d.width)
        for m in d.members:
            if m.role == "out":
                w = params[m.tensor].detach()
                per = w.abs().sum([a for a in range(w.dim()) if a != m.axis]).double().cpu().numpy()
                np.add.at(norms, m.channels, per[m.positions])
        alive[d.name] = norms > np.quantile(norms, ratio)
    return alive


def liveliness(graph: ChannelGraph, threshold: float = 0.01) -> dict[str, np.ndarray]:
    """Per free dimension, a bool array over its channels: True where alive.

    Dimensions without a liveliness source stay alive. Scales are read from the
    traced module, which shares its parameters with the user's model, so this
    reflects training as it goes. ``threshold`` is a fraction in (0, 1).
    """
    check_fraction("threshold", threshold)
    params = _tensors(graph)
    alive: dict[str, np.ndarray] = {}
    for d in graph.free_dims:
        if not d.scaled:
            alive[d.name] = np.ones(d.width, bool)
            continue
        read = np.zeros(d.width, bool)
        lively = np.zeros(d.width, bool)
        for m in d.sources:
            scale = position_scales(params[m.tensor], m.axis)
            big = scale[m.positions] >= threshold * scale.max() if scale.max() > 0 else \
                np.zeros(len(m.positions), bool)
            read[m.channels] = True
            np.logical_or.at(lively, m.channels, big)
        alive[d.name] = lively | ~read
    return alive
