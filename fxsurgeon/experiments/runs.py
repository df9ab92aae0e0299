"""Runs of several methods and seeds on one model and dataset, with a results table
and plots: what ``fxsurgeon train`` and ``fxsurgeon demo`` do."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import Subset

from ..analysis.report import human
from ..errors import FxSurgeonError, writing
from ..persistence.fileformat import problem, regular_size
from ..zoo.specs import load_model
from .data import Data, load_data
from .devices import Hardware
from .loop import METHODS, PRUNING, SEARCHING, Result, finite, train
from .outdir import open_file
from .recipe import SEEDS, Recipe

#: the demo: a capacity-limited net on the digits that ship with scikit-learn; λ grows
#: fast enough for an event within a few epochs (the paper's Δλ = 5e-5 needs ~100)
DEMO = {"model": "zoo:digits_cnn", "data": "digits", "methods": ["baseline", "nr"], "seeds": [0],
        "recipe": {"epochs": 20, "search_epochs": 20, "batch_size": 32, "lr": 0.05, "weight_decay": 5e-4,
                   "threshold": 0.6, "delta_lambda": 2e-3, "round_to": 1}}


#: what a config may hold (each field optional); ``paper`` says which row of which table
#: of the paper it reproduces, and the paper's error (%) per method
CONFIG = {"model": str, "data": str, "methods": list[str], "seeds": list[int], "recipe": dict, "paper": dict}
#: what a config's ``paper`` may hold (each field optional): ``error_per_event[k]`` is the
#: error after k events (0: the baseline's)
PAPER = {"table": str, "row": str, "error": dict[str, float], "top5_error": dict[str, float],
         "error_per_event": list[float], "note": str}

#: ``--smoke``: a few epochs on a few samples, and the stand-in when the data is absent
SMOKE = {"recipe": {"epochs": 2, "search_epochs": 1, "finetune_epochs": 1, "batch_size": 32},
         "samples": (256, 128), "model": "zoo:digits_cnn", "data": "digits"}


def load_config(name: str) -> dict:
    """A shipped config (``paper:vgg19-cifar10``) or a JSON file, every field checked."""
    if name.startswith("paper:"):
        shipped = resources.files("fxsurgeon") / "configs"
        path = shipped / f"{name[6:]}.json"
        if not path.is_file():
            known = sorted("paper:" + p.name[:-5] for p in shipped.iterdir())
            raise FxSurgeonError(f"no shipped config {name!r}; known: {', '.join(known)}")
        cfg = json.loads(path.read_text())
    else:
        try:
            regular_size(name, "config")
            cfg = json.loads(Path(name).read_text())
        except (OSError, ValueError) as err:
            raise FxSurgeonError(f"cannot read config {name!r}: {err}") from None
    found = problem(cfg, dict) or _optional(cfg, CONFIG) or _optional(cfg.get("paper", {}), PAPER, "paper.")
    if found:
        raise FxSurgeonError(f"config {name!r}: {found}")
    return cfg


def _optional(value: dict, schema: dict, where: str = "") -> str | None:
    """The first field of ``value`` that ``schema`` does not accept, where every field is optional."""
    found = (problem(value[k], t, where + k) for k, t in schema.items() if k in value)
    return next(filter(None, found), None)


def recipe_from(values: dict) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    unknown = set(values) - known
    if unknown:
        raise FxSurgeonError(f"unknown recipe settings {sorted(unknown)}; known: {sorted(known)}")
    return Recipe(**values)


@dataclass
class Runs:
    """Every method with every seed, on one model and dataset, with one recipe."""

    model: str
    data: str
    methods: list[str]
    seeds: list[int]
    recipe: Recipe
    num_classes: int | None = None      # must match the data's, when given
    smoke: bool = False                 # only the first samples of the data (SMOKE)

    def __post_init__(self):
        bad = [s for s in self.seeds if not 0 <= s < SEEDS]
        if bad or not self.seeds:
            raise FxSurgeonError(f"seeds must be whole numbers in [0, 2**63), at least one: "
                                 f"got {bad or 'none'}")
        if not self.methods:
            raise FxSurgeonError(f"no method to run: use some of {', '.join(METHODS)}")

    def settings(self) -> dict:
        """What makes two runs the same run (``run.json`` of the output folder)."""
        return asdict(self)


def smoke(runs: Runs, given: dict | None = None) -> tuple[Runs, str | None]:
    """``runs`` made a smoke test: :data:`SMOKE`'s recipe (but for the settings ``given``
    on the command line) and samples, and, when the data cannot be loaded here, the
    digits-sized stand-in model and data (with a note saying why)."""
    recipe = Recipe(**{**asdict(runs.recipe), **SMOKE["recipe"], **(given or {})})
    note = None
    try:
        load_data(runs.data)
    except FxSurgeonError as err:
        note = f"smoke run on the stand-in {SMOKE['model']} with {SMOKE['data']}: {err}"
        runs = Runs(SMOKE["model"], SMOKE["data"], runs.methods, runs.seeds, recipe, None, True)
    return Runs(runs.model, runs.data, runs.methods, runs.seeds, recipe, runs.num_classes, True), note


def _paired(methods: list[str]) -> bool:
    """Whether the methods hold a baseline and an NR method, which equal epochs pair."""
    return "baseline" in methods and bool(set(SEARCHING) & set(methods))


def check_equal_epochs(methods: list[str]) -> None:
    """Asked for explicitly, equal epochs need a baseline and an NR method to pair (by
    default they apply where there are both)."""
    if not _paired(methods):
        raise FxSurgeonError(f"equal epochs give the baseline as many epochs as NR trained: --method needs "
                             f"baseline and one of {', '.join(SEARCHING)}")


def prepare(runs: Runs) -> Data:
    """The runs' data, once the methods are known and the model runs on the data and
    gives one output per class: every check made before the work starts."""
    bad = [m for m in runs.methods if m not in METHODS]
    if bad:
        raise FxSurgeonError(f"unknown methods {bad}: use {', '.join(METHODS)}")
    data = load_data(runs.data)
    if runs.smoke:
        train_n, test_n = SMOKE["samples"]
        data = Data(Subset(data.train, range(min(train_n, len(data.train)))),
                    Subset(data.test, range(min(test_n, len(data.test)))), data.input_shape, data.num_classes)
    if runs.num_classes is not None and runs.num_classes != data.num_classes:
        raise FxSurgeonError(f"--num-classes {runs.num_classes} does not match {runs.data}, "
                             f"which has {data.num_classes} classes")
    held = "demp" in runs.methods and runs.recipe.death_set == "held-out"
    samples = len(data.train) - (runs.recipe.death_samples if held else 0)
    if runs.recipe.batch_size > samples:
        raise FxSurgeonError(f"batch size {runs.recipe.batch_size} is more than the {samples} training "
                             f"samples of {runs.data}: no batch would train")
    model, _ = load_model(runs.model, data.num_classes)
    shape = "x".join(map(str, data.input_shape))
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(data.input_shape))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the cause is the same
        raise FxSurgeonError(f"{runs.model} does not run on the {shape} inputs of {runs.data}: "
                             f"{type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, data.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FxSurgeonError(f"{runs.model} gives {got} for one input, and {runs.data} needs "
                             f"(1, {data.num_classes}): one score per class")
    return data


def run(runs: Runs, data: Data, out: Path, tensorboard: bool = False, progress: bool = True,
        hardware: Hardware | None = None) -> list[Result]:
    """Train every method with every seed where ``hardware`` says; append metrics to
    ``out``/metrics.jsonl, checkpoint each run in ``out``/checkpoints (a run found there
    continues, or is read back when finished) and write ``out``/results.json
    (:func:`plots` draws them). With ``equal_epochs``, when there are both, the NR
    methods of a seed train first, and its baseline as many epochs as the first of them
    did."""
    results = []
    equal = runs.recipe.equal_epochs and _paired(runs.methods)
    for seed in runs.seeds:
        nr_epochs = None
        for method in sorted(runs.methods, key=lambda m: equal and m not in SEARCHING):
            torch.manual_seed(seed)
            model, _ = load_model(runs.model, data.num_classes)
            epochs = nr_epochs if equal and method == "baseline" else runs.recipe.epochs
            r = Recipe(**{**asdict(runs.recipe), "seed": seed, "epochs": epochs})
            _, result = train(model, data, method, r, out / "metrics.jsonl", tensorboard, progress,
                              out / "checkpoints" / f"{method}-seed{seed}.pt", hardware)
            results.append(result)
            if method in SEARCHING and nr_epochs is None:
                nr_epochs = result.epochs
    results.sort(key=lambda r: (runs.seeds.index(r.seed), runs.methods.index(r.method)))
    with writing(out / "results.json"), open_file(out / "results.json") as f:
        records = [{k: v for k, v in asdict(r).items() if k not in ("history", "events")} |
                   {"events": [e.summary() | {"accuracy": accuracy_at(r, e)} for e in r.events]}
                   for r in results]
        f.write(json.dumps(finite(records), indent=1, allow_nan=False))
    return results


def _mean_sd(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}"


def _columns(rows: list[tuple]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def _by_method(results: list[Result]) -> dict[str, list[Result]]:
    return {m: [r for r in results if r.method == m] for m in dict.fromkeys(r.method for r in results)}


def table(results: list[Result]) -> str:
    """Per method: parameters, FLOPs, sparsity, test accuracy at the last epoch and the
    best of any epoch (mean ± sd over seeds), epochs, training time and surgeries (NR's
    events, DemP's prunings)."""
    rows = [("method", "seeds", "params", "FLOPs (MACs)", "sparsity", "accuracy (last)", "best", "epochs",
             "time", "surgeries")]
    for method, rs in _by_method(results).items():
        rows.append((method, str(len(rs)), human(statistics.mean(r.params for r in rs)),
                     human(statistics.mean(r.flops for r in rs)),
                     f"{100 * statistics.mean(r.history[-1]['sparsity'] for r in rs):.1f} %",
                     _mean_sd([100 * r.accuracy for r in rs]) + " %",
                     _mean_sd([100 * r.best for r in rs]) + " %",
                     f"{statistics.mean(r.epochs for r in rs):g}",
                     f"{statistics.mean(r.training_seconds for r in rs):.1f} s",
                     str(sum(len(r.events) for r in rs))))
    return _columns(rows)


def accuracy_at(result: Result, event) -> float | None:
    """The test accuracy at the end of the epoch in which ``event`` fired."""
    return next((h["accuracy"] for h in result.history if h["step"] >= event.step and "accuracy" in h), None)


def paper_table(results: list[Result], paper: dict) -> str:
    """The measured test error (last epoch, mean ± sd over seeds) beside the paper's, for
    the table row a config reproduces; with the paper's error after each of several
    events (Table 5), the error at the end of the epoch of each event too."""
    errors = paper.get("error", {})
    rows = [("method", "error (measured)", "error (paper)")]
    for method, rs in _by_method(results).items():
        known = errors.get(method)
        rows.append((method, _mean_sd([100 * (1 - r.accuracy) for r in rs]) + " %",
                     "not recorded" if known is None else f"{known:.2f} %"))
    text = f"paper: Table {paper.get('table', '?')}, {paper.get('row', '')}\n" + _columns(rows)
    per_event = paper.get("error_per_event")
    searched = [r for r in results if r.events]
    if per_event and searched:
        rows = [("events", "error at the event's epoch (measured)", "error after k events (paper)")]
        for k in range(1, max(len(per_event) - 1, max(len(r.events) for r in searched)) + 1):
            at = [100 * (1 - a) for r in searched if len(r.events) >= k
                  for a in [accuracy_at(r, r.events[k - 1])] if a is not None]
            rows.append((str(k), _mean_sd(at) + " %" if at else "no such event",
                         f"{per_event[k]:.2f} %" if k < len(per_event) else "-"))
        text += ("\n\nper event (measured: the test error at the end of the epoch in which event k fired, "
                 "during the search at a constant LR; the paper's: after training with k events)\n"
                 + _columns(rows))
    return text


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
