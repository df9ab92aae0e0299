"""What one NR event costs against training (issue 30, part 2): time and peak memory.

For each model, in a process of its own: ``fxs.NeuralRejuvenation`` on the model (its
judges: BatchNorm scales, and gates where no norm judges), the median of ``--steps``
training steps of ``nr.model`` (forward, loss, backward, ``nr.step()``, ``zero_grad``),
then ``--dead`` of every free dimension's channels killed (their BatchNorm γ or gate at
zero, as training leaves them) and one event (``nr.check()``, ``threshold=1.0``).
Printed: the event's seconds over one step and over an epoch, and the peak resident
memory of the training steps and of the event (``VmHWM``, reset before each), over the
model's own size (with ``--device cuda`` the steps are synchronised; the memory is the
host's). ``--profile N`` prints the top of a cProfile of the event (its time then
includes the profiler's overhead).

Models: torchvision's ``resnet50`` and ``vit_b_16`` at 224 px (SGD with momentum 0.9; an
epoch is ImageNet-1k's 1,281,167 images), and the Llama sizes of ``bench/scale.py``
(``--seq`` tokens a sample, the export front end; plain SGD, which keeps no state, so
that training a 1.1B model fits this machine: its parameters and gradients are 8.2 GB).

    python bench/event.py --model resnet50,vit_b_16 --batch 32
    python bench/event.py --model 1.1b --batch 1 --seq 256
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

from scale import GB, ROOT, SIZES, _reset_peak, _status, llama, model_bytes

from common import device_argument, kill, sync

#: images in an epoch of ImageNet-1k (the vision models' epoch)
IMAGENET = 1_281_167
VISION = ("resnet50", "vit_b_16")


@dataclass
class Case:
    """One model to train: a batch, how its output becomes a loss, the optimizer's settings."""

    model: object
    batch: tuple
    loss: object                        # output -> scalar loss
    per_epoch: float | None             # training steps in an epoch, if one is defined
    sgd: dict = field(default_factory=dict)
    analyze: dict = field(default_factory=dict)


def case(name: str, batch: int, seq: int, device: str) -> Case:
    """The model ``name`` on ``device`` with a random batch of ``batch`` samples."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name in VISION:
        import torchvision
        model = getattr(torchvision.models, name)()
        x = torch.randn(batch, 3, 224, 224, generator=g).to(device)
        y = torch.randint(0, 1000, (batch,), generator=g).to(device)
        return Case(model.to(device), (x,), lambda out: F.cross_entropy(out, y), IMAGENET / batch,
                    dict(lr=0.01, momentum=0.9))
    if name in SIZES:
        model = llama(name).train().to(device)
        x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g).to(device)

        def next_token(out):
            logits = out.logits[:, :-1]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        return Case(model, (x,), next_token, None, dict(lr=1e-3), dict(frontend="export"))
    raise SystemExit(f"unknown model {name!r}: use one of {', '.join([*VISION, *SIZES])}")


def one(name: str, args) -> None:
    """One model, in this process: JSON lines on stdout."""
    import cProfile
    import io
    import pstats

    import torch

    import fxsurgeon as fxs
    warnings.filterwarnings("ignore")
    c = case(name, args.batch, args.seq, args.device)
    model_gb = model_bytes(c.model) / GB
    opt = torch.optim.SGD(c.model.parameters(), **c.sgd)
    t = time.perf_counter()
    example = tuple(b[:1] for b in c.batch)
    if name in SIZES:       # two samples of 16 tokens: export fixes a size of 1 for good
        example = (c.batch[0][:2, :16],)
    nr = fxs.NeuralRejuvenation(c.model, example, opt, threshold=1.0, **c.analyze)
    setup = time.perf_counter() - t

    def step():
        nr.model.train()
        c.loss(nr.model(*c.batch)).backward()
        nr.step()
        nr.zero_grad()
        sync()

    step()                                   # warm-up
    _reset_peak()
    steps = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t)
    train_peak = _status("VmHWM")
    kill(nr.graph, args.dead)
    gc.collect()
    _reset_peak()
    before = _status("VmRSS")
    prof = cProfile.Profile() if args.profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    ev = nr.check()
    sync()
    if prof:
        prof.disable()
    event_s = time.perf_counter() - t
    event_peak = _status("VmHWM")
    step()                                   # the network after the event trains
    one_step = statistics.median(steps)
    print(json.dumps({
        "model": name, "params": sum(p.numel() for p in c.model.parameters()), "model_gb": model_gb,
        "threads": torch.get_num_threads(), "batch": args.batch, "seq": args.seq if name in SIZES else None,
        "judged": nr.judged.report(nr.graph) if nr.judged else "", "setup_s": setup, "steps_s": steps,
        "step_s": one_step, "device": args.device, "fired": ev is not None,
        "alpha": getattr(ev, "alpha", None), "event_s": event_s, "event_steps": event_s / one_step,
        "epoch_share": event_s / (one_step * c.per_epoch) if c.per_epoch else None,
        "train_peak_gb": train_peak, "event_rss_before_gb": before, "event_peak_gb": event_peak,
        "params_after": sum(p.numel() for p in nr.network.parameters())}), flush=True)
    if prof:
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("cumulative").print_stats(args.profile)
        print(stream.getvalue())


def _report(r: dict) -> None:
    print(f"\n{r['model']}: {r['params'] / 1e6:.1f}M parameters, {r['model_gb']:.3f} GB, batch {r['batch']}"
          + (f" x {r['seq']} tokens" if r["seq"] else "") + f", {r['device']}, {r['threads']} threads")
    print(f"  {r['judged']}")
    print(f"  NR set-up (analysis and judges): {r['setup_s']:.2f} s")
    print(f"  training step: {r['step_s']:.2f} s (median of {[round(s, 2) for s in r['steps_s']]}); "
          f"peak {r['train_peak_gb']:.2f} GB = {r['train_peak_gb'] / r['model_gb']:.2f}x the model")
    fired = f"fired, α {r['alpha']:.3f}" if r["fired"] else "did not fire"
    epoch = f", {r['epoch_share']:.2e} of an epoch" if r["epoch_share"] else ""
    print(f"  one event ({fired}): {r['event_s']:.2f} s = "
          f"{r['event_steps']:.2f} training steps{epoch}")
    print(f"  event peak {r['event_peak_gb']:.2f} GB = {r['event_peak_gb'] / r['model_gb']:.2f}x the model "
          f"(resident before it {r['event_rss_before_gb']:.2f} GB); parameters after "
          f"{r['params_after'] / 1e6:.1f}M")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    device_argument(p)
    p.add_argument("--model", default="resnet50", help=f"comma-separated, of {', '.join([*VISION, *SIZES])}")
    p.add_argument("--batch", type=int, default=32, help="samples a training step (default 32)")
    p.add_argument("--seq", type=int, default=256, help="Llama: tokens a sample (default 256)")
    p.add_argument("--steps", type=int, default=3, help="training steps timed (default 3)")
    p.add_argument("--dead", type=float, default=0.3, help="share of each free dimension killed (0.3)")
    p.add_argument("--profile", type=int, default=0, help="rows of a cProfile of the event to print")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per model (default 3600)")
    p.add_argument("--one", help=argparse.SUPPRESS)     # the child: one model
    args = p.parse_args(argv)
    if args.one:
        one(args.one, args)
        return 0
    print(f"fxsurgeon from {ROOT}; {os.cpu_count()} CPUs")
    for name in args.model.split(","):
        cmd = [sys.executable, __file__, "--one", name, *(argv if argv is not None else sys.argv[1:])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"\n{name}: timed out after {args.timeout:.0f} s")
            continue
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                _report(json.loads(line))
            else:
                print(line)
        if done.returncode:
            print(f"\n{name}: stopped: {(done.stderr.strip().splitlines() or ['exit'])[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
