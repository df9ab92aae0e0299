"""Training helpers: dead channels in a wrapper's network, and a saved surgery."""
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.zoo import digits_cnn
from helpers.surgery import kill, randomise_norms


def kill_half(nr):
    """Zero γ of half the channels of every BatchNorm of the current network."""
    with torch.no_grad():
        for m in nr.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[::2] = 0


def kill_relu_units(network, channels=(0, 2, 5)):
    """Make ``channels`` of the first BatchNorm output exactly zero after its ReLU."""
    with torch.no_grad():
        bn = network.get_submodule("1")
        bn.weight[list(channels)] = 0
        bn.bias[list(channels)] = -1


def saved_surgery(tmp_path, spec=None, model=None):
    """digits_cnn (or ``model``) with a third of its channels dead, pruned and saved with
    ``fxs.save``; returns the path and the pruned network."""
    model = model or digits_cnn()
    randomise_norms(model)
    graph = fxs.analyze(model, torch.zeros(1, 1, 8, 8))
    kill(graph, 0.3)
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune"))
    path = tmp_path / "net.pt"
    fxs.save(graph, surgery, path, spec=spec)
    return path, surgery.module.eval()


def interrupt_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th evaluation (the end of an epoch) of ``fxsurgeon train`` raise
    KeyboardInterrupt."""
    import fxsurgeon.experiments.loop as loop
    real, calls = loop.evaluate, []

    def evaluate(*args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(loop, "evaluate", evaluate)
