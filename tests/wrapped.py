"""A tiny CNN, its batches and one training step through an optimizer wrapper, shared by
the NeuralRejuvenation, DemP and DDP tests."""
import torch
from torch import nn


def small_net() -> nn.Sequential:
    """conv-BN-ReLU twice, pooled, then a linear head: two free dimensions of 8 channels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)


def train_step(wrapper, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
    """One step of ``wrapper.model`` on ``batch(seed)`` (its images in ``dtype``)."""
    x, y = batch(seed)
    wrapper.zero_grad()
    nn.functional.cross_entropy(wrapper.model(x.to(dtype)), y).backward()
    wrapper.step()


def resumable_run(make_wrapper, steps: int, save_to=None, save_at: int | None = None, resume=None,
                  before_step_2=None):
    """Train ``small_net`` with SGD + momentum + weight decay and a StepLR through
    ``make_wrapper(model, example, optimizer)`` for ``steps`` steps, calling
    ``before_step_2(wrapper)`` before step 2; save to ``save_to`` after step ``save_at``,
    or start from the checkpoint ``resume``. Returns the wrapper."""
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    wrapper = make_wrapper(model, batch()[0][:1], opt)
    start = 0
    if resume:
        extra = wrapper.load(resume)
        sched.load_state_dict(extra["scheduler"])
        start = extra["step"]
    for i in range(start, steps):
        if i == 2 and before_step_2:
            before_step_2(wrapper)
        train_step(wrapper, i)
        sched.step()
        if save_at == i + 1:
            wrapper.save(save_to, step=i + 1, scheduler=sched.state_dict())
    return wrapper


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules hold bit-identical state."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
