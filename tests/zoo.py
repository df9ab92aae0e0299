"""The torchvision classification zoo for sweeps: CI runs a representative subset, the
rest is marked slow (``pytest --full`` runs it)."""
import pytest
import torchvision

ALL = torchvision.models.list_models(module=torchvision.models)
SUBSET = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
          "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t", "squeezenet1_0"]


def sweep(subset=SUBSET) -> list:
    """Every model as a pytest param; those outside ``subset`` are marked slow."""
    return [pytest.param(n, marks=() if n in subset else pytest.mark.slow) for n in ALL]
