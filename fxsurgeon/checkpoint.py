"""Reading user checkpoints and saving pruned models that load with ``weights_only=True``.

A pruned model is saved as data, not pickled code: the model spec it came from, the
example input shape, the surviving channels of every dimension and the new state
dict. :func:`load_pruned` rebuilds the architecture from the spec and loads the
weights, so the file never needs the unsafe pickle loader.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import FxSurgeonError

FORMAT = "fxsurgeon.pruned/1"


def read(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``, with an error that names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FxSurgeonError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise FxSurgeonError(f"cannot read checkpoint {str(path)!r} with the weights-only "
                             f"loader (corrupt, or not a torch file): {exc}") from exc


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict (bare, or under ``state_dict``/``model``) into ``model``."""
    data = read(path)
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
    if not isinstance(data, dict):
        raise FxSurgeonError(f"checkpoint {str(path)!r} holds a {type(data).__name__}, not a state dict")
    result = model.load_state_dict(data, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FxSurgeonError(
            f"checkpoint {str(path)!r} does not match the model: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")


def save_pruned(path: str | os.PathLike, spec: str, input_shape: tuple, surgery,
                num_classes: int | None = None) -> None:
    """Write the pruned model atomically (a temporary file renamed into place)."""
    data = {"format": FORMAT, "spec": spec, "num_classes": num_classes, "input_shape": list(input_shape),
            "survivors": {name: torch.as_tensor(d.survivors, dtype=torch.int64)
                          for name, d in surgery.plan.dims.items() if not d.pinned},
            "constants": dict(surgery.constants),
            "state_dict": surgery.module.state_dict()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by ``fxsurgeon prune`` (or :func:`save_pruned`), in eval mode."""
    from . import analyze, plan, rewrite
    from .models import load_model
    from .rewriter import add_constant

    data = read(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FxSurgeonError(f"{str(path)!r} is not a pruned model saved by fxsurgeon")
    model, _ = load_model(data["spec"], data.get("num_classes"))
    graph = analyze(model.eval(), torch.randn(data["input_shape"]))
    widths = {d.name: d.width for d in graph.free_dims}
    alive = {}
    for name, kept in data["survivors"].items():
        if name not in widths:
            raise FxSurgeonError(f"{str(path)!r} was pruned from another architecture: "
                                 f"no free dimension {name!r} in {data['spec']}")
        alive[name] = np.isin(np.arange(widths[name]), kept.numpy())
    module = rewrite(graph, plan(graph, alive, target=None, scheme="prune"), fold=False).module
    for target, name in data["constants"].items():
        add_constant(module, target, name, torch.zeros_like(data["state_dict"][name]))
    module.recompile()
    module.load_state_dict(data["state_dict"])
    return module.eval()
