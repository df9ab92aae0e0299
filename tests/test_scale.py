"""Issue 30's memory target on a CI-sized Llama: analyse, plan a budget, rewrite (with the
self-check) and save, with a peak resident memory of at most 2x the model's own size
above the interpreter's. ``bench/scale.py`` runs the pipeline in a process of its own
(this process's memory does not count) and prints each stage's peak; nothing here is
timed."""
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
    """The pipeline on a 0.9M-parameter Llama (``bench/scale.py``'s ``ci`` size), in a process
    of its own: what it printed about the model, and each stage's row."""
    done = subprocess.run([sys.executable, BENCH, "--one", "ci"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    info = {k: v for r in rows if "stage" not in r for k, v in r.items()}
    return info, [r for r in rows if "stage" in r]


def test_the_pipeline_prunes_each_mlp_to_the_budget(run):
    info, stages = run
    assert [r["stage"] for r in stages] == ["base", "build", "analyze", "plan", "rewrite", "save"]
    assert 0.5e6 < info["params"] < 2e6
    assert info["n_free"] == 4 and not info["head_pins"]        # each layer's MLP and its KV groups
    mlp = 3 * 2 * 128 * 352
    assert mlp / 2 - 3 * 2 * 128 <= info["new_mlp_params"] <= mlp / 2       # within a channel per layer
    assert info["file_bytes"] > 0


@pytest.mark.xfail(strict=True, reason="measured 17x above the interpreter (0.94 GB peak against a 3.4 MB "
                                       "model: analyze's export and its fixed costs dominate at 0.9M "
                                       "parameters; larger sizes: docs/performance.md, Scale)")
def test_the_pipeline_peaks_under_twice_the_model_above_the_interpreter(run):
    info, stages = run
    base = next(r["peak_gb"] for r in stages if r["stage"] == "base")
    peak = max(r["peak_gb"] for r in stages if r["stage"] not in ("base", "build"))
    assert (peak - base) / (info["bytes"] / 2 ** 30) <= TARGET
