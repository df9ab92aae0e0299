"""Human and machine-readable views of a ChannelGraph: the inspect table and JSON.

The graph's ``summary()`` and ``to_json()`` call this module, so it takes the graph
without importing its class (an import back would be a cycle)."""
from __future__ import annotations


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def _rows(graph):
    params, flops = graph.attributable("params"), graph.attributable("flops")
    for d in graph.dims:
        state = "free" if d.free else f"pinned: {d.pinned}" + (
            f" (+{len(d.reasons) - 1} more)" if len(d.reasons) > 1 else "")
        yield (d.name, str(d.width), d.kind, state, human(params[d.name]), human(flops[d.name]))


def summary(graph) -> str:
    """A fixed-width table of dimensions followed by the totals."""
    header = ("dimension", "width", "kind", "state", "params", "MACs")
    rows = list(_rows(graph))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    widths[3] = min(widths[3], 70)

    def line(r):
        cells = [r[i][:widths[i]].ljust(widths[i]) if i < 4 else r[i].rjust(widths[i])
                 for i in range(len(r))]
        return "  ".join(cells).rstrip()
    out = [line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
    p, f = graph.count("params"), graph.count("flops")
    free = graph.free_dims
    out += ["",
            f"dimensions: {len(graph.dims)} ({len(free)} free, {len(graph.dims) - len(free)} pinned)",
            f"parameters: {p:,} ({human(p)}); {graph.free_share('params'):.1%} scale with free dimensions",
            f"FLOPs: {f:,} multiply-accumulates ({human(f)}) for input "
            + ", ".join("x".join(map(str, s)) for s in graph.input_shapes)]
    return "\n".join(out)


def to_json(graph) -> dict:
    """Dimensions with members, pins and attributable costs, plus totals."""
    params, flops = graph.attributable("params"), graph.attributable("flops")
    return {
        "inputs": [list(s) for s in graph.input_shapes],
        "totals": {"params": graph.count("params"), "flops": graph.count("flops"),
                   "flops_unit": "multiply-accumulates",
                   "free_params_share": graph.free_share("params")},
        "dimensions": [{
            "name": d.name, "width": d.width, "kind": d.kind, "free": d.free,
            "pinned": d.pinned, "reasons": d.reasons, "multiple_of": d.multiple_of,
            "producers": d.producers, "consumers": d.consumers,
            "params": params[d.name], "flops": flops[d.name],
            "members": [{"tensor": m.tensor, "role": m.role, "node": m.node, "axis": m.axis,
                         "span": m.span, "divisor": m.divisor,
                         "positions": m.positions.tolist(), "channels": m.channels.tolist()}
                        for m in d.members],
        } for d in graph.dims],
        "layers": {"params": graph.count("params", by="layer"),
                   "flops": graph.count("flops", by="layer")},
    }
