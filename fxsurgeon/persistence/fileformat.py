"""What fxsurgeon checks in a file it reads, before it builds anything from it.

Files are read with the weights-only loader, so they hold data only; this module checks
that data: the format tag and its version (:func:`check_format`), the type of every
field against a schema (:func:`check_fields`), and the architecture the file was made
for (:func:`fingerprint`, :func:`first_difference`).

A schema maps each required key to a type: a class, ``X | None``, ``list[T]``,
``dict[K, V]``, ``Any``, or a nested schema (a dict). ``float`` takes any finite number;
``int`` takes integers, not booleans. Keys a schema does not name are ignored.
"""
from __future__ import annotations

import math
import os
import stat
import types
import typing
from dataclasses import fields
from typing import Any

from ..errors import FxSurgeonError

#: what each kind of file fxsurgeon writes is, for messages
KINDS = {"fxsurgeon.nr": "a NeuralRejuvenation checkpoint", "fxsurgeon.training.demp": "a DemP checkpoint",
         "fxsurgeon.pruned": "a model saved by fxsurgeon.save"}


def regular_size(path: str | os.PathLike, what: str) -> int:
    """The size of the regular file ``path`` (a ``what``, for messages); raises for anything
    else (a folder, FIFO, socket or device: reading one could block or never end) before
    it is opened."""
    mode = os.stat(path)
    if not stat.S_ISREG(mode.st_mode):
        raise FxSurgeonError(f"{what} {str(path)!r} is not a regular file (a folder, FIFO, socket or "
                             f"device): fxsurgeon reads only files")
    return mode.st_size


def _split(tag: str) -> tuple[str, int | None]:
    kind, _, version = tag.rpartition("/")
    return kind, int(version) if version.isdigit() else None


def check_format(data, expected: str) -> None:
    """Raise unless ``data`` is a dict whose ``format`` is ``expected`` ("kind/version");
    the error says what the file is instead, or that a newer (or older) fxsurgeon wrote it."""
    found = data.get("format") if isinstance(data, dict) else None
    if found == expected:
        return
    kind, version = _split(expected)
    found_kind, found_version = _split(found) if isinstance(found, str) else (None, None)
    if found_kind != kind or found_version is None:
        other = KINDS.get(found_kind)
        raise FxSurgeonError(f"not {KINDS[kind]}" + (f": it is {other}" if other else ""))
    if found_version > version:
        raise FxSurgeonError(f"written by a newer fxsurgeon (format {found}; this one reads "
                             f"{expected}): upgrade fxsurgeon to read it")
    raise FxSurgeonError(f"written by an older fxsurgeon (format {found}; this one reads {expected})")


def _describe(hint) -> str:
    return "a dict" if isinstance(hint, dict) else getattr(hint, "__name__", None) or str(hint)


def problem(value, hint, where: str = "") -> str | None:
    """The first way ``value`` departs from the type or schema ``hint``, or None."""
    name = where or "the file"
    if isinstance(hint, dict):
        if not isinstance(value, dict):
            return f"{name} is a {type(value).__name__}, not a dict"
        for key, sub in hint.items():
            if key not in value:
                return f"{name} has no {key!r}"
            found = problem(value[key], sub, f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if any(problem(value, a, where) is None for a in args):
            return None
        return problem(value, args[0], where)         # what ``X | None`` wanted: an X
    if origin is list:
        if not isinstance(value, list):
            return f"{name} is a {type(value).__name__}, not a list"
        return next(filter(None, (problem(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{name} is a {type(value).__name__}, not a dict"
        return next(filter(None, (problem(k, args[0], f"a key of {name}") or
                                  problem(v, args[1], f"{where}[{k!r}]") for k, v in value.items())), None)
    if hint is Any:
        return None
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return None if ok else f"{name} is {value!r:.40}, not {_describe(hint)}"


def check_fields(data, schema: dict) -> None:
    """Raise :class:`FxSurgeonError` naming the first field of ``data`` that ``schema``
    does not accept."""
    found = problem(data, schema)
    if found:
        raise FxSurgeonError(found)


def schema_of(cls: type) -> dict:
    """The schema of a dataclass's stored fields (all but ``surgery``, which is never saved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name != "surgery"}


def build(cls: type, data: dict):
    """An instance of the dataclass ``cls`` from its checked stored fields."""
    return cls(**{name: data[name] for name in schema_of(cls)})


#: the schema of :func:`fingerprint`
FINGERPRINT = {"widths": dict[str, int], "shapes": dict[str, list[int]]}


def fingerprint(graph) -> dict:
    """The architecture of a ChannelGraph's model, as a file records it: the width of
    every dimension and the shape of every parameter."""
    return {"widths": {d.name: d.width for d in graph.dims},
            "shapes": {n: list(p.shape) for n, p in graph.module.named_parameters()}}


def first_difference(saved: dict, here: dict) -> str | None:
    """The first way the architecture ``here`` differs from the one a file recorded."""
    for key, what in (("widths", "dimension"), ("shapes", "parameter")):
        old, new = saved[key], here[key]
        for name in dict.fromkeys([*old, *new]):
            if name not in new:
                return f"{what} {name!r} is in the file, not in the model"
            if name not in old:
                return f"the model's {what} {name!r} is not in the file"
            if old[name] != new[name]:
                return f"{what} {name!r} is {_size(old[name])} in the file, {_size(new[name])} in the model"
    return None


def _size(value) -> str:
    return f"shaped {tuple(value)}" if isinstance(value, list) else f"{value} wide"
