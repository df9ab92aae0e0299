"""Baseline against Neural Rejuvenation at the same parameter budget, on real data, on CPU.

A capacity-limited setting, where the paper expects NR to help: the digits that ship
with scikit-learn and a narrow network (``--width``, default 8: 4,850 parameters).
NR searches at constant LR until its event (at most ``--search`` epochs) and then
runs the cosine schedule of ``--epochs``; the baseline gets the longest NR could
take, one cosine schedule over ``--search + --epochs``. Prints mean and spread over seeds.

    python bench/accuracy.py                  # 5 seeds
"""
from __future__ import annotations

import argparse

import torch

from common import DIGITS, digits_study
from fxsurgeon.experiments.devices import Hardware
from fxsurgeon.experiments.loop import train
from fxsurgeon.experiments.recipe import Recipe
from fxsurgeon.experiments.runs import table
from fxsurgeon.zoo import digits_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, data = digits_study(parser, width=8, seeds=5, search=25, epochs=25)
    recipes = {"baseline": Recipe(**DIGITS, epochs=args.search + args.epochs),
               "nr": Recipe(**DIGITS, epochs=args.epochs, search_epochs=args.search, threshold=0.7,
                            delta_lambda=2e-3)}
    results: dict[str, list] = {m: [] for m in recipes}
    for seed in range(args.seeds):
        for method, recipe in recipes.items():
            torch.manual_seed(seed)
            recipe.seed = seed
            _, res = train(digits_cnn(width=args.width), data, method, recipe, progress=False,
                           hardware=Hardware(args.device))
            results[method].append(res)
            event = ""
            if res.events:
                at = next(h["epoch"] for h in res.history if h["step"] >= res.events[0].step)
                event = f", event at epoch {at} (alpha {res.events[0].alpha:.2f})"
            print(f"seed {seed} {method:8s} params {res.params:6d} accuracy {100 * res.accuracy:6.2f} % "
                  f"({res.epochs} epochs{event})", flush=True)
    print(f"\nwidth {args.width}, {args.seeds} seeds: test accuracy on 360 held-out digits")
    print(table([r for rs in results.values() for r in rs]))


if __name__ == "__main__":
    main()
