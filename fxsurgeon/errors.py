"""Errors fxsurgeon raises on bad input, each naming its cause."""


class FxSurgeonError(Exception):
    """Base class of every error fxsurgeon raises on purpose."""


class UntraceableModelError(FxSurgeonError):
    """torch.fx could not trace the model; the message names the module and line."""
