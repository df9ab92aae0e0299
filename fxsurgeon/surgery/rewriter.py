"""Rewrite a model by a :class:`~fxsurgeon.planning.planner.Plan` into a new GraphModule.

The user's model is never touched: the traced module is copied, every parameter that
holds channels is resized, and the new layout of each axis is found by running the
identity propagation again on the new graph, with every producer emitting the
identities of the channels it keeps. Concatenations, shuffles and flattens then place
the channels themselves, and each new position is matched to its old one by
(channel, occurrence). What a removed channel still emits (the constant ``ReLU(β)`` of
a BatchNorm with ``γ = 0``) is folded into each call that read it
(:mod:`fxsurgeon.surgery.folding`), so the parameter count is the plan's. Under ``cr`` and
``ca`` the layers that mix survivors and new channels are then split into
:class:`~fxsurgeon.layers.partitioned.Partitioned` layers. Finally the rewrite checks itself
against the reference network on the example inputs (:mod:`fxsurgeon.surgery.selfcheck`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from ..analysis.cost import dimension_of
from ..analysis.dimension import blocks, segments
from ..analysis.graph import ChannelGraph, check_hooks
from ..analysis.propagation import AxisRef, propagate
from ..analysis.shapes import propagate_shapes
from ..analysis.tracing import generated
from ..channels.hooks import carry_hooks
from ..channels.nodes import getattr_path
from ..errors import FxSurgeonError, one_line
from ..judging.liveliness import channel_scales
from ..judging.modulated import carried
from ..judging.reference import run_graph, zeroed_scales
from ..layers.partitioned import Partitioned
from ..layers.schemes import SCHEMES, Scheme, scheme_of
from ..ops import TABLE, Rule
from ..ops.table import scope
from ..planning.planner import Plan
from .folding import Folding
from .forms import FORMS, FormTiming, choose_forms, set_forms
from .matching import is_identity, match, take
from .rescaling import GOALS as RESCALE_GOALS
from .rescaling import rescale as neural_rescale
from .selfcheck import verify
from .streams import streamed


@dataclass
class Surgery:
    """The result of :func:`rewrite`.

    ``module`` is the new GraphModule. ``index_maps[name]`` lists, for every resized
    axis of the new parameter or buffer ``name``, the old index of each new position
    (-1 for a new channel) in the old tensor ``origin(name)``: the same name, except for
    the blocks of a partitioned layer (``conv.weight_s`` comes from ``conv.weight``).
    ``folded`` names the calls (fx nodes) that absorbed removed channels' constants and
    how: ``"bias"`` (added to the layer's bias), ``"norm"`` (taken off the running mean
    of the batch norm that alone reads the call, when there is no bias of its own),
    ``"constant"`` (a per-channel buffer added after the call, else) or ``"map"`` (a
    :class:`~fxsurgeon.layers.folded.FoldedConstant` after a zero-padded convolution, whose
    border sees less of the constant; exact at every input size); ``folds`` records
    what each added, as data. ``partitioned`` lists the layers split into S/R blocks;
    ``rescaled`` counts the channels neural rescaling lifted per norm, and
    ``rescale_skipped`` gives, per norm it could not rescale, the channels and why;
    ``rescale_factors``, per old tensor that rescaling changed, the factor its surviving
    values were multiplied by (broadcastable, in the old tensor's layout: what an
    optimizer's state for it follows). ``forms`` gives each partitioned layer's form
    (:mod:`fxsurgeon.surgery.forms`), ``form_timings`` what choosing them measured.
    """

    module: fx.GraphModule
    plan: Plan
    scheme: str = "nr"
    index_maps: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)
    folds: dict[str, dict] = field(default_factory=dict)   # call -> what folding added, as data
    partitioned: list[str] = field(default_factory=list)
    rescaled: dict[str, int] = field(default_factory=dict)
    rescale_skipped: dict[str, tuple[list[int], str]] = field(default_factory=dict)
    rescale_factors: dict[str, torch.Tensor] = field(default_factory=dict)
    forms: dict[str, str] = field(default_factory=dict)
    form_timings: list[FormTiming] = field(default_factory=list)

    def origin(self, name: str) -> str:
        """The old parameter or buffer that the new ``name`` comes from."""
        return self.origins.get(name, name)

    def carry(self, name: str, old: torch.Tensor, fill: float = 0.0,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """Map a tensor shaped like the old ``origin(name)`` (momentum, Adam moments) to
        the new ``name``'s layout, into ``out`` when given; new channels get ``fill``."""
        maps = self.index_maps.get(name, [])
        for k, (axis, idx) in enumerate(maps):
            old = take(old, axis, idx, fill, out if k == len(maps) - 1 else None)
        return old


def _check_fresh(graph: ChannelGraph, plan: Plan) -> None:
    """Refuse a plan whose removed channels' scales changed since it judged them (the
    model trained on, or dead channels came back): it would remove what is now alive."""
    if not plan.judged:
        return
    now = channel_scales(graph, [graph[name] for name in plan.judged])
    for name, then in plan.judged.items():
        removed = np.setdiff1d(np.arange(graph[name].width), plan.dims[name].survivors)
        if not np.array_equal(now[name][removed], then):
            change = float(np.abs(now[name][removed] - then).max())
            raise FxSurgeonError(f"the plan is stale: the scales of the channels it removes from {name!r} "
                                 f"changed since it was made (by up to {change:.3g}); plan again on the "
                                 f"model as it is now")


def _check_modulated(graph: ChannelGraph, plan: Plan) -> None:
    """Refuse a plan that removes dead channels a computed map multiplies while they are
    not zero (made by hand, or before :func:`~fxsurgeon.plan` kept them): what they carry
    varies with the input, so no fold can put it back, and on one example sample it may
    look constant (see :mod:`fxsurgeon.judging.modulated`). Channels a budget silences are
    the plan's choice to change the function, and are not asked about."""
    kept = {}
    for d in graph.free_dims:
        mask = np.zeros(d.width, bool)
        mask[plan.dims[d.name].survivors] = True
        mask[plan.silenced.get(d.name, np.zeros(0, np.int64))] = True
        kept[d.name] = mask
    must = carried(graph, kept)
    if must:
        name, mask = next(iter(must.items()))
        raise FxSurgeonError(f"the plan removes {int(mask.sum())} channel(s) of {name!r} (and "
                             f"{len(must) - 1} more dimension(s)) that a value computed from the "
                             f"inputs multiplies while they are not zero, or a constant varying along "
                             f"positions adds to: what they carry varies, so "
                             f"no constant can be folded for them; plan again (fxs.plan keeps them), or "
                             f"pass fold=False to drop them anyway")


def _in_old_layout(factor: torch.Tensor, maps: list[tuple[int, np.ndarray]], old: torch.Tensor
                   ) -> torch.Tensor:
    """A factor laid out like a new tensor, laid out like the old one it comes from (1 at
    the old positions that were dropped; new channels were not rescaled)."""
    for axis, idx in maps:
        if factor.shape[axis] == 1:
            continue
        shape = list(factor.shape)
        shape[axis] = old.shape[axis]
        out = torch.ones(shape, dtype=factor.dtype, device=factor.device)
        kept = torch.as_tensor(np.nonzero(idx >= 0)[0], device=factor.device)
        out.index_copy_(axis, torch.as_tensor(idx[idx >= 0], device=factor.device),
                        factor.index_select(axis, kept))
        factor = out
    return factor


def _refs(prop) -> dict[tuple[str, int], AxisRef]:
    """Axes that hold channels: position by position, or (``divisor`` > 1, a grouped
    conv's input axis) those of one group per block of the weight's first axis."""
    return {(r.param, r.axis): r for r in prop.axes if r.role != "source"}


def _axis_size(layout: _Layout, r: AxisRef) -> int:
    return layout.new_size(r.tags) // r.divisor


def _grouped_map(r_old: AxisRef, r_new: AxisRef, idx: np.ndarray) -> np.ndarray:
    """A grouped axis's index map per group (``groups x new size``: the old position
    within the group's slice, -1 for a new channel), from the map over all its channels."""
    g, old_size, new_size = r_old.divisor, len(r_old.tags) // r_old.divisor, len(r_new.tags) // r_old.divisor
    per = idx.reshape(g, new_size)
    block = np.arange(g)[:, None]
    if ((per >= 0) & (per // old_size != block)).any():
        raise FxSurgeonError(f"the rewrite moved channels of grouped convolution {r_old.node} to "
                             f"another group; its grouping cannot be kept")
    return np.where(per >= 0, per - block * old_size, -1)


def _placeholders(old: nn.Module, shapes: dict[str, list[int]]) -> dict[int, torch.Tensor]:
    """A ``deepcopy`` memo that copies every tensor the rewrite resizes as an empty one
    (it is replaced right after), so the copy costs only what keeps its size: a rewrite
    holds the old network and the new one, not two old ones. A layer the rewrite unpacks
    (see :func:`_unpack`) is copied whole: unpacking reads it."""
    memo = {}
    rules = ((name, TABLE.module_rule(m)) for name, m in old.named_modules() if m is not old)
    unpacked = tuple(f"{name}." for name, rule in rules
                     if rule is not None and type(rule).unpack is not Rule.unpack)
    for name, t in [*old.named_parameters(), *old.named_buffers()]:
        if name in shapes and list(t.shape) != shapes[name] and not name.startswith(unpacked):
            empty = t.detach().new_empty(0)
            memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return memo


def _set_tensor(module: nn.Module, names: list[str], value: torch.Tensor) -> None:
    """Put ``value`` at every name of one tensor (a tied weight has several), as the
    parameter or buffer it replaces."""
    parameter = isinstance(getattr_path(module, names[0]), nn.Parameter)
    if parameter:
        value = nn.Parameter(value, requires_grad=getattr_path(module, names[0]).requires_grad)
    for name in names:
        owner, _, leaf = name.rpartition(".")
        m = module.get_submodule(owner) if owner else module
        if parameter:
            setattr(m, leaf, value)
        else:
            m._buffers[leaf] = value


def _unpack(module: fx.GraphModule) -> None:
    """Replace every layer a rewrite put in by the standard layer it equals, when its rule
    knows one (a ``cr`` layer is resized, and split again, as its dense form)."""
    for target in {n.target for n in module.graph.nodes if n.op == "call_module"}:
        m = module.get_submodule(target)
        rule = TABLE.module_rule(m)
        standard = rule.unpack(m) if rule is not None else None
        if standard is not None:
            owner, _, leaf = target.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, leaf, standard)


def _sync_attributes(module: fx.GraphModule, old: nn.Module) -> None:
    """Keep constructor attributes (channels, features, groups) and the literal arguments
    of function calls in step with new tensors, as each op's rule says."""
    modules = dict(module.named_modules())
    for target in {n.target for n in module.graph.nodes if n.op == "call_module"}:
        m = module.get_submodule(target)
        rule = TABLE.module_rule(m)
        if rule is not None:
            rule.sync(m, old.get_submodule(target))
    for node in module.graph.nodes:
        if node.op in ("call_function", "call_method"):
            TABLE.lookup(node, modules).sync_call(node, module, old)
    module.recompile()


def _sync_sizes(module: fx.GraphModule, prop, layout: _Layout) -> None:
    """Literal sizes that follow a channel axis (an exported graph's reshapes) take its new width."""
    modules = dict(module.named_modules())
    nodes = {n.name: n for n in module.graph.nodes}
    for size in prop.sizes:
        node = nodes[size.node]
        TABLE.lookup(node, modules).set_size(node, size.index, layout.new_size(size.tags))
    module.recompile()


def rewrite(graph: ChannelGraph, plan: Plan, scheme: str | None = None, seed: int = 0,
            fold: bool = True, rescale: bool | str = False, gamma0: float = 1.0,
            check: bool = True, form: str = "split") -> Surgery:
    """Build the new network a plan describes.

    ``scheme="prune"`` removes the dead channels. ``scheme="nr"`` also appends the
    plan's new (R) channels after the survivors of every growing dimension: their
    weights from R and fixed inputs get He (fan-out) initialisation from ``seed``,
    cross-connections between survivors and R channels start at zero, BatchNorm γ at 1
    and β at 0 with fresh statistics, so the network still computes the same function.
    ``"cr"`` and ``"ca"`` start the same way, then split every dense conv and linear
    layer that mixes S and R into a :class:`~fxsurgeon.layers.partitioned.Partitioned` layer
    (no cross blocks, or gated cross blocks). ``prune`` and ``nr`` give plain torch
    modules. ``rescale=True`` (or ``"layer"``) applies neural rescaling where it is
    exact, lifting small survivors to their layer's strongest one (at most ``gamma0``);
    ``rescale="gamma0"`` lifts them to ``gamma0``, as the paper does (see
    :mod:`fxsurgeon.surgery.rescaling`).

    The new network computes the old one's function with the removed channels' scales
    set to zero: exactly the old function when they are zero already (see
    :mod:`fxsurgeon.judging.reference`). ``check=True`` (the default) proves it on the example
    inputs, at the cost of one forward pass of each network, and raises
    :class:`FxSurgeonError` naming the first layer that differs. The new network keeps the
    model's hooks (those of its root, and of every layer the graph calls); one it would lose
    is refused (:func:`~fxsurgeon.analysis.graph.check_hooks`). ``fold=False`` skips
    folding removed channels' constants (a saved model brings them, or they are zero),
    and then nothing is checked, and a ``cr``/``ca`` network is left in its plain form
    (:func:`fxsurgeon.surgery.streams.streamed` holds its generations apart once it is complete).
    """
    if plan.graph_token not in (None, graph.token):
        raise FxSurgeonError("this plan was made for another ChannelGraph: plan again on the "
                             "graph you rewrite (its dimensions and channels are its own)")
    _check_fresh(graph, plan)
    if fold:
        _check_modulated(graph, plan)
    check_hooks(graph)
    scheme = scheme or plan.scheme
    kind, planned = scheme_of(scheme), scheme_of(plan.scheme)
    # cr prices its layers without cross blocks, nr and ca densely; prune adds nothing to price
    if kind.grows and planned.grows and kind.crosses != planned.crosses:
        raise FxSurgeonError(f"a plan made for scheme {plan.scheme!r} prices its layers "
                             f"differently from {scheme!r}: plan again with scheme={scheme!r}")
    added = np.array([plan.dims[d.name].added for d in graph.dims], dtype=np.int64)
    if not kind.grows and added.any():
        raise FxSurgeonError("scheme 'prune' adds no channels, but the plan grows "
                             f"{[d.name for d in graph.dims if plan.dims[d.name].added][:3]}")
    if form not in FORMS:
        raise FxSurgeonError(f"form must be one of {FORMS}, got {form!r}")
    if rescale not in (False, True, *RESCALE_GOALS):
        raise FxSurgeonError(f"rescale must be True, False or one of {RESCALE_GOALS}, got {rescale!r}")
    layout = _Layout(graph, plan, added)
    prop = graph.propagation
    for r in prop.axes:
        if r.divisor > 1 and layout.new_size(r.tags) % r.divisor:
            raise FxSurgeonError(f"the plan leaves grouped convolution {r.node} "
                                 f"{layout.new_size(r.tags)} input channels, not a multiple of its "
                                 f"{r.divisor} groups: plan it again")
    try:
        with scope(graph.ops):        # the new network is a copy: its meta keeps the rules
            return _build(graph, plan, scheme, layout, seed, fold, rescale, gamma0, check, form)
    except FxSurgeonError:
        raise
    except Exception as exc:  # noqa: BLE001 - a crash is a refusal that names its cause
        raise FxSurgeonError(f"the rewrite could not build the new network ({type(exc).__name__}: "
                             f"{one_line(exc)}); this is a bug in fxsurgeon or in an op rule "
                             f"(fxsurgeon.register_op)") from exc


def _build(graph: ChannelGraph, plan: Plan, scheme: str, layout: _Layout, seed: int, fold: bool,
           rescale: bool | str, gamma0: float, check: bool, form: str) -> Surgery:
    """The steps of :func:`rewrite`, once its arguments are known to fit."""
    prop = graph.propagation
    added = layout.added
    old = graph.module
    if fold:        # the reference first: of its run, only what folding reads is held after it
        folding = Folding(graph, layout.kept)
        expected, calls, values = run_graph(old, graph.example_inputs,
                                            zeroed_scales(graph, layout.kept, layout.silenced),
                                            args_of=folding.args_of, outputs_of=folding.outputs_of)
        folding.observe(calls, values)
        del values
    old_refs = _refs(prop)
    old_tensors = {**dict(old.named_parameters()), **dict(old.named_buffers())}
    for name, _ in old_refs:          # a layer the rewrite unpacks holds its dense weight
        if name not in old_tensors:
            old_tensors[name] = getattr_path(old, name).detach()
    # 1. resize: every axis keeps the old positions of surviving channels, plus new ones
    shapes: dict[str, list[int]] = {}
    for (name, axis), r in old_refs.items():
        shapes.setdefault(name, list(old_tensors[name].shape))[axis] = _axis_size(layout, r)
    new = copy.deepcopy(old, _placeholders(old, shapes))
    _unpack(new)
    for name, shape in shapes.items():
        t = old_tensors[name]
        if shape != list(t.shape):
            _set_tensor(new, prop.aliases.get(name, [name]), t.new_zeros(shape))
    _sync_attributes(new, old)
    _sync_sizes(new, prop, layout)
    # 2. where each channel now sits: propagate again with the identities each producer emits
    propagate_shapes(new, graph.example_inputs)
    new_prop = propagate(new, graph.example_inputs, new, dataclasses.replace(prop, uf=layout.uf),
                         layout.prescribed)
    new_refs = _refs(new_prop)
    layout.uf = new_prop.uf         # the walk's copy, with the identities it made
    surgery = Surgery(new, plan, scheme)
    for key, r_old in old_refs.items():
        r_new = new_refs.get(key)
        if r_new is None:
            raise FxSurgeonError(f"the rewritten graph lost track of {key[0]} axis {key[1]}")
        idx = match(prop.uf.find(r_old.tags), _old_classes(prop, new_prop, layout, r_new.tags))
        if r_old.divisor > 1:
            idx = _grouped_map(r_old, r_new, idx)
            if not all(is_identity(row, len(r_old.tags) // r_old.divisor) for row in idx):
                surgery.index_maps.setdefault(key[0], []).append((key[1], idx))
        elif not is_identity(idx, len(r_old.tags)):
            surgery.index_maps.setdefault(key[0], []).append((key[1], idx))
    # 3. copy the survivors' values, then initialise the new channels
    with torch.no_grad():
        for name in surgery.index_maps:
            surgery.carry(name, old_tensors[name].detach(), out=getattr_path(new, name))
        if added.any():
            _init_new_channels(new, new_refs, new_prop, layout, seed)
    if rescale:
        done = neural_rescale(new, new_prop, gamma0, "layer" if rescale is True else rescale,
                              layout.is_new)
        surgery.rescaled, surgery.rescale_skipped = done.done, done.skipped
        surgery.rescale_factors = {
            name: _in_old_layout(f, surgery.index_maps.get(name, []), old_tensors[name])
            for name, f in done.factors.items()}
    if fold:
        folding.apply(new, new_prop, surgery)
    if scheme_of(scheme).partitioned or prop.generations:
        _partition(new, prop, new_prop, new_refs, layout, surgery)
    _carry_unused(graph, new)
    new.recompile()
    if surgery.partitioned:
        if form == "auto":
            surgery.form_timings = choose_forms(new, graph.example_inputs)
        else:
            set_forms(new, form)
        surgery.forms = {name: new.get_submodule(name).form for name in surgery.partitioned}
    computed = None
    if fold and check:
        computed = verify(graph, lambda: zeroed_scales(graph, layout.kept, layout.silenced), expected, new,
                          new_prop, surgery)
    if surgery.partitioned and fold:        # without folds the caller completes the graph first
        surgery.module = streamed(new, graph.example_inputs, computed)
    lost = carry_hooks(old, surgery.module)
    if lost:
        raise FxSurgeonError(f"the {scheme} network cannot keep {len(lost)} hook(s) of the model, "
                             f"whose layers it holds in parts (each part a call): "
                             f"{'; '.join(lost[:3])}{'; ...' if len(lost) > 3 else ''}")
    generated(surgery.module)       # the module handed on, streamed or not
    return surgery


def _old_classes(prop, new_prop, layout: _Layout, tags: np.ndarray) -> np.ndarray:
    """The class each of the new network's ``tags`` held in the analysis: an identity the
    analysis made keeps its class there, whatever the rewrite's walk coupled it with (that
    walk starts from the final classes, so a dimension left with one channel can read as
    one class where the analysis saw several, and an op may then couple it with more, such
    as a rotary embedding's pinned values); a new identity takes its class in that walk."""
    tags = np.asarray(tags, np.int64)
    old = tags < layout.old_size
    return np.where(old, prop.uf.find(np.where(old, tags, 0)), new_prop.uf.find(tags))


class _Layout:
    """Which channels survive, which are new, and the identities producers now emit."""

    def __init__(self, graph: ChannelGraph, plan: Plan, added: np.ndarray):
        cost = graph.cost
        self.graph, self.added, self.offsets = graph, added, cost.offsets
        self.grows = np.array([plan.dims[d.name].grows for d in graph.dims] or [False])
        self.keep = np.zeros(int(cost.offsets[-1]), bool)
        self.quiet = np.zeros_like(self.keep)
        for i, d in enumerate(graph.dims):
            self.keep[cost.offsets[i] + plan.dims[d.name].survivors] = True
            self.quiet[cost.offsets[i] + plan.silenced.get(d.name, np.zeros(0, np.int64))] = True
        prop = graph.propagation
        self.uf = prop.uf.copy()
        self.old_size = prop.uf.size          # identities from here on are the rewrite's own
        new_ids = {i: self.uf.new(int(a)) for i, a in enumerate(added) if a}
        # the new channels end here: the rewrite's walk makes more identities (an opaque
        # op's output, a producer no dimension holds), which are no channel the plan added
        self.new_end = self.uf.size
        self.prescribed = {}
        for g in prop.groups:
            if g.tags is None:
                continue
            d = int(self.dims_of(g.tags[:1])[0])
            self.prescribed[g.node] = self._emitted(d, g.tags, new_ids.get(d, np.zeros(0, np.int64)))

    def _emitted(self, d: int, vec: np.ndarray, new: np.ndarray) -> np.ndarray:
        """What a producer of ``vec`` (channels of dimension ``d``) now emits: its survivors,
        then the new channels; of a grouped dimension, group by group, so that every group
        stays one block."""
        dim = self.graph.dims[d] if d >= 0 else None
        if dim is not None and dim.unit > 1:      # a new head takes head_dim positions in
            roots = self.graph.propagation.uf.find(vec)     # each of q, k, v a projection
            new = np.repeat(new, blocks(roots) or 1)        # emits (a group n_rep of them in q)
            m = segments(roots)
            return np.concatenate([np.concatenate([part[self.kept(part)], new])
                                   for part in np.split(vec, m)])
        kept = self.kept(vec)
        if dim is None or dim.slots is None:
            return np.concatenate([vec[kept], new])
        slots = dim.slots[self.graph.global_channels(vec) - self.offsets[d]]
        per = np.array_split(new, dim.groups)
        return np.concatenate([np.concatenate([vec[kept & (slots == g)], per[g]]) for g in range(dim.groups)])

    def dims_of(self, tags: np.ndarray) -> np.ndarray:
        return dimension_of(self.offsets, self.graph.global_channels(tags))

    def kept(self, tags: np.ndarray) -> np.ndarray:
        g = self.graph.global_channels(tags)
        return (g < 0) | self.keep[np.maximum(g, 0)]

    def silenced(self, tags: np.ndarray) -> np.ndarray:
        """Which of ``tags`` the plan removes although alive (a budget's choice)."""
        g = self.graph.global_channels(tags)
        return (g >= 0) & self.quiet[np.maximum(g, 0)]

    def new_size(self, tags: np.ndarray) -> int:
        """Kept positions plus, per growing dimension held here, its new channels times
        the positions each channel takes (a flatten repeats them)."""
        n, d = int(self.kept(tags).sum()), self.dims_of(tags)
        for dim in np.unique(d[d >= 0]).tolist():
            if self.added[dim]:
                width = int(self.offsets[dim + 1] - self.offsets[dim])
                n += int((d == dim).sum()) // width * int(self.added[dim])
        return n

    def is_new(self, tags: np.ndarray) -> np.ndarray:
        """Which of the new graph's identities ``tags`` are (coupled with) a channel the
        plan added, and with no channel the analysis saw (a class's root is its smallest
        identity)."""
        roots = self.uf.find(np.asarray(tags, dtype=np.int64))
        return (roots >= self.old_size) & (roots < self.new_end)

    def growing(self, roots: np.ndarray) -> np.ndarray:
        """Per identity root of the new graph: new channel (R) or survivor of a growing
        dimension (S); the rest is fixed (F) and feeds or reads both halves. The plan's
        cost model splits the same way."""
        old = roots < self.old_size
        d = self.dims_of(np.where(old, roots, 0))
        return self.is_new(roots) | (old & (d >= 0) & self.grows[np.maximum(d, 0)])


def _init_new_channels(new: fx.GraphModule, refs, prop, layout: _Layout, seed: int) -> None:
    """New channels' entries start where their refs say: He (fan-out) for weights from R
    and fixed inputs into R outputs, 1 for norm scales and running variances; zero
    elsewhere (cross blocks, biases, shifts), which the carried values already hold."""
    gen = torch.Generator().manual_seed(seed)
    by_param: dict[str, dict[str, AxisRef]] = {}
    for r in refs.values():
        by_param.setdefault(r.param, {})[r.role] = r
    for name, roles in by_param.items():
        own = roles.get("out") or roles.get("param")
        if own is None or own.init == 0:
            continue
        is_new = layout.is_new(own.tags)
        if not is_new.any():
            continue
        value = getattr_path(new, name)
        rows = _along(torch.as_tensor(is_new, device=value.device), own.axis, value.dim())
        if own.init != "he":
            value.copy_(torch.where(rows, torch.full_like(value, own.init), value))
            continue
        cols = torch.ones((), dtype=torch.bool, device=value.device)
        if "in" in roles:
            r_in = roles["in"]
            roots = prop.uf.find(r_in.tags)
            feeds_new = layout.is_new(roots) | ~layout.growing(roots)
            feeds_new = torch.as_tensor(feeds_new, device=value.device)
            if r_in.divisor > 1:        # each block of rows reads its own group's inputs
                per = feeds_new.view(r_in.divisor, -1).repeat_interleave(value.shape[0] // r_in.divisor, 0)
                cols = per.view(*per.shape, *[1] * (value.dim() - 2))
            else:
                cols = _along(feeds_new, r_in.axis, value.dim())
        he = torch.empty(value.shape, dtype=value.dtype, device="cpu")
        nn.init.kaiming_normal_(he, mode="fan_out", nonlinearity="relu", generator=gen)
        value.copy_(torch.where(rows & cols, he.to(value.device), value))


def _generations(node: str, out_ids: np.ndarray, in_ids: np.ndarray, old, layout: _Layout,
                 scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """The generation of each output and input (by class: ``out_ids``, ``in_ids``) of a
    layer to split: the one it had in an earlier partition (``old``: classes and
    generations, or None), or 0 for survivors; new channels join a new generation. Inputs
    of dimensions that do not grow are fixed (-1)."""
    is_new_out, is_new_in = layout.is_new(out_ids), layout.is_new(in_ids)
    if old is None:
        row = is_new_out.astype(np.int64)
        col = np.where(is_new_in, 1, np.where(layout.growing(in_ids), 0, -1))
        return row, col
    o_ids, o_row, i_ids, i_col = old
    # new channels join a generation of their own: above every generation the layer has,
    # its inputs' included (a generation may have inputs and no outputs left)
    latest = 0 if scheme.crosses else int(max(o_row.max(initial=0), i_col.max(initial=0))) + 1
    rows = dict(zip(o_ids.tolist(), o_row.tolist(), strict=True))
    cols = dict(zip(i_ids.tolist(), i_col.tolist(), strict=True))
    row = np.array([latest if n else rows[i] for i, n in zip(out_ids.tolist(), is_new_out, strict=True)])
    # an input no dimension holds (an opaque op's output) was and stays fixed
    col = np.array([latest if n else cols.get(i, -1)
                    for i, n in zip(in_ids.tolist(), is_new_in, strict=True)])
    if ((col == -1) & layout.growing(in_ids) & ~is_new_in).any():
        raise FxSurgeonError(f"{node}: inputs it read as fixed in an earlier partition now grow; "
                             f"partitioning it again is not supported")
    return row, col


def _partition(new: fx.GraphModule, old_prop, prop, refs, layout: _Layout, surgery: Surgery) -> None:
    """Split every dense conv/linear whose blocks between generations are absent from the
    plan's cost into its generations, exactly where the plan's cost model splits it: the
    survivors and the new channels of a layer whose outputs grow, and every generation
    of a layer an earlier ``cr`` rewrite split."""
    modules = {n.name: n.target for n in new.graph.nodes if n.op == "call_module"}
    kind = scheme_of(surgery.scheme)
    layers_as = kind if kind.partitioned else SCHEMES["cr"]     # a cr network pruned or grown stays cr
    done: dict[str, tuple] = {}
    for node in sorted(prop.blockwise):
        target = modules[node]
        wname = f"{target}.weight"
        if (wname, 1) not in refs:
            continue        # input not channel-structured: one factor, priced dense as well
        out_ids, in_ids = prop.uf.find(refs[(wname, 0)].tags), prop.uf.find(refs[(wname, 1)].tags)
        old = old_prop.generations.get(node)
        if old is not None:         # by class: a depthwise conv's outputs are new identities
            old = (old_prop.uf.find(old[0]), old[1], old_prop.uf.find(old[2]), old[3])
        if old is None and (not kind.grows or not layout.growing(out_ids).any()):
            continue                                   # fixed outputs read every input
        row, col = _generations(node, out_ids, in_ids, old, layout, kind)
        if not any(((row == g).any() and (col == h).any()) for g in set(row.tolist())
                   for h in set(col.tolist()) - {g, -1}):
            continue                                   # no block between generations
        key = (row.tobytes(), col.tobytes())
        if target in done:
            if done[target] != key:
                raise FxSurgeonError(f"{target} is called on inputs laid out differently; "
                                     f"cannot partition a shared layer")
            continue
        done[target] = key
        part = Partitioned.from_dense(layers_as.name, new.get_submodule(target), row, col)
        owner, _, leaf = target.rpartition(".")
        setattr(new.get_submodule(owner) if owner else new, leaf, part)
        maps = dict(surgery.index_maps.pop(wname, []))
        out_idx = maps.get(0, np.arange(len(out_ids)))
        in_idx = maps.get(1, np.arange(len(in_ids)))
        for k, g in enumerate(part.block_gen):
            rows = out_idx if layers_as.crosses else out_idx[row == g]
            surgery.index_maps[f"{target}.blocks.{k}"] = [(0, rows), (1, in_idx[col == g])]
            surgery.origins[f"{target}.blocks.{k}"] = wname
        if part.weight_f is not None:
            surgery.index_maps[f"{target}.weight_f"] = [(0, out_idx), (1, in_idx[col == -1])]
            surgery.origins[f"{target}.weight_f"] = wname
        surgery.partitioned.append(target)


def _along(mask: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return mask.view(shape)


def _carry_unused(graph: ChannelGraph, new: fx.GraphModule) -> None:
    """Copy submodules the traced graph never calls (an aux head in eval mode), so the new
    module holds every parameter of the user's model that was not removed."""
    used = {n.target for n in graph.module.graph.nodes if n.op in ("call_module", "get_attr")}
    for name, _ in graph.model.named_parameters():
        parts = name.split(".")[:-1]
        if any(".".join(parts[:i]) in used for i in range(len(parts) + 1)) or name in used:
            continue                    # the graph reads it (through a layer it calls)
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if not _has_module(new, prefix):
                new.add_submodule(prefix, copy.deepcopy(graph.model.get_submodule(prefix)))
                break


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False
