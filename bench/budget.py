"""How close each scheme's plan comes to the budget, over the torchvision zoo.

30 % of every free dimension's BatchNorm scales are zeroed; each scheme then plans
target 1.0 of the original parameters and FLOPs. The miss is how far below the
budget the plan lands (integer widths), relative to the budget. The tests prove that
the rewritten networks cost exactly what the plans predict.

    python bench/budget.py           # the CI subset
    python bench/budget.py --all     # every classification model
"""
from __future__ import annotations

import argparse
import warnings

import torch
import torchvision

import fxsurgeon as fxs
from common import SUBSET, kill

SCHEMES = ("nr", "cr", "ca")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every torchvision classification model")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = torchvision.models.list_models(module=torchvision.models) if args.all else SUBSET
    print(f"{'model':22s} " + " ".join(f"{s + ' ' + m:>12s}" for s in SCHEMES for m in ("params", "flops")))
    worst = (0.0, "")
    for name in names:
        model = torchvision.models.get_model(name).eval()
        size = 299 if name == "inception_v3" else 224
        graph = fxs.analyze(model, torch.randn(1, 3, size, size))
        kill(graph)
        alive = fxs.liveliness(graph)
        row = []
        for scheme in SCHEMES:
            for metric in ("params", "flops"):
                try:
                    plan = fxs.plan(graph, alive, metric=metric, target=1.0, scheme=scheme)
                except fxs.FxSurgeonError as err:
                    row.append(f"{'n/a':>12s}")
                    print(f"  {name} {scheme} {metric}: {err}")
                    continue
                row.append(f"{plan.miss:12.3%}")
                worst = max(worst, (plan.miss, f"{name} {scheme} {metric} (alpha {plan.alpha:.3f})"))
        print(f"{name:22s} " + " ".join(row), flush=True)
    print(f"\nworst relative miss: {worst[0]:.3%} ({worst[1]})")


if __name__ == "__main__":
    main()
