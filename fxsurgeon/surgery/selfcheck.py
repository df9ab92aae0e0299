"""A rewrite checks itself: the new network against the reference on the example inputs.

Where a rewrite promises the same function (see :mod:`fxsurgeon.judging.reference`), it runs
the new network on the example inputs and compares its output with the reference's.
If they differ beyond the dtype's rounding, it finds the first layer whose output
differs (matching channels through the identities) and refuses, naming it: a silent
change of function becomes a clear error, whatever the cause.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from ..channels.nodes import describe
from ..errors import FxSurgeonError
from ..judging.reference import run_graph
from .matching import match

#: largest relative difference (to the output's magnitude) that rounding explains; exact
#: rewrites of 121 models in float64 differ by at most 1e-13 (docs/coverage.json)
_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 3e-2}
#: magnitudes below this are compared as if this large (an output of zeros against rounding
#: noise); it was 1, which let a weight drawn afresh change a SwiftFormer's outputs (at most
#: 0.5) by 1.4e-8 of their size unseen
_FLOOR = 1e-3


def difference(a, b) -> float | None:
    """The largest relative difference between matching tensors of ``a`` and ``b`` over the
    dtype's tolerance (above 1: they differ), or None if their structure differs."""
    la, lb = tree_flatten(a)[0], tree_flatten(b)[0]
    if len(la) != len(lb):
        return None
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return None
        if not x.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(x, y) else float("inf"))
            continue
        scale = max(_FLOOR, float(x.detach().abs().max())) if x.numel() else 1.0
        err = float((x.detach() - y.detach()).abs().max()) / scale if x.numel() else 0.0
        worst = max(worst, err / _TOLERANCE.get(x.dtype, 1e-3))
    return worst


def verify(graph, overrides, expected, new, new_prop, surgery):
    """Raise :class:`FxSurgeonError` if ``new`` does not compute ``expected`` (the
    reference's output) on the example inputs, naming the first layer that differs
    (``overrides()`` gives the reference's tensors again, to find it; ``surgery.folds``
    says where a fold now gives a layer's output; a layer folded ``"norm"`` lacks the
    constant the norm reading it took in, so its output is not compared). Returns what
    ``new`` computed."""
    got, _, _ = run_graph(new, graph.example_inputs)
    d = difference(expected, got)
    if d is not None and d <= 1:
        return got
    prop = graph.propagation
    producers = [(g.node, g.tags) for g in prop.groups if g.origin == "producer"]
    new_vecs = {g.node: g.tags for g in new_prop.groups}
    shown = {node: surgery.folds.get(node, {}).get("node", node) for node, _ in producers}
    _, _, before = run_graph(graph.module, graph.example_inputs, overrides(),
                             outputs_of=[n for n, _ in producers])
    _, _, after = run_graph(new, graph.example_inputs, outputs_of=set(shown.values()))
    modules = dict(graph.module.named_modules())
    nodes = {n.name: n for n in graph.module.graph.nodes}
    for node, vec in producers:
        if node not in new_vecs or surgery.folded.get(node) == "norm" or shown[node] not in after \
                or node not in before:
            continue
        axis = prop.out_axes[node]
        idx = match(prop.uf.find(vec), new_prop.uf.find(new_vecs[node]))
        old, new_out = before[node], after[shown[node]]
        keep = torch.as_tensor((idx >= 0).nonzero()[0], device=new_out.device)
        at = torch.as_tensor(idx[idx >= 0], device=old.device)
        dd = difference(old.index_select(axis, at), new_out.index_select(axis, keep))
        if dd is None or dd > 1:
            raise FxSurgeonError(
                f"the rewrite changed the function: the output of {describe(nodes[node], modules)} "
                f"differs from the original's on the example inputs ({_how(dd)}); this is a bug in "
                f"fxsurgeon or in an op rule (fxsurgeon.register_op). Pass check=False to get the "
                f"rewritten network anyway.")
    raise FxSurgeonError(f"the rewrite changed the function: the model output differs from the "
                         f"original's on the example inputs ({_how(d)}), though no layer's output "
                         f"does; pass check=False to get the rewritten network anyway.")


def _how(d: float | None) -> str:
    return "its shape differs" if d is None else f"{d:.3g}x the rounding tolerance"
