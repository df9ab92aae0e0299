"""Errors fxsurgeon raises on bad input, each naming its cause."""
import errno
import math
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager


class FxSurgeonError(Exception):
    """Base class of every error fxsurgeon raises on purpose."""


class UntraceableModelError(FxSurgeonError):
    """torch.fx could not trace the model; the message names the module and line."""


class NoSpaceError(FxSurgeonError):
    """The disk (or the quota) filled up while writing ``path``; ``kept`` says what is left."""

    def __init__(self, path: str | os.PathLike, kept: str = ""):
        self.path = path
        super().__init__(f"no space left on device writing {str(path)!r}" + (f"; {kept}" if kept else ""))


@contextmanager
def writing(path: str | os.PathLike, kept: str = "") -> Iterator[None]:
    """Raise :class:`NoSpaceError` for ``path`` where the block runs out of disk space."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise NoSpaceError(path, kept) from None


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s message on one line (torch's load_state_dict errors span several), cut
    at ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def require(name: str, value, test, wanted: str) -> None:
    """Raise :class:`FxSurgeonError` unless ``value`` is a finite number that passes ``test``."""
    finite = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (finite and test(value)):
        raise FxSurgeonError(f"{name} must be {wanted}, got {value!r}")
