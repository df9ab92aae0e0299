"""Errors fxsurgeon raises on bad input, each naming its cause."""
import math


class FxSurgeonError(Exception):
    """Base class of every error fxsurgeon raises on purpose."""


class UntraceableModelError(FxSurgeonError):
    """torch.fx could not trace the model; the message names the module and line."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (torch's load_state_dict errors span several)."""
    return " ".join(str(exc).split())


def require(name: str, value, test, wanted: str) -> None:
    """Raise :class:`FxSurgeonError` unless ``value`` is a finite number that passes ``test``."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (finite and test(value)):
        raise FxSurgeonError(f"{name} must be {wanted}, got {value!r}")
