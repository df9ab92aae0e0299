"""The ``fxsurgeon`` command line."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from .errors import FxSurgeonError


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} is not like 1,3,224,224") from None


def _leaf(text: str) -> type:
    module, _, name = text.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise argparse.ArgumentTypeError(f"cannot import leaf module class {text!r}") from None


def inspect(args) -> None:
    from . import analyze
    from .drawing import to_dot, write_svg
    from .models import load_model

    model, shape = load_model(args.model, args.num_classes)
    graph = analyze(model, torch.randn(args.input_shape or shape), leaf_modules=args.leaf)
    print(graph.summary())
    for path in (args.json, args.dot, args.svg):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps(graph.to_json(), indent=1))
        print(f"wrote {args.json}")
    if args.dot:
        Path(args.dot).write_text(to_dot(graph, args.only))
        print(f"wrote {args.dot}")
    if args.svg:
        write_svg(graph, args.svg, args.only)
        print(f"wrote {args.svg}")


def _planned(args):
    """The model of a spec with its checkpoint loaded, its graph, and its liveliness."""
    from . import analyze, liveliness
    from .checkpoint import load_weights
    from .models import load_model

    model, shape = load_model(args.model, args.num_classes)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    shape = args.input_shape or shape
    graph = analyze(model.eval(), torch.randn(shape))
    return model, shape, graph, liveliness(graph, args.threshold)


def plan_command(args) -> None:
    from . import plan

    _, _, graph, alive = _planned(args)
    target = None if args.scheme == "prune" else args.target
    print(plan(graph, alive, metric=args.metric, target=target, scheme=args.scheme,
               round_to=args.round_to))


def prune_command(args) -> None:
    from . import plan, rewrite, save

    _, _, graph, alive = _planned(args)
    surgery = rewrite(graph, plan(graph, alive, metric="params", target=None, scheme="prune"))
    save(graph, surgery, args.out, spec=args.model, num_classes=args.num_classes)
    before, after = graph.count("params"), sum(t.numel() for t in surgery.module.parameters())
    print(f"pruned {args.model}: {before:,} -> {after:,} parameters ({after / before:.1%}); "
          f"wrote {args.out} (load it with fxsurgeon.load)")


def _experiment(cfg: dict, args) -> None:
    """Run a config (overridden by the command line), print the table and the plots."""
    from . import experiment

    recipe = dict(cfg.get("recipe", {}))
    recipe.update({k: v for k, v in vars(args).items() if k in _RECIPE and v is not None})
    out = Path(args.out)
    methods = args.method.split(",") if args.method else cfg.get("methods", ["nr"])
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.get("seeds", [0])
    results = experiment.run(args.model or cfg["model"], args.data or cfg["data"], methods, seeds,
                             experiment.recipe_from(recipe), out, args.tensorboard, not args.quiet,
                             getattr(args, "num_classes", None))
    print(experiment.table(results))
    print(f"\nmetrics: {out / 'metrics.jsonl'}\nresults: {out / 'results.json'}")
    for path in experiment.plots(results, out):
        print(f"plot:    {path}")


def train_command(args) -> None:
    from .experiment import load_config

    cfg = load_config(args.config) if args.config else {}
    if not (args.model or cfg.get("model")) or not (args.data or cfg.get("data")):
        raise FxSurgeonError("train needs a MODEL and --data (or a --config that names them)")
    _experiment(cfg, args)


def demo_command(args) -> None:
    from .experiment import DEMO

    _experiment(DEMO, args)


def _recipe_fields() -> dict:
    from dataclasses import fields

    from .training import Recipe
    return {f.name: f for f in fields(Recipe) if f.name != "seed"}     # --seeds sets it


_RECIPE = _recipe_fields()


def _training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="comma-separated: baseline, slimming, magnitude, demp, nr, nr-cr, nr-ca")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (mean and spread in the table)")
    p.add_argument("--out", default="out/train", help="folder for metrics, results and plots")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs (OUT/tensorboard)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    recipe = p.add_argument_group("recipe (paper defaults; see docs/training.md)")
    for name, f in _RECIPE.items():
        flag = "--" + name.replace("_", "-")
        if f.default is None or isinstance(f.default, int) and not isinstance(f.default, bool):
            recipe.add_argument(flag, type=int, default=None, help=f"default {f.default}")
        elif isinstance(f.default, bool):
            recipe.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {f.default}")
        elif isinstance(f.default, float):
            recipe.add_argument(flag, type=float, default=None, help=f"default {f.default}")
        else:
            recipe.add_argument(flag, default=None, help=f"default {f.default}")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision:NAME, timm:NAME, zoo:NAME or package.module:factory")
    p.add_argument("--input-shape", type=_shape, help="example input shape, e.g. 1,3,224,224")
    p.add_argument("--num-classes", type=int, help="passed to the model factory")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxsurgeon", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="show how a model's channels are coupled and what they cost")
    _model_arguments(ins)
    ins.add_argument("--leaf", type=_leaf, action="append", default=[],
                     help="module class to keep opaque, e.g. mypkg.blocks.Attention (repeatable)")
    ins.add_argument("--json", metavar="FILE", help="write everything machine-readable")
    ins.add_argument("--dot", metavar="FILE", help="write the coupling graph as graphviz DOT")
    ins.add_argument("--svg", metavar="FILE", help="draw the coupling graph (needs graphviz)")
    ins.add_argument("--only", metavar="GLOB", help="draw only dimensions whose name matches, e.g. 'layer1*'")
    ins.set_defaults(run=inspect)
    for name, run, text in (("plan", plan_command, "plan the widths after removing dead channels"),
                            ("prune", prune_command, "remove dead channels and save the model")):
        cmd = sub.add_parser(name, help=text)
        _model_arguments(cmd)
        cmd.add_argument("--checkpoint", metavar="FILE", required=name == "prune",
                         help="state dict to load first (read with weights_only=True)")
        cmd.add_argument("--threshold", type=float, default=0.01, help="dead: |γ| < threshold·max|γ|")
        cmd.add_argument("--round-to", type=int, default=1, help="grow widths in multiples of this")
        if name == "plan":
            cmd.add_argument("--metric", choices=["params", "flops"], default="params")
            cmd.add_argument("--target", type=float, default=1.0, help="budget as a fraction of the cost")
            cmd.add_argument("--scheme", choices=["nr", "cr", "ca", "prune"], default="nr")
        else:
            cmd.add_argument("--out", metavar="FILE", required=True, help="where to write the pruned model")
        cmd.set_defaults(run=run)
    tr = sub.add_parser("train", help="train with Neural Rejuvenation, DemP or a baseline, and plot it")
    tr.add_argument("model", nargs="?", help="model spec as in inspect (or from --config)")
    tr.add_argument("--data", help="digits, cifar10:DIR, cifar100:DIR or imagefolder:DIR")
    tr.add_argument("--config", help="a JSON config, or a shipped one: paper:vgg19-cifar10, ...")
    tr.add_argument("--num-classes", type=int, help="passed to the model factory (default: the data's)")
    _training_arguments(tr)
    tr.set_defaults(run=train_command)
    demo = sub.add_parser("demo", help="baseline vs NR on the digits that ship with scikit-learn")
    demo.set_defaults(model=None, data=None)
    _training_arguments(demo)
    demo.set_defaults(run=demo_command, out="out/demo")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except FxSurgeonError as exc:
        print(f"fxsurgeon: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
