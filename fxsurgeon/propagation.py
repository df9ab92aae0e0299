"""Channel-identity propagation: run the graph on tensors of identities.

Every value in the graph gets a *tag tensor* of its own shape whose entries are
channel identities (0 means "no channel"). Producers (conv, linear, embedding) make
fresh identities along their output channel axis; data-movement ops run unchanged on
the tag tensor, so views, permutes, concatenations and shuffles map identities
exactly; elementwise binary ops couple the identities they line up (union-find);
everything the analyser does not know pins what it touches.

The result is a :class:`Propagation`: the union-find, the tensor axes that carry
channels (:class:`AxisRef`), the cost terms, pins, divisibility constraints and
coupling records, from which :mod:`fxsurgeon.dimension` builds the dimensions.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_map

from .ops import RELATIVE_SELECTIONS, classify, describe
from .unionfind import UnionFind


@dataclass
class AxisRef:
    """One axis of a parameter whose positions carry channel identities."""

    param: str          # qualified parameter name
    axis: int
    tags: np.ndarray    # identity per position of the axis (0: none)
    role: str           # "out" (producer), "in" (consumer), "param" (per-channel), "source"
    node: str           # the fx node of the layer that uses it
    divisor: int = 1    # grouped convs: positions = identities / groups


@dataclass
class Term:
    """A cost term: ``const * prod(alive(tags) / divisor for tags, divisor in factors)``."""

    node: str
    metric: str                                   # "params" or "flops"
    const: float
    factors: list[tuple[np.ndarray, int]] = field(default_factory=list)
    param: str | None = None


@dataclass
class Propagation:
    """Everything the identity pass learns about a traced model."""

    uf: UnionFind
    axes: list[AxisRef] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    pins: list[tuple[np.ndarray, str]] = field(default_factory=list)
    divisors: list[tuple[np.ndarray, int]] = field(default_factory=list)
    couplings: list[tuple[np.ndarray, str]] = field(default_factory=list)
    groups: list[tuple[str, np.ndarray, str]] = field(default_factory=list)  # node, tags, origin
    follows: set[tuple[str, str]] = field(default_factory=set)  # (writer node, norm right after it)
    position_splits: list[np.ndarray] = field(default_factory=list)  # channels cut by position
    depthwise: set[str] = field(default_factory=set)   # convs with one group per input channel
    blockwise: set[str] = field(default_factory=set)   # dense conv/linear modules S/R can split
    grouped: list[np.ndarray] = field(default_factory=list)  # channels around grouped convs


def _tensors(value) -> list[torch.Tensor]:
    return [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


class _Propagator:
    def __init__(self, gm: fx.GraphModule, args: tuple, uf: UnionFind | None = None,
                 prescribed: dict[str, np.ndarray] | None = None, depthwise: set[str] = frozenset()):
        self.gm = gm
        self.args = args
        self.modules = dict(gm.named_modules())
        self.uf = uf.copy() if uf is not None else UnionFind()
        self.prescribed = prescribed or {}
        self.was_depthwise = depthwise     # a rewrite may leave a depthwise conv one channel wide
        self.out = Propagation(self.uf)
        self._vec: dict[int, tuple[torch.Tensor, dict[int, np.ndarray | None]]] = {}
        self.attr_tags: dict[str, torch.Tensor] = {}
        self.explicit_params: set[str] = set()
        self._unique: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        self._writer: dict[int, tuple[torch.Tensor, str]] = {}   # tag tensor -> layer that wrote it

    # ---- tag tensors ---------------------------------------------------------------
    def fresh(self, shape, axis: int, node: fx.Node | None = None) -> torch.Tensor:
        """Fresh identities along ``axis``, constant along every other axis; a node with
        prescribed identities (a rewritten producer) emits those instead."""
        shape = tuple(shape)
        axis %= len(shape)
        vec = self.prescribed.get(node.name) if node is not None else None
        vec = self.uf.new(shape[axis]) if vec is None else np.asarray(vec, dtype=np.int64)
        return self.structured(vec, shape, axis)

    def fresh_elements(self, shape) -> torch.Tensor:
        """A fresh identity for every element (they are all distinct)."""
        ids = self.uf.new(_prod(shape))
        t = torch.from_numpy(ids).view(tuple(shape))
        self._unique[id(t)] = (t, ids)
        return t

    @staticmethod
    def none(shape) -> torch.Tensor:
        return torch.zeros((), dtype=torch.int64).expand(tuple(shape))

    def structured(self, vec: np.ndarray, shape, axis: int) -> torch.Tensor:
        """``vec`` along ``axis``, expanded (no copy) to ``shape``; remembered as structured."""
        view = [1] * len(shape)
        view[axis] = len(vec)
        t = torch.from_numpy(np.ascontiguousarray(vec)).view(view).expand(tuple(shape))
        self._vec[id(t)] = (t, {axis % len(shape): vec})
        return t

    def axis_vector(self, t: torch.Tensor, axis: int) -> np.ndarray | None:
        """The identities along ``axis`` if they are the same classes at every other index."""
        if t.dim() == 0:
            return None
        axis %= t.dim()
        hit = self._vec.get(id(t))
        if hit is not None and hit[0] is t and axis in hit[1]:
            return hit[1][axis]
        s = self._structure(t, t.dim())
        if s is not None and s[0] == axis:
            return s[1]
        m = t.movedim(axis, 0).reshape(t.shape[axis], -1)
        if m.shape[1] == 0:
            vec = None
        elif bool((m == m[:, :1]).all()):
            vec = m[:, 0].numpy().copy()
        else:
            roots = self.uf.find(m.numpy())
            vec = m[:, 0].numpy().copy() if (roots == roots[:, :1]).all() else None
        if hit is None or hit[0] is not t:
            hit = (t, {})
            self._vec[id(t)] = hit
        hit[1][axis] = vec
        return vec

    def varies_along(self, t: torch.Tensor, axis: int) -> bool:
        """Whether the channel classes in ``t`` change along ``axis``."""
        if t.dim() == 0 or t.shape[axis] <= 1:
            return False
        first = t.narrow(axis, 0, 1)
        if bool((t == first).all()):
            return False
        return not bool((self.uf.find(t.numpy()) == self.uf.find(first.numpy())).all())

    # ---- records -------------------------------------------------------------------
    def unique(self, t: torch.Tensor) -> np.ndarray:
        """The distinct identities in ``t`` (no zeros), cached per tag tensor."""
        hit = self._unique.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        s = self._structure(t, t.dim())
        tags = np.unique(s[1]) if s is not None else torch.unique(t).numpy()
        tags = tags[tags != 0]
        self._unique[id(t)] = (t, tags)
        return tags

    def pin(self, value, reason: str) -> None:
        for t in _tensors(value):
            if t.dtype == torch.int64 and t.numel():
                self.out.pins.append((self.unique(t), reason))

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        self.uf.union(np.asarray(a).ravel(), np.asarray(b).ravel())

    def ref(self, param: str, axis: int, tags, role: str, node: fx.Node, divisor: int = 1):
        if tags is None:
            return
        self.out.axes.append(AxisRef(param, axis, np.asarray(tags), role, node.name, divisor))
        self.explicit_params.add(param)

    def flops(self, node: fx.Node, const: float, *factors) -> None:
        fs = [(np.asarray(v), d) for v, d in factors if v is not None]
        self.out.terms.append(Term(node.name, "flops", const, fs))

    # ---- main loop -----------------------------------------------------------------
    def run(self, model: nn.Module) -> Propagation:
        env: dict[fx.Node, object] = {}
        placeholders = iter(self.args)
        for node in self.gm.graph.nodes:
            kind = classify(node, self.modules)
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if kind == "placeholder":
                env[node] = self.placeholder(node, next(placeholders, None))
            else:
                handler = getattr(self, "do_" + kind.split(":")[0])
                env[node] = handler(node, kind, args, kwargs)
        self.resolve_attrs()
        self.param_terms(model)
        return self.out

    def real(self, node: fx.Node):
        return node.meta["fxs_value"]

    def placeholder(self, node, value):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.dim() >= 2:
                t = self.fresh(value.shape, 1, node)
                self.out.groups.append((node.name, self.axis_vector(t, 1), "input"))
                self.pin(t, f"model input '{node.name}'")
                return t
            return self.none(value.shape)
        return value

    def do_get_attr(self, node, kind, args, kwargs):
        value = self.real(node)
        if not isinstance(value, torch.Tensor):
            return getattr_path(self.gm, node.target)
        t = self.fresh_elements(value.shape)
        self.attr_tags[node.target] = t
        return t

    def do_output(self, node, kind, args, kwargs):
        self.pin(args, "model output")

    def do_scalar(self, node, kind, args, kwargs):
        try:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return self.modules[node.target](*args, **kwargs)
        except Exception:  # noqa: BLE001 - a value we cannot recompute carries no channels
            return self.real(node)

    def do_opaque(self, node, kind, args, kwargs, reason: str | None = None):
        why = reason or (f"leaf module {describe(node, self.modules)}" if node.op == "call_module"
                         else f"unknown op {describe(node, self.modules)}")
        self.pin((args, kwargs), why)
        if "fxs_macs" in node.meta:
            self.flops(node, node.meta["fxs_macs"])

        def make(v):
            if not isinstance(v, torch.Tensor):
                return v
            if not v.numel():
                return self.none(v.shape)
            t = self.fresh_elements(v.shape)
            self.pin(t, why)
            return t
        return tree_map(make, self.real(node))

    def do_unary(self, node, kind, args, kwargs):
        return args[0] if args else next(iter(kwargs.values()))

    def do_prelu(self, node, kind, args, kwargs):
        x = args[0]
        m = self.modules[node.target]
        if m.weight.numel() > 1:
            vec = self.axis_vector(x, 1)
            if vec is None:
                return self.do_opaque(node, kind, args, kwargs)
            self.ref(f"{node.target}.weight", 0, vec, "param", node)
        return x

    def do_binary(self, node, kind, args, kwargs):
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            return a if isinstance(a, torch.Tensor) else b
        label = "residual" if node.target in (operator.add, operator.sub, operator.iadd,
                                               torch.add, torch.sub, "add", "add_",
                                               "sub", "sub_") else "gate"
        out_shape = tuple(torch.broadcast_shapes(a.shape, b.shape))
        fast = self._binary_structured(a, b, out_shape, label)
        if fast is not None:
            return fast
        return self._binary_general(node, a, b, out_shape, label)

    def _structure(self, t: torch.Tensor, nd: int):
        """(axis in broadcast coordinates, vector) of a tag tensor that varies along one axis.

        Known from the cache, or read off the strides: an expanded vector, however
        permuted, has stride 0 on every axis of size > 1 but one.
        """
        hit = self._vec.get(id(t))
        found = [(len(v), a, v) for a, v in hit[1].items() if v is not None] \
            if hit is not None and hit[0] is t else []
        if not found:
            moving = [a for a in range(t.dim()) if t.shape[a] > 1 and t.stride(a) != 0]
            if len(moving) != 1:
                return None
            a = moving[0]
            vec = t[tuple(slice(None) if k == a else 0 for k in range(t.dim()))].numpy()
            found = [(len(vec), a, vec)]
        _, axis, vec = max(found, key=lambda f: f[0])
        return axis + nd - t.dim(), vec

    def _binary_structured(self, a, b, out_shape, label):
        nd = len(out_shape)
        sa, sb = self._structure(a, nd), self._structure(b, nd)
        if sa is None or sb is None or sa[0] != sb[0]:
            return None
        axis, va, vb = sa[0], sa[1], sb[1]
        if len(va) == len(vb):
            self.couple(va, vb)
            self.out.couplings.append((va, label))
            return self.structured(va, out_shape, axis)
        if len(vb) == 1:        # b is broadcast across a's channels: shared, not coupled
            return self.structured(va, out_shape, axis)
        if len(va) == 1:
            return self.structured(vb, out_shape, axis)
        return None

    def _binary_general(self, node, a, b, out_shape, label):
        nd = len(out_shape)
        shared = []
        for t, other in ((a, b), (b, a)):
            pad = nd - t.dim()
            bcast = [k for k in range(nd) if out_shape[k] > 1 and (k < pad or t.shape[k - pad] == 1)]
            o = other.expand(out_shape)
            shared.append(any(self.varies_along(o, k) for k in bcast))
        if shared[0] and shared[1]:
            return self.do_opaque(node, "opaque", (a, b), {},
                                  reason=f"outer-product broadcast {describe(node, self.modules)}")
        if shared[0]:
            return b.expand(out_shape)
        if shared[1]:
            return a.expand(out_shape)
        ea, eb = a.expand(out_shape).reshape(-1), b.expand(out_shape).reshape(-1)
        self.couple(ea.numpy(), eb.numpy())      # union copes with repeated pairs
        for t in (a, b):   # every pair is now one class: a structured operand stands for both
            st = self._structure(t, nd)
            if st is not None and t.shape[st[0] - nd + t.dim()] == out_shape[st[0]]:
                self.out.couplings.append((st[1], label))
                return self.structured(st[1], out_shape, st[0])
        self.out.couplings.append((ea.numpy(), label))
        return torch.where(a.expand(out_shape) != 0, a.expand(out_shape), b.expand(out_shape))

    def do_move(self, node, kind, args, kwargs):
        if node.target in (torch.cat, torch.concat, torch.concatenate):
            return self._cat(node, args, kwargs)
        if node.target not in _SHAPE_ONLY and _tensors((args[1:], kwargs)):
            # a tensor used as an index holds identities here, not the real indices
            return self.do_opaque(node, kind, args, kwargs,
                                  reason=f"indexing with a tensor at {describe(node, self.modules)}")
        out = self._run_on_tags(node, args, kwargs)
        x = args[0] if args else next(iter(kwargs.values()))
        if not isinstance(x, torch.Tensor):
            return out
        if node.target in ("view", "reshape", torch.reshape, "unflatten", torch.unflatten):
            self._check_reshape(node, x, out, args)
        elif node.target in RELATIVE_SELECTIONS:
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            if self.varies_along(x, dim % x.dim()):      # equal parts of a channel axis
                self.out.divisors.append((self.unique(x), args[1]))
                self.out.position_splits.append(self.unique(x))
        elif node.target in (operator.getitem, torch.narrow, "narrow", torch.split, "split"):
            self._check_selection(node, x, out, args)
        return out

    def _cat(self, node, args, kwargs):
        parts = list(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        ref = parts[0]
        dim %= ref.dim()
        vecs = [self.axis_vector(p, dim) if p.shape[dim] else np.zeros(0, np.int64) for p in parts]
        for p, v in zip(parts, vecs, strict=True):
            if len(parts) > 1 and p.numel():
                self.out.couplings.append((v if v is not None else self.unique(p), "concat"))
        if all(v is not None for v in vecs):
            shape = list(ref.shape)
            shape[dim] = sum(len(v) for v in vecs)
            return self.structured(np.concatenate(vecs), shape, dim)
        return torch.cat(parts, dim)

    def _run_on_tags(self, node, args, kwargs):
        fn = (node.target if node.op == "call_function" else
              self.modules[node.target] if node.op == "call_module" else
              (lambda s, *a, **k: getattr(s, _TAG_METHODS.get(node.target, node.target))(*a, **k)))
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, NotImplementedError):
            # some data-movement kernels have no int64 version: float64 holds ids exactly
            as_f = tree_map(lambda v: v.double() if isinstance(v, torch.Tensor) else v, (args, kwargs))
            out = fn(*as_f[0], **as_f[1])
            return tree_map(lambda v: v.round().long() if isinstance(v, torch.Tensor) else v, out)

    def _check_reshape(self, node, x, out, args):
        """Pin a channel axis whose new sizes are all literals; literal factors divide."""
        if node.target in ("unflatten", torch.unflatten):
            return
        raw = node.args[1:]
        if len(raw) == 1 and isinstance(raw[0], (tuple, list)):
            raw = raw[0]
        if len(raw) != out.dim():
            return
        carrying = [k for k in range(out.dim()) if self.varies_along(out, k)]
        literal = [k for k in carrying if isinstance(raw[k], int) and raw[k] != -1]
        if carrying and len(literal) == len(carrying):
            self.pin(x, f"constant reshape size at {describe(node, self.modules)}")
        elif literal:
            self.out.divisors.append((self.unique(x), _prod(raw[k] for k in literal)))

    def _check_selection(self, node, x, out, args):
        """Literal bounds on a channel axis fix its width: pin what they cut or split."""
        if node.target in (torch.split, "split"):
            sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            if _is_literal(sizes) and self.varies_along(x, dim % x.dim()):
                self.pin(x, f"constant split sizes on a channel axis at {describe(node, self.modules)}")
            return
        bounds = node.args[2:] if node.target in (torch.narrow, "narrow") else node.args[1:]
        if not any(_is_literal(b) for b in _literals(bounds)):
            return
        kept = set()
        for t in _tensors(out):
            kept |= set(self.uf.find(self.unique(t)).tolist())
        if not set(self.uf.find(self.unique(x)).tolist()) <= kept:
            self.pin(x, f"constant slice of a channel axis at {describe(node, self.modules)}")

    def do_spatial(self, node, kind, args, kwargs):
        x = args[0]
        shape = _tensors(self.real(node))[0].shape
        vec = self.axis_vector(x, 1)
        if vec is None:
            if not bool((x == 0).all()):
                return self.do_opaque(node, kind, args, kwargs,
                                      reason="spatial op on unstructured channels "
                                         f"{describe(node, self.modules)}")
            return self.none(shape)
        out = self.structured(vec, shape, 1)
        return tree_map(lambda v: out if isinstance(v, torch.Tensor) and v.shape == shape else
                        (self.none(v.shape) if isinstance(v, torch.Tensor) else v), self.real(node))

    def do_reduce(self, node, kind, args, kwargs):
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 and isinstance(args[2], bool) else kwargs.get("keepdim", False)
        dims = list(range(x.dim())) if dims is None else [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % x.dim() for d in dims)
        if any(self.varies_along(x, d) for d in dims):
            self.pin(x, f"reduction over the channel axis at {describe(node, self.modules)}")
        out = x
        for d in reversed(dims):
            out = out.narrow(d, 0, 1) if keep else out.select(d, 0)
        return out

    def do_softmax(self, node, kind, args, kwargs):
        x = args[0]
        dim = (self.modules[node.target].dim if node.op == "call_module" else
               args[1] if len(args) > 1 else kwargs.get("dim"))
        if dim is None or self.varies_along(x, dim % x.dim()):
            self.pin(x, f"softmax over the channel axis at {describe(node, self.modules)}")
        return x

    def do_matmul(self, node, kind, args, kwargs):
        """``a @ b``: the contracted axis couples, b's columns carry on; ``x @ W`` produces."""
        a, b = args[0], args[1]
        out_shape = _tensors(self.real(node))[0].shape
        where = describe(node, self.modules)
        if a.dim() < 2 or b.dim() < 2 or self.varies_along(a, a.dim() - 2):
            return self.do_opaque(node, kind, args, kwargs,
                                  reason=f"matmul with channels on its rows at {where}")
        w = node.args[1]
        if isinstance(w, fx.Node) and w.op == "get_attr" and b.dim() == 2:
            # x @ W: W is (in, out), a linear layer with the weight transposed
            return self._produce(node, a, w.target, None, tuple(b.shape), 1, "linear", True)
        a_k, b_k = self.varies_along(a, a.dim() - 1), self.varies_along(b, b.dim() - 2)
        k_vec = None
        if a_k and b_k:
            k_vec, kb = self.axis_vector(a, -1), self.axis_vector(b, -2)
            if k_vec is None or kb is None:
                return self.do_opaque(node, kind, args, kwargs,
                                      reason=f"matmul over a split channel axis at {where}")
            self.couple(k_vec, kb)
            self.out.couplings.append((k_vec, "contraction"))   # read without a weight
        elif a_k or b_k:
            self.pin(a if a_k else b, f"matmul contracts channels with an operand without them at {where}")
        j_vec = None
        if self.varies_along(b, b.dim() - 1):
            j_vec = self.axis_vector(b, -1)
            if j_vec is None:
                return self.do_opaque(node, kind, args, kwargs,
                                      reason=f"matmul over a split channel axis at {where}")
        k, j = a.shape[-1], b.shape[-1]
        self.flops(node, _prod(out_shape) // j * (1 if k_vec is not None else k)
                   * (1 if j_vec is not None else j), (k_vec, 1), (j_vec, 1))
        if j_vec is not None:
            return self.structured(j_vec, out_shape, len(out_shape) - 1)
        return self.none(out_shape)

    # ---- normalisations ------------------------------------------------------------
    def do_norm(self, node, kind, args, kwargs):
        x = args[0]
        flavour = kind.split(":")[1]
        if node.op == "call_module":
            m = self.modules[node.target]
            params = {"weight": f"{node.target}.weight" if getattr(m, "weight", None) is not None else None,
                      "bias": f"{node.target}.bias" if getattr(m, "bias", None) is not None else None}
            groups = getattr(m, "num_groups", None)
            nshape = getattr(m, "normalized_shape", None)
        else:
            pos = {"batch": (3, 4), "layer": (2, 3), "group": (2, 3)}[flavour]
            names = ["weight", "bias"]
            params = {}
            for name, p in zip(names, pos, strict=True):
                arg = node.args[p] if len(node.args) > p else node.kwargs.get(name)
                params[name] = arg.target if isinstance(arg, fx.Node) and arg.op == "get_attr" else None
            groups = args[1] if flavour == "group" else None
            nshape = args[1] if flavour == "layer" else None
        axis = x.dim() - 1 if flavour == "layer" else 1
        vec = self.axis_vector(x, axis)
        if flavour == "layer":
            axes = range(x.dim() - len(nshape), x.dim())
            if any(self.varies_along(x, k) for k in axes):
                self.pin(x, f"LayerNorm statistics over the channel axis at {describe(node, self.modules)}")
            if len(nshape) != 1:
                return x
        elif flavour == "group" and groups not in (None, x.shape[1]):
            self.pin(x, f"GroupNorm statistics over channel groups at {describe(node, self.modules)}")
        if vec is None:
            if not bool((x == 0).all()):
                self.pin(x, f"normalisation of unstructured channels at {describe(node, self.modules)}")
            return x
        for param in params.values():
            if param is not None:
                self.ref(param, 0, vec, "param", node)
        if flavour == "batch" and params["weight"] is not None:
            self.ref(params["weight"], 0, vec, "source", node)
            writer = self._writer.get(id(x))
            if writer is not None and writer[0] is x and _sole_reader(node, writer[1]):
                self.out.follows.add((writer[1], node.name))
        return x

    # ---- producers -----------------------------------------------------------------
    def do_producer(self, node, kind, args, kwargs):
        m = self.modules[node.target]
        flavour = kind.split(":")[1]
        weight = f"{node.target}.weight"
        bias = f"{node.target}.bias" if getattr(m, "bias", None) is not None else None
        if flavour == "embedding":
            y = _tensors(self.real(node))[0]
            out = self.fresh(y.shape, -1, node)
            self.ref(weight, 1, self.axis_vector(out, -1), "out", node)
            return self._produced(node, out, -1)
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        out = self._produce(node, args[0], weight, bias, tuple(m.weight.shape),
                            getattr(m, "groups", 1), flavour, transposed)
        if (not transposed and getattr(m, "groups", 1) == 1 and node.name not in self.out.depthwise
                and getattr(m, "padding_mode", "zeros") == "zeros"
                and not isinstance(getattr(m, "padding", 0), str)):
            self.out.blockwise.add(node.name)
        return out

    def do_fproducer(self, node, kind, args, kwargs):
        wnode = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if not (isinstance(wnode, fx.Node) and wnode.op == "get_attr"):
            return self.do_opaque(node, kind, args, kwargs)
        bnode = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = bnode.target if isinstance(bnode, fx.Node) and bnode.op == "get_attr" else None
        flavour = kind.split(":")[1]
        groups = (node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)) \
            if flavour == "conv" else 1
        shape = tuple(self.real(wnode).shape)
        return self._produce(node, args[0], wnode.target, bias, shape, groups, flavour, False)

    def _produce(self, node, x, weight, bias, wshape, groups, flavour, transposed):
        y = _tensors(self.real(node))[0]
        axis = -1 if flavour == "linear" else 1
        vin = self.axis_vector(x, axis)
        if vin is None:
            self.pin(x, f"input of {describe(node, self.modules)} is not channel-structured")
        out = self.fresh(y.shape, axis, node)
        vout = self.axis_vector(out, axis)
        out_axis, in_axis = (1, 0) if transposed else (0, 1)
        n_in = x.shape[axis]
        depthwise = vin is not None and groups == n_in and (groups > 1 or node.name in self.was_depthwise)
        if depthwise:
            self.out.depthwise.add(node.name)
            self.couple(np.repeat(vin, len(vout) // groups), vout)
        elif groups > 1 and vin is not None:
            self.out.divisors.append((vin, groups))
            self.out.divisors.append((vout, groups))
            self.out.grouped += [vin, vout]
        self.ref(weight, out_axis, vout, "out", node, groups if transposed else 1)
        if not depthwise:
            self.ref(weight, in_axis, vin, "in", node, 1 if transposed else groups)
        if bias is not None:
            self.ref(bias, 0, vout, "param", node)
        kernel = _prod(wshape[2:])
        if transposed:
            spatial = _prod(x.shape) // n_in
            self.flops(node, spatial * kernel / groups, (vin, 1), (vout, 1))
        else:
            spatial = _prod(y.shape) // y.shape[axis]
            ins = None if depthwise else vin
            const = spatial * kernel * (n_in // groups if depthwise or vin is None else 1 / groups)
            self.flops(node, const, (vout, 1), (ins, 1))
        self._writer[id(out)] = (out, node.name)
        if depthwise:   # its outputs are its inputs' channels: no new group of its own
            return out
        return self._produced(node, out, axis)

    def _produced(self, node, out, axis):
        self.out.groups.append((node.name, self.axis_vector(out, axis), "producer"))
        return out

    def do_mha(self, node, kind, args, kwargs):
        m: nn.MultiheadAttention = self.modules[node.target]
        q, k = (self.real(node.args[i]) if len(node.args) > i else None for i in (0, 1))
        q = q if q is not None else self.real(node.kwargs["query"])
        k = k if k is not None else self.real(node.kwargs["key"])
        e = m.embed_dim
        n = 1 if q.dim() == 2 else q.shape[0 if m.batch_first else 1]
        rq, rk = q.numel() // e, k.numel() // m.kdim
        macs = rq * e * e + rk * e * m.kdim + rk * e * m.vdim + 2 * rq * (rk // n) * e + rq * e * e
        node.meta["fxs_macs"] = macs
        return self.do_opaque(node, kind, args, kwargs,
                              reason=f"nn.MultiheadAttention keeps its embed_dim ({node.target})")

    # ---- parameters ------------------------------------------------------------------
    def resolve_attrs(self) -> None:
        """Turn get_attr tensors that were coupled element by element into axis refs."""
        for name, t in self.attr_tags.items():
            if name in self.explicit_params or t.dim() == 0:
                continue
            roots = self.uf.find(t.numpy())
            coupled = roots != t.numpy()
            if not coupled.any():
                continue
            axes = [a for a in range(t.dim()) if t.shape[a] > 1 and all(
                not _varies(roots, b) for b in range(t.dim()) if b != a)]
            if len(axes) == 1:
                a = axes[0]
                vec = t.movedim(a, 0).reshape(t.shape[a], -1)[:, 0].numpy()
                self.out.axes.append(AxisRef(name, a, vec, "param", name))
            elif t.numel() > 1:
                self.out.pins.append((np.unique(roots[coupled]),
                                      f"parameter '{name}' couples channels in a pattern "
                                      f"that cannot be sliced"))

    def param_terms(self, model: nn.Module) -> None:
        """A params cost term per parameter of ``model``: sliced axes scale, the rest is
        constant. Parameters the graph never uses (an aux head in eval mode) count as fixed."""
        by_param: dict[str, dict[int, AxisRef]] = {}
        for r in self.out.axes:
            if r.role != "source":
                by_param.setdefault(r.param, {})[r.axis] = r
        used = {name for name, _ in self.gm.named_parameters()}
        for name, p in model.named_parameters():
            refs = by_param.get(name, {})
            const = _prod(s for a, s in enumerate(p.shape) if a not in refs)
            node = next(iter(refs.values())).node if refs else "<fixed>" if name in used else "<unused>"
            self.out.terms.append(Term(node, "params", const,
                                       [(r.tags, r.divisor) for r in refs.values()], name))


#: move ops whose second tensor only lends its shape
_SHAPE_ONLY = {"expand_as", "view_as", "reshape_as"}

#: tag tensors are often expanded views: view() becomes reshape(), which copies when needed
_TAG_METHODS = {"view": "reshape", "view_as": "reshape_as"}


def _sole_reader(norm: fx.Node, writer: str) -> bool:
    """Whether everything ``writer`` emits reaches ``norm`` and nothing else: each node
    on the way (unary ops only, as the shared tag tensor shows) has one user."""
    src = norm.args[0] if norm.args else None
    while isinstance(src, fx.Node) and len(src.users) == 1:
        if src.name == writer:
            return True
        src = src.args[0] if src.args else None
    return False


def _varies(roots: np.ndarray, axis: int) -> bool:
    first = np.take(roots, [0], axis=axis)
    return not (roots == first).all()


def _is_literal(v) -> bool:
    if isinstance(v, (list, tuple)):
        return bool(v) and all(_is_literal(u) for u in v)
    return isinstance(v, int) and not isinstance(v, bool)


def _literals(value):
    out = []
    for v in tree_flatten(value)[0]:
        if isinstance(v, slice):
            out += [v.start, v.stop, v.step]
        else:
            out.append(v)
    return out


def getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def propagate(gm: fx.GraphModule, args: tuple, model: nn.Module, uf: UnionFind | None = None,
              prescribed: dict[str, np.ndarray] | None = None,
              depthwise: set[str] = frozenset()) -> Propagation:
    """Run identity propagation over a shape-annotated GraphModule traced from ``model``.

    A rewrite passes the analysed model's union-find (``uf``, copied) and the identities
    each producer now emits (``prescribed``) and the convs that were depthwise, so old
    and new channels share identities.
    """
    return _Propagator(gm, args, uf, prescribed, depthwise).run(model)
