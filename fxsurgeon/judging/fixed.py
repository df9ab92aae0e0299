"""Fixed dimensions: free dimensions a method keeps at their width and out of the L1
penalty, by name, by a predicate on :class:`~fxsurgeon.analysis.dimension.Dimension`, or by the
preset ``"trunk"``."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from ..analysis.dimension import Dimension
from ..errors import FxSurgeonError

#: what ``fixed=`` accepts
Fixed = str | Iterable[str] | Callable[[Dimension], bool] | None


def trunk(graph) -> set[str]:
    """The paper's main stream of a ResNet: the dimensions written by residual additions
    and the stem (the output of the first layer)."""
    names = {d.name for d in graph.dims if d.kind == "residual trunk"}
    stem = next((d for d in graph.dims if any(m.role == "out" for m in d.members)), None)
    return names | ({stem.name} if stem is not None else set())


def fixed_names(graph, fixed: Fixed) -> set[str]:
    """The names of the free dimensions of ``graph`` that ``fixed`` selects. Unknown names
    raise :class:`FxSurgeonError` naming them."""
    if fixed is None:
        return set()
    if fixed == "trunk":
        chosen = trunk(graph)
    elif callable(fixed):
        chosen = {d.name for d in graph.dims if fixed(d)}
    elif isinstance(fixed, str):
        raise FxSurgeonError(f"fixed={fixed!r}: use 'trunk', a list of dimension names or a predicate")
    else:
        chosen = set(fixed)
        unknown = sorted(chosen - {d.name for d in graph.dims})
        if unknown:
            raise FxSurgeonError(f"fixed names {', '.join(map(repr, unknown))}, which are not "
                                 f"dimensions of this graph (see fxsurgeon inspect)")
    return {d.name for d in graph.free_dims if d.name in chosen}
