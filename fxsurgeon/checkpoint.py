"""Reading user checkpoints and saving pruned models that load with ``weights_only=True``.

A pruned model is saved as data, not pickled code: the model spec it came from, the
example input shape, the surviving channels of every dimension and the new state
dict. :func:`load_pruned` rebuilds the architecture from the spec and loads the
weights, so the file never needs the unsafe pickle loader.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .errors import FxSurgeonError
from .history import record, replay, write_atomic

FORMAT = "fxsurgeon.pruned/2"


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
    """Write the pruned model atomically: its spec, input shape, surgery record and weights."""
    write_atomic({"format": FORMAT, "spec": spec, "num_classes": num_classes,
                  "input_shape": list(input_shape), "surgery": record(surgery),
                  "state_dict": surgery.module.state_dict()}, path)


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by ``fxsurgeon prune`` (or :func:`save_pruned`), in eval mode."""
    from . import analyze
    from .models import load_model

    data = read(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FxSurgeonError(f"{str(path)!r} is not a pruned model saved by fxsurgeon")
    model, _ = load_model(data["spec"], data.get("num_classes"))
    graph = analyze(model.eval(), torch.randn(data["input_shape"]))
    try:
        module = replay(graph, data["surgery"]).module
    except FxSurgeonError as err:
        raise FxSurgeonError(f"{str(path)!r} does not fit {data['spec']}: {err}") from None
    module.load_state_dict(data["state_dict"])
    return module.eval()
