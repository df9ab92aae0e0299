"""Latency of a network's forward pass: the median over repeats after warm-up, timed with
CUDA events on a GPU and ``time.perf_counter`` elsewhere."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..channels.modes import evaluating


def latency(module: nn.Module, inputs: tuple, repeat: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``module(*inputs)`` in eval mode without gradients, on the
    device the inputs are on (training flags restored after)."""
    cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs)
    times = []
    with evaluating(module), torch.no_grad():
        for i in range(warmup + repeat):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                module(*inputs)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000
            else:
                t = time.perf_counter()
                module(*inputs)
                seconds = time.perf_counter() - t
            if i >= warmup:
                times.append(seconds)
    return statistics.median(times)
