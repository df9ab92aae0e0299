"""Output paths that never destroy earlier results.

A training run writes to a folder: a new run needs it missing or empty; ``resume``
continues the run it holds (with the same settings, recorded in ``run.json``), appending
to its logs; ``overwrite`` runs into a fresh hidden sibling folder that replaces the old
one only once the new run has finished, so an interrupted or failed run leaves the old
results as they were. :func:`check_file` and :func:`check_folder` raise before any work
when a path cannot be written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import FxSurgeonError

SETTINGS = "run.json"


def _writable_ancestor(path: Path, flag: str) -> None:
    """Raise unless the nearest existing ancestor of ``path`` is a folder we may write in."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FxSurgeonError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FxSurgeonError(f"{flag} {str(path)!r}: cannot write in {str(parent)!r}")


def check_file(path: str | os.PathLike, flag: str, overwrite: bool = True) -> None:
    """Raise unless a file may be written at ``path`` (named ``flag`` in messages); an
    existing file counts only with ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise FxSurgeonError(f"{flag} {str(path)!r} is a folder, not a file")
    if path.exists() and not overwrite:
        raise FxSurgeonError(f"{flag} {str(path)!r} exists: pass --overwrite to replace it")
    if path.exists() and not os.access(path, os.W_OK):
        raise FxSurgeonError(f"{flag} {str(path)!r}: cannot write it")
    _writable_ancestor(path, flag)


def check_folder(out: str | os.PathLike, settings: dict, *, resume: bool = False,
                 overwrite: bool = False) -> None:
    """Raise unless a run with ``settings`` may write to the folder ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FxSurgeonError(f"--out {str(out)!r} is a file, not a folder")
    _writable_ancestor(out / SETTINGS, "--out")
    if not out.exists() or not any(out.iterdir()):
        return
    if overwrite:
        if os.path.ismount(out):         # replacing it (os.replace) would fail once the run is done
            raise FxSurgeonError(f"--out {str(out)!r} is a mount point, which --overwrite cannot replace: "
                                 f"pass a folder inside it, or empty it first")
        return
    if not resume:
        raise FxSurgeonError(f"--out {str(out)!r} already holds results: pass --resume to continue its run, "
                             f"or --overwrite to replace it once the new run has finished")
    try:
        recorded = json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        raise FxSurgeonError(f"--out {str(out)!r} holds no run of fxsurgeon train to resume "
                             f"(no readable {SETTINGS}); --overwrite replaces it") from None
    for key in dict.fromkeys([*settings, *recorded]):
        if recorded.get(key) != settings.get(key):
            raise FxSurgeonError(f"--resume continues the run in {str(out)!r} with its settings, and its "
                                 f"{key} was {recorded.get(key)!r}, not {settings.get(key)!r}")


@contextmanager
def folder(out: str | os.PathLike, settings: dict, *, resume: bool = False,
           overwrite: bool = False) -> Iterator[Path]:
    """The folder a run with ``settings`` writes to (see the module docstring); with
    ``overwrite`` it replaces ``out`` when the block finishes, and is removed if it raises."""
    out = Path(out)
    check_folder(out, settings, resume=resume, overwrite=overwrite)
    replace = overwrite and out.exists() and any(out.iterdir())
    if replace:
        target = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    else:
        target = out
        target.mkdir(parents=True, exist_ok=True)
    try:
        (target / SETTINGS).write_text(json.dumps(settings, indent=1))
        yield target
    except BaseException:
        if replace:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if replace:
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
        os.replace(target, out)
        shutil.rmtree(old)

