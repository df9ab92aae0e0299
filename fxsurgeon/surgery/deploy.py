"""Deployable modules: layers a rewrite put in, back to standard torch layers where exact."""
from __future__ import annotations

import copy

from torch import fx

from ..layers.streamed import canonical
from ..ops import TABLE


def export(module: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``module`` for deployment: every layer whose rule knows the standard layer
    it equals becomes that layer (a ``cr`` partitioned layer is a conv or linear layer with
    zero cross blocks); ``nr`` and ``prune`` modules are standard already. ``ca`` layers
    stay: their gate is not a linear layer, and they export to ONNX as they are. The copy
    scripts with TorchScript in every scheme. A network that holds its generations apart
    (:mod:`fxsurgeon.surgery.streams`) is deployed in its plain form."""
    out = copy.deepcopy(canonical(module))
    for name, m in list(out.named_modules()):
        rule = TABLE.module_rule(m) if name else None
        standard = rule.unpack(m) if rule is not None else None
        if standard is not None:
            owner, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(owner) if owner else out, leaf, standard)
    # a plain GraphModule: torch.fx's lazy one (what tracing makes, so every rewrite too)
    # does not script with TorchScript. It holds every submodule of the copy, not only those
    # its graph reads (a rewrite carries the user's unused ones, an aux head in eval mode).
    plain = fx.GraphModule(out, out.graph, type(out).__name__)
    for name, child in out.named_children():
        plain.add_module(name, child)
    plain.meta.update(out.meta)
    return plain
