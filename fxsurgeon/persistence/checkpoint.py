"""Reading user checkpoints, and saving rewritten models as data that loads weights-only.

:func:`save` writes a surgery as data, not pickled code: the example inputs' shapes, the
architecture of the model it was made on, the surviving channels of every dimension and
the new state dict. :func:`load` rebuilds the network by replaying the surgery on a fresh
instance of that model (the caller's, or one of a known source the file names) and loads
the weights. Nothing a file says is imported or called.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile

import torch
from torch import nn

from ..errors import FxSurgeonError, one_line
from ..zoo.specs import load_model, names_code
from .fileformat import FINGERPRINT, check_fields, check_format, fingerprint, first_difference, regular_size
from .history import record, replay, write_atomic

FORMAT = "fxsurgeon.pruned/3"

#: what :func:`history.record` writes, as :mod:`fileformat` checks it (each fold's own
#: fields are checked as it is rebuilt)
_FOLD = {"name": str, "kind": str, "shape": list[int]}
RECORD = {"scheme": str, "metric": str, "alpha": float, "seed": int,
          "survivors": dict[str, torch.Tensor], "folds": dict[str, _FOLD]}
_INPUT = {"shape": list[int], "dtype": str}
_SCHEMA = {"spec": str | None, "num_classes": int | None, "inputs": list[_INPUT],
           "architecture": FINGERPRINT, "surgery": RECORD, "state_dict": dict[str, torch.Tensor]}
_DTYPES = {str(t): t for t in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool,
                                torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}
_MAX_INPUT = 2 ** 26        # elements of the example inputs together: refuse absurd shapes a file names
#: the most classes a file may name for a model it builds (ImageNet-21k has 21,843)
MAX_CLASSES = 100_000

#: what rebuilding a network from a file's data raises when the data do not fit
MISFIT = (FxSurgeonError, RuntimeError, ValueError, KeyError, TypeError, IndexError)


def read(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``, with an error that names the file. Only a
    regular file is opened (a FIFO or a device could block or never end); a file in torch's
    zip format must declare at most :data:`MAX_INFLATION` times its size (a zip bomb is
    refused before anything is inflated) and pass the checksums of its zip entries: a
    flipped byte is an error, never silently different weights."""
    try:
        size = regular_size(path, "checkpoint")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                declared = sum(entry.file_size for entry in archive.infolist())
                if declared > MAX_INFLATION * size + 2 ** 20:
                    raise FxSurgeonError(f"checkpoint {str(path)!r} would inflate its {size:,} bytes to "
                                         f"{declared:,}: not a file torch.save writes")
                damaged = archive.testzip()
            if damaged is not None:
                raise FxSurgeonError(f"checkpoint {str(path)!r} is damaged: {damaged} fails its checksum")
        with warnings.catch_warnings():      # a stranger's pickle protocol: the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FxSurgeonError:
        raise
    except FileNotFoundError:
        raise FxSurgeonError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise FxSurgeonError(f"cannot read checkpoint {str(path)!r} as data: it is corrupt, not a torch "
                             f"file, or holds objects other than tensors and plain containers, which "
                             f"fxsurgeon refuses: it reads files with torch.load(weights_only=True) and "
                             f"never runs code from them ({_cause(exc)})") from None


#: what a zip file may declare its entries inflate to, in times its size (plus a MiB):
#: torch.save stores them uncompressed; a recompressed checkpoint inflates a few times
MAX_INFLATION = 16


def stored(data) -> int:
    """The elements that the tensors anywhere in ``data`` (nested dicts and lists) hold, each
    storage counted once, in its tensors' element size: the most parameters a file can
    justify building (bytes overstated it 4 to 8 times). Raises for a tensor that claims
    more elements than its storage holds (stride 0: it would grow when copied)."""
    seen, storages, todo = set(), {}, [data]
    while todo:
        value = todo.pop()
        if isinstance(value, (dict, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            todo.extend(value.values() if isinstance(value, dict) else value)
        elif isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if value.numel() * value.element_size() > storage.nbytes():
                raise FxSurgeonError(f"it holds a tensor shaped {tuple(value.shape)} on a storage of "
                                     f"{storage.nbytes()} bytes: not one torch.save writes from a module")
            storages[storage.data_ptr()] = storage.nbytes() // max(value.element_size(), 1)
    return sum(storages.values())


def _cause(exc: Exception) -> str:
    """The first sentence of what torch.load says failed, without its advice to load with
    weights_only=False (it wraps the unpickler's own error, kept as the context)."""
    inner = exc.__context__ if isinstance(exc, pickle.UnpicklingError) and exc.__context__ else exc
    text = str(inner).partition("WeightsUnpickler error:")
    line = next((line.strip() for line in (text[2] or text[0]).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {_SENTENCE_END.split(line)[0]}"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict (bare, or under ``state_dict``/``model``) into ``model``."""
    data = read(path)
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
    if not isinstance(data, dict):
        raise FxSurgeonError(f"checkpoint {str(path)!r} holds a {type(data).__name__}, not a state dict")
    try:
        result = model.load_state_dict(data, strict=False)
    except RuntimeError as err:          # tensors of other shapes
        raise FxSurgeonError(f"checkpoint {str(path)!r} does not match the model: {one_line(err)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise FxSurgeonError(
            f"checkpoint {str(path)!r} does not match the model: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    try:
        check_finite(model)
    except FxSurgeonError as err:
        raise FxSurgeonError(f"checkpoint {str(path)!r}: {err}") from None


#: what each kind of tensor must hold to be read back: NaN nowhere, ±inf only in buffers
#: (attention masks hold -inf); whatever else is a diverged run, refused before it is used
FINITE = {"parameter": torch.isfinite, "buffer": lambda t: ~torch.isnan(t), "optimizer state": torch.isfinite}


def check_finite(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Raise :class:`FxSurgeonError` naming the first floating tensor of ``module`` (or of
    ``optimizer``'s per-parameter state) that :data:`FINITE` does not accept."""
    names = {p: n for n, p in module.named_parameters()}
    tensors = [("parameter", n, p) for n, p in module.named_parameters()] + \
        [("buffer", n, b) for n, b in module.named_buffers()]
    if optimizer is not None:
        tensors += [("optimizer state", f"{key} of {names.get(p, 'a parameter')}", value)
                    for p, state in optimizer.state.items() for key, value in state.items()
                    if isinstance(value, torch.Tensor)]
    for kind, name, t in tensors:
        if t.is_floating_point() and not bool(FINITE[kind](t.detach()).all()):
            what = "NaN" if bool(t.isnan().any()) else "infinity"
            raise FxSurgeonError(f"its {kind} {name!r} holds {what}: a run that diverged?")


def save(graph, surgery, path: str | os.PathLike, *, spec: str | None = None,
         num_classes: int | None = None) -> None:
    """Write ``surgery`` (a :func:`~fxsurgeon.rewrite` of ``graph``) to ``path``, atomically,
    as data that :func:`load` turns back into ``surgery.module``. ``spec`` (``zoo:NAME``,
    ``torchvision:NAME``, ``timm:NAME``) and ``num_classes`` name the model, so that
    ``load(path)`` can build it; without them, pass the model to :func:`load`."""
    tensors = [a for a in graph.example_inputs if isinstance(a, torch.Tensor)]
    if len(tensors) != len(graph.example_inputs):
        raise FxSurgeonError("save() records example inputs that are tensors only")
    write_atomic({"format": FORMAT, "spec": spec, "num_classes": num_classes,
                  "inputs": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in tensors],
                  "architecture": fingerprint(graph), "surgery": record(surgery),
                  "state_dict": surgery.module.state_dict()}, path)


def load(path: str | os.PathLike, model: nn.Module | None = None, **analyze_kwargs) -> nn.Module:
    """The network a file written by :func:`save` (or ``fxsurgeon prune``) holds, in eval mode.

    ``model`` is a fresh instance of the model the surgery was made on (its weights do
    not matter), analysed with ``analyze_kwargs`` (``leaf_modules``, ...) as it was then.
    Without it, the model the file names is built, if it comes from a known source
    (``zoo:``, ``torchvision:``, ``timm:``); a file never makes fxsurgeon import code.
    """
    from ..analysis.graph import analyze

    where = str(path)
    data = read(path)
    try:
        check_format(data, FORMAT)
        check_fields(data, _SCHEMA)
        held = stored(data)
        inputs = _examples(data["inputs"])
        graph = analyze(model if model is not None else _named_model(data, where), inputs, **analyze_kwargs)
        difference = first_difference(data["architecture"], fingerprint(graph))
        if difference:
            raise FxSurgeonError(f"it was saved from another architecture than this model's: {difference}")
        return _rebuilt(graph, data, max(graph.count("params"), held)).eval()
    except FxSurgeonError as err:
        raise FxSurgeonError(f"cannot load {where!r}: {err}") from None


def _rebuilt(graph, data: dict, most: int) -> nn.Module:
    """The recorded surgery replayed on ``graph`` (a network of at most ``most``
    parameters), with the saved weights, all finite."""
    try:
        module = replay(graph, data["surgery"], most).module
        module.load_state_dict(data["state_dict"])
    except MISFIT as err:
        raise FxSurgeonError(f"it is damaged: its surgery does not fit its model: {one_line(err)}") from None
    check_finite(module)
    return module


def _named_model(data: dict, where: str) -> nn.Module:
    """The model a file names, if it names one of a known source."""
    spec, num_classes = data["spec"], data["num_classes"]
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise FxSurgeonError(f"it names {num_classes} classes: not from 1 to {MAX_CLASSES:,}")
    rows = {len(t) for t in data["state_dict"].values() if t.dim()}
    if num_classes is not None and num_classes not in rows:
        raise FxSurgeonError(f"it names {num_classes} classes, and no tensor it holds has {num_classes} "
                             f"rows, as its model's classifier would")
    if spec is None:
        raise FxSurgeonError(f"it does not name its model (it was saved from Python): "
                             f"pass it, fxsurgeon.load({where!r}, model=YourModel())")
    if names_code(spec):
        module, _, factory = spec.partition(":")
        raise FxSurgeonError(f"it was made from {spec!r}, and fxsurgeon never imports code a file names: "
                             f"build the model and pass it, fxsurgeon.load({where!r}, "
                             f"model={module}.{factory}())")
    return load_model(spec, num_classes)[0]


def _examples(specs: list[dict]) -> list[torch.Tensor]:
    """Example inputs of the recorded shapes and dtypes, of at most :data:`_MAX_INPUT`
    elements together."""
    for spec in specs:
        if spec["dtype"] not in _DTYPES or min(spec["shape"], default=1) < 1:
            raise FxSurgeonError(f"the example input {spec} is not a tensor fxsurgeon makes")
    if sum(math.prod(spec["shape"]) for spec in specs) > _MAX_INPUT:
        raise FxSurgeonError(f"its example inputs have more than {_MAX_INPUT:,} elements together")
    return [torch.randn(s["shape"], dtype=_DTYPES[s["dtype"]]) if _DTYPES[s["dtype"]].is_floating_point
            else torch.zeros(s["shape"], dtype=_DTYPES[s["dtype"]]) for s in specs]
