"""NeuralRejuvenation under DistributedDataParallel: two CPU processes, gloo backend."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fxsurgeon as fxs


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    nr = fxs.NeuralRejuvenation(model, torch.randn(1, 3, 8, 8), opt, threshold=0.9, check_every=2,
                                scheme="cr", ddp=True)
    g = torch.Generator().manual_seed(rank)        # each rank its own data
    for step in range(4):
        if step == 1:                              # after DDP's first broadcast the ranks disagree
            with torch.no_grad():                  # on which channels look dead: rank 0's verdict
                model[1].weight[rank::2] = 0       # must win everywhere
                model[4].weight[::2] = 0
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(nr.model(x), y).backward()
        nr.step()
    flat = torch.cat([p.detach().reshape(-1) for p in nr.model.network.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        survivors = nr.events[0].surgery.plan.dims["0"].survivors.tolist()
        torch.save({"events": [e.step for e in nr.events], "same": torch.equal(*gathered),
                    "ddp": type(nr.model.ddp).__name__, "survivors": survivors}, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_take_the_same_decision_and_stay_identical(tmp_path):
    out = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    assert result["events"] == [2] and result["ddp"] == "DistributedDataParallel"
    assert result["same"]                         # after an event and two more synced steps
    assert result["survivors"] == [1, 3, 5, 7]  # rank 0's verdict (rank 1 zeroed the others)
