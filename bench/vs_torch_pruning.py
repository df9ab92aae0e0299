"""Prune the same models to the same FLOP target with fxsurgeon and with Torch-Pruning.

Both rank channels by the L2 norm of their producer weights, globally (fxsurgeon:
``plan(..., scheme="prune", target=T, scores=importance.magnitude(graph, p=2))``;
Torch-Pruning: ``MetaPruner`` with ``MagnitudeImportance(p=2)`` and
``global_pruning=True``, its pruning ratio bisected until its own FLOP count is at most
the target; the classifier is kept whole by both). Per model and tool: whether it
succeeded (and why not), the MACs reached (each counted by fxsurgeon, so both are
counted the same way), the parameters, the output's relative change before fine-tuning
(``|y' - y| / |y|`` on one input; fxsurgeon's network is moreover exactly the original
with the removed channels silenced, which its rewrite checks), and the latency speed-up
over the original (median of ``--repeat`` forward passes, CUDA events on a GPU).

Torch-Pruning is optional: ``pip install torch-pruning`` (measured with 1.6.1); without
it only fxsurgeon's columns are filled.

    python bench/vs_torch_pruning.py                      # 8 torchvision models, 128 px, T = 0.5
    python bench/vs_torch_pruning.py --target 0.3 --size 224 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import traceback
import warnings

import torch
import torchvision

import fxsurgeon as fxs
from common import device_argument
from fxsurgeon import importance
from fxsurgeon.experiments.timing import latency

MODELS = ["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "densenet121",
          "convnext_tiny", "vit_b_16"]


def _build(name: str, size: int) -> torch.nn.Module:
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    return getattr(torchvision.models, name)(**kwargs).eval()


def _macs(model, x) -> int:
    return fxs.analyze(model, x).count("flops")


def with_fxsurgeon(model, x, target: float):
    graph = fxs.analyze(model, x)
    plan = fxs.plan(graph, metric="flops", target=target, scheme="prune",
                    scores=importance.magnitude(graph, p=2))
    return fxs.rewrite(graph, plan).module


def _classifier(model) -> torch.nn.Module:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def with_torch_pruning(tp, model, x, target: float):
    base, _ = tp.utils.count_ops_and_params(model, x)

    def pruned(ratio):
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, global_pruning=True,
                                      ignored_layers=[_classifier(m)])
        pruner.step()
        return m

    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):                   # the largest FLOPs at most the target
        mid = (lo + hi) / 2
        m = pruned(mid)
        ops, _ = tp.utils.count_ops_and_params(m, x)
        if ops <= target * base:
            best, hi = m, mid
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"no pruning ratio up to {hi:.2f} reached the target")
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names")
    p.add_argument("--target", type=float, default=0.5, help="share of the original MACs to keep")
    p.add_argument("--size", type=int, default=128, help="input size in pixels")
    p.add_argument("--repeat", type=int, default=10, help="timed forward passes per network")
    device_argument(p)
    args = p.parse_args()
    torch.set_num_threads(1) if args.device == "cpu" else None
    warnings.filterwarnings("ignore")
    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
        print("torch-pruning is not installed: only fxsurgeon is measured")
    print(f"target {args.target:g} of the MACs, {args.size} px, {args.device}, one thread on CPU\n")
    header = ("model", "tool", "result", "MACs", "params", "output change", "speed-up")
    rows = [header]
    for name in args.models.split(","):
        model = _build(name, args.size).to(args.device)
        x = torch.randn(1, 3, args.size, args.size, device=args.device)
        with torch.no_grad():
            y = model(x)
        macs, params = _macs(model, x), sum(t.numel() for t in model.parameters())
        t0 = latency(model, (x,), args.repeat)
        tools = ["fxsurgeon"] + (["torch-pruning"] if tp is not None else [])
        for tool in tools:
            try:
                pruned = with_fxsurgeon(model, x, args.target) if tool == "fxsurgeon" else \
                    with_torch_pruning(tp, model, x, args.target)
                with torch.no_grad():
                    change = float((pruned(x) - y).norm() / y.norm())
                rows.append((name, tool, "ok", f"{_macs(pruned, x) / macs:.3f}",
                             f"{sum(t.numel() for t in pruned.parameters()) / params:.3f}", f"{change:.3f}",
                             f"{t0 / latency(pruned, (x,), args.repeat):.2f}x"))
            except Exception as exc:  # noqa: BLE001 - a failure is a result of the comparison
                why = traceback.format_exception_only(type(exc), exc)[-1].strip().replace("\n", " ")
                rows.append((name, tool, f"failed: {why[:70]}", "", "", "", ""))
            print("  ".join(rows[-1]), flush=True)
    width = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print("\n| " + " | ".join(h.ljust(width[i]) for i, h in enumerate(header)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in width) + "|")
    for r in rows[1:]:
        print("| " + " | ".join(c.ljust(width[i]) for i, c in enumerate(r)) + " |")


if __name__ == "__main__":
    main()
