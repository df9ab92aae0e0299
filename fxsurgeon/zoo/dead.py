"""Dead channels on purpose, to check that a surgery keeps a model's function: BatchNorm
statistics drawn at random (so removed channels emit nonzero constants) and the scales of
a random share of every free dimension's channels set to zero."""
import numpy as np
import torch
from torch import nn


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random γ (both signs, |γ| in [0.1, 1.5], so rescaling has work), β and running
    statistics of every BatchNorm-like layer of ``model``, in place."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine and m.track_running_stats:
            with torch.no_grad():
                sign = torch.randint(0, 2, m.weight.shape, generator=g) * 2 - 1
                m.weight.copy_(sign * (0.1 + 1.4 * torch.rand(m.weight.shape, generator=g)))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def kill_channels(graph, fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Zero the scales that judge a random ``fraction`` of every free dimension's channels
    of ``graph`` (a ChannelGraph): γ, or an attention head's projection columns. Returns
    the dead channels, ``{dimension name: bool array}``."""
    rng = np.random.default_rng(seed)
    params = {**dict(graph.module.named_parameters()), **dict(graph.module.named_buffers())}
    dead = {}
    for d in graph.free_dims:
        dead[d.name] = rng.random(d.width) < fraction
        for s in d.sources:
            at = torch.as_tensor(s.positions[dead[d.name][s.channels]])
            with torch.no_grad():
                params[s.tensor].index_fill_(s.axis, at, 0)
    return dead
