"""After a surgery in place, a HuggingFace model's config describes its new widths, so
``save_pretrained`` and ``from_pretrained`` give the same network; widths a config cannot
describe are refused, naming them (issue: your model stays your model)."""
import numpy as np
import pytest
import torch

import fxsurgeon as fxs
from fxsurgeon.errors import FxSurgeonError
from fxsurgeon.integrations.hf_config import sync_config

transformers = pytest.importorskip("transformers")
TOKENS = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=50)
    assert config.use_cache          # as loaded: analysed without its key-value cache all the same
    return transformers.LlamaForCausalLM(config).eval(), lambda m, i: m.model.layers[i].mlp.up_proj


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=50)
    return transformers.BertModel(config).eval(), lambda m, i: m.encoder.layer[i].intermediate.dense


def _prune_mlp(model, up, every: list[int]):
    """Kill every ``every[i]``-th hidden unit of layer ``i``'s MLP (its up projection's rows
    to zero: it emits 0 after the product, or a constant the next layer folds), prune in place."""
    with torch.no_grad():
        for i, k in enumerate(every):
            up(model, i).weight[::k] = 0
            if up(model, i).bias is not None:
                up(model, i).bias[::k] = -10.0          # GELU(-10) ≈ 0: dead, a tiny constant
    graph = fxs.analyze(model, TOKENS)
    mlp = [d for d in graph.free_dims if "mlp" in d.name or "intermediate" in d.name]
    alive = {d.name: np.ones(d.width, bool) for d in graph.free_dims}
    for i, d in enumerate(mlp):
        alive[d.name][::every[i]] = False
    surgery = fxs.rewrite(graph, fxs.plan(graph, alive, scheme="prune"))
    return fxs.apply(graph, surgery)


@pytest.mark.parametrize("make", [_llama, _bert])
def test_a_uniformly_pruned_model_round_trips_through_save_pretrained(make, tmp_path):
    model, up = make()
    _prune_mlp(model, up, [4, 4])
    assert sync_config(model, TOKENS) == {"intermediate_size": (64, 48)}      # built from it: the same
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    out = (lambda o: o.logits if hasattr(o, "logits") else o.last_hidden_state)
    torch.testing.assert_close(out(again(TOKENS)), out(model(TOKENS)))


def test_widths_a_config_cannot_describe_are_refused_naming_them():
    model, up = _llama()
    _prune_mlp(model, up, [4, 2])                       # 48 and 32 hidden units
    before = model.config.to_dict()
    with pytest.raises(FxSurgeonError, match=r"cannot describe its widths: .*mlp.*fxsurgeon.save"):
        sync_config(model)
    assert model.config.to_dict() == before


def test_heads_of_a_size_the_config_derives_are_refused():
    model, _ = _bert()
    graph = fxs.analyze(model, TOKENS)
    alive = {d.name: np.ones(d.width, bool) for d in graph.free_dims}
    heads = next(d for d in graph.free_dims if "attention" in d.name)
    alive[heads.name][0] = False
    with torch.no_grad():               # the head's query, key and value rows: nothing it reads
        for p in ("query", "key", "value"):
            getattr(model.encoder.layer[0].attention.self, p).weight[:8] = 0
            getattr(model.encoder.layer[0].attention.self, p).bias[:8] = 0
    fxs.apply(graph, fxs.rewrite(graph, fxs.plan(graph, alive, scheme="prune")))
    with pytest.raises(FxSurgeonError, match=r"query\.weight \[24, 32\]"):
        sync_config(model)


def test_a_budget_ranked_uniform_keeps_one_mlp_width_that_the_config_can_say(tmp_path):
    """Pruned to a budget by random scores, each layer's MLP keeps its own width ranked
    globally; ranked "uniform", one width, which ``intermediate_size`` says (the heads,
    free too, are kept fixed here)."""
    model, _ = _llama()
    graph = fxs.analyze(model, TOKENS)
    scores = fxs.importance.random(graph, 0)
    heads = [d.name for d in graph.free_dims if "mlp" not in d.name]
    widths = {}
    for ranking in ("global", "uniform"):
        plan = fxs.plan(graph, None, target=0.9, scheme="prune", scores=scores, ranking=ranking, fixed=heads)
        widths[ranking] = sorted({plan.dims[d.name].new_width for d in graph.free_dims
                                  if d.name not in heads})
    assert len(widths["global"]) > 1 and len(widths["uniform"]) == 1
    fxs.apply(graph, fxs.rewrite(graph, plan))
    assert sync_config(model) == {"intermediate_size": (64, widths["uniform"][0])}
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(TOKENS).logits, model(TOKENS).logits)
    assert again.generate(TOKENS, max_new_tokens=2, do_sample=False).shape == (1, 10)


def test_a_config_that_builds_the_shapes_but_not_the_function_is_refused():
    """Checked on an example, a config whose model has every shape but computes otherwise is
    refused: here one that says another epsilon than the model's norms hold."""
    model, up = _llama()
    _prune_mlp(model, up, [4, 4])
    model.config.rms_norm_eps = 1.0             # the norms were built with 1e-6
    with pytest.raises(FxSurgeonError, match="computes something else on the example"):
        sync_config(model, TOKENS)
    assert model.config.intermediate_size == 64                 # nothing changed


@pytest.mark.parametrize("scheme", ["prune", "nr"])
def test_grouped_query_heads_changed_in_place_round_trip_through_save_pretrained(scheme, tmp_path):
    """Analysed through torch.export, a Llama with 4 query and 2 key/value heads loses one
    KV group per layer (or doubles them) in place: its own forward follows (``repeat_kv``
    reads the head count off the tensor), and ``num_attention_heads`` and
    ``num_key_value_heads`` follow, ``head_dim`` (which would fit the projections too) kept."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    model = transformers.LlamaForCausalLM(config).double().eval()
    graph = fxs.analyze(model, TOKENS, frontend="export")
    groups = [d for d in graph.free_dims if "self_attn" in d.name]
    assert [d.width for d in groups] == [2, 2]
    with torch.no_grad():           # layer i's group i adds nothing
        for i in range(2):
            model.model.layers[i].self_attn.o_proj.weight[:, 16 * i:16 * (i + 1)] = 0
        before = model(TOKENS).logits
    alive = fxs.liveliness(graph)
    if scheme == "nr":
        alive = {d.name: np.ones(d.width, bool) for d in graph.free_dims}
    plan = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme,
                    alpha=None if scheme == "prune" else 2.0, fixed=[d.name for d in graph.free_dims
                                                                   if "mlp" in d.name])
    fxs.apply(graph, fxs.rewrite(graph, plan))
    kv = 1 if scheme == "prune" else 4
    assert sync_config(model, TOKENS) == {"num_attention_heads": (4, 2 * kv), "num_key_value_heads": (2, kv)}
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(TOKENS).logits, before, rtol=0, atol=1e-9)
    assert again.generate(TOKENS, max_new_tokens=2, do_sample=False).shape == (1, 10)
