"""timm models, as users bring them (skipped when timm is not installed)."""
import pytest
import torch

import fxsurgeon as fxs
from helpers.flops import flop_counter_macs
from invariants import check_bookkeeping

timm = pytest.importorskip("timm")

MODELS = ["convnext_tiny", "vit_small_patch16_224", "mobilenetv3_large_100", "regnety_008",
          "levit_128", "mixer_b16_224", "ghostnet_100", "cspdarknet53", "hrnet_w18_small"]


@pytest.mark.parametrize("name", MODELS)
def test_timm_model_bookkeeping_and_flops(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, *model.default_cfg["input_size"])
    graph = fxs.analyze(model, x)
    check_bookkeeping(graph, model)
    assert graph.count("flops") == flop_counter_macs(model, x)
    assert graph.free_dims


def test_timm_registry_keeps_its_untraceable_blocks_whole():
    """efficientvit's LiteMLA branches on data; timm registers it as not traceable, and the
    tracer honours timm's registry: one opaque call, its channels pinned with the reason."""
    model = timm.create_model("efficientvit_b0", pretrained=False).eval()
    graph = fxs.analyze(model, torch.randn(1, 3, 224, 224))
    check_bookkeeping(graph, model)
    assert any("leaf module" in r and "LiteMLA" in r for d in graph.dims for r in d.reasons)
    assert graph.free_dims


def test_cli_timm_spec(capsys):
    from fxsurgeon.cli import main
    assert main(["inspect", "timm:resnet18"]) == 0
    assert "11,689,512" in capsys.readouterr().out
