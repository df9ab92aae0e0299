"""Each partitioned layer in its faster exact form, timed on the device it runs on.

A ``cr`` or ``ca`` layer (:class:`~fxsurgeon.layers.partitioned.Partitioned`) computes the
same function and trains the same parameters in its ``"split"`` form (one kernel per
block: the fewest FLOPs) and its ``"dense"`` form (one kernel on the assembled weight:
the fewest launches). Which is faster depends on the layer's widths, the batch and the
device: small batches on a GPU are launch-bound, large ones and CPUs pay for FLOPs.
:func:`choose_forms` times one training step (forward and backward) of each layer in
both forms, on the input it reads when the network runs the example inputs, and keeps
the faster. A network compiled with ``torch.compile`` fuses differently from the eager
steps timed here; its users can set the forms themselves (:func:`set_forms`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..errors import FxSurgeonError
from ..layers.partitioned import Partitioned
from ..layers.streamed import canonical

#: what ``form=`` takes: one form for every layer, or ``"auto"`` (timed, layer by layer)
FORMS = ("split", "dense", "auto")


@dataclass(frozen=True)
class FormTiming:
    """The median seconds of one training step of ``layer`` in each form, and the form kept."""
    layer: str
    split_s: float
    dense_s: float
    form: str


def set_forms(module: nn.Module, form: str) -> list[str]:
    """Put every partitioned layer of ``module`` in ``form`` (``"split"`` or ``"dense"``);
    returns their names."""
    if form not in FORMS[:2]:
        raise FxSurgeonError(f"a partitioned layer's form is one of {FORMS[:2]}, not {form!r}")
    names = [name for name, m in module.named_modules() if isinstance(m, Partitioned)]
    for name in names:
        module.get_submodule(name).form = form
    return names


def choose_forms(module: nn.Module, example_inputs: tuple, repeats: int = 3) -> list[FormTiming]:
    """Time each partitioned layer of ``module`` (a cr or ca network, streamed or not) in
    both forms on the input it reads when ``module`` runs ``example_inputs``, and leave it in
    the faster (split on a tie). Layers on the meta device, and layers the example never
    reaches, stay as they are. The timing leaves no gradient, running statistic or
    training mode behind."""
    if repeats < 1:
        raise FxSurgeonError(f"repeats must be at least 1, got {repeats}")
    layers = {name: m for name, m in module.named_modules() if isinstance(m, Partitioned)}
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_, args):
            seen.setdefault(name, args[0].detach())
        return hook

    handles = [m.register_forward_pre_hook(keep(name)) for name, m in layers.items()]
    plain = canonical(module) if isinstance(module, fx.GraphModule) else module
    modes = {m: m.training for m in plain.modules()}
    try:        # in eval mode: no running statistics move, no dropout draws
        with torch.no_grad():       # the plain form calls each layer on its whole input
            plain.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    timings = []
    for name, x in seen.items():
        layer = layers[name]
        if x.device.type == "meta":
            continue
        seconds = {form: _step_seconds(layer, form, x, repeats) for form in FORMS[:2]}
        layer.form = "dense" if seconds["dense"] < seconds["split"] else "split"
        timings.append(FormTiming(name, seconds["split"], seconds["dense"], layer.form))
    return timings


def _step_seconds(layer: Partitioned, form: str, x: torch.Tensor, repeats: int) -> float:
    """The median seconds of a forward and backward pass of ``layer`` in ``form`` on its
    input held in parts, as a streamed network holds it (after one untimed pass)."""
    layer.form = form
    # a copy of each gradient to put back: backward adds into the same tensor
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in layer.parameters()]
    parts = [p.detach().requires_grad_(x.is_floating_point()) for p in layer._inputs(x)]
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    try:
        for k in range(repeats + 1):
            sync()
            start = time.perf_counter()
            outs = layer.forward_parts(list(parts), x)
            total = sum(o.sum() for o in outs)
            if total.requires_grad:
                total.backward()
            sync()
            if k:
                times.append(time.perf_counter() - start)
    finally:
        for p, g in grads:
            p.grad = g
    return statistics.median(times)
