"""Time fxsurgeon.analyze on torchvision models against two peers measured in the same run.

- floor: bare ``torch.fx.symbolic_trace`` plus one forward pass (what any fx analysis pays);
- torch-pruning's ``DependencyGraph().build_dependency`` on the same model and input,
  where the ``torch-pruning`` package is installed.

Each time is the median of ``--repeat`` runs. Prints a table and the median ratios.
Targets: analyze no slower than torch-pruning on any model and at least 1.5x faster at
the median, at 224 and at 64 px; the median analyze at most 1.5x bare ``symbolic_trace``;
no model more than 3x the floor. Bare ``symbolic_trace`` bounds what any analysis built on
torch.fx can reach: where torch-pruning takes less than the trace alone, no fx analysis
can be faster than it.

    python bench/analysis.py                 # the CI subset of models, 224 px
    python bench/analysis.py --size 64       # small inputs: the fixed per-node costs show
    python bench/analysis.py --all           # all 80 classification models
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
import torchvision

import fxsurgeon as fxs
from common import SUBSET, device_argument, median_time


def _trace(model, x):
    torch.fx.symbolic_trace(model)


def _floor(model, x):
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        gm(x)


def _torch_pruning(tp, model, x):
    tp.DependencyGraph().build_dependency(model, example_inputs=x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="all torchvision classification models")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size", type=int, default=224, help="input size in pixels (inception_v3: at least 75)")
    device_argument(p)
    args = p.parse_args()
    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
        print("torch-pruning is not installed: its column stays empty (pip install torch-pruning)")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    names = torchvision.models.list_models(module=torchvision.models) if args.all else SUBSET
    rows = []
    print(f"{'model':24s} {'analyze s':>10s} {'floor s':>8s} {'x floor':>8s} {'trace s':>8s} "
          f"{'tp s':>8s} {'tp / ours':>9s} {'tp / trace':>10s}")
    for name in names:
        kwargs = {"image_size": args.size} if name.startswith("vit") else {}
        model = torchvision.models.get_model(name, **kwargs).eval().to(args.device)
        size = max(args.size, 75) if name == "inception_v3" else args.size
        x = torch.randn(1, 3, size, size, device=args.device)
        ours = median_time(lambda m=model, x=x: fxs.analyze(m, x), args.repeat)
        floor = median_time(lambda m=model, x=x: _floor(m, x), args.repeat)
        traced = median_time(lambda m=model, x=x: _trace(m, x), args.repeat)
        peer = None
        if tp is not None:
            try:
                peer = median_time(lambda m=model, x=x: _torch_pruning(tp, m, x), args.repeat)
            except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash
                print(f"  torch-pruning failed on {name}: {type(exc).__name__}")
        rows.append((name, ours, floor, peer, traced))
        tp_s = f"{peer:8.3f} {peer / ours:9.1f} {peer / traced:10.1f}" if peer else \
            f"{'-':>8s} {'-':>9s} {'-':>10s}"
        print(f"{name:24s} {ours:10.3f} {floor:8.3f} {ours / floor:8.2f} {traced:8.3f} {tp_s}", flush=True)
    floor_ratios = [r[1] / r[2] for r in rows]
    worst = max(floor_ratios)
    print(f"\nmedian analyze / floor: {statistics.median(floor_ratios):.2f}x "
          f"(worst {worst:.2f}x on {rows[floor_ratios.index(worst)][0]}; target <= 3x)")
    print(f"median analyze / symbolic_trace: {statistics.median([r[1] / r[4] for r in rows]):.2f}x "
          f"(target <= 1.5x)")
    peer_ratios = [r[3] / r[1] for r in rows if r[3]]
    if peer_ratios:
        ceiling = statistics.median([r[3] / r[4] for r in rows if r[3]])
        below = [r[0] for r in rows if r[3] and r[3] < r[4]]
        print(f"torch-pruning / analyze: median {statistics.median(peer_ratios):.2f}x, slowest "
              f"{min(peer_ratios):.2f}x (targets >= 1.5x and >= 1x); torch-pruning / symbolic_trace: "
              f"median {ceiling:.2f}x" + (f"; torch-pruning takes less than the trace alone on "
                                          f"{', '.join(below)}" if below else ""))


if __name__ == "__main__":
    main()
