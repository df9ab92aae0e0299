"""How single ops move, couple or pin channels, on small hand-made models."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxsurgeon as fxs


def analyze(forward, x, **modules):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in modules.items():
                setattr(self, k, v)

    M.forward = forward
    return fxs.analyze(M(), x)


def member(graph, dim, tensor, role="in"):
    return next(m for m in graph[dim].members if m.tensor == tensor and m.role == role)


def test_pixel_shuffle_maps_each_channel_to_its_block():
    g = analyze(lambda s, x: s.b(F.pixel_shuffle(s.a(x), 2)), torch.randn(1, 3, 4, 4),
                a=nn.Conv2d(3, 8, 1), b=nn.Conv2d(2, 5, 1))
    # pixel_shuffle(r=2) folds 4 input channels into each output channel's 2x2 block:
    # b's input channel j reads a's channels 4j..4j+3, so b consumes a non-structured mix
    assert "is not channel-structured" in g["a"].pinned


def test_flatten_then_linear_repeats_each_channel_per_position():
    g = analyze(lambda s, x: s.fc(torch.flatten(s.c(x), 1)), torch.randn(1, 3, 2, 3),
                c=nn.Conv2d(3, 4, 1), fc=nn.Linear(24, 2))
    m = member(g, "c", "fc.weight")
    assert np.array_equal(m.channels, np.repeat(np.arange(4), 6)) and g["c"].free


def test_matmul_couples_the_contracted_axis():
    def forward(s, x):
        q, k = s.q(x), s.k(x)                       # (N, L, 6) each
        return s.o(torch.softmax(q @ k.transpose(1, 2), -1) @ s.v(x))
    g = analyze(forward, torch.randn(1, 5, 4), q=nn.Linear(4, 6), k=nn.Linear(4, 6),
                v=nn.Linear(4, 3), o=nn.Linear(3, 2))
    qk = g["q+1"]
    assert qk.producers == ["q", "k"] and qk.width == 6 and qk.free
    assert g["v"].free and member(g, "v", "o.weight").span == "[0:3]"
    assert g.count("flops") == 5 * 4 * 6 * 2 + 5 * 4 * 3 + 5 * 5 * 6 + 5 * 5 * 3 + 5 * 3 * 2


def test_layer_scale_parameter_is_a_member_of_its_dimension():
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.gamma = nn.Parameter(torch.ones(4, 1, 1))

        def forward(self, x):
            return x + self.gamma * self.conv(x)
    g = fxs.analyze(nn.Sequential(nn.Conv2d(3, 4, 1), LayerScale(), nn.Conv2d(4, 2, 1)),
                    torch.randn(1, 3, 2, 2))
    trunk = g["0+1"]
    gamma = next(m for m in trunk.members if m.tensor == "1.gamma")
    assert gamma.axis == 0 and gamma.span == "[0:4]" and trunk.free


def test_literal_reshape_of_the_channel_axis_pins():
    g = analyze(lambda s, x: s.fc(s.c(x).reshape(1, 8, 4).mean(2)), torch.randn(1, 3, 2, 2),
                c=nn.Conv2d(3, 8, 1), fc=nn.Linear(8, 2))
    assert g["c"].pinned.startswith("constant reshape size at .reshape()")


def test_size_derived_reshape_and_chunk_stay_free_with_a_multiple():
    def forward(s, x):
        y = s.c(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)   # channel shuffle
        a, b = y.chunk(2, dim=1)
        return s.d(torch.cat([b, a], 1))
    g = analyze(forward, torch.randn(1, 3, 2, 2), c=nn.Conv2d(3, 8, 1), d=nn.Conv2d(8, 2, 1))
    assert g["c"].free and g["c"].multiple_of == 2
    m = member(g, "c", "d.weight")
    shuffled = np.arange(8).reshape(2, 4).T.reshape(-1)      # 0 4 1 5 2 6 3 7
    assert np.array_equal(m.channels[np.argsort(m.positions)], np.r_[shuffled[4:], shuffled[:4]])


def test_literal_slice_of_the_channel_axis_pins_but_token_slice_does_not():
    g = analyze(lambda s, x: s.d(s.c(x)[:, :4]), torch.randn(1, 3, 2, 2),
                c=nn.Conv2d(3, 8, 1), d=nn.Conv2d(4, 2, 1))
    assert g["c"].pinned.startswith("constant slice of a channel axis")
    g = analyze(lambda s, x: s.d(s.c(x)[:, 0]), torch.randn(1, 5, 3),
                c=nn.Linear(3, 8), d=nn.Linear(8, 2))
    assert g["c"].free


def test_statistics_over_the_channel_axis_pin():
    ln = analyze(lambda s, x: s.d(s.ln(s.c(x))), torch.randn(1, 5, 3),
                 c=nn.Linear(3, 8), ln=nn.LayerNorm(8), d=nn.Linear(8, 2))
    assert "LayerNorm statistics over the channel axis" in ln["c"].pinned
    assert {m.tensor for m in ln["c"].members} >= {"ln.weight", "ln.bias"}
    sm = analyze(lambda s, x: s.d(torch.softmax(s.c(x), 1)), torch.randn(1, 3, 2, 2),
                 c=nn.Conv2d(3, 8, 1), d=nn.Conv2d(8, 2, 1))
    assert "softmax over the channel axis" in sm["c"].pinned
    mean = analyze(lambda s, x: s.c(x).mean(1), torch.randn(1, 3, 2, 2), c=nn.Conv2d(3, 8, 1))
    assert "reduction over the channel axis" in mean["c"].reasons[0]


def test_scalar_broadcast_does_not_couple_channels():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            self.alpha = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.d(self.alpha * self.c(x))
    g = fxs.analyze(Scaled(), torch.randn(1, 3, 2, 2))
    assert g["c"].width == 8 and g["c"].free


def test_matmul_with_a_parameter_is_a_producer():
    class XW(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Linear(3, 4)
            self.w = nn.Parameter(torch.randn(4, 6))
            self.d = nn.Linear(6, 2)

        def forward(self, x):
            return self.d(self.c(x) @ self.w)
    g = fxs.analyze(XW(), torch.randn(1, 5, 3))
    assert g["c"].free and member(g, "c", "w").axis == 0
    assert g["matmul"].free and member(g, "matmul", "w", "out").axis == 1
    alive = {"c": np.array([1, 0, 1, 1], bool), "matmul": np.array([1, 1, 0, 0, 1, 1], bool)}
    assert g.count("params", alive) == (3 * 3 + 3) + 3 * 4 + (4 * 2 + 2)
    assert g.count("flops", alive) == 5 * (3 * 3 + 3 * 4 + 4 * 2)


def test_split_head_attention_pins_safely_and_still_counts_its_matmuls():
    from torch.utils.flop_counter import FlopCounterMode

    class Attention(nn.Module):
        def __init__(self, dim=8, heads=2):
            super().__init__()
            self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1)).softmax(-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    model, x = Attention(), torch.randn(1, 5, 8)
    g = fxs.analyze(model, x)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert g.count("flops") * 2 == counter.get_total_flops()
    assert not g["qkv"].free


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("call", [{}, {"need_weights": False}, {"average_attn_weights": False}, "unbatched"])
def test_multihead_attention_shapes_come_from_geometry_as_its_kernels_give_them(batch_first, call):
    from fxsurgeon.ops import TABLE
    m = nn.MultiheadAttention(8, 2, kdim=6, vdim=5, batch_first=batch_first)
    q, k, v = torch.randn(3, 4, 8), torch.randn(7, 4, 6), torch.randn(7, 4, 5)
    if batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    if call == "unbatched":
        q, k, v, call = q[:, 0] if not batch_first else q[0], k[:, 0] if not batch_first else k[0], \
            v[:, 0] if not batch_first else v[0], {}
    meta = [t.to("meta") for t in (q, k, v)]
    ours = TABLE.module_rule(m).forward_with(m, {}, tuple(meta), call)
    real = m(q, k, v, **call)
    assert [None if t is None else (t.shape, t.dtype) for t in ours] == \
        [None if t is None else (t.shape, t.dtype) for t in real]
    assert all(t is None or t.device.type == "meta" for t in ours)
    assert TABLE.module_rule(m).forward_with(m, {}, (meta[0][..., :6], meta[1], meta[2]), call) is None


def test_attention_outputs_carry_one_identity_per_embedding_channel_pinned():
    """``nn.MultiheadAttention`` is kept whole: its output's embedding channels are pinned
    and coupled through the residual to what reads them, with one identity per channel (not
    per element: a ViT-L had 4.8 million)."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn = nn.Linear(4, 16), nn.MultiheadAttention(16, 2, batch_first=True)
            self.norm, self.out = nn.LayerNorm(16), nn.Linear(16, 3)

        def forward(self, x):
            x = self.inp(x)
            x = x + self.attn(x, x, x, need_weights=False)[0]
            return self.out(self.norm(x))

    graph = fxs.analyze(Block().eval(), torch.randn(1, 64, 4))
    trunk = graph["inp"]
    assert trunk.pinned and any("MultiheadAttention" in r for r in trunk.reasons)
    assert {("norm", "param"), ("out", "in")} <= {(m.node, m.role) for m in trunk.members}
    assert graph.propagation.uf.size < 64 * 16


class Power(nn.Module):
    def __init__(self, exponent):
        super().__init__()
        self.exponent = exponent
        self.c, self.bn, self.d = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        p = self.exponent if not isinstance(self.exponent, str) else torch.sigmoid(self.c(x))
        return self.d(torch.relu(self.bn(self.c(x))) ** p)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_power_carries_channels_and_passes_rescaling_only_at_exponent_one(frontend):
    """``(s·x) ** p = s ** p · x ** p``: neural rescaling, which divides the reader's weights by
    ``s``, is exact through ``x ** 1`` only; elsewhere it leaves the norm and says why."""
    x = torch.randn(2, 3, 4, 4)
    for p, homogeneous in ((2, False), (0.5, False), (1, True), (1.0, True)):
        model = Power(p).eval()
        with torch.no_grad():
            model.bn.weight.copy_(torch.linspace(0.001, 1, 8))      # small scales: rescaling lifts them
        graph = fxs.analyze(model, x, frontend=frontend)
        assert graph.dims[1].free
        s = fxs.rewrite(graph, fxs.plan(graph, target=None, scheme="prune"), rescale=True)
        bn = next(k for k in s.rescale_skipped if "bn" in k or "batch_norm" in k) \
            if not homogeneous else None
        assert (bn is None) == homogeneous == bool(s.rescaled), (p, s.rescale_skipped)
        if bn is not None:
            why = s.rescale_skipped[bn][1]
            assert "pow" in why and "not positively homogeneous" in why
        with torch.no_grad():
            assert torch.allclose(model(x), s.module(x), atol=1e-5)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_tensor_raised_to_a_tensor_pins_with_its_reason(frontend):
    graph = fxs.analyze(Power("tensor").eval(), torch.randn(2, 3, 4, 4), frontend=frontend)
    assert "a tensor raised to a tensor's power" in graph.dims[1].pinned


@pytest.mark.parametrize("call", ["function", "method"])
def test_clamp_to_a_tensor_bound_pins_and_to_numbers_carries(call):
    # (the bound was ignored: removing a channel left the bound a channel too wide)
    def bounded(s, x):
        y, low = s.c(x), s.n.weight[:, None, None]
        return s.d(torch.clamp(y, min=low) if call == "function" else y.clamp(low))
    g = analyze(bounded, torch.randn(1, 3, 2, 2), c=nn.Conv2d(3, 8, 1), n=nn.BatchNorm2d(8),
                d=nn.Conv2d(8, 2, 1))
    assert g["c"].pinned and "tensor bound" in " ".join(g["c"].reasons)
    g = analyze(lambda s, x: s.d(s.c(x).clamp(-1, 1)), torch.randn(1, 3, 2, 2),
                c=nn.Conv2d(3, 8, 1), d=nn.Conv2d(8, 2, 1))
    assert g["c"].free
