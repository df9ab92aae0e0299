"""The coupling graph drawn without graphviz: the layered layout."""
from __future__ import annotations

from itertools import combinations, pairwise

import networkx as nx
import pytest
import torch

import fxsurgeon as fxs
from fxsurgeon.analysis.drawing import to_networkx
from fxsurgeon.analysis.layout import layout
from helpers.models import Mixed


@pytest.fixture(scope="module")
def graph():
    return fxs.analyze(Mixed(), torch.randn(1, 3, 8, 8))


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
