"""The function a rewrite keeps: the old network with the removed channels' scales at zero.

A channel is removed because its scale (BatchNorm γ) is zero, or below the dead test's
threshold. With γ exactly zero it emits a constant, which folding puts back, so the new
network computes the old one's function exactly. With γ merely small the channel is
nearly constant, and removing it changes the function slightly, as the paper does. Both
cases have one exact statement: the new network computes the old one *with the removed
channels' scales set to zero* — the same function when they already are. This module
runs that reference network (without touching the user's tensors) for folding to read
and for the rewrite's self-check to compare against.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn
from torch.func import functional_call

from .modes import evaluating
from .nodes import getattr_path, mutable


class _Run(nn.Module):
    """Runs ``gm`` node by node, keeping the arguments and outputs of the named nodes."""

    def __init__(self, gm: fx.GraphModule, args_of: set[str], outputs_of: set[str]):
        super().__init__()
        self.gm = gm
        self.args_of, self.outputs_of = args_of, outputs_of
        self.args: dict[str, tuple] = {}
        self.outputs: dict[str, object] = {}

    def forward(self, *inputs):
        run = self

        class Capture(fx.Interpreter):
            def fetch_args_kwargs_from_env(self, n):
                args, kwargs = super().fetch_args_kwargs_from_env(n)
                return mutable(args), mutable(kwargs)

            def run_node(self, n):
                if n.name in run.args_of:
                    run.args[n.name] = self.fetch_args_kwargs_from_env(n)
                out = super().run_node(n)
                if n.name in run.outputs_of:
                    run.outputs[n.name] = out
                return out

        return Capture(self.gm).run(*inputs)


def run_graph(gm: fx.GraphModule, inputs: tuple, overrides: dict | None = None, args_of=(),
              outputs_of=()) -> tuple[object, dict, dict]:
    """``gm(*inputs)`` in eval mode without gradients, with the tensors in ``overrides``
    swapped in for the call (training flags restored after). Returns the output, and the
    arguments and outputs of the named nodes."""
    runner = _Run(gm, set(args_of), set(outputs_of))
    with evaluating(gm), torch.no_grad():
        out = functional_call(runner, {f"gm.{k}": v for k, v in (overrides or {}).items()}, inputs)
    return out, runner.args, runner.outputs


def readout_sources(prop) -> list:
    """The liveliness sources that are not norm scales: the weights reading attention
    heads back (their columns judge a head)."""
    weights = {sc.weight for sc in prop.scales.values()}
    return [r for r in prop.axes if r.role == "source" and r.param not in weights]


def zeroed_scales(graph, kept, silenced=None) -> dict[str, torch.Tensor]:
    """Copies of the tensors that take away the channels ``kept`` drops. A channel a
    norm judges gets its scale γ at zero (an attention head, the projection columns that
    read it: it then adds nothing): dead, it keeps emitting the constant its shift
    gives (ReLU(β)), which folding puts back, so the function is kept. One no norm
    judges gets its producer rows at zero. One ``silenced`` (removed by a budget although
    alive: a callable on tags) loses every per-channel shift and bias on its way too
    (β, a producer's bias, an added per-channel buffer), so that it emits the activation
    of zero, which a gate or any other product leaves constant."""
    prop = graph.propagation
    out: dict[str, torch.Tensor] = {}
    quiet = silenced or (lambda tags: np.zeros(len(tags), bool))

    def silence(name: str, axis: int, gone: np.ndarray) -> None:
        t = out.get(name)
        t = getattr_path(graph.module, name).detach().clone() if t is None else t
        index = torch.as_tensor(np.nonzero(gone)[0], device=t.device)
        out[name] = t.index_fill(axis, index, 0)

    weights = {sc.weight for sc in prop.scales.values()}
    readouts = readout_sources(prop)
    judged = [prop.uf.find(sc.tags) for sc in prop.scales.values()] + [prop.uf.find(r.tags) for r in readouts]
    judged = np.unique(np.concatenate(judged)) if judged else np.zeros(0, np.int64)
    for scale in prop.scales.values():
        gone = ~kept(scale.tags)
        if gone.any():
            silence(scale.weight, 0, gone)
            if scale.bias is not None and (gone & quiet(scale.tags)).any():
                silence(scale.bias, 0, gone & quiet(scale.tags))
    for r in readouts:          # an attention head: the projection columns that read it
        gone = ~kept(r.tags) & (r.tags != 0)
        if gone.any():
            silence(r.param, r.axis, gone)
    for r in prop.axes:
        if r.divisor != 1 or r.role not in ("out", "param"):
            continue
        gone = ~kept(r.tags) & (r.tags != 0)
        if r.role == "out":
            gone &= ~np.isin(prop.uf.find(r.tags), judged)
        else:                   # biases and shifts along the way, of silenced channels only
            gone &= quiet(r.tags)
        if gone.any() and r.param not in weights:
            silence(r.param, r.axis, gone)
    return out
