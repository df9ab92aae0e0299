"""DemP against Network Slimming, magnitude (filter-norm) pruning and the dense baseline,
on real data, on CPU: accuracy against sparsity, and the wall-clock speed-up of training.

The digits that ship with scikit-learn and the demo's network (``--width``, default 16:
17,754 parameters). Every method trains ``--epochs`` epochs in all: the baseline and
DemP one cosine schedule (DemP pruning every epoch on 128 held-out training samples);
slimming and magnitude pruning train for ``--epochs - --finetune``, prune, then fine-tune
for ``--finetune``. DemP's sparsity is set by its peak regularization λ, the others' by
the share of channels they remove. Training time is the training part of every epoch
(surgery included, evaluation not); the speed-up is the dense baseline's over it, and
"last epoch" compares the final networks' pace. Writes every run to OUT/runs.json, prints
one line per setting (mean ± sd over seeds) and plots OUT/sparsity.png.

    python bench/pruning.py                   # 3 seeds, about 6 minutes on one core
    python bench/pruning.py --width 64        # compute-bound steps: the speed-up shows
    python bench/pruning.py --replot OUT.png A/runs.json B/runs.json   # one plot of sweeps
"""
from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

from common import device_argument
from fxsurgeon.experiments.data import load_data
from fxsurgeon.experiments.devices import Hardware
from fxsurgeon.experiments.loop import Result, train
from fxsurgeon.experiments.plots import plot_tradeoff
from fxsurgeon.experiments.recipe import Recipe
from fxsurgeon.zoo import digits_cnn


def settings(args) -> list[tuple[str, str, dict]]:
    """(method, label, recipe overrides) for every point of the sweep."""
    dense = {"epochs": args.epochs}
    pruned = {"epochs": args.epochs - args.finetune, "finetune_epochs": args.finetune}
    out = [("baseline", "dense", dense)]
    out += [("demp", f"λ {reg:g}", {**dense, "demp_reg": reg}) for reg in args.demp_reg]
    for method in ("slimming", "magnitude"):
        out += [(method, f"ratio {r:g}", {**pruned, "prune_ratio": r}) for r in args.ratios]
    return out


def replot(path: Path, runs_files: list[Path]) -> Path:
    """Draw the accuracy-against-sparsity plot of the settings in several runs.json files."""
    groups = []
    for f in runs_files:
        for row in json.loads(f.read_text()):
            pairs = zip(row["accuracy"], row["sparsity"], strict=True)
            groups.append([Result(row["method"], seed, 0, 0, acc, acc, 0, 0.0, [{"sparsity": s}])
                           for seed, (acc, s) in enumerate(pairs)])
    return plot_tradeoff(groups, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--demp-reg", type=float, nargs="*", default=[0.01, 0.03, 0.05, 0.1])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.65])
    parser.add_argument("--out", type=Path, default=Path("out/bench-pruning"))
    parser.add_argument("--replot", type=Path, nargs="+", metavar=("PNG", "RUNS"),
                        help="only draw PNG from runs.json files of earlier sweeps")
    device_argument(parser)
    args = parser.parse_args()
    if args.replot:
        print(f"plot: {replot(args.replot[0], args.replot[1:])}")
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    data = load_data("digits")
    common = {"batch_size": 32, "lr": 0.05, "weight_decay": 5e-4, "slimming_lambda": 5e-4}
    args.out.mkdir(parents=True, exist_ok=True)
    rows, groups = [], []
    for method, label, overrides in settings(args):
        runs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            _, res = train(digits_cnn(width=args.width), data, method,
                           Recipe(**common, **overrides, seed=seed), progress=False,
                           hardware=Hardware(args.device))
            runs.append(res)
        groups.append(runs)
        rows.append({"method": method, "setting": label,
                     "sparsity": [r.history[-1]["sparsity"] for r in runs],
                     "accuracy": [r.accuracy for r in runs],
                     "seconds": [r.training_seconds for r in runs],
                     "last_epoch_seconds": [r.history[-1]["seconds"] for r in runs]})
        row, base = rows[-1], rows[0]
        speed = statistics.mean(base["seconds"]) / statistics.mean(row["seconds"])
        last = statistics.mean(base["last_epoch_seconds"]) / statistics.mean(row["last_epoch_seconds"])
        acc = [100 * a for a in row["accuracy"]]
        print(f"{method:9s} {label:11s} sparsity {100 * statistics.mean(row['sparsity']):5.1f} %  "
              f"accuracy {statistics.mean(acc):6.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.2f} %  "
              f"training {statistics.mean(row['seconds']):5.1f} s (speed-up {speed:.2f}x, "
              f"last epoch {last:.2f}x)", flush=True)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1))
    print(f"plot: {plot_tradeoff(groups, args.out / 'sparsity.png')}")


if __name__ == "__main__":
    main()
