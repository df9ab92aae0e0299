"""Causes of refusals the self-check found on models nobody here wrote (issue #31), each
on a small network that has it, and the real model where it is cheap."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxsurgeon as fxs
from helpers.surgery import kill, randomise_norms, same

SCHEMES = ("prune", "nr", "cr", "ca")


def every_scheme(model, x, fraction=0.3, seed=0, growth=1.0, **analyze_kwargs):
    """Every scheme, with ``fraction`` of every free dimension's γ zeroed, computes what
    ``model`` computes on ``x`` (a tuple of inputs), in float64; the growing ones spend
    ``growth`` times the budget."""
    model = model.double().eval()
    randomise_norms(model)
    graph = fxs.analyze(model, x, **analyze_kwargs)
    kill(graph, fraction, seed)
    alive = fxs.liveliness(graph)
    with torch.no_grad():
        y0 = model(*x)
        for scheme in SCHEMES:
            plan = fxs.plan(graph, alive, target=None if scheme == "prune" else growth, scheme=scheme)
            new = fxs.rewrite(graph, plan, rescale=scheme == "ca").module
            assert same(y0, new(*x)), scheme
    return graph


class Timesteps(nn.Module):
    """diffusers' sinusoidal timestep embedding (``get_timestep_embedding`` with
    ``flip_sin_to_cos``): frequencies from ``arange`` (an op without a rule), or from a
    fixed buffer (``GaussianFourierProjection``), into a Linear, added to conv features."""

    def __init__(self, fourier: bool = False, flip: bool = True):
        super().__init__()
        self.fourier, self.flip = fourier, flip
        self.register_buffer("freqs", torch.randn(8))
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.time, self.bn2 = nn.Linear(16, 8), nn.BatchNorm1d(8)

    def forward(self, x, t):
        if self.fourier:
            freqs = self.freqs
        else:
            freqs = torch.exp(-math.log(10000) * torch.arange(0, 8, dtype=torch.float64) / 8)
        emb = t[:, None].double() * freqs[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if self.flip:
            emb = torch.cat([emb[:, 8:], emb[:, :8]], dim=-1)
        h = torch.relu(self.bn2(self.time(emb)))
        return torch.relu(self.bn(self.conv(x))) + h[:, :, None, None]


@pytest.mark.parametrize("fourier", [False, True], ids=["arange", "buffer"])
@pytest.mark.parametrize("flip", [True, False], ids=["flipped", "plain"])
def test_a_layer_reading_identities_born_outside_producers_keeps_its_columns(fourier, flip):
    """An op without a rule (``arange``) or an attribute makes identities of its own; a
    layer reading them as channels (one timestep: they vary along the frequencies only)
    kept them in the analysis but found new ones in the rewrite's walk, took its input
    columns for new channels and zeroed them, even in a plan that changes nothing."""
    x = (torch.randn(1, 3, 6, 6, dtype=torch.float64), torch.tensor([3]))
    graph = every_scheme(Timesteps(fourier, flip), x)
    every_scheme(Timesteps(fourier, flip), x, fraction=0.0)
    assert any(r.param == "time.weight" and r.axis == 1 for r in graph.propagation.axes)


class Attention(nn.Module):
    """A Linear reading an ``nn.MultiheadAttention`` (opaque, one identity per embedding
    position of its output)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(3, 8, 1), nn.BatchNorm1d(8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lin, self.bn2, self.head = nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).transpose(1, 2)
        a = self.mha(h, h, h, need_weights=False)[0]
        return self.head(torch.relu(self.bn2(self.lin(a).transpose(1, 2))).mean(2))


def test_a_layer_reading_an_opaque_module_keeps_its_columns():
    every_scheme(Attention(), (torch.randn(2, 3, 5, dtype=torch.float64),))


class Sample(nn.Module):
    """A diffusers model's ``.sample``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args).sample


def diffusers_unet(conditioned: bool):
    """A tiny diffusers UNet and its inputs (one timestep: its embedding's channels vary
    along the frequencies only)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    common = dict(sample_size=8, layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8)
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    if conditioned:
        return diffusers.UNet2DConditionModel(
            in_channels=4, out_channels=4, cross_attention_dim=8, attention_head_dim=4, **common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), (x, torch.tensor([3]), torch.randn(1, 3, 8))
    return diffusers.UNet2DModel(in_channels=4, out_channels=4, **common,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")), (x, torch.tensor([3]))


@pytest.mark.parametrize("conditioned", [False, True], ids=["UNet2DModel", "UNet2DConditionModel"])
def test_diffusers_unets_keep_their_timestep_embedding(conditioned):
    model, x = diffusers_unet(conditioned)
    x = tuple(v.double() if v.is_floating_point() else v for v in x)
    every_scheme(Sample(model), x)


class Queries(nn.Module):
    """Learned queries (a parameter read as a value, as DETR's) into a Linear."""

    def __init__(self):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, 6))
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.lin, self.bn2 = nn.Linear(6, 8), nn.BatchNorm1d(8)

    def forward(self, x):
        q = torch.relu(self.bn2(self.lin(self.queries.expand(x.shape[0], 6))))
        return torch.relu(self.bn(self.conv(x))) + q[:, :, None, None]


def test_a_layer_reading_a_parameter_as_a_value_keeps_its_columns():
    every_scheme(Queries(), (torch.randn(2, 3, 6, 6, dtype=torch.float64),))


class OneHead(nn.Module):
    """Attention with one head (diffusers' ``Attention`` in a VAE's mid block): q, k and v
    viewed as ``(batch, tokens, 1, head_dim)``."""

    def __init__(self, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.conv, self.bn = nn.Conv1d(3, 8, 1), nn.BatchNorm1d(8)
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).transpose(1, 2)
        b = h.shape[0]
        q, k, v = (f(h).view(b, -1, self.heads, 8 // self.heads).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, 8)
        return self.out(a) + h


@pytest.mark.parametrize("heads", [1, 2])
def test_one_head_grows_by_heads_not_by_head_dim(heads):
    """An exported graph's ``view(b, -1, 1, 8)`` holds the channel axis whole on its last
    axis, so its 8 followed the width: new heads became one head of a larger head_dim
    (attention then mixed the new channels' q and k in). The 1 is the head count."""
    x = (torch.randn(2, 3, 5, dtype=torch.float64),)
    graph = every_scheme(OneHead(heads), x, growth=2.5, frontend="export")
    assert any(d.free and d.unit == 8 // heads for d in graph.dims)


def test_diffusers_vae_grows_its_one_head_attention():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=8,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2)
    every_scheme(Sample(vae), (torch.randn(1, 3, 16, 16, dtype=torch.float64),), growth=1.5)


class UnknownBeforeTheHead(nn.Module):
    """An op without a rule (``cumsum`` along the channels) on the pooled features a head reads."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.cumsum(torch.relu(self.bn(self.conv(x))).mean((2, 3)), 1))


def test_a_head_after_an_opaque_op_keeps_its_columns_for_one_image():
    """For one image the opaque op's identities vary along the channels only, so the head
    reads them as its input channels: the rewrite zeroed its columns (timm's
    ``caformer_s18`` at ``head.fc.fc2``, ``nf_seresnet26`` at ``head.fc``, no-op plans)."""
    graph = every_scheme(UnknownBeforeTheHead(), (torch.randn(1, 3, 6, 6, dtype=torch.float64),))
    assert graph["conv"].pinned.startswith("unknown op cumsum()")


class InverseOfDead(nn.Module):
    """``relu(x) ** -1``: a channel dead at 0 emits ``0 ** -1 = inf``, the next layer nan."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))) ** -1)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_removed_channel_that_adds_inf_is_refused_with_the_reason(frontend):
    model = InverseOfDead().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        model.bn.weight[:3], model.bn.bias[:3] = 0, -0.5      # dead at relu(-0.5) = 0
        assert model(x).isnan().any()
    graph = fxs.analyze(model, x, frontend=frontend)
    assert graph["conv"].free
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    with pytest.raises(fxs.FxSurgeonError, match=r"removed from .*: what they add to it is not finite"):
        fxs.rewrite(graph, plan)


@pytest.mark.parametrize("name", ["nf_seresnet26", "caformer_s18"])
def test_timm_heads_after_opaque_ops_for_one_image(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).double().eval()
    randomise_norms(model)
    x = torch.randn(1, 3, 96, 96, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    with torch.no_grad():
        assert same(model(x), fxs.rewrite(graph, plan).module(x))


class ChannelAttention1d(nn.Module):
    """diffusers' ``SelfAttention1d``: one head over every channel, ``q @ kᵀ`` a plain matmul
    contracted over the channels, between BatchNorm'd features and a 1x1 conv."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(3, c, 3, padding=1), nn.BatchNorm1d(c)
        self.q, self.k, self.v, self.proj = (nn.Linear(c, c) for _ in range(4))
        self.head = nn.Conv1d(c, 2, 1)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).transpose(1, 2)          # (b, n, c)
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.head((h + self.proj(scores @ v)).transpose(1, 2))


def test_channels_contracted_between_two_computed_operands_keep_their_width():
    """New channels of q and k (contracted by ``q @ kᵀ`` one by one) would add
    ``q_new · k_new`` to every score: that dimension keeps its width, the rest grow."""
    x = (torch.randn(2, 3, 5, dtype=torch.float64),)
    graph = every_scheme(ChannelAttention1d(), x, growth=1.5)
    held = [d for d in graph.free_dims if d.held]
    assert len(held) == 1 and "q @ k" in held[0].held
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.5, scheme="nr")
    assert plan.dims[held[0].name].new_width <= held[0].width
    assert any(p.new_width > p.width for p in plan.dims.values())


class PerChannelGroupNorm(nn.Module):
    """wav2vec2's feature extractor: a conv, then a group norm with a group per channel,
    written functionally (an exported graph's ``aten.group_norm`` is too)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv1d(2, c, 5, stride=2)
        self.weight, self.bias = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))
        self.bn = nn.BatchNorm1d(c)
        self.head = nn.Conv1d(c, 3, 1)

    def forward(self, x):
        h = F.group_norm(self.conv(x), 8, self.weight, self.bias)
        return self.head(F.relu(self.bn(h)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_group_per_channel_keeps_one_group_per_channel_when_it_grows(frontend):
    """The literal group count of a functional group norm with a group per channel follows
    the width (it stayed 8 for 12 channels: the rewrite could not build the network)."""
    every_scheme(PerChannelGroupNorm(), (torch.randn(2, 2, 21, dtype=torch.float64),), growth=1.5,
                 frontend=frontend)


class Gated(nn.Module):
    """MONAI AttentionUnet's attention gate, reduced: conv, BatchNorm, ReLU, then combined
    (``op``) with a one-channel map σ(conv(x)) computed from the input, read by a conv."""

    def __init__(self, op: str = "mul", c: int = 16):
        super().__init__()
        self.op = op
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.psi = nn.Conv2d(3, 1, 1)
        self.head = nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        h, psi = torch.relu(self.bn(self.conv(x))), torch.sigmoid(self.psi(x))
        return self.head(h * psi if self.op == "mul" else h / (psi + 0.5) if self.op == "div" else h + psi)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("op", ["mul", "div", "add"])
def test_dead_channels_a_computed_map_modulates_are_kept_unless_they_are_zero(op, frontend):
    """A channel its BatchNorm makes constant (γ = 0: ReLU(β)) and then multiplies by an
    input-dependent map ψ holds ReLU(β)·ψ(x): not a constant to fold, so every scheme
    refused the whole surgery ('cannot fold ... not constant', MONAI AttentionUnet, #31).
    The plan keeps those channels and says so; the ones at 0 (β < 0) still go, exactly
    (0·ψ = 0). Past a sum (c + ψ) none can go."""
    graph = every_scheme(Gated(op), (torch.randn(2, 3, 8, 8, dtype=torch.float64),), fraction=0.5,
                         growth=1.5, frontend=frontend)
    dim = next(d for d in graph.free_dims if any(m.tensor == "bn.weight" for m in d.sources))
    bn = graph.model.bn
    dead, zero = (bn.weight == 0).numpy(), (bn.bias <= 0).detach().numpy()
    assert (dead & zero).any() and (dead & ~zero).any()        # both cases are here
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    kept = ~dead | ~zero if op != "add" else np.ones_like(dead)
    assert plan.dims[dim.name].survivors.tolist() == np.nonzero(kept)[0].tolist()
    assert "computed map" in plan.dims[dim.name].note


class PositionEmbedded(nn.Module):
    """timm's visformer, reduced: conv, BatchNorm, then a learned position embedding added
    (one value per channel and position), read by a conv."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.pos = nn.Parameter(torch.randn(1, c, 8, 8))
        self.head = nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)) + self.pos)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_dead_channels_a_position_embedding_adds_to_are_kept(frontend):
    """A channel its BatchNorm makes constant (γ = 0: β) plus a position embedding holds
    β + p(h, w): no constant to fold, so visformer's gated nr was refused ('cannot fold
    ... not constant'). The plan keeps those channels and says so; every scheme is exact."""
    graph = every_scheme(PositionEmbedded(), (torch.randn(2, 3, 8, 8, dtype=torch.float64),), fraction=0.5,
                         growth=1.5, frontend=frontend)
    dim = next(d for d in graph.free_dims if any(m.tensor == "bn.weight" for m in d.sources))
    dead = (graph.model.bn.weight == 0).numpy()
    assert dead.any()
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    assert len(plan.dims[dim.name].survivors) == dim.width
    assert "position embedding" in plan.dims[dim.name].note


class PerSampleScale(nn.Module):
    """Features times a per-sample scale given as an input (a data pipeline's)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x, scale):
        return self.head((torch.relu(self.bn(self.conv(x))) * scale).mean((2, 3)))


def test_a_dead_channel_times_a_per_sample_scale_is_kept_though_one_sample_shows_it_constant():
    """On one example sample ReLU(β)·scale looks constant: it was folded into the head's
    bias and the pruned network silently differed on any other scale. Whether it varies
    is read off the graph; the channels at 0 still go."""
    torch.manual_seed(0)
    model = PerSampleScale().double().eval()
    with torch.no_grad():
        model.bn.weight[:4] = 0
        model.bn.bias[:4] = torch.tensor([1.0, 0.5, -1.0, -0.5])
    one = (torch.randn(1, 3, 6, 6, dtype=torch.float64), torch.rand(1, 1, 1, 1, dtype=torch.float64) + 0.5)
    five = (torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.rand(5, 1, 1, 1, dtype=torch.float64) + 0.5)
    graph = fxs.analyze(model, one)
    for scheme in SCHEMES:
        target = None if scheme == "prune" else 1.5
        plan = fxs.plan(graph, fxs.liveliness(graph), target=target, scheme=scheme)
        assert plan.dims["conv"].survivors.tolist()[:3] == [0, 1, 4], scheme
        with torch.no_grad():
            assert same(model(*five), fxs.rewrite(graph, plan).module(*five)), scheme


def test_a_plan_removing_what_a_computed_map_multiplies_is_refused(monkeypatch):
    """A plan that removes them anyway (by hand, or made before plans kept them) is
    refused with its cause, rather than folded into a network that differs elsewhere."""
    from fxsurgeon.planning import planner

    model = PerSampleScale().double().eval()
    with torch.no_grad():
        model.bn.weight[:2] = 0
        model.bn.bias[:2] = 1.0
    graph = fxs.analyze(model, (torch.randn(1, 3, 6, 6, dtype=torch.float64),
                                torch.rand(1, 1, 1, 1, dtype=torch.float64) + 0.5))
    monkeypatch.setattr(planner, "carried", lambda graph, alive: {})
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None, scheme="prune")
    assert len(plan.dims["conv"].survivors) == 6
    with pytest.raises(fxs.FxSurgeonError, match=r"removes 2 channel\(s\) of 'conv' .* computed from the "
                                                  r"inputs multiplies while they are not zero"):
        fxs.rewrite(graph, plan)
    fxs.rewrite(graph, plan, fold=False)        # dropped anyway, as asked


def test_monai_attention_unet_prunes_and_grows_exactly():
    """Every scheme refused it: its attention gates multiply the skip features by ψ(x)."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16),
                               strides=(2, 2))
    every_scheme(model, (torch.randn(2, 1, 32, 32, dtype=torch.float64),), growth=1.5)


@pytest.mark.parametrize("name", ["UNet", "SegResNet"])
def test_monai_nets_with_batchnorm_prune_to_a_budget(name):
    """Their residual units add a plain conv to normed channels: silencing such a channel
    left the plain conv writing it, and the fold refused ('not constant')."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                      num_res_units=2, norm="batch") if name == "UNet" else \
        nets.SegResNet(spatial_dims=2, in_channels=1, out_channels=2, init_filters=4, blocks_down=(1, 2),
                       blocks_up=(1,), norm="batch")
    x = (torch.randn(2, 1, 32, 32, dtype=torch.float64),)
    graph = every_scheme(model, x, growth=1.5)
    plan = fxs.plan(graph, fxs.liveliness(graph), target=0.5, scheme="prune")
    assert plan.silenced
    fxs.rewrite(graph, plan)        # checks itself against the network with those silenced


class GroupedAfterOpaque(nn.Module):
    """timm MetaFormers' ``SepConv`` (``caformer_s18``): a 1x1 conv, an op without a rule
    (StarReLU's ``**``; here ``cumsum``, which keeps no rule whatever the table learns), a
    depthwise or grouped conv reading it, a 1x1 conv; then a block that can grow."""

    def __init__(self, groups: int = 8, out: int = 8, transposed: bool = False):
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.dw, self.bn2 = conv(8, out, 3, padding=1, groups=groups), nn.BatchNorm2d(out)
        self.pw2, self.bn3 = nn.Conv2d(out, 6, 1), nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = F.relu(self.bn1(self.pw1(x))).cumsum(-1)
        h = self.pw2(F.relu(self.bn2(self.dw(h))))
        return self.head(F.relu(self.bn3(h)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("groups, out, transposed", [(8, 8, False), (8, 16, False), (2, 8, False),
                                                     (8, 8, True), (2, 6, True)])
def test_a_grouped_conv_after_an_opaque_op_keeps_its_width(groups, out, transposed, frontend):
    """A grouped conv's output channels are blocks over its input's groups: where the input
    has no channel identities (an op without a rule before it) nothing ties the output to
    it, and its own dimension looked free. Growing it grew ``groups`` with it (timm's
    ``caformer_s18``: every growing scheme made ``stages.0.blocks.0.token_mixer.dwconv``
    8805 channels wide over its 128 inputs, α 68.8 since it was almost all that could grow);
    pruning it left ``groups`` above the input's channels. It keeps its width; the rest grows."""
    x = (torch.randn(2, 3, 6, 6, dtype=torch.float64),)
    graph = every_scheme(GroupedAfterOpaque(groups, out, transposed), x, growth=1.5, frontend=frontend)
    dw = graph["dw"]
    assert "groups over an input that is not channel-structured" in dw.pinned
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.5, scheme="nr")
    assert plan.dims[dw.name].new_width == dw.width
    assert [d.name for d in graph.free_dims] and all(plan.dims[d.name].added for d in graph.free_dims)


def _conformer():
    torchaudio = pytest.importorskip("torchaudio")
    torch.manual_seed(0)
    return torchaudio.models.Conformer(input_dim=16, num_heads=2, ffn_dim=32, num_layers=2,
                                       depthwise_conv_kernel_size=3).double().eval()


def test_a_conformer_is_refused_by_both_front_ends_naming_its_data_dependent_guard():
    """torchaudio's Conformer builds its padding mask from ``int(torch.max(lengths).item())``."""
    x, lengths = torch.randn(2, 10, 16, dtype=torch.float64), torch.tensor([10, 7])
    with pytest.raises(fxs.UntraceableModelError, match=r"(?s)torch.fx cannot trace.*"
                       r"int\(torch.max\(lengths\).item\(\)\).*torch.export cannot export Conformer: "
                       r"a data-dependent guard at torchaudio/models/conformer.py:\d+ in "
                       r"_lengths_to_padding_mask.*docs/your-model.md"):
        fxs.analyze(_conformer(), (x, lengths))


class ConformerLayers(nn.Module):
    """What ``Conformer.forward`` does after its data-dependent mask, with the mask as an
    input (docs/your-model.md, "A model with data-dependent control flow")."""

    def __init__(self, conformer):
        super().__init__()
        self.conformer_layers = conformer.conformer_layers

    def forward(self, input, key_padding_mask):
        x = input.transpose(0, 1)
        for layer in self.conformer_layers:
            x = layer(x, key_padding_mask)
        return x.transpose(0, 1)


def padding_mask(lengths):
    return torch.arange(int(lengths.max()))[None, :] >= lengths[:, None]


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_conformers_layers_with_the_mask_as_an_input_are_exact_in_every_scheme(frontend):
    conformer = _conformer()
    randomise_norms(conformer)
    with torch.no_grad():          # 30 % of each feed-forward's hidden units silent (SiLU(0) = 0)
        for layer in conformer.conformer_layers:
            for ffn in (layer.ffn1, layer.ffn2):
                dead = torch.rand(32) < 0.3
                ffn.sequential[1].weight[dead], ffn.sequential[1].bias[dead] = 0, 0
    inputs = [(torch.randn(2, 10, 16, dtype=torch.float64), torch.tensor([10, 7])),
              (torch.randn(3, 6, 16, dtype=torch.float64), torch.tensor([4, 6, 1]))]
    with torch.no_grad():
        want = [conformer(x, lengths)[0] for x, lengths in inputs]
    layers = ConformerLayers(conformer).eval()
    x, lengths = inputs[0]
    graph = fxs.analyze(layers, (x, padding_mask(lengths)), frontend=frontend)
    # the feed-forward hidden units, and the GLU-gated convolution modules
    assert graph.frontend == frontend and len(graph.free_dims) == 6
    alive = fxs.activation_liveliness(graph, [(x, padding_mask(lengths))])
    assert sum(int((~a).sum()) for a in alive.values()) > 0
    for scheme in SCHEMES:
        plan = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme)
        new = fxs.rewrite(graph, plan, rescale=scheme == "ca").module
        with torch.no_grad():
            for (x, lengths), y in zip(inputs, want, strict=True):
                assert same(y, new(x, padding_mask(lengths))), (scheme, tuple(x.shape))
    # in place: the Conformer, with its own forward and lengths, computes what it did
    fxs.apply(graph, fxs.rewrite(graph, fxs.plan(graph, alive, scheme="prune")))
    assert conformer.conformer_layers[0].ffn1.sequential[1].out_features < 32
    with torch.no_grad():
        for (x, lengths), y in zip(inputs, want, strict=True):
            assert same(y, conformer(x, lengths)[0])


class CutOfNothing(nn.Module):
    """MONAI's ``SwinUNETR`` at a stage no larger than its window: ``compute_mask`` slices
    ``slice(-window, -0)`` (empty), cuts that empty tensor again and reduces it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        n = h.shape[2]
        empty = h[:, :, n - 2:-0][:, :, 0:-1][:, :, :, 0:n - 1]
        return self.head(h + empty.sum())


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_an_empty_cut_holds_no_channels(frontend):
    graph = every_scheme(CutOfNothing(), (torch.randn(1, 3, 6, 6, dtype=torch.float64),), growth=1.5,
                         frontend=frontend)
    assert [d.name for d in graph.free_dims] == ["conv"]


class PositionAttention(nn.Module):
    """segmentation-models-pytorch MAnet's ``PABBlock``: attention over positions whose
    ``[b, hw, C]`` result is reshaped (not transposed) to ``[b, C, h, w]``, so the literal
    ``C`` takes channels and positions together, and added to the block's input."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.c = c
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.top, self.center = nn.Conv2d(c, 4, 1), nn.Conv2d(c, 4, 1)
        self.bottom = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        x = self.stem(x)
        b, _, h, w = x.shape
        top = self.top(x).flatten(2)
        center = self.center(x).flatten(2).transpose(1, 2)
        bottom = self.bottom(x).flatten(2).transpose(1, 2)
        m = torch.softmax(torch.matmul(center, top).view(b, -1), 1).view(b, h * w, h * w)
        return self.out(x + torch.matmul(m, bottom).reshape(b, self.c, h, w))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_reshape_mixing_channels_with_positions_pins_them(frontend):
    # 2x2 positions of 8 channels: each class of the sum holds whole channels, and the
    # literal 8 was read as a multiple the classes never honour
    graph = every_scheme(PositionAttention(), (torch.randn(2, 3, 2, 2, dtype=torch.float64),),
                         frontend=frontend)
    assert graph["stem.0+1"].pinned.startswith("reshape mixing channels with other axes")
    assert [d.name for d in graph.free_dims] == ["top+1"]


class GatedConv(nn.Module):
    """A conformer's convolution module: a pointwise conv to twice the width, GLU over the
    channels (``nn.GLU`` or ``F.glu``), a depthwise conv, BatchNorm."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.stem = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU())
        self.pointwise, self.bn = nn.Conv1d(8, 12, 1), nn.BatchNorm1d(12)
        self.glu = nn.GLU(dim=1)
        self.depthwise, self.bn2 = nn.Conv1d(6, 6, 3, padding=1, groups=6), nn.BatchNorm1d(6)
        self.head = nn.Conv1d(6, 4, 1)

    def forward(self, x):
        h = self.bn(self.pointwise(self.stem(x)))
        h = F.glu(h, 1) if self.functional else self.glu(h)
        return self.head(torch.relu(self.bn2(self.depthwise(h))))


@pytest.mark.parametrize("functional", [False, True], ids=["module", "function"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_glu_lines_up_its_halves_as_one_channel(functional, frontend):
    graph = every_scheme(GatedConv(functional), (torch.randn(2, 3, 9, dtype=torch.float64),), growth=1.5,
                         frontend=frontend)
    gated = next(d for d in graph.free_dims if "pointwise" in d.producers)
    assert gated.width == 6 and gated.multiple_of == 1 and gated.kind == "gated"


class AdditiveAttention(nn.Module):
    """timm SwiftFormer's efficient additive attention: normalised queries (an op without
    a rule) times a weight vector ``w_g``, behind a convolution whose channels grow."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.query, self.key = nn.Linear(8, 6), nn.Linear(8, 6)
        self.w_g = nn.Parameter(torch.randn(6, 1))
        self.proj, self.head = nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = self.stem(x).flatten(2).transpose(1, 2)
        q, k = F.normalize(self.query(h), dim=-1), F.normalize(self.key(h), dim=-1)
        a = F.normalize(q @ self.w_g * 0.5, dim=1)
        return self.head(self.proj((a * q).sum(1, keepdim=True) * k) + q)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_weight_read_through_an_opaque_op_is_no_new_channel(frontend):
    # the rewrite's own walk gives an opaque op's output identities of its own: they were
    # read as channels the plan added, and w_g was drawn afresh (a change the self-check's
    # tolerance hid under nr, and caught under cr)
    torch.manual_seed(0)
    model = AdditiveAttention()
    w_g = model.w_g.detach().clone()
    graph = every_scheme(model, (torch.randn(2, 3, 4, 4, dtype=torch.float64),), growth=1.5,
                         frontend=frontend)
    assert [d.name for d in graph.free_dims] == ["stem.0"]
    plan = fxs.plan(graph, fxs.liveliness(graph), target=1.5, scheme="nr")
    assert plan.dims["stem.0"].added
    assert torch.equal(fxs.rewrite(graph, plan).module.get_parameter("w_g"), w_g.double())


class ScalarAttention(nn.Module):
    """timm csatv2's attention block: ``Linear(1, 3)`` unbound into scalar q, k and v (one
    channel each, which nothing couples), attention over positions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.BatchNorm2d(1))
        self.qkv, self.head = nn.Linear(1, 3, bias=False), nn.Conv2d(1, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).unbind(-1)
        y = ((q[:, :, None] * k[:, None, :]).softmax(-1) @ v[:, :, None]).transpose(1, 2)
        return self.head(x + y.reshape(b, c, h, w))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_channels_unbound_one_by_one_are_pinned_and_a_qkv_axis_is_not(frontend):
    # a gate judged q, k and v, and a plan that removed one left two values for three uses
    graph = fxs.analyze(ScalarAttention().double(), torch.randn(2, 3, 4, 4, dtype=torch.float64),
                        frontend=frontend)
    assert graph["qkv"].pinned.startswith("one value per channel unbound")
    judged = fxs.add_judges(graph)
    assert "qkv" not in {d.name for d in judged.graph.free_dims}
    timm = pytest.importorskip("timm")          # timm's attention unbinds (3, heads, ...): heads stay free
    attention = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), timm.layers.Attention(16, num_heads=4))
    dims = fxs.analyze(attention, torch.randn(2, 5, 6), frontend="fx").free_dims
    assert [(d.kind, d.width) for d in dims if d.kind == "attention heads"] == [("attention heads", 4)]


class PositionalConv(nn.Module):
    """wav2vec2's positional convolution: a grouped Conv1d with a weight-normalised weight
    (computed, so its output channels have no weight rows to resize), added to its input."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm = nn.Linear(5, 8), nn.LayerNorm(8)
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3, padding=1, groups=4), dim=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.norm(self.embed(x))
        return self.head(h + F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_grouped_conv_with_a_computed_weight_is_analysed(frontend):
    # the grouped rule's loop variable once shadowed the tag reader the pin used: a crash
    graph = every_scheme(PositionalConv(), (torch.randn(2, 6, 5, dtype=torch.float64),), frontend=frontend)
    assert not graph.free_dims or all("conv" not in d.name for d in graph.free_dims)
