"""Time the surgery: liveliness + plan + rewrite per model, and a training step of the
rejuvenated (``nr``) network against the original model's, measured in the same run.

30 % of the BatchNorm scales of every free dimension are zeroed first, so the plan
has dead channels to remove and budget to spend. The ``cr`` and ``ca`` networks (each
planned for the same FLOP budget) are timed against the dense network of their own
widths (targets: at most 0.75x for cr at α near 2, at most 1.15x for ca) and against the
original model (target: every scheme within 1.05x of it); ``--plain`` also times them
in their plain form (one tensor per value), the layout before two streams.

Each ratio is the median over five pairs of steps run in turn (the network, then its
peer), so that a machine slowed for a while slows both alike. Steps are timed with CUDA
events on a GPU (``--device cuda``); the last column is the
process's peak resident memory so far (analysis, surgery and training of every model
up to that row).

The CIFAR nets train at ``--batch`` images of 32 px (default 64), the torchvision models
at an eighth of it at 224 px (the same pixels per step).

``--form`` puts the cr/ca layers in their split form (a kernel per block, the default),
their dense form (one kernel on the assembled weight), or each in its faster, timed on
a training batch (``auto``, :mod:`fxsurgeon.surgery.forms`); the ``dense`` columns then
count the layers in the dense form and the seconds choosing took. ``--compile MODE``
times every network under ``torch.compile`` (``default``, ``max-autotune-no-cudagraphs``).

On a CPU, glibc's malloc gives large freed blocks back to the system, so every step
page-faults its activations in again, and a network with wider activations pays more
(ResNet-164 nr: 168k faults a step against the original's 119k). The header says which
allocator settings were in effect; to time the arithmetic alone, keep freed memory:
``MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=100000000000`` (or preload
jemalloc or tcmalloc).

    python bench/surgery.py                    # the paper's CIFAR nets + a few torchvision models
    python bench/surgery.py --device cuda --models vgg19_cifar,resnet50
    python bench/surgery.py --device cuda --batch 128 --form auto --compile default
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import warnings

import torch
import torchvision

import fxsurgeon as fxs
from common import device_argument, kill
from fxsurgeon.layers.streamed import canonical
from fxsurgeon.surgery.forms import FORMS, choose_forms, set_forms
from fxsurgeon.zoo import MODELS, SHAPES

CASES = [(name, factory, 32) for name, factory in MODELS.items() if name not in SHAPES] + \
    [(name, lambda n=name: torchvision.models.get_model(n), 224)
     for name in ("resnet50", "mobilenet_v3_large", "densenet121")]
#: the models whose median issue 14's targets name
TARGET_SET = {"vgg19_cifar", "resnet164_cifar", "densenet_bc100_k40_cifar", "resnet50", "mobilenet_v3_large"}


def _cases(models: str | None) -> list:
    """The cases ``--models`` names: the bench's own, or any torchvision classification
    model (at 224 px); an unknown name is an error that lists them."""
    if not models:
        return CASES
    known = {case[0]: case for case in CASES}
    torchvision_models = set(torchvision.models.list_models(module=torchvision.models))
    cases = []
    for name in models.split(","):
        if name in known:
            cases.append(known[name])
        elif name in torchvision_models:
            cases.append((name, lambda n=name: torchvision.models.get_model(n), 224))
        else:
            raise SystemExit(f"unknown model {name!r}: use one of {sorted(known)} or a torchvision "
                             f"classification model")
    return cases


def _step(model, x) -> float:
    """Seconds of one forward and backward pass."""
    if x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x).sum().backward()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    model(x).sum().backward()
    return time.perf_counter() - t


def _ratio(model, peer, x, repeat=5) -> tuple[float, float]:
    """``model``'s step time over ``peer``'s, and ``peer``'s: the median of ``repeat`` pairs
    run in turn after a warm-up of each, so that what slows the machine for a while slows
    both sides of a pair alike."""
    model.train()
    peer.train()
    _step(model, x)
    _step(peer, x)
    pairs = [(_step(model, x), _step(peer, x)) for _ in range(repeat)]
    return statistics.median(a / b for a, b in pairs), statistics.median(b for _, b in pairs)


def _allocator() -> str:
    """The allocator settings in the environment (see the module docstring)."""
    found = sorted((k, v) for k, v in os.environ.items()
                   if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD"))
    return ", ".join(f"{k}={v}" for k, v in found) or "the C library's malloc, default settings"


def _peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _dense_like(graph, alive, plan):
    """The plain (``nr``) network with the plan's widths: the peer of cr/ca layers."""
    same = fxs.plan(graph, alive, metric=plan.metric, target=plan.target, scheme="nr", alpha=plan.alpha,
                    round_to=plan.round_to)
    return fxs.rewrite(graph, same).module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names of the cases (default all; any torchvision "
                                    "classification model too)")
    p.add_argument("--batch", type=int, default=64, help="images per step at 32 px (224 px: an eighth)")
    p.add_argument("--round-to", type=int, default=8,
                   help="grow widths in multiples of this (default 8, as NeuralRejuvenation's events)")
    p.add_argument("--plain", action="store_true",
                   help="also time the cr/ca networks in their plain form (one tensor per value: "
                        "each layer slices its input and concatenates its outputs)")
    p.add_argument("--form", choices=FORMS, default="split",
                   help="the form of the cr/ca layers (auto: each layer's faster, timed on a training batch)")
    p.add_argument("--compile", metavar="MODE", help="time every network under torch.compile(mode=MODE)")
    device_argument(p)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"fwd+bwd step times in seconds on {args.device} (1 CPU thread), batch {args.batch} at 32 px "
          f"and {max(1, args.batch // 8)} at 224 px; cr/ca against the dense network of the same widths; "
          f"cr/ca layers in the {args.form} form; "
          f"{'torch.compile mode ' + args.compile if args.compile else 'eager'}")
    timed = (lambda m: torch.compile(m, mode=args.compile)) if args.compile else (lambda m: m)
    if not args.device.startswith("cuda"):
        print(f"CPU allocator: {_allocator()}")
    print(f"{'model':26s} {'plan s':>7s} {'rewrite s':>9s} {'step s':>7s} {'nr α':>6s} {'nr/orig':>7s} "
          f"{'cr α':>6s} {'cr/dense':>8s} {'plain':>8s} {'cr/orig':>7s} {'ca α':>6s} {'ca/dense':>8s} "
          f"{'plain':>8s} {'ca/orig':>7s} {'dense':>9s} {'peak GB':>7s}")
    ratios = {"nr": [], "cr": [], "ca": [], "cr/orig": [], "ca/orig": []}
    names = []
    for name, factory, size in _cases(args.models):
        model = factory().eval().to(args.device)
        batch = args.batch if size == 32 else max(1, args.batch // 8)
        x = torch.randn((batch, 3, size, size), device=args.device)
        graph = fxs.analyze(model, x[:1])
        kill(graph)
        alive = fxs.liveliness(graph)
        t = time.perf_counter()
        plan = fxs.plan(graph, alive, metric="flops", target=1.0, scheme="nr", round_to=args.round_to)
        planned = time.perf_counter() - t
        t = time.perf_counter()
        surgery = fxs.rewrite(graph, plan)
        rewritten = time.perf_counter() - t
        original = timed(model)
        ratio, before = _ratio(timed(surgery.module), original, x)
        ratios["nr"].append(ratio)
        names.append(name)
        row = (f"{name:26s} {planned:7.3f} {rewritten:9.3f} {before:7.3f} {plan.alpha:6.3f} "
               f"{ratios['nr'][-1]:7.2f}")
        chosen, choosing = [], []
        for scheme in ("cr", "ca"):
            p = fxs.plan(graph, alive, metric="flops", target=1.0, scheme=scheme, round_to=args.round_to)
            dense = timed(_dense_like(graph, alive, p))
            net = fxs.rewrite(graph, p).module
            t = time.perf_counter()
            if args.form == "auto":     # timed on a training batch, not the analysis' one image
                forms = [f.form for f in choose_forms(net, (x,))]
            else:
                forms = [args.form for _ in set_forms(net, args.form)]
            chosen.append(f"{forms.count('dense')}/{len(forms)}")
            choosing.append(f"{scheme} {time.perf_counter() - t:.1f} s")
            fast = timed(net)
            ratios[scheme].append(_ratio(fast, dense, x)[0])
            plain = _ratio(timed(canonical(net)), dense, x)[0] if args.plain else float("nan")
            against = _ratio(fast, original, x)[0]
            ratios[f"{scheme}/orig"].append(against)
            row += f" {p.alpha:6.3f} {ratios[scheme][-1]:8.2f} {plain:8.2f} {against:7.2f}"
        print(row + f" {' '.join(chosen):>9s} {_peak_rss_gb():7.2f}"
              + (f"  (choosing forms: {', '.join(choosing)})" if args.form == "auto" else ""), flush=True)
    for label, rows in (("all models", ratios), ("issue 14's five", {
            k: [r for n, r in zip(names, v, strict=True) if n in TARGET_SET] for k, v in ratios.items()})):
        if rows["nr"]:
            print(f"medians over {label}: nr step {statistics.median(rows['nr']):.2f}x the original's at "
                  f"the same FLOP budget (target <= 1.05); cr {statistics.median(rows['cr']):.2f}x dense "
                  f"(target <= 0.75 at α near 2); ca {statistics.median(rows['ca']):.2f}x dense "
                  f"(target <= 1.15); against the original's step (target <= 1.05 each): cr "
                  f"{statistics.median(rows['cr/orig']):.2f}x, ca {statistics.median(rows['ca/orig']):.2f}x")

if __name__ == "__main__":
    main()
