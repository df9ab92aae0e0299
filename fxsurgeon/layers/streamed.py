"""What a streamed network calls at run time, and its plain form.

A ``cr`` or ``ca`` network held in streams (:mod:`fxsurgeon.surgery.streams` builds it)
calls :func:`take`, :func:`join`, :func:`shaped` and :func:`blocks` in its graph; it keeps
its plain graph, which :func:`canonical` gives back (what analysis, export and later
surgeries read).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, fx, nn

#: the GraphModule's meta key holding the plain graph of a streamed network
CANONICAL = "fxs_canonical"


def take(x: Tensor, axis: int, start: int, length: int, index: list[int] | None) -> Tensor:
    """Positions ``start:start+length`` (or ``index``) of ``x`` along ``axis``, as a tensor of
    their own."""
    if index is None:
        return x.narrow(axis, start, length).contiguous()
    return x.index_select(axis, torch.tensor(index, device=x.device))


def join(parts: list[Tensor], axis: int, order: list[int] | None) -> Tensor:
    """The parts as one tensor: concatenated, then put back in ``order`` (None: as they are)."""
    y = torch.cat(parts, axis)
    return y if order is None else y.index_select(axis, torch.tensor(order, device=y.device))


def shaped(part: Tensor, axis: int, width: int) -> Tensor:
    """A view with the whole value's shape, dtype and device (not its values): for ops that
    read only those."""
    shape = list(part.shape)
    shape[axis] = width
    return part.narrow(axis, 0, 1).expand(shape)


def blocks(layer: nn.Module, parts: list[Tensor | None], like: Tensor) -> list[Tensor]:
    """A partitioned layer on its inputs' parts (its :meth:`forward_parts`). Parts it does
    not read (a generation with no outputs here) still reach its output, times zero: as in
    the plain network, where they are slices of its input, their parameters get a zero
    gradient rather than none (DistributedDataParallel expects every parameter's)."""
    outs = layer.forward_parts(parts, like)
    read = set(layer.block_gen) | ({len(parts) - 1} if layer.weight_f is not None else set())
    unread = [p for k, p in enumerate(parts) if p is not None and k not in read and p.requires_grad]
    if unread and outs:
        outs[0] = outs[0] + sum(p.sum() for p in unread) * 0
    return outs


class Streamed(fx.GraphModule):
    """A GraphModule whose graph holds generations apart (made by :func:`stream`); it
    pickles as its plain form (a pickled GraphModule is traced again from its code, which
    would bake the views of its buffers in as constants)."""

    def __reduce__(self):
        return canonical(self).__reduce__()


def share(gm: nn.Module, out: nn.Module) -> None:
    """Give ``out`` the very modules and tensors ``gm`` holds, the ones its graph does not
    call included (a GraphModule copies only what its graph names, in new containers)."""
    out._modules.clear()
    out._modules.update(gm._modules)
    out._parameters.update(gm._parameters)
    out._buffers.update(gm._buffers)
    out._non_persistent_buffers_set |= gm._non_persistent_buffers_set



def canonical(gm: fx.GraphModule) -> fx.GraphModule:
    """The plain form of a streamed network (the network itself if it is not streamed): a
    GraphModule of the plain graph over the same modules."""
    graph = gm.meta.get(CANONICAL)
    if graph is None:
        return gm
    out = fx.GraphModule(gm, copy.deepcopy(graph), gm.__class__.__name__)
    share(gm, out)
    out.meta.update({k: v for k, v in gm.meta.items() if k != CANONICAL})
    return out
