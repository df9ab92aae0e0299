"""The coupling graph as networkx, DOT and SVG (drawn with matplotlib, not graphviz), coloured
by dimension."""
from __future__ import annotations

import colorsys
import fnmatch
from collections.abc import Collection
from itertools import pairwise

import networkx as nx

from ..errors import FxSurgeonError
from .layout import layout


def to_networkx(graph, only: str | None = None, gated: Collection[str] = ()) -> nx.DiGraph:
    """Layers and dimensions as nodes; edges producer → dimension → consumer.

    Layer nodes have ``type="layer"``; dimension nodes ``type="dim"`` with ``width``,
    ``kind``, ``pinned`` and ``judge``: for a free dimension ``"scale"`` when a norm or a
    head judges it, ``"gate"`` when it is named in ``gated`` (the dimensions
    :func:`~fxsurgeon.surgery.judges.add_judges` put a gate on), else None. Edges carry the
    dimension name in ``dim``. ``only`` is a glob on dimension names that keeps a part of a
    big model.
    """
    g = nx.DiGraph()
    for d in graph.dims:
        if only and not fnmatch.fnmatchcase(d.name, only):
            continue
        key = f"dim:{d.name}"
        g.add_node(key, type="dim", name=d.name, width=d.width, kind=d.kind, pinned=d.pinned,
                   judge=_judge(d, gated))
        for p in d.producers:
            g.add_node(p, type="layer")
            g.add_edge(p, key, dim=d.name)
        for c in d.consumers:
            g.add_node(c, type="layer")
            g.add_edge(key, c, dim=d.name)
    return g


def _judge(d, gated: Collection[str]) -> str | None:
    if not d.free:
        return None
    if d.scaled and d.sources:
        return "scale"
    return "gate" if d.name in gated else None


def _colour(i: int) -> str:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.55, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _colours(graph) -> dict[str, str]:
    """Per dimension name: grey when pinned, else a colour of its own."""
    return {d.name: ("#cccccc" if not d.free else _colour(i)) for i, d in enumerate(graph.dims)}


#: how a free dimension is judged (``judge``, see :func:`to_networkx`): in words, and its
#: border in the picture and in DOT
_JUDGES = {"scale": "judged by a norm or head", "gate": "judged by a gate", None: "no judge"}
_RED = "#d62728"
_BORDERS = {"scale": {}, "gate": {"ls": "--"}, None: {"ec": _RED, "lw": 1.8}}
_DOT_BORDERS = {"scale": "style=filled", "gate": 'style="filled,dashed"',
                None: f'style=filled color="{_RED}" penwidth=2'}


def _lines(data: dict) -> list[str]:
    """A dimension node's label: name, width and kind, and free (how judged) or pinned."""
    state = f"pinned: {data['pinned'][:40]}" if data["pinned"] else f"free, {_JUDGES[data['judge']]}"
    return [data["name"], f"{data['width']} ch, {data['kind']}", state]


def _cap(text: str, n: int = 36) -> str:
    """``text`` cut to ``n`` characters in the middle."""
    return text if len(text) <= n else text[:n // 2 - 1] + "…" + text[len(text) - n // 2:]


def _q(s: str) -> str:
    return '"' + s.replace('"', r'\"') + '"'


def to_dot(graph, only: str | None = None, gated: Collection[str] = ()) -> str:
    """DOT text: one box per layer, one ellipse per dimension (grey when pinned)."""
    g = to_networkx(graph, only, gated)
    colours = _colours(graph)
    lines = ["digraph channels {", "  rankdir=TB; node [fontname=Helvetica fontsize=10];"]
    for node, data in g.nodes(data=True):
        if data["type"] == "dim":
            label = r"\n".join(_lines(data))
            border = "style=filled" if data["pinned"] else _DOT_BORDERS[data["judge"]]
            lines.append(f"  {_q(node)} [label={_q(label)} {border} "
                         f"fillcolor={_q(colours[data['name']])}];")
        else:
            lines.append(f"  {_q(node)} [shape=box];")
    for a, b, data in g.edges(data=True):
        lines.append(f"  {_q(a)} -> {_q(b)} [color={_q(colours[data['dim']])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def need_matplotlib():
    """matplotlib's ``Figure`` class, or an FxSurgeonError that says how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FxSurgeonError("drawing SVG needs matplotlib, which is not installed: pip install matplotlib "
                             "(or use --dot FILE to write the graph as graphviz DOT text)") from None
    return Figure


#: drawing sizes: font and box padding (points); a row's height, the space between boxes
#: and a lane's width (inches)
_FONT, _PAD, _ROW, _GAP, _LANE = 8, 3, 0.85, 0.2, 0.12


def _box(label: str) -> tuple[float, float]:
    """The width and height of a label's box, in inches."""
    lines = label.split("\n")
    return ((max(map(len, lines)) * 0.6 * _FONT + 2 * _PAD) / 72,
            (len(lines) * 1.2 * _FONT + 2 * _PAD) / 72)


def _ports(g: nx.DiGraph, at, box: dict) -> dict:
    """Where each edge ``(a, b)`` leaves ``a`` and reaches ``b`` (``(a, b, node)``: a point
    in inches): on the side of the box facing the edge's next point, spread over the box's
    width in the order of those points (edges sharing a lane share a point)."""
    sides: dict = {}
    for (a, b), points in at.paths.items():
        for node, near in ((a, points[1]), (b, points[-2])):
            side = 1 if near[1] < at.row[node] else -1
            sides.setdefault((node, side), {}).setdefault(near, []).append((a, b, node))
    ports = {}
    for (node, side), groups in sides.items():
        width, height = box[node]
        step = min(0.25, 0.7 * width / max(len(groups) - 1, 1))
        for i, near in enumerate(sorted(groups)):
            x = at.x[node] + (i - (len(groups) - 1) / 2) * step
            ports.update(dict.fromkeys(groups[near], (x, -at.row[node] * _ROW + side * height / 2)))
    return ports


def _curve(points: list[tuple[float, float]]):
    """A smooth path through ``points``, leaving and reaching each one vertically."""
    from matplotlib.path import Path

    verts, codes = [points[0]], [Path.MOVETO]
    for (x0, y0), (x1, y1) in pairwise(points):
        verts += [(x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2), (x1, y1)]
        codes += [Path.CURVE4] * 3
    return Path(verts, codes)


def write_svg(graph, path: str, only: str | None = None, gated: Collection[str] = ()) -> None:
    """Draw the coupling graph to ``path`` as SVG with matplotlib, top to bottom (see
    :func:`~fxsurgeon.analysis.layout.layout`): square boxes are layers, round ones
    dimensions (name, width, kind, free or pinned), filled with the dimension's colour
    (grey when pinned), as are the edges; a free dimension's border says how it is judged
    (solid: a norm or head, dashed: a gate, red: none). Lines are cut to 36 characters.
    In the SVG, each box is the group named as its node, each edge ``"a -> b"``."""
    figure = need_matplotlib()
    from matplotlib import rc_context
    from matplotlib.patches import FancyArrowPatch, Patch

    g = to_networkx(graph, only, gated)
    colours = _colours(graph)
    labels = {n: "\n".join(map(_cap, _lines(d))) if d["type"] == "dim" else _cap(n)
              for n, d in g.nodes(data=True)}
    box = {n: _box(label) for n, label in labels.items()}
    at = layout(g, {n: w for n, (w, _) in box.items()}, _GAP, _LANE)
    legend, margin = 0.6, 0.2
    wide = max([at.x[n] + box[n][0] / 2 for n in g] + [7 - 2 * margin])
    rows = max(at.row.values(), default=-1) + 1
    fig = figure(figsize=(wide + 2 * margin, rows * _ROW + legend))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(-margin, wide + margin)
    ax.set_ylim(_ROW / 2 - fig.get_figheight() + legend, _ROW / 2 + legend)
    for n, data in g.nodes(data=True):
        if data["type"] == "dim":
            style = {"boxstyle": f"round,pad={_PAD / _FONT}", "fc": colours[data["name"]],
                     **({} if data["pinned"] else _BORDERS[data["judge"]])}
        else:
            style = {"boxstyle": f"square,pad={_PAD / _FONT}", "fc": "white"}
        ax.text(at.x[n], -at.row[n] * _ROW, labels[n], ha="center", va="center", fontsize=_FONT,
                bbox={"ec": "black", "lw": 0.8, **style}, zorder=3, gid=n)
    ports = _ports(g, at, box)
    for (a, b), points in at.paths.items():
        middle = [(x, -r * _ROW) for x, r in points[1:-1]]
        ax.add_patch(FancyArrowPatch(path=_curve([ports[a, b, a], *middle, ports[a, b, b]]),
                                     arrowstyle="-|>", mutation_scale=8, lw=1,
                                     color=colours[g.edges[a, b]["dim"]], zorder=2, gid=f"{a} -> {b}"))
    fig.legend(handles=[Patch(fc="white", ec="black", label="layer"),
                        *(Patch(fc=_colour(1), **{"ec": "black", **_BORDERS[j]}, label=f"free dimension, {t}")
                          for j, t in _JUDGES.items()),
                        Patch(fc="#cccccc", ec="black", label="pinned dimension")],
               loc="upper left", ncols=3, fontsize=_FONT, frameon=False)
    # text stays text (searchable, small); the same graph gives the same file
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "fxsurgeon"}):
        fig.savefig(path, format="svg", metadata={"Date": None})
