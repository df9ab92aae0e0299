"""The paper's two CIFAR studies in miniature, on the digits, on CPU, over seeds.

- Table 4's question: is NR-CR at half the parameters better than a baseline of the same
  parameter count? Runs the full-width baseline, NR-CR at target 0.5 (the paper's
  method for CIFAR) and a baseline narrowed to NR-CR's parameter count.
- Table 5's question: do several events help more than one? Runs NR-CR at target 1.0
  with one event and with events until the search ends.

Every NR run searches at constant LR (at most ``--search`` epochs), then trains the
cosine schedule of ``--epochs``; baselines train ``--search + --epochs`` epochs of
cosine, the longest NR could take. Prints a markdown table (mean ± sd over seeds) and
writes a plot of accuracy against parameters.

    python bench/reproduction.py --plot docs/img/reproduction.png      # 3 seeds
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from common import DIGITS, digits_study
from fxsurgeon.experiments.devices import Hardware
from fxsurgeon.experiments.loop import train
from fxsurgeon.experiments.recipe import Recipe
from fxsurgeon.zoo import digits_cnn


def _params(width: int) -> int:
    return sum(p.numel() for p in digits_cnn(width=width).parameters())


def _narrowest_at(params: float) -> int:
    """The digits CNN's width whose parameter count is closest to ``params``."""
    return min(range(1, 65), key=lambda w: abs(_params(w) - params))


def _row(label: str, results: list) -> str:
    def ms(values):
        values = list(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {sd:.2f}"
    return (f"| {label} | {statistics.mean(r.params for r in results):,.0f} | "
            f"{ms(100 * r.accuracy for r in results)} | {ms(100 * r.best for r in results)} | "
            f"{statistics.mean(len(r.events) for r in results):.1f} | "
            f"{statistics.mean(r.epochs for r in results):.1f} |")


def _plot(runs: dict[str, list], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, results) in enumerate(runs.items()):
        p = [r.params for r in results]
        a = [100 * r.accuracy for r in results]
        ax.scatter(p, a, color=f"C{i}", alpha=0.35, s=18)
        ax.errorbar(statistics.mean(p), statistics.mean(a), yerr=statistics.stdev(a) if len(a) > 1 else 0,
                    color=f"C{i}", marker="o", capsize=4, label=label)
    ax.set_xlabel("parameters after training")
    ax.set_ylabel("test accuracy, last epoch (%)")
    ax.set_title("digits: NR-CR against baselines (dots: seeds; mean ± sd)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.5, help="T_r of the NR runs")
    parser.add_argument("--plot", type=Path, default=None)
    args, data = digits_study(parser, width=16, seeds=3, search=30, epochs=30)
    nr = {**DIGITS, "epochs": args.epochs, "search_epochs": args.search, "threshold": args.threshold,
          "delta_lambda": 2e-3}
    baseline = Recipe(**DIGITS, epochs=args.search + args.epochs)
    runs: dict[str, list] = {}

    def run(label: str, method: str, recipe: Recipe, width: int) -> list:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            recipe.seed = seed
            _, res = train(digits_cnn(width=width), data, method, recipe, progress=False,
                           hardware=Hardware(args.device))
            runs.setdefault(label, []).append(res)
            print(f"{label}, seed {seed}: {res.params} params, accuracy {100 * res.accuracy:.2f} %, "
                  f"{len(res.events)} events, {res.epochs} epochs", flush=True)
        return runs[label]

    run(f"baseline, width {args.width}", "baseline", baseline, args.width)
    half = run("NR-CR, target 0.5", "nr-cr", Recipe(**nr, target=0.5), args.width)
    narrow = _narrowest_at(statistics.mean(r.params for r in half))
    run(f"baseline, width {narrow} (NR-CR's parameters)", "baseline", baseline, narrow)
    run("NR-CR, target 1.0, one event", "nr-cr", Recipe(**nr, target=1.0, events=1), args.width)
    run("NR-CR, target 1.0, events until the search ends", "nr-cr", Recipe(**nr, target=1.0, events=None),
        args.width)
    print(f"\ndigits_cnn(width={args.width}), {args.seeds} seeds, 360 held-out test digits\n")
    print("| run | params | accuracy, last (%) | best (%) | events | epochs |")
    print("|---|---|---|---|---|---|")
    for label, results in runs.items():
        print(_row(label, results))
    if args.plot:
        _plot(runs, args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
