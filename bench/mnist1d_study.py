"""Does Neural Rejuvenation help? A paired experiment on MNIST-1D that can tell.

MNIST-1D (Greydanus 2020; generated offline by the ``mnist1d`` package): 4,000 training
and 6,000 test sequences. Two 1-D CNNs (``fxsurgeon.zoo.cnn1d``): one misallocated on
purpose (64-64-8-8), with a hand-balanced network of about its parameters (39-39-39-39)
as the oracle, and a uniform one (32-32-32-32). Arms, paired by seed (the same
initialisation and data order), each trained the same total number of epochs:

- ``baseline``: plain training for as many epochs as NR trained (search + schedule);
- ``nr``: NR-CR at target 1.0 (the same parameters), with the paper's neural rescaling
  (``|γ| → γ0``);
- ``nr-layer``: the same, rescaling to the layer's strongest survivor (this project's);
- ``nr-norescale``: the same without rescaling;
- ``l1``: the L1 search with no event (a threshold of 1e-9, never reached), as long as
  NR's search: the control that separates NR's reallocation from its L1 phase;
- ``nr-ip``: NR without reallocation: at the event the dead channels are re-initialised
  in place, at the same widths;
- ``nr-fs``: the architecture NR found, trained from scratch;
- ``oracle``: the balanced network (skewed model only), plain training.

The verdict compares each arm with the baseline seed by seed: mean ± sd, the paired
difference, a paired t-test and a Wilcoxon signed-rank test. Settings are this project's
(the paper has no MNIST-1D): SGD (LR 0.05, momentum 0.9, weight decay 5e-4), batch 128, a
search of at most 30 epochs at constant LR (T_r 0.8, Δλ 2e-3 per epoch, one event,
``round_to=1``), then a 40-epoch cosine.

    python bench/mnist1d_study.py                       # 10 seeds, both models -> docs/mnist1d.md
    python bench/mnist1d_study.py --plot docs/img/mnist1d.png
    python bench/mnist1d_study.py --seeds 5 --models skewed --arms baseline,nr,l1,oracle
    python bench/mnist1d_study.py --smoke               # seconds: the pipeline, not the science
    python bench/mnist1d_study.py --device cuda --jobs 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fxsurgeon.experiments.data import Data, load_data  # noqa: E402
from fxsurgeon.experiments.devices import Hardware  # noqa: E402
from fxsurgeon.experiments.loop import train  # noqa: E402
from fxsurgeon.experiments.recipe import Recipe  # noqa: E402
from fxsurgeon.zoo import MODELS  # noqa: E402

ARMS = ("baseline", "nr", "nr-layer", "nr-norescale", "l1", "nr-ip", "nr-fs", "oracle")
NETWORKS = {"skewed": "mnist1d_skewed", "uniform": "mnist1d_uniform"}
#: the arms compared with each other, seed by seed (the paper's claim needs NR above the
#: L1-only control and above in-place re-initialisation)
CONTRASTS = (("nr-layer", "l1"), ("nr-layer", "nr-norescale"), ("nr-layer", "nr"), ("nr", "nr-ip"),
             ("nr-norescale", "l1"), ("nr-layer", "oracle"), ("nr-fs", "nr-layer"))
RECIPE = Recipe(epochs=40, search_epochs=30, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4,
                metric="params", target=1.0, threshold=0.8, delta_lambda=2e-3, round_to=1, rescale="paper",
                events=1)
SMOKE = {"epochs": 2, "search_epochs": 2, "threshold": 1.0, "delta_lambda": 0.5}


def _dead_quarter(network: torch.nn.Module) -> torch.nn.Module:
    """The smoke run's network: the first quarter of every convolution's channels dead for
    good (filters and scales at zero), so that NR has something to rejuvenate at once."""
    layers = list(network.modules())
    with torch.no_grad():
        for conv, norm in zip(layers, layers[1:], strict=False):
            if isinstance(conv, torch.nn.Conv1d) and isinstance(norm, torch.nn.BatchNorm1d):
                conv.weight[:conv.out_channels // 4] = 0
                norm.weight[:conv.out_channels // 4] = 0
    return network


def _data(smoke: bool) -> Data:
    data = load_data("mnist1d")
    if smoke:
        data = replace(data, train=torch.utils.data.Subset(data.train, range(256)),
                       test=torch.utils.data.Subset(data.test, range(256)))
    return data


def _run(model: str, method: str, recipe: Recipe, device: str, smoke: bool) -> dict:
    """One training run in this process; its final accuracy, epochs, parameters and events."""
    torch.set_num_threads(1)
    torch.manual_seed(recipe.seed)
    network = _dead_quarter(MODELS[model]()) if smoke else MODELS[model]()
    _, result = train(network, _data(smoke), method, recipe, progress=False, hardware=Hardware(device))
    search = next((e.step for e in result.events), None)
    return {"accuracy": result.accuracy, "epochs": result.epochs, "params": result.params,
            "events": [{"alpha": e.alpha, "widths_before": e.widths_before, "widths_alive": e.widths_alive,
                        "widths_after": e.widths_after} for e in result.events], "event_step": search}


def seed_runs(network: str, seed: int, arms: list[str], device: str, smoke: bool) -> dict:
    """Every arm of one seed, paired: NR first, then the arms whose length follows it."""
    model = NETWORKS[network]
    recipe = replace(RECIPE, seed=seed, **(SMOKE if smoke else {}))
    out = {"nr": _run(model, "nr-cr", recipe, device, smoke)}
    total = out["nr"]["epochs"]
    search = total - recipe.epochs          # the epochs NR searched before its schedule
    for arm, rescale in (("nr-layer", "layer"), ("nr-norescale", False)):
        if arm in arms:
            out[arm] = _run(model, "nr-cr", replace(recipe, rescale=rescale), device, smoke)
    if "nr-ip" in arms:
        out["nr-ip"] = _run(model, "nr-ip", recipe, device, smoke)
    if "l1" in arms:
        out["l1"] = _run(model, "nr-cr", replace(recipe, threshold=1e-9, search_epochs=max(search, 1)),
                         device, smoke)
    if "nr-fs" in arms:
        out["nr-fs"] = _run(model, "nr-fs", recipe, device, smoke)
    plain = replace(recipe, epochs=total)
    out["baseline"] = _run(model, "baseline", plain, device, smoke)
    if "oracle" in arms and network == "skewed":
        out["oracle"] = _run("mnist1d_balanced", "baseline", plain, device, smoke)
    return {arm: out[arm] for arm in arms if arm in out}


def paired(base: list[float], other: list[float]) -> dict:
    """Mean and sd of the paired differences (points), with a t-test and Wilcoxon's test."""
    from scipy import stats
    d = [100 * (b - a) for a, b in zip(base, other, strict=True)]
    out = {"mean": statistics.mean(d), "sd": statistics.stdev(d) if len(d) > 1 else 0.0, "n": len(d)}
    if len(d) > 1 and any(d):
        out["t_p"] = float(stats.ttest_rel(other, base).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(other, base).pvalue) if len(set(d)) > 1 else None
    return out


def report(results: dict, seeds: list[int]) -> str:
    lines = ["# MNIST-1D: does Neural Rejuvenation help?", "",
             "Generated by `python bench/mnist1d_study.py`, which says what each arm is and which "
             "settings are this project's.", ""]
    for network, by_seed in results.items():
        arms = [a for a in ARMS if all(a in by_seed[s] for s in seeds)]
        lines += [f"## {network} ({NETWORKS[network]}), {len(seeds)} seeds", "",
                  "| arm | params | epochs | test accuracy (mean ± sd) | paired difference to baseline | "
                  "t-test p | Wilcoxon p |", "|---|---|---|---|---|---|---|"]
        base = [by_seed[s]["baseline"]["accuracy"] for s in seeds]
        for arm in arms:
            acc = [by_seed[s][arm]["accuracy"] for s in seeds]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            params = statistics.mean(by_seed[s][arm]["params"] for s in seeds)
            epochs = statistics.mean(by_seed[s][arm]["epochs"] for s in seeds)
            if arm == "baseline":
                diff, tp, wp = "-", "-", "-"
            else:
                p = paired(base, acc)
                diff = f"{p['mean']:+.2f} ± {p['sd']:.2f} points"
                tp = f"{p['t_p']:.3f}" if "t_p" in p else "-"
                wp = f"{p['wilcoxon_p']:.3f}" if p.get("wilcoxon_p") is not None else "-"
            lines.append(f"| {arm} | {params:,.0f} | {epochs:.1f} | {100 * statistics.mean(acc):.2f} ± "
                         f"{100 * sd:.2f} % | {diff} | {tp} | {wp} |")
        contrasts = [(a, b) for a, b in CONTRASTS if a in arms and b in arms]
        if contrasts:
            lines += ["", "Paired differences between arms (what separates reallocation from the L1 phase "
                      "and from rescaling):", "", "| arm − arm | paired difference | t-test p | Wilcoxon p | "
                      "seeds where the first is higher |", "|---|---|---|---|---|"]
            for a, b in contrasts:
                x, y = ([by_seed[s][arm]["accuracy"] for s in seeds] for arm in (a, b))
                p = paired(y, x)
                wins = sum(i > j for i, j in zip(x, y, strict=True))
                lines.append(f"| {a} − {b} | {p['mean']:+.2f} ± {p['sd']:.2f} points | "
                             f"{p.get('t_p', float('nan')):.3f} | "
                             f"{p['wilcoxon_p'] if p.get('wilcoxon_p') is not None else float('nan'):.3f} | "
                             f"{wins}/{len(seeds)} |")
        widths = [(s, by_seed[s]["nr"]["events"][0]) for s in seeds if by_seed[s]["nr"]["events"]]
        lines += ["", "NR's widths, before → alive → after the event (free dimensions):", ""]
        for s, e in widths:
            free = [k for k in e["widths_before"] if k.startswith("features")]
            lines.append(f"- seed {s}: α = {e['alpha']:.2f}; " + ", ".join(
                f"{e['widths_before'][k]} → {e['widths_alive'][k]} → {e['widths_after'][k]}" for k in free))
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, seeds: list[int], path: Path) -> None:
    """Test accuracy against parameters: every run faint, each arm's mean ± sd."""
    from fxsurgeon.experiments.plots import _pyplot
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (network, by_seed) in zip(axes[0], results.items(), strict=True):
        for i, arm in enumerate(a for a in ARMS if all(a in by_seed[s] for s in seeds)):
            params = [by_seed[s][arm]["params"] for s in seeds]
            acc = [100 * by_seed[s][arm]["accuracy"] for s in seeds]
            ax.scatter(params, acc, color=f"C{i}", alpha=0.25, s=12)
            ax.errorbar(statistics.mean(params), statistics.mean(acc),
                        yerr=statistics.stdev(acc) if len(acc) > 1 else 0, color=f"C{i}", marker="o",
                        capsize=3, label=arm)
        ax.set_title(f"{network} ({NETWORKS[network]}), {len(seeds)} seeds", fontsize="medium")
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--models", default="skewed,uniform", help="comma-separated: skewed, uniform")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from " + ", ".join(ARMS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each")
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 256 samples, 2 seeds")
    parser.add_argument("--out", default=str(ROOT / "docs" / "mnist1d.md"))
    parser.add_argument("--plot", help="also draw accuracy against parameters to this PNG")
    parser.add_argument("--from-json", help="report (and plot) the runs a saved JSON holds; trains nothing")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS) | set(args.models.split(",")) - set(NETWORKS)
    if unknown or "baseline" not in arms:
        parser.error(f"unknown arms or models {sorted(unknown)}; the arms need baseline")
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results = {n: {int(s): r for s, r in by.items()} for n, by in saved.items()}
        seeds = sorted(next(iter(results.values())))
    else:
        seeds = list(range(2 if args.smoke else args.seeds))
        results, start = {}, time.perf_counter()
        with ProcessPoolExecutor(args.jobs) as pool:
            jobs = {(n, s): pool.submit(seed_runs, n, s, arms, args.device, args.smoke)
                    for n in args.models.split(",") for s in seeds}
            for (network, seed), job in jobs.items():
                results.setdefault(network, {})[seed] = job.result()
                print(f"{network} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    text = report(results, seeds)
    print(text)
    if args.plot:
        plot(results, seeds, Path(args.plot))
    if not args.smoke:
        Path(args.out).write_text(text)
    if not args.smoke and not args.from_json:
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {n: {str(s): r for s, r in by.items()} for n, by in results.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
