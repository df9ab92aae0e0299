"""Peak memory of analysing and rewriting a large model, against the model's own size
plus the new network's (the target: no more than that, plus the activations of one
example).

Each model runs in a fresh process (peak resident memory only grows), built from its
config in float32, analysed on one example, pruned to ``--target`` of its MACs by
magnitude, and rewritten (with the self-check). Printed per model: its size, the new
network's, the peak resident memory above the bare interpreter (torch and fxsurgeon
imported) after loading, after ``analyze`` and after ``rewrite``, and that peak over
``model + new``.

    python bench/memory.py                                  # vit_l_16
    python bench/memory.py --models vit_h_14,regnet_y_128gf --size 224
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

GB = 2 ** 30


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def measure(name: str, size: int, target: float) -> dict:
    """Run one model in this process and return its numbers."""
    import torch
    import torchvision

    import fxsurgeon as fxs
    torch.set_grad_enabled(False)
    base = _peak()                  # the interpreter with torch, torchvision and fxsurgeon
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    model = torchvision.models.get_model(name, **kwargs).eval()
    size_of = (lambda m: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) / GB)
    row = {"model": name, "size_gb": size_of(model), "loaded_gb": _peak() - base}
    graph = fxs.analyze(model, torch.randn(1, 3, size, size))
    row["analyzed_gb"] = _peak() - base
    plan = fxs.plan(graph, None, metric="flops", target=target, scheme="prune")
    new = fxs.rewrite(graph, plan).module
    row["new_gb"] = size_of(new)
    row["rewritten_gb"] = _peak() - base
    row["over_model_plus_new"] = row["rewritten_gb"] / (row["size_gb"] + row["new_gb"])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vit_l_16", help="comma-separated torchvision model names")
    p.add_argument("--size", type=int, default=224, help="input size in pixels")
    p.add_argument("--target", type=float, default=0.7, help="share of the MACs the pruned network keeps")
    p.add_argument("--one", help=argparse.SUPPRESS)        # the child process: one model
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.target)))
        return 0
    print(f"{'model':16} {'size':>6} {'new':>6} {'loaded':>7} {'analyzed':>8} {'rewritten':>9} "
          f"{'peak / (model + new)':>20}   (GB)")
    for name in args.models.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", name, "--size", str(args.size),
                               "--target", str(args.target)], capture_output=True, text=True)
        if done.returncode:
            why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            print(f"{name:16} failed: {why}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:16} {r['size_gb']:6.2f} {r['new_gb']:6.2f} {r['loaded_gb']:7.2f} "
              f"{r['analyzed_gb']:8.2f} {r['rewritten_gb']:9.2f} {r['over_model_plus_new']:20.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
