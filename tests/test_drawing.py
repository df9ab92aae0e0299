"""The coupling graph drawn without graphviz: the layered layout, and the SVG that matplotlib
writes from it (layers, dimensions, couplings, widths, free or pinned, judges)."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from itertools import combinations, pairwise
from pathlib import Path

import networkx as nx
import pytest
import torch

import fxsurgeon as fxs
from fxsurgeon.analysis.drawing import to_dot, to_networkx, write_svg
from fxsurgeon.analysis.layout import layout
from helpers.models import Mixed

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def graph():
    return fxs.analyze(Mixed(), torch.randn(1, 3, 8, 8))


def test_dimension_nodes_say_how_a_free_dimension_is_judged(graph):
    judges = {n: d["judge"] for n, d in to_networkx(graph, gated={"fc1"}).nodes(data=True)
              if d["type"] == "dim"}
    assert judges == {"dim:x": None, "dim:stem.0+1": "scale", "dim:block.0": "scale", "dim:fc1": "gate",
                      "dim:fc2": None}
    assert to_networkx(graph).nodes["dim:fc1"]["judge"] is None
    dot = to_dot(graph, gated={"fc1"})
    assert r'"dim:fc1" [label="fc1\n16 ch, hidden\nfree, judged by a gate" style="filled,dashed"' in dot
    assert r'free, no judge" style=filled color="#d62728"' in to_dot(graph)


def checked_layout(g: nx.DiGraph, width: dict, gap: float = 0.2, lane: float = 0.1):
    """``layout(g)``, checked: no edge within a row, the edges running up break every cycle,
    each edge runs from its tail to its head a row at a time, and nothing in a row (boxes,
    lanes) overlaps."""
    at = layout(g, width, gap, lane)
    assert all(at.row[a] != at.row[b] for a, b in g.edges)
    up = {(a, b) for a, b in g.edges if at.row[a] > at.row[b]}
    flipped = nx.DiGraph((b, a) if (a, b) in up else (a, b) for a, b in g.edges)
    assert nx.is_directed_acyclic_graph(flipped)
    rows: dict[int, set] = {}
    for n in g:
        rows.setdefault(at.row[n], set()).add((at.x[n], width[n]))
    for (a, b), points in at.paths.items():
        assert points[0] == (at.x[a], at.row[a]) and points[-1] == (at.x[b], at.row[b])
        assert all(abs(r1 - r0) == 1 for (_, r0), (_, r1) in pairwise(points))
        for x, r in points[1:-1]:
            rows[r].add((x, lane))
    for row in rows.values():
        spans = sorted(row)
        assert all(x1 - x0 >= (w0 + w1) / 2 + gap - 1e-9 for (x0, w0), (x1, w1) in pairwise(spans))
    return at, up


def test_the_layout_runs_top_to_bottom_and_the_blocks_writing_a_trunk_point_up(graph):
    g = to_networkx(graph)
    at, up = checked_layout(g, {n: 1.0 for n in g})
    assert up == {("block.3", "dim:stem.0+1")}
    order = ["x", "dim:x", "stem.0", "dim:stem.0+1", "block.0", "dim:block.0", "block.3"]
    assert [at.row[n] for n in order] == list(range(7))
    assert at.row["fc1"] == 4 and at.row["dim:fc2"] == 7


def crossings(at) -> int:
    """How many pairs of edges cross between two rows (lanes shared once)."""
    spans: dict[int, set] = {}
    for points in at.paths.values():
        for (x0, r0), (x1, r1) in pairwise(points):
            spans.setdefault(min(r0, r1), set()).add((x0, x1) if r0 < r1 else (x1, x0))
    return sum((a0 - b0) * (a1 - b1) < 0 for s in spans.values() for (a0, a1), (b0, b1) in combinations(s, 2))


@pytest.mark.parametrize("seed", range(6))
def test_the_layout_of_random_graphs(seed):
    g = nx.gnp_random_graph(25, 0.12, seed=seed, directed=True)
    dag = nx.DiGraph((a, b) for a, b in g.edges if a < b)
    dag.add_nodes_from(g)
    width = {n: 0.5 + (n % 3) for n in g}
    assert not checked_layout(dag, width)[1]            # no cycle: every edge runs down
    at = checked_layout(g, width)[0]
    assert crossings(at) < 0.8 * crossings(layout(g, width, 0.2, 0.1, sweeps=0))   # the sweeps


def _svg(path: Path) -> dict[str, ET.Element]:
    """The SVG's groups by id."""
    return {e.get("id"): e for e in ET.parse(path).iter(f"{SVG}g") if e.get("id")}


def _box(group: ET.Element) -> tuple[list[str], str]:
    """A node's text lines and its box's style."""
    return [t.text for t in group.iter(f"{SVG}text")], next(group.iter(f"{SVG}path")).get("style")


def test_the_svg_shows_layers_dimensions_couplings_widths_states_and_judges(graph, tmp_path):
    write_svg(graph, tmp_path / "gated.svg", gated={"fc1"})
    write_svg(graph, tmp_path / "plain.svg")
    groups, g = _svg(tmp_path / "gated.svg"), to_networkx(graph)
    assert {f"{a} -> {b}" for a, b in g.edges} | set(g) <= set(groups)
    assert _box(groups["block.3"])[0] == ["block.3"] and "fill: #ffffff" in _box(groups["block.3"])[1]
    lines = {n: _box(groups[n])[0] for n in g if n.startswith("dim:")}
    assert lines == {"dim:x": ["x", "3 ch, input", "pinned: model input 'x'"],
                     "dim:stem.0+1": ["stem.0+1", "8 ch, residual trunk", "free, judged by a norm or head"],
                     "dim:block.0": ["block.0", "6 ch, hidden", "free, judged by a norm or head"],
                     "dim:fc1": ["fc1", "16 ch, hidden", "free, judged by a gate"],
                     "dim:fc2": ["fc2", "4 ch, output", "pinned: model output"]}
    fills = {n: _box(groups[n])[1].split(";")[0] for n in lines}
    assert fills["dim:x"] == fills["dim:fc2"] == "fill: #cccccc"              # pinned: grey
    free = {fills[n] for n in ("dim:stem.0+1", "dim:block.0", "dim:fc1")}
    assert len(free) == 3 and "fill: #cccccc" not in free                    # free: a colour each
    for a, b in g.edges:                                    # an edge takes its dimension's colour
        dim = a if a.startswith("dim:") else b
        assert f"stroke: {fills[dim][6:]}" in next(groups[f"{a} -> {b}"].iter(f"{SVG}path")).get("style")
    assert "stroke-dasharray" in _box(groups["dim:fc1"])[1]
    assert "stroke: #000000" in _box(groups["dim:block.0"])[1]
    plain = _box(_svg(tmp_path / "plain.svg")["dim:fc1"])
    assert plain[0][2] == "free, no judge" and "stroke: #d62728" in plain[1]

    def top(n):
        return float(next(groups[n].iter(f"{SVG}path")).get("d").split()[2])

    assert top("dim:x") < top("stem.0") < top("dim:stem.0+1") < top("block.3") < top("dim:fc2")


def test_only_draws_a_part(graph, tmp_path):
    write_svg(graph, tmp_path / "g.svg", only="fc*")
    groups = _svg(tmp_path / "g.svg")
    assert {"dim:fc1", "dim:fc2", "fc1", "fc2", "fc1 -> dim:fc1"} <= set(groups)
    assert not {"dim:x", "dim:stem.0+1", "stem.0", "block.0"} & set(groups)
    write_svg(graph, tmp_path / "none.svg", only="nothing")
    assert ET.parse(tmp_path / "none.svg").getroot().tag == f"{SVG}svg"


def test_drawing_without_matplotlib_says_how_to_install_it(graph, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(fxs.FxSurgeonError, match="needs matplotlib, which is not installed: "
                                                 "pip install matplotlib"):
        write_svg(graph, tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()
    assert to_dot(graph).startswith("digraph channels {")


def test_the_package_imports_without_matplotlib():
    code = ("import sys\nsys.modules['matplotlib'] = None\n"
            "import fxsurgeon, fxsurgeon.cli, fxsurgeon.analysis.drawing, fxsurgeon.analysis.layout\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
