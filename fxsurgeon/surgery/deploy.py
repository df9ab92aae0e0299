"""Deployable modules: layers a rewrite put in, back to standard torch layers where exact."""
from __future__ import annotations

import copy
import warnings
from collections import Counter

from torch import fx

from ..layers.streamed import canonical
from ..ops import TABLE
from ..ops.table import rules_of, scope


def export(module: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``module`` for deployment: every layer whose rule knows the standard layer
    it equals becomes that layer (a ``cr`` partitioned layer is a conv or linear layer with
    zero cross blocks); ``nr`` and ``prune`` modules are standard already. ``ca`` layers
    stay: their gate is not a linear layer, and they export to ONNX as they are. The copy
    scripts with TorchScript in every scheme. A network that holds its generations apart
    (:mod:`fxsurgeon.surgery.streams`) is deployed in its plain form. Judges
    (:class:`~fxsurgeon.layers.gate.Gate`) are folded into the layers that read them."""
    out = copy.deepcopy(canonical(module))
    with scope(rules_of(module)):
        for name, m in list(out.named_modules()):
            rule = TABLE.module_rule(m) if name else None
            standard = rule.unpack(m) if rule is not None else None
            if standard is not None:
                owner, _, leaf = name.rpartition(".")
                setattr(out.get_submodule(owner) if owner else out, leaf, standard)
        fold_gates(out)
    # a plain GraphModule: torch.fx's lazy one (what tracing makes, so every rewrite too)
    # does not script with TorchScript. It holds every submodule of the copy, not only those
    # its graph reads (a rewrite carries the user's unused ones, an aux head in eval mode).
    plain = fx.GraphModule(out, out.graph, type(out).__name__)
    for name, child in out.named_children():
        plain.add_module(name, child)
    plain.meta.update(out.meta)
    return plain


def fold_gates(module: fx.GraphModule) -> list[str]:
    """Fold every gate of ``module`` (in place) into the layers that read it, where each of
    them can take the scale into its weight (their rules' ``absorb_scale``), or else into
    the layer it alone follows (``absorb_output_scale``: weight rows and bias), and take
    the gate out; returns the gates that stay (with a warning naming them)."""
    graph, kept, modules = module.graph, [], dict(module.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in list(graph.nodes):
        scale = TABLE.lookup(node, modules).folded_scale(node, module) if node.op == "call_module" else None
        if scale is None:
            continue
        users, producer = list(node.users), node.args[0]
        if all(_absorbs(module, modules, user, node, calls) for user in users):
            for user in users:
                TABLE.lookup(user, modules).absorb_scale(user, module, scale)
        elif _takes_output_scale(module, modules, producer, node, calls):
            TABLE.lookup(producer, modules).absorb_output_scale(producer, module, scale)
        else:
            kept.append(node.target)
            continue
        node.replace_all_uses_with(producer)
        graph.erase_node(node)
        module.delete_submodule(node.target)
    if kept:
        warnings.warn(f"fxsurgeon: {len(kept)} gate(s) stay in the deployed network, as layers that "
                      f"cannot take their scale read them: {', '.join(kept)}", stacklevel=3)
    module.recompile()
    return kept


def _absorbs(module: fx.GraphModule, modules: dict, user: fx.Node, gate: fx.Node, calls: dict) -> bool:
    """Whether ``user`` reads ``gate`` as its input alone and its rule can take a scale there."""
    if not user.args or user.args[0] is not gate or gate in user.args[1:] or gate in user.kwargs.values():
        return False
    if user.op == "call_module" and calls.get(user.target, 0) != 1:
        return False        # a layer called twice: its other calls read no gate
    return TABLE.lookup(user, modules).absorbs_scale(user, module)


def _takes_output_scale(module: fx.GraphModule, modules: dict, producer, gate: fx.Node, calls: dict) -> bool:
    """Whether the gate follows a layer alone (its only reader, the layer called once)
    whose rule can take the scale into its weight rows and bias."""
    if not isinstance(producer, fx.Node) or not producer.op.startswith("call_") or \
            list(producer.users) != [gate]:
        return False
    if producer.op == "call_module" and calls.get(producer.target, 0) != 1:
        return False
    return TABLE.lookup(producer, modules).absorbs_output_scale(producer, module)
