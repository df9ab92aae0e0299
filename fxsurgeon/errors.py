"""Errors fxsurgeon raises on bad input, each naming its cause."""
import math
import numbers


class FxSurgeonError(Exception):
    """Base class of every error fxsurgeon raises on purpose."""


class UntraceableModelError(FxSurgeonError):
    """torch.fx could not trace the model; the message names the module and line."""


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
