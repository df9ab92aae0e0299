"""What the trainer callbacks share: the method (:class:`~fxsurgeon.NeuralRejuvenation` or
:class:`~fxsurgeon.DemP`) built on the network that an attribute of the trainer's model holds,
and its :class:`~fxsurgeon.SurgicalModel` put in that attribute, so that the model the trainer
calls runs the current network after every surgery."""
from __future__ import annotations

import torch
from torch import nn

from ..analysis.tracing import as_tuple
from ..errors import FxSurgeonError
from ..training.base import SurgicalTraining


class TrainerSurgery:
    """The method ``method`` (a :class:`~fxsurgeon.training.base.SurgicalTraining` class) with
    its ``options``, to be built on the network at ``attribute`` (a dotted path of submodules:
    ``"net"``, ``"backbone.body"``) of the trainer's model; ``example_inputs`` are the network's
    positional inputs, moved to its device."""

    def __init__(self, method: type[SurgicalTraining], example_inputs, attribute: str, options: dict):
        if not (isinstance(method, type) and issubclass(method, SurgicalTraining)):
            raise FxSurgeonError(f"method must be fxsurgeon.NeuralRejuvenation or fxsurgeon.DemP, "
                                 f"not {method!r}")
        self.method, self.example_inputs, self.attribute = method, example_inputs, attribute
        self.options = options
        #: the method (a NeuralRejuvenation or DemP) once the trainer has started, else None
        self.wrapper: SurgicalTraining | None = None

    def network(self, model: nn.Module) -> nn.Module:
        """The module at :attr:`attribute` of ``model``."""
        try:
            return model.get_submodule(self.attribute)
        except AttributeError:
            raise FxSurgeonError(f"the trainer's model ({type(model).__name__}) has no module "
                                 f"{self.attribute!r}: name the attribute that holds the network") from None

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Build the method on the network at :attr:`attribute` of ``model`` and on ``optimizer``,
        and put its :class:`~fxsurgeon.SurgicalModel` at that attribute."""
        if self.wrapper is not None:
            raise FxSurgeonError(f"this callback has run its {self.method.__name__} already: give each "
                                 f"trainer (each fit) a callback of its own")
        network = self.network(model)
        first = next(network.parameters(), None)
        example = tuple(x.to(first.device) if isinstance(x, torch.Tensor) and first is not None else x
                        for x in as_tuple(self.example_inputs))
        self.wrapper = self.method(network, example, optimizer, **self.options)
        parent, _, name = self.attribute.rpartition(".")
        setattr(model.get_submodule(parent), name, self.wrapper.model)
