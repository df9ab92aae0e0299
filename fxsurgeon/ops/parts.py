"""One part of a layer's channels: what a per-channel op runs on when a value's channels
are held as one tensor per generation (:mod:`fxsurgeon.surgery.streams`)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def part_of(start: int, length: int, index: list[int] | None, device: torch.device
            ) -> tuple[Callable[[Tensor | None], Tensor | None], Tensor | None]:
    """A function that takes channels ``start:start+length`` (or ``index``) of a per-channel
    tensor along its axis 0 (a view for a run, a copy for scattered positions), and the
    positions as a tensor (None for a run)."""
    if index is None:
        return (lambda t: None if t is None else t.narrow(0, start, length)), None
    where = torch.tensor(index, device=device)
    return (lambda t: None if t is None else t.index_select(0, where)), where
