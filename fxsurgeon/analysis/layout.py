"""A layered, top-to-bottom layout of a directed graph (as graphviz's ``dot`` lays one out),
for drawing the coupling graph without graphviz."""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import networkx as nx


@dataclass
class Layout:
    """Where each node goes: ``row`` (0 at the top) and ``x`` (its centre, in the units of
    the widths; nothing lies left of 0); ``paths`` gives each edge the points it runs
    through, from its tail to its head, as ``(x, row)``."""

    row: dict
    x: dict
    paths: dict


def _back_edges(g: nx.DiGraph) -> tuple[set, dict]:
    """The edges that close a cycle on a walk depth first from the sources (as graphviz
    breaks cycles), and the order the walk finds the nodes in."""
    found: dict = {}
    done: set = set()
    back: set = set()
    for start in [n for n in g if not g.in_degree(n)] + list(g):
        if start in found:
            continue
        found[start] = len(found)
        stack = [(start, iter(g.successors(start)))]
        while stack:
            node, successors = stack[-1]
            for nxt in successors:
                if nxt not in found:
                    found[nxt] = len(found)
                    stack.append((nxt, iter(g.successors(nxt))))
                    break
                if nxt not in done:
                    back.add((node, nxt))
            else:
                done.add(node)
                stack.pop()
    return back, found


def layout(g: nx.DiGraph, width: dict[Hashable, float], gap: float, lane: float,
           sweeps: int = 8) -> Layout:
    """Rows and places for the nodes of ``g``, whose widths are ``width``, at least ``gap``
    apart; an edge runs down from its tail's row to its head's.

    A residual trunk written by the blocks that read it makes cycles: the edges that close
    them run upwards. A node's row is the longest path to it. An edge that spans rows runs
    through a lane (``lane`` wide) in each row between; the long edges out of a node share
    theirs (those running up apart from those running down). Each row is ordered by the
    mean place of its neighbours, sweeping down and up; then each node moves towards its
    neighbours as far as the others in its row let it.
    """
    back, found = _back_edges(g)
    dag = nx.DiGraph()
    dag.add_nodes_from(g)
    dag.add_edges_from((b, a) if (a, b) in back else (a, b) for a, b in g.edges)
    row = {n: r for r, nodes in enumerate(nx.topological_generations(dag)) for n in nodes}
    layered = nx.DiGraph()
    layered.add_nodes_from(g)
    paths = {}
    rank = dict(found)
    for a, b in g.edges:
        up = (a, b) in back
        top, bottom = (b, a) if up else (a, b)
        chain = [top, *(("lane", top, up, r) for r in range(row[top] + 1, row[bottom])), bottom]
        for node in chain[1:-1]:
            row[node] = node[3]
            rank[node] = found[top]
        nx.add_path(layered, chain)
        paths[a, b] = chain[::-1] if up else chain
    rows: list[list] = [[] for _ in range(max(row.values(), default=-1) + 1)]
    for n in sorted(layered, key=rank.get):
        rows[row[n]].append(n)
    size = {n: width[n] if n in g else lane for n in layered}
    x = _packed(rows, size, gap)
    for k in range(sweeps):          # order each row by its neighbours above, then below
        near = layered.predecessors if k % 2 == 0 else layered.successors
        for nodes in rows if k % 2 == 0 else rows[::-1]:
            nodes.sort(key=lambda n: _mean([x[m] for m in near(n)], x[n]))
            x.update(_packed([nodes], size, gap))
    for k in range(sweeps):          # then place each node under, or over, its neighbours
        near = layered.predecessors if k % 2 == 0 else layered.successors
        for nodes in rows if k % 2 == 0 else rows[::-1]:
            x.update(_placed(nodes, [_mean([x[m] for m in near(n)], x[n]) for n in nodes], size, gap))
    left = min((x[n] - size[n] / 2 for n in x), default=0.0)
    x = {n: v - left for n, v in x.items()}
    return Layout({n: row[n] for n in g}, {n: x[n] for n in g},
                  {e: [(x[n], row[n]) for n in p] for e, p in paths.items()})


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _packed(rows: list[list], size: dict, gap: float) -> dict:
    """Each row's nodes side by side, ``gap`` apart, centred on 0."""
    x = {}
    for nodes in rows:
        at = -(sum(size[n] for n in nodes) + gap * (len(nodes) - 1)) / 2
        for n in nodes:
            x[n] = at + size[n] / 2
            at += size[n] + gap
    return x


def _placed(nodes: list, wanted: list[float], size: dict, gap: float) -> dict:
    """Places as near ``wanted`` as the row's order and spacing allow: the mean of pushing
    each node right of the one before and left of the one after (both keep the spacing, so
    their mean does)."""
    right, left = list(wanted), list(wanted)
    for i in range(1, len(nodes)):
        right[i] = max(right[i], right[i - 1] + (size[nodes[i - 1]] + size[nodes[i]]) / 2 + gap)
    for i in range(len(nodes) - 2, -1, -1):
        left[i] = min(left[i], left[i + 1] - (size[nodes[i + 1]] + size[nodes[i]]) / 2 - gap)
    return {n: (a + b) / 2 for n, a, b in zip(nodes, right, left, strict=True)}
