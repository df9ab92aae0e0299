"""Model specs for the command line: ``torchvision:NAME``, ``timm:NAME``, ``zoo:NAME``
or ``package.module:factory``. Nothing is downloaded: weights are never requested.

The first three are looked up by name in a known list (:data:`SOURCES`). The last one
imports ``package.module`` and calls ``factory``: it runs code, so fxsurgeon accepts it
only where the user typed it (the command line), never from a file it reads.
"""
from __future__ import annotations

import importlib

from torch import nn

from ..errors import FxSurgeonError

#: the kinds of spec that name a model in a known list; any other kind imports code
SOURCES = ("zoo", "torchvision", "timm")

#: input shapes that differ from the family default
_TORCHVISION_SHAPES = {"inception_v3": (1, 3, 299, 299)}


def names_code(spec: str) -> bool:
    """Whether loading ``spec`` would import and call code (``package.module:factory``)."""
    return spec.partition(":")[0] not in SOURCES


def load_model(spec: str, num_classes: int | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """The model a spec names and its default example-input shape."""
    kind, _, name = spec.partition(":")
    if not name:
        raise FxSurgeonError(f"model spec {spec!r} needs the form KIND:NAME, e.g. torchvision:resnet50, "
                             f"zoo:vgg19_cifar, timm:convnext_tiny or package.module:factory")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if kind == "torchvision":
        import torchvision
        names = torchvision.models.list_models()
        if name not in names:
            raise FxSurgeonError(f"torchvision has no model {name!r}; known: {', '.join(names)}")
        return (torchvision.models.get_model(name, weights=None, **kwargs),
                _TORCHVISION_SHAPES.get(name, (1, 3, 224, 224)))
    if kind == "timm":
        try:
            import timm
        except ImportError:
            raise FxSurgeonError("timm:MODEL specs need the timm package (pip install timm)") from None
        if not timm.is_model(name):      # also refuses hub names, which would download
            raise FxSurgeonError(f"timm has no model {name!r} (see timm.list_models())")
        model = timm.create_model(name, pretrained=False, **kwargs)
        return model, (1, *model.default_cfg.get("input_size", (3, 224, 224)))
    if kind == "zoo":
        from . import MODELS, SHAPES
        if name not in MODELS:
            raise FxSurgeonError(f"fxsurgeon.zoo has no model {name!r}; known: {', '.join(MODELS)}")
        return MODELS[name](**kwargs), SHAPES.get(name, (1, 3, 32, 32))
    try:
        factory = getattr(importlib.import_module(kind), name)
    except (ImportError, AttributeError) as exc:
        raise FxSurgeonError(f"cannot load factory {name!r} from module {kind!r}: {exc}") from exc
    if not callable(factory):
        raise FxSurgeonError(f"{spec} is a {type(factory).__name__}, not a model factory")
    try:
        model = factory(**kwargs)
    except TypeError as exc:            # the call does not fit the factory's signature
        call = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise FxSurgeonError(f"calling {spec}({call}) failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise FxSurgeonError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model, (1, 3, 224, 224)
