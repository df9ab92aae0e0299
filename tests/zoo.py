"""The torchvision classification zoo for sweeps: CI runs a representative subset, the
rest is marked slow (``pytest --full`` runs it)."""
import pytest
import torchvision

from fxsurgeon.zoo import TORCHVISION_FAMILIES

ALL = torchvision.models.list_models(module=torchvision.models)
SUBSET = TORCHVISION_FAMILIES


def sweep(subset=SUBSET) -> list:
    """Every model as a pytest param; those outside ``subset`` are marked slow."""
    return [pytest.param(n, marks=() if n in subset else pytest.mark.slow) for n in ALL]
