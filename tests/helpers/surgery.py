"""Surgery helpers: random norms, dead channels, and comparisons of two networks."""
import numpy as np
import torch
from torch import nn


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random γ (both signs, |γ| in [0.1, 1.5], so rescaling has work), β and running
    statistics (so removed channels emit nonzero constants)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine and m.track_running_stats:
            with torch.no_grad():
                sign = torch.randint(0, 2, m.weight.shape, generator=g) * 2 - 1
                m.weight.copy_(sign * (0.1 + 1.4 * torch.rand(m.weight.shape, generator=g)))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def assert_same_function(model, new, x):
    y0, y1 = model(x), new(x)
    assert y0.shape == y1.shape
    assert (y0 - y1).abs().max() <= 1e-9 * max(1.0, y0.abs().max()), (y0 - y1).abs().max()


#: float64 surgery on these peaks far above the 4.9 GB measured for vgg16 (138M parameters);
#: two at once under xdist do not fit in CI's 24 GiB
TOO_BIG = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_32gf"}


def kill(graph, fraction, seed=0):
    """Zero the γ of a random ``fraction`` of every free dimension's channels."""
    rng = np.random.default_rng(seed)
    params = {**dict(graph.module.named_parameters()), **dict(graph.module.named_buffers())}
    dead = {}
    for d in graph.free_dims:
        dead[d.name] = rng.random(d.width) < fraction
        for s in d.sources:     # γ, or an attention head's projection columns
            at = torch.as_tensor(s.positions[dead[d.name][s.channels]])
            with torch.no_grad():
                params[s.tensor].index_fill_(s.axis, at, 0)
    return dead


def same(a, b):
    return (a - b).abs().max() <= 1e-9 * max(1.0, float(a.abs().max()))
