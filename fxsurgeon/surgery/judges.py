"""Judges for the free dimensions no norm judges: a :class:`~fxsurgeon.layers.gate.Gate`
where the dimension is read.

A free dimension is judged when a per-channel scale follows every layer that writes it
(BatchNorm γ, the paper's rule) or when it is an attention head (its output-projection
columns). The hidden units of an MLP (``fc2(act(fc1(x)))``, SwiGLU's
``down(act(gate(x)) · up(x))``) and a ConvNeXt block's expansion have none. For each such
dimension, :func:`add_judges` puts one gate on the value its consumers read, so that
every channel of it reaches them through ``g · x``; with ``g`` at 1 the network computes
exactly what it did. The layers writing the dimension count as judged when their output
reaches the gate alone (see :class:`~fxsurgeon.ops.rewritten.Judge`); the dimensions
where that does not hold are reported, with the reason, and get no gate.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

from torch import fx

from ..analysis.cost import dimension_of
from ..analysis.graph import ChannelGraph, analyze
from ..channels.nodes import value_users
from ..layers.gate import Gate
from ..layers.streamed import share

#: the submodule that holds the gates of a network
JUDGES = "judges"


@dataclass
class Judged:
    """A network with gates on the free dimensions no norm judged.

    ``graph`` is the analysed network (the input graph itself when no gate was needed);
    ``gates`` maps each gate's module name to the dimension it judges (named as in the
    input graph) and the parameter of the layer it feeds, whose optimizer group it joins;
    ``unjudged`` maps the free dimensions still without a judge to the reason.
    """

    graph: ChannelGraph
    gates: dict[str, tuple[str, str]] = field(default_factory=dict)
    unjudged: dict[str, str] = field(default_factory=dict)

    def report(self, before: ChannelGraph) -> str:
        """What the judges change, in a few lines (``fxsurgeon inspect`` prints it):
        the share of free channels judged before and with the gates, and each free
        dimension left without a judge, with the reason."""
        lines = [f"judged: {judged_share(before):.1%} of the free channels by a norm or a head; "
                 f"{judged_share(self.graph):.1%} with {len(self.gates)} gate(s) "
                 f"({', '.join(sorted({d for d, _ in self.gates.values()})) or 'none needed'})"]
        lines += [f"  no judge for {name}: {why}" for name, why in sorted(self.unjudged.items())]
        return "\n".join(lines)


def unjudged_dims(graph: ChannelGraph) -> list:
    """The free dimensions that no scale judges (no source, or a writer it does not follow)."""
    return [d for d in graph.free_dims if not (d.scaled and d.sources)]


def _sites(graph: ChannelGraph, targets: dict[int, str]) -> tuple[dict[int, dict], dict[int, str]]:
    """Per target dimension (by index), ``{input node name: [readers]}``: the values its
    consumers read; and why a dimension cannot take one gate."""
    offsets = graph.cost.offsets
    sites: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    why: dict[int, str] = {}
    for r in graph.propagation.readers.values():
        held = set(dimension_of(offsets, graph.global_channels(r.tags)).tolist())
        for k in held & targets.keys():
            if held == {k}:
                sites[k][r.input].append(r)
            else:
                why.setdefault(k, f"{r.node} reads it together with other channels")
    return sites, why


@dataclass
class _Site:
    """Where one gate goes: on the value of ``node`` along ``axis``, for ``readers`` (the
    fx nodes that then read the gate instead; None: every user of the value); ``weight``
    is the parameter whose device, dtype and optimizer group the gate takes."""

    node: str
    axis: int
    readers: list[str] | None
    weight: str


def _reader_sites(k: int, sites: dict, nodes: dict, params: dict) -> list[_Site] | str:
    """Gates on the values the dimension's consumers read, or why not."""
    found = []
    for source, readers in sites.get(k, {}).items():
        consumers = {r.node for r in readers}
        others = [u.name for u in value_users(nodes[source]) if u.name not in consumers]
        if others:
            return f"its channels reach {others[0]} as well as the layers that read them"
        if len({r.axis for r in readers}) > 1:
            return f"the layers reading {source} take its channels on different axes"
        weight = next((r.weight for r in readers if r.weight in params), next(iter(params)))
        found.append(_Site(source, readers[0].axis, sorted(consumers), weight))
    return found or "no layer reads it through a weight"


def _writers(graph: ChannelGraph, targets: dict[int, str], params: dict) -> dict[int, dict[str, str]]:
    """Per target dimension, the layers that write it and one of their parameters (read
    off the walk's axis references once, for every dimension)."""
    writers: dict[int, dict[str, str]] = defaultdict(dict)
    for r in graph.propagation.axes:
        if r.role != "out":
            continue
        held = set(dimension_of(graph.cost.offsets, graph.global_channels(r.tags)).tolist())
        for k in held & targets.keys():
            writers[k].setdefault(r.node, r.param if r.param in params else next(iter(params)))
    return writers


def _writer_sites(graph: ChannelGraph, writers: dict[str, str]) -> list[_Site] | str:
    """Gates right after every layer that writes the dimension (each of its channels is
    then multiplied once, before anything reads it), or why not."""
    found = []
    for node, weight in writers.items():
        axis = graph.propagation.write_axes.get(node)
        if axis is None:
            return f"{node} writes it without saying on which axis"
        found.append(_Site(node, axis, None, weight))
    return found or "no layer writes it"


def add_judges(graph: ChannelGraph, skip=frozenset(), **analyze_kwargs) -> Judged:
    """``graph``'s network with a gate on every free dimension no scale judges (but those
    named in ``skip``), analysed (with ``analyze_kwargs``, as the graph was). A gate goes
    where the dimension's consumers read it (after the activation: the function of the
    gate is then positively homogeneous up to the consumer, so rescaling it is exact);
    where one gate cannot stand there (the channels are read together with others, or
    reach other ops too), one gate after each layer that writes the dimension."""
    index = {d.name: k for k, d in enumerate(graph.dims)}
    targets = {index[d.name]: d.name for d in unjudged_dims(graph) if d.name not in skip}
    if not targets:
        return Judged(graph)
    sites, why = _sites(graph, targets)
    nodes = {n.name: n for n in graph.module.graph.nodes}
    params = dict(graph.module.named_parameters())
    writers = _writers(graph, targets, params)
    plan: dict[str, _Site] = {}
    owner: dict[str, str] = {}
    unjudged: dict[str, str] = {}

    def place(k: int, found: list[_Site] | str) -> None:
        if isinstance(found, str):
            unjudged[targets[k]] = found
            return
        for site in found:
            plan.setdefault(site.node, site)
            owner.setdefault(site.node, targets[k])

    for k in targets:
        found = _reader_sites(k, sites, nodes, params) if k not in why else why[k]
        place(k, _writer_sites(graph, writers[k]) if isinstance(found, str) else found)
    gated = _analysed(graph, plan, nodes, params, analyze_kwargs)
    retry = {index[name] for name in _not_judging(gated, owner)} - set(why)
    if retry:          # a gate where the consumers read is not enough: after the writers
        for node in [n for n, name in owner.items() if index[name] in retry]:
            del plan[node], owner[node]
        for k in retry:
            place(k, _writer_sites(graph, writers[k]))
        gated = _analysed(graph, plan, nodes, params, analyze_kwargs)
    useless = _not_judging(gated, owner)
    if useless:        # no gate that judges nothing stays in the network
        for name in useless:
            unjudged.setdefault(name, "the layers writing it reach other ops than its gates")
        for node in [n for n, name in owner.items() if name in useless]:
            del plan[node], owner[node]
        gated = _analysed(graph, plan, nodes, params, analyze_kwargs)
    gates = {f"{JUDGES}.{node}": (owner[node], site.weight) for node, site in plan.items()}
    return Judged(gated, gates, unjudged)


def _analysed(graph: ChannelGraph, plan: dict, nodes: dict, params: dict,
              analyze_kwargs: dict) -> ChannelGraph:
    return analyze(_gated(graph, plan, nodes, params), graph.example_inputs, **analyze_kwargs) \
        if plan else graph


def _not_judging(gated: ChannelGraph, owner: dict) -> set[str]:
    """The dimensions (by their names before the gates) one of whose gates judges nothing
    in ``gated`` (the layers writing it reach other ops than the gate)."""
    judging = {m.tensor for d in gated.free_dims if d.scaled for m in d.sources}
    return {name for node, name in owner.items() if f"{JUDGES}.{node}.weight" not in judging}


def _gated(graph: ChannelGraph, plan: dict, nodes: dict, params: dict) -> fx.GraphModule:
    """A copy of the network's graph, over the same modules, with the planned gates."""
    old = graph.module
    body = copy.deepcopy(old.graph)
    new_nodes = {n.name: n for n in body.nodes}
    out = fx.GraphModule(old, body, old.__class__.__name__)
    share(old, out)
    out.meta.update(old.meta)
    for source, site in plan.items():
        name = f"{JUDGES}.{source}"
        value, like = nodes[source].meta["fxs_value"], params[site.weight]
        axis = site.axis % value.dim() - value.dim()
        out.add_submodule(name, Gate(value.shape[axis], axis, like.device, like.dtype))
        x = new_nodes[source]
        with body.inserting_after(x):
            gate = body.call_module(name, (x,))
        if site.readers is None:
            x.replace_all_uses_with(gate, delete_user_cb=lambda user, gate=gate: user is not gate)
        else:
            for reader in site.readers:
                new_nodes[reader].replace_input_with(x, gate)
    body.lint()
    out.recompile()
    return out


def judged_share(graph: ChannelGraph) -> float:
    """The share of the free channels that a scale judges (1.0 when there are none)."""
    free = sum(d.width for d in graph.free_dims)
    judged = sum(d.width for d in graph.free_dims if d.scaled and d.sources)
    return judged / free if free else 1.0


