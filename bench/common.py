"""Helpers the bench scripts share."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

#: one model per torchvision family (the tests' CI subset)
SUBSET = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
          "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t", "squeezenet1_0"]


def kill(graph, fraction: float = 0.3, seed: int = 0) -> None:
    """Zero the BatchNorm γ of a random ``fraction`` of every free dimension's channels."""
    rng = np.random.default_rng(seed)
    params = dict(graph.module.named_parameters())
    for d in graph.free_dims:
        dead = rng.random(d.width) < fraction
        for s in d.sources:
            with torch.no_grad():
                params[s.tensor][torch.as_tensor(s.positions[dead[s.channels]])] = 0


def median_time(fn, repeat: int) -> float:
    """The median wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
