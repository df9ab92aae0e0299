"""Runs of several methods and seeds on one model and dataset, with a results table
and plots: what ``fxsurgeon train`` and ``fxsurgeon demo`` do."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path

import torch

from .data import load_data
from .errors import FxSurgeonError
from .models import load_model
from .report import human
from .training import METHODS, PRUNING, Recipe, Result, train

#: the demo: a capacity-limited net on the digits that ship with scikit-learn; λ grows
#: fast enough for an event within a few epochs (the paper's Δλ = 5e-5 needs ~100)
DEMO = {"model": "zoo:digits_cnn", "data": "digits", "methods": ["baseline", "nr"], "seeds": [0],
        "recipe": {"epochs": 20, "search_epochs": 20, "batch_size": 32, "lr": 0.05, "weight_decay": 5e-4,
                   "threshold": 0.6, "delta_lambda": 2e-3}}


def load_config(name: str) -> dict:
    """A shipped config (``paper:vgg19-cifar10``) or a JSON file."""
    if name.startswith("paper:"):
        shipped = resources.files("fxsurgeon") / "configs"
        path = shipped / f"{name[6:]}.json"
        if not path.is_file():
            known = sorted("paper:" + p.name[:-5] for p in shipped.iterdir())
            raise FxSurgeonError(f"no shipped config {name!r}; known: {', '.join(known)}")
        return json.loads(path.read_text())
    try:
        return json.loads(Path(name).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FxSurgeonError(f"cannot read config {name!r}: {err}") from None


def recipe_from(values: dict) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    unknown = set(values) - known
    if unknown:
        raise FxSurgeonError(f"unknown recipe settings {sorted(unknown)}; known: {sorted(known)}")
    return Recipe(**values)


def run(model_spec: str, data_spec: str, methods: list[str], seeds: list[int], recipe: Recipe,
        out: Path, tensorboard: bool = False, progress: bool = True,
        num_classes: int | None = None) -> list[Result]:
    """Train every method with every seed; write metrics and results to ``out``
    (:func:`plots` draws them)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise FxSurgeonError(f"unknown methods {bad}: use {', '.join(METHODS)}")
    data = load_data(data_spec)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    log.write_text("")
    results = []
    for seed in seeds:
        for method in methods:
            torch.manual_seed(seed)
            model, _ = load_model(model_spec, num_classes or data.num_classes)
            r = Recipe(**{**asdict(recipe), "seed": seed})
            _, result = train(model, data, method, r, log, tensorboard, progress)
            results.append(result)
    (out / "results.json").write_text(json.dumps(
        [{k: v for k, v in asdict(r).items() if k not in ("history", "events")} |
         {"events": [e.summary() for e in r.events]}
         for r in results], indent=1))
    return results


def table(results: list[Result]) -> str:
    """Per method: parameters, FLOPs, sparsity, accuracy (mean ± spread over seeds),
    training time and surgeries (NR's events, DemP's prunings)."""
    rows = [("method", "seeds", "params", "FLOPs (MACs)", "sparsity", "accuracy", "time", "surgeries")]
    for method in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == method]
        acc = [100 * r.accuracy for r in rs]
        spread = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        rows.append((method, str(len(rs)), human(statistics.mean(r.params for r in rs)),
                     human(statistics.mean(r.flops for r in rs)),
                     f"{100 * statistics.mean(r.history[-1]['sparsity'] for r in rs):.1f} %",
                     f"{statistics.mean(acc):.2f}{spread} %",
                     f"{statistics.mean(r.training_seconds for r in rs):.1f} s",
                     str(sum(len(r.events) for r in rs))))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def plots(results: list[Result], out: Path) -> list[Path]:
    """The training curves of every run, accuracy against sparsity when a pruning method
    ran, and the widths at each rejuvenation event."""
    from .plots import plot_tradeoff, plot_training, plot_widths
    paths = [plot_training(results, out / "training.png")]
    if any(r.method in PRUNING for r in results):
        methods = dict.fromkeys(r.method for r in results)
        paths.append(plot_tradeoff([[r for r in results if r.method == m] for m in methods],
                                   out / "sparsity.png"))
    for r in results:
        p = plot_widths(r, out / f"widths-{r.method}-seed{r.seed}.png")
        if p:
            paths.append(p)
    return paths
