"""Where and in what precision ``fxsurgeon train`` runs: the device, DataLoader workers,
mixed precision (autocast, with a GradScaler for fp16) and the channels-last layout."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import FxSurgeonError

#: ``--amp`` values and the dtype autocast computes in
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Hardware:
    """How to run, not what to compute: ``device`` (None: cuda when available, else
    cpu), DataLoader ``workers`` (None: min(4, CPUs) on CUDA, 0 on CPU), ``amp``
    (None, "bf16" or "fp16") and ``channels_last``."""

    device: str | None = None
    workers: int | None = None
    amp: str | None = None
    channels_last: bool = False

    def resolve(self) -> Placement:
        """Check the settings against this machine; a bad one is an error naming it."""
        device = _device(self.device)
        if self.amp is not None and self.amp not in AMP:
            raise FxSurgeonError(f"--amp must be {' or '.join(AMP)}, not {self.amp!r}")
        if self.workers is not None and self.workers < 0:
            raise FxSurgeonError(f"--workers must be at least 0, not {self.workers}")
        workers = self.workers if self.workers is not None else (
            min(4, os.cpu_count() or 1) if device.type == "cuda" else 0)
        return Placement(device, workers, self.amp, self.channels_last)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FxSurgeonError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FxSurgeonError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FxSurgeonError(f"device {name!r}: this machine has only {torch.cuda.device_count()} "
                                 f"CUDA devices")
    elif device.type != "cpu":
        raise FxSurgeonError(f"device {name!r}: fxsurgeon train runs on cpu or cuda")
    return device


@dataclass
class Placement:
    """Resolved :class:`Hardware`: moves models and batches, and runs one training step."""

    device: torch.device
    workers: int
    amp: str | None
    channels_last: bool

    def __post_init__(self):
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device (in place), channels-last if asked."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        """The forward pass's precision context."""
        return torch.autocast(self.device.type, dtype=AMP[self.amp]) if self.amp else nullcontext()

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, step) -> None:
        """Backward and ``step()`` (the wrapper's, which replaces ``optimizer.step()``).
        With a GradScaler the gradients are unscaled first, the step is skipped when any is
        not finite, and the scale is updated."""
        optimizer.zero_grad()
        if self.scaler is None:
            loss.backward()
            step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            step()
        self.scaler.update()
