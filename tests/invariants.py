"""Checks every ChannelGraph must pass, shared by the property tests and the zoo sweep."""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def check_bookkeeping(graph, model) -> None:
    """Parameter count is exact and every dimension's members agree on its width."""
    assert graph.count("params") == sum(p.numel() for p in model.parameters())
    tensors = {**dict(graph.module.named_parameters()), **dict(graph.module.named_buffers())}
    seen: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for d in graph.dims:
        assert d.width > 0 and d.width % d.multiple_of == 0, (d.name, d.width, d.multiple_of)
        produced = np.zeros(d.width, bool)
        for m in d.members:
            assert len(m.positions) == len(m.channels)
            assert ((0 <= m.channels) & (m.channels < d.width)).all(), (d.name, m.tensor)
            if m.role == "source":
                continue
            size = tensors[m.tensor].shape[m.axis] * m.divisor
            assert ((0 <= m.positions) & (m.positions < size)).all(), (d.name, m.tensor)
            seen[(m.tensor, m.axis)].append(m.positions)
            if m.role == "out":
                produced[m.channels] = True
        assert produced.all() or d.kind == "input", f"{d.name}: channels without a producer"
    for (tensor, axis), parts in seen.items():
        allpos = np.concatenate(parts)
        assert len(np.unique(allpos)) == len(allpos), f"{tensor} axis {axis} is in two dimensions"
