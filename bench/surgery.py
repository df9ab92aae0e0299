"""Time the surgery: liveliness + plan + rewrite per model, and a training step of the
rejuvenated (``nr``) network against the original model's, measured in the same run.

30 % of the BatchNorm scales of every free dimension are zeroed first, so the plan
has dead channels to remove and budget to spend. The ``cr``/``ca`` comparison against
a dense model of the same widths (targets: at most 0.75x and 1.15x) joins this table
when their partitioned layers exist.

    python bench/surgery.py            # CIFAR zoo + a few torchvision models
"""
from __future__ import annotations

import statistics
import time
import warnings

import numpy as np
import torch
import torchvision

import fxsurgeon as fxs
from fxsurgeon.zoo import MODELS

CASES = [(name, factory, (8, 3, 32, 32)) for name, factory in MODELS.items()] + \
    [(name, lambda n=name: torchvision.models.get_model(n), (8, 3, 224, 224))
     for name in ("resnet50", "mobilenet_v3_large", "densenet121")]


def _kill(graph, fraction=0.3, seed=0):
    rng = np.random.default_rng(seed)
    params = dict(graph.module.named_parameters())
    for d in graph.free_dims:
        dead = rng.random(d.width) < fraction
        for s in d.sources:
            with torch.no_grad():
                params[s.tensor][torch.as_tensor(s.positions[dead[s.channels]])] = 0


def _step_time(model, x, repeat=5) -> float:
    model.train()
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"{'model':26s} {'plan s':>7s} {'rewrite s':>9s} {'alpha':>6s} {'step s':>8s} "
          f"{'nr step s':>9s} {'nr / orig':>9s}")
    ratios = []
    for name, factory, shape in CASES:
        model = factory().eval()
        x = torch.randn(shape)
        graph = fxs.analyze(model, x[:1])
        _kill(graph)
        t = time.perf_counter()
        plan = fxs.plan(graph, fxs.liveliness(graph), metric="flops", target=1.0, scheme="nr")
        planned = time.perf_counter() - t
        t = time.perf_counter()
        surgery = fxs.rewrite(graph, plan)
        rewritten = time.perf_counter() - t
        before, after = _step_time(model, x), _step_time(surgery.module, x)
        ratios.append(after / before)
        print(f"{name:26s} {planned:7.3f} {rewritten:9.3f} {plan.alpha:6.3f} {before:8.3f} "
              f"{after:9.3f} {after / before:9.2f}", flush=True)
    print(f"\nmedian step time of the rejuvenated network at the same FLOP budget: "
          f"{statistics.median(ratios):.2f}x the original's")


if __name__ == "__main__":
    main()
