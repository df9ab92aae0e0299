"""Output paths that never destroy earlier results.

A training run writes to a folder: a new run needs it missing or empty; ``resume``
continues the run it holds (with the same settings, recorded in ``run.json``), appending
to its logs; ``overwrite`` runs into a fresh hidden sibling folder that replaces the old
one only once the new run has finished, so an interrupted or failed run leaves the old
results as they were. :func:`check_file` and :func:`check_folder` raise before any work
when a path cannot be written.

A run holds the folder's lock (:func:`locked`) while it runs, so a second run on it is
refused; it never writes through a symbolic link inside the folder (an ``--out`` that is
one is followed: it is the user's own); files and folders get the permissions the umask
gives; what killed runs left behind (temporary files, sibling folders) is removed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import FxSurgeonError
from ..persistence.history import TEMPORARY, umask

SETTINGS = "run.json"
LOCK = ".fxsurgeon.lock"


def _dead_links(path: Path, flag: str, given: Path) -> None:
    """Raise when ``path`` or a folder above it is a symbolic link that leads nowhere: to
    nothing, or round a loop (``given`` is the path named by ``flag``)."""
    for link in (path, *path.parents):
        if link.exists():
            return
        if link.is_symlink():
            where = "" if link == given else f": {str(link)!r}"
            what = "goes round in a loop" if _errno(link) == errno.ELOOP else "leads to nothing"
            raise FxSurgeonError(f"{flag} {str(given)!r}{where} is a symbolic link to "
                                 f"{os.readlink(link)!r}, which {what}")


def _errno(path: Path) -> int | None:
    """The error number of ``stat(path)``, or None when it succeeds."""
    try:
        path.stat()
    except OSError as err:
        return err.errno
    return None


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
    _dead_links(path.parent, flag, path)
    _writable_ancestor(path, flag)


def _holds(out: Path) -> bool:
    """Whether the folder ``out`` holds anything but its lock file."""
    return any(p.name != LOCK for p in out.iterdir())


def _first_link(out: Path) -> Path | None:
    """The first symbolic link inside the folder ``out`` (none is followed), if any."""
    for root, dirs, files in os.walk(out):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                return Path(root, name)
    return None


def _siblings(real: Path, kind: str) -> list[Path]:
    """The hidden sibling folders an ``overwrite`` of the folder ``real`` makes: ``new``
    (the new run) and ``old`` (the old one, on its way out)."""
    name = re.compile(re.escape(f".{real.name}.{kind}-") + r"[a-z0-9_]{8}")
    return [p for p in real.parent.iterdir() if name.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]


def _check_swap(out: Path) -> None:
    """Raise when ``out`` is missing because an ``overwrite`` was killed while swapping the
    folders: its old results are still in the ``old`` sibling."""
    real = out.resolve()
    if real.exists() or not real.parent.is_dir():
        return
    for old in _siblings(real, "old"):
        if (old / real.name).exists():
            raise FxSurgeonError(f"--out {str(out)!r} is missing because an --overwrite of it was "
                                 f"interrupted; its old results are in {str(old / real.name)!r}: move "
                                 f"them back, or remove {str(old)!r}")


def check_folder(out: str | os.PathLike, settings: dict, *, resume: bool = False,
                 overwrite: bool = False) -> None:
    """Raise unless a run with ``settings`` may write to the folder ``out``."""
    out = Path(out)
    _dead_links(out, "--out", out)
    if out.exists() and not out.is_dir():
        raise FxSurgeonError(f"--out {str(out)!r} is a file, not a folder")
    _writable_ancestor(out / SETTINGS, "--out")
    _check_swap(out)
    if (out / LOCK).is_file():
        with locked(out):       # only to refuse at once a folder another run holds
            pass
    if not out.exists() or not _holds(out):
        return
    if overwrite:
        if os.path.ismount(out):         # replacing it (os.replace) would fail once the run is done
            raise FxSurgeonError(f"--out {str(out)!r} is a mount point, which --overwrite cannot replace: "
                                 f"pass a folder inside it, or empty it first")
        return
    if not resume:
        raise FxSurgeonError(f"--out {str(out)!r} already holds results: pass --resume to continue its run, "
                             f"or --overwrite to replace it once the new run has finished")
    link = _first_link(out)
    if link:
        raise FxSurgeonError(f"--resume: {str(link)!r} is a symbolic link, and fxsurgeon never writes "
                             f"through one inside a run folder (make --out itself the link instead)")
    try:
        recorded = json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        raise FxSurgeonError(f"--out {str(out)!r} holds no run of fxsurgeon train to resume "
                             f"(no readable {SETTINGS}); --overwrite replaces it") from None
    for key in dict.fromkeys([*settings, *recorded]):
        if recorded.get(key) != settings.get(key):
            raise FxSurgeonError(f"--resume continues the run in {str(out)!r} with its settings, and its "
                                 f"{key} was {recorded.get(key)!r}, not {settings.get(key)!r}")


#: how :func:`open_file` opens for each mode
_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


def open_file(path: Path, mode: str = "w", buffering: int = -1):
    """``open(path, mode)`` for writing (``w``, ``a``, ``wb``, ``ab``), refused when ``path``
    is a symbolic link: a run never writes through one to a file outside it."""
    try:
        fd = os.open(path, _FLAGS[mode[0]] | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise FxSurgeonError(f"{str(path)!r} is a symbolic link: fxsurgeon never writes through one "
                             f"inside a run folder") from None
    return os.fdopen(fd, mode, buffering)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of the run folder ``out`` for the block: an advisory ``flock`` on its
    :data:`LOCK` file; while it is held, another run on the folder is refused at once.
    The kernel drops the lock when the process ends, however it ends (SIGKILL too), so a
    lock is never stale; the empty file stays."""
    with open_file(out / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FxSurgeonError(f"--out {str(out)!r} is in use by another run of fxsurgeon (it holds "
                                 f"{LOCK}): wait for it to end, or write elsewhere") from None
        yield


def _clean(out: Path, real: Path) -> None:
    """Remove what runs on ``out`` (``real`` once its links are followed) left when they
    were killed: the temporary files of checkpoints written atomically, and the sibling
    folders of an ``overwrite``. Only with the folder's lock held: none is a live run's."""
    for root, _, files in os.walk(out):
        for name in files:
            if TEMPORARY.fullmatch(name):
                os.unlink(os.path.join(root, name))
    for sibling in _siblings(real, "new") + _siblings(real, "old"):
        shutil.rmtree(sibling)


def _fresh(real: Path, kind: str) -> Path:
    """A new hidden sibling folder of ``real`` (see :func:`_siblings`), with the permissions
    the umask gives a folder."""
    path = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}.{kind}-"))
    path.chmod(0o777 & ~umask())
    return path


@contextmanager
def folder(out: str | os.PathLike, settings: dict, *, resume: bool = False,
           overwrite: bool = False) -> Iterator[Path]:
    """The folder a run with ``settings`` writes to (see the module docstring), locked
    while the block runs; with ``overwrite`` it replaces ``out`` when the block finishes,
    and is removed if it raises. An ``out`` that is a symbolic link stays one: the folder
    it leads to is what is replaced."""
    out = Path(out)
    check_folder(out, settings, resume=resume, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    real = out.resolve()
    with ExitStack() as held:
        held.enter_context(locked(out))
        _clean(out, real)
        replace = overwrite and _holds(out)
        target = _fresh(real, "new") if replace else out
        if replace:
            held.enter_context(locked(target))    # the new folder is locked before it becomes out
        try:
            with open_file(target / SETTINGS) as f:
                f.write(json.dumps(settings, indent=1))
            yield target
        except BaseException:
            if replace:
                shutil.rmtree(target, ignore_errors=True)
            raise
        if replace:
            old = _fresh(real, "old")
            os.replace(real, old / real.name)
            os.replace(target, real)
            shutil.rmtree(old)
