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


def add_judges(graph: ChannelGraph, skip=frozenset(), **analyze_kwargs) -> Judged:
    """``graph``'s network with a gate on every free dimension no scale judges (but those
    named in ``skip``), analysed (with ``analyze_kwargs``, as the graph was)."""
    index = {d.name: k for k, d in enumerate(graph.dims)}
    targets = {index[d.name]: d.name for d in unjudged_dims(graph) if d.name not in skip}
    if not targets:
        return Judged(graph)
    sites, why = _sites(graph, targets)
    nodes = {n.name: n for n in graph.module.graph.nodes}
    plan: dict[str, tuple[str, int, list]] = {}     # input node -> (dimension, axis, readers)
    for k, name in targets.items():
        if k in why:
            continue
        if not sites.get(k):
            why[k] = "no layer reads it through a weight"
            continue
        for source, readers in sites[k].items():
            consumers = {r.node for r in readers}
            others = [u.name for u in value_users(nodes[source]) if u.name not in consumers]
            axes = {r.axis for r in readers}
            if others:
                why[k] = f"its channels reach {others[0]} as well as the layers that read them"
            elif len(axes) > 1:
                why[k] = f"the layers reading {source} take its channels on different axes"
            if k in why:
                break
        else:
            for source, readers in sites[k].items():
                plan[source] = (name, readers[0].axis, readers)
    params = dict(graph.module.named_parameters())
    gates = {f"{JUDGES}.{source}": (name, _weight_of(params, readers))
             for source, (name, _, readers) in plan.items()}
    gated = analyze(_gated(graph, plan, nodes, gates, params), graph.example_inputs,
                    **analyze_kwargs) if plan else graph
    unjudged = {targets[k]: reason for k, reason in why.items()}
    judging = {m.tensor for d in gated.free_dims if d.scaled for m in d.sources}
    for gate, (name, _) in gates.items():
        if f"{gate}.weight" not in judging:
            unjudged[name] = "the layers writing it reach other ops than its gate"
    return Judged(gated, gates, unjudged)


def _weight_of(params: dict, readers) -> str:
    """The weight of a layer a gate feeds: the gate takes its device and dtype and joins
    its optimizer group."""
    return next((r.weight for r in readers if r.weight in params), next(iter(params)))


def _gated(graph: ChannelGraph, plan: dict, nodes: dict, gates: dict, params: dict) -> fx.GraphModule:
    """A copy of the network's graph, over the same modules, with the planned gates."""
    old = graph.module
    body = copy.deepcopy(old.graph)
    new_nodes = {n.name: n for n in body.nodes}
    out = fx.GraphModule(old, body, old.__class__.__name__)
    share(old, out)
    out.meta.update(old.meta)
    for source, (_, axis, readers) in plan.items():
        name = f"{JUDGES}.{source}"
        value, like = nodes[source].meta["fxs_value"], params[gates[name][1]]
        axis = axis % value.dim() - value.dim()
        out.add_submodule(name, Gate(value.shape[axis], axis, like.device, like.dtype))
        x = new_nodes[source]
        with body.inserting_after(x):
            gate = body.call_module(name, (x,))
        for r in readers:
            new_nodes[r.node].replace_input_with(x, gate)
    body.lint()
    out.recompile()
    return out


def judged_share(graph: ChannelGraph) -> float:
    """The share of the free channels that a scale judges (1.0 when there are none)."""
    free = sum(d.width for d in graph.free_dims)
    judged = sum(d.width for d in graph.free_dims if d.scaled and d.sources)
    return judged / free if free else 1.0


