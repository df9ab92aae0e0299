"""Named coupling facts on real torchvision models."""
import numpy as np
import pytest
import torch
import torchvision

import fxsurgeon as fxs


@pytest.fixture(scope="module")
def graphs():
    cache = {}

    def get(name):
        if name not in cache:
            model = torchvision.models.get_model(name)
            cache[name] = fxs.analyze(model, torch.randn(1, 3, 224, 224))
        return cache[name]
    return get


def _dim_with(graph, producer):
    return next(d for d in graph.dims if producer in d.producers)


def _member(dim, tensor, role):
    return next(m for m in dim.members if m.tensor == tensor and m.role == role)


def test_resnet50_trunk_is_one_dimension_per_stage(graphs):
    g = graphs("resnet50")
    trunks = [d for d in g.dims if d.kind == "residual trunk"]
    assert len(trunks) == 4
    for stage, blocks, width in ((1, 3, 256), (2, 4, 512), (3, 6, 1024), (4, 3, 2048)):
        trunk = _dim_with(g, f"layer{stage}.0.conv3")
        expected = {f"layer{stage}.{i}.conv3" for i in range(blocks)} | {f"layer{stage}.0.downsample.0"}
        assert set(trunk.producers) == expected and trunk.width == width and trunk.free
        # every block's BN after conv3 and the downsample BN read the trunk's liveliness
        assert {m.tensor for m in trunk.sources} == {f"layer{stage}.{i}.bn3.weight" for i in range(blocks)} \
            | {f"layer{stage}.0.downsample.1.weight"}


def test_densenet121_concatenation_keeps_parts_with_offsets(graphs):
    g = graphs("densenet121")
    consumer = "features.denseblock1.denselayer3.conv1.weight"
    parts = [("features.conv0", "[0:64]"), ("features.denseblock1.denselayer1.conv2", "[64:96]"),
             ("features.denseblock1.denselayer2.conv2", "[96:128]")]
    for producer, span in parts:
        d = _dim_with(g, producer)
        assert d.producers == [producer] and d.kind == "concat part" and d.free
        assert _member(d, consumer, "in").span == span
        assert _member(d, "features.denseblock1.denselayer3.norm1.weight", "param").span == span


def test_shufflenet_channel_shuffle_is_an_exact_permutation(graphs):
    g = graphs("shufflenet_v2_x1_0")
    a, b = _dim_with(g, "stage2.0.branch1.2"), _dim_with(g, "stage2.0.branch2.5")
    assert a.free and b.free and a.width == b.width == 58
    # cat(A, B) shuffled with 2 groups is A0 B0 A1 B1 ...; the next block's branch takes
    # the second half, so its input position j holds channel 29 + j // 2 of A (even j) or B
    consumer = "stage2.1.branch2.0.weight"
    for dim, parity in ((a, 0), (b, 1)):
        m = _member(dim, consumer, "in")
        assert np.array_equal(m.positions, np.arange(parity, 58, 2))
        assert np.array_equal(m.channels, 29 + m.positions // 2)


def test_mobilenet_v3_squeeze_excitation_gate_couples_main_path(graphs):
    g = graphs("mobilenet_v3_large")
    gate = _dim_with(g, "features.4.block.2.fc2")
    assert "features.4.block.0.0" in gate.producers     # the expand conv of the main path
    assert gate.kind == "gated" and gate.free and gate.width == 72


def test_vit_hidden_width_is_one_dimension_with_token_and_embedding(graphs):
    g = graphs("vit_b_16")
    hidden = _dim_with(g, "conv_proj")
    tensors = {m.tensor for m in hidden.members}
    assert hidden.width == 768
    assert {"class_token", "encoder.pos_embedding", "heads.head.weight"} <= tensors
    assert _member(hidden, "encoder.pos_embedding", "param").axis == 2
    assert not hidden.free
    assert any("LayerNorm statistics over the channel axis" in r for r in hidden.reasons)
    mlp = _dim_with(g, "encoder.layers.encoder_layer_0.mlp.0")
    assert mlp.free and mlp.width == 3072


def test_squeezenet_final_conv_is_pinned_as_model_output(graphs):
    g = graphs("squeezenet1_0")
    final = _dim_with(g, "classifier.1")
    assert final.reasons == ["model output"] and final.kind == "output"
    assert g["x"].pinned == "model input 'x'"
