"""Small models the tests share, built from configs (nothing is downloaded)."""
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from randomnets import ConvBlock


def hf(name):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tokens = (torch.randint(0, 100, (2, 12)), torch.randint(0, 100, (3, 7)))
    images = (torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32))
    if name == "bert":
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=37,
                                         max_position_embeddings=64)
        return transformers.BertModel(config), tokens
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                         use_cache=False, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2Model(config), tokens
    if name in ("llama", "qwen2", "mistral"):      # grouped-query: 4 query heads, 2 key/value heads
        config = getattr(transformers, {"llama": "LlamaConfig", "qwen2": "Qwen2Config",
                                        "mistral": "MistralConfig"}[name])(
            vocab_size=100, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
        return transformers.AutoModel.from_config(config), tokens
    if name == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=37)
        return transformers.ViTModel(config), images
    if name == "convnext":
        config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
        return transformers.ConvNextModel(config), (images[0], torch.randn(3, 3, 48, 48))
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="bottleneck")
    return transformers.ResNetModel(config), (images[0], torch.randn(3, 3, 48, 48))


def yolo():
    """YOLOv8n from its yaml, with ultralytics' settings in a temporary folder and offline."""
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())
    os.environ.setdefault("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    return tasks.DetectionModel("yolov8n.yaml", verbose=False), (torch.randn(1, 3, 64, 64),
                                                                  torch.randn(1, 3, 96, 96))


class Bottleneck(nn.Module):
    """ResNeXt's block: 1x1 in, 3x3 grouped, 1x1 out, around a residual."""

    def __init__(self, c, width, groups):
        super().__init__()
        self.a = ConvBlock(c, width, 1)
        self.b = ConvBlock(width, width, 3, groups=groups)
        self.c = nn.Conv2d(width, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.c(self.b(self.a(x)))))


def block_net(c=8, width=12, groups=3):
    return nn.Sequential(ConvBlock(3, c), Bottleneck(c, width, groups), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(c, 4))


class HandWritten(nn.Module):
    """Attention as people write it: q, k, v layers, a view to heads with a literal head
    count (or -1), scaled_dot_product_attention, a merge back and an output layer."""

    def __init__(self, dim, heads, infer):
        super().__init__()
        self.heads, self.head_dim, self.infer = heads, dim // heads, infer
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape
        shape = (b, n, -1 if self.infer else self.heads, self.head_dim)
        q, k, v = (f(x).view(*shape).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.o(y.reshape(b, n, -1) if self.infer else y.reshape(b, n, self.heads * self.head_dim))


def dead_digits_cnn(num_classes: int = 10) -> nn.Module:
    """``zoo:digits_cnn`` with the first quarter of every layer's channels dead for good:
    their filters and scales at zero (the normalised output is then zero, so neither
    takes a gradient). A model factory for the CLI (``helpers.models:dead_digits_cnn``)
    whose NR runs have something to rejuvenate at their first check."""
    from fxsurgeon.zoo import digits_cnn
    model = digits_cnn(num_classes)
    with torch.no_grad():
        for conv, bn in zip(model.features[:-1], model.features[1:], strict=True):
            if isinstance(conv, nn.Conv2d):
                dead = slice(0, conv.out_channels // 4)
                conv.weight[dead] = 0
                bn.weight[dead] = 0
    return model


class Mixed(nn.Module):
    """A stem and one residual block that BatchNorm judges, then an MLP head whose hidden
    units no norm judges: a dimension in each state the pictures of ``inspect`` show."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x)).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))
