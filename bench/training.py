"""The cost of training with NeuralRejuvenation, against the bare optimizer in one run.

Per model (CIFAR zoo, batch 64 at 32x32, 1 thread): the median training step (forward,
backward, ``nr.step()``); the median ``opt.step()`` and ``nr.step()`` on the same
gradients (λ > 0, so the L1 subgradient is added) and the wrapper's overhead, their
difference over the training step (target: under 2 %); the time of a rejuvenation
event (30 % of the channels dead) against one CIFAR epoch (782 steps); and the step
time after the event over the step time before.

    python bench/training.py
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

import fxsurgeon as fxs
from common import device_argument, kill, median_time, sync, train_step_time
from fxsurgeon.zoo import MODELS

STEPS_PER_EPOCH = 50_000 // 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device_argument(parser)
    device = torch.device(parser.parse_args().device)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    x, y = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    print(f"{'model':26s} {'train step s':>12s} {'opt.step s':>10s} {'nr.step s':>9s} {'overhead':>8s} "
          f"{'event s':>8s} {'event/epoch':>11s} {'after/before':>12s}")
    for name in ("vgg19_cifar", "resnet164_cifar", "densenet_bc100_k40_cifar"):
        model = MODELS[name]().train().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=1e-4)
        nr = fxs.NeuralRejuvenation(model, x[:1], opt, threshold=0.9)
        nr.lam = 1e-4                                  # the L1 subgradient is added
        full = train_step_time(nr.model, nr.step, x, y)
        # the wrapper's own cost: the same gradients, stepped both ways, interleaved
        bare = median_time(opt.step, 25)
        wrapped = median_time(nr.step, 25)
        kill(nr.graph)
        sync()
        t = time.perf_counter()
        event = nr.check()
        sync()
        took = time.perf_counter() - t
        assert event is not None
        after = train_step_time(nr.model, nr.step, x, y)
        print(f"{name:26s} {full:12.3f} {bare:10.4f} {wrapped:9.4f} {(wrapped - bare) / full:8.2%} "
              f"{took:8.2f} {took / (full * STEPS_PER_EPOCH):11.3%} {after / full:12.2f}", flush=True)


if __name__ == "__main__":
    main()
