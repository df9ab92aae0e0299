"""Dimensions: sets of coupled channel classes that must change width together.

A *class* is a union-find set of channel identities (one channel, seen everywhere it
goes). A *dimension* groups the classes that some producer emits together: the 256
classes of a ResNet stage's trunk form one dimension, while each part of a DenseNet
concatenation stays its own. Every tensor axis that carries channels of a dimension
is one of its :class:`Member` s.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..channels.facts import CONTRACTION
from ..channels.unionfind import UnionFind
from .propagation import Propagation


@dataclass
class Member:
    """A parameter axis whose positions hold channels of one dimension.

    ``positions[i]`` along ``axis`` of ``tensor`` holds channel ``channels[i]`` of the
    dimension. For a grouped convolution's input axis (``divisor`` = groups) the
    positions index the input channels, ``divisor`` of them per weight slice.
    """

    tensor: str
    role: str        # "out": producer weight, "in": consumer weight, "param": per-channel
    node: str
    axis: int
    positions: np.ndarray
    channels: np.ndarray
    divisor: int = 1

    @property
    def span(self) -> str:
        """The positions in short form: ``[a:b]`` when contiguous and in channel order."""
        p, c = self.positions, self.channels
        if len(p) and np.array_equal(p, np.arange(p[0], p[0] + len(p))) and \
                np.array_equal(c, np.arange(len(c))):
            return f"[{p[0]}:{p[0] + len(p)}]"
        return f"{len(p)} positions"


@dataclass
class Dimension:
    """A set of coupled channels with one width; ``pinned`` is None or why it is fixed."""

    name: str
    width: int
    kind: str
    pinned: str | None
    reasons: list[str]
    members: list[Member]
    producers: list[str]
    multiple_of: int = 1
    split_by_position: bool = False   # a chunk cuts it in the middle: which channel goes
    #                                   where depends on the width
    #: grouped (not depthwise) convolutions read or write it: its channels form ``groups``
    #: equal blocks, ``slots[c]`` the block of channel ``c``; or ``grouping`` says why those
    #: convolutions keep its width (and ``slots`` is None)
    groups: int = 1
    slots: np.ndarray | None = field(default=None, repr=False)
    grouping: str | None = None
    repeated: bool = False            # a producer emits some channel twice (depthwise
    #                                   multiplier feeding a residual add)
    unit: int = 1                     # positions each channel takes in a row in its
    #                                   producers' outputs (an attention head's head_dim),
    #                                   the most of any producer (a grouped-query group
    #                                   takes n_rep heads in q, one in k and v)
    scaled: bool = False              # every layer writing it feeds its own BatchNorm and
    #                                   nothing else: γ = 0 makes a channel constant
    classes: np.ndarray = field(default=None, repr=False)
    #: why it keeps its width though free (it may lose dead channels), or None
    held: str | None = None

    @property
    def free(self) -> bool:
        return self.pinned is None

    @property
    def consumers(self) -> list[str]:
        return sorted({m.node for m in self.members if m.role == "in"})

    @property
    def sources(self) -> list[Member]:
        """Liveliness sources: per-channel affine scales (BatchNorm γ) of this dimension."""
        return [m for m in self.members if m.role == "source"]

    def __repr__(self) -> str:
        state = "free" if self.free else f"pinned: {self.pinned}"
        return f"Dimension({self.name!r}, width={self.width}, {self.kind}, {state})"


def _name(producers: list[str], taken: set[str]) -> str:
    if len(producers) == 1:
        base = producers[0]
    else:
        prefix = os.path.commonprefix([p.split(".") for p in producers])
        base = ".".join(prefix) + ".*" if prefix else f"{producers[0]}+{len(producers) - 1}"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def _kind(origins: set[str], labels: set[str], producers: list[str], reasons: list[str],
          heads: bool) -> str:
    if "input" in origins:
        return "input"
    if heads:           # q, k and v write them (and a rotary embedding adds two of their views)
        return "attention heads"
    if "residual" in labels and len(producers) > 1:
        return "residual trunk"
    if "concat" in labels:
        return "concat part"
    if "gate" in labels:
        return "gated"
    if "model output" in reasons:
        return "output"
    return "hidden"


def blocks(roots: np.ndarray) -> int:
    """``r`` if ``roots`` is each of its classes ``r`` times in a row (an attention head's
    ``head_dim`` channels), that run of runs maybe repeated whole (q, k and v heads from
    one projection: see :func:`segments`), else 0."""
    m = segments(roots)
    row = roots[:len(roots) // m]
    starts = np.r_[0, np.nonzero(np.diff(row))[0] + 1]
    lengths = np.diff(np.r_[starts, len(row)])
    distinct = len(np.unique(row)) == len(starts)
    return int(lengths[0]) if distinct and (lengths == lengths[0]).all() else 0


def segments(roots: np.ndarray) -> int:
    """How many times ``roots`` repeats one sequence that holds each of its classes in
    one run (1 if it does not)."""
    first = roots[0]
    at = np.nonzero(roots == first)[0]
    breaks = at[np.r_[False, np.diff(at) > 1]]
    if not len(breaks) or len(roots) % breaks[0]:
        return 1
    m = len(roots) // int(breaks[0])
    return m if (roots.reshape(m, -1) == roots[:len(roots) // m]).all() else 1


def _grouping(prop: Propagation, dim_of_root: np.ndarray, chan_of_root: np.ndarray,
              widths: list[int]) -> dict[int, dict]:
    """Per dimension that grouped convolutions read or write: its ``groups`` and each
    channel's block (``slots``), or why the grouping keeps its width (``grouping``).

    A rewrite keeps every block the same width, so it needs each grouped conv to see
    the whole dimension, alone, once, in its own channel order, all of them grouping it
    alike; anything else keeps the width."""
    found: dict[int, dict] = {}
    for tags, groups, transposed in prop.grouped:
        roots = prop.uf.find(tags)
        d_at, chans = dim_of_root[roots], chan_of_root[roots]
        slots = np.arange(len(tags)) // (len(tags) // groups)
        for d in np.unique(d_at[d_at >= 0]).tolist():
            why = None
            if transposed:
                why = "grouped transposed convolution"
            elif (d_at != d).any():
                why = "a grouped convolution reads it with other channels"
            elif len(chans) != widths[d] or not np.array_equal(chans, np.arange(widths[d])):
                why = "a grouped convolution reads it in another order"
            prev = found.setdefault(d, {"groups": groups, "slots": slots, "grouping": why})
            if prev["grouping"] is None and why is None and \
                    (prev["groups"] != groups or not np.array_equal(prev["slots"], slots)):
                why = "grouped convolutions group it differently"
            prev["grouping"] = prev["grouping"] or why
    for d in found.values():
        if d["grouping"]:
            d["slots"] = None
    return found


def _split_axes(axes, uf: UnionFind, dim_of_root: np.ndarray, chan_of_root: np.ndarray):
    """``(axis index, dimension, positions, channels)`` for every dimension each axis holds,
    axis by axis and dimensions in order: all axes in one sort, not one pass each."""
    if not axes:
        return []
    lengths = np.fromiter((len(r.tags) for r in axes), np.int64, len(axes))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    roots = uf.find(np.concatenate([np.asarray(r.tags, np.int64).ravel() for r in axes]))
    d_at = dim_of_root[roots]
    which = np.repeat(np.arange(len(axes)), lengths)
    at = np.nonzero(d_at >= 0)[0]
    if not len(at):
        return []
    key = which[at] * (int(d_at.max()) + 1) + d_at[at]
    unsorted = np.nonzero(np.diff(key) < 0)[0]
    if len(unsorted):       # axes holding dimensions out of order (a concatenation's parts)
        block = np.isin(which[at], which[at[unsorted]])
        order = np.argsort(key[block], kind="stable")
        at[block], key[block] = at[block][order], key[block][order]
    positions, channels = at - starts[which[at]], chan_of_root[roots[at]]
    bounds = np.concatenate([[0], np.nonzero(np.diff(key))[0] + 1, [len(at)]]).tolist()
    firsts = at[bounds[:-1]]
    return [(i, d, positions[a:b], channels[a:b]) for i, d, a, b in
            zip(which[firsts].tolist(), d_at[firsts].tolist(), bounds[:-1], bounds[1:], strict=True)]


def _held(labels: set[str], unit: int) -> str | None:
    """Why a dimension cannot grow, from how it is coupled: channels contracted one by one
    between two computed operands (``q @ kᵀ`` over a single head's channels) would each add
    ``q_new · k_new`` to every product (where a head is ``unit`` channels, new heads stay apart)."""
    if CONTRACTION in labels and unit == 1:
        return "contracted between two computed operands (q @ kᵀ): a new channel would change the product"
    return None


def build_dimensions(prop: Propagation, node_names: dict[str, str]
                     ) -> tuple[list[Dimension], np.ndarray, np.ndarray]:
    """Group classes into dimensions; also return per-root (dimension, channel) lookups.

    ``node_names`` maps fx node names to the readable layer names used for dimensions.
    """
    uf = prop.uf
    uf.compress()
    ordered = [(g.node, uf.find(g.tags), g.origin) for g in prop.groups
               if g.tags is not None and len(g.tags)]
    # classes emitted together by one producer belong to one dimension
    groups = UnionFind()
    groups.new(uf.size - 1)
    for _, roots, _ in ordered:
        groups.union(np.full(len(roots), roots[0]), roots)

    comp_classes: dict[int, list[int]] = {}
    comp_producers: dict[int, list[str]] = {}
    comp_origins: dict[int, set[str]] = {}
    comp_repeated: set[int] = set()
    comp_units: dict[int, set[int]] = {}
    heads = uf.find(np.concatenate(prop.heads)) if prop.heads else np.zeros(0, np.int64)
    seen = np.zeros(uf.size, dtype=bool)
    for node, roots, origin in ordered:
        c = int(groups.find(roots[:1])[0])
        producers = comp_producers.setdefault(c, [])
        if node not in producers:
            producers.append(node)
        comp_origins.setdefault(c, set()).add(origin)
        if len(np.unique(roots)) != len(roots):
            unit = blocks(roots) if np.isin(roots, heads).all() else 0
            comp_units.setdefault(c, set()).add(unit)
            if not unit:
                comp_repeated.add(c)
        new = roots[~seen[roots]]
        new = new[np.sort(np.unique(new, return_index=True)[1])]
        seen[new] = True
        comp_classes.setdefault(c, []).extend(new.tolist())

    dim_of_root = np.full(uf.size, -1, dtype=np.int64)
    chan_of_root = np.full(uf.size, -1, dtype=np.int64)
    comps = list(comp_classes)
    for d, c in enumerate(comps):
        cls = np.asarray(comp_classes[c], dtype=np.int64)
        dim_of_root[cls] = d
        chan_of_root[cls] = np.arange(len(cls))

    def dims_of(tags: np.ndarray) -> set[int]:
        d = dim_of_root[uf.find(np.asarray(tags, dtype=np.int64))]
        d = d[d >= 0]           # (an unknown op's output has an identity per element: counted)
        return set((np.flatnonzero(np.bincount(d, minlength=len(comps))) if len(d) > 256 else d).tolist())

    reasons: list[list[str]] = [[] for _ in comps]
    for tags, why in prop.pins:
        for d in dims_of(tags):
            if why not in reasons[d]:
                reasons[d].append(why)
    multiple = [1] * len(comps)
    for tags, k in prop.divisors:
        for d in dims_of(tags):
            # a split of a tensor made of several dimensions constrains their sum; per
            # dimension it is kept where the dimension itself can honour it; a head's
            # head_dim positions (a view to (heads, head_dim)) honour it in part already
            k = int(k) // math.gcd(int(k), min(comp_units.get(comps[d], {1})))
            if len(comp_classes[comps[d]]) % k == 0:
                multiple[d] = math.lcm(multiple[d], k)
    split = [False] * len(comps)
    for tags in prop.position_splits:
        for d in dims_of(tags):
            split[d] = True
    widths = [len(comp_classes[c]) for c in comps]
    grouping = _grouping(prop, dim_of_root, chan_of_root, widths)
    labels: list[set[str]] = [set() for _ in comps]
    for tags, label in prop.couplings:
        for d in dims_of(tags):
            labels[d].add(label)
    followed = {node_names.get(w, w) for w, _ in prop.follows}
    members: list[list[Member]] = [[] for _ in comps]
    for i, d, pos, chans in _split_axes(prop.axes, uf, dim_of_root, chan_of_root):
        ref = prop.axes[i]
        members[d].append(Member(ref.param, ref.role, node_names.get(ref.node, ref.node),
                                 ref.axis, pos, chans, ref.divisor))

    taken: set[str] = set()
    dims = []
    for d, c in enumerate(comps):
        producers = [node_names.get(p, p) for p in comp_producers[c]]
        writers = {m.node for m in members[d] if m.role == "out"}
        dims.append(Dimension(
            name=_name(producers, taken), width=len(comp_classes[c]),
            kind=_kind(comp_origins[c], labels[d], producers, reasons[d],
                       bool(len(heads)) and np.isin(comp_classes[c], heads).all()),
            pinned=reasons[d][0] if reasons[d] else None, reasons=reasons[d],
            members=members[d], producers=producers, multiple_of=multiple[d],
            split_by_position=split[d], repeated=c in comp_repeated,
            unit=max(comp_units.get(c, {1})), **grouping.get(d, {}),
            scaled=bool(writers) and writers <= followed,
            classes=np.asarray(comp_classes[c], dtype=np.int64),
            held=_held(labels[d], max(comp_units.get(c, {1})))))
    return dims, dim_of_root, chan_of_root
