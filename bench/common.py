"""Helpers the bench scripts share."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

#: one model per torchvision family (the tests' CI subset)
SUBSET = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
          "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t", "squeezenet1_0"]


def kill(graph, fraction: float = 0.3, seed: int = 0, by_activation: bool = False) -> None:
    """Kill a random ``fraction`` of every free dimension's channels: zero their
    BatchNorm γ (NR's dead), or with ``by_activation`` drive their BatchNorm β to -1e4 so
    the ReLU after it is zero (DemP's dead)."""
    rng = np.random.default_rng(seed)
    params = dict(graph.module.named_parameters())
    for d in graph.free_dims:
        dead = rng.random(d.width) < fraction
        for s in d.sources:
            name = s.tensor.rpartition(".")[0] + ".bias" if by_activation else s.tensor
            with torch.no_grad():
                params[name][torch.as_tensor(s.positions[dead[s.channels]])] = -1e4 if by_activation else 0


def device_argument(parser) -> None:
    """``--device``: where the bench trains or times (default cuda when available)."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default cuda when available, else cpu)")


def sync() -> None:
    """Wait for the GPU, so that a wall time counts its work."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_time(fn, repeat: int) -> float:
    """The median wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_step_time(model, step, x, y, repeat: int = 7) -> float:
    """The median time of a training step (forward, backward, ``step()``), after one warm-up."""
    times = []
    for _ in range(repeat + 1):
        sync()
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])
