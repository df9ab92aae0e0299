"""Surgery in place: the user's own model object becomes the rewritten network.

:func:`rewrite` hands back a new GraphModule. :func:`apply` instead changes the model the
graph was traced from, so its class, methods, attributes, hooks and every reference the
user holds stay: every parameter and buffer becomes the new network's of the same name
(under torch.fx and torch.export alike: both keep the model's names), each resized layer
syncs its attributes as its rule says (``in_channels``, ``num_features`` ...), a layer
whose type the rewrite changed is replaced, a layer followed by ops that fold removed
channels' constants becomes a ``Folded`` module holding both, and a literal width the
trace read from a module attribute updates that attribute (of several attributes holding
it, the one with which the forward follows). Where the model's ``forward`` cannot follow
(other ops added, a literal width in its code, a ``cr``/``ca`` network held in parts), it
refuses, naming the place and the user's line, and leaves the model as it was. Last, the
model's own ``forward`` runs on the example inputs and must give what the rewritten
network gives; otherwise everything is put back and it refuses.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass

from torch import fx, nn

from ..analysis.tracing import defaults_beyond, stateless, trace
from ..channels.modes import own_run
from ..channels.nodes import getattr_path
from ..errors import FxSurgeonError, one_line
from ..ops import TABLE
from ..ops.table import scope
from .selfcheck import difference

#: a module's own tables, never copied as attributes
_TABLES = ("_parameters", "_buffers", "_modules")


@dataclass(frozen=True)
class _Literal:
    """A literal argument of ``node`` that the rewrite changed from ``old`` to ``new``, read
    in the forward of the module ``owner`` (a qualified name, "" for the root)."""

    node: str
    owner: str
    old: int
    new: int
    line: str = ""


def _owner(node: fx.Node) -> str:
    """The qualified name of the module in whose forward ``node`` was traced ("" the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    key, value = next(reversed(stack.items()))
    path = value[0] if isinstance(value, tuple) else key      # torch.export keys by an id
    return "" if path in ("", "L['self']") else path


def _literals(a, b, read_as: dict[str, str]) -> list[tuple[int, int]] | None:
    """The integer literals in which argument structures ``a`` and ``b`` differ, or None
    when they differ otherwise (a node of ``b`` named in ``read_as`` reads as that one)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return None
        pairs = []
        for x, y in zip(a, b, strict=True):
            inner = _literals(x, y, read_as)
            if inner is None:
                return None
            pairs += inner
        return pairs
    if isinstance(a, dict) and isinstance(b, dict):
        return _literals(list(a.items()), list(b.items()), read_as) if a.keys() == b.keys() else None
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        return [] if a.name == read_as.get(b.name, b.name) else None
    if type(a) is int and type(b) is int:
        return [] if a == b else [(a, b)]
    return [] if type(a) is type(b) and a == b else None


def _line(node: fx.Node) -> str:
    """Where in the user's code ``node`` was traced (`` at file:line `code` ``), if recorded."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', node.stack_trace or "")
    user = [f for f in frames if "/torch/" not in f[0] and "/fxsurgeon/" not in f[0]]
    return f" at {user[-1][0]}:{user[-1][1]} `{user[-1][2].strip()}`" if user else ""


def _with_lines(graph, *graphs: fx.Graph) -> None:
    """Give the calls of ``graphs`` the user's lines where the trace recorded none (torch.fx
    records them only when asked): ``graph.model`` traced again with them, read node by node
    of the same name, op and target. Nothing where that trace fails."""
    if graph.frontend != "fx":          # torch.export records them
        return
    calls = [n for g in graphs for n in g.nodes if n.op.startswith("call_") and not n.stack_trace]
    if not calls:
        return
    model = graph.model
    try:
        again = trace(model, concrete_args=defaults_beyond(model, len(graph.example_inputs)) or None,
                      stack_traces=True).graph
    except Exception:  # noqa: BLE001 - the lines only name places in refusals
        return
    traced = {n.name: n for n in again.nodes}
    for n in calls:
        t = traced.get(n.name)
        if t is not None and (t.op, t.target) == (n.op, n.target) and t.stack_trace:
            n.stack_trace = t.stack_trace


def _where(node: fx.Node) -> str:
    owner = _owner(node)
    return f"{node.op} {getattr(node.target, '__name__', node.target)} ({node.name}) in " \
           f"{repr(owner) if owner else 'the model'}'s forward{_line(node)}"


def _changed_literals(old: fx.Graph, new: fx.Graph, folds: list[_Fold]) -> list[_Literal]:
    """Where ``new`` (the rewritten graph) differs from ``old`` but in the ops of ``folds``
    (each read as its layer): only in integer literals, or the model's forward cannot follow
    it (refused, naming the first place)."""
    within = {n for f in folds for n in f.nodes}
    read_as = {f.exit.name: f.layer.name for f in folds}
    a, b = list(old.nodes), [n for n in new.nodes if n not in within]
    changed = []
    for x, y in zip(a, b, strict=False):
        same_call = x.op == y.op and x.target == y.target and x.name == y.name
        pairs = _literals((x.args, x.kwargs), (y.args, y.kwargs), read_as) if same_call else None
        if pairs is None:
            raise FxSurgeonError(f"the rewritten network computes {_where(y)} where your model computes "
                                 f"{_where(x)}: its forward cannot follow; use surgery.module")
        changed += [_Literal(x.name, _owner(x), o, n, _line(x)) for o, n in pairs]
    if len(a) != len(b):
        extra = b[len(a)] if len(b) > len(a) else a[len(b)]
        verb = "adds" if len(b) > len(a) else "drops"
        raise FxSurgeonError(f"the rewritten network {verb} {_where(extra)}: your model's forward cannot "
                             f"follow; use surgery.module")
    return changed


@dataclass
class _Fold:
    """Ops the rewrite added after the layer call ``layer`` (to keep the constants of channels
    it removed): ``nodes`` in graph order, ``exit`` the one the layer's readers now read."""

    layer: fx.Node
    nodes: list[fx.Node]
    exit: fx.Node


def _folds(old: fx.Graph, new: fx.Graph) -> list[_Fold]:
    """The ops ``new`` adds to ``old``, grouped by the layer call they follow (whose readers
    now read the ops instead); refused, naming them, where they read anything but that
    call, its inputs and their own constants."""
    names = {n.name for n in old.nodes}
    added = [n for n in new.nodes if n.name not in names]
    fresh = set(added)
    folded = {n for n in new.nodes if n not in fresh and n.users and set(n.users) <= fresh}
    owner: dict[fx.Node, fx.Node] = {}

    def refuse(n: fx.Node):
        return FxSurgeonError(f"the rewrite adds {_where(n)}, which your model's forward does not have: "
                              f"use surgery.module")

    for n in added:             # in graph order: an op after a folded layer, or after such ops
        layers = {owner[a] for a in n.all_input_nodes if a in owner} | (set(n.all_input_nodes) & folded)
        if len(layers) > 1:
            raise refuse(n)
        if layers:
            owner[n] = layers.pop()
    for n in reversed(added):   # a constant, or a read of the layer's input: its readers' group
        if n not in owner:
            groups = {owner.get(u) for u in n.users}
            if len(groups) != 1 or None in groups:
                raise refuse(n)
            owner[n] = groups.pop()
    folds = []
    for layer in dict.fromkeys(owner.values()):
        nodes = [n for n in added if owner[n] is layer]
        allowed = {layer, *layer.all_input_nodes, *nodes}
        bad = next((n for n in nodes if not set(n.all_input_nodes) <= allowed), None)
        exits = [n for n in nodes if any(u not in nodes for u in n.users)]
        if bad is not None or len(exits) != 1 or layer.op != "call_module":
            raise refuse(bad or nodes[0])
        folds.append(_Fold(layer, nodes, exits[0]))
    return folds


def _folded_layer(new: fx.GraphModule, fold: _Fold) -> fx.GraphModule:
    """A module computing the layer call and the ops added after it, from the layer's inputs:
    what the user's model calls where it called the layer."""
    graph = fx.Graph()
    env = {}
    for a in fold.layer.all_input_nodes:
        env[a] = graph.placeholder(a.name)
    env[fold.layer] = graph.node_copy(fold.layer, lambda a: env[a])
    env[fold.layer].target = "layer"
    for n in fold.nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[fold.exit])
    owned = {n.target: getattr_path(new, n.target) for n in fold.nodes if n.op in ("call_module", "get_attr")}
    return fx.GraphModule({"layer": new.get_submodule(fold.layer.target), **owned}, graph, "Folded")


class Snapshot:
    """Every module's tables and plain attributes, to put the model back as it was."""

    def __init__(self, model: nn.Module):
        self.saved = [(m, {k: dict(getattr(m, k)) for k in _TABLES},
                       {k: v for k, v in vars(m).items() if k not in _TABLES}) for m in model.modules()]

    def restore(self) -> None:
        for m, tables, attrs in self.saved:
            for k, table in tables.items():
                getattr(m, k).clear()
                getattr(m, k).update(table)
            for k in [k for k in vars(m) if k not in _TABLES and k not in attrs]:
                del m.__dict__[k]
            m.__dict__.update(attrs)


def _swap_layers(model: nn.Module, new: fx.GraphModule) -> set[str]:
    """Put in ``model`` each layer ``new`` calls whose type the rewrite changed (a layer it
    unpacked), at its name; returns those names."""
    swapped = set()
    for node in new.graph.nodes:
        if node.op != "call_module":
            continue
        theirs = new.get_submodule(node.target)
        try:
            mine = model.get_submodule(node.target)
        except AttributeError:          # the front end's own (torch.export's guards)
            continue
        if type(theirs) is not type(mine):
            owner, _, leaf = node.target.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, theirs)
            swapped.add(node.target)
    return swapped


def _put_folded_layers(model: nn.Module, new: fx.GraphModule, folds: list[_Fold]) -> set[str]:
    """Put in ``model``, where it called each folded layer, a module computing the layer and
    its fold; returns the names replaced, and the names of what only the folds hold."""
    replaced = set()
    for fold in folds:
        owner, _, leaf = fold.layer.target.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, _folded_layer(new, fold))
        replaced.add(fold.layer.target)
        replaced |= {n.target for n in fold.nodes if n.op in ("call_module", "get_attr")}
    return replaced


def _take_tensors(model: nn.Module, new: nn.Module, swapped: set[str]) -> None:
    """Every parameter and buffer of ``model`` becomes ``new``'s of the same name (ties kept:
    each name of a tensor is set); layers whose tensors changed shape sync their attributes
    (``in_channels``, ``num_features`` ...) as their rule says."""
    prefixes = tuple(f"{n}." for n in swapped)
    resized: dict[str, nn.Module] = {}
    tensors = [*new.named_parameters(remove_duplicate=False), *new.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        if name in swapped or name.startswith(prefixes):
            continue
        owner, _, leaf = name.rpartition(".")
        m = model.get_submodule(owner) if owner else model
        table = m._parameters if leaf in m._parameters else m._buffers if leaf in m._buffers else None
        if table is None:
            raise FxSurgeonError(f"the rewritten network holds {name}, which your model does not: "
                                 f"use surgery.module")
        if table[leaf] is not None and table[leaf].shape != t.shape and owner not in resized:
            resized[owner] = copy.copy(m)
            resized[owner]._parameters, resized[owner]._buffers = dict(m._parameters), dict(m._buffers)
        table[leaf] = t
    for owner, old in resized.items():
        m = model.get_submodule(owner) if owner else model
        rule = TABLE.module_rule(m)
        if rule is not None:
            rule.sync(m, old)


@dataclass(frozen=True)
class _Choice:
    """The attributes ``names`` of module ``owner`` that may have given a changed literal."""

    owner: nn.Module
    names: tuple[str, ...]
    old: int
    new: int


#: most combinations of ambiguous attributes tried
_MAX_TRIES = 64


def _choices(model: nn.Module, literals: list[_Literal]) -> tuple[list[_Choice], str | None]:
    """For each literal the rewrite changed (each once), the attributes of its module holding
    the old width; and where none does, the first such literal, named by the user's line
    (the forward may compute it from a tensor's shape, as ``repeat_kv`` does its head count:
    then it follows by itself, which :func:`_follow` checks)."""
    choices, unheld = [], None
    for lit in {(lit.owner, lit.old, lit.new): lit for lit in literals}.values():
        owner = model.get_submodule(lit.owner) if lit.owner else model
        names = tuple(k for k, v in vars(owner).items() if type(v) is int and v == lit.old)
        if names:
            choices.append(_Choice(owner, names, lit.old, lit.new))
        elif unheld is None:
            where = repr(lit.owner) if lit.owner else "the model"
            unheld = (f"reads the width {lit.old} at {lit.node} (in {where}{lit.line}), which the rewrite "
                      f"makes {lit.new}, and no attribute of that module holds it")
    return choices, unheld


def _mismatch(model: nn.Module, want, inputs: tuple) -> str | None:
    """How ``model``'s forward on ``inputs`` (called as the analysis called it) differs from
    ``want``, or None where it gives the same."""
    try:
        with own_run(model):
            got = model(*inputs, **stateless(model))
    except Exception as exc:  # noqa: BLE001 - the model's own code failed on the new widths
        return f"fails ({type(exc).__name__}: {one_line(exc)})"
    d = difference(want, got)
    if d is None or d > 1:
        how = "another output structure" if d is None else f"{d:.3g}x the tolerance"
        return f"gives another function ({how})"
    return None


def _follow(model: nn.Module, new: nn.Module, inputs: tuple, found: tuple[list[_Choice], str | None]) -> None:
    """Set, of each choice's attributes, the one (tried in turn where several hold the old
    width) with which ``model`` computes what ``new`` does; refuse where none does (naming a
    changed width no attribute holds, if one is why)."""
    choices, unheld = found
    tries = list(itertools.islice(itertools.product(*[c.names for c in choices]), _MAX_TRIES))
    with own_run(new):
        want = new(*inputs)
    why = None
    for picked in tries:
        for c, name in zip(choices, picked, strict=True):
            for k in c.names:
                setattr(c.owner, k, c.new if k == name else c.old)
        why = _mismatch(model, want, inputs)
        if why is None:
            return
    if unheld:
        raise FxSurgeonError(f"your model's forward {unheld}, and after the change it {why}: its code "
                             f"cannot follow; use surgery.module")
    several = "; ".join(", ".join(c.names) for c in choices if len(c.names) > 1)
    tried = f" with each of the attributes that hold a changed width ({several})" if several else ""
    raise FxSurgeonError(f"after the change your model's forward {why}{tried}: its code cannot follow; "
                         f"use surgery.module")


def apply(graph, surgery) -> nn.Module:
    """Make ``graph.model`` (the model :func:`~fxsurgeon.analyze` traced) the network of
    ``surgery`` (a :func:`~fxsurgeon.rewrite` of that graph) in place, and return it: the
    same object, class, methods and hooks, with resized layers. Refused, naming the cause
    and changing nothing, where the model's own ``forward`` cannot compute the rewritten
    network's function (checked by running it on the example inputs)."""
    model = graph.model
    if surgery.plan.graph_token not in (None, graph.token):
        raise FxSurgeonError("this surgery was made from another ChannelGraph: apply it with the graph "
                             "it rewrote")
    if isinstance(model, fx.GraphModule):
        raise FxSurgeonError("the model is a GraphModule already: use surgery.module")
    if surgery.partitioned:
        raise FxSurgeonError(f"a {surgery.scheme} network holds layers in parts ({surgery.partitioned[0]}, "
                             f"...), which your model's forward cannot: use surgery.module")
    new = surgery.module
    _with_lines(graph, graph.module.graph, new.graph)
    folds = _folds(graph.module.graph, new.graph)
    literals = _changed_literals(graph.module.graph, new.graph, folds)
    snapshot = Snapshot(model)
    try:
        with scope(graph.ops):
            _take_tensors(model, new, _swap_layers(model, new) | _put_folded_layers(model, new, folds))
            _follow(model, new, graph.example_inputs, _choices(model, literals))
    except FxSurgeonError:
        snapshot.restore()
        raise
    except BaseException as exc:
        snapshot.restore()
        if not isinstance(exc, Exception):
            raise
        raise FxSurgeonError(f"could not change the model in place ({type(exc).__name__}: {one_line(exc)}); "
                             f"it is as it was: use surgery.module") from exc
    return model
