"""On a CUDA device (skipped without one): an NR event in every scheme and a DemP pruning
keep every tensor on the GPU and the function the same, and training goes on after them;
``fxsurgeon train --smoke`` runs on CUDA with each mixed precision and channels-last.
CI has no GPU: these run where one is, with the same command as the rest of the suite."""
import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.cli import main
from helpers.training import kill_half
from wrapped import batch, small_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU = torch.device("cuda")


def step(wrapper, seed: int, dtype=torch.float64) -> None:
    x, y = batch(seed)
    wrapper.zero_grad()
    nn.functional.cross_entropy(wrapper.model(x.to(GPU, dtype)), y.to(GPU)).backward()
    wrapper.step()


def on_gpu(wrapper) -> bool:
    state = [v for s in wrapper.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return all(t.is_cuda for t in [*wrapper.model.parameters(), *wrapper.model.buffers(), *state])


@pytest.mark.parametrize("scheme", ["nr", "cr", "ca"])
def test_an_nr_event_on_cuda_keeps_the_function(scheme):
    model = small_net().to(GPU, torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, batch()[0][:1].to(GPU, torch.float64), opt, threshold=0.9,
                                scheme=scheme, rescale=True)
    step(nr, 0)
    kill_half(nr)
    x = batch(9)[0].to(GPU, torch.float64)
    nr.model.eval()
    before = nr.model(x)
    assert nr.check() is not None
    assert on_gpu(nr)
    torch.testing.assert_close(nr.model(x), before, rtol=1e-9, atol=1e-9)
    nr.model.train()
    step(nr, 1)
    assert all(torch.isfinite(p).all() for p in nr.model.parameters())


def test_demp_prunes_on_cuda():
    model = small_net().to(GPU)
    example = batch()[0][:1].to(GPU)
    death = [tuple(t.to(GPU) for t in batch())]
    demp = fxs.DemP(model, example, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                    death, total_steps=5, prune_every=None)
    step(demp, 0, torch.float32)
    with torch.no_grad():
        demp.model.network.get_submodule("1").weight[:3] = 0
    assert demp.prune().removed == 3
    assert on_gpu(demp)
    step(demp, 1, torch.float32)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_paper_config_smoke_run_on_cuda(amp, tmp_path):
    assert main(["train", "--config", "paper:vgg19-cifar10", "--smoke", "--device", "cuda", "--amp", amp,
                 "--channels-last", "--quiet", "--out", str(tmp_path / "run")]) == 0
