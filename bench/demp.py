"""The cost of training with DemP, against the bare optimizer in one run.

Per model (CIFAR zoo, batch 64 at 32x32, 1 thread): the median training step (forward,
backward, ``demp.step()``); the median ``opt.step()`` and ``demp.step()`` on the same
gradients (λ and σ at their peak: the regularization, the live-unit masks and the noise)
and the wrapper's overhead, their difference over the training step; the death test on
a 256-sample death set and a pruning (30 % of the channels dead), each against one CIFAR
epoch (782 steps); and the step time after the pruning over the step time before.

    python bench/demp.py
"""
from __future__ import annotations

import argparse
import time
import warnings
from functools import partial

import torch

import fxsurgeon as fxs
from common import device_argument, kill, median_time, sync, train_step_time
from fxsurgeon.zoo import MODELS

STEPS_PER_EPOCH = 50_000 // 64


def _at_peak(demp: fxs.DemP) -> None:
    """A step at the schedule's peak (λ and σ largest), staying there."""
    demp.steps = 3
    demp.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device_argument(parser)
    device = torch.device(parser.parse_args().device)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    x, y = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    death_set = [torch.randn(64, 3, 32, 32, device=device) for _ in range(4)]
    print(f"{'model':26s} {'train step s':>12s} {'opt.step s':>10s} {'demp.step s':>11s} {'overhead':>8s} "
          f"{'death s':>8s} {'death/epoch':>11s} {'prune s':>8s} {'prune/epoch':>11s} {'after/before':>12s}")
    for name in ("vgg19_cifar", "resnet164_cifar", "densenet_bc100_k40_cifar"):
        model = MODELS[name]().train().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=1e-4)
        demp = fxs.DemP(model, x[:1], opt, death_set, total_steps=10, prune_every=None, reg_peak=1e-4,
                        noise_peak=1e-6)
        peak_step = partial(_at_peak, demp)
        peak_step()
        full = train_step_time(demp.model, peak_step, x, y)
        # the wrapper's own cost: the same gradients, stepped both ways
        bare = median_time(opt.step, 15)
        wrapped = median_time(peak_step, 15)
        sync()
        t = time.perf_counter()
        demp.alive()
        sync()
        death = time.perf_counter() - t
        kill(demp.graph, by_activation=True)
        sync()
        t = time.perf_counter()
        pruning = demp.prune()
        sync()
        took = time.perf_counter() - t
        assert pruning is not None
        after = train_step_time(demp.model, peak_step, x, y)
        epoch = full * STEPS_PER_EPOCH
        print(f"{name:26s} {full:12.3f} {bare:10.4f} {wrapped:11.4f} {(wrapped - bare) / full:8.2%} "
              f"{death:8.2f} {death / epoch:11.3%} {took:8.2f} {took / epoch:11.3%} {after / full:12.2f}",
              flush=True)


if __name__ == "__main__":
    main()
