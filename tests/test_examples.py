import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, capsys):
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out


CONFIGS = sorted((Path(__file__).parent.parent / "examples").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_trains_under_adamw(path, tmp_path):
    """The transformer and ConvNeXt recipes of docs/transformers.md, in smoke size (the
    events on those networks are tested in tests/test_judges.py)."""
    import json

    from fxsurgeon.cli import main

    assert main(["train", "--config", str(path), "--smoke", "--quiet", "--seeds", "0", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recipe"]["optimizer"] == "adamw"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["method"] for r in results} == {"baseline", "nr"}


def test_the_mnist1d_study_runs_paired_arms(capsys):
    """bench/mnist1d_study.py --smoke: the pipeline of the experiment, not its science."""
    pytest.importorskip("mnist1d")
    pytest.importorskip("scipy")
    study = runpy.run_path(str(Path(__file__).parent.parent / "bench" / "mnist1d_study.py"))
    results = {"uniform": {s: study["seed_runs"]("uniform", s, ["baseline", "nr", "l1", "nr-ip"], "cpu", True)
                           for s in (0, 1)}}
    for runs in results["uniform"].values():
        assert runs["nr"]["events"] and not runs["l1"]["events"]
        regrown, = runs["nr-ip"]["events"]
        assert regrown["widths_after"] == regrown["widths_before"] and regrown["alpha"] == 1
        assert runs["baseline"]["epochs"] == runs["nr"]["epochs"] == runs["l1"]["epochs"]
    text = study["report"](results, [0, 1])
    assert "| baseline | 16,106 |" in text and "| nr |" in text and "paired difference" in text
