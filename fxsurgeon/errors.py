"""Errors fxsurgeon raises on bad input, each naming its cause."""


class FxSurgeonError(Exception):
    """Base class of every error fxsurgeon raises on purpose."""


class UntraceableModelError(FxSurgeonError):
    """torch.fx could not trace the model; the message names the module and line."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (torch's load_state_dict errors span several)."""
    return " ".join(str(exc).split())
