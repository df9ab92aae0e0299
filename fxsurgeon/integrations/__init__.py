"""Neural Rejuvenation and DemP inside trainers that step the optimizer themselves.

:mod:`.lightning` is a callback for PyTorch Lightning's ``Trainer``, :mod:`.huggingface` one for
HuggingFace's ``transformers.Trainer``; :mod:`.base` is what they share. Each module imports its
trainer when it is imported; ``import fxsurgeon`` imports none of them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import FxSurgeonError


def requires(module: str, what: str, install: str) -> ModuleType:
    """``module`` imported, or :class:`FxSurgeonError` saying that ``what`` needs it and how to
    ``install`` it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise FxSurgeonError(f"{what} needs {module}, which does not import here ({err}): "
                             f"{install}") from None
