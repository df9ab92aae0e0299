"""Every torchvision classification model analyses with exact bookkeeping and FLOPs.

CI runs SUBSET; ``pytest --full`` sweeps all 80 models.
"""
import pytest
import torch
import torchvision
from torch import nn

import fxsurgeon as fxs
from helpers.flops import flop_counter_macs
from invariants import check_bookkeeping
from zoo import ALL, sweep

#: models whose multiply-accumulates all happen inside Conv/Linear/MultiheadAttention modules
HOOKABLE = {"resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
            "convnext_tiny", "regnet_y_400mf", "vit_b_16", "squeezenet1_0"}


def _published(name, size):
    """torchvision's published GFLOPS (weights meta ``_ops``, multiply-accumulates) for the
    weights whose crop is the model's default input size, or None."""
    for weights in torchvision.models.get_model_weights(name):
        if weights.transforms().crop_size[0] == size:
            return weights.meta["_ops"]
    return None


def _input_size(name):
    """The input size a model is built for: its first weights' crop, unless it fixes one."""
    fixed = {"vit_h_14": 224}            # built for 224; its 518 weights need image_size=518
    return fixed.get(name) or list(torchvision.models.get_model_weights(name))[0].transforms().crop_size[0]


def _hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates counted by forward hooks on the modules that do them."""
    total = 0

    def conv(m, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.weight[0, 0].numel()

    def linear(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    def mha(m, inp, out):
        nonlocal total
        n, length, e = inp[0].shape                      # batch_first in torchvision
        total += 4 * n * length * e * e + 2 * n * length * length * e

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else
                                       linear if type(m) is nn.Linear else mha)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention))
               and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def _check(name):
    """Bookkeeping exact; MACs equal the published, FlopCounterMode and hook counts."""
    model = torchvision.models.get_model(name).eval()
    size = _input_size(name)
    x = torch.randn(1, 3, size, size)
    graph = fxs.analyze(model, x)
    check_bookkeeping(graph, model)
    macs = graph.count("flops")
    ops = _published(name, size)
    # published counts have 3 decimals in GMACs: agree within that rounding or 1 %
    assert ops is not None and abs(macs / 1e9 - ops) <= max(0.0006, 0.01 * ops), (macs / 1e9, ops)
    assert macs == flop_counter_macs(model, x)
    if name in HOOKABLE:
        assert macs == _hook_macs(model, x)
    assert graph.free_dims, "every torchvision model has some free dimension"


@pytest.mark.parametrize("name", sweep())
def test_torchvision_model(name):
    _check(name)


def test_zoo_has_80_models():
    assert len(ALL) == 80


def test_resnet50_flops_match_published_count():
    """torchvision's model table lists ResNet-50 at 4.09 GFLOPS (multiply-accumulates, 224x224);
    the exact figure in its weights metadata is 4.089."""
    graph = fxs.analyze(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    assert graph.count("flops") == 4_089_184_256
