"""The function a rewrite keeps: the old network with the removed channels' scales at zero.

A channel is removed because its scale (BatchNorm γ) is zero, or below the dead test's
threshold. With γ exactly zero it emits a constant, which folding puts back, so the new
network computes the old one's function exactly. With γ merely small the channel is
nearly constant, and removing it changes the function slightly, as the paper does. Both
cases have one exact statement: the new network computes the old one *with the removed
channels' scales set to zero* — the same function when they already are. This module
runs that reference network (without touching the user's tensors) for folding to read,
for the rewrite's self-check to compare against, and for the plan to read which constant
a dead channel holds where a computed map multiplies it (:mod:`.modulated`). It sits with
the judges (it says what removing a channel means), before the stages that use it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import fx, nn
from torch.func import functional_call

from ..channels.modes import own_run
from ..channels.nodes import getattr_path, mutable
from ..errors import FxSurgeonError


class _Run(fx.Interpreter):
    """Runs ``gm`` node by node with the tensors ``overrides`` names swapped in, each made
    when a node reads it and dropped after (holding all of a ViT-L's zeroed copies at once
    was a quarter of its rewrite's memory); keeps what ``args_of`` and ``outputs_of`` take
    of the named nodes' arguments and outputs."""

    def __init__(self, gm: fx.GraphModule, overrides: Mapping[str, torch.Tensor],
                 args_of: Mapping[str, Callable[[list, dict], object]],
                 outputs_of: Mapping[str, Callable[[object], object]]):
        super().__init__(gm)
        self.overrides = overrides
        held = {id(t) for _, t in [*gm.named_parameters(remove_duplicate=False),
                                   *gm.named_buffers(remove_duplicate=False)]}
        self.by_id = {id(getattr_path(gm, name)): name for name in overrides}   # a tensor, any name
        lost = [name for i, name in self.by_id.items() if i not in held]
        if lost:            # swapped in nowhere, the reference would be wrong
            raise FxSurgeonError(f"cannot swap in {lost}: not a parameter or buffer of the network")
        self.swapped: dict[str, dict[str, str]] = {}
        self.args_of, self.outputs_of = args_of, outputs_of
        self.args: dict[str, object] = {}
        self.outputs: dict[str, object] = {}

    def fetch_args_kwargs_from_env(self, n):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return mutable(args), mutable(kwargs)

    def run_node(self, n):
        if n.name in self.args_of:
            self.args[n.name] = self.args_of[n.name](*self.fetch_args_kwargs_from_env(n))
        out = super().run_node(n)
        if n.name in self.outputs_of:
            self.outputs[n.name] = self.outputs_of[n.name](out)
        return out

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        name = self.by_id.get(id(value))
        return value if name is None else self.overrides[name]

    def call_module(self, target, args, kwargs):
        if target not in self.swapped:        # the module's own names of overridden tensors
            m = self.submodules[target]
            self.swapped[target] = {k: self.by_id[id(t)] for k, t in [
                *m.named_parameters(remove_duplicate=False), *m.named_buffers(remove_duplicate=False)]
                if id(t) in self.by_id}
        names = self.swapped[target]
        if not names:
            return super().call_module(target, args, kwargs)
        made = {name: self.overrides[name] for name in set(names.values())}   # tied: one tensor
        return functional_call(self.submodules[target], {k: made[name] for k, name in names.items()},
                               tuple(args), kwargs)


def _whole(value):
    return value


def run_graph(gm: fx.GraphModule, inputs: tuple, overrides: Mapping[str, torch.Tensor] | None = None,
              args_of: Mapping[str, Callable[[list, dict], object]] | None = None,
              outputs_of: Mapping[str, Callable[[object], object]] | Iterable[str] = ()
              ) -> tuple[object, dict, dict]:
    """``gm(*inputs)`` in eval mode without gradients, with the tensors in ``overrides``
    (by name) swapped in (training flags restored after). Returns the output, what
    ``args_of[name](args, kwargs)`` keeps of each named node's arguments and
    ``outputs_of[name](output)`` of its output (made as the node runs: only that is
    held); ``outputs_of`` may also just name the nodes whose outputs are kept whole."""
    if not isinstance(outputs_of, Mapping):
        outputs_of = dict.fromkeys(outputs_of, _whole)
    runner = _Run(gm, overrides or {}, args_of or {}, outputs_of)
    with own_run(gm):
        out = runner.run(*inputs)
    return out, runner.args, runner.outputs


class Zeroed(Mapping):
    """Tensors of a module with some positions along an axis at zero, each made anew when
    read (``zeroed[name]``): nothing is held between reads."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.fills: dict[str, list[tuple[int, np.ndarray]]] = {}

    def zero(self, name: str, axis: int, positions: np.ndarray) -> None:
        self.fills.setdefault(name, []).append((axis, positions))

    def __getitem__(self, name: str) -> torch.Tensor:
        fills = self.fills[name]
        t = getattr_path(self.module, name).detach().clone()
        for axis, positions in fills:
            t.index_fill_(axis, torch.as_tensor(positions, device=t.device), 0)
        return t

    def __iter__(self):
        return iter(self.fills)

    def __len__(self) -> int:
        return len(self.fills)


def readout_sources(prop) -> list:
    """The liveliness sources that are not norm scales: the weights reading attention
    heads back (their columns judge a head)."""
    weights = {sc.weight for sc in prop.scales.values()}
    return [r for r in prop.axes if r.role == "source" and r.param not in weights]


def zeroed_scales(graph, kept, silenced=None) -> Zeroed:
    """The tensors that take away the channels ``kept`` drops, as :class:`Zeroed` copies.
    A channel a norm judges gets its scale γ at zero (an attention head, the projection
    columns that read it: it then adds nothing): dead, it keeps emitting the constant its shift
    gives (ReLU(β)), which folding puts back, so the function is kept. One no norm
    judges gets its producer rows at zero. One ``silenced`` (removed by a budget although
    alive: a callable on tags) loses every producer's rows (a plain conv added to a
    normed one's channels writes them too) and every per-channel shift and bias on its
    way (β, a producer's bias, an added per-channel buffer), so that it emits the
    activation of zero, which a gate or any other product leaves constant."""
    prop = graph.propagation
    out = Zeroed(graph.module)
    quiet = silenced or (lambda tags: np.zeros(len(tags), bool))

    def silence(name: str, axis: int, gone: np.ndarray) -> None:
        out.zero(name, axis, np.nonzero(gone)[0])

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
            gone &= ~np.isin(prop.uf.find(r.tags), judged) | quiet(r.tags)
        else:                   # biases and shifts along the way, of silenced channels only
            gone &= quiet(r.tags)
        if gone.any() and r.param not in weights:
            silence(r.param, r.axis, gone)
    return out
