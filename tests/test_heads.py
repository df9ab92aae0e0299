"""Attention heads as channels (timm's ``Attention``): dead heads go, new heads come,
``num_heads`` follows, and the function and the cost stay exact."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.judging.fixed import fixed_names
from helpers.models import HandWritten
from helpers.surgery import assert_same_function
from randomnets import examples

timm = pytest.importorskip("timm")
from timm.layers import Attention  # noqa: E402 - needs timm


def vit(depth=3, **kw):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=depth,
                              **kw).double().eval()
    nn.init.normal_(model.head.weight)          # timm starts the head at zero: y = 0 otherwise
    return model, torch.randn(2, 3, 32, 32, dtype=torch.float64)


def kill_heads(attn, heads):
    """Zero ``heads``' columns of the output projection: they add nothing."""
    with torch.no_grad():
        for h in heads:
            attn.proj.weight[:, h * attn.head_dim:(h + 1) * attn.head_dim] = 0


def assert_exact(model, graph, plan, surgery, x):
    assert_same_function(model, surgery.module, x)
    again = fxs.analyze(surgery.module, x)
    if plan.metric == "flops":
        assert again.count("flops") == plan.predicted
    assert again.count("params") == sum(p.numel() for p in surgery.module.parameters())


def test_a_vit_loses_its_dead_heads_and_gains_new_ones():
    model, x = vit()
    graph = fxs.analyze(model, x)
    heads = [d for d in graph.dims if d.name.endswith(".heads")]
    assert [d.name for d in heads] == [f"blocks.{i}.attn.heads" for i in range(3)]
    assert all(d.free and d.width == 3 and d.scaled for d in heads)
    assert graph["blocks.0.attn.heads"].members      # q, k, v rows, their bias, proj columns
    kill_heads(model.blocks[0].attn, [0])
    kill_heads(model.blocks[2].attn, [1, 2])
    alive = fxs.liveliness(graph)
    assert alive["blocks.0.attn.heads"].tolist() == [False, True, True]
    assert alive["blocks.1.attn.heads"].all()
    assert alive["blocks.2.attn.heads"].tolist() == [True, False, False]

    pruned = fxs.plan(graph, alive, metric="flops", target=None, scheme="prune")
    surgery = fxs.rewrite(graph, pruned)
    assert [surgery.module.get_submodule(f"blocks.{i}.attn").num_heads for i in range(3)] == [2, 3, 1]
    attn = surgery.module.get_submodule("blocks.2.attn")
    assert attn.qkv.weight.shape == (3 * 64, 192) and attn.proj.weight.shape == (192, 64)
    y0, y1 = model(x), surgery.module(x)
    assert torch.equal(y0, y1) or (y0 - y1).abs().max() < 1e-12
    assert_exact(model, graph, pruned, surgery, x)

    grown = fxs.plan(graph, alive, metric="flops", target=1.0, scheme="nr", alpha=2.0)
    assert [grown.dims[d.name].new_width for d in heads] == [4, 6, 2]
    surgery = fxs.rewrite(graph, grown)
    assert [surgery.module.get_submodule(f"blocks.{i}.attn").num_heads for i in range(3)] == [4, 6, 2]
    assert_exact(model, graph, grown, surgery, x)
    # the new heads' q, k, v rows start He-initialised, their projection columns at zero
    attn = surgery.module.get_submodule("blocks.0.attn")
    assert attn.proj.weight[:, 2 * 64:].abs().max() == 0 and attn.qkv.weight[2 * 64:4 * 64].abs().max() > 0


def test_heads_stay_whole_where_a_norm_spans_them_or_a_gate_multiplies_them():
    model, x = vit(depth=1, scale_attn_norm=True)
    d = fxs.analyze(model, x)["blocks.0.attn.heads"]
    assert d.pinned == "a norm spans the heads of blocks.0.attn"
    gated = nn.Sequential(Attention(16, num_heads=2, gated=True)).double().eval()
    graph = fxs.analyze(gated, torch.randn(1, 5, 16, dtype=torch.float64))
    assert any("gated attention" in r for d in graph.dims for r in d.reasons)


def test_budget_pruning_takes_heads_like_channels():
    model, x = vit(depth=2)
    graph = fxs.analyze(model, x)
    plan = fxs.plan(graph, None, metric="flops", target=0.5, scheme="prune", ranking="per-dimension")
    assert plan.predicted <= plan.budget
    assert any(plan.dims[d.name].new_width < d.width for d in graph.dims if d.name.endswith(".heads"))
    surgery = fxs.rewrite(graph, plan)
    assert fxs.analyze(surgery.module, x).count("flops") == plan.predicted


def test_rejuvenation_penalises_norm_scales_not_projection_columns():
    model, x = vit(depth=1)
    nr = fxs.NeuralRejuvenation(model, x, torch.optim.SGD(model.parameters(), lr=0.1))
    assert nr.graph["blocks.0.attn.heads"].sources       # heads are judged by projection columns,
    assert all(p.dim() == 1 for p, _ in nr.scales.values())   # but only γ take the L1 penalty


class Block(nn.Module):
    def __init__(self, dim, heads, head_dim, qkv_bias, qk_norm):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                              qk_norm=qk_norm, norm_layer=nn.LayerNorm)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.fc(torch.relu(x))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 6), st.booleans(), st.booleans()),
                min_size=1, max_size=3),
       st.sampled_from(["prune", "nr", "cr", "ca"]), st.sampled_from(["params", "flops"]),
       st.integers(0, 2 ** 16))
def test_random_attention_stacks_keep_the_function_and_their_cost(blocks, scheme, metric, seed):
    torch.manual_seed(seed)
    dim = 8
    net = nn.Sequential(nn.Linear(4, dim), *[Block(dim, *b) for b in blocks], nn.Linear(dim, 3))
    net = net.double().eval()
    rng = np.random.default_rng(seed)
    for block in net[1:-1]:
        kill_heads(block.attn, np.nonzero(rng.random(block.attn.num_heads) < 0.5)[0].tolist())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    graph = fxs.analyze(net, x)
    grow = scheme != "prune"
    plan = fxs.plan(graph, fxs.liveliness(graph), metric=metric, target=1.0 if grow else None,
                    scheme=scheme, alpha=1.5 if grow else None)
    surgery = fxs.rewrite(graph, plan, seed=seed)
    assert_same_function(net, surgery.module, x)
    again = fxs.analyze(surgery.module, x)
    assert again.count(metric) == plan.predicted
    for i in range(1, len(net) - 1):
        attn = surgery.module.get_submodule(f"{i}.attn")
        assert attn.num_heads == plan.dims[f"{i}.attn.heads"].new_width
        assert attn.qkv.weight.shape[0] == 3 * attn.num_heads * attn.head_dim


@pytest.mark.parametrize("name", ["bert", "vit", "gpt2"])
def test_huggingface_attention_heads_through_export(name):
    """Through torch.export: q, k and v (separate layers, or GPT-2's one projection split
    three ways) meet in scaled_dot_product_attention, which makes each head one channel."""
    from helpers.models import hf
    model, (x, other) = hf(name)
    model = model.double().eval()
    x, other = (t.double() if t.is_floating_point() else t for t in (x, other))
    graph = fxs.analyze(model, x, frontend="export")
    heads = [d for d in graph.free_dims if d.sources]       # no norm judges anything else
    assert len(heads) == 2 and all(d.width == 4 and d.scaled for d in heads)
    first = heads[0].sources[0]
    with torch.no_grad():       # head 1 of the first layer adds nothing
        model.get_parameter(first.tensor).index_fill_(first.axis, torch.as_tensor(
            first.positions[first.channels == 1]), 0)
    alive = fxs.liveliness(graph)
    assert alive[heads[0].name].tolist() == [True, False, True, True] and alive[heads[1].name].all()
    for scheme in ("prune", "nr"):
        plan = fxs.plan(graph, alive, metric="flops", target=None if scheme == "prune" else 1.0,
                        scheme=scheme, alpha=None if scheme == "prune" else 2.0)
        new = fxs.rewrite(graph, plan).module
        widths = [plan.dims[d.name].new_width for d in heads]
        assert widths == ([3, 4] if scheme == "prune" else [6, 8])
        with torch.no_grad():
            for inputs in (x, other):
                y0, y1 = model(inputs), new(inputs)
                y0, y1 = y0[0], y1[0]
                assert (y0 - y1).abs().max() <= 1e-9 * max(1.0, float(y0.abs().max()))
        assert fxs.analyze(new, x, frontend="export").count("flops") == plan.predicted


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 5), st.integers(2, 4), st.booleans(), st.sampled_from(["prune", "nr", "cr", "ca"]),
       st.integers(0, 2 ** 16))
def test_hand_written_attention_loses_and_gains_heads(heads, head_dim, infer, scheme, seed):
    torch.manual_seed(seed)
    dim = heads * head_dim
    net = nn.Sequential(nn.Linear(3, dim), HandWritten(dim, heads, infer), nn.Linear(dim, 2)).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    graph = fxs.analyze(net, x)
    d = graph["1.*"]
    assert d.free and d.width == heads and d.unit == head_dim
    dead = np.random.default_rng(seed).random(heads) < 0.5
    src = d.sources[0]
    with torch.no_grad():
        at = torch.as_tensor(src.positions[dead[src.channels]])
        net.get_parameter(src.tensor).index_fill_(src.axis, at, 0)
    grow = scheme != "prune"
    plan = fxs.plan(graph, fxs.liveliness(graph), metric="flops", target=1.0 if grow else None, scheme=scheme,
                    alpha=2.0 if grow else None)
    assert len(plan.dims["1.*"].survivors) == max(int((~dead).sum()), 1)
    surgery = fxs.rewrite(graph, plan, seed=seed)
    assert_same_function(net, surgery.module, x)
    assert fxs.analyze(surgery.module, x).count("flops") == plan.predicted


class _FusedQkv(torch.nn.Module):
    """Attention written by hand as timm writes it, but with the head_dim left to -1."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.embed, self.norm = torch.nn.Linear(6, dim), torch.nn.LayerNorm(dim)
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        x = self.norm(self.embed(x))
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("scheme", ["prune", "nr"])
def test_a_dead_head_of_a_fused_qkv_written_with_minus_one_is_removed_exactly(scheme):
    # the literal head count beside a -1 head_dim follows the heads (it was read as a
    # multiple, so the reshape split what was left into as many heads as before)
    torch.manual_seed(0)
    model = _FusedQkv().double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    graph = fxs.analyze(model, x)
    assert graph["qkv"].free and graph["qkv"].width == 4
    with torch.no_grad():
        model.proj.weight[:, :4] = 0
    plan = fxs.plan(graph, fxs.liveliness(graph), target=None if scheme == "prune" else 1.0, scheme=scheme)
    assert len(plan.dims["qkv"].survivors) == 3
    surgery = fxs.rewrite(graph, plan)
    torch.testing.assert_close(surgery.module(x), model(x))


def _groups(graph):
    """The attention dimensions of a 2-layer grouped-query model (the rest is pinned
    or an MLP, which no norm or projection judges)."""
    return [d for d in graph.free_dims if d.sources]


@pytest.mark.parametrize("name,in_sdpa", [("llama", False), ("qwen2", False), ("mistral", False),
                                          ("llama", True)])
def test_grouped_query_attention_loses_and_gains_whole_kv_groups(name, in_sdpa, monkeypatch):
    """Llama, Qwen2, Mistral through torch.export: rotary embeddings act within head_dim,
    and ``repeat_kv`` (or ``enable_gqa`` in scaled_dot_product_attention, ``in_sdpa``) makes
    each key/value head and its n_rep query heads one channel (a KV group): its q rows, k
    and v rows and o_proj columns go and come together."""
    from helpers.models import hf
    if in_sdpa:
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    model, (x, other) = hf(name)
    model = model.double().eval()
    graph = fxs.analyze(model, x, frontend="export")
    sdpa = [n for n in graph.module.graph.nodes if "scaled_dot_product" in n.name]
    assert [n.kwargs.get("enable_gqa", False) for n in sdpa] == [in_sdpa] * 2
    groups = _groups(graph)
    assert [d.name for d in groups] == [f"layers.{i}.self_attn.*" for i in range(2)]
    assert len(graph.free_dims) == 4 and all(d.width == 2 and d.unit == 16 for d in groups)
    # (rotary's add of two views of q once made them a "residual trunk", which fixed="trunk" kept)
    assert {d.kind for d in groups} == {"attention heads"} and not fixed_names(graph, "trunk") & \
        {d.name for d in groups}
    rows = {m.tensor.rsplit(".", 2)[-2]: len(m.positions) for m in groups[0].members if m.role != "source"}
    assert rows == {"q_proj": 32, "k_proj": 16, "v_proj": 16, "o_proj": 32}
    if name == "qwen2":             # their biases too
        assert {m.tensor for m in groups[0].members if m.role == "param"} == \
            {f"layers.0.self_attn.{p}_proj.bias" for p in "qkv"}
    with torch.no_grad():           # group 1 of layer 0 (query heads 2, 3) adds nothing
        model.layers[0].self_attn.o_proj.weight[:, 16:] = 0
    alive = fxs.liveliness(graph)
    assert alive[groups[0].name].tolist() == [True, False] and alive[groups[1].name].all()
    for scheme in ("prune", "nr", "cr", "ca"):
        grow = scheme != "prune"
        plan = fxs.plan(graph, alive, metric="flops", target=1.0 if grow else None, scheme=scheme,
                        alpha=2.0 if grow else None)
        kv = [plan.dims[d.name].new_width for d in groups]
        assert kv == ([2, 4] if grow else [1, 2])
        new = fxs.rewrite(graph, plan, seed=1).module
        with torch.no_grad():
            for inputs in (x, other):           # another batch and length: sizes follow
                y0, y1 = model(inputs).last_hidden_state, new(inputs)[0]
                assert (y0 - y1).abs().max() <= 1e-9 * max(1.0, float(y0.abs().max())), scheme
        for i, k in enumerate(kv):
            q, kw, o = (new.get_parameter(f"layers.{i}.self_attn.{p}_proj.weight") for p in "qko")
            assert q.shape[0] == o.shape[1] == 2 * 8 * k and kw.shape[0] == 8 * k
        again = fxs.analyze(new, x, frontend="export")
        assert again.count("flops") == plan.predicted
        assert again.count("params") == sum(p.numel() for p in new.parameters())
        if grow:        # new groups: q, k, v rows He-initialised, o_proj columns at zero
            o = new.get_parameter("layers.1.self_attn.o_proj.weight")
            q = new.get_parameter("layers.1.self_attn.q_proj.weight")
            assert o[:, 32:].abs().max() == 0 and q[32:].abs().min() > 0
            assert [d.width for d in _groups(again)] == kv
        else:           # one group left: which axis would grow is not told apart, so it stays
            assert [d.name for d in _groups(again)] == ["layers.1.self_attn.*"]
            assert any(r.startswith("constant") for r in again["layers.0.self_attn.*"].reasons)


@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), st.integers(1, 3), st.sampled_from([4, 6]),
       st.sampled_from(["prune", "nr", "cr", "ca"]), st.integers(0, 2 ** 16))
def test_random_grouped_query_llamas_keep_the_function_and_their_cost(kv, n_rep, head_dim, scheme, seed):
    """A one-layer Llama of ``kv`` key/value heads, ``n_rep`` query heads each, random KV
    groups dead (their o_proj columns at zero): every scheme keeps the function exactly,
    the cost is what the plan predicted, and the config's head counts describe the result."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(   # (HF wants the hidden size a multiple of the heads)
        vocab_size=50, hidden_size=36, intermediate_size=12, num_hidden_layers=1,
        num_attention_heads=kv * n_rep, num_key_value_heads=kv, head_dim=head_dim,
        max_position_embeddings=32, use_cache=False)
    model = transformers.LlamaModel(config).double().eval()
    x = torch.randint(0, 50, (2, 7))
    graph = fxs.analyze(model, x, frontend="export")
    (d,) = _groups(graph)
    assert d.width == kv and d.unit == n_rep * head_dim
    dead = np.random.default_rng(seed).random(kv) < 0.5
    with torch.no_grad():
        o = model.layers[0].self_attn.o_proj.weight.view(36, kv, n_rep * head_dim)
        o[:, torch.as_tensor(dead)] = 0
    alive = fxs.liveliness(graph)
    assert alive[d.name].tolist() == (~dead).tolist()
    grow = scheme != "prune"
    plan = fxs.plan(graph, alive, metric="flops", target=1.0 if grow else None, scheme=scheme,
                    alpha=1.5 if grow else None)
    new = fxs.rewrite(graph, plan, seed=seed).module
    with torch.no_grad():
        assert_same_function(lambda t: model(t).last_hidden_state, lambda t: new(t)[0], x)
    assert fxs.analyze(new, x, frontend="export").count("flops") == plan.predicted
    groups = plan.dims[d.name].new_width
    q, k = (new.get_parameter(f"layers.0.self_attn.{p}_proj.weight") for p in "qk")
    assert q.shape[0] == groups * n_rep * head_dim and k.shape[0] == groups * head_dim
