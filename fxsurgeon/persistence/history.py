"""A surgery as plain data, and rebuilding its network from the model it started from.

Checkpoints store this record instead of pickled modules, so they load with
``torch.load(weights_only=True)``: the architecture is the original model's, replayed
through each recorded surgery; the weights come from the saved state dict.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..analysis.graph import ChannelGraph
from ..analysis.report import human
from ..errors import FxSurgeonError, writing
from ..layers.schemes import scheme_of
from ..planning.planner import cost_of, plan
from ..surgery.folding import restore_fold
from ..surgery.forms import FORMS
from ..surgery.rewriter import Surgery, rewrite
from ..surgery.streams import streamed
from .fileformat import problem


def record(surgery: Surgery, seed: int = 0) -> dict:
    """What it takes to rebuild ``surgery.module`` from the graph it was made from."""
    p = surgery.plan
    return {"scheme": surgery.scheme, "metric": p.metric, "alpha": p.alpha, "round_to": p.round_to,
            "rounding": p.rounding, "seed": seed,
            "survivors": {n: torch.as_tensor(d.survivors, dtype=torch.int64)
                          for n, d in p.dims.items() if not d.pinned},
            "widths": {n: d.new_width for n, d in p.dims.items() if not d.pinned},
            "folds": dict(surgery.folds),
            # read off the layers: set_forms may have changed them since the rewrite
            "forms": {n: f for n in surgery.partitioned
                      if (f := surgery.module.get_submodule(n).form) != "split"}}


def replay(graph: ChannelGraph, rec: dict, most: int | None = None) -> Surgery:
    """The surgery ``rec`` describes, redone on ``graph``: its module has the recorded
    architecture, with weights still to be loaded. ``most`` (for a record read from a
    file) is the most parameters the new network, and elements any of its folds, may
    have: every size is checked against it before anything is built."""
    widths = {d.name: d.width for d in graph.free_dims}
    alive = {}
    for name, kept in rec["survivors"].items():
        if name not in widths:
            raise FxSurgeonError(f"the recorded surgery was made on another architecture: "
                                 f"no free dimension {name!r}")
        alive[name] = _alive(name, kept, widths[name])
    if not scheme_of(rec["scheme"]).grows:
        p = plan(graph, alive, metric=rec["metric"], target=None, scheme="prune")
    else:
        # files written before widths were rounded have no round_to: they grew by one channel;
        # before they were rounded to the nearest multiple, no rounding: they rounded down
        p = plan(graph, alive, metric=rec["metric"], scheme=rec["scheme"], alpha=rec["alpha"],
                 round_to=rec.get("round_to", 1), rounding=rec.get("rounding", "down"))
    recorded = rec.get("widths", {})        # none in files from before in-place plans and spent rounding
    if not isinstance(recorded, dict):
        raise FxSurgeonError(f"the recorded widths are a {type(recorded).__name__}, not a dict")
    for name, width in recorded.items():
        _set_width(p.dims, name, width, widths)
    if most is not None:
        params = cost_of(p, graph)
        if params > most:
            raise FxSurgeonError(f"its surgery would build a network of {human(params)} parameters, more "
                                 f"than the {human(most)} that the model and the file justify")
    for node, spec in rec["folds"].items():
        _check_fold(node, spec, most)
    surgery = rewrite(graph, p, scheme=rec["scheme"], seed=rec["seed"], fold=False)
    for node, spec in rec["folds"].items():
        restore_fold(surgery.module, node, spec)
        surgery.folds[node] = spec
    _set_forms(surgery, rec.get("forms", {}))       # none in files from before the dense form
    surgery.module.recompile()
    if surgery.partitioned:
        surgery.module = streamed(surgery.module, graph.example_inputs)
    return surgery


def _set_forms(surgery: Surgery, forms) -> None:
    """Put the replayed network's partitioned layers in the recorded forms, checked first."""
    found = problem(forms, dict[str, str], "the recorded forms")
    if found:
        raise FxSurgeonError(found)
    for name, form in forms.items():
        if name not in surgery.forms or form not in FORMS[:2]:
            raise FxSurgeonError(f"the recorded surgery puts {name!r:.80} in the form {form!r:.20}: the "
                                 f"replayed network has no such partitioned layer, or no such form")
        surgery.module.get_submodule(name).form = surgery.forms[name] = form


def _alive(name: str, kept: torch.Tensor, width: int) -> np.ndarray:
    """The alive mask of the recorded survivors ``kept`` of the dimension ``name``, checked
    before it is read: at most ``width`` positions (int64, one axis), increasing, within it."""
    if kept.dtype != torch.int64 or kept.dim() != 1 or len(kept) > width:
        raise FxSurgeonError(f"the recorded survivors of {name!r} are {kept.dtype} shaped "
                             f"{tuple(kept.shape)}, not at most {width} positions (int64, one axis)")
    at = kept.numpy()
    if len(at) and (at[0] < 0 or at[-1] >= width or (np.diff(at) <= 0).any()):
        raise FxSurgeonError(f"the recorded survivors of {name!r} are not increasing positions in its "
                             f"width {width}")
    mask = np.zeros(width, bool)
    mask[at] = True
    return mask


#: the shapes each kind of fold records (:func:`~fxsurgeon.surgery.folding.restore_fold` builds them)
_FOLD_SHAPES = {"constant": ("shape",), "map": ("shape", "weight")}


def _check_fold(node: str, spec: dict, most: int | None) -> None:
    """Raise unless the recorded fold ``spec`` is of a known kind, with shapes of whole
    numbers of at most ``most`` elements."""
    keys = _FOLD_SHAPES.get(spec["kind"])
    if keys is None:
        raise FxSurgeonError(f"the fold at {node} is of the unknown kind {spec['kind']!r}")
    for key in keys:
        shape = spec.get(key)
        if problem(shape, list[int]) or min(shape, default=0) < 0 or \
                most is not None and math.prod(shape) > most:
            limit = "" if most is None else f" of at most {most} elements"
            raise FxSurgeonError(f"the fold at {node} has the {key} {shape!r:.60}: not a shape{limit}")


#: a recorded width above this many times the dimension's (and the α a plan allows) is refused
MAX_GROWTH = 100


def _set_width(dims: dict, name: str, width, original: dict[str, int]) -> None:
    """Give the replayed plan the recorded width of ``name``, checked before it is used."""
    dp = dims.get(name)
    if dp is None or dp.pinned:
        raise FxSurgeonError(f"the recorded surgery was made on another architecture: "
                             f"no free dimension {name!r}")
    if not isinstance(width, int) or isinstance(width, bool) or \
            not len(dp.survivors) <= width <= MAX_GROWTH * max(original[name], 1):
        raise FxSurgeonError(f"the recorded width of {name!r} is {width!r}: not a whole number between its "
                             f"{len(dp.survivors)} survivors and {MAX_GROWTH}x its width {original[name]}")
    if width != dp.new_width and not dp.grows:
        raise FxSurgeonError(f"the recorded width of {name!r} is {width}, but it cannot grow here")
    dp.new_width = width


#: the name of a temporary file :func:`write_atomic` makes (tempfile's 8-character suffix)
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}")


def umask() -> int:
    """The process's umask. Reading it means setting it: for that instant it is 0o077, so
    that a file another thread makes meanwhile is only ever more private."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_atomic(data, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file renamed into place: never a half-written file; a
    full disk is a :class:`NoSpaceError` that leaves the file as it was. The file gets the
    permissions the umask gives a new file (not the temporary's 0600)."""
    target = Path(path)
    with writing(target, "the file there is left as it was" if target.exists() else ""):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.fchmod(fd, 0o666 & ~umask())
        try:
            with open(fd, "wb", buffering=0) as f:       # unbuffered: torch.save raises the OS's error
                torch.save(data, f)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
