"""NeuralRejuvenation and DemP under DistributedDataParallel: two CPU processes, gloo backend."""
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fxsurgeon as fxs
from wrapped import small_net


def _start(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)


def _finish() -> None:
    """Leave the process group together, then end the process without the interpreter's
    teardown: in about one run in a hundred torch 2.14's own exit aborts the process
    ("terminate called without an active exception") after the work is done, with plain
    DDP over gloo too, no fxsurgeon involved (2 of 180 runs of a bare DDP script here)."""
    dist.barrier()          # no rank leaves while the other still talks (gloo aborts it)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _identical(network: nn.Module) -> bool:
    """Whether every rank holds the same parameters."""
    flat = torch.cat([p.detach().reshape(-1) for p in network.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    return torch.equal(*gathered)


def _worker(rank: int, port: int, out: str) -> None:
    _start(rank, port)
    model = small_net()
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
    same = _identical(nr.model.network)
    if rank == 0:
        survivors = nr.events[0].surgery.plan.dims["0"].survivors.tolist()
        torch.save({"events": [e.step for e in nr.events], "same": same,
                    "ddp": type(nr.model.ddp).__name__, "survivors": survivors}, out)
    _finish()


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


class _Recording(fxs.DemP):
    """DemP that also notes what each rank alone would find alive at each pruning."""

    own: list

    def alive(self):
        self.__dict__.setdefault("own", []).append(
            fxs.activation_liveliness(self.graph, self.death_set)["0"].nonzero()[0].tolist())
        return super().alive()


def _demp_worker(rank: int, port: int, out: str) -> None:
    _start(rank, port)
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(rank)        # each rank its own data and death set
    scale = 1e-3 if rank == 0 else 1e3             # on rank 1's, no unit looks dead
    death_set = [scale * torch.randn(4, 3, 8, 8, generator=g)]
    demp = _Recording(model, torch.randn(1, 3, 8, 8), opt, death_set, total_steps=4, prune_every=2,
                      noise_peak=1e-2, ddp=True)
    for step in range(4):
        if step == 1:
            with torch.no_grad():                  # the same change on both ranks
                demp.model.network.get_submodule("1").bias[::2] = -0.5
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(demp.model(x), y).backward()
        demp.step()
    same = _identical(demp.model.network)
    verdicts = [None, None]
    dist.all_gather_object(verdicts, demp.own[0])
    if rank == 0:
        survivors = demp.prunings[0].surgery.plan.dims["0"].survivors.tolist()
        torch.save({"prunings": [p.step for p in demp.prunings], "same": same,
                    "survivors": survivors, "verdicts": verdicts}, out)
    _finish()


def test_demp_ranks_prune_the_same_units_and_stay_identical(tmp_path):
    out = str(tmp_path / "result.pt")
    mp.spawn(_demp_worker, args=(_free_port(), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    assert result["prunings"][0] == 2 and result["same"]    # noise and pruning stayed in sync
    own = result["verdicts"]
    assert own[1] == list(range(8)) and own[0] != own[1]   # rank 1 alone would prune nothing
    assert result["survivors"] == own[0]                    # rank 0's verdict wins
