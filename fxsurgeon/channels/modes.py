"""Eval mode for the length of a ``with`` block, every module's training flag restored after."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


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
