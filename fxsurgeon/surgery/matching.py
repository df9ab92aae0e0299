"""Index maps between an old and a new layout of the same channels."""
from __future__ import annotations

import numpy as np
import torch


def _occurrence_keys(roots: np.ndarray, n: int) -> np.ndarray:
    """``root * n + k`` where ``k`` counts earlier positions with the same root (k < n)."""
    order = np.argsort(roots, kind="stable")
    sorted_roots = roots[order]
    start = np.r_[0, np.nonzero(np.diff(sorted_roots))[0] + 1]
    rank = np.arange(len(roots)) - np.repeat(start, np.diff(np.r_[start, len(roots)]))
    keys = np.empty(len(roots), dtype=np.int64)
    keys[order] = sorted_roots * n + rank
    return keys


def match(old_roots: np.ndarray, new_roots: np.ndarray) -> np.ndarray:
    """For each new position, the old position holding the same channel occurrence (-1: none).

    Occurrences matter where a flatten repeats a channel: its k-th position before is
    its k-th position after."""
    n = max(len(old_roots), len(new_roots)) + 1
    old_keys, new_keys = _occurrence_keys(old_roots, n), _occurrence_keys(new_roots, n)
    order = np.argsort(old_keys)
    at = np.minimum(np.searchsorted(old_keys[order], new_keys), len(old_keys) - 1)
    return np.where(old_keys[order][at] == new_keys, order[at], -1)


def is_identity(idx: np.ndarray, old_len: int) -> bool:
    return len(idx) == old_len and np.array_equal(idx, np.arange(len(idx)))


def take(t: torch.Tensor, axis: int, idx: np.ndarray, fill: float = 0.0,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` gathered along ``axis`` at ``idx``; positions with index -1 get ``fill``;
    written into ``out`` when given (no tensor between: a 1.1B model's survivors are 4 GB).

    A 2-D ``idx`` (``groups x n``, a grouped convolution's weight) gathers each block of
    ``t``'s first axis at its own row: block ``g`` of the first axis takes ``idx[g]``."""
    if idx.ndim == 2:
        g = idx.shape[0]
        blocks = t.reshape(g, t.shape[0] // g, *t.shape[1:])
        at = torch.as_tensor(idx, device=t.device).reshape(g, *[1] * axis, idx.shape[1],
                                                          *[1] * (t.dim() - axis - 1))
        shape = list(blocks.shape)
        shape[axis + 1] = idx.shape[1]
        got = blocks.gather(axis + 1, at.clamp(min=0).expand(shape))
        got = got.masked_fill((at < 0).expand(shape), fill).reshape(t.shape[0], *shape[2:])
        return got if out is None else out.copy_(got)
    at = torch.as_tensor(np.maximum(idx, 0), device=t.device)
    want = [*t.shape[:axis], len(idx), *t.shape[axis + 1:]]
    if out is not None and list(out.shape) != want:     # index_select would resize it silently
        raise ValueError(f"cannot gather {tuple(want)} into a tensor of shape {tuple(out.shape)}")
    got = t.index_select(axis, at) if out is None else torch.index_select(t, axis, at, out=out)
    if (idx < 0).any():
        got.index_fill_(axis, torch.as_tensor(np.nonzero(idx < 0)[0], device=t.device), fill)
    return got
