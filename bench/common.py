"""Helpers the bench scripts share."""
from __future__ import annotations

import statistics
import time
import warnings

import numpy as np
import torch

from fxsurgeon.zoo import TORCHVISION_FAMILIES

#: one model per torchvision family (the tests' CI subset)
SUBSET = TORCHVISION_FAMILIES


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


#: the digits studies' optimisation settings (SGD at a constant LR while NR searches)
DIGITS = {"batch_size": 32, "lr": 0.05, "weight_decay": 5e-4}


def digits_study(parser, width: int, seeds: int, search: int, epochs: int):
    """The arguments every digits study takes (``--width --seeds --search --epochs
    --device``), parsed, with torch set to 2 threads; returns them and the digits."""
    from fxsurgeon.experiments.data import load_data
    parser.add_argument("--width", type=int, default=width)
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--search", type=int, default=search)
    parser.add_argument("--epochs", type=int, default=epochs)
    device_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    return args, load_data("digits")
