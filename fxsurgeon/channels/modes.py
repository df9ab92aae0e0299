"""Eval mode for the length of a ``with`` block, every module's training flag restored after;
and fxsurgeon's own runs of a network: eval mode, the user's hooks silent."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .hooks import quiet


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module.eval()`` inside the block; after it, the modules that were training train
    again. Only those are touched: setting a flag goes through ``Module.__setattr__``, and
    restoring every module's was a quarter of the analysis's shape pass."""
    training = [m for m in module.modules() if m.training]
    if training:
        module.eval()
    try:
        yield module
    finally:
        for m in training:
            m.training = True


@contextmanager
def own_run(module: nn.Module) -> Iterator[nn.Module]:
    """A run of ``module`` that fxsurgeon makes for itself (shapes, checks, measurements):
    in eval mode, without gradients, and with the user's hooks silent (see
    :func:`~fxsurgeon.channels.hooks.quiet`)."""
    with evaluating(module), quiet(module), torch.no_grad():
        yield module
