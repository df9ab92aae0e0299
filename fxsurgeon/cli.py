"""The ``fxsurgeon`` command line: every bad argument, path or number is one line
``fxsurgeon: error: ...`` and exit code 2, found before the work starts."""
from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from .errors import FxSurgeonError, NoSpaceError

DESCRIPTION = """\
Network surgery for PyTorch models traced with torch.fx: inspect how a model's
channels are coupled, plan and prune the dead ones, or train with Neural
Rejuvenation, DemP and pruning baselines. MODEL is zoo:NAME, torchvision:NAME,
timm:NAME (built by name, never downloaded) or package.module:factory, which
imports and runs that code; files fxsurgeon reads are data and never do."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are fxsurgeon's one-line errors."""

    def error(self, message: str):
        raise FxSurgeonError(f"{message} (see {self.prog} --help)")


def _numbers(kind: type, test, wanted: str):
    """An argparse type: one number of ``kind`` that passes ``test``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value
    return parse


_count = _numbers(int, lambda v: v >= 1, "a whole number of at least 1")
_fraction = _numbers(float, lambda v: 0 < v < 1, "a number between 0 and 1")
_budget = _numbers(float, lambda v: v > 0, "a positive number")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"input shape {text!r} is not whole numbers >= 1 like 1,3,224,224")
    return shape


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole numbers like 0,1,2") from None


def _methods(text: str) -> list[str]:
    from .experiments.loop import METHODS
    methods = text.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}: use {', '.join(METHODS)}")
    return methods


def _events(text: str) -> int | str:
    if text == "unlimited":
        return text
    return _count(text)


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        steps = []
    if not steps or steps != sorted(set(steps)) or steps[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not increasing whole numbers >= 1 like 30,60,90")
    return steps


def _choice(*values: str):
    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"{text!r} is not {' or '.join(values)}")
        return text
    return parse


#: recipe settings whose flags parse their own way (the others by their type)
def _rescale(text: str) -> bool | str:
    """``--rescale``: a goal of neural rescaling, or none (true and false as in a config)."""
    from .surgery.rescaling import GOALS

    value = {"none": False, "false": False, "true": True}.get(text.lower(), text)
    if value not in (True, False, *GOALS):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(GOALS)}, none")
    return value


_RECIPE_TYPES = {"events": (_events, "N|unlimited"), "lr_steps": (_steps, "E1,E2,..."),
                 "fixed": (_choice("trunk"), "trunk"),
                 "sparsity": (_choice("auto", "subgradient", "proximal"), "auto|subgradient|proximal"),
                 "death_set": (_choice("train", "held-out"), "train|held-out"),
                 "rescale": (_rescale, "layer|paper|gamma0|none")}


def _leaf(text: str) -> type:
    module, _, name = text.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise argparse.ArgumentTypeError(f"cannot import leaf module class {text!r}") from None


def inspect(args) -> None:
    from . import add_judges, analyze
    from .analysis.drawing import need_matplotlib, to_dot, write_svg
    from .experiments.outdir import check_file
    from .zoo.specs import load_model

    outputs = {flag: getattr(args, flag) for flag in ("json", "dot", "svg") if getattr(args, flag)}
    for flag, path in outputs.items():
        check_file(path, f"--{flag}")
    if args.svg:
        need_matplotlib()
    model, shape = load_model(args.model, args.num_classes)
    graph = analyze(model, torch.randn(args.input_shape or shape), leaf_modules=args.leaf,
                    frontend=args.frontend)
    print(graph.summary())
    drawn = (args.dot or args.svg) and args.only
    if drawn and not any(fnmatch.fnmatchcase(d.name, args.only) for d in graph.dims):
        raise FxSurgeonError(f"--only {args.only!r} matches no dimension of this model (their names are "
                             f"in the summary above): nothing to draw")
    judged = add_judges(graph, leaf_modules=args.leaf, frontend=args.frontend)
    print(judged.report(graph))
    gated = {name for name, _ in judged.gates.values()}
    for path in outputs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps(graph.to_json(), indent=1))
        print(f"wrote {args.json}")
    if args.dot:
        Path(args.dot).write_text(to_dot(graph, args.only, gated))
        print(f"wrote {args.dot}")
    if args.svg:
        write_svg(graph, args.svg, args.only, gated)
        print(f"wrote {args.svg}")


def _planned(args):
    """The model of a spec with its checkpoint loaded, its graph, and its liveliness."""
    from . import analyze, liveliness
    from .persistence.checkpoint import load_weights
    from .zoo.specs import load_model

    model, shape = load_model(args.model, args.num_classes)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    graph = analyze(model.eval(), torch.randn(args.input_shape or shape), frontend=args.frontend)
    return graph, liveliness(graph, args.threshold)


def plan_command(args) -> None:
    from . import plan
    from .layers.schemes import SCHEMES

    graph, alive = _planned(args)
    target = args.target if SCHEMES[args.scheme].grows else None
    print(plan(graph, alive, metric=args.metric, target=target, scheme=args.scheme,
               round_to=args.round_to))


def prune_command(args) -> None:
    from . import analyze, plan, rewrite, save
    from .experiments.outdir import check_file
    from .experiments.timing import latency
    from .judging import importance

    if args.checkpoint and Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise FxSurgeonError(f"--out {args.out!r} is the --checkpoint: write the pruned model elsewhere")
    check_file(args.out, "--out", overwrite=args.overwrite)
    graph, alive = _planned(args)
    scores = importance.CRITERIA[args.importance](graph) if args.target is not None else None
    p = plan(graph, alive, metric=args.metric, target=args.target, scheme="prune", round_to=args.round_to,
             scores=scores)
    surgery = rewrite(graph, p)
    save(graph, surgery, args.out, spec=args.model, num_classes=args.num_classes)
    after = analyze(surgery.module, graph.example_inputs)
    old_t, new_t = (latency(m, graph.example_inputs) for m in (graph.module, surgery.module))
    rows = [("", "before", "after", "ratio")]
    for metric in ("params", "flops"):
        a, b = graph.count(metric), after.count(metric)
        rows.append((metric, f"{a:,}", f"{b:,}", f"{b / a:.1%}"))
    rows.append(("latency", f"{old_t * 1e3:.2f} ms", f"{new_t * 1e3:.2f} ms", f"{old_t / new_t:.2f}x faster"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"pruned {args.model}" + ("" if args.target is None else
                                    f" to {args.target:g} of its {args.metric} by {args.importance}"))
    print("\n".join("  ".join(c.rjust(width[i]) for i, c in enumerate(r)) for r in rows))
    print(f"wrote {args.out} (load it with fxsurgeon.load)")


@contextmanager
def _discarding(out: Path) -> Iterator[None]:
    """Where a run that ``--overwrite`` makes to replace ``out`` fails or is interrupted,
    say that it is discarded and ``out`` keeps its results."""
    note = (f"--overwrite discarded the new run: {str(out)!r} holds its old results as they were, and "
            f"there is nothing to resume")
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(note) from None
    except NoSpaceError as exc:
        raise NoSpaceError(exc.path, note) from None
    except (FxSurgeonError, OSError) as exc:
        raise FxSurgeonError(f"{exc}; {note}") from None


def _experiment(cfg: dict, args) -> None:
    """Run a config (overridden by the command line) into ``--out``, safely; print the
    table and the plots."""
    from .experiments import outdir
    from .experiments import runs as experiment
    from .experiments.devices import Hardware

    given = {k: v for k, v in vars(args).items() if k in _RECIPE and v is not None}
    if given.get("events") == "unlimited":
        given["events"] = None
    recipe = {**cfg.get("recipe", {}), **given}
    runs = experiment.Runs(args.model or cfg["model"], args.data or cfg["data"],
                           args.method or cfg.get("methods", ["nr"]), args.seeds or cfg.get("seeds", [0]),
                           experiment.recipe_from(recipe), getattr(args, "num_classes", None))
    if recipe.get("equal_epochs"):
        experiment.check_equal_epochs(runs.methods)
    if args.smoke:
        runs, note = experiment.smoke(runs, given)
        if note:
            print(note)
    hardware = Hardware(args.device, args.workers, args.amp, args.channels_last)
    hardware.resolve()                                  # a bad one is an error before the work
    drawing = importlib.util.find_spec("matplotlib") is not None
    if not drawing:
        print("matplotlib is not installed: the runs are written without plots (pip install matplotlib)",
              file=sys.stderr)
    out, how = Path(args.out), {"resume": args.resume, "overwrite": args.overwrite}
    outdir.check_folder(out, runs.settings(), **how)
    replacing = args.overwrite and out.is_dir() and any(out.iterdir())
    with _discarding(out) if replacing else nullcontext():
        data = experiment.prepare(runs)
        with outdir.folder(out, runs.settings(), **how) as where:
            results = experiment.run(runs, data, where, args.tensorboard, not args.quiet, hardware)
            plots = experiment.plots(results, where) if drawing else []
    print(experiment.table(results))
    if "paper" in cfg:
        print("\n" + experiment.paper_table(results, cfg["paper"]))
    print(f"\nmetrics: {out / 'metrics.jsonl'}\nresults: {out / 'results.json'}")
    for path in plots:
        print(f"plot:    {out / path.relative_to(where)}")


def train_command(args) -> None:
    from .experiments.runs import load_config
    from .zoo.specs import names_code

    cfg = load_config(args.config) if args.config else {}
    if not (args.model or cfg.get("model")) or not (args.data or cfg.get("data")):
        raise FxSurgeonError("train needs a MODEL and --data (or a --config that names them)")
    if not args.model and names_code(cfg["model"]):
        raise FxSurgeonError(f"the config names the model {cfg['model']!r}, which would import code: "
                             f"fxsurgeon runs code only when the command line names it (pass it as MODEL)")
    _experiment(cfg, args)


def demo_command(args) -> None:
    from .experiments.runs import DEMO

    _experiment(DEMO, args)


def _recipe_fields() -> dict:
    from dataclasses import fields

    from .experiments.recipe import Recipe
    return {f.name: f for f in fields(Recipe) if f.name != "seed"}     # --seeds sets it


_RECIPE = _recipe_fields()


def _training_arguments(p: argparse.ArgumentParser, cfg: dict, out: str, defaults: str) -> None:
    """The options of train and demo; ``cfg`` gives the defaults they show."""
    from .experiments.loop import METHODS
    from .experiments.recipe import HELP
    recipe = cfg.get("recipe", {})
    p.add_argument("--method", type=_methods, help=f"comma-separated, from {', '.join(METHODS)} "
                   f"(default {','.join(cfg.get('methods', ['nr']))})")
    p.add_argument("--seeds", type=_seeds, help=f"comma-separated seeds, e.g. 0,1,2: mean and spread "
                   f"in the table (default {','.join(map(str, cfg.get('seeds', [0])))})")
    p.add_argument("--out", default=out, help=f"folder for metrics, results, plots and checkpoints "
                   f"(default {out}); it must be empty or missing, unless --resume or --overwrite")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out (same settings), appending to its logs")
    again.add_argument("--overwrite", action="store_true",
                       help="replace what --out holds, once the new run has finished")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs (OUT/tensorboard)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="a smoke test: 2 epochs on 256 samples, on the "
                   "digits-sized stand-in (zoo:digits_cnn, digits) when the data is absent")
    run = p.add_argument_group("where it runs")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default cuda when available, else cpu)")
    run.add_argument("--workers", type=_numbers(int, lambda v: v >= 0, "a whole number of at least 0"),
                     help="DataLoader worker processes (default min(4, CPUs) on CUDA, 0 on CPU)")
    run.add_argument("--amp", type=_choice("bf16", "fp16"), help="mixed precision: bf16 or fp16 (autocast; "
                     "fp16 with a gradient scaler); default off")
    run.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    group = p.add_argument_group(f"recipe ({defaults}; see docs/training.md)")
    for name, f in _RECIPE.items():
        flag, default = "--" + name.replace("_", "-"), recipe.get(name, f.default)
        text = f"{HELP[name]} (default {'every epoch' if default is None else default})"
        if name in _RECIPE_TYPES:
            kind, metavar = _RECIPE_TYPES[name]
            default = "unlimited" if name == "events" and default is None else default
            text = f"{HELP[name]} (default {'none' if default is None else default})"
            group.add_argument(flag, type=kind, default=None, metavar=metavar, help=text)
        elif isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "int | None": int, "float": float}.get(f.type, str)
            group.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=text)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    from .analysis.graph import FRONTENDS

    p.add_argument("model", help="zoo:NAME, torchvision:NAME, timm:NAME or package.module:factory "
                   "(imports and runs that code)")
    p.add_argument("--input-shape", type=_shape, help="example input shape, e.g. 1,3,224,224 "
                   "(default: the model's usual one)")
    p.add_argument("--num-classes", type=_count, help="passed to the model factory")
    p.add_argument("--frontend", choices=FRONTENDS, default="auto",
                   help="how the model is traced: torch.fx, torch.export, or auto (fx, else export)")


def parser() -> argparse.ArgumentParser:
    from .experiments.runs import DEMO

    p = _Parser(prog="fxsurgeon", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ins = sub.add_parser("inspect", help="show how a model's channels are coupled and what they cost",
                         description="Show a model's dimensions (coupled channels), free or pinned, and "
                                     "their cost; optionally write them as JSON, DOT or SVG (replacing "
                                     "those files).")
    _model_arguments(ins)
    ins.add_argument("--leaf", type=_leaf, action="append", default=[],
                     help="module class to keep opaque, e.g. mypkg.blocks.Attention (imports mypkg; "
                          "repeatable)")
    ins.add_argument("--json", metavar="FILE", help="write everything machine-readable")
    ins.add_argument("--dot", metavar="FILE", help="write the coupling graph as graphviz DOT text")
    ins.add_argument("--svg", metavar="FILE",
                     help="draw the coupling graph as SVG (needs matplotlib, not graphviz)")
    ins.add_argument("--only", metavar="GLOB", help="draw only dimensions whose name matches, e.g. 'layer1*'")
    ins.set_defaults(run=inspect)
    for name, run, text in (("plan", plan_command, "plan the widths after removing dead channels"),
                            ("prune", prune_command,
                             "remove dead channels (or prune to a budget) and save the model")):
        cmd = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _model_arguments(cmd)
        cmd.add_argument("--checkpoint", metavar="FILE",
                         help="state dict to load first (bare, or under 'state_dict' or 'model'; "
                              "read as data, with torch.load(weights_only=True))")
        cmd.add_argument("--threshold", type=_fraction, default=0.01,
                         help="a channel is dead when |γ| < threshold · max|γ| of its layer (default 0.01)")
        if name == "plan":
            cmd.add_argument("--metric", choices=["params", "flops"], default="params",
                             help="the resource the budget counts (default params)")
            cmd.add_argument("--target", type=_budget, default=1.0,
                             help="the budget, as a multiple of the model's cost (default 1.0)")
            cmd.add_argument("--scheme", choices=["nr", "cr", "ca", "prune"], default="nr",
                             help="how the new channels connect: nr (dense), cr (no cross-connections), "
                                  "ca (cross-attention), or prune (only remove the dead); default nr")
            cmd.add_argument("--round-to", type=_count, default=1,
                             help="grow widths in multiples of this (default 1)")
        else:
            cmd.add_argument("--target", type=_fraction, default=None,
                             help="prune to this share of the model's --metric, keeping the most "
                                  "important channels (default: remove only the dead)")
            cmd.add_argument("--metric", choices=["params", "flops"], default="flops",
                             help="the resource --target counts (default flops)")
            cmd.add_argument("--importance", choices=["magnitude", "bn_scale", "random"], default="magnitude",
                             help="what ranks the channels (default magnitude: L2 of producer weights)")
            cmd.add_argument("--round-to", type=_count, default=1, help="pruned widths in multiples of this")
            cmd.add_argument("--out", metavar="FILE", required=True,
                             help="where to write the pruned model (data; load it with fxsurgeon.load)")
            cmd.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        cmd.set_defaults(run=run)
    tr = sub.add_parser("train", help="train with Neural Rejuvenation, DemP or a baseline, and plot it",
                        description="Train every --method with every seed; write metrics, results, plots "
                                    "and a checkpoint per run to --out.")
    tr.add_argument("model", nargs="?", help="model spec as in inspect (or from --config)")
    tr.add_argument("--data", help="digits, cifar10:DIR, cifar100:DIR or imagefolder:DIR (never downloaded)")
    tr.add_argument("--config", help="a JSON config, or a shipped one: paper:vgg19-cifar10, ... (its model "
                    "must be zoo:, torchvision: or timm:)")
    tr.add_argument("--num-classes", type=_count, help="the data's class count, checked against it")
    _training_arguments(tr, {}, "out/train", "paper defaults, or the --config's")
    tr.set_defaults(run=train_command)
    demo = sub.add_parser("demo", help="baseline vs NR on the digits that ship with scikit-learn",
                          description=f"Train {' and '.join(DEMO['methods'])} on {DEMO['model']} with the "
                                      f"{DEMO['data']} data, in seconds.")
    _training_arguments(demo, DEMO, "out/demo", "the demo's")
    demo.set_defaults(run=demo_command, model=None, data=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = parser().parse_args(argv)
        args.run(args)
    except (FxSurgeonError, OSError) as exc:      # OSError: a path that cannot be read or written
        print(f"fxsurgeon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:          # it may say what is left
        resume = " (continue it with --resume)" if getattr(args, "command", None) in ("train", "demo") else ""
        print(f"fxsurgeon: interrupted{f': {exc}' if str(exc) else resume}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
