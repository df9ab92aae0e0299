"""The four surgery schemes, one record each: what a rewrite under it does to the network.

``prune`` removes dead channels; ``nr`` also adds new ones, dense; ``cr`` and ``ca`` add new
ones and hold every layer split by generation, ``cr`` without the blocks that cross between
generations, ``ca`` with them gated. Passes ask a scheme what it does (:attr:`Scheme.grows`,
:attr:`~Scheme.partitioned`, :attr:`~Scheme.crosses`) rather than compare its name;
the public API and saved files name schemes by their strings.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FxSurgeonError


@dataclass(frozen=True)
class Scheme:
    """What a rewrite under scheme ``name`` does."""

    name: str
    grows: bool         # it adds new channels where the plan grows a dimension
    partitioned: bool   # it holds layers split by generation (:mod:`~fxsurgeon.layers.partitioned`)
    crosses: bool       # its layers keep the weights between generations (priced densely)

    def __str__(self) -> str:
        return self.name


#: every scheme by name
SCHEMES = {s.name: s for s in (Scheme("nr", grows=True, partitioned=False, crosses=True),
                               Scheme("cr", grows=True, partitioned=True, crosses=False),
                               Scheme("ca", grows=True, partitioned=True, crosses=True),
                               Scheme("prune", grows=False, partitioned=False, crosses=True))}


def scheme_of(name: str) -> Scheme:
    """The scheme called ``name``, or :class:`FxSurgeonError` naming the four."""
    if name not in SCHEMES:
        raise FxSurgeonError(f"unknown scheme {name!r}: use one of {tuple(SCHEMES)}")
    return SCHEMES[name]
