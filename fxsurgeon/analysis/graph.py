"""The ChannelGraph: a traced model, its dimensions and its exact cost model."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from ..channels.hooks import lost_hooks, share_hooks
from ..errors import FxSurgeonError, UntraceableModelError
from ..ops.table import META as OPS_META
from ..ops.table import OpTable, rules_of, scope, scoped
from .cost import CostModel
from .dimension import Dimension, build_dimensions
from .export_frontend import export_module, layer_names
from .propagation import propagate
from .shapes import propagate_shapes
from .tracing import as_tuple, defaults_beyond, refuse_wrapped, trace

_TOKENS = itertools.count(1)


class ChannelGraph:
    """Which channels of a traced model are coupled, and what they cost.

    Build it with :func:`analyze`. ``dims`` lists the :class:`Dimension` s; ``count``
    and ``utilization`` evaluate the cost model, optionally with alive masks
    (``{dimension name: bool tensor of its width}``; dimensions left out are alive).
    """

    def __init__(self, module: fx.GraphModule, dims: list[Dimension], cost: CostModel,
                 example_inputs: tuple, propagation, global_channels, model: nn.Module):
        self.module = module
        self.dims = dims
        self.cost = cost
        self.example_inputs = example_inputs
        self.input_shapes = [tuple(a.shape) for a in tree_flatten(example_inputs)[0]
                             if isinstance(a, torch.Tensor)]
        self.propagation = propagation      # identities and axis refs, for the rewriter
        #: identities -> index over all dimensions' channels (-1: in no dimension)
        self.global_channels = global_channels
        self.model = model        # the user's model (holds parameters the graph never uses)
        self.token = next(_TOKENS)        # plans remember the graph they were made for
        #: the user's hooks the traced network never calls (see :func:`check_hooks`)
        self.lost_hooks: list[str] = []
        self._by_name = {d.name: d for d in dims}

    @property
    def ops(self) -> OpTable | None:
        """The rules this analysis was given (``analyze(ops=...)``), in scope for its passes:
        its network keeps them in its meta."""
        return rules_of(self.module)

    def __getitem__(self, name: str) -> Dimension:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no dimension named {name!r}") from None

    @property
    def free_dims(self) -> list[Dimension]:
        return [d for d in self.dims if d.free]

    def count(self, metric: str = "params", alive: dict | None = None, by: str | None = None):
        """Exact parameters or FLOPs (multiply-accumulates) for the example input.

        ``by="layer"`` or ``by="param"`` returns a breakdown instead of the total.
        """
        return self.cost.count(metric, self.cost.flat_mask(alive), by)

    def utilization(self, alive: dict, metric: str = "params") -> float:
        """The paper's r = U(θ) / c(A): cost with only the alive channels over full cost."""
        return self.count(metric, alive) / self.count(metric)

    def attributable(self, metric: str = "params") -> dict[str, float]:
        """Per dimension: the cost that would vanish with its every channel (what scales with it)."""
        total = self.count(metric)
        return {d.name: total - self.count(metric, {d.name: np.zeros(d.width, bool)})
                for d in self.dims}

    def free_share(self, metric: str = "params") -> float:
        """Share of the cost that scales with at least one free dimension."""
        total = self.count(metric)
        dead = {d.name: np.zeros(d.width, bool) for d in self.free_dims}
        return (total - self.count(metric, dead)) / total if total else 0.0

    def summary(self) -> str:
        """The table and totals that ``fxsurgeon inspect`` prints."""
        from .report import summary
        return summary(self)

    def to_json(self) -> dict:
        """Everything machine-readable: dimensions, members, pins, costs."""
        from .report import to_json
        return to_json(self)

    def to_networkx(self, only: str | None = None):
        """A networkx DiGraph: layer and dimension nodes, edges producer → dim → consumer."""
        from .drawing import to_networkx
        return to_networkx(self, only)


def check_hooks(graph: ChannelGraph) -> None:
    """Refuse to build a network for the user from ``graph`` when it would lose some of
    their hooks (on modules tracing entered), naming them."""
    if graph.lost_hooks:
        n = len(graph.lost_hooks)
        raise FxSurgeonError(
            f"the rewritten network would lose {n} hook(s) of your model: {'; '.join(graph.lost_hooks[:3])}"
            f"{'; ...' if n > 3 else ''}. Tracing enters these modules, so the new network runs their "
            f"code but never calls them: remove the hooks before the surgery and register them on "
            f"layers the graph keeps (fxsurgeon inspect lists its layers), or pass the module types "
            f"as leaf_modules (their channels are then pinned)")


def _node_names(gm: fx.GraphModule) -> dict[str, str]:
    return {n.name: (n.target if n.op in ("call_module", "get_attr") else n.name)
            for n in gm.graph.nodes}


def analyze(model: nn.Module, example_inputs, *, leaf_modules: Iterable[type] = (),
            autowrap_functions: Iterable[Callable] = (),
            concrete_args: dict | None = None, frontend: str = "auto",
            ops: dict | None = None) -> ChannelGraph:
    """Trace ``model`` and build its :class:`ChannelGraph`.

    ``example_inputs`` is a tensor or a tuple of positional inputs, each a tensor or a
    dict, list or tuple of them (a forward taking one batch dict gets ``(batch,)``; a dict
    itself is refused, not taken as keyword arguments); batch 1 is enough, and FLOPs are
    counted for exactly this input. ``leaf_modules`` are module
    types kept opaque (their channels are pinned); ``autowrap_functions`` are free
    functions kept as single calls. The user's model is not modified.

    ``frontend`` says how the model is traced: ``"fx"`` (``torch.fx`` symbolic tracing),
    ``"export"`` (``torch.export``, non-strict: see :mod:`fxsurgeon.analysis.export_frontend`) or
    ``"auto"``: fx, and export where fx cannot trace the model or run the trace on the
    example inputs. ``graph.frontend`` says which one did. A GraphModule (a network
    fxsurgeon rewrote, or put judges into) is analysed as it is, whatever ``frontend``
    says: exporting it again would take its own layers apart.

    ``ops`` (``{target: rule}``, targets as :func:`~fxsurgeon.ops.register_op` takes
    them) teaches this analysis alone: its rules win over the process-wide table's while
    this graph is analysed, rewritten and applied, and a network rewritten from it keeps
    them (analysing it again reads them); nothing else sees them.
    """
    table = scoped(ops) if ops is not None else rules_of(model)
    with scope(table):
        graph = _analyze(model, example_inputs, leaf_modules, autowrap_functions, concrete_args, frontend)
    if table is not None:
        graph.module.meta[OPS_META] = table
    return graph


def _analyze(model, example_inputs, leaf_modules, autowrap_functions, concrete_args,
             frontend) -> ChannelGraph:
    """:func:`analyze` with its rules in scope."""
    if not isinstance(model, nn.Module):
        raise FxSurgeonError(f"analyze() needs a torch.nn.Module, got {type(model).__name__}")
    if frontend not in FRONTENDS:
        raise FxSurgeonError(f"unknown frontend {frontend!r}: use one of {FRONTENDS}")
    refuse_wrapped(model)
    args = as_tuple(example_inputs)
    if frontend == "export" and not isinstance(model, fx.GraphModule):
        gm = _exported(model, args, leaf_modules, autowrap_functions, concrete_args)
    else:
        try:
            gm = _traced(model, args, leaf_modules, autowrap_functions, concrete_args)
        except FxSurgeonError as exc:
            if frontend == "fx" or isinstance(model, fx.GraphModule):
                raise
            try:
                gm = _exported(model, args)
            except UntraceableModelError as second:
                raise UntraceableModelError(f"{exc}\n{second}") from exc
    names = _node_names(gm)
    if gm.meta.get(_FRONTEND) == "export":
        names.update(layer_names(gm))
    prop = propagate(gm, args, model)
    dims, dim_of_root, chan_of_root = build_dimensions(prop, names)
    offsets = np.concatenate([[0], np.cumsum([d.width for d in dims])]).astype(np.int64)

    def lookup(tags: np.ndarray) -> np.ndarray:
        roots = prop.uf.find(np.asarray(tags, dtype=np.int64))
        d = dim_of_root[roots]
        return np.where(d >= 0, offsets[np.maximum(d, 0)] + chan_of_root[roots], -1)

    cost = CostModel(prop.terms, lookup, [d.width for d in dims], [d.name for d in dims],
                     frozenset(prop.blockwise))
    graph = ChannelGraph(gm, dims, cost, args, prop, lookup, model)
    graph.frontend = gm.meta.get(_FRONTEND, "fx")
    if gm is not model:
        share_hooks(model, gm)
        graph.lost_hooks = lost_hooks(model, gm)
    return graph


#: how :func:`analyze` may trace a model
FRONTENDS = ("auto", "fx", "export")
#: the GraphModule's meta key that says which front end made it
_FRONTEND = "fxs_frontend"


def _traced(model, args, leaf_modules=(), autowrap_functions=(), concrete_args=None) -> fx.GraphModule:
    """``model`` symbolically traced, with shapes for ``args``."""
    concrete_args = {**defaults_beyond(model, len(args)), **(concrete_args or {})}
    gm = trace(model, leaf_modules, autowrap_functions, concrete_args or None)
    _shapes(gm, args, "traced")
    return gm


def _exported(model, args, leaf_modules=(), autowrap_functions=(), concrete_args=None) -> fx.GraphModule:
    """``model`` exported, with shapes for ``args``."""
    if leaf_modules or autowrap_functions or concrete_args:
        raise FxSurgeonError("leaf_modules, autowrap_functions and concrete_args steer torch.fx "
                             "tracing; torch.export takes none of them (frontend='export')")
    gm = export_module(model, args)
    gm.meta[_FRONTEND] = "export"
    _shapes(gm, args, "exported")
    return gm


def _shapes(gm: fx.GraphModule, args: tuple, how: str) -> None:
    """Annotate ``gm`` with shapes for ``args`` (in eval mode, as propagation runs)."""
    try:
        propagate_shapes(gm, args)
    except Exception as exc:
        raise FxSurgeonError(f"the {how} model failed on the example inputs "
                             f"{[tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]}: "
                             f"{type(exc).__name__}: {exc}") from exc
