"""Random transformer-style networks for property tests: pre-norm blocks (LayerNorm or
RMSNorm) with multi-head attention and an MLP (GELU, SiLU or SwiGLU), on tokens or on a
ConvNeXt-style image stage (depthwise conv, channels-last norm, pointwise expansion).
``nets()`` is the hypothesis strategy; each net comes with its example inputs at two sizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

NORMS = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``, or SwiGLU's ``down(silu(gate(x)) · up(x))``."""

    def __init__(self, dim: int, hidden: int, kind: str):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden)
        self.up = nn.Linear(dim, hidden, bias=False) if kind == "swiglu" else None
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.SiLU() if kind in ("silu", "swiglu") else nn.GELU()

    def forward(self, x):
        h = self.act(self.fc1(x))
        return self.fc2(h * self.up(x) if self.up is not None else h)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, norm: str, mlp: str, attention: bool):
        super().__init__()
        self.norm1 = NORMS[norm](dim) if attention else None
        self.attn = Attention(dim, heads) if attention else None
        self.norm2 = NORMS[norm](dim)
        self.mlp = Mlp(dim, hidden, mlp)

    def forward(self, x):
        if self.attn is not None:
            x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenNet(nn.Module):
    def __init__(self, vocab_or_dim: int, dim: int, blocks: list[Block], classes: int = 5):
        super().__init__()
        self.embed = nn.Linear(vocab_or_dim, dim)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, expansion: int, norm: str, mlp: str):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = NORMS[norm](dim)
        self.mlp = Mlp(dim, expansion * dim, mlp)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.mlp(y).permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    def __init__(self, dim: int, blocks: list[ConvNeXtBlock], classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@st.composite
def nets(draw):
    """``(net, inputs at one size, inputs at another)``, float64, in eval mode."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    norm = draw(st.sampled_from(sorted(NORMS)))
    mlps = st.sampled_from(["gelu", "silu", "swiglu"])
    dim = draw(st.sampled_from([8, 12, 16]))
    if draw(st.booleans()):
        heads = draw(st.sampled_from([h for h in (1, 2, 4) if dim % h == 0]))
        blocks = [Block(dim, heads, draw(st.sampled_from([8, 16, 24])), norm, draw(mlps), draw(st.booleans()))
                  for _ in range(draw(st.integers(1, 3)))]
        net, sizes = TokenNet(6, dim, blocks), [(2, 5, 6), (2, 9, 6)]
    else:
        blocks = [ConvNeXtBlock(dim, draw(st.sampled_from([2, 4])), norm, draw(mlps))
                  for _ in range(draw(st.integers(1, 2)))]
        net, sizes = ConvNeXtNet(dim, blocks), [(2, 3, 8, 8), (2, 3, 12, 10)]
    net = net.double().eval()
    return net, *(torch.randn(*s, dtype=torch.float64) for s in sizes)
