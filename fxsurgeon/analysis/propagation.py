"""Channel-identity propagation: run the graph on tag tensors (see :mod:`fxsurgeon.channels.tags`).

:class:`Walk` is an :class:`torch.fx.Interpreter` with one job: each node's value is its
tag tensor, computed by the node's rule from the op table (:mod:`fxsurgeon.ops`). The
walk itself knows no op: it hands out tag tensors, takes the rules' records, and
handles the nodes every graph has (inputs, attributes, the output, values that hold no
tensor).

The result is a :class:`Propagation`: the union-find, the tensor axes that carry
channels (:class:`AxisRef`), the layers that read channels through weights
(:class:`Reader`), the cost terms, pins, divisibility constraints and coupling records,
from which :mod:`fxsurgeon.analysis.dimension` builds the dimensions.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_map, tree_unflatten

from ..channels.facts import Coupling, Divisor, Generations, Group, Grouped, Modulated, Pin, Size
from ..channels.nodes import describe, getattr_path, normalized, reads_values, tensors_in
from ..channels.provenance import WeightSource, constant_nodes, trace_weight
from ..channels.tags import Tags, prod
from ..channels.unionfind import UnionFind
from ..ops.table import TABLE, OpTable


@dataclass
class AxisRef:
    """One axis of a parameter or buffer whose positions carry channel identities."""

    param: str          # qualified name of the tensor (the first of its names, if shared)
    axis: int
    tags: np.ndarray    # identity per position of the axis (0: none)
    role: str           # "out" (producer), "in" (consumer), "param" (per-channel), "source"
    node: str           # the fx node of the layer that uses it
    divisor: int = 1    # grouped convs: positions = identities / groups
    init: float | str = 0.0    # what a new channel's entries start at: a number, or "he"


@dataclass
class Reader:
    """A layer that reads the channels of its input through slices of a weight."""

    node: str
    input: str          # the fx node whose value it reads
    axis: int           # the input's channel axis
    tags: np.ndarray    # identities along it, at this call
    weight: str | None  # the weight tensor read directly (None: computed from parameters)
    weight_axis: int    # the weight's axis that the input channels index
    divisor: int = 1    # grouped convolutions
    bias: str | None = None     # the bias it adds to its outputs
    weight_node: str | None = None      # the fx node computing the weight, if computed


@dataclass
class Scale:
    """A per-channel affine scale and shift (``γ·x̂ + β``) that judges its channels' liveliness."""

    weight: str
    bias: str | None
    tags: np.ndarray    # the channel of each position of γ
    homogeneous: bool = True    # what the op does after the scale keeps rescaling exact


@dataclass
class Term:
    """A cost term: ``const * prod(alive(tags) / divisor for tags, divisor in factors)``.

    A ``partial`` term covers some channels of its dimensions by design (the block a
    ``cr`` layer drops between two generations, with a negative ``const``): new channels
    never join it, and it does not keep its dimensions from growing."""

    node: str
    metric: str                                   # "params" or "flops"
    const: float
    factors: list[tuple[np.ndarray, int]] = field(default_factory=list)
    param: str | None = None
    partial: bool = False


@dataclass
class Propagation:
    """Everything the identity walk learns about a traced model."""

    uf: UnionFind
    axes: list[AxisRef] = field(default_factory=list)
    readers: dict[str, Reader] = field(default_factory=dict)
    scales: dict[str, Scale] = field(default_factory=dict)    # norm node -> its γ and β
    terms: list[Term] = field(default_factory=list)
    pins: list[Pin] = field(default_factory=list)
    divisors: list[Divisor] = field(default_factory=list)
    couplings: list[Coupling] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    out_axes: dict[str, int] = field(default_factory=dict)   # producer node -> its channel axis
    write_axes: dict[str, int] = field(default_factory=dict)   # writing layer -> its output's channel axis
    follows: set[tuple[str, str]] = field(default_factory=set)  # (writer node, norm right after it)
    position_splits: list[np.ndarray] = field(default_factory=list)  # channels cut by position
    #: attention heads found in the graph (one identity per head): each head is one channel,
    #: judged by the weights that read it (its output projection's columns)
    heads: list[np.ndarray] = field(default_factory=list)
    depthwise: set[str] = field(default_factory=set)   # convs with one group per input channel
    blockwise: set[str] = field(default_factory=set)   # dense conv/linear modules S/R can split
    grouped: list[Grouped] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # tensor -> every name it has
    sources: dict[tuple[str, tuple], WeightSource] = field(default_factory=dict)  # computed weights
    generations: dict[str, Generations] = field(default_factory=dict)   # partitioned layers
    sizes: list[Size] = field(default_factory=list)
    #: channels a computed value broadcast across them is multiplied into (or added to):
    #: which of them may go depends on the constant they hold there
    modulated: list[Modulated] = field(default_factory=list)
    #: identities no producer emits, per node that made them (an opaque op's outputs, an
    #: attribute's elements; consecutive, so a range each): a rewrite's walk makes them again
    born: dict[str, list[range]] = field(default_factory=dict)


def tensor_names(module: nn.Module) -> tuple[dict[str, str], dict[str, list[str]], dict[int, str]]:
    """Every name of every parameter and buffer -> its first name, the reverse, and each
    parameter's first name by its ``id``."""
    canonical: dict[str, str] = {}
    aliases: dict[str, list[str]] = {}
    first: dict[int, str] = {}

    def name_all(named) -> None:
        for name, t in named:
            if t is not None:
                c = first.setdefault(id(t), name)
                canonical[name] = c
                aliases.setdefault(c, []).append(name)

    name_all(module.named_parameters(remove_duplicate=False))
    params = dict(first)                # the parameters, named before any buffer
    name_all(module.named_buffers(remove_duplicate=False))
    return canonical, aliases, params


class Walk(fx.Interpreter):
    """Runs a shape-annotated GraphModule on tag tensors, asking each node's rule."""

    def __init__(self, gm: fx.GraphModule, uf: UnionFind | None = None,
                 prescribed: dict[str, np.ndarray] | None = None,
                 depthwise: set[str] | None = None, sources: dict | None = None,
                 attr_axes: dict[str, int] | None = None, born: dict[str, list[range]] | None = None,
                 resized: set[str] = frozenset(), table: OpTable = TABLE):
        super().__init__(gm)
        self.table = table
        self.modules = self.submodules
        self.tags = Tags(uf.copy() if uf is not None else UnionFind())
        self.prescribed = prescribed or {}
        # a rewrite keeps each conv's kind (None: judge by shape): it may leave a depthwise
        # conv one channel wide, or a grouped conv one input per group
        self.was_depthwise = depthwise
        self.canonical, aliases, self._param_names = tensor_names(gm)
        self.out = Propagation(self.tags.uf, aliases=aliases)
        self.attr_tags: dict[str, torch.Tensor] = {}
        self._refs: dict[tuple, AxisRef] = {}
        self.out.sources.update(sources or {})
        self.attr_axes = attr_axes or {}        # attribute tensor -> the channel axis it had
        self.born_before = born or {}           # the analysed model's born identities, by node
        self.resized = resized                  # tensors a rewrite resized (their elements moved)
        self._later: list = []                  # what rules decide once every coupling is known
        self.const: set[fx.Node] = set()        # nodes computed from parameters alone
        self.weight_only: set[fx.Node] = set()  # ... that only feed layers as their weights
        #                                         or opaque ops (they carry no channels)
        self.accounted: set[str] = set()        # parameters whose cost terms a rule wrote
        self.shaped: dict[fx.Node, torch.Tensor] = {}   # tensors whose size is read -> their tags
        self._writer: dict[int, tuple[torch.Tensor, str]] = {}   # tag tensor -> layer that wrote it
        self.writers: set[str] = set()      # the nodes of the layers that wrote a value
        self._normalized: dict[fx.Node, dict | None] = {}

    # ---- the nodes every graph has -----------------------------------------------------
    def run(self, *args):
        self.const = constant_nodes(self.module)
        for n in reversed(self.module.graph.nodes):
            if n in self.const and n.users and all(u in self.weight_only or self._reads_whole(u, n)
                                                   for u in n.users):
                self.weight_only.add(n)
        return super().run(*args)

    def _reads_whole(self, user: fx.Node, n: fx.Node) -> bool:
        """Whether ``user`` reads the constant ``n`` as a weight, or pins whatever it reads
        (an opaque op: the constant's elements then need no identities)."""
        if not user.op.startswith("call_"):
            return False
        rule = self.table.lookup(user, self.modules)
        return rule.pins_all or n in rule.weights(self, user)

    def run_node(self, n: fx.Node):
        if n in self.weight_only:        # a layer reads it through its provenance, not its tags
            if "fxs_macs" in n.meta:
                self.flops(n, n.meta["fxs_macs"])
            return tree_map(lambda v: self.tags.none(v.shape) if isinstance(v, torch.Tensor) else v,
                            self.real(n))
        value = self._run(n)
        if isinstance(value, torch.Tensor) and any(not reads_values(u) for u in n.users):
            self.shaped[n] = value          # its size is read: remember its channels
        return value

    def _run(self, n: fx.Node):
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "placeholder":
            return self._placeholder(n, next(self.args_iter, n.args[0] if n.args else None))
        if n.op == "get_attr":
            return self._get_attr(n)
        if n.op == "output":
            self.pin(args, "model output")
            return args[0]
        if not reads_values(n):
            return self._scalar(n, args, kwargs)
        return self.table.lookup(n, self.modules).propagate(self, n, args, kwargs)

    def _placeholder(self, node, value):
        """Identities for the tensors of an input, in a dict, list or tuple too (named by
        their place, ``batch['image']``)."""
        if isinstance(value, torch.Tensor):
            return self._input(node.name, value)
        leaves, spec = tree_flatten_with_path(value)
        return tree_unflatten([self._input(node.name + keystr(path), v) if isinstance(v, torch.Tensor) else v
                               for path, v in leaves], spec)

    def _input(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A model input's identities: a float tensor's channels (axis 1), pinned."""
        if value.is_floating_point() and value.dim() >= 2:
            t = self.tags.fresh(value.shape, 1, self.prescribed.get(name))
            self.out.groups.append(Group(name, self.tags.axis_vector(t, 1), "input"))
            self.pin(t, f"model input '{name}'")
            return t
        return self.tags.none(value.shape)

    def _get_attr(self, node):
        value = self.real(node)
        if not isinstance(value, torch.Tensor):
            return getattr_path(self.module, node.target)
        name = self.tensor_name(node.target)
        t = self.born(node, value.shape, again=name not in self.resized)
        self.attr_tags[name] = t
        return t

    def _scalar(self, node, args, kwargs):
        """A value with no tensor (a size, a dtype): computed again, it carries no channel."""
        try:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return self.modules[node.target](*args, **kwargs)
        except Exception:  # noqa: BLE001 - a value we cannot recompute carries no channels
            return self.real(node)

    # ---- what rules ask ----------------------------------------------------------------
    def real(self, node: fx.Node):
        """What ``node`` returns for the example inputs, as meta tensors."""
        return node.meta["fxs_value"]

    def submodule(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def real_tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer named ``name``."""
        return getattr_path(self.module, name)

    def tensor_name(self, path: str) -> str:
        """The first name of the parameter or buffer at ``path`` (tied tensors have several)."""
        return self.canonical.get(path, path)

    def node_argument(self, node: fx.Node, name: str, position: int | None = None, default=None):
        """The fx argument ``name`` of ``node`` (a Node or a literal), found by the op's
        signature (``node.normalized_arguments``), else by ``position``."""
        if node not in self._normalized:
            self._normalized[node] = normalized(node, self.module)
        norm = self._normalized[node]
        if norm is not None:
            return norm.get(name, default)
        if name in node.kwargs:
            return node.kwargs[name]
        if position is not None and len(node.args) > position:
            return node.args[position]
        return default

    def argument(self, node: fx.Node, name: str, position: int | None = None, default=None):
        """The tag value (or literal) of argument ``name``, as :meth:`node_argument` finds it."""
        raw = self.node_argument(node, name, position, _MISSING)
        if raw is _MISSING:
            return default
        return fx.node.map_arg(raw, lambda n: self.env[n])

    def sized_by(self, value) -> list[tuple[fx.Node, torch.Tensor, int | None]]:
        """The tensors (node, tag tensor, axis or None if not known) whose sizes the number
        ``value`` (an fx argument) is computed from."""
        found, stack, seen = [], [a for a in tree_flatten(value)[0] if isinstance(a, fx.Node)], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            source = _size_read(n)
            if source is not None and source[0] in self.shaped:
                found.append((source[0], self.shaped[source[0]], source[1]))
            elif reads_values(n):
                found.append((n, self.shaped.get(n), None))
            else:
                stack.extend(n.all_input_nodes)
        return found

    def describe(self, node: fx.Node) -> str:
        """A short human name of what ``node`` runs, for pin reasons."""
        return describe(node, self.modules)

    def weight_source(self, weight: fx.Node, axes: tuple[int, ...]) -> WeightSource:
        """Which parameter axes move with the weight's ``axes`` (see :mod:`fxsurgeon.channels.provenance`)."""
        key = (weight.name, axes)
        if key not in self.out.sources:
            self.out.sources[key] = trace_weight(self.module, weight, axes, self.tensor_name)
        return self.out.sources[key]

    def fresh(self, shape, axis: int, node: fx.Node | None = None) -> torch.Tensor:
        """Fresh identities along ``axis``; a node with prescribed identities (a rewritten
        producer) emits those instead."""
        vec = self.prescribed.get(node.name) if node is not None else None
        return self.tags.fresh(shape, axis, vec)

    def born(self, node: fx.Node, shape, axis: int | None = None, again: bool = True) -> torch.Tensor:
        """Fresh identities that no producer emits (an opaque op's output, an attribute's
        elements): one per position of ``axis``, else one per element. A rewrite's walk
        makes the analysed model's again at the same node where they are as many (and
        ``again``): a layer reading them then keeps its columns."""
        made = self.out.born.setdefault(node.name, [])
        old = self.born_before.get(node.name, [])
        n = prod(shape) if axis is None else shape[axis]
        k = len(made)
        ids = np.arange(old[k].start, old[k].stop) if again and k < len(old) and len(old[k]) == n \
            else self.tags.uf.new(n)            # consecutive: a range records them
        made.append(range(int(ids[0]), int(ids[0]) + n) if n else range(0))
        return self.tags.fresh_elements(shape, ids) if axis is None else self.tags.fresh(shape, axis, ids)

    # ---- what rules record -------------------------------------------------------------
    def pin(self, value, reason: str) -> None:
        """Pin every channel in the tag tensors of ``value``."""
        for t in tensors_in(value):
            if t.dtype == torch.int64 and t.numel():
                self.out.pins.append(Pin(self.tags.unique(t), reason))

    def pin_channels(self, tags: np.ndarray, reason: str) -> None:
        """Pin the channels of the identities ``tags``."""
        self.out.pins.append(Pin(tags, reason))

    def couple(self, a: np.ndarray, b: np.ndarray, label: str | None = None) -> None:
        """Make ``a[i]`` and ``b[i]`` one class; ``label`` says why (residual, gate, concat...)."""
        self.tags.couple(a, b)
        if label:
            self.coupled(np.asarray(a), label)

    def coupled(self, tags: np.ndarray, label: str) -> None:
        """Record that the channels ``tags`` were coupled with others, and why (``label``)."""
        self.out.couplings.append(Coupling(tags, label))

    def divisor(self, tags: np.ndarray, factor: int) -> None:
        """The width of the channels ``tags`` must stay a multiple of ``factor``."""
        self.out.divisors.append(Divisor(tags, factor))

    def grouped_conv(self, tags: np.ndarray, groups: int, transposed: bool) -> None:
        """The channels ``tags`` are read or written by a conv of ``groups`` groups: equal
        consecutive blocks (see :class:`Grouped`)."""
        self.out.grouped.append(Grouped(tags, groups, transposed))

    def size(self, node: fx.Node, axis: int, tags: np.ndarray) -> None:
        """The literal size at ``node``'s axis ``axis`` counts the channels ``tags`` (a
        rewrite sets it to their new number)."""
        self.out.sizes.append(Size(node.name, axis, tags))

    def split_by_position(self, tags: np.ndarray) -> None:
        """The channels ``tags`` are cut by their positions (chunks, slices)."""
        self.out.position_splits.append(tags)

    def group(self, key: str, tags: np.ndarray, kind: str) -> None:
        """The channels ``tags`` form the named dimension ``key`` (see :class:`Group`)."""
        self.out.groups.append(Group(key, tags, kind))

    def head(self, tags: np.ndarray) -> None:
        """The identities ``tags`` are attention heads, one channel each, judged by the
        weights that read them back."""
        self.out.heads.append(tags)

    def depthwise_conv(self, node: fx.Node) -> None:
        """``node`` is a convolution with one group per input channel."""
        self.out.depthwise.add(node.name)

    def blockwise_layer(self, node: fx.Node) -> None:
        """``node`` is a dense conv or linear module that cr/ca may split into blocks."""
        self.out.blockwise.add(node.name)

    def norm_after(self, writer: str, norm: fx.Node) -> None:
        """The norm ``norm`` reads what the layer ``writer`` wrote, right after it."""
        self.out.follows.add((writer, norm.name))

    def modulated(self, record: Modulated) -> None:
        """Channels combined with a computed value broadcast across them (see :class:`Modulated`)."""
        self.out.modulated.append(record)

    def partitioned(self, node: fx.Node, generations: Generations) -> None:
        """``node`` is a partitioned layer holding these generations of channels."""
        self.out.generations[node.name] = generations

    def ref(self, tensor: str, axis: int, tags, role: str, node: fx.Node, divisor: int = 1,
            init: float | str = 0.0) -> None:
        """Record that axis ``axis`` of ``tensor`` holds the channels ``tags``, position by
        position. A tensor used at several places (a module called twice, a tied weight) is
        one set of channels: its call sites are coupled, or pinned when they disagree."""
        if tags is None:
            return
        tags = np.asarray(tags)
        name = self.tensor_name(tensor)
        key = (name, axis, role == "source")
        prev = self._refs.get(key)
        if prev is None:
            self._refs[key] = r = AxisRef(name, axis, tags, role, node.name, divisor, init)
            self.out.axes.append(r)
        elif len(prev.tags) == len(tags) and prev.divisor == divisor:
            self.couple(prev.tags, tags, "shared")
        else:
            why = f"'{name}' is used by {prev.node} and {node.name} with different layouts"
            self.out.pins += [Pin(prev.tags[prev.tags != 0], why), Pin(tags[tags != 0], why)]

    def reader(self, node: fx.Node, source, axis: int, tags, weight: str | None,
               weight_axis: int, divisor: int = 1, bias: str | None = None,
               weight_node: fx.Node | None = None) -> None:
        """Record that ``node`` reads the channels of ``source`` (an fx node) through a weight
        (``None``: one computed from parameters, the value of ``weight_node``), adding
        ``bias`` to its outputs."""
        if tags is not None and isinstance(source, fx.Node):
            name = (lambda t: None if t is None else self.tensor_name(t))
            self.out.readers[node.name] = Reader(
                node.name, source.name, axis, np.asarray(tags), name(weight), weight_axis, divisor,
                name(bias), None if weight_node is None else weight_node.name)

    def scale(self, node: fx.Node, weight: str, bias: str | None, tags, homogeneous: bool = True) -> None:
        """Record that ``node`` multiplies each channel by ``weight`` (then adds ``bias``, and
        then does something ``homogeneous`` or not): its scales judge liveliness and neural
        rescaling may lift them."""
        self.ref(weight, 0, tags, "source", node)
        self.out.scales[node.name] = Scale(self.tensor_name(weight),
                                           None if bias is None else self.tensor_name(bias),
                                           np.asarray(tags), homogeneous)

    def flops(self, node: fx.Node, const: float, *factors, partial: bool = False) -> None:
        """A multiply-accumulate term ``const · prod(factor widths)`` for ``node``."""
        fs = [(np.asarray(v), d) for v, d in factors if v is not None]
        self.out.terms.append(Term(node.name, "flops", const, fs, partial=partial))

    def params(self, node: fx.Node, tensor: str, const: float, *factors, partial: bool = False) -> None:
        """A parameter term for ``tensor``, written by its rule instead of read off its axes
        (see :class:`Term` for ``partial``)."""
        fs = [(np.asarray(v), d) for v, d in factors if v is not None]
        self.out.terms.append(Term(node.name, "params", const, fs, tensor, partial))
        self.accounted.add(tensor)

    def produced(self, node: fx.Node, out: torch.Tensor, axis: int) -> torch.Tensor:
        """``node`` emits new channels along ``axis`` of ``out`` (a group of one dimension)."""
        self.out.groups.append(Group(node.name, self.tags.axis_vector(out, axis), "producer"))
        self.out.out_axes[node.name] = axis % out.dim()
        return out

    def wrote(self, out: torch.Tensor, node: fx.Node | str, axis: int | None = None) -> None:
        """``out`` was written by layer ``node`` (a norm right after it may judge it), its
        channels along ``axis`` where the layer says (a gate may follow it there)."""
        name = node if isinstance(node, str) else node.name
        self._writer[id(out)] = (out, name)
        self.writers.add(name)
        if axis is not None:
            self.out.write_axes[name] = axis % out.dim()

    def writer_of(self, t: torch.Tensor) -> str | None:
        hit = self._writer.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def opaque(self, node, args, kwargs, reason: str | None = None, axis: int | None = None):
        """Pin what ``node`` reads and emit per-element identities, pinned too; or, given the
        ``axis`` its outputs hold their channels on, one identity per position of it (a
        ViT-L's attention outputs had 4.8 million identities, a fifth of its analysis's
        memory)."""
        why = reason or (f"leaf module {self.describe(node)}" if node.op == "call_module"
                         else f"unknown op {self.describe(node)}")
        self.pin((args, kwargs), why)
        if "fxs_macs" in node.meta:
            self.flops(node, node.meta["fxs_macs"])

        def make(v):
            if not isinstance(v, torch.Tensor):
                return v
            if not v.numel():
                return self.tags.none(v.shape)
            t = self.born(node, v.shape, axis if axis is not None and v.dim() else None)
            self.pin(t, why)
            return t
        return tree_map(make, self.real(node))

    # ---- after the walk ----------------------------------------------------------------
    def later(self, decide) -> None:
        """Run ``decide()`` after the walk, when every coupling is known (a rule whose
        verdict depends on what later ops couple)."""
        self._later.append(decide)

    def finish(self, model: nn.Module) -> Propagation:
        for decide in self._later:
            decide()
        self._resolve_attrs()
        self._judge_heads()
        self._param_terms(model)
        return self.out

    def _judge_heads(self) -> None:
        """The weights reading attention heads are their liveliness sources (a head whose
        projection columns are zero adds nothing), and the layers writing them count as
        judged."""
        if not self.out.heads:
            return
        uf = self.tags.uf
        heads = uf.find(np.concatenate(self.out.heads))
        for r in list(self.out.axes):
            if r.role in ("in", "out") and len(r.tags) and np.isin(uf.find(r.tags), heads).all():
                if r.role == "in":
                    self.out.axes.append(AxisRef(r.param, r.axis, r.tags, "source", r.node))
                else:
                    self.out.follows.add((r.node, r.node))

    def _resolve_attrs(self) -> None:
        """Turn get_attr tensors that were coupled element by element into axis refs."""
        if not self.attr_tags:
            return
        explicit = {r.param for r in self.out.axes}
        uf = self.tags.uf
        uf.compress()           # (the dimensions need it flat too: one walk up the forest)
        members = np.bincount(uf.find(np.arange(uf.size)), minlength=uf.size)   # per class root
        for name, t in self.attr_tags.items():
            if name in explicit or t.dim() == 0:
                continue
            roots = uf.find(t.numpy())
            coupled = members[roots] > 1     # (an attribute read first may be its class's root)
            if not coupled.any():
                continue
            axes = [a for a in range(t.dim()) if t.shape[a] > 1 and all(
                not _varies(roots, b) for b in range(t.dim()) if b != a)]
            if not axes and name in self.attr_axes:     # one channel left: the axis it had
                axes = [self.attr_axes[name]]
            if len(axes) == 1:
                a = axes[0]
                vec = t.movedim(a, 0).reshape(t.shape[a], -1)[:, 0].numpy()
                self.out.axes.append(AxisRef(name, a, vec, "param", name))
            elif t.numel() > 1:
                self.out.pins.append(Pin(np.unique(roots[coupled]), f"tensor '{name}' couples channels "
                                                                    f"in a pattern that cannot be sliced"))

    def _param_terms(self, model: nn.Module) -> None:
        """A params cost term per parameter of ``model``: sliced axes scale, the rest is
        constant. Parameters the graph never uses (an aux head in eval mode) count as fixed."""
        by_param: dict[str, dict[int, AxisRef]] = {}
        for r in self.out.axes:
            if r.role != "source":
                by_param.setdefault(r.param, {})[r.axis] = r
        ours = self._param_names
        for name, p in model.named_parameters():
            name = ours.get(id(p), name)
            if name in self.accounted:
                continue
            refs = by_param.get(name, {})
            const = prod(s for a, s in enumerate(p.shape) if a not in refs)
            node = next(iter(refs.values())).node if refs else "<fixed>" if id(p) in ours else "<unused>"
            self.out.terms.append(Term(node, "params", const,
                                       [(r.tags, r.divisor) for r in refs.values()], name))


_MISSING = object()
#: how an exported graph reads one axis's size
_SYM_SIZE = torch.ops.aten.sym_size.int


def _size_read(n: fx.Node) -> tuple[fx.Node, int] | None:
    """``(tensor, axis)`` when ``n`` reads one axis's size: ``t.shape[k]``, ``t.size(k)``."""
    if (n.op == "call_method" and n.target == "size" or n.op == "call_function" and n.target is _SYM_SIZE) \
            and len(n.args) == 2 and isinstance(n.args[1], int):
        return n.args[0], n.args[1]
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int):
        shape = n.args[0]
        if isinstance(shape, fx.Node) and (shape.op == "call_method" and shape.target == "size" and
                                           len(shape.args) == 1 or shape.op == "call_function" and
                                           shape.target is getattr and shape.args[1:] == ("shape",)):
            return shape.args[0], n.args[1]
    return None


def _varies(roots: np.ndarray, axis: int) -> bool:
    first = np.take(roots, [0], axis=axis)
    return not (roots == first).all()


def propagate(gm: fx.GraphModule, args: tuple, model: nn.Module, before: Propagation | None = None,
              prescribed: dict[str, np.ndarray] | None = None) -> Propagation:
    """Run identity propagation over a shape-annotated GraphModule traced from ``model``.

    A rewrite passes the analysed model's propagation (``before``: its union-find is
    copied, and what it found about depthwise convs, computed weights and the channel
    axes of attribute tensors holds still) and the identities each producer now emits
    (``prescribed``), so old and new channels share identities.
    """
    if before is None:
        walk = Walk(gm)
    else:
        attr_axes = {r.param: r.axis for r in before.axes if r.node == r.param}
        walk = Walk(gm, before.uf, prescribed, before.depthwise, before.sources, attr_axes, before.born,
                    {r.param for r in before.axes})
    walk.run(*args)
    return walk.finish(model)
