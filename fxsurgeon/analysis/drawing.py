"""The coupling graph as networkx, DOT and SVG, coloured by dimension."""
from __future__ import annotations

import colorsys
import fnmatch
import shutil
import subprocess

import networkx as nx

from ..errors import FxSurgeonError


def to_networkx(graph, only: str | None = None) -> nx.DiGraph:
    """Layers and dimensions as nodes; edges producer → dimension → consumer.

    Layer nodes have ``type="layer"``; dimension nodes ``type="dim"`` with ``width``,
    ``kind`` and ``pinned``. Edges carry the dimension name in ``dim``. ``only`` is a
    glob on dimension names that keeps a part of a big model.
    """
    g = nx.DiGraph()
    for d in graph.dims:
        if only and not fnmatch.fnmatchcase(d.name, only):
            continue
        key = f"dim:{d.name}"
        g.add_node(key, type="dim", name=d.name, width=d.width, kind=d.kind, pinned=d.pinned)
        for p in d.producers:
            g.add_node(p, type="layer")
            g.add_edge(p, key, dim=d.name)
        for c in d.consumers:
            g.add_node(c, type="layer")
            g.add_edge(key, c, dim=d.name)
    return g


def _colour(i: int) -> str:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.55, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _q(s: str) -> str:
    return '"' + s.replace('"', r'\"') + '"'


def to_dot(graph, only: str | None = None) -> str:
    """DOT text: one box per layer, one ellipse per dimension (grey when pinned)."""
    g = to_networkx(graph, only)
    colours = {d.name: ("#cccccc" if not d.free else _colour(i))
               for i, d in enumerate(graph.dims)}
    lines = ["digraph channels {", "  rankdir=TB; node [fontname=Helvetica fontsize=10];"]
    for node, data in g.nodes(data=True):
        if data["type"] == "dim":
            label = f"{data['name']}\\n{data['width']} ch, {data['kind']}"
            if data["pinned"]:
                label += "\\npinned: " + data["pinned"][:40]
            lines.append(f"  {_q(node)} [label={_q(label)} style=filled "
                         f"fillcolor={_q(colours[data['name']])}];")
        else:
            lines.append(f"  {_q(node)} [shape=box];")
    for a, b, data in g.edges(data=True):
        lines.append(f"  {_q(a)} -> {_q(b)} [color={_q(colours[data['dim']])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_svg(graph, path: str, only: str | None = None) -> None:
    """Render the DOT picture to SVG with graphviz's ``dot`` program."""
    dot = shutil.which("dot")
    if dot is None:
        raise FxSurgeonError("drawing SVG needs graphviz's 'dot' program, which is not installed "
                             "(apt-get install graphviz, or brew install graphviz); "
                             "use --dot FILE to write the DOT text instead")
    subprocess.run([dot, "-Tsvg", "-o", path], input=to_dot(graph, only).encode(), check=True)
