"""PNG plots of training runs (matplotlib, imported only when plotting)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..training.rejuvenation import Event
from .loop import Result
from .outdir import open_file


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` (in the format its suffix names), never through a symbolic
    link, and close it."""
    with open_file(path, "wb") as f:
        fig.savefig(f, format=path.suffix[1:] or None, dpi=120)
    _pyplot().close(fig)


#: what the training plot can show, in order: history key, axis label
PANELS = (("utilization", "utilization r = U / c"), ("lambda", "λ (regularization)"),
          ("sigma", "σ (DemP noise)"), ("sparsity", "sparsity (params removed)"),
          ("seconds", "seconds per epoch"), ("loss", "training loss"), ("accuracy", "test accuracy"))


def plot_training(results: list[Result], path: Path) -> Path:
    """Per epoch, for each run, what its history records: utilization, λ, σ, sparsity,
    time per epoch, training loss (log scale) and test accuracy; NR's events and DemP's
    prunings marked (for NR, the paper's Figure 1)."""
    plt = _pyplot()
    panels = [(k, t) for k, t in PANELS if any(k in h for r in results for h in r.history)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.3 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for i, res in enumerate(results):
        epochs = [h["epoch"] for h in res.history]
        colour = f"C{i % 10}"                # one colour per run in every panel
        for ax, (key, _) in zip(axes, panels, strict=True):
            if not any(key in h for h in res.history):
                continue
            ax.plot(epochs, [h.get(key) for h in res.history], color=colour,
                    label=f"{res.method} (seed {res.seed})")
            for e in res.events:        # the first epoch whose steps reach the event's
                at = next(h["epoch"] for h in res.history if h["step"] >= e.step)
                ax.axvline(at, color=colour, linestyle=":", linewidth=1)
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.set_ylabel(title, fontsize="small")
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].legend(fontsize="small")        # accuracy: every run has it
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_tradeoff(groups: list[list[Result]], path: Path) -> Path:
    """Final test accuracy against sparsity, drawn as the share of parameters kept on a
    log axis (sparser to the right), so 90 % and 99 % sparsity stand apart. Each group is
    one setting of one method over seeds: its runs as faint points, its mean ± standard
    deviation as an error bar; a method's settings are joined in order of sparsity."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours: dict[str, str] = {}
    by_method: dict[str, list[tuple[float, float]]] = {}
    for runs in groups:
        method = runs[0].method
        colour = colours.setdefault(method, f"C{len(colours)}")
        x = np.array([1 - r.history[-1]["sparsity"] for r in runs])
        y = np.array([100 * r.accuracy for r in runs])
        ax.scatter(x, y, s=10, alpha=0.3, color=colour)
        ax.errorbar(x.mean(), y.mean(), xerr=x.std(), yerr=y.std(ddof=1) if len(y) > 1 else 0,
                    fmt="o", color=colour, capsize=3)
        by_method.setdefault(method, []).append((x.mean(), y.mean()))
    for method, points in by_method.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, color=colours[method], label=method)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("share of parameters kept (1 - sparsity)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_widths(result: Result, path: Path) -> Path | None:
    """Per free dimension: its width before each event, the survivors and the new width."""
    events = [e for e in result.events if isinstance(e, Event)]
    if not events:
        return None
    plt = _pyplot()
    event = events[0]
    names = [n for n in event.widths_before if event.widths_alive[n] != event.widths_before[n]
             or event.widths_after[n] != event.widths_before[n]]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
    x = range(len(names))
    ax.bar([i - 0.27 for i in x], [event.widths_before[n] for n in names], 0.27, label="before")
    ax.bar(x, [event.widths_alive[n] for n in names], 0.27, label="alive")
    ax.bar([i + 0.27 for i in x], [event.widths_after[n] for n in names], 0.27, label="after")
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("channels")
    ax.set_title(f"{result.method}: widths at the event (α = {event.alpha:.3f})")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return path
