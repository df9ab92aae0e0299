"""Shape propagation: one real forward pass that records what every node returns.

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
    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        n.meta["fxs_value"] = _to_meta(out)
        if n.op in ("call_module", "call_function", "call_method") and \
                classify(n, self._modules_by_name) == "opaque":
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            with FlopCounterMode(display=False) as counter:
                getattr(self, n.op)(n.target, args, kwargs)
            n.meta["fxs_macs"] = counter.get_total_flops() // 2
        return out


def propagate_shapes(gm: fx.GraphModule, args: tuple) -> None:
    """Run ``gm`` once on ``args`` without gradients and annotate every node."""
    rec = _ShapeRecorder(gm)
    rec._modules_by_name = dict(gm.named_modules())
    with torch.no_grad():
        rec.run(*args)
