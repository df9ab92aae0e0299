"""Scale: time and peak memory of each stage of pruning a HuggingFace Llama-architecture
model (issue 30, part 1). What an NR event costs against training (part 2) is
``bench/event.py``.

**Pipeline** (default). A ``LlamaForCausalLM`` built from its config with random weights
(nothing downloaded; ``use_cache=False``: with the cache both front ends refuse it), one
example of ``--seq`` tokens. Stages: ``build`` (the model), ``analyze`` (the export front
end), ``plan`` (budget pruning of the MLP widths to ``--keep`` of their parameters, by
``fxs.importance.magnitude``; the heads are free too, but at this target the plan cuts
the MLP hidden units alone, as Torch-Pruning is told to), ``rewrite`` (with its self-check) and
``fxs.save``. Each size runs in a process of its own, so peaks are that run's; each
stage's peak is the process's resident high-water mark (``VmHWM``, reset before the
stage through ``/proc/self/clear_refs``), printed in GB and over the model's own size
(its parameters and buffers in bytes). ``base`` is the interpreter with torch,
transformers and fxsurgeon imported, before the model exists.

With ``torch_pruning`` importable (1.6.1 measured: ``pip install --no-deps --target DIR
torch-pruning==1.6.1`` and ``PYTHONPATH=DIR``), its LLM path (``MetaPruner`` with
``GroupMagnitudeImportance``, attention, ``down_proj`` and ``lm_head`` ignored: the MLP
hidden units only, to the same share) runs on the same model in a process of its own.

    python bench/scale.py --size tiny
    python bench/scale.py --size 88m,1.1b --timeout 1800
    python bench/scale.py --size 1.1b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

#: this checkout's fxsurgeon, not whichever one the environment installed (the children inherit it)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])

GB = 2 ** 30

#: Llama shapes: hidden, layers, intermediate, heads, KV heads, vocabulary
SIZES = {
    "ci": (128, 2, 352, 4, 2, 2000),           # ~0.9M parameters: the test's
    "tiny": (512, 8, 1408, 8, 2, 8000),        # ~30M
    "88m": (768, 12, 2048, 12, 4, 8000),       # issue 30's smaller model
    "250m": (1024, 16, 2816, 16, 4, 32000),    # ~245M: TinyLlama's proportions, a minute on 2 cores
    "1.1b": (2048, 22, 5632, 32, 4, 32000),    # TinyLlama's shape
}


# ---- memory --------------------------------------------------------------------------
def _status(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process, in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset the resident high-water mark to the current resident size (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class _Stages:
    """Times each stage and records its peak resident memory; prints a JSON line per stage
    at once, so that a run cut short by the timeout still reports the stages it finished."""

    #: rows of a cProfile of each stage to print (0: none; the times then include its overhead)
    profile = 0

    def __init__(self, model_gb: float | None = None):
        self.model_gb = model_gb

    def run(self, name: str, fn):
        import gc
        gc.collect()
        _reset_peak()
        before = _status("VmRSS")
        prof = None
        if self.profile and name != "build":
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        if prof is not None:
            import io
            import pstats
            prof.disable()
            for order in ("cumulative", "tottime"):
                stream = io.StringIO()
                pstats.Stats(prof, stream=stream).sort_stats(order).print_stats(self.profile)
                print(f"== {name}, by {order}\n" + stream.getvalue(), flush=True)
        row = {"stage": name, "s": seconds, "rss_before_gb": before, "peak_gb": _status("VmHWM"),
               "model_gb": self.model_gb}
        print(json.dumps(row), flush=True)
        return out


def llama(size: str, dtype: str = "float32"):
    """A random ``LlamaForCausalLM`` of one of :data:`SIZES`, in eval mode, in ``dtype``."""
    import torch
    import transformers
    hidden, layers, inter, heads, kv, vocab = SIZES[size]
    config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                      max_position_embeddings=2048, use_cache=False)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = transformers.LlamaForCausalLM(config)
    return model.to(getattr(torch, dtype)).eval()


def model_bytes(model) -> int:
    """The model's own size: its parameters and buffers, each storage counted once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def mlp_target(model, keep: float) -> float:
    """The plan's ``target`` (a share of all parameters) that leaves the MLPs ``keep`` of theirs."""
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    return 1 - (1 - keep) * mlp / total


def _tokens(model, seq: int, device: str):
    import torch
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (1, seq), generator=g).to(device)


def pipeline(size: str, dtype: str, device: str, seq: int, keep: float, out: str) -> None:
    """One size, in this process: a JSON line per stage on stdout."""
    import torch

    import fxsurgeon as fxs
    _warm_up = llama("ci")
    torch.set_grad_enabled(False)
    warnings.filterwarnings("ignore")
    del _warm_up                         # modules transformers imports when it first builds a Llama
    _reset_peak()
    print(json.dumps({"stage": "base", "s": 0.0, "peak_gb": _status("VmHWM"), "rss_before_gb": 0.0,
                      "model_gb": None}), flush=True)
    model = _Stages().run("build", lambda: llama(size, dtype).to(device))
    nbytes = model_bytes(model)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": size, "params": params, "bytes": nbytes, "dtype": dtype, "device": device,
                      "seq": seq}), flush=True)
    stages = _Stages(nbytes / GB)
    x = _tokens(model, seq, device)
    graph = stages.run("analyze", lambda: fxs.analyze(model, x, frontend="export"))
    free = graph.free_dims
    pinned_heads = sorted({d.pinned for d in graph.dims if d.pinned and "attn" in d.name})
    print(json.dumps({"free_dims": [d.name for d in free][:4], "n_free": len(free),
                      "n_dims": len(graph.dims), "head_pins": pinned_heads[:3]}), flush=True)
    target = mlp_target(model, keep)
    plan = stages.run("plan", lambda: fxs.plan(graph, None, target=target, scheme="prune",
                                               scores=fxs.importance.magnitude(graph)))
    surgery = stages.run("rewrite", lambda: fxs.rewrite(graph, plan))
    new_params = sum(p.numel() for p in surgery.module.parameters())
    print(json.dumps({"target": target, "new_params": new_params,
                      "new_mlp_params": sum(p.numel() for n, p in surgery.module.named_parameters()
                                            if "mlp" in n)}), flush=True)
    path = os.path.join(out, f"scale-{size}.pt")
    stages.run("save", lambda: fxs.save(graph, surgery, path))
    print(json.dumps({"file_bytes": os.path.getsize(path)}), flush=True)
    os.remove(path)


def run_torch_pruning(size: str, dtype: str, device: str, seq: int, keep: float) -> None:
    """Torch-Pruning's LLM path on the same model, to the same share of the MLP hidden units."""
    _warm_up = llama("ci")
    import torch
    import torch_pruning as tp
    warnings.filterwarnings("ignore")
    del _warm_up
    _reset_peak()
    print(json.dumps({"stage": "base", "s": 0.0, "peak_gb": _status("VmHWM"), "rss_before_gb": 0.0,
                      "model_gb": None, "tp": tp.__version__}), flush=True)
    model = _Stages().run("build", lambda: llama(size, dtype).to(device))
    stages = _Stages(model_bytes(model) / GB)
    x = _tokens(model, seq, device)
    ignored = [model.lm_head] + [m for n, m in model.named_modules()
                                 if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))]
    with torch.no_grad():
        before = model(x).logits
    pruner = stages.run("tp build", lambda: tp.pruner.MetaPruner(
        model, example_inputs=x, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=1 - keep, ignored_layers=ignored, root_module_types=[torch.nn.Linear],
        global_pruning=False))
    stages.run("tp prune", pruner.step)
    with torch.no_grad():
        after = model(x).logits
    print(json.dumps({"new_params": sum(p.numel() for p in model.parameters()),
                      "intermediate": model.model.layers[0].mlp.gate_proj.out_features,
                      "changed": float((after - before).abs().max())}), flush=True)


# ---- the parent: one process per size ---------------------------------------------------
def _child(args, mode: str, size: str, timeout: float) -> tuple[list[dict], str | None]:
    cmd = [sys.executable, __file__, f"--{mode}", size, "--dtype", args.dtype, "--device", args.device,
           "--seq", str(args.seq), "--keep", str(args.keep), "--profile", str(args.profile)]
    rows, error = [], None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr, code = "", None
        error = f"timed out after {timeout:.0f} s"
    for line in stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
        elif args.profile:
            print(line)
    if code:
        tail = stderr.strip().splitlines()
        error = tail[-1] if tail else f"exit {code}"
    return rows, error


def _table(label: str, rows: list[dict], error: str | None) -> None:
    info = {k: v for r in rows if "stage" not in r for k, v in r.items()}
    stages = [r for r in rows if "stage" in r]
    if "params" in info:
        print(f"\n{label}: {info['params'] / 1e6:.1f}M parameters, {info['bytes'] / GB:.3f} GB "
              f"({info['dtype']}, {info['device']}, {info['seq']} tokens)")
    else:
        print(f"\n{label}")
    shown = {k: v for k, v in info.items() if k not in ("params", "bytes", "dtype", "device", "seq", "model")}
    if shown:
        print("  " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    print(f"  {'stage':10s} {'seconds':>8s} {'RSS before GB':>13s} {'peak RSS GB':>11s} "
          f"{'peak / model':>12s}")
    total = 0.0
    for r in stages:
        total += r["s"]
        ratio = f"{r['peak_gb'] / r['model_gb']:12.2f}" if r.get("model_gb") else f"{'':12s}"
        print(f"  {r['stage']:10s} {r['s']:8.2f} {r['rss_before_gb']:13.2f} {r['peak_gb']:11.2f} {ratio}")
    work = sum(r["s"] for r in stages if r["stage"] not in ("base", "build"))
    peak = max((r["peak_gb"] for r in stages if r.get("model_gb")), default=None)
    if peak is not None:
        model_gb = stages[-1]["model_gb"]
        base = next((r["peak_gb"] for r in stages if r["stage"] == "base"), 0.0)
        print(f"  after build: {work:.1f} s; peak {peak:.2f} GB = {peak / model_gb:.2f}x the model, "
              f"{(peak - base) / model_gb:.2f}x above the base interpreter")
    if error:
        print(f"  stopped: {error}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--seq", type=int, default=16, help="tokens in the example (default 16)")
    p.add_argument("--keep", type=float, default=0.5, help="share of the MLPs' parameters kept (default 0.5)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per size and tool (default 3600)")
    p.add_argument("--no-tp", action="store_true", help="do not run Torch-Pruning even if importable")
    p.add_argument("--profile", type=int, default=0,
                   help="print this many rows of a cProfile of each stage (its times then include the "
                        "profiler's overhead)")
    p.add_argument("--one", help=argparse.SUPPRESS)     # the child: one size, fxsurgeon
    p.add_argument("--tp", help=argparse.SUPPRESS)      # the child: one size, Torch-Pruning
    args = p.parse_args(argv)
    _Stages.profile = args.profile
    if args.one:
        with tempfile.TemporaryDirectory() as out:
            pipeline(args.one, args.dtype, args.device, args.seq, args.keep, out)
        return 0
    if args.tp:
        run_torch_pruning(args.tp, args.dtype, args.device, args.seq, args.keep)
        return 0
    try:
        import torch_pruning  # noqa: F401
        have_tp = not args.no_tp
    except ImportError:
        have_tp = False
        print("torch_pruning is not importable: fxsurgeon only")
    import fxsurgeon
    print(f"fxsurgeon from {os.path.dirname(fxsurgeon.__file__)}")
    print(f"{os.cpu_count()} CPUs; MLP widths pruned to {args.keep} of their parameters by magnitude; "
          f"peak = the stage's resident high-water mark")
    for size in args.size.split(","):
        if size not in SIZES:
            raise SystemExit(f"unknown size {size!r}: use one of {', '.join(SIZES)}")
        rows, error = _child(args, "one", size, args.timeout)
        _table(f"fxsurgeon, {size}", rows, error)
        if have_tp:
            rows, error = _child(args, "tp", size, args.timeout)
            _table(f"Torch-Pruning, {size}", rows, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
