"""The paper's CIFAR architectures match its parameter counts and descriptions."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.zoo import MODELS, SHAPES


@pytest.mark.parametrize("name, millions", [("vgg19_cifar", 20.04), ("resnet164_cifar", 1.70),
                                            ("densenet_bc100_k40_cifar", 8.27)])
def test_parameter_counts_match_the_paper(name, millions):
    model = MODELS[name](num_classes=10)
    graph = fxs.analyze(model, torch.randn(1, 3, 32, 32))
    assert round(graph.count("params") / 1e6, 2) == millions


def test_vgg19_is_the_papers_variant():
    model = MODELS["vgg19_cifar"]()
    layers = list(model.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 16
    assert all(isinstance(layers[i + 1], nn.BatchNorm2d) for i in convs)
    # the pools follow the 4th and the 10th conv (each conv is conv, BN, ReLU)
    assert pools == [convs[3] + 3, convs[9] + 3]
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_every_channel_is_read_by_the_bn_that_follows_it():
    """NR reads liveliness from the γ after each producer: every free dimension of the
    paper's networks has one; the transformer-style ones (no BatchNorm) get a gate each."""
    for name, factory in MODELS.items():
        graph = fxs.analyze(factory(), torch.randn(SHAPES.get(name, (1, 3, 32, 32))))
        if name in ("vit_digits", "convnext_digits"):
            judged = fxs.add_judges(graph)
            assert judged.unjudged == {} and len(judged.gates) == len(graph.free_dims) == 2, name
            continue
        for d in graph.free_dims:
            assert d.sources, d.name
