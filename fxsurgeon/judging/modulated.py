"""Dead channels that cannot go: those a computed map multiplies while they are not zero.

A channel its BatchNorm makes constant (``γ = 0``) emits a constant ``c`` (``ReLU(β)``),
which folding puts back into the layers that read it. Past an op that combines it with
a value computed from the inputs and broadcast across the channels (an attention gate's
one-channel map ψ, a per-sample scale; the op table's rules record these, see
:class:`~fxsurgeon.channels.facts.Modulated`) it carries ``c·ψ(x)``, which varies with the
input: no constant can stand for it. Only ``c = 0`` survives a product (``0·ψ = 0``);
past a sum or a maximum no value does. A constant that varies along the positions (a
position embedding added after a norm: visformer's) does the same: ``c + p(h, w)`` is no
per-channel constant. Such a channel is dead by its scale, yet removing it changes the
function, so the plan keeps it (:func:`fxsurgeon.plan`).

That the value varies is read off the graph, not off the example inputs (one sample
would show ``c·scale`` constant, and the fold would take it for a constant); which ``c``
a channel holds is read on the example inputs from the network with the removed
channels' scales at zero: the reference the rewrite keeps (:mod:`fxsurgeon.judging.reference`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..analysis.graph import ChannelGraph
from .reference import run_graph, zeroed_scales


def carried(graph: ChannelGraph, alive: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per free dimension that has some, a bool mask of the channels ``alive`` (masks as
    :func:`fxsurgeon.liveliness` returns; a missing dimension is all alive) calls dead
    that a computed value broadcast across them modulates while they hold what the op does
    not keep constant: anything past a sum, anything but 0 past a product."""
    mods = graph.propagation.modulated
    offsets = graph.cost.offsets
    keep = np.ones(int(offsets[-1]), bool)
    for i, d in enumerate(graph.dims):
        if d.name in alive:
            keep[offsets[i]:offsets[i + 1]] = np.asarray(alive[d.name], bool)
    if keep.all() or not mods:
        return {}

    def kept(tags: np.ndarray) -> np.ndarray:
        g = graph.global_channels(tags)
        return (g < 0) | keep[np.maximum(g, 0)]

    must = np.zeros_like(keep)
    watch: dict[str, list] = {}
    for m in mods:
        g = graph.global_channels(m.tags)
        gone = ~kept(m.tags)
        if not gone.any():
            continue
        if m.keeps_zero:            # which c it holds decides: read it
            watch.setdefault(m.operand, []).append((m.axis, np.nonzero(gone)[0], g))
        else:
            must[g[gone]] = True
    if watch:
        _, _, nonzero = run_graph(graph.module, graph.example_inputs, zeroed_scales(graph, kept),
                                  outputs_of={name: _nonzero(reads) for name, reads in watch.items()})
        for name, reads in watch.items():
            for (_, at, g), hot in zip(reads, nonzero[name], strict=True):
                must[g[at[hot]]] = True
    return {d.name: must[offsets[i]:offsets[i + 1]].copy() for i, d in enumerate(graph.dims)
            if must[offsets[i]:offsets[i + 1]].any()}


def _nonzero(reads: list):
    """What to keep of an operand's value on the reference run: per read (its channel
    axis, the positions removed there), which of those positions hold anything but 0
    somewhere (all of them, if the value is not the tensor the read expects)."""
    def keep(x) -> list[np.ndarray]:
        out = []
        for axis, at, _ in reads:
            if not isinstance(x, torch.Tensor) or x.dim() <= axis or x.shape[axis] <= int(at.max()) \
                    or not x.numel():
                out.append(np.ones(len(at), bool))
                continue
            rows = x.detach().index_select(axis, torch.as_tensor(at, device=x.device))
            rows = rows.movedim(axis, 0).reshape(len(at), -1)
            slack = 64 * torch.finfo(x.dtype).eps * max(1.0, float(x.detach().abs().max())) \
                if x.is_floating_point() else 0
            out.append((rows.abs() > slack).any(1).cpu().numpy())
        return out
    return keep
