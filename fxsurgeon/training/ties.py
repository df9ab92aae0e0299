"""Parameters the wrapped network shares with modules outside it.

A surgery builds a new network with new parameters, so a module outside the wrapped one
that holds one of its parameters (a language model's head tied to the embedding of the
wrapped body, a teacher sharing a layer) would keep the old tensor and silently stop
being tied. :func:`outside_ties` finds those holders once, when a method is built;
:func:`refuse_resizable` refuses a tie a surgery may resize; :func:`retie` points each
holder at the new parameter after every surgery (:func:`check_retie` first refuses one
that would resize it), so the tie is kept.
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

from torch import nn

from ..errors import FxSurgeonError


@dataclass(frozen=True)
class Tie:
    """Parameter ``name`` of the wrapped network is also ``holder``'s parameter ``leaf``
    (``holder`` a module outside it, held weakly; ``owner`` says which, in words)."""

    name: str
    holder: weakref.ref
    leaf: str
    owner: str

    def __str__(self) -> str:
        return f"{self.name} (also the {self.leaf} of {self.owner} outside the wrapped model)"


def outside_ties(network: nn.Module, *inside: nn.Module) -> list[Tie]:
    """The parameters of ``network`` that a live module outside ``network`` and ``inside``
    holds too."""
    names = {}
    for name, p in network.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    own = {id(m) for root in (network, *inside) for m in root.modules()}

    def holders() -> list[Tie]:
        return [Tie(names[id(p)], weakref.ref(m), leaf, f"a {type(m).__name__}")
                for m in gc.get_objects() if issubclass(type(m), nn.Module) and id(m) not in own
                for leaf, p in m._parameters.items() if p is not None and id(p) in names]

    ties = holders()
    if ties:                # modules a trace left behind in reference cycles are not holders
        gc.collect()
        ties = holders()
    return sorted(ties, key=lambda t: (t.name, t.leaf))


def refuse_resizable(ties: list[Tie], graph, fixed: set[str]) -> None:
    """Refuse ties to a parameter that some free dimension outside ``fixed`` may resize: the
    module outside could not follow the new width."""
    for tie in ties:
        dims = sorted({d.name for d in graph.free_dims if d.name not in fixed
                       for m in d.members if m.tensor == tie.name})
        if dims:
            raise FxSurgeonError(
                f"parameter {tie} may change its width along {', '.join(dims)} at a surgery, which "
                f"the module outside would not follow: wrap a module that holds both, or untie it "
                f"(NeuralRejuvenation can also keep them at their width: fixed={dims})")


def held(ties: list[Tie], network: nn.Module) -> list[tuple[Tie, nn.Module]]:
    """The ties whose holder is alive and still holds its parameter of ``network``, with the
    holder: taken before a surgery, as one in place changes ``network`` itself."""
    before = dict(network.named_parameters(remove_duplicate=False))
    live = [(t, t.holder()) for t in ties]
    return [(t, h) for t, h in live if h is not None and h._parameters.get(t.leaf) is before.get(t.name)]


def check_retie(pending: list[tuple[Tie, nn.Module]], new: nn.Module) -> None:
    """Refuse a surgery to ``new`` that resizes (or drops) a tied parameter of ``pending``
    (see :func:`held`)."""
    after = dict(new.named_parameters(remove_duplicate=False))
    for tie, holder in pending:
        if tie.name not in after or after[tie.name].shape != holder._parameters[tie.leaf].shape:
            raise FxSurgeonError(f"the surgery would resize parameter {tie}; it was not made")


def retie(pending: list[tuple[Tie, nn.Module]], new: nn.Module) -> None:
    """Point each holder of ``pending`` (see :func:`held`) at the parameter of its name in ``new``."""
    after = dict(new.named_parameters(remove_duplicate=False))
    for tie, holder in pending:
        holder._parameters[tie.leaf] = after[tie.name]
