"""The cost of training with NeuralRejuvenation, against the bare optimizer in one run.

Per model (CIFAR zoo, batch 64 at 32x32, 1 thread): the median training step (forward,
backward, step) with the bare SGD step and with ``nr.step()`` (λ > 0, so the L1
subgradient is added; target: under 2 % overhead), the time of a rejuvenation event
(30 % of the channels dead) against one CIFAR epoch (782 steps), and the step time
before and after the event.

    python bench/training.py
"""
from __future__ import annotations

import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import fxsurgeon as fxs
from common import kill
from fxsurgeon.zoo import MODELS

STEPS_PER_EPOCH = 50_000 // 64


def _step_times(model, step, x, y, repeat=7) -> float:
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    print(f"{'model':26s} {'bare step s':>11s} {'nr step s':>9s} {'overhead':>8s} {'event s':>8s} "
          f"{'event/epoch':>11s} {'after/before':>12s}")
    for name in ("vgg19_cifar", "resnet164_cifar", "densenet_bc100_k40_cifar"):
        model = MODELS[name]().train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        nr = fxs.NeuralRejuvenation(model, x[:1], opt, threshold=0.9)
        nr.lam = 1e-4
        bare = min(_step_times(nr.model, opt.step, x, y) for _ in range(2))
        wrapped = min(_step_times(nr.model, nr.step, x, y) for _ in range(2))
        kill(nr.graph)
        t = time.perf_counter()
        event = nr.check()
        took = time.perf_counter() - t
        after = _step_times(nr.model, nr.step, x, y)
        assert event is not None
        print(f"{name:26s} {bare:11.3f} {wrapped:9.3f} {wrapped / bare - 1:8.1%} {took:8.2f} "
              f"{took / (bare * STEPS_PER_EPOCH):11.2%} {after / wrapped:12.2f}", flush=True)


if __name__ == "__main__":
    main()
