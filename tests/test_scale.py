"""Issue 30's memory target on a CI-sized Llama (30M parameters): analyse, plan a budget,
rewrite (with the self-check) and save. ``bench/scale.py`` runs the pipeline in a process
of its own (this process's memory does not count) and prints each stage's peak; nothing
here is timed. The part of the peak that grows with the model, the rewrite's, holds the
new network and not a second copy of either; the whole peak is still over the target at
this size, where the interpreter's and the export's fixed costs weigh most."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "scale.py")
#: the issue's target: peak resident memory at most this many times the model's own size
TARGET = 2.0


@pytest.fixture(scope="module")
def run() -> tuple[dict, list[dict]]:
    """The pipeline on a 30M-parameter Llama (``bench/scale.py``'s ``tiny`` size), in a process
    of its own: what it printed about the model, and each stage's row."""
    done = subprocess.run([sys.executable, BENCH, "--one", "tiny"], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    info = {k: v for r in rows if "stage" not in r for k, v in r.items()}
    return info, [r for r in rows if "stage" in r]


def test_the_pipeline_prunes_each_mlp_to_the_budget(run):
    info, stages = run
    assert [r["stage"] for r in stages] == ["base", "build", "analyze", "plan", "rewrite", "save"]
    assert 25e6 < info["params"] < 35e6
    assert info["n_free"] == 16 and not info["head_pins"]       # each layer's MLP and its KV groups
    mlp = 3 * 8 * 512 * 1408
    assert mlp / 2 - 3 * 8 * 512 <= info["new_mlp_params"] <= mlp / 2       # within a channel per layer
    assert info["file_bytes"] > 0


def test_the_rewrite_holds_the_new_network_and_no_second_copy(run):
    """The rewrite's growth over its start: the new network (the old one exists already), and
    at most a quarter of the model more (its reference run's zeroed copies, the new graph)."""
    info, stages = run
    rewrite = next(r for r in stages if r["stage"] == "rewrite")
    grown = (rewrite["peak_gb"] - rewrite["rss_before_gb"]) * 2 ** 30
    new_bytes = info["new_params"] * 4                  # float32, no buffers but rotary's
    assert grown <= new_bytes + info["bytes"] / 4, (grown / 2 ** 20, new_bytes / 2 ** 20)


@pytest.mark.xfail(strict=True, reason="measured 2.3x above the interpreter at 30M (0.27 GB over a 0.11 GB "
                                       "model: the export's 0.07 GB is a fixed cost; 1.7x at 1.1B: "
                                       "docs/performance.md, Scale)")
def test_the_pipeline_peaks_under_twice_the_model_above_the_interpreter(run):
    info, stages = run
    base = next(r["peak_gb"] for r in stages if r["stage"] == "base")
    peak = max(r["peak_gb"] for r in stages if r["stage"] not in ("base", "build"))
    assert (peak - base) / (info["bytes"] / 2 ** 30) <= TARGET
