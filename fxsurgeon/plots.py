"""PNG plots of training runs (matplotlib, imported only when plotting)."""
from __future__ import annotations

from pathlib import Path

from .training import Result


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_training(results: list[Result], path: Path) -> Path:
    """Utilization, λ and test accuracy per epoch for each run, events marked (the
    paper's Figure 1)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    for res in results:
        epochs = [h["epoch"] for h in res.history]
        label = f"{res.method} (seed {res.seed})"
        for ax, key in zip(axes, ("utilization", "lambda", "accuracy"), strict=True):
            line, = ax.plot(epochs, [h[key] for h in res.history], label=label)
            for e in res.events:        # the first epoch whose steps reach the event's
                at = next(h["epoch"] for h in res.history if h["step"] >= e.step)
                ax.axvline(at, color=line.get_color(), linestyle=":", linewidth=1)
    for ax, title in zip(axes, ("utilization r = U / c", "λ (L1 on scales)", "test accuracy"), strict=True):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_widths(result: Result, path: Path) -> Path | None:
    """Per free dimension: its width before each event, the survivors and the new width."""
    if not result.events:
        return None
    plt = _pyplot()
    event = result.events[0]
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
