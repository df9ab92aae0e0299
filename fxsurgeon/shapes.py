"""Shape propagation: one real forward pass that records what every node returns.

A real pass is cheaper than FakeTensorMode here: measured, fake propagation was 3-5x
slower on torchvision models of ordinary size.

Each node gets ``meta["fxs_value"]``: its output with every tensor replaced by a
tensor on the ``meta`` device (shape and dtype, no data). Ops the analyser does not
understand get ``meta["fxs_macs"]``, their multiply-accumulates measured by
:class:`torch.utils.flop_counter.FlopCounterMode`, so the cost model stays complete.
"""
from __future__ import annotations

import torch
from torch import fx
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from .ops import classify


def _to_meta(value):
    return tree_map(lambda v: v.detach().to("meta") if isinstance(v, torch.Tensor) else v, value)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.by_name = dict(gm.named_modules())

    def run_node(self, n: fx.Node):
        if n.op in ("call_module", "call_function", "call_method") and \
                classify(n, self.by_name) == "opaque":
            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            n.meta["fxs_macs"] = counter.get_total_flops() // 2
        else:
            out = super().run_node(n)
        n.meta["fxs_value"] = _to_meta(out)
        return out


def propagate_shapes(gm: fx.GraphModule, args: tuple) -> None:
    """Run ``gm`` once on ``args`` without gradients and annotate every node."""
    for n in gm.graph.nodes:
        n.meta.pop("fxs_value", None)
    with torch.no_grad():
        _ShapeRecorder(gm).run(*args)
