"""Shape propagation: what every node returns, without computing values where possible.

Each node gets ``meta["fxs_value"]``: its output with every tensor replaced by a
tensor on the ``meta`` device (shape and dtype, no data). The graph first runs on meta
tensors, parameters and buffers included, which does no arithmetic (FakeTensorMode
was measured 3-5x slower than this). Models with data-dependent ops, which meta
tensors cannot run, fall back to one real forward pass. Ops the analyser does not
understand (and those whose rule may turn out so, such as matmuls) get
``meta["fxs_macs"]``, their multiply-accumulates counted by
:class:`~torch.utils.flop_counter.FlopCounterMode`, so the cost model stays complete.
"""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.func import functional_call
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from ..channels.modes import own_run
from ..channels.nodes import mutable
from ..ops import TABLE


def _to_meta(value):
    if isinstance(value, torch.Tensor):         # most values: no pytree walk
        return _meta_tensor(value)
    return tree_map(lambda v: _meta_tensor(v) if isinstance(v, torch.Tensor) else v, value)


def _meta_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the meta device, detached (a meta tensor without gradient is itself)."""
    if t.is_meta and not t.requires_grad:
        return t
    return t.detach().to("meta")


#: device moves of an exported graph (``.to(device="cpu")``, as a causal mask is built)
_MOVES = (torch.ops.aten.to.dtype_layout, torch.ops.aten.to.device, torch.ops.aten._to_copy.default)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, on_meta: bool):
        super().__init__(gm)
        self.by_name = self.submodules
        self.on_meta = on_meta

    def call_function(self, target, args, kwargs):
        if self.on_meta and target in _MOVES and args and isinstance(args[0], torch.Tensor) \
                and args[0].is_meta:
            # a meta tensor has no data to move: it stays on meta (the values recorded are
            # meta either way), and the run does not fall back to a real forward pass
            if "device" in kwargs:
                kwargs = {**kwargs, "device": torch.device("meta")}
            elif target is torch.ops.aten.to.device:
                args = (args[0], torch.device("meta"), *args[2:])
        return super().call_function(target, args, kwargs)

    def fetch_args_kwargs_from_env(self, n: fx.Node):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return mutable(args), mutable(kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return _to_meta(value) if self.on_meta else value

    def call_module(self, target, args, kwargs):
        if not self.on_meta:
            return super().call_module(target, args, kwargs)
        m = self.by_name[target]
        rule = TABLE.module_rule(m)
        x = args[0] if args else None
        if rule is not None and rule.keeps_shape and isinstance(x, torch.Tensor):
            return _like(x)
        state = _state(m)
        if not state:
            return m(*args, **kwargs)
        meta = {k: v.detach().to("meta") for k, v in state}
        if rule is not None:
            out = rule.forward_with(m, meta, args, kwargs)
            if out is not None:
                return out
        return functional_call(m, meta, args, kwargs)    # slower: swaps every parameter

    def run_node(self, n: fx.Node):
        rule = TABLE.lookup(n, self.by_name) if n.op.startswith("call_") else None
        if rule is not None and rule.measure_macs:
            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            n.meta["fxs_macs"] = counter.get_total_flops() // 2
        elif self.on_meta and rule is not None and rule.elementwise:
            out = self._elementwise(n)
        else:
            out = super().run_node(n)
        n.meta["fxs_value"] = _to_meta(out)
        return out

    def _elementwise(self, n: fx.Node):
        """Shape and dtype of an elementwise op, without meta kernels (written in Python)."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        operands = [*args, *kwargs.values()]
        tensors = [a for a in operands if isinstance(a, torch.Tensor)]
        if not tensors or not all(isinstance(a, (torch.Tensor, int, float, bool)) for a in operands[:2]):
            return super().run_node(n)          # its own kernel says what is wrong (x * None)
        numbers = [a for a in operands[:2] if isinstance(a, (int, float, bool))]
        if len(tensors) == 1 and not numbers:
            return _like(tensors[0])
        dtype = tensors[0].dtype
        for other in tensors[1:2] + numbers[:1]:
            dtype = torch.result_type(torch.empty((), dtype=dtype), other) \
                if not isinstance(other, torch.Tensor) else torch.promote_types(dtype, other.dtype)
        shape = tensors[0].shape if len(tensors) == 1 else _broadcast(tensors[0].shape, tensors[1].shape)
        return torch.empty(shape, dtype=dtype, device="meta")


def _state(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``m``'s parameters and buffers by name (read from its own dicts when it has no
    submodules: ``named_parameters`` walks a generator chain per call)."""
    if m._modules:
        return [*m.named_parameters(), *m.named_buffers()]
    return [(k, v) for d in (m._parameters, m._buffers) for k, v in d.items() if v is not None]


def _like(x: torch.Tensor) -> torch.Tensor:
    """A meta tensor like ``x`` (``torch.empty_like`` is many times slower on meta)."""
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    return torch.empty_like(x, device="meta")


def _broadcast(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    """``torch.broadcast_shapes(a, b)``, in plain Python (torch's goes through its refs)."""
    if a == b:
        return tuple(a)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b, strict=True)):
        return tuple(torch.broadcast_shapes(a, b))         # its error names the sizes
    return tuple(y if x == 1 else x for x, y in zip(a, b, strict=True))


def propagate_shapes(gm: fx.GraphModule, args: tuple) -> None:
    """Annotate every node of ``gm`` with what it returns for ``args``, without gradients
    and in eval mode (its flags restored after): where it must run on real values, the
    run changes nothing (a BatchNorm in training mode would update its running
    statistics: a rewrite in training mode changed its new network's eval function)."""
    for n in gm.graph.nodes:
        n.meta.pop("fxs_value", None)
    with own_run(gm):
        try:
            _ShapeRecorder(gm, on_meta=True).run(*_to_meta(args))
            return
        except Exception:  # noqa: BLE001 - data-dependent ops need real values: run for real
            for n in gm.graph.nodes:
                n.meta.pop("fxs_value", None)
        _ShapeRecorder(gm, on_meta=False).run(*args)
