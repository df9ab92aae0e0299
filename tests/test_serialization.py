"""Rewritten networks pickle like any GraphModule: ``torch.save(surgery.module)`` and
``torch.save(nr.model.network)`` load back in a fresh process that never imported
fxsurgeon itself; and ``fxs.save`` / ``fxs.load`` keep one as data, rebuilt there on a
fresh instance of the user's own model."""
import subprocess
import sys
from pathlib import Path

import torch

import fxsurgeon as fxs
from fxsurgeon.zoo import digits_cnn
from helpers.surgery import randomise_norms
from wrapped import batch, small_net, train_step

ROOT = Path(fxs.__file__).parents[1]
X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _in_a_fresh_process(script: str) -> None:
    """Run ``script`` in a new Python process from the checkout; it must print 'loaded'."""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stdout


def _surgeries():
    """digits_cnn pruned, and grown in the schemes with partitioned layers."""
    model = digits_cnn().eval()
    randomise_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight[::3] = 0
    graph = fxs.analyze(model, torch.zeros(1, 1, 8, 8))
    alive = fxs.liveliness(graph)
    for scheme in ("prune", "cr", "ca"):
        p = fxs.plan(graph, alive, target=None if scheme == "prune" else 1.0, scheme=scheme)
        yield scheme, fxs.rewrite(graph, p).module


def _saved_as_data(path):
    """small_net (a model of the user's, in tests/wrapped.py) grown with cr, by fxs.save."""
    model = small_net().eval()
    randomise_norms(model)
    graph = fxs.analyze(model, batch()[0][:1])
    with torch.no_grad():
        model.get_submodule("1").weight[::2] = 0
    surgery = fxs.rewrite(graph, fxs.plan(graph, fxs.liveliness(graph), scheme="cr"))
    fxs.save(graph, surgery, path)
    return surgery.module.eval()


def _rejuvenated_network():
    model = small_net()
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.1),
                                threshold=0.9)
    train_step(nr)
    with torch.no_grad():
        nr.model.network.get_submodule("1").weight[::2] = 0
    assert nr.check() is not None
    return nr.model.network.eval()


def test_rewritten_networks_pickle_and_load_in_a_fresh_process(tmp_path):
    """Equal to float32 rounding, not bitwise: another process may run other kernels (its
    thread count follows the machine's load), and float32 sums in another order differ in
    the last bits."""
    saved = {}
    for scheme, module in _surgeries():
        saved[scheme] = (module, X)
    saved["nr-network"] = (_rejuvenated_network(), batch(3)[0])
    for name, (module, x) in saved.items():
        torch.save(module, tmp_path / f"{name}.pt")
        torch.save({"x": x, "y": module(x)}, tmp_path / f"{name}.io.pt")
    data = _saved_as_data(tmp_path / "data.pt")
    torch.save({"x": batch(4)[0], "y": data(batch(4)[0])}, tmp_path / "data.io.pt")
    check = (
        "import sys, torch\n"
        "assert 'fxsurgeon' not in sys.modules\n"
        f"for name in {sorted(saved)!r}:\n"
        f"    net = torch.load(r'{tmp_path}/' + name + '.pt', weights_only=False)\n"
        f"    io = torch.load(r'{tmp_path}/' + name + '.io.pt', weights_only=True)\n"
        "    torch.testing.assert_close(net(io['x']), io['y'], rtol=1e-5, atol=1e-6, msg=name)\n"
        "sys.path.insert(0, 'tests')\n"
        "import fxsurgeon as fxs\n"
        "from wrapped import small_net\n"
        f"net = fxs.load(r'{tmp_path}/data.pt', model=small_net())\n"
        f"io = torch.load(r'{tmp_path}/data.io.pt', weights_only=True)\n"
        "torch.testing.assert_close(net(io['x']), io['y'], rtol=1e-5, atol=1e-6)\n"
        "print('loaded')\n")
    _in_a_fresh_process(check)


def test_a_network_pickled_before_the_stage_folders_loads_in_a_fresh_process():
    """tests/data/ca_network_before_stage_folders.pt: a ca network (Partitioned and
    FoldedConstant modules and the tracer, pickled as ``fxsurgeon.partitioned``,
    ``fxsurgeon.folded`` and ``fxsurgeon.tracing``)
    saved by fxsurgeon before its modules moved into stage folders; it loads through the
    old paths kept there, and computes what it computed then (float64: another process may
    pick other kernels, so equal to rounding, not bitwise)."""
    check = (
        "import torch\n"
        "saved = torch.load('tests/data/ca_network_before_stage_folders.pt', weights_only=False)\n"
        "net = saved['network']\n"
        "kinds = {type(m).__module__ for m in net.modules()}\n"
        "assert {'fxsurgeon.layers.partitioned', 'fxsurgeon.layers.folded'} <= kinds, kinds\n"
        "torch.testing.assert_close(net(saved['x']), saved['y'], rtol=1e-10, atol=1e-12)\n"
        "print('loaded')\n")
    _in_a_fresh_process(check)
