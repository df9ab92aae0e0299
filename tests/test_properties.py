"""Property tests over random CNNs (tests/randomnets.py)."""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import fxsurgeon as fxs
from invariants import check_bookkeeping
from randomnets import examples, nets

SETTINGS = settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(nets())
def test_random_nets_analyse_with_exact_bookkeeping(net):
    model, x = net
    graph = fxs.analyze(model, x)
    check_bookkeeping(graph, model)
    assert graph.dims[0].kind == "input" and graph.dims[-1].pinned == "model output"


@SETTINGS
@given(nets())
def test_random_nets_flops_match_pytorch_flop_counter(net):
    model, x = net
    graph = fxs.analyze(model, x)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    assert graph.count("flops") * 2 == counter.get_total_flops()


@SETTINGS
@given(nets(), st.data())
def test_masked_params_equal_the_sliced_parameter_sizes(net, data):
    """Count with random alive masks = product of surviving positions on every sliced axis."""
    model, x = net
    graph = fxs.analyze(model, x)
    alive = {d.name: np.array(data.draw(st.lists(st.booleans(), min_size=d.width, max_size=d.width)))
             for d in graph.free_dims}
    params = dict(graph.module.named_parameters())
    kept = {name: [np.ones(s, bool) for s in p.shape] for name, p in params.items()}
    grouped: dict[tuple[str, int], list[float]] = {}   # (tensor, axis) -> [dead inputs, divisor]
    for d in graph.free_dims:
        for m in d.members:
            if m.role == "source" or m.tensor not in params:      # buffers cost nothing
                continue
            ok = alive[d.name][m.channels]
            if m.divisor == 1:
                kept[m.tensor][m.axis][m.positions] &= ok
            else:
                entry = grouped.setdefault((m.tensor, m.axis), [0.0, m.divisor])
                entry[0] += (~ok).sum()
    expected = 0.0
    for name, axes in kept.items():
        sizes = [float(a.sum()) for a in axes]
        for (tensor, axis), (dead, divisor) in grouped.items():
            if tensor == name:
                sizes[axis] -= dead / divisor
        expected += np.prod(sizes)
    assert abs(graph.count("params", alive) - expected) < 1e-6 * max(1.0, expected)
