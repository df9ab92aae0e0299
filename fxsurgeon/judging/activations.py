"""Which channels are dead by their activations: zero wherever a layer reads them.

DemP's test (Dufort-Labbé et al., 2024): a unit is dead when its post-activation output
is zero on every sample of a held-out "death set". It is measured where it matters, at
the input of every layer that reads the channel (a conv, a linear layer, ``x @ W``):
that input is the output of the activation after the channel (ReLU, pooling, a residual
add then ReLU). A channel of a coupled dimension (a residual trunk) is dead only when it
is zero at every read; then removing it leaves every layer's output unchanged on those
inputs. Channels also read where no weight slice can be measured (a contraction such
as attention's ``q @ kᵀ``) or never read are never called dead.

The measurement runs a probe: a GraphModule over the current network's own modules (no
copy of the weights) that returns each read's per-channel peak |value|, taken just before
its layer runs, in eval mode and without gradients.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import fx

from ..analysis.graph import ChannelGraph
from ..channels.facts import CONTRACTION
from ..channels.modes import own_run
from ..errors import FxSurgeonError


def _peak(x: torch.Tensor, axis: int) -> torch.Tensor:
    """The largest |value| per position of ``axis``."""
    others = [d for d in range(x.dim()) if d != axis % x.dim()]
    return x.detach().abs().amax(dim=others) if others else x.detach().abs()


def _reads(graph: ChannelGraph) -> tuple[dict[str, tuple[fx.Node, int, np.ndarray]], np.ndarray]:
    """The measurable reads ``{consumer node: (its input, channel axis, global channel per
    position)}`` and the global channels read somewhere they cannot be measured."""
    nodes = {n.name: n for n in graph.module.graph.nodes}
    free = np.concatenate([np.full(d.width, d.free) for d in graph.dims])
    reads: dict[str, tuple[fx.Node, int, np.ndarray]] = {}
    for r in graph.propagation.readers.values():
        index = graph.global_channels(r.tags)
        if free[index[index >= 0]].any():
            reads[r.node] = (nodes[r.input], r.axis, index)
    blind = [graph.global_channels(tags) for tags, label in graph.propagation.couplings
             if label == CONTRACTION]
    return reads, np.concatenate(blind) if blind else np.zeros(0, np.int64)


def _probe(graph: ChannelGraph, reads: dict[str, tuple[fx.Node, int, np.ndarray]]) -> fx.GraphModule:
    """A GraphModule sharing the network's modules that returns the peak of every read,
    taken just before its consumer runs (so a later in-place op cannot change it)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    peaks: dict[str, fx.Node] = {}
    for node in graph.module.graph.nodes:
        if node.op == "output":
            continue
        if node.name in reads:
            x, axis, _ = reads[node.name]
            peaks[node.name] = g.call_function(_peak, (env[x], axis))
        env[node] = g.node_copy(node, lambda n: env[n])
    g.output(tuple(peaks[name] for name in reads))
    return fx.GraphModule(graph.module, g)      # every op stays: in-place ones change later reads


def _inputs(batch, n: int) -> tuple:
    """The model's positional inputs from one item of a death set: a tensor, or a
    tuple/list whose first ``n`` entries are the inputs (``(x, y)`` gives ``x``)."""
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch[:n])


def activation_peaks(graph: ChannelGraph, batches: Iterable) -> dict[str, np.ndarray]:
    """Per free dimension, each channel's largest |post-activation value| over
    ``batches``, at every layer that reads it (``inf``: read where it cannot be measured,
    or never read). Runs the network in eval mode, without gradients."""
    reads, blind = _reads(graph)
    probe = _probe(graph, reads)
    n_inputs = sum(1 for n in graph.module.graph.nodes if n.op == "placeholder")
    device = next((p.device for p in graph.module.parameters()), torch.device("cpu"))
    peaks: list[torch.Tensor] | None = None
    with own_run(graph.module):
        for batch in batches:
            xs = [x.to(device) if isinstance(x, torch.Tensor) else x for x in _inputs(batch, n_inputs)]
            out = list(probe(*xs))
            peaks = out if peaks is None else [torch.maximum(a, b)
                                               for a, b in zip(peaks, out, strict=True)]
    if peaks is None:
        raise FxSurgeonError("the death set is empty: death is measured on at least one batch")
    total = sum(d.width for d in graph.dims)
    best, read = np.zeros(total), np.zeros(total, bool)
    for (_, _, index), value in zip(reads.values(), peaks, strict=True):
        keep = index >= 0
        with np.errstate(invalid="ignore"):       # NaN stays NaN: not dead
            np.maximum.at(best, index[keep], value.double().cpu().numpy()[keep])
        read[index[keep]] = True
    best[~read] = np.inf
    best[blind[blind >= 0]] = np.inf
    offsets = np.concatenate([[0], np.cumsum([d.width for d in graph.dims])])
    return {d.name: best[offsets[i]:offsets[i + 1]] for i, d in enumerate(graph.dims) if d.free}


def activation_liveliness(graph: ChannelGraph, batches: Iterable, epsilon: float = 0.0,
                          fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Per free dimension, True where a channel is alive: its post-activation output
    exceeds ``epsilon`` in magnitude somewhere on ``batches`` (``epsilon > 0`` also
    calls quasi-dead units dead; NaN is alive), and exceeds ``fraction`` of the largest
    peak of its dimension. GELU and SiLU units are never exactly zero: ``fraction=0.01``
    is the paper's dead test (1 % of the layer's largest) on activations instead of γ.
    The masks :func:`~fxsurgeon.plan` takes."""
    alive = {}
    for name, peak in activation_peaks(graph, batches).items():
        finite = peak[np.isfinite(peak)]
        top = float(finite.max()) if fraction and finite.size else 0.0
        alive[name] = ~(peak <= max(epsilon, fraction * top))
    return alive
